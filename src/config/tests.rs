use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_without_any_file_or_environment() {
    let s = Settings::load_with_env(None, env(&[])).unwrap();
    assert_eq!(s.influx.database, "ohlcd");
    assert_eq!(s.engine.chunk_days, 1);
    assert_eq!(s.engine.batch_rows, 100_000);
}

#[test]
fn environment_overrides_file_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[influx]\nurl = \"http://file:1\"\ndatabase = \"fromfile\"\n",
    )
    .unwrap();
    let s = Settings::load_with_env(
        Some(&file),
        env(&[
            ("OHLCD_INFLUX__URL", "http://env:2"),
            ("OHLCD_PROGRESS__DATABASE_URL", "sqlite:///tmp/x.db"),
            ("OHLCD_SERVER__LISTEN", "0.0.0.0:9"),
            ("OHLCD_ENGINE__CHUNK_DAYS", "2"),
            ("OHLCD_INFLUX__RETRIES", "7"),
        ]),
    )
    .unwrap();
    assert_eq!(s.influx.url, "http://env:2");
    assert_eq!(s.influx.database, "fromfile");
    assert_eq!(s.progress.database_url, "sqlite:///tmp/x.db");
    assert_eq!(s.server.listen, "0.0.0.0:9");
    assert_eq!(s.influx.retries, 7);
    assert_eq!(s.engine.chunk_days, 2);
}

#[test]
fn zones_come_from_a_table_or_the_environment_and_bad_names_stop_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[datafeed]\ntimezone = \"Asia/Kolkata\"\n[datafeed.symbol_timezones]\nBTCUSD = \"Asia/Hong_Kong\"\n",
    )
    .unwrap();
    let s = Settings::load_with_env(Some(&file), env(&[])).unwrap();
    let zones = s.datafeed.zones().unwrap();
    assert_eq!(zones.for_symbol("BTCUSD").name(), "Asia/Hong_Kong");
    assert_eq!(zones.for_symbol("ETHUSD").name(), "Asia/Kolkata");
    let s = Settings::load_with_env(
        None,
        env(&[(
            "OHLCD_DATAFEED__SYMBOL_TIMEZONES",
            "BTCUSD=Asia/Hong_Kong, ethUSD=America/New_York",
        )]),
    )
    .unwrap();
    let zones = s.datafeed.zones().unwrap();
    assert_eq!(zones.for_symbol("ethUSD").name(), "America/New_York");
    assert_eq!(zones.for_symbol("XRPUSD").name(), "Etc/UTC");
    for (key, value, named) in [
        ("OHLCD_DATAFEED__TIMEZONE", "Hong Kong", "datafeed.timezone"),
        (
            "OHLCD_DATAFEED__SYMBOL_TIMEZONES",
            "BTCUSD=Mars/Base",
            "symbol_timezones.BTCUSD",
        ),
        ("OHLCD_DATAFEED__SYMBOL_TIMEZONES", "BTCUSD", "SYMBOL=ZONE"),
    ] {
        let err = Settings::load_with_env(None, env(&[(key, value)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(named), "{value}: {err}");
    }
}

#[test]
fn bad_values_are_rejected_with_the_key_named() {
    let err = Settings::load_with_env(None, env(&[("OHLCD_INFLUX__URL", "localhost:8086")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("influx.url"), "{err}");
    let err = Settings::load_with_env(None, env(&[("OHLCD_INFLUX__RETRIES", "many")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("retries"), "{err}");
    let missing = Settings::load_with_env(Some(Path::new("/nope/x.toml")), env(&[]));
    assert!(missing.unwrap_err().to_string().contains("/nope/x.toml"));
}

#[test]
fn schema_lists_come_as_lists_or_comma_separated_from_a_file_or_the_environment() {
    let s = Settings::load_with_env(None, env(&[])).unwrap();
    assert_eq!(s.schema, SchemaSettings::default());
    let s = Settings::load_with_env(
        None,
        env(&[
            ("OHLCD_SCHEMA__SYMBOL_TAGS", "exchange,symbol"),
            ("OHLCD_SCHEMA__TRADES_MEASUREMENT", "trade"),
            ("OHLCD_SCHEMA__ID_FIELD", ""),
        ]),
    )
    .unwrap();
    assert_eq!(s.schema.symbol_tags, ["exchange", "symbol"]);
    assert_eq!(s.schema.trades_measurement, ["trade"]);
    assert_eq!(s.schema.id_field, "");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("poc.toml");
    std::fs::write(
        &file,
        "[schema]\ntrades_measurement = \"trade\"\nsymbol_tags = [\"exchange\", \"symbol\"]\ncandles_measurement = \"trade_ohlc_{res}\"\n",
    )
    .unwrap();
    let s = Settings::load_with_env(Some(&file), env(&[])).unwrap();
    assert_eq!(s.schema.trades_measurement, ["trade"]);
    assert_eq!(s.schema.symbol_tags, ["exchange", "symbol"]);
    assert_eq!(s.schema.candles_measurement, "trade_ohlc_{res}");
}

#[test]
fn tokens_come_verbatim_from_the_environment_or_trimmed_from_a_file() {
    // All digits with a leading zero: would become a number if parsed.
    let numeric = "0123456789012345678901234";
    let s = Settings::load_with_env(None, env(&[("OHLCD_SERVER__INGEST_TOKEN", numeric)])).unwrap();
    assert_eq!(s.server.ingest_token.expose(), numeric);
    assert!(!s.server.read_token.is_set());
    let s = Settings::load_with_env(
        None,
        env(&[
            ("OHLCD_INFLUX__PASSWORD", "00123"),
            ("OHLCD_INFLUX__TOKEN", numeric),
            ("OHLCD_INFLUX__USERNAME", "007"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (
            s.influx.password.expose(),
            s.influx.token.expose(),
            s.influx.username.as_str()
        ),
        ("00123", numeric, "007")
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "  read-token-from-a-file-0001\n").unwrap();
    let path = file.display().to_string();
    let s =
        Settings::load_with_env(None, env(&[("OHLCD_SERVER__READ_TOKEN_FILE", &path)])).unwrap();
    assert_eq!(s.server.read_token.expose(), "read-token-from-a-file-0001");
}

#[test]
fn bad_tokens_are_refused_without_showing_them() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.display().to_string();
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[("OHLCD_SERVER__INGEST_TOKEN", "short-secret")],
            "too short",
        ),
        (
            &[("OHLCD_SERVER__INGEST_TOKEN", "a secret with spaces in it")],
            "printable ASCII",
        ),
        (
            &[
                ("OHLCD_SERVER__INGEST_TOKEN", "both-set-secret-0123456789"),
                ("OHLCD_SERVER__INGEST_TOKEN_FILE", &empty),
            ],
            "both set",
        ),
        (&[("OHLCD_SERVER__READ_TOKEN_FILE", &empty)], "is empty"),
        (
            &[("OHLCD_SERVER__INGEST_TOKEN_FILE", "/nonexistent/token")],
            "cannot read /nonexistent/token",
        ),
    ];
    for (vars, expected) in cases {
        let err = Settings::load_with_env(None, env(vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
        for (_, value) in vars {
            if !value.starts_with('/') {
                assert!(!err.contains(value), "{err} shows the token");
            }
        }
    }
}

#[test]
fn settings_debug_output_redacts_tokens() {
    let secret = "debug-must-not-show-0123456789";
    let s = Settings::load_with_env(
        None,
        env(&[
            ("OHLCD_SERVER__INGEST_TOKEN", secret),
            ("OHLCD_SERVER__READ_TOKEN", secret),
        ]),
    )
    .unwrap();
    let shown = format!("{s:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("Secret(<redacted>)"), "{shown}");
}

#[test]
fn cors_origins_come_as_a_comma_separated_list_and_are_checked() {
    let s = Settings::load_with_env(
        None,
        env(&[(
            "OHLCD_SERVER__CORS_ORIGINS",
            "https://charts.example.com,http://localhost:3000,http://[::1]:8000",
        )]),
    )
    .unwrap();
    assert_eq!(
        s.server.cors_origins,
        [
            "https://charts.example.com",
            "http://localhost:3000",
            "http://[::1]:8000"
        ]
    );
    let none = Settings::load_with_env(None, env(&[("OHLCD_SERVER__CORS_ORIGINS", "")]));
    assert!(none.unwrap().server.cors_origins.is_empty());
    for bad in [
        "charts.example.com",
        "ftp://x.example",
        "https://x.example/",
        "https://x.example/path",
        "https://X.example",
        "https://x.example:http",
        "https://",
        "*",
    ] {
        let err = Settings::load_with_env(None, env(&[("OHLCD_SERVER__CORS_ORIGINS", bad)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.cors_origins"), "{bad}: {err}");
    }
}

#[test]
fn retention_policies_come_from_the_environment_and_reach_the_influx_settings() {
    let s = Settings::load_with_env(None, env(&[])).unwrap();
    assert!(
        s.influx
            .retention
            .specs()
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
    let s = Settings::load_with_env(
        None,
        env(&[
            ("OHLCD_RETENTION__TRADES", "raw_30d:30d"),
            ("OHLCD_RETENTION__OHLC_1D", "forever"),
        ]),
    )
    .unwrap();
    let specs = s.influx.retention.specs().unwrap();
    assert_eq!(specs[0].as_ref().unwrap().name, "raw_30d");
    assert_eq!(
        specs[0].as_ref().unwrap().keep,
        Some(crate::retention::Keep::For(30 * 86_400 * 1_000_000_000))
    );
    assert_eq!(specs[6].as_ref().unwrap().name, "forever");
    assert!(specs[1].is_none());
    for (vars, expected) in [
        (
            &[("OHLCD_RETENTION__OHLC_1M", "x:30 days")][..],
            "retention.ohlc_1m",
        ),
        (
            &[
                ("OHLCD_RETENTION__OHLC_1H", "keep:INF"),
                ("OHLCD_RETENTION__OHLC_4H", "keep:52w"),
            ][..],
            "different durations",
        ),
    ] {
        let err = Settings::load_with_env(None, env(vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn heavy_query_slots_must_leave_room_for_cheap_ones() {
    let err = Settings::load_with_env(
        None,
        env(&[
            ("OHLCD_SERVER__MAX_QUERIES", "4"),
            ("OHLCD_SERVER__MAX_HEAVY_QUERIES", "4"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("server.max_heavy_queries"), "{err}");
}

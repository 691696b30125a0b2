//! Retention policies that really expire data: influxd runs its retention
//! service every second, trades and candles are written into policies kept
//! forever, then `ohlcd` shortens a policy to one hour (1.x's minimum) and the
//! service drops the old shard groups. What is left must still be charted, and
//! `rebuild` must not destroy candles whose raw trades are gone.

use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ohlcd::candle::{Candle, NANOS_PER_SEC, Resolution};
use ohlcd::clock::{Clock, SystemClock};
use ohlcd::config::Settings;
use ohlcd::influx::InfluxClient;
use ohlcd::testkit::InfluxdOptions;
use ohlcd::times::to_rfc3339;
use serde_json::Value;

use crate::helpers::{TestApp, influx_with_users, t};
use crate::http::get;

const FROM: &str = "2024-03-01T00:00:00Z";
const TO: &str = "2024-03-03T00:00:00Z";

/// influxd dropping expired shard groups every second.
async fn spawn() -> TestApp {
    TestApp::spawn_with(InfluxdOptions {
        retention_check_secs: Some(1),
        ..InfluxdOptions::default()
    })
    .await
}

/// Runs `ohlcd` with `[retention]` values given as (key, value) pairs.
fn ohlcd(app: &TestApp, retention: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = app.ohlcd();
    cmd.env("OHLCD_LOG", "info").args(args);
    for (key, value) in retention {
        cmd.env(format!("OHLCD_RETENTION__{}", key.to_uppercase()), value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "ohlcd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Points of `field` in `"test"."policy"."measurement"`.
async fn count(app: &TestApp, policy: &str, measurement: &str, field: &str) -> i64 {
    let v = app
        .influx
        .query_json(&format!(
            "SELECT count(\"{field}\") FROM \"test\".\"{policy}\".\"{measurement}\""
        ))
        .await
        .unwrap();
    v["series"][0]["values"][0][1].as_i64().unwrap_or(0)
}

/// Waits until influxd's retention service has dropped every point of
/// `measurement` in `policy`.
async fn wait_expired(app: &TestApp, policy: &str, measurement: &str, field: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(app, policy, measurement, field).await > 0 {
        assert!(
            Instant::now() < deadline,
            "{policy}.{measurement} did not expire"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Serves the datafeed with a client placed like `ohlcd` with `retention`.
async fn serve(
    app: &TestApp,
    retention: &[(&str, &str)],
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut env: Vec<(String, String)> = vec![
        ("OHLCD_INFLUX__URL".into(), app.server.url.clone()),
        ("OHLCD_INFLUX__DATABASE".into(), "test".into()),
        (
            "OHLCD_PROGRESS__DATABASE_URL".into(),
            app.settings.progress.database_url.clone(),
        ),
    ];
    for (key, value) in retention {
        env.push((
            format!("OHLCD_RETENTION__{}", key.to_uppercase()),
            value.to_string(),
        ));
    }
    let settings = Settings::load_with_env(None, env).unwrap();
    let mut influx = InfluxClient::new(&settings.influx).unwrap();
    influx.detect().await.unwrap();
    influx.prepare_retention(false).await.unwrap();
    let state = ohlcd::server::AppState::new(
        influx,
        app.store.clone(),
        Arc::new(app.clock.clone()),
        &settings,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(ohlcd::server::serve(listener, state, async move {
        let _ = rx.await;
    }));
    (url, tx)
}

/// The bars of a UDF history answer, checked against `expected` candles:
/// same start times, prices and volumes.
fn assert_bars(v: &Value, expected: &[Candle], what: &str) {
    assert_eq!(v["s"], "ok", "{what}: {v}");
    let col = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let starts: Vec<i64> = v["t"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() * NANOS_PER_SEC)
        .collect();
    let want: Vec<i64> = expected.iter().map(|c| c.start).collect();
    assert_eq!(starts, want, "{what}: bar times");
    for (k, f) in [
        ("o", (|c: &Candle| c.open) as fn(&Candle) -> f64),
        ("h", |c| c.high),
        ("l", |c| c.low),
        ("c", |c| c.close),
        ("v", |c| c.volume),
    ] {
        let got = col(k);
        for (g, c) in got.iter().zip(expected) {
            assert!(
                (g - f(c)).abs() <= 1e-9 * f(c).abs().max(1.0),
                "{what}: {k}"
            );
        }
    }
}

#[tokio::test]
async fn a_rebuild_after_the_raw_trades_expired_keeps_every_candle_and_the_chart_still_shows_them()
{
    let app = spawn().await;
    let forever = [("trades", "raw:INF")];
    let gen_ = ohlcd(
        &app,
        &forever,
        &[
            "generate",
            "--symbols",
            "BTCUSD",
            "--from",
            FROM,
            "--to",
            TO,
            "--trades",
            "20000",
        ],
    );
    assert!(
        text(&gen_).1.contains("created retention policy"),
        "{}",
        text(&gen_).1
    );
    // Raw trades went to their own policy, not the default one.
    assert_eq!(count(&app, "raw", "trades", "price").await, 20_000);
    assert_eq!(count(&app, "autogen", "trades", "price").await, 0);
    ohlcd(&app, &forever, &["backfill"]);
    let mut before = Vec::new();
    for res in Resolution::ALL {
        let stored = app.stored("BTCUSD", res).await;
        assert!(!stored.is_empty(), "{res}");
        before.push(stored);
    }

    // ohlcd shortens the policy; influxd's retention service drops 2024.
    let backfill = ohlcd(&app, &[("trades", "raw:1h")], &["backfill"]);
    assert!(
        text(&backfill)
            .1
            .contains("changed retention policy duration"),
        "{}",
        text(&backfill).1
    );
    wait_expired(&app, "raw", "trades", "price").await;

    // Configured by name only: the one-hour duration comes from the server.
    let rebuild = ohlcd(
        &app,
        &[("trades", "raw")],
        &["rebuild", "--symbol", "BTCUSD", "--from", FROM, "--to", TO],
    );
    let (out, err) = text(&rebuild);
    let kept: usize = before.iter().map(Vec::len).sum();
    assert!(out.contains("rebuild limited to"), "{out}{err}");
    assert!(
        out.contains("raw trades of BTCUSD before") && out.contains("have expired"),
        "{out}"
    );
    assert!(out.contains(&format!("; {kept} candles kept")), "{out}");
    for (i, res) in Resolution::ALL.into_iter().enumerate() {
        let after = app.stored("BTCUSD", res).await;
        assert!(
            after == before[i],
            "{res}: {} candles after the rebuild, {} before",
            after.len(),
            before[i].len()
        );
    }

    // The chart still has the whole range, from the candles.
    let (url, _stop) = serve(&app, &[("trades", "raw")]).await;
    let (from, to) = (t(FROM) / NANOS_PER_SEC, t(TO) / NANOS_PER_SEC);
    for (res, i) in [("60", 3), ("1D", 5)] {
        let (status, v) = get(&format!(
            "{url}/udf/history?symbol=BTCUSD&resolution={res}&from={from}&to={to}"
        ))
        .await;
        assert_eq!(status, 200);
        assert_bars(&v, &before[i], res);
    }
    // countback looks back past the expired raw trades to the candles.
    let (_, v) = get(&format!(
        "{url}/udf/history?symbol=BTCUSD&resolution=1D&from=0&to={}&countback=5",
        to + 2 * 86_400
    ))
    .await;
    assert_bars(&v, &before[5], "countback");
}

#[tokio::test]
async fn where_the_finer_candles_expired_the_datafeed_answers_from_the_coarser_ones() {
    let app = spawn().await;
    let fine = ["trades", "ohlc_1m", "ohlc_5m", "ohlc_15m"];
    let kept_forever: Vec<(&str, &str)> = fine.iter().map(|k| (*k, "short:INF")).collect();
    ohlcd(
        &app,
        &kept_forever,
        &[
            "generate",
            "--symbols",
            "ETHUSD",
            "--from",
            FROM,
            "--to",
            TO,
            "--trades",
            "10000",
        ],
    );
    ohlcd(&app, &kept_forever, &["backfill"]);
    assert!(count(&app, "short", "ohlc_1m", "close").await > 0);
    assert_eq!(count(&app, "autogen", "ohlc_1m", "close").await, 0);
    let hours = app.stored("ETHUSD", Resolution::H1).await;
    let four_hours = app.stored("ETHUSD", Resolution::H4).await;
    assert!(hours.len() > 24, "{}", hours.len());

    let (from, to) = (t(FROM) / NANOS_PER_SEC, t(TO) / NANOS_PER_SEC);
    let history = |url: &str, res: &str| {
        format!("{url}/udf/history?symbol=ETHUSD&resolution={res}&from={from}&to={to}")
    };
    {
        // While 1m is kept, a 1-minute request has 1-minute bars.
        let (url, _stop) = serve(&app, &kept_forever).await;
        let (_, v) = get(&history(&url, "1")).await;
        assert!(v["t"].as_array().unwrap().len() > 2 * hours.len(), "{v}");
    }

    let one_hour: Vec<(&str, &str)> = fine.iter().map(|k| (*k, "short:1h")).collect();
    ohlcd(&app, &one_hour, &["backfill"]);
    wait_expired(&app, "short", "ohlc_1m", "close").await;
    wait_expired(&app, "short", "trades", "price").await;

    let (url, _stop) = serve(&app, &one_hour).await;
    for res in ["1", "5", "15", "30", "60"] {
        let (status, v) = get(&history(&url, res)).await;
        assert_eq!(status, 200);
        assert_bars(&v, &hours, &format!("resolution {res}"));
    }
    // 4h is kept: still exact.
    let (_, v) = get(&history(&url, "240")).await;
    assert_bars(&v, &four_hours, "resolution 240");
    // /api/ohlc, which reports the resolution asked for, has the same bars.
    let (_, v) = get(&format!(
        "{url}/api/ohlc?symbol=ETHUSD&resolution=1&from={from}&to={to}"
    ))
    .await;
    let times: Vec<i64> = v["candles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["time"].as_i64().unwrap() * NANOS_PER_SEC)
        .collect();
    assert_eq!(
        times,
        hours.iter().map(|c| c.start).collect::<Vec<_>>(),
        "{v}"
    );
}

#[tokio::test]
async fn policies_ohlcd_cannot_create_or_change_are_reported_with_the_reason() {
    let influx = influx_with_users(
        &[
            "CREATE DATABASE d",
            "CREATE USER rw WITH PASSWORD 'pw'",
            "GRANT ALL ON d TO rw",
            "CREATE RETENTION POLICY raw ON d DURATION 30d REPLICATION 1",
        ],
        &[("rw", "d")],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // `backfill` as a user that may write the database but not manage it.
    let backfill = |trades: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ohlcd"))
            .arg("backfill")
            .env("OHLCD_INFLUX__URL", &influx.url)
            .env("OHLCD_INFLUX__DATABASE", "d")
            .env("OHLCD_INFLUX__USERNAME", "rw")
            .env("OHLCD_INFLUX__PASSWORD", "pw")
            .env("OHLCD_RETENTION__TRADES", trades)
            .env("OHLCD_LOG", "warn")
            .env(
                "OHLCD_PROGRESS__DATABASE_URL",
                dir.path().join("p.db").display().to_string(),
            )
            .output()
            .unwrap()
    };
    let (_, err) = text(&backfill("raw_90d:90d"));
    assert!(
        err.contains("retention policy \"raw_90d\" (retention.trades) does not exist")
            && err.contains("creating it failed")
            && err.contains("create it as an admin: CREATE RETENTION POLICY \"raw_90d\""),
        "{err}"
    );
    let (_, err) = text(&backfill("nothere"));
    assert!(
        err.contains("\"nothere\" (retention.trades) does not exist")
            && err.contains("nothere:DURATION"),
        "{err}"
    );
    // An existing policy with another duration is used as it is, with a warning.
    let ok = backfill("raw:60d");
    let (_, err) = text(&ok);
    assert!(ok.status.success(), "{err}");
    assert!(
        err.contains("cannot change the retention policy's duration") && err.contains("30d"),
        "{err}"
    );
}

// A 3.x test only: `::v3`, like the 3.x half of the tests on both servers.
mod influxdb_3_refuses_retention_policies_per_measurement_at_start {
    crate::helpers::test_on!(
        v3,
        V3,
        Sqlite,
        super::influxdb_3_refuses_retention_policies_per_measurement_at_start
    );
}

async fn influxdb_3_refuses_retention_policies_per_measurement_at_start(app: TestApp) {
    let out = app
        .ohlcd()
        .env("OHLCD_RETENTION__OHLC_1M", "candles_1y:52w")
        .arg("backfill")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("InfluxDB 3 has no retention policies") && err.contains("--retention-period"),
        "{err}"
    );
}

#[tokio::test]
async fn a_rebuild_of_a_day_whose_raw_trades_partly_expired_recomputes_only_the_covered_windows() {
    let app = spawn().await;
    // One-hour shard groups, so the retention service drops part of a day.
    app.influx
        .query_json(
            "CREATE RETENTION POLICY raw ON test DURATION INF REPLICATION 1 SHARD DURATION 1h",
        )
        .await
        .unwrap();
    let raw = [("trades", "raw")];
    let now_secs = SystemClock.now() / NANOS_PER_SEC;
    let (from, to) = (now_secs - 3 * 3600, now_secs - 120);
    ohlcd(
        &app,
        &raw,
        &[
            "generate",
            "--symbols",
            "BTCUSD",
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
            "--trades",
            "5000",
        ],
    );
    ohlcd(&app, &raw, &["backfill"]);
    let before: Vec<Vec<Candle>> =
        futures_util::future::join_all(Resolution::ALL.map(|res| app.stored("BTCUSD", res))).await;
    ohlcd(&app, &[("trades", "raw:1h")], &["backfill"]);
    // Wait until the shard groups that ended before now - 1h are gone.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = app
            .influx
            .query_json(
                "SELECT count(price) FROM \"test\".\"raw\".\"trades\" WHERE time < now() - 2h",
            )
            .await
            .unwrap();
        if v["series"][0]["values"][0][1].as_i64().unwrap_or(0) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "old trades did not expire");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        count(&app, "raw", "trades", "price").await > 0,
        "all expired"
    );

    // Damage every candle: the rebuild must restore exactly those whose raw
    // trades are all still stored, and leave the others as they are.
    for (i, res) in Resolution::ALL.into_iter().enumerate() {
        let wrong: Vec<Candle> = before[i]
            .iter()
            .map(|c| Candle {
                close: c.close + 1.0,
                ..*c
            })
            .collect();
        crate::helpers::write_candles(&app.influx, res, "BTCUSD", &wrong)
            .await
            .unwrap();
    }
    let settings = Settings::load_with_env(
        None,
        [
            ("OHLCD_INFLUX__URL", app.server.url.as_str()),
            ("OHLCD_INFLUX__DATABASE", "test"),
            ("OHLCD_RETENTION__TRADES", "raw"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    let mut influx = InfluxClient::new(&settings.influx).unwrap();
    influx.detect().await.unwrap();
    influx.prepare_retention(false).await.unwrap();
    let now = SystemClock.now();
    app.clock.set(now);
    // The earliest raw trade still stored, as the test reads it.
    let first_stored = app
        .rows("SELECT price FROM \"test\".\"raw\".\"trades\" WHERE symbol = 'BTCUSD' LIMIT 1")
        .await[0]["time"]
        .as_i64()
        .unwrap();
    let engine = ohlcd::engine::Engine::new(
        influx,
        app.store.clone(),
        Arc::new(app.clock.clone()),
        app.settings.engine.clone(),
        Duration::from_secs(app.settings.progress.lease_secs),
    );
    let report = engine
        .rebuild("BTCUSD", from * NANOS_PER_SEC, now + NANOS_PER_SEC)
        .await
        .unwrap();
    assert!(report.is_limited() && report.expired, "{report:?}");
    // README's rule, written out here: raw trades kept for d = 1h are all
    // there from now - d + 5 min on; a window is rebuilt iff it starts at or
    // after that and ends after the earliest raw trade still stored.
    let complete_from = now - 3600 * NANOS_PER_SEC + 5 * 60 * NANOS_PER_SEC;
    let rebuilt =
        |res: Resolution, start: i64| start >= complete_from && start + res.nanos() > first_stored;
    let (mut restored, mut kept) = (0, 0);
    for (i, res) in Resolution::ALL.into_iter().enumerate() {
        let after = app.stored("BTCUSD", res).await;
        assert_eq!(after.len(), before[i].len(), "{res}");
        let mut restored_here = 0;
        for (a, b) in after.iter().zip(&before[i]) {
            if rebuilt(res, a.start) {
                assert_eq!(a, b, "{res} at {} is rebuilt", to_rfc3339(a.start));
                restored_here += 1;
            } else {
                assert_eq!(
                    a.close,
                    b.close + 1.0,
                    "{res} at {} is kept",
                    to_rfc3339(a.start)
                );
                kept += 1;
            }
        }
        // Trades run to two minutes before the rebuild: the last 55 minutes
        // hold complete 1m, 5m and 15m windows.
        if res.nanos() <= 15 * 60 * NANOS_PER_SEC {
            assert!(restored_here > 0, "{res}: nothing rebuilt");
        }
        restored += restored_here;
    }
    assert!(restored > 0 && kept > 0, "{restored} restored, {kept} kept");
    assert_eq!(report.kept, kept);
}

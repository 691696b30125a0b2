//! The HTTP API and UDF datafeed against a running server with real InfluxDB and
//! SQLite: every answer is checked against bars computed independently from the
//! raw trades.

use ohlcd::candle::{Candle, NANOS_PER_SEC, Resolution};
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::NewTrade;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_candles_eq, naive_month_start, naive_week_start, on_both_servers,
    on_both_stores, t,
};

/// Maps a trade time to the start of its bar.
pub(crate) type WindowOf = Box<dyn Fn(i64) -> i64>;

const FROM: &str = "2024-01-03T00:00:00Z";
const TO: &str = "2024-03-12T07:30:00Z";

/// Two symbols of trades over ~10 weeks (crossing months and weeks), the engine
/// caught up, and the clock an hour after the data.
async fn app_with_history(materialize: bool) -> TestApp {
    with_history(TestApp::spawn().await, materialize).await
}

/// [`app_with_history`] on a given app.
async fn with_history(app: TestApp, materialize: bool) -> TestApp {
    // As `ohlcd run` does before its first tick: the process-wide recorder is
    // installed first, so the tick below is counted whichever test runs first.
    ohlcd::server::metrics::handle();
    let spec = GenerateSpec {
        symbols: vec!["BTCUSD".into(), "ETHUSD".into()],
        from: t(FROM),
        to: t(TO),
        trades: 40_000,
        seed: 11,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;
    app.clock.set(t(TO) + 3600 * NANOS_PER_SEC);
    if materialize {
        catch_up(&app).await;
    }
    app
}

/// Runs the engine until caught up.
async fn catch_up(app: &TestApp) {
    let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

on_both_servers!(
    an_empty_range_answers_no_data_with_the_nearest_earlier_bar,
    api_ohlc_coarsens_long_ranges_and_reports_the_resolution_used,
    history_at_every_tested_resolution_equals_bars_from_raw_trades,
    countback_returns_that_many_bars_before_to_and_to_is_exclusive,
    the_open_bar_is_live_and_changes_when_a_trade_is_posted,
    a_late_trade_updates_candles_at_every_resolution_after_the_next_tick,
    udf_metadata_endpoints_answer_as_tradingview_expects,
    progress_health_metrics_and_raw_trades_are_served,
    bad_requests_get_a_4xx_with_a_message_and_write_nothing,
    trades_without_ids_survive_and_a_retried_request_counts_once,
);

on_both_stores!(the_progress_table_of_5200_symbols_is_served_row_for_row_as_the_store_holds_it);

pub(crate) async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) async fn post(url: &str, body: String) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Bars of a UDF `{s, t, o, h, l, c, v}` answer: (start ns, open, high, low,
/// close, volume). UDF carries nothing else.
/// `GET /metrics` of the server at `url`, asserting that every one of `names`
/// is in it.
pub(crate) async fn metrics_with(url: &str, names: &[&str]) -> String {
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in names {
        assert!(metrics.contains(name), "{name} not in /metrics:\n{metrics}");
    }
    metrics
}

pub(crate) fn udf_bars(v: &Value) -> Vec<(i64, f64, f64, f64, f64, f64)> {
    assert_eq!(v["s"], "ok", "{v}");
    let col = |k: &str| v[k].as_array().unwrap().clone();
    let (ts, o, h, l, c, vol) = (col("t"), col("o"), col("h"), col("l"), col("c"), col("v"));
    (0..ts.len())
        .map(|i| {
            (
                ts[i].as_i64().unwrap() * NANOS_PER_SEC,
                o[i].as_f64().unwrap(),
                h[i].as_f64().unwrap(),
                l[i].as_f64().unwrap(),
                c[i].as_f64().unwrap(),
                vol[i].as_f64().unwrap(),
            )
        })
        .collect()
}

/// UDF bars equal `expected` in every field UDF has: time, open, high, low and
/// close exactly, volume up to summation order.
pub(crate) fn assert_udf_matches(
    bars: &[(i64, f64, f64, f64, f64, f64)],
    expected: &[Candle],
    what: &str,
) {
    assert_eq!(bars.len(), expected.len(), "{what}: bar count");
    for (b, e) in bars.iter().zip(expected) {
        assert_eq!(
            (b.0, b.1, b.2, b.3, b.4),
            (e.start, e.open, e.high, e.low, e.close),
            "{what}: bar at {} differs",
            e.start
        );
        assert!(
            (b.5 - e.volume).abs() <= 1e-9 * e.volume.abs() + 1e-12,
            "{what}: volume at {}: {} vs {}",
            e.start,
            b.5,
            e.volume
        );
    }
}

/// Candles of an `/api/ohlc` answer, every field.
fn api_candles(v: &Value) -> Vec<Candle> {
    v["candles"]
        .as_array()
        .unwrap_or_else(|| panic!("no candles: {v}"))
        .iter()
        .map(|c| Candle {
            start: c["time"].as_i64().unwrap() * NANOS_PER_SEC,
            open: c["open"].as_f64().unwrap(),
            high: c["high"].as_f64().unwrap(),
            low: c["low"].as_f64().unwrap(),
            close: c["close"].as_f64().unwrap(),
            volume: c["volume"].as_f64().unwrap(),
            quote_volume: c["quote_volume"].as_f64().unwrap(),
            trades: c["trades"].as_i64().unwrap(),
            buy_volume: c["buy_volume"].as_f64().unwrap(),
        })
        .collect()
}

/// First with nothing materialized (every bar from raw trades), then with the
/// engine caught up.
async fn history_at_every_tested_resolution_equals_bars_from_raw_trades(app: TestApp) {
    let app = with_history(app, false).await;
    let (url, _stop) = app.serve().await;
    for materialize in [false, true] {
        if materialize {
            catch_up(&app).await;
        }
        let (from, to) = (t(FROM) / NANOS_PER_SEC, t(TO) / NANOS_PER_SEC + 3600);
        let minutes =
            |m: i64| move |x: i64| x.div_euclid(m * 60 * NANOS_PER_SEC) * m * 60 * NANOS_PER_SEC;
        let cases: Vec<(&str, WindowOf)> = vec![
            ("30", Box::new(minutes(30))),
            ("45", Box::new(minutes(45))),
            ("120", Box::new(minutes(120))),
            ("240", Box::new(minutes(240))),
            ("1D", Box::new(minutes(1440))),
            ("1W", Box::new(naive_week_start)),
            ("1M", Box::new(naive_month_start)),
        ];
        for (res, window_of) in cases {
            let (status, v) = get(&format!(
                "{url}/udf/history?symbol=ETHUSD&resolution={res}&from={from}&to={to}"
            ))
            .await;
            assert_eq!(status, 200, "{res}: {v}");
            // Bars starting at or after `from`: the first week/month starts earlier.
            let expected: Vec<Candle> = app
                .expected_by("ETHUSD", window_of)
                .await
                .into_iter()
                .filter(|c| c.start >= from * NANOS_PER_SEC)
                .collect();
            assert!(!expected.is_empty());
            assert_udf_matches(
                &udf_bars(&v),
                &expected,
                &format!("{res} (materialized: {materialize})"),
            );
            // The sums UDF leaves out (trade count, quote and buy volume), from
            // /api/ohlc at the same resolution over the last 60 days (short
            // enough that it is not coarsened).
            let api_from = to - 60 * 86_400;
            let (status, v) = get(&format!(
                "{url}/api/ohlc?symbol=ETHUSD&resolution={res}&from={api_from}&to={to}"
            ))
            .await;
            assert_eq!((status, v["resolution"].as_str()), (200, Some(res)), "{v}");
            let expected: Vec<Candle> = expected
                .into_iter()
                .filter(|c| c.start >= api_from * NANOS_PER_SEC)
                .collect();
            assert_candles_eq(
                &api_candles(&v),
                &expected,
                &format!("/api/ohlc {res} (materialized: {materialize})"),
            );
        }
    }
}

async fn countback_returns_that_many_bars_before_to_and_to_is_exclusive(app: TestApp) {
    let app = with_history(app, true).await;
    let (url, _stop) = app.serve().await;
    let to = t("2024-02-20T12:00:00Z") / NANOS_PER_SEC;
    let (status, v) = get(&format!(
        "{url}/udf/history?symbol=BTCUSD&resolution=60&from=1&to={to}&countback=7"
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    let hour = 3600 * NANOS_PER_SEC;
    let expected: Vec<Candle> = app
        .expected_by("BTCUSD", |x| x.div_euclid(hour) * hour)
        .await
        .into_iter()
        .filter(|c| c.start < to * NANOS_PER_SEC)
        .collect();
    let last7 = &expected[expected.len() - 7..];
    assert_udf_matches(&udf_bars(&v), last7, "countback=7");
    assert_eq!(
        udf_bars(&v).last().unwrap().0,
        (to - 3600) * NANOS_PER_SEC,
        "the bar at `to` is excluded"
    );
}

async fn an_empty_range_answers_no_data_with_the_nearest_earlier_bar(app: TestApp) {
    let app = with_history(app, true).await;
    let (url, _stop) = app.serve().await;
    // After the last trade: no bars, nextTime is the bar of the last trade.
    let from = t("2024-03-20T00:00:00Z") / NANOS_PER_SEC;
    let (status, v) = get(&format!(
        "{url}/udf/history?symbol=BTCUSD&resolution=15&from={from}&to={}",
        from + 86_400
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["s"], "no_data", "{v}");
    let last = app
        .expected("BTCUSD", Resolution::M15, i64::MAX)
        .await
        .last()
        .unwrap()
        .start;
    assert_eq!(v["nextTime"], last / NANOS_PER_SEC);
    // Before the first trade: no earlier bar, so no nextTime.
    let (_, v) = get(&format!(
        "{url}/udf/history?symbol=BTCUSD&resolution=15&from=1000000000&to=1000086400"
    ))
    .await;
    assert_eq!(v, json!({"s": "no_data"}));
}

async fn the_open_bar_is_live_and_changes_when_a_trade_is_posted(app: TestApp) {
    let (url, _stop) = app.serve().await;
    let now = t("2024-06-01T12:34:30Z");
    app.clock.set(now);
    let ms = |s: &str| t(s) / 1_000_000;
    let body = json!([
        {"symbol": "SOLUSD", "price": 150.0, "amount": 1.0, "side": "buy", "timestamp": ms("2024-06-01T12:33:10Z"), "id": 1},
        {"symbol": "SOLUSD", "price": 151.0, "amount": 1.0, "side": "buy", "timestamp": ms("2024-06-01T12:34:05Z"), "id": 2},
    ]);
    let (status, v) = post(&format!("{url}/api/trades"), body.to_string()).await;
    assert_eq!((status, &v["accepted"]), (200, &json!(2)), "{v}");
    app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    let poll = format!(
        "{url}/udf/history?symbol=SOLUSD&resolution=1&from=1&to={}&countback=2",
        now / NANOS_PER_SEC
    );
    let (_, v) = get(&poll).await;
    let bars = udf_bars(&v);
    assert_eq!(bars.len(), 2, "{v}");
    assert_eq!(
        bars[1].0,
        t("2024-06-01T12:34:00Z"),
        "the open minute is served from raw trades"
    );
    assert_eq!((bars[1].4, bars[1].2), (151.0, 151.0));

    let more = json!({"symbol": "SOLUSD", "price": 155.5, "amount": 2.0, "side": "sell", "timestamp": ms("2024-06-01T12:34:20Z"), "id": 3});
    let (status, _) = post(&format!("{url}/api/trades"), more.to_string()).await;
    assert_eq!(status, 200);
    let (_, v) = get(&poll).await;
    let bars = udf_bars(&v);
    assert_eq!(
        (bars[1].2, bars[1].4, bars[1].5),
        (155.5, 155.5, 3.0),
        "{v}"
    );
}

async fn a_late_trade_updates_candles_at_every_resolution_after_the_next_tick(app: TestApp) {
    let app = with_history(app, true).await;
    let (url, _stop) = app.serve().await;
    // Far behind every watermark, with a price no other trade has.
    let late = json!({"symbol": "BTCUSD", "price": 99999.5, "amount": 3.25, "side": "buy",
                      "timestamp": "2024-02-07T10:11:12.345Z", "id": 987654321});
    let (status, v) = post(&format!("{url}/api/trades"), late.to_string()).await;
    assert_eq!((status, &v["late"]), (200, &json!(1)), "{v}");
    let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty());
    let until = ohlcd::clock::Clock::now(&app.clock) - 5 * NANOS_PER_SEC;
    for res in Resolution::ALL {
        let stored = app.stored("BTCUSD", res).await;
        let expected = app
            .expected("BTCUSD", res, Resolution::M1.window_start(until))
            .await;
        assert_candles_eq(
            &stored,
            &expected,
            &format!("BTCUSD {res} after late trade"),
        );
        let at = res.window_start(t("2024-02-07T10:11:12Z"));
        let c = stored.iter().find(|c| c.start == at).unwrap();
        assert_eq!(c.high, 99999.5, "{res}");
    }
    // Recomputed once: the dirty ranges are gone.
    for res in Resolution::ALL {
        assert!(app.store.dirty("BTCUSD", res).await.unwrap().is_empty());
    }
}

async fn api_ohlc_coarsens_long_ranges_and_reports_the_resolution_used(app: TestApp) {
    let app = with_history(app, true).await;
    let (url, _stop) = app.serve().await;
    let (from, to) = (t(FROM) / NANOS_PER_SEC, t(TO) / NANOS_PER_SEC);
    // 31 days at 1m: more than 30 days → 15m (2,980 bars, under the 3,000 cap).
    let from = from.max(to - 31 * 86_400 - 3600);
    let (status, v) = get(&format!(
        "{url}/api/ohlc?symbol=BTCUSD&resolution=1&from={from}&to={to}"
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["requested_resolution"].as_str(), v["resolution"].as_str()),
        (Some("1"), Some("15"))
    );
    let q = 15 * 60 * NANOS_PER_SEC;
    let expected: Vec<Candle> = app
        .expected_by("BTCUSD", |x| x.div_euclid(q) * q)
        .await
        .into_iter()
        .filter(|c| c.start >= from * NANOS_PER_SEC && c.start < to * NANOS_PER_SEC)
        .collect();
    assert_candles_eq(&api_candles(&v), &expected, "/api/ohlc 15m");
    // The whole ~69 days at 1m: 15m would be 6,600 bars, over the cap → 60.
    let (_, v) = get(&format!(
        "{url}/api/ohlc?symbol=BTCUSD&resolution=1&from={}&to={to}",
        t(FROM) / NANOS_PER_SEC
    ))
    .await;
    assert_eq!(v["resolution"], "60", "{v}");
    // Over a year: 1D.
    let (_, v) = get(&format!(
        "{url}/api/ohlc?symbol=BTCUSD&resolution=5&from={}&to={to}",
        to - 400 * 86_400
    ))
    .await;
    assert_eq!(v["resolution"], "1D", "{v}");
}

async fn udf_metadata_endpoints_answer_as_tradingview_expects(app: TestApp) {
    let app = with_history(app, true).await;
    let (url, _stop) = app.serve().await;
    let (_, config) = get(&format!("{url}/udf/config")).await;
    assert_eq!(config["supports_search"], true);
    assert_eq!(config["supports_group_request"], false);
    assert_eq!(config["supports_time"], true);
    let res: Vec<&str> = config["supported_resolutions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for r in [
        "1", "5", "15", "30", "45", "60", "120", "240", "360", "720", "1D", "1W", "1M",
    ] {
        assert!(res.contains(&r), "{r} missing from {res:?}");
    }
    let (status, info) = get(&format!("{url}/udf/symbols?symbol=BTCUSD")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            info["session"].as_str(),
            info["timezone"].as_str(),
            info["type"].as_str()
        ),
        (Some("24x7"), Some("Etc/UTC"), Some("crypto"))
    );
    assert_eq!(
        (
            info["has_intraday"].as_bool(),
            info["has_daily"].as_bool(),
            info["has_weekly_and_monthly"].as_bool()
        ),
        (Some(true), Some(true), Some(true))
    );
    assert_eq!(
        info["pricescale"], 100,
        "BTC prices have 2 decimals: {info}"
    );
    assert!(info["minmov"].is_number() && info["volume_precision"].is_number());
    let (_, exch) = get(&format!("{url}/udf/symbols?symbol=ohlcd:ETHUSD")).await;
    assert_eq!(exch["name"], "ETHUSD");
    let (_, found) = get(&format!("{url}/udf/search?query=eth&limit=10")).await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["symbol"], "ETHUSD");
    let (_, all) = get(&format!("{url}/udf/search?query=&limit=1")).await;
    assert_eq!(all.as_array().unwrap().len(), 1, "limit applies");
    let time = reqwest::get(format!("{url}/udf/time"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        time,
        ((t(TO) + 3600 * NANOS_PER_SEC) / NANOS_PER_SEC).to_string()
    );
}

async fn progress_health_metrics_and_raw_trades_are_served(app: TestApp) {
    let app = with_history(app, true).await;
    let (url, _stop) = app.serve().await;
    let (status, progress) = get(&format!("{url}/api/progress")).await;
    assert_eq!(status, 200);
    let entries = progress.as_array().unwrap();
    assert_eq!(entries.len(), 12);
    assert!(
        entries
            .iter()
            .all(|e| e["status"] == "completed" && e["watermark"].is_string())
    );
    let (status, health) = get(&format!("{url}/healthz")).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, trades) = get(&format!(
        "{url}/api/trades?symbol=BTCUSD&from={}&to={}&limit=5",
        t(FROM) / NANOS_PER_SEC,
        t(TO) / NANOS_PER_SEC
    ))
    .await;
    assert_eq!(status, 200);
    let trades = trades["trades"].as_array().unwrap();
    assert_eq!(trades.len(), 5);
    assert!(
        trades
            .windows(2)
            .all(|w| w[0]["timestamp"].as_i64() <= w[1]["timestamp"].as_i64())
    );
    let metrics = metrics_with(
        &url,
        &[
            "ohlcd_http_requests_total",
            "ohlcd_task_lag_seconds",
            "ohlcd_candles_written_total",
            "ohlcd_chunk_duration_seconds",
        ],
    )
    .await;
    assert!(
        metrics.contains(r#"route="/api/progress",status="200""#),
        "{metrics}"
    );
}

async fn trade_count(app: &TestApp) -> i64 {
    let rows = app.rows("SELECT count(price) FROM trades").await;
    rows.first().map_or(0, |r| r["count"].as_i64().unwrap())
}

async fn bad_requests_get_a_4xx_with_a_message_and_write_nothing(app: TestApp) {
    let app = with_history(app, true).await;
    let (url, _stop) = app.serve().await;
    let before = trade_count(&app).await;
    let ok = r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"buy","timestamp":1706745600000}"#;
    let posts: Vec<(String, u16, &str)> = vec![
        (format!("[{ok}, {{\"symbol\":\"BTCUSD\"}}]"), 400, "trade 1: price"),
        (r#"{"symbol":"BTC'USD","price":1,"amount":1,"side":"buy","timestamp":1706745600000}"#.into(), 400, "trade 0: symbol"),
        (r#"{"symbol":"BTCUSD\n","price":1,"amount":1,"side":"buy","timestamp":1706745600000}"#.into(), 400, "symbol"),
        (r#"{"symbol":"БТК","price":1,"amount":1,"side":"buy","timestamp":1706745600000}"#.into(), 400, "symbol"),
        (r#"{"symbol":"BTCUSD","price":-1,"amount":1,"side":"buy","timestamp":1706745600000}"#.into(), 400, "price"),
        (r#"{"symbol":"BTCUSD","price":1,"amount":0,"side":"buy","timestamp":1706745600000}"#.into(), 400, "amount"),
        (r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"up","timestamp":1706745600000}"#.into(), 400, "side"),
        (r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"buy","timestamp":"yesterday"}"#.into(), 400, "timestamp"),
        (r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"buy"}"#.into(), 400, "timestamp"),
        (r#"{"symbol":"BTCUSD","price":Infinity,"amount":1,"side":"buy","timestamp":1706745600000}"#.into(), 400, "JSON"),
        (r#"{"symbol":"BTCUSD","price":1e999,"amount":1,"side":"buy","timestamp":1706745600000}"#.into(), 400, "JSON"),
        (r#"{"symbol":"BTCUSD","pri"#.into(), 400, "JSON"),
        ("null".into(), 400, "trade object"),
        (format!("[{}]", vec![ok; 100_001].join(",")), 413, "at most"),
        ("x".repeat(17 * 1024 * 1024), 413, "too large"),
    ];
    for (body, status, needle) in posts {
        let shown: String = body.chars().take(80).collect();
        let (got, v) = post(&format!("{url}/api/trades"), body).await;
        assert_eq!(got, status, "{shown}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{shown}: {msg:?} should mention {needle:?}"
        );
    }
    assert_eq!(
        trade_count(&app).await,
        before,
        "nothing written by rejected requests"
    );

    let gets: Vec<(String, u16, &str)> = vec![
        (
            "/udf/history?symbol=NOPE&resolution=1&from=1&to=2".into(),
            404,
            "unknown symbol",
        ),
        (
            "/udf/history?symbol=BTCUSD&resolution=7X&from=1&to=2".into(),
            400,
            "resolution",
        ),
        (
            "/udf/history?symbol=BTCUSD&resolution=1&from=20&to=10".into(),
            400,
            "before",
        ),
        (
            "/udf/history?symbol=BTCUSD&resolution=1&from=abc&to=10".into(),
            400,
            "from",
        ),
        (
            "/udf/history?symbol=BTCUSD&resolution=1&from=0&to=7258118400".into(),
            400,
            "range too large",
        ),
        (
            "/udf/history?symbol=BTCUSD&resolution=1&to=10&countback=0".into(),
            400,
            "countback",
        ),
        (
            "/udf/history?symbol=BTC%27%20OR%201%3D1&resolution=1&from=1&to=2".into(),
            400,
            "symbol",
        ),
        (
            "/udf/history?resolution=1&from=1&to=2".into(),
            400,
            "symbol",
        ),
        ("/udf/symbols?symbol=ZZZ".into(), 404, "unknown symbol"),
        ("/udf/search?limit=-1".into(), 400, "limit"),
        (
            "/api/ohlc?symbol=BTCUSD&resolution=1&from=10&to=5".into(),
            400,
            "before",
        ),
        (
            "/api/ohlc?symbol=BTCUSD&resolution=D1&from=1&to=5".into(),
            400,
            "resolution",
        ),
        (
            "/api/ohlc?symbol=BTCUSD&resolution=1&from=99999999999999999999&to=5".into(),
            400,
            "from",
        ),
        (
            "/api/trades?symbol=BTCUSD&limit=100000".into(),
            400,
            "limit",
        ),
        ("/api/trades?symbol=%22%3B%20DROP".into(), 400, "symbol"),
        ("/no/such/thing".into(), 404, "no such endpoint"),
    ];
    for (path, status, needle) in gets {
        let (got, v) = get(&format!("{url}{path}")).await;
        assert_eq!(got, status, "{path}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{path}: {msg:?} should mention {needle:?}"
        );
        if path.starts_with("/udf/") && status != 404
            || path.starts_with("/udf/history?symbol=NOPE")
        {
            assert_eq!(v["s"], "error", "{path}: UDF error shape");
        }
    }
    assert_eq!(trade_count(&app).await, before);
}

async fn trades_without_ids_survive_and_a_retried_request_counts_once(app: TestApp) {
    app.clock.set(t("2024-07-01T00:00:00Z"));
    let (url, _stop) = app.serve().await;
    let trade = json!({"symbol": "DOGEUSD", "price": 0.1, "amount": 100.0, "side": "sell", "timestamp": "2024-06-30T10:00:00.001Z"});
    let body = json!([trade, trade, {"symbol": "DOGEUSD", "price": 0.2, "amount": 5.0, "side": "sell", "timestamp": "2024-06-30T10:00:00.001Z"}]).to_string();
    assert_eq!(
        post(&format!("{url}/api/trades"), body.clone()).await.0,
        200
    );
    assert_eq!(post(&format!("{url}/api/trades"), body).await.0, 200);
    assert_eq!(trade_count(&app).await, 3);
}

// 1.x only: 3.x has no DROP MEASUREMENT over InfluxQL.
#[tokio::test]
async fn a_missing_source_measurement_falls_back_to_finer_data() {
    let app = app_with_history(true).await;
    let (url, _stop) = app.serve().await;
    // Someone dropped the 15m candles: 30-minute bars must still be right.
    app.influx
        .query_json("DROP MEASUREMENT ohlc_15m")
        .await
        .unwrap();
    let (from, to) = (t(FROM) / NANOS_PER_SEC, t(TO) / NANOS_PER_SEC);
    let (status, v) = get(&format!(
        "{url}/udf/history?symbol=BTCUSD&resolution=30&from={from}&to={to}"
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    let half = 1800 * NANOS_PER_SEC;
    let expected: Vec<Candle> = app
        .expected_by("BTCUSD", |x| x.div_euclid(half) * half)
        .await
        .into_iter()
        .filter(|c| c.start < to * NANOS_PER_SEC)
        .collect();
    assert_udf_matches(&udf_bars(&v), &expected, "30 without ohlc_15m");
}

/// `GET /api/progress` writes rows into the body as the store yields them
/// and `/metrics` writes the lag lines the same way: 31,200 rows in every
/// state a task can be in (never run, committed and released, failed,
/// leased), symbols created in reverse order with mixed case and lengths so
/// the order has to come from the query. The oracle is the whole table read
/// with `ProgressStore::tasks` (sorted in Rust) and serialized as one array,
/// as the endpoint answered before it streamed.
async fn the_progress_table_of_5200_symbols_is_served_row_for_row_as_the_store_holds_it(
    backend: ohlcd::progress::Backend,
) {
    use ohlcd::progress::{ProgressEntry, StepCommit, TaskStatus};
    let app = TestApp::spawn_on_store(backend).await;
    const SYMBOLS: usize = 5_200;
    let (hour, now) = (3_600 * NANOS_PER_SEC, t("2024-03-01T00:00:00Z"));
    app.clock.set(now);
    let (url, _stop) = app.serve().await;
    for path in ["/api/progress", "/api/progress"] {
        let empty = reqwest::get(format!("{url}{path}")).await.unwrap();
        assert_eq!(empty.status(), 200);
        assert_eq!(empty.text().await.unwrap(), "[]", "an empty table");
    }
    let symbols: Vec<String> = (0..SYMBOLS)
        .rev()
        .map(|i| match i % 3 {
            0 => format!("S{i}"),
            1 => format!("s{i:05}"),
            _ => format!("X{i}-USD"),
        })
        .collect();
    app.store
        .ensure_symbols(&symbols, now - 24 * hour)
        .await
        .unwrap();
    let lease = std::time::Duration::from_secs(600);
    let ran: Vec<String> = symbols.iter().step_by(2).cloned().collect();
    let claimed = app
        .store
        .claim_symbols(&ran, "a", now - hour, lease)
        .await
        .unwrap();
    assert_eq!(claimed.len(), ran.len());
    let steps: Vec<StepCommit> = ran
        .iter()
        .enumerate()
        .map(|(i, symbol)| {
            let end = now - (i as i64 % 90) * 60 * NANOS_PER_SEC - hour;
            StepCommit {
                symbol: symbol.clone(),
                kind: "chunk",
                range: end - 24 * hour..end,
                watermarks: Some(std::array::from_fn(|r| {
                    Some(Resolution::ALL[r].window_start(end))
                })),
                rows_read: i as u64,
                skipped: 0,
                candles: std::array::from_fn(|r| (i + r) as u64),
                started_at: now - hour,
            }
        })
        .collect();
    app.store
        .commit_steps("a", &steps, now - hour / 2)
        .await
        .unwrap();
    // A quarter released, a quarter failed, the rest still leased by "a".
    let (done, rest) = ran.split_at(ran.len() / 4);
    let (failed, _leased) = rest.split_at(ran.len() / 4);
    let statuses: Vec<(String, TaskStatus)> = done
        .iter()
        .map(|s| (s.clone(), TaskStatus::Completed))
        .collect();
    app.store
        .release_symbols("a", &statuses, now - hour / 4)
        .await
        .unwrap();
    app.store
        .fail_symbols(
            "a",
            failed,
            &ohlcd::progress::FailedRun {
                range: now - hour..now,
                error: "InfluxDB said \"no\"",
                failure: ohlcd::progress::Failure::OfTheSymbol,
                started_at: now - hour,
            },
            now,
        )
        .await
        .unwrap();

    let tasks = app.store.tasks().await.unwrap();
    assert_eq!(tasks.len(), SYMBOLS * 6);
    let expected: Vec<ProgressEntry> = tasks
        .iter()
        .map(|t| ProgressEntry::from_task(t, now))
        .collect();
    let mut in_order: Vec<(String, &str)> = Vec::new();
    let mut names = symbols.clone();
    names.sort();
    for s in &names {
        in_order.extend(Resolution::ALL.iter().map(|r| (s.clone(), r.name())));
    }
    let resp = reqwest::get(format!("{url}/api/progress")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = resp.bytes().await.unwrap();
    let want = serde_json::to_vec(&expected).unwrap();
    if let Some(at) = body.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "bodies differ at byte {at}: served …{}… expected …{}…",
            String::from_utf8_lossy(&body[at.saturating_sub(80)..(at + 80).min(body.len())]),
            String::from_utf8_lossy(&want[at.saturating_sub(80)..(at + 80).min(want.len())]),
        );
    }
    assert_eq!(body.len(), want.len(), "same bytes, one body longer");
    let served: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let served_order: Vec<(String, &str)> = served
        .iter()
        .map(|e| {
            (
                e["symbol"].as_str().unwrap().to_string(),
                e["resolution"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        served_order == in_order,
        "rows by symbol (byte order), then 1m … 1d"
    );
    assert_eq!(
        served.iter().filter(|e| e["status"] == "failed").count(),
        failed.len() * 6
    );

    // `ohlcd progress --json`: the same rows (its lag is from the system clock).
    let out = app.ohlcd().args(["progress", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cli: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut ours = served;
    for e in cli.iter_mut().chain(ours.iter_mut()) {
        let e = e.as_object_mut().unwrap();
        e.remove("lag");
        e.remove("lag_seconds");
    }
    assert!(
        cli == ours,
        "ohlcd progress --json shows other rows than GET /api/progress"
    );

    // `/metrics`: one lag line per task with a watermark, from the same rows.
    let metrics = metrics_with(&url, &["ohlcd_task_lag_seconds"]).await;
    let lag_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ohlcd_task_lag_seconds{"))
        .collect();
    let with_watermark: Vec<&ohlcd::progress::Task> =
        tasks.iter().filter(|t| t.watermark.is_some()).collect();
    assert_eq!(lag_lines.len(), with_watermark.len());
    assert_eq!(with_watermark.len(), ran.len() * 6);
    let t0 = with_watermark[0];
    let line = format!(
        "ohlcd_task_lag_seconds{{symbol=\"{}\",resolution=\"{}\"}} {}",
        t0.symbol,
        t0.resolution.name(),
        (now - t0.watermark.unwrap()) as f64 / 1e9
    );
    assert!(lag_lines.contains(&line.as_str()), "{line} not in /metrics");
    assert_eq!(
        metrics
            .matches("# TYPE ohlcd_task_lag_seconds gauge")
            .count(),
        1,
        "one type line"
    );
}

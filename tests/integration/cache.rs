//! The serving cache stays exact: closed candles kept in memory by a server
//! are dropped when ohlcd rewrites them (a late trade repaired, `ohlcd
//! rebuild`), whichever process or daemon does the rewrite. Every answer is
//! checked against bars computed independently from the raw trades.
//!
//! To see that answers really come from the cache, a stored candle is changed
//! behind ohlcd's back (not one of ohlcd's commits, so the cache may keep the
//! old one): a cached server keeps answering the old value until a rewrite of
//! ohlcd's moves the symbol's candle epoch.

use std::time::{Duration, Instant};

use ohlcd::candle::{Candle, NANOS_PER_SEC, Resolution, Side};
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::NewTrade;
use ohlcd::progress::Backend;
use serde_json::json;

use crate::helpers::{TestApp, on_both_stores, t};
use crate::http::{assert_udf_matches, get, metrics_with, post, udf_bars};

const FROM: &str = "2024-06-01T06:00:00Z";
const TO: &str = "2024-06-01T12:00:00Z";
/// The chart's `to`: half an hour after the data, where the clock stands.
const NOW: &str = "2024-06-01T12:30:00Z";
/// The minute whose candles get rewritten.
const MINUTE: &str = "2024-06-01T09:17:00Z";

/// One symbol with trades over six hours, the engine caught up at [`NOW`].
async fn app_with_candles(backend: Backend) -> TestApp {
    let app = TestApp::spawn_on_store(backend).await;
    let spec = GenerateSpec {
        symbols: vec!["BTCUSD".parse().unwrap()],
        from: t(FROM),
        to: t(TO),
        trades: 3_000,
        seed: 5,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;
    app.clock.set(t(NOW));
    let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    app
}

/// `/udf/history` for the 300 bars of `resolution` (minutes) before [`NOW`].
fn history_url(base: &str, resolution: i64) -> String {
    format!(
        "{base}/udf/history?symbol=BTCUSD&resolution={resolution}&from=1&to={}&countback=300",
        t(NOW) / NANOS_PER_SEC
    )
}

/// Bars of `resolution` (minutes) computed naively from the raw trades now in
/// InfluxDB: the last 300 before [`NOW`].
async fn expected(app: &TestApp, resolution: i64) -> Vec<Candle> {
    let len = resolution * 60 * NANOS_PER_SEC;
    let all = app.expected_by("BTCUSD", |x| x.div_euclid(len) * len).await;
    let skip = all.len().saturating_sub(300);
    all[skip..].to_vec()
}

/// The high of the bar at `start` in a server's answer.
async fn high_at(url: &str, start: i64) -> f64 {
    let (status, v) = get(url).await;
    assert_eq!(status, 200, "{v}");
    let bars = udf_bars(&v);
    let bar = bars.iter().find(|b| b.0 == start);
    bar.unwrap_or_else(|| panic!("no bar at {start}: {v}")).2
}

/// Polls `url` until the bar at `start` has high `high`; panics after 30 s (a
/// bound for a busy machine, not a latency assertion: the cache rechecks
/// the store every `datafeed.cache_recheck_ms`).
async fn until_high(url: &str, start: i64, high: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = high_at(url, start).await;
        if seen == high {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: the bar at {start} still has high {seen}, not {high}: a stale cached candle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Changes the stored `res` candle of BTCUSD at `start` in InfluxDB directly
/// (only its high), as no ohlcd commit ever would.
async fn tamper(app: &TestApp, res: Resolution, start: i64, high: f64) {
    let line = format!("{},symbol=BTCUSD high={high} {start}", res.measurement());
    let resp = reqwest::Client::new()
        .post(format!("{}/write?db=test", app.server.url))
        .body(line)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "{:?}", resp.text().await);
}

/// Both servers answer the cached candles, then a late trade posted to one
/// and repaired by the other daemon's engine reaches both.
async fn a_repair_by_another_daemon_drops_what_every_server_cached(backend: Backend) {
    let app = app_with_candles(backend).await;
    let (first, _stop_first) = app.serve().await;
    let (second, _stop_second) = app.serve().await;
    let minute = t(MINUTE);
    let hour = Resolution::H1.window_start(minute);
    for url in [&first, &second] {
        for res in [1, 60] {
            let (_, v) = get(&history_url(url, res)).await;
            assert_udf_matches(
                &udf_bars(&v),
                &expected(&app, res).await,
                &format!("{url} at {res} before"),
            );
        }
    }
    // Behind ohlcd's back: the servers keep what they cached.
    tamper(&app, Resolution::M1, minute, 77777.0).await;
    tamper(&app, Resolution::H1, hour, 77777.0).await;
    for url in [&first, &second] {
        let old = expected(&app, 1).await;
        let old = old.iter().find(|c| c.start == minute).unwrap().high;
        assert_eq!(
            high_at(&history_url(url, 1), minute).await,
            old,
            "{url}: cached 1m"
        );
    }

    // A late trade through the second server, repaired by a second daemon.
    let late = json!({"symbol": "BTCUSD", "price": 999999.5, "amount": 0.5, "side": "buy",
                      "timestamp": (minute + 12 * NANOS_PER_SEC) / 1_000_000, "id": 4242});
    let (status, v) = post(&format!("{second}/api/trades"), late.to_string()).await;
    assert_eq!((status, &v["late"]), (200, &json!(1)), "{v}");
    let report = app.engine("b").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    for url in [&first, &second] {
        until_high(&history_url(url, 1), minute, 999999.5).await;
        until_high(&history_url(url, 60), hour, 999999.5).await;
        for res in [1, 60] {
            let (_, v) = get(&history_url(url, res)).await;
            assert_udf_matches(
                &udf_bars(&v),
                &expected(&app, res).await,
                &format!("{url} at {res} after the repair"),
            );
        }
    }
    // What the cache did is on /metrics.
    metrics_with(
        &first,
        &[
            "ohlcd_datafeed_cache_hits_total{kind=\"candles\"}",
            "ohlcd_datafeed_cache_misses_total{kind=\"candles\"}",
            "ohlcd_datafeed_cache_invalidations_total{kind=\"epoch\"}",
            "ohlcd_datafeed_cache_bytes",
        ],
    )
    .await;
}

on_both_stores!(a_repair_by_another_daemon_drops_what_every_server_cached);

#[tokio::test]
async fn a_rebuild_run_as_another_process_drops_the_cached_candles_it_rewrote() {
    let app = app_with_candles(Backend::Sqlite).await;
    let (url, _stop) = app.serve().await;
    let minute = t(MINUTE);
    let (_, v) = get(&history_url(&url, 1)).await;
    assert_udf_matches(&udf_bars(&v), &expected(&app, 1).await, "1m before");
    let (_, v) = get(&history_url(&url, 15)).await;
    assert_udf_matches(&udf_bars(&v), &expected(&app, 15).await, "15m before");

    // A trade of that minute overwritten in place (same time, symbol, side):
    // only `ohlcd rebuild` recomputes that.
    let raw = app
        .rows(&format!(
            "SELECT price, amount, id, side FROM trades WHERE symbol = 'BTCUSD' \
             AND time >= {minute} AND time < {} LIMIT 1",
            minute + 60 * NANOS_PER_SEC
        ))
        .await;
    let row = raw.first().expect("a trade in that minute");
    let id = row["id"].as_i64().unwrap();
    let time = row["time"].as_i64().unwrap();
    assert_eq!(ohlcd::ingest::point_time(time / 1_000_000, id), time);
    let replaced = NewTrade {
        symbol: "BTCUSD".parse().unwrap(),
        side: if row["side"] == "buy" {
            Side::Buy
        } else {
            Side::Sell
        },
        price: 888888.25,
        amount: row["amount"].as_f64().unwrap(),
        time_ms: time / 1_000_000,
        id,
    };
    app.write(&[replaced]).await;

    let rebuild = app
        .ohlcd()
        .args([
            "rebuild",
            "--symbol",
            "BTCUSD",
            "--from",
            &(minute / NANOS_PER_SEC).to_string(),
            "--to",
            &(minute / NANOS_PER_SEC + 60).to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        rebuild.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    until_high(&history_url(&url, 1), minute, 888888.25).await;
    until_high(
        &history_url(&url, 15),
        Resolution::M15.window_start(minute),
        888888.25,
    )
    .await;
    for res in [1, 15] {
        let (_, v) = get(&history_url(&url, res)).await;
        assert_udf_matches(
            &udf_bars(&v),
            &expected(&app, res).await,
            &format!("{res} after the rebuild"),
        );
    }
}

/// A range where every source and the raw trades are empty (the data ends at
/// [`TO`], the chart asks up to [`NOW`]) is answered from memory once known
/// empty, and answered again from InfluxDB once a repair moves the epoch.
#[tokio::test]
async fn a_range_known_empty_stays_exact_after_a_late_trade_lands_in_it() {
    let app = app_with_candles(Backend::Sqlite).await;
    let (url, _stop) = app.serve().await;
    let (from, to) = (t("2024-06-01T12:05:00Z"), t(NOW));
    let q = format!(
        "{url}/udf/history?symbol=BTCUSD&resolution=1&from={}&to={}",
        from / NANOS_PER_SEC,
        to / NANOS_PER_SEC
    );
    let (_, v) = get(&q).await;
    assert_eq!(v["s"], "no_data", "{v}");
    // Behind ohlcd's back: a server that read the raw trades again would now
    // answer this trade's bar; one that learnt the range is empty does not.
    let minute = t("2024-06-01T12:10:00Z");
    let behind = NewTrade {
        symbol: "BTCUSD".parse().unwrap(),
        side: Side::Sell,
        price: 555.25,
        amount: 2.0,
        time_ms: (minute + 5 * NANOS_PER_SEC) / 1_000_000,
        id: 900_001,
    };
    app.write(&[behind]).await;
    let (_, v) = get(&q).await;
    assert_eq!(v["s"], "no_data", "answered from memory: {v}");

    // A late trade in the same minute through the API: repaired (with the one
    // written behind ohlcd's back, same minute), which moves the epoch.
    let late = json!({"symbol": "BTCUSD", "price": 556.5, "amount": 1.0, "side": "buy",
                      "timestamp": (minute + 30 * NANOS_PER_SEC) / 1_000_000, "id": 900_002});
    let (status, v) = post(&format!("{url}/api/trades"), late.to_string()).await;
    assert_eq!((status, &v["late"]), (200, &json!(1)), "{v}");
    let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    let minute_len = Resolution::M1.nanos();
    let expected: Vec<Candle> = app
        .expected_by("BTCUSD", |x| x.div_euclid(minute_len) * minute_len)
        .await
        .into_iter()
        .filter(|c| (from..to).contains(&c.start))
        .collect();
    assert_eq!(expected.len(), 1, "the two trades make one bar");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = get(&q).await;
        if v["s"] == "ok" {
            assert_udf_matches(&udf_bars(&v), &expected, "the repaired minute");
            break;
        }
        assert!(Instant::now() < deadline, "still {v} after the repair");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

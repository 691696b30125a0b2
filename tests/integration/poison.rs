//! One bad trade stops one symbol at most: rows that cannot make a trade are
//! skipped and counted, a write InfluxDB refuses for one symbol fails that
//! symbol alone, and a failed symbol recovers on its own once the cause is
//! gone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ohlcd::candle::{Candle, NANOS_PER_SEC, Resolution};
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::NewTrade;
use ohlcd::progress::TaskStatus;
use ohlcd::testkit::InfluxdOptions;
use serde_json::{Value, json};

use crate::helpers::{RawTrade, TestApp, assert_candles_eq, daemon, free_port, naive_candles};

/// The rows of `symbol` that make trades, read back over JSON and checked
/// here, apart from the product: price and amount numbers in (0, 1e15], side
/// `buy` or `sell`. As `(time, id, price, amount, is_buy)` by (time, id).
async fn valid_trades(app: &TestApp, symbol: &str) -> Vec<RawTrade> {
    let rows = app
        .rows(&format!(
            "SELECT price, amount, id, side FROM trades WHERE symbol = '{symbol}'"
        ))
        .await;
    let ok = |v: &Value| v.as_f64().filter(|x| *x > 0.0 && *x <= 1e15);
    let mut out: Vec<_> = rows
        .iter()
        .filter_map(|r| {
            let side = r.get("side")?.as_str()?;
            if side != "buy" && side != "sell" {
                return None;
            }
            Some((
                r["time"].as_i64()?,
                r.get("id").and_then(Value::as_i64).unwrap_or(0),
                ok(r.get("price")?)?,
                ok(r.get("amount")?)?,
                side == "buy",
            ))
        })
        .collect();
    out.sort_by_key(|t| (t.0, t.1));
    out
}

/// Candles of `trades` in windows of `len`, computed the obvious way, for
/// windows that end by `until`.
fn oracle(trades: &[RawTrade], len: i64, until: i64) -> Vec<Candle> {
    naive_candles(trades, |t| t.div_euclid(len) * len)
        .into_iter()
        .filter(|c| c.start + len <= until)
        .collect()
}

/// Every resolution of `symbol` as stored equals the oracle below its
/// watermark, which is `until` for 1m or the start of the window holding it.
async fn assert_exact(app: &TestApp, symbol: &str, until: i64) {
    let trades = valid_trades(app, symbol).await;
    for res in Resolution::ALL {
        let w = res.window_start(until);
        let stored: Vec<Candle> = app
            .stored(symbol, res)
            .await
            .into_iter()
            .filter(|c| c.start + res.nanos() <= w)
            .collect();
        assert_candles_eq(
            &stored,
            &oracle(&trades, res.nanos(), w),
            &format!("{symbol} {res}"),
        );
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Sums `name{…reason="r"…}` over the `/metrics` answers of several daemons.
fn skipped_by_reason(metrics: &[String]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for text in metrics {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("ohlcd_trades_skipped_total{") else {
                continue;
            };
            let (labels, value) = rest.split_once("} ").unwrap();
            let reason = labels
                .split(',')
                .find_map(|l| l.strip_prefix("reason=\""))
                .unwrap()
                .trim_end_matches('"');
            *out.entry(reason.to_string()).or_default() += value.trim().parse::<f64>().unwrap();
        }
    }
    out
}

#[tokio::test]
async fn one_poisoned_symbol_among_fifty_is_skipped_and_counted_while_two_daemons_keep_the_rest_exact_and_current()
 {
    let app = TestApp::spawn().await;
    let now = now_ns();
    let minute = 60 * NANOS_PER_SEC;
    let from = Resolution::M1.window_start(now) - 120 * minute;
    let mut symbols: Vec<String> = (0..49).map(|i| format!("S{i:02}USD")).collect();
    symbols.push("POISON".into());
    let spec = GenerateSpec {
        symbols: symbols.iter().map(|s| s.parse().unwrap()).collect(),
        from,
        to: now - 2 * minute,
        trades: 25_000,
        seed: 23,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;

    // Straight into InfluxDB: a row for every reason a row cannot be a
    // trade, an hour back and, for the lookback, a minute behind the newest.
    let at = |back: i64, k: i64| now - back * minute + k * 1_000_003;
    let bad = [
        (
            at(60, 1),
            "side=buy",
            "price=1e308,amount=1e308,id=900001i",
            "too_large",
        ),
        (
            at(60, 2),
            "side=buy",
            "price=10,amount=1.7e308,id=900002i",
            "too_large",
        ),
        (
            at(60, 3),
            "side=sell",
            "price=10,amount=1.7e308,id=900003i",
            "too_large",
        ),
        (
            at(60, 4),
            "",
            "price=42000.5,amount=0.1,id=900004i",
            "unknown_side",
        ),
        (
            at(60, 5),
            "side=hold",
            "price=10,amount=1,id=900005i",
            "unknown_side",
        ),
        (
            at(60, 6),
            "side=sell",
            "price=-5,amount=1,id=900006i",
            "not_positive",
        ),
        (
            at(60, 7),
            "side=sell",
            "amount=1,id=900007i",
            "missing_price",
        ),
        (
            at(60, 8),
            "side=sell",
            "price=10,id=900008i",
            "missing_amount",
        ),
        (
            at(3, 9),
            "side=buy",
            "price=10,amount=0,id=900009i",
            "not_positive",
        ),
        (
            at(3, 10),
            "",
            "price=10,amount=2,id=900010i",
            "unknown_side",
        ),
    ];
    let lines: String = bad
        .iter()
        .map(|(time, side, fields, _)| {
            let tags = if side.is_empty() {
                String::new()
            } else {
                format!(",{side}")
            };
            format!("trades{tags},symbol=POISON {fields} {time}\n")
        })
        .collect();
    app.influx
        .write_trades(bytes::Bytes::from(lines))
        .await
        .unwrap();

    // Through the API, an overflowing trade is refused with its batch.
    let http = reqwest::Client::new();
    let a_port = free_port();
    let b_port = free_port();
    let env = [("OHLCD_ENGINE__LOOKBACK_INTERVAL_SECS", "2")];
    let mut a = daemon(&app, &format!("127.0.0.1:{a_port}"), &env);
    let mut b = daemon(&app, &format!("127.0.0.1:{b_port}"), &env);
    let a_url = format!("http://127.0.0.1:{a_port}");
    let b_url = format!("http://127.0.0.1:{b_port}");
    a.wait_healthy(&a_url).await;
    b.wait_healthy(&b_url).await;
    let poison = json!([
        {"symbol": "POISON", "price": 1e308, "amount": 1e308, "side": "buy", "timestamp": now / 1_000_000},
        {"symbol": "CLEANX", "price": 10, "amount": 1, "side": "buy", "timestamp": now / 1_000_000},
    ]);
    let refused = http
        .post(format!("{a_url}/api/trades"))
        .json(&poison)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let why: Value = refused.json().await.unwrap();
    assert!(
        why["error"].as_str().unwrap().contains("at most 1e15"),
        "{why}"
    );
    assert!(
        app.rows("SELECT price FROM trades WHERE symbol = 'CLEANX'")
            .await
            .is_empty(),
        "nothing of a refused batch is written"
    );

    // Both daemons take every symbol to the horizon.
    let deadline = Instant::now() + Duration::from_secs(120);
    let horizon = || Resolution::M1.window_start(now_ns() - 10 * NANOS_PER_SEC);
    loop {
        let tasks = app.store.tasks().await.unwrap();
        let target = horizon() - 2 * minute;
        let done = tasks.len() == symbols.len() * 6
            && tasks
                .iter()
                .filter(|t| t.resolution == Resolution::M1)
                .all(|t| t.watermark.is_some_and(|w| w >= target));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every symbol reached the horizon in 120 s: {:?}",
            tasks
                .iter()
                .filter(|t| t.resolution == Resolution::M1)
                .map(|t| (&t.symbol, &t.status, t.watermark, &t.last_error))
                .filter(|(_, s, w, _)| **s == TaskStatus::Failed || w.is_none())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Lookbacks run every 2 s: give them a few passes over the newest bad rows.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let tasks = app.store.tasks().await.unwrap();
    assert!(
        tasks.iter().all(|t| t.status != TaskStatus::Failed),
        "no task failed: {:?}",
        tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .map(|t| (&t.symbol, &t.last_error))
            .collect::<Vec<_>>()
    );
    let skipped: BTreeMap<&str, i64> = tasks
        .iter()
        .filter(|t| t.resolution == Resolution::M1)
        .map(|t| (t.symbol.as_str(), t.rows_skipped))
        .collect();
    assert_eq!(
        skipped["POISON"],
        bad.len() as i64,
        "each bad row counted once"
    );
    assert!(
        skipped.iter().all(|(s, n)| *s == "POISON" || *n == 0),
        "{skipped:?}"
    );
    let metrics = vec![
        http.get(format!("{a_url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        http.get(format!("{b_url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    ];
    // Every reason is exported from the start, at zero when no row had it,
    // so an alert on one reason has a series to watch before the first skip.
    let mut expected: BTreeMap<String, f64> = ohlcd::candle::SkipReason::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), 0.0))
        .collect();
    for (_, _, _, reason) in &bad {
        *expected.entry(reason.to_string()).or_default() += 1.0;
    }
    assert_eq!(skipped_by_reason(&metrics), expected);
    // The lookback counts only rows that are trades, so the newest bad rows
    // never look like trades missing from their candles.
    let repairs: Vec<_> = app
        .store
        .runs("POISON", Resolution::M1, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind != "chunk")
        .collect();
    assert!(repairs.is_empty(), "bad rows set off repairs: {repairs:?}");

    for symbol in &symbols {
        let w = tasks
            .iter()
            .find(|t| &t.symbol == symbol && t.resolution == Resolution::M1)
            .and_then(|t| t.watermark)
            .unwrap();
        assert_exact(&app, symbol, w).await;
    }
    // The live tail, computed from raw rows, is finite too.
    let history: Value = http
        .get(format!(
            "{b_url}/udf/history?symbol=POISON&resolution=1&from={}&to={}",
            (now - 90 * minute) / NANOS_PER_SEC,
            now_ns() / NANOS_PER_SEC + 60
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["s"], "ok", "{history}");
    for key in ["o", "h", "l", "c", "v"] {
        assert!(
            history[key].as_array().unwrap().iter().all(Value::is_f64),
            "{key}: {}",
            history[key]
        );
    }
    let health: Value = http
        .get(format!("{a_url}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["status"], "ok",
        "skipped rows fail nothing: {health}"
    );
    let mut logs = String::new();
    for d in [a, b] {
        logs.push_str(&d.stop().await);
    }
    assert!(
        logs.contains("row skipped") && logs.contains("too_large"),
        "the first skipped rows are logged with their reason:\n{logs}"
    );
}

#[tokio::test]
async fn a_write_influxdb_refuses_for_one_symbol_fails_it_alone_and_it_recovers_on_its_own() {
    // InfluxDB 1.x refuses a point whose tag value would pass
    // `max-values-per-tag`: a real server refusing one symbol's candles.
    let mut app = TestApp::spawn_with(InfluxdOptions::default()).await;
    let day = 86_400 * NANOS_PER_SEC;
    let from = crate::helpers::t("2024-03-01T00:00:00Z");
    let healthy = ["AAAUSD", "BBBUSD", "CCCUSD"];
    let spec = |symbols: &[&str], seed| GenerateSpec {
        symbols: symbols.iter().map(|s| s.parse().unwrap()).collect(),
        from,
        to: from + 2 * day,
        trades: 6_000,
        seed,
    };
    app.write(&Generator::new(&spec(&healthy, 1)).collect::<Vec<_>>())
        .await;
    // DDDUSD trades from the second day on: it starts where the others
    // stand after the first tick, so the four share one batch.
    let ddd = GenerateSpec {
        from: from + day,
        ..spec(&["DDDUSD"], 2)
    };
    app.write(&Generator::new(&ddd).collect::<Vec<_>>()).await;
    let only = |symbols: &[&str]| TaskFilter {
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
    };
    // The healthy three are materialized up to the first day's end, so every
    // candle measurement knows their three tag values.
    app.clock.set(from + day + 11 * NANOS_PER_SEC);
    let engine = app.engine("one");
    engine.tick(&only(&healthy)).await.unwrap();
    app.server.restart_with(InfluxdOptions {
        max_values_per_tag: Some(3),
        ..InfluxdOptions::default()
    });

    app.clock.set(from + 2 * day + 11 * NANOS_PER_SEC);
    let report = engine.tick(&TaskFilter::default()).await.unwrap();
    assert_eq!(report.symbols_run, 4, "{report:?}");
    assert_eq!(
        report
            .failures
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
        ["DDDUSD"],
        "{report:?}"
    );
    let tasks = app.store.tasks().await.unwrap();
    let of = |symbol: &str| {
        tasks
            .iter()
            .find(|t| t.symbol == symbol && t.resolution == Resolution::M1)
            .unwrap()
            .clone()
    };
    let d = of("DDDUSD");
    assert_eq!((d.status, d.failures), (TaskStatus::Failed, 1));
    let served = app.serve_with("127.0.0.1:0", |_| {}).await;
    let health = || async {
        let r = reqwest::get(format!("{}/healthz", served.url))
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, body) = health().await;
    assert_eq!(
        (
            status,
            body["status"].as_str(),
            body["failed_symbols"].as_u64()
        ),
        (200, Some("degraded"), Some(1)),
        "{body}"
    );
    assert!(
        d.last_error
            .as_deref()
            .unwrap()
            .contains("max-values-per-tag"),
        "{:?}",
        d.last_error
    );
    for s in healthy {
        let t = of(s);
        assert_eq!(t.status, TaskStatus::Completed, "{s}: {:?}", t.last_error);
        assert_eq!(t.watermark, Some(from + 2 * day));
        assert_exact(&app, s, from + 2 * day).await;
    }

    // Within its backoff a failed symbol is left alone...
    app.clock.advance(5 * NANOS_PER_SEC);
    let report = engine.tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(
        app.store
            .tasks()
            .await
            .unwrap()
            .iter()
            .find(|t| t.symbol == "DDDUSD")
            .unwrap()
            .runs,
        d.runs,
        "retried before its backoff"
    );
    // ...and once the cause is gone and the backoff passed, it completes
    // without a hand.
    app.server.restart_with(InfluxdOptions::default());
    app.clock.advance(6 * NANOS_PER_SEC);
    let report = engine.tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    let tasks = app.store.tasks().await.unwrap();
    let d = tasks
        .iter()
        .find(|t| t.symbol == "DDDUSD" && t.resolution == Resolution::M1)
        .unwrap();
    assert_eq!((d.status, d.failures), (TaskStatus::Completed, 0));
    assert_exact(&app, "DDDUSD", from + 2 * day).await;
    let (status, body) = health().await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ok")),
        "{body}"
    );
}

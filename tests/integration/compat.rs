//! What differs between InfluxDB generations, run against both Debian's
//! 1.6.7 and InfluxDB 3 Core: rebuild where the server cannot delete, and
//! candles overwritten in place (InfluxDB 3 does not promise that the last
//! write of a point wins). The engine, datafeed, ingest and fault tests run
//! on both servers from their own modules (`on_both_servers!`).
//! `cargo test --test integration v3` runs the 3.x half.

use ohlcd::candle::{Candle, NANOS_PER_DAY, NANOS_PER_SEC, Resolution};
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::influx::{CandleRead, CandleSet, Generation};
use ohlcd::ingest::NewTrade;
use serde_json::json;

use crate::engine::generated;
use crate::helpers::{Spy, TestApp, assert_candles_eq, on_both_servers, t};
use crate::http::{get, post};

on_both_servers!(rebuild_restores_damaged_candles_and_removes_stale_ones_or_says_it_cannot);
async fn rebuild_restores_damaged_candles_and_removes_stale_ones_or_says_it_cannot(app: TestApp) {
    let spec = generated(&app, 10_000).await;
    app.clock.set(spec.to + NANOS_PER_DAY);
    let spy = Spy::new(app.influx.clone());
    // Boxed: the engine's futures over a wrapped warehouse outgrow a test
    // thread's stack in a debug build.
    let engine = app.engine_through("a", spy.clone());
    Box::pin(engine.tick(&TaskFilter::default())).await.unwrap();
    let mut snapshot = Vec::new();
    for res in Resolution::ALL {
        snapshot.push(app.stored("BTCUSD", res).await);
    }
    // Damage day 2: every candle overwritten with wrong values.
    let day2 = t("2024-03-02T00:00:00Z");
    for (i, res) in Resolution::ALL.into_iter().enumerate() {
        let wrong: Vec<Candle> = snapshot[i]
            .iter()
            .filter(|c| (day2..day2 + NANOS_PER_DAY).contains(&c.start))
            .map(|c| Candle {
                close: c.close + 1.0,
                trades: c.trades + 1,
                ..*c
            })
            .collect();
        assert!(!wrong.is_empty());
        crate::helpers::write_candles(&app.influx, res, "BTCUSD", &wrong)
            .await
            .unwrap();
    }
    Box::pin(engine.rebuild("BTCUSD", day2, day2 + 1))
        .await
        .unwrap();
    // What the rebuild wrote, on every server: each window of day 2 at every
    // resolution as computed from the raw trades, and nothing else.
    let written = spy.overwritten();
    assert_eq!(written.len(), 6, "{:?}", written.keys());
    let day2_windows = |candles: Vec<Candle>| -> Vec<Candle> {
        candles
            .into_iter()
            .filter(|c| (day2..day2 + NANOS_PER_DAY).contains(&c.start))
            .collect()
    };
    for res in Resolution::ALL {
        let expected = day2_windows(app.expected("BTCUSD", res, day2 + NANOS_PER_DAY).await);
        let rebuilt: Vec<Candle> = written[&(res, "BTCUSD".to_string())]
            .values()
            .copied()
            .collect();
        assert_candles_eq(&rebuilt, &expected, &format!("{res} as rebuilt"));
    }
    // InfluxDB 3 Core does not promise that an overwrite wins ("queries may
    // return either version", influxdata/docs-v2#7682, influxdb#27548). Here
    // every point has three versions (original, damaged, rebuilt): with three,
    // even a one-symbol read may return an older one later, although the
    // rebuild's own read-back check passed (measured: 37 of 1440 1m candles).
    // So the restore is checked on 1.x only; README, "InfluxDB 3: overwrites".
    // On 3.x, what is read back is the same windows, each either restored
    // or still the damaged version, and nothing outside day 2 changed.
    let overwrites_win = app.influx.generation() != Generation::V3;
    for (i, res) in Resolution::ALL.into_iter().enumerate() {
        let after = app.stored("BTCUSD", res).await;
        let differ: Vec<_> = after
            .iter()
            .zip(&snapshot[i])
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            after.iter().map(|c| c.start).collect::<Vec<_>>(),
            snapshot[i].iter().map(|c| c.start).collect::<Vec<_>>(),
            "{res}: windows after the rebuild"
        );
        if overwrites_win {
            assert!(
                differ.is_empty(),
                "{res} after rebuild: {} differ, first {:?}",
                differ.len(),
                differ.first()
            );
        }
        for (a, b) in differ {
            assert!(
                (day2..day2 + NANOS_PER_DAY).contains(&a.start)
                    && *a
                        == Candle {
                            close: b.close + 1.0,
                            trades: b.trades + 1,
                            ..*b
                        },
                "{res} at {}: {a:?} is neither the rebuilt {b:?} nor the damaged one",
                a.start
            );
        }
    }

    // A stale candle where there are no trades (after the last one, below the
    // 1m watermark).
    let bogus_day = t("2024-03-04T00:00:00Z");
    let bogus = Candle {
        start: bogus_day,
        open: 1.0,
        high: 1.0,
        low: 1.0,
        close: 1.0,
        volume: 1.0,
        quote_volume: 1.0,
        trades: 1,
        buy_volume: 0.0,
    };
    crate::helpers::write_candles(&app.influx, Resolution::M1, "BTCUSD", &[bogus])
        .await
        .unwrap();
    let rebuilt = Box::pin(engine.rebuild("BTCUSD", bogus_day, bogus_day + 1)).await;
    let (url, _stop) = app.serve().await;
    let from = bogus_day / NANOS_PER_SEC;
    let (_, v) = get(&format!(
        "{url}/udf/history?symbol=BTCUSD&resolution=1&from={from}&to={}",
        from + 86_400
    ))
    .await;
    if app.influx.generation() == Generation::V3 {
        // No DELETE on 3.x: rebuild fails and says exactly what stays, and
        // it stays: the stale candle is stored and served, nothing of its
        // day was overwritten.
        let err = rebuilt.unwrap_err().to_string();
        assert!(
            err.contains("no DELETE") && err.contains("BTCUSD") && err.contains("ohlc_1m"),
            "{err}"
        );
        let stored = app.stored("BTCUSD", Resolution::M1).await;
        assert!(stored.contains(&bogus), "the stale candle is gone");
        assert_eq!(stored.len(), snapshot[0].len() + 1);
        let rewritten: Vec<i64> = spy
            .overwritten()
            .values()
            .flat_map(|by_start| by_start.keys().copied())
            .filter(|start| (bogus_day..bogus_day + NANOS_PER_DAY).contains(start))
            .collect();
        assert!(rewritten.is_empty(), "{rewritten:?}");
        assert_eq!(v["s"], "ok", "{v}");
        assert_eq!(v["t"], json!([from]), "{v}");
    } else {
        rebuilt.unwrap();
        assert_eq!(app.stored("BTCUSD", Resolution::M1).await, snapshot[0]);
        assert_eq!(v["s"], "no_data", "{v}");
    }
}

on_both_servers!(late_trades_that_rewrite_existing_candles_leave_every_candle_exact);
/// Repairs overwrite candles in place, twice over the same windows, among
/// enough symbols that InfluxDB 3's buffer holds hundreds of rows per chunk
/// (there, measured, about a third of single overwrites read back the older
/// version; README, "InfluxDB 3: overwrites"). ohlcd checks every overwrite
/// and writes lost ones again, so once the ticks report no failure every
/// stored candle equals the naive one.
async fn late_trades_that_rewrite_existing_candles_leave_every_candle_exact(app: TestApp) {
    let spec = GenerateSpec {
        symbols: (0..40).map(|i| format!("S{i}").parse().unwrap()).collect(),
        from: t("2024-03-01T00:00:00Z"),
        to: t("2024-03-01T00:30:00Z"),
        trades: 12_000,
        seed: 5,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;
    // Minute by minute, as a live daemon writes them: each of the server's
    // 10-minute buffer chunks receives the candles of every symbol one
    // minute at a time (a backfill writes them symbol by symbol, already in
    // the server's sort order, where overwrites happen to win).
    let engine = app.engine("a");
    let settle = app.settings.engine.settle_secs as i64 * NANOS_PER_SEC;
    for minute in 1..=30 {
        app.clock
            .set(spec.from + minute * 60 * NANOS_PER_SEC + settle);
        let step = engine.tick(&TaskFilter::default()).await.unwrap();
        assert!(step.failures.is_empty(), "{:?}", step.failures);
    }
    let now = spec.to + NANOS_PER_DAY;
    app.clock.set(now);
    let first = engine.tick(&TaskFilter::default()).await.unwrap();
    assert!(first.failures.is_empty(), "{:?}", first.failures);
    let (url, _stop) = app.serve().await;
    let mut failed_ticks = Vec::new();
    for round in 0..2i64 {
        // One late trade in each of 400 (symbol, minute) pairs that already
        // have a candle; the second round hits the same ones again.
        let late: Vec<serde_json::Value> = (0..400i64)
            .map(|i| {
                let minute = (i * 7) % 30;
                let at = spec.from + minute * 60 * NANOS_PER_SEC + (round + 1) * NANOS_PER_SEC;
                json!({
                    "symbol": spec.symbols[(i % 40) as usize],
                    "price": 1_000.0 + (i * 3 + round) as f64,
                    "amount": 0.5 + round as f64,
                    "side": if i % 3 == 0 { "sell" } else { "buy" },
                    "timestamp": ohlcd::times::to_rfc3339(at),
                    "id": 900_000_000 + round * 1_000 + i,
                })
            })
            .collect();
        let (status, v) = post(&format!("{url}/api/trades"), json!(late).to_string()).await;
        assert_eq!((status, &v["late"]), (200, &json!(400)), "{v}");
        // A repair whose overwrite still reads back wrong fails and runs
        // again on the next tick; a bounded number of ticks must settle it.
        let mut settled = false;
        for _ in 0..8 {
            let report = engine.tick(&TaskFilter::default()).await.unwrap();
            if report.failures.is_empty() {
                settled = true;
                break;
            }
            failed_ticks.push(format!("{:?}", report.failures));
        }
        assert!(
            settled,
            "round {round}: repairs never settled: {failed_ticks:?}"
        );
    }
    let until = Resolution::M1.window_start(now - 5 * NANOS_PER_SEC);
    for symbol in &spec.symbols {
        for res in Resolution::ALL {
            let stored = app.stored(symbol, res).await;
            let expected = app.expected(symbol, res, until).await;
            assert_candles_eq(
                &stored,
                &expected,
                &format!("{symbol} {res} after 2 rounds of late trades"),
            );
        }
    }
    eprintln!("ticks with a lost overwrite: {}", failed_ticks.len());
}

on_both_servers!(overwritten_candles_read_back_as_written_by_one_symbol_and_by_many);
/// The server behaviour behind the late-trade test, with candles written
/// straight through the client: 50 symbols' 1m candles over a day, minute by
/// minute (as a live daemon writes them), then 250 of them overwritten. On
/// InfluxDB 3 Core (this build) a query over several series returns an older
/// version for about a third of such overwrites, one series per query the
/// last write (README, "InfluxDB 3: overwrites"). ohlcd's reads of many
/// symbols (the engine's) must still see every overwrite, and
/// `overwrite_candles` returns Ok only if every candle reads as written.
async fn overwritten_candles_read_back_as_written_by_one_symbol_and_by_many(app: TestApp) {
    let symbols: Vec<String> = (0..50).map(|i| format!("S{i}")).collect();
    let day = t("2024-03-01T00:00:00Z");
    let minute = 60 * NANOS_PER_SEC;
    let candle = |s: usize, m: i64, version: i64| Candle {
        start: day + m * minute,
        open: 100.0 + s as f64,
        high: 101.0 + s as f64 + version as f64,
        low: 99.0,
        close: 100.5 + version as f64,
        volume: 1.0 + m as f64,
        quote_volume: 100.0 + m as f64,
        trades: 1 + version,
        buy_volume: 0.5,
    };
    let first: Vec<Vec<Candle>> = (0..1440)
        .map(|m| (0..50).map(|s| candle(s, m, 0)).collect())
        .collect();
    let sets: Vec<CandleSet<'_>> = (0..1440usize)
        .flat_map(|m| {
            let first = &first;
            symbols
                .iter()
                .enumerate()
                .map(move |(s, symbol)| CandleSet {
                    resolution: Resolution::M1,
                    symbol,
                    candles: std::slice::from_ref(&first[m][s]),
                })
        })
        .collect();
    app.influx.write_candles(&sets).await.unwrap();
    // Five minutes per symbol, spread over the day, get a new version.
    let second: Vec<Vec<Candle>> = (0..50)
        .map(|s| {
            (0..5)
                .map(|k| candle(s, (s as i64 * 13 + k * 287) % 1440, 1))
                .collect()
        })
        .collect();
    let sets: Vec<CandleSet<'_>> = symbols
        .iter()
        .zip(&second)
        .map(|(symbol, candles)| CandleSet {
            resolution: Resolution::M1,
            symbol,
            candles,
        })
        .collect();
    let outcome = app.influx.overwrite_candles(&sets).await;
    let mut lost = 0;
    for (symbol, candles) in symbols.iter().zip(&second) {
        let stored = app.stored(symbol, Resolution::M1).await;
        assert_eq!(stored.len(), 1440, "{symbol}");
        for c in candles {
            if !stored.contains(c) {
                lost += 1;
            }
        }
    }
    // The engine's read: all 50 symbols at once.
    let mut by_many = std::collections::HashMap::new();
    app.influx
        .read_candles(
            CandleRead::new(Resolution::M1, &symbols, day..day + NANOS_PER_DAY),
            |s, c| {
                by_many.insert((s.to_string(), c.start), c);
            },
        )
        .await
        .unwrap();
    assert_eq!(by_many.len(), 50 * 1440);
    let lost_by_many = symbols
        .iter()
        .zip(&second)
        .flat_map(|(s, cs)| cs.iter().map(move |c| (s, c)))
        .filter(|(s, c)| by_many.get(&(s.to_string(), c.start)) != Some(*c))
        .count();
    assert_eq!(
        lost_by_many, 0,
        "read over all symbols: {lost_by_many} of 250 overwrites read the older version"
    );
    match outcome {
        Ok(()) => assert_eq!(
            lost, 0,
            "Ok, but {lost} of 250 overwrites read the older version"
        ),
        Err(e) => {
            assert_eq!(app.influx.generation(), Generation::V3, "{e}");
            assert!(
                matches!(e, ohlcd::influx::InfluxError::OverwriteLost { .. }),
                "{e}"
            );
            assert!(
                lost > 0,
                "failed, yet every overwrite reads as written: {e}"
            );
            eprintln!("{lost} of 250 overwrites still read the older version; failed with: {e}");
        }
    }
}

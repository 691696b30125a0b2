//! Seconds bars, quotes and gap-filled bars against a running server with
//! real InfluxDB, each checked against values computed here from the raw
//! trades read back.

use ohlcd::candle::{NANOS_PER_SEC, Side};
use ohlcd::engine::TaskFilter;
use ohlcd::ingest::NewTrade;
use ohlcd::testkit::Server;
use serde_json::Value;

use crate::helpers::{TestApp, naive_candles, on_both_servers, t};
use crate::http::{assert_udf_matches, get, post, udf_bars};

on_both_servers!(
    seconds_bars_at_every_multiplier_equal_bars_from_raw_trades_including_the_open_second,
    quotes_cover_the_last_24_hours_at_a_fixed_now_and_an_unknown_symbol_alone_is_an_error,
    fill_previous_gives_every_window_of_a_sparse_symbol_flat_at_the_previous_close,
);

const SEC: i64 = NANOS_PER_SEC;
const MIN: i64 = 60 * SEC;

fn trade(symbol: &str, time: i64, price: f64, amount: f64, id: i64) -> NewTrade {
    NewTrade {
        symbol: symbol.into(),
        side: if id % 3 == 0 { Side::Buy } else { Side::Sell },
        price,
        amount,
        time_ms: time / 1_000_000,
        id,
    }
}

async fn tick(app: &TestApp) {
    let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

/// Six minutes of trades, several a second; the engine has materialized the
/// first four, so closed seconds bars come from raw trades below the 1m
/// watermark (cached) and the rest from the tail.
async fn seconds_bars_at_every_multiplier_equal_bars_from_raw_trades_including_the_open_second(
    app: TestApp,
) {
    let m0 = t("2024-05-01T10:00:00Z");
    let trades: Vec<NewTrade> = (0..1800)
        .map(|i| {
            let at = m0 + (i * 7919 % 360_000) * 1_000_000;
            trade(
                "SECS",
                at,
                100.0 + ((i * 37) % 23) as f64 * 0.5,
                0.01 * (1 + i % 7) as f64,
                i,
            )
        })
        .collect();
    app.write(&trades).await;
    let now = m0 + 4 * MIN + 20 * SEC + 250_000_000;
    app.clock.set(now);
    tick(&app).await;
    let (url, _stop) = app.serve().await;
    let (from, to) = (m0 / SEC, (m0 + 6 * MIN) / SEC);
    let check = |label: &'static str| {
        let app = &app;
        let url = url.clone();
        async move {
            let raw = app.raw_trades("SECS").await;
            for n in [1i64, 5, 15, 30] {
                let len = n * SEC;
                let expected = naive_candles(&raw, |x| x.div_euclid(len) * len);
                // Twice: the second answer comes from the cache.
                for round in 0..2 {
                    let (status, v) = get(&format!(
                        "{url}/udf/history?symbol=SECS&resolution={n}S&from={from}&to={to}"
                    ))
                    .await;
                    assert_eq!(status, 200, "{v}");
                    assert_udf_matches(&udf_bars(&v), &expected, &format!("{label} {n}S #{round}"));
                }
            }
        }
    };
    check("posted nothing").await;
    // A trade in the open second, the new high: its bar shows it at once.
    let open_second = now / 1_000_000;
    let (status, body) = post(
        &format!("{url}/api/trades"),
        format!(
            r#"{{"symbol":"SECS","price":150.5,"amount":2.5,"side":"buy","timestamp":{open_second},"id":999999}}"#
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    check("with the open second's trade").await;
    let (_, v) = get(&format!(
        "{url}/udf/history?symbol=SECS&resolution=1S&to={}&countback=2",
        now / SEC + 1
    ))
    .await;
    let last = *udf_bars(&v).last().unwrap();
    assert_eq!((last.0, last.2), (now.div_euclid(SEC) * SEC, 150.5), "{v}");
    // Config and symbol info advertise seconds as TradingView reads them.
    let (_, config) = get(&format!("{url}/udf/config")).await;
    let resolutions = config["supported_resolutions"].as_array().unwrap();
    for r in ["1S", "5S", "15S", "30S"] {
        assert!(resolutions.iter().any(|x| x == r), "{config}");
    }
    let (_, info) = get(&format!("{url}/udf/symbols?symbol=SECS")).await;
    assert_eq!(info["has_seconds"], true, "{info}");
    assert_eq!(
        info["seconds_multipliers"],
        serde_json::json!(["1", "5", "15", "30"])
    );
    assert_eq!(info["timezone"], "Etc/UTC");
    // max_bars bounds a request: a day of 1S bars is 86,400.
    let (status, v) = get(&format!(
        "{url}/udf/history?symbol=SECS&resolution=1S&from={from}&to={}",
        from + 86_400
    ))
    .await;
    assert_eq!((status, &v["s"]), (400, &Value::from("error")), "{v}");
    // Closed seconds bars are not read again: with the raw trades of the
    // closed minutes deleted behind the server's back (1.x has DELETE), the
    // answer is still the one computed before.
    if app.server.server() == Server::V1 {
        let (_, before) = get(&format!(
            "{url}/udf/history?symbol=SECS&resolution=5S&from={from}&to={}",
            (m0 + 4 * MIN) / SEC
        ))
        .await;
        app.influx
            .query_json(&format!(
                "DELETE FROM trades WHERE symbol = 'SECS' AND time < {}",
                m0 + 4 * MIN
            ))
            .await
            .unwrap();
        assert!(
            app.raw_trades("SECS")
                .await
                .iter()
                .all(|x| x.0 >= m0 + 4 * MIN)
        );
        let (_, after) = get(&format!(
            "{url}/udf/history?symbol=SECS&resolution=5S&from={from}&to={}",
            (m0 + 4 * MIN) / SEC
        ))
        .await;
        assert_eq!(udf_bars(&before).len(), 48);
        assert_eq!(before, after);
    }
}

/// Two symbols with trades over two days and a few at the edges of the
/// window; now is a fixed, unaligned instant of the test clock.
async fn quotes_cover_the_last_24_hours_at_a_fixed_now_and_an_unknown_symbol_alone_is_an_error(
    app: TestApp,
) {
    let d0 = t("2024-06-10T00:00:00Z");
    let now = d0 + 86_400 * SEC + 13 * 3600 * SEC + 27 * MIN + 31_123_000_000;
    let day = 86_400 * SEC;
    let mut trades = Vec::new();
    for (k, symbol) in ["QA", "QB"].iter().enumerate() {
        for i in 0..3000i64 {
            let at = d0 + (i * 104_729 + k as i64 * 7) % (2 * 86_400_000) * 1_000_000;
            let price = 50.0 + ((i * 13 + k as i64) % 41) as f64 * 0.25;
            trades.push(trade(symbol, at, price, 0.1 * (1 + i % 5) as f64, 1 + i));
        }
        // At the edges: the window is [now − 24 h, now].
        trades.push(trade(symbol, now - day - 1_000_000, 11.0, 1.0, 0));
        trades.push(trade(symbol, now - day, 999.0, 1.0, 0));
        trades.push(trade(symbol, now, 1.5, 1.0, 0));
        trades.push(trade(symbol, now + 1_000_000, 2000.0, 1.0, 0));
    }
    app.write(&trades).await;
    app.clock.set(now);
    tick(&app).await;
    let (url, _stop) = app.serve().await;
    let (status, v) = get(&format!("{url}/udf/quotes?symbols=QA,ohlcd:QB,NOPE")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["s"], "ok");
    let d = v["d"].as_array().unwrap();
    assert_eq!(d.len(), 3, "{v}");
    for (item, (name, symbol)) in d.iter().zip([("QA", "QA"), ("ohlcd:QB", "QB")]) {
        assert_eq!(
            (&item["s"], &item["n"]),
            (&Value::from("ok"), &Value::from(name)),
            "{item}"
        );
        // The oracle, from the raw trades by (time, id).
        let raw = app.raw_trades(symbol).await;
        let inside: Vec<_> = raw
            .iter()
            .filter(|x| x.0 >= now - day && x.0 <= now)
            .collect();
        let prev = raw.iter().rfind(|x| x.0 < now - day).unwrap().2;
        let last = inside.last().unwrap().2;
        let q = &item["v"];
        let f = |k: &str| q[k].as_f64().unwrap_or_else(|| panic!("{k} in {q}"));
        assert_eq!(f("lp"), last);
        assert_eq!(last, 1.5, "the trade at now is in the window");
        assert_eq!(f("open_price"), inside[0].2);
        assert_eq!(
            inside[0].2, 999.0,
            "the trade at now − 24 h opens the window"
        );
        assert_eq!(
            f("high_price"),
            inside.iter().map(|x| x.2).fold(f64::MIN, f64::max)
        );
        assert_eq!(
            f("low_price"),
            inside.iter().map(|x| x.2).fold(f64::MAX, f64::min)
        );
        assert_eq!(f("prev_close_price"), prev);
        assert_eq!(prev, 11.0);
        let volume: f64 = inside.iter().map(|x| x.3).sum();
        assert!((f("volume") - volume).abs() <= 1e-9 * volume, "{q}");
        assert!((f("ch") - (last - prev)).abs() < 1e-12, "{q}");
        assert!(
            (f("chp") - 100.0 * (last - prev) / prev).abs() < 1e-9,
            "{q}"
        );
        assert_eq!(
            (&q["short_name"], &q["exchange"]),
            (&Value::from(symbol), &Value::from("ohlcd"))
        );
        assert_eq!(q["description"], symbol);
    }
    assert_eq!(
        (&d[2]["s"], &d[2]["n"]),
        (&Value::from("error"), &Value::from("NOPE")),
        "{v}"
    );
    let (status, v) = get(&format!("{url}/udf/quotes")).await;
    assert_eq!((status, &v["s"]), (400, &Value::from("error")), "{v}");
}

/// Trades in minutes 3, 4 and 9 of an hour and one five minutes before it;
/// now is 12½ minutes in.
async fn fill_previous_gives_every_window_of_a_sparse_symbol_flat_at_the_previous_close(
    app: TestApp,
) {
    let h0 = t("2024-07-01T09:00:00Z");
    app.write(&[
        trade("THIN", h0 - 5 * MIN, 40.0, 1.0, 1),
        trade("THIN", h0 + 3 * MIN + 10 * SEC, 41.0, 1.0, 2),
        trade("THIN", h0 + 3 * MIN + 20 * SEC, 43.0, 2.0, 3),
        trade("THIN", h0 + 4 * MIN, 42.0, 1.0, 4),
        trade("THIN", h0 + 9 * MIN + 59 * SEC, 39.0, 0.5, 5),
    ])
    .await;
    let now = h0 + 12 * MIN + 30 * SEC;
    app.clock.set(now);
    tick(&app).await;
    let (url, _stop) = app.serve().await;
    let range = format!("from={}&to={}", h0 / SEC, (h0 + 20 * MIN) / SEC);
    let (status, plain) = get(&format!("{url}/api/ohlc?symbol=THIN&resolution=1&{range}")).await;
    assert_eq!(status, 200, "{plain}");
    let real = plain["candles"].as_array().unwrap();
    assert_eq!(real.len(), 3, "{plain}");
    assert!(real.iter().all(|c| c.get("filled").is_none()), "{plain}");
    let (status, v) = get(&format!(
        "{url}/api/ohlc?symbol=THIN&resolution=1&{range}&fill=previous"
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    // Every minute from h0 up to the one open at now; the closes before each.
    let closes: [(i64, f64); 4] = [(-5, 40.0), (3, 43.0), (4, 42.0), (9, 39.0)];
    let candles = v["candles"].as_array().unwrap();
    assert_eq!(candles.len(), 13, "{v}");
    for (minute, c) in (0..13).zip(candles) {
        assert_eq!(
            c["time"].as_i64().unwrap(),
            (h0 + minute * MIN) / SEC,
            "{c}"
        );
        match real.iter().find(|r| r["time"] == c["time"]) {
            Some(r) => {
                assert_eq!(c["filled"], false, "{c}");
                for k in ["open", "high", "low", "close", "volume", "trades"] {
                    assert_eq!(c[k], r[k], "{k} of minute {minute}");
                }
            }
            None => {
                let previous = closes.iter().rfind(|(m, _)| *m < minute).unwrap().1;
                assert_eq!(c["filled"], true, "{c}");
                for k in ["open", "high", "low", "close"] {
                    assert_eq!(c[k].as_f64(), Some(previous), "{k} of minute {minute}: {c}");
                }
                assert_eq!(
                    (c["volume"].as_f64(), c["trades"].as_i64()),
                    (Some(0.0), Some(0))
                );
            }
        }
    }
    let (status, v) = get(&format!(
        "{url}/api/ohlc?symbol=THIN&resolution=1&{range}&fill=zero"
    ))
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("fill"), "{v}");
}

//! `POST /api/trades` under a client that gives up: what InfluxDB stored is
//! what the engine will count, late trades included.

use std::io::Write;
use std::time::{Duration, Instant};

use ohlcd::candle::{NANOS_PER_DAY, Side};
use ohlcd::engine::TaskFilter;
use ohlcd::ingest::NewTrade;

use crate::helpers::{TestApp, on_both_servers, t};

on_both_servers!(a_late_trade_is_recorded_even_when_its_client_hangs_up_mid_request);

/// A late trade's POST whose client hangs up while InfluxDB is still busy
/// with the write: the write completes later, so its late range must be
/// recorded anyway (the handler must not be cancelled in between).
async fn a_late_trade_is_recorded_even_when_its_client_hangs_up_mid_request(app: TestApp) {
    let day = t("2024-05-01T00:00:00Z");
    let trade = |ms: i64, id: i64| NewTrade {
        symbol: "BTCUSD".parse().unwrap(),
        side: Side::Buy,
        price: 100.0,
        amount: 1.0,
        time_ms: ms,
        id,
    };
    app.write(&[trade(day / 1_000_000 + 60_000, 1)]).await;
    app.clock.set(day + NANOS_PER_DAY);
    app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    let (url, _stop) = app.serve().await;

    // influxd frozen: the server's write hangs until we thaw it.
    app.server.freeze();
    let addr = url.trim_start_matches("http://").to_string();
    let body = r#"[{"symbol":"BTCUSD","price":250.5,"amount":2,"side":"sell","timestamp":"2024-05-01T10:00:00Z","id":7}]"#;
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /api/trades HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Give the server time to start the write, then hang up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.server.thaw();

    // The write reaches InfluxDB once thawed; the late range must follow it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dirty = app.store.dirty_of(&["BTCUSD".to_string()]).await.unwrap();
        if let Some((_, ranges)) = dirty.get("BTCUSD") {
            let minute = t("2024-05-01T10:00:00Z");
            assert!(ranges.iter().any(|r| r.contains(&minute)), "{ranges:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the trade's late range was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the next tick counts it at every resolution.
    app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    let hour = t("2024-05-01T10:00:00Z");
    for res in [
        ohlcd::candle::Resolution::M1,
        ohlcd::candle::Resolution::H1,
        ohlcd::candle::Resolution::H4,
    ] {
        let stored = app.stored("BTCUSD", res).await;
        let c = stored.iter().find(|c| c.start == res.window_start(hour));
        assert_eq!(
            c.map(|c| (c.trades, c.close)),
            Some((1, 250.5)),
            "{res}: {stored:?}"
        );
    }
}

/// A client that writes its whole request body before reading the answer (as
/// Python's urllib and requests do) gets the 413 for an oversized body, not a
/// broken pipe or a reset: the server reads and discards the rest first.
/// (1.x only: the body is refused before anything reaches InfluxDB.)
#[tokio::test]
async fn an_oversized_body_written_whole_before_reading_gets_the_413() {
    let app = TestApp::spawn().await;
    let (url, _stop) = app.serve().await;
    let addr = url.trim_start_matches("http://").to_string();
    let limit = app.settings.server.max_body_bytes as usize;
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = vec![b' '; limit + 1024 * 1024];
        let head = format!(
            "POST /api/trades HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes())
            .and_then(|()| conn.write_all(&body))
            .map_err(|e| format!("writing the body failed: {e}"))?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        Ok::<String, String>(answer)
    })
    .await
    .unwrap();
    let answer = answer.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too large"), "{answer}");
}

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

    // The write reaches InfluxDB once thawed, and its late range must follow
    // it: a tick after that counts it at every resolution. The range is
    // also recorded before the write, and a tick right away may repair it
    // before the trade has landed (InfluxDB 3 takes a WAL flush): only the
    // record after the write can settle it then.
    app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .rows("SELECT price FROM trades WHERE symbol = 'BTCUSD' AND id = 7")
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the trade never reached InfluxDB"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hour = t("2024-05-01T10:00:00Z");
    let counted = || async {
        let mut all = Vec::new();
        for res in [
            ohlcd::candle::Resolution::M1,
            ohlcd::candle::Resolution::H1,
            ohlcd::candle::Resolution::H4,
        ] {
            let stored = app.stored("BTCUSD", res).await;
            let c = stored.iter().find(|c| c.start == res.window_start(hour));
            all.push((res, c.map(|c| (c.trades, c.close))));
        }
        all
    };
    loop {
        app.engine("a").tick(&TaskFilter::default()).await.unwrap();
        let seen = counted().await;
        if seen.iter().all(|(_, c)| *c == Some((1, 250.5))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late trade was never counted: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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

/// The daemon dies (SIGKILL) right after InfluxDB stored a POSTed late
/// trade, before it answered: the client sees a broken connection and may
/// never send it again, yet the trade is stored, so it must still be
/// counted. The late range is recorded before the write for that.
#[tokio::test]
async fn a_late_trade_is_counted_even_when_the_daemon_dies_right_after_storing_it() {
    use std::process::Stdio;

    use crate::faults::wait_for_stderr;
    use crate::helpers::{KillOnDrop, assert_candles_eq, free_port};

    let app = TestApp::spawn().await;
    let day = t("2024-05-01T00:00:00Z");
    let trade = |ms: i64, id: i64| NewTrade {
        symbol: "BTCUSD".into(),
        side: Side::Buy,
        price: 100.0,
        amount: 1.0,
        time_ms: ms,
        id,
    };
    app.write(&[trade(day / 1_000_000 + 60_000, 1)]).await;
    let port = free_port();
    let mut daemon = KillOnDrop::spawn(
        app.ohlcd()
            .arg("run")
            .env("OHLCD_FAILPOINT", "trades_written")
            .env("OHLCD_LOG", "ohlcd=info,warn")
            // Only the tick at start-up: nothing runs while the test looks.
            .env("OHLCD_ENGINE__CRON", "0 0 0 1 1 *")
            .env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    // Caught up: the start-up tick has taken BTCUSD to now.
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = match http.get(format!("{base}/api/progress")).send().await {
            Ok(r) => r.json::<serde_json::Value>().await.is_ok_and(|v| {
                v.as_array().is_some_and(|tasks| {
                    tasks.len() == 6 && tasks.iter().all(|t| t["status"] == "completed")
                })
            }),
            Err(_) => false,
        };
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let body = r#"[{"symbol":"BTCUSD","price":250.5,"amount":2,"side":"sell","timestamp":"2024-05-01T10:00:00Z","id":7}]"#;
    let post = tokio::spawn(
        http.post(format!("{base}/api/trades"))
            .header("content-type", "application/json")
            .body(body)
            .send(),
    );
    let mut daemon = tokio::task::spawn_blocking(move || {
        wait_for_stderr(
            &mut daemon,
            "failpoint trades_written reached",
            Duration::from_secs(30),
        );
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        daemon
    })
    .await
    .unwrap();
    assert!(post.await.unwrap().is_err(), "the client got an answer");
    let stored = app
        .rows("SELECT price FROM trades WHERE symbol = 'BTCUSD' AND id = 7")
        .await;
    assert_eq!(stored.len(), 1, "InfluxDB stored the trade");

    // Whoever runs next counts it at every resolution.
    let out = app.ohlcd().arg("backfill").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let until = ohlcd::clock::Clock::now(&ohlcd::clock::SystemClock) - 60 * 1_000_000_000;
    for res in ohlcd::candle::Resolution::ALL {
        let expected = app.expected("BTCUSD", res, until).await;
        assert_candles_eq(
            &app.stored("BTCUSD", res).await,
            &expected,
            &format!("{res}"),
        );
    }
    let _ = daemon.try_wait();
}

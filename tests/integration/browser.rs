//! The chart page in a real headless Chromium (driven by web/tests/chart.mjs with
//! playwright-core): it loads, draws exactly the bars the API returns (time,
//! open, high, low, close and volume of each), switches timeframe (seconds
//! too), symbol and time zone (daily bars on their local date), shows the
//! watchlist's quotes, and leaves a fresh screenshot in target/chart.png.

use std::process::Command;

use ohlcd::candle::NANOS_PER_SEC;
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::NewTrade;

use crate::helpers::TestApp;

/// Serves `app` (the page from web/ on disk) and runs web/tests/chart.mjs
/// against it; see [`chart_script`].
async fn run_chart_script(app: &TestApp, shot_name: &str, env: &[(&str, &str)]) {
    let (url, _stop) = app.serve().await;
    chart_script(url, shot_name, env).await;
}

/// Runs web/tests/chart.mjs against the server at `url` in headless Chromium,
/// with `env` for the script; the screenshot goes to target/`shot_name`.
async fn chart_script(url: String, shot_name: &str, env: &[(&str, &str)]) {
    let web = concat!(env!("CARGO_MANIFEST_DIR"), "/web");
    assert!(
        std::path::Path::new(web)
            .join("node_modules/lightweight-charts")
            .exists(),
        "web/node_modules missing: run scripts/test (npm ci in web/)"
    );
    let shot = format!("{}/target/{shot_name}", env!("CARGO_MANIFEST_DIR"));
    // A screenshot from an earlier run must not pass for this one.
    match std::fs::remove_file(&shot) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot remove the old {shot}: {e}"),
    }
    let script = format!("{web}/tests/chart.mjs");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let shot_arg = shot.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(&url)
            .arg(shot_arg)
            .envs(env)
            .output()
    })
    .await
    .unwrap()
    .expect("node not found: run scripts/test, which installs it");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 0),
        "no screenshot at {shot}"
    );
}

#[tokio::test]
async fn the_chart_page_draws_the_candles_the_api_serves_in_headless_chromium() {
    let app = TestApp::spawn().await;
    // Data up to "now" so the page's default ranges (ending today) have bars.
    let now = ohlcd::clock::Clock::now(&ohlcd::clock::SystemClock);
    app.clock.set(now);
    let spec = GenerateSpec {
        symbols: vec!["BTCUSD".into(), "ETHUSD".into()],
        from: now - 10 * 86_400 * NANOS_PER_SEC,
        to: now - 30 * NANOS_PER_SEC,
        trades: 30_000,
        seed: 5,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;
    app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    run_chart_script(&app, "chart.png", &[]).await;
}

/// Trades of 2024 only: the page must open on them (the newest bar at the
/// right edge), not on an empty last week of the wall clock.
#[tokio::test]
async fn with_historical_data_the_chart_opens_on_the_symbols_newest_bars() {
    let app = TestApp::spawn().await;
    let now = ohlcd::clock::Clock::now(&ohlcd::clock::SystemClock);
    app.clock.set(now);
    let spec = GenerateSpec {
        symbols: vec!["BTCUSD".into(), "ETHUSD".into()],
        from: crate::helpers::t("2024-03-01T00:00:00Z"),
        to: crate::helpers::t("2024-03-20T12:00:00Z"),
        trades: 20_000,
        seed: 8,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;
    app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    run_chart_script(
        &app,
        "chart-historical.png",
        &[("EXPECT_LAST_DAY", "2024-03-20")],
    )
    .await;
}

/// The binary alone, copied into an empty directory (no checkout, no
/// node_modules beside it), serves the embedded page and Chromium draws it.
#[tokio::test]
async fn the_binary_copied_alone_into_an_empty_directory_serves_a_working_chart() {
    let app = TestApp::spawn().await;
    let now = ohlcd::clock::Clock::now(&ohlcd::clock::SystemClock);
    let spec = GenerateSpec {
        symbols: vec!["BTCUSD".into(), "ETHUSD".into()],
        from: now - 5 * 86_400 * NANOS_PER_SEC,
        to: now - 30 * NANOS_PER_SEC,
        trades: 10_000,
        seed: 9,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;
    let alone = tempfile::tempdir().unwrap();
    let binary = alone.path().join("ohlcd");
    std::fs::copy(env!("CARGO_BIN_EXE_ohlcd"), &binary).unwrap();
    let port = crate::helpers::free_port();
    let mut daemon = Command::new(&binary)
        .arg("run")
        .current_dir(alone.path())
        .env_clear()
        .env("OHLCD_INFLUX__URL", &app.server.url)
        .env("OHLCD_INFLUX__DATABASE", app.influx.database())
        .env("OHLCD_PROGRESS__DATABASE_URL", "sqlite://progress.db")
        .env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("OHLCD_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon did not come up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    chart_script(url, "chart-embedded.png", &[]).await;
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    // Nothing but the binary and its progress file appeared.
    let mut files: Vec<String> = std::fs::read_dir(alone.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("progress.db"))
        .collect();
    files.sort();
    assert_eq!(files, vec!["ohlcd".to_string()]);
}

/// The server refuses every live stream (`server.max_streams = 0`, as a full
/// server would): the page falls back to polling, and a trade posted during
/// the test still moves the drawn bar, without a reload.
#[tokio::test]
async fn with_the_live_stream_refused_a_posted_trade_reaches_the_drawn_bar_by_polling() {
    let app = TestApp::spawn().await;
    let now = ohlcd::clock::Clock::now(&ohlcd::clock::SystemClock);
    app.clock.set(now);
    let spec = GenerateSpec {
        symbols: vec!["BTCUSD".into(), "ETHUSD".into()],
        from: now - 3 * 86_400 * NANOS_PER_SEC,
        to: now - 30 * NANOS_PER_SEC,
        trades: 10_000,
        seed: 6,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;
    app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    let served = app
        .serve_with("127.0.0.1:0", |s| s.server.max_streams = 0)
        .await;
    chart_script(
        served.url.clone(),
        "chart-polling.png",
        &[("EXPECT_STREAM_REFUSED", "1")],
    )
    .await;
}

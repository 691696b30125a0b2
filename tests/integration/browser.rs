//! The chart page in a real headless Chromium (driven by web/tests/chart.mjs with
//! playwright-core): it loads, draws exactly the bars the API returns (time,
//! open, high, low, close and volume of each), switches timeframe and symbol,
//! and leaves a fresh screenshot in target/chart.png.

use std::process::Command;

use ohlcd::candle::NANOS_PER_SEC;
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::NewTrade;

use crate::helpers::TestApp;

#[tokio::test]
async fn the_chart_page_draws_the_candles_the_api_serves_in_headless_chromium() {
    let web = concat!(env!("CARGO_MANIFEST_DIR"), "/web");
    assert!(
        std::path::Path::new(web)
            .join("node_modules/lightweight-charts")
            .exists(),
        "web/node_modules missing: run scripts/test (npm ci in web/)"
    );
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
    let (url, _stop) = app.serve().await;
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/chart.png");
    // A screenshot from an earlier run must not pass for this one.
    match std::fs::remove_file(shot) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot remove the old {shot}: {e}"),
    }
    let script = format!("{web}/tests/chart.mjs");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(&url)
            .arg(shot)
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
        std::fs::metadata(shot).is_ok_and(|m| m.len() > 0),
        "no screenshot at {shot}"
    );
}

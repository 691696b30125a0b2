//! The server's requests fit a thread's stack with room to spare, in the
//! debug build the tests run: a tokio worker has 2 MiB, and a request whose
//! poll needs more aborts the whole daemon ("has overflowed its stack").

use std::time::Duration;

use ohlcd::candle::NANOS_PER_SEC;
use ohlcd::engine::TaskFilter;

use crate::faults::with_trades;
use crate::helpers::{TestApp, t};

/// Half a tokio worker's default stack: what every request must fit in.
const STACK: usize = 1 << 20;

#[tokio::test]
async fn every_route_is_served_from_a_thread_with_half_a_workers_stack() {
    let app = TestApp::spawn().await;
    with_trades(&app, &["BTCUSD"], 3, 3_000).await;
    app.clock.set(t("2024-01-04T00:00:30Z"));
    app.engine("a").tick(&TaskFilter::default()).await.unwrap();

    // The server and its connection tasks all run on one small thread.
    let state = app.state();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("small-stack".into())
        .stack_size(STACK)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                ohlcd::server::serve(listener, state, async move {
                    let _ = stopped.await;
                })
                .await;
            });
        })
        .unwrap();

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (from, to) = (
        t("2024-01-01T00:00:00Z") / NANOS_PER_SEC,
        t("2024-01-04T00:00:00Z") / NANOS_PER_SEC,
    );
    for res in ["1", "5", "60", "240", "1D", "1W", "2D"] {
        let url = format!("{url}/udf/history?symbol=BTCUSD&resolution={res}&from={from}&to={to}");
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["s"], "ok", "{url}: {body}");
    }
    let gets = [
        format!("/udf/history?symbol=BTCUSD&resolution=15&to={to}&countback=50"),
        format!("/api/ohlc?symbol=BTCUSD&resolution=60&from={from}&to={to}"),
        "/udf/config".to_string(),
        "/udf/symbols?symbol=BTCUSD".to_string(),
        "/api/progress".to_string(),
        "/healthz".to_string(),
    ];
    for path in gets {
        let resp = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let post = http
        .post(format!("{url}/api/trades"))
        .header("content-type", "application/json")
        .body(format!(
            r#"[{{"symbol":"BTCUSD","price":101.5,"amount":0.5,"side":"buy","timestamp":{},"id":9000001}}]"#,
            t("2024-01-04T00:00:10Z") / 1_000_000
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200, "{}", post.text().await.unwrap());
    // A live stream's first bar.
    let mut live = http
        .get(format!("{url}/api/live?symbol=BTCUSD&resolution=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(30), live.chunk())
        .await
        .expect("no event within 30 s")
        .unwrap();
    assert!(first.is_some_and(|c| !c.is_empty()));
    drop(live);

    let _ = stop.send(());
    tokio::task::spawn_blocking(move || server.join())
        .await
        .unwrap()
        .expect("the server thread panicked");
}

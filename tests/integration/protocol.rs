//! HTTP details that load balancers, caches and browsers rely on: `HEAD` on
//! every `GET` route, `Vary: Origin` where answers follow the Origin, JSON
//! only on the write path, and one symbol rule for writing and reading.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, t};

#[tokio::test]
async fn head_answers_every_get_route_with_its_headers_and_no_body() {
    let app = TestApp::spawn().await;
    let served = app.serve_with("127.0.0.1:0", |_| {}).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for path in [
        "/healthz",
        "/",
        "/udf/config",
        "/udf/time",
        "/api/progress",
        "/metrics",
        "/api/live?symbol=BTCUSD&resolution=1",
    ] {
        let url = format!("{}{path}", served.url);
        let get = http.get(&url).send().await.unwrap();
        let get_status = get.status();
        let get_type = get.headers().get("content-type").cloned();
        drop(get);
        let head = http.head(&url).send().await.unwrap();
        assert_eq!(head.status(), get_status, "HEAD {path}");
        assert_ne!(head.status(), 405, "HEAD {path}");
        assert_eq!(
            head.headers().get("content-type").cloned(),
            get_type,
            "HEAD {path}"
        );
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} has a body"
        );
    }
}

#[tokio::test]
async fn answers_that_follow_the_origin_say_so_to_caches() {
    let app = TestApp::spawn().await;
    let served = app
        .serve_with("127.0.0.1:0", |s| {
            s.server.cors_origins = vec!["https://charts.example".into()];
        })
        .await;
    let http = reqwest::Client::new();
    for origin in ["https://charts.example", "https://other.example"] {
        let r = http
            .get(format!("{}/udf/config", served.url))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        let vary = r
            .headers()
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(",");
        assert!(vary.contains("origin"), "{origin}: vary {vary:?}");
    }
}

#[tokio::test]
async fn only_json_is_taken_on_the_write_path_and_nothing_else_is_written() {
    let app = TestApp::spawn().await;
    app.clock.set(t("2024-01-02T00:00:00Z"));
    let served = app.serve_with("127.0.0.1:0", |_| {}).await;
    let http = reqwest::Client::new();
    let ms = t("2024-01-01T12:00:00Z") / 1_000_000;
    let body = json!([{"symbol": "FORMUSD", "price": 1.5, "amount": 2.0, "side": "buy", "timestamp": ms, "id": 1}])
        .to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = http
            .post(format!("{}/api/trades", served.url))
            .body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("application/json"),
            "{v}"
        );
    }
    assert!(
        app.rows("SELECT price FROM trades WHERE symbol = 'FORMUSD'")
            .await
            .is_empty()
    );
    let r = http
        .post(format!("{}/api/trades", served.url))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.rows("SELECT price FROM trades WHERE symbol = 'FORMUSD'")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_symbol_that_could_not_be_read_back_cannot_be_written() {
    let app = TestApp::spawn().await;
    app.clock.set(t("2024-01-02T00:00:00Z"));
    let served = app.serve_with("127.0.0.1:0", |_| {}).await;
    let http = reqwest::Client::new();
    let ms = t("2024-01-01T12:00:00Z") / 1_000_000;
    for symbol in ["ohlcd:FAKE", "ohlcd:BTCUSD", "binance:BTCUSDT"] {
        let r = http
            .post(format!("{}/api/trades", served.url))
            .json(&json!({"symbol": symbol, "price": 1.5, "amount": 2.0, "side": "buy", "timestamp": ms}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{symbol}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("':'"), "{v}");
    }
    assert!(app.rows("SELECT price FROM trades").await.is_empty());
    // What can be written reads back under its name, and under the
    // exchange-qualified name TradingView sends.
    let r = http
        .post(format!("{}/api/trades", served.url))
        .json(
            &json!({"symbol": "FAKE", "price": 1.5, "amount": 2.0, "side": "buy", "timestamp": ms}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for name in ["FAKE", "ohlcd:FAKE"] {
        let v: Value = http
            .get(format!(
                "{}/udf/history?symbol={name}&resolution=1&from={}&to={}",
                served.url,
                ms / 1000 - 60,
                ms / 1000 + 60
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (v["s"].as_str(), v["c"][0].as_f64()),
            (Some("ok"), Some(1.5)),
            "{name}: {v}"
        );
    }
}

//! A server that can face a network: who may write and read, CORS, and clients
//! that are slow or greedy. Against a real influxd; load goes only to 127.0.0.1,
//! bounded in count and time; latencies are compared as ratios to a baseline
//! measured in the same test, never against absolute times.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ohlcd::candle::NANOS_PER_SEC;
use ohlcd::config::Secret;
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::NewTrade;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, daemon, free_port, rss_kib, t};

const FROM: &str = "2024-01-01T00:00:00Z";
const TO: &str = "2024-01-03T00:00:00Z";
/// Tokens used below; each must never show up in a log line or a response.
const INGEST: &str = "ingest-3f9a0c1d7e5b2468ace0";
const READ: &str = "read-8b1d4f6a2c9e0375bd1f";
/// A wrong token a client sends: not to be echoed either.
const WRONG: &str = "wrong-guess-5a5a5a5a5a5a5a";

/// Every endpoint that writes or changes state, with a body it would accept.
fn writing_endpoints() -> Vec<(Method, &'static str, String)> {
    vec![(Method::POST, "/api/trades", trades_body())]
}

/// Every path the server routes; other methods than GET on them must be refused
/// unless listed in [`writing_endpoints`].
const PATHS: [&str; 13] = [
    "/",
    "/udf/config",
    "/udf/symbols?symbol=BTCUSD",
    "/udf/search?query=BTC",
    "/udf/history?symbol=BTCUSD&resolution=60&from=1704067200&to=1704240000",
    "/udf/time",
    "/api/ohlc?symbol=BTCUSD&resolution=60&from=1704067200&to=1704240000",
    "/api/trades?symbol=BTCUSD&from=1704067200&to=1704153600",
    "/api/progress",
    "/healthz",
    "/metrics",
    "/static/app.js",
    "/lib/lightweight-charts.js",
];

/// Two valid trades: a late one for BTCUSD (would add a dirty range) and one of
/// a new symbol (would add a symbol).
fn trades_body() -> String {
    let late_ms = t("2024-01-02T12:00:00Z") / 1_000_000;
    json!([
        {"symbol": "BTCUSD", "price": 42000.5, "amount": 0.5, "side": "buy", "timestamp": late_ms, "id": 99_000_001},
        {"symbol": "NEWUSD", "price": 1.5, "amount": 2.0, "side": "sell", "timestamp": late_ms + 1, "id": 7},
    ])
    .to_string()
}

/// influxd with two days of BTCUSD trades, the engine caught up, the clock an
/// hour after the data.
async fn seeded_app(trades: u64) -> TestApp {
    let app = TestApp::spawn().await;
    write_trades(&app, trades, 2).await;
    let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    app
}

async fn write_trades(app: &TestApp, trades: u64, seed: u64) {
    let spec = GenerateSpec {
        symbols: vec!["BTCUSD".into()],
        from: t(FROM),
        to: t(TO),
        trades,
        seed,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    for batch in trades.chunks(50_000) {
        app.write(batch).await;
    }
    app.clock.set(t(TO) + 3600 * NANOS_PER_SEC);
}

/// A response as seen by a client: status, headers flattened to text, body.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            k.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Everything the client received, to search for leaked tokens.
    fn all(&self) -> String {
        format!("{}\n{}\n{}", self.status, self.headers, self.body)
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect::<Vec<_>>()
        .join("\n");
    let body = resp.text().await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn writing_needs_the_ingest_token_and_a_refused_request_writes_nothing() {
    let app = seeded_app(2_000).await;
    let server = app
        .serve_with("127.0.0.1:0", |s| {
            s.server.ingest_token = Secret::new(INGEST)
        })
        .await;
    let http = http();
    let before = app.snapshot().await;
    for (method, path, body) in writing_endpoints() {
        let url = format!("{}{path}", server.url);
        let wrong: [(&str, Option<String>); 7] = [
            ("no token", None),
            ("a wrong token", Some(format!("Bearer {WRONG}"))),
            ("the token plus a byte", Some(format!("Bearer {INGEST}x"))),
            (
                "the token less a byte",
                Some(format!("Bearer {}", &INGEST[..INGEST.len() - 1])),
            ),
            ("the token without a scheme", Some(INGEST.to_string())),
            ("the token as Basic", Some(format!("Basic {INGEST}"))),
            ("an empty bearer", Some("Bearer ".to_string())),
        ];
        for (what, auth) in wrong {
            let mut req = http
                .request(method.clone(), &url)
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            let a = send(req).await;
            assert_eq!(a.status, 401, "{method} {path} with {what}: {}", a.all());
            assert!(
                a.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer")),
                "{what}: {}",
                a.all()
            );
            assert!(
                a.json()["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("ingest token")),
                "{what}: {}",
                a.all()
            );
            assert!(!a.all().contains(INGEST) && !a.all().contains(WRONG));
        }
        assert_eq!(
            app.snapshot().await,
            before,
            "{method} {path}: a refused request changed what is stored"
        );
        let ok = send(
            http.request(method.clone(), &url)
                .header("content-type", "application/json")
                .bearer_auth(INGEST)
                .body(body.clone()),
        )
        .await;
        assert_eq!(
            ok.status,
            200,
            "{method} {path} with the token: {}",
            ok.all()
        );
        assert_eq!(ok.json(), json!({"accepted": 2, "late": 1}));
    }
    let after = app.snapshot().await;
    assert_ne!(after, before, "the accepted request wrote nothing");
    assert!(after.iter().any(|l| l.contains("NEWUSD")), "{after:?}");

    // No other method on any path writes: each is refused before a handler
    // runs, token or not.
    let before = app.snapshot().await;
    let writing: Vec<_> = writing_endpoints()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    for path in PATHS {
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let bare = path.split('?').next().unwrap();
            if writing.iter().any(|(m, p)| *m == method && *p == bare) {
                continue;
            }
            let a = send(
                http.request(method.clone(), format!("{}{path}", server.url))
                    .bearer_auth(INGEST)
                    .header("content-type", "application/json")
                    .body(trades_body()),
            )
            .await;
            assert!(
                [404, 405].contains(&a.status),
                "{method} {path} answered {}: a writing endpoint missing from writing_endpoints()?",
                a.status
            );
        }
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn off_loopback_without_a_token_writing_is_refused_and_says_how_to_enable_it() {
    let app = seeded_app(2_000).await;
    // 0.0.0.0 is every interface: reachable from the network. The test still
    // connects through 127.0.0.1 only.
    let open = app.serve_with("0.0.0.0:0", |_| {}).await;
    assert!(!open.addr.ip().is_loopback());
    let http = http();
    let before = app.snapshot().await;
    for auth in [None, Some(format!("Bearer {WRONG}"))] {
        let mut req = http
            .post(format!("{}/api/trades", open.url))
            .header("content-type", "application/json")
            .body(trades_body());
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let a = send(req).await;
        assert_eq!(a.status, 403, "{}", a.all());
        let error = a.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.contains("not loopback") && error.contains("OHLCD_SERVER__INGEST_TOKEN"),
            "{error}"
        );
    }
    assert_eq!(app.snapshot().await, before);
    // Reading stays public.
    let history = send(http.get(format!(
        "{}/udf/history?symbol=BTCUSD&resolution=60&from=1704067200&to=1704240000",
        open.url
    )))
    .await;
    assert_eq!((history.status, &history.json()["s"]), (200, &json!("ok")));

    // On loopback without a token, local clients write, proxied ones do not.
    let local = app.serve_with("127.0.0.1:0", |_| {}).await;
    for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let a = send(
            http.post(format!("{}/api/trades", local.url))
                .header(header, "203.0.113.7")
                .body(trades_body()),
        )
        .await;
        assert_eq!(a.status, 403, "{header}: {}", a.all());
        assert!(a.json()["error"].as_str().unwrap().contains("proxy"));
    }
    assert_eq!(app.snapshot().await, before);
    let a = send(
        http.post(format!("{}/api/trades", local.url))
            .header("content-type", "application/json")
            .body(trades_body()),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.all());
}

/// What a write through the API would change, leaving out what a running
/// daemon changes by itself (candles and watermarks follow the real clock).
async fn written(app: &TestApp) -> Vec<String> {
    app.snapshot()
        .await
        .into_iter()
        .map(|l| match l.split_once(", dirty ") {
            Some((task, dirty)) => format!("{} dirty {dirty}", task.split(':').next().unwrap()),
            None => l,
        })
        .filter(|l| !l.starts_with("ohlc_"))
        .collect()
}

#[tokio::test]
async fn ohlcd_run_on_a_non_loopback_address_without_a_token_refuses_writes_and_logs_why() {
    let app = seeded_app(500).await;
    let port = free_port();
    let mut child = daemon(&app, &format!("0.0.0.0:{port}"), &[("OHLCD_LOG", "info")]);
    let url = format!("http://127.0.0.1:{port}");
    child.wait_healthy(&url).await;
    let before = written(&app).await;
    let a = send(http().post(format!("{url}/api/trades")).body(trades_body())).await;
    assert_eq!(a.status, 403, "{}", a.all());
    assert_eq!(written(&app).await, before);
    let log = child.stop().await;
    assert!(
        log.contains("writing is refused") && log.contains("not loopback"),
        "start-up log does not say writing is refused:\n{log}"
    );
}

#[tokio::test]
async fn tokens_never_appear_in_logs_or_error_messages() {
    let app = seeded_app(500).await;
    let token_file = app.dir.path().join("ingest_token");
    std::fs::write(&token_file, format!("{INGEST}\n")).unwrap();
    let port = free_port();
    let token_file = token_file.display().to_string();
    let mut child = daemon(
        &app,
        &format!("0.0.0.0:{port}"),
        &[
            ("OHLCD_SERVER__INGEST_TOKEN_FILE", token_file.as_str()),
            ("OHLCD_SERVER__READ_TOKEN", READ),
            // Everything every crate logs, down to trace.
            ("OHLCD_LOG", "trace"),
        ],
    );
    let url = format!("http://127.0.0.1:{port}");
    child.wait_healthy(&url).await;
    let http = http();
    let post = |auth: Option<String>| {
        let mut req = http
            .post(format!("{url}/api/trades"))
            .header("content-type", "application/json")
            .body(trades_body());
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        req
    };
    let get = |path: &str| http.get(format!("{url}{path}"));
    let answers = vec![
        (401, send(post(None)).await),
        (401, send(post(Some(format!("Bearer {WRONG}")))).await),
        (401, send(post(Some(format!("Bearer {READ}")))).await),
        (200, send(post(Some(format!("Bearer {INGEST}")))).await),
        (401, send(get("/udf/config")).await),
        (401, send(get("/udf/config").bearer_auth(WRONG)).await),
        (
            401,
            send(get("/udf/config").basic_auth("me", Some(WRONG))).await,
        ),
        (200, send(get("/udf/config").bearer_auth(READ)).await),
        (
            200,
            send(get("/udf/config").basic_auth("me", Some(READ))).await,
        ),
        (200, send(get("/api/progress").bearer_auth(INGEST)).await),
        (401, send(get("/metrics")).await),
        (200, send(get("/healthz")).await),
    ];
    for (i, (status, a)) in answers.iter().enumerate() {
        assert_eq!(a.status, *status, "request {i}: {}", a.all());
        for secret in [INGEST, READ, WRONG] {
            assert!(
                !a.all().contains(secret),
                "request {i} echoes a token: {}",
                a.all()
            );
        }
    }
    let log = child.stop().await;
    assert!(
        log.contains("POST /api/trades requires Authorization: Bearer")
            && log.contains("ohlcd::http"),
        "expected the start-up and request logs:\n{log}"
    );
    for secret in [INGEST, READ, WRONG] {
        assert!(!log.contains(secret), "a token is in the log");
    }

    // A token that is refused at start-up is not shown either.
    let short = "sh0rt-s3cret";
    let out = app
        .ohlcd()
        .arg("run")
        .env("OHLCD_SERVER__INGEST_TOKEN", short)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("server.ingest_token is too short"), "{err}");
    assert!(!err.contains(short), "{err}");
}

#[tokio::test]
async fn with_a_read_token_reading_needs_it_and_healthz_stays_public() {
    let app = seeded_app(500).await;
    let server = app
        .serve_with("127.0.0.1:0", |s| {
            s.server.ingest_token = Secret::new(INGEST);
            s.server.read_token = Secret::new(READ);
        })
        .await;
    let http = http();
    for path in PATHS.iter().filter(|p| **p != "/healthz") {
        let url = format!("{}{path}", server.url);
        let a = send(http.get(&url)).await;
        assert_eq!(a.status, 401, "GET {path} without a token: {}", a.all());
        assert!(
            a.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Basic")),
            "{path}: browsers need a Basic challenge to prompt"
        );
        assert_eq!(send(http.get(&url).bearer_auth(WRONG)).await.status, 401);
        for ok in [
            http.get(&url).bearer_auth(READ),
            http.get(&url).basic_auth("viewer", Some(READ)),
            http.get(&url).bearer_auth(INGEST),
        ] {
            let a = send(ok).await;
            assert_eq!(a.status, 200, "GET {path} with a token: {}", a.all());
        }
    }
    assert_eq!(
        send(http.get(format!("{}/healthz", server.url)))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn metrics_can_be_served_on_their_own_address_only() {
    let app = seeded_app(500).await;
    let server = app
        .serve_with("127.0.0.1:0", |s| {
            s.server.metrics_listen = "127.0.0.1:0".into();
            s.server.read_token = Secret::new(READ);
        })
        .await;
    let http = http();
    let main = send(
        http.get(format!("{}/metrics", server.url))
            .bearer_auth(READ),
    )
    .await;
    assert_eq!(main.status, 404, "{}", main.all());
    let metrics_url = server.metrics_url.clone().unwrap();
    let a = send(http.get(format!("{metrics_url}/metrics"))).await;
    assert_eq!(a.status, 200, "{}", a.all());
    assert!(a.body.contains("ohlcd_http_requests_total"), "{}", a.body);
    let other = send(http.get(format!("{metrics_url}/udf/config"))).await;
    assert_eq!(
        other.status, 404,
        "the metrics listener serves /metrics only"
    );
}

#[tokio::test]
async fn cors_preflight_is_answered_for_an_allowed_origin_and_refused_for_others() {
    const ALLOWED: &str = "https://charts.example.com";
    const REFUSED: &str = "https://evil.example";
    let app = seeded_app(500).await;
    let server = app
        .serve_with("127.0.0.1:0", |s| {
            s.server.cors_origins = vec![ALLOWED.into()]
        })
        .await;
    let http = http();
    let history = format!(
        "{}/udf/history?symbol=BTCUSD&resolution=60&from=1704067200&to=1704240000",
        server.url
    );
    let preflight = |origin: &str, method: &str| {
        http.request(Method::OPTIONS, &history)
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "authorization")
    };
    let ok = send(preflight(ALLOWED, "GET")).await;
    assert_eq!(ok.status, 200, "{}", ok.all());
    assert_eq!(ok.header("access-control-allow-origin"), Some(ALLOWED));
    let methods = ok
        .header("access-control-allow-methods")
        .unwrap_or_default();
    assert!(methods.contains("GET"), "{}", ok.all());
    let headers = ok
        .header("access-control-allow-headers")
        .unwrap_or_default();
    assert!(headers.contains("authorization"), "{}", ok.all());
    let get = send(http.get(&history).header("origin", ALLOWED)).await;
    assert_eq!(
        (get.status, get.header("access-control-allow-origin")),
        (200, Some(ALLOWED))
    );

    for refused in [preflight(REFUSED, "GET"), preflight(ALLOWED, "DELETE")] {
        let a = send(refused).await;
        assert_eq!(a.status, 403, "{}", a.all());
        assert_eq!(a.header("access-control-allow-origin"), None);
    }
    let a = send(http.get(&history).header("origin", REFUSED)).await;
    assert_eq!(
        (a.status, a.header("access-control-allow-origin")),
        (403, None)
    );
    // A page on a refused origin cannot make a visitor's browser write, even to
    // a loopback server that takes writes without a token.
    let before = app.snapshot().await;
    let a = send(
        http.post(format!("{}/api/trades", server.url))
            .header("origin", REFUSED)
            .header("content-type", "text/plain")
            .body(trades_body()),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.all());
    assert_eq!(app.snapshot().await, before);
    // Requests without an Origin (same-origin GETs, scripts) are not affected.
    assert_eq!(send(http.get(&history)).await.status, 200);

    // Nothing is allowed by default.
    let default = app.serve_with("127.0.0.1:0", |_| {}).await;
    let a = send(
        http.request(Method::OPTIONS, format!("{}/udf/config", default.url))
            .header("origin", ALLOWED)
            .header("access-control-request-method", "GET"),
    )
    .await;
    assert_eq!(
        (a.status, a.header("access-control-allow-origin")),
        (403, None)
    );
}

/// Reads one HTTP/1.1 response (headers and a Content-Length body) off `stream`;
/// `None` if the connection closed first.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head.get(9..12)?.parse().ok()?;
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Some((status, body));
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Median of `n` sequential requests' latencies, each on a fresh connection
/// (a new visitor must be accepted, not only served on a warm connection).
async fn median_latency(url: &str, n: usize) -> Duration {
    median(latencies(url, n).await)
}

/// The times of `n` requests for `url` one after the other, each answered
/// with bars.
async fn latencies(url: &str, n: usize) -> Vec<Duration> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let resp = client.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["s"], "ok", "{v}");
        latencies.push(start.elapsed());
    }
    latencies
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_do_not_starve_history_requests_and_are_cut_off_after_the_timeout() {
    const SLOW: usize = 300;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(4);
    let app = seeded_app(20_000).await;
    // The server in a process of its own, so its memory is measured alone
    // (this test binary runs other tests at the same time).
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = daemon(
        &app,
        &listen,
        &[(
            "OHLCD_SERVER__HEADER_TIMEOUT_SECS",
            &HEADER_TIMEOUT.as_secs().to_string(),
        )],
    );
    let base = format!("http://{listen}");
    server.wait_healthy(&base).await;
    let pid = server.child.id();
    let addr: SocketAddr = listen.parse().unwrap();
    let to = t(TO) / NANOS_PER_SEC;
    let url = format!("{base}/udf/history?symbol=BTCUSD&resolution=1&to={to}&countback=300");
    median_latency(&url, 5).await; // warm-up
    let baseline = median_latency(&url, 30).await;
    let rss_before = rss_kib(pid);

    // Slowloris: each connection sends a request line and then one header line
    // every 500 ms, never the blank line that ends the headers.
    let closed = Arc::new(AtomicUsize::new(0));
    let answered_408 = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /udf/history?symbol=BTCUSD&resolution=1&countback=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        let (closed, answered_408) = (closed.clone(), answered_408.clone());
        slow.push(tokio::spawn(async move {
            let opened = Instant::now();
            let mut buf = [0u8; 1024];
            let mut got = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    r = stream.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    },
                    _ = tick.tick() => {
                        let _ = stream.write_all(b"X-Slow: 1\r\n").await;
                    }
                }
            }
            if got.starts_with(b"HTTP/1.1 408 ") {
                answered_408.fetch_add(1, Ordering::SeqCst);
            }
            closed.fetch_add(1, Ordering::SeqCst);
            opened.elapsed()
        }));
    }
    let opened_in = started.elapsed();
    let loaded = median_latency(&url, 30).await;
    let measured_in = started.elapsed();
    let closed_during_measurement = closed.load(Ordering::SeqCst);
    let rss_loaded = rss_kib(pid);

    let mut held = Vec::with_capacity(SLOW);
    for task in slow {
        held.push(
            tokio::time::timeout(HEADER_TIMEOUT * 5, task)
                .await
                .expect("a slow-header connection was still open at 5 times the header timeout")
                .unwrap(),
        );
    }
    let rss_after = rss_kib(pid);
    let ratio = loaded.as_secs_f64() / baseline.as_secs_f64();
    let (earliest, latest) = (*held.iter().min().unwrap(), *held.iter().max().unwrap());
    let answered_408 = answered_408.load(Ordering::SeqCst);
    println!(
        "slowloris: {SLOW} slow-header connections opened in {opened_in:?}; /udf/history median \
         {baseline:?} unloaded, {loaded:?} loaded (ratio {ratio:.2}), measured within {measured_in:?}; \
         slow connections held {earliest:?}..{latest:?}, {answered_408} answered 408; server RSS \
         {rss_before} KiB before, {rss_loaded} KiB loaded, {rss_after} KiB after"
    );
    assert_eq!(
        closed_during_measurement, 0,
        "the measurement must happen while every slow connection is held open"
    );
    assert!(
        ratio < 10.0,
        "history latency under slowloris is {ratio:.1}× the unloaded one"
    );
    // Cut off by the header timeout: not before it, and not long after (a
    // timeout twice as long would hold them all past the bound).
    assert!(
        earliest >= HEADER_TIMEOUT - Duration::from_millis(500),
        "a slow connection was closed after {earliest:?}, before the {HEADER_TIMEOUT:?} timeout"
    );
    assert!(
        latest < HEADER_TIMEOUT * 3 / 2,
        "a slow connection was held {latest:?}, past the {HEADER_TIMEOUT:?} timeout"
    );
    // Each told why, as a client of the API is.
    assert_eq!(answered_408, SLOW, "slow-header connections answered 408");
    // Each connection holds little more than hyper's read buffer: measured
    // about 15 MB for the 300 (debug build).
    assert!(
        rss_loaded.saturating_sub(rss_before) < 40 * 1024,
        "server RSS grew by {} KiB under slowloris",
        rss_loaded.saturating_sub(rss_before)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_half_sent_request_head_gets_a_408_and_an_idle_keep_alive_connection_is_closed_silently()
{
    let app = seeded_app(500).await;
    let server = app
        .serve_with("127.0.0.1:0", |s| s.server.header_timeout_secs = 1)
        .await;
    let within = Duration::from_secs(20);
    // Half a request head, then nothing: told why.
    let mut half = TcpStream::connect(server.addr_local()).await.unwrap();
    half.write_all(b"GET /udf/time HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let answer = tokio::time::timeout(within, read_response(&mut half))
        .await
        .expect("no answer 20 s after a 1 s header timeout");
    let (status, body) = answer.expect("closed without an answer");
    assert_eq!(status, 408, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("headers not received"),
        "{body}"
    );
    // A request answered, then silence on the kept-alive connection: closed
    // with nothing more (a client would take a 408 there for its next request).
    let mut idle = TcpStream::connect(server.addr_local()).await.unwrap();
    idle.write_all(b"GET /udf/time HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_response(&mut idle).await.unwrap();
    assert_eq!(status, 200);
    let mut rest = Vec::new();
    let end = tokio::time::timeout(within, idle.read_to_end(&mut rest)).await;
    assert!(
        matches!(end, Ok(Ok(0)) | Ok(Err(_))),
        "{end:?}: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_a_408_and_writes_nothing() {
    let app = seeded_app(500).await;
    let server = app
        .serve_with("127.0.0.1:0", |s| s.server.body_timeout_secs = 1)
        .await;
    let before = app.snapshot().await;
    let body = trades_body();
    let mut stream = TcpStream::connect(server.addr_local()).await.unwrap();
    let head = format!(
        "POST /api/trades HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Half the body, then nothing.
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), read_response(&mut stream))
        .await
        .expect("no answer 20 s after a 1 s body timeout");
    let (status, text) = answer.expect("closed without an answer");
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("request body not received"), "{text}");
    // And the connection is closed afterwards.
    let mut rest = [0u8; 64];
    let eof = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut rest)).await;
    assert!(matches!(eof, Ok(Ok(0)) | Ok(Err(_))), "{eof:?}");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    const CAP: usize = 4;
    let app = seeded_app(500).await;
    let server = app
        .serve_with("127.0.0.1:0", |s| {
            s.server.max_connections = CAP;
            s.server.header_timeout_secs = 60;
        })
        .await;
    // Fill every slot with a keep-alive connection that has been served once,
    // so each is known to have been accepted.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(server.addr_local()).await.unwrap();
        s.write_all(b"GET /udf/time HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let (status, _) = read_response(&mut s).await.unwrap();
        assert_eq!(status, 200);
        held.push(s);
    }
    let url = format!("{}/udf/time", server.url);
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // Not served while the cap is reached ...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a connection beyond max_connections was served: {:?}",
        waiting.await
    );
    // ... and served once a slot frees up.
    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("not served after a slot was freed")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

/// `clients` tasks each requesting `url` in a loop (at most 6 times) until aborted;
/// returns the tasks and the statuses they got.
fn flood(
    clients: usize,
    url: &str,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    Arc<std::sync::Mutex<Vec<u16>>>,
) {
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks = (0..clients)
        .map(|_| {
            let (answers, url) = (answers.clone(), url.to_string());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for _ in 0..6 {
                    if let Ok(r) = client
                        .get(&url)
                        .timeout(Duration::from_secs(60))
                        .send()
                        .await
                    {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        answers.lock().unwrap().push(status);
                    }
                }
            })
        })
        .collect();
    (tasks, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_long_range_history_requests_costs_cheap_ones_no_more_than_the_heavy_slots_do() {
    const FLOOD: usize = 16;
    // Trades only, no candles, no serving cache: every long-range request
    // reads and aggregates raw trades.
    let app = TestApp::spawn().await;
    write_trades(&app, 200_000, 3).await;
    let server = app
        .serve_with("127.0.0.1:0", |s| s.datafeed.cache_max_bytes = 0)
        .await;
    let heavy_slots = app.settings.server.max_heavy_queries;
    let (from, to) = (t(FROM) / NANOS_PER_SEC, t(TO) / NANOS_PER_SEC);
    // Two days at 1 minute: 2,880 bars, over heavy_query_bars (1000).
    let heavy = format!(
        "{}/udf/history?symbol=BTCUSD&resolution=1&from={from}&to={to}",
        server.url
    );
    let cheap = format!(
        "{}/udf/history?symbol=BTCUSD&resolution=1&to={to}&countback=2",
        server.url
    );
    let one_heavy = Instant::now();
    let r = reqwest::get(&heavy).await.unwrap();
    assert_eq!(r.status(), 200);
    let one_heavy = one_heavy.elapsed();
    median_latency(&cheap, 5).await; // warm-up
    let unloaded = median_latency(&cheap, 20).await;

    // Cheap requests beside one heavy client more than there are heavy slots
    // (the slots never idle between its requests: the most heavy work the
    // server is meant to do at once) and beside a flood of heavy clients (the
    // slots just as full, the rest of the flood waiting, which should cost
    // cheap requests nothing more). The two loads alternate, twice each, so a
    // neighbour's burst on this shared machine lands on both sides.
    let mut full = Vec::new();
    let mut flooded = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..2 {
        for (clients, samples) in [(heavy_slots + 1, &mut full), (FLOOD, &mut flooded)] {
            let (tasks, got) = flood(clients, &heavy);
            tokio::time::sleep(one_heavy.max(Duration::from_millis(300))).await;
            samples.extend(latencies(&cheap, 15).await);
            tasks.iter().for_each(|t| t.abort());
            answers.extend(got.lock().unwrap().iter().copied());
        }
    }
    let (full, flooded) = (median(full), median(flooded));
    let ratio = flooded.as_secs_f64() / full.as_secs_f64();
    println!(
        "flood: one 2-day 1m history request alone takes {one_heavy:?}; cheap countback=2 median \
         {unloaded:?} unloaded, {full:?} beside {} heavy clients, {flooded:?} beside {FLOOD} \
         (ratio {ratio:.2}); heavy answers {answers:?}",
        heavy_slots + 1
    );
    assert!(
        answers.iter().all(|s| [200, 503].contains(s)),
        "heavy requests are answered or told to retry: {answers:?}"
    );
    // A cheap request does not queue behind a heavy one of the same symbol:
    // queued, it takes about as long as the heavy one (0.96 of it measured);
    // not queued, about a tenth (0.11-0.13), which a loaded machine raises.
    assert!(
        full < one_heavy / 2,
        "cheap requests beside heavy ones took {full:?}, a heavy one alone {one_heavy:?}"
    );
    assert!(
        ratio < 3.0,
        "cheap requests took {ratio:.1}× longer beside {FLOOD} heavy clients than beside {}",
        heavy_slots + 1
    );
}

trait LocalAddr {
    /// The server's address as a client on this host reaches it.
    fn addr_local(&self) -> SocketAddr;
}

impl LocalAddr for crate::helpers::Served {
    fn addr_local(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.addr.port()))
    }
}

//! Live bars (`GET /api/live`, Server-Sent Events) against a real influxd: what
//! a subscriber receives is checked against bars computed naively from the raw
//! trades read back, and against `/udf/history`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ohlcd::candle::{Candle, NANOS_PER_SEC};
use ohlcd::config::Settings;
use ohlcd::engine::TaskFilter;
use ohlcd::ingest::NewTrade;
use ohlcd::server::AppState;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_candles_eq, free_port, t};
use crate::http::post;

const MINUTE: i64 = 60 * NANOS_PER_SEC;

/// One event as it came over the wire.
#[derive(Debug, Clone)]
struct SseEvent {
    id: Option<String>,
    event: String,
    data: Value,
}

impl SseEvent {
    /// The bar carried by a `bar` event.
    fn bar(&self) -> Candle {
        assert_eq!(self.event, "bar", "not a bar event: {self:?}");
        let d = &self.data;
        Candle {
            start: d["time"].as_i64().unwrap() * NANOS_PER_SEC,
            open: d["open"].as_f64().unwrap(),
            high: d["high"].as_f64().unwrap(),
            low: d["low"].as_f64().unwrap(),
            close: d["close"].as_f64().unwrap(),
            volume: d["volume"].as_f64().unwrap(),
            quote_volume: d["quote_volume"].as_f64().unwrap(),
            trades: d["trades"].as_i64().unwrap(),
            buy_volume: d["buy_volume"].as_f64().unwrap(),
        }
    }
}

/// A minimal EventSource: reads `text/event-stream` and splits it into events
/// (comments skipped), written here from the SSE format, not from ohlcd's code.
struct SseClient {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseClient {
    /// Opens a stream; panics unless it answers 200 `text/event-stream`.
    async fn open(url: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}: {:?}", resp.text().await);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseClient {
            body: resp.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event; panics if none comes within 20 s (a generous bound for
    /// a busy machine, not a latency assertion).
    async fn next(&mut self) -> SseEvent {
        tokio::time::timeout(Duration::from_secs(20), self.next_inner())
            .await
            .expect("no event within 20 s")
    }

    async fn next_inner(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_string(), String::new());
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => id = Some(value.to_string()),
                        "event" => event = value.to_string(),
                        "data" => data.push_str(value),
                        _ => {} // comments (keep-alives) start with ':'
                    }
                }
                if data.is_empty() && id.is_none() {
                    continue;
                }
                return SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                };
            }
            let chunk = self.body.next().await.expect("stream ended").unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events until one carries a bar satisfying `done`.
    async fn until(&mut self, done: impl Fn(&Candle) -> bool) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let hit = e.event == "bar" && done(&e.bar());
            seen.push(e);
            if hit {
                return seen;
            }
        }
    }
}

/// Serves the app over HTTP with `configure`d settings; returns the URL, the
/// server's state (to look inside the push hub) and the stop handle.
async fn serve(
    app: &TestApp,
    configure: impl FnOnce(&mut Settings),
) -> (String, AppState, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(app, listener, configure).await
}

/// Like [`serve`], on `listener`.
async fn serve_on(
    app: &TestApp,
    listener: tokio::net::TcpListener,
    configure: impl FnOnce(&mut Settings),
) -> (String, AppState, tokio::sync::oneshot::Sender<()>) {
    let mut settings = app.settings.clone();
    configure(&mut settings);
    let state = AppState::new(
        app.influx.clone(),
        app.store.clone(),
        Arc::new(app.clock.clone()),
        &settings,
    );
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(ohlcd::server::serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    (url, state, tx)
}

fn trade(symbol: &str, time: i64, price: f64, amount: f64, id: i64) -> NewTrade {
    NewTrade {
        symbol: symbol.parse().unwrap(),
        side: if id % 2 == 0 {
            ohlcd::candle::Side::Buy
        } else {
            ohlcd::candle::Side::Sell
        },
        price,
        amount,
        time_ms: time / 1_000_000,
        id,
    }
}

fn trade_json(t: &NewTrade) -> String {
    json!({"symbol": t.symbol, "price": t.price, "amount": t.amount, "side": t.side.as_str(),
           "timestamp": t.time_ms, "id": t.id})
    .to_string()
}

/// The naive bar of the window `[start, start + len)` from the raw trades.
async fn naive_bar(app: &TestApp, symbol: &str, start: i64, len: i64) -> Candle {
    let bars = app
        .expected_by(symbol, move |t| t.div_euclid(len) * len)
        .await;
    *bars
        .iter()
        .find(|c| c.start == start)
        .expect("a naive bar in that window")
}

async fn history(url: &str, symbol: &str, res: &str, from: i64, to: i64) -> Vec<Candle> {
    let (status, body) = crate::http::get(&format!(
        "{url}/udf/history?symbol={symbol}&resolution={res}&from={}&to={}",
        from / NANOS_PER_SEC,
        to / NANOS_PER_SEC
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let n = body["t"].as_array().map_or(0, Vec::len);
    (0..n)
        .map(|i| Candle {
            start: body["t"][i].as_i64().unwrap() * NANOS_PER_SEC,
            open: body["o"][i].as_f64().unwrap(),
            high: body["h"][i].as_f64().unwrap(),
            low: body["l"][i].as_f64().unwrap(),
            close: body["c"][i].as_f64().unwrap(),
            volume: body["v"][i].as_f64().unwrap(),
            quote_volume: 0.0,
            trades: 0,
            buy_volume: 0.0,
        })
        .collect()
}

/// The fields `/udf/history` carries.
fn ohlcv(c: &Candle) -> (i64, f64, f64, f64, f64, f64) {
    (c.start, c.open, c.high, c.low, c.close, c.volume)
}

#[tokio::test]
async fn a_posted_trade_reaches_subscribers_with_the_bar_recomputed_at_each_resolution() {
    let app = TestApp::spawn().await;
    let m0 = t("2024-01-02T10:03:00Z");
    app.write(&[
        trade("BTCUSD", m0 - 5 * MINUTE, 100.0, 1.0, 1),
        trade("BTCUSD", m0 + 5 * NANOS_PER_SEC, 101.0, 0.5, 2),
        trade("BTCUSD", m0 + 20 * NANOS_PER_SEC, 99.5, 0.25, 3),
    ])
    .await;
    app.clock.set(m0 + 30 * NANOS_PER_SEC);
    let (url, _state, _stop) = serve(&app, |_| {}).await;
    let mut streams = Vec::new();
    for (res, len) in [("1", MINUTE), ("3", 3 * MINUTE), ("1D", 1440 * MINUTE)] {
        let mut s = SseClient::open(
            &format!("{url}/api/live?symbol=BTCUSD&resolution={res}"),
            None,
        )
        .await;
        let first = s.next().await;
        let start = m0.div_euclid(len) * len;
        assert_candles_eq(
            &[first.bar()],
            &[naive_bar(&app, "BTCUSD", start, len).await],
            &format!("first bar at {res}"),
        );
        assert_eq!(
            first.data["closed"], false,
            "{res}: the open bar is not closed"
        );
        assert_eq!(
            first.id.as_deref(),
            Some((start / NANOS_PER_SEC).to_string().as_str())
        );
        streams.push((res, len, s));
    }
    // A trade posted now: every stream sends its bar with it, equal to the
    // naive bar of the raw trades read back.
    app.clock.set(m0 + 40 * NANOS_PER_SEC);
    let new = trade("BTCUSD", m0 + 35 * NANOS_PER_SEC, 103.25, 2.0, 4);
    let (status, body) = post(&format!("{url}/api/trades"), trade_json(&new)).await;
    let answered = Instant::now();
    assert_eq!(status, 200, "{body}");
    for (res, len, s) in &mut streams {
        let e = s.next().await;
        let latency = answered.elapsed();
        let start = m0.div_euclid(*len) * *len;
        let bar = e.bar();
        assert_candles_eq(
            &[bar],
            &[naive_bar(&app, "BTCUSD", start, *len).await],
            &format!("bar at {res} after the post"),
        );
        assert_eq!(bar.high, 103.25, "{res}: the posted trade is in the bar");
        // Measured, not asserted: timings belong to the bench.
        eprintln!("push latency at {res}: {latency:?} after the POST's answer");
    }
}

#[tokio::test]
async fn a_trade_written_straight_into_influxdb_reaches_the_daemons_subscribers_within_a_tick() {
    let app = TestApp::spawn().await;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    app.write(&[trade("ETHUSD", now - 2 * MINUTE, 2000.0, 1.0, 1)])
        .await;
    let port = free_port();
    let mut daemon = app
        .ohlcd()
        .arg("run")
        .env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        // Tick every second: the bound this test waits for.
        .env("OHLCD_ENGINE__CRON", "* * * * * *")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "daemon did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut s = SseClient::open(&format!("{url}/api/live?symbol=ETHUSD&resolution=1"), None).await;
    let first = s.next().await.bar();
    assert_eq!(first.start, (now - 2 * MINUTE).div_euclid(MINUTE) * MINUTE);
    // Behind the daemon's back: InfluxDB's own write path, not the API.
    let written = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let direct = trade("ETHUSD", written, 2010.5, 0.75, 2);
    app.write(std::slice::from_ref(&direct)).await;
    let start = written.div_euclid(MINUTE) * MINUTE;
    let events = s.until(|b| b.start == start).await;
    let bar = events.last().unwrap().bar();
    assert_candles_eq(
        &[bar],
        &[naive_bar(&app, "ETHUSD", start, MINUTE).await],
        "bar with the trade written into InfluxDB",
    );
    assert_eq!(bar.close, 2010.5);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_resumes_without_gaps_or_duplicates() {
    let app = TestApp::spawn().await;
    let m0 = t("2024-01-02T10:00:00Z");
    app.write(&[
        trade("BTCUSD", m0 - 3 * MINUTE, 100.0, 1.0, 1),
        trade("BTCUSD", m0 + 10 * NANOS_PER_SEC, 101.0, 1.0, 2),
    ])
    .await;
    app.clock.set(m0 + 20 * NANOS_PER_SEC);
    let (url, state, _stop) = serve(&app, |_| {}).await;
    let live = format!("{url}/api/live?symbol=BTCUSD&resolution=1");
    let mut s = SseClient::open(&live, None).await;
    let first = s.next().await;
    assert_eq!(first.bar().start, m0);
    let last_id = first.id.clone().unwrap();
    drop(s);
    // While the client is away: more trades in its bar, two more minutes of
    // bars, and the engine materializes what has settled.
    app.write(&[
        trade("BTCUSD", m0 + 50 * NANOS_PER_SEC, 104.0, 2.0, 3),
        trade("BTCUSD", m0 + MINUTE + NANOS_PER_SEC, 98.0, 1.0, 4),
        trade("BTCUSD", m0 + 3 * MINUTE + 7 * NANOS_PER_SEC, 102.0, 0.5, 5),
        trade("BTCUSD", m0 + 3 * MINUTE + 9 * NANOS_PER_SEC, 103.0, 0.5, 6),
    ])
    .await;
    app.clock.set(m0 + 3 * MINUTE + 30 * NANOS_PER_SEC);
    let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // What `ohlcd run` hands on at each tick: the trades written straight
    // into InfluxDB above are read again (the cached open-bar trades are
    // dropped).
    ohlcd::app::App::on_tick(&state)();
    let mut s = SseClient::open(&live, Some(&last_id)).await;
    let expected = history(&url, "BTCUSD", "1", m0, m0 + 4 * MINUTE).await;
    assert_eq!(expected.len(), 3, "bars at m0, m0+1 and m0+3: {expected:?}");
    let mut resumed = Vec::new();
    for _ in 0..expected.len() {
        resumed.push(s.next().await.bar());
    }
    assert_eq!(
        resumed.iter().map(ohlcv).collect::<Vec<_>>(),
        expected.iter().map(ohlcv).collect::<Vec<_>>(),
        "resumed bars equal /udf/history from the last event on, each once"
    );
    for b in &resumed {
        assert_candles_eq(
            &[*b],
            &[naive_bar(&app, "BTCUSD", b.start, MINUTE).await],
            "resumed bar",
        );
    }
    // The next event is the next change, not a repeat of a resumed bar.
    let new = trade("BTCUSD", m0 + 3 * MINUTE + 25 * NANOS_PER_SEC, 99.0, 1.0, 7);
    let (status, _) = post(&format!("{url}/api/trades"), trade_json(&new)).await;
    assert_eq!(status, 200);
    let next = s.next().await;
    assert_eq!(next.bar().start, m0 + 3 * MINUTE);
    assert_eq!(next.bar().trades, 3);
    assert_eq!(next.bar().low, 99.0);
}

#[tokio::test]
async fn unknown_symbols_bad_parameters_and_too_many_streams_are_refused_before_streaming() {
    let app = TestApp::spawn().await;
    let m0 = t("2024-01-02T10:00:00Z");
    app.write(&[trade("BTCUSD", m0, 100.0, 1.0, 1)]).await;
    app.clock.set(m0 + 20 * NANOS_PER_SEC);
    let (url, state, _stop) = serve(&app, |s| s.server.max_streams = 1).await;
    let client = reqwest::Client::new();
    for (query, last_event_id, status, says) in [
        ("symbol=NOPE&resolution=1", None, 404, "unknown symbol"),
        ("symbol=BTCUSD&resolution=7X", None, 400, "resolution"),
        ("symbol=BTCUSD&resolution=0", None, 400, "resolution"),
        ("resolution=1", None, 400, "symbol"),
        ("symbol=BTC%20USD&resolution=1", None, 400, "symbol"),
        ("symbol=BTCUSD&resolution=1&since=soon", None, 400, "since"),
        (
            "symbol=BTCUSD&resolution=1",
            Some("not-an-id"),
            400,
            "Last-Event-ID",
        ),
    ] {
        let mut req = client.get(format!("{url}/api/live?{query}"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{query}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{query}"
        );
        let body: Value = resp.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(says), "{query}: {error}");
    }
    assert_eq!(
        state.push.open_streams(),
        0,
        "refused requests hold no stream"
    );
    // One stream allowed: the second is a 503 that says why.
    let live = format!("{url}/api/live?symbol=BTCUSD&resolution=5");
    let mut s = SseClient::open(&live, None).await;
    s.next().await;
    assert_eq!(state.push.open_streams(), 1);
    assert_eq!(state.push.feeds(), 1);
    let resp = client.get(&live).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("max_streams"));
    // A client that goes away gives its stream and its feed back.
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(30);
    while state.push.open_streams() > 0 || state.push.feeds() > 0 {
        assert!(Instant::now() < deadline, "the stream was not dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = SseClient::open(&live, None).await;
    assert_eq!(s.next().await.bar().start, m0);
}

#[tokio::test]
async fn reading_a_stream_needs_the_read_token_when_one_is_set() {
    let app = TestApp::spawn().await;
    let m0 = t("2024-01-02T10:00:00Z");
    app.write(&[trade("BTCUSD", m0, 100.0, 1.0, 1)]).await;
    app.clock.set(m0 + 20 * NANOS_PER_SEC);
    let token = "read-token-0123456789abcdef";
    let (url, state, _stop) = serve(&app, |s| {
        s.server.read_token = ohlcd::config::Secret::new(token)
    })
    .await;
    let live = format!("{url}/api/live?symbol=BTCUSD&resolution=1");
    let client = reqwest::Client::new();
    let resp = client.get(&live).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .get(&live)
        .bearer_auth("wrong-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(state.push.open_streams(), 0);
    let resp = client.get(&live).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(state.push.open_streams(), 1);
}

/// The bars carried by the complete `data:` lines of raw `/api/live`
/// response bytes (chunked: the chunk-size lines in between are not `data:`
/// lines).
fn bars_in(raw: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(raw);
    text[..text.rfind('\n').map_or(0, |end| end + 1)]
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str::<Value>(d.trim()).unwrap())
        .filter(|v| v.get("trades").is_some())
        .collect()
}

#[tokio::test]
async fn a_live_client_that_stops_reading_is_sent_the_newest_bar_not_every_one_it_missed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let m0 = t("2024-01-02T10:00:00Z");
    app.write(&[trade("BTCUSD", m0, 100.0, 1.0, 1)]).await;
    app.clock.set(m0 + 50 * NANOS_PER_SEC);
    // Small socket buffers on both sides (accepted sockets inherit the
    // listener's), so a client that stops reading holds the server up after
    // a few kilobytes rather than megabytes of kernel buffers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (url, _state, _stop) = serve_on(&app, socket.listen(1024).unwrap(), |_| {}).await;
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    slow.write_all(
        b"GET /api/live?symbol=BTCUSD&resolution=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Accept: text/event-stream\r\n\r\n",
    )
    .await
    .unwrap();
    // Read up to the first bar, then stop reading.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while bars_in(&raw).is_empty() {
        let n = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut chunk))
            .await
            .expect("no first bar within 20 s")
            .unwrap();
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..n]);
    }
    assert!(
        raw.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let first = bars_in(&raw).len();
    // A reading client shows when each update has been computed. Each post
    // changes the bar once: as many updates as posts, several times what the
    // socket buffers and hyper's own hold.
    let mut fast =
        SseClient::open(&format!("{url}/api/live?symbol=BTCUSD&resolution=1"), None).await;
    fast.next().await;
    let posts = 300;
    for i in 0..posts {
        let tr = trade(
            "BTCUSD",
            m0 + (i + 1) * 100_000_000,
            100.0 + i as f64,
            1.0,
            i + 2,
        );
        let (status, _) = post(&format!("{url}/api/trades"), trade_json(&tr)).await;
        assert_eq!(status, 200);
        fast.until(|b| b.trades == i + 2).await;
    }
    // Reading again: what was buffered before the server was held up, then
    // the newest bar, not a queue of every value in between.
    let mut later = Vec::new();
    loop {
        let bars = bars_in(&raw);
        if bars.last().is_some_and(|b| b["trades"] == posts + 1) {
            later = bars[first..].to_vec();
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("the newest bar did not come within 20 s: {later:?}"))
            .unwrap();
        assert!(n > 0, "stream closed");
        raw.extend_from_slice(&chunk[..n]);
    }
    let expected = naive_bar(&app, "BTCUSD", m0, MINUTE).await;
    assert_eq!(expected.trades, posts + 1);
    let newest = later.last().unwrap();
    assert_eq!(newest["close"].as_f64(), Some(expected.close), "{newest}");
    assert_eq!(newest["volume"].as_f64(), Some(expected.volume), "{newest}");
    println!(
        "a live client that stopped reading for {posts} updates received {} of them",
        later.len()
    );
    assert!(
        later.len() < posts as usize / 2,
        "a client that stopped reading was sent {} of {posts} updates: they were queued for it",
        later.len()
    );
}

/// Seconds bars and zoned bars go live too: at `1S`, `5S` and `30S`, and at
/// `240` and `1D` in the symbol's zone (Asia/Kolkata, +05:30 all year since
/// 1945, so its windows are plain arithmetic here) or in the `tz=` asked
/// for; each stream's bars equal the naive bars of the raw trades in those
/// windows, stamped with the instant each starts, before and after a post.
#[tokio::test]
async fn seconds_bars_and_bars_in_a_zone_are_streamed_in_their_own_windows() {
    const KOLKATA: i64 = (5 * 3600 + 1800) * NANOS_PER_SEC;
    let app = TestApp::spawn().await;
    let m0 = t("2024-01-02T10:03:00Z");
    app.write(&[
        // In Kolkata's day and 4h bar, not in UTC's.
        trade("INRBTC", t("2024-01-01T20:00:00Z"), 98.0, 1.0, 1),
        trade("INRBTC", m0 - 3 * 60 * MINUTE, 100.5, 0.5, 2),
        trade(
            "INRBTC",
            m0 + 3 * NANOS_PER_SEC + 200_000_000,
            101.0,
            0.5,
            3,
        ),
        trade("INRBTC", m0 + 7 * NANOS_PER_SEC, 99.5, 0.25, 4),
        trade("INRBTC", m0 + 21 * NANOS_PER_SEC, 100.25, 0.75, 5),
    ])
    .await;
    app.clock.set(m0 + 25 * NANOS_PER_SEC);
    // Closed minutes come from stored candles, the rest from raw trades.
    let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let (url, _state, _stop) = serve(&app, |s| {
        s.datafeed.symbol_timezones =
            ohlcd::config::SymbolZones([("INRBTC".to_string(), "Asia/Kolkata".to_string())].into())
    })
    .await;
    // The window of `time` of `len` counted from midnight at `offset` from UTC.
    let window = |time: i64, len: i64, offset: i64| (time + offset).div_euclid(len) * len - offset;
    let day = 1440 * MINUTE;
    let cases = [
        ("1S", "", NANOS_PER_SEC, 0),
        ("5S", "", 5 * NANOS_PER_SEC, 0),
        ("30S", "", 30 * NANOS_PER_SEC, 0),
        ("240", "", 240 * MINUTE, KOLKATA),
        ("1D", "", day, KOLKATA),
        ("240", "&tz=Etc/UTC", 240 * MINUTE, 0),
        ("1D", "&tz=Etc/UTC", day, 0),
    ];
    let mut streams = Vec::new();
    for (res, tz, len, offset) in cases {
        let what = format!("{res}{tz}");
        let mut s = SseClient::open(
            &format!("{url}/api/live?symbol=INRBTC&resolution={res}{tz}"),
            None,
        )
        .await;
        // The newest bar with trades comes first.
        let first = s.next().await.bar();
        let naive = app
            .expected_by("INRBTC", move |x| window(x, len, offset))
            .await;
        assert_candles_eq(
            &[first],
            &[*naive.last().unwrap()],
            &format!("first bar at {what}"),
        );
        streams.push((what, len, offset, s));
    }
    // The open second's trade: every stream's bar holds it.
    app.clock.set(m0 + 26 * NANOS_PER_SEC + 500_000_000);
    let new = trade("INRBTC", m0 + 26 * NANOS_PER_SEC, 104.5, 2.0, 6);
    let (status, body) = post(&format!("{url}/api/trades"), trade_json(&new)).await;
    assert_eq!(status, 200, "{body}");
    for (what, len, offset, s) in &mut streams {
        let (len, offset) = (*len, *offset);
        let start = window(new.time_ms * 1_000_000, len, offset);
        let events = s.until(|b| b.start == start && b.high == 104.5).await;
        let naive = app
            .expected_by("INRBTC", move |x| window(x, len, offset))
            .await;
        let want = *naive.iter().find(|c| c.start == start).unwrap();
        assert_candles_eq(
            &[events.last().unwrap().bar()],
            &[want],
            &format!("bar at {what} after the post"),
        );
    }
}

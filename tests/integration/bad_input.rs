//! Hostile requests against a running server over a real influxd that holds
//! trades and candles: every malformed request gets a 4xx with a JSON `error`,
//! nothing is written or dropped, and the server stays up.

use std::time::Duration;

use bytes::Bytes;
use ohlcd::candle::{NANOS_PER_SEC, Resolution};
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::NewTrade;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::TestApp;

const DATA_FROM: &str = "2024-01-01T00:00:00Z";
const DATA_TO: &str = "2024-01-03T00:00:00Z";
/// A valid trade time inside the data, Unix ms.
const T_MS: i64 = 1_704_196_800_000;

/// A [`TestApp`] with a few hundred trades, the engine run once, and the
/// HTTP server.
struct App {
    app: TestApp,
    url: String,
    _stop: crate::helpers::Served,
}

fn nanos(rfc3339: &str) -> i64 {
    ohlcd::times::from_rfc3339(rfc3339).unwrap()
}

/// The trades stored before the corpus is sent.
fn data_spec() -> GenerateSpec {
    GenerateSpec {
        symbols: vec!["BTCUSD".parse().unwrap(), "ETHUSD".parse().unwrap()],
        from: nanos(DATA_FROM),
        to: nanos(DATA_TO),
        trades: 400,
        seed: 7,
    }
}

/// Requests in the corpus: a change in either list changes it on purpose.
const CORPUS_LEN: usize = 592;

impl App {
    async fn start() -> App {
        let app = TestApp::spawn().await;
        let trades: Vec<NewTrade> = Generator::new(&data_spec()).collect();
        app.write(&trades).await;
        app.clock.set(nanos(DATA_TO) + 3600 * NANOS_PER_SEC);
        let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let (url, stop) = app.serve().await;
        App {
            app,
            url,
            _stop: stop,
        }
    }

    /// Everything a request could damage: every stored trade and candle (values,
    /// not just counts), the measurements and symbols that exist, the progress
    /// table, its run history and the dirty ranges.
    async fn snapshot(&self) -> Vec<String> {
        let mut out = Vec::new();
        let measurements = std::iter::once(("trades", "price"))
            .chain(Resolution::ALL.iter().map(|r| (r.measurement(), "open")));
        for (m, field) in measurements {
            let v = self
                .app
                .influx
                .query_json(&format!("SELECT count(\"{field}\") FROM \"{m}\""))
                .await
                .unwrap();
            let n = v["series"][0]["values"][0][1].as_i64().unwrap_or(0);
            out.push(format!("{m}: {n} points"));
            let all = self
                .app
                .influx
                .query_json(&format!("SELECT * FROM \"{m}\" GROUP BY *"))
                .await
                .unwrap();
            out.push(format!("{m} points: {}", all["series"]));
        }
        for q in [
            "SHOW MEASUREMENTS",
            "SHOW TAG VALUES FROM \"trades\" WITH KEY = \"symbol\"",
        ] {
            let v = self.app.influx.query_json(q).await.unwrap();
            out.push(format!("{q}: {}", v["series"]));
        }
        for t in self.app.store.tasks().await.unwrap() {
            let dirty = self.app.store.dirty(&t.symbol, t.resolution).await.unwrap();
            let runs = self
                .app
                .store
                .runs(&t.symbol, t.resolution, 100_000)
                .await
                .unwrap();
            out.push(format!("{t:?}, dirty {dirty:?}, runs {runs:?}"));
        }
        out
    }
}

/// The entries of two snapshots that differ, each shown around where it first
/// differs (the dumps of stored points are long).
fn snapshot_diff(before: &[String], after: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    for (b, a) in before.iter().zip(after).filter(|(b, a)| b != a) {
        let (b, a): (Vec<char>, Vec<char>) = (b.chars().collect(), a.chars().collect());
        let same = b.iter().zip(&a).take_while(|(x, y)| x == y).count();
        let around = |s: &[char]| -> String {
            let from = same.saturating_sub(120);
            s[from..(same + 200).min(s.len())].iter().collect()
        };
        let head: String = b.iter().take_while(|c| **c != ':').collect();
        out.push(format!(
            "  {head}: …{}…\n  {head}: …{}… (after)",
            around(&b),
            around(&a)
        ));
    }
    if before.len() != after.len() {
        out.push(format!(
            "  {} entries before, {} after",
            before.len(),
            after.len()
        ));
    }
    out.join("\n")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Percent-encodes everything but unreserved characters.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A query string from pairs, each value percent-encoded.
fn qs(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

enum Body {
    None,
    Bytes(Vec<u8>),
    /// An empty body with an explicit `Content-Length: 0` (reqwest sends no
    /// length at all for an empty `Bytes` body).
    EmptyWithLength,
    /// Chunked transfer encoding, no Content-Length.
    Chunked(Vec<u8>),
    /// `Content-Length: n` with only the first 64 KiB sent, over a raw socket:
    /// the server may answer (and close) before the client could write it all.
    Oversize(usize),
}

struct Req {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Body,
    status: u16,
}

fn get(path: impl Into<String>, status: u16) -> Req {
    Req {
        method: Method::GET,
        path: path.into(),
        content_type: None,
        body: Body::None,
        status,
    }
}

fn post_json(body: impl Into<Vec<u8>>, status: u16) -> Req {
    Req {
        method: Method::POST,
        path: "/api/trades".into(),
        content_type: Some("application/json"),
        body: Body::Bytes(body.into()),
        status,
    }
}

/// The base trade's fields as raw JSON text, in order.
fn base_fields() -> Vec<(&'static str, String)> {
    vec![
        ("symbol", "\"BTCUSD\"".into()),
        ("price", "42000.5".into()),
        ("amount", "0.25".into()),
        ("side", "\"buy\"".into()),
        ("timestamp", T_MS.to_string()),
        ("id", "900001".into()),
    ]
}

fn object(fields: &[(&str, String)]) -> String {
    let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// The base trade with `field` set to the raw JSON `value` (None: removed).
fn trade_with(field: &str, value: Option<&str>) -> String {
    let mut fields = base_fields();
    match value {
        Some(v) => fields.iter_mut().find(|(k, _)| *k == field).unwrap().1 = v.to_string(),
        None => fields.retain(|(k, _)| *k != field),
    }
    object(&fields)
}

/// Text meant to escape an InfluxQL literal or identifier, or a number parser.
const INJECTIONS: &[&str] = &[
    "BTCUSD' OR 1=1 --",
    "\"; DROP MEASUREMENT trades",
    "\\'",
    "BTCUSD'; DROP DATABASE test; --",
    "' OR symbol =~ /.*/ --",
    "1; DROP MEASUREMENT ohlc_1m",
    "BTCUSD\" OR \"\"=\"",
    "1 OR 1=1",
    "1)/**/OR/**/(1=1",
    "BTCUSD\\' OR time > 0 --",
];

/// Symbols that must never reach a tag, a query or a log line.
const BAD_SYMBOLS: &[&str] = &[
    "BTC USD",
    "BTC,USD",
    "BTC=USD",
    "BTC\nUSD",
    "BTCUSD\r\n",
    "BTC\tUSD",
    "BTC\"USD",
    "BTC'USD",
    "BTC\\USD",
    "BTCUSD\0",
    "BTC\u{200b}USD",
    "\u{202e}DSUCTB",
    "\u{feff}BTCUSD",
    "БТК",
    "ＢＴＣＵＳＤ",
    "🚀",
    "BTCUSD🚀",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "trades,side=buy price=1 1",
];

fn post_corpus() -> Vec<Req> {
    let mut c = Vec::new();
    // Wrong JSON types for every field.
    let wrong_types: &[(&str, &[&str])] = &[
        (
            "symbol",
            &["42", "true", "null", "[\"BTCUSD\"]", "{\"s\":\"BTCUSD\"}"],
        ),
        (
            "price",
            &["\"42000.5\"", "true", "null", "[1]", "{\"v\":1}"],
        ),
        ("amount", &["\"0.25\"", "false", "null", "[0.25]", "{}"]),
        ("side", &["1", "true", "null", "[\"buy\"]", "{}"]),
        (
            "timestamp",
            &["true", "null", "[1704196800000]", "{}", "1704196800000.5"],
        ),
        ("id", &["\"1\"", "true", "[1]", "{}", "1.5"]),
    ];
    for (field, values) in wrong_types {
        for v in *values {
            c.push(post_json(trade_with(field, Some(v)), 400));
        }
    }
    // NaN and infinities, bare (not JSON) and as strings (not numbers).
    for field in ["price", "amount", "timestamp", "id"] {
        for v in [
            "NaN",
            "Infinity",
            "-Infinity",
            "\"NaN\"",
            "\"Infinity\"",
            "\"-Infinity\"",
        ] {
            c.push(post_json(trade_with(field, Some(v)), 400));
        }
    }
    // Zero, negative and out-of-range numbers.
    for (field, v) in [
        ("price", "0"),
        ("price", "-0"),
        ("price", "-0.0"),
        ("price", "-1"),
        ("price", "-1e-300"),
        ("price", "-1e308"),
        ("price", "1e309"),
        ("price", "-9223372036854775809"),
        ("amount", "0"),
        ("amount", "0.0"),
        ("amount", "-5"),
        ("amount", "1e309"),
        ("amount", "-18446744073709551616"),
        ("timestamp", "1e308"),
        ("timestamp", "1e309"),
        ("timestamp", "18446744073709551616"),
        ("timestamp", "-9223372036854775809"),
        ("timestamp", "9223372036854775807"),
        ("timestamp", "0"),
        ("timestamp", "-1"),
        ("timestamp", "946684799999"),
        ("timestamp", "7258118400001"),
        ("timestamp", "1704243600000000"),
        ("id", "-1"),
        ("id", "-9223372036854775808"),
        ("id", "-9223372036854775809"),
        ("id", "9223372036854775808"),
        ("id", "18446744073709551615"),
        ("id", "18446744073709551616"),
        ("id", "1e19"),
        ("id", "1e308"),
    ] {
        c.push(post_json(trade_with(field, Some(v)), 400));
    }
    // Bad timestamps as strings.
    for v in [
        "yesterday",
        "",
        "2024-01-02",
        "2024-01-02T12:00:00",
        "1999-12-31T23:59:59Z",
        "2200-01-01T00:00:00.001Z",
        "2099-01-01T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-01-02T12:00:00Z' OR 1=1",
        "1704196800000",
    ] {
        c.push(post_json(
            trade_with("timestamp", Some(&json!(v).to_string())),
            400,
        ));
    }
    // Bad sides.
    for v in ["BUY", " buy", "sell\n", "b", "", "buy' OR 1=1 --"] {
        c.push(post_json(
            trade_with("side", Some(&json!(v).to_string())),
            400,
        ));
    }
    // Bad symbols, injections included; JSON escapes for NUL and lone surrogates.
    for s in BAD_SYMBOLS.iter().chain(INJECTIONS).chain(&[""]) {
        c.push(post_json(
            trade_with("symbol", Some(&json!(s).to_string())),
            400,
        ));
    }
    c.push(post_json(
        trade_with("symbol", Some("\"BTC\\u0000USD\"")),
        400,
    ));
    c.push(post_json(
        trade_with("symbol", Some("\"BTC\\ud800USD\"")),
        400,
    ));
    c.push(post_json(
        trade_with("symbol", Some(&json!("A".repeat(10_000)).to_string())),
        400,
    ));
    // Invalid UTF-8 inside a string and before the body.
    let mut raw = trade_with("symbol", Some("\"BTC_USD\"")).into_bytes();
    let at = raw.iter().position(|b| *b == b'_').unwrap();
    raw[at] = 0xff;
    c.push(post_json(raw, 400));
    let mut raw = vec![0xff, 0xfe];
    raw.extend(trade_with("id", Some("900002")).into_bytes());
    c.push(post_json(raw, 400));
    // Missing and unknown fields.
    for field in ["symbol", "price", "amount", "side", "timestamp"] {
        c.push(post_json(trade_with(field, None), 400));
    }
    c.push(post_json("{}", 400));
    for extra in [
        "\"px\":1",
        "\"Symbol\":\"BTCUSD\"",
        "\"__proto__\":{}",
        "\"\":0",
    ] {
        let t = trade_with("id", Some("900003"));
        c.push(post_json(format!("{},{extra}}}", &t[..t.len() - 1]), 400));
    }
    // A duplicate key whose last value is bad.
    let t = trade_with("id", Some("900004"));
    c.push(post_json(
        format!("{},\"symbol\":\"x y\"}}", &t[..t.len() - 1]),
        400,
    ));
    // All or nothing: a valid trade of a new symbol next to a bad one.
    let fresh = object(&[
        ("symbol", "\"NEWSYM\"".into()),
        ("price", "1".into()),
        ("amount", "1".into()),
        ("side", "\"sell\"".into()),
        ("timestamp", T_MS.to_string()),
        ("id", "1".into()),
    ]);
    c.push(post_json(
        format!("[{fresh},{}]", trade_with("price", Some("-1"))),
        400,
    ));
    c.push(post_json(format!("[{fresh},{fresh},null]"), 400));
    c.push(post_json(format!("[{fresh},[{fresh}]]"), 400));
    // ... and one that would change a stored trade in place (its symbol, side,
    // time and id, another price): no count changes, only the stored values.
    let stored = Generator::new(&data_spec()).next().unwrap();
    let changed = object(&[
        ("symbol", json!(stored.symbol).to_string()),
        ("price", json!(stored.price * 2.0).to_string()),
        ("amount", json!(stored.amount).to_string()),
        ("side", json!(stored.side.as_str()).to_string()),
        ("timestamp", stored.time_ms.to_string()),
        ("id", stored.id.to_string()),
    ]);
    c.push(post_json(
        format!("[{changed},{}]", trade_with("price", Some("-1"))),
        400,
    ));
    // Truncated, empty, non-object and trailing-garbage bodies.
    let whole = trade_with("id", Some("900005"));
    for cut in [1, 10, whole.len() / 2, whole.len() - 1] {
        c.push(post_json(whole[..cut].to_string(), 400));
    }
    c.push(post_json(format!("[{whole}"), 400));
    c.push(post_json(format!("[{whole},"), 400));
    c.push(Req {
        body: Body::EmptyWithLength,
        ..post_json("", 400)
    });
    // No body and no length at all.
    c.push(post_json("", 411));
    for body in [
        " \n\t",
        "null",
        "true",
        "42",
        "\"BTCUSD\"",
        "[]",
        "[[]]",
        "[null]",
        "[1,2]",
        "\"",
        "{\"symbol\"}",
        "{'symbol':'BTCUSD'}",
        "undefined",
    ] {
        c.push(post_json(body, 400));
    }
    c.push(post_json(format!("{whole}x"), 400));
    c.push(post_json(format!("{whole}{whole}"), 400));
    c.push(post_json(format!("{whole}\0"), 400));
    c.push(post_json(
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        400,
    ));
    c.push(post_json(
        trade_with(
            "price",
            Some(&format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000))),
        ),
        400,
    ));
    // Wrong content types with bodies that are not JSON.
    for (ct, body) in [
        (
            "application/x-www-form-urlencoded",
            format!("symbol=BTCUSD&price=1&amount=1&side=buy&timestamp={T_MS}"),
        ),
        (
            "multipart/form-data; boundary=XyZ",
            "--XyZ\r\nContent-Disposition: form-data; name=\"symbol\"\r\n\r\nBTCUSD\r\n--XyZ--\r\n"
                .into(),
        ),
        (
            "application/xml",
            "<trade><symbol>BTCUSD</symbol></trade>".into(),
        ),
        ("text/plain", "BTCUSD,42000.5,0.25,buy,1704196800000".into()),
    ] {
        // Anything but JSON is refused before its body is read.
        c.push(Req {
            content_type: Some(ct),
            ..post_json(body, 415)
        });
    }
    let utf16: Vec<u8> = whole.encode_utf16().flat_map(u16::to_le_bytes).collect();
    c.push(Req {
        content_type: Some("application/json; charset=utf-16le"),
        ..post_json(utf16, 400)
    });
    // Too big: more than 16 MiB, more than 100,000 trades, no Content-Length.
    c.push(Req {
        body: Body::Oversize(16 * 1024 * 1024 + 1),
        ..post_json("", 413)
    });
    // 1 TiB, and the largest length hyper lets through to the application
    // (above u64::MAX - 2 hyper itself answers 431 with an empty body).
    for len in [1usize << 40, usize::MAX - 2] {
        c.push(Req {
            body: Body::Oversize(len),
            ..post_json("", 413)
        });
    }
    c.push(post_json(
        format!("[{}]", vec![fresh.as_str(); 100_001].join(",")),
        413,
    ));
    c.push(Req {
        body: Body::Chunked(fresh.clone().into_bytes()),
        ..post_json("", 411)
    });
    // Wrong methods.
    for m in [Method::PUT, Method::DELETE, Method::PATCH] {
        c.push(Req {
            method: m,
            ..post_json(fresh.clone(), 405)
        });
    }
    for path in ["/udf/history", "/api/ohlc", "/udf/search", "/healthz"] {
        c.push(Req {
            path: path.into(),
            ..post_json(fresh.clone(), 405)
        });
    }
    c
}

/// The valid parameters of every GET endpoint that takes any.
fn endpoints() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "/udf/history",
            vec![
                ("symbol", "BTCUSD"),
                ("resolution", "60"),
                ("from", "1704067200"),
                ("to", "1704240000"),
                ("countback", "10"),
            ],
        ),
        ("/udf/symbols", vec![("symbol", "BTCUSD")]),
        ("/udf/search", vec![("query", "BTC"), ("limit", "10")]),
        (
            "/api/ohlc",
            vec![
                ("symbol", "BTCUSD"),
                ("resolution", "60"),
                ("from", "1704067200"),
                ("to", "1704240000"),
            ],
        ),
        (
            "/api/trades",
            vec![
                ("symbol", "BTCUSD"),
                ("from", "1704067200"),
                ("to", "1704240000"),
                ("limit", "10"),
            ],
        ),
    ]
}

/// `path` with the endpoint's valid parameters, `name` replaced by `value`.
fn with_param(path: &str, valid: &[(&str, &str)], name: &str, value: &str) -> String {
    let pairs: Vec<(&str, &str)> = valid
        .iter()
        .map(|(k, v)| if *k == name { (*k, value) } else { (*k, *v) })
        .collect();
    format!("{path}?{}", qs(&pairs))
}

fn get_corpus() -> Vec<Req> {
    let mut c = Vec::new();
    // Injection text in every parameter of every endpoint (except the free-text
    // search query, checked separately).
    for (path, valid) in endpoints() {
        for (name, _) in &valid {
            if *name == "query" {
                continue;
            }
            for inj in INJECTIONS {
                c.push(get(with_param(path, &valid, name, inj), 400));
            }
        }
    }
    // Hostile symbols on every endpoint that takes one, with and without the
    // exchange prefix.
    for (path, valid) in endpoints() {
        if !valid.iter().any(|(k, _)| *k == "symbol") {
            continue;
        }
        for s in BAD_SYMBOLS {
            c.push(get(with_param(path, &valid, "symbol", s), 400));
        }
        c.push(get(
            with_param(path, &valid, "symbol", "ohlcd:BTC'USD"),
            400,
        ));
        c.push(get(with_param(path, &valid, "symbol", ""), 400));
        // Well-formed but unknown (symbols are case-sensitive); the UDF
        // endpoints take the chart's EXCHANGE:SYMBOL.
        for s in ["NOPE", "btcusd"] {
            c.push(get(with_param(path, &valid, "symbol", s), 404));
        }
        let udf = if path.starts_with("/udf/") { 404 } else { 400 };
        c.push(get(with_param(path, &valid, "symbol", "ohlcd:NOPE"), udf));
        // No symbol holds ':', so this one can never exist.
        c.push(get(with_param(path, &valid, "symbol", "BTCUSD:"), 400));
    }
    // Missing parameters.
    for p in [
        "/udf/history?resolution=60&from=1704067200&to=1704240000",
        "/udf/history?symbol=BTCUSD&from=1704067200&to=1704240000",
        "/udf/history?symbol=BTCUSD&resolution=60&to=1704240000",
        "/udf/history",
        "/udf/symbols",
        "/api/ohlc?resolution=60&from=1704067200&to=1704240000",
        "/api/ohlc?symbol=BTCUSD&from=1704067200&to=1704240000",
        "/api/ohlc?symbol=BTCUSD&resolution=60&to=1704240000",
        "/api/ohlc",
        "/api/trades?from=1704067200",
        "/api/trades",
    ] {
        c.push(get(p, 400));
    }
    // Unknown resolutions.
    for r in [
        "0",
        "1441",
        "1d",
        "1H",
        "1h",
        "-5",
        "5.0",
        "D1",
        "1DD",
        "13M",
        "53W",
        "366D",
        "0D",
        "0M",
        "99999999999",
        "4294967297",
        "１",
        "٣",
        "+1",
        " 1",
        "1 ",
        "M1",
        "60s",
        "1Y",
    ] {
        for (path, valid) in endpoints() {
            if valid.iter().any(|(k, _)| *k == "resolution") {
                c.push(get(with_param(path, &valid, "resolution", r), 400));
            }
        }
    }
    // Inverted, empty and absurd ranges and counts.
    for (from, to) in [
        ("1704240000", "1704067200"),
        ("1704067200", "1704067200"),
        ("-5", "-1"),
        ("0", "0"),
        ("7258118401", "7258118402"),
        ("99999999999999999999", "1704240000"),
        ("1704067200", "99999999999999999999"),
        ("1e9", "1704240000"),
        ("0x10", "1704240000"),
        ("1.5", "1704240000"),
        ("1704067200", "NaN"),
        ("1704067200", "Infinity"),
    ] {
        c.push(get(
            format!(
                "/udf/history?{}",
                qs(&[
                    ("symbol", "BTCUSD"),
                    ("resolution", "60"),
                    ("from", from),
                    ("to", to)
                ])
            ),
            400,
        ));
        c.push(get(
            format!(
                "/api/ohlc?{}",
                qs(&[
                    ("symbol", "BTCUSD"),
                    ("resolution", "60"),
                    ("from", from),
                    ("to", to)
                ])
            ),
            400,
        ));
        c.push(get(
            format!(
                "/api/trades?{}",
                qs(&[("symbol", "BTCUSD"), ("from", from), ("to", to)])
            ),
            400,
        ));
    }
    for p in [
        // More bars than one answer may hold (README: "refuses ranges over
        // datafeed.max_bars bars (20000) with a 400"): 20,001 minutes, 20,001 hours.
        "/udf/history?symbol=BTCUSD&resolution=1&from=1704067200&to=1705267260",
        "/udf/history?symbol=BTCUSD&resolution=60&from=1704067200&to=1776070800",
        "/udf/history?symbol=BTCUSD&resolution=1&from=0&to=7258118400",
        "/udf/history?symbol=BTCUSD&resolution=1&from=946684800&to=1704240000",
        "/udf/history?symbol=BTCUSD&resolution=1&to=1704240000&countback=0",
        "/udf/history?symbol=BTCUSD&resolution=1&to=1704240000&countback=-1",
        "/udf/history?symbol=BTCUSD&resolution=1&to=1704240000&countback=20001",
        "/udf/history?symbol=BTCUSD&resolution=1&to=1704240000&countback=18446744073709551616",
        "/udf/history?symbol=BTCUSD&resolution=1&to=1704240000&countback=1.5",
        "/api/trades?symbol=BTCUSD&limit=0",
        "/api/trades?symbol=BTCUSD&limit=-1",
        "/api/trades?symbol=BTCUSD&limit=10001",
        "/api/trades?symbol=BTCUSD&limit=1e3",
        "/api/trades?symbol=BTCUSD&limit=18446744073709551616",
        "/udf/search?limit=0",
        "/udf/search?limit=1001",
        "/udf/search?limit=-1",
        "/udf/search?limit=ten",
    ] {
        c.push(get(p, 400));
    }
    // Percent-encoding tricks (raw, not re-encoded).
    for p in [
        "/api/trades?symbol=BTC%2527USD",
        "/api/trades?symbol=BTC%27USD",
        "/api/trades?symbol=BTC+USD",
        "/api/trades?symbol=BTCUSD%00",
        "/api/trades?symbol=BTCUSD%0A",
        "/api/trades?symbol=%FF%FE",
        "/api/trades?symbol=%C0%A7",
        "/api/trades?symbol=%",
        "/api/trades?symbol=%zz",
        "/api/trades?symbol=%E2%80%8BBTCUSD",
        "/api/trades?symbol=BTCUSD;DROP",
        "/api/trades?symbol=BTCUSD&limit=%31%30%30%30%31",
        "/api/trades?symbol=BTCUSD&limit=1%2E5",
        "/api/trades?symbol=BTCUSD&from=%2D%2D1",
        "/udf/history?symbol=BTCUSD&resolution=60&from=1704067200%26to%3D1704240000",
        "/udf/history?%73ymbol=BTC%27&resolution=60&from=1704067200&to=1704240000",
        "/udf/history?symbol=BTCUSD&resolution=60%00&from=1704067200&to=1704240000",
        "/udf/history?symbol=BTCUSD&resolution=%31%44%44&from=1704067200&to=1704240000",
        "/udf/history?symbol=BTCUSD%26resolution%3D60&from=1704067200&to=1704240000",
        "/udf/symbols?symbol=ohlcd%3ABTC%22USD",
        "/api/ohlc?symbol=BTCUSD&resolution=60&from=%2D1&to=%2D1",
    ] {
        c.push(get(p, 400));
    }
    // Repeated parameters, every value bad.
    for p in [
        "/api/trades?symbol=BTC%27&symbol=ETH%22",
        "/api/trades?symbol=BTCUSD&limit=0&limit=-1",
        "/udf/history?symbol=BTCUSD&resolution=7X&resolution=0&from=1704067200&to=1704240000",
        "/udf/history?symbol=BTCUSD&resolution=60&from=abc&from=def&to=1704240000",
        "/udf/history?symbol=BTCUSD&resolution=60&to=1704240000&countback=0&countback=x",
        "/api/ohlc?symbol=BTCUSD&resolution=60&from=1704240000&from=1704240001&to=1704067200&to=1704067201",
    ] {
        c.push(get(p, 400));
    }
    // Unknown paths and traversal.
    for p in [
        "/udf/history/extra",
        "/api/trades/1",
        "/API/TRADES",
        "/static/%2e%2e/Cargo.toml",
        "/static/%2e%2e%2fCargo.toml",
        "/static/..%5c..%5cCargo.toml",
        "/api/trades%00",
        "/%F0%9F%9A%80",
    ] {
        c.push(get(p, 404));
    }
    c
}

struct Answer {
    status: u16,
    body: Result<Value, String>,
}

/// Sends `r` with a `Content-Length` of `len` but only a prefix of the body,
/// and reads whatever the server answers.
async fn send_oversize(base: &str, r: &Req, len: usize) -> Result<Answer, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let addr = base.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let head = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
            r.method,
            r.path,
            r.content_type.unwrap_or("application/json")
        );
        s.write_all(head.as_bytes()).await?;
        // The server may already have answered and closed: ignore write errors.
        let _ = s.write_all(&[b' '; 64 * 1024]).await;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| format!("no answer: {e:?}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {raw:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(Answer {
        status,
        body: serde_json::from_str(body).map_err(|_| body.to_string()),
    })
}

async fn send(client: &reqwest::Client, base: &str, r: &Req) -> Result<Answer, String> {
    if let Body::Oversize(len) = r.body {
        return send_oversize(base, r, len).await;
    }
    let mut b = client.request(r.method.clone(), format!("{base}{}", r.path));
    if let Some(ct) = r.content_type {
        b = b.header("content-type", ct);
    }
    b = match &r.body {
        Body::None => b,
        Body::Bytes(bytes) => b.body(bytes.clone()),
        Body::EmptyWithLength => b.header("content-length", "0"),
        Body::Oversize(_) => unreachable!("sent over a raw socket"),
        Body::Chunked(bytes) => {
            let chunks = vec![Ok::<_, std::io::Error>(Bytes::from(bytes.clone()))];
            b.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
        }
    };
    let resp = b.send().await.map_err(|e| format!("no answer: {e:?}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("{status}, body unreadable: {e}"))?;
    Ok(Answer {
        status,
        body: serde_json::from_str(&text).map_err(|_| text),
    })
}

fn shown(r: &Req) -> String {
    let body = match &r.body {
        Body::None => String::new(),
        Body::EmptyWithLength => " \"\" (Content-Length: 0)".into(),
        Body::Oversize(n) => format!(" (Content-Length: {n}, 64 KiB of spaces sent)"),
        Body::Bytes(b) | Body::Chunked(b) => {
            let s = String::from_utf8_lossy(b);
            let head: String = s.chars().take(100).collect();
            if s.chars().count() > 100 {
                format!(" {head:?}… ({} bytes)", b.len())
            } else {
                format!(" {head:?}")
            }
        }
    };
    let ct = r
        .content_type
        .map(|c| format!(" [{c}]"))
        .unwrap_or_default();
    format!("{} {}{ct}{body}", r.method, r.path)
}

/// A JSON string with something in it besides whitespace.
fn has_text(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.trim().is_empty())
}

/// What is wrong with the answer to `r`, if anything.
fn judge(r: &Req, a: &Result<Answer, String>) -> Option<String> {
    let a = match a {
        Ok(a) => a,
        Err(e) => return Some(e.clone()),
    };
    let mut problems = Vec::new();
    if a.status != r.status {
        problems.push(format!("status {} (expected {})", a.status, r.status));
    }
    match &a.body {
        Ok(v) => {
            if !has_text(&v["error"]) {
                problems.push("no \"error\" message".to_string());
            }
            let route = r.path.split('?').next().unwrap();
            let udf = ["/udf/history", "/udf/symbols", "/udf/search"].contains(&route);
            if r.method == Method::GET && udf && (v["s"] != "error" || !has_text(&v["errmsg"])) {
                problems.push("not in the UDF error shape (s, errmsg)".to_string());
            }
        }
        Err(text) => {
            let head: String = text.chars().take(200).collect();
            problems.push(format!("body is not JSON: {head:?}"));
        }
    }
    (!problems.is_empty()).then(|| {
        let body = a.body.as_ref().map_or_else(
            |t| t.chars().take(200).collect::<String>(),
            |v| v.to_string().chars().take(200).collect(),
        );
        format!("{} → {}: {body}", problems.join("; "), a.status)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_all_get_a_4xx_json_error_and_change_nothing_stored() {
    let app = App::start().await;
    let before = app.snapshot().await;
    assert!(
        before.iter().any(|s| s.starts_with("trades: 400 points")),
        "{before:#?}"
    );
    assert!(
        before
            .iter()
            .any(|s| s.starts_with("ohlc_1m: ") && !s.starts_with("ohlc_1m: 0 ")),
        "the engine materialized candles: {before:#?}"
    );
    let client = client();
    let corpus: Vec<Req> = post_corpus().into_iter().chain(get_corpus()).collect();
    assert_eq!(
        corpus.len(),
        CORPUS_LEN,
        "the corpus changed size; update CORPUS_LEN (and README) if on purpose"
    );
    let mut failures = Vec::new();
    for r in &corpus {
        let answer = send(&client, &app.url, r).await;
        if let Some(problem) = judge(r, &answer) {
            failures.push(format!("{}\n    {problem}", shown(r)));
        }
    }
    let rejected_wrongly = failures.len();
    let after = app.snapshot().await;
    if after != before {
        failures.push(format!(
            "rejected requests changed what is stored:\n{}",
            snapshot_diff(&before, &after)
        ));
    }
    match client.get(format!("{}/healthz", app.url)).send().await {
        Ok(h) if h.status() == 200 => {}
        Ok(h) => failures.push(format!(
            "unhealthy after the corpus: {} {}",
            h.status(),
            h.text().await.unwrap_or_default()
        )),
        Err(e) => failures.push(format!("no answer to /healthz after the corpus: {e:?}")),
    }
    // Hostile paths must not mint metric series, and nothing was a 5xx.
    let metrics = client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let known = [
        "/",
        "/udf/config",
        "/udf/symbols",
        "/udf/search",
        "/udf/history",
        "/udf/time",
        "/api/ohlc",
        "/api/trades",
        "/api/progress",
        "/healthz",
        "/metrics",
        "/static",
        "/lib",
        "other",
    ];
    for line in metrics.lines().filter(|l| l.starts_with("ohlcd_http_")) {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(str::to_string)
        };
        if label("route").is_some_and(|r| !known.contains(&r.as_str())) {
            failures.push(format!("unbounded route label: {line}"));
        }
        if label("status").is_some_and(|s| s.starts_with('5')) {
            failures.push(format!("a request got a 5xx: {line}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{rejected_wrongly} of {} malformed requests were not answered with the right 4xx and a JSON error:\n{}",
        corpus.len(),
        failures.join("\n")
    );
    eprintln!("{} malformed requests, all rejected", corpus.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_treats_any_query_text_as_a_plain_substring_of_known_symbols() {
    let app = App::start().await;
    let before = app.snapshot().await;
    let client = client();
    let mut queries: Vec<&str> = INJECTIONS.iter().chain(BAD_SYMBOLS).copied().collect();
    queries.extend([
        ".*",
        "%",
        "_",
        "*",
        "USD'",
        "\\",
        "\0",
        "BTC\u{0}",
        "/.*/",
        "' OR ''='",
        "usd",
        "BTC",
        "",
    ]);
    let mut failures = Vec::new();
    for q in &queries {
        let path = format!("/udf/search?{}", qs(&[("query", q), ("limit", "1000")]));
        let resp = client.get(format!("{}{path}", app.url)).send().await;
        let (status, text) = match resp {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, format!("{e:?}")),
        };
        let Ok(Value::Array(found)) = serde_json::from_str::<Value>(&text) else {
            failures.push(format!("{path}: {status} {text:?} is not a JSON array"));
            continue;
        };
        if status != 200 {
            failures.push(format!("{path}: status {status}"));
        }
        let needle = q.to_uppercase();
        let symbols: Vec<&str> = found.iter().filter_map(|s| s["symbol"].as_str()).collect();
        if symbols.len() != found.len()
            || symbols.iter().any(|s| !s.to_uppercase().contains(&needle))
        {
            failures.push(format!("{path}: {symbols:?} do not all contain {needle:?}"));
        }
        let expected: Vec<&str> = ["BTCUSD", "ETHUSD"]
            .into_iter()
            .filter(|s| s.contains(&needle))
            .collect();
        if symbols != expected {
            failures.push(format!("{path}: found {symbols:?}, expected {expected:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let after = app.snapshot().await;
    assert!(
        after == before,
        "search changed what is stored:\n{}",
        snapshot_diff(&before, &after)
    );
}

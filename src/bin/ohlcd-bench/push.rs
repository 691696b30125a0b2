//! The push shape (`--push N`): `ohlcd run` holding N live-bar streams
//! (`GET /api/live`, Server-Sent Events) open at once while trades flow, with
//! ohlcd's memory before, during and after.
//!
//! The streams are spread over [`SYMBOLS`] symbols × [`PUSH_RESOLUTIONS`], so
//! each (symbol, resolution) feed has many subscribers. A background load posts
//! `--push-rate` trades/s over those symbols for `--push-secs` seconds; a probe
//! posts one trade every half second to one more symbol, followed by
//! [`PROBES`] of the streams, and the time from each POST's answer to each
//! probe stream receiving the bar with that trade is the push latency. Then
//! every stream is closed and ohlcd must report none open.
//!
//! Everything runs on 127.0.0.1 against the daemon the bench started; the load
//! is bounded by `--push-rate` and `--push-secs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::bench::Bench;
use crate::daemon::start_daemon;
use crate::procs::{TICKS_PER_SEC, cpu_ticks, vm_hwm_kb, vm_rss_kb};
use crate::report::{Row, mb, push_check, push_row, thousands};
use crate::{NS, say};

/// Symbols carrying the background load.
const SYMBOLS: usize = 20;
/// Resolutions the streams subscribe to.
const PUSH_RESOLUTIONS: [&str; 5] = ["1", "5", "15", "60", "1D"];
/// The probe symbol and how many streams follow it.
const PROBE: &str = "PROBE";
const PROBES: usize = 20;
/// Posts per second of the background load.
const POSTS_PER_SEC: u64 = 10;

/// Trades written over the two hours before the daemon starts.
pub(crate) const SEED_TRADES: u64 = 200 * (SYMBOLS as u64 + 1);

/// The load's symbols, then the probe.
pub(crate) fn symbols() -> Vec<String> {
    let mut symbols = crate::numbered_symbols(SYMBOLS);
    symbols.push(PROBE.to_string());
    symbols
}

/// What the push shape measured.
#[derive(Debug, Default)]
pub(crate) struct PushResult {
    pub streams: usize,
    pub opened_in: Duration,
    pub rss_idle_kb: u64,
    pub rss_open_kb: u64,
    pub rss_load_max_kb: u64,
    pub rss_after_kb: u64,
    pub peak_kb: u64,
    pub posted: u64,
    pub load: Duration,
    pub events: u64,
    pub ohlcd_cpu_secs: f64,
    /// POST answered → probe stream has the bar, one per (probe, stream).
    pub latencies: Vec<Duration>,
    /// Probe deliveries that never arrived.
    pub missed: usize,
    /// Streams ohlcd still counted open 10 s after the clients left.
    pub left_open: Option<f64>,
}

/// What every stream task reports.
#[derive(Default)]
struct Shared {
    /// Streams that received their first event.
    started: usize,
    events: u64,
    /// (close price, arrival) seen by probe streams.
    probe_closes: Vec<(f64, Instant)>,
    failures: Vec<String>,
}

/// Runs the push shape with `n` streams; findings go to `b`.
pub(crate) async fn run(b: &mut Bench, n: usize) -> PushResult {
    let mut r = PushResult {
        streams: n,
        ..PushResult::default()
    };
    if let Err(e) = run_inner(b, n, &mut r).await {
        b.fail("push", e);
    }
    r
}

async fn run_inner(b: &mut Bench, n: usize, r: &mut PushResult) -> Result<()> {
    ensure!(n > PROBES, "--push must be more than {PROBES}");
    let symbols = symbols();
    let db = b.db.clone();
    let now = now_ns();
    b.from = now - 7_200 * NS;
    b.to = now - 60 * NS;
    b.influx.create_database().await?;
    b.generate(&db, SEED_TRADES, &symbols).await?;
    b.settle().await;
    let env = [
        ("OHLCD_SERVER__MAX_CONNECTIONS", (n + 1024).to_string()),
        ("OHLCD_SERVER__MAX_STREAMS", (n + 512).to_string()),
    ];
    let (mut proc, base, client) = start_daemon(b, &db, &env).await?;
    let pid = proc.pid();
    // Let the first catch-up tick finish before the idle figure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.rss_idle_kb = vm_rss_kb(pid).unwrap_or(0);

    say!("opening {n} live streams ...");
    let shared = Arc::new(Mutex::new(Shared::default()));
    // One client per stream is what browsers are; a pool would share nothing
    // here anyway, as each stream holds its connection.
    let stream_client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let opening = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (symbol, probe) = if i < PROBES {
            (PROBE.to_string(), true)
        } else {
            (symbols[i % SYMBOLS].clone(), false)
        };
        let res = PUSH_RESOLUTIONS[(i / SYMBOLS) % PUSH_RESOLUTIONS.len()];
        let url = format!("{base}/api/live?symbol={symbol}&resolution={res}");
        tasks.push(tokio::spawn(follow(
            stream_client.clone(),
            url,
            probe,
            shared.clone(),
        )));
        // Do not open all at once: that is a connection storm, not the
        // steady state being measured.
        if i % 50 == 49 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while lock(&shared).started < n {
        if let Some(f) = lock(&shared).failures.first() {
            bail!("a stream failed: {f}");
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} streams started within 120 s",
                lock(&shared).started
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.opened_in = opening.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.rss_open_kb = vm_rss_kb(pid).unwrap_or(0);
    say!(
        "{n} streams open after {:.1}s; ohlcd RSS {:.1} MB (idle {:.1} MB)",
        r.opened_in.as_secs_f64(),
        mb(r.rss_open_kb),
        mb(r.rss_idle_kb)
    );

    let cpu0 = cpu_ticks(pid).context("cannot read ohlcd's CPU time")?;
    let events0 = lock(&shared).events;
    let load_started = Instant::now();
    let secs = b.args.push_secs;
    let rate = b.args.push_rate;
    let load = post_load(&client, &base, &symbols[..SYMBOLS], rate, secs);
    let probe = post_probes(&client, &base, secs);
    let sample = async {
        let mut max = 0;
        while load_started.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            max = max.max(vm_rss_kb(pid).unwrap_or(0));
        }
        max
    };
    let (posted, probes, max) = tokio::join!(load, probe, sample);
    r.load = load_started.elapsed();
    r.posted = posted?;
    let probes = probes?;
    r.rss_load_max_kb = max;
    // Late deliveries of the last probe.
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.ohlcd_cpu_secs = cpu_ticks(pid).map_or(0.0, |c| (c - cpu0) as f64 / TICKS_PER_SEC);
    r.events = lock(&shared).events - events0;
    {
        let s = lock(&shared);
        for (price, answered) in &probes {
            let arrivals: Vec<Duration> = s
                .probe_closes
                .iter()
                .filter(|(close, _)| close == price)
                .map(|(_, at)| at.saturating_duration_since(*answered))
                .collect();
            r.missed += PROBES.saturating_sub(arrivals.len());
            r.latencies.extend(arrivals);
        }
        r.latencies.sort();
        if let Some(f) = s.failures.first() {
            b.issue(format!("{} stream(s) failed, e.g. {f}", s.failures.len()));
        }
    }
    r.peak_kb = vm_hwm_kb(pid).unwrap_or(0);

    say!("closing every stream ...");
    for t in &tasks {
        t.abort();
    }
    drop(tasks);
    let closing = Instant::now();
    let mut open = None;
    while closing.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        open = streams_open(&client, &base).await.ok();
        if open == Some(0.0) {
            break;
        }
    }
    r.left_open = open;
    r.rss_after_kb = vm_rss_kb(pid).unwrap_or(0);
    match proc.terminate(Duration::from_secs(30)).await {
        Ok(status) if status.success() => {}
        Ok(status) => b.issue(format!("ohlcd run exited with {status} on SIGTERM")),
        Err(e) => b.issue(format!("{e:#}")),
    }
    b.scan_log(&proc);
    Ok(())
}

/// Follows one stream: counts events; a probe stream records each close.
async fn follow(client: reqwest::Client, url: String, probe: bool, shared: Arc<Mutex<Shared>>) {
    let fail = |shared: &Arc<Mutex<Shared>>, m: String| lock(shared).failures.push(m);
    let resp = match client.get(&url).send().await {
        Ok(resp) if resp.status().is_success() => resp,
        Ok(resp) => return fail(&shared, format!("{url}: HTTP {}", resp.status())),
        Err(e) => return fail(&shared, format!("{url}: {e}")),
    };
    let mut body = resp.bytes_stream();
    let mut buffer = String::new();
    let mut first = true;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return fail(&shared, format!("{url}: stream broke"));
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue; // a keep-alive comment
            };
            let at = Instant::now();
            let mut s = lock(&shared);
            s.events += 1;
            if first {
                s.started += 1;
                first = false;
            }
            if probe
                && let Ok(v) = serde_json::from_str::<Value>(data.trim())
                && let Some(close) = v["close"].as_f64()
            {
                s.probe_closes.push((close, at));
            }
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

async fn post(client: &reqwest::Client, base: &str, trades: &[Value]) -> Result<()> {
    let resp = client
        .post(format!("{base}/api/trades"))
        .json(trades)
        .send()
        .await
        .context("POST /api/trades")?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "POST /api/trades answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// `rate` trades/s over `symbols` for `secs`, stamped now; returns the count.
async fn post_load(
    client: &reqwest::Client,
    base: &str,
    symbols: &[String],
    rate: u64,
    secs: u64,
) -> Result<u64> {
    let per_post = (rate / POSTS_PER_SEC).max(1);
    let total = rate * secs;
    let mut interval = tokio::time::interval(Duration::from_secs(1) / POSTS_PER_SEC as u32);
    let (mut posted, mut next) = (0u64, 0usize);
    while posted < total {
        interval.tick().await;
        let ms = now_ns() / 1_000_000;
        let n = per_post.min(total - posted);
        let batch: Vec<Value> = (0..n)
            .map(|k| {
                let i = next % symbols.len();
                next += 1;
                json!({"symbol": symbols[i], "price": 100.0 + (next % 97) as f64 * 0.01,
                       "amount": 0.01, "side": if k % 2 == 0 { "buy" } else { "sell" },
                       "timestamp": ms, "id": 1_000_000 + posted + k})
            })
            .collect();
        post(client, base, &batch).await?;
        posted += n;
    }
    Ok(posted)
}

/// One probe trade every half second, each at a price never used before;
/// returns (price, when the POST was answered).
async fn post_probes(
    client: &reqwest::Client,
    base: &str,
    secs: u64,
) -> Result<Vec<(f64, Instant)>> {
    let mut out = Vec::new();
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    for k in 0..secs * 2 {
        interval.tick().await;
        let price = 5_000.0 + k as f64 * 0.25;
        let trade = json!({"symbol": PROBE, "price": price, "amount": 0.5, "side": "buy",
                           "timestamp": now_ns() / 1_000_000, "id": 9_000_000 + k});
        post(client, base, &[trade]).await?;
        out.push((price, Instant::now()));
    }
    Ok(out)
}

/// `ohlcd_push_streams` from `/metrics`.
async fn streams_open(client: &reqwest::Client, base: &str) -> Result<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("ohlcd_push_streams "))
        .and_then(|v| v.trim().parse().ok())
        .context("no ohlcd_push_streams in /metrics")
}

fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

/// The push shape's table.
pub(crate) fn rows(r: &PushResult, rows: &mut Vec<Row>) {
    push_row(
        rows,
        "live streams open at once",
        format!(
            "{} ({} feeds: {} symbols × {} resolutions, + {} on the probe), opened in {:.1} s",
            thousands(r.streams as f64),
            (SYMBOLS + 1) * PUSH_RESOLUTIONS.len(),
            SYMBOLS + 1,
            PUSH_RESOLUTIONS.len(),
            PROBES,
            r.opened_in.as_secs_f64()
        ),
    );
    push_row(
        rows,
        "ohlcd RSS: idle / streams open / max under load / after closing",
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1} MB (peak {:.1} MB)",
            mb(r.rss_idle_kb),
            mb(r.rss_open_kb),
            mb(r.rss_load_max_kb),
            mb(r.rss_after_kb),
            mb(r.peak_kb)
        ),
    );
    let per_stream = (r.rss_load_max_kb.saturating_sub(r.rss_idle_kb)) as f64 / r.streams as f64;
    push_row(
        rows,
        "memory per open stream (max under load − idle) / streams",
        format!("{per_stream:.1} KiB"),
    );
    push_row(
        rows,
        "load",
        format!(
            "{} trades posted in {:.1} s; {} events delivered; ohlcd CPU {:.1} s",
            thousands(r.posted as f64),
            r.load.as_secs_f64(),
            thousands(r.events as f64),
            r.ohlcd_cpu_secs
        ),
    );
    let l = &r.latencies;
    push_check(
        rows,
        "POST answered → bar on a probe stream, p50 / p99 / max",
        format!(
            "{} / {} / {} ({} deliveries, {} missed)",
            ms(quantile(l, 0.5)),
            ms(quantile(l, 0.99)),
            ms(l.last().copied()),
            l.len(),
            r.missed
        ),
        "p99 ≤ 100 ms",
        r.missed == 0 && quantile(l, 0.99).is_some_and(|d| d <= Duration::from_millis(100)),
    );
    push_check(
        rows,
        "streams still open 10 s after the clients left",
        r.left_open.map_or("?".into(), |v| format!("{v:.0}")),
        "0",
        r.left_open == Some(0.0),
    );
}

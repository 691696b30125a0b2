//! The live shape: `ohlcd run` over thousands of symbols while trades arrive
//! through `POST /api/trades`, spread over all symbols.
//!
//! Every ~10 s the bench reads `GET /api/progress` and checks that every
//! symbol's 1m watermark is at most two ticks behind where a perfect engine
//! would be: `watermark ≥ floor_to_minute(now − settle − 2 × tick)` (the
//! watermark only moves in whole closed minutes, so "within settle + 2 ticks
//! of now" is measured against the horizon, not against `now` itself). It also
//! reports ohlcd's CPU time over the load (`/proc/<pid>/stat` utime + stime),
//! its peak RSS, the tick durations it logged, and at the end checks the 1m
//! candles of the whole run against InfluxDB's `GROUP BY time(1m), symbol`.
//!
//! The load goes only to the daemon the bench started on 127.0.0.1, and is
//! bounded in rate and time by `--live-rate` and `--live-secs`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::bench::Bench;
use crate::daemon::start_daemon;
use crate::procs::{Proc, TICKS_PER_SEC, cpu_ticks, strip_ansi, vm_hwm_kb, vm_rss_kb};
use crate::reference::{compare_candles, parse_candle_csv};
use crate::report::{RSS_TARGET_MB, Results, Row, mb, push_check, push_row, thousands};
use crate::{NS, say};

/// Seconds between scheduler ticks (the default cron, set explicitly).
const TICK_SECS: i64 = 10;
const CRON: &str = "*/10 * * * * *";
/// Settle time (the default, set explicitly).
const SETTLE_SECS: i64 = 10;
/// Trades per symbol written before the daemon starts, over the last two hours.
const SEED_PER_SYMBOL: u64 = 10;
/// Requests per second of the load (each carries rate / this many trades).
const POSTS_PER_SEC: u64 = 10;
/// Seconds between progress checks.
const CHECK_EVERY: Duration = Duration::from_secs(10);
const MINUTE_NS: i64 = 60 * NS;

/// Explains the live table in the Markdown copy.
pub(crate) const EXPLANATION: &str = "\nA watermark check passes when every symbol's 1m watermark is at \
least `floor_to_minute(now − settle − 2 × tick)`: at most two ticks behind the horizon a perfect \
engine would have reached (the watermark moves in whole closed minutes, so its distance from `now` \
itself swings by a minute). ohlcd's CPU time covers everything the daemon did during the load: \
the ticks, answering every POST /api/trades and every GET /api/progress. The load is sent from \
the bench process on the same machine.\n";

/// One read of the progress table during the load.
#[derive(Debug, Clone)]
pub(crate) struct WatermarkCheck {
    /// Seconds since the load started.
    pub at: f64,
    /// Symbols with a 1m watermark.
    pub symbols: usize,
    /// Symbols not within two ticks of the horizon (or without a watermark).
    pub behind: usize,
    /// Largest `now − watermark` over all symbols, seconds.
    pub worst_age: f64,
    /// The oldest 1m watermark, Unix ns.
    pub oldest: i64,
    /// How long `GET /api/progress` took.
    pub request: Duration,
    /// ohlcd's resident set right after, kB.
    pub rss_kb: u64,
}

/// What the live shape measured.
#[derive(Debug, Default)]
pub(crate) struct LiveResult {
    pub symbols: usize,
    /// From daemon start until every watermark was within bounds.
    pub catch_up: Option<Duration>,
    pub posted: u64,
    pub late: u64,
    pub load: Duration,
    pub checks: Vec<WatermarkCheck>,
    pub ohlcd_cpu_secs: f64,
    pub influxd_cpu_secs: Option<f64>,
    pub ohlcd_peak_kb: u64,
    /// `secs` of every "tick done" the daemon logged during the load.
    pub ticks: Vec<f64>,
    /// `/metrics` at the start and at the end of the load.
    pub metrics: Option<(Metrics, Metrics)>,
    /// The candle check at the end: (equal, text).
    pub candle_check: Option<(bool, String)>,
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// The oldest 1m watermark that still counts as within two ticks at `now`.
fn lowest_allowed(now: i64) -> i64 {
    (now - (SETTLE_SECS + 2 * TICK_SECS) * NS).div_euclid(MINUTE_NS) * MINUTE_NS
}

/// Reads the progress table and checks every symbol's 1m watermark.
async fn check_watermarks(
    client: &reqwest::Client,
    base: &str,
    symbols: usize,
    load_started: Instant,
) -> Result<WatermarkCheck> {
    let started = Instant::now();
    let tasks: Value = client
        .get(format!("{base}/api/progress"))
        .send()
        .await
        .context("GET /api/progress")?
        .json()
        .await
        .context("GET /api/progress: not JSON")?;
    let request = started.elapsed();
    let now = now_ns();
    let allowed = lowest_allowed(now);
    let mut seen = 0;
    let mut within = 0;
    let mut oldest = i64::MAX;
    for t in tasks.as_array().into_iter().flatten() {
        if t["resolution"] != "1m" {
            continue;
        }
        let Some(wm) = t["watermark"]
            .as_str()
            .and_then(|w| ohlcd::times::from_rfc3339(w).ok())
        else {
            continue;
        };
        seen += 1;
        oldest = oldest.min(wm);
        if wm >= allowed {
            within += 1;
        }
    }
    Ok(WatermarkCheck {
        at: load_started.elapsed().as_secs_f64(),
        symbols: seen,
        behind: symbols.saturating_sub(within),
        worst_age: if seen > 0 {
            (now - oldest) as f64 / NS as f64
        } else {
            0.0
        },
        oldest,
        request,
        rss_kb: 0,
    })
}

/// Posts `rate` trades/s spread round-robin over `symbols` for `secs`, in
/// `POSTS_PER_SEC` requests a second, timestamps now; returns (posted, late).
async fn post_load(
    client: &reqwest::Client,
    base: &str,
    symbols: &[String],
    rate: u64,
    secs: u64,
) -> Result<(u64, u64)> {
    let url = format!("{base}/api/trades");
    let total = rate * secs;
    let per_post = (rate / POSTS_PER_SEC).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut prices: Vec<f64> = (0..symbols.len())
        .map(|_| 10f64.powf(rng.random_range(0.0..3.0)))
        .collect();
    let mut interval = tokio::time::interval(Duration::from_secs(1) / POSTS_PER_SEC as u32);
    // Late sends catch up, so the average rate holds.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    let (mut posted, mut late, mut next) = (0u64, 0u64, 0usize);
    while posted < total {
        interval.tick().await;
        if Instant::now() > deadline {
            bail!("the load fell behind: {posted} of {total} trades posted in {secs} + 30 s");
        }
        let ms = now_ns() / 1_000_000;
        let n = per_post.min(total - posted);
        let batch: Vec<Value> = (0..n)
            .map(|k| {
                let i = next % symbols.len();
                next += 1;
                prices[i] *= 1.0 + rng.random_range(-0.001..0.001);
                json!({
                    "symbol": symbols[i],
                    "price": (prices[i] * 1e4).round() / 1e4,
                    "amount": 0.001 + rng.random::<f64>(),
                    "side": if rng.random_bool(0.5) { "buy" } else { "sell" },
                    "timestamp": ms,
                    "id": (posted + k) as i64,
                })
            })
            .collect();
        let resp = client
            .post(&url)
            .json(&batch)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST /api/trades answered {status}: {body}");
        }
        posted += n;
        late += body["late"].as_u64().unwrap_or(0);
    }
    Ok((posted, late))
}

/// Samples of a Prometheus text page: `name{labels}` → value.
pub(crate) type Metrics = std::collections::HashMap<String, f64>;

/// Parses `GET /metrics` (Prometheus text format; comments skipped).
fn parse_metrics(text: &str) -> Metrics {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn fetch_metrics(client: &reqwest::Client, base: &str) -> Result<Metrics> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .context("GET /metrics")?
        .text()
        .await?;
    Ok(parse_metrics(&text))
}

/// Growth of a sample between two scrapes.
fn delta(m: &(Metrics, Metrics), key: &str) -> f64 {
    m.1.get(key).copied().unwrap_or(0.0) - m.0.get(key).copied().unwrap_or(0.0)
}

/// The smallest histogram bucket that holds every observation made between
/// the scrapes (`+Inf` if the largest bucket does not).
fn bucket_bound(m: &(Metrics, Metrics), name: &str, labels: &str) -> String {
    let total = delta(m, &format!("{name}_count{labels}"));
    let mut bounds: Vec<(f64, String)> =
        m.1.keys()
            .filter_map(|k| {
                let le = k.strip_prefix(&format!("{name}_bucket{{"))?;
                let le = le.split("le=\"").nth(1)?.split('"').next()?;
                Some((le.parse::<f64>().unwrap_or(f64::INFINITY), k.clone()))
            })
            .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    bounds
        .into_iter()
        .find(|(_, k)| delta(m, k) >= total && k.contains(labels.trim_matches(['{', '}'])))
        .map_or("?".to_string(), |(le, _)| format!("{le}"))
}

/// `secs=` of the "tick done" lines the daemon logged between two times.
fn tick_secs(log: &str, from_ns: i64, to_ns: i64) -> Vec<f64> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("tick done"))
        .filter_map(|l| {
            let at = ohlcd::times::from_rfc3339(l.split_whitespace().next()?).ok()?;
            if at < from_ns || at > to_ns {
                return None;
            }
            let v = l.split("secs=").nth(1)?.split_whitespace().next()?;
            v.trim_matches('"').parse().ok()
        })
        .collect()
}

/// Runs the live shape; findings go to `b`, figures to `r.live`.
pub(crate) async fn run(b: &mut Bench, r: &mut Results) {
    let mut live = LiveResult {
        symbols: b.symbols().len(),
        ..LiveResult::default()
    };
    if let Err(e) = run_inner(b, &mut live).await {
        b.fail("live", e);
    }
    r.live = Some(live);
}

async fn run_inner(b: &mut Bench, live: &mut LiveResult) -> Result<()> {
    let symbols = b.symbols().to_vec();
    let db = b.db.clone();
    // History: a few trades per symbol over the last two hours, so every
    // symbol exists (and has a small backfill) before the load starts.
    let now = now_ns();
    b.from = (now - 7_200 * NS).div_euclid(MINUTE_NS) * MINUTE_NS;
    b.to = (now - 120 * NS).div_euclid(MINUTE_NS) * MINUTE_NS;
    b.influx.create_database().await?;
    b.generate(&db, SEED_PER_SYMBOL * symbols.len() as u64, &symbols)
        .await?;
    b.settle().await;

    let started = Instant::now();
    let env = [
        ("OHLCD_ENGINE__CRON", CRON.to_string()),
        ("OHLCD_ENGINE__SETTLE_SECS", SETTLE_SECS.to_string()),
    ];
    let (mut proc, base, client) = start_daemon(b, &db, &env).await?;
    // Caught up: every symbol within bounds once.
    loop {
        if let Some(status) = proc.poll()? {
            bail!("ohlcd run exited with {status}; {}", proc.stderr_tail(10));
        }
        let c = check_watermarks(&client, &base, symbols.len(), started).await;
        if let Ok(c) = &c
            && c.symbols == symbols.len()
            && c.behind == 0
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "ohlcd run did not catch up with {} symbols in 600 s (last check: {c:?}); {}",
                symbols.len(),
                proc.stderr_tail(5)
            );
        }
        // Not more often: with thousands of symbols one read of the progress
        // table costs ohlcd about half a second and tens of MB.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    live.catch_up = Some(started.elapsed());
    say!(
        "ohlcd run caught up with {} symbols after {:.1}s; load: {} trades/s for {} s ...",
        symbols.len(),
        started.elapsed().as_secs_f64(),
        b.args.live_rate,
        b.args.live_secs
    );

    let pid = proc.pid();
    let metrics0 = fetch_metrics(&client, &base).await?;
    let cpu0 = cpu_ticks(pid).context("cannot read ohlcd's CPU time")?;
    let influxd_cpu0 = b.influxd_pid.and_then(cpu_ticks);
    let load_from = now_ns();
    let load_started = Instant::now();
    let load = post_load(&client, &base, &symbols, b.args.live_rate, b.args.live_secs);
    let live_secs = b.args.live_secs;
    let checks = async {
        let mut checks = Vec::new();
        let mut next = tokio::time::Instant::now() + CHECK_EVERY;
        while load_started.elapsed() < Duration::from_secs(live_secs) {
            tokio::time::sleep_until(next).await;
            next += CHECK_EVERY;
            match check_watermarks(&client, &base, symbols.len(), load_started).await {
                Ok(mut c) => {
                    c.rss_kb = vm_rss_kb(pid).unwrap_or(0);
                    say!(
                        "t+{:.0}s: {} of {} symbols within two ticks, worst 1m watermark age {:.0} s (progress read {:.0} ms); ohlcd RSS {:.1} MB",
                        c.at,
                        c.symbols - c.behind.min(c.symbols),
                        symbols.len(),
                        c.worst_age,
                        c.request.as_secs_f64() * 1e3,
                        mb(c.rss_kb)
                    );
                    checks.push(c);
                }
                Err(e) => say!("progress check failed: {e:#}"),
            }
        }
        checks
    };
    let (posted, checks) = tokio::join!(load, checks);
    live.load = load_started.elapsed();
    live.checks = checks;
    if let Some(c) = cpu_ticks(pid) {
        live.ohlcd_cpu_secs = (c - cpu0) as f64 / TICKS_PER_SEC;
    }
    if let (Some(pid), Some(c0)) = (b.influxd_pid, influxd_cpu0) {
        live.influxd_cpu_secs = cpu_ticks(pid).map(|c| (c - c0) as f64 / TICKS_PER_SEC);
    }
    live.ohlcd_peak_kb = vm_hwm_kb(pid).unwrap_or(0);
    let load_to = now_ns();
    live.metrics = Some((metrics0, fetch_metrics(&client, &base).await?));
    let (posted, late) = posted?;
    live.posted = posted;
    live.late = late;
    if late > 0 {
        b.issue(format!(
            "POST /api/trades flagged {late} trades stamped `now` as late"
        ));
    }
    // One more tick so the last minutes are materialized; the candles are
    // checked up to the oldest watermark then.
    tokio::time::sleep(Duration::from_secs(TICK_SECS as u64 + 2)).await;
    let last = check_watermarks(&client, &base, symbols.len(), load_started).await;
    stop(b, &mut proc).await;
    live.ticks = tick_secs(&proc.stderr_text(), load_from, load_to);
    let until = last?.oldest;
    live.candle_check = Some(check_candles(b, &db, until).await?);
    Ok(())
}

/// SIGTERM, a clean exit expected; the log scanned for warnings.
async fn stop(b: &mut Bench, proc: &mut Proc) {
    say!("stopping ohlcd run (SIGTERM) ...");
    match proc.terminate(Duration::from_secs(30)).await {
        Ok(status) if status.success() => {}
        Ok(status) => b.issue(format!(
            "ohlcd run exited with {status} on SIGTERM; {}",
            proc.stderr_tail(5)
        )),
        Err(e) => b.issue(format!("{e:#}")),
    }
    b.scan_log(proc);
}

/// ohlcd's 1m candles of the whole run (seed and load, up to the oldest 1m
/// watermark `to`) against InfluxDB's GROUP BY.
async fn check_candles(b: &mut Bench, db: &str, to: i64) -> Result<(bool, String)> {
    let range = format!("time >= {} AND time < {to}", b.from);
    let q = format!(
        "SELECT first(price), max(price), min(price), last(price), sum(amount), count(price) \
         FROM trades WHERE {range} GROUP BY time(1m), symbol fill(none)"
    );
    let expected = parse_candle_csv(&b.raw.fetch(db, &q, "application/csv", true).await?.body)?;
    let q = format!(
        "SELECT open, high, low, close, volume, trades FROM ohlc_1m WHERE {range} GROUP BY symbol"
    );
    let stored = parse_candle_csv(&b.raw.fetch(db, &q, "application/csv", true).await?.body)?;
    let span = format!(
        "{} to {}",
        ohlcd::times::to_rfc3339(b.from),
        ohlcd::times::to_rfc3339(to)
    );
    Ok(match compare_candles(&expected, &stored) {
        None => (
            true,
            format!(
                "equal ({} 1m candles, {span})",
                thousands(expected.len() as f64)
            ),
        ),
        Some(diff) => {
            b.issue(format!(
                "live 1m candles differ from InfluxDB's GROUP BY: {diff}"
            ));
            (false, diff)
        }
    })
}

/// The live shape's rows of the table.
pub(crate) fn rows(b: &Bench, live: &LiveResult, rows: &mut Vec<Row>) {
    let secs = b.args.live_secs;
    push_row(
        rows,
        "symbols; history before the load",
        format!(
            "{}; {SEED_PER_SYMBOL} trades each over the last 2 h",
            thousands(live.symbols as f64)
        ),
    );
    if let Some(c) = live.catch_up {
        push_row(
            rows,
            "ohlcd run: start to every 1m watermark within bounds",
            format!("{:.1} s", c.as_secs_f64()),
        );
    }
    let load = live.load.as_secs_f64().max(1e-9);
    push_row(
        rows,
        "load: POST /api/trades",
        format!(
            "{} trades in {load:.0} s = {} trades/s (goal {}/s for {secs} s), {} per request",
            thousands(live.posted as f64),
            thousands(live.posted as f64 / load),
            thousands(b.args.live_rate as f64),
            (b.args.live_rate / POSTS_PER_SEC).max(1)
        ),
    );
    let n = live.checks.len();
    let held = live
        .checks
        .iter()
        .filter(|c| c.behind == 0 && c.symbols == live.symbols)
        .count();
    let worst = live.checks.iter().map(|c| c.worst_age).fold(0.0, f64::max);
    let most_behind = live.checks.iter().map(|c| c.behind).max().unwrap_or(0);
    push_check(
        rows,
        format!(
            "every 1m watermark within settle + 2 ticks ({SETTLE_SECS} s + 2 × {TICK_SECS} s), every ~10 s"
        ),
        format!(
            "held at {held} of {n} checks; worst now − watermark {worst:.0} s; most symbols behind at one check {most_behind}"
        ),
        "held at every check",
        n > 0 && held == n,
    );
    let reads: Vec<f64> = live
        .checks
        .iter()
        .map(|c| c.request.as_secs_f64() * 1e3)
        .collect();
    if !reads.is_empty() {
        push_row(
            rows,
            format!(
                "GET /api/progress ({} rows)",
                thousands(live.symbols as f64 * 6.0)
            ),
            format!(
                "{:.0} ms mean, {:.0} ms max",
                reads.iter().sum::<f64>() / reads.len() as f64,
                reads.iter().copied().fold(0.0, f64::max)
            ),
        );
    }
    push_row(
        rows,
        "ohlcd CPU over the load (utime + stime)",
        format!(
            "{:.1} s in {load:.0} s = {:.0} % of one core",
            live.ohlcd_cpu_secs,
            100.0 * live.ohlcd_cpu_secs / load
        ),
    );
    if let Some(i) = live.influxd_cpu_secs {
        push_row(
            rows,
            "influxd CPU over the load",
            format!("{i:.1} s = {:.0} % of one core", 100.0 * i / load),
        );
    }
    if !live.ticks.is_empty() {
        let mut t = live.ticks.clone();
        t.sort_by(f64::total_cmp);
        push_row(
            rows,
            "ticks with work during the load (\"tick done\" secs)",
            format!(
                "{} ticks: median {:.2} s, max {:.2} s",
                t.len(),
                t[t.len() / 2],
                t[t.len() - 1]
            ),
        );
    }
    if let Some(m) = &live.metrics {
        let ticks = delta(m, "ohlcd_tick_duration_seconds_count");
        if ticks > 0.0 {
            push_row(
                rows,
                "ticks during the load (ohlcd_tick_duration_seconds)",
                format!(
                    "{ticks:.0} ticks, mean {:.3} s, each ≤ {} s",
                    delta(m, "ohlcd_tick_duration_seconds_sum") / ticks,
                    bucket_bound(m, "ohlcd_tick_duration_seconds", "")
                ),
            );
        }
        let route = "{route=\"/api/trades\"}";
        let posts = delta(
            m,
            &format!("ohlcd_http_request_duration_seconds_count{route}"),
        );
        if posts > 0.0 {
            push_row(
                rows,
                "POST /api/trades latency (ohlcd_http_request_duration_seconds)",
                format!(
                    "{posts:.0} requests, mean {:.1} ms, each ≤ {} s",
                    1e3 * delta(
                        m,
                        &format!("ohlcd_http_request_duration_seconds_sum{route}")
                    ) / posts,
                    bucket_bound(m, "ohlcd_http_request_duration_seconds", route)
                ),
            );
        }
    }
    if let (Some(first), Some(last)) = (live.checks.first(), live.checks.last()) {
        let most = live.checks.iter().map(|c| c.rss_kb).max().unwrap_or(0);
        push_row(
            rows,
            "ohlcd RSS at the checks: first / largest / last",
            format!(
                "{:.1} / {:.1} / {:.1} MB",
                mb(first.rss_kb),
                mb(most),
                mb(last.rss_kb)
            ),
        );
    }
    push_check(
        rows,
        format!(
            "peak RSS of ohlcd run, {} symbols",
            thousands(live.symbols as f64)
        ),
        format!("{:.1} MB", mb(live.ohlcd_peak_kb)),
        format!("≤ {RSS_TARGET_MB:.0} MB"),
        mb(live.ohlcd_peak_kb) <= RSS_TARGET_MB,
    );
    if let Some((ok, text)) = &live.candle_check {
        push_check(
            rows,
            "ohlcd 1m candles = InfluxDB GROUP BY time(1m), symbol",
            text.clone(),
            "equal",
            *ok,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_allowed_watermark_is_two_ticks_behind_the_horizon() {
        let minute = |m: i64| m * MINUTE_NS;
        // 12:00:25 − (10 s settle + 2 × 10 s) = 11:59:55, in minute 11:59.
        assert_eq!(lowest_allowed(minute(720) + 25 * NS), minute(719));
        // 12:00:35 − 30 s = 12:00:05, in minute 12:00.
        assert_eq!(lowest_allowed(minute(720) + 35 * NS), minute(720));
    }

    #[test]
    fn histogram_growth_is_read_from_two_scrapes() {
        let a = parse_metrics(
            "# TYPE t histogram\nt_bucket{le=\"0.1\"} 1\nt_bucket{le=\"1\"} 2\nt_bucket{le=\"+Inf\"} 2\nt_sum 0.6\nt_count 2\n",
        );
        let b = parse_metrics(
            "t_bucket{le=\"0.1\"} 1\nt_bucket{le=\"1\"} 4\nt_bucket{le=\"+Inf\"} 4\nt_sum 1.6\nt_count 4\n",
        );
        let m = (a, b);
        assert_eq!(delta(&m, "t_count"), 2.0);
        assert_eq!(bucket_bound(&m, "t", ""), "1");
    }

    #[test]
    fn tick_durations_are_read_from_the_log_within_the_window() {
        let log = "2026-01-01T00:00:05.000001Z  INFO ohlcd::engine: tick done symbols=5000 secs=\"0.512\"\n\
                   2026-01-01T00:00:15.000001Z  INFO ohlcd::engine: tick done symbols=5000 secs=\"1.250\"\n\
                   2026-01-01T00:00:25.000001Z  INFO ohlcd::engine: tick done symbols=5000 secs=\"9.000\"\n";
        let t = |s: &str| ohlcd::times::from_rfc3339(s).unwrap();
        assert_eq!(
            tick_secs(log, t("2026-01-01T00:00:00Z"), t("2026-01-01T00:00:20Z")),
            vec![0.512, 1.25]
        );
    }
}

//! The load that runs through the faults: ingest clients posting trades
//! (live, and late by minutes to days) and retrying every 5xx and connection
//! error with the same trades, a writer putting trades straight into
//! InfluxDB, and chart clients on `/udf/history` and `/api/live`.
//!
//! Answers are checked as they come only for what must hold even mid-fault:
//! a well-formed trade batch is never refused with a 4xx, and every chart
//! answer or live bar that is given is well-formed. Whether the numbers are
//! right is the verdict's business, after the faults.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ohlcd::ingest::{NewTrade, encode_trades};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::ledger::{Ledger, Path};
use super::oracle::Window;

const NS: i64 = 1_000_000_000;

/// Counters of the load, shared by every client.
#[derive(Debug, Default)]
pub(super) struct LoadStats {
    pub api_batches: AtomicU64,
    pub api_acked: AtomicU64,
    /// Trades the harness stamped minutes to days back, acknowledged.
    pub api_late_acked: AtomicU64,
    /// Trades ohlcd answered as late (behind a 1m watermark).
    pub api_late_reported: AtomicU64,
    /// Attempts after the first, over all batches.
    pub api_retries: AtomicU64,
    pub api_5xx: AtomicU64,
    pub api_conn_errors: AtomicU64,
    /// Batches never acknowledged (given up after the run).
    pub api_unacked: AtomicU64,
    /// Batches of impatient clients, not retried after a failure (their
    /// trades may or may not be stored: either way the candles must agree).
    pub api_abandoned: AtomicU64,
    pub direct_acked: AtomicU64,
    pub direct_failed: AtomicU64,
    pub chart_ok: AtomicU64,
    pub chart_no_data: AtomicU64,
    pub chart_5xx: AtomicU64,
    pub chart_conn_errors: AtomicU64,
    pub live_streams: AtomicU64,
    pub live_bars: AtomicU64,
    pub live_failures: AtomicU64,
    pub live_broken: AtomicU64,
    pub live_silent: AtomicU64,
    /// Protocol violations (a 4xx for valid trades, a malformed answer).
    pub problems: std::sync::Mutex<Vec<String>>,
    pub problem_count: AtomicU64,
}

impl LoadStats {
    fn problem(&self, p: String) {
        self.problem_count.fetch_add(1, Ordering::Relaxed);
        let mut list = self.problems.lock().expect("not poisoned");
        if list.len() < 20 {
            crate::say!("load problem: {p}");
            list.push(p);
        }
    }
}

/// What every client shares.
pub(super) struct Load {
    pub ledger: Arc<Ledger>,
    pub stats: LoadStats,
    /// The daemons' base URLs.
    pub daemons: Vec<String>,
    /// influxd itself (not the proxy), for the direct writer.
    pub influx_url: String,
    pub database: String,
    /// No new trades or requests once set.
    pub stop: AtomicBool,
    /// Batches still unacknowledged are given up once set.
    pub give_up: AtomicBool,
    /// Trades may be stamped back to here (Unix ms), the start of the history.
    pub history_start_ms: i64,
    /// API trades per second, all clients together.
    pub api_rate: f64,
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Load {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A trade time: mostly now, sometimes (`late`) minutes to days back,
    /// log-uniformly, never before the history.
    fn trade_time(&self, rng: &mut ChaCha8Rng, late: bool) -> i64 {
        let now = now_ms();
        if !late {
            return now - rng.random_range(0..1_500);
        }
        let oldest = (now - self.history_start_ms - 60_000).max(120_000) as f64;
        let age = (rng.random_range(60_000f64.ln()..oldest.ln())).exp() as i64;
        now - age
    }
}

fn trade_json(t: &NewTrade) -> Value {
    json!({
        "symbol": t.symbol,
        "price": t.price,
        "amount": t.amount,
        "side": t.side.as_str(),
        "timestamp": t.time_ms,
        "id": t.id,
    })
}

/// One ingest client: batches of 1–10 trades, each posted to a random
/// daemon until one acknowledges it, retrying 5xx and connection errors
/// with the very same body. One batch in ten is impatient: sent once, and
/// left as it is if that fails.
pub(super) async fn api_client(load: Arc<Load>, clients: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let per_client = (load.api_rate / clients as f64).max(0.1);
    let symbols = load.ledger.symbols.len();
    while !load.stopped() {
        let started = Instant::now();
        let n = rng.random_range(1..=10usize);
        let late: Vec<bool> = (0..n).map(|_| rng.random_bool(0.15)).collect();
        let trades: Vec<NewTrade> = late
            .iter()
            .map(|l| {
                let time = load.trade_time(&mut rng, *l);
                let s = rng.random_range(0..symbols);
                load.ledger.make(&mut rng, s, time)
            })
            .collect();
        load.ledger.record(&trades, Path::Api, &late);
        let body =
            serde_json::to_vec(&trades.iter().map(trade_json).collect::<Vec<_>>()).expect("JSON");
        load.stats.api_batches.fetch_add(1, Ordering::Relaxed);
        let patient = rng.random_bool(0.9);
        let mut attempt = 0u32;
        loop {
            if attempt > 0 {
                load.stats.api_retries.fetch_add(1, Ordering::Relaxed);
            }
            let url = format!(
                "{}/api/trades",
                load.daemons[rng.random_range(0..load.daemons.len())]
            );
            let sent = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    let v: Value = resp.json().await.unwrap_or_default();
                    if v["accepted"].as_u64() != Some(n as u64) {
                        load.stats
                            .problem(format!("POST {url}: {n} trades answered {v}"));
                    }
                    load.ledger.ack(&trades);
                    load.stats.api_acked.fetch_add(n as u64, Ordering::Relaxed);
                    let late_n = late.iter().filter(|l| **l).count() as u64;
                    load.stats
                        .api_late_acked
                        .fetch_add(late_n, Ordering::Relaxed);
                    load.stats
                        .api_late_reported
                        .fetch_add(v["late"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    break;
                }
                Ok(resp) if resp.status().is_server_error() || resp.status() == 429 => {
                    load.stats.api_5xx.fetch_add(1, Ordering::Relaxed);
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    load.stats
                        .problem(format!("POST {url} refused valid trades: {status} {text}"));
                    break;
                }
                Err(_) => {
                    load.stats.api_conn_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !patient {
                load.stats.api_abandoned.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if load.give_up.load(Ordering::Relaxed) {
                load.stats.api_unacked.fetch_add(1, Ordering::Relaxed);
                break;
            }
            attempt += 1;
            let backoff = 100u64 << attempt.min(4);
            tokio::time::sleep(Duration::from_millis(
                backoff + rng.random_range(0..=backoff),
            ))
            .await;
        }
        let pace = Duration::from_secs_f64(n as f64 / per_client);
        if let Some(rest) = pace.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

/// Writes live trades straight into InfluxDB (not through ohlcd, nor the
/// proxy), a few every 100–300 ms; a failed write is not retried (its
/// trades may or may not be stored).
pub(super) async fn direct_writer(load: Arc<Load>, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    let url = format!("{}/write", load.influx_url);
    let symbols = load.ledger.symbols.len();
    while !load.stopped() {
        let n = rng.random_range(1..=5usize);
        let trades: Vec<NewTrade> = (0..n)
            .map(|_| {
                let time = load.trade_time(&mut rng, false);
                let s = rng.random_range(0..symbols);
                load.ledger.make(&mut rng, s, time)
            })
            .collect();
        load.ledger.record(&trades, Path::Direct, &vec![false; n]);
        let ok = http
            .post(&url)
            .query(&[("db", load.database.as_str()), ("precision", "ns")])
            .body(encode_trades(&trades))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            load.ledger.ack(&trades);
            load.stats
                .direct_acked
                .fetch_add(n as u64, Ordering::Relaxed);
        } else {
            load.stats
                .direct_failed
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
    }
}

/// Resolutions the chart clients ask for.
const CHART_RESOLUTIONS: [&str; 10] = ["1", "3", "5", "15", "30", "60", "120", "240", "1D", "1W"];

/// One chart client: `/udf/history` of a random symbol and resolution at a
/// random daemon, as TradingView asks (a range, or the last bars with
/// `countback`), every 100–500 ms.
pub(super) async fn chart_client(load: Arc<Load>, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client");
    while !load.stopped() {
        let base = &load.daemons[rng.random_range(0..load.daemons.len())];
        let symbol = &load.ledger.symbols[rng.random_range(0..load.ledger.symbols.len())];
        let res = CHART_RESOLUTIONS[rng.random_range(0..CHART_RESOLUTIONS.len())];
        let to = now_ms() / 1000 + 60;
        let (query, from) = if rng.random_bool(0.5) {
            (format!("to={to}&countback=2"), None)
        } else {
            let from = to - rng.random_range(600..3 * 86_400);
            (format!("from={from}&to={to}"), Some(from))
        };
        let url = format!("{base}/udf/history?symbol={symbol}&resolution={res}&{query}");
        match http.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                Ok(v) => match check_history(&v, res, from, to) {
                    Ok(true) => _ = load.stats.chart_ok.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => _ = load.stats.chart_no_data.fetch_add(1, Ordering::Relaxed),
                    Err(e) => load.stats.problem(format!("GET {url}: {e}")),
                },
                Err(_) => _ = load.stats.chart_conn_errors.fetch_add(1, Ordering::Relaxed),
            },
            Ok(resp) if resp.status().is_server_error() => {
                load.stats.chart_5xx.fetch_add(1, Ordering::Relaxed);
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                load.stats.problem(format!("GET {url}: {status} {text}"));
            }
            Err(_) => _ = load.stats.chart_conn_errors.fetch_add(1, Ordering::Relaxed),
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
    }
}

/// Checks the shape of a 200 answer of `/udf/history`: `Ok(true)` for bars,
/// `Ok(false)` for no_data, `Err` for anything malformed.
pub(super) fn check_history(
    v: &Value,
    res: &str,
    from: Option<i64>,
    to: i64,
) -> Result<bool, String> {
    match v["s"].as_str() {
        Some("no_data") => return Ok(false),
        Some("ok") => {}
        _ => return Err(format!("not ok/no_data: {v}")),
    }
    let col = |k: &str| -> Result<Vec<f64>, String> {
        v[k].as_array()
            .ok_or_else(|| format!("no array {k}"))?
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| format!("{k}: {x} is not a number"))
            })
            .collect()
    };
    let (t, o, h, l, c, vol) = (
        col("t")?,
        col("o")?,
        col("h")?,
        col("l")?,
        col("c")?,
        col("v")?,
    );
    let n = t.len();
    if n == 0 || [&o, &h, &l, &c, &vol].iter().any(|a| a.len() != n) {
        return Err(format!("columns of unequal length or empty: {v}"));
    }
    let window = Window::of_udf(res).ok_or_else(|| format!("resolution {res}?"))?;
    for i in 0..n {
        let ts = t[i] as i64;
        if i > 0 && t[i - 1] >= t[i] {
            return Err(format!("times not increasing at {ts}"));
        }
        if window.start(ts * NS) != ts * NS {
            return Err(format!("bar {ts} not aligned to {res}"));
        }
        if ts >= to || from.is_some_and(|f| ts < f) {
            return Err(format!("bar {ts} outside [{from:?}, {to})"));
        }
        if !(l[i] <= o[i].min(c[i]) && h[i] >= o[i].max(c[i]) && l[i] > 0.0 && vol[i] > 0.0) {
            return Err(format!(
                "bar {ts}: o {} h {} l {} c {} v {}",
                o[i], h[i], l[i], c[i], vol[i]
            ));
        }
    }
    Ok(true)
}

/// Resolutions the live clients follow.
const LIVE_RESOLUTIONS: [&str; 4] = ["1", "5", "60", "1D"];

/// One live client: a `/api/live` stream of a random symbol and resolution
/// at a random daemon, held 5–40 s (or until it breaks), then another.
pub(super) async fn live_client(load: Arc<Load>, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .build()
        .expect("HTTP client");
    while !load.stopped() {
        let base = &load.daemons[rng.random_range(0..load.daemons.len())];
        let symbol = &load.ledger.symbols[rng.random_range(0..load.ledger.symbols.len())];
        let res = LIVE_RESOLUTIONS[rng.random_range(0..LIVE_RESOLUTIONS.len())];
        let url = format!("{base}/api/live?symbol={symbol}&resolution={res}");
        let hold = Duration::from_millis(rng.random_range(5_000..40_000));
        follow(&load, &http, &url, res, hold).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_000))).await;
    }
}

/// Reads one live stream for at most `hold`, checking every bar.
async fn follow(load: &Load, http: &reqwest::Client, url: &str, res: &str, hold: Duration) {
    let stats = &load.stats;
    let resp = match http.get(url).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) if r.status().is_server_error() => {
            stats.live_broken.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(r) => {
            let status = r.status();
            stats.problem(format!("GET {url}: {status}"));
            return;
        }
        Err(_) => {
            stats.live_broken.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    stats.live_streams.fetch_add(1, Ordering::Relaxed);
    let window = Window::of_udf(res).expect("listed resolution");
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let until = Instant::now() + hold;
    while Instant::now() < until && !load.stopped() {
        // Idle streams carry a comment every 15 s.
        let next = tokio::time::timeout(Duration::from_secs(45), body.next()).await;
        let chunk = match next {
            Err(_) => {
                stats.live_silent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(None) | Ok(Some(Err(_))) => {
                stats.live_broken.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Some(Ok(c))) => c,
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = if e.trim() == "bar" {
                        "bar"
                    } else if e.trim() == "failure" {
                        "failure"
                    } else {
                        "other"
                    };
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            match event {
                "bar" => match check_live_bar(&data, window) {
                    Ok(()) => _ = stats.live_bars.fetch_add(1, Ordering::Relaxed),
                    Err(e) => stats.problem(format!("{url}: {e}")),
                },
                "failure" => {
                    stats.live_failures.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}

/// A live bar's JSON is a well-formed, aligned candle.
pub(super) fn check_live_bar(data: &str, window: Window) -> Result<(), String> {
    let v: Value = serde_json::from_str(data).map_err(|e| format!("bar {data:?}: {e}"))?;
    let f = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| format!("bar without {k}: {data}"))
    };
    let time = v["time"]
        .as_i64()
        .ok_or_else(|| format!("bar without time: {data}"))?;
    let (o, h, l, c, vol) = (f("open")?, f("high")?, f("low")?, f("close")?, f("volume")?);
    let trades = v["trades"].as_i64().unwrap_or(0);
    if window.start(time * NS) != time * NS {
        return Err(format!("bar {time} not aligned: {data}"));
    }
    if !(l <= o.min(c) && h >= o.max(c) && l > 0.0 && vol > 0.0 && trades >= 1) {
        return Err(format!("malformed bar: {data}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_answer_must_be_aligned_ordered_and_consistent() {
        let good = json!({"s":"ok","t":[60,120],"o":[1.0,2.0],"h":[2.0,2.0],"l":[1.0,1.5],"c":[2.0,1.5],"v":[1.0,0.5]});
        assert_eq!(check_history(&good, "1", Some(60), 180), Ok(true));
        assert_eq!(
            check_history(&json!({"s":"no_data"}), "1", None, 180),
            Ok(false)
        );
        let unaligned =
            json!({"s":"ok","t":[90],"o":[1.0],"h":[1.0],"l":[1.0],"c":[1.0],"v":[1.0]});
        assert!(check_history(&unaligned, "1", None, 180).is_err());
        let outside = json!({"s":"ok","t":[180],"o":[1.0],"h":[1.0],"l":[1.0],"c":[1.0],"v":[1.0]});
        assert!(check_history(&outside, "1", None, 180).is_err());
        let high_low = json!({"s":"ok","t":[60],"o":[1.0],"h":[0.5],"l":[1.0],"c":[1.0],"v":[1.0]});
        assert!(check_history(&high_low, "1", None, 180).is_err());
        let short =
            json!({"s":"ok","t":[60,120],"o":[1.0],"h":[1.0],"l":[1.0],"c":[1.0],"v":[1.0]});
        assert!(check_history(&short, "1", None, 180).is_err());
    }

    #[test]
    fn a_live_bar_must_be_aligned_and_consistent() {
        let m = Window::Fixed(60 * NS);
        let bar = r#"{"time":120,"open":1,"high":2,"low":1,"close":2,"volume":1,"quote_volume":1,"trades":2,"buy_volume":0,"closed":false}"#;
        assert_eq!(check_live_bar(bar, m), Ok(()));
        assert!(check_live_bar(&bar.replace("120", "130"), m).is_err());
        assert!(check_live_bar(&bar.replace("\"trades\":2", "\"trades\":0"), m).is_err());
        assert!(check_live_bar("{", m).is_err());
    }
}

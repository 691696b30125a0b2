//! The serving shape (`--serve`): how many chart requests `ohlcd run` answers.
//!
//! After the data set is generated and backfilled, `ohlcd run` starts on the
//! caught-up progress file. Workers then ask `/udf/history` for the 300 bars
//! before `now` (`countback=300`, as a TradingView chart does when it opens)
//! of every symbol in turn at a mix of stored and re-aggregated resolutions,
//! at rising concurrency, for a fixed time per level. The same requests go to
//! InfluxDB as the query a chart backend without ohlcd would send (InfluxQL
//! `GROUP BY time()` over the raw trades of the same range), at the same
//! concurrency, so both sides are measured on the same machine in one run.
//!
//! The load is bounded (seconds per level, at most 256 workers, loopback
//! only). Before the load, ohlcd's bars of one symbol at every resolution of
//! the mix are checked against InfluxDB's.
//!
//! `--serve-mix` sets the resolutions (seconds too, e.g. `1,1S,5S,15S,30S`),
//! `--serve-split` loads each resolution of the mix alone (one row each, side
//! by side), and `--serve-tz ZONE` then runs the same loads on a daemon whose
//! bars are counted in ZONE (`datafeed.timezone`), beside UTC.
//! `--serve-at-end` asks for the bars before the data's end instead of now:
//! a chart on the newest trades, where seconds bars have trades.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::future::join_all;
use serde_json::Value;

use crate::bench::Bench;
use crate::daemon::start_daemon;
use crate::procs::vm_hwm_kb;
use crate::reference::same_candle;
use crate::report::{Results, Row, mb, ms, percentile, push_check, push_row, thousands};
use crate::{NS, say};

/// Bars per request, as a chart opening asks.
pub const COUNTBACK: i64 = 300;
/// One resolution of the mix: UDF notation, InfluxQL interval, bar seconds.
pub type MixEntry = (String, String, i64);

/// The mix of `--serve-mix` (UDF notation; by default the six stored
/// resolutions and two that ohlcd re-aggregates). Weeks and months have no
/// InfluxQL interval to check them against.
pub fn parse_mix(list: &[String]) -> Result<Vec<MixEntry>> {
    use ohlcd::chart::ChartResolution;
    list.iter()
        .map(|udf| {
            let (interval, secs) = match udf.parse::<ChartResolution>() {
                Ok(ChartResolution::Seconds(n)) => (format!("{n}s"), i64::from(n)),
                Ok(ChartResolution::Minutes(n)) => (format!("{n}m"), 60 * i64::from(n)),
                Ok(ChartResolution::Days(n)) => (format!("{n}d"), 86_400 * i64::from(n)),
                _ => bail!("--serve-mix: {udf:?} is not seconds, minutes or days"),
            };
            Ok((udf.clone(), interval, secs))
        })
        .collect()
}
/// Most workers one level may use.
pub const MAX_CONCURRENCY: usize = 256;
/// Goals of the issue: requests/s at a p99 no higher than this.
const GOAL_RPS: f64 = 2_000.0;
const GOAL_P99: Duration = Duration::from_millis(50);

/// One side (ohlcd or InfluxDB) at one concurrency.
#[derive(Debug, Clone)]
pub struct LoadStats {
    pub ok: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl LoadStats {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn cell(&self) -> String {
        let mut s = format!(
            "{} req/s, p50 {:.1} ms, p99 {:.1} ms ({} requests",
            thousands(self.rps()),
            ms(self.p50),
            ms(self.p99),
            thousands(self.ok as f64)
        );
        if self.errors > 0 {
            s.push_str(&format!(", {} errors", self.errors));
        }
        s.push(')');
        s
    }
}

/// One concurrency level, both sides.
#[derive(Debug, Clone)]
pub struct Level {
    pub concurrency: usize,
    /// What was asked: `mix` (the whole mix in UTC), or one resolution and
    /// zone.
    pub label: String,
    pub ohlcd: LoadStats,
    pub influx: Option<LoadStats>,
}

/// What the serving shape measured.
#[derive(Debug, Clone, Default)]
pub struct ServeResult {
    pub symbols: usize,
    pub levels: Vec<Level>,
    /// Bars of the checked symbol that differed from InfluxDB's, per resolution.
    pub mismatches: Vec<String>,
    /// Peak RSS of `ohlcd run` over the whole load, kB.
    pub peak_kb: Option<u64>,
}

/// The status field of a `/udf/history` answer (the bars are skipped).
#[derive(serde::Deserialize)]
struct Status {
    s: String,
}

/// The `i`-th request of the mix: a symbol and a resolution, spread so that
/// neighbouring requests differ in both.
fn pick<'a>(symbols: &'a [String], mix: &'a [MixEntry], i: usize) -> (&'a str, &'a MixEntry) {
    let res = &mix[i % mix.len()];
    let sym = &symbols[(i / mix.len() + i) % symbols.len()];
    (sym, res)
}

/// The on-the-fly InfluxQL for `countback` bars of `interval` before `to_ns`.
fn influx_query(symbol: &str, interval: &str, len: i64, to_ns: i64) -> String {
    let start = to_ns - COUNTBACK * len * NS;
    format!(
        "SELECT first(price), max(price), min(price), last(price), sum(amount) FROM trades \
         WHERE symbol = '{symbol}' AND time >= {start} AND time < {to_ns} GROUP BY time({interval}) fill(none)"
    )
}

/// Runs the serving shape (data and backfill are done by the caller).
pub async fn run(b: &mut Bench, r: &mut Results) -> Result<()> {
    let db = b.db.clone();
    let mut result = ServeResult {
        symbols: b.symbols().len(),
        ..ServeResult::default()
    };
    let mix = parse_mix(&b.args.serve_mix)?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(MAX_CONCURRENCY)
        .build()?;
    let zones: Vec<Option<String>> = std::iter::once(None)
        .chain(b.args.serve_tz.clone().map(Some))
        .collect();
    for zone in zones {
        let env: Vec<(&str, String)> = zone
            .iter()
            .map(|z| ("OHLCD_DATAFEED__TIMEZONE", z.clone()))
            .collect();
        let (mut proc, base, _) = start_daemon(b, &db, &env).await?;
        let pid = proc.pid();
        let outcome = load_daemon(b, &mut result, &client, &base, &mix, zone.as_deref()).await;
        if let Some(kb) = vm_hwm_kb(pid) {
            result.peak_kb = Some(result.peak_kb.unwrap_or(0).max(kb));
        }
        b.scan_log(&proc);
        match proc.terminate(Duration::from_secs(30)).await {
            Ok(status) if !status.success() => b.issue(format!("ohlcd run exited with {status}")),
            Ok(_) => {}
            Err(e) => b.issue(format!("ohlcd run did not stop: {e:#}")),
        }
        if let Err(e) = outcome {
            r.serve = Some(result);
            return Err(e);
        }
    }
    r.serve = Some(result);
    Ok(())
}

/// The loads on one daemon (bars counted in `zone`, UTC if none): at every
/// concurrency level, the whole mix or (`--serve-split`) each resolution
/// alone; InfluxDB on the fly beside the whole mix in UTC.
async fn load_daemon(
    b: &mut Bench,
    result: &mut ServeResult,
    client: &reqwest::Client,
    base: &str,
    mix: &[MixEntry],
    zone: Option<&str>,
) -> Result<()> {
    if zone.is_none() {
        result.mismatches = check_bars(b, client, base, mix).await?;
    }
    let parts: Vec<(String, Vec<MixEntry>)> = if b.args.serve_split {
        mix.iter().map(|m| (m.0.clone(), vec![m.clone()])).collect()
    } else {
        vec![("mix".to_string(), mix.to_vec())]
    };
    for &c in &b.args.serve_concurrency.clone() {
        for (label, part) in &parts {
            let label = match zone {
                Some(z) => format!("{label} in {z}"),
                None => label.clone(),
            };
            say!(
                "load: {c} workers on ohlcd, {label}, for {} s ...",
                b.args.serve_secs
            );
            let at_end = b.args.serve_at_end.then_some(b.to / NS);
            let ohlcd = load(b, c, part, |sym, udf, _, _| {
                let to = at_end.unwrap_or_else(|| chrono::Utc::now().timestamp());
                let url = format!(
                    "{base}/udf/history?symbol={sym}&resolution={udf}&to={to}&countback={COUNTBACK}"
                );
                let client = client.clone();
                async move {
                    let resp = client.get(&url).send().await?;
                    let status = resp.status();
                    let body = resp.bytes().await?;
                    let answered = serde_json::from_slice::<Status>(&body).map(|a| a.s);
                    ensure!(
                        status.is_success() && answered.as_deref().is_ok_and(|s| s == "ok"),
                        "GET {url}: {status} {}",
                        String::from_utf8_lossy(&body[..body.len().min(120)])
                    );
                    Ok(())
                }
            })
            .await;
            say!("  ohlcd: {}", ohlcd.cell());
            let influx = if b.args.runs("influx-load") && zone.is_none() && !b.args.serve_split {
                say!("load: {c} workers on InfluxDB on the fly ...");
                let influx = b.influx.fail_fast(30, 0);
                let s = load(b, c, part, |sym, _, interval, len| {
                    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
                    let q = influx_query(sym, interval, len, now_ns);
                    let influx = influx.clone();
                    async move {
                        influx.query_json(&q).await?;
                        Ok(())
                    }
                })
                .await;
                say!("  InfluxDB: {}", s.cell());
                Some(s)
            } else {
                None
            };
            result.levels.push(Level {
                concurrency: c,
                label,
                ohlcd,
                influx,
            });
        }
    }
    Ok(())
}

/// `concurrency` workers sending requests made by `make` (symbol, UDF
/// resolution, InfluxQL interval, seconds) in the order of the mix, for
/// `--serve-secs`; a worker's next request starts when its last one ended.
async fn load<F, Fut>(b: &Bench, concurrency: usize, mix: &[MixEntry], make: F) -> LoadStats
where
    F: Fn(&str, &str, &str, i64) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let symbols = b.symbols().to_vec();
    let next = Rc::new(Cell::new(0usize));
    let deadline = Instant::now() + Duration::from_secs(b.args.serve_secs);
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let next = next.clone();
        let symbols = &symbols;
        let make = &make;
        async move {
            let mut times = Vec::new();
            let mut errors = 0usize;
            let mut first_error = None;
            while Instant::now() < deadline {
                let i = next.get();
                next.set(i + 1);
                let (sym, (udf, interval, len)) = pick(symbols, mix, i);
                let t = Instant::now();
                match make(sym, udf, interval, *len).await {
                    Ok(()) => times.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (times, errors, first_error)
        }
    });
    let outcomes = join_all(workers).await;
    let elapsed = started.elapsed();
    let mut times = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for (t, e, f) in outcomes {
        times.extend(t);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    LoadStats {
        ok: times.len(),
        errors,
        first_error,
        elapsed,
        p50: percentile(&mut times, 0.50),
        p99: percentile(&mut times, 0.99),
    }
}

/// ohlcd's 300 bars of the first symbol at every resolution of the mix,
/// against InfluxDB's `GROUP BY time()` of the same range (OHLC and volume).
async fn check_bars(
    b: &Bench,
    client: &reqwest::Client,
    base: &str,
    mix: &[MixEntry],
) -> Result<Vec<String>> {
    let symbol = b.symbols()[0].clone();
    let to_s = b.to / NS;
    let mut out = Vec::new();
    for (udf, interval, len) in mix.iter().cloned() {
        let url = format!(
            "{base}/udf/history?symbol={symbol}&resolution={udf}&to={to_s}&countback={COUNTBACK}"
        );
        let v: Value = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("GET {url}: not JSON"))?;
        if v["s"] != "ok" {
            bail!("GET {url} answered {v}");
        }
        let q = influx_query(&symbol, &interval, len, b.to);
        let want = b
            .influx
            .query_json(&q)
            .await
            .context("InfluxDB on the fly")?;
        let rows = want["series"][0]["values"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // countback = 300 bars; InfluxDB's range holds 300 windows, some of
        // which may be empty: compare the bars both sides have in that range.
        let start_s = to_s - COUNTBACK * len;
        let t: Vec<i64> = v["t"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        let (mut in_range, mut matched, mut j) = (0usize, 0usize, 0usize);
        for (k, &ts) in t.iter().enumerate() {
            if ts < start_s {
                continue;
            }
            in_range += 1;
            while j < rows.len() && rows[j][0].as_i64().unwrap_or(i64::MIN) / NS < ts {
                j += 1;
            }
            let Some(row) = rows.get(j) else { continue };
            let field = |name: &str| v[name][k].as_f64().unwrap_or(f64::NAN);
            let ours = [
                field("o"),
                field("h"),
                field("l"),
                field("c"),
                field("v"),
                0.0,
            ];
            let col = |i: usize| row[i].as_f64().unwrap_or(f64::NAN);
            let theirs = [col(1), col(2), col(3), col(4), col(5), 0.0];
            if row[0].as_i64().map(|x| x / NS) == Some(ts) && same_candle(&ours, &theirs) {
                matched += 1;
            }
        }
        if matched != in_range || matched != rows.len() {
            out.push(format!(
                "{symbol} at {udf}: {matched} bars equal of ohlcd's {in_range} and InfluxDB's {}",
                rows.len()
            ));
        }
    }
    Ok(out)
}

/// The serving shape's rows of the table.
pub fn rows(b: &Bench, s: &ServeResult, rows: &mut Vec<Row>) {
    push_row(
        rows,
        "data set",
        format!(
            "{} trades over {} symbols",
            thousands(b.args.trades as f64),
            s.symbols
        ),
    );
    push_row(
        rows,
        "request mix",
        format!(
            "/udf/history countback={COUNTBACK} to={}, resolutions {}, symbols in turn, {} s per level",
            if b.args.serve_at_end {
                "the data's end"
            } else {
                "now"
            },
            b.args.serve_mix.join(" "),
            b.args.serve_secs
        ),
    );
    push_check(
        rows,
        "bars of the first symbol at every resolution = InfluxDB GROUP BY",
        if s.mismatches.is_empty() {
            "equal".to_string()
        } else {
            s.mismatches.join("; ")
        },
        "equal",
        s.mismatches.is_empty(),
    );
    for l in &s.levels {
        let met = l.ohlcd.errors == 0 && l.ohlcd.rps() >= GOAL_RPS && l.ohlcd.p99 <= GOAL_P99;
        if l.label == "mix" {
            push_check(
                rows,
                format!("{} workers: ohlcd", l.concurrency),
                l.ohlcd.cell(),
                format!("≥ {GOAL_RPS:.0} req/s at p99 ≤ {} ms", GOAL_P99.as_millis()),
                met,
            );
        } else {
            push_row(
                rows,
                format!("{} workers: ohlcd, {}", l.concurrency, l.label),
                l.ohlcd.cell(),
            );
        }
        if let Some(i) = &l.influx {
            push_row(
                rows,
                format!("{} workers: InfluxDB on the fly", l.concurrency),
                i.cell(),
            );
        }
        for (who, st) in [("ohlcd", Some(&l.ohlcd)), ("InfluxDB", l.influx.as_ref())] {
            if let Some(e) = st.and_then(|x| x.first_error.as_ref()) {
                push_row(
                    rows,
                    format!("{} workers: first {who} error", l.concurrency),
                    e,
                );
            }
        }
    }
    if let Some(kb) = s.peak_kb {
        push_row(
            rows,
            "ohlcd run peak RSS over the load",
            format!("{:.1} MB", mb(kb)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_visits_every_symbol_at_every_resolution() {
        let symbols: Vec<String> = (0..5).map(|i| format!("S{i}")).collect();
        let names: Vec<String> = ["1", "5", "15", "60", "240", "1D", "30", "120"]
            .map(String::from)
            .to_vec();
        let mix = parse_mix(&names).unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..symbols.len() * mix.len() * 2 {
            let (s, r) = pick(&symbols, &mix, i);
            seen.insert((s.to_string(), r.0.clone()));
        }
        assert_eq!(seen.len(), symbols.len() * mix.len());
        // Neighbours differ in resolution.
        assert_ne!(pick(&symbols, &mix, 0).1.0, pick(&symbols, &mix, 1).1.0);
        let seconds = parse_mix(&["1S".to_string(), "240".to_string()]).unwrap();
        assert_eq!(seconds[0], ("1S".to_string(), "1s".to_string(), 1));
        assert_eq!(seconds[1].1, "240m");
        assert!(parse_mix(&["1W".to_string()]).is_err());
    }

    #[test]
    fn the_influx_query_covers_exactly_countback_windows() {
        let q = influx_query("S", "1h", 3_600, 1_000 * 3_600 * NS);
        assert!(q.contains(&format!("time >= {}", 700 * 3_600 * NS)));
        assert!(q.contains(&format!("time < {}", 1_000 * 3_600 * NS)));
        assert!(q.contains("GROUP BY time(1h)"));
    }
}

//! What was measured, and the table of results: printed to stdout, written as
//! Markdown with a header that describes the machine and the exact command.

use std::fmt::Write as _;
use std::time::Duration;

use crate::RESOLUTIONS;
use crate::bench::{Backfill, Bench, Shape};
use crate::live::LiveResult;
use crate::procs::{Measured, loadavg};

/// Peak RSS target of backfill and of the daemon.
pub(crate) const RSS_TARGET_MB: f64 = 64.0;
/// Most a caught-up pass with nothing new may take.
pub(crate) const CAUGHT_UP_TARGET_SECS: f64 = 0.5;
/// Trades per symbol and day from which data counts as dense (ratio goal 0.75).
const DENSE_PER_SYMBOL_DAY: f64 = 200_000.0;

/// Everything measured in one run.
#[derive(Default)]
pub(crate) struct Results {
    pub generate: Option<Measured>,
    pub backfill: Option<Backfill>,
    /// InfluxDB 3: the backfill with `influx.no_sync` (best of two).
    pub backfill_no_sync: Option<Backfill>,
    pub group_by: Vec<(&'static str, Duration, u64)>,
    pub candle_check: Option<(bool, String)>,
    pub raw: Vec<RawPull>,
    pub caught_up_passes: Vec<Backfill>,
    /// (trades, symbols, peak kB).
    pub rss: Vec<(u64, usize, u64)>,
    pub caught_up: Option<Duration>,
    /// The backfill's candles written alone: (candles, time).
    pub write_alone: Option<(u64, Duration)>,
    pub latency: Vec<Latency>,
    pub h1_30d: Option<Latency>,
    pub ingest: Option<Ingest>,
    pub live: Option<LiveResult>,
    pub serve: Option<crate::serve::ServeResult>,
    pub schemas: Option<crate::schemas::SchemaResult>,
}

impl Results {
    /// Keeps the best of the rounds of each raw pull.
    pub(crate) fn keep_best_raw_pulls(&mut self) {
        let mut best: Vec<RawPull> = Vec::new();
        for pull in self.raw.drain(..) {
            match best
                .iter_mut()
                .find(|p| p.format == pull.format && p.shape == pull.shape)
            {
                Some(p) if p.elapsed <= pull.elapsed => {}
                Some(p) => *p = pull,
                None => best.push(pull),
            }
        }
        self.raw = best;
    }
}

pub(crate) struct RawPull {
    pub format: &'static str,
    pub shape: &'static str,
    pub elapsed: Duration,
    pub bytes: u64,
    /// CPU seconds of the bench's own influxd during the pull.
    pub influxd_cpu_secs: Option<f64>,
}

pub(crate) struct Latency {
    pub udf: &'static str,
    pub bars: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub influx_bars: usize,
    pub influx_p50: Duration,
    pub influx_p99: Duration,
    pub influx_n: usize,
}

pub(crate) struct Ingest {
    pub trades: u64,
    pub batch: usize,
    pub api: Duration,
    pub write: Duration,
}

/// Nearest-rank percentile.
pub(crate) fn percentile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// kB (as in /proc) to MB (10^6 bytes).
pub(crate) fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

/// `1234567.8` → `1,234,568`.
pub(crate) fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A ratio: one decimal below 10, none above.
fn times_str(x: f64) -> String {
    if x < 10.0 {
        format!("×{x:.1}")
    } else {
        format!("×{x:.0}")
    }
}

/// This machine: CPU model, cores, memory in KiB.
pub(crate) fn machine() -> (String, usize, u64) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |s| s.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (model, cores, mem_kb)
}

pub(crate) fn machine_header(
    b: &Bench,
    influx_version: &str,
    ohlcd_version: &str,
    own: bool,
    now: &chrono::DateTime<chrono::Utc>,
    load_start: &str,
) -> String {
    let args = &b.args;
    let (model, nproc, mem_kb) = machine();
    let inherited: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OHLCD_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut h = String::new();
    let _ = writeln!(h, "# ohlcd end-to-end benchmark\n");
    let _ = writeln!(h, "- date: {} UTC", now.format("%Y-%m-%d %H:%M:%S"));
    let _ = writeln!(
        h,
        "- machine: {model}, nproc {nproc}, {:.1} GiB memory; load average (1/5/15 min) {load_start} at start, {} at end",
        mem_kb as f64 / 1024.0 / 1024.0,
        loadavg()
    );
    let _ = writeln!(
        h,
        "- InfluxDB {influx_version} ({})",
        if own {
            let state = if b.influx.generation() != ohlcd::influx::Generation::V1 {
                ""
            } else if args.cache_resident {
                "; generated trades left in its in-memory cache (--cache-resident)"
            } else {
                "; generated trades written to TSM files before any measurement, as history is"
            };
            format!("own influxd started by the bench on this machine{state}")
        } else {
            format!("external, {}", b.influx.url())
        }
    );
    let _ = writeln!(
        h,
        "- {ohlcd_version} ({}), default configuration",
        b.ohlcd.display()
    );
    let symbols = if args.symbols.len() > 4 {
        format!(
            "{} symbols ({} … {})",
            args.symbols.len(),
            args.symbols[0],
            args.symbols[args.symbols.len() - 1]
        )
    } else {
        format!("symbols {}", args.symbols.join(","))
    };
    if b.shape == Shape::Live {
        let _ = writeln!(
            h,
            "- data: {symbols}; load {} trades/s through POST /api/trades for {} s, database {}",
            thousands(args.live_rate as f64),
            args.live_secs,
            b.db
        );
    } else {
        let span = (b.to - b.from) as f64 / 3.6e12;
        let _ = writeln!(
            h,
            "- data: N = {} trades, {symbols}, {} ({} to {}), seed 42, database {}",
            thousands(args.trades as f64),
            if span < 48.0 {
                format!("{span:.0} hours")
            } else {
                format!("{:.0} days", span / 24.0)
            },
            ohlcd::times::to_rfc3339(b.from),
            ohlcd::times::to_rfc3339(b.to),
            b.db
        );
    }
    if !inherited.is_empty() {
        let _ = writeln!(h, "- inherited environment: {}", inherited.join(" "));
    }
    let _ = writeln!(
        h,
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    h
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Status {
    Info,
    Met,
    NotMet,
}

pub(crate) struct Row {
    metric: String,
    value: String,
    target: String,
    status: Status,
}

fn row(metric: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target: "—".to_string(),
        status: Status::Info,
    }
}

fn check(
    metric: impl Into<String>,
    value: impl Into<String>,
    target: impl Into<String>,
    met: bool,
) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target: target.into(),
        status: if met { Status::Met } else { Status::NotMet },
    }
}

/// The goal of backfill / fastest raw pull for this run, and why.
fn ratio_goal(b: &Bench) -> (f64, &'static str) {
    if let Some(x) = b.args.ratio_goal {
        return (x, "--ratio-goal");
    }
    let days = (b.to - b.from) as f64 / 8.64e13;
    let per_symbol_day = b.args.trades as f64 / b.symbols().len() as f64 / days;
    if b.influx.generation() == ohlcd::influx::Generation::V3 {
        return (2.0, "InfluxDB 3");
    }
    match b.shape {
        Shape::ManySymbols => (2.0, "many symbols"),
        _ if per_symbol_day >= DENSE_PER_SYMBOL_DAY => (0.75, "dense"),
        _ => (1.0, "sparse"),
    }
}

pub(crate) fn table_rows(b: &Bench, r: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(schemas) = &r.schemas {
        crate::schemas::rows(schemas, &mut rows);
    } else if let Some(live) = &r.live {
        crate::live::rows(b, live, &mut rows);
    } else if let Some(serve) = &r.serve {
        backfill_rows(b, r, &mut rows);
        crate::serve::rows(b, serve, &mut rows);
    } else {
        backfill_rows(b, r, &mut rows);
        daemon_rows(b, r, &mut rows);
    }
    for f in &b.failures {
        rows.push(Row {
            metric: "FAILED".to_string(),
            value: f.clone(),
            target: String::new(),
            status: Status::NotMet,
        });
    }
    rows
}

/// Pushes an informational row (for the live shape's table).
pub(crate) fn push_row(rows: &mut Vec<Row>, metric: impl Into<String>, value: impl Into<String>) {
    rows.push(row(metric, value));
}

/// Pushes a row with a target.
pub(crate) fn push_check(
    rows: &mut Vec<Row>,
    metric: impl Into<String>,
    value: impl Into<String>,
    target: impl Into<String>,
    met: bool,
) {
    rows.push(check(metric, value, target, met));
}

/// `secs` against pull `p`: "ratio (secs s / pull s)".
fn versus(secs: f64, p: &RawPull) -> String {
    let pull = p.elapsed.as_secs_f64();
    format!("{:.2} ({secs:.2} s / {pull:.2} s)", secs / pull)
}

/// The fastest raw pull of one shape.
fn best_of<'a>(r: &'a Results, shape: &str) -> Option<&'a RawPull> {
    r.raw
        .iter()
        .filter(|p| p.shape == shape)
        .min_by_key(|p| p.elapsed)
}

fn backfill_rows(b: &Bench, r: &Results, rows: &mut Vec<Row>) {
    let n = b.args.trades;
    let nf = n as f64;
    if let Some(g) = &r.generate {
        rows.push(row(
            format!("generate {} trades (ohlcd generate)", thousands(nf)),
            format!(
                "{:.2} s, {} trades/s",
                g.elapsed.as_secs_f64(),
                thousands(nf / g.elapsed.as_secs_f64())
            ),
        ));
    }
    if let Some(bf) = &r.backfill {
        let secs = bf.elapsed.as_secs_f64();
        let rows_read = bf
            .rows_read
            .map(|x| format!(", {} source rows/s", thousands(x as f64 / secs)))
            .unwrap_or_default();
        let chunks = bf
            .chunks
            .map(|c| format!(", {} chunks", thousands(c as f64)))
            .unwrap_or_default();
        rows.push(row(
            "backfill (6 resolutions)",
            format!(
                "{secs:.2} s, {} trades/s{rows_read}{chunks}",
                thousands(nf / secs)
            ),
        ));
        // The machine's CPU is shared by ohlcd and InfluxDB: their CPU time
        // over the cores is a floor under the backfill's wall time.
        if let Some(influxd) = bf.influxd_cpu_secs {
            let total = bf.cpu_secs + influxd;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            rows.push(row(
                "  backfill CPU (ohlcd + influxd)",
                format!(
                    "{:.2} + {influxd:.2} = {total:.2} CPU-s: at least {:.2} s on {cores} cores",
                    bf.cpu_secs,
                    total / cores as f64
                ),
            ));
        }
    }
    for (res, d, n_rows) in &r.group_by {
        rows.push(row(
            format!("  InfluxQL GROUP BY time({res}), symbol"),
            format!(
                "{:.2} s ({} rows)",
                d.as_secs_f64(),
                thousands(*n_rows as f64)
            ),
        ));
    }
    let group_by: Option<Duration> =
        (r.group_by.len() == RESOLUTIONS.len()).then(|| r.group_by.iter().map(|g| g.1).sum());
    if let Some(g) = group_by {
        rows.push(row(
            "InfluxQL GROUP BY ×6 (sum; lower bound)",
            format!("{:.2} s", g.as_secs_f64()),
        ));
    }
    if let Some((ok, text)) = &r.candle_check {
        rows.push(check(
            "ohlcd candles = InfluxDB GROUP BY",
            text.clone(),
            "equal",
            *ok,
        ));
    }
    for p in &r.raw {
        let cpu = p
            .influxd_cpu_secs
            .map(|c| format!(", influxd {c:.2} CPU-s"))
            .unwrap_or_default();
        rows.push(row(
            format!("  raw pull {} ({})", p.format, p.shape),
            format!(
                "{:.2} s, {} trades/s, {:.0} MB{cpu}",
                p.elapsed.as_secs_f64(),
                thousands(nf / p.elapsed.as_secs_f64()),
                p.bytes as f64 / 1e6
            ),
        ));
    }
    // The goal's reference reads one query at a time, as the issue measured it.
    let best = |format: Option<&str>| {
        r.raw
            .iter()
            .filter(|p| p.shape != crate::reference::AT_ONCE)
            .filter(|p| format.is_none_or(|f| p.format == f))
            .min_by_key(|p| p.elapsed)
    };
    for f in ["CSV", "msgpack"] {
        if let Some(p) = best(Some(f)) {
            rows.push(row(
                format!("raw pull {f}"),
                format!("{:.2} s ({})", p.elapsed.as_secs_f64(), p.shape),
            ));
        }
    }
    let fastest = best(None);
    if let Some(p) = fastest {
        rows.push(row(
            "raw pull fastest",
            format!(
                "{:.2} s ({}, {})",
                p.elapsed.as_secs_f64(),
                p.format,
                p.shape
            ),
        ));
    }
    if let Some(bf) = &r.backfill {
        let t = bf.elapsed.as_secs_f64();
        if let Some(g) = group_by {
            let x = t / g.as_secs_f64();
            if b.shape == Shape::FewSymbols {
                rows.push(check(
                    "backfill / GROUP BY ×6",
                    format!("{x:.2}"),
                    "≤ 0.40",
                    x <= 0.40,
                ));
            } else {
                rows.push(row("backfill / GROUP BY ×6", format!("{x:.2}")));
            }
        }
        // Many symbols: the issue's reference is one plain query (rows in
        // time order across all series); the GROUP BY symbol pull is shown
        // beside it.
        let (reference, name) = match b.shape {
            Shape::ManySymbols => (best_of(r, "one query"), "raw pull in one query"),
            _ => (fastest, "fastest raw pull"),
        };
        if b.shape == Shape::ManySymbols
            && let Some(p) = best_of(r, crate::reference::GROUPED)
        {
            rows.push(row(
                format!("backfill / raw pull {} ({})", p.shape, p.format),
                versus(t, p),
            ));
        }
        if let Some(p) = best_of(r, crate::reference::AT_ONCE) {
            rows.push(row(
                format!("backfill / raw pull {} ({}; both cores)", p.format, p.shape),
                versus(t, p),
            ));
        }
        if let Some(p) = reference {
            let x = t / p.elapsed.as_secs_f64();
            let (goal, why) = ratio_goal(b);
            rows.push(check(
                format!("backfill / {name} ({why})"),
                format!(
                    "{x:.2} ({t:.2} s / {:.2} s, {} {})",
                    p.elapsed.as_secs_f64(),
                    p.format,
                    p.shape
                ),
                format!("≤ {goal:.2}"),
                x <= goal,
            ));
        }
    }
    if let (Some(bf), Some(p)) = (&r.backfill_no_sync, fastest) {
        rows.push(row(
            "backfill with influx.no_sync / fastest raw pull (InfluxDB 3)",
            versus(bf.elapsed.as_secs_f64(), p),
        ));
    }
    if let (Some((n, w)), Some(p)) = (r.write_alone, fastest) {
        // Writing the candles is work the backfill cannot skip; on 2 cores it
        // overlaps the reads at best.
        rows.push(row(
            "  candle write alone (ohlcd's writer, empty database)",
            format!("{:.2} s, {} candles", w.as_secs_f64(), thousands(n as f64)),
        ));
        rows.push(row(
            "candle write alone / fastest raw pull",
            versus(w.as_secs_f64(), p),
        ));
    }
    if !r.caught_up_passes.is_empty() {
        let secs: Vec<f64> = r
            .caught_up_passes
            .iter()
            .map(|p| p.elapsed.as_secs_f64())
            .collect();
        let worst = secs.iter().copied().fold(0.0, f64::max);
        let chunks: Vec<String> = r
            .caught_up_passes
            .iter()
            .map(|p| p.chunks.unwrap_or(0).to_string())
            .collect();
        rows.push(check(
            format!(
                "caught-up backfill, nothing new ({} runs, worst)",
                secs.len()
            ),
            format!(
                "{worst:.3} s (runs {} s; chunks committed {})",
                secs.iter()
                    .map(|s| format!("{s:.3}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                chunks.join(" / ")
            ),
            format!("≤ {CAUGHT_UP_TARGET_SECS} s"),
            worst <= CAUGHT_UP_TARGET_SECS,
        ));
    }
    for (size, symbols, kb) in &r.rss {
        let main = if *size == n && *symbols == b.symbols().len() {
            " (main run)"
        } else {
            ""
        };
        rows.push(check(
            format!(
                "peak RSS of backfill, {} trades, {} symbol(s){main}",
                thousands(*size as f64),
                thousands(*symbols as f64)
            ),
            format!("{:.1} MB", mb(*kb)),
            format!("≤ {RSS_TARGET_MB:.0} MB"),
            mb(*kb) <= RSS_TARGET_MB,
        ));
    }
    if r.rss.len() >= 2 && b.shape == Shape::FewSymbols {
        let (small, large) = (r.rss[0], r.rss[r.rss.len() - 1]);
        let x = large.2 as f64 / small.2.max(1) as f64;
        rows.push(check(
            format!(
                "peak RSS ratio {} / {} trades",
                thousands(large.0 as f64),
                thousands(small.0 as f64)
            ),
            format!("{x:.2}"),
            "≤ 1.2",
            x <= 1.2,
        ));
    }
}

fn daemon_rows(b: &Bench, r: &Results, rows: &mut Vec<Row>) {
    if let Some(c) = r.caught_up {
        rows.push(row(
            "ohlcd run: start to caught up",
            format!("{:.1} s", c.as_secs_f64()),
        ));
    }
    for l in &r.latency {
        rows.push(check(
            format!("/udf/history {} countback 1000 p50 / p99", l.udf),
            format!("{:.2} / {:.2} ms ({} bars)", ms(l.p50), ms(l.p99), l.bars),
            "p50 ≤ 10 ms",
            ms(l.p50) <= 10.0,
        ));
    }
    for l in &r.latency {
        rows.push(row(
            format!("  InfluxDB on the fly {} ×1000 p50 / p99", l.udf),
            format!(
                "{:.1} / {:.1} ms ({} bars, {} requests), on-the-fly / ohlcd {}",
                ms(l.influx_p50),
                ms(l.influx_p99),
                l.influx_bars,
                l.influx_n,
                times_str(l.influx_p50.as_secs_f64() / l.p50.as_secs_f64().max(1e-9))
            ),
        ));
    }
    if let Some(l) = &r.h1_30d {
        let x = l.influx_p50.as_secs_f64() / l.p50.as_secs_f64().max(1e-9);
        rows.push(check(
            format!(
                "on-the-fly / ohlcd for 1h × {:.0}d ({} bars), p50",
                ((b.to - b.from) as f64 / 8.64e13).min(30.0),
                l.bars
            ),
            format!(
                "{} ({:.1} ms vs {:.2} ms)",
                times_str(x),
                ms(l.influx_p50),
                ms(l.p50)
            ),
            "≥ 50",
            x >= 50.0,
        ));
    }
    if let Some(i) = &r.ingest {
        let api = i.trades as f64 / i.api.as_secs_f64();
        let write = i.trades as f64 / i.write.as_secs_f64();
        rows.push(row(
            format!(
                "ingest POST /api/trades, batches of {}",
                thousands(i.batch as f64)
            ),
            format!("{} trades/s", thousands(api)),
        ));
        rows.push(row(
            format!(
                "InfluxDB /write line protocol, batches of {}",
                thousands(i.batch as f64)
            ),
            format!("{} trades/s", thousands(write)),
        ));
        let x = api / write;
        rows.push(check(
            "ingest API / InfluxDB /write",
            format!("{x:.2}"),
            "≥ 0.8",
            x >= 0.8,
        ));
    }
}

fn status_text(s: Status) -> &'static str {
    match s {
        Status::Info => "",
        Status::Met => "met",
        Status::NotMet => "NOT met",
    }
}

pub(crate) fn print_table(rows: &[Row]) {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["metric", "value", "target", "status"]);
    for r in rows {
        table.add_row([
            r.metric.as_str(),
            r.value.as_str(),
            r.target.as_str(),
            status_text(r.status),
        ]);
    }
    println!("{table}");
}

pub(crate) fn markdown(header: &str, rows: &[Row], b: &Bench) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut md = String::from(header);
    md.push_str("\n| metric | value | target | status |\n| --- | --- | --- | --- |\n");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            esc(r.metric.trim_start()),
            esc(&r.value),
            esc(&r.target),
            status_text(r.status)
        );
    }
    if b.shape == Shape::Live {
        md.push_str(crate::live::EXPLANATION);
    } else if b.shape == Shape::Schemas {
        md.push_str(
            "\nEach schema's database holds the same trades (`ohlcd generate`, seed 42, with \
             that `[schema]`); each backfill is the wall time of an `ohlcd backfill` process from a \
             fresh SQLite file, the schemas alternating A B, B A, …, the bench's influxd idle \
             before each. CPU times are of the ohlcd process and of influxd during it.\n",
        );
    } else {
        md.push_str(
            "\nGROUP BY ×6 is a lower bound for InfluxDB doing the job: it computes \
             open/high/low/close/volume/count only, while ohlcd also computes quote_volume and \
             buy_volume and writes all candles back. Raw pulls and GROUP BY read chunked \
             (chunk_size 10000, epoch=ns) and discard the answer. Backfill time is the wall time \
             of the `ohlcd backfill` process (start-up, SQLite, reads, writes); so is the \
             caught-up pass, a second `ohlcd backfill` on the caught-up progress file.\n",
        );
    }
    if !b.notes.is_empty() {
        md.push_str("\nNotes:\n\n");
        for n in &b.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md.push_str("\nWhere ohlcd misbehaved or disagreed with InfluxDB: ");
    if b.issues.is_empty() {
        md.push_str("nowhere.\n");
    } else {
        md.push('\n');
        md.push('\n');
        for i in &b.issues {
            let _ = writeln!(md, "- {i}");
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(12.0), "12");
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&mut v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&mut [], 0.5), Duration::ZERO);
    }
}

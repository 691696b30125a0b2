//! `ohlcd-bench`: the end-to-end benchmark of ohlcd against InfluxDB, on one
//! machine, in one run.
//!
//! It starts its own throwaway `influxd` (unless `--influx-url` is given) and
//! measures one of three shapes, ohlcd side by side with InfluxDB itself:
//!
//! - *few symbols* (the default: 2 symbols, 2M trades, 30 days): `ohlcd
//!   generate`, `ohlcd backfill` of all six resolutions from scratch (peak RSS
//!   sampled from `/proc/<pid>/status`) against the same candles computed by
//!   InfluxDB (InfluxQL `GROUP BY time`) and a bare raw pull of the trades (CSV
//!   and MessagePack), a caught-up `backfill` with nothing new, peak RSS at
//!   several data sizes, `/udf/history` latency of `ohlcd run` against InfluxDB
//!   aggregating the same chart on the fly, and `POST /api/trades` against
//!   InfluxDB's own `/write`;
//! - *many symbols* (`--symbols-count N`, e.g. 1000 symbols × 1000 trades over
//!   `--hours 6`): backfill against one raw pull of all trades, the caught-up
//!   pass, and peak RSS at several symbol counts (`--rss-symbols`);
//! - *live* (`--live`): `ohlcd run` over thousands of symbols while trades
//!   arrive through `POST /api/trades`; every 1m watermark is checked against
//!   the horizon every ~10 s, and ohlcd's CPU time is reported;
//! - *serve* (`--serve`, e.g. 50M trades over 50 symbols): chart requests
//!   (`/udf/history`, countback 300, mixed resolutions) at rising concurrency
//!   against `ohlcd run`, side by side with InfluxDB aggregating the same bars
//!   on the fly;
//! - *chaos* (`--chaos`): three daemons on one PostgreSQL and one influxd
//!   under faults at random while trades and chart requests flow, then every
//!   trade, candle and chart bar checked against an oracle ([`chaos`]).
//!
//! With `--server 3` the throwaway server is InfluxDB 3 Core (from
//! `../shared/influxdb3`, or `OHLCD_INFLUXDB3`) and the raw pull is taken
//! over every read that server offers (v1 `/query` CSV, `/api/v3/query_sql`
//! CSV/JSONL/Parquet, `/api/v3/query_influxql` CSV); the backfill goal is then
//! 2× the fastest of them.
//!
//! Along the way it checks ohlcd's answers against InfluxDB's (candles, bars,
//! trade counts) and reports any difference. Progress goes to stderr, one
//! table of results to stdout, and the same table as Markdown (with a header
//! describing the machine and the exact command) to `--out`.
//!
//! Every child process (influxd, ohlcd) is stopped when the bench ends: on
//! success, on error, on SIGINT/SIGTERM/SIGHUP, and (through
//! `PR_SET_PDEATHSIG`) when the bench itself is killed.
//!
//! Modules: [`procs`] child processes and `/proc`; [`raw`] bare reads (the
//! reference); [`bench`] the shared context and the `ohlcd` command phases;
//! [`reference`] InfluxDB's own answers and the candle check; [`daemon`]
//! chart latency and ingest of `ohlcd run`; [`live`] the live shape;
//! [`serve`] the serving shape; [`push`] the push shape (`--push N`: N
//! live-bar streams, memory and push latency); [`schemas`] the same trades in
//! two `[schema]`s backfilled side by side (`--schemas own,poc`); [`report`]
//! the table; [`v3`] what `--server 3` (InfluxDB 3 Core) adds.

mod bench;
mod chaos;
mod daemon;
mod live;
mod procs;
mod push;
mod raw;
mod reference;
mod report;
mod schemas;
mod serve;
mod v3;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::LazyLock;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, ensure};
use clap::Parser;
use ohlcd::influx::Generation;
use ohlcd::ingest::INGEST_BATCH;
use ohlcd::testkit::{Influxd, InfluxdOptions, ScratchDir, Server};

use bench::{Bench, Shape};
use report::Results;

const NS: i64 = 1_000_000_000;
const DAY_NS: i64 = 86_400 * NS;

/// (InfluxQL duration and candle suffix, UDF resolution, seconds).
const RESOLUTIONS: [(&str, &str, i64); 6] = [
    ("1m", "1", 60),
    ("5m", "5", 300),
    ("15m", "15", 900),
    ("1h", "60", 3_600),
    ("4h", "240", 14_400),
    ("1d", "1D", 86_400),
];

/// Symbols of the ingest comparison: new series, never part of the data set.
const API_SYMBOL: &str = "BENCH_API";
const WRITE_SYMBOL: &str = "BENCH_WRITE";

/// Where the report goes unless `--out` says otherwise.
const DEFAULT_OUT: &str = "target/bench/results.md";

/// Sizes above this need `--allow-large`.
const LARGE_SIZE: u64 = 20_000_000;

static T0: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A progress message on stderr, stamped with the time since start.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("[{:7.1}s] {}", $crate::T0.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}
pub(crate) use say;

/// Seconds without writes after which the bench's influxd 1.x writes its
/// cache to TSM files (unless `--cache-resident`).
pub const CACHE_SNAPSHOT_COLD_SECS: u32 = 1;

/// End-to-end benchmark of ohlcd against InfluxDB on this machine.
#[derive(Debug, Clone, Parser)]
#[command(name = "ohlcd-bench", version, about)]
pub struct Args {
    /// Trades of the main data set (all symbols together).
    #[arg(long, default_value_t = 2_000_000)]
    trades: u64,
    /// Comma-separated symbols; the trades are split evenly between them.
    #[arg(long, value_delimiter = ',', default_value = "BTCUSD,ETHUSD")]
    symbols: Vec<String>,
    /// Many-symbols shape: N symbols named S0001, S0002, … (replaces
    /// --symbols); the raw reference is one query over all of them.
    #[arg(long, value_name = "N")]
    symbols_count: Option<usize>,
    /// Days of data, ending at the last UTC midnight at least an hour ago.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Hours of data instead of --days, ending at the same midnight.
    #[arg(long)]
    hours: Option<u32>,
    /// Generation of the throwaway server: 1 (Debian's influxd 1.x) or 3
    /// (InfluxDB 3 Core from ../shared/influxdb3 or $OHLCD_INFLUXDB3).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    server: u8,
    /// Leave freshly generated trades in the throwaway influxd 1.x's
    /// in-memory cache (its default: written to TSM files after 10 minutes
    /// without writes). By default the bench has them written out 1 s after
    /// the last write, so they are read from TSM files as any history older
    /// than a few minutes is; read from the cache, chunked reads cost
    /// InfluxDB about twice the CPU per trade (docs/benchmarks.md).
    #[arg(long)]
    cache_resident: bool,
    /// Use this InfluxDB instead of starting a throwaway influxd.
    #[arg(long, value_name = "URL")]
    influx_url: Option<String>,
    /// Markdown copy of the results.
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
    /// Timed /udf/history requests per resolution (after 20 warm-up requests).
    #[arg(long, default_value_t = 200)]
    latency_requests: usize,
    /// Timed on-the-fly InfluxDB requests per resolution (after 2 warm-up
    /// requests; a series stops after 20 s once 5 are timed).
    #[arg(long, default_value_t = 20)]
    influx_requests: usize,
    /// Data sizes at which backfill's peak RSS is measured, each generated into
    /// its own database (the main size is reused if listed). Few-symbols shape.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    rss_sizes: Vec<u64>,
    /// Symbol counts at which backfill's peak RSS is measured, each with the
    /// main set's trades per symbol in its own database (the main count is
    /// reused if listed). Many-symbols shape.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rss_symbols: Vec<usize>,
    /// Allow RSS measurements above 20,000,000 trades.
    #[arg(long)]
    allow_large: bool,
    /// Trades posted in the ingest comparison.
    #[arg(long, default_value_t = 200_000)]
    ingest_trades: u64,
    /// Trades per request in the ingest comparison.
    #[arg(long, default_value_t = 10_000)]
    ingest_batch: usize,
    /// Goal of backfill / fastest raw pull; by default 2.0 for many symbols,
    /// 0.75 for dense data (≥ 200k trades per symbol-day), else 1.0.
    #[arg(long)]
    ratio_goal: Option<f64>,
    /// Phases to leave out: group-by, caught-up, write-alone, rss, daemon, influx-load.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Live shape: `ohlcd run` over --symbols-count symbols (default 5000)
    /// while trades arrive through POST /api/trades.
    #[arg(long)]
    live: bool,
    /// Seconds of load in the live shape.
    #[arg(long, default_value_t = 300)]
    live_secs: u64,
    /// Trades per second posted in the live shape, spread over all symbols.
    #[arg(long, default_value_t = 2_000)]
    live_rate: u64,
    /// Serving shape: /udf/history load on `ohlcd run` over --symbols-count
    /// symbols (default 50) against InfluxDB on the fly.
    #[arg(long, conflicts_with = "live")]
    serve: bool,
    /// Seconds of load per concurrency level in the serving shape.
    #[arg(long, default_value_t = 10)]
    serve_secs: u64,
    /// Concurrency levels (workers) of the serving shape.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    serve_concurrency: Vec<usize>,
    /// Resolutions of the serving shape's mix (UDF notation: seconds `1S`,
    /// minutes, days `1D`).
    #[arg(long, value_delimiter = ',', default_value = "1,5,15,60,240,1D,30,120")]
    serve_mix: Vec<String>,
    /// Serving shape: load each resolution of the mix alone, side by side.
    #[arg(long)]
    serve_split: bool,
    /// Serving shape: then the same loads on a daemon counting bars in this
    /// IANA zone (`datafeed.timezone`).
    #[arg(long, value_name = "ZONE")]
    serve_tz: Option<String>,
    /// Serving shape: ask for the bars before the data's end instead of now.
    #[arg(long)]
    serve_at_end: bool,
    /// Push shape: `ohlcd run` holding N live-bar streams (GET /api/live) open
    /// while trades flow; ohlcd's memory and the push latency.
    #[arg(long, value_name = "N", conflicts_with_all = ["live", "serve"])]
    push: Option<usize>,
    /// Seconds of load in the push shape.
    #[arg(long, default_value_t = 30)]
    push_secs: u64,
    /// Trades per second posted in the push shape.
    #[arg(long, default_value_t = 500)]
    push_rate: u64,
    /// Schemas shape: the same trades written in two `[schema]`s (own, poc,
    /// two-tags), each backfilled from scratch, alternating, for
    /// --schema-rounds rounds; e.g. `--schemas own,poc`.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["live", "serve", "push"])]
    schemas: Vec<String>,
    /// Backfills of each schema in the schemas shape.
    #[arg(long, default_value_t = 5)]
    schema_rounds: usize,
    /// Keep the benchmark databases on an external InfluxDB (--influx-url);
    /// by default they are dropped at the end.
    #[arg(long)]
    keep_data: bool,
    /// Keep the scratch directory (ohlcd's logs, progress files) for a look
    /// afterwards; its path is printed.
    #[arg(long)]
    keep_scratch: bool,
    /// Chaos run: three `ohlcd run` daemons on one PostgreSQL and one
    /// influxd under faults at random every few seconds, while trades and
    /// chart requests flow; then every trade, candle and chart bar is
    /// checked. Exits non-zero on any mismatch. Report in --out (default
    /// target/bench/chaos.md).
    #[arg(long, conflicts_with_all = ["live", "serve", "push"])]
    chaos: bool,
    /// Seconds of faults and load in the chaos run.
    #[arg(long, default_value_t = 1_800, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    chaos_secs: u64,
    /// Symbols of the chaos run.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=999))]
    chaos_symbols: u64,
    /// Trades POSTed per second in the chaos run (all ingest clients).
    #[arg(long, default_value_t = 40.0)]
    chaos_rate: f64,
    /// Days of history (and how old late trades get) in the chaos run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    chaos_history_days: u32,
    /// Trades of that history, all symbols together.
    #[arg(long, default_value_t = 100_000)]
    chaos_history_trades: u64,
    /// Bound on each chaos daemon's peak RSS, MB.
    #[arg(long, default_value_t = 256)]
    chaos_rss_mb: u64,
    /// How long the system may take to settle after the faults, seconds.
    #[arg(long, default_value_t = 600)]
    chaos_settle_secs: u64,
    /// Seed of the chaos run's faults and load (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
}

impl Args {
    /// True unless `--skip` names the phase.
    fn runs(&self, phase: &str) -> bool {
        !self.skip.iter().any(|s| s == phase)
    }
}

fn main() -> ExitCode {
    LazyLock::force(&T0);
    let args = Args::parse();
    // One thread: every child is forked from the main thread, so
    // PR_SET_PDEATHSIG fires only when the bench process itself goes away.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            sig = termination_signal() => Err(anyhow!("interrupted by {sig}; child processes stopped")),
        }
    });
    // Dropping the run future above has already stopped every child.
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some benchmark phases failed (see the table and the messages above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        // Without handlers the default action (exit) applies; the children then
        // go through PR_SET_PDEATHSIG.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// `S0001`, `S0002`, … (at least four digits).
fn numbered_symbols(n: usize) -> Vec<String> {
    let width = n.to_string().len().max(4);
    (1..=n).map(|i| format!("S{i:0width$}")).collect()
}

/// Everything that can be checked before anything is started.
fn preflight(args: &mut Args) -> Result<Shape> {
    let shape = if !args.schemas.is_empty() {
        ensure!(
            args.schemas.len() == 2,
            "--schemas: name two schemas to compare, e.g. own,poc"
        );
        for s in &args.schemas {
            schemas::Kind::parse(s)?;
        }
        ensure!(
            (1..=50).contains(&args.schema_rounds),
            "--schema-rounds must be between 1 and 50"
        );
        Shape::Schemas
    } else if args.live {
        Shape::Live
    } else if args.serve {
        Shape::Serve
    } else if args.symbols_count.is_some() {
        Shape::ManySymbols
    } else {
        Shape::FewSymbols
    };
    let default_count = match shape {
        Shape::Live => Some(5_000),
        Shape::Serve => Some(50),
        _ => None,
    };
    if let Some(n) = args.symbols_count.or(default_count) {
        ensure!(
            (1..=100_000).contains(&n),
            "--symbols-count must be between 1 and 100,000"
        );
        args.symbols = numbered_symbols(n);
    }
    ensure!(
        !args.symbols.is_empty(),
        "--symbols: give at least one symbol"
    );
    for s in &args.symbols {
        ohlcd::symbol::NameForm::default()
            .check(s)
            .map_err(|e| anyhow!("--symbols: {e}"))?;
        ensure!(
            s != API_SYMBOL && s != WRITE_SYMBOL,
            "--symbols: {s} is reserved for the ingest comparison"
        );
    }
    ensure!(
        args.server != 2,
        "--server: no InfluxDB 2.x server can be started here; give 1 or 3, or --influx-url"
    );
    ensure!(args.trades > 0, "--trades must be at least 1");
    ensure!(args.days > 0, "--days must be at least 1");
    ensure!(args.hours != Some(0), "--hours must be at least 1");
    ensure!(
        args.ingest_batch <= INGEST_BATCH,
        "--ingest-batch: the API takes at most {INGEST_BATCH} trades per request"
    );
    // The live load is bounded: at most an hour, at most 20,000 trades/s.
    ensure!(
        (10..=3_600).contains(&args.live_secs),
        "--live-secs must be between 10 and 3600"
    );
    ensure!(
        (1..=20_000).contains(&args.live_rate),
        "--live-rate must be between 1 and 20,000 trades/s"
    );
    ensure!(
        (1..=600).contains(&args.serve_secs),
        "--serve-secs must be between 1 and 600"
    );
    ensure!(
        !args.serve_concurrency.is_empty()
            && args
                .serve_concurrency
                .iter()
                .all(|c| (1..=serve::MAX_CONCURRENCY).contains(c)),
        "--serve-concurrency: levels between 1 and {}",
        serve::MAX_CONCURRENCY
    );
    const PHASES: [&str; 6] = [
        "group-by",
        "caught-up",
        "write-alone",
        "rss",
        "daemon",
        "influx-load",
    ];
    if let Some(n) = args.push {
        ensure!(
            (21..=20_000).contains(&n),
            "--push must be between 21 and 20,000 streams"
        );
        ensure!(
            (5..=600).contains(&args.push_secs) && (1..=5_000).contains(&args.push_rate),
            "--push-secs must be between 5 and 600, --push-rate between 1 and 5,000 trades/s"
        );
        args.symbols = push::symbols();
        args.trades = push::SEED_TRADES;
    }
    for s in &args.skip {
        ensure!(
            PHASES.contains(&s.as_str()),
            "--skip: unknown phase {s:?} ({})",
            PHASES.join(", ")
        );
    }
    Ok(shape)
}

async fn run(mut args: Args) -> Result<bool> {
    let shape = preflight(&mut args)?;
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let ohlcd = exe
        .parent()
        .map(|d| d.join("ohlcd"))
        .context("the bench executable has no directory")?;
    ensure!(
        ohlcd.is_file(),
        "ohlcd binary not found at {} (it must sit next to ohlcd-bench); build both with `cargo build --release --bins`",
        ohlcd.display()
    );
    let ohlcd_version = Command::new(&ohlcd)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    if args.chaos {
        ensure!(
            args.chaos_rate > 0.0 && args.chaos_rate <= 2_000.0,
            "--chaos-rate must be above 0 and at most 2000 trades/s"
        );
        let default_out = args.out == std::path::Path::new(DEFAULT_OUT);
        let opts = chaos::Options {
            secs: args.chaos_secs,
            symbols: args.chaos_symbols as usize,
            seed: args.seed.unwrap_or_else(rand::random),
            rate: args.chaos_rate,
            history_days: args.chaos_history_days,
            history_trades: args.chaos_history_trades.max(args.chaos_symbols),
            rss_mb: args.chaos_rss_mb,
            settle_secs: args.chaos_settle_secs,
            out: if default_out {
                PathBuf::from("target/bench/chaos.md")
            } else {
                args.out.clone()
            },
            keep_scratch: args.keep_scratch,
            command: std::env::args().collect::<Vec<_>>().join(" "),
        };
        return chaos::run(opts, ohlcd, ohlcd_version).await;
    }

    let load_start = procs::loadavg();
    let scratch = ScratchDir::new("ohlcd-bench").context("cannot create a scratch directory")?;
    say!("scratch directory {}", scratch.path().display());
    let own = match &args.influx_url {
        Some(_) => None,
        None => {
            say!("starting influxd ...");
            let options = InfluxdOptions {
                server: if args.server == 3 {
                    Server::V3
                } else {
                    Server::V1
                },
                cache_snapshot_cold_secs: (!args.cache_resident)
                    .then_some(CACHE_SNAPSHOT_COLD_SECS),
                configure: Some(procs::die_with_parent),
                ..InfluxdOptions::default()
            };
            // Started (and waited for) on this thread, not the blocking pool:
            // the parent-death signal fires when the spawning thread exits.
            Some(Influxd::launch(options).context("cannot start influxd (or pass --influx-url)")?)
        }
    };
    let url = match (&own, &args.influx_url) {
        (Some(o), _) => o.url.clone(),
        (None, Some(u)) => u.clone(),
        (None, None) => unreachable!(),
    };

    let now = chrono::Utc::now();
    // The data ends at the last UTC midnight at least an hour ago, so every
    // resolution's watermark is past it once ohlcd has caught up.
    let to = (now - chrono::Duration::hours(1))
        .timestamp_nanos_opt()
        .context("clock out of range")?
        .div_euclid(DAY_NS)
        * DAY_NS;
    let span = match args.hours {
        Some(h) => i64::from(h) * 3_600 * NS,
        None => i64::from(args.days) * DAY_NS,
    };
    let db = format!(
        "ohlcd_bench_{}_{}",
        now.format("%Y%m%d_%H%M%S"),
        std::process::id()
    );
    let mut b = Bench::new(
        args.clone(),
        shape,
        ohlcd,
        scratch.path().to_path_buf(),
        &url,
        own.as_ref().map(Influxd::pid),
        db,
        to - span,
        to,
    )?;
    let influx_version = b
        .influx
        .detect()
        .await
        .with_context(|| format!("InfluxDB at {url}"))?;
    say!("InfluxDB {influx_version} at {url}");

    let mut r = Results::default();
    let pushed = match (args.push, shape) {
        (Some(n), _) => Some(push::run(&mut b, n).await),
        (None, Shape::Live) => {
            live::run(&mut b, &mut r).await;
            None
        }
        (None, Shape::Serve) => {
            serve_shape(&mut b, &mut r).await;
            None
        }
        (None, Shape::Schemas) => {
            let kinds = [
                schemas::Kind::parse(&args.schemas[0])?,
                schemas::Kind::parse(&args.schemas[1])?,
            ];
            match schemas::run(&mut b, kinds, args.schema_rounds).await {
                Ok(x) => r.schemas = Some(x),
                Err(e) => b.fail("schemas", e),
            }
            None
        }
        (None, Shape::FewSymbols | Shape::ManySymbols) => {
            backfill_shape(&mut b, &mut r).await;
            None
        }
    };

    // Clean up databases on an external InfluxDB.
    if own.is_none() && !args.keep_data {
        for d in b.created.clone() {
            if let Err(e) = b.drop_database(&d).await {
                say!("could not drop database {d}: {e:#}");
            }
        }
    }
    let own_influx = own.is_some();
    drop(own);
    if args.keep_scratch {
        say!("scratch directory kept: {}", scratch.path().display());
        std::mem::forget(scratch);
    }

    let header = report::machine_header(
        &b,
        &influx_version,
        &ohlcd_version,
        own_influx,
        &now,
        &load_start,
    );
    let rows = match &pushed {
        Some(p) => {
            let mut rows = Vec::new();
            push::rows(p, &mut rows);
            for f in &b.failures {
                report::push_check(&mut rows, "FAILED", f.clone(), "", false);
            }
            rows
        }
        None => report::table_rows(&b, &r),
    };
    report::print_table(&rows);
    let md = report::markdown(&header, &rows, &b);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&args.out, md)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    say!("results written to {}", args.out.display());
    for i in &b.issues {
        eprintln!("ohlcd issue: {i}");
    }
    Ok(b.failures.is_empty())
}

/// The serving shape: data, one backfill, then the load on `ohlcd run`.
async fn serve_shape(b: &mut Bench, r: &mut Results) {
    let db = b.db.clone();
    let n = b.args.trades;
    let outcome = async {
        let symbols = b.symbols().to_vec();
        r.generate = Some(b.generate(&db, n, &symbols).await?);
        b.settle().await;
        r.backfill = Some(b.backfill(&db, n).await?);
        b.settle().await;
        serve::run(b, r).await
    }
    .await;
    if let Err(e) = outcome {
        b.fail("serving shape", e);
    }
}

/// The few- and many-symbols shapes: data, backfill against the references,
/// the caught-up pass, the daemon, peak RSS at other sizes.
async fn backfill_shape(b: &mut Bench, r: &mut Results) {
    let db = b.db.clone();
    let n = b.args.trades;
    let outcome = async {
        // Data.
        let symbols = b.symbols().to_vec();
        r.generate = Some(b.generate(&db, n, &symbols).await?);
        b.settle().await;
        // Backfill and the references, interleaved in two rounds: freshly
        // written data reads slower until InfluxDB has settled it, so whatever
        // runs first pays for that. Best of two for both sides.
        let mut backfills = Vec::new();
        for round in 1..=2 {
            let pulled = if b.influx.generation() == Generation::V3 {
                v3::raw_pull(b, r).await
            } else {
                reference::raw_pull(b, r).await
            };
            if let Err(e) = pulled {
                b.fail("raw pull reference", e);
            }
            b.settle().await;
            match b.backfill(&db, n).await {
                Ok(x) => backfills.push(x),
                Err(e) => b.fail("backfill", e),
            }
            b.settle().await;
            if round == 1 && b.args.runs("group-by") && b.influx.generation() != Generation::V3 {
                if let Err(e) = reference::group_by(b, r).await {
                    b.fail("InfluxQL GROUP BY reference", e);
                }
                b.settle().await;
            }
        }
        // The last backfill's progress file is caught up: run again.
        if b.args.runs("caught-up") && !backfills.is_empty() {
            b.settle().await;
            match b.caught_up_passes(&db, 3).await {
                Ok(passes) => r.caught_up_passes = passes,
                Err(e) => b.fail("caught-up pass", e),
            }
        }
        if !backfills.is_empty() {
            b.notes.push(format!(
                "backfill runs (each from a fresh SQLite file): {}; the best is used",
                backfills
                    .iter()
                    .map(|x| format!("{:.2} s", x.elapsed.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // InfluxDB 3: the same backfill with candle writes acknowledged
        // before the WAL flush (influx.no_sync), best of two.
        if b.influx.generation() == Generation::V3 {
            for _ in 0..2 {
                b.settle().await;
                match b
                    .backfill_with(&db, n, &[("OHLCD_INFLUX__NO_SYNC", "true")])
                    .await
                {
                    Ok(x)
                        if r.backfill_no_sync
                            .as_ref()
                            .is_none_or(|y| x.elapsed < y.elapsed) =>
                    {
                        r.backfill_no_sync = Some(x)
                    }
                    Ok(_) => {}
                    Err(e) => b.fail("backfill with influx.no_sync", e),
                }
            }
        }
        if let Some(best) = backfills.into_iter().min_by_key(|x| x.elapsed) {
            r.rss.push((n, b.symbols().len(), best.peak_kb));
            r.backfill = Some(best);
        }
        r.keep_best_raw_pulls();
        // What writing those candles alone costs InfluxDB: the floor under
        // the backfill that no reading strategy can go below.
        if b.args.runs("write-alone") && r.backfill.is_some() {
            b.settle().await;
            if let Err(e) = reference::write_alone(b, r).await {
                b.fail("candle write alone", e);
            }
        }
        // The daemon: chart latency and ingest (few symbols only: its figures
        // are per symbol).
        if b.shape == Shape::FewSymbols && b.args.runs("daemon") {
            b.settle().await;
            if let Err(e) = daemon::run(b, r).await {
                b.fail("ohlcd run", e);
            }
        }
        // Peak RSS at other sizes (last: the biggest writes).
        if b.args.runs("rss") {
            match b.shape {
                Shape::ManySymbols => b.rss_symbols(r).await,
                _ => b.rss_sizes(r).await,
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = outcome {
        b.fail("data generation", e);
    }
}

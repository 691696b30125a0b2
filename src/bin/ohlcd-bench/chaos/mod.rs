//! `ohlcd-bench --chaos`: everything fails at once, and nothing may be lost.
//!
//! The setup: one influxd, a PostgreSQL progress store, three `ohlcd run`
//! daemons sharing it and reaching influxd through a misbehaving TCP proxy
//! ([`proxy`]), 200 symbols with two days of history. The load ([`load`]):
//! trades POSTed live and late (minutes to days) by clients that retry with
//! the same ids, trades written straight into InfluxDB, chart clients on
//! `/udf/history` and `/api/live`. The faults ([`faults`]), every few
//! seconds from a seeded schedule: daemons SIGKILLed and restarted, influxd
//! frozen or SIGKILLed and restarted on its data, PostgreSQL restarted fast
//! and immediate, the proxy stalling or cutting responses with a reset.
//!
//! Then the faults stop, every client's trades are acknowledged, the system
//! settles, and [`verify`] holds the result against the [`ledger`] of every
//! trade sent and the [`oracle`]. Any mismatch fails the run.
//!
//! Modules: [`keeper`] owns influxd and PostgreSQL on threads of their own;
//! [`daemons`] the three daemons; [`report`] the table.

mod daemons;
mod faults;
mod keeper;
mod ledger;
mod load;
mod oracle;
mod proxy;
mod report;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ohlcd::progress::ProgressStore;
use ohlcd::testkit::postgres::TestPostgres;
use ohlcd::testkit::{Influxd, InfluxdOptions, ScratchDir};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::say;
use daemons::Daemons;
use faults::Targets;
use keeper::Keeper;
use ledger::{Ledger, Path};
use load::Load;
use proxy::Proxy;

const NS: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * NS;
const DATABASE: &str = "chaos";

/// What a chaos run is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Seconds of faults and load.
    pub secs: u64,
    /// Symbols.
    pub symbols: usize,
    /// Seed of the fault schedule and the load.
    pub seed: u64,
    /// Trades POSTed per second, all clients together.
    pub rate: f64,
    /// Days of history written before the daemons start.
    pub history_days: u32,
    /// Trades of that history, all symbols together.
    pub history_trades: u64,
    /// Bound on each daemon's peak RSS, MB.
    pub rss_mb: u64,
    /// How long the system may take to settle after the faults, seconds.
    pub settle_secs: u64,
    /// Markdown copy of the report.
    pub out: PathBuf,
    /// Keep the scratch directory (logs) even when the run passes.
    pub keep_scratch: bool,
    /// The command line, for the report.
    pub command: String,
}

/// Daemons of the run.
const DAEMONS: usize = 3;
/// Clients of each kind.
const API_CLIENTS: usize = 4;
const CHART_CLIENTS: usize = 3;
const LIVE_CLIENTS: usize = 6;

/// Runs the whole chaos scenario; `Ok(true)` if every check passed.
pub(crate) async fn run(opts: Options, ohlcd: PathBuf, ohlcd_version: String) -> Result<bool> {
    say!(
        "chaos seed {} (replay the same faults and load: --chaos --seed {} --chaos-secs {})",
        opts.seed,
        opts.seed,
        opts.secs
    );
    let scratch = ScratchDir::new("ohlcd-chaos").context("cannot create a scratch directory")?;
    say!("scratch directory {}", scratch.path().display());
    let started = Instant::now();

    say!("starting influxd and PostgreSQL ...");
    let influxd = Keeper::start("influxd", || {
        Influxd::launch(InfluxdOptions {
            configure: Some(crate::procs::die_with_parent),
            ..InfluxdOptions::default()
        })
        .context("cannot start influxd")
    })?;
    let influx_url = influxd.run(|i| i.url.clone()).await?;
    let postgres = Keeper::start("postgres", || Ok(TestPostgres::start()))?;
    let pg_url = postgres.run(|p| p.url.clone()).await?;
    durable_commits(&pg_url).await?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .build()?;
    create_database(&http, &influx_url).await?;
    let proxy = Proxy::start(proxy::authority(&influx_url)?, opts.seed).await?;
    say!(
        "influxd {influx_url}, proxy {}, PostgreSQL {pg_url}",
        proxy.url
    );

    // History, straight into InfluxDB, before any daemon runs.
    let symbols: Vec<String> = (1..=opts.symbols).map(|i| format!("CH{i:03}")).collect();
    let ledger = Arc::new(Ledger::new(symbols.clone()));
    let now = chrono::Utc::now().timestamp_nanos_opt().context("clock")?;
    let history_start = now.div_euclid(DAY) * DAY - i64::from(opts.history_days) * DAY;
    write_history(&http, &influx_url, &ledger, &opts, history_start).await?;

    let env = vec![
        ("OHLCD_INFLUX__URL".to_string(), proxy.url.clone()),
        ("OHLCD_INFLUX__DATABASE".to_string(), DATABASE.to_string()),
        ("OHLCD_PROGRESS__DATABASE_URL".to_string(), pg_url.clone()),
    ];
    let daemons = Daemons::new(DAEMONS, ohlcd, env, scratch.path().to_path_buf())?;
    for i in 0..DAEMONS {
        daemons.start(i).await?;
    }
    daemons
        .wait_healthy(&http, Duration::from_secs(120))
        .await
        .context("the daemons did not start")?;
    say!("{DAEMONS} daemons up: {}", daemons.urls().join(", "));
    // The faults start once the history is materialized, so late trades are
    // behind the watermarks from the first one on.
    let store = ProgressStore::connect(&pg_url)
        .await
        .context("cannot open the progress store")?;
    let catch_up = Instant::now();
    let horizon = (chrono::Utc::now().timestamp_nanos_opt().context("clock")? - 120 * NS)
        .div_euclid(60 * NS)
        * 60
        * NS;
    loop {
        daemons.watch_once().await;
        let tasks = store.tasks().await.unwrap_or_default();
        let done = tasks
            .iter()
            .filter(|t| t.resolution.name() == "1m" && t.watermark.is_some_and(|w| w >= horizon))
            .count();
        if done == symbols.len() {
            break;
        }
        if catch_up.elapsed() > Duration::from_secs(opts.settle_secs) {
            bail!(
                "the daemons did not catch up with the history within {}s ({done} of {} symbols)",
                opts.settle_secs,
                symbols.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let catch_up_secs = catch_up.elapsed().as_secs_f64();
    say!("history materialized in {catch_up_secs:.0}s");
    let urls = daemons.urls();
    let targets = Arc::new(Targets {
        influxd,
        postgres,
        proxy,
        daemons,
        influx_lock: Default::default(),
        pg_lock: Default::default(),
        done: Default::default(),
        errors: Default::default(),
    });

    // The load, and a watch on the daemons, for the whole run.
    let load = Arc::new(Load {
        ledger: ledger.clone(),
        stats: Default::default(),
        daemons: urls.clone(),
        influx_url: influx_url.clone(),
        database: DATABASE.to_string(),
        stop: Default::default(),
        give_up: Default::default(),
        history_start_ms: history_start / 1_000_000,
        api_rate: opts.rate,
    });
    let mut ingest = Vec::new();
    let mut others = Vec::new();
    for k in 0..API_CLIENTS {
        let seed = opts.seed.wrapping_add(100 + k as u64);
        ingest.push(tokio::spawn(load::api_client(
            load.clone(),
            API_CLIENTS,
            seed,
        )));
    }
    others.push(tokio::spawn(load::direct_writer(
        load.clone(),
        opts.seed.wrapping_add(200),
    )));
    for k in 0..CHART_CLIENTS {
        let seed = opts.seed.wrapping_add(300 + k as u64);
        others.push(tokio::spawn(load::chart_client(load.clone(), seed)));
    }
    for k in 0..LIVE_CLIENTS {
        let seed = opts.seed.wrapping_add(400 + k as u64);
        others.push(tokio::spawn(load::live_client(load.clone(), seed)));
    }
    let watch = {
        let t = targets.clone();
        tokio::spawn(async move {
            loop {
                t.daemons.watch_once().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let progress = {
        let load = load.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let s = &load.stats;
                say!(
                    "load: {} trades acknowledged ({} retries), {} direct, {} chart answers, {} live bars",
                    s.api_acked.load(Ordering::Relaxed),
                    s.api_retries.load(Ordering::Relaxed),
                    s.direct_acked.load(Ordering::Relaxed),
                    s.chart_ok.load(Ordering::Relaxed),
                    s.live_bars.load(Ordering::Relaxed)
                );
            }
        })
    };

    // The faults.
    let span = Duration::from_secs(opts.secs);
    let plan = faults::schedule(opts.seed, span, DAEMONS);
    say!("{} faults over {}s", plan.len(), opts.secs);
    let load_started = Instant::now();
    faults::run(targets.clone(), plan).await;
    say!("faults over and healed; stopping the load");

    // Stop the load: no new trades; trades in flight are retried until
    // acknowledged, for as long as the system may take to settle.
    load.stop.store(true, Ordering::SeqCst);
    let load_secs = load_started.elapsed().as_secs_f64();
    let settle_limit = Duration::from_secs(opts.settle_secs);
    let drained = tokio::time::timeout(settle_limit, async {
        for h in ingest.iter_mut() {
            let _ = h.await;
        }
    })
    .await;
    if drained.is_err() {
        load.give_up.store(true, Ordering::SeqCst);
        for h in ingest {
            let _ = h.await;
        }
    }
    for h in others {
        let _ = h.await;
    }
    progress.abort();

    // Settle, then judge.
    let heal_done = Instant::now();
    let newest = ledger.newest_ms().unwrap_or(0) * 1_000_000;
    let until = newest.div_euclid(60 * NS) * 60 * NS + 60 * NS;
    let by_symbol = ledger.by_symbol();
    let first_trade: std::collections::HashMap<String, i64> = by_symbol
        .iter()
        .filter_map(|(s, trades)| {
            // The engine starts a symbol at the trades it finds first: the
            // history (late trades before it are repairs).
            trades
                .values()
                .filter(|t| t.path == Path::Seed)
                .map(|t| t.trade.time_ms * 1_000_000)
                .min()
                .map(|t| (s.clone(), t))
        })
        .collect();
    let reader = verify::Reader {
        http: http.clone(),
        influx_url: influx_url.clone(),
        database: DATABASE.to_string(),
    };
    let deadline = heal_done + settle_limit;
    let mut settle = report::Settle::default();
    let data = loop {
        let watermarks = loop {
            match verify::settled(&store, &symbols, until).await {
                Ok(w) => break Some(w),
                Err(why) if Instant::now() > deadline => {
                    settle.unsettled = Some(why);
                    break None;
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        };
        let Some(watermarks) = watermarks else {
            break None;
        };
        settle.checks += 1;
        let check = verify::DataCheck {
            reader: &reader,
            http: &http,
            daemons: &urls,
            symbols: &symbols,
            sent: &by_symbol,
            watermarks,
            from_secs: history_start / NS - 7 * 86_400,
        };
        let found = check.run().await?;
        settle.first_mismatches.get_or_insert(found.mismatches());
        // Trades written behind a watermark are found by the lookback,
        // which runs every minute: a mismatch may still be repaired.
        if found.mismatches() == 0 || Instant::now() > deadline {
            break Some(found);
        }
        say!(
            "{} mismatches; checking again after the next lookback; e.g. {}",
            found.mismatches(),
            found.examples().join("; ")
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
    };
    settle.secs = heal_done.elapsed().as_secs_f64();
    // Healthy again: a daemon's last failed write is reported until a write
    // succeeds or for influx::WRITE_FAILURE_HOLD.
    let limit = deadline
        .saturating_duration_since(Instant::now())
        .max(ohlcd::influx::WRITE_FAILURE_HOLD + Duration::from_secs(30));
    settle.healthy = match targets.daemons.wait_healthy(&http, limit).await {
        Ok(()) => Ok(heal_done.elapsed().as_secs_f64()),
        Err(e) => Err(format!("{e:#}")),
    };
    let table = verify::check_table(&store, &first_trade).await?;
    store.close().await;
    watch.abort();
    let _ = watch.await;
    let daemon_report = targets.daemons.stop_all(Duration::from_secs(60)).await;

    let verdict = report::Verdict {
        opts: &opts,
        ohlcd_version: &ohlcd_version,
        symbols: symbols.len(),
        load: &load.stats,
        load_secs,
        faults: targets.counts(),
        fault_errors: targets.errors.lock().expect("not poisoned").clone(),
        proxy_resets: targets.proxy.resets_done(),
        proxy_connections: targets.proxy.connections(),
        seeded: ledger
            .by_symbol()
            .values()
            .flat_map(|m| m.values())
            .filter(|s| s.path == Path::Seed)
            .count() as u64,
        data: data.as_ref(),
        table: &table,
        daemons: &daemon_report,
        settle: &settle,
        catch_up_secs,
        total_secs: started.elapsed().as_secs_f64(),
    };
    let (rows, passed) = verdict.rows();
    report::print(&rows);
    let md = verdict.markdown(&rows, passed);
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&opts.out, md)
        .with_context(|| format!("cannot write {}", opts.out.display()))?;
    say!("report written to {}", opts.out.display());
    if !passed || opts.keep_scratch {
        say!(
            "scratch directory kept (daemon logs): {}",
            scratch.path().display()
        );
        std::mem::forget(scratch);
    }
    drop(targets);
    Ok(passed)
}

/// The chaos run's PostgreSQL keeps what it acknowledged through an
/// immediate stop, as a production server does: the throwaway cluster turns
/// `synchronous_commit` off for speed, so it is turned on for this database.
async fn durable_commits(pg_url: &str) -> Result<()> {
    use sqlx::Connection;
    let db = pg_url.rsplit('/').next().context("database in the URL")?;
    let mut conn = sqlx::PgConnection::connect(pg_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    // The name is the testkit's own (`testN`), not outside input.
    let sql = format!("ALTER DATABASE {db} SET synchronous_commit = on");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .context("ALTER DATABASE")?;
    Ok(())
}

async fn create_database(http: &reqwest::Client, influx_url: &str) -> Result<()> {
    let resp = http
        .post(format!("{influx_url}/query"))
        .form(&[("q", format!("CREATE DATABASE {DATABASE}"))])
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("CREATE DATABASE: {}", resp.text().await.unwrap_or_default());
    }
    Ok(())
}

/// `history_trades` trades spread at random over `[history_start, now −
/// 2 min)` and over the symbols, written straight into InfluxDB.
async fn write_history(
    http: &reqwest::Client,
    influx_url: &str,
    ledger: &Ledger,
    opts: &Options,
    history_start: i64,
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed.wrapping_add(1));
    let end_ms = load::now_ms() - 120_000;
    let start_ms = history_start / 1_000_000;
    let symbols = ledger.symbols.len();
    let written = AtomicU64::new(0);
    let mut left = opts.history_trades;
    say!(
        "writing {} trades of history over {} days ...",
        opts.history_trades,
        opts.history_days
    );
    while left > 0 {
        let n = left.min(20_000);
        left -= n;
        let trades: Vec<_> = (0..n)
            .map(|k| {
                // Every symbol gets some history, the rest at random.
                let s = if written.load(Ordering::Relaxed) + k < symbols as u64 {
                    (written.load(Ordering::Relaxed) + k) as usize
                } else {
                    rng.random_range(0..symbols)
                };
                let t = rng.random_range(start_ms..end_ms);
                ledger.make(&mut rng, s, t)
            })
            .collect();
        ledger.record(&trades, Path::Seed, &vec![false; trades.len()]);
        let resp = http
            .post(format!("{influx_url}/write"))
            .query(&[("db", DATABASE), ("precision", "ns")])
            .body(ohlcd::ingest::encode_trades(&trades))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("writing history: {}", resp.text().await.unwrap_or_default());
        }
        ledger.ack(&trades);
        written.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

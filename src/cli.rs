//! The command line: argument definitions and one function per command. This is
//! the edge of the program, so errors are `anyhow` and end as one line on stderr.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::App;
use crate::candle::{NANOS_PER_SEC, Resolution};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::engine::{ChunkEvent, Engine, TaskFilter};
use crate::generate::{GenerateSpec, Generator};
use crate::influx::{InfluxClient, InfluxError, TradeRead};
use crate::ingest::{INGEST_BATCH, NewTrade, TradeWriter, write_trades};
use crate::progress::{ProgressEntry, ProgressStore};
use crate::schema::TradeSchema;
use crate::symbol::NameForm;
use crate::times::{parse_time_arg, to_rfc3339};

/// ohlcd: turns raw trades in InfluxDB into OHLC candles.
#[derive(Debug, Parser)]
#[command(name = "ohlcd", version = crate::build_info::VERSION_LINE, about)]
pub struct Cli {
    /// Configuration file layered over the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: scheduler and HTTP server, until SIGINT/SIGTERM.
    Run,
    /// Downsample until every task is caught up, then exit.
    Backfill {
        /// Only this symbol (repeatable).
        #[arg(long = "symbol", value_name = "S")]
        symbols: Vec<String>,
        /// Resolutions to bring up to date (repeatable). Accepted for scripts
        /// written against the contract; one read of raw trades yields all six
        /// resolutions, so every resolution of a symbol advances together.
        #[arg(long = "resolution", value_name = "R")]
        resolutions: Vec<Resolution>,
    },
    /// Recompute a time range of one symbol at every resolution.
    Rebuild {
        /// Symbol to rebuild.
        #[arg(long)]
        symbol: String,
        /// Start (RFC 3339, date or Unix seconds).
        #[arg(long, value_parser = parse_time_arg)]
        from: i64,
        /// End, exclusive (RFC 3339, date or Unix seconds).
        #[arg(long, value_parser = parse_time_arg)]
        to: i64,
    },
    /// Show what ohlcd finds in InfluxDB for the configured `[schema]`:
    /// measurements, tags and fields with their types, how each configured
    /// name was found, the symbols, the first and last trade, and five
    /// trades as ohlcd reads them.
    Schema,
    /// Print the progress table.
    Progress {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write random-walk demo trades through the ingest path; with `--live`,
    /// keep posting trades stamped "now" to a running daemon until stopped.
    Generate {
        /// Comma-separated symbols.
        #[arg(long, value_delimiter = ',', required = true)]
        symbols: Vec<String>,
        /// Start (RFC 3339, date or Unix seconds).
        #[arg(long, value_parser = parse_time_arg, required_unless_present = "live")]
        from: Option<i64>,
        /// End, exclusive (RFC 3339, date or Unix seconds).
        #[arg(long, value_parser = parse_time_arg, required_unless_present = "live")]
        to: Option<i64>,
        /// Total number of trades over all symbols.
        #[arg(long, required_unless_present = "live")]
        trades: Option<u64>,
        /// Seed for reproducible data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Post live trades to `POST /api/trades` of a running daemon until
        /// SIGINT/SIGTERM, continuing each symbol from its last stored price
        /// (with `server.ingest_token` as the Bearer token when set).
        #[arg(long, conflicts_with_all = ["from", "to", "trades"])]
        live: bool,
        /// Live trades per second over all symbols. Default: the density of
        /// the stored history (the trades of the day before each symbol's
        /// last trade), so live bars look like the bars before them; 1 per
        /// second when there is no history.
        #[arg(long, requires = "live")]
        rate: Option<f64>,
        /// The daemon to post to (default: http:// + server.listen).
        #[arg(long, value_name = "URL", requires = "live")]
        url: Option<String>,
    },
}

/// The line printed for a failed command: the error and its causes, each said
/// once. Many errors already show their cause in their own message (ours, and
/// sqlx's `error returned from database: …` over SQLite's own), so the plain
/// chain would repeat it: a cause whose text is already on the line is left
/// out, and once the innermost cause is on it, the wrappers between are too.
pub fn error_line(err: &anyhow::Error) -> String {
    let root = err.root_cause().to_string();
    let mut line = String::new();
    for cause in err.chain() {
        if !line.is_empty() && line.contains(&root) {
            break;
        }
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run => cmd_run(settings).await,
        Command::Backfill {
            symbols,
            resolutions,
        } => {
            let form = name_form(&settings)?;
            let symbols = symbols
                .iter()
                .map(|s| Ok(form.parse(s)?.into_string()))
                .collect::<anyhow::Result<_>>()?;
            if !resolutions.is_empty() {
                tracing::info!(
                    "--resolution: all six resolutions advance together (one read yields them all)"
                );
            }
            cmd_backfill(settings, TaskFilter { symbols }).await
        }
        Command::Rebuild { symbol, from, to } => cmd_rebuild(settings, symbol, from, to).await,
        Command::Progress { json } => cmd_progress(settings, json).await,
        Command::Schema => cmd_schema(settings).await,
        Command::Generate {
            symbols,
            from,
            to,
            trades,
            seed,
            live,
            rate,
            url,
        } => {
            if live {
                return cmd_generate_live(settings, symbols, rate, seed, url).await;
            }
            let (Some(from), Some(to), Some(trades)) = (from, to, trades) else {
                bail!("generate needs --from, --to and --trades (or --live)");
            };
            let spec = GenerateSpec {
                symbols,
                from,
                to,
                trades,
                seed,
            };
            cmd_generate(settings, spec).await
        }
    }
}

/// The configured `[schema]`, parsed (validated when the settings loaded).
fn trade_schema(settings: &Settings) -> anyhow::Result<TradeSchema> {
    TradeSchema::from_settings(&settings.schema).map_err(anyhow::Error::msg)
}

/// How instruments are named under the configured `[schema]`: known from the
/// settings alone, so a bad `--symbol` is refused before connecting.
fn name_form(settings: &Settings) -> anyhow::Result<NameForm> {
    Ok(NameForm::of(&trade_schema(settings)?))
}

/// Connects to InfluxDB and checks that it answers and the database exists;
/// with `create_missing`, a missing database is created (where the
/// credentials allow it) and the log says so. With `manage_retention`, the
/// configured retention policies are created or altered (where the
/// credentials allow it); every command learns how long each is kept.
async fn connect_influx(
    settings: &Settings,
    create_missing: bool,
    manage_retention: bool,
) -> anyhow::Result<InfluxClient> {
    let mut influx = InfluxClient::new(&settings.influx)?;
    let version = influx.detect().await?;
    match influx.check_database().await {
        Err(missing @ InfluxError::DatabaseNotFound { .. }) if create_missing => {
            if let Err(e) = influx.create_database().await {
                return Err(anyhow::anyhow!("{missing} (creating it failed: {e})"));
            }
            tracing::info!(
                database = influx.database(),
                url = influx.url(),
                "created the InfluxDB database"
            );
        }
        other => other?,
    }
    influx.check_writable().await?;
    influx.prepare_retention(manage_retention).await?;
    // Every command reads (and `generate` writes) trades by the schema as
    // the server holds it; a name that is not there stops here, in one line.
    influx.resolve_schema(&trade_schema(settings)?).await?;
    tracing::debug!(version, generation = ?influx.generation(), format = ?influx.read_format(), "connected to InfluxDB");
    Ok(influx)
}

async fn build_engine(
    settings: &Settings,
    create_missing: bool,
    manage_retention: bool,
) -> anyhow::Result<Engine> {
    let influx = connect_influx(settings, create_missing, manage_retention).await?;
    let store = ProgressStore::connect(&settings.progress.database_url).await?;
    Ok(Engine::new(
        influx,
        store,
        Arc::new(SystemClock),
        settings.engine.clone(),
        Duration::from_secs(settings.progress.lease_secs),
    ))
}

fn bar(len: u64, template: &str) -> ProgressBar {
    // indicatif draws only when stderr is a terminal, so CI logs stay clean.
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// True if a start-up error may pass by itself: InfluxDB or the progress
/// store unreachable, timing out, restarting or answering 5xx.
fn is_outage(e: &anyhow::Error) -> bool {
    if let Some(e) = e.downcast_ref::<InfluxError>() {
        return e.is_transient();
    }
    e.downcast_ref::<crate::progress::ProgressError>()
        .is_some_and(|e| e.is_transient())
}

/// The engine of `ohlcd run`. A daemon is often started (or restarted by its
/// supervisor) while InfluxDB or PostgreSQL is down or restarting: that is
/// waited out, with a warning per attempt, instead of ending the daemon.
/// Mistakes that waiting cannot fix (credentials, a database that cannot be
/// created, the schema) still end it at once with their one line.
async fn build_engine_waiting(settings: &Settings) -> anyhow::Result<Engine> {
    let mut attempt = 0u32;
    loop {
        match build_engine(settings, true, true).await {
            Err(e) if is_outage(&e) => {
                attempt += 1;
                let retry_in = Duration::from_millis(500 << attempt.min(4));
                tracing::warn!(
                    error = %error_line(&e),
                    retry_in = ?retry_in,
                    "cannot start yet: waiting for InfluxDB and the progress store"
                );
                tokio::time::sleep(retry_in).await;
            }
            other => return other,
        }
    }
}

async fn cmd_run(settings: Settings) -> anyhow::Result<()> {
    crate::scheduler::validate_cron(&settings.engine.cron).map_err(anyhow::Error::msg)?;
    let engine = tokio::select! {
        engine = build_engine_waiting(&settings) => Arc::new(engine?),
        // Stopped while still waiting: nothing was started, nothing to finish.
        _ = shutdown_signal() => return Ok(()),
    };
    let listener = bind(&settings.server.listen, "server.listen").await?;
    let metrics = if settings.server.metrics_listen.is_empty() {
        None
    } else {
        Some(bind(&settings.server.metrics_listen, "server.metrics_listen").await?)
    };
    App::new(engine, Arc::new(SystemClock), &settings)
        .run(&settings, listener, metrics, shutdown_signal())
        .await
}

/// Listens on `addr`, the value of the setting `key`.
async fn bind(addr: &str, key: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn cmd_backfill(settings: Settings, filter: TaskFilter) -> anyhow::Result<()> {
    let engine = build_engine(&settings, false, true).await?;
    let pending = engine.pending_span(&filter).await?;
    let pb = bar(
        (pending / NANOS_PER_SEC).max(1) as u64,
        "{spinner} backfill [{bar:40}] {percent:>3}% {msg} (eta {eta})",
    );
    let observer_pb = pb.clone();
    let engine = engine.with_observer(Arc::new(move |e: &ChunkEvent| {
        observer_pb.inc(((e.range.end - e.range.start).max(0) / NANOS_PER_SEC) as u64);
        observer_pb.set_message(format!("{} {}", e.symbol, &to_rfc3339(e.range.start)[..10]));
    }));
    let engine = Arc::new(engine);
    let stopper = engine.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("interrupted: finishing the current chunk, then stopping");
        stopper.request_stop();
    });
    // Tasks leased by another process are either being worked on (a running
    // daemon, whose commits move the watermarks) or held by a dead one whose
    // lease will expire: wait while either may be the case.
    let lease_wait = Duration::from_secs(settings.progress.lease_secs * 2 + 5);
    let mut waiting_since: Option<Instant> = None;
    let mut mark: Option<i128> = None;
    let started = Instant::now();
    let (mut chunks, mut rows, mut candles) = (0, 0, 0);
    loop {
        let report = engine.tick(&filter).await?;
        chunks += report.chunks;
        rows += report.rows_read;
        candles += report.candles_written;
        if !report.failures.is_empty() {
            pb.abandon();
            for (symbol, error) in &report.failures {
                eprintln!("error: {symbol}: {error}");
            }
            bail!(
                "backfill failed for {} symbol(s); progress so far is kept, run again to resume",
                report.failures.len()
            );
        }
        if engine.stop_requested() {
            pb.abandon();
            bail!("interrupted; progress so far is kept, run again to resume");
        }
        if report.chunks > 0 {
            waiting_since = None;
            continue;
        }
        // Time moves during a long backfill: done once a tick finds nothing new.
        if report.symbols_leased == 0 {
            break;
        }
        let now_mark = engine.committed_mark().await?;
        if mark.is_some_and(|m| now_mark > m) {
            waiting_since = None;
        }
        mark = Some(now_mark);
        let since = *waiting_since.get_or_insert_with(Instant::now);
        if since.elapsed() > lease_wait {
            pb.abandon();
            bail!(
                "{} symbol(s) stayed leased by another ohlcd that committed nothing for {}s; is one stuck? (see `ohlcd progress`)",
                report.symbols_leased,
                lease_wait.as_secs()
            );
        }
        pb.set_message(format!(
            "waiting for {} symbol(s) leased by another ohlcd",
            report.symbols_leased
        ));
        tracing::info!(
            symbols = report.symbols_leased,
            "waiting for leases held by another ohlcd"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backfill complete: {chunks} chunks, {rows} source rows read, {candles} candles written in {secs:.1}s ({:.0} rows/s)",
        rows as f64 / secs.max(1e-9)
    );
    Ok(())
}

async fn cmd_rebuild(settings: Settings, symbol: String, from: i64, to: i64) -> anyhow::Result<()> {
    let symbol = name_form(&settings)?.parse(&symbol)?;
    if from >= to {
        bail!("--from must be before --to");
    }
    let engine = build_engine(&settings, false, false).await?;
    let started = Instant::now();
    let report = engine.rebuild(&symbol, from, to).await?;
    if report.is_limited() {
        println!("{}", report.limit_line(&symbol));
    }
    println!(
        "rebuilt {symbol} from {} to {}: {} candles written in {:.1}s",
        to_rfc3339(report.range.start),
        to_rfc3339(report.range.end),
        report.written,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn cmd_progress(settings: Settings, json: bool) -> anyhow::Result<()> {
    let store = ProgressStore::open_existing(&settings.progress.database_url).await?;
    let now = SystemClock.now();
    let entries: Vec<ProgressEntry> = store
        .tasks()
        .await?
        .iter()
        .map(|t| ProgressEntry::from_task(t, now))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        // "No tasks" must not blame the user while trades sit in InfluxDB
        // under names the configuration does not know: check the schema
        // where InfluxDB can be reached.
        match connect_influx(&settings, false, false).await {
            Err(e) => match e.downcast_ref::<InfluxError>() {
                Some(InfluxError::Schema(_)) => return Err(e),
                _ => tracing::debug!(error = %e, "InfluxDB not checked for trades"),
            },
            Ok(influx) => {
                let symbols = influx.symbols().await?;
                if !symbols.is_empty() {
                    println!(
                        "no tasks yet, and InfluxDB has trades of {}: run `ohlcd backfill` or `ohlcd run`",
                        symbol_list(&symbols)
                    );
                    return Ok(());
                }
            }
        }
        println!("no tasks yet: run `ohlcd backfill` or `ohlcd run` once trades are in InfluxDB");
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header([
        "symbol",
        "resolution",
        "status",
        "watermark",
        "lag",
        "last run",
        "duration",
        "owner",
        "skipped",
        "last error",
    ]);
    let dash = || "-".to_string();
    for e in &entries {
        table.add_row([
            e.symbol.clone(),
            e.resolution.clone(),
            e.status.clone(),
            e.watermark.clone().unwrap_or_else(dash),
            e.lag.clone().unwrap_or_else(dash),
            e.last_run_started_at.clone().unwrap_or_else(dash),
            e.last_run_duration_ms
                .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                .unwrap_or_else(dash),
            e.last_owner.clone().unwrap_or_else(dash),
            e.rows_skipped.to_string(),
            match (e.failures, &e.last_error) {
                (n, Some(err)) if n > 1 => format!("({n} in a row) {err}"),
                (_, err) => err.clone().unwrap_or_default(),
            },
        ]);
    }
    println!("{table}");
    Ok(())
}

async fn cmd_generate(settings: Settings, spec: GenerateSpec) -> anyhow::Result<()> {
    let schema = trade_schema(&settings)?;
    spec.validate(SystemClock.now() / 1_000_000, &NameForm::of(&schema))
        .map_err(anyhow::Error::msg)?;
    let mut influx = InfluxClient::new(&settings.influx)?;
    influx.detect().await?;
    // Demo data: creating the database is what the user wants here.
    influx.create_database().await?;
    influx.prepare_retention(true).await?;
    // Written in the configured schema, with the types the server holds;
    // refused up front where that cannot be done faithfully.
    influx.resolve_schema(&schema).await?;
    let writer = TradeWriter::new(influx.layout()).map_err(anyhow::Error::msg)?;
    for s in &spec.symbols {
        writer.measurement_of(s).map_err(anyhow::Error::msg)?;
    }
    let pb = bar(
        spec.trades,
        "{spinner} generate [{bar:40}] {pos}/{len} trades ({per_sec}, eta {eta})",
    );
    let started = Instant::now();
    // Generation on a blocking thread, writes here: the next batch is produced
    // while the previous one is in flight.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<NewTrade>>(2);
    let producer_spec = spec.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut generator = Generator::new(&producer_spec);
        loop {
            let batch: Vec<NewTrade> = generator.by_ref().take(INGEST_BATCH).collect();
            if batch.is_empty() || tx.blocking_send(batch).is_err() {
                break;
            }
        }
    });
    let mut written = 0u64;
    while let Some(batch) = rx.recv().await {
        write_trades(&influx, &batch).await?;
        written += batch.len() as u64;
        pb.set_position(written);
    }
    producer.await?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "generated {written} trades for {} from {} to {} in {secs:.1}s ({:.0} trades/s) into {}/{}",
        symbol_list(&spec.symbols),
        to_rfc3339(spec.from),
        to_rfc3339(spec.to),
        written as f64 / secs.max(1e-9),
        settings.influx.url,
        settings.influx.database
    );
    Ok(())
}

/// `ohlcd schema`: what the configured `[schema]` finds in InfluxDB and how
/// ohlcd reads it, ending with five trades as they are parsed.
async fn cmd_schema(settings: Settings) -> anyhow::Result<()> {
    let influx = connect_influx(&settings, false, false).await?;
    let layout = influx.layout().clone();
    let columns = influx.server_columns().await?;
    println!(
        "InfluxDB {} database {:?} ({:?})",
        influx.url(),
        influx.database(),
        influx.generation()
    );
    let measurements = influx.trade_measurements().await?;
    println!("trades:");
    if measurements.is_empty() {
        println!("  no measurement yet: a first install");
    }
    for (m, _) in &measurements {
        let cols = columns.get(m).cloned().unwrap_or_default();
        println!("  measurement {m:?}");
        println!(
            "    tags: {}",
            cols.tags.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        println!(
            "    fields: {}",
            cols.fields
                .iter()
                .map(|(f, t)| format!("{f} ({})", crate::schema::layout::Column::Field(*t)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("read as:");
    for (key, how) in crate::influx::discover::describe(&layout) {
        println!("  {key}: {how}");
    }
    let symbols = influx.symbols().await?;
    println!("symbols: {} ({})", symbols.len(), symbol_list(&symbols));
    if symbols.is_empty() {
        return Ok(());
    }
    let first = influx.first_trades_of(&symbols, 0).await?;
    let last = influx.last_trades_of(&symbols).await?;
    if let (Some(first), Some(last)) = (first.values().min(), last.values().max()) {
        println!("first trade: {}", to_rfc3339(*first));
        println!("last trade: {}", to_rfc3339(*last));
    }
    let Some((symbol, from)) = symbols
        .iter()
        .find_map(|s| first.get(s).map(|t| (s.clone(), *t)))
    else {
        return Ok(());
    };
    println!("first five rows of {symbol}, as ohlcd reads them:");
    let mut rows = Vec::new();
    influx
        .read_trades(
            TradeRead::new(&[&symbol], from..i64::MAX).limit(5),
            |_, row| rows.push(row),
        )
        .await?;
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["time", "price", "amount", "side", "id", "read as"]);
    for row in rows {
        match row {
            Ok(t) => table.add_row([
                to_rfc3339(t.time),
                t.price.to_string(),
                t.amount.to_string(),
                t.side.map_or("-".to_string(), |s| s.as_str().to_string()),
                t.id.to_string(),
                "trade".to_string(),
            ]),
            Err(skip) => table.add_row([
                to_rfc3339(skip.time),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                format!("skipped: {}", skip.reason),
            ]),
        };
    }
    println!("{table}");
    Ok(())
}

/// A list of symbols for a message: all of them when few, else how many and
/// the first and last.
fn symbol_list(symbols: &[String]) -> String {
    match symbols {
        [first, .., last] if symbols.len() > 5 => {
            format!("{} symbols ({first} … {last})", symbols.len())
        }
        _ => symbols.join(","),
    }
}

/// `generate --live`: posts `rate` trades a second, in 5 requests a second,
/// to the daemon's ingest API until SIGINT/SIGTERM. A failed request is
/// reported and the next one goes on (the daemon may still be starting).
async fn cmd_generate_live(
    settings: Settings,
    symbols: Vec<String>,
    rate: Option<f64>,
    seed: u64,
    url: Option<String>,
) -> anyhow::Result<()> {
    let form = name_form(&settings)?;
    for s in &symbols {
        form.parse(s)?;
    }
    if let Some(rate) = rate
        && !(rate > 0.0 && rate <= 100_000.0)
    {
        bail!("--rate must be between 0 and 100000 trades per second, got {rate}");
    }
    let mut influx = InfluxClient::new(&settings.influx)?;
    // Where the stored walk is: the schema as the server holds it (an
    // unreachable InfluxDB leaves every symbol to start anew).
    if influx.detect().await.is_ok() {
        let _ = influx.resolve_schema(&trade_schema(&settings)?).await;
    }
    let now = SystemClock.now();
    let mut start = Vec::new();
    let mut day_counts = Vec::new();
    for s in &symbols {
        // Continue the stored walk; a fresh symbol (or an unreachable InfluxDB) starts anew.
        let last = influx.last_trade_before(s, now).await.ok().flatten();
        start.push((s.clone(), last.map(|(_, price)| price)));
        if rate.is_none()
            && let Some((at, _)) = last
        {
            let day = at + 1 - crate::candle::NANOS_PER_DAY..at + 1;
            let counts = influx.count_trades_of(std::slice::from_ref(s), day).await;
            day_counts.push(counts.ok().and_then(|c| c.get(s).copied()).unwrap_or(0));
        }
    }
    let (rate, why) = match rate {
        Some(rate) => (rate, "--rate"),
        None => match crate::generate::history_rate(&day_counts) {
            Some(rate) => (rate.min(100_000.0), "the stored history's density"),
            None => (1.0, "no stored history"),
        },
    };
    let mut walk = crate::generate::LiveWalk::new(start, seed);
    let base = url.unwrap_or_else(|| format!("http://{}", settings.server.listen));
    let endpoint = format!("{}/api/trades", base.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    eprintln!("posting about {rate:.3} trades/s ({why}) to {endpoint} until Ctrl-C");
    let (mut due, mut posted, mut failures) = (0.0f64, 0u64, 0u64);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        due += rate / 5.0;
        let n = due.floor() as usize;
        due -= n as f64;
        if n == 0 {
            continue;
        }
        let trades = walk.trades(SystemClock.now() / 1_000_000, n);
        let body: Vec<serde_json::Value> = trades
            .iter()
            .map(|t| {
                serde_json::json!({
                    "symbol": t.symbol, "price": t.price, "amount": t.amount,
                    "side": t.side.as_str(), "timestamp": t.time_ms, "id": t.id,
                })
            })
            .collect();
        let mut request = http.post(&endpoint).json(&body);
        if settings.server.ingest_token.is_set() {
            request = request.bearer_auth(settings.server.ingest_token.expose());
        }
        match request.send().await {
            Ok(resp) if resp.status().is_success() => posted += n as u64,
            Ok(resp) => {
                failures += 1;
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                eprintln!("POST {endpoint}: {status}: {}", text.trim());
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(25) {
                    eprintln!("POST {endpoint}: {e} (is `ohlcd run` up? retrying)");
                }
            }
        }
    }
    println!("posted {posted} live trades to {endpoint}");
    Ok(())
}

#[cfg(test)]
mod tests;

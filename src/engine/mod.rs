//! The downsampling job. [`Engine::tick`] is one scheduler step; tests call it
//! directly with a [`crate::clock::ManualClock`], the cron scheduler only
//! triggers it.
//!
//! The unit of work is a *batch* of symbols leased together for all six
//! resolutions: raw trades of the whole batch are read with one query per
//! chunk, every resolution is computed from that one read in memory
//! ([`plan`]), the candles are written, and then every watermark of the batch
//! is committed in one transaction. Cost grows with trades, not with symbols: a
//! caught-up pass over thousands of symbols is a handful of queries.
//!
//! A tick runs in rounds until nothing is left: each round first takes every
//! symbol that is near the horizon (*live*) to it, then moves every symbol
//! that is further behind (*lagging*) by one chunk. So a long backfill never
//! holds back the live candles of the other symbols by more than one round.
//!
//! Here: the engine, its errors and reports, and the tick. Its work is in
//! `round` (which symbols a round takes; claiming, leases, how a batch
//! ended), `pipeline` (a claimed batch's steps: read, compute, write, commit)
//! and `repair` (lookback, late ranges, rebuild); [`plan`] is the pure part
//! (windows, steps, merging), [`warehouse`] the raw-trade source.
//!
//! Invariants:
//! - a watermark only moves after InfluxDB acknowledged the candles of the
//!   step, and only while the symbol's lease is held (every write is fenced);
//! - 1m never passes the last closed minute before `now - settle`, so the open
//!   minute is never written; a coarser resolution's watermark is always the
//!   start of its window holding the 1m watermark, so every window it wrote is
//!   complete;
//! - candle writes are idempotent, so a crash between write and commit only
//!   recomputes the same values.

mod pipeline;
pub mod plan;
mod repair;
mod round;
pub mod warehouse;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc::{Receiver, Sender};

use crate::candle::{
    Aggregator, Candle, NANOS_PER_DAY, NANOS_PER_SEC, Resolution, Skip, Watermarks, floor_to,
};
use crate::clock::Clock;
use crate::config::EngineSettings;
use crate::influx::{CandleSet, InfluxClient, InfluxError};
use crate::progress::{
    Dirty, FailedRun, Failure, ProgressError, ProgressStore, StepCommit, TaskStatus,
};
use crate::times::to_rfc3339;
use pipeline::{Poisoned, candle_sets, not_finite};
pub use plan::RebuildReport;
pub use warehouse::Warehouse;

/// Errors of one engine step.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// InfluxDB failed.
    #[error(transparent)]
    Influx(#[from] InfluxError),
    /// The progress store failed.
    #[error(transparent)]
    Progress(#[from] ProgressError),
    /// Another process holds the lease for longer than we are willing to wait.
    #[error("symbol {symbol} is leased by {owner}; is another ohlcd running?")]
    Busy {
        /// The symbol.
        symbol: String,
        /// Lease holder.
        owner: String,
    },
    /// A candle came out with a value InfluxDB cannot store. Rows whose
    /// values could overflow a sum are skipped when read, so this is a
    /// defence: the symbol fails, alone, before anything of it is written.
    #[error(
        "{symbol}: the {resolution} candle at {start} has {field} = {value}, which InfluxDB cannot store; nothing of it was written (see docs/bad-rows.md)"
    )]
    NotFinite {
        /// The symbol.
        symbol: String,
        /// The candle's resolution.
        resolution: Resolution,
        /// Its window start, RFC 3339.
        start: String,
        /// The first field that is not finite.
        field: &'static str,
        /// Its value.
        value: f64,
    },
}

impl EngineError {
    /// Whose fault the error is: a symbol's own (retried after a growing
    /// backoff, without holding back the rest of its batch) or the servers'.
    pub fn failure(&self) -> Failure {
        match self {
            EngineError::NotFinite { .. } => Failure::OfTheSymbol,
            EngineError::Influx(e) if e.is_refused_write() => Failure::OfTheSymbol,
            _ => Failure::OfTheServers,
        }
    }
}

/// Which symbols a tick or backfill covers; empty means all.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only these symbols.
    pub symbols: Vec<String>,
}

/// Summary of one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickReport {
    /// True if another tick was still running, so this one did nothing.
    pub overlapped: bool,
    /// Symbols this daemon processed (each counted once per tick).
    pub symbols_run: u64,
    /// Symbols skipped because another daemon held them.
    pub symbols_leased: u64,
    /// Steps committed (one step: one symbol over one chunk, or one repair).
    pub chunks: u64,
    /// Raw trades read.
    pub rows_read: u64,
    /// Candles written, all resolutions.
    pub candles_written: u64,
    /// Rounds run (see the module docs).
    pub rounds: u64,
    /// Failed symbols with their error; their watermarks stay where they were.
    pub failures: Vec<(String, String)>,
}

/// Reported after every committed step (drives progress bars and logs).
#[derive(Debug, Clone)]
pub struct ChunkEvent {
    /// The symbol.
    pub symbol: String,
    /// The 1m range processed.
    pub range: Range<i64>,
    /// Raw trades read.
    pub rows_read: u64,
    /// Candles written, all resolutions.
    pub candles_written: u64,
}

/// Callback for chunk events.
pub type ChunkObserver = Arc<dyn Fn(&ChunkEvent) + Send + Sync>;

/// One symbol's work in a round.
#[derive(Debug, Clone)]
struct Work {
    symbol: String,
    watermarks: Watermarks,
    /// The step: raw trades in `[from, end)`; empty when only repairs are due.
    from: i64,
    end: i64,
    /// Late ranges to repair first, as read from the progress store.
    dirty: Option<Dirty>,
}

/// A lease-holder id unique to this process: host, pid and a random suffix.
pub fn default_owner() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ohlcd".into());
    let suffix: u16 = rand::random();
    format!("{host}-{}-{suffix:04x}", std::process::id())
}

/// The downsampling engine: trades in, candles out, progress in the store.
pub struct Engine<W: Warehouse = InfluxClient> {
    warehouse: W,
    store: ProgressStore,
    clock: Arc<dyn Clock>,
    settings: EngineSettings,
    lease: Duration,
    owner: String,
    tick_lock: tokio::sync::Mutex<()>,
    observer: Option<ChunkObserver>,
    stopping: AtomicBool,
    /// When the lookback last re-read raw data behind the watermarks.
    last_lookback: std::sync::Mutex<Option<i64>>,
    /// Raw trades in each symbol's last chunk that started at midnight: the
    /// estimate of its next chunk, so batches are sized without a `count()`.
    estimates: std::sync::Mutex<HashMap<String, u64>>,
    /// What [`Engine::pending_span`] found (the symbols, and the first trade
    /// of those never processed), handed to the tick right after it instead
    /// of asking InfluxDB again: on InfluxDB 3, which has no series index,
    /// each of those queries scans the measurement (~0.25 s for 300k trades).
    primed: std::sync::Mutex<Option<Primed>>,
}

/// See `Engine::primed`.
struct Primed {
    filter: Vec<String>,
    symbols: Vec<String>,
    first: HashMap<String, i64>,
}

impl<W: Warehouse> std::fmt::Debug for Engine<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.owner)
            .finish()
    }
}

impl<W: Warehouse> Engine<W> {
    /// An engine; `lease` is how long a claimed symbol stays ours without renewal.
    pub fn new(
        warehouse: W,
        store: ProgressStore,
        clock: Arc<dyn Clock>,
        settings: EngineSettings,
        lease: Duration,
    ) -> Engine<W> {
        Engine {
            warehouse,
            store,
            clock,
            settings,
            lease,
            owner: default_owner(),
            tick_lock: tokio::sync::Mutex::new(()),
            observer: None,
            stopping: AtomicBool::new(false),
            last_lookback: std::sync::Mutex::new(None),
            estimates: std::sync::Mutex::new(HashMap::new()),
            primed: std::sync::Mutex::new(None),
        }
    }

    /// Sets the lease-holder id (tests use this to play two daemons).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Engine<W> {
        self.owner = owner.into();
        self
    }

    /// Calls `observer` after every committed step.
    pub fn with_observer(mut self, observer: ChunkObserver) -> Engine<W> {
        self.observer = Some(observer);
        self
    }

    /// Asks a running tick to stop after its current batch (graceful shutdown).
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// True once [`Engine::request_stop`] was called.
    pub fn stop_requested(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Waits until no tick is running.
    pub async fn wait_idle(&self) {
        let _guard = self.tick_lock.lock().await;
    }

    /// This engine's lease-holder id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Where trades come from and candles go.
    pub fn warehouse(&self) -> &W {
        &self.warehouse
    }

    /// The progress store.
    pub fn store(&self) -> &ProgressStore {
        &self.store
    }

    /// The last closed minute before `now - settle`: no watermark passes it.
    fn horizon(&self) -> i64 {
        let settle = self.settings.settle_secs as i64 * NANOS_PER_SEC;
        Resolution::M1.window_start(self.clock.now() - settle)
    }

    fn chunk_len(&self) -> i64 {
        i64::from(self.settings.chunk_days.max(1)) * NANOS_PER_DAY
    }

    /// Symbols the filter selects that have trades, with their task rows ensured.
    async fn discover(&self, filter: &TaskFilter) -> Result<Vec<String>, EngineError> {
        let mut symbols = self.warehouse.symbols().await?;
        if !filter.symbols.is_empty() {
            let wanted: HashSet<&String> = filter.symbols.iter().collect();
            symbols.retain(|s| wanted.contains(s));
        }
        self.store
            .ensure_symbols(&symbols, self.clock.now())
            .await?;
        Ok(symbols)
    }

    /// One scheduler step: every selected symbol is taken to the horizon, in
    /// rounds (see the module docs). Returns a report with `overlapped` set,
    /// doing nothing, if a tick is still running.
    pub async fn tick(&self, filter: &TaskFilter) -> Result<TickReport, EngineError> {
        let Ok(_guard) = self.tick_lock.try_lock() else {
            return Ok(TickReport {
                overlapped: true,
                ..TickReport::default()
            });
        };
        let started = Instant::now();
        self.warehouse.check().await?;
        let primed = self
            .primed
            .lock()
            .expect("not poisoned")
            .take()
            .filter(|p| p.filter == filter.symbols);
        let (symbols, mut first) = match primed {
            Some(p) => (p.symbols, p.first),
            None => (self.discover(filter).await?, HashMap::new()),
        };
        let mut report = TickReport::default();
        let mut run: HashSet<String> = HashSet::new();
        let mut failed: HashSet<String> = HashSet::new();
        let mut lookback_done = false;
        while !self.stop_requested() {
            let plan = self
                .plan_round(
                    &symbols,
                    &failed,
                    !lookback_done,
                    std::mem::take(&mut first),
                )
                .await?;
            report.symbols_leased = report.symbols_leased.max(plan.leased);
            if plan.live.is_empty() && plan.lagging.is_empty() {
                break;
            }
            report.rounds += 1;
            let lookback = !lookback_done && self.lookback_due();
            if lookback {
                lookback_done = true;
                *self.last_lookback.lock().expect("not poisoned") = Some(self.clock.now());
            }
            run.extend(
                plan.live
                    .iter()
                    .chain(&plan.lagging)
                    .map(|w| w.symbol.clone()),
            );
            let live_batches: Vec<(Vec<Work>, u64)> = plan::pack_batches(
                plan.live.into_iter().map(|w| (w, 0)).collect(),
                u64::MAX,
                self.settings.batch_symbols,
            );
            for (batch, _) in live_batches {
                self.run_batch(batch, 1, 0, lookback, &mut report, &mut failed)
                    .await;
            }
            if plan.lagging.is_empty() || self.stop_requested() {
                break;
            }
            self.lagging_round(plan.lagging, &mut report, &mut failed)
                .await?;
        }
        report.symbols_run = run.len() as u64;
        let secs = started.elapsed().as_secs_f64();
        ::metrics::histogram!("ohlcd_tick_duration_seconds").record(secs);
        ::metrics::gauge!("ohlcd_tick_symbols").set(report.symbols_run as f64);
        ::metrics::counter!("ohlcd_tick_symbols_total").increment(report.symbols_run);
        if report.chunks > 0 || !report.failures.is_empty() {
            tracing::info!(
                symbols = report.symbols_run,
                rounds = report.rounds,
                chunks = report.chunks,
                rows = report.rows_read,
                candles = report.candles_written,
                failed = report.failures.len(),
                leased = report.symbols_leased,
                secs = format!("{secs:.3}"),
                "tick done"
            );
        } else {
            tracing::debug!(
                symbols = symbols.len(),
                secs = format!("{secs:.3}"),
                "tick: nothing new"
            );
        }
        Ok(report)
    }

    fn lookback_due(&self) -> bool {
        if self.settings.lookback_secs == 0 {
            return false;
        }
        let every = self.settings.lookback_interval_secs as i64 * NANOS_PER_SEC;
        match *self.last_lookback.lock().expect("not poisoned") {
            Some(t) => self.clock.now() - t >= every,
            None => true,
        }
    }

    /// A figure that grows whenever any process commits a step of any task:
    /// the sum of every watermark. A backfill waiting on leases held by
    /// another process reads it to tell a holder at work from one gone.
    pub async fn committed_mark(&self) -> Result<i128, EngineError> {
        let states = self.store.symbol_states(&self.owner).await?;
        Ok(states
            .values()
            .flat_map(|st| st.watermarks.iter().flatten())
            .map(|w| i128::from(*w))
            .sum())
    }

    /// Nanoseconds of raw trades the selected symbols still have to cover
    /// (drives the backfill progress bar). The next tick of the same filter
    /// starts from the symbols and first trades found here.
    pub async fn pending_span(&self, filter: &TaskFilter) -> Result<i64, EngineError> {
        let symbols = self.discover(filter).await?;
        let states = self.store.symbol_states(&self.owner).await?;
        let unstarted: Vec<String> = symbols
            .iter()
            .filter(|s| {
                states
                    .get(*s)
                    .and_then(|st| plan::resume_at(&st.watermarks))
                    .is_none()
            })
            .cloned()
            .collect();
        let first = self.warehouse.first_trades(&unstarted, 0).await?;
        let horizon = self.horizon();
        let pending = symbols
            .iter()
            .filter_map(|s| {
                states
                    .get(s)
                    .and_then(|st| plan::resume_at(&st.watermarks))
                    .or_else(|| first.get(s).map(|t| floor_to(*t, NANOS_PER_DAY)))
            })
            .map(|from| (horizon - from).max(0))
            // Hundreds of symbols a few years behind exceed i64 nanoseconds.
            .fold(0i64, i64::saturating_add);
        *self.primed.lock().expect("not poisoned") = Some(Primed {
            filter: filter.symbols.clone(),
            symbols,
            first,
        });
        Ok(pending)
    }
}

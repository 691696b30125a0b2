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
//! Invariants:
//! - a watermark only moves after InfluxDB acknowledged the candles of the
//!   step, and only while the symbol's lease is held (every write is fenced);
//! - 1m never passes the last closed minute before `now - settle`, so the open
//!   minute is never written; a coarser resolution's watermark is always the
//!   start of its window holding the 1m watermark, so every window it wrote is
//!   complete;
//! - candle writes are idempotent, so a crash between write and commit only
//!   recomputes the same values.

pub mod plan;
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
use crate::progress::{FailedRun, Failure, ProgressError, ProgressStore, StepCommit, TaskStatus};
use crate::times::to_rfc3339;
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

/// The first candle of `by_res` (one symbol's, in [`Resolution::ALL`] order)
/// with a value that is not finite, as the error that fails its symbol.
fn not_finite(symbol: &str, by_res: &[Vec<Candle>; 6]) -> Option<EngineError> {
    Resolution::ALL
        .iter()
        .zip(by_res)
        .find_map(|(res, candles)| {
            candles.iter().find_map(|c| {
                let (field, value) = c.non_finite()?;
                Some(EngineError::NotFinite {
                    symbol: symbol.to_string(),
                    resolution: *res,
                    start: to_rfc3339(c.start),
                    field,
                    value,
                })
            })
        })
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
    /// Late ranges to repair first: (newest row id, ranges).
    dirty: Option<(i64, Vec<Range<i64>>)>,
}

/// What the reader of a batch's steps hands its writer (see
/// `Engine::advance`), in step order.
enum Sent<'a> {
    /// Candles of the step being read, per symbol, in [`Resolution::ALL`] order.
    Candles(Vec<(&'a str, [Vec<Candle>; 6])>),
    /// The step is read, all its candles sent.
    Done(StepRead),
}

/// Symbols of a batch that failed on their own (a write InfluxDB refused
/// for them, a candle that is not finite), with why: the rest of the batch
/// goes on without them, and they are marked failed when it ends. Shared by
/// the reader and the writer of a batch's steps.
#[derive(Default)]
struct Poisoned(std::sync::Mutex<HashMap<String, String>>);

impl Poisoned {
    fn has(&self, symbol: &str) -> bool {
        self.0.lock().expect("not poisoned").contains_key(symbol)
    }

    fn insert(&self, symbol: String, e: &EngineError) {
        tracing::warn!(symbol, error = %e, "symbol failed on its own; the rest of its batch goes on");
        self.0
            .lock()
            .expect("not poisoned")
            .entry(symbol)
            .or_insert_with(|| e.to_string());
    }

    /// `result` of a step of `symbol` alone: its value, or `None` once the
    /// symbol is marked for an error of its own; the servers' errors stay
    /// errors of the batch.
    fn unless_own<T>(
        &self,
        symbol: &str,
        result: Result<T, EngineError>,
    ) -> Result<Option<T>, EngineError> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.failure() == Failure::OfTheSymbol => {
                self.insert(symbol.to_string(), &e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn take(self) -> HashMap<String, String> {
        self.0.into_inner().expect("not poisoned")
    }
}

/// What [`Engine::read_minutes`] read, per symbol: trades, skipped rows, and
/// the 1m aggregates of the trades.
#[derive(Default)]
struct MinuteRead<'b> {
    rows: HashMap<&'b str, u64>,
    skipped: HashMap<&'b str, u64>,
    minutes: HashMap<&'b str, Aggregator>,
}

/// A step read: its commit, once its candles are acknowledged.
struct StepRead {
    steps: Vec<StepCommit>,
    started_at: i64,
}

/// What one round has to do.
#[derive(Debug, Default)]
struct RoundPlan {
    live: Vec<Work>,
    lagging: Vec<Work>,
    leased: u64,
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

/// Candles whose writes may be awaited at once (about 10 MB): several steps
/// of a few symbols, every part of one step of hundreds, one part at a time
/// for thousands.
const CANDLES_IN_FLIGHT: usize = 50_000;

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

    /// Sorts the selected symbols into live and lagging work for one round,
    /// from one read of the progress table, one of the late ranges and, for
    /// symbols never processed and not in `known` (first trades just found
    /// by [`Engine::pending_span`]), one query for their first trade.
    async fn plan_round(
        &self,
        symbols: &[String],
        failed: &HashSet<String>,
        may_look_back: bool,
        known: HashMap<String, i64>,
    ) -> Result<RoundPlan, EngineError> {
        let horizon = self.horizon();
        let states = self.store.symbol_states(&self.owner).await?;
        let mut dirty = self.store.dirty_of(symbols).await?;
        let look_back = may_look_back && self.lookback_due();
        let live_span = self.settings.live_span_secs as i64 * NANOS_PER_SEC;
        let mut plan = RoundPlan::default();
        let mut unstarted: Vec<String> = Vec::new();
        let mut starts: Vec<(String, Watermarks, Option<i64>)> = Vec::new();
        for symbol in symbols {
            if failed.contains(symbol) {
                continue;
            }
            let Some(state) = states.get(symbol) else {
                continue;
            };
            if state.leased_by.is_some() {
                plan.leased += 1;
                continue;
            }
            if let Some((failures, at)) = state.failing
                && plan::retry_at(failures, at) > self.clock.now()
            {
                continue;
            }
            match plan::resume_at(&state.watermarks) {
                Some(from) => starts.push((symbol.clone(), state.watermarks, Some(from))),
                None => {
                    unstarted.push(symbol.clone());
                    starts.push((symbol.clone(), state.watermarks, None));
                }
            }
        }
        // A symbol never processed starts at midnight before its first trade.
        unstarted.retain(|s| !known.contains_key(s));
        let mut first = self.warehouse.first_trades(&unstarted, 0).await?;
        first.extend(known);
        for (symbol, watermarks, from) in starts {
            let Some(from) =
                from.or_else(|| first.get(&symbol).map(|t| floor_to(*t, NANOS_PER_DAY)))
            else {
                continue;
            };
            let end = plan::step_end(from, horizon, self.chunk_len()).max(from);
            let symbol_dirty = dirty.remove(&symbol);
            let live = horizon - from <= live_span;
            if end == from && symbol_dirty.is_none() && !(look_back && live) {
                continue;
            }
            let work = Work {
                symbol,
                watermarks,
                from,
                end,
                dirty: symbol_dirty,
            };
            if live {
                plan.live.push(work);
            } else {
                plan.lagging.push(work);
            }
        }
        Ok(plan)
    }

    /// Moves every lagging symbol by one chunk: symbols that share a chunk are
    /// counted with one query and packed into batches of about
    /// `engine.batch_rows` trades; symbols without trades in their chunk jump
    /// to their next trade without reading anything.
    async fn lagging_round(
        &self,
        lagging: Vec<Work>,
        report: &mut TickReport,
        failed: &mut HashSet<String>,
    ) -> Result<(), EngineError> {
        let mut by_chunk: BTreeMap<i64, Vec<Work>> = BTreeMap::new();
        for w in lagging {
            by_chunk.entry(w.end).or_default().push(w);
        }
        let mut batches: Vec<(Vec<Work>, u64)> = Vec::new();
        for (end, works) in by_chunk {
            let start = works.iter().map(|w| w.from).min().unwrap_or(end);
            // InfluxDB 1.x decodes every price to count it (30–50 % of a
            // read), so only symbols without an estimate are counted.
            let mut counts: HashMap<String, u64> = HashMap::new();
            let mut unknown: Vec<String> = Vec::new();
            {
                let estimates = self.estimates.lock().expect("not poisoned");
                for w in &works {
                    match estimates.get(&w.symbol) {
                        Some(n) => {
                            counts.insert(w.symbol.clone(), *n);
                        }
                        None => unknown.push(w.symbol.clone()),
                    }
                }
            }
            let uncounted: HashSet<&String> = unknown.iter().collect();
            let counted = if unknown.is_empty() {
                HashMap::new()
            } else {
                self.warehouse.count_trades(&unknown, start..end).await?
            };
            let (empty, busy): (Vec<Work>, Vec<Work>) = works.into_iter().partition(|w| {
                w.dirty.is_none()
                    && uncounted.contains(&w.symbol)
                    && !counted.contains_key(&w.symbol)
                    && w.from == floor_to(w.from, NANOS_PER_DAY)
            });
            counts.extend(counted);
            self.jump(empty, end, report).await?;
            let sized: Vec<(Work, u64)> = busy
                .into_iter()
                .map(|w| {
                    let n = counts.get(&w.symbol).copied().unwrap_or(0);
                    (w, n)
                })
                .collect();
            batches.extend(plan::pack_batches(
                sized,
                self.settings.batch_rows,
                self.settings.batch_symbols,
            ));
        }
        // InfluxDB's serialization of raw rows is the bottleneck and runs one
        // core per query: while fewer batches than reads are in flight, a
        // batch reads several of its parts at once.
        let in_flight = self.settings.concurrency.min(batches.len()).max(1);
        let parts = (self.settings.read_parallelism / in_flight).max(1);
        let outcomes: Vec<(TickReport, HashSet<String>)> = futures_util::stream::iter(batches)
            .map(|(batch, rows)| async move {
                let mut r = TickReport::default();
                let mut f = HashSet::new();
                self.run_batch(batch, parts, rows, false, &mut r, &mut f)
                    .await;
                (r, f)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        for (r, f) in outcomes {
            report.chunks += r.chunks;
            report.rows_read += r.rows_read;
            report.candles_written += r.candles_written;
            report.symbols_leased += r.symbols_leased;
            report.failures.extend(r.failures);
            failed.extend(f);
        }
        Ok(())
    }

    /// Symbols with no trade in their chunk, starting at midnight: their
    /// watermarks move to the midnight before their next trade (or the
    /// horizon) at once. Every window in between is empty, and every
    /// resolution divides a day, so nothing is left open behind them.
    async fn jump(
        &self,
        works: Vec<Work>,
        chunk_end: i64,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        if works.is_empty() {
            return Ok(());
        }
        let symbols: Vec<String> = works.iter().map(|w| w.symbol.clone()).collect();
        let next = self.warehouse.first_trades(&symbols, chunk_end).await?;
        let horizon = self.horizon();
        let now = self.clock.now();
        let claimed: HashSet<String> = self
            .store
            .claim_planned(&planned(&works), &self.owner, now, self.lease)
            .await?
            .into_iter()
            .collect();
        report.symbols_leased += (symbols.len() - claimed.len()) as u64;
        let mut steps = Vec::new();
        let mut statuses = Vec::new();
        for w in works.into_iter().filter(|w| claimed.contains(&w.symbol)) {
            let to = match next.get(&w.symbol) {
                Some(t) => floor_to(*t, NANOS_PER_DAY).min(horizon),
                None => horizon,
            }
            .max(w.end);
            statuses.push((w.symbol.clone(), status_at(to, horizon)));
            steps.push(StepCommit {
                symbol: w.symbol,
                kind: "chunk",
                range: w.from..to,
                watermarks: Some(plan::advanced(&w.watermarks, to)),
                rows_read: 0,
                skipped: 0,
                candles: [0; 6],
                started_at: now,
            });
        }
        self.store
            .commit_steps(&self.owner, &steps, self.clock.now())
            .await?;
        self.store
            .release_symbols(&self.owner, &statuses, self.clock.now())
            .await?;
        report.chunks += steps.len() as u64;
        for s in &steps {
            self.notify(&s.symbol, s.range.clone(), 0, 0);
        }
        Ok(())
    }

    /// Claims a batch (`rows`: the trades expected in it), runs it while
    /// renewing its leases, and records the outcome: released as
    /// completed/idle, or failed with the error (the watermarks stay at the
    /// last commit).
    async fn run_batch(
        &self,
        mut works: Vec<Work>,
        parts: usize,
        rows: u64,
        lookback: bool,
        report: &mut TickReport,
        failed: &mut HashSet<String>,
    ) {
        let symbols: Vec<String> = works.iter().map(|w| w.symbol.clone()).collect();
        let now = self.clock.now();
        let claimed = match self
            .store
            .claim_planned(&planned(&works), &self.owner, now, self.lease)
            .await
        {
            Ok(c) => c.into_iter().collect::<HashSet<String>>(),
            Err(e) => {
                for s in symbols {
                    report.failures.push((s.clone(), e.to_string()));
                    failed.insert(s);
                }
                return;
            }
        };
        report.symbols_leased += (works.len() - claimed.len()) as u64;
        works.retain(|w| claimed.contains(&w.symbol));
        if works.is_empty() {
            return;
        }
        let held: Vec<String> = works.iter().map(|w| w.symbol.clone()).collect();
        let started_at = self.clock.now();
        let poisoned = Poisoned::default();
        let result = tokio::select! {
            r = self.process_batch(&mut works, parts, rows, lookback, report, &poisoned) => r,
            e = self.keep_leases(&held) => Err(e),
        };
        let horizon = self.horizon();
        match result {
            Ok(()) => {
                let poisoned = poisoned.take();
                for (symbol, msg) in &poisoned {
                    let Some(w) = works.iter().find(|w| &w.symbol == symbol) else {
                        continue;
                    };
                    let run = FailedRun {
                        range: w.from..w.end,
                        error: msg,
                        failure: Failure::OfTheSymbol,
                        started_at,
                    };
                    self.fail(std::slice::from_ref(symbol), &run, report, failed)
                        .await;
                }
                let statuses: Vec<(String, TaskStatus)> = works
                    .iter()
                    .filter(|w| !poisoned.contains_key(&w.symbol))
                    .map(|w| (w.symbol.clone(), status_at(w.end, horizon)))
                    .collect();
                if let Err(e) = self
                    .store
                    .release_symbols(&self.owner, &statuses, self.clock.now())
                    .await
                {
                    tracing::warn!(error = %e, "could not release leases; they expire on their own");
                }
                // Test point: a batch done and released, the next not claimed.
                crate::failpoint::hit("after_release").await;
            }
            Err(EngineError::Progress(e @ ProgressError::LeaseLost { .. })) => {
                // Our lease ran out before a renewal got through, and another
                // process took the symbol over: its work, not a failure. The
                // rest of the batch goes back as far as it was committed.
                tracing::warn!(error = %e, "a lease was lost; giving the batch back");
                let statuses: Vec<(String, TaskStatus)> = works
                    .iter()
                    .map(|w| (w.symbol.clone(), status_at(w.from, horizon)))
                    .collect();
                if let Err(e) = self
                    .store
                    .release_symbols(&self.owner, &statuses, self.clock.now())
                    .await
                {
                    tracing::warn!(error = %e, "could not release leases; they expire on their own");
                }
                report.symbols_leased += held.len() as u64;
            }
            Err(e) => {
                let from = works.iter().map(|w| w.from).min().unwrap_or(0);
                let end = works.iter().map(|w| w.end).max().unwrap_or(from);
                let msg = e.to_string();
                let run = FailedRun {
                    range: from..end,
                    error: &msg,
                    failure: e.failure(),
                    started_at,
                };
                self.fail(&held, &run, report, failed).await;
            }
        }
    }

    /// Records that `symbols` failed `run`: in the log, the metrics, the
    /// progress table (their watermarks stay at the last commit) and the
    /// tick's report.
    async fn fail(
        &self,
        symbols: &[String],
        run: &FailedRun<'_>,
        report: &mut TickReport,
        failed: &mut HashSet<String>,
    ) {
        tracing::error!(
            symbols = symbols.len(),
            first = %symbols[0],
            from = %to_rfc3339(run.range.start),
            error = %run.error,
            "batch failed"
        );
        ::metrics::counter!("ohlcd_task_failures_total").increment(symbols.len() as u64);
        if let Err(record_err) = self
            .store
            .fail_symbols(&self.owner, symbols, run, self.clock.now())
            .await
        {
            tracing::warn!(error = %record_err, "could not record the failure");
        }
        for s in symbols {
            report.failures.push((s.clone(), run.error.to_string()));
            failed.insert(s.clone());
        }
    }

    /// Renews the leases of `symbols` every third of their length; returns
    /// only when one is lost.
    async fn keep_leases(&self, symbols: &[String]) -> EngineError {
        loop {
            tokio::time::sleep(self.lease / 3).await;
            if let Err(e) = self
                .store
                .renew_symbols(symbols, &self.owner, self.clock.now(), self.lease)
                .await
            {
                return e.into();
            }
        }
    }

    /// Repairs, lookback, then the forward steps of a claimed batch
    /// ([`Engine::advance`]). Each work is left at `from`: its last committed
    /// end, `end`: the end of its last step begun (the two are equal unless a
    /// step failed).
    async fn process_batch(
        &self,
        works: &mut [Work],
        parts: usize,
        rows: u64,
        lookback: bool,
        report: &mut TickReport,
        poisoned: &Poisoned,
    ) -> Result<(), EngineError> {
        for w in works.iter() {
            if let Some((max_id, ranges)) = &w.dirty {
                let repaired = self
                    .repair(&w.symbol, &w.watermarks, ranges, "late", None)
                    .await;
                let Some((rows, candles)) = poisoned.unless_own(&w.symbol, repaired)? else {
                    continue;
                };
                self.store.clear_dirty_of(&w.symbol, *max_id).await?;
                report.chunks += 1;
                report.rows_read += rows;
                report.candles_written += candles;
            }
        }
        if lookback {
            self.look_back(works, report, poisoned).await?;
        }
        self.advance(works, parts, rows, report, poisoned).await
    }

    /// The forward steps of a claimed batch, pipelined. A reader reads and
    /// computes one step after the other ([`Engine::read_step`]) and hands
    /// the candles to a writer ([`Engine::write_steps`]), which keeps several
    /// writes in flight and commits each step's watermarks, in order, once
    /// InfluxDB acknowledged every candle of it. So InfluxDB reads the next
    /// chunk while it stores the last one, and a server that acknowledges a
    /// write only after its WAL flush (InfluxDB 3, ~1 s) acknowledges several
    /// steps in one flush. After its first step a batch goes on, chunk after
    /// chunk, for up to `engine.batch_run_ms` ([`Engine::next_step`]); then
    /// the round moves on, so live symbols wait at most about that long.
    async fn advance(
        &self,
        works: &mut [Work],
        parts: usize,
        rows: u64,
        report: &mut TickReport,
        poisoned: &Poisoned,
    ) -> Result<(), EngineError> {
        let first: Vec<Work> = works
            .iter()
            .filter(|w| w.from < w.end && !poisoned.has(&w.symbol))
            .cloned()
            .collect();
        if first.is_empty() {
            return Ok(());
        }
        let names: HashSet<&str> = first.iter().map(|w| w.symbol.as_str()).collect();
        let mut begun: HashMap<String, i64> = HashMap::new();
        let mut committed: HashMap<String, i64> = HashMap::new();
        // One step's candles wait while earlier ones are written: memory stays
        // at CANDLES_IN_FLIGHT and the step being read, however long the run.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let result = tokio::try_join!(
            self.read_steps(first.clone(), &names, parts, rows, tx, &mut begun, poisoned),
            self.write_steps(rx, report, &mut committed, poisoned),
        );
        for w in works.iter_mut() {
            if let Some(&end) = committed.get(&w.symbol) {
                w.from = end;
            }
            if let Some(&end) = begun.get(&w.symbol) {
                w.end = end;
            }
        }
        result.map(|_| ())
    }

    /// The reader of [`Engine::advance`]: steps `works` forward while
    /// [`Engine::next_step`] allows, recording in `begun` where each symbol's
    /// last step begun ends.
    #[allow(clippy::too_many_arguments)]
    async fn read_steps<'a>(
        &self,
        mut works: Vec<Work>,
        names: &HashSet<&'a str>,
        parts: usize,
        mut rows: u64,
        tx: Sender<Sent<'a>>,
        begun: &mut HashMap<String, i64>,
        poisoned: &Poisoned,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        loop {
            works.retain(|w| !poisoned.has(&w.symbol));
            if works.is_empty() {
                return Ok(());
            }
            for w in &works {
                begun.insert(w.symbol.clone(), w.end);
            }
            let Some(read) = self.read_step(&works, names, parts, rows, &tx).await? else {
                return Ok(()); // the writer failed; its error is the run's
            };
            match self.next_step(works, &read, started) {
                Some((next, expected)) => (works, rows) = (next, expected),
                None => return Ok(()),
            }
        }
    }

    /// Reads one step of `works` (`rows` trades expected) and sends its
    /// candles, then its commit, to the writer; returns the trades read per
    /// symbol, or `None` when the writer is gone. A step that starts at
    /// midnight and is expected to hold more than `engine.batch_rows` trades
    /// (a dense symbol's day) is read in 4h parts ([`plan::parts`]), up to
    /// `parts` at once, and each part's 1m…4h candles go out while the next
    /// are read; its days, built from the parts' 4h candles, go out last.
    /// Any other step is one read, split into `parts` concurrent sub-ranges;
    /// one that starts inside a day (the live edge) completes the coarser
    /// windows open at its start from the few finer candles stored for them
    /// ([`plan::pieces`]).
    async fn read_step<'a>(
        &self,
        works: &[Work],
        names: &HashSet<&'a str>,
        parts: usize,
        rows: u64,
        tx: &Sender<Sent<'a>>,
    ) -> Result<Option<HashMap<&'a str, u64>>, EngineError> {
        let started_at = self.clock.now();
        let name = |w: &Work| -> &'a str { names.get(w.symbol.as_str()).expect("a batch symbol") };
        let symbols: Vec<String> = works.iter().map(|w| w.symbol.clone()).collect();
        let bounds: HashMap<&'a str, Range<i64>> =
            works.iter().map(|w| (name(w), w.from..w.end)).collect();
        // Announce the ranges before reading them, so a trade ingested
        // meanwhile is treated as late (and repaired), never silently missed.
        let inflight: Vec<(String, i64)> =
            works.iter().map(|w| (w.symbol.clone(), w.end)).collect();
        self.store.set_inflight_many(&self.owner, &inflight).await?;

        let span = works.iter().map(|w| w.from).min().expect("non-empty")
            ..works.iter().map(|w| w.end).max().expect("non-empty");
        let mut read: HashMap<&'a str, u64> = HashMap::new();
        let mut skipped: HashMap<&'a str, u64> = HashMap::new();
        let mut counts: HashMap<&'a str, [u64; 6]> = HashMap::new();
        let mut send = async |candles: Vec<(&'a str, [Vec<Candle>; 6])>| {
            for (symbol, by_res) in &candles {
                let n = counts.entry(symbol).or_default();
                for (i, c) in by_res.iter().enumerate() {
                    n[i] += c.len() as u64;
                }
            }
            tx.send(Sent::Candles(candles)).await.is_ok()
        };
        let from_midnight = works
            .iter()
            .all(|w| w.from % NANOS_PER_DAY == 0 && w.end - w.from > Resolution::H4.nanos());
        // Parts bound a dense day's memory to 4 hours and let InfluxDB store
        // one part while it reads the next; on a batch of ordinary size their
        // extra queries cost more than that gains (an A/B measurement: docs/benchmarks.md).
        if from_midnight && rows > self.settings.batch_rows {
            let mut days: HashMap<&'a str, Aggregator> = HashMap::new();
            let mut reads = futures_util::stream::iter(plan::parts(span.start, span.end))
                .map(|part| async {
                    let read = self.read_minutes(&symbols, part.clone(), 1, &bounds).await;
                    read.map(|r| (part, r))
                })
                .buffered(parts.max(1));
            while let Some(next) = reads.next().await {
                let (part, minutes) = next?;
                for (symbol, n) in minutes.rows {
                    *read.entry(symbol).or_default() += n;
                }
                for (symbol, n) in minutes.skipped {
                    *skipped.entry(symbol).or_default() += n;
                }
                let candles = minutes
                    .minutes
                    .into_iter()
                    .map(|(symbol, agg)| {
                        let day = days
                            .entry(symbol)
                            .or_insert_with(|| Aggregator::new(Resolution::D1));
                        (symbol, plan::part_candles(&part, agg.finish(), day))
                    })
                    .collect();
                if !send(candles).await {
                    return Ok(None);
                }
            }
            let closed = works
                .iter()
                .filter_map(|w| {
                    let day = days.remove(name(w))?;
                    let mut by_res: [Vec<Candle>; 6] = Default::default();
                    by_res[Resolution::D1.index()] = plan::closed_days(day, w.end);
                    Some((name(w), by_res))
                })
                .collect();
            if !send(closed).await {
                return Ok(None);
            }
        } else {
            let minutes = self.read_minutes(&symbols, span, parts, &bounds).await?;
            read = minutes.rows;
            skipped = minutes.skipped;
            let mut fresh = minutes.minutes;
            let pieces = self.read_pieces(works).await?;
            let candles = works
                .iter()
                .map(|w| {
                    let minutes = fresh
                        .remove(name(w))
                        .map(Aggregator::finish)
                        .unwrap_or_default();
                    let symbol_pieces = pieces
                        .get(w.symbol.as_str())
                        .map(Vec::as_slice)
                        .unwrap_or(&[]);
                    let by_res = plan::step_candles(w.from, w.end, symbol_pieces, minutes);
                    (name(w), by_res)
                })
                .collect();
            if !send(candles).await {
                return Ok(None);
            }
        }
        let steps = works
            .iter()
            .map(|w| StepCommit {
                symbol: w.symbol.clone(),
                kind: "chunk",
                range: w.from..w.end,
                watermarks: Some(plan::advanced(&w.watermarks, w.end)),
                rows_read: read.get(name(w)).copied().unwrap_or(0),
                skipped: skipped.get(name(w)).copied().unwrap_or(0),
                candles: counts.get(name(w)).copied().unwrap_or([0; 6]),
                started_at,
            })
            .collect();
        if tx
            .send(Sent::Done(StepRead { steps, started_at }))
            .await
            .is_err()
        {
            return Ok(None);
        }
        Ok(Some(read))
    }

    /// The step after `works`' (just read, `read` trades each), for the
    /// symbols that may go on in this run, with their expected trades: the
    /// run is younger than `engine.batch_run_ms`, no stop was requested, and
    /// the symbol's step held trades and ended on a chunk boundary before the
    /// horizon. The next step then starts at midnight and needs no stored
    /// pieces (which InfluxDB may not have acknowledged yet); a symbol without
    /// trades jumps ahead in the next round instead of stepping day by day.
    fn next_step(
        &self,
        works: Vec<Work>,
        read: &HashMap<&str, u64>,
        started: Instant,
    ) -> Option<(Vec<Work>, u64)> {
        let budget = Duration::from_millis(self.settings.batch_run_ms);
        if self.stop_requested() || started.elapsed() >= budget {
            return None;
        }
        let horizon = self.horizon();
        let mut rows = 0;
        let next: Vec<Work> = works
            .into_iter()
            .filter_map(|w| {
                let n = read.get(w.symbol.as_str()).copied().unwrap_or(0);
                let end = plan::step_end(w.end, horizon, self.chunk_len());
                if n == 0 || w.end % NANOS_PER_DAY != 0 || end <= w.end {
                    return None;
                }
                rows += n;
                Some(Work {
                    watermarks: plan::advanced(&w.watermarks, w.end),
                    from: w.end,
                    end,
                    dirty: None,
                    symbol: w.symbol,
                })
            })
            .collect();
        (!next.is_empty()).then_some((next, rows))
    }

    /// The writer of [`Engine::advance`]: writes the candles it receives,
    /// several requests at once while they hold fewer than
    /// [`CANDLES_IN_FLIGHT`] candles (one at a time beyond that), and commits
    /// each step once InfluxDB acknowledged all of its candles and every
    /// earlier step is committed; records in `committed` where each symbol's
    /// last committed step ends. A crash before a commit leaves the
    /// watermarks where they were, and the candles already written are
    /// recomputed with the same values.
    async fn write_steps(
        &self,
        mut rx: Receiver<Sent<'_>>,
        report: &mut TickReport,
        committed: &mut HashMap<String, i64>,
        poisoned: &Poisoned,
    ) -> Result<(), EngineError> {
        // Steps not yet committed, oldest first: (writes outstanding, the
        // step's commit once it is read); the back one is being read.
        let mut queue: VecDeque<(usize, Option<StepRead>)> = VecDeque::from([(0, None)]);
        let mut oldest = 0usize; // step number of queue[0]
        let mut pending = futures_util::stream::FuturesUnordered::new();
        let mut in_flight = 0usize;
        let mut open = true;
        while open || !pending.is_empty() {
            let room = pending.is_empty() || in_flight < CANDLES_IN_FLIGHT;
            tokio::select! {
                next = rx.recv(), if open && room => match next {
                    None => open = false,
                    Some(Sent::Candles(candles)) => {
                        let size: usize = candles
                            .iter()
                            .flat_map(|(_, by_res)| by_res.iter().map(Vec::len))
                            .sum();
                        let step = oldest + queue.len() - 1;
                        queue.back_mut().expect("a step is being read").0 += 1;
                        in_flight += size;
                        pending.push(async move {
                            self.write_isolated(&candles).await.map(|p| (step, size, p))
                        });
                    }
                    Some(Sent::Done(read)) => {
                        queue.back_mut().expect("a step is being read").1 = Some(read);
                        queue.push_back((0, None));
                    }
                },
                Some(written) = pending.next(), if !pending.is_empty() => {
                    let (step, size, refused) = written?;
                    for (symbol, e) in refused {
                        poisoned.insert(symbol, &e);
                    }
                    in_flight -= size;
                    queue[step - oldest].0 -= 1;
                    // Crash test point: candles written, their step not committed.
                    crate::failpoint::hit("part_written").await;
                }
            }
            while let Some((0, Some(_))) = queue.front() {
                let (_, read) = queue.pop_front().expect("checked");
                let StepRead {
                    mut steps,
                    started_at,
                } = read.expect("checked");
                // A symbol refused in this step or before it commits nothing more.
                steps.retain(|s| !poisoned.has(&s.symbol));
                oldest += 1;
                // Crash test point: candles written, watermarks not yet committed.
                crate::failpoint::hit("after_write").await;
                let ends: Vec<(String, i64)> = steps
                    .iter()
                    .map(|s| (s.symbol.clone(), s.range.end))
                    .collect();
                self.commit(steps, started_at, report).await?;
                committed.extend(ends);
            }
        }
        Ok(())
    }

    /// Commits the steps of a batch whose candles InfluxDB acknowledged, and
    /// reports them. The rows each symbol's chunk held become the estimate of
    /// its next chunk (see `lagging_round`).
    async fn commit(
        &self,
        steps: Vec<StepCommit>,
        started_at: i64,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        self.store
            .commit_steps(&self.owner, &steps, self.clock.now())
            .await?;
        // Crash test point: a batch committed, the next not started.
        crate::failpoint::hit("after_commit").await;
        {
            let mut estimates = self.estimates.lock().expect("not poisoned");
            for s in steps.iter().filter(|s| s.range.start % NANOS_PER_DAY == 0) {
                // A chunk without trades: count the next one, which may jump.
                if s.rows_read == 0 {
                    estimates.remove(&s.symbol);
                } else {
                    estimates.insert(s.symbol.clone(), s.rows_read);
                }
            }
        }
        for s in &steps {
            let candles: u64 = s.candles.iter().sum();
            report.chunks += 1;
            report.rows_read += s.rows_read;
            report.candles_written += candles;
            ::metrics::histogram!("ohlcd_chunk_duration_seconds")
                .record((self.clock.now() - started_at) as f64 / 1e9);
            self.notify(&s.symbol, s.range.clone(), s.rows_read, candles);
        }
        Ok(())
    }

    /// 1m aggregates per symbol of the raw trades in each symbol's bounds,
    /// read as `parts` concurrent sub-ranges of `span` split at minute
    /// boundaries (InfluxDB serializes each query on its own core). Parts
    /// cover disjoint minutes, so their aggregates simply concatenate.
    /// Rows that cannot make a trade are skipped and counted per symbol (the
    /// first few of each read are logged).
    async fn read_minutes<'b>(
        &self,
        symbols: &[String],
        span: Range<i64>,
        parts: usize,
        bounds: &HashMap<&'b str, Range<i64>>,
    ) -> Result<MinuteRead<'b>, EngineError> {
        let minute = Resolution::M1.nanos();
        let step = crate::candle::ceil_to(
            ((span.end - span.start) / parts.max(1) as i64).max(1),
            minute,
        );
        let mut ranges = Vec::new();
        let mut start = span.start;
        while start < span.end {
            let end = (start + step).min(span.end);
            ranges.push(start..end);
            start = end;
        }
        // Per symbol, a slot: looked up by name once per run of its rows
        // (a hash per trade was a tenth of a backfill's CPU, perf).
        let keys: Vec<(&'b str, &Range<i64>)> = bounds.iter().map(|(k, b)| (*k, b)).collect();
        let index: HashMap<&str, usize> =
            keys.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect();
        let (keys, index) = (&keys, &index);
        let reads = ranges.into_iter().map(|part| async move {
            let mut slots: Vec<(u64, Option<Aggregator>, u64)> =
                keys.iter().map(|_| (0, None, 0)).collect();
            let mut last = usize::MAX;
            let mut logged = 0;
            self.warehouse
                .read_trades(symbols, part, |symbol, row| {
                    if keys.get(last).is_none_or(|(k, _)| *k != symbol) {
                        match index.get(symbol) {
                            Some(&i) => last = i,
                            None => return,
                        }
                    }
                    let time = match &row {
                        Ok(t) => t.time,
                        Err(skip) => skip.time,
                    };
                    if !keys[last].1.contains(&time) {
                        return;
                    }
                    let (rows, agg, skipped) = &mut slots[last];
                    match row {
                        Ok(trade) => {
                            *rows += 1;
                            agg.get_or_insert_with(|| Aggregator::new(Resolution::M1))
                                .add_trade(&trade);
                        }
                        Err(skip) => {
                            *skipped += 1;
                            note_skip(symbol, &skip, &mut logged);
                        }
                    }
                })
                .await?;
            let mut read = MinuteRead::default();
            for ((key, _), (n, agg, skipped)) in keys.iter().zip(slots) {
                if skipped > 0 {
                    read.skipped.insert(key, skipped);
                }
                if let Some(agg) = agg {
                    read.rows.insert(key, n);
                    read.minutes.insert(key, agg);
                }
            }
            Ok::<_, EngineError>(read)
        });
        let mut out = MinuteRead::default();
        for result in futures_util::future::join_all(reads).await {
            let MinuteRead {
                rows: r,
                skipped,
                minutes: aggs,
            } = result?;
            for (k, n) in r {
                *out.rows.entry(k).or_default() += n;
            }
            for (k, n) in skipped {
                *out.skipped.entry(k).or_default() += n;
            }
            let merged = &mut out.minutes;
            for (k, agg) in aggs {
                match merged.get_mut(k) {
                    // Disjoint minutes: fold the part's candles into the first.
                    Some(first) => {
                        for c in agg.finish() {
                            first.add_candle(&c);
                        }
                    }
                    None => {
                        merged.insert(k, agg);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The stored candles each symbol's step needs to complete the coarser
    /// windows open at its start ([`plan::pieces`]): one query per resolution
    /// for the whole batch.
    async fn read_pieces(
        &self,
        works: &[Work],
    ) -> Result<HashMap<String, Vec<(Resolution, Candle)>>, EngineError> {
        let mut wanted: BTreeMap<Resolution, Vec<(&str, Range<i64>)>> = BTreeMap::new();
        for w in works {
            for (res, range) in plan::pieces(w.from, w.end) {
                wanted.entry(res).or_default().push((&w.symbol, range));
            }
        }
        let mut out: HashMap<String, Vec<(Resolution, Candle)>> = HashMap::new();
        for (res, list) in wanted {
            let symbols: Vec<String> = list.iter().map(|(s, _)| s.to_string()).collect();
            let ranges: HashMap<&str, Range<i64>> = list.iter().cloned().collect();
            let span = list.iter().map(|(_, r)| r.start).min().expect("non-empty")
                ..list.iter().map(|(_, r)| r.end).max().expect("non-empty");
            self.warehouse
                .read_candles(res, &symbols, span, |symbol, candle| {
                    if ranges
                        .get(symbol)
                        .is_some_and(|r| r.contains(&candle.start))
                    {
                        out.entry(symbol.to_string())
                            .or_default()
                            .push((res, candle));
                    }
                })
                .await?;
        }
        Ok(out)
    }

    /// Looks `engine.lookback_secs` behind each symbol's 1m watermark for
    /// trades written straight into InfluxDB after their minute was
    /// materialized (trades ingested through the API are caught by the dirty
    /// ranges): InfluxDB counts the trades of every minute there, and a minute
    /// whose count differs from its stored 1m candle's is repaired at every
    /// resolution. Counting instead of re-reading every row costs InfluxDB a
    /// fraction of a read; a trade overwritten in place (same time, symbol,
    /// side, new values) keeps the count and is left to `ohlcd rebuild`.
    /// Two queries per batch.
    async fn look_back(
        &self,
        works: &[Work],
        report: &mut TickReport,
        poisoned: &Poisoned,
    ) -> Result<(), EngineError> {
        let lookback = self.settings.lookback_secs as i64 * NANOS_PER_SEC;
        let bounds: HashMap<&str, Range<i64>> = works
            .iter()
            .filter_map(|w| {
                let w1 = w.watermarks[0]?;
                Some((
                    w.symbol.as_str(),
                    Resolution::M1.window_start(w1 - lookback)..w1,
                ))
            })
            .filter(|(_, r)| r.start < r.end)
            .collect();
        if bounds.is_empty() {
            return Ok(());
        }
        let symbols: Vec<String> = bounds.keys().map(|s| s.to_string()).collect();
        let span = bounds.values().map(|r| r.start).min().expect("non-empty")
            ..bounds.values().map(|r| r.end).max().expect("non-empty");
        let mut counted = self.warehouse.count_minutes(&symbols, span.clone()).await?;
        let mut stored: HashMap<String, BTreeMap<i64, u64>> = HashMap::new();
        self.warehouse
            .read_candles(Resolution::M1, &symbols, span, |symbol, c| {
                if bounds.get(symbol).is_some_and(|r| r.contains(&c.start)) {
                    stored
                        .entry(symbol.to_string())
                        .or_default()
                        .insert(c.start, u64::try_from(c.trades).unwrap_or(0));
                }
            })
            .await?;
        for w in works {
            let Some(stored_minutes) = bounds.get(w.symbol.as_str()) else {
                continue;
            };
            let now = counted.remove(&w.symbol).unwrap_or_default();
            let before = stored.remove(&w.symbol).unwrap_or_default();
            let minute = Resolution::M1.nanos();
            let changed: Vec<Range<i64>> = now
                .iter()
                .filter(|(t, n)| stored_minutes.contains(t) && before.get(t) != Some(n))
                .map(|(t, _)| *t..*t + minute)
                .collect();
            if changed.is_empty() {
                continue;
            }
            tracing::info!(
                symbol = %w.symbol,
                minutes = changed.len(),
                from = %to_rfc3339(stored_minutes.start),
                "lookback found trades behind the watermark"
            );
            let repaired = self
                .repair(&w.symbol, &w.watermarks, &changed, "late", None)
                .await;
            let Some((r, candles)) = poisoned.unless_own(&w.symbol, repaired)? else {
                continue;
            };
            report.chunks += 1;
            report.rows_read += r;
            report.candles_written += candles;
        }
        Ok(())
    }

    /// Recomputes the windows of every resolution that touch `ranges` (below
    /// their watermarks) of one symbol, day by day: the ranges are read raw,
    /// the rest of the day comes from the stored 1m candles. For a `rebuild`,
    /// candles of windows that no longer have any trade are deleted (trades
    /// were removed), and only windows whose raw trades are all still stored
    /// are touched (see [`plan::rebuild_floors`]). The caller holds the
    /// lease. Returns (trades read, candles written).
    async fn repair(
        &self,
        symbol: &str,
        watermarks: &Watermarks,
        ranges: &[Range<i64>],
        kind: &'static str,
        rebuild: Option<&plan::RebuildLimit>,
    ) -> Result<(u64, u64), EngineError> {
        let Some(w1) = watermarks[0] else {
            return Ok((0, 0));
        };
        let one = [symbol.to_string()];
        let (mut rows_total, mut candles_total) = (0, 0);
        for rep in plan::day_repairs(ranges, w1) {
            let started_at = self.clock.now();
            let mut agg = Aggregator::new(Resolution::M1);
            let mut rows = 0;
            for r in &rep.ranges {
                self.warehouse
                    .read_trades(&one, r.clone(), |_, row| {
                        // Skips are counted when first read forward; a
                        // repair only rereads.
                        if let Ok(t) = row {
                            rows += 1;
                            agg.add_trade(&t);
                        }
                    })
                    .await?;
            }
            let fresh = agg.finish();
            let mut stored = Vec::new();
            let parts = rep.stored_parts();
            if !parts.is_empty() {
                self.warehouse
                    .read_candles(Resolution::M1, &one, rep.day.clone(), |_, c| {
                        if parts.iter().any(|p| p.contains(&c.start)) {
                            stored.push(c);
                        }
                    })
                    .await?;
            }
            let (mut write, mut empty) = plan::repair_candles(&rep, watermarks, &fresh, &stored);
            if let Some(limit) = rebuild {
                // The floors as of now, after the read: whatever the retention
                // service dropped meanwhile lies before them.
                plan::clip_to_floors(&mut write, &mut empty, &limit.floors(self.clock.now()));
                self.delete_stale(symbol, &rep.day, &empty).await?;
            }
            if let Some(e) = not_finite(symbol, &write) {
                return Err(e);
            }
            let sets: Vec<CandleSet<'_>> = candle_sets(symbol, &write).collect();
            // Repairs replace stored candles: checked where overwrites may lose.
            if !sets.is_empty() {
                self.warehouse.overwrite_candles(&sets).await?;
            }
            let candles: [u64; 6] = std::array::from_fn(|i| write[i].len() as u64);
            let span = rep.ranges.first().map_or(rep.day.start, |r| r.start)
                ..rep.ranges.last().map_or(rep.day.end, |r| r.end);
            self.store
                .commit_steps(
                    &self.owner,
                    &[StepCommit {
                        symbol: symbol.to_string(),
                        kind,
                        range: span.clone(),
                        watermarks: None,
                        rows_read: rows,
                        skipped: 0,
                        candles,
                        started_at,
                    }],
                    self.clock.now(),
                )
                .await?;
            let n: u64 = candles.iter().sum();
            self.notify(symbol, span, rows, n);
            rows_total += rows;
            candles_total += n;
        }
        Ok((rows_total, candles_total))
    }

    /// Writes candles (nothing to do for none).
    async fn write(&self, sets: &[CandleSet<'_>]) -> Result<(), EngineError> {
        if !sets.is_empty() {
            self.warehouse.write_candles(sets).await?;
        }
        Ok(())
    }

    /// Writes the candles of several symbols (in [`Resolution::ALL`] order
    /// each); a symbol whose candles cannot be written is left out and
    /// returned with why, and the others are written as if it were not
    /// there. A candle that is not finite is caught before anything is sent;
    /// a write InfluxDB refuses is split by symbol to find the ones it
    /// refuses. Anything else (InfluxDB unreachable) fails the whole write.
    async fn write_isolated(
        &self,
        candles: &[(&str, [Vec<Candle>; 6])],
    ) -> Result<Vec<(String, EngineError)>, EngineError> {
        let mut refused: Vec<(String, EngineError)> = Vec::new();
        let mut fine: Vec<&(&str, [Vec<Candle>; 6])> = Vec::new();
        for entry in candles {
            match not_finite(entry.0, &entry.1) {
                Some(e) => refused.push((entry.0.to_string(), e)),
                None => fine.push(entry),
            }
        }
        let sets: Vec<CandleSet<'_>> = fine
            .iter()
            .flat_map(|(symbol, by_res)| candle_sets(symbol, by_res))
            .collect();
        match self.write(&sets).await {
            Err(e) if e.failure() == Failure::OfTheSymbol && fine.len() > 1 => {
                tracing::warn!(
                    symbols = fine.len(),
                    error = %e,
                    "InfluxDB refused a candle write; writing symbol by symbol to find which"
                );
                for (symbol, by_res) in fine {
                    let sets: Vec<CandleSet<'_>> = candle_sets(symbol, by_res).collect();
                    match self.write(&sets).await {
                        Ok(()) => {}
                        Err(e) if e.failure() == Failure::OfTheSymbol => {
                            refused.push((symbol.to_string(), e));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) if e.failure() == Failure::OfTheSymbol => {
                if let Some((symbol, _)) = fine.first() {
                    refused.push((symbol.to_string(), e));
                }
            }
            other => other?,
        }
        Ok(refused)
    }

    /// Deletes the stored candles of windows that `repair_candles` found empty.
    async fn delete_stale(
        &self,
        symbol: &str,
        day: &Range<i64>,
        empty: &[Vec<i64>; 6],
    ) -> Result<(), EngineError> {
        let one = [symbol.to_string()];
        for (i, res) in Resolution::ALL.iter().enumerate() {
            if empty[i].is_empty() {
                continue;
            }
            let empty: HashSet<i64> = empty[i].iter().copied().collect();
            let mut stale = Vec::new();
            self.warehouse
                .read_candles(*res, &one, day.clone(), |_, c| {
                    if empty.contains(&c.start) {
                        stale.push(c.start);
                    }
                })
                .await?;
            for start in stale {
                self.warehouse
                    .delete_candles(*res, symbol, start..start + res.nanos())
                    .await?;
            }
        }
        Ok(())
    }

    fn notify(&self, symbol: &str, range: Range<i64>, rows: u64, candles: u64) {
        tracing::debug!(
            symbol, from = %to_rfc3339(range.start), to = %to_rfc3339(range.end),
            rows, candles, "step committed"
        );
        ::metrics::counter!("ohlcd_source_rows_read_total").increment(rows);
        ::metrics::counter!("ohlcd_candles_written_total").increment(candles);
        ::metrics::counter!("ohlcd_chunks_total").increment(1);
        if let Some(observer) = &self.observer {
            observer(&ChunkEvent {
                symbol: symbol.to_string(),
                range,
                rows_read: rows,
                candles_written: candles,
            });
        }
    }

    /// Claims one symbol for a rebuild, waiting up to two lease lengths for a
    /// running tick elsewhere to release it.
    async fn claim_waiting(&self, symbol: &str) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + self.lease * 2;
        let one = [symbol.to_string()];
        loop {
            let claimed = self
                .store
                .claim_symbols(&one, &self.owner, self.clock.now(), self.lease)
                .await?;
            if !claimed.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let owner = self
                    .store
                    .symbol_states(&self.owner)
                    .await?
                    .remove(symbol)
                    .and_then(|s| s.leased_by)
                    .unwrap_or_default();
                return Err(EngineError::Busy {
                    symbol: symbol.to_string(),
                    owner,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Recomputes `[from, to)` (widened to whole UTC days, clipped to what is
    /// materialized) for every resolution from the raw trades; candles of
    /// windows without trades any more are deleted. Only windows whose raw
    /// trades are all still stored are touched (not expired under the raw
    /// trades' retention policy, not before the symbol's earliest stored
    /// trade: [`plan::rebuild_floors`]); the report says what was kept. Later
    /// windows are left to the normal schedule.
    pub async fn rebuild(
        &self,
        symbol: &str,
        from: i64,
        to: i64,
    ) -> Result<RebuildReport, EngineError> {
        self.warehouse.check().await?;
        let one = [symbol.to_string()];
        self.store.ensure_symbols(&one, self.clock.now()).await?;
        let before = self.store.task(symbol, Resolution::M1).await?;
        self.claim_waiting(symbol).await?;
        let watermarks = self
            .store
            .symbol_states(&self.owner)
            .await?
            .remove(symbol)
            .map(|s| s.watermarks)
            .unwrap_or([None; 6]);
        let range = floor_to(from, NANOS_PER_DAY)..crate::candle::ceil_to(to, NANOS_PER_DAY);
        let work = async {
            let limit = plan::RebuildLimit {
                raw_retention: self.warehouse.raw_retention(),
                first_trade: self.warehouse.first_trades(&one, 0).await?.remove(symbol),
            };
            let mut written = 0;
            let mut day = range.start;
            while day < range.end {
                // A day wholly before the 1m floor has nothing to rebuild.
                if day + NANOS_PER_DAY > limit.floors(self.clock.now())[0] {
                    let (_, n) = self
                        .repair(
                            symbol,
                            &watermarks,
                            std::slice::from_ref(&(day..day + NANOS_PER_DAY)),
                            "rebuild",
                            Some(&limit),
                        )
                        .await?;
                    written += n;
                }
                day += NANOS_PER_DAY;
            }
            let now = self.clock.now();
            let mut report = RebuildReport {
                written,
                range: range.clone(),
                floors: limit.floors(now),
                kept: 0,
                expired: limit.expired_at(now),
                raw_kept_since: limit
                    .raw_retention
                    .map(|d| now - d + crate::retention::RETENTION_MARGIN),
            };
            for (i, res) in Resolution::ALL.iter().enumerate() {
                let kept = range.start..report.floors[i].min(range.end);
                if kept.start < kept.end {
                    report.kept += self
                        .warehouse
                        .read_candles(*res, &one, kept, |_, _| {})
                        .await?;
                }
            }
            Ok::<RebuildReport, EngineError>(report)
        };
        let result = tokio::select! {
            r = work => r,
            e = self.keep_leases(&one) => Err(e),
        };
        let now = self.clock.now();
        match result {
            Ok(report) => {
                // A rebuild does not change how far the symbol got: keep its status.
                let status = match before.map(|t| t.status) {
                    Some(TaskStatus::Running) | Some(TaskStatus::Failed) | None => TaskStatus::Idle,
                    Some(s) => s,
                };
                self.store
                    .release_symbols(&self.owner, &[(symbol.to_string(), status)], now)
                    .await?;
                if report.is_limited() {
                    tracing::info!(symbol, kept = report.kept, "{}", report.limit_line(symbol));
                }
                Ok(report)
            }
            Err(e) => {
                let msg = e.to_string();
                let run = FailedRun {
                    range,
                    error: &msg,
                    failure: e.failure(),
                    started_at: now,
                };
                self.store
                    .fail_symbols(&self.owner, &one, &run, now)
                    .await?;
                Err(e)
            }
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

/// The (symbol, 1m watermark) each work was planned from: claimed only if
/// unchanged, so a symbol another daemon ran meanwhile is planned again.
/// Rows skipped per read that are logged one by one; the rest are only counted.
const SKIPS_LOGGED: usize = 3;

/// Counts a skipped row (`ohlcd_trades_skipped_total{reason}`) and logs it
/// while fewer than [`SKIPS_LOGGED`] were logged (`logged`) in its read.
fn note_skip(symbol: &str, skip: &Skip, logged: &mut usize) {
    ::metrics::counter!("ohlcd_trades_skipped_total", "reason" => skip.reason.as_str())
        .increment(1);
    if *logged < SKIPS_LOGGED {
        *logged += 1;
        tracing::warn!(
            symbol,
            time = %to_rfc3339(skip.time),
            reason = %skip.reason,
            "row skipped: it cannot make a trade (see docs/bad-rows.md)"
        );
    }
}

fn planned(works: &[Work]) -> Vec<(String, Option<i64>)> {
    works
        .iter()
        .map(|w| (w.symbol.clone(), w.watermarks[0]))
        .collect()
}

/// One symbol's non-empty candle lists, per resolution, as write sets.
fn candle_sets<'a>(
    symbol: &'a str,
    by_res: &'a [Vec<Candle>; 6],
) -> impl Iterator<Item = CandleSet<'a>> + 'a {
    Resolution::ALL
        .iter()
        .zip(by_res)
        .filter(|(_, c)| !c.is_empty())
        .map(move |(res, candles)| CandleSet {
            resolution: *res,
            symbol,
            candles,
        })
}

/// `completed` once a symbol reached the horizon, `idle` while it has more to do.
fn status_at(end: i64, horizon: i64) -> TaskStatus {
    if end >= horizon {
        TaskStatus::Completed
    } else {
        TaskStatus::Idle
    }
}

//! The downsampling job. [`Engine::tick`] is one scheduler step: discover symbols,
//! then for each symbol lease its tasks in cascade order (1m … 1d) and run chunks
//! until each task reaches its horizon. Tests call `tick` directly with a
//! [`crate::clock::ManualClock`]; the cron scheduler only triggers it.
//!
//! Invariants:
//! - a task's watermark only moves after InfluxDB acknowledged the candles of the
//!   chunk, and only while its lease is held;
//! - 1m never passes the last closed minute before `now - settle`, so the open
//!   minute is never written;
//! - a coarser resolution never passes its source's watermark (floored to its own
//!   window length), so every window it writes is complete.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::candle::{
    Aggregator, Candle, NANOS_PER_DAY, NANOS_PER_SEC, Resolution, ceil_to, floor_to,
};
use crate::clock::Clock;
use crate::config::EngineSettings;
use crate::influx::{InfluxClient, InfluxError};
use crate::progress::{ChunkRecord, Lease, ProgressError, ProgressStore, Task, TaskStatus};
use crate::times::to_rfc3339;

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
    #[error(
        "task {symbol} {resolution} is leased by {owner} until {until}; is another ohlcd running?"
    )]
    Busy {
        /// Task symbol.
        symbol: String,
        /// Task resolution.
        resolution: Resolution,
        /// Lease holder.
        owner: String,
        /// Lease expiry, RFC 3339.
        until: String,
    },
}

/// Which tasks a tick or backfill covers; empty lists mean all.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only these symbols.
    pub symbols: Vec<String>,
    /// Only these resolutions (their sources are always included).
    pub resolutions: Vec<Resolution>,
}

impl TaskFilter {
    fn resolutions(&self) -> Vec<Resolution> {
        match self.resolutions.iter().max() {
            // A resolution is computed from its sources, so they must run too.
            Some(top) => top.with_sources(),
            None => Resolution::ALL.to_vec(),
        }
    }
}

/// What happened to one task in a tick.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// Ran to its horizon (possibly zero chunks).
    Done {
        /// Chunks committed.
        chunks: u64,
        /// Source rows read.
        rows_read: u64,
        /// Candles written.
        candles_written: u64,
    },
    /// Another daemon holds the lease.
    Leased,
    /// Failed; the watermark stays at the last committed chunk.
    Failed(String),
}

/// Summary of one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickReport {
    /// True if another tick was still running, so this one did nothing.
    pub overlapped: bool,
    /// Tasks that ran.
    pub tasks_run: u64,
    /// Tasks skipped because another daemon held them.
    pub tasks_leased: u64,
    /// Chunks committed.
    pub chunks: u64,
    /// Source rows read.
    pub rows_read: u64,
    /// Candles written.
    pub candles_written: u64,
    /// Failed tasks with their error.
    pub failures: Vec<(String, Resolution, String)>,
}

/// Reported after every committed chunk (drives progress bars and logs).
#[derive(Debug, Clone)]
pub struct ChunkEvent {
    /// Task symbol.
    pub symbol: String,
    /// Task resolution.
    pub resolution: Resolution,
    /// Range processed.
    pub range: Range<i64>,
    /// Source rows read.
    pub rows_read: u64,
    /// Candles written.
    pub candles_written: u64,
}

/// Chunks computed but not yet written.
#[derive(Debug, Default)]
struct Batch {
    candles: Vec<Candle>,
    records: Vec<ChunkRecord>,
}

/// Callback for chunk events.
pub type ChunkObserver = Arc<dyn Fn(&ChunkEvent) + Send + Sync>;

/// The downsampling engine: InfluxDB in, candles out, progress in SQLite.
pub struct Engine {
    influx: InfluxClient,
    store: ProgressStore,
    clock: Arc<dyn Clock>,
    settings: EngineSettings,
    lease: Duration,
    owner: String,
    tick_lock: tokio::sync::Mutex<()>,
    observer: Option<ChunkObserver>,
    stopping: std::sync::atomic::AtomicBool,
    /// Concurrent reads per 1m chunk: `read_parallelism` shared by the symbols
    /// processed at once (set per tick).
    parts_per_chunk: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.owner)
            .finish()
    }
}

/// Equal up to floating-point summation order: a re-read can return rows of two
/// series with equal timestamps in another order, which may move the last bit of
/// a sum but never a price or the trade count.
fn same_candle(a: &Candle, b: &Candle) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs());
    (a.start, a.open, a.high, a.low, a.close, a.trades)
        == (b.start, b.open, b.high, b.low, b.close, b.trades)
        && close(a.volume, b.volume)
        && close(a.quote_volume, b.quote_volume)
        && close(a.buy_volume, b.buy_volume)
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

impl Engine {
    /// An engine; `lease` is how long a claimed task stays ours without renewal.
    pub fn new(
        influx: InfluxClient,
        store: ProgressStore,
        clock: Arc<dyn Clock>,
        settings: EngineSettings,
        lease: Duration,
    ) -> Engine {
        Engine {
            influx,
            store,
            clock,
            settings,
            lease,
            owner: default_owner(),
            tick_lock: tokio::sync::Mutex::new(()),
            observer: None,
            stopping: std::sync::atomic::AtomicBool::new(false),
            parts_per_chunk: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    /// Sets the lease-holder id (tests use this to play two daemons).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Engine {
        self.owner = owner.into();
        self
    }

    /// Calls `observer` after every committed chunk.
    pub fn with_observer(mut self, observer: ChunkObserver) -> Engine {
        self.observer = Some(observer);
        self
    }

    /// Asks running tasks to stop after their current chunk (graceful shutdown).
    pub fn request_stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// True once [`Engine::request_stop`] was called.
    pub fn stop_requested(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until no tick is running.
    pub async fn wait_idle(&self) {
        let _guard = self.tick_lock.lock().await;
    }

    /// This engine's lease-holder id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The InfluxDB client.
    pub fn influx(&self) -> &InfluxClient {
        &self.influx
    }

    /// The progress store.
    pub fn store(&self) -> &ProgressStore {
        &self.store
    }

    /// Symbols the filter selects that have trades, with their task rows ensured.
    async fn discover(&self, filter: &TaskFilter) -> Result<Vec<String>, EngineError> {
        let mut symbols = self.influx.symbols().await?;
        if !filter.symbols.is_empty() {
            let wanted: BTreeSet<&String> = filter.symbols.iter().collect();
            symbols.retain(|s| wanted.contains(s));
        }
        let now = self.clock.now();
        for s in &symbols {
            self.store.ensure_tasks(s, now).await?;
        }
        Ok(symbols)
    }

    /// One scheduler step: every selected task is run to its horizon. Returns a
    /// report with `overlapped` set, doing nothing, if a tick is still running.
    pub async fn tick(&self, filter: &TaskFilter) -> Result<TickReport, EngineError> {
        let Ok(_guard) = self.tick_lock.try_lock() else {
            return Ok(TickReport {
                overlapped: true,
                ..TickReport::default()
            });
        };
        // CSV reads answer an empty 200 for a missing database; check first so a
        // dropped database can never look like "no trades" and move watermarks.
        self.influx.check_database().await?;
        let symbols = self.discover(filter).await?;
        let resolutions = filter.resolutions();
        // InfluxDB's serialization is the bottleneck and runs one core per query:
        // split chunks only while there are fewer symbols in flight than reads.
        let in_flight = self.settings.concurrency.min(symbols.len()).max(1);
        self.parts_per_chunk.store(
            (self.settings.read_parallelism / in_flight).max(1),
            std::sync::atomic::Ordering::Relaxed,
        );
        let outcomes: Vec<Vec<(String, Resolution, TaskOutcome)>> =
            futures_util::stream::iter(symbols)
                .map(|symbol| {
                    let resolutions = resolutions.clone();
                    async move { self.run_symbol(&symbol, &resolutions).await }
                })
                .buffer_unordered(self.settings.concurrency)
                .collect()
                .await;
        let mut report = TickReport::default();
        for (symbol, res, outcome) in outcomes.into_iter().flatten() {
            match outcome {
                TaskOutcome::Done {
                    chunks,
                    rows_read,
                    candles_written,
                } => {
                    report.tasks_run += 1;
                    report.chunks += chunks;
                    report.rows_read += rows_read;
                    report.candles_written += candles_written;
                }
                TaskOutcome::Leased => report.tasks_leased += 1,
                TaskOutcome::Failed(e) => {
                    report.tasks_run += 1;
                    report.failures.push((symbol, res, e));
                }
            }
        }
        Ok(report)
    }

    /// Runs one symbol's tasks in cascade order; stops at the first failure since
    /// coarser resolutions could not move past their failed source anyway.
    async fn run_symbol(
        &self,
        symbol: &str,
        resolutions: &[Resolution],
    ) -> Vec<(String, Resolution, TaskOutcome)> {
        let mut out = Vec::new();
        for &res in resolutions {
            if self.stop_requested() {
                break;
            }
            let outcome = self.run_task(symbol, res).await;
            if res == Resolution::M1 {
                // Crash test point: 1m done, the coarser resolutions not yet.
                crate::failpoint::hit("mid_cascade").await;
            }
            let failed = matches!(outcome, TaskOutcome::Failed(_));
            out.push((symbol.to_string(), res, outcome));
            if failed {
                break;
            }
        }
        out
    }

    /// Claims one task and runs chunks until it reaches its horizon, renewing the
    /// lease while it works. Failures are recorded on the task, not returned.
    pub async fn run_task(&self, symbol: &str, res: Resolution) -> TaskOutcome {
        let claimed = match self
            .store
            .claim(symbol, res, &self.owner, self.clock.now(), self.lease)
            .await
        {
            Ok(Some(c)) => c,
            Ok(None) => return TaskOutcome::Leased,
            Err(e) => return TaskOutcome::Failed(e.to_string()),
        };
        let (lease, task) = claimed;
        let work = self.advance(&lease, &task);
        let result = tokio::select! {
            r = work => r,
            e = self.keep_lease(&lease) => Err(e),
        };
        let now = self.clock.now();
        match result {
            Ok(outcome) => {
                // Stopped early by a shutdown: not failed, but not caught up either.
                let status = if self.stop_requested() {
                    TaskStatus::Idle
                } else {
                    TaskStatus::Completed
                };
                if let Err(e) = self.store.release(&lease, status, None, now).await {
                    return TaskOutcome::Failed(e.to_string());
                }
                outcome
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(symbol, resolution = %res, error = %msg, "task failed");
                ::metrics::counter!("ohlcd_task_failures_total", "resolution" => res.name())
                    .increment(1);
                // If the lease was lost the new holder owns the row; nothing to release.
                if let Err(release_err) = self
                    .store
                    .release(&lease, TaskStatus::Failed, Some(&msg), now)
                    .await
                {
                    tracing::warn!(symbol, resolution = %res, error = %release_err, "could not record failure");
                }
                TaskOutcome::Failed(msg)
            }
        }
    }

    /// Renews the lease every third of its length; returns only when it is lost.
    async fn keep_lease(&self, lease: &Lease) -> EngineError {
        loop {
            tokio::time::sleep(self.lease / 3).await;
            if let Err(e) = self
                .store
                .heartbeat(lease, self.clock.now(), self.lease)
                .await
            {
                return e.into();
            }
        }
    }

    /// Where a task with no watermark starts: midnight UTC before the symbol's first
    /// trade (every resolution divides a day, so all tasks share this start).
    async fn initial_watermark(&self, symbol: &str) -> Result<Option<i64>, EngineError> {
        Ok(self
            .influx
            .first_trade_time(symbol)
            .await?
            .map(|t| floor_to(t, NANOS_PER_DAY)))
    }

    /// How far a task may go now: for 1m the last closed minute before
    /// `now - settle`; for coarser resolutions the source's watermark.
    pub async fn horizon(&self, symbol: &str, res: Resolution) -> Result<Option<i64>, EngineError> {
        match res.source() {
            None => {
                let settle = self.settings.settle_secs as i64 * NANOS_PER_SEC;
                Ok(Some(res.window_start(self.clock.now() - settle)))
            }
            Some(source) => Ok(self
                .store
                .task(symbol, source)
                .await?
                .and_then(|t| t.watermark)
                .map(|w| res.window_start(w))),
        }
    }

    /// Runs chunks from the task's watermark to its horizon.
    async fn advance(&self, lease: &Lease, task: &Task) -> Result<TaskOutcome, EngineError> {
        let res = lease.resolution;
        let symbol = lease.symbol.as_str();
        let (mut chunks, mut rows_read, mut candles_written) =
            self.recompute_dirty(lease, task.watermark).await?;
        if res == Resolution::M1
            && let Some(w) = task.watermark
        {
            let (c, r, n) = self.rescan_lookback(lease, w).await?;
            chunks += c;
            rows_read += r;
            candles_written += n;
        }
        let done = |chunks, rows_read, candles_written| TaskOutcome::Done {
            chunks,
            rows_read,
            candles_written,
        };
        let mut watermark = match task.watermark {
            Some(w) => w,
            None => match self.initial_watermark(symbol).await? {
                Some(w) => w,
                None => return Ok(done(chunks, rows_read, candles_written)),
            },
        };
        let Some(horizon) = self.horizon(symbol, res).await? else {
            return Ok(done(chunks, rows_read, candles_written));
        };
        let chunk_len = self.settings.chunk_nanos(res);
        // Chunks are computed one by one but their candles are written in batches
        // of about `influx.write_batch` (each InfluxDB write is an fsync, and so
        // is each SQLite commit); the watermarks of a batch are committed together
        // right after InfluxDB acknowledged its write.
        let mut batch = Batch::default();
        while watermark < horizon && !self.stop_requested() {
            // Chunk ends stay on the chunk grid, so chunks line up across runs.
            let end = (floor_to(watermark, chunk_len) + chunk_len).min(horizon);
            let range = watermark..end;
            if res == Resolution::M1 {
                // Announce the chunk before reading it, so a trade ingested
                // meanwhile is seen as late (and recomputed), not silently missed.
                self.store.set_inflight(lease, Some(end)).await?;
            }
            let started_at = self.clock.now();
            let (rows, candles) = match self.compute_with_retries(symbol, res, range.clone()).await
            {
                Ok(r) => r,
                Err(e) => {
                    self.flush_or_record(lease, &mut batch).await?;
                    let record = ChunkRecord {
                        kind: "chunk",
                        range,
                        started_at,
                        finished_at: self.clock.now(),
                        rows_read: 0,
                        candles_written: 0,
                        error: Some(e.to_string()),
                    };
                    self.store.record_failure(lease, &record).await?;
                    return Err(e);
                }
            };
            batch.records.push(ChunkRecord {
                kind: "chunk",
                range,
                started_at,
                finished_at: self.clock.now(),
                rows_read: rows,
                candles_written: candles.len() as u64,
                error: None,
            });
            batch.candles.extend(candles);
            watermark = end;
            chunks += 1;
            rows_read += rows;
            if rows == 0
                || watermark >= horizon
                || batch.candles.len() >= self.influx.write_batch()
                || self.stop_requested()
            {
                candles_written += self.flush_or_record(lease, &mut batch).await?;
            }
            if rows == 0 && watermark < horizon {
                watermark = self.skip_empty(lease, watermark, horizon).await?;
            }
        }
        candles_written += self.flush_or_record(lease, &mut batch).await?;
        Ok(TaskOutcome::Done {
            chunks,
            rows_read,
            candles_written,
        })
    }

    /// [`Engine::flush`]; if the write fails, the batch's range is recorded as a
    /// failed run (its watermarks stay uncommitted) before the error is returned.
    async fn flush_or_record(&self, lease: &Lease, batch: &mut Batch) -> Result<u64, EngineError> {
        match self.flush(lease, batch).await {
            Ok(n) => Ok(n),
            Err(e) => {
                if let (Some(first), Some(last)) = (batch.records.first(), batch.records.last()) {
                    let record = ChunkRecord {
                        kind: "chunk",
                        range: first.range.start..last.range.end,
                        started_at: first.started_at,
                        finished_at: self.clock.now(),
                        rows_read: 0,
                        candles_written: 0,
                        error: Some(e.to_string()),
                    };
                    self.store.record_failure(lease, &record).await?;
                }
                Err(e)
            }
        }
    }

    /// Writes a batch's candles, then commits its chunks (watermark included) in
    /// one transaction. Returns the candles written.
    async fn flush(&self, lease: &Lease, batch: &mut Batch) -> Result<u64, EngineError> {
        if batch.records.is_empty() {
            return Ok(0);
        }
        let res = lease.resolution;
        self.influx
            .write_candles(res, &lease.symbol, &batch.candles)
            .await?;
        // Crash test point: candles written, watermark not yet committed.
        crate::failpoint::hit("after_write").await;
        self.store.commit_chunks(lease, &batch.records).await?;
        for r in &batch.records {
            ::metrics::histogram!("ohlcd_chunk_duration_seconds", "resolution" => res.name())
                .record((r.finished_at - r.started_at) as f64 / 1e9);
            self.notify(
                &lease.symbol,
                res,
                r.range.clone(),
                r.rows_read,
                r.candles_written,
            );
        }
        let written = batch.candles.len() as u64;
        batch.records.clear();
        batch.candles.clear();
        Ok(written)
    }

    /// After an empty chunk, jumps the watermark over the stretch with no source
    /// data (a weekend, a halted market, the gap up to a late backfill) with one
    /// lookup instead of one empty read per chunk. Returns the new watermark.
    async fn skip_empty(
        &self,
        lease: &Lease,
        watermark: i64,
        horizon: i64,
    ) -> Result<i64, EngineError> {
        let res = lease.resolution;
        self.store.set_inflight(lease, Some(horizon)).await?;
        let next = self
            .influx
            .first_time_from(res.source(), &lease.symbol, watermark)
            .await?;
        let target = match next {
            Some(t) => floor_to(t, self.settings.chunk_nanos(res)).min(horizon),
            None => horizon,
        };
        if target <= watermark {
            return Ok(watermark);
        }
        let now = self.clock.now();
        let record = ChunkRecord {
            kind: "chunk",
            range: watermark..target,
            started_at: now,
            finished_at: now,
            rows_read: 0,
            candles_written: 0,
            error: None,
        };
        self.store.commit_chunks(lease, &[record]).await?;
        self.notify(&lease.symbol, res, watermark..target, 0, 0);
        Ok(target)
    }

    /// Re-reads the raw trades of the last `engine.lookback_secs` behind the 1m
    /// watermark and compares them with the stored 1m candles. Windows that
    /// changed (trades written straight into InfluxDB, bypassing the API) are
    /// rewritten at 1m and recorded as dirty for the coarser resolutions, which
    /// recompute them in cascade order.
    async fn rescan_lookback(
        &self,
        lease: &Lease,
        watermark: i64,
    ) -> Result<(u64, u64, u64), EngineError> {
        let lookback = self.settings.lookback_secs as i64 * NANOS_PER_SEC;
        if lookback == 0 {
            return Ok((0, 0, 0));
        }
        let symbol = lease.symbol.as_str();
        let range = Resolution::M1.window_start(watermark - lookback)..watermark;
        let started_at = self.clock.now();
        let mut agg = Aggregator::new(Resolution::M1);
        let rows = self
            .influx
            .stream_trades(symbol, range.clone(), |t| agg.add_trade(&t))
            .await?;
        let fresh = agg.finish();
        let stored: std::collections::BTreeMap<i64, Candle> = self
            .influx
            .read_candles(Resolution::M1, symbol, range.clone())
            .await?
            .into_iter()
            .map(|c| (c.start, c))
            .collect();
        let changed: Vec<Candle> = fresh
            .into_iter()
            .filter(|c| !stored.get(&c.start).is_some_and(|s| same_candle(s, c)))
            .collect();
        if changed.is_empty() {
            return Ok((0, rows, 0));
        }
        tracing::info!(
            symbol,
            windows = changed.len(),
            "lookback found trades behind the watermark"
        );
        self.influx
            .write_candles(Resolution::M1, symbol, &changed)
            .await?;
        let ranges: Vec<Range<i64>> = changed
            .iter()
            .map(|c| c.start..c.start + Resolution::M1.nanos())
            .collect();
        self.store
            .add_dirty_at(symbol, &ranges, &Resolution::ALL[1..], self.clock.now())
            .await?;
        let record = ChunkRecord {
            kind: "late",
            range,
            started_at,
            finished_at: self.clock.now(),
            rows_read: rows,
            candles_written: changed.len() as u64,
            error: None,
        };
        self.store.commit_chunk(lease, &record).await?;
        Ok((1, rows, changed.len() as u64))
    }

    /// Recomputes the windows late trades landed in, behind this task's
    /// watermark. Waits while the source resolution still has late ranges of its
    /// own, so a late trade reaches every resolution in cascade order.
    async fn recompute_dirty(
        &self,
        lease: &Lease,
        watermark: Option<i64>,
    ) -> Result<(u64, u64, u64), EngineError> {
        let (symbol, res) = (lease.symbol.as_str(), lease.resolution);
        if let Some(source) = res.source()
            && !self.store.dirty(symbol, source).await?.is_empty()
        {
            return Ok((0, 0, 0));
        }
        let rows = self.store.dirty(symbol, res).await?;
        let Some(&(max_id, _)) = rows.last() else {
            return Ok((0, 0, 0));
        };
        // Only what is already materialized needs recomputing; the rest is ahead
        // of the watermark and will be computed normally.
        let limit = watermark.unwrap_or(i64::MIN);
        let mut ranges: Vec<Range<i64>> = rows
            .iter()
            .map(|(_, r)| res.window_start(r.start)..ceil_to(r.end, res.nanos()).min(limit))
            .filter(|r| r.start < r.end)
            .collect();
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<i64>> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        let (mut chunks, mut rows_read, mut candles_written) = (0, 0, 0);
        for range in merged {
            let (c, r, n) = self.recompute(lease, range, "late", false).await?;
            chunks += c;
            rows_read += r;
            candles_written += n;
        }
        self.store.clear_dirty(symbol, res, max_id).await?;
        Ok((chunks, rows_read, candles_written))
    }

    /// Recomputes `range` (already below the task's watermark) chunk by chunk,
    /// committing each chunk to the history without moving the watermark and
    /// renewing the lease as it goes. Returns (chunks, rows read, candles).
    async fn recompute(
        &self,
        lease: &Lease,
        range: Range<i64>,
        kind: &'static str,
        delete_stale: bool,
    ) -> Result<(u64, u64, u64), EngineError> {
        let (symbol, res) = (lease.symbol.as_str(), lease.resolution);
        let chunk_len = self.settings.chunk_nanos(res);
        let (mut chunks, mut rows_read, mut candles_written) = (0, 0, 0);
        let mut start = range.start;
        while start < range.end {
            let stop = (start + chunk_len).min(range.end);
            let started_at = self.clock.now();
            let (rows, candles) = self
                .materialize_with_retries(symbol, res, start..stop, delete_stale)
                .await?;
            let record = ChunkRecord {
                kind,
                range: start..stop,
                started_at,
                finished_at: self.clock.now(),
                rows_read: rows,
                candles_written: candles,
                error: None,
            };
            self.store.commit_chunk(lease, &record).await?;
            self.store
                .heartbeat(lease, self.clock.now(), self.lease)
                .await?;
            self.notify(symbol, res, start..stop, rows, candles);
            chunks += 1;
            rows_read += rows;
            candles_written += candles;
            start = stop;
        }
        Ok((chunks, rows_read, candles_written))
    }

    fn notify(&self, symbol: &str, res: Resolution, range: Range<i64>, rows: u64, candles: u64) {
        tracing::debug!(
            symbol, resolution = %res, from = %to_rfc3339(range.start), to = %to_rfc3339(range.end),
            rows, candles, "chunk committed"
        );
        ::metrics::counter!("ohlcd_source_rows_read_total", "resolution" => res.name())
            .increment(rows);
        ::metrics::counter!("ohlcd_candles_written_total", "resolution" => res.name())
            .increment(candles);
        ::metrics::counter!("ohlcd_chunks_total", "resolution" => res.name()).increment(1);
        if let Some(observer) = &self.observer {
            observer(&ChunkEvent {
                symbol: symbol.to_string(),
                resolution: res,
                range,
                rows_read: rows,
                candles_written: candles,
            });
        }
    }

    /// [`Engine::materialize`] retried on transient InfluxDB errors (the whole chunk
    /// is recomputed: candle writes are idempotent).
    async fn materialize_with_retries(
        &self,
        symbol: &str,
        res: Resolution,
        range: Range<i64>,
        delete_stale: bool,
    ) -> Result<(u64, u64), EngineError> {
        self.retrying(symbol, res, || {
            self.materialize(symbol, res, range.clone(), delete_stale)
        })
        .await
    }

    /// Runs `attempt` up to `engine.chunk_attempts` times while it fails with a
    /// transient InfluxDB error.
    async fn retrying<T, F, Fut>(
        &self,
        symbol: &str,
        res: Resolution,
        mut attempt: F,
    ) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        let mut n = 1;
        loop {
            match attempt().await {
                Ok(r) => return Ok(r),
                Err(EngineError::Influx(e))
                    if e.is_transient() && n < self.settings.chunk_attempts =>
                {
                    tracing::warn!(symbol, resolution = %res, attempt = n, error = %e, "chunk failed, retrying");
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(n))).await;
                    n += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Computes the candles of `res` in `range` from the source (raw trades for 1m,
    /// the finer resolution otherwise) and writes them. With `delete_stale`, candles
    /// stored in the range whose window now has no data are deleted (rebuild after
    /// trades were removed). Returns (rows read, candles written).
    pub async fn materialize(
        &self,
        symbol: &str,
        res: Resolution,
        range: Range<i64>,
        delete_stale: bool,
    ) -> Result<(u64, u64), EngineError> {
        let (rows, candles) = self.compute(symbol, res, range.clone()).await?;
        if delete_stale {
            self.delete_stale(symbol, res, range, &candles).await?;
        }
        self.influx.write_candles(res, symbol, &candles).await?;
        // Crash test point: candles written, watermark not yet committed.
        crate::failpoint::hit("after_write").await;
        Ok((rows, candles.len() as u64))
    }

    /// Candles of `res` in `range` from its source, not written. Returns (rows
    /// read, candles).
    async fn compute(
        &self,
        symbol: &str,
        res: Resolution,
        range: Range<i64>,
    ) -> Result<(u64, Vec<Candle>), EngineError> {
        match res.source() {
            None => self.aggregate_raw(symbol, range).await,
            Some(source) => {
                let mut agg = Aggregator::new(res);
                let rows = self
                    .influx
                    .stream_candles(source, symbol, range, |c| agg.add_candle(&c))
                    .await?;
                Ok((rows, agg.finish()))
            }
        }
    }

    /// [`Engine::compute`] retried on transient InfluxDB errors.
    async fn compute_with_retries(
        &self,
        symbol: &str,
        res: Resolution,
        range: Range<i64>,
    ) -> Result<(u64, Vec<Candle>), EngineError> {
        self.retrying(symbol, res, || self.compute(symbol, res, range.clone()))
            .await
    }

    /// 1m candles of `range` from raw trades. InfluxDB's serialization of the
    /// rows, not our aggregation, is what limits speed, so the range may be split
    /// at minute boundaries into parts read concurrently (InfluxDB serializes each
    /// on its own core); see `parts_per_chunk`. Parts cover disjoint windows, so
    /// their candles simply concatenate.
    async fn aggregate_raw(
        &self,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<(u64, Vec<Candle>), EngineError> {
        let minute = Resolution::M1.nanos();
        let parts = self
            .parts_per_chunk
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1) as i64;
        let step = ceil_to((range.end - range.start).div_euclid(parts).max(1), minute);
        let mut bounds = Vec::new();
        let mut start = range.start;
        while start < range.end {
            let end = (start + step).min(range.end);
            bounds.push(start..end);
            start = end;
        }
        let reads = bounds.into_iter().map(|part| async move {
            let mut agg = Aggregator::new(Resolution::M1);
            let rows = self
                .influx
                .stream_trades(symbol, part, |t| agg.add_trade(&t))
                .await?;
            Ok::<_, EngineError>((rows, agg.finish()))
        });
        let mut rows = 0;
        let mut candles = Vec::new();
        for result in futures_util::future::join_all(reads).await {
            let (n, part) = result?;
            rows += n;
            candles.extend(part);
        }
        Ok((rows, candles))
    }

    async fn delete_stale(
        &self,
        symbol: &str,
        res: Resolution,
        range: Range<i64>,
        fresh: &[Candle],
    ) -> Result<(), EngineError> {
        let keep: BTreeSet<i64> = fresh.iter().map(|c| c.start).collect();
        let stored = self.influx.read_candles(res, symbol, range).await?;
        for c in stored.iter().filter(|c| !keep.contains(&c.start)) {
            self.influx
                .delete_candles(res, symbol, c.start..c.start + res.nanos())
                .await?;
        }
        Ok(())
    }

    /// Claims a task for a rebuild, waiting up to two lease lengths for a running
    /// tick elsewhere to release it.
    async fn claim_waiting(
        &self,
        symbol: &str,
        res: Resolution,
    ) -> Result<(Lease, Task), EngineError> {
        let deadline = tokio::time::Instant::now() + self.lease * 2;
        loop {
            if let Some(c) = self
                .store
                .claim(symbol, res, &self.owner, self.clock.now(), self.lease)
                .await?
            {
                return Ok(c);
            }
            if tokio::time::Instant::now() >= deadline {
                let t = self.store.task(symbol, res).await?;
                return Err(EngineError::Busy {
                    symbol: symbol.to_string(),
                    resolution: res,
                    owner: t
                        .as_ref()
                        .and_then(|t| t.lease_owner.clone())
                        .unwrap_or_default(),
                    until: t
                        .and_then(|t| t.lease_expires_at)
                        .map(to_rfc3339)
                        .unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Recomputes `[from, to)` (widened to whole UTC days) for every resolution in
    /// cascade order, up to each task's watermark; later windows are left to the
    /// normal schedule. Stale candles in the range are deleted. Returns candles
    /// written.
    pub async fn rebuild(&self, symbol: &str, from: i64, to: i64) -> Result<u64, EngineError> {
        self.influx.check_database().await?;
        self.store.ensure_tasks(symbol, self.clock.now()).await?;
        let range = floor_to(from, NANOS_PER_DAY)..ceil_to(to, NANOS_PER_DAY);
        let mut written = 0;
        for res in Resolution::ALL {
            let before = self.store.task(symbol, res).await?;
            let (lease, task) = self.claim_waiting(symbol, res).await?;
            let end = range.end.min(task.watermark.unwrap_or(i64::MIN));
            let result = self
                .recompute(&lease, range.start..end, "rebuild", true)
                .await
                .map(|(_, _, candles)| candles);
            // A rebuild does not change how far the task got: keep its status.
            let status = match before.map(|t| t.status) {
                Some(TaskStatus::Running) | None => TaskStatus::Idle,
                Some(s) => s,
            };
            let now = self.clock.now();
            match result {
                Ok(n) => {
                    self.store
                        .release(&lease, status, task.last_error.as_deref(), now)
                        .await?;
                    written += n;
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.store
                        .release(&lease, TaskStatus::Failed, Some(&msg), now)
                        .await?;
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    /// Nanoseconds of raw trades the 1m tasks of the selected symbols still have
    /// to cover (drives the backfill progress bar).
    pub async fn pending_span(&self, filter: &TaskFilter) -> Result<i64, EngineError> {
        let symbols = self.discover(filter).await?;
        let mut total = 0;
        for symbol in symbols {
            let start = match self
                .store
                .task(&symbol, Resolution::M1)
                .await?
                .and_then(|t| t.watermark)
            {
                Some(w) => Some(w),
                None => self.initial_watermark(&symbol).await?,
            };
            if let (Some(start), Some(h)) = (start, self.horizon(&symbol, Resolution::M1).await?) {
                total += (h - start).max(0);
            }
        }
        Ok(total)
    }
}

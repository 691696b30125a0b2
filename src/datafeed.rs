//! Serving candles at any chart resolution.
//!
//! A request is answered from the coarsest materialized resolution whose windows
//! tile the requested ones (30 → 15m, 120 → 1h, W/M → 1d; in a time zone, the
//! coarsest that divides every bar boundary of the range: Hong Kong days → 4h,
//! New York days → 1h, Kolkata days → 15m), re-aggregated in Rust. Seconds
//! bars, which no resolution tiles, come from raw trades: below the 1m
//! watermark they are closed and cached like stored candles.
//! Where that source's watermark ends, finer materialized resolutions continue,
//! and raw trades cover whatever no resolution has materialized yet (the open
//! minute, or an engine that is behind), so the newest bar is live. A source whose
//! query fails or comes back empty is skipped in favour of the next finer one, then
//! raw trades.
//!
//! Retention: a resolution kept in a retention policy with a duration reaches
//! back to `now - duration` (plus a margin of [`RETENTION_MARGIN`]),
//! and raw trades likewise. A range older than every source that gives exact
//! bars of the requested resolution reaches is answered from the coarser
//! resolutions still kept whose windows are whole numbers of requested bars:
//! bars at that coarser spacing, each a stored candle ([`reach_plan`]).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::candle::{Aggregator, Bucketing, Candle, Resolution, Trade};
pub use crate::chart::{BadResolution, ChartResolution, ZonedResolution, adaptive_resolution};
use crate::clock::{Clock, SystemClock};
use crate::influx::{CandleRead, InfluxClient, InfluxError, Stored, TradeRead, trades_only};
use crate::progress::{ProgressError, ProgressStore, ServingState};
use crate::retention::{Keep, RETENTION_MARGIN};

mod cache;
mod quote;
mod reach;

pub use cache::{CacheSettings, CandleCache, Lookup, Series};
pub use quote::Quote;
pub use reach::reach_plan;

/// Errors while serving candles.
#[derive(Debug, thiserror::Error)]
pub enum DatafeedError {
    /// No trades were ever seen for the symbol.
    #[error("unknown symbol {0:?}")]
    UnknownSymbol(String),
    /// The request cannot be answered as asked.
    #[error("{0}")]
    BadRequest(String),
    /// InfluxDB failed (after trying every source).
    #[error(transparent)]
    Influx(#[from] InfluxError),
    /// The progress store failed.
    #[error(transparent)]
    Progress(#[from] ProgressError),
}

/// Cached raw trades of a tail that are aggregated on a blocking thread
/// rather than on the async workers (about a millisecond of work).
const BLOCKING_TRADES: usize = 10_000;

/// The answer to a history request.
#[derive(Debug, Clone, PartialEq)]
pub enum History {
    /// Bars, oldest first.
    Bars(Vec<Candle>),
    /// No bars in range; `next_time` is the start of the nearest bar before it.
    NoData {
        /// Unix ns of the nearest earlier bar, if any.
        next_time: Option<i64>,
    },
}

/// Serves candles from InfluxDB using the progress table's watermarks.
#[derive(Debug)]
pub struct Datafeed {
    influx: InfluxClient,
    store: ProgressStore,
    max_bars: u64,
    symbols_ttl: Duration,
    symbols: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
    first_trades: tokio::sync::Mutex<std::collections::HashMap<String, (Instant, Option<i64>)>>,
    cache: CandleCache,
    tail_reads: TailReads,
}

/// Raw tail reads in flight, per symbol: the range each reads and a lock its
/// reader holds until it is done.
#[derive(Debug, Default)]
struct TailReads {
    in_flight: std::sync::Mutex<std::collections::HashMap<String, Vec<InFlight>>>,
}

#[derive(Debug)]
struct InFlight {
    read: Range<i64>,
    done: Arc<tokio::sync::Mutex<()>>,
}

/// What a request wanting a tail does: wait for a read in flight that covers
/// it (its lock is free once the read is done), or read itself.
enum TailReadTurn<'a> {
    Join(Arc<tokio::sync::Mutex<()>>),
    Lead(TailRead<'a>),
}

/// A tail read in flight; dropped when it is done, failed or cancelled,
/// which lets those waiting for it go on. Its entry is the one whose lock it
/// holds.
struct TailRead<'a> {
    reads: &'a TailReads,
    symbol: String,
    held: tokio::sync::OwnedMutexGuard<()>,
}

impl TailReads {
    /// Joins a read of `symbol` in flight that covers `wanted`, or registers
    /// the caller's own read of `read`.
    fn join_or_lead(
        &self,
        symbol: &str,
        wanted: &Range<i64>,
        read: &Range<i64>,
    ) -> TailReadTurn<'_> {
        let mut all = self.in_flight.lock().expect("tail reads");
        let reads = all.entry(symbol.to_string()).or_default();
        if let Some(covering) = reads
            .iter()
            .find(|r| r.read.start <= wanted.start && wanted.end <= r.read.end)
        {
            return TailReadTurn::Join(covering.done.clone());
        }
        let done = Arc::new(tokio::sync::Mutex::new(()));
        let held = done.clone().try_lock_owned().expect("a new lock is free");
        reads.push(InFlight {
            read: read.clone(),
            done,
        });
        TailReadTurn::Lead(TailRead {
            reads: self,
            symbol: symbol.to_string(),
            held,
        })
    }
}

impl Drop for TailRead<'_> {
    fn drop(&mut self) {
        let mut all = self.reads.in_flight.lock().expect("tail reads");
        if let Some(reads) = all.get_mut(&self.symbol) {
            let mine = tokio::sync::OwnedMutexGuard::mutex(&self.held);
            reads.retain(|r| !Arc::ptr_eq(&r.done, mine));
            if reads.is_empty() {
                all.remove(&self.symbol);
            }
        }
    }
}

impl Datafeed {
    /// A datafeed answering at most `max_bars` bars per request.
    pub fn new(
        influx: InfluxClient,
        store: ProgressStore,
        max_bars: u64,
        symbols_ttl: Duration,
    ) -> Datafeed {
        Datafeed {
            influx,
            store,
            max_bars,
            symbols_ttl,
            symbols: tokio::sync::Mutex::new(None),
            first_trades: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            cache: CandleCache::new(CacheSettings::OFF),
            tail_reads: TailReads::default(),
        }
    }

    /// This datafeed keeping closed candles and the tail in memory (see
    /// [`CandleCache`]).
    pub fn with_cache(mut self, settings: CacheSettings) -> Datafeed {
        self.cache = CandleCache::new(settings);
        self
    }

    /// Trades of `symbol` were written and acknowledged by InfluxDB: the next
    /// request sees them.
    pub fn trades_posted(&self, symbol: &str) {
        self.cache.trades_posted(symbol);
    }

    /// The engine ticked (trades written straight into InfluxDB are now
    /// due): the next request reads the open bar's trades again.
    pub fn tick_done(&self) {
        self.cache.tick_done();
    }

    /// Bytes held by the cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// `symbol`'s watermarks and candle epoch: from the cache while fresh,
    /// else one progress-store statement.
    async fn serving_state(&self, symbol: &str) -> Result<ServingState, DatafeedError> {
        if let Some(state) = self.cache.state(symbol) {
            return Ok(state);
        }
        let state = self.store.serving_state(symbol).await?;
        self.cache.put_state(symbol, &state);
        Ok(state)
    }

    /// Stored candles of `res` in `range` (below its watermark), from the
    /// cache where it holds them under `epoch`; the number of rows InfluxDB
    /// would have answered is the length.
    async fn stored_candles(
        &self,
        symbol: &str,
        res: Resolution,
        range: Range<i64>,
        epoch: i64,
    ) -> Result<Vec<Candle>, InfluxError> {
        let read = match self.cache.candles(symbol, res, range.clone(), epoch) {
            Lookup::Hit(candles) => return Ok(candles),
            Lookup::Miss(read) => read,
        };
        let mut fetched = Vec::new();
        self.influx
            .read_candles(CandleRead::new(res, &[symbol], read.clone()), |_, c| {
                fetched.push(c)
            })
            .await?;
        self.cache
            .put_candles(symbol, res, read.clone(), &fetched, epoch);
        if read == range {
            return Ok(fetched);
        }
        // Only part was read: the entry now holds the whole range, unless the
        // epoch moved meanwhile; then read it all.
        if let Lookup::Hit(candles) = self.cache.candles(symbol, res, range.clone(), epoch) {
            return Ok(candles);
        }
        let mut all = Vec::new();
        self.influx
            .read_candles(CandleRead::new(res, &[symbol], range), |_, c| all.push(c))
            .await?;
        Ok(all)
    }

    /// Bars of `bucketing` (epoch-aligned and dividing a minute: seconds) in
    /// `range` below the 1m watermark, from raw trades, cached under `epoch`
    /// like stored candles: below the watermark raw trades change only
    /// through a repair, which moves the epoch.
    async fn closed_raw_bars(
        &self,
        symbol: &str,
        bucketing: Bucketing,
        range: Range<i64>,
        epoch: i64,
    ) -> Result<Vec<Candle>, InfluxError> {
        let series = Series::Raw(bucketing.nominal_nanos());
        let read = match self.cache.candles(symbol, series, range.clone(), epoch) {
            Lookup::Hit(bars) => return Ok(bars),
            Lookup::Miss(read) => read,
        };
        let fetch = |read: Range<i64>| async move {
            let mut agg = Aggregator::new(bucketing);
            self.influx
                .read_trades(
                    TradeRead::new(&[symbol], read),
                    trades_only(|t| agg.add_trade(&t)),
                )
                .await?;
            Ok::<_, InfluxError>(agg.finish())
        };
        let fetched = fetch(read.clone()).await?;
        self.cache
            .put_candles(symbol, series, read.clone(), &fetched, epoch);
        if read == range {
            return Ok(fetched);
        }
        if let Lookup::Hit(bars) = self.cache.candles(symbol, series, range.clone(), epoch) {
            return Ok(bars);
        }
        fetch(range).await
    }

    /// Raw trades of `symbol` in `range` past the 1m watermark, from the
    /// cached tail while it holds them.
    async fn tail_trades(
        &self,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<Vec<Trade>, InfluxError> {
        // Read to the end of the day at least, so the tails of daily (and
        // finer) bars are one read.
        let day = Resolution::D1.nanos();
        let read = range.start..range.end.max(crate::candle::ceil_to(range.start + 1, day));
        // The feeds of every resolution of a symbol wake together after a
        // post and want tails one read covers: a request waits for a read in
        // flight that covers its range, never for one that does not (a
        // chart's last two bars behind someone's two-day read).
        let (posted, _reading) = loop {
            let posted = match self.cache.tail(symbol, range.clone()) {
                Ok(trades) => return Ok(trades),
                Err(posted) => posted,
            };
            match self.tail_reads.join_or_lead(symbol, &range, &read) {
                // A read the cache will not keep is no use to wait for.
                TailReadTurn::Join(covering) if self.cache.keeps_tails() => {
                    drop(covering.lock().await)
                }
                TailReadTurn::Join(_) => break (posted, None),
                TailReadTurn::Lead(read) => break (posted, Some(read)),
            }
        };
        let mut trades = Vec::new();
        self.influx
            .read_trades(
                TradeRead::new(&[symbol], read.clone()),
                trades_only(|t| trades.push(t)),
            )
            .await?;
        trades.retain(|t| read.contains(&t.time));
        let wanted: Vec<Trade> = trades
            .iter()
            .filter(|t| range.contains(&t.time))
            .copied()
            .collect();
        self.cache.put_tail(symbol, read, trades, posted);
        Ok(wanted)
    }

    /// Known symbols (those with trades), cached for a few seconds.
    pub async fn symbols(&self) -> Result<Vec<String>, DatafeedError> {
        let mut cache = self.symbols.lock().await;
        if let Some((at, list)) = cache.as_ref()
            && at.elapsed() < self.symbols_ttl
        {
            return Ok(list.clone());
        }
        // Once raw trades expire, a symbol lives on in its candles.
        let list = if self.raw_expires() {
            self.influx.symbols_with_candles().await?
        } else {
            self.influx.symbols().await?
        };
        *cache = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Forgets the cached symbol list (after trades of a new symbol arrive).
    pub async fn invalidate_symbols(&self) {
        *self.symbols.lock().await = None;
    }

    /// Time of the symbol's first trade (or, where raw trades expire, its first
    /// trade or candle), cached like the symbol list: the query behind it has
    /// no time bound and its cost grows with the data.
    async fn first_trade_time(&self, symbol: &str) -> Result<Option<i64>, DatafeedError> {
        let ttl = self.symbols_ttl * 12;
        if let Some((at, t)) = self.first_trades.lock().await.get(symbol)
            && at.elapsed() < ttl
        {
            return Ok(*t);
        }
        let mut t = self.influx.first_trade_time(symbol).await?;
        if self.raw_expires() {
            // Candles may reach further back than the raw trades still kept.
            for res in Resolution::ALL {
                if let Some(c) = self.influx.first_candle_time(res, symbol).await? {
                    t = Some(t.map_or(c, |t| t.min(c)));
                }
            }
        }
        self.first_trades
            .lock()
            .await
            .insert(symbol.to_string(), (Instant::now(), t));
        Ok(t)
    }

    /// Whether raw trades are kept for a limited time (so candles may be all
    /// that is left of older data).
    fn raw_expires(&self) -> bool {
        self.influx.keep(Stored::Trades) != Keep::Forever
    }

    /// Fails with [`DatafeedError::UnknownSymbol`] unless `symbol` has trades
    /// (or, where raw trades expire, candles), or the engine has materialized
    /// candles of it (a watermark in the progress store).
    pub async fn require_symbol(&self, symbol: &str) -> Result<(), DatafeedError> {
        // The common case without copying the list.
        if let Some((at, list)) = self.symbols.lock().await.as_ref()
            && at.elapsed() < self.symbols_ttl
            && list.iter().any(|s| s == symbol)
        {
            return Ok(());
        }
        // A symbol with candles is known without listing every symbol: on
        // InfluxDB 3 that listing scans all of the trades' history (1.2–2.1 s
        // for 40 days of two symbols on the test VM), and the list expires
        // every few seconds. The serving state is read for the bars anyway.
        if !self.serving_state(symbol).await?.watermarks.is_empty() {
            return Ok(());
        }
        if self.symbols().await?.iter().any(|s| s == symbol) {
            return Ok(());
        }
        // A symbol seen for the first time since the cache was filled.
        self.invalidate_symbols().await;
        if self.symbols().await?.iter().any(|s| s == symbol) {
            Ok(())
        } else {
            Err(DatafeedError::UnknownSymbol(symbol.to_string()))
        }
    }

    /// How far back each resolution (and the raw trades) still reaches under
    /// its retention policy, as of the wall clock (retention runs on it, not on
    /// a test's clock): `None` for kept forever.
    fn reach(&self) -> ([Option<i64>; 6], Option<i64>) {
        let now = SystemClock.now();
        let since = |keep: Keep| {
            keep.kept_since(now)
                .map(|t| t.saturating_add(RETENTION_MARGIN))
        };
        (
            std::array::from_fn(|i| since(self.influx.keep(Stored::Candles(Resolution::ALL[i])))),
            since(self.influx.keep(Stored::Trades)),
        )
    }

    /// Bars of `res` starting in `[range.start, range.end)`, each complete: the
    /// last bar includes every trade of its window, up to now for the open bar.
    /// Where no exact source reaches any more, bars at a coarser spacing (see
    /// [`reach_plan`]).
    pub async fn bars(
        &self,
        symbol: &str,
        res: impl Into<ZonedResolution>,
        range: Range<i64>,
    ) -> Result<Vec<Candle>, DatafeedError> {
        let res = res.into();
        let bucketing = res.bucketing();
        let start = bucketing.ceil(range.start);
        if start >= range.end {
            return Ok(Vec::new());
        }
        let end = bucketing.next_start(bucketing.window_start(range.end - 1));
        // Exact for fixed-length bars; months count as 31 days (an estimate).
        let estimate = ((end - start) / res.nominal_nanos()) as u64;
        if estimate > self.max_bars {
            return Err(DatafeedError::BadRequest(format!(
                "range too large: {estimate} bars at {res}, at most {}; narrow the range or use a coarser resolution",
                self.max_bars
            )));
        }
        let (reach, raw_reach) = self.reach();
        let parts = reach_plan(bucketing, &reach, raw_reach, start..end);
        let mut bars: Vec<Candle> = Vec::new();
        for (source, part) in parts {
            match source {
                Some(coarser) => {
                    self.influx
                        .read_candles(CandleRead::new(coarser, &[symbol], part), |_, c| {
                            bars.push(c)
                        })
                        .await?;
                }
                None => bars.extend(self.exact_bars(symbol, bucketing, &reach, part).await?),
            }
        }
        bars.retain(|c| c.start >= range.start && c.start < range.end);
        Ok(bars)
    }

    /// Bars of `bucketing` in `[start, end)` (window-aligned) from its exact
    /// sources that reach `start`, then raw trades.
    async fn exact_bars(
        &self,
        symbol: &str,
        bucketing: Bucketing,
        reach: &[Option<i64>; 6],
        Range { start, end }: Range<i64>,
    ) -> Result<Vec<Candle>, DatafeedError> {
        let reaches = |r: &Resolution, t: i64| reach[r.index()].is_none_or(|since| since <= t);
        // Plan: the coarsest source up to its watermark, then each finer one up to
        // its own, then raw trades for the rest (the live tail).
        let ServingState { watermarks, epoch } = self.serving_state(symbol).await?;
        let sources = bucketing.sources(start..end);
        let mut plan: Vec<(usize, Range<i64>)> = Vec::new();
        let mut cursor = start;
        // Seconds: no resolution tiles them, but below the 1m watermark their
        // raw trades are as final as candles.
        let mut closed_raw = None;
        if sources.is_empty()
            && let Some(&w) = watermarks.get(&Resolution::M1)
            && cursor < w.min(end)
        {
            closed_raw = Some(cursor..w.min(end));
            cursor = w.min(end);
        }
        for (i, source) in sources.iter().enumerate() {
            if let Some(&w) = watermarks.get(source)
                && cursor < w.min(end)
                && reaches(source, cursor)
            {
                plan.push((i, cursor..w.min(end)));
                cursor = w.min(end);
            }
        }
        if cursor < end {
            plan.push((sources.len(), cursor..end));
        }
        // Segments are independent: fetch them concurrently, so a request costs
        // about one InfluxDB round trip rather than one per source.
        let closed = async {
            match closed_raw {
                Some(range) => self.closed_raw_bars(symbol, bucketing, range, epoch).await,
                None => Ok(Vec::new()),
            }
        };
        let segments = futures_util::future::join_all(plan.iter().map(|(i, seg)| {
            // Fallbacks must have materialized the whole segment.
            let usable: Vec<Resolution> = sources[*i..]
                .iter()
                .copied()
                .filter(|r| watermarks.get(r).is_some_and(|w| *w >= seg.end))
                .filter(|r| reaches(r, seg.start))
                .collect();
            // The last segment, past every watermark, is the tail.
            let tail = *i == sources.len();
            self.segment(symbol, bucketing, usable, seg.clone(), epoch, tail)
        }));
        let (closed, fetched) = futures_util::future::join(closed, segments).await;
        let mut bars: Vec<Candle> = closed?;
        for segment in fetched {
            for c in segment? {
                // A bar straddling two segments arrives in two parts, in time order.
                match bars.last_mut() {
                    Some(last) if last.start == c.start => *last = last.followed_by(&c),
                    _ => bars.push(c),
                }
            }
        }
        Ok(bars)
    }

    /// Bars of one segment from `sources[0]`; if that query fails (InfluxDB up)
    /// or comes back empty though it is materialized (a dropped or damaged
    /// measurement), from the next finer source, and finally from raw trades.
    async fn segment(
        &self,
        symbol: &str,
        bucketing: Bucketing,
        sources: Vec<Resolution>,
        range: Range<i64>,
        epoch: i64,
        tail: bool,
    ) -> Result<Vec<Candle>, DatafeedError> {
        for source in &sources {
            match self
                .stored_candles(symbol, *source, range.clone(), epoch)
                .await
            {
                // Bars of the source's own size are its candles as stored
                // (aggregating one candle per window returns it unchanged).
                Ok(candles)
                    if !candles.is_empty() && bucketing == Bucketing::Fixed(source.nanos()) =>
                {
                    return Ok(candles);
                }
                Ok(candles) if !candles.is_empty() => {
                    let mut agg = Aggregator::new(bucketing);
                    candles.iter().for_each(|c| agg.add_candle(c));
                    return Ok(agg.finish());
                }
                Ok(_) => {}
                // InfluxDB itself is down or hung: every other source would fail
                // the same way, one timeout each. Answer the error now.
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(symbol, source = %source, error = %e, "candle source failed; falling back to a finer one");
                }
            }
        }
        let mut agg = Aggregator::new(bucketing);
        if tail {
            let trades = self.tail_trades(symbol, range).await?;
            let blocking = trades.len() > BLOCKING_TRADES;
            let fold = move || {
                trades.iter().for_each(|t| agg.add_trade(t));
                agg.finish()
            };
            if !blocking {
                return Ok(fold());
            }
            // CPU work without an await: on the async workers it would hold
            // up every other request (cheap ones behind heavy ones) for its
            // whole length.
            return tokio::task::spawn_blocking(fold)
                .await
                // A blocking task runs to its end: the only error is its panic.
                .map_err(|e| std::panic::resume_unwind(e.into_panic()));
        }
        if self.cache.raw_empty(symbol, &range, epoch) {
            return Ok(Vec::new());
        }
        let mut read = 0u64;
        self.influx
            .read_trades(
                TradeRead::new(&[symbol], range.clone()),
                trades_only(|t| {
                    read += 1;
                    agg.add_trade(&t)
                }),
            )
            .await?;
        if read == 0 {
            self.cache.put_raw_empty(symbol, range, epoch);
        }
        Ok(agg.finish())
    }

    /// The UDF history answer: bars in `[from, to)`, or with `countback` the
    /// `countback` bars before `to` (then `from` is ignored); `NoData` with the
    /// nearest earlier bar when there are none.
    pub async fn history(
        &self,
        symbol: &str,
        res: impl Into<ZonedResolution>,
        from: i64,
        to: i64,
        countback: Option<u64>,
    ) -> Result<History, DatafeedError> {
        let res = res.into();
        self.require_symbol(symbol).await?;
        let bars = match countback {
            None => self.bars(symbol, res, from..to).await?,
            Some(n) => self.last_bars(symbol, res, to, n).await?,
        };
        if !bars.is_empty() {
            return Ok(History::Bars(bars));
        }
        let before = match countback {
            None => from,
            Some(_) => to,
        };
        let mut last = self.influx.last_trade_time_before(symbol, before).await?;
        if self.raw_expires() {
            for source in Resolution::ALL {
                if let Some(c) = self
                    .influx
                    .last_candle_time_before(source, symbol, before)
                    .await?
                {
                    last = Some(last.map_or(c, |t| t.max(c)));
                }
            }
        }
        let next_time = last.map(|t| res.bucketing().window_start(t));
        Ok(History::NoData { next_time })
    }

    /// The last `n` bars before `to`, widening the look-back until enough bars
    /// are found or the symbol's first trade is reached.
    async fn last_bars(
        &self,
        symbol: &str,
        res: ZonedResolution,
        to: i64,
        n: u64,
    ) -> Result<Vec<Candle>, DatafeedError> {
        if n > self.max_bars {
            return Err(DatafeedError::BadRequest(format!(
                "countback {n} is more than the {} bars one request may return",
                self.max_bars
            )));
        }
        let Some(first) = self.first_trade_time(symbol).await? else {
            return Ok(Vec::new());
        };
        let first = res.bucketing().window_start(first);
        let bar = res.nominal_nanos();
        // bars() refuses more than max_bars; the widest look-back stays one bar
        // under that, as alignment can add a bar at the end.
        let widest = bar.saturating_mul((self.max_bars as i64 - 1).max(1));
        let mut span = bar.saturating_mul(n as i64 + 1);
        loop {
            span = span.min(widest);
            let from = to.saturating_sub(span).max(first);
            let bars = self.bars(symbol, res, from..to).await?;
            if bars.len() as u64 >= n || from <= first || span == widest {
                let skip = bars.len().saturating_sub(n as usize);
                return Ok(bars[skip..].to_vec());
            }
            // Sparse data (a halted market): look further back.
            span = span.saturating_mul(4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::NANOS_PER_DAY;

    const HOUR: i64 = 3_600_000_000_000;

    #[test]
    fn a_tail_read_is_joined_only_by_requests_it_covers_and_only_while_in_flight() {
        let reads = TailReads::default();
        let day = 0..NANOS_PER_DAY;
        let TailReadTurn::Lead(lead) = reads.join_or_lead("BTC", &day, &day) else {
            panic!("nothing in flight to join");
        };
        let last_hour = NANOS_PER_DAY - HOUR..NANOS_PER_DAY;
        assert!(matches!(
            reads.join_or_lead("BTC", &last_hour, &last_hour),
            TailReadTurn::Join(_)
        ));
        // Not covered: past the read's end, or another symbol.
        let two_days = 0..2 * NANOS_PER_DAY;
        let TailReadTurn::Lead(other) = reads.join_or_lead("BTC", &two_days, &two_days) else {
            panic!("joined a read that does not cover the range");
        };
        assert!(matches!(
            reads.join_or_lead("ETH", &last_hour, &last_hour),
            TailReadTurn::Lead(_)
        ));
        // The two-day read now covers the hour too; once both are done, no one waits.
        drop(lead);
        assert!(matches!(
            reads.join_or_lead("BTC", &last_hour, &last_hour),
            TailReadTurn::Join(_)
        ));
        drop(other);
        assert!(matches!(
            reads.join_or_lead("BTC", &last_hour, &last_hour),
            TailReadTurn::Lead(_)
        ));
        assert!(reads.in_flight.lock().unwrap().is_empty());
    }
}

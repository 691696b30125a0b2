//! Serving candles at any chart resolution.
//!
//! A request is answered from the coarsest materialized resolution whose windows
//! tile the requested ones (30 → 15m, 120 → 1h, W/M → 1d), re-aggregated in Rust.
//! Where that source's watermark ends, finer materialized resolutions continue,
//! and raw trades cover whatever no resolution has materialized yet (the open
//! minute, or an engine that is behind), so the newest bar is live. A source whose
//! query fails or comes back empty is skipped in favour of the next finer one, then
//! raw trades.

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::candle::{Aggregator, Bucketing, Candle, Resolution};
pub use crate::chart::{BadResolution, ChartResolution, adaptive_resolution};
use crate::influx::{InfluxClient, InfluxError};
use crate::progress::{ProgressError, ProgressStore};

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
        }
    }

    /// Known symbols (those with trades), cached for a few seconds.
    pub async fn symbols(&self) -> Result<Vec<String>, DatafeedError> {
        let mut cache = self.symbols.lock().await;
        if let Some((at, list)) = cache.as_ref()
            && at.elapsed() < self.symbols_ttl
        {
            return Ok(list.clone());
        }
        let list = self.influx.symbols().await?;
        *cache = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Forgets the cached symbol list (after trades of a new symbol arrive).
    pub async fn invalidate_symbols(&self) {
        *self.symbols.lock().await = None;
    }

    /// Time of the symbol's first trade, cached like the symbol list: the query
    /// behind it has no time bound and its cost grows with the data.
    async fn first_trade_time(&self, symbol: &str) -> Result<Option<i64>, DatafeedError> {
        let ttl = self.symbols_ttl * 12;
        if let Some((at, t)) = self.first_trades.lock().await.get(symbol)
            && at.elapsed() < ttl
        {
            return Ok(*t);
        }
        let t = self.influx.first_trade_time(symbol).await?;
        self.first_trades
            .lock()
            .await
            .insert(symbol.to_string(), (Instant::now(), t));
        Ok(t)
    }

    /// Fails with [`DatafeedError::UnknownSymbol`] unless `symbol` has trades.
    pub async fn require_symbol(&self, symbol: &str) -> Result<(), DatafeedError> {
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

    /// Bars of `res` starting in `[range.start, range.end)`, each complete: the
    /// last bar includes every trade of its window, up to now for the open bar.
    pub async fn bars(
        &self,
        symbol: &str,
        res: ChartResolution,
        range: Range<i64>,
    ) -> Result<Vec<Candle>, DatafeedError> {
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
        // Plan: the coarsest source up to its watermark, then each finer one up to
        // its own, then raw trades for the rest (the live tail).
        let watermarks = self.store.watermarks(symbol).await?;
        let sources = bucketing.sources();
        let mut plan: Vec<(usize, Range<i64>)> = Vec::new();
        let mut cursor = start;
        for (i, source) in sources.iter().enumerate() {
            if let Some(&w) = watermarks.get(source)
                && cursor < w.min(end)
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
        let fetched = futures_util::future::join_all(plan.iter().map(|(i, seg)| {
            // Fallbacks must have materialized the whole segment.
            let usable: Vec<Resolution> = sources[*i..]
                .iter()
                .copied()
                .filter(|r| watermarks.get(r).is_some_and(|w| *w >= seg.end))
                .collect();
            self.segment(symbol, bucketing, usable, seg.clone())
        }))
        .await;
        let mut bars: Vec<Candle> = Vec::new();
        for segment in fetched {
            for c in segment? {
                // A bar straddling two segments arrives in two parts, in time order.
                match bars.last_mut() {
                    Some(last) if last.start == c.start => *last = last.followed_by(&c),
                    _ => bars.push(c),
                }
            }
        }
        bars.retain(|c| c.start >= range.start && c.start < range.end);
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
    ) -> Result<Vec<Candle>, DatafeedError> {
        for source in &sources {
            let mut agg = Aggregator::new(bucketing);
            match self
                .influx
                .stream_candles(*source, symbol, range.clone(), |c| agg.add_candle(&c))
                .await
            {
                Ok(rows) if rows > 0 => return Ok(agg.finish()),
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
        self.influx
            .stream_trades(symbol, range, |t| agg.add_trade(&t))
            .await?;
        Ok(agg.finish())
    }

    /// The UDF history answer: bars in `[from, to)`, or with `countback` the
    /// `countback` bars before `to` (then `from` is ignored); `NoData` with the
    /// nearest earlier bar when there are none.
    pub async fn history(
        &self,
        symbol: &str,
        res: ChartResolution,
        from: i64,
        to: i64,
        countback: Option<u64>,
    ) -> Result<History, DatafeedError> {
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
        let next_time = self
            .influx
            .last_trade_time_before(symbol, before)
            .await?
            .map(|t| res.bucketing().window_start(t));
        Ok(History::NoData { next_time })
    }

    /// The last `n` bars before `to`, widening the look-back until enough bars
    /// are found or the symbol's first trade is reached.
    async fn last_bars(
        &self,
        symbol: &str,
        res: ChartResolution,
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

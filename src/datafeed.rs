//! Serving candles at any chart resolution.
//!
//! A request is answered from the coarsest materialized resolution whose windows
//! tile the requested ones (30 → 15m, 120 → 1h, W/M → 1d), re-aggregated in Rust.
//! Where that source's watermark ends, finer materialized resolutions continue,
//! and raw trades cover whatever no resolution has materialized yet (the open
//! minute, or an engine that is behind), so the newest bar is live. A source whose
//! query fails or comes back empty is skipped in favour of the next finer one, then
//! raw trades.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::candle::{Aggregator, Bucketing, Candle, NANOS_PER_DAY, NANOS_PER_SEC, Resolution};
use crate::influx::{InfluxClient, InfluxError};
use crate::progress::{ProgressError, ProgressStore};

/// A chart resolution as TradingView writes it: minutes (`1`, `45`, `240`), days
/// (`D`, `1D`, `3D`), weeks (`W`, `1W`) or months (`M`, `1M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChartResolution {
    /// `n` minutes, 1 ≤ n ≤ 1440.
    Minutes(u32),
    /// `n` days, 1 ≤ n ≤ 365.
    Days(u32),
    /// `n` weeks starting Monday, 1 ≤ n ≤ 52.
    Weeks(u32),
    /// `n` calendar months, 1 ≤ n ≤ 12.
    Months(u32),
}

/// Error for a resolution string that is not a chart resolution.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown resolution {0:?}: use minutes (1 to 1440), nD (1D to 365D), nW (1W to 52W) or nM (1M to 12M)"
)]
pub struct BadResolution(pub String);

impl FromStr for ChartResolution {
    type Err = BadResolution;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadResolution(s.to_string());
        let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        let n: u32 = if digits.is_empty() {
            1
        } else {
            digits.parse().map_err(|_| bad())?
        };
        let (res, max) = match unit {
            "" if !digits.is_empty() => (ChartResolution::Minutes(n), 1440),
            "D" => (ChartResolution::Days(n), 365),
            "W" => (ChartResolution::Weeks(n), 52),
            "M" => (ChartResolution::Months(n), 12),
            _ => return Err(bad()),
        };
        if n == 0 || n > max {
            return Err(bad());
        }
        Ok(res)
    }
}

impl fmt::Display for ChartResolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChartResolution::Minutes(n) => write!(f, "{n}"),
            ChartResolution::Days(n) => write!(f, "{n}D"),
            ChartResolution::Weeks(n) => write!(f, "{n}W"),
            ChartResolution::Months(n) => write!(f, "{n}M"),
        }
    }
}

impl serde::Serialize for ChartResolution {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl ChartResolution {
    /// How timestamps are grouped into this resolution's bars.
    pub fn bucketing(self) -> Bucketing {
        match self {
            ChartResolution::Minutes(n) => Bucketing::Fixed(i64::from(n) * 60 * NANOS_PER_SEC),
            ChartResolution::Days(n) => Bucketing::Fixed(i64::from(n) * NANOS_PER_DAY),
            ChartResolution::Weeks(n) => Bucketing::Weeks(n),
            ChartResolution::Months(n) => Bucketing::Months(n),
        }
    }

    /// A typical bar length in nanoseconds (months count as 31 days).
    pub fn nominal_nanos(self) -> i64 {
        self.bucketing().nominal_nanos()
    }
}

/// The resolutions `/api/ohlc` may coarsen to, finest first.
const LADDER: [ChartResolution; 9] = [
    ChartResolution::Minutes(1),
    ChartResolution::Minutes(5),
    ChartResolution::Minutes(15),
    ChartResolution::Minutes(30),
    ChartResolution::Minutes(60),
    ChartResolution::Minutes(240),
    ChartResolution::Days(1),
    ChartResolution::Weeks(1),
    ChartResolution::Months(1),
];

/// The resolution `/api/ohlc` answers with for `requested` over `range`: long
/// ranges get coarser bars (> 365 days → 1D, > 90 days → at least 1h, > 30 days
/// at 1m → 15m), and never more than `max_bars` bars if the ladder allows.
pub fn adaptive_resolution(
    requested: ChartResolution,
    range: Range<i64>,
    max_bars: u64,
) -> ChartResolution {
    let span = (range.end - range.start).max(0);
    let days = span / NANOS_PER_DAY;
    let at_least = |r: ChartResolution, min: ChartResolution| {
        if r.nominal_nanos() < min.nominal_nanos() {
            min
        } else {
            r
        }
    };
    let mut res = requested;
    if days > 365 {
        res = at_least(res, ChartResolution::Days(1));
    } else if days > 90 {
        res = at_least(res, ChartResolution::Minutes(60));
    } else if days > 30 && res == ChartResolution::Minutes(1) {
        res = ChartResolution::Minutes(15);
    }
    let bars = |r: ChartResolution| (span / r.nominal_nanos()) as u64;
    while bars(res) > max_bars {
        match LADDER
            .iter()
            .find(|r| r.nominal_nanos() > res.nominal_nanos())
        {
            Some(next) => res = *next,
            None => break,
        }
    }
    res
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ChartResolution {
        s.parse().unwrap()
    }

    #[test]
    fn tradingview_resolutions_parse_and_print_canonically() {
        assert_eq!(r("1"), ChartResolution::Minutes(1));
        assert_eq!(r("45"), ChartResolution::Minutes(45));
        assert_eq!(r("D"), ChartResolution::Days(1));
        assert_eq!(r("1D"), ChartResolution::Days(1));
        assert_eq!(r("3D"), ChartResolution::Days(3));
        assert_eq!(r("W"), ChartResolution::Weeks(1));
        assert_eq!(r("1M"), ChartResolution::Months(1));
        assert_eq!(r("D").to_string(), "1D");
        assert_eq!(r("240").to_string(), "240");
        for bad in [
            "",
            "0",
            "1441",
            "1d",
            "1H",
            "-5",
            "5.0",
            "D1",
            "1DD",
            "13M",
            "abc",
            "99999999999",
        ] {
            assert!(bad.parse::<ChartResolution>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn long_ranges_get_coarser_bars_and_never_more_than_max_bars() {
        let day = NANOS_PER_DAY;
        assert_eq!(adaptive_resolution(r("1"), 0..400 * day, 100_000), r("1D"));
        assert_eq!(adaptive_resolution(r("1W"), 0..400 * day, 100_000), r("1W"));
        assert_eq!(adaptive_resolution(r("5"), 0..100 * day, 100_000), r("60"));
        assert_eq!(
            adaptive_resolution(r("240"), 0..100 * day, 100_000),
            r("240")
        );
        assert_eq!(adaptive_resolution(r("1"), 0..40 * day, 100_000), r("15"));
        assert_eq!(adaptive_resolution(r("5"), 0..40 * day, 100_000), r("5"));
        assert_eq!(adaptive_resolution(r("1"), 0..day, 100_000), r("1"));
        // 1 day of 1m is 1440 bars: over a 1000-bar cap it becomes 5m (288 bars).
        assert_eq!(adaptive_resolution(r("1"), 0..day, 1000), r("5"));
        assert_eq!(adaptive_resolution(r("1"), 0..3 * day, 1000), r("5"));
        assert_eq!(adaptive_resolution(r("1"), 0..4 * day, 1000), r("15"));
    }
}

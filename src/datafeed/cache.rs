//! An exact in-memory cache of what chart requests read from InfluxDB.
//!
//! Three things are kept, per symbol:
//! - its **serving state** (watermarks and candle epoch, one progress-store
//!   statement), reused for `recheck`: a request no longer reads the store;
//! - **closed candles** per stored resolution, and closed seconds bars (no
//!   stored resolution tiles them; they are computed from raw trades below
//!   the 1m watermark, where raw trades change only through a repair): a
//!   contiguous range
//!   `covered` below that resolution's watermark, tagged with the epoch it was
//!   read under. Below a watermark InfluxDB's candles change only when ohlcd
//!   rewrites them (late-trade or lookback repair, `ohlcd rebuild`), and every
//!   rewrite moves the epoch in the progress store, in the transaction that
//!   commits it; an entry of another epoch is never served. A chart moving
//!   forward extends its entry by the new part only;
//! - the **tail**: raw trades past the 1m watermark (the open bar), kept until
//!   a trade of the symbol is posted through `POST /api/trades` (InfluxDB has
//!   acknowledged it then) or for `tail_ttl` at most, so a trade written
//!   straight into InfluxDB shows after at most `tail_ttl`.
//!
//! Bounded by `max_bytes` over all of it: the least recently used entries are
//! dropped first. Each operation holds a plain mutex for a few map operations
//! and copies out what it answers; nothing waits on I/O under it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::candle::{Candle, Resolution, Trade};
use crate::progress::ServingState;

/// Settings of the [`CandleCache`].
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Most bytes held (candles, trades and their bookkeeping); 0 disables
    /// the candle and tail caches.
    pub max_bytes: usize,
    /// How long a symbol's watermarks and epoch are reused before being read
    /// again: the longest a rewrite committed elsewhere may go unnoticed.
    pub recheck: Duration,
    /// How long the tail (raw trades past the 1m watermark) is reused at most.
    pub tail_ttl: Duration,
}

impl CacheSettings {
    /// No caching: every request reads the store and InfluxDB.
    pub const OFF: CacheSettings = CacheSettings {
        max_bytes: 0,
        recheck: Duration::ZERO,
        tail_ttl: Duration::ZERO,
    };
}

/// Tails with more trades than this are not kept (an engine far behind).
const MAX_TAIL_TRADES: usize = 200_000;
/// Bookkeeping bytes counted per entry besides its candles or trades.
const ENTRY_OVERHEAD: usize = 128;

/// What a candle entry holds: a stored resolution's candles, or bars of a
/// length no resolution tiles (seconds), computed from raw trades below the
/// 1m watermark. Both change only through a rewrite, which moves the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Series {
    /// Candles of a stored resolution.
    Stored(Resolution),
    /// Bars of this many nanoseconds from raw trades.
    Raw(i64),
}

impl From<Resolution> for Series {
    fn from(r: Resolution) -> Self {
        Series::Stored(r)
    }
}

/// Where a cache lookup of stored candles leaves the caller.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// The candles of the range, in time order (maybe none).
    Hit(Vec<Candle>),
    /// Read this range from InfluxDB and [`CandleCache::put_candles`] it: the
    /// whole request, or the part the entry lacks next to what it has.
    Miss(Range<i64>),
}

#[derive(Debug)]
struct Stored {
    epoch: i64,
    covered: Range<i64>,
    candles: Vec<Candle>,
    used: u64,
}

#[derive(Debug)]
struct Tail {
    posted: u64,
    at: Instant,
    covered: Range<i64>,
    trades: Vec<Trade>,
    used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    states: HashMap<String, (Instant, ServingState)>,
    candles: HashMap<(String, Series), Stored>,
    tails: HashMap<String, Tail>,
    /// Per symbol, a range below its 1m watermark where InfluxDB holds no raw
    /// trades, and the epoch it was read under (see [`CandleCache::raw_empty`]).
    raw_empty: HashMap<String, (i64, Range<i64>)>,
    /// Per symbol, how many posts of its trades were seen (tails read before
    /// one are not kept).
    posted: HashMap<String, u64>,
    /// Engine ticks seen (every tail is read again after one).
    ticks: u64,
    bytes: usize,
    uses: u64,
}

impl Inner {
    /// What a tail read of `symbol` must still see unchanged to be kept: its
    /// posts plus the engine's ticks (both only grow).
    fn posted_of(&self, symbol: &str) -> u64 {
        self.posted.get(symbol).copied().unwrap_or(0) + self.ticks
    }
}

/// The cache; see the module doc.
#[derive(Debug)]
pub struct CandleCache {
    settings: CacheSettings,
    inner: Mutex<Inner>,
}

fn stored_bytes(s: &Stored) -> usize {
    ENTRY_OVERHEAD + s.candles.len() * std::mem::size_of::<Candle>()
}

fn tail_bytes(t: &Tail) -> usize {
    ENTRY_OVERHEAD + t.trades.len() * std::mem::size_of::<Trade>()
}

fn count(name: &'static str, kind: &'static str) {
    metrics::counter!(name, "kind" => kind).increment(1);
}

impl CandleCache {
    /// An empty cache.
    pub fn new(settings: CacheSettings) -> CandleCache {
        CandleCache {
            settings,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn enabled(&self) -> bool {
        self.settings.max_bytes > 0
    }

    /// Whether [`CandleCache::put_tail`] keeps tails at all.
    pub fn keeps_tails(&self) -> bool {
        self.enabled() && !self.settings.tail_ttl.is_zero()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("cache lock not poisoned")
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// `symbol`'s serving state if read less than `recheck` ago.
    pub fn state(&self, symbol: &str) -> Option<ServingState> {
        if self.settings.recheck.is_zero() {
            return None;
        }
        let inner = self.lock();
        let (at, state) = inner.states.get(symbol)?;
        (at.elapsed() < self.settings.recheck).then(|| state.clone())
    }

    /// Records `symbol`'s serving state as just read; a new epoch drops every
    /// candle entry of the symbol.
    pub fn put_state(&self, symbol: &str, state: &ServingState) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let keys: Vec<(String, Series)> = inner
            .candles
            .iter()
            .filter(|((s, _), e)| s == symbol && e.epoch != state.epoch)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(e) = inner.candles.remove(&key) {
                inner.bytes -= stored_bytes(&e);
                count("ohlcd_datafeed_cache_invalidations_total", "epoch");
            }
        }
        if !self.settings.recheck.is_zero() {
            inner
                .states
                .insert(symbol.to_string(), (Instant::now(), state.clone()));
        }
        metrics::gauge!("ohlcd_datafeed_cache_bytes").set(inner.bytes as f64);
    }

    /// Stored candles of `res` in `range` (entirely below `res`'s watermark)
    /// under `epoch`, or what to read.
    pub fn candles(
        &self,
        symbol: &str,
        res: impl Into<Series>,
        range: Range<i64>,
        epoch: i64,
    ) -> Lookup {
        if !self.enabled() {
            return Lookup::Miss(range);
        }
        let mut inner = self.lock();
        inner.uses += 1;
        let uses = inner.uses;
        let Some(e) = inner.candles.get_mut(&(symbol.to_string(), res.into())) else {
            count("ohlcd_datafeed_cache_misses_total", "candles");
            return Lookup::Miss(range);
        };
        if e.epoch != epoch {
            count("ohlcd_datafeed_cache_misses_total", "candles");
            return Lookup::Miss(range);
        }
        e.used = uses;
        let covered = e.covered.clone();
        if covered.start <= range.start && range.end <= covered.end {
            let from = e.candles.partition_point(|c| c.start < range.start);
            let to = e.candles.partition_point(|c| c.start < range.end);
            count("ohlcd_datafeed_cache_hits_total", "candles");
            return Lookup::Hit(e.candles[from..to].to_vec());
        }
        count("ohlcd_datafeed_cache_misses_total", "candles");
        // Next to (or overlapping) what is held: read only the missing side.
        if covered.start <= range.start && range.start <= covered.end {
            Lookup::Miss(covered.end..range.end)
        } else if range.start < covered.start
            && covered.start <= range.end
            && range.end <= covered.end
        {
            Lookup::Miss(range.start..covered.start)
        } else {
            Lookup::Miss(range)
        }
    }

    /// Keeps `candles` (time order), InfluxDB's answer for `range` of `res`
    /// read under `epoch`: joined to the entry it touches, or replacing it.
    /// Dropped if the symbol's epoch has moved meanwhile.
    pub fn put_candles(
        &self,
        symbol: &str,
        res: impl Into<Series>,
        range: Range<i64>,
        candles: &[Candle],
        epoch: i64,
    ) {
        if !self.enabled() || range.start >= range.end {
            return;
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some((_, state)) = inner.states.get(symbol)
            && state.epoch != epoch
        {
            return;
        }
        inner.uses += 1;
        let key = (symbol.to_string(), res.into());
        let mut entry = match inner.candles.remove(&key) {
            Some(e) => {
                inner.bytes -= stored_bytes(&e);
                e
            }
            None => Stored {
                epoch,
                covered: range.clone(),
                candles: Vec::new(),
                used: 0,
            },
        };
        entry.used = inner.uses;
        let fresh: Vec<Candle> = candles
            .iter()
            .filter(|c| range.contains(&c.start))
            .copied()
            .collect();
        if entry.epoch == epoch && entry.covered.end == range.start {
            entry.candles.extend(fresh);
            entry.covered.end = range.end;
        } else if entry.epoch == epoch && range.end == entry.covered.start {
            let mut joined = fresh;
            joined.extend_from_slice(&entry.candles);
            entry.candles = joined;
            entry.covered.start = range.start;
        } else {
            entry = Stored {
                epoch,
                covered: range,
                candles: fresh,
                used: inner.uses,
            };
        }
        inner.bytes += stored_bytes(&entry);
        inner.candles.insert(key, entry);
        self.evict(inner);
    }

    /// Raw trades of `symbol` in `range` if the tail holds all of it, or the
    /// post generation to hand back to [`CandleCache::put_tail`].
    /// True if `range` of `symbol` is known to hold no raw trades under
    /// `epoch`. A range every candle source answers empty falls back to raw
    /// trades (a dropped measurement must not look like a quiet market); when
    /// that read is empty too, as for a market closed or a feed that stopped,
    /// it is not repeated for every chart request. Trades that reach such a
    /// range later are late: their repair moves the epoch.
    pub fn raw_empty(&self, symbol: &str, range: &Range<i64>, epoch: i64) -> bool {
        if !self.enabled() {
            return false;
        }
        let inner = self.lock();
        let known = inner.raw_empty.get(symbol).is_some_and(|(e, known)| {
            *e == epoch && known.start <= range.start && range.end <= known.end
        });
        let name = if known {
            "ohlcd_datafeed_cache_hits_total"
        } else {
            "ohlcd_datafeed_cache_misses_total"
        };
        count(name, "raw_empty");
        known
    }

    /// Records that `range` of `symbol` (below its 1m watermark) holds no raw
    /// trades under `epoch`, joined to the range already known if they touch.
    pub fn put_raw_empty(&self, symbol: &str, range: Range<i64>, epoch: i64) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.lock();
        let joined = match inner.raw_empty.get(symbol) {
            Some((e, known))
                if *e == epoch && known.start <= range.end && range.start <= known.end =>
            {
                known.start.min(range.start)..known.end.max(range.end)
            }
            _ => range,
        };
        inner.raw_empty.insert(symbol.to_string(), (epoch, joined));
    }

    pub fn tail(&self, symbol: &str, range: Range<i64>) -> Result<Vec<Trade>, u64> {
        let mut inner = self.lock();
        let posted = inner.posted_of(symbol);
        if !self.enabled() {
            return Err(posted);
        }
        inner.uses += 1;
        let uses = inner.uses;
        if let Some(t) = inner.tails.get_mut(symbol)
            && t.posted == posted
            && t.at.elapsed() < self.settings.tail_ttl
            && t.covered.start <= range.start
            && range.end <= t.covered.end
        {
            t.used = uses;
            let from = t.trades.partition_point(|x| x.time < range.start);
            let to = t.trades.partition_point(|x| x.time < range.end);
            count("ohlcd_datafeed_cache_hits_total", "tail");
            return Ok(t.trades[from..to].to_vec());
        }
        count("ohlcd_datafeed_cache_misses_total", "tail");
        Err(posted)
    }

    /// Keeps `trades` (time order), InfluxDB's raw trades of `range`, read
    /// after post generation `posted` was seen; dropped if a post came since.
    pub fn put_tail(&self, symbol: &str, range: Range<i64>, mut trades: Vec<Trade>, posted: u64) {
        if !self.keeps_tails() || trades.len() > MAX_TAIL_TRADES {
            return;
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.posted_of(symbol) != posted {
            return;
        }
        // InfluxDB answers in time order; a stable sort keeps its order of
        // equal times, so sums add up in the same order as an uncached read.
        trades.sort_by_key(|t| t.time);
        inner.uses += 1;
        let tail = Tail {
            posted,
            at: Instant::now(),
            covered: range,
            trades,
            used: inner.uses,
        };
        inner.bytes += tail_bytes(&tail);
        if let Some(old) = inner.tails.insert(symbol.to_string(), tail) {
            inner.bytes -= tail_bytes(&old);
        }
        self.evict(inner);
    }

    /// Trades of `symbol` were just written (InfluxDB acknowledged them): its
    /// tail is stale, and so is any tail being read at this moment.
    pub fn trades_posted(&self, symbol: &str) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        *inner.posted.entry(symbol.to_string()).or_default() += 1;
        if let Some(old) = inner.tails.remove(symbol) {
            inner.bytes -= tail_bytes(&old);
            count("ohlcd_datafeed_cache_invalidations_total", "posted");
        }
        metrics::gauge!("ohlcd_datafeed_cache_bytes").set(inner.bytes as f64);
    }

    /// The engine ticked: trades written straight into InfluxDB may be in
    /// the tails now, so every tail is read again.
    pub fn tick_done(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.ticks += 1;
        for (_, old) in inner.tails.drain() {
            inner.bytes -= tail_bytes(&old);
        }
        metrics::gauge!("ohlcd_datafeed_cache_bytes").set(inner.bytes as f64);
    }

    /// Drops least recently used entries until the cache fits.
    fn evict(&self, inner: &mut Inner) {
        while inner.bytes > self.settings.max_bytes {
            let oldest_candles = inner
                .candles
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, e)| (k.clone(), e.used));
            let oldest_tail = inner
                .tails
                .iter()
                .min_by_key(|(_, t)| t.used)
                .map(|(k, t)| (k.clone(), t.used));
            let candles_first = match (&oldest_candles, &oldest_tail) {
                (Some((_, c)), Some((_, t))) => c <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if candles_first && let Some((k, _)) = oldest_candles {
                let e = inner.candles.remove(&k).expect("present");
                inner.bytes -= stored_bytes(&e);
            } else if let Some((k, _)) = oldest_tail {
                let t = inner.tails.remove(&k).expect("present");
                inner.bytes -= tail_bytes(&t);
            }
            metrics::counter!("ohlcd_datafeed_cache_evictions_total").increment(1);
        }
        metrics::gauge!("ohlcd_datafeed_cache_bytes").set(inner.bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000_000;

    fn candle(minute: i64, close: f64) -> Candle {
        Candle {
            start: minute * MIN,
            open: close,
            high: close,
            low: close,
            close,
            volume: 1.0,
            quote_volume: close,
            trades: 1,
            buy_volume: 0.0,
        }
    }

    fn settings(max_bytes: usize) -> CacheSettings {
        CacheSettings {
            max_bytes,
            recheck: Duration::from_secs(60),
            tail_ttl: Duration::from_secs(60),
        }
    }

    fn minutes(r: Range<i64>) -> Vec<Candle> {
        r.map(|m| candle(m, m as f64)).collect()
    }

    #[test]
    fn a_chart_moving_forward_reads_only_the_new_minutes() {
        let cache = CandleCache::new(settings(1 << 20));
        let m1 = Resolution::M1;
        assert_eq!(
            cache.candles("A", m1, 0..10 * MIN, 0),
            Lookup::Miss(0..10 * MIN)
        );
        cache.put_candles("A", m1, 0..10 * MIN, &minutes(0..10), 0);
        assert_eq!(
            cache.candles("A", m1, 2..5 * MIN, 0),
            Lookup::Hit(minutes(1..5))
        );
        // The watermark moved on by two minutes.
        assert_eq!(
            cache.candles("A", m1, 2 * MIN..12 * MIN, 0),
            Lookup::Miss(10 * MIN..12 * MIN)
        );
        cache.put_candles("A", m1, 10 * MIN..12 * MIN, &minutes(10..12), 0);
        assert_eq!(
            cache.candles("A", m1, 2 * MIN..12 * MIN, 0),
            Lookup::Hit(minutes(2..12))
        );
        // Further back: only what is missing before.
        assert_eq!(
            cache.candles("A", m1, -3 * MIN..4 * MIN, 0),
            Lookup::Miss(-3 * MIN..0)
        );
    }

    #[test]
    fn entries_of_an_older_epoch_are_never_served() {
        let cache = CandleCache::new(settings(1 << 20));
        let m1 = Resolution::M1;
        cache.put_state("A", &ServingState::default());
        cache.put_candles("A", m1, 0..10 * MIN, &minutes(0..10), 0);
        let moved = ServingState {
            epoch: 1,
            ..ServingState::default()
        };
        assert_eq!(
            cache.candles("A", m1, 0..10 * MIN, 1),
            Lookup::Miss(0..10 * MIN)
        );
        cache.put_state("A", &moved);
        assert_eq!(cache.bytes(), 0, "the old epoch's entry is dropped");
        // A read that started under the old epoch is not kept.
        cache.put_candles("A", m1, 0..10 * MIN, &minutes(0..10), 0);
        assert_eq!(
            cache.candles("A", m1, 0..10 * MIN, 1),
            Lookup::Miss(0..10 * MIN)
        );
    }

    #[test]
    fn a_post_drops_the_tail_and_any_tail_read_before_it() {
        let cache = CandleCache::new(settings(1 << 20));
        let trade = |t: i64| Trade {
            time: t,
            id: t,
            price: 1.0,
            amount: 1.0,
            side: Some(crate::candle::Side::Buy),
        };
        let gen0 = cache.tail("A", 0..100).unwrap_err();
        cache.put_tail("A", 0..100, vec![trade(5), trade(1)], gen0);
        assert_eq!(cache.tail("A", 0..50), Ok(vec![trade(1), trade(5)]));
        let gen1 = cache.tail("A", 0..200).unwrap_err();
        cache.trades_posted("A");
        assert!(cache.tail("A", 0..50).is_err());
        cache.put_tail("A", 0..200, vec![trade(1)], gen1);
        assert!(cache.tail("A", 0..50).is_err(), "read before the post");
    }

    #[test]
    fn the_least_recently_used_entries_go_when_full() {
        let one = ENTRY_OVERHEAD + 10 * std::mem::size_of::<Candle>();
        let cache = CandleCache::new(settings(2 * one));
        let m1 = Resolution::M1;
        for s in ["A", "B"] {
            cache.put_candles(s, m1, 0..10 * MIN, &minutes(0..10), 0);
        }
        assert!(matches!(cache.candles("A", m1, 0..MIN, 0), Lookup::Hit(_)));
        cache.put_candles("C", m1, 0..10 * MIN, &minutes(0..10), 0);
        assert!(cache.bytes() <= 2 * one);
        assert!(matches!(cache.candles("A", m1, 0..MIN, 0), Lookup::Hit(_)));
        assert!(matches!(cache.candles("C", m1, 0..MIN, 0), Lookup::Hit(_)));
        assert!(matches!(cache.candles("B", m1, 0..MIN, 0), Lookup::Miss(_)));
    }
}

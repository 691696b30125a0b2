//! Candle arithmetic: resolutions, epoch-aligned windows, aggregation of trades into
//! candles and of candles into coarser candles (the cascade).
//!
//! Everything here is pure: no I/O, no clock, no async. It is where correctness
//! lives, so it carries unit tests here and property tests in `tests/candle_props.rs`.
//!
//! Invariants:
//! - windows are half-open `[start, start + len)` and aligned to the Unix epoch (UTC);
//! - a candle is stamped with its window start;
//! - open/close are the first/last trade ordered by `(time, id)`;
//! - aggregating 1m candles into 5m (and so on up the cascade) gives the same open,
//!   high, low, close and trade count as aggregating the raw trades directly; the
//!   float sums (volume, quote volume, buy volume) agree to within floating-point
//!   rounding, kept tiny by compensated summation.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::zone::Zoned;

/// Nanoseconds in one second; all times in this module are Unix nanoseconds.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;
/// Nanoseconds in one day; every materialized resolution divides it.
pub const NANOS_PER_DAY: i64 = 86_400 * NANOS_PER_SEC;

/// A materialized candle resolution, each stored as its own InfluxDB measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Resolution {
    /// One minute, computed from raw trades.
    #[serde(rename = "1m")]
    M1,
    /// Five minutes, computed from 1m.
    #[serde(rename = "5m")]
    M5,
    /// Fifteen minutes, computed from 5m.
    #[serde(rename = "15m")]
    M15,
    /// One hour, computed from 15m.
    #[serde(rename = "1h")]
    H1,
    /// Four hours, computed from 1h.
    #[serde(rename = "4h")]
    H4,
    /// One day (00:00 UTC), computed from 4h.
    #[serde(rename = "1d")]
    D1,
}

impl Resolution {
    /// All resolutions in cascade order: each one's source comes before it.
    pub const ALL: [Resolution; 6] = [
        Resolution::M1,
        Resolution::M5,
        Resolution::M15,
        Resolution::H1,
        Resolution::H4,
        Resolution::D1,
    ];

    /// Window length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Resolution::M1 => 60,
            Resolution::M5 => 300,
            Resolution::M15 => 900,
            Resolution::H1 => 3_600,
            Resolution::H4 => 14_400,
            Resolution::D1 => 86_400,
        }
    }

    /// Window length in nanoseconds.
    pub fn nanos(self) -> i64 {
        self.seconds() * NANOS_PER_SEC
    }

    /// Short name used in config, SQLite and on the command line (`1m` … `1d`).
    pub fn name(self) -> &'static str {
        match self {
            Resolution::M1 => "1m",
            Resolution::M5 => "5m",
            Resolution::M15 => "15m",
            Resolution::H1 => "1h",
            Resolution::H4 => "4h",
            Resolution::D1 => "1d",
        }
    }

    /// InfluxDB measurement the candles of this resolution are written to.
    pub fn measurement(self) -> &'static str {
        match self {
            Resolution::M1 => "ohlc_1m",
            Resolution::M5 => "ohlc_5m",
            Resolution::M15 => "ohlc_15m",
            Resolution::H1 => "ohlc_1h",
            Resolution::H4 => "ohlc_4h",
            Resolution::D1 => "ohlc_1d",
        }
    }

    /// The resolution this one is computed from; `None` means raw trades.
    pub fn source(self) -> Option<Resolution> {
        match self {
            Resolution::M1 => None,
            Resolution::M5 => Some(Resolution::M1),
            Resolution::M15 => Some(Resolution::M5),
            Resolution::H1 => Some(Resolution::M15),
            Resolution::H4 => Some(Resolution::H1),
            Resolution::D1 => Some(Resolution::H4),
        }
    }

    /// Start of the window containing `time` (floor to the epoch-aligned grid).
    pub fn window_start(self, time: i64) -> i64 {
        floor_to(time, self.nanos())
    }

    /// Its position in [`Resolution::ALL`], which orders every
    /// per-resolution array (e.g. [`Watermarks`]).
    pub fn index(self) -> usize {
        match self {
            Resolution::M1 => 0,
            Resolution::M5 => 1,
            Resolution::M15 => 2,
            Resolution::H1 => 3,
            Resolution::H4 => 4,
            Resolution::D1 => 5,
        }
    }

    /// This resolution and every resolution it is computed from, source first.
    pub fn with_sources(self) -> Vec<Resolution> {
        Resolution::ALL.into_iter().filter(|r| *r <= self).collect()
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a resolution name that is not one of `1m 5m 15m 1h 4h 1d`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown resolution {0:?}: expected one of 1m, 5m, 15m, 1h, 4h, 1d")]
pub struct UnknownResolution(pub String);

impl FromStr for Resolution {
    type Err = UnknownResolution;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Resolution::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownResolution(s.to_string()))
    }
}

/// The watermarks of one symbol's six tasks, in [`Resolution::ALL`] order:
/// everything before a resolution's watermark is materialized; `None` before
/// its first step.
pub type Watermarks = [Option<i64>; 6];

/// Floor `time` to a multiple of `len` (works for negative times too).
pub fn floor_to(time: i64, len: i64) -> i64 {
    time.div_euclid(len) * len
}

/// Ceil `time` to a multiple of `len`.
pub fn ceil_to(time: i64, len: i64) -> i64 {
    let floor = floor_to(time, len);
    if floor == time { time } else { floor + len }
}

/// Merges ranges that overlap or touch; the result is sorted and disjoint
/// (empty ranges are dropped).
pub fn merge_ranges(mut ranges: Vec<Range<i64>>) -> Vec<Range<i64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<i64>> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Which side of the book took liquidity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Buyer was the taker.
    Buy,
    /// Seller was the taker.
    Sell,
}

impl Side {
    /// The tag value stored in InfluxDB.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

impl FromStr for Side {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "buy" => Ok(Side::Buy),
            "sell" => Ok(Side::Sell),
            other => Err(format!("must be \"buy\" or \"sell\", got {other:?}")),
        }
    }
}

/// One executed trade of one symbol.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trade {
    /// Unix nanoseconds, as stored in InfluxDB.
    pub time: i64,
    /// Exchange trade id; breaks ties between trades with equal `time`.
    pub id: i64,
    /// Price per unit.
    pub price: f64,
    /// Quantity traded.
    pub amount: f64,
    /// Taker side; `None` where the trades carry none (`schema.side` empty),
    /// which counts as no buy volume.
    pub side: Option<Side>,
}

/// Largest price, and largest amount, a trade may carry. With both at most
/// 1e15, one trade's `price × amount` is at most 1e30, and no window can hold
/// more than 8.64e13 trades a day (a million per millisecond), so no sum over
/// any window of any resolution, a month included, comes near `f64::MAX`
/// (1.8e308): every candle stays finite.
pub const MAX_TRADE_VALUE: f64 = 1e15;

/// Why a stored row cannot make a trade. Such a row is skipped and counted,
/// never aggregated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The row has no price.
    MissingPrice,
    /// The row has no amount.
    MissingAmount,
    /// Price or amount is text (or another type) where a number belongs.
    NotANumber,
    /// Price or amount is NaN or infinite.
    NotFinite,
    /// Price or amount is zero or negative.
    NotPositive,
    /// Price or amount is above [`MAX_TRADE_VALUE`]: its sums could overflow.
    TooLarge,
    /// The side is missing or none of the configured buy/sell values.
    UnknownSide,
}

impl SkipReason {
    /// Every reason, in a stable order (metrics, tables).
    pub const ALL: [SkipReason; 7] = [
        SkipReason::MissingPrice,
        SkipReason::MissingAmount,
        SkipReason::NotANumber,
        SkipReason::NotFinite,
        SkipReason::NotPositive,
        SkipReason::TooLarge,
        SkipReason::UnknownSide,
    ];

    /// The label used in metrics and logs, e.g. `missing_price`.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::MissingPrice => "missing_price",
            SkipReason::MissingAmount => "missing_amount",
            SkipReason::NotANumber => "not_a_number",
            SkipReason::NotFinite => "not_finite",
            SkipReason::NotPositive => "not_positive",
            SkipReason::TooLarge => "too_large",
            SkipReason::UnknownSide => "unknown_side",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a price or an amount: finite, above zero and at most
/// [`MAX_TRADE_VALUE`]. The one value rule of ingest and of reading.
pub fn check_value(x: f64) -> Result<f64, SkipReason> {
    if !x.is_finite() {
        Err(SkipReason::NotFinite)
    } else if x <= 0.0 {
        Err(SkipReason::NotPositive)
    } else if x > MAX_TRADE_VALUE {
        Err(SkipReason::TooLarge)
    } else {
        Ok(x)
    }
}

/// A stored row that could not make a trade: when, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skip {
    /// The row's timestamp, Unix nanoseconds.
    pub time: i64,
    /// Why it was skipped.
    pub reason: SkipReason,
}

impl Candle {
    /// The first field that is not finite, if any: `(name, value)`. InfluxDB
    /// refuses such a line, so a candle is checked before it is written.
    pub fn non_finite(&self) -> Option<(&'static str, f64)> {
        [
            ("open", self.open),
            ("high", self.high),
            ("low", self.low),
            ("close", self.close),
            ("volume", self.volume),
            ("quote_volume", self.quote_volume),
            ("buy_volume", self.buy_volume),
        ]
        .into_iter()
        .find(|(_, v)| !v.is_finite())
    }
}

/// One OHLC candle of one symbol at one resolution.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candle {
    /// Window start, Unix nanoseconds.
    pub start: i64,
    /// Price of the first trade by `(time, id)`.
    pub open: f64,
    /// Highest price.
    pub high: f64,
    /// Lowest price.
    pub low: f64,
    /// Price of the last trade by `(time, id)`.
    pub close: f64,
    /// Sum of amounts.
    pub volume: f64,
    /// Sum of price × amount; `quote_volume / volume` is the VWAP.
    pub quote_volume: f64,
    /// Number of trades.
    pub trades: i64,
    /// Sum of amounts of buyer-taker trades.
    pub buy_volume: f64,
}

impl Candle {
    /// This candle followed by `later`, a candle of the same window covering the
    /// time after it (two parts of one bar read from different sources).
    pub fn followed_by(&self, later: &Candle) -> Candle {
        Candle {
            start: self.start,
            open: self.open,
            high: self.high.max(later.high),
            low: self.low.min(later.low),
            close: later.close,
            volume: self.volume + later.volume,
            quote_volume: self.quote_volume + later.quote_volume,
            trades: self.trades + later.trades,
            buy_volume: self.buy_volume + later.buy_volume,
        }
    }
}

/// Neumaier (improved Kahan) compensated sum: keeps the rounding error of a long
/// sum near one ulp, so the cascade and a direct sum agree to the last bits.
#[derive(Clone, Copy, Debug, Default)]
struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(self) -> f64 {
        self.sum + self.compensation
    }
}

/// Order key for open/close: `(time, id)` for trades, `(start, 0)` for candles.
type OrderKey = (i64, i64);

/// Running aggregate of one window.
#[derive(Clone, Copy, Debug)]
struct Accumulator {
    open: f64,
    open_key: OrderKey,
    high: f64,
    low: f64,
    close: f64,
    close_key: OrderKey,
    volume: CompensatedSum,
    quote_volume: CompensatedSum,
    buy_volume: CompensatedSum,
    trades: i64,
}

/// What one input (a trade or a finer candle) contributes to a window.
#[derive(Clone, Copy, Debug)]
struct Contribution {
    key: OrderKey,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: f64,
    quote_volume: f64,
    buy_volume: f64,
    trades: i64,
}

impl Contribution {
    fn from_trade(t: &Trade) -> Self {
        Contribution {
            key: (t.time, t.id),
            open: t.price,
            high: t.price,
            low: t.price,
            close: t.price,
            volume: t.amount,
            quote_volume: t.price * t.amount,
            buy_volume: if t.side == Some(Side::Buy) {
                t.amount
            } else {
                0.0
            },
            trades: 1,
        }
    }

    fn from_candle(c: &Candle) -> Self {
        Contribution {
            key: (c.start, 0),
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            quote_volume: c.quote_volume,
            buy_volume: c.buy_volume,
            trades: c.trades,
        }
    }
}

impl Accumulator {
    fn new(c: &Contribution) -> Self {
        let mut acc = Accumulator {
            open: c.open,
            open_key: c.key,
            high: c.high,
            low: c.low,
            close: c.close,
            close_key: c.key,
            volume: CompensatedSum::default(),
            quote_volume: CompensatedSum::default(),
            buy_volume: CompensatedSum::default(),
            trades: 0,
        };
        acc.add_sums(c);
        acc
    }

    fn add(&mut self, c: &Contribution) {
        if c.key < self.open_key {
            self.open = c.open;
            self.open_key = c.key;
        }
        if c.key >= self.close_key {
            self.close = c.close;
            self.close_key = c.key;
        }
        self.high = self.high.max(c.high);
        self.low = self.low.min(c.low);
        self.add_sums(c);
    }

    fn add_sums(&mut self, c: &Contribution) {
        self.volume.add(c.volume);
        self.quote_volume.add(c.quote_volume);
        self.buy_volume.add(c.buy_volume);
        self.trades += c.trades;
    }

    fn finish(&self, start: i64) -> Candle {
        Candle {
            start,
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            volume: self.volume.value(),
            quote_volume: self.quote_volume.value(),
            trades: self.trades,
            buy_volume: self.buy_volume.value(),
        }
    }
}

/// Unix nanoseconds of Monday 1970-01-05 00:00 UTC, the origin of week windows.
const FIRST_MONDAY: i64 = 4 * NANOS_PER_DAY;

/// How timestamps are grouped into windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucketing {
    /// Epoch-aligned windows of a fixed length in nanoseconds.
    Fixed(i64),
    /// Windows of `n` weeks starting Monday 00:00 UTC.
    Weeks(u32),
    /// Windows of `n` calendar months (UTC), counted from January 1970.
    Months(u32),
    /// Windows counted in a time zone other than UTC (see [`crate::zone`]).
    Zoned(Zoned),
}

fn month_index(time: i64) -> i64 {
    use chrono::{Datelike, TimeZone};
    let dt = chrono::Utc.timestamp_nanos(time);
    i64::from(dt.year() - 1970) * 12 + i64::from(dt.month0())
}

fn month_start(index: i64) -> i64 {
    let year = 1970 + index.div_euclid(12) as i32;
    let month = index.rem_euclid(12) as u32 + 1;
    chrono::NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|d| d.and_utc().timestamp_nanos_opt())
        .unwrap_or(if index < 0 { i64::MIN } else { i64::MAX })
}

impl Bucketing {
    /// Start of the window containing `time`.
    pub fn window_start(self, time: i64) -> i64 {
        match self {
            Bucketing::Fixed(len) => floor_to(time, len),
            Bucketing::Weeks(n) => {
                let len = i64::from(n) * 7 * NANOS_PER_DAY;
                FIRST_MONDAY + floor_to(time - FIRST_MONDAY, len)
            }
            Bucketing::Months(n) => month_start(floor_to(month_index(time), i64::from(n))),
            Bucketing::Zoned(z) => z.window_start(time),
        }
    }

    /// Start of the window after the one starting at `start`.
    pub fn next_start(self, start: i64) -> i64 {
        match self {
            Bucketing::Fixed(len) => start.saturating_add(len),
            Bucketing::Weeks(n) => start.saturating_add(i64::from(n) * 7 * NANOS_PER_DAY),
            Bucketing::Months(n) => month_start(month_index(start) + i64::from(n)),
            Bucketing::Zoned(z) => z.next_start(start),
        }
    }

    /// The window containing `time`.
    pub fn window(self, time: i64) -> std::ops::Range<i64> {
        match self {
            Bucketing::Zoned(z) => z.window(time),
            _ => {
                let start = self.window_start(time);
                start..self.next_start(start)
            }
        }
    }

    /// First window start at or after `time`.
    pub fn ceil(self, time: i64) -> i64 {
        let start = self.window_start(time);
        if start == time {
            time
        } else {
            self.next_start(start)
        }
    }

    /// A typical window length (months count as 31 days), for estimates only.
    pub fn nominal_nanos(self) -> i64 {
        match self {
            Bucketing::Fixed(len) => len,
            Bucketing::Weeks(n) => i64::from(n) * 7 * NANOS_PER_DAY,
            Bucketing::Months(n) => i64::from(n) * 31 * NANOS_PER_DAY,
            Bucketing::Zoned(z) => z.nominal_nanos(),
        }
    }

    /// Materialized resolutions whose windows tile these windows in `range`
    /// (window-aligned) exactly, coarsest first; empty means only raw trades
    /// can produce them. In UTC the range does not matter; in another zone
    /// it is the coarsest resolution dividing every window boundary there (a
    /// DST change moves the boundaries by an hour).
    pub fn sources(self, range: std::ops::Range<i64>) -> Vec<Resolution> {
        let aligned = match self {
            Bucketing::Zoned(z) => z.alignment(range),
            _ => 0,
        };
        let mut out: Vec<Resolution> = Resolution::ALL
            .into_iter()
            .filter(|r| match self {
                Bucketing::Fixed(len) => len % r.nanos() == 0,
                // Weeks and months start at midnight UTC: unions of days.
                Bucketing::Weeks(_) | Bucketing::Months(_) => true,
                Bucketing::Zoned(_) => aligned % r.nanos() == 0,
            })
            .collect();
        out.reverse();
        out
    }
}

impl From<Resolution> for Bucketing {
    fn from(r: Resolution) -> Self {
        Bucketing::Fixed(r.nanos())
    }
}

/// Folds trades or finer candles into windows, in any input order.
///
/// Input from InfluxDB arrives time-ordered, so the common case touches only the
/// current window; out-of-order input is parked in a map and merged, so the result
/// never depends on order. Memory is one small accumulator per window that has data.
#[derive(Debug)]
pub struct Aggregator {
    bucketing: Bucketing,
    /// The window last looked up: a zone's windows cost a time zone lookup,
    /// and time-ordered input stays in one window for many items.
    window: std::ops::Range<i64>,
    current: Option<(i64, Accumulator)>,
    done: BTreeMap<i64, Accumulator>,
}

impl Aggregator {
    /// An empty aggregator for the given windows.
    pub fn new(bucketing: impl Into<Bucketing>) -> Self {
        Aggregator {
            bucketing: bucketing.into(),
            window: 0..0,
            current: None,
            done: BTreeMap::new(),
        }
    }

    /// Adds one trade.
    pub fn add_trade(&mut self, trade: &Trade) {
        self.add(trade.time, &Contribution::from_trade(trade));
    }

    /// Adds one finer candle; its window must lie inside one target window.
    pub fn add_candle(&mut self, candle: &Candle) {
        self.add(candle.start, &Contribution::from_candle(candle));
    }

    fn add(&mut self, time: i64, c: &Contribution) {
        let start = match self.bucketing {
            Bucketing::Zoned(_) => {
                if !self.window.contains(&time) {
                    self.window = self.bucketing.window(time);
                }
                self.window.start
            }
            _ => self.bucketing.window_start(time),
        };
        match &mut self.current {
            Some((s, acc)) if *s == start => acc.add(c),
            _ => {
                // A window seen before is updated where it is parked; only a new
                // window becomes current. So `current` is never also in `done`.
                if let Some(acc) = self.done.get_mut(&start) {
                    acc.add(c);
                    return;
                }
                self.park_current();
                self.current = Some((start, Accumulator::new(c)));
            }
        }
    }

    fn park_current(&mut self) {
        if let Some((start, acc)) = self.current.take() {
            let previous = self.done.insert(start, acc);
            debug_assert!(
                previous.is_none(),
                "the current window is never parked twice"
            );
        }
    }

    /// True when nothing has been added.
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.done.is_empty()
    }

    /// The candles, ordered by window start. Windows without trades have none.
    pub fn finish(mut self) -> Vec<Candle> {
        self.park_current();
        self.done
            .iter()
            .map(|(start, acc)| acc.finish(*start))
            .collect()
    }
}

/// Candles of `resolution` from trades in any order.
pub fn candles_from_trades<'a>(
    bucketing: impl Into<Bucketing>,
    trades: impl IntoIterator<Item = &'a Trade>,
) -> Vec<Candle> {
    let mut agg = Aggregator::new(bucketing);
    for t in trades {
        agg.add_trade(t);
    }
    agg.finish()
}

/// Coarser candles from finer ones (one step of the cascade, or re-aggregation).
pub fn candles_from_candles<'a>(
    bucketing: impl Into<Bucketing>,
    candles: impl IntoIterator<Item = &'a Candle>,
) -> Vec<Candle> {
    let mut agg = Aggregator::new(bucketing);
    for c in candles {
        agg.add_candle(c);
    }
    agg.finish()
}

#[cfg(test)]
mod tests;

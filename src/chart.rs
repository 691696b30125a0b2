//! Chart resolutions as TradingView writes them (`1S`, `1`, `45`, `1D`, `1W`,
//! `1M`), how their bars are bucketed in a time zone, the adaptive choice
//! `/api/ohlc` makes for long ranges, and gap filling. Pure values: no I/O.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::candle::{Bucketing, Candle, NANOS_PER_DAY, NANOS_PER_SEC};
use crate::zone::{LocalUnit, Tz, UTC, Zoned, is_utc};

/// A chart resolution as TradingView writes it: seconds (`1S`, `30S`),
/// minutes (`1`, `45`, `240`), days (`D`, `1D`, `3D`), weeks (`W`, `1W`) or
/// months (`M`, `1M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChartResolution {
    /// `n` seconds, `n` a divisor of 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30):
    /// every minute boundary is a bar boundary.
    Seconds(u32),
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
    "unknown resolution {0:?}: use nS (n dividing 60: 1S, 5S, 15S, 30S, ...), minutes (1 to 1440), nD (1D to 365D), nW (1W to 52W) or nM (1M to 12M)"
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
            "S" if !digits.is_empty() && n > 0 && 60 % n == 0 => (ChartResolution::Seconds(n), 30),
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
            ChartResolution::Seconds(n) => write!(f, "{n}S"),
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
    /// How timestamps are grouped into this resolution's bars in UTC.
    pub fn bucketing(self) -> Bucketing {
        match self {
            ChartResolution::Seconds(n) => Bucketing::Fixed(i64::from(n) * NANOS_PER_SEC),
            ChartResolution::Minutes(n) => Bucketing::Fixed(i64::from(n) * 60 * NANOS_PER_SEC),
            ChartResolution::Days(n) => Bucketing::Fixed(i64::from(n) * NANOS_PER_DAY),
            ChartResolution::Weeks(n) => Bucketing::Weeks(n),
            ChartResolution::Months(n) => Bucketing::Months(n),
        }
    }

    /// How timestamps are grouped into this resolution's bars in `zone`.
    /// UTC keeps the epoch-aligned windows; seconds bars are the same in
    /// every zone (every local midnight since 1972 is a whole minute).
    pub fn bucketing_in(self, zone: Tz) -> Bucketing {
        if is_utc(zone) {
            return self.bucketing();
        }
        let unit = match self {
            ChartResolution::Seconds(_) => return self.bucketing(),
            ChartResolution::Minutes(n) => LocalUnit::Intraday(i64::from(n) * 60 * NANOS_PER_SEC),
            ChartResolution::Days(n) => LocalUnit::Days(n),
            ChartResolution::Weeks(n) => LocalUnit::Weeks(n),
            ChartResolution::Months(n) => LocalUnit::Months(n),
        };
        Bucketing::Zoned(Zoned { zone, unit })
    }

    /// A typical bar length in nanoseconds (months count as 31 days).
    pub fn nominal_nanos(self) -> i64 {
        self.bucketing().nominal_nanos()
    }

    /// Daily, weekly or monthly: stamped on `/udf/history` with its trading
    /// date rather than the instant it starts.
    pub fn is_dwm(self) -> bool {
        matches!(
            self,
            ChartResolution::Days(_) | ChartResolution::Weeks(_) | ChartResolution::Months(_)
        )
    }
}

/// A chart resolution counted in a time zone: what a request for bars asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ZonedResolution {
    /// The resolution.
    pub resolution: ChartResolution,
    /// The zone whose midnights the bars count from.
    pub zone: Tz,
}

impl ZonedResolution {
    /// `resolution` in `zone`.
    pub fn new(resolution: ChartResolution, zone: Tz) -> Self {
        ZonedResolution { resolution, zone }
    }

    /// How timestamps are grouped into these bars.
    pub fn bucketing(self) -> Bucketing {
        self.resolution.bucketing_in(self.zone)
    }

    /// A typical bar length in nanoseconds (months count as 31 days).
    pub fn nominal_nanos(self) -> i64 {
        self.resolution.nominal_nanos()
    }
}

impl From<ChartResolution> for ZonedResolution {
    fn from(resolution: ChartResolution) -> Self {
        ZonedResolution {
            resolution,
            zone: UTC,
        }
    }
}

impl fmt::Display for ZonedResolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_utc(self.zone) {
            write!(f, "{}", self.resolution)
        } else {
            write!(f, "{} in {}", self.resolution, self.zone.name())
        }
    }
}

/// A bar of a gap-filled series: a real bar, or one made for a window
/// without trades.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FilledBar {
    /// The bar.
    pub bar: Candle,
    /// No trade fell in its window: flat at the previous close, volume 0.
    pub filled: bool,
}

/// `bars` (window starts of `bucketing`, in time order) with every window in
/// `range` that starts before `until` and has no bar made flat at the
/// previous close, with volume and trade count 0. `before` is the close of the
/// last trade before `range`; windows before the first bar stay empty when
/// there is none.
pub fn fill_previous(
    bars: &[Candle],
    bucketing: Bucketing,
    range: Range<i64>,
    before: Option<f64>,
    until: i64,
) -> Vec<FilledBar> {
    let flat = |start: i64, price: f64| FilledBar {
        bar: Candle {
            start,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: 0.0,
            quote_volume: 0.0,
            trades: 0,
            buy_volume: 0.0,
        },
        filled: true,
    };
    let mut out = Vec::with_capacity(bars.len());
    let mut close = before;
    let mut next = bars.iter().peekable();
    let mut start = bucketing.ceil(range.start);
    while start < range.end && start <= until {
        match next.peek() {
            Some(bar) if bar.start == start => {
                out.push(FilledBar {
                    bar: **bar,
                    filled: false,
                });
                close = Some(bar.close);
                next.next();
            }
            _ => out.extend(close.map(|c| flat(start, c))),
        }
        let following = bucketing.next_start(start);
        if following <= start {
            break;
        }
        start = following;
    }
    // Bars past `until` (a clock behind the data) are kept as they are.
    out.extend(next.map(|bar| FilledBar {
        bar: *bar,
        filled: false,
    }));
    out
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
        assert_eq!(r("1S"), ChartResolution::Seconds(1));
        assert_eq!(r("30S").to_string(), "30S");
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
            "S",
            "0S",
            "7S",
            "60S",
            "1s",
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

    #[test]
    fn the_coarsening_thresholds_are_exclusive_and_the_span_is_end_minus_start() {
        let day = NANOS_PER_DAY;
        // Not from the epoch, so a span computed from `end` alone shows.
        let from = 1_000 * day;
        let at = |res: &str, days: i64, max_bars: u64| {
            adaptive_resolution(r(res), from..from + days * day, max_bars)
        };
        assert_eq!(at("1", 365, u64::MAX), r("60"));
        assert_eq!(at("1", 366, u64::MAX), r("1D"));
        assert_eq!(at("1", 90, u64::MAX), r("15"));
        assert_eq!(at("1", 91, u64::MAX), r("60"));
        assert_eq!(at("1", 30, u64::MAX), r("1"));
        assert_eq!(at("1", 31, u64::MAX), r("15"));
        // A day of 5m is 288 bars: exactly the cap is not over it.
        assert_eq!(at("5", 1, 288), r("5"));
        assert_eq!(at("5", 1, 287), r("15"));
    }

    #[test]
    fn fill_previous_makes_every_missing_window_flat_at_the_last_close() {
        let m = 60 * NANOS_PER_SEC;
        let bar = |minute: i64, close: f64| Candle {
            start: minute * m,
            open: close - 1.0,
            high: close + 1.0,
            low: close - 2.0,
            close,
            volume: 2.0,
            quote_volume: 2.0 * close,
            trades: 3,
            buy_volume: 1.0,
        };
        let bars = [bar(2, 10.0), bar(5, 20.0)];
        let one = r("1").bucketing();
        let filled = fill_previous(&bars, one, 0..8 * m, Some(7.0), 6 * m);
        let summary: Vec<(i64, f64, bool)> = filled
            .iter()
            .map(|f| (f.bar.start / m, f.bar.close, f.filled))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, 7.0, true),
                (1, 7.0, true),
                (2, 10.0, false),
                (3, 10.0, true),
                (4, 10.0, true),
                (5, 20.0, false),
                (6, 20.0, true),
            ]
        );
        let flat = filled[3].bar;
        assert_eq!(
            (flat.open, flat.high, flat.low, flat.volume, flat.trades),
            (10.0, 10.0, 10.0, 0.0, 0)
        );
        // Nothing before the range: no bar until the first trade.
        let filled = fill_previous(&bars[..1], one, 0..4 * m, None, 10 * m);
        assert_eq!(filled.first().map(|f| f.bar.start), Some(2 * m));
        assert_eq!(filled.len(), 2);
    }

    #[test]
    fn seconds_are_utc_in_every_zone_and_utc_keeps_the_epoch_windows() {
        let hk: Tz = "Asia/Hong_Kong".parse().unwrap();
        assert_eq!(r("5S").bucketing_in(hk), r("5S").bucketing());
        assert_eq!(r("1D").bucketing_in(UTC), r("1D").bucketing());
        assert!(matches!(r("1D").bucketing_in(hk), Bucketing::Zoned(_)));
        assert!(matches!(r("240").bucketing_in(hk), Bucketing::Zoned(_)));
    }

    #[test]
    fn each_resolution_groups_by_its_own_length_and_stamps_d_w_m_by_date() {
        const SEC: i64 = 1_000_000_000;
        assert_eq!(r("5S").bucketing(), Bucketing::Fixed(5 * SEC));
        assert_eq!(r("45").bucketing(), Bucketing::Fixed(2_700 * SEC));
        assert_eq!(r("3D").bucketing(), Bucketing::Fixed(259_200 * SEC));
        assert_eq!(r("2W").bucketing(), Bucketing::Weeks(2));
        assert_eq!(r("3M").bucketing(), Bucketing::Months(3));
        let hk: Tz = "Asia/Hong_Kong".parse().unwrap();
        assert_eq!(
            r("240").bucketing_in(hk),
            Bucketing::Zoned(Zoned {
                zone: hk,
                unit: LocalUnit::Intraday(14_400 * SEC)
            })
        );
        let in_hk = ZonedResolution::new(r("W"), hk);
        assert_eq!(in_hk.nominal_nanos(), 604_800 * SEC);
        assert_eq!(in_hk.to_string(), "1W in Asia/Hong_Kong");
        assert_eq!(ZonedResolution::from(r("240")).to_string(), "240");
        for (res, dwm) in [
            ("5S", false),
            ("240", false),
            ("D", true),
            ("W", true),
            ("M", true),
        ] {
            assert_eq!(r(res).is_dwm(), dwm, "{res}");
        }
    }
}

//! Chart resolutions as TradingView writes them (`1`, `45`, `1D`, `1W`, `1M`),
//! how their bars are bucketed, and the adaptive choice `/api/ohlc` makes for
//! long ranges. Pure values: no I/O.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::candle::{Bucketing, NANOS_PER_DAY, NANOS_PER_SEC};

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

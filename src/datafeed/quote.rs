//! A symbol's rolling 24-hour quote (`/udf/quotes`): last price, change, the
//! window's open, high, low and volume, from stored candles plus raw trades
//! at the edges. Exact: every trade of the window counts once.

use std::ops::Range;

use super::{Datafeed, DatafeedError};
use crate::candle::{Aggregator, Bucketing, NANOS_PER_DAY, ceil_to, floor_to};
use crate::chart::ChartResolution;
use crate::influx::{TradeRead, trades_only};

const MINUTE: i64 = 60_000_000_000;
const HOUR: i64 = 60 * MINUTE;

/// The last 24 hours of a symbol, up to and including `now`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quote {
    /// Last trade price at or before now.
    pub last: f64,
    /// First trade price of the window (the last price when it has none).
    pub open: f64,
    /// Highest price in the window (the last price when it has none).
    pub high: f64,
    /// Lowest price in the window (the last price when it has none).
    pub low: f64,
    /// Sum of amounts in the window.
    pub volume: f64,
    /// Trades in the window.
    pub trades: i64,
    /// Last trade price before the window, if any.
    pub prev_close: Option<f64>,
}

impl Quote {
    /// The price the change is measured from: the previous close, or the
    /// window's open for a symbol younger than the window.
    pub fn reference(&self) -> f64 {
        self.prev_close.unwrap_or(self.open)
    }

    /// Last price minus the reference.
    pub fn change(&self) -> f64 {
        self.last - self.reference()
    }

    /// The change in percent of the reference.
    pub fn change_percent(&self) -> f64 {
        100.0 * self.change() / self.reference()
    }
}

/// The parts of `[start, end)` by source: raw trades before the first
/// minute, 1m bars up to the first hour, 1h bars, 1m bars, raw trades after
/// the last minute. Empty parts are left out.
fn parts(Range { start, end }: Range<i64>) -> Vec<(Option<ChartResolution>, Range<i64>)> {
    let (a, b) = (ceil_to(start, MINUTE), floor_to(end, MINUTE));
    let (h0, h1) = (ceil_to(a, HOUR), floor_to(b, HOUR));
    let mut out = Vec::new();
    let mut push = |res, range: Range<i64>| {
        if range.start < range.end {
            out.push((res, range));
        }
    };
    if a > b {
        push(None, start..end);
        return out;
    }
    push(None, start..a);
    if h0 < h1 {
        push(Some(ChartResolution::Minutes(1)), a..h0);
        push(Some(ChartResolution::Minutes(60)), h0..h1);
        push(Some(ChartResolution::Minutes(1)), h1..b);
    } else {
        push(Some(ChartResolution::Minutes(1)), a..b);
    }
    push(None, b..end);
    out
}

impl Datafeed {
    /// `symbol`'s quote over `[now − 24 h, now]`; `None` when it never traded
    /// before `now`.
    pub async fn quote(&self, symbol: &str, now: i64) -> Result<Option<Quote>, DatafeedError> {
        self.require_symbol(symbol).await?;
        let window = now.saturating_sub(NANOS_PER_DAY)..now.saturating_add(1);
        // One window holding every time from 1970 on: the whole 24 hours
        // fold into one candle, open and close ordered by (time, id).
        let mut day = Aggregator::new(Bucketing::Fixed(i64::MAX));
        for (res, part) in parts(window.clone()) {
            match res {
                Some(res) => Box::pin(self.bars(symbol, res, part))
                    .await?
                    .iter()
                    .for_each(|c| day.add_candle(c)),
                None => {
                    self.influx
                        .read_trades(
                            TradeRead::new(&[symbol], part.clone()),
                            trades_only(|t| {
                                if part.contains(&t.time) {
                                    day.add_trade(&t)
                                }
                            }),
                        )
                        .await?;
                }
            }
        }
        let prev_close = self
            .influx
            .last_trade_before(symbol, window.start)
            .await?
            .map(|(_, price)| price);
        let quote = match day.finish().first() {
            Some(c) => Quote {
                last: c.close,
                open: c.open,
                high: c.high,
                low: c.low,
                volume: c.volume,
                trades: c.trades,
                prev_close,
            },
            None => match prev_close.map(|p| Quote {
                last: p,
                open: p,
                high: p,
                low: p,
                volume: 0.0,
                trades: 0,
                prev_close,
            }) {
                Some(q) => q,
                None => return Ok(None),
            },
        };
        Ok(Some(quote))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_cut_into_raw_edges_minutes_and_hours_without_gaps() {
        let start = 100 * NANOS_PER_DAY + 10 * HOUR + 17 * MINUTE + 5;
        let window = start..start + NANOS_PER_DAY + 1;
        let p = parts(window.clone());
        assert_eq!(p.first().unwrap().1.start, window.start);
        assert_eq!(p.last().unwrap().1.end, window.end);
        for pair in p.windows(2) {
            assert_eq!(pair[0].1.end, pair[1].1.start);
        }
        let kinds: Vec<Option<ChartResolution>> = p.iter().map(|(r, _)| *r).collect();
        let (m, h) = (ChartResolution::Minutes(1), ChartResolution::Minutes(60));
        assert_eq!(kinds, vec![None, Some(m), Some(h), Some(m), None]);
        // Less than a minute: raw trades only.
        assert_eq!(parts(start..start + 10), vec![(None, start..start + 10)]);
    }
}

//! The candle oracle: raw trades folded into windows the plain way, written
//! apart from ohlcd's candle code (nothing of `ohlcd::candle` is used), so a
//! mistake there cannot hide by being made twice.

use std::collections::BTreeMap;

const NS: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * NS;

/// A trade as read back from InfluxDB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Raw {
    /// Stored timestamp, Unix ns.
    pub time: i64,
    /// Trade id.
    pub id: i64,
    pub price: f64,
    pub amount: f64,
    /// Taker buy.
    pub buy: bool,
}

/// One window's candle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Bar {
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    pub quote_volume: f64,
    pub trades: i64,
    pub buy_volume: f64,
}

/// Window lengths the harness checks, by how windows are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Window {
    /// Fixed length aligned to the Unix epoch (minutes, hours, days in UTC).
    Fixed(i64),
    /// Calendar weeks starting Monday 00:00 UTC.
    Week,
}

impl Window {
    /// Start of the window holding `t` (ns).
    pub(super) fn start(self, t: i64) -> i64 {
        match self {
            Window::Fixed(len) => t.div_euclid(len) * len,
            // 1970-01-01 was a Thursday: Mondays are 4 days after epoch
            // multiples of a week.
            Window::Week => {
                let monday = 4 * DAY;
                (t - monday).div_euclid(7 * DAY) * 7 * DAY + monday
            }
        }
    }

    /// The window of a TradingView resolution (`1`, `60`, `1D`, `1W`).
    pub(super) fn of_udf(res: &str) -> Option<Window> {
        match res {
            "1D" | "D" => Some(Window::Fixed(DAY)),
            "1W" | "W" => Some(Window::Week),
            minutes => minutes
                .parse::<i64>()
                .ok()
                .filter(|m| *m > 0)
                .map(|m| Window::Fixed(m * 60 * NS)),
        }
    }
}

/// Candles of `trades` per window start; open and close are the first and
/// last trade by (time, id).
pub(super) fn fold(trades: &[Raw], window: Window) -> BTreeMap<i64, Bar> {
    let mut sorted: Vec<Raw> = trades.to_vec();
    sorted.sort_by_key(|t| (t.time, t.id));
    let mut bars: BTreeMap<i64, Bar> = BTreeMap::new();
    for t in sorted {
        let bar = bars.entry(window.start(t.time)).or_insert(Bar {
            open: t.price,
            high: t.price,
            low: t.price,
            close: t.price,
            volume: 0.0,
            quote_volume: 0.0,
            trades: 0,
            buy_volume: 0.0,
        });
        bar.high = bar.high.max(t.price);
        bar.low = bar.low.min(t.price);
        bar.close = t.price;
        bar.volume += t.amount;
        bar.quote_volume += t.price * t.amount;
        bar.trades += 1;
        if t.buy {
            bar.buy_volume += t.amount;
        }
    }
    bars
}

/// Equal up to floating-point summation order.
pub(super) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-12
}

/// `None` if a stored candle equals the oracle's: prices and counts exactly,
/// sums up to summation order; else what differs.
pub(super) fn differs(stored: &Bar, want: &Bar) -> Option<String> {
    let exact = stored.open == want.open
        && stored.high == want.high
        && stored.low == want.low
        && stored.close == want.close
        && stored.trades == want.trades;
    let sums = close(stored.volume, want.volume)
        && close(stored.quote_volume, want.quote_volume)
        && close(stored.buy_volume, want.buy_volume);
    (!(exact && sums)).then(|| format!("stored {stored:?}, oracle {want:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(time: i64, id: i64, price: f64, amount: f64, buy: bool) -> Raw {
        Raw {
            time,
            id,
            price,
            amount,
            buy,
        }
    }

    #[test]
    fn open_and_close_go_by_time_then_id_whatever_the_read_order() {
        let m = 60 * NS;
        let trades = [
            raw(m + 5, 9, 3.0, 1.0, false),
            raw(m + 5, 2, 2.0, 1.0, true),
            raw(m + 1, 7, 5.0, 2.0, true),
            raw(2 * m, 1, 4.0, 1.0, false),
        ];
        let bars = fold(&trades, Window::Fixed(m));
        assert_eq!(bars.len(), 2);
        let b = bars[&m];
        assert_eq!((b.open, b.close, b.high, b.low), (5.0, 3.0, 5.0, 2.0));
        assert_eq!(b.trades, 3);
        assert_eq!(b.volume, 4.0);
        assert_eq!(b.buy_volume, 3.0);
        assert_eq!(b.quote_volume, 10.0 + 2.0 + 3.0);
        assert_eq!(bars[&(2 * m)].open, 4.0);
    }

    #[test]
    fn weeks_start_on_monday_and_days_at_midnight_utc() {
        // 2024-01-03 (a Wednesday) 13:00 UTC; Monday 2024-01-01 00:00 UTC.
        let wed = 1_704_286_800 * NS;
        assert_eq!(Window::Week.start(wed), 1_704_067_200 * NS);
        assert_eq!(Window::Week.start(1_704_067_200 * NS), 1_704_067_200 * NS);
        assert_eq!(Window::of_udf("1D").unwrap().start(wed), 1_704_240_000 * NS);
        assert_eq!(
            Window::of_udf("240").unwrap().start(wed),
            1_704_283_200 * NS
        );
        assert_eq!(Window::of_udf("x"), None);
    }

    #[test]
    fn a_changed_field_is_a_difference_and_summation_order_is_not() {
        let a = Bar {
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close: 1.5,
            volume: 0.1 + 0.2 + 0.3,
            quote_volume: 3.0,
            trades: 3,
            buy_volume: 0.0,
        };
        let b = Bar {
            volume: 0.3 + 0.2 + 0.1,
            ..a
        };
        assert_eq!(differs(&a, &b), None);
        assert!(differs(&a, &Bar { trades: 4, ..a }).is_some());
        assert!(differs(&a, &Bar { close: 1.25, ..a }).is_some());
        assert!(differs(&a, &Bar { volume: 0.7, ..a }).is_some());
    }
}

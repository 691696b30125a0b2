//! Whether overwritten candles (repairs after late trades, the lookback,
//! `rebuild`) read back as written: [`super::write`] checks it on InfluxDB 3.
//!
//! InfluxDB 1.x keeps the last write of a point. The InfluxDB 3 Core build at
//! hand does not: while a point's earlier version is still in the server's
//! unpersisted buffer chunk (same table, same `--gen1-duration` window of data
//! time, 10 min by default), which version a query returns is undefined, and it
//! can change as unrelated rows land in that chunk (measured; docs/influxdb.md, "InfluxDB
//! 3: overwrites"). No write strategy makes that exact, so ohlcd checks: every
//! overwritten candle is read back, a candle that reads an older version is
//! written again (up to [`OVERWRITE_REWRITES`] times), and if it still reads
//! wrong the overwrite fails with [`super::InfluxError::OverwriteLost`], so the repair
//! fails loudly, keeps its dirty range and runs again on the next tick.

use std::collections::HashMap;

use crate::candle::Candle;

/// How many times candles that read back an older version are written again
/// before the overwrite fails.
pub const OVERWRITE_REWRITES: usize = 4;

/// True if `stored` is the candle that was written (floats compared to a
/// relative 1e-9: they went through line protocol text and back).
fn reads_as_written(written: &Candle, stored: &Candle) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs());
    (written.start, written.trades) == (stored.start, stored.trades)
        && close(written.open, stored.open)
        && close(written.high, stored.high)
        && close(written.low, stored.low)
        && close(written.close, stored.close)
        && close(written.volume, stored.volume)
        && close(written.quote_volume, stored.quote_volume)
        && close(written.buy_volume, stored.buy_volume)
}

/// Of `written`, the candles that `stored` does not hold as written.
pub(super) fn lost_candles(written: &[Candle], stored: &HashMap<i64, Candle>) -> Vec<Candle> {
    written
        .iter()
        .filter(|c| !stored.get(&c.start).is_some_and(|s| reads_as_written(c, s)))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candle(start: i64, close: f64) -> Candle {
        Candle {
            start,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close,
            volume: 3.0,
            quote_volume: 4.5,
            trades: 2,
            buy_volume: 1.0,
        }
    }

    #[test]
    fn a_candle_is_lost_when_it_reads_another_value_or_is_missing() {
        let written = [candle(0, 1.0), candle(60, 1.5), candle(120, 1.25)];
        let stored: HashMap<i64, Candle> = [
            (0, candle(0, 1.0)),
            // an older version
            (60, candle(60, 1.75)),
        ]
        .into_iter()
        .collect();
        let lost = lost_candles(&written, &stored);
        assert_eq!(
            lost.iter().map(|c| c.start).collect::<Vec<_>>(),
            vec![60, 120]
        );
    }

    #[test]
    fn floats_that_went_through_text_still_read_as_written() {
        let w = candle(0, 0.1 + 0.2);
        let s = Candle {
            close: w.close * (1.0 + 1e-12),
            ..w
        };
        assert!(lost_candles(&[w], &[(0, s)].into_iter().collect()).is_empty());
    }
}

//! The late-trade rule. A trade stored behind its symbol's late threshold
//! (the 1m watermark, or the end of a chunk being read right now: see
//! [`ProgressStore::late_before`]) may be missing from candles already
//! written, so the minute it falls in is recorded as dirty and the engine
//! recomputes that minute at every resolution. Adjacent minutes of a symbol
//! are one range.
//!
//! Recording happens before the write and again after it
//! ([`write_recording_late`]). Before: a trade InfluxDB stored must never go
//! uncounted, and the write can store it without the writer getting to
//! record it afterwards (the daemon dies in between, the progress store
//! fails, InfluxDB answers an error or never answers yet keeps the points).
//! A range recorded for a trade that was not stored costs one recompute.
//! After, once InfluxDB acknowledged the write, all of them again: a repair
//! may have run on the first record before the trades landed, and a chunk
//! that read the source in between has announced itself in
//! `inflight_until`, so what it missed is late now.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use super::{NewTrade, write_trades};
use crate::candle::{Resolution, merge_ranges};
use crate::clock::Clock;
use crate::influx::{InfluxClient, InfluxError};
use crate::progress::{ProgressError, ProgressStore};

/// The late trades among some, by [`late_minutes`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LateMinutes<'a> {
    /// How many trades are late.
    pub trades: usize,
    /// Per symbol with a late trade, the minutes they fall in, adjacent
    /// minutes merged, in time order.
    pub ranges: BTreeMap<&'a str, Vec<Range<i64>>>,
}

/// Which of `trades` are late given each symbol's threshold (a symbol
/// without one has never had a 1m chunk run, so nothing of it is late), and
/// the minutes they make dirty.
pub fn late_minutes<'a>(
    trades: &'a [NewTrade],
    thresholds: &HashMap<String, i64>,
) -> LateMinutes<'a> {
    let minute = Resolution::M1.nanos();
    let mut late = LateMinutes::default();
    for t in trades {
        let time = t.stored().time;
        if thresholds.get(&t.symbol).is_some_and(|th| time < *th) {
            late.trades += 1;
            let start = Resolution::M1.window_start(time);
            late.ranges
                .entry(t.symbol.as_str())
                .or_default()
                .push(start..start + minute);
        }
    }
    for ranges in late.ranges.values_mut() {
        *ranges = merge_ranges(std::mem::take(ranges));
    }
    late
}

/// The distinct symbols of `trades`, sorted.
pub fn symbols_of(trades: &[NewTrade]) -> Vec<String> {
    trades
        .iter()
        .map(|t| t.symbol.as_str())
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .map(String::from)
        .collect()
}

/// What [`record_late`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Trades behind their symbol's threshold.
    pub late: usize,
    /// Symbols that already have tasks.
    pub known_symbols: usize,
}

/// Records the minutes of the late ones among `trades` (of `symbols`, as
/// [`symbols_of`] gives them) as dirty ranges.
pub async fn record_late(
    store: &ProgressStore,
    trades: &[NewTrade],
    symbols: &[String],
    now: i64,
) -> Result<Recorded, ProgressError> {
    let thresholds = store.late_before(symbols).await?;
    let late = late_minutes(trades, &thresholds);
    for (symbol, ranges) in &late.ranges {
        store.add_dirty(symbol, ranges, now).await?;
    }
    Ok(Recorded {
        late: late.trades,
        known_symbols: thresholds.len(),
    })
}

/// Why [`write_recording_late`] failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The write to InfluxDB.
    #[error(transparent)]
    Influx(#[from] InfluxError),
    /// Recording late trades.
    #[error(transparent)]
    Progress(#[from] ProgressError),
}

/// What [`write_recording_late`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The distinct symbols written, sorted.
    pub symbols: Vec<String>,
    /// Trades that were late.
    pub late: usize,
    /// Whether some symbol had no task yet (the list of symbols grew).
    pub new_symbols: bool,
}

/// Writes checked `trades` and records the late ones before the write and
/// again after it (see the module docs); `written` runs once InfluxDB has
/// acknowledged them, before the second record.
pub async fn write_recording_late(
    influx: &InfluxClient,
    store: &ProgressStore,
    clock: &dyn Clock,
    trades: &[NewTrade],
    written: impl FnOnce(&[String]),
) -> Result<Ingested, IngestError> {
    let symbols = symbols_of(trades);
    record_late(store, trades, &symbols, clock.now()).await?;
    write_trades(influx, trades).await?;
    crate::failpoint::hit("trades_written").await;
    written(&symbols);
    let recorded = record_late(store, trades, &symbols, clock.now()).await?;
    Ok(Ingested {
        new_symbols: recorded.known_symbols < symbols.len(),
        symbols,
        late: recorded.late,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::Side;

    const MIN_MS: i64 = 60_000;
    const MIN: i64 = 60_000_000_000;
    const T0_MS: i64 = 1_700_000_040_000; // a minute's start

    fn trade(symbol: &str, time_ms: i64, id: i64) -> NewTrade {
        NewTrade {
            symbol: symbol.into(),
            side: Side::Buy,
            price: 1.0,
            amount: 1.0,
            time_ms,
            id,
        }
    }

    fn thresholds(of: &[(&str, i64)]) -> HashMap<String, i64> {
        of.iter().map(|(s, t)| (s.to_string(), *t)).collect()
    }

    #[test]
    fn only_trades_behind_their_symbols_threshold_are_late() {
        let t0 = T0_MS * 1_000_000;
        let trades = [
            trade("A", T0_MS, 1),              // behind A's threshold
            trade("A", T0_MS + 5 * MIN_MS, 2), // at it: not late
            trade("B", T0_MS, 3),              // B has no chunk yet
        ];
        let th = thresholds(&[("A", t0 + 5 * MIN)]);
        let late = late_minutes(&trades, &th);
        assert_eq!(late.trades, 1);
        assert_eq!(late.ranges.keys().collect::<Vec<_>>(), [&"A"]);
        let minute = Range {
            start: t0,
            end: t0 + MIN,
        };
        assert_eq!(
            late.ranges["A"],
            vec![minute],
            "only the minute of the late trade"
        );
        assert_eq!(
            late_minutes(&trades, &HashMap::new()),
            LateMinutes::default()
        );
    }

    #[test]
    fn adjacent_minutes_are_one_range_and_gaps_keep_ranges_apart() {
        let t0 = T0_MS * 1_000_000;
        let trades = [
            trade("A", T0_MS + 3 * MIN_MS + 59_999, 1),
            trade("A", T0_MS, 2),
            trade("A", T0_MS + 1, 3), // same minute again
            trade("A", T0_MS + MIN_MS, 4),
            trade("A", T0_MS + 3 * MIN_MS, 5),
        ];
        let late = late_minutes(&trades, &thresholds(&[("A", i64::MAX)]));
        assert_eq!(late.trades, 5);
        assert_eq!(
            late.ranges["A"],
            vec![t0..t0 + 2 * MIN, t0 + 3 * MIN..t0 + 4 * MIN]
        );
    }

    #[test]
    fn a_trade_is_judged_by_the_time_it_is_stored_at() {
        // Stored at time_ms * 1e6 + id % 1e6: a trade in the threshold's
        // millisecond with a higher id is stored after it.
        let t0 = T0_MS * 1_000_000;
        let th = thresholds(&[("A", t0 + 10)]);
        assert_eq!(late_minutes(&[trade("A", T0_MS, 9)], &th).trades, 1);
        assert_eq!(late_minutes(&[trade("A", T0_MS, 10)], &th).trades, 0);
    }

    #[test]
    fn symbols_are_listed_once_in_order() {
        let trades = [
            trade("B", T0_MS, 1),
            trade("A", T0_MS, 2),
            trade("B", T0_MS, 3),
        ];
        assert_eq!(symbols_of(&trades), ["A", "B"]);
    }
}

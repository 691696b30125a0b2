//! Where a symbol's points start and end: the time of its first and last
//! trade (or candle), one symbol at a time or a set with one query per
//! measurement. On InfluxDB 3 the last point is looked for in widening
//! windows (`lookback_windows`), not over all of history.

use serde_json::Value;

use super::layout::trade_groups;
use super::query::{series_values, tagged_values};
use super::{InfluxClient, InfluxError, Stored};
use crate::candle::Resolution;

impl InfluxClient {
    /// Time of the earliest raw trade of `symbol`, if any.
    pub async fn first_trade_time(&self, symbol: &str) -> Result<Option<i64>, InfluxError> {
        self.first_time_from(None, symbol, i64::MIN).await
    }

    /// Time of the first point of `symbol` at or after `from`, in the raw trades
    /// (`res` = `None`) or in the candles of `res`.
    pub async fn first_time_from(
        &self,
        res: Option<Resolution>,
        symbol: &str,
        from: i64,
    ) -> Result<Option<i64>, InfluxError> {
        let stored = res.map_or(Stored::Trades, Stored::Candles);
        let Some(points) = self.names().point_source(stored, symbol) else {
            return Ok(None);
        };
        let v = self.query_json(&points.first_from(from)).await?;
        Ok(series_values(&v)
            .next()
            .and_then(|row| row.first().and_then(Value::as_i64)))
    }

    /// Time and price of the last raw trade of `symbol` strictly before
    /// `before` (the price NaN if that row's price is not a number).
    pub async fn last_trade_before(
        &self,
        symbol: &str,
        before: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        self.last_point_before(Stored::Trades, symbol, before).await
    }

    /// Time and value of the last point of `symbol` in `stored` strictly
    /// before `before`: a trade's price, a candle's close.
    ///
    /// 1.x (and 2.x) find it through the series index with one query. 3.x
    /// scans every buffered chunk (10 minutes of data time each) of the time
    /// range a query names: with no lower bound, all of the table's history
    /// (measured on the test VM: 1.7–2.6 s over 69 days of 20,000 trades per
    /// symbol; 12 ms for a week holding none). There the day candles, one
    /// chunk per day, first say on which day to look: the answer is the last
    /// point from the last day candle before `before` on (trades past the day
    /// watermark included), or, if there is none there (no day candle yet, or
    /// its trades are gone), the first found looking back in widening windows
    /// (`lookback_windows`).
    /// Either way every time before `before` is searched; the day candles only
    /// keep the scanned range near the answer.
    pub(crate) async fn last_point_before(
        &self,
        stored: Stored,
        symbol: &str,
        before: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        if self.generation.finds_last_point_by_index() {
            return self.last_point_in(stored, symbol, None, before).await;
        }
        let days = Stored::Candles(Resolution::D1);
        if stored == days {
            return self.last_point_looking_back(stored, symbol, before).await;
        }
        let mut below = before;
        if let Some((day, _)) = self.last_point_looking_back(days, symbol, before).await? {
            if let Some(found) = self
                .last_point_in(stored, symbol, Some(day), before)
                .await?
            {
                return Ok(Some(found));
            }
            below = day;
        }
        self.last_point_looking_back(stored, symbol, below).await
    }

    /// [`InfluxClient::last_point_before`] through the windows of
    /// [`lookback_windows`], newest first, stopping at the first that holds a
    /// point: the scanned range follows the gap to that point, not the age of
    /// the data.
    async fn last_point_looking_back(
        &self,
        stored: Stored,
        symbol: &str,
        before: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        for (from, to) in lookback_windows(before, now) {
            if let Some(found) = self.last_point_in(stored, symbol, from, to).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Time and value of the last point of `symbol` in `stored` in
    /// `[from, to)` (`from` `None`: no lower bound), one query.
    async fn last_point_in(
        &self,
        stored: Stored,
        symbol: &str,
        from: Option<i64>,
        to: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        let Some(points) = self.names().point_source(stored, symbol) else {
            return Ok(None);
        };
        let v = self.query_json(&points.last_in(from, to)).await?;
        Ok(series_values(&v).next().and_then(|row| {
            let time = row.first()?.as_i64()?;
            let value = match row.get(1) {
                Some(Value::String(s)) => s.trim().parse().unwrap_or(f64::NAN),
                Some(v) => v.as_f64().unwrap_or(f64::NAN),
                None => f64::NAN,
            };
            Some((time, value))
        }))
    }

    /// Per symbol of `symbols`, the time of its first trade at or after `from`
    /// (one query per measurement; symbols without one are absent).
    pub async fn first_trades_of(
        &self,
        symbols: &[String],
        from: i64,
    ) -> Result<std::collections::HashMap<String, i64>, InfluxError> {
        self.trade_edges_of(symbols, Some(from), false).await
    }

    /// Per symbol of `symbols`, the time of its last trade (one query per
    /// measurement; symbols without one are absent).
    pub async fn last_trades_of(
        &self,
        symbols: &[String],
    ) -> Result<std::collections::HashMap<String, i64>, InfluxError> {
        self.trade_edges_of(symbols, None, true).await
    }

    /// Per symbol, the time of its first (or `newest`: last) trade at or
    /// after `from`.
    async fn trade_edges_of(
        &self,
        symbols: &[String],
        from: Option<i64>,
        newest: bool,
    ) -> Result<std::collections::HashMap<String, i64>, InfluxError> {
        let mut out: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        let layout = self.layout.clone();
        let tags = &layout.schema.symbol_tags;
        for group in trade_groups(&layout, symbols) {
            let Some(q) = self.names().trade_edges(&group, from, newest) else {
                continue;
            };
            let v = self.query_json(&q).await?;
            for (symbol, row) in tagged_values(&v, group.exchange, tags) {
                if let Some(t) = row.first().and_then(Value::as_i64) {
                    // Several series of one symbol (other tags): the earliest
                    // first, the latest last.
                    let e = out.entry(symbol).or_insert(t);
                    *e = if newest { (*e).max(t) } else { (*e).min(t) };
                }
            }
        }
        Ok(out)
    }
}

/// The windows `(from, to)` (`from` inclusive, `None`: no lower bound; `to`
/// exclusive) in which [`InfluxClient::last_point_before`] looks back for the
/// last point before `before` on 3.x, newest first, together covering every time
/// before `before`: the day before `before` (or before `now`, if `before` is
/// later: it may be `i64::MAX`) up to `before`, then back from there in
/// windows 4 times as long each, and finally everything before 1970, where
/// the data (none, as a rule) costs nothing to rule out. From a date in 2024
/// back to 1970 that is 8 windows.
pub(crate) fn lookback_windows(before: i64, now: i64) -> impl Iterator<Item = (Option<i64>, i64)> {
    let day = crate::candle::NANOS_PER_DAY;
    let mut next = Some((before.min(now).saturating_sub(day), before, day));
    std::iter::from_fn(move || {
        let (from, to, span) = next?;
        if from <= 0 || from >= to {
            next = None;
            return Some((None, to));
        }
        let wider = span.saturating_mul(4);
        next = Some((from.saturating_sub(wider), from, wider));
        Some((Some(from), to))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookback_windows_tile_all_time_before_newest_first_and_widen() {
        let day = crate::candle::NANOS_PER_DAY;
        let before = 19_800 * day; // 2024-03-19
        let w: Vec<_> = lookback_windows(before, before + 5 * day).collect();
        assert_eq!(w[0], (Some(before - day), before));
        assert_eq!(w[1], (Some(before - 5 * day), before - day));
        assert_eq!(w[2], (Some(before - 21 * day), before - 5 * day));
        // Adjacent, no gap or overlap, down to an unbounded last window.
        for pair in w.windows(2) {
            assert_eq!(pair[1].1, pair[0].0.unwrap());
        }
        assert_eq!(w.last().unwrap().0, None);
        assert!(w[..w.len() - 1].iter().all(|(from, _)| from.unwrap() > 0));
        assert_eq!(w.len(), 8);
    }

    #[test]
    fn lookback_windows_start_from_now_for_a_far_future_bound_and_stop_before_1970() {
        let day = crate::candle::NANOS_PER_DAY;
        let now = 20_000 * day;
        let w: Vec<_> = lookback_windows(i64::MAX, now).collect();
        assert_eq!(w[0], (Some(now - day), i64::MAX));
        assert_eq!(w.last().unwrap().0, None);
        // A bound at or before 1970: one unbounded query.
        assert_eq!(lookback_windows(0, now).collect::<Vec<_>>(), [(None, 0)]);
        assert_eq!(
            lookback_windows(day / 2, now).collect::<Vec<_>>(),
            [(None, day / 2)]
        );
        assert_eq!(
            lookback_windows(i64::MIN, now).collect::<Vec<_>>(),
            [(None, i64::MIN)]
        );
    }
}

//! The engine's narrow view of InfluxDB: find symbols, read trades and candles
//! of a set of symbols over a range, write candles, delete candles. The engine's
//! chunking, batching and repair logic depends only on this trait, so unit tests
//! can drive it with an in-memory warehouse while integration tests keep the
//! real server ([`InfluxClient`] implements it).

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;

use crate::candle::{Candle, Resolution, Skip, Trade};
use crate::influx::{CandleRead, CandleSet, InfluxClient, InfluxError, Stored, TradeRead};
use crate::retention::Keep;

/// Where trades come from and candles go.
pub trait Warehouse: Send + Sync + 'static {
    /// Fails unless the database exists, so a dropped database can never look
    /// like "no trades" and move watermarks.
    fn check(&self) -> impl Future<Output = Result<(), InfluxError>> + Send;

    /// Every symbol with raw trades, sorted.
    fn symbols(&self) -> impl Future<Output = Result<Vec<String>, InfluxError>> + Send;

    /// Per symbol, the time of its first trade at or after `from` (symbols
    /// without one are absent).
    fn first_trades(
        &self,
        symbols: &[String],
        from: i64,
    ) -> impl Future<Output = Result<HashMap<String, i64>, InfluxError>> + Send;

    /// Per symbol, its number of trades in `range` (symbols without any are absent).
    fn count_trades(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> impl Future<Output = Result<HashMap<String, u64>, InfluxError>> + Send;

    /// Per symbol, its number of trades in each minute of `range` that has
    /// any (symbols without any are absent).
    fn count_minutes(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> impl Future<Output = Result<HashMap<String, Vec<(i64, u64)>>, InfluxError>> + Send;

    /// Streams the rows of trades of `symbols` in `range`, with their symbol:
    /// each a trade, or why it cannot make one; returns how many rows were
    /// read. Per symbol, a count of the trades in a minute
    /// ([`Warehouse::count_minutes`]) counts exactly the rows read as trades.
    fn read_trades(
        &self,
        symbols: &[String],
        range: Range<i64>,
        on_row: impl FnMut(&str, Result<Trade, Skip>) + Send,
    ) -> impl Future<Output = Result<u64, InfluxError>> + Send;

    /// Streams the stored candles of `res` of `symbols` in `range`.
    fn read_candles(
        &self,
        res: Resolution,
        symbols: &[String],
        range: Range<i64>,
        on_candle: impl FnMut(&str, Candle) + Send,
    ) -> impl Future<Output = Result<u64, InfluxError>> + Send;

    /// Writes candles; returns once all are acknowledged.
    fn write_candles(
        &self,
        sets: &[CandleSet<'_>],
    ) -> impl Future<Output = Result<(), InfluxError>> + Send;

    /// How long raw trades are kept, nanoseconds; `None`: forever (or unknown).
    fn raw_retention(&self) -> Option<i64> {
        None
    }

    /// Writes candles that may replace stored ones (repairs); returns once all
    /// are acknowledged and, where the server does not promise that the last
    /// write wins (InfluxDB 3), read back as written.
    fn overwrite_candles(
        &self,
        sets: &[CandleSet<'_>],
    ) -> impl Future<Output = Result<(), InfluxError>> + Send {
        self.write_candles(sets)
    }

    /// Deletes the candles of `res` of `symbol` in `range`.
    fn delete_candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
    ) -> impl Future<Output = Result<(), InfluxError>> + Send;
}

impl Warehouse for InfluxClient {
    async fn check(&self) -> Result<(), InfluxError> {
        self.check_database().await
    }

    async fn symbols(&self) -> Result<Vec<String>, InfluxError> {
        InfluxClient::symbols(self).await
    }

    async fn first_trades(
        &self,
        symbols: &[String],
        from: i64,
    ) -> Result<HashMap<String, i64>, InfluxError> {
        self.first_trades_of(symbols, from).await
    }

    async fn count_trades(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<HashMap<String, u64>, InfluxError> {
        self.count_trades_of(symbols, range).await
    }

    async fn count_minutes(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<HashMap<String, Vec<(i64, u64)>>, InfluxError> {
        self.count_minutes_of(symbols, range).await
    }

    async fn read_trades(
        &self,
        symbols: &[String],
        range: Range<i64>,
        on_row: impl FnMut(&str, Result<Trade, Skip>) + Send,
    ) -> Result<u64, InfluxError> {
        InfluxClient::read_trades(self, TradeRead::new(symbols, range), on_row).await
    }

    async fn read_candles(
        &self,
        res: Resolution,
        symbols: &[String],
        range: Range<i64>,
        on_candle: impl FnMut(&str, Candle) + Send,
    ) -> Result<u64, InfluxError> {
        InfluxClient::read_candles(self, CandleRead::new(res, symbols, range), on_candle).await
    }

    async fn write_candles(&self, sets: &[CandleSet<'_>]) -> Result<(), InfluxError> {
        InfluxClient::write_candles(self, sets).await
    }

    async fn overwrite_candles(&self, sets: &[CandleSet<'_>]) -> Result<(), InfluxError> {
        InfluxClient::overwrite_candles(self, sets).await
    }

    async fn delete_candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<(), InfluxError> {
        InfluxClient::delete_candles(self, res, symbol, range).await
    }

    fn raw_retention(&self) -> Option<i64> {
        match self.keep(Stored::Trades) {
            Keep::Forever => None,
            Keep::For(ns) => Some(ns),
        }
    }
}

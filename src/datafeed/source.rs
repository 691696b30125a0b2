//! The datafeed's narrow view of InfluxDB: what serving a chart reads. The
//! datafeed's planning (which stored resolution serves a request, where raw
//! trades take over, fallbacks, retention reach) depends only on this trait,
//! so its unit tests drive it with trades and candles in memory, while the
//! daemon and the integration tests use the real server ([`InfluxClient`]
//! implements it).

use std::future::Future;
use std::ops::Range;

use crate::candle::{Candle, Resolution, Trade};
use crate::influx::{CandleRead, InfluxClient, InfluxError, Stored, TradeRead, trades_only};
use crate::retention::Keep;

/// Where a chart's candles and trades come from.
pub trait ChartSource: Send + Sync + 'static {
    /// Streams the stored candles of `res` of `symbol` starting in `range`,
    /// oldest first; returns how many were read.
    fn candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
        on_candle: impl FnMut(Candle) + Send,
    ) -> impl Future<Output = Result<u64, InfluxError>> + Send;

    /// Streams the raw trades of `symbol` in `range` (those that make
    /// trades; bad rows are left out); returns how many were read.
    fn trades(
        &self,
        symbol: &str,
        range: Range<i64>,
        on_trade: impl FnMut(Trade) + Send,
    ) -> impl Future<Output = Result<u64, InfluxError>> + Send;

    /// Every symbol with raw trades, sorted.
    fn symbols(&self) -> impl Future<Output = Result<Vec<String>, InfluxError>> + Send;

    /// Every symbol with raw trades or daily candles, sorted.
    fn symbols_with_candles(&self)
    -> impl Future<Output = Result<Vec<String>, InfluxError>> + Send;

    /// Time of `symbol`'s first raw trade.
    fn first_trade_time(
        &self,
        symbol: &str,
    ) -> impl Future<Output = Result<Option<i64>, InfluxError>> + Send;

    /// Start of `symbol`'s first stored candle of `res`.
    fn first_candle_time(
        &self,
        res: Resolution,
        symbol: &str,
    ) -> impl Future<Output = Result<Option<i64>, InfluxError>> + Send;

    /// Time and price of `symbol`'s last raw trade strictly before `before`.
    fn last_trade_before(
        &self,
        symbol: &str,
        before: i64,
    ) -> impl Future<Output = Result<Option<(i64, f64)>, InfluxError>> + Send;

    /// Start of `symbol`'s last stored candle of `res` strictly before `before`.
    fn last_candle_before(
        &self,
        res: Resolution,
        symbol: &str,
        before: i64,
    ) -> impl Future<Output = Result<Option<i64>, InfluxError>> + Send;

    /// How long the server keeps `stored`.
    fn keep(&self, stored: Stored) -> Keep;
}

impl ChartSource for InfluxClient {
    async fn candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
        mut on_candle: impl FnMut(Candle) + Send,
    ) -> Result<u64, InfluxError> {
        self.read_candles(CandleRead::new(res, &[symbol], range), |_, c| on_candle(c))
            .await
    }

    async fn trades(
        &self,
        symbol: &str,
        range: Range<i64>,
        on_trade: impl FnMut(Trade) + Send,
    ) -> Result<u64, InfluxError> {
        self.read_trades(TradeRead::new(&[symbol], range), trades_only(on_trade))
            .await
    }

    async fn symbols(&self) -> Result<Vec<String>, InfluxError> {
        InfluxClient::symbols(self).await
    }

    async fn symbols_with_candles(&self) -> Result<Vec<String>, InfluxError> {
        InfluxClient::symbols_with_candles(self).await
    }

    async fn first_trade_time(&self, symbol: &str) -> Result<Option<i64>, InfluxError> {
        InfluxClient::first_trade_time(self, symbol).await
    }

    async fn first_candle_time(
        &self,
        res: Resolution,
        symbol: &str,
    ) -> Result<Option<i64>, InfluxError> {
        InfluxClient::first_candle_time(self, res, symbol).await
    }

    async fn last_trade_before(
        &self,
        symbol: &str,
        before: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        InfluxClient::last_trade_before(self, symbol, before).await
    }

    async fn last_candle_before(
        &self,
        res: Resolution,
        symbol: &str,
        before: i64,
    ) -> Result<Option<i64>, InfluxError> {
        self.last_candle_time_before(res, symbol, before).await
    }

    fn keep(&self, stored: Stored) -> Keep {
        InfluxClient::keep(self, stored)
    }
}

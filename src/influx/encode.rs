//! Candle writes: line-protocol encoding (a small pure function) and batched,
//! pipelined `/write` requests.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use influxdb_line_protocol::LineProtocolBuilder;

use super::{InfluxClient, InfluxError};
use crate::candle::{Candle, Resolution};

/// Write requests [`InfluxClient::write_candle_sets`] keeps in flight at once.
pub const WRITES_IN_FLIGHT: usize = 4;

/// Candles of one symbol at one resolution, to be written.
#[derive(Debug, Clone, Copy)]
pub struct CandleSet<'a> {
    /// Their resolution (measurement).
    pub resolution: Resolution,
    /// Their symbol (tag).
    pub symbol: &'a str,
    /// The candles.
    pub candles: &'a [Candle],
}

/// Line protocol for candles of one symbol and resolution.
pub fn encode_candles(res: Resolution, symbol: &str, candles: &[Candle]) -> Vec<u8> {
    let mut lp = LineProtocolBuilder::new_with(Vec::with_capacity(candles.len() * 160));
    for c in candles {
        lp = lp
            .measurement(res.measurement())
            .tag("symbol", symbol)
            .field("open", c.open)
            .field("high", c.high)
            .field("low", c.low)
            .field("close", c.close)
            .field("volume", c.volume)
            .field("quote_volume", c.quote_volume)
            .field("trades", c.trades)
            .field("buy_volume", c.buy_volume)
            .timestamp(c.start)
            .close_line();
    }
    lp.build()
}

impl InfluxClient {
    /// Writes candles in batches of `influx.write_batch` lines.
    pub async fn write_candles(
        &self,
        res: Resolution,
        symbol: &str,
        candles: &[Candle],
    ) -> Result<(), InfluxError> {
        for batch in candles.chunks(self.write_batch) {
            self.write_lines(encode_candles(res, symbol, batch).into())
                .await?;
        }
        Ok(())
    }

    /// Writes candles of many symbols and resolutions: lines are packed into
    /// requests of `influx.write_batch` lines, and up to [`WRITES_IN_FLIGHT`]
    /// requests are sent at once, so a server that acknowledges a write only
    /// after its WAL flush (InfluxDB 3: up to a second) does not serialize a
    /// backfill. Returns once every request was acknowledged.
    pub async fn write_candle_sets(&self, sets: &[CandleSet<'_>]) -> Result<(), InfluxError> {
        let mut bodies: Vec<Bytes> = Vec::new();
        let mut body: Vec<u8> = Vec::new();
        let mut lines = 0;
        for set in sets {
            for part in set.candles.chunks(self.write_batch) {
                if lines + part.len() > self.write_batch && lines > 0 {
                    bodies.push(std::mem::take(&mut body).into());
                    lines = 0;
                }
                body.extend_from_slice(&encode_candles(set.resolution, set.symbol, part));
                lines += part.len();
            }
        }
        if lines > 0 {
            bodies.push(body.into());
        }
        futures_util::stream::iter(bodies)
            .map(|b| self.write_lines(b))
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candles_encode_as_one_line_each_with_integer_trade_count() {
        let c = Candle {
            start: 60_000_000_000,
            open: 1.5,
            high: 2.0,
            low: 1.0,
            close: 1.25,
            volume: 3.0,
            quote_volume: 4.5,
            trades: 7,
            buy_volume: 0.1,
        };
        let lp = String::from_utf8(encode_candles(Resolution::M5, "BTC-USD", &[c, c])).unwrap();
        let first = lp.lines().next().unwrap();
        assert_eq!(
            first,
            "ohlc_5m,symbol=BTC-USD open=1.5,high=2,low=1,close=1.25,volume=3,quote_volume=4.5,trades=7i,buy_volume=0.1 60000000000"
        );
        assert_eq!(lp.lines().count(), 2);
    }
}

//! Reading stored candles (streamed, one symbol or a set) and deleting them.

use std::ops::Range;

use super::{InfluxClient, InfluxError};
use crate::candle::{Candle, Resolution};

/// A read of stored candles: one resolution, which instruments, which times.
#[derive(Debug, Clone)]
pub struct CandleRead<'a, S = String> {
    /// The resolution (measurement) read.
    pub resolution: Resolution,
    /// The instruments, by name; one instrument is a slice of one.
    pub symbols: &'a [S],
    /// Window starts in `[start, end)`, nanoseconds.
    pub range: Range<i64>,
}

impl<'a, S: AsRef<str>> CandleRead<'a, S> {
    /// The candles of `resolution` of `symbols` starting in `range`.
    pub fn new(resolution: Resolution, symbols: &'a [S], range: Range<i64>) -> Self {
        CandleRead {
            resolution,
            symbols,
            range,
        }
    }
}

impl InfluxClient {
    /// Streams the stored candles `read` asks for into `on_candle`, each with
    /// its instrument's name; returns how many were read. One query (on
    /// InfluxDB 3, one per instrument).
    pub async fn read_candles<S: AsRef<str>>(
        &self,
        read: CandleRead<'_, S>,
        mut on_candle: impl FnMut(&str, Candle),
    ) -> Result<u64, InfluxError> {
        let CandleRead {
            resolution: res,
            symbols,
            range,
        } = read;
        if let [one] = symbols {
            // Every candle is this instrument's: its tags need not be selected.
            let one = one.as_ref();
            let Some(q) = self.names().candle_read(res, &[one], false, &range) else {
                return Ok(0);
            };
            return self
                .stream_candle_rows(&q, false, |_, c| on_candle(one, c))
                .await;
        }
        if symbols.is_empty() {
            return Ok(0);
        }
        if !self.generation.last_write_wins() {
            // InfluxDB 3 (the build tested) answers a query over several
            // series with older versions of overwritten points, where one
            // series per query reads the last write (docs/influxdb.md, "InfluxDB 3:
            // overwrites"). Candles are overwritten by repairs: one query each.
            let mut n = 0;
            for symbol in symbols {
                let symbol = symbol.as_ref();
                let Some(q) = self.names().candle_read(res, &[symbol], false, &range) else {
                    continue;
                };
                n += self
                    .stream_candle_rows(&q, false, |_, c| on_candle(symbol, c))
                    .await?;
            }
            return Ok(n);
        }
        let Some(q) = self.names().candle_read(res, symbols, true, &range) else {
            return Ok(0);
        };
        self.stream_candle_rows(&q, true, on_candle).await
    }

    /// Streams the candles a candle read `q` answers (with their tags when
    /// `with_symbol`).
    async fn stream_candle_rows(
        &self,
        q: &str,
        with_symbol: bool,
        mut on_candle: impl FnMut(&str, Candle),
    ) -> Result<u64, InfluxError> {
        let tags = self.layout().schema.candle_tags();
        let names = [
            "time",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "quote_volume",
            "trades",
            "buy_volume",
        ];
        let borrowed = tags.len() == 1;
        let mut name = String::with_capacity(48);
        let mut idx: Option<([usize; 9], Vec<usize>)> = None;
        self.stream_rows(q, |cols, row| {
            let (i, t) = match &idx {
                Some(i) => i,
                None => {
                    let mut i = [usize::MAX; 9];
                    for (slot, name) in i.iter_mut().zip(names) {
                        *slot = cols.index(name)?;
                    }
                    let t = if with_symbol {
                        tags.iter()
                            .map(|tag| cols.index(tag))
                            .collect::<Result<Vec<_>, _>>()?
                    } else {
                        Vec::new()
                    };
                    idx.insert((i, t))
                }
            };
            let symbol: &str = if !with_symbol {
                ""
            } else if borrowed {
                row.symbol(t[0])?
            } else {
                name.clear();
                for (k, at) in t.iter().enumerate() {
                    if k > 0 {
                        name.push(crate::symbol::NAME_SEPARATOR);
                    }
                    name.push_str(row.symbol(*at)?);
                }
                &name
            };
            on_candle(
                symbol,
                Candle {
                    start: row.i64(i[0], "time")?,
                    open: row.f64(i[1], "open")?,
                    high: row.f64(i[2], "high")?,
                    low: row.f64(i[3], "low")?,
                    close: row.f64(i[4], "close")?,
                    volume: row.f64(i[5], "volume")?,
                    quote_volume: row.f64(i[6], "quote_volume")?,
                    trades: row.i64(i[7], "trades")?,
                    buy_volume: row.f64(i[8], "buy_volume")?,
                },
            );
            Ok(())
        })
        .await
    }

    /// Deletes the candles of `res` for `symbol` in `[range.start, range.end)`.
    ///
    /// 3.x has no `DELETE` (500 "not implemented"), and overwriting a candle
    /// with a marker that readers skip was tried and lost: its deduplication
    /// kept some markers over the candles rewritten after them. So on 3.x this
    /// fails with [`InfluxError::CannotDelete`], saying exactly which candles
    /// stay, rather than leave a wrong candle silently.
    pub async fn delete_candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<(), InfluxError> {
        let measurement = self.layout().schema.candle_measurement(res);
        if !self.generation.can_delete() {
            return Err(InfluxError::CannotDelete {
                measurement,
                symbol: symbol.to_string(),
                from: crate::times::to_rfc3339(range.start),
                to: crate::times::to_rfc3339(range.end),
            });
        }
        let Some(q) = self.names().candle_delete(res, symbol, &range) else {
            return Ok(());
        };
        self.query_json(&q).await.map(|_| ())
    }
}

//! The queries the engine and the datafeed send: first and last trades,
//! counts, streamed reads of trades and candles (one symbol or a set),
//! database checks, deletes. Names come from the client's
//! [`Layout`] through [`super::layout`]; every literal and identifier is
//! quoted.

use std::ops::Range;

use bytes::Bytes;
use serde_json::Value;

use super::layout::{
    Dialect, TradeGroup, candle_rows, group_by, ident, tags_condition, trade_columns, trade_groups,
    valid_trade_condition,
};
use super::{Generation, InfluxClient, InfluxError, Stored};
use crate::candle::{Candle, Resolution, Side, Skip, SkipReason, Trade, check_value};
use crate::schema::Layout;

/// Escapes a string for an InfluxQL single-quoted literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Escapes an identifier for InfluxQL double quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl InfluxClient {
    /// Creates the database if it does not exist (idempotent): `CREATE
    /// DATABASE` on 1.x and 2.x, `POST /api/v3/configure/database` on 3.x (which
    /// answers `CREATE DATABASE` with 500 "not implemented").
    pub async fn create_database(&self) -> Result<(), InfluxError> {
        if self.generation != Generation::V3 {
            return self
                .query_json(&format!("CREATE DATABASE {}", quote_ident(&self.database)))
                .await
                .map(|_| ());
        }
        let body = serde_json::json!({ "db": self.database });
        match self
            .send("create database", || {
                self.request(reqwest::Method::POST, "/api/v3/configure/database")
                    .json(&body)
            })
            .await
        {
            // 409 "attempted to create a resource that already exists".
            Err(InfluxError::Status { status: 409, .. }) => Ok(()),
            Err(InfluxError::Status { message, .. }) if message.contains("already exists") => {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Fails with [`InfluxError::DatabaseNotFound`] unless the database exists.
    /// 3.x drops the connection on `SHOW RETENTION POLICIES` (and `SHOW
    /// DATABASES`), so there the database list of its configure API is asked.
    pub async fn check_database(&self) -> Result<(), InfluxError> {
        if self.generation == Generation::V3 {
            let resp = self
                .send("list databases", || {
                    self.request(reqwest::Method::GET, "/api/v3/configure/database")
                        .query(&[("format", "json")])
                })
                .await?;
            let list: Value = resp
                .json()
                .await
                .map_err(|e| InfluxError::Protocol(format!("database list is not JSON: {e}")))?;
            let found = list.as_array().into_iter().flatten().any(|db| {
                db.get("iox::database").and_then(Value::as_str) == Some(self.database.as_str())
            });
            return if found {
                Ok(())
            } else {
                Err(self.database_not_found())
            };
        }
        self.query_json(&format!(
            "SHOW RETENTION POLICIES ON {}",
            quote_ident(&self.database)
        ))
        .await
        .map(|_| ())
    }

    /// Fails with [`InfluxError::ReadOnly`] unless the credentials may write to
    /// the database. Probes with an empty write, which stores nothing. 3.x
    /// rejects an empty write (400) before it looks at permissions, and any
    /// write that passes stores a point, so there is no honest probe: on 3.x
    /// this checks nothing and a missing permission shows at the first write.
    pub async fn check_writable(&self) -> Result<(), InfluxError> {
        if self.generation == Generation::V3 {
            tracing::debug!("InfluxDB 3: no write-permission probe");
            return Ok(());
        }
        match self.write_lines(Bytes::new()).await {
            Err(InfluxError::Unauthorized {
                status: 403,
                message,
                ..
            }) => Err(InfluxError::ReadOnly {
                url: self.url.clone(),
                database: self.database.clone(),
                message,
            }),
            other => other,
        }
    }

    /// Time of the earliest raw trade of `symbol`, if any.
    pub async fn first_trade_time(&self, symbol: &str) -> Result<Option<i64>, InfluxError> {
        self.first_time_from(None, symbol, i64::MIN).await
    }

    /// The InfluxQL source holding `symbol`'s points in `stored`, the
    /// condition selecting them, and the field that is always there (price,
    /// or a candle's close). `None` if `symbol` is no instrument of the
    /// layout: it has no points anywhere.
    fn point_source(&self, stored: Stored, symbol: &str) -> Option<(String, String, String)> {
        let layout = self.layout();
        let names = [symbol];
        match stored {
            Stored::Trades => {
                let group = trade_groups(layout, &names).pop()?;
                let cond =
                    tags_condition(Dialect::InfluxQl, &layout.schema.symbol_tags, &group.rows)?;
                Some((
                    self.source_of(Stored::Trades, &group.measurement),
                    cond,
                    quote_ident(&layout.schema.price),
                ))
            }
            Stored::Candles(res) => {
                let rows = candle_rows(layout, &names);
                let cond = tags_condition(Dialect::InfluxQl, &layout.schema.candle_tags(), &rows)?;
                Some((self.candle_source(res), cond, quote_ident("close")))
            }
        }
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
        let Some((source, cond, field)) = self.point_source(stored, symbol) else {
            return Ok(None);
        };
        let time_cond = if from == i64::MIN {
            String::new()
        } else {
            format!(" AND time >= {from}")
        };
        let v = self
            .query_json(&format!(
                "SELECT {field} FROM {source} WHERE {}{time_cond} ORDER BY time ASC LIMIT 1",
                grouped(&cond)
            ))
            .await?;
        Ok(series_values(&v)
            .next()
            .and_then(|row| row.first().and_then(Value::as_i64)))
    }

    /// Time of the last raw trade of `symbol` strictly before `before`, if any.
    pub async fn last_trade_time_before(
        &self,
        symbol: &str,
        before: i64,
    ) -> Result<Option<i64>, InfluxError> {
        Ok(self
            .last_trade_before(symbol, before)
            .await?
            .map(|(t, _)| t))
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
    /// ([`lookback_windows`]).
    /// Either way every time before `before` is searched; the day candles only
    /// keep the scanned range near the answer.
    pub(crate) async fn last_point_before(
        &self,
        stored: Stored,
        symbol: &str,
        before: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        if self.generation != Generation::V3 {
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
        let Some((source, cond, field)) = self.point_source(stored, symbol) else {
            return Ok(None);
        };
        let lower = from.map_or(String::new(), |f| format!(" AND time >= {f}"));
        let v = self
            .query_json(&format!(
                "SELECT {field} FROM {source} WHERE {}{lower} AND time < {to} ORDER BY time DESC LIMIT 1",
                grouped(&cond)
            ))
            .await?;
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

    /// Streams the raw trades of `symbol` in `[range.start, range.end)` in time
    /// order into `on_trade`; returns how many were read.
    pub async fn stream_trades(
        &self,
        symbol: &str,
        range: Range<i64>,
        on_trade: impl FnMut(Trade),
    ) -> Result<u64, InfluxError> {
        self.stream_trades_limited(symbol, range, None, on_trade)
            .await
    }

    /// Like [`InfluxClient::stream_trades`], stopping after `limit` trades.
    pub async fn stream_trades_limited(
        &self,
        symbol: &str,
        range: Range<i64>,
        limit: Option<u64>,
        mut on_trade: impl FnMut(Trade),
    ) -> Result<u64, InfluxError> {
        self.stream_trade_rows(&[symbol], false, range, limit, |_, t| {
            if let Ok(t) = t {
                on_trade(t);
            }
        })
        .await
    }

    /// Streams the rows of raw trades of `symbol` in `range`, each a trade or
    /// why it cannot make one, stopping after `limit` rows (`ohlcd schema`).
    pub async fn stream_trade_rows_of(
        &self,
        symbol: &str,
        range: Range<i64>,
        limit: Option<u64>,
        mut on_row: impl FnMut(Result<Trade, Skip>),
    ) -> Result<u64, InfluxError> {
        self.stream_trade_rows(&[symbol], false, range, limit, |_, row| on_row(row))
            .await
    }

    /// Streams the raw trades of every symbol in `symbols` in
    /// `[range.start, range.end)` with one query per measurement holding
    /// them, calling `on_row` with each row's symbol and its trade, or why it
    /// cannot make one. Over InfluxQL rows arrive ordered by time across the
    /// symbols of a measurement; over SQL (InfluxDB 3) in no particular order.
    pub async fn stream_trades_of(
        &self,
        symbols: &[String],
        range: Range<i64>,
        on_row: impl FnMut(&str, Result<Trade, Skip>),
    ) -> Result<u64, InfluxError> {
        if symbols.is_empty() {
            return Ok(0);
        }
        let symbols: Vec<&str> = symbols.iter().map(String::as_str).collect();
        self.stream_trade_rows(&symbols, true, range, None, on_row)
            .await
    }

    /// Streams the trades of `symbols`, one query per measurement holding
    /// them: on InfluxDB 3 with SQL through its native `/api/v3/query_sql`
    /// (CSV), which pulls the same rows 1.6–1.9× faster than its v1 `/query`
    /// (docs/influxdb.md, "Figures on InfluxDB 3"); elsewhere with InfluxQL. Without a `limit`,
    /// SQL rows come in no particular order (the aggregation does not need
    /// one; sorting would cost the server time).
    async fn stream_trade_rows(
        &self,
        symbols: &[&str],
        with_symbol: bool,
        range: Range<i64>,
        limit: Option<u64>,
        mut on_row: impl FnMut(&str, Result<Trade, Skip>),
    ) -> Result<u64, InfluxError> {
        let layout = self.layout.clone();
        let mut n = 0;
        for group in trade_groups(&layout, symbols) {
            n += self
                .stream_trade_group(
                    &layout,
                    &group,
                    with_symbol,
                    range.clone(),
                    limit,
                    &mut on_row,
                )
                .await?;
        }
        Ok(n)
    }

    /// [`InfluxClient::stream_trade_rows`] of the instruments of one
    /// measurement. Names of instruments of several parts are built per row
    /// in one reused buffer.
    async fn stream_trade_group(
        &self,
        layout: &Layout,
        group: &TradeGroup<'_>,
        with_symbol: bool,
        range: Range<i64>,
        limit: Option<u64>,
        on_row: &mut impl FnMut(&str, Result<Trade, Skip>),
    ) -> Result<u64, InfluxError> {
        let sql = self.generation == Generation::V3;
        let dialect = if sql { Dialect::Sql } else { Dialect::InfluxQl };
        let tags = &layout.schema.symbol_tags;
        let Some(cond) = tags_condition(dialect, tags, &group.rows) else {
            return Ok(0);
        };
        let (columns, names) = trade_columns(dialect, layout, with_symbol);
        let q = if sql {
            let order = match &layout.schema.id {
                Some(id) => format!("time, {}", ident(Dialect::Sql, id)),
                None => "time".to_string(),
            };
            let limit = limit
                .map(|n| format!(" ORDER BY {order} LIMIT {n}"))
                .unwrap_or_default();
            format!(
                "SELECT CAST(time AS BIGINT) AS time, {columns} FROM {} WHERE {} AND time >= to_timestamp_nanos({}) AND time < to_timestamp_nanos({}){limit}",
                ident(Dialect::Sql, &group.measurement),
                grouped(&cond),
                range.start,
                range.end
            )
        } else {
            let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
            format!(
                "SELECT {columns} FROM {} WHERE {} AND time >= {} AND time < {}{limit}",
                self.source_of(Stored::Trades, &group.measurement),
                grouped(&cond),
                range.start,
                range.end
            )
        };
        let has_id = layout.schema.id.is_some();
        let has_side = layout.schema.side.is_some();
        // The name is the row's one tag, or its parts joined in `name`.
        let borrowed = group.exchange.is_none() && tags.len() == 1;
        let mut name = String::with_capacity(48);
        let mut idx: Option<TradeIndex> = None;
        let on_row = |cols: &super::decode::Columns, row: super::decode::Row<'_>| {
            let i = match &idx {
                Some(i) => i,
                None => {
                    // price, amount, [id], [side], tags… as trade_columns lists them.
                    let mut at = names.iter().map(|n| cols.index(n));
                    let mut next = || at.next().expect("a column per name");
                    let price = next()?;
                    let amount = next()?;
                    let id = if has_id { Some(next()?) } else { None };
                    let side = if has_side { Some(next()?) } else { None };
                    let tags = if with_symbol {
                        (0..tags.len())
                            .map(|_| next())
                            .collect::<Result<Vec<_>, _>>()?
                    } else {
                        Vec::new()
                    };
                    idx.insert(TradeIndex {
                        time: cols.index("time")?,
                        price,
                        amount,
                        id,
                        side,
                        tags,
                    })
                }
            };
            let symbol: &str = if !with_symbol {
                ""
            } else if borrowed {
                row.symbol(i.tags[0])?
            } else {
                name.clear();
                if let Some(exchange) = group.exchange {
                    name.push_str(exchange);
                    name.push(crate::symbol::NAME_SEPARATOR);
                }
                for (k, t) in i.tags.iter().enumerate() {
                    if k > 0 {
                        name.push(crate::symbol::NAME_SEPARATOR);
                    }
                    name.push_str(row.symbol(*t)?);
                }
                &name
            };
            let time = row.i64(i.time, "time")?;
            let trade = trade_of_row(&row, i, layout).map(|(price, amount, side)| Trade {
                time,
                // A row without an id orders by time alone (ties: as read).
                id: i.id.map_or(0, |at| row.order_key(at)),
                price,
                amount,
                side,
            });
            on_row(symbol, trade.map_err(|reason| Skip { time, reason }));
            Ok(())
        };
        if sql {
            self.stream_sql_csv(&q, on_row).await
        } else {
            self.stream_rows(&q, on_row).await
        }
    }

    /// Streams stored candles of `res` for `symbol` in `[range.start, range.end)`.
    pub async fn stream_candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
        mut on_candle: impl FnMut(Candle),
    ) -> Result<u64, InfluxError> {
        let Some(cond) = self.candle_condition(&[symbol]) else {
            return Ok(0);
        };
        self.stream_candle_rows(res, &cond, false, range, |_, c| on_candle(c))
            .await
    }

    /// The InfluxQL condition selecting the candles of `symbols` (`None`:
    /// none of them is an instrument of the layout).
    fn candle_condition(&self, symbols: &[impl AsRef<str>]) -> Option<String> {
        let layout = self.layout();
        tags_condition(
            Dialect::InfluxQl,
            &layout.schema.candle_tags(),
            &candle_rows(layout, symbols),
        )
    }

    /// Streams stored candles of `res` of every symbol in `symbols` in
    /// `[range.start, range.end)` with one query (on InfluxDB 3, one query per
    /// symbol), with each candle's symbol.
    pub async fn stream_candles_of(
        &self,
        res: Resolution,
        symbols: &[String],
        range: Range<i64>,
        mut on_candle: impl FnMut(&str, Candle),
    ) -> Result<u64, InfluxError> {
        if symbols.is_empty() {
            return Ok(0);
        }
        if self.generation == Generation::V3 && symbols.len() > 1 {
            // InfluxDB 3 (the build tested) answers a query over several
            // series with older versions of overwritten points, where one
            // series per query reads the last write (docs/influxdb.md, "InfluxDB 3:
            // overwrites"). Candles are overwritten by repairs: one query each.
            let mut n = 0;
            for symbol in symbols {
                let Some(cond) = self.candle_condition(&[symbol]) else {
                    continue;
                };
                n += self
                    .stream_candle_rows(res, &cond, false, range.clone(), |_, c| {
                        on_candle(symbol, c)
                    })
                    .await?;
            }
            return Ok(n);
        }
        let Some(cond) = self.candle_condition(symbols) else {
            return Ok(0);
        };
        self.stream_candle_rows(res, &cond, true, range, on_candle)
            .await
    }

    async fn stream_candle_rows(
        &self,
        res: Resolution,
        cond: &str,
        with_symbol: bool,
        range: Range<i64>,
        mut on_candle: impl FnMut(&str, Candle),
    ) -> Result<u64, InfluxError> {
        let tags = self.layout().schema.candle_tags();
        let tag_cols = if with_symbol {
            format!(", {}", group_by(Dialect::InfluxQl, &tags))
        } else {
            String::new()
        };
        let q = format!(
            "SELECT open, high, low, close, volume, quote_volume, trades, buy_volume{tag_cols} FROM {} WHERE {} AND time >= {} AND time < {}",
            self.candle_source(res),
            grouped(cond),
            range.start,
            range.end
        );
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
        self.stream_rows(&q, |cols, row| {
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
        let (order, lower) = match (newest, from) {
            (true, _) => ("DESC", String::new()),
            (false, Some(from)) => ("ASC", format!(" AND time >= {from}")),
            (false, None) => ("ASC", String::new()),
        };
        for group in trade_groups(&layout, symbols) {
            let Some(cond) = tags_condition(Dialect::InfluxQl, tags, &group.rows) else {
                continue;
            };
            // LIMIT applies per series: one row per symbol, read from the start of
            // each series' index rather than by scanning it.
            let v = self
                .query_json(&format!(
                    "SELECT {} FROM {} WHERE {}{lower} GROUP BY {} ORDER BY time {order} LIMIT 1",
                    quote_ident(&layout.schema.price),
                    self.source_of(Stored::Trades, &group.measurement),
                    grouped(&cond),
                    group_by(Dialect::InfluxQl, tags)
                ))
                .await?;
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

    /// Per symbol of `symbols`, how many rows of trades it has in the range
    /// (one query per measurement; symbols without any are absent).
    pub async fn count_trades_of(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<std::collections::HashMap<String, u64>, InfluxError> {
        let mut out = std::collections::HashMap::new();
        let layout = self.layout.clone();
        let tags = &layout.schema.symbol_tags;
        for group in trade_groups(&layout, symbols) {
            let Some(cond) = tags_condition(Dialect::InfluxQl, tags, &group.rows) else {
                continue;
            };
            let v = self
                .query_json(&format!(
                    "SELECT count({}) FROM {} WHERE {} AND time >= {} AND time < {} GROUP BY {}",
                    quote_ident(&layout.schema.price),
                    self.source_of(Stored::Trades, &group.measurement),
                    grouped(&cond),
                    range.start,
                    range.end,
                    group_by(Dialect::InfluxQl, tags)
                ))
                .await?;
            for (symbol, row) in tagged_values(&v, group.exchange, tags) {
                if let Some(n) = row.get(1).and_then(Value::as_u64).filter(|n| *n > 0) {
                    *out.entry(symbol).or_insert(0) += n;
                }
            }
        }
        Ok(out)
    }

    /// Per symbol of `symbols`, how many trades each minute of the range holds
    /// (one query per measurement; minutes without trades are absent): exactly
    /// the rows reading makes trades of ([`valid_trade_condition`]). InfluxDB
    /// answers with one number per minute instead of every row. InfluxDB 3 is
    /// asked in SQL: its InfluxQL answers a disjunction of boolean comparisons
    /// wrongly (`b = true OR b = false` left out rows holding `false`, the
    /// build tested). Where prices or amounts are text, only reading can
    /// tell a number: the rows are read and counted here.
    pub async fn count_minutes_of(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<std::collections::HashMap<String, Vec<(i64, u64)>>, InfluxError> {
        let mut out: std::collections::HashMap<String, Vec<(i64, u64)>> = Default::default();
        if symbols.is_empty() {
            return Ok(out);
        }
        let layout = self.layout.clone();
        let sql = self.generation == Generation::V3;
        let dialect = if sql { Dialect::Sql } else { Dialect::InfluxQl };
        let Some(valid) = valid_trade_condition(dialect, &layout) else {
            return self.count_minutes_by_reading(symbols, range).await;
        };
        let tags = &layout.schema.symbol_tags;
        let mut add = |symbol: String, minute: i64, n: u64| {
            if n > 0 {
                out.entry(symbol).or_default().push((minute, n));
            }
        };
        for group in trade_groups(&layout, symbols) {
            let Some(cond) = tags_condition(dialect, tags, &group.rows) else {
                continue;
            };
            if sql {
                let q = format!(
                    "SELECT {}, CAST(date_bin(INTERVAL '1 minute', time, TIMESTAMP '1970-01-01T00:00:00Z') AS BIGINT) AS minute, count(*) AS n FROM {} WHERE {} AND {valid} AND time >= to_timestamp_nanos({}) AND time < to_timestamp_nanos({}) GROUP BY {}",
                    group_by(Dialect::Sql, tags),
                    ident(Dialect::Sql, &group.measurement),
                    grouped(&cond),
                    range.start,
                    range.end,
                    (1..=tags.len() + 1)
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let mut idx: Option<(Vec<usize>, usize, usize)> = None;
                let mut rows: Vec<(String, i64, u64)> = Vec::new();
                self.stream_sql_csv(&q, |cols, row| {
                    let (t, m, n) = match &idx {
                        Some(i) => i,
                        None => idx.insert((
                            tags.iter()
                                .map(|t| cols.index(t))
                                .collect::<Result<Vec<_>, _>>()?,
                            cols.index("minute")?,
                            cols.index("n")?,
                        )),
                    };
                    let mut name = String::new();
                    if let Some(exchange) = group.exchange {
                        name.push_str(exchange);
                        name.push(crate::symbol::NAME_SEPARATOR);
                    }
                    for (k, at) in t.iter().enumerate() {
                        if k > 0 {
                            name.push(crate::symbol::NAME_SEPARATOR);
                        }
                        name.push_str(row.symbol(*at)?);
                    }
                    rows.push((
                        name,
                        row.i64(*m, "minute")?,
                        row.i64(*n, "n")?.max(0) as u64,
                    ));
                    Ok(())
                })
                .await?;
                for (symbol, minute, n) in rows {
                    add(symbol, minute, n);
                }
                continue;
            }
            let v = self
                .query_json(&format!(
                    "SELECT count({}) FROM {} WHERE {} AND {valid} AND time >= {} AND time < {} GROUP BY time(1m), {} fill(none)",
                    quote_ident(&layout.schema.price),
                    self.source_of(Stored::Trades, &group.measurement),
                    grouped(&cond),
                    range.start,
                    range.end,
                    group_by(Dialect::InfluxQl, tags)
                ))
                .await?;
            for (symbol, row) in tagged_values(&v, group.exchange, tags) {
                if let (Some(minute), Some(n)) = (
                    row.first().and_then(Value::as_i64),
                    row.get(1).and_then(Value::as_u64),
                ) {
                    add(symbol, minute, n);
                }
            }
        }
        // Several series of one symbol (other tags, like the POC's `side`)
        // count the same minute apart: add them up, in time order.
        for minutes in out.values_mut() {
            minutes.sort_unstable();
            minutes.dedup_by(|later, earlier| {
                if later.0 == earlier.0 {
                    earlier.1 += later.1;
                    true
                } else {
                    false
                }
            });
        }
        Ok(out)
    }

    /// [`InfluxClient::count_minutes_of`] by reading every row: for prices
    /// or amounts stored as text, which only reading parses.
    async fn count_minutes_by_reading(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<std::collections::HashMap<String, Vec<(i64, u64)>>, InfluxError> {
        let mut counts: std::collections::HashMap<String, std::collections::BTreeMap<i64, u64>> =
            Default::default();
        let minute = Resolution::M1;
        self.stream_trades_of(symbols, range, |symbol, row| {
            let Ok(trade) = row else {
                return;
            };
            let minutes = match counts.get_mut(symbol) {
                Some(m) => m,
                None => counts.entry(symbol.to_string()).or_default(),
            };
            *minutes.entry(minute.window_start(trade.time)).or_insert(0) += 1;
        })
        .await?;
        Ok(counts
            .into_iter()
            .map(|(s, m)| (s, m.into_iter().collect()))
            .collect())
    }

    /// Reads stored candles into a vector (candle counts per chunk are small).
    pub async fn read_candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<Vec<Candle>, InfluxError> {
        let mut out = Vec::new();
        self.stream_candles(res, symbol, range, |c| out.push(c))
            .await?;
        Ok(out)
    }

    /// Reads all raw trades in a range into memory (tests and small ranges only).
    pub async fn read_trades(
        &self,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<Vec<Trade>, InfluxError> {
        let mut out = Vec::new();
        self.stream_trades(symbol, range, |t| out.push(t)).await?;
        Ok(out)
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
        if self.generation == Generation::V3 {
            return Err(InfluxError::CannotDelete {
                measurement,
                symbol: symbol.to_string(),
                from: crate::times::to_rfc3339(range.start),
                to: crate::times::to_rfc3339(range.end),
            });
        }
        let Some(cond) = self.candle_condition(&[symbol]) else {
            return Ok(());
        };
        // DELETE takes no retention policy ("retention policy not supported")
        // and deletes from every one: the measurement names a resolution alone.
        self.query_json(&format!(
            "DELETE FROM {} WHERE {cond} AND time >= {} AND time < {}",
            quote_ident(&measurement),
            range.start,
            range.end
        ))
        .await
        .map(|_| ())
    }
}

/// Where the columns of a trade row are (found once per read from its header).
struct TradeIndex {
    time: usize,
    price: usize,
    amount: usize,
    id: Option<usize>,
    side: Option<usize>,
    tags: Vec<usize>,
}

/// Price, amount and side of a trade row, or why the row cannot make a
/// trade. The one row rule of every read of trades; [`valid_trade_condition`]
/// says the same to InfluxDB, so that counting trades there agrees with
/// reading them.
fn trade_of_row(
    row: &super::decode::Row<'_>,
    at: &TradeIndex,
    layout: &Layout,
) -> Result<(f64, f64, Option<Side>), SkipReason> {
    let price = row.number(at.price).ok_or(SkipReason::MissingPrice)?;
    let amount = row.number(at.amount).ok_or(SkipReason::MissingAmount)?;
    let price = check_value(price.map_err(|()| SkipReason::NotANumber)?)?;
    let amount = check_value(amount.map_err(|()| SkipReason::NotANumber)?)?;
    let side = layout.side_of_bytes(at.side.and_then(|i| row.text(i)))?;
    Ok((price, amount, side))
}

/// `cond` ready to be joined to others with `AND`: in parentheses when it is
/// a disjunction.
fn grouped(cond: &str) -> std::borrow::Cow<'_, str> {
    if cond.contains(" OR ") {
        format!("({cond})").into()
    } else {
        cond.into()
    }
}

/// `(name, row)` of every series of a `GROUP BY` over `tags`: the name built
/// from the series' tags (after `exchange`, when the measurement names one).
fn tagged_values<'v>(
    v: &'v Value,
    exchange: Option<&'v str>,
    tags: &'v [String],
) -> impl Iterator<Item = (String, &'v Vec<Value>)> {
    v.get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |s| {
            let series_tags = s.get("tags")?;
            let mut name = String::new();
            if let Some(exchange) = exchange {
                name.push_str(exchange);
                name.push(crate::symbol::NAME_SEPARATOR);
            }
            for (k, tag) in tags.iter().enumerate() {
                if k > 0 {
                    name.push(crate::symbol::NAME_SEPARATOR);
                }
                name.push_str(series_tags.get(tag)?.as_str()?);
            }
            let values = s.get("values")?.as_array()?;
            Some(
                values
                    .iter()
                    .filter_map(Value::as_array)
                    .map(move |row| (name.clone(), row)),
            )
        })
        .flatten()
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

/// Rows of every series in one statement's JSON result.
fn series_values(v: &Value) -> impl Iterator<Item = &Vec<Value>> {
    v.get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("values").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_array)
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

    #[test]
    fn the_count_of_trades_bounds_values_as_reading_does() {
        let bound = format!("{:.0}", crate::candle::MAX_TRADE_VALUE);
        let own = crate::schema::Layout::default();
        for dialect in [Dialect::InfluxQl, Dialect::Sql] {
            let cond = valid_trade_condition(dialect, &own).unwrap();
            assert_eq!(cond.matches(&format!("<= {bound} ")).count(), 2, "{cond}");
        }
    }

    #[test]
    fn a_disjunction_is_parenthesized_before_it_is_joined() {
        assert_eq!(grouped(r#""symbol" = 'A'"#), r#""symbol" = 'A'"#);
        assert_eq!(
            grouped(r#"("a" = 'x' AND "b" = 'y') OR ("a" = 'z' AND "b" = 'y')"#),
            r#"(("a" = 'x' AND "b" = 'y') OR ("a" = 'z' AND "b" = 'y'))"#
        );
    }

    #[test]
    fn literals_and_identifiers_cannot_break_out_of_their_quotes() {
        assert_eq!(quote_literal("BTC'USD"), r"'BTC\'USD'");
        assert_eq!(quote_literal(r"a\' OR 1=1"), r"'a\\\' OR 1=1'");
        assert_eq!(quote_ident("my\"db"), r#""my\"db""#);
    }
}

//! The InfluxQL the engine and the datafeed send: symbol discovery, first and
//! last trades, counts, streamed reads of trades and candles (one symbol or a
//! set), database checks, deletes. Every literal and identifier is quoted here.

use std::ops::Range;

use bytes::Bytes;
use serde_json::Value;

use super::{Generation, InfluxClient, InfluxError, Stored};
use crate::candle::{Candle, Resolution, Side, Skip, SkipReason, Trade, check_value};

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

    /// Symbols that have raw trades (`SHOW TAG VALUES`), sorted. 3.x answers
    /// it only for the last 24 hours unless the statement has a time condition.
    pub async fn symbols(&self) -> Result<Vec<String>, InfluxError> {
        let all_time = if self.generation == Generation::V3 {
            " WHERE time >= 0"
        } else {
            ""
        };
        let v = self
            .query_json(&format!(
                "SHOW TAG VALUES FROM {} WITH KEY = \"symbol\"{all_time}",
                self.source(Stored::Trades)
            ))
            .await?;
        let mut out: Vec<String> = series_values(&v)
            .filter_map(|row| row.get(1).and_then(Value::as_str).map(str::to_string))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

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
        let (source, field) = match res {
            None => (self.source(Stored::Trades), "price"),
            Some(r) => (self.source(Stored::Candles(r)), "close"),
        };
        let time_cond = if from == i64::MIN {
            String::new()
        } else {
            format!(" AND time >= {from}")
        };
        let v = self
            .query_json(&format!(
                "SELECT {field} FROM {} WHERE symbol = {}{time_cond} ORDER BY time ASC LIMIT 1",
                source,
                quote_literal(symbol)
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

    /// Time and price of the last raw trade of `symbol` strictly before `before`.
    pub async fn last_trade_before(
        &self,
        symbol: &str,
        before: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        self.last_point_before(Stored::Trades, "price", symbol, before)
            .await
    }

    /// Time and `field` of the last point of `symbol` in `stored` strictly
    /// before `before`.
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
        field: &str,
        symbol: &str,
        before: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        if self.generation != Generation::V3 {
            return self
                .last_point_in(stored, field, symbol, None, before)
                .await;
        }
        let days = Stored::Candles(Resolution::D1);
        if stored == days {
            return self
                .last_point_looking_back(stored, field, symbol, before)
                .await;
        }
        let mut below = before;
        if let Some((day, _)) = self
            .last_point_looking_back(days, "close", symbol, before)
            .await?
        {
            if let Some(found) = self
                .last_point_in(stored, field, symbol, Some(day), before)
                .await?
            {
                return Ok(Some(found));
            }
            below = day;
        }
        self.last_point_looking_back(stored, field, symbol, below)
            .await
    }

    /// [`InfluxClient::last_point_before`] through the windows of
    /// [`lookback_windows`], newest first, stopping at the first that holds a
    /// point: the scanned range follows the gap to that point, not the age of
    /// the data.
    async fn last_point_looking_back(
        &self,
        stored: Stored,
        field: &str,
        symbol: &str,
        before: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        for (from, to) in lookback_windows(before, now) {
            if let Some(found) = self.last_point_in(stored, field, symbol, from, to).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Time and `field` of the last point of `symbol` in `stored` in
    /// `[from, to)` (`from` `None`: no lower bound), one query.
    async fn last_point_in(
        &self,
        stored: Stored,
        field: &str,
        symbol: &str,
        from: Option<i64>,
        to: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        let lower = from.map_or(String::new(), |f| format!(" AND time >= {f}"));
        let v = self
            .query_json(&format!(
                "SELECT {} FROM {} WHERE symbol = {}{lower} AND time < {to} ORDER BY time DESC LIMIT 1",
                quote_ident(field),
                self.source(stored),
                quote_literal(symbol)
            ))
            .await?;
        Ok(series_values(&v).next().and_then(|row| {
            let time = row.first()?.as_i64()?;
            Some((time, row.get(1).and_then(Value::as_f64).unwrap_or(f64::NAN)))
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

    /// Streams the raw trades of every symbol in `symbols` in
    /// `[range.start, range.end)` with one query, calling `on_row` with each
    /// row's symbol and its trade, or why it cannot make one. Over InfluxQL
    /// rows arrive ordered by time across symbols; over SQL (InfluxDB 3) in no
    /// particular order.
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

    /// Streams the trades of `symbols`: on InfluxDB 3 with SQL through its
    /// native `/api/v3/query_sql` (CSV), which pulls the same rows 1.6–1.9×
    /// faster than its v1 `/query` (README, "3.x figures"); elsewhere with
    /// InfluxQL. Without a `limit`, SQL rows come in no particular order (the
    /// aggregation does not need one; sorting would cost the server time).
    async fn stream_trade_rows(
        &self,
        symbols: &[&str],
        with_symbol: bool,
        range: Range<i64>,
        limit: Option<u64>,
        mut on_row: impl FnMut(&str, Result<Trade, Skip>),
    ) -> Result<u64, InfluxError> {
        let symbol_col = if with_symbol { ", symbol" } else { "" };
        let sql = self.generation == Generation::V3;
        let q = if sql {
            let limit = limit
                .map(|n| format!(" ORDER BY time, id LIMIT {n}"))
                .unwrap_or_default();
            format!(
                "SELECT CAST(time AS BIGINT) AS time, price, amount, id, side{symbol_col} FROM {} WHERE {} AND time >= to_timestamp_nanos({}) AND time < to_timestamp_nanos({}){limit}",
                self.source(Stored::Trades),
                sql_symbol_condition(symbols),
                range.start,
                range.end
            )
        } else {
            let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
            let cond = match symbols {
                [one] => format!("symbol = {}", quote_literal(one)),
                set => symbol_set_condition(set),
            };
            format!(
                "SELECT price, amount, id, side{symbol_col} FROM {} WHERE {cond} AND time >= {} AND time < {}{limit}",
                self.source(Stored::Trades),
                range.start,
                range.end
            )
        };
        let mut idx: Option<[usize; 6]> = None;
        let on_row = |cols: &super::decode::Columns, row: super::decode::Row<'_>| {
            let [t, p, a, id, side, sym] = match idx {
                Some(i) => i,
                None => *idx.insert([
                    cols.index("time")?,
                    cols.index("price")?,
                    cols.index("amount")?,
                    cols.index("id")?,
                    cols.index("side")?,
                    if with_symbol {
                        cols.index("symbol")?
                    } else {
                        usize::MAX
                    },
                ]),
            };
            let symbol = row.symbol(sym)?;
            let time = row.i64(t, "time")?;
            let trade = trade_of_row(&row, p, a, side).map(|(price, amount, side)| Trade {
                time,
                // A row without an id orders by time alone (ties: as read).
                id: row.opt_i64(id).unwrap_or(0),
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
        let cond = format!("symbol = {}", quote_literal(symbol));
        self.stream_candle_rows(res, &cond, false, range, |_, c| on_candle(c))
            .await
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
            // series per query reads the last write (README, "InfluxDB 3:
            // overwrites"). Candles are overwritten by repairs: one query each.
            let mut n = 0;
            for symbol in symbols {
                let cond = format!("symbol = {}", quote_literal(symbol));
                n += self
                    .stream_candle_rows(res, &cond, false, range.clone(), |_, c| {
                        on_candle(symbol, c)
                    })
                    .await?;
            }
            return Ok(n);
        }
        self.stream_candle_rows(res, &symbol_set_condition(symbols), true, range, on_candle)
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
        let symbol_col = if with_symbol { ", symbol" } else { "" };
        let q = format!(
            "SELECT open, high, low, close, volume, quote_volume, trades, buy_volume{symbol_col} FROM {} WHERE {cond} AND time >= {} AND time < {}",
            self.source(Stored::Candles(res)),
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
        let mut idx: Option<[usize; 10]> = None;
        self.stream_rows(&q, |cols, row| {
            let i = match idx {
                Some(i) => i,
                None => {
                    let mut i = [usize::MAX; 10];
                    for (slot, name) in i.iter_mut().zip(names) {
                        *slot = cols.index(name)?;
                    }
                    if with_symbol {
                        i[9] = cols.index("symbol")?;
                    }
                    *idx.insert(i)
                }
            };
            on_candle(
                row.symbol(i[9])?,
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
    /// (one query; symbols without one are absent).
    pub async fn first_trades_of(
        &self,
        symbols: &[String],
        from: i64,
    ) -> Result<std::collections::HashMap<String, i64>, InfluxError> {
        if symbols.is_empty() {
            return Ok(Default::default());
        }
        // LIMIT applies per series: one row per symbol, read from the start of
        // each series' index rather than by scanning it.
        let v = self
            .query_json(&format!(
                "SELECT price FROM {} WHERE {} AND time >= {from} GROUP BY symbol ORDER BY time ASC LIMIT 1",
                self.source(Stored::Trades),
                symbol_set_condition(symbols)
            ))
            .await?;
        Ok(tagged_values(&v)
            .filter_map(|(symbol, row)| Some((symbol.to_string(), row.first()?.as_i64()?)))
            .collect())
    }

    /// Per symbol of `symbols`, how many trades it has in the range (one query;
    /// symbols without any are absent).
    pub async fn count_trades_of(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<std::collections::HashMap<String, u64>, InfluxError> {
        if symbols.is_empty() {
            return Ok(Default::default());
        }
        let v = self
            .query_json(&format!(
                "SELECT count(price) FROM {} WHERE {} AND time >= {} AND time < {} GROUP BY symbol",
                self.source(Stored::Trades),
                symbol_set_condition(symbols),
                range.start,
                range.end
            ))
            .await?;
        Ok(tagged_values(&v)
            .filter_map(|(symbol, row)| {
                let n = row.get(1)?.as_u64()?;
                (n > 0).then(|| (symbol.to_string(), n))
            })
            .collect())
    }

    /// Per symbol of `symbols`, how many trades each minute of the range holds
    /// (one query; minutes without trades are absent). InfluxDB answers with
    /// one number per minute instead of every row.
    pub async fn count_minutes_of(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<std::collections::HashMap<String, Vec<(i64, u64)>>, InfluxError> {
        let mut out: std::collections::HashMap<String, Vec<(i64, u64)>> = Default::default();
        if symbols.is_empty() {
            return Ok(out);
        }
        let v = self
            .query_json(&format!(
                "SELECT count(price) FROM {} WHERE {} AND {VALID_TRADE_CONDITION} AND time >= {} AND time < {} GROUP BY time(1m), symbol fill(none)",
                self.source(Stored::Trades),
                symbol_set_condition(symbols),
                range.start,
                range.end
            ))
            .await?;
        for (symbol, row) in tagged_values(&v) {
            let (Some(minute), Some(n)) = (
                row.first().and_then(Value::as_i64),
                row.get(1).and_then(Value::as_u64),
            ) else {
                continue;
            };
            if n > 0 {
                out.entry(symbol.to_string()).or_default().push((minute, n));
            }
        }
        Ok(out)
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
        if self.generation == Generation::V3 {
            return Err(InfluxError::CannotDelete {
                measurement: res.measurement().to_string(),
                symbol: symbol.to_string(),
                from: crate::times::to_rfc3339(range.start),
                to: crate::times::to_rfc3339(range.end),
            });
        }
        // DELETE takes no retention policy ("retention policy not supported")
        // and deletes from every one: the measurement names a resolution alone.
        self.query_json(&format!(
            "DELETE FROM {} WHERE symbol = {} AND time >= {} AND time < {}",
            quote_ident(res.measurement()),
            quote_literal(symbol),
            range.start,
            range.end
        ))
        .await
        .map(|_| ())
    }
}

/// Price, amount and side of a trade row (columns `p`, `a`, `side`), or why
/// the row cannot make a trade. The one row rule of every read of trades.
fn trade_of_row(
    row: &super::decode::Row<'_>,
    p: usize,
    a: usize,
    side: usize,
) -> Result<(f64, f64, Side), SkipReason> {
    let price = row.number(p).ok_or(SkipReason::MissingPrice)?;
    let amount = row.number(a).ok_or(SkipReason::MissingAmount)?;
    let price = check_value(price.map_err(|()| SkipReason::NotANumber)?)?;
    let amount = check_value(amount.map_err(|()| SkipReason::NotANumber)?)?;
    let side = match row.bytes(side) {
        Some(b"buy") => Side::Buy,
        Some(b"sell") => Side::Sell,
        _ => return Err(SkipReason::UnknownSide),
    };
    Ok((price, amount, side))
}

/// The InfluxQL condition that selects exactly the rows [`trade_of_row`]
/// makes trades of, so that counting trades in InfluxDB agrees with reading
/// them (a row skipped when read must not count as a trade missing from its
/// candle). A text price compares false. InfluxQL has no exponent notation:
/// the bound is spelled out.
pub const VALID_TRADE_CONDITION: &str = "price > 0 AND price <= 1000000000000000 AND amount > 0 AND amount <= 1000000000000000 AND (side = 'buy' OR side = 'sell')";

/// An InfluxQL condition selecting a set of symbols: `symbol =~ /^(?:A|B)$/`.
/// Symbols are validated (`[A-Za-z0-9._:-]`) before they reach here; every
/// character that means something in a regex is escaped all the same.
pub fn symbol_set_condition(symbols: &[impl AsRef<str>]) -> String {
    let mut alternatives = String::new();
    for (i, s) in symbols.iter().map(AsRef::as_ref).enumerate() {
        if i > 0 {
            alternatives.push('|');
        }
        for ch in s.chars() {
            if !ch.is_ascii_alphanumeric() {
                alternatives.push('\\');
            }
            alternatives.push(ch);
        }
    }
    format!("symbol =~ /^(?:{alternatives})$/")
}

/// An SQL condition selecting a set of symbols: `symbol IN ('A', 'B')`
/// (`symbol = 'A'` for one), quotes doubled as SQL escapes them.
pub fn sql_symbol_condition(symbols: &[&str]) -> String {
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    match symbols {
        [one] => format!("symbol = {}", literal(one)),
        set => format!(
            "symbol IN ({})",
            set.iter()
                .map(|s| literal(s))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `(symbol tag, row)` of every series of a `GROUP BY symbol` result.
fn tagged_values(v: &Value) -> impl Iterator<Item = (&str, &Vec<Value>)> {
    v.get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let symbol = s.get("tags")?.get("symbol")?.as_str()?;
            let values = s.get("values")?.as_array()?;
            Some(
                values
                    .iter()
                    .filter_map(Value::as_array)
                    .map(move |row| (symbol, row)),
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
        assert_eq!(
            VALID_TRADE_CONDITION
                .matches(&format!("<= {bound} "))
                .count(),
            2
        );
    }

    #[test]
    fn literals_and_identifiers_cannot_break_out_of_their_quotes() {
        assert_eq!(quote_literal("BTC'USD"), r"'BTC\'USD'");
        assert_eq!(quote_literal(r"a\' OR 1=1"), r"'a\\\' OR 1=1'");
        assert_eq!(quote_ident("my\"db"), r#""my\"db""#);
        assert_eq!(sql_symbol_condition(&["BTC'USD"]), "symbol = 'BTC''USD'");
        assert_eq!(
            sql_symbol_condition(&["A", "B'); DROP"]),
            "symbol IN ('A', 'B''); DROP')"
        );
    }
}

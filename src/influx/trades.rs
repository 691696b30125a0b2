//! Reading raw trades: streamed, one symbol or a set with one query per
//! measurement (InfluxQL, or SQL on InfluxDB 3), each row made a trade by
//! one rule (`trade_of_row`) or skipped with its reason; and counting them,
//! per symbol or per minute, by the server where it can count what reading
//! would make trades of.

use std::ops::Range;

use serde_json::Value;

use super::layout::{Dialect, TradeGroup, trade_groups, valid_trade_condition};
use super::query::tagged_values;
use super::{InfluxClient, InfluxError};
use crate::candle::{Resolution, Side, Skip, SkipReason, Trade, check_value};
use crate::schema::layout::Layout;

/// A read of raw trades: which instruments, which times, how many rows at most.
#[derive(Debug, Clone)]
pub struct TradeRead<'a, S = String> {
    /// The instruments, by name; one instrument is a slice of one.
    pub symbols: &'a [S],
    /// `[start, end)`, nanoseconds.
    pub range: Range<i64>,
    /// At most this many rows in all (`None`: every row), the earliest first.
    pub limit: Option<u64>,
}

impl<'a, S: AsRef<str>> TradeRead<'a, S> {
    /// Every row of trades of `symbols` in `range`.
    pub fn new(symbols: &'a [S], range: Range<i64>) -> Self {
        TradeRead {
            symbols,
            range,
            limit: None,
        }
    }

    /// The same read, stopping after `limit` rows.
    pub fn limit(self, limit: u64) -> Self {
        TradeRead {
            limit: Some(limit),
            ..self
        }
    }
}

/// A row callback of [`InfluxClient::read_trades`] for callers that want the
/// trades alone: rows that cannot make a trade are left out.
pub fn trades_only(mut on_trade: impl FnMut(Trade)) -> impl FnMut(&str, Result<Trade, Skip>) {
    move |_, row| {
        if let Ok(trade) = row {
            on_trade(trade);
        }
    }
}

impl InfluxClient {
    /// Streams the rows of raw trades `read` asks for into `on_row`, each
    /// with its instrument's name: a trade, or why the row cannot make one.
    /// Returns how many rows were read. One query per measurement holding
    /// the instruments: on InfluxDB 3 SQL through its native
    /// `/api/v3/query_sql` (CSV), which pulls the same rows 1.6–1.9× faster
    /// than its v1 `/query` (docs/influxdb.md, "Figures on InfluxDB 3");
    /// elsewhere InfluxQL, whose rows arrive ordered by time across the
    /// instruments of a measurement. Without a `limit`, SQL rows come in no
    /// particular order (the aggregation does not need one; sorting would
    /// cost the server time).
    pub async fn read_trades<S: AsRef<str>>(
        &self,
        read: TradeRead<'_, S>,
        mut on_row: impl FnMut(&str, Result<Trade, Skip>),
    ) -> Result<u64, InfluxError> {
        let layout = self.layout.clone();
        // Every row of a read of one instrument is that instrument's: its
        // tags need not be selected.
        let one = match read.symbols {
            [one] => Some(one.as_ref()),
            _ => None,
        };
        let mut n = 0;
        for group in trade_groups(&layout, read.symbols) {
            let limit = match read.limit {
                Some(limit) if n >= limit => break,
                Some(limit) => Some(limit - n),
                None => None,
            };
            n += self
                .read_trade_group(&layout, &group, one, read.range.clone(), limit, &mut on_row)
                .await?;
        }
        Ok(n)
    }

    /// [`InfluxClient::read_trades`] of the instruments of one measurement
    /// (`one`: the only instrument read). Names of instruments of several
    /// parts are built per row in one reused buffer.
    async fn read_trade_group(
        &self,
        layout: &Layout,
        group: &TradeGroup<'_>,
        one: Option<&str>,
        range: Range<i64>,
        limit: Option<u64>,
        on_row: &mut impl FnMut(&str, Result<Trade, Skip>),
    ) -> Result<u64, InfluxError> {
        let dialect = self.generation.bulk_dialect();
        let sql = dialect == Dialect::Sql;
        let tags = &layout.schema.symbol_tags;
        let with_symbol = one.is_none();
        let Some((q, names)) = self
            .names()
            .trade_read(dialect, group, with_symbol, &range, limit)
        else {
            return Ok(0);
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
            let symbol: &str = if let Some(one) = one {
                one
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
            let Some(q) = self.names().trade_count(&group, &range) else {
                continue;
            };
            let v = self.query_json(&q).await?;
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
        let dialect = self.generation.bulk_dialect();
        let sql = dialect == Dialect::Sql;
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
            let Some(q) = self.names().minute_count(dialect, &group, &valid, &range) else {
                continue;
            };
            if sql {
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
            let v = self.query_json(&q).await?;
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
        self.read_trades(TradeRead::new(symbols, range), |symbol, row| {
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

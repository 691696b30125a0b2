//! Query text, built by pure functions: the reads and counts of trades, the
//! reads and deletions of candles and the first and last points of an
//! instrument (`Names`, every name taken from the client's
//! [`Layout`] and [`Placement`]), and the
//! pieces they are built from and every JSON answer is read with: quoting
//! of literals and identifiers, a condition ready to be joined with `AND`,
//! the rows of a result's series; and the statements about the database
//! itself (creating it and its retention policies, listing fields, tag
//! values and series). The queries are sent from [`super::database`],
//! [`super::edges`], [`super::trades`], [`super::candles`],
//! [`super::discover`] and [`super::retention`].

use std::ops::Range;

use serde_json::Value;

use super::layout::{
    Dialect, TradeGroup, candle_rows, group_by, ident, tags_condition, trade_columns, trade_groups,
};
use super::retention::{Placement, Stored};
use crate::candle::Resolution;
use crate::schema::layout::Layout;

/// Escapes a string for an InfluxQL single-quoted literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Escapes an identifier for InfluxQL double quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `cond` ready to be joined to others with `AND`: in parentheses when it is
/// a disjunction.
pub(super) fn grouped(cond: &str) -> std::borrow::Cow<'_, str> {
    if cond.contains(" OR ") {
        format!("({cond})").into()
    } else {
        cond.into()
    }
}

/// `(name, row)` of every series of a `GROUP BY` over `tags`: the name built
/// from the series' tags (after `exchange`, when the measurement names one).
pub(super) fn tagged_values<'v>(
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

/// Rows of every series in one statement's JSON result.
pub(super) fn series_values(v: &Value) -> impl Iterator<Item = &Vec<Value>> {
    v.get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("values").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_array)
}

/// What query text is built from: the names of the user's schema
/// ([`Layout`]) and where each measurement lives (database and retention
/// policies, [`Placement`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Names<'a> {
    /// The user's schema as found on the server.
    pub layout: &'a Layout,
    /// The database.
    pub database: &'a str,
    /// Where each measurement lives.
    pub placement: &'a Placement,
}

/// Where the points of one instrument are, for the queries of its first and
/// last point: the InfluxQL source, the condition selecting the instrument
/// and the field every point has (price, or a candle's close).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PointSource {
    source: String,
    cond: String,
    field: String,
}

impl<'a> Names<'a> {
    /// The InfluxQL source of `measurement`, which holds `s`:
    /// `"db"."rp"."measurement"` when `s` has a policy of its own, else the
    /// bare measurement (the request's `rp`, or the database default, applies).
    pub(super) fn source(&self, s: Stored, measurement: &str) -> String {
        match self.placement.spec(s) {
            Some(p) => format!(
                "{}.{}.{}",
                quote_ident(self.database),
                quote_ident(&p.name),
                quote_ident(measurement)
            ),
            None => quote_ident(measurement),
        }
    }

    /// The InfluxQL source of candles of `res` (`schema.candles_measurement`).
    pub(super) fn candle_source(&self, res: Resolution) -> String {
        self.source(
            Stored::Candles(res),
            &self.layout.schema.candle_measurement(res),
        )
    }

    /// The InfluxQL condition selecting the candles of `symbols` (`None`:
    /// none of them is an instrument of the layout).
    pub(super) fn candle_condition(&self, symbols: &[impl AsRef<str>]) -> Option<String> {
        tags_condition(
            Dialect::InfluxQl,
            &self.layout.schema.candle_tags(),
            &candle_rows(self.layout, symbols),
        )
    }

    /// The read of the trades of `group` in `range` in `dialect` (SQL: for
    /// InfluxDB 3's `/api/v3/query_sql`), with the names its columns come
    /// back under ([`trade_columns`]; the symbol tags when `with_tags`); at
    /// most `limit` rows, the earliest first. `None`: `group` has no instrument.
    pub(super) fn trade_read(
        &self,
        dialect: Dialect,
        group: &TradeGroup<'_>,
        with_tags: bool,
        range: &Range<i64>,
        limit: Option<u64>,
    ) -> Option<(String, Vec<&'a str>)> {
        let layout = self.layout;
        let cond = tags_condition(dialect, &layout.schema.symbol_tags, &group.rows)?;
        let (columns, names) = trade_columns(dialect, layout, with_tags);
        let q = match dialect {
            Dialect::Sql => {
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
            }
            Dialect::InfluxQl => {
                let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
                format!(
                    "SELECT {columns} FROM {} WHERE {} AND time >= {} AND time < {}{limit}",
                    self.source(Stored::Trades, &group.measurement),
                    grouped(&cond),
                    range.start,
                    range.end
                )
            }
        };
        Some((q, names))
    }

    /// The count of rows of trades per instrument of `group` in `range`
    /// (InfluxQL, one series per instrument).
    pub(super) fn trade_count(&self, group: &TradeGroup<'_>, range: &Range<i64>) -> Option<String> {
        let tags = &self.layout.schema.symbol_tags;
        let cond = tags_condition(Dialect::InfluxQl, tags, &group.rows)?;
        Some(format!(
            "SELECT count({}) FROM {} WHERE {} AND time >= {} AND time < {} GROUP BY {}",
            quote_ident(&self.layout.schema.price),
            self.source(Stored::Trades, &group.measurement),
            grouped(&cond),
            range.start,
            range.end,
            group_by(Dialect::InfluxQl, tags)
        ))
    }

    /// The count of trades per instrument of `group` and minute of `range`
    /// of the rows `valid` selects ([`super::layout::valid_trade_condition`]):
    /// in SQL columns of the symbol tags, `minute` and `n`; in InfluxQL one
    /// series per instrument, minutes without trades left out.
    pub(super) fn minute_count(
        &self,
        dialect: Dialect,
        group: &TradeGroup<'_>,
        valid: &str,
        range: &Range<i64>,
    ) -> Option<String> {
        let tags = &self.layout.schema.symbol_tags;
        let cond = tags_condition(dialect, tags, &group.rows)?;
        Some(match dialect {
            Dialect::Sql => format!(
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
            ),
            Dialect::InfluxQl => format!(
                "SELECT count({}) FROM {} WHERE {} AND {valid} AND time >= {} AND time < {} GROUP BY time(1m), {} fill(none)",
                quote_ident(&self.layout.schema.price),
                self.source(Stored::Trades, &group.measurement),
                grouped(&cond),
                range.start,
                range.end,
                group_by(Dialect::InfluxQl, tags)
            ),
        })
    }

    /// The read of the candles of `res` of `symbols` starting in `range`
    /// (InfluxQL), with the candle tags when `with_tags`.
    pub(super) fn candle_read(
        &self,
        res: Resolution,
        symbols: &[impl AsRef<str>],
        with_tags: bool,
        range: &Range<i64>,
    ) -> Option<String> {
        let cond = self.candle_condition(symbols)?;
        let tag_cols = if with_tags {
            format!(
                ", {}",
                group_by(Dialect::InfluxQl, &self.layout.schema.candle_tags())
            )
        } else {
            String::new()
        };
        Some(format!(
            "SELECT open, high, low, close, volume, quote_volume, trades, buy_volume{tag_cols} FROM {} WHERE {} AND time >= {} AND time < {}",
            self.candle_source(res),
            grouped(&cond),
            range.start,
            range.end
        ))
    }

    /// The deletion of the candles of `res` of `symbol` starting in `range`
    /// (InfluxQL). `DELETE` takes no retention policy ("retention policy
    /// not supported") and deletes from every one: the measurement names a
    /// resolution alone.
    pub(super) fn candle_delete(
        &self,
        res: Resolution,
        symbol: &str,
        range: &Range<i64>,
    ) -> Option<String> {
        let cond = self.candle_condition(&[symbol])?;
        Some(format!(
            "DELETE FROM {} WHERE {cond} AND time >= {} AND time < {}",
            quote_ident(&self.layout.schema.candle_measurement(res)),
            range.start,
            range.end
        ))
    }

    /// Where `symbol`'s points in `stored` are. `None` if `symbol` is no
    /// instrument of the layout: it has no points anywhere.
    pub(super) fn point_source(&self, stored: Stored, symbol: &str) -> Option<PointSource> {
        let layout = self.layout;
        let names = [symbol];
        match stored {
            Stored::Trades => {
                let group = trade_groups(layout, &names).pop()?;
                let cond =
                    tags_condition(Dialect::InfluxQl, &layout.schema.symbol_tags, &group.rows)?;
                Some(PointSource {
                    source: self.source(Stored::Trades, &group.measurement),
                    cond,
                    field: quote_ident(&layout.schema.price),
                })
            }
            Stored::Candles(res) => Some(PointSource {
                source: self.candle_source(res),
                cond: self.candle_condition(&names)?,
                field: quote_ident("close"),
            }),
        }
    }

    /// Per instrument of `group`, its first trade at or after `from` (or,
    /// `newest`, its last trade): `LIMIT` applies per series, so each is read
    /// from the start (or end) of its series' index rather than by a scan.
    pub(super) fn trade_edges(
        &self,
        group: &TradeGroup<'_>,
        from: Option<i64>,
        newest: bool,
    ) -> Option<String> {
        let tags = &self.layout.schema.symbol_tags;
        let cond = tags_condition(Dialect::InfluxQl, tags, &group.rows)?;
        let (order, lower) = match (newest, from) {
            (true, _) => ("DESC", String::new()),
            (false, Some(from)) => ("ASC", format!(" AND time >= {from}")),
            (false, None) => ("ASC", String::new()),
        };
        Some(format!(
            "SELECT {} FROM {} WHERE {}{lower} GROUP BY {} ORDER BY time {order} LIMIT 1",
            quote_ident(&self.layout.schema.price),
            self.source(Stored::Trades, &group.measurement),
            grouped(&cond),
            group_by(Dialect::InfluxQl, tags)
        ))
    }
}

impl PointSource {
    /// The first point at or after `from` (`i64::MIN`: the first of all).
    pub(super) fn first_from(&self, from: i64) -> String {
        let time_cond = if from == i64::MIN {
            String::new()
        } else {
            format!(" AND time >= {from}")
        };
        format!(
            "SELECT {} FROM {} WHERE {}{time_cond} ORDER BY time ASC LIMIT 1",
            self.field,
            self.source,
            grouped(&self.cond)
        )
    }

    /// The last point in `[from, to)` (`from` `None`: no lower bound).
    pub(super) fn last_in(&self, from: Option<i64>, to: i64) -> String {
        let lower = from.map_or(String::new(), |f| format!(" AND time >= {f}"));
        format!(
            "SELECT {} FROM {} WHERE {}{lower} AND time < {to} ORDER BY time DESC LIMIT 1",
            self.field,
            self.source,
            grouped(&self.cond)
        )
    }
}

/// `CREATE DATABASE` (1.x and 2.x; 3.x has an endpoint of its own).
pub(super) fn create_database(database: &str) -> String {
    format!("CREATE DATABASE {}", quote_ident(database))
}

/// `SHOW RETENTION POLICIES` of `database`.
pub(super) fn show_retention_policies(database: &str) -> String {
    format!("SHOW RETENTION POLICIES ON {}", quote_ident(database))
}

/// A retention policy of `database` made, or with `alter` changed, to keep
/// data for `duration` in shards of `shard` (InfluxQL durations: `720h`).
pub(super) fn retention_policy(
    alter: bool,
    policy: &str,
    database: &str,
    duration: &str,
    shard: &str,
) -> String {
    let (verb, replication) = match alter {
        false => ("CREATE", " REPLICATION 1"),
        true => ("ALTER", ""),
    };
    format!(
        "{verb} RETENTION POLICY {} ON {} DURATION {duration}{replication} SHARD DURATION {shard}",
        quote_ident(policy),
        quote_ident(database),
    )
}

/// `SHOW FIELD KEYS` of every measurement, of those in `policy` when given.
pub(super) fn show_field_keys(database: &str, policy: Option<&str>) -> String {
    match policy {
        Some(p) => format!(
            "SHOW FIELD KEYS FROM {}.{}./.*/",
            quote_ident(database),
            quote_ident(p)
        ),
        None => "SHOW FIELD KEYS".to_string(),
    }
}

/// `SHOW TAG VALUES` of `tag` in `sources` (joined InfluxQL sources) where
/// every one of `conds` holds.
pub(super) fn show_tag_values(sources: &str, tag: &str, conds: &[&str]) -> String {
    let filter = match conds {
        [] => String::new(),
        _ => format!(" WHERE {}", conds.join(" AND ")),
    };
    format!(
        "SHOW TAG VALUES FROM {sources} WITH KEY = {}{filter}",
        quote_ident(tag)
    )
}

/// The condition that each of `tags` has its value in `values` (InfluxQL).
pub(super) fn tags_equal(tags: &[String], values: &[String]) -> String {
    tags.iter()
        .zip(values)
        .map(|(t, v)| format!("{} = {}", quote_ident(t), quote_literal(v)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `SHOW SERIES` of `sources` (InfluxQL sources).
pub(super) fn show_series(sources: &[String]) -> String {
    format!("SHOW SERIES FROM {}", sources.join(", "))
}

/// Every combination of `tags` in `measurement` (SQL, InfluxDB 3).
pub(super) fn distinct_tags(tags: &[String], measurement: &str) -> String {
    format!(
        "SELECT DISTINCT {} FROM {}",
        group_by(Dialect::Sql, tags),
        ident(Dialect::Sql, measurement)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::PolicySpec;
    use crate::schema::samples::binance;

    const MINUTE: i64 = 60_000_000_000;
    const VALID: &str = r#""price" > 0"#;

    fn names<'a>(layout: &'a Layout, placement: &'a Placement) -> Names<'a> {
        Names {
            layout,
            database: "db",
            placement,
        }
    }

    /// Raw trades in a policy of their own, candles where they always were.
    fn raw_policy() -> Placement {
        let mut specs: [Option<PolicySpec>; 7] = Default::default();
        specs[0] = Some(PolicySpec {
            name: "raw".into(),
            keep: None,
        });
        Placement::new(specs)
    }

    #[test]
    fn a_read_of_two_symbols_of_one_measurement_is_one_query_in_either_dialect() {
        let (own, placement) = (Layout::default(), Placement::default());
        let n = names(&own, &placement);
        let group = &trade_groups(&own, &["BTCUSD", "ETHUSD"])[0];
        let (q, columns) = n
            .trade_read(Dialect::InfluxQl, group, true, &(0..MINUTE), None)
            .unwrap();
        assert_eq!(
            q,
            r#"SELECT "price", "amount", "id", "side", "symbol" FROM "trades" WHERE "symbol" =~ /^(?:BTCUSD|ETHUSD)$/ AND time >= 0 AND time < 60000000000"#
        );
        assert_eq!(columns, ["price", "amount", "id", "side", "symbol"]);
        assert_eq!(
            n.trade_read(Dialect::Sql, group, true, &(0..MINUTE), None)
                .unwrap()
                .0,
            r#"SELECT CAST(time AS BIGINT) AS time, "price", "amount", "id", "side", "symbol" FROM "trades" WHERE "symbol" IN ('BTCUSD', 'ETHUSD') AND time >= to_timestamp_nanos(0) AND time < to_timestamp_nanos(60000000000)"#
        );
    }

    #[test]
    fn a_limited_read_of_one_symbol_selects_no_tags_and_orders_by_time_and_id() {
        let own = Layout::default();
        let placement = raw_policy();
        let n = names(&own, &placement);
        let group = &trade_groups(&own, &["BTCUSD"])[0];
        assert_eq!(
            n.trade_read(Dialect::InfluxQl, group, false, &(5..9), Some(3))
                .unwrap()
                .0,
            r#"SELECT "price", "amount", "id", "side" FROM "db"."raw"."trades" WHERE "symbol" = 'BTCUSD' AND time >= 5 AND time < 9 LIMIT 3"#
        );
        assert_eq!(
            n.trade_read(Dialect::Sql, group, false, &(5..9), Some(3))
                .unwrap()
                .0,
            r#"SELECT CAST(time AS BIGINT) AS time, "price", "amount", "id", "side" FROM "trades" WHERE "symbol" = 'BTCUSD' AND time >= to_timestamp_nanos(5) AND time < to_timestamp_nanos(9) ORDER BY time, "id" LIMIT 3"#
        );
    }

    #[test]
    fn trades_are_counted_per_symbol_and_per_minute_of_the_valid_rows() {
        let (b, placement) = (binance(), Placement::default());
        let n = names(&b, &placement);
        let group = &trade_groups(&b, &["binance:BTCUSDT", "kraken:XBTUSD"])[0];
        assert_eq!(
            n.trade_count(group, &(0..MINUTE)).unwrap(),
            r#"SELECT count("price") FROM "trades" WHERE (("exchange" = 'binance' AND "symbol" = 'BTCUSDT') OR ("exchange" = 'kraken' AND "symbol" = 'XBTUSD')) AND time >= 0 AND time < 60000000000 GROUP BY "exchange", "symbol""#
        );
        assert_eq!(
            n.minute_count(Dialect::InfluxQl, group, VALID, &(0..MINUTE))
                .unwrap(),
            r#"SELECT count("price") FROM "trades" WHERE (("exchange" = 'binance' AND "symbol" = 'BTCUSDT') OR ("exchange" = 'kraken' AND "symbol" = 'XBTUSD')) AND "price" > 0 AND time >= 0 AND time < 60000000000 GROUP BY time(1m), "exchange", "symbol" fill(none)"#
        );
        assert_eq!(
            n.minute_count(Dialect::Sql, group, VALID, &(0..MINUTE))
                .unwrap(),
            r#"SELECT "exchange", "symbol", CAST(date_bin(INTERVAL '1 minute', time, TIMESTAMP '1970-01-01T00:00:00Z') AS BIGINT) AS minute, count(*) AS n FROM "trades" WHERE (("exchange" = 'binance' AND "symbol" = 'BTCUSDT') OR ("exchange" = 'kraken' AND "symbol" = 'XBTUSD')) AND "price" > 0 AND time >= to_timestamp_nanos(0) AND time < to_timestamp_nanos(60000000000) GROUP BY 1, 2, 3"#
        );
    }

    #[test]
    fn candles_are_read_and_deleted_by_their_tags_in_their_measurement() {
        let (own, placement) = (Layout::default(), Placement::default());
        let n = names(&own, &placement);
        assert_eq!(
            n.candle_read(Resolution::M5, &["BTCUSD", "ETHUSD"], true, &(0..MINUTE))
                .unwrap(),
            r#"SELECT open, high, low, close, volume, quote_volume, trades, buy_volume, "symbol" FROM "ohlc_5m" WHERE "symbol" =~ /^(?:BTCUSD|ETHUSD)$/ AND time >= 0 AND time < 60000000000"#
        );
        assert_eq!(
            n.candle_read(Resolution::D1, &["BTCUSD"], false, &(0..MINUTE))
                .unwrap(),
            r#"SELECT open, high, low, close, volume, quote_volume, trades, buy_volume FROM "ohlc_1d" WHERE "symbol" = 'BTCUSD' AND time >= 0 AND time < 60000000000"#
        );
        assert_eq!(
            n.candle_delete(Resolution::H1, "BTCUSD", &(0..MINUTE))
                .unwrap(),
            r#"DELETE FROM "ohlc_1h" WHERE "symbol" = 'BTCUSD' AND time >= 0 AND time < 60000000000"#
        );
        // A name that is no instrument of the schema is never queried.
        assert_eq!(
            n.candle_read(Resolution::M1, &["a:b"], false, &(0..1)),
            None
        );
        assert_eq!(n.candle_delete(Resolution::M1, "a:b", &(0..1)), None);
    }

    #[test]
    fn the_edges_of_a_symbol_are_one_point_each_read_from_the_index() {
        let own = Layout::default();
        let placement = raw_policy();
        let n = names(&own, &placement);
        let trades = n.point_source(Stored::Trades, "BTCUSD").unwrap();
        assert_eq!(
            trades.first_from(i64::MIN),
            r#"SELECT "price" FROM "db"."raw"."trades" WHERE "symbol" = 'BTCUSD' ORDER BY time ASC LIMIT 1"#
        );
        assert_eq!(
            trades.first_from(7),
            r#"SELECT "price" FROM "db"."raw"."trades" WHERE "symbol" = 'BTCUSD' AND time >= 7 ORDER BY time ASC LIMIT 1"#
        );
        // One window of the lookback, and the unbounded last one.
        assert_eq!(
            trades.last_in(Some(MINUTE), 2 * MINUTE),
            r#"SELECT "price" FROM "db"."raw"."trades" WHERE "symbol" = 'BTCUSD' AND time >= 60000000000 AND time < 120000000000 ORDER BY time DESC LIMIT 1"#
        );
        assert_eq!(
            n.point_source(Stored::Candles(Resolution::D1), "BTCUSD")
                .unwrap()
                .last_in(None, MINUTE),
            r#"SELECT "close" FROM "ohlc_1d" WHERE "symbol" = 'BTCUSD' AND time < 60000000000 ORDER BY time DESC LIMIT 1"#
        );
        let group = &trade_groups(&own, &["BTCUSD", "ETHUSD"])[0];
        assert_eq!(
            n.trade_edges(group, None, true).unwrap(),
            r#"SELECT "price" FROM "db"."raw"."trades" WHERE "symbol" =~ /^(?:BTCUSD|ETHUSD)$/ GROUP BY "symbol" ORDER BY time DESC LIMIT 1"#
        );
        assert_eq!(
            n.trade_edges(group, Some(5), false).unwrap(),
            r#"SELECT "price" FROM "db"."raw"."trades" WHERE "symbol" =~ /^(?:BTCUSD|ETHUSD)$/ AND time >= 5 GROUP BY "symbol" ORDER BY time ASC LIMIT 1"#
        );
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

    #[test]
    fn statements_about_the_database_quote_every_name() {
        assert_eq!(
            create_database(r#"my "db""#),
            r#"CREATE DATABASE "my \"db\"""#
        );
        assert_eq!(
            show_retention_policies("db"),
            r#"SHOW RETENTION POLICIES ON "db""#
        );
        assert_eq!(
            retention_policy(false, "raw", "db", "720h", "24h"),
            r#"CREATE RETENTION POLICY "raw" ON "db" DURATION 720h REPLICATION 1 SHARD DURATION 24h"#
        );
        assert_eq!(
            retention_policy(true, "raw", "db", "168h", "24h"),
            r#"ALTER RETENTION POLICY "raw" ON "db" DURATION 168h SHARD DURATION 24h"#
        );
        assert_eq!(show_field_keys("db", None), "SHOW FIELD KEYS");
        assert_eq!(
            show_field_keys("db", Some("raw")),
            r#"SHOW FIELD KEYS FROM "db"."raw"./.*/"#
        );
    }

    #[test]
    fn listing_instruments_names_the_tags_and_the_values_found_so_far() {
        let tags = vec!["exchange".to_string(), "symbol".to_string()];
        assert_eq!(
            show_tag_values(r#""trades""#, "symbol", &[]),
            r#"SHOW TAG VALUES FROM "trades" WITH KEY = "symbol""#
        );
        let cond = tags_equal(&tags[..1], &["bin'ance".to_string()]);
        assert_eq!(cond, r#""exchange" = 'bin\'ance'"#);
        assert_eq!(
            show_tag_values(r#""trades""#, "symbol", &[&cond, "time >= 0"]),
            r#"SHOW TAG VALUES FROM "trades" WITH KEY = "symbol" WHERE "exchange" = 'bin\'ance' AND time >= 0"#
        );
        assert_eq!(
            show_series(&[r#""a""#.to_string(), r#""raw"."b""#.to_string()]),
            r#"SHOW SERIES FROM "a", "raw"."b""#
        );
        assert_eq!(
            distinct_tags(&tags, "trades-COINBASE"),
            r#"SELECT DISTINCT "exchange", "symbol" FROM "trades-COINBASE""#
        );
    }
}

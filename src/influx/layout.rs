//! Query text and line-protocol heads taken from a [`Layout`]: which
//! measurement holds an instrument's trades, the condition selecting a set of
//! instruments, the condition selecting exactly the rows that make trades,
//! the columns a read selects, and the head of a candle line. Pure: every
//! name comes from the layout, every identifier and literal is quoted here.

use std::collections::BTreeMap;

use super::encode::push_tag_value;
use super::query::{quote_ident, quote_literal};
use crate::candle::{MAX_TRADE_VALUE, Resolution};
use crate::schema::SideSpec;
use crate::schema::layout::{Column, FieldType, Layout};
use crate::symbol::NAME_SEPARATOR;

/// Instruments whose trades are in one measurement: what one read queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeGroup<'n> {
    /// The measurement.
    pub measurement: String,
    /// The exchange its name stands for, which leads the names of its
    /// instruments (schemas that take the exchange from the measurement).
    pub exchange: Option<&'n str>,
    /// Per instrument, its symbol tag values in `schema.symbol_tags` order.
    pub rows: Vec<Vec<&'n str>>,
}

/// The parts of `name` if it names an instrument of `layout` (the right
/// number of non-empty parts).
pub fn name_parts<'n>(layout: &Layout, name: &'n str) -> Option<Vec<&'n str>> {
    let parts: Vec<&str> = name.split(NAME_SEPARATOR).collect();
    (parts.len() == layout.schema.name_parts() && parts.iter().all(|p| !p.is_empty()))
        .then_some(parts)
}

/// `names` grouped by the measurement holding their trades, in the order the
/// measurements first appear; names that are no instrument of `layout`, or
/// whose exchange has no measurement, are left out.
pub fn trade_groups<'n>(layout: &Layout, names: &'n [impl AsRef<str>]) -> Vec<TradeGroup<'n>> {
    let by_exchange = layout.schema.exchange_from_measurement();
    let mut groups: Vec<TradeGroup<'n>> = Vec::new();
    for name in names {
        let Some(parts) = name_parts(layout, name.as_ref()) else {
            continue;
        };
        let (exchange, tags) = if by_exchange {
            (Some(parts[0]), parts[1..].to_vec())
        } else {
            (None, parts)
        };
        if let Some(g) = groups.iter_mut().find(|g| g.exchange == exchange) {
            g.rows.push(tags);
            continue;
        }
        let Some(measurement) = layout.measurement_for(exchange) else {
            continue;
        };
        groups.push(TradeGroup {
            measurement,
            exchange,
            rows: vec![tags],
        });
    }
    groups
}

/// The candle tag values of each name of `names` that names an instrument
/// of `layout` (the parts of the name, in `candle_tags` order).
pub fn candle_rows<'n>(layout: &Layout, names: &'n [impl AsRef<str>]) -> Vec<Vec<&'n str>> {
    names
        .iter()
        .filter_map(|n| name_parts(layout, n.as_ref()))
        .collect()
}

/// Which dialect a condition is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// InfluxQL (`/query`).
    InfluxQl,
    /// SQL (InfluxDB 3's `/api/v3/query_sql`).
    Sql,
}

/// An SQL string literal (quotes doubled).
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// An identifier (tag, field, measurement) quoted for `dialect`: InfluxQL
/// escapes a double quote with a backslash, SQL doubles it.
pub fn ident(dialect: Dialect, name: &str) -> String {
    match dialect {
        Dialect::InfluxQl => quote_ident(name),
        Dialect::Sql => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

/// The condition selecting the instruments whose tag values are `rows` (each
/// in `tags` order): `"symbol" = 'A'`, `"symbol" =~ /^(?:A|B)$/` (SQL:
/// `"symbol" IN ('A', 'B')`), or for several tags, grouped by the leading
/// ones: `("exchange" = 'x' AND "symbol" =~ /^(?:A|B)$/) OR (…)`. Empty
/// `rows` select nothing (`false`-like condition is the caller's business:
/// this returns `None`).
pub fn tags_condition(dialect: Dialect, tags: &[String], rows: &[Vec<&str>]) -> Option<String> {
    let (last, leading) = tags.split_last()?;
    let mut groups: BTreeMap<&[&str], Vec<&str>> = BTreeMap::new();
    for row in rows {
        if row.len() != tags.len() {
            continue;
        }
        let (value, lead) = row.split_last().expect("as many values as tags");
        let values = groups.entry(lead).or_default();
        if !values.contains(value) {
            values.push(value);
        }
    }
    if groups.is_empty() {
        return None;
    }
    let literal = |v: &str| match dialect {
        Dialect::InfluxQl => quote_literal(v),
        Dialect::Sql => sql_literal(v),
    };
    let several = groups.len() > 1;
    let mut out = String::new();
    for (i, (lead, values)) in groups.iter().enumerate() {
        if i > 0 {
            out.push_str(" OR ");
        }
        let mut terms: Vec<String> = leading
            .iter()
            .zip(lead.iter())
            .map(|(tag, v)| format!("{} = {}", ident(dialect, tag), literal(v)))
            .collect();
        terms.push(match (values.as_slice(), dialect) {
            ([one], _) => format!("{} = {}", ident(dialect, last), literal(one)),
            (set, Dialect::InfluxQl) => {
                format!("{} =~ {}", ident(dialect, last), alternatives(set))
            }
            (set, Dialect::Sql) => format!(
                "{} IN ({})",
                ident(dialect, last),
                set.iter()
                    .map(|v| literal(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        let term = terms.join(" AND ");
        if several && terms.len() > 1 {
            out.push('(');
            out.push_str(&term);
            out.push(')');
        } else {
            out.push_str(&term);
        }
    }
    Some(out)
}

/// An InfluxQL regex matching exactly one of `values`: `/^(?:A|B)$/`, every
/// character that is not a letter or digit escaped.
pub fn alternatives(values: &[&str]) -> String {
    let mut out = String::from("/^(?:");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        for ch in v.chars() {
            if !ch.is_ascii_alphanumeric() {
                out.push('\\');
            }
            out.push(ch);
        }
    }
    out.push_str(")$/");
    out
}

/// A regex body matching `value` with ASCII letters in either case and
/// nothing else (`buy` → `[bB][uU][yY]`): exactly what
/// [`SideSpec::side_of`] accepts, in InfluxDB 1.x's (Go) and 3.x's (Rust)
/// regex dialects alike.
fn ascii_case_pattern(value: &str) -> String {
    let mut out = String::new();
    for ch in value.chars() {
        if ch.is_ascii_alphabetic() {
            out.push('[');
            out.push(ch.to_ascii_lowercase());
            out.push(ch.to_ascii_uppercase());
            out.push(']');
        } else if ch.is_ascii_alphanumeric() {
            out.push(ch);
        } else if ch.is_ascii() {
            out.push('\\');
            out.push(ch);
        } else {
            out.push(ch);
        }
    }
    out
}

/// The side condition: a tag or string field holding one of the two values
/// (any ASCII case), a boolean field holding a value at all.
fn side_condition(dialect: Dialect, spec: &SideSpec, column: Column) -> String {
    let ident = ident(dialect, &spec.column);
    match (column, dialect) {
        (Column::Field(FieldType::Boolean), Dialect::InfluxQl) => {
            format!("({ident} = true OR {ident} = false)")
        }
        (Column::Field(FieldType::Boolean), Dialect::Sql) => format!("{ident} IS NOT NULL"),
        (_, dialect) => {
            let body = format!(
                "^(?:{}|{})$",
                ascii_case_pattern(&spec.buy),
                ascii_case_pattern(&spec.sell)
            );
            match dialect {
                Dialect::InfluxQl => format!("{ident} =~ /{}/", body.replace('/', "\\/")),
                Dialect::Sql => format!("{ident} ~ {}", sql_literal(&body)),
            }
        }
    }
}

/// The condition selecting exactly the rows reading makes trades of (the row
/// rule of [`super::query`]: price and amount present, finite, > 0 and at most
/// [`MAX_TRADE_VALUE`], the side one of its two values), so that a count of
/// trades in InfluxDB agrees with reading them. `None` where the server
/// cannot say it: price or amount are text (old collectors), which only
/// reading can parse. Neither dialect has exponent literals: the bound is
/// spelled out.
pub fn valid_trade_condition(dialect: Dialect, layout: &Layout) -> Option<String> {
    let numeric = |t: FieldType| {
        matches!(
            t,
            FieldType::Float | FieldType::Integer | FieldType::Unsigned
        )
    };
    if !numeric(layout.price) || !numeric(layout.amount) {
        return None;
    }
    let bound = format!("{MAX_TRADE_VALUE:.0}");
    let mut out = String::new();
    for field in [&layout.schema.price, &layout.schema.amount] {
        let f = ident(dialect, field);
        if !out.is_empty() {
            out.push_str(" AND ");
        }
        out.push_str(&format!("{f} > 0 AND {f} <= {bound}"));
    }
    if let (Some(spec), Some(column)) = (&layout.schema.side, layout.side) {
        out.push_str(" AND ");
        out.push_str(&side_condition(dialect, spec, column));
    }
    Some(out)
}

/// The columns a read of trades selects, quoted and comma-separated, and the
/// names they come back under: price, amount, then the id and side when the
/// schema has them, then the symbol tags when `with_tags`. Only what candles
/// need.
pub fn trade_columns(dialect: Dialect, layout: &Layout, with_tags: bool) -> (String, Vec<&str>) {
    let s = &layout.schema;
    let mut names: Vec<&str> = vec![&s.price, &s.amount];
    names.extend(s.id.as_deref());
    names.extend(s.side.as_ref().map(|side| side.column.as_str()));
    if with_tags {
        names.extend(s.symbol_tags.iter().map(String::as_str));
    }
    let text = names
        .iter()
        .map(|n| ident(dialect, n))
        .collect::<Vec<_>>()
        .join(", ");
    (text, names)
}

/// The tags of `GROUP BY` over instruments: `"exchange", "symbol"`.
pub fn group_by(dialect: Dialect, tags: &[String]) -> String {
    tags.iter()
        .map(|t| ident(dialect, t))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends a measurement name with line-protocol escaping (comma, space).
pub fn push_measurement(out: &mut Vec<u8>, name: &str) {
    for b in name.bytes() {
        if matches!(b, b',' | b' ') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// The line-protocol head of candles of `res` of instrument `name`:
/// `ohlc_1m,exchange=binance,symbol=BTCUSDT`, the measurement from
/// `schema.candles_measurement` and the candle tags sorted by key. `None` if
/// `name` is no instrument of `layout`.
pub fn candle_head(layout: &Layout, res: Resolution, name: &str) -> Option<Vec<u8>> {
    let parts = name_parts(layout, name)?;
    let tags = layout.schema.candle_tags();
    let mut pairs: Vec<(&str, &str)> = tags.iter().map(String::as_str).zip(parts).collect();
    pairs.sort_unstable();
    let mut head = Vec::with_capacity(48);
    push_measurement(&mut head, &layout.schema.candle_measurement(res));
    for (tag, value) in pairs {
        head.push(b',');
        push_tag_value(&mut head, tag);
        head.push(b'=');
        push_tag_value(&mut head, value);
    }
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::layout::FieldType;
    use crate::schema::samples::layout_for as layout;
    use crate::schema::samples::{binance, cryptofeed};

    #[test]
    fn ohlcds_own_schema_reads_as_it_always_did() {
        let own = Layout::default();
        let names = ["BTCUSD", "ETHUSD"];
        let groups = trade_groups(&own, &names);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].measurement, "trades");
        assert_eq!(
            tags_condition(Dialect::InfluxQl, &own.schema.symbol_tags, &groups[0].rows).unwrap(),
            r#""symbol" =~ /^(?:BTCUSD|ETHUSD)$/"#
        );
        assert_eq!(
            tags_condition(Dialect::Sql, &own.schema.symbol_tags, &groups[0].rows[..1]).unwrap(),
            r#""symbol" = 'BTCUSD'"#
        );
        assert_eq!(
            trade_columns(Dialect::InfluxQl, &own, true).0,
            r#""price", "amount", "id", "side", "symbol""#
        );
        assert_eq!(
            valid_trade_condition(Dialect::InfluxQl, &own).unwrap(),
            r#""price" > 0 AND "price" <= 1000000000000000 AND "amount" > 0 AND "amount" <= 1000000000000000 AND "side" =~ /^(?:[bB][uU][yY]|[sS][eE][lL][lL])$/"#
        );
        assert_eq!(
            String::from_utf8(candle_head(&own, Resolution::M1, "BTCUSD").unwrap()).unwrap(),
            "ohlc_1m,symbol=BTCUSD"
        );
        // A name of the wrong form is no instrument: nothing is queried for it.
        assert!(trade_groups(&own, &["binance:BTCUSD"]).is_empty());
        assert_eq!(candle_head(&own, Resolution::M1, "a:b"), None);
    }

    #[test]
    fn several_symbol_tags_are_grouped_by_the_leading_ones() {
        let b = binance();
        let names = [
            "binance:BTCUSDT",
            "kraken:XBTUSD",
            "binance:ETHUSDT",
            "binance:BTCUSDT",
        ];
        let groups = trade_groups(&b, &names);
        assert_eq!(groups.len(), 1);
        assert_eq!(
            tags_condition(Dialect::InfluxQl, &b.schema.symbol_tags, &groups[0].rows).unwrap(),
            r#"("exchange" = 'binance' AND "symbol" =~ /^(?:BTCUSDT|ETHUSDT)$/) OR ("exchange" = 'kraken' AND "symbol" = 'XBTUSD')"#
        );
        assert_eq!(
            tags_condition(Dialect::Sql, &b.schema.symbol_tags, &groups[0].rows).unwrap(),
            r#"("exchange" = 'binance' AND "symbol" IN ('BTCUSDT', 'ETHUSDT')) OR ("exchange" = 'kraken' AND "symbol" = 'XBTUSD')"#
        );
        assert_eq!(
            tags_condition(
                Dialect::InfluxQl,
                &b.schema.symbol_tags,
                &groups[0].rows[1..2]
            )
            .unwrap(),
            r#""exchange" = 'kraken' AND "symbol" = 'XBTUSD'"#
        );
        assert_eq!(
            trade_columns(Dialect::InfluxQl, &b, true).0,
            r#""price", "qty", "trade_id", "is_buyer_maker", "exchange", "symbol""#
        );
        assert_eq!(
            valid_trade_condition(Dialect::InfluxQl, &b).unwrap(),
            r#""price" > 0 AND "price" <= 1000000000000000 AND "qty" > 0 AND "qty" <= 1000000000000000 AND ("is_buyer_maker" = true OR "is_buyer_maker" = false)"#
        );
        assert!(
            valid_trade_condition(Dialect::Sql, &b)
                .unwrap()
                .ends_with(r#"AND "is_buyer_maker" IS NOT NULL"#)
        );
        assert_eq!(
            String::from_utf8(candle_head(&b, Resolution::H4, "binance:BTCUSDT").unwrap()).unwrap(),
            "ohlc_4h,exchange=binance,symbol=BTCUSDT"
        );
    }

    #[test]
    fn an_exchange_pattern_reads_each_exchange_from_its_own_measurement() {
        let cf = cryptofeed();
        let names = [
            "COINBASE:BTC-USD",
            "BINANCE:BTC-USDT",
            "COINBASE:ETH-USD",
            "KRAKEN:XBT-USD",
        ];
        let groups = trade_groups(&cf, &names);
        let got: Vec<(&str, Option<&str>, usize)> = groups
            .iter()
            .map(|g| (g.measurement.as_str(), g.exchange, g.rows.len()))
            .collect();
        // An exchange not seen at start has its measurement by the pattern.
        assert_eq!(
            got,
            [
                ("trades-COINBASE", Some("COINBASE"), 2),
                ("trades-BINANCE", Some("BINANCE"), 1),
                ("trades-KRAKEN", Some("KRAKEN"), 1)
            ]
        );
        assert_eq!(
            tags_condition(Dialect::InfluxQl, &cf.schema.symbol_tags, &groups[0].rows).unwrap(),
            r#""symbol" =~ /^(?:BTC\-USD|ETH\-USD)$/"#
        );
        // String side field: either case, the same set reading accepts.
        assert!(
            valid_trade_condition(Dialect::Sql, &cf)
                .unwrap()
                .ends_with(r#"AND "side" ~ '^(?:[bB][uU][yY]|[sS][eE][lL][lL])$'"#)
        );
        // Candles carry the exchange as a tag.
        assert_eq!(
            String::from_utf8(candle_head(&cf, Resolution::D1, "COINBASE:BTC-USD").unwrap())
                .unwrap(),
            "ohlc_1d,exchange=COINBASE,symbol=BTC-USD"
        );
        let rows = candle_rows(&cf, &names[..2]);
        assert_eq!(
            tags_condition(Dialect::InfluxQl, &cf.schema.candle_tags(), &rows).unwrap(),
            r#"("exchange" = 'BINANCE' AND "symbol" = 'BTC-USDT') OR ("exchange" = 'COINBASE' AND "symbol" = 'BTC-USD')"#
        );
    }

    #[test]
    fn text_prices_cannot_be_counted_by_the_server() {
        let old = layout(
            &[("id_field", "")],
            &[(
                "trades",
                &["symbol", "side"],
                &[("price", FieldType::String), ("amount", FieldType::String)],
            )],
        );
        assert_eq!(valid_trade_condition(Dialect::InfluxQl, &old), None);
        assert_eq!(
            trade_columns(Dialect::InfluxQl, &old, false).0,
            r#""price", "amount", "side""#
        );
    }

    #[test]
    fn the_count_of_trades_bounds_values_as_reading_does() {
        let bound = format!("{:.0}", crate::candle::MAX_TRADE_VALUE);
        let own = crate::schema::layout::Layout::default();
        for dialect in [Dialect::InfluxQl, Dialect::Sql] {
            let cond = valid_trade_condition(dialect, &own).unwrap();
            assert_eq!(cond.matches(&format!("<= {bound} ")).count(), 2, "{cond}");
        }
    }

    #[test]
    fn literals_and_names_cannot_break_out_of_their_quotes() {
        let tags = vec!["sym\"bol".to_string()];
        let rows = vec![vec!["a'b"], vec!["c/d"]];
        assert_eq!(
            tags_condition(Dialect::InfluxQl, &tags, &rows).unwrap(),
            r#""sym\"bol" =~ /^(?:a\'b|c\/d)$/"#
        );
        assert_eq!(
            tags_condition(Dialect::Sql, &tags, &rows[..1]).unwrap(),
            r#""sym""bol" = 'a''b'"#
        );
        let mut head = Vec::new();
        push_measurement(&mut head, "trade ohlc,1m");
        assert_eq!(head, br"trade\ ohlc\,1m");
    }
}

//! What the server holds: every measurement's tags and fields (matched
//! against `[schema]` at start into the client's [`Layout`]), the
//! measurements holding trades, and the instruments that have trades or
//! candles.
//!
//! The statements are InfluxQL's `SHOW …`, which InfluxDB 1.x, 2.x (v1 API)
//! and 3.x (`/query`) all answer the same way, except for instruments named by
//! several tags: 1.x lists tag combinations with `SHOW SERIES`, 3.x (which has
//! no `SHOW SERIES`) with SQL `SELECT DISTINCT`, 2.x tag by tag.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::generation::TagTuples;
use super::query;
use super::{InfluxClient, InfluxError, Stored};
use crate::candle::Resolution;
use crate::schema::TradeSchema;
use crate::schema::layout::{FieldType, Layout, MeasurementColumns};
use crate::symbol::is_name_part;

impl InfluxClient {
    /// Every measurement's tag keys and field keys with their types: on 1.x
    /// and 2.x `SHOW TAG KEYS` and `SHOW FIELD KEYS` (from the raw trades'
    /// retention policy: 1.x keeps field keys per policy), on 3.x the SQL
    /// catalog, `information_schema.columns`.
    pub async fn server_columns(
        &self,
    ) -> Result<BTreeMap<String, MeasurementColumns>, InfluxError> {
        if self.generation.columns_from_catalog() {
            // Boxed: kept out of this future, which every start-up holds.
            return Box::pin(self.catalog_columns()).await;
        }
        let mut out: BTreeMap<String, MeasurementColumns> = BTreeMap::new();
        let tags = self.query_json("SHOW TAG KEYS").await?;
        for (measurement, row) in named_rows(&tags) {
            if let Some(key) = row.first().and_then(Value::as_str) {
                out.entry(measurement.to_string())
                    .or_default()
                    .tags
                    .insert(key.to_string());
            }
        }
        let policy = self.placement.spec(Stored::Trades).map(|p| p.name.as_str());
        let fields = query::show_field_keys(&self.database, policy);
        let fields = self.query_json(&fields).await?;
        for (measurement, row) in named_rows(&fields) {
            let (Some(key), Some(kind)) = (
                row.first().and_then(Value::as_str),
                row.get(1).and_then(Value::as_str),
            ) else {
                continue;
            };
            let Some(kind) = FieldType::parse(kind) else {
                tracing::debug!(
                    measurement,
                    field = key,
                    kind,
                    "field of an unknown type left out"
                );
                continue;
            };
            out.entry(measurement.to_string())
                .or_default()
                .fields
                .insert(key.to_string(), kind);
        }
        Ok(out)
    }

    /// InfluxDB 3's tables and columns from `information_schema.columns`:
    /// its tags are dictionary-encoded text, `time` is left out.
    async fn catalog_columns(&self) -> Result<BTreeMap<String, MeasurementColumns>, InfluxError> {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let mut idx: Option<[usize; 3]> = None;
        self.stream_sql_csv(
            "SELECT table_name, column_name, data_type FROM information_schema.columns \
             WHERE table_schema = 'iox'",
            |cols, row| {
                let idx = match &idx {
                    Some(i) => i,
                    None => idx.insert([
                        cols.index("table_name")?,
                        cols.index("column_name")?,
                        cols.index("data_type")?,
                    ]),
                };
                let text = |i: usize| String::from_utf8_lossy(row.bytes(i).unwrap_or_default());
                rows.push((
                    text(idx[0]).into_owned(),
                    text(idx[1]).into_owned(),
                    text(idx[2]).into_owned(),
                ));
                Ok(())
            },
        )
        .await?;
        Ok(catalog_to_columns(rows))
    }

    /// Matches `schema` against what the server holds and reads and writes
    /// by it from now on. Fails with [`InfluxError::Schema`], one line naming
    /// what is missing and what is there; an empty database is a first
    /// install (ohlcd writes the schema its own way).
    pub async fn resolve_schema(&mut self, schema: &TradeSchema) -> Result<(), InfluxError> {
        let columns = self.server_columns().await?;
        let layout = schema.resolve(&columns).map_err(InfluxError::Schema)?;
        tracing::debug!(
            measurements = ?layout.measurements,
            price = ?layout.price,
            amount = ?layout.amount,
            side = ?layout.side,
            id = ?layout.id,
            natural = layout.natural,
            "schema matched"
        );
        self.set_layout(layout);
        Ok(())
    }

    /// The measurements holding trades now, each with the exchange its name
    /// stands for: the configured ones, and for a `{exchange}` pattern those
    /// the server has (`SHOW MEASUREMENTS`), so an exchange whose trades
    /// start arriving later is found without a restart.
    pub async fn trade_measurements(&self) -> Result<Vec<(String, Option<String>)>, InfluxError> {
        let layout = self.layout();
        if !layout.schema.exchange_from_measurement() {
            return Ok(layout
                .measurement_for(None)
                .map(|m| (m, None))
                .into_iter()
                .collect());
        }
        let candles: BTreeSet<String> = layout.schema.candle_measurements().into_iter().collect();
        let v = self.query_json("SHOW MEASUREMENTS").await?;
        let mut out = Vec::new();
        for (_, row) in named_rows(&v) {
            let Some(name) = row.first().and_then(Value::as_str) else {
                continue;
            };
            if candles.contains(name) {
                continue;
            }
            if let Some(exchange) = layout.exchange_of(name) {
                out.push((name.to_string(), Some(exchange)));
            }
        }
        Ok(out)
    }

    /// Instruments that have raw trades, by name, sorted. A tag value (or an
    /// exchange) outside the symbol rule cannot be named: it is left out,
    /// with a warning the first time.
    pub async fn symbols(&self) -> Result<Vec<String>, InfluxError> {
        let measurements = self.trade_measurements().await?;
        if measurements.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = measurements.iter().map(|(m, _)| m.clone()).collect();
        let tags = self.layout().schema.symbol_tags.clone();
        let tuples = self.tag_tuples(Stored::Trades, &names, &tags).await?;
        let mut out = BTreeSet::new();
        for (measurement, values) in tuples {
            let exchange = measurements
                .iter()
                .find(|(m, _)| *m == measurement)
                .and_then(|(_, ex)| ex.as_deref());
            if let Some(name) = self.name_of(
                exchange
                    .into_iter()
                    .chain(values.iter().map(String::as_str)),
            ) {
                out.insert(name);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Instruments that have candles of `res`, by name, sorted.
    pub async fn candle_symbols(&self, res: Resolution) -> Result<Vec<String>, InfluxError> {
        let layout = self.layout();
        let measurement = layout.schema.candle_measurement(res);
        let tags = layout.schema.candle_tags();
        let tuples = self
            .tag_tuples(Stored::Candles(res), &[measurement], &tags)
            .await?;
        let mut out = BTreeSet::new();
        for (_, values) in tuples {
            if let Some(name) = self.name_of(values.iter().map(String::as_str)) {
                out.insert(name);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The name of an instrument from its parts, if every part follows the
    /// symbol rule; a part that does not is warned about once.
    fn name_of<'a>(&self, parts: impl Iterator<Item = &'a str>) -> Option<String> {
        let mut name = String::new();
        for (i, part) in parts.enumerate() {
            if !is_name_part(part) {
                let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
                if warned.len() < 10_000 && warned.insert(part.to_string()) {
                    tracing::warn!(
                        value = part,
                        "a tag value in the trades is no symbol (1 to 32 of A-Z a-z 0-9 . _ -): its trades are left out"
                    );
                }
                return None;
            }
            if i > 0 {
                name.push(crate::symbol::NAME_SEPARATOR);
            }
            name.push_str(part);
        }
        (!name.is_empty()).then_some(name)
    }

    /// Every combination of values of `tags` in `measurements` (which hold
    /// `stored`), with the measurement it is in. 3.x answers `SHOW TAG VALUES`
    /// only for the last 24 hours unless the statement has a time condition.
    async fn tag_tuples(
        &self,
        stored: Stored,
        measurements: &[String],
        tags: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, InfluxError> {
        let sources: Vec<String> = measurements
            .iter()
            .map(|m| self.source_of(stored, m))
            .collect();
        if let [tag] = tags {
            return self.tag_values(&sources.join(", "), tag, "").await;
        }
        match self.generation.tag_tuples() {
            TagTuples::ShowSeries => self.series_tuples(&sources, tags).await,
            TagTuples::SqlDistinct => {
                let mut out = Vec::new();
                for m in measurements {
                    let q = query::distinct_tags(tags, m);
                    let mut rows = Vec::new();
                    let mut idx: Option<Vec<usize>> = None;
                    self.stream_sql_csv(&q, |cols, row| {
                        let idx = match &idx {
                            Some(i) => i,
                            None => idx.insert(
                                tags.iter()
                                    .map(|t| cols.index(t))
                                    .collect::<Result<Vec<_>, _>>()?,
                            ),
                        };
                        let values: Option<Vec<String>> = idx
                            .iter()
                            .map(|i| {
                                row.bytes(*i)
                                    .filter(|b| !b.is_empty())
                                    .map(|b| String::from_utf8_lossy(b).into_owned())
                            })
                            .collect();
                        rows.extend(values);
                        Ok(())
                    })
                    .await?;
                    out.extend(rows.into_iter().map(|v| (m.clone(), v)));
                }
                Ok(out)
            }
            TagTuples::TagByTag => {
                // Tag by tag: the values of each tag where the ones before
                // it have the values found so far.
                let mut out = Vec::new();
                for source in &sources {
                    let mut partial: Vec<(String, Vec<String>)> =
                        self.tag_values(source, &tags[0], "").await?;
                    for (depth, tag) in tags.iter().enumerate().skip(1) {
                        let mut next = Vec::new();
                        for (measurement, values) in partial {
                            let cond = query::tags_equal(&tags[..depth], &values);
                            for (_, more) in self.tag_values(source, tag, &cond).await? {
                                let mut v = values.clone();
                                v.extend(more);
                                next.push((measurement.clone(), v));
                            }
                        }
                        partial = next;
                    }
                    out.extend(partial);
                }
                Ok(out)
            }
        }
    }

    /// `SHOW TAG VALUES FROM sources WITH KEY = tag [WHERE cond]`: each value
    /// with the measurement it is in.
    async fn tag_values(
        &self,
        sources: &str,
        tag: &str,
        cond: &str,
    ) -> Result<Vec<(String, Vec<String>)>, InfluxError> {
        let mut conds: Vec<&str> = Vec::new();
        if !cond.is_empty() {
            conds.push(cond);
        }
        if self.generation.tag_values_need_time() {
            conds.push("time >= 0");
        }
        let v = self
            .query_json(&query::show_tag_values(sources, tag, &conds))
            .await?;
        Ok(named_rows(&v)
            .filter_map(|(m, row)| {
                let value = row.get(1).and_then(Value::as_str)?;
                Some((m.to_string(), vec![value.to_string()]))
            })
            .collect())
    }

    /// Tag combinations from `SHOW SERIES` (1.x): each series key parsed,
    /// its `tags` picked out, duplicates (series that differ in other tags)
    /// dropped.
    async fn series_tuples(
        &self,
        sources: &[String],
        tags: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, InfluxError> {
        let v = self.query_json(&query::show_series(sources)).await?;
        let mut out = BTreeSet::new();
        for (_, row) in named_rows(&v) {
            let Some(key) = row.first().and_then(Value::as_str) else {
                continue;
            };
            let (measurement, pairs) = parse_series_key(key);
            let values: Option<Vec<String>> = tags
                .iter()
                .map(|t| pairs.iter().find(|(k, _)| k == t).map(|(_, v)| v.clone()))
                .collect();
            if let Some(values) = values {
                out.insert((measurement, values));
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// Measurements' columns from catalog rows `(table, column, data type)`
/// (InfluxDB 3's `information_schema.columns`): a dictionary of text is a
/// tag, `time` and types no field has are left out.
fn catalog_to_columns(
    rows: impl IntoIterator<Item = (String, String, String)>,
) -> BTreeMap<String, MeasurementColumns> {
    let mut out: BTreeMap<String, MeasurementColumns> = BTreeMap::new();
    for (table, column, kind) in rows {
        if column == "time" {
            continue;
        }
        let entry = out.entry(table).or_default();
        if kind.starts_with("Dictionary(") {
            entry.tags.insert(column);
        } else if let Some(kind) = FieldType::parse(&kind) {
            entry.fields.insert(column, kind);
        } else {
            tracing::debug!(column, kind, "column of an unknown type left out");
        }
    }
    out
}

/// `(series name, row)` of every row of every series of a statement's JSON.
fn named_rows(v: &Value) -> impl Iterator<Item = (&str, &Vec<Value>)> {
    v.get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s.get("name").and_then(Value::as_str).unwrap_or("");
            let values = s.get("values")?.as_array()?;
            Some(
                values
                    .iter()
                    .filter_map(Value::as_array)
                    .map(move |r| (name, r)),
            )
        })
        .flatten()
}

/// A series key (`trades,exchange=binance,symbol=BTC\ USD`) as its
/// measurement and tag pairs, line-protocol escapes undone.
fn parse_series_key(key: &str) -> (String, Vec<(String, String)>) {
    let mut parts: Vec<String> = vec![String::new()];
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    parts.last_mut().expect("non-empty").push(next);
                }
            }
            ',' => parts.push(String::new()),
            // A marker no escaped text holds: `=` splits key from value.
            '=' => parts.last_mut().expect("non-empty").push('\u{0}'),
            c => parts.last_mut().expect("non-empty").push(c),
        }
    }
    let measurement = parts.remove(0).replace('\u{0}', "=");
    let pairs = parts
        .into_iter()
        .filter_map(|p| {
            let (k, v) = p.split_once('\u{0}')?;
            Some((k.replace('\u{0}', "="), v.replace('\u{0}', "=")))
        })
        .collect();
    (measurement, pairs)
}

/// A [`Layout`] report line: how each configured name was found.
pub fn describe(layout: &Layout) -> Vec<(String, String)> {
    use crate::schema::layout::Column;
    let s = &layout.schema;
    let found = |c: Option<Column>| match c {
        Some(c) => c.to_string(),
        None => "not configured".to_string(),
    };
    let mut out = vec![(
        "trades_measurement".to_string(),
        format!(
            "{} → {}",
            s.measurements
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if layout.measurements.is_empty() {
                "none yet".to_string()
            } else {
                layout
                    .measurements
                    .iter()
                    .map(|(m, _)| m.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    )];
    out.push((
        "symbol_tags".to_string(),
        format!(
            "{} (tags; names look like {})",
            s.symbol_tags.join(", "),
            layout.name_form()
        ),
    ));
    out.push((
        "price_field".to_string(),
        format!(
            "{}: {}",
            s.price,
            crate::schema::layout::Column::Field(layout.price)
        ),
    ));
    out.push((
        "amount_field".to_string(),
        format!(
            "{}: {}",
            s.amount,
            crate::schema::layout::Column::Field(layout.amount)
        ),
    ));
    out.push((
        "side".to_string(),
        match &s.side {
            Some(spec) => format!(
                "{}: {}, taker buy = {:?}, taker sell = {:?}",
                spec.column,
                found(layout.side),
                spec.buy,
                spec.sell
            ),
            None => "none: trades have no side, candles carry buy_volume 0".to_string(),
        },
    ));
    out.push((
        "id_field".to_string(),
        match &s.id {
            Some(id) => format!("{id}: {}", found(layout.id)),
            None => "none: trades of equal time keep the order InfluxDB returns".to_string(),
        },
    ));
    out.push((
        "candles_measurement".to_string(),
        format!(
            "{} … {} (tags {})",
            s.candle_measurement(Resolution::M1),
            s.candle_measurement(Resolution::D1),
            s.candle_tags().join(", ")
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_says_which_columns_are_tags_and_what_type_each_field_has() {
        let row = |t: &str, c: &str, k: &str| (t.to_string(), c.to_string(), k.to_string());
        let got = catalog_to_columns([
            row("trades", "exchange", "Dictionary(Int32, Utf8)"),
            row("trades", "is_buyer_maker", "Boolean"),
            row("trades", "price", "Float64"),
            row("trades", "symbol", "Dictionary(Int32, Utf8)"),
            row("trades", "time", "Timestamp(Nanosecond, None)"),
            row("trades", "trade_id", "Int64"),
            row("trades-COINBASE", "id", "Utf8"),
            row("trades-COINBASE", "n", "UInt64"),
            row("trades-COINBASE", "odd", "List(Int64)"),
        ]);
        let trades = &got["trades"];
        assert_eq!(
            trades.tags.iter().collect::<Vec<_>>(),
            ["exchange", "symbol"]
        );
        assert_eq!(
            trades
                .fields
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>(),
            [
                ("is_buyer_maker", FieldType::Boolean),
                ("price", FieldType::Float),
                ("trade_id", FieldType::Integer)
            ]
        );
        let coinbase = &got["trades-COINBASE"];
        assert!(coinbase.tags.is_empty());
        assert_eq!(
            coinbase
                .fields
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>(),
            [("id", FieldType::String), ("n", FieldType::Unsigned)]
        );
    }

    #[test]
    fn series_keys_split_into_measurement_and_tags_with_escapes_undone() {
        assert_eq!(
            parse_series_key("trades,exchange=binance,side=buy,symbol=BTCUSDT"),
            (
                "trades".to_string(),
                vec![
                    ("exchange".to_string(), "binance".to_string()),
                    ("side".to_string(), "buy".to_string()),
                    ("symbol".to_string(), "BTCUSDT".to_string()),
                ]
            )
        );
        assert_eq!(
            parse_series_key(r"my\ trades\,x,ex\=change=a\,b,symbol=c\ d\=e"),
            (
                "my trades,x".to_string(),
                vec![
                    ("ex=change".to_string(), "a,b".to_string()),
                    ("symbol".to_string(), "c d=e".to_string()),
                ]
            )
        );
    }
}

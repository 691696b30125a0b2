//! A [`TradeSchema`] matched against the server: the [`Layout`] (which
//! measurements hold trades, which names are tags and which fields of which
//! type), found by [`TradeSchema::resolve`] from the server's
//! [`MeasurementColumns`], and the instruments it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{MeasurementName, TradeSchema};
use crate::candle::{Side, SkipReason};
use crate::symbol::{NAME_SEPARATOR, NameForm};

/// A field's type as InfluxDB reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// 64-bit float.
    Float,
    /// 64-bit signed integer.
    Integer,
    /// 64-bit unsigned integer.
    Unsigned,
    /// Text.
    String,
    /// `true` / `false`.
    Boolean,
}

impl FieldType {
    /// From InfluxQL's `SHOW FIELD KEYS` (`float`, `integer`, …) or the SQL
    /// `information_schema` (`Float64`, `Int64`, `Utf8`, …) type names.
    pub fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "float" | "Float64" | "Float32" => FieldType::Float,
            "integer" | "Int64" | "Int32" => FieldType::Integer,
            "unsigned" | "UInt64" | "UInt32" => FieldType::Unsigned,
            "string" | "Utf8" | "Utf8View" | "LargeUtf8" => FieldType::String,
            "boolean" | "Boolean" => FieldType::Boolean,
            _ => return None,
        })
    }
}

/// A column of a measurement: a tag or a field of some type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    /// A tag (always text).
    Tag,
    /// A field.
    Field(FieldType),
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Column::Tag => "a tag",
            Column::Field(FieldType::Float) => "a float field",
            Column::Field(FieldType::Integer) => "an integer field",
            Column::Field(FieldType::Unsigned) => "an unsigned field",
            Column::Field(FieldType::String) => "a string field",
            Column::Field(FieldType::Boolean) => "a boolean field",
        })
    }
}

/// The tag and field keys the server holds for one measurement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeasurementColumns {
    /// Tag keys.
    pub tags: BTreeSet<String>,
    /// Field keys and their types.
    pub fields: BTreeMap<String, FieldType>,
}

impl MeasurementColumns {
    /// Whether `name` is a tag or a field here (a field wins: InfluxQL reads
    /// the field when both exist).
    pub fn column(&self, name: &str) -> Option<Column> {
        self.fields
            .get(name)
            .map(|t| Column::Field(*t))
            .or_else(|| self.tags.contains(name).then_some(Column::Tag))
    }
}

/// A [`TradeSchema`] matched against the server: which measurements hold
/// trades (and the exchange each stands for) and what kind each column is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The configured schema.
    pub schema: TradeSchema,
    /// Measurements of trades and the exchange each names (patterns only).
    pub measurements: Vec<(String, Option<String>)>,
    /// Type of the price field.
    pub price: FieldType,
    /// Type of the amount field.
    pub amount: FieldType,
    /// Kind of the side column, when there is one.
    pub side: Option<Column>,
    /// Kind of the id column, when there is one.
    pub id: Option<Column>,
    /// Assumed for an empty database rather than found on the server.
    pub natural: bool,
    /// How its instruments are named.
    form: NameForm,
}

impl Default for Layout {
    fn default() -> Layout {
        TradeSchema::default().natural_layout()
    }
}

/// One instrument: the measurement its trades are in and its symbol tags.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instrument {
    /// The exchange taken from the measurement name, if the schema does so.
    pub exchange: Option<String>,
    /// Values of the symbol tags, in `schema.symbol_tags` order.
    pub tags: Vec<String>,
}

impl Instrument {
    /// Its name: the parts joined with `:`.
    pub fn name(&self) -> String {
        let mut parts: Vec<&str> = Vec::with_capacity(self.tags.len() + 1);
        parts.extend(self.exchange.as_deref());
        parts.extend(self.tags.iter().map(String::as_str));
        parts.join(":")
    }
}

impl Layout {
    /// How instruments are named here.
    pub fn name_form(&self) -> &NameForm {
        &self.form
    }

    /// The instrument a name stands for, if it has the right number of
    /// non-empty parts (and, where the exchange comes from the measurement,
    /// a known exchange).
    pub fn instrument(&self, name: &str) -> Option<Instrument> {
        let parts: Vec<&str> = name.split(NAME_SEPARATOR).collect();
        if parts.len() != self.schema.name_parts() || parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        let (exchange, tags) = if self.schema.exchange_from_measurement() {
            (Some(parts[0].to_string()), &parts[1..])
        } else {
            (None, &parts[..])
        };
        Some(Instrument {
            exchange,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        })
    }

    /// The measurement holding the trades of `instrument`: the one of its
    /// exchange, or the only one; for an exchange not seen yet, the first
    /// pattern's name for it.
    pub fn measurement_of(&self, instrument: &Instrument) -> Option<String> {
        self.measurement_for(instrument.exchange.as_deref())
    }

    /// [`Layout::measurement_of`] an instrument of `exchange` (`None`: the
    /// schema does not take the exchange from the measurement name).
    pub fn measurement_for(&self, exchange: Option<&str>) -> Option<String> {
        match exchange {
            None => self
                .measurements
                .first()
                .map(|(m, _)| m.clone())
                .or_else(|| {
                    self.schema.measurements.first().and_then(|m| match m {
                        MeasurementName::Literal(name) => Some(name.clone()),
                        MeasurementName::Pattern { .. } => None,
                    })
                }),
            Some(exchange) => self
                .measurements
                .iter()
                .find(|(_, ex)| ex.as_deref() == Some(exchange))
                .map(|(m, _)| m.clone())
                .or_else(|| {
                    // Several literal measurements: the exchange is the name.
                    self.schema.measurements.iter().find_map(|m| match m {
                        MeasurementName::Literal(name) if name == exchange => Some(name.clone()),
                        _ => None,
                    })
                })
                .or_else(|| {
                    self.schema.measurements.iter().find_map(|m| match m {
                        MeasurementName::Pattern { prefix, suffix } => {
                            Some(format!("{prefix}{exchange}{suffix}"))
                        }
                        MeasurementName::Literal(_) => None,
                    })
                }),
        }
    }

    /// The exchange part of instruments read from `measurement` (`None`
    /// where the schema does not take it from the measurement name, or
    /// `measurement` holds no trades of this schema).
    pub fn exchange_of(&self, measurement: &str) -> Option<String> {
        if !self.schema.exchange_from_measurement() {
            return None;
        }
        self.schema
            .measurements
            .iter()
            .find_map(|m| match m.matches(measurement)? {
                Some(exchange) => Some(exchange),
                None => Some(measurement.to_string()),
            })
    }

    /// The side a stored value stands for, or why the row is skipped:
    /// `Ok(None)` when the schema has no side.
    pub fn side_of(&self, value: Option<&str>) -> Result<Option<Side>, SkipReason> {
        self.side_of_bytes(value.map(str::as_bytes))
    }

    /// [`Layout::side_of`] of a row's column as raw bytes (a boolean reads
    /// as `true` / `false`).
    pub fn side_of_bytes(&self, value: Option<&[u8]>) -> Result<Option<Side>, SkipReason> {
        let Some(spec) = &self.schema.side else {
            return Ok(None);
        };
        value
            .and_then(|v| spec.side_of_bytes(v))
            .map(Some)
            .ok_or(SkipReason::UnknownSide)
    }
}

impl TradeSchema {
    /// Matches the schema against the server's measurements (`server`: name
    /// → its tags and fields). An empty database (nothing written yet) is
    /// not an error: it resolves to the schema's natural layout (side a tag,
    /// id an integer), which is how ohlcd writes. Anything configured that
    /// is not there stops with one line that names it and says what is there.
    pub fn resolve(&self, server: &BTreeMap<String, MeasurementColumns>) -> Result<Layout, String> {
        let candles: BTreeSet<String> = self.candle_measurements().into_iter().collect();
        let trades: BTreeMap<&String, &MeasurementColumns> = server
            .iter()
            .filter(|(name, _)| !candles.contains(*name))
            .collect();
        if trades.is_empty() {
            return Ok(self.natural_layout());
        }
        let listed = |names: &mut dyn Iterator<Item = &String>| -> String {
            let names: Vec<&String> = names.collect();
            let mut text = names
                .iter()
                .take(20)
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            if names.len() > 20 {
                text.push_str(&format!(" and {} more", names.len() - 20));
            }
            text
        };
        let mut matched: Vec<(String, Option<String>)> = Vec::new();
        for entry in &self.measurements {
            let found: Vec<(String, Option<String>)> = trades
                .keys()
                .filter_map(|m| entry.matches(m).map(|ex| ((*m).clone(), ex)))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "schema.trades_measurement = {:?}: the database has no such measurement; its measurements: {}",
                    entry.to_string(),
                    listed(&mut trades.keys().copied())
                ));
            }
            matched.extend(found);
        }
        let mut layout = Layout {
            schema: self.clone(),
            measurements: matched.clone(),
            price: FieldType::Float,
            amount: FieldType::Float,
            side: None,
            id: None,
            natural: false,
            form: NameForm::of(self),
        };
        for (name, _) in &matched {
            let cols = trades[name];
            let what_is = |key: &str, column: &str| -> String {
                format!(
                    "schema.{key} = {column:?}: measurement {name:?} has no such {}; its {}: {}",
                    if key == "symbol_tags" {
                        "tag"
                    } else {
                        "column"
                    },
                    if key == "symbol_tags" {
                        "tags"
                    } else {
                        "tags and fields"
                    },
                    if key == "symbol_tags" {
                        listed(&mut cols.tags.iter())
                    } else {
                        listed(&mut cols.tags.iter().chain(cols.fields.keys()))
                    }
                )
            };
            for tag in &self.symbol_tags {
                if !cols.tags.contains(tag) {
                    if cols.fields.contains_key(tag) {
                        return Err(format!(
                            "schema.symbol_tags = {tag:?}: in measurement {name:?} it is a field, not a tag; instruments are named by tags"
                        ));
                    }
                    return Err(what_is("symbol_tags", tag));
                }
            }
            for (key, field, slot) in [
                ("price_field", &self.price, &mut layout.price),
                ("amount_field", &self.amount, &mut layout.amount),
            ] {
                match cols.column(field) {
                    Some(Column::Field(
                        t @ (FieldType::Float | FieldType::Integer | FieldType::Unsigned),
                    )) => *slot = t,
                    // Old collectors wrote numbers as text: rows parse each value,
                    // and those that are not numbers are skipped and counted.
                    Some(Column::Field(FieldType::String)) => *slot = FieldType::String,
                    Some(other) => {
                        return Err(format!(
                            "schema.{key} = {field:?}: in measurement {name:?} it is {other}, not a number"
                        ));
                    }
                    None => return Err(what_is(key, field)),
                }
            }
            if let Some(spec) = &self.side {
                let column = match cols.column(&spec.column) {
                    Some(
                        c @ (Column::Tag | Column::Field(FieldType::String | FieldType::Boolean)),
                    ) => c,
                    Some(other) => {
                        return Err(format!(
                            "schema.side = {:?}: in measurement {name:?} it is {other}; a side is a tag, a string field or a boolean field",
                            spec.column
                        ));
                    }
                    None => return Err(what_is("side", &spec.column)),
                };
                if let Some(earlier) = layout.side.filter(|c| *c != column) {
                    return Err(format!(
                        "schema.side = {:?} is {earlier} in one measurement and {column} in {name:?}",
                        spec.column
                    ));
                }
                if column == Column::Field(FieldType::Boolean) {
                    for value in [&spec.buy, &spec.sell] {
                        if !["true", "false"].contains(&value.to_ascii_lowercase().as_str()) {
                            return Err(format!(
                                "schema.side = {:?} is a boolean field in {name:?}, so schema.side_buy and schema.side_sell must be true and false (Binance's is_buyer_maker: side_buy = \"false\", side_sell = \"true\"), got {value:?}",
                                spec.column
                            ));
                        }
                    }
                }
                layout.side = Some(column);
            }
            if let Some(id) = &self.id {
                match cols.column(id) {
                    Some(
                        c @ (Column::Field(
                            FieldType::Integer | FieldType::Unsigned | FieldType::String,
                        )
                        | Column::Tag),
                    ) => layout.id = Some(c),
                    Some(other) => {
                        return Err(format!(
                            "schema.id_field = {id:?}: in measurement {name:?} it is {other}; an id is an integer or a string"
                        ));
                    }
                    None => return Err(what_is("id_field", id)),
                }
            }
        }
        Ok(layout)
    }

    /// The layout of an empty database: how ohlcd writes this schema (float
    /// price and amount, an integer id, the side a tag, or a boolean field
    /// where its values are `true` and `false`).
    pub fn natural_layout(&self) -> Layout {
        Layout {
            schema: self.clone(),
            measurements: self
                .measurements
                .iter()
                .filter_map(|m| match m {
                    MeasurementName::Literal(name) => Some((name.clone(), None)),
                    MeasurementName::Pattern { .. } => None,
                })
                .collect(),
            price: FieldType::Float,
            amount: FieldType::Float,
            // Side values true/false (Binance's is_buyer_maker) are a boolean
            // field as such collectors write them; any other side a tag.
            side: self.side.as_ref().map(|spec| {
                let boolean =
                    |v: &str| ["true", "false"].contains(&v.to_ascii_lowercase().as_str());
                if boolean(&spec.buy) && boolean(&spec.sell) {
                    Column::Field(FieldType::Boolean)
                } else {
                    Column::Tag
                }
            }),
            id: self.id.as_ref().map(|_| Column::Field(FieldType::Integer)),
            natural: true,
            form: NameForm::of(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::samples::settings;

    fn columns(tags: &[&str], fields: &[(&str, FieldType)]) -> MeasurementColumns {
        MeasurementColumns {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            fields: fields.iter().map(|(f, t)| (f.to_string(), *t)).collect(),
        }
    }

    #[test]
    fn instruments_are_named_by_their_tags_with_the_exchange_first() {
        let two = TradeSchema::from_settings(&settings(&[("symbol_tags", "exchange,symbol")]))
            .unwrap()
            .natural_layout();
        let i = two.instrument("binance:BTCUSDT").unwrap();
        assert_eq!(i.tags, ["binance", "BTCUSDT"]);
        assert_eq!(i.name(), "binance:BTCUSDT");
        assert_eq!(two.instrument("BTCUSDT"), None);
        assert_eq!(two.instrument("binance:"), None);
        assert_eq!(two.instrument("a:b:c"), None);
        let mut server = BTreeMap::new();
        let cf = columns(
            &["symbol"],
            &[
                ("price", FieldType::Float),
                ("amount", FieldType::Float),
                ("side", FieldType::String),
                ("id", FieldType::String),
            ],
        );
        server.insert("trades-COINBASE".to_string(), cf.clone());
        server.insert("trades-BINANCE".to_string(), cf);
        let per_exchange =
            TradeSchema::from_settings(&settings(&[("trades_measurement", "trades-{exchange}")]))
                .unwrap()
                .resolve(&server)
                .unwrap();
        let i = per_exchange.instrument("COINBASE:BTC-USD").unwrap();
        assert_eq!(
            (i.exchange.as_deref(), i.tags.as_slice()),
            (Some("COINBASE"), &["BTC-USD".to_string()][..])
        );
        assert_eq!(
            per_exchange.measurement_of(&i).as_deref(),
            Some("trades-COINBASE")
        );
        assert_eq!(
            per_exchange.exchange_of("trades-BINANCE").as_deref(),
            Some("BINANCE")
        );
        assert_eq!(per_exchange.schema.candle_tags(), ["exchange", "symbol"]);
    }

    #[test]
    fn the_server_decides_tag_or_field_and_type() {
        let mut server = BTreeMap::new();
        server.insert(
            "trades".to_string(),
            columns(
                &["exchange", "symbol"],
                &[
                    ("price", FieldType::Float),
                    ("qty", FieldType::Float),
                    ("is_buyer_maker", FieldType::Boolean),
                    ("trade_id", FieldType::Integer),
                ],
            ),
        );
        server.insert(
            "ohlc_1m".to_string(),
            columns(&["symbol"], &[("open", FieldType::Float)]),
        );
        let binance = TradeSchema::from_settings(&settings(&[
            ("symbol_tags", "exchange,symbol"),
            ("amount_field", "qty"),
            ("side", "is_buyer_maker"),
            ("side_buy", "false"),
            ("side_sell", "true"),
            ("id_field", "trade_id"),
        ]))
        .unwrap()
        .resolve(&server)
        .unwrap();
        assert_eq!(binance.side, Some(Column::Field(FieldType::Boolean)));
        assert_eq!(binance.id, Some(Column::Field(FieldType::Integer)));
        assert!(!binance.natural);
        // A buyer who is the maker: the taker sold.
        assert_eq!(binance.side_of(Some("true")), Ok(Some(Side::Sell)));
        assert_eq!(binance.side_of(Some("FALSE")), Ok(Some(Side::Buy)));
        assert_eq!(binance.side_of(None), Err(SkipReason::UnknownSide));
        // The default schema on this database names what is missing and what is there.
        let err = TradeSchema::default().resolve(&server).unwrap_err();
        assert_eq!(
            err,
            "schema.amount_field = \"amount\": measurement \"trades\" has no such column; its tags and fields: exchange, symbol, is_buyer_maker, price, qty, trade_id"
        );
        let wrong = TradeSchema::from_settings(&settings(&[("trades_measurement", "trade")]))
            .unwrap()
            .resolve(&server)
            .unwrap_err();
        assert_eq!(
            wrong,
            "schema.trades_measurement = \"trade\": the database has no such measurement; its measurements: trades"
        );
    }

    #[test]
    fn an_empty_database_is_a_first_install_not_an_error() {
        let layout = TradeSchema::default().resolve(&BTreeMap::new()).unwrap();
        assert!(layout.natural);
        assert_eq!(layout.side, Some(Column::Tag));
        // Only candles so far (trades expired, or a fresh copy): still fine.
        let mut candles_only = BTreeMap::new();
        candles_only.insert(
            "ohlc_1d".to_string(),
            columns(&["symbol"], &[("open", FieldType::Float)]),
        );
        assert!(
            TradeSchema::default()
                .resolve(&candles_only)
                .unwrap()
                .natural
        );
    }

    #[test]
    fn a_boolean_side_needs_true_and_false_as_its_values() {
        let mut server = BTreeMap::new();
        server.insert(
            "trades".to_string(),
            columns(
                &["symbol"],
                &[
                    ("price", FieldType::Float),
                    ("amount", FieldType::Float),
                    ("side", FieldType::Boolean),
                ],
            ),
        );
        let err = TradeSchema::from_settings(&settings(&[("id_field", "")]))
            .unwrap()
            .resolve(&server)
            .unwrap_err();
        assert!(err.contains("must be true and false"), "{err}");
    }

    #[test]
    fn field_types_are_read_from_both_dialects() {
        for (s, t) in [
            ("float", FieldType::Float),
            ("Float64", FieldType::Float),
            ("integer", FieldType::Integer),
            ("Int64", FieldType::Integer),
            ("string", FieldType::String),
            ("Utf8", FieldType::String),
            ("boolean", FieldType::Boolean),
            ("Boolean", FieldType::Boolean),
            ("UInt64", FieldType::Unsigned),
        ] {
            assert_eq!(FieldType::parse(s), Some(t), "{s}");
        }
        assert_eq!(FieldType::parse("Dictionary(Int32, Utf8)"), None);
    }
}

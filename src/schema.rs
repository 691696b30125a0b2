//! Where a user's trades are in InfluxDB and how a row of them reads as a
//! trade: the `[schema]` section ([`SchemaSettings`]) parsed into a
//! [`TradeSchema`], and checked against what the server holds into a
//! [`Layout`] (which names are tags, which are fields of which type).
//!
//! Pure: no I/O. The InfluxDB client reads the server's tag and field keys and
//! hands them to [`TradeSchema::resolve`]; every query, decode and write then
//! takes its names from the [`Layout`].
//!
//! Instruments are named by their symbol tags joined with `:` (`binance:BTCUSDT`
//! for tags `exchange`, `symbol`); where the exchange comes from the
//! measurement name (`trades-{exchange}`, cryptofeed's one measurement per
//! exchange), it leads (`COINBASE:BTC-USD`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::candle::{Resolution, Side, SkipReason};
use crate::symbol::{NAME_SEPARATOR, NameForm};
use serde::Deserialize;

/// `[schema]`: the measurement, tag and field names of the user's trades, and
/// where candles go (see [`crate::schema`]). Lists are comma-separated in
/// the environment (`OHLCD_SCHEMA__SYMBOL_TAGS=exchange,symbol`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SchemaSettings {
    /// Measurement(s) of raw trades; `{exchange}` in a name matches any
    /// exchange (`trades-{exchange}`).
    #[serde(deserialize_with = "one_or_many")]
    pub trades_measurement: Vec<String>,
    /// Tag(s) naming an instrument, joined with `:` in its name.
    #[serde(deserialize_with = "one_or_many")]
    pub symbol_tags: Vec<String>,
    /// Price field.
    pub price_field: String,
    /// Amount field.
    pub amount_field: String,
    /// Tag or field holding the taker side; empty: the data has none.
    pub side: String,
    /// Its value for a taker buy (case-insensitive).
    pub side_buy: String,
    /// Its value for a taker sell (case-insensitive).
    pub side_sell: String,
    /// Integer or string trade id field; empty: none.
    pub id_field: String,
    /// Candle measurement, `{res}` standing for `1m` … `1d`.
    pub candles_measurement: String,
}

/// A list given as a list, or as one comma-separated string (`"trade"`,
/// `"exchange,symbol"`): what a user writes for a single name.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
        OneOrMany::Many(v) => v,
    })
}

impl Default for SchemaSettings {
    fn default() -> SchemaSettings {
        SchemaSettings {
            trades_measurement: vec!["trades".into()],
            symbol_tags: vec!["symbol".into()],
            price_field: "price".into(),
            amount_field: "amount".into(),
            side: "side".into(),
            side_buy: "buy".into(),
            side_sell: "sell".into(),
            id_field: "id".into(),
            candles_measurement: "ohlc_{res}".into(),
        }
    }
}

/// The placeholder in `schema.trades_measurement` that names the exchange.
pub const EXCHANGE_PLACEHOLDER: &str = "{exchange}";
/// The placeholder in `schema.candles_measurement` for the resolution.
pub const RESOLUTION_PLACEHOLDER: &str = "{res}";
/// The tag candles carry for an exchange taken from a measurement name.
pub const EXCHANGE_TAG: &str = "exchange";

/// One entry of `schema.trades_measurement`: a name, or a pattern with
/// `{exchange}` standing for any non-empty run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeasurementName {
    /// Exactly this measurement.
    Literal(String),
    /// Measurements `prefix + EXCHANGE + suffix`.
    Pattern {
        /// Text before `{exchange}`.
        prefix: String,
        /// Text after it.
        suffix: String,
    },
}

impl MeasurementName {
    fn parse(s: &str) -> Result<MeasurementName, String> {
        match s.split_once(EXCHANGE_PLACEHOLDER) {
            None => Ok(MeasurementName::Literal(s.to_string())),
            Some((prefix, suffix)) if !suffix.contains(EXCHANGE_PLACEHOLDER) => {
                Ok(MeasurementName::Pattern {
                    prefix: prefix.to_string(),
                    suffix: suffix.to_string(),
                })
            }
            Some(_) => Err(format!("{s:?} holds {EXCHANGE_PLACEHOLDER} twice")),
        }
    }

    /// The exchange `measurement` names under this entry: `Some(None)` for a
    /// literal match, `Some(Some(exchange))` for a pattern, `None` if it does
    /// not match.
    pub fn matches(&self, measurement: &str) -> Option<Option<String>> {
        match self {
            MeasurementName::Literal(name) => (name == measurement).then_some(None),
            MeasurementName::Pattern { prefix, suffix } => {
                let exchange = measurement
                    .strip_prefix(prefix.as_str())?
                    .strip_suffix(suffix.as_str())?;
                (!exchange.is_empty()).then(|| Some(exchange.to_string()))
            }
        }
    }
}

impl fmt::Display for MeasurementName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeasurementName::Literal(name) => f.write_str(name),
            MeasurementName::Pattern { prefix, suffix } => {
                write!(f, "{prefix}{EXCHANGE_PLACEHOLDER}{suffix}")
            }
        }
    }
}

/// The column holding a trade's taker side and its values for a taker buy and
/// sell (compared without regard to case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideSpec {
    /// Tag or field name.
    pub column: String,
    /// Value for a taker buy, e.g. `buy`, or `false` for Binance's `is_buyer_maker`.
    pub buy: String,
    /// Value for a taker sell.
    pub sell: String,
}

impl SideSpec {
    /// The side a stored value stands for; `None` for any other value. Case
    /// is ignored for ASCII letters only, exactly as the counting condition
    /// ([`crate::influx::layout`]) matches values, so counting and reading
    /// agree on every row.
    pub fn side_of(&self, value: &str) -> Option<Side> {
        self.side_of_bytes(value.as_bytes())
    }

    /// [`SideSpec::side_of`] of a value as raw bytes (a row's column).
    pub fn side_of_bytes(&self, value: &[u8]) -> Option<Side> {
        if value.eq_ignore_ascii_case(self.buy.as_bytes()) {
            Some(Side::Buy)
        } else if value.eq_ignore_ascii_case(self.sell.as_bytes()) {
            Some(Side::Sell)
        } else {
            None
        }
    }

    /// The stored value for `side`.
    pub fn value_of(&self, side: Side) -> &str {
        match side {
            Side::Buy => &self.buy,
            Side::Sell => &self.sell,
        }
    }
}

/// The `[schema]` section, parsed: where the trades are and what they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeSchema {
    /// Measurements of raw trades.
    pub measurements: Vec<MeasurementName>,
    /// Tags naming an instrument, in the order they are joined.
    pub symbol_tags: Vec<String>,
    /// Price field.
    pub price: String,
    /// Amount field.
    pub amount: String,
    /// Taker side, when the data has one.
    pub side: Option<SideSpec>,
    /// Trade id field, when the data has one.
    pub id: Option<String>,
    /// Candle measurement: text around `{res}`.
    candles: (String, String),
}

impl Default for TradeSchema {
    /// ohlcd's own schema (what `POST /api/trades` writes by default).
    fn default() -> TradeSchema {
        TradeSchema {
            measurements: vec![MeasurementName::Literal("trades".into())],
            symbol_tags: vec!["symbol".into()],
            price: "price".into(),
            amount: "amount".into(),
            side: Some(SideSpec {
                column: "side".into(),
                buy: "buy".into(),
                sell: "sell".into(),
            }),
            id: Some("id".into()),
            candles: ("ohlc_".into(), String::new()),
        }
    }
}

impl TradeSchema {
    /// Parses and checks `[schema]`; the error names the key.
    pub fn from_settings(s: &SchemaSettings) -> Result<TradeSchema, String> {
        let names = |key: &str, list: &[String]| -> Result<Vec<String>, String> {
            let out: Vec<String> = list
                .iter()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            if out.is_empty() {
                return Err(format!("schema.{key} is empty: name at least one"));
            }
            Ok(out)
        };
        let one = |key: &str, v: &str| -> Result<String, String> {
            let v = v.trim();
            if v.is_empty() {
                Err(format!("schema.{key} is empty"))
            } else {
                Ok(v.to_string())
            }
        };
        let measurements = names("trades_measurement", &s.trades_measurement)?
            .iter()
            .map(|m| {
                MeasurementName::parse(m).map_err(|e| format!("schema.trades_measurement: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let symbol_tags = names("symbol_tags", &s.symbol_tags)?;
        let mut seen = BTreeSet::new();
        if let Some(dup) = symbol_tags.iter().find(|t| !seen.insert(t.as_str())) {
            return Err(format!("schema.symbol_tags names {dup:?} twice"));
        }
        let exchange_from_name = measurements.len() > 1
            || measurements
                .iter()
                .any(|m| matches!(m, MeasurementName::Pattern { .. }));
        if exchange_from_name && symbol_tags.iter().any(|t| t == EXCHANGE_TAG) {
            return Err(format!(
                "schema.symbol_tags names {EXCHANGE_TAG:?}, but schema.trades_measurement takes the exchange from the measurement name: name one or the other"
            ));
        }
        let price = one("price_field", &s.price_field)?;
        let amount = one("amount_field", &s.amount_field)?;
        let side = match s.side.trim() {
            "" => None,
            column => {
                let buy = one("side_buy", &s.side_buy)?;
                let sell = one("side_sell", &s.side_sell)?;
                if buy.eq_ignore_ascii_case(&sell) {
                    return Err(format!(
                        "schema.side_buy and schema.side_sell are both {buy:?}: they must tell a taker buy from a sell"
                    ));
                }
                Some(SideSpec {
                    column: column.to_string(),
                    buy,
                    sell,
                })
            }
        };
        let id = Some(s.id_field.trim().to_string()).filter(|v| !v.is_empty());
        let candles = one("candles_measurement", &s.candles_measurement)?;
        let candles = match candles.split_once(RESOLUTION_PLACEHOLDER) {
            Some((a, b)) if !b.contains(RESOLUTION_PLACEHOLDER) => (a.to_string(), b.to_string()),
            _ => {
                return Err(format!(
                    "schema.candles_measurement = {candles:?} must hold {RESOLUTION_PLACEHOLDER} once, e.g. \"ohlc_{{res}}\": each resolution is its own measurement"
                ));
            }
        };
        let schema = TradeSchema {
            measurements,
            symbol_tags,
            price,
            amount,
            side,
            id,
            candles,
        };
        let mut columns = vec![
            ("price_field", schema.price.as_str()),
            ("amount_field", schema.amount.as_str()),
        ];
        columns.extend(schema.side.as_ref().map(|s| ("side", s.column.as_str())));
        columns.extend(schema.id.as_deref().map(|id| ("id_field", id)));
        columns.extend(
            schema
                .symbol_tags
                .iter()
                .map(|t| ("symbol_tags", t.as_str())),
        );
        for (i, (key, name)) in columns.iter().enumerate() {
            if let Some((other, _)) = columns[..i].iter().find(|(_, n)| n == name) {
                return Err(format!(
                    "schema.{key} and schema.{other} are both {name:?}: each names its own column"
                ));
            }
        }
        for (i, m) in schema.candle_measurements().iter().enumerate() {
            if schema.measurements.iter().any(|t| t.matches(m).is_some()) {
                return Err(format!(
                    "schema.candles_measurement makes {m:?} ({}), which schema.trades_measurement also matches: candles must not land among the trades",
                    Resolution::ALL[i]
                ));
            }
        }
        Ok(schema)
    }

    /// The candle measurement of `res`, e.g. `ohlc_1m` or `trade_ohlc_1m`.
    pub fn candle_measurement(&self, res: Resolution) -> String {
        format!("{}{}{}", self.candles.0, res.name(), self.candles.1)
    }

    /// Every candle measurement, in [`Resolution::ALL`] order.
    pub fn candle_measurements(&self) -> [String; 6] {
        Resolution::ALL.map(|r| self.candle_measurement(r))
    }

    /// Whether instruments are named with an exchange taken from the
    /// measurement name (a `{exchange}` pattern, or several measurements).
    pub fn exchange_from_measurement(&self) -> bool {
        self.measurements.len() > 1
            || self
                .measurements
                .iter()
                .any(|m| matches!(m, MeasurementName::Pattern { .. }))
    }

    /// How many `:`-separated parts an instrument name has.
    pub fn name_parts(&self) -> usize {
        self.symbol_tags.len() + usize::from(self.exchange_from_measurement())
    }

    /// The tags candles carry, in order: the exchange tag first where the
    /// exchange comes from the measurement name, then the symbol tags.
    pub fn candle_tags(&self) -> Vec<String> {
        let mut tags = Vec::new();
        if self.exchange_from_measurement() {
            tags.push(EXCHANGE_TAG.to_string());
        }
        tags.extend(self.symbol_tags.iter().cloned());
        tags
    }

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

impl NameForm {
    /// The form of `schema`'s names.
    pub fn of(schema: &TradeSchema) -> NameForm {
        let mut parts = Vec::with_capacity(schema.name_parts());
        if schema.exchange_from_measurement() {
            parts.push(EXCHANGE_TAG.to_ascii_uppercase());
        }
        parts.extend(schema.symbol_tags.iter().cloned());
        NameForm::new(parts)
    }
}

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

/// A measurement as a test server holds it: name, tags, fields and types.
#[cfg(test)]
pub(crate) type TestMeasurement<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, FieldType)]);

/// A layout for tests: `[schema]` keys set as `pairs` (lists comma-separated),
/// matched against a server holding `server`.
#[cfg(test)]
pub(crate) fn layout_for(pairs: &[(&str, &str)], server: &[TestMeasurement<'_>]) -> Layout {
    let mut s = SchemaSettings::default();
    for (k, v) in pairs {
        let list = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
        match *k {
            "trades_measurement" => s.trades_measurement = list(v),
            "symbol_tags" => s.symbol_tags = list(v),
            "price_field" => s.price_field = v.to_string(),
            "amount_field" => s.amount_field = v.to_string(),
            "side" => s.side = v.to_string(),
            "side_buy" => s.side_buy = v.to_string(),
            "side_sell" => s.side_sell = v.to_string(),
            "id_field" => s.id_field = v.to_string(),
            "candles_measurement" => s.candles_measurement = v.to_string(),
            other => panic!("no key {other}"),
        }
    }
    let columns = server
        .iter()
        .map(|(m, tags, fields)| {
            (
                m.to_string(),
                MeasurementColumns {
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                    fields: fields.iter().map(|(f, t)| (f.to_string(), *t)).collect(),
                },
            )
        })
        .collect();
    TradeSchema::from_settings(&s)
        .unwrap()
        .resolve(&columns)
        .unwrap()
}

/// The layouts of the three writers ohlcd is tested against, as their
/// servers hold them (tests).
#[cfg(test)]
pub(crate) mod samples {
    use super::{FieldType, Layout, layout_for};

    /// The original POC: measurement `trade`, tags `side`, `source`,
    /// `symbol`, fields `price`, `amount`, no id.
    pub(crate) fn poc() -> Layout {
        layout_for(
            &[
                ("trades_measurement", "trade"),
                ("id_field", ""),
                ("candles_measurement", "ohlc_{res}"),
            ],
            &[(
                "trade",
                &["side", "source", "symbol"],
                &[("amount", FieldType::Float), ("price", FieldType::Float)],
            )],
        )
    }

    /// cryptofeed: one measurement per exchange, side and id string fields.
    pub(crate) fn cryptofeed() -> Layout {
        let fields: &[(&str, FieldType)] = &[
            ("price", FieldType::Float),
            ("amount", FieldType::Float),
            ("side", FieldType::String),
            ("id", FieldType::String),
            ("type", FieldType::String),
            ("timestamp", FieldType::Float),
            ("receipt_timestamp", FieldType::Float),
        ];
        layout_for(
            &[("trades_measurement", "trades-{exchange}")],
            &[
                ("trades-COINBASE", &["symbol"], fields),
                ("trades-BINANCE", &["symbol"], fields),
            ],
        )
    }

    /// A collector keyed by exchange and symbol with Binance's
    /// `is_buyer_maker` and an integer `trade_id`.
    pub(crate) fn binance() -> Layout {
        layout_for(
            &[
                ("symbol_tags", "exchange,symbol"),
                ("amount_field", "qty"),
                ("side", "is_buyer_maker"),
                ("side_buy", "false"),
                ("side_sell", "true"),
                ("id_field", "trade_id"),
            ],
            &[(
                "trades",
                &["exchange", "symbol"],
                &[
                    ("price", FieldType::Float),
                    ("qty", FieldType::Float),
                    ("is_buyer_maker", FieldType::Boolean),
                    ("trade_id", FieldType::Integer),
                ],
            )],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> SchemaSettings {
        let mut s = SchemaSettings::default();
        for (k, v) in pairs {
            let list = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
            match *k {
                "trades_measurement" => s.trades_measurement = list(v),
                "symbol_tags" => s.symbol_tags = list(v),
                "price_field" => s.price_field = v.to_string(),
                "amount_field" => s.amount_field = v.to_string(),
                "side" => s.side = v.to_string(),
                "side_buy" => s.side_buy = v.to_string(),
                "side_sell" => s.side_sell = v.to_string(),
                "id_field" => s.id_field = v.to_string(),
                "candles_measurement" => s.candles_measurement = v.to_string(),
                other => panic!("no key {other}"),
            }
        }
        s
    }

    fn columns(tags: &[&str], fields: &[(&str, FieldType)]) -> MeasurementColumns {
        MeasurementColumns {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            fields: fields.iter().map(|(f, t)| (f.to_string(), *t)).collect(),
        }
    }

    #[test]
    fn the_default_section_is_ohlcds_own_schema() {
        let schema = TradeSchema::from_settings(&SchemaSettings::default()).unwrap();
        assert_eq!(schema, TradeSchema::default());
        assert_eq!(schema.candle_measurement(Resolution::H4), "ohlc_4h");
        assert_eq!(schema.name_parts(), 1);
    }

    #[test]
    fn bad_sections_are_refused_naming_the_key() {
        for (pairs, key) in [
            (
                &[("trades_measurement", "")][..],
                "schema.trades_measurement",
            ),
            (&[("symbol_tags", ",")], "schema.symbol_tags"),
            (&[("symbol_tags", "symbol,symbol")], "schema.symbol_tags"),
            (&[("price_field", " ")], "schema.price_field"),
            (&[("side_buy", "SELL")], "schema.side_buy"),
            (
                &[("candles_measurement", "candles")],
                "schema.candles_measurement",
            ),
            (
                &[("candles_measurement", "ohlc_{res}_{res}")],
                "schema.candles_measurement",
            ),
            (
                &[("trades_measurement", "t{exchange}{exchange}")],
                "schema.trades_measurement",
            ),
            (&[("amount_field", "price")], "schema.amount_field"),
            (
                &[("trades_measurement", "ohlc_{exchange}")],
                "schema.candles_measurement",
            ),
        ] {
            let err = TradeSchema::from_settings(&settings(pairs)).unwrap_err();
            assert!(err.starts_with(key), "{pairs:?}: {err}");
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

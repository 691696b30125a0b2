//! Where a user's trades are in InfluxDB and how a row of them reads as a
//! trade: the `[schema]` section ([`SchemaSettings`]) parsed into a
//! [`TradeSchema`], and checked against what the server holds into a
//! [`Layout`](layout::Layout) (which names are tags, which are fields of
//! which type).
//!
//! Pure: no I/O. The InfluxDB client reads the server's tag and field keys and
//! hands them to [`TradeSchema::resolve`]; every query, decode and write then
//! takes its names from the [`Layout`](layout::Layout).
//!
//! Instruments are named by their symbol tags joined with `:` (`binance:BTCUSDT`
//! for tags `exchange`, `symbol`); where the exchange comes from the
//! measurement name (`trades-{exchange}`, cryptofeed's one measurement per
//! exchange), it leads (`COINBASE:BTC-USD`).
//!
//! Modules: this one is the `[schema]` section and the [`TradeSchema`] it
//! parses into; [`layout`] the `Layout` it resolves to against the server,
//! and the kinds of its columns.

use std::collections::BTreeSet;
use std::fmt;

use crate::candle::{Resolution, Side};
use crate::symbol::NameForm;
use serde::Deserialize;

pub mod layout;
#[cfg(test)]
pub(crate) mod samples;

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

#[cfg(test)]
mod tests {
    use super::samples::settings;
    use super::*;

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
}

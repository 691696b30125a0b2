//! The trade ingest path: the trade rules (`rules`, re-exported here) and the
//! line-protocol encoding of raw trades into the configured schema
//! (measurement `trades` in ohlcd's own), shared by `ohlcd generate` and the
//! HTTP API; [`wire`], the body of `POST /api/trades`; [`late`], the late-trade rule.
//!
//! InfluxDB keeps one point per (measurement, tag set, timestamp): a second write
//! overwrites the first. Trades carry millisecond times, so two trades of one symbol
//! and side in the same millisecond would collide. We therefore store each trade at
//! `time_ms * 1_000_000 + (id mod 1_000_000)` nanoseconds: the sub-millisecond digits
//! hold the low six digits of the trade id. Distinct trades in one millisecond get
//! distinct timestamps (unless a million ids apart), and re-sending the same trade
//! (same id) lands on the same point and overwrites it: no double count.
//! The id itself is also kept as an integer field, and ordering by `(time, id)` still
//! puts trades of different milliseconds in time order.

use bytes::Bytes;

use crate::candle::Side;
#[cfg(test)]
use crate::influx::TRADES_MEASUREMENT;
use crate::influx::encode::{push_float, push_tag_value};
use crate::influx::{InfluxClient, InfluxError};
use crate::schema::layout::{Column, FieldType, Layout};

pub mod late;
mod rules;
pub mod wire;

pub use rules::{
    MAX_FUTURE_MS, MAX_TIME_MS, MIN_TIME_MS, NewTrade, SUB_MS_SLOTS, point_time, time_refusal,
};

/// Trades per write request on the ingest path.
pub const INGEST_BATCH: usize = 100_000;

/// Line protocol for trades in ohlcd's own schema:
/// `trades,side=…,symbol=… price=…,amount=…,id=…i <ns>` ([`TradeWriter`]).
pub fn encode_trades(trades: &[NewTrade]) -> Vec<u8> {
    TradeWriter::new(&Layout::default())
        .and_then(|w| w.encode(trades))
        .expect("ohlcd's own schema writes every trade")
}

/// Where a tag of a trade line takes its value.
#[derive(Debug, Clone, Copy)]
enum TagValue {
    /// This symbol tag's part of the name.
    Part(usize),
    /// The side, as `schema.side_buy` / `side_sell` spell it.
    Side,
}

/// How a field of a trade line is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    /// `name="text"`.
    Text,
    /// `name=true` / `false`.
    Boolean,
    /// `name=7i`.
    Integer,
}

/// Writes trades as the configured schema holds them on the server: the
/// measurement (one per exchange for a `{exchange}` pattern), the symbol tags
/// from the parts of the name, the side as a tag or a string or boolean field
/// with the configured values, the id as an integer or string field or not at
/// all, so that reading them back gives the same trades.
///
/// A schema that cannot be written faithfully is refused rather than written
/// in a second format: price or amount the server holds as anything but a
/// float, an id held as a tag or unsigned integer. Each trade is stored at
/// [`point_time`] whether or not the schema keeps the id.
///
/// This is the ingest hot path, so lines are written directly (ryu, itoa)
/// rather than through `influxdb_line_protocol::LineProtocolBuilder`, whose
/// `fmt`-based formatting made encoding cost three times the JSON parse
/// (criterion `ingest_10k`). A test checks both produce the same bytes.
#[derive(Debug)]
pub struct TradeWriter<'l> {
    layout: &'l Layout,
    /// The measurement, escaped, unless it comes from the name's exchange.
    measurement: Option<Vec<u8>>,
    /// Tags in key order: `,key=` escaped, and where the value comes from.
    tags: Vec<(Vec<u8>, TagValue)>,
    /// ` price=` and `,amount=`, escaped.
    price: Vec<u8>,
    amount: Vec<u8>,
    /// `,side=` or `,is_buyer_maker=` and how its value is spelled.
    side_field: Option<(Vec<u8>, FieldKind)>,
    /// `,id=` and how its value is spelled.
    id_field: Option<(Vec<u8>, FieldKind)>,
}

/// Appends a tag or field key with line-protocol escaping.
fn push_key(out: &mut Vec<u8>, key: &str) {
    push_tag_value(out, key);
}

/// Appends a string field value: `"…"` with `"` and `\` escaped.
fn push_string_field(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

impl<'l> TradeWriter<'l> {
    /// A writer for `layout`, or why trades cannot be written into it
    /// faithfully.
    pub fn new(layout: &'l Layout) -> Result<TradeWriter<'l>, String> {
        let s = &layout.schema;
        for (key, name, kind) in [
            ("price_field", &s.price, layout.price),
            ("amount_field", &s.amount, layout.amount),
        ] {
            if kind != FieldType::Float {
                return Err(format!(
                    "schema.{key} = {name:?} is {} on the server, and trades are written with float prices and amounts: \
                     writing them would make a second format there, so ohlcd does not write trades into this schema",
                    Column::Field(kind)
                ));
            }
        }
        let mut tags: Vec<(String, TagValue)> = s
            .symbol_tags
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), TagValue::Part(i)))
            .collect();
        let mut side_field = None;
        if let Some(spec) = &s.side {
            match layout.side {
                Some(Column::Tag) => tags.push((spec.column.clone(), TagValue::Side)),
                Some(Column::Field(FieldType::String)) => {
                    side_field = Some((spec.column.as_str(), FieldKind::Text))
                }
                Some(Column::Field(FieldType::Boolean)) => {
                    side_field = Some((spec.column.as_str(), FieldKind::Boolean))
                }
                other => {
                    return Err(format!(
                        "schema.side = {:?} is {} on the server: a side is written as a tag, a string field or a boolean field",
                        spec.column,
                        other.map_or("missing".to_string(), |c| c.to_string())
                    ));
                }
            }
        }
        let id_field = match (&s.id, layout.id) {
            (None, _) => None,
            (Some(id), Some(Column::Field(FieldType::Integer))) => {
                Some((id.as_str(), FieldKind::Integer))
            }
            (Some(id), Some(Column::Field(FieldType::String))) => {
                Some((id.as_str(), FieldKind::Text))
            }
            (Some(id), other) => {
                return Err(format!(
                    "schema.id_field = {id:?} is {} on the server; ohlcd writes an id as an integer or a string field, \
                     so it does not write trades into this schema",
                    other.map_or("missing".to_string(), |c| c.to_string())
                ));
            }
        };
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        let key = |lead: &[u8], name: &str| {
            let mut out = lead.to_vec();
            push_key(&mut out, name);
            out.push(b'=');
            out
        };
        let measurement = if s.exchange_from_measurement() {
            None
        } else {
            let name = layout
                .measurement_for(None)
                .ok_or("schema.trades_measurement names no measurement")?;
            let mut out = Vec::new();
            crate::influx::layout::push_measurement(&mut out, &name);
            Some(out)
        };
        Ok(TradeWriter {
            layout,
            measurement,
            tags: tags.iter().map(|(t, v)| (key(b",", t), *v)).collect(),
            price: key(b" ", &s.price),
            amount: key(b",", &s.amount),
            side_field: side_field.map(|(n, k)| (key(b",", n), k)),
            id_field: id_field.map(|(n, k)| (key(b",", n), k)),
        })
    }

    /// The measurement `symbol`'s trades are written to, or why it has none.
    pub fn measurement_of(&self, symbol: &str) -> Result<String, String> {
        let parts = self.parts(symbol)?;
        if self.measurement.is_some() {
            return self
                .layout
                .measurement_for(None)
                .ok_or_else(|| "schema.trades_measurement names no measurement".to_string());
        }
        self.layout
            .measurement_for(Some(parts[0]))
            .ok_or_else(|| self.unplaced(symbol, parts[0]))
    }

    fn unplaced(&self, symbol: &str, exchange: &str) -> String {
        format!(
            "symbol {symbol:?}: no measurement of schema.trades_measurement = {:?} holds exchange {exchange:?}",
            self.layout
                .schema
                .measurements
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
        )
    }

    /// The parts of a name; in a one-part schema the whole name (validated
    /// before it comes here).
    fn parts<'n>(&self, symbol: &'n str) -> Result<Vec<&'n str>, String> {
        let form = self.layout.name_form();
        if form.parts() == 1 {
            return Ok(vec![symbol]);
        }
        let parts: Vec<&str> = symbol.split(crate::symbol::NAME_SEPARATOR).collect();
        if parts.len() != form.parts() {
            return Err(format!("symbol {symbol:?} is not of the form {form}"));
        }
        Ok(parts)
    }

    /// Line protocol for `trades`, or why one of them cannot be placed.
    pub fn encode(&self, trades: &[NewTrade]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(trades.len() * 96);
        let mut floats = ryu::Buffer::new();
        let mut ints = itoa::Buffer::new();
        let by_exchange = usize::from(self.measurement.is_none());
        // The measurement of the last exchange seen: trades come in runs.
        let mut placed: Option<(String, Vec<u8>)> = None;
        for t in trades {
            let parts = self.parts(&t.symbol)?;
            match &self.measurement {
                Some(m) => out.extend_from_slice(m),
                None => {
                    let exchange = parts[0];
                    if placed.as_ref().is_none_or(|(ex, _)| ex != exchange) {
                        let name = self
                            .layout
                            .measurement_for(Some(exchange))
                            .ok_or_else(|| self.unplaced(&t.symbol, exchange))?;
                        let mut m = Vec::new();
                        crate::influx::layout::push_measurement(&mut m, &name);
                        placed = Some((exchange.to_string(), m));
                    }
                    out.extend_from_slice(&placed.as_ref().expect("set above").1);
                }
            }
            for (key, value) in &self.tags {
                out.extend_from_slice(key);
                match value {
                    TagValue::Part(i) => push_tag_value(&mut out, parts[by_exchange + i]),
                    TagValue::Side => push_tag_value(&mut out, self.side_value(t.side)),
                }
            }
            out.extend_from_slice(&self.price);
            push_float(&mut out, &mut floats, t.price);
            out.extend_from_slice(&self.amount);
            push_float(&mut out, &mut floats, t.amount);
            if let Some((key, kind)) = &self.side_field {
                out.extend_from_slice(key);
                let value = self.side_value(t.side);
                match kind {
                    FieldKind::Boolean => {
                        out.extend_from_slice(value.to_ascii_lowercase().as_bytes())
                    }
                    _ => push_string_field(&mut out, value),
                }
            }
            if let Some((key, kind)) = &self.id_field {
                out.extend_from_slice(key);
                match kind {
                    FieldKind::Integer => {
                        out.extend_from_slice(ints.format(t.id).as_bytes());
                        out.push(b'i');
                    }
                    _ => push_string_field(&mut out, ints.format(t.id)),
                }
            }
            out.push(b' ');
            out.extend_from_slice(ints.format(point_time(t.time_ms, t.id)).as_bytes());
            out.push(b'\n');
        }
        Ok(out)
    }

    fn side_value(&self, side: Side) -> &str {
        match &self.layout.schema.side {
            Some(spec) => spec.value_of(side),
            None => side.as_str(),
        }
    }
}

/// Writes already validated trades into the configured schema
/// ([`TradeWriter`]), [`INGEST_BATCH`] per request. Fails with
/// [`InfluxError::Schema`], before writing anything, where the schema cannot
/// be written or a trade cannot be placed.
pub async fn write_trades(influx: &InfluxClient, trades: &[NewTrade]) -> Result<(), InfluxError> {
    let writer = TradeWriter::new(influx.layout()).map_err(InfluxError::Schema)?;
    for t in trades {
        writer
            .measurement_of(&t.symbol)
            .map_err(InfluxError::Schema)?;
    }
    for batch in trades.chunks(INGEST_BATCH) {
        let body = writer.encode(batch).map_err(InfluxError::Schema)?;
        influx.write_trades(Bytes::from(body)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::rules::tests::t;
    use super::*;

    #[test]
    fn trades_encode_with_side_and_symbol_tags_and_integer_id() {
        let lp = String::from_utf8(encode_trades(&[t(7, 1_700_000_000_123)])).unwrap();
        assert_eq!(
            lp,
            "trades,side=buy,symbol=BTCUSD price=100.5,amount=0.25,id=7i 1700000000123000007\n"
        );
    }

    fn named(symbol: &str, side: Side, id: i64) -> NewTrade {
        NewTrade {
            symbol: symbol.into(),
            side,
            price: 42000.5,
            amount: 0.25,
            time_ms: 1_704_067_200_123,
            id,
        }
    }

    fn written(layout: &Layout, trades: &[NewTrade]) -> String {
        String::from_utf8(TradeWriter::new(layout).unwrap().encode(trades).unwrap()).unwrap()
    }

    #[test]
    fn trades_are_written_as_each_writer_writes_them() {
        use crate::schema::samples::{binance, cryptofeed, poc};
        // The POC: side a tag, no id (the point time still keeps same-ms trades apart).
        assert_eq!(
            written(&poc(), &[named("BTCUSD", Side::Buy, 7)]),
            "trade,side=buy,symbol=BTCUSD price=42000.5,amount=0.25 1704067200123000007\n"
        );
        // cryptofeed: the exchange names the measurement; side and id are text.
        assert_eq!(
            written(
                &cryptofeed(),
                &[
                    named("COINBASE:BTC-USD", Side::Sell, 123456),
                    named("KRAKEN:XBT-USD", Side::Buy, 1)
                ]
            ),
            "trades-COINBASE,symbol=BTC-USD price=42000.5,amount=0.25,side=\"sell\",id=\"123456\" 1704067200123123456\n\
             trades-KRAKEN,symbol=XBT-USD price=42000.5,amount=0.25,side=\"buy\",id=\"1\" 1704067200123000001\n"
        );
        // Binance: a buyer who is the maker means the taker sold.
        assert_eq!(
            written(
                &binance(),
                &[
                    named("binance:BTCUSDT", Side::Sell, 123),
                    named("binance:BTCUSDT", Side::Buy, 124)
                ]
            ),
            "trades,exchange=binance,symbol=BTCUSDT price=42000.5,qty=0.25,is_buyer_maker=true,trade_id=123i 1704067200123000123\n\
             trades,exchange=binance,symbol=BTCUSDT price=42000.5,qty=0.25,is_buyer_maker=false,trade_id=124i 1704067200123000124\n"
        );
        // What each reads back as: the side each value stands for.
        let b = binance();
        assert_eq!(b.side_of(Some("true")), Ok(Some(Side::Sell)));
        let c = cryptofeed();
        assert_eq!(c.side_of(Some("sell")), Ok(Some(Side::Sell)));
    }

    #[test]
    fn a_schema_that_cannot_be_written_faithfully_is_refused() {
        use crate::schema::samples::layout_for;
        let integer_price = layout_for(
            &[],
            &[(
                "trades",
                &["symbol", "side"],
                &[
                    ("price", FieldType::Integer),
                    ("amount", FieldType::Float),
                    ("id", FieldType::Integer),
                ],
            )],
        );
        let why = TradeWriter::new(&integer_price).unwrap_err();
        assert!(
            why.starts_with("schema.price_field = \"price\" is an integer field"),
            "{why}"
        );
        let id_tag = layout_for(
            &[],
            &[(
                "trades",
                &["symbol", "side", "id"],
                &[("price", FieldType::Float), ("amount", FieldType::Float)],
            )],
        );
        assert!(
            TradeWriter::new(&id_tag)
                .unwrap_err()
                .starts_with("schema.id_field")
        );
        // Several named measurements: an exchange that is none of them has no place.
        let fields: &[(&str, FieldType)] = &[
            ("price", FieldType::Float),
            ("amount", FieldType::Float),
            ("id", FieldType::Integer),
        ];
        let two = layout_for(
            &[("trades_measurement", "coinbase,kraken")],
            &[
                ("coinbase", &["symbol", "side"], fields),
                ("kraken", &["symbol", "side"], fields),
            ],
        );
        let w = TradeWriter::new(&two).unwrap();
        assert_eq!(w.measurement_of("kraken:XBTUSD").unwrap(), "kraken");
        let why = w
            .encode(&[named("bitstamp:BTCUSD", Side::Buy, 1)])
            .unwrap_err();
        assert!(why.contains("\"bitstamp\""), "{why}");
        assert!(
            w.encode(&[named("BTCUSD", Side::Buy, 1)])
                .unwrap_err()
                .contains("form")
        );
    }

    #[test]
    fn the_direct_encoder_writes_what_the_line_protocol_builder_writes() {
        use influxdb_line_protocol::LineProtocolBuilder;
        let values = [
            0.1,
            1.0,
            3.0,
            100.5,
            1e-7,
            123456789.123,
            1e21,
            2.5e-300,
            42000.01,
        ];
        // Every price with every amount.
        let trades: Vec<NewTrade> = values
            .iter()
            .flat_map(|p| values.iter().map(move |a| (*p, *a)))
            .enumerate()
            .map(|(i, (price, amount))| NewTrade {
                symbol: "BTC-USD:X.1_a".into(),
                side: if i % 2 == 0 { Side::Buy } else { Side::Sell },
                price,
                amount,
                time_ms: 1_700_000_000_000 + i as i64,
                id: (i as i64) * 1_234_567,
            })
            .collect();
        let mut lp = LineProtocolBuilder::new();
        for t in &trades {
            lp = lp
                .measurement(TRADES_MEASUREMENT)
                .tag("side", t.side.as_str())
                .tag("symbol", &t.symbol)
                .field("price", t.price)
                .field("amount", t.amount)
                .field("id", t.id)
                .timestamp(point_time(t.time_ms, t.id))
                .close_line();
        }
        let ours = String::from_utf8(encode_trades(&trades)).unwrap();
        let theirs = String::from_utf8(lp.build()).unwrap();
        // Extreme magnitudes differ in spelling only (`1e21` against 22 digits;
        // InfluxDB reads both exactly): the parsed lines must be equal.
        use crate::influx::encode::parsed_lines;
        assert_eq!(parsed_lines(&ours), parsed_lines(&theirs));
        // Ordinary prices and amounts come out byte for byte the same.
        let ordinary = |x: f64| (1e-3..1e15).contains(&x);
        let mut compared = 0;
        for ((a, b), t) in ours.lines().zip(theirs.lines()).zip(&trades) {
            if ordinary(t.price) && ordinary(t.amount) {
                assert_eq!(a, b);
                compared += 1;
            }
        }
        assert_eq!(compared, 36, "6 ordinary prices × 6 ordinary amounts");
    }
}

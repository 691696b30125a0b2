//! The body of `POST /api/trades` as it arrives: one trade object or an array
//! of them, parsed all or nothing, strictly (every rejection names the trade
//! and the field at fault), with ids derived for trades sent without one so a
//! retried request lands on the same points.

use std::collections::HashMap;

use chrono::DateTime;
use serde_json::{Map, Value};

use super::{INGEST_BATCH, NewTrade};
use crate::candle::Side;
use crate::symbol::NameForm;

/// Why a body of trades was rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum TradesError {
    /// 400: malformed or invalid.
    Invalid(String),
    /// 413: more trades than one request may carry.
    TooMany(usize),
}

/// A stable 64-bit FNV-1a hash (std's hasher may change between releases, and
/// derived ids must stay the same for a retried request).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn field_err(i: usize, field: &str, msg: impl std::fmt::Display) -> TradesError {
    TradesError::Invalid(format!("trade {i}: {field}: {msg}"))
}

/// A timestamp as Unix milliseconds: an integer, or an RFC 3339 string. Whether
/// the time is accepted is the trade rule's business ([`NewTrade::validate`]).
fn parse_timestamp(i: usize, v: &Value) -> Result<i64, TradesError> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            field_err(
                i,
                "timestamp",
                format!("{n} is not a whole number of Unix milliseconds"),
            )
        }),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|_| field_err(i, "timestamp", format!("{s:?} is not RFC 3339"))),
        other => Err(field_err(
            i,
            "timestamp",
            format!("must be Unix milliseconds or an RFC 3339 string, got {other}"),
        )),
    }
}

fn parse_number(i: usize, obj: &Map<String, Value>, field: &str) -> Result<f64, TradesError> {
    match obj.get(field) {
        None => Err(field_err(i, field, "missing")),
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| field_err(i, field, format!("{n} is not a number we can read"))),
        Some(other) => Err(field_err(
            i,
            field,
            format!("must be a number, got {other}"),
        )),
    }
}

/// One trade of the general path: the JSON types are checked here, the values
/// by [`NewTrade::validate`], the rule the fast path, `generate` and the bench use.
fn parse_trade(
    i: usize,
    v: &Value,
    now_ms: i64,
    form: &NameForm,
) -> Result<(NewTrade, bool), TradesError> {
    let Value::Object(obj) = v else {
        return Err(TradesError::Invalid(format!(
            "trade {i}: must be a JSON object, got {v}"
        )));
    };
    const FIELDS: [&str; 6] = ["symbol", "price", "amount", "side", "timestamp", "id"];
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(field_err(
            i,
            unknown,
            "unknown field (expected symbol, price, amount, side, timestamp, id)",
        ));
    }
    let symbol = match obj.get("symbol") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(field_err(
                i,
                "symbol",
                format!("must be a string, got {other}"),
            ));
        }
        None => return Err(field_err(i, "symbol", "missing")),
    };
    let price = parse_number(i, obj, "price")?;
    let amount = parse_number(i, obj, "amount")?;
    let side = match obj.get("side") {
        Some(Value::String(s)) => s.parse::<Side>().map_err(|e| field_err(i, "side", e))?,
        Some(other) => {
            return Err(field_err(
                i,
                "side",
                format!("must be \"buy\" or \"sell\", got {other}"),
            ));
        }
        None => return Err(field_err(i, "side", "missing")),
    };
    let time_ms = match obj.get("timestamp") {
        Some(v) => parse_timestamp(i, v)?,
        None => return Err(field_err(i, "timestamp", "missing")),
    };
    let (id, has_id) = match obj.get("id") {
        None | Some(Value::Null) => (0, false),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(id) if id >= 0 => (id, true),
            _ => {
                return Err(field_err(
                    i,
                    "id",
                    format!("must be a whole number ≥ 0 below 2^63, got {n}"),
                ));
            }
        },
        Some(other) => return Err(field_err(i, "id", format!("must be a number, got {other}"))),
    };
    let trade = NewTrade {
        symbol,
        side,
        price,
        amount,
        time_ms,
        id,
    };
    trade
        .validate(now_ms, form)
        .map_err(|e| TradesError::Invalid(format!("trade {i}: {e}")))?;
    Ok((trade, has_id))
}

/// A trade as it comes over the wire, borrowed from the body where possible.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTrade<'a> {
    #[serde(borrow)]
    symbol: std::borrow::Cow<'a, str>,
    price: f64,
    amount: f64,
    #[serde(borrow)]
    side: std::borrow::Cow<'a, str>,
    timestamp: WireTime<'a>,
    #[serde(default)]
    id: Option<i64>,
}

/// Unix milliseconds (an integer) or an RFC 3339 string.
enum WireTime<'a> {
    Millis(i64),
    Text(std::borrow::Cow<'a, str>),
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for WireTime<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = WireTime<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("integer milliseconds or an RFC 3339 string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(WireTime::Millis(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(WireTime::Millis)
                    .map_err(|_| E::custom("timestamp out of range"))
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(WireTime::Text(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireTime::Text(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// The fast path for well-formed bodies: typed, borrowing deserialization with
/// the same checks as [`parse_trade`]. `None` on anything unusual, so the
/// `Value` path can say precisely what is wrong; accepting the same bodies with
/// the same values is what `tests/input_props.rs` checks.
fn parse_trades_fast(body: &[u8], now_ms: i64, form: &NameForm) -> Option<Vec<(NewTrade, bool)>> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    let wire: Vec<WireTrade> = match first {
        b'[' => serde_json::from_slice(body).ok()?,
        b'{' => vec![serde_json::from_slice(body).ok()?],
        _ => return None,
    };
    if wire.is_empty() || wire.len() > INGEST_BATCH {
        return None;
    }
    wire.into_iter()
        .map(|w| {
            let time_ms = match w.timestamp {
                WireTime::Millis(ms) => ms,
                WireTime::Text(s) => DateTime::parse_from_rfc3339(&s).ok()?.timestamp_millis(),
            };
            let trade = NewTrade {
                symbol: w.symbol.into_owned(),
                side: w.side.parse::<Side>().ok()?,
                price: w.price,
                amount: w.amount,
                time_ms,
                id: w.id.unwrap_or(0),
            };
            trade.validate(now_ms, form).ok()?;
            Some((trade, w.id.is_some()))
        })
        .collect()
}

/// The general path: any JSON, with an error naming the first bad trade and field.
fn parse_trades_checked(
    body: &[u8],
    now_ms: i64,
    form: &NameForm,
) -> Result<Vec<(NewTrade, bool)>, TradesError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| TradesError::Invalid(format!("body is not valid JSON: {e}")))?;
    let items: Vec<Value> = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        other => {
            return Err(TradesError::Invalid(format!(
                "body must be a trade object or an array of trades, got {}",
                match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    _ => "a string",
                }
            )));
        }
    };
    if items.is_empty() {
        return Err(TradesError::Invalid("no trades in the body".into()));
    }
    if items.len() > INGEST_BATCH {
        return Err(TradesError::TooMany(items.len()));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| parse_trade(i, v, now_ms, form))
        .collect()
}

/// Parses `POST /api/trades`: one trade object or an array of them, all or
/// nothing. Trades without an id get one derived from their content and their
/// position among identical trades of the request, so a retried request maps to
/// the same points (no double count) while identical trades in one request stay
/// distinct.
pub fn parse_trades(
    body: &[u8],
    now_ms: i64,
    form: &NameForm,
) -> Result<Vec<NewTrade>, TradesError> {
    let parsed = match parse_trades_fast(body, now_ms, form) {
        Some(parsed) => parsed,
        None => parse_trades_checked(body, now_ms, form)?,
    };
    let mut seen: HashMap<u64, u64> = HashMap::new();
    Ok(parsed
        .into_iter()
        .map(|(mut trade, has_id)| {
            if !has_id {
                let content = fnv1a(&[
                    trade.symbol.as_bytes(),
                    trade.side.as_str().as_bytes(),
                    &trade.time_ms.to_le_bytes(),
                    &trade.price.to_bits().to_le_bytes(),
                    &trade.amount.to_bits().to_le_bytes(),
                ]);
                let nth = seen.entry(content).or_insert(0);
                trade.id = (fnv1a(&[&content.to_le_bytes(), &nth.to_le_bytes()]) >> 1) as i64;
                *nth += 1;
            }
            trade
        })
        .collect())
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn trade(symbol: &str, side: Side, price: f64, amount: f64, time_ms: i64, id: i64) -> NewTrade {
        NewTrade {
            symbol: symbol.into(),
            side,
            price,
            amount,
            time_ms,
            id,
        }
    }

    #[test]
    fn the_fast_and_the_checked_path_agree_on_valid_bodies() {
        let cases = [
            (
                r#"{"symbol":"BTCUSD","price":1,"amount":2.5,"side":"buy","timestamp":1700000000123,"id":7}"#,
                (
                    trade("BTCUSD", Side::Buy, 1.0, 2.5, 1_700_000_000_123, 7),
                    true,
                ),
            ),
            (
                r#"[{"symbol":"B\u0054C","price":1e2,"amount":2,"side":"sell","timestamp":"2023-11-14T22:13:20.5+01:00","id":null}]"#,
                // 2023-11-14T21:13:20.5Z; no id given.
                (
                    trade("BTC", Side::Sell, 100.0, 2.0, 1_699_996_400_500, 0),
                    false,
                ),
            ),
        ];
        for (body, expected) in cases {
            let fast = parse_trades_fast(body.as_bytes(), NOW, &NameForm::default());
            assert_eq!(fast, Some(vec![expected.clone()]), "fast path: {body}");
            let checked = parse_trades_checked(body.as_bytes(), NOW, &NameForm::default());
            assert_eq!(checked, Ok(vec![expected]), "checked path: {body}");
        }
    }

    #[test]
    fn invalid_bodies_leave_the_fast_path_and_the_checked_path_names_the_field() {
        let base = |field: &str, value: &str| {
            let mut fields = [
                ("symbol", r#""BTCUSD""#),
                ("price", "1"),
                ("amount", "2"),
                ("side", r#""buy""#),
                ("timestamp", "1700000000000"),
                ("id", "1"),
            ];
            fields.iter_mut().find(|(k, _)| *k == field).unwrap().1 = value;
            let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(","))
        };
        // Each well-typed enough for the fast path's serde, so its checks are
        // what must refuse them.
        let cases = [
            (base("symbol", r#""BTC USD""#), "symbol"),
            (base("price", "-1"), "price"),
            (base("price", r#""1""#), "price"),
            (base("amount", "0"), "amount"),
            (base("side", r#""long""#), "side"),
            (base("timestamp", "1700000000000.5"), "timestamp"),
            // 1999-12-31T23:59:59.999Z, and an hour and a millisecond after NOW.
            (base("timestamp", "946684799999"), "timestamp"),
            (base("timestamp", "1800003600001"), "timestamp"),
            (base("id", "-1"), "id"),
        ];
        for (body, field) in &cases {
            assert_eq!(
                parse_trades_fast(body.as_bytes(), NOW, &NameForm::default()),
                None,
                "{body}"
            );
            match parse_trades_checked(body.as_bytes(), NOW, &NameForm::default()) {
                Err(TradesError::Invalid(m)) => {
                    assert!(m.starts_with(&format!("trade 0: {field}: ")), "{body}: {m}")
                }
                other => panic!("{body} gave {other:?}"),
            }
        }
        // A repeated key is not for serde's typed path; the checked one takes
        // the last value, as serde_json's `Value` does.
        let repeated = r#"{"symbol":"BTCUSD","price":1,"amount":2,"side":"buy","timestamp":1700000000000,"id":1,"id":2}"#;
        assert_eq!(
            parse_trades_fast(repeated.as_bytes(), NOW, &NameForm::default()),
            None
        );
        assert_eq!(
            parse_trades_checked(repeated.as_bytes(), NOW, &NameForm::default()),
            Ok(vec![(
                trade("BTCUSD", Side::Buy, 1.0, 2.0, 1_700_000_000_000, 2),
                true
            )])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_800_000_000_000;

    fn err(body: &str) -> String {
        match parse_trades(body.as_bytes(), NOW_MS, &NameForm::default()) {
            Err(TradesError::Invalid(m)) => m,
            other => panic!("{body} gave {other:?}"),
        }
    }

    #[test]
    fn one_trade_or_an_array_is_accepted_with_ms_or_rfc3339_times() {
        let one = r#"{"symbol":"BTCUSD","price":100.5,"amount":0.1,"side":"buy","timestamp":1700000000123,"id":7}"#;
        let t = parse_trades(one.as_bytes(), NOW_MS, &NameForm::default()).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].time_ms, t[0].id, t[0].side),
            (1_700_000_000_123, 7, Side::Buy)
        );
        let many = r#"[{"symbol":"ETHUSD","price":1,"amount":2,"side":"sell","timestamp":"2023-11-14T22:13:20.5Z"},
                       {"symbol":"ETHUSD","price":1,"amount":2,"side":"sell","timestamp":"2023-11-14T22:13:20.5Z"}]"#;
        let t = parse_trades(many.as_bytes(), NOW_MS, &NameForm::default()).unwrap();
        assert_eq!(t[0].time_ms, 1_700_000_000_500);
        assert_ne!(
            t[0].id, t[1].id,
            "identical id-less trades in one request stay distinct"
        );
        let again = parse_trades(many.as_bytes(), NOW_MS, &NameForm::default()).unwrap();
        assert_eq!(t, again, "a retried request derives the same ids");
    }

    #[test]
    fn rejections_name_the_first_bad_trade_and_field() {
        let ok =
            r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"buy","timestamp":1700000000000}"#;
        assert!(err(&format!("[{ok}, {{}}]")).starts_with("trade 1: symbol: missing"));
        assert!(err(r#"{"symbol":"BTC USD","price":1,"amount":1,"side":"buy","timestamp":1700000000000}"#).starts_with("trade 0: symbol"));
        assert!(err(r#"{"symbol":"BTCUSD","price":-1,"amount":1,"side":"buy","timestamp":1700000000000}"#).starts_with("trade 0: price"));
        assert!(err(r#"{"symbol":"BTCUSD","price":"1","amount":1,"side":"buy","timestamp":1700000000000}"#).starts_with("trade 0: price"));
        assert!(
            err(
                r#"{"symbol":"BTCUSD","price":1,"amount":0,"side":"buy","timestamp":1700000000000}"#
            )
            .starts_with("trade 0: amount")
        );
        assert!(err(r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"long","timestamp":1700000000000}"#).starts_with("trade 0: side"));
        assert!(
            err(r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"buy","timestamp":1.5}"#)
                .starts_with("trade 0: timestamp")
        );
        assert!(
            err(r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"buy","timestamp":5}"#)
                .starts_with("trade 0: timestamp")
        );
        assert!(
            err(
                r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"buy","timestamp":1900000000000}"#
            )
            .contains("future")
        );
        assert!(err(r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"buy","timestamp":1700000000000,"id":-3}"#).starts_with("trade 0: id"));
        assert!(err(r#"{"symbol":"BTCUSD","price":1,"amount":1,"side":"buy","timestamp":1700000000000,"px":1}"#).contains("unknown field"));
        assert!(err(r#"{"symbol":"BTCUSD","price":NaN}"#).starts_with("body is not valid JSON"));
        assert!(err(r#"{"symbol":"BTCUSD","price":1e400,"amount":1,"side":"buy","timestamp":1700000000000}"#).contains("JSON"));
        assert!(err("[]").contains("no trades"));
        assert!(err("42").contains("a number"));
        assert!(err(r#"[{"symbol":"BTCUSD""#).starts_with("body is not valid JSON"));
    }
}

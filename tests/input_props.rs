//! Hostile-input properties of the pure request parsers and encoders: they never
//! panic, accept exactly what the README's ingest and query rules allow, and what
//! they accept encodes to line protocol and InfluxQL that mean what was sent.
//!
//! The trade rules are checked against an oracle written here from the README
//! (`symbol` 1–32 of `A-Za-z0-9._-`, `price`/`amount` finite, > 0 and at most
//! 1e15, `side`
//! `buy`|`sell`, `timestamp` integer ms or RFC 3339 in 2000..2200 and at most an
//! hour ahead, `id` integer ≥ 0, no other fields); serde_json only tokenizes.

use std::collections::HashMap;

use chrono::DateTime;
use influxdb_line_protocol::{FieldValue, ParsedLine, parse_lines};
use ohlcd::candle::{Candle, Resolution, Side};
use ohlcd::datafeed::ChartResolution;
use ohlcd::influx::{encode_candles, quote_ident, quote_literal};
use ohlcd::ingest::wire::{TradesError, parse_trades};
use ohlcd::ingest::{NewTrade, encode_trades, point_time};
use ohlcd::schema::{SchemaSettings, TradeSchema};
use ohlcd::server::models::{
    Params, count_param, range_params, resolution_param, seconds_param, symbol_param,
};
use ohlcd::symbol::NameForm;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

/// The parser's "now" (2027-01-15), Unix milliseconds.
const NOW_MS: i64 = 1_800_000_000_000;
// The README's numbers, spelled out here rather than taken from the code under
// test: trades from 2000-01-01 to 2200-01-01 (UTC) and at most an hour ahead.
/// 2000-01-01T00:00:00Z, Unix milliseconds.
const MIN_MS: i64 = 946_684_800_000;
/// 2200-01-01T00:00:00Z, Unix milliseconds.
const MAX_MS: i64 = 7_258_118_400_000;
/// 2200-01-01T00:00:00Z, Unix seconds: query times are clamped to `0..=MAX_SECS`.
const MAX_SECS: i64 = 7_258_118_400;
const LATEST_MS: i64 = NOW_MS + 3_600_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // No regression files next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings that have broken parsers, quoting or line protocol elsewhere.
const NASTY: &[&str] = &[
    "",
    " ",
    "BTCUSD ",
    " BTCUSD",
    "BTC USD",
    "BTC,USD",
    "BTC=USD",
    "BTC\nUSD",
    "BTC\r\nUSD",
    "BTC\tUSD",
    "BTC\"USD",
    "BTC'USD",
    "BTC\\USD",
    "BTCUSD\\",
    "BTCUSD\0",
    "BTC\u{200b}USD",
    "\u{202e}DSUCTB",
    "\u{feff}BTCUSD",
    "БТК",
    "ＢＴＣＵＳＤ",
    "BTC\u{212a}",
    "İSTANBUL",
    "🚀",
    "₿",
    "BTCUSD' OR 1=1 --",
    "\"; DROP MEASUREMENT trades",
    "\\'",
    "'; DROP DATABASE ohlcd; --",
    "x' OR symbol =~ /.*/ --",
    "trades,side=buy price=1 1",
    "a=b c=d 123",
    "$(reboot)",
    "%27",
    "%00",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "buy",
    "sell",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e309",
    "null",
    "2024-01-01T00:00:00Z",
];

/// Number tokens, many of them not JSON at all.
const NUMBER_TOKENS: &[&str] = &[
    "0",
    "-0",
    "0.0",
    "-0.0",
    "1",
    "-1",
    "1.5",
    "1e308",
    "-1e308",
    "1e309",
    "-1e309",
    "1e-400",
    "5e-324",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "1E2",
    "1e+2",
    "NaN",
    "Infinity",
    "-Infinity",
    "01",
    "+1",
    ".5",
    "1.",
    "0x10",
    "1_000",
    "946684800000",
    "946684799999",
    "7258118400000",
    "7258118400001",
    "1800003600000",
    "1800003600001",
    "1700000000000.0",
    "1.7e12",
];

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A JSON string token: valid symbols, nasty strings, arbitrary unicode.
fn string_token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9._-]{1,32}",
        3 => prop::sample::select(NASTY).prop_map(str::to_string),
        1 => "[A-Za-z0-9._-]{28,36}",
        2 => any::<String>(),
        2 => "[a-zA-Z0-9 ,=\"'\\\\\n\t:._-]{0,12}",
    ]
    .prop_map(|s| json_str(&s))
}

fn number_token() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| format!("{x:?}")),
        (0.0f64..1e6).prop_map(|x| x.to_string()),
        prop::sample::select(NUMBER_TOKENS).prop_map(str::to_string),
    ]
}

/// Anything else a JSON field could hold (and some things JSON cannot).
fn other_token() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "null",
        "true",
        "false",
        "[]",
        "{}",
        "[1,2]",
        "[\"BTCUSD\"]",
        "{\"a\":1}",
        "{\"symbol\":\"BTCUSD\"}",
        "\"\\ud800\"",
        "\"\\u0000\"",
        "undefined",
        "'BTCUSD'",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    ])
    .prop_map(str::to_string)
}

fn any_token() -> impl Strategy<Value = String> {
    prop_oneof![string_token(), number_token(), other_token()]
}

fn rfc3339_token() -> impl Strategy<Value = String> {
    let offsets = prop::sample::select(vec!["Z", "z", "+00:00", "+05:30", "-08:00", "+14:00"]);
    let ms = prop_oneof![
        3 => MIN_MS - 1000..=LATEST_MS + 1000,
        // Year 0001 to 9999.
        1 => -62_135_596_800_000i64..253_402_300_799_999,
    ];
    (ms, offsets).prop_map(|(ms, off)| {
        let t = DateTime::from_timestamp_millis(ms).unwrap();
        json_str(&format!("{}{off}", t.format("%Y-%m-%dT%H:%M:%S%.3f")))
    })
}

fn symbol_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z0-9._-]{1,32}".prop_map(|s| json_str(&s)),
        1 => "[A-Za-z0-9._:-]{1,32}".prop_map(|s| json_str(&s)),
        2 => string_token(),
        1 => number_token(),
        1 => other_token(),
    ]
}

fn positive_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (prop::num::f64::POSITIVE | prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL)
            .prop_map(|x| format!("{x:?}")),
        1 => prop::sample::select(vec![
            "0",
            "-0",
            "0.0",
            "5e-324",
            "4.9e-324",
            "2e-324",
            "1.7976931348623157e308",
            "1.7976931348623159e308",
            "-5e-324",
        ])
        .prop_map(str::to_string),
        2 => number_token(),
        1 => string_token(),
        1 => other_token(),
    ]
}

fn side_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["buy", "sell"]).prop_map(json_str),
        2 => prop::sample::select(vec!["BUY", "Sell", " buy", "sell ", "b", "", "long", "buy\0"])
            .prop_map(json_str),
        1 => any_token(),
    ]
}

fn timestamp_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (MIN_MS - 1000..=LATEST_MS + 1000).prop_map(|ms| ms.to_string()),
        2 => prop::sample::select(vec![
            MIN_MS - 1,
            MIN_MS,
            LATEST_MS,
            LATEST_MS + 1,
            MAX_MS,
            MAX_MS + 1,
        ])
        .prop_map(|ms| ms.to_string()),
        1 => prop::sample::select(vec![
            "1999-12-31T23:59:59.999Z",
            "2000-01-01T00:00:00Z",
            "2000-01-01T05:30:00+05:30",
            "2027-01-15T09:00:00Z",
            "2027-01-15T09:00:00.001Z",
            "2027-01-15T08:00:00-01:00",
            "2027-01-15T08:00:00.001-01:00",
        ])
        .prop_map(json_str),
        3 => rfc3339_token(),
        1 => number_token(),
        1 => string_token(),
        1 => other_token(),
    ]
}

fn id_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0..=i64::MAX).prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "0",
            "-1",
            "-0",
            "9223372036854775807",
            "9223372036854775808",
            "1e2",
            "1.0",
        ])
        .prop_map(str::to_string),
        1 => Just("null".to_string()),
        1 => number_token(),
        1 => string_token(),
        1 => other_token(),
    ]
}

fn junk_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "Symbol",
            "price ",
            "PRICE",
            "px",
            "",
            "time",
            "ts",
            "side\0",
            "__proto__",
            "symbol\n",
            "id2",
            "symbol",
            "price",
            "id",
        ])
        .prop_map(str::to_string),
        any::<String>(),
    ]
}

/// One trade object as JSON text: a random subset of the six fields, sometimes
/// junk fields (possibly repeating a real key), in random order.
fn trade_object() -> impl Strategy<Value = String> {
    let field = |name: &'static str, value: BoxedStrategy<String>, p: f64| {
        prop::option::weighted(p, value.prop_map(move |v| (name.to_string(), v)))
    };
    (
        field("symbol", symbol_value().boxed(), 0.97),
        field("price", positive_value().boxed(), 0.97),
        field("amount", positive_value().boxed(), 0.97),
        field("side", side_value().boxed(), 0.97),
        field("timestamp", timestamp_value().boxed(), 0.97),
        field("id", id_value().boxed(), 0.5),
        prop_oneof![
            12 => Just(Vec::new()),
            1 => prop::collection::vec((junk_key(), any_token()), 1..3),
        ],
    )
        .prop_flat_map(|(s, p, a, sd, ts, id, junk)| {
            let mut pairs: Vec<(String, String)> =
                [s, p, a, sd, ts, id].into_iter().flatten().collect();
            pairs.extend(junk);
            Just(pairs).prop_shuffle()
        })
        .prop_map(|pairs| {
            let body: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}:{v}", json_str(k)))
                .collect();
            format!("{{{}}}", body.join(","))
        })
}

/// A request body: one object, an array of items, or some other JSON value.
fn trades_body() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => trade_object(),
        4 => prop_oneof![1 => Just(0usize), 9 => 1..5usize].prop_flat_map(|n| {
            prop::collection::vec(prop_oneof![19 => trade_object(), 1 => any_token()], n)
        })
        .prop_map(|items| format!("[{}]", items.join(","))),
        1 => any_token(),
    ]
}

/// The documented symbol rule, written independently of `NameForm::check`:
/// `parts` parts joined by `:`, each 1 to 32 of `A-Z a-z 0-9 . _ -`.
fn symbol_ok_for(s: &str, parts: usize) -> bool {
    let split: Vec<&str> = s.split(':').collect();
    split.len() == parts
        && split.iter().all(|p| {
            (1..=32).contains(&p.chars().count())
                && p.chars().all(|c| {
                    c.is_ascii_uppercase()
                        || c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || "._-".contains(c)
                })
        })
}

/// The rule in ohlcd's own schema: one part.
fn symbol_ok(s: &str) -> bool {
    symbol_ok_for(s, 1)
}

/// Names of a schema whose instruments are keyed by two tags
/// (`exchange:symbol`).
fn two_part_form() -> NameForm {
    let settings = SchemaSettings {
        symbol_tags: vec!["exchange".into(), "symbol".into()],
        ..SchemaSettings::default()
    };
    NameForm::of(&TradeSchema::from_settings(&settings).unwrap())
}

/// What the README says a body should give.
#[derive(Debug)]
enum Expect {
    /// Every trade valid.
    Trades(Vec<Valid>),
    NotJson,
    NotTrades,
    Empty,
    /// The first bad trade and every field of it that is bad (none: not an object).
    BadTrade(usize, Vec<String>),
}

fn time_ok(ms: i64) -> Option<i64> {
    ((MIN_MS..=MAX_MS).contains(&ms) && ms <= LATEST_MS).then_some(ms)
}

fn positive(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
        .filter(|x| x.is_finite() && *x > 0.0 && *x <= 1e15)
}

/// A valid trade as the oracle reads it: (symbol, side, price, amount, time_ms,
/// id if given).
type Valid = (String, Side, f64, f64, i64, Option<i64>);

type Checked = Result<Valid, Vec<String>>;

fn check_item(item: &Value) -> Checked {
    let Value::Object(obj) = item else {
        return Err(Vec::new());
    };
    let mut bad: Vec<String> = obj
        .keys()
        .filter(|k| !["symbol", "price", "amount", "side", "timestamp", "id"].contains(&k.as_str()))
        .cloned()
        .collect();
    let symbol = match obj.get("symbol") {
        Some(Value::String(s)) if symbol_ok(s) => Some(s.clone()),
        _ => None,
    };
    let price = positive(obj.get("price"));
    let amount = positive(obj.get("amount"));
    let side = match obj.get("side").and_then(Value::as_str) {
        Some("buy") => Some(Side::Buy),
        Some("sell") => Some(Side::Sell),
        _ => None,
    };
    let time = match obj.get("timestamp") {
        Some(Value::Number(n)) => n.as_i64().and_then(time_ok),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| time_ok(t.timestamp_millis())),
        _ => None,
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => Some(None),
        Some(v) => v.as_i64().filter(|n| *n >= 0).map(Some),
    };
    for (name, ok) in [
        ("symbol", symbol.is_some()),
        ("price", price.is_some()),
        ("amount", amount.is_some()),
        ("side", side.is_some()),
        ("timestamp", time.is_some()),
        ("id", id.is_some()),
    ] {
        if !ok {
            bad.push(name.to_string());
        }
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok((
        symbol.unwrap(),
        side.unwrap(),
        price.unwrap(),
        amount.unwrap(),
        time.unwrap(),
        id.unwrap(),
    ))
}

fn oracle(body: &[u8]) -> Expect {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Expect::NotJson;
    };
    let items = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => return Expect::NotTrades,
    };
    if items.is_empty() {
        return Expect::Empty;
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match check_item(item) {
            Ok(t) => out.push(t),
            Err(fields) => return Expect::BadTrade(i, fields),
        }
    }
    Expect::Trades(out)
}

/// `parse_trades` agrees with the oracle: accepted trades are the ones sent and
/// valid, rejections name the first bad trade and one of its bad fields.
fn check_parse(body: &[u8]) -> Result<(), TestCaseError> {
    let got = parse_trades(body, NOW_MS, &NameForm::default());
    let shown = String::from_utf8_lossy(body);
    match (oracle(body), got) {
        (Expect::Trades(expected), Ok(trades)) => {
            prop_assert_eq!(trades.len(), expected.len());
            for (t, (symbol, side, price, amount, time_ms, id)) in trades.iter().zip(&expected) {
                prop_assert!(
                    t.validate(NOW_MS, &NameForm::default()).is_ok(),
                    "{:?}: {:?}",
                    t,
                    t.validate(NOW_MS, &NameForm::default())
                );
                prop_assert_eq!(&t.symbol, symbol);
                prop_assert_eq!(t.side, *side);
                prop_assert_eq!(t.price.to_bits(), price.to_bits());
                prop_assert_eq!(t.amount.to_bits(), amount.to_bits());
                prop_assert_eq!(t.time_ms, *time_ms);
                if let Some(id) = id {
                    prop_assert_eq!(t.id, *id);
                }
            }
            // Identical id-less trades of one request must stay distinct points.
            let mut points: HashMap<(String, &str, i64), Vec<i64>> = HashMap::new();
            for (t, e) in trades.iter().zip(&expected) {
                if e.5.is_none() {
                    points
                        .entry((t.symbol.clone(), t.side.as_str(), t.time_ms))
                        .or_default()
                        .push(t.id);
                }
            }
            for ids in points.values() {
                let mut unique = ids.clone();
                unique.sort_unstable();
                unique.dedup();
                prop_assert_eq!(unique.len(), ids.len(), "derived ids collide: {:?}", ids);
            }
            check_derived_ids_ignore_other_trades(body, &trades, &expected)?;
            check_trades_round_trip(&trades)?;
        }
        (Expect::NotJson, Err(TradesError::Invalid(m))) => {
            prop_assert!(m.starts_with("body is not valid JSON"), "{}: {}", shown, m);
        }
        (Expect::NotTrades, Err(TradesError::Invalid(m))) => {
            prop_assert!(
                m.starts_with("body must be a trade object or an array of trades"),
                "{}: {}",
                shown,
                m
            );
        }
        (Expect::Empty, Err(TradesError::Invalid(m))) => {
            prop_assert_eq!(m, "no trades in the body");
        }
        (Expect::BadTrade(i, fields), Err(TradesError::Invalid(m))) => {
            let prefix = format!("trade {i}: ");
            prop_assert!(
                m.starts_with(&prefix),
                "{}: {} (expected {})",
                shown,
                m,
                prefix
            );
            let named = if fields.is_empty() {
                m.starts_with(&format!("trade {i}: must be a JSON object"))
            } else {
                fields
                    .iter()
                    .any(|f| m.starts_with(&format!("trade {i}: {f}: ")))
            };
            prop_assert!(
                named,
                "{}: {:?} names none of the bad fields {:?}",
                shown,
                m,
                fields
            );
        }
        (expected, got) => {
            return Err(TestCaseError::fail(format!(
                "{shown}: expected {expected:?}, parse_trades gave {got:?}"
            )));
        }
    }
    Ok(())
}

/// A trade without an id gets one from its content and its place among the
/// identical trades of its request (README), so it must not move when another,
/// different trade is sent first in the same request.
fn check_derived_ids_ignore_other_trades(
    body: &[u8],
    trades: &[NewTrade],
    expected: &[Valid],
) -> Result<(), TestCaseError> {
    let text = std::str::from_utf8(body).expect("accepted bodies are UTF-8");
    let text = text.trim_start_matches([' ', '\t', '\n', '\r']);
    let other =
        r#"{"symbol":"OTHER.PAD","price":1,"amount":1,"side":"buy","timestamp":1800000000000}"#;
    let padded = match text.strip_prefix('[') {
        Some(items) => format!("[{other},{items}"),
        None => format!("[{other},{text}]"),
    };
    let again = parse_trades(padded.as_bytes(), NOW_MS, &NameForm::default())
        .map_err(|e| TestCaseError::fail(format!("{padded}: {e:?}")))?;
    prop_assert_eq!(again.len(), trades.len() + 1);
    for ((t, e), a) in trades.iter().zip(expected).zip(&again[1..]) {
        if e.5.is_none() {
            prop_assert_eq!(t.id, a.id, "derived id moved: {:?}", t);
        }
    }
    Ok(())
}

fn parse_one_line<'a>(lp: &'a str, n: usize) -> Result<Vec<ParsedLine<'a>>, TestCaseError> {
    let lines = parse_lines(lp)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TestCaseError::fail(format!("{lp:?} does not parse: {e}")))?;
    prop_assert_eq!(lines.len(), n, "{:?}", lp);
    Ok(lines)
}

fn tags(line: &ParsedLine<'_>) -> Vec<(String, String)> {
    line.series
        .tag_set
        .iter()
        .flatten()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn float_bits(line: &ParsedLine<'_>, field: &str) -> Result<u64, TestCaseError> {
    match line.field_value(field) {
        Some(FieldValue::F64(x)) => Ok(x.to_bits()),
        other => Err(TestCaseError::fail(format!(
            "field {field}: expected a float, got {other:?}"
        ))),
    }
}

fn int(line: &ParsedLine<'_>, field: &str) -> Result<i64, TestCaseError> {
    match line.field_value(field) {
        Some(FieldValue::I64(n)) => Ok(*n),
        other => Err(TestCaseError::fail(format!(
            "field {field}: expected an integer, got {other:?}"
        ))),
    }
}

fn check_trades_round_trip(trades: &[NewTrade]) -> Result<(), TestCaseError> {
    let lp = String::from_utf8(encode_trades(trades)).expect("line protocol is UTF-8");
    let lines = parse_one_line(&lp, trades.len())?;
    for (line, t) in lines.iter().zip(trades) {
        prop_assert_eq!(line.series.measurement.as_str(), "trades");
        prop_assert_eq!(
            tags(line),
            vec![
                ("side".to_string(), t.side.as_str().to_string()),
                ("symbol".to_string(), t.symbol.clone()),
            ]
        );
        prop_assert_eq!(line.field_set.len(), 3);
        prop_assert_eq!(float_bits(line, "price")?, t.price.to_bits());
        prop_assert_eq!(float_bits(line, "amount")?, t.amount.to_bits());
        prop_assert_eq!(int(line, "id")?, t.id);
        prop_assert_eq!(line.timestamp, Some(point_time(t.time_ms, t.id)));
    }
    Ok(())
}

fn valid_trade() -> impl Strategy<Value = NewTrade> {
    (
        "[A-Za-z0-9._-]{1,32}",
        prop::bool::ANY,
        (prop::num::f64::POSITIVE | prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL)
            .prop_filter("at most 1e15", |x| *x <= 1e15),
        (prop::num::f64::POSITIVE | prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL)
            .prop_filter("at most 1e15", |x| *x <= 1e15),
        MIN_MS..=LATEST_MS,
        0..=i64::MAX,
    )
        .prop_map(|(symbol, buy, price, amount, time_ms, id)| NewTrade {
            symbol,
            side: if buy { Side::Buy } else { Side::Sell },
            price,
            amount,
            time_ms,
            id,
        })
}

fn finite() -> impl Strategy<Value = f64> {
    prop::num::f64::POSITIVE
        | prop::num::f64::NEGATIVE
        | prop::num::f64::NORMAL
        | prop::num::f64::SUBNORMAL
        | prop::num::f64::ZERO
}

fn any_candle() -> impl Strategy<Value = Candle> {
    (
        any::<i64>(),
        [finite(), finite(), finite(), finite()],
        [finite(), finite(), finite()],
        any::<i64>(),
    )
        .prop_map(
            |(start, [open, high, low, close], [v, qv, bv], trades)| Candle {
                start,
                open,
                high,
                low,
                close,
                volume: v,
                quote_volume: qv,
                trades,
                buy_volume: bv,
            },
        )
}

/// Decodes an InfluxQL quoted string or identifier the way influxql's
/// `ScanString` does: `\n`, `\\`, `\'` and `\"` are the only escapes, the first
/// unescaped quote ends it. Returns the decoded text and what follows the quote.
/// (InfluxQL also refuses a raw newline inside quotes, and influxd a raw `\r` or
/// NUL, which `quote_literal` passes through; not modelled here, as only
/// validated symbols and fixed names are ever quoted.)
fn scan_quoted(s: &str, quote: char) -> Result<(String, &str), String> {
    let mut chars = s.char_indices();
    if chars.next().map(|(_, c)| c) != Some(quote) {
        return Err(format!("{s:?} does not start with {quote}"));
    }
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Ok((out, &s[i + 1..]));
        }
        if c == '\\' {
            match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some('\'') => out.push('\''),
                Some('"') => out.push('"'),
                other => return Err(format!("{s:?}: bad escape \\{other:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Err(format!("{s:?} is not terminated"))
}

fn check_quoted(quoted: &str, input: &str, quote: char) -> Result<(), TestCaseError> {
    prop_assert!(quoted.len() >= 2, "{:?}", quoted);
    prop_assert!(
        quoted.starts_with(quote) && quoted.ends_with(quote),
        "{:?}",
        quoted
    );
    // Every quote inside is escaped: preceded by an odd run of backslashes.
    let bytes = quoted.as_bytes();
    for (i, b) in bytes.iter().enumerate().take(bytes.len() - 1).skip(1) {
        if char::from(*b) == quote {
            let run = bytes[..i].iter().rev().take_while(|b| **b == b'\\').count();
            prop_assert!(run % 2 == 1, "{:?}: quote at {} not escaped", quoted, i);
        }
    }
    let (decoded, rest) = scan_quoted(quoted, quote).map_err(TestCaseError::fail)?;
    prop_assert_eq!(rest, "", "{:?} ends early", quoted);
    prop_assert_eq!(decoded, input);
    Ok(())
}

fn quotable() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a\\\\'\"n ]{0,16}",
        prop::sample::select(NASTY).prop_map(str::to_string),
    ]
}

fn param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-+]?[0-9]{0,25}",
        "[0-9]{0,4}[DWMdwmHh]{0,2}",
        prop::sample::select(NASTY).prop_map(str::to_string),
        prop::sample::select(vec![
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "7258118400",
            "7258118401",
            "946684800",
            "1e3",
            "0x10",
            " 5",
            "5 ",
            "+5",
            "٣",
            "５",
            "1.0",
            "1441",
            "0",
            "00001",
            "365D",
            "366D",
            "52W",
            "53W",
            "12M",
            "13M",
            "D",
            "W",
            "M",
            "0D",
        ])
        .prop_map(str::to_string),
    ]
}

fn params(pairs: &[(&str, &Option<String>)]) -> Params {
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
        .collect()
}

/// Every resolution the README allows, by its canonical spelling: seconds
/// `nS` for `n` dividing 60 (below 60), minutes `1` … `1440`, `nD` (`D` =
/// `1D`) up to 365, `nW` up to 52, `nM` up to 12.
fn resolution_table() -> &'static HashMap<String, ChartResolution> {
    static TABLE: std::sync::OnceLock<HashMap<String, ChartResolution>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = HashMap::new();
        for n in [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30] {
            t.insert(format!("{n}S"), ChartResolution::Seconds(n));
        }
        for n in 1..=1440 {
            t.insert(format!("{n}"), ChartResolution::Minutes(n));
        }
        for (unit, max, make) in [
            (
                "D",
                365,
                ChartResolution::Days as fn(u32) -> ChartResolution,
            ),
            ("W", 52, ChartResolution::Weeks),
            ("M", 12, ChartResolution::Months),
        ] {
            t.insert(unit.to_string(), make(1));
            for n in 1..=max {
                t.insert(format!("{n}{unit}"), make(n));
            }
        }
        t
    })
}

/// What `s` should parse to: its entry in the table, leading zeros of a count
/// allowed (`005` is `5`) but not a zero count (`0D`).
fn resolution_ok(s: &str) -> Option<ChartResolution> {
    let unpadded = s.trim_start_matches('0');
    if unpadded.len() != s.len() && !unpadded.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    resolution_table().get(unpadded).copied()
}

/// What a seconds parameter should give, from the README: a whole number of
/// Unix seconds (optional sign, ASCII digits, fitting 64 bits), clamped to
/// 1970 … 2200; `None` when absent or empty, `Err` when not such a number.
fn seconds_ok(raw: Option<&str>) -> Result<Option<i64>, ()> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let digits = raw.strip_prefix(['-', '+']).unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    let mut n: i128 = 0;
    for b in digits.bytes() {
        n = (n * 10 + i128::from(b - b'0')).min(i128::from(u64::MAX));
    }
    if raw.starts_with('-') {
        n = -n;
    }
    if n < i128::from(i64::MIN) || n > i128::from(i64::MAX) {
        return Err(());
    }
    Ok(Some(if n < 0 {
        0
    } else if n > i128::from(MAX_SECS) {
        MAX_SECS
    } else {
        n as i64
    }))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_trade_parser_and_it_agrees_with_the_rules(
        body in prop::collection::vec(any::<u8>(), 0..300)
    ) {
        check_parse(&body)?;
    }

    #[test]
    fn generated_trade_bodies_are_accepted_exactly_when_every_trade_follows_the_rules(
        body in trades_body()
    ) {
        check_parse(body.as_bytes())?;
    }

    #[test]
    fn a_truncated_or_padded_trade_body_is_rejected_as_invalid_json(
        trade in valid_trade(),
        cut in any::<prop::sample::Index>(),
        junk in prop::sample::select(vec!["x", "}", "]", ",", "{}", "\0", "NaN"]),
    ) {
        let body = json!({"symbol": trade.symbol, "price": trade.price, "amount": trade.amount,
                          "side": trade.side.as_str(), "timestamp": trade.time_ms, "id": trade.id})
            .to_string();
        let truncated = &body.as_bytes()[..cut.index(body.len())];
        let padded = format!("{body}{junk}");
        for b in [truncated, padded.as_bytes()] {
            match parse_trades(b, NOW_MS, &NameForm::default()) {
                Err(TradesError::Invalid(m)) => prop_assert!(m.starts_with("body is not valid JSON"), "{}", m),
                other => {
                    return Err(TestCaseError::fail(format!("{:?} gave {other:?}", String::from_utf8_lossy(b))));
                }
            }
        }
    }

    #[test]
    fn valid_trades_survive_json_and_line_protocol_bit_for_bit(
        batch in prop::collection::vec((valid_trade(), prop::bool::ANY, prop::bool::ANY), 1..8)
    ) {
        let items: Vec<Value> = batch
            .iter()
            .map(|(t, with_id, rfc3339)| {
                let timestamp = if *rfc3339 {
                    json!(DateTime::from_timestamp_millis(t.time_ms).unwrap().to_rfc3339())
                } else {
                    json!(t.time_ms)
                };
                let mut v = json!({"symbol": t.symbol, "price": t.price, "amount": t.amount,
                                   "side": t.side.as_str(), "timestamp": timestamp});
                if *with_id {
                    v["id"] = json!(t.id);
                }
                v
            })
            .collect();
        let parsed = parse_trades(Value::Array(items).to_string().as_bytes(), NOW_MS, &NameForm::default())
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        for (p, (t, with_id, _)) in parsed.iter().zip(&batch) {
            let expected = NewTrade { id: if *with_id { t.id } else { p.id }, ..t.clone() };
            prop_assert_eq!(p, &expected);
            prop_assert!(p.id >= 0);
        }
        check_trades_round_trip(&parsed)?;
    }

    #[test]
    fn trades_at_any_valid_time_and_id_encode_to_one_parsable_line_each(
        mut batch in prop::collection::vec(valid_trade(), 1..8),
        times in prop::collection::vec(MIN_MS..=MAX_MS, 8),
    ) {
        for (t, ms) in batch.iter_mut().zip(times) {
            t.time_ms = ms;
            prop_assert!(t.validate(MAX_MS, &NameForm::default()).is_ok());
        }
        check_trades_round_trip(&batch)?;
    }

    #[test]
    fn finite_candles_encode_to_one_parsable_line_each_with_every_field_exact(
        res in prop::sample::select(Resolution::ALL.to_vec()),
        symbol in "[A-Za-z0-9._-]{1,32}",
        candles in prop::collection::vec(any_candle(), 1..6),
    ) {
        let lp = String::from_utf8(encode_candles(res, &symbol, &candles)).expect("UTF-8");
        let lines = parse_one_line(&lp, candles.len())?;
        for (line, c) in lines.iter().zip(&candles) {
            prop_assert_eq!(line.series.measurement.as_str(), res.measurement());
            prop_assert_eq!(tags(line), vec![("symbol".to_string(), symbol.clone())]);
            prop_assert_eq!(line.field_set.len(), 8);
            for (name, x) in [("open", c.open), ("high", c.high), ("low", c.low), ("close", c.close),
                              ("volume", c.volume), ("quote_volume", c.quote_volume),
                              ("buy_volume", c.buy_volume)] {
                prop_assert_eq!(float_bits(line, name)?, x.to_bits(), "{}", name);
            }
            prop_assert_eq!(int(line, "trades")?, c.trades);
            prop_assert_eq!(line.timestamp, Some(c.start));
        }
    }

    #[test]
    fn quoted_literals_and_identifiers_cannot_end_early_and_decode_to_the_input(
        s in quotable()
    ) {
        check_quoted(&quote_literal(&s), &s, '\'')?;
        check_quoted(&quote_ident(&s), &s, '"')?;
        // Spliced into a query, nothing after the literal is the caller's text.
        let q = format!("SELECT * FROM \"trades\" WHERE symbol = {}", quote_literal(&s));
        let tail = &q["SELECT * FROM \"trades\" WHERE symbol = ".len()..];
        let (decoded, rest) = scan_quoted(tail, '\'').map_err(TestCaseError::fail)?;
        prop_assert_eq!(decoded, s);
        prop_assert_eq!(rest, "");
    }

    #[test]
    fn the_symbol_rule_accepts_every_name_of_the_allowed_alphabet_and_form(
        s in "[A-Za-z0-9._-]{1,32}",
        t in "[A-Za-z0-9._-]{1,32}",
    ) {
        prop_assert_eq!(NameForm::default().check(&s), Ok(()));
        prop_assert_eq!(two_part_form().check(&format!("{s}:{t}")), Ok(()));
    }

    #[test]
    fn the_symbol_rule_accepts_exactly_one_to_32_allowed_characters(
        s in prop_oneof![
            "[A-Za-z0-9._:-]{0,40}",
            any::<String>(),
            ("[A-Za-z0-9._:-]{0,16}", any::<char>(), "[A-Za-z0-9._:-]{0,16}")
                .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
            prop::sample::select(NASTY).prop_map(str::to_string),
        ]
    ) {
        let got = NameForm::default().check(&s);
        prop_assert_eq!(got.is_ok(), symbol_ok(&s), "{:?}: {:?}", s, got);
        let got = two_part_form().check(&s);
        prop_assert_eq!(got.is_ok(), symbol_ok_for(&s, 2), "{:?}: {:?}", s, got);
    }

    #[test]
    fn symbol_and_resolution_parameters_accept_only_valid_values(
        symbol in prop::option::weighted(0.9, prop_oneof![param_value(), "[A-Za-z0-9._:-]{1,33}"]),
        resolution in prop::option::weighted(0.9, param_value()),
    ) {
        let p = params(&[("symbol", &symbol), ("resolution", &resolution)]);
        match symbol_param(&p, "symbol", &NameForm::default()) {
            Ok(s) => {
                prop_assert_eq!(Some(s.as_str()), symbol.as_deref());
                prop_assert!(symbol_ok(&s), "{:?}", s);
            }
            Err(m) => {
                prop_assert!(symbol.as_deref().is_none_or(|s| !symbol_ok(s)), "{:?} rejected: {}", symbol, m);
                prop_assert!(m == "missing parameter symbol" || m.starts_with("symbol: "), "{}", m);
            }
        }
        match resolution_param(&p, "resolution") {
            Ok(r) => {
                prop_assert_eq!(Some(r), resolution.as_deref().and_then(resolution_ok));
            }
            Err(m) => {
                prop_assert_eq!(resolution.as_deref().and_then(resolution_ok), None, "{}", m);
                prop_assert!(m == "missing parameter resolution" || m.starts_with("resolution: "), "{}", m);
            }
        }
    }

    #[test]
    fn every_chart_resolution_round_trips_through_display_and_from_str(
        r in prop_oneof![
            proptest::sample::select(vec![1u32, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30])
                .prop_map(ChartResolution::Seconds),
            (1u32..=1440).prop_map(ChartResolution::Minutes),
            (1u32..=365).prop_map(ChartResolution::Days),
            (1u32..=52).prop_map(ChartResolution::Weeks),
            (1u32..=12).prop_map(ChartResolution::Months),
        ]
    ) {
        prop_assert_eq!(r.to_string().parse::<ChartResolution>(), Ok(r));
        prop_assert_eq!(resolution_ok(&r.to_string()), Some(r));
    }

    #[test]
    fn time_and_count_parameters_stay_within_their_bounds(
        from in prop::option::weighted(0.9, param_value()),
        to in prop::option::weighted(0.7, param_value()),
        limit in prop::option::weighted(0.9, param_value()),
        now in 0..=MAX_SECS,
        max in 1u64..=100_000,
        default in 1u64..=100_000,
    ) {
        let p = params(&[("from", &from), ("to", &to), ("limit", &limit)]);
        let mut want = Vec::new();
        for (name, raw) in [("from", &from), ("to", &to)] {
            let expected = seconds_ok(raw.as_deref());
            match seconds_param(&p, name) {
                Ok(x) => prop_assert_eq!(Ok(x), expected, "{}={:?}", name, raw),
                Err(m) => {
                    prop_assert!(m.starts_with(&format!("{name}: ")), "{}", m);
                    prop_assert_eq!(expected, Err(()), "{}={:?} refused: {}", name, raw, m);
                }
            }
            want.push(expected);
        }
        // from is required, to defaults to now; the range must not be empty.
        let expected_range = match (want[0], want[1]) {
            (Ok(None), _) => Err("missing parameter from".to_string()),
            (Err(()), _) => Err("from: ".to_string()),
            (_, Err(())) => Err("to: ".to_string()),
            (Ok(Some(f)), Ok(t)) => {
                let t = t.unwrap_or(now);
                if f < t { Ok((f, t)) } else { Err(format!("from ({f}) must be before to ({t})")) }
            }
        };
        match (range_params(&p, now), expected_range) {
            (Ok(got), Ok(want)) => prop_assert_eq!(got, want),
            (Err(m), Err(prefix)) => prop_assert!(m.starts_with(&prefix), "{} (expected {})", m, prefix),
            (got, want) => {
                return Err(TestCaseError::fail(format!(
                    "from={from:?} to={to:?} now={now}: range_params gave {got:?}, expected {want:?}"
                )));
            }
        }
        let default = default.min(max);
        match count_param(&p, "limit", default, max) {
            Ok(n) => {
                prop_assert!((1..=max).contains(&n), "limit={:?} gave {}", limit, n);
                if limit.as_deref().is_none_or(str::is_empty) {
                    prop_assert_eq!(n, default);
                }
            }
            Err(m) => prop_assert!(m.starts_with("limit: "), "{}", m),
        }
    }
}

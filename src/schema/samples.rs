//! Layouts for tests: a `[schema]` section matched against a made-up server
//! ([`layout_for`]), and the layouts of the three writers ohlcd is tested
//! against, as their servers hold them ([`poc`], [`cryptofeed`],
//! [`binance`]).

use super::layout::{FieldType, Layout, MeasurementColumns};
use super::{SchemaSettings, TradeSchema};

/// A measurement as a test server holds it: name, tags, fields and types.
pub(crate) type TestMeasurement<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, FieldType)]);

/// A layout for tests: `[schema]` keys set as `pairs` (lists comma-separated),
/// matched against a server holding `server`.
pub(crate) fn layout_for(pairs: &[(&str, &str)], server: &[TestMeasurement<'_>]) -> Layout {
    let s = settings(pairs);
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

/// A `[schema]` section with the keys of `pairs` set (lists comma-separated).
pub(crate) fn settings(pairs: &[(&str, &str)]) -> SchemaSettings {
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

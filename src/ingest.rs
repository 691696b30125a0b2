//! The trade ingest path: validation and line-protocol encoding of raw trades into
//! measurement `trades`, shared by `ohlcd generate` and the HTTP API.
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

use crate::candle::{MAX_TRADE_VALUE, Side, Trade, check_value};
use crate::influx::encode::{push_float, push_tag_value};
use crate::influx::{InfluxClient, InfluxError, TRADES_MEASUREMENT};
use crate::symbol::Symbol;

/// Sub-millisecond slots used to keep same-millisecond trades apart.
pub const SUB_MS_SLOTS: i64 = 1_000_000;

/// Trades per write request on the ingest path.
pub const INGEST_BATCH: usize = 100_000;

/// Earliest accepted trade time (2000-01-01T00:00:00Z), Unix milliseconds.
pub const MIN_TIME_MS: i64 = 946_684_800_000;

/// Latest accepted trade time (2200-01-01T00:00:00Z), Unix milliseconds;
/// InfluxDB's nanosecond timestamps end in 2262.
pub const MAX_TIME_MS: i64 = 7_258_118_400_000;

/// How far ahead of now a trade may be stamped (clock skew), milliseconds.
pub const MAX_FUTURE_MS: i64 = 3_600_000;

/// Why a trade stamped `time_ms` is refused at `now_ms`, if it is. The one time
/// rule of the API, `ohlcd generate` and the bench.
pub fn time_refusal(time_ms: i64, now_ms: i64) -> Option<String> {
    if !(MIN_TIME_MS..=MAX_TIME_MS).contains(&time_ms) {
        Some(format!("{time_ms} ms is not between 2000 and 2200"))
    } else if time_ms > now_ms.saturating_add(MAX_FUTURE_MS) {
        Some("is more than an hour in the future".into())
    } else {
        None
    }
}

/// A trade as received, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTrade {
    /// Symbol, e.g. `BTCUSD`.
    pub symbol: Symbol,
    /// Taker side.
    pub side: Side,
    /// Price per unit, finite and > 0.
    pub price: f64,
    /// Amount, finite and > 0.
    pub amount: f64,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// Exchange trade id, ≥ 0.
    pub id: i64,
}

/// The nanosecond timestamp a trade is stored at (see the module doc).
pub fn point_time(time_ms: i64, id: i64) -> i64 {
    time_ms * SUB_MS_SLOTS + id.rem_euclid(SUB_MS_SLOTS)
}

/// Checks a symbol (old path of [`Symbol::parse`], the one symbol rule).
pub fn validate_symbol(symbol: &str) -> Result<(), String> {
    Symbol::parse(symbol).map(|_| ()).map_err(|e| e.to_string())
}

impl NewTrade {
    /// Checks every value against the trade rules as of `now_ms`, naming the
    /// first bad field (the symbol is checked by its type).
    pub fn validate(&self, now_ms: i64) -> Result<(), String> {
        for (name, value) in [("price", self.price), ("amount", self.amount)] {
            if check_value(value).is_err() {
                return Err(format!(
                    "{name}: must be a finite number > 0 and at most {MAX_TRADE_VALUE:e}, got {value}"
                ));
            }
        }
        if let Some(why) = time_refusal(self.time_ms, now_ms) {
            return Err(format!("timestamp: {why}"));
        }
        if self.id < 0 {
            return Err(format!("id: must be ≥ 0, got {}", self.id));
        }
        Ok(())
    }

    /// The trade as the candle math sees it once stored.
    pub fn stored(&self) -> Trade {
        Trade {
            time: point_time(self.time_ms, self.id),
            id: self.id,
            price: self.price,
            amount: self.amount,
            side: self.side,
        }
    }
}

/// Line protocol for trades: `trades,side=…,symbol=… price=…,amount=…,id=…i <ns>`.
///
/// This is the ingest hot path, so it is written directly (ryu, itoa) rather
/// than through `influxdb_line_protocol::LineProtocolBuilder`, whose `fmt`-based
/// formatting made encoding cost three times the JSON parse (criterion
/// `ingest_10k`). A test checks both produce the same bytes.
pub fn encode_trades(trades: &[NewTrade]) -> Vec<u8> {
    let mut out = Vec::with_capacity(trades.len() * 96);
    let mut floats = ryu::Buffer::new();
    let mut ints = itoa::Buffer::new();
    for t in trades {
        out.extend_from_slice(TRADES_MEASUREMENT.as_bytes());
        out.extend_from_slice(b",side=");
        out.extend_from_slice(t.side.as_str().as_bytes());
        out.extend_from_slice(b",symbol=");
        push_tag_value(&mut out, &t.symbol);
        out.extend_from_slice(b" price=");
        push_float(&mut out, &mut floats, t.price);
        out.extend_from_slice(b",amount=");
        push_float(&mut out, &mut floats, t.amount);
        out.extend_from_slice(b",id=");
        out.extend_from_slice(ints.format(t.id).as_bytes());
        out.extend_from_slice(b"i ");
        out.extend_from_slice(ints.format(point_time(t.time_ms, t.id)).as_bytes());
        out.push(b'\n');
    }
    out
}

/// Writes already validated trades, [`INGEST_BATCH`] per request.
pub async fn write_trades(influx: &InfluxClient, trades: &[NewTrade]) -> Result<(), InfluxError> {
    for batch in trades.chunks(INGEST_BATCH) {
        influx
            .write_trade_lines(Bytes::from(encode_trades(batch)))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: i64, time_ms: i64) -> NewTrade {
        NewTrade {
            symbol: "BTCUSD".parse().unwrap(),
            side: Side::Buy,
            price: 100.5,
            amount: 0.25,
            time_ms,
            id,
        }
    }

    #[test]
    fn same_millisecond_trades_get_distinct_timestamps_and_same_id_the_same_one() {
        assert_ne!(point_time(1_000, 41), point_time(1_000, 42));
        assert_eq!(point_time(1_000, 42), point_time(1_000, 42));
        // The stored time stays inside its millisecond, so windows are unchanged.
        let p = point_time(1_000, 999_999_999);
        assert_eq!(p / SUB_MS_SLOTS, 1_000);
    }

    #[test]
    fn trades_encode_with_side_and_symbol_tags_and_integer_id() {
        let lp = String::from_utf8(encode_trades(&[t(7, 1_700_000_000_123)])).unwrap();
        assert_eq!(
            lp,
            "trades,side=buy,symbol=BTCUSD price=100.5,amount=0.25,id=7i 1700000000123000007\n"
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
                symbol: "BTC-USD.X_1a".parse().unwrap(),
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

    #[test]
    fn validation_names_the_bad_field() {
        // 2024-01-01T00:00:00Z; trades an hour after it are still accepted.
        let now = 1_704_067_200_000;
        let ok = |ms| t(1, ms);
        let mut bad = ok(now);
        bad.price = f64::NAN;
        assert!(bad.validate(now).unwrap_err().starts_with("price"));
        let mut bad = ok(now);
        bad.amount = 0.0;
        assert!(bad.validate(now).unwrap_err().starts_with("amount"));
        let mut bad = ok(now);
        bad.id = -1;
        assert!(bad.validate(now).unwrap_err().starts_with("id"));
        assert!(ok(now).validate(now).is_ok());
    }

    #[test]
    fn prices_and_amounts_above_1e15_are_refused_so_no_sum_can_overflow() {
        let now = 1_704_067_200_000;
        let mut at_bound = t(1, now);
        at_bound.price = 1e15;
        at_bound.amount = 1e15;
        assert!(at_bound.validate(now).is_ok());
        for (field, value) in [
            ("price", 1.000_001e15),
            ("amount", 1e308),
            ("price", f64::MAX),
        ] {
            let mut bad = t(1, now);
            match field {
                "price" => bad.price = value,
                _ => bad.amount = value,
            }
            let why = bad.validate(now).unwrap_err();
            assert!(
                why.starts_with(field) && why.contains("at most 1e15"),
                "{why}"
            );
        }
    }

    #[test]
    fn trade_times_are_accepted_from_2000_to_an_hour_after_now() {
        // Literals, not the constants: 2000-01-01T00:00:00Z and one hour.
        let y2000 = 946_684_800_000;
        let far_future = 7_258_118_400_000; // 2200-01-01, the last accepted
        for (time_ms, now_ms, accepted) in [
            (y2000, y2000, true),
            (y2000 - 1, y2000, false),
            (0, y2000, false),
            (1_704_067_200_000 + 3_600_000, 1_704_067_200_000, true),
            (1_704_067_200_000 + 3_600_001, 1_704_067_200_000, false),
            (far_future, far_future, true),
            (far_future + 1, far_future, false),
        ] {
            let got = t(1, time_ms).validate(now_ms);
            assert_eq!(got.is_ok(), accepted, "{time_ms} at {now_ms}: {got:?}");
            if let Err(e) = got {
                assert!(e.starts_with("timestamp: "), "{e}");
            }
        }
    }
}

//! The rules a trade must pass to be stored, and the time it is stored at:
//! pure, shared by the HTTP API, `ohlcd generate` and the bench.

use crate::candle::{MAX_TRADE_VALUE, Side, Trade, check_value};
use crate::symbol::NameForm;

/// Sub-millisecond slots used to keep same-millisecond trades apart.
pub const SUB_MS_SLOTS: i64 = 1_000_000;

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
    pub symbol: String,
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

impl NewTrade {
    /// Checks every field against the trade rules as of `now_ms` (the symbol
    /// of the name `form`), naming the first bad one.
    pub fn validate(&self, now_ms: i64, form: &NameForm) -> Result<(), String> {
        form.check(&self.symbol)
            .map_err(|e| format!("symbol: {e}"))?;
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
            side: Some(self.side),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A valid BTCUSD buy of id `id` at `time_ms`; the encoder's tests use it too.
    pub(in crate::ingest) fn t(id: i64, time_ms: i64) -> NewTrade {
        NewTrade {
            symbol: "BTCUSD".into(),
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
    fn validation_names_the_bad_field() {
        // 2024-01-01T00:00:00Z; trades an hour after it are still accepted.
        let now = 1_704_067_200_000;
        let ok = |ms| t(1, ms);
        let mut bad = ok(now);
        bad.price = f64::NAN;
        assert!(
            bad.validate(now, &NameForm::default())
                .unwrap_err()
                .starts_with("price")
        );
        let mut bad = ok(now);
        bad.amount = 0.0;
        assert!(
            bad.validate(now, &NameForm::default())
                .unwrap_err()
                .starts_with("amount")
        );
        let mut bad = ok(now);
        bad.symbol = "BTC USD".into();
        assert!(
            bad.validate(now, &NameForm::default())
                .unwrap_err()
                .starts_with("symbol")
        );
        let mut bad = ok(now);
        bad.symbol = "x'; DROP".into();
        assert!(bad.validate(now, &NameForm::default()).is_err());
        let mut bad = ok(now);
        bad.symbol = "ohlcd:FAKE".into();
        let why = bad.validate(now, &NameForm::default()).unwrap_err();
        assert!(why.starts_with("symbol") && why.contains("':'"), "{why}");
        let mut bad = ok(now);
        bad.id = -1;
        assert!(
            bad.validate(now, &NameForm::default())
                .unwrap_err()
                .starts_with("id")
        );
        assert!(ok(now).validate(now, &NameForm::default()).is_ok());
        let mut first = ok(now);
        first.id = 0;
        assert!(first.validate(now, &NameForm::default()).is_ok(), "id 0");
    }

    #[test]
    fn prices_and_amounts_above_1e15_are_refused_so_no_sum_can_overflow() {
        let now = 1_704_067_200_000;
        let mut at_bound = t(1, now);
        at_bound.price = 1e15;
        at_bound.amount = 1e15;
        assert!(at_bound.validate(now, &NameForm::default()).is_ok());
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
            let why = bad.validate(now, &NameForm::default()).unwrap_err();
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
            let got = t(1, time_ms).validate(now_ms, &NameForm::default());
            assert_eq!(got.is_ok(), accepted, "{time_ms} at {now_ms}: {got:?}");
            if let Err(e) = got {
                assert!(e.starts_with("timestamp: "), "{e}");
            }
        }
    }
}

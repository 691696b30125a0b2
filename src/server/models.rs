//! Query parameters and response shapes of the HTTP API. Parsing is strict and
//! pure: every rejection names the parameter at fault (the body of `POST
//! /api/trades` is `ingest::wire`'s).

use std::collections::HashMap;

use serde::Serialize;

use crate::candle::{Candle, NANOS_PER_SEC, Side, Trade};
use crate::datafeed::ChartResolution;
use crate::ingest::MAX_TIME_MS;
use crate::symbol::NameForm;
use crate::symbol::Symbol;
use crate::zone::{Tz, parse_zone};

/// Query parameters as received.
pub type Params = HashMap<String, String>;

/// Latest accepted query time: 2200-01-01T00:00:00Z (seconds), the last trade time.
pub const MAX_TIME_SECS: i64 = MAX_TIME_MS / 1000;

/// A required parameter.
pub fn required<'p>(p: &'p Params, name: &str) -> Result<&'p str, String> {
    p.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("missing parameter {name}"))
}

/// A symbol parameter, parsed against the symbol rule and the schema's
/// name `form`.
pub fn symbol_param(p: &Params, name: &str, form: &NameForm) -> Result<Symbol, String> {
    form.parse(required(p, name)?)
        .map_err(|e| format!("{name}: {e}"))
}

/// A Unix-seconds parameter, clamped to 1970..2200 (TradingView asks for history
/// far before any data; that is an empty answer, not an error).
pub fn seconds_param(p: &Params, name: &str) -> Result<Option<i64>, String> {
    let Some(v) = p.get(name).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let secs: i64 = v
        .parse()
        .map_err(|_| format!("{name}: {v:?} is not a whole number of Unix seconds"))?;
    Ok(Some(secs.clamp(0, MAX_TIME_SECS)))
}

/// A chart-resolution parameter.
pub fn resolution_param(p: &Params, name: &str) -> Result<ChartResolution, String> {
    required(p, name)?
        .parse()
        .map_err(|e| format!("{name}: {e}"))
}

/// A time zone parameter (IANA name), `default` when absent.
pub fn zone_param(p: &Params, name: &str, default: Tz) -> Result<Tz, String> {
    match p.get(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => parse_zone(v).map_err(|e| format!("{name}: {e}")),
    }
}

/// The `fill` parameter of `/api/ohlc`: absent (gaps stay empty) or
/// `previous`.
pub fn fill_param(p: &Params) -> Result<bool, String> {
    match p.get("fill").map(String::as_str) {
        None | Some("") | Some("none") => Ok(false),
        Some("previous") => Ok(true),
        Some(other) => Err(format!(
            "fill: {other:?} is not a fill mode; use fill=previous (or leave it out for no filling)"
        )),
    }
}

/// A positive integer parameter with a default and a maximum.
pub fn count_param(p: &Params, name: &str, default: u64, max: u64) -> Result<u64, String> {
    match p.get(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "{name}: must be a whole number from 1 to {max}, got {v:?}"
            )),
        },
    }
}

/// A `[from, to)` range in seconds that must be non-empty.
pub fn range_params(p: &Params, now_secs: i64) -> Result<(i64, i64), String> {
    let from = seconds_param(p, "from")?.ok_or("missing parameter from")?;
    let to = seconds_param(p, "to")?.unwrap_or(now_secs);
    if from >= to {
        return Err(format!("from ({from}) must be before to ({to})"));
    }
    Ok((from, to))
}

/// A candle as JSON, with time in Unix seconds.
#[derive(Debug, Serialize, PartialEq)]
pub struct CandleJson {
    /// Window start, Unix seconds.
    pub time: i64,
    /// First trade price.
    pub open: f64,
    /// Highest price.
    pub high: f64,
    /// Lowest price.
    pub low: f64,
    /// Last trade price.
    pub close: f64,
    /// Sum of amounts.
    pub volume: f64,
    /// Sum of price × amount.
    pub quote_volume: f64,
    /// Trade count.
    pub trades: i64,
    /// Buyer-taker volume.
    pub buy_volume: f64,
    /// With `fill=previous` only: true for a window without trades (flat at
    /// the previous close, volume 0), false for every other bar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filled: Option<bool>,
}

impl From<&Candle> for CandleJson {
    fn from(c: &Candle) -> Self {
        CandleJson {
            time: c.start.div_euclid(NANOS_PER_SEC),
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            quote_volume: c.quote_volume,
            trades: c.trades,
            buy_volume: c.buy_volume,
            filled: None,
        }
    }
}

impl From<&crate::chart::FilledBar> for CandleJson {
    fn from(f: &crate::chart::FilledBar) -> Self {
        CandleJson {
            filled: Some(f.filled),
            ..CandleJson::from(&f.bar)
        }
    }
}

/// `GET /api/ohlc` answer.
#[derive(Debug, Serialize)]
pub struct OhlcResponse {
    /// Symbol.
    pub symbol: String,
    /// What the client asked for.
    pub requested_resolution: ChartResolution,
    /// What was used (coarser for long ranges).
    pub resolution: ChartResolution,
    /// Range start, Unix seconds.
    pub from: i64,
    /// Range end (exclusive), Unix seconds.
    pub to: i64,
    /// The zone the bars are counted in (IANA name); times are instants.
    pub timezone: &'static str,
    /// Bars, oldest first.
    pub candles: Vec<CandleJson>,
}

/// A raw trade as JSON.
#[derive(Debug, Serialize)]
pub struct TradeJson {
    /// Unix milliseconds.
    pub timestamp: i64,
    /// Trade id.
    pub id: i64,
    /// Price.
    pub price: f64,
    /// Amount.
    pub amount: f64,
    /// `buy` or `sell`; `null` where the trades carry no side.
    pub side: Option<Side>,
}

impl From<&Trade> for TradeJson {
    fn from(t: &Trade) -> Self {
        TradeJson {
            timestamp: t.time.div_euclid(1_000_000),
            id: t.id,
            price: t.price,
            amount: t.amount,
            side: t.side,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_checked_with_their_name() {
        let p = |pairs: &[(&str, &str)]| -> Params {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            range_params(&p(&[("from", "10"), ("to", "20")]), 0),
            Ok((10, 20))
        );
        assert!(
            range_params(&p(&[("from", "20"), ("to", "10")]), 0)
                .unwrap_err()
                .contains("before")
        );
        assert!(
            range_params(&p(&[("from", "x")]), 0)
                .unwrap_err()
                .starts_with("from:")
        );
        assert!(
            range_params(&p(&[]), 0)
                .unwrap_err()
                .contains("missing parameter from")
        );
        assert!(symbol_param(&p(&[("symbol", "a'b")]), "symbol", &NameForm::default()).is_err());
        assert!(resolution_param(&p(&[("resolution", "7X")]), "resolution").is_err());
        assert_eq!(count_param(&p(&[]), "limit", 100, 1000), Ok(100));
        assert!(count_param(&p(&[("limit", "0")]), "limit", 100, 1000).is_err());
        assert!(count_param(&p(&[("limit", "1001")]), "limit", 100, 1000).is_err());
    }
}

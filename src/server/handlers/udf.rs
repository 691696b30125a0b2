//! The TradingView UDF datafeed: `/udf/config`, `/udf/symbols`,
//! `/udf/search`, `/udf/history`, `/udf/quotes`, `/udf/time`.

use serde_json::json;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::{admit_symbol, bars_in, now_secs, udf_bad, udf_reject};
use crate::candle::NANOS_PER_SEC;
use crate::datafeed::{ChartResolution, DatafeedError, History, ZonedResolution};
use crate::server::AppState;
use crate::server::models::{
    Params, count_param, required, resolution_param, seconds_param, symbol_param,
};
use crate::symbol::NameForm;
use crate::zone::{instant_of_stamp, is_utc, trading_date_stamp};

/// TradingView sends `EXCHANGE:SYMBOL` once it knows the exchange
/// (`datafeed.exchange`). That prefix goes only from a name with more parts
/// than the schema's names have: `binance:BTCUSDT` is an instrument where
/// instruments are named by two tags.
fn strip_exchange(p: &mut Params, key: &str, exchange: &str, form: &NameForm) {
    if let Some(v) = p.get_mut(key)
        && v.split(crate::symbol::NAME_SEPARATOR).count() > form.parts()
        && let Some(rest) = v.strip_prefix(&format!("{exchange}:"))
    {
        *v = rest.to_string();
    }
}

/// The exchange a chart shows for `symbol`: its first part where names have
/// several, else `datafeed.exchange`.
fn exchange_of<'a>(symbol: &'a str, form: &NameForm, configured: &'a str) -> &'a str {
    if form.parts() > 1 {
        symbol
            .split(crate::symbol::NAME_SEPARATOR)
            .next()
            .unwrap_or(configured)
    } else {
        configured
    }
}

/// `GET /udf/config`: what the datafeed supports.
pub async fn udf_config(state: AppState) -> Result<impl Reply, Rejection> {
    Ok(warp::reply::json(&json!({
        "supported_resolutions": state.settings.supported_resolutions,
        "supports_search": true,
        "supports_group_request": false,
        "supports_marks": false,
        "supports_timescale_marks": false,
        "supports_time": true,
        "exchanges": [{"value": "", "name": "All exchanges", "desc": ""},
                      {"value": state.settings.exchange, "name": state.settings.exchange, "desc": state.settings.exchange}],
        "symbols_types": [{"name": "Crypto", "value": "crypto"}],
    })))
}

/// Decimal places of `price` as printed (shortest round-trip form).
fn decimals(price: f64) -> u32 {
    let s = format!("{price}");
    s.split_once('.').map_or(0, |(_, frac)| frac.len() as u32)
}

/// `GET /udf/symbols?symbol=`: symbol info for TradingView.
pub async fn udf_symbols(mut p: Params, state: AppState) -> Result<impl Reply, Rejection> {
    let form = state.influx.layout().name_form();
    strip_exchange(&mut p, "symbol", &state.settings.exchange, form);
    let symbol = symbol_param(&p, "symbol", form).map_err(udf_bad)?;
    let _slot = admit_symbol(&state, 1, &symbol, udf_reject).await?;
    let last = state
        .influx
        .last_trade_before(&symbol, i64::MAX)
        .await
        .map_err(udf_reject)?;
    let price_decimals = last.map_or(2, |(_, price)| decimals(price).clamp(2, 10));
    // Seconds multipliers in seconds without the `S`, as TradingView reads them.
    let seconds: Vec<String> = state
        .settings
        .supported_resolutions
        .iter()
        .filter_map(|r| match r.parse() {
            Ok(ChartResolution::Seconds(n)) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    // Several parts (`binance:BTCUSDT`): the first is the exchange, the full
    // name the ticker every later request sends.
    let exchange = exchange_of(&symbol, form, &state.settings.exchange);
    let (name, full_name) = if form.parts() > 1 {
        (symbol[exchange.len() + 1..].to_string(), symbol.to_string())
    } else {
        (symbol.to_string(), format!("{exchange}:{symbol}"))
    };
    Ok(warp::reply::json(&json!({
        "name": name,
        "ticker": symbol,
        "full_name": full_name,
        "description": symbol,
        "type": "crypto",
        "session": "24x7",
        "timezone": state.zones.for_symbol(&symbol).name(),
        "exchange": exchange,
        "listed_exchange": exchange,
        "minmov": 1,
        "pricescale": 10u64.pow(price_decimals),
        "has_intraday": true,
        "has_seconds": !seconds.is_empty(),
        "seconds_multipliers": seconds,
        "has_daily": true,
        "has_weekly_and_monthly": true,
        "supported_resolutions": state.settings.supported_resolutions,
        "volume_precision": 6,
        "data_status": "streaming",
        "format": "price",
    })))
}

/// `GET /udf/search?query=&limit=`: symbols containing the query.
pub async fn udf_search(p: Params, state: AppState) -> Result<impl Reply, Rejection> {
    let query = p
        .get("query")
        .map(|q| q.to_ascii_uppercase())
        .unwrap_or_default();
    let limit = count_param(&p, "limit", 30, 1000).map_err(udf_bad)?;
    let _slot = state.limits.admit(1).await.map_err(warp::reject::custom)?;
    let symbols = state.datafeed.symbols().await.map_err(udf_reject)?;
    let form = state.influx.layout().name_form();
    let found: Vec<_> = symbols
        .iter()
        .filter(|s| s.to_ascii_uppercase().contains(&query))
        .take(limit as usize)
        .map(|s| {
            let exchange = exchange_of(s, form, &state.settings.exchange);
            let full_name = if form.parts() > 1 {
                s.clone()
            } else {
                format!("{exchange}:{s}")
            };
            json!({"symbol": s, "full_name": full_name, "description": s,
                   "exchange": exchange, "ticker": s, "type": "crypto"})
        })
        .collect();
    Ok(warp::reply::json(&found))
}

/// `GET /udf/history?symbol=&resolution=&from=&to=[&countback=]`: bars at exactly
/// the requested resolution, `to` exclusive, `countback` before `from`.
///
/// Bars are counted in the symbol's zone. A daily, weekly or monthly bar is
/// stamped with its trading date at 00:00 UTC, as TradingView's library wants
/// (it shifts the date into the symbol's zone itself), and `from`, `to` and
/// `countback` are compared with those stamps; other bars carry the instant
/// they start.
pub async fn udf_history(mut p: Params, state: AppState) -> Result<impl Reply, Rejection> {
    let form = state.influx.layout().name_form();
    strip_exchange(&mut p, "symbol", &state.settings.exchange, form);
    let symbol = symbol_param(&p, "symbol", form).map_err(udf_bad)?;
    let res = resolution_param(&p, "resolution").map_err(udf_bad)?;
    let to = seconds_param(&p, "to")
        .map_err(udf_bad)?
        .unwrap_or(now_secs(&state));
    let countback = match p.get("countback").filter(|v| !v.is_empty()) {
        None => None,
        Some(_) => Some(count_param(&p, "countback", 1, state.settings.max_bars).map_err(udf_bad)?),
    };
    let from = match (seconds_param(&p, "from").map_err(udf_bad)?, countback) {
        (Some(from), _) => from,
        (None, Some(_)) => 0,
        (None, None) => return Err(udf_bad("missing parameter from".into())),
    };
    if countback.is_none() && from >= to {
        return Err(udf_bad(format!("from ({from}) must be before to ({to})")));
    }
    let bars = countback.unwrap_or_else(|| bars_in(from..to, res));
    let _slot = state
        .limits
        .admit(bars)
        .await
        .map_err(warp::reject::custom)?;
    let zone = state.zones.for_symbol(&symbol);
    // In UTC a trading date is the instant the bar starts.
    let dated = res.is_dwm() && !is_utc(zone);
    let instant = |secs: i64| {
        let t = secs * NANOS_PER_SEC;
        if dated { instant_of_stamp(zone, t) } else { t }
    };
    let stamp = |t: i64| {
        if dated {
            trading_date_stamp(zone, t)
        } else {
            t
        }
    };
    let history = state
        .datafeed
        .history(
            &symbol,
            ZonedResolution::new(res, zone),
            instant(from),
            instant(to),
            countback,
        )
        .await
        .map_err(udf_reject)?;
    Ok(warp::reply::json(&match history {
        // Serialized straight from the bars (no intermediate JSON tree): this
        // is the hottest answer of a chart backend.
        History::Bars(mut bars) => {
            if dated {
                bars.iter_mut().for_each(|b| b.start = stamp(b.start));
            }
            return Ok(udf_bars_reply(&bars));
        }
        History::NoData { next_time: Some(t) } => {
            json!({"s": "no_data", "nextTime": stamp(t) / NANOS_PER_SEC})
        }
        History::NoData { next_time: None } => json!({"s": "no_data"}),
    })
    .into_response())
}

/// `{s:"ok",t,o,h,l,c,v}` written into a buffer sized for the bars up front:
/// grown by doubling from empty (as `warp::reply::json` does), its copies were
/// a tenth of `ohlcd run`'s CPU under chart load (perf).
fn udf_bars_reply(bars: &[crate::candle::Candle]) -> warp::reply::Response {
    // Six columns of up to ~24 bytes per bar, plus the keys.
    let mut body = Vec::with_capacity(64 + bars.len() * 6 * 24);
    match serde_json::to_writer(&mut body, &UdfBars(bars)) {
        Ok(()) => {
            warp::reply::with_header(body, warp::http::header::CONTENT_TYPE, "application/json")
                .into_response()
        }
        Err(e) => warp::reply::with_status(
            format!("cannot encode bars: {e}"),
            StatusCode::INTERNAL_SERVER_ERROR,
        )
        .into_response(),
    }
}

/// A UDF `{s: "ok", t, o, h, l, c, v}` answer, written from the bars as it is
/// serialized.
struct UdfBars<'a>(&'a [crate::candle::Candle]);

impl serde::Serialize for UdfBars<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        /// One column of the bars.
        struct Column<'a, T>(&'a [crate::candle::Candle], fn(&crate::candle::Candle) -> T);
        impl<T: serde::Serialize> serde::Serialize for Column<'_, T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(self.1))
            }
        }
        let bars = self.0;
        let mut map = serializer.serialize_map(Some(7))?;
        map.serialize_entry("s", "ok")?;
        map.serialize_entry("t", &Column(bars, |c| c.start / NANOS_PER_SEC))?;
        map.serialize_entry("o", &Column(bars, |c| c.open))?;
        map.serialize_entry("h", &Column(bars, |c| c.high))?;
        map.serialize_entry("l", &Column(bars, |c| c.low))?;
        map.serialize_entry("c", &Column(bars, |c| c.close))?;
        map.serialize_entry("v", &Column(bars, |c| c.volume))?;
        map.end()
    }
}

/// Most symbols one `/udf/quotes` request may name.
const MAX_QUOTES: usize = 100;

/// `GET /udf/quotes?symbols=A,B`: each symbol's last 24 hours, rolling, as the
/// UDF spec shapes quotes; an unknown symbol gets `s: "error"` alone.
pub async fn udf_quotes(p: Params, state: AppState) -> Result<impl Reply, Rejection> {
    let names: Vec<String> = required(&p, "symbols")
        .map_err(udf_bad)?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() || names.len() > MAX_QUOTES {
        return Err(udf_bad(format!(
            "symbols: name 1 to {MAX_QUOTES} symbols, comma-separated; got {}",
            names.len()
        )));
    }
    let _slot = state
        .limits
        .admit(names.len() as u64)
        .await
        .map_err(warp::reject::custom)?;
    let now = state.clock.now();
    let exchange = &state.settings.exchange;
    let form = state.influx.layout().name_form();
    let quotes = futures_util::future::join_all(names.iter().map(|name| {
        let symbol = if name.split(crate::symbol::NAME_SEPARATOR).count() > form.parts() {
            name.strip_prefix(&format!("{exchange}:")).unwrap_or(name)
        } else {
            name
        }
        .to_string();
        let state = &state;
        async move {
            form.check(&symbol)
                .map_err(|e| DatafeedError::BadRequest(e.to_string()))?;
            // Boxed: one quote reads several sources, a large future to
            // hold on the stack once per symbol.
            Box::pin(state.datafeed.quote(&symbol, now))
                .await
                .map(|q| (symbol, q))
        }
    }))
    .await;
    let mut d = Vec::with_capacity(names.len());
    for (name, quote) in names.iter().zip(quotes) {
        match quote {
            Ok((symbol, Some(q))) => d.push(json!({"s": "ok", "n": name, "v": {
                "lp": q.last,
                "ch": q.change(),
                "chp": q.change_percent(),
                "open_price": q.open,
                "high_price": q.high,
                "low_price": q.low,
                "prev_close_price": q.reference(),
                "volume": q.volume,
                "short_name": symbol,
                "exchange": exchange,
                "description": symbol,
            }})),
            Ok((_, None)) => {
                d.push(json!({"s": "error", "n": name, "v": {}, "errmsg": "no trades yet"}))
            }
            Err(e @ (DatafeedError::UnknownSymbol(_) | DatafeedError::BadRequest(_))) => {
                d.push(json!({"s": "error", "n": name, "v": {}, "errmsg": e.to_string()}))
            }
            // InfluxDB or the store failed: no quote is known to be right.
            Err(e) => return Err(udf_reject(e)),
        }
    }
    Ok(warp::reply::json(&json!({"s": "ok", "d": d})))
}

/// `GET /udf/time`: server time, bare Unix seconds.
pub async fn udf_time(state: AppState) -> Result<impl Reply, Rejection> {
    Ok(now_secs(&state).to_string())
}

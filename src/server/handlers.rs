//! One handler per route; each states its route in its doc line.

use serde::Serialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::models::{
    self, CandleJson, OhlcResponse, Params, TradeJson, TradesError, count_param, fill_param,
    range_params, required, resolution_param, seconds_param, symbol_param, zone_param,
};
use super::{ApiError, AppState};
use crate::candle::NANOS_PER_SEC;
use crate::datafeed::{
    ChartResolution, DatafeedError, History, ZonedResolution, adaptive_resolution,
};
use crate::progress::ProgressEntry;
use crate::symbol::NameForm;
use crate::zone::{instant_of_stamp, is_utc, trading_date_stamp};

fn reject(e: impl Into<ApiError>) -> Rejection {
    warp::reject::custom(e.into())
}

fn bad(message: String) -> Rejection {
    warp::reject::custom(ApiError::bad_request(message))
}

fn udf_bad(message: String) -> Rejection {
    warp::reject::custom(ApiError::bad_request(message).udf())
}

fn udf_reject(e: impl Into<ApiError>) -> Rejection {
    warp::reject::custom(e.into().udf())
}

fn now_secs(state: &AppState) -> i64 {
    state.clock.now().div_euclid(NANOS_PER_SEC)
}

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

/// Bars of `res` in `[from, to)` seconds, as the cost estimate of a request.
fn bars_in(range: std::ops::Range<i64>, res: ChartResolution) -> u64 {
    let span = (range.end - range.start)
        .max(0)
        .saturating_mul(NANOS_PER_SEC);
    (span / res.nominal_nanos()) as u64
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
    let _slot = state.limits.admit(1).await.map_err(warp::reject::custom)?;
    state
        .datafeed
        .require_symbol(&symbol)
        .await
        .map_err(udf_reject)?;
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

/// `GET /api/ohlc?symbol=&resolution=&from=&to=[&tz=][&fill=previous]`:
/// candles for the chart page, coarsened for long ranges; says which
/// resolution it used. Bars are counted in `tz` (default: the symbol's zone)
/// and stamped with the instant they start; `fill=previous` gives a bar for
/// every window up to now, an empty one flat at the previous close.
pub async fn api_ohlc(p: Params, state: AppState) -> Result<impl Reply, Rejection> {
    let symbol = symbol_param(&p, "symbol", state.influx.layout().name_form()).map_err(bad)?;
    let requested = resolution_param(&p, "resolution").map_err(bad)?;
    let zone = zone_param(&p, "tz", state.zones.for_symbol(&symbol)).map_err(bad)?;
    let fill = fill_param(&p).map_err(bad)?;
    let (from, to) = range_params(&p, now_secs(&state)).map_err(bad)?;
    let range = from * NANOS_PER_SEC..to * NANOS_PER_SEC;
    let res = adaptive_resolution(requested, range.clone(), state.settings.ohlc_max_bars);
    let _slot = state
        .limits
        .admit(bars_in(from..to, res))
        .await
        .map_err(warp::reject::custom)?;
    state
        .datafeed
        .require_symbol(&symbol)
        .await
        .map_err(reject)?;
    let zoned = ZonedResolution::new(res, zone);
    let bars = state
        .datafeed
        .bars(&symbol, zoned, range.clone())
        .await
        .map_err(reject)?;
    let candles = if fill {
        let bucketing = zoned.bucketing();
        let before = state
            .influx
            .last_trade_before(&symbol, bucketing.ceil(range.start))
            .await
            .map_err(reject)?
            .map(|(_, price)| price);
        crate::chart::fill_previous(&bars, bucketing, range, before, state.clock.now())
            .iter()
            .map(CandleJson::from)
            .collect()
    } else {
        bars.iter().map(CandleJson::from).collect()
    };
    Ok(warp::reply::json(&OhlcResponse {
        symbol: symbol.into_string(),
        requested_resolution: requested,
        resolution: res,
        from,
        to,
        timezone: zone.name(),
        candles,
    }))
}

/// `GET /api/trades?symbol=&from=&to=&limit=`: raw trades, oldest first
/// (`from` defaults to an hour before `to`, `to` to now, `limit` to 1000).
pub async fn api_trades_get(p: Params, state: AppState) -> Result<impl Reply, Rejection> {
    let symbol = symbol_param(&p, "symbol", state.influx.layout().name_form()).map_err(bad)?;
    let to = seconds_param(&p, "to")
        .map_err(bad)?
        .unwrap_or(now_secs(&state));
    let from = seconds_param(&p, "from").map_err(bad)?.unwrap_or(to - 3600);
    if from >= to {
        return Err(bad(format!("from ({from}) must be before to ({to})")));
    }
    let limit = count_param(&p, "limit", 1000, 10_000).map_err(bad)?;
    let _slot = state
        .limits
        .admit(limit)
        .await
        .map_err(warp::reject::custom)?;
    state
        .datafeed
        .require_symbol(&symbol)
        .await
        .map_err(reject)?;
    let mut trades = Vec::new();
    state
        .influx
        .stream_trades_limited(
            &symbol,
            from * NANOS_PER_SEC..to * NANOS_PER_SEC,
            Some(limit),
            |t| trades.push(TradeJson::from(&t)),
        )
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(
        &json!({"symbol": symbol, "trades": trades}),
    ))
}

#[derive(Serialize)]
struct Accepted {
    accepted: usize,
    late: usize,
}

/// `POST /api/trades`: one trade or an array, validated all-or-nothing; trades
/// behind the 1m watermark are recorded as late so the next tick recomputes them.
pub async fn api_trades_post(body: bytes::Bytes, state: AppState) -> Result<impl Reply, Rejection> {
    let now_ms = state.clock.now().div_euclid(1_000_000);
    let form = state.influx.layout().name_form();
    let trades = models::parse_trades(&body, now_ms, form).map_err(|e| match e {
        TradesError::Invalid(m) => bad(m),
        TradesError::TooMany(n) => reject(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "{n} trades in one request; at most {}",
                crate::ingest::INGEST_BATCH
            ),
            udf: false,
        }),
    })?;
    // Trades go into the configured schema as the server holds it; a schema
    // that cannot be written faithfully, or a trade it cannot place, is
    // refused before anything is written.
    let writer = crate::ingest::TradeWriter::new(state.influx.layout()).map_err(|e| {
        reject(ApiError {
            status: StatusCode::CONFLICT,
            message: format!("trades cannot be written into this schema: {e}"),
            udf: false,
        })
    })?;
    for (i, t) in trades.iter().enumerate() {
        writer
            .measurement_of(&t.symbol)
            .map_err(|e| bad(format!("trade {i}: {e}")))?;
    }
    // Written and recorded on a task of its own: a client that hangs up must
    // not cancel the request between the InfluxDB write and the recording of
    // its late trades, or a late trade would be stored but never counted.
    let accepted = tokio::spawn(ingest(trades, state)).await.map_err(|e| {
        reject(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("ingest task failed: {e}"),
            udf: false,
        })
    })??;
    Ok(warp::reply::json(&accepted))
}

/// Writes validated trades and records the late ones
/// ([`crate::ingest::late`]); live subscribers see them once InfluxDB has them.
async fn ingest(
    trades: Vec<crate::ingest::NewTrade>,
    state: AppState,
) -> Result<Accepted, Rejection> {
    let ingested = crate::ingest::late::write_recording_late(
        &state.influx,
        &state.store,
        state.clock.as_ref(),
        &trades,
        |symbols| {
            // History requests read them from now on (the cached tail goes).
            symbols.iter().for_each(|s| state.datafeed.trades_posted(s));
            state
                .push
                .trades_written(trades.iter().map(|t| t.symbol.as_str()));
        },
    )
    .await
    .map_err(reject)?;
    if ingested.new_symbols {
        state.datafeed.invalidate_symbols().await;
    }
    ::metrics::counter!("ohlcd_trades_ingested_total").increment(trades.len() as u64);
    ::metrics::counter!("ohlcd_late_trades_total").increment(ingested.late as u64);
    Ok(Accepted {
        accepted: trades.len(),
        late: ingested.late,
    })
}

/// Events of a live stream: `bar` (id: the newest bar start sent, Unix
/// seconds), `reset` and `failure` (not `error`, which an `EventSource`
/// reports for its own connection errors).
fn live_event(update: super::push::Update) -> warp::sse::Event {
    use super::push::Update;
    let event = warp::sse::Event::default();
    match update {
        Update::Bar { bar, closed, id } => {
            let body = LiveBar {
                bar: CandleJson::from(&bar),
                closed,
            };
            event
                .id((id / NANOS_PER_SEC).to_string())
                .event("bar")
                .data(serde_json::to_string(&body).unwrap_or_default())
        }
        Update::Reset => event.event("reset").data("{}"),
        Update::Error(message) => event
            .event("failure")
            .data(json!({ "error": message }).to_string()),
    }
}

#[derive(Serialize)]
struct LiveBar {
    #[serde(flatten)]
    bar: CandleJson,
    closed: bool,
}

/// How often an idle stream sends a comment: keeps proxies from closing it and
/// finds clients that are gone.
const LIVE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// `GET /api/live?symbol=&resolution=[&since=][&tz=]`: Server-Sent Events
/// with the newest bars of `symbol` at `resolution` (counted in `tz`, default
/// the symbol's zone; stamped with the instant they start) each time they
/// change. A reconnect
/// (`Last-Event-ID`) or `since` (Unix seconds) first sends every bar from that
/// one on.
pub async fn api_live(
    p: Params,
    last_event_id: Option<String>,
    state: AppState,
) -> Result<impl Reply, Rejection> {
    use futures_util::StreamExt;
    let symbol = symbol_param(&p, "symbol", state.influx.layout().name_form()).map_err(bad)?;
    let res = resolution_param(&p, "resolution").map_err(bad)?;
    let zone = zone_param(&p, "tz", state.zones.for_symbol(&symbol)).map_err(bad)?;
    let res = ZonedResolution::new(res, zone);
    let since = match last_event_id.filter(|v| !v.is_empty()) {
        Some(id) => Some(
            id.trim()
                .parse::<i64>()
                .ok()
                .filter(|s| *s >= 0)
                .ok_or_else(|| {
                    bad(format!(
                        "Last-Event-ID: {id:?} is not an event id of this stream (Unix seconds)"
                    ))
                })?,
        ),
        None => seconds_param(&p, "since").map_err(bad)?,
    };
    {
        let _slot = state.limits.admit(1).await.map_err(warp::reject::custom)?;
        state
            .datafeed
            .require_symbol(&symbol)
            .await
            .map_err(reject)?;
    }
    let slot = state.push.open_stream().map_err(warp::reject::custom)?;
    let wait = std::time::Duration::from_secs(
        state.settings.timeout_secs + state.server.queue_timeout_secs,
    );
    let (subscriber, first) = state
        .push
        .start(
            &symbol,
            res,
            since.map(|s| s * NANOS_PER_SEC),
            state.server.heavy_query_bars,
            wait,
            slot,
        )
        .await
        .map_err(reject)?;
    let later = futures_util::stream::unfold(Some(subscriber), |subscriber| async move {
        let mut subscriber = subscriber?;
        let updates = subscriber.next().await?;
        // An error ends the stream; the client reconnects with Last-Event-ID.
        let failed = updates
            .iter()
            .any(|u| matches!(u, super::push::Update::Error(_)));
        Some((
            futures_util::stream::iter(updates),
            (!failed).then_some(subscriber),
        ))
    })
    .flatten();
    let events = futures_util::stream::iter(first)
        .chain(later)
        .map(|u| Ok::<_, std::convert::Infallible>(live_event(u)));
    // warp wants a Sync body; the stream is only ever polled through `&mut`.
    let stream = warp::sse::keep_alive()
        .interval(LIVE_KEEP_ALIVE)
        .stream(sync_wrapper::SyncStream::new(events));
    // nginx buffers responses unless told not to.
    Ok(warp::reply::with_header(
        warp::sse::reply(stream),
        "x-accel-buffering",
        "no",
    ))
}

/// Progress rows serialized into one chunk of the `GET /api/progress` body
/// at most (fewer when fewer are ready).
const PROGRESS_ROWS_PER_CHUNK: usize = 128;

/// The progress rows as the store streams them, in chunks of at most
/// [`PROGRESS_ROWS_PER_CHUNK`] (fewer when fewer are ready). The first row is
/// awaited here, so a store that fails at once is this error, before any of
/// a response is written; a later failure is an item of the stream.
async fn progress_chunks(
    state: &AppState,
) -> Result<
    impl futures_util::Stream<Item = Vec<Result<crate::progress::Task, crate::progress::ProgressError>>>
    + Send
    + use<>,
    crate::progress::ProgressError,
> {
    use futures_util::StreamExt;
    let mut tasks = Box::pin(state.store.task_stream());
    let first = tasks.next().await.transpose()?;
    Ok(futures_util::stream::iter(first.map(Ok))
        .chain(tasks)
        .ready_chunks(PROGRESS_ROWS_PER_CHUNK))
}

/// `GET /api/progress`: the progress table, as `ohlcd progress --json`.
///
/// Written row by row as the store yields them: the bytes are those of the
/// whole table serialized as one JSON array, but 5,000 symbols' 30,000 rows
/// are never all in memory (held at once they and their JSON took tens of
/// MB per call). A store that fails before the first row gets the usual
/// JSON error; one that fails later can only cut the body short, which the
/// client sees as a broken response, never as a shorter table.
pub async fn api_progress(state: AppState) -> Result<impl Reply, Rejection> {
    use futures_util::StreamExt;
    let now = state.clock.now();
    let chunks = progress_chunks(&state).await.map_err(reject)?;
    let mut written = 0usize;
    let open = futures_util::stream::once(async { Ok(bytes::Bytes::from_static(b"[")) });
    let rows = chunks.map(move |chunk| {
        let mut buf = Vec::with_capacity(chunk.len() * 512);
        for task in chunk {
            if written > 0 {
                buf.push(b',');
            }
            written += 1;
            serde_json::to_writer(&mut buf, &ProgressEntry::from_task(&task?, now))
                .expect("plain rows serialize");
        }
        Ok::<_, crate::progress::ProgressError>(bytes::Bytes::from(buf))
    });
    let close = futures_util::stream::once(async { Ok(bytes::Bytes::from_static(b"]")) });
    let body = open.chain(rows).chain(close);
    Ok(warp::reply::with_header(
        warp::reply::stream(sync_wrapper::SyncStream::new(body)),
        "content-type",
        "application/json",
    ))
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    influx: &'static str,
    store: &'static str,
    failed_symbols: u64,
    version: &'static str,
    commit: &'static str,
}

/// `GET /healthz`, public: `ok` (200), `degraded` (200: some symbols failed
/// their last run; how many is `failed_symbols`) or `unhealthy` (503:
/// InfluxDB, its database included, or the progress store does not answer,
/// or InfluxDB refuses writes, as on a full disk). Degraded stays 200
/// because a symbol fails for its data, which every daemon shares: a 503
/// would take every daemon out of a load balancer and stop the charts of the
/// healthy symbols too. Says up or down, never where or why: the reason goes
/// to the log.
pub async fn healthz(state: AppState) -> Result<impl Reply, Rejection> {
    // A health check must answer quickly even when InfluxDB hangs.
    let influx = state.influx.fail_fast(2, 0).check_database().await;
    // Reads can work while writes fail (a full disk): both must.
    let writes = state.influx.recent_write_failure();
    let store = state.store.ping().await;
    let failing = match &store {
        Ok(()) => state.store.failing_symbols().await.unwrap_or(0),
        Err(_) => 0,
    };
    let up = |ok: bool| if ok { "ok" } else { "down" };
    let healthy = influx.is_ok() && writes.is_none() && store.is_ok();
    if let Err(e) = &influx {
        tracing::debug!(error = %e, "health: InfluxDB down");
    }
    if let Some(why) = &writes {
        tracing::debug!(error = %why, "health: InfluxDB refuses writes");
    }
    if let Err(e) = &store {
        tracing::debug!(error = %e, "health: progress store down");
    }
    let body = Health {
        status: match (healthy, failing) {
            (false, _) => "unhealthy",
            (true, 0) => "ok",
            (true, _) => "degraded",
        },
        influx: match (&influx, &writes) {
            (Err(_), _) => "down",
            (Ok(()), Some(_)) => "writes_failing",
            (Ok(()), None) => "ok",
        },
        store: up(store.is_ok()),
        failed_symbols: failing,
        version: crate::build_info::VERSION,
        commit: crate::build_info::COMMIT,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(warp::reply::with_status(warp::reply::json(&body), status))
}

/// `GET /metrics`: Prometheus text format.
///
/// `ohlcd_task_lag_seconds{symbol,resolution}` is not kept in the metrics
/// registry: it is a property of the progress table, so its lines are
/// written from the table's rows as they stream in, after the registry's
/// text. As 30,000 registry gauges (5,000 symbols) they held ~10 MB for
/// good, and tasks no longer in the table kept being reported.
pub async fn metrics(state: AppState) -> Result<impl Reply, Rejection> {
    use futures_util::StreamExt;
    let now = state.clock.now();
    // A store that fails at once leaves the lag out, as a failed read did.
    let chunks = match progress_chunks(&state).await {
        Ok(chunks) => chunks.left_stream(),
        Err(_) => futures_util::stream::empty().right_stream(),
    };
    let registry = bytes::Bytes::from(super::metrics::render());
    let mut typed = false;
    let lags = chunks.map(move |chunk| {
        let mut buf = String::new();
        for task in chunk {
            let task = task?;
            let Some(w) = task.watermark else { continue };
            if !std::mem::replace(&mut typed, true) {
                buf.push_str(super::metrics::TASK_LAG_TYPE);
            }
            let lag = (now - w) as f64 / 1e9;
            super::metrics::write_task_lag(&mut buf, &task.symbol, task.resolution, lag);
        }
        Ok::<_, crate::progress::ProgressError>(bytes::Bytes::from(buf))
    });
    let body = futures_util::stream::once(async { Ok(registry) }).chain(lags);
    Ok(warp::reply::with_header(
        warp::reply::stream(sync_wrapper::SyncStream::new(body)),
        "content-type",
        "text/plain; version=0.0.4",
    ))
}

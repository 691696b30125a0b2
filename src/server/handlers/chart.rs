//! The chart page's own API: candles coarsened for the range (`/api/ohlc`)
//! and live bars as Server-Sent Events (`/api/live`).

use serde::Serialize;
use serde_json::json;
use warp::{Rejection, Reply};

use super::{admit_symbol, bad, bars_in, now_secs, reject};
use crate::candle::NANOS_PER_SEC;
use crate::datafeed::{ZonedResolution, adaptive_resolution};
use crate::server::AppState;
use crate::server::models::{
    CandleJson, OhlcResponse, Params, fill_param, range_params, resolution_param, seconds_param,
    symbol_param, zone_param,
};

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
    let _slot = admit_symbol(&state, bars_in(from..to, res), &symbol, reject).await?;
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

/// Events of a live stream: `bar` (id: the newest bar start sent, Unix
/// seconds), `reset` and `failure` (not `error`, which an `EventSource`
/// reports for its own connection errors).
fn live_event(update: crate::server::push::Update) -> warp::sse::Event {
    use crate::server::push::Update;
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
    // The slot covers the check only: the stream's reads take their own.
    drop(admit_symbol(&state, 1, &symbol, reject).await?);
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
            .any(|u| matches!(u, crate::server::push::Update::Error(_)));
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

//! Raw trades: read (`GET /api/trades`) and written (`POST /api/trades`),
//! the late ones recorded for the next tick.

use serde::Serialize;
use serde_json::json;
use warp::{Rejection, Reply};

use super::{admit_symbol, bad, now_secs, reject};
use crate::candle::NANOS_PER_SEC;
use crate::influx::{TradeRead, trades_only};
use crate::ingest::wire::{self, TradesError};
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::models::{Params, TradeJson, count_param, seconds_param, symbol_param};

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
    let _slot = admit_symbol(&state, limit, &symbol, reject).await?;
    let mut trades = Vec::new();
    state
        .influx
        .read_trades(
            TradeRead::new(&[&symbol], from * NANOS_PER_SEC..to * NANOS_PER_SEC).limit(limit),
            trades_only(|t| trades.push(TradeJson::from(&t))),
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
    let trades = wire::parse_trades(&body, now_ms, form).map_err(|e| match e {
        TradesError::Invalid(m) => bad(m),
        TradesError::TooMany(n) => reject(ApiError::too_many_trades(n)),
    })?;
    // Trades go into the configured schema as the server holds it; a schema
    // that cannot be written faithfully, or a trade it cannot place, is
    // refused before anything is written.
    let writer = crate::ingest::TradeWriter::new(state.influx.layout())
        .map_err(|e| reject(ApiError::unwritable_schema(e)))?;
    for (i, t) in trades.iter().enumerate() {
        writer
            .measurement_of(&t.symbol)
            .map_err(|e| bad(format!("trade {i}: {e}")))?;
    }
    // Written and recorded on a task of its own: a client that hangs up must
    // not cancel the request between the InfluxDB write and the recording of
    // its late trades, or a late trade would be stored but never counted.
    let accepted = tokio::spawn(ingest(trades, state))
        .await
        .map_err(|e| reject(ApiError::ingest_failed(e)))??;
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

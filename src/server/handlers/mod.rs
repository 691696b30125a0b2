//! One handler per route; each states its route in its doc line. The routes
//! call them here; they are kept by route family: `udf` the TradingView
//! datafeed (`/udf/*`), `chart` the chart page's candles and live bars
//! (`/api/ohlc`, `/api/live`), `trades` raw trades read and written
//! (`/api/trades`), `ops` what operators ask (`/api/progress`, `/healthz`,
//! `/metrics`).

use warp::Rejection;

use super::AppState;
use super::error::ApiError;
use super::limits::Admission;
use crate::candle::NANOS_PER_SEC;
use crate::datafeed::{ChartResolution, DatafeedError};

mod chart;
mod ops;
mod trades;
mod udf;

pub use chart::{api_live, api_ohlc};
pub use ops::{api_progress, healthz, metrics};
pub use trades::{api_trades_get, api_trades_post};
pub use udf::{udf_config, udf_history, udf_quotes, udf_search, udf_symbols, udf_time};

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

/// The opening of every handler that reads one symbol's data: a query slot
/// for `cost` bars (or trades), to hold while the request runs, then a check
/// that the datafeed serves `symbol`. A full server is a `Busy` rejection in
/// either route family; a failed check goes through `refuse` ([`reject`] or
/// [`udf_reject`]).
async fn admit_symbol(
    state: &AppState,
    cost: u64,
    symbol: &str,
    refuse: fn(DatafeedError) -> Rejection,
) -> Result<Admission, Rejection> {
    let slot = state
        .limits
        .admit(cost)
        .await
        .map_err(warp::reject::custom)?;
    state
        .datafeed
        .require_symbol(symbol)
        .await
        .map_err(refuse)?;
    Ok(slot)
}

fn now_secs(state: &AppState) -> i64 {
    state.clock.now().div_euclid(NANOS_PER_SEC)
}

/// Bars of `res` in `[from, to)` seconds, as the cost estimate of a request.
fn bars_in(range: std::ops::Range<i64>, res: ChartResolution) -> u64 {
    let span = (range.end - range.start)
        .max(0)
        .saturating_mul(NANOS_PER_SEC);
    (span / res.nominal_nanos()) as u64
}

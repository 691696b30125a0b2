//! The HTTP server (warp): TradingView UDF datafeed under `/udf`, JSON API under
//! `/api`, health and metrics, and the chart page from `web/`.
//!
//! Filters in `routes` (one function per route) only route and extract;
//! handlers in [`handlers`] are plain async functions; request parsing and response shapes live in [`models`]. Every error
//! becomes a JSON body with the right status in one place, [`recover`].
//!
//! Facing a network: [`auth`] decides who may write and read, [`limits`] bounds
//! how many requests query InfluxDB at once, [`conn`] bounds connections and
//! how long a client may take to send a request. CORS for `/udf/*` and `/api/*`
//! follows `server.cors_origins` (nothing allowed by default).

pub mod auth;
pub mod conn;
pub mod handlers;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod push;
mod routes;
pub mod web;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use tokio::net::TcpListener;
use warp::Reply;
use warp::http::{HeaderValue, StatusCode};

use self::auth::{Access, Denied};
use self::conn::ConnectionLimits;
use self::limits::{Busy, QueryLimits};
use self::push::PushHub;

use crate::clock::Clock;
use crate::config::{DatafeedSettings, ServerSettings};
use crate::datafeed::{CacheSettings, Datafeed, DatafeedError};
use crate::influx::{InfluxClient, InfluxError};
use crate::progress::{ProgressError, ProgressStore};

/// What handlers need: the external systems and settings.
#[derive(Debug, Clone)]
pub struct AppState {
    /// InfluxDB client.
    pub influx: InfluxClient,
    /// Progress store.
    pub store: ProgressStore,
    /// Candle serving.
    pub datafeed: Arc<Datafeed>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Server settings.
    pub server: ServerSettings,
    /// Datafeed settings.
    pub settings: DatafeedSettings,
    /// Query slots (bounded work per request).
    pub limits: QueryLimits,
    /// Live bars for `GET /api/live`.
    pub push: PushHub,
    /// The zone each symbol's bars are counted in.
    pub zones: crate::zone::Zones,
}

impl AppState {
    /// State for a server over these systems, with a [`Datafeed`] built from `settings`.
    pub fn new(
        influx: InfluxClient,
        store: ProgressStore,
        clock: Arc<dyn Clock>,
        settings: &crate::config::Settings,
    ) -> AppState {
        // Serving and health checks fail fast; the engine keeps the long timeout.
        let influx = influx.fail_fast(settings.datafeed.timeout_secs, 0);
        let datafeed = Datafeed::new(
            influx.clone(),
            store.clone(),
            settings.datafeed.max_bars,
            std::time::Duration::from_secs(settings.datafeed.symbols_cache_secs),
        )
        .with_cache(CacheSettings::from(&settings.datafeed));
        let datafeed = Arc::new(datafeed);
        let limits = QueryLimits::new(&settings.server);
        let push = PushHub::new(
            datafeed.clone(),
            clock.clone(),
            limits.clone(),
            settings.engine.settle_secs,
            settings.server.max_streams,
        );
        AppState {
            influx,
            store,
            datafeed,
            clock,
            server: settings.server.clone(),
            settings: settings.datafeed.clone(),
            limits,
            push,
            // Checked when the settings were loaded.
            zones: settings.datafeed.zones().unwrap_or_default(),
        }
    }
}

/// An error answered as `{"error": "..."}` (plus `s`/`errmsg` on UDF routes).
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
    /// Answer in the TradingView UDF error shape too.
    pub udf: bool,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// 400 with a message (cut to a sensible length: messages quote the bad
    /// value, which may be megabytes long).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        let mut message = message.into();
        const MAX: usize = 300;
        if message.len() > MAX {
            let mut cut = MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
            udf: false,
        }
    }

    /// The same error in the UDF shape.
    pub fn udf(mut self) -> ApiError {
        self.udf = true;
        self
    }
}

impl From<InfluxError> for ApiError {
    fn from(e: InfluxError) -> Self {
        let status = match e {
            InfluxError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError {
            status,
            message: e.to_string(),
            udf: false,
        }
    }
}

impl From<crate::ingest::late::IngestError> for ApiError {
    fn from(e: crate::ingest::late::IngestError) -> Self {
        match e {
            crate::ingest::late::IngestError::Influx(e) => e.into(),
            crate::ingest::late::IngestError::Progress(e) => e.into(),
        }
    }
}

impl From<ProgressError> for ApiError {
    fn from(e: ProgressError) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: e.to_string(),
            udf: false,
        }
    }
}

impl From<DatafeedError> for ApiError {
    fn from(e: DatafeedError) -> Self {
        match e {
            DatafeedError::UnknownSymbol(_) => ApiError {
                status: StatusCode::NOT_FOUND,
                message: e.to_string(),
                udf: false,
            },
            DatafeedError::BadRequest(m) => ApiError::bad_request(m),
            DatafeedError::Influx(e) => e.into(),
            DatafeedError::Progress(e) => e.into(),
        }
    }
}

impl From<push::StartError> for ApiError {
    fn from(e: push::StartError) -> Self {
        match e {
            push::StartError::Datafeed(e) => e.into(),
            push::StartError::Timeout(_) => ApiError {
                status: StatusCode::GATEWAY_TIMEOUT,
                message: e.to_string(),
                udf: false,
            },
            push::StartError::Closing => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: e.to_string(),
                udf: false,
            },
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errmsg: Option<&'a str>,
}

/// Maps every rejection to a JSON error body and status: the only place that
/// decides how errors look on the wire.
pub async fn recover(err: warp::Rejection) -> Result<warp::reply::Response, Infallible> {
    let mut headers: Vec<(&'static str, HeaderValue)> = Vec::new();
    let (status, message, udf) = if let Some(e) = err.find::<Denied>() {
        if let Some(challenge) = e.challenge {
            headers.push(("www-authenticate", HeaderValue::from_static(challenge)));
        }
        (e.status, e.message.clone(), false)
    } else if let Some(e) = err.find::<ApiError>() {
        (e.status, e.message.clone(), e.udf)
    } else if let Some(e) = err.find::<push::TooManyStreams>() {
        headers.push(("retry-after", HeaderValue::from_static("30")));
        (StatusCode::SERVICE_UNAVAILABLE, e.to_string(), false)
    } else if let Some(busy) = err.find::<Busy>() {
        headers.push(("retry-after", HeaderValue::from_static("1")));
        let what = if busy.heavy {
            "too many long-range queries in progress"
        } else {
            "too many queries in progress"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("server busy: {what}; retry shortly"),
            false,
        )
    } else if let Some(e) = err.find::<warp::cors::CorsForbidden>() {
        (
            StatusCode::FORBIDDEN,
            format!(
                "cross-origin request refused ({e}); allowed origins are set in server.cors_origins"
            ),
            false,
        )
    } else if err.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_string(), false)
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large".to_string(),
            false,
        )
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "Content-Length header required".to_string(),
            false,
        )
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_string(),
            false,
        )
    } else if let Some(e) = err.find::<warp::reject::InvalidQuery>() {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid query string: {e}"),
            false,
        )
    } else if err.find::<warp::reject::UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported media type".to_string(),
            false,
        )
    } else {
        tracing::error!(?err, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".to_string(),
            false,
        )
    };
    let body = ErrorBody {
        error: &message,
        s: udf.then_some("error"),
        errmsg: udf.then_some(message.as_str()),
    };
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// Serves on an already bound listener until `shutdown` resolves, then finishes
/// in-flight requests. Binding outside lets tests use port 0. Who may write is
/// decided from the address the listener is bound to.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let listen = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            tracing::error!(error = %e, "listener has no local address");
            return;
        }
    };
    let access = Access::new(&state.server, listen);
    access.log_startup();
    if !state.server.cors_origins.is_empty() {
        tracing::info!(origins = ?state.server.cors_origins, "CORS allowed for /udf/* and /api/*");
    }
    let limits = ConnectionLimits::new(&state.server);
    // Live streams never end on their own: close them when shutdown begins,
    // so the graceful shutdown does not wait for them.
    let push = state.push.clone();
    let shutdown = async move {
        shutdown.await;
        push.close();
    };
    conn::serve_filter(listener, routes::routes(state, access), limits, shutdown).await;
}

/// Serves only `GET /metrics` on its own listener (`server.metrics_listen`),
/// for a scraper on an internal network; no token asked.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limits = ConnectionLimits::new(&state.server);
    conn::serve_filter(listener, routes::metrics_only(state), limits, shutdown).await;
}

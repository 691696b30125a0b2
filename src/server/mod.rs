//! The HTTP server (warp): TradingView UDF datafeed under `/udf`, JSON API under
//! `/api`, health and metrics, and the chart page from `web/`.
//!
//! Filters only route and extract; handlers in [`handlers`] are plain async
//! functions; request parsing and response shapes live in [`models`]. Every error
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
pub mod web;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::net::TcpListener;
use warp::Filter;
use warp::Reply;
use warp::http::{HeaderValue, StatusCode};

use self::auth::{Access, Denied};
use self::conn::{BodyTimeout, ConnectionLimits};
use self::limits::{Busy, QueryLimits};
use self::push::PushHub;

use crate::clock::Clock;
use crate::config::{DatafeedSettings, ServerSettings};
use crate::datafeed::{Datafeed, DatafeedError};
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
        .with_cache(settings.datafeed.cache());
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

/// The request body, at most `limit` bytes (Content-Length required); a body
/// that does not arrive within `server.body_timeout_secs` is a 408.
fn body(limit: u64) -> impl Filter<Extract = (bytes::Bytes,), Error = warp::Rejection> + Clone {
    warp::body::content_length_limit(limit)
        .and(warp::body::stream())
        .and_then(collect_body)
}

async fn collect_body<S, B>(stream: S) -> Result<bytes::Bytes, warp::Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    use futures_util::TryStreamExt;
    let mut stream = std::pin::pin!(stream);
    let mut body = bytes::BytesMut::new();
    while let Some(mut chunk) = stream.try_next().await.map_err(body_error)? {
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            body.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

fn body_error(e: warp::Error) -> warp::Rejection {
    use std::error::Error as _;
    let timed_out = e.source().and_then(|s| s.downcast_ref::<BodyTimeout>());
    warp::reject::custom(match timed_out {
        Some(t) => ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("{t}; send it faster or in smaller requests"),
            udf: false,
        },
        None => ApiError {
            status: StatusCode::BAD_REQUEST,
            message: "request body could not be read".to_string(),
            udf: false,
        },
    })
}

/// Passes only requests under `/udf/` or `/api/`, which CORS applies to.
fn cross_origin_paths() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::path::full()
        .and_then(|path: warp::path::FullPath| async move {
            let p = path.as_str();
            if p.starts_with("/udf/") || p.starts_with("/api/") {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
}

/// CORS for the datafeed and API: the listed origins (none by default) may call
/// them, with a preflight answered for GET and POST with a token.
fn cors(origins: &[String]) -> warp::cors::Cors {
    warp::cors()
        .allow_origins(origins.iter().map(String::as_str))
        .allow_methods(["GET", "POST"])
        .allow_headers(["authorization", "content-type"])
        .max_age(600)
        .build()
}

/// Passes only a body declared as JSON (`application/json`, parameters
/// allowed), else 415: a cheap layer against cross-site form posts, which
/// cannot send that type without a preflight.
fn json_content() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|ct: Option<String>| async move {
            let essence = ct
                .as_deref()
                .and_then(|v| v.split(';').next())
                .map(|v| v.trim().to_ascii_lowercase());
            if essence.as_deref() == Some("application/json") {
                Ok(())
            } else {
                Err(warp::reject::custom(ApiError {
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    message: format!(
                        "POST /api/trades takes Content-Type: application/json, got {}",
                        ct.map_or_else(|| "none".to_string(), |v| format!("{v:?}"))
                    ),
                    udf: false,
                }))
            }
        })
        .untuple_one()
}

/// Passes when `enabled`, else behaves like an unknown path.
fn only_if(enabled: bool) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::any()
        .and_then(move || async move {
            if enabled {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
}

fn with_state(state: AppState) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

fn params() -> impl Filter<Extract = (models::Params,), Error = Infallible> + Clone {
    // A malformed query string yields no parameters; handlers then name what is missing.
    warp::query::<models::Params>()
        .or(warp::any().map(models::Params::new))
        .unify()
}

/// All routes, with request logging and metrics; `access` decides who may
/// write and read.
pub fn routes(
    state: AppState,
    access: Access,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let web = PathBuf::from(&state.server.web_dir);
    let read = auth::read(access.clone());
    let write = auth::write(access);
    // Path before method in every route: an unknown path must be a 404, not the
    // 405 of whichever route happened to check its method first.
    let udf_config = warp::path!("udf" / "config")
        .and(warp::get())
        .and(read.clone())
        .and(with_state(state.clone()))
        .and_then(handlers::udf_config)
        .boxed();
    let udf_symbols = warp::path!("udf" / "symbols")
        .and(warp::get())
        .and(read.clone())
        .and(params())
        .and(with_state(state.clone()))
        .and_then(handlers::udf_symbols)
        .boxed();
    let udf_search = warp::path!("udf" / "search")
        .and(warp::get())
        .and(read.clone())
        .and(params())
        .and(with_state(state.clone()))
        .and_then(handlers::udf_search)
        .boxed();
    let udf_history = warp::path!("udf" / "history")
        .and(warp::get())
        .and(read.clone())
        .and(params())
        .and(with_state(state.clone()))
        .and_then(handlers::udf_history)
        .boxed();
    let udf_quotes = warp::path!("udf" / "quotes")
        .and(warp::get())
        .and(read.clone())
        .and(params())
        .and(with_state(state.clone()))
        .and_then(handlers::udf_quotes)
        .boxed();
    let udf_time = warp::path!("udf" / "time")
        .and(warp::get())
        .and(read.clone())
        .and(with_state(state.clone()))
        .and_then(handlers::udf_time)
        .boxed();
    let api_ohlc = warp::path!("api" / "ohlc")
        .and(warp::get())
        .and(read.clone())
        .and(params())
        .and(with_state(state.clone()))
        .and_then(handlers::api_ohlc)
        .boxed();
    let api_trades_get = warp::path!("api" / "trades")
        .and(warp::get())
        .and(read.clone())
        .and(params())
        .and(with_state(state.clone()))
        .and_then(handlers::api_trades_get)
        .boxed();
    let api_trades_post = warp::path!("api" / "trades")
        .and(warp::post())
        // Credentials before the body: a refused client cannot make us read it.
        .and(write)
        .and(json_content())
        .and(body(state.server.max_body_bytes))
        .and(with_state(state.clone()))
        .and_then(handlers::api_trades_post)
        .boxed();
    let api_live = warp::path!("api" / "live")
        .and(warp::get())
        .and(read.clone())
        .and(params())
        .and(warp::sse::last_event_id::<String>())
        .and(with_state(state.clone()))
        .and_then(handlers::api_live)
        .boxed();
    let api_progress = warp::path!("api" / "progress")
        .and(warp::get())
        .and(read.clone())
        .and(with_state(state.clone()))
        .and_then(handlers::api_progress)
        .boxed();
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and_then(handlers::healthz)
        .boxed();
    // With `server.metrics_listen` set, /metrics is served there instead.
    let metrics = warp::path!("metrics")
        .and(only_if(state.server.metrics_listen.is_empty()))
        .and(warp::get())
        .and(read.clone())
        .and(with_state(state.clone()))
        .and_then(handlers::metrics)
        .boxed();
    // The chart page: embedded in the binary, or from `server.web_dir` when set.
    let on_disk = !state.server.web_dir.is_empty();
    let embedded_page = only_if(!on_disk).and(read.clone()).and(web::embedded());
    let index = warp::path::end()
        .and(warp::get())
        .and(only_if(on_disk))
        .and(read.clone())
        .and(warp::fs::file(web.join("index.html")));
    let static_files = warp::path("static")
        .and(only_if(on_disk))
        .and(read.clone())
        .and(warp::fs::dir(web.clone()));
    let chart_lib = warp::path!("lib" / "lightweight-charts.js")
        .and(warp::get())
        .and(only_if(on_disk))
        .and(read)
        .and(warp::fs::file(web.join(
            "node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js",
        )));
    // Each route above is boxed: its future is a pointer in the `or` chain
    // below, not an inline copy. Unboxed, every `or` level of a debug build
    // carries every handler's future on the stack (about 130 KB a level),
    // and a request deep in the chain overflowed a 2 MiB worker stack.
    let datafeed_and_api = udf_config
        .or(udf_symbols)
        .or(udf_search)
        .or(udf_history)
        .or(udf_quotes)
        .or(udf_time)
        .or(api_ohlc)
        .or(api_trades_get)
        .or(api_trades_post)
        .or(api_live)
        .or(api_progress);
    cross_origin_paths()
        .and(datafeed_and_api.with(cors(&state.server.cors_origins)))
        .or(healthz)
        .or(metrics)
        .or(embedded_page)
        .or(index)
        .or(static_files)
        .or(chart_lib)
        .recover(recover)
        // Answers differ by Origin (CORS): a shared cache must not hand one
        // origin's answer to another.
        .with(warp::reply::with::header("vary", "origin"))
        .with(warp::log::custom(metrics::record_request))
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
    conn::serve_filter(listener, routes(state, access), limits, shutdown).await;
}

/// Serves only `GET /metrics` on its own listener (`server.metrics_listen`),
/// for a scraper on an internal network; no token asked.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limits = ConnectionLimits::new(&state.server);
    let route = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .and_then(handlers::metrics)
        .recover(recover)
        .with(warp::log::custom(metrics::record_request));
    conn::serve_filter(listener, route, limits, shutdown).await;
}

//! The routes: one function per route, whose doc line gives its method, path,
//! what it serves and who may call it, and [`routes`], which composes them.
//! Filters here only route and extract; the work is in [`super::handlers`].
//!
//! Every route matches its path before its method: an unknown path must be a
//! 404, not the 405 of whichever route happened to check its method first.
//! Who may call: *readers* pass `server.read_token` when one is set (anyone
//! otherwise), *writers* pass the write policy of [`auth`], *anyone* is public.

use std::convert::Infallible;
use std::path::PathBuf;

use warp::Filter;
use warp::Reply;
use warp::filters::BoxedFilter;

use super::auth::{self, Access};
use super::conn::BodyTimeout;
use super::error::{ApiError, recover};
use super::{AppState, handlers, metrics, models, web};

/// All routes, with request logging and metrics; `access` decides who may
/// write and read.
pub(super) fn routes(
    state: AppState,
    access: Access,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    // Each route is boxed, and so is the CORS group below: a future is a
    // pointer in the `or` chain, not an inline copy. Unboxed, every `or`
    // level of a debug build carries every handler's future on the stack
    // (about 130 KB a level), and a request deep in the chain overflowed a
    // 2 MiB worker stack; boxed, each route is served from half that
    // (tests/integration/stack.rs).
    let datafeed_and_api = udf_config(&state, &access)
        .or(udf_symbols(&state, &access))
        .or(udf_search(&state, &access))
        .or(udf_history(&state, &access))
        .or(udf_quotes(&state, &access))
        .or(udf_time(&state, &access))
        .or(api_ohlc(&state, &access))
        .or(api_trades_get(&state, &access))
        .or(api_trades_post(&state, &access))
        .or(api_live(&state, &access))
        .or(api_progress(&state, &access));
    cross_origin_paths()
        .and(datafeed_and_api.with(cors(&state.server.cors_origins)))
        .boxed()
        .or(healthz(&state))
        .or(metrics(&state, &access))
        .or(chart_embedded(&state, &access))
        .or(chart_index(&state, &access))
        .or(chart_static(&state, &access))
        .or(chart_lib(&state, &access))
        .recover(recover)
        // Answers differ by Origin (CORS): a shared cache must not hand one
        // origin's answer to another.
        .with(warp::reply::with::header("vary", "origin"))
        .with(warp::log::custom(metrics::record_request))
}

/// The routes of `server.metrics_listen`: `GET /metrics` alone, for anyone
/// who reaches that listener (a scraper on an internal network).
pub(super) fn metrics_only(
    state: AppState,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_state(&state))
        .and_then(handlers::metrics)
        .recover(recover)
        .with(warp::log::custom(metrics::record_request))
}

/// A route, boxed (see [`routes`]).
type Route = BoxedFilter<(warp::reply::Response,)>;

/// `GET /udf/config`: what the datafeed supports; readers.
fn udf_config(state: &AppState, access: &Access) -> Route {
    warp::path!("udf" / "config")
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(with_state(state))
        .and_then(handlers::udf_config)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /udf/symbols?symbol=`: one symbol's info for TradingView; readers.
fn udf_symbols(state: &AppState, access: &Access) -> Route {
    warp::path!("udf" / "symbols")
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(params())
        .and(with_state(state))
        .and_then(handlers::udf_symbols)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /udf/search?query=&limit=`: the symbols whose name contains the
/// query; readers.
fn udf_search(state: &AppState, access: &Access) -> Route {
    warp::path!("udf" / "search")
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(params())
        .and(with_state(state))
        .and_then(handlers::udf_search)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /udf/history?symbol=&resolution=&from=&to=[&countback=]`: bars at
/// exactly the requested resolution, for TradingView; readers.
fn udf_history(state: &AppState, access: &Access) -> Route {
    warp::path!("udf" / "history")
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(params())
        .and(with_state(state))
        .and_then(handlers::udf_history)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /udf/quotes?symbols=A,B`: each symbol's last 24 hours; readers.
fn udf_quotes(state: &AppState, access: &Access) -> Route {
    warp::path!("udf" / "quotes")
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(params())
        .and(with_state(state))
        .and_then(handlers::udf_quotes)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /udf/time`: the server's time in Unix seconds; readers.
fn udf_time(state: &AppState, access: &Access) -> Route {
    warp::path!("udf" / "time")
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(with_state(state))
        .and_then(handlers::udf_time)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /api/ohlc?symbol=&resolution=&from=&to=[&tz=][&fill=previous]`:
/// candles for the chart page, coarsened for long ranges; readers.
fn api_ohlc(state: &AppState, access: &Access) -> Route {
    warp::path!("api" / "ohlc")
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(params())
        .and(with_state(state))
        .and_then(handlers::api_ohlc)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /api/trades?symbol=&from=&to=&limit=`: raw trades, oldest first;
/// readers.
fn api_trades_get(state: &AppState, access: &Access) -> Route {
    warp::path!("api" / "trades")
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(params())
        .and(with_state(state))
        .and_then(handlers::api_trades_get)
        .map(Reply::into_response)
        .boxed()
}

/// `POST /api/trades`: one trade or an array as JSON, written to InfluxDB,
/// the late ones recorded for the next tick; writers.
fn api_trades_post(state: &AppState, access: &Access) -> Route {
    warp::path!("api" / "trades")
        .and(warp::post())
        // Credentials before the body: a refused client cannot make us read it.
        .and(auth::write(access.clone()))
        .and(json_content())
        .and(body(state.server.max_body_bytes))
        .and(with_state(state))
        .and_then(handlers::api_trades_post)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /api/live?symbol=&resolution=[&since=][&tz=]`: a symbol's newest bars
/// as Server-Sent Events, resumed from `Last-Event-ID`; readers.
fn api_live(state: &AppState, access: &Access) -> Route {
    warp::path!("api" / "live")
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(params())
        .and(warp::sse::last_event_id::<String>())
        .and(with_state(state))
        .and_then(handlers::api_live)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /api/progress`: the progress table as JSON; readers.
fn api_progress(state: &AppState, access: &Access) -> Route {
    warp::path!("api" / "progress")
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(with_state(state))
        .and_then(handlers::api_progress)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /healthz`: up, degraded or down, for load balancers; anyone.
fn healthz(state: &AppState) -> Route {
    warp::path!("healthz")
        .and(warp::get())
        .and(with_state(state))
        .and_then(handlers::healthz)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /metrics`: Prometheus text; readers. Not on this listener when
/// `server.metrics_listen` is set: [`metrics_only`] serves it there.
fn metrics(state: &AppState, access: &Access) -> Route {
    warp::path!("metrics")
        .and(only_if(state.server.metrics_listen.is_empty()))
        .and(warp::get())
        .and(auth::read(access.clone()))
        .and(with_state(state))
        .and_then(handlers::metrics)
        .map(Reply::into_response)
        .boxed()
}

/// `GET /`, `/static/app.js`, `/static/style.css`, `/lib/lightweight-charts.js`:
/// the chart page built into the binary, unless `server.web_dir` is set;
/// readers.
fn chart_embedded(state: &AppState, access: &Access) -> Route {
    only_if(!serves_web_dir(state))
        .and(auth::read(access.clone()))
        .and(web::embedded())
        .map(Reply::into_response)
        .boxed()
}

/// `GET /`: `index.html` of `server.web_dir`, when set; readers.
fn chart_index(state: &AppState, access: &Access) -> Route {
    warp::path::end()
        .and(warp::get())
        .and(only_if(serves_web_dir(state)))
        .and(auth::read(access.clone()))
        .and(warp::fs::file(web_dir(state).join("index.html")))
        .map(Reply::into_response)
        .boxed()
}

/// `GET /static/*`: the files of `server.web_dir`, when set; readers.
fn chart_static(state: &AppState, access: &Access) -> Route {
    warp::path("static")
        .and(only_if(serves_web_dir(state)))
        .and(auth::read(access.clone()))
        .and(warp::fs::dir(web_dir(state)))
        .map(Reply::into_response)
        .boxed()
}

/// `GET /lib/lightweight-charts.js`: the chart library from
/// `server.web_dir`'s `node_modules`, when set; readers.
fn chart_lib(state: &AppState, access: &Access) -> Route {
    warp::path!("lib" / "lightweight-charts.js")
        .and(warp::get())
        .and(only_if(serves_web_dir(state)))
        .and(auth::read(access.clone()))
        .and(warp::fs::file(web_dir(state).join(
            "node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js",
        )))
        .map(Reply::into_response)
        .boxed()
}

/// Whether the chart page comes from `server.web_dir` rather than the binary.
fn serves_web_dir(state: &AppState) -> bool {
    !state.server.web_dir.is_empty()
}

fn web_dir(state: &AppState) -> PathBuf {
    PathBuf::from(&state.server.web_dir)
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
        Some(t) => ApiError::body_timeout(t),
        None => ApiError::body_unreadable(),
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
                Err(warp::reject::custom(ApiError::not_json(ct.as_deref())))
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

/// A copy of the state for each request.
fn with_state(
    state: &AppState,
) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone + use<> {
    let state = state.clone();
    warp::any().map(move || state.clone())
}

/// The query parameters; a malformed query string yields none, and handlers
/// then name what is missing.
fn params() -> impl Filter<Extract = (models::Params,), Error = Infallible> + Clone {
    warp::query::<models::Params>()
        .or(warp::any().map(models::Params::new))
        .unify()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use warp::http::StatusCode;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Settings;
    use crate::influx::InfluxClient;
    use crate::progress::ProgressStore;

    /// The routes over a fresh SQLite store and an InfluxDB that is never
    /// asked (every request here is answered before a handler runs), for a
    /// server listening off loopback without tokens: reading is public,
    /// writing refused.
    async fn served(configure: impl FnOnce(&mut Settings)) -> (tempfile::TempDir, Served) {
        let mut settings = Settings::load_with_env(None, Vec::new()).unwrap();
        configure(&mut settings);
        let dir = tempfile::tempdir().unwrap();
        let store = ProgressStore::connect(&dir.path().join("p.db").display().to_string())
            .await
            .unwrap();
        let influx = InfluxClient::new(&settings.influx).unwrap();
        let state = AppState::new(influx, store, Arc::new(ManualClock::new(0)), &settings);
        let access = Access::new(&settings.server, "192.0.2.1:8080".parse().unwrap());
        (dir, Served(state, access))
    }

    struct Served(AppState, Access);

    impl Served {
        async fn answer(&self, request: warp::test::RequestBuilder) -> (StatusCode, String) {
            let response = request.reply(&routes(self.0.clone(), self.1.clone())).await;
            let body = String::from_utf8_lossy(response.body()).into_owned();
            (response.status(), body)
        }
    }

    #[tokio::test]
    async fn a_refused_writer_is_answered_before_its_body_is_read() {
        let (_dir, served) = served(|s| s.server.max_body_bytes = 16).await;
        let too_large = warp::test::request()
            .method("POST")
            .path("/api/trades")
            .header("content-type", "application/json")
            .body(format!("[{}]", "1,".repeat(64)));
        let (status, body) = served.answer(too_large).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }

    #[tokio::test]
    async fn an_unknown_path_is_a_404_whatever_the_method_and_a_known_one_a_405() {
        let (_dir, served) = served(|_| {}).await;
        for method in ["GET", "POST", "PUT", "DELETE"] {
            for path in ["/no/such/thing", "/udf/nothing", "/api"] {
                let request = warp::test::request().method(method).path(path);
                let (status, body) = served.answer(request).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            }
        }
        for (method, path) in [
            ("POST", "/udf/history"),
            ("PUT", "/api/trades"),
            ("POST", "/healthz"),
        ] {
            let request = warp::test::request().method(method).path(path);
            let (status, body) = served.answer(request).await;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn metrics_are_not_on_the_main_listener_when_they_have_their_own() {
        let (_dir, own) = served(|s| s.server.metrics_listen = "127.0.0.1:9100".into()).await;
        let (status, _) = own.answer(warp::test::request().path("/metrics")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_dir, shared) = served(|_| {}).await;
        let (status, _) = shared.answer(warp::test::request().path("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
    }
}

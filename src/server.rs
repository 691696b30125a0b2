//! The HTTP server (warp). For now: `GET /healthz`. The datafeed and chart come
//! on top of the same [`AppState`] and [`serve`].

use std::convert::Infallible;
use std::future::Future;

use serde::Serialize;
use tokio::net::TcpListener;
use warp::Filter;
use warp::http::StatusCode;

use crate::influx::InfluxClient;
use crate::progress::ProgressStore;

/// What handlers need: the external systems.
#[derive(Debug, Clone)]
pub struct AppState {
    /// InfluxDB client.
    pub influx: InfluxClient,
    /// Progress store.
    pub store: ProgressStore,
}

#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    influx: String,
    sqlite: String,
}

fn with_state(state: AppState) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// `GET /healthz`: 200 when InfluxDB (database included) and SQLite answer, else 503.
async fn healthz(state: AppState) -> Result<impl warp::Reply, Infallible> {
    let influx = match state.influx.check_database().await {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let sqlite = match state.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let healthy = influx == "ok" && sqlite == "ok";
    let body = Health {
        status: if healthy { "ok" } else { "unhealthy" },
        influx,
        sqlite,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(warp::reply::with_status(warp::reply::json(&body), status))
}

/// All routes.
pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .and(with_state(state))
        .and_then(healthz)
        .with(warp::trace::request())
}

/// Serves on an already bound listener until `shutdown` resolves, then finishes
/// in-flight requests. Binding outside lets tests use port 0.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

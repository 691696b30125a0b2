//! The HTTP server (warp): TradingView UDF datafeed under `/udf`, JSON API under
//! `/api`, health and metrics, and the chart page from `web/`.
//!
//! Filters in `routes` (one function per route) only route and extract;
//! handlers in [`handlers`] are plain async functions; request parsing and
//! response shapes live in [`models`]. Every error becomes a JSON body with
//! the right status in one place, [`error`].
//!
//! Facing a network: [`auth`] decides who may write and read, [`limits`] bounds
//! how many requests query InfluxDB at once, [`conn`] bounds connections and
//! how long a client may take to send a request. CORS for `/udf/*` and `/api/*`
//! follows `server.cors_origins` (nothing allowed by default).

pub mod auth;
pub mod conn;
pub mod error;
pub mod handlers;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod push;
mod routes;
pub mod web;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use self::auth::Access;
use self::conn::ConnectionLimits;
use self::limits::QueryLimits;
use self::push::PushHub;

use crate::clock::Clock;
use crate::config::{DatafeedSettings, ServerSettings};
use crate::datafeed::{CacheSettings, Datafeed};
use crate::influx::InfluxClient;
use crate::progress::ProgressStore;

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

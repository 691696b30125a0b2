//! The one wiring of `ohlcd run`: the engine, whose scheduled ticks also
//! refresh the datafeed's cache and the live-bar feeds, and the HTTP servers,
//! over one InfluxDB client, progress store and clock. `ohlcd run` builds it
//! here, and so do the tests that serve.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::Settings;
use crate::engine::{Engine, TaskFilter};
use crate::server::AppState;

/// The running service's parts: the engine and the serving state over the
/// same InfluxDB client and progress store.
#[derive(Debug)]
pub struct App {
    engine: Arc<Engine>,
    state: AppState,
}

impl App {
    /// The serving state (datafeed, live-bar feeds, limits) over `engine`'s
    /// InfluxDB client and progress store, on `clock`.
    pub fn new(engine: Arc<Engine>, clock: Arc<dyn Clock>, settings: &Settings) -> App {
        let state = AppState::new(
            engine.warehouse().clone(),
            engine.store().clone(),
            clock,
            settings,
        );
        App { engine, state }
    }

    /// The serving state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// What each tick hands on before it runs: the datafeed's cache learns
    /// that watermarks may move, and every live-bar feed re-reads its bar, so
    /// trades written straight into InfluxDB reach the chart within a tick.
    pub fn on_tick(state: &AppState) -> impl Fn() + Send + Sync + 'static {
        let (datafeed, push) = (state.datafeed.clone(), state.push.clone());
        move || {
            datafeed.tick_done();
            push.refresh_all();
        }
    }

    /// Serves on `listener` (and `/metrics` alone on `metrics`, when given),
    /// ticks once at once and then on the cron, until `shutdown` completes.
    /// Then it stops in order: no new tick, the servers, the running tick
    /// (which finishes its chunk and releases its leases), the store.
    pub async fn run(
        self,
        settings: &Settings,
        listener: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let App { engine, state } = self;
        let addr = listener.local_addr()?;
        crate::server::metrics::handle();
        // What the alert rules read besides the counters, and the log's
        // request summary (each request alone is logged at debug).
        let mut watchers = vec![tokio::spawn(crate::server::metrics::watch_dependencies(
            state.influx.clone(),
            state.store.clone(),
        ))];
        if settings.server.request_summary_secs > 0 {
            watchers.push(tokio::spawn(crate::server::metrics::log_request_summaries(
                Duration::from_secs(settings.server.request_summary_secs),
            )));
        }
        let (stop, stopped) = watch::channel(false);
        let on_tick = App::on_tick(&state);
        let servers = spawn_servers(state, listener, metrics, stopped)?;
        let mut scheduler = crate::scheduler::start(engine.clone(), &settings.engine.cron, on_tick)
            .await
            .context("cannot start the scheduler")?;
        tracing::info!(owner = engine.owner(), cron = %settings.engine.cron, "scheduler started");
        println!("ohlcd listening on http://{addr}");
        // Catch up right away instead of waiting for the first cron tick.
        let first = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let r = engine.tick(&TaskFilter::default()).await;
                crate::scheduler::log_tick(&r);
            })
        };
        shutdown.await;
        tracing::info!("shutting down: finishing the running chunk");
        engine.request_stop();
        scheduler.shutdown().await?;
        let _ = stop.send(true);
        // A tick in progress finishes its chunk and releases its leases.
        engine.wait_idle().await;
        first.abort();
        for server in servers {
            let _ = server.await;
        }
        for watcher in watchers {
            watcher.abort();
        }
        engine.store().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Starts the HTTP server on `listener` and, when given, `/metrics` alone on
/// `metrics`; both stop once `stop` turns true.
pub fn spawn_servers(
    state: AppState,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let until_stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let mut servers = Vec::new();
    if let Some(metrics) = metrics {
        tracing::info!(listen = %metrics.local_addr()?, "serving /metrics");
        servers.push(tokio::spawn(crate::server::serve_metrics(
            metrics,
            state.clone(),
            until_stopped(stop.clone()),
        )));
    }
    servers.push(tokio::spawn(crate::server::serve(
        listener,
        state,
        until_stopped(stop),
    )));
    Ok(servers)
}

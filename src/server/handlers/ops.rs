//! What operators ask: the progress table (`/api/progress`), health
//! (`/healthz`) and metrics (`/metrics`).

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::reject;
use crate::progress::ProgressEntry;
use crate::server::AppState;

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
    let registry = bytes::Bytes::from(crate::server::metrics::render());
    let mut typed = false;
    let lags = chunks.map(move |chunk| {
        let mut buf = String::new();
        for task in chunk {
            let task = task?;
            let Some(w) = task.watermark else { continue };
            if !std::mem::replace(&mut typed, true) {
                buf.push_str(crate::server::metrics::TASK_LAG_TYPE);
            }
            let lag = (now - w) as f64 / 1e9;
            crate::server::metrics::write_task_lag(&mut buf, &task.symbol, task.resolution, lag);
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

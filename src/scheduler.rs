//! Cron wiring: tokio-cron-scheduler fires [`Engine::tick`] on `engine.cron`.
//! All logic lives in the engine; this only triggers it and logs the outcome.

use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::engine::{Engine, TaskFilter, TickReport};

/// Logs one tick's failures (the engine logs the tick's summary itself).
pub fn log_tick(result: &Result<TickReport, crate::engine::EngineError>) {
    match result {
        Ok(r) if r.overlapped => tracing::debug!("previous tick still running; skipped"),
        Ok(r) => {
            for (symbol, error) in &r.failures {
                tracing::error!(symbol, error, "symbol failed");
            }
        }
        Err(e) => tracing::error!(error = %e, "tick failed"),
    }
}

/// Starts a scheduler that ticks `engine` on `cron` (6 fields, seconds first),
/// calling `on_tick` as each tick begins (even one skipped because the previous
/// is still running: it must not wait for a long backfill).
pub async fn start(
    engine: Arc<Engine>,
    cron: &str,
    on_tick: impl Fn() + Send + Sync + 'static,
) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    let job = Job::new_async(cron, move |_id, _lock| {
        let engine = engine.clone();
        on_tick();
        Box::pin(async move {
            let result = engine.tick(&TaskFilter::default()).await;
            log_tick(&result);
        })
    })?;
    scheduler.add(job).await?;
    scheduler.start().await?;
    Ok(scheduler)
}

/// Checks a cron expression without starting anything.
pub fn validate_cron(cron: &str) -> Result<(), String> {
    Job::new_async(cron, |_id, _lock| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| format!("engine.cron {cron:?} is not a valid cron expression (6 fields, seconds first): {e:?}"))
}

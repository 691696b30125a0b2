//! Opening the PostgreSQL backend, shared by daemons on several hosts.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;

use super::db::Db;
use super::{ProgressError, redact};

/// Connects to the existing PostgreSQL database at `url` and migrates it with
/// `migrations/postgres/`. Daemons starting together are safe: sqlx holds a
/// PostgreSQL advisory lock while it migrates.
pub(super) async fn connect(url: &str) -> Result<Db, ProgressError> {
    let pool = PgPoolOptions::new()
        // A pass is a few statements at a time per daemon; the engine's
        // concurrent batches and the HTTP handlers share these.
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|source| ProgressError::Open {
            url: redact(url),
            source,
        })?;
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .map_err(|source| ProgressError::Migrate {
            url: redact(url),
            source,
        })?;
    Ok(Db::Postgres(pool))
}

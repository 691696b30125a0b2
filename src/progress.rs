//! The SQLite progress store: one row per (symbol, resolution) task with its status,
//! watermark and lease, plus a history row per chunk (tables in `migrations/`).
//!
//! Leases make tasks exclusive across daemons sharing one database: a claim is a
//! single conditional `UPDATE` (atomic in SQLite), every later write is fenced by
//! `lease_owner = ?`, and a lease that is not renewed expires so another daemon can
//! take the task over after a crash.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use crate::candle::Resolution;
use crate::times::{from_rfc3339, human_duration, to_rfc3339};

mod symbols;
pub use symbols::{StepCommit, SymbolState};

/// Errors of the progress store.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// The database file could not be opened or created.
    #[error("cannot open progress database {url}: {source}")]
    Open {
        /// The configured URL.
        url: String,
        /// Underlying error.
        source: sqlx::Error,
    },
    /// Migrations failed (often: the file is not a SQLite database).
    #[error("cannot migrate progress database {url}: {source}")]
    Migrate {
        /// The configured URL.
        url: String,
        /// Underlying error.
        source: sqlx::migrate::MigrateError,
    },
    /// A read-only command found no progress database where it looked.
    #[error(
        "no progress database at {path} (progress.database_url = {url}); `ohlcd run` or `ohlcd backfill` creates it: point --config or OHLCD_PROGRESS__DATABASE_URL at the daemon's file"
    )]
    Missing {
        /// The configured URL.
        url: String,
        /// The file looked for.
        path: String,
    },
    /// A query failed.
    #[error("progress database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Our lease on a task is gone (expired and taken over): stop working on it.
    #[error("lease on {symbol} {resolution} lost by {owner}")]
    LeaseLost {
        /// Task symbol.
        symbol: String,
        /// Task resolution.
        resolution: Resolution,
        /// Who thought it held the lease.
        owner: String,
    },
    /// A stored value is not what this version expects.
    #[error("progress database holds an invalid value: {0}")]
    Invalid(String),
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Never run, or released without finishing.
    Idle,
    /// Leased by a daemon and being worked on.
    Running,
    /// Reached its horizon on the last run.
    Completed,
    /// The last run failed; `last_error` says why.
    Failed,
}

impl TaskStatus {
    /// The value stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Idle => "idle",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }
}

impl FromStr for TaskStatus {
    type Err = ProgressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "idle" => TaskStatus::Idle,
            "running" => TaskStatus::Running,
            "completed" => TaskStatus::Completed,
            "failed" => TaskStatus::Failed,
            other => return Err(ProgressError::Invalid(format!("status {other:?}"))),
        })
    }
}

/// One task row.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Trading symbol.
    pub symbol: String,
    /// Candle resolution.
    pub resolution: Resolution,
    /// Current status.
    pub status: TaskStatus,
    /// Everything before it is materialized (Unix ns); `None` before the first chunk.
    pub watermark: Option<i64>,
    /// Lease holder, if any.
    pub lease_owner: Option<String>,
    /// Lease expiry (Unix ns).
    pub lease_expires_at: Option<i64>,
    /// Start of the last run (Unix ns).
    pub last_run_started_at: Option<i64>,
    /// End of the last run (Unix ns).
    pub last_run_finished_at: Option<i64>,
    /// Error of the last failed run.
    pub last_error: Option<String>,
    /// Runs started.
    pub runs: i64,
    /// Chunks committed.
    pub chunks: i64,
    /// Source rows read (trades or finer candles).
    pub rows_read: i64,
    /// Candles written.
    pub candles_written: i64,
}

/// One row of run history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// Task symbol.
    pub symbol: String,
    /// Task resolution.
    pub resolution: String,
    /// Who ran it.
    pub owner: String,
    /// `chunk` or `rebuild`.
    pub kind: String,
    /// Range start, RFC 3339.
    pub range_start: String,
    /// Range end, RFC 3339.
    pub range_end: String,
    /// Source rows read.
    pub rows_read: i64,
    /// Candles written.
    pub candles_written: i64,
    /// `ok` or `failed`.
    pub status: String,
    /// Error text for failures.
    pub error: Option<String>,
}

/// The progress table as shown by `ohlcd progress --json` and `GET /api/progress`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProgressEntry {
    /// Trading symbol.
    pub symbol: String,
    /// `1m` … `1d`.
    pub resolution: String,
    /// `idle`, `running`, `completed` or `failed`.
    pub status: String,
    /// RFC 3339; everything before it is materialized.
    pub watermark: Option<String>,
    /// Seconds between now and the watermark.
    pub lag_seconds: Option<i64>,
    /// Same, human readable.
    pub lag: Option<String>,
    /// Start of the last run, RFC 3339.
    pub last_run_started_at: Option<String>,
    /// End of the last run, RFC 3339.
    pub last_run_finished_at: Option<String>,
    /// Duration of the last finished run in milliseconds.
    pub last_run_duration_ms: Option<i64>,
    /// Error of the last failed run.
    pub last_error: Option<String>,
    /// Lease holder while running.
    pub lease_owner: Option<String>,
    /// Lease expiry, RFC 3339.
    pub lease_expires_at: Option<String>,
    /// Runs started.
    pub runs: i64,
    /// Chunks committed.
    pub chunks: i64,
    /// Source rows read.
    pub rows_read: i64,
    /// Candles written.
    pub candles_written: i64,
}

impl ProgressEntry {
    /// The user-facing view of `task` at time `now`.
    pub fn from_task(task: &Task, now: i64) -> ProgressEntry {
        let lag = task.watermark.map(|w| (now - w).max(0));
        ProgressEntry {
            symbol: task.symbol.clone(),
            resolution: task.resolution.name().to_string(),
            status: task.status.as_str().to_string(),
            watermark: task.watermark.map(to_rfc3339),
            lag_seconds: lag.map(|l| l / 1_000_000_000),
            lag: lag.map(human_duration),
            last_run_started_at: task.last_run_started_at.map(to_rfc3339),
            last_run_finished_at: task.last_run_finished_at.map(to_rfc3339),
            last_run_duration_ms: match (task.last_run_started_at, task.last_run_finished_at) {
                (Some(s), Some(f)) if f >= s => Some((f - s) / 1_000_000),
                _ => None,
            },
            last_error: task.last_error.clone(),
            lease_owner: task.lease_owner.clone(),
            lease_expires_at: task.lease_expires_at.map(to_rfc3339),
            runs: task.runs,
            chunks: task.chunks,
            rows_read: task.rows_read,
            candles_written: task.candles_written,
        }
    }
}

/// Handle on the progress database.
#[derive(Debug, Clone)]
pub struct ProgressStore {
    pool: SqlitePool,
}

fn opt_time(row: &SqliteRow, col: &str) -> Result<Option<i64>, ProgressError> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| from_rfc3339(&s).map_err(ProgressError::Invalid))
        .transpose()
}

fn task_from_row(row: &SqliteRow) -> Result<Task, ProgressError> {
    let res: String = row.try_get("resolution")?;
    let status: String = row.try_get("status")?;
    Ok(Task {
        symbol: row.try_get("symbol")?,
        resolution: res
            .parse()
            .map_err(|e: crate::candle::UnknownResolution| ProgressError::Invalid(e.to_string()))?,
        status: status.parse()?,
        watermark: opt_time(row, "watermark")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: opt_time(row, "lease_expires_at")?,
        last_run_started_at: opt_time(row, "last_run_started_at")?,
        last_run_finished_at: opt_time(row, "last_run_finished_at")?,
        last_error: row.try_get("last_error")?,
        runs: row.try_get("runs")?,
        chunks: row.try_get("chunks")?,
        rows_read: row.try_get("rows_read")?,
        candles_written: row.try_get("candles_written")?,
    })
}

/// An exclusive lock on `<database>.migrate-lock`, held while a process opens
/// the database (see [`ProgressStore::connect`]); released on drop. Where the
/// lock file cannot be created (a read-only directory), opening goes on
/// without it: nothing can be created or migrated there anyway.
struct OpenLock(Option<std::fs::File>);

impl OpenLock {
    async fn acquire(options: &SqliteConnectOptions) -> Result<OpenLock, ProgressError> {
        let path = format!("{}.migrate-lock", options.get_filename().display());
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            return Ok(OpenLock(None));
        };
        // `File::lock` blocks until the holder is done: off the async threads.
        tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|e| ProgressError::Invalid(e.to_string()))?
            .map(|file| OpenLock(Some(file)))
            .map_err(|e| ProgressError::Invalid(format!("cannot lock {path}: {e}")))
    }
}

impl Drop for OpenLock {
    fn drop(&mut self) {
        if let Some(file) = &self.0 {
            let _ = file.unlock();
        }
    }
}

impl ProgressStore {
    /// Opens (creating if missing) the SQLite database at `url` and migrates it.
    ///
    /// `url` is a sqlx URL (`sqlite://ohlcd.db`) or a plain file path.
    pub async fn connect(url: &str) -> Result<ProgressStore, ProgressError> {
        let full = if url.starts_with("sqlite:") {
            url.to_string()
        } else {
            format!("sqlite://{url}")
        };
        let open_err = |source| ProgressError::Open {
            url: url.to_string(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&full)
            .map_err(open_err)?
            .create_if_missing(true)
            // WAL lets readers (`ohlcd progress`) run while a daemon writes, and the
            // busy timeout makes two daemons wait for each other instead of failing.
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL under WAL never corrupts the file; a power cut may only lose
            // the last commits, i.e. move a watermark back, and recomputing
            // candles is idempotent. It saves an fsync per chunk.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        // The first connection switches the file to WAL: a read of its header
        // upgraded to a write. SQLite answers a second process doing the same at
        // that moment with SQLITE_BUSY at once, without the busy timeout (two
        // readers both waiting to write would deadlock), so two daemons started
        // together on a fresh file failed with "database is locked"; two creating
        // the tables at once would fail too. So the whole open, from creating the
        // file to the last migration, runs under a lock next to the database.
        let lock = OpenLock::acquire(&options).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        let migrated = sqlx::migrate!("./migrations").run(&pool).await;
        drop(lock);
        migrated.map_err(|source| ProgressError::Migrate {
            url: url.to_string(),
            source,
        })?;
        Ok(ProgressStore { pool })
    }

    /// Opens an existing progress database for reading (`ohlcd progress`):
    /// never creates one, and says where it looked when there is none.
    pub async fn open_existing(url: &str) -> Result<ProgressStore, ProgressError> {
        let full = if url.starts_with("sqlite:") {
            url.to_string()
        } else {
            format!("sqlite://{url}")
        };
        let options =
            SqliteConnectOptions::from_str(&full).map_err(|source| ProgressError::Open {
                url: url.to_string(),
                source,
            })?;
        let path = options.get_filename();
        if path != std::path::Path::new(":memory:") && !path.exists() {
            return Err(ProgressError::Missing {
                url: url.to_string(),
                path: std::path::absolute(path)
                    .unwrap_or_else(|_| path.to_path_buf())
                    .display()
                    .to_string(),
            });
        }
        Self::connect(url).await
    }

    /// Cheap liveness check.
    pub async fn ping(&self) -> Result<(), ProgressError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// All tasks, ordered by symbol then resolution (cascade order).
    pub async fn tasks(&self) -> Result<Vec<Task>, ProgressError> {
        let rows = sqlx::query("SELECT * FROM progress")
            .fetch_all(&self.pool)
            .await?;
        let mut tasks = rows
            .iter()
            .map(task_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        tasks.sort_by(|a, b| (&a.symbol, a.resolution).cmp(&(&b.symbol, b.resolution)));
        Ok(tasks)
    }

    /// One task, if it exists.
    pub async fn task(&self, symbol: &str, res: Resolution) -> Result<Option<Task>, ProgressError> {
        let row = sqlx::query("SELECT * FROM progress WHERE symbol = ?1 AND resolution = ?2")
            .bind(symbol)
            .bind(res.name())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// Watermarks of all of `symbol`'s tasks that have one (one query: serving a
    /// chart request needs them all).
    pub async fn watermarks(
        &self,
        symbol: &str,
    ) -> Result<std::collections::HashMap<Resolution, i64>, ProgressError> {
        let rows = sqlx::query(
            "SELECT resolution, watermark FROM progress WHERE symbol = ?1 AND watermark IS NOT NULL",
        )
        .bind(symbol)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let res: String = r.try_get("resolution")?;
                let res = res.parse().map_err(|e: crate::candle::UnknownResolution| {
                    ProgressError::Invalid(e.to_string())
                })?;
                let w = opt_time(r, "watermark")?.expect("filtered on NOT NULL");
                Ok((res, w))
            })
            .collect()
    }

    /// Trades of `symbol` before this time may already have been aggregated (or
    /// are being aggregated right now) at 1m, so they must be recomputed as late.
    /// `None` if no 1m chunk ever ran.
    pub async fn late_before(&self, symbol: &str) -> Result<Option<i64>, ProgressError> {
        let row = sqlx::query(
            "SELECT watermark, inflight_until FROM progress WHERE symbol = ?1 AND resolution = '1m'",
        )
        .bind(symbol)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(opt_time(&row, "watermark")?.max(opt_time(&row, "inflight_until")?))
    }

    /// Records `ranges` of `symbol` as late: the engine recomputes them at
    /// every resolution (one row per range; the row's resolution is `1m`).
    pub async fn add_dirty(
        &self,
        symbol: &str,
        ranges: &[std::ops::Range<i64>],
        now: i64,
    ) -> Result<(), ProgressError> {
        let mut tx = self.pool.begin().await?;
        for range in ranges {
            sqlx::query(
                "INSERT INTO dirty_ranges (symbol, resolution, range_start, range_end, created_at) VALUES (?1, '1m', ?2, ?3, ?4)",
            )
            .bind(symbol)
            .bind(to_rfc3339(range.start))
            .bind(to_rfc3339(range.end))
            .bind(to_rfc3339(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pending dirty ranges of one task as (row id, range), oldest first.
    pub async fn dirty(
        &self,
        symbol: &str,
        res: Resolution,
    ) -> Result<Vec<(i64, std::ops::Range<i64>)>, ProgressError> {
        let rows = sqlx::query(
            "SELECT id, range_start, range_end FROM dirty_ranges WHERE symbol = ?1 AND resolution = ?2 ORDER BY id",
        )
        .bind(symbol)
        .bind(res.name())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let start: String = r.try_get("range_start")?;
                let end: String = r.try_get("range_end")?;
                let parse = |s: &str| from_rfc3339(s).map_err(ProgressError::Invalid);
                Ok((r.try_get("id")?, parse(&start)?..parse(&end)?))
            })
            .collect()
    }

    /// The newest `limit` history rows of one task, newest first.
    pub async fn runs(
        &self,
        symbol: &str,
        res: Resolution,
        limit: i64,
    ) -> Result<Vec<RunRow>, ProgressError> {
        let rows = sqlx::query(
            "SELECT * FROM progress_runs WHERE symbol = ?1 AND resolution = ?2 ORDER BY id DESC LIMIT ?3",
        )
        .bind(symbol)
        .bind(res.name())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RunRow {
                    symbol: r.try_get("symbol")?,
                    resolution: r.try_get("resolution")?,
                    owner: r.try_get("owner")?,
                    kind: r.try_get("kind")?,
                    range_start: r.try_get("range_start")?,
                    range_end: r.try_get("range_end")?,
                    rows_read: r.try_get("rows_read")?,
                    candles_written: r.try_get("candles_written")?,
                    status: r.try_get("status")?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn processes_opening_a_fresh_database_at_once_all_succeed() {
        // Found when `ohlcd run` and `ohlcd progress` started together: both ran
        // the migrations and one failed with "table progress already exists".
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let opens = (0..6).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { ProgressStore::connect(&url).await })
        });
        for open in futures_util::future::join_all(opens).await {
            let store = open.unwrap().unwrap();
            assert!(store.tasks().await.unwrap().is_empty());
        }
    }

    #[test]
    fn connections_opening_a_fresh_file_at_the_same_instant_all_succeed() {
        // Each on its own thread and runtime, released by a barrier: the first
        // statements (the switch to WAL) run at once, as in two processes.
        const AT_ONCE: usize = 2;
        for round in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("p.db").display());
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(AT_ONCE));
            let opens: Vec<_> = (0..AT_ONCE)
                .map(|_| {
                    let (url, barrier) = (url.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        barrier.wait();
                        rt.block_on(async {
                            let store = ProgressStore::connect(&url).await?;
                            store.tasks().await.map(|t| t.len())
                        })
                    })
                })
                .collect();
            for open in opens {
                assert_eq!(
                    open.join().unwrap().map_err(|e| e.to_string()),
                    Ok(0),
                    "round {round}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_read_only_open_of_a_missing_file_creates_nothing_and_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.db");
        let url = format!("sqlite://{}", path.display());
        let err = ProgressStore::open_existing(&url)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            !path.exists(),
            "a read-only open created {}",
            path.display()
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing created"
        );
        ProgressStore::connect(&url).await.unwrap();
        assert!(ProgressStore::open_existing(&url).await.is_ok());
    }

    #[tokio::test]
    async fn a_file_that_is_not_sqlite_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let err = ProgressStore::connect(&path.display().to_string())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("junk.db"), "{err}");
    }
}

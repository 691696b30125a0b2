//! The progress store: one row per (symbol, resolution) task with its status,
//! watermark and lease, plus a history row per chunk. Two backends, chosen by
//! `progress.database_url`: SQLite (one file, the default; tables in
//! `migrations/`) and PostgreSQL (shared by daemons on several hosts; tables in
//! `migrations/postgres/`). Same tables, same statements, each written once
//! per dialect in this module and its children (see `db`).
//!
//! Leases make tasks exclusive across daemons sharing one database: a claim is a
//! single conditional `UPDATE … RETURNING` (atomic in SQLite, which runs one
//! writer at a time; on PostgreSQL the candidate rows are locked first with
//! `FOR UPDATE SKIP LOCKED`), every later write is fenced by `lease_owner`, and a
//! lease that is not renewed expires so another daemon can take the task over
//! after a crash. Lease expiry is computed and compared by the database's own
//! clock, never a daemon's: a host whose clock runs ahead cannot take over live
//! leases.
//!
//! Late trades are stored as dirty ranges and announced reads as in-flight
//! marks: every statement of those is in `dirty`, with the rules they keep.

use std::str::FromStr;

use serde::Serialize;

use crate::candle::Resolution;
use crate::times::{from_rfc3339, human_duration, to_rfc3339};

mod db;
mod dirty;
mod epochs;
mod postgres;
mod sqlite;
mod symbols;
use db::{Arg, Db, DbRow, Sql};
pub use dirty::Dirty;
pub use epochs::ServingState;
pub use symbols::{FailedRun, Failure, StepCommit, SymbolState};

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
    /// Migrations failed (often: the file is not a SQLite database, or the
    /// PostgreSQL user may not create tables).
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

impl ProgressError {
    /// Worth trying again: the database could not be reached or was
    /// restarting (connection refused or broken, a pool timeout, PostgreSQL's
    /// "shutting down" / "starting up" and other connection errors, SQLSTATE
    /// classes 08 and 57P). Not: a bad URL, credentials, a file that is not
    /// a database, a lease lost.
    pub fn is_transient(&self) -> bool {
        let sql = match self {
            ProgressError::Open { source, .. } | ProgressError::Db(source) => source,
            ProgressError::Migrate {
                source: sqlx::migrate::MigrateError::Execute(source),
                ..
            } => source,
            _ => return false,
        };
        match sql {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            sqlx::Error::Database(e) => e
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }
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
    /// The value stored in the database.
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
    /// Lease expiry (Unix ns, database clock).
    pub lease_expires_at: Option<i64>,
    /// Who held the lease last (kept after it is released).
    pub last_owner: Option<String>,
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
    /// Rows read that could not make a trade (1m tasks; see `SkipReason`).
    pub rows_skipped: i64,
    /// Failed runs in a row (0 after a run that succeeds).
    pub failures: i64,
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
    /// When the run started (the runner's clock), RFC 3339.
    pub started_at: String,
    /// When it finished (the runner's clock), RFC 3339.
    pub finished_at: String,
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
    /// Lease expiry, RFC 3339 (the database's clock).
    pub lease_expires_at: Option<String>,
    /// The daemon that holds the task or ran it last: how work is spread.
    pub last_owner: Option<String>,
    /// Runs started.
    pub runs: i64,
    /// Chunks committed.
    pub chunks: i64,
    /// Source rows read.
    pub rows_read: i64,
    /// Rows that could not make a trade, skipped (counted on the 1m task).
    pub rows_skipped: i64,
    /// Failed runs in a row; a failed task is retried after a backoff that
    /// grows with it.
    pub failures: i64,
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
            last_owner: task.last_owner.clone(),
            runs: task.runs,
            chunks: task.chunks,
            rows_read: task.rows_read,
            rows_skipped: task.rows_skipped,
            failures: task.failures,
            candles_written: task.candles_written,
        }
    }
}

/// Handle on the progress database: SQLite (a file, the default) or
/// PostgreSQL (shared by daemons on several hosts), chosen by the URL.
#[derive(Debug, Clone)]
pub struct ProgressStore {
    db: Db,
}

/// The storage engine behind a [`ProgressStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file (`sqlite://…` or a path).
    Sqlite,
    /// A PostgreSQL database (`postgres://…`).
    Postgres,
}

impl Backend {
    /// The backend a `progress.database_url` names.
    pub fn of_url(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

pub(crate) use crate::config::redact_url as redact;

fn opt_time(row: &DbRow, col: &str) -> Result<Option<i64>, ProgressError> {
    row.opt_text(col)?
        .map(|s| from_rfc3339(&s).map_err(ProgressError::Invalid))
        .transpose()
}

fn parse_resolution(s: &str) -> Result<Resolution, ProgressError> {
    s.parse()
        .map_err(|e: crate::candle::UnknownResolution| ProgressError::Invalid(e.to_string()))
}

fn task_from_row(row: &DbRow) -> Result<Task, ProgressError> {
    Ok(Task {
        symbol: row.text("symbol")?,
        resolution: parse_resolution(&row.text("resolution")?)?,
        status: row.text("status")?.parse()?,
        watermark: opt_time(row, "watermark")?,
        lease_owner: row.opt_text("lease_owner")?,
        lease_expires_at: opt_time(row, "lease_expires_at")?,
        last_owner: row.opt_text("last_owner")?,
        last_run_started_at: opt_time(row, "last_run_started_at")?,
        last_run_finished_at: opt_time(row, "last_run_finished_at")?,
        last_error: row.opt_text("last_error")?,
        runs: row.int("runs")?,
        chunks: row.int("chunks")?,
        rows_read: row.int("rows_read")?,
        rows_skipped: row.int("rows_skipped")?,
        failures: row.int("failures")?,
        candles_written: row.int("candles_written")?,
    })
}

/// Every task in the order people read them: by symbol (byte order, as
/// Rust compares strings; PostgreSQL told so with `COLLATE "C"`), then by
/// resolution in cascade order ([`Resolution::ALL`]).
const TASKS: Sql = Sql {
    sqlite: "SELECT * FROM progress ORDER BY symbol,
             CASE resolution WHEN '1m' THEN 0 WHEN '5m' THEN 1 WHEN '15m' THEN 2
                             WHEN '1h' THEN 3 WHEN '4h' THEN 4 WHEN '1d' THEN 5 ELSE 6 END",
    postgres: "SELECT * FROM progress ORDER BY symbol COLLATE \"C\",
               CASE resolution WHEN '1m' THEN 0 WHEN '5m' THEN 1 WHEN '15m' THEN 2
                               WHEN '1h' THEN 3 WHEN '4h' THEN 4 WHEN '1d' THEN 5 ELSE 6 END",
};

const TASK: Sql = Sql {
    sqlite: "SELECT * FROM progress WHERE symbol = ?1 AND resolution = ?2",
    postgres: "SELECT * FROM progress WHERE symbol = $1 AND resolution = $2",
};

const WATERMARKS: Sql = Sql {
    sqlite: "SELECT resolution, watermark FROM progress WHERE symbol = ?1 AND watermark IS NOT NULL",
    postgres: "SELECT resolution, watermark FROM progress WHERE symbol = $1 AND watermark IS NOT NULL",
};

const RUNS: Sql = Sql {
    sqlite: "SELECT * FROM progress_runs WHERE symbol = ?1 AND resolution = ?2 ORDER BY id DESC LIMIT ?3",
    postgres: "SELECT * FROM progress_runs WHERE symbol = $1 AND resolution = $2 ORDER BY id DESC LIMIT $3",
};

const PING: Sql = Sql {
    sqlite: "SELECT 1",
    postgres: "SELECT 1",
};

const FAILING: Sql = Sql {
    sqlite: "SELECT count(*) AS n FROM progress WHERE resolution = '1m' AND status = 'failed'",
    postgres: "SELECT count(*) AS n FROM progress WHERE resolution = '1m' AND status = 'failed'",
};

impl ProgressStore {
    /// Opens (creating if missing) the progress database at `url` and migrates it.
    ///
    /// `url` is `postgres://user:password@host/database` (the database must
    /// exist; its tables are created), a sqlx SQLite URL (`sqlite://ohlcd.db`)
    /// or a plain file path (SQLite).
    pub async fn connect(url: &str) -> Result<ProgressStore, ProgressError> {
        let db = match Backend::of_url(url) {
            Backend::Sqlite => sqlite::connect(url).await?,
            Backend::Postgres => postgres::connect(url).await?,
        };
        Ok(ProgressStore { db })
    }

    /// Opens an existing progress database for reading (`ohlcd progress`):
    /// never creates a SQLite file, and says where it looked when there is
    /// none. (A PostgreSQL database must exist to be reached at all.)
    pub async fn open_existing(url: &str) -> Result<ProgressStore, ProgressError> {
        if Backend::of_url(url) == Backend::Sqlite {
            sqlite::check_exists(url)?;
        }
        Self::connect(url).await
    }

    /// Which backend this store runs on.
    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Cheap liveness check.
    pub async fn ping(&self) -> Result<(), ProgressError> {
        self.db.execute(PING, &[]).await?;
        Ok(())
    }

    /// How many symbols failed their last run (one query, for `/healthz`).
    pub async fn failing_symbols(&self) -> Result<u64, ProgressError> {
        let row = self.db.fetch_optional(FAILING, &[]).await?;
        Ok(match row {
            Some(row) => u64::try_from(row.int("n")?).unwrap_or(0),
            None => 0,
        })
    }

    /// All tasks, ordered by symbol then resolution (cascade order).
    pub async fn tasks(&self) -> Result<Vec<Task>, ProgressError> {
        let mut tasks = self.db.fetch_map(TASKS, &[], task_from_row).await?;
        // Already in this order from the query; sorted again so that this
        // order never depends on a database's collation.
        tasks.sort_by(|a, b| (&a.symbol, a.resolution).cmp(&(&b.symbol, b.resolution)));
        Ok(tasks)
    }

    /// The tasks of [`ProgressStore::tasks`], in its order, one at a time as
    /// the consumer takes them: `GET /api/progress` writes them into the
    /// response as they come instead of holding 30,000 of them (5,000
    /// symbols) and their JSON at once. See [`db::Db::stream_map`] for how
    /// long the query may wait for a consumer.
    pub fn task_stream(
        &self,
    ) -> impl futures_util::Stream<Item = Result<Task, ProgressError>> + Send + use<> {
        self.db.stream_map(TASKS, Vec::new(), task_from_row)
    }

    /// One task, if it exists.
    pub async fn task(&self, symbol: &str, res: Resolution) -> Result<Option<Task>, ProgressError> {
        let args = [Arg::Text(symbol.into()), Arg::Text(res.name().into())];
        let row = self.db.fetch_optional(TASK, &args).await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// Watermarks of all of `symbol`'s tasks that have one (one query: serving a
    /// chart request needs them all).
    pub async fn watermarks(
        &self,
        symbol: &str,
    ) -> Result<std::collections::HashMap<Resolution, i64>, ProgressError> {
        let rows = self
            .db
            .fetch_all(WATERMARKS, &[Arg::Text(symbol.into())])
            .await?;
        rows.iter()
            .map(|r| {
                let res = parse_resolution(&r.text("resolution")?)?;
                let w = opt_time(r, "watermark")?.expect("filtered on NOT NULL");
                Ok((res, w))
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
        let args = [
            Arg::Text(symbol.into()),
            Arg::Text(res.name().into()),
            Arg::Int(limit),
        ];
        let rows = self.db.fetch_all(RUNS, &args).await?;
        rows.iter()
            .map(|r| {
                Ok(RunRow {
                    symbol: r.text("symbol")?,
                    resolution: r.text("resolution")?,
                    owner: r.text("owner")?,
                    kind: r.text("kind")?,
                    range_start: r.text("range_start")?,
                    range_end: r.text("range_end")?,
                    started_at: r.text("started_at")?,
                    finished_at: r.text("finished_at")?,
                    rows_read: r.int("rows_read")?,
                    candles_written: r.int("candles_written")?,
                    status: r.text("status")?,
                    error: r.opt_text("error")?,
                })
            })
            .collect()
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.db.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_that_cannot_be_reached_is_an_outage_and_a_bad_url_is_not() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let down = ProgressError::Open {
            url: "postgres://db".into(),
            source: sqlx::Error::Io(refused),
        };
        assert!(down.is_transient(), "{down}");
        assert!(ProgressError::Db(sqlx::Error::PoolTimedOut).is_transient());
        let bad = ProgressStore::connect("postgres://u@127.0.0.1:notaport/db")
            .await
            .unwrap_err();
        assert!(!bad.is_transient(), "{bad}");
        let lost = ProgressError::LeaseLost {
            symbol: "BTCUSD".into(),
            resolution: Resolution::M1,
            owner: "a".into(),
        };
        assert!(!lost.is_transient());
        let dir = tempfile::tempdir().unwrap();
        let not_a_db = dir.path().join("x.db");
        std::fs::write(&not_a_db, "this is not SQLite").unwrap();
        let junk = ProgressStore::connect(not_a_db.to_str().unwrap())
            .await
            .unwrap_err();
        assert!(!junk.is_transient(), "{junk}");
    }

    #[tokio::test]
    async fn the_task_stream_yields_the_rows_of_tasks_in_its_order_and_then_stays_ended() {
        use futures_util::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let store = ProgressStore::connect(&url).await.unwrap();
        let mut empty = Box::pin(store.task_stream());
        assert!(empty.next().await.is_none());
        assert!(empty.next().await.is_none(), "polled again after its end");
        // More rows than wait between query and consumer, names out of order.
        let symbols: Vec<String> = (0..200)
            .rev()
            .map(|i| format!("s{}", i * 7 % 200))
            .collect();
        store.ensure_symbols(&symbols, 0).await.unwrap();
        let streamed: Vec<Task> = store
            .task_stream()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .await;
        assert_eq!(streamed.len(), 1200);
        assert_eq!(streamed, store.tasks().await.unwrap());
    }

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

    #[test]
    fn postgres_urls_pick_postgres_and_messages_hide_their_password() {
        assert_eq!(Backend::of_url("postgres://h/db"), Backend::Postgres);
        assert_eq!(Backend::of_url("postgresql://h/db"), Backend::Postgres);
        assert_eq!(Backend::of_url("sqlite://ohlcd.db"), Backend::Sqlite);
        assert_eq!(Backend::of_url("/var/lib/ohlcd.db"), Backend::Sqlite);
        let shown = redact("postgres://ohlcd:s3cret@db:5432/ohlcd");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(shown, "postgres://ohlcd:***@db:5432/ohlcd");
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

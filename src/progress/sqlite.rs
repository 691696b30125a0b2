//! Opening the SQLite backend: one file, WAL, migrated under a file lock.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::ProgressError;
use super::db::Db;

/// `url` as a sqlx SQLite URL (a plain path is accepted too).
fn full_url(url: &str) -> String {
    if url.starts_with("sqlite:") {
        url.to_string()
    } else {
        format!("sqlite://{url}")
    }
}

fn open_err(url: &str) -> impl Fn(sqlx::Error) -> ProgressError + '_ {
    move |source| ProgressError::Open {
        url: url.to_string(),
        source,
    }
}

/// An exclusive lock on `<database>.migrate-lock`, held while a process opens
/// the database (see [`connect`]); released on drop. Where the lock file
/// cannot be created (a read-only directory), opening goes on without it:
/// nothing can be created or migrated there anyway.
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

/// Opens (creating if missing) the SQLite database at `url` and migrates it
/// with `migrations/` (where these files have always been, so databases made
/// by earlier versions see the same migration history).
pub(super) async fn connect(url: &str) -> Result<Db, ProgressError> {
    let options = SqliteConnectOptions::from_str(&full_url(url))
        .map_err(open_err(url))?
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
        .map_err(open_err(url))?;
    let migrated = sqlx::migrate!("./migrations").run(&pool).await;
    drop(lock);
    migrated.map_err(|source| ProgressError::Migrate {
        url: url.to_string(),
        source,
    })?;
    Ok(Db::Sqlite(pool))
}

/// Fails with [`ProgressError::Missing`] (saying where it looked) when the
/// SQLite file `url` names does not exist.
pub(super) fn check_exists(url: &str) -> Result<(), ProgressError> {
    let options = SqliteConnectOptions::from_str(&full_url(url)).map_err(open_err(url))?;
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
    Ok(())
}

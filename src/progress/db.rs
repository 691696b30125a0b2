//! The two backends behind [`super::ProgressStore`]: a pool (SQLite or
//! PostgreSQL), statements written once per dialect ([`Sql`]), parameters that
//! know how each backend takes them ([`Arg`]) and rows read the same way from
//! either ([`DbRow`]). Everything above this module is backend-agnostic.

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{PgPool, Postgres, Row, Sqlite, SqlitePool, Transaction};

use super::ProgressError;

/// One statement in both dialects. Times are RFC 3339 text in both, and lease
/// times come from the database clock: SQLite's `'now'` and PostgreSQL's
/// `now()` (through `ohlcd_db_time`, see `migrations/postgres/`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sql {
    /// SQLite text, parameters `?1`, `?2`, …
    pub sqlite: &'static str,
    /// PostgreSQL text, parameters `$1`, `$2`, … (same numbering).
    pub postgres: &'static str,
}

/// A statement parameter.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// Text.
    Text(String),
    /// Integer.
    Int(i64),
    /// A list of strings: a JSON array for SQLite (read with `json_each`), a
    /// `text[]` for PostgreSQL (read with `= ANY` / `unnest`).
    List(Vec<String>),
    /// A JSON document, already serialized ([`json`]): text for SQLite
    /// (`json_each`), text cast to `jsonb` by the PostgreSQL statement
    /// (`jsonb_to_recordset($n::jsonb)`).
    Json(String),
}

/// A JSON parameter serialized straight from `value` (typed rows, no
/// `serde_json::Value` tree: a 5,000-symbol commit built 35 MB of them).
pub(crate) fn json(value: &impl serde::Serialize) -> Arg {
    Arg::Json(serde_json::to_string(value).expect("plain rows serialize"))
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, <Sqlite as sqlx::Database>::Arguments>;
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, <Postgres as sqlx::Database>::Arguments>;

// Text and JSON are bound borrowed: a batch commit's JSON runs to MBs, and a
// copy per statement showed in the heap peak.
fn sqlite_query<'q>(sql: Sql, args: &'q [Arg]) -> SqliteQuery<'q> {
    let mut q = sqlx::query(sql.sqlite);
    for arg in args {
        q = match arg {
            Arg::Text(s) => q.bind(s.as_str()),
            Arg::Int(i) => q.bind(*i),
            Arg::List(v) => q.bind(serde_json::to_string(v).expect("strings serialize")),
            Arg::Json(v) => q.bind(v.as_str()),
        };
    }
    q
}

fn pg_query<'q>(sql: Sql, args: &'q [Arg]) -> PgQuery<'q> {
    let mut q = sqlx::query(sql.postgres);
    for arg in args {
        q = match arg {
            Arg::Text(s) => q.bind(s.as_str()),
            Arg::Int(i) => q.bind(*i),
            Arg::List(v) => q.bind(v.clone()),
            Arg::Json(v) => q.bind(v.as_str()),
        };
    }
    q
}

/// A result row of either backend.
pub(crate) enum DbRow {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl DbRow {
    /// A text column.
    pub(super) fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        match self {
            DbRow::Sqlite(r) => r.try_get(col),
            DbRow::Postgres(r) => r.try_get(col),
        }
    }

    /// A nullable text column.
    pub(super) fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        match self {
            DbRow::Sqlite(r) => r.try_get(col),
            DbRow::Postgres(r) => r.try_get(col),
        }
    }

    /// An integer column.
    pub(super) fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
        match self {
            DbRow::Sqlite(r) => r.try_get(col),
            DbRow::Postgres(r) => r.try_get(col),
        }
    }
}

/// Mapped rows [`Db::stream_map`] keeps ready ahead of its consumer.
pub(crate) const ROWS_AHEAD: usize = 256;

/// How long [`Db::stream_map`] waits for a consumer that takes nothing
/// before it gives its connection back: a client that stops reading a
/// response must not hold one of the pool's few connections for good.
pub(crate) const STALLED_CONSUMER: std::time::Duration = std::time::Duration::from_secs(30);

/// What [`Db::stream_map`]'s query task hands over: a row (or the error that
/// ends the rows), or the end of the rows. An explicit end tells a finished
/// query from one abandoned half-way.
enum Streamed<T> {
    Row(Result<T, ProgressError>),
    End,
}

/// Maps `rows` through `f` into `tx` until the rows end, an error ends them,
/// the consumer is gone, or it took nothing for [`STALLED_CONSUMER`].
async fn forward_rows<T>(
    rows: impl futures_util::Stream<Item = Result<DbRow, sqlx::Error>>,
    tx: &tokio::sync::mpsc::Sender<Streamed<T>>,
    mut f: impl FnMut(&DbRow) -> Result<T, ProgressError>,
) {
    use futures_util::TryStreamExt;
    let send = |msg| tokio::time::timeout(STALLED_CONSUMER, tx.send(msg));
    futures_util::pin_mut!(rows);
    loop {
        let msg = match rows.try_next().await {
            Ok(Some(row)) => Streamed::Row(f(&row)),
            Ok(None) => Streamed::End,
            Err(e) => Streamed::Row(Err(e.into())),
        };
        let last = !matches!(msg, Streamed::Row(Ok(_)));
        if !matches!(send(msg).await, Ok(Ok(()))) || last {
            return;
        }
    }
}

/// The pool of one backend.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// How often a statement or transaction PostgreSQL aborted to break a
/// deadlock is run again.
pub(super) const DEADLOCK_RETRIES: u32 = 5;

/// PostgreSQL aborted the statement or transaction to break a deadlock
/// (SQLSTATE 40P01). It had no effect, and run again it goes through once the
/// other side has. One process's statements over the same symbols' rows can
/// meet in opposite orders: a step's commit, the next step's in-flight mark,
/// a lease renewal.
fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("40P01"))
}

/// An error that may be PostgreSQL breaking a deadlock.
pub(super) trait Deadlock {
    /// Whether PostgreSQL aborted the work to break a deadlock.
    fn is_deadlock(&self) -> bool;
}

impl Deadlock for sqlx::Error {
    fn is_deadlock(&self) -> bool {
        is_deadlock(self)
    }
}

impl Deadlock for ProgressError {
    fn is_deadlock(&self) -> bool {
        matches!(self, ProgressError::Db(e) if is_deadlock(e))
    }
}

/// Runs `work` (one statement, or one transaction) again, up to
/// [`DEADLOCK_RETRIES`] times, while PostgreSQL aborts it to break a
/// deadlock; `what` names it in the log.
pub(super) async fn again_on_deadlock<T, E: Deadlock, F: Future<Output = Result<T, E>>>(
    what: &'static str,
    mut work: impl FnMut() -> F,
) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        match work().await {
            Err(e) if e.is_deadlock() && attempt < DEADLOCK_RETRIES => {
                attempt += 1;
                tracing::debug!(attempt, what, "aborted by a deadlock; running it again");
            }
            other => return other,
        }
    }
}

impl Db {
    /// Runs `sql`; the number of rows it changed. Run again if PostgreSQL
    /// chose it to break a deadlock.
    pub(super) async fn execute(&self, sql: Sql, args: &[Arg]) -> Result<u64, sqlx::Error> {
        again_on_deadlock("statement", || async move {
            match self {
                Db::Sqlite(p) => sqlite_query(sql, args)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected()),
                Db::Postgres(p) => pg_query(sql, args)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected()),
            }
        })
        .await
    }

    /// Runs `sql`; every row it returned.
    pub(super) async fn fetch_all(
        &self,
        sql: Sql,
        args: &[Arg],
    ) -> Result<Vec<DbRow>, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => sqlite_query(sql, args)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(DbRow::Sqlite)
                .collect(),
            Db::Postgres(p) => pg_query(sql, args)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(DbRow::Postgres)
                .collect(),
        })
    }

    /// Runs `sql` and hands every row to `f` as it arrives: the rows
    /// themselves are never held all at once (30,000 progress rows of 5,000
    /// symbols took tens of MB as `Vec<SqliteRow>`, every value duplicated).
    pub(super) async fn for_each_row<E: From<sqlx::Error>>(
        &self,
        sql: Sql,
        args: &[Arg],
        mut f: impl FnMut(&DbRow) -> Result<(), E>,
    ) -> Result<(), E> {
        use futures_util::TryStreamExt;
        match self {
            Db::Sqlite(p) => {
                let mut rows = sqlite_query(sql, args).fetch(p);
                while let Some(row) = rows.try_next().await? {
                    f(&DbRow::Sqlite(row))?;
                }
            }
            Db::Postgres(p) => {
                let mut rows = pg_query(sql, args).fetch(p);
                while let Some(row) = rows.try_next().await? {
                    f(&DbRow::Postgres(row))?;
                }
            }
        }
        Ok(())
    }

    /// Runs `sql` on a task of its own and yields every row mapped by `f`, as
    /// the consumer asks for them: at most [`ROWS_AHEAD`] mapped rows wait
    /// between the two, so a 30,000-row table costs a few kB, not the table.
    /// The query holds a pooled connection until the stream ends or is
    /// dropped, or until the consumer has taken nothing for
    /// [`STALLED_CONSUMER`]; the stream then ends with
    /// [`ProgressError::Invalid`] instead of looking complete.
    pub(super) fn stream_map<T, F>(
        &self,
        sql: Sql,
        args: Vec<Arg>,
        f: F,
    ) -> impl futures_util::Stream<Item = Result<T, ProgressError>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnMut(&DbRow) -> Result<T, ProgressError> + Send + 'static,
    {
        use futures_util::TryStreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel(ROWS_AHEAD);
        let db = self.clone();
        tokio::spawn(async move {
            match &db {
                Db::Sqlite(p) => {
                    let rows = sqlite_query(sql, &args).fetch(p).map_ok(DbRow::Sqlite);
                    forward_rows(rows, &tx, f).await;
                }
                Db::Postgres(p) => {
                    let rows = pg_query(sql, &args).fetch(p).map_ok(DbRow::Postgres);
                    forward_rows(rows, &tx, f).await;
                }
            }
        });
        // Fused: polling it again after its end yields the end again.
        let rows = futures_util::stream::unfold((rx, false), |(mut rx, done)| async move {
            if done {
                return None;
            }
            match rx.recv().await {
                // An error is the last item.
                Some(Streamed::Row(item)) => {
                    let failed = item.is_err();
                    Some((item, (rx, failed)))
                }
                Some(Streamed::End) => None,
                // The producer gave up (or panicked) before the last row.
                None => Some((
                    Err(ProgressError::Invalid(
                        "the progress rows stopped before the end (reader too slow?)".into(),
                    )),
                    (rx, true),
                )),
            }
        });
        futures_util::StreamExt::fuse(rows)
    }

    /// Runs `sql` and maps every row as it arrives ([`Db::for_each_row`]).
    pub(super) async fn fetch_map<T, E: From<sqlx::Error>>(
        &self,
        sql: Sql,
        args: &[Arg],
        mut f: impl FnMut(&DbRow) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        let mut out = Vec::new();
        self.for_each_row::<E>(sql, args, |row| {
            out.push(f(row)?);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Runs `sql`; its first row, if any.
    pub(super) async fn fetch_optional(
        &self,
        sql: Sql,
        args: &[Arg],
    ) -> Result<Option<DbRow>, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => sqlite_query(sql, args)
                .fetch_optional(p)
                .await?
                .map(DbRow::Sqlite),
            Db::Postgres(p) => pg_query(sql, args)
                .fetch_optional(p)
                .await?
                .map(DbRow::Postgres),
        })
    }

    /// Starts a transaction (rolled back if dropped uncommitted).
    pub(super) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Closes the pool (waits for connections to finish).
    pub(super) async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

/// A transaction on either backend.
pub(crate) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    /// Runs `sql` in the transaction; the number of rows it changed.
    pub(super) async fn execute(&mut self, sql: Sql, args: &[Arg]) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(tx) => sqlite_query(sql, args)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Tx::Postgres(tx) => pg_query(sql, args)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Runs `sql` in the transaction; every row it returned.
    pub(super) async fn fetch_all(
        &mut self,
        sql: Sql,
        args: &[Arg],
    ) -> Result<Vec<DbRow>, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(tx) => sqlite_query(sql, args)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(DbRow::Sqlite)
                .collect(),
            Tx::Postgres(tx) => pg_query(sql, args)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(DbRow::Postgres)
                .collect(),
        })
    }

    /// Commits.
    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }
}

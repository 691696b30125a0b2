//! The storage side of the late-trade rule: every statement on dirty ranges
//! and on the in-flight mark. Which trades are late, and which minutes they
//! make dirty, is decided in `ingest::late`; this module only stores and
//! reads what it decided.
//!
//! - **Late threshold.** A symbol's trades before `max(watermark,
//!   inflight_until)` of its 1m task may be missing from candles already
//!   written or being computed ([`ProgressStore::late_before`]). A symbol with
//!   neither has never had a 1m chunk run: none of its trades is late.
//! - **In flight.** Before the engine reads a step's raw trades it sets
//!   `inflight_until` on each symbol's 1m row to the end of the range it is
//!   about to read ([`ProgressStore::set_inflight_many`], fenced by the lease:
//!   a lost lease fails with [`ProgressError::LeaseLost`]). Releasing or
//!   failing the symbol resets it with the lease (`symbols.rs`). A mark left by
//!   a daemon that died stays until the next release; it only makes a few
//!   trades late that were not, which costs a recompute.
//! - **Dirty range.** A half-open range of whole minutes of one symbol whose
//!   candles may miss a late trade: one row of `dirty_ranges`, resolution
//!   `1m`, and the engine recomputes it at every resolution. Rows of any
//!   resolution count for the whole symbol.
//! - **Who writes.** The ingest path (`POST /api/trades`), through
//!   [`ProgressStore::add_dirty`], once before the InfluxDB write and once
//!   after it acknowledged; a symbol's ranges of one request in one
//!   transaction.
//! - **Who clears.** The engine, holding the symbol's lease: it reads the
//!   pending rows while it plans a round ([`ProgressStore::dirty_of`]: the
//!   ranges and the newest row id), recomputes them, and then deletes the rows
//!   up to that id ([`ProgressStore::clear_dirty_of`]); rows added meanwhile
//!   stay for the next round. A crash before the delete recomputes the same
//!   ranges again, which writes the same candles.
//!
//! Why the order of statements closes the race with a chunk being read: the
//! mark is committed before the read starts, and the second record runs
//! after the write was acknowledged. So a trade is either seen by the read,
//! or it was stored after the read began, and then the record after its
//! write sees a threshold at or past the end of that read and makes its
//! minute dirty.
//!
//! Locks. SQLite runs one writer at a time: a statement waits (busy timeout)
//! and never deadlocks. On PostgreSQL the reads here (`late_before`,
//! `dirty_of`, `dirty`) take no row locks; `add_dirty` only inserts new rows
//! and `clear_dirty_of` only deletes one symbol's rows, run by the one daemon
//! holding its lease, so neither waits on a row that another transaction
//! holds while it waits on theirs. `set_inflight_many` is the one statement
//! here that locks `progress` rows: it updates the batch's 1m rows while the
//! same daemon, on other connections, commits the previous step (all six
//! rows of those symbols) and renews the leases, each locking rows in the
//! order its plan scans them. They can meet in opposite orders, and
//! PostgreSQL then aborts one of them with a deadlock (SQLSTATE 40P01). The
//! aborted statement had no effect, so it is run again ([`super::db`]: single
//! statements in `Db::execute`, the commit's transaction whole in
//! `commit_steps`), up to `DEADLOCK_RETRIES` times.

use std::collections::HashMap;
use std::ops::Range;

use serde_json::json;

use super::db::{Arg, DbRow, Sql, json as json_arg};
use super::{ProgressError, ProgressStore, opt_time};
use crate::candle::Resolution;
use crate::times::{from_rfc3339, to_rfc3339};

const LATE_BEFORE: Sql = Sql {
    sqlite: "SELECT symbol, watermark, inflight_until FROM progress
             WHERE resolution = '1m' AND symbol IN (SELECT value FROM json_each(?1))",
    postgres: "SELECT symbol, watermark, inflight_until FROM progress
               WHERE resolution = '1m' AND symbol = ANY($1)",
};

const SET_INFLIGHT: Sql = Sql {
    sqlite: "UPDATE progress SET inflight_until = j.value ->> 'u'
             FROM json_each(?2) AS j
             WHERE progress.symbol = j.value ->> 's' AND progress.resolution = '1m'
               AND progress.lease_owner = ?1",
    postgres: "UPDATE progress SET inflight_until = j.u
               FROM jsonb_to_recordset($2::jsonb) AS j(s text, u text)
               WHERE progress.symbol = j.s AND progress.resolution = '1m'
                 AND progress.lease_owner = $1",
};

const ADD_DIRTY: Sql = Sql {
    sqlite: "INSERT INTO dirty_ranges (symbol, resolution, range_start, range_end, created_at)
             VALUES (?1, '1m', ?2, ?3, ?4)",
    postgres: "INSERT INTO dirty_ranges (symbol, resolution, range_start, range_end, created_at)
               VALUES ($1, '1m', $2, $3, $4)",
};

const DIRTY: Sql = Sql {
    sqlite: "SELECT id, range_start, range_end FROM dirty_ranges
             WHERE symbol = ?1 AND resolution = ?2 ORDER BY id",
    postgres: "SELECT id, range_start, range_end FROM dirty_ranges
               WHERE symbol = $1 AND resolution = $2 ORDER BY id",
};

const DIRTY_OF: Sql = Sql {
    sqlite: "SELECT id, symbol, range_start, range_end FROM dirty_ranges
             WHERE symbol IN (SELECT value FROM json_each(?1)) ORDER BY id",
    postgres: "SELECT id, symbol, range_start, range_end FROM dirty_ranges
               WHERE symbol = ANY($1) ORDER BY id",
};

/// Removes the rows of `?1` whose ids are listed (`?2`, as text).
const CLEAR_DIRTY_OF: Sql = Sql {
    sqlite: "DELETE FROM dirty_ranges WHERE symbol = ?1
             AND id IN (SELECT CAST(value AS INTEGER) FROM json_each(?2))",
    postgres: "DELETE FROM dirty_ranges WHERE symbol = $1 AND id = ANY($2::text[]::bigint[])",
};

/// A symbol's pending late ranges as [`ProgressStore::dirty_of`] read them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dirty {
    /// The rows read: what [`ProgressStore::clear_dirty_of`] removes once
    /// their ranges are recomputed.
    pub ids: Vec<i64>,
    /// Their ranges, in row order.
    pub ranges: Vec<Range<i64>>,
}

/// The range a `dirty_ranges` row holds.
fn range_of(row: &DbRow) -> Result<Range<i64>, ProgressError> {
    let time = |col: &str| -> Result<i64, ProgressError> {
        from_rfc3339(&row.text(col)?).map_err(ProgressError::Invalid)
    };
    Ok(time("range_start")?..time("range_end")?)
}

impl ProgressStore {
    /// Per symbol, the time before which its trades may already have been
    /// aggregated at 1m (or are being aggregated right now), so a trade ingested
    /// before it must be recomputed as late. A symbol is absent if no 1m chunk
    /// of it ever ran. One query for a whole ingest request.
    pub async fn late_before(
        &self,
        symbols: &[String],
    ) -> Result<HashMap<String, i64>, ProgressError> {
        let args = [Arg::List(symbols.to_vec())];
        let rows = self.db.fetch_all(LATE_BEFORE, &args).await?;
        let mut out = HashMap::new();
        for r in &rows {
            if let Some(t) = opt_time(r, "watermark")?.max(opt_time(r, "inflight_until")?) {
                out.insert(r.text("symbol")?, t);
            }
        }
        Ok(out)
    }

    /// Announces, per symbol, the end of the raw range about to be read (fenced
    /// by the lease): see [`ProgressStore::late_before`].
    pub async fn set_inflight_many(
        &self,
        owner: &str,
        until: &[(String, i64)],
    ) -> Result<(), ProgressError> {
        if until.is_empty() {
            return Ok(());
        }
        let items: Vec<_> = until
            .iter()
            .map(|(s, t)| json!({"s": s, "u": to_rfc3339(*t)}))
            .collect();
        let args = [Arg::Text(owner.into()), json_arg(&items)];
        let done = self.db.execute(SET_INFLIGHT, &args).await?;
        let symbols: Vec<String> = until.iter().map(|(s, _)| s.clone()).collect();
        self.expect_rows(done, until.len(), &symbols, owner).await
    }

    /// Records `ranges` of `symbol` as late: the engine recomputes them at
    /// every resolution (one row per range; the row's resolution is `1m`).
    pub async fn add_dirty(
        &self,
        symbol: &str,
        ranges: &[Range<i64>],
        now: i64,
    ) -> Result<(), ProgressError> {
        let mut tx = self.db.begin().await?;
        for range in ranges {
            let args = [
                Arg::Text(symbol.into()),
                Arg::Text(to_rfc3339(range.start)),
                Arg::Text(to_rfc3339(range.end)),
                Arg::Text(to_rfc3339(now)),
            ];
            tx.execute(ADD_DIRTY, &args).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pending dirty ranges of one task as (row id, range), oldest first.
    pub async fn dirty(
        &self,
        symbol: &str,
        res: Resolution,
    ) -> Result<Vec<(i64, Range<i64>)>, ProgressError> {
        let args = [Arg::Text(symbol.into()), Arg::Text(res.name().into())];
        let rows = self.db.fetch_all(DIRTY, &args).await?;
        rows.iter()
            .map(|r| Ok((r.int("id")?, range_of(r)?)))
            .collect()
    }

    /// Pending late ranges of the listed symbols (any resolution's rows count
    /// for the whole symbol): per symbol, the rows read and their ranges.
    pub async fn dirty_of(
        &self,
        symbols: &[String],
    ) -> Result<HashMap<String, Dirty>, ProgressError> {
        let args = [Arg::List(symbols.to_vec())];
        let rows = self.db.fetch_all(DIRTY_OF, &args).await?;
        let mut out: HashMap<String, Dirty> = HashMap::new();
        for r in &rows {
            let entry = out.entry(r.text("symbol")?).or_default();
            entry.ids.push(r.int("id")?);
            entry.ranges.push(range_of(r)?);
        }
        Ok(out)
    }

    /// Removes `symbol`'s late ranges that were read (`ids`): rows recorded
    /// meanwhile stay for the next round.
    ///
    /// Exactly the ids read, not every id up to the newest: SQLite hands out
    /// row ids in commit order (one writer at a time), PostgreSQL when a row
    /// is inserted. On PostgreSQL a row whose id was drawn before
    /// [`ProgressStore::dirty_of`] read and that committed after it has an id
    /// below the newest one read, and was never recomputed.
    pub async fn clear_dirty_of(&self, symbol: &str, ids: &[i64]) -> Result<(), ProgressError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.iter().map(i64::to_string).collect();
        let args = [Arg::Text(symbol.into()), Arg::List(ids)];
        self.db.execute(CLEAR_DIRTY_OF, &args).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::progress::{StepCommit, TaskStatus};

    const MIN: i64 = 60_000_000_000;
    /// A minute's start.
    const T0: i64 = 1_700_000_040_000_000_000;

    async fn store(dir: &tempfile::TempDir) -> ProgressStore {
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let store = ProgressStore::connect(&url).await.unwrap();
        store
            .ensure_symbols(&["A".into(), "B".into()], T0)
            .await
            .unwrap();
        store
    }

    fn names(of: &[&str]) -> Vec<String> {
        of.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn the_late_threshold_is_the_later_of_the_1m_watermark_and_the_read_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let all = names(&["A", "B", "unknown"]);
        assert!(
            store.late_before(&all).await.unwrap().is_empty(),
            "nothing ran yet: nothing is late"
        );
        let lease = Duration::from_secs(60);
        let claimed = store.claim_symbols(&names(&["A"]), "me", T0, lease).await;
        assert_eq!(claimed.unwrap(), ["A"]);
        store
            .set_inflight_many("me", &[("A".into(), T0 + 120 * MIN)])
            .await
            .unwrap();
        let late = store.late_before(&all).await.unwrap();
        assert_eq!(late, HashMap::from([("A".into(), T0 + 120 * MIN)]));

        // The step commits a watermark short of the mark: the mark still counts.
        let step = StepCommit {
            symbol: "A".into(),
            kind: "chunk",
            range: T0..T0 + 60 * MIN,
            watermarks: Some([Some(T0 + 60 * MIN), None, None, None, None, None]),
            rows_read: 1,
            skipped: 0,
            candles: [1, 0, 0, 0, 0, 0],
            started_at: T0,
        };
        store.commit_steps("me", &[step], T0).await.unwrap();
        assert_eq!(store.late_before(&all).await.unwrap()["A"], T0 + 120 * MIN);

        // Released, the mark is gone and the watermark is the threshold.
        let idle = [("A".to_string(), TaskStatus::Idle)];
        store.release_symbols("me", &idle, T0).await.unwrap();
        assert_eq!(store.late_before(&all).await.unwrap()["A"], T0 + 60 * MIN);

        // Only the lease holder may mark a read.
        let err = store
            .set_inflight_many("me", &[("A".into(), T0 + 240 * MIN)])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProgressError::LeaseLost { ref symbol, .. } if symbol == "A"),
            "{err}"
        );
        assert_eq!(store.late_before(&all).await.unwrap()["A"], T0 + 60 * MIN);
    }

    #[tokio::test]
    async fn clearing_removes_the_ranges_read_and_keeps_those_recorded_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let (r1, r2, r3, r4) = (
            T0..T0 + MIN,
            T0 + 5 * MIN..T0 + 7 * MIN,
            T0..T0 + MIN,
            T0 + 9 * MIN..T0 + 10 * MIN,
        );
        store
            .add_dirty("A", &[r1.clone(), r2.clone()], T0)
            .await
            .unwrap();
        store
            .add_dirty("B", std::slice::from_ref(&r3), T0)
            .await
            .unwrap();
        let read = store.dirty_of(&names(&["A"])).await.unwrap();
        assert_eq!(read.len(), 1, "only the symbols asked for: {read:?}");
        let Dirty { ids, ranges } = &read["A"];
        assert_eq!(ranges, &[r1, r2]);

        // Recorded after the engine read A's ranges, so not repaired yet.
        store
            .add_dirty("A", std::slice::from_ref(&r4), T0)
            .await
            .unwrap();
        store.clear_dirty_of("A", ids).await.unwrap();
        let left = store.dirty_of(&names(&["A", "B"])).await.unwrap();
        assert_eq!(left["A"].ranges, std::slice::from_ref(&r4));
        assert_eq!(left["B"].ranges, [r3], "another symbol's ranges stay");
        let task_rows = store.dirty("A", Resolution::M1).await.unwrap();
        assert_eq!(task_rows, [(left["A"].ids[0], r4)]);
        assert!(store.dirty("A", Resolution::H1).await.unwrap().is_empty());
    }

    /// On PostgreSQL a late trade's row can commit after the engine read the
    /// symbol's rows with an id below the newest one read (ids are drawn at
    /// insert, not at commit). Such a row was not read, so it must stay.
    #[tokio::test]
    async fn clearing_keeps_a_row_that_was_not_read_even_with_a_lower_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let (early, late) = (T0..T0 + MIN, T0 + 3 * MIN..T0 + 4 * MIN);
        store
            .add_dirty("A", &[early.clone(), late.clone()], T0)
            .await
            .unwrap();
        let all = store
            .dirty_of(&names(&["A"]))
            .await
            .unwrap()
            .remove("A")
            .unwrap();
        // What the engine read if the first row had not committed yet.
        let read = Dirty {
            ids: all.ids[1..].to_vec(),
            ranges: all.ranges[1..].to_vec(),
        };
        assert_eq!(read.ranges, [late]);
        store.clear_dirty_of("A", &read.ids).await.unwrap();
        let left = store.dirty_of(&names(&["A"])).await.unwrap();
        assert_eq!(left["A"].ranges, [early], "a row never read was cleared");
    }
}

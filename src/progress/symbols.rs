//! Batch operations on whole symbols: the engine leases a symbol for all six of
//! its resolutions at once and commits every symbol of a batch in one
//! transaction. Each operation is one statement whatever the number of symbols
//! (lists travel as one parameter: JSON read with `json_each` in SQLite, a
//! `text[]` or `jsonb` in PostgreSQL), so a pass over thousands of symbols costs
//! a few statements, not a few per symbol.
//!
//! Lease expiry is the database's clock plus the lease (SQLite:
//! `strftime(…, 'now', …)`, PostgreSQL: `ohlcd_db_time`), and is compared with
//! the same clock. The daemon's own clock (`now` below) only stamps run times.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde_json::json;

use super::db::{Arg, Sql, again_on_deadlock, json as json_arg};
use super::{ProgressError, ProgressStore, TaskStatus, opt_time, parse_resolution};
use crate::candle::Resolution;
use crate::candle::Watermarks;
use crate::times::to_rfc3339;

/// Whose fault a failed run was, which decides when the symbol is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Something of the symbol's own (a write InfluxDB refuses for its
    /// candles): counted, and retried after a backoff that grows with the
    /// failures in a row.
    OfTheSymbol,
    /// The servers (InfluxDB or the store unreachable, a timeout): not the
    /// symbol's; retried on the next tick.
    OfTheServers,
}

/// A run that failed, as [`ProgressStore::fail_symbols`] records it.
#[derive(Debug, Clone)]
pub struct FailedRun<'a> {
    /// The 1m range the run was to cover.
    pub range: Range<i64>,
    /// What went wrong.
    pub error: &'a str,
    /// Whose fault it was.
    pub failure: Failure,
    /// When the run started (Unix ns).
    pub started_at: i64,
}

/// One symbol's tasks as the engine plans with them.
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolState {
    /// Watermarks in [`Resolution::ALL`] order.
    pub watermarks: Watermarks,
    /// Holder of an unexpired lease on any of its tasks, other than the asker.
    pub leased_by: Option<String>,
    /// Set while its last run failed: failed runs in a row, and when the
    /// last one ended (Unix ns, the runner's clock).
    pub failing: Option<(u32, i64)>,
}

/// What one step did to one symbol, committed after InfluxDB acknowledged its
/// candles.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCommit {
    /// The symbol.
    pub symbol: String,
    /// `chunk` (forward progress), `late` or `rebuild` (repairs).
    pub kind: &'static str,
    /// The 1m range processed, half-open.
    pub range: Range<i64>,
    /// Forward steps: the watermarks after the step (never lower than before).
    /// Repairs: `None`, watermarks stay.
    pub watermarks: Option<Watermarks>,
    /// Raw trades read.
    pub rows_read: u64,
    /// Rows read that could not make a trade (skipped, never aggregated).
    pub skipped: u64,
    /// Candles written per resolution, [`Resolution::ALL`] order.
    pub candles: [u64; 6],
    /// When processing started (Unix ns).
    pub started_at: i64,
}

fn lease_ms(lease: Duration) -> Arg {
    Arg::Int(lease.as_millis().try_into().unwrap_or(i64::MAX))
}

fn list(symbols: &[String]) -> Arg {
    Arg::List(symbols.to_vec())
}

const ENSURE_SYMBOLS: Sql = Sql {
    sqlite: "INSERT OR IGNORE INTO progress (symbol, resolution, created_at, updated_at)
             SELECT s.value, r.column1, ?2, ?2 FROM json_each(?1) AS s
             CROSS JOIN (VALUES ('1m'), ('5m'), ('15m'), ('1h'), ('4h'), ('1d')) AS r",
    postgres: "INSERT INTO progress (symbol, resolution, created_at, updated_at)
               SELECT s, r, $2, $2 FROM unnest($1::text[]) AS s
               CROSS JOIN unnest(ARRAY['1m', '5m', '15m', '1h', '4h', '1d']) AS r
               ON CONFLICT DO NOTHING",
};

/// Every task with its watermark, and its lease holder where the lease is
/// live by the database clock and held by someone other than `?1`.
const SYMBOL_STATES: Sql = Sql {
    sqlite: "SELECT symbol, resolution, watermark, status, failures, last_run_finished_at,
                    CASE WHEN lease_owner != ?1
                          AND lease_expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                         THEN lease_owner END AS leased_by
             FROM progress",
    postgres: "SELECT symbol, resolution, watermark, status, failures, last_run_finished_at,
                      CASE WHEN lease_owner <> $1 AND lease_expires_at > ohlcd_db_time(0)
                           THEN lease_owner END AS leased_by
               FROM progress",
};

/// Claims the listed symbols (`?4`: JSON items `{s, c, w}`) nobody else holds
/// a live lease on, all six rows at once, for `?2` milliseconds of database
/// time. Where `c` is true, only if the symbol's 1m watermark is still `w`
/// (what its planner saw): another daemon that ran the symbol in between
/// moved it, and this one would redo that range. SQLite runs one writer at a
/// time, so the statement is atomic as written. PostgreSQL runs claims from
/// several hosts at once: the candidate rows are locked first (`FOR UPDATE
/// SKIP LOCKED`, so two claimers never wait on each other or deadlock), and a
/// symbol is claimed only if all six of its rows were locked here and their
/// latest committed versions pass the same tests.
const CLAIM: Sql = Sql {
    sqlite: "UPDATE progress SET status = 'running', lease_owner = ?1, last_owner = ?1,
                    lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', (?2 / 1000.0) || ' seconds'),
                    last_run_started_at = ?3, last_run_finished_at = NULL,
                    runs = runs + 1, updated_at = ?3
             WHERE symbol IN (
                   SELECT m.symbol FROM json_each(?4) AS j
                   JOIN progress AS m ON m.symbol = j.value ->> 's' AND m.resolution = '1m'
                   WHERE NOT (j.value ->> 'c') OR m.watermark IS j.value ->> 'w')
               AND symbol NOT IN (
                   SELECT symbol FROM progress
                   WHERE symbol IN (SELECT value ->> 's' FROM json_each(?4))
                     AND lease_owner IS NOT NULL AND lease_owner != ?1
                     AND lease_expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             RETURNING symbol",
    postgres: "WITH wanted AS (
                   SELECT * FROM jsonb_to_recordset($4::jsonb) AS j(s text, c boolean, w text)
               ), candidates AS (
                   SELECT p.symbol, p.resolution, p.watermark, p.lease_owner, p.lease_expires_at
                   FROM progress AS p
                   WHERE p.symbol IN (SELECT s FROM wanted)
                   ORDER BY p.symbol, p.resolution
                   FOR UPDATE OF p SKIP LOCKED
               ), free AS (
                   SELECT k.symbol FROM candidates AS k JOIN wanted AS w ON w.s = k.symbol
                   GROUP BY k.symbol, w.c, w.w
                   HAVING count(*) = 6
                      AND bool_and(k.lease_owner IS NULL OR k.lease_owner = $1
                                   OR k.lease_expires_at <= ohlcd_db_time(0))
                      AND (NOT w.c OR bool_or(k.resolution = '1m'
                                              AND k.watermark IS NOT DISTINCT FROM w.w))
               )
               UPDATE progress SET status = 'running', lease_owner = $1, last_owner = $1,
                      lease_expires_at = ohlcd_db_time($2),
                      last_run_started_at = $3, last_run_finished_at = NULL,
                      runs = runs + 1, updated_at = $3
               WHERE symbol IN (SELECT symbol FROM free)
               RETURNING symbol",
};

const RENEW: Sql = Sql {
    sqlite: "UPDATE progress
             SET lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', (?2 / 1000.0) || ' seconds'),
                 updated_at = ?3
             WHERE lease_owner = ?1 AND symbol IN (SELECT value FROM json_each(?4))",
    postgres: "UPDATE progress SET lease_expires_at = ohlcd_db_time($2), updated_at = $3
               WHERE lease_owner = $1 AND symbol = ANY($4)",
};

const FIRST_LOST: Sql = Sql {
    sqlite: "SELECT symbol, resolution FROM progress
             WHERE symbol IN (SELECT value FROM json_each(?1))
               AND (lease_owner IS NULL OR lease_owner != ?2)
             LIMIT 1",
    postgres: "SELECT symbol, resolution FROM progress
               WHERE symbol = ANY($1) AND (lease_owner IS NULL OR lease_owner <> $2)
               LIMIT 1",
};

const COMMIT_TASKS: Sql = Sql {
    sqlite: "UPDATE progress SET
                watermark = CASE
                    WHEN j.value ->> 'w' IS NULL THEN progress.watermark
                    WHEN progress.watermark IS NULL OR progress.watermark < j.value ->> 'w'
                        THEN j.value ->> 'w'
                    ELSE progress.watermark END,
                chunks = chunks + 1,
                rows_read = rows_read + (j.value ->> 'n'),
                rows_skipped = rows_skipped + (j.value ->> 'x'),
                candles_written = candles_written + (j.value ->> 'c'),
                updated_at = ?2
             FROM json_each(?3) AS j
             WHERE progress.symbol = j.value ->> 's' AND progress.resolution = j.value ->> 'r'
               AND progress.lease_owner = ?1",
    postgres: "UPDATE progress SET
                  watermark = CASE
                      WHEN j.w IS NULL THEN progress.watermark
                      WHEN progress.watermark IS NULL OR progress.watermark < j.w THEN j.w
                      ELSE progress.watermark END,
                  chunks = progress.chunks + 1,
                  rows_read = progress.rows_read + j.n,
                  rows_skipped = progress.rows_skipped + j.x,
                  candles_written = progress.candles_written + j.c,
                  updated_at = $2
               FROM jsonb_to_recordset($3::jsonb) AS j(s text, r text, w text, n bigint, x bigint, c bigint)
               WHERE progress.symbol = j.s AND progress.resolution = j.r
                 AND progress.lease_owner = $1",
};

/// Extends each task's newest history row where this step continues it.
const MERGE_RUNS: Sql = Sql {
    sqlite: "UPDATE progress_runs SET range_end = j.value ->> 'e', finished_at = ?2,
                rows_read = rows_read + (j.value ->> 'n'),
                candles_written = candles_written + (j.value ->> 'c')
             FROM json_each(?3) AS j
             WHERE progress_runs.id = (SELECT max(id) FROM progress_runs AS p
                                       WHERE p.symbol = j.value ->> 's' AND p.resolution = j.value ->> 'r')
               AND progress_runs.owner = ?1 AND progress_runs.kind = 'chunk'
               AND j.value ->> 'k' = 'chunk' AND progress_runs.status = 'ok'
               AND progress_runs.range_end = j.value ->> 'b'
             RETURNING progress_runs.symbol, progress_runs.resolution",
    postgres: "UPDATE progress_runs SET range_end = j.e, finished_at = $2,
                  rows_read = progress_runs.rows_read + j.n,
                  candles_written = progress_runs.candles_written + j.c
               FROM jsonb_to_recordset($3::jsonb)
                    AS j(s text, r text, k text, b text, e text, t text, n bigint, c bigint)
               WHERE progress_runs.id = (SELECT max(id) FROM progress_runs AS p
                                         WHERE p.symbol = j.s AND p.resolution = j.r)
                 AND progress_runs.owner = $1 AND progress_runs.kind = 'chunk'
                 AND j.k = 'chunk' AND progress_runs.status = 'ok'
                 AND progress_runs.range_end = j.b
               RETURNING progress_runs.symbol, progress_runs.resolution",
};

const INSERT_RUNS: Sql = Sql {
    sqlite: "INSERT INTO progress_runs (symbol, resolution, owner, kind, range_start, range_end,
                started_at, finished_at, rows_read, candles_written, status, error)
             SELECT j.value ->> 's', j.value ->> 'r', ?1, j.value ->> 'k', j.value ->> 'b',
                    j.value ->> 'e', j.value ->> 't', ?2, j.value ->> 'n', j.value ->> 'c', 'ok', NULL
             FROM json_each(?3) AS j",
    postgres: "INSERT INTO progress_runs (symbol, resolution, owner, kind, range_start, range_end,
                  started_at, finished_at, rows_read, candles_written, status, error)
               SELECT j.s, j.r, $1, j.k, j.b, j.e, j.t, $2, j.n, j.c, 'ok', NULL
               FROM jsonb_to_recordset($3::jsonb)
                    AS j(s text, r text, k text, b text, e text, t text, n bigint, c bigint)",
};

const RELEASE: Sql = Sql {
    sqlite: "UPDATE progress SET status = j.value ->> 'st', last_error = NULL, failures = 0, lease_owner = NULL,
                lease_expires_at = NULL, inflight_until = NULL, last_run_finished_at = ?2, updated_at = ?2
             FROM json_each(?3) AS j
             WHERE progress.symbol = j.value ->> 's' AND progress.lease_owner = ?1",
    postgres: "UPDATE progress SET status = j.st, last_error = NULL, failures = 0, lease_owner = NULL,
                  lease_expires_at = NULL, inflight_until = NULL, last_run_finished_at = $2,
                  updated_at = $2
               FROM jsonb_to_recordset($3::jsonb) AS j(s text, st text)
               WHERE progress.symbol = j.s AND progress.lease_owner = $1",
};

const FAILED_RUNS: Sql = Sql {
    sqlite: "INSERT INTO progress_runs (symbol, resolution, owner, kind, range_start, range_end,
                started_at, finished_at, rows_read, candles_written, status, error)
             SELECT p.symbol, '1m', ?1, 'chunk', ?2, ?3, ?4, ?5, 0, 0, 'failed', ?6
             FROM progress AS p
             WHERE p.symbol IN (SELECT value FROM json_each(?7)) AND p.resolution = '1m'
               AND p.lease_owner = ?1",
    postgres: "INSERT INTO progress_runs (symbol, resolution, owner, kind, range_start, range_end,
                  started_at, finished_at, rows_read, candles_written, status, error)
               SELECT p.symbol, '1m', $1, 'chunk', $2, $3, $4, $5, 0, 0, 'failed', $6
               FROM progress AS p
               WHERE p.symbol = ANY($7) AND p.resolution = '1m' AND p.lease_owner = $1",
};

const FAIL: Sql = Sql {
    sqlite: "UPDATE progress SET status = 'failed', last_error = ?2, failures = failures + ?5, lease_owner = NULL,
                lease_expires_at = NULL, inflight_until = NULL, last_run_finished_at = ?3, updated_at = ?3
             WHERE lease_owner = ?1 AND symbol IN (SELECT value FROM json_each(?4))",
    postgres: "UPDATE progress SET status = 'failed', last_error = $2, failures = failures + $5, lease_owner = NULL,
                  lease_expires_at = NULL, inflight_until = NULL, last_run_finished_at = $3,
                  updated_at = $3
               WHERE lease_owner = $1 AND symbol = ANY($4)",
};

/// One task's update in [`ProgressStore::commit_steps`] (keys as the
/// statements read them).
#[derive(serde::Serialize)]
struct TaskRow<'a> {
    s: &'a str,
    r: &'static str,
    w: Option<String>,
    n: u64,
    x: u64,
    c: u64,
}

/// One history row in [`ProgressStore::commit_steps`].
#[derive(serde::Serialize)]
struct RunRow<'a> {
    s: &'a str,
    r: &'static str,
    k: &'a str,
    b: String,
    e: String,
    t: String,
    n: u64,
    c: u64,
}

/// Steps per statement in [`ProgressStore::commit_steps`] (six task rows and
/// up to six history rows each).
const COMMIT_SLICE: usize = 1000;

/// The task updates and history rows of `steps`, as the commit statements
/// read them.
fn commit_rows(steps: &[StepCommit]) -> (Vec<TaskRow<'_>>, Vec<RunRow<'_>>) {
    let mut tasks: Vec<TaskRow<'_>> = Vec::with_capacity(steps.len() * 6);
    let mut runs: Vec<RunRow<'_>> = Vec::new();
    for step in steps {
        for (i, res) in Resolution::ALL.iter().enumerate() {
            let watermark = step.watermarks.and_then(|w| w[i]);
            let rows_read = if i == 0 { step.rows_read } else { 0 };
            tasks.push(TaskRow {
                s: &step.symbol,
                r: res.name(),
                w: watermark.map(to_rfc3339),
                n: rows_read,
                x: if i == 0 { step.skipped } else { 0 },
                c: step.candles[i],
            });
            // The range this resolution covered: its complete windows.
            let range = match step.watermarks {
                Some(_) => res.window_start(step.range.start)..res.window_start(step.range.end),
                None => step.range.clone(),
            };
            if range.start < range.end {
                runs.push(RunRow {
                    s: &step.symbol,
                    r: res.name(),
                    k: step.kind,
                    b: to_rfc3339(range.start),
                    e: to_rfc3339(range.end),
                    t: to_rfc3339(step.started_at),
                    n: rows_read,
                    c: step.candles[i],
                });
            }
        }
    }
    (tasks, runs)
}

impl ProgressStore {
    /// Makes sure every symbol has a row for every resolution (one statement).
    pub async fn ensure_symbols(&self, symbols: &[String], now: i64) -> Result<(), ProgressError> {
        if symbols.is_empty() {
            return Ok(());
        }
        let args = [list(symbols), Arg::Text(to_rfc3339(now))];
        self.db.execute(ENSURE_SYMBOLS, &args).await?;
        Ok(())
    }

    /// Every symbol's watermarks, and who else holds a live lease on it by
    /// the database clock (one query).
    pub async fn symbol_states(
        &self,
        owner: &str,
    ) -> Result<BTreeMap<String, SymbolState>, ProgressError> {
        let mut out: BTreeMap<String, SymbolState> = BTreeMap::new();
        self.db
            .for_each_row(SYMBOL_STATES, &[Arg::Text(owner.into())], |row| {
                let res = parse_resolution(&row.text("resolution")?)?;
                let symbol = row.text("symbol")?;
                let state = out.entry(symbol).or_insert(SymbolState {
                    watermarks: [None; 6],
                    leased_by: None,
                    failing: None,
                });
                state.watermarks[res.index()] = opt_time(row, "watermark")?;
                // A symbol fails and recovers as a whole: its 1m row tells.
                if res == Resolution::M1 && row.text("status")? == TaskStatus::Failed.as_str() {
                    let failures = u32::try_from(row.int("failures")?).unwrap_or(u32::MAX);
                    let at = opt_time(row, "last_run_finished_at")?.unwrap_or(0);
                    state.failing = Some((failures, at));
                }
                if let Some(o) = row.opt_text("leased_by")? {
                    state.leased_by = Some(o);
                }
                Ok::<(), ProgressError>(())
            })
            .await?;
        Ok(out)
    }

    /// Leases every listed symbol that nobody else holds, for all its
    /// resolutions at once, for `lease` of database time. All-or-nothing per
    /// symbol, in one statement. `now` (the daemon's clock) stamps the run
    /// start. Returns the symbols claimed.
    pub async fn claim_symbols(
        &self,
        symbols: &[String],
        owner: &str,
        now: i64,
        lease: Duration,
    ) -> Result<Vec<String>, ProgressError> {
        let items = symbols
            .iter()
            .map(|s| json!({"s": s, "c": false, "w": null}));
        self.claim(items.collect(), owner, now, lease).await
    }

    /// Like [`ProgressStore::claim_symbols`] for symbols planned from their
    /// 1m watermark (`planned`: symbol, watermark seen): a symbol whose
    /// watermark moved since (another daemon ran it) is not claimed, so no
    /// range is processed twice. The caller plans it again.
    pub async fn claim_planned(
        &self,
        planned: &[(String, Option<i64>)],
        owner: &str,
        now: i64,
        lease: Duration,
    ) -> Result<Vec<String>, ProgressError> {
        let items = planned
            .iter()
            .map(|(s, w)| json!({"s": s, "c": true, "w": w.map(to_rfc3339)}));
        self.claim(items.collect(), owner, now, lease).await
    }

    async fn claim(
        &self,
        items: Vec<serde_json::Value>,
        owner: &str,
        now: i64,
        lease: Duration,
    ) -> Result<Vec<String>, ProgressError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let args = [
            Arg::Text(owner.into()),
            lease_ms(lease),
            Arg::Text(to_rfc3339(now)),
            json_arg(&items),
        ];
        let rows = self.db.fetch_all(CLAIM, &args).await?;
        let mut claimed: Vec<String> = rows
            .iter()
            .map(|r| r.text("symbol"))
            .collect::<Result<_, _>>()?;
        claimed.sort();
        claimed.dedup();
        Ok(claimed)
    }

    /// Extends the leases on `symbols` to `lease` from now by the database
    /// clock; fails if any was lost.
    pub async fn renew_symbols(
        &self,
        symbols: &[String],
        owner: &str,
        now: i64,
        lease: Duration,
    ) -> Result<(), ProgressError> {
        let args = [
            Arg::Text(owner.into()),
            lease_ms(lease),
            Arg::Text(to_rfc3339(now)),
            list(symbols),
        ];
        let done = self.db.execute(RENEW, &args).await?;
        self.expect_rows(done, symbols.len() * 6, symbols, owner)
            .await
    }

    /// Names the first symbol whose lease `owner` lost (for the error).
    pub(super) async fn expect_rows(
        &self,
        got: u64,
        want: usize,
        symbols: &[String],
        owner: &str,
    ) -> Result<(), ProgressError> {
        if got as usize == want {
            return Ok(());
        }
        let args = [list(symbols), Arg::Text(owner.into())];
        let lost = self.db.fetch_optional(FIRST_LOST, &args).await?;
        let (symbol, resolution) = match lost {
            Some(r) => (r.text("symbol")?, r.text("resolution")?),
            None => (symbols.first().cloned().unwrap_or_default(), "1m".into()),
        };
        Err(ProgressError::LeaseLost {
            symbol,
            resolution: resolution.parse().unwrap_or(Resolution::M1),
            owner: owner.to_string(),
        })
    }

    /// Commits the steps of a batch in one transaction, fenced by the lease:
    /// watermarks (forward steps), counters and run history. Consecutive
    /// forward steps of one owner extend the same history row, so a symbol
    /// followed live for a year has a few rows, not one per minute.
    /// Call only after InfluxDB acknowledged the steps' candles.
    ///
    /// The statements take [`COMMIT_SLICE`] steps at a time, all in the one
    /// transaction: their JSON parameters (and SQLite's parse of them) for a
    /// 5,000-symbol batch were the heap peak of `ohlcd run` (heaptrack: ~35
    /// MB of 58), and a slice costs a fifth of that.
    pub async fn commit_steps(
        &self,
        owner: &str,
        steps: &[StepCommit],
        finished_at: i64,
    ) -> Result<(), ProgressError> {
        if steps.is_empty() {
            return Ok(());
        }
        again_on_deadlock("commit", || {
            self.commit_steps_once(owner, steps, finished_at)
        })
        .await
    }

    /// One attempt at [`ProgressStore::commit_steps`], in one transaction.
    async fn commit_steps_once(
        &self,
        owner: &str,
        steps: &[StepCommit],
        finished_at: i64,
    ) -> Result<(), ProgressError> {
        let owner_arg = Arg::Text(owner.into());
        let now = Arg::Text(to_rfc3339(finished_at));
        let mut tx = self.db.begin().await?;
        for slice in steps.chunks(COMMIT_SLICE) {
            let (tasks, mut runs) = commit_rows(slice);
            let args = [owner_arg.clone(), now.clone(), json_arg(&tasks)];
            drop(tasks);
            let done = tx.execute(COMMIT_TASKS, &args).await?;
            drop(args);
            if done as usize != slice.len() * 6 {
                drop(tx);
                let symbols: Vec<String> = slice.iter().map(|s| s.symbol.clone()).collect();
                return self
                    .expect_rows(done, slice.len() * 6, &symbols, owner)
                    .await;
            }
            let args = [owner_arg.clone(), now.clone(), json_arg(&runs)];
            let merged = tx.fetch_all(MERGE_RUNS, &args).await?;
            drop(args);
            let merged: std::collections::HashSet<(String, String)> = merged
                .iter()
                .map(|r| Ok((r.text("symbol")?, r.text("resolution")?)))
                .collect::<Result<_, sqlx::Error>>()?;
            runs.retain(|r| !merged.contains(&(r.s.to_string(), r.r.to_string())));
            if !runs.is_empty() {
                let args = [owner_arg.clone(), now.clone(), json_arg(&runs)];
                tx.execute(INSERT_RUNS, &args).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ends the run of `symbols`: status (`completed` when caught up, `idle`
    /// when stopped early), lease dropped. One statement.
    pub async fn release_symbols(
        &self,
        owner: &str,
        statuses: &[(String, TaskStatus)],
        now: i64,
    ) -> Result<(), ProgressError> {
        if statuses.is_empty() {
            return Ok(());
        }
        let items: Vec<_> = statuses
            .iter()
            .map(|(s, st)| json!({"s": s, "st": st.as_str()}))
            .collect();
        let args = [
            Arg::Text(owner.into()),
            Arg::Text(to_rfc3339(now)),
            json_arg(&items),
        ];
        self.db.execute(RELEASE, &args).await?;
        Ok(())
    }

    /// Marks `symbols` failed with `run.error`, records a failed run over
    /// `run.range` for each, and drops their leases (a lease already lost is
    /// left alone).
    pub async fn fail_symbols(
        &self,
        owner: &str,
        symbols: &[String],
        run: &FailedRun<'_>,
        now: i64,
    ) -> Result<(), ProgressError> {
        if symbols.is_empty() {
            return Ok(());
        }
        again_on_deadlock("failure record", || {
            self.fail_symbols_once(owner, symbols, run, now)
        })
        .await
    }

    /// One attempt at [`ProgressStore::fail_symbols`], in one transaction.
    async fn fail_symbols_once(
        &self,
        owner: &str,
        symbols: &[String],
        run: &FailedRun<'_>,
        now: i64,
    ) -> Result<(), ProgressError> {
        let FailedRun {
            range,
            error,
            failure,
            started_at,
        } = run;
        let mut tx = self.db.begin().await?;
        let args = [
            Arg::Text(owner.into()),
            Arg::Text(to_rfc3339(range.start)),
            Arg::Text(to_rfc3339(range.end)),
            Arg::Text(to_rfc3339(*started_at)),
            Arg::Text(to_rfc3339(now)),
            Arg::Text(error.to_string()),
            list(symbols),
        ];
        tx.execute(FAILED_RUNS, &args).await?;
        let args = [
            Arg::Text(owner.into()),
            Arg::Text(error.to_string()),
            Arg::Text(to_rfc3339(now)),
            list(symbols),
            Arg::Int(i64::from(*failure == Failure::OfTheSymbol)),
        ];
        tx.execute(FAIL, &args).await?;
        tx.commit().await?;
        Ok(())
    }
}

//! Batch operations on whole symbols: the engine leases a symbol for all six of
//! its resolutions at once and commits every symbol of a batch in one
//! transaction. Each operation is one statement whatever the number of symbols
//! (the symbol list travels as one JSON parameter read with `json_each`), so a
//! pass over thousands of symbols costs a few statements, not a few per symbol.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use serde_json::json;
use sqlx::Row;

use super::{ProgressError, ProgressStore, TaskStatus, opt_time};
use crate::candle::Resolution;
use crate::engine::plan::{Watermarks, index};
use crate::times::{from_rfc3339, to_rfc3339};

/// One symbol's tasks as the engine plans with them.
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolState {
    /// Watermarks in [`Resolution::ALL`] order.
    pub watermarks: Watermarks,
    /// Holder of an unexpired lease on any of its tasks, other than the asker.
    pub leased_by: Option<String>,
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
    /// Candles written per resolution, [`Resolution::ALL`] order.
    pub candles: [u64; 6],
    /// When processing started (Unix ns).
    pub started_at: i64,
}

fn symbols_json(symbols: &[String]) -> String {
    serde_json::to_string(symbols).expect("strings serialize")
}

impl ProgressStore {
    /// Makes sure every symbol has a row for every resolution (one statement).
    pub async fn ensure_symbols(&self, symbols: &[String], now: i64) -> Result<(), ProgressError> {
        if symbols.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT OR IGNORE INTO progress (symbol, resolution, created_at, updated_at)
             SELECT s.value, r.column1, ?2, ?2 FROM json_each(?1) AS s
             CROSS JOIN (VALUES ('1m'), ('5m'), ('15m'), ('1h'), ('4h'), ('1d')) AS r",
        )
        .bind(symbols_json(symbols))
        .bind(to_rfc3339(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every symbol's watermarks and foreign leases as of `now` (one query).
    pub async fn symbol_states(
        &self,
        owner: &str,
        now: i64,
    ) -> Result<BTreeMap<String, SymbolState>, ProgressError> {
        let rows = sqlx::query(
            "SELECT symbol, resolution, watermark, lease_owner, lease_expires_at FROM progress",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<String, SymbolState> = BTreeMap::new();
        for row in &rows {
            let symbol: String = row.try_get("symbol")?;
            let res: String = row.try_get("resolution")?;
            let res: Resolution = res.parse().map_err(|e: crate::candle::UnknownResolution| {
                ProgressError::Invalid(e.to_string())
            })?;
            let state = out.entry(symbol).or_insert(SymbolState {
                watermarks: [None; 6],
                leased_by: None,
            });
            state.watermarks[index(res)] = opt_time(row, "watermark")?;
            let lease_owner: Option<String> = row.try_get("lease_owner")?;
            if let Some(o) = lease_owner
                && o != owner
                && opt_time(row, "lease_expires_at")?.is_some_and(|t| t > now)
            {
                state.leased_by = Some(o);
            }
        }
        Ok(out)
    }

    /// Leases every listed symbol that nobody else holds, for all its
    /// resolutions at once, until `now + lease`. All-or-nothing per symbol, in
    /// one statement. Returns the symbols claimed.
    pub async fn claim_symbols(
        &self,
        symbols: &[String],
        owner: &str,
        now: i64,
        lease: Duration,
    ) -> Result<Vec<String>, ProgressError> {
        if symbols.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "UPDATE progress SET status = 'running', lease_owner = ?1, last_owner = ?1,
                    lease_expires_at = ?2, last_run_started_at = ?3, last_run_finished_at = NULL,
                    runs = runs + 1, updated_at = ?3
             WHERE symbol IN (SELECT value FROM json_each(?4))
               AND symbol NOT IN (
                   SELECT symbol FROM progress
                   WHERE symbol IN (SELECT value FROM json_each(?4))
                     AND lease_owner IS NOT NULL AND lease_owner != ?1 AND lease_expires_at > ?3)
             RETURNING symbol",
        )
        .bind(owner)
        .bind(to_rfc3339(now + lease.as_nanos() as i64))
        .bind(to_rfc3339(now))
        .bind(symbols_json(symbols))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed: Vec<String> = rows
            .iter()
            .map(|r| r.try_get("symbol"))
            .collect::<Result<_, _>>()?;
        claimed.sort();
        claimed.dedup();
        Ok(claimed)
    }

    /// Extends the leases on `symbols` to `now + lease`; fails if any was lost.
    pub async fn renew_symbols(
        &self,
        symbols: &[String],
        owner: &str,
        now: i64,
        lease: Duration,
    ) -> Result<(), ProgressError> {
        let done = sqlx::query(
            "UPDATE progress SET lease_expires_at = ?2, updated_at = ?3
             WHERE lease_owner = ?1 AND symbol IN (SELECT value FROM json_each(?4))",
        )
        .bind(owner)
        .bind(to_rfc3339(now + lease.as_nanos() as i64))
        .bind(to_rfc3339(now))
        .bind(symbols_json(symbols))
        .execute(&self.pool)
        .await?;
        self.expect_rows(done.rows_affected(), symbols.len() * 6, symbols, owner)
            .await
    }

    /// Names the first symbol whose lease `owner` lost (for the error).
    async fn expect_rows(
        &self,
        got: u64,
        want: usize,
        symbols: &[String],
        owner: &str,
    ) -> Result<(), ProgressError> {
        if got as usize == want {
            return Ok(());
        }
        let lost = sqlx::query(
            "SELECT symbol, resolution FROM progress
             WHERE symbol IN (SELECT value FROM json_each(?1)) AND (lease_owner IS NULL OR lease_owner != ?2)
             LIMIT 1",
        )
        .bind(symbols_json(symbols))
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        let (symbol, resolution) = match lost {
            Some(r) => (
                r.try_get::<String, _>("symbol")?,
                r.try_get::<String, _>("resolution")?,
            ),
            None => (symbols.first().cloned().unwrap_or_default(), "1m".into()),
        };
        Err(ProgressError::LeaseLost {
            symbol,
            resolution: resolution.parse().unwrap_or(Resolution::M1),
            owner: owner.to_string(),
        })
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
        let done = sqlx::query(
            "UPDATE progress SET inflight_until = j.value ->> 'u'
             FROM json_each(?2) AS j
             WHERE progress.symbol = j.value ->> 's' AND progress.resolution = '1m'
               AND progress.lease_owner = ?1",
        )
        .bind(owner)
        .bind(serde_json::Value::Array(items).to_string())
        .execute(&self.pool)
        .await?;
        let symbols: Vec<String> = until.iter().map(|(s, _)| s.clone()).collect();
        self.expect_rows(done.rows_affected(), until.len(), &symbols, owner)
            .await
    }

    /// Commits the steps of a batch in one transaction, fenced by the lease:
    /// watermarks (forward steps), counters and run history. Consecutive
    /// forward steps of one owner extend the same history row, so a symbol
    /// followed live for a year has a few rows, not one per minute.
    /// Call only after InfluxDB acknowledged the steps' candles.
    pub async fn commit_steps(
        &self,
        owner: &str,
        steps: &[StepCommit],
        finished_at: i64,
    ) -> Result<(), ProgressError> {
        if steps.is_empty() {
            return Ok(());
        }
        let mut tasks = Vec::with_capacity(steps.len() * 6);
        let mut runs = Vec::new();
        for step in steps {
            for (i, res) in Resolution::ALL.iter().enumerate() {
                let watermark = step.watermarks.and_then(|w| w[i]);
                tasks.push(json!({
                    "s": step.symbol,
                    "r": res.name(),
                    "w": watermark.map(to_rfc3339),
                    "n": if i == 0 { step.rows_read } else { 0 },
                    "c": step.candles[i],
                }));
                // The range this resolution covered: its complete windows.
                let range = match step.watermarks {
                    Some(_) => res.window_start(step.range.start)..res.window_start(step.range.end),
                    None => step.range.clone(),
                };
                if range.start < range.end {
                    runs.push(json!({
                        "s": step.symbol,
                        "r": res.name(),
                        "k": step.kind,
                        "b": to_rfc3339(range.start),
                        "e": to_rfc3339(range.end),
                        "t": to_rfc3339(step.started_at),
                        "n": if i == 0 { step.rows_read } else { 0 },
                        "c": step.candles[i],
                    }));
                }
            }
        }
        let now = to_rfc3339(finished_at);
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE progress SET
                watermark = CASE
                    WHEN j.value ->> 'w' IS NULL THEN progress.watermark
                    WHEN progress.watermark IS NULL OR progress.watermark < j.value ->> 'w'
                        THEN j.value ->> 'w'
                    ELSE progress.watermark END,
                chunks = chunks + 1,
                rows_read = rows_read + (j.value ->> 'n'),
                candles_written = candles_written + (j.value ->> 'c'),
                updated_at = ?2
             FROM json_each(?3) AS j
             WHERE progress.symbol = j.value ->> 's' AND progress.resolution = j.value ->> 'r'
               AND progress.lease_owner = ?1",
        )
        .bind(owner)
        .bind(&now)
        .bind(serde_json::Value::Array(tasks).to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() as usize != steps.len() * 6 {
            drop(tx);
            let symbols: Vec<String> = steps.iter().map(|s| s.symbol.clone()).collect();
            return self
                .expect_rows(done.rows_affected(), steps.len() * 6, &symbols, owner)
                .await;
        }
        // Extend the task's newest history row where this step continues it.
        let merged = sqlx::query(
            "UPDATE progress_runs SET range_end = j.value ->> 'e', finished_at = ?2,
                rows_read = rows_read + (j.value ->> 'n'),
                candles_written = candles_written + (j.value ->> 'c')
             FROM json_each(?3) AS j
             WHERE progress_runs.id = (SELECT max(id) FROM progress_runs AS p
                                       WHERE p.symbol = j.value ->> 's' AND p.resolution = j.value ->> 'r')
               AND progress_runs.owner = ?1 AND progress_runs.kind = 'chunk'
               AND j.value ->> 'k' = 'chunk' AND progress_runs.status = 'ok'
               AND progress_runs.range_end = j.value ->> 'b'
             RETURNING progress_runs.symbol, progress_runs.resolution",
        )
        .bind(owner)
        .bind(&now)
        .bind(serde_json::Value::Array(runs.clone()).to_string())
        .fetch_all(&mut *tx)
        .await?;
        let merged: std::collections::HashSet<(String, String)> = merged
            .iter()
            .map(|r| Ok((r.try_get("symbol")?, r.try_get("resolution")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let fresh: Vec<serde_json::Value> = runs
            .into_iter()
            .filter(|r| {
                let key = (
                    r["s"].as_str().unwrap_or_default().to_string(),
                    r["r"].as_str().unwrap_or_default().to_string(),
                );
                !merged.contains(&key)
            })
            .collect();
        if !fresh.is_empty() {
            sqlx::query(
                "INSERT INTO progress_runs (symbol, resolution, owner, kind, range_start, range_end,
                    started_at, finished_at, rows_read, candles_written, status, error)
                 SELECT j.value ->> 's', j.value ->> 'r', ?1, j.value ->> 'k', j.value ->> 'b',
                        j.value ->> 'e', j.value ->> 't', ?2, j.value ->> 'n', j.value ->> 'c', 'ok', NULL
                 FROM json_each(?3) AS j",
            )
            .bind(owner)
            .bind(&now)
            .bind(serde_json::Value::Array(fresh).to_string())
            .execute(&mut *tx)
            .await?;
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
        sqlx::query(
            "UPDATE progress SET status = j.value ->> 'st', last_error = NULL, lease_owner = NULL,
                lease_expires_at = NULL, inflight_until = NULL, last_run_finished_at = ?2, updated_at = ?2
             FROM json_each(?3) AS j
             WHERE progress.symbol = j.value ->> 's' AND progress.lease_owner = ?1",
        )
        .bind(owner)
        .bind(to_rfc3339(now))
        .bind(serde_json::Value::Array(items).to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks `symbols` failed with `error`, records a failed run over `range`
    /// for each, and drops their leases (a lease already lost is left alone).
    pub async fn fail_symbols(
        &self,
        owner: &str,
        symbols: &[String],
        range: Range<i64>,
        error: &str,
        started_at: i64,
        now: i64,
    ) -> Result<(), ProgressError> {
        if symbols.is_empty() {
            return Ok(());
        }
        let list = symbols_json(symbols);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO progress_runs (symbol, resolution, owner, kind, range_start, range_end,
                started_at, finished_at, rows_read, candles_written, status, error)
             SELECT p.symbol, '1m', ?1, 'chunk', ?2, ?3, ?4, ?5, 0, 0, 'failed', ?6
             FROM progress AS p
             WHERE p.symbol IN (SELECT value FROM json_each(?7)) AND p.resolution = '1m'
               AND p.lease_owner = ?1",
        )
        .bind(owner)
        .bind(to_rfc3339(range.start))
        .bind(to_rfc3339(range.end))
        .bind(to_rfc3339(started_at))
        .bind(to_rfc3339(now))
        .bind(error)
        .bind(&list)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE progress SET status = 'failed', last_error = ?2, lease_owner = NULL,
                lease_expires_at = NULL, inflight_until = NULL, last_run_finished_at = ?3, updated_at = ?3
             WHERE lease_owner = ?1 AND symbol IN (SELECT value FROM json_each(?4))",
        )
        .bind(owner)
        .bind(error)
        .bind(to_rfc3339(now))
        .bind(&list)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Pending late ranges of the listed symbols (any resolution's rows count
    /// for the whole symbol): per symbol, the newest row id and the ranges.
    pub async fn dirty_of(
        &self,
        symbols: &[String],
    ) -> Result<HashMap<String, (i64, Vec<Range<i64>>)>, ProgressError> {
        let rows = sqlx::query(
            "SELECT id, symbol, range_start, range_end FROM dirty_ranges
             WHERE symbol IN (SELECT value FROM json_each(?1)) ORDER BY id",
        )
        .bind(symbols_json(symbols))
        .fetch_all(&self.pool)
        .await?;
        let mut out: HashMap<String, (i64, Vec<Range<i64>>)> = HashMap::new();
        for r in &rows {
            let parse = |col: &str| -> Result<i64, ProgressError> {
                let s: String = r.try_get(col)?;
                from_rfc3339(&s).map_err(ProgressError::Invalid)
            };
            let entry = out.entry(r.try_get("symbol")?).or_default();
            entry.0 = entry.0.max(r.try_get("id")?);
            entry.1.push(parse("range_start")?..parse("range_end")?);
        }
        Ok(out)
    }

    /// Removes `symbol`'s late ranges up to row `max_id` (rows added meanwhile stay).
    pub async fn clear_dirty_of(&self, symbol: &str, max_id: i64) -> Result<(), ProgressError> {
        sqlx::query("DELETE FROM dirty_ranges WHERE symbol = ?1 AND id <= ?2")
            .bind(symbol)
            .bind(max_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

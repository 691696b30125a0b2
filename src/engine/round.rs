//! Rounds and leases: which symbols a round takes and how far, claiming
//! them, running a claimed batch while its leases are renewed, and recording
//! how it ended.

use super::*;

impl<W: Warehouse> Engine<W> {
    /// Sorts the selected symbols into live and lagging work for one round,
    /// from one read of the progress table, one of the late ranges and, for
    /// symbols never processed and not in `known` (first trades just found
    /// by [`Engine::pending_span`]), one query for their first trade.
    pub(super) async fn plan_round(
        &self,
        symbols: &[String],
        failed: &HashSet<String>,
        may_look_back: bool,
        known: HashMap<String, i64>,
    ) -> Result<RoundPlan, EngineError> {
        let horizon = self.horizon();
        let states = self.store.symbol_states(&self.owner).await?;
        let mut dirty = self.store.dirty_of(symbols).await?;
        let look_back = may_look_back && self.lookback_due();
        let live_span = self.settings.live_span_secs as i64 * NANOS_PER_SEC;
        let mut plan = RoundPlan::default();
        let mut unstarted: Vec<String> = Vec::new();
        let mut starts: Vec<(String, Watermarks, Option<i64>)> = Vec::new();
        for symbol in symbols {
            if failed.contains(symbol) {
                continue;
            }
            let Some(state) = states.get(symbol) else {
                continue;
            };
            if state.leased_by.is_some() {
                plan.leased += 1;
                continue;
            }
            if let Some((failures, at)) = state.failing
                && plan::retry_at(failures, at) > self.clock.now()
            {
                continue;
            }
            match plan::resume_at(&state.watermarks) {
                Some(from) => starts.push((symbol.clone(), state.watermarks, Some(from))),
                None => {
                    unstarted.push(symbol.clone());
                    starts.push((symbol.clone(), state.watermarks, None));
                }
            }
        }
        // A symbol never processed starts at midnight before its first trade.
        unstarted.retain(|s| !known.contains_key(s));
        let mut first = self.warehouse.first_trades(&unstarted, 0).await?;
        first.extend(known);
        for (symbol, watermarks, from) in starts {
            let Some(from) =
                from.or_else(|| first.get(&symbol).map(|t| floor_to(*t, NANOS_PER_DAY)))
            else {
                continue;
            };
            let end = plan::step_end(from, horizon, self.chunk_len()).max(from);
            let symbol_dirty = dirty.remove(&symbol);
            let live = horizon - from <= live_span;
            if end == from && symbol_dirty.is_none() && !(look_back && live) {
                continue;
            }
            let work = Work {
                symbol,
                watermarks,
                from,
                end,
                dirty: symbol_dirty,
            };
            if live {
                plan.live.push(work);
            } else {
                plan.lagging.push(work);
            }
        }
        Ok(plan)
    }

    /// Moves every lagging symbol by one chunk: symbols that share a chunk are
    /// counted with one query and packed into batches of about
    /// `engine.batch_rows` trades; symbols without trades in their chunk jump
    /// to their next trade without reading anything.
    pub(super) async fn lagging_round(
        &self,
        lagging: Vec<Work>,
        report: &mut TickReport,
        failed: &mut HashSet<String>,
    ) -> Result<(), EngineError> {
        let mut by_chunk: BTreeMap<i64, Vec<Work>> = BTreeMap::new();
        for w in lagging {
            by_chunk.entry(w.end).or_default().push(w);
        }
        let mut batches: Vec<(Vec<Work>, u64)> = Vec::new();
        for (end, works) in by_chunk {
            let start = works.iter().map(|w| w.from).min().unwrap_or(end);
            // InfluxDB 1.x decodes every price to count it (30–50 % of a
            // read), so only symbols without an estimate are counted.
            let mut counts: HashMap<String, u64> = HashMap::new();
            let mut unknown: Vec<String> = Vec::new();
            {
                let estimates = self.estimates.lock().expect("not poisoned");
                for w in &works {
                    match estimates.get(&w.symbol) {
                        Some(n) => {
                            counts.insert(w.symbol.clone(), *n);
                        }
                        None => unknown.push(w.symbol.clone()),
                    }
                }
            }
            let uncounted: HashSet<&String> = unknown.iter().collect();
            let counted = if unknown.is_empty() {
                HashMap::new()
            } else {
                self.warehouse.count_trades(&unknown, start..end).await?
            };
            let (empty, busy): (Vec<Work>, Vec<Work>) = works.into_iter().partition(|w| {
                w.dirty.is_none()
                    && uncounted.contains(&w.symbol)
                    && !counted.contains_key(&w.symbol)
                    && w.from == floor_to(w.from, NANOS_PER_DAY)
            });
            counts.extend(counted);
            self.jump(empty, end, report).await?;
            let sized: Vec<(Work, u64)> = busy
                .into_iter()
                .map(|w| {
                    let n = counts.get(&w.symbol).copied().unwrap_or(0);
                    (w, n)
                })
                .collect();
            batches.extend(plan::pack_batches(
                sized,
                self.settings.batch_rows,
                self.settings.batch_symbols,
            ));
        }
        // InfluxDB's serialization of raw rows is the bottleneck and runs one
        // core per query: while fewer batches than reads are in flight, a
        // batch reads several of its parts at once.
        let in_flight = self.settings.concurrency.min(batches.len()).max(1);
        let parts = (self.settings.read_parallelism / in_flight).max(1);
        let outcomes: Vec<(TickReport, HashSet<String>)> = futures_util::stream::iter(batches)
            .map(|(batch, rows)| async move {
                let mut r = TickReport::default();
                let mut f = HashSet::new();
                self.run_batch(batch, parts, rows, false, &mut r, &mut f)
                    .await;
                (r, f)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        for (r, f) in outcomes {
            report.chunks += r.chunks;
            report.rows_read += r.rows_read;
            report.candles_written += r.candles_written;
            report.symbols_leased += r.symbols_leased;
            report.failures.extend(r.failures);
            failed.extend(f);
        }
        Ok(())
    }

    /// Symbols with no trade in their chunk, starting at midnight: their
    /// watermarks move to the midnight before their next trade (or the
    /// horizon) at once. Every window in between is empty, and every
    /// resolution divides a day, so nothing is left open behind them.
    pub(super) async fn jump(
        &self,
        works: Vec<Work>,
        chunk_end: i64,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        if works.is_empty() {
            return Ok(());
        }
        let symbols: Vec<String> = works.iter().map(|w| w.symbol.clone()).collect();
        let next = self.warehouse.first_trades(&symbols, chunk_end).await?;
        let horizon = self.horizon();
        let now = self.clock.now();
        let claimed: HashSet<String> = self
            .store
            .claim_planned(&planned(&works), &self.owner, now, self.lease)
            .await?
            .into_iter()
            .collect();
        report.symbols_leased += (symbols.len() - claimed.len()) as u64;
        let mut steps = Vec::new();
        let mut statuses = Vec::new();
        for w in works.into_iter().filter(|w| claimed.contains(&w.symbol)) {
            let to = match next.get(&w.symbol) {
                Some(t) => floor_to(*t, NANOS_PER_DAY).min(horizon),
                None => horizon,
            }
            .max(w.end);
            statuses.push((w.symbol.clone(), status_at(to, horizon)));
            steps.push(StepCommit {
                symbol: w.symbol,
                kind: "chunk",
                range: w.from..to,
                watermarks: Some(plan::advanced(&w.watermarks, to)),
                rows_read: 0,
                skipped: 0,
                candles: [0; 6],
                started_at: now,
            });
        }
        self.store
            .commit_steps(&self.owner, &steps, self.clock.now())
            .await?;
        self.store
            .release_symbols(&self.owner, &statuses, self.clock.now())
            .await?;
        report.chunks += steps.len() as u64;
        for s in &steps {
            self.notify(&s.symbol, s.range.clone(), 0, 0);
        }
        Ok(())
    }

    /// Claims a batch (`rows`: the trades expected in it), runs it while
    /// renewing its leases, and records the outcome: released as
    /// completed/idle, or failed with the error (the watermarks stay at the
    /// last commit).
    pub(super) async fn run_batch(
        &self,
        mut works: Vec<Work>,
        parts: usize,
        rows: u64,
        lookback: bool,
        report: &mut TickReport,
        failed: &mut HashSet<String>,
    ) {
        let symbols: Vec<String> = works.iter().map(|w| w.symbol.clone()).collect();
        let now = self.clock.now();
        let claimed = match self
            .store
            .claim_planned(&planned(&works), &self.owner, now, self.lease)
            .await
        {
            Ok(c) => c.into_iter().collect::<HashSet<String>>(),
            Err(e) => {
                for s in symbols {
                    report.failures.push((s.clone(), e.to_string()));
                    failed.insert(s);
                }
                return;
            }
        };
        report.symbols_leased += (works.len() - claimed.len()) as u64;
        works.retain(|w| claimed.contains(&w.symbol));
        if works.is_empty() {
            return;
        }
        let held: Vec<String> = works.iter().map(|w| w.symbol.clone()).collect();
        let started_at = self.clock.now();
        let poisoned = Poisoned::default();
        let result = tokio::select! {
            r = self.process_batch(&mut works, parts, rows, lookback, report, &poisoned) => r,
            e = self.keep_leases(&held) => Err(e),
        };
        let horizon = self.horizon();
        match result {
            Ok(()) => {
                let poisoned = poisoned.take();
                for (symbol, msg) in &poisoned {
                    let Some(w) = works.iter().find(|w| &w.symbol == symbol) else {
                        continue;
                    };
                    let run = FailedRun {
                        range: w.from..w.end,
                        error: msg,
                        failure: Failure::OfTheSymbol,
                        started_at,
                    };
                    self.fail(std::slice::from_ref(symbol), &run, report, failed)
                        .await;
                }
                let statuses: Vec<(String, TaskStatus)> = works
                    .iter()
                    .filter(|w| !poisoned.contains_key(&w.symbol))
                    .map(|w| (w.symbol.clone(), status_at(w.end, horizon)))
                    .collect();
                self.release(&statuses).await;
                // Test point: a batch done and released, the next not claimed.
                crate::failpoint::hit("after_release").await;
            }
            Err(EngineError::Progress(e @ ProgressError::LeaseLost { .. })) => {
                // Our lease ran out before a renewal got through, and another
                // process took the symbol over: its work, not a failure. The
                // rest of the batch goes back as far as it was committed.
                tracing::warn!(error = %e, "a lease was lost; giving the batch back");
                let statuses: Vec<(String, TaskStatus)> = works
                    .iter()
                    .map(|w| (w.symbol.clone(), status_at(w.from, horizon)))
                    .collect();
                self.release(&statuses).await;
                report.symbols_leased += held.len() as u64;
            }
            Err(e) => {
                let from = works.iter().map(|w| w.from).min().unwrap_or(0);
                let end = works.iter().map(|w| w.end).max().unwrap_or(from);
                let msg = e.to_string();
                let run = FailedRun {
                    range: from..end,
                    error: &msg,
                    failure: e.failure(),
                    started_at,
                };
                self.fail(&held, &run, report, failed).await;
            }
        }
    }

    /// Gives the leases of a batch back with each symbol's status; one that
    /// cannot be given back expires on its own.
    pub(super) async fn release(&self, statuses: &[(String, TaskStatus)]) {
        if let Err(e) = self
            .store
            .release_symbols(&self.owner, statuses, self.clock.now())
            .await
        {
            tracing::warn!(error = %e, "could not release leases; they expire on their own");
        }
    }

    /// Records that `symbols` failed `run`: in the log, the metrics, the
    /// progress table (their watermarks stay at the last commit) and the
    /// tick's report.
    pub(super) async fn fail(
        &self,
        symbols: &[String],
        run: &FailedRun<'_>,
        report: &mut TickReport,
        failed: &mut HashSet<String>,
    ) {
        tracing::error!(
            symbols = symbols.len(),
            first = %symbols[0],
            from = %to_rfc3339(run.range.start),
            error = %run.error,
            "batch failed"
        );
        ::metrics::counter!("ohlcd_task_failures_total").increment(symbols.len() as u64);
        if let Err(record_err) = self
            .store
            .fail_symbols(&self.owner, symbols, run, self.clock.now())
            .await
        {
            tracing::warn!(error = %record_err, "could not record the failure");
        }
        for s in symbols {
            report.failures.push((s.clone(), run.error.to_string()));
            failed.insert(s.clone());
        }
    }

    /// Renews the leases of `symbols` every third of their length; returns
    /// only when one is lost.
    pub(super) async fn keep_leases(&self, symbols: &[String]) -> EngineError {
        loop {
            tokio::time::sleep(self.lease / 3).await;
            if let Err(e) = self
                .store
                .renew_symbols(symbols, &self.owner, self.clock.now(), self.lease)
                .await
            {
                return e.into();
            }
        }
    }
}

/// What one round has to do.
#[derive(Debug, Default)]
pub(super) struct RoundPlan {
    pub(super) live: Vec<Work>,
    pub(super) lagging: Vec<Work>,
    pub(super) leased: u64,
}

pub(super) fn planned(works: &[Work]) -> Vec<(String, Option<i64>)> {
    works
        .iter()
        .map(|w| (w.symbol.clone(), w.watermarks[0]))
        .collect()
}

/// `completed` once a symbol reached the horizon, `idle` while it has more to do.
pub(super) fn status_at(end: i64, horizon: i64) -> TaskStatus {
    if end >= horizon {
        TaskStatus::Completed
    } else {
        TaskStatus::Idle
    }
}

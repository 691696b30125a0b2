//! Behind the watermarks: the lookback that catches trades written behind
//! ohlcd's back, the repair of late ranges, and `rebuild`.

use super::*;

impl<W: Warehouse> Engine<W> {
    /// Looks `engine.lookback_secs` behind each symbol's 1m watermark for
    /// trades written straight into InfluxDB after their minute was
    /// materialized (trades ingested through the API are caught by the dirty
    /// ranges): InfluxDB counts the trades of every minute there, and a minute
    /// whose count differs from its stored 1m candle's is repaired at every
    /// resolution. Counting instead of re-reading every row costs InfluxDB a
    /// fraction of a read; a trade overwritten in place (same time, symbol,
    /// side, new values) keeps the count and is left to `ohlcd rebuild`.
    /// Two queries per batch.
    pub(super) async fn look_back(
        &self,
        works: &[Work],
        report: &mut TickReport,
        poisoned: &Poisoned,
    ) -> Result<(), EngineError> {
        let lookback = self.settings.lookback_secs as i64 * NANOS_PER_SEC;
        let bounds: HashMap<&str, Range<i64>> = works
            .iter()
            .filter_map(|w| {
                let w1 = w.watermarks[0]?;
                Some((
                    w.symbol.as_str(),
                    Resolution::M1.window_start(w1 - lookback)..w1,
                ))
            })
            .filter(|(_, r)| r.start < r.end)
            .collect();
        if bounds.is_empty() {
            return Ok(());
        }
        let symbols: Vec<String> = bounds.keys().map(|s| s.to_string()).collect();
        let span = bounds.values().map(|r| r.start).min().expect("non-empty")
            ..bounds.values().map(|r| r.end).max().expect("non-empty");
        let mut counted = self.warehouse.count_minutes(&symbols, span.clone()).await?;
        let mut stored: HashMap<String, BTreeMap<i64, u64>> = HashMap::new();
        self.warehouse
            .read_candles(Resolution::M1, &symbols, span, |symbol, c| {
                if bounds.get(symbol).is_some_and(|r| r.contains(&c.start)) {
                    stored
                        .entry(symbol.to_string())
                        .or_default()
                        .insert(c.start, u64::try_from(c.trades).unwrap_or(0));
                }
            })
            .await?;
        for w in works {
            let Some(stored_minutes) = bounds.get(w.symbol.as_str()) else {
                continue;
            };
            let now = counted.remove(&w.symbol).unwrap_or_default();
            let before = stored.remove(&w.symbol).unwrap_or_default();
            let minute = Resolution::M1.nanos();
            let changed: Vec<Range<i64>> = now
                .iter()
                .filter(|(t, n)| stored_minutes.contains(t) && before.get(t) != Some(n))
                .map(|(t, _)| *t..*t + minute)
                .collect();
            if changed.is_empty() {
                continue;
            }
            tracing::info!(
                symbol = %w.symbol,
                minutes = changed.len(),
                from = %to_rfc3339(stored_minutes.start),
                "lookback found trades behind the watermark"
            );
            let repaired = self
                .repair(&w.symbol, &w.watermarks, &changed, "late", None)
                .await;
            let Some((r, candles)) = poisoned.unless_own(&w.symbol, repaired)? else {
                continue;
            };
            report.chunks += 1;
            report.rows_read += r;
            report.candles_written += candles;
        }
        Ok(())
    }

    /// Recomputes the windows of every resolution that touch `ranges` (below
    /// their watermarks) of one symbol, day by day: the ranges are read raw,
    /// the rest of the day comes from the stored 1m candles. For a `rebuild`,
    /// candles of windows that no longer have any trade are deleted (trades
    /// were removed), and only windows whose raw trades are all still stored
    /// are touched (see [`plan::rebuild_floors`]). The caller holds the
    /// lease. Returns (trades read, candles written).
    pub(super) async fn repair(
        &self,
        symbol: &str,
        watermarks: &Watermarks,
        ranges: &[Range<i64>],
        kind: &'static str,
        rebuild: Option<&plan::RebuildLimit>,
    ) -> Result<(u64, u64), EngineError> {
        let Some(w1) = watermarks[0] else {
            return Ok((0, 0));
        };
        let one = [symbol.to_string()];
        let (mut rows_total, mut candles_total) = (0, 0);
        for rep in plan::day_repairs(ranges, w1) {
            let started_at = self.clock.now();
            let mut agg = Aggregator::new(Resolution::M1);
            let mut rows = 0;
            for r in &rep.ranges {
                self.warehouse
                    .read_trades(&one, r.clone(), |_, row| {
                        // Skips are counted when first read forward; a
                        // repair only rereads.
                        if let Ok(t) = row {
                            rows += 1;
                            agg.add_trade(&t);
                        }
                    })
                    .await?;
            }
            let fresh = agg.finish();
            let mut stored = Vec::new();
            let parts = rep.stored_parts();
            if !parts.is_empty() {
                self.warehouse
                    .read_candles(Resolution::M1, &one, rep.day.clone(), |_, c| {
                        if parts.iter().any(|p| p.contains(&c.start)) {
                            stored.push(c);
                        }
                    })
                    .await?;
            }
            let (mut write, mut empty) = plan::repair_candles(&rep, watermarks, &fresh, &stored);
            if let Some(limit) = rebuild {
                // The floors as of now, after the read: whatever the retention
                // service dropped meanwhile lies before them.
                plan::clip_to_floors(&mut write, &mut empty, &limit.floors(self.clock.now()));
                self.delete_stale(symbol, &rep.day, &empty).await?;
            }
            if let Some(e) = not_finite(symbol, &write) {
                return Err(e);
            }
            let sets: Vec<CandleSet<'_>> = candle_sets(symbol, &write).collect();
            // Repairs replace stored candles: checked where overwrites may lose.
            if !sets.is_empty() {
                self.warehouse.overwrite_candles(&sets).await?;
            }
            let candles: [u64; 6] = std::array::from_fn(|i| write[i].len() as u64);
            let span = rep.ranges.first().map_or(rep.day.start, |r| r.start)
                ..rep.ranges.last().map_or(rep.day.end, |r| r.end);
            self.store
                .commit_steps(
                    &self.owner,
                    &[StepCommit {
                        symbol: symbol.to_string(),
                        kind,
                        range: span.clone(),
                        watermarks: None,
                        rows_read: rows,
                        skipped: 0,
                        candles,
                        started_at,
                    }],
                    self.clock.now(),
                )
                .await?;
            let n: u64 = candles.iter().sum();
            self.notify(symbol, span, rows, n);
            rows_total += rows;
            candles_total += n;
        }
        Ok((rows_total, candles_total))
    }

    /// Deletes the stored candles of windows that `repair_candles` found empty.
    pub(super) async fn delete_stale(
        &self,
        symbol: &str,
        day: &Range<i64>,
        empty: &[Vec<i64>; 6],
    ) -> Result<(), EngineError> {
        let one = [symbol.to_string()];
        for (i, res) in Resolution::ALL.iter().enumerate() {
            if empty[i].is_empty() {
                continue;
            }
            let empty: HashSet<i64> = empty[i].iter().copied().collect();
            let mut stale = Vec::new();
            self.warehouse
                .read_candles(*res, &one, day.clone(), |_, c| {
                    if empty.contains(&c.start) {
                        stale.push(c.start);
                    }
                })
                .await?;
            for start in stale {
                self.warehouse
                    .delete_candles(*res, symbol, start..start + res.nanos())
                    .await?;
            }
        }
        Ok(())
    }

    /// Claims one symbol for a rebuild, waiting up to two lease lengths for a
    /// running tick elsewhere to release it.
    pub(super) async fn claim_waiting(&self, symbol: &str) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + self.lease * 2;
        let one = [symbol.to_string()];
        loop {
            let claimed = self
                .store
                .claim_symbols(&one, &self.owner, self.clock.now(), self.lease)
                .await?;
            if !claimed.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let owner = self
                    .store
                    .symbol_states(&self.owner)
                    .await?
                    .remove(symbol)
                    .and_then(|s| s.leased_by)
                    .unwrap_or_default();
                return Err(EngineError::Busy {
                    symbol: symbol.to_string(),
                    owner,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Recomputes `[from, to)` (widened to whole UTC days, clipped to what is
    /// materialized) for every resolution from the raw trades; candles of
    /// windows without trades any more are deleted. Only windows whose raw
    /// trades are all still stored are touched (not expired under the raw
    /// trades' retention policy, not before the symbol's earliest stored
    /// trade: [`plan::rebuild_floors`]); the report says what was kept. Later
    /// windows are left to the normal schedule.
    pub async fn rebuild(
        &self,
        symbol: &str,
        from: i64,
        to: i64,
    ) -> Result<RebuildReport, EngineError> {
        self.warehouse.check().await?;
        let one = [symbol.to_string()];
        self.store.ensure_symbols(&one, self.clock.now()).await?;
        let before = self.store.task(symbol, Resolution::M1).await?;
        self.claim_waiting(symbol).await?;
        let watermarks = self
            .store
            .symbol_states(&self.owner)
            .await?
            .remove(symbol)
            .map(|s| s.watermarks)
            .unwrap_or([None; 6]);
        let range = floor_to(from, NANOS_PER_DAY)..crate::candle::ceil_to(to, NANOS_PER_DAY);
        let work = async {
            let limit = plan::RebuildLimit {
                raw_retention: self.warehouse.raw_retention(),
                first_trade: self.warehouse.first_trades(&one, 0).await?.remove(symbol),
            };
            let mut written = 0;
            let mut day = range.start;
            while day < range.end {
                // A day wholly before the 1m floor has nothing to rebuild.
                if day + NANOS_PER_DAY > limit.floors(self.clock.now())[0] {
                    let (_, n) = self
                        .repair(
                            symbol,
                            &watermarks,
                            std::slice::from_ref(&(day..day + NANOS_PER_DAY)),
                            "rebuild",
                            Some(&limit),
                        )
                        .await?;
                    written += n;
                }
                day += NANOS_PER_DAY;
            }
            let now = self.clock.now();
            let mut report = RebuildReport {
                written,
                range: range.clone(),
                floors: limit.floors(now),
                kept: 0,
                expired: limit.expired_at(now),
                raw_kept_since: limit
                    .raw_retention
                    .map(|d| now - d + crate::retention::RETENTION_MARGIN),
            };
            for (i, res) in Resolution::ALL.iter().enumerate() {
                let kept = range.start..report.floors[i].min(range.end);
                if kept.start < kept.end {
                    report.kept += self
                        .warehouse
                        .read_candles(*res, &one, kept, |_, _| {})
                        .await?;
                }
            }
            Ok::<RebuildReport, EngineError>(report)
        };
        let result = tokio::select! {
            r = work => r,
            e = self.keep_leases(&one) => Err(e),
        };
        let now = self.clock.now();
        match result {
            Ok(report) => {
                // A rebuild does not change how far the symbol got: keep its status.
                let status = match before.map(|t| t.status) {
                    Some(TaskStatus::Running) | Some(TaskStatus::Failed) | None => TaskStatus::Idle,
                    Some(s) => s,
                };
                self.store
                    .release_symbols(&self.owner, &[(symbol.to_string(), status)], now)
                    .await?;
                if report.is_limited() {
                    tracing::info!(symbol, kept = report.kept, "{}", report.limit_line(symbol));
                }
                Ok(report)
            }
            Err(e) => {
                let msg = e.to_string();
                let run = FailedRun {
                    range,
                    error: &msg,
                    failure: e.failure(),
                    started_at: now,
                };
                self.store
                    .fail_symbols(&self.owner, &one, &run, now)
                    .await?;
                Err(e)
            }
        }
    }
}

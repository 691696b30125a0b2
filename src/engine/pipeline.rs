//! The pipelined steps of a claimed batch: raw trades read, candles
//! computed and handed to a writer over a bounded channel, written, and each
//! step committed once InfluxDB acknowledged it.

use super::*;

impl<W: Warehouse> Engine<W> {
    /// Repairs, lookback, then the forward steps of a claimed batch
    /// ([`Engine::advance`]). Each work is left at `from`: its last committed
    /// end, `end`: the end of its last step begun (the two are equal unless a
    /// step failed).
    pub(super) async fn process_batch(
        &self,
        works: &mut [Work],
        parts: usize,
        rows: u64,
        lookback: bool,
        report: &mut TickReport,
        poisoned: &Poisoned,
    ) -> Result<(), EngineError> {
        for w in works.iter() {
            if let Some(dirty) = &w.dirty {
                let repaired = self
                    .repair(&w.symbol, &w.watermarks, &dirty.ranges, "late", None)
                    .await;
                let Some((rows, candles)) = poisoned.unless_own(&w.symbol, repaired)? else {
                    continue;
                };
                self.store.clear_dirty_of(&w.symbol, &dirty.ids).await?;
                report.chunks += 1;
                report.rows_read += rows;
                report.candles_written += candles;
            }
        }
        if lookback {
            self.look_back(works, report, poisoned).await?;
        }
        self.advance(works, parts, rows, report, poisoned).await
    }

    /// The forward steps of a claimed batch, pipelined. A reader reads and
    /// computes one step after the other ([`Engine::read_step`]) and hands
    /// the candles to a writer ([`Engine::write_steps`]), which keeps several
    /// writes in flight and commits each step's watermarks, in order, once
    /// InfluxDB acknowledged every candle of it. So InfluxDB reads the next
    /// chunk while it stores the last one, and a server that acknowledges a
    /// write only after its WAL flush (InfluxDB 3, ~1 s) acknowledges several
    /// steps in one flush. After its first step a batch goes on, chunk after
    /// chunk, for up to `engine.batch_run_ms` ([`Engine::next_step`]); then
    /// the round moves on, so live symbols wait at most about that long.
    pub(super) async fn advance(
        &self,
        works: &mut [Work],
        parts: usize,
        rows: u64,
        report: &mut TickReport,
        poisoned: &Poisoned,
    ) -> Result<(), EngineError> {
        let first: Vec<Work> = works
            .iter()
            .filter(|w| w.from < w.end && !poisoned.has(&w.symbol))
            .cloned()
            .collect();
        if first.is_empty() {
            return Ok(());
        }
        let names: HashSet<&str> = first.iter().map(|w| w.symbol.as_str()).collect();
        let mut begun: HashMap<String, i64> = HashMap::new();
        let mut committed: HashMap<String, i64> = HashMap::new();
        // One step's candles wait while earlier ones are written: memory stays
        // at CANDLES_IN_FLIGHT and the step being read, however long the run.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let result = tokio::try_join!(
            self.read_steps(first.clone(), &names, parts, rows, tx, &mut begun, poisoned),
            self.write_steps(rx, report, &mut committed, poisoned),
        );
        for w in works.iter_mut() {
            if let Some(&end) = committed.get(&w.symbol) {
                w.from = end;
            }
            if let Some(&end) = begun.get(&w.symbol) {
                w.end = end;
            }
        }
        result.map(|_| ())
    }

    /// The reader of [`Engine::advance`]: steps `works` forward while
    /// [`Engine::next_step`] allows, recording in `begun` where each symbol's
    /// last step begun ends.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn read_steps<'a>(
        &self,
        mut works: Vec<Work>,
        names: &HashSet<&'a str>,
        parts: usize,
        mut rows: u64,
        tx: Sender<Sent<'a>>,
        begun: &mut HashMap<String, i64>,
        poisoned: &Poisoned,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        loop {
            works.retain(|w| !poisoned.has(&w.symbol));
            if works.is_empty() {
                return Ok(());
            }
            for w in &works {
                begun.insert(w.symbol.clone(), w.end);
            }
            let Some(read) = self.read_step(&works, names, parts, rows, &tx).await? else {
                return Ok(()); // the writer failed; its error is the run's
            };
            match self.next_step(works, &read, started) {
                Some((next, expected)) => (works, rows) = (next, expected),
                None => return Ok(()),
            }
        }
    }

    /// Reads one step of `works` (`rows` trades expected) and sends its
    /// candles, then its commit, to the writer; returns the trades read per
    /// symbol, or `None` when the writer is gone. A step that starts at
    /// midnight and is expected to hold more than `engine.batch_rows` trades
    /// (a dense symbol's day) is read in 4h parts ([`plan::parts`]), up to
    /// `parts` at once, and each part's 1m…4h candles go out while the next
    /// are read; its days, built from the parts' 4h candles, go out last.
    /// Any other step is one read, split into `parts` concurrent sub-ranges;
    /// one that starts inside a day (the live edge) completes the coarser
    /// windows open at its start from the few finer candles stored for them
    /// ([`plan::pieces`]).
    pub(super) async fn read_step<'a>(
        &self,
        works: &[Work],
        names: &HashSet<&'a str>,
        parts: usize,
        rows: u64,
        tx: &Sender<Sent<'a>>,
    ) -> Result<Option<HashMap<&'a str, u64>>, EngineError> {
        let started_at = self.clock.now();
        let name = |w: &Work| -> &'a str { names.get(w.symbol.as_str()).expect("a batch symbol") };
        let symbols: Vec<String> = works.iter().map(|w| w.symbol.clone()).collect();
        let bounds: HashMap<&'a str, Range<i64>> =
            works.iter().map(|w| (name(w), w.from..w.end)).collect();
        // Announce the ranges before reading them, so a trade ingested
        // meanwhile is treated as late (and repaired), never silently missed.
        let inflight: Vec<(String, i64)> =
            works.iter().map(|w| (w.symbol.clone(), w.end)).collect();
        self.store.set_inflight_many(&self.owner, &inflight).await?;

        let span = works.iter().map(|w| w.from).min().expect("non-empty")
            ..works.iter().map(|w| w.end).max().expect("non-empty");
        let mut read: HashMap<&'a str, u64> = HashMap::new();
        let mut skipped: HashMap<&'a str, u64> = HashMap::new();
        let mut counts: HashMap<&'a str, [u64; 6]> = HashMap::new();
        let mut send = async |candles: Vec<(&'a str, [Vec<Candle>; 6])>| {
            for (symbol, by_res) in &candles {
                let n = counts.entry(symbol).or_default();
                for (i, c) in by_res.iter().enumerate() {
                    n[i] += c.len() as u64;
                }
            }
            tx.send(Sent::Candles(candles)).await.is_ok()
        };
        let from_midnight = works
            .iter()
            .all(|w| w.from % NANOS_PER_DAY == 0 && w.end - w.from > Resolution::H4.nanos());
        // Parts bound a dense day's memory to 4 hours and let InfluxDB store
        // one part while it reads the next; on a batch of ordinary size their
        // extra queries cost more than that gains (an A/B measurement: docs/benchmarks.md).
        if from_midnight && rows > self.settings.batch_rows {
            let mut days: HashMap<&'a str, Aggregator> = HashMap::new();
            let mut reads = futures_util::stream::iter(plan::parts(span.start, span.end))
                .map(|part| async {
                    let read = self.read_minutes(&symbols, part.clone(), 1, &bounds).await;
                    read.map(|r| (part, r))
                })
                .buffered(parts.max(1));
            while let Some(next) = reads.next().await {
                let (part, minutes) = next?;
                for (symbol, n) in minutes.rows {
                    *read.entry(symbol).or_default() += n;
                }
                for (symbol, n) in minutes.skipped {
                    *skipped.entry(symbol).or_default() += n;
                }
                let candles = minutes
                    .minutes
                    .into_iter()
                    .map(|(symbol, agg)| {
                        let day = days
                            .entry(symbol)
                            .or_insert_with(|| Aggregator::new(Resolution::D1));
                        (symbol, plan::part_candles(&part, agg.finish(), day))
                    })
                    .collect();
                if !send(candles).await {
                    return Ok(None);
                }
            }
            let closed = works
                .iter()
                .filter_map(|w| {
                    let day = days.remove(name(w))?;
                    let mut by_res: [Vec<Candle>; 6] = Default::default();
                    by_res[Resolution::D1.index()] = plan::closed_days(day, w.end);
                    Some((name(w), by_res))
                })
                .collect();
            if !send(closed).await {
                return Ok(None);
            }
        } else {
            let minutes = self.read_minutes(&symbols, span, parts, &bounds).await?;
            read = minutes.rows;
            skipped = minutes.skipped;
            let mut fresh = minutes.minutes;
            let pieces = self.read_pieces(works).await?;
            let candles = works
                .iter()
                .map(|w| {
                    let minutes = fresh
                        .remove(name(w))
                        .map(Aggregator::finish)
                        .unwrap_or_default();
                    let symbol_pieces = pieces
                        .get(w.symbol.as_str())
                        .map(Vec::as_slice)
                        .unwrap_or(&[]);
                    let by_res = plan::step_candles(w.from, w.end, symbol_pieces, minutes);
                    (name(w), by_res)
                })
                .collect();
            if !send(candles).await {
                return Ok(None);
            }
        }
        let steps = works
            .iter()
            .map(|w| StepCommit {
                symbol: w.symbol.clone(),
                kind: "chunk",
                range: w.from..w.end,
                watermarks: Some(plan::advanced(&w.watermarks, w.end)),
                rows_read: read.get(name(w)).copied().unwrap_or(0),
                skipped: skipped.get(name(w)).copied().unwrap_or(0),
                candles: counts.get(name(w)).copied().unwrap_or([0; 6]),
                started_at,
            })
            .collect();
        if tx
            .send(Sent::Done(StepRead { steps, started_at }))
            .await
            .is_err()
        {
            return Ok(None);
        }
        Ok(Some(read))
    }

    /// The step after `works`' (just read, `read` trades each), for the
    /// symbols that may go on in this run, with their expected trades: the
    /// run is younger than `engine.batch_run_ms`, no stop was requested, and
    /// the symbol's step held trades and ended on a chunk boundary before the
    /// horizon. The next step then starts at midnight and needs no stored
    /// pieces (which InfluxDB may not have acknowledged yet); a symbol without
    /// trades jumps ahead in the next round instead of stepping day by day.
    pub(super) fn next_step(
        &self,
        works: Vec<Work>,
        read: &HashMap<&str, u64>,
        started: Instant,
    ) -> Option<(Vec<Work>, u64)> {
        let budget = Duration::from_millis(self.settings.batch_run_ms);
        if self.stop_requested() || started.elapsed() >= budget {
            return None;
        }
        let horizon = self.horizon();
        let mut rows = 0;
        let next: Vec<Work> = works
            .into_iter()
            .filter_map(|w| {
                let n = read.get(w.symbol.as_str()).copied().unwrap_or(0);
                let end = plan::step_end(w.end, horizon, self.chunk_len());
                if n == 0 || w.end % NANOS_PER_DAY != 0 || end <= w.end {
                    return None;
                }
                rows += n;
                Some(Work {
                    watermarks: plan::advanced(&w.watermarks, w.end),
                    from: w.end,
                    end,
                    dirty: None,
                    symbol: w.symbol,
                })
            })
            .collect();
        (!next.is_empty()).then_some((next, rows))
    }

    /// The writer of [`Engine::advance`]: writes the candles it receives,
    /// several requests at once while they hold fewer than
    /// [`CANDLES_IN_FLIGHT`] candles (one at a time beyond that), and commits
    /// each step once InfluxDB acknowledged all of its candles and every
    /// earlier step is committed; records in `committed` where each symbol's
    /// last committed step ends. A crash before a commit leaves the
    /// watermarks where they were, and the candles already written are
    /// recomputed with the same values.
    pub(super) async fn write_steps(
        &self,
        mut rx: Receiver<Sent<'_>>,
        report: &mut TickReport,
        committed: &mut HashMap<String, i64>,
        poisoned: &Poisoned,
    ) -> Result<(), EngineError> {
        // Steps not yet committed, oldest first: (writes outstanding, the
        // step's commit once it is read); the back one is being read.
        let mut queue: VecDeque<(usize, Option<StepRead>)> = VecDeque::from([(0, None)]);
        let mut oldest = 0usize; // step number of queue[0]
        let mut pending = futures_util::stream::FuturesUnordered::new();
        let mut in_flight = 0usize;
        let mut open = true;
        while open || !pending.is_empty() {
            let room = pending.is_empty() || in_flight < CANDLES_IN_FLIGHT;
            tokio::select! {
                next = rx.recv(), if open && room => match next {
                    None => open = false,
                    Some(Sent::Candles(candles)) => {
                        let size: usize = candles
                            .iter()
                            .flat_map(|(_, by_res)| by_res.iter().map(Vec::len))
                            .sum();
                        let step = oldest + queue.len() - 1;
                        queue.back_mut().expect("a step is being read").0 += 1;
                        in_flight += size;
                        pending.push(async move {
                            self.write_isolated(&candles).await.map(|p| (step, size, p))
                        });
                    }
                    Some(Sent::Done(read)) => {
                        queue.back_mut().expect("a step is being read").1 = Some(read);
                        queue.push_back((0, None));
                    }
                },
                Some(written) = pending.next(), if !pending.is_empty() => {
                    let (step, size, refused) = written?;
                    for (symbol, e) in refused {
                        poisoned.insert(symbol, &e);
                    }
                    in_flight -= size;
                    queue[step - oldest].0 -= 1;
                    // Crash test point: candles written, their step not committed.
                    crate::failpoint::hit("part_written").await;
                }
            }
            while let Some((0, Some(_))) = queue.front() {
                let (_, read) = queue.pop_front().expect("checked");
                let StepRead {
                    mut steps,
                    started_at,
                } = read.expect("checked");
                // A symbol refused in this step or before it commits nothing more.
                steps.retain(|s| !poisoned.has(&s.symbol));
                oldest += 1;
                // Crash test point: candles written, watermarks not yet committed.
                crate::failpoint::hit("after_write").await;
                let ends: Vec<(String, i64)> = steps
                    .iter()
                    .map(|s| (s.symbol.clone(), s.range.end))
                    .collect();
                self.commit(steps, started_at, report).await?;
                committed.extend(ends);
            }
        }
        Ok(())
    }

    /// Commits the steps of a batch whose candles InfluxDB acknowledged, and
    /// reports them. The rows each symbol's chunk held become the estimate of
    /// its next chunk (see `lagging_round`).
    pub(super) async fn commit(
        &self,
        steps: Vec<StepCommit>,
        started_at: i64,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        self.store
            .commit_steps(&self.owner, &steps, self.clock.now())
            .await?;
        // Crash test point: a batch committed, the next not started.
        crate::failpoint::hit("after_commit").await;
        {
            let mut estimates = self.estimates.lock().expect("not poisoned");
            for s in steps.iter().filter(|s| s.range.start % NANOS_PER_DAY == 0) {
                // A chunk without trades: count the next one, which may jump.
                if s.rows_read == 0 {
                    estimates.remove(&s.symbol);
                } else {
                    estimates.insert(s.symbol.clone(), s.rows_read);
                }
            }
        }
        for s in &steps {
            let candles: u64 = s.candles.iter().sum();
            report.chunks += 1;
            report.rows_read += s.rows_read;
            report.candles_written += candles;
            ::metrics::histogram!("ohlcd_chunk_duration_seconds")
                .record((self.clock.now() - started_at) as f64 / 1e9);
            self.notify(&s.symbol, s.range.clone(), s.rows_read, candles);
        }
        Ok(())
    }

    /// 1m aggregates per symbol of the raw trades in each symbol's bounds,
    /// read as `parts` concurrent sub-ranges of `span` split at minute
    /// boundaries (InfluxDB serializes each query on its own core). Parts
    /// cover disjoint minutes, so their aggregates simply concatenate.
    /// Rows that cannot make a trade are skipped and counted per symbol (the
    /// first few of each read are logged).
    pub(super) async fn read_minutes<'b>(
        &self,
        symbols: &[String],
        span: Range<i64>,
        parts: usize,
        bounds: &HashMap<&'b str, Range<i64>>,
    ) -> Result<MinuteRead<'b>, EngineError> {
        let minute = Resolution::M1.nanos();
        let step = crate::candle::ceil_to(
            ((span.end - span.start) / parts.max(1) as i64).max(1),
            minute,
        );
        let mut ranges = Vec::new();
        let mut start = span.start;
        while start < span.end {
            let end = (start + step).min(span.end);
            ranges.push(start..end);
            start = end;
        }
        // Per symbol, a slot: looked up by name once per run of its rows
        // (a hash per trade was a tenth of a backfill's CPU, perf).
        let keys: Vec<(&'b str, &Range<i64>)> = bounds.iter().map(|(k, b)| (*k, b)).collect();
        let index: HashMap<&str, usize> =
            keys.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect();
        let (keys, index) = (&keys, &index);
        let reads = ranges.into_iter().map(|part| async move {
            let mut slots: Vec<(u64, Option<Aggregator>, u64)> =
                keys.iter().map(|_| (0, None, 0)).collect();
            let mut last = usize::MAX;
            let mut logged = 0;
            self.warehouse
                .read_trades(symbols, part, |symbol, row| {
                    if keys.get(last).is_none_or(|(k, _)| *k != symbol) {
                        match index.get(symbol) {
                            Some(&i) => last = i,
                            None => return,
                        }
                    }
                    let time = match &row {
                        Ok(t) => t.time,
                        Err(skip) => skip.time,
                    };
                    if !keys[last].1.contains(&time) {
                        return;
                    }
                    let (rows, agg, skipped) = &mut slots[last];
                    match row {
                        Ok(trade) => {
                            *rows += 1;
                            agg.get_or_insert_with(|| Aggregator::new(Resolution::M1))
                                .add_trade(&trade);
                        }
                        Err(skip) => {
                            *skipped += 1;
                            note_skip(symbol, &skip, &mut logged);
                        }
                    }
                })
                .await?;
            let mut read = MinuteRead::default();
            for ((key, _), (n, agg, skipped)) in keys.iter().zip(slots) {
                if skipped > 0 {
                    read.skipped.insert(key, skipped);
                }
                if let Some(agg) = agg {
                    read.rows.insert(key, n);
                    read.minutes.insert(key, agg);
                }
            }
            Ok::<_, EngineError>(read)
        });
        let mut out = MinuteRead::default();
        for result in futures_util::future::join_all(reads).await {
            let MinuteRead {
                rows: r,
                skipped,
                minutes: aggs,
            } = result?;
            for (k, n) in r {
                *out.rows.entry(k).or_default() += n;
            }
            for (k, n) in skipped {
                *out.skipped.entry(k).or_default() += n;
            }
            let merged = &mut out.minutes;
            for (k, agg) in aggs {
                match merged.get_mut(k) {
                    // Disjoint minutes: fold the part's candles into the first.
                    Some(first) => {
                        for c in agg.finish() {
                            first.add_candle(&c);
                        }
                    }
                    None => {
                        merged.insert(k, agg);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The stored candles each symbol's step needs to complete the coarser
    /// windows open at its start ([`plan::pieces`]): one query per resolution
    /// for the whole batch.
    pub(super) async fn read_pieces(
        &self,
        works: &[Work],
    ) -> Result<HashMap<String, Vec<(Resolution, Candle)>>, EngineError> {
        let mut wanted: BTreeMap<Resolution, Vec<(&str, Range<i64>)>> = BTreeMap::new();
        for w in works {
            for (res, range) in plan::pieces(w.from, w.end) {
                wanted.entry(res).or_default().push((&w.symbol, range));
            }
        }
        let mut out: HashMap<String, Vec<(Resolution, Candle)>> = HashMap::new();
        for (res, list) in wanted {
            let symbols: Vec<String> = list.iter().map(|(s, _)| s.to_string()).collect();
            let ranges: HashMap<&str, Range<i64>> = list.iter().cloned().collect();
            let span = list.iter().map(|(_, r)| r.start).min().expect("non-empty")
                ..list.iter().map(|(_, r)| r.end).max().expect("non-empty");
            self.warehouse
                .read_candles(res, &symbols, span, |symbol, candle| {
                    if ranges
                        .get(symbol)
                        .is_some_and(|r| r.contains(&candle.start))
                    {
                        out.entry(symbol.to_string())
                            .or_default()
                            .push((res, candle));
                    }
                })
                .await?;
        }
        Ok(out)
    }

    /// Writes candles (nothing to do for none).
    pub(super) async fn write(&self, sets: &[CandleSet<'_>]) -> Result<(), EngineError> {
        if !sets.is_empty() {
            self.warehouse.write_candles(sets).await?;
        }
        Ok(())
    }

    /// Writes the candles of several symbols (in [`Resolution::ALL`] order
    /// each); a symbol whose candles cannot be written is left out and
    /// returned with why, and the others are written as if it were not
    /// there. A candle that is not finite is caught before anything is sent;
    /// a write InfluxDB refuses is split by symbol to find the ones it
    /// refuses. Anything else (InfluxDB unreachable) fails the whole write.
    pub(super) async fn write_isolated(
        &self,
        candles: &[(&str, [Vec<Candle>; 6])],
    ) -> Result<Vec<(String, EngineError)>, EngineError> {
        let mut refused: Vec<(String, EngineError)> = Vec::new();
        let mut fine: Vec<&(&str, [Vec<Candle>; 6])> = Vec::new();
        for entry in candles {
            match not_finite(entry.0, &entry.1) {
                Some(e) => refused.push((entry.0.to_string(), e)),
                None => fine.push(entry),
            }
        }
        let sets: Vec<CandleSet<'_>> = fine
            .iter()
            .flat_map(|(symbol, by_res)| candle_sets(symbol, by_res))
            .collect();
        match self.write(&sets).await {
            Err(e) if e.failure() == Failure::OfTheSymbol && fine.len() > 1 => {
                tracing::warn!(
                    symbols = fine.len(),
                    error = %e,
                    "InfluxDB refused a candle write; writing symbol by symbol to find which"
                );
                for (symbol, by_res) in fine {
                    let sets: Vec<CandleSet<'_>> = candle_sets(symbol, by_res).collect();
                    match self.write(&sets).await {
                        Ok(()) => {}
                        Err(e) if e.failure() == Failure::OfTheSymbol => {
                            refused.push((symbol.to_string(), e));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) if e.failure() == Failure::OfTheSymbol => {
                if let Some((symbol, _)) = fine.first() {
                    refused.push((symbol.to_string(), e));
                }
            }
            other => other?,
        }
        Ok(refused)
    }

    pub(super) fn notify(&self, symbol: &str, range: Range<i64>, rows: u64, candles: u64) {
        tracing::debug!(
            symbol, from = %to_rfc3339(range.start), to = %to_rfc3339(range.end),
            rows, candles, "step committed"
        );
        ::metrics::counter!("ohlcd_source_rows_read_total").increment(rows);
        ::metrics::counter!("ohlcd_candles_written_total").increment(candles);
        ::metrics::counter!("ohlcd_chunks_total").increment(1);
        if let Some(observer) = &self.observer {
            observer(&ChunkEvent {
                symbol: symbol.to_string(),
                range,
                rows_read: rows,
                candles_written: candles,
            });
        }
    }
}

/// What the reader of a batch's steps hands its writer (see
/// `Engine::advance`), in step order.
pub(super) enum Sent<'a> {
    /// Candles of the step being read, per symbol, in [`Resolution::ALL`] order.
    Candles(Vec<(&'a str, [Vec<Candle>; 6])>),
    /// The step is read, all its candles sent.
    Done(StepRead),
}

/// Symbols of a batch that failed on their own (a write InfluxDB refused
/// for them, a candle that is not finite), with why: the rest of the batch
/// goes on without them, and they are marked failed when it ends. Shared by
/// the reader and the writer of a batch's steps.
#[derive(Default)]
pub(super) struct Poisoned(std::sync::Mutex<HashMap<String, String>>);

impl Poisoned {
    pub(super) fn has(&self, symbol: &str) -> bool {
        self.0.lock().expect("not poisoned").contains_key(symbol)
    }

    pub(super) fn insert(&self, symbol: String, e: &EngineError) {
        tracing::warn!(symbol, error = %e, "symbol failed on its own; the rest of its batch goes on");
        self.0
            .lock()
            .expect("not poisoned")
            .entry(symbol)
            .or_insert_with(|| e.to_string());
    }

    /// `result` of a step of `symbol` alone: its value, or `None` once the
    /// symbol is marked for an error of its own; the servers' errors stay
    /// errors of the batch.
    pub(super) fn unless_own<T>(
        &self,
        symbol: &str,
        result: Result<T, EngineError>,
    ) -> Result<Option<T>, EngineError> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.failure() == Failure::OfTheSymbol => {
                self.insert(symbol.to_string(), &e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn take(self) -> HashMap<String, String> {
        self.0.into_inner().expect("not poisoned")
    }
}

/// What [`Engine::read_minutes`] read, per symbol: trades, skipped rows, and
/// the 1m aggregates of the trades.
#[derive(Default)]
pub(super) struct MinuteRead<'b> {
    rows: HashMap<&'b str, u64>,
    skipped: HashMap<&'b str, u64>,
    minutes: HashMap<&'b str, Aggregator>,
}

/// A step read: its commit, once its candles are acknowledged.
pub(super) struct StepRead {
    steps: Vec<StepCommit>,
    started_at: i64,
}

/// Candles whose writes may be awaited at once (about 10 MB): several steps
/// of a few symbols, every part of one step of hundreds, one part at a time
/// for thousands.
pub(super) const CANDLES_IN_FLIGHT: usize = 50_000;

/// The (symbol, 1m watermark) each work was planned from: claimed only if
/// unchanged, so a symbol another daemon ran meanwhile is planned again.
/// Rows skipped per read that are logged one by one; the rest are only counted.
pub(super) const SKIPS_LOGGED: usize = 3;

/// Counts a skipped row (`ohlcd_trades_skipped_total{reason}`) and logs it
/// while fewer than [`SKIPS_LOGGED`] were logged (`logged`) in its read.
pub(super) fn note_skip(symbol: &str, skip: &Skip, logged: &mut usize) {
    ::metrics::counter!("ohlcd_trades_skipped_total", "reason" => skip.reason.as_str())
        .increment(1);
    if *logged < SKIPS_LOGGED {
        *logged += 1;
        tracing::warn!(
            symbol,
            time = %to_rfc3339(skip.time),
            reason = %skip.reason,
            "row skipped: it cannot make a trade (see docs/bad-rows.md)"
        );
    }
}

/// One symbol's non-empty candle lists, per resolution, as write sets.
pub(super) fn candle_sets<'a>(
    symbol: &'a str,
    by_res: &'a [Vec<Candle>; 6],
) -> impl Iterator<Item = CandleSet<'a>> + 'a {
    Resolution::ALL
        .iter()
        .zip(by_res)
        .filter(|(_, c)| !c.is_empty())
        .map(move |(res, candles)| CandleSet {
            resolution: *res,
            symbol,
            candles,
        })
}

/// The first candle of `by_res` (one symbol's, in [`Resolution::ALL`] order)
/// with a value that is not finite, as the error that fails its symbol.
pub(super) fn not_finite(symbol: &str, by_res: &[Vec<Candle>; 6]) -> Option<EngineError> {
    Resolution::ALL
        .iter()
        .zip(by_res)
        .find_map(|(res, candles)| {
            candles.iter().find_map(|c| {
                let (field, value) = c.non_finite()?;
                Some(EngineError::NotFinite {
                    symbol: symbol.to_string(),
                    resolution: *res,
                    start: to_rfc3339(c.start),
                    field,
                    value,
                })
            })
        })
}

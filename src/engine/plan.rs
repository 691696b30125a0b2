//! Pure planning of the engine's work: where a symbol resumes, which stored
//! candles a step must read back, the candles of every resolution a step
//! produces, and how symbols are packed into batches. No I/O here: the engine
//! feeds it what it read and writes what it returns.
//!
//! The unit of work is one *step* of one symbol: raw trades in `[from, end)`
//! (1m-aligned) are read once and every resolution is computed from that read.
//! Every resolution divides a UTC day, so a step that starts on a day boundary
//! needs nothing but the raw trades. A step that starts inside a day (the live
//! edge) completes the coarser windows that were open at `from` with the few
//! finer candles already stored for `[window start, from)`: the *pieces*.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::candle::{
    Aggregator, Candle, NANOS_PER_DAY, Resolution, Watermarks, floor_to, merge_ranges,
};
use crate::retention::RETENTION_MARGIN;
use crate::times::to_rfc3339;

/// Where a symbol's next step starts: the latest minute `t` at or before the 1m
/// watermark such that every coarser resolution has materialized all its windows
/// before `floor_r(t)`. Then the symbol's state is fully described by `t`: the
/// open window of resolution `r` starts at `floor_r(t)`.
///
/// In the state the engine leaves behind (`w_r = floor_r(w_1m)`) this is the 1m
/// watermark itself. A coarser task that lags further (a database written by an
/// older version, a resolution that never ran) moves it back, and the raw trades
/// from there are simply computed again (candle writes are idempotent).
/// `None` while any task has no watermark: the symbol starts from its first trade.
pub fn resume_at(watermarks: &Watermarks) -> Option<i64> {
    let minute = Resolution::M1.nanos();
    let mut t = watermarks[0]?;
    for (i, res) in Resolution::ALL.iter().enumerate().skip(1) {
        let w = watermarks[i]?;
        // floor_r(t) <= w  <=>  t < w + len_r; the largest such minute:
        t = t.min(w + res.nanos() - minute);
    }
    Some(floor_to(t, minute))
}

/// The watermarks after a step that ended at `end`: each resolution's last
/// complete window, never moving a watermark back.
pub fn advanced(watermarks: &Watermarks, end: i64) -> Watermarks {
    let mut out = *watermarks;
    for (i, res) in Resolution::ALL.iter().enumerate() {
        let w = res.window_start(end);
        out[i] = Some(out[i].map_or(w, |old| old.max(w)));
    }
    out
}

/// The coarsest resolution with a window that closes in `[from, end)`, if any
/// coarser than 1m does.
fn coarsest_closing(from: i64, end: i64) -> Option<Resolution> {
    Resolution::ALL[1..]
        .iter()
        .rev()
        .find(|r| r.window_start(end) > r.window_start(from))
        .copied()
}

/// The stored candles a step `[from, end)` must read back: for each resolution
/// `s` finer than the coarsest one closing a window in the step, the `s`
/// windows between the start of the next coarser window and `floor_s(from)`.
/// Together they tile `[floor_top(from), from)`, each piece at most a few
/// candles long. Empty when the step starts on a boundary of every closing
/// resolution (always so for a step that starts at midnight).
pub fn pieces(from: i64, end: i64) -> Vec<(Resolution, Range<i64>)> {
    let Some(top) = coarsest_closing(from, end) else {
        return Vec::new();
    };
    Resolution::ALL[..top.index()]
        .iter()
        .map(|&s| {
            let coarser = Resolution::ALL[s.index() + 1];
            (s, coarser.window_start(from)..s.window_start(from))
        })
        .filter(|(_, r)| r.start < r.end)
        .collect()
}

/// The candles one symbol's step `[from, end)` produces, per resolution in
/// [`Resolution::ALL`] order: every 1m window of the fresh candles, and for each
/// coarser resolution the windows that close in the step, computed from the
/// `pieces` (stored candles, see [`pieces`]) and the fresh 1m candles.
/// `from` and `end` are 1m-aligned and `fresh` covers `[from, end)` exactly.
pub fn step_candles(
    from: i64,
    end: i64,
    pieces: &[(Resolution, Candle)],
    fresh: Vec<Candle>,
) -> [Vec<Candle>; 6] {
    let mut out: [Vec<Candle>; 6] = Default::default();
    for &res in &Resolution::ALL[1..] {
        let (open, closed_until) = (res.window_start(from), res.window_start(end));
        if closed_until <= open {
            continue;
        }
        let mut agg = Aggregator::new(res);
        // A piece of resolution s lies in [floor_{next(s)}(from), floor_s(from)),
        // inside the window of every resolution coarser than s open at `from`.
        for (s, c) in pieces {
            if *s < res && c.start >= open {
                agg.add_candle(c);
            }
        }
        for c in fresh.iter().filter(|c| c.start < closed_until) {
            agg.add_candle(c);
        }
        out[res.index()] = agg
            .finish()
            .into_iter()
            .filter(|c| c.start >= open && c.start < closed_until)
            .collect();
    }
    out[0] = fresh;
    out
}

/// The parts a step `[from, end)` that starts at midnight is read in: its
/// 4h windows (the last one cut at `end`). Each part yields complete windows
/// of every resolution up to 4h on its own (see [`step_candles`], no pieces:
/// a part starts on a 4h boundary), so its candles can be written while the
/// next part is read; only the days need every part (see [`closed_days`]).
pub fn parts(from: i64, end: i64) -> Vec<Range<i64>> {
    let len = Resolution::H4.nanos();
    let mut out = Vec::new();
    let mut at = from;
    while at < end {
        let next = (floor_to(at, len) + len).min(end);
        out.push(at..next);
        at = next;
    }
    out
}

/// The candles one part (see [`parts`]) of a step produces, 1m to 4h; its
/// 4h candles are also added to `days`, the aggregator of the step's days,
/// which [`closed_days`] finishes once every part was read.
pub fn part_candles(
    part: &Range<i64>,
    fresh: Vec<Candle>,
    days: &mut Aggregator,
) -> [Vec<Candle>; 6] {
    debug_assert_eq!(part.start, Resolution::H4.window_start(part.start));
    let mut out = step_candles(part.start, part.end, &[], fresh);
    // The part covers only some of its day: that day's candle comes later.
    out[Resolution::D1.index()].clear();
    for c in &out[Resolution::H4.index()] {
        days.add_candle(c);
    }
    out
}

/// The 1d candles of the days that close before `end`, from all the 4h
/// candles of a step read in [`parts`] (a day is exactly its six 4h windows).
pub fn closed_days(days: Aggregator, end: i64) -> Vec<Candle> {
    let closed_until = Resolution::D1.window_start(end);
    days.finish()
        .into_iter()
        .filter(|c| c.start < closed_until)
        .collect()
}

/// Where a step that starts at `from` ends: the next chunk boundary (chunks
/// are `chunk_len` long and aligned on the epoch, so steps line up across runs
/// and daemons), or the horizon if that comes first.
pub fn step_end(from: i64, horizon: i64, chunk_len: i64) -> i64 {
    (floor_to(from, chunk_len) + chunk_len).min(horizon)
}

/// Packs symbols into batches of about `target` expected rows each, in the
/// order given. A symbol expected to exceed the target alone gets a batch of
/// its own (and its read is split into parallel parts); no batch holds more
/// than `max_symbols`.
pub fn pack_batches<T>(
    items: Vec<(T, u64)>,
    target: u64,
    max_symbols: usize,
) -> Vec<(Vec<T>, u64)> {
    let mut batches: Vec<(Vec<T>, u64)> = Vec::new();
    let mut current: (Vec<T>, u64) = (Vec::new(), 0);
    for (item, rows) in items {
        if !current.0.is_empty()
            && (current.1 + rows > target || current.0.len() >= max_symbols.max(1))
        {
            batches.push(std::mem::take(&mut current));
        }
        current.0.push(item);
        current.1 += rows;
    }
    if !current.0.is_empty() {
        batches.push(current);
    }
    batches
}

/// A repair of one symbol within one UTC day: the 1m-aligned `ranges` whose
/// trades changed are read raw; the rest of the day below the 1m watermark is
/// read back as stored 1m candles so that every coarser window touching a
/// range can be recomputed whole.
#[derive(Debug, Clone, PartialEq)]
pub struct DayRepair {
    /// The UTC day, clipped to the 1m watermark.
    pub day: Range<i64>,
    /// Ranges to read raw, disjoint and sorted, inside `day`.
    pub ranges: Vec<Range<i64>>,
}

impl DayRepair {
    /// Parts of `day` outside `ranges`: read back as stored 1m candles.
    pub fn stored_parts(&self) -> Vec<Range<i64>> {
        let mut out = Vec::new();
        let mut at = self.day.start;
        for r in &self.ranges {
            if r.start > at {
                out.push(at..r.start);
            }
            at = r.end;
        }
        if at < self.day.end {
            out.push(at..self.day.end);
        }
        out
    }
}

/// Splits changed ranges (any alignment) of one symbol into per-day repairs,
/// widened to whole minutes and clipped to the 1m watermark `w1m`.
pub fn day_repairs(ranges: &[Range<i64>], w1m: i64) -> Vec<DayRepair> {
    let minute = Resolution::M1.nanos();
    let widened = ranges
        .iter()
        .map(|r| floor_to(r.start, minute)..crate::candle::ceil_to(r.end, minute).min(w1m))
        .collect();
    let mut days: BTreeMap<i64, Vec<Range<i64>>> = BTreeMap::new();
    for r in merge_ranges(widened) {
        let mut start = r.start;
        while start < r.end {
            let day = floor_to(start, NANOS_PER_DAY);
            let stop = r.end.min(day + NANOS_PER_DAY);
            days.entry(day).or_default().push(start..stop);
            start = stop;
        }
    }
    days.into_iter()
        .map(|(day, ranges)| DayRepair {
            day: day..(day + NANOS_PER_DAY).min(w1m),
            ranges,
        })
        .collect()
}

/// The candles a day repair rewrites, per resolution in [`Resolution::ALL`]
/// order: the 1m windows inside the repaired ranges, and for each coarser
/// resolution the windows that touch a range and end at or before that
/// resolution's watermark. `fresh` are the 1m candles recomputed from raw
/// trades in the ranges, `stored` the stored 1m candles of the rest of the day.
/// Also returns, per resolution, the windows that must not hold a candle any
/// more (no trade left in them): their starts.
pub fn repair_candles(
    repair: &DayRepair,
    watermarks: &Watermarks,
    fresh: &[Candle],
    stored: &[Candle],
) -> ([Vec<Candle>; 6], [Vec<i64>; 6]) {
    let mut write: [Vec<Candle>; 6] = Default::default();
    let mut empty: [Vec<i64>; 6] = Default::default();
    let touches = |start: i64, len: i64| {
        repair
            .ranges
            .iter()
            .any(|r| r.start < start + len && start < r.end)
    };
    for (i, &res) in Resolution::ALL.iter().enumerate() {
        let Some(w) = watermarks[i] else { continue };
        let mut agg = Aggregator::new(res);
        for c in fresh.iter().chain(stored) {
            agg.add_candle(c);
        }
        let computed: BTreeMap<i64, Candle> =
            agg.finish().into_iter().map(|c| (c.start, c)).collect();
        let len = res.nanos();
        // Windows of every resolution tile the day; only complete ones (ending
        // at or before the resolution's watermark) are stored, so only those
        // are rewritten.
        let mut start = res.window_start(repair.day.start);
        while start < repair.day.end {
            if start + len <= w && touches(start, len) {
                match computed.get(&start) {
                    Some(c) => write[i].push(*c),
                    None => empty[i].push(start),
                }
            }
            start += len;
        }
    }
    (write, empty)
}

/// Wait before a symbol that failed on its own is tried again, after its
/// first failure; it doubles with each further failure in a row.
pub const RETRY_FIRST: i64 = 10 * crate::candle::NANOS_PER_SEC;

/// The longest wait between tries of a failing symbol.
pub const RETRY_LONGEST: i64 = 10 * 60 * crate::candle::NANOS_PER_SEC;

/// When a symbol whose last run failed at `failed_at` may run again, after
/// `failures` failures of its own in a row: at once for none (the servers
/// failed, not the symbol: the next tick tries), else [`RETRY_FIRST`]
/// doubled per further failure, at most [`RETRY_LONGEST`]. A symbol with a
/// bad row thus costs a few reads an hour, not one a tick, and runs on its own
/// again once the row is gone.
pub fn retry_at(failures: u32, failed_at: i64) -> i64 {
    if failures == 0 {
        return failed_at;
    }
    let wait = RETRY_FIRST.saturating_mul(1 << (failures - 1).min(20));
    failed_at.saturating_add(wait.min(RETRY_LONGEST))
}

/// Per resolution, in [`Resolution::ALL`] order, the first window start a
/// rebuild may recompute (and so delete when it has no trades). A window is
/// rebuildable only if its raw trades are all still stored:
/// - it starts at or after `kept_since`, from which on the raw trades' retention
///   policy guarantees everything (InfluxDB drops a shard group only once its
///   end is older than `now - duration`); `None`: kept forever;
/// - it ends after `first_trade`, the earliest raw trade of the symbol still
///   stored: windows before it have nothing to recompute from, whether their
///   trades never existed or were deleted by other means, so their candles are
///   kept. `None` (no raw trade at all): nothing is rebuildable.
pub fn rebuild_floors(kept_since: Option<i64>, first_trade: Option<i64>) -> [i64; 6] {
    std::array::from_fn(|i| {
        let res = Resolution::ALL[i];
        let Some(first) = first_trade else {
            return i64::MAX;
        };
        let covered = kept_since.map_or(i64::MIN, |k| crate::candle::ceil_to(k, res.nanos()));
        covered.max(res.window_start(first))
    })
}

/// What bounds a rebuild of one symbol: how long its raw trades are kept and
/// the earliest one still stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildLimit {
    /// The raw trades' retention, nanoseconds; `None`: kept forever.
    pub raw_retention: Option<i64>,
    /// The symbol's earliest raw trade still stored.
    pub first_trade: Option<i64>,
}

impl RebuildLimit {
    /// [`rebuild_floors`] at `now`, with [`RETENTION_MARGIN`].
    pub fn floors(&self, now: i64) -> [i64; 6] {
        rebuild_floors(
            self.raw_retention
                .map(|d| now.saturating_sub(d).saturating_add(RETENTION_MARGIN)),
            self.first_trade,
        )
    }

    /// Which bound is the later, for saying why a rebuild was limited: the
    /// retention's (`true`) or the earliest stored trade's.
    pub fn expired_at(&self, now: i64) -> bool {
        match (self.raw_retention, self.first_trade) {
            (Some(d), Some(first)) => now - d + RETENTION_MARGIN >= first,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// Keeps only the windows at or after each resolution's floor (see
/// [`rebuild_floors`]) in what a repair would write and delete.
pub fn clip_to_floors(write: &mut [Vec<Candle>; 6], empty: &mut [Vec<i64>; 6], floors: &[i64; 6]) {
    for i in 0..6 {
        write[i].retain(|c| c.start >= floors[i]);
        empty[i].retain(|start| *start >= floors[i]);
    }
}

/// What a rebuild did, and what it left alone because its sources are gone.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    /// Candles written, all resolutions.
    pub written: u64,
    /// The range rebuilt, widened to whole UTC days.
    pub range: Range<i64>,
    /// Per resolution ([`Resolution::ALL`] order), the first window start the
    /// rebuild could recompute; earlier windows in `range` were kept.
    pub floors: [i64; 6],
    /// Stored candles in `range` kept as they were (their windows are before
    /// the floors).
    pub kept: u64,
    /// Why the floors are where they are: raw trades before them expired under
    /// the raw trades' retention policy (`true`), or none are stored before
    /// the symbol's earliest trade (`false`).
    pub expired: bool,
    /// From when on the raw trades' retention policy still keeps everything
    /// (with [`RETENTION_MARGIN`]); `None`: kept forever.
    pub raw_kept_since: Option<i64>,
}

impl RebuildReport {
    /// Whether any window of the range was out of the rebuild's reach.
    pub fn is_limited(&self) -> bool {
        self.floors.iter().any(|f| *f > self.range.start)
    }

    /// One line saying how far the rebuild reached and why: "rebuild limited
    /// to …: raw trades before … have expired; N candles kept".
    pub fn limit_line(&self, symbol: &str) -> String {
        let why = match (self.floors[0], self.raw_kept_since) {
            (i64::MAX, Some(kept)) => format!(
                "raw trades of {symbol} before {} have expired and none are stored after",
                to_rfc3339(kept)
            ),
            (i64::MAX, None) => format!("{symbol} has no raw trades stored"),
            (first, _) if self.expired => format!(
                "raw trades of {symbol} before {} have expired",
                to_rfc3339(first)
            ),
            (first, _) => format!(
                "{symbol} has no raw trades stored before {}",
                to_rfc3339(first)
            ),
        };
        if self.floors.iter().all(|f| *f >= self.range.end) {
            return format!(
                "rebuild limited to nothing: {why}; {} candles kept",
                self.kept
            );
        }
        let reach: Vec<String> = Resolution::ALL
            .iter()
            .zip(&self.floors)
            .map(|(res, f)| {
                if *f >= self.range.end {
                    format!("{res} none")
                } else {
                    format!("{res} from {}", to_rfc3339((*f).max(self.range.start)))
                }
            })
            .collect();
        format!(
            "rebuild limited to windows whose raw trades are all stored ({}): {why}; {} candles kept",
            reach.join(", "),
            self.kept
        )
    }
}

#[cfg(test)]
mod tests;

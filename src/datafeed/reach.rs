//! Which stored source answers which part of a requested range once the
//! finer ones have expired: the datafeed's plan of sources, pure.

use std::ops::Range;

use crate::candle::{Bucketing, Resolution, ceil_to};

/// Which source answers which part of `range` (window-aligned to `bucketing`):
/// `None` for the exact sources (the resolutions that tile the requested bars,
/// then raw trades), `Some(c)` for a coarser resolution whose stored candles
/// are returned as they are. `reach` (per resolution, [`Resolution::ALL`]
/// order) and `raw_reach` say from when on each is still kept (`None`: forever).
///
/// The exact sources answer from the earliest time one of them reaches. Before
/// that, the coarser resolutions whose windows are whole numbers of requested
/// bars (so their starts are bar starts) take over, finest first, each from the
/// first of its windows its finer neighbour fully covers: a coarser bar never
/// overlaps a finer one. Weeks and months have no coarser source.
pub fn reach_plan(
    bucketing: Bucketing,
    reach: &[Option<i64>; 6],
    raw_reach: Option<i64>,
    range: Range<i64>,
) -> Vec<(Option<Resolution>, Range<i64>)> {
    let since = |r: Option<i64>| r.unwrap_or(i64::MIN);
    let exact_from = bucketing
        .sources(range.clone())
        .iter()
        .map(|s| since(reach[s.index()]))
        .chain([since(raw_reach)])
        .min()
        .unwrap_or(i64::MIN);
    let mut parts: Vec<(Option<Resolution>, Range<i64>)> = Vec::new();
    let (mut current, mut current_from, mut end) = (None, exact_from, range.end);
    if let Bucketing::Fixed(len) = bucketing {
        for (i, coarser) in Resolution::ALL.iter().enumerate() {
            if current_from <= range.start {
                break;
            }
            let coarser_from = since(reach[i]);
            if coarser.nanos() <= len || coarser.nanos() % len != 0 || coarser_from >= current_from
            {
                continue;
            }
            let switch = ceil_to(current_from, coarser.nanos());
            if switch < end {
                parts.push((current, switch.max(range.start)..end));
                end = switch.max(range.start);
            }
            (current, current_from) = (Some(*coarser), coarser_from);
        }
    }
    if range.start < end {
        parts.push((current, range.start..end));
    }
    parts.reverse();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::NANOS_PER_DAY;

    const MIN: i64 = 60_000_000_000;
    const HOUR: i64 = 60 * MIN;

    fn fixed(minutes: i64) -> Bucketing {
        Bucketing::Fixed(minutes * MIN)
    }

    #[test]
    fn everything_kept_forever_is_answered_exactly() {
        let range = 0..10 * NANOS_PER_DAY;
        assert_eq!(
            reach_plan(fixed(1), &[None; 6], None, range.clone()),
            vec![(None, range)]
        );
        assert_eq!(reach_plan(fixed(1), &[None; 6], None, 5..5), vec![]);
    }

    #[test]
    fn an_expired_finer_range_is_answered_from_the_coarser_ones_that_remain() {
        let day = 100 * NANOS_PER_DAY;
        // raw and 1m from day+10:37, 5m and 15m from day+3:10, 1h on forever.
        let mut reach = [None; 6];
        reach[0] = Some(day + 10 * HOUR + 37 * MIN);
        reach[1] = Some(day + 3 * HOUR + 10 * MIN);
        reach[2] = Some(day + 3 * HOUR + 10 * MIN);
        let raw = Some(day + 10 * HOUR + 37 * MIN);
        let range = day - NANOS_PER_DAY..day + NANOS_PER_DAY;
        assert_eq!(
            reach_plan(fixed(1), &reach, raw, range.clone()),
            vec![
                (Some(Resolution::H1), range.start..day + 4 * HOUR),
                (
                    Some(Resolution::M5),
                    day + 4 * HOUR..day + 10 * HOUR + 40 * MIN
                ),
                (None, day + 10 * HOUR + 40 * MIN..range.end),
            ]
        );
        // A 15-minute request: its exact sources (15m, 5m, 1m) reach 03:10,
        // so 1h takes over before 04:00.
        assert_eq!(
            reach_plan(fixed(15), &reach, raw, range.clone()),
            vec![
                (Some(Resolution::H1), range.start..day + 4 * HOUR),
                (None, day + 4 * HOUR..range.end),
            ]
        );
        // A range wholly inside what the exact sources keep needs nothing else.
        let recent = day + 11 * HOUR..day + 12 * HOUR;
        assert_eq!(
            reach_plan(fixed(1), &reach, raw, recent.clone()),
            vec![(None, recent)]
        );
        // A range wholly before: only the coarser source.
        let old = day - 3 * NANOS_PER_DAY..day - 2 * NANOS_PER_DAY;
        assert_eq!(
            reach_plan(fixed(1), &reach, raw, old.clone()),
            vec![(Some(Resolution::H1), old)]
        );
    }

    #[test]
    fn coarser_bars_are_whole_numbers_of_requested_bars() {
        let day = 100 * NANOS_PER_DAY;
        let mut reach = [Some(day + 5 * HOUR); 6];
        reach[5] = None;
        let range = day - NANOS_PER_DAY..day + NANOS_PER_DAY;
        // 45 minutes: 1h and 4h are not multiples of 45m, 1d is.
        assert_eq!(
            reach_plan(fixed(45), &reach, reach[0], range.clone()),
            vec![(Some(Resolution::D1), range.start..day + NANOS_PER_DAY),]
        );
        // Weeks have nothing coarser: what the exact sources lack stays empty.
        assert_eq!(
            reach_plan(Bucketing::Weeks(1), &reach, reach[0], range.clone()),
            vec![(None, range)]
        );
    }
}

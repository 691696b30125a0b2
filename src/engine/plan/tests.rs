use super::*;
use crate::candle::{Side, Trade, candles_from_trades};

const MIN: i64 = 60_000_000_000;

fn all_at(t: i64) -> Watermarks {
    let mut w = [None; 6];
    for (i, r) in Resolution::ALL.iter().enumerate() {
        w[i] = Some(r.window_start(t));
    }
    w
}

fn trade(time: i64, id: i64, price: f64) -> Trade {
    Trade {
        time,
        id,
        price,
        amount: 1.0 + (id % 3) as f64,
        side: Some(if id % 2 == 0 { Side::Buy } else { Side::Sell }),
    }
}

#[test]
fn a_symbol_left_by_the_engine_resumes_at_its_1m_watermark() {
    let t = 3 * NANOS_PER_DAY + 7 * 3_600 * 1_000_000_000 + 13 * MIN;
    assert_eq!(resume_at(&all_at(t)), Some(t));
    assert_eq!(resume_at(&[None; 6]), None);
}

#[test]
fn a_coarser_task_lagging_a_whole_window_moves_the_resume_point_back() {
    let t = 3 * NANOS_PER_DAY + 7 * 3_600 * 1_000_000_000 + 13 * MIN;
    let mut w = all_at(t);
    // 1h is one window behind: its window starting at 06:00 is not written.
    w[Resolution::H1.index()] = Some(3 * NANOS_PER_DAY + 6 * 3_600 * 1_000_000_000);
    let r = resume_at(&w).unwrap();
    assert_eq!(r, 3 * NANOS_PER_DAY + 7 * 3_600 * 1_000_000_000 - MIN);
    assert_eq!(
        Resolution::H1.window_start(r),
        w[Resolution::H1.index()].unwrap()
    );
    // A task that never ran restarts the symbol.
    w[Resolution::D1.index()] = None;
    assert_eq!(resume_at(&w), None);
}

#[test]
fn a_step_from_midnight_needs_no_pieces_and_one_inside_a_day_needs_a_few() {
    let day = 10 * NANOS_PER_DAY;
    assert!(pieces(day, day + NANOS_PER_DAY).is_empty());
    // 10:07 -> 10:08: no coarser window closes.
    let from = day + 10 * 3_600 * 1_000_000_000 + 7 * MIN;
    assert!(pieces(from, from + MIN).is_empty());
    // 11:59 -> 12:00 closes 5m, 15m, 1h and 4h (08:00-12:00): read back
    // 1m 11:55-11:59, 5m 11:45-11:55, 15m 11:00-11:45, 1h 08:00-11:00.
    let from = day + 11 * 3_600 * 1_000_000_000 + 59 * MIN;
    let p = pieces(from, from + MIN);
    let h = |x: i64, m: i64| day + x * 3_600 * 1_000_000_000 + m * MIN;
    assert_eq!(
        p,
        vec![
            (Resolution::M1, h(11, 55)..h(11, 59)),
            (Resolution::M5, h(11, 45)..h(11, 55)),
            (Resolution::M15, h(11, 0)..h(11, 45)),
            (Resolution::H1, h(8, 0)..h(11, 0)),
        ]
    );
}

/// Every candle of every resolution over three days, computed two ways: in
/// one pass from all trades, and by steps of irregular length that each
/// read only their own trades plus the pieces stored by earlier steps.
#[test]
fn steps_of_any_length_produce_exactly_the_candles_of_one_pass() {
    let start = 20 * NANOS_PER_DAY;
    let mut trades = Vec::new();
    let mut t = start + 17_000_000_000;
    let mut id = 0;
    while t < start + 3 * NANOS_PER_DAY {
        id += 1;
        trades.push(trade(t, id, 100.0 + (id % 17) as f64));
        // Irregular gaps, some longer than an hour.
        t += 1_000_000_000 * (7 + (id * 7919) % 5_000);
    }
    let mut stored: [BTreeMap<i64, Candle>; 6] = Default::default();
    let mut w: Watermarks = [Some(start); 6];
    let lens = [1, 3, 7, 61, 240, 13, 1440, 59, 5, 2000];
    let mut k = 0;
    let mut from = start;
    while from < start + 3 * NANOS_PER_DAY {
        assert_eq!(resume_at(&w), Some(from));
        let end = (from + lens[k % lens.len()] * MIN).min(start + 3 * NANOS_PER_DAY);
        k += 1;
        let piece_candles: Vec<(Resolution, Candle)> = pieces(from, end)
            .into_iter()
            .flat_map(|(s, r)| {
                stored[s.index()]
                    .range(r)
                    .map(move |(_, c)| (s, *c))
                    .collect::<Vec<_>>()
            })
            .collect();
        let fresh = candles_from_trades(
            Resolution::M1,
            trades.iter().filter(|x| x.time >= from && x.time < end),
        );
        for (i, cs) in step_candles(from, end, &piece_candles, fresh)
            .into_iter()
            .enumerate()
        {
            for c in cs {
                assert!(stored[i].insert(c.start, c).is_none(), "written twice");
            }
        }
        w = advanced(&w, end);
        // Every coarser watermark is the start of its window holding the
        // 1m watermark: everything before it is complete and written.
        for (i, res) in Resolution::ALL.iter().enumerate() {
            assert_eq!(w[i], Some(res.window_start(end)), "{res}");
        }
        from = end;
    }
    for res in Resolution::ALL {
        let expected = candles_from_trades(res, &trades);
        let got: Vec<Candle> = stored[res.index()].values().copied().collect();
        assert_eq!(got.len(), expected.len(), "{res}");
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(
                (g.start, g.open, g.high, g.low, g.close, g.trades),
                (e.start, e.open, e.high, e.low, e.close, e.trades),
                "{res}"
            );
            assert!((g.volume - e.volume).abs() < 1e-9 * e.volume.abs().max(1.0));
        }
    }
}

/// Two days and a half read in 4h parts (the last one cut by the
/// horizon): the parts' candles and the days built from their 4h candles
/// are exactly one pass over all trades, each window written once, and
/// the open day is not written.
#[test]
fn a_step_read_in_parts_produces_exactly_the_candles_of_one_pass() {
    let start = 30 * NANOS_PER_DAY;
    let end = start + 2 * NANOS_PER_DAY + 13 * 60 * MIN + 7 * MIN; // day 3, 13:07
    let mut trades = Vec::new();
    let (mut t, mut id) = (start + 5_000_000_000, 0);
    while t < end + NANOS_PER_DAY {
        id += 1;
        trades.push(trade(t, id, 50.0 + (id % 29) as f64));
        t += 1_000_000_000 * (3 + (id * 104_729) % 2_000);
    }
    let parts = parts(start, end);
    assert_eq!(
        parts.len(),
        2 * 6 + 4,
        "4h parts, the last one cut at the end"
    );
    assert_eq!(parts.last().unwrap().end, end);
    let mut stored: [BTreeMap<i64, Candle>; 6] = Default::default();
    let mut days = Aggregator::new(Resolution::D1);
    for part in &parts {
        let fresh = candles_from_trades(
            Resolution::M1,
            trades.iter().filter(|x| part.contains(&x.time)),
        );
        for (i, cs) in part_candles(part, fresh, &mut days).into_iter().enumerate() {
            for c in cs {
                assert!(stored[i].insert(c.start, c).is_none(), "written twice");
            }
        }
    }
    for c in closed_days(days, end) {
        assert!(stored[Resolution::D1.index()].insert(c.start, c).is_none());
    }
    let before_end: Vec<Trade> = trades.iter().filter(|x| x.time < end).copied().collect();
    for res in Resolution::ALL {
        // Only windows that closed by `end` are written.
        let closed_until = res.window_start(end);
        let expected: Vec<Candle> = candles_from_trades(res, &before_end)
            .into_iter()
            .filter(|c| c.start < closed_until)
            .collect();
        let got: Vec<Candle> = stored[res.index()].values().copied().collect();
        assert_eq!(got.len(), expected.len(), "{res}");
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(
                (g.start, g.open, g.high, g.low, g.close, g.trades),
                (e.start, e.open, e.high, e.low, e.close, e.trades),
                "{res}"
            );
            assert!((g.volume - e.volume).abs() < 1e-9 * e.volume.abs().max(1.0));
            assert!((g.quote_volume - e.quote_volume).abs() < 1e-9 * e.quote_volume.abs().max(1.0));
        }
    }
}

#[test]
fn batches_hold_about_the_target_rows_and_a_dense_symbol_stands_alone() {
    let items = vec![
        ("a", 40),
        ("b", 40),
        ("c", 40),
        ("d", 500),
        ("e", 10),
        ("f", 0),
    ];
    let b = pack_batches(items, 100, 10);
    let names: Vec<Vec<&str>> = b.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(
        names,
        vec![vec!["a", "b"], vec!["c"], vec!["d"], vec!["e", "f"]]
    );
    let capped = pack_batches(vec![("a", 0), ("b", 0), ("c", 0)], 100, 2);
    assert_eq!(capped.len(), 2);
}

#[test]
fn a_late_trade_rewrites_only_the_windows_it_touches() {
    let day = 5 * NANOS_PER_DAY;
    let w1 = day + 13 * 3_600 * 1_000_000_000 + 2 * MIN; // 13:02
    let w = all_at(w1);
    let late = day + 9 * 3_600 * 1_000_000_000 + 31 * MIN + 5_000_000_000; // 09:31:05
    let repairs = day_repairs(std::slice::from_ref(&(late..late + 1)), w1);
    assert_eq!(repairs.len(), 1);
    let rep = &repairs[0];
    assert_eq!(rep.day, day..w1);
    let m = day + 9 * 3_600 * 1_000_000_000 + 31 * MIN;
    assert_eq!(rep.ranges, vec![m..m + MIN]);
    assert_eq!(rep.stored_parts(), vec![day..m, m + MIN..w1]);
    let fresh = candles_from_trades(Resolution::M1, &[trade(late, 1, 10.0)]);
    let stored = candles_from_trades(
        Resolution::M1,
        &[trade(day + 10 * 3_600 * 1_000_000_000, 2, 20.0)],
    );
    let (write, empty) = repair_candles(rep, &w, &fresh, &stored);
    let starts = |i: usize| write[i].iter().map(|c| c.start).collect::<Vec<_>>();
    assert_eq!(starts(0), vec![m]);
    assert_eq!(starts(1), vec![day + 9 * 3_600 * 1_000_000_000 + 30 * MIN]);
    assert_eq!(starts(3), vec![day + 9 * 3_600 * 1_000_000_000]);
    // 4h 08:00-12:00 is complete and touched; the day is still open.
    assert_eq!(starts(4), vec![day + 8 * 3_600 * 1_000_000_000]);
    assert_eq!(write[4][0].trades, 2);
    assert!(write[5].is_empty() && empty.iter().all(Vec::is_empty));
}

#[test]
fn a_rebuild_reaches_back_only_to_windows_whose_raw_trades_are_all_kept() {
    let hour = 60 * MIN;
    let day = 7 * NANOS_PER_DAY;
    // Raw trades guaranteed from 10:37:30; the symbol traded long before.
    let kept = day + 10 * hour + 37 * MIN + 30_000_000_000;
    let f = rebuild_floors(Some(kept), Some(0));
    assert_eq!(f[Resolution::M1.index()], day + 10 * hour + 38 * MIN);
    assert_eq!(f[Resolution::M5.index()], day + 10 * hour + 40 * MIN);
    assert_eq!(f[Resolution::M15.index()], day + 10 * hour + 45 * MIN);
    assert_eq!(f[Resolution::H1.index()], day + 11 * hour);
    assert_eq!(f[Resolution::H4.index()], day + 12 * hour);
    // The whole day 7 is not covered: the first rebuildable 1d is day 8.
    assert_eq!(f[Resolution::D1.index()], day + NANOS_PER_DAY);
    // A bound on a window start includes that window.
    assert_eq!(rebuild_floors(Some(day), Some(0)), [day; 6]);
}

#[test]
fn windows_before_the_earliest_stored_trade_are_never_rebuilt() {
    let hour = 60 * MIN;
    let day = 7 * NANOS_PER_DAY;
    // Kept forever, but nothing stored before 10:37:30 (deleted by hand):
    // the window holding that trade is recomputed, earlier ones are not.
    let first = day + 10 * hour + 37 * MIN + 30_000_000_000;
    let f = rebuild_floors(None, Some(first));
    assert_eq!(f[Resolution::M1.index()], day + 10 * hour + 37 * MIN);
    assert_eq!(f[Resolution::H1.index()], day + 10 * hour);
    assert_eq!(f[Resolution::D1.index()], day);
    // The later bound wins.
    let f = rebuild_floors(Some(day + 12 * hour), Some(first));
    assert_eq!(f[Resolution::M1.index()], day + 12 * hour);
    assert_eq!(f[Resolution::D1.index()], day + NANOS_PER_DAY);
    // No raw trade at all: nothing is rebuildable.
    assert_eq!(rebuild_floors(None, None), [i64::MAX; 6]);
    assert_eq!(rebuild_floors(Some(0), None), [i64::MAX; 6]);
}

#[test]
fn clipping_keeps_writes_and_deletes_of_rebuildable_windows_only() {
    let day = 7 * NANOS_PER_DAY;
    let trades = [
        trade(day + 5 * MIN, 1, 10.0),
        trade(day + 70 * MIN, 2, 11.0),
    ];
    let mut write: [Vec<Candle>; 6] = Default::default();
    for (i, res) in Resolution::ALL.iter().enumerate() {
        write[i] = candles_from_trades(*res, &trades);
    }
    let mut empty: [Vec<i64>; 6] = Default::default();
    empty[0] = vec![day, day + 60 * MIN, day + 120 * MIN];
    empty[3] = vec![day + 120 * MIN];
    let floors = rebuild_floors(Some(day + 60 * MIN), Some(day));
    clip_to_floors(&mut write, &mut empty, &floors);
    let starts = |i: usize| write[i].iter().map(|c| c.start).collect::<Vec<_>>();
    assert_eq!(starts(0), vec![day + 70 * MIN]);
    assert_eq!(starts(3), vec![day + 60 * MIN]);
    assert!(write[4].is_empty() && write[5].is_empty());
    assert_eq!(empty[0], vec![day + 60 * MIN, day + 120 * MIN]);
    assert_eq!(empty[3], vec![day + 120 * MIN]);
}

#[test]
fn a_limited_rebuild_says_how_far_it_reached_why_and_what_it_kept() {
    let day = 7 * NANOS_PER_DAY;
    let kept_since = day + 10 * 60 * MIN + 2 * MIN;
    let limit = RebuildLimit {
        raw_retention: Some(NANOS_PER_DAY),
        first_trade: Some(0),
    };
    // Kept for a day, complete from now - 1d + 5 min (README: 5 minutes
    // allow for clocks that differ).
    let now = kept_since + NANOS_PER_DAY - 5 * MIN;
    let report = RebuildReport {
        written: 10,
        range: day..day + NANOS_PER_DAY,
        floors: limit.floors(now),
        kept: 42,
        expired: limit.expired_at(now),
        raw_kept_since: Some(kept_since),
    };
    assert!(report.is_limited());
    let line = report.limit_line("BTCUSD");
    assert!(line.starts_with("rebuild limited to windows whose raw trades are all stored (1m from 1970-01-08T10:02:00.000Z, 5m from 1970-01-08T10:05:00.000Z"), "{line}");
    assert!(line.contains("1d none): raw trades of BTCUSD before 1970-01-08T10:02:00.000Z have expired; 42 candles kept"), "{line}");
    let none_left = RebuildReport {
        floors: rebuild_floors(Some(kept_since), None),
        expired: true,
        ..report.clone()
    };
    assert_eq!(
        none_left.limit_line("BTCUSD"),
        "rebuild limited to nothing: raw trades of BTCUSD before 1970-01-08T10:02:00.000Z have expired and none are stored after; 42 candles kept"
    );
    let whole = RebuildReport {
        floors: [day; 6],
        ..report
    };
    assert!(!whole.is_limited());
}

#[test]
fn a_failing_symbol_waits_ten_seconds_then_twice_as_long_each_time_up_to_ten_minutes() {
    let s = crate::candle::NANOS_PER_SEC;
    let t = 1_700_000_000 * s;
    assert_eq!(retry_at(0, t), t, "the servers' failure: the next tick");
    assert_eq!(retry_at(1, t), t + 10 * s);
    assert_eq!(retry_at(2, t), t + 20 * s);
    assert_eq!(retry_at(3, t), t + 40 * s);
    assert_eq!(retry_at(6, t), t + 320 * s);
    assert_eq!(retry_at(7, t), t + 600 * s);
    assert_eq!(retry_at(u32::MAX, t), t + 600 * s);
}

#[test]
fn a_step_ends_at_the_next_chunk_boundary_or_the_horizon() {
    let day = NANOS_PER_DAY;
    let far = 100 * day;
    assert_eq!(step_end(2 * day + 7 * MIN, far, day), 3 * day);
    assert_eq!(step_end(2 * day, far, day), 3 * day);
    assert_eq!(step_end(2 * day, 2 * day + 5 * MIN, day), 2 * day + 5 * MIN);
}

#[test]
fn a_batch_reaching_the_target_exactly_is_not_split() {
    let b = pack_batches(vec![("a", 50), ("b", 50), ("c", 1)], 100, 10);
    let names: Vec<Vec<&str>> = b.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(names, vec![vec!["a", "b"], vec!["c"]]);
}

#[test]
#[allow(clippy::single_range_in_vec_init)] // lists of ranges, one long
fn a_repair_reads_back_only_the_parts_of_its_day_outside_its_ranges() {
    let repair = |ranges: Vec<Range<i64>>| DayRepair {
        day: 0..100,
        ranges,
    };
    assert_eq!(
        repair(vec![0..10, 50..60]).stored_parts(),
        [10..50, 60..100]
    );
    assert_eq!(repair(vec![20..30, 30..100]).stored_parts(), [0..20]);
    assert_eq!(repair(vec![]).stored_parts(), [0..100]);
}

#[test]
fn a_rebuild_is_limited_by_expiry_only_where_the_kept_window_starts_after_the_first_trade() {
    let day = NANOS_PER_DAY;
    let now = 100 * day;
    // Kept for 10 days: complete from now - 10 days + 5 minutes.
    let since = 90 * day + 5 * MIN;
    let limit = |raw_retention, first_trade| RebuildLimit {
        raw_retention,
        first_trade,
    };
    assert!(limit(Some(10 * day), Some(since)).expired_at(now));
    assert!(!limit(Some(10 * day), Some(since + 1)).expired_at(now));
    assert!(limit(Some(10 * day), None).expired_at(now));
    assert!(!limit(None, Some(0)).expired_at(now));
    assert!(!limit(None, None).expired_at(now));

    // Limited by the earliest stored trade, not by expiry: said so.
    let report = RebuildReport {
        written: 1,
        range: 0..day,
        floors: [12 * 60 * MIN; 6],
        kept: 3,
        expired: false,
        raw_kept_since: None,
    };
    let line = report.limit_line("ETHUSD");
    assert!(
        line.contains(
            "ETHUSD has no raw trades stored before 1970-01-01T12:00:00.000Z; 3 candles kept"
        ),
        "{line}"
    );
}

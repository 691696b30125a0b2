use super::*;

#[test]
fn a_resolution_indexes_its_place_in_all() {
    for (i, res) in Resolution::ALL.iter().enumerate() {
        assert_eq!(res.index(), i, "{res}");
    }
}

#[test]
fn ranges_that_overlap_or_touch_merge_and_empty_ones_go() {
    assert_eq!(
        merge_ranges(vec![50..60, 0..10, 10..20, 5..8, 30..30, 40..45, 44..50]),
        vec![0..20, 40..60]
    );
    let backwards = Range { start: 7, end: 3 };
    assert_eq!(
        merge_ranges(vec![backwards, 9..9]),
        Vec::<Range<i64>>::new()
    );
}

const MIN: i64 = 60 * NANOS_PER_SEC;

fn trade(time: i64, id: i64, price: f64, amount: f64, side: Side) -> Trade {
    Trade {
        time,
        id,
        price,
        amount,
        side: Some(side),
    }
}

#[test]
fn windows_are_aligned_to_the_epoch_and_half_open() {
    assert_eq!(Resolution::M1.window_start(59 * NANOS_PER_SEC), 0);
    assert_eq!(Resolution::M1.window_start(MIN), MIN);
    assert_eq!(Resolution::M1.window_start(MIN - 1), 0);
    assert_eq!(Resolution::M1.window_start(-1), -MIN);
    // 4h windows start at 00:00, 04:00, ... UTC
    let t = 1_700_000_000 * NANOS_PER_SEC; // 2023-11-14T22:13:20Z
    assert_eq!(
        Resolution::H4.window_start(t),
        1_699_992_000 * NANOS_PER_SEC // 2023-11-14T20:00:00Z
    );
    assert_eq!(
        Resolution::D1.window_start(t),
        1_699_920_000 * NANOS_PER_SEC // 2023-11-14T00:00:00Z
    );
}

#[test]
fn candle_is_stamped_with_window_start_and_orders_open_close_by_time_then_id() {
    let t0 = 10 * MIN;
    let trades = [
        trade(t0 + 5, 7, 101.0, 1.0, Side::Buy),
        trade(t0 + 5, 3, 100.0, 2.0, Side::Sell), // same time, smaller id: the open
        trade(t0 + 50, 9, 99.0, 1.0, Side::Sell),
        trade(t0 + 50, 10, 102.0, 0.5, Side::Buy), // same time, larger id: the close
    ];
    let candles = candles_from_trades(Resolution::M1, &trades);
    assert_eq!(candles.len(), 1);
    let c = candles[0];
    assert_eq!(c.start, t0);
    assert_eq!(
        (c.open, c.high, c.low, c.close),
        (100.0, 102.0, 99.0, 102.0)
    );
    assert_eq!(c.trades, 4);
    assert_eq!(c.volume, 4.5);
    assert_eq!(c.buy_volume, 1.5);
    assert_eq!(c.quote_volume, 101.0 + 200.0 + 99.0 + 51.0);
}

#[test]
fn order_of_input_does_not_change_the_candles() {
    let trades: Vec<Trade> = (0..50)
        .map(|i| {
            trade(
                (i * 7919 % 300) * NANOS_PER_SEC,
                i,
                100.0 + (i % 13) as f64,
                1.0 + (i % 3) as f64,
                if i % 2 == 0 { Side::Buy } else { Side::Sell },
            )
        })
        .collect();
    let mut reversed = trades.clone();
    reversed.reverse();
    assert_eq!(
        candles_from_trades(Resolution::M1, &trades),
        candles_from_trades(Resolution::M1, &reversed)
    );
}

#[test]
fn empty_windows_produce_no_candle() {
    let trades = [
        trade(0, 1, 1.0, 1.0, Side::Buy),
        trade(3 * MIN, 2, 2.0, 1.0, Side::Buy),
    ];
    let starts: Vec<i64> = candles_from_trades(Resolution::M1, &trades)
        .iter()
        .map(|c| c.start)
        .collect();
    assert_eq!(starts, vec![0, 3 * MIN]);
}

#[test]
fn cascade_step_matches_direct_aggregation() {
    let trades: Vec<Trade> = (0..1000)
        .map(|i| {
            trade(
                i * 17 * NANOS_PER_SEC,
                i,
                50.0 + ((i * 31) % 97) as f64 * 0.25,
                0.001 * (1 + i % 11) as f64,
                if i % 3 == 0 { Side::Buy } else { Side::Sell },
            )
        })
        .collect();
    let m1 = candles_from_trades(Resolution::M1, &trades);
    let m5 = candles_from_candles(Resolution::M5, &m1);
    let direct = candles_from_trades(Resolution::M5, &trades);
    assert_eq!(m5.len(), direct.len());
    for (a, b) in m5.iter().zip(&direct) {
        assert_eq!(
            (a.start, a.open, a.high, a.low, a.close, a.trades),
            (b.start, b.open, b.high, b.low, b.close, b.trades)
        );
        assert!((a.volume - b.volume).abs() <= 1e-12 * b.volume.abs());
    }
}

#[test]
fn resolution_names_round_trip_and_sources_form_the_cascade() {
    for r in Resolution::ALL {
        assert_eq!(r.name().parse::<Resolution>().unwrap(), r);
        if let Some(s) = r.source() {
            assert!(s < r);
            assert_eq!(r.nanos() % s.nanos(), 0, "{r} must be a multiple of {s}");
        }
        assert_eq!(NANOS_PER_DAY % r.nanos(), 0);
    }
    // Each resolution is computed from the next finer one, 1m from trades.
    let sources: Vec<Option<Resolution>> = Resolution::ALL.iter().map(|r| r.source()).collect();
    assert_eq!(
        sources,
        [
            None,
            Some(Resolution::M1),
            Some(Resolution::M5),
            Some(Resolution::M15),
            Some(Resolution::H1),
            Some(Resolution::H4)
        ]
    );
    assert!("2m".parse::<Resolution>().is_err());
    assert_eq!(
        Resolution::H1.with_sources(),
        vec![
            Resolution::M1,
            Resolution::M5,
            Resolution::M15,
            Resolution::H1
        ]
    );
}

#[test]
fn sums_keep_the_small_terms_a_plain_sum_loses() {
    // Neumaier's example: a plain f64 sum gives 0, Kahan's gives 0 too.
    let mut sum = CompensatedSum::default();
    for x in [1.0, 1e100, 1.0, -1e100] {
        sum.add(x);
    }
    assert_eq!(sum.value(), 2.0);
    // The small terms first, then a large one: the other branch.
    let mut sum = CompensatedSum::default();
    for x in [1.0, 1.0, 1e100, -1e100] {
        sum.add(x);
    }
    assert_eq!(sum.value(), 2.0);
    // Through a candle: ten amounts of 1e-16 on top of 1.0 are kept.
    let trades: Vec<Trade> = (0..11)
        .map(|i| trade(i, i, 10.0, if i == 0 { 1.0 } else { 1e-16 }, Side::Buy))
        .collect();
    let c = candles_from_trades(Resolution::M1, &trades)[0];
    assert_eq!(c.volume, 1.0 + 1e-15);
    assert_eq!(c.buy_volume, 1.0 + 1e-15);
}

#[test]
fn weeks_start_monday_and_months_on_the_first() {
    let t = 1_700_000_000 * NANOS_PER_SEC; // Tuesday 2023-11-14T22:13:20Z
    let week = Bucketing::Weeks(1).window_start(t);
    assert_eq!(week, 1_699_833_600 * NANOS_PER_SEC); // Monday 2023-11-13T00:00Z
    assert_eq!(
        Bucketing::Weeks(1).next_start(week) - week,
        7 * NANOS_PER_DAY
    );
    let month = Bucketing::Months(1).window_start(t);
    assert_eq!(month, 1_698_796_800 * NANOS_PER_SEC); // 2023-11-01T00:00Z
    assert_eq!(
        Bucketing::Months(1).next_start(month),
        1_701_388_800 * NANOS_PER_SEC
    );
    // February of a leap year, and a window start is its own ceiling.
    let feb = 1_706_745_600 * NANOS_PER_SEC; // 2024-02-01
    assert_eq!(
        Bucketing::Months(1).next_start(feb) - feb,
        29 * NANOS_PER_DAY
    );
    assert_eq!(Bucketing::Months(1).ceil(feb), feb);
    assert_eq!(Bucketing::Months(1).ceil(feb + 1), feb + 29 * NANOS_PER_DAY);
    // Before 1970 too.
    assert_eq!(Bucketing::Weeks(1).window_start(0), -3 * NANOS_PER_DAY); // Mon 1969-12-29
    assert_eq!(Bucketing::Months(1).window_start(-1), -31 * NANOS_PER_DAY); // 1969-12-01
}

#[test]
fn sources_are_the_resolutions_that_tile_the_windows_coarsest_first() {
    let min = |m: i64| Bucketing::Fixed(m * 60 * NANOS_PER_SEC);
    assert_eq!(min(30).sources(0..0)[0], Resolution::M15);
    assert_eq!(min(45).sources(0..0)[0], Resolution::M15);
    assert_eq!(min(120).sources(0..0)[0], Resolution::H1);
    assert_eq!(min(360).sources(0..0)[0], Resolution::H1);
    assert_eq!(min(720).sources(0..0)[0], Resolution::H4);
    assert_eq!(min(3).sources(0..0), vec![Resolution::M1]);
    assert_eq!(Bucketing::Weeks(1).sources(0..0)[0], Resolution::D1);
    assert_eq!(Bucketing::Months(1).sources(0..0)[0], Resolution::D1);
    assert!(
        Bucketing::Fixed(90 * NANOS_PER_SEC)
            .sources(0..0)
            .is_empty()
    );
    assert_eq!(
        min(15).sources(0..0),
        vec![Resolution::M15, Resolution::M5, Resolution::M1]
    );
}

#[test]
fn a_bar_read_in_two_parts_equals_the_bar_read_at_once() {
    let trades: Vec<Trade> = (0..10)
        .map(|i| {
            trade(
                i * 5 * NANOS_PER_SEC,
                i,
                100.0 + ((i * 7) % 5) as f64,
                1.0 + i as f64,
                Side::Buy,
            )
        })
        .collect();
    let whole = candles_from_trades(Resolution::M1, &trades)[0];
    let first = candles_from_trades(Resolution::M1, &trades[..4])[0];
    let second = candles_from_trades(Resolution::M1, &trades[4..])[0];
    assert_eq!(first.followed_by(&second), whole);
}

#[test]
fn ceil_and_floor_handle_exact_multiples() {
    assert_eq!(ceil_to(120, 60), 120);
    assert_eq!(ceil_to(121, 60), 180);
    assert_eq!(floor_to(-1, 60), -60);
}

#[test]
fn a_value_is_a_price_or_amount_only_if_finite_positive_and_at_most_the_bound() {
    assert_eq!(check_value(42_000.5), Ok(42_000.5));
    assert_eq!(check_value(MAX_TRADE_VALUE), Ok(MAX_TRADE_VALUE));
    assert_eq!(check_value(1e-12), Ok(1e-12));
    assert_eq!(check_value(f64::NAN), Err(SkipReason::NotFinite));
    assert_eq!(check_value(f64::INFINITY), Err(SkipReason::NotFinite));
    assert_eq!(check_value(0.0), Err(SkipReason::NotPositive));
    assert_eq!(check_value(-1.0), Err(SkipReason::NotPositive));
    assert_eq!(
        check_value(MAX_TRADE_VALUE * 1.000_001),
        Err(SkipReason::TooLarge)
    );
    assert_eq!(check_value(1e308), Err(SkipReason::TooLarge));
}

#[test]
fn a_month_of_trades_at_the_bound_keeps_every_sum_finite() {
    // The densest month the store can hold: a trade per nanosecond slot
    // of a millisecond, a million per millisecond, at the largest price
    // and amount. Summed as the aggregator sums, candle by candle.
    let per_day = 86_400_000.0 * 1e6;
    let worst = MAX_TRADE_VALUE * MAX_TRADE_VALUE * per_day * 31.0;
    assert!(worst.is_finite() && worst < f64::MAX / 1e200);
    let big = trade(0, 1, MAX_TRADE_VALUE, MAX_TRADE_VALUE, Side::Buy);
    let c = candles_from_trades(Resolution::D1, &[big, Trade { id: 2, ..big }])[0];
    assert_eq!(c.non_finite(), None);
    assert_eq!(c.quote_volume, 2e30);
}

#[test]
fn a_candle_names_its_first_field_that_is_not_finite() {
    let t = trade(0, 1, 10.0, 1.0, Side::Sell);
    let mut c = candles_from_trades(Resolution::M1, &[t])[0];
    assert_eq!(c.non_finite(), None);
    c.quote_volume = f64::INFINITY;
    c.buy_volume = f64::NAN;
    assert_eq!(c.non_finite().map(|(name, _)| name), Some("quote_volume"));
}

#[test]
fn every_skip_reason_has_its_own_label() {
    let labels: std::collections::BTreeSet<&str> =
        SkipReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), SkipReason::ALL.len());
}

#[test]
fn measurements_side_tags_and_skip_labels_are_the_names_stored_and_exported() {
    let names: Vec<&str> = Resolution::ALL.iter().map(|r| r.measurement()).collect();
    assert_eq!(
        names,
        [
            "ohlc_1m", "ohlc_5m", "ohlc_15m", "ohlc_1h", "ohlc_4h", "ohlc_1d"
        ]
    );
    assert_eq!((Side::Buy.as_str(), Side::Sell.as_str()), ("buy", "sell"));
    assert_eq!(SkipReason::UnknownSide.to_string(), "unknown_side");
}

#[test]
fn nominal_lengths_count_weeks_as_seven_days_and_months_as_31() {
    const DAY: i64 = 86_400_000_000_000;
    assert_eq!(Bucketing::Fixed(5).nominal_nanos(), 5);
    assert_eq!(Bucketing::Weeks(2).nominal_nanos(), 14 * DAY);
    assert_eq!(Bucketing::Months(3).nominal_nanos(), 93 * DAY);
}

#[test]
fn an_aggregator_is_empty_only_until_something_is_added() {
    let mut agg = Aggregator::new(Resolution::M1);
    assert!(agg.is_empty());
    agg.add_trade(&trade(0, 1, 10.0, 1.0, Side::Buy));
    assert!(!agg.is_empty(), "one window, the current one");
    agg.add_trade(&trade(2 * MIN, 2, 10.0, 1.0, Side::Buy));
    assert!(!agg.is_empty(), "a second window parks the first");
}

#[test]
fn zoned_days_run_from_local_midnight_and_take_the_sources_dividing_their_boundaries() {
    use crate::zone::{LocalUnit, Zoned};
    let zoned = |name: &str| {
        Bucketing::Zoned(Zoned {
            zone: name.parse().unwrap(),
            unit: LocalUnit::Days(1),
        })
    };
    let new_york = zoned("America/New_York");
    // 2024-01-02T00:00:00Z; New York is 5 hours behind UTC in January.
    let jan2 = 1_704_153_600 * NANOS_PER_SEC;
    let hour = 60 * MIN;
    let mut agg = Aggregator::new(new_york);
    for (i, t) in [5 * hour - 1, 5 * hour, 5 * hour - 2, 29 * hour - 1]
        .into_iter()
        .enumerate()
    {
        agg.add_trade(&trade(jan2 + t, i as i64, 10.0, 1.0, Side::Buy));
    }
    let candles = agg.finish();
    let starts: Vec<i64> = candles.iter().map(|c| c.start).collect();
    assert_eq!(starts, [jan2 - 19 * hour, jan2 + 5 * hour]);
    assert_eq!(candles.iter().map(|c| c.trades).collect::<Vec<_>>(), [2, 2]);
    // Midnight in New York is a whole hour of UTC, not a whole 4 hours; in
    // Kolkata (UTC+5:30) a whole quarter hour.
    let january = jan2..jan2 + 10 * 24 * hour;
    assert_eq!(new_york.sources(january.clone())[0], Resolution::H1);
    assert_eq!(
        zoned("Asia/Kolkata").sources(january),
        [Resolution::M15, Resolution::M5, Resolution::M1]
    );
}

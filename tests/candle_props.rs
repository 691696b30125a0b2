//! Property tests for the candle arithmetic in `ohlcd::candle`.
//!
//! Every property is checked against a deliberately naive reference written here:
//! sort the trades by `(time, id)`, cut them into epoch-aligned windows with
//! `time.div_euclid(len) * len`, and take first/last/max/min/sums per window.
//! The reference shares no code with the crate (not even `floor_to`), so a bug in
//! the crate's window arithmetic or ordering cannot hide in both.
//!
//! Comparisons: `start`, `open`, `high`, `low`, `close` and `trades` must be
//! bit-exact; `volume`, `quote_volume` and `buy_volume` must agree to within a
//! relative 1e-12 (plus a negligible absolute slack for zeros), since a
//! compensated sum and a plain one may differ in the last bits.

use std::collections::BTreeMap;

use ohlcd::candle::{
    Aggregator, Candle, NANOS_PER_SEC, Resolution, Side, Trade, candles_from_candles,
    candles_from_trades,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;

const SEC: i64 = NANOS_PER_SEC;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// Relative tolerance for the float sums.
const REL_TOL: f64 = 1e-12;
/// Absolute slack for the float sums: far below the smallest amount (1e-4) or
/// notional (1e-8) generated, so it only matters for sums that are exactly zero.
const ABS_TOL: f64 = 1e-18;

/// Most trades in one generated input. Ids are built as `random * 1024 + index`,
/// which keeps them unique as long as this stays at or below 1024.
const MAX_TRADES: usize = 200;

// ---------------------------------------------------------------------------
// Naive reference
// ---------------------------------------------------------------------------

/// Candles with windows of `len` nanoseconds, computed the obvious way.
fn naive_candles(trades: &[Trade], len: i64) -> Vec<Candle> {
    let mut sorted = trades.to_vec();
    sorted.sort_by_key(|t| (t.time, t.id));
    let mut out: Vec<Candle> = Vec::new();
    for t in &sorted {
        let start = t.time.div_euclid(len) * len;
        // No side: not known to be a buy, so no buy volume.
        let buy = if t.side == Some(Side::Buy) {
            t.amount
        } else {
            0.0
        };
        match out.last_mut() {
            Some(c) if c.start == start => {
                c.high = c.high.max(t.price);
                c.low = c.low.min(t.price);
                c.close = t.price;
                c.volume += t.amount;
                c.quote_volume += t.price * t.amount;
                c.trades += 1;
                c.buy_volume += buy;
            }
            _ => out.push(Candle {
                start,
                open: t.price,
                high: t.price,
                low: t.price,
                close: t.price,
                volume: t.amount,
                quote_volume: t.price * t.amount,
                trades: 1,
                buy_volume: buy,
            }),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Comparison helpers
// ---------------------------------------------------------------------------

fn sums_agree(a: f64, b: f64) -> bool {
    (a - b).abs() <= REL_TOL * a.abs().max(b.abs()) + ABS_TOL
}

/// The bit-exact part of a candle.
fn exact_part(c: &Candle) -> (i64, u64, u64, u64, u64, i64) {
    (
        c.start,
        c.open.to_bits(),
        c.high.to_bits(),
        c.low.to_bits(),
        c.close.to_bits(),
        c.trades,
    )
}

/// `actual` equals `expected`: exact for start/OHLC/trades, within tolerance for sums.
fn assert_candles_match(
    actual: &[Candle],
    expected: &[Candle],
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        actual.len(),
        expected.len(),
        "{}: number of candles differs\nactual:   {:?}\nexpected: {:?}",
        what,
        actual,
        expected
    );
    for (a, e) in actual.iter().zip(expected) {
        prop_assert_eq!(
            exact_part(a),
            exact_part(e),
            "{}: start/open/high/low/close/trades differ\nactual:   {:?}\nexpected: {:?}",
            what,
            a,
            e
        );
        for (name, x, y) in [
            ("volume", a.volume, e.volume),
            ("quote_volume", a.quote_volume, e.quote_volume),
            ("buy_volume", a.buy_volume, e.buy_volume),
        ] {
            prop_assert!(
                sums_agree(x, y),
                "{}: {} {} vs expected {} (candle at {})\nactual:   {:?}\nexpected: {:?}",
                what,
                name,
                x,
                y,
                a.start,
                a,
                e
            );
        }
    }
    Ok(())
}

/// Every resolution computed by the cascade: 1m from trades, each coarser one
/// from its `source()`.
fn cascade(trades: &[Trade]) -> BTreeMap<Resolution, Vec<Candle>> {
    let mut levels: BTreeMap<Resolution, Vec<Candle>> = BTreeMap::new();
    for r in Resolution::ALL {
        let candles = match r.source() {
            None => candles_from_trades(r, trades),
            Some(src) => candles_from_candles(r, &levels[&src]),
        };
        levels.insert(r, candles);
    }
    levels
}

/// The trades stably sorted by time only: what InfluxDB hands back. Trades with
/// equal timestamps keep their (random) generated order, so ids still decide.
fn time_ordered(trades: &[Trade]) -> Vec<Trade> {
    let mut v = trades.to_vec();
    v.sort_by_key(|t| t.time);
    v
}

/// Seeded Fisher-Yates shuffle (xorshift64*), for values derived inside a test.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Where the generated trades live in time.
fn era_anywhere() -> impl Strategy<Value = i64> {
    prop_oneof![
        // straddling the epoch: negative and positive times in one input
        -3 * DAY..DAY,
        // before 1970 (back to mid-1960)
        -300_000_000 * SEC..-DAY,
        // present day
        1_500_000_000 * SEC..1_800_000_000 * SEC,
    ]
}

/// Only before 1970, so every time is negative.
fn era_before_1970() -> impl Strategy<Value = i64> {
    -300_000_000 * SEC..-6 * DAY
}

/// A cluster centre within five days of `era`: anywhere, or on (or one nanosecond
/// either side of) a window boundary of some resolution.
fn anchor(era: i64) -> impl Strategy<Value = i64> {
    prop_oneof![
        (0..5 * DAY).prop_map(move |o| era + o),
        (0..5 * DAY, select(Resolution::ALL.to_vec()), -1i64..=1).prop_map(move |(o, r, d)| (era
            + o)
            .div_euclid(r.nanos())
            * r.nanos()
            + d),
    ]
}

/// Distance of a trade from its cluster centre: often exactly zero, so many
/// trades share a timestamp and the `(time, id)` tie-break matters.
fn jitter() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => Just(0i64),
        1 => -2i64..=2,
        3 => -2 * MIN..2 * MIN,
        2 => -30 * MIN..30 * MIN,
        1 => -6 * HOUR..6 * HOUR,
    ]
}

/// Positive, finite, realistic prices and amounts.
fn magnitude() -> impl Strategy<Value = f64> {
    prop_oneof![
        // log-uniform over 0.0001 .. 100000
        (-4.0f64..5.0).prop_map(|e| 10f64.powf(e)),
        // whole cents, as quoted by most venues
        (1u32..10_000_000).prop_map(|c| f64::from(c) / 100.0),
    ]
}

/// A taker side, or none (trades of a schema without a side).
fn side() -> impl Strategy<Value = Option<Side>> {
    prop_oneof![4 => Just(Some(Side::Buy)), 4 => Just(Some(Side::Sell)), 1 => Just(None)]
}

/// Trades spanning several days around `era`, in random order, clustered around a
/// few anchors, with many equal timestamps and unique ids unrelated to position.
fn trades_around(era: impl Strategy<Value = i64>) -> impl Strategy<Value = Vec<Trade>> {
    era.prop_flat_map(|era| {
        (
            vec(anchor(era), 1..8),
            vec(
                (
                    any::<Index>(),
                    jitter(),
                    any::<i32>(),
                    magnitude(),
                    magnitude(),
                    side(),
                ),
                0..MAX_TRADES,
            ),
        )
    })
    .prop_map(|(anchors, raw)| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (anchor, jitter, id, price, amount, side))| Trade {
                time: anchors[anchor.index(anchors.len())] + jitter,
                id: i64::from(id) * 1024 + i as i64,
                price,
                amount,
                side,
            })
            .collect()
    })
}

fn trades() -> impl Strategy<Value = Vec<Trade>> {
    prop_oneof![
        trades_around(era_anywhere()),
        trades_around(era_before_1970())
    ]
}

/// Some trades and the same trades in another order.
fn trades_and_permutation() -> impl Strategy<Value = (Vec<Trade>, Vec<Trade>)> {
    trades().prop_flat_map(|t| (Just(t.clone()), Just(t).prop_shuffle()))
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn candles_from_trades_equals_the_naive_reference_at_every_resolution(trades in trades()) {
        let ordered = time_ordered(&trades);
        for r in Resolution::ALL {
            let expected = naive_candles(&trades, r.nanos());
            assert_candles_match(
                &candles_from_trades(r, &trades),
                &expected,
                &format!("{r}, random order"),
            )?;
            assert_candles_match(
                &candles_from_trades(r, &ordered),
                &expected,
                &format!("{r}, time order"),
            )?;
        }
    }

    #[test]
    fn cascade_from_1m_to_1d_equals_direct_aggregation_from_raw(trades in trades()) {
        let levels = cascade(&trades);
        for r in Resolution::ALL {
            let what = format!("{r} via cascade");
            assert_candles_match(&levels[&r], &naive_candles(&trades, r.nanos()), &what)?;
            assert_candles_match(&levels[&r], &candles_from_trades(r, &trades), &what)?;
        }
    }

    #[test]
    fn candles_do_not_depend_on_the_order_of_trades_or_of_finer_candles(
        (trades, shuffled) in trades_and_permutation(),
        seed in any::<u64>(),
    ) {
        for r in Resolution::ALL {
            assert_candles_match(
                &candles_from_trades(r, &shuffled),
                &candles_from_trades(r, &trades),
                &format!("{r}, shuffled trades"),
            )?;
        }
        // A cascade step fed its finer candles out of order gives the same
        // coarser candles.
        let levels = cascade(&trades);
        for r in Resolution::ALL {
            let Some(src) = r.source() else { continue };
            let mut finer = levels[&src].clone();
            shuffle(&mut finer, seed);
            assert_candles_match(
                &candles_from_candles(r, &finer),
                &levels[&r],
                &format!("{r} from shuffled {src}"),
            )?;
        }
    }

    #[test]
    fn every_trade_lands_in_exactly_one_aligned_window_and_none_is_lost_or_double_counted(
        trades in trades(),
    ) {
        let levels = cascade(&trades);
        for r in Resolution::ALL {
            let len = r.nanos();
            let direct = candles_from_trades(r, &trades);
            // Also drive the Aggregator by hand, as the engine does.
            let mut agg = Aggregator::new(r);
            prop_assert!(agg.is_empty());
            for t in &trades {
                agg.add_trade(t);
            }
            prop_assert_eq!(agg.is_empty(), trades.is_empty());
            let by_hand = agg.finish();
            for (what, candles) in [("direct", &direct), ("by hand", &by_hand), ("cascade", &levels[&r])] {
                for c in candles.iter() {
                    prop_assert_eq!(c.start % len, 0, "{} {}: misaligned start {}", r, what, c.start);
                    prop_assert!(c.trades >= 1, "{} {}: candle without trades {:?}", r, what, c);
                }
                for w in candles.windows(2) {
                    prop_assert!(
                        w[0].start < w[1].start,
                        "{} {}: starts not strictly increasing: {} then {}",
                        r, what, w[0].start, w[1].start
                    );
                }
                // Each trade is in the half-open window [start, start + len) of
                // exactly one candle, and each candle counts exactly the trades
                // in its window.
                let mut counted = vec![0i64; candles.len()];
                for t in &trades {
                    let holders: Vec<usize> = candles
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.start <= t.time && t.time < c.start + len)
                        .map(|(i, _)| i)
                        .collect();
                    prop_assert_eq!(
                        holders.len(), 1,
                        "{} {}: trade at {} is in {} windows", r, what, t.time, holders.len()
                    );
                    counted[holders[0]] += 1;
                }
                for (c, n) in candles.iter().zip(&counted) {
                    prop_assert_eq!(c.trades, *n, "{} {}: wrong count in {:?}", r, what, c);
                }
                let total: i64 = candles.iter().map(|c| c.trades).sum();
                prop_assert_eq!(total, trades.len() as i64, "{} {}: total trade count", r, what);
            }
        }
    }

    #[test]
    fn low_and_high_bound_open_close_and_every_price_in_the_window(trades in trades()) {
        let levels = cascade(&trades);
        for r in Resolution::ALL {
            let len = r.nanos();
            for (what, candles) in [("direct", &candles_from_trades(r, &trades)), ("cascade", &levels[&r])] {
                for c in candles.iter() {
                    prop_assert!(
                        c.low <= c.open && c.open <= c.high,
                        "{} {}: open outside [low, high] in {:?}", r, what, c
                    );
                    prop_assert!(
                        c.low <= c.close && c.close <= c.high,
                        "{} {}: close outside [low, high] in {:?}", r, what, c
                    );
                    prop_assert!(
                        c.buy_volume <= c.volume * (1.0 + REL_TOL) + ABS_TOL,
                        "{} {}: buy volume above volume in {:?}", r, what, c
                    );
                    // low and high are the extreme prices actually traded in the window
                    let prices: Vec<f64> = trades
                        .iter()
                        .filter(|t| c.start <= t.time && t.time < c.start + len)
                        .map(|t| t.price)
                        .collect();
                    prop_assert!(!prices.is_empty(), "{} {}: no trade in {:?}", r, what, c);
                    for p in &prices {
                        prop_assert!(
                            c.low <= *p && *p <= c.high,
                            "{} {}: price {} outside [low, high] in {:?}", r, what, p, c
                        );
                    }
                    prop_assert!(
                        prices.contains(&c.low) && prices.contains(&c.high),
                        "{} {}: low or high not a traded price in {:?}", r, what, c
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Sanity checks of the generators and the reference themselves
// ---------------------------------------------------------------------------

/// The reference agrees with a hand-computed case, including a tie on time broken
/// by id and a window before 1970.
#[test]
fn naive_reference_orders_by_time_then_id_and_floors_negative_times() {
    let t = |time, id, price, amount, side| Trade {
        time,
        id,
        price,
        amount,
        side,
    };
    let trades = [
        t(-1, 9, 3.0, 1.0, Some(Side::Buy)),
        t(-1, 2, 2.0, 1.0, Some(Side::Sell)),
        t(-MIN, 5, 4.0, 2.0, Some(Side::Buy)),
        t(0, 1, 5.0, 1.0, Some(Side::Sell)),
    ];
    let c = naive_candles(&trades, MIN);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].start, -MIN);
    assert_eq!(
        (c[0].open, c[0].high, c[0].low, c[0].close, c[0].trades),
        (4.0, 4.0, 2.0, 3.0, 3)
    );
    assert_eq!((c[0].volume, c[0].buy_volume), (4.0, 3.0));
    assert_eq!(c[0].quote_volume, 8.0 + 2.0 + 3.0);
    assert_eq!(c[1].start, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The generators do what the properties rely on: unique ids, equal timestamps
    /// are common, several coarse windows get data, positive finite magnitudes.
    #[test]
    fn generated_trades_have_unique_ids_and_positive_finite_prices(trades in trades()) {
        let mut ids: Vec<i64> = trades.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), trades.len());
        for t in &trades {
            prop_assert!(t.price.is_finite() && t.price > 0.0);
            prop_assert!(t.amount.is_finite() && t.amount > 0.0);
        }
    }
}

/// Over many generated inputs, the interesting shapes actually occur.
#[test]
fn generators_produce_ties_negative_times_and_multi_input_coarse_windows() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let (mut ties, mut negative, mut multi_4h_per_day, mut multi_1m_per_5m) = (0, 0, 0, 0);
    for _ in 0..100 {
        let trades = trades().new_tree(&mut runner).unwrap().current();
        let mut times: Vec<i64> = trades.iter().map(|t| t.time).collect();
        times.sort_unstable();
        if times.windows(2).any(|w| w[0] == w[1]) {
            ties += 1;
        }
        if times.first().is_some_and(|t| *t < 0) {
            negative += 1;
        }
        let levels = cascade(&trades);
        let per_parent = |r: Resolution| {
            let src = r.source().unwrap();
            let mut n: BTreeMap<i64, usize> = BTreeMap::new();
            for c in &levels[&src] {
                *n.entry(c.start.div_euclid(r.nanos())).or_default() += 1;
            }
            n.values().any(|k| *k > 1)
        };
        if per_parent(Resolution::D1) {
            multi_4h_per_day += 1;
        }
        if per_parent(Resolution::M5) {
            multi_1m_per_5m += 1;
        }
    }
    assert!(ties > 50, "only {ties}/100 inputs had equal timestamps");
    assert!(
        negative > 25,
        "only {negative}/100 inputs had times before 1970"
    );
    assert!(
        multi_4h_per_day > 50,
        "only {multi_4h_per_day}/100 inputs had a day with several 4h candles"
    );
    assert!(
        multi_1m_per_5m > 50,
        "only {multi_1m_per_5m}/100 inputs had a 5m window with several 1m candles"
    );
}

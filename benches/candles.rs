//! Benchmarks of the candle arithmetic in `ohlcd::candle`.
//!
//! - `trades_to_1m/time_ordered`: one day of 1,000,000 trades, in time order (as
//!   InfluxDB returns them), folded into 1m candles; throughput in trades/s.
//! - `trades_to_1m/shuffled`: the same trades in random order (the out-of-order
//!   path, where windows are parked in the map and reopened).
//! - `trades_to_1m/aggregator_by_hand`: the time-ordered trades through an
//!   `Aggregator` driven trade by trade, as the engine streams them.
//! - `cascade/1m_to_5m`: one cascade step, 1440 1m candles into 288 5m candles.
//! - `cascade/1m_to_1d`: the full cascade 1m -> 5m -> 15m -> 1h -> 4h -> 1d.
//!
//! Inputs are generated deterministically from a fixed seed, so runs compare.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ohlcd::candle::{
    Aggregator, Candle, NANOS_PER_DAY, Resolution, Side, Trade, candles_from_candles,
    candles_from_trades,
};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seed of the generated trades.
const SEED: u64 = 0x0410_c0de;
/// Trades in the benchmark day.
const TRADES_PER_DAY: usize = 1_000_000;
/// 2024-01-01T00:00:00Z in Unix nanoseconds.
const DAY_START: i64 = 1_704_067_200 * 1_000_000_000;

/// One day of trades with exponential gaps (mean 86.4 ms, so bursts and lulls)
/// and a random-walk price, sorted by time with increasing ids. Every minute of
/// the day gets trades.
fn one_day_of_trades(seed: u64) -> Vec<Trade> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mean_gap = NANOS_PER_DAY as f64 / TRADES_PER_DAY as f64;
    let mut offsets: Vec<f64> = Vec::with_capacity(TRADES_PER_DAY);
    let mut t = 0.0f64;
    for _ in 0..TRADES_PER_DAY {
        // 1 - u is in (0, 1], so the log is finite.
        let u: f64 = rng.random();
        t += -(1.0 - u).ln() * mean_gap;
        offsets.push(t);
    }
    // Stretch the arrivals onto exactly one day so none spills into the next.
    let scale = (NANOS_PER_DAY - 1) as f64 / t;
    let mut price = 42_000.0f64;
    offsets
        .into_iter()
        .enumerate()
        .map(|(i, offset)| {
            price *= 1.0 + rng.random_range(-0.0002..0.0002);
            Trade {
                time: DAY_START + (offset * scale) as i64,
                id: 1_000_000_000 + i as i64,
                price: (price * 100.0).round() / 100.0,
                amount: (rng.random_range(-4.0f64..1.0)).exp2().max(0.0001),
                side: Some(if rng.random::<bool>() {
                    Side::Buy
                } else {
                    Side::Sell
                }),
            }
        })
        .collect()
}

fn bench_trades_to_1m(c: &mut Criterion) {
    let ordered = one_day_of_trades(SEED);
    let mut shuffled = ordered.clone();
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(7));
    assert_eq!(candles_from_trades(Resolution::M1, &ordered).len(), 1440);

    let mut group = c.benchmark_group("trades_to_1m");
    group.throughput(Throughput::Elements(ordered.len() as u64));
    group.sample_size(10);
    group.bench_function("time_ordered", |b| {
        b.iter(|| candles_from_trades(Resolution::M1, black_box(&ordered)))
    });
    group.bench_function("shuffled", |b| {
        b.iter(|| candles_from_trades(Resolution::M1, black_box(&shuffled)))
    });
    group.bench_function("aggregator_by_hand", |b| {
        b.iter(|| {
            let mut agg = Aggregator::new(Resolution::M1);
            for t in black_box(&ordered) {
                agg.add_trade(t);
            }
            agg.finish()
        })
    });
    group.finish();
}

/// The full cascade from 1m candles up to 1d.
fn cascade_to_1d(m1: &[Candle]) -> Vec<Candle> {
    let mut candles = candles_from_candles(Resolution::M5, m1);
    for r in &Resolution::ALL[2..] {
        candles = candles_from_candles(*r, &candles);
    }
    candles
}

fn bench_cascade(c: &mut Criterion) {
    let m1 = candles_from_trades(Resolution::M1, &one_day_of_trades(SEED));
    assert_eq!(m1.len(), 1440);
    assert_eq!(cascade_to_1d(&m1).len(), 1);

    let mut group = c.benchmark_group("cascade");
    group.throughput(Throughput::Elements(m1.len() as u64));
    group.bench_function("1m_to_5m", |b| {
        b.iter(|| candles_from_candles(Resolution::M5, black_box(&m1)))
    });
    group.bench_function("1m_to_1d", |b| b.iter(|| cascade_to_1d(black_box(&m1))));
    group.finish();
}

/// The ingest path of `POST /api/trades` for one 10,000-trade request: parse and
/// validate the JSON body, then encode line protocol.
fn bench_ingest(c: &mut Criterion) {
    let trades: Vec<ohlcd::ingest::NewTrade> = one_day_of_trades(11)
        .iter()
        .take(10_000)
        .map(|t| ohlcd::ingest::NewTrade {
            symbol: "BTCUSD".into(),
            side: t.side.unwrap_or(Side::Sell),
            price: t.price,
            amount: t.amount,
            time_ms: t.time / 1_000_000,
            id: t.id,
        })
        .collect();
    let body = serde_json::to_vec(
        &trades
            .iter()
            .map(|t| {
                serde_json::json!({"symbol": t.symbol, "price": t.price, "amount": t.amount,
                    "side": t.side.as_str(), "timestamp": t.time_ms, "id": t.id})
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let now_ms = 2_000_000_000_000;
    let mut g = c.benchmark_group("ingest_10k");
    g.throughput(Throughput::Elements(trades.len() as u64));
    g.bench_function("parse_json", |b| {
        b.iter(|| {
            ohlcd::ingest::wire::parse_trades(
                black_box(&body),
                now_ms,
                &ohlcd::symbol::NameForm::default(),
            )
            .unwrap()
        })
    });
    g.bench_function("encode_line_protocol", |b| {
        b.iter(|| ohlcd::ingest::encode_trades(black_box(&trades)))
    });
    g.finish();
}

criterion_group!(benches, bench_trades_to_1m, bench_cascade, bench_ingest);
criterion_main!(benches);

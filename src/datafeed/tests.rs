//! The datafeed's planning against trades and candles in memory: which
//! stored resolution serves a request, where raw trades take over, what a
//! failed or damaged source falls back to. Bars are checked against an
//! oracle that folds the raw trades itself.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use crate::candle::{NANOS_PER_DAY, Side, Watermarks};
use crate::progress::StepCommit;

const MINUTE: i64 = 60_000_000_000;
const HOUR: i64 = 3_600_000_000_000;
/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200_000_000_000;
const SYMBOL: &str = "BTCUSD";

/// What the datafeed asked its source for.
#[derive(Debug, Clone, PartialEq)]
enum Read {
    Candles(Resolution, Range<i64>),
    Trades(Range<i64>),
}

/// One symbol's raw trades and stored candles, and a log of every read.
#[derive(Debug, Default)]
struct Memory {
    trades: Vec<Trade>,
    candles: HashMap<Resolution, Vec<Candle>>,
    /// Reads of these resolutions fail, as a timeout (transient) or a 400.
    failing: HashMap<Resolution, bool>,
    reads: Mutex<Vec<Read>>,
}

impl Memory {
    fn reads(&self) -> Vec<Read> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }
}

impl ChartSource for Memory {
    async fn candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
        mut on_candle: impl FnMut(Candle) + Send,
    ) -> Result<u64, InfluxError> {
        self.reads
            .lock()
            .unwrap()
            .push(Read::Candles(res, range.clone()));
        match self.failing.get(&res) {
            Some(true) => {
                return Err(InfluxError::Timeout {
                    url: "memory".into(),
                    secs: 1,
                });
            }
            Some(false) => {
                return Err(InfluxError::Status {
                    status: 400,
                    what: "query",
                    message: "damaged".into(),
                });
            }
            None => {}
        }
        let mut n = 0;
        if symbol == SYMBOL {
            for c in self.candles.get(&res).into_iter().flatten() {
                if range.contains(&c.start) {
                    on_candle(*c);
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    async fn trades(
        &self,
        symbol: &str,
        range: Range<i64>,
        mut on_trade: impl FnMut(Trade) + Send,
    ) -> Result<u64, InfluxError> {
        self.reads.lock().unwrap().push(Read::Trades(range.clone()));
        let mut n = 0;
        if symbol == SYMBOL {
            for t in self.trades.iter().filter(|t| range.contains(&t.time)) {
                on_trade(*t);
                n += 1;
            }
        }
        Ok(n)
    }

    async fn symbols(&self) -> Result<Vec<String>, InfluxError> {
        Ok(vec![SYMBOL.to_string()])
    }

    async fn symbols_with_candles(&self) -> Result<Vec<String>, InfluxError> {
        Ok(vec![SYMBOL.to_string()])
    }

    async fn first_trade_time(&self, _: &str) -> Result<Option<i64>, InfluxError> {
        Ok(self.trades.iter().map(|t| t.time).min())
    }

    async fn first_candle_time(&self, _: Resolution, _: &str) -> Result<Option<i64>, InfluxError> {
        Ok(None)
    }

    async fn last_trade_before(
        &self,
        _: &str,
        before: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        let last = self
            .trades
            .iter()
            .filter(|t| t.time < before)
            .max_by_key(|t| (t.time, t.id));
        Ok(last.map(|t| (t.time, t.price)))
    }

    async fn last_candle_before(
        &self,
        _: Resolution,
        _: &str,
        _: i64,
    ) -> Result<Option<i64>, InfluxError> {
        Ok(None)
    }

    fn keep(&self, _: Stored) -> Keep {
        Keep::Forever
    }
}

/// Bars of `len` nanoseconds folded from `trades` one window at a time,
/// without the product's aggregator.
fn oracle(trades: &[Trade], len: i64) -> Vec<Candle> {
    let mut sorted = trades.to_vec();
    sorted.sort_by_key(|t| (t.time, t.id));
    let mut bars: Vec<Candle> = Vec::new();
    for t in sorted {
        let start = t.time.div_euclid(len) * len;
        let buy = if t.side == Some(Side::Buy) {
            t.amount
        } else {
            0.0
        };
        match bars.last_mut() {
            Some(b) if b.start == start => {
                b.high = b.high.max(t.price);
                b.low = b.low.min(t.price);
                b.close = t.price;
                b.volume += t.amount;
                b.quote_volume += t.price * t.amount;
                b.trades += 1;
                b.buy_volume += buy;
            }
            _ => bars.push(Candle {
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
    bars
}

/// Two days of trades from `T0`, a few a minute with gaps, prices and
/// amounts that make sums exact in binary.
fn two_days() -> Vec<Trade> {
    let mut x: u64 = 7;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut out = Vec::new();
    let mut time = T0;
    let mut id = 0;
    while time < T0 + 2 * NANOS_PER_DAY {
        id += 1;
        out.push(Trade {
            time,
            id,
            price: 100.0 + (next() % 64) as f64,
            amount: (1 + next() % 8) as f64 / 4.0,
            side: Some(if next() % 2 == 0 {
                Side::Buy
            } else {
                Side::Sell
            }),
        });
        // 1 to 90 seconds apart: some minutes have none.
        time += (1 + next() as i64 % 90) * 1_000_000_000;
    }
    out
}

/// A source holding `trades`, and each resolution's candles below its
/// watermark, as the engine leaves them.
fn materialized(trades: Vec<Trade>, watermarks: &Watermarks) -> Memory {
    let mut candles = HashMap::new();
    for res in Resolution::ALL {
        if let Some(w) = watermarks[res.index()] {
            let w: i64 = w;
            let below: Vec<Trade> = trades.iter().filter(|t| t.time < w).copied().collect();
            candles.insert(res, oracle(&below, res.nanos()));
        }
    }
    Memory {
        trades,
        candles,
        ..Memory::default()
    }
}

/// A progress store (a SQLite file in `dir`) where `SYMBOL` has `watermarks`.
async fn store_with(dir: &tempfile::TempDir, watermarks: Watermarks) -> ProgressStore {
    let url = format!("sqlite://{}", dir.path().join("p.db").display());
    let store = ProgressStore::connect(&url).await.unwrap();
    let symbols = [SYMBOL.to_string()];
    store.ensure_symbols(&symbols, T0).await.unwrap();
    let claimed = store
        .claim_symbols(&symbols, "test", T0, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed, symbols);
    let step = StepCommit {
        symbol: SYMBOL.to_string(),
        kind: "chunk",
        range: T0..watermarks[0].unwrap(),
        watermarks: Some(watermarks),
        rows_read: 0,
        skipped: 0,
        candles: [0; 6],
        started_at: T0,
    };
    store.commit_steps("test", &[step], T0).await.unwrap();
    store
}

/// Watermarks of a symbol whose engine is behind: 1m at 40:00:30 → 40:00,
/// 5m and 15m at 40:00, 1h at 39:00, 4h at 36:00, 1d at 24:00 (hours from
/// `T0`).
fn behind() -> Watermarks {
    let at = |h: i64| Some(T0 + h * HOUR);
    [at(40), at(40), at(40), at(39), at(36), at(24)]
}

fn hours(n: i64) -> ChartResolution {
    ChartResolution::Minutes(60 * n as u32)
}

#[tokio::test]
async fn bars_come_from_the_coarsest_stored_resolution_then_finer_ones_then_raw_trades() {
    let dir = tempfile::tempdir().unwrap();
    let trades = two_days();
    let feed = Datafeed::new(
        materialized(trades.clone(), &behind()),
        store_with(&dir, behind()).await,
        10_000,
        Duration::from_secs(5),
    );
    let range = T0..T0 + 2 * NANOS_PER_DAY;

    let bars = feed.bars(SYMBOL, hours(4), range.clone()).await.unwrap();
    assert_eq!(bars, oracle(&trades, 4 * HOUR));
    // 4h candles up to their watermark, 1h (coarsest dividing 4h past 36:00)
    // up to its own, then 15m (5m is finer and no further), then raw trades.
    let mut reads = feed.source.reads();
    reads.sort_by_key(|r| match r {
        Read::Candles(_, r) | Read::Trades(r) => r.start,
    });
    assert_eq!(
        reads,
        vec![
            Read::Candles(Resolution::H4, T0..T0 + 36 * HOUR),
            Read::Candles(Resolution::H1, T0 + 36 * HOUR..T0 + 39 * HOUR),
            Read::Candles(Resolution::M15, T0 + 39 * HOUR..T0 + 40 * HOUR),
            Read::Trades(T0 + 40 * HOUR..T0 + 2 * NANOS_PER_DAY),
        ]
    );

    // Every resolution a chart asks for, exact, and no raw trade read below
    // the 1m watermark.
    for (res, len) in [
        (ChartResolution::Minutes(1), MINUTE),
        (ChartResolution::Minutes(3), 3 * MINUTE),
        (ChartResolution::Minutes(30), 30 * MINUTE),
        (hours(2), 2 * HOUR),
        (hours(12), 12 * HOUR),
        (ChartResolution::Days(1), NANOS_PER_DAY),
    ] {
        let bars = feed.bars(SYMBOL, res, range.clone()).await.unwrap();
        assert_eq!(bars, oracle(&trades, len), "{res}");
        for read in feed.source.reads() {
            if let Read::Trades(r) = read {
                assert!(
                    r.start >= T0 + 40 * HOUR,
                    "{res}: raw trades read from {r:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_source_that_comes_back_empty_or_refuses_falls_back_to_a_finer_one_and_a_timeout_does_not()
 {
    let dir = tempfile::tempdir().unwrap();
    let trades = two_days();
    let store = store_with(&dir, behind()).await;
    let range = T0..T0 + 2 * NANOS_PER_DAY;

    // The 4h measurement was dropped: its stored candles are gone.
    let mut source = materialized(trades.clone(), &behind());
    source.candles.remove(&Resolution::H4);
    let feed = Datafeed::new(source, store, 10_000, Duration::from_secs(5));
    let bars = feed.bars(SYMBOL, hours(4), range.clone()).await.unwrap();
    assert_eq!(bars, oracle(&trades, 4 * HOUR));
    let reads = feed.source.reads();
    assert!(
        reads.contains(&Read::Candles(Resolution::H1, T0..T0 + 36 * HOUR)),
        "{reads:?}"
    );

    // The server refuses the 1h query (a 400): 15m serves instead.
    let mut source = materialized(trades.clone(), &behind());
    source.failing.insert(Resolution::H1, false);
    let feed = Datafeed::new(source, feed.store, 10_000, Duration::from_secs(5));
    let bars = feed.bars(SYMBOL, hours(2), range.clone()).await.unwrap();
    assert_eq!(bars, oracle(&trades, 2 * HOUR));
    assert!(
        feed.source
            .reads()
            .contains(&Read::Candles(Resolution::M15, T0..T0 + 39 * HOUR))
    );

    // InfluxDB timed out: every other source would too; the error is the answer.
    let mut source = materialized(trades, &behind());
    source.failing.insert(Resolution::H1, true);
    let feed = Datafeed::new(source, feed.store, 10_000, Duration::from_secs(5));
    let err = feed.bars(SYMBOL, hours(2), range).await.unwrap_err();
    assert!(
        matches!(err, DatafeedError::Influx(InfluxError::Timeout { .. })),
        "{err}"
    );
    let reads = feed.source.reads();
    // 15m still serves its own segment, past the 1h watermark, but not the 1h one's.
    assert!(
        !reads.contains(&Read::Candles(Resolution::M15, T0..T0 + 39 * HOUR)),
        "fell back after a timeout: {reads:?}"
    );
}

#[tokio::test]
async fn cached_closed_candles_are_read_once_and_the_tail_again_after_a_post() {
    let dir = tempfile::tempdir().unwrap();
    let trades = two_days();
    let settings = CacheSettings {
        max_bytes: 64 << 20,
        recheck: Duration::from_secs(3600),
        tail_ttl: Duration::from_secs(3600),
    };
    let feed = Datafeed::new(
        materialized(trades.clone(), &behind()),
        store_with(&dir, behind()).await,
        10_000,
        Duration::from_secs(5),
    )
    .with_cache(settings);
    let range = T0..T0 + 2 * NANOS_PER_DAY;
    let first = feed.bars(SYMBOL, hours(1), range.clone()).await.unwrap();
    assert_eq!(first, oracle(&trades, HOUR));
    assert!(!feed.source.reads().is_empty());
    let again = feed.bars(SYMBOL, hours(1), range.clone()).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(feed.source.reads(), vec![], "a repeat read the source");
    // A posted trade makes the tail stale; the closed candles stay cached.
    feed.trades_posted(SYMBOL);
    feed.bars(SYMBOL, hours(1), range).await.unwrap();
    let reads = feed.source.reads();
    assert!(
        !reads.is_empty() && reads.iter().all(|r| matches!(r, Read::Trades(_))),
        "{reads:?}"
    );
}

#[tokio::test]
async fn countback_looks_further_back_over_a_halt_and_an_empty_range_names_the_last_bar() {
    let dir = tempfile::tempdir().unwrap();
    let at = |h: i64, price: f64| Trade {
        time: T0 + h * HOUR + 90_000_000_000,
        id: h,
        price,
        amount: 1.0,
        side: None,
    };
    // Three trades, then a halt of five days, then one.
    let trades = vec![at(0, 10.0), at(1, 11.0), at(2, 12.0), at(122, 13.0)];
    let none = [None; 6];
    let feed = Datafeed::new(
        materialized(trades.clone(), &none),
        store_with(&dir, [Some(T0); 6]).await,
        10_000,
        Duration::from_secs(5),
    );
    let to = T0 + 123 * HOUR;
    let History::Bars(bars) = feed
        .history(SYMBOL, hours(1), 0, to, Some(3))
        .await
        .unwrap()
    else {
        panic!("no bars");
    };
    assert_eq!(bars, oracle(&trades[1..], HOUR));

    // Nothing between hours 3 and 120: the nearest earlier bar is hour 2's.
    let empty = feed
        .history(SYMBOL, hours(1), T0 + 3 * HOUR, T0 + 120 * HOUR, None)
        .await
        .unwrap();
    assert_eq!(
        empty,
        History::NoData {
            next_time: Some(T0 + 2 * HOUR)
        }
    );

    // More bars than a request may return is refused, not truncated.
    let err = feed
        .history(
            SYMBOL,
            ChartResolution::Minutes(1),
            T0,
            T0 + 200 * HOUR,
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DatafeedError::BadRequest(_)), "{err}");
}

#[test]
fn a_tail_read_is_joined_only_by_requests_it_covers_and_only_while_in_flight() {
    let reads = TailReads::default();
    let day = 0..NANOS_PER_DAY;
    let TailReadTurn::Lead(lead) = reads.join_or_lead("BTC", &day, &day) else {
        panic!("nothing in flight to join");
    };
    let last_hour = NANOS_PER_DAY - HOUR..NANOS_PER_DAY;
    assert!(matches!(
        reads.join_or_lead("BTC", &last_hour, &last_hour),
        TailReadTurn::Join(_)
    ));
    // Not covered: past the read's end, or another symbol.
    let two_days = 0..2 * NANOS_PER_DAY;
    let TailReadTurn::Lead(other) = reads.join_or_lead("BTC", &two_days, &two_days) else {
        panic!("joined a read that does not cover the range");
    };
    assert!(matches!(
        reads.join_or_lead("ETH", &last_hour, &last_hour),
        TailReadTurn::Lead(_)
    ));
    // The two-day read now covers the hour too; once both are done, no one waits.
    drop(lead);
    assert!(matches!(
        reads.join_or_lead("BTC", &last_hour, &last_hour),
        TailReadTurn::Join(_)
    ));
    drop(other);
    assert!(matches!(
        reads.join_or_lead("BTC", &last_hour, &last_hour),
        TailReadTurn::Lead(_)
    ));
    assert!(reads.in_flight.lock().unwrap().is_empty());
}

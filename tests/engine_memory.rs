//! The engine's batching, chunking, live edge and repairs, driven against an
//! in-memory warehouse (the engine's narrow view of InfluxDB) and a real SQLite
//! progress file, with a manual clock. The integration suite runs the same
//! engine against a real influxd; here we can count every query and walk the
//! live edge tick by tick over hours in well under a second.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ohlcd::candle::{Candle, Resolution, Side, Skip, Trade};
use ohlcd::clock::ManualClock;
use ohlcd::config::Settings;
use ohlcd::engine::{ChunkEvent, Engine, TaskFilter, Warehouse};
use ohlcd::influx::{CandleSet, InfluxError};
use ohlcd::progress::ProgressStore;

const SEC: i64 = 1_000_000_000;
const MIN: i64 = 60 * SEC;
const DAY: i64 = 86_400 * SEC;
/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200 * SEC;

/// How many calls of each kind the engine made.
#[derive(Debug, Default)]
struct Calls {
    symbols: AtomicU64,
    first: AtomicU64,
    count: AtomicU64,
    read_trades: AtomicU64,
    read_candles: AtomicU64,
    write: AtomicU64,
}

impl Calls {
    fn total(&self) -> u64 {
        [
            &self.symbols,
            &self.first,
            &self.count,
            &self.read_trades,
            &self.read_candles,
            &self.write,
        ]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum()
    }
}

/// Trades per symbol, keyed by (time, id) like InfluxDB's point identity.
type TradeTable = BTreeMap<String, BTreeMap<(i64, i64), Trade>>;
/// Candles per (resolution, symbol), keyed by window start.
type CandleTable = HashMap<(Resolution, String), BTreeMap<i64, Candle>>;

/// Trades and candles in memory.
#[derive(Debug, Default, Clone)]
struct Memory {
    trades: Arc<Mutex<TradeTable>>,
    candles: Arc<Mutex<CandleTable>>,
    calls: Arc<Calls>,
    /// Writes wait while a test holds this for writing (a slow acknowledgement).
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl Memory {
    fn add(&self, symbol: &str, trade: Trade) {
        self.trades
            .lock()
            .unwrap()
            .entry(symbol.to_string())
            .or_default()
            .insert((trade.time, trade.id), trade);
    }

    fn stored(&self, res: Resolution, symbol: &str) -> Vec<Candle> {
        self.candles
            .lock()
            .unwrap()
            .get(&(res, symbol.to_string()))
            .map(|m| m.values().copied().collect())
            .unwrap_or_default()
    }

    fn trades_of(&self, symbol: &str) -> Vec<Trade> {
        self.trades.lock().unwrap()[symbol]
            .values()
            .copied()
            .collect()
    }
}

impl Warehouse for Memory {
    async fn check(&self) -> Result<(), InfluxError> {
        Ok(())
    }

    async fn symbols(&self) -> Result<Vec<String>, InfluxError> {
        self.calls.symbols.fetch_add(1, Ordering::SeqCst);
        Ok(self.trades.lock().unwrap().keys().cloned().collect())
    }

    async fn first_trades(
        &self,
        symbols: &[String],
        from: i64,
    ) -> Result<HashMap<String, i64>, InfluxError> {
        if symbols.is_empty() {
            return Ok(HashMap::new());
        }
        self.calls.first.fetch_add(1, Ordering::SeqCst);
        let trades = self.trades.lock().unwrap();
        Ok(symbols
            .iter()
            .filter_map(|s| {
                let t = trades.get(s)?.keys().map(|k| k.0).find(|t| *t >= from)?;
                Some((s.clone(), t))
            })
            .collect())
    }

    async fn count_trades(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<HashMap<String, u64>, InfluxError> {
        if symbols.is_empty() {
            return Ok(HashMap::new());
        }
        self.calls.count.fetch_add(1, Ordering::SeqCst);
        let trades = self.trades.lock().unwrap();
        Ok(symbols
            .iter()
            .filter_map(|s| {
                let n = trades
                    .get(s)?
                    .keys()
                    .filter(|k| range.contains(&k.0))
                    .count() as u64;
                (n > 0).then(|| (s.clone(), n))
            })
            .collect())
    }

    async fn count_minutes(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<HashMap<String, Vec<(i64, u64)>>, InfluxError> {
        if symbols.is_empty() {
            return Ok(HashMap::new());
        }
        self.calls.count.fetch_add(1, Ordering::SeqCst);
        let minute = Resolution::M1.nanos();
        let trades = self.trades.lock().unwrap();
        let mut out: HashMap<String, Vec<(i64, u64)>> = HashMap::new();
        for s in symbols {
            let mut per: std::collections::BTreeMap<i64, u64> = Default::default();
            for (t, _) in trades.get(s).into_iter().flat_map(|m| m.keys()) {
                if range.contains(t) {
                    *per.entry(t.div_euclid(minute) * minute).or_default() += 1;
                }
            }
            if !per.is_empty() {
                out.insert(s.clone(), per.into_iter().collect());
            }
        }
        Ok(out)
    }

    async fn read_trades(
        &self,
        symbols: &[String],
        range: Range<i64>,
        mut on_row: impl FnMut(&str, Result<Trade, Skip>) + Send,
    ) -> Result<u64, InfluxError> {
        if symbols.is_empty() {
            return Ok(0);
        }
        self.calls.read_trades.fetch_add(1, Ordering::SeqCst);
        let rows: Vec<(String, Trade)> = {
            let trades = self.trades.lock().unwrap();
            symbols
                .iter()
                .filter_map(|s| trades.get(s).map(|m| (s, m)))
                .flat_map(|(s, m)| {
                    m.values()
                        .filter(|t| range.contains(&t.time))
                        .map(move |t| (s.clone(), *t))
                })
                .collect()
        };
        for (s, t) in &rows {
            on_row(s, Ok(*t));
        }
        Ok(rows.len() as u64)
    }

    async fn read_candles(
        &self,
        res: Resolution,
        symbols: &[String],
        range: Range<i64>,
        mut on_candle: impl FnMut(&str, Candle) + Send,
    ) -> Result<u64, InfluxError> {
        self.calls.read_candles.fetch_add(1, Ordering::SeqCst);
        let rows: Vec<(String, Candle)> = {
            let candles = self.candles.lock().unwrap();
            symbols
                .iter()
                .filter_map(|s| candles.get(&(res, s.clone())).map(|m| (s, m)))
                .flat_map(|(s, m)| m.range(range.clone()).map(move |(_, c)| (s.clone(), *c)))
                .collect()
        };
        for (s, c) in &rows {
            on_candle(s, *c);
        }
        Ok(rows.len() as u64)
    }

    async fn write_candles(&self, sets: &[CandleSet<'_>]) -> Result<(), InfluxError> {
        self.calls.write.fetch_add(1, Ordering::SeqCst);
        let _acknowledged = self.gate.read().await;
        let mut candles = self.candles.lock().unwrap();
        for set in sets {
            let m = candles
                .entry((set.resolution, set.symbol.to_string()))
                .or_default();
            for c in set.candles {
                m.insert(c.start, *c);
            }
        }
        Ok(())
    }

    async fn delete_candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<(), InfluxError> {
        if let Some(m) = self
            .candles
            .lock()
            .unwrap()
            .get_mut(&(res, symbol.to_string()))
        {
            m.retain(|t, _| !range.contains(t));
        }
        Ok(())
    }
}

/// The reference: candles of `len` windows from trades, written out naively
/// (group by window, order by (time, id)), for windows ending by `until`.
fn naive(trades: &[Trade], len: i64, until: i64) -> Vec<(i64, f64, f64, f64, f64, i64, f64)> {
    let mut windows: BTreeMap<i64, Vec<Trade>> = BTreeMap::new();
    for t in trades {
        let start = t.time - t.time.rem_euclid(len);
        if start + len <= until {
            windows.entry(start).or_default().push(*t);
        }
    }
    windows
        .into_iter()
        .map(|(start, mut ts)| {
            ts.sort_by_key(|t| (t.time, t.id));
            let high = ts.iter().map(|t| t.price).fold(f64::MIN, f64::max);
            let low = ts.iter().map(|t| t.price).fold(f64::MAX, f64::min);
            let volume: f64 = ts.iter().map(|t| t.amount).sum();
            (
                start,
                ts[0].price,
                high,
                low,
                ts[ts.len() - 1].price,
                ts.len() as i64,
                volume,
            )
        })
        .collect()
}

fn assert_exact(mem: &Memory, symbol: &str, until: i64) {
    let trades = mem.trades_of(symbol);
    for res in Resolution::ALL {
        let expected = naive(&trades, res.nanos(), until);
        let stored = mem.stored(res, symbol);
        assert_eq!(stored.len(), expected.len(), "{symbol} {res}: candle count");
        for (c, e) in stored.iter().zip(&expected) {
            assert_eq!(
                (c.start, c.open, c.high, c.low, c.close, c.trades),
                (e.0, e.1, e.2, e.3, e.4, e.5),
                "{symbol} {res}"
            );
            assert!(
                (c.volume - e.6).abs() <= 1e-9 * e.6.max(1.0),
                "{symbol} {res} volume"
            );
        }
    }
}

/// A deterministic pseudo-random walk (xorshift), so the test needs no seed crate.
struct Walk(u64);

impl Walk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn trade(&mut self, time: i64, id: i64) -> Trade {
        Trade {
            time,
            id,
            price: 100.0 + (self.next() % 1000) as f64 / 10.0,
            amount: 0.5 + (self.next() % 100) as f64 / 100.0,
            side: Some(if self.next().is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            }),
        }
    }
}

struct Setup {
    mem: Memory,
    clock: ManualClock,
    store: ProgressStore,
    settings: Settings,
    _dir: tempfile::TempDir,
}

async fn setup(env: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut vars: Vec<(String, String)> = vec![
        (
            "OHLCD_PROGRESS__DATABASE_URL".into(),
            format!("sqlite://{}", dir.path().join("p.db").display()),
        ),
        ("OHLCD_ENGINE__SETTLE_SECS".into(), "5".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::load_with_env(None, vars).unwrap();
    let store = ProgressStore::connect(&settings.progress.database_url)
        .await
        .unwrap();
    Setup {
        mem: Memory::default(),
        clock: ManualClock::new(T0),
        store,
        settings,
        _dir: dir,
    }
}

impl Setup {
    fn engine(&self, owner: &str) -> Engine<Memory> {
        Engine::new(
            self.mem.clone(),
            self.store.clone(),
            Arc::new(self.clock.clone()),
            self.settings.engine.clone(),
            Duration::from_secs(60),
        )
        .with_owner(owner)
    }

    fn horizon(&self) -> i64 {
        let now = ohlcd::clock::Clock::now(&self.clock);
        now - 5 * SEC - (now - 5 * SEC).rem_euclid(MIN)
    }
}

fn symbol(i: usize) -> String {
    format!("S{i:04}")
}

#[tokio::test]
async fn hundreds_of_symbols_are_read_in_a_few_batched_queries_with_exact_candles() {
    let s = setup(&[("OHLCD_ENGINE__BATCH_ROWS", "20000")]).await;
    let mut walk = Walk(7);
    // 300 symbols over three days: most thin, every tenth dense, one silent
    // for a whole day in the middle.
    let mut id = 0;
    for i in 0..300 {
        let n = if i % 10 == 0 { 600 } else { 40 };
        for k in 0..n {
            id += 1;
            let mut t = T0 + (walk.next() % (3 * DAY as u64)) as i64;
            if i == 7 && (T0 + DAY..T0 + 2 * DAY).contains(&t) {
                t += DAY;
            }
            s.mem.add(&symbol(i), walk.trade(t, id * 10 + k % 10));
        }
    }
    s.clock.set(T0 + 3 * DAY + 3 * 3_600 * SEC + 7 * SEC);
    let report = s.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.symbols_run, 300);
    let until = s.horizon();
    for i in 0..300 {
        assert_exact(&s.mem, &symbol(i), until);
    }
    // 300 symbols × 4 day-chunks, read in batches of ~20,000 expected rows,
    // each day in its six 4h parts: the number of raw reads follows the rows
    // and the parts, not the symbols.
    let reads = s.mem.calls.read_trades.load(Ordering::SeqCst);
    assert!(reads <= 4 * 6 + 4, "{reads} raw reads for 300 symbols");
    for task in s.store.tasks().await.unwrap() {
        assert_eq!(
            task.watermark,
            Some(task.resolution.window_start(until)),
            "{task:?}"
        );
        assert_eq!(task.lease_owner, None);
    }

    // A caught-up pass a minute later with nothing new: a few queries in total.
    s.clock.advance(MIN);
    let before = s.mem.calls.total();
    let report = s.engine("a").tick(&TaskFilter::default()).await.unwrap();
    let calls = s.mem.calls.total() - before;
    assert_eq!((report.rows_read, report.candles_written), (0, 0));
    assert!(
        calls <= 4,
        "{calls} warehouse calls for a caught-up pass over 300 symbols"
    );
    let m1 = s
        .store
        .task(&symbol(3), Resolution::M1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m1.watermark,
        Some(s.horizon()),
        "the watermark follows the clock"
    );
}

/// Trades arrive as time passes and the engine ticks every 10 seconds for
/// six hours, across hour, 4h and day boundaries: every coarser window closes
/// mid-day from the pieces stored by earlier ticks.
#[tokio::test]
async fn ticking_every_ten_seconds_at_the_live_edge_gives_exact_candles_at_every_resolution() {
    let s = setup(&[]).await;
    let mut walk = Walk(11);
    let symbols: Vec<String> = (0..20).map(symbol).collect();
    let start = T0 + DAY - 3 * 3_600 * SEC; // 21:00, the day turns over at 03:00 in
    let mut id = 0;
    // History before the first tick: one day.
    for _ in 0..2_000 {
        id += 1;
        let t = start - DAY + (walk.next() % DAY as u64) as i64;
        let sym = &symbols[(walk.next() % 20) as usize];
        s.mem.add(sym, walk.trade(t, id));
    }
    let engine = s.engine("a");
    let mut now = start;
    while now < start + 4 * 3_600 * SEC {
        // Trades of the last 10 s, arriving now (some of them from symbols
        // that were silent until then).
        for _ in 0..(walk.next() % 6) {
            id += 1;
            let t = now - (walk.next() % (10 * SEC as u64)) as i64;
            let sym = &symbols[(walk.next() % 20) as usize];
            s.mem.add(sym, walk.trade(t, id));
        }
        s.clock.set(now);
        let report = engine.tick(&TaskFilter::default()).await.unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        now += 10 * SEC;
    }
    let until = s.horizon();
    for sym in &symbols {
        assert_exact(&s.mem, sym, until);
    }
}

#[tokio::test]
async fn a_late_trade_repairs_only_the_windows_it_touches_at_every_resolution() {
    let s = setup(&[]).await;
    let mut walk = Walk(3);
    for k in 0..3_000 {
        let t = T0 + (walk.next() % (2 * DAY as u64)) as i64;
        s.mem.add("BTCUSD", walk.trade(t, k));
    }
    s.clock.set(T0 + 2 * DAY + 13 * 3_600 * SEC);
    let engine = s.engine("a");
    engine.tick(&TaskFilter::default()).await.unwrap();
    let before: Vec<Vec<Candle>> = Resolution::ALL
        .iter()
        .map(|r| s.mem.stored(*r, "BTCUSD"))
        .collect();
    // A trade of yesterday afternoon arrives through the API.
    let late = T0 + DAY + 15 * 3_600 * SEC + 7 * MIN + 3 * SEC;
    s.mem.add(
        "BTCUSD",
        Trade {
            time: late,
            id: 999_999,
            price: 1_000.0,
            amount: 2.0,
            side: Some(Side::Buy),
        },
    );
    s.store
        .add_dirty("BTCUSD", std::slice::from_ref(&(late..late + 1)), T0)
        .await
        .unwrap();
    let reads_before = s.mem.calls.read_trades.load(Ordering::SeqCst);
    engine.tick(&TaskFilter::default()).await.unwrap();
    assert_exact(&s.mem, "BTCUSD", s.horizon());
    // The repair read the late minute raw, not the whole day.
    assert_eq!(
        s.mem.calls.read_trades.load(Ordering::SeqCst) - reads_before,
        1
    );
    // Exactly one window changed per resolution: the one holding the trade.
    for (i, res) in Resolution::ALL.iter().enumerate() {
        let after = s.mem.stored(*res, "BTCUSD");
        let changed: Vec<i64> = after
            .iter()
            .filter(|c| !before[i].contains(c))
            .map(|c| c.start)
            .collect();
        assert_eq!(changed, vec![res.window_start(late)], "{res}");
    }
    assert!(
        s.store
            .dirty_of(&["BTCUSD".into()])
            .await
            .unwrap()
            .is_empty()
    );
}

/// A symbol with a year to backfill does not hold back the others: in one
/// tick, every live symbol's step comes before the backfill's second chunk.
#[tokio::test]
async fn a_long_backfill_does_not_hold_back_the_live_symbols() {
    let s = setup(&[]).await;
    let mut walk = Walk(5);
    let now = T0 + 400 * DAY + 12 * 3_600 * SEC;
    for k in 0..2_000 {
        let t = T0 + (walk.next() % (400 * DAY as u64)) as i64;
        s.mem.add("OLD", walk.trade(t, k));
    }
    let live: Vec<String> = (0..5).map(symbol).collect();
    for (i, sym) in live.iter().enumerate() {
        // Caught up a minute ago: only the newest minute is left to do.
        s.mem.add(sym, walk.trade(now - 3 * MIN, 10_000 + i as i64));
    }
    s.clock.set(now - 2 * MIN);
    s.engine("a")
        .tick(&TaskFilter {
            symbols: live.clone(),
        })
        .await
        .unwrap();
    for (i, sym) in live.iter().enumerate() {
        s.mem
            .add(sym, walk.trade(now - 30 * SEC, 20_000 + i as i64));
    }
    s.clock.set(now);
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = events.clone();
    let engine = s.engine("a").with_observer(Arc::new(move |e: &ChunkEvent| {
        seen.lock().unwrap().push(e.symbol.clone());
    }));
    engine.tick(&TaskFilter::default()).await.unwrap();
    let events = events.lock().unwrap();
    let second_old = events
        .iter()
        .enumerate()
        .filter(|(_, s)| *s == "OLD")
        .nth(1)
        .map(|(i, _)| i)
        .expect("the backfill took more than one chunk");
    for sym in &live {
        let at = events
            .iter()
            .position(|s| s == sym)
            .expect("live symbol stepped");
        assert!(at < second_old, "{sym} waited for the backfill: {events:?}");
    }
    for sym in live.iter().chain(["OLD".to_string()].iter()) {
        assert_exact(&s.mem, sym, s.horizon());
    }
}

/// A batch's next day is read while the last day's candles are still being
/// written, and no watermark moves before the write it covers is acknowledged.
#[tokio::test]
async fn the_next_chunk_is_read_while_the_last_one_is_written_and_committed_only_after() {
    // One raw read per step: three reads are three days.
    let s = setup(&[("OHLCD_ENGINE__READ_PARALLELISM", "1")]).await;
    let mut walk = Walk(11);
    for k in 0..3_000 {
        let t = T0 + (walk.next() % (6 * DAY as u64)) as i64;
        s.mem.add("BTCUSD", walk.trade(t, k));
    }
    s.clock.set(T0 + 6 * DAY + 3_600 * SEC);
    let held = s.mem.gate.clone().write_owned().await;
    let engine = s.engine("a");
    let tick = tokio::spawn(async move { engine.tick(&TaskFilter::default()).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.mem.calls.read_trades.load(Ordering::SeqCst) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the next days were not read while the first day's write waited \
             ({} raw reads, {} writes)",
            s.mem.calls.read_trades.load(Ordering::SeqCst),
            s.mem.calls.write.load(Ordering::SeqCst),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for res in Resolution::ALL {
        let watermark = s
            .store
            .task("BTCUSD", res)
            .await
            .unwrap()
            .and_then(|t| t.watermark);
        assert_eq!(
            watermark, None,
            "{res} committed before its write was acknowledged"
        );
    }
    assert!(s.mem.stored(Resolution::M1, "BTCUSD").is_empty());
    drop(held);
    let report = tick.await.unwrap().unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_exact(&s.mem, "BTCUSD", s.horizon());
    for res in Resolution::ALL {
        let task = s.store.task("BTCUSD", res).await.unwrap().unwrap();
        assert_eq!(
            task.watermark,
            Some(res.window_start(s.horizon())),
            "{res} at the horizon"
        );
    }
}

/// `ohlcd backfill` sizes its progress bar with `pending_span`, then ticks:
/// the tick starts from the symbols and first trades just found instead of
/// asking the warehouse again (each a scan of the trades on InfluxDB 3).
#[tokio::test]
async fn a_backfill_asks_for_symbols_and_first_trades_once() {
    let s = setup(&[]).await;
    let mut walk = Walk(3);
    for i in 0..20 {
        for k in 0..50 {
            let t = T0 + (walk.next() % (2 * DAY as u64)) as i64;
            s.mem.add(&symbol(i), walk.trade(t, k));
        }
    }
    s.clock.set(T0 + 2 * DAY + 3_600 * SEC);
    let engine = s.engine("a");
    let all = TaskFilter::default();
    let pending = engine.pending_span(&all).await.unwrap();
    assert!(pending > 0);
    let report = engine.tick(&all).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let calls = |c: &AtomicU64| c.load(Ordering::SeqCst);
    assert_eq!(
        (calls(&s.mem.calls.symbols), calls(&s.mem.calls.first)),
        (1, 1),
        "symbol discoveries and first-trade queries for pending_span + tick"
    );
    for i in 0..20 {
        assert_exact(&s.mem, &symbol(i), s.horizon());
    }
    // Only the tick right after pending_span is primed: the next one looks again.
    engine.tick(&all).await.unwrap();
    assert_eq!(calls(&s.mem.calls.symbols), 2);
}

#[tokio::test]
async fn a_candle_that_is_not_finite_fails_its_own_symbol_before_anything_of_it_is_written() {
    // This warehouse hands over every trade as it is, so an overflowing one
    // reaches the aggregation: the engine's last defence must catch it.
    let s = setup(&[]).await;
    let mut walk = Walk(5);
    let symbols: Vec<String> = (0..4).map(symbol).collect();
    for (i, sym) in symbols.iter().enumerate() {
        for k in 0..200 {
            let t = T0 + (walk.next() % DAY as u64) as i64;
            s.mem.add(sym, walk.trade(t, (i * 1000 + k) as i64));
        }
    }
    let poisoned_at = T0 + 3_600 * SEC + 7;
    s.mem.add(
        &symbols[2],
        Trade {
            time: poisoned_at,
            id: 1,
            price: 1e308,
            amount: 1e308,
            side: Some(Side::Buy),
        },
    );
    s.clock.set(T0 + DAY + 6 * SEC);
    let report = s.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let (failed, why) = &report.failures[0];
    assert_eq!(failed, &symbols[2]);
    assert!(
        why.contains(&symbols[2])
            && why.contains("2024-01-01T01:00:00")
            && why.contains("quote_volume = "),
        "{why}"
    );
    for res in Resolution::ALL {
        assert!(s.mem.stored(res, &symbols[2]).is_empty(), "{res}: written");
    }
    for sym in symbols.iter().filter(|s| *s != &symbols[2]) {
        assert_exact(&s.mem, sym, T0 + DAY);
    }
}

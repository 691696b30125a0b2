//! Demo data: a reproducible random walk of trades per symbol.
//!
//! Arrival times are a Poisson process (exponential gaps) scaled so that exactly
//! the requested number of trades falls in `[from, to)`: the gaps are drawn twice
//! from the same seeded stream, once to learn their sum and once to place trades.
//! Prices follow a geometric random walk whose step grows with the square root of
//! the time gap (3 % daily volatility), rounded to a price tick; amounts are
//! log-normal; the side follows the tick direction. Same seed, same trades, same
//! ids: writing them twice overwrites the same points.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1, LogNormal, StandardNormal};

use crate::candle::{NANOS_PER_DAY, Side};
use crate::ingest::{NewTrade, time_refusal};
use crate::symbol::NameForm;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateSpec {
    /// Symbols; trades are split evenly between them.
    pub symbols: Vec<String>,
    /// Start, Unix ns (inclusive).
    pub from: i64,
    /// End, Unix ns (exclusive).
    pub to: i64,
    /// Total trades over all symbols.
    pub trades: u64,
    /// RNG seed.
    pub seed: u64,
}

impl GenerateSpec {
    /// Checks that every trade of the spec will follow the trade rules as of
    /// `now_ms`, its symbols the schema's name `form` (the API would refuse
    /// them otherwise), naming the flag at fault.
    pub fn validate(&self, now_ms: i64, form: &NameForm) -> Result<(), String> {
        if self.symbols.is_empty() {
            return Err("--symbols: give at least one symbol".into());
        }
        for s in &self.symbols {
            form.check(s).map_err(|e| format!("--symbols: {e}"))?;
        }
        if self.from >= self.to {
            return Err("--from must be before --to".into());
        }
        if self.trades == 0 {
            return Err("--trades must be at least 1".into());
        }
        // Trades fall on the milliseconds of [from, to).
        let first_ms = self.from.div_euclid(1_000_000);
        let last_ms = (self.to.div_euclid(1_000_000) - 1).max(first_ms);
        for (flag, ms) in [("--from", first_ms), ("--to", last_ms)] {
            if let Some(why) = time_refusal(ms, now_ms) {
                return Err(format!("{flag}: trades at {ms} ms would be refused: {why}"));
            }
        }
        Ok(())
    }
}

const DAILY_VOLATILITY: f64 = 0.03;

/// Trade sizes, history and live alike (median 0.05): a live bar's volume
/// then matches the history's bars when the live rate matches its density.
fn trade_amounts() -> LogNormal<f64> {
    LogNormal::new((0.05f64).ln(), 1.2).expect("valid log-normal")
}

/// The live rate, trades per second over all symbols, that continues a
/// history at its density: `day_counts` holds each symbol's trades in the
/// day before its last trade. `None` when no symbol has any.
pub fn history_rate(day_counts: &[u64]) -> Option<f64> {
    let total: u64 = day_counts.iter().sum();
    (total > 0).then(|| total as f64 / (NANOS_PER_DAY / 1_000_000_000) as f64)
}
const MS_PER_DAY: f64 = (NANOS_PER_DAY / 1_000_000) as f64;

/// An endless-until-`n` iterator of one symbol's trades, in time order.
#[derive(Debug)]
pub struct SymbolWalk {
    symbol: String,
    n: u64,
    emitted: u64,
    gaps: ChaCha8Rng,
    moves: ChaCha8Rng,
    gap_sum: f64,
    cumulative: f64,
    from_ms: i64,
    span_ms: f64,
    log_price: f64,
    decimals: i32,
    last_price: f64,
    last_ms: i64,
    amounts: LogNormal<f64>,
}

fn stream_rng(seed: u64, symbol_index: usize, stream: u64) -> ChaCha8Rng {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (symbol_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(stream);
    rng
}

/// A plausible starting price: well-known bases get their usual magnitude.
fn start_price(symbol: &str, rng: &mut ChaCha8Rng) -> f64 {
    let s = symbol.to_ascii_uppercase();
    if s.starts_with("BTC") || s.starts_with("XBT") {
        30_000.0
    } else if s.starts_with("ETH") {
        2_000.0
    } else {
        10f64.powf(rng.random_range(-1.0..3.0))
    }
}

impl SymbolWalk {
    /// The walk of `n` trades for the symbol at `index` in the spec.
    pub fn new(spec: &GenerateSpec, index: usize, n: u64) -> SymbolWalk {
        let symbol = spec.symbols[index].clone();
        // First pass over the gap stream: only its sum, so memory stays O(1).
        let mut probe = stream_rng(spec.seed, index, 1);
        let gap_sum: f64 = (0..=n).map(|_| -> f64 { Exp1.sample(&mut probe) }).sum();
        let mut moves = stream_rng(spec.seed, index, 2);
        let price = start_price(&symbol, &mut moves);
        // About six significant digits of price tick.
        let decimals = (6 - price.log10().floor() as i32).max(0);
        let from_ms = spec.from.div_euclid(1_000_000);
        SymbolWalk {
            symbol,
            n,
            emitted: 0,
            gaps: stream_rng(spec.seed, index, 1),
            moves,
            gap_sum,
            cumulative: 0.0,
            from_ms,
            span_ms: (spec.to.div_euclid(1_000_000) - from_ms) as f64,
            log_price: price.ln(),
            decimals,
            last_price: price,
            last_ms: from_ms,
            amounts: trade_amounts(),
        }
    }

    fn round_price(&self, p: f64) -> f64 {
        let scale = 10f64.powi(self.decimals);
        ((p * scale).round() / scale).max(1.0 / scale)
    }
}

impl Iterator for SymbolWalk {
    type Item = NewTrade;

    fn next(&mut self) -> Option<NewTrade> {
        if self.emitted >= self.n {
            return None;
        }
        let gap: f64 = Exp1.sample(&mut self.gaps);
        self.cumulative += gap;
        // cumulative < gap_sum (one more gap was summed), so the time stays < to.
        let offset = (self.span_ms * self.cumulative / self.gap_sum).floor() as i64;
        let time_ms = (self.from_ms + offset).max(self.last_ms);
        let dt_days = ((time_ms - self.last_ms) as f64 / MS_PER_DAY).max(1e-9);
        let z: f64 = StandardNormal.sample(&mut self.moves);
        self.log_price += z * DAILY_VOLATILITY * dt_days.sqrt();
        let price = self.round_price(self.log_price.exp());
        let side = if price > self.last_price {
            Side::Buy
        } else if price < self.last_price || self.moves.random_bool(0.5) {
            Side::Sell
        } else {
            Side::Buy
        };
        let amount = ((self.amounts.sample(&mut self.moves) * 1e6).round() / 1e6).max(1e-6);
        self.emitted += 1;
        self.last_ms = time_ms;
        self.last_price = price;
        Some(NewTrade {
            symbol: self.symbol.clone(),
            side,
            price,
            amount,
            time_ms,
            id: self.emitted as i64,
        })
    }
}

/// All symbols' trades merged in time order (ties: the earlier symbol in the
/// spec first).
#[derive(Debug)]
pub struct Generator {
    walks: Vec<SymbolWalk>,
    /// Each walk's next trade, not yet emitted.
    heads: Vec<Option<NewTrade>>,
    /// `(time, walk)` of every head: thousands of symbols (`ohlcd-bench
    /// --symbols-count`) make a linear scan per trade the bottleneck.
    order: BinaryHeap<Reverse<(i64, usize)>>,
}

impl Generator {
    /// A generator for the spec; trades are split evenly, the remainder going to
    /// the first symbols.
    pub fn new(spec: &GenerateSpec) -> Generator {
        let k = spec.symbols.len() as u64;
        let mut walks: Vec<SymbolWalk> = (0..spec.symbols.len())
            .map(|i| {
                let n = spec.trades / k + u64::from((i as u64) < spec.trades % k);
                SymbolWalk::new(spec, i, n)
            })
            .collect();
        let heads: Vec<Option<NewTrade>> = walks.iter_mut().map(Iterator::next).collect();
        let order = heads
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| Reverse((t.time_ms, i))))
            .collect();
        Generator {
            walks,
            heads,
            order,
        }
    }
}

impl Iterator for Generator {
    type Item = NewTrade;

    fn next(&mut self) -> Option<NewTrade> {
        let Reverse((_, i)) = self.order.pop()?;
        let trade = self.heads[i].take();
        self.heads[i] = self.walks[i].next();
        if let Some(t) = &self.heads[i] {
            self.order.push(Reverse((t.time_ms, i)));
        }
        trade
    }
}

/// A live random walk for the demo: trades stamped "now", continuing from each
/// symbol's last price, at about `rate` trades a second over all symbols.
/// Deterministic for a seed and the same sequence of `at` times.
#[derive(Debug)]
pub struct LiveWalk {
    symbols: Vec<(String, f64, i32)>,
    rng: ChaCha8Rng,
    amounts: LogNormal<f64>,
    last_ms: i64,
    seq: i64,
}

impl LiveWalk {
    /// A walk over `symbols` (symbol, last price or `None` for a fresh start).
    pub fn new(symbols: Vec<(String, Option<f64>)>, seed: u64) -> LiveWalk {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let symbols = symbols
            .into_iter()
            .map(|(s, last)| {
                let price = last.unwrap_or_else(|| start_price(&s, &mut rng));
                let decimals = (6 - price.log10().floor() as i32).max(0);
                (s, price.ln(), decimals)
            })
            .collect();
        LiveWalk {
            symbols,
            rng,
            amounts: trade_amounts(),
            last_ms: 0,
            seq: 0,
        }
    }

    /// `n` trades at `at_ms` (Unix ms), spread over the symbols at random.
    pub fn trades(&mut self, at_ms: i64, n: usize) -> Vec<NewTrade> {
        let dt_days = if self.last_ms == 0 {
            0.0
        } else {
            (at_ms - self.last_ms).max(0) as f64 / MS_PER_DAY
        };
        self.last_ms = at_ms;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.rng.random_range(0..self.symbols.len());
            let step: f64 = StandardNormal.sample(&mut self.rng);
            // Volatility per trade: the interval's share spread over its trades.
            let sigma = DAILY_VOLATILITY * (dt_days / n.max(1) as f64).sqrt();
            let (symbol, log_price, decimals) = &mut self.symbols[i];
            *log_price += sigma * step;
            let scale = 10f64.powi(*decimals);
            let price = ((log_price.exp() * scale).round() / scale).max(1.0 / scale);
            let amount = ((self.amounts.sample(&mut self.rng) * 1e6).round() / 1e6).max(1e-6);
            // Unique per process run: milliseconds, then a counter.
            self.seq += 1;
            out.push(NewTrade {
                symbol: symbol.clone(),
                side: if step >= 0.0 { Side::Buy } else { Side::Sell },
                price,
                amount,
                time_ms: at_ms,
                id: at_ms * 1_000 + self.seq % 1_000,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> GenerateSpec {
        GenerateSpec {
            symbols: vec!["BTCUSD".into(), "ETHUSD".into(), "SOLUSD".into()],
            from: 1_700_000_000_000_000_000,
            to: 1_700_000_000_000_000_000 + NANOS_PER_DAY,
            trades: 10_000,
            seed,
        }
    }

    #[test]
    fn exactly_the_requested_trades_in_range_in_time_order() {
        let s = spec(1);
        let trades: Vec<NewTrade> = Generator::new(&s).collect();
        assert_eq!(trades.len(), 10_000);
        assert!(trades.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
        let (from_ms, to_ms) = (s.from / 1_000_000, s.to / 1_000_000);
        assert!(trades.iter().all(|t| (from_ms..to_ms).contains(&t.time_ms)));
        assert_eq!(s.validate(to_ms, &NameForm::default()), Ok(()));
        assert!(
            trades
                .iter()
                .all(|t| t.validate(to_ms, &NameForm::default()).is_ok())
        );
        // Spread over the whole range, not bunched at the start.
        assert!(trades.last().unwrap().time_ms > to_ms - 3_600_000);
        for sym in &s.symbols {
            let n = trades.iter().filter(|t| &t.symbol == sym).count();
            assert!((3_333..=3_334).contains(&n), "{sym}: {n}");
        }
    }

    #[test]
    fn a_spec_with_trades_the_api_would_refuse_is_refused_naming_the_flag() {
        let mut s = spec(1);
        // 1999-12-31T23:59:59.999Z, then 2000-01-01T00:00:00Z.
        s.from = 946_684_799_999 * 1_000_000;
        assert!(
            s.validate(s.to / 1_000_000, &NameForm::default())
                .unwrap_err()
                .starts_with("--from: ")
        );
        s.from = 946_684_800_000 * 1_000_000;
        assert_eq!(s.validate(s.to / 1_000_000, &NameForm::default()), Ok(()));
        // The last trade may be stamped at most an hour after now.
        let s = spec(1);
        let last_ms = s.to / 1_000_000 - 1;
        assert_eq!(
            s.validate(last_ms - 3_600_000, &NameForm::default()),
            Ok(())
        );
        assert!(
            s.validate(last_ms - 3_600_001, &NameForm::default())
                .unwrap_err()
                .starts_with("--to: ")
        );
        let no_trades = GenerateSpec {
            trades: 0,
            ..spec(1)
        };
        assert!(no_trades.validate(last_ms, &NameForm::default()).is_err());
    }

    #[test]
    fn same_seed_gives_same_trades_and_another_seed_does_not() {
        let a: Vec<NewTrade> = Generator::new(&spec(7)).collect();
        let b: Vec<NewTrade> = Generator::new(&spec(7)).collect();
        let c: Vec<NewTrade> = Generator::new(&spec(8)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_live_walk_continues_from_the_last_price_with_valid_unique_trades() {
        let mut walk = LiveWalk::new(
            vec![("BTCUSD".into(), Some(41_000.0)), ("XYZ".into(), None)],
            1,
        );
        let mut ids = std::collections::HashSet::new();
        for k in 0..50 {
            let at = 1_700_000_000_000 + k * 200;
            for t in walk.trades(at, 10) {
                assert_eq!(t.time_ms, at);
                assert!(
                    t.validate(at + 1_000, &NameForm::default()).is_ok(),
                    "{t:?}"
                );
                assert!(ids.insert((t.symbol.clone(), t.id)), "duplicate id");
                if t.symbol == "BTCUSD" {
                    assert!((t.price / 41_000.0 - 1.0).abs() < 0.01, "{}", t.price);
                }
            }
        }
    }

    #[test]
    fn the_merge_takes_the_earliest_trade_and_the_first_symbol_on_ties() {
        let s = spec(5);
        // The plain merge: scan every walk, take the first with the earliest trade.
        let mut walks: Vec<std::iter::Peekable<SymbolWalk>> = (0..3)
            .map(|i| SymbolWalk::new(&s, i, 3_333 + u64::from(i == 0)).peekable())
            .collect();
        let mut naive = Vec::new();
        loop {
            let mut best: Option<(usize, i64)> = None;
            for (i, w) in walks.iter_mut().enumerate() {
                if let Some(t) = w.peek()
                    && best.is_none_or(|(_, b)| t.time_ms < b)
                {
                    best = Some((i, t.time_ms));
                }
            }
            match best {
                Some((i, _)) => naive.push(walks[i].next().unwrap()),
                None => break,
            }
        }
        let merged: Vec<NewTrade> = Generator::new(&s).collect();
        assert_eq!(merged, naive);
    }

    #[test]
    fn ids_are_unique_per_symbol() {
        let trades: Vec<NewTrade> = Generator::new(&spec(3)).collect();
        let mut keys: Vec<(&str, i64)> = trades.iter().map(|t| (t.symbol.as_str(), t.id)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), trades.len());
    }

    #[test]
    fn live_trades_are_the_size_of_history_trades() {
        // Mean amount per trade, history against live, 20,000 trades each:
        // at equal rates a live bar then holds the volume of a history bar.
        let s = GenerateSpec {
            trades: 20_000,
            ..spec(9)
        };
        let history: Vec<f64> = Generator::new(&s).map(|t| t.amount).collect();
        let mut walk = LiveWalk::new(vec![("BTCUSD".into(), Some(41_000.0))], 9);
        let live: Vec<f64> = (0..200)
            .flat_map(|k| walk.trades(1_700_000_000_000 + k * 200, 100))
            .map(|t| t.amount)
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let ratio = mean(&live) / mean(&history);
        assert!(
            (0.9..1.1).contains(&ratio),
            "live/history mean amount {ratio}"
        );
    }

    #[test]
    fn the_history_rate_is_a_days_trades_per_second() {
        assert_eq!(history_rate(&[]), None);
        assert_eq!(history_rate(&[0, 0]), None);
        assert_eq!(history_rate(&[86_400]), Some(1.0));
        assert_eq!(
            history_rate(&[11_111, 11_111, 11_112]),
            Some(33_334.0 / 86_400.0)
        );
    }
}

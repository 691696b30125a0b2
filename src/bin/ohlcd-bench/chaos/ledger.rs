//! Every trade the harness sent, by which path, and whether it was
//! acknowledged: what the verdict holds InfluxDB's raw trades against.
//!
//! Trade ids count up per symbol from 1, so within a run no two trades of a
//! symbol share an id, nor its low six digits (ohlcd stores a trade at
//! `ms * 10^6 + id mod 10^6` ns; see `ohlcd::ingest`): distinct trades never
//! land on the same InfluxDB point, and a resent trade always does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use ohlcd::candle::Side;
use ohlcd::ingest::NewTrade;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// How a trade was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Path {
    /// Written straight into InfluxDB before the daemons started.
    Seed,
    /// `POST /api/trades` through a daemon.
    Api,
    /// Written straight into InfluxDB while the daemons ran.
    Direct,
}

/// One trade sent.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub trade: NewTrade,
    pub path: Path,
    /// Stamped well behind now (minutes to days).
    pub late: bool,
    /// The write was acknowledged: it must be stored exactly once. Otherwise
    /// it may be stored once or not at all.
    pub acked: bool,
}

/// The trades sent so far.
pub(super) struct Ledger {
    pub symbols: Vec<String>,
    next_id: Vec<AtomicI64>,
    sent: Mutex<HashMap<(String, i64), Sent>>,
}

/// Lowest ids may not exceed this per symbol (see the module doc).
const MAX_IDS: i64 = 1_000_000;

impl Ledger {
    pub(super) fn new(symbols: Vec<String>) -> Ledger {
        let next_id = symbols.iter().map(|_| AtomicI64::new(1)).collect();
        Ledger {
            symbols,
            next_id,
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// A new trade of symbol `s` at `time_ms`, with a fresh id, a price
    /// around the symbol's level and a random amount and side.
    pub(super) fn make(&self, rng: &mut ChaCha8Rng, s: usize, time_ms: i64) -> NewTrade {
        let id = self.next_id[s].fetch_add(1, Ordering::Relaxed);
        assert!(id < MAX_IDS, "more than {MAX_IDS} trades of one symbol");
        let level = 10.0 + s as f64 * 7.25;
        // Two decimals for prices, six for amounts: what an exchange sends.
        let price = (level * rng.random_range(0.97..1.03) * 100.0).round() / 100.0;
        let amount = (rng.random_range(0.000_001..2.0) * 1e6_f64)
            .round()
            .max(1.0)
            / 1e6;
        NewTrade {
            symbol: self.symbols[s].clone(),
            side: if rng.random_bool(0.5) {
                Side::Buy
            } else {
                Side::Sell
            },
            price,
            amount,
            time_ms,
            id,
        }
    }

    /// Records trades about to be sent (not yet acknowledged).
    pub(super) fn record(&self, trades: &[NewTrade], path: Path, late: &[bool]) {
        let mut sent = self.sent.lock().expect("not poisoned");
        for (t, late) in trades.iter().zip(late) {
            sent.insert(
                (t.symbol.clone(), t.id),
                Sent {
                    trade: t.clone(),
                    path,
                    late: *late,
                    acked: false,
                },
            );
        }
    }

    /// Marks trades as acknowledged.
    pub(super) fn ack(&self, trades: &[NewTrade]) {
        let mut sent = self.sent.lock().expect("not poisoned");
        for t in trades {
            if let Some(s) = sent.get_mut(&(t.symbol.clone(), t.id)) {
                s.acked = true;
            }
        }
    }

    /// Every trade sent, by symbol and id.
    pub(super) fn by_symbol(&self) -> HashMap<String, HashMap<i64, Sent>> {
        let sent = self.sent.lock().expect("not poisoned");
        let mut out: HashMap<String, HashMap<i64, Sent>> = HashMap::new();
        for ((symbol, id), s) in sent.iter() {
            out.entry(symbol.clone())
                .or_default()
                .insert(*id, s.clone());
        }
        out
    }

    /// The newest trade time sent, Unix ms.
    pub(super) fn newest_ms(&self) -> Option<i64> {
        let sent = self.sent.lock().expect("not poisoned");
        sent.values().map(|s| s.trade.time_ms).max()
    }
}

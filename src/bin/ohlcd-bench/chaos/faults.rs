//! The faults: a schedule drawn from the run's seed (which fault, when, on
//! which target, for how long), injected at those times, several at once
//! where their holds overlap.
//!
//! The same seed gives the same schedule. What the system does in between
//! depends on timing, so a replay repeats the faults, not every interleaving.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ohlcd::testkit::Influxd;
use ohlcd::testkit::postgres::{StopMode, TestPostgres};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Mutex;

use super::daemons::Daemons;
use super::keeper::Keeper;
use super::proxy::Proxy;
use crate::say;

/// Kinds of fault, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// SIGKILL of a daemon, started again after `hold`.
    DaemonKill,
    /// SIGSTOP of influxd, SIGCONT after `hold`.
    InfluxFreeze,
    /// SIGKILL of influxd, started again on the same data after `hold`.
    InfluxKill,
    /// `pg_ctl stop -m fast`, started again at once.
    PgFast,
    /// `pg_ctl stop -m immediate` (no checkpoint), started again at once.
    PgImmediate,
    /// The proxy holds every byte for `hold`.
    ProxyStall,
    /// The proxy cuts the next `count` responses halfway with a reset.
    ProxyReset,
}

impl Kind {
    pub(super) const ALL: [Kind; 7] = [
        Kind::DaemonKill,
        Kind::InfluxFreeze,
        Kind::InfluxKill,
        Kind::PgFast,
        Kind::PgImmediate,
        Kind::ProxyStall,
        Kind::ProxyReset,
    ];

    /// How the report names it.
    pub(super) fn label(self) -> &'static str {
        match self {
            Kind::DaemonKill => "daemon SIGKILL + restart",
            Kind::InfluxFreeze => "influxd SIGSTOP / SIGCONT",
            Kind::InfluxKill => "influxd SIGKILL + restart",
            Kind::PgFast => "PostgreSQL restart -m fast",
            Kind::PgImmediate => "PostgreSQL restart -m immediate",
            Kind::ProxyStall => "proxy stall",
            Kind::ProxyReset => "proxy reset mid-response",
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Fault {
    /// When, from the start of the load.
    pub at: Duration,
    pub kind: Kind,
    /// Which daemon (DaemonKill).
    pub target: usize,
    /// How long it lasts (kill-to-restart, freeze, stall).
    pub hold: Duration,
    /// Responses to cut (ProxyReset).
    pub count: u64,
}

/// Faults every 2–6 s over `span`, drawn from `seed`.
pub(super) fn schedule(seed: u64, span: Duration, daemons: usize) -> Vec<Fault> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut at = Duration::ZERO;
    let mut faults = Vec::new();
    loop {
        at += Duration::from_millis(rng.random_range(2_000..6_000));
        if at >= span {
            return faults;
        }
        let kind = Kind::ALL[rng.random_range(0..Kind::ALL.len())];
        let hold = match kind {
            Kind::DaemonKill => rng.random_range(500..10_000),
            Kind::InfluxFreeze => rng.random_range(500..15_000),
            Kind::InfluxKill => rng.random_range(0..5_000),
            Kind::ProxyStall => rng.random_range(500..20_000),
            Kind::PgFast | Kind::PgImmediate | Kind::ProxyReset => 0,
        };
        faults.push(Fault {
            at,
            kind,
            target: rng.random_range(0..daemons),
            hold: Duration::from_millis(hold),
            count: rng.random_range(1..=8),
        });
    }
}

/// What the faults act on.
pub(super) struct Targets {
    pub influxd: Keeper<Influxd>,
    pub postgres: Keeper<TestPostgres>,
    pub proxy: Proxy,
    pub daemons: Daemons,
    /// Faults on influxd and on PostgreSQL queue behind each other.
    pub influx_lock: Mutex<()>,
    pub pg_lock: Mutex<()>,
    /// Injected faults per kind ([`Kind::ALL`] order).
    pub done: [AtomicU64; 7],
    /// Faults that failed to apply or to heal (a server that did not come
    /// back is a harness failure, reported).
    pub errors: std::sync::Mutex<Vec<String>>,
}

impl Targets {
    fn count(&self, kind: Kind) {
        let i = Kind::ALL.iter().position(|k| *k == kind).expect("listed");
        self.done[i].fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self, e: String) {
        say!("fault error: {e}");
        self.errors.lock().expect("not poisoned").push(e);
    }

    /// Applies one fault and heals it after its hold.
    pub(super) async fn inject(self: &Arc<Self>, f: Fault) {
        match f.kind {
            Kind::DaemonKill => {
                let slot = &self.daemons.slots[f.target];
                let _held = slot.fault_lock.lock().await;
                if self.daemons.kill(f.target).await {
                    self.count(f.kind);
                }
                tokio::time::sleep(f.hold).await;
                if let Err(e) = self.daemons.start(f.target).await {
                    self.error(format!("cannot restart daemon {}: {e:#}", slot.name));
                }
            }
            Kind::InfluxFreeze => {
                let _held = self.influx_lock.lock().await;
                let froze = self.influxd.run(|i| i.freeze()).await;
                self.count(f.kind);
                tokio::time::sleep(f.hold).await;
                if froze.is_ok() {
                    let _ = self.influxd.run(|i| i.thaw()).await;
                }
            }
            Kind::InfluxKill => {
                let _held = self.influx_lock.lock().await;
                let _ = self.influxd.run(|i| i.stop()).await;
                self.count(f.kind);
                tokio::time::sleep(f.hold).await;
                self.restart_influxd().await;
            }
            Kind::PgFast | Kind::PgImmediate => {
                let _held = self.pg_lock.lock().await;
                let mode = if f.kind == Kind::PgFast {
                    StopMode::Fast
                } else {
                    StopMode::Immediate
                };
                self.count(f.kind);
                match self.postgres.run(move |pg| pg.restart(mode)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => self.error(format!("PostgreSQL restart: {e}")),
                    Err(e) => self.error(format!("PostgreSQL restart: {e:#}")),
                }
            }
            Kind::ProxyStall => {
                self.count(f.kind);
                self.proxy.stall(f.hold);
            }
            Kind::ProxyReset => {
                self.count(f.kind);
                self.proxy.arm_resets(f.count);
            }
        }
    }

    async fn restart_influxd(&self) {
        // A start can lose a port race or time out on a loaded machine:
        // try a few times before calling it a failure.
        for attempt in 1..=3 {
            match self.influxd.run(|i| i.relaunch()).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) if attempt == 3 => self.error(format!("influxd did not come back: {e}")),
                Err(e) => return self.error(format!("influxd keeper: {e:#}")),
                Ok(Err(_)) => {}
            }
        }
    }

    /// Faults injected per kind.
    pub(super) fn counts(&self) -> Vec<(Kind, u64)> {
        Kind::ALL
            .iter()
            .zip(&self.done)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Injects `plan` from now on (each fault at its time, on a task of its
/// own), and returns once every fault has been applied and healed.
pub(super) async fn run(targets: Arc<Targets>, plan: Vec<Fault>) {
    let start = tokio::time::Instant::now();
    let mut running = Vec::new();
    for f in plan {
        tokio::time::sleep_until(start + f.at).await;
        say!(
            "fault: {}{}",
            f.kind.label(),
            match f.kind {
                Kind::DaemonKill => format!(
                    " (daemon {}, down {:.1}s)",
                    targets.daemons.slots[f.target].name,
                    f.hold.as_secs_f64()
                ),
                Kind::InfluxFreeze | Kind::ProxyStall | Kind::InfluxKill =>
                    format!(" ({:.1}s)", f.hold.as_secs_f64()),
                Kind::ProxyReset => format!(" (next {} responses)", f.count),
                _ => String::new(),
            }
        );
        let t = targets.clone();
        running.push(tokio::spawn(async move { t.inject(f).await }));
    }
    for r in running {
        let _ = r.await;
    }
    // Whatever the proxy still holds or has armed goes.
    targets.proxy.heal();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_every_few_seconds_over_every_kind() {
        let span = Duration::from_secs(1_800);
        let a = schedule(42, span, 3);
        assert_eq!(a, schedule(42, span, 3));
        assert_ne!(a, schedule(43, span, 3));
        assert!(a.iter().all(|f| f.at < span && f.target < 3));
        for pair in a.windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!((Duration::from_secs(2)..Duration::from_secs(6)).contains(&gap));
        }
        for kind in Kind::ALL {
            assert!(a.iter().any(|f| f.kind == kind), "{kind:?} never drawn");
        }
    }
}

//! Crash points for fault-injection tests. When `OHLCD_FAILPOINT=<name>[:<n>]` is
//! set, the `n`-th (default first) arrival at point `<name>` prints
//! `failpoint <name> reached` on stderr and then waits forever, so a test can
//! SIGKILL the process at exactly that moment. Unset (production), a point costs
//! one cached lookup.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static CONFIG: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn config() -> &'static Option<(String, u64)> {
    CONFIG.get_or_init(|| {
        let v = std::env::var("OHLCD_FAILPOINT").ok()?;
        let (name, n) = match v.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((name, n.max(1)))
    })
}

/// Stops here forever if this is the configured point and arrival.
pub async fn hit(name: &str) {
    if let Some((point, n)) = config()
        && point == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("failpoint {name} reached");
        std::future::pending::<()>().await;
    }
}

//! Bounds on the work requests may cause: how many query InfluxDB at once, and
//! how many of those may be expensive.
//!
//! Every request that queries InfluxDB for a client takes one of
//! `server.max_queries` slots; one asking for more than `server.heavy_query_bars`
//! bars (or trades) must also hold one of `server.max_heavy_queries` heavy slots,
//! fewer than `max_queries`. So a flood of long-range history requests occupies
//! at most the heavy slots while cheap requests (the chart's `countback=2`
//! polls) keep the rest, and InfluxDB never sees more than `max_queries` of our
//! queries at once. Waiting is first come, first served, and bounded by
//! `server.queue_timeout_secs`, after which the request gets a 503; the number
//! of waiting requests is bounded by `server.max_connections`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerSettings;

/// Query slots shared by every request handler of one server.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    all: Arc<Semaphore>,
    heavy: Arc<Semaphore>,
    heavy_bars: u64,
    wait: Duration,
}

/// Held while a request queries InfluxDB; frees its slots on drop.
#[derive(Debug)]
pub struct Admission {
    _all: OwnedSemaphorePermit,
    _heavy: Option<OwnedSemaphorePermit>,
}

/// No slot became free within the queue timeout.
#[derive(Debug)]
pub struct Busy {
    /// Whether the request waited for a heavy slot.
    pub heavy: bool,
}

impl warp::reject::Reject for Busy {}

impl QueryLimits {
    /// Slots as configured in `server`.
    pub fn new(server: &ServerSettings) -> QueryLimits {
        QueryLimits {
            all: Arc::new(Semaphore::new(server.max_queries)),
            heavy: Arc::new(Semaphore::new(server.max_heavy_queries)),
            heavy_bars: server.heavy_query_bars,
            wait: Duration::from_secs(server.queue_timeout_secs),
        }
    }

    /// Whether a request for `bars` bars (or trades) counts as expensive.
    pub fn is_heavy(&self, bars: u64) -> bool {
        bars > self.heavy_bars
    }

    /// Waits for the slots a request for `bars` bars needs.
    pub async fn admit(&self, bars: u64) -> Result<Admission, Busy> {
        let heavy = self.is_heavy(bars);
        let acquire = async {
            // Heavy slot first: a heavy request waiting for its turn must not
            // sit on one of the general slots the cheap requests need.
            let heavy_permit = if heavy {
                Some(self.heavy.clone().acquire_owned().await.ok()?)
            } else {
                None
            };
            let all = self.all.clone().acquire_owned().await.ok()?;
            Some(Admission {
                _all: all,
                _heavy: heavy_permit,
            })
        };
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Some(admission)) => Ok(admission),
            _ => {
                ::metrics::counter!("ohlcd_http_queries_refused_total", "heavy" => heavy.to_string())
                    .increment(1);
                Err(Busy { heavy })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(all: usize, heavy: usize) -> QueryLimits {
        let mut s = crate::config::Settings::load_with_env(None, Vec::new())
            .unwrap()
            .server;
        s.max_queries = all;
        s.max_heavy_queries = heavy;
        s.heavy_query_bars = 100;
        // Short real waits instead of paused time (tokio's test-util is not enabled).
        QueryLimits {
            wait: Duration::from_millis(50),
            ..QueryLimits::new(&s)
        }
    }

    #[tokio::test]
    async fn heavy_requests_cannot_take_the_slots_of_cheap_ones() {
        let l = limits(3, 1);
        let _h1 = l.admit(1000).await.unwrap();
        // The second heavy request waits for the heavy slot and gives up.
        assert!(l.admit(1000).await.unwrap_err().heavy);
        // Cheap requests still find the two remaining slots.
        let _c1 = l.admit(10).await.unwrap();
        let _c2 = l.admit(100).await.unwrap();
        assert!(!l.admit(1).await.unwrap_err().heavy);
    }

    #[tokio::test]
    async fn a_freed_slot_admits_the_next_request_in_line() {
        let l = limits(2, 1);
        let h = l.admit(1000).await.unwrap();
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.admit(5000).await.is_ok() }
        });
        tokio::task::yield_now().await;
        drop(h);
        assert!(waiting.await.unwrap());
    }
}

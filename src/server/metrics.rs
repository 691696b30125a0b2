//! Prometheus metrics: one process-wide recorder (the `metrics` facade), rendered
//! by `GET /metrics`. Engine and HTTP layer record through the facade macros.
//!
//! Also what the alert rules (deploy/prometheus/) need beyond counting: the
//! build (`ohlcd_build_info`), whether InfluxDB and the progress store answer
//! ([`watch_dependencies`]), and a periodic log line summing up the requests
//! served ([`log_request_summaries`]), so the log does not carry a line per
//! request.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::candle::Resolution;
use crate::influx::InfluxClient;
use crate::progress::ProgressStore;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds; from 1 ms to 1 min, roughly ×2.5 per bucket.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
];

/// Installs the recorder on first use and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; then ours just stays empty.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        register_at_start();
        handle
    })
}

/// Series that exist from the start: the build, and counters alerts take
/// `increase()` of. A counter first seen at 1 has no earlier sample to grow
/// from, so Prometheus would miss the first failure.
fn register_at_start() {
    metrics::gauge!(
        "ohlcd_build_info",
        "version" => crate::build_info::VERSION,
        "commit" => crate::build_info::COMMIT
    )
    .set(1.0);
    metrics::counter!("ohlcd_task_failures_total").increment(0);
    metrics::counter!("ohlcd_push_streams_refused_total").increment(0);
    for reason in crate::candle::SkipReason::ALL {
        metrics::counter!("ohlcd_trades_skipped_total", "reason" => reason.as_str()).increment(0);
    }
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    handle().render()
}

/// The type line of `ohlcd_task_lag_seconds`, written before its first line.
pub const TASK_LAG_TYPE: &str = "# TYPE ohlcd_task_lag_seconds gauge\n";

/// Appends one `ohlcd_task_lag_seconds{symbol,resolution}` line to `buf`,
/// as the registry would render that gauge (with the exporter's own label
/// escaping), without keeping it in the registry.
pub fn write_task_lag(buf: &mut String, symbol: &str, res: Resolution, lag_secs: f64) {
    use std::fmt::Write;
    let symbol = metrics_exporter_prometheus::formatting::sanitize_label_value(symbol);
    let _ = writeln!(
        buf,
        "ohlcd_task_lag_seconds{{symbol=\"{symbol}\",resolution=\"{}\"}} {lag_secs}",
        res.name()
    );
}

/// Route label for a request path; unknown paths share one label so scanners
/// cannot blow up the number of series.
fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/udf/config" => "/udf/config",
        "/udf/symbols" => "/udf/symbols",
        "/udf/search" => "/udf/search",
        "/udf/history" => "/udf/history",
        "/udf/time" => "/udf/time",
        "/api/ohlc" => "/api/ohlc",
        "/api/trades" => "/api/trades",
        "/api/progress" => "/api/progress",
        "/api/live" => "/api/live",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        p if p.starts_with("/static/") => "/static",
        p if p.starts_with("/lib/") => "/lib",
        _ => "other",
    }
}

/// Logs one request at debug, counts it by route and status, and adds it to
/// the next request summary.
pub fn record_request(info: warp::log::Info<'_>) {
    handle();
    let route = route_label(info.path());
    let status = info.status().as_u16();
    let elapsed = info.elapsed();
    SUMMARY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(status, elapsed);
    tracing::debug!(
        target: "ohlcd::http",
        method = %info.method(),
        path = info.path(),
        status,
        elapsed_ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );
    metrics::counter!("ohlcd_http_requests_total", "route" => route, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("ohlcd_http_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
}

/// How often [`watch_dependencies`] checks InfluxDB and the progress store.
pub const DEPENDENCY_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How long one check may take before the dependency counts as down: the
/// same bound as `/healthz`'s.
const DEPENDENCY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks once whether InfluxDB (the database included, as `/healthz` does)
/// and the progress store answer, and sets `ohlcd_influx_up` and
/// `ohlcd_progress_store_up` to 1 or 0. Returns (influx, store).
pub async fn check_dependencies(influx: &InfluxClient, store: &ProgressStore) -> (bool, bool) {
    let influx = influx.fail_fast(DEPENDENCY_CHECK_TIMEOUT.as_secs(), 0);
    let (influx_ok, store_ok) = tokio::join!(influx.check_database(), async {
        tokio::time::timeout(DEPENDENCY_CHECK_TIMEOUT, store.ping()).await
    });
    let (influx_ok, store_ok) = (influx_ok.is_ok(), matches!(store_ok, Ok(Ok(()))));
    handle();
    metrics::gauge!("ohlcd_influx_up").set(f64::from(u8::from(influx_ok)));
    metrics::gauge!("ohlcd_progress_store_up").set(f64::from(u8::from(store_ok)));
    (influx_ok, store_ok)
}

/// Runs [`check_dependencies`] now and every [`DEPENDENCY_CHECK_INTERVAL`],
/// forever: a scrape reads the last result instead of waiting on a hung
/// InfluxDB.
pub async fn watch_dependencies(influx: InfluxClient, store: ProgressStore) {
    let mut every = tokio::time::interval(DEPENDENCY_CHECK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        check_dependencies(&influx, &store).await;
    }
}

/// Requests served since the last summary, process-wide like the metrics.
static SUMMARY: Mutex<RequestWindow> = Mutex::new(RequestWindow::new());

/// Logs one INFO line every `every` summing up the requests served in that
/// time ([`RequestSummary`]), and nothing when there were none. Forever.
pub async fn log_request_summaries(every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let summary = SUMMARY.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = summary {
            tracing::info!(
                target: "ohlcd::http",
                requests = s.requests,
                errors = s.errors,
                rejected = s.rejected,
                // Up to the next 0.01 ms: it is an upper bound already.
                p99_ms = (s.p99_ms * 100.0).ceil() / 100.0,
                secs = every.as_secs(),
                "requests served"
            );
        }
    }
}

/// Latency buckets of a [`RequestWindow`]: bucket `i` holds durations up to
/// `BUCKET_GROWTH^i` µs, so a quantile read from them is at most 10 % high.
/// 240 buckets reach past two hours.
const BUCKETS_PER_WINDOW: usize = 240;
const BUCKET_GROWTH: f64 = 1.1;

/// Requests counted since the last [`RequestWindow::take`].
#[derive(Debug)]
pub struct RequestWindow {
    requests: u64,
    errors: u64,
    rejected: u64,
    latency: [u32; BUCKETS_PER_WINDOW],
}

/// What one summary line says.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSummary {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered with a 5xx.
    pub errors: u64,
    /// Of those, answered with a 4xx.
    pub rejected: u64,
    /// 99th percentile of the time to answer, milliseconds (rounded up to
    /// a bucket bound: at most 10 % high).
    pub p99_ms: f64,
}

impl RequestWindow {
    /// An empty window.
    pub const fn new() -> RequestWindow {
        RequestWindow {
            requests: 0,
            errors: 0,
            rejected: 0,
            latency: [0; BUCKETS_PER_WINDOW],
        }
    }

    /// Counts one request answered with `status` after `elapsed`.
    pub fn record(&mut self, status: u16, elapsed: Duration) {
        self.requests += 1;
        match status {
            500..=599 => self.errors += 1,
            400..=499 => self.rejected += 1,
            _ => {}
        }
        let micros = elapsed.as_secs_f64() * 1e6;
        let bucket = if micros <= 1.0 {
            0
        } else {
            (micros.ln() / BUCKET_GROWTH.ln()).ceil() as usize
        };
        let slot = &mut self.latency[bucket.min(BUCKETS_PER_WINDOW - 1)];
        *slot = slot.saturating_add(1);
    }

    /// The summary of the requests counted so far, and an empty window
    /// again; `None` if there were none.
    pub fn take(&mut self) -> Option<RequestSummary> {
        let window = std::mem::take(self);
        if window.requests == 0 {
            return None;
        }
        // The smallest bucket bound with at least 99 % of the requests at or
        // below it.
        let needed = (window.requests as f64 * 0.99).ceil() as u64;
        let mut seen = 0u64;
        let mut bucket = BUCKETS_PER_WINDOW - 1;
        for (i, n) in window.latency.iter().enumerate() {
            seen += u64::from(*n);
            if seen >= needed {
                bucket = i;
                break;
            }
        }
        Some(RequestSummary {
            requests: window.requests,
            errors: window.errors,
            rejected: window.rejected,
            p99_ms: BUCKET_GROWTH.powi(bucket as i32) / 1e3,
        })
    }
}

impl Default for RequestWindow {
    fn default() -> Self {
        RequestWindow::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_lag_line_is_what_the_registry_renders_for_the_same_gauge() {
        // The oracle: the exporter itself, on a recorder of its own.
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let cases = [
            ("BTCUSD", Resolution::M1, 12.5),
            ("odd\"sym\\bol", Resolution::D1, 0.0),
        ];
        metrics::with_local_recorder(&recorder, || {
            for (symbol, res, lag) in cases {
                metrics::gauge!("ohlcd_task_lag_seconds", "symbol" => symbol, "resolution" => res.name())
                    .set(lag);
            }
        });
        let rendered = handle.render();
        for (symbol, res, lag) in cases {
            let mut line = String::new();
            write_task_lag(&mut line, symbol, res, lag);
            assert!(rendered.contains(&line), "{line:?} not in {rendered:?}");
        }
        assert!(rendered.contains(TASK_LAG_TYPE), "{rendered:?}");
    }

    #[test]
    fn a_request_summary_counts_errors_and_rejections_and_is_empty_after() {
        let mut w = RequestWindow::new();
        assert_eq!(w.take(), None, "no requests, no summary");
        for status in [200, 204, 304, 400, 404, 500, 503, 502] {
            w.record(status, Duration::from_millis(3));
        }
        let s = w.take().unwrap();
        assert_eq!((s.requests, s.errors, s.rejected), (8, 3, 2));
        assert_eq!(w.take(), None, "taking empties the window");
    }

    #[test]
    fn the_p99_is_the_exact_one_or_at_most_ten_percent_above() {
        // The oracle: sort the durations and take the one at rank ceil(0.99 n).
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for n in [1usize, 2, 99, 100, 101, 1000, 5000] {
            let mut w = RequestWindow::new();
            let mut micros = Vec::with_capacity(n);
            for _ in 0..n {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // 2 µs to about 20 s, spread over every order of magnitude.
                let us = 10f64.powf(0.3 + (rng % 10_000) as f64 / 10_000.0 * 7.0);
                micros.push(us);
                w.record(200, Duration::from_secs_f64(us / 1e6));
            }
            micros.sort_by(f64::total_cmp);
            let exact_ms = micros[(n as f64 * 0.99).ceil() as usize - 1] / 1e3;
            let p99 = w.take().unwrap().p99_ms;
            assert!(
                p99 >= exact_ms * (1.0 - 1e-9) && p99 <= exact_ms * 1.1 * (1.0 + 1e-9),
                "n={n}: p99 {p99} ms, exact {exact_ms} ms"
            );
        }
    }

    #[test]
    fn durations_beyond_the_last_bucket_land_in_it() {
        let mut w = RequestWindow::new();
        w.record(200, Duration::from_secs(100_000));
        let p99 = w.take().unwrap().p99_ms;
        assert!(p99 > 3_600_000.0, "{p99}");
    }
}

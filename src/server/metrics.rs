//! Prometheus metrics: one process-wide recorder (the `metrics` facade), rendered
//! by `GET /metrics`. Engine and HTTP layer record through the facade macros.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::candle::Resolution;

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
        handle
    })
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

/// Logs one request with tracing and counts it by route and status.
pub fn record_request(info: warp::log::Info<'_>) {
    handle();
    let route = route_label(info.path());
    let status = info.status().as_u16();
    let elapsed = info.elapsed();
    tracing::info!(
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
}

//! Operating ohlcd: the alert rules in a real Prometheus (Debian's
//! `prometheus`) scraping a real `ohlcd run`, the Grafana dashboard's queries
//! against both, JSON logs, the version everywhere, the live feed's rate.
//! (`promtool check/test rules` and the Debian package run from scripts/test.)

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ohlcd::candle::NANOS_PER_SEC;
use ohlcd::clock::{Clock, SystemClock};
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::NewTrade;
use serde_json::Value;

use crate::helpers::{Daemon, KillOnDrop, TestApp, free_port};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/ohlcd-rules.yml"
);
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/ohlcd.json");
const OPERATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md");

/// The 1m lag above which OhlcdCandlesLagging fires (its expression says
/// `> 180`; checked in the test that uses it).
const LAG_ALERT_SECS: f64 = 180.0;

/// `count` random-walk trades of `symbols` over the `minutes` before two
/// minutes ago (all of them in closed minutes).
async fn recent_trades(app: &TestApp, symbols: &[&str], minutes: i64, count: u64) {
    let now = SystemClock.now();
    let to = now - 120 * NANOS_PER_SEC;
    let spec = GenerateSpec {
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        from: to - minutes * 60 * NANOS_PER_SEC,
        to,
        trades: count,
        seed: 25,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;
}

/// An `ohlcd run` of `app` with `env`, ticking every second, on a free
/// port, once healthy.
async fn start(app: &TestApp, env: &[(&str, &str)]) -> Daemon {
    let mut env = env.to_vec();
    env.push(("OHLCD_ENGINE__CRON", "* * * * * *"));
    Daemon::start(app, &env).await
}

/// Polls until its `/metrics` holds a 1m lag line (its first tick is
/// done).
async fn wait_for_lag(daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon
        .metrics()
        .await
        .lines()
        .any(|l| l.starts_with("ohlcd_task_lag_seconds") && l.contains("resolution=\"1m\""))
    {
        assert!(
            Instant::now() < deadline,
            "no 1m lag in /metrics: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Prometheus server (Debian's `prometheus`) scraping one daemon every
/// second and evaluating `rules` every second; killed on drop.
struct Prometheus {
    _child: KillOnDrop,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(daemon: &Daemon, rules: Option<&Path>) -> Prometheus {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!(
                "prometheus not found: install Debian's `prometheus` package (scripts/test does)"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let rule_files = rules
            .map(|r| format!("rule_files:\n  - {}\n", r.display()))
            .unwrap_or_default();
        // Scrapes never wait on InfluxDB (/metrics reads only the progress
        // store), so a 1 s timeout holds while influxd is frozen.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             {rule_files}\
             scrape_configs:\n  - job_name: ohlcd\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            daemon.port
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let child = KillOnDrop::spawn(
            Command::new(binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http
            .get(format!("{url}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "prometheus did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prometheus {
            _child: child,
            url,
            _dir: dir,
        }
    }

    /// `GET /api/v1/<path>`'s `data`, asserting the call succeeded.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let body: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// The result vector of an instant query.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", expr)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls until `up{job="ohlcd"}` has been 1 in `scrapes` scrapes.
    async fn wait_for_scrapes(&self, scrapes: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let q = format!("count_over_time(up{{job=\"ohlcd\"}}[5m]) >= {scrapes} and up == 1");
        while self.query(&q).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "prometheus did not scrape ohlcd {scrapes} times"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The state (`pending`, `firing`) of alert `name`, if active.
    async fn alert_state(&self, name: &str) -> Option<String> {
        let data = self.api("alerts", &[]).await;
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap().to_string())
    }

    /// Polls until alert `name` is in `state` (`None`: inactive), failing
    /// after `timeout` with `context()` in the message.
    async fn wait_for_alert(
        &self,
        name: &str,
        state: Option<&str>,
        timeout: Duration,
        context: impl AsyncFn() -> String,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.alert_state(name).await;
            if now.as_deref() == state {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} is {now:?}, not {state:?}, after {timeout:?}: {}",
                    context().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The first executable called `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The rules file with every `for:` duration set to `for_`; asserts that
/// nothing else differs, line by line, so every expression is the shipped one.
fn rules_with_for(for_: &str) -> String {
    let original = std::fs::read_to_string(RULES).unwrap();
    let copy: String = original
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: {for_}\n", &l[..l.len() - l.trim_start().len()]),
            None => format!("{l}\n"),
        })
        .collect();
    let changed: Vec<(&str, &str)> = original
        .lines()
        .zip(copy.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(original.lines().count(), copy.lines().count());
    assert!(!changed.is_empty(), "no `for:` rewritten");
    for (a, b) in changed {
        assert!(
            a.trim_start().starts_with("for: ") && b.trim_start().starts_with("for: "),
            "only `for:` lines may differ: {a:?} -> {b:?}"
        );
    }
    copy
}

/// GitHub's anchor of a markdown heading: lower case, punctuation dropped,
/// spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading of docs/operations.md (code blocks left out).
fn operations_anchors() -> BTreeSet<String> {
    let mut in_code = false;
    std::fs::read_to_string(OPERATIONS)
        .unwrap()
        .lines()
        .filter(|l| {
            if l.starts_with("```") {
                in_code = !in_code;
            }
            !in_code
        })
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect()
}

#[tokio::test]
async fn the_lag_alert_goes_pending_then_firing_while_influxdb_is_frozen_and_resolves_after_the_thaw()
 {
    let app = TestApp::spawn().await;
    recent_trades(&app, &["BTCUSD"], 30, 2_000).await;
    // settle_secs = 100 puts the healthy 1m lag between 100 s and 161 s
    // (settle + a minute + a 1 s tick), below the rule's 180 s, so a stall
    // crosses it within about a minute instead of three.
    let daemon = start(&app, &[("OHLCD_ENGINE__SETTLE_SECS", "100")]).await;
    wait_for_lag(&daemon).await;

    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("ohlcd-rules.yml");
    std::fs::write(&rules, rules_with_for("10s")).unwrap();
    assert!(
        std::fs::read_to_string(RULES)
            .unwrap()
            .contains(r#"ohlcd_task_lag_seconds{resolution="1m"} > 180"#),
        "the threshold this test is built around"
    );
    let prometheus = Prometheus::start(&daemon, Some(&rules)).await;
    prometheus.wait_for_scrapes(3).await;

    // Every rule loaded, each with a runbook in docs/operations.md.
    let anchors = operations_anchors();
    let groups = prometheus.api("rules", &[]).await;
    let loaded: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), 8, "{groups}");
    for rule in &loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
        let runbook = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        let target = runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{}: runbook_url {runbook:?}", rule["name"]));
        assert!(
            anchors.contains(target),
            "{}: no heading #{target} in docs/operations.md",
            rule["name"]
        );
    }

    // Healthy: the lag is below the threshold and nothing is active.
    let lag = prometheus
        .query(r#"max(ohlcd_task_lag_seconds{resolution="1m"})"#)
        .await;
    let lag: f64 = lag[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(lag < LAG_ALERT_SECS, "healthy lag {lag} s");
    let active = prometheus.api("alerts", &[]).await;
    assert_eq!(active["alerts"], serde_json::json!([]), "{active}");

    app.server.freeze();
    let context = async || {
        let lag = prometheus
            .query(r#"ohlcd_task_lag_seconds{resolution="1m"}"#)
            .await;
        format!("lag {lag:?}; ohlcd log: {}", daemon.log())
    };
    // Pending first (the expression holds), firing 10 s later.
    prometheus
        .wait_for_alert(
            "OhlcdCandlesLagging",
            Some("pending"),
            Duration::from_secs(240),
            context,
        )
        .await;
    prometheus
        .wait_for_alert(
            "OhlcdCandlesLagging",
            Some("firing"),
            Duration::from_secs(60),
            context,
        )
        .await;
    // The dependency check saw it too.
    prometheus
        .wait_for_alert(
            "OhlcdInfluxUnreachable",
            Some("firing"),
            Duration::from_secs(60),
            context,
        )
        .await;

    app.server.thaw();
    prometheus
        .wait_for_alert(
            "OhlcdCandlesLagging",
            None,
            Duration::from_secs(120),
            context,
        )
        .await;
    prometheus
        .wait_for_alert(
            "OhlcdInfluxUnreachable",
            None,
            Duration::from_secs(60),
            context,
        )
        .await;
    let lag = prometheus
        .query(r#"max(ohlcd_task_lag_seconds{resolution="1m"})"#)
        .await;
    let lag: f64 = lag[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(lag < LAG_ALERT_SECS, "lag after the thaw {lag} s");
}

/// Every metric name in `text` (a query, a rule), histogram suffixes kept.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("ohlcd_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // Not the tail of a longer identifier.
        if start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The sample names in a `/metrics` text.
fn served_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every query of every panel of the dashboard, with its panel's title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_string()))
        })
        .collect()
}

#[tokio::test]
async fn every_dashboard_query_names_served_metrics_and_answers_in_a_real_prometheus() {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap())
        .expect("the dashboard is JSON");
    // The shape Grafana imports: unique panel ids, a place on the grid, a
    // Prometheus data source chosen at import, a query per target.
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        for key in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][key].is_u64(), "{}: gridPos.{key}", p["title"]);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(t["refId"].is_string() && t["expr"].is_string(), "{t}");
        }
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "job", "instance"]);
    // The panels the operations page promises.
    let titles: Vec<String> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for topic in [
        "lag per resolution",
        "ticks per minute",
        "tick duration",
        "candles written per second",
        "requests per second",
        "latency",
        "cache hit",
        "streams open",
        "streams refused",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(topic)),
            "no panel about {topic}: {titles:?}"
        );
    }

    // A daemon that has done everything the panels count: ticks, candles,
    // posted trades, chart reads (a miss, then hits), a live stream.
    let app = TestApp::spawn().await;
    recent_trades(&app, &["BTCUSD"], 30, 2_000).await;
    let daemon = start(&app, &[]).await;
    wait_for_lag(&daemon).await;
    let http = reqwest::Client::new();
    let now_ms = SystemClock.now() / 1_000_000;
    let posted = http
        .post(format!("{}/api/trades", daemon.url()))
        .json(&serde_json::json!([{
            "symbol": "BTCUSD", "price": 41000.5, "amount": 0.25, "side": "buy",
            "timestamp": now_ms, "id": 1
        }]))
        .send()
        .await
        .unwrap();
    assert!(
        posted.status().is_success(),
        "{}",
        posted.text().await.unwrap()
    );
    let to = now_ms / 1000;
    for _ in 0..3 {
        let history = http
            .get(format!("{}/udf/history", daemon.url()))
            .query(&[
                ("symbol", "BTCUSD"),
                ("resolution", "1"),
                ("from", &(to - 3600).to_string()),
                ("to", &to.to_string()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(history.status(), 200);
    }
    let mut stream = http
        .get(format!("{}/api/live", daemon.url()))
        .query(&[("symbol", "BTCUSD"), ("resolution", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
        .await
        .expect("a live bar within 30 s")
        .unwrap();
    assert!(first.is_some(), "the live stream sent something");

    let served = served_names(&daemon.metrics().await);
    let queries = dashboard_queries(&dashboard);
    for (title, expr) in &queries {
        for name in metric_names(expr) {
            assert!(
                served.contains(&name),
                "panel {title:?} queries {name}, which /metrics does not serve: {served:?}"
            );
        }
    }
    // The rules' metrics too, each served from the start (a counter first
    // seen at 1 has nothing to grow from).
    let rules = std::fs::read_to_string(RULES).unwrap();
    let missing: Vec<String> = metric_names(&rules)
        .into_iter()
        .filter(|n| !served.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "rules query {missing:?}, not served: {served:?}"
    );

    // Each query in a real Prometheus scraping that daemon: valid PromQL,
    // and an answer (Grafana's variables at "All", its rate interval at 1m).
    let prometheus = Prometheus::start(&daemon, None).await;
    prometheus.wait_for_scrapes(5).await;
    for (title, expr) in &queries {
        let expr = expr
            .replace("$job", ".*")
            .replace("$instance", ".*")
            .replace("$__rate_interval", "1m");
        let result = prometheus.query(&expr).await;
        assert!(
            !result.is_empty(),
            "panel {title:?}: {expr} answers nothing"
        );
    }
    drop(stream);
}

#[tokio::test]
async fn the_version_is_the_same_in_the_cli_healthz_and_metrics() {
    // The oracle: git itself, where this is a checkout of its own. (Not
    // OHLCD_GIT_COMMIT: cargo gives a build script's variables to the tests it
    // runs too, so it would only repeat what the build found.) Elsewhere (a
    // tarball) the three must only agree.
    let manifest = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(manifest)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string())
    };
    let own_checkout = git(&["rev-parse", "--show-toplevel"]).is_some_and(|top| {
        Path::new(&top).canonicalize().ok() == Path::new(manifest).canonicalize().ok()
    });
    let version = env!("CARGO_PKG_VERSION");
    let out = Command::new(env!("CARGO_BIN_EXE_ohlcd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let expected_commit = line
        .trim()
        .strip_prefix(&format!("ohlcd {version} (commit "))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("--version printed {line:?}"))
        .to_string();
    if own_checkout {
        assert_eq!(
            expected_commit,
            git(&["rev-parse", "--short", "HEAD"]).unwrap(),
            "--version"
        );
    } else {
        assert!(!expected_commit.is_empty());
    }

    let app = TestApp::spawn().await;
    let daemon = start(&app, &[]).await;
    let health: Value = reqwest::get(format!("{}/healthz", daemon.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["version"], version, "{health}");
    assert_eq!(health["commit"], expected_commit.as_str(), "{health}");
    let metrics = daemon.metrics().await;
    let line = format!("ohlcd_build_info{{version=\"{version}\",commit=\"{expected_commit}\"}} 1");
    assert!(
        metrics.lines().any(|l| l == line),
        "{line} not in {metrics}"
    );
}

/// Parses every line of `log` as a JSON object, failing on the first that
/// is not one.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(o @ Value::Object(_)) => o,
            _ => panic!("not a JSON object: {l:?}"),
        })
        .collect()
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_fields_a_shipper_indexes() {
    let app = TestApp::spawn().await;
    recent_trades(&app, &["BTCUSD", "ETHUSD"], 30, 2_000).await;
    let daemon = start(
        &app,
        &[
            ("OHLCD_LOG_FORMAT", "json"),
            ("OHLCD_LOG", "ohlcd=debug,warn"),
            ("OHLCD_SERVER__REQUEST_SUMMARY_SECS", "1"),
        ],
    )
    .await;
    wait_for_lag(&daemon).await;
    let http = reqwest::Client::new();
    for path in ["/udf/config", "/udf/time", "/no/such/page", "/udf/history"] {
        http.get(format!("{}{path}", daemon.url()))
            .send()
            .await
            .unwrap();
    }
    // Wait for the summary of those requests, not for a schedule.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.log().contains("requests served") {
        assert!(Instant::now() < deadline, "no summary: {}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = json_lines(&daemon.stop().await);
    for e in &events {
        let ts = e["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "timestamp {ts:?}"
        );
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&e["level"].as_str().unwrap()),
            "{e:?}"
        );
        assert!(e["target"].as_str().unwrap().starts_with("ohlcd"), "{e:?}");
        assert!(e["message"].is_string(), "{e:?}");
    }
    let find = |message: &str| {
        events
            .iter()
            .filter(|e| e["message"] == message)
            .cloned()
            .collect::<Vec<_>>()
    };
    // A request alone is a debug line with its fields at the top level.
    let requests = find("request");
    assert!(
        requests
            .iter()
            .any(|r| r["path"] == "/no/such/page" && r["status"] == 404 && r["level"] == "DEBUG"),
        "{requests:?}"
    );
    assert!(requests.iter().all(|r| r["level"] == "DEBUG"));
    // The summary is INFO and counts them.
    let summaries = find("requests served");
    assert!(summaries.iter().all(|s| s["level"] == "INFO"));
    let total: u64 = summaries
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    let rejected: u64 = summaries
        .iter()
        .map(|s| s["rejected"].as_u64().unwrap())
        .sum();
    assert!(total >= 4 && rejected >= 2, "{summaries:?}");
    assert!(
        summaries
            .iter()
            .all(|s| s["p99_ms"].as_f64().unwrap() > 0.0)
    );
    // Engine events carry the symbol as a field of its own.
    assert!(
        events.iter().any(|e| e["symbol"] == "ETHUSD"),
        "no event with a symbol field"
    );
    assert!(!find("tick done").is_empty(), "no tick line");
}

#[test]
fn log_format_is_plain_by_default_json_on_request_and_refused_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    // `progress` on a missing database fails at once with one error line.
    let run = |format: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ohlcd"));
        cmd.arg("progress").env_remove("OHLCD_LOG_FORMAT").env(
            "OHLCD_PROGRESS__DATABASE_URL",
            format!("sqlite://{}/missing.db", dir.path().display()),
        );
        if let Some(f) = format {
            cmd.env("OHLCD_LOG_FORMAT", f);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let plain = run(None);
    assert!(plain.starts_with("error: no progress database"), "{plain}");
    let json = json_lines(&run(Some("json")));
    assert_eq!(json.len(), 1, "{json:?}");
    assert_eq!(json[0]["level"], "ERROR");
    assert!(
        json[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("no progress database"),
        "{json:?}"
    );
    let refused = run(Some("xml"));
    assert!(refused.contains("OHLCD_LOG_FORMAT"), "{refused}");
}

#[tokio::test]
async fn live_trades_continue_at_the_density_of_the_stored_history() {
    let app = TestApp::spawn().await;
    // 8,640 trades over the last day: 0.1 a second over both symbols.
    let now_s = SystemClock.now() / NANOS_PER_SEC;
    let out = app
        .ohlcd()
        .args(["generate", "--symbols", "AAAUSD,BBBUSD", "--trades", "8640"])
        .args([
            "--from",
            &(now_s - 86_400).to_string(),
            "--to",
            &now_s.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Posting to a port nobody listens on: only the rate it announces matters.
    let mut live = KillOnDrop::spawn(
        app.ohlcd()
            .args(["generate", "--live", "--symbols", "AAAUSD,BBBUSD"])
            .args(["--url", &format!("http://127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let mut stderr = live.stderr.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stderr.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8(line).unwrap()
    })
    .await
    .unwrap();
    let rate: f64 = first
        .strip_prefix("posting about ")
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{first:?}"));
    assert!((rate - 0.1).abs() < 0.001, "{first}");
    assert!(first.contains("history"), "{first}");
}

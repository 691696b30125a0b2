//! The `ohlcd` binary as a user runs it: generate, backfill, progress, rebuild, and
//! the one-line errors for the usual mistakes.

use std::process::{Command, Output};

use ohlcd::candle::{Candle, Resolution};
use ohlcd::influx::{CandleRead, InfluxClient};
use ohlcd::progress::{Backend, TaskStatus};
use ohlcd::times::to_rfc3339;
use serde_json::Value;

use crate::helpers::{TestApp, free_port, on_both_stores, t};

/// `ohlcd` on the app's influxd, database `cli` and the app's own progress
/// store (its SQLite file, or its PostgreSQL database), so what a command
/// did is read back through `app.store`.
fn ohlcd(app: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ohlcd"))
        .args(args)
        .env("OHLCD_INFLUX__URL", &app.server.url)
        .env("OHLCD_INFLUX__DATABASE", "cli")
        .env(
            "OHLCD_PROGRESS__DATABASE_URL",
            &app.settings.progress.database_url,
        )
        .env("OHLCD_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

on_both_stores!(generate_backfill_and_progress_work_from_the_command_line);

async fn generate_backfill_and_progress_work_from_the_command_line(backend: Backend) {
    let app = TestApp::spawn_on_store(backend).await;
    let gen_ = ohlcd(
        &app,
        &[
            "generate",
            "--symbols",
            "BTCUSD,ETHUSD",
            "--from",
            "2024-01-01",
            "--to",
            "1704153600",
            "--trades",
            "30000",
            "--seed",
            "3",
        ],
    );
    assert!(gen_.status.success(), "{}", stderr(&gen_));
    assert!(
        stdout(&gen_).contains("generated 30000 trades"),
        "{}",
        stdout(&gen_)
    );

    let fill = ohlcd(&app, &["backfill"]);
    assert!(fill.status.success(), "{}", stderr(&fill));
    assert!(stdout(&fill).contains("backfill complete"));

    let json = ohlcd(&app, &["progress", "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let entries: Vec<Value> = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(entries.len(), 12);
    for e in &entries {
        assert_eq!(e["status"], "completed", "{e}");
        let wm = e["watermark"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(wm).is_ok(), "{wm}");
        // Who ran it: the one backfill process (`<host>-<pid>-<suffix>`).
        assert_eq!(e["last_owner"], entries[0]["last_owner"], "{e}");
    }
    let owner = entries[0]["last_owner"].as_str().unwrap_or_default();
    let parts: Vec<&str> = owner.rsplitn(3, '-').collect();
    assert!(
        parts.len() == 3 && parts[1].parse::<u32>().is_ok() && parts[0].len() == 4,
        "{owner:?}"
    );
    let resolutions: Vec<&str> = entries
        .iter()
        .take(6)
        .map(|e| e["resolution"].as_str().unwrap())
        .collect();
    assert_eq!(resolutions, ["1m", "5m", "15m", "1h", "4h", "1d"]);

    // The commands used the app's store (on PostgreSQL for `::postgres`):
    // it holds the rows `progress --json` printed.
    assert_eq!(app.store.backend(), backend);
    let tasks = app.store.tasks().await.unwrap();
    assert_eq!(tasks.len(), 12);
    for (task, e) in tasks.iter().zip(&entries) {
        assert_eq!(
            (task.symbol.as_str(), task.resolution.name()),
            (
                e["symbol"].as_str().unwrap(),
                e["resolution"].as_str().unwrap()
            )
        );
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        assert_eq!(task.last_owner.as_deref(), Some(owner), "{task:?}");
        assert_eq!(
            task.watermark.map(to_rfc3339).as_deref(),
            e["watermark"].as_str()
        );
    }

    let table = ohlcd(&app, &["progress"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    for header in [
        "symbol",
        "resolution",
        "status",
        "watermark",
        "lag",
        "last run",
        "duration",
        "owner",
        "last error",
    ] {
        assert!(text.contains(header), "missing {header}: {text}");
    }
    assert_eq!(text.matches("completed").count(), 12);
    assert_eq!(text.matches(owner).count(), 12, "{text}");

    // Damage the 1m and 1h candles of 06:00-07:00; the rebuild restores them.
    let (from, to) = (t("2024-01-01T06:00:00Z"), t("2024-01-01T07:00:00Z"));
    let cli = cli_database(&app).await;
    let mut before = Vec::new();
    for res in [Resolution::M1, Resolution::H1] {
        let stored = candles_in(&cli, res, "BTCUSD", from..to).await;
        assert!(!stored.is_empty(), "{res}: nothing backfilled");
        let damaged: Vec<Candle> = stored
            .iter()
            .map(|c| Candle {
                close: c.close + 1.0,
                trades: c.trades + 1,
                ..*c
            })
            .collect();
        crate::helpers::write_candles(&cli, res, "BTCUSD", &damaged)
            .await
            .unwrap();
        assert_eq!(candles_in(&cli, res, "BTCUSD", from..to).await, damaged);
        before.push((res, stored));
    }
    let rebuild = ohlcd(
        &app,
        &[
            "rebuild",
            "--symbol",
            "BTCUSD",
            "--from",
            "2024-01-01T06:00:00Z",
            "--to",
            "2024-01-01T07:00:00Z",
        ],
    );
    assert!(rebuild.status.success(), "{}", stderr(&rebuild));
    assert!(stdout(&rebuild).contains("rebuilt BTCUSD"));
    for (res, stored) in before {
        assert_eq!(
            candles_in(&cli, res, "BTCUSD", from..to).await,
            stored,
            "{res} after the rebuild"
        );
    }
    // The rebuild is in this store's history: one run per resolution over
    // the whole day, and the task is still completed.
    for res in Resolution::ALL {
        let runs = app.store.runs("BTCUSD", res, 1).await.unwrap();
        assert_eq!(
            (runs[0].kind.as_str(), runs[0].status.as_str()),
            ("rebuild", "ok"),
            "{res}: {runs:?}"
        );
        assert_eq!(
            (runs[0].range_start.as_str(), runs[0].range_end.as_str()),
            ("2024-01-01T00:00:00.000Z", "2024-01-02T00:00:00.000Z"),
            "{res}"
        );
        let task = app.store.task("BTCUSD", res).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Completed, "{res}");
    }
}

/// A client on database `cli`, where [`ohlcd`] runs its commands.
async fn cli_database(app: &TestApp) -> InfluxClient {
    let mut settings = app.settings.influx.clone();
    settings.database = "cli".into();
    let mut client = InfluxClient::new(&settings).unwrap();
    client.detect().await.unwrap();
    client
}

/// The stored candles of `symbol` at `res` starting in `range`, by time.
async fn candles_in(
    client: &InfluxClient,
    res: Resolution,
    symbol: &str,
    range: std::ops::Range<i64>,
) -> Vec<Candle> {
    let mut out = Vec::new();
    client
        .read_candles(CandleRead::new(res, &[symbol], range), |_, c| out.push(c))
        .await
        .unwrap();
    out.sort_by_key(|c| c.start);
    out
}

#[tokio::test]
async fn usual_mistakes_fail_with_one_line_that_says_what_to_do() {
    let app = TestApp::spawn().await;
    let port = free_port();
    let unreachable = Command::new(env!("CARGO_BIN_EXE_ohlcd"))
        .arg("backfill")
        .env("OHLCD_INFLUX__URL", format!("http://127.0.0.1:{port}"))
        .env(
            "OHLCD_PROGRESS__DATABASE_URL",
            app.dir.path().join("x.db").display().to_string(),
        )
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    let err = stderr(&unreachable);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach InfluxDB") && err.contains("influx.url"),
        "{err}"
    );

    // Database "cli" was never created on this server.
    let missing = ohlcd(&app, &["backfill"]);
    assert!(!missing.status.success());
    let err = stderr(&missing);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("\"cli\" does not exist") && err.contains("CREATE DATABASE"),
        "{err}"
    );

    let bad_time = ohlcd(
        &app,
        &[
            "rebuild",
            "--symbol",
            "BTCUSD",
            "--from",
            "yesterday",
            "--to",
            "2024-01-01",
        ],
    );
    assert!(!bad_time.status.success());
    assert!(
        stderr(&bad_time).contains("RFC 3339"),
        "{}",
        stderr(&bad_time)
    );

    let bad_res = ohlcd(&app, &["backfill", "--resolution", "2m"]);
    assert!(!bad_res.status.success());
    assert!(
        stderr(&bad_res).contains("unknown resolution"),
        "{}",
        stderr(&bad_res)
    );

    let bad_symbol = ohlcd(
        &app,
        &[
            "generate",
            "--symbols",
            "BTC USD",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-02",
            "--trades",
            "5",
        ],
    );
    assert!(!bad_symbol.status.success());
    assert!(
        stderr(&bad_symbol).contains("symbol"),
        "{}",
        stderr(&bad_symbol)
    );

    let inverted = ohlcd(
        &app,
        &[
            "generate",
            "--symbols",
            "BTCUSD",
            "--from",
            "2024-01-02",
            "--to",
            "2024-01-01",
            "--trades",
            "5",
        ],
    );
    assert!(!inverted.status.success());
    assert!(
        stderr(&inverted).contains("--from must be before --to"),
        "{}",
        stderr(&inverted)
    );
}

#[tokio::test]
async fn run_serves_healthz_catches_up_and_exits_cleanly_on_sigterm() {
    let app = TestApp::spawn().await;
    let gen_ = ohlcd(
        &app,
        &[
            "generate",
            "--symbols",
            "ADAUSD",
            "--from",
            "2024-02-01",
            "--to",
            "2024-02-02",
            "--trades",
            "5000",
        ],
    );
    assert!(gen_.status.success(), "{}", stderr(&gen_));
    let port = free_port();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_ohlcd"))
        .arg("run")
        .env("OHLCD_INFLUX__URL", &app.server.url)
        .env("OHLCD_INFLUX__DATABASE", "cli")
        .env(
            "OHLCD_PROGRESS__DATABASE_URL",
            &app.settings.progress.database_url,
        )
        .env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("OHLCD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    // The daemon catches up right after start; wait for that work, not a schedule.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let caught_up = loop {
        let json = ohlcd(&app, &["progress", "--json"]);
        let entries: Vec<Value> = serde_json::from_slice(&json.stdout).unwrap_or_default();
        if entries.len() == 6 && entries.iter().all(|e| e["status"] == "completed") {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    if !caught_up {
        let json = ohlcd(&app, &["progress", "--json"]);
        let _ = daemon.kill();
        let out = daemon.wait_with_output().unwrap();
        panic!(
            "daemon did not complete its tasks: {}\n{}",
            String::from_utf8_lossy(&json.stdout),
            stderr(&out)
        );
    }
    let health = http.get(&url).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(
        (body["influx"].as_str(), body["store"].as_str()),
        (Some("ok"), Some("ok"))
    );
    let sum: Value = http
        .get(format!("{}/query", app.server.url))
        .query(&[
            ("db", "cli"),
            (
                "q",
                "SELECT sum(trades) FROM ohlc_1d WHERE symbol = 'ADAUSD'",
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        sum["results"][0]["series"][0]["values"][0][1], 5000,
        "{sum}"
    );
    let term = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || daemon.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.status.success(),
        "exit {:?}: {}",
        status.status,
        stderr(&status)
    );
    assert!(stdout(&status).contains(&format!("listening on http://127.0.0.1:{port}")));
}

#[tokio::test]
async fn run_creates_a_missing_database_and_says_so() {
    let app = TestApp::spawn().await;
    let port = free_port();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_ohlcd"))
        .arg("run")
        .env("OHLCD_INFLUX__URL", &app.server.url)
        .env("OHLCD_INFLUX__DATABASE", "brand_new")
        .env(
            "OHLCD_PROGRESS__DATABASE_URL",
            app.dir.path().join("new.db").display().to_string(),
        )
        .env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("OHLCD_LOG", "ohlcd=info,warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let healthy = loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            && r.status() == 200
        {
            break true;
        }
        if std::time::Instant::now() > deadline || daemon.try_wait().unwrap().is_some() {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || daemon.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(healthy, "daemon did not come up: {}", stderr(&out));
    assert!(
        stderr(&out).contains("created the InfluxDB database")
            && stderr(&out).contains("brand_new"),
        "{}",
        stderr(&out)
    );
    let dbs: Value = http
        .get(format!("{}/query", app.server.url))
        .query(&[("q", "SHOW DATABASES")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(dbs.to_string().contains("\"brand_new\""), "{dbs}");
}

#[tokio::test]
async fn progress_without_a_database_creates_none_and_says_where_it_looked() {
    let app = TestApp::spawn().await;
    let missing = app.dir.path().join("elsewhere.db");
    let out = Command::new(env!("CARGO_BIN_EXE_ohlcd"))
        .arg("progress")
        .env("OHLCD_INFLUX__URL", &app.server.url)
        .env(
            "OHLCD_PROGRESS__DATABASE_URL",
            format!("sqlite://{}", missing.display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("no progress database"),
        "{err}"
    );
    assert!(!missing.exists(), "progress created {}", missing.display());
}

//! Fault injection: crashes at chosen points, InfluxDB stopped or frozen, two
//! daemons on one progress store, trades written behind ohlcd's back, SIGTERM,
//! and broken configuration. The crash, two-daemon and late-data tests run on
//! both progress-store backends. After each, the candles must still equal an
//! independent computation from the raw trades.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ohlcd::candle::{Candle, NANOS_PER_DAY, NANOS_PER_SEC, Resolution, Side};
use ohlcd::clock::{Clock, SystemClock};
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::{NewTrade, write_trades};
use ohlcd::progress::{Backend, Task, TaskStatus};
use ohlcd::times::to_rfc3339;
use serde_json::Value;

use crate::helpers::{
    Daemon, KillOnDrop, TestApp, assert_candles_eq, free_port, influx_with_users, on_both_servers,
    on_both_stores, on_both_stores_and_servers, t,
};

/// Writes `trades` trades of `symbols` over `days` days starting 2024-01-01.
pub(crate) async fn with_trades(app: &TestApp, symbols: &[&str], days: i64, trades: u64) {
    let from = t("2024-01-01T00:00:00Z");
    let spec = GenerateSpec {
        symbols: symbols.iter().map(|s| s.parse().unwrap()).collect(),
        from,
        to: from + days * NANOS_PER_DAY,
        trades,
        seed: 99,
    };
    let all: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&all).await;
}

/// Every stored candle of every resolution equals the reference, and every task
/// is completed with no lease.
pub(crate) async fn assert_exact_and_settled(app: &TestApp, symbols: &[&str]) {
    let now = SystemClock.now();
    for symbol in symbols {
        for res in Resolution::ALL {
            let expected = app.expected(symbol, res, now - 60 * NANOS_PER_SEC).await;
            let stored = app.stored(symbol, res).await;
            assert_candles_eq(&stored, &expected, &format!("{symbol} {res}"));
        }
    }
    for task in app.store.tasks().await.unwrap() {
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        assert_eq!(task.lease_owner, None, "{task:?}");
    }
}

/// Waits until a line of the child's stderr contains `needle`; returns the
/// lines read so far.
pub(crate) fn wait_for_stderr(child: &mut Child, needle: &str, timeout: Duration) -> Vec<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // What comes after the needle goes to the test's output, shown if
        // it fails.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Err(unread) = tx.send(line) {
                eprintln!("child: {}", unread.0);
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let found = line.contains(needle);
        lines.push(line);
        if found {
            return lines;
        }
    }
    panic!("{needle:?} not seen on stderr within {timeout:?}: {lines:#?}");
}

/// Waits for the child to exit, at most `timeout`.
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until the symbol's 1m task counts at least `n` committed steps.
pub(crate) async fn wait_for_chunks(app: &TestApp, symbol: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let chunks = app
            .store
            .task(symbol, Resolution::M1)
            .await
            .ok()
            .flatten()
            .map_or(0, |t| t.chunks);
        if chunks >= n as i64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} chunks committed in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (owner, start) of every run in the history of a task.
async fn run_starts(app: &TestApp, symbol: &str, res: Resolution) -> Vec<(String, i64)> {
    let runs = app.store.runs(symbol, res, i64::MAX).await.unwrap();
    runs.into_iter()
        .map(|r| (r.owner, ohlcd::times::from_rfc3339(&r.started_at).unwrap()))
        .collect()
}

async fn crash_at_and_recover(app: TestApp, point: &str, expect_orphaned_lease: bool) {
    let symbols = ["BTCUSD", "ETHUSD"];
    with_trades(&app, &symbols, 40, 60_000).await;
    let mut cmd = app.ohlcd();
    cmd.arg("backfill")
        .env("OHLCD_FAILPOINT", point)
        // One symbol at a time, so the state at the crash point is known.
        .env("OHLCD_ENGINE__CONCURRENCY", "1")
        .stderr(Stdio::piped());
    if point.starts_with("part_written") {
        // A day of one symbol (750 trades) above the batch size: read in parts.
        cmd.env("OHLCD_ENGINE__BATCH_ROWS", "500");
    }
    let mut crashing = KillOnDrop::spawn(&mut cmd);
    wait_for_stderr(
        &mut crashing,
        &format!("failpoint {} reached", point.split(':').next().unwrap()),
        Duration::from_secs(60),
    );
    crashing.kill().unwrap(); // SIGKILL: no cleanup of any kind
    crashing.wait().unwrap();
    let orphaned: Vec<Task> = app
        .store
        .tasks()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.status == TaskStatus::Running && t.lease_owner.is_some())
        .collect();
    assert_eq!(
        !orphaned.is_empty(),
        expect_orphaned_lease,
        "leases left by the killed process: {orphaned:#?}"
    );
    if point == "after_commit" {
        // A batch commits all six resolutions of all its symbols at once: at
        // the crash every symbol stands on one day boundary at every resolution.
        for symbol in symbols {
            let tasks: Vec<_> = app
                .store
                .tasks()
                .await
                .unwrap()
                .into_iter()
                .filter(|t| t.symbol == symbol)
                .collect();
            let w = tasks[0].watermark.expect("the first batch committed");
            assert_eq!(w % NANOS_PER_DAY, 0, "{symbol}");
            for task in &tasks {
                assert_eq!(task.watermark, Some(w), "{symbol} {}", task.resolution);
            }
        }
    }

    if point.starts_with("part_written") {
        // Parts of a step are written while the next ones are read: at the
        // crash, candles past the watermark are stored (the step is under
        // way), but the watermarks still cover only acknowledged candles.
        let tasks = app.store.tasks().await.unwrap();
        let mut ahead = 0;
        for task in &tasks {
            let symbol = task.symbol.as_str();
            let w = task.watermark.unwrap_or(i64::MIN);
            let stored = app.stored(symbol, task.resolution).await;
            ahead += stored.iter().filter(|c| c.start >= w).count();
            let below: Vec<Candle> = stored.into_iter().filter(|c| c.start < w).collect();
            let expected = app.expected(symbol, task.resolution, w).await;
            assert_candles_eq(
                &below,
                &expected,
                &format!(
                    "{symbol} {} below its watermark at the crash",
                    task.resolution
                ),
            );
        }
        assert!(
            ahead > 0,
            "no candle written past a watermark: not mid-step"
        );
    }

    // Restarted with no manual step: waits out the dead lease, then finishes.
    let out = app.ohlcd().arg("backfill").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The dead lease was respected and then taken over: the restarted process
    // ran the orphaned tasks, but started none of their runs before it expired.
    for task in &orphaned {
        let (dead, expiry) = (task.lease_owner.clone(), task.lease_expires_at.unwrap());
        let taken_over: Vec<(String, i64)> = run_starts(&app, &task.symbol, task.resolution)
            .await
            .into_iter()
            .filter(|(owner, _)| Some(owner) != dead.as_ref())
            .collect();
        assert!(
            !taken_over.is_empty(),
            "{} {}: not taken over",
            task.symbol,
            task.resolution
        );
        for (owner, started) in taken_over {
            assert!(
                started >= expiry,
                "{} {}: {owner} started a run at {} under a lease valid until {}",
                task.symbol,
                task.resolution,
                to_rfc3339(started),
                to_rfc3339(expiry)
            );
        }
    }
    assert_exact_and_settled(&app, &symbols).await;
}

on_both_stores_and_servers!(
    trades_written_behind_ohlcds_back_are_caught_by_the_lookback_and_older_ones_by_rebuild,
);

on_both_stores_and_servers!(
    a_backfill_killed_mid_read_is_taken_over_after_its_lease_expires_with_exact_candles,
    a_backfill_killed_between_candle_write_and_watermark_commit_recomputes_the_same_candles,
    a_backfill_killed_after_some_parts_of_a_step_were_written_commits_nothing_ahead_and_recomputes_exactly,
    a_backfill_killed_between_two_batches_resumes_from_its_last_commit,
);

on_both_servers!(
    influxdb_frozen_during_a_backfill_fails_the_task_with_a_timeout_and_a_rerun_catches_up,
);

// Progress-store behaviour: the server does not matter.
on_both_stores!(two_daemons_on_one_progress_store_both_work_and_never_process_a_range_twice);

async fn a_backfill_killed_mid_read_is_taken_over_after_its_lease_expires_with_exact_candles(
    app: TestApp,
) {
    crash_at_and_recover(app, "mid_read", true).await;
}

async fn a_backfill_killed_between_candle_write_and_watermark_commit_recomputes_the_same_candles(
    app: TestApp,
) {
    crash_at_and_recover(app, "after_write:7", true).await;
}

async fn a_backfill_killed_after_some_parts_of_a_step_were_written_commits_nothing_ahead_and_recomputes_exactly(
    app: TestApp,
) {
    crash_at_and_recover(app, "part_written:9", true).await;
}

async fn a_backfill_killed_between_two_batches_resumes_from_its_last_commit(app: TestApp) {
    crash_at_and_recover(app, "after_commit", true).await;
}

async fn influxdb_frozen_during_a_backfill_fails_the_task_with_a_timeout_and_a_rerun_catches_up(
    app: TestApp,
) {
    // 3.x acknowledges each write after its WAL flush (1 s): a year of days
    // would take minutes there, 20 days are enough to freeze it mid-way.
    let days = match app.server.server() {
        crate::helpers::Server::V1 => 365,
        crate::helpers::Server::V3 => 20,
    };
    with_trades(&app, &["BTCUSD"], days, 150_000).await;
    // The failure this test times is the client's timeout: short, but well
    // above what a healthy request takes (on 3.x its queries and write
    // acknowledgements, a WAL flush of 1 s, on a loaded machine), so the
    // backfill gets to the freeze and the bound below can tell retry layers
    // apart.
    let timeout_secs = match app.server.server() {
        crate::helpers::Server::V1 => 4,
        crate::helpers::Server::V3 => 10,
    };
    let mut backfill = app
        .ohlcd()
        .arg("backfill")
        .env("OHLCD_INFLUX__TIMEOUT_SECS", timeout_secs.to_string())
        .env("OHLCD_INFLUX__RETRIES", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_chunks(&app, "BTCUSD", 5, Duration::from_secs(60)).await;
    app.server.freeze();
    let frozen = Instant::now();
    let status = wait_exit(&mut backfill, Duration::from_secs(60));
    // One place retries (the client), so the time to `failed` is bounded by
    // its worst case W (README: every attempt, 2 here, timing out after T,
    // plus the backoff between them). A request under way at the freeze had
    // started less than T/4 before it (healthy ones take a fraction of
    // that), so the first one gives up at least 3T/4 after the freeze, and a
    // second layer of retries (the engine running the failed batch again,
    // its requests all starting after that) would add at least another 2T:
    // 2.75T in all. One layer takes at most W = 2T + 0.3 s; the bound W + T/2
    // leaves T/2 for the exit on a busy machine.
    let timeout = Duration::from_secs(timeout_secs);
    let worst = {
        let mut s = app.settings.influx.clone();
        (s.timeout_secs, s.retries) = (timeout_secs, 1);
        ohlcd::influx::InfluxClient::new(&s).unwrap().worst_case()
    };
    let took = frozen.elapsed();
    println!("frozen influxd: backfill failed {took:?} after the freeze; worst case {worst:?}");
    assert!(
        took < worst + timeout / 2,
        "failed {took:?} after the freeze; one request's worst case is {worst:?}, so \
         something retried on top of the client's retries"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut backfill.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    let timeout = format!("did not answer within {timeout_secs}s");
    assert!(err.contains(&timeout), "{err}");
    let failed: Vec<_> = app
        .store
        .tasks()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.status == TaskStatus::Failed)
        .collect();
    // The unit of work is the symbol: all six of its tasks failed together.
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("did not answer")
    );
    assert_eq!(
        failed[0].lease_owner, None,
        "a failed task releases its lease"
    );
    let frozen_at = failed
        .iter()
        .find(|t| t.resolution == Resolution::M1)
        .unwrap()
        .watermark;
    // The failed chunk is in the history; the watermark stayed where it was.
    let runs = app.store.runs("BTCUSD", Resolution::M1, 1).await.unwrap();
    assert_eq!(runs[0].status, "failed");
    assert_eq!(
        Some(ohlcd::times::from_rfc3339(&runs[0].range_start).unwrap()),
        frozen_at
    );

    app.server.thaw();
    let out = app.ohlcd().arg("backfill").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_exact_and_settled(&app, &["BTCUSD"]).await;
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

on_both_servers!(serving_answers_errors_fast_while_influxdb_is_down_or_frozen_and_recovers);

async fn serving_answers_errors_fast_while_influxdb_is_down_or_frozen_and_recovers(
    mut app: TestApp,
) {
    app.settings.datafeed.timeout_secs = 2;
    // Every request must reach InfluxDB here: the serving cache would answer
    // this closed range from memory (README, "Serving cache").
    app.settings.datafeed.cache_max_bytes = 0;
    with_trades(&app, &["BTCUSD"], 10, 20_000).await;
    app.clock.set(t("2024-01-12T00:00:00Z"));
    let engine = app.engine("a");
    engine.tick(&TaskFilter::default()).await.unwrap();
    let (url, _stop) = app.serve().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let history = format!(
        "{url}/udf/history?symbol=BTCUSD&resolution=60&from={}&to={}",
        t("2024-01-02T00:00:00Z") / NANOS_PER_SEC,
        t("2024-01-05T00:00:00Z") / NANOS_PER_SEC
    );
    let (status, healthy, _) = get(&client, &history).await;
    assert_eq!(status, 200);

    app.server.freeze();
    let (status, body, took) = get(&client, &history).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["s"], "error");
    assert!(took < Duration::from_secs(8), "answered in {took:?}");
    let (status, body, took) = get(&client, &format!("{url}/healthz")).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("unhealthy")));
    // Up or down, never where: the public answer names no address.
    assert_eq!(
        (body["influx"].as_str(), body["store"].as_str()),
        (Some("down"), Some("ok")),
        "{body}"
    );
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
    assert!(
        took < Duration::from_secs(5),
        "healthz answered in {took:?}"
    );
    app.server.thaw();
    assert_eq!(get(&client, &history).await.1, healthy);

    app.server.stop();
    let (status, body, _) = get(&client, &history).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach InfluxDB")
    );
    assert_eq!(get(&client, &format!("{url}/healthz")).await.0, 503);
    let before = app.store.tasks().await.unwrap();
    app.clock.advance(NANOS_PER_DAY);
    assert!(
        engine.tick(&TaskFilter::default()).await.is_err(),
        "a tick fails while InfluxDB is down"
    );
    assert_eq!(
        app.store
            .tasks()
            .await
            .unwrap()
            .iter()
            .map(|t| t.watermark)
            .collect::<Vec<_>>(),
        before.iter().map(|t| t.watermark).collect::<Vec<_>>(),
        "no watermark moved"
    );

    app.server.restart();
    assert_eq!(get(&client, &format!("{url}/healthz")).await.0, 200);
    assert_eq!(get(&client, &history).await.1, healthy);
    engine.tick(&TaskFilter::default()).await.unwrap();
    let until = Resolution::M1.window_start(app.clock.now() - 5 * NANOS_PER_SEC);
    for res in Resolution::ALL {
        let expected = app.expected("BTCUSD", res, until).await;
        assert_candles_eq(
            &app.stored("BTCUSD", res).await,
            &expected,
            &format!("{res} after outage"),
        );
    }
}

/// What a daemon of these tests is started with: a tick every second.
const TICK_EVERY_SECOND: &[(&str, &str)] = &[("OHLCD_ENGINE__CRON", "* * * * * *")];

fn sigterm(child: &Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Polls until there are `tasks` tasks, all completed with watermarks at or past
/// `data_end` (every trade materialized at every resolution).
async fn wait_all_caught_up(app: &TestApp, tasks: usize, data_end: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let all = app.store.tasks().await.unwrap();
        if all.len() == tasks
            && all.iter().all(|t| {
                t.status == TaskStatus::Completed && t.watermark.is_some_and(|w| w >= data_end)
            })
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tasks not caught up in {timeout:?}: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn two_daemons_on_one_progress_store_both_work_and_never_process_a_range_twice(
    backend: Backend,
) {
    let app = TestApp::spawn_on_store(backend).await;
    let symbols = ["ADAUSD", "BTCUSD", "ETHUSD", "SOLUSD"];
    with_trades(&app, &symbols, 30, 80_000).await;
    // Daemon A runs alone until it has committed and released its first batch
    // (the first day of every symbol: one chunk per batch run), then parks for
    // good (failpoint), holding no lease. Everything after that day can only
    // be B's work, so both daemons must show up in the history of every task.
    let port = free_port();
    let mut a = KillOnDrop::spawn(
        app.ohlcd()
            .arg("run")
            .env("OHLCD_FAILPOINT", "after_release")
            .env("OHLCD_ENGINE__BATCH_RUN_MS", "0")
            .env("OHLCD_ENGINE__CRON", "* * * * * *")
            .env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_stderr(
        &mut a,
        "failpoint after_release reached",
        Duration::from_secs(60),
    );
    let mut b = Daemon::spawn(&app, TICK_EVERY_SECOND);
    // Every watermark past the data, not merely "completed" (a tick that
    // ended at an earlier horizon also reads completed).
    wait_all_caught_up(
        &app,
        24,
        t("2024-01-31T00:00:00Z"),
        Duration::from_secs(120),
    )
    .await;
    sigterm(&b.child);
    let status = wait_exit(&mut b.child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", b.log());
    // A's parked tick never finishes, so it cannot stop gracefully.
    a.kill().unwrap();
    a.wait().unwrap();
    assert_exact_and_settled(&app, &symbols).await;
    // Forward chunks of each task tile its range exactly once: no range was
    // processed by both daemons.
    let mut owners = std::collections::BTreeSet::new();
    for symbol in symbols {
        for res in Resolution::ALL {
            let mut runs = app.store.runs(symbol, res, 100_000).await.unwrap();
            runs.retain(|r| r.kind == "chunk" && r.status == "ok");
            runs.reverse();
            assert!(!runs.is_empty(), "{symbol} {res}: no chunk committed");
            owners.extend(runs.iter().map(|r| r.owner.clone()));
            for pair in runs.windows(2) {
                assert_eq!(
                    pair[0].range_end, pair[1].range_start,
                    "{symbol} {res}: {pair:?}"
                );
            }
        }
    }
    assert_eq!(owners.len(), 2, "both daemons committed chunks: {owners:?}");
}

/// Processes started together on each fresh progress file, and how many rounds.
/// Two, as two daemons start: on a two-core machine, two caught the old failure
/// in about one round in ten, three (one always waiting for a core) hardly ever.
const STARTS_AT_ONCE: usize = 2;
const START_ROUNDS: usize = 50;

/// `ohlcd backfill` behind a start gate: a shell that says `ready` on stdout,
/// waits for a line on its stdin, then execs ohlcd. Spawning ohlcd directly
/// starts the processes an exec apart (`spawn` returns once the exec is done),
/// milliseconds that hide the race; opened together, all wait at the gate.
fn gated_backfill(app: &TestApp, db: &std::path::Path) -> Child {
    let ohlcd = app.ohlcd();
    let mut gated = std::process::Command::new("sh");
    for (key, value) in ohlcd.get_envs() {
        if let Some(value) = value {
            gated.env(key, value);
        }
    }
    gated
        .env("OHLCD_PROGRESS__DATABASE_URL", db.display().to_string())
        .arg("-c")
        .arg(r#"echo ready && read -r _ && exec "$0" backfill"#)
        .arg(ohlcd.get_program())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

// Progress-store start-up race: the server does not matter.
#[tokio::test]
async fn backfills_started_at_the_same_instant_on_a_fresh_progress_file_all_succeed() {
    // Found by hand: two `ohlcd backfill` on a file that did not exist yet, and
    // one of them died with "database is locked" in 2 of 7 tries. A supervisor
    // restarting a standby pair does exactly this.
    let app = TestApp::spawn().await;
    with_trades(&app, &["BTCUSD", "ETHUSD"], 2, 2_000).await;
    let mut failures = Vec::new();
    for round in 0..START_ROUNDS {
        let db = app.dir.path().join(format!("fresh-{round}.db"));
        let mut children: Vec<Child> = (0..STARTS_AT_ONCE)
            .map(|_| gated_backfill(&app, &db))
            .collect();
        // Every shell is at its gate before any is let through.
        for child in &mut children {
            let mut ready = String::new();
            BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut ready)
                .unwrap();
            assert_eq!(ready, "ready\n");
        }
        for child in &mut children {
            let mut gate = child.stdin.take().unwrap();
            std::io::Write::write_all(&mut gate, b"go\n").unwrap();
        }
        for child in children {
            let out = child.wait_with_output().unwrap();
            if !out.status.success() {
                failures.push(format!(
                    "round {round}: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} processes failed:\n{}",
        failures.len(),
        START_ROUNDS * STARTS_AT_ONCE,
        failures.join("\n")
    );
}

async fn trades_written_behind_ohlcds_back_are_caught_by_the_lookback_and_older_ones_by_rebuild(
    app: TestApp,
) {
    with_trades(&app, &["BTCUSD"], 3, 10_000).await;
    let now = t("2024-01-03T23:50:30Z");
    app.clock.set(now);
    let engine = app.engine("a");
    engine.tick(&TaskFilter::default()).await.unwrap();
    let direct = |time: &str, id: i64| NewTrade {
        symbol: "BTCUSD".parse().unwrap(),
        side: Side::Buy,
        price: 12345.5,
        amount: 7.0,
        time_ms: t(time) / 1_000_000,
        id,
    };
    // Two minutes behind the 1m watermark, inside the 5-minute lookback; written
    // straight into InfluxDB, so no dirty range is recorded.
    write_trades(&app.influx, &[direct("2024-01-03T23:48:10Z", 900_001)])
        .await
        .unwrap();
    // The lookback runs once per engine.lookback_interval_secs (60 s).
    app.clock.advance(60 * NANOS_PER_SEC);
    engine.tick(&TaskFilter::default()).await.unwrap();
    let until = Resolution::M1.window_start(app.clock.now() - 5 * NANOS_PER_SEC);
    for res in Resolution::ALL {
        let expected = app.expected("BTCUSD", res, until).await;
        assert_candles_eq(
            &app.stored("BTCUSD", res).await,
            &expected,
            &format!("{res} after lookback"),
        );
    }
    // A day behind: out of the lookback's reach until a rebuild.
    write_trades(&app.influx, &[direct("2024-01-02T10:00:00Z", 900_002)])
        .await
        .unwrap();
    engine.tick(&TaskFilter::default()).await.unwrap();
    let stale = app.stored("BTCUSD", Resolution::M1).await;
    assert_ne!(stale, app.expected("BTCUSD", Resolution::M1, until).await);
    engine
        .rebuild(
            "BTCUSD",
            t("2024-01-02T00:00:00Z"),
            t("2024-01-02T12:00:00Z"),
        )
        .await
        .unwrap();
    for res in Resolution::ALL {
        let expected = app.expected("BTCUSD", res, until).await;
        assert_candles_eq(
            &app.stored("BTCUSD", res).await,
            &expected,
            &format!("{res} after rebuild"),
        );
    }
}

// 1.x only: needs a year of chunks. On 3.x, since steps are pipelined, the
// daemon gets through them, but the rerun's first query over that year of
// unpersisted 10-minute chunks took over 30 s (2 of 2 runs; README "InfluxDB
// 3: long time ranges").
#[tokio::test]
async fn sigterm_during_a_backfill_finishes_the_chunk_releases_leases_and_exits_zero() {
    let app = TestApp::spawn().await;
    with_trades(&app, &["BTCUSD"], 365, 150_000).await;
    let mut daemon = Daemon::spawn(&app, TICK_EVERY_SECOND);
    wait_for_chunks(&app, "BTCUSD", 3, Duration::from_secs(60)).await;
    sigterm(&daemon.child);
    let status = wait_exit(&mut daemon.child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", daemon.log());
    for task in app.store.tasks().await.unwrap() {
        assert_eq!(task.lease_owner, None, "{task:?}");
        assert_ne!(task.status, TaskStatus::Running, "{task:?}");
        if let Some(w) = task.watermark {
            assert_eq!(
                w % task.resolution.nanos(),
                0,
                "watermark on a window boundary"
            );
        }
    }
    let m1 = app
        .store
        .task("BTCUSD", Resolution::M1)
        .await
        .unwrap()
        .unwrap();
    assert!(
        m1.watermark.unwrap() < t("2024-12-30T00:00:00Z"),
        "stopped before the end: {m1:?}"
    );
    let out = app.ohlcd().arg("backfill").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_exact_and_settled(&app, &["BTCUSD"]).await;
}

/// A renewal that comes too late (a loaded host) lets another process take a
/// lease over mid-batch. The backfill that lost it gives the batch back and
/// waits for the new holder like for any other: no symbol fails, nothing is
/// done twice, and it finishes once that holder is gone.
#[tokio::test]
async fn a_backfill_that_loses_its_leases_mid_batch_gives_them_back_and_still_finishes() {
    let app = TestApp::spawn().await;
    let symbols = ["BTCUSD", "ETHUSD"];
    with_trades(&app, &symbols, 6, 20_000).await;
    let mut backfill = KillOnDrop::spawn(
        app.ohlcd()
            .arg("backfill")
            .env("OHLCD_FAILPOINT", "after_commit")
            .stderr(Stdio::piped()),
    );
    wait_for_stderr(
        &mut backfill,
        "failpoint after_commit reached",
        Duration::from_secs(60),
    );
    // Another process takes every lease over, for 3 s of database time, as
    // one may once a lease has expired.
    let pool = sqlx::SqlitePool::connect(&app.settings.progress.database_url)
        .await
        .unwrap();
    let stolen = sqlx::query(
        "UPDATE progress SET lease_owner = 'another-host',
                lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+3 seconds')
         WHERE lease_owner IS NOT NULL",
    )
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(stolen, 12, "the backfill held both symbols' six tasks");
    pool.close().await;
    // Parked at the failpoint, the backfill can only go on through the
    // renewal that finds its leases gone.
    let status = wait_exit(&mut backfill, Duration::from_secs(60));
    assert!(status.success(), "{status}");
    for task in app.store.tasks().await.unwrap() {
        assert_eq!(task.failures, 0, "{task:?}");
    }
    assert_exact_and_settled(&app, &symbols).await;
}

/// A backfill waits for a symbol another process holds as long as that
/// process commits, however long it works; it gives up, saying so, on a
/// holder that renews its lease but has committed nothing for a while.
#[tokio::test]
async fn a_backfill_waits_for_a_holder_that_commits_and_gives_up_on_one_that_does_not() {
    let app = TestApp::spawn().await;
    with_trades(&app, &["BTCUSD"], 3, 5_000).await;
    let now = SystemClock.now();
    app.store
        .ensure_symbols(&["BTCUSD".to_string()], now)
        .await
        .unwrap();
    let pool = sqlx::SqlitePool::connect(&app.settings.progress.database_url)
        .await
        .unwrap();
    // The other process: holds BTCUSD for 5 s of database time at each
    // renewal, and where `commit` moves its 1m watermark a minute on.
    let hold = |minute: Option<i64>| {
        let watermark =
            minute.map(|m| to_rfc3339(t("2024-01-01T00:00:00Z") + m * 60 * NANOS_PER_SEC));
        let pool = pool.clone();
        async move {
            sqlx::query(
                "UPDATE progress SET lease_owner = 'another-host', status = 'running',
                        lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+5 seconds'),
                        watermark = CASE WHEN resolution = '1m' THEN ?1 ELSE watermark END
                 WHERE symbol = 'BTCUSD'",
            )
            .bind(watermark)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let backfill = || {
        app.ohlcd()
            .arg("backfill")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // A holder at work for longer than the backfill's patience (twice the
    // lease and 5 s: 15 s here), committing every 2 s.
    hold(Some(0)).await;
    let mut waiting = KillOnDrop(backfill());
    for minute in 1..=12 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            waiting.try_wait().unwrap().is_none(),
            "the backfill gave up on a holder that commits"
        );
        hold(Some(minute)).await;
    }
    // It finishes, and forgets what it committed (the candles were never
    // written): the backfill takes over from the start once it expires.
    hold(None).await;
    let status = wait_exit(&mut waiting, Duration::from_secs(60));
    assert!(status.success(), "{status}");
    assert_exact_and_settled(&app, &["BTCUSD"]).await;

    // A holder that renews and never commits: given up on, with the reason.
    let mut giving_up = KillOnDrop(backfill());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = giving_up.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still waiting after 60 s");
        hold(None).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut giving_up.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("stayed leased by another ohlcd that committed nothing"),
        "{stderr}"
    );
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

// Start-up configuration checks, before any server is asked.
#[tokio::test]
async fn configuration_errors_stop_start_up_with_one_clear_line() {
    let influx = influx_with_users(
        &[
            "CREATE DATABASE d",
            "CREATE USER ro WITH PASSWORD 'pw'",
            "GRANT READ ON d TO ro",
        ],
        &[("ro", "d")],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let run = |user: &str, password: &str, args: &[&str], extra: &[(&str, String)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ohlcd"));
        cmd.args(args)
            .env("OHLCD_INFLUX__URL", &influx.url)
            .env("OHLCD_INFLUX__DATABASE", "d")
            .env("OHLCD_INFLUX__USERNAME", user)
            .env("OHLCD_INFLUX__PASSWORD", password)
            .env(
                "OHLCD_PROGRESS__DATABASE_URL",
                dir.path().join("p.db").display().to_string(),
            );
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let err = one_line_error(&run("admin", "wrong", &["backfill"], &[]));
    assert!(
        err.contains("refused the credentials") && err.contains("influx.username"),
        "{err}"
    );
    let err = one_line_error(&run("ro", "pw", &["backfill"], &[]));
    assert!(
        err.contains("does not let this user write") && err.contains("grant WRITE"),
        "{err}"
    );
    // The right user works.
    let ok = run("admin", "pw", &["backfill"], &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let err = one_line_error(&run(
        "admin",
        "pw",
        &["run"],
        &[("OHLCD_ENGINE__CRON", "every minute".into())],
    ));
    assert!(
        err.contains("engine.cron") && err.contains("not a valid cron"),
        "{err}"
    );

    let corrupt = dir.path().join("corrupt.db");
    std::fs::write(&corrupt, vec![0x42u8; 8192]).unwrap();
    let err = one_line_error(&run(
        "admin",
        "pw",
        &["progress"],
        &[(
            "OHLCD_PROGRESS__DATABASE_URL",
            corrupt.display().to_string(),
        )],
    ));
    assert!(
        err.contains("progress database") && err.contains("corrupt.db"),
        "{err}"
    );
    assert_eq!(
        err.matches("file is not a database").count(),
        1,
        "the cause is said once: {err}"
    );

    let err = one_line_error(&run(
        "admin",
        "pw",
        &["backfill"],
        &[("OHLCD_INFLUX__URL", "localhost:8086".into())],
    ));
    assert!(err.contains("influx.url"), "{err}");
}

//! Outages the daemon must get through: InfluxDB or the progress store down
//! when `ohlcd run` starts (a supervisor restarting it mid-outage).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::faults::wait_exit;
use crate::helpers::{KillOnDrop, TestApp, free_port};

/// The child's stderr, line by line, on a channel.
fn stderr_lines(child: &mut Child) -> Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for `n` lines containing `needle`; panics with what was seen.
fn wait_lines(rx: &Receiver<String>, needle: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut found = 0;
    while found < n {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                found += usize::from(line.contains(needle));
                seen.push(line);
            }
            Err(_) => panic!("{n}× {needle:?} not seen within {timeout:?}: {seen:#?}"),
        }
    }
}

fn sigterm(child: &Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn run_started_while_influxdb_is_down_waits_for_it_and_then_serves() {
    let mut app = TestApp::spawn().await;
    app.server.stop();
    let port = free_port();
    let mut daemon = KillOnDrop::spawn(
        app.ohlcd()
            .arg("run")
            .env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let lines = stderr_lines(&mut daemon);
    // Two attempts, both refused: it keeps waiting instead of exiting.
    wait_lines(&lines, "waiting for InfluxDB", 2, Duration::from_secs(30));
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");

    app.server.restart();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon exited instead of serving"
        );
        assert!(Instant::now() < deadline, "not healthy within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigterm(&daemon);
    assert!(wait_exit(&mut daemon, Duration::from_secs(30)).success());
}

#[tokio::test]
async fn run_started_while_the_progress_store_is_down_waits_and_stops_cleanly() {
    let app = TestApp::spawn().await;
    let port = free_port();
    let mut daemon = KillOnDrop::spawn(
        app.ohlcd()
            .arg("run")
            .env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "OHLCD_PROGRESS__DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{}/ohlcd", free_port()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let lines = stderr_lines(&mut daemon);
    wait_lines(
        &lines,
        "waiting for InfluxDB and the progress store",
        2,
        Duration::from_secs(30),
    );
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
    // SIGTERM while waiting: nothing was started, a clean exit.
    sigterm(&daemon);
    assert!(wait_exit(&mut daemon, Duration::from_secs(30)).success());
}

#[tokio::test]
async fn run_with_a_mistake_waiting_cannot_fix_still_exits_with_one_line() {
    let app = TestApp::spawn().await;
    // A progress file that is not a database: waiting would not help.
    let junk = app.dir.path().join("junk.db");
    std::fs::write(&junk, "this is not SQLite").unwrap();
    let out = app
        .ohlcd()
        .arg("run")
        .env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("OHLCD_PROGRESS__DATABASE_URL", junk.display().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && !err.contains("waiting"), "{err}");
}

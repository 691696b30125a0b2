//! Outages the daemon must get through: InfluxDB or the progress store down
//! when `ohlcd run` starts (a supervisor restarting it mid-outage), and
//! InfluxDB's disk full.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use ohlcd::clock::Clock;
use serde_json::Value;

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

/// influxd's data and WAL directories on a small tmpfs of their own, so a
/// test can fill the disk under it; unmounted when dropped. Mounting needs
/// root (CI runs as root); elsewhere [`SmallDisk::under`] says so and gives
/// `None`.
struct SmallDisk {
    mounts: Vec<std::path::PathBuf>,
}

impl SmallDisk {
    /// Stops influxd, moves its `data` and `wal` onto a 32 MB tmpfs each,
    /// starts it again on them.
    fn under(app: &mut TestApp) -> Option<SmallDisk> {
        let dir = app.server.dir().to_path_buf();
        app.server.stop();
        let mut disk = SmallDisk { mounts: Vec::new() };
        for sub in ["data", "wal"] {
            let path = dir.join(sub);
            let kept = dir.join(format!("{sub}.on-disk"));
            // influxd creates them at its first write, if not before.
            std::fs::create_dir_all(&path).unwrap();
            std::fs::rename(&path, &kept).unwrap();
            std::fs::create_dir(&path).unwrap();
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
            if !mounted {
                std::fs::remove_dir(&path).unwrap();
                std::fs::rename(&kept, &path).unwrap();
                app.server.restart();
                return None;
            }
            disk.mounts.push(path.clone());
            let copied = std::process::Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", kept.display()))
                .arg(&path)
                .status()
                .unwrap();
            assert!(copied.success());
            std::fs::remove_dir_all(&kept).unwrap();
        }
        app.server.restart();
        Some(disk)
    }

    /// Fills every mount with a file of zeros until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        for m in &self.mounts {
            let mut f = std::fs::File::create(m.join("filler")).unwrap();
            let block = vec![0u8; 1 << 20];
            while f.write_all(&block).is_ok() {}
            // The last partial block: whatever space is left.
            while f.write_all(&block[..4096]).is_ok() {}
            while f.write_all(&[0]).is_ok() {}
        }
    }

    /// Frees the space again.
    fn free(&self) {
        for m in &self.mounts {
            std::fs::remove_file(m.join("filler")).unwrap();
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        for m in &self.mounts {
            // Lazy: influxd (stopped later, with the app) still holds files.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .status();
        }
    }
}

/// Trades of BTCUSD at `ms` (Unix ms), ids from `first_id`, as sent to the API.
fn trades_json(at_ms: &[i64], first_id: i64) -> String {
    let items: Vec<String> = at_ms
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            format!(
                r#"{{"symbol":"BTCUSD","price":{}.5,"amount":0.25,"side":"buy","timestamp":{ms},"id":{}}}"#,
                200 + i % 50,
                first_id + i as i64
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[tokio::test]
async fn a_full_disk_makes_ohlcd_unhealthy_loses_and_skips_nothing_and_it_resumes_when_space_is_freed()
 {
    use ohlcd::candle::{NANOS_PER_SEC, Resolution};
    use ohlcd::engine::TaskFilter;

    use crate::faults::with_trades;
    use crate::helpers::{assert_candles_eq, t};

    let mut app = TestApp::spawn().await;
    let Some(disk) = SmallDisk::under(&mut app) else {
        assert!(
            std::env::var("CI").is_err(),
            "cannot mount a tmpfs (needs root): the full-disk test did not run"
        );
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    with_trades(&app, &["BTCUSD"], 2, 5_000).await;
    app.clock.set(t("2024-01-03T00:00:30Z"));
    let engine = app.engine("a");
    engine.tick(&TaskFilter::default()).await.unwrap();
    let watermarks = || async {
        let tasks = app.store.tasks().await.unwrap();
        tasks.iter().map(|t| t.watermark).collect::<Vec<_>>()
    };
    let before = watermarks().await;
    let (url, _stop) = app.serve().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let healthz = format!("{url}/healthz");
    assert_eq!(http.get(&healthz).send().await.unwrap().status(), 200);
    let post = |body: String| {
        let http = http.clone();
        let url = format!("{url}/api/trades");
        async move {
            let resp = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // New trades ahead of the watermark, accepted before the disk fills.
    let new_ms: Vec<i64> = (1..=4)
        .map(|m| t("2024-01-03T00:00:00Z") / 1_000_000 + m * 60_000 + 123)
        .collect();
    assert_eq!(post(trades_json(&new_ms, 500_001)).await.0, 200);

    disk.fill();
    // A POST is refused with a 5xx that says why; one batch late (behind
    // the watermarks), one new, neither retried by its client. Each is
    // bigger than the unused rest of a tmpfs page, so the write cannot fit.
    let spread = |from: i64, step_ms: i64| -> Vec<i64> {
        (0..300)
            .map(|i| from / 1_000_000 + i * step_ms + 7)
            .collect()
    };
    let late_ms = spread(t("2024-01-01T10:00:00Z"), 97_000);
    let more_ms = spread(t("2024-01-03T00:05:00Z"), 150);
    for (body, what) in [
        (trades_json(&late_ms, 600_001), "late"),
        (trades_json(&more_ms, 700_001), "new"),
    ] {
        let (status, answer) = post(body).await;
        assert!(status >= 500, "{what}: {status} {answer}");
        let said = answer["error"].as_str().unwrap_or_default();
        assert!(said.contains("no space left on device"), "{what}: {answer}");
    }
    // Unhealthy: InfluxDB answers, but refuses writes (the reason goes to
    // the log, not to a public endpoint).
    let resp = http.get(&healthz).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert_eq!(body["influx"], "writes_failing", "{body}");
    // The engine cannot write its candles: no watermark moves.
    app.clock.set(t("2024-01-03T00:10:30Z"));
    let tick = engine.tick(&TaskFilter::default()).await;
    assert!(
        tick.as_ref().is_err() || tick.as_ref().is_ok_and(|r| !r.failures.is_empty()),
        "{tick:?}"
    );
    assert_eq!(
        watermarks().await,
        before,
        "a watermark moved while writes failed"
    );

    disk.free();
    // InfluxDB 1.x keeps failing every write after its WAL hit a full disk
    // (its WAL writer keeps the error) until it is restarted, as an
    // operator does once there is space; the points of refused writes,
    // visible until then, are gone after it.
    let still = post(trades_json(&[new_ms[3] + 1], 800_001)).await;
    assert!(still.0 >= 500, "{still:?}");
    app.server.restart();
    let tick = engine.tick(&TaskFilter::default()).await.unwrap();
    let resp = http.get(&healthz).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body} after {tick:?}");
    // The 1m watermark moves on to the horizon, past the minutes written
    // before the disk filled (tasks are in Resolution::ALL order, 1m first).
    let after = watermarks().await;
    assert_eq!(after[0], Some(t("2024-01-03T00:10:00Z")), "{after:?}");
    assert!(after.iter().zip(&before).all(|(a, b)| a >= b), "{after:?}");
    // Nothing lost, nothing skipped, nothing half-written: each trade of the
    // refused POSTs is stored whole or not at all, and every candle equals
    // the reference from whatever InfluxDB holds, refused trades it kept
    // included.
    for row in app
        .rows("SELECT price, amount, id FROM trades WHERE symbol = 'BTCUSD' AND id >= 600001")
        .await
    {
        assert!(
            row["price"].is_f64() && row["amount"].is_f64() && row["id"].is_i64(),
            "{row:?}"
        );
    }
    let until = Resolution::M1.window_start(app.clock.now() - 5 * NANOS_PER_SEC);
    for res in Resolution::ALL {
        let expected = app.expected("BTCUSD", res, until).await;
        assert_candles_eq(
            &app.stored("BTCUSD", res).await,
            &expected,
            &format!("{res}"),
        );
    }
}

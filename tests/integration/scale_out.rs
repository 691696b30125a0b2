//! Scale-out: three `ohlcd` processes (standing in for three hosts, each with
//! its own owner name) share one PostgreSQL progress store and one InfluxDB.
//! One is SIGKILLed mid-run; the others take its symbols over once its leases
//! expire, and not before. The run history must tile every task's range
//! exactly once and every candle must equal the naive computation from the
//! raw trades.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use ohlcd::candle::{NANOS_PER_DAY, Resolution};
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::NewTrade;
use ohlcd::progress::{Backend, Task, TaskStatus};
use ohlcd::times::{from_rfc3339, to_rfc3339};

use crate::faults::{wait_exit, wait_for_stderr};
use crate::helpers::{KillOnDrop, TestApp, assert_candles_eq, t};

const SYMBOLS: usize = 300;
const DAYS: i64 = 4;

#[tokio::test]
async fn three_daemons_on_one_postgres_do_all_work_once_and_finish_a_killed_ones_symbols() {
    let app = TestApp::spawn_on_store(Backend::Postgres).await;
    let from = t("2024-01-01T00:00:00Z");
    let spec = GenerateSpec {
        symbols: (0..SYMBOLS)
            .map(|i| format!("S{i:03}USD").parse().unwrap())
            .collect(),
        from,
        to: from + DAYS * NANOS_PER_DAY,
        trades: 60_000,
        seed: 3,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;

    // Small batches, so the three daemons take turns at claiming symbols.
    let daemon = |failpoint: Option<&str>| {
        let mut cmd = app.ohlcd();
        cmd.arg("backfill")
            .env("OHLCD_ENGINE__BATCH_SYMBOLS", "10")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(point) = failpoint {
            cmd.env("OHLCD_FAILPOINT", point);
        }
        KillOnDrop::spawn(&mut cmd)
    };
    // The victim parks after its second commit, holding the leases of the
    // batches it has in flight; then it gets SIGKILL.
    let mut victim = daemon(Some("after_commit:2"));
    let mut a = daemon(None);
    let mut b = daemon(None);
    wait_for_stderr(
        &mut victim,
        "failpoint after_commit reached",
        Duration::from_secs(60),
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
    // Owner names are `<host>-<pid>-<suffix>`.
    let victim_tag = format!("-{}-", victim.id());
    let is_victim = |owner: &str| owner.contains(&victim_tag);
    // What the victim held, and until when (the database's clock).
    let held: Vec<Task> = app
        .store
        .tasks()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.lease_owner.as_deref().is_some_and(is_victim))
        .collect();
    assert!(!held.is_empty(), "the victim held no lease when killed");
    let orphaned: Vec<(String, Resolution)> = held
        .iter()
        .map(|t| (t.symbol.clone(), t.resolution))
        .collect();

    // Who took each of them over, and when it claimed it: a claim stamps the
    // task's last run start with the claimer's clock (the same host's clock
    // as the database's here), and it stays until the task is claimed again.
    let mut taken: HashMap<(String, Resolution), (String, i64)> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while taken.len() < held.len() {
        for t in app.store.tasks().await.unwrap() {
            let key = (t.symbol.clone(), t.resolution);
            if orphaned.contains(&key)
                && !taken.contains_key(&key)
                && let Some(owner) = t.last_owner.filter(|o| !is_victim(o))
            {
                taken.insert(key, (owner, t.last_run_started_at.unwrap()));
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} orphaned tasks taken over in 120 s",
            taken.len(),
            held.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // None before the victim's lease expired.
    for t in &held {
        let (owner, claimed_at) = &taken[&(t.symbol.clone(), t.resolution)];
        let expired_at = t.lease_expires_at.unwrap();
        assert!(
            *claimed_at >= expired_at,
            "{} {} taken over by {owner} at {}, before the victim's lease ran out at {}",
            t.symbol,
            t.resolution,
            to_rfc3339(*claimed_at),
            to_rfc3339(expired_at)
        );
    }

    for (name, child) in [("a", &mut a), ("b", &mut b)] {
        let status = wait_exit(child, Duration::from_secs(120));
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("daemon {name}: {status}\n{stderr}");
        }
    }

    // The victim's tasks were finished by the others.
    for (symbol, res) in &orphaned {
        let task = app.store.task(symbol, *res).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        assert!(
            task.last_owner.as_deref().is_some_and(|o| !is_victim(o)),
            "{task:?}"
        );
    }

    // Every task's forward chunks tile its range once, up to its watermark:
    // no range was processed twice, none skipped.
    let mut owners = std::collections::BTreeSet::new();
    let tasks = app.store.tasks().await.unwrap();
    assert_eq!(tasks.len(), SYMBOLS * 6);
    for task in &tasks {
        let what = format!("{} {}", task.symbol, task.resolution);
        assert_eq!(task.status, TaskStatus::Completed, "{what}");
        let mut runs = app
            .store
            .runs(&task.symbol, task.resolution, i64::MAX)
            .await
            .unwrap();
        runs.retain(|r| r.kind == "chunk" && r.status == "ok");
        runs.reverse();
        assert!(!runs.is_empty(), "{what}: no chunk committed");
        owners.extend(runs.iter().map(|r| r.owner.clone()));
        let starts = from_rfc3339(&runs[0].range_start).unwrap();
        assert!(starts <= from, "{what}: history starts at {starts}");
        for pair in runs.windows(2) {
            assert_eq!(pair[0].range_end, pair[1].range_start, "{what}: {pair:?}");
        }
        let watermark = task.watermark.map(to_rfc3339);
        assert_eq!(
            Some(&runs[runs.len() - 1].range_end),
            watermark.as_ref(),
            "{what}"
        );
    }
    assert_eq!(
        owners.len(),
        3,
        "all three daemons committed chunks: {owners:?}"
    );
    assert!(owners.iter().any(|o| is_victim(o)), "{owners:?}");

    // Every candle of every symbol and resolution equals the naive one.
    let until = ohlcd::clock::Clock::now(&ohlcd::clock::SystemClock) - 60 * 1_000_000_000;
    for symbol in &spec.symbols {
        let expected = app.expected_all(symbol, until).await;
        for (res, expected) in Resolution::ALL.iter().zip(expected) {
            assert!(!expected.is_empty(), "{symbol} {res}: no reference candles");
            let stored = app.stored(symbol, *res).await;
            assert_candles_eq(&stored, &expected, &format!("{symbol} {res}"));
        }
    }
}

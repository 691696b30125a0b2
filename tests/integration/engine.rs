//! The downsampling engine end to end: generate → tick → candles checked against
//! an independent computation from the raw trades.

use ohlcd::candle::{NANOS_PER_DAY, NANOS_PER_SEC, Resolution, Side};
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::influx::TradeRead;
use ohlcd::ingest::NewTrade;
use ohlcd::progress::{Backend, TaskStatus};

use crate::helpers::{
    self, TestApp, assert_candles_eq, on_both_servers, on_both_stores, on_both_stores_and_servers,
    secs, t,
};

const SYMBOLS: [&str; 2] = ["BTCUSD", "ETHUSD"];

async fn app_with_generated_trades(trades: u64) -> (TestApp, GenerateSpec) {
    app_with_generated_trades_on(Backend::Sqlite, trades).await
}

async fn app_with_generated_trades_on(backend: Backend, trades: u64) -> (TestApp, GenerateSpec) {
    let app = TestApp::spawn_on_store(backend).await;
    let spec = generated(&app, trades).await;
    (app, spec)
}

/// Two symbols over 2.5 days written into `app` through the ingest path.
pub(crate) async fn generated(app: &TestApp, trades: u64) -> GenerateSpec {
    let spec = GenerateSpec {
        symbols: SYMBOLS.iter().map(|s| s.parse().unwrap()).collect(),
        from: t("2024-03-01T00:00:00Z"),
        // Not day-aligned, so the last day is partial for every resolution.
        to: t("2024-03-03T13:37:00Z"),
        trades,
        seed: 7,
    };
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    app.write(&trades).await;
    spec
}

async fn check_all_candles(app: &TestApp, until: i64) {
    for symbol in SYMBOLS {
        for res in Resolution::ALL {
            let expected = app.expected(symbol, res, until).await;
            assert!(!expected.is_empty(), "{symbol} {res}: no reference candles");
            let stored = app.stored(symbol, res).await;
            assert_candles_eq(&stored, &expected, &format!("{symbol} {res}"));
        }
    }
}

on_both_stores_and_servers!(
    backfill_materializes_every_resolution_exactly_as_computed_from_raw_trades,
    a_second_backfill_writes_nothing_new,
);

on_both_servers!(
    trade_reads_return_exactly_the_stored_trades_of_the_range,
    the_open_minute_is_never_materialized,
    same_millisecond_trades_are_kept_and_a_resent_trade_counts_once,
    an_overlapping_tick_does_nothing,
);

// The rebuild test deletes candles to damage them (3.x has no DELETE; its
// rebuild is tested in compat.rs); the lease tests exercise the progress
// store only, whatever the server.
on_both_stores!(
    rebuild_of_a_range_restores_identical_candles_and_removes_stale_ones,
    a_leased_symbol_is_skipped_until_its_lease_expires_then_taken_over,
    a_daemon_whose_clock_runs_minutes_ahead_does_not_take_over_a_live_lease,
    concurrent_claims_of_the_same_symbols_never_give_one_symbol_to_two_owners,
    a_daemon_that_planned_a_range_another_one_ran_meanwhile_does_not_run_it_again,
);

async fn backfill_materializes_every_resolution_exactly_as_computed_from_raw_trades(app: TestApp) {
    // Data older than a day: on 3.x, symbol discovery must not be limited to 24 hours.
    let spec = generated(&app, 60_000).await;
    // "now" is mid-minute, mid-hour, mid-day a while after the data ends.
    let now = spec.to + 2 * NANOS_PER_DAY + secs(3 * 3600 + 17 * 60 + 41);
    app.clock.set(now);
    let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.symbols_run, 2);
    let horizon_1m = Resolution::M1.window_start(now - secs(5));
    check_all_candles(&app, horizon_1m).await;

    // Every task completed, with the watermark each resolution may reach.
    let tasks = app.store.tasks().await.unwrap();
    assert_eq!(tasks.len(), 12);
    for task in &tasks {
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        assert_eq!(task.lease_owner, None);
        assert_eq!(task.last_error, None);
        let expected = task.resolution.window_start(horizon_1m);
        assert_eq!(
            task.watermark,
            Some(expected),
            "{} {}",
            task.symbol,
            task.resolution
        );
    }
    let trades_in_1m: i64 = app
        .stored("BTCUSD", Resolution::M1)
        .await
        .iter()
        .map(|c| c.trades)
        .sum();
    let trades_in_1d: i64 = app
        .stored("BTCUSD", Resolution::D1)
        .await
        .iter()
        .map(|c| c.trades)
        .sum();
    assert_eq!(trades_in_1m, 30_000, "every trade counted once at 1m");
    assert_eq!(trades_in_1d, 30_000, "every trade counted once at 1d");
}

async fn a_second_backfill_writes_nothing_new(app: TestApp) {
    let spec = generated(&app, 20_000).await;
    app.clock.set(spec.to + NANOS_PER_DAY);
    let engine = app.engine("a");
    let first = engine.tick(&TaskFilter::default()).await.unwrap();
    assert!(first.candles_written > 0);
    let before = app.stored("ETHUSD", Resolution::M1).await;
    let tasks_before = app.store.tasks().await.unwrap();

    let second = engine.tick(&TaskFilter::default()).await.unwrap();
    assert_eq!(
        (second.chunks, second.candles_written, second.rows_read),
        (0, 0, 0)
    );
    assert_eq!(app.stored("ETHUSD", Resolution::M1).await, before);
    let tasks_after = app.store.tasks().await.unwrap();
    for (a, b) in tasks_before.iter().zip(&tasks_after) {
        assert_eq!(
            (a.watermark, a.chunks, a.candles_written),
            (b.watermark, b.chunks, b.candles_written)
        );
    }
}

async fn rebuild_of_a_range_restores_identical_candles_and_removes_stale_ones(backend: Backend) {
    let (app, spec) = app_with_generated_trades_on(backend, 20_000).await;
    app.clock.set(spec.to + NANOS_PER_DAY);
    let engine = app.engine("a");
    engine.tick(&TaskFilter::default()).await.unwrap();
    let mut snapshot = Vec::new();
    for res in Resolution::ALL {
        snapshot.push(app.stored("BTCUSD", res).await);
    }
    // Damage day 2 at every resolution: delete its candles, then plant a bogus
    // candle in a window that has no trades (after the last trade, below the
    // 1m watermark).
    let day2 = t("2024-03-02T00:00:00Z");
    for res in Resolution::ALL {
        app.influx
            .delete_candles(res, "BTCUSD", day2..day2 + NANOS_PER_DAY)
            .await
            .unwrap();
    }
    let bogus = ohlcd::candle::Candle {
        start: t("2024-03-04T00:00:00Z"),
        open: 1.0,
        high: 1.0,
        low: 1.0,
        close: 1.0,
        volume: 1.0,
        quote_volume: 1.0,
        trades: 1,
        buy_volume: 0.0,
    };
    crate::helpers::write_candles(&app.influx, Resolution::M1, "BTCUSD", &[bogus])
        .await
        .unwrap();
    assert_ne!(app.stored("BTCUSD", Resolution::H1).await, snapshot[3]);

    engine.rebuild("BTCUSD", day2, day2 + 1).await.unwrap();
    engine
        .rebuild(
            "BTCUSD",
            t("2024-03-04T00:00:00Z"),
            t("2024-03-04T00:00:01Z"),
        )
        .await
        .unwrap();
    for (i, res) in Resolution::ALL.into_iter().enumerate() {
        assert_eq!(
            app.stored("BTCUSD", res).await,
            snapshot[i],
            "{res} after rebuild"
        );
    }
    // A candle before the symbol's earliest stored trade has nothing to be
    // recomputed from (its trades may have been deleted by other means): kept.
    let older = ohlcd::candle::Candle {
        start: t("2024-02-10T00:00:00Z"),
        ..bogus
    };
    crate::helpers::write_candles(&app.influx, Resolution::M1, "BTCUSD", &[older])
        .await
        .unwrap();
    let report = engine
        .rebuild(
            "BTCUSD",
            t("2024-02-10T00:00:00Z"),
            t("2024-02-10T00:00:01Z"),
        )
        .await
        .unwrap();
    assert!(report.is_limited() && !report.expired, "{report:?}");
    assert_eq!((report.kept, report.written), (1, 0));
    assert!(
        report
            .limit_line("BTCUSD")
            .contains("BTCUSD has no raw trades stored before"),
        "{}",
        report.limit_line("BTCUSD")
    );
    let mut with_older = vec![older];
    with_older.extend(snapshot[0].iter().copied());
    assert_eq!(app.stored("BTCUSD", Resolution::M1).await, with_older);
    // A rebuild keeps the tasks where they were.
    for task in app.store.tasks().await.unwrap() {
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.lease_owner, None);
    }
}

fn trade(symbol: &str, time: &str, id: i64, price: f64, amount: f64, side: Side) -> NewTrade {
    NewTrade {
        symbol: symbol.parse().unwrap(),
        side,
        price,
        amount,
        time_ms: t(time) / 1_000_000,
        id,
    }
}

async fn the_open_minute_is_never_materialized(app: TestApp) {
    app.write(&[
        trade("SOLUSD", "2024-05-01T09:59:10Z", 1, 100.0, 1.0, Side::Buy),
        trade("SOLUSD", "2024-05-01T10:00:05Z", 2, 101.0, 1.0, Side::Buy),
        trade("SOLUSD", "2024-05-01T10:00:20Z", 3, 102.0, 2.0, Side::Sell),
    ])
    .await;
    let engine = app.engine("a");
    // 10:00:40 with 5 s settle: the 10:00 minute is still open.
    app.clock.set(t("2024-05-01T10:00:40Z"));
    engine.tick(&TaskFilter::default()).await.unwrap();
    let m1 = app.stored("SOLUSD", Resolution::M1).await;
    assert_eq!(m1.len(), 1);
    assert_eq!(m1[0].start, t("2024-05-01T09:59:00Z"));
    let task = app
        .store
        .task("SOLUSD", Resolution::M1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.watermark, Some(t("2024-05-01T10:00:00Z")));

    // Closed but not yet settled: still not written.
    app.clock.set(t("2024-05-01T10:01:03Z"));
    engine.tick(&TaskFilter::default()).await.unwrap();
    assert_eq!(app.stored("SOLUSD", Resolution::M1).await.len(), 1);

    // Settled: written whole, with both trades.
    app.clock.set(t("2024-05-01T10:01:06Z"));
    engine.tick(&TaskFilter::default()).await.unwrap();
    let m1 = app.stored("SOLUSD", Resolution::M1).await;
    assert_eq!(m1.len(), 2);
    assert_eq!(
        (m1[1].open, m1[1].close, m1[1].trades, m1[1].volume),
        (101.0, 102.0, 2, 3.0)
    );
    // 5m is bounded by the 1m watermark: 10:00–10:05 is not complete yet.
    let m5 = app.stored("SOLUSD", Resolution::M5).await;
    assert_eq!(
        m5.iter().map(|c| c.start).collect::<Vec<_>>(),
        vec![t("2024-05-01T09:55:00Z")]
    );
}

async fn same_millisecond_trades_are_kept_and_a_resent_trade_counts_once(app: TestApp) {
    let ms = "2024-05-01T12:00:00.123Z";
    let a = trade("XRPUSD", ms, 1001, 0.5, 10.0, Side::Buy);
    let b = trade("XRPUSD", ms, 1002, 0.6, 20.0, Side::Buy);
    let c = trade("XRPUSD", ms, 1003, 0.4, 30.0, Side::Sell);
    app.write(&[a.clone(), b.clone(), c.clone()]).await;
    // The same trades again (a client retry): must not double count.
    app.write(&[a, b, c]).await;
    app.clock.set(t("2024-05-01T12:10:00Z"));
    app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    let m1 = app.stored("XRPUSD", Resolution::M1).await;
    assert_eq!(m1.len(), 1);
    let c = m1[0];
    assert_eq!(c.trades, 3);
    assert_eq!(c.volume, 60.0);
    assert_eq!(c.buy_volume, 30.0);
    // open/close by (time, id): ids break the tie inside the millisecond.
    assert_eq!((c.open, c.close, c.high, c.low), (0.5, 0.4, 0.6, 0.4));
    let raw = app
        .rows("SELECT count(price) FROM trades WHERE symbol = 'XRPUSD'")
        .await;
    assert_eq!(raw[0]["count"], 3);
}

async fn an_overlapping_tick_does_nothing(app: TestApp) {
    let spec = generated(&app, 5_000).await;
    app.clock.set(spec.to + NANOS_PER_DAY);
    let engine = app.engine("a");
    let filter = TaskFilter::default();
    let (r1, r2) = tokio::join!(engine.tick(&filter), engine.tick(&filter));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert!(
        r1.overlapped != r2.overlapped,
        "exactly one tick runs: {r1:?} {r2:?}"
    );
    let ran = if r1.overlapped { r2 } else { r1 };
    assert_eq!(ran.symbols_run, 2);
}

async fn a_leased_symbol_is_skipped_until_its_lease_expires_then_taken_over(backend: Backend) {
    let (app, spec) = app_with_generated_trades_on(backend, 5_000).await;
    let now = spec.to + NANOS_PER_DAY;
    app.clock.set(now);
    let b = app.engine("daemon-b");
    app.store
        .ensure_symbols(&["BTCUSD".to_string()], now)
        .await
        .unwrap();
    // daemon-a "crashes" holding BTCUSD (all six of its tasks). Leases run
    // on the database clock, so this one really lasts a few seconds.
    let lease = std::time::Duration::from_secs(4);
    let held = app
        .store
        .claim_symbols(&["BTCUSD".to_string()], "daemon-a", now, lease)
        .await
        .unwrap();
    assert_eq!(held, vec!["BTCUSD".to_string()]);
    let report = b.tick(&TaskFilter::default()).await.unwrap();
    assert_eq!(
        (report.symbols_run, report.symbols_leased),
        (1, 1),
        "{report:?}"
    );
    for res in Resolution::ALL {
        let task = app.store.task("BTCUSD", res).await.unwrap().unwrap();
        assert_eq!((task.status, task.watermark), (TaskStatus::Running, None));
        let other = app.store.task("ETHUSD", res).await.unwrap().unwrap();
        assert_eq!(other.status, TaskStatus::Completed, "ETHUSD {res}");
    }

    // After the lease expires, daemon-b takes BTCUSD over and finishes it.
    let task = app.store.task("BTCUSD", Resolution::M1).await.unwrap();
    sleep_past(task.unwrap().lease_expires_at.unwrap()).await;
    let report = b.tick(&TaskFilter::default()).await.unwrap();
    assert_eq!(report.symbols_leased, 0, "{report:?}");
    assert!(report.chunks > 0, "{report:?}");
    for res in Resolution::ALL {
        let task = app.store.task("BTCUSD", res).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Completed, "{res}");
        assert_eq!(task.last_owner.as_deref(), Some("daemon-b"), "{res}");
    }
    // daemon-a's stale lease can no longer renew or commit anything.
    assert!(
        app.store
            .renew_symbols(
                &["BTCUSD".to_string()],
                "daemon-a",
                ohlcd::clock::Clock::now(&app.clock),
                lease
            )
            .await
            .is_err()
    );
}

/// The race `claim_planned` guards, forced: daemon A plans a round (BTCUSD
/// from its first day on) and stops before claiming it; daemon B runs BTCUSD
/// to the horizon and releases it; then A goes on. A's plan is stale, so A
/// must claim nothing and redo nothing. Candles would come out right either
/// way (rewrites are idempotent); the run history shows duplicated work.
async fn a_daemon_that_planned_a_range_another_one_ran_meanwhile_does_not_run_it_again(
    backend: Backend,
) {
    let (app, spec) = app_with_generated_trades_on(backend, 8_000).await;
    app.clock.set(spec.to + NANOS_PER_DAY);
    let only_btc = TaskFilter {
        symbols: vec!["BTCUSD".into()],
    };
    let spy = helpers::Spy::new(app.influx.clone());
    let (planned, go) = spy.hold_next_count();
    let a = app.engine_through("daemon-a", spy);
    let a_tick = tokio::spawn(async move { a.tick(&only_btc).await });
    planned.await.expect("daemon A planned a lagging round");

    let only_btc = TaskFilter {
        symbols: vec!["BTCUSD".into()],
    };
    let b = app.engine("daemon-b").tick(&only_btc).await.unwrap();
    assert!(b.failures.is_empty() && b.chunks > 0, "{b:?}");
    go.send(()).unwrap();
    let a = a_tick.await.unwrap().unwrap();
    assert!(a.failures.is_empty(), "{a:?}");

    let horizon = app.store.task("BTCUSD", Resolution::M1).await.unwrap();
    let horizon = horizon.unwrap().watermark.unwrap();
    for res in Resolution::ALL {
        let mut runs = app.store.runs("BTCUSD", res, 1_000).await.unwrap();
        runs.reverse();
        assert!(!runs.is_empty(), "{res}: no run");
        for run in &runs {
            assert_eq!(
                (run.owner.as_str(), run.kind.as_str(), run.status.as_str()),
                ("daemon-b", "chunk", "ok"),
                "{res}: {runs:#?}"
            );
        }
        // B's forward runs tile the range once, from the first day on.
        assert_eq!(runs[0].range_start, "2024-03-01T00:00:00.000Z", "{res}");
        for pair in runs.windows(2) {
            assert_eq!(pair[0].range_end, pair[1].range_start, "{res}: {pair:#?}");
        }
        let task = app.store.task("BTCUSD", res).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Completed, "{res}");
    }
    assert_eq!(
        (a.chunks, a.rows_read),
        (0, 0),
        "daemon A redid work: {a:?}"
    );
    let expected = app.expected("BTCUSD", Resolution::M1, horizon).await;
    assert_candles_eq(
        &app.stored("BTCUSD", Resolution::M1).await,
        &expected,
        "BTCUSD 1m",
    );
}

/// Sleeps until the database clock (the machine's, for SQLite and the test's
/// local PostgreSQL) has passed `t`.
async fn sleep_past(t: i64) {
    let now = ohlcd::clock::Clock::now(&ohlcd::clock::SystemClock);
    if t >= now {
        tokio::time::sleep(std::time::Duration::from_nanos(
            (t - now) as u64 + 50_000_000,
        ))
        .await;
    }
}

async fn a_daemon_whose_clock_runs_minutes_ahead_does_not_take_over_a_live_lease(backend: Backend) {
    let (app, spec) = app_with_generated_trades_on(backend, 5_000).await;
    let now = spec.to + NANOS_PER_DAY;
    app.clock.set(now);
    let symbols = ["BTCUSD".to_string(), "ETHUSD".to_string()];
    app.store.ensure_symbols(&symbols, now).await.unwrap();
    // daemon-a holds BTCUSD for a minute.
    let lease = std::time::Duration::from_secs(60);
    let held = app
        .store
        .claim_symbols(&symbols[..1], "daemon-a", now, lease)
        .await
        .unwrap();
    assert_eq!(held, symbols[..1]);
    // daemon-b's host clock runs ten minutes ahead: by its own clock daemon-a's
    // lease ran out long ago, by the database's it has a minute left.
    let ahead = ohlcd::clock::ManualClock::new(now + 10 * 60 * NANOS_PER_SEC);
    let b = app.engine_on("daemon-b", ahead);
    let report = b.tick(&TaskFilter::default()).await.unwrap();
    assert_eq!(
        (report.symbols_run, report.symbols_leased),
        (1, 1),
        "{report:?}"
    );
    for res in Resolution::ALL {
        let task = app.store.task("BTCUSD", res).await.unwrap().unwrap();
        assert_eq!(
            (task.status, task.lease_owner.as_deref(), task.watermark),
            (TaskStatus::Running, Some("daemon-a"), None),
            "{res}"
        );
        let other = app.store.task("ETHUSD", res).await.unwrap().unwrap();
        assert_eq!(other.last_owner.as_deref(), Some("daemon-b"), "{res}");
    }
    // daemon-a's lease is intact: it renews, and daemon-b cannot claim it.
    app.store
        .renew_symbols(&symbols[..1], "daemon-a", now, lease)
        .await
        .unwrap();
    let taken = app
        .store
        .claim_symbols(
            &symbols[..1],
            "daemon-b",
            now + 10 * 60 * NANOS_PER_SEC,
            lease,
        )
        .await
        .unwrap();
    assert!(taken.is_empty(), "{taken:?}");
}

async fn concurrent_claims_of_the_same_symbols_never_give_one_symbol_to_two_owners(
    backend: Backend,
) {
    let app = TestApp::spawn_on_store(backend).await;
    let symbols: Vec<String> = (0..60).map(|i| format!("S{i:02}USD")).collect();
    let now = t("2024-05-01T00:00:00Z");
    app.store.ensure_symbols(&symbols, now).await.unwrap();
    let lease = std::time::Duration::from_secs(60);
    // Eight daemons claim every symbol at once, each in its own order.
    let claims = (0..8).map(|i| {
        let (store, mut mine) = (app.store.clone(), symbols.clone());
        mine.rotate_left(i * 7);
        tokio::spawn(async move {
            let owner = format!("daemon-{i}");
            let got = store.claim_symbols(&mine, &owner, now, lease).await;
            (owner, got.unwrap())
        })
    });
    let mut holder = std::collections::BTreeMap::new();
    for claim in futures_util::future::join_all(claims).await {
        let (owner, got) = claim.unwrap();
        for symbol in got {
            if let Some(other) = holder.insert(symbol.clone(), owner.clone()) {
                panic!("{symbol} claimed by both {other} and {owner}");
            }
        }
    }
    // The store agrees: every row of a symbol is leased to the one that got it.
    for task in app.store.tasks().await.unwrap() {
        assert_eq!(
            task.lease_owner.as_ref(),
            holder.get(&task.symbol),
            "{task:?}"
        );
    }
    assert!(!holder.is_empty());
}

/// The engine's trade reads (on 3.x SQL through `/api/v3/query_sql`, on 1.x
/// InfluxQL) return exactly the stored trades of the symbols asked in
/// `[from, to)`, as the test's own InfluxQL JSON read sees them; before any
/// trade exists (3.x: no table yet) they return none.
async fn trade_reads_return_exactly_the_stored_trades_of_the_range(app: TestApp) {
    let both: Vec<String> = SYMBOLS.iter().map(|s| s.to_string()).collect();
    let everything = i64::MIN / 2..i64::MAX / 2;
    assert_eq!(
        helpers::trades_of(&app.influx, "BTCUSD", everything.clone())
            .await
            .unwrap(),
        vec![]
    );
    let n = app
        .influx
        .read_trades(TradeRead::new(&both, everything), |_, _| {
            panic!("no trades yet")
        })
        .await
        .unwrap();
    assert_eq!(n, 0);
    generated(&app, 20_000).await;
    let as_row =
        |t: &ohlcd::candle::Trade| (t.time, t.id, t.price, t.amount, t.side == Some(Side::Buy));
    let btc = app.raw_trades("BTCUSD").await;
    let eth = app.raw_trades("ETHUSD").await;
    // Bounds on trade times: the trade at `from` is in, the one at `to` out.
    let (from, to) = (btc[100].0, btc[7_000].0);
    let in_range = |rows: &[helpers::RawTrade]| -> Vec<helpers::RawTrade> {
        rows.iter()
            .copied()
            .filter(|r| (from..to).contains(&r.0))
            .collect()
    };
    let mut one: Vec<_> = helpers::trades_of(&app.influx, "BTCUSD", from..to)
        .await
        .unwrap()
        .iter()
        .map(as_row)
        .collect();
    one.sort_by_key(|r| (r.0, r.1));
    assert!(one.len() >= 6_900, "{}", one.len());
    assert_eq!(one, in_range(&btc), "BTCUSD in [from, to)");
    let mut many = Vec::new();
    let n = app
        .influx
        .read_trades(TradeRead::new(&both, from..to), |symbol, t| {
            many.push((
                symbol.to_string(),
                as_row(&t.expect("every generated row is a trade")),
            ))
        })
        .await
        .unwrap();
    assert_eq!(n as usize, many.len());
    many.sort_by(|a, b| (&a.0, a.1.0, a.1.1).cmp(&(&b.0, b.1.0, b.1.1)));
    let expected: Vec<(String, helpers::RawTrade)> = in_range(&btc)
        .into_iter()
        .map(|r| ("BTCUSD".to_string(), r))
        .chain(
            in_range(&eth)
                .into_iter()
                .map(|r| ("ETHUSD".to_string(), r)),
        )
        .collect();
    assert_eq!(many, expected, "both symbols in [from, to)");
}

// 1.x only: MessagePack is served by 1.x (3.x's reads: the test above).
#[tokio::test]
async fn msgpack_and_csv_reads_return_identical_trades_and_candles() {
    let (app, spec) = app_with_generated_trades(20_000).await;
    app.clock.set(spec.to + NANOS_PER_DAY);
    app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    let client = |format: &str| {
        let mut s = app.settings.influx.clone();
        s.read_format = format.to_string();
        // Small chunks: many chunk boundaries inside one result.
        s.query_chunk_size = 777;
        ohlcd::influx::InfluxClient::new(&s).unwrap()
    };
    let (pack, csv) = (client("msgpack"), client("csv"));
    let range = spec.from..spec.to;
    let trades = helpers::trades_of(&pack, "BTCUSD", range.clone())
        .await
        .unwrap();
    assert_eq!(trades.len(), 10_000);
    assert_eq!(
        trades,
        helpers::trades_of(&csv, "BTCUSD", range.clone())
            .await
            .unwrap()
    );
    for res in Resolution::ALL {
        let candles = helpers::candles_of(&pack, res, "ETHUSD", range.clone())
            .await
            .unwrap();
        assert!(!candles.is_empty());
        assert_eq!(
            candles,
            helpers::candles_of(&csv, res, "ETHUSD", range.clone())
                .await
                .unwrap(),
            "{res}"
        );
    }
}

//! Test fixtures: a real `influxd` on a free port in a temporary directory
//! (stopped on drop), a fresh progress store (a SQLite file, or a database on
//! a throwaway PostgreSQL: `ohlcd::testkit::postgres`), a settable clock, and an
//! independent reference computation of candles from the raw trades read back
//! over JSON.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ohlcd::candle::{Candle, NANOS_PER_SEC, Resolution, Skip, Trade};
use ohlcd::clock::ManualClock;
use ohlcd::config::Settings;
use ohlcd::engine::{Engine, Warehouse};
use ohlcd::influx::{CandleRead, CandleSet, InfluxClient, InfluxError, TradeRead, trades_only};
use ohlcd::ingest::{NewTrade, write_trades};
use ohlcd::progress::{Backend, ProgressStore};
use serde_json::Value;
use tempfile::TempDir;

pub(crate) use ohlcd::testkit::{Influxd as TestInflux, Server};

use ohlcd::testkit::postgres::TestPostgres;

/// Runs one async test body, `async fn NAME(backend: Backend)`, once per
/// progress-store backend: as tests `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(ohlcd::progress::Backend::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() {
                super::$name(ohlcd::progress::Backend::Postgres).await
            }
        }
    )*};
}
pub(crate) use on_both_stores;

/// One `#[tokio::test]` named `$test` that runs `$body` through [`run_on`] on
/// InfluxDB `$server` with the progress store on `$backend`.
macro_rules! test_on {
    ($test:ident, $server:ident, $backend:ident, $body:path) => {
        #[tokio::test]
        async fn $test() {
            $crate::helpers::run_on(
                $crate::helpers::Server::$server,
                ohlcd::progress::Backend::$backend,
                $body,
            )
            .await
        }
    };
}
pub(crate) use test_on;

/// Runs one async test body, `async fn NAME(app: TestApp)`, on a fresh app
/// against each InfluxDB at hand: as tests `NAME::v1` (Debian's 1.6.7) and
/// `NAME::v3` (InfluxDB 3 Core; see [`start_server`] for when it cannot be
/// had). `cargo test --test integration v3` runs the 3.x half.
macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            $crate::helpers::test_on!(v1, V1, Sqlite, super::$name);
            $crate::helpers::test_on!(v3, V3, Sqlite, super::$name);
        }
    )*};
}
pub(crate) use on_both_servers;

/// Like [`on_both_servers!`] for a body that also matters per progress store:
/// tests `NAME::sqlite` and `NAME::postgres` (on 1.x) and `NAME::v3` (3.x,
/// SQLite: the store does not talk to InfluxDB, so one store is enough there).
macro_rules! on_both_stores_and_servers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            $crate::helpers::test_on!(sqlite, V1, Sqlite, super::$name);
            $crate::helpers::test_on!(postgres, V1, Postgres, super::$name);
            $crate::helpers::test_on!(v3, V3, Sqlite, super::$name);
        }
    )*};
}
pub(crate) use on_both_stores_and_servers;

/// Runs `body` on a fresh app on `server` with its progress store on
/// `backend`, after checking that ohlcd detected the server's generation.
/// Returns at once when a 3.x server cannot be had and the run opted out of
/// those tests ([`start_server`]).
pub(crate) async fn run_on<F, Fut>(server: Server, backend: Backend, body: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(app) = TestApp::spawn_on_with_store(server, backend).await else {
        return;
    };
    let expected = match server {
        Server::V1 => ohlcd::influx::Generation::V1,
        Server::V3 => ohlcd::influx::Generation::V3,
    };
    assert_eq!(app.influx.generation(), expected, "detected generation");
    body(app).await;
}

/// A spawned process (an `ohlcd` daemon) killed when dropped, so a failing
/// test leaks none.
pub(crate) struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Spawns `cmd`.
    pub(crate) fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(cmd.spawn().unwrap())
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The InfluxDB timeout [`TestApp::ohlcd`] gives a daemon: short, so tests
/// that break the server fail fast, but longer than any query the daemon sends
/// takes there. 1.x answers each in milliseconds. 3.x scans every buffered
/// 10-minute chunk of the time range a query names, and symbol discovery
/// (`SHOW TAG VALUES … WHERE time >= 0`, the first query of every tick) names
/// all of history: measured 1.2–2.1 s for 40 days of trades on the loaded
/// 2-core VM, which is why a 2 s timeout made the crash tests' `ohlcd
/// backfill` exit before its failpoint there. Tests that time the timeout
/// itself set their own.
pub(crate) fn influx_timeout_secs(server: Server) -> u64 {
    match server {
        Server::V1 => 2,
        Server::V3 => 30,
    }
}

/// A port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    ohlcd::testkit::free_port().unwrap()
}

/// Starts the given server. A 3.x server that cannot be had fails the test,
/// unless `OHLCD_TEST_SKIP_V3=1` says to do without (then `None`, after
/// saying why; `scripts/test` leaves those tests out instead of counting them
/// as passed). Under `CI=true` there is no opting out: CI runs that suite.
pub(crate) fn start_server(kind: Server) -> Option<TestInflux> {
    if kind == Server::V3
        && let Err(why) = ohlcd::testkit::influxdb3_binary()
    {
        let env_is = |key: &str, value: &str| std::env::var(key).is_ok_and(|v| v == value);
        assert!(
            env_is("OHLCD_TEST_SKIP_V3", "1") && !env_is("CI", "true"),
            "InfluxDB 3 Core is needed for the ::v3 tests: {why}. Run scripts/test \
             (it installs ../shared/influxdb3), set OHLCD_INFLUXDB3=/path/to/influxdb3, or \
             set OHLCD_TEST_SKIP_V3=1 to do without them (not under CI=true)"
        );
        eprintln!("SKIPPED (OHLCD_TEST_SKIP_V3=1): InfluxDB 3 Core tests: {why}");
        return None;
    }
    Some(TestInflux::start_server(kind).unwrap_or_else(|e| panic!("{e}")))
}

/// An influxd with authentication: user `admin` (all privileges) and then
/// `statements` run as that admin (databases, users, grants; users created
/// there should have password `pw`). Returns once every `(user, database)` of
/// `readers` may read its database: influxd answers a GRANT before every query
/// path sees it (seen in CI: `requires READ` right after `GRANT ALL`).
pub(crate) async fn influx_with_users(statements: &[&str], readers: &[(&str, &str)]) -> TestInflux {
    let influx = tokio::task::spawn_blocking(TestInflux::start_with_auth)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let query = |user: &str, q: &str| {
        http.post(format!("{}/query", influx.url))
            .basic_auth(user, Some("pw"))
            .form(&[("q", q)])
            .send()
    };
    // The first user may be created without credentials.
    let first = "CREATE USER admin WITH PASSWORD 'pw' WITH ALL PRIVILEGES";
    for (user, stmt) in std::iter::once(("", first)).chain(statements.iter().map(|s| ("admin", *s)))
    {
        let body = query(user, stmt).await.unwrap().text().await.unwrap();
        assert!(!body.contains("\"error\""), "{stmt}: {body}");
    }
    for (user, db) in readers {
        let check = format!("SHOW RETENTION POLICIES ON {db}");
        let mut granted = false;
        for _ in 0..100 {
            let body = query(user, &check).await.unwrap().text().await.unwrap();
            if !body.contains("error") {
                granted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(granted, "user {user} never got READ on {db}");
    }
    influx
}

/// Everything a test needs: influxd, a database, a progress store, a clock.
pub(crate) struct TestApp {
    /// The server (kept alive for the test).
    pub server: TestInflux,
    /// Settings pointing at it.
    pub settings: Settings,
    /// Client for the test database.
    pub influx: InfluxClient,
    /// Progress store on a fresh file or PostgreSQL database.
    pub store: ProgressStore,
    /// The engine's clock.
    pub clock: ManualClock,
    /// Holds the SQLite file.
    pub dir: TempDir,
    /// The PostgreSQL database behind `store`, when it is one (kept alive).
    _postgres: Option<TestPostgres>,
}

impl TestApp {
    /// Starts influxd, creates database `test`, opens a fresh SQLite file.
    pub(crate) async fn spawn() -> TestApp {
        Self::spawn_on(Server::V1).await.unwrap()
    }

    /// Like [`TestApp::spawn`] on the given server; `None` (after saying why)
    /// when it is a 3.x server that cannot be had and the run opted out of
    /// those tests ([`start_server`]).
    pub(crate) async fn spawn_on(kind: Server) -> Option<TestApp> {
        Self::spawn_on_with_store(kind, Backend::Sqlite).await
    }

    /// Starts influxd (1.x) with the progress store on `backend`.
    pub(crate) async fn spawn_on_store(backend: Backend) -> TestApp {
        Self::spawn_on_with_store(Server::V1, backend)
            .await
            .unwrap()
    }

    /// Like [`TestApp::spawn_on`], the progress store on `backend`.
    pub(crate) async fn spawn_on_with_store(kind: Server, backend: Backend) -> Option<TestApp> {
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(tokio::task::spawn_blocking(TestPostgres::start)),
        };
        let server = tokio::task::spawn_blocking(move || start_server(kind))
            .await
            .unwrap()?;
        let postgres = match postgres {
            Some(started) => Some(started.await.unwrap()),
            None => None,
        };
        Some(Self::spawn_at(server, postgres).await)
    }

    /// Like [`TestApp::spawn`] on influxd 1.x started with `options`.
    pub(crate) async fn spawn_with(options: ohlcd::testkit::InfluxdOptions) -> TestApp {
        let server = tokio::task::spawn_blocking(move || {
            TestInflux::launch(options).unwrap_or_else(|e| panic!("{e}"))
        })
        .await
        .unwrap();
        Self::spawn_at(server, None).await
    }

    /// A fresh app on `server`, the progress store on `postgres` when given,
    /// else on a fresh SQLite file.
    async fn spawn_at(server: TestInflux, postgres: Option<TestPostgres>) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let database_url = match &postgres {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite://{}", dir.path().join("progress.db").display()),
        };
        let settings = Settings::load_with_env(
            None,
            vec![
                ("OHLCD_INFLUX__URL".to_string(), server.url.clone()),
                ("OHLCD_INFLUX__DATABASE".to_string(), "test".to_string()),
                ("OHLCD_INFLUX__RETRIES".to_string(), "1".to_string()),
                ("OHLCD_PROGRESS__DATABASE_URL".to_string(), database_url),
                ("OHLCD_ENGINE__SETTLE_SECS".to_string(), "5".to_string()),
            ],
        )
        .unwrap();
        let mut influx = InfluxClient::new(&settings.influx).unwrap();
        influx.detect().await.unwrap();
        influx.create_database().await.unwrap();
        let store = ProgressStore::connect(&settings.progress.database_url)
            .await
            .unwrap();
        TestApp {
            server,
            settings,
            influx,
            store,
            clock: ManualClock::new(0),
            dir,
            _postgres: postgres,
        }
    }

    /// The `ohlcd` binary configured for this app's influxd, database and
    /// progress store (5 s leases, warnings only, InfluxDB timeouts of 2 s on
    /// 1.x and 30 s on 3.x: see [`influx_timeout_secs`]).
    pub(crate) fn ohlcd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ohlcd"));
        cmd.env("OHLCD_INFLUX__URL", &self.server.url)
            .env("OHLCD_INFLUX__DATABASE", self.influx.database())
            .env(
                "OHLCD_PROGRESS__DATABASE_URL",
                &self.settings.progress.database_url,
            )
            .env("OHLCD_PROGRESS__LEASE_SECS", "5")
            .env(
                "OHLCD_INFLUX__TIMEOUT_SECS",
                influx_timeout_secs(self.server.server()).to_string(),
            )
            .env("OHLCD_INFLUX__RETRIES", "0")
            .env("OHLCD_LOG", "warn");
        cmd
    }

    /// An engine on this app's clock with the given lease-holder id.
    pub(crate) fn engine(&self, owner: &str) -> Engine {
        self.engine_on(owner, self.clock.clone())
    }

    /// An engine on this app's clock reading and writing through `warehouse`
    /// (a [`Spy`]) with the given lease-holder id.
    pub(crate) fn engine_through<W: Warehouse>(&self, owner: &str, warehouse: W) -> Engine<W> {
        Engine::new(
            warehouse,
            self.store.clone(),
            Arc::new(self.clock.clone()),
            self.settings.engine.clone(),
            Duration::from_secs(self.settings.progress.lease_secs),
        )
        .with_owner(owner)
    }

    /// An engine on its own `clock` (a daemon on another host) with the given
    /// lease-holder id.
    pub(crate) fn engine_on(&self, owner: &str, clock: ManualClock) -> Engine {
        Engine::new(
            self.influx.clone(),
            self.store.clone(),
            Arc::new(clock),
            self.settings.engine.clone(),
            Duration::from_secs(self.settings.progress.lease_secs),
        )
        .with_owner(owner)
    }

    /// Writes trades through the ingest path.
    pub(crate) async fn write(&self, trades: &[NewTrade]) {
        write_trades(&self.influx, trades).await.unwrap();
    }

    /// Runs an InfluxQL query and returns the rows of its first series as maps.
    pub(crate) async fn rows(&self, q: &str) -> Vec<BTreeMap<String, Value>> {
        let v = self.influx.query_json(q).await.unwrap();
        let mut out = Vec::new();
        for series in v["series"].as_array().into_iter().flatten() {
            let cols: Vec<String> = series["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            for row in series["values"].as_array().unwrap() {
                out.push(
                    cols.iter()
                        .cloned()
                        .zip(row.as_array().unwrap().iter().cloned())
                        .collect(),
                );
            }
        }
        out
    }

    /// Candles stored for `symbol` at `res`, read back over JSON.
    pub(crate) async fn stored(&self, symbol: &str, res: Resolution) -> Vec<Candle> {
        self.rows(&format!(
            "SELECT * FROM {} WHERE symbol = '{symbol}'",
            res.measurement()
        ))
        .await
        .iter()
        .map(|r| Candle {
            start: r["time"].as_i64().unwrap(),
            open: r["open"].as_f64().unwrap(),
            high: r["high"].as_f64().unwrap(),
            low: r["low"].as_f64().unwrap(),
            close: r["close"].as_f64().unwrap(),
            volume: r["volume"].as_f64().unwrap(),
            quote_volume: r["quote_volume"].as_f64().unwrap(),
            trades: r["trades"].as_i64().unwrap(),
            buy_volume: r["buy_volume"].as_f64().unwrap(),
        })
        .collect::<Vec<_>>()
        // 3.x does not promise time order without ORDER BY.
        .tap_sort()
    }

    /// Starts the HTTP server on a free loopback port; returns its base URL
    /// and what stops it when dropped.
    pub(crate) async fn serve(&self) -> (String, Served) {
        let served = self.serve_with("127.0.0.1:0", |_| {}).await;
        (served.url.clone(), served)
    }

    /// The server's state over this app's InfluxDB, store, clock and settings.
    pub(crate) fn state(&self) -> ohlcd::server::AppState {
        self.state_with(&self.serving_settings(|_| {}))
    }

    /// This app's settings, serving the chart page from the checkout, changed
    /// by `configure`.
    fn serving_settings(&self, configure: impl FnOnce(&mut Settings)) -> Settings {
        let mut settings = self.settings.clone();
        settings.server.web_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/web").to_string();
        configure(&mut settings);
        settings
    }

    fn state_with(&self, settings: &Settings) -> ohlcd::server::AppState {
        ohlcd::server::AppState::new(
            self.influx.clone(),
            self.store.clone(),
            Arc::new(self.clock.clone()),
            settings,
        )
    }

    /// Starts the HTTP server bound to `bind` (e.g. `0.0.0.0:0` to listen off
    /// loopback) with this app's settings changed by `configure`. The URL always
    /// goes through 127.0.0.1, so tests only ever connect locally.
    pub(crate) async fn serve_with(
        &self,
        bind: &str,
        configure: impl FnOnce(&mut Settings),
    ) -> Served {
        let settings = self.serving_settings(configure);
        let state = self.state_with(&settings);
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut metrics_url = None;
        let metrics = if settings.server.metrics_listen.is_empty() {
            None
        } else {
            let metrics = tokio::net::TcpListener::bind(&settings.server.metrics_listen)
                .await
                .unwrap();
            metrics_url = Some(format!(
                "http://127.0.0.1:{}",
                metrics.local_addr().unwrap().port()
            ));
            Some(metrics)
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        ohlcd::app::spawn_servers(state, listener, metrics, stopped).unwrap();
        Served {
            url: format!("http://127.0.0.1:{}", addr.port()),
            addr,
            metrics_url,
            _stop: stop,
        }
    }

    /// Everything a request could change: point counts per measurement, the
    /// symbols that exist, the progress table with its dirty ranges.
    pub(crate) async fn snapshot(&self) -> Vec<String> {
        let mut out = Vec::new();
        let measurements = std::iter::once(("trades", "price"))
            .chain(Resolution::ALL.iter().map(|r| (r.measurement(), "open")));
        for (m, field) in measurements {
            let v = self
                .influx
                .query_json(&format!("SELECT count(\"{field}\") FROM \"{m}\""))
                .await
                .unwrap();
            let n = v["series"][0]["values"][0][1].as_i64().unwrap_or(0);
            out.push(format!("{m}: {n} points"));
        }
        let symbols = self
            .influx
            .query_json("SHOW TAG VALUES FROM \"trades\" WITH KEY = \"symbol\"")
            .await
            .unwrap();
        out.push(format!("symbols: {}", symbols["series"]));
        for t in self.store.tasks().await.unwrap() {
            let dirty = self.store.dirty(&t.symbol, t.resolution).await.unwrap();
            out.push(format!(
                "{} {}: watermark {:?}, status {:?}, dirty {dirty:?}",
                t.symbol,
                t.resolution.name(),
                t.watermark,
                t.status
            ));
        }
        out
    }

    /// Candles computed independently (naively, in this file) from the raw trades
    /// of `symbol` read back over JSON, for windows starting before `until`.
    pub(crate) async fn expected(&self, symbol: &str, res: Resolution, until: i64) -> Vec<Candle> {
        let len = res.nanos();
        self.expected_by(symbol, |t| t.div_euclid(len) * len)
            .await
            .into_iter()
            .filter(|c| c.start + len <= until)
            .collect()
    }

    /// Candles computed naively from the raw trades, grouped by `window_of`.
    pub(crate) async fn expected_by(
        &self,
        symbol: &str,
        window_of: impl Fn(i64) -> i64,
    ) -> Vec<Candle> {
        naive_candles(&self.raw_trades(symbol).await, window_of)
    }

    /// Like [`TestApp::expected`] for every resolution ([`Resolution::ALL`]
    /// order), from one read of the raw trades.
    pub(crate) async fn expected_all(&self, symbol: &str, until: i64) -> Vec<Vec<Candle>> {
        let raw = self.raw_trades(symbol).await;
        Resolution::ALL
            .iter()
            .map(|res| {
                let len = res.nanos();
                naive_candles(&raw, |t| t.div_euclid(len) * len)
                    .into_iter()
                    .filter(|c| c.start + len <= until)
                    .collect()
            })
            .collect()
    }

    /// The raw trades of `symbol` read back over JSON, by (time, id).
    pub(crate) async fn raw_trades(&self, symbol: &str) -> Vec<RawTrade> {
        let trades = self
            .rows(&format!(
                "SELECT price, amount, id, side FROM trades WHERE symbol = '{symbol}'"
            ))
            .await;
        let mut raw: Vec<RawTrade> = trades
            .iter()
            .map(|r| {
                (
                    r["time"].as_i64().unwrap(),
                    r["id"].as_i64().unwrap(),
                    r["price"].as_f64().unwrap(),
                    r["amount"].as_f64().unwrap(),
                    r["side"].as_str().unwrap() == "buy",
                )
            })
            .collect();
        raw.sort_by_key(|t| (t.0, t.1));
        raw
    }
}

/// The trades of `symbol` in `range`, read by the client into memory.
pub(crate) async fn trades_of(
    influx: &InfluxClient,
    symbol: &str,
    range: Range<i64>,
) -> Result<Vec<Trade>, InfluxError> {
    let mut out = Vec::new();
    influx
        .read_trades(
            TradeRead::new(&[symbol], range),
            trades_only(|t| out.push(t)),
        )
        .await?;
    Ok(out)
}

/// The stored candles of `res` of `symbol` in `range`, read by the client
/// into memory.
pub(crate) async fn candles_of(
    influx: &InfluxClient,
    res: Resolution,
    symbol: &str,
    range: Range<i64>,
) -> Result<Vec<Candle>, InfluxError> {
    let mut out = Vec::new();
    influx
        .read_candles(CandleRead::new(res, &[symbol], range), |_, c| out.push(c))
        .await?;
    Ok(out)
}

/// Writes `candles` of `res` of `symbol` as the engine writes candles.
pub(crate) async fn write_candles(
    influx: &InfluxClient,
    res: Resolution,
    symbol: &str,
    candles: &[Candle],
) -> Result<(), InfluxError> {
    influx
        .write_candles(&[CandleSet {
            resolution: res,
            symbol,
            candles,
        }])
        .await
}

/// Candles of `raw` (sorted by time, id) grouped by `window_of`, computed the
/// obvious way.
pub(crate) fn naive_candles(raw: &[RawTrade], window_of: impl Fn(i64) -> i64) -> Vec<Candle> {
    let mut windows: BTreeMap<i64, Vec<RawTrade>> = BTreeMap::new();
    for t in raw {
        windows.entry(window_of(t.0)).or_default().push(*t);
    }
    windows
        .into_iter()
        .map(|(start, ts)| Candle {
            start,
            open: ts[0].2,
            high: ts.iter().map(|t| t.2).fold(f64::MIN, f64::max),
            low: ts.iter().map(|t| t.2).fold(f64::MAX, f64::min),
            close: ts[ts.len() - 1].2,
            volume: ts.iter().map(|t| t.3).sum(),
            quote_volume: ts.iter().map(|t| t.2 * t.3).sum(),
            trades: ts.len() as i64,
            buy_volume: ts.iter().filter(|t| t.4).map(|t| t.3).sum(),
        })
        .collect()
}

/// The app's InfluxDB as the engine sees it ([`Warehouse`]), with what a test
/// needs to watch or stall one daemon: a gate that holds the next count of
/// trades (the engine counts a lagging round's symbols after planning the
/// round and before claiming them), and a record of every candle written
/// over stored ones (repairs and rebuilds).
#[derive(Clone)]
pub(crate) struct Spy {
    influx: InfluxClient,
    gate: Arc<std::sync::Mutex<Option<Gate>>>,
    overwritten: Arc<std::sync::Mutex<Vec<Overwrite>>>,
}

/// Candles of one (resolution, symbol) written over stored ones at once.
type Overwrite = (Resolution, String, Vec<Candle>);

/// See [`Spy::hold_next_count`].
struct Gate {
    reached: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

impl Spy {
    /// A spy on `influx`, holding nothing.
    pub(crate) fn new(influx: InfluxClient) -> Spy {
        Spy {
            influx,
            gate: Arc::default(),
            overwritten: Arc::default(),
        }
    }

    /// Makes the next count of trades wait: the first receiver resolves when
    /// the count is reached, and the count goes on once the sender is used
    /// or dropped.
    pub(crate) fn hold_next_count(
        &self,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (reached, on_reach) = tokio::sync::oneshot::channel();
        let (go, release) = tokio::sync::oneshot::channel();
        *self.gate.lock().unwrap() = Some(Gate { reached, release });
        (on_reach, go)
    }

    /// Every candle written over stored ones so far, per (resolution, symbol),
    /// by start; a window written twice holds its last value.
    pub(crate) fn overwritten(&self) -> BTreeMap<(Resolution, String), BTreeMap<i64, Candle>> {
        let mut out: BTreeMap<(Resolution, String), BTreeMap<i64, Candle>> = BTreeMap::new();
        for (res, symbol, candles) in self.overwritten.lock().unwrap().iter() {
            let by_start = out.entry((*res, symbol.clone())).or_default();
            by_start.extend(candles.iter().map(|c| (c.start, *c)));
        }
        out
    }
}

impl Warehouse for Spy {
    async fn check(&self) -> Result<(), InfluxError> {
        Warehouse::check(&self.influx).await
    }

    async fn symbols(&self) -> Result<Vec<String>, InfluxError> {
        Warehouse::symbols(&self.influx).await
    }

    async fn first_trades(
        &self,
        symbols: &[String],
        from: i64,
    ) -> Result<HashMap<String, i64>, InfluxError> {
        Warehouse::first_trades(&self.influx, symbols, from).await
    }

    async fn count_trades(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<HashMap<String, u64>, InfluxError> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            let _ = gate.reached.send(());
            let _ = gate.release.await;
        }
        Warehouse::count_trades(&self.influx, symbols, range).await
    }

    async fn count_minutes(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<HashMap<String, Vec<(i64, u64)>>, InfluxError> {
        Warehouse::count_minutes(&self.influx, symbols, range).await
    }

    async fn read_trades(
        &self,
        symbols: &[String],
        range: Range<i64>,
        on_row: impl FnMut(&str, Result<Trade, Skip>) + Send,
    ) -> Result<u64, InfluxError> {
        Warehouse::read_trades(&self.influx, symbols, range, on_row).await
    }

    async fn read_candles(
        &self,
        res: Resolution,
        symbols: &[String],
        range: Range<i64>,
        on_candle: impl FnMut(&str, Candle) + Send,
    ) -> Result<u64, InfluxError> {
        Warehouse::read_candles(&self.influx, res, symbols, range, on_candle).await
    }

    async fn write_candles(&self, sets: &[CandleSet<'_>]) -> Result<(), InfluxError> {
        Warehouse::write_candles(&self.influx, sets).await
    }

    fn raw_retention(&self) -> Option<i64> {
        Warehouse::raw_retention(&self.influx)
    }

    async fn overwrite_candles(&self, sets: &[CandleSet<'_>]) -> Result<(), InfluxError> {
        self.overwritten.lock().unwrap().extend(
            sets.iter()
                .map(|s| (s.resolution, s.symbol.to_string(), s.candles.to_vec())),
        );
        Warehouse::overwrite_candles(&self.influx, sets).await
    }

    async fn delete_candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<(), InfluxError> {
        Warehouse::delete_candles(&self.influx, res, symbol, range).await
    }
}

/// A server started by [`TestApp::serve_with`]; stops when dropped.
pub(crate) struct Served {
    /// Base URL, through 127.0.0.1.
    pub url: String,
    /// The address the server is bound to (may be 0.0.0.0).
    pub addr: std::net::SocketAddr,
    /// Base URL of the separate `/metrics` listener, when configured.
    pub metrics_url: Option<String>,
    /// Dropped with the value: both servers stop.
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Resident memory of process `pid` (an `ohlcd` the test started), in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

trait TapSort {
    fn tap_sort(self) -> Self;
}

impl TapSort for Vec<Candle> {
    fn tap_sort(mut self) -> Self {
        self.sort_by_key(|c| c.start);
        self
    }
}

/// (time, id, price, amount, is_buy) as read back from InfluxDB.
pub(crate) type RawTrade = (i64, i64, f64, f64, bool);

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-12
}

/// Asserts two candle lists are equal: prices and counts exactly, sums up to
/// floating-point summation order.
pub(crate) fn assert_candles_eq(actual: &[Candle], expected: &[Candle], what: &str) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {} candles stored, {} expected",
        actual.len(),
        expected.len()
    );
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!(
            (a.start, a.open, a.high, a.low, a.close, a.trades),
            (e.start, e.open, e.high, e.low, e.close, e.trades),
            "{what}: candle at {} differs",
            a.start
        );
        assert!(
            close(a.volume, e.volume)
                && close(a.quote_volume, e.quote_volume)
                && close(a.buy_volume, e.buy_volume),
            "{what}: sums at {} differ: {a:?} vs {e:?}",
            a.start
        );
    }
}

/// Unix nanoseconds of an RFC 3339 time.
pub(crate) fn t(s: &str) -> i64 {
    ohlcd::times::from_rfc3339(s).unwrap()
}

/// Seconds to nanoseconds.
pub(crate) fn secs(s: i64) -> i64 {
    s * NANOS_PER_SEC
}

/// Monday 00:00 UTC of the week containing `t` (independent of ohlcd's code).
pub(crate) fn naive_week_start(t: i64) -> i64 {
    use chrono::{Datelike, TimeZone};
    let d = chrono::Utc.timestamp_nanos(t).date_naive();
    let monday = d - chrono::Duration::days(i64::from(d.weekday().num_days_from_monday()));
    monday
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_nanos_opt()
        .unwrap()
}

/// The 1st of the month containing `t`, 00:00 UTC.
pub(crate) fn naive_month_start(t: i64) -> i64 {
    use chrono::{Datelike, TimeZone};
    let d = chrono::Utc.timestamp_nanos(t).date_naive();
    d.with_day(1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_nanos_opt()
        .unwrap()
}

/// `ohlcd run` with extra environment, listening on `listen`; its stderr
/// (the log) goes to one file and its stdout to another (a pipe nobody
/// reads would fill up and block it).
pub(crate) struct Daemon {
    /// The `ohlcd run` process.
    pub child: Child,
    /// The port it listens on.
    pub port: u16,
    /// Where it writes stderr.
    pub log: std::path::PathBuf,
}

pub(crate) fn daemon(app: &TestApp, listen: &str, env: &[(&str, &str)]) -> Daemon {
    let name = listen.replace(':', "_");
    let log = app.dir.path().join(format!("ohlcd-{name}.log"));
    let out = app.dir.path().join(format!("ohlcd-{name}.out"));
    let mut cmd: Command = app.ohlcd();
    cmd.arg("run")
        .env("OHLCD_SERVER__LISTEN", listen)
        .env(
            "OHLCD_SERVER__WEB_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/web"),
        )
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon {
        child: cmd.spawn().unwrap(),
        port: listen.rsplit(':').next().unwrap().parse().unwrap(),
        log,
    }
}

impl Daemon {
    /// `ohlcd run` with `env` on a free loopback port, not waited for.
    pub(crate) fn spawn(app: &TestApp, env: &[(&str, &str)]) -> Daemon {
        daemon(app, &format!("127.0.0.1:{}", free_port()), env)
    }

    /// `ohlcd run` with `env` on a free loopback port, once healthy.
    pub(crate) async fn start(app: &TestApp, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::spawn(app, env);
        let url = d.url();
        d.wait_healthy(&url).await;
        d
    }

    /// Its base URL, through 127.0.0.1.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// What it has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its `/healthz` at `url` answers 200 (30 s at most).
    pub(crate) async fn wait_healthy(&mut self, url: &str) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{url}/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ohlcd run exited early with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ohlcd run did not get healthy in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then everything the daemon printed.
    pub(crate) async fn stop(mut self) -> String {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = std::fs::read_to_string(&self.log).unwrap();
        assert!(status.success(), "ohlcd run failed: {log}");
        log
    }
}

/// A daemon a failing test leaves behind is killed, not left running.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

//! `ohlcd-bench`: the end-to-end benchmark of ohlcd against InfluxDB, on one
//! machine, in one run.
//!
//! It starts its own throwaway `influxd` (unless `--influx-url` is given),
//! generates trades with the real `ohlcd generate`, times `ohlcd backfill` of all
//! six resolutions from scratch (peak RSS sampled from `/proc/<pid>/status`),
//! times the same candles computed by InfluxDB itself (InfluxQL `GROUP BY time`)
//! and a bare raw pull of the trades (CSV and msgpack), measures backfill's peak
//! RSS at several data sizes, `/udf/history` latency of `ohlcd run` against
//! InfluxDB aggregating the same chart on the fly, and `POST /api/trades` against
//! InfluxDB's own `/write`. Along the way it checks ohlcd's answers against
//! InfluxDB's (candles, bars, trade counts) and reports any difference.
//!
//! Progress goes to stderr, one table of results to stdout, and the same table
//! as Markdown (with a header describing the machine) to `--out`.
//!
//! Every child process (influxd, ohlcd) is stopped when the bench ends: on
//! success, on error, on SIGINT/SIGTERM/SIGHUP, and (through
//! `PR_SET_PDEATHSIG`) when the bench itself is killed.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_int, c_ulong};
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::{NewTrade, encode_trades, validate_symbol};
use serde_json::{Value, json};

const NS: i64 = 1_000_000_000;
const DAY_NS: i64 = 86_400 * NS;

/// (InfluxQL duration and candle suffix, UDF resolution, seconds).
const RESOLUTIONS: [(&str, &str, i64); 6] = [
    ("1m", "1", 60),
    ("5m", "5", 300),
    ("15m", "15", 900),
    ("1h", "60", 3_600),
    ("4h", "240", 14_400),
    ("1d", "1D", 86_400),
];

/// Symbols of the ingest comparison: new series, never part of the data set.
const API_SYMBOL: &str = "BENCH_API";
const WRITE_SYMBOL: &str = "BENCH_WRITE";

/// Rows per chunk asked of InfluxDB (ohlcd's default `influx.query_chunk_size`).
const CHUNK_SIZE: &str = "10000";
/// Peak RSS target of backfill.
const RSS_TARGET_MB: f64 = 64.0;
/// Sizes above this need `--allow-large`.
const LARGE_SIZE: u64 = 20_000_000;
/// Warm-up requests before timed `/udf/history` requests.
const LATENCY_WARMUP: usize = 20;
/// Warm-up requests before timed on-the-fly InfluxDB requests.
const INFLUX_WARMUP: usize = 2;
/// Wall-time budget of one series of on-the-fly InfluxDB requests (at least 5
/// are always timed).
const INFLUX_SERIES_BUDGET: Duration = Duration::from_secs(20);

static T0: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A progress message on stderr, stamped with the time since start.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("[{:7.1}s] {}", T0.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

/// End-to-end benchmark of ohlcd against InfluxDB on this machine.
#[derive(Debug, Clone, Parser)]
#[command(name = "ohlcd-bench", version, about)]
struct Args {
    /// Trades of the main data set (all symbols together).
    #[arg(long, default_value_t = 2_000_000)]
    trades: u64,
    /// Comma-separated symbols; the trades are split evenly between them.
    #[arg(long, value_delimiter = ',', default_value = "BTCUSD,ETHUSD")]
    symbols: Vec<String>,
    /// Days of data, ending at today's 00:00 UTC.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Use this InfluxDB instead of starting a throwaway influxd.
    #[arg(long, value_name = "URL")]
    influx_url: Option<String>,
    /// Markdown copy of the results.
    #[arg(long, default_value = "target/bench/results.md")]
    out: PathBuf,
    /// Timed /udf/history requests per resolution (after 20 warm-up requests).
    #[arg(long, default_value_t = 200)]
    latency_requests: usize,
    /// Timed on-the-fly InfluxDB requests per resolution (after 2 warm-up
    /// requests; a series stops after 20 s once 5 are timed).
    #[arg(long, default_value_t = 20)]
    influx_requests: usize,
    /// Data sizes at which backfill's peak RSS is measured, each generated into
    /// its own database (the main size is reused if listed).
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    rss_sizes: Vec<u64>,
    /// Allow --rss-sizes above 20,000,000 trades.
    #[arg(long)]
    allow_large: bool,
    /// Trades posted in the ingest comparison.
    #[arg(long, default_value_t = 200_000)]
    ingest_trades: u64,
    /// Trades per request in the ingest comparison.
    #[arg(long, default_value_t = 10_000)]
    ingest_batch: usize,
    /// Keep the benchmark databases on an external InfluxDB (--influx-url);
    /// by default they are dropped at the end.
    #[arg(long)]
    keep_data: bool,
}

fn main() -> ExitCode {
    LazyLock::force(&T0);
    let args = Args::parse();
    // One thread: every child is forked from the main thread, so
    // PR_SET_PDEATHSIG fires only when the bench process itself goes away.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            sig = termination_signal() => Err(anyhow!("interrupted by {sig}; child processes stopped")),
        }
    });
    // Dropping the run future above has already stopped every child.
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some benchmark phases failed (see the table and the messages above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        // Without handlers the default action (exit) applies; the children then
        // go through PR_SET_PDEATHSIG.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

// ---------------------------------------------------------------------------
// Child processes

unsafe extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
}

const PR_SET_PDEATHSIG: c_int = 1;
const SIGKILL: c_int = 9;
const SIGTERM: c_int = 15;

/// A child process with stdout and stderr in files; killed on drop.
struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
    status: Option<ExitStatus>,
}

/// How a measured child ended.
struct Measured {
    status: ExitStatus,
    elapsed: Duration,
    /// Largest VmHWM seen, kB.
    peak_kb: u64,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(
                File::create(&stdout)
                    .with_context(|| format!("cannot create {}", stdout.display()))?,
            )
            .stderr(
                File::create(&stderr)
                    .with_context(|| format!("cannot create {}", stderr.display()))?,
            );
        // SAFETY: prctl is async-signal-safe and touches no memory of ours; the
        // child asks to be killed when the (single-threaded runtime's) parent dies.
        unsafe {
            cmd.pre_exec(|| {
                prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong);
                Ok(())
            });
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let started = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!("{program} not found ({e})")
            } else {
                anyhow!("cannot start {program}: {e}")
            }
        })?;
        Ok(Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            started,
            status: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn poll(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("cannot wait for {}", self.name))?;
        }
        Ok(self.status)
    }

    fn stdout_text(&self) -> String {
        std::fs::read(&self.stdout)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn stderr_text(&self) -> String {
        std::fs::read(&self.stderr)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of stderr, indented, for error messages.
    fn stderr_tail(&self, n: usize) -> String {
        let text = self.stderr_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(n)..];
        if tail.is_empty() {
            return "(stderr empty)".to_string();
        }
        format!(
            "stderr ({}):\n    {}",
            self.stderr.display(),
            tail.join("\n    ")
        )
    }

    /// Waits for the exit, sampling VmHWM every 20 ms; kills after `timeout`.
    async fn wait_measured(&mut self, timeout: Duration) -> Result<Measured> {
        let mut peak_kb = 0;
        loop {
            if let Some(kb) = vm_hwm_kb(self.pid()) {
                peak_kb = peak_kb.max(kb);
            }
            if let Some(status) = self.poll()? {
                return Ok(Measured {
                    status,
                    elapsed: self.started.elapsed(),
                    peak_kb,
                });
            }
            if self.started.elapsed() > timeout {
                self.kill();
                bail!(
                    "{} did not finish within {}s and was killed; {}",
                    self.name,
                    timeout.as_secs(),
                    self.stderr_tail(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; the error says it had to be killed.
    async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.poll()? {
            return Ok(s);
        }
        // SAFETY: plain syscall on our own child's pid (not yet reaped).
        unsafe {
            kill(self.pid() as c_int, SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.poll()? {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        bail!(
            "{} did not stop within {}s of SIGTERM and was killed",
            self.name,
            grace.as_secs()
        )
    }

    fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.poll(), Ok(None)) {
            self.kill();
        }
    }
}

/// `text` without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// VmHWM (peak resident set) of a live process, kB.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User + system CPU time of a process, clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot bind a local port")?
        .local_addr()?
        .port())
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("ohlcd-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create scratch directory {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An influxd of our own on free ports, data in the scratch directory.
struct OwnInflux {
    proc: Proc,
    url: String,
}

async fn start_influxd(dir: &Path) -> Result<OwnInflux> {
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    for attempt in 1..=3 {
        let http_port = free_port()?;
        let rpc_port = free_port()?;
        let d = dir.join(format!("influxd-{attempt}"));
        std::fs::create_dir_all(&d)?;
        let dd = d.display();
        let conf = format!(
            r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{dd}/meta"
[data]
  dir = "{dd}/data"
  wal-dir = "{dd}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
[continuous_queries]
  enabled = false
"#
        );
        let conf_path = d.join("influxdb.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new("influxd");
        cmd.arg("-config").arg(&conf_path);
        let mut proc = Proc::spawn(&format!("influxd-{attempt}"), cmd, dir).map_err(|e| {
            e.context("cannot start influxd: install InfluxDB 1.x (Debian package influxdb, or run scripts/test once) or pass --influx-url")
        })?;
        let url = format!("http://127.0.0.1:{http_port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = proc.poll()? {
                let log = proc.stderr_text();
                if log.contains("address already in use") && attempt < 3 {
                    say!("influxd lost a port race ({status}); retrying on other ports");
                    break;
                }
                bail!(
                    "influxd exited at start-up ({status}); {}",
                    proc.stderr_tail(10)
                );
            }
            if let Ok(resp) = probe.get(format!("{url}/ping")).send().await
                && resp.status().is_success()
            {
                return Ok(OwnInflux { proc, url });
            }
            if Instant::now() > deadline {
                bail!(
                    "influxd did not answer /ping within 30s; {}",
                    proc.stderr_tail(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    bail!("influxd could not bind free ports in 3 attempts")
}

// ---------------------------------------------------------------------------
// InfluxDB over HTTP

#[derive(Clone)]
struct Influx {
    http: reqwest::Client,
    url: String,
}

/// A query answer read to the end.
struct Fetched {
    elapsed: Duration,
    bytes: u64,
    /// Newlines (CSV: header + rows).
    lines: u64,
    content_type: String,
    body: Vec<u8>,
}

impl Fetched {
    /// CSV data rows: lines that are not a header.
    fn csv_rows(&self) -> u64 {
        let headers = self
            .body
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"name,"))
            .count() as u64;
        self.lines.saturating_sub(headers.max(1))
    }
}

impl Influx {
    fn new(url: &str) -> Result<Influx> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(900))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Influx {
            http,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    async fn version(&self) -> Result<String> {
        let resp = self
            .http
            .get(format!("{}/ping", self.url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("cannot reach InfluxDB at {}", self.url))?;
        ensure!(
            resp.status().is_success(),
            "InfluxDB at {} answered /ping with {}",
            self.url,
            resp.status()
        );
        Ok(resp
            .headers()
            .get("X-Influxdb-Version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string())
    }

    /// An InfluxQL statement answered as JSON; fails on any statement error.
    async fn query(&self, db: Option<&str>, q: &str) -> Result<Value> {
        let mut form = vec![("q", q.to_string()), ("epoch", "ns".to_string())];
        if let Some(db) = db {
            form.push(("db", db.to_string()));
        }
        let resp = self
            .http
            .post(format!("{}/query", self.url))
            .form(&form)
            .send()
            .await
            .with_context(|| format!("InfluxDB at {} did not answer `{q}`", self.url))?;
        let status = resp.status();
        let text = resp.text().await.context("reading an InfluxDB answer")?;
        ensure!(
            status.is_success(),
            "InfluxDB answered {status} to `{q}`: {text}"
        );
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("InfluxDB's answer to `{q}` is not JSON: {text}"))?;
        let first = v["results"][0].clone();
        if let Some(e) = first.get("error").and_then(Value::as_str) {
            bail!("InfluxDB: {e} (query `{q}`)");
        }
        Ok(first)
    }

    /// First value of the first series (e.g. of a `count` or `sum`), 0 if none.
    async fn scalar(&self, db: &str, q: &str) -> Result<f64> {
        let v = self.query(Some(db), q).await?;
        Ok(v["series"][0]["values"][0][1].as_f64().unwrap_or(0.0))
    }

    /// A query streamed chunked in format `accept`, read to the end; the body is
    /// kept only if `keep`.
    async fn fetch(&self, db: &str, q: &str, accept: &str, keep: bool) -> Result<Fetched> {
        let started = Instant::now();
        let resp = self
            .http
            .post(format!("{}/query", self.url))
            .header(reqwest::header::ACCEPT, accept)
            .form(&[
                ("db", db),
                ("q", q),
                ("epoch", "ns"),
                ("chunked", "true"),
                ("chunk_size", CHUNK_SIZE),
            ])
            .send()
            .await
            .with_context(|| format!("InfluxDB at {} did not answer `{q}`", self.url))?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !status.is_success() {
            let header = resp
                .headers()
                .get("X-Influxdb-Error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = resp.text().await.unwrap_or_default();
            bail!(
                "InfluxDB answered {status} to `{q}`: {}",
                header.unwrap_or(text)
            );
        }
        let mut stream = resp.bytes_stream();
        let (mut bytes, mut lines) = (0u64, 0u64);
        let mut head: Vec<u8> = Vec::new();
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading InfluxDB's answer to `{q}`"))?;
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            if head.len() < 256 {
                head.extend_from_slice(&chunk[..chunk.len().min(256)]);
            }
            if keep {
                body.extend_from_slice(&chunk);
            }
        }
        let elapsed = started.elapsed();
        if head.starts_with(b"error\n") || head.starts_with(b"error\r\n") {
            bail!(
                "InfluxDB failed `{q}`: {}",
                String::from_utf8_lossy(&head).replace('\n', " ")
            );
        }
        if !keep {
            body = head;
        }
        Ok(Fetched {
            elapsed,
            bytes,
            lines,
            content_type,
            body,
        })
    }

    /// `/write` of line protocol; the time until InfluxDB acknowledged it.
    async fn write(&self, db: &str, body: Bytes) -> Result<Duration> {
        let started = Instant::now();
        let resp = self
            .http
            .post(format!("{}/write", self.url))
            .query(&[("db", db)])
            .body(body)
            .send()
            .await
            .with_context(|| format!("InfluxDB at {} did not answer /write", self.url))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let elapsed = started.elapsed();
        ensure!(
            status.is_success(),
            "InfluxDB /write answered {status}: {text}"
        );
        Ok(elapsed)
    }

    async fn drop_database(&self, db: &str) -> Result<()> {
        self.query(None, &format!("DROP DATABASE \"{db}\""))
            .await
            .map(|_| ())
    }
}

// ---------------------------------------------------------------------------
// Results

#[derive(Default)]
struct Results {
    generate: Option<Measured>,
    backfill: Option<Backfill>,
    group_by: Vec<(&'static str, Duration, u64)>,
    candle_check: Option<(bool, String)>,
    raw: Vec<RawPull>,
    rss: Vec<(u64, u64)>,
    caught_up: Option<Duration>,
    latency: Vec<Latency>,
    h1_30d: Option<Latency>,
    ingest: Option<Ingest>,
}

struct Backfill {
    elapsed: Duration,
    peak_kb: u64,
    rows_read: Option<u64>,
}

struct RawPull {
    format: &'static str,
    shape: &'static str,
    elapsed: Duration,
    bytes: u64,
}

struct Latency {
    udf: &'static str,
    bars: usize,
    p50: Duration,
    p99: Duration,
    influx_bars: usize,
    influx_p50: Duration,
    influx_p99: Duration,
    influx_n: usize,
}

struct Ingest {
    trades: u64,
    batch: usize,
    api: Duration,
    write: Duration,
}

/// Everything a phase needs.
struct Bench {
    args: Args,
    ohlcd: PathBuf,
    scratch: PathBuf,
    influx: Influx,
    influxd_pid: Option<u32>,
    /// Main database; the size databases are named after it.
    db: String,
    /// Data range, Unix ns, `[from, to)`.
    from: i64,
    to: i64,
    /// Databases created; dropped at the end on an external InfluxDB.
    created: Vec<String>,
    /// Where ohlcd misbehaved or its answers differ from InfluxDB's.
    issues: Vec<String>,
    /// Phases that failed.
    failures: Vec<String>,
    /// Remarks on how something was measured.
    notes: Vec<String>,
}

fn secs_str(ns: i64) -> String {
    (ns / NS).to_string()
}

impl Bench {
    fn issue(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        say!("OHLCD ISSUE: {msg}");
        self.issues.push(msg);
    }

    fn fail(&mut self, phase: &str, e: anyhow::Error) {
        let msg = format!("{phase}: {e:#}");
        say!("FAILED {msg}");
        self.failures.push(msg);
    }

    fn ohlcd_cmd(&self, db: &str, sqlite: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ohlcd);
        cmd.args(args)
            .env("OHLCD_INFLUX__URL", &self.influx.url)
            .env("OHLCD_INFLUX__DATABASE", db)
            .env(
                "OHLCD_PROGRESS__DATABASE_URL",
                format!("sqlite://{}", sqlite.display()),
            )
            .env("NO_COLOR", "1");
        cmd
    }

    /// Warnings and errors in an ohlcd log, reported as issues.
    fn scan_log(&mut self, proc: &Proc) {
        let text = strip_ansi(&proc.stderr_text());
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| {
                let words: Vec<&str> = l.split_whitespace().take(3).collect();
                words.contains(&"WARN") || words.contains(&"ERROR") || l.contains("panicked")
            })
            .collect();
        if !bad.is_empty() {
            let shown: Vec<&str> = bad.iter().take(3).copied().collect();
            self.issue(format!(
                "{} logged {} warning/error line(s), e.g.: {}",
                proc.name,
                bad.len(),
                shown.join(" | ")
            ));
        }
    }

    /// Waits until our influxd has been nearly idle (< 10 % of a core) for a
    /// second, so background compaction after a big write does not land in the
    /// next measurement; bounded at 90 s.
    async fn settle(&self) {
        let Some(pid) = self.influxd_pid else {
            tokio::time::sleep(Duration::from_secs(2)).await;
            return;
        };
        let started = Instant::now();
        let Some(mut prev) = cpu_ticks(pid) else {
            return;
        };
        let mut calm = 0;
        while started.elapsed() < Duration::from_secs(90) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(now) = cpu_ticks(pid) else { return };
            if now - prev <= 5 {
                calm += 1;
                if calm >= 2 {
                    if started.elapsed() > Duration::from_secs(2) {
                        say!("influxd idle after {:.1}s", started.elapsed().as_secs_f64());
                    }
                    return;
                }
            } else {
                calm = 0;
            }
            prev = now;
        }
        say!("influxd still busy after 90s; measuring anyway");
    }

    fn timeout_for(n: u64) -> Duration {
        Duration::from_secs(180 + n / 10_000)
    }

    /// `ohlcd generate` of `n` trades into `db`, timed; checks the count.
    async fn generate(&mut self, db: &str, n: u64) -> Result<Measured> {
        say!("generating {n} trades into database {db} (ohlcd generate) ...");
        let symbols = self.args.symbols.join(",");
        let (from, to, trades) = (secs_str(self.from), secs_str(self.to), n.to_string());
        let cmd = self.ohlcd_cmd(
            db,
            &self.scratch.join(format!("{db}-generate.db")),
            &[
                "generate",
                "--symbols",
                &symbols,
                "--from",
                &from,
                "--to",
                &to,
                "--trades",
                &trades,
                "--seed",
                "42",
            ],
        );
        self.created.push(db.to_string());
        let mut proc = Proc::spawn(&format!("generate-{db}"), cmd, &self.scratch)?;
        let m = proc.wait_measured(Self::timeout_for(n)).await?;
        if !m.status.success() {
            let msg = format!(
                "ohlcd generate exited with {}; {}",
                m.status,
                proc.stderr_tail(10)
            );
            self.issue(msg.clone());
            bail!(msg);
        }
        self.scan_log(&proc);
        say!(
            "generated {n} trades in {:.1}s ({} trades/s)",
            m.elapsed.as_secs_f64(),
            thousands(n as f64 / m.elapsed.as_secs_f64())
        );
        let count = self
            .influx
            .scalar(
                db,
                &format!(
                    "SELECT count(price) FROM trades WHERE time >= {} AND time < {}",
                    self.from, self.to
                ),
            )
            .await? as u64;
        if count != n {
            self.issue(format!(
                "ohlcd generate --trades {n} left {count} trades in database {db}"
            ));
        }
        Ok(m)
    }

    /// `ohlcd backfill` from a fresh SQLite file, timed, peak RSS sampled; then
    /// checks that every resolution counts exactly `n` trades.
    async fn backfill(&mut self, db: &str, n: u64) -> Result<Backfill> {
        say!("backfill of {db} ({n} trades, all six resolutions, fresh SQLite) ...");
        let sqlite = self.scratch.join(format!("{db}-progress.db"));
        let _ = std::fs::remove_file(&sqlite);
        let cmd = self.ohlcd_cmd(db, &sqlite, &["backfill"]);
        let mut proc = Proc::spawn(&format!("backfill-{db}"), cmd, &self.scratch)?;
        let m = proc.wait_measured(Self::timeout_for(n)).await?;
        if !m.status.success() {
            let msg = format!(
                "ohlcd backfill exited with {}; {}",
                m.status,
                proc.stderr_tail(10)
            );
            self.issue(msg.clone());
            bail!(msg);
        }
        self.scan_log(&proc);
        let out = proc.stdout_text();
        let rows_read = out
            .split(" source rows read")
            .next()
            .filter(|_| out.contains(" source rows read"))
            .and_then(|s| s.split_whitespace().last())
            .and_then(|s| s.parse().ok());
        if rows_read.is_none() {
            self.issue(format!(
                "ohlcd backfill's summary line is missing or changed: {:?}",
                out.trim()
            ));
        }
        say!(
            "backfill done in {:.2}s, peak RSS {:.1} MB ({})",
            m.elapsed.as_secs_f64(),
            mb(m.peak_kb),
            out.trim()
        );
        for (res, _, _) in RESOLUTIONS {
            let total = self
                .influx
                .scalar(
                    db,
                    &format!(
                        "SELECT sum(trades) FROM ohlc_{res} WHERE time >= {} AND time < {}",
                        self.from, self.to
                    ),
                )
                .await? as u64;
            if total != n {
                self.issue(format!(
                    "after backfill of {db}, the {res} candles count {total} trades, not {n}"
                ));
            }
        }
        Ok(Backfill {
            elapsed: m.elapsed,
            peak_kb: m.peak_kb,
            rows_read,
        })
    }

    /// Reference (a): InfluxQL GROUP BY time at the six resolutions, then a check
    /// that ohlcd's stored candles equal them.
    async fn group_by(&mut self, r: &mut Results) -> Result<()> {
        let mut answers = Vec::new();
        for (res, _, _) in RESOLUTIONS {
            let q = format!(
                "SELECT first(price), max(price), min(price), last(price), sum(amount), count(price) \
                 FROM trades WHERE time >= {} AND time < {} GROUP BY time({res}), symbol fill(none)",
                self.from, self.to
            );
            let f = self
                .influx
                .fetch(&self.db, &q, "application/csv", true)
                .await?;
            let rows = f.csv_rows();
            say!(
                "InfluxQL GROUP BY time({res}): {:.2}s, {rows} rows",
                f.elapsed.as_secs_f64()
            );
            r.group_by.push((res, f.elapsed, rows));
            answers.push((res, f.body));
        }
        say!("checking ohlcd's stored candles against InfluxDB's GROUP BY ...");
        let mut total = 0usize;
        let mut bad = Vec::new();
        for (res, body) in &answers {
            let expected = parse_candle_csv(body)?;
            let q = format!(
                "SELECT open, high, low, close, volume, trades FROM ohlc_{res} \
                 WHERE time >= {} AND time < {} GROUP BY symbol",
                self.from, self.to
            );
            let stored = parse_candle_csv(
                &self
                    .influx
                    .fetch(&self.db, &q, "application/csv", true)
                    .await?
                    .body,
            )?;
            total += expected.len();
            if let Some(diff) = compare_candles(&expected, &stored) {
                bad.push(format!("{res}: {diff}"));
            }
        }
        if bad.is_empty() {
            r.candle_check = Some((
                true,
                format!(
                    "equal at all 6 resolutions ({} candles)",
                    thousands(total as f64)
                ),
            ));
        } else {
            let msg = format!(
                "ohlcd's candles differ from InfluxDB's GROUP BY: {}",
                bad.join("; ")
            );
            r.candle_check = Some((false, format!("{} of 6 resolutions differ", bad.len())));
            self.issue(msg);
        }
        Ok(())
    }

    /// Reference (b): a bare raw pull of the trades, CSV and msgpack, per symbol
    /// (summed) and in one query.
    async fn raw_pull(&mut self, r: &mut Results) -> Result<()> {
        let n = self.args.trades;
        let range = format!("time >= {} AND time < {}", self.from, self.to);
        for (format, accept) in [
            ("CSV", "application/csv"),
            ("msgpack", "application/x-msgpack"),
        ] {
            let mut per_symbol = Duration::ZERO;
            let (mut bytes, mut rows) = (0u64, 0u64);
            let mut content_type = String::new();
            for s in self.args.symbols.clone() {
                let q = format!(
                    "SELECT price, amount, id, side FROM trades WHERE symbol = '{s}' AND {range}"
                );
                let f = self.influx.fetch(&self.db, &q, accept, false).await?;
                per_symbol += f.elapsed;
                bytes += f.bytes;
                rows += f.csv_rows();
                content_type = f.content_type;
            }
            if !content_type.contains(if format == "CSV" { "csv" } else { "msgpack" }) {
                bail!("InfluxDB answered {accept} with Content-Type {content_type:?}");
            }
            say!(
                "raw pull {format}, per symbol: {:.2}s, {:.1} MB",
                per_symbol.as_secs_f64(),
                bytes as f64 / 1e6
            );
            if format == "CSV" && rows != n {
                self.notes.push(format!(
                    "raw CSV pull per symbol returned {rows} rows, expected {n}"
                ));
            }
            r.raw.push(RawPull {
                format,
                shape: "per symbol, summed",
                elapsed: per_symbol,
                bytes,
            });
            let q = format!("SELECT price, amount, id, side FROM trades WHERE {range}");
            let f = self.influx.fetch(&self.db, &q, accept, false).await?;
            say!(
                "raw pull {format}, one query: {:.2}s, {:.1} MB",
                f.elapsed.as_secs_f64(),
                f.bytes as f64 / 1e6
            );
            if format == "CSV" && f.csv_rows() != n {
                self.notes.push(format!(
                    "raw CSV pull in one query returned {} rows, expected {n}",
                    f.csv_rows()
                ));
            }
            r.raw.push(RawPull {
                format,
                shape: "one query",
                elapsed: f.elapsed,
                bytes: f.bytes,
            });
        }
        Ok(())
    }

    /// Peak RSS of backfill at the `--rss-sizes`, each in its own database.
    async fn rss_sizes(&mut self, r: &mut Results) {
        let mut sizes = self.args.rss_sizes.clone();
        sizes.sort_unstable();
        sizes.dedup();
        for size in sizes {
            if size == self.args.trades {
                continue; // the main run measured it
            }
            if size > LARGE_SIZE && !self.args.allow_large {
                let msg =
                    format!("RSS size {size} skipped (above {LARGE_SIZE}; pass --allow-large)");
                say!("{msg}");
                self.notes.push(msg);
                continue;
            }
            let db = format!("{}_n{size}", self.db);
            let outcome = async {
                self.generate(&db, size).await?;
                self.settle().await;
                self.backfill(&db, size).await
            }
            .await;
            match outcome {
                Ok(b) => r.rss.push((size, b.peak_kb)),
                Err(e) => self.fail(&format!("peak RSS at {size} trades"), e),
            }
            // Free the disk and the page cache for the next size.
            if let Err(e) = self.influx.drop_database(&db).await {
                say!("could not drop database {db}: {e:#}");
            } else {
                self.created.retain(|d| d != &db);
            }
        }
        r.rss.sort_unstable();
    }

    /// `ohlcd run`: wait until caught up, then `/udf/history` latency against
    /// InfluxDB on the fly, then ingest throughput against `/write`; stops the
    /// daemon with SIGTERM and checks that it exits cleanly.
    async fn daemon(&mut self, r: &mut Results) -> Result<()> {
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let sqlite = self.scratch.join(format!("{}-progress.db", self.db));
        let mut cmd = self.ohlcd_cmd(&self.db, &sqlite, &["run"]);
        cmd.env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{port}"));
        say!("starting ohlcd run on {base} ...");
        let mut proc = Proc::spawn("run", cmd, &self.scratch)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4)
            .build()?;
        let started = Instant::now();

        // /healthz 200.
        loop {
            if let Some(status) = proc.poll()? {
                let msg = format!(
                    "ohlcd run exited at start-up with {status}; {}",
                    proc.stderr_tail(10)
                );
                self.issue(msg.clone());
                bail!(msg);
            }
            if let Ok(resp) = client
                .get(format!("{base}/healthz"))
                .timeout(Duration::from_secs(3))
                .send()
                .await
                && resp.status().is_success()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "ohlcd run: /healthz not 200 within 60s; {}",
                    proc.stderr_tail(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // /api/progress: every (symbol, resolution) completed.
        let want = self.args.symbols.len() * RESOLUTIONS.len();
        let deadline = Duration::from_secs(120 + self.args.trades / 50_000);
        let mut last = String::new();
        loop {
            if let Some(status) = proc.poll()? {
                let msg = format!(
                    "ohlcd run exited with {status} while catching up; {}",
                    proc.stderr_tail(10)
                );
                self.issue(msg.clone());
                bail!(msg);
            }
            if let Ok(resp) = client.get(format!("{base}/api/progress")).send().await
                && let Ok(v) = resp.json::<Value>().await
                && let Some(tasks) = v.as_array()
            {
                let ours: Vec<&Value> = tasks
                    .iter()
                    .filter(|t| {
                        t["symbol"]
                            .as_str()
                            .is_some_and(|s| self.args.symbols.iter().any(|x| x == s))
                    })
                    .collect();
                let done = ours.iter().filter(|t| t["status"] == "completed").count();
                last = format!("{done}/{want} tasks completed");
                if ours.len() >= want && done == ours.len() {
                    break;
                }
                if let Some(f) = ours.iter().find(|t| t["status"] == "failed") {
                    self.issue(format!("ohlcd run: task failed while catching up: {f}"));
                }
            }
            if started.elapsed() > deadline {
                bail!(
                    "ohlcd run: not caught up within {}s ({last}); {}",
                    deadline.as_secs(),
                    proc.stderr_tail(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        r.caught_up = Some(started.elapsed());
        say!(
            "ohlcd run caught up after {:.1}s",
            started.elapsed().as_secs_f64()
        );

        if let Err(e) = self.latency(&client, &base, r).await {
            self.fail("/udf/history latency", e);
        }
        if let Err(e) = self.ingest(&client, &base, r).await {
            self.fail("ingest throughput", e);
        }

        say!("stopping ohlcd run (SIGTERM) ...");
        match proc.terminate(Duration::from_secs(30)).await {
            Ok(status) if status.success() => {}
            Ok(status) => self.issue(format!(
                "ohlcd run exited with {status} on SIGTERM; {}",
                proc.stderr_tail(5)
            )),
            Err(e) => self.issue(format!("{e:#}")),
        }
        self.scan_log(&proc);
        Ok(())
    }

    async fn latency(
        &mut self,
        client: &reqwest::Client,
        base: &str,
        r: &mut Results,
    ) -> Result<()> {
        let symbol = self.args.symbols[0].clone();
        for (res, udf, len) in RESOLUTIONS {
            let l = self
                .latency_one(client, base, &symbol, res, udf, len, 1000)
                .await?;
            r.latency.push(l);
        }
        let bars = (i64::from(self.args.days) * 24).min(720);
        let l = self
            .latency_one(client, base, &symbol, "1h", "60", 3_600, bars)
            .await?;
        r.h1_30d = Some(l);
        Ok(())
    }

    /// `countback` bars of `udf` before the end of the data from ohlcd (K timed
    /// requests) and the same range aggregated on the fly by InfluxDB; checks
    /// that both give the same bars.
    #[allow(clippy::too_many_arguments)]
    async fn latency_one(
        &mut self,
        client: &reqwest::Client,
        base: &str,
        symbol: &str,
        res: &'static str,
        udf: &'static str,
        len: i64,
        countback: i64,
    ) -> Result<Latency> {
        let to_s = self.to / NS;
        let url = format!(
            "{base}/udf/history?symbol={symbol}&resolution={udf}&to={to_s}&countback={countback}"
        );
        let k = self.args.latency_requests.max(1);
        let mut times = Vec::with_capacity(k);
        let mut first: Option<Bytes> = None;
        for i in 0..LATENCY_WARMUP + k {
            let started = Instant::now();
            let resp = client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            let status = resp.status();
            let body = resp.bytes().await.with_context(|| format!("GET {url}"))?;
            let elapsed = started.elapsed();
            if !status.is_success() {
                let msg = format!(
                    "GET {url} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                self.issue(msg.clone());
                bail!(msg);
            }
            if i >= LATENCY_WARMUP {
                times.push(elapsed);
            }
            if first.is_none() {
                first = Some(body);
            }
        }
        let udf_json: Value = serde_json::from_slice(first.as_deref().unwrap_or_default())
            .context("/udf/history answer is not JSON")?;
        if udf_json["s"] != "ok" {
            self.issue(format!("GET {url} answered {udf_json}"));
        }
        let bars = udf_json["t"].as_array().map_or(0, Vec::len);

        // The same chart from InfluxDB, aggregating raw trades on the fly.
        let start = self.to - countback * len * NS;
        let q = format!(
            "SELECT first(price), max(price), min(price), last(price), sum(amount) FROM trades \
             WHERE symbol = '{symbol}' AND time >= {start} AND time < {} GROUP BY time({res}) fill(none)",
            self.to
        );
        let query_url = format!("{}/query", self.influx.url);
        let mut itimes = Vec::new();
        let mut answer: Option<Value> = None;
        let series_started = Instant::now();
        for i in 0..INFLUX_WARMUP + self.args.influx_requests.max(1) {
            let started = Instant::now();
            let resp = client
                .get(&query_url)
                .query(&[("db", self.db.as_str()), ("q", q.as_str()), ("epoch", "s")])
                .timeout(Duration::from_secs(300))
                .send()
                .await
                .with_context(|| format!("InfluxDB on the fly: `{q}`"))?;
            let status = resp.status();
            let body = resp.bytes().await?;
            let elapsed = started.elapsed();
            ensure!(
                status.is_success(),
                "InfluxDB answered {status} to `{q}`: {}",
                String::from_utf8_lossy(&body)
            );
            if i >= INFLUX_WARMUP {
                itimes.push(elapsed);
            }
            if answer.is_none() {
                answer =
                    Some(serde_json::from_slice(&body).context("InfluxDB answer is not JSON")?);
            }
            if itimes.len() >= 5 && series_started.elapsed() > INFLUX_SERIES_BUDGET {
                break;
            }
        }
        let answer = answer.unwrap_or_default();
        if let Some(e) = answer["results"][0]["error"].as_str() {
            bail!("InfluxDB: {e} (query `{q}`)");
        }
        let influx_rows: Vec<&Value> = answer["results"][0]["series"][0]["values"]
            .as_array()
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        if let Some(diff) = compare_bars(&udf_json, &influx_rows, start / NS) {
            self.issue(format!(
                "/udf/history resolution {udf} countback {countback} differs from InfluxDB's GROUP BY time({res}): {diff}"
            ));
        }
        let (p50, p99) = (percentile(&mut times, 0.50), percentile(&mut times, 0.99));
        let (ip50, ip99) = (percentile(&mut itimes, 0.50), percentile(&mut itimes, 0.99));
        say!(
            "/udf/history {udf} ×{countback}: {bars} bars, p50 {:.2} ms, p99 {:.2} ms; InfluxDB on the fly: p50 {:.1} ms, p99 {:.1} ms ({} requests)",
            ms(p50),
            ms(p99),
            ms(ip50),
            ms(ip99),
            itimes.len()
        );
        Ok(Latency {
            udf,
            bars,
            p50,
            p99,
            influx_bars: influx_rows.len(),
            influx_p50: ip50,
            influx_p99: ip99,
            influx_n: itimes.len(),
        })
    }

    /// POST /api/trades against InfluxDB /write of the same trades (other
    /// symbol), batch by batch, interleaved so both see the same conditions.
    async fn ingest(
        &mut self,
        client: &reqwest::Client,
        base: &str,
        r: &mut Results,
    ) -> Result<()> {
        let n = self.args.ingest_trades.max(1);
        let batch = self.args.ingest_batch.max(1);
        // Times from 2 to 32 minutes ahead (the API allows up to an hour): new
        // series, never late against a watermark, and untouched by the daemon's
        // ticks during the measurement.
        let now_ns = chrono::Utc::now()
            .timestamp_nanos_opt()
            .context("clock out of range")?;
        let from = now_ns + 120 * NS;
        let spec = GenerateSpec {
            symbols: vec![API_SYMBOL.to_string()],
            from,
            to: from + 1_800 * NS,
            trades: n,
            seed: 7,
        };
        let trades: Vec<NewTrade> = Generator::new(&spec).collect();
        let api_bodies: Vec<Bytes> = trades
            .chunks(batch)
            .map(|b| {
                let items: Vec<Value> = b
                    .iter()
                    .map(|t| {
                        json!({
                            "symbol": t.symbol,
                            "price": t.price,
                            "amount": t.amount,
                            "side": t.side.as_str(),
                            "timestamp": t.time_ms,
                            "id": t.id,
                        })
                    })
                    .collect();
                serde_json::to_vec(&items).map(Bytes::from)
            })
            .collect::<Result<_, _>>()?;
        let lp_bodies: Vec<Bytes> = trades
            .chunks(batch)
            .map(|b| {
                let renamed: Vec<NewTrade> = b
                    .iter()
                    .map(|t| NewTrade {
                        symbol: WRITE_SYMBOL.to_string(),
                        ..t.clone()
                    })
                    .collect();
                Bytes::from(encode_trades(&renamed))
            })
            .collect();
        say!(
            "ingest: {n} trades in batches of {batch}: POST /api/trades ({API_SYMBOL}) vs InfluxDB /write ({WRITE_SYMBOL}), interleaved ..."
        );
        // Open both connections first.
        let _ = client.get(format!("{base}/udf/time")).send().await;
        let _ = self.influx.version().await;
        let api_url = format!("{base}/api/trades");
        let (mut api, mut write) = (Duration::ZERO, Duration::ZERO);
        let (mut accepted, mut late) = (0u64, 0u64);
        for (i, (jb, lb)) in api_bodies.into_iter().zip(lp_bodies).enumerate() {
            let started = Instant::now();
            let resp = client
                .post(&api_url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(jb)
                .send()
                .await
                .with_context(|| format!("POST {api_url}"))?;
            let status = resp.status();
            let body = resp.bytes().await?;
            api += started.elapsed();
            if !status.is_success() {
                let msg = format!(
                    "POST /api/trades batch {i} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                self.issue(msg.clone());
                bail!(msg);
            }
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            accepted += v["accepted"].as_u64().unwrap_or(0);
            late += v["late"].as_u64().unwrap_or(0);
            write += self.influx.write(&self.db, lb).await?;
        }
        if accepted != n {
            self.issue(format!(
                "POST /api/trades accepted {accepted} of {n} trades"
            ));
        }
        if late != 0 {
            self.issue(format!(
                "POST /api/trades flagged {late} trades as late although they are newer than any watermark"
            ));
        }
        for symbol in [API_SYMBOL, WRITE_SYMBOL] {
            let count = self
                .influx
                .scalar(
                    &self.db,
                    &format!("SELECT count(price) FROM trades WHERE symbol = '{symbol}' AND time >= {from}"),
                )
                .await? as u64;
            if count != n {
                let msg =
                    format!("after ingest, InfluxDB holds {count} trades of {symbol}, not {n}");
                if symbol == API_SYMBOL {
                    self.issue(msg);
                } else {
                    self.notes.push(msg);
                }
            }
        }
        say!(
            "ingest: API {} trades/s, InfluxDB /write {} trades/s",
            thousands(n as f64 / api.as_secs_f64()),
            thousands(n as f64 / write.as_secs_f64())
        );
        r.ingest = Some(Ingest {
            trades: n,
            batch,
            api,
            write,
        });
        Ok(())
    }
}

/// `(symbol, window start ns)` → `[open, high, low, close, volume, trades]`.
type CandleMap = HashMap<(String, i64), [f64; 6]>;

/// Candles from CSV `name,tags,time,<6 values>` with tags `symbol=…`.
fn parse_candle_csv(body: &[u8]) -> Result<CandleMap> {
    let text = std::str::from_utf8(body).context("CSV answer is not UTF-8")?;
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("name,") {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        ensure!(f.len() == 9, "unexpected CSV row {line:?}");
        let symbol = f[1].strip_prefix("symbol=").unwrap_or(f[1]).to_string();
        let time: i64 = f[2]
            .parse()
            .with_context(|| format!("bad time in {line:?}"))?;
        let mut v = [0.0; 6];
        for (slot, s) in v.iter_mut().zip(&f[3..]) {
            *slot = s
                .parse()
                .with_context(|| format!("bad number in {line:?}"))?;
        }
        out.insert((symbol, time), v);
    }
    Ok(out)
}

fn close_enough(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-12
}

/// Prices and counts exactly, volume up to summation order.
fn same_candle(a: &[f64; 6], b: &[f64; 6]) -> bool {
    a[0] == b[0]
        && a[1] == b[1]
        && a[2] == b[2]
        && a[3] == b[3]
        && a[5] == b[5]
        && close_enough(a[4], b[4])
}

/// `None` if equal, else a summary with a few examples.
fn compare_candles(expected: &CandleMap, stored: &CandleMap) -> Option<String> {
    let mut missing = 0;
    let mut differ = 0;
    let mut examples = Vec::new();
    let sorted: BTreeMap<&(String, i64), &[f64; 6]> = expected.iter().collect();
    for (key, want) in sorted {
        match stored.get(key) {
            None => {
                missing += 1;
                if examples.len() < 3 {
                    examples.push(format!(
                        "{} {} missing",
                        key.0,
                        ohlcd::times::to_rfc3339(key.1)
                    ));
                }
            }
            Some(got) if !same_candle(want, got) => {
                differ += 1;
                if examples.len() < 3 {
                    examples.push(format!(
                        "{} {}: InfluxDB [o h l c v n] {want:?}, ohlcd {got:?}",
                        key.0,
                        ohlcd::times::to_rfc3339(key.1)
                    ));
                }
            }
            Some(_) => {}
        }
    }
    let extra = stored.keys().filter(|k| !expected.contains_key(k)).count();
    if missing + differ + extra == 0 {
        return None;
    }
    Some(format!(
        "{} expected, {missing} missing, {differ} different, {extra} extra; {}",
        expected.len(),
        examples.join("; ")
    ))
}

/// Compares UDF bars with InfluxDB rows `[t, o, h, l, c, v]` on `t ≥ start`.
fn compare_bars(udf: &Value, rows: &[&Value], start: i64) -> Option<String> {
    let col = |k: &str| udf[k].as_array().cloned().unwrap_or_default();
    let (t, o, h, l, c, v) = (col("t"), col("o"), col("h"), col("l"), col("c"), col("v"));
    let mut ours: BTreeMap<i64, [f64; 6]> = BTreeMap::new();
    for (i, ts) in t.iter().enumerate() {
        let Some(ts) = ts.as_i64() else { continue };
        if ts < start {
            continue;
        }
        let g = |a: &[Value]| a.get(i).and_then(Value::as_f64).unwrap_or(f64::NAN);
        ours.insert(ts, [g(&o), g(&h), g(&l), g(&c), g(&v), 0.0]);
    }
    let mut theirs: BTreeMap<i64, [f64; 6]> = BTreeMap::new();
    for row in rows {
        let Some(ts) = row[0].as_i64() else { continue };
        let g = |i: usize| row[i].as_f64().unwrap_or(f64::NAN);
        theirs.insert(ts, [g(1), g(2), g(3), g(4), g(5), 0.0]);
    }
    if ours.len() != theirs.len() {
        return Some(format!(
            "{} bars from ohlcd vs {} from InfluxDB in the range",
            ours.len(),
            theirs.len()
        ));
    }
    let bad: Vec<String> = ours
        .iter()
        .filter(|(ts, a)| theirs.get(ts).is_none_or(|b| !same_candle(a, b)))
        .take(3)
        .map(|(ts, a)| format!("t={ts}: ohlcd {a:?}, InfluxDB {:?}", theirs.get(ts)))
        .collect();
    (!bad.is_empty()).then(|| bad.join("; "))
}

/// Nearest-rank percentile.
fn percentile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// kB (as in /proc) to MB (10^6 bytes).
fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

// ---------------------------------------------------------------------------
// The run

async fn run(args: Args) -> Result<bool> {
    // Preflight: everything that can be checked before starting anything.
    ensure!(
        !args.symbols.is_empty(),
        "--symbols: give at least one symbol"
    );
    for s in &args.symbols {
        validate_symbol(s).map_err(|e| anyhow!("--symbols: {e}"))?;
        ensure!(
            s != API_SYMBOL && s != WRITE_SYMBOL,
            "--symbols: {s} is reserved for the ingest comparison"
        );
    }
    ensure!(args.trades > 0, "--trades must be at least 1");
    ensure!(args.days > 0, "--days must be at least 1");
    ensure!(
        args.ingest_batch <= 100_000,
        "--ingest-batch: the API takes at most 100,000 trades per request"
    );
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let ohlcd = exe
        .parent()
        .map(|d| d.join("ohlcd"))
        .context("the bench executable has no directory")?;
    ensure!(
        ohlcd.is_file(),
        "ohlcd binary not found at {} (it must sit next to ohlcd-bench); build both with `cargo build --release --bins`",
        ohlcd.display()
    );
    let ohlcd_version = Command::new(&ohlcd)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into());

    let load_start = loadavg();
    let scratch = Scratch::new()?;
    say!("scratch directory {}", scratch.0.display());
    let own = match &args.influx_url {
        Some(_) => None,
        None => {
            say!("starting influxd ...");
            Some(start_influxd(&scratch.0).await?)
        }
    };
    let url = match (&own, &args.influx_url) {
        (Some(o), _) => o.url.clone(),
        (None, Some(u)) => u.clone(),
        (None, None) => unreachable!(),
    };
    let influx = Influx::new(&url)?;
    let influx_version = influx.version().await?;
    say!("InfluxDB {influx_version} at {url}");

    let now = chrono::Utc::now();
    // The data ends at the last UTC midnight at least an hour ago, so every
    // resolution's watermark is past it once ohlcd has caught up.
    let today = (now - chrono::Duration::hours(1))
        .timestamp_nanos_opt()
        .context("clock out of range")?
        .div_euclid(DAY_NS)
        * DAY_NS;
    let db = format!(
        "ohlcd_bench_{}_{}",
        now.format("%Y%m%d_%H%M%S"),
        std::process::id()
    );
    let mut b = Bench {
        from: today - i64::from(args.days) * DAY_NS,
        to: today,
        args: args.clone(),
        ohlcd: ohlcd.clone(),
        scratch: scratch.0.clone(),
        influx: influx.clone(),
        influxd_pid: own.as_ref().map(|o| o.proc.pid()),
        db: db.clone(),
        created: Vec::new(),
        issues: Vec::new(),
        failures: Vec::new(),
        notes: Vec::new(),
    };
    let mut r = Results::default();

    let outcome = async {
        // 2. Data.
        r.generate = Some(b.generate(&db, args.trades).await?);
        b.settle().await;
        // 3., 4. and 5. Backfill and the references, interleaved in two rounds:
        // freshly written data reads slower until InfluxDB has settled it, so
        // whatever runs first pays for that. Best of two for both sides.
        let mut backfills = Vec::new();
        for round in 1..=2 {
            if let Err(e) = b.raw_pull(&mut r).await {
                b.fail("raw pull reference", e);
            }
            b.settle().await;
            match b.backfill(&db, args.trades).await {
                Ok(x) => backfills.push(x),
                Err(e) => b.fail("backfill", e),
            }
            b.settle().await;
            if round == 1 {
                if let Err(e) = b.group_by(&mut r).await {
                    b.fail("InfluxQL GROUP BY reference", e);
                }
                b.settle().await;
            }
        }
        if !backfills.is_empty() {
            b.notes.push(format!(
                "backfill runs (each from a fresh SQLite file): {}; the best is used",
                backfills
                    .iter()
                    .map(|x| format!("{:.2} s", x.elapsed.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(best) = backfills.into_iter().min_by_key(|x| x.elapsed) {
            r.rss.push((args.trades, best.peak_kb));
            r.backfill = Some(best);
        }
        // Best of the two rounds of each raw pull.
        let mut best: Vec<RawPull> = Vec::new();
        for pull in r.raw.drain(..) {
            match best
                .iter_mut()
                .find(|p| p.format == pull.format && p.shape == pull.shape)
            {
                Some(p) if p.elapsed <= pull.elapsed => {}
                Some(p) => *p = pull,
                None => best.push(pull),
            }
        }
        r.raw = best;
        // 7. and 8. The daemon.
        b.settle().await;
        if let Err(e) = b.daemon(&mut r).await {
            b.fail("ohlcd run", e);
        }
        // 6. Peak RSS at other sizes (last: the biggest writes).
        b.rss_sizes(&mut r).await;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = outcome {
        b.fail("data generation", e);
    }

    // Clean up databases on an external InfluxDB.
    if own.is_none() && !args.keep_data {
        for d in b.created.clone() {
            if let Err(e) = influx.drop_database(&d).await {
                say!("could not drop database {d}: {e:#}");
            }
        }
    }
    let own_influx = own.is_some();
    drop(own);

    let header = machine_header(
        &args,
        &b,
        &influx_version,
        &ohlcd_version,
        own_influx,
        &now,
        &load_start,
    );
    let rows = table_rows(&b, &r);
    print_table(&rows);
    let md = markdown(&header, &rows, &b);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&args.out, md)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    say!("results written to {}", args.out.display());
    for i in &b.issues {
        eprintln!("ohlcd issue: {i}");
    }
    Ok(b.failures.is_empty())
}

/// `/proc/loadavg`'s three load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A ratio: one decimal below 10, none above.
fn times_str(x: f64) -> String {
    if x < 10.0 {
        format!("×{x:.1}")
    } else {
        format!("×{x:.0}")
    }
}

fn machine_header(
    args: &Args,
    b: &Bench,
    influx_version: &str,
    ohlcd_version: &str,
    own: bool,
    now: &chrono::DateTime<chrono::Utc>,
    load_start: &str,
) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_string(), |s| s.trim().to_string());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let inherited: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OHLCD_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut h = String::new();
    let _ = writeln!(h, "# ohlcd end-to-end benchmark\n");
    let _ = writeln!(h, "- date: {} UTC", now.format("%Y-%m-%d %H:%M:%S"));
    let _ = writeln!(
        h,
        "- machine: {model}, nproc {nproc}, {:.1} GiB memory; load average (1/5/15 min) {load_start} at start, {} at end",
        mem_kb as f64 / 1024.0 / 1024.0,
        loadavg()
    );
    let _ = writeln!(
        h,
        "- InfluxDB {influx_version} ({})",
        if own {
            "own influxd started by the bench on this machine".to_string()
        } else {
            format!("external, {}", b.influx.url)
        }
    );
    let _ = writeln!(
        h,
        "- {ohlcd_version} ({}), default configuration",
        b.ohlcd.display()
    );
    let _ = writeln!(
        h,
        "- data: N = {} trades, symbols {}, {} days ({} to {}), seed 42, database {}",
        thousands(args.trades as f64),
        args.symbols.join(","),
        args.days,
        ohlcd::times::to_rfc3339(b.from),
        ohlcd::times::to_rfc3339(b.to),
        b.db
    );
    if !inherited.is_empty() {
        let _ = writeln!(h, "- inherited environment: {}", inherited.join(" "));
    }
    let _ = writeln!(
        h,
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    h
}

#[derive(Clone, Copy, PartialEq)]
enum Status {
    Info,
    Met,
    NotMet,
}

struct Row {
    metric: String,
    value: String,
    target: String,
    status: Status,
}

fn row(metric: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target: "—".to_string(),
        status: Status::Info,
    }
}

fn check(
    metric: impl Into<String>,
    value: impl Into<String>,
    target: impl Into<String>,
    met: bool,
) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target: target.into(),
        status: if met { Status::Met } else { Status::NotMet },
    }
}

fn table_rows(b: &Bench, r: &Results) -> Vec<Row> {
    let n = b.args.trades;
    let nf = n as f64;
    let mut rows = Vec::new();
    if let Some(g) = &r.generate {
        rows.push(row(
            format!("generate {} trades (ohlcd generate)", thousands(nf)),
            format!(
                "{:.2} s, {} trades/s",
                g.elapsed.as_secs_f64(),
                thousands(nf / g.elapsed.as_secs_f64())
            ),
        ));
    }
    if let Some(bf) = &r.backfill {
        let rows_read = bf
            .rows_read
            .map(|x| {
                format!(
                    ", {} source rows/s",
                    thousands(x as f64 / bf.elapsed.as_secs_f64())
                )
            })
            .unwrap_or_default();
        rows.push(row(
            "backfill (6 resolutions)",
            format!(
                "{:.2} s, {} trades/s{rows_read}",
                bf.elapsed.as_secs_f64(),
                thousands(nf / bf.elapsed.as_secs_f64())
            ),
        ));
    }
    for (res, d, n_rows) in &r.group_by {
        rows.push(row(
            format!("  InfluxQL GROUP BY time({res}), symbol"),
            format!(
                "{:.2} s ({} rows)",
                d.as_secs_f64(),
                thousands(*n_rows as f64)
            ),
        ));
    }
    let group_by: Option<Duration> =
        (r.group_by.len() == RESOLUTIONS.len()).then(|| r.group_by.iter().map(|g| g.1).sum());
    if let Some(g) = group_by {
        rows.push(row(
            "InfluxQL GROUP BY ×6 (sum; lower bound)",
            format!("{:.2} s", g.as_secs_f64()),
        ));
    }
    if let Some((ok, text)) = &r.candle_check {
        rows.push(check(
            "ohlcd candles = InfluxDB GROUP BY",
            text.clone(),
            "equal",
            *ok,
        ));
    }
    for p in &r.raw {
        rows.push(row(
            format!("  raw pull {} ({})", p.format, p.shape),
            format!(
                "{:.2} s, {} trades/s, {:.0} MB",
                p.elapsed.as_secs_f64(),
                thousands(nf / p.elapsed.as_secs_f64()),
                p.bytes as f64 / 1e6
            ),
        ));
    }
    let best = |format: Option<&str>| {
        r.raw
            .iter()
            .filter(|p| format.is_none_or(|f| p.format == f))
            .min_by_key(|p| p.elapsed)
    };
    for f in ["CSV", "msgpack"] {
        if let Some(p) = best(Some(f)) {
            rows.push(row(
                format!("raw pull {f}"),
                format!("{:.2} s ({})", p.elapsed.as_secs_f64(), p.shape),
            ));
        }
    }
    let fastest = best(None);
    if let Some(p) = fastest {
        rows.push(row(
            "raw pull fastest",
            format!(
                "{:.2} s ({}, {})",
                p.elapsed.as_secs_f64(),
                p.format,
                p.shape
            ),
        ));
    }
    if let Some(bf) = &r.backfill {
        let t = bf.elapsed.as_secs_f64();
        if let Some(g) = group_by {
            let x = t / g.as_secs_f64();
            rows.push(check(
                "backfill / GROUP BY ×6",
                format!("{x:.2}"),
                "≤ 0.40",
                x <= 0.40,
            ));
        }
        if let Some(p) = fastest {
            let x = t / p.elapsed.as_secs_f64();
            rows.push(check(
                "backfill / fastest raw pull",
                format!("{x:.2}"),
                "≤ 1.2",
                x <= 1.2,
            ));
        }
    }
    for (size, kb) in &r.rss {
        let main = if *size == n { " (main run)" } else { "" };
        rows.push(check(
            format!(
                "peak RSS of backfill, {} trades{main}",
                thousands(*size as f64)
            ),
            format!("{:.1} MB", mb(*kb)),
            format!("≤ {RSS_TARGET_MB:.0} MB"),
            mb(*kb) <= RSS_TARGET_MB,
        ));
    }
    if r.rss.len() >= 2 {
        let (small, large) = (r.rss[0], r.rss[r.rss.len() - 1]);
        let x = large.1 as f64 / small.1.max(1) as f64;
        rows.push(check(
            format!(
                "peak RSS ratio {} / {} trades",
                thousands(large.0 as f64),
                thousands(small.0 as f64)
            ),
            format!("{x:.2}"),
            "≤ 1.2",
            x <= 1.2,
        ));
    }
    if let Some(c) = r.caught_up {
        rows.push(row(
            "ohlcd run: start to caught up",
            format!("{:.1} s", c.as_secs_f64()),
        ));
    }
    for l in &r.latency {
        rows.push(check(
            format!("/udf/history {} countback 1000 p50 / p99", l.udf),
            format!("{:.2} / {:.2} ms ({} bars)", ms(l.p50), ms(l.p99), l.bars),
            "p50 ≤ 10 ms",
            ms(l.p50) <= 10.0,
        ));
    }
    for l in &r.latency {
        rows.push(row(
            format!("  InfluxDB on the fly {} ×1000 p50 / p99", l.udf),
            format!(
                "{:.1} / {:.1} ms ({} bars, {} requests), on-the-fly / ohlcd {}",
                ms(l.influx_p50),
                ms(l.influx_p99),
                l.influx_bars,
                l.influx_n,
                times_str(l.influx_p50.as_secs_f64() / l.p50.as_secs_f64().max(1e-9))
            ),
        ));
    }
    if let Some(l) = &r.h1_30d {
        let x = l.influx_p50.as_secs_f64() / l.p50.as_secs_f64().max(1e-9);
        rows.push(check(
            format!(
                "on-the-fly / ohlcd for 1h × {}d ({} bars), p50",
                b.args.days.min(30),
                l.bars
            ),
            format!(
                "{} ({:.1} ms vs {:.2} ms)",
                times_str(x),
                ms(l.influx_p50),
                ms(l.p50)
            ),
            "≥ 50",
            x >= 50.0,
        ));
    }
    if let Some(i) = &r.ingest {
        let api = i.trades as f64 / i.api.as_secs_f64();
        let write = i.trades as f64 / i.write.as_secs_f64();
        rows.push(row(
            format!(
                "ingest POST /api/trades, batches of {}",
                thousands(i.batch as f64)
            ),
            format!("{} trades/s", thousands(api)),
        ));
        rows.push(row(
            format!(
                "InfluxDB /write line protocol, batches of {}",
                thousands(i.batch as f64)
            ),
            format!("{} trades/s", thousands(write)),
        ));
        let x = api / write;
        rows.push(check(
            "ingest API / InfluxDB /write",
            format!("{x:.2}"),
            "≥ 0.8",
            x >= 0.8,
        ));
    }
    for f in &b.failures {
        rows.push(Row {
            metric: "FAILED".to_string(),
            value: f.clone(),
            target: String::new(),
            status: Status::NotMet,
        });
    }
    rows
}

fn status_text(s: Status) -> &'static str {
    match s {
        Status::Info => "",
        Status::Met => "met",
        Status::NotMet => "NOT met",
    }
}

fn print_table(rows: &[Row]) {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["metric", "value", "target", "status"]);
    for r in rows {
        table.add_row([
            r.metric.as_str(),
            r.value.as_str(),
            r.target.as_str(),
            status_text(r.status),
        ]);
    }
    println!("{table}");
}

fn markdown(header: &str, rows: &[Row], b: &Bench) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut md = String::from(header);
    md.push_str("\n| metric | value | target | status |\n| --- | --- | --- | --- |\n");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            esc(r.metric.trim_start()),
            esc(&r.value),
            esc(&r.target),
            status_text(r.status)
        );
    }
    md.push_str(
        "\nGROUP BY ×6 is a lower bound for InfluxDB doing the job: it computes \
         open/high/low/close/volume/count only, while ohlcd also computes quote_volume and \
         buy_volume and writes all candles back. Raw pulls and GROUP BY read chunked \
         (chunk_size 10000, epoch=ns) and discard the answer. Backfill time is the wall time \
         of the `ohlcd backfill` process (start-up, SQLite, reads, writes).\n",
    );
    if !b.notes.is_empty() {
        md.push_str("\nNotes:\n\n");
        for n in &b.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md.push_str("\nWhere ohlcd misbehaved or disagreed with InfluxDB: ");
    if b.issues.is_empty() {
        md.push_str("nowhere.\n");
    } else {
        md.push('\n');
        md.push('\n');
        for i in &b.issues {
            let _ = writeln!(md, "- {i}");
        }
    }
    md
}

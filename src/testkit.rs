//! Test and benchmark support, not used by the daemon: a throwaway `influxd`
//! (1.x) or InfluxDB 3 Core server on free ports in a scratch directory,
//! killed and removed on drop, and a throwaway PostgreSQL ([`postgres`]).
//!
//! It lives in the library so the integration tests, the bad-input corpus and
//! `ohlcd-bench` share one fixture instead of three copies. It needs nothing
//! beyond `std` (no async runtime, no HTTP client): starting is blocking, so
//! async tests call [`Influxd::start`] through `spawn_blocking`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod postgres;

/// How long influxd may take to answer `/ping` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports tried when another process took ours between probing and binding.
const PORT_ATTEMPTS: usize = 3;

/// A local TCP port nobody listens on right now (it may be taken again before
/// it is used, which [`Influxd::launch`] retries).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A directory under [`std::env::temp_dir`], removed with its contents on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `<tmp>/<prefix>-<pid>-<n>-<nanos>`, unique within and across
    /// processes.
    pub fn new(prefix: &str) -> io::Result<ScratchDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("{prefix}-{}-{n}-{nanos:09}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(ScratchDir(dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {e}", dir.display()),
                    ));
                }
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which InfluxDB an [`Influxd`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Server {
    /// Debian's `influxd` 1.x, started from a config file.
    #[default]
    V1,
    /// InfluxDB 3 Core (`influxdb3 serve`, file object store, no auth), the
    /// binary found by [`influxdb3_binary`].
    V3,
}

/// How to start an [`Influxd`].
#[derive(Debug, Clone, Copy, Default)]
pub struct InfluxdOptions {
    /// Which server generation to start.
    pub server: Server,
    /// Turn on authentication (no users yet: the first may be created without
    /// credentials). 1.x only.
    pub auth: bool,
    /// How often the retention service drops expired shard groups, seconds
    /// (1.x only; `None`: influxd's default, 30 minutes). Tests that watch a
    /// retention policy really expire data set it to 1.
    pub retention_check_secs: Option<u32>,
    /// Seconds without writes after which a shard's in-memory cache is
    /// written to a TSM file (1.x only; `None`: influxd's default, 10
    /// minutes). The bench sets it so freshly generated trades are read from
    /// TSM files, as history is.
    pub cache_snapshot_cold_secs: Option<u32>,
    /// Most values a tag key may have per measurement (1.x only; `None`:
    /// influxd's default, 100,000). A write that would add one more is
    /// refused: a real server refusing the points of one new symbol.
    pub max_values_per_tag: Option<u32>,
    /// Called on the `influxd` command before every spawn (start and restart),
    /// e.g. to ask for a parent-death signal.
    pub configure: Option<fn(&mut Command)>,
}

/// A throwaway influxd: its own ports, data and log in a scratch directory;
/// killed (thawed first if frozen) and its directory removed on drop.
#[derive(Debug)]
pub struct Influxd {
    child: Child,
    dir: ScratchDir,
    options: InfluxdOptions,
    frozen: AtomicBool,
    /// Base URL of its HTTP API, e.g. `http://127.0.0.1:41234`.
    pub url: String,
}

impl Influxd {
    /// Starts influxd and waits until `/ping` answers; panics with the reason
    /// (test convenience).
    pub fn start() -> Influxd {
        Self::launch(InfluxdOptions::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Influxd::start`] with authentication enabled (no users yet).
    pub fn start_with_auth() -> Influxd {
        Self::launch(InfluxdOptions {
            auth: true,
            ..InfluxdOptions::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts influxd on free ports and waits until `/ping` answers; a lost
    /// port race is retried on other ports. The error says what went wrong,
    /// with the tail of influxd's log.
    pub fn launch(options: InfluxdOptions) -> io::Result<Influxd> {
        let dir = ScratchDir::new("ohlcd-influxd")?;
        let log = dir.path().join("influxd.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let http_port = free_port()?;
            let rpc_port = free_port()?;
            std::fs::write(
                dir.path().join("influxdb.conf"),
                config(dir.path(), http_port, rpc_port, &options),
            )?;
            let _ = std::fs::remove_file(&log);
            let mut child = spawn(dir.path(), options, http_port)?;
            let url = format!("http://127.0.0.1:{http_port}");
            match wait_ready(&mut child, &url, &log) {
                Ok(()) => {
                    return Ok(Influxd {
                        child,
                        dir,
                        options,
                        frozen: AtomicBool::new(false),
                        url,
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if attempt >= PORT_ATTEMPTS
                        || !read_lossy(&log).contains("address already in use")
                    {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Starts the given server generation and waits until `/ping` answers.
    pub fn start_server(server: Server) -> io::Result<Influxd> {
        Self::launch(InfluxdOptions {
            server,
            ..InfluxdOptions::default()
        })
    }

    /// Which server generation this is.
    pub fn server(&self) -> Server {
        self.options.server
    }

    /// Process id of the running influxd.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The scratch directory (config, data, `influxd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// influxd's log so far (its stderr).
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("influxd.log"))
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} influxd");
    }

    /// Freezes influxd (SIGSTOP): connections are accepted but never answered.
    /// Returns once every thread of it has stopped: `kill` only queues the
    /// signal, and on a loaded machine a thread still running could answer
    /// one more request.
    pub fn freeze(&self) {
        self.signal("-STOP");
        self.frozen.store(true, Ordering::SeqCst);
        let tasks = PathBuf::from(format!("/proc/{}/task", self.child.id()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !all_stopped(&tasks) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Thaws a frozen influxd (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Stops influxd (SIGKILL); its data stays for [`Influxd::restart`].
    pub fn stop(&mut self) {
        if self.frozen.swap(false, Ordering::SeqCst) {
            self.signal("-CONT");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// [`Influxd::restart`] with other options (its generation stays).
    pub fn restart_with(&mut self, options: InfluxdOptions) {
        self.options = InfluxdOptions {
            server: self.options.server,
            ..options
        };
        let http_port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the URL ends in a port");
        let rpc_port = free_port().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            self.dir.path().join("influxdb.conf"),
            config(self.dir.path(), http_port, rpc_port, &self.options),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.restart();
    }

    /// Starts influxd again on the same ports and data; panics if it does not
    /// come up (test convenience).
    pub fn restart(&mut self) {
        self.relaunch().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`Influxd::restart`] that says why instead of panicking: stops influxd
    /// if it runs, starts it on the same ports and data, waits for `/ping`.
    pub fn relaunch(&mut self) -> io::Result<()> {
        self.stop();
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the URL ends in a port");
        self.child = spawn(self.dir.path(), self.options, port)?;
        let log = self.dir.path().join("influxd.log");
        wait_ready(&mut self.child, &self.url, &log)
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `/ping` at `url` answers 204, failing early if influxd exits;
/// errors carry the tail of its log.
fn wait_ready(child: &mut Child, url: &str, log: &Path) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if ping(url) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "influxd exited at start-up ({status}); log:\n{}",
                tail(&read_lossy(log), 10)
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "influxd did not answer /ping within {}s; log:\n{}",
                READY_TIMEOUT.as_secs(),
                tail(&read_lossy(log), 10)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether every thread under `/proc/<pid>/task` is stopped (state `T`).
fn all_stopped(tasks: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return true;
    };
    entries.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // `pid (comm) state …`: the state follows the last ')'.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn config(dir: &Path, http_port: u16, rpc_port: u16, options: &InfluxdOptions) -> String {
    let d = dir.display();
    let auth = if options.auth {
        "  auth-enabled = true\n"
    } else {
        ""
    };
    let retention = options
        .retention_check_secs
        .map(|s| format!("[retention]\n  check-interval = \"{s}s\"\n"))
        .unwrap_or_default();
    let snapshot = options
        .cache_snapshot_cold_secs
        .map(|s| format!("  cache-snapshot-write-cold-duration = \"{s}s\"\n"))
        .unwrap_or_default();
    let values = options
        .max_values_per_tag
        .map(|n| format!("  max-values-per-tag = {n}\n"))
        .unwrap_or_default();
    format!(
        r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
{snapshot}{values}[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
{auth}{retention}[continuous_queries]
  enabled = false
"#
    )
}

fn spawn(dir: &Path, options: InfluxdOptions, http_port: u16) -> io::Result<Child> {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("influxd.log"))?;
    let (mut cmd, name) = match options.server {
        Server::V1 => {
            let mut cmd = Command::new("influxd");
            cmd.arg("-config")
                .arg(dir.join("influxdb.conf"))
                .stdout(Stdio::null());
            (cmd, "influxd")
        }
        Server::V3 => {
            let bin = influxdb3_binary().map_err(io::Error::other)?;
            let mut cmd = Command::new(bin);
            cmd.args(["serve", "--node-id", "n1", "--object-store", "file"])
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args(["--http-bind", &format!("127.0.0.1:{http_port}")])
                .arg("--without-auth")
                .env("LOG_FILTER", "warn")
                .stdout(log.try_clone()?);
            (cmd, "influxdb3")
        }
    };
    cmd.stdin(Stdio::null()).stderr(log);
    if let Some(configure) = options.configure {
        configure(&mut cmd);
    }
    cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                e.kind(),
                "influxd not found: install InfluxDB 1.x (Debian package influxdb; scripts/test does)",
            )
        } else {
            io::Error::new(e.kind(), format!("cannot start {name}: {e}"))
        }
    })
}

/// The InfluxDB 3 Core server binary: `$OHLCD_INFLUXDB3`, else the one
/// `../shared/influxdb3/install` (beside this checkout) unpacks into
/// `target/influxdb3`. Looked up once per process; the error says why there is
/// none.
pub fn influxdb3_binary() -> Result<PathBuf, String> {
    static BIN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("OHLCD_INFLUXDB3")
            && !p.is_empty()
        {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("OHLCD_INFLUXDB3={} is not a file", p.display()))
            };
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let install = manifest.join("../shared/influxdb3/install");
        if !install.is_file() {
            return Err(format!(
                "neither OHLCD_INFLUXDB3 nor {} exists",
                install.display()
            ));
        }
        let out = Command::new(&install)
            .arg(manifest.join("target/influxdb3"))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", install.display()))?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || path.is_empty() {
            return Err(format!("{} failed ({})", install.display(), out.status));
        }
        Ok(PathBuf::from(path))
    })
    .clone()
}

/// True if an HTTP server at `url` (`http://host:port`) answers `GET /ping`
/// with a success (1.x says 204, 3.x 200 with a JSON body).
fn ping(url: &str) -> bool {
    let addr = url.trim_start_matches("http://");
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = String::new();
    s.write_all(b"GET /ping HTTP/1.0\r\n\r\n").is_ok()
        && s.read_to_string(&mut buf).is_ok()
        && buf
            .split_whitespace()
            .nth(1)
            .is_some_and(|code| code.starts_with('2'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_are_distinct_and_removed_on_drop() {
        let a = ScratchDir::new("ohlcd-testkit").unwrap();
        let b = ScratchDir::new("ohlcd-testkit").unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), "x").unwrap();
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
        assert!(b.path().is_dir());
    }

    #[test]
    fn the_config_binds_only_loopback_and_enables_auth_on_request() {
        let auth = InfluxdOptions {
            auth: true,
            ..InfluxdOptions::default()
        };
        let c = config(Path::new("/x"), 1, 2, &auth);
        assert!(c.contains("bind-address = \"127.0.0.1:1\""));
        assert!(c.contains("bind-address = \"127.0.0.1:2\""));
        assert!(c.contains("auth-enabled = true"));
        let plain = config(Path::new("/x"), 1, 2, &InfluxdOptions::default());
        assert!(!plain.contains("auth") && !plain.contains("[retention]"));
    }

    #[test]
    fn the_retention_check_interval_is_set_on_request() {
        let fast = InfluxdOptions {
            retention_check_secs: Some(1),
            ..InfluxdOptions::default()
        };
        let c = config(Path::new("/x"), 1, 2, &fast);
        assert!(
            c.contains("[retention]\n  check-interval = \"1s\"\n"),
            "{c}"
        );
    }
}

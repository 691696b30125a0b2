//! A throwaway PostgreSQL for tests: a cluster made with `initdb` in a
//! scratch directory, `postgres` on a free port (its socket in that directory
//! too), one fresh database per [`TestPostgres`]. PostgreSQL refuses to run
//! as root, so under root (CI) the cluster runs as an unprivileged user
//! created here if missing. One cluster serves every test of a process that
//! runs at the same time; it stops when the last [`TestPostgres`] is dropped
//! (also when a test panics), and the next one starts a new cluster. Like the
//! rest of [`super`], std only and blocking: async tests start it through
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{ScratchDir, free_port};

/// The OS user the cluster runs as when the tests run as root.
const PG_USER: &str = "ohlcd-test-pg";

/// The running cluster shared by the tests that hold a [`TestPostgres`].
static CLUSTER: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());

#[derive(Debug)]
struct Cluster {
    /// Replaced by [`TestPostgres::restart`].
    postmaster: Mutex<Child>,
    bin: PathBuf,
    port: u16,
    next_db: AtomicU32,
    /// Holds the data directory, socket and log (removed after the child).
    dir: ScratchDir,
}

/// A fresh database on the shared throwaway cluster.
#[derive(Debug)]
pub struct TestPostgres {
    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub url: String,
    cluster: Arc<Cluster>,
}

impl TestPostgres {
    /// A new, empty database (starting the cluster if none runs). Blocking:
    /// call it from `spawn_blocking` in async tests.
    pub fn start() -> TestPostgres {
        let cluster = {
            let mut shared = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
            match shared.upgrade() {
                Some(c) => c,
                None => {
                    let c = Arc::new(Cluster::start());
                    *shared = Arc::downgrade(&c);
                    c
                }
            }
        };
        let name = format!("test{}", cluster.next_db.fetch_add(1, Ordering::SeqCst));
        let out = Command::new(cluster.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string()])
            .args(["-U", "postgres", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestPostgres {
            url: format!("postgres://postgres@127.0.0.1:{}/{name}", cluster.port),
            cluster,
        }
    }

    /// Stops the whole cluster in `mode` (`pg_ctl stop -m fast|immediate`)
    /// and starts it again on the same data and port, as `pg_ctl restart`
    /// does, but with the new postmaster a child of this process, so it is
    /// stopped on drop like the first. An immediate stop skips the shutdown
    /// checkpoint: the start runs crash recovery. Every database of the
    /// cluster goes down with it. Blocking.
    pub fn restart(&self, mode: StopMode) -> Result<(), String> {
        self.cluster.restart(mode)
    }
}

/// How [`TestPostgres::restart`] stops the server (`pg_ctl stop -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnects clients, rolls back their transactions, checkpoints.
    Fast,
    /// Kills every server process at once, no checkpoint (like a crash).
    Immediate,
}

impl StopMode {
    /// The `pg_ctl -m` value.
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// The newest installed PostgreSQL's binaries (Debian keeps them out of PATH).
fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): scripts/test installs it, or apt-get install postgresql")
    })
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Creates [`PG_USER`] if missing (another test binary may race us: the
/// check after `useradd` decides).
fn ensure_pg_user() {
    let exists = || {
        Command::new("id")
            .args(["-u", PG_USER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !exists() {
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(PG_USER)
            .status();
        assert!(exists(), "could not create the OS user {PG_USER}");
    }
}

/// `program` run as the cluster's user: as is, or (as root) through
/// `setpriv`, which execs it in place, so the child's pid is the program's.
fn as_pg_user(program: &Path) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={PG_USER}"),
            &format!("--regid={PG_USER}"),
            "--clear-groups",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl Cluster {
    fn start() -> Cluster {
        let bin = pg_bin_dir();
        let dir = ScratchDir::new("ohlcd-postgres").unwrap();
        let root = running_as_root();
        if root {
            ensure_pg_user();
            let ok = Command::new("chown")
                .arg(format!("{PG_USER}:{PG_USER}"))
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown {}", dir.path().display());
        }
        let data = dir.path().join("data");
        let out = as_pg_user(&bin.join("initdb"))
            .current_dir(dir.path())
            .args(["-D", data.to_str().unwrap()])
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"])
            .arg("--no-sync")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port().unwrap();
        let log = dir.path().join("postgres.log");
        std::fs::File::create(&log).unwrap();
        if root {
            let _ = Command::new("chown")
                .arg(format!("{PG_USER}:{PG_USER}"))
                .arg(&log)
                .status();
        }
        let postmaster = spawn_postmaster(&bin, dir.path(), port).unwrap();
        let cluster = Cluster {
            postmaster: Mutex::new(postmaster),
            bin,
            port,
            next_db: AtomicU32::new(0),
            dir,
        };
        cluster.wait_ready().unwrap_or_else(|e| panic!("{e}"));
        cluster
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            let log = || std::fs::read_to_string(self.dir.path().join("postgres.log"));
            if let Ok(Some(status)) = self.postmaster().try_wait() {
                return Err(format!("postgres exited with {status}: {:?}", log()));
            }
            if Instant::now() > deadline {
                return Err(format!("postgres not ready in 60 s: {:?}", log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn postmaster(&self) -> std::sync::MutexGuard<'_, Child> {
        self.postmaster.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn restart(&self, mode: StopMode) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let out = as_pg_user(&self.bin.join("pg_ctl"))
            .current_dir(self.dir.path())
            .args(["stop", "-w", "-t", "60", "-m", mode.as_str(), "-D"])
            .arg(&data)
            .output()
            .map_err(|e| format!("pg_ctl stop: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_ctl stop -m {}: {}{}",
                mode.as_str(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        {
            let mut postmaster = self.postmaster();
            // pg_ctl returns once the pid file is gone; reap the old postmaster.
            let _ = postmaster.wait();
            *postmaster = spawn_postmaster(&self.bin, self.dir.path(), self.port)
                .map_err(|e| format!("cannot start postgres again: {e}"))?;
        }
        self.wait_ready()
    }
}

/// Starts `postgres` on the cluster in `dir` (data in `dir/data`, socket in
/// `dir`, log appended to `dir/postgres.log`).
fn spawn_postmaster(bin: &Path, dir: &Path, port: u16) -> std::io::Result<Child> {
    let log = std::fs::File::options()
        .append(true)
        .open(dir.join("postgres.log"))?;
    as_pg_user(&bin.join("postgres"))
        .current_dir(dir)
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string()])
        .arg("-k")
        .arg(dir)
        // Throwaway data: durability off, for speed. A database that must
        // survive TestPostgres::restart sets synchronous_commit back on.
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let postmaster = self.postmaster.get_mut().unwrap_or_else(|e| e.into_inner());
        // Immediate shutdown: the data is thrown away anyway.
        let _ = Command::new("kill")
            .args(["-QUIT", &postmaster.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = postmaster.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = postmaster.kill();
        let _ = postmaster.wait();
    }
}

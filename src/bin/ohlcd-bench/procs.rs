//! Child processes of the bench (ohlcd, influxd) and what `/proc` tells about
//! them: peak RSS, CPU time, load.
//!
//! Every child asks the kernel to be killed when the bench goes away
//! (`PR_SET_PDEATHSIG`), and [`Proc`] kills its child on drop, so no child
//! outlives the bench, however it ends.

use std::ffi::{c_int, c_ulong};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

unsafe extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
}

const PR_SET_PDEATHSIG: c_int = 1;
const SIGKILL: c_int = 9;
const SIGTERM: c_int = 15;

/// Asks for `cmd`'s process to be SIGKILLed when its parent thread dies. The
/// bench runs a single-threaded runtime, so that thread is the bench itself.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong);
            Ok(())
        });
    }
}

/// A child process with stdout and stderr in files; killed on drop.
pub(crate) struct Proc {
    /// Name used in messages and file names.
    pub name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
    status: Option<ExitStatus>,
}

/// How a measured child ended.
pub(crate) struct Measured {
    pub status: ExitStatus,
    pub elapsed: Duration,
    /// Largest VmHWM seen, kB.
    pub peak_kb: u64,
    /// User + system CPU time, seconds (read from the exited, not yet
    /// reaped process).
    pub cpu_secs: f64,
}

impl Proc {
    /// Spawns `cmd` with stdout/stderr in `dir/<name>.stdout|stderr`.
    pub(crate) fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc> {
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
        die_with_parent(&mut cmd);
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

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    pub(crate) fn poll(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("cannot wait for {}", self.name))?;
        }
        Ok(self.status)
    }

    pub(crate) fn stdout_text(&self) -> String {
        read_lossy(&self.stdout)
    }

    pub(crate) fn stderr_text(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The last `n` lines of stderr, indented, for error messages.
    pub(crate) fn stderr_tail(&self, n: usize) -> String {
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

    /// Waits for the exit, sampling VmHWM and CPU time every 20 ms (the last
    /// CPU sample is the exited process's total); kills after `timeout`.
    pub(crate) async fn wait_measured(&mut self, timeout: Duration) -> Result<Measured> {
        let mut peak_kb = 0;
        let mut ticks = 0;
        loop {
            if let Some(kb) = vm_hwm_kb(self.pid()) {
                peak_kb = peak_kb.max(kb);
            }
            ticks = cpu_ticks(self.pid()).unwrap_or(ticks);
            if let Some(status) = self.poll()? {
                return Ok(Measured {
                    status,
                    elapsed: self.started.elapsed(),
                    peak_kb,
                    cpu_secs: ticks as f64 / TICKS_PER_SEC,
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
    pub(crate) async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
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

    pub(crate) fn kill(&mut self) {
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

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `text` without ANSI colour sequences (`ESC [ … m`).
pub(crate) fn strip_ansi(text: &str) -> String {
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

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmHWM` (peak resident set).
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// VmHWM (peak resident set) of a live process, kB.
pub(crate) fn vm_hwm_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM")
}

/// VmRSS (current resident set) of a live process, kB.
pub(crate) fn vm_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ: 100 on
/// every Linux architecture we run on).
pub(crate) const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU time of a process, clock ticks ([`TICKS_PER_SEC`]).
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `/proc/loadavg`'s three load averages.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

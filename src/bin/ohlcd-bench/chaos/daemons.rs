//! The three `ohlcd run` daemons: started on fixed ports, SIGKILLed and
//! restarted by the fault injector, watched for any other way of ending
//! (an exit the harness did not cause fails the run), their peak RSS
//! sampled over every incarnation.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::Mutex;

use crate::procs::{Proc, strip_ansi, vm_hwm_kb};
use crate::say;

/// One daemon's place: its port stays, its process comes and goes.
pub(super) struct Slot {
    /// `a`, `b`, `c`.
    pub name: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    state: Mutex<SlotState>,
    /// Held over a whole kill–wait–restart, so faults on one daemon queue.
    pub fault_lock: Mutex<()>,
}

#[derive(Default)]
struct SlotState {
    proc: Option<Proc>,
    /// Processes started in this slot so far.
    starts: u32,
    /// Largest VmHWM of any of them, kB.
    peak_kb: u64,
    /// Exits the harness did not cause: what it saw.
    deaths: Vec<String>,
    /// Logs of every incarnation, for the panic scan.
    logs: Vec<PathBuf>,
}

/// Every daemon of the run.
pub(super) struct Daemons {
    pub slots: Vec<Slot>,
    ohlcd: PathBuf,
    env: Vec<(String, String)>,
    scratch: PathBuf,
}

/// What the daemons did over the run.
#[derive(Debug, Default)]
pub(super) struct DaemonReport {
    /// (slot, processes started, peak RSS kB).
    pub slots: Vec<(String, u32, u64)>,
    /// Exits the harness did not cause.
    pub deaths: Vec<String>,
    /// Log lines with "panicked".
    pub panics: Vec<String>,
    /// Daemons that did not stop cleanly on the final SIGTERM.
    pub unclean_stops: Vec<String>,
}

impl Daemons {
    /// `n` slots on free ports; nothing started yet.
    pub(super) fn new(
        n: usize,
        ohlcd: PathBuf,
        env: Vec<(String, String)>,
        scratch: PathBuf,
    ) -> Result<Daemons> {
        let slots = (0..n)
            .map(|i| {
                let port = ohlcd::testkit::free_port()?;
                Ok(Slot {
                    name: ((b'a' + i as u8) as char).to_string(),
                    url: format!("http://127.0.0.1:{port}"),
                    port,
                    state: Mutex::new(SlotState::default()),
                    fault_lock: Mutex::new(()),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Daemons {
            slots,
            ohlcd,
            env,
            scratch,
        })
    }

    /// The base URLs, one per slot.
    pub(super) fn urls(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.url.clone()).collect()
    }

    /// Starts slot `i`'s daemon (if none runs there).
    pub(super) async fn start(&self, i: usize) -> Result<()> {
        let slot = &self.slots[i];
        let mut state = slot.state.lock().await;
        if state.proc.is_some() {
            return Ok(());
        }
        state.starts += 1;
        let mut cmd = Command::new(&self.ohlcd);
        cmd.arg("run")
            .env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{}", slot.port))
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let name = format!("daemon-{}-{}", slot.name, state.starts);
        let proc = Proc::spawn(&name, cmd, &self.scratch)?;
        state.logs.push(self.scratch.join(format!("{name}.stderr")));
        state.proc = Some(proc);
        Ok(())
    }

    /// SIGKILLs slot `i`'s daemon; false if none was running.
    pub(super) async fn kill(&self, i: usize) -> bool {
        let mut state = self.slots[i].state.lock().await;
        let Some(mut proc) = state.proc.take() else {
            return false;
        };
        Self::sample(&mut state, &proc);
        // An exit just before the kill was not the harness's doing.
        match proc.poll() {
            Ok(Some(status)) => {
                let seen = describe_exit(&proc, status);
                state.deaths.push(seen);
            }
            _ => proc.kill(),
        }
        true
    }

    fn sample(state: &mut SlotState, proc: &Proc) {
        if let Some(kb) = vm_hwm_kb(proc.pid()) {
            state.peak_kb = state.peak_kb.max(kb);
        }
    }

    /// One look at every daemon: peak RSS sampled; a daemon that exited
    /// without the harness's hand is recorded and started again.
    pub(super) async fn watch_once(&self) {
        for (i, slot) in self.slots.iter().enumerate() {
            let died = {
                let mut state = slot.state.lock().await;
                let Some(mut proc) = state.proc.take() else {
                    continue;
                };
                Self::sample(&mut state, &proc);
                match proc.poll() {
                    Ok(Some(status)) => {
                        let seen = describe_exit(&proc, status);
                        say!("daemon {} died on its own: {seen}", slot.name);
                        state.deaths.push(seen);
                        true
                    }
                    _ => {
                        state.proc = Some(proc);
                        false
                    }
                }
            };
            if died && let Err(e) = self.start(i).await {
                say!("cannot start daemon {} again: {e:#}", slot.name);
            }
        }
    }

    /// Waits until every daemon answers `/healthz` with 200, at most `limit`.
    pub(super) async fn wait_healthy(&self, http: &reqwest::Client, limit: Duration) -> Result<()> {
        let started = Instant::now();
        for slot in &self.slots {
            loop {
                self.watch_once().await;
                let ok = http
                    .get(format!("{}/healthz", slot.url))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                anyhow::ensure!(
                    started.elapsed() < limit,
                    "daemon {} not healthy within {}s",
                    slot.name,
                    limit.as_secs()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    /// SIGTERM to every daemon; each must exit 0 within `grace`. Then the
    /// report of the whole run.
    pub(super) async fn stop_all(&self, grace: Duration) -> DaemonReport {
        let mut report = DaemonReport::default();
        for slot in &self.slots {
            let mut state = slot.state.lock().await;
            if let Some(mut proc) = state.proc.take() {
                Self::sample(&mut state, &proc);
                match proc.terminate(grace).await {
                    Ok(status) if status.success() => {}
                    Ok(status) => report.unclean_stops.push(format!(
                        "daemon {} exited with {status} on SIGTERM; {}",
                        slot.name,
                        proc.stderr_tail(5)
                    )),
                    Err(e) => report
                        .unclean_stops
                        .push(format!("daemon {}: {e:#}", slot.name)),
                }
            }
            report
                .slots
                .push((slot.name.clone(), state.starts, state.peak_kb));
            report.deaths.extend(
                state
                    .deaths
                    .iter()
                    .map(|d| format!("daemon {}: {d}", slot.name)),
            );
            for log in &state.logs {
                let text = strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
                report.panics.extend(
                    text.lines()
                        .filter(|l| l.contains("panicked"))
                        .map(|l| format!("{}: {l}", log.display())),
                );
            }
        }
        report
    }
}

fn describe_exit(proc: &Proc, status: ExitStatus) -> String {
    format!(
        "{} exited with {status}; {}",
        proc.name,
        proc.stderr_tail(5)
    )
}

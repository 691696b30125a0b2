//! A thread that owns a server process (influxd, PostgreSQL) for the whole
//! run and does the blocking things to it (start, SIGKILL and restart, wait
//! until it answers) on behalf of the async harness.
//!
//! Why a thread of its own: a child asks for `PR_SET_PDEATHSIG`, which fires
//! when the *thread* that forked it exits. The runtime's blocking pool retires
//! idle threads, which would take a restarted influxd with them; this thread
//! lives until the keeper is dropped, and drops the server on it, so no
//! server outlives the harness.

use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use tokio::sync::oneshot;

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// Owns a `T` on a dedicated thread; [`Keeper::run`] runs a closure on it.
pub(super) struct Keeper<T> {
    jobs: Option<mpsc::Sender<Job<T>>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: 'static> Keeper<T> {
    /// Starts the thread and builds the value on it with `make` (blocking
    /// until it is built); the error of `make` is returned as is.
    pub(super) fn start(
        name: &str,
        make: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<Keeper<T>> {
        let (jobs, rx) = mpsc::channel::<Job<T>>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut value = match make() {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when the keeper drops its sender; `value` drops here,
                // on this thread.
                for job in rx {
                    job(&mut value);
                }
            })
            .with_context(|| format!("cannot start the {name} thread"))?;
        let keeper = Keeper {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the {name} thread ended while starting"))??;
        Ok(keeper)
    }

    /// Runs `job` on the owned value and waits (asynchronously) for its result.
    pub(super) async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        let boxed: Job<T> = Box::new(move |value| {
            let _ = tx.send(job(value));
        });
        self.jobs
            .as_ref()
            .context("keeper stopped")?
            .send(boxed)
            .map_err(|_| anyhow!("keeper thread is gone"))?;
        rx.await.map_err(|_| anyhow!("keeper thread dropped a job"))
    }
}

impl<T> Drop for Keeper<T> {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; joining waits until the
        // server it owns has been stopped.
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! `ohlcd` binary: parse the command line, hand over to the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // On a worker, not this thread: the engine consumes what the HTTP
    // connection tasks receive, and a worker runs a task it wakes next,
    // where waking this thread costs a futex round trip per chunk (a quarter
    // of a backfill's CPU went to the kernel waking threads, perf).
    runtime.block_on(async {
        match tokio::spawn(run()).await {
            Ok(code) => code,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    })
}

/// glibc gives threads that contend for malloc arenas of their own and keeps
/// freed memory in each: a 5,000-symbol backfill peaked at 85 MB resident for
/// 28 MB of heap (heaptrack). One arena (threads still have their own caches)
/// brought the peak to 44 MB at the same CPU time. `MALLOC_ARENA_MAX`, when
/// set, still decides.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

async fn run() -> std::process::ExitCode {
    let cli = ohlcd::cli::Cli::parse();
    let json = match init_logging() {
        Ok(json) => json,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match ohlcd::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what is wrong and, where we know, what to do.
            let line = ohlcd::cli::error_line(&e);
            if json {
                tracing::error!(error = %line, "stopped on an error");
            } else {
                eprintln!("error: {line}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `OHLCD_LOG` (default `ohlcd=info,warn`), as
/// plain text or, with `OHLCD_LOG_FORMAT=json`, one JSON object per line
/// with the event's fields at the top level next to `timestamp`, `level`,
/// `target` and `message` (what a log shipper indexes). Returns whether the
/// format is JSON.
fn init_logging() -> Result<bool, String> {
    let filter =
        EnvFilter::try_from_env("OHLCD_LOG").unwrap_or_else(|_| EnvFilter::new("ohlcd=info,warn"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("OHLCD_LOG_FORMAT").as_deref() {
        Ok("json") => {
            log.json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .init();
            Ok(true)
        }
        Ok("plain" | "") | Err(std::env::VarError::NotPresent) => {
            log.init();
            Ok(false)
        }
        Ok(other) => Err(format!(
            "OHLCD_LOG_FORMAT is {other:?}; it must be `plain` (the default) or `json`"
        )),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err("OHLCD_LOG_FORMAT must be `plain` (the default) or `json`".to_string())
        }
    }
}

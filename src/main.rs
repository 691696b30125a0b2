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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("OHLCD_LOG")
                .unwrap_or_else(|_| EnvFilter::new("ohlcd=info,warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match ohlcd::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what is wrong and, where we know, what to do.
            eprintln!("error: {}", ohlcd::cli::error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

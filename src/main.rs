//! `ohlcd` binary: parse the command line, hand over to the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
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

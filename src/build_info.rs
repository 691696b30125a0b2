//! What this binary is: its version and the git commit it was built from
//! (set by build.rs; "unknown" when built outside a git checkout). Shown by
//! `ohlcd --version`, `GET /healthz` and the `ohlcd_build_info` metric.

/// The package version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short git commit, e.g. `ca60a3a`, or `unknown`.
pub const COMMIT: &str = env!("OHLCD_GIT_COMMIT");

/// What `ohlcd --version` prints after the name: `0.1.0 (commit ca60a3a)`.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OHLCD_GIT_COMMIT"),
    ")"
);

//! Embeds the chart page's library when `web/node_modules` has it (`npm ci` in
//! `web/`, which scripts/demo and scripts/test run). Without it the binary
//! still builds, and its chart page says how to get the library.
//!
//! Also records the git commit the binary is built from, as
//! `OHLCD_GIT_COMMIT` (`ohlcd --version`, `/healthz`, `ohlcd_build_info`):
//! `OHLCD_GIT_COMMIT` from the build's environment when set (a packager
//! building from a tarball), else `git rev-parse --short HEAD`, else
//! "unknown" (no git, or not a checkout).

use std::path::Path;
use std::process::Command;

fn main() {
    let lib =
        "web/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js";
    println!("cargo::rustc-check-cfg=cfg(embedded_chart_lib)");
    println!("cargo::rerun-if-changed={lib}");
    println!("cargo::rerun-if-changed=web/node_modules/lightweight-charts/package.json");
    if Path::new(lib).exists() {
        println!("cargo::rustc-cfg=embedded_chart_lib");
    } else {
        println!(
            "cargo::warning=web/node_modules is missing: the chart page is embedded without its library; run `npm ci` in web/ and rebuild"
        );
    }
    git_commit();
}

fn git_commit() {
    println!("cargo::rerun-if-env-changed=OHLCD_GIT_COMMIT");
    let commit = match std::env::var("OHLCD_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ if !own_checkout() => "unknown".to_string(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself (a checkout), the branch
            // it points to (a commit), and packed refs. Paths from git, so a
            // worktree (where .git is a file) works too. Only paths that
            // exist: cargo reruns a script whose watched file is missing on
            // every build. A packed branch (a fresh clone) has no file of its
            // own until its next commit writes one: its directory is watched
            // until then.
            for file in ["HEAD", "packed-refs"] {
                if let Some(path) = git(&["rev-parse", "--git-path", file])
                    && Path::new(&path).exists()
                {
                    println!("cargo::rerun-if-changed={path}");
                }
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
                && let Some(path) = git(&["rev-parse", "--git-path", &branch])
                && let Some(refs) = git(&["rev-parse", "--git-path", "refs/heads"])
            {
                let watched = Path::new(&path)
                    .ancestors()
                    .take_while(|p| p.starts_with(&refs))
                    .find(|p| p.exists());
                if let Some(watched) = watched {
                    println!("cargo::rerun-if-changed={}", watched.display());
                }
            }
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo::rustc-env=OHLCD_GIT_COMMIT={commit}");
}

/// True if this package is the top of a git work tree: a tarball unpacked
/// inside some other repository must not take that repository's commit.
fn own_checkout() -> bool {
    let top = git(&["rev-parse", "--show-toplevel"]).map(std::path::PathBuf::from);
    let here = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    match (top, here) {
        (Some(top), Some(here)) => top.canonicalize().ok() == here.canonicalize().ok(),
        _ => false,
    }
}

/// The trimmed output of a successful `git` command; `None` when git is
/// missing, fails, or prints nothing.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

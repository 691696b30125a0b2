//! The chaos run's report: the verdict, check by check, and the figures
//! behind it (faults of each kind, trades, retries, candles checked).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::Options;
use super::daemons::DaemonReport;
use super::faults::Kind;
use super::load::LoadStats;
use super::verify::{DataFindings, Finding, TableFindings};
use crate::report::{mb, thousands};

/// How settling went.
#[derive(Debug)]
pub(super) struct Settle {
    /// Seconds from the end of the load to the verdict.
    pub secs: f64,
    /// Rounds of the data check (a mismatch is checked again after the next
    /// lookback, until the settle limit).
    pub checks: u32,
    /// Mismatches of the first data check.
    pub first_mismatches: Option<u64>,
    /// Why the system did not settle in time, if it did not.
    pub unsettled: Option<String>,
    /// Seconds after the load until every daemon's `/healthz` said 200, or
    /// why not.
    pub healthy: Result<f64, String>,
}

impl Default for Settle {
    fn default() -> Settle {
        Settle {
            secs: 0.0,
            checks: 0,
            first_mismatches: None,
            unsettled: None,
            healthy: Err("not checked".into()),
        }
    }
}

/// One line of the report: a check (with a result) or a figure.
pub(super) struct Row {
    pub name: String,
    pub value: String,
    /// `Some(passed)` for a check.
    pub check: Option<bool>,
}

/// Everything the report is made of.
pub(super) struct Verdict<'a> {
    pub opts: &'a Options,
    pub ohlcd_version: &'a str,
    pub symbols: usize,
    pub load: &'a LoadStats,
    pub load_secs: f64,
    pub faults: Vec<(Kind, u64)>,
    pub fault_errors: Vec<String>,
    pub proxy_resets: u64,
    pub proxy_connections: u64,
    pub seeded: u64,
    pub data: Option<&'a DataFindings>,
    pub table: &'a TableFindings,
    pub daemons: &'a DaemonReport,
    pub settle: &'a Settle,
    /// Seconds the daemons took to materialize the history, before the faults.
    pub catch_up_secs: f64,
    pub total_secs: f64,
}

fn n(x: u64) -> String {
    thousands(x as f64)
}

fn finding(f: &Finding, what: &str) -> String {
    if f.wrong == 0 {
        format!("{} {what} checked", n(f.checked))
    } else {
        format!(
            "{} of {} {what} wrong, e.g. {}",
            n(f.wrong),
            n(f.checked),
            f.examples.join("; ")
        )
    }
}

impl Verdict<'_> {
    /// The rows, and whether every check passed.
    pub(super) fn rows(&self) -> (Vec<Row>, bool) {
        let mut rows = Vec::new();
        let check = |rows: &mut Vec<Row>, name: &str, ok: bool, value: String| {
            rows.push(Row {
                name: name.to_string(),
                value,
                check: Some(ok),
            })
        };
        let figure = |rows: &mut Vec<Row>, name: &str, value: String| {
            rows.push(Row {
                name: name.to_string(),
                value,
                check: None,
            })
        };
        let l = self.load;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

        // The verdict.
        check(
            &mut rows,
            "the system settled after the faults",
            self.settle.unsettled.is_none() && self.data.is_some(),
            match &self.settle.unsettled {
                None => format!(
                    "in {:.0} s; data checked {} time(s), {} mismatches at the first check",
                    self.settle.secs,
                    self.settle.checks,
                    self.settle.first_mismatches.unwrap_or(0)
                ),
                Some(why) => format!("not within {} s: {why}", self.opts.settle_secs),
            },
        );
        check(
            &mut rows,
            "every daemon healthy again (/healthz 200)",
            self.settle.healthy.is_ok(),
            match &self.settle.healthy {
                Ok(secs) => format!("{secs:.0} s after the load stopped"),
                Err(why) => why.clone(),
            },
        );
        let unacked = get(&l.api_unacked);
        check(
            &mut rows,
            "every POST acknowledged once the faults stopped",
            unacked == 0,
            format!("{} batches never acknowledged", n(unacked)),
        );
        if let Some(d) = self.data {
            check(
                &mut rows,
                "every acknowledged trade stored exactly once, as sent",
                d.acked.wrong == 0,
                finding(&d.acked, "acknowledged trades"),
            );
            check(
                &mut rows,
                "trades never acknowledged stored at most once",
                d.unacked.wrong == 0,
                if d.unacked.wrong == 0 {
                    format!("{} of them found stored, each once", n(d.unacked.checked))
                } else {
                    finding(&d.unacked, "found stored")
                },
            );
            check(
                &mut rows,
                "no raw trade that was never sent, none half-written",
                d.phantoms.wrong == 0,
                if d.phantoms.wrong == 0 {
                    format!("{} raw rows read, each sent and whole", n(d.raw_rows))
                } else {
                    format!(
                        "{} wrong, e.g. {}",
                        n(d.phantoms.wrong),
                        d.phantoms.examples.join("; ")
                    )
                },
            );
            check(
                &mut rows,
                "every stored candle (6 resolutions) equals the oracle",
                d.candles.wrong == 0,
                finding(&d.candles, "candles"),
            );
            check(
                &mut rows,
                "/udf/history (10 resolutions) equals the oracle",
                d.history.wrong == 0,
                finding(&d.history, "bars"),
            );
        }
        check(
            &mut rows,
            "no task left running or failed",
            self.table.stuck.wrong == 0,
            finding(&self.table.stuck, "tasks"),
        );
        check(
            &mut rows,
            "each task's run history tiles its range",
            self.table.tiling.wrong == 0,
            format!(
                "{} ({} chunk runs)",
                finding(&self.table.tiling, "tasks"),
                n(self.table.runs)
            ),
        );
        let d = self.daemons;
        let deaths: Vec<&String> = d
            .deaths
            .iter()
            .chain(&d.panics)
            .chain(&d.unclean_stops)
            .collect();
        check(
            &mut rows,
            "no daemon died except by the harness's hand",
            deaths.is_empty(),
            if deaths.is_empty() {
                "none; each stopped cleanly on SIGTERM at the end".to_string()
            } else {
                deaths
                    .iter()
                    .take(3)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            },
        );
        let peak = d.slots.iter().map(|s| s.2).max().unwrap_or(0);
        check(
            &mut rows,
            &format!("each daemon's peak RSS ≤ {} MB", self.opts.rss_mb),
            mb(peak) <= self.opts.rss_mb as f64,
            d.slots
                .iter()
                .map(|(name, _, kb)| format!("{name}: {:.0} MB", mb(*kb)))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let problems = get(&l.problem_count);
        check(
            &mut rows,
            "clients saw only well-formed answers, no 4xx",
            problems == 0,
            if problems == 0 {
                "none malformed".to_string()
            } else {
                format!(
                    "{problems}: {}",
                    l.problems.lock().expect("not poisoned").join(" | ")
                )
            },
        );
        check(
            &mut rows,
            "every fault applied and healed",
            self.fault_errors.is_empty(),
            if self.fault_errors.is_empty() {
                "yes".to_string()
            } else {
                self.fault_errors.join(" | ")
            },
        );
        let passed = rows.iter().all(|r| r.check != Some(false));

        // The figures.
        figure(&mut rows, "seed", self.opts.seed.to_string());
        figure(
            &mut rows,
            "faults and load",
            format!(
                "{:.0} s; {} symbols, {DAEMONS} daemons, one influxd, one PostgreSQL",
                self.load_secs,
                self.symbols,
                DAEMONS = super::DAEMONS
            ),
        );
        let total: u64 = self.faults.iter().map(|f| f.1).sum();
        figure(&mut rows, "faults injected", n(total));
        for (kind, count) in &self.faults {
            figure(&mut rows, &format!("  {}", kind.label()), n(*count));
        }
        figure(
            &mut rows,
            "  responses cut by the proxy",
            format!(
                "{} (of {} connections)",
                n(self.proxy_resets),
                n(self.proxy_connections)
            ),
        );
        figure(
            &mut rows,
            "history written before the run",
            format!(
                "{} trades, materialized by the daemons in {:.0} s before the faults",
                n(self.seeded),
                self.catch_up_secs
            ),
        );
        figure(
            &mut rows,
            "trades POSTed and acknowledged",
            format!(
                "{} in {} batches",
                n(get(&l.api_acked)),
                n(get(&l.api_batches))
            ),
        );
        figure(
            &mut rows,
            "  of which late (minutes to days old)",
            format!(
                "{} ({} answered late by ohlcd)",
                n(get(&l.api_late_acked)),
                n(get(&l.api_late_reported))
            ),
        );
        figure(
            &mut rows,
            "  retries (same trades, same ids)",
            format!(
                "{} after {} 5xx answers and {} connection errors or timeouts",
                n(get(&l.api_retries)),
                n(get(&l.api_5xx)),
                n(get(&l.api_conn_errors))
            ),
        );
        figure(
            &mut rows,
            "  failed batches of impatient clients, not retried",
            n(get(&l.api_abandoned)),
        );
        figure(
            &mut rows,
            "trades written straight into InfluxDB",
            format!(
                "{} acknowledged, {} failed or timed out",
                n(get(&l.direct_acked)),
                n(get(&l.direct_failed))
            ),
        );
        figure(
            &mut rows,
            "/udf/history during the faults",
            format!(
                "{} bars answers, {} no_data, {} 5xx, {} connection errors",
                n(get(&l.chart_ok)),
                n(get(&l.chart_no_data)),
                n(get(&l.chart_5xx)),
                n(get(&l.chart_conn_errors))
            ),
        );
        figure(
            &mut rows,
            "/api/live during the faults",
            format!(
                "{} streams, {} bars, {} failure events, {} broken, {} silent > 45 s",
                n(get(&l.live_streams)),
                n(get(&l.live_bars)),
                n(get(&l.live_failures)),
                n(get(&l.live_broken)),
                n(get(&l.live_silent))
            ),
        );
        if let Some(d) = self.data {
            figure(&mut rows, "raw trades read back", n(d.raw_rows));
            figure(
                &mut rows,
                "mismatches",
                format!(
                    "{} (first check: {})",
                    n(d.mismatches()),
                    n(self.settle.first_mismatches.unwrap_or(0))
                ),
            );
        }
        figure(
            &mut rows,
            "daemon processes started",
            d.slots
                .iter()
                .map(|(name, starts, _)| format!("{name}: {starts}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        figure(
            &mut rows,
            "whole run",
            format!(
                "{:.0} s (set-up, faults, settling, verdict)",
                self.total_secs
            ),
        );
        (rows, passed)
    }

    /// The report as Markdown: what ran, then the table.
    pub(super) fn markdown(&self, rows: &[Row], passed: bool) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# ohlcd chaos run\n");
        let _ = writeln!(md, "- command: `{}`", self.opts.command);
        let _ = writeln!(md, "- ohlcd {}", self.ohlcd_version);
        let _ = writeln!(md, "- machine: {}", machine());
        let _ = writeln!(
            md,
            "- verdict: **{}**\n",
            if passed { "passed" } else { "FAILED" }
        );
        md.push_str("| | result |\n| --- | --- |\n");
        for r in rows {
            let name = match r.check {
                Some(true) => format!("ok: {}", r.name),
                Some(false) => format!("**FAILED: {}**", r.name),
                None => r.name.replace("  ", "&nbsp;&nbsp;"),
            };
            let _ = writeln!(
                md,
                "| {} | {} |",
                name.replace('|', "\\|"),
                r.value.replace('|', "\\|")
            );
        }
        md
    }
}

/// CPU model, cores and memory of this machine.
fn machine() -> String {
    let (model, cores, mem_kb) = crate::report::machine();
    format!(
        "{model}, {cores} cores, {:.0} GiB memory",
        mem_kb as f64 / 1024.0 / 1024.0
    )
}

/// The report on stdout.
pub(super) fn print(rows: &[Row]) {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["", "result"]);
    for r in rows {
        let name = match r.check {
            Some(true) => format!("ok    {}", r.name),
            Some(false) => format!("FAIL  {}", r.name),
            None => format!("      {}", r.name),
        };
        table.add_row([name, r.value.clone()]);
    }
    println!("{table}");
}

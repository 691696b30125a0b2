//! What every phase shares (the arguments, the InfluxDB, the findings) and
//! the phases that run the `ohlcd` command line: generate, backfill, the
//! caught-up pass, peak RSS at other sizes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ohlcd::config::Settings;
use ohlcd::influx::InfluxClient;

use crate::procs::{Measured, Proc, cpu_ticks, strip_ansi};
use crate::raw::RawReader;
use crate::report::{Results, mb, thousands};
use crate::{Args, LARGE_SIZE, NS, RESOLUTIONS, say};

/// Which comparison a run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A few dense symbols (`--symbols`).
    FewSymbols,
    /// Many thin symbols (`--symbols-count`).
    ManySymbols,
    /// `ohlcd run` under live ingest (`--live`).
    Live,
    /// Chart requests at rising concurrency (`--serve`).
    Serve,
    /// The same trades in two `[schema]`s, backfilled side by side (`--schemas`).
    Schemas,
}

/// Everything a phase needs.
pub struct Bench {
    pub args: Args,
    pub shape: Shape,
    pub ohlcd: PathBuf,
    pub scratch: PathBuf,
    /// Client of the main database (metadata queries, counts, writes).
    pub influx: InfluxClient,
    /// Bare reads, for the raw-pull and GROUP BY references.
    pub raw: RawReader,
    pub influxd_pid: Option<u32>,
    /// Main database; the size databases are named after it.
    pub db: String,
    /// Data range, Unix ns, `[from, to)`.
    pub from: i64,
    pub to: i64,
    /// Databases created; dropped at the end on an external InfluxDB.
    pub created: Vec<String>,
    /// Where ohlcd misbehaved or its answers differ from InfluxDB's.
    pub issues: Vec<String>,
    /// Phases that failed.
    pub failures: Vec<String>,
    /// Remarks on how something was measured.
    pub notes: Vec<String>,
}

/// A finished `ohlcd backfill`.
pub struct Backfill {
    pub elapsed: Duration,
    pub peak_kb: u64,
    /// CPU seconds of ohlcd and, when the bench runs its own, of influxd.
    pub cpu_secs: f64,
    pub influxd_cpu_secs: Option<f64>,
    pub rows_read: Option<u64>,
    pub chunks: Option<u64>,
}

pub fn secs_str(ns: i64) -> String {
    (ns / NS).to_string()
}

/// A client of `db` at `url` for the bench: long timeout (whole-range
/// queries), no retries (a failure should show, not be hidden).
pub fn influx_client(url: &str, db: &str) -> Result<InfluxClient> {
    let env = [
        ("OHLCD_INFLUX__URL", url),
        ("OHLCD_INFLUX__DATABASE", db),
        ("OHLCD_INFLUX__TIMEOUT_SECS", "900"),
        ("OHLCD_INFLUX__RETRIES", "0"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let settings = Settings::load_with_env(None, env).context("bench InfluxDB settings")?;
    Ok(InfluxClient::new(&settings.influx)?)
}

/// The number in `text` just before `marker`, e.g. `123` in
/// `"… 123 source rows read …"`.
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let (before, _) = text.split_once(marker)?;
    before.split_whitespace().last()?.parse().ok()
}

impl Bench {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: Args,
        shape: Shape,
        ohlcd: PathBuf,
        scratch: PathBuf,
        url: &str,
        influxd_pid: Option<u32>,
        db: String,
        from: i64,
        to: i64,
    ) -> Result<Bench> {
        Ok(Bench {
            influx: influx_client(url, &db)?,
            raw: RawReader::new(url)?,
            args,
            shape,
            ohlcd,
            scratch,
            influxd_pid,
            db,
            from,
            to,
            created: Vec::new(),
            issues: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        })
    }

    /// Midnight at or before the data's start: candle windows that hold the
    /// first trades may start before it (a 4h window at 16:00 holds trades
    /// from 18:00), so candles are read from here.
    pub fn candles_from(&self) -> i64 {
        self.from.div_euclid(crate::DAY_NS) * crate::DAY_NS
    }

    /// The symbols of the main data set.
    pub fn symbols(&self) -> &[String] {
        &self.args.symbols
    }

    pub fn issue(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        say!("OHLCD ISSUE: {msg}");
        self.issues.push(msg);
    }

    pub fn fail(&mut self, phase: &str, e: anyhow::Error) {
        let msg = format!("{phase}: {e:#}");
        say!("FAILED {msg}");
        self.failures.push(msg);
    }

    /// A client of database `db` on the bench's server (its generation known).
    pub fn client_of(&self, db: &str) -> Result<InfluxClient> {
        let mut client = influx_client(self.influx.url(), db)?;
        client.set_generation(self.influx.generation());
        Ok(client)
    }

    /// First value of the first series (e.g. of a `count` or `sum`), 0 if none.
    pub async fn scalar(&self, db: &str, q: &str) -> Result<f64> {
        let v = self.client_of(db)?.query_json(q).await?;
        Ok(v["series"][0]["values"][0][1].as_f64().unwrap_or(0.0))
    }

    /// Drops `db`: `DROP DATABASE`, or on InfluxDB 3 (which does not
    /// implement it) `DELETE /api/v3/configure/database`.
    pub async fn drop_database(&self, db: &str) -> Result<()> {
        if self.influx.generation() == ohlcd::influx::Generation::V3 {
            let url = format!("{}/api/v3/configure/database", self.influx.url());
            let resp = reqwest::Client::new()
                .delete(url)
                .query(&[("db", db)])
                .send()
                .await?;
            if !resp.status().is_success() {
                let status = resp.status();
                bail!("InfluxDB 3 answered {status}: {}", resp.text().await?);
            }
            return Ok(());
        }
        let q = format!("DROP DATABASE {}", ohlcd::influx::quote_ident(db));
        self.influx.query_json(&q).await?;
        Ok(())
    }

    /// The `ohlcd` binary with `args`, configured for `db` and a SQLite file.
    pub fn ohlcd_cmd(&self, db: &str, sqlite: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ohlcd);
        cmd.args(args)
            .env("OHLCD_INFLUX__URL", self.influx.url())
            .env("OHLCD_INFLUX__DATABASE", db)
            .env(
                "OHLCD_PROGRESS__DATABASE_URL",
                format!("sqlite://{}", sqlite.display()),
            )
            .env("NO_COLOR", "1");
        cmd
    }

    /// Warnings and errors in an ohlcd log, reported as issues.
    pub fn scan_log(&mut self, proc: &Proc) {
        let text = strip_ansi(&proc.stderr_text());
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| {
                let words: Vec<&str> = l.split_whitespace().take(3).collect();
                words.contains(&"WARN") || words.contains(&"ERROR") || l.contains("panicked")
            })
            .collect();
        if !bad.is_empty() {
            let shown: Vec<&str> = bad.iter().take(3).copied().collect();
            self.issue(format!(
                "{} logged {} warning/error line(s), e.g.: {}",
                proc.name,
                bad.len(),
                shown.join(" | ")
            ));
        }
    }

    /// Waits until our influxd has been nearly idle (< 10 % of a core) for a
    /// second, so background compaction after a big write does not land in the
    /// next measurement; bounded at 90 s.
    pub async fn settle(&self) {
        let Some(pid) = self.influxd_pid else {
            tokio::time::sleep(Duration::from_secs(2)).await;
            return;
        };
        let started = Instant::now();
        let Some(mut prev) = cpu_ticks(pid) else {
            return;
        };
        let mut calm = 0;
        while started.elapsed() < Duration::from_secs(90) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(now) = cpu_ticks(pid) else { return };
            if now - prev <= 5 {
                calm += 1;
                if calm >= 2 {
                    if started.elapsed() > Duration::from_secs(2) {
                        say!("influxd idle after {:.1}s", started.elapsed().as_secs_f64());
                    }
                    return;
                }
            } else {
                calm = 0;
            }
            prev = now;
        }
        say!("influxd still busy after 90s; measuring anyway");
    }

    fn timeout_for(n: u64) -> Duration {
        Duration::from_secs(180 + n / 10_000)
    }

    /// `ohlcd generate` of `n` trades of `symbols` over the data range into
    /// `db`, timed; checks the count.
    pub async fn generate(&mut self, db: &str, n: u64, symbols: &[String]) -> Result<Measured> {
        self.generate_with(db, n, symbols, &[], "trades").await
    }

    /// [`Bench::generate`] with extra environment (a `[schema]`), counting
    /// the trades in `measurement`.
    pub async fn generate_with(
        &mut self,
        db: &str,
        n: u64,
        symbols: &[String],
        env: &[(&str, &str)],
        measurement: &str,
    ) -> Result<Measured> {
        say!(
            "generating {n} trades of {} symbol(s) into database {db} (ohlcd generate) ...",
            symbols.len()
        );
        let symbols = symbols.join(",");
        let (from, to, trades) = (secs_str(self.from), secs_str(self.to), n.to_string());
        let mut cmd = self.ohlcd_cmd(
            db,
            &self.scratch.join(format!("{db}-generate.db")),
            &[
                "generate",
                "--symbols",
                &symbols,
                "--from",
                &from,
                "--to",
                &to,
                "--trades",
                &trades,
                "--seed",
                "42",
            ],
        );
        cmd.envs(env.iter().copied());
        self.created.push(db.to_string());
        let mut proc = Proc::spawn(&format!("generate-{db}"), cmd, &self.scratch)?;
        let m = proc.wait_measured(Self::timeout_for(n)).await?;
        if !m.status.success() {
            let msg = format!(
                "ohlcd generate exited with {}; {}",
                m.status,
                proc.stderr_tail(10)
            );
            self.issue(msg.clone());
            bail!(msg);
        }
        self.scan_log(&proc);
        say!(
            "generated {n} trades in {:.1}s ({} trades/s)",
            m.elapsed.as_secs_f64(),
            thousands(n as f64 / m.elapsed.as_secs_f64())
        );
        if self.influxd_pid.is_some()
            && self.influx.generation() == ohlcd::influx::Generation::V1
            && !self.args.cache_resident
        {
            // Past the cold duration, so the snapshot to TSM files has begun
            // (the caller's settle() waits for it to end).
            let cold = u64::from(crate::CACHE_SNAPSHOT_COLD_SECS);
            tokio::time::sleep(Duration::from_secs(cold + 2)).await;
        }
        let count = self
            .scalar(
                db,
                &format!(
                    "SELECT count(price) FROM {} WHERE time >= {} AND time < {}",
                    ohlcd::influx::quote_ident(measurement),
                    self.from,
                    self.to
                ),
            )
            .await? as u64;
        if count != n {
            self.issue(format!(
                "ohlcd generate --trades {n} left {count} trades in database {db}"
            ));
        }
        Ok(m)
    }

    /// CPU seconds the bench's own influxd has used so far.
    pub fn influxd_cpu_secs(&self) -> Option<f64> {
        self.influxd_pid
            .and_then(cpu_ticks)
            .map(|t| t as f64 / crate::procs::TICKS_PER_SEC)
    }

    /// CPU seconds the bench's influxd used since it had used `before`.
    pub fn influxd_cpu_since(&self, before: Option<f64>) -> Option<f64> {
        before.zip(self.influxd_cpu_secs()).map(|(a, z)| z - a)
    }

    fn progress_file(&self, db: &str) -> PathBuf {
        self.scratch.join(format!("{db}-progress.db"))
    }

    /// One `ohlcd backfill` on `db`'s progress file, timed with peak RSS;
    /// reads the summary line.
    async fn run_backfill(&mut self, db: &str, name: &str, n: u64) -> Result<Backfill> {
        self.run_backfill_with(db, name, n, &[]).await
    }

    /// `ohlcd backfill` with extra environment (configuration) variables.
    async fn run_backfill_with(
        &mut self,
        db: &str,
        name: &str,
        n: u64,
        env: &[(&str, &str)],
    ) -> Result<Backfill> {
        let mut cmd = self.ohlcd_cmd(db, &self.progress_file(db), &["backfill"]);
        cmd.envs(env.iter().copied());
        let influxd0 = self.influxd_cpu_secs();
        let mut proc = Proc::spawn(name, cmd, &self.scratch)?;
        let m = proc.wait_measured(Self::timeout_for(n)).await?;
        let influxd_cpu_secs = self.influxd_cpu_since(influxd0);
        if !m.status.success() {
            let msg = format!(
                "ohlcd backfill exited with {}; {}",
                m.status,
                proc.stderr_tail(10)
            );
            self.issue(msg.clone());
            bail!(msg);
        }
        self.scan_log(&proc);
        let out = proc.stdout_text();
        let rows_read = number_before(&out, " source rows read");
        let chunks = number_before(&out, " chunks,");
        if rows_read.is_none() || chunks.is_none() {
            self.issue(format!(
                "ohlcd backfill's summary line is missing or changed: {:?}",
                out.trim()
            ));
        }
        Ok(Backfill {
            elapsed: m.elapsed,
            peak_kb: m.peak_kb,
            cpu_secs: m.cpu_secs,
            influxd_cpu_secs,
            rows_read,
            chunks,
        })
    }

    /// `ohlcd backfill` from a fresh SQLite file, timed, peak RSS sampled; then
    /// checks that every resolution counts exactly `n` trades.
    pub async fn backfill(&mut self, db: &str, n: u64) -> Result<Backfill> {
        self.backfill_with(db, n, &[]).await
    }

    /// [`Bench::backfill`] with extra environment (configuration) variables.
    pub async fn backfill_with(
        &mut self,
        db: &str,
        n: u64,
        env: &[(&str, &str)],
    ) -> Result<Backfill> {
        say!("backfill of {db} ({n} trades, all six resolutions, fresh SQLite, {env:?}) ...");
        let _ = std::fs::remove_file(self.progress_file(db));
        let bf = self
            .run_backfill_with(db, &format!("backfill-{db}"), n, env)
            .await?;
        if env.contains(&("OHLCD_INFLUX__NO_SYNC", "true")) {
            // Acknowledged before InfluxDB 3's WAL flush (1 s): readable after it.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        }
        say!(
            "backfill done in {:.2}s, peak RSS {:.1} MB ({} chunks, {} rows read)",
            bf.elapsed.as_secs_f64(),
            mb(bf.peak_kb),
            bf.chunks.unwrap_or(0),
            bf.rows_read.unwrap_or(0),
        );
        for (res, _, _) in RESOLUTIONS {
            let total = self
                .scalar(
                    db,
                    &format!(
                        "SELECT sum(trades) FROM ohlc_{res} WHERE time >= {} AND time < {}",
                        self.candles_from(),
                        self.to
                    ),
                )
                .await? as u64;
            if total != n {
                self.issue(format!(
                    "after backfill of {db}, the {res} candles count {total} trades, not {n}"
                ));
            }
        }
        Ok(bf)
    }

    /// `times` more `ohlcd backfill` runs on the caught-up progress file of
    /// `db` with nothing new: what a tick with nothing to do costs, start-up
    /// of the process included.
    pub async fn caught_up_passes(&mut self, db: &str, times: usize) -> Result<Vec<Backfill>> {
        let mut passes = Vec::new();
        for i in 1..=times {
            let bf = self
                .run_backfill(db, &format!("caught-up-{i}-{db}"), 0)
                .await?;
            if bf.rows_read.unwrap_or(0) > 0 {
                self.notes.push(format!(
                    "caught-up pass {i} read {} rows (nothing was written in between)",
                    bf.rows_read.unwrap_or(0)
                ));
            }
            say!(
                "caught-up pass {i}: {:.3}s ({} chunks, {} rows read)",
                bf.elapsed.as_secs_f64(),
                bf.chunks.unwrap_or(0),
                bf.rows_read.unwrap_or(0)
            );
            passes.push(bf);
        }
        Ok(passes)
    }

    /// Peak RSS of backfill at the `--rss-sizes`, each in its own database.
    pub async fn rss_sizes(&mut self, r: &mut Results) {
        let mut sizes = self.args.rss_sizes.clone();
        sizes.sort_unstable();
        sizes.dedup();
        let symbols = self.symbols().to_vec();
        for size in sizes {
            if size == self.args.trades {
                continue; // the main run measured it
            }
            self.rss_at(r, size, &symbols).await;
        }
        r.rss.sort_unstable();
    }

    /// Peak RSS of backfill at the `--rss-symbols` counts, each with the main
    /// set's trades per symbol, in its own database.
    pub async fn rss_symbols(&mut self, r: &mut Results) {
        let mut counts = self.args.rss_symbols.clone();
        counts.sort_unstable();
        counts.dedup();
        let per_symbol = self.args.trades / self.symbols().len() as u64;
        for count in counts {
            if count == self.symbols().len() || count == 0 {
                continue; // the main run measured it
            }
            let symbols = crate::numbered_symbols(count);
            self.rss_at(r, per_symbol * count as u64, &symbols).await;
        }
        r.rss.sort_unstable_by_key(|x| (x.1, x.0));
    }

    /// Generates `size` trades of `symbols` into a database of their own,
    /// backfills it and records the peak RSS; drops the database after.
    async fn rss_at(&mut self, r: &mut Results, size: u64, symbols: &[String]) {
        if size > LARGE_SIZE && !self.args.allow_large {
            let msg = format!("RSS size {size} skipped (above {LARGE_SIZE}; pass --allow-large)");
            say!("{msg}");
            self.notes.push(msg);
            return;
        }
        let db = format!("{}_n{size}_s{}", self.db, symbols.len());
        let outcome = async {
            self.generate(&db, size, symbols).await?;
            self.settle().await;
            self.backfill(&db, size).await
        }
        .await;
        match outcome {
            Ok(b) => r.rss.push((size, symbols.len(), b.peak_kb)),
            Err(e) => self.fail(
                &format!("peak RSS at {size} trades of {} symbol(s)", symbols.len()),
                e,
            ),
        }
        // Free the disk and the page cache for the next size.
        if let Err(e) = self.drop_database(&db).await {
            say!("could not drop database {db}: {e:#}");
        } else {
            self.created.retain(|d| d != &db);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_the_backfill_summary() {
        let out = "backfill complete: 12 chunks, 3400 source rows read, 99 candles written in 1.0s (3400 rows/s)";
        assert_eq!(number_before(out, " chunks,"), Some(12));
        assert_eq!(number_before(out, " source rows read"), Some(3400));
        assert_eq!(number_before("nothing", " chunks,"), None);
    }
}

//! `--schemas A,B`: the same trades written in two `[schema]`s (each into
//! its own database by `ohlcd generate` with that schema), then `ohlcd
//! backfill` of each from a fresh SQLite file, alternating A B, B A, … for
//! `--schema-rounds` rounds so neither side always runs first. The
//! median backfill of B against A says what reading a foreign schema costs.
//!
//! Schemas: `own` (ohlcd's: `trades`, tags `symbol` and `side`, an integer
//! id), `poc` (the original POC: `trade`, no id), `two-tags` (instruments
//! keyed by tags `exchange` and `symbol`: the `--symbols` spread over ten
//! exchanges, `EX00:S0001` …).

use std::time::Duration;

use anyhow::{Result, bail};

use crate::bench::{Backfill, Bench};
use crate::report::{Row, push_check, push_row};
use crate::say;

/// Exchanges the `two-tags` schema spreads the symbols over.
const EXCHANGES: usize = 10;

/// A schema the bench can write and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Own,
    Poc,
    TwoTags,
}

impl Kind {
    /// From its `--schemas` name.
    pub fn parse(s: &str) -> Result<Kind> {
        Ok(match s {
            "own" => Kind::Own,
            "poc" => Kind::Poc,
            "two-tags" => Kind::TwoTags,
            other => bail!("--schemas: unknown schema {other:?} (own, poc, two-tags)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Own => "own",
            Kind::Poc => "poc",
            Kind::TwoTags => "two-tags",
        }
    }

    /// What it is, for the table.
    fn describe(self) -> &'static str {
        match self {
            Kind::Own => "trades, tags symbol+side, integer id",
            Kind::Poc => "trade, tags symbol+side, no id",
            Kind::TwoTags => "trades, tags exchange+symbol+side, integer id",
        }
    }

    /// Its `[schema]`, as environment.
    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Own => &[],
            Kind::Poc => &[
                ("OHLCD_SCHEMA__TRADES_MEASUREMENT", "trade"),
                ("OHLCD_SCHEMA__ID_FIELD", ""),
            ],
            Kind::TwoTags => &[("OHLCD_SCHEMA__SYMBOL_TAGS", "exchange,symbol")],
        }
    }

    fn measurement(self) -> &'static str {
        match self {
            Kind::Poc => "trade",
            Kind::Own | Kind::TwoTags => "trades",
        }
    }

    /// The instruments of `symbols` in this schema.
    fn names(self, symbols: &[String]) -> Vec<String> {
        match self {
            Kind::TwoTags => symbols
                .iter()
                .enumerate()
                .map(|(i, s)| format!("EX{:02}:{s}", i % EXCHANGES))
                .collect(),
            Kind::Own | Kind::Poc => symbols.to_vec(),
        }
    }
}

/// What the comparison measured.
pub struct SchemaResult {
    /// Per schema: its kind and its backfills, in the order they ran.
    pub runs: Vec<(Kind, Vec<Backfill>)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Generates the trades in both schemas, then backfills them side by side.
pub async fn run(b: &mut Bench, kinds: [Kind; 2], rounds: usize) -> Result<SchemaResult> {
    let n = b.args.trades;
    let symbols = b.symbols().to_vec();
    let mut dbs = Vec::new();
    for kind in kinds {
        let db = format!("{}_{}", b.db, kind.name().replace('-', "_"));
        b.generate_with(
            &db,
            n,
            &kind.names(&symbols),
            kind.env(),
            kind.measurement(),
        )
        .await?;
        dbs.push(db);
    }
    b.settle().await;
    let mut runs: Vec<(Kind, Vec<Backfill>)> = kinds.iter().map(|k| (*k, Vec::new())).collect();
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            b.settle().await;
            let kind = kinds[i];
            let bf = b.backfill_with(&dbs[i], n, kind.env()).await?;
            say!(
                "round {}: {} backfill {:.2}s (ohlcd CPU {:.2}s)",
                round + 1,
                kind.name(),
                bf.elapsed.as_secs_f64(),
                bf.cpu_secs
            );
            runs[i].1.push(bf);
        }
    }
    Ok(SchemaResult { runs })
}

/// The table rows: each schema's backfills, and B against A.
pub fn rows(r: &SchemaResult, rows: &mut Vec<Row>) {
    let secs =
        |v: &[Backfill], f: fn(&Backfill) -> Option<f64>| median(v.iter().filter_map(f).collect());
    let wall = |x: &Backfill| Some(x.elapsed.as_secs_f64());
    let cpu = |x: &Backfill| Some(x.cpu_secs);
    let influxd = |x: &Backfill| x.influxd_cpu_secs;
    for (kind, runs) in &r.runs {
        push_row(
            rows,
            format!("backfill, schema {} ({})", kind.name(), kind.describe()),
            format!(
                "median {:.2} s of {} (best {:.2} s); ohlcd CPU {:.2} s, influxd CPU {:.2} s",
                secs(runs, wall),
                runs.len(),
                runs.iter()
                    .map(|x| x.elapsed)
                    .min()
                    .unwrap_or(Duration::ZERO)
                    .as_secs_f64(),
                secs(runs, cpu),
                secs(runs, influxd)
            ),
        );
    }
    let [(a, ra), (b, rb)] = [&r.runs[0], &r.runs[1]];
    let ratio = secs(rb, wall) / secs(ra, wall);
    let cpu_ratio = secs(rb, cpu) / secs(ra, cpu);
    let text = format!(
        "{ratio:.3} (wall, medians); ohlcd CPU {cpu_ratio:.3}; influxd CPU {:.3}",
        secs(rb, influxd) / secs(ra, influxd)
    );
    let metric = format!("backfill {} / {}", b.name(), a.name());
    if *a == Kind::Own && *b == Kind::Poc {
        push_check(rows, metric, text, "≤ 1.05", ratio <= 1.05);
    } else {
        push_row(rows, metric, text);
    }
}

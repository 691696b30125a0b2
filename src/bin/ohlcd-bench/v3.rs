//! What `--server 3` changes: the raw pulls InfluxDB 3 offers besides v1
//! `/query` (its native `/api/v3/query_sql` and `/api/v3/query_influxql`, in
//! CSV, JSON lines and Parquet), each read to the end without decoding, per
//! symbol and in one query, so the backfill is compared with the fastest way
//! any client can get the same trades out of that server.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;

use crate::bench::{Bench, Shape};
use crate::raw::RawReader;
use crate::reference::PER_SYMBOL_PULL_MAX;
use crate::report::{RawPull, Results};
use crate::say;

/// (label, endpoint, format): the native reads of InfluxDB 3.
const NATIVE: [(&str, &str, &str); 4] = [
    ("query_sql CSV", "/api/v3/query_sql", "csv"),
    ("query_sql JSONL", "/api/v3/query_sql", "jsonl"),
    ("query_sql Parquet", "/api/v3/query_sql", "parquet"),
    ("query_influxql CSV", "/api/v3/query_influxql", "csv"),
];

/// A native read: elapsed time, bytes and newlines of the whole answer.
async fn fetch(
    raw: &RawReader,
    endpoint: &str,
    db: &str,
    q: &str,
    format: &str,
) -> Result<(Duration, u64, u64)> {
    let started = Instant::now();
    let resp = raw
        .http
        .get(format!("{}{endpoint}", raw.url))
        .query(&[("db", db), ("q", q), ("format", format)])
        .send()
        .await
        .with_context(|| format!("InfluxDB did not answer {endpoint} `{q}`"))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        bail!("InfluxDB answered {status} to {endpoint} `{q}`: {text}");
    }
    let mut stream = resp.bytes_stream();
    let (mut bytes, mut lines) = (0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {endpoint} `{q}`"))?;
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    Ok((started.elapsed(), bytes, lines))
}

/// The statement for `endpoint`: SQL or InfluxQL over `[from, to)`, one
/// symbol or all.
fn statement(endpoint: &str, symbol: Option<&str>, from: i64, to: i64) -> String {
    if endpoint.ends_with("query_sql") {
        let cond = symbol
            .map(|s| format!("symbol = '{s}' AND "))
            .unwrap_or_default();
        format!(
            "SELECT time, price, amount, id, side FROM trades WHERE {cond}time >= to_timestamp_nanos({from}) AND time < to_timestamp_nanos({to})"
        )
    } else {
        let cond = symbol
            .map(|s| format!("symbol = '{s}' AND "))
            .unwrap_or_default();
        format!(
            "SELECT price, amount, id, side FROM trades WHERE {cond}time >= {from} AND time < {to}"
        )
    }
}

/// The raw pulls of InfluxDB 3: v1 `/query` CSV chunked and every native
/// endpoint and format, per symbol (few symbols) and in one query.
pub(crate) async fn raw_pull(b: &mut Bench, r: &mut Results) -> Result<()> {
    let n = b.args.trades;
    let (from, to) = (b.from, b.to);
    let per_symbol = b.shape == Shape::FewSymbols && b.symbols().len() <= PER_SYMBOL_PULL_MAX;
    let symbols = b.symbols().to_vec();
    // v1 /query, chunked CSV (what ohlcd reads).
    let v1 = |s: Option<&str>| statement("/query", s, from, to);
    if per_symbol {
        // Chunked CSV repeats its header in every chunk: rows not counted.
        let (mut elapsed, mut bytes) = (Duration::ZERO, 0);
        for s in &symbols {
            let f = b
                .raw
                .fetch(&b.db, &v1(Some(s)), "application/csv", false)
                .await?;
            elapsed += f.elapsed;
            bytes += f.bytes;
        }
        push(r, "v1 /query CSV", "per symbol, summed", elapsed, bytes);
    }
    let f = b
        .raw
        .fetch(&b.db, &v1(None), "application/csv", false)
        .await?;
    push(r, "v1 /query CSV", "one query", f.elapsed, f.bytes);

    for (label, endpoint, format) in NATIVE {
        // Lines per answer that are not rows (the CSV header).
        let header = u64::from(format == "csv");
        if per_symbol {
            let (mut elapsed, mut bytes, mut rows) = (Duration::ZERO, 0, 0);
            for s in &symbols {
                let q = statement(endpoint, Some(s), from, to);
                let (e, by, lines) = fetch(&b.raw, endpoint, &b.db, &q, format).await?;
                elapsed += e;
                bytes += by;
                rows += lines.saturating_sub(header);
            }
            if format != "parquet" {
                note_rows(b, &format!("{label} per symbol"), rows, n);
            }
            push(r, label, "per symbol, summed", elapsed, bytes);
        }
        let q = statement(endpoint, None, from, to);
        let (e, by, lines) = fetch(&b.raw, endpoint, &b.db, &q, format).await?;
        if format != "parquet" {
            note_rows(
                b,
                &format!("{label} in one query"),
                lines.saturating_sub(header),
                n,
            );
        }
        push(r, label, "one query", e, by);
    }
    Ok(())
}

fn push(r: &mut Results, format: &'static str, shape: &'static str, elapsed: Duration, bytes: u64) {
    say!(
        "raw pull {format}, {shape}: {:.2}s, {:.1} MB",
        elapsed.as_secs_f64(),
        bytes as f64 / 1e6
    );
    r.raw.push(RawPull {
        format,
        shape,
        elapsed,
        bytes,
        influxd_cpu_secs: None,
    });
}

/// A pull that did not return every trade is not a fair reference: noted.
fn note_rows(b: &mut Bench, what: &str, rows: u64, n: u64) {
    if rows != n {
        b.notes.push(format!(
            "raw pull {what} returned {rows} rows, expected {n}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_select_the_same_trades_in_sql_and_influxql() {
        let sql = statement("/api/v3/query_sql", Some("BTCUSD"), 10, 20);
        assert_eq!(
            sql,
            "SELECT time, price, amount, id, side FROM trades WHERE symbol = 'BTCUSD' AND time >= to_timestamp_nanos(10) AND time < to_timestamp_nanos(20)"
        );
        let ql = statement("/api/v3/query_influxql", None, 10, 20);
        assert_eq!(
            ql,
            "SELECT price, amount, id, side FROM trades WHERE time >= 10 AND time < 20"
        );
    }
}

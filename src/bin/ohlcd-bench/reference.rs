//! InfluxDB's own answers, the references ohlcd is timed and checked against:
//! a bare raw pull of the trades, and the candles InfluxQL `GROUP BY time`
//! computes (with a check that ohlcd's stored candles equal them).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ohlcd::influx::CandleRead;

use crate::bench::{Bench, Shape};
use crate::report::{RawPull, Results, thousands};
use crate::{RESOLUTIONS, say};

/// Shape of the raw pull that reads series by series.
pub(crate) const GROUPED: &str = "one query, GROUP BY symbol";

/// Up to this many symbols the raw pull is also timed per symbol (summed).
pub(crate) const PER_SYMBOL_PULL_MAX: usize = 16;

/// The shape of the raw pull whose per-symbol queries run concurrently: shown
/// beside the goal's reference, which reads one query at a time.
pub(crate) const AT_ONCE: &str = "per symbol, at once";

/// A bare raw pull of the trades, CSV and msgpack: one query over all of them,
/// and (few symbols) one query per symbol, summed and (msgpack) at once.
pub(crate) async fn raw_pull(b: &mut Bench, r: &mut Results) -> Result<()> {
    let n = b.args.trades;
    let range = format!("time >= {} AND time < {}", b.from, b.to);
    let per_symbol = b.shape == Shape::FewSymbols && b.symbols().len() <= PER_SYMBOL_PULL_MAX;
    let symbol_query = |s: &str| {
        format!("SELECT price, amount, id, side FROM trades WHERE symbol = '{s}' AND {range}")
    };
    for (format, accept) in [
        ("CSV", "application/csv"),
        ("msgpack", "application/x-msgpack"),
    ] {
        if per_symbol {
            let mut elapsed = Duration::ZERO;
            let (mut bytes, mut rows) = (0u64, 0u64);
            let mut content_type = String::new();
            let influxd0 = b.influxd_cpu_secs();
            for s in b.symbols().to_vec() {
                let q = symbol_query(&s);
                let f = b.raw.fetch(&b.db, &q, accept, false).await?;
                elapsed += f.elapsed;
                bytes += f.bytes;
                rows += f.csv_rows();
                content_type = f.content_type;
            }
            check_content_type(format, accept, &content_type)?;
            say!(
                "raw pull {format}, per symbol: {:.2}s, {:.1} MB",
                elapsed.as_secs_f64(),
                bytes as f64 / 1e6
            );
            if format == "CSV" && rows != n {
                b.notes.push(format!(
                    "raw CSV pull per symbol returned {rows} rows, expected {n}"
                ));
            }
            r.raw.push(RawPull {
                format,
                shape: "per symbol, summed",
                elapsed,
                bytes,
                influxd_cpu_secs: b.influxd_cpu_since(influxd0),
            });
            if format == "msgpack" {
                // The same queries at once: what InfluxDB serves with both
                // cores, a floor under any reader that splits its reads.
                let started = std::time::Instant::now();
                let influxd0 = b.influxd_cpu_secs();
                let pulls = b.symbols().iter().map(|s| {
                    let q = symbol_query(s);
                    let (raw, db) = (&b.raw, &b.db);
                    async move { raw.fetch(db, &q, accept, false).await }
                });
                let fetched = futures_util::future::try_join_all(pulls).await?;
                let elapsed = started.elapsed();
                say!(
                    "raw pull {format}, per symbol at once: {:.2}s",
                    elapsed.as_secs_f64()
                );
                r.raw.push(RawPull {
                    format,
                    shape: AT_ONCE,
                    elapsed,
                    bytes: fetched.iter().map(|f| f.bytes).sum(),
                    influxd_cpu_secs: b.influxd_cpu_since(influxd0),
                });
            }
        }
        let q = format!("SELECT price, amount, id, side FROM trades WHERE {range}");
        let influxd0 = b.influxd_cpu_secs();
        let f = b.raw.fetch(&b.db, &q, accept, false).await?;
        let influxd_cpu_secs = b.influxd_cpu_since(influxd0);
        check_content_type(format, accept, &f.content_type)?;
        say!(
            "raw pull {format}, one query: {:.2}s, {:.1} MB",
            f.elapsed.as_secs_f64(),
            f.bytes as f64 / 1e6
        );
        if format == "CSV" && f.csv_rows() != n {
            b.notes.push(format!(
                "raw CSV pull in one query returned {} rows, expected {n}",
                f.csv_rows()
            ));
        }
        r.raw.push(RawPull {
            format,
            shape: "one query",
            elapsed: f.elapsed,
            bytes: f.bytes,
            influxd_cpu_secs,
        });
        if b.shape == Shape::ManySymbols {
            // Series by series instead of merged in time order: cheaper for
            // InfluxDB with many series, and all a per-symbol consumer needs.
            let q = format!("{q} GROUP BY symbol");
            let influxd0 = b.influxd_cpu_secs();
            let f = b.raw.fetch(&b.db, &q, accept, false).await?;
            say!(
                "raw pull {format}, one query GROUP BY symbol: {:.2}s, {:.1} MB",
                f.elapsed.as_secs_f64(),
                f.bytes as f64 / 1e6
            );
            r.raw.push(RawPull {
                format,
                shape: GROUPED,
                elapsed: f.elapsed,
                bytes: f.bytes,
                influxd_cpu_secs: b.influxd_cpu_since(influxd0),
            });
        }
    }
    Ok(())
}

fn check_content_type(format: &str, accept: &str, content_type: &str) -> Result<()> {
    if !content_type.contains(if format == "CSV" { "csv" } else { "msgpack" }) {
        bail!("InfluxDB answered {accept} with Content-Type {content_type:?}");
    }
    Ok(())
}

/// InfluxQL GROUP BY time at the six resolutions (timed), then a check that
/// ohlcd's stored candles equal them.
/// The backfill's candles, read back into memory and written into an empty
/// database by ohlcd's own writer (same batch size and requests in flight),
/// timed alone: what storing them costs InfluxDB without any reading.
pub(crate) async fn write_alone(b: &mut Bench, r: &mut Results) -> Result<()> {
    let symbols = b.symbols().to_vec();
    let range = b.candles_from()..b.to + crate::DAY_NS;
    let mut candles: Vec<(
        ohlcd::candle::Resolution,
        String,
        Vec<ohlcd::candle::Candle>,
    )> = Vec::new();
    for res in ohlcd::candle::Resolution::ALL {
        // Symbol lists of a few hundred keep InfluxQL's regex short.
        for group in symbols.chunks(500) {
            let mut by_symbol: BTreeMap<String, Vec<ohlcd::candle::Candle>> = BTreeMap::new();
            b.influx
                .read_candles(CandleRead::new(res, group, range.clone()), |s, c| {
                    by_symbol.entry(s.to_string()).or_default().push(c)
                })
                .await?;
            candles.extend(by_symbol.into_iter().map(|(s, c)| (res, s, c)));
        }
    }
    let n: usize = candles.iter().map(|(_, _, c)| c.len()).sum();
    let sets: Vec<ohlcd::influx::CandleSet<'_>> = candles
        .iter()
        .map(|(res, s, c)| ohlcd::influx::CandleSet {
            resolution: *res,
            symbol: s,
            candles: c,
        })
        .collect();
    let db = format!("{}_write_alone", b.db);
    let client = b.client_of(&db)?;
    client.create_database().await?;
    b.created.push(db.clone());
    let started = std::time::Instant::now();
    client.write_candles(&sets).await?;
    let elapsed = started.elapsed();
    say!(
        "candle write alone: {n} candles in {:.2}s",
        elapsed.as_secs_f64()
    );
    r.write_alone = Some((n as u64, elapsed));
    b.drop_database(&db).await?;
    b.created.retain(|d| d != &db);
    Ok(())
}

pub(crate) async fn group_by(b: &mut Bench, r: &mut Results) -> Result<()> {
    let mut answers = Vec::new();
    for (res, _, _) in RESOLUTIONS {
        let q = format!(
            "SELECT first(price), max(price), min(price), last(price), sum(amount), count(price) \
             FROM trades WHERE time >= {} AND time < {} GROUP BY time({res}), symbol fill(none)",
            b.from, b.to
        );
        let f = b.raw.fetch(&b.db, &q, "application/csv", true).await?;
        let rows = f.csv_rows();
        say!(
            "InfluxQL GROUP BY time({res}): {:.2}s, {rows} rows",
            f.elapsed.as_secs_f64()
        );
        r.group_by.push((res, f.elapsed, rows));
        answers.push((res, f.body));
    }
    say!("checking ohlcd's stored candles against InfluxDB's GROUP BY ...");
    let mut total = 0usize;
    let mut bad = Vec::new();
    for (res, body) in &answers {
        let expected = parse_candle_csv(body)?;
        let q = format!(
            "SELECT open, high, low, close, volume, trades FROM ohlc_{res} \
             WHERE time >= {} AND time < {} GROUP BY symbol",
            b.candles_from(),
            b.to
        );
        let stored =
            parse_candle_csv(&b.raw.fetch(&b.db, &q, "application/csv", true).await?.body)?;
        total += expected.len();
        if let Some(diff) = compare_candles(&expected, &stored) {
            bad.push(format!("{res}: {diff}"));
        }
    }
    if bad.is_empty() {
        r.candle_check = Some((
            true,
            format!(
                "equal at all 6 resolutions ({} candles)",
                thousands(total as f64)
            ),
        ));
    } else {
        let msg = format!(
            "ohlcd's candles differ from InfluxDB's GROUP BY: {}",
            bad.join("; ")
        );
        r.candle_check = Some((false, format!("{} of 6 resolutions differ", bad.len())));
        b.issue(msg);
    }
    Ok(())
}

/// `(symbol, window start ns)` → `[open, high, low, close, volume, trades]`.
pub(crate) type CandleMap = HashMap<(String, i64), [f64; 6]>;

/// Candles from CSV `name,tags,time,<6 values>` with tags `symbol=…`.
pub(crate) fn parse_candle_csv(body: &[u8]) -> Result<CandleMap> {
    let text = std::str::from_utf8(body).context("CSV answer is not UTF-8")?;
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("name,") {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        ensure!(f.len() == 9, "unexpected CSV row {line:?}");
        let symbol = f[1].strip_prefix("symbol=").unwrap_or(f[1]).to_string();
        let time: i64 = f[2]
            .parse()
            .with_context(|| format!("bad time in {line:?}"))?;
        let mut v = [0.0; 6];
        for (slot, s) in v.iter_mut().zip(&f[3..]) {
            *slot = s
                .parse()
                .with_context(|| format!("bad number in {line:?}"))?;
        }
        out.insert((symbol, time), v);
    }
    Ok(out)
}

fn close_enough(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-12
}

/// Prices and counts exactly, volume up to summation order.
pub(crate) fn same_candle(a: &[f64; 6], b: &[f64; 6]) -> bool {
    a[0] == b[0]
        && a[1] == b[1]
        && a[2] == b[2]
        && a[3] == b[3]
        && a[5] == b[5]
        && close_enough(a[4], b[4])
}

/// `None` if equal, else a summary with a few examples.
pub(crate) fn compare_candles(expected: &CandleMap, stored: &CandleMap) -> Option<String> {
    let mut missing = 0;
    let mut differ = 0;
    let mut examples = Vec::new();
    let sorted: BTreeMap<&(String, i64), &[f64; 6]> = expected.iter().collect();
    for (key, want) in sorted {
        match stored.get(key) {
            None => {
                missing += 1;
                if examples.len() < 3 {
                    examples.push(format!(
                        "{} {} missing",
                        key.0,
                        ohlcd::times::to_rfc3339(key.1)
                    ));
                }
            }
            Some(got) if !same_candle(want, got) => {
                differ += 1;
                if examples.len() < 3 {
                    examples.push(format!(
                        "{} {}: InfluxDB [o h l c v n] {want:?}, ohlcd {got:?}",
                        key.0,
                        ohlcd::times::to_rfc3339(key.1)
                    ));
                }
            }
            Some(_) => {}
        }
    }
    let extra = stored.keys().filter(|k| !expected.contains_key(k)).count();
    if missing + differ + extra == 0 {
        return None;
    }
    Some(format!(
        "{} expected, {missing} missing, {differ} different, {extra} extra; {}",
        expected.len(),
        examples.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &[u8] = b"name,tags,time,first,max,min,last,sum,count\n\
        trades,symbol=S0001,60000000000,1,3,0.5,2,10,4\n\
        trades,symbol=S0002,60000000000,7,7,7,7,1,1\n";

    #[test]
    fn candles_are_parsed_per_symbol_and_window() {
        let m = parse_candle_csv(CSV).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[&("S0001".to_string(), 60_000_000_000)],
            [1.0, 3.0, 0.5, 2.0, 10.0, 4.0]
        );
    }

    #[test]
    fn a_missing_or_different_candle_is_reported_and_equal_sets_are_not() {
        let expected = parse_candle_csv(CSV).unwrap();
        assert_eq!(compare_candles(&expected, &expected), None);
        let mut stored = expected.clone();
        stored.remove(&("S0002".to_string(), 60_000_000_000));
        let diff = compare_candles(&expected, &stored).unwrap();
        assert!(diff.contains("1 missing"), "{diff}");
        let mut stored = expected.clone();
        stored
            .get_mut(&("S0001".to_string(), 60_000_000_000))
            .unwrap()[5] = 5.0;
        assert!(
            compare_candles(&expected, &stored)
                .unwrap()
                .contains("1 different")
        );
    }
}

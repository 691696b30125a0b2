//! `ohlcd run` on the main data set: time until caught up, `/udf/history`
//! latency against InfluxDB aggregating the same chart on the fly, and `POST
//! /api/trades` against InfluxDB's own `/write`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::{NewTrade, encode_trades};
use serde_json::{Value, json};

use crate::bench::Bench;
use crate::procs::Proc;
use crate::reference::same_candle;
use crate::report::{Ingest, Latency, Results, ms, percentile, thousands};
use crate::{API_SYMBOL, NS, RESOLUTIONS, WRITE_SYMBOL, say};

/// Warm-up requests before timed `/udf/history` requests.
const LATENCY_WARMUP: usize = 20;
/// Warm-up requests before timed on-the-fly InfluxDB requests.
const INFLUX_WARMUP: usize = 2;
/// Wall-time budget of one series of on-the-fly InfluxDB requests (at least 5
/// are always timed).
const INFLUX_SERIES_BUDGET: Duration = Duration::from_secs(20);

/// Starts `ohlcd run` on a free port with `db`'s progress file; waits until
/// `/healthz` answers 200.
pub(crate) async fn start_daemon(
    b: &mut Bench,
    db: &str,
    extra_env: &[(&str, String)],
) -> Result<(Proc, String, reqwest::Client)> {
    let port = ohlcd::testkit::free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let sqlite = b.scratch.join(format!("{db}-progress.db"));
    let mut cmd = b.ohlcd_cmd(db, &sqlite, &["run"]);
    cmd.env("OHLCD_SERVER__LISTEN", format!("127.0.0.1:{port}"));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    say!("starting ohlcd run on {base} ...");
    let mut proc = Proc::spawn(&format!("run-{db}"), cmd, &b.scratch)?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(4)
        .build()?;
    let started = Instant::now();
    loop {
        if let Some(status) = proc.poll()? {
            let msg = format!(
                "ohlcd run exited at start-up with {status}; {}",
                proc.stderr_tail(10)
            );
            b.issue(msg.clone());
            bail!(msg);
        }
        if let Ok(resp) = client
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            && resp.status().is_success()
        {
            return Ok((proc, base, client));
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "ohlcd run: /healthz not 200 within 60s; {}",
                proc.stderr_tail(10)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ohlcd run` on the main data set: caught up, then chart latency and
/// ingest; stops the daemon with SIGTERM and checks that it exits cleanly.
pub(crate) async fn run(b: &mut Bench, r: &mut Results) -> Result<()> {
    let started = Instant::now();
    let db = b.db.clone();
    let (mut proc, base, client) = start_daemon(b, &db, &[]).await?;
    // /api/progress: every (symbol, resolution) completed.
    let want = b.args.symbols.len() * RESOLUTIONS.len();
    let deadline = Duration::from_secs(120 + b.args.trades / 50_000);
    let mut last = String::new();
    loop {
        if let Some(status) = proc.poll()? {
            let msg = format!(
                "ohlcd run exited with {status} while catching up; {}",
                proc.stderr_tail(10)
            );
            b.issue(msg.clone());
            bail!(msg);
        }
        if let Ok(resp) = client.get(format!("{base}/api/progress")).send().await
            && let Ok(v) = resp.json::<Value>().await
            && let Some(tasks) = v.as_array()
        {
            let ours: Vec<&Value> = tasks
                .iter()
                .filter(|t| {
                    t["symbol"]
                        .as_str()
                        .is_some_and(|s| b.args.symbols.iter().any(|x| x == s))
                })
                .collect();
            let done = ours.iter().filter(|t| t["status"] == "completed").count();
            last = format!("{done}/{want} tasks completed");
            if ours.len() >= want && done == ours.len() {
                break;
            }
            if let Some(f) = ours.iter().find(|t| t["status"] == "failed") {
                b.issue(format!("ohlcd run: task failed while catching up: {f}"));
            }
        }
        if started.elapsed() > deadline {
            bail!(
                "ohlcd run: not caught up within {}s ({last}); {}",
                deadline.as_secs(),
                proc.stderr_tail(10)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.caught_up = Some(started.elapsed());
    say!(
        "ohlcd run caught up after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    if let Err(e) = latency(b, &client, &base, r).await {
        b.fail("/udf/history latency", e);
    }
    if let Err(e) = ingest(b, &client, &base, r).await {
        b.fail("ingest throughput", e);
    }

    say!("stopping ohlcd run (SIGTERM) ...");
    match proc.terminate(Duration::from_secs(30)).await {
        Ok(status) if status.success() => {}
        Ok(status) => b.issue(format!(
            "ohlcd run exited with {status} on SIGTERM; {}",
            proc.stderr_tail(5)
        )),
        Err(e) => b.issue(format!("{e:#}")),
    }
    b.scan_log(&proc);
    Ok(())
}

/// `/udf/history` countback 1000 at the six resolutions, and 1h bars over
/// the data range (at most 30 days).
async fn latency(
    b: &mut Bench,
    client: &reqwest::Client,
    base: &str,
    r: &mut Results,
) -> Result<()> {
    let symbol = b.args.symbols[0].clone();
    for (res, udf, len) in RESOLUTIONS {
        let l = latency_one(b, client, base, &symbol, res, udf, len, 1000).await?;
        r.latency.push(l);
    }
    let bars = ((b.to - b.from) / (3_600 * NS)).clamp(1, 720);
    let l = latency_one(b, client, base, &symbol, "1h", "60", 3_600, bars).await?;
    r.h1_30d = Some(l);
    Ok(())
}

/// `countback` bars of `udf` before the end of the data from ohlcd (K timed
/// requests) and the same range aggregated on the fly by InfluxDB; checks
/// that both give the same bars.
#[allow(clippy::too_many_arguments)]
async fn latency_one(
    b: &mut Bench,
    client: &reqwest::Client,
    base: &str,
    symbol: &str,
    res: &'static str,
    udf: &'static str,
    len: i64,
    countback: i64,
) -> Result<Latency> {
    let to_s = b.to / NS;
    let url = format!(
        "{base}/udf/history?symbol={symbol}&resolution={udf}&to={to_s}&countback={countback}"
    );
    let k = b.args.latency_requests.max(1);
    let mut times = Vec::with_capacity(k);
    let mut first: Option<Bytes> = None;
    for i in 0..LATENCY_WARMUP + k {
        let started = Instant::now();
        let resp = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.bytes().await.with_context(|| format!("GET {url}"))?;
        let elapsed = started.elapsed();
        if !status.is_success() {
            let msg = format!(
                "GET {url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
            b.issue(msg.clone());
            bail!(msg);
        }
        if i >= LATENCY_WARMUP {
            times.push(elapsed);
        }
        if first.is_none() {
            first = Some(body);
        }
    }
    let udf_json: Value = serde_json::from_slice(first.as_deref().unwrap_or_default())
        .context("/udf/history answer is not JSON")?;
    if udf_json["s"] != "ok" {
        b.issue(format!("GET {url} answered {udf_json}"));
    }
    let bars = udf_json["t"].as_array().map_or(0, Vec::len);

    // The same chart from InfluxDB, aggregating raw trades on the fly.
    let start = b.to - countback * len * NS;
    let q = format!(
        "SELECT first(price), max(price), min(price), last(price), sum(amount) FROM trades \
         WHERE symbol = '{symbol}' AND time >= {start} AND time < {} GROUP BY time({res}) fill(none)",
        b.to
    );
    // Through ohlcd's own client (JSON, epoch ns): parsing a few hundred rows
    // costs well under a millisecond of the tens InfluxDB takes.
    let influx = b.influx.fail_fast(300, 0);
    let mut itimes = Vec::new();
    let mut answer: Option<Value> = None;
    let series_started = Instant::now();
    for i in 0..INFLUX_WARMUP + b.args.influx_requests.max(1) {
        let started = Instant::now();
        let v = influx
            .query_json(&q)
            .await
            .with_context(|| format!("InfluxDB on the fly: `{q}`"))?;
        let elapsed = started.elapsed();
        if i >= INFLUX_WARMUP {
            itimes.push(elapsed);
        }
        answer.get_or_insert(v);
        if itimes.len() >= 5 && series_started.elapsed() > INFLUX_SERIES_BUDGET {
            break;
        }
    }
    let answer = answer.unwrap_or_default();
    let influx_rows: Vec<&Value> = answer["series"][0]["values"]
        .as_array()
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    if let Some(diff) = compare_bars(&udf_json, &influx_rows, start / NS) {
        b.issue(format!(
            "/udf/history resolution {udf} countback {countback} differs from InfluxDB's GROUP BY time({res}): {diff}"
        ));
    }
    let (p50, p99) = (percentile(&mut times, 0.50), percentile(&mut times, 0.99));
    let (ip50, ip99) = (percentile(&mut itimes, 0.50), percentile(&mut itimes, 0.99));
    say!(
        "/udf/history {udf} ×{countback}: {bars} bars, p50 {:.2} ms, p99 {:.2} ms; InfluxDB on the fly: p50 {:.1} ms, p99 {:.1} ms ({} requests)",
        ms(p50),
        ms(p99),
        ms(ip50),
        ms(ip99),
        itimes.len()
    );
    Ok(Latency {
        udf,
        bars,
        p50,
        p99,
        influx_bars: influx_rows.len(),
        influx_p50: ip50,
        influx_p99: ip99,
        influx_n: itimes.len(),
    })
}

/// POST /api/trades against InfluxDB /write of the same trades (other
/// symbol), batch by batch, interleaved so both see the same conditions.
async fn ingest(
    b: &mut Bench,
    client: &reqwest::Client,
    base: &str,
    r: &mut Results,
) -> Result<()> {
    let n = b.args.ingest_trades.max(1);
    let batch = b.args.ingest_batch.max(1);
    // Times from 2 to 32 minutes ahead (the trade rule allows up to an
    // hour): new series, never late against a watermark, and untouched by
    // the daemon's ticks during the measurement.
    let now_ns = chrono::Utc::now()
        .timestamp_nanos_opt()
        .context("clock out of range")?;
    let from = now_ns + 120 * NS;
    let spec = GenerateSpec {
        symbols: vec![API_SYMBOL.to_string()],
        from,
        to: from + 1_800 * NS,
        trades: n,
        seed: 7,
    };
    spec.validate(now_ns / 1_000_000, &ohlcd::symbol::NameForm::default())
        .map_err(|e| anyhow!("ingest trades the API would refuse: {e}"))?;
    let trades: Vec<NewTrade> = Generator::new(&spec).collect();
    let api_bodies: Vec<Bytes> = trades
        .chunks(batch)
        .map(|b| {
            let items: Vec<Value> = b
                .iter()
                .map(|t| {
                    json!({
                        "symbol": t.symbol,
                        "price": t.price,
                        "amount": t.amount,
                        "side": t.side.as_str(),
                        "timestamp": t.time_ms,
                        "id": t.id,
                    })
                })
                .collect();
            serde_json::to_vec(&items).map(Bytes::from)
        })
        .collect::<Result<_, _>>()?;
    let lp_bodies: Vec<Bytes> = trades
        .chunks(batch)
        .map(|b| {
            let renamed: Vec<NewTrade> = b
                .iter()
                .map(|t| NewTrade {
                    symbol: WRITE_SYMBOL.to_string(),
                    ..t.clone()
                })
                .collect();
            Bytes::from(encode_trades(&renamed))
        })
        .collect();
    say!(
        "ingest: {n} trades in batches of {batch}: POST /api/trades ({API_SYMBOL}) vs InfluxDB /write ({WRITE_SYMBOL}), interleaved ..."
    );
    // Open both connections first.
    let _ = client.get(format!("{base}/udf/time")).send().await;
    let _ = b.influx.ping().await;
    let api_url = format!("{base}/api/trades");
    let (mut api, mut write) = (Duration::ZERO, Duration::ZERO);
    let (mut accepted, mut late) = (0u64, 0u64);
    for (i, (jb, lb)) in api_bodies.into_iter().zip(lp_bodies).enumerate() {
        let started = Instant::now();
        let resp = client
            .post(&api_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(jb)
            .send()
            .await
            .with_context(|| format!("POST {api_url}"))?;
        let status = resp.status();
        let body = resp.bytes().await?;
        api += started.elapsed();
        if !status.is_success() {
            let msg = format!(
                "POST /api/trades batch {i} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
            b.issue(msg.clone());
            bail!(msg);
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        accepted += v["accepted"].as_u64().unwrap_or(0);
        late += v["late"].as_u64().unwrap_or(0);
        let started = Instant::now();
        b.influx.write_trades(lb).await.context("InfluxDB /write")?;
        write += started.elapsed();
    }
    if accepted != n {
        b.issue(format!(
            "POST /api/trades accepted {accepted} of {n} trades"
        ));
    }
    if late != 0 {
        b.issue(format!(
            "POST /api/trades flagged {late} trades as late although they are newer than any watermark"
        ));
    }
    for symbol in [API_SYMBOL, WRITE_SYMBOL] {
        let count = b
            .scalar(
                &b.db,
                &format!(
                    "SELECT count(price) FROM trades WHERE symbol = '{symbol}' AND time >= {from}"
                ),
            )
            .await? as u64;
        if count != n {
            let msg = format!("after ingest, InfluxDB holds {count} trades of {symbol}, not {n}");
            if symbol == API_SYMBOL {
                b.issue(msg);
            } else {
                b.notes.push(msg);
            }
        }
    }
    say!(
        "ingest: API {} trades/s, InfluxDB /write {} trades/s",
        thousands(n as f64 / api.as_secs_f64()),
        thousands(n as f64 / write.as_secs_f64())
    );
    r.ingest = Some(Ingest {
        trades: n,
        batch,
        api,
        write,
    });
    Ok(())
}

/// Compares UDF bars (seconds) with InfluxDB rows `[t ns, o, h, l, c, v]` on
/// `t ≥ start` (seconds).
fn compare_bars(udf: &Value, rows: &[&Value], start: i64) -> Option<String> {
    let col = |k: &str| udf[k].as_array().cloned().unwrap_or_default();
    let (t, o, h, l, c, v) = (col("t"), col("o"), col("h"), col("l"), col("c"), col("v"));
    let mut ours: BTreeMap<i64, [f64; 6]> = BTreeMap::new();
    for (i, ts) in t.iter().enumerate() {
        let Some(ts) = ts.as_i64() else { continue };
        if ts < start {
            continue;
        }
        let g = |a: &[Value]| a.get(i).and_then(Value::as_f64).unwrap_or(f64::NAN);
        ours.insert(ts, [g(&o), g(&h), g(&l), g(&c), g(&v), 0.0]);
    }
    let mut theirs: BTreeMap<i64, [f64; 6]> = BTreeMap::new();
    for row in rows {
        let Some(ts) = row[0].as_i64().map(|t| t / NS) else {
            continue;
        };
        let g = |i: usize| row[i].as_f64().unwrap_or(f64::NAN);
        theirs.insert(ts, [g(1), g(2), g(3), g(4), g(5), 0.0]);
    }
    if ours.len() != theirs.len() {
        return Some(format!(
            "{} bars from ohlcd vs {} from InfluxDB in the range",
            ours.len(),
            theirs.len()
        ));
    }
    let bad: Vec<String> = ours
        .iter()
        .filter(|(ts, a)| theirs.get(ts).is_none_or(|b| !same_candle(a, b)))
        .take(3)
        .map(|(ts, a)| format!("t={ts}: ohlcd {a:?}, InfluxDB {:?}", theirs.get(ts)))
        .collect();
    (!bad.is_empty()).then(|| bad.join("; "))
}

//! The verdict, read once the faults have stopped and the system has
//! settled: InfluxDB's raw trades against the ledger, every stored candle
//! and every `/udf/history` bar against the oracle folded from those raw
//! trades, the progress table and its run history.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt};
use ohlcd::progress::{ProgressStore, Task, TaskStatus};
use ohlcd::times::{from_rfc3339, to_rfc3339};
use serde_json::Value;

use super::ledger::Sent;
use super::oracle::{Bar, Raw, Window, close, differs, fold};

const NS: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * NS;

/// Materialized resolutions: (task name and measurement suffix, window length).
pub(super) const STORED: [(&str, i64); 6] = [
    ("1m", 60 * NS),
    ("5m", 300 * NS),
    ("15m", 900 * NS),
    ("1h", 3_600 * NS),
    ("4h", 14_400 * NS),
    ("1d", DAY),
];

/// Resolutions `/udf/history` is checked at: the six stored ones and some it
/// re-aggregates.
pub(super) const HISTORY: [&str; 10] = ["1", "3", "5", "15", "30", "60", "120", "240", "1D", "1W"];

/// Findings of one kind: how many things were checked, what was wrong.
#[derive(Debug, Default, Clone)]
pub(super) struct Finding {
    pub checked: u64,
    pub wrong: u64,
    /// The first few differences, for the report.
    pub examples: Vec<String>,
}

impl Finding {
    fn bad(&mut self, what: String) {
        self.wrong += 1;
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }
}

/// What the data checks found.
#[derive(Debug, Default, Clone)]
pub(super) struct DataFindings {
    /// Acknowledged trades stored exactly once, with what was sent.
    pub acked: Finding,
    /// Trades never acknowledged: stored at most once (`checked`: how many
    /// of them were stored).
    pub unacked: Finding,
    /// Raw rows the harness never sent, or with fields missing.
    pub phantoms: Finding,
    /// Stored candles below each watermark against the oracle.
    pub candles: Finding,
    /// `/udf/history` bars against the oracle.
    pub history: Finding,
    /// Raw trades read back.
    pub raw_rows: u64,
}

impl DataFindings {
    /// A few examples of each kind of mismatch.
    pub(super) fn examples(&self) -> Vec<String> {
        [
            &self.acked,
            &self.unacked,
            &self.phantoms,
            &self.candles,
            &self.history,
        ]
        .iter()
        .flat_map(|f| f.examples.iter().take(3).cloned())
        .collect()
    }

    pub(super) fn mismatches(&self) -> u64 {
        self.acked.wrong
            + self.unacked.wrong
            + self.phantoms.wrong
            + self.candles.wrong
            + self.history.wrong
    }
}

/// Reads InfluxDB directly (never through the proxy).
pub(super) struct Reader {
    pub http: reqwest::Client,
    pub influx_url: String,
    pub database: String,
}

impl Reader {
    /// Rows (`[time, …]`) of an InfluxQL query's single series, chunked
    /// answers merged.
    pub(super) async fn rows(&self, q: &str) -> Result<Vec<Vec<Value>>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.rows_once(q).await {
                Ok(rows) => return Ok(rows),
                Err(e) if attempt >= 5 => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    async fn rows_once(&self, q: &str) -> Result<Vec<Vec<Value>>> {
        let body = self
            .http
            .get(format!("{}/query", self.influx_url))
            .query(&[
                ("db", self.database.as_str()),
                ("q", q),
                ("epoch", "ns"),
                ("chunked", "true"),
                ("chunk_size", "10000"),
            ])
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let mut rows = Vec::new();
        for chunk in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
            let chunk = chunk.context("InfluxDB answer is not JSON")?;
            for result in chunk["results"].as_array().into_iter().flatten() {
                if let Some(e) = result["error"].as_str() {
                    bail!("InfluxDB: {e} ({q})");
                }
                for series in result["series"].as_array().into_iter().flatten() {
                    for row in series["values"].as_array().into_iter().flatten() {
                        rows.push(row.as_array().cloned().unwrap_or_default());
                    }
                }
            }
        }
        Ok(rows)
    }

    /// Every raw trade of `symbol`: (trade, side tag as stored). Rows with a
    /// field missing are returned as errors in the second list.
    pub(super) async fn raw(&self, symbol: &str) -> Result<(Vec<(Raw, String)>, Vec<String>)> {
        let q = format!("SELECT price, amount, id, side FROM trades WHERE symbol = '{symbol}'");
        let mut trades = Vec::new();
        let mut broken = Vec::new();
        for row in self.rows(&q).await? {
            let parsed = (|| {
                Some((
                    Raw {
                        time: row.first()?.as_i64()?,
                        price: row.get(1)?.as_f64()?,
                        amount: row.get(2)?.as_f64()?,
                        id: row.get(3)?.as_i64()?,
                        buy: row.get(4)?.as_str()? == "buy",
                    },
                    row.get(4)?.as_str()?.to_string(),
                ))
            })();
            match parsed {
                Some(t) => trades.push(t),
                None => broken.push(format!("{symbol}: incomplete raw row {row:?}")),
            }
        }
        Ok((trades, broken))
    }

    /// Stored candles of `symbol` in `ohlc_<res>`, by window start.
    pub(super) async fn candles(&self, res: &str, symbol: &str) -> Result<BTreeMap<i64, Bar>> {
        let q = format!(
            "SELECT open, high, low, close, volume, quote_volume, trades, buy_volume \
             FROM ohlc_{res} WHERE symbol = '{symbol}'"
        );
        let mut out = BTreeMap::new();
        for row in self.rows(&q).await? {
            let f = |i: usize| row.get(i).and_then(Value::as_f64).unwrap_or(f64::NAN);
            let start = row
                .first()
                .and_then(Value::as_i64)
                .ok_or_else(|| anyhow!("candle without time: {row:?}"))?;
            out.insert(
                start,
                Bar {
                    open: f(1),
                    high: f(2),
                    low: f(3),
                    close: f(4),
                    volume: f(5),
                    quote_volume: f(6),
                    trades: row.get(7).and_then(Value::as_i64).unwrap_or(-1),
                    buy_volume: f(8),
                },
            );
        }
        Ok(out)
    }
}

/// Everything the data checks need.
pub(super) struct DataCheck<'a> {
    pub reader: &'a Reader,
    pub http: &'a reqwest::Client,
    pub daemons: &'a [String],
    pub symbols: &'a [String],
    /// Every trade sent, by symbol and id.
    pub sent: &'a HashMap<String, HashMap<i64, Sent>>,
    /// Watermark of every (symbol, resolution name).
    pub watermarks: HashMap<(String, String), i64>,
    /// `/udf/history` is asked from here (Unix s).
    pub from_secs: i64,
}

/// One symbol's findings (merged by [`DataCheck::run`]).
async fn check_symbol(c: &DataCheck<'_>, i: usize) -> Result<DataFindings> {
    let symbol = &c.symbols[i];
    let mut f = DataFindings::default();
    let (raw, broken) = c.reader.raw(symbol).await?;
    f.raw_rows = raw.len() as u64;
    for b in broken {
        f.phantoms.bad(b);
    }
    // The ledger: acknowledged trades exactly once, as sent; others at most
    // once; nothing that was never sent.
    let mut by_id: HashMap<i64, Vec<&(Raw, String)>> = HashMap::new();
    for r in &raw {
        by_id.entry(r.0.id).or_default().push(r);
    }
    let empty = HashMap::new();
    let sent_here = c.sent.get(symbol).unwrap_or(&empty);
    let s = symbol;
    for (id, sent) in sent_here {
        let stored = by_id.get(id).map_or(&[][..], Vec::as_slice);
        let t = &sent.trade;
        if sent.acked {
            f.acked.checked += 1;
        } else if !stored.is_empty() {
            f.unacked.checked += 1;
        }
        let target = if sent.acked {
            &mut f.acked
        } else {
            &mut f.unacked
        };
        match stored {
            [] if sent.acked => target.bad(format!(
                "{s} id {id} ({:?}{}, {} ms) acknowledged but not stored",
                sent.path,
                if sent.late { ", late" } else { "" },
                t.time_ms
            )),
            [] => {}
            [(r, side)] => {
                if r.time.div_euclid(1_000_000) != t.time_ms
                    || r.price != t.price
                    || r.amount != t.amount
                    || side != t.side.as_str()
                {
                    target.bad(format!("{s} id {id}: stored {r:?} {side}, sent {t:?}"));
                }
            }
            more => target.bad(format!("{s} id {id} stored {} times", more.len())),
        }
    }
    for (id, rows) in &by_id {
        if !sent_here.contains_key(id) {
            f.phantoms.bad(format!(
                "{symbol} id {id}: {} row(s) never sent",
                rows.len()
            ));
        }
    }
    let trades: Vec<Raw> = raw.iter().map(|r| r.0).collect();

    // Stored candles below each watermark equal the oracle; none above it.
    for (res, len) in STORED {
        let oracle = fold(&trades, Window::Fixed(len));
        let stored = c.reader.candles(res, symbol).await?;
        let Some(&w) = c.watermarks.get(&(symbol.clone(), res.to_string())) else {
            f.candles.bad(format!("{symbol} {res}: no watermark"));
            continue;
        };
        for (start, want) in oracle.range(..w) {
            f.candles.checked += 1;
            match stored.get(start) {
                None => f.candles.bad(format!(
                    "{symbol} {res} {}: missing ({} trades)",
                    to_rfc3339(*start),
                    want.trades
                )),
                Some(got) => {
                    if let Some(d) = differs(got, want) {
                        f.candles
                            .bad(format!("{symbol} {res} {}: {d}", to_rfc3339(*start)));
                    }
                }
            }
        }
        for start in stored.keys() {
            if *start >= w {
                f.candles.bad(format!(
                    "{symbol} {res} {}: stored at or past the watermark {}",
                    to_rfc3339(*start),
                    to_rfc3339(w)
                ));
            } else if !oracle.contains_key(start) {
                f.candles.bad(format!(
                    "{symbol} {res} {}: stored, but no trade in the window",
                    to_rfc3339(*start)
                ));
            }
        }
    }

    // /udf/history at each resolution equals the oracle, open bars included.
    let to = chrono::Utc::now().timestamp() + 120;
    for (k, res) in HISTORY.iter().enumerate() {
        let window = Window::of_udf(res).expect("listed");
        let oracle = fold(&trades, window);
        let base = &c.daemons[(i + k) % c.daemons.len()];
        let url = format!(
            "{base}/udf/history?symbol={symbol}&resolution={res}&from={}&to={to}",
            c.from_secs
        );
        let v = get_json(c.http, &url).await?;
        let bars = udf_bars(&v).map_err(|e| anyhow!("GET {url}: {e}"))?;
        let want: Vec<(i64, &Bar)> = oracle
            .iter()
            .filter(|(t, _)| **t >= c.from_secs * NS && **t < to * NS)
            .map(|(t, b)| (*t / NS, b))
            .collect();
        f.history.checked += want.len() as u64;
        if bars.len() != want.len() {
            f.history.bad(format!(
                "{symbol} {res}: {} bars answered, {} in the oracle",
                bars.len(),
                want.len()
            ));
        }
        let answered: HashMap<i64, [f64; 5]> = bars.into_iter().collect();
        for (t, b) in want {
            match answered.get(&t) {
                None => f.history.bad(format!("{symbol} {res} t={t}: bar missing")),
                Some(a) => {
                    if a[0] != b.open
                        || a[1] != b.high
                        || a[2] != b.low
                        || a[3] != b.close
                        || !close(a[4], b.volume)
                    {
                        f.history.bad(format!(
                            "{symbol} {res} t={t}: answered {a:?}, oracle {b:?}"
                        ));
                    }
                }
            }
        }
    }
    Ok(f)
}

impl DataCheck<'_> {
    /// Every symbol, a few at a time.
    pub(super) async fn run(&self) -> Result<DataFindings> {
        let per_symbol: Vec<DataFindings> = futures_util::stream::iter(0..self.symbols.len())
            .map(|i| check_symbol(self, i))
            .buffer_unordered(2)
            .try_collect()
            .await?;
        let mut all = DataFindings::default();
        for f in per_symbol {
            all.raw_rows += f.raw_rows;
            for (into, from) in [
                (&mut all.acked, f.acked),
                (&mut all.unacked, f.unacked),
                (&mut all.phantoms, f.phantoms),
                (&mut all.candles, f.candles),
                (&mut all.history, f.history),
            ] {
                into.checked += from.checked;
                into.wrong += from.wrong;
                for e in from.examples {
                    if into.examples.len() < 5 {
                        into.examples.push(e);
                    }
                }
            }
        }
        Ok(all)
    }
}

/// GET with a few retries on 5xx and connection errors (a busy server may
/// shed a heavy request with a 503).
async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value> {
    let mut last = String::new();
    for _ in 0..10 {
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                return r.json().await.with_context(|| format!("GET {url}"));
            }
            Ok(r) if r.status().is_server_error() => {
                last = format!("{} {}", r.status(), r.text().await.unwrap_or_default());
            }
            Ok(r) => bail!(
                "GET {url}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    bail!("GET {url}: {last}")
}

/// `(t, [o, h, l, c, v])` of a `/udf/history` answer (none for no_data).
fn udf_bars(v: &Value) -> Result<Vec<(i64, [f64; 5])>, String> {
    match v["s"].as_str() {
        Some("no_data") => return Ok(Vec::new()),
        Some("ok") => {}
        _ => return Err(format!("answered {v}")),
    }
    let col = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let t = col("t");
    let cols = [col("o"), col("h"), col("l"), col("c"), col("v")];
    (0..t.len())
        .map(|i| {
            let ts = t[i].as_i64().ok_or("time not an integer")?;
            let mut bar = [0.0; 5];
            for (k, c) in cols.iter().enumerate() {
                bar[k] = c.get(i).and_then(Value::as_f64).ok_or("short column")?;
            }
            Ok((ts, bar))
        })
        .collect()
}

/// What the progress table says after settling.
#[derive(Debug, Default, Clone)]
pub(super) struct TableFindings {
    pub tasks: u64,
    /// Tasks left running or failed.
    pub stuck: Finding,
    /// Tasks whose forward run history does not tile its range exactly.
    pub tiling: Finding,
    /// History rows (chunk runs) read.
    pub runs: u64,
}

/// Checks every task: not running or failed, and its `chunk` runs tile
/// `[midnight before its first trade, watermark)` with no gap or overlap
/// (`first_trade`: each symbol's first trade when the daemons started).
pub(super) async fn check_table(
    store: &ProgressStore,
    first_trade: &HashMap<String, i64>,
) -> Result<TableFindings> {
    let mut f = TableFindings::default();
    let tasks: Vec<Task> = store.tasks().await?;
    f.tasks = tasks.len() as u64;
    for task in &tasks {
        let what = format!("{} {}", task.symbol, task.resolution.name());
        f.stuck.checked += 1;
        if matches!(task.status, TaskStatus::Running | TaskStatus::Failed) {
            f.stuck.bad(format!(
                "{what}: {} ({})",
                task.status.as_str(),
                task.last_error.as_deref().unwrap_or("")
            ));
        }
        f.tiling.checked += 1;
        let mut runs = store.runs(&task.symbol, task.resolution, i64::MAX).await?;
        runs.retain(|r| r.kind == "chunk" && r.status == "ok");
        runs.reverse();
        f.runs += runs.len() as u64;
        let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
            f.tiling.bad(format!("{what}: no chunk run"));
            continue;
        };
        let begin = first_trade
            .get(&task.symbol)
            .map(|t| t.div_euclid(DAY) * DAY);
        let start = from_rfc3339(&first.range_start).map_err(anyhow::Error::msg)?;
        if begin != Some(start) {
            f.tiling.bad(format!(
                "{what}: history starts at {}, not at the midnight before the first trade",
                first.range_start
            ));
        }
        if let Some(pair) = runs.windows(2).find(|p| p[0].range_end != p[1].range_start) {
            f.tiling.bad(format!(
                "{what}: {} .. {} then {} .. {} (gap or overlap)",
                pair[0].range_start, pair[0].range_end, pair[1].range_start, pair[1].range_end
            ));
        }
        if Some(last.range_end.clone()) != task.watermark.map(to_rfc3339) {
            f.tiling.bad(format!(
                "{what}: history ends at {}, watermark {:?}",
                last.range_end,
                task.watermark.map(to_rfc3339)
            ));
        }
    }
    Ok(f)
}

/// Settled: every task there, completed, unleased, its 1m watermark at
/// least `until`, no late range pending. `Err` says what is not yet so.
pub(super) async fn settled(
    store: &ProgressStore,
    symbols: &[String],
    until: i64,
) -> Result<HashMap<(String, String), i64>, String> {
    let tasks = store.tasks().await.map_err(|e| e.to_string())?;
    if tasks.len() != symbols.len() * STORED.len() {
        return Err(format!(
            "{} tasks, {} expected",
            tasks.len(),
            symbols.len() * STORED.len()
        ));
    }
    let mut watermarks = HashMap::new();
    let (mut busy, mut behind) = (0, 0);
    for t in &tasks {
        if t.status != TaskStatus::Completed || t.lease_owner.is_some() {
            busy += 1;
        }
        if t.resolution.name() == "1m" && t.watermark.is_none_or(|w| w < until) {
            behind += 1;
        }
        if let Some(w) = t.watermark {
            watermarks.insert((t.symbol.clone(), t.resolution.name().to_string()), w);
        }
    }
    let dirty = store
        .dirty_of(symbols)
        .await
        .map_err(|e| e.to_string())?
        .len();
    if busy + behind + dirty > 0 {
        return Err(format!(
            "{busy} tasks not completed or still leased, {behind} 1m watermarks before {}, {dirty} symbols with late ranges pending",
            to_rfc3339(until)
        ));
    }
    Ok(watermarks)
}

//! Trades as other writers store them, read where they are (`[schema]`): the
//! original POC (`trade`, side a tag, a `source` tag, no id, ns holding whole
//! ms), cryptofeed (one measurement per exchange, side and id string fields,
//! written at µs precision), and a collector keyed by exchange and symbol with
//! Binance's `is_buyer_maker` and an integer `trade_id`. Each format is written
//! here byte for byte as its writer writes it, backfilled, and every candle at
//! every resolution compared with an oracle computed here from the rows
//! written; the datafeed serves the instruments under their names; `ohlcd
//! schema` says what it found; ohlcd then writes trades of its own into the
//! same schema and reads them back. On influxd 1.x and InfluxDB 3.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use ohlcd::candle::{Candle, NANOS_PER_DAY, NANOS_PER_SEC, Resolution, SkipReason};
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::influx::TradeRead;
use ohlcd::ingest::{NewTrade, write_trades};
use ohlcd::schema::{SchemaSettings, TradeSchema};
use serde_json::Value;

use crate::helpers::{RawTrade, TestApp, assert_candles_eq, naive_candles, on_both_servers, t};
use crate::http::get;

const MINUTE: i64 = 60 * NANOS_PER_SEC;

/// A small deterministic generator (xorshift64*), apart from ohlcd's.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One row as the test writes it.
#[derive(Debug, Clone)]
struct Row {
    /// The instrument's name (`BTCUSD`, `COINBASE:BTC-USD`, `binance:BTCUSDT`).
    name: String,
    /// Point time, ns.
    time: i64,
    price: f64,
    amount: f64,
    /// Taker buy.
    buy: bool,
    /// Trade id (0 where the format has none).
    id: i64,
    /// Written as a row that cannot make a trade: left out of the oracle.
    bad: Option<SkipReason>,
}

/// The three writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Poc,
    Cryptofeed,
    Binance,
}

impl Format {
    /// `[schema]` for this format, as a user would set it in the environment.
    fn env(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Format::Poc => vec![
                ("OHLCD_SCHEMA__TRADES_MEASUREMENT", "trade"),
                ("OHLCD_SCHEMA__ID_FIELD", ""),
            ],
            Format::Cryptofeed => vec![("OHLCD_SCHEMA__TRADES_MEASUREMENT", "trades-{exchange}")],
            Format::Binance => vec![
                ("OHLCD_SCHEMA__SYMBOL_TAGS", "exchange,symbol"),
                ("OHLCD_SCHEMA__AMOUNT_FIELD", "qty"),
                ("OHLCD_SCHEMA__SIDE", "is_buyer_maker"),
                ("OHLCD_SCHEMA__SIDE_BUY", "false"),
                ("OHLCD_SCHEMA__SIDE_SELL", "true"),
                ("OHLCD_SCHEMA__ID_FIELD", "trade_id"),
            ],
        }
    }

    fn schema(self) -> TradeSchema {
        let env: Vec<(String, String)> = self
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = ohlcd::config::Settings::load_with_env(None, env).unwrap();
        TradeSchema::from_settings(&settings.schema).unwrap()
    }

    /// The instruments the writer has.
    fn names(self) -> &'static [&'static str] {
        match self {
            Format::Poc => &["BTCUSD", "ETHUSD"],
            Format::Cryptofeed => &["BINANCE:BTC-USDT", "COINBASE:BTC-USD", "COINBASE:ETH-USD"],
            Format::Binance => &["binance:BTCUSDT", "binance:ETHUSDT", "kraken:XBTUSD"],
        }
    }

    /// One unit of the writer's time precision, ns.
    fn unit(self) -> i64 {
        match self {
            Format::Poc => 1_000_000,
            Format::Cryptofeed => 1_000,
            Format::Binance => 1,
        }
    }

    /// The `/write` precision the writer's times are in (`u`: 1.x knows no `us`).
    fn precision(self) -> &'static str {
        match self {
            Format::Poc | Format::Binance => "ns",
            Format::Cryptofeed => "u",
        }
    }

    fn has_id(self) -> bool {
        self != Format::Poc
    }

    /// The row as its writer writes it.
    fn line(self, r: &Row, k: usize) -> String {
        let side = if r.buy { "buy" } else { "sell" };
        // In the unit of the write's precision.
        let stamp = match self.precision() {
            "u" => r.time / 1_000,
            _ => r.time,
        };
        match self {
            // influxdb-client-js: tags and fields sorted, the source from
            // defaultTags, `floatField` as String(value), ns of whole ms.
            Format::Poc => {
                let source = if k.is_multiple_of(3) {
                    "trade-generator-2022"
                } else {
                    "tradingview-poc"
                };
                let fields = match r.bad {
                    Some(SkipReason::MissingPrice) => format!("amount={}", r.amount),
                    None => format!("amount={},price={}", r.amount, r.price),
                    Some(other) => unreachable!("{other:?}"),
                };
                format!(
                    "trade,side={side},source={source},symbol={} {fields} {stamp}",
                    r.name
                )
            }
            // cryptofeed's TradeInflux: measurement per exchange, quoted side,
            // id and type, float seconds, the receipt time at µs.
            Format::Cryptofeed => {
                let (exchange, symbol) = r.name.split_once(':').unwrap();
                let receipt = r.time as f64 / 1e9;
                let exchange_time = (r.time - 2_000_000) as f64 / 1e9;
                let side = match r.bad {
                    Some(SkipReason::UnknownSide) => "None",
                    _ => side,
                };
                format!(
                    "trades-{exchange},symbol={symbol} side=\"{side}\",price={},amount={},id=\"{}\",type=\"None\",timestamp={exchange_time:.3},receipt_timestamp={receipt:.6} {stamp}",
                    r.price, r.amount, r.id
                )
            }
            Format::Binance => {
                let (exchange, symbol) = r.name.split_once(':').unwrap();
                let maker = if r.buy { "false" } else { "true" };
                match r.bad {
                    Some(SkipReason::UnknownSide) => format!(
                        "trades,exchange={exchange},symbol={symbol} price={},qty={},trade_id={}i {stamp}",
                        r.price, r.amount, r.id
                    ),
                    Some(SkipReason::NotPositive) => format!(
                        "trades,exchange={exchange},symbol={symbol} price={},qty=0,is_buyer_maker={maker},trade_id={}i {stamp}",
                        r.price, r.id
                    ),
                    None => format!(
                        "trades,exchange={exchange},symbol={symbol} price={},qty={},is_buyer_maker={maker},trade_id={}i {stamp}",
                        r.price, r.amount, r.id
                    ),
                    Some(other) => unreachable!("{other:?}"),
                }
            }
        }
    }

    /// Rows that cannot make a trade, one per reason the format can hold.
    fn bad_reasons(self) -> &'static [SkipReason] {
        match self {
            Format::Poc => &[SkipReason::MissingPrice],
            Format::Cryptofeed => &[SkipReason::UnknownSide],
            // A row without `is_buyer_maker`: InfluxDB 3's InfluxQL drops
            // rows in a boolean disjunction, so this checks the count there.
            Format::Binance => &[SkipReason::UnknownSide, SkipReason::NotPositive],
        }
    }
}

const FROM: &str = "2024-03-01T00:00:00Z";
/// Not day-aligned: the last day is open for every resolution.
const TO: &str = "2024-03-02T13:37:00Z";

/// The rows of `format`: per instrument `n` trades at distinct times of the
/// writer's precision in [FROM, TO), a random walk of prices, and, in the last
/// minutes (inside the lookback), one bad row per reason the format can hold.
fn rows(format: Format, n: usize) -> Vec<Row> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ format as u64);
    let (from, to) = (t(FROM), t(TO));
    let mut out = Vec::new();
    for (i, name) in format.names().iter().enumerate() {
        let mut times: Vec<i64> = (0..n)
            .map(|_| {
                let span = ((to - from) / format.unit()) as u64;
                from + rng.below(span) as i64 * format.unit()
            })
            .collect();
        // The last minute holds a few trades: the open bar of a live stream.
        times.extend((1..=3).map(|k| to - k * 7 * NANOS_PER_SEC));
        times.sort_unstable();
        times.dedup();
        let mut price = 100.0 * (i + 1) as f64;
        for (k, time) in times.into_iter().enumerate() {
            price = ((price * (1.0 + (rng.below(201) as f64 - 100.0) / 20_000.0)) * 100.0).round()
                / 100.0;
            out.push(Row {
                name: name.to_string(),
                time,
                price,
                amount: (1 + rng.below(5000)) as f64 / 1000.0,
                buy: rng.below(2) == 0,
                id: if format.has_id() {
                    5_000_000_000 + (i * 100_000 + k) as i64
                } else {
                    0
                },
                bad: None,
            });
        }
        // Bad rows a few minutes before the end, at times no trade has.
        for (j, reason) in format.bad_reasons().iter().enumerate() {
            out.push(Row {
                name: name.to_string(),
                time: to
                    - 3 * MINUTE
                    - (j as i64 + 1) * 1_000 * format.unit()
                    - 1_000 * format.unit() / 2,
                price: 1.0,
                amount: 1.0,
                buy: true,
                id: if format.has_id() {
                    9_000_000 + j as i64
                } else {
                    0
                },
                bad: Some(*reason),
            });
        }
    }
    out
}

/// Posts `lines` to `/write` at `precision`, as the writer does.
async fn write_lines(app: &TestApp, lines: &[String], precision: &str) {
    let http = reqwest::Client::new();
    for chunk in lines.chunks(5_000) {
        let resp = http
            .post(format!(
                "{}/write?db={}&precision={precision}",
                app.server.url,
                app.influx.database()
            ))
            .body(chunk.join("\n"))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(
            status.is_success(),
            "{status}: {}",
            resp.text().await.unwrap()
        );
    }
}

/// Per name, the trades of `rows` as `(time, id, price, amount, is_buy)` by
/// (time, id): bad rows left out.
fn trades_by_name(rows: &[Row]) -> BTreeMap<String, Vec<RawTrade>> {
    let mut out: BTreeMap<String, Vec<RawTrade>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.bad.is_none()) {
        out.entry(r.name.clone())
            .or_default()
            .push((r.time, r.id, r.price, r.amount, r.buy));
    }
    for trades in out.values_mut() {
        trades.sort_by_key(|t| (t.0, t.1));
    }
    out
}

/// Stored candles of `measurement`, per instrument name (its `tags` joined
/// with `:`), read back over JSON.
async fn stored_candles(
    app: &TestApp,
    measurement: &str,
    tags: &[&str],
) -> BTreeMap<String, Vec<Candle>> {
    let columns: Vec<String> = tags.iter().map(|t| format!("\"{t}\"")).collect();
    let rows = app
        .rows(&format!(
            "SELECT open, high, low, close, volume, quote_volume, trades, buy_volume, {} FROM \"{measurement}\"",
            columns.join(", ")
        ))
        .await;
    let mut out: BTreeMap<String, Vec<Candle>> = BTreeMap::new();
    for r in rows {
        let name = tags
            .iter()
            .map(|t| r[*t].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(":");
        out.entry(name).or_default().push(Candle {
            start: r["time"].as_i64().unwrap(),
            open: r["open"].as_f64().unwrap(),
            high: r["high"].as_f64().unwrap(),
            low: r["low"].as_f64().unwrap(),
            close: r["close"].as_f64().unwrap(),
            volume: r["volume"].as_f64().unwrap(),
            quote_volume: r["quote_volume"].as_f64().unwrap(),
            trades: r["trades"].as_i64().unwrap(),
            buy_volume: r["buy_volume"].as_f64().unwrap(),
        });
    }
    for candles in out.values_mut() {
        candles.sort_by_key(|c| c.start);
    }
    out
}

/// The tags candles carry in `format`.
fn candle_tags(format: Format) -> &'static [&'static str] {
    match format {
        Format::Poc => &["symbol"],
        Format::Cryptofeed | Format::Binance => &["exchange", "symbol"],
    }
}

/// Every stored candle of every resolution equals the oracle of `trades`
/// below each resolution's watermark (the 1m watermark `w1` floored to it).
async fn assert_candles_exact(
    app: &TestApp,
    format: Format,
    trades: &BTreeMap<String, Vec<RawTrade>>,
    w1: i64,
) {
    let schema = format.schema();
    for res in Resolution::ALL {
        let w = res.window_start(w1);
        let stored =
            stored_candles(app, &schema.candle_measurement(res), candle_tags(format)).await;
        for (name, raw) in trades {
            let len = res.nanos();
            let expected: Vec<Candle> = naive_candles(raw, |t| t.div_euclid(len) * len)
                .into_iter()
                .filter(|c| c.start + len <= w)
                .collect();
            assert!(
                !expected.is_empty() || res == Resolution::D1,
                "{name} {res}: nothing to compare"
            );
            let got: Vec<Candle> = stored
                .get(name)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.start + len <= w)
                .collect();
            assert_candles_eq(&got, &expected, &format!("{format:?} {name} {res}"));
        }
    }
}

/// The first event of a live stream.
async fn first_live_bar(url: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                // SSE fields: `name:value`, one space after the colon optional.
                let field = |name: &str| {
                    block.lines().find_map(|l| {
                        let v = l.strip_prefix(name)?.strip_prefix(':')?;
                        Some(v.strip_prefix(' ').unwrap_or(v).to_string())
                    })
                };
                if let Some(data) = field("data") {
                    assert_eq!(field("event").as_deref(), Some("bar"), "{block}");
                    return serde_json::from_str::<Value>(&data).unwrap();
                }
            }
        }
        panic!("stream ended")
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no event within 20 s")
}

fn close_to(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-12
}

/// Backfills `format` as its writer wrote it and checks candles, the
/// datafeed, the lookback and `ohlcd schema`; then a generate → backfill
/// round trip through ohlcd's own writes into the same schema.
async fn a_writers_trades_become_exact_candles(mut app: TestApp, format: Format) {
    let rows = rows(format, 400);
    let lines: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(k, r)| format.line(r, k))
        .collect();
    write_lines(&app, &lines, format.precision()).await;
    let schema = format.schema();
    app.influx.resolve_schema(&schema).await.unwrap();
    let trades = trades_by_name(&rows);
    let names: Vec<String> = trades.keys().cloned().collect();
    assert_eq!(
        app.influx.symbols().await.unwrap(),
        names,
        "instruments found by their names"
    );

    // Live, before any candle: the open day bar from raw trades.
    let last = rows.iter().map(|r| r.time).max().unwrap();
    app.clock.set(last + 2 * MINUTE);
    let (url, _stop) = app.serve().await;
    let day = Resolution::D1.window_start(last);
    for name in &names {
        let bar = first_live_bar(&format!("{url}/api/live?symbol={name}&resolution=1D")).await;
        let expected = naive_candles(&trades[name], |t| {
            t.div_euclid(NANOS_PER_DAY) * NANOS_PER_DAY
        })
        .into_iter()
        .find(|c| c.start == day)
        .unwrap();
        assert_eq!(
            bar["time"].as_i64().unwrap() * NANOS_PER_SEC,
            day,
            "{name}: {bar}"
        );
        assert_eq!(
            (
                bar["open"].as_f64(),
                bar["close"].as_f64(),
                bar["trades"].as_i64()
            ),
            (
                Some(expected.open),
                Some(expected.close),
                Some(expected.trades)
            ),
            "{format:?} {name} live: {bar}"
        );
        assert!(
            close_to(bar["buy_volume"].as_f64().unwrap(), expected.buy_volume),
            "{name}: {bar}"
        );
    }

    // Backfill, then a lookback over the bad rows' minutes: they are skipped
    // and counted, never taken for trades missing from their candles.
    let engine = app.engine("a");
    let report = engine.tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    app.clock.set(last + 2 * MINUTE + 61 * NANOS_PER_SEC);
    let report = engine.tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let tasks = app.store.tasks().await.unwrap();
    let w1 = |name: &str| {
        tasks
            .iter()
            .find(|t| t.symbol == name && t.resolution == Resolution::M1)
            .and_then(|t| t.watermark)
            .unwrap_or_else(|| panic!("{name} has a 1m watermark"))
    };
    let bad_per_name = format.bad_reasons().len() as i64;
    for name in &names {
        let task = tasks
            .iter()
            .find(|t| t.symbol == *name && t.resolution == Resolution::M1)
            .unwrap();
        assert_eq!(
            task.rows_skipped, bad_per_name,
            "{name}: each bad row counted once"
        );
        let repairs: Vec<_> = app
            .store
            .runs(name, Resolution::M1, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.kind != "chunk")
            .collect();
        assert!(
            repairs.is_empty(),
            "{name}: bad rows set off repairs: {repairs:?}"
        );
    }
    let w = names.iter().map(|n| w1(n)).min().unwrap();
    assert!(w > last - 3 * MINUTE, "the watermarks passed the bad rows");
    assert_candles_exact(&app, format, &trades, w).await;
    // Candles carry the trades' tags (and the exchange of a measurement name).
    let keys = app
        .rows(&format!(
            "SHOW TAG KEYS FROM \"{}\"",
            schema.candle_measurement(Resolution::M1)
        ))
        .await;
    let keys: Vec<&str> = keys.iter().map(|r| r["tagKey"].as_str().unwrap()).collect();
    assert_eq!(keys, candle_tags(format), "candle tags");

    // The datafeed: every day and hour bar, stored and open, under the name.
    for name in &names {
        for (resolution, len) in [("1D", NANOS_PER_DAY), ("60", 60 * MINUTE)] {
            let (status, v) = get(&format!(
                "{url}/udf/history?symbol={name}&resolution={resolution}&from={}&to={}",
                t(FROM) / NANOS_PER_SEC,
                (last + NANOS_PER_DAY) / NANOS_PER_SEC
            ))
            .await;
            assert_eq!((status, v["s"].as_str()), (200, Some("ok")), "{name}: {v}");
            let expected = naive_candles(&trades[name], |t| t.div_euclid(len) * len);
            let got_t: Vec<i64> = v["t"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            let want_t: Vec<i64> = expected.iter().map(|c| c.start / NANOS_PER_SEC).collect();
            assert_eq!(got_t, want_t, "{format:?} {name} {resolution}: bar times");
            for (i, c) in expected.iter().enumerate() {
                let at = |k: &str| v[k][i].as_f64().unwrap();
                assert_eq!(
                    (at("o"), at("h"), at("l"), at("c")),
                    (c.open, c.high, c.low, c.close),
                    "{name} {resolution} bar {i}"
                );
                assert!(close_to(at("v"), c.volume), "{name} {resolution} bar {i}");
            }
        }
        let (status, info) = get(&format!("{url}/udf/symbols?symbol={name}")).await;
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["ticker"], name.as_str());
        let exchange = match name.split_once(':') {
            Some((exchange, _)) => exchange.to_string(),
            None => "ohlcd".to_string(),
        };
        assert_eq!(info["exchange"], exchange.as_str(), "{info}");
    }

    schema_command_says_what_it_found(&app, format, &rows).await;
    round_trip_through_ohlcds_own_writes(&app, format, &url).await;
}

/// `ohlcd schema`: the measurements with tags and typed fields, how each name
/// was found, the symbols, the first and last trade, five rows as read.
async fn schema_command_says_what_it_found(app: &TestApp, format: Format, rows: &[Row]) {
    let mut cmd = app.ohlcd();
    cmd.arg("schema");
    for (k, v) in format.env() {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |line: &str| {
        assert!(
            stdout.lines().any(|l| l.trim() == line),
            "no line {line:?} in:\n{stdout}"
        );
    };
    match format {
        Format::Poc => {
            has("measurement \"trade\"");
            has("tags: side, source, symbol");
            has("fields: amount (a float field), price (a float field)");
            has("side: side: a tag, taker buy = \"buy\", taker sell = \"sell\"");
            has("id_field: none: trades of equal time keep the order InfluxDB returns");
        }
        Format::Cryptofeed => {
            has("measurement \"trades-BINANCE\"");
            has("measurement \"trades-COINBASE\"");
            has("tags: symbol");
            has(
                "fields: amount (a float field), id (a string field), price (a float field), receipt_timestamp (a float field), side (a string field), timestamp (a float field), type (a string field)",
            );
            has("side: side: a string field, taker buy = \"buy\", taker sell = \"sell\"");
            has("id_field: id: a string field");
        }
        Format::Binance => {
            has("measurement \"trades\"");
            has("tags: exchange, symbol");
            has(
                "fields: is_buyer_maker (a boolean field), price (a float field), qty (a float field), trade_id (an integer field)",
            );
            has(
                "side: is_buyer_maker: a boolean field, taker buy = \"false\", taker sell = \"true\"",
            );
            has("id_field: trade_id: an integer field");
        }
    }
    let names = format.names();
    has(&format!("symbols: {} ({})", names.len(), names.join(",")));
    let first = rows.iter().map(|r| r.time).min().unwrap();
    let last = rows.iter().map(|r| r.time).max().unwrap();
    has(&format!("first trade: {}", ohlcd::times::to_rfc3339(first)));
    has(&format!("last trade: {}", ohlcd::times::to_rfc3339(last)));
    // The first five rows of the first instrument, each read as a trade.
    let mut of_first: Vec<&Row> = rows.iter().filter(|r| r.name == names[0]).collect();
    of_first.sort_by_key(|r| r.time);
    has(&format!(
        "first five rows of {}, as ohlcd reads them:",
        names[0]
    ));
    for r in &of_first[..5] {
        let time = ohlcd::times::to_rfc3339(r.time);
        // A table row: `│ a ┆ b ┆ … │`.
        let line = stdout
            .lines()
            .find(|l| l.starts_with('│') && l.contains(&time))
            .unwrap_or_else(|| panic!("no row at {time} in:\n{stdout}"));
        let cells: Vec<&str> = line
            .split(['│', '┆'])
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let side = if r.buy { "buy" } else { "sell" };
        assert_eq!(
            cells,
            [
                time.as_str(),
                &r.price.to_string(),
                &r.amount.to_string(),
                side,
                &r.id.to_string(),
                "trade"
            ],
            "{line}"
        );
    }
}

/// Trades ohlcd writes into the schema (`POST /api/trades`' and `ohlcd
/// generate`'s path) land as the writer's own do and read back exactly: the
/// tags and field types stay as they were, the candles equal an oracle of the
/// generated trades, `GET /api/trades` gives them back.
async fn round_trip_through_ohlcds_own_writes(app: &TestApp, format: Format, url: &str) {
    let new_names: &[&str] = match format {
        Format::Poc => &["SOLUSD"],
        // A new exchange too: its measurement by the pattern.
        Format::Cryptofeed => &["COINBASE:SOL-USD", "KRAKEN:XBT-USD"],
        Format::Binance => &["binance:SOLUSDT"],
    };
    let before_tags = app.rows("SHOW TAG KEYS").await;
    let before_fields = app.rows("SHOW FIELD KEYS").await;
    let spec = GenerateSpec {
        symbols: new_names.iter().map(|s| s.to_string()).collect(),
        from: t(FROM),
        to: t(TO),
        trades: 2_000,
        seed: 11,
    };
    let generated: Vec<NewTrade> = Generator::new(&spec).collect();
    write_trades(&app.influx, &generated).await.unwrap();
    // Same keys and types: nothing written in a second format.
    let after_tags = app.rows("SHOW TAG KEYS").await;
    let after_fields = app.rows("SHOW FIELD KEYS").await;
    match format {
        Format::Cryptofeed => {
            // The new exchange's measurement holds what the others hold.
            let fields = app.rows("SHOW FIELD KEYS FROM \"trades-KRAKEN\"").await;
            let fields: Vec<(String, String)> = fields
                .iter()
                .map(|r| {
                    (
                        r["fieldKey"].as_str().unwrap().into(),
                        r["fieldType"].as_str().unwrap().into(),
                    )
                })
                .collect();
            let want: Vec<(String, String)> = [
                ("amount", "float"),
                ("id", "string"),
                ("price", "float"),
                ("side", "string"),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
            assert_eq!(fields, want);
        }
        _ => {
            assert_eq!(after_tags, before_tags, "tag keys unchanged");
            assert_eq!(
                after_fields, before_fields,
                "field keys and types unchanged"
            );
        }
    }
    // The oracle: each trade at its ms plus the low six digits of its id (the
    // documented point time), ordered by id where the schema keeps one.
    let mut expected: BTreeMap<String, Vec<RawTrade>> = BTreeMap::new();
    for g in &generated {
        let time = g.time_ms * 1_000_000 + g.id % 1_000_000;
        let id = if format.has_id() { g.id } else { 0 };
        expected.entry(g.symbol.clone()).or_default().push((
            time,
            id,
            g.price,
            g.amount,
            g.side == ohlcd::candle::Side::Buy,
        ));
    }
    for trades in expected.values_mut() {
        trades.sort_by_key(|t| (t.0, t.1));
    }
    let mut symbols = app.influx.symbols().await.unwrap();
    symbols.retain(|s| new_names.contains(&s.as_str()));
    assert_eq!(symbols.len(), new_names.len(), "{symbols:?}");
    let engine = app.engine("a");
    let report = engine.tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let tasks = app.store.tasks().await.unwrap();
    let w = new_names
        .iter()
        .map(|n| {
            tasks
                .iter()
                .find(|t| t.symbol == *n && t.resolution == Resolution::M1)
                .and_then(|t| t.watermark)
                .unwrap()
        })
        .min()
        .unwrap();
    assert_candles_exact(app, format, &expected, w).await;
    // Read back exactly through the API: price, amount, side, time, id (0
    // where the schema has none).
    for name in new_names {
        let (status, v) = get(&format!(
            "{url}/api/trades?symbol={name}&from={}&to={}&limit=10000",
            t(FROM) / NANOS_PER_SEC,
            t(TO) / NANOS_PER_SEC
        ))
        .await;
        assert_eq!(status, 200, "{v}");
        let got: Vec<(i64, i64, f64, f64, String)> = v["trades"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["timestamp"].as_i64().unwrap(),
                    t["id"].as_i64().unwrap(),
                    t["price"].as_f64().unwrap(),
                    t["amount"].as_f64().unwrap(),
                    t["side"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut want: Vec<(i64, i64, f64, f64, String)> = generated
            .iter()
            .filter(|g| g.symbol == *name)
            .map(|g| {
                (
                    g.time_ms,
                    if format.has_id() { g.id } else { 0 },
                    g.price,
                    g.amount,
                    g.side.as_str().to_string(),
                )
            })
            .collect();
        want.sort_by_key(|w| (w.0, w.1));
        let mut got = got;
        got.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)));
        want.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)));
        assert_eq!(got, want, "{format:?} {name}: trades read back");
    }
}

on_both_servers!(the_pocs_trades_become_exact_candles);
async fn the_pocs_trades_become_exact_candles(app: TestApp) {
    a_writers_trades_become_exact_candles(app, Format::Poc).await
}

on_both_servers!(cryptofeeds_trades_become_exact_candles);
async fn cryptofeeds_trades_become_exact_candles(app: TestApp) {
    a_writers_trades_become_exact_candles(app, Format::Cryptofeed).await
}

on_both_servers!(binance_style_trades_become_exact_candles);
async fn binance_style_trades_become_exact_candles(app: TestApp) {
    a_writers_trades_become_exact_candles(app, Format::Binance).await
}

/// Runs `ohlcd <args>` with `env` over the app's own; (success, stdout, stderr).
async fn ohlcd(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = app.ohlcd();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

on_both_servers!(a_schema_that_is_not_on_the_server_stops_start_up_with_one_line_saying_what_is);
async fn a_schema_that_is_not_on_the_server_stops_start_up_with_one_line_saying_what_is(
    app: TestApp,
) {
    let rows = rows(Format::Poc, 50);
    let lines: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(k, r)| Format::Poc.line(r, k))
        .collect();
    write_lines(&app, &lines, "ns").await;
    // ohlcd's own schema on the POC's data: no `trades` measurement.
    let missing_measurement = "error: schema.trades_measurement = \"trades\": the database has no such measurement; its measurements: trade";
    for command in [&["backfill"][..], &["run"], &["schema"], &["progress"]] {
        let (ok, stdout, stderr) =
            ohlcd(&app, command, &[("OHLCD_SERVER__LISTEN", "127.0.0.1:0")]).await;
        assert!(!ok, "{command:?} succeeded: {stdout}");
        assert_eq!(stderr.trim(), missing_measurement, "{command:?}");
        assert!(!stdout.contains("no tasks yet"), "{command:?}: {stdout}");
    }
    // The right measurement, a wrong field.
    let (ok, _, stderr) = ohlcd(
        &app,
        &["backfill"],
        &[
            ("OHLCD_SCHEMA__TRADES_MEASUREMENT", "trade"),
            ("OHLCD_SCHEMA__ID_FIELD", ""),
            ("OHLCD_SCHEMA__AMOUNT_FIELD", "qty"),
        ],
    )
    .await;
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "error: schema.amount_field = \"qty\": measurement \"trade\" has no such column; its tags and fields: side, source, symbol, amount, price"
    );
    // Configured right: an empty progress table says the trades are there.
    let poc = [
        ("OHLCD_SCHEMA__TRADES_MEASUREMENT", "trade"),
        ("OHLCD_SCHEMA__ID_FIELD", ""),
    ];
    let (ok, stdout, stderr) = ohlcd(&app, &["progress"], &poc).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "no tasks yet, and InfluxDB has trades of BTCUSD,ETHUSD: run `ohlcd backfill` or `ohlcd run`"
    );
    let (ok, stdout, stderr) = ohlcd(&app, &["backfill"], &poc).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("backfill complete"), "{stdout}");
    assert!(!stdout.contains(" 0 source rows read"), "{stdout}");
}

on_both_servers!(an_empty_database_is_a_first_install_whatever_the_schema);
async fn an_empty_database_is_a_first_install_whatever_the_schema(app: TestApp) {
    for format in [Format::Poc, Format::Cryptofeed, Format::Binance] {
        let (ok, stdout, stderr) = ohlcd(&app, &["backfill"], &format.env()).await;
        assert!(ok, "{format:?}: {stderr}");
        assert!(
            stdout.starts_with("backfill complete: 0 chunks"),
            "{stdout}"
        );
    }
}

on_both_servers!(
    rows_that_cannot_make_a_trade_change_no_candle_and_each_is_counted_with_its_reason
);
/// Old cryptofeed wrote prices and amounts as text: every skip reason can be
/// written there. One bad row per reason among good ones (prices as text
/// parse as numbers): the candles are those of the good rows alone, each bad
/// row is counted once with its reason, and the lookback (which must read
/// rows where prices are text) takes none of them for a missing trade.
async fn rows_that_cannot_make_a_trade_change_no_candle_and_each_is_counted_with_its_reason(
    mut app: TestApp,
) {
    let from = t(FROM);
    let to = t("2024-03-01T06:00:00Z");
    let mut rng = Rng(77);
    let mut good: Vec<RawTrade> = Vec::new();
    let mut lines = Vec::new();
    let mut time = from;
    let mut k = 0;
    while time < to - 30 * MINUTE {
        time += (1 + rng.below(20)) as i64 * NANOS_PER_SEC;
        let price = (10_000 + rng.below(1000)) as f64 / 100.0;
        let amount = (1 + rng.below(999)) as f64 / 1000.0;
        let buy = rng.below(2) == 0;
        k += 1;
        good.push((time, k, price, amount, buy));
        lines.push(format!(
            "trades,symbol=OLD price=\"{price}\",amount=\"{amount}\",side=\"{}\",id=\"{k}\" {time}",
            if buy { "BUY" } else { "Sell" }
        ));
    }
    // In the last half hour, inside the lookback: one row per reason.
    let bad: Vec<(SkipReason, &str)> = vec![
        (
            SkipReason::MissingPrice,
            "amount=\"1\",side=\"buy\",id=\"90001\"",
        ),
        (
            SkipReason::MissingAmount,
            "price=\"100\",side=\"buy\",id=\"90002\"",
        ),
        (
            SkipReason::NotANumber,
            "price=\"abc\",amount=\"1\",side=\"buy\",id=\"90003\"",
        ),
        (
            SkipReason::NotFinite,
            "price=\"inf\",amount=\"1\",side=\"buy\",id=\"90004\"",
        ),
        (
            SkipReason::NotPositive,
            "price=\"-5\",amount=\"1\",side=\"sell\",id=\"90005\"",
        ),
        (
            SkipReason::TooLarge,
            "price=\"100\",amount=\"2000000000000000\",side=\"sell\",id=\"90006\"",
        ),
        (
            SkipReason::UnknownSide,
            "price=\"100\",amount=\"1\",side=\"hold\",id=\"90007\"",
        ),
    ];
    assert_eq!(bad.len(), SkipReason::ALL.len(), "one row per reason");
    let mut bad_at = BTreeMap::new();
    for (i, (reason, fields)) in bad.iter().enumerate() {
        let at = to - 20 * MINUTE + i as i64 * 37 * NANOS_PER_SEC + 500_000_000;
        bad_at.insert(at, *reason);
        lines.push(format!("trades,symbol=OLD {fields} {at}"));
    }
    write_lines(&app, &lines, "ns").await;
    app.influx
        .resolve_schema(&TradeSchema::from_settings(&SchemaSettings::default()).unwrap())
        .await
        .unwrap();
    // Read as the engine reads: the good rows as trades, each bad row with its reason.
    let mut skipped = BTreeMap::new();
    let mut read = 0;
    app.influx
        .read_trades(TradeRead::new(&["OLD"], from..to), |_, row| match row {
            Ok(_) => read += 1,
            Err(skip) => {
                skipped.insert(skip.time, skip.reason);
            }
        })
        .await
        .unwrap();
    assert_eq!(read, good.len());
    assert_eq!(skipped, bad_at);

    app.clock.set(to);
    let engine = app.engine("a");
    engine.tick(&TaskFilter::default()).await.unwrap();
    app.clock.set(to + 61 * NANOS_PER_SEC);
    engine.tick(&TaskFilter::default()).await.unwrap();
    let tasks = app.store.tasks().await.unwrap();
    let m1 = tasks
        .iter()
        .find(|t| t.resolution == Resolution::M1)
        .unwrap();
    assert_eq!(
        m1.rows_skipped,
        bad.len() as i64,
        "each bad row counted once"
    );
    let repairs: Vec<_> = app
        .store
        .runs("OLD", Resolution::M1, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind != "chunk")
        .collect();
    assert!(repairs.is_empty(), "bad rows set off repairs: {repairs:?}");
    let w1 = m1.watermark.unwrap();
    assert!(w1 > *bad_at.keys().last().unwrap());
    for res in Resolution::ALL {
        let w = res.window_start(w1);
        let len = res.nanos();
        let expected: Vec<Candle> = naive_candles(&good, |t| t.div_euclid(len) * len)
            .into_iter()
            .filter(|c| c.start + len <= w)
            .collect();
        let stored: Vec<Candle> = app
            .stored("OLD", res)
            .await
            .into_iter()
            .filter(|c| c.start + len <= w)
            .collect();
        assert_candles_eq(&stored, &expected, &format!("OLD {res}"));
    }
}

//! Bars counted in a time zone, checked against an oracle written apart from
//! ohlcd in Python with `zoneinfo` (tests/zone_oracle.py): daily and 4-hour
//! bars in Hong Kong, Kolkata and New York across the DST changes of
//! 2024-03-10 and 2024-11-03, their windows and stamps, as TradingView reads
//! them; and the windows of random zones and instants.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use ohlcd::candle::NANOS_PER_SEC;
use ohlcd::chart::{ChartResolution, ZonedResolution};
use ohlcd::config::SymbolZones;
use ohlcd::engine::TaskFilter;
use ohlcd::generate::{GenerateSpec, Generator};
use ohlcd::ingest::NewTrade;
use serde_json::{Value, json};

use crate::helpers::{RawTrade, TestApp, on_both_servers, t};
use crate::http::get;

on_both_servers!(daily_and_4h_bars_in_three_zones_across_dst_match_zoneinfo_in_windows_and_stamps);

/// Runs tests/zone_oracle.py on `request`.
pub(crate) fn oracle(request: &Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/zone_oracle.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the zone oracle");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(request).unwrap().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "zone oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The oracle's bar case for `raw` in `zone`.
fn bars_case(zone: &str, unit: &str, len_secs: i64, raw: &[RawTrade]) -> Value {
    let trades: Vec<Value> = raw.iter().map(|t| json!([t.0, t.1, t.2, t.3])).collect();
    json!({"zone": zone, "unit": unit, "n": 1, "len_secs": len_secs, "trades": trades})
}

/// (start or stamp ns, open, high, low, close, volume) of the oracle's bars:
/// `stamped` picks the stamp (trading date) over the start.
fn oracle_bars(bars: &Value, stamped: bool) -> Vec<(i64, f64, f64, f64, f64, f64)> {
    bars.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let f = |i: usize| b[i].as_f64().unwrap();
            let time = b[if stamped { 1 } else { 0 }].as_i64().unwrap();
            (time, f(2), f(3), f(4), f(5), f(6))
        })
        .collect()
}

fn api_bars(v: &Value) -> Vec<(i64, f64, f64, f64, f64, f64)> {
    v["candles"]
        .as_array()
        .unwrap_or_else(|| panic!("no candles: {v}"))
        .iter()
        .map(|c| {
            let f = |k: &str| c[k].as_f64().unwrap();
            (
                c["time"].as_i64().unwrap() * NANOS_PER_SEC,
                f("open"),
                f("high"),
                f("low"),
                f("close"),
                f("volume"),
            )
        })
        .collect()
}

fn assert_same_bars(
    got: &[(i64, f64, f64, f64, f64, f64)],
    want: &[(i64, f64, f64, f64, f64, f64)],
    what: &str,
) {
    assert_eq!(got.len(), want.len(), "{what}: bar count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            (g.0, g.1, g.2, g.3, g.4),
            (w.0, w.1, w.2, w.3, w.4),
            "{what}: bar at {} (oracle {})",
            g.0 / NANOS_PER_SEC,
            w.0 / NANOS_PER_SEC
        );
        assert!(
            (g.5 - w.5).abs() <= 1e-9 * w.5.abs() + 1e-12,
            "{what}: volume at {}: {} vs {}",
            g.0,
            g.5,
            w.5
        );
    }
}

/// Three symbols, one per zone, with trades around both 2024 US DST changes;
/// the engine caught up to the clock (2024-11-04T13:37Z), so the newest days
/// come from finer sources and raw trades, the older ones from stored candles.
async fn daily_and_4h_bars_in_three_zones_across_dst_match_zoneinfo_in_windows_and_stamps(
    app: TestApp,
) {
    let zones = [
        ("HKBTC", "Asia/Hong_Kong"),
        ("INBTC", "Asia/Kolkata"),
        ("NYBTC", "America/New_York"),
    ];
    let symbols: Vec<String> = zones.iter().map(|(s, _)| s.to_string()).collect();
    for (from, to, seed) in [
        ("2024-03-08T00:00:00Z", "2024-03-13T00:00:00Z", 31),
        ("2024-10-31T00:00:00Z", "2024-11-06T00:00:00Z", 32),
    ] {
        let spec = GenerateSpec {
            symbols: symbols.clone(),
            from: t(from),
            to: t(to),
            trades: 9_000,
            seed,
        };
        let trades: Vec<NewTrade> = Generator::new(&spec).collect();
        app.write(&trades).await;
    }
    app.clock.set(t("2024-11-04T13:37:00Z"));
    let report = app.engine("a").tick(&TaskFilter::default()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let overrides: BTreeMap<String, String> = zones
        .iter()
        .map(|(s, z)| (s.to_string(), z.to_string()))
        .collect();
    let served = app
        .serve_with("127.0.0.1:0", |s| {
            s.datafeed.symbol_timezones = SymbolZones(overrides)
        })
        .await;
    let url = &served.url;
    let (from, to) = (
        t("2024-03-01T00:00:00Z") / NANOS_PER_SEC,
        t("2024-11-10T00:00:00Z") / NANOS_PER_SEC,
    );
    // NYBTC is also asked in Kolkata's windows through /api/ohlc?tz=.
    let mut cases = Vec::new();
    let mut raws = Vec::new();
    for (symbol, zone) in zones.iter().chain([&("NYBTC", "Asia/Kolkata")]) {
        let raw = app.raw_trades(symbol).await;
        cases.push(bars_case(zone, "day", 0, &raw));
        cases.push(bars_case(zone, "intraday", 4 * 3600, &raw));
        raws.push(raw);
    }
    let answer = oracle(&json!({ "bars": cases }));
    for (i, (symbol, zone)) in zones.iter().chain([&("NYBTC", "Asia/Kolkata")]).enumerate() {
        let (days, hours) = (&answer["bars"][2 * i], &answer["bars"][2 * i + 1]);
        let own_zone = i < zones.len();
        if own_zone {
            // /udf/history: days stamped with their trading date, 4h bars with
            // the instant they start.
            let (status, v) = get(&format!(
                "{url}/udf/history?symbol={symbol}&resolution=1D&from={from}&to={to}"
            ))
            .await;
            assert_eq!(status, 200, "{v}");
            let got = crate::http::udf_bars(&v);
            assert_same_bars(
                &got,
                &oracle_bars(days, true),
                &format!("{symbol} 1D in {zone}"),
            );
            a_tradingview_client_sees_each_day_on_its_local_date(
                &got,
                &raws[i],
                &answer["local_dates"][2 * i],
                symbol,
            );
            let (status, v) = get(&format!(
                "{url}/udf/history?symbol={symbol}&resolution=240&from={from}&to={to}"
            ))
            .await;
            assert_eq!(status, 200, "{v}");
            assert_same_bars(
                &crate::http::udf_bars(&v),
                &oracle_bars(hours, false),
                &format!("{symbol} 240 in {zone}"),
            );
            // The zone is what /udf/symbols reports.
            let (_, info) = get(&format!("{url}/udf/symbols?symbol={symbol}")).await;
            assert_eq!(info["timezone"], *zone, "{info}");
        }
        // /api/ohlc: every bar stamped with the instant it starts.
        for (res, expected) in [("1D", days), ("240", hours)] {
            let (status, v) = get(&format!(
                "{url}/api/ohlc?symbol={symbol}&resolution={res}&from={from}&to={to}&tz={zone}"
            ))
            .await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["resolution"], res, "{v}");
            assert_eq!(v["timezone"], *zone);
            assert_same_bars(
                &api_bars(&v),
                &oracle_bars(expected, false),
                &format!("/api/ohlc {symbol} {res} in {zone}"),
            );
        }
    }
    // A countback counts trading dates: the last 3 days before the stamp of
    // 2024-11-05 are the 2nd, 3rd and 4th in New York.
    let before = t("2024-11-05T00:00:00Z") / NANOS_PER_SEC;
    let (_, v) = get(&format!(
        "{url}/udf/history?symbol=NYBTC&resolution=1D&to={before}&countback=3"
    ))
    .await;
    let stamps: Vec<i64> = crate::http::udf_bars(&v).iter().map(|b| b.0).collect();
    assert_eq!(
        stamps,
        ["2024-11-02", "2024-11-03", "2024-11-04"]
            .map(|d| t(&format!("{d}T00:00:00Z")))
            .to_vec()
    );
}

/// Reads 1D bars as TradingView's UDF adapter does (`t` as a date in UTC) and
/// checks each shows the trades of that local date: the first trade's price
/// opens it, their amounts make its volume.
fn a_tradingview_client_sees_each_day_on_its_local_date(
    bars: &[(i64, f64, f64, f64, f64, f64)],
    raw: &[RawTrade],
    local_dates: &Value,
    symbol: &str,
) {
    let mut by_date: BTreeMap<String, Vec<&RawTrade>> = BTreeMap::new();
    for (trade, date) in raw.iter().zip(local_dates.as_array().unwrap()) {
        by_date
            .entry(date.as_str().unwrap().to_string())
            .or_default()
            .push(trade);
    }
    assert_eq!(
        bars.len(),
        by_date.len(),
        "{symbol}: one bar per local date"
    );
    for bar in bars {
        let shown = chrono::DateTime::from_timestamp(bar.0 / NANOS_PER_SEC, 0)
            .unwrap()
            .date_naive()
            .to_string();
        let trades = by_date
            .get(&shown)
            .unwrap_or_else(|| panic!("{symbol}: a bar shown on {shown}, no trades that day"));
        let volume: f64 = trades.iter().map(|t| t.3).sum();
        assert_eq!(bar.1, trades[0].2, "{symbol} {shown}: open");
        assert_eq!(bar.4, trades[trades.len() - 1].2, "{symbol} {shown}: close");
        assert!(
            (bar.5 - volume).abs() <= 1e-9 * volume,
            "{symbol} {shown}: volume"
        );
    }
}

/// Random zones (every IANA zone), instants (2000–2037) and units: the
/// windows ohlcd computes are the oracle's. One python3 call checks all.
#[test]
fn windows_of_random_zones_and_instants_match_zoneinfo() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let zones = chrono_tz::TZ_VARIANTS;
    let res = proptest::prop_oneof![
        // Lengths dividing a day, and some that do not (a short last bar
        // every day).
        proptest::sample::select(vec![
            1u32, 5, 7, 15, 25, 30, 45, 60, 90, 100, 120, 240, 360, 720, 1000, 1440
        ])
        .prop_map(ChartResolution::Minutes),
        (1u32..=3).prop_map(ChartResolution::Days),
        (1u32..=2).prop_map(ChartResolution::Weeks),
        (1u32..=3).prop_map(ChartResolution::Months),
    ];
    let case = (
        0..zones.len(),
        t("2000-01-01T00:00:00Z") / NANOS_PER_SEC..t("2037-12-31T00:00:00Z") / NANOS_PER_SEC,
        0..NANOS_PER_SEC,
        res,
    );
    let mut runner = TestRunner::deterministic();
    let mut request = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..3000 {
        let (zone, secs, nanos, res) = case.new_tree(&mut runner).unwrap().current();
        let zone = zones[zone];
        let time = secs * NANOS_PER_SEC + nanos;
        let (unit, n, len_secs) = match res {
            ChartResolution::Minutes(m) => ("intraday", 1, i64::from(m) * 60),
            ChartResolution::Days(n) => ("day", n, 0),
            ChartResolution::Weeks(n) => ("week", n, 0),
            ChartResolution::Months(n) => ("month", n, 0),
            ChartResolution::Seconds(_) => unreachable!(),
        };
        request.push(
            json!({"zone": zone.name(), "unit": unit, "n": n, "len_secs": len_secs, "t": time}),
        );
        let window = ZonedResolution::new(res, zone).bucketing().window(time);
        ours.push((zone.name(), res, time, window));
    }
    let answer = oracle(&json!({ "windows": request }));
    let answers = answer["windows"].as_array().unwrap();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for ((zone, res, time, window), theirs) in ours.iter().zip(answers) {
        let Some(theirs) = theirs.as_array() else {
            continue;
        };
        checked += 1;
        let theirs = theirs[0].as_i64().unwrap()..theirs[1].as_i64().unwrap();
        if *window != theirs {
            wrong.push(format!(
                "{zone} {res} at {time}: ohlcd {window:?}, zoneinfo {theirs:?}"
            ));
        }
    }
    assert!(
        checked > 2900,
        "only {checked} cases had a zone Python knows"
    );
    assert!(
        wrong.is_empty(),
        "{} of {checked} differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

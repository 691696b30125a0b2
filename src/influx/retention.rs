//! Retention policies per measurement (InfluxDB 1.x, and 2.x through DBRP
//! mappings): raw trades and each candle resolution may live in their own
//! retention policy (RP), e.g. raw trades 30 days, 1m candles a year, 1h and
//! coarser forever.
//!
//! What is configured (`[retention]`, see [`PolicySpec`]) says where each
//! measurement is written and read (`"db"."rp"."measurement"` in InfluxQL,
//! `rp=` on `/write`); what the server reports (`SHOW RETENTION POLICIES`) says
//! how long each keeps its data ([`Keep`]), which bounds how far back the
//! datafeed can read a resolution and what `rebuild` may recompute.
//! Unconfigured measurements stay where they always were: in
//! `influx.retention_policy`, or the database's default RP.

use std::collections::HashMap;

use serde_json::Value;

use super::{InfluxClient, InfluxError, TRADES_MEASUREMENT, query};
use crate::candle::{NANOS_PER_SEC, Resolution};
use crate::retention::{Keep, PolicySpec};

/// One of the measurements ohlcd stores: raw trades or one candle resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stored {
    /// Raw trades (`schema.trades_measurement`).
    Trades,
    /// The candles of one resolution.
    Candles(Resolution),
}

impl Stored {
    /// All seven, raw trades first, then candles finest first.
    pub fn all() -> [Stored; 7] {
        let r = Resolution::ALL;
        [
            Stored::Trades,
            Stored::Candles(r[0]),
            Stored::Candles(r[1]),
            Stored::Candles(r[2]),
            Stored::Candles(r[3]),
            Stored::Candles(r[4]),
            Stored::Candles(r[5]),
        ]
    }

    /// Its key in `[retention]`, which is also the measurement name in
    /// ohlcd's own schema (`schema.*` may name the measurements otherwise).
    pub fn measurement(self) -> &'static str {
        match self {
            Stored::Trades => TRADES_MEASUREMENT,
            Stored::Candles(r) => r.measurement(),
        }
    }

    fn index(self) -> usize {
        match self {
            Stored::Trades => 0,
            Stored::Candles(r) => 1 + r.index(),
        }
    }
}

/// A Go duration as `SHOW RETENTION POLICIES` prints it (`720h0m0s`; `0s`
/// means forever).
fn keep_from_go(s: &str) -> Option<Keep> {
    let mut total: i64 = 0;
    let mut number = String::new();
    for ch in s.chars() {
        match ch {
            '0'..='9' | '.' => number.push(ch),
            'h' | 'm' | 's' => {
                let n: f64 = number.parse().ok()?;
                let unit = match ch {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                total += (n * unit * NANOS_PER_SEC as f64) as i64;
                number.clear();
            }
            _ => return None,
        }
    }
    if !number.is_empty() {
        return None;
    }
    Some(if total == 0 {
        Keep::Forever
    } else {
        Keep::For(total)
    })
}

/// The InfluxQL duration literal of `keep`.
fn influxql_duration(keep: Keep) -> String {
    match keep {
        Keep::Forever => "INF".into(),
        Keep::For(ns) => format!("{}h", ns / (3600 * NANOS_PER_SEC)),
    }
}

/// The shard group duration InfluxDB 1.x picks for a policy that keeps
/// data this long. Stated when creating or altering, because a shard group
/// longer than the policy is refused ("duration must be greater than the
/// shard duration").
fn shard_duration(keep: Keep) -> &'static str {
    const DAY: i64 = 24 * 3600 * NANOS_PER_SEC;
    match keep {
        Keep::For(ns) if ns < 2 * DAY => "1h",
        Keep::For(ns) if ns <= 180 * DAY => "1d",
        _ => "7d",
    }
}

/// Where each measurement lives, and how long its policy keeps data (as the
/// server said at start; forever until asked, or where it cannot tell).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    specs: [Option<PolicySpec>; 7],
    keeps: [Option<Keep>; 7],
}

impl Placement {
    /// From the `[retention]` values, in [`Stored::all`] order (already validated).
    pub fn new(specs: [Option<PolicySpec>; 7]) -> Placement {
        Placement {
            specs,
            keeps: [None; 7],
        }
    }

    /// The configured policy of `s`, if any.
    pub fn spec(&self, s: Stored) -> Option<&PolicySpec> {
        self.specs[s.index()].as_ref()
    }

    /// Whether any measurement has a policy of its own.
    pub fn is_configured(&self) -> bool {
        self.specs.iter().any(Option::is_some)
    }

    /// How long the data of `s` is kept (forever where unknown).
    pub fn keep(&self, s: Stored) -> Keep {
        self.keeps[s.index()].unwrap_or(Keep::Forever)
    }

    /// Sets how long `s` is kept (tests; normally read from the server).
    pub fn set_keep(&mut self, s: Stored, keep: Keep) {
        self.keeps[s.index()] = Some(keep);
    }
}

/// Whether `a` keeps data for less time than `b`.
fn shorter(a: Keep, b: Keep) -> bool {
    match (a, b) {
        (Keep::For(a), Keep::For(b)) => a < b,
        (Keep::For(_), Keep::Forever) => true,
        (Keep::Forever, _) => false,
    }
}

/// A retention policy as `SHOW RETENTION POLICIES` lists it.
#[derive(Debug, Clone)]
struct ServerPolicy {
    keep: Option<Keep>,
    default: bool,
}

impl InfluxClient {
    /// Where raw trades or candles of `s` live and how long they are kept.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Mutable placement (tests set durations without a server).
    pub fn placement_mut(&mut self) -> &mut Placement {
        std::sync::Arc::make_mut(&mut self.placement)
    }

    /// How long the data of `s` is kept, as the server reported at start.
    pub fn keep(&self, s: Stored) -> Keep {
        self.placement.keep(s)
    }

    /// The InfluxQL source of candles of `res` (`schema.candles_measurement`):
    /// `"db"."rp"."measurement"` when they have a policy of their own, else
    /// the bare measurement (the request's `rp`, or the database default,
    /// applies).
    pub fn candle_source(&self, res: Resolution) -> String {
        self.names().candle_source(res)
    }

    /// The InfluxQL source of `measurement`, which holds `s` (raw trades may
    /// be in several measurements: `schema.trades_measurement`).
    pub fn source_of(&self, s: Stored, measurement: &str) -> String {
        self.names().source(s, measurement)
    }

    /// Makes the configured policies exist with their durations (with
    /// `manage`; `run`, `backfill` and `generate` do, read-only commands do
    /// not), then reads how long every measurement's policy keeps its data.
    /// Logs what it created or changed, and what it could not and why. Fails
    /// when a configured policy is missing and cannot be created, and on
    /// InfluxDB 3, which has no retention policies.
    pub async fn prepare_retention(&mut self, manage: bool) -> Result<(), InfluxError> {
        if !self.generation.has_retention_policies() {
            if self.placement.is_configured() {
                return Err(InfluxError::Retention(
                    "InfluxDB 3 has no retention policies, so [retention] cannot place measurements in their own; \
                     empty [retention] and set a retention period on the whole database instead \
                     (influxdb3 create database --retention-period), or use InfluxDB 1.x/2.x"
                        .into(),
                ));
            }
            return Ok(());
        }
        let mut policies = match self.server_policies().await {
            Ok(p) => p,
            // 2.x may not list policies; durations stay unknown (forever),
            // which keeps every candle and reads every resolution.
            Err(e) if !self.placement.is_configured() => {
                tracing::warn!(error = %e, "cannot list retention policies; treating every measurement as kept forever");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut wanted: Vec<(&'static str, PolicySpec)> = Vec::new();
        for s in Stored::all() {
            if let Some(spec) = self.placement.spec(s)
                && !wanted.iter().any(|(_, w)| w.name == spec.name)
            {
                wanted.push((s.measurement(), spec.clone()));
            }
        }
        for (measurement, spec) in wanted {
            let found = policies.get(&spec.name).map(|p| p.keep);
            match (found, spec.keep) {
                (None, None) => {
                    return Err(InfluxError::Retention(format!(
                        "retention policy {:?} (retention.{measurement}) does not exist in database {:?}; create it, or configure it as {}:DURATION so ohlcd creates it",
                        spec.name, self.database, spec.name
                    )));
                }
                (None, Some(keep)) if !manage => {
                    return Err(InfluxError::Retention(format!(
                        "retention policy {:?} (retention.{measurement}) does not exist in database {:?}; `ohlcd run` or `ohlcd backfill` creates it ({keep})",
                        spec.name, self.database
                    )));
                }
                (None, Some(keep)) => {
                    let q = query::retention_policy(
                        false,
                        &spec.name,
                        &self.database,
                        &influxql_duration(keep),
                        shard_duration(keep),
                    );
                    if let Err(e) = self.query_json(&q).await {
                        return Err(InfluxError::Retention(format!(
                            "retention policy {:?} (retention.{measurement}) does not exist in database {:?} and creating it failed: {e}; create it as an admin: {q}",
                            spec.name, self.database
                        )));
                    }
                    tracing::info!(policy = %spec.name, keep = %keep, database = %self.database, "created retention policy");
                    policies.insert(
                        spec.name.clone(),
                        ServerPolicy {
                            keep: Some(keep),
                            default: false,
                        },
                    );
                }
                (Some(have), Some(keep)) if have != Some(keep) && manage => {
                    let q = query::retention_policy(
                        true,
                        &spec.name,
                        &self.database,
                        &influxql_duration(keep),
                        shard_duration(keep),
                    );
                    let have_text = have.map_or("unknown".into(), |k| k.to_string());
                    match self.query_json(&q).await {
                        Ok(_) => {
                            tracing::info!(policy = %spec.name, from = %have_text, to = %keep, "changed retention policy duration");
                            if let Some(p) = policies.get_mut(&spec.name) {
                                p.keep = Some(keep);
                            }
                        }
                        Err(e) => tracing::warn!(
                            policy = %spec.name, configured = %keep, kept = %have_text, error = %e,
                            "cannot change the retention policy's duration; going on with the duration it has"
                        ),
                    }
                }
                _ => {}
            }
        }
        let default = policies
            .iter()
            .find(|(_, p)| p.default)
            .map(|(n, _)| n.clone());
        for s in Stored::all() {
            let name = self
                .placement
                .spec(s)
                .map(|p| p.name.clone())
                .or(self.retention_policy.clone())
                .or(default.clone());
            let keep = name.and_then(|n| policies.get(&n)).and_then(|p| p.keep);
            self.placement_mut().keeps[s.index()] = keep;
        }
        // A late trade is repaired from the stored 1m candles of its day: they
        // must outlive the raw trades, or coarser candles would be recomputed
        // from what is left of them.
        let raw = self.keep(Stored::Trades);
        let m1 = self.keep(Stored::Candles(Resolution::M1));
        if shorter(m1, raw) {
            tracing::warn!(
                ohlc_1m = %m1, trades = %raw,
                "1m candles are kept for less time than raw trades: keep them at least as long, or a late trade older than the 1m candles would have its coarser windows recomputed from missing 1m candles"
            );
        }
        Ok(())
    }

    /// `SHOW RETENTION POLICIES`: name → duration and whether it is the default.
    async fn server_policies(&self) -> Result<HashMap<String, ServerPolicy>, InfluxError> {
        let v = self
            .query_json(&query::show_retention_policies(&self.database))
            .await?;
        let mut out = HashMap::new();
        for series in v
            .get("series")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let columns: Vec<&str> = series
                .get("columns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let col = |name: &str| columns.iter().position(|c| *c == name);
            let (Some(n), Some(d)) = (col("name"), col("duration")) else {
                continue;
            };
            let def = col("default");
            for row in series
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_array)
            {
                let Some(name) = row.get(n).and_then(Value::as_str) else {
                    continue;
                };
                out.insert(
                    name.to_string(),
                    ServerPolicy {
                        keep: row.get(d).and_then(Value::as_str).and_then(keep_from_go),
                        default: def
                            .and_then(|i| row.get(i))
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Symbols with raw trades or 1d candles, sorted: once raw trades expired,
    /// a symbol still has its candles to chart.
    pub async fn symbols_with_candles(&self) -> Result<Vec<String>, InfluxError> {
        let mut out = self.symbols().await?;
        out.extend(self.candle_symbols(Resolution::D1).await?);
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Time of the latest stored candle of `res` for `symbol` starting before
    /// `before`, if any.
    pub async fn last_candle_time_before(
        &self,
        res: Resolution,
        symbol: &str,
        before: i64,
    ) -> Result<Option<i64>, InfluxError> {
        Ok(self
            .last_point_before(Stored::Candles(res), symbol, before)
            .await?
            .map(|(t, _)| t))
    }

    /// Time of the earliest stored candle of `res` for `symbol`, if any.
    pub async fn first_candle_time(
        &self,
        res: Resolution,
        symbol: &str,
    ) -> Result<Option<i64>, InfluxError> {
        self.first_time_from(Some(res), symbol, i64::MIN).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600 * NANOS_PER_SEC;

    #[test]
    fn durations_are_written_as_influxql_hours() {
        assert_eq!(influxql_duration(Keep::For(720 * HOUR)), "720h");
        assert_eq!(influxql_duration(Keep::Forever), "INF");
    }

    #[test]
    fn server_durations_are_go_durations_and_zero_is_forever() {
        assert_eq!(keep_from_go("0s"), Some(Keep::Forever));
        assert_eq!(keep_from_go("1h0m0s"), Some(Keep::For(HOUR)));
        assert_eq!(keep_from_go("720h0m0s"), Some(Keep::For(720 * HOUR)));
        assert_eq!(keep_from_go("1h30m0s"), Some(Keep::For(HOUR * 3 / 2)));
        assert_eq!(keep_from_go("soon"), None);
    }

    #[test]
    fn shard_groups_are_never_longer_than_their_policy() {
        assert_eq!(shard_duration(Keep::For(HOUR)), "1h");
        assert_eq!(shard_duration(Keep::For(24 * HOUR)), "1h");
        assert_eq!(shard_duration(Keep::For(30 * 24 * HOUR)), "1d");
        assert_eq!(shard_duration(Keep::For(365 * 24 * HOUR)), "7d");
        assert_eq!(shard_duration(Keep::Forever), "7d");
    }

    #[test]
    fn forever_is_longer_than_any_duration() {
        assert!(shorter(Keep::For(HOUR), Keep::For(2 * HOUR)));
        assert!(shorter(Keep::For(HOUR), Keep::Forever));
        assert!(!shorter(Keep::Forever, Keep::For(HOUR)));
        assert!(!shorter(Keep::For(HOUR), Keep::For(HOUR)));
    }
}

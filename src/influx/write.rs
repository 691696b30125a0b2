//! The one write path: every line sent to InfluxDB goes through here.
//!
//! Three public writes: [`InfluxClient::write_trades`] (raw trades, into their
//! retention policy), [`InfluxClient::write_candles`] (candle sets, each
//! resolution into its policy, requests pipelined) and
//! [`InfluxClient::overwrite_candles`] (candles that replace stored ones,
//! checked on servers where the last write of a point does not always win).
//! Each ends in one POST, retried like every request, whose outcome feeds
//! `/healthz`'s view of writes.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::encode::Bodies;
use super::overwrite::{OVERWRITE_REWRITES, lost_candles};
use super::{CandleRead, CandleSet, InfluxClient, InfluxError, Stored};
use crate::candle::{Candle, Resolution};

/// Write requests [`InfluxClient::write_candles`] keeps in flight at once.
pub const WRITES_IN_FLIGHT: usize = 4;

impl InfluxClient {
    /// Writes raw-trade lines (line protocol, nanosecond timestamps) into the
    /// raw trades' retention policy.
    pub async fn write_trades(&self, body: Bytes) -> Result<(), InfluxError> {
        if self.placement.spec(Stored::Trades).is_none() {
            return self.write_lines(body).await;
        }
        self.writing_to(self.write_policy(Stored::Trades))
            .write_lines(body)
            .await
    }

    /// Writes candles of many symbols and resolutions, each resolution into
    /// its own retention policy: lines are packed into requests of
    /// `influx.write_batch` lines, and up to [`WRITES_IN_FLIGHT`] requests are
    /// sent at once per policy, so a server that acknowledges a write only
    /// after its WAL flush (InfluxDB 3: up to a second) does not serialize a
    /// backfill. Returns once every request was acknowledged.
    pub async fn write_candles(&self, sets: &[CandleSet<'_>]) -> Result<(), InfluxError> {
        if !self.placement.is_configured() {
            return self.write_sets(sets).await;
        }
        let mut by_policy: HashMap<Option<&str>, Vec<CandleSet<'_>>> = HashMap::new();
        for set in sets {
            by_policy
                .entry(self.write_policy(Stored::Candles(set.resolution)))
                .or_default()
                .push(*set);
        }
        let writes = by_policy
            .into_iter()
            .map(|(policy, sets)| async move { self.writing_to(policy).write_sets(&sets).await });
        futures_util::future::try_join_all(writes).await.map(|_| ())
    }

    /// Writes candles that may replace stored ones, like
    /// [`InfluxClient::write_candles`]. On InfluxDB 3 they are read back and
    /// those that read an older version are written again; fails with
    /// [`InfluxError::OverwriteLost`] if some still do after
    /// [`OVERWRITE_REWRITES`] rewrites (see [`super::overwrite`]).
    pub async fn overwrite_candles(&self, sets: &[CandleSet<'_>]) -> Result<(), InfluxError> {
        // Read back at once: a write acknowledged before the WAL flush
        // (no_sync) is not readable yet.
        let this = self.synced();
        let this = &this;
        // Into each resolution's retention policy (1.x; 3.x has none).
        this.write_candles(sets).await?;
        if self.generation.last_write_wins() {
            return Ok(());
        }
        let mut pending: Vec<(Resolution, &str, Vec<Candle>)> = sets
            .iter()
            .filter(|s| !s.candles.is_empty())
            .map(|s| (s.resolution, s.symbol, s.candles.to_vec()))
            .collect();
        for rewrite in 0..=OVERWRITE_REWRITES {
            let mut lost = Vec::new();
            for (res, symbol, candles) in &pending {
                let from = candles.iter().map(|c| c.start).min().expect("non-empty");
                let to = candles.iter().map(|c| c.start).max().expect("non-empty") + 1;
                let mut stored = HashMap::with_capacity(candles.len());
                this.read_candles(CandleRead::new(*res, &[*symbol], from..to), |_, c| {
                    stored.insert(c.start, c);
                })
                .await?;
                let differ = lost_candles(candles, &stored);
                if !differ.is_empty() {
                    lost.push((*res, *symbol, differ));
                }
            }
            let Some((res, symbol, first)) = lost.first() else {
                return Ok(());
            };
            let count: usize = lost.iter().map(|(_, _, c)| c.len()).sum();
            ::metrics::counter!("ohlcd_influx_overwrites_lost_total").increment(count as u64);
            if rewrite == OVERWRITE_REWRITES {
                return Err(InfluxError::OverwriteLost {
                    count,
                    measurement: self.layout().schema.candle_measurement(*res),
                    symbol: symbol.to_string(),
                    at: crate::times::to_rfc3339(first[0].start),
                    rewrites: OVERWRITE_REWRITES,
                });
            }
            tracing::warn!(
                candles = count,
                measurement = %self.layout().schema.candle_measurement(*res),
                %symbol,
                rewrite = rewrite + 1,
                "InfluxDB 3 returned an older version of overwritten candles; writing them again"
            );
            let again: Vec<CandleSet<'_>> = lost
                .iter()
                .map(|(resolution, symbol, candles)| CandleSet {
                    resolution: *resolution,
                    symbol,
                    candles,
                })
                .collect();
            this.write_sets(&again).await?;
            pending = lost;
        }
        unreachable!("the last rewrite returns")
    }

    /// Candle sets into this client's policy, [`WRITES_IN_FLIGHT`] requests
    /// at once.
    async fn write_sets(&self, sets: &[CandleSet<'_>]) -> Result<(), InfluxError> {
        // Bodies are encoded as the requests go out: at most a few requests'
        // worth of line protocol exists at once, however many candles.
        let layout = self.layout.clone();
        futures_util::stream::iter(Bodies::new(sets, &layout, self.write_batch))
            .map(|b| async move { self.write_candle_lines(b?).await })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    /// The policy writes of `s` go to (`None`: the request default).
    fn write_policy(&self, s: Stored) -> Option<&str> {
        self.placement
            .spec(s)
            .map(|p| p.name.as_str())
            .or(self.retention_policy.as_deref())
    }

    /// This client writing to `policy` instead of `influx.retention_policy`.
    fn writing_to(&self, policy: Option<&str>) -> InfluxClient {
        InfluxClient {
            retention_policy: policy.map(str::to_string),
            ..self.clone()
        }
    }

    /// `POST /write` of a line-protocol body (nanosecond timestamps), with
    /// retries, into the request's policy (an empty body probes permissions).
    pub(super) async fn write_lines(&self, body: Bytes) -> Result<(), InfluxError> {
        self.post_lines("/write", &self.db_params(), body).await
    }

    /// True if candle writes are acknowledged before the server's WAL flush
    /// (`influx.no_sync` on InfluxDB 3; other generations have no such option).
    fn no_sync(&self) -> bool {
        self.no_sync && self.generation.writes_without_sync()
    }

    /// A candle write: `/write`, or on InfluxDB 3 with `influx.no_sync`
    /// `POST /api/v3/write_lp?no_sync=true`, acknowledged before the WAL
    /// flush (durability and read-your-write traded for latency: default.toml).
    async fn write_candle_lines(&self, body: Bytes) -> Result<(), InfluxError> {
        if !self.no_sync() {
            return self.write_lines(body).await;
        }
        let params = [
            ("db", self.database.as_str()),
            ("precision", "nanosecond"),
            ("no_sync", "true"),
        ];
        self.post_lines("/api/v3/write_lp", &params, body).await
    }

    /// This client with synced writes: for writes that are read back at once.
    fn synced(&self) -> InfluxClient {
        InfluxClient {
            no_sync: false,
            ..self.clone()
        }
    }

    /// POSTs line protocol to `path` with `params`, retried like every
    /// request; the outcome feeds `/healthz`'s view of writes.
    async fn post_lines<K: serde::Serialize, V: serde::Serialize>(
        &self,
        path: &str,
        params: &[(K, V)],
        body: Bytes,
    ) -> Result<(), InfluxError> {
        let written = self
            .send("write", || {
                self.request(reqwest::Method::POST, path)
                    .query(params)
                    .body(body.clone())
            })
            .await
            .map(|_| ());
        self.write_failure.record(&written);
        written
    }
}

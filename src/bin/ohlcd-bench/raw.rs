//! Bare reads from InfluxDB: the references ohlcd is measured against.
//!
//! A raw pull asks `/query` for chunked CSV or MessagePack and reads the answer
//! to the end without decoding it, so it is the floor of what any client of
//! InfluxDB pays for the same rows. It deliberately bypasses
//! [`ohlcd::influx::InfluxClient`], whose reads decode rows; everything else
//! the bench asks of InfluxDB goes through that client.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;

/// Rows per chunk asked of InfluxDB (as in ohlcd's early default; larger
/// chunks make no measurable difference to a bare pull).
const CHUNK_SIZE: &str = "10000";

/// Reads query answers as bytes.
#[derive(Clone)]
pub(crate) struct RawReader {
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
}

/// A query answer read to the end.
pub(crate) struct Fetched {
    pub elapsed: Duration,
    pub bytes: u64,
    /// Newlines (CSV: header + rows).
    pub lines: u64,
    pub content_type: String,
    /// The whole body if asked to keep it, else its first bytes.
    pub body: Vec<u8>,
}

impl Fetched {
    /// CSV data rows: lines that are not a header.
    pub(crate) fn csv_rows(&self) -> u64 {
        let headers = self
            .body
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"name,"))
            .count() as u64;
        self.lines.saturating_sub(headers.max(1))
    }
}

impl RawReader {
    pub(crate) fn new(url: &str) -> Result<RawReader> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(900))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(RawReader {
            http,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    /// A query streamed chunked in format `accept` (`application/csv` or
    /// `application/x-msgpack`), read to the end and timed; the body is kept
    /// only if `keep`.
    pub(crate) async fn fetch(
        &self,
        db: &str,
        q: &str,
        accept: &str,
        keep: bool,
    ) -> Result<Fetched> {
        let started = Instant::now();
        let resp = self
            .http
            .post(format!("{}/query", self.url))
            .header(reqwest::header::ACCEPT, accept)
            .form(&[
                ("db", db),
                ("q", q),
                ("epoch", "ns"),
                ("chunked", "true"),
                ("chunk_size", CHUNK_SIZE),
            ])
            .send()
            .await
            .with_context(|| format!("InfluxDB at {} did not answer `{q}`", self.url))?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !status.is_success() {
            let header = resp
                .headers()
                .get("X-Influxdb-Error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = resp.text().await.unwrap_or_default();
            bail!(
                "InfluxDB answered {status} to `{q}`: {}",
                header.unwrap_or(text)
            );
        }
        let mut stream = resp.bytes_stream();
        let (mut bytes, mut lines) = (0u64, 0u64);
        let mut head: Vec<u8> = Vec::new();
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading InfluxDB's answer to `{q}`"))?;
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            if head.len() < 256 {
                head.extend_from_slice(&chunk[..chunk.len().min(256)]);
            }
            if keep {
                body.extend_from_slice(&chunk);
            }
        }
        let elapsed = started.elapsed();
        if head.starts_with(b"error\n") || head.starts_with(b"error\r\n") {
            bail!(
                "InfluxDB failed `{q}`: {}",
                String::from_utf8_lossy(&head).replace('\n', " ")
            );
        }
        if !keep {
            body = head;
        }
        Ok(Fetched {
            elapsed,
            bytes,
            lines,
            content_type,
            body,
        })
    }
}

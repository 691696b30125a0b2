//! InfluxDB client over the 1.x HTTP API (`/write`, `/query`, `/ping`), which every
//! InfluxDB generation serves (2.x through v1 compatibility, 3.x natively).
//!
//! Large reads are streamed: the query asks for chunked CSV and rows are parsed one
//! at a time from the response body, so memory does not grow with the result size.
//! Small metadata queries use JSON, because only JSON reports every error (CSV
//! answers an empty 200 for a missing database).

//!
//! Modules: this one is the transport (requests, auth, retries, errors);
//! [`query`] the InfluxQL sent, [`decode`] and [`msgpack`] the streaming
//! result decoders, [`encode`] candle writes.

use std::time::Duration;

use bytes::Bytes;
use rand::RngExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::config::InfluxSettings;

pub mod decode;
pub mod encode;
pub mod msgpack;
pub mod query;

pub use encode::{CandleSet, WRITES_IN_FLIGHT, encode_candles};
pub use query::{quote_ident, quote_literal, symbol_set_condition};

/// Measurement holding raw trades.
pub const TRADES_MEASUREMENT: &str = "trades";

/// Everything that can go wrong talking to InfluxDB, with the context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    /// No TCP connection could be made.
    #[error("cannot reach InfluxDB at {url} ({detail}); is influxd running and influx.url right?")]
    Unreachable {
        /// Base URL tried.
        url: String,
        /// What the HTTP client said.
        detail: String,
    },
    /// The request did not complete in time.
    #[error("InfluxDB at {url} did not answer within {secs}s")]
    Timeout {
        /// Base URL tried.
        url: String,
        /// Configured timeout.
        secs: u64,
    },
    /// The database does not exist.
    #[error(
        "InfluxDB database {database:?} does not exist at {url}; create it (influx -execute 'CREATE DATABASE {database}') or set influx.database"
    )]
    DatabaseNotFound {
        /// Base URL.
        url: String,
        /// Database name.
        database: String,
    },
    /// Credentials missing or wrong.
    #[error(
        "InfluxDB at {url} refused the credentials ({status}): {message}; check influx.username/password or influx.token"
    )]
    Unauthorized {
        /// Base URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Server message.
        message: String,
    },
    /// Any other non-success HTTP status.
    #[error("InfluxDB answered {status} to {what}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Which request.
        what: &'static str,
        /// Server message.
        message: String,
    },
    /// The credentials may read but not write the database.
    #[error(
        "InfluxDB at {url} does not let this user write to database {database:?} ({message}); ohlcd writes candles there: grant WRITE or use another user"
    )]
    ReadOnly {
        /// Base URL.
        url: String,
        /// Database name.
        database: String,
        /// Server message.
        message: String,
    },
    /// A query was accepted but failed.
    #[error("InfluxDB query failed: {message} (query: {query})")]
    Query {
        /// Server message.
        message: String,
        /// The InfluxQL sent.
        query: String,
    },
    /// The response could not be understood.
    #[error("unexpected InfluxDB response: {0}")]
    Protocol(String),
    /// The connection broke while a response was being read.
    #[error("InfluxDB response stream broke: {0}")]
    Stream(String),
}

impl InfluxError {
    /// Worth retrying: the same request may succeed a moment later.
    pub fn is_transient(&self) -> bool {
        match self {
            InfluxError::Unreachable { .. }
            | InfluxError::Timeout { .. }
            | InfluxError::Stream(_) => true,
            InfluxError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// How requests authenticate.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic { username: String, password: String },
    Token(String),
}

/// A client for one InfluxDB database.
#[derive(Debug, Clone)]
pub struct InfluxClient {
    http: reqwest::Client,
    url: String,
    database: String,
    retention_policy: Option<String>,
    auth: Auth,
    retries: u32,
    timeout_secs: u64,
    chunk_size: usize,
    write_batch: usize,
    read_format: ReadFormat,
    read_format_auto: bool,
}

/// How query results are read from InfluxDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFormat {
    /// MessagePack (InfluxDB 1.x): cheaper to produce and to parse.
    Msgpack,
    /// CSV: served by every InfluxDB generation.
    Csv,
}

impl InfluxClient {
    /// A client for the configured server and database; does not connect yet.
    pub fn new(s: &InfluxSettings) -> Result<InfluxClient, InfluxError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(s.connect_timeout_secs))
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|e| InfluxError::Protocol(format!("cannot build HTTP client: {e}")))?;
        let auth = if !s.token.is_empty() {
            Auth::Token(s.token.clone())
        } else if !s.username.is_empty() {
            Auth::Basic {
                username: s.username.clone(),
                password: s.password.clone(),
            }
        } else {
            Auth::None
        };
        Ok(InfluxClient {
            http,
            url: s.url.trim_end_matches('/').to_string(),
            database: s.database.clone(),
            retention_policy: (!s.retention_policy.is_empty()).then(|| s.retention_policy.clone()),
            auth,
            retries: s.retries,
            timeout_secs: s.timeout_secs,
            chunk_size: s.query_chunk_size,
            write_batch: s.write_batch,
            read_format: match s.read_format.as_str() {
                "csv" => ReadFormat::Csv,
                // `auto` starts with msgpack, the 1.x format; see set_read_format_for.
                _ => ReadFormat::Msgpack,
            },
            read_format_auto: s.read_format == "auto",
        })
    }

    /// Base URL of the server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Candle lines per write request.
    pub fn write_batch(&self) -> usize {
        self.write_batch
    }

    /// Database name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// A client sharing this one's connections whose requests time out after
    /// `secs` and are retried `retries` times: serving and health checks must
    /// fail fast rather than wait out the long timeout meant for chunk reads.
    pub fn fail_fast(&self, secs: u64, retries: u32) -> InfluxClient {
        InfluxClient {
            timeout_secs: secs,
            retries,
            ..self.clone()
        }
    }

    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}{}", self.url, path))
            .timeout(Duration::from_secs(self.timeout_secs));
        match &self.auth {
            Auth::None => rb,
            Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
            Auth::Token(t) => rb.header(reqwest::header::AUTHORIZATION, format!("Token {t}")),
        }
    }

    pub(super) fn db_params(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![("db", self.database.clone())];
        if let Some(rp) = &self.retention_policy {
            p.push(("rp", rp.clone()));
        }
        p
    }

    pub(super) fn map_send_error(&self, e: reqwest::Error) -> InfluxError {
        if e.is_timeout() {
            InfluxError::Timeout {
                url: self.url.clone(),
                secs: self.timeout_secs,
            }
        } else if e.is_connect() || e.is_request() {
            InfluxError::Unreachable {
                url: self.url.clone(),
                detail: root_cause(&e),
            }
        } else {
            InfluxError::Stream(root_cause(&e))
        }
    }

    pub(super) async fn status_error(
        &self,
        what: &'static str,
        resp: reqwest::Response,
    ) -> InfluxError {
        let status = resp.status();
        let header = resp
            .headers()
            .get("X-Influxdb-Error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.text().await.unwrap_or_default();
        let message = header.unwrap_or_else(|| {
            serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(body)
        });
        if message.contains("database not found") {
            return InfluxError::DatabaseNotFound {
                url: self.url.clone(),
                database: self.database.clone(),
            };
        }
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => InfluxError::Unauthorized {
                url: self.url.clone(),
                status: status.as_u16(),
                message,
            },
            _ => InfluxError::Status {
                status: status.as_u16(),
                what,
                message,
            },
        }
    }

    /// Sends a request built by `build`, retrying transient failures with
    /// exponential backoff and jitter; returns the successful response.
    pub(super) async fn send(
        &self,
        what: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, InfluxError> {
        let mut attempt = 0;
        loop {
            let err = match build().send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => self.status_error(what, resp).await,
                Err(e) => self.map_send_error(e),
            };
            if !err.is_transient() || attempt >= self.retries {
                return Err(err);
            }
            attempt += 1;
            let backoff = backoff_delay(attempt);
            tracing::warn!(what, attempt, ?backoff, error = %err, "InfluxDB request failed, retrying");
            tokio::time::sleep(backoff).await;
        }
    }

    /// The longest one request can take before its error is returned: every
    /// attempt (`influx.retries` + 1) running into `influx.timeout_secs`, plus
    /// the longest backoff between them. This is also how long a failing
    /// InfluxDB keeps a batch from being marked `failed`: the client is the one
    /// place that retries (the engine does not retry a failed batch within a
    /// tick; the next tick starts it again).
    pub fn worst_case(&self) -> Duration {
        let waits: Duration = (1..=self.retries).map(max_backoff).sum();
        Duration::from_secs(self.timeout_secs) * (self.retries + 1) + waits
    }

    /// With `influx.read_format = "auto"`, settles the format from the server
    /// version: MessagePack from InfluxDB 1.x, CSV from anything else (2.x and
    /// 3.x do not serve MessagePack on `/query`).
    pub fn set_read_format_for(&mut self, version: &str) {
        if self.read_format_auto {
            self.read_format = if version.starts_with("1.") {
                ReadFormat::Msgpack
            } else {
                ReadFormat::Csv
            };
        }
    }

    /// The format query results are read in.
    pub fn read_format(&self) -> ReadFormat {
        self.read_format
    }

    /// `GET /ping`, once, without retries (start-up checks should fail fast);
    /// returns the server version.
    pub async fn ping(&self) -> Result<String, InfluxError> {
        let resp = match self.request(reqwest::Method::GET, "/ping").send().await {
            Ok(resp) if resp.status().is_success() => resp,
            Ok(resp) => return Err(self.status_error("ping", resp).await),
            Err(e) => return Err(self.map_send_error(e)),
        };
        Ok(resp
            .headers()
            .get("X-Influxdb-Version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string())
    }

    /// Runs InfluxQL and returns the JSON of its first statement, failing on any
    /// statement error.
    pub async fn query_json(&self, q: &str) -> Result<Value, InfluxError> {
        let mut form = self.db_params();
        form.push(("q", q.to_string()));
        form.push(("epoch", "ns".to_string()));
        let resp = self
            .send("query", || {
                self.request(reqwest::Method::POST, "/query").form(&form)
            })
            .await?;
        let body: Value = resp
            .json()
            .await
            .map_err(|e| InfluxError::Protocol(format!("query answer is not JSON: {e}")))?;
        let first = body
            .get("results")
            .and_then(|r| r.get(0))
            .cloned()
            .ok_or_else(|| InfluxError::Protocol(format!("no results in {body}")))?;
        if let Some(message) = first.get("error").and_then(Value::as_str) {
            if message.contains("database not found") {
                return Err(InfluxError::DatabaseNotFound {
                    url: self.url.clone(),
                    database: self.database.clone(),
                });
            }
            return Err(InfluxError::Query {
                message: message.to_string(),
                query: q.to_string(),
            });
        }
        Ok(first)
    }

    /// `POST /write` of a line-protocol body (nanosecond timestamps), with retries.
    pub async fn write_lines(&self, body: Bytes) -> Result<(), InfluxError> {
        let params = self.db_params();
        self.send("write", || {
            self.request(reqwest::Method::POST, "/write")
                .query(&params)
                .body(body.clone())
        })
        .await
        .map(|_| ())
    }
}

/// 100 ms, 200 ms, 400 ms … (capped at 5 s) plus up to 50 % jitter, so clients that
/// failed together do not retry together.
pub(super) fn backoff_delay(attempt: u32) -> Duration {
    let base = backoff_base(attempt);
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

fn backoff_base(attempt: u32) -> u64 {
    100u64.saturating_mul(1 << attempt.min(6)).min(5_000)
}

/// The longest [`backoff_delay`] can be for `attempt`.
fn max_backoff(attempt: u32) -> Duration {
    let base = backoff_base(attempt);
    Duration::from_millis(base + base / 2)
}

/// The innermost error message (reqwest's own message is often just "error sending request").
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff_delay(1) >= Duration::from_millis(200));
        assert!(backoff_delay(1) <= Duration::from_millis(300));
        assert!(backoff_delay(30) <= Duration::from_millis(7_500));
        for attempt in 1..10 {
            assert!(backoff_delay(attempt) <= max_backoff(attempt));
        }
    }

    #[test]
    fn the_worst_case_is_every_attempt_timing_out_plus_the_backoffs() {
        let settings = crate::config::Settings::load_with_env(None, Vec::new()).unwrap();
        // Defaults: 4 attempts of 60 s, backoffs of at most 0.3, 0.6 and 1.2 s.
        let client = InfluxClient::new(&settings.influx).unwrap();
        assert_eq!(client.worst_case(), Duration::from_millis(242_100));
    }
}

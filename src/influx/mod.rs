//! InfluxDB client over the 1.x HTTP API (`/write`, `/query`, `/ping`), which every
//! InfluxDB generation serves (2.x through v1 compatibility, 3.x natively).
//!
//! Large reads are streamed: the query asks for chunked CSV and rows are parsed one
//! at a time from the response body, so memory does not grow with the result size.
//! Small metadata queries use JSON, because only JSON reports every error (CSV
//! answers an empty 200 for a missing database).
//!
//! Modules: this one is the transport (requests, auth, retries); [`error`]
//! what can go wrong and which failures are worth retrying;
//! [`generation`] what the server's generation decides (dialect, deletes,
//! overwrites, database API), asked by the others. The queries sent are in
//! [`database`] (create and check the database), [`edges`] (first and last
//! points), [`trades`] (the one read of trades, and counting them) and
//! [`candles`] (the one read of candles, and deleting them), their text
//! built by the pure functions of [`query`] from [`layout`]'s names,
//! conditions and columns of the user's schema
//! ([`crate::schema::layout::Layout`], found on the server at start by
//! [`discover`]); [`decode`] and [`msgpack`] the streaming result decoders;
//! [`write`](mod@write) the one write path, sending what [`encode`] encodes, with
//! [`overwrite`] checking overwrites on InfluxDB 3; [`retention`] where each
//! measurement lives and how long it is kept.

use std::time::Duration;

use rand::RngExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::config::InfluxSettings;

pub mod candles;
pub mod database;
pub mod decode;
pub mod discover;
pub mod edges;
pub mod encode;
mod error;
pub mod generation;
pub mod layout;
pub mod msgpack;
pub mod overwrite;
pub mod query;
pub mod retention;
pub mod trades;
pub mod write;

pub use candles::CandleRead;
pub use encode::{CandleSet, encode_candles};
pub use error::InfluxError;
pub(crate) use error::root_cause;
pub use generation::Generation;
pub use query::{quote_ident, quote_literal};
pub use retention::{Placement, Stored};
pub use trades::{TradeRead, trades_only};
pub use write::WRITES_IN_FLIGHT;

/// Measurement holding raw trades in ohlcd's own schema (the default of
/// `schema.trades_measurement`).
pub const TRADES_MEASUREMENT: &str = "trades";

/// How requests authenticate. `Debug` never shows a password or token.
#[derive(Clone)]
enum Auth {
    None,
    Basic { username: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// `url` without its userinfo, and the user and password it held (percent
/// decoded). The client keeps only the bare URL, so no message, log line or
/// `Debug` can show a password written into `influx.url`.
fn split_userinfo(url: &str) -> (String, Option<(String, String)>) {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return (url.to_string(), None);
    };
    if parsed.username().is_empty() && parsed.password().is_none() {
        return (url.to_string(), None);
    }
    let user = percent_decode(parsed.username());
    let password = percent_decode(parsed.password().unwrap_or(""));
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    (parsed.to_string(), Some((user, password)))
}

/// Percent-decodes a URL component (`%40` → `@`); invalid escapes stay as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A client for one InfluxDB database.
#[derive(Debug, Clone)]
pub struct InfluxClient {
    http: reqwest::Client,
    url: String,
    database: String,
    retention_policy: Option<String>,
    /// Where each measurement lives (`[retention]`) and how long it is kept.
    placement: std::sync::Arc<Placement>,
    auth: Auth,
    retries: u32,
    timeout_secs: u64,
    chunk_size: usize,
    write_batch: usize,
    read_format: ReadFormat,
    read_format_auto: bool,
    generation: Generation,
    no_sync: bool,
    /// Where the trades are and what they hold (`[schema]` matched against
    /// the server); ohlcd's own schema until [`InfluxClient::set_layout`].
    layout: std::sync::Arc<crate::schema::layout::Layout>,
    /// Tag values outside the symbol rule already warned about.
    warned: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The last write that failed, shared by every clone of this client.
    write_failure: std::sync::Arc<WriteFailure>,
}

/// How long a failed write keeps [`InfluxClient::recent_write_failure`]
/// reporting it when no write has been tried since.
pub const WRITE_FAILURE_HOLD: Duration = Duration::from_secs(120);

/// The newest write failure of a client and its clones; a write that
/// succeeds clears it. Reads can succeed while writes fail (a full disk:
/// InfluxDB answers queries and refuses every write), so health needs both.
#[derive(Debug, Default)]
struct WriteFailure(std::sync::Mutex<Option<(std::time::Instant, String)>>);

impl WriteFailure {
    fn record<T>(&self, outcome: &Result<T, InfluxError>) {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(_) => *last = None,
            // A 4xx is about the data written, not about the server.
            Err(e) if e.is_transient() => {
                *last = Some((std::time::Instant::now(), e.to_string()));
            }
            Err(_) => {}
        }
    }
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
        let (url, userinfo) = split_userinfo(&s.url);
        let auth = if s.token.is_set() {
            Auth::Token(s.token.expose().to_string())
        } else if !s.username.is_empty() {
            Auth::Basic {
                username: s.username.clone(),
                password: s.password.expose().to_string(),
            }
        } else if let Some((username, password)) = userinfo {
            Auth::Basic { username, password }
        } else {
            Auth::None
        };
        Ok(InfluxClient {
            http,
            url: url.trim_end_matches('/').to_string(),
            database: s.database.clone(),
            retention_policy: (!s.retention_policy.is_empty()).then(|| s.retention_policy.clone()),
            placement: std::sync::Arc::new(Placement::new(
                s.retention
                    .specs()
                    .map_err(|e| InfluxError::Retention(format!("invalid configuration: {e}")))?,
            )),
            auth,
            retries: s.retries,
            timeout_secs: s.timeout_secs,
            chunk_size: s.query_chunk_size,
            write_batch: s.write_batch,
            read_format: match s.read_format.as_str() {
                "csv" => ReadFormat::Csv,
                // `auto` starts with msgpack, the 1.x format; see set_generation.
                _ => ReadFormat::Msgpack,
            },
            read_format_auto: s.read_format == "auto",
            // Until `detect`: the v1 API as 1.x serves it.
            generation: Generation::V1,
            no_sync: s.no_sync,
            layout: Default::default(),
            warned: Default::default(),
            write_failure: Default::default(),
        })
    }

    /// Where the trades are and how a row of them reads (ohlcd's own schema
    /// until [`InfluxClient::set_layout`]).
    pub fn layout(&self) -> &crate::schema::layout::Layout {
        &self.layout
    }

    /// What this client's query text is built from.
    fn names(&self) -> query::Names<'_> {
        query::Names {
            layout: &self.layout,
            database: &self.database,
            placement: &self.placement,
        }
    }

    /// Reads and writes trades and candles as `layout` says from now on
    /// (normally found by [`InfluxClient::resolve_schema`]).
    pub fn set_layout(&mut self, layout: crate::schema::layout::Layout) {
        self.layout = std::sync::Arc::new(layout);
    }

    /// Why the last write failed, if it did (after its retries, with a
    /// server or connection error) less than [`WRITE_FAILURE_HOLD`] ago and
    /// no write of this client or a clone has succeeded since.
    pub fn recent_write_failure(&self) -> Option<String> {
        let last = self
            .write_failure
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < WRITE_FAILURE_HOLD)
            .map(|(_, why)| why.clone())
    }

    /// Base URL of the server.
    pub fn url(&self) -> &str {
        &self.url
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
                source: e,
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
            return self.database_not_found();
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

    /// Pings the server, records its generation and, with
    /// `influx.read_format = "auto"`, settles the read format: MessagePack from
    /// InfluxDB 1.x, CSV from anything else (2.x and the 3.x builds tested do
    /// not serve MessagePack on `/query`). Returns the server version.
    pub async fn detect(&mut self) -> Result<String, InfluxError> {
        let (version, build) = self.ping_headers().await?;
        self.set_generation(Generation::from_ping(&version, &build));
        Ok(version)
    }

    /// Sets the generation (normally found by [`InfluxClient::detect`]) and the
    /// read format `auto` implies for it.
    pub fn set_generation(&mut self, generation: Generation) {
        self.generation = generation;
        if self.read_format_auto {
            self.read_format = generation.auto_read_format();
        }
    }

    /// The server generation (1.x until [`InfluxClient::detect`] found otherwise).
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// [`InfluxError::DatabaseNotFound`] for this database, saying how this
    /// server's generation creates one (3.x has no `CREATE DATABASE`).
    pub fn database_not_found(&self) -> InfluxError {
        InfluxError::DatabaseNotFound {
            url: self.url.clone(),
            database: self.database.clone(),
            create: self.generation.create_hint(&self.url, &self.database),
        }
    }

    /// The format query results are read in.
    pub fn read_format(&self) -> ReadFormat {
        self.read_format
    }

    /// `GET /ping`, once, without retries (start-up checks should fail fast);
    /// returns the server version.
    pub async fn ping(&self) -> Result<String, InfluxError> {
        Ok(self.ping_headers().await?.0)
    }

    /// `GET /ping` once: the `X-Influxdb-Version` and `X-Influxdb-Build` headers.
    async fn ping_headers(&self) -> Result<(String, String), InfluxError> {
        let resp = match self.request(reqwest::Method::GET, "/ping").send().await {
            Ok(resp) if resp.status().is_success() => resp,
            Ok(resp) => return Err(self.status_error("ping", resp).await),
            Err(e) => return Err(self.map_send_error(e)),
        };
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let version = header("X-Influxdb-Version");
        let build = header("X-Influxdb-Build");
        Ok((
            if version.is_empty() {
                "unknown".to_string()
            } else {
                version
            },
            build,
        ))
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
        let body: Value = resp.json().await.map_err(|e| {
            // A server that stops mid-answer (frozen, overloaded) times out
            // reading the body: that is a timeout, not a malformed answer.
            if e.is_timeout() || !e.is_decode() {
                self.map_send_error(e)
            } else {
                InfluxError::Protocol(format!("query answer is not JSON: {e}"))
            }
        })?;
        let first = body
            .get("results")
            .and_then(|r| r.get(0))
            .cloned()
            .ok_or_else(|| InfluxError::Protocol(format!("no results in {body}")))?;
        if let Some(message) = first.get("error").and_then(Value::as_str) {
            if message.contains("database not found") {
                return Err(self.database_not_found());
            }
            return Err(InfluxError::Query {
                message: message.to_string(),
                query: q.to_string(),
            });
        }
        Ok(first)
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

#[cfg(test)]
mod tests;

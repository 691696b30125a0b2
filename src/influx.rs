//! InfluxDB client over the 1.x HTTP API (`/write`, `/query`, `/ping`), which every
//! InfluxDB generation serves (2.x through v1 compatibility, 3.x natively).
//!
//! Large reads are streamed: the query asks for chunked CSV and rows are parsed one
//! at a time from the response body, so memory does not grow with the result size.
//! Small metadata queries use JSON, because only JSON reports every error (CSV
//! answers an empty 200 for a missing database).

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use influxdb_line_protocol::LineProtocolBuilder;
use rand::RngExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::candle::{Candle, Resolution, Side, Trade};
use crate::config::InfluxSettings;
use crate::msgpack::{ChunkDecoder, DecodeError, Decoded, Val};

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

/// Escapes a string for an InfluxQL single-quoted literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Escapes an identifier for InfluxQL double quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Column positions of a result, found from its header.
#[derive(Debug, Default)]
struct Columns(Vec<String>);

impl Columns {
    fn index(&self, name: &str) -> Result<usize, InfluxError> {
        self.0
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| InfluxError::Protocol(format!("result has no column {name:?}")))
    }
}

/// One row of a result, whichever wire format it came in.
enum Row<'r> {
    Csv(&'r csv_async::ByteRecord),
    Pack(&'r [Val<'r>]),
}

impl Row<'_> {
    /// The symbol in column `i`, or "" when the query did not select it
    /// (`i == usize::MAX`).
    fn symbol(&self, i: usize) -> Result<&str, InfluxError> {
        if i == usize::MAX {
            return Ok("");
        }
        self.bytes(i)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| InfluxError::Protocol("row without a symbol".into()))
    }

    fn bytes(&self, i: usize) -> Option<&[u8]> {
        match self {
            Row::Csv(rec) => rec.get(i),
            Row::Pack(vals) => match vals.get(i) {
                Some(Val::Str(s)) => Some(s),
                _ => None,
            },
        }
    }

    /// Column `i` as a `T`: parsed from CSV text, or taken from the msgpack value.
    fn value<T: std::str::FromStr>(
        &self,
        i: usize,
        name: &str,
        what: &str,
        from_pack: impl Fn(&Val) -> Option<T>,
    ) -> Result<T, InfluxError> {
        let v = match self {
            Row::Csv(rec) => rec
                .get(i)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse().ok()),
            Row::Pack(vals) => vals.get(i).and_then(from_pack),
        };
        v.ok_or_else(|| InfluxError::Protocol(format!("column {name} is not {what}")))
    }

    fn f64(&self, i: usize, name: &str) -> Result<f64, InfluxError> {
        self.value(i, name, "a number", |v| v.as_f64())
    }

    fn i64(&self, i: usize, name: &str) -> Result<i64, InfluxError> {
        self.value(i, name, "an integer", |v| v.as_i64())
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

/// Write requests [`InfluxClient::write_candle_sets`] keeps in flight at once.
pub const WRITES_IN_FLIGHT: usize = 4;

/// Candles of one symbol at one resolution, to be written.
#[derive(Debug, Clone, Copy)]
pub struct CandleSet<'a> {
    /// Their resolution (measurement).
    pub resolution: Resolution,
    /// Their symbol (tag).
    pub symbol: &'a str,
    /// The candles.
    pub candles: &'a [Candle],
}

/// Line protocol for candles of one symbol and resolution.
pub fn encode_candles(res: Resolution, symbol: &str, candles: &[Candle]) -> Vec<u8> {
    let mut lp = LineProtocolBuilder::new_with(Vec::with_capacity(candles.len() * 160));
    for c in candles {
        lp = lp
            .measurement(res.measurement())
            .tag("symbol", symbol)
            .field("open", c.open)
            .field("high", c.high)
            .field("low", c.low)
            .field("close", c.close)
            .field("volume", c.volume)
            .field("quote_volume", c.quote_volume)
            .field("trades", c.trades)
            .field("buy_volume", c.buy_volume)
            .timestamp(c.start)
            .close_line();
    }
    lp.build()
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

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
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

    fn db_params(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![("db", self.database.clone())];
        if let Some(rp) = &self.retention_policy {
            p.push(("rp", rp.clone()));
        }
        p
    }

    fn map_send_error(&self, e: reqwest::Error) -> InfluxError {
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

    async fn status_error(&self, what: &'static str, resp: reqwest::Response) -> InfluxError {
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
    async fn send(
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

    /// Creates the database if it does not exist (idempotent).
    pub async fn create_database(&self) -> Result<(), InfluxError> {
        self.query_json(&format!("CREATE DATABASE {}", quote_ident(&self.database)))
            .await
            .map(|_| ())
    }

    /// Fails with [`InfluxError::DatabaseNotFound`] unless the database exists.
    pub async fn check_database(&self) -> Result<(), InfluxError> {
        self.query_json(&format!(
            "SHOW RETENTION POLICIES ON {}",
            quote_ident(&self.database)
        ))
        .await
        .map(|_| ())
    }

    /// Fails with [`InfluxError::ReadOnly`] unless the credentials may write to
    /// the database. Probes with an empty write, which stores nothing.
    pub async fn check_writable(&self) -> Result<(), InfluxError> {
        match self.write_lines(Bytes::new()).await {
            Err(InfluxError::Unauthorized {
                status: 403,
                message,
                ..
            }) => Err(InfluxError::ReadOnly {
                url: self.url.clone(),
                database: self.database.clone(),
                message,
            }),
            other => other,
        }
    }

    /// Symbols that have raw trades (`SHOW TAG VALUES`), sorted.
    pub async fn symbols(&self) -> Result<Vec<String>, InfluxError> {
        let v = self
            .query_json(&format!(
                "SHOW TAG VALUES FROM {} WITH KEY = \"symbol\"",
                quote_ident(TRADES_MEASUREMENT)
            ))
            .await?;
        let mut out: Vec<String> = series_values(&v)
            .filter_map(|row| row.get(1).and_then(Value::as_str).map(str::to_string))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Time of the earliest raw trade of `symbol`, if any.
    pub async fn first_trade_time(&self, symbol: &str) -> Result<Option<i64>, InfluxError> {
        self.first_time_from(None, symbol, i64::MIN).await
    }

    /// Time of the first point of `symbol` at or after `from`, in the raw trades
    /// (`res` = `None`) or in the candles of `res`.
    pub async fn first_time_from(
        &self,
        res: Option<Resolution>,
        symbol: &str,
        from: i64,
    ) -> Result<Option<i64>, InfluxError> {
        let (measurement, field) = match res {
            None => (TRADES_MEASUREMENT, "price"),
            Some(r) => (r.measurement(), "close"),
        };
        let time_cond = if from == i64::MIN {
            String::new()
        } else {
            format!(" AND time >= {from}")
        };
        let v = self
            .query_json(&format!(
                "SELECT {field} FROM {} WHERE symbol = {}{time_cond} ORDER BY time ASC LIMIT 1",
                quote_ident(measurement),
                quote_literal(symbol)
            ))
            .await?;
        Ok(series_values(&v)
            .next()
            .and_then(|row| row.first().and_then(Value::as_i64)))
    }

    /// Time of the last raw trade of `symbol` strictly before `before`, if any.
    pub async fn last_trade_time_before(
        &self,
        symbol: &str,
        before: i64,
    ) -> Result<Option<i64>, InfluxError> {
        Ok(self
            .last_trade_before(symbol, before)
            .await?
            .map(|(t, _)| t))
    }

    /// Time and price of the last raw trade of `symbol` strictly before `before`.
    pub async fn last_trade_before(
        &self,
        symbol: &str,
        before: i64,
    ) -> Result<Option<(i64, f64)>, InfluxError> {
        let v = self
            .query_json(&format!(
                "SELECT price FROM {} WHERE symbol = {} AND time < {before} ORDER BY time DESC LIMIT 1",
                quote_ident(TRADES_MEASUREMENT),
                quote_literal(symbol)
            ))
            .await?;
        Ok(series_values(&v)
            .next()
            .and_then(|row| Some((row.first()?.as_i64()?, row.get(1)?.as_f64()?))))
    }

    /// Sends a streaming query (chunked) asking for `accept`.
    async fn send_streaming(
        &self,
        q: &str,
        accept: &str,
    ) -> Result<reqwest::Response, InfluxError> {
        let mut form = self.db_params();
        form.push(("q", q.to_string()));
        form.push(("epoch", "ns".to_string()));
        form.push(("chunked", "true".to_string()));
        form.push(("chunk_size", self.chunk_size.to_string()));
        self.send("query", || {
            self.request(reqwest::Method::POST, "/query")
                .header(reqwest::header::ACCEPT, accept)
                .form(&form)
        })
        .await
    }

    fn stream_error(&self, e: reqwest::Error) -> InfluxError {
        if e.is_timeout() {
            InfluxError::Timeout {
                url: self.url.clone(),
                secs: self.timeout_secs,
            }
        } else {
            InfluxError::Stream(root_cause(&e))
        }
    }

    /// Streams a query's rows in the configured format, calling `on_row` with the
    /// columns and each row. Returns the number of rows. Memory stays at one
    /// response chunk, whatever the result size.
    async fn stream_rows(
        &self,
        q: &str,
        mut on_row: impl FnMut(&Columns, Row<'_>) -> Result<(), InfluxError>,
    ) -> Result<u64, InfluxError> {
        match self.read_format {
            ReadFormat::Csv => self.stream_csv(q, &mut on_row).await,
            ReadFormat::Msgpack => self.stream_msgpack(q, &mut on_row).await,
        }
    }

    async fn stream_msgpack(
        &self,
        q: &str,
        on_row: &mut impl FnMut(&Columns, Row<'_>) -> Result<(), InfluxError>,
    ) -> Result<u64, InfluxError> {
        let mut resp = self.send_streaming(q, "application/x-msgpack").await?;
        let mut decoder = ChunkDecoder::new();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        let mut start = 0usize;
        let mut rows = 0u64;
        let mut columns = Columns::default();
        let mut failure: Option<InfluxError> = None;
        let mut at_failpoint = false;
        let mut retry_at = 0usize;
        loop {
            let more = resp.chunk().await.map_err(|e| self.stream_error(e))?;
            let done = more.is_none();
            if let Some(bytes) = more {
                // Keep the unconsumed tail only; the buffer holds about one chunk.
                if start > 0 && start >= buf.len() / 2 {
                    buf.drain(..start);
                    start = 0;
                }
                buf.extend_from_slice(&bytes);
            }
            // Re-decoding an incomplete chunk starts over from its first byte, so
            // only retry once the pending bytes have doubled: total work stays
            // within about twice one pass, whatever size the network reads are.
            while start < buf.len() && (done || buf.len() - start >= retry_at) {
                let decoded = decoder.decode(&buf[start..], &mut |cols, vals| {
                    if columns.0.len() != cols.len()
                        || columns.0.iter().zip(cols).any(|(a, b)| a != b)
                    {
                        columns = Columns(cols.to_vec());
                    }
                    match on_row(&columns, Row::Pack(vals)) {
                        Ok(()) => {
                            rows += 1;
                            if rows == 1_000 {
                                at_failpoint = true;
                            }
                            Ok(())
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            failure = Some(e);
                            Err(msg)
                        }
                    }
                });
                match decoded {
                    Ok(Decoded::Chunk(n)) => {
                        start += n;
                        retry_at = 0;
                    }
                    Ok(Decoded::NeedMore) if done => {
                        return Err(InfluxError::Stream("msgpack result ends mid-chunk".into()));
                    }
                    Ok(Decoded::NeedMore) => {
                        retry_at = (buf.len() - start) * 2;
                        break;
                    }
                    Err(DecodeError::Server(message)) => {
                        return Err(if message.contains("database not found") {
                            InfluxError::DatabaseNotFound {
                                url: self.url.clone(),
                                database: self.database.clone(),
                            }
                        } else {
                            InfluxError::Query {
                                message,
                                query: q.to_string(),
                            }
                        });
                    }
                    Err(DecodeError::Invalid(m)) => {
                        return Err(failure.take().unwrap_or_else(|| {
                            InfluxError::Protocol(format!("msgpack result: {m}"))
                        }));
                    }
                    Err(DecodeError::NeedMore) => unreachable!("decode reports NeedMore as Ok"),
                }
            }
            if std::mem::take(&mut at_failpoint) {
                crate::failpoint::hit("mid_read").await;
            }
            if done {
                if start < buf.len() {
                    return Err(InfluxError::Stream("msgpack result ends mid-chunk".into()));
                }
                return Ok(rows);
            }
        }
    }

    /// Streams a query answered as chunked CSV. CSV answers an empty 200 for a
    /// missing database, which is why the engine checks the database first.
    async fn stream_csv(
        &self,
        q: &str,
        on_row: &mut impl FnMut(&Columns, Row<'_>) -> Result<(), InfluxError>,
    ) -> Result<u64, InfluxError> {
        let resp = self.send_streaming(q, "application/csv").await?;
        let body = resp
            .bytes_stream()
            .map_err(|e| std::io::Error::other(root_cause(&e)));
        let reader = tokio_util::io::StreamReader::new(body);
        let mut csv = csv_async::AsyncReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .create_reader(reader);
        let mut rec = csv_async::ByteRecord::new();
        let mut columns: Option<Columns> = None;
        let mut rows = 0u64;
        let timeout_secs = self.timeout_secs;
        loop {
            let more = csv.read_byte_record(&mut rec).await.map_err(|e| {
                let msg = e.to_string();
                if msg.contains("timed out") || msg.contains("TimedOut") {
                    InfluxError::Timeout {
                        url: self.url.clone(),
                        secs: timeout_secs,
                    }
                } else {
                    InfluxError::Stream(msg)
                }
            })?;
            if !more {
                break;
            }
            if rows == 1_000 {
                crate::failpoint::hit("mid_read").await;
            }
            let first = rec.get(0).unwrap_or_default();
            if first == b"error" && rec.len() == 1 {
                // InfluxDB reports a failed statement as a header `error` and a row
                // with the message.
                let message = if csv.read_byte_record(&mut rec).await.unwrap_or(false) {
                    String::from_utf8_lossy(rec.get(0).unwrap_or_default()).into_owned()
                } else {
                    "unknown error".to_string()
                };
                return Err(InfluxError::Query {
                    message,
                    query: q.to_string(),
                });
            }
            if first == b"name" {
                columns = Some(Columns(
                    rec.iter()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect(),
                ));
                continue;
            }
            let cols = columns
                .as_ref()
                .ok_or_else(|| InfluxError::Protocol("CSV row before header".into()))?;
            on_row(cols, Row::Csv(&rec))?;
            rows += 1;
        }
        Ok(rows)
    }

    /// Streams the raw trades of `symbol` in `[range.start, range.end)` in time
    /// order into `on_trade`; returns how many were read.
    pub async fn stream_trades(
        &self,
        symbol: &str,
        range: Range<i64>,
        on_trade: impl FnMut(Trade),
    ) -> Result<u64, InfluxError> {
        self.stream_trades_limited(symbol, range, None, on_trade)
            .await
    }

    /// Like [`InfluxClient::stream_trades`], stopping after `limit` trades.
    pub async fn stream_trades_limited(
        &self,
        symbol: &str,
        range: Range<i64>,
        limit: Option<u64>,
        mut on_trade: impl FnMut(Trade),
    ) -> Result<u64, InfluxError> {
        let cond = format!("symbol = {}", quote_literal(symbol));
        self.stream_trade_rows(&cond, false, range, limit, |_, t| on_trade(t))
            .await
    }

    /// Streams the raw trades of every symbol in `symbols` in
    /// `[range.start, range.end)` with one query, calling `on_trade` with each
    /// trade's symbol. Rows arrive ordered by time across symbols.
    pub async fn stream_trades_of(
        &self,
        symbols: &[String],
        range: Range<i64>,
        on_trade: impl FnMut(&str, Trade),
    ) -> Result<u64, InfluxError> {
        if symbols.is_empty() {
            return Ok(0);
        }
        self.stream_trade_rows(&symbol_set_condition(symbols), true, range, None, on_trade)
            .await
    }

    async fn stream_trade_rows(
        &self,
        cond: &str,
        with_symbol: bool,
        range: Range<i64>,
        limit: Option<u64>,
        mut on_trade: impl FnMut(&str, Trade),
    ) -> Result<u64, InfluxError> {
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let symbol_col = if with_symbol { ", symbol" } else { "" };
        let q = format!(
            "SELECT price, amount, id, side{symbol_col} FROM {} WHERE {cond} AND time >= {} AND time < {}{limit}",
            quote_ident(TRADES_MEASUREMENT),
            range.start,
            range.end
        );
        let mut idx: Option<[usize; 6]> = None;
        self.stream_rows(&q, |cols, row| {
            let [t, p, a, id, side, sym] = match idx {
                Some(i) => i,
                None => *idx.insert([
                    cols.index("time")?,
                    cols.index("price")?,
                    cols.index("amount")?,
                    cols.index("id")?,
                    cols.index("side")?,
                    if with_symbol {
                        cols.index("symbol")?
                    } else {
                        usize::MAX
                    },
                ]),
            };
            let side = match row.bytes(side) {
                Some(b"buy") => Side::Buy,
                Some(b"sell") => Side::Sell,
                other => {
                    return Err(InfluxError::Protocol(format!(
                        "trade with side {:?}",
                        other.map(String::from_utf8_lossy)
                    )));
                }
            };
            let symbol = row.symbol(sym)?;
            on_trade(
                symbol,
                Trade {
                    time: row.i64(t, "time")?,
                    id: row.i64(id, "id")?,
                    price: row.f64(p, "price")?,
                    amount: row.f64(a, "amount")?,
                    side,
                },
            );
            Ok(())
        })
        .await
    }

    /// Streams stored candles of `res` for `symbol` in `[range.start, range.end)`.
    pub async fn stream_candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
        mut on_candle: impl FnMut(Candle),
    ) -> Result<u64, InfluxError> {
        let cond = format!("symbol = {}", quote_literal(symbol));
        self.stream_candle_rows(res, &cond, false, range, |_, c| on_candle(c))
            .await
    }

    /// Streams stored candles of `res` of every symbol in `symbols` in
    /// `[range.start, range.end)` with one query, with each candle's symbol.
    pub async fn stream_candles_of(
        &self,
        res: Resolution,
        symbols: &[String],
        range: Range<i64>,
        on_candle: impl FnMut(&str, Candle),
    ) -> Result<u64, InfluxError> {
        if symbols.is_empty() {
            return Ok(0);
        }
        self.stream_candle_rows(res, &symbol_set_condition(symbols), true, range, on_candle)
            .await
    }

    async fn stream_candle_rows(
        &self,
        res: Resolution,
        cond: &str,
        with_symbol: bool,
        range: Range<i64>,
        mut on_candle: impl FnMut(&str, Candle),
    ) -> Result<u64, InfluxError> {
        let symbol_col = if with_symbol { ", symbol" } else { "" };
        let q = format!(
            "SELECT open, high, low, close, volume, quote_volume, trades, buy_volume{symbol_col} FROM {} WHERE {cond} AND time >= {} AND time < {}",
            quote_ident(res.measurement()),
            range.start,
            range.end
        );
        let names = [
            "time",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "quote_volume",
            "trades",
            "buy_volume",
        ];
        let mut idx: Option<[usize; 10]> = None;
        self.stream_rows(&q, |cols, row| {
            let i = match idx {
                Some(i) => i,
                None => {
                    let mut i = [usize::MAX; 10];
                    for (slot, name) in i.iter_mut().zip(names) {
                        *slot = cols.index(name)?;
                    }
                    if with_symbol {
                        i[9] = cols.index("symbol")?;
                    }
                    *idx.insert(i)
                }
            };
            on_candle(
                row.symbol(i[9])?,
                Candle {
                    start: row.i64(i[0], "time")?,
                    open: row.f64(i[1], "open")?,
                    high: row.f64(i[2], "high")?,
                    low: row.f64(i[3], "low")?,
                    close: row.f64(i[4], "close")?,
                    volume: row.f64(i[5], "volume")?,
                    quote_volume: row.f64(i[6], "quote_volume")?,
                    trades: row.i64(i[7], "trades")?,
                    buy_volume: row.f64(i[8], "buy_volume")?,
                },
            );
            Ok(())
        })
        .await
    }

    /// Per symbol of `symbols`, the time of its first trade at or after `from`
    /// (one query; symbols without one are absent).
    pub async fn first_trades_of(
        &self,
        symbols: &[String],
        from: i64,
    ) -> Result<std::collections::HashMap<String, i64>, InfluxError> {
        if symbols.is_empty() {
            return Ok(Default::default());
        }
        // LIMIT applies per series: one row per symbol, read from the start of
        // each series' index rather than by scanning it.
        let v = self
            .query_json(&format!(
                "SELECT price FROM {} WHERE {} AND time >= {from} GROUP BY symbol ORDER BY time ASC LIMIT 1",
                quote_ident(TRADES_MEASUREMENT),
                symbol_set_condition(symbols)
            ))
            .await?;
        Ok(tagged_values(&v)
            .filter_map(|(symbol, row)| Some((symbol.to_string(), row.first()?.as_i64()?)))
            .collect())
    }

    /// Per symbol of `symbols`, how many trades it has in the range (one query;
    /// symbols without any are absent).
    pub async fn count_trades_of(
        &self,
        symbols: &[String],
        range: Range<i64>,
    ) -> Result<std::collections::HashMap<String, u64>, InfluxError> {
        if symbols.is_empty() {
            return Ok(Default::default());
        }
        let v = self
            .query_json(&format!(
                "SELECT count(price) FROM {} WHERE {} AND time >= {} AND time < {} GROUP BY symbol",
                quote_ident(TRADES_MEASUREMENT),
                symbol_set_condition(symbols),
                range.start,
                range.end
            ))
            .await?;
        Ok(tagged_values(&v)
            .filter_map(|(symbol, row)| {
                let n = row.get(1)?.as_u64()?;
                (n > 0).then(|| (symbol.to_string(), n))
            })
            .collect())
    }

    /// Reads stored candles into a vector (candle counts per chunk are small).
    pub async fn read_candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<Vec<Candle>, InfluxError> {
        let mut out = Vec::new();
        self.stream_candles(res, symbol, range, |c| out.push(c))
            .await?;
        Ok(out)
    }

    /// Reads all raw trades in a range into memory (tests and small ranges only).
    pub async fn read_trades(
        &self,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<Vec<Trade>, InfluxError> {
        let mut out = Vec::new();
        self.stream_trades(symbol, range, |t| out.push(t)).await?;
        Ok(out)
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

    /// Writes candles in batches of `influx.write_batch` lines.
    pub async fn write_candles(
        &self,
        res: Resolution,
        symbol: &str,
        candles: &[Candle],
    ) -> Result<(), InfluxError> {
        for batch in candles.chunks(self.write_batch) {
            self.write_lines(encode_candles(res, symbol, batch).into())
                .await?;
        }
        Ok(())
    }

    /// Writes candles of many symbols and resolutions: lines are packed into
    /// requests of `influx.write_batch` lines, and up to [`WRITES_IN_FLIGHT`]
    /// requests are sent at once, so a server that acknowledges a write only
    /// after its WAL flush (InfluxDB 3: up to a second) does not serialize a
    /// backfill. Returns once every request was acknowledged.
    pub async fn write_candle_sets(&self, sets: &[CandleSet<'_>]) -> Result<(), InfluxError> {
        let mut bodies: Vec<Bytes> = Vec::new();
        let mut body: Vec<u8> = Vec::new();
        let mut lines = 0;
        for set in sets {
            for part in set.candles.chunks(self.write_batch) {
                if lines + part.len() > self.write_batch && lines > 0 {
                    bodies.push(std::mem::take(&mut body).into());
                    lines = 0;
                }
                body.extend_from_slice(&encode_candles(set.resolution, set.symbol, part));
                lines += part.len();
            }
        }
        if lines > 0 {
            bodies.push(body.into());
        }
        futures_util::stream::iter(bodies)
            .map(|b| self.write_lines(b))
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    /// Deletes the candles of `res` for `symbol` in `[range.start, range.end)`.
    pub async fn delete_candles(
        &self,
        res: Resolution,
        symbol: &str,
        range: Range<i64>,
    ) -> Result<(), InfluxError> {
        self.query_json(&format!(
            "DELETE FROM {} WHERE symbol = {} AND time >= {} AND time < {}",
            quote_ident(res.measurement()),
            quote_literal(symbol),
            range.start,
            range.end
        ))
        .await
        .map(|_| ())
    }
}

/// An InfluxQL condition selecting a set of symbols: `symbol =~ /^(?:A|B)$/`.
/// Symbols are validated (`[A-Za-z0-9._:-]`) before they reach here; every
/// character that means something in a regex is escaped all the same.
pub fn symbol_set_condition(symbols: &[String]) -> String {
    let mut alternatives = String::new();
    for (i, s) in symbols.iter().enumerate() {
        if i > 0 {
            alternatives.push('|');
        }
        for ch in s.chars() {
            if !ch.is_ascii_alphanumeric() {
                alternatives.push('\\');
            }
            alternatives.push(ch);
        }
    }
    format!("symbol =~ /^(?:{alternatives})$/")
}

/// `(symbol tag, row)` of every series of a `GROUP BY symbol` result.
fn tagged_values(v: &Value) -> impl Iterator<Item = (&str, &Vec<Value>)> {
    v.get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let symbol = s.get("tags")?.get("symbol")?.as_str()?;
            let values = s.get("values")?.as_array()?;
            Some(
                values
                    .iter()
                    .filter_map(Value::as_array)
                    .map(move |row| (symbol, row)),
            )
        })
        .flatten()
}

/// Rows of every series in one statement's JSON result.
fn series_values(v: &Value) -> impl Iterator<Item = &Vec<Value>> {
    v.get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("values").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_array)
}

/// 100 ms, 200 ms, 400 ms … (capped at 5 s) plus up to 50 % jitter, so clients that
/// failed together do not retry together.
fn backoff_delay(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

/// The innermost error message (reqwest's own message is often just "error sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
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
    fn literals_and_identifiers_cannot_break_out_of_their_quotes() {
        assert_eq!(quote_literal("BTC'USD"), r"'BTC\'USD'");
        assert_eq!(quote_literal(r"a\' OR 1=1"), r"'a\\\' OR 1=1'");
        assert_eq!(quote_ident("my\"db"), r#""my\"db""#);
    }

    #[test]
    fn candles_encode_as_one_line_each_with_integer_trade_count() {
        let c = Candle {
            start: 60_000_000_000,
            open: 1.5,
            high: 2.0,
            low: 1.0,
            close: 1.25,
            volume: 3.0,
            quote_volume: 4.5,
            trades: 7,
            buy_volume: 0.1,
        };
        let lp = String::from_utf8(encode_candles(Resolution::M5, "BTC-USD", &[c, c])).unwrap();
        let first = lp.lines().next().unwrap();
        assert_eq!(
            first,
            "ohlc_5m,symbol=BTC-USD open=1.5,high=2,low=1,close=1.25,volume=3,quote_volume=4.5,trades=7i,buy_volume=0.1 60000000000"
        );
        assert_eq!(lp.lines().count(), 2);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff_delay(1) >= Duration::from_millis(200));
        assert!(backoff_delay(1) <= Duration::from_millis(300));
        assert!(backoff_delay(30) <= Duration::from_millis(7_500));
    }
}

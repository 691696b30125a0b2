//! Everything that can go wrong talking to InfluxDB, each with what to do
//! about it, and which failures are worth retrying.

/// Everything that can go wrong talking to InfluxDB, with the context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    /// No TCP connection could be made. The message names the innermost
    /// cause (`Connection refused`); the chain is kept as the source.
    #[error(
        "cannot reach InfluxDB at {url} ({}); is influxd running and influx.url right?",
        root_cause(.source)
    )]
    Unreachable {
        /// Base URL tried.
        url: String,
        /// What the HTTP client said.
        #[source]
        source: reqwest::Error,
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
        "InfluxDB database {database:?} does not exist at {url}; create it ({create}) or set influx.database"
    )]
    DatabaseNotFound {
        /// Base URL.
        url: String,
        /// Database name.
        database: String,
        /// How to create it on this server's generation.
        create: String,
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
    /// The server cannot delete (InfluxDB 3), and a candle must go.
    #[error(
        "InfluxDB 3 has no DELETE: stale candle(s) of {symbol} in {measurement} in [{from}, {to}) cannot be removed and stay readable; their window has no trades any more. Remove them by hand (e.g. drop table {measurement} and rebuild) or ignore that window"
    )]
    CannotDelete {
        /// Candle measurement.
        measurement: String,
        /// Symbol.
        symbol: String,
        /// Range start, RFC 3339.
        from: String,
        /// Range end, RFC 3339.
        to: String,
    },
    /// The configured retention policies cannot be used as configured.
    #[error("{0}")]
    Retention(String),
    /// The configured `[schema]` does not match what the server holds, or
    /// cannot be written as the server holds it.
    #[error("{0}")]
    Schema(String),
    /// Overwritten candles still read an older version after every rewrite
    /// (InfluxDB 3 does not promise that the last write of a point wins).
    #[error(
        "InfluxDB 3 kept an older version of {count} overwritten candle(s) (first: {symbol} in {measurement} at {at}) after {rewrites} rewrites; the repair runs again on the next tick (see docs/influxdb.md, InfluxDB 3: overwrites)"
    )]
    OverwriteLost {
        /// How many candles.
        count: usize,
        /// Candle measurement of the first.
        measurement: String,
        /// Symbol of the first.
        symbol: String,
        /// Window start of the first, RFC 3339.
        at: String,
        /// Rewrites tried.
        rewrites: usize,
    },
    /// The response could not be understood.
    #[error("unexpected InfluxDB response: {0}")]
    Protocol(String),
    /// The connection broke while a response was being read.
    #[error("InfluxDB response stream broke: {0}")]
    Stream(String),
}

impl InfluxError {
    /// A write InfluxDB refused for what it holds (a 4xx other than 429, or
    /// overwrites that did not stick): the same candles are refused again,
    /// while other candles of the same request may be fine.
    pub fn is_refused_write(&self) -> bool {
        match self {
            InfluxError::Status {
                status,
                what: "write",
                ..
            } => (400..500).contains(status) && *status != 429,
            InfluxError::OverwriteLost { .. } | InfluxError::CannotDelete { .. } => true,
            _ => false,
        }
    }

    /// Worth retrying: the same request may succeed a moment later.
    pub fn is_transient(&self) -> bool {
        match self {
            InfluxError::Unreachable { .. }
            | InfluxError::Timeout { .. }
            | InfluxError::Stream(_) => true,
            // A 4xx will be answered the same way again (429 asks us to come
            // back); a 501, or a 500 saying "not implemented" (3.x answers
            // `CREATE DATABASE` and `DELETE` so), will never succeed.
            InfluxError::Status {
                status, message, ..
            } => match *status {
                429 => true,
                501 => false,
                500 if message.to_ascii_lowercase().contains("not implemented") => false,
                // 3.x's SQL endpoint answers a query it cannot plan (an
                // unknown table or column) with a 500: the same every time.
                500 if message.contains("error while planning query") => false,
                s => s >= 500,
            },
            _ => false,
        }
    }
}

/// The innermost error message (reqwest's own message is often just "error sending request").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

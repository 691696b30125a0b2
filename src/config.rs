//! Typed, layered configuration: built-in `config/default.toml`, then an optional
//! `--config FILE`, then environment variables `OHLCD_<SECTION>__<KEY>`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::retention::PolicySpec;
pub use crate::schema::SchemaSettings;

/// The defaults, compiled in so the binary works from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Everything ohlcd can be configured with.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// How to reach InfluxDB.
    pub influx: InfluxSettings,
    /// Where progress is kept.
    pub progress: ProgressSettings,
    /// Downsampling behaviour.
    pub engine: EngineSettings,
    /// HTTP server.
    pub server: ServerSettings,
    /// Serving candles.
    pub datafeed: DatafeedSettings,
    /// Retention policy per measurement.
    pub retention: RetentionSettings,
    /// Where the raw trades are and what they hold.
    pub schema: SchemaSettings,
}

/// InfluxDB connection settings. `Debug` shows the URL without its password.
#[derive(Clone, Deserialize)]
pub struct InfluxSettings {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    /// Database with the `trades` measurement.
    pub database: String,
    /// Retention policy; empty for the default.
    pub retention_policy: String,
    /// 1.x user name (basic auth); empty for none.
    pub username: String,
    /// 1.x password.
    pub password: Secret,
    /// 2.x/3.x API token; takes priority over username/password.
    pub token: Secret,
    /// Whole-request timeout in seconds.
    pub timeout_secs: u64,
    /// TCP connect timeout in seconds.
    pub connect_timeout_secs: u64,
    /// Retries on transient errors (connection, timeout, 5xx, 429).
    pub retries: u32,
    /// Rows per streamed chunk of a query result.
    pub query_chunk_size: usize,
    /// Lines per write request.
    pub write_batch: usize,
    /// `auto`, `msgpack` or `csv`.
    pub read_format: String,
    /// InfluxDB 3 only: candle writes go to `/api/v3/write_lp` with
    /// `no_sync=true`, acknowledged before the server's WAL flush (see
    /// default.toml for what that gives up).
    pub no_sync: bool,
    /// Copied from the `[retention]` section at load, so every client built
    /// from these settings reads and writes each measurement in its place.
    #[serde(skip)]
    pub retention: RetentionSettings,
}

/// `[retention]`: the retention policy of raw trades and of each candle
/// resolution. Each value is empty (the database default, or
/// `influx.retention_policy`), `NAME` (an existing policy) or `NAME:DURATION`
/// (created or altered by ohlcd at start), see [`PolicySpec`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RetentionSettings {
    /// Raw trades.
    pub trades: String,
    /// 1m candles.
    pub ohlc_1m: String,
    /// 5m candles.
    pub ohlc_5m: String,
    /// 15m candles.
    pub ohlc_15m: String,
    /// 1h candles.
    pub ohlc_1h: String,
    /// 4h candles.
    pub ohlc_4h: String,
    /// 1d candles.
    pub ohlc_1d: String,
}

impl RetentionSettings {
    /// The parsed values (raw trades, then candles finest first, as
    /// `crate::influx::Stored::all` orders them); a policy
    /// named twice must be given the same duration (or none) each time.
    pub fn specs(&self) -> Result<[Option<PolicySpec>; 7], String> {
        let values = [
            ("trades", &self.trades),
            ("ohlc_1m", &self.ohlc_1m),
            ("ohlc_5m", &self.ohlc_5m),
            ("ohlc_15m", &self.ohlc_15m),
            ("ohlc_1h", &self.ohlc_1h),
            ("ohlc_4h", &self.ohlc_4h),
            ("ohlc_1d", &self.ohlc_1d),
        ];
        let mut out: [Option<PolicySpec>; 7] = Default::default();
        for (i, (key, value)) in values.into_iter().enumerate() {
            out[i] = PolicySpec::parse(value).map_err(|e| format!("retention.{key} = {e}"))?;
        }
        for (i, a) in out.iter().enumerate() {
            for (j, b) in out.iter().enumerate().skip(i + 1) {
                if let (Some(a), Some(b)) = (a, b)
                    && a.name == b.name
                    && a.keep.is_some()
                    && b.keep.is_some()
                    && a.keep != b.keep
                {
                    return Err(format!(
                        "retention.{} and retention.{} give policy {:?} different durations",
                        values[i].0, values[j].0, a.name
                    ));
                }
            }
        }
        Ok(out)
    }
}

impl InfluxSettings {
    /// Whole-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// Progress store settings. `Debug` shows the URL without its password.
#[derive(Clone, Deserialize)]
pub struct ProgressSettings {
    /// Progress database: a SQLite URL or path (`sqlite://ohlcd.db`) or a
    /// PostgreSQL URL (`postgres://user:pass@host/db`) shared by several hosts.
    pub database_url: String,
    /// Lease length in seconds.
    pub lease_secs: u64,
}

/// Downsampling engine settings.
#[derive(Debug, Clone, Deserialize)]
pub struct EngineSettings {
    /// Cron expression (with seconds) for scheduler ticks.
    pub cron: String,
    /// Seconds a closed minute waits before it is materialized.
    pub settle_secs: u64,
    /// Batches processed in parallel.
    pub concurrency: usize,
    /// Raw data re-read behind the 1m watermark by the lookback, seconds.
    pub lookback_secs: u64,
    /// How often the lookback runs, seconds.
    pub lookback_interval_secs: u64,
    /// Concurrent sub-range reads of one dense symbol's chunk.
    pub read_parallelism: usize,
    /// Chunk length in days: how much raw data one step of a symbol reads.
    pub chunk_days: u32,
    /// Expected raw trades per batch of symbols read with one query.
    pub batch_rows: u64,
    /// Most symbols in one batch.
    pub batch_symbols: usize,
    /// A symbol this close to the horizon (seconds) is live: it is taken to
    /// the horizon at the start of every round, before lagging symbols move.
    pub live_span_secs: u64,
    /// Milliseconds a lagging batch goes on, chunk after chunk, before the
    /// round moves on (0: one chunk per round).
    pub batch_run_ms: u64,
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    /// Listen address, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: u64,
    /// Directory of the chart page.
    pub web_dir: String,
    /// Bearer token that writing (`POST /api/trades`) requires; unset: none.
    pub ingest_token: Secret,
    /// File holding the ingest token (read once at start-up, whitespace trimmed).
    pub ingest_token_file: String,
    /// Token that reading requires (Bearer, or Basic auth password); unset: reading is public.
    pub read_token: Secret,
    /// File holding the read token.
    pub read_token_file: String,
    /// Separate listen address for `/metrics`; empty: served on `listen`.
    pub metrics_listen: String,
    /// Origins (`https://host[:port]`) allowed to call `/udf/*` and `/api/*` from a browser.
    pub cors_origins: Vec<String>,
    /// Seconds a client has to send a request's headers (also the keep-alive idle limit).
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body once its headers are in.
    pub body_timeout_secs: u64,
    /// Most connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Most requests querying InfluxDB at once; the rest wait their turn.
    pub max_queries: usize,
    /// Most expensive (long-range) queries at once, out of `max_queries`.
    pub max_heavy_queries: usize,
    /// A query for more bars (or trades) than this counts as expensive.
    pub heavy_query_bars: u64,
    /// Seconds a query waits for its turn before it is answered 503.
    pub queue_timeout_secs: u64,
    /// Most live-bar streams (`GET /api/live`) open at once.
    pub max_streams: usize,
    /// Seconds between the INFO lines summing up the requests served
    /// (count, errors, p99); 0: none. Each request is logged at debug.
    pub request_summary_secs: u64,
}

/// `url` with the password of its userinfo, if any, replaced by `***`: the
/// one way a configured URL is printed (messages, logs, `Debug`).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Not a URL we can take apart: show only up to its host's start.
        Err(_) if url.contains('@') => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***"),
            None => "***".to_string(),
        },
        Err(_) => url.to_string(),
    }
}

/// A credential: compared, never printed. `Debug` says only whether it is set.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// Whether a value is configured.
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }

    /// The credential itself, for comparing; never log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() {
            "Secret(<redacted>)"
        } else {
            "Secret(<unset>)"
        })
    }
}

impl std::fmt::Debug for InfluxSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxSettings")
            .field("url", &redact_url(&self.url))
            .field("database", &self.database)
            .field("retention_policy", &self.retention_policy)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("token", &self.token)
            .field("timeout_secs", &self.timeout_secs)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("retries", &self.retries)
            .field("query_chunk_size", &self.query_chunk_size)
            .field("write_batch", &self.write_batch)
            .field("read_format", &self.read_format)
            .field("no_sync", &self.no_sync)
            .field("retention", &self.retention)
            .finish()
    }
}

impl std::fmt::Debug for ProgressSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressSettings")
            .field("database_url", &redact_url(&self.database_url))
            .field("lease_secs", &self.lease_secs)
            .finish()
    }
}

/// Shortest accepted token: long enough that guessing is hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

impl ServerSettings {
    /// Fills `ingest_token`/`read_token` from their files and checks them. Error
    /// messages name the key and the file, never the value.
    fn resolve_tokens(&mut self) -> Result<(), SettingsError> {
        resolve_token(
            &mut self.ingest_token,
            &self.ingest_token_file,
            "ingest_token",
        )?;
        resolve_token(&mut self.read_token, &self.read_token_file, "read_token")
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Value(m));
        for origin in &self.cors_origins {
            if let Err(why) = check_origin(origin) {
                return bad(format!(
                    "server.cors_origins has {origin:?}: {why} (expected scheme://host[:port], e.g. https://charts.example.com)"
                ));
            }
        }
        if self.header_timeout_secs == 0 || self.body_timeout_secs == 0 {
            return bad(
                "server.header_timeout_secs and server.body_timeout_secs must be > 0".into(),
            );
        }
        if self.max_connections == 0 || self.max_queries == 0 || self.queue_timeout_secs == 0 {
            return bad(
                "server.max_connections, server.max_queries and server.queue_timeout_secs must be > 0"
                    .into(),
            );
        }
        if self.max_streams == 0 || self.max_streams >= self.max_connections {
            return bad(format!(
                "server.max_streams must be from 1 to server.max_connections - 1 ({}), so requests always find a connection; got {}",
                self.max_connections.saturating_sub(1),
                self.max_streams
            ));
        }
        if self.max_heavy_queries == 0 || self.max_heavy_queries >= self.max_queries {
            return bad(format!(
                "server.max_heavy_queries must be from 1 to server.max_queries - 1 ({}), so cheap requests always find a free slot; got {}",
                self.max_queries.saturating_sub(1),
                self.max_heavy_queries
            ));
        }
        Ok(())
    }
}

fn resolve_token(token: &mut Secret, file: &str, key: &str) -> Result<(), SettingsError> {
    let bad = |m: String| Err(SettingsError::Value(m));
    if !file.is_empty() {
        if token.is_set() {
            return bad(format!(
                "server.{key} and server.{key}_file are both set; use one"
            ));
        }
        let text = std::fs::read_to_string(file).map_err(|e| {
            SettingsError::Value(format!("server.{key}_file: cannot read {file}: {e}"))
        })?;
        *token = Secret::new(text.trim());
        if !token.is_set() {
            return bad(format!("server.{key}_file: {file} is empty"));
        }
    }
    if !token.is_set() {
        return Ok(());
    }
    let value = token.expose();
    if value.len() < MIN_TOKEN_LEN {
        return bad(format!(
            "server.{key} is too short: use at least {MIN_TOKEN_LEN} characters, e.g. from `openssl rand -hex 32`"
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return bad(format!(
            "server.{key} must be printable ASCII without spaces (it is sent in an HTTP header)"
        ));
    }
    Ok(())
}

/// `scheme://host[:port]` as browsers send it in `Origin`: lower case, no path.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err("no scheme");
    };
    if scheme != "http" && scheme != "https" {
        return Err("scheme must be http or https");
    }
    if rest.is_empty() {
        return Err("no host");
    }
    if origin.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("must be lower case, as browsers send it");
    }
    if rest.contains(['/', '?', '#', '@', ' ']) {
        return Err("must not have a path, query, user or trailing slash");
    }
    // An IPv6 host is bracketed: `[::1]:8080`.
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, tail)) => (host, Some(tail.strip_prefix(':').ok_or("bad port")?)),
            None => return Err("unclosed ["),
        },
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err("bad port");
    }
    if host.is_empty() {
        return Err("no host");
    }
    Ok(())
}

/// Datafeed settings.
#[derive(Debug, Clone, Deserialize)]
pub struct DatafeedSettings {
    /// Resolutions advertised to TradingView clients.
    pub supported_resolutions: Vec<String>,
    /// Most bars per history answer.
    pub max_bars: u64,
    /// Bar cap that drives `/api/ohlc`'s adaptive resolution.
    pub ohlc_max_bars: u64,
    /// Symbol list cache lifetime in seconds.
    pub symbols_cache_secs: u64,
    /// Exchange name shown to clients.
    pub exchange: String,
    /// Timeout of InfluxDB requests made while serving, seconds.
    pub timeout_secs: u64,
    /// Most bytes the serving cache holds; 0 disables it.
    #[serde(default = "default_cache_max_bytes")]
    pub cache_max_bytes: u64,
    /// How long a symbol's watermarks and candle epoch are reused, ms.
    #[serde(default = "default_cache_recheck_ms")]
    pub cache_recheck_ms: u64,
    /// How long the cached raw tail (the open bar) is reused at most, ms.
    #[serde(default = "default_tail_ttl_ms")]
    pub tail_ttl_ms: u64,
    /// IANA zone the bars of every symbol are counted in (local midnights).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Per-symbol zones: a table `symbol = "zone"`, or in the environment
    /// `BTCUSD=Asia/Hong_Kong,ETHUSD=Europe/London`.
    #[serde(default)]
    pub symbol_timezones: SymbolZones,
}

fn default_timezone() -> String {
    "Etc/UTC".to_string()
}

/// `datafeed.symbol_timezones`: a TOML table, or `SYMBOL=ZONE,...` text (the
/// environment's form: config keys are lowercased, symbols are not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolZones(pub std::collections::BTreeMap<String, String>);

impl<'de> Deserialize<'de> for SymbolZones {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Table(std::collections::BTreeMap<String, String>),
            Text(String),
        }
        match Form::deserialize(d)? {
            Form::Table(t) => Ok(SymbolZones(t)),
            Form::Text(text) => text
                .split(',')
                .map(str::trim)
                .filter(|pair| !pair.is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((symbol, zone)) if !symbol.trim().is_empty() => {
                        Ok((symbol.trim().to_string(), zone.trim().to_string()))
                    }
                    _ => Err(serde::de::Error::custom(format!(
                        "datafeed.symbol_timezones: {pair:?} is not SYMBOL=ZONE"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(SymbolZones),
        }
    }
}

fn default_cache_max_bytes() -> u64 {
    64 << 20
}

fn default_cache_recheck_ms() -> u64 {
    200
}

fn default_tail_ttl_ms() -> u64 {
    1000
}

impl DatafeedSettings {
    /// The zones bars are counted in (checked at load).
    pub fn zones(&self) -> Result<crate::zone::Zones, String> {
        crate::zone::Zones::parse(&self.timezone, &self.symbol_timezones.0)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A source could not be read or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    /// A value is well-typed but unusable.
    #[error("invalid configuration: {0}")]
    Value(String),
}

impl Settings {
    /// Loads defaults, then `file` if given, then `OHLCD_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.exists() {
                return Err(SettingsError::Value(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("OHLCD_"))
            .collect();
        // Credentials are taken verbatim: `try_parsing` would turn "0123…"
        // into a number and print it back without the leading zero.
        let raw_tokens: Vec<(&str, String)> = [
            ("server.ingest_token", "OHLCD_SERVER__INGEST_TOKEN"),
            ("server.read_token", "OHLCD_SERVER__READ_TOKEN"),
            ("influx.username", "OHLCD_INFLUX__USERNAME"),
            ("influx.password", "OHLCD_INFLUX__PASSWORD"),
            ("influx.token", "OHLCD_INFLUX__TOKEN"),
        ]
        .into_iter()
        .filter_map(|(key, var)| env.get(var).map(|v| (key, v.clone())))
        .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("OHLCD")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("server.cors_origins")
                .with_list_parse_key("schema.trades_measurement")
                .with_list_parse_key("schema.symbol_tags")
                .source(Some(env)),
        );
        for (key, value) in raw_tokens {
            builder = builder.set_override(key, value)?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings
            .server
            .cors_origins
            .retain(|o| !o.trim().is_empty());
        settings.server.resolve_tokens()?;
        settings.influx.retention = settings.retention.clone();
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Value(m));
        crate::schema::TradeSchema::from_settings(&self.schema).map_err(SettingsError::Value)?;
        if !(self.influx.url.starts_with("http://") || self.influx.url.starts_with("https://")) {
            return bad(format!(
                "influx.url must start with http:// or https://, got {:?}",
                redact_url(&self.influx.url)
            ));
        }
        if !["auto", "msgpack", "csv"].contains(&self.influx.read_format.as_str()) {
            return bad(format!(
                "influx.read_format must be auto, msgpack or csv, got {:?}",
                self.influx.read_format
            ));
        }
        if self.influx.database.trim().is_empty() {
            return bad("influx.database must not be empty".into());
        }
        if self.influx.write_batch == 0 || self.influx.query_chunk_size == 0 {
            return bad("influx.write_batch and influx.query_chunk_size must be > 0".into());
        }
        if self.engine.concurrency == 0
            || self.engine.read_parallelism == 0
            || self.engine.chunk_days == 0
            || self.engine.batch_rows == 0
            || self.engine.batch_symbols == 0
        {
            return bad(
                "engine.concurrency, engine.read_parallelism, engine.chunk_days, engine.batch_rows and engine.batch_symbols must be > 0"
                    .into(),
            );
        }
        if self.progress.lease_secs < 5 {
            return bad("progress.lease_secs must be at least 5".into());
        }
        for r in &self.datafeed.supported_resolutions {
            if r.parse::<crate::chart::ChartResolution>().is_err() {
                return bad(format!(
                    "datafeed.supported_resolutions has {r:?}, not a chart resolution (1, 5, 60, 1D, 1W, 1M, ...)"
                ));
            }
        }
        if self.datafeed.max_bars == 0 || self.datafeed.ohlc_max_bars == 0 {
            return bad("datafeed.max_bars and datafeed.ohlc_max_bars must be > 0".into());
        }
        self.datafeed.zones().map_err(SettingsError::Value)?;
        self.server.validate()?;
        self.retention.specs().map_err(SettingsError::Value)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! Typed, layered configuration: built-in `config/default.toml`, then an optional
//! `--config FILE`, then environment variables `OHLCD_<SECTION>__<KEY>`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

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
}

/// InfluxDB connection settings.
#[derive(Debug, Clone, Deserialize)]
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
    pub password: String,
    /// 2.x/3.x API token; takes priority over username/password.
    pub token: String,
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
}

impl InfluxSettings {
    /// Whole-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// Progress store settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ProgressSettings {
    /// sqlx SQLite URL, e.g. `sqlite://ohlcd.db`.
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
        builder = builder.add_source(
            config::Environment::with_prefix("OHLCD")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Value(m));
        if !(self.influx.url.starts_with("http://") || self.influx.url.starts_with("https://")) {
            return bad(format!(
                "influx.url must start with http:// or https://, got {:?}",
                self.influx.url
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_without_any_file_or_environment() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.influx.database, "ohlcd");
        assert_eq!(s.engine.chunk_days, 1);
        assert_eq!(s.engine.batch_rows, 100_000);
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[influx]\nurl = \"http://file:1\"\ndatabase = \"fromfile\"\n",
        )
        .unwrap();
        let s = Settings::load_with_env(
            Some(&file),
            env(&[
                ("OHLCD_INFLUX__URL", "http://env:2"),
                ("OHLCD_PROGRESS__DATABASE_URL", "sqlite:///tmp/x.db"),
                ("OHLCD_SERVER__LISTEN", "0.0.0.0:9"),
                ("OHLCD_ENGINE__CHUNK_DAYS", "2"),
                ("OHLCD_INFLUX__RETRIES", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(s.influx.url, "http://env:2");
        assert_eq!(s.influx.database, "fromfile");
        assert_eq!(s.progress.database_url, "sqlite:///tmp/x.db");
        assert_eq!(s.server.listen, "0.0.0.0:9");
        assert_eq!(s.influx.retries, 7);
        assert_eq!(s.engine.chunk_days, 2);
    }

    #[test]
    fn bad_values_are_rejected_with_the_key_named() {
        let err = Settings::load_with_env(None, env(&[("OHLCD_INFLUX__URL", "localhost:8086")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("influx.url"), "{err}");
        let err = Settings::load_with_env(None, env(&[("OHLCD_INFLUX__RETRIES", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retries"), "{err}");
        let missing = Settings::load_with_env(Some(Path::new("/nope/x.toml")), env(&[]));
        assert!(missing.unwrap_err().to_string().contains("/nope/x.toml"));
    }
}

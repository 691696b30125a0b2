//! ohlcd turns raw exchange trades stored in InfluxDB into OHLC candles at 1m, 5m,
//! 15m, 1h, 4h and 1d, writes each resolution back to InfluxDB as its own
//! measurement, and records its progress in SQLite (or PostgreSQL, shared by
//! daemons on several hosts).
//!
//! Map of the modules:
//! - [`candle`]: pure candle arithmetic (windows, aggregation, cascade); no I/O.
//! - [`symbol`]: the one symbol rule: [`symbol::NameForm`] (how many parts a
//!   name has) and [`symbol::Symbol`], built only by parsing against it.
//! - [`schema`]: the user's trade schema (`[schema]`) and the [`schema::layout::Layout`]
//!   found on the server; every query, decode and write takes its names from it.
//! - [`ingest`]: trade validation and encoding into the configured schema;
//!   [`ingest::late`], the late-trade rule.
//! - [`generate`]: reproducible random-walk demo trades.
//! - [`influx`]: InfluxDB client over the 1.x HTTP API: transport and retries,
//!   the queries sent ([`influx::trades`], [`influx::candles`],
//!   [`influx::edges`], [`influx::database`]), streaming MessagePack/CSV
//!   decoders ([`influx::decode`]), candle encoding ([`influx::encode`]),
//!   retention policies per measurement ([`influx::retention`]).
//! - [`progress`]: the progress store, SQLite or PostgreSQL (tasks, symbol
//!   leases, watermarks, run history).
//! - [`chart`]: chart resolutions (TradingView notation), adaptive resolution,
//!   gap filling.
//! - [`zone`]: time zones: local days, weeks, months and intraday windows.
//! - [`datafeed`]: serving candles at any chart resolution.
//! - [`failpoint`]: crash points for fault-injection tests.
//! - [`engine`]: the downsampling job; [`engine::Engine::tick`] is one step,
//!   [`engine::plan`] its pure arithmetic, [`engine::Warehouse`] its narrow
//!   view of InfluxDB.
//! - [`scheduler`]: cron trigger for the engine.
//! - [`server`]: HTTP server.
//! - [`config`], [`clock`], [`times`]: settings, injectable time, time formats.
//! - [`retention`]: how long data is kept (durations, configured policies).
//! - [`build_info`]: version and git commit of the binary.
//! - [`app`]: the one wiring of `ohlcd run`: engine ticks feeding the
//!   datafeed and live-bar feeds, and the HTTP servers.
//! - [`cli`]: the `ohlcd` command line.
//! - `testkit` (cargo feature `testkit`): test and benchmark support (a
//!   throwaway `influxd`, InfluxDB 3 and PostgreSQL); not part of the daemon.

pub mod app;
pub mod build_info;
pub mod candle;
pub mod chart;
pub mod cli;
pub mod clock;
pub mod config;
pub mod datafeed;
pub mod engine;
pub mod failpoint;
pub mod generate;
pub mod influx;
pub mod ingest;
pub mod progress;
pub mod retention;
pub mod scheduler;
pub mod schema;
pub mod server;
pub mod symbol;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod times;
pub mod zone;

//! Integration tests against a real influxd and a real SQLite file or PostgreSQL.
//! One test binary (faster to link); each module is one area.

mod bad_input;
mod bars;
mod browser;
mod cache;
mod cli;
mod compat;
mod engine;
mod faults;
mod helpers;
mod http;
mod ingest;
mod ops;
mod outages;
mod poison;
mod protocol;
mod push;
mod retention;
mod scale_out;
mod schema;
mod secrets;
mod security;
mod stack;
mod zones;

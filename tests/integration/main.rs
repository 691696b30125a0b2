//! Integration tests against a real influxd and a real SQLite file or PostgreSQL.
//! One test binary (faster to link); each module is one area.

mod browser;
mod cache;
mod cli;
mod compat;
mod engine;
mod faults;
mod helpers;
mod http;
mod ingest;
mod outages;
mod push;
mod retention;
mod scale_out;
mod security;

//! Integration tests against a real influxd and a real SQLite file.
//! One test binary (faster to link); each module is one area.

mod cli;
mod engine;
mod helpers;

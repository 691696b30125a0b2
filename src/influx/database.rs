//! The database itself: creating it, checking that it exists and that the
//! credentials may write to it.

use bytes::Bytes;
use serde_json::Value;

use super::query;
use super::{InfluxClient, InfluxError};

impl InfluxClient {
    /// Creates the database if it does not exist (idempotent): `CREATE
    /// DATABASE` on 1.x and 2.x, `POST /api/v3/configure/database` on 3.x (which
    /// answers `CREATE DATABASE` with 500 "not implemented").
    pub async fn create_database(&self) -> Result<(), InfluxError> {
        if !self.generation.configures_databases() {
            return self
                .query_json(&query::create_database(&self.database))
                .await
                .map(|_| ());
        }
        let body = serde_json::json!({ "db": self.database });
        match self
            .send("create database", || {
                self.request(reqwest::Method::POST, "/api/v3/configure/database")
                    .json(&body)
            })
            .await
        {
            // 409 "attempted to create a resource that already exists".
            Err(InfluxError::Status { status: 409, .. }) => Ok(()),
            Err(InfluxError::Status { message, .. }) if message.contains("already exists") => {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Fails with [`InfluxError::DatabaseNotFound`] unless the database exists.
    /// 3.x drops the connection on `SHOW RETENTION POLICIES` (and `SHOW
    /// DATABASES`), so there the database list of its configure API is asked.
    pub async fn check_database(&self) -> Result<(), InfluxError> {
        if self.generation.configures_databases() {
            let resp = self
                .send("list databases", || {
                    self.request(reqwest::Method::GET, "/api/v3/configure/database")
                        .query(&[("format", "json")])
                })
                .await?;
            let list: Value = resp
                .json()
                .await
                .map_err(|e| InfluxError::Protocol(format!("database list is not JSON: {e}")))?;
            let found = list.as_array().into_iter().flatten().any(|db| {
                db.get("iox::database").and_then(Value::as_str) == Some(self.database.as_str())
            });
            return if found {
                Ok(())
            } else {
                Err(self.database_not_found())
            };
        }
        self.query_json(&query::show_retention_policies(&self.database))
            .await
            .map(|_| ())
    }

    /// Fails with [`InfluxError::ReadOnly`] unless the credentials may write to
    /// the database. Probes with an empty write, which stores nothing. 3.x
    /// rejects an empty write (400) before it looks at permissions, and any
    /// write that passes stores a point, so there is no honest probe: on 3.x
    /// this checks nothing and a missing permission shows at the first write.
    pub async fn check_writable(&self) -> Result<(), InfluxError> {
        if !self.generation.probes_writes() {
            tracing::debug!("InfluxDB 3: no write-permission probe");
            return Ok(());
        }
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
}

//! The InfluxDB generation a server belongs to, and everything it decides:
//! each question another module has about the server (which dialect bulk
//! reads are in, whether it can delete, whether the last write of a point
//! wins, how databases are created) is answered here, once per generation,
//! so no other module matches on it.

use super::ReadFormat;
use super::layout::Dialect;

/// The InfluxDB generation a server belongs to, from its `/ping` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// InfluxDB 1.x (and Enterprise 1.x): the native home of the v1 API.
    V1,
    /// InfluxDB 2.x (OSS or Cloud), through its v1 compatibility endpoints.
    V2,
    /// InfluxDB 3 (Core, Enterprise).
    V3,
}

/// How the combinations of values of several tags are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TagTuples {
    /// `SHOW SERIES`, each series key parsed (1.x).
    ShowSeries,
    /// SQL `SELECT DISTINCT` (3.x, which has no `SHOW SERIES`).
    SqlDistinct,
    /// `SHOW TAG VALUES` tag by tag (2.x).
    TagByTag,
}

impl Generation {
    /// From the `X-Influxdb-Version` and `X-Influxdb-Build` headers of `/ping`.
    /// Unknown versions count as 1.x, the API every generation speaks.
    pub fn from_ping(version: &str, build: &str) -> Generation {
        let v = version.trim_start_matches(['v', 'V']);
        // The major version: "2", "2.0" and "2.7.1" are all 2.
        let major = v.split(['.', '-', '~', '+']).next().unwrap_or("");
        let build = build.to_ascii_lowercase();
        if major == "3" || build == "core" || build.starts_with("enterprise") && major != "1" {
            Generation::V3
        } else if major == "2" || build == "cloud2" {
            Generation::V2
        } else {
            Generation::V1
        }
    }

    /// The read format `influx.read_format = "auto"` means: MessagePack from
    /// 1.x, CSV from anything else (2.x and the 3.x builds tested do not
    /// serve MessagePack on `/query`).
    pub(super) fn auto_read_format(self) -> ReadFormat {
        match self {
            Generation::V1 => ReadFormat::Msgpack,
            Generation::V2 | Generation::V3 => ReadFormat::Csv,
        }
    }

    /// The dialect of the bulk reads of trades and of the per-minute counts:
    /// SQL through 3.x's native `/api/v3/query_sql`, which pulls the same
    /// rows 1.6–1.9× faster than its v1 `/query` and, unlike its InfluxQL,
    /// counts a disjunction of boolean comparisons right; InfluxQL elsewhere.
    pub(super) fn bulk_dialect(self) -> Dialect {
        match self {
            Generation::V3 => Dialect::Sql,
            Generation::V1 | Generation::V2 => Dialect::InfluxQl,
        }
    }

    /// Whether a point written again reads as its last write. 3.x (the build
    /// tested) does not promise it while earlier versions are unpersisted,
    /// and a query over several series can return older versions where one
    /// series per query reads the last write: overwrites are read back and
    /// candles of several symbols are read one query each.
    pub(super) fn last_write_wins(self) -> bool {
        self != Generation::V3
    }

    /// Whether `DELETE` works (3.x answers 500 "not implemented").
    pub(super) fn can_delete(self) -> bool {
        self != Generation::V3
    }

    /// Whether databases are created and listed through
    /// `/api/v3/configure/database` (3.x, which answers `CREATE DATABASE`
    /// with "not implemented" and drops the connection on `SHOW RETENTION
    /// POLICIES`) instead of InfluxQL.
    pub(super) fn configures_databases(self) -> bool {
        self == Generation::V3
    }

    /// Whether an empty write honestly probes write permission (3.x rejects
    /// it before it looks at permissions, and any write that passes stores
    /// a point).
    pub(super) fn probes_writes(self) -> bool {
        self != Generation::V3
    }

    /// Whether measurements can live in retention policies of their own.
    pub(super) fn has_retention_policies(self) -> bool {
        self != Generation::V3
    }

    /// Whether the last point before a time is found through the series
    /// index with one query (1.x, 2.x); 3.x scans every buffered chunk of
    /// the range a query names, so there it is looked for in widening windows.
    pub(super) fn finds_last_point_by_index(self) -> bool {
        self != Generation::V3
    }

    /// Whether tags and fields are listed from the SQL catalog
    /// (`information_schema.columns`, 3.x) rather than `SHOW TAG KEYS` and
    /// `SHOW FIELD KEYS`.
    pub(super) fn columns_from_catalog(self) -> bool {
        self == Generation::V3
    }

    /// How combinations of several tags' values are listed.
    pub(super) fn tag_tuples(self) -> TagTuples {
        match self {
            Generation::V1 => TagTuples::ShowSeries,
            Generation::V2 => TagTuples::TagByTag,
            Generation::V3 => TagTuples::SqlDistinct,
        }
    }

    /// Whether `SHOW TAG VALUES` needs a time condition to look past the
    /// last 24 hours (3.x).
    pub(super) fn tag_values_need_time(self) -> bool {
        self == Generation::V3
    }

    /// Whether writes can be acknowledged before the WAL flush
    /// (`/api/v3/write_lp?no_sync=true`, 3.x).
    pub(super) fn writes_without_sync(self) -> bool {
        self == Generation::V3
    }

    /// How a database is created on a server of this generation, for error
    /// messages.
    pub(super) fn create_hint(self, url: &str, database: &str) -> String {
        match self {
            Generation::V1 => format!("influx -execute 'CREATE DATABASE {database}'"),
            Generation::V2 => format!(
                "create a bucket and map it: influx v1 dbrp create --db {database} --rp autogen --bucket-id <id> --default"
            ),
            Generation::V3 => format!(
                "influxdb3 create database {database}, or curl -XPOST {url}/api/v3/configure/database -d '{{\"db\":\"{database}\"}}'"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_influxdb_3_reads_in_sql_and_cannot_delete_or_trust_an_overwrite() {
        for g in [Generation::V1, Generation::V2] {
            assert_eq!(g.bulk_dialect(), Dialect::InfluxQl);
            assert!(g.can_delete() && g.last_write_wins() && g.has_retention_policies());
            assert!(!g.configures_databases() && !g.writes_without_sync());
        }
        let v3 = Generation::V3;
        assert_eq!(v3.bulk_dialect(), Dialect::Sql);
        assert!(!v3.can_delete() && !v3.last_write_wins() && !v3.has_retention_policies());
        assert!(v3.configures_databases() && v3.writes_without_sync());
        assert_eq!(Generation::V1.auto_read_format(), ReadFormat::Msgpack);
        assert_eq!(v3.auto_read_format(), ReadFormat::Csv);
        assert_eq!(Generation::V1.tag_tuples(), TagTuples::ShowSeries);
        assert_eq!(Generation::V2.tag_tuples(), TagTuples::TagByTag);
        assert_eq!(v3.tag_tuples(), TagTuples::SqlDistinct);
    }
}

//! How long stored data is kept, as ohlcd reasons about it: a retention
//! duration ([`Keep`]), the retention policy a measurement is configured to
//! live in ([`PolicySpec`], a value of `[retention]`), and the margin ohlcd
//! leaves for clocks ([`RETENTION_MARGIN`]). Pure values; where each
//! measurement lives in InfluxDB and how long its server keeps it is
//! [`crate::influx::retention`].

use crate::candle::NANOS_PER_SEC;

/// How much later than `now - duration` ohlcd takes data kept for `duration`
/// to be complete: room for a clock difference between ohlcd's and
/// InfluxDB's hosts. A rebuild recomputes, and the datafeed reads, nothing
/// older.
pub const RETENTION_MARGIN: i64 = 5 * 60 * NANOS_PER_SEC;

/// How long a retention policy keeps data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Never drops anything (`INF`).
    Forever,
    /// Drops data older than this many nanoseconds.
    For(i64),
}

const HOUR: i64 = 3600 * NANOS_PER_SEC;
const DAY: i64 = 24 * HOUR;

impl Keep {
    /// Parses a configured duration: `INF`, or a whole number of hours, days or
    /// weeks (`12h`, `30d`, `52w`); InfluxDB 1.x accepts nothing under an hour.
    pub fn parse(s: &str) -> Result<Keep, String> {
        if s.eq_ignore_ascii_case("inf") {
            return Ok(Keep::Forever);
        }
        let (n, unit) = s.split_at(s.len().saturating_sub(1));
        let hours = match unit {
            "h" => 1,
            "d" => 24,
            "w" => 24 * 7,
            _ => return Err(format!("{s:?}: expected INF or a number of h, d or w")),
        };
        match n.parse::<i64>() {
            Ok(n) if n > 0 && n < 1_000_000 => Ok(Keep::For(n * hours * HOUR)),
            _ => Err(format!(
                "{s:?}: expected INF or a positive whole number of h, d or w"
            )),
        }
    }

    /// The oldest time the policy still guarantees at `now`: InfluxDB drops a
    /// shard group only once its end is older than `now - duration`, so every
    /// point at or after that is still stored. `None` for forever.
    pub fn kept_since(self, now: i64) -> Option<i64> {
        match self {
            Keep::Forever => None,
            Keep::For(ns) => Some(now.saturating_sub(ns)),
        }
    }
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Keep::Forever => f.write_str("forever"),
            Keep::For(ns) if ns % DAY == 0 => write!(f, "{}d", ns / DAY),
            Keep::For(ns) => write!(f, "{}h", ns / HOUR),
        }
    }
}

/// One measurement's configured place: `NAME` (an existing retention policy,
/// used as it is) or `NAME:DURATION` (ohlcd creates the policy, or sets its
/// duration, at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// The retention policy's name.
    pub name: String,
    /// The duration ohlcd keeps the policy at; `None`: not managed by ohlcd.
    pub keep: Option<Keep>,
}

impl PolicySpec {
    /// Parses a `[retention]` value; empty means "not configured".
    pub fn parse(s: &str) -> Result<Option<PolicySpec>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let (name, keep) = match s.rsplit_once(':') {
            Some((name, d)) => (name.trim(), Some(Keep::parse(d.trim())?)),
            None => (s, None),
        };
        if name.is_empty() || name.contains(':') || name.chars().any(char::is_control) {
            return Err(format!(
                "{s:?}: expected NAME or NAME:DURATION (e.g. raw_30d:30d, forever:INF)"
            ));
        }
        Ok(Some(PolicySpec {
            name: name.to_string(),
            keep,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_durations_parse_to_hours_days_weeks_or_forever() {
        assert_eq!(Keep::parse("INF"), Ok(Keep::Forever));
        assert_eq!(Keep::parse("inf"), Ok(Keep::Forever));
        assert_eq!(Keep::parse("12h"), Ok(Keep::For(12 * HOUR)));
        assert_eq!(Keep::parse("30d"), Ok(Keep::For(720 * HOUR)));
        assert_eq!(Keep::parse("52w"), Ok(Keep::For(52 * 168 * HOUR)));
        for bad in ["", "30", "0d", "-1d", "30m", "1.5d", "d", "30 days"] {
            assert!(Keep::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Keep::For(720 * HOUR).to_string(), "30d");
        assert_eq!(Keep::For(36 * HOUR).to_string(), "36h");
    }

    #[test]
    fn a_policy_is_a_name_with_an_optional_duration() {
        assert_eq!(PolicySpec::parse(" "), Ok(None));
        assert_eq!(
            PolicySpec::parse("raw_30d:30d"),
            Ok(Some(PolicySpec {
                name: "raw_30d".into(),
                keep: Some(Keep::For(720 * HOUR))
            }))
        );
        assert_eq!(
            PolicySpec::parse("autogen"),
            Ok(Some(PolicySpec {
                name: "autogen".into(),
                keep: None
            }))
        );
        assert!(PolicySpec::parse(":30d").is_err());
        assert!(PolicySpec::parse("raw:30x").is_err());
        assert!(PolicySpec::parse("a:b:30d").is_err());
    }

    #[test]
    fn what_a_policy_keeps_starts_its_duration_before_now() {
        assert_eq!(Keep::Forever.kept_since(10 * HOUR), None);
        assert_eq!(Keep::For(HOUR).kept_since(10 * HOUR), Some(9 * HOUR));
    }
}

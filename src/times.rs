//! Conversions between Unix nanoseconds and the text forms users see: RFC 3339 on
//! output, RFC 3339 or Unix seconds on the command line.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

use crate::candle::NANOS_PER_SEC;

/// RFC 3339 UTC with milliseconds and `Z`: fixed width, so strings sort by time.
pub fn to_rfc3339(nanos: i64) -> String {
    Utc.timestamp_nanos(nanos)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses RFC 3339 into Unix nanoseconds.
pub fn from_rfc3339(s: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?
        .timestamp_nanos_opt()
        .ok_or_else(|| format!("{s:?} is outside the supported time range (1677–2262)"))
}

/// Parses a command-line time: RFC 3339 (`2024-01-01T00:00:00Z`), a date
/// (`2024-01-01`, midnight UTC), or Unix seconds (`1704067200`).
pub fn parse_time_arg(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return secs
            .checked_mul(NANOS_PER_SEC)
            .ok_or_else(|| format!("{s} seconds is outside the supported time range (1677–2262)"));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let dt = date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc();
        return dt
            .timestamp_nanos_opt()
            .ok_or_else(|| format!("{s:?} is outside the supported time range (1677–2262)"));
    }
    from_rfc3339(s).map_err(|_| {
        format!("{s:?} is not a time: use RFC 3339 (2024-01-01T00:00:00Z), a date (2024-01-01) or Unix seconds")
    })
}

/// A duration in nanoseconds as `3d 4h`, `5m 10s`, `42s` (two largest units).
pub fn human_duration(nanos: i64) -> String {
    let mut secs = nanos.max(0) / NANOS_PER_SEC;
    if secs == 0 && nanos > 0 {
        return format!("{}ms", nanos / 1_000_000);
    }
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut parts = Vec::new();
    for (name, len) in units {
        if secs >= len && parts.len() < 2 {
            parts.push(format!("{}{name}", secs / len));
            secs %= len;
        } else if !parts.is_empty() {
            break;
        }
    }
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_times_accept_rfc3339_dates_and_unix_seconds() {
        let t = 1_704_067_200 * NANOS_PER_SEC;
        assert_eq!(parse_time_arg("1704067200").unwrap(), t);
        assert_eq!(parse_time_arg("2024-01-01").unwrap(), t);
        assert_eq!(parse_time_arg("2024-01-01T00:00:00Z").unwrap(), t);
        assert_eq!(parse_time_arg("2024-01-01T01:00:00+01:00").unwrap(), t);
        assert!(
            parse_time_arg("yesterday")
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(parse_time_arg("99999999999999").is_err());
    }

    #[test]
    fn rfc3339_output_is_fixed_width_and_round_trips() {
        let t = 1_704_067_200_123_000_000;
        let s = to_rfc3339(t);
        assert_eq!(s, "2024-01-01T00:00:00.123Z");
        assert_eq!(from_rfc3339(&s).unwrap(), t);
        assert_eq!(to_rfc3339(0).len(), s.len());
    }

    #[test]
    fn durations_read_as_two_units() {
        assert_eq!(human_duration(90 * NANOS_PER_SEC), "1m 30s");
        assert_eq!(
            human_duration(3 * 86_400 * NANOS_PER_SEC + 7_200 * NANOS_PER_SEC),
            "3d 2h"
        );
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(5_000_000), "5ms");
        // Never a third unit, and no unit skipped between the two.
        assert_eq!(
            human_duration((86_400 + 3_600 + 61) * NANOS_PER_SEC),
            "1d 1h"
        );
        assert_eq!(human_duration((86_400 + 61) * NANOS_PER_SEC), "1d");
        assert_eq!(human_duration(3_661 * NANOS_PER_SEC), "1h 1m");
    }
}

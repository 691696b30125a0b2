//! Time zones for chart bars: where a local day, week and month begin as
//! instants, and the windows of bars counted in a zone. Pure: no I/O, no
//! clock; imports nothing of the project.
//!
//! The windows are those TradingView builds for a 24x7 session in a zone:
//! - a local day runs from local midnight to the next local midnight (23 or
//!   25 hours on a DST day). Where a local midnight does not exist (a DST jump
//!   over midnight), the day starts at the first instant that exists after it;
//!   where it exists twice, at the first of them. In short: day `D` starts at
//!   the first instant whose local date is `D`;
//! - `n`-day windows count local days from 1970-01-01, weeks start on Monday
//!   (counted from Monday 1970-01-05), months on the 1st;
//! - intraday bars (minutes, hours) count real elapsed time from local
//!   midnight: boundaries at `midnight + k·len`, and the last bar of a day ends
//!   at the next local midnight, so every bar of a day is `len` long except
//!   perhaps the last.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use chrono::{LocalResult, NaiveDate, Offset, TimeZone};
pub use chrono_tz::Tz;

const NANOS_PER_SEC: i64 = 1_000_000_000;
const NANOS_PER_DAY: i64 = 86_400 * NANOS_PER_SEC;
/// 1970-01-05, a Monday: the origin of week windows (as in UTC).
const FIRST_MONDAY: i64 = 4;

/// The zone bars are counted in when nothing else is configured.
pub const UTC: Tz = Tz::Etc__UTC;

/// A zone name that is not in the IANA time zone database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown time zone {0:?}: use an IANA name such as Etc/UTC, Asia/Hong_Kong or America/New_York"
)]
pub struct BadZone(pub String);

/// The zone named `name` (IANA, exact spelling).
pub fn parse_zone(name: &str) -> Result<Tz, BadZone> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| BadZone(name.to_string()))
}

/// True for the zones that are UTC under another name (offset 0, never
/// changed since 1970): their bars are the epoch-aligned ones.
pub fn is_utc(zone: Tz) -> bool {
    matches!(
        zone,
        Tz::UTC
            | Tz::Etc__UTC
            | Tz::Etc__UCT
            | Tz::UCT
            | Tz::Etc__Universal
            | Tz::Universal
            | Tz::Etc__Zulu
            | Tz::Zulu
            | Tz::Etc__GMT
            | Tz::GMT
            | Tz::Etc__GMT0
            | Tz::GMT0
            | Tz::Etc__GMTPlus0
            | Tz::Etc__GMTMinus0
            | Tz::GMTPlus0
            | Tz::GMTMinus0
            | Tz::Etc__Greenwich
            | Tz::Greenwich
    )
}

/// The default zone and the per-symbol overrides (`datafeed.timezone`,
/// `datafeed.symbol_timezones`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zones {
    default: Tz,
    symbols: HashMap<String, Tz>,
}

impl Default for Zones {
    fn default() -> Self {
        Zones {
            default: UTC,
            symbols: HashMap::new(),
        }
    }
}

impl Zones {
    /// Zones from their names; the error names the bad one.
    pub fn parse(default: &str, symbols: &BTreeMap<String, String>) -> Result<Zones, String> {
        let default = parse_zone(default).map_err(|e| format!("datafeed.timezone: {e}"))?;
        let symbols = symbols
            .iter()
            .map(|(symbol, zone)| {
                parse_zone(zone)
                    .map(|z| (symbol.clone(), z))
                    .map_err(|e| format!("datafeed.symbol_timezones.{symbol}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Zones { default, symbols })
    }

    /// The zone of `symbol`'s bars.
    pub fn for_symbol(&self, symbol: &str) -> Tz {
        self.symbols.get(symbol).copied().unwrap_or(self.default)
    }
}

fn epoch_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date")
}

/// Date of day number `day` (days since 1970-01-01), clamped to chrono's range.
fn date_of(day: i64) -> NaiveDate {
    epoch_date()
        .checked_add_signed(chrono::Duration::days(day))
        .unwrap_or(if day < 0 {
            NaiveDate::MIN
        } else {
            NaiveDate::MAX
        })
}

fn day_number(date: NaiveDate) -> i64 {
    (date - epoch_date()).num_days()
}

/// Unix ns of a UTC date-time, saturated to the i64 range.
fn nanos_of(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// Local date (as a day number) of instant `t` in `zone`.
fn local_date(zone: Tz, t: i64) -> i64 {
    let utc = chrono::DateTime::from_timestamp_nanos(t).naive_utc();
    let offset = zone.offset_from_utc_datetime(&utc).fix().local_minus_utc();
    (t.div_euclid(NANOS_PER_SEC) + i64::from(offset)).div_euclid(86_400)
}

/// First instant of local day `day` (days since 1970-01-01) in `zone`: its
/// midnight, the earlier one if it happens twice, the first instant after it
/// if it does not happen.
pub fn day_start(zone: Tz, day: i64) -> i64 {
    let midnight = date_of(day).and_hms_opt(0, 0, 0).expect("midnight");
    match zone.from_local_datetime(&midnight) {
        LocalResult::Single(t) => nanos_of(t.to_utc()),
        LocalResult::Ambiguous(a, b) => nanos_of(a.to_utc()).min(nanos_of(b.to_utc())),
        LocalResult::None => {
            // Midnight falls in a gap. The day starts where the local date
            // first reaches `day`: within a day either side of midnight read
            // as UTC, and the local date only moves forward there (a zone
            // never jumps back over midnight right beside a gap). Transitions
            // fall on whole seconds.
            let naive = midnight.and_utc().timestamp();
            let (mut lo, mut hi) = (naive - 86_400, naive + 86_400);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if local_date(zone, mid * NANOS_PER_SEC) >= day {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            hi.saturating_mul(NANOS_PER_SEC)
        }
    }
}

/// The local day containing instant `t`: `D` with `day_start(D) <= t <
/// day_start(D + 1)`.
pub fn local_day(zone: Tz, t: i64) -> i64 {
    let d = local_date(zone, t);
    if t < day_start(zone, d) {
        d - 1
    } else if t >= day_start(zone, d + 1) {
        d + 1
    } else {
        d
    }
}

/// The `/udf/history` stamp of a daily, weekly or monthly bar starting at
/// `start` in `zone`: its trading date (the local date of its start) at
/// 00:00:00 UTC, Unix ns.
pub fn trading_date_stamp(zone: Tz, start: i64) -> i64 {
    local_day(zone, start).saturating_mul(NANOS_PER_DAY)
}

/// The inverse of [`trading_date_stamp`] for a range bound: the start of the
/// first local day whose stamp is at or after `stamp` (Unix ns). A bar starts
/// at or after it exactly when its stamp is at or after `stamp`.
pub fn instant_of_stamp(zone: Tz, stamp: i64) -> i64 {
    let day = stamp.div_euclid(NANOS_PER_DAY) + i64::from(stamp.rem_euclid(NANOS_PER_DAY) != 0);
    day_start(zone, day)
}

/// How bars of one resolution are counted in a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalUnit {
    /// Bars of this many nanoseconds from each local midnight.
    Intraday(i64),
    /// `n` local days.
    Days(u32),
    /// `n` weeks from Monday local midnight.
    Weeks(u32),
    /// `n` calendar months from the 1st, local midnight.
    Months(u32),
}

/// Windows of one unit in one zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Zoned {
    /// The zone.
    pub zone: Tz,
    /// The bar unit.
    pub unit: LocalUnit,
}

fn month_index(date: NaiveDate) -> i64 {
    use chrono::Datelike;
    i64::from(date.year() - 1970) * 12 + i64::from(date.month0())
}

fn first_of_month(index: i64) -> i64 {
    let year = 1970 + index.div_euclid(12);
    let month = index.rem_euclid(12) as u32 + 1;
    i32::try_from(year)
        .ok()
        .and_then(|y| NaiveDate::from_ymd_opt(y, month, 1))
        .map_or(
            if index < 0 {
                i64::MIN / NANOS_PER_DAY
            } else {
                i64::MAX / NANOS_PER_DAY
            },
            day_number,
        )
}

fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

impl Zoned {
    /// The window containing `t`.
    pub fn window(self, t: i64) -> Range<i64> {
        let zone = self.zone;
        let day = local_day(zone, t);
        let days =
            |first: i64, n: i64| day_start(zone, first)..day_start(zone, first.saturating_add(n));
        match self.unit {
            LocalUnit::Intraday(len) => {
                let Range {
                    start: midnight,
                    end: next,
                } = days(day, 1);
                let start = midnight + (t - midnight).div_euclid(len) * len;
                start..start.saturating_add(len).min(next)
            }
            LocalUnit::Days(n) => {
                let n = i64::from(n);
                days(day.div_euclid(n) * n, n)
            }
            LocalUnit::Weeks(n) => {
                let len = 7 * i64::from(n);
                days(
                    FIRST_MONDAY + (day - FIRST_MONDAY).div_euclid(len) * len,
                    len,
                )
            }
            LocalUnit::Months(n) => {
                let n = i64::from(n);
                let first = month_index(date_of(day)).div_euclid(n) * n;
                day_start(zone, first_of_month(first))..day_start(zone, first_of_month(first + n))
            }
        }
    }

    /// Start of the window containing `t`.
    pub fn window_start(self, t: i64) -> i64 {
        self.window(t).start
    }

    /// Start of the window after the one starting at `start`.
    pub fn next_start(self, start: i64) -> i64 {
        self.window(start).end
    }

    /// A typical window length (months count as 31 days), for estimates only.
    pub fn nominal_nanos(self) -> i64 {
        match self.unit {
            LocalUnit::Intraday(len) => len,
            LocalUnit::Days(n) => i64::from(n) * NANOS_PER_DAY,
            LocalUnit::Weeks(n) => i64::from(n) * 7 * NANOS_PER_DAY,
            LocalUnit::Months(n) => i64::from(n) * 31 * NANOS_PER_DAY,
        }
    }

    /// The largest divisor of a day that divides every window boundary in
    /// `range` (window-aligned): an epoch-aligned stored resolution tiles
    /// these windows exactly when its length divides this.
    pub fn alignment(self, range: Range<i64>) -> i64 {
        let mut g = NANOS_PER_DAY;
        let mut add = |t: i64| g = gcd(g, t.rem_euclid(NANOS_PER_DAY));
        match self.unit {
            // Boundaries are midnight + k·len and the next midnight.
            LocalUnit::Intraday(len) => {
                add(len);
                let last = local_day(self.zone, range.end.saturating_sub(1).max(range.start));
                for day in local_day(self.zone, range.start)..=last.saturating_add(1) {
                    add(day_start(self.zone, day));
                }
            }
            LocalUnit::Days(_) | LocalUnit::Weeks(_) | LocalUnit::Months(_) => {
                let mut start = self.window_start(range.start);
                loop {
                    add(start);
                    if start >= range.end || start == i64::MAX {
                        break;
                    }
                    start = self.next_start(start);
                }
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600 * NANOS_PER_SEC;

    fn at(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap()
    }

    fn day_of(s: &str) -> i64 {
        day_number(s.parse::<NaiveDate>().unwrap())
    }

    fn zone(name: &str) -> Tz {
        parse_zone(name).unwrap()
    }

    #[test]
    fn a_local_day_runs_from_local_midnight_and_dst_days_have_23_or_25_hours() {
        let ny = zone("America/New_York");
        assert_eq!(
            day_start(ny, day_of("2024-03-09")),
            at("2024-03-09T05:00:00Z")
        );
        assert_eq!(
            day_start(ny, day_of("2024-03-10")),
            at("2024-03-10T05:00:00Z")
        );
        assert_eq!(
            day_start(ny, day_of("2024-03-11")),
            at("2024-03-11T04:00:00Z")
        );
        assert_eq!(
            day_start(ny, day_of("2024-11-04")) - day_start(ny, day_of("2024-11-03")),
            25 * HOUR
        );
        let hk = zone("Asia/Hong_Kong");
        assert_eq!(
            day_start(hk, day_of("2024-03-10")),
            at("2024-03-09T16:00:00Z")
        );
        let kolkata = zone("Asia/Kolkata");
        assert_eq!(
            day_start(kolkata, day_of("2024-03-10")),
            at("2024-03-09T18:30:00Z")
        );
        assert_eq!(
            day_start(UTC, day_of("2024-03-10")),
            at("2024-03-10T00:00:00Z")
        );
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_at_the_first_instant_after_it() {
        // Santiago springs forward from 24:00 to 01:00 (2024-09-08 starts at
        // 01:00 local, 04:00 UTC); Cairo from 00:00 to 01:00 on 2024-04-26.
        let santiago = zone("America/Santiago");
        assert_eq!(
            day_start(santiago, day_of("2024-09-08")),
            at("2024-09-08T04:00:00Z")
        );
        let cairo = zone("Africa/Cairo");
        assert_eq!(
            day_start(cairo, day_of("2024-04-26")),
            at("2024-04-25T22:00:00Z")
        );
        assert_eq!(
            local_day(cairo, at("2024-04-25T21:59:59Z")),
            day_of("2024-04-25")
        );
        assert_eq!(
            local_day(cairo, at("2024-04-25T22:00:00Z")),
            day_of("2024-04-26")
        );
    }

    #[test]
    fn intraday_bars_count_from_local_midnight_and_the_last_ends_at_the_next() {
        let ny = zone("America/New_York");
        let h4 = Zoned {
            zone: ny,
            unit: LocalUnit::Intraday(4 * HOUR),
        };
        // 2024-03-10 has 23 hours: bars at 00, 04, ... 20 local, the last 3 h.
        let midnight = at("2024-03-10T05:00:00Z");
        assert_eq!(h4.window(midnight + HOUR), midnight..midnight + 4 * HOUR);
        let last = h4.window(at("2024-03-11T03:59:59Z"));
        assert_eq!(last, midnight + 20 * HOUR..at("2024-03-11T04:00:00Z"));
        assert_eq!(last.end - last.start, 3 * HOUR);
        assert_eq!(h4.next_start(last.start), last.end);
        // 2024-11-03 has 25 hours: six 4 h bars, then one of an hour.
        let last = h4.window(at("2024-11-04T04:59:59Z"));
        assert_eq!(last, at("2024-11-04T04:00:00Z")..at("2024-11-04T05:00:00Z"));
    }

    #[test]
    fn weeks_start_monday_and_months_on_the_first_local_midnight() {
        let hk = zone("Asia/Hong_Kong");
        let week = Zoned {
            zone: hk,
            unit: LocalUnit::Weeks(1),
        };
        // Sunday 2024-03-10 20:00 local is in the week of Monday 2024-03-04.
        assert_eq!(
            week.window_start(at("2024-03-10T12:00:00Z")),
            at("2024-03-03T16:00:00Z")
        );
        // Monday 2024-03-11 00:30 local (Sunday 16:30 UTC) starts the next week.
        assert_eq!(
            week.window_start(at("2024-03-10T16:30:00Z")),
            at("2024-03-10T16:00:00Z")
        );
        let month = Zoned {
            zone: hk,
            unit: LocalUnit::Months(1),
        };
        assert_eq!(
            month.window(at("2024-03-31T16:30:00Z")),
            at("2024-03-31T16:00:00Z")..at("2024-04-30T16:00:00Z")
        );
    }

    #[test]
    fn in_a_zone_that_is_always_utc_the_windows_are_the_epoch_aligned_ones() {
        // Abidjan has been on GMT since 1912.
        let abidjan = zone("Africa/Abidjan");
        let t = at("2023-11-14T22:13:20Z");
        let w = |unit| {
            Zoned {
                zone: abidjan,
                unit,
            }
            .window_start(t)
        };
        assert_eq!(w(LocalUnit::Intraday(4 * HOUR)), at("2023-11-14T20:00:00Z"));
        assert_eq!(w(LocalUnit::Days(1)), at("2023-11-14T00:00:00Z"));
        assert_eq!(
            w(LocalUnit::Days(3)),
            (t / (3 * NANOS_PER_DAY)) * 3 * NANOS_PER_DAY
        );
        assert_eq!(w(LocalUnit::Weeks(1)), at("2023-11-13T00:00:00Z"));
        assert_eq!(w(LocalUnit::Months(1)), at("2023-11-01T00:00:00Z"));
    }

    #[test]
    fn the_alignment_says_which_stored_resolution_tiles_the_windows() {
        let range = at("2024-03-01T00:00:00Z")..at("2024-04-01T00:00:00Z");
        let align = |name: &str, unit| {
            Zoned {
                zone: zone(name),
                unit,
            }
            .alignment(range.clone())
        };
        let (m15, h1, h4) = (15 * 60 * NANOS_PER_SEC, HOUR, 4 * HOUR);
        assert_eq!(align("Asia/Hong_Kong", LocalUnit::Days(1)) % h4, 0);
        assert_eq!(align("America/New_York", LocalUnit::Days(1)), h1);
        assert_eq!(align("America/New_York", LocalUnit::Intraday(h4)), h1);
        assert_eq!(
            align("Asia/Kolkata", LocalUnit::Days(1)),
            30 * 60 * NANOS_PER_SEC
        );
        assert_eq!(align("Asia/Kolkata", LocalUnit::Intraday(h1)) % m15, 0);
        assert_eq!(align("Asia/Kathmandu", LocalUnit::Days(1)), m15);
    }

    #[test]
    fn stamps_are_trading_dates_and_their_bounds_map_back_to_day_starts() {
        let hk = zone("Asia/Hong_Kong");
        // The HK day 2024-03-10 starts 2024-03-09T16:00Z; it is stamped 2024-03-10.
        let start = at("2024-03-09T16:00:00Z");
        assert_eq!(trading_date_stamp(hk, start), at("2024-03-10T00:00:00Z"));
        assert_eq!(instant_of_stamp(hk, at("2024-03-10T00:00:00Z")), start);
        assert_eq!(instant_of_stamp(hk, at("2024-03-09T00:00:01Z")), start);
        let ny = zone("America/New_York");
        assert_eq!(
            trading_date_stamp(ny, at("2024-03-10T05:00:00Z")),
            at("2024-03-10T00:00:00Z")
        );
    }

    #[test]
    fn zones_are_named_by_iana_names_per_symbol() {
        let mut symbols = BTreeMap::new();
        symbols.insert("BTCUSD".to_string(), "Asia/Hong_Kong".to_string());
        let zones = Zones::parse("Etc/UTC", &symbols).unwrap();
        assert_eq!(zones.for_symbol("BTCUSD"), zone("Asia/Hong_Kong"));
        assert_eq!(zones.for_symbol("ETHUSD"), UTC);
        assert!(
            Zones::parse("Mars/Olympus", &BTreeMap::new())
                .unwrap_err()
                .contains("datafeed.timezone")
        );
        symbols.insert("X".to_string(), "HK".to_string());
        assert!(
            Zones::parse("UTC", &symbols)
                .unwrap_err()
                .contains("symbol_timezones.X")
        );
        assert!(is_utc(zone("UTC")) && is_utc(zone("Etc/UTC")) && !is_utc(zone("Europe/London")));
    }
}

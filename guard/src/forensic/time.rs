//! Clocks and timestamps for log records: RFC 3339 UTC formatting and parsing, and relative
//! durations for `--since`, without a date library (the log needs only UTC and the proleptic
//! Gregorian calendar).
use std::time::Duration;

use thiserror::Error;

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A timestamp or duration that does not parse, or a clock that cannot be read.
#[derive(Debug, Error)]
pub enum TimeError {
    /// Not an RFC 3339 timestamp or date ([`parse_rfc3339`]).
    #[error("invalid RFC 3339 timestamp {input:?}: {reason}")]
    BadTimestamp {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Not a duration ([`parse_duration`]).
    #[error("invalid duration {input:?}: {reason} (examples: 30s, 10m, 1h30m, 2d, 500ms)")]
    BadDuration {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `clock_gettime` failed.
    #[error("clock_gettime({clock}) failed: {source}")]
    Clock {
        /// The clock's name (`CLOCK_REALTIME`, `CLOCK_MONOTONIC`).
        clock: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

fn clock_ns(clock: libc::clockid_t, name: &'static str) -> Result<i64, TimeError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return Err(TimeError::Clock {
            clock: name,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(ts.tv_sec * NANOS_PER_SEC + ts.tv_nsec)
}

/// Wall-clock time, nanoseconds since the Unix epoch (CLOCK_REALTIME).
pub fn realtime_ns() -> Result<i64, TimeError> {
    clock_ns(libc::CLOCK_REALTIME, "CLOCK_REALTIME")
}

/// Monotonic time, nanoseconds since boot excluding suspend (CLOCK_MONOTONIC).
pub fn monotonic_ns() -> Result<u64, TimeError> {
    // CLOCK_MONOTONIC is never negative.
    clock_ns(libc::CLOCK_MONOTONIC, "CLOCK_MONOTONIC").map(|ns| ns.max(0) as u64)
}

/// Formats as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`: fixed width, so timestamps also sort as strings.
///
/// ```
/// # #[cfg(feature = "internals")] {
/// use guard::forensic::time::{format_rfc3339_nanos, parse_rfc3339};
///
/// let ns = parse_rfc3339("2026-11-29T20:03:15.5+01:00")?;
/// assert_eq!(format_rfc3339_nanos(ns), "2026-11-29T19:03:15.500000000Z");
/// assert_eq!(format_rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
/// assert!(parse_rfc3339("2026-13-01").is_err());
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn format_rfc3339_nanos(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(NANOS_PER_SEC);
    let nanos = unix_ns.rem_euclid(NANOS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// The log writer's `wall` text, one per record, without allocating: the same bytes as
/// [`format_rfc3339_nanos`] (a test holds them to it). The date and time of day are kept from
/// the previous reading when it was in the same second, so most records only format their
/// nanoseconds. An i64 of nanoseconds spans the years 1677 to 2262: every field has a fixed
/// width.
pub(crate) struct WallText {
    secs: i64,
    text: [u8; 30],
}

impl WallText {
    pub(crate) fn new() -> Self {
        Self {
            secs: 0,
            text: *b"1970-01-01T00:00:00.000000000Z",
        }
    }

    /// `unix_ns` as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
    pub(crate) fn format(&mut self, unix_ns: i64) -> &[u8; 30] {
        let secs = unix_ns.div_euclid(NANOS_PER_SEC);
        if secs != self.secs {
            self.set_second(secs);
        }
        let nanos = unix_ns.rem_euclid(NANOS_PER_SEC) as u32;
        self.text[20] = b'0' + (nanos / 100_000_000) as u8;
        let nanos = nanos % 100_000_000;
        self.text[21..23].copy_from_slice(&two_digits(nanos / 1_000_000));
        self.text[23..25].copy_from_slice(&two_digits(nanos / 10_000 % 100));
        self.text[25..27].copy_from_slice(&two_digits(nanos / 100 % 100));
        self.text[27..29].copy_from_slice(&two_digits(nanos % 100));
        &self.text
    }

    fn set_second(&mut self, secs: i64) {
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        // Years 1677..=2262 (see above), so four digits and never negative.
        let year = year as u32;
        let second_of_day = secs.rem_euclid(86_400) as u32;
        self.text[0..2].copy_from_slice(&two_digits(year / 100));
        self.text[2..4].copy_from_slice(&two_digits(year % 100));
        self.text[5..7].copy_from_slice(&two_digits(month));
        self.text[8..10].copy_from_slice(&two_digits(day));
        self.text[11..13].copy_from_slice(&two_digits(second_of_day / 3600));
        self.text[14..16].copy_from_slice(&two_digits(second_of_day % 3600 / 60));
        self.text[17..19].copy_from_slice(&two_digits(second_of_day % 60));
        self.secs = secs;
    }
}

/// `value` (below 100) as two decimal digits.
fn two_digits(value: u32) -> [u8; 2] {
    [b'0' + (value / 10) as u8, b'0' + (value % 10) as u8]
}

/// Parses RFC 3339 (`2026-11-29T20:03:15Z`, `…15.5+01:00`, `t`/space separator) or a bare
/// date (`2026-11-29`, midnight UTC) to nanoseconds since the Unix epoch.
pub fn parse_rfc3339(input: &str) -> Result<i64, TimeError> {
    let bad = |reason| TimeError::BadTimestamp {
        input: input.to_owned(),
        reason,
    };
    let b = input.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<i64, TimeError> {
        let digits = b.get(range).ok_or_else(|| bad("too short"))?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad("expected digits"));
        }
        Ok(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| -> Result<(), TimeError> {
        match b.get(at) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(bad("unexpected separator")),
        }
    };
    let year = num(0..4)?;
    sep(4, b"-")?;
    let month = num(5..7)?;
    sep(7, b"-")?;
    let day = num(8..10)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month as u32) {
        return Err(bad("no such date"));
    }
    let days = days_from_civil(year, month as u32, day as u32);
    // i64 nanoseconds cover 1677-09-21 to 2262-04-11.
    let to_nanos = |secs: i64, nanos: i64| {
        secs.checked_mul(NANOS_PER_SEC)
            .and_then(|ns| ns.checked_add(nanos))
            .ok_or_else(|| bad("outside the years 1678 to 2261"))
    };
    if b.len() == 10 {
        return to_nanos(days * 86_400, 0);
    }
    sep(10, b"Tt ")?;
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    sep(13, b":")?;
    sep(16, b":")?;
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("time of day out of range"));
    }
    let mut at = 19;
    let mut nanos = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            // Digits past nanoseconds are dropped: the log never writes them.
            if at - start < 9 {
                nanos = nanos * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(bad("empty fraction"));
        }
        for _ in (at - start)..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() => {
            sep(at + 3, b":")?;
            let (oh, om) = (num(at + 1..at + 3)?, num(at + 4..at + 6)?);
            if oh > 23 || om > 59 {
                return Err(bad("offset out of range"));
            }
            let offset = oh * 3600 + om * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return Err(bad("expected Z or a ±HH:MM offset at the end")),
    };
    to_nanos(
        days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs,
        nanos,
    )
}

/// Parses a relative duration: one or more `<number><unit>` with units ms, s, m, h, d.
///
/// ```
/// # #[cfg(feature = "internals")] {
/// use std::time::Duration;
/// use guard::forensic::time::parse_duration;
///
/// assert_eq!(parse_duration("1h30m")?, Duration::from_secs(5400));
/// assert_eq!(parse_duration("500ms")?, Duration::from_millis(500));
/// assert!(parse_duration("10").is_err()); // a unit is required
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, TimeError> {
    let bad = |reason| TimeError::BadDuration {
        input: input.to_owned(),
        reason,
    };
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        let ms = value.checked_mul(unit_ms).ok_or_else(|| bad("too large"))?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| bad("too large"))?;
    }
    Ok(total)
}

/// `--since` accepts an absolute RFC 3339 time or a duration back from `now_ns`.
pub fn parse_since(input: &str, now_ns: i64) -> Result<i64, TimeError> {
    let looks_absolute = input.len() >= 10 && input.as_bytes()[4] == b'-';
    if looks_absolute {
        return parse_rfc3339(input);
    }
    let ago = parse_duration(input)?;
    let ago_ns = i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX);
    Ok(now_ns.saturating_sub(ago_ns))
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days (public domain algorithms).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        for ns in [0, 1, 951_782_400_123_456_789, 1_796_000_000_000_000_000, -1] {
            let text = format_rfc3339_nanos(ns);
            assert_eq!(parse_rfc3339(&text).unwrap(), ns, "{text}");
        }
        assert_eq!(format_rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            format_rfc3339_nanos(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn the_writers_formatting_is_the_general_one() {
        let mut cases = vec![0, -1, 1, i64::MIN, i64::MAX, 951_782_400_000_000_000];
        // A walk over the whole i64 range (years 1677 to 2262) that carries into every field.
        let mut ns = -9_000_000_000_000_000_000i64;
        for step in 0..100_000 {
            cases.push(ns);
            ns += (step % 997 + 1) * 350_000_123_457;
        }
        // Readings close together, as a writer makes them, across second boundaries.
        cases.extend((0..5_000).map(|i| 1_796_000_000_999_000_000 + i * 1_000_003));
        // One formatter over all of them, as the writer keeps one: each second's date and time
        // of day are reused only within that second.
        let mut wall = WallText::new();
        for ns in cases.iter().flat_map(|&ns| [ns, ns.saturating_add(1), ns]) {
            assert_eq!(wall.format(ns), format_rfc3339_nanos(ns).as_bytes(), "{ns}");
        }
    }

    #[test]
    fn parses_offsets_dates_and_rejects_garbage() {
        let utc = parse_rfc3339("2026-11-29T20:03:15Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-29T21:03:15+01:00").unwrap(), utc);
        assert_eq!(
            parse_rfc3339("2026-11-29 20:03:15.5Z").unwrap(),
            utc + 500_000_000
        );
        assert_eq!(
            parse_rfc3339("2026-11-29").unwrap(),
            utc - (20 * 3600 + 3 * 60 + 15) * NANOS_PER_SEC
        );
        for bad in [
            "",
            "2026-13-01",
            "2026-02-29",
            "2026-11-29T25:00:00Z",
            "2026-11-29T20:03:15",
            "x",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "10", "m", "5y", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_since("1s", 5 * NANOS_PER_SEC).unwrap(),
            4 * NANOS_PER_SEC
        );
    }
}

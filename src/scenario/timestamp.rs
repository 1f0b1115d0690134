//! ISO-8601 date-times as backends write them on the wire (`created_at`,
//! `expires_at`, `server_time`), read to seconds since the epoch: a check
//! can then tell a timestamp from an HTTP date or epoch milliseconds in a
//! string, and compare two of them (`expires_at` = `created_at` + `ttl_s`).

/// Seconds since the Unix epoch now, by the harness's clock.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Seconds since the Unix epoch of `YYYY-MM-DD[T ]HH:MM[:SS[.fraction]]`
/// with a zone `Z`, `±HH`, `±HHMM` or `±HH:MM`, or none (read as UTC):
/// ISO-8601's extended format, with RFC 3339's space for `T`. Anything else
/// (a second field out of range, trailing text) is None.
pub fn parse(text: &str) -> Option<f64> {
    read(text).map(|(seconds, _)| seconds)
}

/// [`parse`], and whether the text says its zone (`Z` or an offset): one
/// without is local time to ISO-8601, and an agent in another zone reads
/// it as its own.
pub fn read(text: &str) -> Option<(f64, bool)> {
    let b = text.as_bytes();
    let number = |from: usize, to: usize| -> Option<i64> {
        let digits = b.get(from..to)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separator = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    let year = number(0, 4)?;
    let month = number(5, 7)?;
    let day = number(8, 10)?;
    let hour = number(11, 13)?;
    let minute = number(14, 16)?;
    if !(separator(4, b"-") && separator(7, b"-") && separator(10, b"Tt ") && separator(13, b":")) {
        return None;
    }
    let mut at = 16;
    let mut second = 0.0;
    if separator(at, b":") {
        second = number(17, 19)? as f64;
        at = 19;
        if separator(at, b".,") {
            let start = at + 1;
            at = start;
            while b.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            if at == start {
                return None;
            }
            second += format!("0.{}", &text[start..at]).parse::<f64>().ok()?;
        }
    }
    let zoned = at < b.len();
    let offset_minutes = match b.get(at) {
        None => 0,
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = number(at + 1, at + 3)?;
            let minutes = match b.len() - (at + 3) {
                0 => 0,
                2 => number(at + 3, at + 5)?,
                3 if b[at + 3] == b':' => number(at + 4, at + 6)?,
                _ => return None,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            if *sign == b'-' {
                -(hours * 60 + minutes)
            } else {
                hours * 60 + minutes
            }
        }
        _ => return None,
    };
    // 60 is a leap second.
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second >= 61.0
    {
        return None;
    }
    let minutes = (days_from_civil(year, month, day) * 24 + hour) * 60 + minute - offset_minutes;
    Some((minutes as f64 * 60.0 + second, zoned))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::{parse, read};

    #[test]
    fn reads_the_forms_backends_write() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        let at = 1_796_330_689.952;
        for text in [
            "2026-12-03T20:44:49.952Z",
            "2026-12-03T20:44:49.952",
            "2026-12-03 20:44:49.952z",
            "2026-12-03T21:44:49.952+01:00",
            "2026-12-03T21:44:49.952+0100",
            "2026-12-03T21:44:49,952+01",
            "2026-12-03T15:14:49.952-05:30",
        ] {
            let read = parse(text).unwrap_or_else(|| panic!("{text}"));
            assert!((read - at).abs() < 1e-3, "{text}: {read}");
        }
        assert_eq!(parse("2026-12-03T20:44Z"), Some(1_796_330_640.0));
    }

    #[test]
    fn tells_a_zone_from_none() {
        for (text, zoned) in [
            ("2026-12-03T20:44:49.952Z", true),
            ("2026-12-03T20:44:49z", true),
            ("2026-12-03T21:44+01:00", true),
            ("2026-12-03T15:14:49-0530", true),
            ("2026-12-03T20:44:49.952", false),
            ("2026-12-03 20:44", false),
        ] {
            assert_eq!(read(text).map(|(_, z)| z), Some(zoned), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_iso_8601_date_time() {
        for text in [
            "",
            "Thu, 03 Dec 2026 20:44:49 GMT",
            "1796330689952",
            "2026-12-03",
            "2026-12-03T20",
            "2026-12-03T20:44:49.Z",
            "2026-12-03T20:44:49Z ",
            "2026-12-03T20:44:49+1",
            "2026-12-03T20:44:49+01:0",
            "2026-12-03T20:44:49+24:00",
            "2026-13-03T20:44:49Z",
            "2026-02-29T20:44:49Z",
            "2026-04-31T20:44:49Z",
            "2026-12-03T24:00:00Z",
            "2026-12-03T20:60:00Z",
            "2026-12-03T20:44:61Z",
            "2026/12/03T20:44:49Z",
            "+2026-12-03T20:44:49Z",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
        assert!(parse("2024-02-29T00:00:00Z").is_some());
        assert!(parse("2016-12-31T23:59:60Z").is_some());
    }

    proptest! {
        /// Any instant, written as RFC 3339 in UTC, reads back to itself.
        #[test]
        fn rfc3339_in_utc_reads_back(seconds in 0u64..253_402_300_800, nanos in 0u32..1_000_000_000) {
            let time = UNIX_EPOCH + Duration::new(seconds, nanos);
            let text = humantime::format_rfc3339_nanos(time).to_string();
            let read = parse(&text).unwrap();
            let expected = seconds as f64 + f64::from(nanos) / 1e9;
            prop_assert!((read - expected).abs() < 1e-3, "{} {}", text, read);
        }

        /// The same instant written at another zone reads the same.
        #[test]
        fn a_zone_offset_is_taken_off(
            seconds in 86_400u64..253_402_214_400,
            offset in -1439i64..=1439,
        ) {
            let local = UNIX_EPOCH + Duration::from_secs(seconds.saturating_add_signed(offset * 60));
            let utc = humantime::format_rfc3339_seconds(local).to_string();
            let sign = if offset < 0 { '-' } else { '+' };
            let zone = format!("{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60);
            let text = utc.replace('Z', &zone);
            prop_assert_eq!(parse(&text), Some(seconds as f64), "{}", text);
        }

        /// Whatever arrives, reading it never panics.
        #[test]
        fn never_panics(text in "\\PC{0,40}") {
            let _ = parse(&text);
        }

        /// Every prefix of a valid timestamp that is not itself one of the
        /// allowed shorter forms is refused (nothing is read past the end).
        #[test]
        fn truncations_are_refused(seconds in 0u64..4_102_444_800, cut in 0usize..24) {
            let text = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(seconds)).to_string();
            let short = &text[..cut.min(text.len() - 1)];
            let allowed = [16, 19, 21, 22, 23].contains(&short.len());
            prop_assert_eq!(parse(short).is_some(), allowed, "{}", short);
        }
    }
}

//! `Retry-After` on a rate limit's 429 (WS-RATE-1; RFC 9110 §10.2.3): whole
//! seconds or an HTTP-date, and no longer than the limits' minute allows.
//! A backend that writes milliseconds (`60000`) tells every agent to wait
//! seventeen hours; one that writes `1.5` or `60s` is not read at all.

use super::matcher::NOW_TOLERANCE;
use super::timestamp;

/// The longest wait a 429 of PROTOCOL.md §7 may ask for. Its limits count
/// over a minute; twice that leaves room for any fair limiter.
pub const LONGEST_S: f64 = 120.0;

/// What is wrong with a 429's `Retry-After` (absent, or unreadable, or
/// too long), if anything.
pub fn problem(header: Option<&str>) -> Option<String> {
    match header {
        None => Some("429 without Retry-After".into()),
        Some(value) => read(value, timestamp::now()).err(),
    }
}

/// The wait the header asks for, in seconds from `now` (seconds since the
/// epoch), or what is wrong with it.
pub fn read(value: &str, now: f64) -> Result<f64, String> {
    let value = value.trim();
    let how = "Retry-After must be whole seconds (`60`) or an HTTP-date \
               (`Sun, 06 Nov 1994 08:49:37 GMT`)";
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: f64 = value.parse().map_err(|_| format!("{value:?}: {how}"))?;
        return match seconds <= LONGEST_S {
            true => Ok(seconds),
            false => Err(format!(
                "Retry-After: {value} asks for {}{}; the limits count per minute, \
                 so at most {LONGEST_S} s",
                human(seconds),
                if seconds >= 1000.0 {
                    " (milliseconds for seconds?)"
                } else {
                    ""
                }
            )),
        };
    }
    let at = http_date(value).ok_or_else(|| format!("Retry-After: {value:?}: {how}"))?;
    let wait = at - now;
    let skew = NOW_TOLERANCE.as_secs_f64();
    match wait <= LONGEST_S + skew {
        true => Ok(wait.max(0.0)),
        false => Err(format!(
            "Retry-After: {value} is {} from now; the limits count per minute, \
             so at most {LONGEST_S} s (and {skew} s for the clocks)",
            human(wait)
        )),
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), in seconds since the
/// epoch.
fn http_date(text: &str) -> Option<f64> {
    let words: Vec<&str> = text.split(' ').collect();
    let [weekday, day, month, year, time, "GMT"] = words[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Mon,", "Tue,", "Wed,", "Thu,", "Fri,", "Sat,", "Sun,"];
    let month = MONTHS.iter().position(|m| *m == month)? + 1;
    let well_formed =
        DAYS.contains(&weekday) && day.len() == 2 && year.len() == 4 && time.len() == 8;
    well_formed
        .then(|| timestamp::parse(&format!("{year}-{month:02}-{day}T{time}Z")))
        .flatten()
}

fn human(seconds: f64) -> String {
    match seconds {
        s if s >= 3600.0 => format!("{:.1} h", s / 3600.0),
        s if s >= 60.0 => format!("{:.1} min", s / 60.0),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// 2026-12-04T16:00:00Z
    const NOW: f64 = 1_796_400_000.0;

    #[test]
    fn seconds_and_dates_within_the_minute_are_read() {
        assert_eq!(read("0", NOW), Ok(0.0));
        assert_eq!(read("60", NOW), Ok(60.0));
        assert_eq!(read(" 120 ", NOW), Ok(120.0));
        assert_eq!(read("Fri, 04 Dec 2026 16:00:45 GMT", NOW), Ok(45.0));
        assert_eq!(read("Fri, 04 Dec 2026 15:59:00 GMT", NOW), Ok(0.0));
    }

    #[test]
    fn milliseconds_and_other_units_are_refused_with_why() {
        for (value, why) in [
            ("60000", "16.7 h (milliseconds for seconds?)"),
            ("121", "2.0 min"),
            ("1.5", "whole seconds"),
            ("60s", "whole seconds"),
            ("-1", "whole seconds"),
            ("", "whole seconds"),
            ("2026-12-04T16:00:45Z", "HTTP-date"),
            ("Fri, 04 Dec 2026 18:00:00 GMT", "2.0 h from now"),
            ("Fri, 4 Dec 2026 16:00:45 GMT", "HTTP-date"),
            ("Fri, 04 Dez 2026 16:00:45 GMT", "HTTP-date"),
        ] {
            let error = read(value, NOW).unwrap_err();
            assert!(error.contains(why), "{value:?}: {error}");
        }
    }

    proptest! {
        /// Fed by the network: any header reads or is refused, never
        /// panics, and what reads is a wait within the bound.
        #[test]
        fn any_header_reads_within_the_bound_or_is_refused(value in "[ -~]{0,40}") {
            if let Ok(wait) = read(&value, NOW) {
                prop_assert!((0.0..=LONGEST_S + NOW_TOLERANCE.as_secs_f64()).contains(&wait));
            }
        }

        #[test]
        fn whole_seconds_up_to_the_bound_read_as_themselves(seconds in 0u32..=120) {
            prop_assert_eq!(read(&seconds.to_string(), NOW), Ok(f64::from(seconds)));
        }
    }
}

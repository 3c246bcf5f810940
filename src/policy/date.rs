//! Calendar dates for waiver expiry: `YYYY-MM-DD` in policy files, and "today", which tests
//! and reproducible CI runs pin with `MODELGATE_TODAY=YYYY-MM-DD`.
//!
//! The `time` crate validates the calendar (month lengths, leap years); parsing is done
//! here so that only the one strict form is accepted and the error says what was expected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The environment variable that overrides today's date.
pub const TODAY_ENV: &str = "MODELGATE_TODAY";

/// A calendar date (no time zone: waivers expire at the end of their day, everywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(time::Date);

impl Date {
    /// Parse exactly `YYYY-MM-DD` (four-digit year, two-digit month and day).
    pub fn parse(s: &str) -> Result<Date, String> {
        let bad = || format!("`{s}` is not a date: expected YYYY-MM-DD, e.g. 2026-03-31");
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            let part = s.get(r)?;
            if part.bytes().all(|c| c.is_ascii_digit()) {
                part.parse().ok()
            } else {
                None
            }
        };
        let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
            return Err(bad());
        };
        let month = u8::try_from(m)
            .ok()
            .and_then(|m| time::Month::try_from(m).ok())
            .ok_or_else(|| {
                format!("`{s}` is not a date: month {m} is not 01 to 12 (expected YYYY-MM-DD)")
            })?;
        // y < 10000 and d < 100 by construction (four and two digits).
        let date = time::Date::from_calendar_date(y as i32, month, d as u8).map_err(|_| {
            format!("`{s}` is not a date: {month} {y} has no day {d} (expected YYYY-MM-DD)")
        })?;
        Ok(Date(date))
    }

    /// Today: `MODELGATE_TODAY` when set (it must then be a valid date), else the UTC date.
    pub fn today() -> Result<Date, String> {
        match std::env::var(TODAY_ENV) {
            Ok(v) => Date::parse(v.trim()).map_err(|e| format!("{TODAY_ENV}: {e}")),
            Err(_) => Ok(Date(time::OffsetDateTime::now_utc().date())),
        }
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            self.0.month() as u8,
            self.0.day()
        )
    }
}

impl Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Date;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date as YYYY-MM-DD")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Date, E> {
                Date::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_the_strict_form() {
        assert_eq!(Date::parse("2024-02-29").unwrap().to_string(), "2024-02-29");
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-1-01",
            "24-01-01",
            "2024/01/01",
            "2024-01-01T00:00",
            "abcd-ef-gh",
            "+024-01-01",
        ] {
            assert!(Date::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn orders_by_calendar() {
        assert!(Date::parse("2025-12-31").unwrap() < Date::parse("2026-01-01").unwrap());
    }
}

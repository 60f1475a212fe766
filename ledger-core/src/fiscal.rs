//! Fiscal calendar: years, months and quarters in China Standard Time (UTC+08:00), as
//! half-open `[start, end)` ranges of UTC instants, and the RFC 3339 stamp the journal uses.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, SecondsFormat, TimeZone, Utc};
use std::fmt;
use std::str::FromStr;

/// Seconds east of UTC of the fiscal time zone (UTC+08:00, SPEC.md "Time").
const FISCAL_OFFSET_SECS: i32 = 8 * 3600;
/// Years the ledger accepts; outside this a value is a typo, not a fiscal year.
pub const YEAR_MIN: i32 = 2000;
pub const YEAR_MAX: i32 = 2999;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FiscalError {
    #[error("year must be YYYY between {YEAR_MIN} and {YEAR_MAX}: {0:?}")]
    Year(String),
    #[error("month must be YYYY-MM: {0:?}")]
    Month(String),
    #[error("quarter must be YYYY-Qn with n in 1..=4: {0:?}")]
    Quarter(String),
    #[error("timestamp must be RFC 3339: {0:?}")]
    Timestamp(String),
}

fn fiscal_zone() -> FixedOffset {
    FixedOffset::east_opt(FISCAL_OFFSET_SECS).expect("8 hours is a valid UTC offset")
}

/// Start of a local (UTC+08:00) calendar day as a UTC instant.
fn local_midnight(year: i32, month: u32, day: u32) -> DateTime<Utc> {
    let date = NaiveDate::from_ymd_opt(year, month, day).expect("callers pass a validated date");
    let local = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    fiscal_zone()
        .from_local_datetime(&local)
        .single()
        .expect("a fixed offset has no gaps or folds")
        .with_timezone(&Utc)
}

/// A fiscal year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Year(i32);

impl Year {
    pub fn new(year: i32) -> Result<Year, FiscalError> {
        if (YEAR_MIN..=YEAR_MAX).contains(&year) {
            Ok(Year(year))
        } else {
            Err(FiscalError::Year(year.to_string()))
        }
    }
    pub fn get(self) -> i32 {
        self.0
    }
    /// The fiscal year an instant falls in.
    pub fn of(at: DateTime<Utc>) -> Year {
        Year(at.with_timezone(&fiscal_zone()).year())
    }
    pub fn start(self) -> DateTime<Utc> {
        local_midnight(self.0, 1, 1)
    }
    pub fn end(self) -> DateTime<Utc> {
        local_midnight(self.0 + 1, 1, 1)
    }
    pub fn contains(self, at: DateTime<Utc>) -> bool {
        self.start() <= at && at < self.end()
    }
}

impl Year {
    /// The year's four digits as `Display` prints them, without the formatting machinery.
    pub fn digits(self) -> [u8; 4] {
        let year = u32::try_from(self.0).expect("a Year is YEAR_MIN..=YEAR_MAX by construction");
        let digit = |place: u32| {
            u8::try_from(year / place % 10).expect("a remainder of 10 is one digit") + b'0'
        };
        [digit(1000), digit(100), digit(10), digit(1)]
    }
}

impl fmt::Display for Year {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.digits();
        f.write_str(std::str::from_utf8(&digits).expect("a year's digits are ASCII"))
    }
}

fn parse_digits(s: &str, len: usize) -> Option<i32> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

impl FromStr for Year {
    type Err = FiscalError;
    fn from_str(s: &str) -> Result<Year, FiscalError> {
        parse_digits(s, 4)
            .and_then(|y| Year::new(y).ok())
            .ok_or_else(|| FiscalError::Year(s.to_string()))
    }
}

/// A fiscal month, `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: Year,
    month: u32,
}

impl Month {
    pub fn new(year: Year, month: u32) -> Result<Month, FiscalError> {
        if (1..=12).contains(&month) {
            Ok(Month { year, month })
        } else {
            Err(FiscalError::Month(format!("{year}-{month}")))
        }
    }
    pub fn year(self) -> Year {
        self.year
    }
    pub fn number(self) -> u32 {
        self.month
    }
    pub fn of(at: DateTime<Utc>) -> Month {
        let local = at.with_timezone(&fiscal_zone());
        Month {
            year: Year(local.year()),
            month: local.month(),
        }
    }
    pub fn start(self) -> DateTime<Utc> {
        local_midnight(self.year.0, self.month, 1)
    }
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: Year(self.year.0 + 1),
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }
    pub fn quarter(self) -> Quarter {
        Quarter {
            year: self.year,
            quarter: (self.month - 1) / 3 + 1,
        }
    }
    pub fn contains(self, at: DateTime<Utc>) -> bool {
        self.start() <= at && at < self.end()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = FiscalError;
    fn from_str(s: &str) -> Result<Month, FiscalError> {
        let bad = || FiscalError::Month(s.to_string());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        let year = parse_digits(y, 4)
            .and_then(|y| Year::new(y).ok())
            .ok_or_else(bad)?;
        let month = parse_digits(m, 2).ok_or_else(bad)?;
        Month::new(year, u32::try_from(month).map_err(|_| bad())?).map_err(|_| bad())
    }
}

/// A fiscal quarter, `YYYY-Qn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quarter {
    year: Year,
    quarter: u32,
}

impl Quarter {
    pub fn new(year: Year, quarter: u32) -> Result<Quarter, FiscalError> {
        if (1..=4).contains(&quarter) {
            Ok(Quarter { year, quarter })
        } else {
            Err(FiscalError::Quarter(format!("{year}-Q{quarter}")))
        }
    }
    pub fn year(self) -> Year {
        self.year
    }
    pub fn of(at: DateTime<Utc>) -> Quarter {
        Month::of(at).quarter()
    }
    pub fn first_month(self) -> Month {
        Month {
            year: self.year,
            month: (self.quarter - 1) * 3 + 1,
        }
    }
    pub fn start(self) -> DateTime<Utc> {
        self.first_month().start()
    }
    pub fn end(self) -> DateTime<Utc> {
        self.first_month().next().next().end()
    }
    pub fn contains(self, at: DateTime<Utc>) -> bool {
        self.start() <= at && at < self.end()
    }
}

impl fmt::Display for Quarter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-Q{}", self.year, self.quarter)
    }
}

impl FromStr for Quarter {
    type Err = FiscalError;
    fn from_str(s: &str) -> Result<Quarter, FiscalError> {
        let bad = || FiscalError::Quarter(s.to_string());
        let (y, q) = s.split_once("-Q").ok_or_else(bad)?;
        let year = parse_digits(y, 4)
            .and_then(|y| Year::new(y).ok())
            .ok_or_else(bad)?;
        let quarter = parse_digits(q, 1).ok_or_else(bad)?;
        Quarter::new(year, u32::try_from(quarter).map_err(|_| bad())?).map_err(|_| bad())
    }
}

/// The journal's timestamp form: RFC 3339, UTC, whole seconds (`2026-01-05T02:30:00Z`).
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses any RFC 3339 timestamp (any offset) into UTC.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, FiscalError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| FiscalError::Timestamp(s.to_string()))
}

/// Whether `parse_timestamp` takes `s`. The journal's own form (`YYYY-MM-DDTHH:MM:SSZ`, as
/// `format_timestamp` writes it) is checked by hand and anything else by chrono: the auditor
/// checks every entry's stamp, and chrono's parser was ~3 % of its workers' time (perf,
/// 1,000,000 entries, 2026-12-04).
pub fn is_timestamp(s: &str) -> bool {
    journal_form_is_valid(s.as_bytes()).unwrap_or_else(|| parse_timestamp(s).is_ok())
}

/// For a text shaped `DDDD-DD-DDTDD:DD:DDZ`: whether it names a real instant (a day of the
/// proleptic Gregorian calendar, hour < 24, minute and second < 60). `None` for any other
/// shape, and for second 60, which chrono's own leap-second rules decide.
pub(crate) fn journal_form_is_valid(text: &[u8]) -> Option<bool> {
    let text: &[u8; 20] = text.try_into().ok()?;
    let separators = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'Z'),
    ];
    if separators.iter().any(|&(at, byte)| text[at] != byte) {
        return None;
    }
    let number = |start: usize, len: usize| {
        text[start..start + len]
            .iter()
            .try_fold(0u32, |value, &byte| {
                byte.is_ascii_digit()
                    .then(|| value * 10 + u32::from(byte - b'0'))
            })
    };
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    if second == 60 {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Some(false),
    };
    Some((1..=days).contains(&day) && hour < 24 && minute < 60 && second < 60)
}

/// Serde as the wire text (`"2026"`, `"2026-01"`, `"2026-Q1"`).
macro_rules! serde_as_text {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(Year);
serde_as_text!(Month);
serde_as_text!(Quarter);

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        parse_timestamp(s).expect("test timestamp")
    }

    #[test]
    fn the_journal_form_is_valid_exactly_when_chrono_parses_it() {
        let check = |text: &str| {
            assert_eq!(
                is_timestamp(text),
                parse_timestamp(text).is_ok(),
                "{text:?}"
            );
        };
        for year in ["0000", "1900", "2000", "2024", "2026", "2100", "9999"] {
            for month in 0..=13 {
                for day in [0, 1, 28, 29, 30, 31, 32] {
                    check(&format!("{year}-{month:02}-{day:02}T00:00:00Z"));
                }
            }
        }
        for time in [
            "00:00:00", "23:59:59", "24:00:00", "12:60:00", "12:00:59", "12:00:60",
        ] {
            check(&format!("2026-06-30T{time}Z"));
            check(&format!("2026-12-31T{time}Z"));
        }
        for other in [
            "2026-01-05T02:30:00+08:00",
            "2026-01-05t02:30:00z",
            "2026-01-05 02:30:00Z",
            "2026-01-05T02:30:00.5Z",
            "2026-1-05T02:30:00Z",
            "2026-01-05T02:30:0xZ",
            "+026-01-05T02:30:00Z",
            "2026-01-05T02:30:00",
            "",
        ] {
            check(other);
        }
    }

    fn check_month(instant: &str, expected: &str) {
        assert_eq!(Month::of(at(instant)).to_string(), expected, "{instant}");
    }

    #[test]
    fn year_edges_are_in_utc_plus_8() {
        check_month("2026-12-31T15:59:59Z", "2026-12");
        check_month("2026-12-31T16:00:00Z", "2027-01");
        check_month("2026-01-31T16:00:00Z", "2026-02");
        let y: Year = "2026".parse().unwrap();
        assert_eq!(format_timestamp(y.start()), "2025-12-31T16:00:00Z");
        assert_eq!(format_timestamp(y.end()), "2026-12-31T16:00:00Z");
        assert!(y.contains(at("2026-12-31T15:59:59Z")));
        assert!(!y.contains(at("2026-12-31T16:00:00Z")));
        assert_eq!(Year::of(at("2025-12-31T16:00:00Z")), y);
    }

    #[test]
    fn months_and_quarters_round_trip_and_nest() {
        for text in ["2026-01", "2026-03", "2026-12", "2999-12"] {
            let m: Month = text.parse().unwrap();
            assert_eq!(m.to_string(), text);
            assert!(m.quarter().contains(m.start()));
            assert_eq!(m.start(), m.start().min(m.end()));
        }
        let q: Quarter = "2026-Q4".parse().unwrap();
        assert_eq!(q.to_string(), "2026-Q4");
        assert_eq!(format_timestamp(q.start()), "2026-09-30T16:00:00Z");
        assert_eq!(format_timestamp(q.end()), "2026-12-31T16:00:00Z");
        assert_eq!(
            Quarter::of(at("2026-03-31T15:59:59Z")).to_string(),
            "2026-Q1"
        );
        assert_eq!(
            Quarter::of(at("2026-03-31T16:00:00Z")).to_string(),
            "2026-Q2"
        );
    }

    #[test]
    fn bad_text_is_refused() {
        for bad in [
            "2026-13", "2026-00", "2026-1", "26-01", "2026/01", "", "1999-01",
        ] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
        for bad in ["2026-Q0", "2026-Q5", "2026Q1", "2026-q1"] {
            assert!(bad.parse::<Quarter>().is_err(), "{bad}");
        }
        for bad in ["1999", "3000", "20260", "abcd", "+202"] {
            assert!(bad.parse::<Year>().is_err(), "{bad}");
        }
        assert!(parse_timestamp("2026-01-01 00:00:00").is_err());
        assert_eq!(
            format_timestamp(at("2026-01-01T08:00:00+08:00")),
            "2026-01-01T00:00:00Z"
        );
    }
}

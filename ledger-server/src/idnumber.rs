//! Resident ID numbers (居民身份证号码, GB 11643-1999): parsed once at the edge into an
//! `IdNumber` that carries its precondition (18 characters, a valid check character, a real
//! birth date that is not in the future), plus the age rule of SPEC.md "Registration".
//! Nothing here logs or prints a number: errors name what is wrong, never the value.

use chrono::{Datelike, NaiveDate};

/// Characters in a resident ID number.
const ID_NUMBER_LEN: usize = 18;
/// Weights of the first 17 digits (GB 11643-1999, ISO 7064 MOD 11-2).
const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
/// Check character by weighted sum mod 11.
const CHECK_CHARS: &[u8; 11] = b"10X98765432";
/// Earliest birth year accepted: nobody born before it is alive to register.
const BIRTH_YEAR_MIN: i32 = 1900;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdNumberError {
    #[error("an ID number has 18 characters")]
    Length,
    #[error("an ID number is 17 digits and a check character 0-9 or X")]
    Character,
    #[error("the ID number's check character is wrong")]
    CheckCharacter,
    #[error("the ID number's birth date (characters 7-14) is not a possible date")]
    BirthDate,
}

/// A valid resident ID number, normalised (a lowercase `x` check character becomes `X`).
#[derive(Clone, PartialEq, Eq)]
pub struct IdNumber {
    text: String,
    birth_date: NaiveDate,
}

/// Never print the number itself, even in a debug dump.
impl std::fmt::Debug for IdNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdNumber(..)")
    }
}

impl IdNumber {
    /// Parses `text`; `today` is the local date of registration, so a birth date after it is
    /// impossible.
    pub fn parse(text: &str, today: NaiveDate) -> Result<IdNumber, IdNumberError> {
        let bytes = text.as_bytes();
        if bytes.len() != ID_NUMBER_LEN {
            return Err(IdNumberError::Length);
        }
        let (body, check) = bytes.split_at(ID_NUMBER_LEN - 1);
        if !body.iter().all(u8::is_ascii_digit) {
            return Err(IdNumberError::Character);
        }
        let check = check[0].to_ascii_uppercase();
        if !(check.is_ascii_digit() || check == b'X') {
            return Err(IdNumberError::Character);
        }
        let sum: u32 = body
            .iter()
            .zip(WEIGHTS)
            .map(|(d, w)| u32::from(d - b'0') * w)
            .sum();
        let expected = CHECK_CHARS[usize::try_from(sum % 11).expect("a remainder mod 11 fits")];
        if check != expected {
            return Err(IdNumberError::CheckCharacter);
        }
        let birth_date = NaiveDate::parse_from_str(&text[6..14], "%Y%m%d")
            .ok()
            .filter(|d| d.year() >= BIRTH_YEAR_MIN && *d <= today)
            .ok_or(IdNumberError::BirthDate)?;
        let mut normalised = text[..ID_NUMBER_LEN - 1].to_string();
        normalised.push(char::from(check));
        Ok(IdNumber {
            text: normalised,
            birth_date,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn birth_date(&self) -> NaiveDate {
        self.birth_date
    }

    /// The first 6 and last 4 characters, for masked display (`130102********1234`).
    pub fn ends(&self) -> (String, String) {
        (
            self.text[..6].to_string(),
            self.text[ID_NUMBER_LEN - 4..].to_string(),
        )
    }

    /// Age in whole years on `date`.
    pub fn age_on(&self, date: NaiveDate) -> u32 {
        age_on(self.birth_date, date)
    }
}

/// Whole years from `birth` to `date` (0 if `date` is before `birth`). Someone born on
/// 29 February has a birthday on 1 March in other years.
pub fn age_on(birth: NaiveDate, date: NaiveDate) -> u32 {
    let years = date.year() - birth.year();
    let before_birthday = (date.month(), date.day()) < (birth.month(), birth.day());
    let age = if before_birthday { years - 1 } else { years };
    u32::try_from(age).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("test date")
    }

    fn today() -> NaiveDate {
        date(2026, 3, 1)
    }

    /// Completes 17 digits with their check character (independently of `parse`).
    fn with_check(first17: &str) -> String {
        let sum: u32 = first17
            .chars()
            .zip(WEIGHTS)
            .map(|(c, w)| c.to_digit(10).unwrap() * w)
            .sum();
        let check = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'][(sum % 11) as usize];
        format!("{first17}{check}")
    }

    fn check(input: &str, expected: Result<&str, IdNumberError>) {
        let got = IdNumber::parse(input, today());
        assert_eq!(
            got.as_ref().map(|n| n.as_str()).map_err(|e| *e),
            expected,
            "{input}"
        );
    }

    #[test]
    fn valid_numbers_parse_and_normalise() {
        // The standard's own example (GB 11643-1999 Appendix A): check character X.
        check("11010519491231002X", Ok("11010519491231002X"));
        check("11010519491231002x", Ok("11010519491231002X"));
        let synthetic = with_check("13010219500315123");
        check(&synthetic, Ok(&synthetic));
        let n = IdNumber::parse(&synthetic, today()).unwrap();
        assert_eq!(n.birth_date(), date(1950, 3, 15));
        assert_eq!(
            n.ends(),
            ("130102".to_string(), synthetic[14..].to_string())
        );
        assert_eq!(format!("{n:?}"), "IdNumber(..)");
    }

    #[test]
    fn bad_numbers_are_refused_with_the_reason() {
        let good = with_check("13010219500315123");
        let last = good.chars().last().unwrap();
        let wrong = if last == '0' { '1' } else { '0' };
        check(
            &format!("{}{wrong}", &good[..17]),
            Err(IdNumberError::CheckCharacter),
        );
        check(&good[..17], Err(IdNumberError::Length));
        check(&format!("{good}0"), Err(IdNumberError::Length));
        check("", Err(IdNumberError::Length));
        check("1301021950031512AX", Err(IdNumberError::Character));
        check("13010219500315123Y", Err(IdNumberError::Character));
        // Multi-byte characters are refused by length or character, never sliced.
        check("１３０１０２１９５００３１５", Err(IdNumberError::Length));
        check("1301021950031512é", Err(IdNumberError::Character));
        // Impossible dates with a correct check character.
        check(
            &with_check("13010219500230123"),
            Err(IdNumberError::BirthDate),
        );
        check(
            &with_check("13010219501301123"),
            Err(IdNumberError::BirthDate),
        );
        check(
            &with_check("13010218991231123"),
            Err(IdNumberError::BirthDate),
        );
        // A birth date after today, and today itself (possible).
        check(
            &with_check("13010220260302123"),
            Err(IdNumberError::BirthDate),
        );
        let born_today = with_check("13010220260301123");
        check(&born_today, Ok(&born_today));
        // 29 February only in leap years.
        check(
            &with_check("13010219510229123"),
            Err(IdNumberError::BirthDate),
        );
        let leap = with_check("13010219520229123");
        check(&leap, Ok(&leap));
    }

    #[test]
    fn age_counts_whole_years_to_the_birthday() {
        let check_age = |birth: NaiveDate, on: NaiveDate, expected: u32| {
            assert_eq!(age_on(birth, on), expected, "{birth} on {on}");
        };
        check_age(date(1966, 3, 1), date(2026, 3, 1), 60);
        check_age(date(1966, 3, 2), date(2026, 3, 1), 59);
        check_age(date(1936, 2, 28), date(2026, 3, 1), 90);
        check_age(date(1936, 3, 2), date(2026, 3, 1), 89);
        check_age(date(1952, 2, 29), date(2026, 2, 28), 73);
        check_age(date(1952, 2, 29), date(2026, 3, 1), 74);
        check_age(date(2026, 3, 2), date(2026, 3, 1), 0);
    }
}

//! Exact money as integer fen, and the one place the wire amount string is parsed and printed.
//!
//! API.md "Conventions": amounts travel as JSON strings of decimal yuan with at most two
//! fraction digits (`"58"`, `"58.5"`, `"58.50"`), and responses always carry two digits.
//! Inside the ledger an amount is a [`Fen`]; balances may go negative (a funding account is
//! debited below zero), amounts on the wire never do.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fen in one yuan.
pub const FEN_PER_YUAN: i64 = 100;

/// The largest amount the wire format accepts, in fen: one trillion yuan. It is far above any
/// real subsidy yet leaves i64 headroom for sums of many amounts.
pub const AMOUNT_MAX_FEN: i64 = 1_000_000_000_000 * FEN_PER_YUAN;

/// Fraction digits the wire format allows after the decimal point.
const FRACTION_DIGITS_MAX: usize = 2;

/// An exact amount of money in fen (1 yuan = 100 fen). Arithmetic is checked; there is no
/// float anywhere.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Fen(i64);

/// Why an amount string was rejected; each variant names one way the text is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount is empty")]
    Empty,
    #[error("amount contains whitespace")]
    Whitespace,
    #[error("amount is negative")]
    Negative,
    #[error("amount has a '+' sign; give plain decimal yuan")]
    PlusSign,
    #[error("amount uses exponent notation; give plain decimal yuan")]
    Exponent,
    #[error("amount contains the non-ASCII digit {0:?}; use 0-9")]
    NonAsciiDigit(char),
    #[error("amount contains the invalid character {0:?}")]
    InvalidCharacter(char),
    #[error("amount has no digits before the decimal point")]
    MissingIntegerPart,
    #[error("amount has no digits after the decimal point")]
    MissingFractionDigits,
    #[error("amount has more than 2 fraction digits")]
    TooManyFractionDigits,
    #[error("amount has a leading zero")]
    LeadingZero,
    #[error("amount exceeds the maximum of 1000000000000.00 yuan")]
    TooLarge,
}

impl Fen {
    pub const ZERO: Fen = Fen(0);

    pub const fn from_fen(fen: i64) -> Fen {
        Fen(fen)
    }

    pub const fn fen(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Fen) -> Option<Fen> {
        self.0.checked_add(other.0).map(Fen)
    }

    pub fn checked_sub(self, other: Fen) -> Option<Fen> {
        self.0.checked_sub(other.0).map(Fen)
    }

    pub fn checked_neg(self) -> Option<Fen> {
        self.0.checked_neg().map(Fen)
    }

    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses the wire format: non-negative decimal yuan, ASCII digits, no leading zero but a
    /// lone `0`, and an optional `.` followed by one or two digits; at most [`AMOUNT_MAX_FEN`].
    pub fn parse_amount(text: &str) -> Result<Fen, MoneyError> {
        match parse_plain_amount(text) {
            Some(fen) => Ok(fen),
            None => parse_amount_checked(text),
        }
    }
}

/// `Fen::parse_amount`, each rule checked in turn so that a refusal names what is wrong.
fn parse_amount_checked(text: &str) -> Result<Fen, MoneyError> {
    check_characters(text)?;
    let (integer, fraction) = match text.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (text, None),
    };
    if integer.is_empty() {
        return Err(MoneyError::MissingIntegerPart);
    }
    if integer.len() > 1 && integer.starts_with('0') {
        return Err(MoneyError::LeadingZero);
    }
    let fraction_fen = match fraction {
        None => 0,
        Some("") => return Err(MoneyError::MissingFractionDigits),
        Some(digits) if digits.len() > FRACTION_DIGITS_MAX => {
            return Err(MoneyError::TooManyFractionDigits)
        }
        // One digit means tenths of a yuan, i.e. ten fen each.
        Some(digits) if digits.len() == 1 => digits_value(digits)? * 10,
        Some(digits) => digits_value(digits)?,
    };
    let fen = digits_value(integer)?
        .checked_mul(FEN_PER_YUAN)
        .and_then(|fen| fen.checked_add(fraction_fen))
        .ok_or(MoneyError::TooLarge)?;
    if fen > AMOUNT_MAX_FEN {
        return Err(MoneyError::TooLarge);
    }
    Ok(Fen(fen))
}

/// One pass over the common well-formed amount (`58`, `58.5`, `58.50`); `None` for anything
/// else, which the full parser then accepts or explains. Accepts exactly what the full
/// parser accepts among such texts (a test holds it to that).
fn parse_plain_amount(text: &str) -> Option<Fen> {
    // A byte scan: amounts are a few bytes, too short for `split_once`'s searcher to pay.
    let (integer, fraction) = match text.bytes().position(|b| b == b'.') {
        Some(point) => (text.get(..point)?, text.get(point + 1..)?),
        None => (text, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let plain_integer = match integer.len() {
        1 => all_digits(integer),
        // Up to 15 digits: at most AMOUNT_MAX_FEN's 13 yuan digits, and no i64 overflow.
        2..=15 => !integer.starts_with('0') && all_digits(integer),
        _ => false,
    };
    let fraction_fen = match (text.len() == integer.len(), fraction.len()) {
        (true, _) => 0,
        (false, 1) if all_digits(fraction) => digits_value(fraction).ok()? * 10,
        (false, 2) if all_digits(fraction) => digits_value(fraction).ok()?,
        _ => return None,
    };
    if !plain_integer {
        return None;
    }
    let fen = digits_value(integer)
        .ok()?
        .checked_mul(FEN_PER_YUAN)?
        .checked_add(fraction_fen)?;
    (fen <= AMOUNT_MAX_FEN).then_some(Fen(fen))
}

/// Rejects every character that cannot appear in the wire format, most telling reason first,
/// so that afterwards the text holds only ASCII digits and at most one `.`.
fn check_characters(text: &str) -> Result<(), MoneyError> {
    if text.is_empty() {
        return Err(MoneyError::Empty);
    }
    if text.chars().any(char::is_whitespace) {
        return Err(MoneyError::Whitespace);
    }
    if text.starts_with('-') {
        return Err(MoneyError::Negative);
    }
    if text.starts_with('+') {
        return Err(MoneyError::PlusSign);
    }
    if text.contains(['e', 'E']) {
        return Err(MoneyError::Exponent);
    }
    let mut points = 0;
    for ch in text.chars() {
        match ch {
            '0'..='9' => {}
            '.' if points == 0 => points += 1,
            _ if ch.is_numeric() => return Err(MoneyError::NonAsciiDigit(ch)),
            _ => return Err(MoneyError::InvalidCharacter(ch)),
        }
    }
    Ok(())
}

/// The value of a run of ASCII digits, or `TooLarge` if it overflows i64.
fn digits_value(digits: &str) -> Result<i64, MoneyError> {
    digits.bytes().try_fold(0i64, |value, digit| {
        value
            .checked_mul(10)
            .and_then(|value| value.checked_add(i64::from(digit - b'0')))
            .ok_or(MoneyError::TooLarge)
    })
}

/// Longest text a `Fen` prints: a sign, the 17 digits of i64::MIN's yuan, a point and two
/// digits.
const TEXT_LEN_MAX: usize = 21;

/// An amount's printed text, kept on the stack for writers that must not allocate.
pub struct FenText {
    bytes: [u8; TEXT_LEN_MAX],
    start: usize,
}

impl FenText {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[self.start..])
            .expect("FenText holds only ASCII digits, '-' and '.'")
    }
}

impl Fen {
    /// Yuan with exactly two fraction digits (`58.50`, `0.05`, `-58.50`), as `Display`
    /// prints it, written without the formatting machinery (journal writers call this for
    /// every posting).
    pub fn to_text(self) -> FenText {
        let mut text = FenText {
            bytes: [0; TEXT_LEN_MAX],
            start: TEXT_LEN_MAX,
        };
        let mut push = |byte: u8| {
            text.start -= 1;
            text.bytes[text.start] = byte;
        };
        // A remainder of 10 is below 10, so the cast is exact.
        let digit = |value: u64| b'0' + (value % 10) as u8;
        // unsigned_abs keeps i64::MIN printable.
        let magnitude = self.0.unsigned_abs();
        let fen_per_yuan = FEN_PER_YUAN.unsigned_abs();
        let (mut yuan, fen) = (magnitude / fen_per_yuan, magnitude % fen_per_yuan);
        push(digit(fen));
        push(digit(fen / 10));
        push(b'.');
        loop {
            push(digit(yuan));
            yuan /= 10;
            if yuan == 0 {
                break;
            }
        }
        if self.0 < 0 {
            push(b'-');
        }
        text
    }
}

impl fmt::Display for Fen {
    /// Yuan with exactly two fraction digits: `58.50`, `0.05`, `-58.50`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_text().as_str())
    }
}

impl FromStr for Fen {
    type Err = MoneyError;

    fn from_str(text: &str) -> Result<Fen, MoneyError> {
        Fen::parse_amount(text)
    }
}

impl Serialize for Fen {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fen {
    /// Accepts only a string in the wire format; a JSON number is an error by design (API.md).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fen, D::Error> {
        deserializer.deserialize_str(AmountVisitor)
    }
}

struct AmountVisitor;

impl Visitor<'_> for AmountVisitor {
    type Value = Fen;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an amount as a string of decimal yuan, such as \"58.50\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Fen, E> {
        Fen::parse_amount(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, expected: Result<i64, MoneyError>) {
        assert_eq!(
            Fen::parse_amount(input),
            expected.map(Fen::from_fen),
            "input {input:?}"
        );
    }

    #[test]
    fn parses_accepted_forms() {
        check("58", Ok(5800));
        check("58.5", Ok(5850));
        check("58.50", Ok(5850));
        check("58.05", Ok(5805));
        check("0.01", Ok(1));
        check("0", Ok(0));
        check("0.00", Ok(0));
        check("10", Ok(1000));
        check("1000000000000", Ok(AMOUNT_MAX_FEN));
        check("1000000000000.00", Ok(AMOUNT_MAX_FEN));
        check("999999999999.99", Ok(AMOUNT_MAX_FEN - 1));
    }

    #[test]
    fn rejects_each_malformation_with_its_own_reason() {
        check("", Err(MoneyError::Empty));
        check("-1", Err(MoneyError::Negative));
        check("-0", Err(MoneyError::Negative));
        check("+1", Err(MoneyError::PlusSign));
        check("1e3", Err(MoneyError::Exponent));
        check("1E3", Err(MoneyError::Exponent));
        check(".5", Err(MoneyError::MissingIntegerPart));
        check("58.", Err(MoneyError::MissingFractionDigits));
        check("58.123", Err(MoneyError::TooManyFractionDigits));
        check(" 58", Err(MoneyError::Whitespace));
        check("58 ", Err(MoneyError::Whitespace));
        check("5\u{3000}8", Err(MoneyError::Whitespace));
        check("058", Err(MoneyError::LeadingZero));
        check("00", Err(MoneyError::LeadingZero));
        check("00.5", Err(MoneyError::LeadingZero));
        check("５８", Err(MoneyError::NonAsciiDigit('５')));
        check("٥", Err(MoneyError::NonAsciiDigit('٥')));
        check("1.2.3", Err(MoneyError::InvalidCharacter('.')));
        check("58,50", Err(MoneyError::InvalidCharacter(',')));
        check("NaN", Err(MoneyError::InvalidCharacter('N')));
        check("0x10", Err(MoneyError::InvalidCharacter('x')));
        check("1000000000000.01", Err(MoneyError::TooLarge));
        check("9223372036854775808", Err(MoneyError::TooLarge));
        check("99999999999999999999999", Err(MoneyError::TooLarge));
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        assert_eq!(
            MoneyError::TooManyFractionDigits.to_string(),
            "amount has more than 2 fraction digits"
        );
        assert_eq!(
            MoneyError::InvalidCharacter(',').to_string(),
            "amount contains the invalid character ','"
        );
    }

    #[test]
    fn displays_two_fraction_digits() {
        let check_display = |fen: i64, expected: &str| {
            assert_eq!(Fen::from_fen(fen).to_string(), expected, "fen {fen}");
        };
        check_display(5850, "58.50");
        check_display(5, "0.05");
        check_display(0, "0.00");
        check_display(100, "1.00");
        check_display(-5850, "-58.50");
        check_display(-5, "-0.05");
        check_display(i64::MIN, "-92233720368547758.08");
        check_display(i64::MAX, "92233720368547758.07");
    }

    #[test]
    fn from_str_is_parse_amount() {
        assert_eq!("58.5".parse::<Fen>(), Ok(Fen::from_fen(5850)));
        assert_eq!("058".parse::<Fen>(), Err(MoneyError::LeadingZero));
    }

    #[test]
    fn arithmetic_is_checked() {
        let a = Fen::from_fen(5850);
        assert_eq!(a.checked_add(Fen::from_fen(150)), Some(Fen::from_fen(6000)));
        assert_eq!(
            a.checked_sub(Fen::from_fen(6000)),
            Some(Fen::from_fen(-150))
        );
        assert_eq!(a.checked_neg(), Some(Fen::from_fen(-5850)));
        assert_eq!(Fen::from_fen(i64::MAX).checked_add(Fen::from_fen(1)), None);
        assert_eq!(Fen::from_fen(i64::MIN).checked_sub(Fen::from_fen(1)), None);
        assert_eq!(Fen::from_fen(i64::MIN).checked_neg(), None);
        assert_eq!(Fen::default(), Fen::ZERO);
        assert_eq!(a.fen(), 5850);
    }

    #[test]
    fn sign_predicates() {
        assert!(Fen::from_fen(1).is_positive());
        assert!(!Fen::ZERO.is_positive() && !Fen::ZERO.is_negative() && Fen::ZERO.is_zero());
        assert!(Fen::from_fen(-1).is_negative());
        assert!(!Fen::from_fen(-1).is_zero());
    }

    #[test]
    fn serializes_as_display_string() {
        let json = serde_json::to_string(&Fen::from_fen(5850)).expect("serialize");
        assert_eq!(json, "\"58.50\"");
        let json = serde_json::to_string(&Fen::from_fen(-5)).expect("serialize");
        assert_eq!(json, "\"-0.05\"");
    }

    #[test]
    fn deserializes_only_from_wire_strings() {
        let parse = |json: &str| serde_json::from_str::<Fen>(json);
        assert_eq!(parse("\"58.5\"").expect("string"), Fen::from_fen(5850));
        assert!(parse("58").is_err(), "JSON integer must be rejected");
        assert!(parse("58.5").is_err(), "JSON float must be rejected");
        assert!(parse("null").is_err());
        let error = parse("\"-1\"").expect_err("negative");
        assert!(error.to_string().contains("amount is negative"), "{error}");
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(fen in 0..=AMOUNT_MAX_FEN) {
            let amount = Fen::from_fen(fen);
            prop_assert_eq!(Fen::parse_amount(&amount.to_string()), Ok(amount));
        }

        #[test]
        fn parse_never_panics_on_any_text(text in any::<String>()) {
            let _ = Fen::parse_amount(&text);
        }

        #[test]
        fn text_is_the_formatted_yuan_and_fen(fen in any::<i64>()) {
            let sign = if fen < 0 { "-" } else { "" };
            let magnitude = fen.unsigned_abs();
            let expected = format!("{sign}{}.{:02}", magnitude / 100, magnitude % 100);
            let text = Fen::from_fen(fen).to_text();
            prop_assert_eq!(text.as_str(), expected.as_str());
            prop_assert_eq!(Fen::from_fen(fen).to_string(), expected);
        }

        #[test]
        fn plain_fast_path_agrees_with_the_checked_parser(text in "[0-9]{0,17}(\\.[0-9]{0,3})?|[0-9.]{0,20}") {
            if let Some(fen) = parse_plain_amount(&text) {
                prop_assert_eq!(parse_amount_checked(&text), Ok(fen));
            }
        }

        #[test]
        fn parse_never_panics_on_amount_like_text(text in "[-+0-9.eE ]{0,24}") {
            if let Ok(amount) = Fen::parse_amount(&text) {
                prop_assert!((0..=AMOUNT_MAX_FEN).contains(&amount.fen()));
            }
        }
    }
}

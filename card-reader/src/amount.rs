//! `Amount`: a positive yuan amount as API.md writes it (`"58"`, `"58.5"`, `"58.50"` in,
//! `"58.50"` out), checked at the terminal so a typo is caught before the card is read.
//! Integer fen; never floats.

use std::fmt;
use std::str::FromStr;

/// The largest amount the terminal sends: far above any price cap, far below overflow.
/// 100 million yuan.
pub const AMOUNT_MAX_FEN: u64 = 10_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount {
    fen: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("金额 {0:?} 无效 / invalid amount {0:?}: positive yuan with at most 2 decimals, e.g. 58 or 58.50")]
pub struct AmountError(pub String);

impl Amount {
    pub fn fen(self) -> u64 {
        self.fen
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(text: &str) -> Result<Amount, AmountError> {
        let bad = || AmountError(text.to_string());
        let (yuan, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if yuan.is_empty() || !digits(yuan) || !digits(fraction) || fraction.len() > 2 {
            return Err(bad());
        }
        if text.ends_with('.') {
            return Err(bad());
        }
        let yuan: u64 = yuan.parse().map_err(|_| bad())?;
        let fraction_fen: u64 = match fraction.len() {
            0 => 0,
            1 => fraction.parse::<u64>().map_err(|_| bad())? * 10,
            _ => fraction.parse().map_err(|_| bad())?,
        };
        let fen = yuan
            .checked_mul(100)
            .and_then(|f| f.checked_add(fraction_fen))
            .ok_or_else(bad)?;
        if fen == 0 || fen > AMOUNT_MAX_FEN {
            return Err(bad());
        }
        Ok(Amount { fen })
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.fen / 100, self.fen % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<&str>) {
        let got = input.parse::<Amount>().ok().map(|a| a.to_string());
        assert_eq!(got.as_deref(), expected, "{input:?}");
    }

    #[test]
    fn takes_the_wire_forms_and_prints_two_digits() {
        check("58", Some("58.00"));
        check("58.5", Some("58.50"));
        check("58.50", Some("58.50"));
        check("0.01", Some("0.01"));
        check("007", Some("7.00"));
        check("0", None);
        check("0.00", None);
        check("-5", None);
        check("5.", None);
        check(".5", None);
        check("5.505", None);
        check("5,50", None);
        check("1e3", None);
        check("", None);
        check("99999999999999999999", None);
        check("100000000.01", None);
    }

    #[test]
    fn round_trips() {
        for fen in [1u64, 9, 10, 99, 100, 5_850, 12_345_678] {
            let text = format!("{}.{:02}", fen / 100, fen % 100);
            let amount: Amount = text.parse().unwrap();
            assert_eq!((amount.fen(), amount.to_string()), (fen, text));
        }
    }
}

//! Ledger accounts: the five account names of API.md "Audit" and their balances
//! (posted and pending debits and credits, as in TigerBeetle's model).

use crate::fiscal::Year;
use crate::money::Fen;
use std::fmt;
use std::str::FromStr;

/// Longest identifier (elder, district or provider id) that may appear in an account name.
pub const ID_LEN_MAX: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("identifier must be 1..={ID_LEN_MAX} characters of A-Z, a-z, 0-9, '_' or '-': {0:?}")]
    BadId(String),
    #[error("not an account name: {0:?}")]
    BadName(String),
}

/// An identifier that is safe inside an account name (no `:`), bounded in length.
pub fn validate_id(id: &str) -> Result<(), AccountError> {
    let ok = !id.is_empty()
        && id.len() <= ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AccountError::BadId(id.to_string()))
    }
}

/// One account of the chart of accounts. Construct through the checked constructors or
/// `FromStr`, so every value names a valid account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccountId {
    /// `elder:{elder_id}:{year}`: the elder's credit for one fiscal year; credit-normal,
    /// never below zero.
    Elder { elder_id: String, year: Year },
    /// `funding:{district}:{year}`: debited by issuance.
    Funding { district: String, year: Year },
    /// `provider:{provider_id}:payable`: credited by charge and offset, debited by refund
    /// and payout.
    ProviderPayable { provider_id: String },
    /// `settled:{district}`: credited by payout.
    Settled { district: String },
    /// `forfeit:{district}:{year}`: credited by the year-end forfeit.
    Forfeit { district: String, year: Year },
}

impl AccountId {
    pub fn elder(elder_id: &str, year: Year) -> Result<AccountId, AccountError> {
        validate_id(elder_id)?;
        Ok(AccountId::Elder {
            elder_id: elder_id.to_string(),
            year,
        })
    }
    pub fn funding(district: &str, year: Year) -> Result<AccountId, AccountError> {
        validate_id(district)?;
        Ok(AccountId::Funding {
            district: district.to_string(),
            year,
        })
    }
    pub fn provider_payable(provider_id: &str) -> Result<AccountId, AccountError> {
        validate_id(provider_id)?;
        Ok(AccountId::ProviderPayable {
            provider_id: provider_id.to_string(),
        })
    }
    pub fn settled(district: &str) -> Result<AccountId, AccountError> {
        validate_id(district)?;
        Ok(AccountId::Settled {
            district: district.to_string(),
        })
    }
    pub fn forfeit(district: &str, year: Year) -> Result<AccountId, AccountError> {
        validate_id(district)?;
        Ok(AccountId::Forfeit {
            district: district.to_string(),
            year,
        })
    }

    pub fn is_elder(&self) -> bool {
        matches!(self, AccountId::Elder { .. })
    }

    /// The fiscal year of a year-bound account.
    pub fn year(&self) -> Option<Year> {
        match self {
            AccountId::Elder { year, .. }
            | AccountId::Funding { year, .. }
            | AccountId::Forfeit { year, .. } => Some(*year),
            AccountId::ProviderPayable { .. } | AccountId::Settled { .. } => None,
        }
    }
}

impl AccountId {
    /// Hands the account's name, as `Display` prints it, to `write` piece by piece, without
    /// the formatting machinery (journal writers escape or copy every posting's name).
    pub fn write_name(&self, mut write: impl FnMut(&str)) {
        let mut with_year = |kind: &str, id: &str, year: Year| {
            let digits = year.digits();
            write(kind);
            write(id);
            write(":");
            write(std::str::from_utf8(&digits).expect("a year's digits are ASCII"));
        };
        match self {
            AccountId::Elder { elder_id, year } => with_year("elder:", elder_id, *year),
            AccountId::Funding { district, year } => with_year("funding:", district, *year),
            AccountId::Forfeit { district, year } => with_year("forfeit:", district, *year),
            AccountId::ProviderPayable { provider_id } => {
                write("provider:");
                write(provider_id);
                write(":payable");
            }
            AccountId::Settled { district } => {
                write("settled:");
                write(district);
            }
        }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut result = Ok(());
        self.write_name(|piece| {
            if result.is_ok() {
                result = f.write_str(piece);
            }
        });
        result
    }
}

/// Which of the five kinds of account an account is: all the posting rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountClass {
    Elder,
    Funding,
    ProviderPayable,
    Settled,
    Forfeit,
}

/// A name's class, id and year text (for the classes that have one), if it has the shape of
/// an account name; the id and the year are not checked yet.
fn split_name(s: &str) -> Option<(AccountClass, &str, Option<&str>)> {
    // Up to four parts, so that a name with too many is told apart without collecting;
    // split by a byte scan, since names are short and ':' is ASCII.
    let mut rest = Some(s);
    let mut next = || {
        let part = rest?;
        match part.bytes().position(|b| b == b':') {
            Some(colon) => {
                rest = part.get(colon + 1..);
                part.get(..colon)
            }
            None => {
                rest = None;
                Some(part)
            }
        }
    };
    match (next(), next(), next(), next()) {
        (Some("elder"), Some(id), Some(y), None) => Some((AccountClass::Elder, id, Some(y))),
        (Some("funding"), Some(d), Some(y), None) => Some((AccountClass::Funding, d, Some(y))),
        (Some("provider"), Some(id), Some("payable"), None) => {
            Some((AccountClass::ProviderPayable, id, None))
        }
        (Some("settled"), Some(d), None, None) => Some((AccountClass::Settled, d, None)),
        (Some("forfeit"), Some(d), Some(y), None) => Some((AccountClass::Forfeit, d, Some(y))),
        _ => None,
    }
}

impl AccountId {
    /// The class and year of the account `name` names, checked exactly as `FromStr` checks
    /// it, without building the account (no allocation: the auditor reads two names per
    /// entry, a million entries a second).
    pub fn classify(name: &str) -> Result<(AccountClass, Option<Year>), AccountError> {
        let bad = || AccountError::BadName(name.to_string());
        let (class, id, year) = split_name(name).ok_or_else(bad)?;
        validate_id(id).map_err(|_| bad())?;
        let year = year
            .map(|y| y.parse::<Year>().map_err(|_| bad()))
            .transpose()?;
        Ok((class, year))
    }

    pub fn class(&self) -> AccountClass {
        match self {
            AccountId::Elder { .. } => AccountClass::Elder,
            AccountId::Funding { .. } => AccountClass::Funding,
            AccountId::ProviderPayable { .. } => AccountClass::ProviderPayable,
            AccountId::Settled { .. } => AccountClass::Settled,
            AccountId::Forfeit { .. } => AccountClass::Forfeit,
        }
    }
}

impl FromStr for AccountId {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<AccountId, AccountError> {
        let bad = || AccountError::BadName(s.to_string());
        let (class, id, year_text) = split_name(s).ok_or_else(bad)?;
        let year = || {
            year_text
                .ok_or_else(bad)?
                .parse::<Year>()
                .map_err(|_| bad())
        };
        match class {
            AccountClass::Elder => AccountId::elder(id, year()?),
            AccountClass::Funding => AccountId::funding(id, year()?),
            AccountClass::ProviderPayable => AccountId::provider_payable(id),
            AccountClass::Settled => AccountId::settled(id),
            AccountClass::Forfeit => AccountId::forfeit(id, year()?),
        }
        .map_err(|_| bad())
    }
}

/// Running totals of one account. All four are sums of positive amounts, so each is >= 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    pub debits_posted: Fen,
    pub credits_posted: Fen,
    pub debits_pending: Fen,
    pub credits_pending: Fen,
}

impl Balance {
    /// Posted credits − posted debits (the credit-normal balance).
    pub fn posted_credit_balance(&self) -> Option<Fen> {
        self.credits_posted.checked_sub(self.debits_posted)
    }

    /// What an elder may still spend: posted credits − posted debits − pending debits.
    pub fn available(&self) -> Option<Fen> {
        self.posted_credit_balance()?
            .checked_sub(self.debits_pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `classify` takes exactly the names `FromStr` takes, with their class and year.
        #[test]
        fn classify_agrees_with_parsing(
            name in prop_oneof![
                "(elder|funding|forfeit):[A-Za-z0-9_-]{0,3}:[0-9]{3,5}",
                "(provider:[A-Za-z0-9_-]{0,3}:payable|settled:[A-Za-z0-9_-]{0,3})",
                "[a-z:0-9_.-]{0,20}",
            ]
        ) {
            match (AccountId::classify(&name), name.parse::<AccountId>()) {
                (Ok((class, year)), Ok(id)) => {
                    prop_assert_eq!(class, id.class());
                    prop_assert_eq!(year, id.year());
                }
                (Err(_), Err(_)) => {}
                (classified, parsed) => {
                    prop_assert!(false, "{name}: {classified:?} vs {parsed:?}");
                }
            }
        }
    }

    fn check(name: &str, expected: Result<AccountId, ()>) {
        assert_eq!(
            name.parse::<AccountId>().map_err(|_| ()),
            expected,
            "{name}"
        );
        if let Ok(id) = expected {
            assert_eq!(id.to_string(), name);
        }
    }

    #[test]
    fn names_round_trip() {
        let y: Year = "2026".parse().unwrap();
        check(
            "elder:E00000001:2026",
            Ok(AccountId::elder("E00000001", y).unwrap()),
        );
        check(
            "funding:130102:2026",
            Ok(AccountId::funding("130102", y).unwrap()),
        );
        check(
            "provider:P001:payable",
            Ok(AccountId::provider_payable("P001").unwrap()),
        );
        check("settled:130104", Ok(AccountId::settled("130104").unwrap()));
        check(
            "forfeit:130102:2026",
            Ok(AccountId::forfeit("130102", y).unwrap()),
        );
        for year in ["2000", "2009", "2010", "2999"] {
            check(
                &format!("elder:E1:{year}"),
                Ok(AccountId::elder("E1", year.parse().unwrap()).unwrap()),
            );
        }
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "elder:E1",
            "elder:E1:26",
            "elder::2026",
            "provider:P1:owed",
            "settled:",
            "settled:a:b",
            "cash:1",
            "elder:E 1:2026",
            "elder:E1:2026:x",
            "funding:130102:2026:",
            "provider:P1:payable:x",
            "forfeit:130102",
            "",
        ] {
            check(bad, Err(()));
        }
        assert!(validate_id(&"x".repeat(ID_LEN_MAX)).is_ok());
        assert!(validate_id(&"x".repeat(ID_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn available_subtracts_pending_debits() {
        let b = Balance {
            credits_posted: Fen::from_fen(50_000),
            debits_posted: Fen::from_fen(5_850),
            debits_pending: Fen::from_fen(10_000),
            credits_pending: Fen::ZERO,
        };
        assert_eq!(b.available(), Some(Fen::from_fen(34_150)));
    }
}

//! `CardUid`: an ISO 14443 card UID (4, 7 or 10 bytes), written as upper-case hex without
//! separators, the form API.md's `card_uid` takes (`"04A1B2C3D4E5F6"`).

use std::fmt;

/// ISO/IEC 14443-3 UIDs are single (4 bytes), double (7) or triple (10) size.
pub const UID_LENGTHS_BYTES: [usize; 3] = [4, 7, 10];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardUid(Vec<u8>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UidError {
    #[error("card UID {0:?} is not hex (e.g. 04A1B2C3D4E5F6)")]
    NotHex(String),
    #[error("card UID has {0} bytes; ISO 14443 UIDs have 4, 7 or 10")]
    Length(usize),
}

impl CardUid {
    /// A UID from the bytes a card returned.
    pub fn from_bytes(bytes: &[u8]) -> Result<CardUid, UidError> {
        if UID_LENGTHS_BYTES.contains(&bytes.len()) {
            Ok(CardUid(bytes.to_vec()))
        } else {
            Err(UidError::Length(bytes.len()))
        }
    }

    /// Parses hex as a worker or a phone's NFC stack writes it: either case, with or without
    /// `:`, `-` or spaces between bytes.
    pub fn parse(text: &str) -> Result<CardUid, UidError> {
        let digits: String = text
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | ' '))
            .collect();
        let bytes = hex::decode(&digits).map_err(|_| UidError::NotHex(text.to_string()))?;
        CardUid::from_bytes(&bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for CardUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, UidError>) {
        let got = CardUid::parse(input).map(|u| u.to_string());
        assert_eq!(got, expected.map(str::to_string), "{input}");
    }

    #[test]
    fn parses_the_forms_workers_and_phones_write() {
        check("04A1B2C3D4E5F6", Ok("04A1B2C3D4E5F6"));
        check("04a1b2c3d4e5f6", Ok("04A1B2C3D4E5F6"));
        check("04:A1:B2:C3:D4:E5:F6", Ok("04A1B2C3D4E5F6"));
        check("de ad be ef", Ok("DEADBEEF"));
        check("04A1B2C3D4E5F60708A9", Ok("04A1B2C3D4E5F60708A9"));
        check("04A1B2", Err(UidError::Length(3)));
        check("04A1B2C3D4", Err(UidError::Length(5)));
        check(
            "04A1B2C3D4E5F",
            Err(UidError::NotHex("04A1B2C3D4E5F".into())),
        );
        check("ZZA1B2C3", Err(UidError::NotHex("ZZA1B2C3".into())));
        check("", Err(UidError::Length(0)));
    }
}

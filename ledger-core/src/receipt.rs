//! The receipt QR payload: a receipt's key facts signed with the ledger key, checkable offline.
//!
//! API.md "Charges" and "Audit": `SLR1|{receipt_no}|{amount}|{provider_id}|{confirmed_at}|
//! {entry_hash}|{sig}`, where `sig` is base64url without padding of the Ed25519 signature
//! over the UTF-8 bytes of everything before the last `|`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ED25519};

use crate::checkpoint::{LedgerKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::money::{Fen, MoneyError};

/// The payload's first field; it names the format and its version.
pub const RECEIPT_QR_PREFIX: &str = "SLR1";

const SEPARATOR: char = '|';

/// The facts a verified receipt QR payload vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptQr {
    pub receipt_no: String,
    pub amount: Fen,
    pub provider_id: String,
    /// RFC 3339, as the receipt gives it.
    pub confirmed_at: String,
    /// Lowercase hex hash of the journal entry that posted the charge.
    pub entry_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("{field} contains '|', the payload's separator")]
    SeparatorInField { field: &'static str },
    #[error("receipt amount must be positive")]
    NonPositiveAmount,
    #[error("payload does not start with \"SLR1|\"")]
    WrongPrefix,
    #[error("payload has {found} fields, not 7")]
    WrongFieldCount { found: usize },
    #[error("receipt amount is invalid: {0}")]
    InvalidAmount(#[source] MoneyError),
    #[error("signature is not base64url of 64 bytes")]
    MalformedSignature,
    #[error("signature does not match the payload and public key")]
    BadSignature,
}

/// The signed QR payload for a receipt. Fails if a field holds the separator, which would
/// make the payload ambiguous, or if the amount is not positive.
pub fn receipt_qr(
    key: &LedgerKey,
    receipt_no: &str,
    amount: Fen,
    provider_id: &str,
    confirmed_at: &str,
    entry_hash_hex: &str,
) -> Result<String, ReceiptError> {
    let fields = [
        ("receipt_no", receipt_no),
        ("provider_id", provider_id),
        ("confirmed_at", confirmed_at),
        ("entry_hash", entry_hash_hex),
    ];
    if let Some((field, _)) = fields.iter().find(|(_, text)| text.contains(SEPARATOR)) {
        return Err(ReceiptError::SeparatorInField { field });
    }
    if !amount.is_positive() {
        return Err(ReceiptError::NonPositiveAmount);
    }
    let signed = format!(
        "{RECEIPT_QR_PREFIX}|{receipt_no}|{amount}|{provider_id}|{confirmed_at}|{entry_hash_hex}"
    );
    let signature = URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes()));
    Ok(format!("{signed}{SEPARATOR}{signature}"))
}

/// Checks the payload's form and signature under `public_key` and returns what it vouches for.
pub fn verify_receipt_qr(
    payload: &str,
    public_key: &[u8; PUBLIC_KEY_LEN],
) -> Result<ReceiptQr, ReceiptError> {
    let fields: Vec<&str> = payload.split(SEPARATOR).collect();
    if fields.first() != Some(&RECEIPT_QR_PREFIX) {
        return Err(ReceiptError::WrongPrefix);
    }
    let [_, receipt_no, amount, provider_id, confirmed_at, entry_hash, signature_text] = fields[..]
    else {
        return Err(ReceiptError::WrongFieldCount {
            found: fields.len(),
        });
    };
    let amount = Fen::parse_amount(amount).map_err(ReceiptError::InvalidAmount)?;
    if !amount.is_positive() {
        return Err(ReceiptError::NonPositiveAmount);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature_text)
        .ok()
        .filter(|bytes| bytes.len() == SIGNATURE_LEN)
        .ok_or(ReceiptError::MalformedSignature)?;
    // The signature covers everything before the last separator, i.e. before the last field.
    let signed_len = payload.len() - signature_text.len() - SEPARATOR.len_utf8();
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&payload.as_bytes()[..signed_len], &signature)
        .map_err(|_| ReceiptError::BadSignature)?;
    Ok(ReceiptQr {
        receipt_no: receipt_no.to_owned(),
        amount,
        provider_id: provider_id.to_owned(),
        confirmed_at: confirmed_at.to_owned(),
        entry_hash: entry_hash.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::SEED_LEN;
    use serde_json::Value;

    const VECTORS: &str = include_str!("../../../shared/vectors/vectors.json");

    const ENTRY_3_HASH: &str = "f1471c8a4421fa61eafde8339b81f6f4d14f111d8cff90809621afdf3dce9251";

    fn vector_str(name: &str) -> String {
        let vectors: Value = serde_json::from_str(VECTORS).expect("vectors.json parses");
        vectors[name]
            .as_str()
            .expect("vector is a string")
            .to_owned()
    }

    fn test_key() -> LedgerKey {
        let seed: [u8; SEED_LEN] = hex::decode(vector_str("ed25519_test_seed_hex"))
            .expect("seed is hex")
            .try_into()
            .expect("seed is 32 bytes");
        LedgerKey::from_seed(&seed).expect("seed accepted")
    }

    fn check(payload: &str, expected: Result<ReceiptQr, ReceiptError>) {
        let public_key = test_key().public_key_bytes();
        assert_eq!(
            verify_receipt_qr(payload, &public_key),
            expected,
            "{payload}"
        );
    }

    fn entry_3_receipt() -> ReceiptQr {
        ReceiptQr {
            receipt_no: "R2026000000025".to_owned(),
            amount: Fen::from_fen(10_000),
            provider_id: "P002".to_owned(),
            confirmed_at: "2026-01-06T03:00:00Z".to_owned(),
            entry_hash: ENTRY_3_HASH.to_owned(),
        }
    }

    fn sign_entry_3(receipt_no: &str, provider_id: &str) -> Result<String, ReceiptError> {
        receipt_qr(
            &test_key(),
            receipt_no,
            Fen::from_fen(10_000),
            provider_id,
            "2026-01-06T03:00:00Z",
            ENTRY_3_HASH,
        )
    }

    #[test]
    fn reproduces_the_vector_payload() {
        let payload = sign_entry_3("R2026000000025", "P002").expect("valid fields");
        assert_eq!(payload, vector_str("receipt_qr"));
    }

    #[test]
    fn vector_payload_verifies() {
        check(&vector_str("receipt_qr"), Ok(entry_3_receipt()));
    }

    #[test]
    fn every_changed_character_is_rejected() {
        let payload = vector_str("receipt_qr");
        let public_key = test_key().public_key_bytes();
        for position in 0..payload.len() {
            let mut bytes = payload.clone().into_bytes();
            bytes[position] = match bytes[position] {
                b'|' => b'x',
                b'0' => b'1',
                _ => b'0',
            };
            let tampered = String::from_utf8(bytes).expect("ascii");
            assert!(
                verify_receipt_qr(&tampered, &public_key).is_err(),
                "accepted {tampered}"
            );
        }
    }

    #[test]
    fn tampered_fields_fail_the_signature() {
        let payload = vector_str("receipt_qr");
        check(
            &payload.replace("|100.00|", "|10.00|"),
            Err(ReceiptError::BadSignature),
        );
        check(
            &payload.replace("|100.00|", "|100|"),
            Err(ReceiptError::BadSignature),
        );
        check(
            &payload.replace("P002", "P001"),
            Err(ReceiptError::BadSignature),
        );
        let other_key = LedgerKey::from_seed(&[9u8; SEED_LEN]).expect("seed accepted");
        assert_eq!(
            verify_receipt_qr(&payload, &other_key.public_key_bytes()),
            Err(ReceiptError::BadSignature)
        );
    }

    #[test]
    fn malformed_payloads_are_named() {
        let payload = vector_str("receipt_qr");
        check(
            &payload.replacen("SLR1", "SLR2", 1),
            Err(ReceiptError::WrongPrefix),
        );
        check(&payload[1..], Err(ReceiptError::WrongPrefix));
        check("", Err(ReceiptError::WrongPrefix));
        check("SLR1", Err(ReceiptError::WrongFieldCount { found: 1 }));
        check(
            &format!("{payload}|extra"),
            Err(ReceiptError::WrongFieldCount { found: 8 }),
        );
        check(
            &payload.replacen("|P002", "", 1),
            Err(ReceiptError::WrongFieldCount { found: 6 }),
        );
        check(
            &payload.replace("|100.00|", "|-100.00|"),
            Err(ReceiptError::InvalidAmount(MoneyError::Negative)),
        );
        check(
            &payload.replace("|100.00|", "|0.00|"),
            Err(ReceiptError::NonPositiveAmount),
        );
        let (signed, signature) = payload.rsplit_once('|').expect("has a signature");
        check(
            &format!("{signed}|{signature}=="),
            Err(ReceiptError::MalformedSignature),
        );
        check(
            &format!("{signed}|{}", signature.replace('_', "/")),
            Err(ReceiptError::MalformedSignature),
        );
        check(&format!("{signed}|"), Err(ReceiptError::MalformedSignature));
    }

    #[test]
    fn signing_rejects_separator_in_fields_and_non_positive_amounts() {
        assert_eq!(
            sign_entry_3("R1|2", "P002"),
            Err(ReceiptError::SeparatorInField {
                field: "receipt_no"
            })
        );
        assert_eq!(
            sign_entry_3("R2026000000025", "P|002"),
            Err(ReceiptError::SeparatorInField {
                field: "provider_id"
            })
        );
        let key = test_key();
        let sign_amount = |fen| {
            receipt_qr(
                &key,
                "R1",
                Fen::from_fen(fen),
                "P002",
                "2026-01-06T03:00:00Z",
                ENTRY_3_HASH,
            )
        };
        assert_eq!(sign_amount(0), Err(ReceiptError::NonPositiveAmount));
        assert_eq!(sign_amount(-100), Err(ReceiptError::NonPositiveAmount));
        let payload = sign_amount(5).expect("positive");
        let receipt = verify_receipt_qr(&payload, &key.public_key_bytes()).expect("verifies");
        assert_eq!(receipt.amount, Fen::from_fen(5));
        assert!(payload.contains("|0.05|"), "{payload}");
    }

    #[test]
    fn non_ascii_fields_round_trip() {
        let payload = sign_entry_3("R2026000000025", "供应商").expect("valid fields");
        let receipt = ReceiptQr {
            provider_id: "供应商".to_owned(),
            ..entry_3_receipt()
        };
        check(&payload, Ok(receipt));
    }
}

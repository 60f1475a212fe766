//! Signed checkpoints of the journal's Merkle tree, and the ledger's Ed25519 key that signs them.
//!
//! API.md "Audit": a checkpoint's `signature` is base64 (standard, padded) Ed25519 over the
//! UTF-8 text `ledger-checkpoint-v1\n{tree_size}\n{root_hash}\n{head_hash}\n{timestamp}\n`,
//! hashes in lowercase hex. The public key is served as [`PublicKeyDoc`].

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::merkle::Hash;

/// The first line of every checkpoint's signed text; it separates checkpoint signatures
/// from any other use of the key.
pub const CHECKPOINT_DOMAIN: &str = "ledger-checkpoint-v1";

/// The `algorithm` of [`PublicKeyDoc`].
pub const SIGNATURE_ALGORITHM: &str = "Ed25519";

/// Length of an Ed25519 seed, public key and signature, in bytes.
pub const SEED_LEN: usize = 32;
pub const PUBLIC_KEY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;

/// Length of a hash in lowercase hex.
const HASH_HEX_LEN: usize = 64;

/// A signed statement that the journal held `tree_size` entries with this Merkle root and head.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub tree_size: u64,
    /// Lowercase hex Merkle root of the first `tree_size` entries.
    pub root_hash: String,
    /// Lowercase hex hash of entry `tree_size − 1`, or 64 zeros for the empty journal.
    pub head_hash: String,
    /// RFC 3339.
    pub timestamp: String,
    /// Base64 (standard alphabet, padded) Ed25519 signature over [`signed_text`].
    pub signature: String,
}

/// The body of `GET /v1/audit/public-key`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyDoc {
    /// Always [`SIGNATURE_ALGORITHM`].
    pub algorithm: String,
    /// Base64 (standard alphabet, padded) of the 32-byte Ed25519 public key.
    pub public_key: String,
}

/// Why a signing key could not be made. ring's error types implement `std::error::Error`
/// only with its `std` feature, so the rejection reason is kept as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("Ed25519 seed rejected: {0}")]
    SeedRejected(String),
    #[error("the system random number generator failed")]
    RandomFailed,
}

/// Why a checkpoint or public key document does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("{field} is not 64 lowercase hex digits")]
    MalformedHash { field: &'static str },
    #[error("timestamp is not RFC 3339")]
    MalformedTimestamp,
    #[error("signature is not base64 of 64 bytes")]
    MalformedSignature,
    #[error("signature does not match the checkpoint and public key")]
    BadSignature,
    #[error("public key algorithm {0:?} is not Ed25519")]
    UnsupportedAlgorithm(String),
    #[error("public key is not base64 of 32 bytes")]
    MalformedPublicKey,
}

/// The exact text a checkpoint's signature covers.
pub fn signed_text(
    tree_size: u64,
    root_hash_hex: &str,
    head_hash_hex: &str,
    timestamp: &str,
) -> String {
    format!("{CHECKPOINT_DOMAIN}\n{tree_size}\n{root_hash_hex}\n{head_hash_hex}\n{timestamp}\n")
}

/// The ledger's Ed25519 signing key. Its Debug output shows only the public key.
pub struct LedgerKey {
    key_pair: Ed25519KeyPair,
}

impl LedgerKey {
    pub fn from_seed(seed: &[u8; SEED_LEN]) -> Result<LedgerKey, KeyError> {
        let key_pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|rejected| KeyError::SeedRejected(rejected.to_string()))?;
        Ok(LedgerKey { key_pair })
    }

    /// A fresh random seed; the caller stores it and builds the key with [`LedgerKey::from_seed`].
    pub fn generate_seed(random: &SystemRandom) -> Result<[u8; SEED_LEN], KeyError> {
        let mut seed = [0u8; SEED_LEN];
        random.fill(&mut seed).map_err(|_| KeyError::RandomFailed)?;
        Ok(seed)
    }

    pub fn public_key_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.key_pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("an Ed25519 public key is 32 bytes")
    }

    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.public_key_bytes())
    }

    pub fn public_key_doc(&self) -> PublicKeyDoc {
        PublicKeyDoc {
            algorithm: SIGNATURE_ALGORITHM.to_owned(),
            public_key: self.public_key_base64(),
        }
    }

    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key_pair
            .sign(message)
            .as_ref()
            .try_into()
            .expect("an Ed25519 signature is 64 bytes")
    }

    pub fn sign_checkpoint(
        &self,
        tree_size: u64,
        root: &Hash,
        head: &Hash,
        timestamp: &str,
    ) -> Checkpoint {
        let root_hash = hex::encode(root);
        let head_hash = hex::encode(head);
        let text = signed_text(tree_size, &root_hash, &head_hash, timestamp);
        Checkpoint {
            tree_size,
            root_hash,
            head_hash,
            timestamp: timestamp.to_owned(),
            signature: STANDARD.encode(self.sign(text.as_bytes())),
        }
    }
}

impl fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerKey")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl PublicKeyDoc {
    /// The raw key, after checking the algorithm and the encoding.
    pub fn public_key_bytes(&self) -> Result<[u8; PUBLIC_KEY_LEN], CheckpointError> {
        if self.algorithm != SIGNATURE_ALGORITHM {
            return Err(CheckpointError::UnsupportedAlgorithm(
                self.algorithm.clone(),
            ));
        }
        STANDARD
            .decode(&self.public_key)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(CheckpointError::MalformedPublicKey)
    }
}

/// Checks the checkpoint's form (hex hashes, RFC 3339 timestamp, base64 signature) and its
/// signature under `public_key`. It does not check the root against any entries.
pub fn verify_checkpoint(
    checkpoint: &Checkpoint,
    public_key: &[u8; PUBLIC_KEY_LEN],
) -> Result<(), CheckpointError> {
    check_hash_hex("root_hash", &checkpoint.root_hash)?;
    check_hash_hex("head_hash", &checkpoint.head_hash)?;
    chrono::DateTime::parse_from_rfc3339(&checkpoint.timestamp)
        .map_err(|_| CheckpointError::MalformedTimestamp)?;
    let signature = STANDARD
        .decode(&checkpoint.signature)
        .ok()
        .filter(|bytes| bytes.len() == SIGNATURE_LEN)
        .ok_or(CheckpointError::MalformedSignature)?;
    let text = signed_text(
        checkpoint.tree_size,
        &checkpoint.root_hash,
        &checkpoint.head_hash,
        &checkpoint.timestamp,
    );
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(text.as_bytes(), &signature)
        .map_err(|_| CheckpointError::BadSignature)
}

fn check_hash_hex(field: &'static str, text: &str) -> Result<(), CheckpointError> {
    let well_formed = text.len() == HASH_HEX_LEN
        && text
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
    if well_formed {
        Ok(())
    } else {
        Err(CheckpointError::MalformedHash { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const VECTORS: &str = include_str!("../../../shared/vectors/vectors.json");
    const CHECKPOINT_JSON: &str = include_str!("../../../shared/vectors/checkpoint.json");
    const PUBLIC_KEY_JSON: &str = include_str!("../../../shared/vectors/public-key.json");

    fn vectors() -> Value {
        serde_json::from_str(VECTORS).expect("vectors.json parses")
    }

    fn vector_str(name: &str) -> String {
        vectors()[name]
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

    fn vector_checkpoint() -> Checkpoint {
        serde_json::from_value(vectors()["checkpoint"].clone()).expect("checkpoint parses")
    }

    fn hash_from_hex(text: &str) -> Hash {
        hex::decode(text)
            .expect("hex")
            .try_into()
            .expect("32 bytes")
    }

    fn check(checkpoint: &Checkpoint, expected: Result<(), CheckpointError>) {
        let public_key = test_key().public_key_bytes();
        assert_eq!(
            verify_checkpoint(checkpoint, &public_key),
            expected,
            "{checkpoint:?}"
        );
    }

    #[test]
    fn test_seed_gives_the_vector_public_key() {
        let key = test_key();
        assert_eq!(key.public_key_base64(), vector_str("public_key"));
        assert_eq!(
            STANDARD.decode(vector_str("public_key")).expect("base64"),
            key.public_key_bytes()
        );
        let debug = format!("{key:?}");
        assert!(debug.contains(&vector_str("public_key")), "{debug}");
    }

    #[test]
    fn signed_text_matches_the_vector() {
        let checkpoint = vector_checkpoint();
        let text = signed_text(
            checkpoint.tree_size,
            &checkpoint.root_hash,
            &checkpoint.head_hash,
            &checkpoint.timestamp,
        );
        assert_eq!(text, vector_str("checkpoint_signed_text"));
    }

    #[test]
    fn signing_reproduces_the_vector_checkpoint_byte_for_byte() {
        let expected = vector_checkpoint();
        let signed = test_key().sign_checkpoint(
            expected.tree_size,
            &hash_from_hex(&expected.root_hash),
            &hash_from_hex(&expected.head_hash),
            &expected.timestamp,
        );
        assert_eq!(signed, expected);
        let raw = test_key().sign(vector_str("checkpoint_signed_text").as_bytes());
        assert_eq!(STANDARD.encode(raw), expected.signature);
    }

    #[test]
    fn vector_checkpoint_verifies() {
        check(&vector_checkpoint(), Ok(()));
    }

    #[test]
    fn shared_files_parse_and_verify() {
        let checkpoint: Checkpoint =
            serde_json::from_str(CHECKPOINT_JSON).expect("checkpoint.json parses");
        assert_eq!(checkpoint, vector_checkpoint());
        let doc: PublicKeyDoc =
            serde_json::from_str(PUBLIC_KEY_JSON).expect("public-key.json parses");
        assert_eq!(doc, test_key().public_key_doc());
        let public_key = doc.public_key_bytes().expect("well-formed key");
        assert_eq!(verify_checkpoint(&checkpoint, &public_key), Ok(()));
    }

    #[test]
    fn serializes_fields_in_api_order() {
        let json = serde_json::to_string(&vector_checkpoint()).expect("serialize");
        let expected = format!(
            "{{\"tree_size\":8,\"root_hash\":\"{}\",\"head_hash\":\"{}\",\"timestamp\":\"2027-01-01T02:00:01Z\",\"signature\":\"{}\"}}",
            vector_checkpoint().root_hash,
            vector_checkpoint().head_hash,
            vector_checkpoint().signature,
        );
        assert_eq!(json, expected);
        let doc = serde_json::to_string(&test_key().public_key_doc()).expect("serialize");
        assert_eq!(
            doc,
            "{\"algorithm\":\"Ed25519\",\"public_key\":\"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\"}"
        );
    }

    #[test]
    fn every_flipped_signature_byte_is_rejected() {
        let checkpoint = vector_checkpoint();
        let signature = STANDARD.decode(&checkpoint.signature).expect("base64");
        for position in 0..signature.len() {
            let mut flipped = signature.clone();
            flipped[position] ^= 0x01;
            let tampered = Checkpoint {
                signature: STANDARD.encode(&flipped),
                ..checkpoint.clone()
            };
            check(&tampered, Err(CheckpointError::BadSignature));
        }
    }

    #[test]
    fn every_signed_field_is_covered() {
        let original = vector_checkpoint();
        let mut bad_root = original.root_hash.clone().into_bytes();
        bad_root[0] = b'f';
        let mut bad_head = original.head_hash.clone().into_bytes();
        bad_head[63] = b'0';
        let tampered = [
            Checkpoint {
                tree_size: 7,
                ..original.clone()
            },
            Checkpoint {
                root_hash: String::from_utf8(bad_root).expect("ascii"),
                ..original.clone()
            },
            Checkpoint {
                head_hash: String::from_utf8(bad_head).expect("ascii"),
                ..original.clone()
            },
            Checkpoint {
                timestamp: "2027-01-01T02:00:02Z".to_owned(),
                ..original.clone()
            },
        ];
        for checkpoint in &tampered {
            check(checkpoint, Err(CheckpointError::BadSignature));
        }
        let other_key = LedgerKey::from_seed(&[9u8; SEED_LEN]).expect("seed accepted");
        assert_eq!(
            verify_checkpoint(&original, &other_key.public_key_bytes()),
            Err(CheckpointError::BadSignature)
        );
    }

    #[test]
    fn malformed_fields_are_named() {
        let original = vector_checkpoint();
        let with = |edit: fn(&mut Checkpoint)| {
            let mut checkpoint = original.clone();
            edit(&mut checkpoint);
            checkpoint
        };
        let root_error = Err(CheckpointError::MalformedHash { field: "root_hash" });
        check(
            &with(|c| c.root_hash.make_ascii_uppercase()),
            root_error.clone(),
        );
        check(
            &with(|c| {
                c.root_hash.pop();
            }),
            root_error.clone(),
        );
        check(&with(|c| c.root_hash.push('0')), root_error);
        check(
            &with(|c| c.head_hash = "g".repeat(64)),
            Err(CheckpointError::MalformedHash { field: "head_hash" }),
        );
        check(
            &with(|c| c.timestamp = "yesterday".to_owned()),
            Err(CheckpointError::MalformedTimestamp),
        );
        check(
            &with(|c| c.timestamp.push('\n')),
            Err(CheckpointError::MalformedTimestamp),
        );
        check(
            &with(|c| c.signature = c.signature.trim_end_matches('=').to_owned()),
            Err(CheckpointError::MalformedSignature),
        );
        check(
            &with(|c| c.signature = STANDARD.encode([0u8; 63])),
            Err(CheckpointError::MalformedSignature),
        );
        check(
            &with(|c| c.signature = c.signature.replace('+', "-")),
            Err(CheckpointError::MalformedSignature),
        );
    }

    #[test]
    fn public_key_doc_is_checked() {
        let check_doc = |algorithm: &str, public_key: &str, expected| {
            let doc = PublicKeyDoc {
                algorithm: algorithm.to_owned(),
                public_key: public_key.to_owned(),
            };
            assert_eq!(doc.public_key_bytes(), expected);
        };
        let key = test_key();
        check_doc(
            "Ed25519",
            &key.public_key_base64(),
            Ok(key.public_key_bytes()),
        );
        check_doc(
            "ed25519",
            &key.public_key_base64(),
            Err(CheckpointError::UnsupportedAlgorithm("ed25519".to_owned())),
        );
        check_doc(
            "Ed25519",
            &STANDARD.encode([1u8; 31]),
            Err(CheckpointError::MalformedPublicKey),
        );
        check_doc(
            "Ed25519",
            "not base64!",
            Err(CheckpointError::MalformedPublicKey),
        );
    }

    #[test]
    fn generated_seeds_make_working_keys() {
        let random = SystemRandom::new();
        let seed = LedgerKey::generate_seed(&random).expect("random");
        let other = LedgerKey::generate_seed(&random).expect("random");
        assert_ne!(seed, other);
        let key = LedgerKey::from_seed(&seed).expect("seed accepted");
        let checkpoint = key.sign_checkpoint(0, &[0u8; 32], &[0u8; 32], "2026-01-01T00:00:00Z");
        assert_eq!(
            verify_checkpoint(&checkpoint, &key.public_key_bytes()),
            Ok(())
        );
    }
}

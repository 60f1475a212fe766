//! Journal entries exactly as API.md "Audit" defines them: the exported JSON line, the
//! RFC 8785 canonical form that is hashed, the SHA-256 chain, and the posting rules each
//! entry kind must obey.

use crate::account::AccountId;
use crate::jcs;
use crate::merkle::Hash;
use crate::money::Fen;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Domain separation prefix of the entry hash (API.md "Audit").
pub const ENTRY_HASH_PREFIX: &[u8] = b"ledger-entry-v1\n";
/// `prev_hash` of seq 0.
pub const ZERO_HASH: Hash = [0u8; 32];
/// Most refs an entry may carry, and the longest key or value.
pub const REFS_MAX: usize = 8;
pub const REF_LEN_MAX: usize = 128;
/// Most postings in one entry.
pub const POSTINGS_MAX: usize = 16;
/// Longest exported line we accept when reading one back (a generous bound over the above).
pub const LINE_LEN_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Issue,
    Charge,
    Refund,
    Offset,
    Forfeit,
    Payout,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Issue => "issue",
            EntryKind::Charge => "charge",
            EntryKind::Refund => "refund",
            EntryKind::Offset => "offset",
            EntryKind::Forfeit => "forfeit",
            EntryKind::Payout => "payout",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Debit,
    Credit,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Debit => "debit",
            Side::Credit => "credit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub account: AccountId,
    pub side: Side,
    pub amount: Fen,
}

impl Posting {
    pub fn debit(account: AccountId, amount: Fen) -> Posting {
        Posting {
            account,
            side: Side::Debit,
            amount,
        }
    }
    pub fn credit(account: AccountId, amount: Fen) -> Posting {
        Posting {
            account,
            side: Side::Credit,
            amount,
        }
    }
}

/// One journal entry. `hash` always equals `compute_hash()` for entries made by `seal`;
/// entries read from outside are checked with `verify_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub at: String,
    pub kind: EntryKind,
    pub postings: Vec<Posting>,
    pub refs: BTreeMap<String, String>,
    pub prev_hash: Hash,
    pub hash: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("not a journal entry: {0}")]
    Malformed(String),
    #[error("entry does not balance: debits {debits}, credits {credits}")]
    Unbalanced { debits: Fen, credits: Fen },
    #[error("posting amount must be positive: {0}")]
    NonPositiveAmount(Fen),
    #[error("{kind} entry may not {side} account {account}")]
    ForbiddenPosting {
        kind: EntryKind,
        side: &'static str,
        account: String,
    },
    #[error("{kind} entry mixes fiscal years")]
    MixedYears { kind: EntryKind },
    #[error("entry needs at least one debit and one credit, at most {POSTINGS_MAX} postings")]
    PostingCount,
    #[error("refs: at most {REFS_MAX} entries of at most {REF_LEN_MAX} bytes each")]
    RefsTooLarge,
    #[error("amounts overflow")]
    Overflow,
    #[error("hash mismatch: entry says {stated}, content hashes to {computed}")]
    HashMismatch { stated: String, computed: String },
}

/// The exported form, field order as API.md shows it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryWire {
    seq: u64,
    at: String,
    kind: EntryKind,
    postings: Vec<PostingWire>,
    refs: BTreeMap<String, String>,
    prev_hash: String,
    hash: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostingWire {
    account: String,
    side: Side,
    amount: Fen,
}

fn parse_hash(text: &str, field: &str) -> Result<Hash, JournalError> {
    let mut out = [0u8; 32];
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(JournalError::Malformed(format!(
            "{field} must be 64 lowercase hex digits"
        )));
    }
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| JournalError::Malformed(format!("{field} must be 64 lowercase hex digits")))?;
    Ok(out)
}

impl Entry {
    /// Builds an entry and stamps its hash. Checks nothing: callers run `check_rules` first.
    pub fn seal(
        seq: u64,
        at: String,
        kind: EntryKind,
        postings: Vec<Posting>,
        refs: BTreeMap<String, String>,
        prev_hash: Hash,
    ) -> Entry {
        let mut entry = Entry {
            seq,
            at,
            kind,
            postings,
            refs,
            prev_hash,
            hash: ZERO_HASH,
        };
        entry.hash = entry.compute_hash();
        entry
    }

    /// The RFC 8785 canonical JSON of the entry without its `hash` field.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let postings: Vec<serde_json::Value> = self
            .postings
            .iter()
            .map(|p| {
                serde_json::json!({
                    "account": p.account.to_string(),
                    "side": p.side.as_str(),
                    "amount": p.amount.to_string(),
                })
            })
            .collect();
        let value = serde_json::json!({
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind.as_str(),
            "postings": postings,
            "refs": self.refs,
            "prev_hash": hex::encode(self.prev_hash),
        });
        let mut out = Vec::with_capacity(512);
        jcs::canonicalize_into(&value, &mut out)
            .expect("an entry holds only strings and a u64 seq, which JCS always encodes");
        out
    }

    /// SHA-256 of `ledger-entry-v1\n` followed by the canonical bytes.
    pub fn compute_hash(&self) -> Hash {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(ENTRY_HASH_PREFIX);
        ctx.update(&self.canonical_bytes());
        let digest = ctx.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    pub fn verify_hash(&self) -> Result<(), JournalError> {
        let computed = self.compute_hash();
        if computed == self.hash {
            Ok(())
        } else {
            Err(JournalError::HashMismatch {
                stated: hex::encode(self.hash),
                computed: hex::encode(computed),
            })
        }
    }

    /// The exported JSON line (without the trailing newline).
    pub fn to_line(&self) -> Vec<u8> {
        let wire = EntryWire {
            seq: self.seq,
            at: self.at.clone(),
            kind: self.kind,
            postings: self
                .postings
                .iter()
                .map(|p| PostingWire {
                    account: p.account.to_string(),
                    side: p.side,
                    amount: p.amount,
                })
                .collect(),
            refs: self.refs.clone(),
            prev_hash: hex::encode(self.prev_hash),
            hash: hex::encode(self.hash),
        };
        serde_json::to_vec(&wire).expect("serialising owned strings and integers cannot fail")
    }

    /// Parses one exported line. Checks the form (account names, amounts, hex), not the hash
    /// or the posting rules.
    pub fn parse_line(line: &[u8]) -> Result<Entry, JournalError> {
        if line.len() > LINE_LEN_MAX {
            return Err(JournalError::Malformed(format!(
                "line longer than {LINE_LEN_MAX} bytes"
            )));
        }
        let wire: EntryWire =
            serde_json::from_slice(line).map_err(|e| JournalError::Malformed(e.to_string()))?;
        let postings = wire
            .postings
            .into_iter()
            .map(|p| {
                let account = p
                    .account
                    .parse()
                    .map_err(|e: crate::account::AccountError| {
                        JournalError::Malformed(e.to_string())
                    })?;
                Ok(Posting {
                    account,
                    side: p.side,
                    amount: p.amount,
                })
            })
            .collect::<Result<Vec<_>, JournalError>>()?;
        crate::fiscal::parse_timestamp(&wire.at)
            .map_err(|e| JournalError::Malformed(e.to_string()))?;
        Ok(Entry {
            seq: wire.seq,
            at: wire.at,
            kind: wire.kind,
            postings,
            refs: wire.refs,
            prev_hash: parse_hash(&wire.prev_hash, "prev_hash")?,
            hash: parse_hash(&wire.hash, "hash")?,
        })
    }

    /// The rules every entry obeys: positive amounts, debits = credits, bounded refs, and
    /// for each kind only the accounts API.md allows on each side, within one fiscal year.
    pub fn check_rules(&self) -> Result<(), JournalError> {
        if self.refs.len() > REFS_MAX
            || self
                .refs
                .iter()
                .any(|(k, v)| k.len() > REF_LEN_MAX || v.len() > REF_LEN_MAX)
        {
            return Err(JournalError::RefsTooLarge);
        }
        let debits = self
            .postings
            .iter()
            .filter(|p| p.side == Side::Debit)
            .count();
        let credits = self.postings.len() - debits;
        if debits == 0 || credits == 0 || self.postings.len() > POSTINGS_MAX {
            return Err(JournalError::PostingCount);
        }
        let (mut debit_sum, mut credit_sum) = (Fen::ZERO, Fen::ZERO);
        for p in &self.postings {
            if !p.amount.is_positive() {
                return Err(JournalError::NonPositiveAmount(p.amount));
            }
            let sum = match p.side {
                Side::Debit => &mut debit_sum,
                Side::Credit => &mut credit_sum,
            };
            *sum = sum.checked_add(p.amount).ok_or(JournalError::Overflow)?;
            if !allowed(self.kind, p.side, &p.account) {
                return Err(JournalError::ForbiddenPosting {
                    kind: self.kind,
                    side: p.side.as_str(),
                    account: p.account.to_string(),
                });
            }
        }
        if debit_sum != credit_sum {
            return Err(JournalError::Unbalanced {
                debits: debit_sum,
                credits: credit_sum,
            });
        }
        let mut years = self.postings.iter().filter_map(|p| p.account.year());
        if let Some(first) = years.next() {
            if years.any(|y| y != first) {
                return Err(JournalError::MixedYears { kind: self.kind });
            }
        }
        Ok(())
    }
}

/// Which account may stand on which side of each entry kind (API.md "Audit", Accounts).
fn allowed(kind: EntryKind, side: Side, account: &AccountId) -> bool {
    use AccountId as A;
    match (kind, side) {
        (EntryKind::Issue, Side::Debit) => matches!(account, A::Funding { .. }),
        (EntryKind::Issue, Side::Credit) => matches!(account, A::Elder { .. }),
        (EntryKind::Charge | EntryKind::Offset, Side::Debit) => matches!(account, A::Elder { .. }),
        (EntryKind::Charge | EntryKind::Offset, Side::Credit) => {
            matches!(account, A::ProviderPayable { .. })
        }
        (EntryKind::Refund, Side::Debit) => matches!(account, A::ProviderPayable { .. }),
        (EntryKind::Refund, Side::Credit) => matches!(account, A::Elder { .. }),
        (EntryKind::Payout, Side::Debit) => matches!(account, A::ProviderPayable { .. }),
        (EntryKind::Payout, Side::Credit) => matches!(account, A::Settled { .. }),
        (EntryKind::Forfeit, Side::Debit) => matches!(account, A::Elder { .. }),
        (EntryKind::Forfeit, Side::Credit) => matches!(account, A::Forfeit { .. }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOURNAL: &str = include_str!("../../../shared/vectors/journal.jsonl");

    fn vector_entries() -> Vec<Entry> {
        JOURNAL
            .lines()
            .map(|l| Entry::parse_line(l.as_bytes()).expect("vector line parses"))
            .collect()
    }

    #[test]
    fn vectors_hash_chain_and_rules_reproduce() {
        let entries = vector_entries();
        assert_eq!(entries.len(), 8);
        let mut prev = ZERO_HASH;
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.seq, i as u64);
            assert_eq!(e.prev_hash, prev, "seq {i}");
            e.verify_hash()
                .unwrap_or_else(|err| panic!("seq {i}: {err}"));
            e.check_rules()
                .unwrap_or_else(|err| panic!("seq {i}: {err}"));
            let resealed = Entry::seal(
                e.seq,
                e.at.clone(),
                e.kind,
                e.postings.clone(),
                e.refs.clone(),
                e.prev_hash,
            );
            assert_eq!(resealed.hash, e.hash, "seq {i}");
            prev = e.hash;
        }
    }

    #[test]
    fn canonical_text_of_seq_2_matches_vector() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../../shared/vectors/vectors.json")).unwrap();
        let expected = vectors["jcs_of_entry_2_without_hash"].as_str().unwrap();
        let entry = &vector_entries()[2];
        assert_eq!(
            String::from_utf8(entry.canonical_bytes()).unwrap(),
            expected
        );
    }

    #[test]
    fn line_round_trips() {
        for e in vector_entries() {
            let again = Entry::parse_line(&e.to_line()).unwrap();
            assert_eq!(again, e);
        }
    }

    #[test]
    fn a_flipped_byte_is_caught() {
        let line = JOURNAL.lines().nth(2).unwrap();
        let tampered = line.replace("58.50", "58.51");
        let e = Entry::parse_line(tampered.as_bytes()).unwrap();
        assert!(matches!(
            e.verify_hash(),
            Err(JournalError::HashMismatch { .. })
        ));
    }

    fn rule(kind: EntryKind, postings: Vec<Posting>) -> Result<(), JournalError> {
        Entry::seal(
            0,
            "2026-01-01T00:00:00Z".into(),
            kind,
            postings,
            BTreeMap::new(),
            ZERO_HASH,
        )
        .check_rules()
    }

    #[test]
    fn posting_rules_are_enforced() {
        let y = "2026".parse().unwrap();
        let elder = AccountId::elder("E1", y).unwrap();
        let payable = AccountId::provider_payable("P1").unwrap();
        let funding = AccountId::funding("130102", y).unwrap();
        let f = |n| Fen::from_fen(n);
        assert!(rule(
            EntryKind::Charge,
            vec![
                Posting::debit(elder.clone(), f(100)),
                Posting::credit(payable.clone(), f(100))
            ]
        )
        .is_ok());
        assert!(matches!(
            rule(
                EntryKind::Charge,
                vec![
                    Posting::debit(elder.clone(), f(100)),
                    Posting::credit(payable.clone(), f(99))
                ]
            ),
            Err(JournalError::Unbalanced { .. })
        ));
        assert!(matches!(
            rule(
                EntryKind::Refund,
                vec![
                    Posting::debit(elder.clone(), f(100)),
                    Posting::credit(payable.clone(), f(100))
                ]
            ),
            Err(JournalError::ForbiddenPosting { .. })
        ));
        assert!(matches!(
            rule(
                EntryKind::Issue,
                vec![
                    Posting::debit(funding.clone(), f(0)),
                    Posting::credit(elder.clone(), f(0))
                ]
            ),
            Err(JournalError::NonPositiveAmount(_))
        ));
        let other_year = AccountId::elder("E1", "2027".parse().unwrap()).unwrap();
        assert!(matches!(
            rule(
                EntryKind::Issue,
                vec![
                    Posting::debit(funding, f(5)),
                    Posting::credit(other_year, f(5))
                ]
            ),
            Err(JournalError::MixedYears { .. })
        ));
        assert!(matches!(
            rule(EntryKind::Charge, vec![]),
            Err(JournalError::PostingCount)
        ));
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            "{}",
            "not json",
            r#"{"seq":0,"at":"x","kind":"issue","postings":[],"refs":{},"prev_hash":"00","hash":"00"}"#,
        ] {
            assert!(Entry::parse_line(bad.as_bytes()).is_err(), "{bad}");
        }
        let line = JOURNAL.lines().next().unwrap();
        let extra = line.replacen("{\"seq\"", "{\"extra\":1,\"seq\"", 1);
        assert!(Entry::parse_line(extra.as_bytes()).is_err());
        let upper = line.replace("3351bd3a", "3351BD3A");
        assert!(Entry::parse_line(upper.as_bytes()).is_err());
    }
}

//! How hold and idempotency records are stored: a compact binary form, one per version of a
//! record, in the store's `k/` chunks (and so in every log frame and the data file).
//!
//! Why not JSON: these records were most of what a group commit writes. Measured over a
//! bench run (64 submitters, hold+post pairs), a log frame was 40 % entry lines, 38 %
//! idempotency records (~200 B of JSON each, two hex SHA-256 strings among them) and 22 %
//! hold records (~230 B, written again in full at the post); the device's write rate is
//! what a commit waits on. The binary form keeps hashes as their 32 bytes and numbers as
//! 8 bytes: a posted hold 78 bytes (JSON 200), a post's idempotency record 115 (JSON 271).
//!
//! Form: one version byte (`BINARY_V1`), then the fields in declaration order: strings as
//! u32 BE length + UTF-8, integers as 8 bytes BE, options as 0/1 + value, a hash as its 32
//! bytes. A record whose hex strings would not come back byte-equal from 32 bytes (never
//! the case for what the engine writes: lowercase hex of SHA-256) is stored as JSON
//! instead. JSON — what stores written before this form hold — starts with `{` and is
//! still read.

use crate::command::{EntryRef, HoldState, Outcome};
use crate::engine::{HoldRecord, IdempotencyRecord};
use crate::fiscal::Year;
use crate::money::Fen;

/// First byte of the binary form (JSON starts with `{`).
const BINARY_V1: u8 = 1;

pub fn encode_hold(hold: &HoldRecord) -> Vec<u8> {
    let mut out = Writer(Vec::with_capacity(96));
    out.0.push(BINARY_V1);
    out.str(&hold.hold_id);
    out.str(&hold.elder_id);
    out.i64(i64::from(hold.year.get()));
    out.i64(hold.amount.fen());
    out.i64(hold.created_at);
    out.i64(hold.expires_at);
    out.0.push(state_code(hold.state));
    out.opt_str(hold.provider_id.as_deref());
    out.opt_u64(hold.charge_seq);
    out.opt_u64(hold.refund_seq);
    out.0
}

pub fn decode_hold(bytes: &[u8]) -> Result<HoldRecord, String> {
    if bytes.first() == Some(&b'{') {
        return serde_json::from_slice(bytes).map_err(|e| format!("a hold record: {e}"));
    }
    let mut r = Reader::new(bytes)?;
    let hold = HoldRecord {
        hold_id: r.string()?,
        elder_id: r.string()?,
        year: {
            let year = r.i64()?;
            i32::try_from(year)
                .ok()
                .and_then(|y| Year::new(y).ok())
                .ok_or_else(|| format!("a hold record: year {year}"))?
        },
        amount: Fen::from_fen(r.i64()?),
        created_at: r.i64()?,
        expires_at: r.i64()?,
        state: state_of(r.byte()?)?,
        provider_id: r.opt_string()?,
        charge_seq: r.opt_u64()?,
        refund_seq: r.opt_u64()?,
    };
    r.end()?;
    Ok(hold)
}

pub fn encode_idempotency(record: &IdempotencyRecord) -> Vec<u8> {
    let outcome = &record.outcome;
    let (Some(fingerprint), Some(entry_hash)) = (
        hash_bytes(&record.fingerprint),
        match &outcome.entry {
            Some(entry) => hash_bytes(&entry.hash).map(Some),
            None => Some(None),
        },
    ) else {
        return serde_json::to_vec(record).expect("records of owned strings and integers");
    };
    let mut out = Writer(Vec::with_capacity(128));
    out.0.push(BINARY_V1);
    out.0.extend_from_slice(&fingerprint);
    out.str(&outcome.at);
    match (&outcome.entry, entry_hash) {
        (Some(entry), Some(hash)) => {
            out.0.push(1);
            out.u64(entry.seq);
            out.0.extend_from_slice(&hash);
        }
        _ => out.0.push(0),
    }
    out.i64(outcome.amount.fen());
    out.opt_str(outcome.expires_at.as_deref());
    out.u64(outcome.voided_holds);
    out.0
}

pub fn decode_idempotency(bytes: &[u8]) -> Result<IdempotencyRecord, String> {
    if bytes.first() == Some(&b'{') {
        return serde_json::from_slice(bytes).map_err(|e| format!("an idempotency record: {e}"));
    }
    let mut r = Reader::new(bytes)?;
    let fingerprint = hex::encode(r.hash()?);
    let at = r.string()?;
    let entry = match r.byte()? {
        0 => None,
        1 => Some(EntryRef {
            seq: r.u64()?,
            hash: hex::encode(r.hash()?),
        }),
        other => return Err(format!("an idempotency record: entry flag {other}")),
    };
    let record = IdempotencyRecord {
        fingerprint,
        outcome: Outcome {
            at,
            entry,
            amount: Fen::from_fen(r.i64()?),
            expires_at: r.opt_string()?,
            voided_holds: r.u64()?,
        },
    };
    r.end()?;
    Ok(record)
}

/// The 32 bytes of a lowercase hex SHA-256 (64 characters of `0-9a-f`, which `hex::encode`
/// gives back exactly), else `None`.
fn hash_bytes(text: &str) -> Option<[u8; 32]> {
    let lowercase_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if text.len() != 64 || !text.bytes().all(lowercase_hex) {
        return None;
    }
    let mut bytes = [0; 32];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

fn state_code(state: HoldState) -> u8 {
    match state {
        HoldState::Pending => 0,
        HoldState::Posted => 1,
        HoldState::Voided => 2,
        HoldState::Expired => 3,
        HoldState::Refunded => 4,
    }
}

fn state_of(code: u8) -> Result<HoldState, String> {
    Ok(match code {
        0 => HoldState::Pending,
        1 => HoldState::Posted,
        2 => HoldState::Voided,
        3 => HoldState::Expired,
        4 => HoldState::Refunded,
        other => return Err(format!("a hold record: state {other}")),
    })
}

struct Writer(Vec<u8>);

impl Writer {
    fn str(&mut self, s: &str) {
        let len = u32::try_from(s.len()).expect("ids and times are far below 4 GiB");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn i64(&mut self, n: i64) {
        self.0.extend_from_slice(&n.to_be_bytes());
    }
    fn u64(&mut self, n: u64) {
        self.0.extend_from_slice(&n.to_be_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.0.push(1);
                self.str(s);
            }
            None => self.0.push(0),
        }
    }
    fn opt_u64(&mut self, n: Option<u64>) {
        match n {
            Some(n) => {
                self.0.push(1);
                self.u64(n);
            }
            None => self.0.push(0),
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Result<Reader<'a>, String> {
        match data.first() {
            Some(&BINARY_V1) => Ok(Reader { data, at: 1 }),
            Some(other) => Err(format!("a stored record of unknown form {other}")),
            None => Err("an empty stored record".into()),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let bytes = self
            .at
            .checked_add(n)
            .and_then(|end| self.data.get(self.at..end))
            .ok_or("a stored record is cut short")?;
        self.at += n;
        Ok(bytes)
    }
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, String> {
        let bytes: [u8; 8] = self.take(8)?.try_into().expect("took 8 bytes");
        Ok(u64::from_be_bytes(bytes))
    }
    fn i64(&mut self) -> Result<i64, String> {
        let bytes: [u8; 8] = self.take(8)?.try_into().expect("took 8 bytes");
        Ok(i64::from_be_bytes(bytes))
    }
    fn hash(&mut self) -> Result<[u8; 32], String> {
        Ok(self.take(32)?.try_into().expect("took 32 bytes"))
    }
    fn string(&mut self) -> Result<String, String> {
        let len: [u8; 4] = self.take(4)?.try_into().expect("took 4 bytes");
        let len = usize::try_from(u32::from_be_bytes(len)).map_err(|e| e.to_string())?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a stored string is not UTF-8".into())
    }
    fn opt_string(&mut self) -> Result<Option<String>, String> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            other => Err(format!("an option flag {other}")),
        }
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, String> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.u64().map(Some),
            other => Err(format!("an option flag {other}")),
        }
    }
    fn end(&self) -> Result<(), String> {
        if self.at == self.data.len() {
            Ok(())
        } else {
            Err(format!(
                "a stored record has {} bytes too many",
                self.data.len() - self.at
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The largest amount the wire form takes (API.md: 1,000,000,000,000.00 yuan).
    const AMOUNT_MAX_FEN: i64 = 100_000_000_000_000;

    fn hold_strategy() -> impl Strategy<Value = HoldRecord> {
        (
            ("[A-Za-z0-9_-]{1,40}", "[A-Z0-9]{1,20}", 2000i32..2100),
            (0..=AMOUNT_MAX_FEN, any::<i64>(), any::<i64>(), 0u8..5),
            (
                proptest::option::of("[A-Za-z0-9中]{0,12}"),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
            ),
        )
            .prop_map(
                |((hold_id, elder_id, year), (amount, created, expires, state), rest)| HoldRecord {
                    hold_id,
                    elder_id,
                    year: Year::new(year).unwrap(),
                    amount: Fen::from_fen(amount),
                    created_at: created,
                    expires_at: expires,
                    state: state_of(state).unwrap(),
                    provider_id: rest.0,
                    charge_seq: rest.1,
                    refund_seq: rest.2,
                },
            )
    }

    fn idempotency_strategy() -> impl Strategy<Value = IdempotencyRecord> {
        (
            // Mostly lowercase hex hashes (binary), sometimes anything (JSON).
            prop_oneof![4 => "[0-9a-f]{64}", 1 => "[0-9a-fA-F]{0,70}"],
            "[0-9T:Z+-]{0,30}",
            proptest::option::of((any::<u64>(), "[0-9a-f]{64}")),
            0..=AMOUNT_MAX_FEN,
            proptest::option::of("[0-9T:Z+-]{0,30}"),
            any::<u64>(),
        )
            .prop_map(
                |(fingerprint, at, entry, amount, expires_at, voided_holds)| IdempotencyRecord {
                    fingerprint,
                    outcome: Outcome {
                        at,
                        entry: entry.map(|(seq, hash)| EntryRef { seq, hash }),
                        amount: Fen::from_fen(amount),
                        expires_at,
                        voided_holds,
                    },
                },
            )
    }

    proptest! {
        #[test]
        fn holds_round_trip(hold in hold_strategy()) {
            let bytes = encode_hold(&hold);
            prop_assert_eq!(bytes[0], BINARY_V1);
            prop_assert_eq!(decode_hold(&bytes).unwrap(), hold.clone());
            // What older stores hold reads the same.
            let json = serde_json::to_vec(&hold).unwrap();
            prop_assert_eq!(decode_hold(&json).unwrap(), hold);
        }

        #[test]
        fn idempotency_records_round_trip(record in idempotency_strategy()) {
            let bytes = encode_idempotency(&record);
            prop_assert_eq!(decode_idempotency(&bytes).unwrap(), record.clone());
            let json = serde_json::to_vec(&record).unwrap();
            prop_assert_eq!(decode_idempotency(&json).unwrap(), record);
        }

        #[test]
        fn cut_or_lengthened_records_are_refused(hold in hold_strategy(), cut in 1usize..40) {
            let bytes = encode_hold(&hold);
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode_hold(&bytes[..bytes.len() - cut]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(decode_hold(&longer).is_err());
        }
    }

    #[test]
    fn a_posted_charge_s_records_are_under_half_their_json() {
        let hold = HoldRecord {
            hold_id: "H12x3456".into(),
            elder_id: "E00012345".into(),
            year: Year::new(2026).unwrap(),
            amount: Fen::from_fen(5_850),
            created_at: 1_773_540_000,
            expires_at: 1_773_540_600,
            state: HoldState::Posted,
            provider_id: Some("P012".into()),
            charge_seq: Some(123_456),
            refund_seq: None,
        };
        let record = IdempotencyRecord {
            fingerprint: "ab".repeat(32),
            outcome: Outcome {
                at: "2026-03-15T02:00:00Z".into(),
                entry: Some(EntryRef {
                    seq: 123_456,
                    hash: "cd".repeat(32),
                }),
                amount: Fen::from_fen(5_850),
                expires_at: None,
                voided_holds: 0,
            },
        };
        let (hold_bin, hold_json) = (encode_hold(&hold), serde_json::to_vec(&hold).unwrap());
        let (key_bin, key_json) = (
            encode_idempotency(&record),
            serde_json::to_vec(&record).unwrap(),
        );
        assert_eq!((hold_bin.len(), hold_json.len()), (78, 200));
        assert_eq!((key_bin.len(), key_json.len()), (115, 271));
        assert_eq!(decode_hold(&hold_bin).unwrap(), hold);
        assert_eq!(decode_idempotency(&key_bin).unwrap(), record);
    }
}

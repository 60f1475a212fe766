//! The offline auditor: verifies an exported journal (or a stopped store) against a signed
//! checkpoint — seq order, hash chain, every entry hash, the Merkle root, the signature —
//! and replays the balances: every entry balanced and within its kind's posting rules, no
//! elder account ever below zero, and after a year's forfeit nothing moves in that year and
//! every elder account of that year is exactly zero.

use crate::account::AccountId;
use crate::checkpoint::{verify_checkpoint, Checkpoint};
use crate::fiscal::Year;
use crate::journal::{Entry, EntryKind, Side, ZERO_HASH};
use crate::merkle::{Hash, MerkleTree};
use crate::money::Fen;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;

/// Lines handed to the parallel hashing stage at a time.
const CHUNK_LINES: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The first bad entry, by the seq it has (or should have had).
    #[error("seq {seq}: {reason}")]
    Entry { seq: u64, reason: String },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{0}")]
    Input(String),
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub entries: u64,
    pub tree_size: u64,
    pub root_hash: Hash,
    pub head_hash: Hash,
    pub accounts: usize,
    /// Count and total amount per entry kind.
    pub by_kind: BTreeMap<&'static str, (u64, Fen)>,
    pub closed_years: Vec<Year>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok: {} entries, tree_size {}, root {}, head {}, {} accounts",
            self.entries,
            self.tree_size,
            hex::encode(self.root_hash),
            hex::encode(self.head_hash),
            self.accounts
        )?;
        for (kind, (count, total)) in &self.by_kind {
            write!(f, ", {kind} {count}/{total}")?;
        }
        Ok(())
    }
}

/// Replays entries into credit-normal balances and checks the ledger's rules.
#[derive(Debug, Default)]
struct Replay {
    balances: HashMap<AccountId, i64>,
    forfeited: HashSet<AccountId>,
    /// Closed years with the seq of their first forfeit.
    closed: BTreeMap<Year, u64>,
    by_kind: BTreeMap<&'static str, (u64, Fen)>,
}

impl Replay {
    fn apply(&mut self, entry: &Entry) -> Result<(), String> {
        entry.check_rules().map_err(|e| e.to_string())?;
        if entry.kind == EntryKind::Forfeit {
            for p in &entry.postings {
                if let Some(year) = p.account.year() {
                    self.closed.entry(year).or_insert(entry.seq);
                }
            }
        }
        let mut moved = Fen::ZERO;
        for p in &entry.postings {
            if p.account.is_elder() {
                if self.forfeited.contains(&p.account) {
                    return Err(format!("{} moves after its forfeit", p.account));
                }
                if let Some(year) = p.account.year() {
                    if entry.kind != EntryKind::Forfeit && self.closed.contains_key(&year) {
                        return Err(format!("{} moves after year {year} was closed", p.account));
                    }
                }
            }
            let delta = match p.side {
                Side::Credit => p.amount.fen(),
                Side::Debit => -p.amount.fen(),
            };
            if p.side == Side::Debit {
                moved = moved.checked_add(p.amount).ok_or("amount overflow")?;
            }
            let balance = self.balances.entry(p.account.clone()).or_insert(0);
            *balance = balance.checked_add(delta).ok_or("balance overflow")?;
            if p.account.is_elder() && *balance < 0 {
                return Err(format!(
                    "{} goes below zero ({})",
                    p.account,
                    Fen::from_fen(*balance)
                ));
            }
        }
        if entry.kind == EntryKind::Forfeit {
            for p in entry.postings.iter().filter(|p| p.account.is_elder()) {
                if self.balances.get(&p.account) != Some(&0) {
                    return Err(format!("forfeit leaves {} non-zero", p.account));
                }
                self.forfeited.insert(p.account.clone());
            }
        }
        let kind = self.by_kind.entry(entry.kind.as_str()).or_default();
        kind.0 += 1;
        kind.1 = kind.1.checked_add(moved).ok_or("amount overflow")?;
        Ok(())
    }

    /// After the last entry: every elder account of a closed year is zero.
    fn finish(&self) -> Result<(), AuditError> {
        for (account, balance) in &self.balances {
            if let (true, Some(year)) = (account.is_elder(), account.year()) {
                if let Some(seq) = self.closed.get(&year) {
                    if *balance != 0 {
                        return Err(AuditError::Entry {
                            seq: *seq,
                            reason: format!(
                                "year {year} closed here but {account} still holds {}",
                                Fen::from_fen(*balance)
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Streams entries through the checks; lines may come in any chunking.
struct Verifier {
    next_seq: u64,
    prev_hash: Hash,
    /// The tree size whose head hash we keep, and that hash once seen.
    head_size: u64,
    head_hash: Hash,
    merkle: MerkleTree,
    replay: Replay,
}

impl Verifier {
    fn new(head_size: u64) -> Verifier {
        Verifier {
            next_seq: 0,
            prev_hash: ZERO_HASH,
            head_size,
            head_hash: ZERO_HASH,
            merkle: MerkleTree::new(),
            replay: Replay::default(),
        }
    }

    /// Checks a chunk of lines: parsing and hashing in parallel, then the chain and the
    /// replay in order.
    fn push_chunk(&mut self, lines: &[Vec<u8>]) -> Result<(), AuditError> {
        let parsed = parse_and_hash_parallel(lines);
        for result in parsed {
            let expected = self.next_seq;
            let bad = |reason: String| AuditError::Entry {
                seq: expected,
                reason,
            };
            let entry = result.map_err(|e| bad(format!("line {}: {e}", expected + 1)))?;
            self.check_entry(&entry)?;
        }
        Ok(())
    }

    fn check_entry(&mut self, entry: &Entry) -> Result<(), AuditError> {
        let seq = self.next_seq;
        let bad = |reason: String| AuditError::Entry { seq, reason };
        if entry.seq != seq {
            return Err(bad(format!("out of order: line says seq {}", entry.seq)));
        }
        if entry.prev_hash != self.prev_hash {
            return Err(bad(
                "prev_hash does not match the previous entry's hash".into()
            ));
        }
        self.replay.apply(entry).map_err(bad)?;
        self.merkle.push(entry.hash);
        self.prev_hash = entry.hash;
        self.next_seq += 1;
        if self.next_seq == self.head_size {
            self.head_hash = entry.hash;
        }
        Ok(())
    }

    fn summary(&self, tree_size: u64, root_hash: Hash, head_hash: Hash) -> Summary {
        Summary {
            entries: self.next_seq,
            tree_size,
            root_hash,
            head_hash,
            accounts: self.replay.balances.len(),
            by_kind: self.replay.by_kind.clone(),
            closed_years: self.replay.closed.keys().copied().collect(),
        }
    }
}

/// Parses lines and checks each entry's own hash, on every core.
fn parse_and_hash_parallel(lines: &[Vec<u8>]) -> Vec<Result<Entry, String>> {
    let check = |line: &Vec<u8>| -> Result<Entry, String> {
        let entry = Entry::parse_line(line).map_err(|e| e.to_string())?;
        entry.verify_hash().map_err(|e| e.to_string())?;
        Ok(entry)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || lines.len() < 256 {
        return lines.iter().map(check).collect();
    }
    let per = lines.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(per)
            .map(|part| scope.spawn(move || part.iter().map(check).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a hashing thread panicked"))
            .collect()
    })
}

/// Verifies an export (`GET /v1/audit/entries`, all pages) against a checkpoint and the
/// ledger's public key.
pub fn verify_export(
    entries: impl BufRead,
    checkpoint: &Checkpoint,
    public_key: &[u8; 32],
) -> Result<Summary, AuditError> {
    verify_checkpoint(checkpoint, public_key).map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    let size = checkpoint.tree_size;
    let mut verifier = Verifier::new(size);
    let mut chunk: Vec<Vec<u8>> = Vec::with_capacity(CHUNK_LINES);
    let mut blank_seen_at: Option<u64> = None;
    for line in entries.split(b'\n') {
        let line = line.map_err(|e| AuditError::Input(e.to_string()))?;
        let line = line.strip_suffix(b"\r").map(<[u8]>::to_vec).unwrap_or(line);
        if line.is_empty() {
            blank_seen_at.get_or_insert(verifier.next_seq + chunk.len() as u64);
            continue;
        }
        if let Some(seq) = blank_seen_at {
            return Err(AuditError::Entry {
                seq,
                reason: "blank line inside the export".into(),
            });
        }
        chunk.push(line);
        if chunk.len() == CHUNK_LINES {
            verifier.push_chunk(&chunk)?;
            chunk.clear();
        }
    }
    verifier.push_chunk(&chunk)?;
    if verifier.next_seq < size {
        return Err(AuditError::Checkpoint(format!(
            "checkpoint covers {size} entries but the export has {}",
            verifier.next_seq
        )));
    }
    let root = verifier
        .merkle
        .root_at(size)
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    if hex::encode(root) != checkpoint.root_hash {
        return Err(AuditError::Checkpoint(format!(
            "root_hash {} does not match the entries' Merkle root {} at tree_size {size}",
            checkpoint.root_hash,
            hex::encode(root)
        )));
    }
    if hex::encode(verifier.head_hash) != checkpoint.head_hash {
        return Err(AuditError::Checkpoint(format!(
            "head_hash {} is not the hash of entry {}",
            checkpoint.head_hash,
            size.saturating_sub(1)
        )));
    }
    verifier.replay.finish()?;
    Ok(verifier.summary(size, root, verifier.head_hash))
}

/// Verifies a stopped store's journal in full and checks its key signs a checkpoint of it
/// that verifies.
pub fn verify_store(dir: &std::path::Path) -> Result<Summary, AuditError> {
    let (store, key) =
        crate::storage::Store::open(dir).map_err(|e| AuditError::Input(e.to_string()))?;
    let mut verifier = Verifier::new(0);
    let mut chunk: Vec<Vec<u8>> = Vec::with_capacity(CHUNK_LINES);
    for item in store.entries_from(0) {
        let (_, line) = item.map_err(|e| AuditError::Input(e.to_string()))?;
        chunk.push(line);
        if chunk.len() == CHUNK_LINES {
            verifier.push_chunk(&chunk)?;
            chunk.clear();
        }
    }
    verifier.push_chunk(&chunk)?;
    verifier.replay.finish()?;
    let size = verifier.next_seq;
    let root = verifier.merkle.root();
    let checkpoint = key.sign_checkpoint(size, &root, &verifier.prev_hash, "1970-01-01T00:00:00Z");
    verify_checkpoint(&checkpoint, &key.public_key_bytes())
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    Ok(verifier.summary(size, root, verifier.prev_hash))
}

//! The offline auditor: verifies an exported journal (or a stopped store) against a signed
//! checkpoint — seq order, hash chain, every entry hash, the Merkle root, the signature —
//! and replays the balances: every entry balanced and within its kind's posting rules, no
//! elder account ever below zero, and after a year's forfeit nothing moves in that year and
//! every elder account of that year is exactly zero.

//!
//! Work is split in two stages. Workers on every core take blocks of whole lines and do what
//! needs no other entry: parse, recompute the entry hash, hash the Merkle leaf, check the
//! posting rules. This thread then takes the blocks in order and does what needs the order:
//! seq, chain, Merkle root, balances. A block's results hold no per-entry heap data (account
//! names sit in one string per block), so the in-order stage neither frees nor hashes more
//! than it must.

use crate::account::AccountClass;
use crate::checkpoint::{verify_checkpoint, Checkpoint};
use crate::fiscal::Year;
use crate::journal::{
    Entry, EntryKind, EntryView, HashText, Posting, PostingView, Side, ZERO_HASH,
};
use crate::merkle::{Hash, MerkleFrontier};
use crate::money::Fen;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::ops::Range;

/// Bytes of an export read at a time and handed to one worker (whole lines only).
#[cfg(not(test))]
const BLOCK_BYTES: usize = 1 << 20;
/// Small blocks in unit tests, so that a short export spans many more blocks than are in
/// flight at once.
#[cfg(test)]
const BLOCK_BYTES: usize = 16 << 10;
/// Lines of a store handed to one worker at a time.
const STORE_BLOCK_LINES: usize = 2048;
/// Blocks read ahead of the in-order checks, per worker; bounds the verifier's memory.
const BLOCKS_IN_FLIGHT_PER_WORKER: usize = 3;
/// A guess at the typical exported line, to size a block's results once.
const LINE_BYTES_TYPICAL: usize = 256;

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

/// What the replay keeps per account.
#[derive(Debug, Clone, Copy, Default)]
struct AccountState {
    /// Credit-normal balance, in fen.
    balance: i64,
    /// For an elder account, its year.
    elder_year: Option<Year>,
    /// An elder account after its year's forfeit.
    forfeited: bool,
}

/// Replays entries into credit-normal balances and checks the ledger's rules.
#[derive(Debug, Default)]
struct Replay {
    /// Each account's place in `accounts`, by name.
    index: HashMap<Box<str>, usize>,
    accounts: Vec<AccountState>,
    /// Closed years with the seq of their first forfeit.
    closed: BTreeMap<Year, u64>,
    by_kind: BTreeMap<&'static str, (u64, Fen)>,
}

impl Replay {
    /// The places in `accounts` of a block's postings' accounts, in order, into `places`;
    /// an account is entered when first seen. Done for the whole block before any of its
    /// entries is replayed, so that the name lookups, which mostly miss the cache, overlap
    /// instead of each waiting for the one before. (An account entered here for an entry
    /// after a bad one is never reported: verification stops at the bad one.)
    fn enter(&mut self, postings: &[CheckedPosting], names: &str, places: &mut Vec<usize>) {
        places.clear();
        places.extend(postings.iter().map(|p| {
            let name = &names[p.name.clone()];
            match self.index.get(name) {
                Some(&place) => place,
                None => {
                    self.accounts.push(AccountState {
                        elder_year: p.year.filter(|_| p.is_elder),
                        ..AccountState::default()
                    });
                    self.index.insert(name.into(), self.accounts.len() - 1);
                    self.accounts.len() - 1
                }
            }
        }));
    }

    /// Replays one entry whose posting rules already hold; `names` holds the accounts'
    /// names that `postings` point into, and `places` their places (`enter`).
    fn apply(
        &mut self,
        seq: u64,
        kind: EntryKind,
        postings: &[CheckedPosting],
        places: &[usize],
        names: &str,
    ) -> Result<(), String> {
        let name = |p: &CheckedPosting| &names[p.name.clone()];
        if kind == EntryKind::Forfeit {
            for p in postings {
                if let Some(year) = p.year {
                    self.closed.entry(year).or_insert(seq);
                }
            }
        }
        let mut moved = Fen::ZERO;
        for (p, &place) in postings.iter().zip(places) {
            let account = &mut self.accounts[place];
            if p.is_elder {
                if account.forfeited {
                    return Err(format!("{} moves after its forfeit", name(p)));
                }
                if let Some(year) = p.year {
                    if kind != EntryKind::Forfeit && self.closed.contains_key(&year) {
                        return Err(format!("{} moves after year {year} was closed", name(p)));
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
            account.balance = account
                .balance
                .checked_add(delta)
                .ok_or("balance overflow")?;
            if p.is_elder && account.balance < 0 {
                return Err(format!(
                    "{} goes below zero ({})",
                    name(p),
                    Fen::from_fen(account.balance)
                ));
            }
        }
        if kind == EntryKind::Forfeit {
            for (p, &place) in postings.iter().zip(places).filter(|(p, _)| p.is_elder) {
                let account = &mut self.accounts[place];
                if account.balance != 0 {
                    return Err(format!("forfeit leaves {} non-zero", name(p)));
                }
                account.forfeited = true;
            }
        }
        let by_kind = self.by_kind.entry(kind.as_str()).or_default();
        by_kind.0 += 1;
        by_kind.1 = by_kind.1.checked_add(moved).ok_or("amount overflow")?;
        Ok(())
    }

    /// After the last entry: every elder account of a closed year is zero. Of several that
    /// are not, the one named is of the year closed first, and of that year the account
    /// seen first, whatever the map's order.
    fn finish(&self) -> Result<(), AuditError> {
        // (closing seq, place, name, year) of the one to name.
        let mut first: Option<(u64, usize, &str, Year)> = None;
        for (name, &place) in &self.index {
            let account = &self.accounts[place];
            let Some(year) = account.elder_year else {
                continue;
            };
            if let Some(&seq) = self.closed.get(&year) {
                if account.balance != 0 && first.is_none_or(|(s, p, ..)| (seq, place) < (s, p)) {
                    first = Some((seq, place, name, year));
                }
            }
        }
        match first {
            None => Ok(()),
            Some((seq, place, name, year)) => Err(AuditError::Entry {
                seq,
                reason: format!(
                    "year {year} closed here but {name} still holds {}",
                    Fen::from_fen(self.accounts[place].balance)
                ),
            }),
        }
    }
}

/// One posting after the parallel stage: its account as a range of the block's `names`,
/// and what the replay needs to know of the account.
#[derive(Debug, PartialEq)]
struct CheckedPosting {
    name: Range<usize>,
    is_elder: bool,
    year: Option<Year>,
    side: Side,
    amount: Fen,
}

/// One entry after the checks that need no other entry: parsed, its own hash recomputed,
/// its Merkle leaf hashed, its posting rules checked.
#[derive(Debug, PartialEq)]
struct Checked {
    seq: u64,
    kind: EntryKind,
    prev_hash: Hash,
    hash: Hash,
    leaf: Hash,
    /// Where its postings sit in the block's `postings` when the rules hold; else what the
    /// rules say, reported in order after the chain checks.
    postings: Result<Range<usize>, String>,
}

/// One line of input after the parallel stage.
#[derive(Debug, PartialEq)]
enum Line {
    /// An empty line of an export (allowed only at the end).
    Blank,
    Entry(Checked),
    /// Not an entry, or its hash is wrong.
    Bad(String),
}

/// A block's results, in line order, with the postings and names they point into.
/// Results and export buffers go round again once checked (see `Verifier::run`).
struct CheckedBlock {
    lines: Vec<Line>,
    postings: Vec<CheckedPosting>,
    names: String,
    /// The export bytes these lines came from, to be read into again (empty for a store).
    spent: Vec<u8>,
}

impl CheckedBlock {
    /// `spare` emptied, or new results sized for `lines` lines.
    fn reuse(spare: Option<CheckedBlock>, lines: usize) -> CheckedBlock {
        match spare {
            Some(mut block) => {
                block.lines.clear();
                block.postings.clear();
                block.names.clear();
                block.spent = Vec::new();
                block
            }
            None => CheckedBlock {
                lines: Vec::with_capacity(lines),
                postings: Vec::with_capacity(lines * 2),
                names: String::with_capacity(lines * 48),
                spent: Vec::new(),
            },
        }
    }

    fn push_blank(&mut self) {
        self.lines.push(Line::Blank);
    }

    /// Parses a line, recomputes its hash (building the preimage in `scratch`) and checks
    /// its rules. Lines as the ledger writes them are read in place; others through serde.
    fn push_line(&mut self, line: &[u8], scratch: &mut Vec<u8>) {
        match EntryView::parse_exact(line) {
            Some(view) => self.push_view(&view, scratch),
            None => self.push_by_serde(line),
        }
    }

    /// A line read in place: its hash recomputed, its rules checked.
    fn push_view(&mut self, view: &EntryView, scratch: &mut Vec<u8>) {
        let result = view.verify_hash_with(scratch).map(|()| {
            let postings = self.push_postings(
                view.postings().iter().copied(),
                view.account_names(),
                view.check_rules(),
            );
            Checked::new(view.seq, view.kind, view.prev_hash, view.hash, postings)
        });
        self.push_result(result);
    }

    /// A line not as the ledger writes it, read through serde (or refused).
    fn push_by_serde(&mut self, line: &[u8]) {
        let result = Entry::parse_line(line).and_then(|entry| {
            entry.verify_hash()?;
            let postings = self.push_postings(
                entry.postings.iter().map(Posting::view),
                entry.postings.iter().map(|p| p.account.to_string()),
                entry.check_rules(),
            );
            Ok(Checked::new(
                entry.seq,
                entry.kind,
                entry.prev_hash,
                entry.hash,
                postings,
            ))
        });
        self.push_result(result);
    }

    fn push_result(&mut self, result: Result<Checked, crate::journal::JournalError>) {
        self.lines.push(match result {
            Ok(checked) => Line::Entry(checked),
            Err(e) => Line::Bad(e.to_string()),
        });
    }

    /// Every line of `text` (an export block without its last newline). An entry as the
    /// ledger writes it is read where it starts, with no scan for its end, and the next
    /// line's `prev_hash` is matched against its hash's text; anything else is split off
    /// at its newline and read as `push_lines` reads it.
    fn push_text(&mut self, text: &str, scratch: &mut Vec<u8>) {
        let mut rest = text;
        let mut view = EntryView::empty();
        let mut previous: Option<HashText> = None;
        loop {
            // What follows an entry read in place: `Some(rest)` after its newline, `None`
            // at the end; anything else makes its line one for `push_first_line`.
            let next = view.parse_exact_into(rest, previous).and_then(|length| {
                let after = &rest[length..];
                match after.strip_prefix('\n') {
                    Some(next) => Some(Some(next)),
                    None => match after.strip_prefix("\r\n") {
                        Some(next) => Some(Some(next)),
                        None => after.is_empty().then_some(None),
                    },
                }
            });
            match next {
                Some(next) => {
                    self.push_view(&view, scratch);
                    previous = Some(view.hash_text());
                    match next {
                        Some(next) => rest = next,
                        None => return,
                    }
                }
                None => {
                    previous = None;
                    match self.push_first_line(rest.as_bytes(), scratch) {
                        // After a newline: a character boundary.
                        Some(after) => rest = &rest[rest.len() - after.len()..],
                        None => return,
                    }
                }
            }
        }
    }

    /// Every line of `bytes` (an export block without its last newline), each split off
    /// at its newline.
    fn push_lines(&mut self, bytes: &[u8], scratch: &mut Vec<u8>) {
        let mut rest = bytes;
        while let Some(after) = self.push_first_line(rest, scratch) {
            rest = after;
        }
    }

    /// The first line of `bytes` (up to a newline, less a `\r` before it, or all of them);
    /// what follows its newline, if it has one.
    fn push_first_line<'b>(&mut self, bytes: &'b [u8], scratch: &mut Vec<u8>) -> Option<&'b [u8]> {
        let (line, after) = match find_newline(bytes) {
            Some(end) => (&bytes[..end], Some(&bytes[end + 1..])),
            None => (bytes, None),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.push_blank();
        } else {
            self.push_line(line, scratch);
        }
        after
    }

    /// An entry's postings, when its rules hold; `names` are their account names, in order
    /// (a line read in place has them as text, which is cheaper to copy than to print).
    fn push_postings(
        &mut self,
        postings: impl Iterator<Item = PostingView>,
        names: impl Iterator<Item = impl AsRef<str>>,
        rules: Result<(), crate::journal::JournalError>,
    ) -> Result<Range<usize>, String> {
        rules.map_err(|e| e.to_string()).map(|()| {
            let start = self.postings.len();
            for (p, name) in postings.zip(names) {
                let name_start = self.names.len();
                self.names.push_str(name.as_ref());
                self.postings.push(CheckedPosting {
                    name: name_start..self.names.len(),
                    is_elder: p.class == AccountClass::Elder,
                    year: p.year,
                    side: p.side,
                    amount: p.amount,
                });
            }
            start..self.postings.len()
        })
    }
}

impl Checked {
    /// An entry's results, its Merkle leaf hashed here.
    fn new(
        seq: u64,
        kind: EntryKind,
        prev_hash: Hash,
        hash: Hash,
        postings: Result<Range<usize>, String>,
    ) -> Checked {
        Checked {
            seq,
            kind,
            prev_hash,
            hash,
            leaf: crate::merkle::leaf_hash(&hash),
            postings,
        }
    }
}

/// Work for one worker: whole lines, in input order.
enum Block {
    /// Bytes of an export: lines ending in `\n` (the last one may lack it at the end of
    /// the file), each possibly ending in `\r\n`.
    Export(Vec<u8>),
    /// Entry values read from a store.
    Store(Vec<Vec<u8>>),
}

impl Block {
    /// Checks the block's lines into `into` (a spent block's results, emptied here, or a
    /// new one). An export's bytes come back in the results' `spent`, for the next read.
    fn check(self, into: Option<CheckedBlock>) -> CheckedBlock {
        let mut scratch = Vec::new();
        match self {
            Block::Export(bytes) => {
                let mut checked = CheckedBlock::reuse(into, bytes.len() / LINE_BYTES_TYPICAL);
                let body: &[u8] = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                // Checked as UTF-8 once for the block, not once per line; a block that is
                // not UTF-8 is read line by line, each line refused or read on its own.
                match std::str::from_utf8(body) {
                    Ok(text) => checked.push_text(text, &mut scratch),
                    Err(_) => checked.push_lines(body, &mut scratch),
                }
                checked.spent = bytes;
                checked
            }
            Block::Store(lines) => {
                let mut checked = CheckedBlock::reuse(into, lines.len());
                for line in &lines {
                    checked.push_line(line, &mut scratch);
                }
                checked
            }
        }
    }
}

/// The position of the first `\n`, looking at eight bytes at a time (lines are long).
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const NEWLINES: u64 = u64::from_le_bytes([b'\n'; 8]);
    let mut position = 0;
    for chunk in bytes.chunks_exact(8) {
        let word =
            u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8) gives 8 bytes")) ^ NEWLINES;
        // A high bit set for a zero byte: exact for the first one, the lowest (a borrow
        // only runs upward, past it).
        let zeros = word.wrapping_sub(ONES) & !word & HIGHS;
        if zeros != 0 {
            return Some(position + zeros.trailing_zeros() as usize / 8);
        }
        position += 8;
    }
    bytes[position..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|offset| position + offset)
}

/// Reads an export in blocks of whole lines of about `BLOCK_BYTES`.
struct ExportBlocks<R> {
    reader: R,
    /// The start of a line that the last block cut off.
    carry: Vec<u8>,
}

impl<R: Read> ExportBlocks<R> {
    /// The next block, read into a spent block's buffer when there is one: a fresh
    /// megabyte each time costs the kernel more than the copy of the file itself.
    fn next_block(&mut self, spent: &mut Vec<Vec<u8>>) -> Result<Option<Block>, AuditError> {
        let mut bytes = spent.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(&self.carry);
        self.carry.clear();
        // Bytes before this offset are known to hold no newline.
        let mut searched = 0;
        loop {
            let target = bytes.len().max(searched) + BLOCK_BYTES;
            if !self.fill(&mut bytes, target)? {
                return Ok((!bytes.is_empty()).then_some(Block::Export(bytes)));
            }
            // Cut after the last newline; a line longer than a block reads on.
            if let Some(end) = bytes[searched..].iter().rposition(|&b| b == b'\n') {
                let end = searched + end + 1;
                self.carry.extend_from_slice(&bytes[end..]);
                bytes.truncate(end);
                return Ok(Some(Block::Export(bytes)));
            }
            searched = bytes.len();
        }
    }

    /// Reads until `bytes` holds `target` bytes; false if the input ended first. Reads go
    /// straight into `bytes`: a buffer in between would only copy every byte once more.
    fn fill(&mut self, bytes: &mut Vec<u8>, target: usize) -> Result<bool, AuditError> {
        bytes.reserve(target.saturating_sub(bytes.len()));
        while bytes.len() < target {
            let want = u64::try_from(target - bytes.len()).unwrap_or(u64::MAX);
            let read = (&mut self.reader)
                .take(want)
                .read_to_end(bytes)
                .map_err(|e| AuditError::Input(e.to_string()))?;
            if read == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The verifier's ends of the channels to and from the workers.
struct Channels {
    blocks: crossbeam_channel::Sender<(u64, Block)>,
    checked: crossbeam_channel::Receiver<(u64, CheckedBlock)>,
    spares: crossbeam_channel::Sender<CheckedBlock>,
}

/// Streams entries through the checks, in seq order.
struct Verifier {
    next_seq: u64,
    prev_hash: Hash,
    /// The tree size whose root and head hash we keep, and that hash once seen.
    head_size: u64,
    head_hash: Hash,
    /// Leaves up to `head_size` (or all, for a store).
    merkle: MerkleFrontier,
    replay: Replay,
    /// For an export: the seq the first blank line stood before.
    blank_seen_at: Option<u64>,
    /// A block's accounts' places in the replay, kept to be filled again.
    places: Vec<usize>,
}

impl Verifier {
    fn new(head_size: u64) -> Verifier {
        Verifier {
            next_seq: 0,
            prev_hash: ZERO_HASH,
            head_size,
            head_hash: ZERO_HASH,
            merkle: MerkleFrontier::new(),
            replay: Replay::default(),
            blank_seen_at: None,
            places: Vec::new(),
        }
    }

    /// Runs `blocks` through the parallel stage on every core and the in-order checks on
    /// this thread, keeping a bounded number of blocks in flight. Stops at the first bad
    /// entry, in seq order. `next_block` is given the buffers of checked blocks to read into.
    fn run(
        &mut self,
        mut next_block: impl FnMut(&mut Vec<Vec<u8>>) -> Result<Option<Block>, AuditError>,
    ) -> Result<(), AuditError> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let in_flight_max = workers * BLOCKS_IN_FLIGHT_PER_WORKER;
        let (block_sender, block_receiver) =
            crossbeam_channel::bounded::<(u64, Block)>(in_flight_max);
        let (checked_sender, checked_receiver) =
            crossbeam_channel::unbounded::<(u64, CheckedBlock)>();
        // Checked blocks' results go back to the workers to be filled again.
        let (spare_sender, spare_receiver) = crossbeam_channel::unbounded::<CheckedBlock>();
        // Everything moves into the scope, so that returning from it drops `block_sender`
        // and the workers, their channel closed, finish their block and stop.
        std::thread::scope(move |scope| {
            for _ in 0..workers {
                let blocks = block_receiver.clone();
                let checked = checked_sender.clone();
                let spares = spare_receiver.clone();
                scope.spawn(move || {
                    for (index, block) in blocks {
                        let results = block.check(spares.try_recv().ok());
                        if checked.send((index, results)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(checked_sender);
            let channels = Channels {
                blocks: block_sender,
                checked: checked_receiver,
                spares: spare_sender,
            };
            self.feed_and_check(&mut next_block, &channels, in_flight_max)
        })
    }

    fn feed_and_check(
        &mut self,
        next_block: &mut impl FnMut(&mut Vec<Vec<u8>>) -> Result<Option<Block>, AuditError>,
        channels: &Channels,
        in_flight_max: usize,
    ) -> Result<(), AuditError> {
        let mut sent = 0u64;
        let mut checked = 0u64;
        let mut input_done = false;
        // Blocks that came back before an earlier one.
        let mut waiting: BTreeMap<u64, CheckedBlock> = BTreeMap::new();
        // Export buffers of checked blocks, to read the next blocks into.
        let mut spent: Vec<Vec<u8>> = Vec::new();
        loop {
            while !input_done && sent - checked < in_flight_max as u64 {
                match next_block(&mut spent)? {
                    Some(block) => {
                        channels
                            .blocks
                            .send((sent, block))
                            .expect("the workers outlive this loop");
                        sent += 1;
                    }
                    None => input_done = true,
                }
            }
            if checked == sent {
                return Ok(());
            }
            let mut block = match waiting.remove(&checked) {
                Some(block) => block,
                None => loop {
                    let (index, block) = channels
                        .checked
                        .recv()
                        .expect("a worker answers every block sent");
                    if index == checked {
                        break block;
                    }
                    waiting.insert(index, block);
                },
            };
            self.check_block(&block)?;
            checked += 1;
            // A store's blocks have no buffer to give back.
            if block.spent.capacity() > 0 {
                spent.push(std::mem::take(&mut block.spent));
            }
            channels
                .spares
                .send(block)
                .expect("the scope keeps a receiver of spares while this loop runs");
        }
    }

    fn check_block(&mut self, block: &CheckedBlock) -> Result<(), AuditError> {
        let mut places = std::mem::take(&mut self.places);
        self.replay
            .enter(&block.postings, &block.names, &mut places);
        for line in &block.lines {
            let seq = self.next_seq;
            let entry = match (line, self.blank_seen_at) {
                (Line::Blank, _) => {
                    self.blank_seen_at.get_or_insert(seq);
                    continue;
                }
                (_, Some(blank_seq)) => {
                    return Err(AuditError::Entry {
                        seq: blank_seq,
                        reason: "blank line inside the export".into(),
                    })
                }
                (Line::Bad(reason), None) => {
                    return Err(AuditError::Entry {
                        seq,
                        reason: format!("line {}: {reason}", seq + 1),
                    })
                }
                (Line::Entry(entry), None) => entry,
            };
            self.check_entry(entry, block, &places)
                .map_err(|reason| AuditError::Entry { seq, reason })?;
        }
        self.places = places;
        Ok(())
    }

    /// `places` are the places of the block's postings' accounts (`Replay::enter`).
    fn check_entry(
        &mut self,
        entry: &Checked,
        block: &CheckedBlock,
        places: &[usize],
    ) -> Result<(), String> {
        if entry.seq != self.next_seq {
            return Err(format!("out of order: line says seq {}", entry.seq));
        }
        if entry.prev_hash != self.prev_hash {
            return Err("prev_hash does not match the previous entry's hash".into());
        }
        let postings = entry.postings.clone()?;
        self.replay.apply(
            entry.seq,
            entry.kind,
            &block.postings[postings.clone()],
            &places[postings],
            &block.names,
        )?;
        if self.next_seq < self.head_size {
            self.merkle.push_leaf(entry.leaf);
        }
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
            accounts: self.replay.accounts.len(),
            by_kind: self.replay.by_kind.clone(),
            closed_years: self.replay.closed.keys().copied().collect(),
        }
    }
}

/// Verifies an export (`GET /v1/audit/entries`, all pages) against a checkpoint and the
/// ledger's public key. `entries` is read in blocks of about a megabyte, so it needs no
/// buffering of its own.
pub fn verify_export(
    entries: impl Read,
    checkpoint: &Checkpoint,
    public_key: &[u8; 32],
) -> Result<Summary, AuditError> {
    verify_checkpoint(checkpoint, public_key).map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    let size = checkpoint.tree_size;
    let mut verifier = Verifier::new(size);
    let mut export = ExportBlocks {
        reader: entries,
        carry: Vec::new(),
    };
    verifier.run(|spent| export.next_block(spent))?;
    if verifier.next_seq < size {
        return Err(AuditError::Checkpoint(format!(
            "checkpoint covers {size} entries but the export has {}",
            verifier.next_seq
        )));
    }
    let root = verifier.merkle.root();
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
    let mut verifier = Verifier::new(u64::MAX);
    let mut entries = store.entries_from(0);
    verifier.run(|_| {
        let mut lines = Vec::with_capacity(STORE_BLOCK_LINES);
        for item in entries.by_ref().take(STORE_BLOCK_LINES) {
            let (_, line) = item.map_err(|e| AuditError::Input(e.to_string()))?;
            lines.push(line);
        }
        Ok((!lines.is_empty()).then_some(Block::Store(lines)))
    })?;
    verifier.replay.finish()?;
    let size = verifier.next_seq;
    let root = verifier.merkle.root();
    let checkpoint = key.sign_checkpoint(size, &root, &verifier.prev_hash, "1970-01-01T00:00:00Z");
    verify_checkpoint(&checkpoint, &key.public_key_bytes())
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    Ok(verifier.summary(size, root, verifier.prev_hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountId;
    use crate::checkpoint::{LedgerKey, PublicKeyDoc};
    use crate::journal::Posting;
    use crate::merkle::MerkleTree;

    const JOURNAL: &str = include_str!("../../../shared/vectors/journal.jsonl");
    const CHECKPOINT: &str = include_str!("../../../shared/vectors/checkpoint.json");
    const PUBLIC_KEY: &str = include_str!("../../../shared/vectors/public-key.json");

    fn vector_key() -> [u8; 32] {
        let doc: PublicKeyDoc = serde_json::from_str(PUBLIC_KEY).unwrap();
        doc.public_key_bytes().unwrap()
    }

    fn vector_checkpoint() -> Checkpoint {
        serde_json::from_str(CHECKPOINT).unwrap()
    }

    fn check_vectors(export: &[u8], expected: Result<u64, (u64, &str)>) {
        let result = verify_export(export, &vector_checkpoint(), &vector_key());
        match (result, expected) {
            (Ok(summary), Ok(entries)) => assert_eq!(summary.entries, entries),
            (Err(AuditError::Entry { seq, reason }), Err((bad_seq, words))) => {
                assert_eq!(seq, bad_seq, "{reason}");
                assert!(reason.contains(words), "{reason:?} lacks {words:?}");
            }
            (other, expected) => panic!("got {other:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn vectors_verify_with_any_line_ending() {
        check_vectors(JOURNAL.as_bytes(), Ok(8));
        check_vectors(JOURNAL.trim_end().as_bytes(), Ok(8));
        check_vectors(JOURNAL.replace('\n', "\r\n").as_bytes(), Ok(8));
        check_vectors(format!("{JOURNAL}\n\n").as_bytes(), Ok(8));
    }

    #[test]
    fn vector_errors_name_the_first_bad_seq() {
        let lines: Vec<&str> = JOURNAL.lines().collect();
        let join = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();

        let tampered = JOURNAL.replace("\"58.50\"", "\"58.51\"");
        check_vectors(tampered.as_bytes(), Err((2, "line 3: hash mismatch")));

        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        check_vectors(join(&swapped).as_bytes(), Err((3, "out of order")));

        let mut blank = lines.clone();
        blank.insert(5, "");
        check_vectors(
            join(&blank).as_bytes(),
            Err((5, "blank line inside the export")),
        );

        let mut garbage = lines.clone();
        garbage[6] = "{\"seq\":6}";
        check_vectors(
            join(&garbage).as_bytes(),
            Err((6, "line 7: not a journal entry")),
        );

        let short = join(&lines[..7]);
        assert!(matches!(
            verify_export(short.as_bytes(), &vector_checkpoint(), &vector_key()),
            Err(AuditError::Checkpoint(_))
        ));
    }

    /// Every byte of the vectors' export, changed to one of a few bytes that matter to
    /// JSON, to line ends and to UTF-8 (each of them near a line's end, in turn
    /// elsewhere), is caught at the seq of the line that holds it (a line's newline
    /// belongs to it). The one change that is not is whitespace for the file's last
    /// newline: the lines are whole, and serde reads the last one as before.
    #[test]
    fn any_changed_byte_is_caught_at_its_line() {
        const BYTES: [u8; 10] = [
            0xff, 0x80, b'\n', b'\r', b' ', b'0', b'"', b'\\', b'x', b'}',
        ];
        let export = JOURNAL.as_bytes();
        for at in 0..export.len() {
            let line = export[..at].iter().filter(|&&b| b == b'\n').count() as u64;
            let near_an_end =
                export[at.saturating_sub(2)..(at + 3).min(export.len())].contains(&b'\n');
            let bytes = if near_an_end {
                &BYTES[..]
            } else {
                &BYTES[at % BYTES.len()..][..1]
            };
            for &byte in bytes {
                if export[at] == byte {
                    continue;
                }
                let mut changed = export.to_vec();
                changed[at] = byte;
                match verify_export(&changed[..], &vector_checkpoint(), &vector_key()) {
                    Err(AuditError::Entry { seq, .. }) => {
                        assert_eq!(seq, line, "byte {at} set to {byte:#04x}")
                    }
                    Ok(_) => assert!(
                        at == export.len() - 1 && byte.is_ascii_whitespace(),
                        "byte {at} set to {byte:#04x} passed"
                    ),
                    Err(other) => panic!("byte {at} set to {byte:#04x}: {other:?}"),
                }
            }
        }
    }

    /// A valid export of `count` entries (an issue to a new elder every tenth entry, charges
    /// against earlier elders otherwise), its checkpoint at `tree_size` and the public key.
    fn generated_export(count: u64, tree_size: u64) -> (Vec<Entry>, Checkpoint, [u8; 32]) {
        let key = LedgerKey::from_seed(&[9u8; 32]).unwrap();
        let year = "2026".parse().unwrap();
        let elder = |i: u64| AccountId::elder(&format!("E{i}"), year).unwrap();
        let mut entries: Vec<Entry> = Vec::new();
        let mut tree = MerkleTree::new();
        for seq in 0..count {
            let prev = entries.last().map_or(ZERO_HASH, |e| e.hash);
            let (kind, postings) = if seq % 10 == 0 {
                let funding = AccountId::funding("130102", year).unwrap();
                let amount = Fen::from_fen(50_000);
                (
                    EntryKind::Issue,
                    vec![
                        Posting::debit(funding, amount),
                        Posting::credit(elder(seq / 10), amount),
                    ],
                )
            } else {
                let payable = AccountId::provider_payable("P1").unwrap();
                let amount = Fen::from_fen(100);
                (
                    EntryKind::Charge,
                    vec![
                        Posting::debit(elder(seq / 10), amount),
                        Posting::credit(payable, amount),
                    ],
                )
            };
            let refs = BTreeMap::from([("charge".to_string(), format!("C{seq}"))]);
            let entry = Entry::seal(
                seq,
                "2026-01-05T02:30:00Z".into(),
                kind,
                postings,
                refs,
                prev,
            );
            tree.push(entry.hash);
            entries.push(entry);
        }
        let head = entries
            .get(usize::try_from(tree_size).unwrap().wrapping_sub(1))
            .map_or(ZERO_HASH, |e| e.hash);
        let hashes: Vec<Hash> = entries.iter().map(|e| e.hash).collect();
        let root = tree.root_at(tree_size, &hashes).unwrap();
        let checkpoint = key.sign_checkpoint(tree_size, &root, &head, "2026-02-01T00:00:00Z");
        (entries, checkpoint, key.public_key_bytes())
    }

    fn lines_of(entries: &[Entry]) -> Vec<Vec<u8>> {
        entries.iter().map(Entry::to_line).collect()
    }

    fn joined(lines: &[Vec<u8>]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect()
    }

    /// Enough entries for many more blocks than are ever in flight.
    const MANY: u64 = 5_000;

    #[test]
    fn a_long_export_verifies_across_blocks_and_at_a_smaller_tree_size() {
        let (entries, checkpoint, key) = generated_export(MANY, MANY);
        let export = joined(&lines_of(&entries));
        assert!(export.len() > BLOCK_BYTES * 8, "{} bytes", export.len());
        let summary = verify_export(&export[..], &checkpoint, &key).unwrap();
        assert_eq!(summary.entries, MANY);
        assert_eq!(summary.by_kind["issue"].0, MANY / 10);
        assert_eq!(summary.accounts, usize::try_from(MANY / 10).unwrap() + 2);

        let (_, smaller, key) = generated_export(MANY, 1_234);
        let summary = verify_export(&export[..], &smaller, &key).unwrap();
        assert_eq!((summary.entries, summary.tree_size), (MANY, 1_234));
    }

    #[test]
    fn the_first_bad_entry_is_named_whichever_block_it_is_in() {
        let (entries, checkpoint, key) = generated_export(MANY, MANY);
        let lines = lines_of(&entries);
        let check = |lines: &[Vec<u8>], bad_seq: u64, words: &str| match verify_export(
            &joined(lines)[..],
            &checkpoint,
            &key,
        ) {
            Err(AuditError::Entry { seq, reason }) => {
                assert_eq!(seq, bad_seq, "{reason}");
                assert!(reason.contains(words), "{reason:?} lacks {words:?}");
            }
            other => panic!("expected seq {bad_seq}, got {other:?}"),
        };
        for bad in [1, 2_501, 3_101, MANY - 1] {
            let mut tampered = lines.clone();
            let at = usize::try_from(bad).unwrap();
            tampered[at] = String::from_utf8(tampered[at].clone())
                .unwrap()
                .replacen("\"1.00\"", "\"1.01\"", 1)
                .into_bytes();
            check(&tampered, bad, "hash mismatch");
        }
        // A later block fails too, but the earlier bad entry is the one named.
        let mut two_bad = lines.clone();
        two_bad[4_000] = b"not json".to_vec();
        two_bad[2_000] = b"{}".to_vec();
        check(&two_bad, 2_000, "not a journal entry");

        let mut gap = lines.clone();
        gap.remove(1_700);
        check(&gap, 1_700, "out of order");

        let mut blank = lines.clone();
        blank.insert(900, Vec::new());
        check(&blank, 900, "blank line");

        // A line longer than a block is read whole, then refused.
        let mut long = lines.clone();
        long[3_000] = vec![b'x'; BLOCK_BYTES * 2 + 7];
        check(&long, 3_000, "longer than");
    }

    /// An export of the given entries, chained and checkpointed.
    fn chained(specs: Vec<(EntryKind, Vec<Posting>)>) -> (Vec<u8>, Checkpoint, [u8; 32]) {
        let key = LedgerKey::from_seed(&[5u8; 32]).unwrap();
        let mut tree = MerkleTree::new();
        let mut prev = ZERO_HASH;
        let mut export = Vec::new();
        for (seq, (kind, postings)) in (0u64..).zip(specs) {
            let entry = Entry::seal(
                seq,
                "2026-06-01T00:00:00Z".into(),
                kind,
                postings,
                BTreeMap::new(),
                prev,
            );
            tree.push(entry.hash);
            prev = entry.hash;
            export.extend_from_slice(&entry.to_line());
            export.push(b'\n');
        }
        let checkpoint =
            key.sign_checkpoint(tree.len(), &tree.root(), &prev, "2027-01-01T00:00:00Z");
        (export, checkpoint, key.public_key_bytes())
    }

    #[test]
    fn the_replay_names_money_that_breaks_the_rules() {
        let year = "2026".parse().unwrap();
        let elder = |id: &str| AccountId::elder(id, year).unwrap();
        let funding = AccountId::funding("130102", year).unwrap();
        let forfeit = AccountId::forfeit("130102", year).unwrap();
        let payable = AccountId::provider_payable("P1").unwrap();
        let f = Fen::from_fen;
        let issue = |id: &str, fen| {
            (
                EntryKind::Issue,
                vec![
                    Posting::debit(funding.clone(), f(fen)),
                    Posting::credit(elder(id), f(fen)),
                ],
            )
        };
        let charge = |id: &str, fen| {
            (
                EntryKind::Charge,
                vec![
                    Posting::debit(elder(id), f(fen)),
                    Posting::credit(payable.clone(), f(fen)),
                ],
            )
        };
        let forfeit_of = |id: &str, fen| {
            (
                EntryKind::Forfeit,
                vec![
                    Posting::debit(elder(id), f(fen)),
                    Posting::credit(forfeit.clone(), f(fen)),
                ],
            )
        };
        let check = |specs, expected: Result<(), (u64, &str)>| {
            let (export, checkpoint, key) = chained(specs);
            match (verify_export(&export[..], &checkpoint, &key), expected) {
                (Ok(_), Ok(())) => {}
                (Err(AuditError::Entry { seq, reason }), Err((bad_seq, text))) => {
                    assert_eq!((seq, reason.as_str()), (bad_seq, text));
                }
                (other, expected) => panic!("got {other:?}, expected {expected:?}"),
            }
        };
        check(vec![issue("E1", 100), charge("E1", 100)], Ok(()));
        check(
            vec![issue("E1", 100), charge("E1", 200)],
            Err((1, "elder:E1:2026 goes below zero (-1.00)")),
        );
        check(
            vec![issue("E1", 500), forfeit_of("E1", 400)],
            Err((1, "forfeit leaves elder:E1:2026 non-zero")),
        );
        check(
            vec![issue("E1", 500), forfeit_of("E1", 500), charge("E1", 1)],
            Err((2, "elder:E1:2026 moves after its forfeit")),
        );
        check(
            vec![
                issue("E1", 500),
                issue("E2", 300),
                forfeit_of("E1", 500),
                charge("E2", 1),
            ],
            Err((3, "elder:E2:2026 moves after year 2026 was closed")),
        );
        check(
            vec![issue("E1", 500), issue("E2", 300), forfeit_of("E1", 500)],
            Err((
                2,
                "year 2026 closed here but elder:E2:2026 still holds 3.00",
            )),
        );
        check(
            vec![
                issue("E1", 500),
                issue("E2", 300),
                forfeit_of("E1", 500),
                forfeit_of("E2", 300),
            ],
            Ok(()),
        );
    }

    /// Two years closed, each leaving two elder accounts non-zero: the one named is of
    /// the year closed first and, of that year, the account seen first, on every run
    /// (each run's account map has its own random order).
    #[test]
    fn of_several_accounts_left_after_a_close_the_first_is_named() {
        let account = |id: &str, year: &str| AccountId::elder(id, year.parse().unwrap()).unwrap();
        let issue = |id: &str, year: &str, fen| {
            let funding = AccountId::funding("130102", year.parse().unwrap()).unwrap();
            (
                EntryKind::Issue,
                vec![
                    Posting::debit(funding, Fen::from_fen(fen)),
                    Posting::credit(account(id, year), Fen::from_fen(fen)),
                ],
            )
        };
        let forfeit_of = |id: &str, year: &str, fen| {
            let forfeit = AccountId::forfeit("130102", year.parse().unwrap()).unwrap();
            (
                EntryKind::Forfeit,
                vec![
                    Posting::debit(account(id, year), Fen::from_fen(fen)),
                    Posting::credit(forfeit, Fen::from_fen(fen)),
                ],
            )
        };
        let (export, checkpoint, key) = chained(vec![
            issue("E1", "2025", 500),
            issue("E2", "2025", 300),
            issue("E3", "2026", 500),
            issue("E4", "2026", 200),
            issue("E5", "2026", 100),
            issue("E6", "2025", 400),
            forfeit_of("E3", "2026", 500),
            forfeit_of("E1", "2025", 500),
        ]);
        for _ in 0..20 {
            match verify_export(&export[..], &checkpoint, &key) {
                Err(AuditError::Entry { seq, reason }) => assert_eq!(
                    (seq, reason.as_str()),
                    (
                        6,
                        "year 2026 closed here but elder:E4:2026 still holds 2.00"
                    )
                ),
                other => panic!("{other:?}"),
            }
        }
    }

    /// A chain broken where each entry's own hash is right: the entry whose `prev_hash`
    /// is not its predecessor's hash is named, whether that predecessor was read in place
    /// (its hash text at hand) or through serde (written with a space).
    #[test]
    fn a_broken_chain_is_named_at_the_entry_that_breaks_it() {
        let (entries, checkpoint, key) = generated_export(MANY, MANY);
        for (bad, wrong_prev) in [
            (1_000, entries[998].hash),
            (2_501, ZERO_HASH),
            (3_000, {
                let mut off = entries[2_999].hash;
                off[31] ^= 1;
                off
            }),
        ] {
            let at = usize::try_from(bad).unwrap();
            for predecessor_by_serde in [false, true] {
                let mut lines = lines_of(&entries);
                let mut resealed = entries[at].clone();
                resealed.prev_hash = wrong_prev;
                resealed.hash = resealed.compute_hash();
                lines[at] = resealed.to_line();
                if predecessor_by_serde {
                    lines[at - 1] = String::from_utf8(lines[at - 1].clone())
                        .unwrap()
                        .replacen(",\"hash\":", ", \"hash\":", 1)
                        .into_bytes();
                }
                match verify_export(&joined(&lines)[..], &checkpoint, &key) {
                    Err(AuditError::Entry { seq, reason }) => {
                        assert_eq!(seq, bad, "{reason}");
                        assert!(reason.contains("prev_hash does not match"), "{reason}");
                    }
                    other => panic!("seq {bad}: {other:?}"),
                }
            }
        }
    }

    /// An export read a few bytes at a time, in irregular pieces, verifies: lines cut
    /// between reads carry over into buffers that go round again.
    #[test]
    fn an_export_read_in_irregular_pieces_verifies() {
        struct Pieces<'a> {
            rest: &'a [u8],
            next: usize,
        }
        impl Read for Pieces<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                // 1 to 4,001 bytes, in an order with no period near a line's length.
                self.next = (self.next * 7_919 + 13) % 4_001;
                let n = (self.next + 1).min(buf.len()).min(self.rest.len());
                buf[..n].copy_from_slice(&self.rest[..n]);
                self.rest = &self.rest[n..];
                Ok(n)
            }
        }
        let (entries, checkpoint, key) = generated_export(MANY, MANY);
        let export = joined(&lines_of(&entries));
        let reader = Pieces {
            rest: &export,
            next: 0,
        };
        let summary = verify_export(reader, &checkpoint, &key).unwrap();
        assert_eq!(summary.entries, MANY);
    }

    #[test]
    fn a_read_error_is_an_input_error() {
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0.len()).min(4096);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let (entries, checkpoint, key) = generated_export(5_000, 5_000);
        let export = joined(&lines_of(&entries));
        let result = verify_export(Failing(&export[..export.len() / 2]), &checkpoint, &key);
        assert!(
            matches!(result, Err(AuditError::Input(ref e)) if e.contains("disk on fire")),
            "{result:?}"
        );
    }

    proptest::proptest! {
        /// A block read in place (`push_text`) gives what reading it line by line
        /// (`push_lines`, the way before) gives: exact lines, lines only serde reads, CR
        /// LF, blank lines and bytes put in or taken out anywhere.
        #[test]
        fn a_block_read_in_place_reads_as_line_by_line(
            edits in proptest::collection::vec((0..8u8, proptest::prelude::any::<proptest::sample::Index>(), 0..6usize), 1..24),
            final_newline in proptest::prelude::any::<bool>(),
        ) {
            const BYTES: [u8; 6] = [b'\n', b'\r', b' ', b'"', b'}', b'x'];
            let (entries, _, _) = generated_export(24, 24);
            let mut lines = lines_of(&entries);
            for (edit, place, byte) in edits {
                let line = place.index(lines.len());
                let text = &mut lines[line];
                let at = place.index(text.len() + 1);
                match edit {
                    0 => text.insert(at, BYTES[byte]),
                    1 if at < text.len() => { text.remove(at); }
                    2 => text.push(b'\r'),
                    3 => lines.insert(line, Vec::new()),
                    // Read only through serde: a space after the first comma.
                    4 => if let Some(comma) = text.iter().position(|&b| b == b',') {
                        text.insert(comma + 1, b' ');
                    },
                    _ => {}
                }
            }
            let mut bytes = joined(&lines);
            if !final_newline {
                bytes.pop();
            }
            let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            let text = std::str::from_utf8(body).unwrap();
            let (mut in_place, mut by_lines) =
                (CheckedBlock::reuse(None, 24), CheckedBlock::reuse(None, 24));
            in_place.push_text(text, &mut Vec::new());
            by_lines.push_lines(body, &mut Vec::new());
            proptest::prop_assert_eq!(&in_place.lines, &by_lines.lines);
            proptest::prop_assert_eq!(&in_place.postings, &by_lines.postings);
            proptest::prop_assert_eq!(&in_place.names, &by_lines.names);
        }
    }

    #[test]
    fn newline_search_matches_a_byte_scan() {
        let text = b"0123456789abcdef\nxyz\n";
        for start in 0..text.len() {
            let expected = text[start..].iter().position(|&b| b == b'\n');
            assert_eq!(find_newline(&text[start..]), expected, "from {start}");
        }
        assert_eq!(find_newline(b""), None);
        assert_eq!(find_newline(&[0x0b; 20]), None);
    }

    proptest::proptest! {
        /// Bytes that a word-at-a-time search can take for a newline (0x0b after one
        /// borrows, 0x8a shares its low bits), among newlines and others.
        #[test]
        fn newline_search_matches_a_byte_scan_on_near_misses(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'\n', 0x0b, 0x8a, 0x00, 0x09, b'a', 0xff]),
                0..40,
            )
        ) {
            let expected = bytes.iter().position(|&b| b == b'\n');
            proptest::prop_assert_eq!(find_newline(&bytes), expected);
        }
    }
}

//! The double-entry engine: the in-memory state derived from the journal and the holds, and
//! the per-batch overlay (`Tx`) that applies commands to it. Every command validates before
//! it mutates, and a failed command is rolled back from the overlay, so an error writes
//! nothing. The overlay is merged into the state only after its batch is durable, so readers
//! never see money that a crash could take back.

use crate::account::{AccountId, Balance};
use crate::command::{
    Command, CommandError, EntryRef, HoldState, Outcome, Refs, Request, HOLD_ID_LEN_MAX,
    HOLD_TTL_SECS_MAX, IDEMPOTENCY_KEY_LEN_MAX,
};
use crate::fiscal::{format_timestamp, Year};
use crate::journal::{Entry, EntryKind, Posting, Side, REFS_MAX, REF_LEN_MAX, ZERO_HASH};
use crate::merkle::{Hash, MerkleTree};
use crate::money::Fen;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// A hold as stored: its whole life, kept after it stops being pending so that a late
/// confirm gets a precise error and a refund finds its charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub hold_id: String,
    pub elder_id: String,
    pub year: Year,
    pub amount: Fen,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; the hold is expired from this instant on.
    pub expires_at: i64,
    pub state: HoldState,
    pub provider_id: Option<String>,
    pub charge_seq: Option<u64>,
    pub refund_seq: Option<u64>,
}

impl HoldRecord {
    pub fn account(&self) -> AccountId {
        AccountId::Elder {
            elder_id: self.elder_id.clone(),
            year: self.year,
        }
    }

    /// The state as any reader must see it at `now`: a pending hold past its expiry is
    /// expired even before the ledger has written that down.
    pub fn state_at(&self, now: DateTime<Utc>) -> HoldState {
        if self.state == HoldState::Pending && self.expires_at <= now.timestamp() {
            HoldState::Expired
        } else {
            self.state
        }
    }
}

/// What the ledger remembers of an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// Hex SHA-256 of the command's JSON.
    pub fingerprint: String,
    pub outcome: Outcome,
}

/// Reads the engine needs from storage for records it does not keep in memory.
pub trait Lookup {
    fn hold(&self, hold_id: &str) -> Result<Option<HoldRecord>, CommandError>;
    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, CommandError>;
}

/// What moved through one elder account, by entry kind (for balance and report views).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindTotals {
    pub issued: Fen,
    pub charged: Fen,
    pub offset: Fen,
    pub refunded: Fen,
    pub forfeited: Fen,
}

impl KindTotals {
    fn add(&mut self, kind: EntryKind, amount: Fen) {
        let slot = match kind {
            EntryKind::Issue => &mut self.issued,
            EntryKind::Charge => &mut self.charged,
            EntryKind::Offset => &mut self.offset,
            EntryKind::Refund => &mut self.refunded,
            EntryKind::Forfeit => &mut self.forfeited,
            EntryKind::Payout => return,
        };
        *slot = slot
            .checked_add(amount)
            .expect("per-kind totals are bounded by the account's checked postings");
    }
}

/// The live state: balances of every account, the pending holds, closed years, the chain
/// head and the Merkle tree. Rebuilt from storage on open.
#[derive(Debug)]
pub struct State {
    balances: HashMap<AccountId, Balance>,
    elder_totals: HashMap<AccountId, KindTotals>,
    pending: HashMap<String, HoldRecord>,
    expiry: BTreeSet<(i64, String)>,
    pending_by_account: HashMap<AccountId, Vec<String>>,
    closed_years: BTreeSet<Year>,
    next_seq: u64,
    head_hash: Hash,
    merkle: MerkleTree,
    last_time: Option<DateTime<Utc>>,
}

impl Default for State {
    fn default() -> Self {
        State {
            balances: HashMap::new(),
            elder_totals: HashMap::new(),
            pending: HashMap::new(),
            expiry: BTreeSet::new(),
            pending_by_account: HashMap::new(),
            closed_years: BTreeSet::new(),
            next_seq: 0,
            head_hash: ZERO_HASH,
            merkle: MerkleTree::new(),
            last_time: None,
        }
    }
}

/// Applies a posting to a balance with checked arithmetic.
fn post_to(balance: Balance, side: Side, amount: Fen) -> Option<Balance> {
    let mut b = balance;
    match side {
        Side::Debit => b.debits_posted = b.debits_posted.checked_add(amount)?,
        Side::Credit => b.credits_posted = b.credits_posted.checked_add(amount)?,
    }
    Some(b)
}

impl State {
    /// Replays one stored entry (already verified by the caller) into the balances.
    pub fn replay_entry(&mut self, entry: &Entry) {
        assert_eq!(
            entry.seq, self.next_seq,
            "journal seq gap while rebuilding state"
        );
        assert_eq!(
            entry.prev_hash, self.head_hash,
            "journal chain broken at seq {}",
            entry.seq
        );
        for p in &entry.postings {
            let b = self.balances.entry(p.account.clone()).or_default();
            *b = post_to(*b, p.side, p.amount)
                .expect("a stored entry's postings were checked for overflow when written");
        }
        self.count_elder_totals(entry);
        self.next_seq += 1;
        self.head_hash = entry.hash;
        self.merkle.push(entry.hash);
    }

    fn count_elder_totals(&mut self, entry: &Entry) {
        for p in entry.postings.iter().filter(|p| p.account.is_elder()) {
            self.elder_totals
                .entry(p.account.clone())
                .or_default()
                .add(entry.kind, p.amount);
        }
    }

    /// What moved through an elder account, by kind.
    pub fn elder_totals(&self, account: &AccountId) -> KindTotals {
        self.elder_totals.get(account).copied().unwrap_or_default()
    }

    /// Restores a pending hold (on open).
    pub fn restore_hold(&mut self, hold: HoldRecord) {
        if hold.state != HoldState::Pending {
            return;
        }
        let account = hold.account();
        let b = self.balances.entry(account.clone()).or_default();
        b.debits_pending = b
            .debits_pending
            .checked_add(hold.amount)
            .expect("pending holds never exceed posted credit, which fits");
        self.insert_pending(hold);
    }

    pub fn restore_closed_year(&mut self, year: Year) {
        self.closed_years.insert(year);
    }

    pub fn restore_last_time(&mut self, at: DateTime<Utc>) {
        self.last_time = Some(at);
    }

    fn insert_pending(&mut self, hold: HoldRecord) {
        self.expiry.insert((hold.expires_at, hold.hold_id.clone()));
        self.pending_by_account
            .entry(hold.account())
            .or_default()
            .push(hold.hold_id.clone());
        self.pending.insert(hold.hold_id.clone(), hold);
    }

    fn remove_pending(&mut self, hold_id: &str) {
        if let Some(old) = self.pending.remove(hold_id) {
            self.expiry.remove(&(old.expires_at, old.hold_id.clone()));
            let account = old.account();
            if let Some(ids) = self.pending_by_account.get_mut(&account) {
                ids.retain(|id| id != hold_id);
                if ids.is_empty() {
                    self.pending_by_account.remove(&account);
                }
            }
        }
    }

    /// Merges a durable batch into the state.
    pub fn merge(&mut self, delta: Delta) {
        for (account, balance) in delta.balances {
            self.balances.insert(account, balance);
        }
        for (hold_id, hold) in delta.holds {
            self.remove_pending(&hold_id);
            if hold.state == HoldState::Pending {
                self.insert_pending(hold);
            }
        }
        for entry in &delta.entries {
            assert_eq!(entry.seq, self.next_seq, "merged batch out of order");
            self.count_elder_totals(entry);
            self.next_seq += 1;
            self.head_hash = entry.hash;
            self.merkle.push(entry.hash);
        }
        self.closed_years.extend(delta.closed_years);
        self.last_time = Some(delta.now);
    }

    /// An account's balance as readers see it at `now`: pending holds past their expiry
    /// are released at once, whether or not the ledger has written that down yet.
    pub fn balance_at(&self, account: &AccountId, now: DateTime<Utc>) -> Option<Balance> {
        let mut b = *self.balances.get(account)?;
        for id in self.pending_by_account.get(account).into_iter().flatten() {
            if let Some(h) = self.pending.get(id) {
                if h.expires_at <= now.timestamp() {
                    b.debits_pending = b.debits_pending.checked_sub(h.amount)?;
                }
            }
        }
        Some(b)
    }

    pub fn pending_hold(&self, hold_id: &str) -> Option<&HoldRecord> {
        self.pending.get(hold_id)
    }

    pub fn pending_holds(&self) -> impl Iterator<Item = &HoldRecord> {
        self.pending.values()
    }

    pub fn accounts(&self) -> impl Iterator<Item = (&AccountId, &Balance)> {
        self.balances.iter()
    }

    pub fn is_year_closed(&self, year: Year) -> bool {
        self.closed_years.contains(&year)
    }

    pub fn len(&self) -> u64 {
        self.next_seq
    }

    pub fn is_empty(&self) -> bool {
        self.next_seq == 0
    }

    pub fn head_hash(&self) -> Hash {
        self.head_hash
    }

    pub fn merkle(&self) -> &MerkleTree {
        &self.merkle
    }

    pub fn last_time(&self) -> Option<DateTime<Utc>> {
        self.last_time
    }

    /// Whether any pending hold is due at `now` (the writer then runs an expiry batch).
    pub fn has_due_holds(&self, now: DateTime<Utc>) -> bool {
        self.expiry
            .first()
            .is_some_and(|(at, _)| *at <= now.timestamp())
    }
}

/// What a batch changed, merged into `State` once durable.
#[derive(Debug)]
pub struct Delta {
    pub now: DateTime<Utc>,
    pub balances: HashMap<AccountId, Balance>,
    pub holds: HashMap<String, HoldRecord>,
    pub entries: Vec<Entry>,
    pub idempotency: HashMap<String, IdempotencyRecord>,
    pub closed_years: Vec<Year>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.balances.is_empty()
            && self.holds.is_empty()
            && self.entries.is_empty()
            && self.idempotency.is_empty()
            && self.closed_years.is_empty()
    }
}

enum Undo {
    Balance(AccountId, Option<Balance>),
    Hold(String, Option<HoldRecord>),
    Idempotency(String),
    Entry,
    ClosedYear,
}

/// A batch between two `Tx` sessions: the writer keeps applying commands to it while the
/// batch before it is being made durable.
#[derive(Debug)]
pub struct OpenBatch {
    delta: Delta,
    now_text: String,
    next_seq: u64,
    head_hash: Hash,
    start_head_hash: Hash,
}

impl OpenBatch {
    /// The time every command of the batch takes effect at.
    pub fn now(&self) -> DateTime<Utc> {
        self.delta.now
    }

    /// Ends the batch: what it changed.
    pub fn finish(self) -> Delta {
        self.delta
    }
}

/// One batch's overlay over the state and the batches still on their way to disk.
pub struct Tx<'a, L: Lookup> {
    base: &'a State,
    /// Batches applied before this one but not yet durable, so not yet merged into `base`
    /// (oldest first). Their effects shadow `base`'s, and this batch's shadow theirs.
    in_flight: &'a [&'a Delta],
    lookup: &'a L,
    now: DateTime<Utc>,
    now_text: String,
    delta: Delta,
    next_seq: u64,
    head_hash: Hash,
    /// The chain head this batch started from, for rolling back its first entry.
    start_head_hash: Hash,
    undo: Vec<Undo>,
}

fn fingerprint(command: &Command) -> String {
    let bytes = serde_json::to_vec(command).expect("commands serialise to JSON");
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes))
}

fn check_refs(refs: &Refs) -> Result<(), CommandError> {
    // The engine adds at most one ref of its own to a caller's refs.
    if refs.len() >= REFS_MAX
        || refs
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > REF_LEN_MAX || v.len() > REF_LEN_MAX)
    {
        return Err(CommandError::InvalidRequest(format!(
            "refs: at most {} keys, each key and value at most {REF_LEN_MAX} bytes",
            REFS_MAX - 1
        )));
    }
    Ok(())
}

fn check_hold_id(hold_id: &str) -> Result<(), CommandError> {
    let ok = !hold_id.is_empty()
        && hold_id.len() <= HOLD_ID_LEN_MAX
        && hold_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CommandError::InvalidRequest(format!(
            "hold_id must be 1..={HOLD_ID_LEN_MAX} characters of A-Z, a-z, 0-9, '_' or '-'"
        )))
    }
}

fn positive(amount: Fen) -> Result<Fen, CommandError> {
    if amount.is_positive() {
        Ok(amount)
    } else {
        Err(CommandError::NonPositiveAmount(amount))
    }
}

impl<'a, L: Lookup> Tx<'a, L> {
    /// Starts a batch at `now`, which the caller keeps monotonic, on top of the durable
    /// `base` and the batches `in_flight` (oldest first) that are written but not yet durable.
    pub fn new(
        base: &'a State,
        in_flight: &'a [&'a Delta],
        lookup: &'a L,
        now: DateTime<Utc>,
    ) -> Tx<'a, L> {
        let head = in_flight
            .iter()
            .rev()
            .find_map(|delta| delta.entries.last())
            .map(|entry| (entry.seq + 1, entry.hash));
        let (next_seq, head_hash) = head.unwrap_or((base.next_seq, base.head_hash));
        let open = OpenBatch {
            now_text: format_timestamp(now),
            delta: Delta {
                now,
                balances: HashMap::new(),
                holds: HashMap::new(),
                entries: Vec::new(),
                idempotency: HashMap::new(),
                closed_years: Vec::new(),
            },
            next_seq,
            head_hash,
            start_head_hash: head_hash,
        };
        Tx::resume(base, in_flight, lookup, open)
    }

    /// Takes up a batch suspended earlier. The batches in flight then may since have been
    /// merged into `base`; that changes nothing the batch sees, as long as `base` and
    /// `in_flight` together hold everything applied before it.
    pub fn resume(
        base: &'a State,
        in_flight: &'a [&'a Delta],
        lookup: &'a L,
        open: OpenBatch,
    ) -> Tx<'a, L> {
        Tx {
            base,
            in_flight,
            lookup,
            now: open.delta.now,
            now_text: open.now_text,
            delta: open.delta,
            next_seq: open.next_seq,
            head_hash: open.head_hash,
            start_head_hash: open.start_head_hash,
            undo: Vec::new(),
        }
    }

    /// Sets the batch aside, to take more commands later (`resume`) or to end it
    /// (`OpenBatch::finish`), without holding on to the state.
    pub fn suspend(self) -> OpenBatch {
        OpenBatch {
            delta: self.delta,
            now_text: self.now_text,
            next_seq: self.next_seq,
            head_hash: self.head_hash,
            start_head_hash: self.start_head_hash,
        }
    }

    pub fn finish(self) -> Delta {
        self.delta
    }

    fn balance(&self, account: &AccountId) -> Option<Balance> {
        self.delta
            .balances
            .get(account)
            .or_else(|| {
                self.in_flight
                    .iter()
                    .rev()
                    .find_map(|delta| delta.balances.get(account))
            })
            .or_else(|| self.base.balances.get(account))
            .copied()
    }

    fn known_balance(&self, account: &AccountId) -> Result<Balance, CommandError> {
        self.balance(account)
            .ok_or_else(|| CommandError::UnknownAccount(account.to_string()))
    }

    fn set_balance(&mut self, account: AccountId, balance: Balance) {
        let prev = self.delta.balances.insert(account.clone(), balance);
        self.undo.push(Undo::Balance(account, prev));
    }

    fn hold(&self, hold_id: &str) -> Result<Option<HoldRecord>, CommandError> {
        let unsaved = std::iter::once(&self.delta)
            .chain(self.in_flight.iter().rev().copied())
            .find_map(|delta| delta.holds.get(hold_id));
        if let Some(h) = unsaved.or_else(|| self.base.pending.get(hold_id)) {
            return Ok(Some(h.clone()));
        }
        self.lookup.hold(hold_id)
    }

    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, CommandError> {
        let unsaved = std::iter::once(&self.delta)
            .chain(self.in_flight.iter().rev().copied())
            .find_map(|delta| delta.idempotency.get(key));
        match unsaved {
            Some(record) => Ok(Some(record.clone())),
            None => self.lookup.idempotency(key),
        }
    }

    fn set_hold(&mut self, hold: HoldRecord) {
        let id = hold.hold_id.clone();
        let prev = self.delta.holds.insert(id.clone(), hold);
        self.undo.push(Undo::Hold(id, prev));
    }

    fn is_closed(&self, year: Year) -> bool {
        self.base.closed_years.contains(&year)
            || std::iter::once(&self.delta)
                .chain(self.in_flight.iter().copied())
                .any(|delta| delta.closed_years.contains(&year))
    }

    fn ensure_open(&self, year: Year) -> Result<(), CommandError> {
        if self.is_closed(year) {
            Err(CommandError::YearClosed(year))
        } else {
            Ok(())
        }
    }

    fn rollback(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Balance(account, prev) => restore(&mut self.delta.balances, account, prev),
                Undo::Hold(id, prev) => restore(&mut self.delta.holds, id, prev),
                Undo::Idempotency(key) => {
                    self.delta.idempotency.remove(&key);
                }
                Undo::Entry => {
                    self.delta.entries.pop();
                    self.next_seq -= 1;
                    self.head_hash = self
                        .delta
                        .entries
                        .last()
                        .map_or(self.start_head_hash, |e| e.hash);
                }
                Undo::ClosedYear => {
                    self.delta.closed_years.pop();
                }
            }
        }
    }

    /// Releases every pending hold that is due at the batch's time.
    pub fn expire_due(&mut self) {
        let now = self.now.timestamp();
        // Due holds of the state, and holds placed by batches still in flight that are due
        // already (the clock may have moved on since).
        let due: Vec<String> = self
            .base
            .expiry
            .range(..=(now, String::from("\u{10FFFF}")))
            .map(|(_, id)| id.clone())
            .chain(self.in_flight.iter().flat_map(|delta| {
                delta
                    .holds
                    .values()
                    .filter(|h| h.state == HoldState::Pending && h.expires_at <= now)
                    .map(|h| h.hold_id.clone())
            }))
            .collect();
        for id in due {
            if let Ok(Some(hold)) = self.hold(&id) {
                if hold.state == HoldState::Pending {
                    self.release(hold, HoldState::Expired)
                        .expect("releasing a pending hold only lowers pending debits");
                }
            }
        }
        self.undo.clear();
    }

    /// Applies one request; on error nothing of it remains in the overlay.
    pub fn apply(&mut self, request: &Request) -> Result<Outcome, CommandError> {
        self.undo.clear();
        let result = self.apply_inner(request);
        if result.is_err() {
            self.rollback();
        }
        self.undo.clear();
        result
    }

    /// Applies requests all together: if one fails, none of them remains in the overlay.
    pub fn apply_all(&mut self, requests: &[Request]) -> Result<Vec<Outcome>, CommandError> {
        self.undo.clear();
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            match self.apply_inner(request) {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    self.rollback();
                    return Err(e);
                }
            }
        }
        self.undo.clear();
        Ok(outcomes)
    }

    fn apply_inner(&mut self, request: &Request) -> Result<Outcome, CommandError> {
        if request.key.is_empty() || request.key.len() > IDEMPOTENCY_KEY_LEN_MAX {
            return Err(CommandError::InvalidRequest(format!(
                "idempotency key must be 1..={IDEMPOTENCY_KEY_LEN_MAX} bytes"
            )));
        }
        let fingerprint = fingerprint(&request.command);
        let known = self.idempotency(&request.key)?;
        if let Some(record) = known {
            return if record.fingerprint == fingerprint {
                Ok(record.outcome)
            } else {
                Err(CommandError::IdempotencyMismatch {
                    key: request.key.clone(),
                })
            };
        }
        let outcome = self.execute(&request.command)?;
        self.delta.idempotency.insert(
            request.key.clone(),
            IdempotencyRecord {
                fingerprint,
                outcome: outcome.clone(),
            },
        );
        self.undo.push(Undo::Idempotency(request.key.clone()));
        Ok(outcome)
    }

    fn outcome(&self, entry: Option<EntryRef>, amount: Fen) -> Outcome {
        Outcome {
            at: self.now_text.clone(),
            entry,
            amount,
            expires_at: None,
            voided_holds: 0,
        }
    }

    fn execute(&mut self, command: &Command) -> Result<Outcome, CommandError> {
        match command {
            Command::Issue {
                elder_id,
                district,
                period,
                amount,
            } => {
                let amount = positive(*amount)?;
                let year = period.year();
                self.ensure_open(year)?;
                let elder = AccountId::elder(elder_id, year)?;
                let funding = AccountId::funding(district, year)?;
                let refs = Refs::from([("period".to_string(), period.to_string())]);
                let entry = self.write_entry(
                    EntryKind::Issue,
                    vec![
                        Posting::debit(funding, amount),
                        Posting::credit(elder, amount),
                    ],
                    refs,
                )?;
                Ok(self.outcome(Some(entry), amount))
            }
            Command::Hold {
                hold_id,
                elder_id,
                amount,
                ttl_secs,
            } => self.place_hold(hold_id, elder_id, *amount, *ttl_secs),
            Command::Post {
                hold_id,
                provider_id,
                refs,
            } => self.post_hold(hold_id, provider_id, refs),
            Command::Void { hold_id } => {
                let hold = self.pending(hold_id)?;
                let amount = hold.amount;
                self.release(hold, HoldState::Voided)?;
                Ok(self.outcome(None, amount))
            }
            Command::Refund { hold_id, refs } => self.refund(hold_id, refs),
            Command::Offset {
                elder_id,
                provider_id,
                month,
                amount,
                refs,
            } => {
                check_refs(refs)?;
                let amount = positive(*amount)?;
                let year = month.year();
                self.ensure_open(year)?;
                let elder = AccountId::elder(elder_id, year)?;
                let payable = AccountId::provider_payable(provider_id)?;
                self.ensure_available(&elder, amount)?;
                let mut refs = refs.clone();
                refs.insert("month".to_string(), month.to_string());
                let entry = self.write_entry(
                    EntryKind::Offset,
                    vec![
                        Posting::debit(elder, amount),
                        Posting::credit(payable, amount),
                    ],
                    refs,
                )?;
                Ok(self.outcome(Some(entry), amount))
            }
            Command::Payout {
                provider_id,
                district,
                amount,
                refs,
            } => {
                check_refs(refs)?;
                let amount = positive(*amount)?;
                let payable = AccountId::provider_payable(provider_id)?;
                let settled = AccountId::settled(district)?;
                let owed = self
                    .known_balance(&payable)?
                    .posted_credit_balance()
                    .ok_or(CommandError::Overflow)?;
                if owed < amount {
                    return Err(CommandError::InsufficientCredit {
                        available: owed,
                        requested: amount,
                    });
                }
                let entry = self.write_entry(
                    EntryKind::Payout,
                    vec![
                        Posting::debit(payable, amount),
                        Posting::credit(settled, amount),
                    ],
                    refs.clone(),
                )?;
                Ok(self.outcome(Some(entry), amount))
            }
            Command::CloseYear { year } => {
                let mut voided = 0;
                if !self.is_closed(*year) {
                    self.delta.closed_years.push(*year);
                    self.undo.push(Undo::ClosedYear);
                    voided = self.void_pending_where(|h| h.year == *year)?;
                }
                let mut outcome = self.outcome(None, Fen::ZERO);
                outcome.voided_holds = voided;
                Ok(outcome)
            }
            Command::Forfeit {
                elder_id,
                district,
                year,
            } => self.forfeit(elder_id, district, *year),
        }
    }

    fn ensure_available(&self, elder: &AccountId, amount: Fen) -> Result<(), CommandError> {
        let available = self
            .known_balance(elder)?
            .available()
            .ok_or(CommandError::Overflow)?;
        if available < amount {
            return Err(CommandError::InsufficientCredit {
                available,
                requested: amount,
            });
        }
        Ok(())
    }

    fn place_hold(
        &mut self,
        hold_id: &str,
        elder_id: &str,
        amount: Fen,
        ttl_secs: u32,
    ) -> Result<Outcome, CommandError> {
        check_hold_id(hold_id)?;
        let amount = positive(amount)?;
        if ttl_secs == 0 || ttl_secs > HOLD_TTL_SECS_MAX {
            return Err(CommandError::InvalidRequest(format!(
                "hold ttl must be 1..={HOLD_TTL_SECS_MAX} seconds"
            )));
        }
        let year = Year::of(self.now);
        self.ensure_open(year)?;
        let elder = AccountId::elder(elder_id, year)?;
        if self.hold(hold_id)?.is_some() {
            return Err(CommandError::HoldExists {
                hold_id: hold_id.to_string(),
            });
        }
        self.ensure_available(&elder, amount)?;
        let mut balance = self.known_balance(&elder)?;
        balance.debits_pending = balance
            .debits_pending
            .checked_add(amount)
            .ok_or(CommandError::Overflow)?;
        let expires_at = self.now.timestamp() + i64::from(ttl_secs);
        self.set_balance(elder, balance);
        self.set_hold(HoldRecord {
            hold_id: hold_id.to_string(),
            elder_id: elder_id.to_string(),
            year,
            amount,
            created_at: self.now.timestamp(),
            expires_at,
            state: HoldState::Pending,
            provider_id: None,
            charge_seq: None,
            refund_seq: None,
        });
        let mut outcome = self.outcome(None, amount);
        outcome.expires_at = DateTime::from_timestamp(expires_at, 0).map(format_timestamp);
        Ok(outcome)
    }

    fn pending(&self, hold_id: &str) -> Result<HoldRecord, CommandError> {
        let hold = self
            .hold(hold_id)?
            .ok_or_else(|| CommandError::UnknownHold(hold_id.to_string()))?;
        if hold.state != HoldState::Pending {
            return Err(CommandError::HoldNotPending {
                hold_id: hold_id.to_string(),
                state: hold.state,
            });
        }
        Ok(hold)
    }

    /// Ends a pending hold without posting it, giving its reserve back.
    fn release(&mut self, mut hold: HoldRecord, state: HoldState) -> Result<(), CommandError> {
        let account = hold.account();
        let mut balance = self.known_balance(&account)?;
        balance.debits_pending = balance
            .debits_pending
            .checked_sub(hold.amount)
            .ok_or(CommandError::Overflow)?;
        assert!(
            !balance.debits_pending.is_negative(),
            "pending debits of {account} went below zero"
        );
        self.set_balance(account, balance);
        hold.state = state;
        self.set_hold(hold);
        Ok(())
    }

    fn post_hold(
        &mut self,
        hold_id: &str,
        provider_id: &str,
        refs: &Refs,
    ) -> Result<Outcome, CommandError> {
        check_refs(refs)?;
        let payable = AccountId::provider_payable(provider_id)?;
        let mut hold = self.pending(hold_id)?;
        let amount = hold.amount;
        self.release(hold.clone(), HoldState::Posted)?;
        let entry = self.write_entry(
            EntryKind::Charge,
            vec![
                Posting::debit(hold.account(), amount),
                Posting::credit(payable, amount),
            ],
            refs.clone(),
        )?;
        hold.state = HoldState::Posted;
        hold.provider_id = Some(provider_id.to_string());
        hold.charge_seq = Some(entry.seq);
        self.set_hold(hold);
        Ok(self.outcome(Some(entry), amount))
    }

    fn refund(&mut self, hold_id: &str, refs: &Refs) -> Result<Outcome, CommandError> {
        check_refs(refs)?;
        let mut hold = self
            .hold(hold_id)?
            .ok_or_else(|| CommandError::UnknownHold(hold_id.to_string()))?;
        let provider_id = match (&hold.state, &hold.provider_id) {
            (HoldState::Posted, Some(p)) => p.clone(),
            _ => {
                return Err(CommandError::NotRefundable {
                    hold_id: hold_id.to_string(),
                    state: hold.state,
                })
            }
        };
        self.ensure_open(hold.year)?;
        let payable = AccountId::provider_payable(&provider_id)?;
        let entry = self.write_entry(
            EntryKind::Refund,
            vec![
                Posting::debit(payable, hold.amount),
                Posting::credit(hold.account(), hold.amount),
            ],
            refs.clone(),
        )?;
        hold.state = HoldState::Refunded;
        hold.refund_seq = Some(entry.seq);
        let amount = hold.amount;
        self.set_hold(hold);
        Ok(self.outcome(Some(entry), amount))
    }

    fn void_pending_where(
        &mut self,
        select: impl Fn(&HoldRecord) -> bool,
    ) -> Result<u64, CommandError> {
        // Candidates from the state, the batches in flight and this one; the newest view of
        // each decides.
        let mut ids: Vec<String> = self
            .base
            .pending
            .keys()
            .chain(self.in_flight.iter().flat_map(|delta| delta.holds.keys()))
            .chain(self.delta.holds.keys())
            .cloned()
            .collect();
        ids.sort();
        ids.dedup();
        let mut voided = 0;
        for id in ids {
            if let Some(hold) = self.hold(&id)? {
                if hold.state == HoldState::Pending && select(&hold) {
                    self.release(hold, HoldState::Voided)?;
                    voided += 1;
                }
            }
        }
        Ok(voided)
    }

    fn forfeit(
        &mut self,
        elder_id: &str,
        district: &str,
        year: Year,
    ) -> Result<Outcome, CommandError> {
        if !self.is_closed(year) {
            return Err(CommandError::YearOpen(year));
        }
        let elder = AccountId::elder(elder_id, year)?;
        let forfeit = AccountId::forfeit(district, year)?;
        self.known_balance(&elder)?;
        let voided = self.void_pending_where(|h| h.elder_id == elder_id && h.year == year)?;
        let remaining = self
            .known_balance(&elder)?
            .posted_credit_balance()
            .ok_or(CommandError::Overflow)?;
        let entry = if remaining.is_positive() {
            let refs = Refs::from([("year".to_string(), year.to_string())]);
            Some(self.write_entry(
                EntryKind::Forfeit,
                vec![
                    Posting::debit(elder, remaining),
                    Posting::credit(forfeit, remaining),
                ],
                refs,
            )?)
        } else {
            None
        };
        let mut outcome = self.outcome(entry, remaining);
        outcome.voided_holds = voided;
        Ok(outcome)
    }

    /// Appends a balanced entry: checks every posting against the balances (no overflow,
    /// no elder below zero), then seals it onto the chain.
    fn write_entry(
        &mut self,
        kind: EntryKind,
        postings: Vec<Posting>,
        refs: Refs,
    ) -> Result<EntryRef, CommandError> {
        let mut updated: Vec<(AccountId, Balance)> = Vec::with_capacity(postings.len());
        for p in &postings {
            let current = updated
                .iter()
                .rev()
                .find(|(a, _)| *a == p.account)
                .map(|(_, b)| *b)
                .or_else(|| self.balance(&p.account))
                .unwrap_or_default();
            let next = post_to(current, p.side, p.amount).ok_or(CommandError::Overflow)?;
            if p.account.is_elder() {
                let available = next.available().ok_or(CommandError::Overflow)?;
                if available.is_negative() {
                    return Err(CommandError::InsufficientCredit {
                        available: current.available().unwrap_or(Fen::ZERO),
                        requested: p.amount,
                    });
                }
            }
            updated.push((p.account.clone(), next));
        }
        let entry = Entry::seal(
            self.next_seq,
            self.now_text.clone(),
            kind,
            postings,
            refs,
            self.head_hash,
        );
        // The commands above only build postings the rules allow; a failure here is a bug,
        // and writing it would put wrong money in the journal.
        if let Err(e) = entry.check_rules() {
            panic!("engine built an entry that breaks the journal rules: {e}");
        }
        for (account, balance) in updated {
            self.set_balance(account, balance);
        }
        let entry_ref = EntryRef {
            seq: entry.seq,
            hash: hex::encode(entry.hash),
        };
        self.next_seq += 1;
        self.head_hash = entry.hash;
        self.delta.entries.push(entry);
        self.undo.push(Undo::Entry);
        Ok(entry_ref)
    }
}

fn restore<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, prev: Option<V>) {
    match prev {
        Some(v) => {
            map.insert(key, v);
        }
        None => {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The overlay of batches in flight: a batch applied on top of a batch that is not yet
    //! merged must see that batch's holds, balances, idempotency records and chain head.

    use super::*;
    use crate::command::Command;
    use crate::fiscal::parse_timestamp;

    /// Storage with nothing in it.
    struct NoRecords;

    impl Lookup for NoRecords {
        fn hold(&self, _: &str) -> Result<Option<HoldRecord>, CommandError> {
            Ok(None)
        }
        fn idempotency(&self, _: &str) -> Result<Option<IdempotencyRecord>, CommandError> {
            Ok(None)
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        parse_timestamp(text).unwrap()
    }

    fn issue(key: &str, elder: &str, fen: i64) -> Request {
        Request::new(
            key,
            Command::Issue {
                elder_id: elder.into(),
                district: "130102".into(),
                period: "2026-03".parse().unwrap(),
                amount: Fen::from_fen(fen),
            },
        )
    }

    fn hold(key: &str, hold_id: &str, elder: &str, fen: i64, ttl_secs: u32) -> Request {
        Request::new(
            key,
            Command::Hold {
                hold_id: hold_id.into(),
                elder_id: elder.into(),
                amount: Fen::from_fen(fen),
                ttl_secs,
            },
        )
    }

    fn post(key: &str, hold_id: &str) -> Request {
        Request::new(
            key,
            Command::Post {
                hold_id: hold_id.into(),
                provider_id: "P1".into(),
                refs: Refs::new(),
            },
        )
    }

    /// Applies `requests` as one batch on top of `in_flight`.
    fn batch(
        state: &State,
        in_flight: &[&Delta],
        now: &str,
        requests: &[Request],
    ) -> (Delta, Vec<Result<Outcome, CommandError>>) {
        let mut tx = Tx::new(state, in_flight, &NoRecords, at(now));
        tx.expire_due();
        let results = requests.iter().map(|r| tx.apply(r)).collect();
        (tx.finish(), results)
    }

    fn elder_balance(state: &State, in_flight: &[&Delta], elder: &str) -> Balance {
        let tx = Tx::new(state, in_flight, &NoRecords, at("2026-03-15T02:00:00Z"));
        tx.balance(&AccountId::elder(elder, "2026".parse().unwrap()).unwrap())
            .unwrap()
    }

    #[test]
    fn a_batch_builds_on_the_batch_in_flight() {
        let state = State::default();
        let (first, results) = batch(
            &state,
            &[],
            "2026-03-15T02:00:00Z",
            &[issue("i1", "E1", 1_000), hold("h1", "H1", "E1", 600, 60)],
        );
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let in_flight = [&first];
        let (second, results) = batch(
            &state,
            &in_flight,
            "2026-03-15T02:00:01Z",
            &[
                // Only 400 is left beside the hold in flight.
                hold("h2", "H2", "E1", 500, 60),
                post("p1", "H1"),
                // The replay comes from the record in flight, and writes nothing new.
                issue("i1", "E1", 1_000),
            ],
        );
        assert!(
            matches!(results[0], Err(CommandError::InsufficientCredit { .. })),
            "{:?}",
            results[0]
        );
        let posted = results[1].as_ref().unwrap().entry.clone().unwrap();
        assert_eq!(posted.seq, 1);
        assert_eq!(results[2], Ok(first.idempotency["i1"].outcome.clone()));
        assert_eq!(second.entries.len(), 1);
        assert_eq!(second.entries[0].prev_hash, first.entries[0].hash);
        assert_eq!(second.holds["H1"].state, HoldState::Posted);

        // Merged in order, the state is what the two batches say.
        let mut merged = State::default();
        merged.merge(first);
        merged.merge(second);
        assert_eq!(merged.len(), 2);
        let balance = elder_balance(&merged, &[], "E1");
        assert_eq!(balance.available(), Some(Fen::from_fen(400)));
        assert!(merged.pending_hold("H1").is_none());
    }

    #[test]
    fn a_rolled_back_entry_leaves_the_chain_head_of_the_batch_in_flight() {
        let state = State::default();
        let (first, _) = batch(
            &state,
            &[],
            "2026-03-15T02:00:00Z",
            &[issue("i1", "E1", 100), hold("h1", "H1", "E1", 100, 60)],
        );
        let in_flight = [&first];
        let mut tx = Tx::new(&state, &in_flight, &NoRecords, at("2026-03-15T02:00:01Z"));
        // The group's post writes an entry, then its hold fails: the entry is rolled back
        // and the chain head is again the one of the batch in flight.
        let group = [post("p1", "H1"), hold("h2", "H2", "E1", 1, 60)];
        assert!(tx.apply_all(&group).is_err());
        let entry = tx.apply(&post("p1", "H1")).unwrap().entry.unwrap();
        let second = tx.finish();
        assert_eq!(entry.seq, 1);
        assert_eq!(second.entries.len(), 1);
        assert_eq!(second.entries[0].prev_hash, first.entries[0].hash);
    }

    #[test]
    fn holds_placed_in_flight_expire_when_due() {
        let state = State::default();
        let (first, _) = batch(
            &state,
            &[],
            "2026-03-15T02:00:00Z",
            &[issue("i1", "E1", 100), hold("h1", "H1", "E1", 100, 5)],
        );
        let in_flight = [&first];
        let (second, results) = batch(
            &state,
            &in_flight,
            "2026-03-15T02:00:05Z",
            &[post("p1", "H1")],
        );
        assert!(
            matches!(
                results[0],
                Err(CommandError::HoldNotPending {
                    state: HoldState::Expired,
                    ..
                })
            ),
            "{:?}",
            results[0]
        );
        assert_eq!(second.holds["H1"].state, HoldState::Expired);
        let balance = elder_balance(&state, &[&first, &second], "E1");
        assert_eq!(balance.available(), Some(Fen::from_fen(100)));
    }

    #[test]
    fn a_suspended_batch_resumes_where_it_left_off() {
        let state = State::default();
        let mut tx = Tx::new(&state, &[], &NoRecords, at("2026-03-15T02:00:00Z"));
        tx.apply(&issue("i1", "E1", 100)).unwrap();
        let open = tx.suspend();
        assert_eq!(open.now(), at("2026-03-15T02:00:00Z"));
        let mut tx = Tx::resume(&state, &[], &NoRecords, open);
        let outcome = tx.apply(&hold("h1", "H1", "E1", 100, 60)).unwrap();
        assert_eq!(outcome.at, "2026-03-15T02:00:00Z");
        assert!(tx.apply(&hold("h2", "H2", "E1", 1, 60)).is_err());
        let delta = tx.suspend().finish();
        assert_eq!(delta.entries.len(), 1);
        assert_eq!(delta.holds.len(), 1);
    }
}

//! The ledger handle: opens the store and rebuilds the state, runs the single writer thread
//! that sequences every command, and serves reads concurrently from the state that is
//! already durable.
//!
//! Group commit, pipelined: the writer applies the commands that have arrived as one batch,
//! on top of the durable state and of the batches in flight, and hands the batch to the
//! committer at once. The committer thread, whenever it is free, takes every batch handed
//! over meanwhile as one group, writes it (one frame of the write-ahead log, one atomic sled
//! batch) and makes it durable (one `fdatasync` of the log; see `storage`). So every command
//! that arrived while a group was being synced shares the next sync, the committer never
//! waits for the writer while commands are waiting, and applying commands overlaps with
//! writing and syncing them. A batch is merged into the state that readers see, and its
//! commands are answered, only after the committer has reported its group durable.

use crate::account::{AccountId, Balance};
use crate::checkpoint::{Checkpoint, LedgerKey};
use crate::clock::Clock;
use crate::command::{CommandError, Outcome, Request};
use crate::engine::{Delta, HoldRecord, IdempotencyRecord, Lookup, OpenBatch, State, Tx};
use crate::fiscal::{format_timestamp, Year};
use crate::journal::{Entry, JournalError};
use crate::merkle::{EntryHashes, Hash, MerkleError};
use crate::storage::{StorageError, Store, WriteSet};
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most requests one group commit takes.
pub const BATCH_REQUESTS_MAX: usize = 8192;
/// Most requests the submit queue holds before submitters wait.
pub const QUEUE_JOBS_MAX: usize = 65_536;
/// Most batches handed to the committer and not yet durable. The writer hands each batch
/// over as soon as it has applied it, and the committer, once free, takes every batch
/// handed over meanwhile as one group commit: so the committer never waits for the writer
/// while commands are waiting, and every command that arrived while a group was being
/// synced goes into the next group. The bound only caps memory (the open batch then takes
/// commands until a batch in flight is durable).
const IN_FLIGHT_BATCHES_MAX: usize = 64;
/// How often an idle writer looks for holds that have come due.
const EXPIRY_POLL: Duration = Duration::from_millis(500);
/// Most entries one export page returns (API.md: M <= 10000).
pub const EXPORT_PAGE_MAX: u64 = 10_000;

/// How much of the chain `open` recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Links every entry to its predecessor and recomputes the head entry's hash.
    Head,
    /// Recomputes every entry's hash.
    Full,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("journal damaged at seq {seq}: {reason}")]
    Journal { seq: u64, reason: String },
    #[error("hold record damaged: {0}")]
    Hold(String),
    #[error("cannot make a ledger key: {0}")]
    Key(String),
}

/// A record of the caller's own, written in the same atomic batch as its commands.
pub type Record = (Vec<u8>, Option<Vec<u8>>);
/// A stored record of the caller's: (key, value).
pub type StoredRecord = (Vec<u8>, Vec<u8>);
type Results = Vec<Result<Outcome, CommandError>>;
type AtomicResult = Result<Vec<Outcome>, CommandError>;

enum Job {
    /// Independent requests: each succeeds or fails on its own.
    Each(Vec<Request>, Box<dyn FnOnce(Results) + Send>),
    /// All requests and records take effect together, or none do.
    Atomic(
        Vec<Request>,
        Vec<Record>,
        Box<dyn FnOnce(AtomicResult) + Send>,
    ),
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Job::Each(r, _) | Job::Atomic(r, _, _) => r.len().max(1),
        }
    }
}

/// Where a waiting submitter's answer lands. A mutex and a condvar park the submitter at
/// once, where a channel would spin and yield first: with dozens of submitters on a few
/// cores, that spinning took more CPU than the commits themselves.
struct ReplySlot<T> {
    answer: Mutex<Answer<T>>,
    filled: Condvar,
}

enum Answer<T> {
    Waiting,
    /// `None` when the writer dropped the request unanswered (it stopped).
    Filled(Option<T>),
}

/// The writer's end of a `ReplySlot`; dropping it unsent fills the slot with `None`, so a
/// submitter never waits for a writer that is gone.
struct ReplySender<T>(Option<Arc<ReplySlot<T>>>);

fn reply_slot<T>() -> (ReplySender<T>, Arc<ReplySlot<T>>) {
    let slot = Arc::new(ReplySlot {
        answer: Mutex::new(Answer::Waiting),
        filled: Condvar::new(),
    });
    (ReplySender(Some(Arc::clone(&slot))), slot)
}

impl<T> ReplySlot<T> {
    fn fill(&self, value: Option<T>) {
        *self
            .answer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Answer::Filled(value);
        self.filled.notify_one();
    }

    /// Parks until the answer is in; `None` if the writer dropped the request.
    fn wait(&self) -> Option<T> {
        let mut answer = self
            .answer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Answer::Filled(value) = std::mem::replace(&mut *answer, Answer::Waiting) {
                return value;
            }
            answer = self
                .filled
                .wait(answer)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl<T> ReplySender<T> {
    fn send(mut self, value: T) {
        if let Some(slot) = self.0.take() {
            slot.fill(Some(value));
        }
    }
}

impl<T> Drop for ReplySender<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.fill(None);
        }
    }
}

struct Shared {
    state: RwLock<State>,
    store: Store,
    key: LedgerKey,
    clock: Arc<dyn Clock>,
    stopped: AtomicBool,
}

pub struct Ledger {
    shared: Arc<Shared>,
    sender: Option<Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    committer: Option<JoinHandle<()>>,
}

struct StoreLookup<'a>(&'a Store);

/// The journal's entry hashes, read back for the Merkle tree's proofs.
struct JournalHashes<'a>(&'a Store);

impl EntryHashes for JournalHashes<'_> {
    fn entry_hashes(&self, start: u64, count: usize) -> Result<Vec<Hash>, String> {
        let hashes: Vec<Hash> = self
            .0
            .entries_from(start)
            .take(count)
            .zip(start..)
            .map(|(item, expected)| {
                let (seq, line) = item.map_err(|e| e.to_string())?;
                if seq != expected {
                    return Err(format!("seq {seq} stands where {expected} should"));
                }
                match crate::journal::EntryView::parse_exact(&line) {
                    Some(view) => Ok(view.hash),
                    None => Entry::parse_line_by_serde(&line)
                        .map(|entry| entry.hash)
                        .map_err(|e| format!("seq {seq}: {e}")),
                }
            })
            .collect::<Result<_, String>>()?;
        if hashes.len() == count {
            Ok(hashes)
        } else {
            Err(format!(
                "{} of {count} entries from seq {start} are stored",
                hashes.len()
            ))
        }
    }
}

fn storage_error(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

impl Lookup for StoreLookup<'_> {
    fn hold(&self, hold_id: &str) -> Result<Option<HoldRecord>, CommandError> {
        match self.0.hold(hold_id).map_err(storage_error)? {
            None => Ok(None),
            Some(bytes) => crate::stored::decode_hold(&bytes)
                .map(Some)
                .map_err(storage_error),
        }
    }
    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, CommandError> {
        match self.0.idempotency(key).map_err(storage_error)? {
            None => Ok(None),
            Some(bytes) => crate::stored::decode_idempotency(&bytes)
                .map(Some)
                .map_err(storage_error),
        }
    }
}

fn read_state(shared: &Shared) -> RwLockReadGuard<'_, State> {
    shared
        .state
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Ledger {
    /// Creates a new store in `dir` with a fresh ledger key and opens it.
    pub fn create(dir: &Path, clock: Arc<dyn Clock>) -> Result<Ledger, OpenError> {
        let rng = ring::rand::SystemRandom::new();
        let seed = LedgerKey::generate_seed(&rng).map_err(|e| OpenError::Key(e.to_string()))?;
        let (store, key) = Store::create(dir, &seed)?;
        Ok(Ledger::start(store, key, State::default(), clock))
    }

    /// Opens an existing store, verifying the chain as asked and rebuilding the state.
    pub fn open(dir: &Path, clock: Arc<dyn Clock>, verify: Verify) -> Result<Ledger, OpenError> {
        let (store, key) = Store::open(dir)?;
        let state = rebuild(&store, verify)?;
        Ok(Ledger::start(store, key, state, clock))
    }

    fn start(store: Store, key: LedgerKey, state: State, clock: Arc<dyn Clock>) -> Ledger {
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            store,
            key,
            clock,
            stopped: AtomicBool::new(false),
        });
        let (sender, receiver) = crossbeam_channel::bounded(QUEUE_JOBS_MAX);
        let (commit_sender, commit_receiver) = crossbeam_channel::bounded(IN_FLIGHT_BATCHES_MAX);
        let (durable_sender, durable_receiver) = crossbeam_channel::bounded(IN_FLIGHT_BATCHES_MAX);
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                let _refuse_leftovers = RefuseLeftovers {
                    shared: &writer_shared,
                    jobs: &receiver,
                };
                Writer {
                    shared: &writer_shared,
                    jobs: &receiver,
                    commits: &commit_sender,
                    durable: &durable_receiver,
                    in_flight: VecDeque::new(),
                    open: None,
                    next_batch: 0,
                }
                .run();
            })
            .expect("spawning the writer thread at start-up");
        let committer_shared = Arc::clone(&shared);
        let committer = std::thread::Builder::new()
            .name("ledger-committer".into())
            .spawn(move || {
                committer_loop(&committer_shared.store, &commit_receiver, &durable_sender)
            })
            .expect("spawning the committer thread at start-up");
        Ledger {
            shared,
            sender: Some(sender),
            writer: Some(writer),
            committer: Some(committer),
        }
    }

    fn send(&self, job: Job) {
        let refused = match &self.sender {
            Some(sender) => sender.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = refused {
            refuse(job, &CommandError::Stopped);
        }
    }

    /// Submits independent requests; `reply` runs on the writer thread once they are durable.
    pub fn submit_each_with(
        &self,
        requests: Vec<Request>,
        reply: impl FnOnce(Results) + Send + 'static,
    ) {
        self.send(Job::Each(requests, Box::new(reply)));
    }

    /// Submits requests and records that take effect together or not at all; `reply` runs
    /// on the writer thread once they are durable.
    pub fn submit_atomic_with(
        &self,
        requests: Vec<Request>,
        records: Vec<Record>,
        reply: impl FnOnce(AtomicResult) + Send + 'static,
    ) {
        self.send(Job::Atomic(requests, records, Box::new(reply)));
    }

    /// Submits one request and waits until it is durable.
    pub fn submit(&self, request: Request) -> Result<Outcome, CommandError> {
        self.submit_each(vec![request])
            .pop()
            .unwrap_or(Err(CommandError::Stopped))
    }

    /// Submits independent requests and waits until they are durable.
    pub fn submit_each(&self, requests: Vec<Request>) -> Results {
        let (sender, slot) = reply_slot();
        let n = requests.len();
        self.submit_each_with(requests, move |r| sender.send(r));
        slot.wait()
            .unwrap_or_else(|| (0..n).map(|_| Err(CommandError::Stopped)).collect())
    }

    /// Submits an all-or-nothing group and waits until it is durable.
    pub fn submit_atomic(&self, requests: Vec<Request>, records: Vec<Record>) -> AtomicResult {
        let (sender, slot) = reply_slot();
        self.submit_atomic_with(requests, records, move |r| sender.send(r));
        slot.wait().unwrap_or(Err(CommandError::Stopped))
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    /// An account's durable balance, with holds past their expiry already released.
    pub fn balance(&self, account: &AccountId) -> Option<Balance> {
        read_state(&self.shared).balance_at(account, self.now())
    }

    /// A hold as readers must see it now (a pending hold past expiry reads as expired).
    pub fn hold(&self, hold_id: &str) -> Result<Option<HoldRecord>, CommandError> {
        let now = self.now();
        let found = match read_state(&self.shared).pending_hold(hold_id) {
            Some(h) => Some(h.clone()),
            None => StoreLookup(&self.shared.store).hold(hold_id)?,
        };
        Ok(found.map(|mut h| {
            h.state = h.state_at(now);
            h
        }))
    }

    /// Every account with its durable balance (with due holds released).
    pub fn accounts(&self) -> Vec<(AccountId, Balance)> {
        let now = self.now();
        let state = read_state(&self.shared);
        state
            .accounts()
            .filter_map(|(a, _)| state.balance_at(a, now).map(|b| (a.clone(), b)))
            .collect()
    }

    /// What moved through an elder account, by entry kind (durable entries only).
    pub fn elder_totals(&self, account: &AccountId) -> crate::engine::KindTotals {
        read_state(&self.shared).elder_totals(account)
    }

    /// Elder accounts of `year` (for the year close).
    pub fn elder_accounts(&self, year: Year) -> Vec<(AccountId, Balance)> {
        let state = read_state(&self.shared);
        state
            .accounts()
            .filter(|(a, _)| a.is_elder() && a.year() == Some(year))
            .map(|(a, b)| (a.clone(), *b))
            .collect()
    }

    pub fn is_year_closed(&self, year: Year) -> bool {
        read_state(&self.shared).is_year_closed(year)
    }

    /// Durable journal length.
    pub fn tree_size(&self) -> u64 {
        read_state(&self.shared).len()
    }

    /// The latest time the ledger has stamped (survives restarts).
    pub fn last_time(&self) -> Option<DateTime<Utc>> {
        read_state(&self.shared).last_time()
    }

    pub fn key(&self) -> &LedgerKey {
        &self.shared.key
    }

    /// A checkpoint of the durable journal, signed now.
    pub fn checkpoint(&self) -> Checkpoint {
        let state = read_state(&self.shared);
        let size = state.len();
        let root = state.merkle().root();
        self.shared.key.sign_checkpoint(
            size,
            &root,
            &state.head_hash(),
            &format_timestamp(self.now()),
        )
    }

    /// Up to `limit` (capped at `EXPORT_PAGE_MAX`) exported lines from `from`, durable only.
    pub fn entry_lines(&self, from: u64, limit: u64) -> Result<Vec<Vec<u8>>, StorageError> {
        let size = self.tree_size();
        let end = size.min(from.saturating_add(limit.min(EXPORT_PAGE_MAX)));
        if from >= end {
            return Ok(Vec::new());
        }
        self.shared
            .store
            .entries_from(from)
            .take(usize::try_from(end - from).unwrap_or(usize::MAX))
            .map(|r| r.map(|(_, line)| line))
            .collect()
    }

    pub fn entry(&self, seq: u64) -> Result<Option<Entry>, StorageError> {
        if seq >= self.tree_size() {
            return Ok(None);
        }
        match self.shared.store.entry_line(seq)? {
            None => Ok(None),
            Some(line) => Entry::parse_line(&line)
                .map(Some)
                .map_err(|e| StorageError::Corrupt(format!("seq {seq}: {e}"))),
        }
    }

    /// The tree keeps no leaf below its last block (`merkle`), so a proof reads up to two
    /// blocks of entry hashes back from the journal, under the state's read lock.
    pub fn inclusion_proof(&self, seq: u64, tree_size: u64) -> Result<Vec<Hash>, MerkleError> {
        let journal = JournalHashes(&self.shared.store);
        read_state(&self.shared)
            .merkle()
            .inclusion_proof(seq, tree_size, &journal)
    }

    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, MerkleError> {
        let journal = JournalHashes(&self.shared.store);
        read_state(&self.shared)
            .merkle()
            .consistency_proof(from, to, &journal)
    }

    pub fn root_at(&self, size: u64) -> Result<Hash, MerkleError> {
        let journal = JournalHashes(&self.shared.store);
        read_state(&self.shared).merkle().root_at(size, &journal)
    }

    /// A record of the caller's own. May include a batch whose fsync is still under way.
    pub fn record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.shared.store.record(key)
    }

    pub fn records(&self, prefix: &[u8]) -> Result<Vec<StoredRecord>, StorageError> {
        self.shared.store.records(prefix).collect()
    }

    /// Whether the writer has stopped after a storage failure.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }
}

impl Drop for Ledger {
    /// Closes the queue; the writer answers what it holds once durable, then both threads end.
    fn drop(&mut self) {
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

fn rebuild(store: &Store, verify: Verify) -> Result<State, OpenError> {
    let mut state = State::default();
    let mut last: Option<Entry> = None;
    for item in store.entries_from(0) {
        let (seq, line) = item?;
        let damaged = |reason: String| OpenError::Journal { seq, reason };
        let entry = Entry::parse_line(&line).map_err(|e| damaged(e.to_string()))?;
        if entry.seq != seq || seq != state.len() {
            return Err(damaged(format!("expected seq {}", state.len())));
        }
        if entry.prev_hash != state.head_hash() {
            return Err(damaged(
                "prev_hash does not match the previous entry".into(),
            ));
        }
        if verify == Verify::Full {
            entry.verify_hash().map_err(|e| damaged(e.to_string()))?;
        }
        entry
            .check_rules()
            .map_err(|e: JournalError| damaged(e.to_string()))?;
        state.replay_entry(&entry);
        last = Some(entry);
    }
    if let Some(head) = last {
        head.verify_hash().map_err(|e| OpenError::Journal {
            seq: head.seq,
            reason: e.to_string(),
        })?;
    }
    for item in store.holds() {
        let hold = crate::stored::decode_hold(&item?).map_err(OpenError::Hold)?;
        state.restore_hold(hold);
    }
    for year in store.closed_years()? {
        state.restore_closed_year(year);
    }
    if let Some(t) = store.last_time()? {
        if let Some(at) = DateTime::from_timestamp(t, 0) {
            state.restore_last_time(at);
        }
    }
    Ok(state)
}

/// What was answered to a batch's commands, and to whom, until the batch is durable.
enum Done {
    Each(Results, Box<dyn FnOnce(Results) + Send>),
    Atomic(AtomicResult, Box<dyn FnOnce(AtomicResult) + Send>),
}

impl Done {
    fn answer(self) {
        match self {
            Done::Each(results, reply) => reply(results),
            Done::Atomic(result, reply) => reply(result),
        }
    }

    /// Answers every command with `error` instead: nothing of the batch may be acknowledged.
    fn fail(self, error: &CommandError) {
        match self {
            Done::Each(results, reply) => {
                reply(results.iter().map(|_| Err(error.clone())).collect())
            }
            Done::Atomic(_, reply) => reply(Err(error.clone())),
        }
    }
}

/// A batch the writer has applied and handed to the committer, answered once durable.
struct InFlight {
    id: u64,
    delta: Delta,
    done: Vec<Done>,
}

/// The batch still taking commands, and what its commands will be answered.
struct Open {
    batch: OpenBatch,
    done: Vec<Done>,
    records: Vec<Record>,
    requests: usize,
}

/// One batch's writes for the committer.
struct Commit {
    id: u64,
    set: WriteSet,
}

/// The committer's word: every batch up to `through` is durable, or storage failed (and
/// nothing after the last good word is).
struct Durable {
    through: u64,
    result: Result<(), String>,
}

/// The writer thread: sequences every command. Commands are applied as they arrive to the
/// open batch; the open batch goes to the committer as soon as fewer than
/// `IN_FLIGHT_BATCHES_MAX` batches are in flight.
struct Writer<'a> {
    shared: &'a Shared,
    jobs: &'a Receiver<Job>,
    commits: &'a Sender<Commit>,
    durable: &'a Receiver<Durable>,
    /// Batches handed to the committer and not yet reported durable, oldest first.
    in_flight: VecDeque<InFlight>,
    open: Option<Open>,
    next_batch: u64,
}

/// What the writer does next.
enum Next {
    Apply(Vec<Job>),
    Durable(Durable),
    /// Nothing has happened for a while: time to look for holds that came due.
    Idle,
    /// The ledger was dropped: finish what is open and in flight, then end.
    Close,
}

impl Writer<'_> {
    fn run(mut self) {
        loop {
            if self.open.is_some() && self.in_flight.len() < IN_FLIGHT_BATCHES_MAX {
                if let Err(message) = self.send_open() {
                    return self.stop(message);
                }
            }
            let result = match self.wait() {
                Next::Apply(jobs) => {
                    self.apply(jobs);
                    Ok(())
                }
                Next::Durable(durable) => self.publish(durable),
                Next::Idle => {
                    let now = self.shared.clock.now();
                    if read_state(self.shared).has_due_holds(now) {
                        self.apply(Vec::new());
                    }
                    Ok(())
                }
                Next::Close => return self.close(),
            };
            if let Err(message) = result {
                return self.stop(message);
            }
        }
    }

    /// Waits for the next thing to do: the committer's word first, then commands (taking
    /// every one already queued, up to a batch).
    fn wait(&self) -> Next {
        if let Ok(durable) = self.durable.try_recv() {
            return Next::Durable(durable);
        }
        let room = BATCH_REQUESTS_MAX.saturating_sub(self.open.as_ref().map_or(0, |o| o.requests));
        let first = if self.in_flight.is_empty() && self.open.is_none() {
            match self.jobs.recv_timeout(EXPIRY_POLL) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => return Next::Idle,
                Err(RecvTimeoutError::Disconnected) => return Next::Close,
            }
        } else if room == 0 {
            // The open batch is full: only the committer's word can make room.
            match self.durable.recv() {
                Ok(durable) => return Next::Durable(durable),
                Err(_) => return Next::Close,
            }
        } else {
            crossbeam_channel::select! {
                recv(self.durable) -> durable => match durable {
                    Ok(durable) => return Next::Durable(durable),
                    Err(_) => return Next::Close,
                },
                recv(self.jobs) -> job => match job {
                    Ok(job) => job,
                    Err(_) => return Next::Close,
                },
            }
        };
        let mut count = first.len();
        let mut jobs = vec![first];
        while count < room {
            match self.jobs.try_recv() {
                Ok(job) => {
                    count += job.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        Next::Apply(jobs)
    }

    /// Applies `jobs` to the open batch (opening one, and releasing the holds due at its
    /// time, if none is open), on top of the state and the batches in flight.
    fn apply(&mut self, jobs: Vec<Job>) {
        let lookup = StoreLookup(&self.shared.store);
        let unsaved: Vec<&Delta> = self.in_flight.iter().map(|b| &b.delta).collect();
        let state = read_state(self.shared);
        let mut open = match self.open.take() {
            Some(open) => open,
            None => {
                let last_time = unsaved
                    .last()
                    .map(|delta| delta.now)
                    .or(state.last_time())
                    .unwrap_or(DateTime::<Utc>::MIN_UTC);
                let now = self.shared.clock.now().max(last_time);
                let mut tx = Tx::new(&state, &unsaved, &lookup, now);
                tx.expire_due();
                Open {
                    batch: tx.suspend(),
                    done: Vec::new(),
                    records: Vec::new(),
                    requests: 0,
                }
            }
        };
        let mut tx = Tx::resume(&state, &unsaved, &lookup, open.batch);
        for job in jobs {
            open.requests += job.len();
            match job {
                Job::Each(requests, reply) => {
                    let results = requests.iter().map(|r| tx.apply(r)).collect();
                    open.done.push(Done::Each(results, reply));
                }
                Job::Atomic(requests, records, reply) => {
                    let result = tx.apply_all(&requests);
                    if result.is_ok() {
                        open.records.extend(records);
                    }
                    open.done.push(Done::Atomic(result, reply));
                }
            }
        }
        open.batch = tx.suspend();
        self.open = Some(open);
    }

    /// Hands the open batch's writes to the committer.
    fn send_open(&mut self) -> Result<(), String> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let delta = open.batch.finish();
        let set = write_set(&delta, open.records);
        let id = self.next_batch;
        self.next_batch += 1;
        self.in_flight.push_back(InFlight {
            id,
            delta,
            done: open.done,
        });
        self.commits
            .send(Commit { id, set })
            .map_err(|_| "the committer stopped".to_string())
    }

    /// Takes the batches the committer made durable off the in-flight queue, hands the open
    /// batch over (if it was held back for room), then merges them into the state in order
    /// and answers their commands. A storage failure is returned: nothing in flight or open
    /// may then be acknowledged.
    fn publish(&mut self, durable: Durable) -> Result<(), String> {
        durable.result?;
        let mut durable_batches = Vec::new();
        while self
            .in_flight
            .front()
            .is_some_and(|batch| batch.id <= durable.through)
        {
            durable_batches.extend(self.in_flight.pop_front());
        }
        if self.in_flight.len() < IN_FLIGHT_BATCHES_MAX {
            self.send_open()?;
        }
        let mut answered = Vec::new();
        {
            let mut state = self
                .shared
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for batch in durable_batches {
                state.merge(batch.delta);
                answered.extend(batch.done);
            }
        }
        for done in answered {
            done.answer();
        }
        Ok(())
    }

    /// The ledger was dropped: the open batch goes to the committer and every batch is
    /// answered once durable.
    fn close(mut self) {
        if let Err(message) = self.send_open() {
            return self.stop(message);
        }
        while !self.in_flight.is_empty() {
            let result = match self.durable.recv() {
                Ok(durable) => self.publish(durable),
                Err(_) => Err("the committer stopped".to_string()),
            };
            if let Err(message) = result {
                return self.stop(message);
            }
        }
    }

    /// Stops after a storage failure: everything in flight or open is answered with the
    /// error, since the disk may now hold less than the batches applied on top of it
    /// assumed. (`RefuseLeftovers` answers what is still queued as the thread ends.)
    fn stop(mut self, message: String) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        let error = CommandError::Storage(message);
        let open = self.open.take().map(|open| open.done).unwrap_or_default();
        for done in self
            .in_flight
            .drain(..)
            .flat_map(|batch| batch.done)
            .chain(open)
        {
            done.fail(&error);
        }
    }
}

/// Runs when the writer thread ends, even by a panic (a bug it caught): marks the ledger
/// stopped and answers every job still queued, so that no submitter waits for ever.
struct RefuseLeftovers<'a> {
    shared: &'a Shared,
    jobs: &'a Receiver<Job>,
}

impl Drop for RefuseLeftovers<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.stopped.store(true, Ordering::SeqCst);
        }
        while let Ok(job) = self.jobs.try_recv() {
            refuse(job, &CommandError::Stopped);
        }
    }
}

/// Answers a job the writer will never apply.
fn refuse(job: Job, error: &CommandError) {
    match job {
        Job::Each(requests, reply) => reply(requests.iter().map(|_| Err(error.clone())).collect()),
        Job::Atomic(_, _, reply) => reply(Err(error.clone())),
    }
}

/// The encoded writes of one batch.
fn write_set(delta: &Delta, records: Vec<Record>) -> WriteSet {
    let mut set = WriteSet {
        entries: delta.entries.iter().map(|e| (e.seq, e.to_line())).collect(),
        holds: delta
            .holds
            .values()
            .map(|h| (h.hold_id.clone(), crate::stored::encode_hold(h)))
            .collect(),
        idempotency: delta
            .idempotency
            .iter()
            .map(|(k, r)| (k.clone(), crate::stored::encode_idempotency(r)))
            .collect(),
        closed_years: delta.closed_years.clone(),
        last_time: None,
        records,
    };
    if !set.is_empty() {
        set.last_time = Some(delta.now.timestamp());
    }
    set
}

/// The committer thread: writes every batch handed over since it last looked as one group
/// (one log frame, one atomic sled batch) and makes it durable before reporting it. A group
/// that wrote nothing needs no sync: the groups before it were synced before they were
/// reported. Stops at the first storage failure, which it reports.
fn committer_loop(store: &Store, commits: &Receiver<Commit>, durable: &Sender<Durable>) {
    while let Ok(Commit { mut id, mut set }) = commits.recv() {
        while let Ok(next) = commits.try_recv() {
            id = next.id;
            set.append(next.set);
        }
        let wrote = !set.is_empty();
        let mut result = store.write(set);
        if result.is_ok() && wrote {
            result = store.sync();
        }
        let failed = result.is_err();
        let word = Durable {
            through: id,
            result: result.map_err(|e| format!("commit failed, ledger stopped: {e}")),
        };
        if durable.send(word).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pipelined writer under concurrent submitters: commands applied on top of a batch
    //! in flight must come out as if applied one by one, and only durable ones acknowledged.

    use super::*;
    use crate::clock::ManualClock;
    use crate::command::{Command, HoldState, Refs};
    use crate::fiscal::parse_timestamp;
    use crate::money::Fen;

    const ELDERS: usize = 4;
    const SUBMITTERS: usize = 12;
    const PAIRS: usize = 40;

    fn elder(i: usize) -> String {
        format!("E{i}")
    }

    #[test]
    fn concurrent_submitters_see_each_others_batches_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(
            parse_timestamp("2026-03-15T02:00:00Z").unwrap(),
        ));
        let ledger = Ledger::create(dir.path(), clock.clone()).unwrap();
        // Credit for fewer charges than are tried, so that holds compete for it.
        let issued = Fen::from_fen(100 * 100);
        for i in 0..ELDERS {
            let issue = Command::Issue {
                elder_id: elder(i),
                district: "130102".into(),
                period: "2026-03".parse().unwrap(),
                amount: issued,
            };
            ledger.submit(Request::new(format!("i{i}"), issue)).unwrap();
        }
        let posted: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..SUBMITTERS)
                .map(|t| {
                    let ledger = &ledger;
                    scope.spawn(move || {
                        let mut posted = 0;
                        for pair in 0..PAIRS {
                            let hold_id = format!("H{t}x{pair}");
                            let hold = Command::Hold {
                                hold_id: hold_id.clone(),
                                elder_id: elder((t + pair) % ELDERS),
                                amount: Fen::from_fen(100),
                                ttl_secs: 60,
                            };
                            let key = format!("h{t}-{pair}");
                            let held = ledger.submit(Request::new(key.clone(), hold.clone()));
                            // A retry of the same request replays the first answer.
                            let again = ledger.submit(Request::new(key, hold));
                            assert_eq!(held, again);
                            if held.is_err() {
                                continue;
                            }
                            let post = Command::Post {
                                hold_id,
                                provider_id: "P1".into(),
                                refs: Refs::new(),
                            };
                            ledger
                                .submit(Request::new(format!("p{t}-{pair}"), post))
                                .unwrap();
                            posted += 1;
                        }
                        posted
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let posted: usize = posted.iter().sum();
        assert_eq!(posted, ELDERS * 100, "every fen of credit is charged once");
        let year = "2026".parse().unwrap();
        let spent = |ledger: &Ledger| -> Vec<Balance> {
            (0..ELDERS)
                .map(|i| {
                    ledger
                        .balance(&AccountId::elder(&elder(i), year).unwrap())
                        .unwrap()
                })
                .collect()
        };
        let live = spent(&ledger);
        for balance in &live {
            assert_eq!(balance.available(), Some(Fen::ZERO));
            assert_eq!(balance.debits_pending, Fen::ZERO);
        }
        assert_eq!(
            ledger.hold("H0x0").unwrap().map(|h| h.state),
            Some(HoldState::Posted)
        );
        let size = ledger.tree_size();
        assert_eq!(size, u64::try_from(ELDERS + posted).unwrap());
        drop(ledger);

        let summary = crate::audit::verify_store(dir.path()).unwrap();
        assert_eq!(summary.entries, size);
        let reopened = Ledger::open(dir.path(), clock, Verify::Full).unwrap();
        assert_eq!(spent(&reopened), live);
    }
}

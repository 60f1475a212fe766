//! The ledger handle: opens the store and rebuilds the state, runs the single writer thread
//! that sequences every command (group commit: all commands waiting when a batch starts
//! share one sled batch and one fsync), and serves reads concurrently from the state that is
//! already durable.

use crate::account::{AccountId, Balance};
use crate::checkpoint::{Checkpoint, LedgerKey};
use crate::clock::Clock;
use crate::command::{CommandError, Outcome, Request};
use crate::engine::{HoldRecord, IdempotencyRecord, Lookup, State, Tx};
use crate::fiscal::{format_timestamp, Year};
use crate::journal::{Entry, JournalError};
use crate::merkle::{Hash, MerkleError};
use crate::storage::{StorageError, Store, WriteSet};
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most requests one group commit takes.
pub const BATCH_REQUESTS_MAX: usize = 8192;
/// Most requests the submit queue holds before submitters wait.
pub const QUEUE_JOBS_MAX: usize = 65_536;
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
}

struct StoreLookup<'a>(&'a Store);

fn storage_error(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

impl Lookup for StoreLookup<'_> {
    fn hold(&self, hold_id: &str) -> Result<Option<HoldRecord>, CommandError> {
        match self.0.hold(hold_id).map_err(storage_error)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(storage_error),
        }
    }
    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, CommandError> {
        match self.0.idempotency(key).map_err(storage_error)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
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
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(&writer_shared, &receiver))
            .expect("spawning the writer thread at start-up");
        Ledger {
            shared,
            sender: Some(sender),
            writer: Some(writer),
        }
    }

    fn send(&self, job: Job) {
        let refused = match &self.sender {
            Some(sender) => sender.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = refused {
            match job {
                Job::Each(requests, reply) => reply(
                    requests
                        .iter()
                        .map(|_| Err(CommandError::Stopped))
                        .collect(),
                ),
                Job::Atomic(_, _, reply) => reply(Err(CommandError::Stopped)),
            }
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
        let (tx, rx) = crossbeam_channel::bounded(1);
        let n = requests.len();
        self.submit_each_with(requests, move |r| {
            let _ = tx.send(r);
        });
        rx.recv()
            .unwrap_or_else(|_| (0..n).map(|_| Err(CommandError::Stopped)).collect())
    }

    /// Submits an all-or-nothing group and waits until it is durable.
    pub fn submit_atomic(&self, requests: Vec<Request>, records: Vec<Record>) -> AtomicResult {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit_atomic_with(requests, records, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(CommandError::Stopped))
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

    pub fn inclusion_proof(&self, seq: u64, tree_size: u64) -> Result<Vec<Hash>, MerkleError> {
        read_state(&self.shared)
            .merkle()
            .inclusion_proof(seq, tree_size)
    }

    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, MerkleError> {
        read_state(&self.shared)
            .merkle()
            .consistency_proof(from, to)
    }

    pub fn root_at(&self, size: u64) -> Result<Hash, MerkleError> {
        read_state(&self.shared).merkle().root_at(size)
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
    fn drop(&mut self) {
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
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
        let hold: HoldRecord =
            serde_json::from_slice(&item?).map_err(|e| OpenError::Hold(e.to_string()))?;
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

fn writer_loop(shared: &Shared, receiver: &Receiver<Job>) {
    loop {
        let first = match receiver.recv_timeout(EXPIRY_POLL) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut jobs = Vec::new();
        let mut count = 0;
        if let Some(job) = first {
            count += job.len();
            jobs.push(job);
            while count < BATCH_REQUESTS_MAX {
                match receiver.try_recv() {
                    Ok(job) => {
                        count += job.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        } else {
            let now = shared.clock.now();
            if !read_state(shared).has_due_holds(now) {
                continue;
            }
        }
        if !run_batch(shared, jobs) {
            shared.stopped.store(true, Ordering::SeqCst);
            return;
        }
    }
}

enum Done {
    Each(Results, Box<dyn FnOnce(Results) + Send>),
    Atomic(AtomicResult, Box<dyn FnOnce(AtomicResult) + Send>),
}

/// Applies, persists and publishes one batch; false when storage failed (the writer stops:
/// the in-memory overlay can no longer be trusted to match the disk).
fn run_batch(shared: &Shared, jobs: Vec<Job>) -> bool {
    let lookup = StoreLookup(&shared.store);
    let (delta, done, records) = {
        let state = read_state(shared);
        let now = shared
            .clock
            .now()
            .max(state.last_time().unwrap_or(DateTime::<Utc>::MIN_UTC));
        let mut tx = Tx::new(&state, &lookup, now);
        tx.expire_due();
        let mut done = Vec::with_capacity(jobs.len());
        let mut records = Vec::new();
        for job in jobs {
            match job {
                Job::Each(requests, reply) => {
                    let results = requests.iter().map(|r| tx.apply(r)).collect();
                    done.push(Done::Each(results, reply));
                }
                Job::Atomic(requests, job_records, reply) => {
                    let result = tx.apply_all(&requests);
                    if result.is_ok() {
                        records.extend(job_records);
                    }
                    done.push(Done::Atomic(result, reply));
                }
            }
        }
        (tx.finish(), done, records)
    };
    let mut set = WriteSet {
        entries: delta.entries.iter().map(|e| (e.seq, e.to_line())).collect(),
        holds: delta
            .holds
            .values()
            .map(|h| (h.hold_id.clone(), encode(h)))
            .collect(),
        idempotency: delta
            .idempotency
            .iter()
            .map(|(k, r)| (k.clone(), encode(r)))
            .collect(),
        closed_years: delta.closed_years.clone(),
        last_time: None,
        records,
    };
    if !set.is_empty() {
        set.last_time = Some(delta.now.timestamp());
        if let Err(e) = shared.store.commit(set) {
            // Nothing of this batch may be acknowledged: it may or may not be on disk.
            let message = format!("commit failed, ledger stopped: {e}");
            for d in done {
                match d {
                    Done::Each(results, reply) => reply(
                        results
                            .iter()
                            .map(|_| Err(CommandError::Storage(message.clone())))
                            .collect(),
                    ),
                    Done::Atomic(_, reply) => reply(Err(CommandError::Storage(message.clone()))),
                }
            }
            return false;
        }
    }
    shared
        .state
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .merge(delta);
    for d in done {
        match d {
            Done::Each(results, reply) => reply(results),
            Done::Atomic(result, reply) => reply(result),
        }
    }
    true
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records of owned strings and integers serialise")
}

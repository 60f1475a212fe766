//! Durable storage on sled 0.34.7: the journal, hold records, idempotency records, closed
//! years and the caller's own records, all in one sled tree under key prefixes, written as
//! one atomic batch per group commit and made durable with fsync before anyone is told.
//! sled types never leave this module, so a second backend can sit behind the same API.
//!
//! Durability: every `write` is applied to sled and appended as one frame to the write-ahead
//! log (`wal`); `sync` is one `fdatasync` of the log. sled itself is made durable by a
//! checkpoint thread, a whole log file at a time, before that file is written over; opening
//! replays the log into sled. A checkpoint: sled 0.34.7's `flush()` ends in
//! `sync_file_range`, which is not a durability barrier (sled issue #1452), so it also calls
//! `sync_data` on sled's `db` file. sled writes any item bigger than a quarter of a segment
//! (a tree node with large values) to a file of its own under `blobs/`, with no fsync at all
//! (blob_io.rs), so a checkpoint also fsyncs every blob file not synced yet, and the `blobs`
//! directory when there are new ones. Segments are 8 MiB (the maximum is 16), so blobs stay
//! rare: items up to 2 MiB stay in the log. A `write` is durable only once a later `sync`
//! has returned; `commit` is both.
//!
//! The data file (format v4): every chunk's value (below) is appended to `ledger.data`, beside
//! the sled directory, and sled holds only a 12-byte pointer to it (offset, length). The
//! chunks are written once and never changed, and sled 0.34.7 writes what it holds several
//! times over (a leaf is rewritten whole every few inserts, split past 16 items, and moved
//! when its segment is cleaned): measured, the device got 7.1 KB per hold+post pair with the
//! values in sled, 4.0 KB with them in the data file, and the bench's peak RSS fell from 330
//! to 130 MiB. The data file is written by the committer right after the frame, synced by
//! every checkpoint before sled, and each frame names where its values went (`m/data_at`),
//! so opening writes the values of every frame again where they were (whatever of them a
//! crash lost), then cuts the file at sled's `m/data_end` (bytes past it were never
//! acknowledged). After a power loss sled may hold a batch whose frame and bytes were not
//! durable (a checkpoint flushes sled whole): opening rolls back every chunk whose bytes
//! start past the durable point (the newest frame's end, or the last checkpoint's synced
//! end, `m/data_durable`), and the years such a batch closed. A v3 store (values in sled) is migrated on open: values copied out in one
//! sled batch with the new format mark, then both log files emptied.
//!
//! Layout (format v2): sled pays about 10 µs of CPU for every key inserted at a random place
//! in its tree (measured: 11–17 µs per key with flush, 5 µs per key appended in order), which
//! at two random keys per command (its hold and its idempotency record) was most of the cost
//! of a command. So a group commit writes few keys, all appended in order:
//! - `e/{first seq}` — a chunk of up to `ENTRY_CHUNK_MAX` consecutive exported lines;
//! - `k/{chunk no}` — a chunk of up to `KEYED_CHUNK_MAX` hold and idempotency records, in
//!   the order written; a later version of a hold supersedes the earlier one;
//! - an in-memory index from the SHA-256 of each hold id and idempotency key (first 128 bits,
//!   domain-separated) to the chunk holding its latest version, rebuilt on open by one scan of
//!   `k/`; a lookup reads that chunk and finds the exact key in it, so a hit is exact and a
//!   key absent from the index is absent from the store (two keys would have to share 128
//!   bits of SHA-256 to be confused).
//! - `c/{segment}\0{chunk no}` — chunks of up to `KEYED_CHUNK_MAX` of the callers' records
//!   (or their deletions), one stream per segment (the key up to its first `/`), indexed
//!   like holds; `records(prefix)` reads the segment's chunks in order;
//! - `y/{year}` closed years, `m/` meta.

use crate::checkpoint::LedgerKey;
use crate::fiscal::Year;
use crate::wal;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Name of the sled directory inside the data dir.
const SLED_DIR: &str = "ledger.sled";
/// The Ed25519 seed of the ledger key, hex, mode 0600.
const KEY_FILE: &str = "ledger.key";
/// sled's page cache; bounds the store's share of RSS.
pub const CACHE_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

const ENTRY: &[u8] = b"e/";
const KEYED: &[u8] = b"k/";
const CLOSED_YEAR: &[u8] = b"y/";
const META_LAST_TIME: &[u8] = b"m/last_time";
const META_FORMAT: &[u8] = b"m/format";
/// Where the data file's bytes in use end (u64 BE), written with every batch that adds some.
const META_DATA_END: &[u8] = b"m/data_end";
/// Data file bytes below this (u64 BE) were synced by a checkpoint, which writes it.
const META_DATA_DURABLE: &[u8] = b"m/data_durable";
/// In a log frame only: where in the data file the frame's chunk values begin (u64 BE).
const META_DATA_AT: &[u8] = b"m/data_at";
const FORMAT_VERSION: &[u8] = b"ledger-store-v4";
/// The format before the data file: chunk values in sled itself. Opened and migrated.
const FORMAT_V3: &[u8] = b"ledger-store-v3";
/// The data file, beside the sled directory: every chunk's value, appended, never changed.
const DATA_FILE: &str = "ledger.data";
/// What sled holds for a chunk: its offset in the data file (u64 BE) and length (u32 BE).
const POINTER_LEN: usize = 12;
/// sled's segment size (fixed when a store is created): items over a quarter of it go to
/// blob files.
const SEGMENT_SIZE: usize = 8 << 20;
/// Exported lines per `e/` chunk: small enough that reading one entry reads little.
const ENTRY_CHUNK_MAX: usize = 64;
/// Hold and idempotency records per `k/` chunk.
const KEYED_CHUNK_MAX: usize = 32;
/// Record kinds inside a `k/` chunk.
const KIND_HOLD: u8 = b'h';
const KIND_IDEMPOTENCY: u8 = b'i';
/// A caller's record written (indexed under this kind) or deleted.
const KIND_RECORD: u8 = b'r';
const KIND_RECORD_DELETED: u8 = b'd';
/// Chunks of the callers' records: `c/{segment}\0{chunk no}`, where the segment is the
/// record key up to and including its first `/` (the whole key if it has none).
const RECORD_CHUNKS: &[u8] = b"c/";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("{0} already holds a ledger store")]
    AlreadyExists(PathBuf),
    #[error("{0} holds no ledger store (run init first)")]
    NotFound(PathBuf),
    #[error("store is damaged: {0}")]
    Corrupt(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

/// Whether sled holds a pointer into the data file under `k` (else the value itself).
fn is_chunk_key(k: &[u8]) -> bool {
    k.starts_with(ENTRY) || k.starts_with(KEYED) || k.starts_with(RECORD_CHUNKS)
}

fn encode_pointer(offset: u64, len: usize) -> [u8; POINTER_LEN] {
    let len = u32::try_from(len).expect("a chunk is far below 4 GiB");
    let mut pointer = [0; POINTER_LEN];
    pointer[..8].copy_from_slice(&offset.to_be_bytes());
    pointer[8..].copy_from_slice(&len.to_be_bytes());
    pointer
}

fn decode_pointer(v: &[u8]) -> Result<(u64, usize), StorageError> {
    let bad = || StorageError::Corrupt("a chunk pointer is not 12 bytes".into());
    let offset: [u8; 8] = v.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
    let len: [u8; 4] = v.get(8..).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
    let len = usize::try_from(u32::from_be_bytes(len)).map_err(|_| bad())?;
    Ok((u64::from_be_bytes(offset), len))
}

/// The 8 bytes of a stored integer (`what` names it in the error).
fn eight_bytes(v: &[u8], what: &str) -> Result<[u8; 8], StorageError> {
    v.try_into()
        .map_err(|_| StorageError::Corrupt(format!("bad {what}")))
}

fn decode_u64(v: &[u8], what: &str) -> Result<u64, StorageError> {
    eight_bytes(v, what).map(u64::from_be_bytes)
}

/// The u64 stored under `k`, 0 if none.
fn stored_u64(db: &sled::Db, k: &[u8], what: &str) -> Result<u64, StorageError> {
    db.get(k)?.map_or(Ok(0), |v| decode_u64(&v, what))
}

fn open_data(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(DATA_FILE);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))
}

fn entry_key(seq: u64) -> Vec<u8> {
    key(ENTRY, &seq.to_be_bytes())
}

/// Everything one group commit writes, as bytes; encoded by the caller.
#[derive(Debug, Default)]
pub struct WriteSet {
    /// (seq, exported JSON line)
    pub entries: Vec<(u64, Vec<u8>)>,
    pub holds: Vec<(String, Vec<u8>)>,
    pub idempotency: Vec<(String, Vec<u8>)>,
    pub closed_years: Vec<Year>,
    pub last_time: Option<i64>,
    /// The caller's own records (key, value or None to delete), stored under their own prefix.
    pub records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteSet {
    /// Adds the writes of the batch after this one (whose entries continue this one's seqs):
    /// where both write a key, `later`'s value is the one read back.
    pub fn append(&mut self, mut later: WriteSet) {
        debug_assert!(match (self.entries.last(), later.entries.first()) {
            (Some((last, _)), Some((first, _))) => *first == last + 1,
            _ => true,
        });
        self.entries.append(&mut later.entries);
        self.holds.append(&mut later.holds);
        self.idempotency.append(&mut later.idempotency);
        self.closed_years.append(&mut later.closed_years);
        self.records.append(&mut later.records);
        self.last_time = self.last_time.max(later.last_time);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.holds.is_empty()
            && self.idempotency.is_empty()
            && self.closed_years.is_empty()
            && self.records.is_empty()
    }
}

pub struct Store {
    db: sled::Db,
    /// The data file (read by anyone, appended to by the committer only).
    data: std::sync::Arc<File>,
    /// Where the data file's bytes in use end: the next chunk goes there (shared with the
    /// checkpoint thread, which records how far its sync reached).
    data_end: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// What makes sled durable; shared with the checkpoint thread.
    sled_sync: std::sync::Arc<SledSync>,
    /// Where the latest version of each hold and idempotency record is.
    index: std::sync::RwLock<KeyIndex>,
    /// The number of the next `k/` chunk.
    next_chunk: std::sync::atomic::AtomicU64,
    /// The log's writing end (only the committer writes).
    wal: std::sync::Mutex<wal::Writer>,
    /// Which log files are free to write over, and the checkpoint thread's failure.
    turns: std::sync::Arc<std::sync::Mutex<Turns>>,
    /// Log files to checkpoint or prepare; closed on drop.
    checkpoints: Option<crossbeam_channel::Sender<LogJob>>,
    /// Set on drop: a preparation under way stops.
    closing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
    /// The log syncer: a `write` hands it the log file to `fdatasync` while it applies the
    /// batch to sled, and `sync` collects the answers. Closed on drop.
    to_sync: Option<crossbeam_channel::Sender<std::sync::Arc<File>>>,
    synced: crossbeam_channel::Receiver<std::io::Result<()>>,
    /// Syncs asked for and not yet collected (only the committer writes and syncs).
    syncs_pending: std::sync::atomic::AtomicUsize,
    syncer: Option<std::thread::JoinHandle<()>>,
}

/// The state of the two log files.
#[derive(Debug)]
struct Turns {
    /// Whether every frame in the file is durable in sled (so it may be written over). Set
    /// false when the writer leaves a file, true when its checkpoint is done; the flag of
    /// the file being written is never read.
    free: [bool; 2],
    /// Whether the file is prepared (`wal::prepare`): frames up to `wal::file_target()`
    /// overwrite it. Set by the checkpoint thread.
    prepared: [bool; 2],
    /// Set when a preparation failed (a full disk, say): none is asked for again, and the
    /// log is appended to as before.
    no_preparing: bool,
    /// Set when a checkpoint failed: nothing more may be acknowledged.
    failure: Option<String>,
}

/// Work for the checkpoint thread on one log file: a checkpoint (the writer left it), then
/// preparing it; or preparing it only (a file not yet written by this store).
struct LogJob {
    file: usize,
    handle: std::sync::Arc<File>,
    checkpoint: bool,
}

/// sled's files and how to make them durable.
struct SledSync {
    db: sled::Db,
    /// The data file: synced before sled, whose pointers lead into it.
    data: std::sync::Arc<File>,
    /// The store's `data_end`.
    data_end: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// sled's log file, kept open to fsync it after each flush.
    log_file: File,
    /// sled's blob directory, and the blob files in it already fsynced.
    blobs_dir: PathBuf,
    blobs_synced: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

impl SledSync {
    /// Makes everything written to sled so far durable.
    fn checkpoint(&self) -> Result<(), StorageError> {
        // Every byte below `synced` is durable once the sync returns: recorded in sled, so
        // that an open after a power loss knows how far sled's chunks are backed.
        let synced = self.data_end.load(std::sync::atomic::Ordering::SeqCst);
        self.data
            .sync_data()
            .map_err(io_err(Path::new(DATA_FILE)))?;
        self.db
            .insert(META_DATA_DURABLE, &synced.to_be_bytes()[..])?;
        self.db.flush()?;
        self.sync_blobs()?;
        self.log_file
            .sync_data()
            .map_err(io_err(Path::new("ledger.sled/db")))
    }

    /// Fsyncs every blob file not synced before (and then the blob directory), returning
    /// how many. Files sled removed meanwhile are skipped.
    fn sync_blobs(&self) -> Result<usize, StorageError> {
        let listing = match std::fs::read_dir(&self.blobs_dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(&self.blobs_dir)(e)),
        };
        let mut synced = self.blobs_synced.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = std::collections::HashSet::new();
        let mut new = 0;
        for item in listing {
            let name = item.map_err(io_err(&self.blobs_dir))?.file_name();
            if !synced.contains(&name) {
                let path = self.blobs_dir.join(&name);
                match File::open(&path).and_then(|f| f.sync_all()) {
                    Ok(()) => new += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            present.insert(name);
        }
        // Forget the names sled has removed, so the set stays the size of the directory.
        *synced = present;
        if new > 0 {
            fsync_dir(&self.blobs_dir)?;
        }
        Ok(new)
    }
}

/// The checkpoint thread: for each log file handed over, makes sled durable if asked
/// (a failure is recorded and ends the thread: the file stays taken, `sync` fails), then
/// prepares the file and marks it free.
fn checkpoint_loop(
    sled_sync: &SledSync,
    turns: &std::sync::Mutex<Turns>,
    jobs: &crossbeam_channel::Receiver<LogJob>,
    closing: &std::sync::atomic::AtomicBool,
) {
    while let Ok(job) = jobs.recv() {
        if job.checkpoint {
            if let Err(e) = sled_sync.checkpoint() {
                let mut turns = turns.lock().unwrap_or_else(|p| p.into_inner());
                turns.failure = Some(format!("checkpoint failed: {e}"));
                return;
            }
        }
        let no_preparing = turns.lock().unwrap_or_else(|p| p.into_inner()).no_preparing;
        // Only a speed-up: a file that could not be prepared is appended to.
        let prepared = if no_preparing {
            Err(())
        } else {
            wal::prepare(&job.handle, wal::file_target(), closing).map_err(|_| ())
        };
        let mut turns = turns.lock().unwrap_or_else(|p| p.into_inner());
        match prepared {
            Ok(prepared) => turns.prepared[job.file] = prepared,
            Err(()) => {
                turns.prepared[job.file] = false;
                turns.no_preparing = true;
            }
        }
        turns.free[job.file] = true;
    }
}

/// The first 128 bits of SHA-256 over a kind byte and a key, as two words: a `u128` is
/// aligned to 16 bytes, which made each index entry (hash and chunk number) 32 bytes
/// instead of 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyHash([u64; 2]);

impl std::hash::Hash for KeyHash {
    /// The low word alone: the bits of a SHA-256 prefix are uniform already (`KeyHasher`).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[1]);
    }
}

/// A key that fits one block with its kind byte (most do) is hashed by one call of the
/// compression function (`merkle::sha256_of_padded`); `ring::digest::Context` cost more in
/// set-up and finish than the block itself, and the writer hashes three keys per charge,
/// opening a store every key ever written.
fn key_hash(kind: u8, k: &[u8]) -> KeyHash {
    let digest: [u8; 32] = match crate::merkle::one_block(&[&[kind], k]) {
        Some(block) => crate::merkle::sha256_of_padded(&block),
        None => {
            use sha2::Digest;
            sha2::Sha256::new()
                .chain_update([kind])
                .chain_update(k)
                .finalize()
                .into()
        }
    };
    let word = |at: usize| {
        u64::from_be_bytes(
            digest[at..at + 8]
                .try_into()
                .expect("8 of the digest's 32 bytes"),
        )
    };
    KeyHash([word(0), word(8)])
}

/// Hashes a `KeyHash` (already uniform) by taking its low word as it is.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyIndex = std::collections::HashMap<KeyHash, u64, std::hash::BuildHasherDefault<KeyHasher>>;

/// Appends a length-prefixed byte string.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("records and lines are far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a length-prefixed byte string from `data` at `*at`.
fn take_bytes<'a>(data: &'a [u8], at: &mut usize) -> Result<&'a [u8], StorageError> {
    let bad = || StorageError::Corrupt("a stored chunk is cut short".into());
    let len_bytes: [u8; 4] = data
        .get(*at..*at + 4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| bad())?;
    let start = *at + 4;
    let bytes = data.get(start..start + len).ok_or_else(bad)?;
    *at = start + len;
    Ok(bytes)
}

/// A record of a `k/` chunk: (kind, key, value).
type KeyedRecord<'a> = (u8, &'a [u8], &'a [u8]);

/// The records of a `k/` chunk, in the order written.
fn keyed_records(chunk: &[u8]) -> Result<Vec<KeyedRecord<'_>>, StorageError> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < chunk.len() {
        let kind = chunk[at];
        at += 1;
        let k = take_bytes(chunk, &mut at)?;
        let v = take_bytes(chunk, &mut at)?;
        records.push((kind, k, v));
    }
    Ok(records)
}

/// The lines of an `e/` chunk, in seq order.
fn chunk_lines(chunk: &[u8]) -> Result<Vec<&[u8]>, StorageError> {
    let mut lines = Vec::new();
    let mut at = 0;
    while at < chunk.len() {
        lines.push(take_bytes(chunk, &mut at)?);
    }
    Ok(lines)
}

/// The part of a record key that names its chunk stream: up to and including the first `/`.
fn segment(k: &[u8]) -> &[u8] {
    match k.iter().position(|&b| b == b'/') {
        Some(slash) => &k[..=slash],
        None => k,
    }
}

/// `c/{segment}\0`: the prefix of a segment's record chunks.
fn record_chunks_prefix(segment: &[u8]) -> Vec<u8> {
    let mut k = key(RECORD_CHUNKS, segment);
    k.push(0);
    k
}

fn record_chunk_key(segment: &[u8], chunk_no: u64) -> Vec<u8> {
    let mut k = record_chunks_prefix(segment);
    k.extend_from_slice(&chunk_no.to_be_bytes());
    k
}

/// The chunk number at the end of a record chunk key.
fn record_chunk_no(k: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = k
        .len()
        .checked_sub(8)
        .and_then(|start| k[start..].try_into().ok())
        .ok_or_else(|| StorageError::Corrupt("a record chunk key is cut short".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

fn seq_of_key(k: &[u8], prefix: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = k
        .get(prefix.len()..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt("a chunk key is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// How long opening waits for sled's file lock to be released. Dropping a store returns
/// before sled's own IO threads have let go of the file (in the same process), so a store
/// closed and reopened at once can find it still locked for a moment (13–100 ms seen in the
/// crash test). Another process holding the store keeps it locked, and then opening fails
/// after this wait.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(5);

fn open_sled(dir: &Path) -> Result<(sled::Db, File), StorageError> {
    let sled_dir = dir.join(SLED_DIR);
    let config = sled::Config::new()
        .path(&sled_dir)
        .cache_capacity(CACHE_CAPACITY_BYTES)
        .segment_size(SEGMENT_SIZE)
        .flush_every_ms(None);
    let started = std::time::Instant::now();
    let db = loop {
        match config.open() {
            // sled reports the lock as ErrorKind::Other with this text (config.rs).
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(LOCK_RETRY);
            }
            other => break other?,
        }
    };
    let log_path = sled_dir.join("db");
    let log_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    Ok((db, log_file))
}

impl Store {
    /// Creates a new store in `dir` (created if absent) with a fresh ledger key.
    pub fn create(dir: &Path, seed: &[u8; 32]) -> Result<(Store, LedgerKey), StorageError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        if dir.join(SLED_DIR).exists() || dir.join(KEY_FILE).exists() {
            return Err(StorageError::AlreadyExists(dir.to_path_buf()));
        }
        let key = LedgerKey::from_seed(seed).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        write_key_file(dir, seed)?;
        let (db, log_file) = open_sled(dir)?;
        let data = open_data(dir)?;
        data.set_len(0).map_err(io_err(&dir.join(DATA_FILE)))?;
        let writer = wal::Writer::open(dir, 0, 1, true).map_err(io_err(dir))?;
        let store = Store::new(db, log_file, data, 0, dir, writer);
        store.db.insert(META_FORMAT, FORMAT_VERSION)?;
        store.sled_sync.checkpoint()?;
        fsync_dir(&dir.join(SLED_DIR))?;
        fsync_dir(dir)?;
        Ok((store, key))
    }

    /// Opens an existing store.
    pub fn open(dir: &Path) -> Result<(Store, LedgerKey), StorageError> {
        if !dir.join(SLED_DIR).exists() || !dir.join(KEY_FILE).exists() {
            return Err(StorageError::NotFound(dir.to_path_buf()));
        }
        let key = read_key_file(dir)?;
        let (db, log_file) = open_sled(dir)?;
        let v3 = match db.get(META_FORMAT)? {
            Some(v) if v.as_ref() == FORMAT_VERSION => false,
            Some(v) if v.as_ref() == FORMAT_V3 => true,
            other => {
                return Err(StorageError::Corrupt(format!(
                    "unknown store format {:?}",
                    other.map(|v| String::from_utf8_lossy(&v).into_owned())
                )))
            }
        };
        let data_path = dir.join(DATA_FILE);
        if !v3 && !data_path.exists() {
            return Err(StorageError::Corrupt(format!(
                "{} is missing",
                data_path.display()
            )));
        }
        let data = open_data(dir)?;
        // Replay the log: every batch whose frame is there, again (see `wal`), its chunk
        // values written again where they went in the data file. (A v3 store's frames
        // carry no data offset: their values go into sled as they are, as v3 had them.)
        let recovered = wal::recover(dir).map_err(io_err(dir))?;
        let mut last_time = last_time_in(&db)?;
        // Where sled's batches end before the replay (which writes each frame's end).
        let sled_end = stored_u64(&db, META_DATA_END, "data end")?;
        let mut replayed_end = None;
        for frame in &recovered.frames {
            let mut batch = sled::Batch::default();
            let mut data_at = match frame.ops.iter().find(|(k, _)| k == META_DATA_AT) {
                Some((_, v)) => Some(decode_u64(v, "data offset in a log frame")?),
                None => None,
            };
            for (k, v) in &frame.ops {
                if k.as_slice() == META_DATA_AT {
                    continue;
                }
                if k.as_slice() == META_LAST_TIME {
                    let logged = decode_time(v)?;
                    if last_time.is_some_and(|stored| stored >= logged) {
                        continue;
                    }
                    last_time = Some(logged);
                }
                match data_at.as_mut() {
                    Some(at) if is_chunk_key(k) => {
                        use std::os::unix::fs::FileExt;
                        data.write_all_at(v, *at).map_err(io_err(&data_path))?;
                        batch.insert(k.as_slice(), &encode_pointer(*at, v.len())[..]);
                        *at += v.len() as u64;
                    }
                    _ => batch.insert(k.as_slice(), v.as_slice()),
                }
            }
            if let Some(end) = data_at {
                batch.insert(META_DATA_END, &end.to_be_bytes()[..]);
                replayed_end = Some(end);
            }
            db.apply_batch(batch)?;
        }
        if !v3 {
            roll_back_past(&db, sled_end, replayed_end)?;
        }
        // What lies past the end sled knows of was never acknowledged: cut it off. Less
        // than that, after `roll_back_past`, is damage: refuse, naming it.
        let data_end = stored_u64(&db, META_DATA_END, "data end")?;
        let data_len = data.metadata().map_err(io_err(&data_path))?.len();
        if data_len < data_end {
            return Err(StorageError::Corrupt(format!(
                "{} holds {data_len} bytes, the store needs {data_end}",
                data_path.display()
            )));
        }
        data.set_len(data_end).map_err(io_err(&data_path))?;
        let next_id = recovered.frames.last().map_or(1, |f| f.id + 1);
        let first_file = recovered.newest_file.map_or(0, |newest| 1 - newest);
        let writer = wal::Writer::open(dir, first_file, next_id, false).map_err(io_err(dir))?;
        let store = Store::new(db, log_file, data, data_end, dir, writer);
        // Blobs written before a crash may never have been synced, and the replay is in
        // sled and the data file's page cache only: make it all durable before either log
        // file is written over.
        store.sled_sync.checkpoint()?;
        fsync_dir(dir)?;
        if v3 {
            store.migrate_v3(dir, next_id)?;
        }
        store.rebuild_index()?;
        Ok((store, key))
    }

    /// Moves a v3 store's chunk values out of sled into the data file, leaving pointers,
    /// in one sled batch with the new format mark, after the data file is synced; then
    /// empties both log files (their v3 frames must never be replayed into a v4 store).
    /// A crash before the batch leaves a v3 store and data to be overwritten.
    fn migrate_v3(&self, dir: &Path, next_id: u64) -> Result<(), StorageError> {
        use std::os::unix::fs::FileExt;
        let data_path = dir.join(DATA_FILE);
        self.data.set_len(0).map_err(io_err(&data_path))?;
        let mut batch = sled::Batch::default();
        let mut end = 0u64;
        let mut pending: Vec<u8> = Vec::new();
        for prefix in [ENTRY, KEYED, RECORD_CHUNKS] {
            for item in self.db.scan_prefix(prefix) {
                let (k, v) = item?;
                batch.insert(k, &encode_pointer(end + pending.len() as u64, v.len())[..]);
                pending.extend_from_slice(&v);
                if pending.len() >= 8 << 20 {
                    self.data
                        .write_all_at(&pending, end)
                        .map_err(io_err(&data_path))?;
                    end += pending.len() as u64;
                    pending.clear();
                }
            }
        }
        self.data
            .write_all_at(&pending, end)
            .map_err(io_err(&data_path))?;
        end += pending.len() as u64;
        self.data.sync_data().map_err(io_err(&data_path))?;
        batch.insert(META_DATA_END, &end.to_be_bytes()[..]);
        batch.insert(META_FORMAT, FORMAT_VERSION);
        self.db.apply_batch(batch)?;
        self.data_end
            .store(end, std::sync::atomic::Ordering::SeqCst);
        self.sled_sync.checkpoint()?;
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        *wal = wal::Writer::open(dir, 0, next_id, true).map_err(io_err(dir))?;
        for file in 0..2 {
            wal.file(file).sync_all().map_err(io_err(&wal.path(file)))?;
        }
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.prepared = [false, false];
        Ok(())
    }

    /// The value of the chunk a sled item points at, read from the data file.
    fn chunk(&self, pointer: &[u8]) -> Result<Vec<u8>, StorageError> {
        use std::os::unix::fs::FileExt;
        let (offset, len) = decode_pointer(pointer)?;
        let mut value = vec![0; len];
        self.data.read_exact_at(&mut value, offset).map_err(|e| {
            StorageError::Corrupt(format!(
                "{DATA_FILE}: {len} bytes at {offset} cannot be read: {e}"
            ))
        })?;
        Ok(value)
    }

    fn new(
        db: sled::Db,
        log_file: File,
        data: File,
        data_end: u64,
        dir: &Path,
        writer: wal::Writer,
    ) -> Store {
        let data = std::sync::Arc::new(data);
        let data_end = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(data_end));
        let sled_sync = std::sync::Arc::new(SledSync {
            db: db.clone(),
            data: std::sync::Arc::clone(&data),
            data_end: std::sync::Arc::clone(&data_end),
            log_file,
            blobs_dir: dir.join(SLED_DIR).join("blobs"),
            blobs_synced: std::sync::Mutex::new(std::collections::HashSet::new()),
        });
        // A file whose size cannot be read counts as unprepared: preparing it will tell.
        let prepared = [0, 1].map(|f| wal::is_prepared(&writer.file(f)).unwrap_or(false));
        let turns = std::sync::Arc::new(std::sync::Mutex::new(Turns {
            free: [true, true],
            prepared,
            no_preparing: false,
            failure: None,
        }));
        let closing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (checkpoints, jobs) = crossbeam_channel::unbounded();
        let checkpointer = {
            let sled_sync = std::sync::Arc::clone(&sled_sync);
            let turns = std::sync::Arc::clone(&turns);
            let closing = std::sync::Arc::clone(&closing);
            std::thread::Builder::new()
                .name("ledger-checkpoint".into())
                .spawn(move || checkpoint_loop(&sled_sync, &turns, &jobs, &closing))
                .expect("spawning the checkpoint thread")
        };
        let (to_sync, files_to_sync) = crossbeam_channel::unbounded::<std::sync::Arc<File>>();
        let (synced_sender, synced) = crossbeam_channel::unbounded();
        let syncer = std::thread::Builder::new()
            .name("ledger-wal-sync".into())
            .spawn(move || {
                while let Ok(file) = files_to_sync.recv() {
                    if synced_sender.send(file.sync_data()).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the log syncer");
        Store {
            db,
            data,
            data_end,
            sled_sync,
            index: std::sync::RwLock::new(KeyIndex::default()),
            next_chunk: std::sync::atomic::AtomicU64::new(0),
            wal: std::sync::Mutex::new(writer),
            turns,
            checkpoints: Some(checkpoints),
            closing,
            checkpointer: Some(checkpointer),
            to_sync: Some(to_sync),
            synced,
            syncs_pending: std::sync::atomic::AtomicUsize::new(0),
            syncer: Some(syncer),
        }
    }

    /// Makes the write-ahead log leave a file for the other once it holds `bytes`, in every
    /// store of this process from now on (16 MiB unless set). For tests, which set it small
    /// so that turns and checkpoints happen often, crashes included.
    #[doc(hidden)]
    pub fn set_log_file_target(bytes: u64) {
        wal::set_file_target(bytes);
    }

    /// Fsyncs every blob file of sled's not synced before, returning how many.
    pub fn sync_blobs(&self) -> Result<usize, StorageError> {
        self.sled_sync.sync_blobs()
    }

    /// Indexes every `k/` chunk, in order (so the latest version of a key wins).
    fn rebuild_index(&self) -> Result<(), StorageError> {
        let mut index = KeyIndex::default();
        let mut next = 0;
        for item in self.db.scan_prefix(KEYED) {
            let (k, pointer) = item?;
            let chunk = self.chunk(&pointer)?;
            let chunk_no = seq_of_key(&k, KEYED)?;
            for (kind, key, _) in keyed_records(&chunk)? {
                index.insert(key_hash(kind, key), chunk_no);
            }
            next = next.max(chunk_no + 1);
        }
        for item in self.db.scan_prefix(RECORD_CHUNKS) {
            let (k, pointer) = item?;
            let chunk = self.chunk(&pointer)?;
            let chunk_no = record_chunk_no(&k)?;
            for (_, key, _) in keyed_records(&chunk)? {
                index.insert(key_hash(KIND_RECORD, key), chunk_no);
            }
            next = next.max(chunk_no + 1);
        }
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = index;
        self.next_chunk
            .store(next, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The latest value stored for (`kind`, `k`), if any.
    fn keyed(&self, kind: u8, k: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let chunk_no = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            match index.get(&key_hash(kind, k)) {
                Some(&n) => n,
                None => return Ok(None),
            }
        };
        let chunk_key = if kind == KIND_RECORD {
            record_chunk_key(segment(k), chunk_no)
        } else {
            key(KEYED, &chunk_no.to_be_bytes())
        };
        let pointer = self
            .db
            .get(chunk_key)?
            .ok_or_else(|| StorageError::Corrupt(format!("chunk {chunk_no} is missing")))?;
        let chunk = self.chunk(&pointer)?;
        // The latest version in the chunk: a hold can change twice in one batch.
        let same_kind = |kd: u8| kd == kind || (kind == KIND_RECORD && kd == KIND_RECORD_DELETED);
        Ok(keyed_records(&chunk)?
            .into_iter()
            .rev()
            .find(|(kd, key, _)| same_kind(*kd) && *key == k)
            .filter(|(kd, _, _)| *kd != KIND_RECORD_DELETED)
            .map(|(_, _, v)| v.to_vec()))
    }

    /// Whether `dir` holds a store.
    pub fn exists(dir: &Path) -> bool {
        dir.join(SLED_DIR).exists() || dir.join(KEY_FILE).exists()
    }

    /// Makes every `write` so far durable: waits for the `fdatasync` of the write-ahead
    /// log each `write` started.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.check_checkpoints()?;
        let mut result = Ok(());
        let pending = self
            .syncs_pending
            .swap(0, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..pending {
            let answer = self
                .synced
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("the log syncer stopped")));
            if let Err(e) = answer {
                result = Err(io_err(Path::new("ledger.wal"))(e));
            }
        }
        result
    }

    /// Fails once a checkpoint has failed: sled may then lack what the log will lose.
    fn check_checkpoints(&self) -> Result<(), StorageError> {
        let turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        match &turns.failure {
            Some(failure) => Err(StorageError::Corrupt(failure.clone())),
            None => Ok(()),
        }
    }

    /// Appends one batch's insertions to the log, first turning to the other file if that
    /// one is free and this one full, or this one unprepared and that one prepared (and
    /// handing this one to the checkpoint thread); else, once this unprepared file holds
    /// `wal::PREPARE_AFTER`, asking for the other, if free, to be prepared.
    fn log(&self, ops: &[(&[u8], &[u8])]) -> Result<(), StorageError> {
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let job = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            let current = wal.current();
            let next = 1 - current;
            let early = !turns.prepared[current] && turns.prepared[next];
            if turns.free[next] && (wal.wants_turn() || early) {
                let left = wal.turn();
                turns.free[left] = false;
                // Every frame of `left` is already in sled: a checkpoint from now on covers it.
                Some(LogJob {
                    file: left,
                    handle: wal.file(left),
                    checkpoint: true,
                })
            } else if turns.free[next]
                && !turns.prepared[next]
                && !turns.no_preparing
                && wal.offset() >= wal::PREPARE_AFTER.min(wal::file_target())
            {
                turns.free[next] = false;
                Some(LogJob {
                    file: next,
                    handle: wal.file(next),
                    checkpoint: false,
                })
            } else {
                None
            }
        };
        if let (Some(job), Some(checkpoints)) = (job, &self.checkpoints) {
            // A closed channel means the thread failed; `sync` reports that.
            let _ = checkpoints.send(job);
        }
        let file = wal.current();
        wal.append(ops).map_err(|e| io_err(&wal.path(file))(e))?;
        // The frame is written: the syncer makes it durable while the batch goes into sled.
        if let Some(to_sync) = &self.to_sync {
            if to_sync.send(wal.current_file()).is_ok() {
                self.syncs_pending
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return Ok(());
            }
        }
        // The syncer is gone (it cannot be, while the store lives): sync here.
        wal.sync().map_err(|e| io_err(&wal.path(file))(e))
    }

    /// Writes one group commit atomically and returns only once it is on disk.
    pub fn commit(&self, set: WriteSet) -> Result<(), StorageError> {
        self.write(set)?;
        self.sync()
    }

    /// Writes one group commit as one atomic sled batch, not yet durable: readers of this
    /// store may see it at once, a crash may lose it until `sync` returns. An empty set
    /// writes nothing.
    pub fn write(&self, set: WriteSet) -> Result<(), StorageError> {
        if set.is_empty() {
            return Ok(());
        }
        // Every insertion of the batch: logged, then applied to sled as one atomic batch.
        let mut ops: Vec<wal::Op> = Vec::new();
        for chunk in set.entries.chunks(ENTRY_CHUNK_MAX) {
            let mut value = Vec::with_capacity(chunk.iter().map(|(_, l)| l.len() + 4).sum());
            for (i, (seq, line)) in chunk.iter().enumerate() {
                debug_assert_eq!(*seq, chunk[0].0 + i as u64, "entries are consecutive");
                put_bytes(&mut value, line);
            }
            ops.push((entry_key(chunk[0].0), value));
        }
        let keyed: Vec<KeyedRecord<'_>> = set
            .holds
            .iter()
            .map(|(id, v)| (KIND_HOLD, id.as_bytes(), v.as_slice()))
            .chain(
                set.idempotency
                    .iter()
                    .map(|(k, v)| (KIND_IDEMPOTENCY, k.as_bytes(), v.as_slice())),
            )
            .collect();
        let chunks = u64::try_from(keyed.len().div_ceil(KEYED_CHUNK_MAX)).unwrap_or(u64::MAX);
        // Only the committer writes, so numbers taken here are used in order.
        let first_chunk = self
            .next_chunk
            .fetch_add(chunks, std::sync::atomic::Ordering::SeqCst);
        let mut indexed = Vec::with_capacity(keyed.len());
        for (chunk_no, chunk) in (first_chunk..).zip(keyed.chunks(KEYED_CHUNK_MAX)) {
            let mut value = Vec::new();
            for (kind, k, v) in chunk {
                value.push(*kind);
                put_bytes(&mut value, k);
                put_bytes(&mut value, v);
                indexed.push((key_hash(*kind, k), chunk_no));
            }
            ops.push((key(KEYED, &chunk_no.to_be_bytes()), value));
        }
        // A closed year's value: where its batch's data begins, so that an open can roll
        // the close back with the batch (see `open`). Empty in stores written before.
        let base = self.data_end.load(std::sync::atomic::Ordering::SeqCst);
        for year in set.closed_years {
            ops.push((
                key(CLOSED_YEAR, year.to_string().as_bytes()),
                base.to_be_bytes().to_vec(),
            ));
        }
        if let Some(t) = set.last_time {
            ops.push((META_LAST_TIME.to_vec(), t.to_be_bytes().to_vec()));
        }
        // The callers' records, in chunks per segment, in the order given.
        let mut segments: Vec<(&[u8], Vec<KeyedRecord<'_>>)> = Vec::new();
        for (k, value) in &set.records {
            let record = match value {
                Some(v) => (KIND_RECORD, k.as_slice(), v.as_slice()),
                None => (KIND_RECORD_DELETED, k.as_slice(), &b""[..]),
            };
            let seg = segment(k);
            match segments.iter_mut().find(|(s, _)| *s == seg) {
                Some((_, records)) => records.push(record),
                None => segments.push((seg, vec![record])),
            }
        }
        for (seg, records) in &segments {
            for chunk in records.chunks(KEYED_CHUNK_MAX) {
                let chunk_no = self
                    .next_chunk
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut value = Vec::new();
                for (kind, k, v) in chunk {
                    value.push(*kind);
                    put_bytes(&mut value, k);
                    put_bytes(&mut value, v);
                    indexed.push((key_hash(KIND_RECORD, k), chunk_no));
                }
                ops.push((record_chunk_key(seg, chunk_no), value));
            }
        }
        // Chunk values go to the data file, one write after the frame; sled gets pointers.
        // Only the committer writes, so the end read above is still the end when written.
        let mut batch = sled::Batch::default();
        let mut values: Vec<&[u8]> = Vec::new();
        let mut end = base;
        for (k, v) in &ops {
            if is_chunk_key(k) {
                batch.insert(k.as_slice(), &encode_pointer(end, v.len())[..]);
                values.push(v);
                end += v.len() as u64;
            } else {
                batch.insert(k.as_slice(), v.as_slice());
            }
        }
        let data_at = base.to_be_bytes();
        let mut borrowed: Vec<(&[u8], &[u8])> = ops
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        if !values.is_empty() {
            borrowed.push((META_DATA_AT, &data_at));
            batch.insert(META_DATA_END, &end.to_be_bytes()[..]);
        }
        self.log(&borrowed)?;
        if !values.is_empty() {
            use std::os::unix::fs::FileExt;
            let joined = values.concat();
            self.data
                .write_all_at(&joined, base)
                .map_err(io_err(Path::new(DATA_FILE)))?;
            self.data_end
                .store(end, std::sync::atomic::Ordering::SeqCst);
        }
        self.db.apply_batch(batch)?;
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        index.extend(indexed);
        Ok(())
    }

    pub fn entry_line(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(item) = self.db.range(ENTRY.to_vec()..=entry_key(seq)).next_back() else {
            return Ok(None);
        };
        let (k, pointer) = item?;
        let first = seq_of_key(&k, ENTRY)?;
        let chunk = self.chunk(&pointer)?;
        let lines = chunk_lines(&chunk)?;
        Ok(usize::try_from(seq - first)
            .ok()
            .and_then(|i| lines.get(i))
            .map(|line| line.to_vec()))
    }

    /// Entries from `from` on, in seq order, as (seq, line).
    pub fn entries_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), StorageError>> + '_ {
        // The chunk holding `from` starts at or before it.
        let start = match self.db.range(ENTRY.to_vec()..=entry_key(from)).next_back() {
            Some(Ok((k, _))) => k.to_vec(),
            _ => entry_key(from),
        };
        self.db
            .range(start..key(ENTRY, &[0xff; 9]))
            .flat_map(move |item| {
                let lines = item.map_err(StorageError::from).and_then(|(k, pointer)| {
                    let first = seq_of_key(&k, ENTRY)?;
                    let chunk = self.chunk(&pointer)?;
                    Ok((first..)
                        .zip(chunk_lines(&chunk)?)
                        .filter(|(seq, _)| *seq >= from)
                        .map(|(seq, line)| Ok((seq, line.to_vec())))
                        .collect::<Vec<_>>())
                });
                match lines {
                    Ok(lines) => lines,
                    Err(e) => vec![Err(e)],
                }
            })
    }

    pub fn hold(&self, hold_id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.keyed(KIND_HOLD, hold_id.as_bytes())
    }

    /// The latest version of every hold, in the order last written.
    pub fn holds(&self) -> impl Iterator<Item = Result<Vec<u8>, StorageError>> + '_ {
        self.db.scan_prefix(KEYED).flat_map(move |item| {
            let latest = item.map_err(StorageError::from).and_then(|(k, pointer)| {
                let chunk_no = seq_of_key(&k, KEYED)?;
                let chunk = self.chunk(&pointer)?;
                let index = self.index.read().unwrap_or_else(|p| p.into_inner());
                let records = keyed_records(&chunk)?;
                // Within a chunk, a hold's last record is its latest version there.
                Ok(records
                    .iter()
                    .enumerate()
                    .filter(|(i, (kind, key, _))| {
                        *kind == KIND_HOLD
                            && index.get(&key_hash(*kind, key)) == Some(&chunk_no)
                            && !records[i + 1..]
                                .iter()
                                .any(|(kd, later, _)| *kd == KIND_HOLD && later == key)
                    })
                    .map(|(_, (_, _, v))| Ok(v.to_vec()))
                    .collect::<Vec<_>>())
            });
            match latest {
                Ok(values) => values,
                Err(e) => vec![Err(e)],
            }
        })
    }

    pub fn idempotency(&self, k: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.keyed(KIND_IDEMPOTENCY, k.as_bytes())
    }

    pub fn closed_years(&self) -> Result<Vec<Year>, StorageError> {
        self.db
            .scan_prefix(CLOSED_YEAR)
            .map(|item| {
                let (k, _) = item?;
                std::str::from_utf8(&k[CLOSED_YEAR.len()..])
                    .ok()
                    .and_then(|y| y.parse().ok())
                    .ok_or_else(|| StorageError::Corrupt("bad closed-year key".into()))
            })
            .collect()
    }

    pub fn last_time(&self) -> Result<Option<i64>, StorageError> {
        last_time_in(&self.db)
    }

    pub fn record(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.keyed(KIND_RECORD, k)
    }

    /// The caller's records whose key starts with `prefix`, as (key, value), in key order.
    /// Reads the chunks of the prefix's segment (its text up to its first `/`): a prefix
    /// must be a whole segment or lie within one (`"charge/"`, `"charge/C1"`, `"policy"`).
    pub fn records(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + '_ {
        let mut latest: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            std::collections::BTreeMap::new();
        let mut failure = None;
        for item in self.db.scan_prefix(record_chunks_prefix(segment(prefix))) {
            let read = item.map_err(StorageError::from).and_then(|(_, pointer)| {
                let chunk = self.chunk(&pointer)?;
                for (kind, k, v) in keyed_records(&chunk)? {
                    if k.starts_with(prefix) {
                        let value = (kind == KIND_RECORD).then(|| v.to_vec());
                        latest.insert(k.to_vec(), value);
                    }
                }
                Ok(())
            });
            if let Err(e) = read {
                failure = Some(e);
                break;
            }
        }
        let records = latest
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| Ok((k, v))));
        failure.map(Err).into_iter().chain(records)
    }
}

/// Removes from sled every batch written past the last point known durable, after a replay
/// whose newest frame with data ended at `replayed_end`. Only a power loss leaves such
/// batches: sled may hold a batch whose frame and data bytes were not yet durable (a
/// checkpoint flushes sled whole, batches still syncing included, and sled may write on
/// its own). That batch was never acknowledged (its frame was not synced), and its data
/// bytes may be missing or zeros, so it goes, whole: every chunk whose bytes start at or
/// past the durable point (data offsets grow in write order, batch by batch), the years it
/// closed, and the data end. The durable point is the later of the newest frame's end
/// (frames survive only whole) and the last checkpoint's synced end; `sled_end` is where
/// sled's batches ended before the replay.
fn roll_back_past(
    db: &sled::Db,
    sled_end: u64,
    replayed_end: Option<u64>,
) -> Result<(), StorageError> {
    let checkpointed = stored_u64(db, META_DATA_DURABLE, "durable data end")?;
    let durable = replayed_end.unwrap_or(0).max(checkpointed);
    if sled_end.max(replayed_end.unwrap_or(0)) <= durable {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for prefix in [ENTRY, KEYED, RECORD_CHUNKS] {
        for item in db.scan_prefix(prefix) {
            let (k, pointer) = item?;
            if decode_pointer(&pointer)?.0 >= durable {
                batch.remove(k);
            }
        }
    }
    for item in db.scan_prefix(CLOSED_YEAR) {
        let (k, at) = item?;
        if at.len() == 8 && decode_u64(&at, "closed year's data offset")? >= durable {
            batch.remove(k);
        }
    }
    batch.insert(META_DATA_END, &durable.to_be_bytes()[..]);
    db.apply_batch(batch)?;
    Ok(())
}

fn last_time_in(db: &sled::Db) -> Result<Option<i64>, StorageError> {
    db.get(META_LAST_TIME)?.map(|v| decode_time(&v)).transpose()
}

fn decode_time(v: &[u8]) -> Result<i64, StorageError> {
    eight_bytes(v, "last_time").map(i64::from_be_bytes)
}

impl Drop for Store {
    /// Ends the checkpoint thread (after the checkpoint it is doing, if any), so that
    /// sled's files are let go when the store is.
    fn drop(&mut self) {
        drop(self.to_sync.take());
        if let Some(thread) = self.syncer.take() {
            let _ = thread.join();
        }
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        drop(self.checkpoints.take());
        if let Some(thread) = self.checkpointer.take() {
            // A panic there was a bug already reported on its thread.
            let _ = thread.join();
        }
    }
}

fn write_key_file(dir: &Path, seed: &[u8; 32]) -> Result<(), StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{KEY_FILE}.tmp"));
    let path = dir.join(KEY_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(hex::encode(seed).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    fsync_dir(dir)
}

fn read_key_file(dir: &Path) -> Result<LedgerKey, StorageError> {
    let path = dir.join(KEY_FILE);
    let mut text = String::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(io_err(&path))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| {
        StorageError::Corrupt(format!("{} is not a 32-byte hex seed", path.display()))
    })?;
    LedgerKey::from_seed(&seed).map_err(|e| StorageError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A key's hash is the first 128 bits of SHA-256 over its kind byte and the key,
        /// as `ring` computes it, for keys within one block and beyond.
        #[test]
        fn key_hash_is_sha256_of_kind_and_key(
            kind in proptest::prelude::any::<u8>(),
            k in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let mut message = vec![kind];
            message.extend_from_slice(&k);
            let digest = ring::digest::digest(&ring::digest::SHA256, &message);
            let first: [u8; 16] = digest.as_ref()[..16].try_into().unwrap();
            let expected = u128::from_be_bytes(first);
            #[allow(clippy::cast_possible_truncation)]
            let words = [(expected >> 64) as u64, expected as u64];
            proptest::prop_assert_eq!(key_hash(kind, &k), KeyHash(words));
        }
    }

    /// An index entry is a key hash and a chunk number in 24 bytes (a `u128` hash made it 32).
    #[test]
    fn an_index_entry_is_24_bytes() {
        assert_eq!(std::mem::size_of::<(KeyHash, u64)>(), 24);
    }

    #[test]
    fn create_refuses_an_existing_store_and_open_refuses_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let seed = [7u8; 32];
        drop(Store::create(dir.path(), &seed).unwrap());
        assert!(matches!(
            Store::create(dir.path(), &seed),
            Err(StorageError::AlreadyExists(_))
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open(empty.path()),
            Err(StorageError::NotFound(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn chunks_read_back_by_seq_and_key_and_the_latest_version_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[2u8; 32]).unwrap();
        let line = |seq: u64| format!("line {seq}").into_bytes();
        // 150 entries (three chunks), 100 holds (four chunks), then more of both.
        let entries = |range: std::ops::Range<u64>| range.map(|s| (s, line(s))).collect();
        let holds = |range: std::ops::Range<u32>, version: &str| -> Vec<(String, Vec<u8>)> {
            range
                .map(|i| (format!("H{i}"), format!("{version} {i}").into_bytes()))
                .collect()
        };
        let mut first_holds = holds(0..100, "placed");
        // A hold changed twice within one batch: the later record is the latest.
        first_holds.push(("H7".into(), b"posted 7".to_vec()));
        store
            .commit(WriteSet {
                entries: entries(0..150),
                holds: first_holds,
                idempotency: vec![("k1".into(), b"r1".to_vec())],
                ..WriteSet::default()
            })
            .unwrap();
        store
            .commit(WriteSet {
                entries: entries(150..151),
                holds: holds(50..60, "voided"),
                idempotency: vec![("k2".into(), b"r2".to_vec())],
                ..WriteSet::default()
            })
            .unwrap();
        let check = |store: &Store| {
            for seq in [0, 63, 64, 127, 128, 149, 150] {
                assert_eq!(store.entry_line(seq).unwrap(), Some(line(seq)), "seq {seq}");
            }
            assert_eq!(store.entry_line(151).unwrap(), None);
            let from_70: Vec<u64> = store.entries_from(70).map(|r| r.unwrap().0).collect();
            assert_eq!(from_70, (70..151).collect::<Vec<_>>());
            assert_eq!(store.entries_from(151).count(), 0);
            assert_eq!(store.hold("H0").unwrap(), Some(b"placed 0".to_vec()));
            assert_eq!(store.hold("H7").unwrap(), Some(b"posted 7".to_vec()));
            assert_eq!(store.hold("H55").unwrap(), Some(b"voided 55".to_vec()));
            assert_eq!(store.hold("H100").unwrap(), None);
            // Same text, other kind: an idempotency key is not a hold id.
            assert_eq!(store.hold("k1").unwrap(), None);
            assert_eq!(store.idempotency("k1").unwrap(), Some(b"r1".to_vec()));
            assert_eq!(store.idempotency("k2").unwrap(), Some(b"r2".to_vec()));
            assert_eq!(store.idempotency("H0").unwrap(), None);
            let mut latest: Vec<Vec<u8>> = store.holds().map(|r| r.unwrap()).collect();
            latest.sort();
            let mut expected: Vec<Vec<u8>> = (0..100)
                .map(|i| match i {
                    7 => b"posted 7".to_vec(),
                    50..=59 => format!("voided {i}").into_bytes(),
                    _ => format!("placed {i}").into_bytes(),
                })
                .collect();
            expected.sort();
            assert_eq!(latest, expected);
        };
        check(&store);
        drop(store);
        let (store, _) = Store::open(dir.path()).unwrap();
        check(&store);
        // Chunk numbers go on after a reopen rather than overwrite a chunk.
        store
            .commit(WriteSet {
                idempotency: vec![("k3".into(), b"r3".to_vec())],
                ..WriteSet::default()
            })
            .unwrap();
        check(&store);
        assert_eq!(store.idempotency("k3").unwrap(), Some(b"r3".to_vec()));
    }

    #[test]
    fn records_read_back_by_key_and_prefix_with_deletions_and_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[3u8; 32]).unwrap();
        let put = |k: &str, v: &str| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()));
        let mut first: Vec<_> = (0..70)
            .map(|i| put(&format!("charge/C{i:03}"), &format!("pending {i}")))
            .collect();
        first.push(put("policy", "p1"));
        first.push(put("order/O1", "created"));
        // Written twice in one batch: the later one counts.
        first.push(put("order/O1", "accepted"));
        store
            .commit(WriteSet {
                records: first,
                ..WriteSet::default()
            })
            .unwrap();
        store
            .commit(WriteSet {
                records: vec![
                    put("charge/C005", "confirmed 5"),
                    (b"charge/C006".to_vec(), None),
                    put("policy", "p2"),
                ],
                ..WriteSet::default()
            })
            .unwrap();
        let check = |store: &Store| {
            assert_eq!(
                store.record(b"charge/C000").unwrap(),
                Some(b"pending 0".to_vec())
            );
            assert_eq!(
                store.record(b"charge/C069").unwrap(),
                Some(b"pending 69".to_vec())
            );
            assert_eq!(
                store.record(b"charge/C005").unwrap(),
                Some(b"confirmed 5".to_vec())
            );
            assert_eq!(store.record(b"charge/C006").unwrap(), None);
            assert_eq!(store.record(b"charge/C070").unwrap(), None);
            assert_eq!(
                store.record(b"order/O1").unwrap(),
                Some(b"accepted".to_vec())
            );
            assert_eq!(store.record(b"policy").unwrap(), Some(b"p2".to_vec()));
            let charges: Vec<(Vec<u8>, Vec<u8>)> =
                store.records(b"charge/").map(|r| r.unwrap()).collect();
            assert_eq!(charges.len(), 69);
            assert!(charges.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
            assert!(charges.contains(&(b"charge/C005".to_vec(), b"confirmed 5".to_vec())));
            assert!(!charges.iter().any(|(k, _)| k == b"charge/C006"));
            assert_eq!(store.records(b"charge/C01").count(), 10);
            assert_eq!(store.records(b"order/").count(), 1);
            assert_eq!(store.records(b"policy").count(), 1);
            assert_eq!(store.records(b"nothing/").count(), 0);
        };
        check(&store);
        drop(store);
        let (store, _) = Store::open(dir.path()).unwrap();
        check(&store);
        store
            .commit(WriteSet {
                records: vec![put("charge/C006", "again")],
                ..WriteSet::default()
            })
            .unwrap();
        assert_eq!(
            store.record(b"charge/C006").unwrap(),
            Some(b"again".to_vec())
        );
        assert_eq!(store.records(b"charge/").count(), 70);
    }

    #[test]
    fn large_values_go_to_the_data_file_and_read_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[4u8; 32]).unwrap();
        // Over a quarter of a segment: in sled it would be a blob file of its own.
        let big: Vec<u8> = (0..3 * SEGMENT_SIZE / 8).map(|i| (i % 251) as u8).collect();
        store
            .commit(WriteSet {
                records: vec![(b"big/1".to_vec(), Some(big.clone()))],
                ..WriteSet::default()
            })
            .unwrap();
        assert_eq!(store.record(b"big/1").unwrap().as_ref(), Some(&big));
        let data_len = std::fs::metadata(dir.path().join(DATA_FILE)).unwrap().len();
        assert!(
            data_len > big.len() as u64,
            "the record is in the data file"
        );
        store.sled_sync.checkpoint().unwrap();
        let blobs = dir.path().join(SLED_DIR).join("blobs");
        assert_eq!(
            std::fs::read_dir(&blobs).map_or(0, |d| d.count()),
            0,
            "sled got a pointer, not the value"
        );
        drop(store);
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(store.record(b"big/1").unwrap(), Some(big));
    }

    #[test]
    fn the_data_file_past_its_end_is_cut_off_and_its_lost_tail_comes_back_from_the_log() {
        let _target = log_file_target(wal::FILE_TARGET);
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[6u8; 32]).unwrap();
        for n in 0..10 {
            store.commit(batch(n)).unwrap();
        }
        let expected = read_all(&store, 10);
        drop(store);
        let data_path = dir.path().join(DATA_FILE);
        let len = std::fs::metadata(&data_path).unwrap().len();
        // Bytes of a write never acknowledged (its frame lost): cut off on open.
        let mut data = OpenOptions::new().append(true).open(&data_path).unwrap();
        data.write_all(&[0xAB; 5000]).unwrap();
        drop(data);
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(read_all(&store, 10), expected);
        assert_eq!(std::fs::metadata(&data_path).unwrap().len(), len);
        drop(store);
        // The last batches' bytes lost (never synced before a crash): their frames bring
        // them back.
        OpenOptions::new()
            .write(true)
            .open(&data_path)
            .unwrap()
            .set_len(len - 300)
            .unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(read_all(&store, 10), expected);
        store.commit(batch(10)).unwrap();
        let expected = read_all(&store, 11);
        drop(store);
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(read_all(&store, 11), expected);
        drop(store);
        // Bytes lost that no frame holds any more: refused, not read as zeros.
        for name in wal::FILE_NAMES {
            File::create(dir.path().join(name)).unwrap();
        }
        OpenOptions::new()
            .write(true)
            .open(&data_path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let refused = Store::open(dir.path())
            .err()
            .expect("a short data file is refused");
        assert!(
            refused.to_string().contains(DATA_FILE),
            "the error names the data file: {refused}"
        );
    }

    #[test]
    fn a_v3_store_is_migrated_on_open_with_its_last_frame() {
        let _target = log_file_target(wal::FILE_TARGET);
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[7u8; 32]).unwrap();
        for n in 0..12 {
            store.commit(batch(n)).unwrap();
        }
        let before = read_all(&store, 12);
        drop(store);
        // Back to v3 by hand: chunk values into sled, no data file, no data end.
        let data_path = dir.path().join(DATA_FILE);
        let data = std::fs::read(&data_path).unwrap();
        {
            let (db, _) = open_sled(dir.path()).unwrap();
            for prefix in [ENTRY, KEYED, RECORD_CHUNKS] {
                for item in db.scan_prefix(prefix) {
                    let (k, pointer) = item.unwrap();
                    let (offset, len) = decode_pointer(&pointer).unwrap();
                    let offset = usize::try_from(offset).unwrap();
                    db.insert(k, &data[offset..offset + len]).unwrap();
                }
            }
            db.remove(META_DATA_END).unwrap();
            db.insert(META_FORMAT, FORMAT_V3).unwrap();
            db.flush().unwrap();
        }
        std::fs::remove_file(&data_path).unwrap();
        // And one v3 frame in the log (chunk values as they are, no data offset).
        let mut chunk = vec![KIND_RECORD];
        put_bytes(&mut chunk, b"v3/1");
        put_bytes(&mut chunk, b"from a v3 frame");
        let chunk_key = record_chunk_key(b"v3/", 1_000);
        let mut writer = wal::Writer::open(dir.path(), 0, 1, true).unwrap();
        writer
            .append(&[(chunk_key.as_slice(), chunk.as_slice())])
            .unwrap();
        writer.sync().unwrap();
        drop(writer);
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.db.get(META_FORMAT).unwrap().unwrap().as_ref(),
            FORMAT_VERSION
        );
        assert_eq!(
            read_all(&store, 12),
            before,
            "every chunk moved to the data file"
        );
        assert_eq!(
            store.record(b"v3/1").unwrap(),
            Some(b"from a v3 frame".to_vec())
        );
        assert!(
            wal::recover(dir.path()).unwrap().frames.is_empty(),
            "the v3 frames are gone: a v4 store must never replay them"
        );
        store.commit(batch(12)).unwrap();
        let expected = read_all(&store, 13);
        drop(store);
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(read_all(&store, 13), expected);
        assert_eq!(store.entries_from(0).count(), 26);
        assert_eq!(
            store.record(b"v3/1").unwrap(),
            Some(b"from a v3 frame".to_vec())
        );
    }

    #[test]
    fn blob_files_sled_writes_are_synced_by_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[4u8; 32]).unwrap();
        // Nothing the store writes reaches sled this big any more, but a checkpoint still
        // syncs whatever blob sled writes: put one there directly.
        let big: Vec<u8> = (0..3 * SEGMENT_SIZE / 8).map(|i| (i % 251) as u8).collect();
        store.db.insert(b"m/test-blob", big.clone()).unwrap();
        store.db.flush().unwrap();
        let blobs = std::fs::read_dir(dir.path().join(SLED_DIR).join("blobs"))
            .unwrap()
            .count();
        assert!(
            blobs > 0,
            "sled wrote no blob: the test no longer covers blobs"
        );
        store.sled_sync.checkpoint().unwrap();
        assert_eq!(
            store.sync_blobs().unwrap(),
            0,
            "the checkpoint synced every blob"
        );
        assert_eq!(store.sled_sync.blobs_synced.lock().unwrap().len(), blobs);
        drop(store);
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.db.get(b"m/test-blob").unwrap().unwrap().as_ref(),
            &big[..]
        );
        assert_eq!(store.sync_blobs().unwrap(), 0, "opening synced every blob");
    }

    /// A batch of every kind of write, numbered `n` (entries `2n` and `2n + 1`).
    fn batch(n: u64) -> WriteSet {
        WriteSet {
            entries: vec![
                (2 * n, format!("line {}", 2 * n).into_bytes()),
                (2 * n + 1, format!("line {}", 2 * n + 1).into_bytes()),
            ],
            holds: vec![
                (format!("H{n}"), format!("placed {n}").into_bytes()),
                (
                    format!("H{}", n / 2),
                    format!("changed by {n}").into_bytes(),
                ),
            ],
            idempotency: vec![(format!("k{n}"), format!("outcome {n}").into_bytes())],
            closed_years: if n == 3 {
                vec!["2025".parse().unwrap()]
            } else {
                Vec::new()
            },
            last_time: Some(1_000 + i64::try_from(n).unwrap()),
            records: vec![
                (format!("r/{n}").into_bytes(), Some(vec![b'x'; 100])),
                (
                    format!("r/{}", n / 3).into_bytes(),
                    (n % 2 == 0).then(|| b"odd".to_vec()),
                ),
            ],
        }
    }

    /// What `batches` batches wrote, read back through every reading method.
    fn read_all(store: &Store, batches: u64) -> Vec<String> {
        let mut seen = Vec::new();
        for item in store.entries_from(0) {
            let (seq, line) = item.unwrap();
            seen.push(format!("entry {seq} {}", String::from_utf8(line).unwrap()));
        }
        for n in 0..batches {
            seen.push(format!(
                "hold {n} {:?}",
                store.hold(&format!("H{n}")).unwrap()
            ));
            seen.push(format!(
                "key {n} {:?}",
                store.idempotency(&format!("k{n}")).unwrap()
            ));
            seen.push(format!(
                "record {n} {:?}",
                store.record(format!("r/{n}").as_bytes()).unwrap()
            ));
        }
        let mut holds: Vec<Vec<u8>> = store.holds().map(Result::unwrap).collect();
        holds.sort();
        seen.push(format!("holds {holds:?}"));
        let records: Vec<_> = store.records(b"r/").map(Result::unwrap).collect();
        seen.push(format!("records {records:?}"));
        seen.push(format!("years {:?}", store.closed_years().unwrap()));
        seen.push(format!("last time {:?}", store.last_time().unwrap()));
        seen
    }

    /// Held by every test that depends on the log's file target, which is one for every
    /// store in the process.
    static LOG_FILE_TARGET: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Sets the log's file target for the caller's test, which holds the guard throughout.
    fn log_file_target(bytes: u64) -> std::sync::MutexGuard<'static, ()> {
        let guard = LOG_FILE_TARGET.lock().unwrap_or_else(|p| p.into_inner());
        Store::set_log_file_target(bytes);
        guard
    }

    fn copy_log(from: &Path, to: &Path) {
        for name in wal::FILE_NAMES {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }

    #[test]
    fn batches_sled_kept_past_the_durable_log_and_data_are_rolled_back() {
        let _target = log_file_target(wal::FILE_TARGET);
        let dir = tempfile::tempdir().unwrap();
        let saved = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[8u8; 32]).unwrap();
        for n in 0..3 {
            store.commit(batch(n)).unwrap();
        }
        let expected = read_all(&store, 3);
        // The log and the data file as a power loss would leave them: what was synced
        // up to here, and nothing after.
        copy_log(dir.path(), saved.path());
        std::fs::copy(dir.path().join(DATA_FILE), saved.path().join(DATA_FILE)).unwrap();
        // Three more batches (the first closes 2025) that sled keeps, as a checkpoint that
        // flushed sled whole, or sled's own writes, could have left it.
        for n in 3..6 {
            store.commit(batch(n)).unwrap();
        }
        drop(store);
        copy_log(saved.path(), dir.path());
        std::fs::copy(saved.path().join(DATA_FILE), dir.path().join(DATA_FILE)).unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let without_time = |mut seen: Vec<String>| {
            // `m/last_time` may stay ahead: it only keeps later stamps from going back.
            seen.retain(|line| !line.starts_with("last time"));
            seen
        };
        assert_eq!(
            without_time(read_all(&store, 3)),
            without_time(expected.clone())
        );
        assert_eq!(store.entries_from(0).count(), 6);
        assert_eq!(store.hold("H3").unwrap(), None);
        assert_eq!(store.hold("H2").unwrap(), Some(b"placed 2".to_vec()));
        assert_eq!(store.idempotency("k5").unwrap(), None);
        assert!(
            store.closed_years().unwrap().is_empty(),
            "the close went too"
        );
        // It goes on from there, and a reopen keeps it all.
        store.commit(batch(3)).unwrap();
        let expected = read_all(&store, 4);
        assert_eq!(store.entries_from(0).count(), 8);
        drop(store);
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(read_all(&store, 4), expected);
        assert_eq!(store.closed_years().unwrap().len(), 1);
    }

    #[test]
    fn the_log_alone_brings_back_every_batch_sled_lost() {
        // Every batch stays in the first log file.
        let _target = log_file_target(wal::FILE_TARGET);
        let written = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(written.path(), &[5u8; 32]).unwrap();
        for n in 0..40 {
            store.commit(batch(n)).unwrap();
        }
        let expected = read_all(&store, 40);
        assert_eq!(store.entries_from(0).count(), 80);
        drop(store);
        // A store whose sled holds nothing but its format, with the first store's log: as
        // if sled had lost every batch since its last checkpoint.
        let lost = tempfile::tempdir().unwrap();
        drop(Store::create(lost.path(), &[5u8; 32]).unwrap());
        copy_log(written.path(), lost.path());
        let (store, _) = Store::open(lost.path()).unwrap();
        assert_eq!(read_all(&store, 40), expected);
        // It goes on from there, and a second replay over what sled has changes nothing.
        store.commit(batch(40)).unwrap();
        let expected = read_all(&store, 41);
        drop(store);
        let (store, _) = Store::open(lost.path()).unwrap();
        assert_eq!(read_all(&store, 41), expected);
        drop(store);
        let (store, _) = Store::open(lost.path()).unwrap();
        assert_eq!(read_all(&store, 41), expected);
    }

    #[test]
    fn a_torn_last_frame_is_not_replayed_and_the_store_goes_on() {
        let _target = log_file_target(wal::FILE_TARGET);
        let written = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(written.path(), &[6u8; 32]).unwrap();
        for n in 0..4 {
            store.commit(batch(n)).unwrap();
        }
        let four = read_all(&store, 4);
        store.commit(batch(4)).unwrap();
        drop(store);
        // Cut the log in the middle of the fifth frame, as a crash in its write would.
        let log = written.path().join(wal::FILE_NAMES[0]);
        let frames = wal::decode_frames(&std::fs::read(&log).unwrap());
        assert_eq!(frames.len(), 5);
        let mut data = std::fs::read(&log).unwrap();
        let mut four_frames = Vec::new();
        for frame in &frames[..4] {
            let ops: Vec<(&[u8], &[u8])> = frame
                .ops
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            wal::encode_frame(frame.id, &ops, &mut four_frames);
        }
        assert_eq!(data[..four_frames.len()], four_frames[..]);
        data.truncate(four_frames.len() + (data.len() - four_frames.len()) / 2);
        let lost = tempfile::tempdir().unwrap();
        drop(Store::create(lost.path(), &[6u8; 32]).unwrap());
        copy_log(written.path(), lost.path());
        std::fs::write(lost.path().join(wal::FILE_NAMES[0]), &data).unwrap();
        let (store, _) = Store::open(lost.path()).unwrap();
        assert_eq!(read_all(&store, 4), four, "batches 0 to 3, none of batch 4");
        // Batch 4 again, and more: the torn frame's remains never come back.
        for n in 4..7 {
            store.commit(batch(n)).unwrap();
        }
        let expected = read_all(&store, 7);
        drop(store);
        let (store, _) = Store::open(lost.path()).unwrap();
        assert_eq!(read_all(&store, 7), expected);
    }

    #[test]
    fn the_log_turns_between_its_two_files_and_loses_nothing() {
        let _target = log_file_target(4 << 10);
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::create(dir.path(), &[7u8; 32]).unwrap();
        for n in 0..300 {
            store.commit(batch(n)).unwrap();
            if n % 50 == 49 {
                let expected = read_all(&store, n + 1);
                drop(store);
                store = Store::open(dir.path()).unwrap().0;
                assert_eq!(read_all(&store, n + 1), expected, "after batch {n}");
            }
        }
        // Both files were written, and neither grew far past the target: the writer
        // turned from one to the other (each turn waits for the checkpoint of the other).
        for name in wal::FILE_NAMES {
            let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(len > 0 && len < 64 << 10, "{name}: {len} bytes");
        }
    }

    /// Waits (at most a minute) until `done` holds of the store's log files.
    fn await_turns(store: &Store, done: impl Fn(&Turns) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done(&store.turns.lock().unwrap()) {
            assert!(std::time::Instant::now() < deadline, "{:?}", store.turns);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_written_store_prepares_both_log_files_and_keeps_every_batch() {
        let _target = log_file_target(2 * wal::PREPARE_AFTER);
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[3u8; 32]).unwrap();
        assert_eq!(store.turns.lock().unwrap().prepared, [false, false]);
        let big = |n: u8| WriteSet {
            records: vec![(format!("r/{n}").into_bytes(), Some(vec![n; 64 << 10]))],
            ..WriteSet::default()
        };
        // Past `PREPARE_AFTER` in file 0: file 1 is prepared, and the next write turns to it.
        let mut n = 0;
        while store.wal.lock().unwrap().offset() < wal::PREPARE_AFTER {
            store.commit(big(n)).unwrap();
            n += 1;
        }
        store.commit(big(n)).unwrap();
        n += 1;
        await_turns(&store, |t| t.prepared[1] && t.free[1]);
        store.commit(big(n)).unwrap();
        assert_eq!(store.wal.lock().unwrap().current(), 1);
        // The file left is checkpointed and prepared in its turn.
        await_turns(&store, |t| t.prepared == [true, true] && t.free[0]);
        for name in wal::FILE_NAMES {
            let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(len >= wal::file_target(), "{name}: {len} bytes");
        }
        drop(store);
        let store = Store::open(dir.path()).unwrap().0;
        for i in 0..=n {
            let value = store.record(format!("r/{i}").as_bytes()).unwrap();
            assert_eq!(value, Some(vec![i; 64 << 10]), "record {i}");
        }
    }

    #[test]
    fn batches_appended_into_one_group_read_back_with_the_later_version_winning() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[4u8; 32]).unwrap();
        // Both batches change hold H1 (each also places its own): one group commit.
        let mut group = batch(2);
        group.append(batch(3));
        assert_eq!(
            group.entries.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [4, 5, 6, 7]
        );
        assert_eq!(group.last_time, Some(1_003));
        store.commit(group).unwrap();
        let read = |store: &Store| {
            (
                store.hold("H1").unwrap(),
                store.hold("H2").unwrap(),
                store.hold("H3").unwrap(),
                store
                    .entries_from(4)
                    .map(|e| e.unwrap().0)
                    .collect::<Vec<_>>(),
                store.closed_years().unwrap(),
            )
        };
        let expected = (
            Some(b"changed by 3".to_vec()),
            Some(b"placed 2".to_vec()),
            Some(b"placed 3".to_vec()),
            vec![4, 5, 6, 7],
            vec!["2025".parse().unwrap()],
        );
        assert_eq!(read(&store), expected);
        drop(store);
        assert_eq!(read(&Store::open(dir.path()).unwrap().0), expected);
    }

    #[test]
    fn committed_batches_read_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[1u8; 32]).unwrap();
        store
            .commit(WriteSet {
                entries: vec![(0, b"zero".to_vec()), (1, b"one".to_vec())],
                holds: vec![("H1".into(), b"hold".to_vec())],
                idempotency: vec![("k".into(), b"rec".to_vec())],
                closed_years: vec!["2026".parse().unwrap()],
                last_time: Some(42),
                records: vec![(b"x/1".to_vec(), Some(b"v".to_vec()))],
            })
            .unwrap();
        drop(store);
        let (store, key) = Store::open(dir.path()).unwrap();
        assert_eq!(
            key.public_key_bytes(),
            LedgerKey::from_seed(&[1u8; 32]).unwrap().public_key_bytes()
        );
        let entries: Vec<_> = store.entries_from(0).map(|r| r.unwrap()).collect();
        assert_eq!(entries, vec![(0, b"zero".to_vec()), (1, b"one".to_vec())]);
        assert_eq!(store.entries_from(1).count(), 1);
        assert_eq!(store.hold("H1").unwrap(), Some(b"hold".to_vec()));
        assert_eq!(store.idempotency("k").unwrap(), Some(b"rec".to_vec()));
        assert_eq!(store.closed_years().unwrap(), vec!["2026".parse().unwrap()]);
        assert_eq!(store.last_time().unwrap(), Some(42));
        assert_eq!(store.record(b"x/1").unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.records(b"x/").count(), 1);
    }
}

//! Durable storage on sled 0.34.7: the journal, hold records, idempotency records, closed
//! years and the caller's own records, all in one sled tree under key prefixes, written as
//! one atomic batch per group commit and made durable with fsync before anyone is told.
//! sled types never leave this module, so a second backend can sit behind the same API.
//!
//! Durability: sled 0.34.7's `flush()` ends in `sync_file_range`, which is not a durability
//! barrier (sled issue #1452), so `sync` also calls `sync_data` on sled's `db` file. sled
//! writes any item bigger than a quarter of a segment (a tree node with large values) to a
//! file of its own under `blobs/`, with no fsync at all (blob_io.rs), so `sync` also fsyncs
//! every blob file it has not synced yet, and the `blobs` directory when there are new ones.
//! Segments are 8 MiB (the maximum is 16), so blobs stay rare: items up to 2 MiB stay in the
//! log. A `write` is durable only once a later `sync` has returned; `commit` is both.
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
const FORMAT_VERSION: &[u8] = b"ledger-store-v3";
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
    /// sled's log file, kept open to fsync it after each flush.
    log_file: File,
    /// Where the latest version of each hold and idempotency record is.
    index: std::sync::RwLock<KeyIndex>,
    /// The number of the next `k/` chunk.
    next_chunk: std::sync::atomic::AtomicU64,
    /// sled's blob directory, and the blob files in it already fsynced.
    blobs_dir: PathBuf,
    blobs_synced: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

/// The first 128 bits of SHA-256 over a kind byte and a key.
type KeyHash = u128;

fn key_hash(kind: u8, k: &[u8]) -> KeyHash {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&[kind]);
    context.update(k);
    let digest = context.finish();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(first)
}

/// Hashes a `KeyHash` (already uniform) by taking its low 64 bits.
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
    fn write_u128(&mut self, n: u128) {
        // Truncation intended: the low 64 bits of a SHA-256 prefix are uniform.
        #[allow(clippy::cast_possible_truncation)]
        let low = n as u64;
        self.0 = low;
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
        let store = Store::new(db, log_file, dir);
        store.db.insert(META_FORMAT, FORMAT_VERSION)?;
        store.sync()?;
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
        match db.get(META_FORMAT)? {
            Some(v) if v.as_ref() == FORMAT_VERSION => {}
            other => {
                return Err(StorageError::Corrupt(format!(
                    "unknown store format {:?}",
                    other.map(|v| String::from_utf8_lossy(&v).into_owned())
                )))
            }
        }
        let store = Store::new(db, log_file, dir);
        // Blobs written before a crash may never have been synced: sync them all now.
        store.sync_blobs()?;
        store.rebuild_index()?;
        Ok((store, key))
    }

    fn new(db: sled::Db, log_file: File, dir: &Path) -> Store {
        Store {
            db,
            log_file,
            index: std::sync::RwLock::new(KeyIndex::default()),
            next_chunk: std::sync::atomic::AtomicU64::new(0),
            blobs_dir: dir.join(SLED_DIR).join("blobs"),
            blobs_synced: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Fsyncs every blob file not synced before (and then the blob directory), returning
    /// how many. Files sled removed meanwhile are skipped.
    pub fn sync_blobs(&self) -> Result<usize, StorageError> {
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

    /// Indexes every `k/` chunk, in order (so the latest version of a key wins).
    fn rebuild_index(&self) -> Result<(), StorageError> {
        let mut index = KeyIndex::default();
        let mut next = 0;
        for item in self.db.scan_prefix(KEYED) {
            let (k, chunk) = item?;
            let chunk_no = seq_of_key(&k, KEYED)?;
            for (kind, key, _) in keyed_records(&chunk)? {
                index.insert(key_hash(kind, key), chunk_no);
            }
            next = next.max(chunk_no + 1);
        }
        for item in self.db.scan_prefix(RECORD_CHUNKS) {
            let (k, chunk) = item?;
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
        let chunk = self
            .db
            .get(chunk_key)?
            .ok_or_else(|| StorageError::Corrupt(format!("chunk {chunk_no} is missing")))?;
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

    /// Makes every `write` so far durable: sled's flush, then `sync_data` on its log file.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.sync_blobs()?;
        self.log_file
            .sync_data()
            .map_err(io_err(Path::new("ledger.sled/db")))
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
        let mut batch = sled::Batch::default();
        for chunk in set.entries.chunks(ENTRY_CHUNK_MAX) {
            let mut value = Vec::with_capacity(chunk.iter().map(|(_, l)| l.len() + 4).sum());
            for (i, (seq, line)) in chunk.iter().enumerate() {
                debug_assert_eq!(*seq, chunk[0].0 + i as u64, "entries are consecutive");
                put_bytes(&mut value, line);
            }
            batch.insert(entry_key(chunk[0].0), value);
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
            batch.insert(key(KEYED, &chunk_no.to_be_bytes()), value);
        }
        for year in set.closed_years {
            batch.insert(key(CLOSED_YEAR, year.to_string().as_bytes()), &b""[..]);
        }
        if let Some(t) = set.last_time {
            batch.insert(META_LAST_TIME, &t.to_be_bytes()[..]);
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
                batch.insert(record_chunk_key(seg, chunk_no), value);
            }
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
        let (k, chunk) = item?;
        let first = seq_of_key(&k, ENTRY)?;
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
                let lines = item.map_err(StorageError::from).and_then(|(k, chunk)| {
                    let first = seq_of_key(&k, ENTRY)?;
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
            let latest = item.map_err(StorageError::from).and_then(|(k, chunk)| {
                let chunk_no = seq_of_key(&k, KEYED)?;
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
        match self.db.get(META_LAST_TIME)? {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("bad last_time".into()))?;
                Ok(Some(i64::from_be_bytes(bytes)))
            }
        }
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
            let read = item.map_err(StorageError::from).and_then(|(_, chunk)| {
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
    fn large_values_that_sled_puts_in_blob_files_are_synced_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::create(dir.path(), &[4u8; 32]).unwrap();
        // Over a quarter of a segment: sled writes it to a blob file of its own.
        let big: Vec<u8> = (0..3 * SEGMENT_SIZE / 8).map(|i| (i % 251) as u8).collect();
        store
            .commit(WriteSet {
                records: vec![(b"big/1".to_vec(), Some(big.clone()))],
                ..WriteSet::default()
            })
            .unwrap();
        let blobs = std::fs::read_dir(dir.path().join(SLED_DIR).join("blobs"))
            .unwrap()
            .count();
        assert!(
            blobs > 0,
            "sled wrote no blob: the test no longer covers blobs"
        );
        // Every blob there was synced by the commit: none is left to sync.
        assert_eq!(store.sync_blobs().unwrap(), 0);
        assert_eq!(store.blobs_synced.lock().unwrap().len(), blobs);
        drop(store);
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(store.record(b"big/1").unwrap(), Some(big));
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

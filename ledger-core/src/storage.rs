//! Durable storage on sled 0.34.7: the journal, hold records, idempotency records, closed
//! years and the caller's own records, all in one sled tree under key prefixes, written as
//! one atomic batch per group commit and made durable with fsync before anyone is told.
//! sled types never leave this module, so a second backend can sit behind the same API.
//!
//! Durability: sled 0.34.7's `flush()` ends in `sync_file_range`, which is not a durability
//! barrier (sled issue #1452), so `sync` also calls `sync_data` on sled's `db` file. A
//! `write` is durable only once a later `sync` has returned; `commit` is both.

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
const HOLD: &[u8] = b"h/";
const IDEMPOTENCY: &[u8] = b"i/";
const CLOSED_YEAR: &[u8] = b"y/";
const RECORD: &[u8] = b"r/";
const META_LAST_TIME: &[u8] = b"m/last_time";
const META_FORMAT: &[u8] = b"m/format";
const FORMAT_VERSION: &[u8] = b"ledger-store-v1";

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
}

fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// How long opening waits for sled's file lock to be released. Dropping a store returns
/// before sled's own IO threads have let go of the file (in the same process), so a store
/// closed and reopened at once can find it still locked for a moment. Another process
/// holding the store keeps it locked, and then opening fails after this wait.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(5);

fn open_sled(dir: &Path) -> Result<(sled::Db, File), StorageError> {
    let sled_dir = dir.join(SLED_DIR);
    let config = sled::Config::new()
        .path(&sled_dir)
        .cache_capacity(CACHE_CAPACITY_BYTES)
        .flush_every_ms(None);
    let started = std::time::Instant::now();
    let db = loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock && started.elapsed() < LOCK_WAIT =>
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
        let store = Store { db, log_file };
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
        Ok((Store { db, log_file }, key))
    }

    /// Whether `dir` holds a store.
    pub fn exists(dir: &Path) -> bool {
        dir.join(SLED_DIR).exists() || dir.join(KEY_FILE).exists()
    }

    /// Makes every `write` so far durable: sled's flush, then `sync_data` on its log file.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.db.flush()?;
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
        for (seq, line) in set.entries {
            batch.insert(entry_key(seq), line);
        }
        for (id, value) in set.holds {
            batch.insert(key(HOLD, id.as_bytes()), value);
        }
        for (k, value) in set.idempotency {
            batch.insert(key(IDEMPOTENCY, k.as_bytes()), value);
        }
        for year in set.closed_years {
            batch.insert(key(CLOSED_YEAR, year.to_string().as_bytes()), &b""[..]);
        }
        if let Some(t) = set.last_time {
            batch.insert(META_LAST_TIME, &t.to_be_bytes()[..]);
        }
        for (k, value) in set.records {
            match value {
                Some(v) => batch.insert(key(RECORD, &k), v),
                None => batch.remove(key(RECORD, &k)),
            }
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    pub fn entry_line(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(entry_key(seq))?.map(|v| v.to_vec()))
    }

    /// Entries from `from` on, in seq order, as (seq, line).
    pub fn entries_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), StorageError>> + '_ {
        self.db
            .range(entry_key(from)..key(ENTRY, &[0xff; 9]))
            .map(|item| {
                let (k, v) = item?;
                let seq_bytes: [u8; 8] = k[ENTRY.len()..]
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("entry key is not 8 bytes".into()))?;
                Ok((u64::from_be_bytes(seq_bytes), v.to_vec()))
            })
    }

    pub fn hold(&self, hold_id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .db
            .get(key(HOLD, hold_id.as_bytes()))?
            .map(|v| v.to_vec()))
    }

    pub fn holds(&self) -> impl Iterator<Item = Result<Vec<u8>, StorageError>> + '_ {
        self.db.scan_prefix(HOLD).map(|item| Ok(item?.1.to_vec()))
    }

    pub fn idempotency(&self, k: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .db
            .get(key(IDEMPOTENCY, k.as_bytes()))?
            .map(|v| v.to_vec()))
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
        Ok(self.db.get(key(RECORD, k))?.map(|v| v.to_vec()))
    }

    /// The caller's records whose key starts with `prefix`, as (key, value).
    pub fn records(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + '_ {
        self.db.scan_prefix(key(RECORD, prefix)).map(|item| {
            let (k, v) = item?;
            Ok((k[RECORD.len()..].to_vec(), v.to_vec()))
        })
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

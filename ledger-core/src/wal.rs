//! The write-ahead log in front of sled: what makes a group commit durable.
//!
//! sled 0.34.7 makes a write durable only through `flush` (its log buffer written and
//! `sync_file_range`d) and then an fsync of its `db` file: two writes and two waits per
//! commit, measured at ~0.5 ms of the ~0.75 ms commit cycle. Instead every batch is applied
//! to sled (so readers see it) and appended as one frame to this log, and the commit waits
//! for one `fdatasync` of the log only. sled is made durable in the background, a whole log
//! file at a time (a checkpoint), after which that file may be overwritten.
//!
//! Two files, `ledger.wal-0` and `ledger.wal-1`, take turns. A file is written from its
//! start, frame after frame, until it holds `FILE_TARGET` bytes and the other file is free
//! (its frames checkpointed into sled); then the writer turns to the other file and asks
//! for a checkpoint of the one it left. Overwriting a file that was written before costs
//! no file-size change, so its `fdatasync` writes data only: 0.19–0.29 ms against
//! 0.36–0.42 ms for an append of the same 28 KiB here (and `fallocate`d space costs as much
//! as an append, its extents being converted on the first write). So a file is *prepared*
//! before it is written: filled with zeros up to `FILE_TARGET` and synced, on the
//! checkpoint thread (`prepare`). A new store's files start empty, and the first file is
//! appended to until the other is prepared, which is asked for once the first holds
//! `PREPARE_AFTER` bytes (a store that is barely written never spends the 32 MiB).
//!
//! A frame: `magic (4) | body length (u32) | id (u64) | first 16 bytes of SHA-256 over
//! the three before and the body (16) | body`, the body a sequence of sled insertions
//! `key length (u32) | key | value length (u32) | value`. Ids rise by one from frame to
//! frame, across files and restarts. Reading a file stops at the first frame that is torn
//! (bad digest, cut short) or does not continue the ids, so what a recycled file still
//! holds from its earlier turn is never read as new.
//!
//! Recovery replays every frame both files hold, oldest first. Each frame is the exact
//! set of sled insertions its batch made and no key is written by two batches except
//! `m/last_time` (replayed as the greater of stored and logged), so replaying a frame whose
//! batch sled already has changes nothing, and after the replay sled holds every batch
//! whose frame was synced.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The two log files, in the data dir.
pub(crate) const FILE_NAMES: [&str; 2] = ["ledger.wal-0", "ledger.wal-1"];
/// A file is left for the other once it holds this much (unless changed for a test).
pub(crate) const FILE_TARGET: u64 = 16 << 20;
static FILE_TARGET_NOW: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(FILE_TARGET);

/// Sets how full a log file gets before the writer turns to the other, for every store in
/// this process from now on: tests make it small so that turns and checkpoints happen often.
pub(crate) fn set_file_target(bytes: u64) {
    FILE_TARGET_NOW.store(bytes.max(1), std::sync::atomic::Ordering::Relaxed);
}
/// How far the writer gets into an unprepared file before it asks for the other to be
/// prepared.
pub(crate) const PREPARE_AFTER: u64 = 1 << 20;
/// Zeros are written in pieces of this size, so that a closing store need not wait for a
/// whole file.
const PREPARE_PIECE: usize = 1 << 20;

/// How full a file gets before the writer turns to the other.
pub(crate) fn file_target() -> u64 {
    FILE_TARGET_NOW.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `file` already holds `file_target()` bytes, so that frames written into it
/// up to there overwrite and do not extend it.
pub(crate) fn is_prepared(file: &File) -> std::io::Result<bool> {
    Ok(file.metadata()?.len() >= file_target())
}

/// Prepares `file`: fills it with zeros from its end up to `target` and syncs it.
/// Returns whether it is prepared: false if `closing` was set meanwhile (the file is then
/// only longer, which changes nothing for the frames in it).
pub(crate) fn prepare(
    file: &File,
    target: u64,
    closing: &std::sync::atomic::AtomicBool,
) -> std::io::Result<bool> {
    let mut len = file.metadata()?.len();
    if len >= target {
        return Ok(true);
    }
    let zeros = vec![0u8; PREPARE_PIECE];
    while len < target {
        if closing.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        let piece = usize::try_from(target - len).map_or(PREPARE_PIECE, |n| n.min(PREPARE_PIECE));
        file.write_all_at(&zeros[..piece], len)?;
        len += u64::try_from(piece).expect("fits");
    }
    file.sync_all()?;
    Ok(true)
}
const MAGIC: &[u8; 4] = b"LWF1";
const HEADER_LEN: usize = 32;
/// One sled insertion: (key, value).
pub(crate) type Op = (Vec<u8>, Vec<u8>);

/// A frame read back: its id and its insertions.
pub(crate) struct Frame {
    pub id: u64,
    pub ops: Vec<Op>,
}

fn digest(header: &[u8], body: &[u8]) -> [u8; 16] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(header);
    context.update(body);
    let mut first = [0u8; 16];
    first.copy_from_slice(&context.finish().as_ref()[..16]);
    first
}

/// Appends one frame of `ops` with `id` to `out`.
pub(crate) fn encode_frame(id: u64, ops: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0u8; 16]);
    for (k, v) in ops {
        for bytes in [k, v] {
            let len = u32::try_from(bytes.len()).expect("keys and values are far below 4 GiB");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(bytes);
        }
    }
    let body_len =
        u32::try_from(out.len() - start - HEADER_LEN).expect("one batch is far below 4 GiB");
    out[start + 4..start + 8].copy_from_slice(&body_len.to_be_bytes());
    let sum = digest(&out[start..start + 16], &out[start + HEADER_LEN..]);
    out[start + 16..start + HEADER_LEN].copy_from_slice(&sum);
}

/// The frames at the start of `data` with consecutive ids, up to the first that is torn or
/// does not continue them.
pub(crate) fn decode_frames(data: &[u8]) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    let mut at = 0;
    while let Some(header) = data.get(at..at + HEADER_LEN) {
        if &header[..4] != MAGIC {
            break;
        }
        let body_len = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        let id = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
        let Some(body) = usize::try_from(body_len)
            .ok()
            .and_then(|len| data.get(at + HEADER_LEN..at + HEADER_LEN + len))
        else {
            break;
        };
        if digest(&header[..16], body) != header[16..] {
            break;
        }
        if frames
            .last()
            .is_some_and(|last| last.id.checked_add(1) != Some(id))
        {
            break;
        }
        let Some(ops) = decode_ops(body) else { break };
        frames.push(Frame { id, ops });
        at += HEADER_LEN + body.len();
    }
    frames
}

fn decode_ops(mut body: &[u8]) -> Option<Vec<Op>> {
    let take = |body: &mut &[u8]| -> Option<Vec<u8>> {
        let len = usize::try_from(u32::from_be_bytes(body.get(..4)?.try_into().ok()?)).ok()?;
        let bytes = body.get(4..4 + len)?.to_vec();
        *body = &body[4 + len..];
        Some(bytes)
    };
    let mut ops = Vec::new();
    while !body.is_empty() {
        let k = take(&mut body)?;
        let v = take(&mut body)?;
        ops.push((k, v));
    }
    Some(ops)
}

/// What recovery found in the two files.
pub(crate) struct Recovered {
    /// Every frame, oldest first.
    pub frames: Vec<Frame>,
    /// The file holding the newest frames, if any.
    pub newest_file: Option<usize>,
}

/// Reads both files (a missing one holds nothing).
pub(crate) fn recover(dir: &Path) -> std::io::Result<Recovered> {
    let mut runs: Vec<(usize, Vec<Frame>)> = Vec::new();
    for (file, name) in FILE_NAMES.iter().enumerate() {
        let data = match std::fs::read(dir.join(name)) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let frames = decode_frames(&data);
        if !frames.is_empty() {
            runs.push((file, frames));
        }
    }
    runs.sort_by_key(|(_, frames)| frames[0].id);
    let newest_file = runs.last().map(|(file, _)| *file);
    Ok(Recovered {
        frames: runs.into_iter().flat_map(|(_, frames)| frames).collect(),
        newest_file,
    })
}

/// The writing end: the file being written, where, and the next frame's id.
pub(crate) struct Writer {
    dir: PathBuf,
    files: [std::sync::Arc<File>; 2],
    current: usize,
    offset: u64,
    next_id: u64,
    buffer: Vec<u8>,
}

impl Writer {
    /// Opens (creating if absent) both files and starts writing `first_file` from its
    /// start, with frame ids from `next_id`. `empty` empties both files first (a new store:
    /// frames left by anything before must not be read as its own).
    pub(crate) fn open(
        dir: &Path,
        first_file: usize,
        next_id: u64,
        empty: bool,
    ) -> std::io::Result<Writer> {
        let open = |name: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(empty)
                .open(dir.join(name))
        };
        Ok(Writer {
            dir: dir.to_path_buf(),
            files: [
                std::sync::Arc::new(open(FILE_NAMES[0])?),
                std::sync::Arc::new(open(FILE_NAMES[1])?),
            ],
            current: first_file,
            offset: 0,
            next_id,
            buffer: Vec::new(),
        })
    }

    /// Whether the file being written is full, so the next frame should go to the other.
    pub(crate) fn wants_turn(&self) -> bool {
        self.offset >= file_target()
    }

    /// How much has been written into the current file.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Log file 0 or 1.
    pub(crate) fn file(&self, file: usize) -> std::sync::Arc<File> {
        std::sync::Arc::clone(&self.files[file])
    }

    /// Turns to the other file (which the caller knows is free) and returns the one left.
    pub(crate) fn turn(&mut self) -> usize {
        let left = self.current;
        self.current = 1 - left;
        self.offset = 0;
        left
    }

    /// Writes one frame (not yet durable).
    pub(crate) fn append(&mut self, ops: &[(&[u8], &[u8])]) -> std::io::Result<()> {
        self.buffer.clear();
        encode_frame(self.next_id, ops, &mut self.buffer);
        self.files[self.current].write_all_at(&self.buffer, self.offset)?;
        self.offset += u64::try_from(self.buffer.len()).expect("fits");
        self.next_id += 1;
        // A big batch leaves a big buffer; do not keep it.
        if self.buffer.capacity() > usize::try_from(FILE_TARGET).unwrap_or(usize::MAX) {
            self.buffer = Vec::new();
        }
        Ok(())
    }

    /// Makes every frame appended so far durable.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.files[self.current].sync_data()
    }

    /// The file being written, to sync it on another thread (`sync_data` of it makes every
    /// frame appended so far durable).
    pub(crate) fn current_file(&self) -> std::sync::Arc<File> {
        self.file(self.current)
    }

    /// The file being written (0 or 1).
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    pub(crate) fn path(&self, file: usize) -> PathBuf {
        self.dir.join(FILE_NAMES[file])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(n: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| (vec![b'k', i], vec![i; usize::from(i) * 10]))
            .collect()
    }

    fn borrowed(ops: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], &[u8])> {
        ops.iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect()
    }

    #[test]
    fn preparing_fills_with_zeros_up_to_the_target_and_keeps_the_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAMES[0]);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut frame = Vec::new();
        encode_frame(9, &borrowed(&ops(3)), &mut frame);
        file.write_all_at(&frame, 0).unwrap();
        let target = 3 * PREPARE_PIECE as u64 + 5;
        let open = std::sync::atomic::AtomicBool::new(false);
        assert!(prepare(&file, target, &open).unwrap());
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, target);
        assert_eq!(&data[..frame.len()], &frame[..]);
        assert!(data[frame.len()..].iter().all(|&b| b == 0));
        let frames = decode_frames(&data);
        assert_eq!(frames.iter().map(|f| f.id).collect::<Vec<_>>(), vec![9]);
        // Prepared already: nothing is written.
        assert!(prepare(&file, target, &open).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), target);
        // A closing store stops preparing: the file is not prepared.
        let closing = std::sync::atomic::AtomicBool::new(true);
        assert!(!prepare(&file, 2 * target, &closing).unwrap());
        assert!(std::fs::metadata(&path).unwrap().len() < 2 * target);
    }

    #[test]
    fn frames_read_back_up_to_the_first_torn_or_stale_one() {
        let mut data = Vec::new();
        for id in 5..9 {
            encode_frame(id, &borrowed(&ops(3)), &mut data);
        }
        let frames = decode_frames(&data);
        assert_eq!(
            frames.iter().map(|f| f.id).collect::<Vec<_>>(),
            [5, 6, 7, 8]
        );
        assert_eq!(frames[2].ops, ops(3));

        // Any byte flipped in the third frame ends the run after the second.
        let third = {
            let mut one = Vec::new();
            encode_frame(0, &borrowed(&ops(3)), &mut one);
            2 * one.len()
        };
        for at in [third, third + 5, third + 12, third + 20, third + 40] {
            let mut bad = data.clone();
            bad[at] ^= 1;
            assert_eq!(decode_frames(&bad).len(), 2, "byte {at}");
        }
        // Cut short.
        assert_eq!(decode_frames(&data[..data.len() - 1]).len(), 3);
        // A stale frame left from a file's earlier turn: ids do not continue.
        let mut recycled = Vec::new();
        encode_frame(20, &borrowed(&ops(2)), &mut recycled);
        encode_frame(21, &borrowed(&ops(2)), &mut recycled);
        recycled.extend_from_slice(&data);
        assert_eq!(
            decode_frames(&recycled)
                .iter()
                .map(|f| f.id)
                .collect::<Vec<_>>(),
            [20, 21]
        );
        // Zeros (a preallocated or empty file) hold nothing.
        assert!(decode_frames(&[0u8; 100]).is_empty());
    }

    #[test]
    fn recovery_orders_the_two_files_by_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), 1, 1, true).unwrap();
        writer.append(&borrowed(&ops(1))).unwrap();
        writer.append(&borrowed(&ops(2))).unwrap();
        assert_eq!(writer.turn(), 1);
        writer.append(&borrowed(&ops(3))).unwrap();
        writer.sync().unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(
            recovered.frames.iter().map(|f| f.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(recovered.newest_file, Some(0));
        assert_eq!(recovered.frames[2].ops, ops(3));
        // File 1 is written again from its start: its old frames 1 and 2 are cut off.
        assert_eq!(writer.turn(), 0);
        writer.append(&borrowed(&ops(4))).unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(
            recovered.frames.iter().map(|f| f.id).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(recovered.newest_file, Some(1));
    }
}

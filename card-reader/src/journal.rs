//! The terminal's journal of swipes (`~/.card-reader/pending.jsonl`): one JSON line per event,
//! fsync'd before the call it announces. A swipe is `started` (written *before* the charge
//! request leaves, with its Idempotency-Key), `placed` (the server's charge id is known), and
//! `finished` (confirmed, cancelled, voided, expired, refused). A swipe with no `finished`
//! line is pending: `card-reader resume` finishes or cancels it by repeating the charge
//! request under the same key, which the server answers with the first charge, never a second.

use crate::api::ChargeRequest;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        key: String,
        at: String,
        request: ChargeRequest,
    },
    Placed {
        key: String,
        at: String,
        charge_id: String,
    },
    Finished {
        key: String,
        at: String,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        charge_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt_no: Option<String>,
    },
}

impl Event {
    fn key(&self) -> &str {
        match self {
            Event::Started { key, .. }
            | Event::Placed { key, .. }
            | Event::Finished { key, .. } => key,
        }
    }
}

/// How a swipe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Confirmed,
    Cancelled,
    /// Too many wrong codes, or voided by someone else.
    Voided,
    Expired,
    Refunded,
    /// The server refused the charge: no hold was placed.
    Refused,
    /// `resume --cancel` found that the charge request never reached the server.
    NeverPlaced,
}

/// A swipe without a `finished` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub key: String,
    pub started_at: String,
    pub request: ChargeRequest,
    pub charge_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// The journal at `path` (created, with its folder, on the first write).
    pub fn at(path: impl Into<PathBuf>) -> Journal {
        Journal { path: path.into() }
    }

    /// `$HOME/.card-reader/pending.jsonl`.
    pub fn default_path() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|home| Path::new(&home).join(".card-reader/pending.jsonl"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends one event and fsyncs it (and, for a new file, its folder) before returning.
    pub fn append(&self, event: &Event) -> Result<(), JournalError> {
        let mut line =
            serde_json::to_string(event).map_err(|e| self.io(std::io::Error::other(e)))?;
        line.push('\n');
        let created = !self.path.exists();
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&self.path).map_err(|e| self.io(e))?;
        // A line cut short by a crash would swallow this one: start on a line of its own.
        if !ends_with_newline(&self.path).map_err(|e| self.io(e))? {
            line.insert(0, '\n');
        }
        // One write of the whole line: O_APPEND keeps it whole among other appenders.
        file.write_all(line.as_bytes()).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))?;
        if created {
            sync_parent(&self.path).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Every event, in order. A line cut short by a crash mid-write (the last one) or that
    /// is not ours is skipped: it announced nothing that was sent.
    pub fn events(&self) -> Result<Vec<Event>, JournalError> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut events = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| self.io(e))?;
            if let Ok(event) = serde_json::from_str::<Event>(&line) {
                events.push(event);
            }
        }
        Ok(events)
    }

    /// The swipes without a `finished` line, oldest first.
    pub fn pending(&self) -> Result<Vec<Pending>, JournalError> {
        Ok(fold_pending(self.events()?))
    }
}

/// Folds events into the unfinished swipes, in the order they started.
pub fn fold_pending(events: Vec<Event>) -> Vec<Pending> {
    let mut open: Vec<Pending> = Vec::new();
    for event in events {
        let index = open.iter().position(|p| p.key == event.key());
        match (event, index) {
            (
                Event::Started {
                    key, at, request, ..
                },
                None,
            ) => open.push(Pending {
                key,
                started_at: at,
                request,
                charge_id: None,
            }),
            (Event::Placed { charge_id, .. }, Some(i)) => open[i].charge_id = Some(charge_id),
            (Event::Finished { .. }, Some(i)) => {
                open.remove(i);
            }
            // A repeated `started`, or an event for a swipe already finished: nothing to do.
            _ => {}
        }
    }
    open
}

/// Whether the file is empty or ends with a newline.
fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

#[cfg(unix)]
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Now, for the journal's `at` (informational: the server stamps what counts).
pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(order: &str) -> ChargeRequest {
        ChargeRequest {
            order_id: order.into(),
            card_uid: "04A1B2C3D4E5F6".into(),
            amount: "50.00".into(),
            staff: None,
            challenge: None,
        }
    }

    fn started(key: &str, order: &str) -> Event {
        Event::Started {
            key: key.into(),
            at: "t".into(),
            request: request(order),
        }
    }

    fn placed(key: &str, charge: &str) -> Event {
        Event::Placed {
            key: key.into(),
            at: "t".into(),
            charge_id: charge.into(),
        }
    }

    fn finished(key: &str) -> Event {
        Event::Finished {
            key: key.into(),
            at: "t".into(),
            outcome: Outcome::Confirmed,
            charge_id: None,
            receipt_no: None,
        }
    }

    fn check(events: Vec<Event>, expected: &[(&str, Option<&str>)]) {
        let got: Vec<(String, Option<String>)> = fold_pending(events)
            .into_iter()
            .map(|p| (p.key, p.charge_id))
            .collect();
        let expected: Vec<(String, Option<String>)> = expected
            .iter()
            .map(|(k, c)| (k.to_string(), c.map(str::to_string)))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_swipe_is_pending_until_finished() {
        check(vec![], &[]);
        check(vec![started("a", "O1")], &[("a", None)]);
        check(
            vec![started("a", "O1"), placed("a", "C1")],
            &[("a", Some("C1"))],
        );
        check(
            vec![started("a", "O1"), placed("a", "C1"), finished("a")],
            &[],
        );
        check(
            vec![
                started("a", "O1"),
                started("b", "O2"),
                finished("a"),
                placed("b", "C2"),
                started("c", "O3"),
            ],
            &[("b", Some("C2")), ("c", None)],
        );
        check(vec![placed("x", "C9"), finished("y")], &[]);
    }

    #[test]
    fn survives_a_torn_last_line_and_keeps_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::at(dir.path().join("sub/pending.jsonl"));
        assert!(journal.pending().unwrap().is_empty(), "no file yet");
        journal.append(&started("a", "O1")).unwrap();
        journal.append(&placed("a", "C1")).unwrap();
        journal.append(&started("b", "O2")).unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(journal.path())
            .unwrap();
        file.write_all(br#"{"event":"finished","key":"b","at":"#)
            .unwrap();
        assert_eq!(journal.pending().unwrap().len(), 2);
        journal.append(&finished("a")).unwrap();
        let pending = journal.pending().unwrap();
        assert_eq!(pending.len(), 1, "the line after the torn one is read");
        assert_eq!(pending[0].request, request("O2"));
        journal.append(&placed("b", "C2")).unwrap();
        let pending = journal.pending().unwrap();
        assert_eq!(pending[0].charge_id.as_deref(), Some("C2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(journal.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

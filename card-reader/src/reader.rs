//! `PcscReader`: the `CardSource` on a real PC/SC stack (pcsc-lite's pcscd on Linux,
//! WinSCard on Windows). Lists readers, waits for a card with `SCardGetStatusChange`, sends
//! GET UID, and turns PC/SC errors into `CardError`s a worker can act on.

use crate::card::{parse_uid_response, CardError, CardSource, GET_UID_APDU};
use crate::uid::CardUid;
use pcsc::{Context, Disposition, Protocols, ReaderState, Scope, ShareMode, State};
use std::ffi::CString;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the PC/SC daemon may take to answer `SCardEstablishContext`. pcsc-lite fails at
/// once when its socket is missing; this bounds the odd case of a daemon that is wedged.
pub const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest single `SCardGetStatusChange` wait, so a wait ends near its deadline.
const STATUS_POLL: Duration = Duration::from_millis(500);

pub struct PcscReader {
    context: Context,
    /// The reader to use (exact name, or a part of it); any reader when `None`.
    reader: Option<String>,
}

impl PcscReader {
    /// Connects to the PC/SC service; fails fast (never hangs) when pcscd is not running.
    pub fn connect(reader: Option<String>) -> Result<PcscReader, CardError> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Context::establish(Scope::User));
        });
        let context = match rx.recv_timeout(ESTABLISH_TIMEOUT) {
            Ok(Ok(context)) => context,
            Ok(Err(e)) => return Err(map_error(e)),
            Err(_) => {
                return Err(CardError::NoService {
                    detail: format!("no answer within {} s", ESTABLISH_TIMEOUT.as_secs()),
                })
            }
        };
        Ok(PcscReader { context, reader })
    }

    /// The names of the connected readers.
    pub fn readers(&self) -> Result<Vec<String>, CardError> {
        Ok(self
            .reader_names()?
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect())
    }

    fn reader_names(&self) -> Result<Vec<CString>, CardError> {
        match self.context.list_readers_owned() {
            Ok(names) if names.is_empty() => Err(CardError::NoReader),
            Ok(names) => Ok(names),
            Err(pcsc::Error::NoReadersAvailable) => Err(CardError::NoReader),
            Err(e) => Err(map_error(e)),
        }
    }

    /// The readers to watch: the one asked for, or all.
    fn chosen(&self) -> Result<Vec<CString>, CardError> {
        let names = self.reader_names()?;
        let Some(wanted) = &self.reader else {
            return Ok(names);
        };
        let matching: Vec<CString> = names
            .iter()
            .filter(|n| n.to_string_lossy().contains(wanted.as_str()))
            .cloned()
            .collect();
        if matching.is_empty() {
            return Err(CardError::UnknownReader {
                name: wanted.clone(),
                available: names
                    .iter()
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect(),
            });
        }
        Ok(matching)
    }

    /// Waits until one of `names` holds a card; returns that reader.
    fn wait_for_card(&self, names: Vec<CString>, wait: Duration) -> Result<CString, CardError> {
        let deadline = Instant::now() + wait;
        let mut states: Vec<ReaderState> = names
            .into_iter()
            .map(|n| ReaderState::new(n, State::UNAWARE))
            .collect();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self
                .context
                .get_status_change(remaining.min(STATUS_POLL), &mut states)
            {
                Ok(()) | Err(pcsc::Error::Timeout) => {}
                Err(e) => return Err(map_error(e)),
            }
            let present = states.iter().find(|s| {
                s.event_state().contains(State::PRESENT) && !s.event_state().contains(State::MUTE)
            });
            if let Some(state) = present {
                return Ok(state.name().to_owned());
            }
            if remaining.is_zero() {
                return Err(CardError::NoCard {
                    secs: wait.as_secs(),
                });
            }
            states.iter_mut().for_each(ReaderState::sync_current_state);
        }
    }
}

impl CardSource for PcscReader {
    fn read_uid(&mut self, wait: Duration) -> Result<CardUid, CardError> {
        let names = self.chosen()?;
        let reader = self.wait_for_card(names, wait)?;
        let card = self
            .context
            .connect(&reader, ShareMode::Shared, Protocols::ANY)
            .map_err(map_error)?;
        let mut buffer = [0u8; pcsc::MAX_BUFFER_SIZE];
        let response = card
            .transmit(&GET_UID_APDU, &mut buffer)
            .map_err(map_error)?;
        // No bytes at all, not even a status word: the card left the field mid-command (a
        // reader that lost the card answers so rather than with an error).
        let uid = if response.is_empty() {
            Err(CardError::Removed)
        } else {
            parse_uid_response(response)
        };
        // Leaving the card as it is; a failed disconnect (the card left the field just now)
        // does not undo a UID already read.
        let _ = card.disconnect(Disposition::LeaveCard);
        uid
    }
}

/// PC/SC errors in the terms of the terminal.
fn map_error(e: pcsc::Error) -> CardError {
    use pcsc::Error as E;
    match e {
        E::NoService | E::ServiceStopped | E::CommError => CardError::NoService {
            detail: e.to_string(),
        },
        E::NoReadersAvailable | E::ReaderUnavailable => CardError::NoReader,
        E::RemovedCard
        | E::ResetCard
        | E::NoSmartcard
        | E::UnpoweredCard
        | E::UnresponsiveCard
        | E::CommDataLost
        | E::NotTransacted => CardError::Removed,
        other => CardError::Pcsc(other.to_string()),
    }
}

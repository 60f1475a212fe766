//! What callers ask of the ledger (commands, each under an idempotency key), what they get
//! back, and the typed errors a caller can act on.

use crate::account::AccountError;
use crate::fiscal::{Month, Year};
use crate::money::Fen;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;
/// Longest hold id accepted.
pub const HOLD_ID_LEN_MAX: usize = 64;
/// Longest time to live of a hold.
pub const HOLD_TTL_SECS_MAX: u32 = 7 * 24 * 3600;

pub type Refs = BTreeMap<String, String>;

/// One ledger command. Entries are stamped by the ledger's clock, never by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Monthly credit: debits `funding:{district}:{year}`, credits `elder:{elder_id}:{year}`.
    Issue {
        elder_id: String,
        district: String,
        period: Month,
        amount: Fen,
    },
    /// Reserves `amount` of the elder's credit for the current fiscal year for `ttl_secs`.
    Hold {
        hold_id: String,
        elder_id: String,
        amount: Fen,
        ttl_secs: u32,
    },
    /// Turns a pending hold into a `charge` entry to the provider's payable account.
    Post {
        hold_id: String,
        provider_id: String,
        refs: Refs,
    },
    /// Releases a pending hold.
    Void { hold_id: String },
    /// Reverses a posted charge with a `refund` entry.
    Refund { hold_id: String, refs: Refs },
    /// A nursing-fee offset against the elder's credit of `month`'s year.
    Offset {
        elder_id: String,
        provider_id: String,
        month: Month,
        amount: Fen,
        refs: Refs,
    },
    /// Pays a provider: debits its payable, credits `settled:{district}`.
    Payout {
        provider_id: String,
        district: String,
        amount: Fen,
        refs: Refs,
    },
    /// Closes a fiscal year to new credit and holds, and voids its pending holds.
    CloseYear { year: Year },
    /// Forfeits all remaining credit of one elder's year into `forfeit:{district}:{year}`
    /// (voiding any pending hold first). Only after `CloseYear`.
    Forfeit {
        elder_id: String,
        district: String,
        year: Year,
    },
}

/// A command under the caller's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub key: String,
    pub command: Command,
}

impl Request {
    pub fn new(key: impl Into<String>, command: Command) -> Request {
        Request {
            key: key.into(),
            command,
        }
    }
}

/// The journal entry a command wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    pub seq: u64,
    /// Lowercase hex entry hash.
    pub hash: String,
}

/// What a command did. Replaying the same request returns the same outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The ledger's time when the command took effect (RFC 3339).
    pub at: String,
    /// The entry written, if any.
    pub entry: Option<EntryRef>,
    /// The amount issued, held, posted, refunded, offset, paid or forfeited.
    pub amount: Fen,
    /// For holds: when it expires (RFC 3339).
    pub expires_at: Option<String>,
    /// Holds voided by `CloseYear` or `Forfeit`.
    pub voided_holds: u64,
}

/// The life of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    Pending,
    Posted,
    Voided,
    Expired,
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    InvalidId(#[from] AccountError),
    #[error("amount must be positive: {0}")]
    NonPositiveAmount(Fen),
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("insufficient credit: available {available}, requested {requested}")]
    InsufficientCredit { available: Fen, requested: Fen },
    #[error("unknown hold {0}")]
    UnknownHold(String),
    #[error("hold {hold_id} already exists")]
    HoldExists { hold_id: String },
    #[error("hold {hold_id} is {state:?}, not pending")]
    HoldNotPending { hold_id: String, state: HoldState },
    #[error("hold {hold_id} is {state:?}, only a posted charge can be refunded")]
    NotRefundable { hold_id: String, state: HoldState },
    #[error("fiscal year {0} is closed")]
    YearClosed(Year),
    #[error("fiscal year {0} is not closed: close it before forfeiting")]
    YearOpen(Year),
    #[error("amounts overflow")]
    Overflow,
    #[error("idempotency key {key:?} was used for a different request")]
    IdempotencyMismatch { key: String },
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the ledger has stopped")]
    Stopped,
}

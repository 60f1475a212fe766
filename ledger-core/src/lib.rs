//! Subsidy ledger core.

pub mod account;
pub mod audit;
pub mod checkpoint;
pub mod clock;
pub mod command;
pub mod engine;
pub mod fiscal;
pub mod jcs;
pub mod journal;
pub mod ledger;
pub mod merkle;
pub mod money;
pub mod receipt;
pub mod storage;
mod stored;
mod wal;

pub use command::{Command, CommandError, Outcome, Request};
pub use ledger::{Ledger, Verify};
pub use money::Fen;

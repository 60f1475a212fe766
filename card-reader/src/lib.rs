//! card-reader: the provider's terminal client. It reads the elder's IC card UID through PC/SC
//! (`reader`, behind the default `pcsc` feature) or takes one a phone read itself, and settles
//! the charge against the ledger server over HTTP only (API.md "Orders", "Charges"), keeping a
//! local fsync'd journal so a dropped network never loses or doubles a charge.
//!
//! The CLI (`src/main.rs`) is one user of this library; a phone app or terminal firmware can
//! drive `settle::Terminal` with its own `settle::Console` and `card::CardSource`.

pub mod amount;
pub mod api;
pub mod card;
pub mod journal;
pub mod messages;
#[cfg(feature = "pcsc")]
pub mod reader;
pub mod receipt;
pub mod settle;
pub mod uid;

//! Subsidy ledger server: the HTTP API over ledger-core.

pub mod app;
pub mod auth;
pub mod body;
pub mod clock;
pub mod error;
pub mod idnumber;
pub mod pii;
pub mod registry;
pub mod reports;
pub mod routes;
pub mod settlement;
pub mod sms;

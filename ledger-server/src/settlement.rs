//! Settlement records: work orders, charges (the server side of a ledger hold), receipts,
//! reconciliation marks and payouts. Kept in memory, persisted as ledger records in the same
//! atomic batch as the ledger command they go with (a hold and its charge record, a posted
//! charge and its receipt), so the two can never disagree after a crash.

use crate::error::ApiError;
use ledger_core::command::{Outcome, Request};
use ledger_core::ledger::Record;
use ledger_core::{Fen, Ledger};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Stripes of the per-charge (and per-idempotency-key) lock.
const LOCK_STRIPES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Dispatched,
    Accepted,
    Agreed,
    Completed,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub elder_id: String,
    pub district: String,
    pub item_code: String,
    pub provider_id: String,
    pub status: OrderStatus,
    pub price: Option<Fen>,
    pub note: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub charge_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Challenge {
    Sms,
    Token,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmsStatus {
    Queued,
    Sent,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Pending,
    Confirmed,
    Voided,
    Expired,
    Refunded,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
    pub order_id: String,
    pub elder_id: String,
    pub district: String,
    pub provider_id: String,
    pub item_code: String,
    pub card_uid: String,
    pub amount: Fen,
    pub staff: Option<String>,
    pub challenge: Challenge,
    /// Keyed hash of the current SMS code (never the code).
    pub code_tag: Option<String>,
    /// When each SMS for this charge was handed to the sender.
    pub sms_sent_at: Vec<String>,
    pub sms_status: Option<SmsStatus>,
    pub attempts_left: u32,
    /// Times of wrong codes (fraud signals).
    pub failed_at: Vec<String>,
    pub status: ChargeStatus,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub confirmed_at: Option<String>,
    pub receipt_no: Option<String>,
    pub entry_seq: Option<u64>,
    pub refund_reason: Option<String>,
    /// The creating request's idempotency key, and a fingerprint of the validated request
    /// (hex SHA-256 of its RFC 8785 canonical JSON).
    pub idempotency_key: String,
    pub request_hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    Matched,
    Disputed,
}

/// A receipt: derived from its confirmed charge and the charge's journal entry (so it is
/// rebuilt, never lost, after a crash), plus the district's reconciliation mark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    pub no: String,
    pub charge_id: String,
    pub entry_hash: String,
    pub mark: Option<Match>,
    /// The close round that paid this receipt (written with the payout, atomically).
    pub paid_round: Option<u64>,
    /// The payout entry that paid this receipt.
    pub paid_seq: Option<u64>,
}

/// What is stored of a reconciliation mark (`recon/{receipt_no}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mark {
    pub mark: Option<Match>,
    pub paid_round: Option<u64>,
    pub paid_seq: Option<u64>,
}

pub mod prefix {
    pub const ORDER: &str = "order/";
    pub const CHARGE: &str = "charge/";
    pub const MARK: &str = "recon/";
    pub const CHARGE_KEY: &str = "charge-key/";
    pub const TOTP_STEP: &str = "totp-step/";
    pub const QUARTER_CLOSE: &str = "quarter-close/";
}

pub fn record<T: Serialize>(prefix: &str, id: &str, value: &T) -> Record {
    (
        format!("{prefix}{id}").into_bytes(),
        Some(serde_json::to_vec(value).expect("settlement records serialise to JSON")),
    )
}

#[derive(Default)]
pub struct Books {
    pub orders: HashMap<String, Order>,
    pub charges: HashMap<String, Charge>,
    pub receipts: BTreeMap<String, Receipt>,
    /// (provider, idempotency key) → charge id.
    pub charge_keys: HashMap<String, String>,
    /// elder → last TOTP time step accepted.
    pub totp_steps: HashMap<String, u64>,
    /// "{district}/{quarter}" → number of closes run.
    pub quarter_closes: HashMap<String, u64>,
}

pub struct Settlement {
    ledger: Arc<Ledger>,
    books: RwLock<Books>,
    locks: Vec<tokio::sync::Mutex<()>>,
    next_order: AtomicU64,
    next_charge: AtomicU64,
    next_receipt: AtomicU64,
}

fn load<T: DeserializeOwned>(ledger: &Ledger, prefix: &str) -> anyhow::Result<Vec<(String, T)>> {
    ledger
        .records(prefix.as_bytes())?
        .into_iter()
        .map(|(k, v)| {
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let value = serde_json::from_slice(&v)
                .map_err(|e| anyhow::anyhow!("record {prefix}{id} is damaged: {e}"))?;
            Ok((id, value))
        })
        .collect()
}

fn number(id: &str, skip: usize) -> u64 {
    id.get(skip..).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The lock stripe of a name.
fn stripe(name: &str) -> usize {
    let hash = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let bytes: [u8; 8] = hash.as_ref()[..8]
        .try_into()
        .expect("a SHA-256 digest has at least 8 bytes");
    usize::try_from(u64::from_le_bytes(bytes) % LOCK_STRIPES as u64)
        .expect("a stripe index below LOCK_STRIPES fits in usize")
}

pub fn order_lock(order_id: &str) -> String {
    format!("order:{order_id}")
}

pub fn elder_lock(elder_id: &str) -> String {
    format!("elder:{elder_id}")
}

pub fn charge_key(provider: &str, key: &str) -> String {
    format!("{provider}/{key}")
}

impl Settlement {
    pub fn load(ledger: Arc<Ledger>) -> anyhow::Result<Settlement> {
        let mut books = Books::default();
        for (_, o) in load::<Order>(&ledger, prefix::ORDER)? {
            books.orders.insert(o.id.clone(), o);
        }
        for (_, mut c) in load::<Charge>(&ledger, prefix::CHARGE)? {
            if c.receipt_no.is_some() && c.entry_seq.is_none() {
                // Confirmed in the batch with its post, but stopped before the seq was stamped.
                let hold = ledger.hold(&c.id).map_err(|e| anyhow::anyhow!("{e}"))?;
                c.entry_seq = hold.and_then(|h| h.charge_seq);
                if let Some(seq) = c.entry_seq {
                    c.confirmed_at = ledger.entry(seq)?.map(|e| e.at);
                }
            }
            books.charges.insert(c.id.clone(), c);
        }
        let marks: HashMap<String, Mark> =
            load::<Mark>(&ledger, prefix::MARK)?.into_iter().collect();
        for charge in books.charges.values() {
            let (Some(no), Some(seq)) = (&charge.receipt_no, charge.entry_seq) else {
                continue;
            };
            let entry = ledger.entry(seq)?.ok_or_else(|| {
                anyhow::anyhow!("charge {} names entry {seq}, which is missing", charge.id)
            })?;
            let mark = marks.get(no);
            books.receipts.insert(
                no.clone(),
                Receipt {
                    no: no.clone(),
                    charge_id: charge.id.clone(),
                    entry_hash: hex::encode(entry.hash),
                    mark: mark.and_then(|m| m.mark),
                    paid_round: mark.and_then(|m| m.paid_round),
                    paid_seq: mark.and_then(|m| m.paid_seq),
                },
            );
        }
        for (k, id) in load::<String>(&ledger, prefix::CHARGE_KEY)? {
            books.charge_keys.insert(k, id);
        }
        for (elder, step) in load::<u64>(&ledger, prefix::TOTP_STEP)? {
            books.totp_steps.insert(elder, step);
        }
        for (k, n) in load::<u64>(&ledger, prefix::QUARTER_CLOSE)? {
            books.quarter_closes.insert(k, n);
        }
        let next_order = books
            .orders
            .keys()
            .map(|id| number(id, 1))
            .max()
            .unwrap_or(0)
            + 1;
        let next_charge = books
            .charges
            .keys()
            .map(|id| number(id, 1))
            .max()
            .unwrap_or(0)
            + 1;
        // Receipt numbers are R{year}{seq:09}; the sequence runs across years.
        let next_receipt = books
            .receipts
            .keys()
            .map(|no| number(no, 5))
            .max()
            .unwrap_or(0)
            + 1;
        Ok(Settlement {
            ledger,
            books: RwLock::new(books),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            next_order: AtomicU64::new(next_order),
            next_charge: AtomicU64::new(next_charge),
            next_receipt: AtomicU64::new(next_receipt),
        })
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Books> {
        self.books.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Books> {
        self.books.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Serialises everything done to the named charges, orders, elders or idempotency keys
    /// (names are `order:{id}`, `elder:{id}`, `key:{provider}/{key}`). A caller names all it
    /// needs in one call: the stripes are taken once each and in ascending order, so two
    /// callers with overlapping names cannot deadlock, and two names sharing a stripe do not
    /// make a caller wait on itself.
    pub async fn lock<N: AsRef<str>>(&self, names: &[N]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = names.iter().map(|name| stripe(name.as_ref())).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.locks[i].lock().await);
        }
        guards
    }

    pub fn new_order_id(&self) -> String {
        format!("O{:08}", self.next_order.fetch_add(1, Ordering::Relaxed))
    }

    pub fn new_charge_id(&self) -> String {
        format!("C{:08}", self.next_charge.fetch_add(1, Ordering::Relaxed))
    }

    pub fn new_receipt_no(&self, year: ledger_core::fiscal::Year) -> String {
        format!(
            "R{year}{:09}",
            self.next_receipt.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Writes records without waiting for them to be durable: for records that only stamp
    /// what can be rebuilt after a crash (a confirmed charge's entry seq, from the ledger's
    /// hold record) or that report a fact outside the ledger (an SMS gateway's answer). The
    /// ledger applies jobs in the order submitted, so a later `commit` of the same record
    /// overwrites this one, and a `commit` submitted after it is durable only with it.
    pub fn write_behind(&self, records: Vec<Record>) {
        self.ledger
            .submit_atomic_with(Vec::new(), records, |result| {
                if let Err(e) = result {
                    tracing::error!(error = %e, "a write-behind record was not written");
                }
            });
    }

    /// Runs `requests` and writes the charge's record in one atomic, durable batch, then
    /// puts the charge in the books.
    pub async fn save_charge(
        &self,
        requests: Vec<Request>,
        charge: &Charge,
    ) -> Result<Vec<Outcome>, ApiError> {
        let outcome = self
            .commit(requests, vec![record(prefix::CHARGE, &charge.id, charge)])
            .await?;
        self.write()
            .charges
            .insert(charge.id.clone(), charge.clone());
        Ok(outcome)
    }

    /// Runs ledger commands and writes records in one atomic, durable batch.
    pub async fn commit(
        &self,
        requests: Vec<Request>,
        records: Vec<Record>,
    ) -> Result<Vec<Outcome>, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ledger.submit_atomic_with(requests, records, move |r| {
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| ApiError::internal("ledger writer dropped a reply"))?
            .map_err(ApiError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::clock::ManualClock;
    use ledger_core::command::{Command, Refs};

    /// A confirmed charge whose entry-seq stamp (written behind, not waited for) was lost in
    /// a crash: loading takes the seq from the ledger's hold record and the time from the
    /// entry, and the receipt is rebuilt with the entry's hash.
    #[test]
    fn a_lost_seq_stamp_is_rebuilt_from_the_ledger_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let now = ledger_core::fiscal::parse_timestamp("2026-03-15T02:00:00Z").unwrap();
        let clock = Arc::new(ManualClock::new(now));
        let ledger = Ledger::create(dir.path(), clock.clone()).unwrap();
        let issue = Command::Issue {
            elder_id: "E1".into(),
            district: "130102".into(),
            period: "2026-03".parse().unwrap(),
            amount: Fen::from_fen(10_000),
        };
        ledger.submit(Request::new("issue", issue)).unwrap();
        let hold = Command::Hold {
            hold_id: "C000001".into(),
            elder_id: "E1".into(),
            amount: Fen::from_fen(5_850),
            ttl_secs: 600,
        };
        ledger.submit(Request::new("hold", hold)).unwrap();
        let charge = Charge {
            id: "C000001".into(),
            order_id: "O000001".into(),
            elder_id: "E1".into(),
            district: "130102".into(),
            provider_id: "P1".into(),
            item_code: "DC001".into(),
            card_uid: "04A1B2C3".into(),
            amount: Fen::from_fen(5_850),
            staff: None,
            challenge: Challenge::Sms,
            code_tag: None,
            sms_sent_at: vec!["2026-03-15T02:00:00Z".into()],
            sms_status: Some(SmsStatus::Sent),
            attempts_left: 5,
            failed_at: Vec::new(),
            status: ChargeStatus::Confirmed,
            created_at: "2026-03-15T02:00:00Z".into(),
            expires_at: now.timestamp() + 600,
            confirmed_at: None,
            receipt_no: Some("R2026000000001".into()),
            entry_seq: None,
            refund_reason: None,
            idempotency_key: "k1".into(),
            request_hash: "00".into(),
        };
        // The post and the confirmed charge record, in one batch, as confirm writes them;
        // the stamp that would follow never made it.
        let post = Command::Post {
            hold_id: "C000001".into(),
            provider_id: "P1".into(),
            refs: Refs::new(),
        };
        let outcome = ledger
            .submit_atomic(
                vec![Request::new("post", post)],
                vec![record(prefix::CHARGE, &charge.id, &charge)],
            )
            .unwrap();
        let entry = outcome[0].entry.clone().unwrap();
        drop(ledger);

        let ledger = Arc::new(Ledger::open(dir.path(), clock, ledger_core::Verify::Full).unwrap());
        let settlement = Settlement::load(ledger).unwrap();
        let books = settlement.read();
        let loaded = &books.charges["C000001"];
        assert_eq!(loaded.entry_seq, Some(entry.seq));
        assert_eq!(loaded.confirmed_at.as_deref(), Some(outcome[0].at.as_str()));
        let receipt = &books.receipts["R2026000000001"];
        assert_eq!(receipt.charge_id, "C000001");
        assert_eq!(receipt.entry_hash, entry.hash);
    }
}

//! The registry: keys, districts and zones, policy, catalog, providers and elders, kept in
//! memory and persisted as records in the ledger's store (written through the ledger's group
//! commit, so a record is durable before a response says so). All writes pass one async gate,
//! so a validate-then-write sequence never races another writer.

use crate::error::ApiError;
use ledger_core::fiscal::Month;
use ledger_core::ledger::Record;
use ledger_core::{Fen, Ledger};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    CityAdmin,
    DistrictStaff,
    Hotline,
    Provider,
    Auditor,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub district: Option<String>,
    pub provider: Option<String>,
    /// Hex SHA-256 of the secret part of the key.
    pub secret_hash: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DispatchMode {
    Zoned,
    Free,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct District {
    pub code: String,
    pub name: String,
    pub dispatch_mode: DispatchMode,
    /// street → provider id (zoned districts).
    #[serde(default)]
    pub zones: BTreeMap<String, String>,
}

/// The six elder categories (六类老人) of SPEC.md.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ElderCategory {
    Sanwu,
    Dibao,
    Solitary,
    SeverelyDisabled,
    #[serde(rename = "age_90_plus")]
    Age90Plus,
    BereavedSingleChild,
}

impl ElderCategory {
    pub const ALL: [ElderCategory; 6] = [
        ElderCategory::Sanwu,
        ElderCategory::Dibao,
        ElderCategory::Solitary,
        ElderCategory::SeverelyDisabled,
        ElderCategory::Age90Plus,
        ElderCategory::BereavedSingleChild,
    ];
}

/// The six service categories (六大类服务) of SPEC.md.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ServiceCategory {
    DailyCare,
    RehabHealth,
    LegalAid,
    CultureRecreation,
    EmotionalSupport,
    EmergencyRescue,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    pub amounts: BTreeMap<ElderCategory, Fen>,
    pub stacking: String,
}

impl Policy {
    /// The monthly credit of an elder in `categories` (`stacking: max`).
    pub fn monthly_credit(&self, categories: &[ElderCategory]) -> Fen {
        categories
            .iter()
            .filter_map(|c| self.amounts.get(c))
            .copied()
            .max()
            .unwrap_or(Fen::ZERO)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogItem {
    pub code: String,
    pub name: String,
    pub service_category: ServiceCategory,
    pub unit: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    HomeCare,
    NursingHome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub districts: Vec<String>,
    pub price_caps: BTreeMap<String, Fen>,
    pub suspended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ElderStatus {
    Pending,
    Active,
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CardStatus {
    Active,
    Blocked,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Card {
    pub uid: String,
    pub elder_id: String,
    pub status: CardStatus,
    pub bound_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    pub serial: String,
    /// Base32 secret, sealed with the PII key.
    pub secret_sealed: String,
    pub digits: u32,
    pub period: u64,
    pub algorithm: String,
    /// The last TOTP time step accepted (replay guard).
    pub last_step: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Elder {
    pub id: String,
    pub name: String,
    pub gender: String,
    /// ID number sealed with the PII key.
    pub id_number_sealed: String,
    /// Keyed hash of the ID number, for duplicate detection without decrypting.
    pub id_number_tag: String,
    /// First 6 and last 4 characters, for masked display without decrypting.
    pub id_number_ends: (String, String),
    /// `YYYY-MM-DD`, from the ID number (age rules).
    pub birth_date: String,
    pub phone_sealed: Option<String>,
    pub phone_ends: Option<(String, String)>,
    pub district: String,
    pub street: String,
    pub address: String,
    pub categories: Vec<ElderCategory>,
    pub assessment: Option<serde_json::Value>,
    pub status: ElderStatus,
    pub created_by: String,
    pub approved_by: Option<String>,
    pub created_at: String,
    pub card_uid: Option<String>,
    pub ever_carded: bool,
    pub token: Option<Token>,
}

/// Per-month bookkeeping of issuance and closes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeriodRecord {
    pub closed_at: Option<String>,
}

#[derive(Debug, Default)]
pub struct Data {
    pub keys: HashMap<String, ApiKeyRecord>,
    pub districts: BTreeMap<String, District>,
    pub policy: Option<Policy>,
    pub catalog: BTreeMap<String, CatalogItem>,
    pub providers: BTreeMap<String, Provider>,
    pub elders: HashMap<String, Elder>,
    pub elder_by_tag: HashMap<String, String>,
    pub cards: HashMap<String, Card>,
    pub periods: BTreeMap<Month, PeriodRecord>,
    pub next_elder_number: u64,
}

pub mod prefix {
    pub const KEY: &str = "key/";
    pub const DISTRICT: &str = "district/";
    pub const POLICY: &str = "policy";
    pub const CATALOG: &str = "catalog/";
    pub const PROVIDER: &str = "provider/";
    pub const ELDER: &str = "elder/";
    pub const CARD: &str = "card/";
    pub const PERIOD: &str = "period/";
    pub const CLOCK: &str = "clock";
}

/// Encodes one record for the store.
pub fn record<T: Serialize>(prefix: &str, id: &str, value: &T) -> Record {
    (
        format!("{prefix}{id}").into_bytes(),
        Some(serde_json::to_vec(value).expect("registry records serialise to JSON")),
    )
}

fn load_all<T: DeserializeOwned>(ledger: &Ledger, prefix: &str) -> anyhow::Result<Vec<T>> {
    ledger
        .records(prefix.as_bytes())?
        .into_iter()
        .map(|(k, v)| {
            serde_json::from_slice(&v).map_err(|e| {
                anyhow::anyhow!("record {} is damaged: {e}", String::from_utf8_lossy(&k))
            })
        })
        .collect()
}

pub struct Registry {
    ledger: Arc<Ledger>,
    data: RwLock<Data>,
    gate: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn load(ledger: Arc<Ledger>) -> anyhow::Result<Registry> {
        let mut data = Data::default();
        for k in load_all::<ApiKeyRecord>(&ledger, prefix::KEY)? {
            data.keys.insert(k.id.clone(), k);
        }
        for d in load_all::<District>(&ledger, prefix::DISTRICT)? {
            data.districts.insert(d.code.clone(), d);
        }
        data.policy = load_all::<Policy>(&ledger, prefix::POLICY)?.pop();
        for c in load_all::<CatalogItem>(&ledger, prefix::CATALOG)? {
            data.catalog.insert(c.code.clone(), c);
        }
        for p in load_all::<Provider>(&ledger, prefix::PROVIDER)? {
            data.providers.insert(p.id.clone(), p);
        }
        for e in load_all::<Elder>(&ledger, prefix::ELDER)? {
            let number: u64 = e.id.trim_start_matches('E').parse().unwrap_or(0);
            data.next_elder_number = data.next_elder_number.max(number + 1);
            data.elder_by_tag
                .insert(e.id_number_tag.clone(), e.id.clone());
            data.elders.insert(e.id.clone(), e);
        }
        for c in load_all::<Card>(&ledger, prefix::CARD)? {
            data.cards.insert(c.uid.clone(), c);
        }
        for (k, v) in ledger.records(prefix::PERIOD.as_bytes())? {
            let month: Month = std::str::from_utf8(&k[prefix::PERIOD.len()..])?.parse()?;
            data.periods.insert(month, serde_json::from_slice(&v)?);
        }
        data.next_elder_number = data.next_elder_number.max(1);
        Ok(Registry {
            ledger,
            data: RwLock::new(data),
            gate: tokio::sync::Mutex::new(()),
        })
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Data> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Serialises registry writers: hold the guard across validate, persist and apply.
    pub async fn gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Writes records durably (one atomic batch, fsynced) before returning.
    pub async fn persist(&self, records: Vec<Record>) -> Result<(), ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ledger
            .submit_atomic_with(Vec::new(), records, move |r| {
                let _ = tx.send(r);
            });
        rx.await
            .map_err(|_| ApiError::internal("ledger writer dropped a reply"))?
            .map(|_| ())
            .map_err(ApiError::from)
    }
}

//! Elders (API.md "Elders"): registration and four-eyes approval, the record (ID number and
//! phone masked except for the elder's own district staff and the city), changes and
//! deactivation, cards (one active card per elder), hardware tokens, and the balance.
//!
//! Personal data: ID numbers, phones and token secrets are sealed before they reach the
//! registry and are opened only to build a full record for a caller entitled to it. Log lines
//! name elders by id only.

use crate::app::AppState;
use crate::auth::Principal;
use crate::body::{ident, text, Body, Params, ID_TEXT_LEN_MAX, TEXT_LEN_MAX};
use crate::error::ApiError;
use crate::idnumber::{age_on, IdNumber};
use crate::pii::{mask_id_number, mask_phone, Pii};
use crate::registry::{
    prefix, record, Card, CardStatus, Data, Elder, ElderCategory, ElderStatus, Role, Token,
};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use ledger_core::account::AccountId;
use ledger_core::fiscal::{Month, Year};
use ledger_core::ledger::Record;
use ledger_core::Fen;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Minimum age of an elder on the day of registration (SPEC.md "Elders are 60+").
pub const AGE_MIN_YEARS: u32 = 60;
/// Minimum age for the `age_90_plus` category.
pub const AGE_90_PLUS_YEARS: u32 = 90;
/// Largest assessment accepted, as serialised JSON.
pub const ASSESSMENT_BYTES_MAX: usize = 4 * 1024;
/// Digits of a mainland mobile number.
const PHONE_LEN: usize = 11;
/// Hex characters of an ISO 14443 UID: single (4 bytes), double (7) or triple (10) size.
const CARD_UID_HEX_LENS: [usize; 3] = [8, 14, 20];
/// Decoded length of a token secret: RFC 4226 asks for at least 128 bits and recommends 160;
/// 80 bits is the floor tokens in the field are sold with. 64 bytes is SHA-512's block.
const TOKEN_SECRET_BYTES_MIN: usize = 10;
const TOKEN_SECRET_BYTES_MAX: usize = 64;
const TOKEN_DIGITS: std::ops::RangeInclusive<u32> = 6..=8;
const TOKEN_PERIOD_SECS: std::ops::RangeInclusive<u64> = 15..=120;
const TOKEN_ALGORITHMS: [&str; 3] = ["SHA1", "SHA256", "SHA512"];
/// Elder ids are `E` + 8 digits.
const ELDER_NUMBER_MAX: u64 = 99_999_999;

const STAFF_ROLES: &[Role] = &[Role::CityAdmin, Role::DistrictStaff];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_elder))
        .routes(routes!(get_elder, patch_elder))
        .routes(routes!(approve_elder))
        .routes(routes!(deactivate_elder))
        .routes(routes!(bind_card))
        .routes(routes!(block_card))
        .routes(routes!(bind_token))
        .routes(routes!(get_balance))
}

// ---- validation at the edge -------------------------------------------------------------

/// The local (UTC+08:00) calendar date of an instant, derived from the fiscal month so the
/// offset lives in one place.
pub fn local_date(at: DateTime<Utc>) -> NaiveDate {
    let month = Month::of(at);
    let first = NaiveDate::from_ymd_opt(month.year().get(), month.number(), 1)
        .expect("a fiscal month has a first day");
    let days = (at - month.start()).num_days().unsigned_abs();
    first
        .checked_add_days(chrono::Days::new(days))
        .expect("an instant inside a month is fewer than 31 days after its start")
}

fn parse_id_number(text: &str, today: NaiveDate) -> Result<IdNumber, ApiError> {
    IdNumber::parse(text, today)
        .map_err(|e| ApiError::invalid("invalid_id_number", format!("id_number: {e}")))
}

/// 11 ASCII digits starting with 1.
fn parse_phone(text: &str) -> Result<String, ApiError> {
    let ok = text.len() == PHONE_LEN
        && text.starts_with('1')
        && text.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(text.to_string())
    } else {
        Err(ApiError::invalid(
            "invalid_phone",
            "phone: 11 digits starting with 1",
        ))
    }
}

/// 1..=6 distinct known categories, sorted; `age_90_plus` only from 90.
fn parse_categories(names: &[String], age: u32) -> Result<Vec<ElderCategory>, ApiError> {
    if names.is_empty() || names.len() > ElderCategory::ALL.len() {
        return Err(ApiError::field(
            "categories",
            format!("1..={} categories", ElderCategory::ALL.len()),
        ));
    }
    let mut categories = Vec::with_capacity(names.len());
    for name in names {
        let category: ElderCategory = serde_json::from_value(Value::String(name.clone()))
            .map_err(|_| ApiError::field("categories", format!("unknown category {name:?}")))?;
        if categories.contains(&category) {
            return Err(ApiError::field(
                "categories",
                format!("{name:?} is given twice"),
            ));
        }
        categories.push(category);
    }
    if categories.contains(&ElderCategory::Age90Plus) && age < AGE_90_PLUS_YEARS {
        return Err(ApiError::invalid(
            "not_eligible",
            format!("categories: age_90_plus needs age {AGE_90_PLUS_YEARS} or more"),
        ));
    }
    categories.sort();
    Ok(categories)
}

/// Any JSON object of at most [`ASSESSMENT_BYTES_MAX`] bytes; `null` means none.
fn parse_assessment(value: Option<Value>) -> Result<Option<Value>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => {
            if v.to_string().len() > ASSESSMENT_BYTES_MAX {
                Err(ApiError::field(
                    "assessment",
                    format!("at most {ASSESSMENT_BYTES_MAX} bytes of JSON"),
                ))
            } else {
                Ok(Some(v))
            }
        }
        Some(_) => Err(ApiError::field("assessment", "must be a JSON object")),
    }
}

/// A card UID: 8, 14 or 20 hex characters, normalised to uppercase.
pub fn parse_card_uid(text: &str) -> Result<String, ApiError> {
    if CARD_UID_HEX_LENS.contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_uppercase())
    } else {
        Err(ApiError::field(
            "uid",
            "an ISO 14443 UID: 8, 14 or 20 hex characters",
        ))
    }
}

/// RFC 4648 base32 (case-insensitive, padding optional). `None` if not base32.
fn decode_base32(text: &str) -> Option<Vec<u8>> {
    let digits = text.trim_end_matches('=');
    // 1, 3 or 6 characters past a whole 8-character group encode no whole byte.
    if matches!(digits.len() % 8, 1 | 3 | 6) {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in digits.bytes() {
        let value = match c.to_ascii_uppercase() {
            u @ b'A'..=b'Z' => u - b'A',
            d @ b'2'..=b'7' => d - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).expect("masked to 8 bits"));
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn seal(pii: &Pii, value: &str) -> Result<String, ApiError> {
    pii.seal(value).map_err(ApiError::internal)
}

fn seal_phone(pii: &Pii, phone: &str) -> Result<(String, (String, String)), ApiError> {
    let ends = (phone[..3].to_string(), phone[PHONE_LEN - 4..].to_string());
    Ok((seal(pii, phone)?, ends))
}

/// Present-but-null is `Some(None)` (remove), absent is `None` (keep).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// ---- views ------------------------------------------------------------------------------

/// Whether a caller sees an elder's ID number and phone in full (SPEC.md "Personal data").
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disclosure {
    Full,
    Masked,
}

impl Disclosure {
    fn for_caller(p: &Principal, district: &str) -> Disclosure {
        match p.role {
            Role::CityAdmin => Disclosure::Full,
            Role::DistrictStaff if p.district.as_deref() == Some(district) => Disclosure::Full,
            Role::DistrictStaff | Role::Hotline | Role::Auditor | Role::Provider => {
                Disclosure::Masked
            }
        }
    }
}

fn card_json(c: &Card) -> Value {
    json!({"uid": c.uid, "elder_id": c.elder_id, "status": c.status, "bound_at": c.bound_at})
}

fn token_json(elder_id: &str, t: &Token) -> Value {
    json!({"elder_id": elder_id, "serial": t.serial, "digits": t.digits, "period": t.period,
        "algorithm": t.algorithm})
}

fn elder_json(
    pii: &Pii,
    data: &Data,
    e: &Elder,
    disclosure: Disclosure,
) -> Result<Value, ApiError> {
    let (id_number, phone) = match disclosure {
        Disclosure::Full => (
            pii.open_sealed(&e.id_number_sealed)
                .map_err(ApiError::internal)?,
            e.phone_sealed
                .as_deref()
                .map(|p| pii.open_sealed(p).map_err(ApiError::internal))
                .transpose()?,
        ),
        Disclosure::Masked => (
            mask_id_number(&e.id_number_ends.0, &e.id_number_ends.1),
            e.phone_ends.as_ref().map(|(a, b)| mask_phone(a, b)),
        ),
    };
    let card = e
        .card_uid
        .as_ref()
        .and_then(|uid| data.cards.get(uid))
        .map(|c| json!({"uid": c.uid, "status": c.status, "bound_at": c.bound_at}));
    let token = e.token.as_ref().map(|t| {
        json!({"serial": t.serial, "digits": t.digits, "period": t.period,
            "algorithm": t.algorithm})
    });
    Ok(json!({
        "id": e.id, "name": e.name, "gender": e.gender, "id_number": id_number, "phone": phone,
        "district": e.district, "street": e.street, "address": e.address,
        "categories": e.categories, "assessment": e.assessment, "status": e.status,
        "card": card, "token": token, "created_at": e.created_at, "created_by": e.created_by,
        "approved_by": e.approved_by,
    }))
}

fn unknown_elder(id: &str) -> ApiError {
    ApiError::not_found(format!("no elder {id}"))
}

fn load_elder(s: &AppState, id: &str) -> Result<Elder, ApiError> {
    s.registry
        .read()
        .elders
        .get(id)
        .cloned()
        .ok_or_else(|| unknown_elder(id))
}

/// An elder that this key's district staff may change (load it under the registry's gate).
fn load_district_elder(s: &AppState, p: &Principal, id: &str) -> Result<Elder, ApiError> {
    let elder = load_elder(s, id)?;
    p.require_district_staff(&elder.district)?;
    Ok(elder)
}

fn elder_inactive(id: &str) -> ApiError {
    ApiError::conflict("conflict", format!("elder {id} is inactive"))
}

// ---- registration -------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateElder {
    name: String,
    /// `F` or `M`.
    gender: String,
    /// 18-character resident ID number (GB 11643-1999).
    id_number: String,
    /// 11 digits starting with 1.
    phone: Option<String>,
    district: String,
    street: String,
    address: String,
    #[schema(value_type = Vec<ElderCategory>)]
    categories: Vec<String>,
    /// Any JSON object up to 4 KiB.
    #[schema(value_type = Option<Object>)]
    assessment: Option<Value>,
}

/// Everything but the district's existence and duplicates, checked before taking the gate.
struct NewElder {
    name: String,
    gender: String,
    id_number: IdNumber,
    phone: Option<String>,
    street: String,
    address: String,
    categories: Vec<ElderCategory>,
    assessment: Option<Value>,
}

fn validate_new_elder(req: CreateElder, today: NaiveDate) -> Result<NewElder, ApiError> {
    let id_number = parse_id_number(&req.id_number, today)?;
    let age = id_number.age_on(today);
    if age < AGE_MIN_YEARS {
        return Err(ApiError::invalid(
            "not_eligible",
            format!("elders are {AGE_MIN_YEARS} or older on the day of registration"),
        ));
    }
    if req.gender != "F" && req.gender != "M" {
        return Err(ApiError::field("gender", "\"F\" or \"M\""));
    }
    Ok(NewElder {
        name: text("name", &req.name, TEXT_LEN_MAX)?,
        gender: req.gender,
        phone: req.phone.as_deref().map(parse_phone).transpose()?,
        street: text("street", &req.street, ID_TEXT_LEN_MAX)?,
        address: text("address", &req.address, TEXT_LEN_MAX)?,
        categories: parse_categories(&req.categories, age)?,
        assessment: parse_assessment(req.assessment)?,
        id_number,
    })
}

#[utoipa::path(post, path = "/v1/elders", request_body = CreateElder, tag = "elders",
    responses((status = 201, description = "Registered, pending approval"),
        (status = 409, description = "duplicate_elder"),
        (status = 422, description = "invalid_id_number, not_eligible, invalid_phone, invalid_request")))]
async fn create_elder(
    State(s): State<AppState>,
    p: Principal,
    Body(req): Body<CreateElder>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require_district_staff(&req.district)?;
    let district = req.district.clone();
    let now = s.now();
    let new = validate_new_elder(req, local_date(now))?;
    let tag = s.pii.tag(new.id_number.as_str());
    let id_number_sealed = seal(&s.pii, new.id_number.as_str())?;
    let phone = new
        .phone
        .as_deref()
        .map(|p| seal_phone(&s.pii, p))
        .transpose()?;
    let _gate = s.registry.gate().await;
    let number = {
        let data = s.registry.read();
        if !data.districts.contains_key(&district) {
            return Err(ApiError::field(
                "district",
                format!("no district {district}"),
            ));
        }
        if let Some(existing) = data.elder_by_tag.get(&tag) {
            return Err(ApiError::conflict(
                "duplicate_elder",
                format!("this ID number is already registered as elder {existing}"),
            ));
        }
        data.next_elder_number
    };
    if number > ELDER_NUMBER_MAX {
        return Err(ApiError::conflict("conflict", "elder ids are exhausted"));
    }
    let (phone_sealed, phone_ends) = phone.unzip();
    let elder = Elder {
        id: format!("E{number:08}"),
        name: new.name,
        gender: new.gender,
        id_number_sealed,
        id_number_tag: tag.clone(),
        id_number_ends: new.id_number.ends(),
        birth_date: new.id_number.birth_date().format("%Y-%m-%d").to_string(),
        phone_sealed,
        phone_ends,
        district,
        street: new.street,
        address: new.address,
        categories: new.categories,
        assessment: new.assessment,
        status: ElderStatus::Pending,
        created_by: p.key_id.clone(),
        approved_by: None,
        created_at: ledger_core::fiscal::format_timestamp(now),
        card_uid: None,
        ever_carded: false,
        token: None,
    };
    s.registry
        .persist(vec![record(prefix::ELDER, &elder.id, &elder)])
        .await?;
    tracing::info!(elder_id = %elder.id, district = %elder.district, "elder registered");
    let mut data = s.registry.write();
    data.next_elder_number = data.next_elder_number.max(number + 1);
    data.elder_by_tag.insert(tag, elder.id.clone());
    let body = elder_json(&s.pii, &data, &elder, Disclosure::Full)?;
    data.elders.insert(elder.id.clone(), elder);
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(post, path = "/v1/elders/{id}/approve", tag = "elders",
    responses((status = 200, description = "Active"),
        (status = 403, description = "four_eyes_required: the creating key may not approve"),
        (status = 409, description = "Not pending")))]
async fn approve_elder(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(STAFF_ROLES)?;
    let _gate = s.registry.gate().await;
    let mut elder = load_district_elder(&s, &p, &id)?;
    if elder.created_by == p.key_id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "four_eyes_required",
            "a second key must approve what this key registered",
        ));
    }
    if elder.status != ElderStatus::Pending {
        return Err(ApiError::conflict(
            "conflict",
            format!("elder {id} is not pending"),
        ));
    }
    elder.status = ElderStatus::Active;
    elder.approved_by = Some(p.key_id.clone());
    s.registry
        .persist(vec![record(prefix::ELDER, &elder.id, &elder)])
        .await?;
    tracing::info!(elder_id = %elder.id, "elder approved");
    let body = json!({"id": elder.id, "status": elder.status, "approved_by": elder.approved_by});
    s.registry.write().elders.insert(elder.id.clone(), elder);
    Ok(Json(body))
}

// ---- the record ---------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/elders/{id}", tag = "elders",
    responses((status = 200, description = "The record; id_number and phone masked except for \
        the elder's district staff and city_admin"),
        (status = 403, description = "Providers, and staff of another district")))]
async fn get_elder(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[
        Role::CityAdmin,
        Role::DistrictStaff,
        Role::Auditor,
        Role::Hotline,
    ])?;
    let data = s.registry.read();
    let elder = data.elders.get(&id).ok_or_else(|| unknown_elder(&id))?;
    if !p.sees_district(&elder.district) {
        return Err(ApiError::forbidden(format!(
            "elder {id} is not of your district"
        )));
    }
    let disclosure = Disclosure::for_caller(&p, &elder.district);
    Ok(Json(elder_json(&s.pii, &data, elder, disclosure)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchElder {
    /// A new phone, or `null` to remove it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    phone: Option<Option<String>>,
    street: Option<String>,
    address: Option<String>,
    #[schema(value_type = Option<Vec<ElderCategory>>)]
    categories: Option<Vec<String>>,
}

fn apply_patch(
    s: &AppState,
    elder: &mut Elder,
    req: PatchElder,
    today: NaiveDate,
) -> Result<(), ApiError> {
    if let Some(phone) = req.phone {
        let sealed = phone
            .as_deref()
            .map(parse_phone)
            .transpose()?
            .map(|p| seal_phone(&s.pii, &p))
            .transpose()?;
        (elder.phone_sealed, elder.phone_ends) = sealed.unzip();
    }
    if let Some(street) = req.street {
        elder.street = text("street", &street, ID_TEXT_LEN_MAX)?;
    }
    if let Some(address) = req.address {
        elder.address = text("address", &address, TEXT_LEN_MAX)?;
    }
    if let Some(categories) = req.categories {
        let birth = NaiveDate::parse_from_str(&elder.birth_date, "%Y-%m-%d")
            .map_err(|e| ApiError::internal(format!("elder {}: birth_date: {e}", elder.id)))?;
        elder.categories = parse_categories(&categories, age_on(birth, today))?;
    }
    Ok(())
}

#[utoipa::path(patch, path = "/v1/elders/{id}", request_body = PatchElder, tag = "elders",
    responses((status = 200, description = "The changed record")))]
async fn patch_elder(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Body(req): Body<PatchElder>,
) -> Result<Json<Value>, ApiError> {
    p.require(STAFF_ROLES)?;
    let _gate = s.registry.gate().await;
    let mut elder = load_district_elder(&s, &p, &id)?;
    apply_patch(&s, &mut elder, req, local_date(s.now()))?;
    s.registry
        .persist(vec![record(prefix::ELDER, &elder.id, &elder)])
        .await?;
    tracing::info!(elder_id = %elder.id, "elder changed");
    let mut data = s.registry.write();
    let body = elder_json(&s.pii, &data, &elder, Disclosure::Full)?;
    data.elders.insert(elder.id.clone(), elder);
    Ok(Json(body))
}

#[utoipa::path(post, path = "/v1/elders/{id}/deactivate", tag = "elders",
    responses((status = 200, description = "Inactive; the elder's active card is blocked. \
        Deactivating an inactive elder changes nothing and answers the same.")))]
async fn deactivate_elder(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(STAFF_ROLES)?;
    let _gate = s.registry.gate().await;
    let mut elder = load_district_elder(&s, &p, &id)?;
    if elder.status == ElderStatus::Inactive {
        return Ok(Json(
            json!({"id": elder.id, "status": elder.status, "blocked_card": null}),
        ));
    }
    let active_card = {
        let data = s.registry.read();
        elder
            .card_uid
            .as_ref()
            .and_then(|uid| data.cards.get(uid))
            .filter(|c| c.status == CardStatus::Active)
            .cloned()
    };
    elder.status = ElderStatus::Inactive;
    let mut records = vec![record(prefix::ELDER, &elder.id, &elder)];
    let blocked = active_card.map(|mut c| {
        c.status = CardStatus::Blocked;
        records.push(record(prefix::CARD, &c.uid, &c));
        c
    });
    s.registry.persist(records).await?;
    tracing::info!(elder_id = %elder.id, "elder deactivated");
    let body = json!({"id": elder.id, "status": elder.status,
        "blocked_card": blocked.as_ref().map(|c| &c.uid)});
    let mut data = s.registry.write();
    if let Some(c) = blocked {
        data.cards.insert(c.uid.clone(), c);
    }
    data.elders.insert(elder.id.clone(), elder);
    Ok(Json(body))
}

// ---- cards and tokens ---------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindCard {
    /// ISO 14443 UID in hex: 8, 14 or 20 characters.
    uid: String,
}

/// What binding a card to an elder finds in the registry.
enum CardBinding {
    /// The elder's own active card again: nothing to do.
    AlreadyBound(Card),
    /// A new card; the elder's previous active card, if any, is to be blocked.
    New { previous: Option<Card> },
}

fn card_binding(data: &Data, elder: &Elder, uid: &str) -> Result<CardBinding, ApiError> {
    match data.cards.get(uid) {
        Some(c) if c.elder_id != elder.id => Err(ApiError::conflict(
            "card_in_use",
            format!("card {uid} is bound to another elder"),
        )),
        Some(c) if c.status == CardStatus::Active => Ok(CardBinding::AlreadyBound(c.clone())),
        Some(_) => Err(ApiError::conflict(
            "card_blocked",
            format!("card {uid} is blocked and can never be used again"),
        )),
        None => Ok(CardBinding::New {
            previous: elder
                .card_uid
                .as_ref()
                .and_then(|old| data.cards.get(old))
                .filter(|c| c.status == CardStatus::Active)
                .cloned(),
        }),
    }
}

#[utoipa::path(post, path = "/v1/elders/{id}/cards", request_body = BindCard, tag = "elders",
    responses((status = 201, description = "Bound; the elder's earlier active card is blocked"),
        (status = 200, description = "This card is already the elder's active card; nothing changed"),
        (status = 409, description = "card_in_use (bound to another elder), card_blocked")))]
async fn bind_card(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Body(req): Body<BindCard>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(STAFF_ROLES)?;
    let uid = parse_card_uid(&req.uid)?;
    let _gate = s.registry.gate().await;
    let mut elder = load_district_elder(&s, &p, &id)?;
    if elder.status == ElderStatus::Inactive {
        return Err(elder_inactive(&id));
    }
    let previous = match card_binding(&s.registry.read(), &elder, &uid)? {
        CardBinding::AlreadyBound(card) => return Ok((StatusCode::OK, Json(card_json(&card)))),
        CardBinding::New { previous } => previous,
    };
    let card = Card {
        uid: uid.clone(),
        elder_id: elder.id.clone(),
        status: CardStatus::Active,
        bound_at: s.now_text(),
    };
    elder.card_uid = Some(uid);
    elder.ever_carded = true;
    let mut records: Vec<Record> = vec![
        record(prefix::CARD, &card.uid, &card),
        record(prefix::ELDER, &elder.id, &elder),
    ];
    let previous = previous.map(|mut c| {
        c.status = CardStatus::Blocked;
        records.push(record(prefix::CARD, &c.uid, &c));
        c
    });
    s.registry.persist(records).await?;
    tracing::info!(elder_id = %elder.id, card = %card.uid, "card bound");
    let mut body = card_json(&card);
    body["replaced_card"] = json!(previous.as_ref().map(|c| &c.uid));
    let mut data = s.registry.write();
    if let Some(c) = previous {
        data.cards.insert(c.uid.clone(), c);
    }
    data.cards.insert(card.uid.clone(), card);
    data.elders.insert(elder.id.clone(), elder);
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(post, path = "/v1/cards/{uid}/block", tag = "elders",
    responses((status = 200, description = "Blocked (also when it already was)")))]
async fn block_card(
    State(s): State<AppState>,
    p: Principal,
    Path(uid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(STAFF_ROLES)?;
    let uid = parse_card_uid(&uid)?;
    let _gate = s.registry.gate().await;
    let mut card = {
        let data = s.registry.read();
        let card = data
            .cards
            .get(&uid)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no card {uid}")))?;
        let elder = data
            .elders
            .get(&card.elder_id)
            .ok_or_else(|| ApiError::internal(format!("card {uid} names no known elder")))?;
        p.require_district_staff(&elder.district)?;
        card
    };
    if card.status == CardStatus::Active {
        card.status = CardStatus::Blocked;
        s.registry
            .persist(vec![record(prefix::CARD, &card.uid, &card)])
            .await?;
        tracing::info!(elder_id = %card.elder_id, card = %card.uid, "card blocked");
        s.registry
            .write()
            .cards
            .insert(card.uid.clone(), card.clone());
    }
    Ok(Json(card_json(&card)))
}

fn default_digits() -> u32 {
    6
}
fn default_period() -> u64 {
    30
}
fn default_algorithm() -> String {
    "SHA1".into()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindToken {
    serial: String,
    /// RFC 4648 base32, padding optional; at least 10 bytes decoded. Never returned.
    secret: String,
    /// 6..=8, default 6.
    #[serde(default = "default_digits")]
    digits: u32,
    /// Seconds per step, 15..=120, default 30.
    #[serde(default = "default_period")]
    period: u64,
    /// SHA1 (default), SHA256 or SHA512.
    #[serde(default = "default_algorithm")]
    algorithm: String,
}

/// The token to store (secret sealed, normalised to uppercase base32 without padding).
fn validate_token(pii: &Pii, req: BindToken) -> Result<Token, ApiError> {
    let serial = ident("serial", &req.serial, ID_TEXT_LEN_MAX)?;
    let secret_len = decode_base32(&req.secret)
        .map(|bytes| bytes.len())
        .ok_or_else(|| ApiError::field("secret", "must be RFC 4648 base32"))?;
    if !(TOKEN_SECRET_BYTES_MIN..=TOKEN_SECRET_BYTES_MAX).contains(&secret_len) {
        return Err(ApiError::field(
            "secret",
            format!("{TOKEN_SECRET_BYTES_MIN}..={TOKEN_SECRET_BYTES_MAX} bytes once decoded"),
        ));
    }
    if !TOKEN_DIGITS.contains(&req.digits) {
        return Err(ApiError::field("digits", "6, 7 or 8"));
    }
    if !TOKEN_PERIOD_SECS.contains(&req.period) {
        return Err(ApiError::field("period", "15..=120 seconds"));
    }
    if !TOKEN_ALGORITHMS.contains(&req.algorithm.as_str()) {
        return Err(ApiError::field("algorithm", "SHA1, SHA256 or SHA512"));
    }
    let normalised = req.secret.trim_end_matches('=').to_ascii_uppercase();
    Ok(Token {
        serial,
        secret_sealed: seal(pii, &normalised)?,
        digits: req.digits,
        period: req.period,
        algorithm: req.algorithm,
        last_step: None,
    })
}

#[utoipa::path(post, path = "/v1/elders/{id}/tokens", request_body = BindToken, tag = "elders",
    responses((status = 201, description = "Bound (replacing any earlier token); the secret is never returned"),
        (status = 409, description = "The serial is bound to another elder")))]
async fn bind_token(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Body(req): Body<BindToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(STAFF_ROLES)?;
    let token = validate_token(&s.pii, req)?;
    let _gate = s.registry.gate().await;
    let mut elder = load_district_elder(&s, &p, &id)?;
    if elder.status == ElderStatus::Inactive {
        return Err(elder_inactive(&id));
    }
    // A linear scan: binding a token is rare, and a second index would be one more thing to
    // keep in step with the records.
    let holder = s
        .registry
        .read()
        .elders
        .values()
        .find(|e| e.id != elder.id && e.token.as_ref().is_some_and(|t| t.serial == token.serial))
        .map(|e| e.id.clone());
    if let Some(holder) = holder {
        return Err(ApiError::conflict(
            "conflict",
            format!("token {} is bound to elder {holder}", token.serial),
        ));
    }
    elder.token = Some(token);
    s.registry
        .persist(vec![record(prefix::ELDER, &elder.id, &elder)])
        .await?;
    let body = token_json(&elder.id, elder.token.as_ref().expect("set just above"));
    tracing::info!(elder_id = %elder.id, serial = %body["serial"], "token bound");
    s.registry.write().elders.insert(elder.id.clone(), elder);
    Ok((StatusCode::CREATED, Json(body)))
}

// ---- balance ------------------------------------------------------------------------------

#[derive(Deserialize, utoipa::IntoParams)]
struct BalanceQuery {
    /// Fiscal year `YYYY`; default the current one (UTC+08:00).
    year: Option<String>,
}

fn overflow() -> ApiError {
    ApiError::internal("elder balance totals overflow")
}

#[utoipa::path(get, path = "/v1/elders/{id}/balance", params(BalanceQuery), tag = "elders",
    responses((status = 200, description = "The elder's credit for one fiscal year; amounts are strings")))]
async fn get_balance(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Params(q): Params<BalanceQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[
        Role::CityAdmin,
        Role::DistrictStaff,
        Role::Auditor,
        Role::Hotline,
    ])?;
    let year = match q.year {
        Some(y) => y.parse::<Year>().map_err(|e| ApiError::field("year", e))?,
        None => Year::of(s.now()),
    };
    let district = load_elder(&s, &id)?.district;
    if !p.sees_district(&district) {
        return Err(ApiError::forbidden(format!(
            "elder {id} is not of your district"
        )));
    }
    let account = AccountId::elder(&id, year).map_err(ApiError::internal)?;
    let balance = s.ledger.balance(&account).unwrap_or_default();
    let totals = s.ledger.elder_totals(&account);
    let available = balance.available().ok_or_else(overflow)?;
    let spent: Fen = totals
        .charged
        .checked_add(totals.offset)
        .ok_or_else(overflow)?;
    Ok(Json(json!({
        "elder_id": id, "year": year.to_string(),
        "available": available.to_string(), "held": balance.debits_pending.to_string(),
        "issued": totals.issued.to_string(), "spent": spent.to_string(),
        "refunded": totals.refunded.to_string(), "forfeited": totals.forfeited.to_string(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_base32(input: &str, expected: Option<&[u8]>) {
        assert_eq!(decode_base32(input).as_deref(), expected, "{input:?}");
    }

    #[test]
    fn base32_is_rfc_4648() {
        // RFC 4648 §10 test vectors, with and without padding, any case.
        check_base32("", Some(b""));
        check_base32("MY======", Some(b"f"));
        check_base32("MZXQ====", Some(b"fo"));
        check_base32("MZXW6===", Some(b"foo"));
        check_base32("MZXW6YQ=", Some(b"foob"));
        check_base32("MZXW6YTB", Some(b"fooba"));
        check_base32("MZXW6YTBOI======", Some(b"foobar"));
        check_base32("mzxw6ytboi", Some(b"foobar"));
        // RFC 6238's SHA1 seed "12345678901234567890".
        check_base32(
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
            Some(b"12345678901234567890"),
        );
        check_base32("MZXW6YT1", None);
        check_base32("MZX", None);
        check_base32("M=ZXW6YTB", None);
    }

    fn check_uid(input: &str, expected: Option<&str>) {
        assert_eq!(parse_card_uid(input).ok().as_deref(), expected, "{input:?}");
    }

    #[test]
    fn card_uids_are_4_7_or_10_bytes_of_hex() {
        check_uid("04a1b2c3d4e5f6", Some("04A1B2C3D4E5F6"));
        check_uid("DEADBEEF", Some("DEADBEEF"));
        check_uid("0102030405060708090A", Some("0102030405060708090A"));
        check_uid("04A1B2C3D4E5F", None);
        check_uid("04A1B2C3D4E5FG", None);
        check_uid("", None);
    }

    fn check_phone(input: &str, ok: bool) {
        assert_eq!(parse_phone(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn phones_are_11_digits_starting_with_1() {
        check_phone("13812345678", true);
        check_phone("23812345678", false);
        check_phone("1381234567", false);
        check_phone("138123456789", false);
        check_phone("1381234567a", false);
        check_phone("+8613812345", false);
    }

    #[test]
    fn local_date_is_utc_plus_8() {
        let check = |at: &str, expected: (i32, u32, u32)| {
            let at = ledger_core::fiscal::parse_timestamp(at).unwrap();
            let want = NaiveDate::from_ymd_opt(expected.0, expected.1, expected.2).unwrap();
            assert_eq!(local_date(at), want, "{at}");
        };
        check("2026-02-28T15:59:59Z", (2026, 2, 28));
        check("2026-02-28T16:00:00Z", (2026, 3, 1));
        check("2026-12-31T16:00:00Z", (2027, 1, 1));
        check("2026-03-31T15:59:59Z", (2026, 3, 31));
    }
}

//! Charges: a swipe places a ledger hold and sends the challenge (an SMS code, or the
//! elder's hardware token); the right code posts the charge and issues the receipt. Wrong
//! codes burn attempts (the 5th voids the hold), holds expire by the server's clock, SMS
//! resends are limited, refunds and nursing-fee offsets are district staff's.

use crate::app::AppState;
use crate::auth::Principal;
use crate::body::{ident, text, Amount, Body, ID_TEXT_LEN_MAX, TEXT_LEN_MAX};
use crate::error::ApiError;
use crate::registry::{Elder, ProviderKind, Role};
use crate::settlement::{
    charge_key, elder_lock, order_lock, prefix, record, Challenge, Charge, ChargeStatus,
    OrderStatus, Receipt, SmsStatus,
};
use crate::sms::{charge_text, SmsMessage, SEND_TIMEOUT};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Html;
use axum::Json;
use chrono::{DateTime, Utc};
use ledger_core::command::{Command, HoldState, Refs, Request};
use ledger_core::fiscal::{format_timestamp, Month, Year};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Wrong codes allowed per charge; the last one voids the hold.
pub const ATTEMPTS_MAX: u32 = 5;
/// SMS per charge (the first and two resends) and the least gap between them.
pub const SMS_PER_CHARGE_MAX: usize = 3;
pub const RESEND_GAP_SECS: i64 = 60;
/// Longest idempotency key and code accepted.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;
const CODE_LEN_MAX: usize = 10;
/// SMS codes: 6 digits.
const SMS_CODE_SPACE: u32 = 1_000_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_charge))
        .routes(routes!(get_charge))
        .routes(routes!(confirm_charge))
        .routes(routes!(resend_code))
        .routes(routes!(cancel_charge))
        .routes(routes!(refund_charge))
        .routes(routes!(get_receipt))
        .routes(routes!(print_receipt))
        .routes(routes!(create_offset))
}

/// A uniformly random 6-digit code from ring's SystemRandom (rejection sampling, no bias).
fn sms_code() -> Result<String, ApiError> {
    let rng = SystemRandom::new();
    let limit = u32::MAX - u32::MAX % SMS_CODE_SPACE;
    loop {
        let mut bytes = [0u8; 4];
        rng.fill(&mut bytes)
            .map_err(|_| ApiError::internal("system random failed"))?;
        let v = u32::from_le_bytes(bytes);
        if v < limit {
            return Ok(format!("{:06}", v % SMS_CODE_SPACE));
        }
    }
}

fn code_tag(s: &AppState, charge_id: &str, code: &str) -> String {
    s.pii.tag(&format!("sms-code:{charge_id}:{code}"))
}

fn equal_constant_time(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The status every reader sees: a pending charge whose hold is past expiry (or was voided
/// by the year close) reads as such at once.
pub fn effective_status(s: &AppState, charge: &Charge) -> ChargeStatus {
    if charge.status != ChargeStatus::Pending {
        return charge.status;
    }
    match s.ledger.hold(&charge.id) {
        Ok(Some(h)) => match h.state {
            HoldState::Pending => ChargeStatus::Pending,
            HoldState::Expired => ChargeStatus::Expired,
            HoldState::Voided => ChargeStatus::Voided,
            HoldState::Posted => ChargeStatus::Confirmed,
            HoldState::Refunded => ChargeStatus::Refunded,
        },
        _ if s.now().timestamp() >= charge.expires_at => ChargeStatus::Expired,
        _ => ChargeStatus::Pending,
    }
}

fn hold_state(s: &AppState, charge_id: &str) -> Option<HoldState> {
    s.ledger.hold(charge_id).ok().flatten().map(|h| h.state)
}

fn expires_text(charge: &Charge) -> String {
    DateTime::<Utc>::from_timestamp(charge.expires_at, 0)
        .map(format_timestamp)
        .unwrap_or_default()
}

fn charge_json(s: &AppState, c: &Charge) -> Value {
    let status = effective_status(s, c);
    let mut v = json!({"id": c.id, "order_id": c.order_id, "elder_id": c.elder_id,
        "provider_id": c.provider_id, "item_code": c.item_code, "amount": c.amount.to_string(),
        "status": status, "challenge": c.challenge, "expires_at": expires_text(c),
        "attempts_left": c.attempts_left, "created_at": c.created_at,
        "confirmed_at": c.confirmed_at, "receipt_no": c.receipt_no, "entry_seq": c.entry_seq});
    if c.challenge == Challenge::Sms {
        v["sms_status"] = json!(c.sms_status);
    }
    v
}

/// Who may see a charge: its provider, its district's staff, the city, auditors, the hotline.
fn may_see(p: &Principal, c: &Charge) -> bool {
    match p.role {
        Role::Provider => p.provider.as_deref() == Some(&c.provider_id),
        Role::DistrictStaff => p.district.as_deref() == Some(&c.district),
        Role::CityAdmin | Role::Auditor | Role::Hotline => true,
    }
}

fn find(s: &AppState, p: &Principal, id: &str) -> Result<Charge, ApiError> {
    let charge = s
        .settlement
        .read()
        .charges
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no charge {id}")))?;
    if may_see(p, &charge) {
        Ok(charge)
    } else {
        Err(ApiError::forbidden(
            "this charge belongs to another district or provider",
        ))
    }
}

/// Locks a charge's elder (token replay is per elder, so one elder's confirms go one at a
/// time) and its order (a confirm completes the order).
async fn lock_charge<'a>(
    s: &'a AppState,
    p: &Principal,
    id: &str,
) -> Result<Vec<tokio::sync::MutexGuard<'a, ()>>, ApiError> {
    let charge = find(s, p, id)?;
    Ok(s.settlement
        .lock(&[&elder_lock(&charge.elder_id), &order_lock(&charge.order_id)])
        .await)
}

fn require_own_provider(p: &Principal, c: &Charge) -> Result<(), ApiError> {
    if p.role == Role::Provider && p.provider.as_deref() == Some(&c.provider_id) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only the charge's provider may do this",
        ))
    }
}

fn expired() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "charge_expired",
        "the hold expired; swipe again",
    )
}

/// 410 when the hold has expired, 409 when the charge is otherwise no longer pending.
fn require_pending(s: &AppState, c: &Charge) -> Result<(), ApiError> {
    match effective_status(s, c) {
        ChargeStatus::Pending => Ok(()),
        ChargeStatus::Expired => Err(expired()),
        other => Err(ApiError::conflict(
            "charge_not_pending",
            format!("the charge is {other:?}"),
        )),
    }
}

fn phone_hint(e: &Elder) -> Option<String> {
    e.phone_ends
        .as_ref()
        .map(|(first, last)| crate::pii::mask_phone(first, last))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCharge {
    order_id: String,
    card_uid: String,
    amount: Amount,
    staff: Option<String>,
    challenge: Option<Challenge>,
}

#[utoipa::path(post, path = "/v1/charges", request_body = CreateCharge,
    params(("Idempotency-Key" = String, Header, description = "Required; the same key and body return the same response")),
    responses((status = 201, description = "Hold placed, challenge sent"),
        (status = 409, description = "card_blocked, order_not_chargeable, insufficient_credit, no_second_factor, idempotency_mismatch"),
        (status = 422, description = "card_mismatch, amount_over_agreed, invalid_amount, invalid_request"),
        (status = 403, description = "provider_suspended")))]
async fn create_charge(
    State(s): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    Body(req): Body<CreateCharge>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(&[Role::Provider])?;
    let provider_id = p
        .provider
        .clone()
        .ok_or_else(|| ApiError::forbidden("key has no provider"))?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| {
            !k.is_empty()
                && k.len() <= IDEMPOTENCY_KEY_LEN_MAX
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::field(
                "Idempotency-Key",
                format!("header required: 1..={IDEMPOTENCY_KEY_LEN_MAX} visible ASCII characters"),
            )
        })?
        .to_string();
    // Validation needs no state, so a replay validates as its original did; the fingerprint
    // is over the validated request, so "58.5" and "58.50" are the same request.
    let order_id = ident("order_id", &req.order_id, ID_TEXT_LEN_MAX)?;
    let amount = req.amount.positive("amount")?;
    let staff = req
        .staff
        .as_deref()
        .map(|t| text("staff", t, ID_TEXT_LEN_MAX))
        .transpose()?;
    let uid = req.card_uid.trim().to_ascii_uppercase();
    let request_hash = request_fingerprint(&json!({"order_id": order_id, "card_uid": uid,
        "amount": amount.to_string(), "staff": staff, "challenge": req.challenge}))?;
    let scoped_key = charge_key(&provider_id, &key);
    // The key's lock makes a replay wait for the first request's answer; the order's lock
    // keeps two charges (or a charge and an agree or cancel) off one order at once.
    let _locks = s
        .settlement
        .lock(&[&format!("key:{scoped_key}"), &order_lock(&order_id)])
        .await;
    let existing = {
        let books = s.settlement.read();
        books
            .charge_keys
            .get(&scoped_key)
            .and_then(|id| books.charges.get(id).cloned())
    };
    if let Some(existing) = existing {
        if existing.request_hash != request_hash {
            return Err(ApiError::conflict(
                "idempotency_mismatch",
                "this Idempotency-Key was used with another request",
            ));
        }
        return Ok((StatusCode::CREATED, Json(creation_json(&existing, &s))));
    }
    let order = s
        .settlement
        .read()
        .orders
        .get(&order_id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no order {order_id}")))?;
    if order.provider_id != provider_id {
        return Err(ApiError::forbidden("this order is another provider's"));
    }
    let (elder, provider_name) = {
        let data = s.registry.read();
        let provider = data
            .providers
            .get(&provider_id)
            .ok_or_else(|| ApiError::internal("key's provider is missing"))?;
        if provider.suspended {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "provider_suspended",
                "the provider is suspended",
            ));
        }
        let card = data
            .cards
            .get(&uid)
            .ok_or_else(|| ApiError::invalid("card_mismatch", "this card is not registered"))?;
        if card.status != crate::registry::CardStatus::Active {
            return Err(ApiError::conflict("card_blocked", "this card is blocked"));
        }
        if card.elder_id != order.elder_id {
            return Err(ApiError::invalid(
                "card_mismatch",
                "this card is not the order's elder's",
            ));
        }
        let elder = data
            .elders
            .get(&order.elder_id)
            .cloned()
            .ok_or_else(|| ApiError::internal("order's elder is missing"))?;
        (elder, provider.name.clone())
    };
    let in_flight = order
        .charge_id
        .as_ref()
        .and_then(|c| s.settlement.read().charges.get(c).cloned());
    let busy = in_flight.is_some_and(|c| {
        matches!(
            effective_status(&s, &c),
            ChargeStatus::Pending | ChargeStatus::Confirmed
        )
    });
    if order.status != OrderStatus::Agreed || busy {
        return Err(ApiError::conflict(
            "order_not_chargeable",
            format!(
                "order is {:?}; only an agreed order can be charged",
                order.status
            ),
        ));
    }
    if order.price.is_some_and(|price| amount > price) {
        return Err(ApiError::invalid(
            "amount_over_agreed",
            "amount is above the agreed price",
        ));
    }
    let challenge = match (
        req.challenge,
        elder.phone_sealed.is_some(),
        elder.token.is_some(),
    ) {
        (Some(Challenge::Token), _, true) | (None, false, true) => Challenge::Token,
        (Some(Challenge::Sms) | None, true, _) => Challenge::Sms,
        _ => {
            return Err(ApiError::conflict(
                "no_second_factor",
                "the elder has no phone or token for this challenge",
            ))
        }
    };
    let id = s.settlement.new_charge_id();
    let code = match challenge {
        Challenge::Sms => Some(sms_code()?),
        Challenge::Token => None,
    };
    let now = s.now();
    let now_text = format_timestamp(now);
    let mut charge = Charge {
        id: id.clone(),
        order_id: order.id.clone(),
        elder_id: elder.id.clone(),
        district: elder.district.clone(),
        provider_id: provider_id.clone(),
        item_code: order.item_code.clone(),
        card_uid: uid,
        amount,
        staff,
        challenge,
        code_tag: code.as_ref().map(|c| code_tag(&s, &id, c)),
        // The first SMS is counted (for the resend limit) in the hold's batch, before it
        // is sent.
        sms_sent_at: code.iter().map(|_| now_text.clone()).collect(),
        sms_status: code.as_ref().map(|_| SmsStatus::Queued),
        attempts_left: ATTEMPTS_MAX,
        failed_at: Vec::new(),
        status: ChargeStatus::Pending,
        created_at: now_text,
        expires_at: now.timestamp() + i64::from(s.config.hold_ttl_secs),
        confirmed_at: None,
        receipt_no: None,
        entry_seq: None,
        refund_reason: None,
        idempotency_key: key,
        request_hash,
    };
    let mut order = order;
    order.charge_id = Some(id.clone());
    order.updated_at = charge.created_at.clone();
    let hold = Request::new(
        format!("hold:{id}"),
        Command::Hold {
            hold_id: id.clone(),
            elder_id: elder.id.clone(),
            amount,
            ttl_secs: s.config.hold_ttl_secs,
        },
    );
    let outcome = s
        .settlement
        .commit(
            vec![hold],
            vec![
                record(prefix::CHARGE, &id, &charge),
                record(prefix::CHARGE_KEY, &scoped_key, &id),
                record(prefix::ORDER, &order.id, &order),
            ],
        )
        .await
        .map_err(|e| {
            if e.code == "not_found" {
                // No account for this year yet: nothing was issued, so nothing is available.
                ApiError::conflict("insufficient_credit", "the elder has no credit this year")
            } else {
                e
            }
        })?;
    // The ledger stamps the hold at max(clock, its last stamp); its expiry is the one that
    // counts. An SMS charge's record is written again after the send; a token charge's only
    // here, and only when the two differ.
    let ledger_expiry = outcome
        .first()
        .and_then(|o| o.expires_at.as_deref())
        .and_then(|t| ledger_core::fiscal::parse_timestamp(t).ok())
        .map(|t| t.timestamp());
    if let Some(expires_at) = ledger_expiry.filter(|t| *t != charge.expires_at) {
        charge.expires_at = expires_at;
        if code.is_none() {
            s.settlement
                .commit(Vec::new(), vec![record(prefix::CHARGE, &id, &charge)])
                .await?;
        }
    }
    {
        let mut books = s.settlement.write();
        books.charge_keys.insert(scoped_key, id.clone());
        books.orders.insert(order.id.clone(), order);
        books.charges.insert(id.clone(), charge.clone());
    }
    tracing::info!(charge = %id, challenge = ?challenge, "hold placed");
    if let Some(code) = code {
        charge = send_code(&s, charge, &elder, &provider_name, &code, Attempt::Recorded).await?;
    }
    Ok((StatusCode::CREATED, Json(creation_json(&charge, &s))))
}

/// Hex SHA-256 of the RFC 8785 canonical JSON of a validated request.
fn request_fingerprint(request: &Value) -> Result<String, ApiError> {
    let canonical = ledger_core::jcs::canonicalize(request).map_err(ApiError::internal)?;
    Ok(hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    )))
}

/// The creation response (also what an idempotent replay returns).
fn creation_json(c: &Charge, s: &AppState) -> Value {
    let mut v = json!({"id": c.id, "status": "pending", "challenge": c.challenge,
        "expires_at": expires_text(c), "attempts_left": ATTEMPTS_MAX, "amount": c.amount.to_string()});
    if c.challenge == Challenge::Sms {
        if let Some(hint) = s
            .registry
            .read()
            .elders
            .get(&c.elder_id)
            .and_then(phone_hint)
        {
            v["phone_hint"] = json!(hint);
        }
        v["sms_status"] = json!(c.sms_status);
    }
    v
}

/// Whether an SMS was already counted in the charge's durable record before it is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Counted with the hold: the gateway's answer is written behind (not waited for).
    Recorded,
    /// A resend: counted, with its new code, in a durable write after the send.
    New,
}

/// Sends the code (after the hold is durable, outside any storage batch) and records the
/// outcome. A failed send leaves the hold pending: the terminal sees `sms_status: failed`.
async fn send_code(
    s: &AppState,
    mut charge: Charge,
    elder: &Elder,
    provider_name: &str,
    code: &str,
    attempt: Attempt,
) -> Result<Charge, ApiError> {
    let phone = elder
        .phone_sealed
        .as_deref()
        .ok_or_else(|| ApiError::internal("SMS challenge without a phone"))?;
    let to = s.pii.open_sealed(phone).map_err(ApiError::internal)?;
    let now = s.now();
    let sent_at = format_timestamp(now);
    let valid_secs = charge.expires_at - now.timestamp();
    let message = SmsMessage {
        to,
        text: charge_text(provider_name, &charge.amount.to_string(), code, valid_secs),
        charge_id: charge.id.clone(),
        sent_at: sent_at.clone(),
    };
    let status = match tokio::time::timeout(SEND_TIMEOUT, s.sms.send(message)).await {
        Ok(Ok(())) => SmsStatus::Sent,
        Ok(Err(e)) => {
            tracing::warn!(charge = %charge.id, error = %e, "SMS send failed");
            SmsStatus::Failed
        }
        Err(_) => {
            tracing::warn!(charge = %charge.id, "SMS send timed out");
            SmsStatus::Failed
        }
    };
    charge.sms_status = Some(status);
    match attempt {
        Attempt::Recorded => {
            s.settlement
                .write_behind(vec![record(prefix::CHARGE, &charge.id, &charge)]);
            s.settlement
                .write()
                .charges
                .insert(charge.id.clone(), charge.clone());
        }
        Attempt::New => {
            charge.sms_sent_at.push(sent_at);
            s.settlement.save_charge(Vec::new(), &charge).await?;
        }
    }
    Ok(charge)
}

#[utoipa::path(get, path = "/v1/charges/{id}", responses((status = 200, description = "The charge")))]
async fn get_charge(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(charge_json(&s, &find(&s, &p, &id)?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    code: String,
}

/// Checks a hardware-token code: RFC 6238 at ±1 step, and never a step already used.
fn check_token(s: &AppState, elder: &Elder, code: &str) -> Result<Option<u64>, ApiError> {
    let token = elder
        .token
        .as_ref()
        .ok_or_else(|| ApiError::internal("token challenge without a token"))?;
    let secret = s
        .pii
        .open_sealed(&token.secret_sealed)
        .map_err(ApiError::internal)?;
    let bytes = totp_rs::Secret::Encoded(secret)
        .to_bytes()
        .map_err(|_| ApiError::internal("stored token secret is not base32"))?;
    let algorithm = match token.algorithm.as_str() {
        "SHA256" => totp_rs::Algorithm::SHA256,
        "SHA512" => totp_rs::Algorithm::SHA512,
        _ => totp_rs::Algorithm::SHA1,
    };
    let digits = usize::try_from(token.digits).map_err(ApiError::internal)?;
    let totp = totp_rs::TOTP::new_unchecked(algorithm, digits, 0, token.period, bytes);
    let now = u64::try_from(s.now().timestamp()).map_err(ApiError::internal)?;
    let step_now = now / token.period;
    let last = s.settlement.read().totp_steps.get(&elder.id).copied();
    for step in [step_now.saturating_sub(1), step_now, step_now + 1] {
        if equal_constant_time(&totp.generate(step * token.period), code) {
            // A code whose step was already used is a replay, however right it is.
            return Ok(last.is_none_or(|l| step > l).then_some(step));
        }
    }
    Ok(None)
}

#[utoipa::path(post, path = "/v1/charges/{id}/confirm", request_body = Confirm,
    responses((status = 200, description = "Confirmed; the receipt"),
        (status = 422, description = "code_invalid (attempts_left inside error)"),
        (status = 409, description = "too_many_attempts, charge_not_pending"),
        (status = 410, description = "charge_expired")))]
async fn confirm_charge(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Body(req): Body<Confirm>,
) -> Result<Json<Value>, ApiError> {
    let code = req.code.trim().to_string();
    if code.is_empty() || code.len() > CODE_LEN_MAX || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::field("code", "digits only"));
    }
    let _locks = lock_charge(&s, &p, &id).await?;
    let mut charge = find(&s, &p, &id)?;
    require_own_provider(&p, &charge)?;
    require_pending(&s, &charge)?;
    let elder = s
        .registry
        .read()
        .elders
        .get(&charge.elder_id)
        .cloned()
        .ok_or_else(|| ApiError::internal("charge's elder is missing"))?;
    let (right, step) = match charge.challenge {
        Challenge::Sms => {
            let tag = code_tag(&s, &charge.id, &code);
            (
                charge
                    .code_tag
                    .as_deref()
                    .is_some_and(|t| equal_constant_time(t, &tag)),
                None,
            )
        }
        Challenge::Token => {
            let step = check_token(&s, &elder, &code)?;
            (step.is_some(), step)
        }
    };
    if !right {
        return wrong_code(&s, charge).await;
    }
    let now = s.now();
    let year = Year::of(now);
    let receipt_no = s.settlement.new_receipt_no(year);
    let refs = Refs::from([
        ("charge".to_string(), charge.id.clone()),
        ("order".to_string(), charge.order_id.clone()),
        ("receipt".to_string(), receipt_no.clone()),
    ]);
    let post = Request::new(
        format!("post:{}", charge.id),
        Command::Post {
            hold_id: charge.id.clone(),
            provider_id: charge.provider_id.clone(),
            refs,
        },
    );
    let mut order = s
        .settlement
        .read()
        .orders
        .get(&charge.order_id)
        .cloned()
        .ok_or_else(|| ApiError::internal("charge's order is missing"))?;
    order.status = OrderStatus::Completed;
    order.updated_at = format_timestamp(now);
    charge.status = ChargeStatus::Confirmed;
    charge.receipt_no = Some(receipt_no.clone());
    // The charge is confirmed in the same batch as the post; its entry seq and time are
    // stamped right after, and rebuilt from the ledger's hold record if a crash falls between.
    let mut records = vec![
        record(prefix::ORDER, &order.id, &order),
        record(prefix::CHARGE, &charge.id, &charge),
    ];
    if let Some(step) = step {
        records.push(record(prefix::TOTP_STEP, &elder.id, &step));
    }
    // The hold may come due between the check above and this batch (the batch expires due
    // holds first): that is still an expiry to the terminal, not some other state.
    let outcome = match s.settlement.commit(vec![post], records).await {
        Ok(outcome) => outcome,
        Err(e)
            if e.code == "charge_not_pending"
                && hold_state(&s, &charge.id) == Some(HoldState::Expired) =>
        {
            return Err(expired());
        }
        Err(e) => return Err(e),
    };
    let posted = outcome
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("no outcome for the post"))?;
    let entry = posted
        .entry
        .ok_or_else(|| ApiError::internal("a post wrote no entry"))?;
    charge.entry_seq = Some(entry.seq);
    charge.confirmed_at = Some(posted.at.clone());
    // Not waited for: a crash before it is durable loses only what `Settlement::load`
    // rebuilds from the ledger's hold record.
    s.settlement
        .write_behind(vec![record(prefix::CHARGE, &charge.id, &charge)]);
    let receipt = Receipt {
        no: receipt_no.clone(),
        charge_id: charge.id.clone(),
        entry_hash: entry.hash.clone(),
        mark: None,
        paid_round: None,
        paid_seq: None,
    };
    {
        let mut books = s.settlement.write();
        if let Some(step) = step {
            books.totp_steps.insert(elder.id.clone(), step);
        }
        books.orders.insert(order.id.clone(), order);
        books.charges.insert(charge.id.clone(), charge.clone());
        books.receipts.insert(receipt_no.clone(), receipt.clone());
    }
    tracing::info!(charge = %charge.id, seq = entry.seq, "charge confirmed");
    Ok(Json(
        json!({"status": "confirmed", "receipt": receipt_json(&s, &charge, &receipt)?, "entry_seq": entry.seq}),
    ))
}

async fn wrong_code(s: &AppState, mut charge: Charge) -> Result<Json<Value>, ApiError> {
    charge.attempts_left = charge.attempts_left.saturating_sub(1);
    charge.failed_at.push(s.now_text());
    if charge.attempts_left == 0 {
        let charge = void_charge(s, charge).await?;
        tracing::warn!(charge = %charge.id, "too many wrong codes; hold voided");
        return Err(ApiError::conflict(
            "too_many_attempts",
            "too many wrong codes; the hold is voided",
        ));
    }
    s.settlement.save_charge(Vec::new(), &charge).await?;
    Err(ApiError::invalid("code_invalid", "wrong code")
        .with("attempts_left", json!(charge.attempts_left)))
}

#[utoipa::path(post, path = "/v1/charges/{id}/resend",
    responses((status = 200, description = "A new code was sent"), (status = 429, description = "resend_limited")))]
async fn resend_code(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let _locks = lock_charge(&s, &p, &id).await?;
    let mut charge = find(&s, &p, &id)?;
    require_own_provider(&p, &charge)?;
    require_pending(&s, &charge)?;
    if charge.challenge != Challenge::Sms {
        return Err(ApiError::conflict(
            "conflict",
            "this charge is confirmed with the elder's token",
        ));
    }
    let now = s.now();
    let last = charge
        .sms_sent_at
        .last()
        .and_then(|t| ledger_core::fiscal::parse_timestamp(t).ok());
    if charge.sms_sent_at.len() >= SMS_PER_CHARGE_MAX
        || last.is_some_and(|t| (now - t).num_seconds() < RESEND_GAP_SECS)
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "resend_limited",
            format!("at most {SMS_PER_CHARGE_MAX} SMS per charge, {RESEND_GAP_SECS} s apart"),
        ));
    }
    let code = sms_code()?;
    charge.code_tag = Some(code_tag(&s, &charge.id, &code));
    charge.sms_status = Some(SmsStatus::Queued);
    let (elder, provider_name) = {
        let data = s.registry.read();
        let elder = data
            .elders
            .get(&charge.elder_id)
            .cloned()
            .ok_or_else(|| ApiError::internal("charge's elder is missing"))?;
        let name = data
            .providers
            .get(&charge.provider_id)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        (elder, name)
    };
    let charge = send_code(&s, charge, &elder, &provider_name, &code, Attempt::New).await?;
    Ok(Json(charge_json(&s, &charge)))
}

#[utoipa::path(post, path = "/v1/charges/{id}/cancel", responses((status = 200, description = "Voided")))]
async fn cancel_charge(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let _locks = lock_charge(&s, &p, &id).await?;
    let charge = find(&s, &p, &id)?;
    if p.role != Role::DistrictStaff {
        require_own_provider(&p, &charge)?;
    }
    require_pending(&s, &charge)?;
    void_charge(&s, charge).await?;
    Ok(Json(json!({"id": id, "status": "voided"})))
}

/// Voids a pending charge's hold and stores the charge as voided, in one atomic batch.
async fn void_charge(s: &AppState, mut charge: Charge) -> Result<Charge, ApiError> {
    charge.status = ChargeStatus::Voided;
    let void = Request::new(
        format!("void:{}", charge.id),
        Command::Void {
            hold_id: charge.id.clone(),
        },
    );
    s.settlement.save_charge(vec![void], &charge).await?;
    Ok(charge)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    reason: String,
}

#[utoipa::path(post, path = "/v1/charges/{id}/refund", request_body = RefundBody,
    responses((status = 200, description = "Refunded"), (status = 409, description = "not confirmed, other year, year_closed")))]
async fn refund_charge(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Body(req): Body<RefundBody>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::DistrictStaff])?;
    let reason = text("reason", &req.reason, TEXT_LEN_MAX)?;
    let _locks = lock_charge(&s, &p, &id).await?;
    let mut charge = find(&s, &p, &id)?;
    if p.district.as_deref() != Some(&charge.district) {
        return Err(ApiError::forbidden("only the elder's district may refund"));
    }
    if charge.status != ChargeStatus::Confirmed {
        return Err(ApiError::conflict(
            "conflict",
            format!(
                "only a confirmed charge can be refunded; this one is {:?}",
                effective_status(&s, &charge)
            ),
        ));
    }
    let confirmed = charge
        .confirmed_at
        .as_deref()
        .and_then(|t| ledger_core::fiscal::parse_timestamp(t).ok())
        .ok_or_else(|| ApiError::internal("confirmed charge without a time"))?;
    if Year::of(confirmed) != Year::of(s.now()) {
        return Err(ApiError::conflict(
            "conflict",
            "refunds are made within the fiscal year of the charge",
        ));
    }
    let refs = Refs::from([
        ("charge".to_string(), charge.id.clone()),
        ("reason".to_string(), reason.clone()),
    ]);
    charge.status = ChargeStatus::Refunded;
    charge.refund_reason = Some(reason);
    let refund = Request::new(
        format!("refund:{}", charge.id),
        Command::Refund {
            hold_id: charge.id.clone(),
            refs,
        },
    );
    let outcome = s.settlement.save_charge(vec![refund], &charge).await?;
    let seq = outcome
        .first()
        .and_then(|o| o.entry.as_ref())
        .map(|e| e.seq);
    Ok(Json(
        json!({"id": id, "status": "refunded", "entry_seq": seq}),
    ))
}

fn receipt_json(s: &AppState, c: &Charge, r: &Receipt) -> Result<Value, ApiError> {
    let confirmed_at = c.confirmed_at.clone().unwrap_or_default();
    let qr = ledger_core::receipt::receipt_qr(
        s.ledger.key(),
        &r.no,
        c.amount,
        &c.provider_id,
        &confirmed_at,
        &r.entry_hash,
    )
    .map_err(ApiError::internal)?;
    Ok(
        json!({"no": r.no, "charge_id": c.id, "order_id": c.order_id, "elder_id": c.elder_id,
        "provider_id": c.provider_id, "item_code": c.item_code, "amount": c.amount.to_string(),
        "confirmed_at": confirmed_at, "entry_seq": c.entry_seq, "entry_hash": r.entry_hash, "qr": qr}),
    )
}

fn find_receipt(s: &AppState, p: &Principal, no: &str) -> Result<(Charge, Receipt), ApiError> {
    let receipt = s
        .settlement
        .read()
        .receipts
        .get(no)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no receipt {no}")))?;
    let charge = find(s, p, &receipt.charge_id)?;
    Ok((charge, receipt))
}

#[utoipa::path(get, path = "/v1/receipts/{no}", responses((status = 200, description = "The receipt with its signed QR payload")))]
async fn get_receipt(
    State(s): State<AppState>,
    p: Principal,
    Path(no): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (charge, receipt) = find_receipt(&s, &p, &no)?;
    Ok(Json(receipt_json(&s, &charge, &receipt)?))
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[utoipa::path(get, path = "/v1/receipts/{no}/print", responses((status = 200, description = "Printable HTML, three copies", content_type = "text/html")))]
async fn print_receipt(
    State(s): State<AppState>,
    p: Principal,
    Path(no): Path<String>,
) -> Result<Html<String>, ApiError> {
    let (charge, receipt) = find_receipt(&s, &p, &no)?;
    let r = receipt_json(&s, &charge, &receipt)?;
    let qr = r["qr"].as_str().unwrap_or_default().to_string();
    let svg = qrcode::QrCode::new(qr.as_bytes())
        .map_err(ApiError::internal)?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(180, 180)
        .build();
    // Inline SVG in HTML takes the element alone; an XML declaration there is not markup.
    let svg = match svg.find("<svg") {
        Some(start) => svg[start..].to_string(),
        None => svg,
    };
    let (provider_name, item_name) = {
        let data = s.registry.read();
        (
            data.providers
                .get(&charge.provider_id)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            data.catalog
                .get(&charge.item_code)
                .map(|i| i.name.clone())
                .unwrap_or_default(),
        )
    };
    let copy = |title: &str| {
        format!(
        "<section class=\"copy\"><h2>居家养老服务结算单 · {title}</h2><table>\
         <tr><th>单号</th><td>{no}</td></tr><tr><th>服务商</th><td>{provider} ({pid})</td></tr>\
         <tr><th>服务项目</th><td>{item} ({code})</td></tr><tr><th>金额</th><td>{amount} 元</td></tr>\
         <tr><th>老人编号</th><td>{elder}</td></tr><tr><th>确认时间</th><td>{at}</td></tr>\
         <tr><th>账本序号</th><td>{seq}</td></tr></table><div class=\"qr\">{svg}</div>\
         <p class=\"payload\">{payload}</p></section>",
        no = escape_html(&receipt.no), provider = escape_html(&provider_name), pid = escape_html(&charge.provider_id),
        item = escape_html(&item_name), code = escape_html(&charge.item_code), amount = charge.amount,
        elder = escape_html(&charge.elder_id), at = escape_html(charge.confirmed_at.as_deref().unwrap_or("")),
        seq = charge.entry_seq.unwrap_or_default(), svg = svg, payload = escape_html(&qr))
    };
    let html = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>{no}</title>\
         <style>body{{font-family:sans-serif}}.copy{{page-break-after:always;border:1px dashed #444;padding:1em;margin:1em 0}}\
         th{{text-align:left;padding-right:1em}}.payload{{font-family:monospace;font-size:8pt;word-break:break-all}}</style></head><body>\
         {a}{b}{c}</body></html>",
        no = escape_html(&receipt.no), a = copy("老人联"), b = copy("服务商联"), c = copy("区民政局联"));
    Ok(Html(html))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOffset {
    elder_id: String,
    provider_id: String,
    month: String,
    amount: Amount,
    consent_ref: String,
}

#[utoipa::path(post, path = "/v1/offsets", request_body = CreateOffset,
    responses((status = 201, description = "Offset entry posted"), (status = 409, description = "insufficient_credit")))]
async fn create_offset(
    State(s): State<AppState>,
    p: Principal,
    Body(req): Body<CreateOffset>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(&[Role::DistrictStaff])?;
    let amount = req.amount.positive("amount")?;
    let month: Month = req.month.parse().map_err(|e| ApiError::field("month", e))?;
    let consent = ident("consent_ref", &req.consent_ref, ID_TEXT_LEN_MAX)?;
    {
        let data = s.registry.read();
        let elder = data
            .elders
            .get(&req.elder_id)
            .ok_or_else(|| ApiError::field("elder_id", "no such elder"))?;
        p.require_district_staff(&elder.district)?;
        let provider = data
            .providers
            .get(&req.provider_id)
            .ok_or_else(|| ApiError::field("provider_id", "no such provider"))?;
        if provider.kind != ProviderKind::NursingHome {
            return Err(ApiError::field(
                "provider_id",
                "nursing-fee offsets are for nursing_home providers only",
            ));
        }
        if !provider.districts.contains(&elder.district) {
            return Err(ApiError::field(
                "provider_id",
                "the provider does not serve the elder's district",
            ));
        }
        if provider.suspended {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "provider_suspended",
                "the provider is suspended",
            ));
        }
        if elder.status != crate::registry::ElderStatus::Active {
            return Err(ApiError::conflict("conflict", "the elder is not active"));
        }
        // An offset settles a month that has begun, against that month's year of credit.
        if s.now() < month.start() {
            return Err(ApiError::conflict(
                "period_not_started",
                format!("{month} has not begun"),
            ));
        }
    }
    let refs = Refs::from([("consent".to_string(), consent.clone())]);
    let command = Command::Offset {
        elder_id: req.elder_id.clone(),
        provider_id: req.provider_id.clone(),
        month,
        amount,
        refs,
    };
    let key = format!(
        "offset:{}:{}:{month}:{consent}",
        req.elder_id, req.provider_id
    );
    let outcome = s
        .settlement
        .commit(vec![Request::new(key, command)], Vec::new())
        .await
        .map_err(|e| {
            if e.code == "not_found" {
                ApiError::conflict("insufficient_credit", "the elder has no credit that year")
            } else {
                e
            }
        })?;
    let entry = outcome.first().and_then(|o| o.entry.clone());
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"elder_id": req.elder_id, "provider_id": req.provider_id,
        "month": month.to_string(), "amount": amount.to_string(), "consent_ref": consent,
        "entry_seq": entry.as_ref().map(|e| e.seq), "entry_hash": entry.map(|e| e.hash)}),
        ),
    ))
}

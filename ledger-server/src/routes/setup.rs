//! Setup by the city: keys, districts and zones, the monthly-credit policy, the catalog,
//! providers, the manual clock, and the health check.

use crate::app::AppState;
use crate::auth::{new_key, Principal};
use crate::body::{ident, text, Amount, Body, ID_TEXT_LEN_MAX, TEXT_LEN_MAX};
use crate::error::ApiError;
use crate::registry::{
    prefix, record, CatalogItem, DispatchMode, District, ElderCategory, Policy, Provider,
    ProviderKind, Role, ServiceCategory,
};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ledger_core::Fen;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most streets in one district's zone map, items in a provider's caps, districts per provider.
pub const ZONES_MAX: usize = 2000;
pub const PRICE_CAPS_MAX: usize = 1000;
pub const PROVIDER_DISTRICTS_MAX: usize = 64;
/// Policy amounts allowed by SPEC.md ("100–500 yuan").
const POLICY_MIN_FEN: i64 = 100 * ledger_core::money::FEN_PER_YUAN;
const POLICY_MAX_FEN: i64 = 500 * ledger_core::money::FEN_PER_YUAN;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(create_key))
        .routes(routes!(create_district, list_districts))
        .routes(routes!(put_zones))
        .routes(routes!(put_policy, get_policy))
        .routes(routes!(put_catalog_item))
        .routes(routes!(list_catalog))
        .routes(routes!(create_provider, list_providers))
        .routes(routes!(get_provider))
        .routes(routes!(suspend_provider))
        .routes(routes!(set_clock))
}

/// `sms`: the SMS sender's counters (`sms::SmsMetrics`: sent, failed, delivery receipts,
/// latency in ms).
#[utoipa::path(get, path = "/v1/health", responses((status = 200, description = "Serving")))]
async fn health(State(s): State<AppState>) -> Json<Value> {
    Json(
        json!({"status": "ok", "now": s.now_text(), "tree_size": s.ledger.tree_size(),
        "sms": s.sms.metrics()}),
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    role: Role,
    name: String,
    district: Option<String>,
    provider: Option<String>,
}

#[utoipa::path(post, path = "/v1/keys", request_body = CreateKey,
    responses((status = 201, description = "The key, shown only here")))]
async fn create_key(
    State(s): State<AppState>,
    p: Principal,
    Body(req): Body<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(&[Role::CityAdmin])?;
    let name = text("name", &req.name, TEXT_LEN_MAX)?;
    let _gate = s.registry.gate().await;
    {
        let data = s.registry.read();
        match (req.role, &req.district, &req.provider) {
            (Role::DistrictStaff, Some(d), None) => {
                if !data.districts.contains_key(d) {
                    return Err(ApiError::field("district", format!("no district {d}")));
                }
            }
            (Role::Provider, None, Some(pid)) => {
                if !data.providers.contains_key(pid) {
                    return Err(ApiError::field("provider", format!("no provider {pid}")));
                }
            }
            (Role::CityAdmin | Role::Hotline | Role::Auditor, None, None) => {}
            (Role::DistrictStaff, _, _) => {
                return Err(ApiError::field(
                    "district",
                    "district_staff keys name exactly one district and no provider",
                ))
            }
            (Role::Provider, _, _) => {
                return Err(ApiError::field(
                    "provider",
                    "provider keys name exactly one provider and no district",
                ))
            }
            _ => {
                return Err(ApiError::field(
                    "role",
                    "this role is bound to no district or provider",
                ))
            }
        }
    }
    let key = new_key(name, req.role, req.district, req.provider, s.now_text())?;
    s.registry
        .persist(vec![record(prefix::KEY, &key.record.id, &key.record)])
        .await?;
    let r = key.record.clone();
    s.registry.write().keys.insert(r.id.clone(), key.record);
    tracing::info!(key_id = %r.id, role = ?r.role, "key created");
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": r.id, "key": key.text, "role": r.role, "name": r.name,
            "district": r.district, "provider": r.provider, "created_at": r.created_at}),
        ),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDistrict {
    code: String,
    name: String,
    dispatch_mode: DispatchMode,
}

fn district_json(d: &District) -> Value {
    json!({"code": d.code, "name": d.name, "dispatch_mode": d.dispatch_mode, "zones": d.zones})
}

#[utoipa::path(post, path = "/v1/districts", request_body = CreateDistrict,
    responses((status = 201, description = "Created"), (status = 409, description = "Exists")))]
async fn create_district(
    State(s): State<AppState>,
    p: Principal,
    Body(req): Body<CreateDistrict>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(&[Role::CityAdmin])?;
    if req.code.len() != 6 || !req.code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::field(
            "code",
            "a 6-digit administrative division code",
        ));
    }
    let district = District {
        code: req.code,
        name: text("name", &req.name, TEXT_LEN_MAX)?,
        dispatch_mode: req.dispatch_mode,
        zones: BTreeMap::new(),
    };
    let _gate = s.registry.gate().await;
    if s.registry.read().districts.contains_key(&district.code) {
        return Err(ApiError::conflict(
            "conflict",
            format!("district {} exists", district.code),
        ));
    }
    s.registry
        .persist(vec![record(prefix::DISTRICT, &district.code, &district)])
        .await?;
    let body = district_json(&district);
    s.registry
        .write()
        .districts
        .insert(district.code.clone(), district);
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(get, path = "/v1/districts", responses((status = 200, description = "All districts")))]
async fn list_districts(State(s): State<AppState>, _p: Principal) -> Json<Value> {
    let data = s.registry.read();
    Json(json!({"districts": data.districts.values().map(district_json).collect::<Vec<_>>()}))
}

#[utoipa::path(put, path = "/v1/districts/{code}/zones", request_body = BTreeMap<String, String>,
    responses((status = 200, description = "Zones replaced")))]
async fn put_zones(
    State(s): State<AppState>,
    p: Principal,
    Path(code): Path<String>,
    Body(zones): Body<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin])?;
    if zones.len() > ZONES_MAX {
        return Err(ApiError::field(
            "zones",
            format!("at most {ZONES_MAX} streets"),
        ));
    }
    let _gate = s.registry.gate().await;
    let district = {
        let data = s.registry.read();
        let mut district = data
            .districts
            .get(&code)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no district {code}")))?;
        for (street, provider_id) in &zones {
            text("street", street, ID_TEXT_LEN_MAX)?;
            let provider = data
                .providers
                .get(provider_id)
                .ok_or_else(|| ApiError::field(street, format!("no provider {provider_id}")))?;
            if !provider.districts.contains(&code) {
                return Err(ApiError::field(
                    street,
                    format!("provider {provider_id} does not serve district {code}"),
                ));
            }
        }
        district.zones = zones;
        district
    };
    s.registry
        .persist(vec![record(prefix::DISTRICT, &district.code, &district)])
        .await?;
    let body = district_json(&district);
    s.registry
        .write()
        .districts
        .insert(district.code.clone(), district);
    Ok(Json(body))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPolicy {
    amounts: BTreeMap<String, Amount>,
    stacking: String,
}

fn policy_json(policy: &Policy) -> Value {
    let amounts: BTreeMap<ElderCategory, String> = policy
        .amounts
        .iter()
        .map(|(c, a)| (*c, a.to_string()))
        .collect();
    json!({"amounts": amounts, "stacking": policy.stacking})
}

#[utoipa::path(put, path = "/v1/policy/monthly-credit", request_body = PutPolicy,
    responses((status = 200, description = "Policy set")))]
async fn put_policy(
    State(s): State<AppState>,
    p: Principal,
    Body(req): Body<PutPolicy>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin])?;
    if req.stacking != "max" {
        return Err(ApiError::field("stacking", "only \"max\" is supported"));
    }
    let mut amounts = BTreeMap::new();
    for (name, amount) in &req.amounts {
        let category: ElderCategory = serde_json::from_value(Value::String(name.clone()))
            .map_err(|_| ApiError::field("amounts", format!("unknown category {name:?}")))?;
        let fen = amount.positive(&format!("amounts.{name}"))?;
        if !(POLICY_MIN_FEN..=POLICY_MAX_FEN).contains(&fen.fen()) {
            return Err(ApiError::invalid(
                "invalid_amount",
                format!("amounts.{name}: monthly credit must be within 100–500 yuan"),
            ));
        }
        amounts.insert(category, fen);
    }
    if let Some(missing) = ElderCategory::ALL.iter().find(|c| !amounts.contains_key(c)) {
        return Err(ApiError::field(
            "amounts",
            format!("every category must be given; {missing:?} is missing"),
        ));
    }
    let policy = Policy {
        amounts,
        stacking: req.stacking,
    };
    let _gate = s.registry.gate().await;
    s.registry
        .persist(vec![record(prefix::POLICY, "", &policy)])
        .await?;
    let body = policy_json(&policy);
    s.registry.write().policy = Some(policy);
    Ok(Json(body))
}

#[utoipa::path(get, path = "/v1/policy/monthly-credit", responses((status = 200, description = "The policy")))]
async fn get_policy(State(s): State<AppState>, _p: Principal) -> Result<Json<Value>, ApiError> {
    let data = s.registry.read();
    let policy = data
        .policy
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no policy set yet"))?;
    Ok(Json(policy_json(policy)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCatalogItem {
    name: String,
    service_category: ServiceCategory,
    unit: String,
}

fn item_json(i: &CatalogItem) -> Value {
    json!({"code": i.code, "name": i.name, "service_category": i.service_category, "unit": i.unit})
}

#[utoipa::path(put, path = "/v1/catalog/items/{code}", request_body = PutCatalogItem,
    responses((status = 200, description = "Item set")))]
async fn put_catalog_item(
    State(s): State<AppState>,
    p: Principal,
    Path(code): Path<String>,
    Body(req): Body<PutCatalogItem>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin])?;
    let item = CatalogItem {
        code: ident("code", &code, ID_TEXT_LEN_MAX)?,
        name: text("name", &req.name, TEXT_LEN_MAX)?,
        service_category: req.service_category,
        unit: text("unit", &req.unit, ID_TEXT_LEN_MAX)?,
    };
    let _gate = s.registry.gate().await;
    s.registry
        .persist(vec![record(prefix::CATALOG, &item.code, &item)])
        .await?;
    let body = item_json(&item);
    s.registry.write().catalog.insert(item.code.clone(), item);
    Ok(Json(body))
}

#[utoipa::path(get, path = "/v1/catalog/items", responses((status = 200, description = "The catalog")))]
async fn list_catalog(State(s): State<AppState>, _p: Principal) -> Json<Value> {
    let data = s.registry.read();
    Json(json!({"items": data.catalog.values().map(item_json).collect::<Vec<_>>()}))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    id: String,
    name: String,
    kind: ProviderKind,
    districts: Vec<String>,
    price_caps: BTreeMap<String, Amount>,
}

pub fn provider_json(p: &Provider) -> Value {
    let caps: BTreeMap<&String, String> = p
        .price_caps
        .iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    json!({"id": p.id, "name": p.name, "kind": p.kind, "districts": p.districts,
        "price_caps": caps, "status": if p.suspended { "suspended" } else { "active" }})
}

#[utoipa::path(post, path = "/v1/providers", request_body = CreateProvider,
    responses((status = 201, description = "Created")))]
async fn create_provider(
    State(s): State<AppState>,
    p: Principal,
    Body(req): Body<CreateProvider>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(&[Role::CityAdmin])?;
    let id = ident("id", &req.id, 32)?;
    if req.districts.is_empty() || req.districts.len() > PROVIDER_DISTRICTS_MAX {
        return Err(ApiError::field(
            "districts",
            format!("1..={PROVIDER_DISTRICTS_MAX} districts"),
        ));
    }
    if req.price_caps.len() > PRICE_CAPS_MAX {
        return Err(ApiError::field(
            "price_caps",
            format!("at most {PRICE_CAPS_MAX} items"),
        ));
    }
    let mut caps: BTreeMap<String, Fen> = BTreeMap::new();
    for (item, cap) in &req.price_caps {
        caps.insert(item.clone(), cap.positive(&format!("price_caps.{item}"))?);
    }
    let provider = Provider {
        id,
        name: text("name", &req.name, TEXT_LEN_MAX)?,
        kind: req.kind,
        districts: req.districts,
        price_caps: caps,
        suspended: false,
    };
    let _gate = s.registry.gate().await;
    {
        let data = s.registry.read();
        if data.providers.contains_key(&provider.id) {
            return Err(ApiError::conflict(
                "conflict",
                format!("provider {} exists", provider.id),
            ));
        }
        if let Some(d) = provider
            .districts
            .iter()
            .find(|d| !data.districts.contains_key(*d))
        {
            return Err(ApiError::field("districts", format!("no district {d}")));
        }
        if let Some(i) = provider
            .price_caps
            .keys()
            .find(|i| !data.catalog.contains_key(*i))
        {
            return Err(ApiError::field(
                "price_caps",
                format!("no catalog item {i}"),
            ));
        }
    }
    s.registry
        .persist(vec![record(prefix::PROVIDER, &provider.id, &provider)])
        .await?;
    let body = provider_json(&provider);
    s.registry
        .write()
        .providers
        .insert(provider.id.clone(), provider);
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(get, path = "/v1/providers", responses((status = 200, description = "All providers")))]
async fn list_providers(State(s): State<AppState>, _p: Principal) -> Json<Value> {
    let data = s.registry.read();
    Json(json!({"providers": data.providers.values().map(provider_json).collect::<Vec<_>>()}))
}

#[utoipa::path(get, path = "/v1/providers/{id}", responses((status = 200, description = "The provider")))]
async fn get_provider(
    State(s): State<AppState>,
    _p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let data = s.registry.read();
    data.providers
        .get(&id)
        .map(|p| Json(provider_json(p)))
        .ok_or_else(|| ApiError::not_found(format!("no provider {id}")))
}

#[utoipa::path(post, path = "/v1/providers/{id}/suspend", responses((status = 200, description = "Suspended")))]
async fn suspend_provider(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin])?;
    let _gate = s.registry.gate().await;
    let mut provider = s
        .registry
        .read()
        .providers
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no provider {id}")))?;
    provider.suspended = true;
    s.registry
        .persist(vec![record(prefix::PROVIDER, &provider.id, &provider)])
        .await?;
    let body = provider_json(&provider);
    s.registry
        .write()
        .providers
        .insert(provider.id.clone(), provider);
    Ok(Json(body))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetClock {
    now: String,
}

#[utoipa::path(post, path = "/v1/admin/clock", request_body = SetClock,
    responses((status = 200, description = "Clock moved"), (status = 409, description = "clock_backwards")))]
async fn set_clock(
    State(s): State<AppState>,
    p: Principal,
    Body(req): Body<SetClock>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin])?;
    let to =
        ledger_core::fiscal::parse_timestamp(&req.now).map_err(|e| ApiError::field("now", e))?;
    let _gate = s.registry.gate().await;
    match s.clock.set(to) {
        None => Err(ApiError::conflict(
            "conflict",
            "the server runs on the system clock",
        )),
        Some(Err(e)) => Err(ApiError::conflict("clock_backwards", e.to_string())),
        Some(Ok(())) => {
            let text = ledger_core::fiscal::format_timestamp(to);
            s.registry
                .persist(vec![record(prefix::CLOCK, "", &text)])
                .await?;
            Ok(Json(json!({"now": text})))
        }
    }
}

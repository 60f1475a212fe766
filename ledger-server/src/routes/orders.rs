//! Work orders: created by the 12349 hotline or district staff, dispatched to the street's
//! provider (zoned districts) or the provider the elder chose (free districts); the provider
//! accepts and agrees a price with the elder, never above its contract cap for the item.

use crate::app::AppState;
use crate::auth::Principal;
use crate::body::{ident, text, Amount, Body, Params, ID_TEXT_LEN_MAX, TEXT_LEN_MAX};
use crate::error::ApiError;
use crate::registry::{DispatchMode, ElderStatus, Role};
use crate::settlement::{order_lock, prefix, record, ChargeStatus, Order, OrderStatus};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most orders one list call returns.
pub const ORDER_LIST_MAX: usize = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(accept_order))
        .routes(routes!(agree_order))
        .routes(routes!(cancel_order))
}

pub fn order_json(o: &Order) -> Value {
    json!({"id": o.id, "elder_id": o.elder_id, "district": o.district, "item_code": o.item_code,
        "provider_id": o.provider_id, "status": o.status,
        "price": o.price.map(|p| p.to_string()), "note": o.note, "created_at": o.created_at,
        "updated_at": o.updated_at, "charge_id": o.charge_id})
}

/// Who may see an order: its provider, its district's staff, the hotline, city, auditors.
fn may_see(p: &Principal, o: &Order) -> bool {
    match p.role {
        Role::Provider => p.provider.as_deref() == Some(&o.provider_id),
        Role::DistrictStaff => p.district.as_deref() == Some(&o.district),
        Role::CityAdmin | Role::Hotline | Role::Auditor => true,
    }
}

fn find(s: &AppState, p: &Principal, id: &str) -> Result<Order, ApiError> {
    let order = s
        .settlement
        .read()
        .orders
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no order {id}")))?;
    if may_see(p, &order) {
        Ok(order)
    } else {
        Err(ApiError::forbidden(
            "this order belongs to another district or provider",
        ))
    }
}

/// 403 unless the caller is the order's provider.
fn require_provider(p: &Principal, o: &Order) -> Result<(), ApiError> {
    if p.role == Role::Provider && p.provider.as_deref() == Some(&o.provider_id) {
        Ok(())
    } else {
        Err(ApiError::forbidden("only the order's provider may do this"))
    }
}

/// Whether the order's latest charge is pending or confirmed (a voided or expired one leaves
/// the order open to a new price and a new swipe).
fn has_live_charge(s: &AppState, order: &Order) -> bool {
    let charge = order
        .charge_id
        .as_ref()
        .and_then(|c| s.settlement.read().charges.get(c).cloned());
    charge.is_some_and(|c| {
        matches!(
            crate::routes::charges::effective_status(s, &c),
            ChargeStatus::Pending | ChargeStatus::Confirmed
        )
    })
}

async fn save(s: &AppState, order: Order) -> Result<Json<Value>, ApiError> {
    s.settlement
        .commit(Vec::new(), vec![record(prefix::ORDER, &order.id, &order)])
        .await?;
    let body = order_json(&order);
    s.settlement.write().orders.insert(order.id.clone(), order);
    Ok(Json(body))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    elder_id: String,
    item_code: String,
    provider_id: Option<String>,
    note: Option<String>,
}

#[utoipa::path(post, path = "/v1/orders", request_body = CreateOrder,
    responses((status = 201, description = "Dispatched"), (status = 409, description = "no_provider_for_zone")))]
async fn create_order(
    State(s): State<AppState>,
    p: Principal,
    Body(req): Body<CreateOrder>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(&[Role::Hotline, Role::DistrictStaff, Role::CityAdmin])?;
    let note = req
        .note
        .as_deref()
        .map(|n| text("note", n, TEXT_LEN_MAX))
        .transpose()?;
    let elder_id = ident("elder_id", &req.elder_id, ID_TEXT_LEN_MAX)?;
    let (district, provider_id) = {
        let data = s.registry.read();
        let elder = data
            .elders
            .get(&elder_id)
            .ok_or_else(|| ApiError::field("elder_id", format!("no elder {elder_id}")))?;
        if p.role == Role::DistrictStaff && p.district.as_deref() != Some(&elder.district) {
            return Err(ApiError::forbidden(
                "this elder belongs to another district",
            ));
        }
        if elder.status != ElderStatus::Active {
            return Err(ApiError::conflict(
                "conflict",
                format!("elder {elder_id} is not active"),
            ));
        }
        if !data.catalog.contains_key(&req.item_code) {
            return Err(ApiError::field(
                "item_code",
                format!("no catalog item {}", req.item_code),
            ));
        }
        let district = data
            .districts
            .get(&elder.district)
            .ok_or_else(|| ApiError::internal("elder's district is missing"))?;
        let provider_id = match district.dispatch_mode {
            DispatchMode::Zoned => {
                let zoned = district.zones.get(&elder.street).cloned().ok_or_else(|| {
                    ApiError::conflict(
                        "no_provider_for_zone",
                        format!("no provider is assigned to street {}", elder.street),
                    )
                })?;
                if req
                    .provider_id
                    .as_ref()
                    .is_some_and(|given| *given != zoned)
                {
                    return Err(ApiError::field(
                        "provider_id",
                        "a zoned district dispatches to the street's provider",
                    ));
                }
                zoned
            }
            DispatchMode::Free => req.provider_id.clone().ok_or_else(|| {
                ApiError::field("provider_id", "required in a free-choice district")
            })?,
        };
        let provider = data
            .providers
            .get(&provider_id)
            .ok_or_else(|| ApiError::field("provider_id", format!("no provider {provider_id}")))?;
        if !provider.districts.contains(&elder.district) {
            return Err(ApiError::field(
                "provider_id",
                "the provider does not serve this district",
            ));
        }
        if !provider.price_caps.contains_key(&req.item_code) {
            return Err(ApiError::field(
                "item_code",
                "the provider does not offer this item",
            ));
        }
        if provider.suspended {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "provider_suspended",
                "the provider is suspended",
            ));
        }
        (elder.district.clone(), provider_id)
    };
    let now = s.now_text();
    let order = Order {
        id: s.settlement.new_order_id(),
        elder_id,
        district,
        item_code: req.item_code,
        provider_id,
        status: OrderStatus::Dispatched,
        price: None,
        note,
        created_by: p.key_id.clone(),
        created_at: now.clone(),
        updated_at: now,
        charge_id: None,
    };
    let body = save(&s, order).await?;
    Ok((StatusCode::CREATED, body))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct OrderFilter {
    status: Option<OrderStatus>,
    district: Option<String>,
    provider: Option<String>,
}

#[utoipa::path(get, path = "/v1/orders", params(OrderFilter), responses((status = 200, description = "Orders the caller may see")))]
async fn list_orders(
    State(s): State<AppState>,
    p: Principal,
    Params(f): Params<OrderFilter>,
) -> Json<Value> {
    let books = s.settlement.read();
    let mut orders: Vec<&Order> = books
        .orders
        .values()
        .filter(|o| may_see(&p, o))
        .filter(|o| f.status.is_none_or(|st| o.status == st))
        .filter(|o| f.district.as_ref().is_none_or(|d| &o.district == d))
        .filter(|o| f.provider.as_ref().is_none_or(|pr| &o.provider_id == pr))
        .collect();
    orders.sort_by(|a, b| a.id.cmp(&b.id));
    let truncated = orders.len() > ORDER_LIST_MAX;
    Json(
        json!({"orders": orders.iter().take(ORDER_LIST_MAX).map(|o| order_json(o)).collect::<Vec<_>>(),
        "truncated": truncated}),
    )
}

#[utoipa::path(get, path = "/v1/orders/{id}", responses((status = 200, description = "The order")))]
async fn get_order(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(order_json(&find(&s, &p, &id)?)))
}

#[utoipa::path(post, path = "/v1/orders/{id}/accept", responses((status = 200, description = "Accepted")))]
async fn accept_order(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let _lock = s.settlement.lock(&[order_lock(&id)]).await;
    let mut order = find(&s, &p, &id)?;
    require_provider(&p, &order)?;
    match order.status {
        OrderStatus::Dispatched => {}
        OrderStatus::Accepted => return Ok(Json(order_json(&order))),
        other => {
            return Err(ApiError::conflict(
                "conflict",
                format!("order is {other:?}"),
            ))
        }
    }
    order.status = OrderStatus::Accepted;
    order.updated_at = s.now_text();
    save(&s, order).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Agree {
    price: Amount,
}

#[utoipa::path(post, path = "/v1/orders/{id}/agree", request_body = Agree,
    responses((status = 200, description = "Agreed"), (status = 422, description = "price_over_cap")))]
async fn agree_order(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Body(req): Body<Agree>,
) -> Result<Json<Value>, ApiError> {
    let price = req.price.positive("price")?;
    let _lock = s.settlement.lock(&[order_lock(&id)]).await;
    let mut order = find(&s, &p, &id)?;
    require_provider(&p, &order)?;
    if !matches!(order.status, OrderStatus::Accepted | OrderStatus::Agreed)
        || has_live_charge(&s, &order)
    {
        return Err(ApiError::conflict(
            "conflict",
            format!(
                "order is {:?}; a price is agreed after accepting and before charging",
                order.status
            ),
        ));
    }
    let cap = s
        .registry
        .read()
        .providers
        .get(&order.provider_id)
        .and_then(|pr| pr.price_caps.get(&order.item_code).copied())
        .ok_or_else(|| ApiError::internal("order's provider or cap is missing"))?;
    if price > cap {
        return Err(ApiError::invalid(
            "price_over_cap",
            format!("price {price} is above the contract cap {cap}"),
        ));
    }
    order.price = Some(price);
    order.status = OrderStatus::Agreed;
    order.updated_at = s.now_text();
    save(&s, order).await
}

#[utoipa::path(post, path = "/v1/orders/{id}/cancel", responses((status = 200, description = "Cancelled")))]
async fn cancel_order(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[
        Role::Hotline,
        Role::DistrictStaff,
        Role::CityAdmin,
        Role::Provider,
    ])?;
    let _lock = s.settlement.lock(&[order_lock(&id)]).await;
    let mut order = find(&s, &p, &id)?;
    match order.status {
        OrderStatus::Cancelled => return Ok(Json(order_json(&order))),
        OrderStatus::Completed => {
            return Err(ApiError::conflict(
                "conflict",
                "a completed order cannot be cancelled; refund its charge",
            ))
        }
        _ => {}
    }
    if has_live_charge(&s, &order) {
        return Err(ApiError::conflict(
            "conflict",
            "the order has a pending charge; cancel the charge first",
        ));
    }
    order.status = OrderStatus::Cancelled;
    order.updated_at = s.now_text();
    save(&s, order).await
}

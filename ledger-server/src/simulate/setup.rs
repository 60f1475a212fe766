//! Loading a fixture folder through the API's own setup endpoints (districts, catalog,
//! providers, zones, policy), so fixtures pass exactly the validation an administrator's
//! calls pass. Used by `init --fixtures` and by `simulate`.

use super::api::Api;
use fixtures::Fixtures;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub async fn load(api: &Api, admin_key: &str, fx: &Fixtures) -> anyhow::Result<()> {
    for d in &fx.districts {
        let body =
            json!({"code": d.code, "name": d.name, "dispatch_mode": d.dispatch_mode.as_str()});
        api.post("/v1/districts", admin_key, &body, 201).await?;
    }
    for item in &fx.catalog {
        let body = json!({"name": item.name, "service_category": item.service_category, "unit": item.unit});
        api.put(
            &format!("/v1/catalog/items/{}", item.code),
            admin_key,
            &body,
        )
        .await?;
    }
    for p in &fx.providers {
        let caps: BTreeMap<&String, String> = p
            .price_caps
            .iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        let body = json!({"id": p.id, "name": p.name, "kind": p.kind.as_str(), "districts": p.districts,
            "price_caps": caps});
        api.post("/v1/providers", admin_key, &body, 201).await?;
    }
    for d in fx.districts.iter().filter(|d| !d.zones.is_empty()) {
        let zones: Map<String, Value> =
            d.zones.iter().map(|(s, p)| (s.clone(), json!(p))).collect();
        api.put(
            &format!("/v1/districts/{}/zones", d.code),
            admin_key,
            &Value::Object(zones),
        )
        .await?;
    }
    let amounts: BTreeMap<&String, String> = fx
        .policy
        .amounts
        .iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    api.put(
        "/v1/policy/monthly-credit",
        admin_key,
        &json!({"amounts": amounts, "stacking": fx.policy.stacking}),
    )
    .await?;
    Ok(())
}

//! Fraud signals the reference system lacked, computed from the charges on each request:
//! bursts of wrong codes on one card or one terminal (staff), one card charged by several
//! providers on the same day, and a provider charging exactly its cap on nearly every charge.

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::registry::Role;
use crate::settlement::{Charge, ChargeStatus};
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, FixedOffset, Utc};
use ledger_core::fiscal::parse_timestamp;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Wrong codes on one card or terminal within this window make a burst.
pub const BURST_WINDOW_SECS: i64 = 600;
pub const BURST_FAILURES_MIN: usize = 3;
/// A provider is flagged when at least this share (percent) of at least this many confirmed
/// charges sit exactly at the item's cap.
pub const AT_CAP_SHARE_PERCENT: usize = 90;
pub const AT_CAP_CHARGES_MIN: usize = 10;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(alerts))
}

fn times(c: &Charge) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    c.failed_at.iter().filter_map(|t| parse_timestamp(t).ok())
}

/// The largest number of failures inside any window of `BURST_WINDOW_SECS`, and its start.
fn worst_burst(mut at: Vec<DateTime<Utc>>) -> Option<(usize, DateTime<Utc>)> {
    at.sort();
    let mut best: Option<(usize, DateTime<Utc>)> = None;
    let mut start = 0;
    for end in 0..at.len() {
        while (at[end] - at[start]).num_seconds() > BURST_WINDOW_SECS {
            start += 1;
        }
        let n = end - start + 1;
        if best.is_none_or(|(b, _)| n > b) {
            best = Some((n, at[start]));
        }
    }
    best.filter(|(n, _)| *n >= BURST_FAILURES_MIN)
}

fn local_day(t: &str) -> Option<String> {
    let zone = FixedOffset::east_opt(8 * 3600)?;
    parse_timestamp(t)
        .ok()
        .map(|t| t.with_timezone(&zone).date_naive().to_string())
}

#[utoipa::path(get, path = "/v1/alerts", responses((status = 200, description = "Current fraud signals")))]
async fn alerts(State(s): State<AppState>, p: Principal) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin, Role::DistrictStaff, Role::Auditor])?;
    let books = s.settlement.read();
    let visible: Vec<&Charge> = books
        .charges
        .values()
        .filter(|c| p.role != Role::DistrictStaff || p.district.as_deref() == Some(&c.district))
        .collect();
    let mut out = Vec::new();

    let mut by_card: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
    let mut by_terminal: BTreeMap<(&str, &str), Vec<DateTime<Utc>>> = BTreeMap::new();
    for c in &visible {
        by_card.entry(&c.card_uid).or_default().extend(times(c));
        if let Some(staff) = &c.staff {
            by_terminal
                .entry((&c.provider_id, staff))
                .or_default()
                .extend(times(c));
        }
    }
    for (card, at) in by_card {
        if let Some((n, from)) = worst_burst(at) {
            out.push(json!({"kind": "failed_code_burst", "subject": {"card_uid": card},
                "detail": format!("{n} wrong codes within {BURST_WINDOW_SECS} s"), "at": from.to_rfc3339()}));
        }
    }
    for ((provider, staff), at) in by_terminal {
        if let Some((n, from)) = worst_burst(at) {
            out.push(json!({"kind": "failed_code_burst", "subject": {"provider_id": provider, "staff": staff},
                "detail": format!("{n} wrong codes within {BURST_WINDOW_SECS} s"), "at": from.to_rfc3339()}));
        }
    }

    let mut providers_per_card_day: BTreeMap<(&str, String), BTreeSet<&str>> = BTreeMap::new();
    let mut at_cap: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let data = s.registry.read();
    for c in visible
        .iter()
        .filter(|c| matches!(c.status, ChargeStatus::Confirmed | ChargeStatus::Refunded))
    {
        if let Some(day) = c.confirmed_at.as_deref().and_then(local_day) {
            providers_per_card_day
                .entry((&c.card_uid, day))
                .or_default()
                .insert(&c.provider_id);
        }
        let cap = data
            .providers
            .get(&c.provider_id)
            .and_then(|p| p.price_caps.get(&c.item_code));
        let tally = at_cap.entry(&c.provider_id).or_default();
        tally.0 += 1;
        if cap == Some(&c.amount) {
            tally.1 += 1;
        }
    }
    for ((card, day), providers) in providers_per_card_day {
        if providers.len() > 1 {
            out.push(
                json!({"kind": "card_multiple_providers", "subject": {"card_uid": card},
                "detail": format!("charged by {} providers on {day}", providers.len()),
                "providers": providers, "day": day}),
            );
        }
    }
    for (provider, (total, capped)) in at_cap {
        if total >= AT_CAP_CHARGES_MIN && capped * 100 >= total * AT_CAP_SHARE_PERCENT {
            out.push(json!({"kind": "charges_at_cap", "subject": {"provider_id": provider},
                "detail": format!("{capped} of {total} confirmed charges exactly at the contract cap")}));
        }
    }
    Ok(Json(json!({"alerts": out})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_timestamp(s).unwrap()
    }

    #[test]
    fn bursts_need_enough_failures_inside_the_window() {
        let spread = vec![
            t("2026-03-01T00:00:00Z"),
            t("2026-03-01T00:11:00Z"),
            t("2026-03-01T00:22:00Z"),
        ];
        assert_eq!(worst_burst(spread), None);
        let tight = vec![
            t("2026-03-01T00:00:00Z"),
            t("2026-03-01T00:09:00Z"),
            t("2026-03-01T00:10:00Z"),
            t("2026-03-02T00:00:00Z"),
        ];
        assert_eq!(worst_burst(tight), Some((3, t("2026-03-01T00:00:00Z"))));
        assert_eq!(
            local_day("2026-03-01T16:00:00Z").as_deref(),
            Some("2026-03-02")
        );
    }
}

//! Quarterly reconciliation (区民政局对账): per district and quarter, staff mark each receipt
//! matched or disputed against the paper copy, then close the quarter: each provider is paid
//! the total of its matched, unpaid receipts in one payout entry. Disputed receipts stay open
//! and are paid by a later close once matched. Statements per provider as CSV.

use crate::app::AppState;
use crate::auth::Principal;
use crate::body::Body;
use crate::error::ApiError;
use crate::registry::Role;
use crate::settlement::{prefix, record, Charge, ChargeStatus, Mark, Match, Receipt};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use ledger_core::command::{Command, Refs, Request};
use ledger_core::fiscal::{parse_timestamp, Quarter};
use ledger_core::Fen;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_reconciliation))
        .routes(routes!(mark_receipt))
        .routes(routes!(close_quarter))
        .routes(routes!(statement))
}

fn parse_quarter(text: &str) -> Result<Quarter, ApiError> {
    text.parse().map_err(|e| ApiError::field("quarter", e))
}

/// District staff of `district`, or the city (read and act), or auditors (read only).
fn require_access(p: &Principal, district: &str, write: bool) -> Result<(), ApiError> {
    match p.role {
        Role::Auditor if !write => Ok(()),
        _ => p.require_district_staff(district),
    }
}

/// The quarter's receipts of a district: confirmed (not refunded) charges confirmed within it.
fn quarter_receipts(s: &AppState, district: &str, quarter: Quarter) -> Vec<(Charge, Receipt)> {
    let books = s.settlement.read();
    let mut out: Vec<(Charge, Receipt)> = books
        .receipts
        .values()
        .filter_map(|r| {
            books
                .charges
                .get(&r.charge_id)
                .map(|c| (c.clone(), r.clone()))
        })
        .filter(|(c, _)| c.district == district && c.status == ChargeStatus::Confirmed)
        .filter(|(c, _)| {
            c.confirmed_at
                .as_deref()
                .and_then(|t| parse_timestamp(t).ok())
                .is_some_and(|t| quarter.contains(t))
        })
        .collect();
    out.sort_by(|a, b| a.1.no.cmp(&b.1.no));
    out
}

fn sum(mut amounts: impl Iterator<Item = Fen>) -> Result<Fen, ApiError> {
    amounts.try_fold(Fen::ZERO, |acc, a| {
        acc.checked_add(a)
            .ok_or_else(|| ApiError::internal("reconciliation total overflow"))
    })
}

fn receipt_status(r: &Receipt) -> &'static str {
    match r.mark {
        Some(Match::Matched) => "matched",
        Some(Match::Disputed) => "disputed",
        None => "open",
    }
}

#[utoipa::path(get, path = "/v1/reconciliations/{district}/{quarter}",
    responses((status = 200, description = "Per provider: receipts, total, matched, disputed, paid")))]
async fn get_reconciliation(
    State(s): State<AppState>,
    p: Principal,
    Path((district, quarter)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_access(&p, &district, false)?;
    let quarter = parse_quarter(&quarter)?;
    let mut by_provider: BTreeMap<String, Vec<(Charge, Receipt)>> = BTreeMap::new();
    for (c, r) in quarter_receipts(&s, &district, quarter) {
        by_provider
            .entry(c.provider_id.clone())
            .or_default()
            .push((c, r));
    }
    let mut providers = Vec::new();
    for (provider_id, items) in &by_provider {
        let pick = |f: &dyn Fn(&Receipt) -> bool| {
            sum(items.iter().filter(|(_, r)| f(r)).map(|(c, _)| c.amount))
        };
        providers.push(json!({
            "provider_id": provider_id,
            "receipts": items.iter().map(|(c, r)| json!({"no": r.no, "charge_id": c.id,
                "amount": c.amount.to_string(), "confirmed_at": c.confirmed_at,
                "status": receipt_status(r), "paid": r.paid_round.is_some(),
                "payout_seq": r.paid_seq})).collect::<Vec<_>>(),
            "total": pick(&|_| true)?.to_string(),
            "matched": pick(&|r| r.mark == Some(Match::Matched))?.to_string(),
            "disputed": pick(&|r| r.mark == Some(Match::Disputed))?.to_string(),
            "paid": pick(&|r| r.paid_round.is_some())?.to_string(),
        }));
    }
    let closes = s
        .settlement
        .read()
        .quarter_closes
        .get(&format!("{district}/{quarter}"))
        .copied()
        .unwrap_or(0);
    Ok(Json(
        json!({"district": district, "quarter": quarter.to_string(), "closes": closes, "providers": providers}),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkBody {
    status: Match,
}

#[utoipa::path(post, path = "/v1/reconciliations/{district}/{quarter}/receipts/{no}", request_body = MarkBody,
    responses((status = 200, description = "Marked"), (status = 409, description = "already paid")))]
async fn mark_receipt(
    State(s): State<AppState>,
    p: Principal,
    Path((district, quarter, no)): Path<(String, String, String)>,
    Body(req): Body<MarkBody>,
) -> Result<Json<Value>, ApiError> {
    require_access(&p, &district, true)?;
    let quarter = parse_quarter(&quarter)?;
    let _lock = s
        .settlement
        .lock(&[&format!("quarter:{district}/{quarter}")])
        .await;
    // One lookup, not a scan of the quarter: marking every receipt of a quarter must stay
    // linear in the number of receipts.
    let mut receipt = {
        let books = s.settlement.read();
        books
            .receipts
            .get(&no)
            .filter(|r| {
                books.charges.get(&r.charge_id).is_some_and(|c| {
                    c.district == district
                        && c.status == ChargeStatus::Confirmed
                        && c.confirmed_at
                            .as_deref()
                            .and_then(|t| parse_timestamp(t).ok())
                            .is_some_and(|t| quarter.contains(t))
                })
            })
            .cloned()
    }
    .ok_or_else(|| ApiError::not_found(format!("no receipt {no} in {district} {quarter}")))?;
    if receipt.paid_round.is_some() {
        return Err(ApiError::conflict("conflict", "this receipt has been paid"));
    }
    receipt.mark = Some(req.status);
    let mark = Mark {
        mark: receipt.mark,
        paid_round: None,
        paid_seq: None,
    };
    s.settlement
        .commit(Vec::new(), vec![record(prefix::MARK, &no, &mark)])
        .await?;
    s.settlement
        .write()
        .receipts
        .insert(no.clone(), receipt.clone());
    Ok(Json(json!({"no": no, "status": receipt_status(&receipt)})))
}

#[utoipa::path(post, path = "/v1/reconciliations/{district}/{quarter}/close",
    responses((status = 200, description = "One payout per provider with matched, unpaid receipts"),
        (status = 409, description = "period_not_ended")))]
async fn close_quarter(
    State(s): State<AppState>,
    p: Principal,
    Path((district, quarter)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_access(&p, &district, true)?;
    let quarter = parse_quarter(&quarter)?;
    if s.now() < quarter.end() {
        return Err(ApiError::conflict(
            "period_not_ended",
            format!("{quarter} has not ended"),
        ));
    }
    let _lock = s
        .settlement
        .lock(&[&format!("quarter:{district}/{quarter}")])
        .await;
    let round_key = format!("{district}/{quarter}");
    let round = s
        .settlement
        .read()
        .quarter_closes
        .get(&round_key)
        .copied()
        .unwrap_or(0)
        + 1;
    let mut due: BTreeMap<String, Vec<Receipt>> = BTreeMap::new();
    let mut amounts: BTreeMap<String, Fen> = BTreeMap::new();
    for (c, r) in quarter_receipts(&s, &district, quarter) {
        if r.mark == Some(Match::Matched) && r.paid_round.is_none() {
            let total = amounts.entry(c.provider_id.clone()).or_insert(Fen::ZERO);
            *total = total
                .checked_add(c.amount)
                .ok_or_else(|| ApiError::internal("payout overflow"))?;
            due.entry(c.provider_id.clone()).or_default().push(r);
        }
    }
    let mut payouts = Vec::new();
    for (provider_id, amount) in &amounts {
        let refs = Refs::from([
            ("quarter".to_string(), quarter.to_string()),
            ("provider".to_string(), provider_id.clone()),
            ("district".to_string(), district.clone()),
        ]);
        let payout = Request::new(
            format!("payout:{district}:{quarter}:{provider_id}:{round}"),
            Command::Payout {
                provider_id: provider_id.clone(),
                district: district.clone(),
                amount: *amount,
                refs,
            },
        );
        // The receipts are marked paid in the same batch as the payout, so a crash can
        // neither pay them twice nor leave them unpaid; the seq is stamped afterwards.
        let receipts = due.remove(provider_id).unwrap_or_default();
        let marks = |seq: Option<u64>| -> Vec<_> {
            receipts
                .iter()
                .map(|r| {
                    record(
                        prefix::MARK,
                        &r.no,
                        &Mark {
                            mark: r.mark,
                            paid_round: Some(round),
                            paid_seq: seq,
                        },
                    )
                })
                .collect()
        };
        let outcome = s.settlement.commit(vec![payout], marks(None)).await?;
        let seq = outcome
            .first()
            .and_then(|o| o.entry.as_ref())
            .map(|e| e.seq)
            .ok_or_else(|| ApiError::internal("a payout wrote no entry"))?;
        s.settlement.commit(Vec::new(), marks(Some(seq))).await?;
        {
            let mut books = s.settlement.write();
            for r in &receipts {
                if let Some(stored) = books.receipts.get_mut(&r.no) {
                    stored.paid_round = Some(round);
                    stored.paid_seq = Some(seq);
                }
            }
        }
        payouts.push(
            json!({"provider_id": provider_id, "amount": amount.to_string(), "entry_seq": seq}),
        );
    }
    s.settlement
        .commit(
            Vec::new(),
            vec![record(prefix::QUARTER_CLOSE, &round_key, &round)],
        )
        .await?;
    s.settlement.write().quarter_closes.insert(round_key, round);
    tracing::info!(%district, %quarter, round, payouts = payouts.len(), "quarter closed");
    Ok(Json(
        json!({"district": district, "quarter": quarter.to_string(), "round": round, "payouts": payouts}),
    ))
}

#[utoipa::path(get, path = "/v1/reconciliations/{district}/{quarter}/statements/{provider}",
    responses((status = 200, description = "The provider's statement as CSV", content_type = "text/csv")))]
async fn statement(
    State(s): State<AppState>,
    p: Principal,
    Path((district, quarter, provider)): Path<(String, String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let provider = provider.trim_end_matches(".csv").to_string();
    if !(p.role == Role::Provider && p.provider.as_deref() == Some(&provider)) {
        require_access(&p, &district, false)?;
    }
    let quarter = parse_quarter(&quarter)?;
    let mut csv =
        String::from("receipt_no,charge_id,confirmed_at,item_code,amount,status,paid_entry_seq\n");
    for (c, r) in quarter_receipts(&s, &district, quarter)
        .into_iter()
        .filter(|(c, _)| c.provider_id == provider)
    {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            r.no,
            c.id,
            c.confirmed_at.unwrap_or_default(),
            c.item_code,
            c.amount,
            receipt_status(&r),
            r.paid_seq.map(|s| s.to_string()).unwrap_or_default()
        ));
    }
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv))
}

//! Month-end issuance, month and year closes, and the period and year reports (city finance).

use crate::app::AppState;
use crate::auth::Principal;
use crate::body::Params;
use crate::error::ApiError;
use crate::registry::{prefix, record, ElderCategory, ElderStatus, PeriodRecord, Role};
use crate::reports::{journal, month_report, year_report};
use axum::extract::{Path, State};
use axum::Json;
use chrono::NaiveDate;
use ledger_core::command::{Command, CommandError, Outcome, Request};
use ledger_core::fiscal::{Month, Year};
use ledger_core::{Fen, Ledger};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Requests per ledger job in bulk runs (issuance, forfeits), and jobs kept in flight.
const BULK_CHUNK: usize = 4096;
const BULK_IN_FLIGHT: usize = 8;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(issue_period))
        .routes(routes!(close_period))
        .routes(routes!(period_report))
        .routes(routes!(close_year))
        .routes(routes!(year_report_endpoint))
}

fn parse_month(text: &str) -> Result<Month, ApiError> {
    text.parse().map_err(|e| ApiError::field("period", e))
}

fn parse_year(text: &str) -> Result<Year, ApiError> {
    text.parse().map_err(|e| ApiError::field("year", e))
}

/// Submits requests in pipelined chunks through the ledger's group commit, logging progress.
async fn submit_bulk(
    ledger: &Arc<Ledger>,
    requests: Vec<Request>,
    what: &str,
) -> Result<Vec<Result<Outcome, CommandError>>, ApiError> {
    let total = requests.len();
    let mut results = Vec::with_capacity(total);
    let mut pending = std::collections::VecDeque::new();
    let mut chunks = requests.into_iter().peekable();
    let mut last_logged = 0;
    loop {
        while pending.len() < BULK_IN_FLIGHT && chunks.peek().is_some() {
            let chunk: Vec<Request> = chunks.by_ref().take(BULK_CHUNK).collect();
            let (tx, rx) = tokio::sync::oneshot::channel();
            ledger.submit_each_with(chunk, move |r| {
                let _ = tx.send(r);
            });
            pending.push_back(rx);
        }
        let Some(rx) = pending.pop_front() else { break };
        results.extend(
            rx.await
                .map_err(|_| ApiError::internal("ledger writer dropped a reply"))?,
        );
        if results.len() - last_logged > total / 10 || results.len() == total {
            last_logged = results.len();
            tracing::info!(what, done = results.len(), total, "progress");
        }
    }
    Ok(results)
}

#[utoipa::path(post, path = "/v1/periods/{period}/issue",
    responses((status = 200, description = "What this call credited"),
        (status = 409, description = "period_not_started, year_closed")))]
async fn issue_period(
    State(s): State<AppState>,
    p: Principal,
    Path(period): Path<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin])?;
    let month = parse_month(&period)?;
    let _jobs = s.jobs.lock().await;
    if s.now() < month.start() {
        return Err(ApiError::conflict(
            "period_not_started",
            format!("{month} has not begun"),
        ));
    }
    if s.ledger.is_year_closed(month.year()) {
        return Err(ApiError::conflict(
            "year_closed",
            format!("fiscal year {} is closed", month.year()),
        ));
    }
    let first_day = month
        .start()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset"))
        .date_naive();
    let requests: Vec<Request> = {
        let data = s.registry.read();
        if data
            .periods
            .get(&month)
            .is_some_and(|r| r.closed_at.is_some())
        {
            return Err(ApiError::conflict("conflict", format!("{month} is closed")));
        }
        let policy = data
            .policy
            .as_ref()
            .ok_or_else(|| ApiError::conflict("conflict", "no monthly-credit policy is set"))?;
        data.elders
            .values()
            .filter(|e| e.status == ElderStatus::Active)
            .filter_map(|e| {
                let birth = NaiveDate::parse_from_str(&e.birth_date, "%Y-%m-%d").ok()?;
                let old_enough = crate::idnumber::age_on(birth, first_day) >= 90;
                let categories: Vec<ElderCategory> = e
                    .categories
                    .iter()
                    .copied()
                    .filter(|c| *c != ElderCategory::Age90Plus || old_enough)
                    .collect();
                let amount = policy.monthly_credit(&categories);
                amount.is_positive().then(|| {
                    Request::new(
                        format!("issue:{}:{month}", e.id),
                        Command::Issue {
                            elder_id: e.id.clone(),
                            district: e.district.clone(),
                            period: month,
                            amount,
                        },
                    )
                })
            })
            .collect()
    };
    let size_before = s.ledger.tree_size();
    tracing::info!(%month, elders = requests.len(), "issuance started");
    let results = submit_bulk(&s.ledger, requests, "issuance").await?;
    let (mut elders, mut total, mut already) = (0u64, Fen::ZERO, 0u64);
    for result in results {
        match result {
            // A new entry (seq at or past the size before this call) is this call's credit;
            // calls are serialised by the jobs lock, so the split is exact.
            Ok(Outcome {
                entry: Some(e),
                amount,
                ..
            }) if e.seq >= size_before => {
                elders += 1;
                total = total
                    .checked_add(amount)
                    .ok_or_else(|| ApiError::internal("issuance total overflow"))?;
            }
            Ok(_) | Err(CommandError::IdempotencyMismatch { .. }) => already += 1,
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(%month, elders, already_issued = already, "issuance finished");
    Ok(Json(json!({"period": month.to_string(), "elders": elders,
        "total": total.to_string(), "already_issued": already})))
}

fn district_lookup(s: &AppState) -> impl Fn(&str) -> Option<String> + '_ {
    move |elder: &str| {
        s.registry
            .read()
            .elders
            .get(elder)
            .map(|e| e.district.clone())
    }
}

async fn build_month_report(s: &AppState, month: Month) -> Result<Value, ApiError> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || {
        let closed_at = s
            .registry
            .read()
            .periods
            .get(&month)
            .and_then(|r| r.closed_at.clone());
        month_report(
            month,
            journal(&s.ledger),
            &district_lookup(&s),
            closed_at.as_deref(),
        )
    })
    .await
    .map_err(ApiError::internal)
}

#[utoipa::path(post, path = "/v1/periods/{period}/close",
    responses((status = 200, description = "The month report"), (status = 409, description = "period_not_ended")))]
async fn close_period(
    State(s): State<AppState>,
    p: Principal,
    Path(period): Path<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin])?;
    let month = parse_month(&period)?;
    let _jobs = s.jobs.lock().await;
    if s.now() < month.end() {
        return Err(ApiError::conflict(
            "period_not_ended",
            format!("{month} has not ended"),
        ));
    }
    let _gate = s.registry.gate().await;
    let already = s
        .registry
        .read()
        .periods
        .get(&month)
        .and_then(|r| r.closed_at.clone());
    if already.is_none() {
        let rec = PeriodRecord {
            closed_at: Some(s.now_text()),
        };
        s.registry
            .persist(vec![record(prefix::PERIOD, &month.to_string(), &rec)])
            .await?;
        s.registry.write().periods.insert(month, rec);
        tracing::info!(%month, "month closed");
    }
    Ok(Json(build_month_report(&s, month).await?))
}

#[utoipa::path(get, path = "/v1/reports/periods/{period}", responses((status = 200, description = "The month report")))]
async fn period_report(
    State(s): State<AppState>,
    p: Principal,
    Path(period): Path<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin, Role::Auditor])?;
    Ok(Json(build_month_report(&s, parse_month(&period)?).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct CloseYearQuery {
    dry_run: Option<bool>,
}

#[utoipa::path(post, path = "/v1/years/{year}/close", params(CloseYearQuery),
    responses((status = 200, description = "What the close did (or would do)"),
        (status = 409, description = "year_not_over")))]
async fn close_year(
    State(s): State<AppState>,
    p: Principal,
    Path(year): Path<String>,
    Params(q): Params<CloseYearQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin])?;
    let year = parse_year(&year)?;
    let _jobs = s.jobs.lock().await;
    if s.now() < year.end() {
        return Err(ApiError::conflict(
            "year_not_over",
            format!("{year} has not ended in UTC+08:00"),
        ));
    }
    let record_key = format!("year/{year}");
    if let Some(done) = s
        .ledger
        .record(record_key.as_bytes())
        .map_err(ApiError::internal)?
    {
        let mut body: Value = serde_json::from_slice(&done).map_err(ApiError::internal)?;
        body["already_closed"] = json!(true);
        return Ok(Json(body));
    }
    let accounts = s.ledger.elder_accounts(year);
    if q.dry_run.unwrap_or(false) {
        let (mut elders, mut total, mut held) = (0u64, Fen::ZERO, 0u64);
        for (_, balance) in &accounts {
            let remaining = balance.posted_credit_balance().unwrap_or(Fen::ZERO);
            if remaining.is_positive() {
                elders += 1;
                total = total
                    .checked_add(remaining)
                    .ok_or_else(|| ApiError::internal("overflow"))?;
            }
            if balance.debits_pending.is_positive() {
                held += 1;
            }
        }
        return Ok(Json(json!({"year": year.to_string(), "elders": elders,
            "forfeited_total": total.to_string(), "voided_holds": held,
            "already_closed": false, "dry_run": true})));
    }
    tracing::info!(%year, accounts = accounts.len(), "year close started");
    // The close and every forfeit go into the journal as one atomic batch: no checkpoint or
    // export can ever show a year half closed, and a crash leaves it wholly undone (rerun:
    // every request has its own idempotency key, so nothing is forfeited twice).
    let mut requests = vec![Request::new(
        format!("close-year:{year}"),
        Command::CloseYear { year },
    )];
    {
        let data = s.registry.read();
        requests.extend(accounts.iter().filter_map(|(account, _)| match account {
            ledger_core::account::AccountId::Elder { elder_id, .. } => {
                let district = data.elders.get(elder_id)?.district.clone();
                Some(Request::new(
                    format!("forfeit:{elder_id}:{year}"),
                    Command::Forfeit {
                        elder_id: elder_id.clone(),
                        district,
                        year,
                    },
                ))
            }
            _ => None,
        }));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.ledger.submit_atomic_with(requests, Vec::new(), move |r| {
        let _ = tx.send(r);
    });
    let mut outcomes = rx
        .await
        .map_err(|_| ApiError::internal("ledger writer dropped a reply"))??
        .into_iter();
    let close = outcomes
        .next()
        .ok_or_else(|| ApiError::internal("no reply to close-year"))?;
    let (mut elders, mut total, mut voided) = (0u64, Fen::ZERO, close.voided_holds);
    for outcome in outcomes {
        voided += outcome.voided_holds;
        if outcome.amount.is_positive() {
            elders += 1;
            total = total
                .checked_add(outcome.amount)
                .ok_or_else(|| ApiError::internal("overflow"))?;
        }
    }
    let body = json!({"year": year.to_string(), "elders": elders,
        "forfeited_total": total.to_string(), "voided_holds": voided, "already_closed": false});
    s.registry
        .persist(vec![(
            record_key.into_bytes(),
            Some(body.to_string().into_bytes()),
        )])
        .await?;
    tracing::info!(%year, elders, "year close finished");
    Ok(Json(body))
}

#[utoipa::path(get, path = "/v1/reports/years/{year}", responses((status = 200, description = "The year report")))]
async fn year_report_endpoint(
    State(s): State<AppState>,
    p: Principal,
    Path(year): Path<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(&[Role::CityAdmin, Role::Auditor])?;
    let year = parse_year(&year)?;
    let s = s.clone();
    let report = tokio::task::spawn_blocking(move || {
        let cards = s
            .registry
            .read()
            .elders
            .values()
            .filter(|e| e.ever_carded)
            .count() as u64;
        year_report(year, journal(&s.ledger), &district_lookup(&s), cards)
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(report))
}

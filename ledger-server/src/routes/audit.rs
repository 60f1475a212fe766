//! Audit endpoints (API.md "Audit"): the public key, a signed checkpoint, the journal export
//! as JSON lines, and RFC 9162 inclusion and consistency proofs.

use crate::app::AppState;
use crate::auth::Principal;
use crate::body::Params;
use crate::error::ApiError;
use crate::registry::Role;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use ledger_core::ledger::EXPORT_PAGE_MAX;
use ledger_core::merkle::MerkleError;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(public_key))
        .routes(routes!(checkpoint))
        .routes(routes!(entries))
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
}

const AUDIT_ROLES: &[Role] = &[Role::Auditor, Role::CityAdmin];

/// A size or index out of range is the caller's (422 on `tree_size`); a journal that cannot
/// give back the entry hashes a proof needs is the server's (500).
fn merkle_error(e: MerkleError) -> ApiError {
    match e {
        MerkleError::EntriesUnreadable { .. } => ApiError::internal(e),
        MerkleError::TreeSizeOutOfRange { .. }
        | MerkleError::LeafIndexOutOfRange { .. }
        | MerkleError::EmptyOldTree
        | MerkleError::OldTreeLarger { .. } => ApiError::field("tree_size", e),
    }
}

#[utoipa::path(get, path = "/v1/audit/public-key", responses((status = 200, description = "The ledger's Ed25519 public key")))]
async fn public_key(State(s): State<AppState>) -> Json<Value> {
    Json(serde_json::to_value(s.ledger.key().public_key_doc()).unwrap_or_default())
}

#[utoipa::path(get, path = "/v1/audit/checkpoint", responses((status = 200, description = "A signed checkpoint of the durable journal")))]
async fn checkpoint(State(s): State<AppState>, p: Principal) -> Result<Json<Value>, ApiError> {
    p.require(AUDIT_ROLES)?;
    Ok(Json(
        serde_json::to_value(s.ledger.checkpoint()).map_err(ApiError::internal)?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct Page {
    from: Option<u64>,
    limit: Option<u64>,
}

#[utoipa::path(get, path = "/v1/audit/entries", params(Page),
    responses((status = 200, description = "JSON lines, one entry each", content_type = "application/x-ndjson")))]
async fn entries(
    State(s): State<AppState>,
    p: Principal,
    Params(page): Params<Page>,
) -> Result<impl IntoResponse, ApiError> {
    p.require(AUDIT_ROLES)?;
    let limit = page.limit.unwrap_or(1000);
    if limit == 0 || limit > EXPORT_PAGE_MAX {
        return Err(ApiError::field("limit", format!("1..={EXPORT_PAGE_MAX}")));
    }
    let ledger = s.ledger.clone();
    let from = page.from.unwrap_or(0);
    let lines = tokio::task::spawn_blocking(move || ledger.entry_lines(from, limit))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let mut body = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        body.extend_from_slice(&line);
        body.push(b'\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct InclusionQuery {
    seq: u64,
    tree_size: u64,
}

#[utoipa::path(get, path = "/v1/audit/proofs/inclusion", params(InclusionQuery),
    responses((status = 200, description = "RFC 9162 inclusion proof")))]
async fn inclusion(
    State(s): State<AppState>,
    p: Principal,
    Params(q): Params<InclusionQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(AUDIT_ROLES)?;
    // A proof may read entry hashes back from the journal: off the async workers.
    let ledger = s.ledger.clone();
    let (seq, size) = (q.seq, q.tree_size);
    let path = tokio::task::spawn_blocking(move || ledger.inclusion_proof(seq, size))
        .await
        .map_err(ApiError::internal)?
        .map_err(merkle_error)?;
    Ok(Json(json!({"leaf_index": q.seq, "tree_size": q.tree_size,
        "path": path.iter().map(hex::encode).collect::<Vec<_>>()})))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

#[utoipa::path(get, path = "/v1/audit/proofs/consistency", params(ConsistencyQuery),
    responses((status = 200, description = "RFC 9162 consistency proof")))]
async fn consistency(
    State(s): State<AppState>,
    p: Principal,
    Params(q): Params<ConsistencyQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(AUDIT_ROLES)?;
    let ledger = s.ledger.clone();
    let (from, to) = (q.from, q.to);
    let path = tokio::task::spawn_blocking(move || ledger.consistency_proof(from, to))
        .await
        .map_err(ApiError::internal)?
        .map_err(merkle_error)?;
    Ok(Json(
        json!({"from": q.from, "to": q.to, "path": path.iter().map(hex::encode).collect::<Vec<_>>()}),
    ))
}

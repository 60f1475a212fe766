//! Request bodies and field validation at the edge: the JSON extractor that answers in our
//! envelope (400 malformed JSON, 413 too large, 422 a field that fails), amounts parsed from
//! wire strings, and bounded strings.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use ledger_core::Fen;
use serde::de::DeserializeOwned;

/// Largest request body accepted (API.md: over 1 MiB → 413).
pub const BODY_BYTES_MAX: usize = 1024 * 1024;
/// Longest free-text field (names, addresses, notes, reasons).
pub const TEXT_LEN_MAX: usize = 200;
/// Longest identifier-like field (ids, codes, serials, streets).
pub const ID_TEXT_LEN_MAX: usize = 64;

pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Body<T>, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(format!("request body is over {BODY_BYTES_MAX} bytes"))
            } else {
                ApiError::bad_request(rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            if e.is_data() {
                ApiError::invalid("invalid_request", e.to_string())
            } else {
                ApiError::bad_request(format!("malformed JSON: {e}"))
            }
        })
    }
}

/// An amount as it arrives: any JSON value, so a number or a bad string becomes 422
/// `invalid_amount` rather than a generic parse error.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[schema(value_type = String, example = "58.50")]
pub struct Amount(pub serde_json::Value);

impl Amount {
    /// A positive amount in fen.
    pub fn positive(&self, field: &str) -> Result<Fen, ApiError> {
        let fen = self.any(field)?;
        if fen.is_positive() {
            Ok(fen)
        } else {
            Err(ApiError::invalid(
                "invalid_amount",
                format!("{field}: must be more than 0"),
            ))
        }
    }

    /// Any non-negative amount.
    pub fn any(&self, field: &str) -> Result<Fen, ApiError> {
        let text = self.0.as_str().ok_or_else(|| {
            ApiError::invalid(
                "invalid_amount",
                format!("{field}: amounts are JSON strings such as \"58.50\""),
            )
        })?;
        Fen::parse_amount(text)
            .map_err(|e| ApiError::invalid("invalid_amount", format!("{field}: {e}")))
    }
}

/// A required string of 1..=max characters (after trimming).
pub fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::field(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(ApiError::field(field, format!("at most {max} characters")));
    }
    Ok(v.to_string())
}

/// An identifier: 1..=max of A-Z a-z 0-9 _ -.
pub fn ident(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(value.to_string())
    } else {
        Err(ApiError::field(
            field,
            format!("1..={max} characters of A-Z, a-z, 0-9, '_' or '-'"),
        ))
    }
}

/// Query parameters, with failures in our envelope (422 naming the parameter).
pub struct Params<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Params<T>, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::invalid("invalid_request", e.body_text()))
    }
}

//! `ApiError`: the one place that picks an HTTP status and a binding error code, and the
//! error envelope `{"error":{"code","message"}}` of API.md "Conventions".

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ledger_core::command::CommandError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra members of the `error` object (e.g. `attempts_left`).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid Authorization: Bearer key is required",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    /// 422 `invalid_request` naming the field.
    pub fn field(field: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError::invalid("invalid_request", format!("{field}: {problem}"))
    }
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    /// A 5xx: the cause is logged with the request id by the caller's span, never returned.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(cause = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log for this request id",
        )
    }
    pub fn with(mut self, key: &str, value: serde_json::Value) -> ApiError {
        self.extra.insert(key.to_string(), value);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = self.extra;
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        (
            self.status,
            axum::Json(serde_json::json!({ "error": error })),
        )
            .into_response()
    }
}

/// Every core error has its answer here; no wildcard arm, so a new core variant forces a
/// decision.
impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        match e {
            CommandError::InvalidRequest(m) => ApiError::invalid("invalid_request", m),
            CommandError::InvalidId(e) => ApiError::invalid("invalid_request", e.to_string()),
            CommandError::NonPositiveAmount(_) => {
                ApiError::invalid("invalid_amount", "amount must be positive")
            }
            CommandError::UnknownAccount(a) => ApiError::not_found(format!("no account {a}")),
            CommandError::InsufficientCredit {
                available,
                requested,
            } => ApiError::conflict(
                "insufficient_credit",
                format!("available credit {available} is less than {requested}"),
            ),
            CommandError::UnknownHold(h) => ApiError::not_found(format!("no hold {h}")),
            CommandError::HoldExists { hold_id } => {
                ApiError::conflict("conflict", format!("hold {hold_id} already exists"))
            }
            CommandError::HoldNotPending { hold_id, state } => ApiError::conflict(
                "charge_not_pending",
                format!("{hold_id} is {state:?}, not pending"),
            ),
            CommandError::NotRefundable { hold_id, state } => ApiError::conflict(
                "conflict",
                format!("{hold_id} is {state:?}; only a confirmed charge can be refunded"),
            ),
            CommandError::YearClosed(y) => {
                ApiError::conflict("year_closed", format!("fiscal year {y} is closed"))
            }
            CommandError::YearOpen(y) => {
                ApiError::conflict("conflict", format!("fiscal year {y} is not closed"))
            }
            CommandError::Overflow => ApiError::invalid("invalid_amount", "amount too large"),
            CommandError::IdempotencyMismatch { key } => ApiError::conflict(
                "idempotency_mismatch",
                format!("idempotency key {key:?} was used with another request"),
            ),
            CommandError::Storage(cause) => ApiError::internal(cause),
            CommandError::Stopped => ApiError::internal("ledger writer stopped"),
        }
    }
}

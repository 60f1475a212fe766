//! `LedgerClient`: the calls of API.md "Orders" and "Charges" a provider terminal makes, over
//! blocking HTTP with timeouts and bounded retries. Only requests that are safe to repeat are
//! retried on their own (reads, and a charge, whose Idempotency-Key makes a repeat return the
//! first answer); confirm and resend are sent once, and the caller reconciles from a read.

use crate::messages::explain;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Tries per request that is safe to repeat, and the first pause between them (doubling).
pub const NETWORK_ATTEMPTS_MAX: u32 = 4;
pub const BACKOFF_FIRST: Duration = Duration::from_millis(300);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15);

/// The terminal's bearer key. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> ApiKey {
        ApiKey(key)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

/// An error answer of the server: status and the binding `error` object.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// `error.attempts_left` of `code_invalid`.
    pub attempts_left: Option<u32>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let explanation = explain(&self.code).unwrap_or("服务器拒绝 / the server refused");
        write!(
            f,
            "{explanation} [{} {}: {}]",
            self.status, self.code, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("无法连接服务器 / cannot reach the ledger server at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    #[error("服务器应答异常 / unexpected answer from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The binding code, when the server refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused(r) => Some(&r.code),
            _ => None,
        }
    }
}

/// `GET /v1/orders/{id}`, the fields the terminal shows.
#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub id: String,
    pub elder_id: String,
    pub item_code: String,
    pub provider_id: String,
    pub status: String,
    #[serde(default)]
    pub price: Option<String>,
    #[serde(default)]
    pub charge_id: Option<String>,
}

/// The body of `POST /v1/charges`; a retry sends these very bytes again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    pub order_id: String,
    pub card_uid: String,
    pub amount: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub staff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub challenge: Option<String>,
}

/// The 201 of `POST /v1/charges` (also what a replay of its key returns).
#[derive(Debug, Clone, Deserialize)]
pub struct PlacedCharge {
    pub id: String,
    pub challenge: String,
    pub expires_at: String,
    pub attempts_left: u32,
    pub amount: String,
    #[serde(default)]
    pub phone_hint: Option<String>,
    #[serde(default)]
    pub sms_status: Option<String>,
}

/// `GET /v1/charges/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Charge {
    pub id: String,
    pub status: String,
    pub challenge: String,
    pub expires_at: String,
    pub attempts_left: u32,
    pub amount: String,
    #[serde(default)]
    pub receipt_no: Option<String>,
    #[serde(default)]
    pub sms_status: Option<String>,
}

/// A receipt, as confirm and `GET /v1/receipts/{no}` give it.
#[derive(Debug, Clone, Deserialize)]
pub struct Receipt {
    pub no: String,
    pub charge_id: String,
    pub order_id: String,
    pub provider_id: String,
    pub item_code: String,
    pub amount: String,
    pub confirmed_at: String,
    pub qr: String,
}

#[derive(Deserialize)]
struct Confirmed {
    receipt: Receipt,
}

/// Whether a request may be sent again after a network error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Safe,
    Once,
}

pub struct LedgerClient {
    base: String,
    key: ApiKey,
    http: reqwest::blocking::Client,
}

impl LedgerClient {
    pub fn new(server: &str, key: ApiKey, timeout: Duration) -> Result<LedgerClient, ClientError> {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .user_agent(concat!("card-reader/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Protocol(format!("HTTP client: {e}")))?;
        Ok(LedgerClient {
            base: server.trim_end_matches('/').to_string(),
            key,
            http,
        })
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    pub fn order(&self, id: &str) -> Result<Order, ClientError> {
        self.call("GET", &format!("/v1/orders/{id}"), None, None, Repeat::Safe)
    }

    /// Places the hold. The key makes any repeat (ours after a network error, or `resume`
    /// after a crash) return the first answer rather than charge twice.
    pub fn create_charge(
        &self,
        idempotency_key: &str,
        request: &ChargeRequest,
    ) -> Result<PlacedCharge, ClientError> {
        let body = serde_json::to_value(request)
            .map_err(|e| ClientError::Protocol(format!("charge body: {e}")))?;
        self.call(
            "POST",
            "/v1/charges",
            Some(&body),
            Some(idempotency_key),
            Repeat::Safe,
        )
    }

    pub fn charge(&self, id: &str) -> Result<Charge, ClientError> {
        self.call(
            "GET",
            &format!("/v1/charges/{id}"),
            None,
            None,
            Repeat::Safe,
        )
    }

    /// Sent once: a repeat of a wrong code would burn a second attempt.
    pub fn confirm(&self, id: &str, code: &str) -> Result<Receipt, ClientError> {
        let body = serde_json::json!({ "code": code });
        let confirmed: Confirmed = self.call(
            "POST",
            &format!("/v1/charges/{id}/confirm"),
            Some(&body),
            None,
            Repeat::Once,
        )?;
        Ok(confirmed.receipt)
    }

    /// Sent once: a repeat would send the elder a second SMS.
    pub fn resend(&self, id: &str) -> Result<Charge, ClientError> {
        self.call(
            "POST",
            &format!("/v1/charges/{id}/resend"),
            Some(&serde_json::json!({})),
            None,
            Repeat::Once,
        )
    }

    /// A repeat is harmless: the second cancel of a voided charge is `charge_not_pending`.
    pub fn cancel(&self, id: &str) -> Result<(), ClientError> {
        let _: Value = self.call(
            "POST",
            &format!("/v1/charges/{id}/cancel"),
            Some(&serde_json::json!({})),
            None,
            Repeat::Safe,
        )?;
        Ok(())
    }

    pub fn receipt(&self, no: &str) -> Result<Receipt, ClientError> {
        self.call(
            "GET",
            &format!("/v1/receipts/{no}"),
            None,
            None,
            Repeat::Safe,
        )
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        repeat: Repeat,
    ) -> Result<T, ClientError> {
        let attempts = match repeat {
            Repeat::Safe => NETWORK_ATTEMPTS_MAX,
            Repeat::Once => 1,
        };
        let mut pause = BACKOFF_FIRST;
        let mut attempt = 1;
        loop {
            match self.send(method, path, body, idempotency_key) {
                Err(e) if attempt < attempts && retryable(&e) => {
                    std::thread::sleep(pause);
                    pause = pause.saturating_mul(2);
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok(value) => {
                    return serde_json::from_value(value)
                        .map_err(|e| ClientError::Protocol(format!("{method} {path}: {e}")))
                }
            }
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key.0);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            server: self.base.clone(),
            cause: cause_chain(&e),
        };
        let response = request.send().map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.text().map_err(unreachable)?;
        let success = (200..300).contains(&status);
        let value: Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            // A proxy's error page: a refusal without a code (retried when 502..=504).
            Err(_) if !success => Value::Null,
            Err(_) => {
                return Err(ClientError::Protocol(format!(
                    "HTTP {status}, not JSON: {}",
                    clip(&text)
                )))
            }
        };
        if success {
            return Ok(value);
        }
        let error = &value["error"];
        Err(ClientError::Refused(Refusal {
            status,
            code: error["code"].as_str().unwrap_or("").to_string(),
            message: error["message"]
                .as_str()
                .map_or_else(|| clip(&text), str::to_string),
            attempts_left: error["attempts_left"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok()),
        }))
    }
}

/// Network failures and a gateway's 502/503/504 may pass; a refusal by the ledger will not.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } => true,
        ClientError::Refused(r) => matches!(r.status, 502..=504),
        ClientError::Protocol(_) => false,
    }
}

/// reqwest's error with its causes ("error sending request: connection refused").
fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// At most 200 characters of a body, for a message.
fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

//! `--sms https://URL` (or `http://` on a loopback host, for tests): one JSON POST per
//! message, `{"to","text","charge_id","sent_at"}`, signed with header
//! `X-Ledger-Signature: sha256=<hex HMAC-SHA256 of the body>` keyed by env
//! `LEDGER_SMS_HMAC_KEY` (API.md "Commands"). Any 2xx means accepted. A connect failure, a
//! timeout, 429 or 5xx is tried again (at most [`ATTEMPTS_MAX`] times, with doubling backoff,
//! all inside [`super::SEND_TIMEOUT`]); any other answer is final. Every attempt carries the
//! same `Idempotency-Key: {charge_id}:{sent_at}`, so a gateway can drop the duplicate an
//! attempt that timed out after it was accepted would otherwise cause.

use super::{SendFuture, SmsError, SmsMessage, SmsSender, QUEUE_CAPACITY};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The env var holding the HMAC key (its UTF-8 bytes are the key).
pub const KEY_ENV: &str = "LEDGER_SMS_HMAC_KEY";
pub const SIGNATURE_HEADER: &str = "X-Ledger-Signature";
/// Attempts per message, and how long each may take (connect included).
pub const ATTEMPTS_MAX: u32 = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait before the second attempt; doubled before each later one.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);

pub struct HttpSender {
    url: reqwest::Url,
    key: ring::hmac::Key,
    client: reqwest::Client,
    queue: Arc<Semaphore>,
}

/// `sha256=<hex>` of the body.
pub fn signature(key: &ring::hmac::Key, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(key, body).as_ref())
    )
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl HttpSender {
    pub fn from_url(flag: &str, key: &[u8]) -> anyhow::Result<HttpSender> {
        let url = reqwest::Url::parse(flag).context("--sms: not a URL")?;
        if url.scheme() == "http" && !is_loopback(&url) {
            anyhow::bail!("--sms http:// is for loopback test gateways only; use https://");
        }
        if key.is_empty() {
            anyhow::bail!(
                "--sms {}: env {KEY_ENV} must hold the gateway's HMAC key",
                url.scheme()
            );
        }
        // Redirects are not followed: the signed message goes to the configured gateway or
        // nowhere.
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client")?;
        Ok(HttpSender {
            url,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            client,
            queue: Arc::new(Semaphore::new(QUEUE_CAPACITY)),
        })
    }

    /// One POST. `Err((retry, why))`.
    async fn attempt(&self, body: &[u8], sig: &str, idem: &str) -> Result<(), (bool, String)> {
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sig)
            .header("Idempotency-Key", idem)
            .body(body.to_vec())
            .send()
            .await
            // Without the URL: an error's text would otherwise carry it (and any credentials).
            .map_err(|e| (true, e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let retry =
                status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
            Err((retry, format!("HTTP {status}")))
        }
    }

    async fn deliver(&self, message: SmsMessage) -> Result<(), SmsError> {
        let _slot = self
            .queue
            .clone()
            .try_acquire_owned()
            .map_err(|_| SmsError::QueueFull)?;
        let body = serde_json::to_vec(&message).expect("an SMS message serialises");
        let sig = signature(&self.key, &body);
        let idem = format!("{}:{}", message.charge_id, message.sent_at);
        let mut backoff = BACKOFF_FIRST;
        let mut attempt = 1;
        loop {
            match self.attempt(&body, &sig, &idem).await {
                Ok(()) => return Ok(()),
                Err((false, why)) => return Err(SmsError::Rejected(why)),
                Err((true, why)) if attempt >= ATTEMPTS_MAX => {
                    return Err(SmsError::Unavailable(format!(
                        "{why} (after {ATTEMPTS_MAX} attempts)"
                    )))
                }
                Err((true, why)) => {
                    tracing::warn!(charge = %message.charge_id, attempt, error = %why,
                        "SMS gateway attempt failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

impl SmsSender for HttpSender {
    fn send(&self, message: SmsMessage) -> SendFuture<'_> {
        Box::pin(self.deliver(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn plain_http_only_on_loopback_and_a_key_is_required() {
        for ok in [
            "http://127.0.0.1:9/sms",
            "http://localhost/sms",
            "http://[::1]:80/",
            "https://sms.example.org/send",
        ] {
            assert!(HttpSender::from_url(ok, b"k").is_ok(), "{ok}");
        }
        assert!(HttpSender::from_url("http://sms.example.org/send", b"k").is_err());
        assert!(HttpSender::from_url("http://10.0.0.1/send", b"k").is_err());
        assert!(HttpSender::from_url("https://sms.example.org/send", b"").is_err());
    }
}

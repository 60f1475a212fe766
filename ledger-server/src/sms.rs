//! SMS delivery behind one trait, so the outbox file (development, tests) and the real
//! gateways (an SMPP 3.4 session, an HTTP gateway: issue 7) are interchangeable. Sending
//! happens after the hold is durable and never inside a storage batch; a failed send leaves
//! the hold in place and shows as `sms_status: failed`, so the terminal can resend or switch to
//! the token. The code travels only inside [`SmsMessage::text`], which no log line prints.
//!
//! How a send's result reaches the charge: `routes::charges::send_code` awaits
//! [`SmsSender::send`] for at most [`SEND_TIMEOUT`] and records `sent` or `failed`. A sender
//! that learns later whether the phone got the message (the SMPP session's delivery receipts)
//! hands out a channel of [`DeliveryReport`]s from [`SmsSender::start`]; [`delivery::start`]
//! drains it and records `delivered` (or `failed`) on the charge through the settlement books.

pub mod delivery;
mod http;
mod metrics;
mod smpp;

use serde::Serialize;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub use metrics::SmsMetrics;

/// Longest a send may take before it counts as failed: the charge request waits this long
/// at most, whatever the gateway does.
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Messages a gateway sender holds at once (waiting for the link or in flight); one more is
/// refused at once as [`SmsError::QueueFull`], so a stalled SMS centre costs memory and
/// waiting requests only up to this bound.
pub const QUEUE_CAPACITY: usize = 256;
/// Delivery reports waiting for the drain; past this a report is dropped (and counted).
pub const REPORTS_CAPACITY: usize = 1024;

/// One SMS. `Debug` leaves out the number and the text: the text carries the code.
#[derive(Clone, Serialize)]
pub struct SmsMessage {
    pub to: String,
    pub text: String,
    pub charge_id: String,
    pub sent_at: String,
}

impl std::fmt::Debug for SmsMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsMessage")
            .field("charge_id", &self.charge_id)
            .field("sent_at", &self.sent_at)
            .finish_non_exhaustive()
    }
}

/// Why a send failed. No variant carries the message text.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    #[error("outbox write failed: {0}")]
    Outbox(#[from] std::io::Error),
    #[error("the SMS queue is full ({QUEUE_CAPACITY} messages waiting or in flight)")]
    QueueFull,
    #[error("the SMS gateway is unreachable: {0}")]
    Unavailable(String),
    #[error("the SMS gateway refused the message: {0}")]
    Rejected(String),
    #[error("the message cannot be encoded for the gateway: {0}")]
    Encoding(String),
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>>;

/// What became of a message the gateway accepted, as its delivery receipt says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The phone has it (SMPP `stat:DELIVRD`).
    Delivered,
    /// The SMS centre gave up (`UNDELIV`, `EXPIRED`, `REJECTD`, `DELETED`).
    Undelivered,
}

/// A delivery receipt matched to the SMS it is about: the charge and the `sent_at` of that
/// SMS (a receipt for an SMS a resend has since replaced changes nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    pub charge_id: String,
    pub sent_at: String,
    pub delivery: Delivery,
}

pub type DeliveryReports = tokio::sync::mpsc::Receiver<DeliveryReport>;

pub trait SmsSender: Send + Sync {
    /// Hands one message to the gateway; `Ok` once the gateway has accepted it.
    fn send(&self, message: SmsMessage) -> SendFuture<'_>;

    /// Starts the sender's background work (an SMPP session and its keep-alive) on the
    /// current tokio runtime, and hands over its delivery reports the first time it is
    /// called. `None` for senders that learn nothing after the send (outbox, HTTP).
    fn start(&self) -> Option<DeliveryReports> {
        None
    }

    /// Counters for the health endpoint, when the sender keeps them.
    fn metrics(&self) -> Option<SmsMetrics> {
        None
    }
}

/// The sender `--sms FLAG` names (API.md "Commands"), counted by [`metrics::Metered`]:
/// `outbox`, `smpp://USER:PASSWORD@HOST:PORT?source=ADDR`, `https://URL`, or `http://URL` on
/// a loopback host. The HTTP gateway's key comes from env `LEDGER_SMS_HMAC_KEY`.
pub fn sender_from_flag(flag: &str, data_dir: &Path) -> anyhow::Result<Arc<dyn SmsSender>> {
    if flag == "outbox" {
        return Ok(Arc::new(metrics::Metered::new(
            "outbox",
            Outbox::new(data_dir),
        )));
    }
    if flag.starts_with("smpp://") {
        let sender = smpp::SmppSender::from_url(flag)?;
        return Ok(Arc::new(metrics::Metered::new("smpp", sender)));
    }
    if flag.starts_with("https://") || flag.starts_with("http://") {
        let key = std::env::var(http::KEY_ENV).unwrap_or_default();
        let sender = http::HttpSender::from_url(flag, key.as_bytes())?;
        return Ok(Arc::new(metrics::Metered::new("http", sender)));
    }
    anyhow::bail!(
        "--sms: expected `outbox`, `smpp://USER:PASSWORD@HOST:PORT?source=ADDR` or `https://URL`"
    )
}

/// Starts the server's sender and the drain of its delivery reports (call once, inside the
/// runtime, before serving).
pub fn start(state: &crate::app::AppState) {
    delivery::start(state);
}

/// Turns off the PDU dumps of the SMPP codec (it logs whole submit_sm PDUs at debug level,
/// and their short_message carries the code), whatever `RUST_LOG` says.
pub fn quiet_pdu_logs(filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    filter.add_directive(
        "rusmpp::codec=off"
            .parse()
            .expect("a constant, well-formed filter directive"),
    )
}

/// `--sms outbox`: one JSON line per message in `DIR/sms-outbox.jsonl` (API.md).
pub struct Outbox {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl Outbox {
    pub fn new(data_dir: &Path) -> Outbox {
        Outbox {
            path: data_dir.join("sms-outbox.jsonl"),
            file: Mutex::new(None),
        }
    }

    fn append(&self, message: &SmsMessage) -> Result<(), SmsError> {
        let mut line = serde_json::to_vec(message).expect("an SMS message serialises");
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let file = guard.as_mut().expect("opened just above");
        file.write_all(&line)?;
        file.flush()?;
        Ok(())
    }
}

impl SmsSender for Outbox {
    fn send(&self, message: SmsMessage) -> SendFuture<'_> {
        Box::pin(async move { self.append(&message) })
    }
}

/// The SMS text: names the provider and the amount, carries the code after `验证码：`, and
/// says how long the code is good for: the time left on the hold, in whole minutes rounded
/// up (a resend late in the hold has less than the full `--hold-ttl`).
pub fn charge_text(provider_name: &str, amount: &str, code: &str, valid_secs: i64) -> String {
    let minutes = (valid_secs.max(1) + 59) / 60;
    format!("【居家养老】{provider_name}本次服务收费{amount}元，验证码：{code}。确认服务已完成后再告知服务人员，{minutes}分钟内有效。")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_payee_amount_and_code() {
        let t = charge_text("长安居家养老服务中心", "58.50", "012345", 600);
        assert!(
            t.contains("长安居家养老服务中心")
                && t.contains("58.50")
                && t.contains("验证码：012345")
        );
        assert!(t.contains("10分钟内有效"), "{t}");
        assert!(charge_text("P", "1.00", "000000", 61).contains("2分钟内有效"));
        assert!(charge_text("P", "1.00", "000000", 0).contains("1分钟内有效"));
    }

    #[test]
    fn debug_leaves_out_number_and_text() {
        let m = SmsMessage {
            to: "13812345678".into(),
            text: charge_text("P", "1.00", "987654", 600),
            charge_id: "C00000001".into(),
            sent_at: "2026-01-01T00:00:00Z".into(),
        };
        let shown = format!("{m:?}");
        assert!(shown.contains("C00000001"), "{shown}");
        assert!(
            !shown.contains("987654") && !shown.contains("13812345678"),
            "{shown}"
        );
    }

    #[test]
    fn flags_choose_the_sender_and_refuse_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = sender_from_flag("outbox", dir.path()).unwrap();
        assert_eq!(outbox.metrics().unwrap().sender, "outbox");
        let smpp = sender_from_flag("smpp://u:p@127.0.0.1:2775?source=10690001", dir.path());
        assert_eq!(smpp.unwrap().metrics().unwrap().sender, "smpp");
        for bad in ["file:///x", "smtp://a", "", "OUTBOX"] {
            assert!(sender_from_flag(bad, dir.path()).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn outbox_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path());
        for n in 0..2 {
            outbox
                .send(SmsMessage {
                    to: "13812345678".into(),
                    text: format!("t{n}"),
                    charge_id: "C1".into(),
                    sent_at: "2026-01-01T00:00:00Z".into(),
                })
                .await
                .unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join("sms-outbox.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["text"], "t1");
        assert_eq!(lines[0]["charge_id"], "C1");
    }
}

//! SMS delivery behind one trait, so the outbox file (development, tests) and real gateways
//! (SMPP, HTTP: a later issue) are interchangeable. Sending happens after the hold is durable
//! and never inside a storage batch; a failed send leaves the hold in place and shows as
//! `sms_status: failed`, so the terminal can resend or switch to the token.

use serde::Serialize;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;

/// Longest a send may take before it counts as failed.
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct SmsMessage {
    pub to: String,
    pub text: String,
    pub charge_id: String,
    pub sent_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    #[error("outbox write failed: {0}")]
    Outbox(#[from] std::io::Error),
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>>;

pub trait SmsSender: Send + Sync {
    fn send(&self, message: SmsMessage) -> SendFuture<'_>;
}

/// `--sms outbox`: one JSON line per message in `DIR/sms-outbox.jsonl` (API.md).
pub struct Outbox {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl Outbox {
    pub fn new(data_dir: &std::path::Path) -> Outbox {
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

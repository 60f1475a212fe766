//! Reading SMS codes back from `DIR/sms-outbox.jsonl` (API.md "Commands", `--sms outbox`),
//! as a phone would receive them. The file is tailed: one open handle, each byte read once,
//! complete lines parsed into a map by charge id that the terminals take their codes from.
//! The server appends a charge's SMS before it answers the charge's creation, so a code
//! missing after a fresh read is an error, not a race.

use anyhow::Context;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;

/// Digits of an SMS code.
const CODE_DIGITS: usize = 6;

/// One SMS as a phone sees it: the number it reached and the code it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sms {
    pub to: String,
    pub code: String,
}

#[derive(Deserialize)]
struct Line {
    to: String,
    text: String,
    charge_id: String,
}

#[derive(Default)]
struct Tail {
    file: Option<std::fs::File>,
    /// An incomplete last line, kept until its newline arrives.
    partial: Vec<u8>,
    /// Charge id → its latest SMS, until a terminal takes it.
    unread: HashMap<String, Sms>,
}

pub struct Outbox {
    path: PathBuf,
    tail: Mutex<Tail>,
}

/// The code after `验证码`, past an optional `:`, `：` or space.
pub fn code_in(text: &str) -> Option<String> {
    let after = text.split("验证码").nth(1)?;
    let digits: String = after
        .trim_start_matches([':', '：', ' '])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (digits.len() == CODE_DIGITS).then_some(digits)
}

impl Outbox {
    pub fn new(data_dir: &std::path::Path) -> Outbox {
        Outbox {
            path: data_dir.join("sms-outbox.jsonl"),
            tail: Mutex::new(Tail::default()),
        }
    }

    /// The SMS sent for `charge_id` (taken: a second call for it finds none).
    pub fn take(&self, charge_id: &str) -> anyhow::Result<Sms> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sms) = tail.unread.remove(charge_id) {
            return Ok(sms);
        }
        tail.read_new(&self.path)?;
        tail.unread
            .remove(charge_id)
            .with_context(|| format!("no SMS for charge {charge_id} in {}", self.path.display()))
    }
}

impl Tail {
    fn read_new(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        if self.file.is_none() {
            match std::fs::File::open(path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            }
        }
        let file = self.file.as_mut().expect("opened just above");
        file.read_to_end(&mut self.partial)
            .with_context(|| format!("reading {}", path.display()))?;
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let rest = self.partial.split_off(end + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        for line in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line: Line = serde_json::from_slice(line)
                .with_context(|| format!("a line of {} is not an SMS record", path.display()))?;
            let code = code_in(&line.text).with_context(|| {
                format!("the SMS for charge {} carries no code", line.charge_id)
            })?;
            self.unread
                .insert(line.charge_id, Sms { to: line.to, code });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn codes_follow_the_marker() {
        assert_eq!(code_in("…验证码：012345。").as_deref(), Some("012345"));
        assert_eq!(code_in("验证码: 987654").as_deref(), Some("987654"));
        assert_eq!(code_in("验证码12345"), None);
        assert_eq!(code_in("no code"), None);
    }

    #[test]
    fn tails_the_file_across_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path());
        assert!(outbox.take("C1").is_err(), "no file yet");
        let mut f = std::fs::File::create(dir.path().join("sms-outbox.jsonl")).unwrap();
        let line = |id: &str, code: &str| {
            format!("{{\"to\":\"13900000000\",\"text\":\"验证码：{code}\",\"charge_id\":\"{id}\",\"sent_at\":\"x\"}}\n")
        };
        let second = line("C2", "222222");
        write!(f, "{}{}", line("C1", "111111"), &second[..10]).unwrap();
        f.flush().unwrap();
        assert_eq!(outbox.take("C1").unwrap().code, "111111");
        assert!(outbox.take("C2").is_err(), "half a line is not an SMS yet");
        write!(f, "{}", &second[10..]).unwrap();
        f.flush().unwrap();
        let sms = outbox.take("C2").unwrap();
        assert_eq!(
            (sms.to.as_str(), sms.code.as_str()),
            ("13900000000", "222222")
        );
        assert!(outbox.take("C1").is_err(), "taken once");
    }
}

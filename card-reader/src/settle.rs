//! The settlement flow at the door (API.md "Charges"): show the order, read the card, place the
//! charge under a fresh Idempotency-Key (journalled first), tell the worker where the code
//! comes from, take codes until one confirms, and print the receipt. `resume` finishes or
//! cancels a swipe the journal still holds, repeating the charge request under its key.
//!
//! All talk with the worker goes through `Console`, so the same flow serves a terminal (stdin
//! and stderr), a test (piped), or a phone app's own screen.

use crate::amount::Amount;
use crate::api::{ChargeRequest, ClientError, LedgerClient, Order, PlacedCharge, Receipt};
use crate::card::{CardError, CardSource};
use crate::journal::{now_text, Event, Journal, JournalError, Outcome, Pending};
use crate::receipt;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

/// Random bytes in an Idempotency-Key (128 bits: no two swipes ever share one).
const KEY_RANDOM_BYTES: usize = 16;

/// The worker's side of the conversation.
pub trait Console {
    /// A line of news for the worker (stderr on a terminal).
    fn say(&mut self, line: &str);
    /// Asks and reads one line; `None` when input has ended.
    fn ask(&mut self, prompt: &str) -> Option<String>;
    /// The result to keep: the receipt (stdout on a terminal).
    fn print(&mut self, text: &str);
}

/// stderr for news and prompts, stdin for answers, stdout for the receipt.
pub struct StdConsole;

impl Console for StdConsole {
    fn say(&mut self, line: &str) {
        eprintln!("{line}");
    }

    fn ask(&mut self, prompt: &str) -> Option<String> {
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "{prompt}");
        let _ = stderr.flush();
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line);
        // Piped answers are not echoed: end the prompt's line so logs stay one line each.
        if !std::io::stdin().is_terminal() {
            let _ = writeln!(stderr);
        }
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_string()),
        }
    }

    fn print(&mut self, text: &str) {
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }
}

/// Which second factor a terminal asks for; `None` lets the server choose (SMS when the
/// elder has a phone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Sms,
    Token,
}

impl Challenge {
    fn wire(self) -> &'static str {
        match self {
            Challenge::Sms => "sms",
            Challenge::Token => "token",
        }
    }
}

/// What the worker asked for.
pub struct SwipeRequest {
    pub order_id: String,
    /// The order's agreed price when `None`.
    pub amount: Option<Amount>,
    pub challenge: Option<Challenge>,
    pub staff: Option<String>,
    /// How long to wait for the card.
    pub wait: Duration,
    /// Skip the "charge N yuan?" question.
    pub assume_yes: bool,
}

/// How a swipe ended.
#[derive(Debug)]
pub enum Finish {
    Confirmed(Box<Receipt>),
    Cancelled,
    /// Voided (too many wrong codes), expired, refunded, or never placed.
    Ended(Outcome),
    /// Left pending (input ended, or the network dropped): `card-reader resume` finishes it.
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("{0}")]
    Card(#[from] CardError),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Journal(#[from] JournalError),
    #[error("订单 {id} 当前状态为 {status}，不能收费 / order {id} is {status}: only an agreed order can be charged")]
    OrderNotAgreed { id: String, status: String },
    #[error(
        "订单 {0} 没有议定价格，请用 --amount 指定 / order {0} has no agreed price: give --amount"
    )]
    NoPrice(String),
    #[error("{0}")]
    Amount(#[from] crate::amount::AmountError),
    #[error("已取消，未收费 / stopped by the worker: nothing was charged")]
    Declined,
    #[error("随机数生成失败 / the system random generator failed")]
    Random,
    /// A missing or malformed setting (server, key, journal, card UID).
    #[error("{0}")]
    Setup(String),
}

/// A new Idempotency-Key for one swipe: `cr-` and 32 hex digits from the OS CSPRNG.
pub fn new_idempotency_key() -> Result<String, SettleError> {
    let mut bytes = [0u8; KEY_RANDOM_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SettleError::Random)?;
    Ok(format!("cr-{}", hex::encode(bytes)))
}

pub struct Terminal<'a, C: Console> {
    pub client: &'a LedgerClient,
    pub journal: &'a Journal,
    pub console: &'a mut C,
    /// Codes given up front (`--code`), tried before asking.
    pub codes: VecDeque<String>,
}

impl<C: Console> Terminal<'_, C> {
    /// Shows the order and returns it.
    pub fn show_order(&mut self, order_id: &str) -> Result<Order, SettleError> {
        let order = self.client.order(order_id)?;
        self.console.say(&format!(
            "订单 Order {}: 老人 elder {}, 项目 item {}, 服务商 provider {}, 状态 status {}, 议定价 agreed price {}",
            order.id,
            order.elder_id,
            order.item_code,
            order.provider_id,
            order.status,
            order.price.as_deref().map_or("-".to_string(), |p| format!("{p} 元")),
        ));
        Ok(order)
    }

    /// A whole swipe: order, card, charge, code, receipt.
    pub fn charge(
        &mut self,
        swipe: &SwipeRequest,
        card: &mut dyn CardSource,
    ) -> Result<Finish, SettleError> {
        let order = self.show_order(&swipe.order_id)?;
        if order.status != "agreed" {
            return Err(SettleError::OrderNotAgreed {
                id: order.id,
                status: order.status,
            });
        }
        let amount = match (swipe.amount, order.price.as_deref()) {
            (Some(amount), _) => amount,
            (None, Some(price)) => price.parse()?,
            (None, None) => return Err(SettleError::NoPrice(order.id)),
        };
        if !swipe.assume_yes {
            let question = format!(
                "确认收费 {amount} 元？/ Charge {amount} yuan for order {}? [y/N] ",
                order.id
            );
            let answer = self.console.ask(&question).unwrap_or_default();
            if !matches!(answer.to_lowercase().as_str(), "y" | "yes" | "是") {
                return Err(SettleError::Declined);
            }
        }
        if card.waits_for_card() {
            self.console.say(&format!(
                "请将老人的卡放在读卡器上 / hold the elder's card on the reader (up to {} s)…",
                swipe.wait.as_secs()
            ));
        }
        let uid = card.read_uid(swipe.wait)?;
        self.console.say(&format!("卡号 Card UID {uid}"));
        let request = ChargeRequest {
            order_id: order.id.clone(),
            card_uid: uid.to_string(),
            amount: amount.to_string(),
            staff: swipe.staff.clone(),
            challenge: swipe.challenge.map(|c| c.wire().to_string()),
        };
        let key = new_idempotency_key()?;
        // Written and fsync'd before the request leaves: whatever happens to the answer, the
        // swipe can be finished or cancelled under this very key.
        self.journal.append(&Event::Started {
            key: key.clone(),
            at: now_text(),
            request: request.clone(),
        })?;
        let placed = match self.client.create_charge(&key, &request) {
            Ok(placed) => placed,
            Err(ClientError::Refused(refusal)) if refusal.status < 500 => {
                self.finish(&key, Outcome::Refused, None, None)?;
                return Err(ClientError::Refused(refusal).into());
            }
            // A server error may come after the hold was placed: keep the swipe to resume.
            Err(e) => {
                self.say_interrupted(&e.to_string(), None);
                return Ok(Finish::Interrupted);
            }
        };
        self.placed(&key, &placed.id)?;
        self.take_codes(&key, &placed)
    }

    /// Finishes (or with `cancel`, cancels) a swipe the journal still holds.
    pub fn resume(&mut self, pending: &Pending, cancel: bool) -> Result<Finish, SettleError> {
        let request = &pending.request;
        self.console.say(&format!(
            "继续未完成的刷卡 / resuming the swipe of {}: order {}, card {}, {} 元 (key {})",
            pending.started_at, request.order_id, request.card_uid, request.amount, pending.key
        ));
        if cancel && pending.charge_id.is_none() {
            // Nothing to cancel if the order never got a charge: don't place one to void it.
            let order = self.client.order(&request.order_id)?;
            if order.charge_id.is_none() {
                return self.never_placed(&pending.key);
            }
        }
        // The same key and body: the server answers with the charge it placed for this swipe,
        // or places it now if the first request never arrived.
        let placed = match self.client.create_charge(&pending.key, request) {
            Ok(placed) => placed,
            Err(ClientError::Refused(r)) if cancel && r.code == "order_not_chargeable" => {
                // The order's live charge is not this swipe's: this one never arrived.
                return self.never_placed(&pending.key);
            }
            Err(ClientError::Refused(refusal)) if refusal.status < 500 => {
                self.finish(&pending.key, Outcome::Refused, None, None)?;
                return Err(ClientError::Refused(refusal).into());
            }
            Err(e) => {
                self.say_interrupted(&e.to_string(), pending.charge_id.as_deref());
                return Ok(Finish::Interrupted);
            }
        };
        if pending.charge_id.as_deref() != Some(placed.id.as_str()) {
            self.placed(&pending.key, &placed.id)?;
        }
        // A replay says "pending" whatever happened since: ask for the charge as it is now.
        let charge = self.client.charge(&placed.id)?;
        match (charge.status.as_str(), cancel) {
            ("pending", true) => self.cancel(&pending.key, &placed.id),
            ("pending", false) => self.take_codes(&pending.key, &placed),
            _ => self.settled(&pending.key, &placed.id),
        }
    }

    fn never_placed(&mut self, key: &str) -> Result<Finish, SettleError> {
        self.console.say(
            "该刷卡的收费请求未到达服务器，无需取消 / this swipe's charge never reached the server: nothing to cancel",
        );
        self.finish(key, Outcome::NeverPlaced, None, None)?;
        Ok(Finish::Ended(Outcome::NeverPlaced))
    }

    fn placed(&mut self, key: &str, charge_id: &str) -> Result<(), SettleError> {
        self.journal.append(&Event::Placed {
            key: key.to_string(),
            at: now_text(),
            charge_id: charge_id.to_string(),
        })?;
        Ok(())
    }

    fn finish(
        &mut self,
        key: &str,
        outcome: Outcome,
        charge_id: Option<&str>,
        receipt_no: Option<&str>,
    ) -> Result<(), SettleError> {
        self.journal.append(&Event::Finished {
            key: key.to_string(),
            at: now_text(),
            outcome,
            charge_id: charge_id.map(str::to_string),
            receipt_no: receipt_no.map(str::to_string),
        })?;
        Ok(())
    }

    fn say_interrupted(&mut self, why: &str, charge_id: Option<&str>) {
        let charge = charge_id.map_or(String::new(), |id| format!(" (charge {id})"));
        self.console.say(&format!(
            "{why}\n收费未完成，已记入日志 {path}{charge}；网络恢复后运行 `card-reader resume` 继续，或 `card-reader resume --cancel` 取消（不会重复扣款）/ \
             the charge is not finished and is kept in the journal {path}{charge}: when the network is back run \
             `card-reader resume` to finish it or `card-reader resume --cancel` to cancel it (it can never charge twice)",
            path = self.journal.path().display(),
        ));
    }

    /// Tells the worker where the code comes from.
    fn announce(&mut self, placed: &PlacedCharge) {
        let what = format!(
            "charge {}, {} 元, 有效至 expires {}",
            placed.id, placed.amount, placed.expires_at
        );
        if placed.challenge == "token" {
            self.console.say(&format!(
                "请老人读出密码器上的6位数字 / ask the elder to read the 6 digits on their hardware token ({what})"
            ));
        } else {
            let hint = placed.phone_hint.as_deref().unwrap_or("?");
            self.console.say(&format!(
                "验证码短信已发送至老人手机 {hint} / an SMS code was sent to the elder's phone {hint} ({what})"
            ));
            if placed.sms_status.as_deref() == Some("failed") {
                self.console
                    .say("短信发送失败，输入 r 重发 / the SMS could not be sent: type r to resend");
            }
        }
    }

    /// Takes codes until one confirms, the charge ends, or input ends.
    fn take_codes(&mut self, key: &str, placed: &PlacedCharge) -> Result<Finish, SettleError> {
        self.announce(placed);
        let token = placed.challenge == "token";
        let prompt = if token {
            "验证码 code (c = 取消 cancel): "
        } else {
            "验证码 code (r = 重发短信 resend, c = 取消 cancel): "
        };
        let mut attempts_left = placed.attempts_left;
        loop {
            let input = match self.codes.pop_front() {
                Some(code) => code,
                None => match self.console.ask(prompt) {
                    Some(line) => line,
                    None => {
                        self.say_interrupted("输入已结束 / input ended", Some(&placed.id));
                        return Ok(Finish::Interrupted);
                    }
                },
            };
            // "123 456" as a worker may type what the elder reads out in two halves.
            let input: String = input.split_whitespace().collect();
            match input.to_lowercase().as_str() {
                "" => continue,
                "r" | "resend" | "重发" => self.resend(&placed.id, token)?,
                "c" | "cancel" | "取消" => return self.cancel(key, &placed.id),
                code if code.bytes().all(|b| b.is_ascii_digit()) => {
                    match self.confirm(key, &placed.id, code, attempts_left)? {
                        Attempt::Done(finish) => return Ok(finish),
                        Attempt::Wrong(left) => attempts_left = left,
                        Attempt::Again => {}
                    }
                }
                _ => self
                    .console
                    .say("验证码只含数字 / the code is digits only (r = resend, c = cancel)"),
            }
        }
    }

    fn confirm(
        &mut self,
        key: &str,
        charge_id: &str,
        code: &str,
        attempts_left: u32,
    ) -> Result<Attempt, SettleError> {
        match self.client.confirm(charge_id, code) {
            Ok(receipt) => self.confirmed(key, receipt).map(Attempt::Done),
            Err(ClientError::Refused(r)) => match r.code.as_str() {
                "code_invalid" => {
                    let left = r.attempts_left.unwrap_or(attempts_left.saturating_sub(1));
                    self.console.say(&format!(
                        "验证码错误，还可再试 {left} 次 / wrong code: {left} attempts left"
                    ));
                    Ok(Attempt::Wrong(left))
                }
                "too_many_attempts" | "charge_expired" | "charge_not_pending" => {
                    self.console.say(&r.to_string());
                    self.settled(key, charge_id).map(Attempt::Done)
                }
                "invalid_request" => {
                    self.console.say(&r.to_string());
                    Ok(Attempt::Again)
                }
                _ => Err(ClientError::Refused(r).into()),
            },
            Err(e) => {
                // The code may or may not have arrived: the charge as it is now says which.
                self.console.say(&e.to_string());
                let charge = match self.client.charge(charge_id) {
                    Ok(charge) => charge,
                    Err(e) => {
                        self.say_interrupted(&e.to_string(), Some(charge_id));
                        return Ok(Attempt::Done(Finish::Interrupted));
                    }
                };
                if charge.status != "pending" {
                    return self.settled(key, charge_id).map(Attempt::Done);
                }
                if charge.attempts_left < attempts_left {
                    let left = charge.attempts_left;
                    self.console.say(&format!(
                        "验证码错误，还可再试 {left} 次 / wrong code: {left} attempts left"
                    ));
                    return Ok(Attempt::Wrong(left));
                }
                self.console
                    .say("验证码未送达服务器，请重新输入 / the code did not reach the server: enter it again");
                Ok(Attempt::Again)
            }
        }
    }

    fn resend(&mut self, charge_id: &str, token: bool) -> Result<(), SettleError> {
        if token {
            self.console
                .say("此收费用密码器验证，无短信可重发 / this charge is confirmed with the hardware token: there is no SMS to resend");
            return Ok(());
        }
        match self.client.resend(charge_id) {
            Ok(charge) if charge.sms_status.as_deref() == Some("failed") => self
                .console
                .say("短信发送失败，请稍后再试 / the SMS could not be sent: try r again shortly"),
            Ok(_) => self.console.say(
                "新验证码已发送，旧码作废 / a new code was sent; the earlier one no longer works",
            ),
            Err(ClientError::Refused(r)) => self.console.say(&r.to_string()),
            Err(e) => self.console.say(&format!(
                "{e}\n重发失败，可再输入 r / the resend failed: type r to try again"
            )),
        }
        Ok(())
    }

    fn cancel(&mut self, key: &str, charge_id: &str) -> Result<Finish, SettleError> {
        match self.client.cancel(charge_id) {
            Ok(()) => {
                self.console.say(&format!(
                    "收费 {charge_id} 已取消，额度已释放 / charge {charge_id} is cancelled; the credit is released"
                ));
                self.finish(key, Outcome::Cancelled, Some(charge_id), None)?;
                Ok(Finish::Cancelled)
            }
            Err(ClientError::Refused(r))
                if matches!(r.code.as_str(), "charge_not_pending" | "charge_expired") =>
            {
                self.settled(key, charge_id)
            }
            Err(ClientError::Refused(r)) => Err(ClientError::Refused(r).into()),
            Err(e) => {
                self.say_interrupted(&e.to_string(), Some(charge_id));
                Ok(Finish::Interrupted)
            }
        }
    }

    /// A charge that is no longer pending: print its receipt, or say how it ended.
    fn settled(&mut self, key: &str, charge_id: &str) -> Result<Finish, SettleError> {
        let charge = self.client.charge(charge_id)?;
        let outcome = match charge.status.as_str() {
            "confirmed" => {
                let no = charge.receipt_no.ok_or_else(|| {
                    ClientError::Protocol(format!("confirmed charge {charge_id} has no receipt"))
                })?;
                let receipt = self.client.receipt(&no)?;
                return self.confirmed(key, receipt);
            }
            "pending" => {
                return Err(ClientError::Protocol(format!(
                    "charge {charge_id} is still pending after the server said it was not"
                ))
                .into())
            }
            "voided" => Outcome::Voided,
            "expired" => Outcome::Expired,
            "refunded" => Outcome::Refunded,
            other => {
                return Err(
                    ClientError::Protocol(format!("charge {charge_id} is {other:?}")).into(),
                )
            }
        };
        self.console.say(&format!(
            "收费 {charge_id} 状态为 {} ，未扣款 / charge {charge_id} is {}: nothing was charged",
            charge.status, charge.status
        ));
        self.finish(key, outcome, Some(charge_id), None)?;
        Ok(Finish::Ended(outcome))
    }

    fn confirmed(&mut self, key: &str, receipt: Receipt) -> Result<Finish, SettleError> {
        self.finish(
            key,
            Outcome::Confirmed,
            Some(&receipt.charge_id),
            Some(&receipt.no),
        )?;
        self.console.say(&format!(
            "收费成功 / charge {} confirmed: receipt {}",
            receipt.charge_id, receipt.no
        ));
        self.console.print(&receipt::render(&receipt));
        Ok(Finish::Confirmed(Box::new(receipt)))
    }
}

/// One code's result.
enum Attempt {
    Done(Finish),
    Wrong(u32),
    /// Nothing was decided (the code did not arrive, or was malformed): ask again.
    Again,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_fresh_and_valid_header_values() {
        let a = new_idempotency_key().unwrap();
        let b = new_idempotency_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 2 * KEY_RANDOM_BYTES);
        assert!(a.starts_with("cr-") && a.bytes().all(|c| c.is_ascii_graphic()));
    }
}

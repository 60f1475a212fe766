//! `--sms smpp://USER:PASSWORD@HOST:PORT?source=ADDR`: SMS through an SMS centre over SMPP 3.4,
//! with the PDUs, UCS-2 and concatenation of `rusmpp` and the session (framing, sequence
//! numbers, response correlation, enquire_link keep-alive) of `rusmppc`, over plain TCP.
//!
//! - One persistent session, bound as a transceiver so delivery receipts (`deliver_sm`) come
//!   back on it. A manager task connects, binds, answers the SMS centre and reconnects with
//!   doubling backoff ([`RECONNECT_BACKOFF_MIN`]..[`RECONNECT_BACKOFF_MAX`]); a send that
//!   finds no session wakes it for an attempt at once and fails fast if that attempt fails,
//!   so a charge shows `sms_status: failed` in moments when the SMS centre is down.
//! - Texts go as UCS-2 (data_coding 8). One that does not fit one segment (70 UCS-2 chars)
//!   goes in segments of 67 with the concatenation UDH `05 00 03 ref total seq`.
//! - At most [`WINDOW`] submit_sm wait for their response at once; at most
//!   [`super::QUEUE_CAPACITY`] messages are in the sender at once.
//! - A segment the SMS centre throttles (`ESME_RTHROTTLED`, `ESME_RMSGQFUL`) is submitted
//!   again after a backoff; one whose session dies before its response came is submitted
//!   again on the next session. Only the segment is repeated, never the segments already
//!   accepted. A response lost with its session leaves the outcome unknown: the segment is
//!   sent again (at least once; a rare duplicate SMS carries the same code).
//! - Receipts (`esm_class` bits 5–2 = 0001) are parsed as `id:… stat:…` (or the
//!   `receipted_message_id`/`message_state` TLVs) and matched to the SMS by the message ids
//!   of its segments: all segments `DELIVRD` → [`Delivery::Delivered`], any final failure →
//!   [`Delivery::Undelivered`].

use super::{
    Delivery, DeliveryReport, DeliveryReports, SendFuture, SmsError, SmsMessage, SmsSender,
    QUEUE_CAPACITY, REPORTS_CAPACITY,
};
use anyhow::Context;
use futures_util::{Stream, StreamExt};
use rusmpp::extra::concatenation::SubmitSmMultipartExt;
use rusmpp::pdus::{BindTransceiver, DeliverSm, DeliverSmResp, SubmitSm};
use rusmpp::tlvs::TlvValue;
use rusmpp::types::COctetString;
use rusmpp::values::{EsmClass, InterfaceVersion, MessageState, Npi, RegisteredDelivery, Ton};
use rusmpp::{CommandId, CommandStatus, Pdu};
use rusmppc::{Client, ConnectionBuilder, Event};
use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;

/// submit_sm awaiting their response at once, over all messages.
pub const WINDOW: usize = 10;
/// TCP connect, and then bind, each within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A send waits this long at most for a session (one connect and bind attempt, and then some).
const LINK_WAIT: Duration = Duration::from_secs(7);
/// A PDU's response within this, or the session is taken as dead and closed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(4);
const ENQUIRE_LINK_INTERVAL: Duration = Duration::from_secs(30);
const ENQUIRE_LINK_TIMEOUT: Duration = Duration::from_secs(10);
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Submissions of one segment (throttled, or its session lost) before the send fails.
const SUBMIT_ATTEMPTS_MAX: u32 = 5;
/// Wait after the first throttled answer; doubled after each later one.
const THROTTLE_BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// Octets of short_message in one segment: 70 UCS-2 chars alone, or the 6-octet
/// concatenation UDH and 67 chars.
const SEGMENT_OCTETS_MAX: usize = 140;
/// Sent messages whose receipts are awaited, and receipts that came before their message id
/// was known; the oldest are forgotten past these.
const RECEIPTS_AWAITED_MAX: usize = 10_000;
const RECEIPTS_EARLY_MAX: usize = 1_000;

struct Config {
    host: String,
    port: u16,
    system_id: COctetString<1, 16>,
    password: COctetString<1, 9>,
    source: COctetString<1, 21>,
}

fn percent_decoded(text: &str, what: &str) -> anyhow::Result<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .with_context(|| format!("--sms smpp://: the {what} is not UTF-8"))
}

impl Config {
    /// Parses the flag. Errors never repeat the password.
    fn parse(flag: &str) -> anyhow::Result<Config> {
        let url = reqwest::Url::parse(flag).map_err(|e| {
            anyhow::anyhow!("--sms smpp://USER:PASSWORD@HOST:PORT?source=ADDR: {e}")
        })?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .context("--sms smpp://: the SMS centre's host is missing")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port().context("--sms smpp://: the port is missing")?;
        let user = percent_decoded(url.username(), "user")?;
        let password = percent_decoded(url.password().unwrap_or_default(), "password")?;
        let source = url
            .query_pairs()
            .find(|(k, _)| k == "source")
            .map(|(_, v)| v.into_owned())
            .context("--sms smpp://: `?source=ADDR` (the sender address) is missing")?;
        let c_octets = |value: String, what: &str, max: usize| {
            if value.is_empty() || value.len() >= max {
                anyhow::bail!("--sms smpp://: the {what} must be 1 to {} octets", max - 1);
            }
            Ok(value)
        };
        Ok(Config {
            host,
            port,
            system_id: COctetString::from_string(c_octets(user, "user (system_id)", 16)?)
                .map_err(|e| anyhow::anyhow!("--sms smpp://: user: {e}"))?,
            password: COctetString::from_string(c_octets(password, "password", 9)?)
                .map_err(|_| anyhow::anyhow!("--sms smpp://: the password is not a C string"))?,
            source: COctetString::from_string(c_octets(source, "source address", 21)?)
                .map_err(|e| anyhow::anyhow!("--sms smpp://: source: {e}"))?,
        })
    }
}

/// The submit_sm PDUs of one message: UCS-2, one segment or concatenated ones with the
/// 8-bit reference `reference`; a receipt is asked for whatever the outcome. `to` is a
/// mainland number in national format (`138…`).
fn submit_parts(
    source: &COctetString<1, 21>,
    to: &str,
    text: &str,
    reference: u8,
) -> Result<Vec<SubmitSm>, SmsError> {
    let destination =
        COctetString::from_str(to).map_err(|e| SmsError::Encoding(format!("destination: {e}")))?;
    // Built from the byte, not `EsmClass::default()`, whose ANSI-41 bits are not zero.
    let base = SubmitSm::builder()
        .source_addr_ton(Ton::Unknown)
        .source_addr_npi(Npi::Unknown)
        .source_addr(source.clone())
        .dest_addr_ton(Ton::National)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(destination)
        .esm_class(EsmClass::from(0))
        .registered_delivery(RegisteredDelivery::from(0x01))
        .build();
    base.multipart(text)
        .ucs2()
        .max_short_message_size(SEGMENT_OCTETS_MAX)
        .reference_u8(reference)
        .build()
        // The error names the encoder's problem (a character outside UCS-2, too many
        // segments), not the text.
        .map_err(|e| SmsError::Encoding(e.to_string()))
}

/// A delivery receipt: the message id it is about and, if final, the outcome. `None` for
/// a deliver_sm that is not a receipt (a reply from the phone is not ours to read).
fn receipt(deliver: &DeliverSm) -> Option<(String, Option<Delivery>)> {
    const MESSAGE_TYPE_BITS: u8 = 0b0011_1100;
    const MC_DELIVERY_RECEIPT: u8 = 0b0000_0100;
    if u8::from(deliver.esm_class) & MESSAGE_TYPE_BITS != MC_DELIVERY_RECEIPT {
        return None;
    }
    let text = String::from_utf8_lossy(deliver.short_message().as_ref()).into_owned();
    let mut id = receipt_field(&text, "id:").map(str::to_string);
    let mut delivery = receipt_field(&text, "stat:").and_then(delivery_of_stat);
    for tlv in deliver.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(v)) => id = Some(v.to_string()),
            Some(TlvValue::MessageState(state)) => delivery = delivery_of_state(*state),
            _ => {}
        }
    }
    Some((id?, delivery))
}

/// The word after `key` in a receipt text (`id:0123 sub:001 … stat:DELIVRD err:000 text:…`).
fn receipt_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text
        .match_indices(key)
        .find(|(at, _)| *at == 0 || text[..*at].ends_with(' '))
        .map(|(at, _)| at + key.len())?;
    text[start..].split(' ').next().filter(|v| !v.is_empty())
}

/// SMPP 3.4 Appendix B's final states; the rest are not final (or not known) and change
/// nothing.
fn delivery_of_stat(stat: &str) -> Option<Delivery> {
    match stat {
        "DELIVRD" => Some(Delivery::Delivered),
        "EXPIRED" | "DELETED" | "UNDELIV" | "REJECTD" => Some(Delivery::Undelivered),
        _ => None,
    }
}

fn delivery_of_state(state: MessageState) -> Option<Delivery> {
    match state {
        MessageState::Delivered => Some(Delivery::Delivered),
        MessageState::Expired
        | MessageState::Deleted
        | MessageState::Undeliverable
        | MessageState::Rejected => Some(Delivery::Undelivered),
        _ => None,
    }
}

/// An SMS whose receipts are awaited.
struct Awaited {
    charge_id: String,
    sent_at: String,
    message_ids: Vec<String>,
    parts_left: usize,
}

/// Message ids of sent segments → their SMS, and receipts that came before their id was
/// known (an SMS centre may send the receipt before its submit_sm_resp has been read).
#[derive(Default)]
struct Receipts {
    by_id: HashMap<String, u64>,
    awaited: HashMap<u64, Awaited>,
    awaited_order: VecDeque<u64>,
    next: u64,
    early: HashMap<String, Delivery>,
    early_order: VecDeque<String>,
}

impl Receipts {
    fn track(&mut self, message: &SmsMessage, message_ids: Vec<String>) -> Option<DeliveryReport> {
        let key = self.next;
        self.next += 1;
        for id in &message_ids {
            self.by_id.insert(id.clone(), key);
        }
        self.awaited.insert(
            key,
            Awaited {
                charge_id: message.charge_id.clone(),
                sent_at: message.sent_at.clone(),
                parts_left: message_ids.len(),
                message_ids: message_ids.clone(),
            },
        );
        self.awaited_order.push_back(key);
        while self.awaited.len() > RECEIPTS_AWAITED_MAX {
            if let Some(old) = self.awaited_order.pop_front() {
                self.forget(old);
            }
        }
        let mut report = None;
        for id in message_ids {
            if let Some(delivery) = self.early.remove(&id) {
                report = report.or(self.receive(&id, delivery));
            }
        }
        report
    }

    fn forget(&mut self, key: u64) -> Option<Awaited> {
        let awaited = self.awaited.remove(&key)?;
        for id in &awaited.message_ids {
            self.by_id.remove(id);
        }
        Some(awaited)
    }

    /// A final receipt for `message_id`; the report once the SMS's outcome is known.
    fn receive(&mut self, message_id: &str, delivery: Delivery) -> Option<DeliveryReport> {
        let Some(key) = self.by_id.remove(message_id) else {
            self.early.insert(message_id.to_string(), delivery);
            self.early_order.push_back(message_id.to_string());
            while self.early.len() > RECEIPTS_EARLY_MAX {
                if let Some(old) = self.early_order.pop_front() {
                    self.early.remove(&old);
                }
            }
            return None;
        };
        let awaited = self.awaited.get_mut(&key)?;
        awaited.parts_left = awaited.parts_left.saturating_sub(1);
        if delivery == Delivery::Delivered && awaited.parts_left > 0 {
            return None;
        }
        self.forget(key).map(|a| DeliveryReport {
            charge_id: a.charge_id,
            sent_at: a.sent_at,
            delivery,
        })
    }
}

/// The current session, if bound, and how many connect-and-bind attempts have failed.
#[derive(Clone, Default)]
struct Link {
    session: Option<(u64, Client)>,
    failures: u64,
}

struct Shared {
    config: Config,
    link: watch::Sender<Link>,
    /// Wakes the manager from its backoff: a send is waiting for a session.
    wake: Notify,
    window: Semaphore,
    queue: Arc<Semaphore>,
    reference: AtomicU8,
    receipts: Mutex<Receipts>,
    reports: mpsc::Sender<DeliveryReport>,
}

pub struct SmppSender {
    shared: Arc<Shared>,
    started: AtomicBool,
    reports: Mutex<Option<DeliveryReports>>,
}

/// What a failed submit calls for.
enum Failure {
    Throttled,
    /// The session is gone or not answering: close it and submit on the next one.
    Session,
    Refused(String),
}

fn classify(error: &rusmppc::error::Error) -> Failure {
    use rusmppc::error::Error;
    match error {
        Error::UnexpectedResponse { response } => match response.status() {
            CommandStatus::EsmeRthrottled | CommandStatus::EsmeRmsgqful => Failure::Throttled,
            status => Failure::Refused(format!("{status:?}")),
        },
        Error::Encode(e) => Failure::Refused(e.to_string()),
        Error::UnsupportedInterfaceVersion { .. } => Failure::Refused(error.to_string()),
        // Connect, Io, ConnectionClosed, ConnectionClosedByPeer, Decode, EnquireLinkTimeout,
        // ResponseTimeout, and what later versions add (the enum is non-exhaustive).
        _ => Failure::Session,
    }
}

/// Connects and binds as a transceiver (interface version 3.4).
async fn connect(
    config: &Config,
) -> Result<(Client, impl Stream<Item = Event> + Unpin + 'static), String> {
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((config.host.as_str(), config.port)),
    )
    .await
    .map_err(|_| format!("no TCP connection within {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (client, events) = ConnectionBuilder::new()
        .enquire_link_interval(ENQUIRE_LINK_INTERVAL)
        .enquire_link_response_timeout(ENQUIRE_LINK_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .disable_interface_version_check()
        .connected(stream);
    let bind = BindTransceiver::builder()
        .system_id(config.system_id.clone())
        .password(config.password.clone())
        .interface_version(InterfaceVersion::Smpp3_4)
        .build();
    let why = match tokio::time::timeout(CONNECT_TIMEOUT, client.bind_transceiver(bind)).await {
        Ok(Ok(_)) => return Ok((client, events)),
        Ok(Err(rusmppc::error::Error::UnexpectedResponse { response })) => {
            format!("bind refused: {:?}", response.status())
        }
        Ok(Err(e)) => format!("bind failed: {e}"),
        Err(_) => format!("no bind response within {CONNECT_TIMEOUT:?}"),
    };
    let _ = client.close().await;
    Err(why)
}

impl Shared {
    /// The manager: keeps one session bound, answers the SMS centre, reconnects.
    async fn run(self: Arc<Shared>) {
        let mut backoff = RECONNECT_BACKOFF_MIN;
        let mut generation = 0;
        loop {
            let attempted_at = Instant::now();
            match connect(&self.config).await {
                Ok((client, events)) => {
                    generation += 1;
                    backoff = RECONNECT_BACKOFF_MIN;
                    tracing::info!(host = %self.config.host, port = self.config.port,
                        "SMPP session bound");
                    self.link
                        .send_modify(|l| l.session = Some((generation, client.clone())));
                    self.serve(&client, events).await;
                    self.link.send_modify(|l| l.session = None);
                    let _ = client.close().await;
                    tracing::warn!("SMPP session ended; reconnecting");
                    tokio::time::sleep(RECONNECT_BACKOFF_MIN).await;
                }
                Err(why) => {
                    self.link.send_modify(|l| {
                        l.session = None;
                        l.failures += 1;
                    });
                    tracing::warn!(host = %self.config.host, port = self.config.port, error = %why,
                        retry_in = ?backoff, "SMPP connect failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.wake.notified() => {
                            tokio::time::sleep_until(attempted_at + RECONNECT_BACKOFF_MIN).await;
                        }
                    }
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                }
            }
        }
    }

    /// Reads the session's incoming PDUs until it ends. rusmppc answers enquire_link itself.
    async fn serve(&self, client: &Client, mut events: impl Stream<Item = Event> + Unpin) {
        while let Some(event) = events.next().await {
            let command = match event {
                Event::Incoming(command) => command,
                Event::Error(e) => {
                    tracing::warn!(error = %e, "SMPP session error");
                    continue;
                }
            };
            let sequence_number = command.sequence_number();
            match command.id() {
                CommandId::DeliverSm => {
                    if let Some(Pdu::DeliverSm(deliver)) = command.pdu() {
                        self.on_deliver(deliver);
                    }
                    if let Err(e) = client
                        .deliver_sm_resp(sequence_number, DeliverSmResp::default())
                        .await
                    {
                        tracing::warn!(error = %e, "SMPP deliver_sm_resp failed");
                    }
                }
                CommandId::Unbind => {
                    tracing::info!("the SMS centre unbinds the SMPP session");
                    let _ = client.unbind_resp(sequence_number).await;
                    return;
                }
                // A request this client does not serve (data_sm, alert_notification…) gets
                // generic_nack rather than silence, which the SMS centre would time out on.
                id if id.is_operation() => {
                    let _ = client
                        .status(CommandStatus::EsmeRinvcmdid)
                        .generic_nack(sequence_number)
                        .await;
                }
                _ => {}
            }
        }
    }

    fn on_deliver(&self, deliver: &DeliverSm) {
        let Some((message_id, Some(delivery))) = receipt(deliver) else {
            return;
        };
        let report = self
            .receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .receive(&message_id, delivery);
        self.report(report);
    }

    fn report(&self, report: Option<DeliveryReport>) {
        if let Some(report) = report {
            if self.reports.try_send(report).is_err() {
                tracing::warn!("SMS delivery report dropped: the drain is behind");
            }
        }
    }

    /// The bound session; waits for the manager's next attempt if there is none, and fails
    /// as soon as an attempt fails.
    async fn session(&self) -> Result<(u64, Client), SmsError> {
        let mut link = self.link.subscribe();
        let deadline = Instant::now() + LINK_WAIT;
        let failures = link.borrow().failures;
        loop {
            {
                let now = link.borrow_and_update();
                if let Some((generation, client)) = &now.session {
                    if client.is_active() {
                        return Ok((*generation, client.clone()));
                    }
                }
                if now.failures > failures {
                    return Err(SmsError::Unavailable(
                        "cannot connect and bind to the SMS centre".into(),
                    ));
                }
            }
            self.wake.notify_one();
            match tokio::time::timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(SmsError::Unavailable(format!(
                        "no SMPP session within {LINK_WAIT:?}"
                    )))
                }
            }
        }
    }

    /// Closes a session that failed a submit (if it is still the current one), so the
    /// manager binds a new one.
    async fn drop_session(&self, generation: u64, client: &Client) {
        self.link.send_if_modified(|l| {
            let current = l.session.as_ref().is_some_and(|(g, _)| *g == generation);
            if current {
                l.session = None;
            }
            current
        });
        let _ = client.close().await;
    }

    /// Submits one segment until the SMS centre accepts it; its message id.
    async fn submit(&self, part: &SubmitSm) -> Result<String, SmsError> {
        let mut attempts = 0;
        let mut backoff = THROTTLE_BACKOFF_FIRST;
        loop {
            attempts += 1;
            let (generation, client) = self.session().await?;
            let result = {
                let _turn = self
                    .window
                    .acquire()
                    .await
                    .map_err(|_| SmsError::Unavailable("the SMPP sender is closed".into()))?;
                client.submit_sm(part.clone()).await
            };
            let error = match result {
                Ok(response) => return Ok(response.message_id().to_string()),
                Err(error) => error,
            };
            match classify(&error) {
                Failure::Refused(why) => return Err(SmsError::Rejected(why)),
                Failure::Throttled if attempts >= SUBMIT_ATTEMPTS_MAX => {
                    return Err(SmsError::Rejected(format!("throttled {attempts} times")))
                }
                Failure::Session if attempts >= SUBMIT_ATTEMPTS_MAX => {
                    return Err(SmsError::Unavailable(error.to_string()))
                }
                Failure::Throttled => {
                    tracing::warn!(
                        attempt = attempts,
                        "SMS centre throttled a submit_sm; backing off"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Failure::Session => {
                    tracing::warn!(attempt = attempts, error = %error,
                        "submit_sm lost with its SMPP session; submitting on the next one");
                    self.drop_session(generation, &client).await;
                }
            }
        }
    }
}

impl SmppSender {
    pub fn from_url(flag: &str) -> anyhow::Result<SmppSender> {
        let config = Config::parse(flag)?;
        let (reports, reports_rx) = mpsc::channel(REPORTS_CAPACITY);
        Ok(SmppSender {
            shared: Arc::new(Shared {
                config,
                link: watch::Sender::new(Link::default()),
                wake: Notify::new(),
                window: Semaphore::new(WINDOW),
                queue: Arc::new(Semaphore::new(QUEUE_CAPACITY)),
                reference: AtomicU8::new(0),
                receipts: Mutex::default(),
                reports,
            }),
            started: AtomicBool::new(false),
            reports: Mutex::new(Some(reports_rx)),
        })
    }

    /// Spawns the manager on the current runtime the first time.
    fn ensure_started(&self) {
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(Arc::clone(&self.shared).run());
        }
    }

    async fn deliver(&self, message: SmsMessage) -> Result<(), SmsError> {
        let _slot = Arc::clone(&self.shared.queue)
            .try_acquire_owned()
            .map_err(|_| SmsError::QueueFull)?;
        self.ensure_started();
        let reference = self.shared.reference.fetch_add(1, Ordering::Relaxed);
        let parts = submit_parts(
            &self.shared.config.source,
            &message.to,
            &message.text,
            reference,
        )?;
        let mut message_ids = Vec::with_capacity(parts.len());
        for part in &parts {
            message_ids.push(self.shared.submit(part).await?);
        }
        let report = self
            .shared
            .receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .track(&message, message_ids);
        self.shared.report(report);
        Ok(())
    }
}

impl SmsSender for SmppSender {
    fn send(&self, message: SmsMessage) -> SendFuture<'_> {
        Box::pin(self.deliver(message))
    }

    fn start(&self) -> Option<DeliveryReports> {
        self.ensure_started();
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flag: &str) -> Result<(String, u16, String, String, String), String> {
        Config::parse(flag)
            .map(|c| {
                (
                    c.host,
                    c.port,
                    c.system_id.to_string(),
                    c.password.to_string(),
                    c.source.to_string(),
                )
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flag_gives_host_port_credentials_and_source() {
        assert_eq!(
            config("smpp://ledger:s3cr%40t@127.0.0.1:2775?source=10690001").unwrap(),
            (
                "127.0.0.1".into(),
                2775,
                "ledger".into(),
                "s3cr@t".into(),
                "10690001".into()
            )
        );
        assert_eq!(config("smpp://u:p@[::1]:1?source=1").unwrap().0, "::1");
        for bad in [
            "smpp://u:p@host?source=1",
            "smpp://u:p@host:2775",
            "smpp://u:toolongpassword@host:2775?source=1",
            "smpp://:p@host:2775?source=1",
        ] {
            let e = config(bad).unwrap_err();
            assert!(!e.contains("toolongpassword"), "{e}");
        }
    }

    fn ucs2(text: &str) -> Vec<u8> {
        text.encode_utf16().flat_map(u16::to_be_bytes).collect()
    }

    #[test]
    fn a_short_text_is_one_ucs2_segment_asking_for_a_receipt() {
        let source = COctetString::from_str("10690001").unwrap();
        let parts = submit_parts(&source, "13812345678", "验证码：123456", 7).unwrap();
        assert_eq!(parts.len(), 1);
        let sm = &parts[0];
        assert_eq!(u8::from(sm.data_coding), 8);
        assert_eq!(u8::from(sm.esm_class), 0);
        assert_eq!(u8::from(sm.registered_delivery), 1);
        assert_eq!(
            sm.short_message().as_ref(),
            ucs2("验证码：123456").as_slice()
        );
        assert_eq!(sm.destination_addr.to_string(), "13812345678");
    }

    #[test]
    fn a_long_text_goes_in_67_char_segments_with_the_8_bit_concatenation_udh() {
        let source = COctetString::from_str("10690001").unwrap();
        let text: String = "长安居家养老服务中心".chars().cycle().take(150).collect();
        assert_eq!(
            submit_parts(&source, "13812345678", &text[..210], 1)
                .unwrap()
                .len(),
            1
        );
        let parts = submit_parts(&source, "13812345678", &text, 42).unwrap();
        assert_eq!(parts.len(), 3);
        let mut joined = Vec::new();
        for (i, sm) in parts.iter().enumerate() {
            assert_eq!(u8::from(sm.esm_class), 0x40, "UDHI");
            assert_eq!(u8::from(sm.data_coding), 8);
            let bytes = sm.short_message().as_ref();
            assert_eq!(&bytes[..6], &[5, 0, 3, 42, 3, i as u8 + 1]);
            let chars = (bytes.len() - 6) / 2;
            assert_eq!(chars, if i < 2 { 67 } else { 150 - 134 });
            joined.extend_from_slice(&bytes[6..]);
        }
        assert_eq!(joined, ucs2(&text));
    }

    #[test]
    fn receipt_fields() {
        let text = "id:0A1B sub:001 dlvrd:001 submit date:2603010800 done date:2603010801 stat:DELIVRD err:000 text:【居家养老】";
        assert_eq!(receipt_field(text, "id:"), Some("0A1B"));
        assert_eq!(receipt_field(text, "stat:"), Some("DELIVRD"));
        assert_eq!(receipt_field("xid:1 id:2", "id:"), Some("2"));
        assert_eq!(receipt_field("id: stat:X", "id:"), None);
        assert_eq!(delivery_of_stat("DELIVRD"), Some(Delivery::Delivered));
        assert_eq!(delivery_of_stat("UNDELIV"), Some(Delivery::Undelivered));
        assert_eq!(delivery_of_stat("ENROUTE"), None);
    }

    fn deliver_sm(esm_class: u8, text: &str) -> DeliverSm {
        DeliverSm::builder()
            .esm_class(EsmClass::from(esm_class))
            .short_message(rusmpp::types::OctetString::from_str(text).unwrap())
            .build()
    }

    #[test]
    fn only_receipts_are_read_as_receipts() {
        let text = "id:77 sub:001 dlvrd:001 submit date:2603010800 done date:2603010801 stat:REJECTD err:000 text:";
        assert_eq!(
            receipt(&deliver_sm(0x04, text)),
            Some(("77".to_string(), Some(Delivery::Undelivered)))
        );
        assert_eq!(receipt(&deliver_sm(0x00, text)), None);
    }

    fn message(charge: &str) -> SmsMessage {
        SmsMessage {
            to: "13812345678".into(),
            text: "t".into(),
            charge_id: charge.into(),
            sent_at: "2026-03-01T00:00:00Z".into(),
        }
    }

    fn check(report: Option<DeliveryReport>, expected: Option<(&str, Delivery)>) {
        assert_eq!(
            report.map(|r| (r.charge_id, r.delivery)),
            expected.map(|(c, d)| (c.to_string(), d))
        );
    }

    #[test]
    fn receipts_match_every_segment_also_when_they_come_first() {
        let mut r = Receipts::default();
        check(r.track(&message("C1"), vec!["a".into(), "b".into()]), None);
        check(r.receive("a", Delivery::Delivered), None);
        check(
            r.receive("b", Delivery::Delivered),
            Some(("C1", Delivery::Delivered)),
        );
        check(r.receive("b", Delivery::Delivered), None);
        // A receipt before its submit_sm_resp was read.
        check(r.receive("c", Delivery::Delivered), None);
        check(
            r.track(&message("C2"), vec!["c".into()]),
            Some(("C2", Delivery::Delivered)),
        );
        // One failed segment fails the SMS, once.
        check(r.track(&message("C3"), vec!["d".into(), "e".into()]), None);
        check(
            r.receive("e", Delivery::Undelivered),
            Some(("C3", Delivery::Undelivered)),
        );
        check(r.receive("d", Delivery::Delivered), None);
        assert!(r.awaited.is_empty() && r.by_id.is_empty());
    }
}

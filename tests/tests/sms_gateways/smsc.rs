//! A test SMS centre on 127.0.0.1, speaking SMPP 3.4 through the `smpp34` codec (not the
//! `rusmpp` the server uses, so the two sides check each other). It checks the bind's
//! credentials, records every submit_sm it accepts, reassembles concatenated segments (UDH
//! IE 00) and decodes their UCS-2, sends delivery receipts, and can be told to answer the
//! next submit_sm with ESME_RTHROTTLED, to drop the connection instead of answering, to
//! leave it unanswered, or to go down and come back on the same port.

use smpp34::{bind_transceiver, deliver_sm, enquire_link, submit_sm, CommandHeader, SmppError};
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const SYSTEM_ID: &str = "ledger";
pub const PASSWORD: &str = "s3cret";
pub const SOURCE: &str = "10690001";
/// How long the test waits for something the server should do at once.
const WAIT: Duration = Duration::from_secs(20);
/// Largest PDU the test SMS centre reads.
const PDU_OCTETS_MAX: usize = 64 * 1024;

const BIND_TRANSCEIVER: u32 = 0x0000_0009;
const SUBMIT_SM: u32 = 0x0000_0004;
const ENQUIRE_LINK: u32 = 0x0000_0015;
const UNBIND: u32 = 0x0000_0006;
const UNBIND_RESP: u32 = 0x8000_0006;
const DELIVER_SM_RESP: u32 = 0x8000_0005;
const GENERIC_NACK: u32 = 0x8000_0000;
const ESM_CLASS_UDHI: u8 = 0x40;
const ESM_CLASS_RECEIPT: u8 = 0x04;
const DATA_CODING_UCS2: u8 = 8;

/// What the test SMS centre does with the next submit_sm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accept,
    Throttle,
    /// Closes the connection without answering (the message is not taken).
    Drop,
    /// Never answers (the message is not taken).
    Stall,
}

#[derive(Debug, Clone)]
pub struct Bind {
    pub system_id: String,
    pub password: String,
    pub interface_version: u8,
    pub accepted: bool,
}

/// A submit_sm the SMS centre accepted.
#[derive(Debug, Clone)]
pub struct Segment {
    pub message_id: String,
    pub to: String,
    pub source: String,
    pub esm_class: u8,
    pub data_coding: u8,
    pub registered_delivery: u8,
    pub short_message: Vec<u8>,
}

/// A whole SMS: one segment, or all segments of a concatenated one.
#[derive(Debug, Clone)]
pub struct Sms {
    pub to: String,
    pub text: String,
    pub message_ids: Vec<String>,
}

#[derive(Default)]
pub struct State {
    up: bool,
    pub binds: Vec<Bind>,
    pub accepted: Vec<Segment>,
    /// submit_sm received, answered or not.
    pub submits: usize,
    pub receipts_acknowledged: usize,
    plan: VecDeque<Answer>,
    sessions: Vec<(u64, Arc<Mutex<TcpStream>>)>,
    next_session: u64,
    next_message_id: u64,
    next_sequence: u32,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

pub struct Smsc {
    port: u16,
    shared: Arc<Shared>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

fn read_pdu(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length) as usize;
    if !(16..=PDU_OCTETS_MAX).contains(&length) {
        return Err(std::io::Error::other(format!("command_length {length}")));
    }
    let mut pdu = vec![0u8; length];
    pdu[..4].copy_from_slice(&(length as u32).to_be_bytes());
    stream.read_exact(&mut pdu[4..])?;
    Ok(pdu)
}

fn header_only(command_id: u32, status: u32, sequence_number: u32) -> Vec<u8> {
    CommandHeader {
        command_length: 16,
        command_id,
        command_status: status,
        sequence_number,
    }
    .encode()
}

impl Smsc {
    pub fn start() -> Smsc {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the test SMSC");
        let port = listener.local_addr().unwrap().port();
        let smsc = Smsc {
            port,
            shared: Arc::new(Shared {
                state: Mutex::default(),
                changed: Condvar::new(),
            }),
        };
        smsc.listen(listener);
        smsc
    }

    /// The `--sms` flag for this SMS centre.
    pub fn url(&self) -> String {
        self.url_with_password(PASSWORD)
    }

    pub fn url_with_password(&self, password: &str) -> String {
        format!(
            "smpp://{SYSTEM_ID}:{password}@127.0.0.1:{}?source={SOURCE}",
            self.port
        )
    }

    fn listen(&self, listener: TcpListener) {
        self.shared.update(|s| s.up = true);
        let shared = Arc::clone(&self.shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if !shared.lock().up {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || session(&shared, stream));
            }
        });
    }

    /// Closes every session and stops listening.
    pub fn stop(&self) {
        let sessions = {
            let mut s = self.shared.lock();
            s.up = false;
            std::mem::take(&mut s.sessions)
        };
        for (_, writer) in sessions {
            let _ = writer.lock().unwrap().shutdown(Shutdown::Both);
        }
        // Wakes the accept loop, which sees `up` is false and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the test SMSC did not stop listening"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Listens again on the same port.
    pub fn resume(&self) {
        let listener =
            TcpListener::bind(("127.0.0.1", self.port)).expect("binding the test SMSC again");
        self.listen(listener);
    }

    /// Answers for the next submit_sm, in order; then it accepts.
    pub fn plan(&self, answers: &[Answer]) {
        self.shared.update(|s| s.plan.extend(answers));
    }

    /// Waits until `done` holds of the state (the server acts on its own time).
    pub fn wait(&self, what: &str, done: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + WAIT;
        let mut state = self.shared.lock();
        while !done(&state) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("the test SMSC waited {WAIT:?} for {what}"));
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn binds(&self) -> Vec<Bind> {
        self.shared.lock().binds.clone()
    }

    pub fn submits(&self) -> usize {
        self.shared.lock().submits
    }

    pub fn accepted(&self) -> Vec<Segment> {
        self.shared.lock().accepted.clone()
    }

    /// The accepted segments put back together, in the order their last segment came.
    /// Panics on a segment accepted twice or an incomplete concatenation.
    pub fn messages(&self) -> Vec<Sms> {
        reassemble(&self.accepted())
    }

    /// Sends a delivery receipt (`stat:STAT`) for every segment of `sms` on the bound session
    /// and waits for the server's deliver_sm_resp.
    pub fn receipt(&self, sms: &Sms, stat: &str) {
        for id in &sms.message_ids {
            let (writer, sequence, acknowledged) = {
                let mut s = self.shared.lock();
                s.next_sequence += 1;
                let writer = s.sessions.last().expect("a bound session").1.clone();
                (writer, s.next_sequence, s.receipts_acknowledged)
            };
            let text = format!(
                "id:{id} sub:001 dlvrd:001 submit date:2603010800 done date:2603010801 stat:{stat} err:000 text:"
            );
            let pdu = deliver_sm::new(
                sequence,
                String::new(),
                1,
                1,
                sms.to.clone(),
                0,
                0,
                SOURCE.to_string(),
                ESM_CLASS_RECEIPT,
                0,
                0,
                String::new(),
                String::new(),
                0,
                0,
                0,
                0,
                text.into_bytes(),
            );
            writer.lock().unwrap().write_all(&pdu.encode()).unwrap();
            self.wait("the deliver_sm_resp", |s| {
                s.receipts_acknowledged > acknowledged
            });
        }
    }
}

/// One connection: bind, then enquire_link, submit_sm and unbind until it closes.
fn session(shared: &Shared, stream: TcpStream) {
    let writer = Arc::new(Mutex::new(
        stream.try_clone().expect("cloning a TCP stream"),
    ));
    let id = {
        let mut s = shared.lock();
        s.next_session += 1;
        let id = s.next_session;
        s.sessions.push((id, Arc::clone(&writer)));
        id
    };
    let mut reader = stream;
    let write = |bytes: Vec<u8>| writer.lock().unwrap().write_all(&bytes).is_ok();
    while let Ok(pdu) = read_pdu(&mut reader) {
        let header = CommandHeader::decode(&pdu).expect("a well-formed SMPP header");
        let sequence_number = header.sequence_number;
        let go_on = match header.command_id {
            BIND_TRANSCEIVER => {
                let bind = bind_transceiver::decode(header, &pdu).expect("a bind_transceiver");
                let accepted = bind.system_id == SYSTEM_ID && bind.password == PASSWORD;
                shared.update(|s| {
                    s.binds.push(Bind {
                        system_id: bind.system_id.clone(),
                        password: bind.password.clone(),
                        interface_version: bind.interface_version,
                        accepted,
                    })
                });
                let response = if accepted {
                    bind.accept("TESTSMSC".to_string(), Some(0x34)).encode()
                } else {
                    bind.reject(SmppError::ESME_RINVPASWD).encode()
                };
                write(response) && accepted
            }
            ENQUIRE_LINK => write(
                enquire_link::decode(header, &pdu)
                    .expect("an enquire_link")
                    .accept()
                    .encode(),
            ),
            SUBMIT_SM => submit(
                shared,
                submit_sm::decode(header, &pdu).expect("a submit_sm"),
                &write,
            ),
            UNBIND => {
                write(header_only(UNBIND_RESP, 0, sequence_number));
                false
            }
            DELIVER_SM_RESP => {
                shared.update(|s| s.receipts_acknowledged += 1);
                true
            }
            _ => write(header_only(
                GENERIC_NACK,
                SmppError::ESME_RINVCMDID as u32,
                sequence_number,
            )),
        };
        if !go_on {
            break;
        }
    }
    let _ = writer.lock().unwrap().shutdown(Shutdown::Both);
    shared.update(|s| s.sessions.retain(|(i, _)| *i != id));
}

/// Answers a submit_sm as planned; false when the connection is to be dropped.
fn submit(shared: &Shared, request: submit_sm, write: &dyn Fn(Vec<u8>) -> bool) -> bool {
    let mut answer = Answer::Accept;
    let mut message_id = String::new();
    shared.update(|s| {
        s.submits += 1;
        answer = s.plan.pop_front().unwrap_or(Answer::Accept);
        if answer == Answer::Accept {
            s.next_message_id += 1;
            message_id = format!("{:08X}", s.next_message_id);
            s.accepted.push(Segment {
                message_id: message_id.clone(),
                to: request.destination_addr.clone(),
                source: request.source_addr.clone(),
                esm_class: request.esm_class,
                data_coding: request.data_coding,
                registered_delivery: request.registered_delivery,
                short_message: request.short_message.clone(),
            });
        }
    });
    match answer {
        Answer::Accept => write(request.accept(message_id).encode()),
        Answer::Throttle => write(request.reject(SmppError::ESME_RTHROTTLED).encode()),
        Answer::Drop => false,
        Answer::Stall => true,
    }
}

fn ucs2(bytes: &[u8]) -> String {
    assert!(bytes.len() % 2 == 0, "UCS-2 has an even number of octets");
    char::decode_utf16(
        bytes
            .chunks(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]])),
    )
    .map(|c| c.expect("valid UCS-2"))
    .collect()
}

/// (reference, total, sequence) from a UDH with the 8-bit concatenation IE, and the payload.
fn concatenation(short_message: &[u8]) -> ((u8, u8, u8), &[u8]) {
    let udh_length = short_message[0] as usize;
    let mut ies = &short_message[1..1 + udh_length];
    let mut found = None;
    while ies.len() >= 2 {
        let (tag, length) = (ies[0], ies[1] as usize);
        if tag == 0x00 && length == 3 {
            found = Some((ies[2], ies[3], ies[4]));
        }
        ies = &ies[2 + length..];
    }
    (
        found.expect("the concatenation IE 00 in the UDH"),
        &short_message[1 + udh_length..],
    )
}

/// Segments received so far of one concatenated message, by sequence: (message id, payload).
type Parts = BTreeMap<u8, (String, Vec<u8>)>;

pub fn reassemble(segments: &[Segment]) -> Vec<Sms> {
    let mut open: BTreeMap<(String, u8), Parts> = BTreeMap::new();
    let mut whole = Vec::new();
    for segment in segments {
        assert_eq!(segment.data_coding, DATA_CODING_UCS2, "UCS-2: {segment:?}");
        assert_eq!(segment.source, SOURCE);
        assert_eq!(
            segment.registered_delivery & 0x03,
            0x01,
            "a receipt is asked for"
        );
        if segment.esm_class & ESM_CLASS_UDHI == 0 {
            assert!(segment.short_message.len() <= 140);
            whole.push(Sms {
                to: segment.to.clone(),
                text: ucs2(&segment.short_message),
                message_ids: vec![segment.message_id.clone()],
            });
            continue;
        }
        let ((reference, total, sequence), payload) = concatenation(&segment.short_message);
        assert!(payload.len() <= 134, "67 UCS-2 chars at most after the UDH");
        let parts = open.entry((segment.to.clone(), reference)).or_default();
        let earlier = parts.insert(sequence, (segment.message_id.clone(), payload.to_vec()));
        assert!(
            earlier.is_none(),
            "segment {sequence} of {reference} accepted twice"
        );
        if parts.len() == usize::from(total) {
            let parts = open
                .remove(&(segment.to.clone(), reference))
                .expect("just filled");
            whole.push(Sms {
                to: segment.to.clone(),
                text: ucs2(
                    &parts
                        .values()
                        .flat_map(|(_, p)| p.clone())
                        .collect::<Vec<_>>(),
                ),
                message_ids: parts.into_values().map(|(id, _)| id).collect(),
            });
        }
    }
    assert!(
        open.is_empty(),
        "incomplete concatenated messages: {open:?}"
    );
    whole
}

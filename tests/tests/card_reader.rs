//! Black-box tests of the `card-reader` CLI against the real server (manual clock, SMS outbox)
//! and a real PC/SC stack: Debian's `pcscd` with the `vpcd` virtual reader driver
//! (vsmartcard-vpcd), and a contactless card played by this test over vpcd's socket protocol.
//! Settlement by SMS (codes read from the outbox and piped to the CLI's stdin) and by hardware
//! token (codes from `oathtool`), wrong codes, resends, refusals, and swipes resumed from the
//! terminal's journal after the server was unreachable or its answer was lost.
//!
//! pcscd has one socket per machine (`/run/pcscd/pcscd.comm`), so every scenario that needs it
//! runs inside the one test function that starts it; the others pass the UID with
//! `--card-uid` (a phone that read the card over NFC itself) or point PC/SC at an absent
//! socket, and run beside it.

use e2e::city::{id_number, sms_code, City};
use e2e::{bin, Server};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The server's manual clock: 08:00 on 2 March 2026 in UTC+08:00.
const START: &str = "2026-03-02T00:00:00Z";
/// RFC 6238's SHA1 seed "12345678901234567890", in base32.
const TOKEN_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
/// The phone every `City::elder` has, as the server masks it.
const PHONE_HINT: &str = "138****5678";
/// How long a CLI run, a pcscd start or an expected line may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for another pcscd (one socket per machine) to exit.
const PCSCD_BUSY_TIMEOUT: Duration = Duration::from_secs(300);
/// A contactless (PC/SC Part 3) card's ATR: MIFARE-class storage card.
const ATR: [u8; 20] = [
    0x3B, 0x8F, 0x80, 0x01, 0x80, 0x4F, 0x0C, 0xA0, 0x00, 0x00, 0x03, 0x06, 0x03, 0x00, 0x01, 0x00,
    0x00, 0x00, 0x00, 0x6A,
];

// ---------------------------------------------------------------------------------------
// pcscd and the card

/// `pcscd --foreground` with a private reader.conf.d holding one vpcd reader on a free port
/// (vpcd listens there; a card connects to it). Stopped with SIGTERM on drop, so it removes
/// its socket and pid file.
struct Pcscd {
    child: Child,
    /// vpcd's first slot; the second listens on `port + 1`.
    port: u16,
    _conf: tempfile::TempDir,
}

/// A port free on every address, with the next one free too (vpcd opens two slots).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind("0.0.0.0:0").expect("a free port");
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("0.0.0.0", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports");
}

impl Pcscd {
    /// Starts pcscd; while another one runs (another test run on this machine), waits for it
    /// to exit, up to `PCSCD_BUSY_TIMEOUT`.
    fn start() -> Pcscd {
        let conf = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        std::fs::write(
            conf.path().join("vpcd"),
            format!(
                "FRIENDLYNAME \"Virtual PCD\"\nDEVICENAME /dev/null:0x{port:04X}\n\
                 LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID 0x{port:04X}\n"
            ),
        )
        .unwrap();
        let busy_until = Instant::now() + PCSCD_BUSY_TIMEOUT;
        loop {
            match spawn_pcscd(conf.path()) {
                Ok(child) => {
                    return Pcscd {
                        child,
                        port,
                        _conf: conf,
                    }
                }
                Err(log) if log.contains("Another pcscd") && Instant::now() < busy_until => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(log) => panic!(
                    "pcscd --foreground did not get ready. If another pcscd runs, stop it \
                     (`kill $(cat /run/pcscd/pcscd.pid)`); to try by hand: \
                     `pcscd --foreground --info`. Its output:\n{log}"
                ),
            }
        }
    }
}

/// `pcscd --foreground --info --config DIR`, once it says it is ready; its output otherwise.
fn spawn_pcscd(conf: &Path) -> Result<Child, String> {
    let mut child = Command::new("pcscd")
        .args(["--foreground", "--info", "--config"])
        .arg(conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run pcscd ({e}): install the PC/SC stack with \
                 `apt-get install pcscd vsmartcard-vpcd libpcsclite-dev pkg-config`"
            )
        });
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut log = Vec::new();
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("daemon ready") => break,
            Ok(line) => log.push(line),
            // It exited (its pipes closed), or never got ready.
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(log.join("\n"));
            }
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    // "ready" has been seen to come before a client could connect (once in a loaded full
    // run): wait until the socket the clients use accepts a connection.
    let socket = Path::new("/run/pcscd/pcscd.comm");
    let deadline = Instant::now() + STEP_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{} never accepted a connection", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the played card answers GET UID.
#[derive(Clone)]
enum Answer {
    Uid(Vec<u8>),
    /// An error status word.
    Status([u8; 2]),
    /// Leaves the field: closes the connection instead of answering.
    Vanish,
}

/// A contactless card in vpcd's reader: connects to vpcd's port and answers its messages
/// (2-byte big-endian length, then the payload; 1-byte payloads are control: 0 off, 1 on,
/// 2 reset, 4 ATR; longer ones are APDUs). Removed on drop.
///
/// vpcd takes one card per slot and notices a removal only at its next poll, so `insert`
/// returns once vpcd has taken this card (its first message arrived): a card swapped in
/// before then would be read as the card just removed.
struct VirtualCard {
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
}

impl VirtualCard {
    fn insert(port: u16, answer: Answer) -> VirtualCard {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("vpcd listens");
        let mut reader = stream.try_clone().unwrap();
        let (taken, in_reader) = mpsc::channel();
        let thread = std::thread::spawn(move || play(&mut reader, &answer, &taken));
        in_reader
            .recv_timeout(STEP_TIMEOUT)
            .expect("vpcd takes the card (sends its first message)");
        VirtualCard {
            stream,
            thread: Some(thread),
        }
    }
}

fn play(stream: &mut TcpStream, answer: &Answer, taken: &mpsc::Sender<()>) {
    let send = |stream: &mut TcpStream, payload: &[u8]| {
        let len = u16::try_from(payload.len()).unwrap().to_be_bytes();
        let _ = stream.write_all(&[&len[..], payload].concat());
    };
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut payload).is_err() {
            return;
        }
        let _ = taken.send(());
        match payload.as_slice() {
            [0x04] => send(stream, &ATR),
            [_] => {}
            [0xFF, 0xCA, 0x00, 0x00, ..] => match answer {
                Answer::Uid(uid) => send(stream, &[uid.as_slice(), &[0x90, 0x00]].concat()),
                Answer::Status(sw) => send(stream, sw),
                Answer::Vanish => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            },
            _ => send(stream, &[0x6D, 0x00]),
        }
    }
}

impl Drop for VirtualCard {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn uid_bytes(uid: &str) -> Vec<u8> {
    (0..uid.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&uid[i..i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The CLI

/// A finished run of the CLI.
#[derive(Debug)]
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

/// The terminal's setting for one provider: its key (in the environment, as a field worker's
/// phone would hold it) and its journal.
struct Terminal {
    key: String,
    journal: PathBuf,
    home: PathBuf,
}

impl Terminal {
    fn new(key: &str, dir: &Path) -> Terminal {
        Terminal {
            key: key.to_string(),
            journal: dir.join("journal/pending.jsonl"),
            home: dir.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("card-reader"));
        command
            .args(args)
            .env("LEDGER_KEY", &self.key)
            .env("CARD_READER_JOURNAL", &self.journal)
            .env("HOME", &self.home)
            .env_remove("LEDGER_SERVER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs to the end with `input` on stdin.
    fn run(&self, args: &[&str], input: &str) -> Run {
        let mut session = self.start(args);
        session.send(input);
        session.finish()
    }

    /// Starts an interactive run.
    fn start(&self, args: &[&str]) -> Session {
        Session::spawn(self.command(args), &self.key)
    }

    /// The journal's lines.
    fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("journal lines are JSON"))
            .collect()
    }
}

/// A running CLI: stdin to write answers, stderr read line by line.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stdout: JoinHandle<String>,
    key: String,
}

impl Session {
    fn spawn(mut command: Command, key: &str) -> Session {
        let mut child = command.spawn().expect("starting card-reader");
        let stdin = child.stdin.take();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let all = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                all.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        Session {
            child,
            stdin,
            lines,
            stderr,
            stdout,
            key: key.to_string(),
        }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "card-reader never said {needle:?}; its stderr:\n{}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin and waits for the exit.
    fn finish(mut self) -> Run {
        drop(self.stdin.take());
        let deadline = Instant::now() + STEP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "card-reader did not exit within {STEP_TIMEOUT:?}; its stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.join().unwrap();
        // The stderr reader ends with the pipe; give it the last lines.
        while self.lines.recv_timeout(Duration::from_secs(5)).is_ok() {}
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(
            !stdout.contains(&self.key) && !stderr.contains(&self.key),
            "the key must never be printed"
        );
        Run {
            status: status.code().unwrap_or(-1),
            stdout,
            stderr,
        }
    }
}

/// The charge id in the CLI's "(charge C…, …)" line.
fn charge_in(line: &str) -> String {
    let after = line.split("(charge ").nth(1).expect("a charge id");
    after.split(',').next().unwrap().to_string()
}

/// A 6-digit code that is not `code`.
fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

// ---------------------------------------------------------------------------------------
// The city

/// Registers (one staff key), approves (the other), cards and tokens an elder without a
/// phone; returns (elder id, card uid).
fn token_elder(c: &City, seq: u32) -> (String, String) {
    let s = &c.s;
    let body = json!({"name": "测试老人", "gender": "M",
        "id_number": id_number("130102", "19450607", seq), "district": "130102",
        "street": "建北街道", "address": "建北街2号", "categories": ["dibao"]});
    let id = s.expect(s.post("/v1/elders", &c.staff, body), 201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.expect(
        s.post(&format!("/v1/elders/{id}/approve"), &c.staff2, json!({})),
        200,
    );
    let uid = format!("04A1B2C3D4{seq:04X}");
    s.expect(
        s.post(
            &format!("/v1/elders/{id}/cards"),
            &c.staff,
            json!({"uid": uid}),
        ),
        201,
    );
    let token = json!({"serial": "TK0001", "secret": TOKEN_SECRET, "digits": 6,
        "period": 30, "algorithm": "SHA1"});
    s.expect(
        s.post(&format!("/v1/elders/{id}/tokens"), &c.staff, token),
        201,
    );
    (id, uid)
}

/// A new order for `elder`, accepted and (unless `price` is `None`) agreed by P001.
fn order(c: &City, elder: &str, price: Option<&str>) -> String {
    let s = &c.s;
    let body = json!({"elder_id": elder, "item_code": "DC001"});
    let id = s.expect(s.post("/v1/orders", &c.staff, body), 201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.expect(
        s.post(&format!("/v1/orders/{id}/accept"), &c.provider, json!({})),
        200,
    );
    if let Some(price) = price {
        s.expect(
            s.post(
                &format!("/v1/orders/{id}/agree"),
                &c.provider,
                json!({"price": price}),
            ),
            200,
        );
    }
    id
}

fn issue_march(c: &City) {
    let s = &c.s;
    s.expect(
        s.post("/v1/periods/2026-03/issue", &s.admin_key, json!({})),
        200,
    );
}

fn get(s: &Server, path: &str) -> Value {
    s.expect(s.get(path, &s.admin_key), 200)
}

/// The SMS sent for `charge`.
fn sms_count(s: &Server, charge: &str) -> usize {
    std::fs::read_to_string(s.data.join("sms-outbox.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["charge_id"] == charge)
        .count()
}

/// The TOTP code at the server's manual time `at` ("YYYY-MM-DD HH:MM:SS UTC"), by oathtool.
fn totp(at: &str) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", "-N", at, TOKEN_SECRET])
        .output()
        .expect("oathtool is installed (Debian package oathtool)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Checks a confirmed swipe's output: the receipt on stdout is the server's.
fn assert_receipt(s: &Server, run: &Run, charge: &str, amount: &str) {
    assert_eq!(run.status, 0, "{run:?}");
    let charge = get(s, &format!("/v1/charges/{charge}"));
    assert_eq!(charge["status"], "confirmed");
    let no = charge["receipt_no"].as_str().unwrap();
    let receipt = get(s, &format!("/v1/receipts/{no}"));
    assert_eq!(receipt["amount"], amount);
    for part in [
        format!("Receipt no : {no}"),
        format!("Amount     : {amount} 元"),
        "Provider : P001".to_string(),
        format!("Time       : {}", receipt["confirmed_at"].as_str().unwrap()),
        format!("QR: {}", receipt["qr"].as_str().unwrap()),
    ] {
        assert!(run.stdout.contains(&part), "{part:?} in\n{}", run.stdout);
    }
    assert!(
        run.stdout.contains('▀') || run.stdout.contains('▄'),
        "a QR code"
    );
}

// ---------------------------------------------------------------------------------------
// Tests

/// The scenarios run one at a time: under load, pcscd's start-up raced the neighbouring
/// scenarios' CLI runs and the reader saw no daemon (seen in a full-suite run).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn a_card_on_a_real_pcsc_stack_is_read_and_settled_by_sms_and_by_token() {
    let _serial = serial();
    let c = City::new(START);
    let (phone_elder, phone_card) = c.elder(1, json!(["sanwu"]));
    let (token_elder, token_card) = token_elder(&c, 2);
    issue_march(&c);
    let dir = tempfile::tempdir().unwrap();
    let t = Terminal::new(&c.provider, dir.path());
    let server = format!("--server=http://{}", c.s.addr);
    let pcscd = Pcscd::start();

    let readers = t.run(&["readers"], "");
    assert_eq!(readers.status, 0, "{readers:?}");
    assert!(readers.stdout.contains("Virtual PCD"), "{readers:?}");

    // No card: a clear message after the wait, not a hang.
    let none = t.run(&["read-uid", "--wait=1"], "");
    assert_eq!(none.status, 3, "{none:?}");
    assert!(
        none.stderr.contains("no card on the reader after 1 s"),
        "{none:?}"
    );

    let card = VirtualCard::insert(pcscd.port, Answer::Uid(uid_bytes(&phone_card)));
    let read = t.run(&["read-uid", "--wait=20"], "");
    assert_eq!(
        (read.status, read.stdout.trim()),
        (0, phone_card.as_str()),
        "{read:?}"
    );
    drop(card);

    let card = VirtualCard::insert(pcscd.port, Answer::Status([0x6A, 0x82]));
    let refused = t.run(&["read-uid", "--wait=20"], "");
    assert_eq!(refused.status, 3, "{refused:?}");
    assert!(refused.stderr.contains("status 6A82"), "{refused:?}");
    drop(card);

    let card = VirtualCard::insert(pcscd.port, Answer::Vanish);
    let vanished = t.run(&["read-uid", "--wait=20"], "");
    assert_eq!(vanished.status, 3, "{vanished:?}");
    assert!(
        vanished.stderr.contains("the card was removed"),
        "{vanished:?}"
    );
    drop(card);

    // SMS: a wrong code (attempts left), a resend too soon and one a minute later, the code.
    let sms_order = order(&c, &phone_elder, Some("50"));
    let card = VirtualCard::insert(pcscd.port, Answer::Uid(uid_bytes(&phone_card)));
    let mut session = t.start(&["charge", "--order", &sms_order, &server, "--wait=20"]);
    session.expect(&format!("Order {sms_order}: "));
    session.send("y\n");
    session.expect(&format!("Card UID {phone_card}"));
    let line = session.expect(&format!("sent to the elder's phone {PHONE_HINT}"));
    let charge = charge_in(&line);
    let code = sms_code(&c.s, &charge);
    session.send(&format!("{}\n", wrong(&code)));
    session.expect("wrong code: 4 attempts left");
    session.send("r\n");
    session.expect("resend_limited");
    c.s.set_clock("2026-03-02T00:01:01Z");
    session.send("r\n");
    session.expect("a new code was sent");
    let code = sms_code(&c.s, &charge);
    session.send(&format!("{code}\n"));
    let run = session.finish();
    assert_receipt(&c.s, &run, &charge, "50.00");
    assert_eq!(sms_count(&c.s, &charge), 2);
    drop(card);

    // Token: the elder has no phone; the CLI says to read the token, oathtool plays it.
    let token_order = order(&c, &token_elder, Some("30"));
    let card = VirtualCard::insert(pcscd.port, Answer::Uid(uid_bytes(&token_card)));
    let mut session = t.start(&["charge", "--order", &token_order, &server, "--yes"]);
    let line = session.expect("hardware token");
    let charge = charge_in(&line);
    session.send(&format!("{}\n", totp("2026-03-02 00:01:01 UTC")));
    let run = session.finish();
    assert_receipt(&c.s, &run, &charge, "30.00");
    assert_eq!(sms_count(&c.s, &charge), 0);
    drop(card);

    let balance = get(&c.s, &format!("/v1/elders/{phone_elder}/balance?year=2026"));
    assert_eq!(
        (balance["spent"].as_str(), balance["held"].as_str()),
        (Some("50.00"), Some("0.00"))
    );
    let finished = t
        .journal()
        .iter()
        .filter(|e| e["event"] == "finished")
        .count();
    assert_eq!(finished, 2, "{:?}", t.journal());
}

/// What the proxy does with `POST /v1/charges` (everything else it relays).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Charges {
    Relay,
    /// Closes the connection without forwarding: the charge never reaches the server.
    Refuse,
    /// Forwards, waits for the answer, and closes without passing it on: the charge is
    /// placed and the terminal never hears so.
    LoseAnswer,
}

/// A TCP proxy in front of the server, switchable between the `Charges` behaviours.
struct Proxy {
    addr: String,
    charges: Arc<Mutex<Charges>>,
}

impl Proxy {
    fn start(server: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let charges = Arc::new(Mutex::new(Charges::Relay));
        let (server, mode) = (server.to_string(), Arc::clone(&charges));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (server, mode) = (server.clone(), Arc::clone(&mode));
                std::thread::spawn(move || relay(client, &server, &mode));
            }
        });
        Proxy { addr, charges }
    }

    fn set(&self, charges: Charges) {
        *self.charges.lock().unwrap() = charges;
    }

    fn url(&self) -> String {
        format!("--server=http://{}", self.addr)
    }
}

fn relay(mut client: TcpStream, server: &str, mode: &Mutex<Charges>) {
    let mut upstream: Option<TcpStream> = None;
    while let Some(request) = read_message(&mut client) {
        let charge = request.starts_with(b"POST /v1/charges ");
        let mode = *mode.lock().unwrap();
        if charge && mode == Charges::Refuse {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        let up = upstream.get_or_insert_with(|| TcpStream::connect(server).unwrap());
        up.write_all(&request).unwrap();
        let Some(response) = read_message(up) else {
            return;
        };
        if charge && mode == Charges::LoseAnswer {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        if client.write_all(&response).is_err() {
            return;
        }
    }
}

/// One HTTP/1.1 message (request or response): head and a Content-Length body.
fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = stream.read(&mut buffer).ok().filter(|n| *n > 0)?;
        bytes.extend_from_slice(&buffer[..n]);
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if bytes.len() >= end + 4 + length {
            return Some(bytes);
        }
    }
}

#[test]
fn a_charge_that_never_arrived_or_whose_answer_was_lost_is_resumed_and_charged_once() {
    let _serial = serial();
    let c = City::new(START);
    let (elder, card) = c.elder(1, json!(["sanwu"]));
    issue_march(&c);
    let dir = tempfile::tempdir().unwrap();
    let t = Terminal::new(&c.provider, dir.path());
    let server = format!("--server=http://{}", c.s.addr);
    let proxy = Proxy::start(&c.s.addr);

    // No server at all: a clear message after bounded retries; nothing was journalled.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let first = order(&c, &elder, Some("20"));
    let down = t.run(
        &[
            "charge",
            "--order",
            &first,
            &format!("--server=http://{closed}"),
            "--card-uid",
            &card,
            "--yes",
        ],
        "",
    );
    assert_eq!(down.status, 5, "{down:?}");
    assert!(
        down.stderr.contains("cannot reach the ledger server"),
        "{down:?}"
    );
    assert!(t.journal().is_empty(), "{:?}", t.journal());

    // The charge request never arrives: journalled first, so `resume` places and finishes it.
    proxy.set(Charges::Refuse);
    let run = t.run(
        &[
            "charge",
            "--order",
            &first,
            &proxy.url(),
            "--card-uid",
            &card,
            "--yes",
        ],
        "",
    );
    assert_eq!(run.status, 5, "{run:?}");
    assert!(run.stderr.contains("card-reader resume"), "{run:?}");
    let journal = t.journal();
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0]["event"], "started");
    assert_eq!(journal[0]["request"]["order_id"], first.as_str());
    let key = journal[0]["key"].as_str().unwrap().to_string();
    assert!(get(&c.s, &format!("/v1/orders/{first}"))["charge_id"].is_null());
    let pending = t.run(&["pending"], "");
    assert!(pending.stdout.contains(&key), "{pending:?}");

    let mut session = t.start(&["resume", &server]);
    let line = session.expect(&format!("sent to the elder's phone {PHONE_HINT}"));
    let charge = charge_in(&line);
    session.send(&format!("{}\n", sms_code(&c.s, &charge)));
    let run = session.finish();
    assert_receipt(&c.s, &run, &charge, "20.00");
    assert_eq!(t.run(&["pending"], "").stdout, "");

    // The charge is placed but its answer is lost, on every retry: `resume` repeats the request
    // under the same key, learns the same charge (no second hold, no second SMS) and finishes.
    proxy.set(Charges::LoseAnswer);
    let second = order(&c, &elder, Some("25"));
    let run = t.run(
        &[
            "charge",
            "--order",
            &second,
            &proxy.url(),
            "--card-uid",
            &card,
            "--yes",
        ],
        "",
    );
    assert_eq!(run.status, 5, "{run:?}");
    let placed = get(&c.s, &format!("/v1/orders/{second}"))["charge_id"]
        .as_str()
        .expect("the server placed the charge")
        .to_string();
    assert_eq!(sms_count(&c.s, &placed), 1);
    let mut session = t.start(&["resume", "--order", &second, &server]);
    let line = session.expect(&format!("sent to the elder's phone {PHONE_HINT}"));
    assert_eq!(charge_in(&line), placed);
    session.send(&format!("{}\n", sms_code(&c.s, &placed)));
    let run = session.finish();
    assert_receipt(&c.s, &run, &placed, "25.00");
    assert_eq!(sms_count(&c.s, &placed), 1, "a replay sends no second SMS");

    let balance = get(&c.s, &format!("/v1/elders/{elder}/balance?year=2026"));
    assert_eq!(balance["spent"], "45.00");
    assert_eq!(balance["held"], "0.00");

    // Both swipes end `finished`, each under its own key.
    let journal = t.journal();
    let finished: Vec<&Value> = journal
        .iter()
        .filter(|e| e["event"] == "finished")
        .collect();
    assert_eq!(finished.len(), 2, "{journal:?}");
    assert_ne!(finished[0]["key"], finished[1]["key"]);
    assert!(
        finished.iter().all(|e| e["outcome"] == "confirmed"),
        "{journal:?}"
    );
}

#[test]
fn refusals_are_explained_and_a_pending_swipe_can_be_cancelled() {
    let _serial = serial();
    let c = City::new(START);
    let (elder, card) = c.elder(1, json!(["sanwu"]));
    let (_, other_card) = c.elder(2, json!(["dibao"]));
    issue_march(&c);
    let dir = tempfile::tempdir().unwrap();
    let t = Terminal::new(&c.provider, dir.path());
    let server = format!("--server=http://{}", c.s.addr);

    // Input ends before the code: the charge stays pending, then `resume --cancel` voids it.
    let agreed = order(&c, &elder, Some("40"));
    let run = t.run(
        &[
            "charge",
            "--order",
            &agreed,
            &server,
            "--card-uid",
            &card,
            "--yes",
        ],
        "",
    );
    assert_eq!(run.status, 5, "{run:?}");
    assert!(
        run.stderr.contains("card-reader resume --cancel"),
        "{run:?}"
    );
    let charge = get(&c.s, &format!("/v1/orders/{agreed}"))["charge_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&c.s, &format!("/v1/elders/{elder}/balance?year=2026"))["held"],
        "40.00"
    );
    let run = t.run(&["resume", "--cancel", &server], "");
    assert_eq!(run.status, 0, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("charge {charge} is cancelled")),
        "{run:?}"
    );
    assert_eq!(
        get(&c.s, &format!("/v1/charges/{charge}"))["status"],
        "voided"
    );
    assert_eq!(
        get(&c.s, &format!("/v1/elders/{elder}/balance?year=2026"))["held"],
        "0.00"
    );
    let run = t.run(&["resume", &server], "");
    assert!(run.stderr.contains("no unfinished swipes"), "{run:?}");

    // A code given with --code (7 digits: never an SMS code); the order is open again after
    // the void.
    let run = t.run(
        &[
            "charge",
            "--order",
            &agreed,
            &server,
            "--card-uid",
            &card,
            "--yes",
            "--code=0000000",
            "--amount=39.5",
        ],
        "",
    );
    assert_eq!(run.status, 5, "{run:?}");
    assert!(
        run.stderr.contains("wrong code: 4 attempts left"),
        "{run:?}"
    );
    let _ = t.run(&["resume", "--cancel", &server], "");

    // Refusals by the server: the binding code, what it means, exit 4, nothing left pending.
    for (args, code, meaning) in [
        (
            vec!["--card-uid", other_card.as_str()],
            "card_mismatch",
            "不属于该订单的老人",
        ),
        (
            vec!["--card-uid", card.as_str(), "--amount=41"],
            "amount_over_agreed",
            "above the price agreed",
        ),
    ] {
        let mut all = vec!["charge", "--order", &agreed, &server, "--yes"];
        all.extend(args);
        let run = t.run(&all, "");
        assert_eq!(run.status, 4, "{run:?}");
        assert!(
            run.stderr.contains(code) && run.stderr.contains(meaning),
            "{run:?}"
        );
    }
    let accepted = order(&c, &elder, None);
    let run = t.run(
        &[
            "charge",
            "--order",
            &accepted,
            &server,
            "--card-uid",
            &card,
            "--yes",
        ],
        "",
    );
    assert_eq!(run.status, 4, "{run:?}");
    assert!(
        run.stderr.contains("only an agreed order can be charged"),
        "{run:?}"
    );
    let run = t.run(
        &[
            "charge",
            "--order",
            &agreed,
            &server,
            "--card-uid",
            &card,
            "--amount=5.555",
            "--yes",
        ],
        "",
    );
    assert_eq!(run.status, 1, "{run:?}");
    assert!(run.stderr.contains("invalid amount"), "{run:?}");
    let wrong_key = Terminal::new("lk_wrong_key", dir.path());
    let run = wrong_key.run(
        &[
            "charge",
            "--order",
            &agreed,
            &server,
            "--card-uid",
            &card,
            "--yes",
        ],
        "",
    );
    assert_eq!(run.status, 4, "{run:?}");
    assert!(run.stderr.contains("unauthorized"), "{run:?}");
    let run = t.run(
        &["charge", "--order", &agreed, "--card-uid", &card, "--yes"],
        "",
    );
    assert_eq!(run.status, 1, "{run:?}");
    assert!(run.stderr.contains("LEDGER_SERVER"), "{run:?}");
    assert_eq!(t.run(&["pending"], "").stdout, "");
}

#[test]
fn without_pcscd_the_reader_fails_at_once_saying_how_to_start_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = Terminal::new("lk_unused", dir.path());
    let absent = dir.path().join("no-pcscd/pcscd.comm");
    for args in [
        vec!["readers"],
        vec!["read-uid", "--wait=600"],
        vec![
            "charge",
            "--order=O1",
            "--server=http://127.0.0.1:9",
            "--yes",
        ],
    ] {
        let began = Instant::now();
        let mut command = t.command(&args);
        // pcsc-lite's client finds the daemon through this socket path.
        command.env("PCSCLITE_CSOCK_NAME", &absent);
        let run = Session::spawn(command, "lk_unused").finish();
        assert_eq!(run.status, 3, "{run:?}");
        assert!(run.stderr.contains("pcscd is not running"), "{run:?}");
        assert!(run.stderr.contains("pcscd --foreground"), "{run:?}");
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{:?}",
            began.elapsed()
        );
    }
}

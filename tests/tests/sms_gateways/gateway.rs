//! A test HTTP SMS gateway on 127.0.0.1: reads each POST (one per connection; it answers
//! `Connection: close`), checks `X-Ledger-Signature` against its own HMAC-SHA256 of the body
//! under [`KEY`], records what came, and answers as planned (200 by default, 401 for a bad
//! signature). It can go down and come back on the same port.

use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The key the server under test gets in `LEDGER_SMS_HMAC_KEY`.
pub const KEY: &str = "test-gateway-key-2026";
const WAIT: Duration = Duration::from_secs(20);
const BODY_OCTETS_MAX: usize = 64 * 1024;

/// One POST as the gateway saw it.
#[derive(Debug, Clone)]
pub struct Post {
    pub path: String,
    pub content_type: String,
    pub signature_ok: bool,
    pub idempotency_key: String,
    pub body: Value,
    pub status: u16,
}

#[derive(Default)]
struct State {
    up: bool,
    plan: VecDeque<u16>,
    posts: Vec<Post>,
}

pub struct Gateway {
    port: u16,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn signature(body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

impl Gateway {
    pub fn start() -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the test gateway");
        let gateway = Gateway {
            port: listener.local_addr().unwrap().port(),
            state: Arc::default(),
        };
        gateway.listen(listener);
        gateway
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/sms", self.port)
    }

    fn listen(&self, listener: TcpListener) {
        lock(&self.state).up = true;
        let state = Arc::clone(&self.state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if !lock(&state).up {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&state);
                std::thread::spawn(move || serve(&state, stream));
            }
        });
    }

    pub fn stop(&self) {
        lock(&self.state).up = false;
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "the test gateway did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn resume(&self) {
        let listener =
            TcpListener::bind(("127.0.0.1", self.port)).expect("binding the test gateway again");
        self.listen(listener);
    }

    /// Statuses for the next POSTs, in order; then 200.
    pub fn plan(&self, statuses: &[u16]) {
        lock(&self.state).plan.extend(statuses);
    }

    pub fn posts(&self) -> Vec<Post> {
        lock(&self.state).posts.clone()
    }
}

fn serve(state: &Mutex<State>, stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().expect("cloning a TCP stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() || request_line.is_empty() {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a header line");
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("name: value");
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().expect("a Content-Length");
    assert!(length <= BODY_OCTETS_MAX);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("the body");
    let mut parts = request_line.split(' ');
    assert_eq!(parts.next(), Some("POST"), "{request_line}");
    let path = parts.next().unwrap_or_default().to_string();
    let signature_ok = header("x-ledger-signature") == signature(&body);
    let status = {
        let mut s = lock(state);
        let planned = s.plan.pop_front().unwrap_or(200);
        let status = if signature_ok { planned } else { 401 };
        s.posts.push(Post {
            path,
            content_type: header("content-type"),
            signature_ok,
            idempotency_key: header("idempotency-key"),
            body: serde_json::from_slice(&body).expect("a JSON body"),
            status,
        });
        status
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

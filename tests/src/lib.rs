//! Helpers for the black-box tests: build the real binaries once, start `ledger-server` on
//! 127.0.0.1:0 with a temp data dir and a manual clock, read its address from the
//! `listening on` line, talk HTTP to it, and kill it on drop.

pub mod city;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_path_buf()
}

/// Builds the workspace's binaries (debug) once per test process and returns the bin dir.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "ledger-server",
                "-p",
                "ledger-core",
                "-p",
                "card-reader",
                "--bins",
            ])
            .status()
            .expect("running cargo build for the binaries under test");
        assert!(status.success(), "building the binaries under test failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug")
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A response: status and JSON body (or the raw text as a JSON string when not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// The binding error code, if this is an error envelope.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub data: PathBuf,
    pub admin_key: String,
    /// The server's stderr log, when started with [`Server::start_logged`].
    pub log: Option<PathBuf>,
    client: reqwest::blocking::Client,
    _dir: Option<tempfile::TempDir>,
}

/// Runs `ledger-server init` on a fresh temp dir and returns (dir, admin key).
pub fn init() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let out = Command::new(bin("ledger-server"))
        .args(["init", "--data"])
        .arg(&data)
        .output()
        .expect("running ledger-server init");
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).expect("init prints one JSON line");
    let key = line["admin_key"].as_str().expect("admin_key").to_string();
    (dir, key)
}

impl Server {
    /// A new store with `serve --clock manual:START`.
    pub fn start(start: &str) -> Server {
        let (dir, key) = init();
        let data = dir.path().join("data");
        let mut server = Server::serve(&data, &key, &[&format!("--clock=manual:{start}")]);
        server._dir = Some(dir);
        server
    }

    /// Like [`Server::start`], with the server's stderr (at `RUST_LOG=debug`) written to a
    /// file beside the data dir, so a test can read what the server logged.
    pub fn start_logged(start: &str) -> Server {
        let (dir, key) = init();
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let mut server = Server::serve_with(
            &data,
            &key,
            &[&format!("--clock=manual:{start}")],
            Some(&log),
        );
        server._dir = Some(dir);
        server
    }

    /// Serves an existing store with extra arguments.
    pub fn serve(data: &Path, admin_key: &str, args: &[&str]) -> Server {
        Server::serve_with(data, admin_key, args, None)
    }

    fn serve_with(data: &Path, admin_key: &str, args: &[&str], log: Option<&Path>) -> Server {
        let mut command = Command::new(bin("ledger-server"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .stdout(Stdio::piped());
        match log {
            Some(path) => {
                let file = std::fs::File::create(path).expect("creating the server log");
                command.env("RUST_LOG", "debug").stderr(file)
            }
            None => command.stderr(Stdio::inherit()),
        };
        let mut child = command.spawn().expect("starting ledger-server serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("ledger-server did not print `listening on` within {START_TIMEOUT:?}");
            }
        };
        Server {
            child: Some(child),
            addr,
            data: data.to_path_buf(),
            admin_key: admin_key.to_string(),
            log: log.map(Path::to_path_buf),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
            _dir: None,
        }
    }

    /// Stops the server (SIGKILL) and serves the same store again with `args`.
    pub fn restart(mut self, args: &[&str]) -> Server {
        self.stop();
        let mut again = Server::serve(&self.data, &self.admin_key, args);
        again._dir = self._dir.take();
        again
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Any request: method, path, bearer key (None for none), JSON body, extra headers.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().expect("request reaches the server");
        let status = resp.status().as_u16();
        let text = resp.text().expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        Resp { status, body, text }
    }

    pub fn get(&self, path: &str, key: &str) -> Resp {
        self.request("GET", path, Some(key), None, &[])
    }
    pub fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.request("POST", path, Some(key), Some(&body), &[])
    }
    pub fn put(&self, path: &str, key: &str, body: Value) -> Resp {
        self.request("PUT", path, Some(key), Some(&body), &[])
    }
    pub fn patch(&self, path: &str, key: &str, body: Value) -> Resp {
        self.request("PATCH", path, Some(key), Some(&body), &[])
    }

    /// Asserts the status and returns the body.
    pub fn expect(&self, resp: Resp, status: u16) -> Value {
        assert_eq!(resp.status, status, "unexpected response: {}", resp.text);
        resp.body
    }

    /// Creates a key of `role` and returns its text.
    pub fn key(&self, role: &str, district: Option<&str>, provider: Option<&str>) -> String {
        let mut body = serde_json::json!({"role": role, "name": format!("{role} test key")});
        if let Some(d) = district {
            body["district"] = d.into();
        }
        if let Some(p) = provider {
            body["provider"] = p.into();
        }
        let r = self.post("/v1/keys", &self.admin_key, body);
        self.expect(r, 201)["key"]
            .as_str()
            .expect("key")
            .to_string()
    }

    /// Moves the manual clock.
    pub fn set_clock(&self, now: &str) {
        let r = self.post(
            "/v1/admin/clock",
            &self.admin_key,
            serde_json::json!({ "now": now }),
        );
        self.expect(r, 200);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

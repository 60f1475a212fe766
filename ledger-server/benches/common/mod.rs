//! What the server benches share: building the release `ledger-server`, a new store with
//! its first admin key, and the served binary's address.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ledger-server sits in the workspace")
}

/// Builds the release `ledger-server` binary and returns its path.
pub fn release_server() -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace())
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "ledger-server",
            "--bin",
            "ledger-server",
        ])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building ledger-server failed");
    workspace().join("target/release/ledger-server")
}

/// `ledger-server init --data DIR`; returns the first admin key.
pub fn init_store(bin: &Path, dir: &Path) -> String {
    let init = Command::new(bin)
        .args(["init", "--data"])
        .arg(dir)
        .output()
        .expect("init");
    assert!(init.status.success(), "init failed");
    let out: serde_json::Value = serde_json::from_slice(&init.stdout).expect("init prints JSON");
    out["admin_key"].as_str().expect("admin_key").to_string()
}

/// `ledger-server serve` on 127.0.0.1:0 with a manual clock at `clock`; returns the child
/// and the address from its `listening on` line.
pub fn serve(bin: &Path, dir: &Path, clock: &str) -> (Child, String) {
    let mut server = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--clock"])
        .arg(format!("manual:{clock}"))
        .arg("--data")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve");
    let stdout = server.stdout.take().expect("stdout");
    let addr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split("listening on ").nth(1).map(str::to_string))
        .expect("listening line");
    (server, addr)
}

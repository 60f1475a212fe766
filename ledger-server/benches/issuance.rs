//! Issuance benchmark (issue 3): a store with N active elders (default 1,000,000), then one
//! `POST /v1/periods/2026-01/issue` to the real `ledger-server` binary (release), timed, and
//! a second call (everything already issued), with the server's peak RSS.
//!
//! `cargo bench -p ledger-server --bench issuance -- [--elders N]`
//!
//! The elders are written straight into the store as registry records (the same records
//! `POST /v1/elders` + approve write) so the setup takes seconds, not the hours 2 million
//! HTTP calls would; the issuance itself goes through the real server and HTTP.

// Floats only turn durations into rates for the report; no money is computed here.
#![allow(clippy::float_arithmetic)]

mod common;

use ledger_core::clock::ManualClock;
use ledger_core::{Fen, Ledger, Verify};
use ledger_server::pii::Pii;
use ledger_server::registry::{
    prefix, record, DispatchMode, District, Elder, ElderCategory, ElderStatus, Policy,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const RECORDS_PER_BATCH: usize = 10_000;

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn seed_store(dir: &Path, elders: usize) {
    let clock = Arc::new(ManualClock::new(chrono::DateTime::UNIX_EPOCH));
    let ledger = Ledger::open(dir, clock, Verify::Head).expect("open the new store");
    let pii = Pii::open(dir).expect("pii key");
    let district = District {
        code: "130102".into(),
        name: "长安区".into(),
        dispatch_mode: DispatchMode::Free,
        zones: BTreeMap::new(),
    };
    let amounts: BTreeMap<ElderCategory, Fen> = ElderCategory::ALL
        .iter()
        .zip([500, 300, 300, 450, 100, 400])
        .map(|(c, yuan)| (*c, Fen::from_fen(yuan * 100)))
        .collect();
    let policy = Policy {
        amounts,
        stacking: "max".into(),
    };
    ledger
        .submit_atomic(
            Vec::new(),
            vec![
                record(prefix::DISTRICT, &district.code, &district),
                record(prefix::POLICY, "", &policy),
            ],
        )
        .expect("setup records");
    let started = Instant::now();
    let mut batch = Vec::with_capacity(RECORDS_PER_BATCH);
    for n in 1..=elders {
        let id = format!("E{n:08}");
        let id_number = format!("130102194808{:06}", n % 1_000_000);
        let elder = Elder {
            id: id.clone(),
            name: "基准老人".into(),
            gender: "F".into(),
            id_number_sealed: pii.seal(&id_number).expect("seal"),
            id_number_tag: pii.tag(&id_number),
            id_number_ends: ("130102".into(), id_number[14..].to_string()),
            birth_date: "1948-08-08".into(),
            phone_sealed: None,
            phone_ends: None,
            district: "130102".into(),
            street: "建北街道".into(),
            address: "建北街1号".into(),
            // Every category but age_90_plus (these elders are 77), so every elder is credited.
            categories: vec![ElderCategory::ALL[[0, 1, 2, 3, 5][n % 5]]],
            assessment: None,
            status: ElderStatus::Active,
            created_by: "bench".into(),
            approved_by: Some("bench2".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            card_uid: None,
            ever_carded: false,
            token: None,
        };
        batch.push(record(prefix::ELDER, &id, &elder));
        if batch.len() == RECORDS_PER_BATCH {
            ledger
                .submit_atomic(Vec::new(), std::mem::take(&mut batch))
                .expect("elder records");
        }
    }
    ledger
        .submit_atomic(Vec::new(), batch)
        .expect("elder records");
    eprintln!("seeded {elders} elders in {:.1?}", started.elapsed());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let elders: usize = args
        .iter()
        .position(|a| a == "--elders")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let bin = common::release_server();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    let key = common::init_store(&bin, &dir);
    seed_store(&dir, elders);

    let started = Instant::now();
    let (mut server, addr) = common::serve(&bin, &dir, "2026-01-15T00:00:00+08:00");
    eprintln!(
        "server up with {elders} elders in {:.1?}",
        started.elapsed()
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(900))
        .build()
        .expect("client");
    for call in ["first", "second"] {
        let started = Instant::now();
        let response: serde_json::Value = client
            .post(format!("http://{addr}/v1/periods/2026-01/issue"))
            .bearer_auth(&key)
            .send()
            .expect("issue")
            .json()
            .expect("JSON");
        let secs = started.elapsed().as_secs_f64();
        println!(
            "issuance {call} call: {secs:.2} s for {} elders credited ({} already), total {}; {:.0} elders/s",
            response["elders"], response["already_issued"], response["total"],
            elders as f64 / secs
        );
    }
    println!("server peak RSS: {} MiB", peak_rss_kib(server.id()) / 1024);
    let _ = server.kill();
    let _ = server.wait();
}

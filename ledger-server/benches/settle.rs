//! Settlement benchmark (issue 4): complete settlements per second over real HTTP on loopback
//! — order → accept → agree → charge → code from the SMS outbox → confirm — by T concurrent
//! terminals (default 64), with p50/p99 latency of the charge and the confirm calls.
//!
//! `cargo bench -p ledger-server --bench settle -- [--terminals T] [--settlements N]`

// Floats only turn durations into rates for the report; no money is computed here.
#![allow(clippy::float_arithmetic)]

mod common;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// A synthetic resident ID number with a valid GB 11643 check character.
fn id_number(n: u32) -> String {
    let birth = chrono::NaiveDate::from_ymd_opt(1948, 1, 1).expect("a date")
        + chrono::Duration::days(i64::from(n / 1000));
    let body = format!("130102{}{:03}", birth.format("%Y%m%d"), n % 1000);
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .chars()
        .zip(WEIGHTS)
        .map(|(c, w)| c.to_digit(10).expect("digits") * w)
        .sum();
    format!("{body}{}", b"10X98765432"[(sum % 11) as usize] as char)
}

/// Follows the SMS outbox as it grows and hands codes to the terminals waiting for them.
struct Codes {
    codes: Mutex<HashMap<String, String>>,
    arrived: Condvar,
}

impl Codes {
    fn follow(self: Arc<Self>, path: PathBuf) {
        std::thread::spawn(move || {
            let mut offset = 0u64;
            let mut partial = String::new();
            loop {
                let Ok(mut file) = std::fs::File::open(&path) else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let _ = file.seek(SeekFrom::Start(offset));
                let mut chunk = String::new();
                let n = file.read_to_string(&mut chunk).unwrap_or(0);
                if n == 0 {
                    // The outbox is a plain file: polling it is the only way to notice growth.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                offset += n as u64;
                partial.push_str(&chunk);
                let mut found = Vec::new();
                while let Some(end) = partial.find('\n') {
                    let line: String = partial.drain(..=end).collect();
                    if let Ok(m) = serde_json::from_str::<Value>(&line) {
                        let text = m["text"].as_str().unwrap_or_default();
                        let code: String = text
                            .split("验证码")
                            .nth(1)
                            .unwrap_or_default()
                            .trim_start_matches([':', '：', ' '])
                            .chars()
                            .take(6)
                            .collect();
                        found.push((
                            m["charge_id"].as_str().unwrap_or_default().to_string(),
                            code,
                        ));
                    }
                }
                if !found.is_empty() {
                    self.codes.lock().expect("codes lock").extend(found);
                    self.arrived.notify_all();
                }
            }
        });
    }

    fn wait(&self, charge: &str) -> String {
        let mut codes = self.codes.lock().expect("codes lock");
        loop {
            if let Some(code) = codes.remove(charge) {
                return code;
            }
            codes = self.arrived.wait(codes).expect("codes lock");
        }
    }
}

struct Api {
    base: String,
    client: reqwest::blocking::Client,
}

impl Api {
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Value {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().expect("request");
        let status = resp.status();
        let body: Value = resp.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }
    fn post(&self, path: &str, key: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, key, body, &[])
    }
    fn put(&self, path: &str, key: &str, body: Value) -> Value {
        self.call(reqwest::Method::PUT, path, key, body, &[])
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let terminals = arg(&args, "--terminals", 64);
    let settlements = arg(&args, "--settlements", 20_000);
    let bin = common::release_server();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    let admin = common::init_store(&bin, &dir);
    let (mut server, addr) = common::serve(&bin, &dir, "2026-03-02T00:00:00+08:00");
    let api = Arc::new(Api {
        base: format!("http://{addr}"),
        client: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client"),
    });

    api.post(
        "/v1/districts",
        &admin,
        json!({"code":"130102","name":"长安区","dispatch_mode":"free"}),
    );
    api.put(
        "/v1/catalog/items/DC001",
        &admin,
        json!({"name":"助浴","service_category":"daily_care","unit":"次"}),
    );
    api.post(
        "/v1/providers",
        &admin,
        json!({"id":"P001","name":"长安居家养老服务中心","kind":"home_care",
        "districts":["130102"],"price_caps":{"DC001":"80"}}),
    );
    api.put("/v1/policy/monthly-credit", &admin, json!({"amounts": {"sanwu":"500","dibao":"300","solitary":"300",
        "severely_disabled":"450","age_90_plus":"100","bereaved_single_child":"400"}, "stacking":"max"}));
    let key = |body: Value| {
        api.post("/v1/keys", &admin, body)["key"]
            .as_str()
            .expect("key")
            .to_string()
    };
    let staff = key(json!({"role":"district_staff","name":"s1","district":"130102"}));
    let staff2 = key(json!({"role":"district_staff","name":"s2","district":"130102"}));
    let provider = key(json!({"role":"provider","name":"p","provider":"P001"}));
    let per_terminal = settlements.div_ceil(terminals);
    // Each settlement costs 1.00 of a 500.00 monthly credit: enough elders per terminal.
    let elders_per_terminal = per_terminal.div_ceil(450);
    let mut elders = Vec::new();
    for n in 0..terminals * elders_per_terminal {
        let seq = u32::try_from(n).expect("few elders");
        let e = api.post("/v1/elders", &staff, json!({"name":"基准","gender":"F","id_number": id_number(seq),
            "phone":"13812345678","district":"130102","street":"建北街道","address":"1号","categories":["sanwu"]}));
        let id = e["id"].as_str().expect("id").to_string();
        api.post(&format!("/v1/elders/{id}/approve"), &staff2, json!({}));
        let uid = format!("04{:012X}", n);
        api.post(
            &format!("/v1/elders/{id}/cards"),
            &staff,
            json!({"uid": uid}),
        );
        elders.push((id, uid));
    }
    api.post("/v1/periods/2026-03/issue", &admin, json!({}));

    let codes = Arc::new(Codes {
        codes: Mutex::new(HashMap::new()),
        arrived: Condvar::new(),
    });
    Arc::clone(&codes).follow(dir.join("sms-outbox.jsonl"));
    let started = Instant::now();
    let handles: Vec<_> = (0..terminals)
        .map(|t| {
            let (api, codes, provider, staff) = (
                Arc::clone(&api),
                Arc::clone(&codes),
                provider.clone(),
                staff.clone(),
            );
            let mine: Vec<(String, String)> =
                elders[t * elders_per_terminal..(t + 1) * elders_per_terminal].to_vec();
            std::thread::spawn(move || {
                let (mut charge_lat, mut confirm_lat) = (Vec::new(), Vec::new());
                for i in 0..per_terminal {
                    let (elder, card) = &mine[i / 450];
                    let order = api.post(
                        "/v1/orders",
                        &staff,
                        json!({"elder_id": elder, "item_code":"DC001","provider_id":"P001"}),
                    );
                    let oid = order["id"].as_str().expect("order id").to_string();
                    api.post(&format!("/v1/orders/{oid}/accept"), &provider, json!({}));
                    api.post(
                        &format!("/v1/orders/{oid}/agree"),
                        &provider,
                        json!({"price":"1"}),
                    );
                    let t0 = Instant::now();
                    let charge = api.call(
                        reqwest::Method::POST,
                        "/v1/charges",
                        &provider,
                        json!({"order_id": oid, "card_uid": card, "amount": "1"}),
                        &[("Idempotency-Key", &format!("k-{oid}"))],
                    );
                    charge_lat.push(t0.elapsed());
                    let cid = charge["id"].as_str().expect("charge id").to_string();
                    let code = codes.wait(&cid);
                    let t0 = Instant::now();
                    api.post(
                        &format!("/v1/charges/{cid}/confirm"),
                        &provider,
                        json!({"code": code}),
                    );
                    confirm_lat.push(t0.elapsed());
                }
                (charge_lat, confirm_lat)
            })
        })
        .collect();
    let (mut charge_lat, mut confirm_lat) = (Vec::new(), Vec::new());
    for h in handles {
        let (c, f) = h.join().expect("terminal thread");
        charge_lat.extend(c);
        confirm_lat.extend(f);
    }
    let secs = started.elapsed().as_secs_f64();
    charge_lat.sort();
    confirm_lat.sort();
    let done = confirm_lat.len();
    println!("settlements: {done} by {terminals} terminals in {secs:.2} s = {:.0} complete settlements/s", done as f64 / secs);
    println!(
        "charge  p50 {:?} p99 {:?} max {:?}",
        percentile(&charge_lat, 50),
        percentile(&charge_lat, 99),
        charge_lat.last().copied().unwrap_or_default()
    );
    println!(
        "confirm p50 {:?} p99 {:?} max {:?}",
        percentile(&confirm_lat, 50),
        percentile(&confirm_lat, 99),
        confirm_lat.last().copied().unwrap_or_default()
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", server.id())).unwrap_or_default();
    if let Some(line) = rss.lines().find(|l| l.starts_with("VmHWM:")) {
        println!(
            "server peak RSS: {}",
            line.trim_start_matches("VmHWM:").trim()
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

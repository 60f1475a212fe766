//! Black-box tests of issuance, month and year closes and reports on the real server with a
//! manual clock, ending with `ledger-audit verify` on the exported journal of a full year.

use e2e::city::id_number;
use e2e::{bin, Server};
use serde_json::{json, Value};

struct City {
    s: Server,
    staff: String,
    staff2: String,
}

fn city(start: &str) -> City {
    let s = Server::start(start);
    let k = s.admin_key.clone();
    s.expect(
        s.post(
            "/v1/districts",
            &k,
            json!({"code":"130102","name":"长安区","dispatch_mode":"zoned"}),
        ),
        201,
    );
    s.expect(s.put("/v1/policy/monthly-credit", &k, json!({"amounts": {"sanwu":"500","dibao":"300","solitary":"300",
        "severely_disabled":"450","age_90_plus":"100","bereaved_single_child":"400"}, "stacking":"max"})), 200);
    let staff = s.key("district_staff", Some("130102"), None);
    let staff2 = s.key("district_staff", Some("130102"), None);
    City { s, staff, staff2 }
}

fn register(c: &City, birth: &str, seq: u32, categories: Value) -> String {
    let body = json!({"name":"测试老人","gender":"F","id_number": id_number("130102", birth, seq),
        "phone":"13812345678","district":"130102","street":"建北街道","address":"建北街1号",
        "categories": categories});
    let created = c.s.expect(c.s.post("/v1/elders", &c.staff, body), 201);
    let id = created["id"].as_str().unwrap().to_string();
    c.s.expect(
        c.s.post(&format!("/v1/elders/{id}/approve"), &c.staff2, json!({})),
        200,
    );
    id
}

fn balance(c: &City, id: &str) -> Value {
    c.s.expect(
        c.s.get(
            &format!("/v1/elders/{id}/balance?year=2026"),
            &c.s.admin_key,
        ),
        200,
    )
}

#[test]
fn issuance_is_idempotent_uses_the_highest_category_and_respects_periods() {
    let c = city("2026-01-20T00:00:00+08:00");
    let (s, k) = (&c.s, c.s.admin_key.clone());
    let a = register(&c, "19500101", 1, json!(["dibao", "sanwu"]));
    // age_90_plus counts only for an elder 90 or older on the month's first day: this one
    // turned 90 on January 15th, so it gets nothing for January and 100.00 for February.
    let old = register(&c, "19351231", 2, json!(["age_90_plus"]));
    let not_yet = register(&c, "19360115", 3, json!(["age_90_plus"]));

    let early = s.post("/v1/periods/2026-02/issue", &k, json!({}));
    assert_eq!((early.status, early.code()), (409, "period_not_started"));
    assert_eq!(
        s.post("/v1/periods/2026-13/issue", &k, json!({})).code(),
        "invalid_request"
    );
    assert_eq!(
        s.post("/v1/periods/2026-01/issue", &c.staff, json!({}))
            .status,
        403
    );

    let first = s.expect(s.post("/v1/periods/2026-01/issue", &k, json!({})), 200);
    assert_eq!(
        first,
        json!({"period":"2026-01","elders":2,"total":"600.00","already_issued":0})
    );
    let again = s.expect(s.post("/v1/periods/2026-01/issue", &k, json!({})), 200);
    assert_eq!(
        again,
        json!({"period":"2026-01","elders":0,"total":"0.00","already_issued":2})
    );
    assert_eq!(balance(&c, &a)["issued"], "500.00");
    assert_eq!(balance(&c, &old)["available"], "100.00");
    assert_eq!(balance(&c, &not_yet)["issued"], "0.00");

    // A new elder is credited by the next call for the same month; the others are not again.
    let late = register(&c, "19550505", 4, json!(["solitary"]));
    let third = s.expect(s.post("/v1/periods/2026-01/issue", &k, json!({})), 200);
    assert_eq!(
        third,
        json!({"period":"2026-01","elders":1,"total":"300.00","already_issued":2})
    );
    assert_eq!(balance(&c, &late)["issued"], "300.00");

    // Month close: only after the month has ended; then the report.
    let open = s.post("/v1/periods/2026-01/close", &k, json!({}));
    assert_eq!((open.status, open.code()), (409, "period_not_ended"));
    s.set_clock("2026-02-01T00:00:00+08:00");
    let report = s.expect(s.post("/v1/periods/2026-01/close", &k, json!({})), 200);
    assert_eq!(report["issued"], json!({"count": 3, "total": "900.00"}));
    assert_eq!(report["closed"], true);
    assert_eq!(s.get("/v1/reports/periods/2026-01", &k).body, report);
    assert_eq!(
        s.post("/v1/periods/2026-01/issue", &k, json!({})).status,
        409
    );
}

#[test]
fn a_full_year_closes_to_zero_and_the_export_verifies() {
    let c = city("2026-01-01T00:00:00+08:00");
    let (s, k) = (&c.s, c.s.admin_key.clone());
    let elders: Vec<String> = (0..5)
        .map(|i| register(&c, "19480808", 10 + i, json!(["dibao"])))
        .collect();
    for m in 1..=12 {
        if m > 1 {
            s.set_clock(&format!("2026-{m:02}-01T00:00:00+08:00"));
        }
        let r = s.expect(
            s.post(&format!("/v1/periods/2026-{m:02}/issue"), &k, json!({})),
            200,
        );
        assert_eq!(r["elders"], 5, "month {m}");
        if m > 1 {
            s.expect(
                s.post(
                    &format!("/v1/periods/2026-{:02}/close", m - 1),
                    &k,
                    json!({}),
                ),
                200,
            );
        }
    }
    let early = s.post("/v1/years/2026/close", &k, json!({}));
    assert_eq!((early.status, early.code()), (409, "year_not_over"));
    s.set_clock("2026-12-31T15:59:59Z");
    assert_eq!(
        s.post("/v1/years/2026/close", &k, json!({})).code(),
        "year_not_over"
    );
    s.set_clock("2026-12-31T16:00:00Z");

    let size_before = s.get("/v1/audit/checkpoint", &k).body["tree_size"].clone();
    let dry = s.expect(
        s.post("/v1/years/2026/close?dry_run=true", &k, json!({})),
        200,
    );
    assert_eq!(dry["elders"], 5);
    assert_eq!(dry["forfeited_total"], "18000.00");
    assert_eq!(
        s.get("/v1/audit/checkpoint", &k).body["tree_size"],
        size_before,
        "dry run wrote"
    );
    assert_eq!(balance(&c, &elders[0])["available"], "3600.00");

    let closed = s.expect(s.post("/v1/years/2026/close", &k, json!({})), 200);
    assert_eq!(
        closed,
        json!({"year":"2026","elders":5,"forfeited_total":"18000.00","voided_holds":0,"already_closed":false})
    );
    let again = s.expect(s.post("/v1/years/2026/close", &k, json!({})), 200);
    assert_eq!(again["already_closed"], true);
    assert_eq!(again["forfeited_total"], "18000.00");
    for id in &elders {
        let b = balance(&c, id);
        assert_eq!(
            (b["available"].as_str(), b["forfeited"].as_str()),
            (Some("0.00"), Some("3600.00"))
        );
    }
    let year = s.expect(s.get("/v1/reports/years/2026", &k), 200);
    for field in [
        "cards_issued",
        "elders_served",
        "services",
        "consumption_total",
        "offsets",
        "issued_total",
        "forfeited_total",
        "by_district",
        "by_provider",
    ] {
        assert!(year.get(field).is_some(), "year report lacks {field}");
    }
    assert_eq!(year["issued_total"], "18000.00");
    assert_eq!(year["forfeited_total"], "18000.00");
    let closed_year = s.post("/v1/periods/2026-12/issue", &k, json!({}));
    assert_eq!(
        (closed_year.status, closed_year.code()),
        (409, "year_closed")
    );

    // Export every page and verify offline with the real ledger-audit.
    let cp = s.get("/v1/audit/checkpoint", &k);
    let size = cp.body["tree_size"].as_u64().unwrap();
    assert_eq!(size, 5 * 12 + 5);
    let mut export = String::new();
    let mut from = 0;
    while from < size {
        let page = s.get(&format!("/v1/audit/entries?from={from}&limit=7"), &k);
        from += page.text.lines().count() as u64;
        export.push_str(&page.text);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("entries.jsonl"), &export).unwrap();
    std::fs::write(dir.path().join("checkpoint.json"), &cp.text).unwrap();
    let pk = s.request("GET", "/v1/audit/public-key", None, None, &[]);
    std::fs::write(dir.path().join("public-key.json"), &pk.text).unwrap();
    let audit = |entries: &str| {
        std::process::Command::new(bin("ledger-audit"))
            .current_dir(dir.path())
            .args([
                "verify",
                "--entries",
                entries,
                "--checkpoint",
                "checkpoint.json",
                "--public-key",
                "public-key.json",
            ])
            .output()
            .unwrap()
    };
    let ok = audit("entries.jsonl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // Any flipped byte is caught and the first bad seq named.
    let tampered = export.replacen("\"300.00\"", "\"300.01\"", 1);
    std::fs::write(dir.path().join("bad.jsonl"), tampered).unwrap();
    let bad = audit("bad.jsonl");
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("seq 0"),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );

    // Inclusion and consistency proofs are served for the checkpoint's size.
    let inc = s.get(
        &format!("/v1/audit/proofs/inclusion?seq=3&tree_size={size}"),
        &k,
    );
    assert_eq!(inc.body["leaf_index"], 3);
    // An auditor's own check (RFC 9162 §2.1.3.2, SHA-256 by ring): the path leads from
    // entry 3's hash to the signed root. At 65 entries the server reads the nodes inside
    // the first block of 64 back from the journal.
    let sha256 = |parts: &[&[u8]]| {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for part in parts {
            context.update(part);
        }
        context.finish().as_ref().to_vec()
    };
    let entry: serde_json::Value = serde_json::from_str(export.lines().nth(3).unwrap()).unwrap();
    let mut node = sha256(&[&[0], &hex::decode(entry["hash"].as_str().unwrap()).unwrap()]);
    let (mut index, mut last) = (3u64, size - 1);
    for sibling in inc.body["path"].as_array().unwrap() {
        let sibling = hex::decode(sibling.as_str().unwrap()).unwrap();
        assert!(last > 0, "the path is longer than the tree is deep");
        if index & 1 == 1 || index == last {
            node = sha256(&[&[1], &sibling, &node]);
            while index & 1 == 0 && index != 0 {
                index >>= 1;
                last >>= 1;
            }
        } else {
            node = sha256(&[&[1], &node, &sibling]);
        }
        index >>= 1;
        last >>= 1;
    }
    assert_eq!(last, 0, "the path is shorter than the tree is deep");
    assert_eq!(hex::encode(node), cp.body["root_hash"].as_str().unwrap());
    let con = s.get(
        &format!("/v1/audit/proofs/consistency?from=10&to={size}"),
        &k,
    );
    assert!(!con.body["path"].as_array().unwrap().is_empty());
}

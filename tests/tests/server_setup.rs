//! Black-box tests of `ledger-server` setup and audit endpoints: init, serve, keys and roles,
//! districts, zones, policy, catalog, providers, the manual clock, the error envelope, and
//! the audit export verified by the real `ledger-audit`.

use e2e::{bin, init, Server};
use serde_json::json;

fn setup_city(s: &Server) {
    let k = &s.admin_key;
    s.expect(
        s.post(
            "/v1/districts",
            k,
            json!({"code":"130102","name":"长安区","dispatch_mode":"zoned"}),
        ),
        201,
    );
    s.expect(
        s.post(
            "/v1/districts",
            k,
            json!({"code":"130104","name":"桥西区","dispatch_mode":"free"}),
        ),
        201,
    );
    s.expect(
        s.put(
            "/v1/catalog/items/DC001",
            k,
            json!({"name":"助浴","service_category":"daily_care","unit":"次"}),
        ),
        200,
    );
    s.expect(
        s.post(
            "/v1/providers",
            k,
            json!({"id":"P001","name":"长安居家养老服务中心","kind":"home_care",
        "districts":["130102"],"price_caps":{"DC001":"80"}}),
        ),
        201,
    );
}

#[test]
fn init_prints_a_working_admin_key_and_refuses_an_existing_store() {
    let (dir, key) = init();
    assert!(key.starts_with("lk_"));
    let again = std::process::Command::new(bin("ledger-server"))
        .args(["init", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

#[test]
fn an_interrupted_init_is_refused_by_serve_and_redone_by_init() {
    let (dir, first_key) = init();
    let data = dir.path().join("data");
    // What a crash during init leaves: the store's files and the marker init writes first
    // and removes last.
    std::fs::write(data.join("init.incomplete"), b"").unwrap();
    let serve = std::process::Command::new(bin("ledger-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!serve.status.success());
    assert!(
        String::from_utf8_lossy(&serve.stderr).contains("did not finish"),
        "{}",
        String::from_utf8_lossy(&serve.stderr)
    );
    let again = std::process::Command::new(bin("ledger-server"))
        .args(["init", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    let key = out["admin_key"].as_str().unwrap().to_string();
    assert_ne!(key, first_key);
    assert!(!data.join("init.incomplete").exists());
    let s = Server::serve(&data, &key, &["--clock=manual:2026-01-01T00:00:00Z"]);
    assert_eq!(s.get("/v1/districts", &key).status, 200);
    // The key of the abandoned init went with it.
    assert_eq!(s.get("/v1/districts", &first_key).status, 401);
}

#[test]
fn setup_endpoints_roles_and_errors() {
    let s = Server::start("2026-01-01T00:00:00Z");
    let k = s.admin_key.clone();
    assert_eq!(s.request("GET", "/v1/health", None, None, &[]).status, 200);
    assert_eq!(
        s.request("GET", "/v1/districts", None, None, &[]).code(),
        "unauthorized"
    );
    assert_eq!(s.get("/v1/districts", "lk_000000000000_nope").status, 401);
    setup_city(&s);
    // Duplicates, bad fields, malformed JSON, unknown routes — all in our envelope.
    assert_eq!(
        s.post(
            "/v1/districts",
            &k,
            json!({"code":"130102","name":"x","dispatch_mode":"free"})
        )
        .code(),
        "conflict"
    );
    assert_eq!(
        s.post(
            "/v1/districts",
            &k,
            json!({"code":"13","name":"x","dispatch_mode":"free"})
        )
        .code(),
        "invalid_request"
    );
    let malformed = s.request(
        "POST",
        "/v1/districts",
        Some(&k),
        None,
        &[("content-type", "application/json")],
    );
    assert_eq!((malformed.status, malformed.code()), (400, "bad_request"));
    assert_eq!(s.get("/v1/nothing-here", &k).code(), "not_found");
    let big = "x".repeat(1024 * 1024 + 1);
    let too_large = s.post(
        "/v1/districts",
        &k,
        json!({"code":"130199","name": big,"dispatch_mode":"free"}),
    );
    assert_eq!(
        (too_large.status, too_large.code()),
        (413, "payload_too_large")
    );
    let long_name = s.post(
        "/v1/districts",
        &k,
        json!({"code":"130199","name": "名".repeat(201),"dispatch_mode":"free"}),
    );
    assert_eq!(long_name.code(), "invalid_request");

    // Policy: all six categories, amounts as strings within 100–500.
    let mut amounts = json!({"sanwu":"500","dibao":"300","solitary":"300","severely_disabled":"500","age_90_plus":"100","bereaved_single_child":"400"});
    s.expect(
        s.put(
            "/v1/policy/monthly-credit",
            &k,
            json!({"amounts": amounts.clone(), "stacking":"max"}),
        ),
        200,
    );
    assert_eq!(
        s.get("/v1/policy/monthly-credit", &k).body["amounts"]["age_90_plus"],
        "100.00"
    );
    amounts["dibao"] = json!(300);
    assert_eq!(
        s.put(
            "/v1/policy/monthly-credit",
            &k,
            json!({"amounts": amounts.clone(), "stacking":"max"})
        )
        .code(),
        "invalid_amount"
    );
    amounts["dibao"] = json!("300.001");
    assert_eq!(
        s.put(
            "/v1/policy/monthly-credit",
            &k,
            json!({"amounts": amounts.clone(), "stacking":"max"})
        )
        .code(),
        "invalid_amount"
    );
    amounts.as_object_mut().unwrap().remove("dibao");
    assert_eq!(
        s.put(
            "/v1/policy/monthly-credit",
            &k,
            json!({"amounts": amounts, "stacking":"max"})
        )
        .code(),
        "invalid_request"
    );

    // Zones name providers serving the district.
    s.expect(
        s.put("/v1/districts/130102/zones", &k, json!({"建北街道":"P001"})),
        200,
    );
    assert_eq!(
        s.put("/v1/districts/130102/zones", &k, json!({"建北街道":"P999"}))
            .code(),
        "invalid_request"
    );
    assert_eq!(
        s.put("/v1/districts/139999/zones", &k, json!({})).code(),
        "not_found"
    );
    // Provider caps are strings; unknown items refused.
    assert_eq!(s.post("/v1/providers", &k, json!({"id":"P002","name":"x","kind":"home_care","districts":["130102"],"price_caps":{"DC001":80}})).code(), "invalid_amount");
    assert_eq!(s.post("/v1/providers", &k, json!({"id":"P002","name":"x","kind":"home_care","districts":["130102"],"price_caps":{"ZZ":"80"}})).code(), "invalid_request");
    assert_eq!(
        s.get("/v1/providers/P001", &k).body["price_caps"]["DC001"],
        "80.00"
    );
    s.expect(s.post("/v1/providers/P001/suspend", &k, json!({})), 200);
    assert_eq!(s.get("/v1/providers/P001", &k).body["status"], "suspended");

    // Keys and the role matrix for setup: only city_admin.
    let staff = s.key("district_staff", Some("130102"), None);
    let auditor = s.key("auditor", None, None);
    let provider = s.key("provider", None, Some("P001"));
    let hotline = s.key("hotline", None, None);
    for other in [&staff, &auditor, &provider, &hotline] {
        let r = s.post(
            "/v1/districts",
            other,
            json!({"code":"130105","name":"新华区","dispatch_mode":"free"}),
        );
        assert_eq!((r.status, r.code()), (403, "forbidden"));
        assert_eq!(
            s.post("/v1/keys", other, json!({"role":"auditor","name":"x"}))
                .status,
            403
        );
    }
    assert_eq!(
        s.post("/v1/keys", &k, json!({"role":"district_staff","name":"x"}))
            .code(),
        "invalid_request"
    );
    assert_eq!(
        s.post(
            "/v1/keys",
            &k,
            json!({"role":"provider","name":"x","provider":"P999"})
        )
        .code(),
        "invalid_request"
    );
    assert_eq!(s.get("/v1/audit/checkpoint", &staff).status, 403);
    assert_eq!(s.get("/v1/audit/checkpoint", &auditor).status, 200);

    // The manual clock moves forward only.
    s.set_clock("2026-02-01T00:00:00Z");
    let back = s.post("/v1/admin/clock", &k, json!({"now":"2026-01-15T00:00:00Z"}));
    assert_eq!((back.status, back.code()), (409, "clock_backwards"));
    assert_eq!(
        s.post(
            "/v1/admin/clock",
            &auditor,
            json!({"now":"2026-03-01T00:00:00Z"})
        )
        .status,
        403
    );

    // Restart resumes at the later of T and the last time set.
    let s = s.restart(&["--clock=manual:2026-01-01T00:00:00Z"]);
    assert_eq!(s.get("/v1/health", &k).body["now"], "2026-02-01T00:00:00Z");
    assert_eq!(s.get("/v1/providers/P001", &k).body["status"], "suspended");

    let openapi = s.request("GET", "/v1/openapi.json", None, None, &[]);
    assert_eq!(openapi.status, 200);
    for path in [
        "/v1/keys",
        "/v1/districts",
        "/v1/policy/monthly-credit",
        "/v1/audit/entries",
    ] {
        assert!(
            openapi.body["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
}

#[test]
fn audit_endpoints_serve_what_ledger_audit_verifies() {
    let s = Server::start("2026-01-01T00:00:00Z");
    let k = s.admin_key.clone();
    let pk = s.request("GET", "/v1/audit/public-key", None, None, &[]);
    assert_eq!(pk.body["algorithm"], "Ed25519");
    let cp = s.get("/v1/audit/checkpoint", &k).body;
    assert_eq!(cp["tree_size"], 0);
    assert_eq!(cp["timestamp"], "2026-01-01T00:00:00Z");
    let entries = s.get("/v1/audit/entries?from=0&limit=10", &k);
    assert_eq!((entries.status, entries.text.as_str()), (200, ""));
    assert_eq!(
        s.get("/v1/audit/entries?limit=10001", &k).code(),
        "invalid_request"
    );
    assert_eq!(
        s.get("/v1/audit/proofs/inclusion?seq=0&tree_size=1", &k)
            .code(),
        "invalid_request"
    );
    assert_eq!(
        s.get("/v1/audit/proofs/inclusion?seq=0", &k).code(),
        "invalid_request"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("entries.jsonl"), &entries.text).unwrap();
    std::fs::write(dir.path().join("checkpoint.json"), cp.to_string()).unwrap();
    std::fs::write(dir.path().join("public-key.json"), pk.text).unwrap();
    let out = std::process::Command::new(bin("ledger-audit"))
        .current_dir(dir.path())
        .args([
            "verify",
            "--entries",
            "entries.jsonl",
            "--checkpoint",
            "checkpoint.json",
            "--public-key",
            "public-key.json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

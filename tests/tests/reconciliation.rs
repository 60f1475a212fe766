//! Black-box tests of quarterly reconciliation (matched and disputed receipts, the close
//! into payouts, statements) and of the fraud alerts, on the real server.

use e2e::city::City;
use serde_json::json;

#[test]
fn quarter_close_pays_matched_receipts_and_keeps_disputed_open() {
    let c = City::new("2026-03-02T00:00:00Z");
    let (s, k) = (&c.s, c.s.admin_key.clone());
    let (e1, card1) = c.elder(1, json!(["sanwu"]));
    let (e2, card2) = c.elder(2, json!(["dibao"]));
    s.expect(s.post("/v1/periods/2026-03/issue", &k, json!({})), 200);
    let r1 = c.settle(&e1, &card1, "80", "80");
    let r2 = c.settle(&e1, &card1, "60", "55.5");
    let r3 = c.settle(&e2, &card2, "70", "70");
    let no = |r: &serde_json::Value| r["receipt"]["no"].as_str().unwrap().to_string();
    let (n1, n2, n3) = (no(&r1), no(&r2), no(&r3));

    let path = "/v1/reconciliations/130102/2026-Q1";
    let view = s.expect(s.get(path, &c.staff), 200);
    let p001 = &view["providers"][0];
    assert_eq!(p001["provider_id"], "P001");
    assert_eq!(p001["total"], "205.50");
    assert_eq!(p001["receipts"].as_array().unwrap().len(), 3);

    s.expect(
        s.post(
            &format!("{path}/receipts/{n1}"),
            &c.staff,
            json!({"status":"matched"}),
        ),
        200,
    );
    s.expect(
        s.post(
            &format!("{path}/receipts/{n2}"),
            &c.staff,
            json!({"status":"disputed"}),
        ),
        200,
    );
    s.expect(
        s.post(
            &format!("{path}/receipts/{n3}"),
            &c.staff,
            json!({"status":"matched"}),
        ),
        200,
    );
    assert_eq!(
        s.post(
            &format!("{path}/receipts/R0"),
            &c.staff,
            json!({"status":"matched"})
        )
        .status,
        404
    );
    assert_eq!(
        s.post(
            &format!("{path}/receipts/{n1}"),
            &c.staff,
            json!({"status":"paid"})
        )
        .status,
        422
    );

    let early = s.post(&format!("{path}/close"), &c.staff, json!({}));
    assert_eq!((early.status, early.code()), (409, "period_not_ended"));
    s.set_clock("2026-04-01T00:00:00+08:00");
    let closed = s.expect(s.post(&format!("{path}/close"), &c.staff, json!({})), 200);
    assert_eq!(closed["payouts"].as_array().unwrap().len(), 1);
    assert_eq!(closed["payouts"][0]["provider_id"], "P001");
    assert_eq!(closed["payouts"][0]["amount"], "150.00");
    let seq = closed["payouts"][0]["entry_seq"].as_u64().unwrap();

    let view = s.expect(s.get(path, &c.staff), 200);
    assert_eq!(view["providers"][0]["paid"], "150.00");
    assert_eq!(view["providers"][0]["disputed"], "55.50");
    // A paid receipt cannot be re-marked; the disputed one, once matched, is paid next close.
    assert_eq!(
        s.post(
            &format!("{path}/receipts/{n1}"),
            &c.staff,
            json!({"status":"disputed"})
        )
        .status,
        409
    );
    s.expect(
        s.post(
            &format!("{path}/receipts/{n2}"),
            &c.staff,
            json!({"status":"matched"}),
        ),
        200,
    );
    let again = s.expect(s.post(&format!("{path}/close"), &c.staff, json!({})), 200);
    assert_eq!(again["payouts"][0]["amount"], "55.50");
    assert!(again["payouts"][0]["entry_seq"].as_u64().unwrap() > seq);
    let nothing = s.expect(s.post(&format!("{path}/close"), &c.staff, json!({})), 200);
    assert_eq!(nothing["payouts"], json!([]));

    let csv = s.get(
        "/v1/reconciliations/130102/2026-Q1/statements/P001.csv",
        &c.staff,
    );
    assert_eq!(csv.status, 200);
    assert!(csv.text.starts_with("receipt_no,"));
    assert_eq!(csv.text.lines().count(), 4);
    assert!(csv.text.contains(&n3));
    assert_eq!(
        s.get(
            "/v1/reconciliations/130102/2026-Q1/statements/P001.csv",
            &c.provider
        )
        .status,
        200
    );

    // Other roles: the hotline and providers may not reconcile.
    let hotline = s.key("hotline", None, None);
    assert_eq!(s.get(path, &hotline).status, 403);
    assert_eq!(
        s.post(&format!("{path}/close"), &c.provider, json!({}))
            .status,
        403
    );
}

#[test]
fn alerts_flag_code_bursts_and_charges_at_cap() {
    let c = City::new("2026-03-02T00:00:00Z");
    let (s, k) = (&c.s, c.s.admin_key.clone());
    let (e1, card1) = c.elder(1, json!(["sanwu"]));
    s.expect(s.post("/v1/periods/2026-03/issue", &k, json!({})), 200);
    // Ten charges, each exactly at the 80.00 cap.
    for _ in 0..5 {
        c.settle(&e1, &card1, "80", "80");
    }
    let (e2, card2) = c.elder(2, json!(["sanwu"]));
    s.expect(s.post("/v1/periods/2026-03/issue", &k, json!({})), 200);
    for _ in 0..5 {
        c.settle(&e2, &card2, "80", "80");
    }
    // Three wrong codes on one card within ten minutes.
    let order = s.expect(
        s.post(
            "/v1/orders",
            &c.staff,
            json!({"elder_id": e2, "item_code": "DC001"}),
        ),
        201,
    );
    let oid = order["id"].as_str().unwrap();
    s.expect(
        s.post(&format!("/v1/orders/{oid}/accept"), &c.provider, json!({})),
        200,
    );
    s.expect(
        s.post(
            &format!("/v1/orders/{oid}/agree"),
            &c.provider,
            json!({"price": "50"}),
        ),
        200,
    );
    let charge = s.request(
        "POST",
        "/v1/charges",
        Some(&c.provider),
        Some(&json!({"order_id": oid, "card_uid": card2, "amount": "50", "staff": "W07"})),
        &[("Idempotency-Key", "burst")],
    );
    let cid = s.expect(charge, 201)["id"].as_str().unwrap().to_string();
    let right = e2e::city::sms_code(s, &cid);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..3 {
        assert_eq!(
            s.post(
                &format!("/v1/charges/{cid}/confirm"),
                &c.provider,
                json!({"code": wrong})
            )
            .code(),
            "code_invalid"
        );
    }
    let alerts = s.expect(s.get("/v1/alerts", &c.staff), 200);
    let kinds: Vec<&str> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"charges_at_cap"), "{alerts}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "failed_code_burst").count(),
        2,
        "card and terminal: {alerts}"
    );
    assert_eq!(s.get("/v1/alerts", &c.provider).status, 403);
}

//! Black-box tests of the Elders endpoints (API.md "Elders") on the real server: registration
//! and every binding error code, four-eyes approval, masking per role, changes and
//! deactivation, cards, tokens, balances, and that ID numbers and phones reach neither the
//! data dir nor the log in the clear.

use e2e::Server;
use serde_json::{json, Value};
use std::path::Path;

/// A synthetic resident ID number: region + birth date `YYYYMMDD` + 3-digit sequence + the
/// GB 11643-1999 check character.
fn id_number(region: &str, birth: &str, seq: u32) -> String {
    let body = format!("{region}{birth}{seq:03}");
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .chars()
        .zip(WEIGHTS)
        .map(|(c, w)| c.to_digit(10).unwrap() * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

/// The same number with a wrong check character.
fn with_wrong_check(number: &str) -> String {
    let wrong = if number.ends_with('0') { '1' } else { '0' };
    format!("{}{wrong}", &number[..17])
}

/// A birth date whose number ends in X, searched over sequences (about 1 in 11 do).
fn id_number_ending_in_x(region: &str, birth: &str) -> String {
    (0..1000)
        .map(|seq| id_number(region, birth, seq))
        .find(|n| n.ends_with('X'))
        .expect("some sequence gives check character X")
}

struct City {
    s: Server,
    staff: String,
    staff2: String,
    other_staff: String,
    auditor: String,
    hotline: String,
    provider: String,
}

fn setup(s: &Server) {
    let k = &s.admin_key;
    for (code, mode) in [("130102", "zoned"), ("130104", "free")] {
        s.expect(
            s.post(
                "/v1/districts",
                k,
                json!({"code": code, "name": "区", "dispatch_mode": mode}),
            ),
            201,
        );
    }
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
            json!({"id":"P001","name":"长安居家","kind":"home_care","districts":["130102"],
                "price_caps":{"DC001":"80"}}),
        ),
        201,
    );
}

fn city_on(s: Server) -> City {
    setup(&s);
    City {
        staff: s.key("district_staff", Some("130102"), None),
        staff2: s.key("district_staff", Some("130102"), None),
        other_staff: s.key("district_staff", Some("130104"), None),
        auditor: s.key("auditor", None, None),
        hotline: s.key("hotline", None, None),
        provider: s.key("provider", None, Some("P001")),
        s,
    }
}

fn city() -> City {
    city_on(Server::start("2026-03-01T00:00:00Z"))
}

fn elder_body(id_number: &str) -> Value {
    json!({"name":"王秀英","gender":"F","id_number": id_number,"phone":"13812345678",
        "district":"130102","street":"建北街道","address":"建北街1号3单元",
        "categories":["dibao","solitary"],"assessment":{"adl":45,"notes":"独居"}})
}

/// `body` with `field` replaced.
fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

/// Registers (by `staff`) and returns the new id.
fn register(c: &City, body: Value) -> String {
    let created = c.s.expect(c.s.post("/v1/elders", &c.staff, body), 201);
    created["id"].as_str().expect("id").to_string()
}

fn approve(c: &City, id: &str) {
    let r =
        c.s.post(&format!("/v1/elders/{id}/approve"), &c.staff2, json!({}));
    assert_eq!(c.s.expect(r, 200)["status"], "active");
}

fn assert_error(r: e2e::Resp, status: u16, code: &str) {
    assert_eq!((r.status, r.code()), (status, code), "{}", r.text);
}

#[test]
fn registration_validates_every_field() {
    let c = city();
    let s = &c.s;
    let number = id_number("130102", "19500315", 1);
    let created = s.expect(s.post("/v1/elders", &c.staff, elder_body(&number)), 201);
    assert_eq!(created["id"], "E00000001");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["id_number"], number.as_str());
    assert_eq!(created["phone"], "13812345678");
    assert_eq!(created["categories"], json!(["dibao", "solitary"]));
    assert_eq!(created["assessment"]["adl"], 45);
    assert_eq!(created["card"], Value::Null);
    assert_eq!(created["token"], Value::Null);
    assert_eq!(created["created_at"], "2026-03-01T00:00:00Z");

    // invalid_id_number: check character, impossible and future dates, shape.
    for bad in [
        with_wrong_check(&id_number("130102", "19500315", 2)),
        id_number("130102", "19500230", 3),
        id_number("130102", "19511301", 3),
        id_number("130102", "20270101", 3),
        "13010219500315".to_string(),
        "13010219500315123Y".to_string(),
    ] {
        assert_error(
            s.post("/v1/elders", &c.staff, elder_body(&bad)),
            422,
            "invalid_id_number",
        );
    }
    // A check character X, given in lowercase, is accepted and normalised.
    let x = id_number_ending_in_x("130102", "19400101");
    let lower = x.to_lowercase();
    let created = s.expect(s.post("/v1/elders", &c.staff, elder_body(&lower)), 201);
    assert_eq!(created["id_number"], x.as_str());
    // ... and counts as the same number for duplicates.
    assert_error(
        s.post("/v1/elders", &c.staff, elder_body(&x)),
        409,
        "duplicate_elder",
    );
    assert_error(
        s.post("/v1/elders", &c.staff2, elder_body(&number)),
        409,
        "duplicate_elder",
    );

    // not_eligible: under 60 on the day of registration (the day before the 60th birthday),
    // and age_90_plus under 90.
    assert_error(
        s.post(
            "/v1/elders",
            &c.staff,
            elder_body(&id_number("130102", "19660302", 4)),
        ),
        422,
        "not_eligible",
    );
    s.expect(
        s.post(
            "/v1/elders",
            &c.staff,
            elder_body(&id_number("130102", "19660301", 4)),
        ),
        201,
    );
    let ninety = |birth: &str, seq| {
        with(
            elder_body(&id_number("130102", birth, seq)),
            "categories",
            json!(["age_90_plus"]),
        )
    };
    assert_error(
        s.post("/v1/elders", &c.staff, ninety("19360302", 5)),
        422,
        "not_eligible",
    );
    s.expect(s.post("/v1/elders", &c.staff, ninety("19360301", 5)), 201);

    // invalid_phone; a missing phone is fine.
    let fresh = |seq| elder_body(&id_number("130102", "19450101", seq));
    for phone in ["23812345678", "1381234567", "138123456789", "1381234567a"] {
        assert_error(
            s.post(
                "/v1/elders",
                &c.staff,
                with(fresh(6), "phone", json!(phone)),
            ),
            422,
            "invalid_phone",
        );
    }
    let mut no_phone = fresh(6);
    no_phone.as_object_mut().unwrap().remove("phone");
    let created = s.expect(s.post("/v1/elders", &c.staff, no_phone), 201);
    assert_eq!(created["phone"], Value::Null);

    // invalid_request: categories, district, lengths, gender, assessment, unknown fields.
    let all = json!([
        "sanwu",
        "dibao",
        "solitary",
        "severely_disabled",
        "age_90_plus",
        "bereaved_single_child",
        "sanwu"
    ]);
    for (field, value) in [
        ("categories", json!([])),
        ("categories", json!(["rich"])),
        ("categories", json!(["dibao", "dibao"])),
        ("categories", all),
        ("district", json!("139999")),
        ("name", json!("名".repeat(201))),
        ("name", json!("  ")),
        ("street", json!("街".repeat(65))),
        ("address", json!("址".repeat(201))),
        ("gender", json!("X")),
        ("assessment", json!([1, 2])),
        ("assessment", json!({"notes": "x".repeat(4097)})),
        ("surprise", json!(1)),
    ] {
        let r = s.post("/v1/elders", &c.admin(), with(fresh(7), field, value));
        assert_error(r, 422, "invalid_request");
    }
    // 400 for malformed JSON, 401 without a key.
    let r = s.request(
        "POST",
        "/v1/elders",
        Some(&c.staff),
        None,
        &[("content-type", "application/json")],
    );
    assert_error(r, 400, "bad_request");
    let r = s.request("POST", "/v1/elders", None, Some(&fresh(7)), &[]);
    assert_error(r, 401, "unauthorized");

    // Only the district's staff and the city register.
    for key in [&c.other_staff, &c.auditor, &c.hotline, &c.provider] {
        assert_error(s.post("/v1/elders", key, fresh(7)), 403, "forbidden");
    }
    let by_city = s.expect(s.post("/v1/elders", &c.admin(), fresh(7)), 201);
    assert_eq!(by_city["status"], "pending");
}

impl City {
    fn admin(&self) -> String {
        self.s.admin_key.clone()
    }
}

#[test]
fn eligibility_uses_the_local_date() {
    // 2026-02-28T15:59:59Z is still 28 February in UTC+08:00; one second later it is 1 March.
    let c = city_on(Server::start("2026-02-28T15:59:59Z"));
    let body = elder_body(&id_number("130102", "19660301", 1));
    assert_error(
        c.s.post("/v1/elders", &c.staff, body.clone()),
        422,
        "not_eligible",
    );
    c.s.set_clock("2026-02-28T16:00:00Z");
    c.s.expect(c.s.post("/v1/elders", &c.staff, body), 201);
}

#[test]
fn approval_needs_a_second_key_of_the_district() {
    let c = city();
    let s = &c.s;
    let id = register(&c, elder_body(&id_number("130102", "19500315", 1)));
    let approve_by = |key: &str| s.post(&format!("/v1/elders/{id}/approve"), key, json!({}));
    assert_error(approve_by(&c.staff), 403, "four_eyes_required");
    for key in [&c.other_staff, &c.auditor, &c.hotline, &c.provider] {
        assert_error(approve_by(key), 403, "forbidden");
    }
    assert_eq!(
        s.get(&format!("/v1/elders/{id}"), &c.staff).body["status"],
        "pending"
    );
    approve(&c, &id);
    let record = s.get(&format!("/v1/elders/{id}"), &c.staff).body;
    assert_eq!(record["status"], "active");
    assert_error(approve_by(&c.admin()), 409, "conflict");

    // The city's own registration needs another key too; district staff may approve it.
    let by_city = s.expect(
        s.post(
            "/v1/elders",
            &c.admin(),
            elder_body(&id_number("130102", "19500315", 2)),
        ),
        201,
    );
    let path = format!("/v1/elders/{}/approve", by_city["id"].as_str().unwrap());
    assert_error(
        s.post(&path, &c.admin(), json!({})),
        403,
        "four_eyes_required",
    );
    assert_eq!(
        s.expect(s.post(&path, &c.staff, json!({})), 200)["status"],
        "active"
    );

    assert_error(
        s.post("/v1/elders/E99999999/approve", &c.staff2, json!({})),
        404,
        "not_found",
    );
    let r = s.request("POST", &format!("/v1/elders/{id}/approve"), None, None, &[]);
    assert_error(r, 401, "unauthorized");
}

#[test]
fn the_record_is_masked_for_every_role_but_district_staff_and_city() {
    let c = city();
    let s = &c.s;
    let number = id_number("130102", "19500315", 1);
    let id = register(&c, elder_body(&number));
    let path = format!("/v1/elders/{id}");
    let masked_id = format!("130102********{}", &number[14..]);
    for key in [&c.staff, &c.staff2, &c.admin()] {
        let r = s.expect(s.get(&path, key), 200);
        assert_eq!(r["id_number"], number.as_str());
        assert_eq!(r["phone"], "13812345678");
        assert_eq!(r["name"], "王秀英");
    }
    for key in [&c.auditor, &c.hotline] {
        let r = s.expect(s.get(&path, key), 200);
        assert_eq!(r["id_number"], masked_id.as_str());
        assert_eq!(r["phone"], "138****5678");
        assert_eq!(r["district"], "130102");
        assert!(!r.to_string().contains(&number));
        assert!(!r.to_string().contains("13812345678"));
    }
    // Another district sees nothing of it; providers read elders through their orders.
    assert_error(s.get(&path, &c.other_staff), 403, "forbidden");
    assert_error(s.get(&path, &c.provider), 403, "forbidden");
    assert_error(s.get("/v1/elders/E99999999", &c.staff), 404, "not_found");
    assert_error(
        s.request("GET", &path, None, None, &[]),
        401,
        "unauthorized",
    );
}

#[test]
fn patch_and_deactivate() {
    let c = city();
    let s = &c.s;
    let id = register(&c, elder_body(&id_number("130102", "19500315", 1)));
    approve(&c, &id);
    let path = format!("/v1/elders/{id}");
    let changed = s.expect(
        s.patch(
            &path,
            &c.staff2,
            json!({"phone":"13900001111","address":"新地址8号","street":"东风街道",
                "categories":["severely_disabled"]}),
        ),
        200,
    );
    assert_eq!(changed["phone"], "13900001111");
    assert_eq!(changed["address"], "新地址8号");
    assert_eq!(changed["street"], "东风街道");
    assert_eq!(changed["categories"], json!(["severely_disabled"]));
    assert_eq!(changed["status"], "active");
    assert_eq!(s.get(&path, &c.hotline).body["phone"], "139****1111");
    // A field left out is kept; null removes the phone.
    let r = s.expect(s.patch(&path, &c.staff, json!({"address":"又一址"})), 200);
    assert_eq!(r["phone"], "13900001111");
    let r = s.expect(s.patch(&path, &c.staff, json!({"phone": null})), 200);
    assert_eq!(r["phone"], Value::Null);
    assert_eq!(s.get(&path, &c.auditor).body["phone"], Value::Null);

    assert_error(
        s.patch(&path, &c.staff, json!({"phone":"2390000111"})),
        422,
        "invalid_phone",
    );
    assert_error(
        s.patch(&path, &c.staff, json!({"categories":["age_90_plus"]})),
        422,
        "not_eligible",
    );
    for body in [
        json!({"categories": []}),
        json!({"street": ""}),
        json!({"name": "改名"}),
    ] {
        assert_error(s.patch(&path, &c.staff, body), 422, "invalid_request");
    }
    for key in [&c.other_staff, &c.auditor, &c.hotline, &c.provider] {
        assert_error(
            s.patch(&path, key, json!({"address":"x"})),
            403,
            "forbidden",
        );
    }
    assert_error(
        s.patch("/v1/elders/E99999999", &c.staff, json!({})),
        404,
        "not_found",
    );

    // Deactivation blocks the active card; it is idempotent.
    s.expect(
        s.post(
            &format!("{path}/cards"),
            &c.staff,
            json!({"uid":"04A1B2C3D4E5F6"}),
        ),
        201,
    );
    let deactivate = |key: &str| s.post(&format!("{path}/deactivate"), key, json!({}));
    assert_error(deactivate(&c.other_staff), 403, "forbidden");
    assert_error(deactivate(&c.hotline), 403, "forbidden");
    let r = s.expect(deactivate(&c.staff), 200);
    assert_eq!(r["status"], "inactive");
    assert_eq!(r["blocked_card"], "04A1B2C3D4E5F6");
    let record = s.get(&path, &c.staff).body;
    assert_eq!(record["status"], "inactive");
    assert_eq!(record["card"]["status"], "blocked");
    let again = s.expect(deactivate(&c.admin()), 200);
    assert_eq!(again["status"], "inactive");
    assert_error(
        s.post(
            &format!("{path}/cards"),
            &c.staff,
            json!({"uid":"DEADBEEF"}),
        ),
        409,
        "conflict",
    );
    assert_error(
        s.post(&format!("{path}/approve"), &c.admin(), json!({})),
        409,
        "conflict",
    );
}

#[test]
fn cards_one_active_per_elder() {
    let c = city();
    let s = &c.s;
    let a = register(&c, elder_body(&id_number("130102", "19500315", 1)));
    let b = register(&c, elder_body(&id_number("130102", "19500315", 2)));
    let bind = |id: &str, uid: &str, key: &str| {
        s.post(
            &format!("/v1/elders/{id}/cards"),
            key,
            json!({ "uid": uid }),
        )
    };
    // A pending elder may be given a card; the UID is normalised to uppercase.
    let card = s.expect(bind(&a, "04a1b2c3d4e5f6", &c.staff), 201);
    assert_eq!(card["uid"], "04A1B2C3D4E5F6");
    assert_eq!(card["status"], "active");
    assert_eq!(card["elder_id"], a.as_str());
    assert_eq!(card["replaced_card"], Value::Null);
    // The same card again: nothing changes, 200.
    let again = s.expect(bind(&a, "04A1B2C3D4E5F6", &c.staff2), 200);
    assert_eq!(again["uid"], "04A1B2C3D4E5F6");
    // Another elder may not take it.
    assert_error(bind(&b, "04A1B2C3D4E5F6", &c.staff), 409, "card_in_use");
    // A new card blocks the old one (lost card); the old one stays this elder's forever.
    let new = s.expect(bind(&a, "DEADBEEF", &c.staff), 201);
    assert_eq!(new["replaced_card"], "04A1B2C3D4E5F6");
    let record = s.get(&format!("/v1/elders/{a}"), &c.auditor).body;
    assert_eq!(record["card"]["uid"], "DEADBEEF");
    assert_eq!(record["card"]["status"], "active");
    assert_error(bind(&a, "04A1B2C3D4E5F6", &c.staff), 409, "card_blocked");
    assert_error(bind(&b, "04A1B2C3D4E5F6", &c.staff), 409, "card_in_use");
    // 10-byte UIDs; bad UIDs.
    s.expect(bind(&b, "0102030405060708090a", &c.staff), 201);
    for bad in ["04A1B2C3D4E5F", "XYZ12345", "", "04A1B2C3D4E5F6AA"] {
        assert_error(bind(&b, bad, &c.staff), 422, "invalid_request");
    }
    for key in [&c.other_staff, &c.auditor, &c.hotline, &c.provider] {
        assert_error(bind(&b, "CAFEBABE", key), 403, "forbidden");
    }
    assert_error(bind("E99999999", "CAFEBABE", &c.staff), 404, "not_found");

    // Blocking: by the card's district or the city; idempotent.
    let block = |uid: &str, key: &str| s.post(&format!("/v1/cards/{uid}/block"), key, json!({}));
    assert_error(block("DEADBEEF", &c.other_staff), 403, "forbidden");
    assert_error(block("DEADBEEF", &c.hotline), 403, "forbidden");
    let blocked = s.expect(block("deadbeef", &c.staff2), 200);
    assert_eq!(blocked["status"], "blocked");
    assert_eq!(
        s.expect(block("DEADBEEF", &c.admin()), 200)["status"],
        "blocked"
    );
    let record = s.get(&format!("/v1/elders/{a}"), &c.staff).body;
    assert_eq!(record["card"]["status"], "blocked");
    assert_error(block("CAFEBABE", &c.staff), 404, "not_found");
    assert_error(block("nothex", &c.staff), 422, "invalid_request");
    // After the block a new card is bound without anything else to block.
    let next = s.expect(bind(&a, "CAFEBABE", &c.staff), 201);
    assert_eq!(next["replaced_card"], Value::Null);

    // Cards survive a restart.
    let s = c.s.restart(&["--clock=manual:2026-03-01T00:00:00Z"]);
    let record = s.get(&format!("/v1/elders/{a}"), &s.admin_key).body;
    assert_eq!(record["card"]["uid"], "CAFEBABE");
    let r = s.post(
        &format!("/v1/elders/{b}/cards"),
        &s.admin_key,
        json!({"uid":"DEADBEEF"}),
    );
    assert_error(r, 409, "card_in_use");
}

#[test]
fn tokens_are_stored_and_never_returned() {
    let c = city();
    let s = &c.s;
    let a = register(&c, elder_body(&id_number("130102", "19500315", 1)));
    let b = register(&c, elder_body(&id_number("130102", "19500315", 2)));
    let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    let token =
        |id: &str, body: Value, key: &str| s.post(&format!("/v1/elders/{id}/tokens"), key, body);
    let good =
        json!({"serial":"TK-0001","secret": secret,"digits":6,"period":30,"algorithm":"SHA1"});
    let r = s.expect(token(&a, good.clone(), &c.staff), 201);
    assert_eq!(r["serial"], "TK-0001");
    assert_eq!(r["digits"], 6);
    assert!(!r.to_string().contains(secret));
    let record = s.get(&format!("/v1/elders/{a}"), &c.staff).body;
    assert_eq!(
        record["token"],
        json!({"serial":"TK-0001","digits":6,"period":30,"algorithm":"SHA1"})
    );
    assert!(!record.to_string().contains(secret));
    // Defaults; lowercase and padded base32; replacing a lost token.
    let r = s.expect(
        token(
            &a,
            json!({"serial":"TK-0002","secret":"gezdgnbvgy3tqojqgezdgnbvgy3tqojq========"}),
            &c.staff,
        ),
        201,
    );
    assert_eq!(
        (&r["digits"], &r["period"], &r["algorithm"]),
        (&json!(6), &json!(30), &json!("SHA1"))
    );
    assert_eq!(
        s.get(&format!("/v1/elders/{a}"), &c.staff).body["token"]["serial"],
        "TK-0002"
    );
    // A serial bound to another elder.
    assert_error(
        token(&b, with(good.clone(), "serial", json!("TK-0002")), &c.staff),
        409,
        "conflict",
    );
    for (field, value) in [
        ("secret", json!("NOT-BASE32!")),
        ("secret", json!("GEZDGNBVGY3TQOI")),
        ("secret", json!("GEZDGNBVG")),
        ("digits", json!(5)),
        ("digits", json!(9)),
        ("period", json!(10)),
        ("period", json!(121)),
        ("algorithm", json!("MD5")),
        ("serial", json!("")),
        ("serial", json!("bad serial")),
    ] {
        assert_error(
            token(&b, with(good.clone(), field, value), &c.staff),
            422,
            "invalid_request",
        );
    }
    s.expect(
        token(
            &b,
            with(good.clone(), "algorithm", json!("SHA512")),
            &c.staff,
        ),
        201,
    );
    for key in [&c.other_staff, &c.auditor, &c.hotline, &c.provider] {
        assert_error(token(&b, good.clone(), key), 403, "forbidden");
    }
    assert_error(token("E99999999", good, &c.staff), 404, "not_found");
}

#[test]
fn balance_by_role_and_year() {
    let c = city();
    let s = &c.s;
    let id = register(&c, elder_body(&id_number("130102", "19500315", 1)));
    let path = format!("/v1/elders/{id}/balance");
    let zeros = json!({"elder_id": id, "year":"2026","available":"0.00","held":"0.00",
        "issued":"0.00","spent":"0.00","refunded":"0.00","forfeited":"0.00"});
    for key in [&c.staff, &c.admin(), &c.auditor, &c.hotline] {
        assert_eq!(s.expect(s.get(&path, key), 200), zeros);
    }
    let r = s.expect(s.get(&format!("{path}?year=2025"), &c.staff), 200);
    assert_eq!(r["year"], "2025");
    assert_error(
        s.get(&format!("{path}?year=26"), &c.staff),
        422,
        "invalid_request",
    );
    assert_error(s.get(&path, &c.other_staff), 403, "forbidden");
    assert_error(s.get(&path, &c.provider), 403, "forbidden");
    assert_error(
        s.get("/v1/elders/E99999999/balance", &c.staff),
        404,
        "not_found",
    );
    assert_error(
        s.request("GET", &path, None, None, &[]),
        401,
        "unauthorized",
    );

    // After issuance the month's credit shows as issued and available.
    s.expect(
        s.put(
            "/v1/policy/monthly-credit",
            &c.admin(),
            json!({"amounts": {"sanwu":"500","dibao":"300","solitary":"350",
                "severely_disabled":"450","age_90_plus":"100","bereaved_single_child":"400"},
                "stacking":"max"}),
        ),
        200,
    );
    approve(&c, &id);
    s.expect(
        s.post("/v1/periods/2026-03/issue", &c.admin(), json!({})),
        200,
    );
    let r = s.expect(s.get(&path, &c.hotline), 200);
    assert_eq!(
        (&r["issued"], &r["available"]),
        (&json!("350.00"), &json!("350.00"))
    );
    assert_eq!(r["spent"], "0.00");
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn id_numbers_and_phones_reach_neither_disk_nor_log_in_the_clear() {
    let c = city_on(Server::start_logged("2026-03-01T00:00:00Z"));
    let s = &c.s;
    let number = id_number("130102", "19480704", 42);
    let young = id_number("130102", "19900101", 43);
    // A non-personal marker, to show the grep below does see records in the clear.
    let marker = "assessment-marker-7f3a9c";
    let id = register(
        &c,
        with(elder_body(&number), "assessment", json!({ "note": marker })),
    );
    approve(&c, &id);
    s.expect(
        s.patch(
            &format!("/v1/elders/{id}"),
            &c.staff,
            json!({"phone":"15911112222"}),
        ),
        200,
    );
    s.expect(s.get(&format!("/v1/elders/{id}"), &c.staff), 200);
    s.expect(s.get(&format!("/v1/elders/{id}"), &c.hotline), 200);
    s.expect(
        s.post(
            &format!("/v1/elders/{id}/tokens"),
            &c.staff,
            json!({"serial":"TK-9","secret":"JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"}),
        ),
        201,
    );
    // Refusals too: a duplicate, an ineligible number, a bad phone.
    assert_error(
        s.post("/v1/elders", &c.staff, elder_body(&number)),
        409,
        "duplicate_elder",
    );
    assert_error(
        s.post("/v1/elders", &c.staff, elder_body(&young)),
        422,
        "not_eligible",
    );
    let other = id_number("130102", "19480704", 44);
    assert_error(
        s.post(
            "/v1/elders",
            &c.staff,
            with(elder_body(&other), "phone", json!("99912345678")),
        ),
        422,
        "invalid_phone",
    );
    let mut s = c.s;
    s.stop();
    let secrets = [
        number.as_str(),
        young.as_str(),
        other.as_str(),
        "13812345678",
        "99912345678",
        "15911112222",
        "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
    ];
    let data_files = files(&s.data);
    let mut marker_seen = false;
    for file in data_files {
        let bytes = std::fs::read(&file).expect("readable data file");
        marker_seen |= contains(&bytes, marker);
        for secret in secrets {
            assert!(
                !contains(&bytes, secret),
                "{} holds personal data in the clear",
                file.display()
            );
        }
    }
    assert!(marker_seen, "registry records are stored uncompressed");
    let log = std::fs::read(s.log.as_ref().expect("started logged")).expect("readable log");
    assert!(contains(&log, "elder registered"), "the log was captured");
    for secret in secrets {
        assert!(!contains(&log, secret), "the log holds personal data");
    }
    // Even the elder's name is not logged.
    assert!(!contains(&log, "王秀英"));
}

#[test]
fn openapi_lists_the_elder_endpoints() {
    let s = Server::start("2026-03-01T00:00:00Z");
    let doc = s.request("GET", "/v1/openapi.json", None, None, &[]).body;
    for path in [
        "/v1/elders",
        "/v1/elders/{id}",
        "/v1/elders/{id}/approve",
        "/v1/elders/{id}/deactivate",
        "/v1/elders/{id}/cards",
        "/v1/cards/{uid}/block",
        "/v1/elders/{id}/tokens",
        "/v1/elders/{id}/balance",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    assert!(doc["paths"]["/v1/elders/{id}"].get("patch").is_some());
}

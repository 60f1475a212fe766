//! Black-box tests of Orders and Charges (API.md "Orders", "Charges") on the real server:
//! dispatch by zone or by the elder's choice, prices under the cap, two-phase charges
//! confirmed by SMS codes read back from the outbox and by TOTP codes from Debian's
//! `oathtool` (an independent generator), every binding error code, concurrent swipes against
//! one elder's credit, refunds, nursing-fee offsets, and `ledger-audit verify` over the
//! journal they leave.

use e2e::{bin, Resp, Server};
use serde_json::{json, Value};

/// The server's manual clock starts here: 08:00 on 1 March 2026 in UTC+08:00.
const START: &str = "2026-03-01T00:00:00Z";
/// RFC 6238's SHA1 seed "12345678901234567890", in base32.
const TOKEN_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
/// `serve --hold-ttl` default.
const HOLD_TTL_SECS: u32 = 600;
const PHONE: &str = "13812345678";

/// START plus `secs` (under a day), as RFC 3339.
fn at(secs: u32) -> String {
    format!(
        "2026-03-01T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The TOTP code of the test token at START plus `secs`, from `oathtool`.
fn totp(secs: u32) -> String {
    let time = format!(
        "2026-03-01 {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    let out = std::process::Command::new("oathtool")
        .args(["--totp", "-b", "-N", &time, TOKEN_SECRET])
        .output()
        .expect("oathtool is installed (Debian package oathtool)");
    assert!(
        out.status.success(),
        "oathtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(code.len(), 6, "{code}");
    code
}

/// A synthetic resident ID number with a valid GB 11643 check character.
fn id_number(district: &str, birth: &str, seq: u32) -> String {
    let body = format!("{district}{birth}{seq:03}");
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .chars()
        .zip(WEIGHTS)
        .map(|(c, w)| c.to_digit(10).unwrap() * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

fn assert_error(r: Resp, status: u16, code: &str) -> Value {
    assert_eq!((r.status, r.code()), (status, code), "{}", r.text);
    r.body
}

struct Elder {
    id: String,
    card: String,
}

struct City {
    s: Server,
    /// Two staff keys of the zoned district 130102, and one of the free district 130104
    /// (a second approves its elders during setup).
    staff: String,
    staff2: String,
    staff_free: String,
    hotline: String,
    /// Provider keys: P001 and P002 home care, P003 a nursing home, P004 (to be suspended).
    p1: String,
    p2: String,
    p3: String,
    p4: String,
    /// 130102, street 建北街道 (→ P001), a phone, sanwu: 500.00 a month.
    phone: Elder,
    /// 130102, 建北街道, no phone but a hardware token, dibao: 300.00.
    token: Elder,
    /// 130102, street 青园街道 (→ P002), neither phone nor token.
    neither: Elder,
    /// 130102, a street no provider is assigned to.
    unzoned: Elder,
    /// 130104 (free choice), a phone, dibao: 300.00.
    free: Elder,
    /// 130102, 建北街道, a phone, dibao: 300.00 (the race).
    racer: Elder,
}

fn setup_city(s: &Server) {
    let k = &s.admin_key;
    for (code, name, mode) in [("130102", "长安区", "zoned"), ("130104", "桥西区", "free")] {
        let body = json!({"code": code, "name": name, "dispatch_mode": mode});
        s.expect(s.post("/v1/districts", k, body), 201);
    }
    for (code, name, category) in [
        ("DC001", "助浴", "daily_care"),
        ("RH001", "康复理疗", "rehab_health"),
        ("NC001", "护理费", "daily_care"),
    ] {
        let body = json!({"name": name, "service_category": category, "unit": "次"});
        s.expect(s.put(&format!("/v1/catalog/items/{code}"), k, body), 200);
    }
    for (id, name, kind, districts, caps) in [
        (
            "P001",
            "长安居家养老服务中心",
            "home_care",
            json!(["130102"]),
            json!({"DC001": "80", "RH001": "150"}),
        ),
        (
            "P002",
            "桥西幸福居家",
            "home_care",
            json!(["130102", "130104"]),
            json!({"DC001": "60", "RH001": "200"}),
        ),
        (
            "P003",
            "安康颐养院",
            "nursing_home",
            json!(["130102", "130104"]),
            json!({"NC001": "500"}),
        ),
        (
            "P004",
            "新华助老服务社",
            "home_care",
            json!(["130104"]),
            json!({"DC001": "80"}),
        ),
    ] {
        let body = json!({"id": id, "name": name, "kind": kind, "districts": districts,
            "price_caps": caps});
        s.expect(s.post("/v1/providers", k, body), 201);
    }
    let zones = json!({"建北街道": "P001", "青园街道": "P002"});
    s.expect(s.put("/v1/districts/130102/zones", k, zones), 200);
    let policy = json!({"amounts": {"sanwu": "500", "dibao": "300", "solitary": "300",
        "severely_disabled": "450", "age_90_plus": "100", "bereaved_single_child": "400"},
        "stacking": "max"});
    s.expect(s.put("/v1/policy/monthly-credit", k, policy), 200);
}

/// Registers (one staff key), approves (the other) and cards an elder.
fn elder(
    s: &Server,
    keys: (&str, &str),
    district: &str,
    street: &str,
    phone: Option<&str>,
    category: &str,
    seq: u32,
) -> Elder {
    let mut body = json!({"name": "测试老人", "gender": "M",
        "id_number": id_number(district, "19450607", seq), "district": district,
        "street": street, "address": "测试路1号", "categories": [category]});
    if let Some(phone) = phone {
        body["phone"] = json!(phone);
    }
    let id = s.expect(s.post("/v1/elders", keys.0, body), 201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.expect(
        s.post(&format!("/v1/elders/{id}/approve"), keys.1, json!({})),
        200,
    );
    let card = format!("04A1B2C3D4E5{seq:02X}");
    s.expect(
        s.post(
            &format!("/v1/elders/{id}/cards"),
            keys.0,
            json!({"uid": card}),
        ),
        201,
    );
    Elder { id, card }
}

fn city() -> City {
    let s = Server::start(START);
    setup_city(&s);
    let staff = s.key("district_staff", Some("130102"), None);
    let staff2 = s.key("district_staff", Some("130102"), None);
    let staff_free = s.key("district_staff", Some("130104"), None);
    let staff_free2 = s.key("district_staff", Some("130104"), None);
    let zoned = (staff.as_str(), staff2.as_str());
    let free = (staff_free.as_str(), staff_free2.as_str());
    let phone = elder(&s, zoned, "130102", "建北街道", Some(PHONE), "sanwu", 1);
    let token = elder(&s, zoned, "130102", "建北街道", None, "dibao", 2);
    let token_body = json!({"serial": "TK0001", "secret": TOKEN_SECRET, "digits": 6,
        "period": 30, "algorithm": "SHA1"});
    s.expect(
        s.post(
            &format!("/v1/elders/{}/tokens", token.id),
            &staff,
            token_body,
        ),
        201,
    );
    let neither = elder(&s, zoned, "130102", "青园街道", None, "dibao", 3);
    let unzoned = elder(
        &s,
        zoned,
        "130102",
        "东里街道",
        Some("13900001111"),
        "dibao",
        4,
    );
    let free_elder = elder(
        &s,
        free,
        "130104",
        "振头街道",
        Some("13700002222"),
        "dibao",
        5,
    );
    let racer = elder(
        &s,
        zoned,
        "130102",
        "建北街道",
        Some("13600003333"),
        "dibao",
        6,
    );
    let issued = s.expect(
        s.post("/v1/periods/2026-03/issue", &s.admin_key, json!({})),
        200,
    );
    assert_eq!(issued["elders"], 6);
    City {
        hotline: s.key("hotline", None, None),
        p1: s.key("provider", None, Some("P001")),
        p2: s.key("provider", None, Some("P002")),
        p3: s.key("provider", None, Some("P003")),
        p4: s.key("provider", None, Some("P004")),
        staff,
        staff2,
        staff_free,
        phone,
        token,
        neither,
        unzoned,
        free: free_elder,
        racer,
        s,
    }
}

impl City {
    /// A new order from the hotline.
    fn order(&self, elder: &Elder, item: &str, provider_id: Option<&str>) -> Resp {
        let mut body = json!({"elder_id": elder.id, "item_code": item});
        if let Some(p) = provider_id {
            body["provider_id"] = json!(p);
        }
        self.s.post("/v1/orders", &self.hotline, body)
    }

    /// An order accepted and agreed at `price` by its provider (key `provider`).
    fn agreed(
        &self,
        elder: &Elder,
        item: &str,
        provider: &str,
        provider_id: Option<&str>,
        price: &str,
    ) -> String {
        let s = &self.s;
        let order = s.expect(self.order(elder, item, provider_id), 201);
        let id = order["id"].as_str().unwrap().to_string();
        s.expect(
            s.post(&format!("/v1/orders/{id}/accept"), provider, json!({})),
            200,
        );
        let agreed = s.expect(
            s.post(
                &format!("/v1/orders/{id}/agree"),
                provider,
                json!({"price": price}),
            ),
            200,
        );
        assert_eq!(agreed["status"], "agreed");
        id
    }

    /// POST /v1/charges with `body` under `key` (no header when `None`).
    fn swipe_body(&self, provider: &str, body: Value, key: Option<&str>) -> Resp {
        let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        self.s
            .request("POST", "/v1/charges", Some(provider), Some(&body), &headers)
    }

    fn swipe(&self, provider: &str, order: &str, card: &str, amount: &str) -> Resp {
        let body = json!({"order_id": order, "card_uid": card, "amount": amount});
        self.swipe_body(provider, body, Some(&format!("swipe-{order}-{amount}")))
    }

    /// A pending charge's id.
    fn pending(&self, provider: &str, order: &str, card: &str, amount: &str) -> String {
        let r = self
            .s
            .expect(self.swipe(provider, order, card, amount), 201);
        assert_eq!(r["status"], "pending");
        r["id"].as_str().unwrap().to_string()
    }

    fn confirm(&self, provider: &str, charge: &str, code: &str) -> Resp {
        self.s.post(
            &format!("/v1/charges/{charge}/confirm"),
            provider,
            json!({"code": code}),
        )
    }

    fn charge(&self, id: &str) -> Value {
        self.s.expect(
            self.s.get(&format!("/v1/charges/{id}"), &self.s.admin_key),
            200,
        )
    }

    fn balance(&self, elder: &Elder) -> Value {
        let path = format!("/v1/elders/{}/balance?year=2026", elder.id);
        self.s.expect(self.s.get(&path, &self.s.admin_key), 200)
    }

    /// (available, held) of an elder.
    fn credit(&self, elder: &Elder) -> (String, String) {
        let b = self.balance(elder);
        (
            b["available"].as_str().unwrap().to_string(),
            b["held"].as_str().unwrap().to_string(),
        )
    }
}

/// Every SMS sent for `charge`, in order, from `DATA/sms-outbox.jsonl`.
fn texts(s: &Server, charge: &str) -> Vec<Value> {
    let outbox = s.data.join("sms-outbox.jsonl");
    let text = std::fs::read_to_string(outbox).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("outbox lines are JSON"))
        .filter(|m| m["charge_id"] == charge)
        .collect()
}

/// The 6 digits after `验证码` and an optional `:`, `：` or space.
fn code_in(text: &str) -> String {
    let after = text.split("验证码").nth(1).expect("the text has 验证码");
    let after = after.trim_start_matches([':', '：', ' ']);
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 6, "a 6-digit code in {text:?}");
    digits
}

/// The code of the latest SMS for `charge`.
fn sms_code(s: &Server, charge: &str) -> String {
    let sent = texts(s, charge);
    let last = sent.last().expect("an SMS was sent for this charge");
    code_in(last["text"].as_str().unwrap())
}

/// A 6-digit code that is not `code`.
fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

fn entry(s: &Server, seq: u64) -> Value {
    let page = s.get(
        &format!("/v1/audit/entries?from={seq}&limit=1"),
        &s.admin_key,
    );
    assert_eq!(page.status, 200, "{}", page.text);
    serde_json::from_str(page.text.lines().next().expect("one entry")).unwrap()
}

/// Exports the journal and checks it with the real `ledger-audit verify`.
fn audit_verifies(s: &Server) {
    let k = &s.admin_key;
    let cp = s.get("/v1/audit/checkpoint", k);
    let size = cp.body["tree_size"].as_u64().unwrap();
    let mut export = String::new();
    let mut from = 0;
    while from < size {
        let page = s.get(&format!("/v1/audit/entries?from={from}&limit=10000"), k);
        from += page.text.lines().count() as u64;
        export.push_str(&page.text);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("entries.jsonl"), &export).unwrap();
    std::fs::write(dir.path().join("checkpoint.json"), &cp.text).unwrap();
    let pk = s.request("GET", "/v1/audit/public-key", None, None, &[]);
    std::fs::write(dir.path().join("public-key.json"), &pk.text).unwrap();
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
        "ledger-audit: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in export.lines() {
        let text = line.to_string();
        assert!(
            !text.contains(PHONE) && !text.contains("测试老人"),
            "personal data in the journal: {text}"
        );
    }
}

#[test]
fn orders_are_dispatched_by_zone_or_choice_and_agreed_under_the_cap() {
    let c = city();
    let s = &c.s;

    // Zoned: the street's provider, whatever the caller.
    let o1 = s.expect(c.order(&c.phone, "DC001", None), 201);
    assert_eq!(o1["status"], "dispatched");
    assert_eq!(o1["provider_id"], "P001");
    let o1 = o1["id"].as_str().unwrap().to_string();
    let body = json!({"elder_id": c.neither.id, "item_code": "DC001"});
    let o2 = s.expect(s.post("/v1/orders", &c.staff, body), 201);
    assert_eq!(o2["provider_id"], "P002");
    let o2 = o2["id"].as_str().unwrap().to_string();
    assert_error(
        c.order(&c.unzoned, "DC001", None),
        409,
        "no_provider_for_zone",
    );
    // Naming another provider than the street's in a zoned district is refused.
    assert_error(
        c.order(&c.phone, "DC001", Some("P002")),
        422,
        "invalid_request",
    );

    // Free: the elder names the provider, who must serve the district and offer the item.
    let missing = assert_error(c.order(&c.free, "DC001", None), 422, "invalid_request");
    assert!(missing["error"]["message"]
        .as_str()
        .unwrap()
        .contains("provider_id"));
    assert_error(
        c.order(&c.free, "DC001", Some("P001")),
        422,
        "invalid_request",
    );
    assert_error(
        c.order(&c.free, "NC001", Some("P002")),
        422,
        "invalid_request",
    );
    assert_error(
        c.order(&c.free, "XX999", Some("P002")),
        422,
        "invalid_request",
    );
    let o3 = s.expect(c.order(&c.free, "RH001", Some("P002")), 201);
    assert_eq!(o3["provider_id"], "P002");
    let o3 = o3["id"].as_str().unwrap().to_string();

    // Who may create: hotline and the elder's district staff; not providers or other districts.
    let body = json!({"elder_id": c.phone.id, "item_code": "DC001"});
    assert_eq!(
        s.post("/v1/orders", &c.staff_free, body.clone()).status,
        403
    );
    assert_eq!(s.post("/v1/orders", &c.p1, body).status, 403);

    // The provider accepts, then agrees a price no higher than its cap.
    let accept = |key: &str, id: &str| s.post(&format!("/v1/orders/{id}/accept"), key, json!({}));
    let agree = |key: &str, id: &str, price: Value| {
        s.post(
            &format!("/v1/orders/{id}/agree"),
            key,
            json!({"price": price}),
        )
    };
    assert_eq!(accept(&c.p2, &o1).status, 403);
    assert_eq!(accept(&c.hotline, &o1).status, 403);
    assert_error(agree(&c.p1, &o1, json!("50")), 409, "conflict");
    assert_eq!(s.expect(accept(&c.p1, &o1), 200)["status"], "accepted");
    assert_eq!(s.expect(accept(&c.p1, &o1), 200)["status"], "accepted");
    assert_eq!(agree(&c.p2, &o1, json!("50")).status, 403);
    assert_error(agree(&c.p1, &o1, json!("80.01")), 422, "price_over_cap");
    assert_error(agree(&c.p1, &o1, json!(50)), 422, "invalid_amount");
    assert_error(agree(&c.p1, &o1, json!("0")), 422, "invalid_amount");
    let agreed = s.expect(agree(&c.p1, &o1, json!("80")), 200);
    assert_eq!(
        (agreed["status"].as_str(), agreed["price"].as_str()),
        (Some("agreed"), Some("80.00"))
    );
    let again = s.expect(agree(&c.p1, &o1, json!("58.5")), 200);
    assert_eq!(again["price"], "58.50");
    s.expect(accept(&c.p2, &o3), 200);
    assert_error(agree(&c.p2, &o3, json!("200.01")), 422, "price_over_cap");
    s.expect(agree(&c.p2, &o3, json!("200")), 200);

    // Reading: the order's provider, its district, the hotline and the city.
    assert_eq!(s.get(&format!("/v1/orders/{o1}"), &c.p2).status, 403);
    assert_eq!(
        s.get(&format!("/v1/orders/{o1}"), &c.staff_free).status,
        403
    );
    let read = s.expect(s.get(&format!("/v1/orders/{o1}"), &c.p1), 200);
    assert_eq!(read["elder_id"], c.phone.id.as_str());
    assert_eq!(read["item_code"], "DC001");
    s.expect(s.get(&format!("/v1/orders/{o1}"), &c.staff), 200);
    s.expect(s.get(&format!("/v1/orders/{o1}"), &c.hotline), 200);
    assert_eq!(s.get("/v1/orders/O99999999", &c.hotline).status, 404);

    // Lists and their filters; a provider sees only its own.
    let ids = |key: &str, query: &str| -> Vec<String> {
        let list = s.expect(s.get(&format!("/v1/orders{query}"), key), 200);
        list["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&c.hotline, ""), [o1.as_str(), o2.as_str(), o3.as_str()]);
    assert_eq!(
        ids(&c.hotline, "?status=agreed"),
        [o1.as_str(), o3.as_str()]
    );
    assert_eq!(ids(&c.hotline, "?status=dispatched"), [o2.as_str()]);
    assert_eq!(ids(&c.hotline, "?district=130104"), [o3.as_str()]);
    assert_eq!(
        ids(&c.hotline, "?provider=P002"),
        [o2.as_str(), o3.as_str()]
    );
    assert_eq!(
        ids(&c.hotline, "?provider=P002&status=agreed"),
        [o3.as_str()]
    );
    assert_eq!(ids(&c.p1, ""), [o1.as_str()]);
    assert!(ids(&c.p1, "?provider=P002").is_empty());
    assert_eq!(ids(&c.p2, ""), [o2.as_str(), o3.as_str()]);
    assert_eq!(ids(&c.staff_free, ""), [o3.as_str()]);
    assert_error(
        s.get("/v1/orders?status=lost", &c.hotline),
        422,
        "invalid_request",
    );

    // Cancelling.
    let cancelled = s.expect(
        s.post(&format!("/v1/orders/{o2}/cancel"), &c.hotline, json!({})),
        200,
    );
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(ids(&c.hotline, "?status=cancelled"), [o2.as_str()]);
    assert_error(accept(&c.p2, &o2), 409, "conflict");
}

#[test]
fn an_sms_code_confirms_a_charge_and_the_receipt_is_signed_and_printable() {
    let c = city();
    let s = &c.s;
    let order = c.agreed(&c.phone, "DC001", &c.p1, None, "58.5");
    let body = json!({"order_id": order, "card_uid": c.phone.card.to_lowercase(),
        "amount": "58.5", "staff": "张护工"});
    let created = s.expect(c.swipe_body(&c.p1, body, Some("terminal-7:0001")), 201);
    assert_eq!(created["status"], "pending");
    assert_eq!(created["challenge"], "sms");
    assert_eq!(created["attempts_left"], 5);
    assert_eq!(created["phone_hint"], "138****5678");
    assert_eq!(created["expires_at"], at(HOLD_TTL_SECS));
    let id = created["id"].as_str().unwrap().to_string();

    // The SMS names the payee and the amount; the hold reserves the credit.
    let sent = texts(s, &id);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["to"], PHONE);
    assert_eq!(sent[0]["sent_at"], START);
    let text = sent[0]["text"].as_str().unwrap();
    assert!(text.contains("长安居家养老服务中心"), "{text}");
    assert!(text.contains("58.50"), "{text}");
    assert!(text.contains("10分钟内有效"), "{text}");
    let code = code_in(text);
    assert_eq!(c.credit(&c.phone), ("441.50".into(), "58.50".into()));
    let pending = c.charge(&id);
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["sms_status"], "sent");
    assert_eq!(pending["amount"], "58.50");
    assert!(!pending.to_string().contains(PHONE));

    let confirmed = s.expect(c.confirm(&c.p1, &id, &code), 200);
    assert_eq!(confirmed["status"], "confirmed");
    let seq = confirmed["entry_seq"].as_u64().expect("entry_seq");
    let receipt = &confirmed["receipt"];
    let no = receipt["no"].as_str().unwrap().to_string();
    assert_eq!(receipt["amount"], "58.50");
    assert_eq!(receipt["charge_id"], id.as_str());
    assert_eq!(receipt["order_id"], order.as_str());
    assert_eq!(receipt["elder_id"], c.phone.id.as_str());
    assert_eq!(receipt["provider_id"], "P001");
    assert_eq!(receipt["item_code"], "DC001");
    assert_eq!(receipt["entry_seq"], seq);
    assert_eq!(receipt["confirmed_at"], START);

    // The QR payload: SLR1|no|amount|provider|confirmed_at|entry_hash|sig, where the entry
    // hash is the journal's own and sig is 64 bytes of base64url without padding.
    let qr = receipt["qr"].as_str().unwrap();
    assert!(qr.starts_with("SLR1|"), "{qr}");
    let fields: Vec<&str> = qr.split('|').collect();
    assert_eq!(
        fields[..6],
        [
            "SLR1",
            &no,
            "58.50",
            "P001",
            START,
            receipt["entry_hash"].as_str().unwrap()
        ]
    );
    assert_eq!(fields[6].len(), 86, "{qr}");
    assert!(fields[6]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let posted = entry(s, seq);
    assert_eq!(posted["kind"], "charge");
    assert_eq!(posted["hash"], receipt["entry_hash"]);
    assert_eq!(posted["refs"]["receipt"], no.as_str());
    assert_eq!(posted["refs"]["charge"], id.as_str());
    assert_eq!(
        posted["postings"],
        json!([
            {"account": format!("elder:{}:2026", c.phone.id), "side": "debit", "amount": "58.50"},
            {"account": "provider:P001:payable", "side": "credit", "amount": "58.50"}
        ])
    );

    // The receipt reads back the same, and prints three copies with their QR codes.
    let read = s.expect(s.get(&format!("/v1/receipts/{no}"), &c.p1), 200);
    assert_eq!(&read, receipt);
    s.expect(s.get(&format!("/v1/receipts/{no}"), &c.staff), 200);
    assert_eq!(s.get(&format!("/v1/receipts/{no}"), &c.p2).status, 403);
    assert_eq!(s.get("/v1/receipts/R2026999999999", &c.p1).status, 404);
    let print = s.get(&format!("/v1/receipts/{no}/print"), &c.p1);
    assert_eq!(print.status, 200);
    let html = &print.text;
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(!html.contains("<?xml"));
    for copy in ["老人联", "服务商联", "区民政局联"] {
        assert!(html.contains(copy), "no {copy} copy");
    }
    assert!(html.matches(&no).count() >= 3);

    // The credit is spent, the order completed, and the charge is done with.
    let b = c.balance(&c.phone);
    assert_eq!(
        (&b["available"], &b["held"], &b["spent"]),
        (&json!("441.50"), &json!("0.00"), &json!("58.50"))
    );
    let done = c.charge(&id);
    assert_eq!(done["status"], "confirmed");
    assert_eq!(done["receipt_no"], no.as_str());
    let read = s.expect(s.get(&format!("/v1/orders/{order}"), &c.p1), 200);
    assert_eq!(read["status"], "completed");
    assert_error(c.confirm(&c.p1, &id, &code), 409, "charge_not_pending");
    assert_error(
        c.swipe(&c.p1, &order, &c.phone.card, "1"),
        409,
        "order_not_chargeable",
    );
    audit_verifies(s);
}

#[test]
fn token_codes_from_oathtool_confirm_once_per_time_step() {
    let c = city();
    let s = &c.s;
    let orders: Vec<String> = (0..4)
        .map(|_| c.agreed(&c.token, "DC001", &c.p1, None, "50"))
        .collect();
    let first = s.expect(c.swipe(&c.p1, &orders[0], &c.token.card, "50"), 201);
    assert_eq!(first["challenge"], "token");
    assert!(first.get("phone_hint").is_none());
    let first = first["id"].as_str().unwrap().to_string();
    assert!(texts(s, &first).is_empty(), "no SMS for a token challenge");
    assert!(c.charge(&first).get("sms_status").is_none());

    let code = totp(0);
    let done = s.expect(c.confirm(&c.p1, &first, &code), 200);
    assert_eq!(done["status"], "confirmed");

    // The same code for a second charge within the same time step is a replay.
    let second = c.pending(&c.p1, &orders[1], &c.token.card, "50");
    let replay = assert_error(c.confirm(&c.p1, &second, &code), 422, "code_invalid");
    assert_eq!(replay["error"]["attempts_left"], 4);
    // The next step's code works once the clock is there.
    c.s.set_clock(&at(30));
    s.expect(c.confirm(&c.p1, &second, &totp(30)), 200);

    // ±1 step: two steps ahead is refused, one step ahead is accepted.
    let third = c.pending(&c.p1, &orders[2], &c.token.card, "50");
    assert_error(c.confirm(&c.p1, &third, &totp(90)), 422, "code_invalid");
    s.expect(c.confirm(&c.p1, &third, &totp(60)), 200);
    // ... and after a code of step 2 was used, step 1's code is old, even if in the window.
    let fourth = c.pending(&c.p1, &orders[3], &c.token.card, "50");
    assert_error(c.confirm(&c.p1, &fourth, &totp(30)), 422, "code_invalid");
    // 300.00 − 3 × 50.00 confirmed − 50.00 held.
    assert_eq!(c.credit(&c.token), ("100.00".into(), "50.00".into()));

    // A terminal may ask for the token only where there is one, and SMS only with a phone.
    let phone_order = c.agreed(&c.phone, "DC001", &c.p1, None, "10");
    let body = json!({"order_id": phone_order, "card_uid": c.phone.card, "amount": "10",
        "challenge": "token"});
    assert_error(
        c.swipe_body(&c.p1, body, Some("ask-token")),
        409,
        "no_second_factor",
    );
    let token_order = c.agreed(&c.token, "DC001", &c.p1, None, "10");
    let body = json!({"order_id": token_order, "card_uid": c.token.card, "amount": "10",
        "challenge": "sms"});
    assert_error(
        c.swipe_body(&c.p1, body, Some("ask-sms")),
        409,
        "no_second_factor",
    );
    audit_verifies(s);
}

#[test]
fn a_swipe_is_refused_with_the_binding_error_codes() {
    let c = city();
    let s = &c.s;
    let order = c.agreed(&c.phone, "DC001", &c.p1, None, "50");
    let body =
        |amount: Value| json!({"order_id": order, "card_uid": c.phone.card, "amount": amount});

    // The Idempotency-Key header is required.
    let r = assert_error(
        c.swipe_body(&c.p1, body(json!("50")), None),
        422,
        "invalid_request",
    );
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    // Amounts: strings of at most 2 decimals, positive, not above the agreed price.
    for bad in [
        json!(50),
        json!("50.001"),
        json!("0"),
        json!("-5"),
        json!("5e1"),
        json!(null),
    ] {
        let r = c.swipe_body(&c.p1, body(bad.clone()), Some(&format!("bad-{bad}")));
        assert_error(r, 422, "invalid_amount");
    }
    assert_error(
        c.swipe_body(&c.p1, body(json!("50.01")), Some("over")),
        422,
        "amount_over_agreed",
    );
    // Cards: another elder's, or an unknown one, does not match the order.
    let other = json!({"order_id": order, "card_uid": c.token.card, "amount": "50"});
    assert_error(
        c.swipe_body(&c.p1, other, Some("other-card")),
        422,
        "card_mismatch",
    );
    let unknown = json!({"order_id": order, "card_uid": "DEADBEEF", "amount": "50"});
    assert_error(
        c.swipe_body(&c.p1, unknown, Some("unknown-card")),
        422,
        "card_mismatch",
    );
    // The order: another provider's is forbidden; an unknown one is 404; bad JSON is 400.
    let r = c.swipe_body(&c.p2, body(json!("50")), Some("p2"));
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.text);
    let none = json!({"order_id": "O99999999", "card_uid": c.phone.card, "amount": "5"});
    assert_eq!(c.swipe_body(&c.p1, none, Some("none")).status, 404);
    let malformed = s.request(
        "POST",
        "/v1/charges",
        Some(&c.p1),
        None,
        &[
            ("Idempotency-Key", "x"),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(malformed.status, 400);
    assert_eq!(
        c.swipe_body(&c.staff, body(json!("50")), Some("staff"))
            .status,
        403
    );
    // Not agreed yet.
    let accepted = s.expect(c.order(&c.phone, "DC001", None), 201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.expect(
        s.post(&format!("/v1/orders/{accepted}/accept"), &c.p1, json!({})),
        200,
    );
    assert_error(
        c.swipe(&c.p1, &accepted, &c.phone.card, "10"),
        409,
        "order_not_chargeable",
    );

    // Idempotency: the same key and body answer the same and send no second SMS; the same
    // key with another body is refused; keys are each provider's own.
    let first = c.swipe_body(&c.p1, body(json!("50")), Some("k-1"));
    assert_eq!(first.status, 201, "{}", first.text);
    let again = c.swipe_body(&c.p1, body(json!("50")), Some("k-1"));
    assert_eq!((again.status, &again.body), (201, &first.body));
    // The same amount written another way, and the card in lowercase, is the same request.
    let same =
        json!({"card_uid": c.phone.card.to_lowercase(), "amount": "50.00", "order_id": order});
    let again = c.swipe_body(&c.p1, same, Some("k-1"));
    assert_eq!((again.status, &again.body), (201, &first.body));
    let id = first.body["id"].as_str().unwrap();
    assert_eq!(texts(s, id).len(), 1);
    assert_error(
        c.swipe_body(&c.p1, body(json!("40")), Some("k-1")),
        409,
        "idempotency_mismatch",
    );
    // The order now has a pending charge: another swipe on it is refused.
    assert_error(
        c.swipe_body(&c.p1, body(json!("50")), Some("k-2")),
        409,
        "order_not_chargeable",
    );
    let p2_order = c.agreed(&c.free, "DC001", &c.p2, Some("P002"), "20");
    let p2_body = json!({"order_id": p2_order, "card_uid": c.free.card, "amount": "20"});
    let p2 = s.expect(c.swipe_body(&c.p2, p2_body, Some("k-1")), 201);
    assert_ne!(p2["id"].as_str(), Some(id));

    // No second factor.
    let neither = c.agreed(&c.neither, "DC001", &c.p2, None, "30");
    assert_error(
        c.swipe(&c.p2, &neither, &c.neither.card, "30"),
        409,
        "no_second_factor",
    );

    // Not enough credit: holds reserve it (300.00 − 20.00 held − 200.00 held < 200.00).
    let big = c.agreed(&c.free, "RH001", &c.p2, Some("P002"), "200");
    c.pending(&c.p2, &big, &c.free.card, "200");
    assert_eq!(c.credit(&c.free), ("80.00".into(), "220.00".into()));
    let bigger = c.agreed(&c.free, "RH001", &c.p2, Some("P002"), "200");
    let r = assert_error(
        c.swipe(&c.p2, &bigger, &c.free.card, "200"),
        409,
        "insufficient_credit",
    );
    assert!(!r.to_string().contains(PHONE));
    assert_eq!(c.credit(&c.free), ("80.00".into(), "220.00".into()));
    // The credit left is enough for a smaller amount than agreed.
    c.pending(&c.p2, &bigger, &c.free.card, "80");

    // A blocked card never charges: binding a new card blocks the old one.
    let small = c.agreed(&c.free, "DC001", &c.p2, Some("P002"), "10");
    s.expect(
        s.post(
            &format!("/v1/elders/{}/cards", c.free.id),
            &c.staff_free,
            json!({"uid": "04FFFFFFFFFF01"}),
        ),
        201,
    );
    assert_error(
        c.swipe(&c.p2, &small, &c.free.card, "10"),
        409,
        "card_blocked",
    );

    // A suspended provider cannot start charges (nor take new orders).
    let p4_order = c.agreed(&c.free, "DC001", &c.p4, Some("P004"), "30");
    s.expect(
        s.post("/v1/providers/P004/suspend", &s.admin_key, json!({})),
        200,
    );
    assert_error(
        c.swipe(&c.p4, &p4_order, "04FFFFFFFFFF01", "30"),
        403,
        "provider_suspended",
    );
    assert_error(
        c.order(&c.free, "DC001", Some("P004")),
        403,
        "provider_suspended",
    );
}

#[test]
fn wrong_codes_expiry_resends_and_cancels() {
    let c = city();
    let s = &c.s;
    let orders: Vec<String> = (0..4)
        .map(|_| c.agreed(&c.phone, "DC001", &c.p1, None, "80"))
        .collect();

    // Wrong codes count down inside the error object; the 5th voids the hold.
    let a = c.pending(&c.p1, &orders[0], &c.phone.card, "50");
    let code = sms_code(s, &a);
    assert_eq!(c.credit(&c.phone), ("450.00".into(), "50.00".into()));
    for left in (1..=4).rev() {
        let r = assert_error(c.confirm(&c.p1, &a, &wrong(&code)), 422, "code_invalid");
        assert_eq!(r["error"]["attempts_left"], left);
        assert_eq!(c.charge(&a)["attempts_left"], left);
    }
    assert_error(c.confirm(&c.p2, &a, &code), 403, "forbidden");
    assert_error(
        c.confirm(&c.p1, &a, &wrong(&code)),
        409,
        "too_many_attempts",
    );
    assert_eq!(c.charge(&a)["status"], "voided");
    assert_eq!(c.credit(&c.phone), ("500.00".into(), "0.00".into()));
    assert_error(c.confirm(&c.p1, &a, &code), 409, "charge_not_pending");
    assert_error(c.confirm(&c.p1, &a, "12a456"), 422, "invalid_request");

    // Resends: not within 60 s of the last SMS, at most 3 SMS; each new code replaces the old.
    let b = c.pending(&c.p1, &orders[1], &c.phone.card, "60");
    let resend = |id: &str| s.post(&format!("/v1/charges/{id}/resend"), &c.p1, json!({}));
    let first_code = sms_code(s, &b);
    assert_error(resend(&b), 429, "resend_limited");
    s.set_clock(&at(59));
    assert_error(resend(&b), 429, "resend_limited");
    s.set_clock(&at(60));
    let r = s.expect(resend(&b), 200);
    assert_eq!(r["status"], "pending");
    let sent = texts(s, &b);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1]["sent_at"], at(60));
    // A resend says how long is left on the hold, not the whole time to live.
    assert!(
        sent[1]["text"].as_str().unwrap().contains("9分钟内有效"),
        "{}",
        sent[1]
    );
    let second_code = sms_code(s, &b);
    if second_code != first_code {
        assert_error(c.confirm(&c.p1, &b, &first_code), 422, "code_invalid");
    }
    s.set_clock(&at(120));
    s.expect(resend(&b), 200);
    s.set_clock(&at(180));
    assert_error(resend(&b), 429, "resend_limited");
    assert_eq!(texts(s, &b).len(), 3);
    let confirmed = s.expect(c.confirm(&c.p1, &b, &sms_code(s, &b)), 200);
    assert_eq!(confirmed["receipt"]["amount"], "60.00");
    assert_error(resend(&b), 409, "charge_not_pending");

    // Cancel: voided, the credit released; not twice.
    let cancel = |id: &str| s.post(&format!("/v1/charges/{id}/cancel"), &c.p1, json!({}));
    let d = c.pending(&c.p1, &orders[2], &c.phone.card, "70");
    assert_eq!(c.credit(&c.phone), ("370.00".into(), "70.00".into()));
    assert_eq!(
        s.post(&format!("/v1/charges/{d}/cancel"), &c.p2, json!({}))
            .status,
        403
    );
    assert_eq!(s.expect(cancel(&d), 200)["status"], "voided");
    assert_eq!(c.charge(&d)["status"], "voided");
    assert_eq!(c.credit(&c.phone), ("440.00".into(), "0.00".into()));
    assert_error(cancel(&d), 409, "charge_not_pending");
    assert_error(
        c.confirm(&c.p1, &d, &sms_code(s, &d)),
        409,
        "charge_not_pending",
    );
    // The order of a voided charge can be agreed and swiped again; not while one is pending.
    let agree = |price: &str| {
        s.post(
            &format!("/v1/orders/{}/agree", orders[2]),
            &c.p1,
            json!({"price": price}),
        )
    };
    s.expect(agree("75"), 200);
    assert_error(
        c.swipe(&c.p1, &orders[2], &c.phone.card, "76"),
        422,
        "amount_over_agreed",
    );
    let d2 = c.pending(&c.p1, &orders[2], &c.phone.card, "71");
    assert_error(agree("70"), 409, "conflict");
    s.expect(cancel(&d2), 200);

    // Expiry: exactly 600 s after the swipe the hold is gone for every reader at once.
    let e = c.pending(&c.p1, &orders[3], &c.phone.card, "80");
    let code = sms_code(s, &e);
    assert_eq!(c.charge(&e)["expires_at"], at(180 + HOLD_TTL_SECS));
    s.set_clock(&at(180 + HOLD_TTL_SECS - 1));
    assert_eq!(c.charge(&e)["status"], "pending");
    assert_eq!(c.credit(&c.phone), ("360.00".into(), "80.00".into()));
    s.set_clock(&at(180 + HOLD_TTL_SECS));
    assert_eq!(c.charge(&e)["status"], "expired");
    assert_eq!(c.credit(&c.phone), ("440.00".into(), "0.00".into()));
    assert_error(c.confirm(&c.p1, &e, &code), 410, "charge_expired");
    assert_error(resend(&e), 410, "charge_expired");
    assert_error(cancel(&e), 410, "charge_expired");
    assert_eq!(c.charge(&e)["status"], "expired");
    let b = c.balance(&c.phone);
    assert_eq!(
        (&b["spent"], &b["available"]),
        (&json!("60.00"), &json!("440.00"))
    );
    audit_verifies(s);
}

#[test]
fn concurrent_swipes_never_spend_more_than_the_credit() {
    const SWIPES: usize = 16;
    let c = city();
    let s = &c.s;
    // 16 × 40.00 = 640.00 against 300.00: exactly 7 holds fit.
    let orders: Vec<String> = (0..SWIPES)
        .map(|_| c.agreed(&c.racer, "DC001", &c.p1, None, "40"))
        .collect();
    let barrier = std::sync::Barrier::new(SWIPES);
    let results: Vec<Resp> = std::thread::scope(|scope| {
        let handles: Vec<_> = orders
            .iter()
            .map(|order| {
                let (c, barrier) = (&c, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    c.swipe(&c.p1, order, &c.racer.card, "40")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut held: Vec<String> = Vec::new();
    for r in &results {
        match r.status {
            201 => held.push(r.body["id"].as_str().unwrap().to_string()),
            _ => assert_eq!(
                (r.status, r.code()),
                (409, "insufficient_credit"),
                "{}",
                r.text
            ),
        }
    }
    assert_eq!(held.len(), 7, "7 × 40.00 fit in 300.00");
    assert_eq!(c.credit(&c.racer), ("20.00".into(), "280.00".into()));

    // Confirming them all at once posts each exactly once.
    let confirmed: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = held
            .iter()
            .map(|id| {
                let c = &c;
                scope.spawn(move || c.s.expect(c.confirm(&c.p1, id, &sms_code(&c.s, id)), 200))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seqs: Vec<u64> = confirmed
        .iter()
        .map(|r| r["entry_seq"].as_u64().unwrap())
        .collect();
    let mut receipts: Vec<&str> = confirmed
        .iter()
        .map(|r| r["receipt"]["no"].as_str().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    receipts.sort_unstable();
    receipts.dedup();
    assert_eq!((seqs.len(), receipts.len()), (7, 7));
    let b = c.balance(&c.racer);
    assert_eq!(
        (&b["available"], &b["held"], &b["spent"]),
        (&json!("20.00"), &json!("0.00"), &json!("280.00"))
    );
    audit_verifies(s);
}

#[test]
fn refunds_by_the_elders_district_and_offsets_for_nursing_homes() {
    let c = city();
    let s = &c.s;
    let order = c.agreed(&c.phone, "DC001", &c.p1, None, "80");
    let id = c.pending(&c.p1, &order, &c.phone.card, "80");
    let refund = |key: &str, body: Value| s.post(&format!("/v1/charges/{id}/refund"), key, body);
    let reason = json!({"reason": "12349投诉：服务未完成"});
    // Only a confirmed charge can be refunded.
    assert_error(refund(&c.staff, reason.clone()), 409, "conflict");
    s.expect(c.confirm(&c.p1, &id, &sms_code(s, &id)), 200);
    assert_eq!(c.credit(&c.phone), ("420.00".into(), "0.00".into()));

    assert_eq!(refund(&c.staff_free, reason.clone()).status, 403);
    assert_eq!(refund(&c.hotline, reason.clone()).status, 403);
    assert_eq!(refund(&c.p1, reason.clone()).status, 403);
    assert_error(refund(&c.staff, json!({})), 422, "invalid_request");
    let refunded = s.expect(refund(&c.staff, reason.clone()), 200);
    assert_eq!(refunded["status"], "refunded");
    assert_eq!(c.charge(&id)["status"], "refunded");
    let b = c.balance(&c.phone);
    assert_eq!(
        (&b["available"], &b["refunded"]),
        (&json!("500.00"), &json!("80.00"))
    );
    let r = refund(&c.staff2, reason);
    assert_eq!(r.status, 409, "{}", r.text);
    let seq = refunded["entry_seq"].as_u64().unwrap();
    let reversed = entry(s, seq);
    assert_eq!(reversed["kind"], "refund");
    assert_eq!(reversed["refs"]["charge"], id.as_str());

    // Offsets: a nursing home's fee against the elder's credit, by the elder's district.
    let offset = |key: &str, provider: &str, amount: &str, consent: &str| {
        s.post(
            "/v1/offsets",
            key,
            json!({"elder_id": c.phone.id, "provider_id": provider, "month": "2026-03",
                "amount": amount, "consent_ref": consent}),
        )
    };
    let made = s.expect(offset(&c.staff, "P003", "120", "CONSENT-001"), 201);
    let seq = made["entry_seq"].as_u64().expect("entry_seq");
    assert_eq!(made["amount"], "120.00");
    let posted = entry(s, seq);
    assert_eq!(posted["kind"], "offset");
    assert_eq!(
        posted["postings"],
        json!([
            {"account": format!("elder:{}:2026", c.phone.id), "side": "debit", "amount": "120.00"},
            {"account": "provider:P003:payable", "side": "credit", "amount": "120.00"}
        ])
    );
    assert_eq!(c.credit(&c.phone), ("380.00".into(), "0.00".into()));
    // The same consent again is the same offset, not a second one.
    let again = s.expect(offset(&c.staff, "P003", "120", "CONSENT-001"), 201);
    assert_eq!(again["entry_seq"], seq);
    assert_eq!(c.credit(&c.phone), ("380.00".into(), "0.00".into()));
    assert_error(
        offset(&c.staff, "P001", "10", "CONSENT-002"),
        422,
        "invalid_request",
    );
    assert_error(
        offset(&c.staff, "P003", "380.01", "CONSENT-003"),
        409,
        "insufficient_credit",
    );
    assert_error(
        offset(&c.staff, "P003", "0", "CONSENT-004"),
        422,
        "invalid_amount",
    );
    assert_eq!(
        offset(&c.staff_free, "P003", "10", "CONSENT-005").status,
        403
    );
    assert_eq!(offset(&c.p3, "P003", "10", "CONSENT-006").status, 403);
    s.expect(offset(&c.staff, "P003", "380", "CONSENT-007"), 201);
    assert_eq!(c.credit(&c.phone), ("0.00".into(), "0.00".into()));
    audit_verifies(s);
}

#[test]
fn orders_charges_receipts_and_replay_guards_survive_a_restart() {
    let mut c = city();
    let done_order = c.agreed(&c.phone, "DC001", &c.p1, None, "30");
    let done = c.pending(&c.p1, &done_order, &c.phone.card, "30");
    let receipt =
        c.s.expect(c.confirm(&c.p1, &done, &sms_code(&c.s, &done)), 200)["receipt"].clone();
    let open_order = c.agreed(&c.phone, "DC001", &c.p1, None, "40");
    let swipe = c.swipe(&c.p1, &open_order, &c.phone.card, "40");
    let open = c.s.expect(swipe, 201);
    let open_id = open["id"].as_str().unwrap().to_string();
    let code = sms_code(&c.s, &open_id);
    let token_orders: Vec<String> = (0..2)
        .map(|_| c.agreed(&c.token, "DC001", &c.p1, None, "20"))
        .collect();
    let first = c.pending(&c.p1, &token_orders[0], &c.token.card, "20");
    c.s.expect(c.confirm(&c.p1, &first, &totp(0)), 200);

    c.s = c.s.restart(&[&format!("--clock=manual:{START}")]);
    let s = &c.s;
    // The same key and body still answer the same; the pending charge still confirms.
    let again = c.swipe(&c.p1, &open_order, &c.phone.card, "40");
    assert_eq!((again.status, &again.body), (201, &open));
    assert_eq!(c.charge(&open_id)["status"], "pending");
    assert_eq!(c.credit(&c.phone), ("430.00".into(), "40.00".into()));
    let confirmed = s.expect(c.confirm(&c.p1, &open_id, &code), 200);
    assert_ne!(confirmed["receipt"]["no"], receipt["no"]);
    let no = receipt["no"].as_str().unwrap();
    assert_eq!(
        s.expect(s.get(&format!("/v1/receipts/{no}"), &c.p1), 200),
        receipt
    );
    assert_eq!(c.charge(&done)["status"], "confirmed");
    let read = s.expect(s.get(&format!("/v1/orders/{done_order}"), &c.p1), 200);
    assert_eq!(read["status"], "completed");
    // The used time step is remembered: its code is still a replay.
    let second = c.pending(&c.p1, &token_orders[1], &c.token.card, "20");
    assert_error(c.confirm(&c.p1, &second, &totp(0)), 422, "code_invalid");
    // Numbering continues after the restart: ids are zero-padded, so they sort in order.
    let order = s.expect(c.order(&c.phone, "DC001", None), 201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(order > token_orders[1], "{order}");
    assert!(
        second > first && first > open_id && open_id > done,
        "{second}"
    );
    audit_verifies(s);
}

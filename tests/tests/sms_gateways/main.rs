//! Black-box tests of the real SMS gateways (issue 7; API.md "Commands" `--sms`, "Charges"
//! `sms_status`) against peers on loopback in this process: an SMS centre speaking SMPP 3.4
//! through an independent codec (`smsc`), and an HTTP gateway that checks the signature
//! (`gateway`). Charges are confirmed with the code taken from what the peer received; the
//! peers fail on purpose (down, throttling, dropped or stalled sessions, 5xx, 4xx) and the
//! server must show it as `sms_status` and neither lose nor duplicate a message.

mod gateway;
mod smsc;

use e2e::bin;
use e2e::city::City;
use gateway::Gateway;
use serde_json::{json, Value};
use smsc::{Answer, Smsc};
use std::time::{Duration, Instant};

/// 08:00 on 1 March 2026 in UTC+08:00.
const START: &str = "2026-03-01T00:00:00Z";
const PHONE: &str = "13812345678";
/// Long enough that the SMS text passes 70 UCS-2 chars and goes in two segments.
const LONG_NAME: &str = "长安区建北街道社区居家养老综合服务中心第一分中心";
/// How long a test waits for the server to act on its own (a receipt being recorded).
const WAIT: Duration = Duration::from_secs(20);

fn set_hmac_key() {
    static SET: std::sync::Once = std::sync::Once::new();
    // Every test in this binary gives its servers the same key.
    SET.call_once(|| std::env::set_var("LEDGER_SMS_HMAC_KEY", gateway::KEY));
}

/// Dispatched, accepted and agreed at 80: the order's id.
fn agreed_order(c: &City, elder: &str, provider: &str) -> String {
    let s = &c.s;
    let order = s.expect(
        s.post(
            "/v1/orders",
            &c.staff,
            json!({"elder_id": elder, "item_code": "DC001"}),
        ),
        201,
    );
    let id = order["id"].as_str().expect("order id").to_string();
    s.expect(
        s.post(&format!("/v1/orders/{id}/accept"), provider, json!({})),
        200,
    );
    s.expect(
        s.post(
            &format!("/v1/orders/{id}/agree"),
            provider,
            json!({"price": "80"}),
        ),
        200,
    );
    id
}

/// Swipes `card` for `order`: the 201 body.
fn swipe(c: &City, provider: &str, order: &str, card: &str) -> Value {
    let r = c.s.request(
        "POST",
        "/v1/charges",
        Some(provider),
        Some(&json!({"order_id": order, "card_uid": card, "amount": "58.50"})),
        &[("Idempotency-Key", &format!("swipe-{order}"))],
    );
    c.s.expect(r, 201)
}

fn charge(c: &City, id: &str) -> Value {
    c.s.expect(c.s.get(&format!("/v1/charges/{id}"), &c.staff), 200)
}

fn confirm(c: &City, provider: &str, id: &str, code: &str) {
    let r = c.s.post(
        &format!("/v1/charges/{id}/confirm"),
        provider,
        json!({ "code": code }),
    );
    assert_eq!(c.s.expect(r, 200)["status"], "confirmed");
}

/// The code after `验证码` (API.md "Charges").
fn code_in(text: &str) -> String {
    let after = text.split("验证码").nth(1).expect("验证码 in the text");
    let code: String = after
        .trim_start_matches([':', '：', ' '])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert_eq!(code.len(), 6, "{text}");
    code
}

fn wait_for_sms_status(c: &City, id: &str, status: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = charge(c, id)["sms_status"].clone();
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sms_status stayed {now}, not {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sms_metrics(c: &City) -> Value {
    let r = c.s.request("GET", "/v1/health", None, None, &[]);
    c.s.expect(r, 200)["sms"].clone()
}

/// A second provider with a long name takes over the street; its provider key.
fn long_name_provider(c: &City) -> String {
    let s = &c.s;
    let k = &s.admin_key;
    s.expect(
        s.post(
            "/v1/providers",
            k,
            json!({"id":"P002","name": LONG_NAME,"kind":"home_care",
                "districts":["130102"],"price_caps":{"DC001":"80"}}),
        ),
        201,
    );
    s.expect(
        s.put("/v1/districts/130102/zones", k, json!({"建北街道":"P002"})),
        200,
    );
    s.key("provider", None, Some("P002"))
}

/// Moves the manual clock past the resend gap.
fn later(c: &City, secs: u32) {
    c.s.set_clock(&format!("2026-03-01T00:{:02}:{:02}Z", secs / 60, secs % 60));
}

#[test]
fn smpp_code_reaches_the_phone_and_its_receipt_marks_it_delivered() {
    let smsc = Smsc::start();
    let c = City::with_args(START, &["--sms", &smsc.url()]);
    // The session is bound at start (transceiver, interface version 3.4, our credentials).
    smsc.wait("the bind", |s| !s.binds.is_empty());
    let bind = &smsc.binds()[0];
    assert!(bind.accepted && bind.interface_version == 0x34, "{bind:?}");
    assert_eq!(
        (bind.system_id.as_str(), bind.password.as_str()),
        (smsc::SYSTEM_ID, smsc::PASSWORD)
    );

    let (elder, card) = c.elder(1, json!(["dibao"]));
    c.s.expect(
        c.s.post("/v1/periods/2026-03/issue", &c.s.admin_key, json!({})),
        200,
    );
    let order = agreed_order(&c, &elder, &c.provider);
    let created = swipe(&c, &c.provider, &order, &card);
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["sms_status"], "sent", "{created}");

    let messages = smsc.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let sms = &messages[0];
    assert_eq!(sms.to, PHONE);
    assert!(
        sms.text.contains("长安居家养老服务中心") && sms.text.contains("58.50"),
        "{}",
        sms.text
    );
    assert_eq!(
        smsc.accepted()[0].esm_class & 0x40,
        0,
        "one segment, no UDH"
    );

    smsc.receipt(sms, "DELIVRD");
    wait_for_sms_status(&c, id, "delivered");
    confirm(&c, &c.provider, id, &code_in(&sms.text));
    assert_eq!(charge(&c, id)["status"], "confirmed");

    let m = sms_metrics(&c);
    assert_eq!(
        (
            m["sender"].as_str(),
            m["sent"].as_u64(),
            m["failed"].as_u64(),
            m["delivered"].as_u64()
        ),
        (Some("smpp"), Some(1), Some(0), Some(1)),
        "{m}"
    );
    assert_eq!(m["latency_ms"]["count"], 1, "{m}");

    // Neither the code nor the PDUs carrying it reach the log, at debug level too.
    let log = std::fs::read_to_string(c.s.log.as_ref().unwrap()).unwrap();
    assert!(
        log.contains("SMPP session bound"),
        "the log is the server's"
    );
    assert!(!log.contains("rusmpp::codec"), "PDU dumps are off");
    assert!(!log.contains(&format!("验证码：{}", code_in(&sms.text))));
}

#[test]
fn smpp_long_text_goes_in_concatenated_ucs2_segments() {
    let smsc = Smsc::start();
    let c = City::with_args(START, &["--sms", &smsc.url()]);
    let p2 = long_name_provider(&c);
    let (elder, card) = c.elder(1, json!(["dibao"]));
    c.s.expect(
        c.s.post("/v1/periods/2026-03/issue", &c.s.admin_key, json!({})),
        200,
    );
    let order = agreed_order(&c, &elder, &p2);
    let created = swipe(&c, &p2, &order, &card);
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["sms_status"], "sent");

    let segments = smsc.accepted();
    assert_eq!(segments.len(), 2, "{segments:?}");
    assert!(
        segments.iter().all(|s| s.esm_class & 0x40 != 0),
        "UDHI on every segment"
    );
    let messages = smsc::reassemble(&segments);
    assert_eq!(messages.len(), 1);
    let text = &messages[0].text;
    assert!(
        text.chars().count() > 70 && text.contains(LONG_NAME),
        "{text}"
    );

    // The receipt of one segment is not yet delivery; both are.
    smsc.receipt(&messages[0], "DELIVRD");
    wait_for_sms_status(&c, id, "delivered");
    confirm(&c, &p2, id, &code_in(text));
}

#[test]
fn smpp_down_shows_failed_at_once_and_a_resend_goes_through_when_it_is_back() {
    let smsc = Smsc::start();
    let c = City::with_args(START, &["--sms", &smsc.url()]);
    smsc.wait("the bind", |s| !s.binds.is_empty());
    let (elder, card) = c.elder(1, json!(["dibao"]));
    c.s.expect(
        c.s.post("/v1/periods/2026-03/issue", &c.s.admin_key, json!({})),
        200,
    );
    let order = agreed_order(&c, &elder, &c.provider);

    smsc.stop();
    let started = Instant::now();
    let created = swipe(&c, &c.provider, &order, &card);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a down SMSC fails fast"
    );
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["sms_status"], "failed", "{created}");
    // The hold stays: the charge is pending, the credit held.
    assert_eq!(charge(&c, id)["status"], "pending");
    let balance = c.s.expect(
        c.s.get(&format!("/v1/elders/{elder}/balance"), &c.staff),
        200,
    );
    assert_eq!(balance["held"], "58.50");
    assert!(smsc.messages().is_empty());

    smsc.resume();
    later(&c, 61);
    let resent = c.s.expect(
        c.s.post(&format!("/v1/charges/{id}/resend"), &c.provider, json!({})),
        200,
    );
    assert_eq!(resent["sms_status"], "sent", "{resent}");
    let messages = smsc.messages();
    assert_eq!(messages.len(), 1);
    confirm(&c, &c.provider, id, &code_in(&messages[0].text));
    let m = sms_metrics(&c);
    assert_eq!(
        (m["sent"].as_u64(), m["failed"].as_u64()),
        (Some(1), Some(1)),
        "{m}"
    );
}

#[test]
fn smpp_throttling_and_dropped_sessions_lose_and_duplicate_nothing() {
    let smsc = Smsc::start();
    let c = City::with_args(START, &["--sms", &smsc.url()]);
    let p2 = long_name_provider(&c);
    let elders: Vec<(String, String)> = (1..=3).map(|seq| c.elder(seq, json!(["dibao"]))).collect();
    c.s.expect(
        c.s.post("/v1/periods/2026-03/issue", &c.s.admin_key, json!({})),
        200,
    );
    // Message 1 (two segments): segment 1 is taken; segment 2 is throttled, then its session
    // is dropped, then it is taken. Message 2: throttled twice, then taken.
    smsc.plan(&[
        Answer::Accept,
        Answer::Throttle,
        Answer::Drop,
        Answer::Accept,
        Answer::Throttle,
        Answer::Throttle,
    ]);
    let mut charges = Vec::new();
    for (elder, card) in &elders {
        let order = agreed_order(&c, elder, &p2);
        let created = swipe(&c, &p2, &order, card);
        assert_eq!(created["sms_status"], "sent", "{created}");
        charges.push(created["id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        smsc.submits(),
        6 + 4,
        "six segments taken once each, after the four planned faults"
    );
    assert!(smsc.binds().len() >= 2, "a new session after the drop");
    // Exactly one whole message per charge (reassemble panics on a segment taken twice).
    let messages = smsc.messages();
    assert_eq!(messages.len(), 3, "{messages:?}");
    for (id, sms) in charges.iter().zip(&messages) {
        assert!(sms.text.contains(LONG_NAME));
        confirm(&c, &p2, id, &code_in(&sms.text));
    }
}

#[test]
fn a_stalled_sms_centre_does_not_hold_up_another_elders_charge() {
    let smsc = Smsc::start();
    let c = City::with_args(START, &["--sms", &smsc.url()]);
    let (elder_a, card_a) = c.elder(1, json!(["dibao"]));
    let (elder_b, card_b) = c.elder(2, json!(["dibao"]));
    c.s.expect(
        c.s.post("/v1/periods/2026-03/issue", &c.s.admin_key, json!({})),
        200,
    );
    let order_a = agreed_order(&c, &elder_a, &c.provider);
    let order_b = agreed_order(&c, &elder_b, &c.provider);
    smsc.plan(&[Answer::Stall]);
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| swipe(&c, &c.provider, &order_a, &card_a));
        smsc.wait("the stalled submit_sm", |s| s.submits == 1);
        let started = Instant::now();
        let b = swipe(&c, &c.provider, &order_b, &card_b);
        // A's submit_sm times out 4 s after it went (RESPONSE_TIMEOUT): B is done well before.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "B waited for A's SMS"
        );
        (a.join().unwrap(), b)
    });
    assert_eq!(b["sms_status"], "sent");
    // A's request waited at most SEND_TIMEOUT (10 s): its session was given up and the
    // message went on the next one.
    assert_eq!(a["sms_status"], "sent", "{a}");
    let messages = smsc.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    for (charge, sms) in [&b, &a].into_iter().zip(&messages) {
        confirm(
            &c,
            &c.provider,
            charge["id"].as_str().unwrap(),
            &code_in(&sms.text),
        );
    }
}

#[test]
fn smpp_wrong_credentials_are_refused_and_sends_fail() {
    let smsc = Smsc::start();
    let c = City::with_args(START, &["--sms", &smsc.url_with_password("wrong")]);
    smsc.wait("the refused bind", |s| !s.binds.is_empty());
    assert!(!smsc.binds()[0].accepted);
    let (elder, card) = c.elder(1, json!(["dibao"]));
    c.s.expect(
        c.s.post("/v1/periods/2026-03/issue", &c.s.admin_key, json!({})),
        200,
    );
    let order = agreed_order(&c, &elder, &c.provider);
    let created = swipe(&c, &c.provider, &order, &card);
    assert_eq!(created["sms_status"], "failed");
    assert_eq!(smsc.submits(), 0);
    let log = std::fs::read_to_string(c.s.log.as_ref().unwrap()).unwrap();
    assert!(log.contains("bind refused"), "the log says why");
    assert!(!log.contains("wrong@"), "the password is not logged");
}

#[test]
fn http_gateway_gets_signed_json_and_a_5xx_is_tried_again() {
    set_hmac_key();
    let gw = Gateway::start();
    gw.plan(&[503]);
    let c = City::with_args(START, &["--sms", &gw.url()]);
    let (elder, card) = c.elder(1, json!(["dibao"]));
    c.s.expect(
        c.s.post("/v1/periods/2026-03/issue", &c.s.admin_key, json!({})),
        200,
    );
    let order = agreed_order(&c, &elder, &c.provider);
    let created = swipe(&c, &c.provider, &order, &card);
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["sms_status"], "sent", "{created}");

    let posts = gw.posts();
    assert_eq!(
        posts.iter().map(|p| p.status).collect::<Vec<_>>(),
        [503, 200]
    );
    for p in &posts {
        assert!(p.signature_ok, "{p:?}");
        assert_eq!(
            (p.path.as_str(), p.content_type.as_str()),
            ("/sms", "application/json")
        );
        let keys: Vec<&str> = p
            .body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_eq!(
            (p.body["to"].as_str(), p.body["charge_id"].as_str()),
            (Some(PHONE), Some(id))
        );
        assert!(p.body["sent_at"]
            .as_str()
            .unwrap()
            .starts_with("2026-03-01T"));
        assert_eq!(
            p.idempotency_key, posts[0].idempotency_key,
            "the same key on every attempt"
        );
    }
    let text = posts[1].body["text"].as_str().unwrap();
    confirm(&c, &c.provider, id, &code_in(text));
    let m = sms_metrics(&c);
    assert_eq!(
        (m["sender"].as_str(), m["sent"].as_u64()),
        (Some("http"), Some(1)),
        "{m}"
    );
}

#[test]
fn http_gateway_down_or_refusing_shows_failed_and_a_resend_recovers() {
    set_hmac_key();
    let gw = Gateway::start();
    let c = City::with_args(START, &["--sms", &gw.url()]);
    let (elder, card) = c.elder(1, json!(["dibao"]));
    let (elder2, card2) = c.elder(2, json!(["dibao"]));
    c.s.expect(
        c.s.post("/v1/periods/2026-03/issue", &c.s.admin_key, json!({})),
        200,
    );
    let order = agreed_order(&c, &elder, &c.provider);

    gw.stop();
    let created = swipe(&c, &c.provider, &order, &card);
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["sms_status"], "failed");
    assert_eq!(charge(&c, id)["status"], "pending");

    gw.resume();
    later(&c, 61);
    let resent = c.s.expect(
        c.s.post(&format!("/v1/charges/{id}/resend"), &c.provider, json!({})),
        200,
    );
    assert_eq!(resent["sms_status"], "sent");
    let text = gw.posts()[0].body["text"].as_str().unwrap().to_string();
    confirm(&c, &c.provider, id, &code_in(&text));

    // A 4xx is final: one attempt, failed.
    gw.plan(&[400]);
    let order = agreed_order(&c, &elder2, &c.provider);
    let created = swipe(&c, &c.provider, &order, &card2);
    assert_eq!(created["sms_status"], "failed");
    assert_eq!(gw.posts().len(), 2);
}

#[test]
fn gateway_flags_are_checked_before_serving() {
    let (dir, _) = e2e::init();
    let data = dir.path().join("data");
    let serve = |flag: &str, key: Option<&str>| {
        let mut command = std::process::Command::new(bin("ledger-server"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--sms", flag, "--data"])
            .arg(&data)
            .env_remove("LEDGER_SMS_HMAC_KEY");
        if let Some(k) = key {
            command.env("LEDGER_SMS_HMAC_KEY", k);
        }
        let out = command.output().expect("running ledger-server serve");
        assert!(!out.status.success(), "{flag} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(serve("https://sms.example.org/send", None).contains("LEDGER_SMS_HMAC_KEY"));
    assert!(serve("http://sms.example.org/send", Some("k")).contains("loopback"));
    let e = serve("smpp://ledger:hunter2@127.0.0.1:2775", None);
    assert!(e.contains("source") && !e.contains("hunter2"), "{e}");
    assert!(serve("carrier-pigeon", None).contains("--sms"));
}

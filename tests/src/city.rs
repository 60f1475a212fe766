//! A small city for the black-box tests: synthetic resident ID numbers, SMS codes read back
//! from the outbox, and a ready district with a provider, staff keys and carded elders.

use crate::Server;
use serde_json::{json, Value};

/// A synthetic resident ID number with a valid GB 11643 check character.
pub fn id_number(district: &str, birth: &str, seq: u32) -> String {
    let body = format!("{district}{birth}{seq:03}");
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .chars()
        .zip(WEIGHTS)
        .map(|(c, w)| c.to_digit(10).expect("digits") * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

/// The latest SMS code sent for `charge_id`, read from `DATA/sms-outbox.jsonl`.
pub fn sms_code(s: &Server, charge_id: &str) -> String {
    let text = std::fs::read_to_string(s.data.join("sms-outbox.jsonl")).expect("the outbox exists");
    let line = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m["charge_id"] == charge_id)
        .expect("an SMS for this charge");
    let body = line["text"].as_str().expect("text");
    let after = body
        .split("验证码")
        .nth(1)
        .expect("the code follows 验证码");
    let digits: String = after
        .trim_start_matches([':', '：', ' '])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert_eq!(digits.len(), 6, "a 6-digit code in {body}");
    digits
}

/// One zoned district (130102, street 建北街道 → P001), a home-care provider P001 with a cap
/// of 80.00 on DC001, a nursing home N001, the policy, two staff keys and a provider key.
pub struct City {
    pub s: Server,
    pub staff: String,
    pub staff2: String,
    pub provider: String,
}

impl City {
    pub fn new(start: &str) -> City {
        City::on(Server::start(start))
    }

    /// Like [`City::new`], with extra `serve` arguments (e.g. `--sms smpp://…`) and the
    /// server's stderr at `RUST_LOG=debug` in `s.log`.
    pub fn with_args(start: &str, args: &[&str]) -> City {
        let (dir, key) = crate::init();
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let clock = format!("--clock=manual:{start}");
        let all: Vec<&str> = std::iter::once(clock.as_str())
            .chain(args.iter().copied())
            .collect();
        let mut s = Server::serve_with(&data, &key, &all, Some(&log));
        s._dir = Some(dir);
        City::on(s)
    }

    fn on(s: Server) -> City {
        let k = s.admin_key.clone();
        s.expect(
            s.post(
                "/v1/districts",
                &k,
                json!({"code":"130102","name":"长安区","dispatch_mode":"zoned"}),
            ),
            201,
        );
        s.expect(
            s.put(
                "/v1/catalog/items/DC001",
                &k,
                json!({"name":"助浴","service_category":"daily_care","unit":"次"}),
            ),
            200,
        );
        s.expect(
            s.post(
                "/v1/providers",
                &k,
                json!({"id":"P001","name":"长安居家养老服务中心","kind":"home_care",
            "districts":["130102"],"price_caps":{"DC001":"80"}}),
            ),
            201,
        );
        s.expect(
            s.post(
                "/v1/providers",
                &k,
                json!({"id":"N001","name":"长安颐养院","kind":"nursing_home",
            "districts":["130102"],"price_caps":{"DC001":"80"}}),
            ),
            201,
        );
        s.expect(
            s.put("/v1/districts/130102/zones", &k, json!({"建北街道":"P001"})),
            200,
        );
        s.expect(s.put("/v1/policy/monthly-credit", &k, json!({"amounts": {"sanwu":"500","dibao":"300",
            "solitary":"300","severely_disabled":"450","age_90_plus":"100","bereaved_single_child":"400"},
            "stacking":"max"})), 200);
        let staff = s.key("district_staff", Some("130102"), None);
        let staff2 = s.key("district_staff", Some("130102"), None);
        let provider = s.key("provider", None, Some("P001"));
        City {
            s,
            staff,
            staff2,
            provider,
        }
    }

    /// Registers, approves and cards an elder with a phone; returns (elder id, card uid).
    pub fn elder(&self, seq: u32, categories: Value) -> (String, String) {
        let s = &self.s;
        let body = json!({"name":"测试老人","gender":"F","id_number": id_number("130102", "19480808", seq),
            "phone":"13812345678","district":"130102","street":"建北街道","address":"建北街1号",
            "categories": categories});
        let id = s.expect(s.post("/v1/elders", &self.staff, body), 201)["id"]
            .as_str()
            .expect("id")
            .to_string();
        s.expect(
            s.post(&format!("/v1/elders/{id}/approve"), &self.staff2, json!({})),
            200,
        );
        let uid = format!("04A1B2C3D4{seq:04X}");
        s.expect(
            s.post(
                &format!("/v1/elders/{id}/cards"),
                &self.staff,
                json!({"uid": uid}),
            ),
            201,
        );
        (id, uid)
    }

    /// Order → accept → agree at `price` → charge `amount` → confirm with the SMS code.
    /// Returns the confirm response.
    pub fn settle(&self, elder: &str, card: &str, price: &str, amount: &str) -> Value {
        let s = &self.s;
        let order = s.expect(
            s.post(
                "/v1/orders",
                &self.staff,
                json!({"elder_id": elder, "item_code": "DC001"}),
            ),
            201,
        );
        let oid = order["id"].as_str().expect("order id");
        s.expect(
            s.post(
                &format!("/v1/orders/{oid}/accept"),
                &self.provider,
                json!({}),
            ),
            200,
        );
        s.expect(
            s.post(
                &format!("/v1/orders/{oid}/agree"),
                &self.provider,
                json!({"price": price}),
            ),
            200,
        );
        let key = format!("swipe-{oid}");
        let charge = s.request(
            "POST",
            "/v1/charges",
            Some(&self.provider),
            Some(&json!({"order_id": oid, "card_uid": card, "amount": amount})),
            &[("Idempotency-Key", &key)],
        );
        let charge = s.expect(charge, 201);
        let cid = charge["id"].as_str().expect("charge id");
        let code = sms_code(s, cid);
        s.expect(
            s.post(
                &format!("/v1/charges/{cid}/confirm"),
                &self.provider,
                json!({"code": code}),
            ),
            200,
        )
    }
}

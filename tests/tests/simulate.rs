//! `ledger-server simulate` and `init --fixtures`, through the real binaries: a 1% reference
//! year whose report must be internally consistent and hit the scaled targets, a store that
//! the offline auditor verifies, and a fixture folder loaded through the setup endpoints.

use e2e::{bin, Server};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/shijiazhuang")
}

fn fen(v: &Value) -> i64 {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("an amount string, not {v}"));
    let (yuan, fraction) = text.split_once('.').expect("two fraction digits");
    yuan.parse::<i64>().unwrap() * 100 + fraction.parse::<i64>().unwrap()
}

fn sum(list: &Value, f: impl Fn(&Value) -> i64) -> i64 {
    list.as_array().expect("a list").iter().map(f).sum()
}

#[test]
fn a_one_percent_year_reports_the_scaled_reference_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sim");
    let out = Command::new(bin("ledger-server"))
        .args(["simulate", "--scale", "0.01", "--seed", "7", "--data"])
        .arg(&data)
        .arg("--fixtures")
        .arg(fixtures_dir())
        .output()
        .expect("running ledger-server simulate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate failed: {stderr}");
    assert!(stderr.contains("ledger verification passed"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().expect("a last line");
    let r: Value = serde_json::from_str(last).expect("the last line is the year report JSON");

    // 1% of 14,209 cards, 13,342 served, 208,311 services, 47,320,805.40 consumed, 1,546
    // elders offsetting 6,950,772.00 (rounded half up).
    assert_eq!(r["year"], "2016");
    assert_eq!(r["cards_issued"], 142);
    assert_eq!(r["elders_served"], 133);
    assert_eq!(r["services"], 2083);
    assert_eq!(r["consumption_total"], "473208.10");
    assert_eq!(r["offsets"]["elders"], 15);
    assert_eq!(r["offsets"]["total"], "69508.00");

    // Consistent with itself: the parts add up to the whole, and after the year close every
    // yuan issued was consumed, offset or forfeited.
    for list in ["by_district", "by_provider"] {
        assert_eq!(
            sum(&r[list], |g| g["services"].as_i64().unwrap()),
            2083,
            "{list}"
        );
        assert_eq!(
            sum(&r[list], |g| fen(&g["consumption_total"])),
            47_320_810,
            "{list}"
        );
        assert_eq!(
            sum(&r[list], |g| fen(&g["offsets"]["total"])),
            6_950_800,
            "{list}"
        );
    }
    assert_eq!(r["by_district"].as_array().unwrap().len(), 5);
    assert_eq!(r["by_provider"].as_array().unwrap().len(), 11);
    assert_eq!(
        fen(&r["issued_total"]),
        fen(&r["consumption_total"]) + fen(&r["offsets"]["total"]) + fen(&r["forfeited_total"])
    );
    assert_eq!(
        sum(&r["by_district"], |g| fen(&g["issued_total"])),
        fen(&r["issued_total"])
    );

    // The offline auditor agrees, on the stopped store.
    let audit = Command::new(bin("ledger-audit"))
        .args(["verify", "--data"])
        .arg(&data)
        .output()
        .expect("running ledger-audit");
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );

    // The codes reached phones through the outbox, and simulate refuses an existing store.
    let outbox = std::fs::read_to_string(data.join("sms-outbox.jsonl")).unwrap();
    assert!(outbox.lines().count() > 1000);
    let again = Command::new(bin("ledger-server"))
        .args(["simulate", "--scale", "0.01", "--data"])
        .arg(&data)
        .arg("--fixtures")
        .arg(fixtures_dir())
        .output()
        .unwrap();
    assert!(!again.status.success());
}

#[test]
fn init_loads_a_fixture_folder_through_the_setup_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(bin("ledger-server"))
        .args(["init", "--data"])
        .arg(&data)
        .arg("--fixtures")
        .arg(fixtures_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let key = line["admin_key"].as_str().unwrap();
    let s = Server::serve(&data, key, &["--clock=manual:2016-01-01T00:00:00+08:00"]);
    let districts = s.expect(s.get("/v1/districts", key), 200);
    let names: Vec<&str> = districts["districts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["长安区", "桥西区", "新华区", "井陉矿区", "裕华区"]);
    let changan = &districts["districts"][0];
    assert_eq!(changan["dispatch_mode"], "zoned");
    assert_eq!(changan["zones"]["建北街道"], "HC01");
    let providers = s.expect(s.get("/v1/providers", key), 200);
    assert_eq!(providers["providers"].as_array().unwrap().len(), 11);
    let items = s.expect(s.get("/v1/catalog/items", key), 200);
    assert!(items["items"].as_array().unwrap().len() >= 30);
    let policy = s.expect(s.get("/v1/policy/monthly-credit", key), 200);
    assert_eq!(policy["amounts"]["sanwu"], "500.00");
}

#[test]
fn init_with_a_broken_fixture_folder_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(bin("ledger-server"))
        .args(["init", "--data"])
        .arg(&data)
        .arg("--fixtures")
        .arg(dir.path().join("no-such-folder"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("districts.json"));
    assert!(!data.exists(), "nothing was created");
}

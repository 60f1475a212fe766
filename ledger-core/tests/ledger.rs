//! Black-box tests of the ledger through its public API on a real sled store: every command,
//! its typed errors (which write nothing), idempotency, expiry by the injected clock,
//! reopening, and the offline verifier on the result.

use chrono::{DateTime, Duration, Utc};
use ledger_core::account::AccountId;
use ledger_core::audit::{verify_export, verify_store};
use ledger_core::clock::ManualClock;
use ledger_core::command::{Command, CommandError, HoldState, Refs, Request};
use ledger_core::fiscal::{parse_timestamp, Year};
use ledger_core::{Fen, Ledger, Verify};
use std::sync::Arc;

fn at(s: &str) -> DateTime<Utc> {
    parse_timestamp(s).unwrap()
}

fn yuan(s: &str) -> Fen {
    Fen::parse_amount(s).unwrap()
}

fn y2026() -> Year {
    "2026".parse().unwrap()
}

fn elder(id: &str) -> AccountId {
    AccountId::elder(id, y2026()).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    ledger: Ledger,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-01-01T01:00:00Z")));
    let ledger = Ledger::create(dir.path(), clock.clone()).unwrap();
    Fixture { dir, clock, ledger }
}

fn issue(id: &str, amount: &str) -> Command {
    Command::Issue {
        elder_id: id.into(),
        district: "130102".into(),
        period: "2026-01".parse().unwrap(),
        amount: yuan(amount),
    }
}

fn hold(hold_id: &str, elder_id: &str, amount: &str) -> Command {
    Command::Hold {
        hold_id: hold_id.into(),
        elder_id: elder_id.into(),
        amount: yuan(amount),
        ttl_secs: 600,
    }
}

fn post(hold_id: &str) -> Command {
    Command::Post {
        hold_id: hold_id.into(),
        provider_id: "P001".into(),
        refs: Refs::from([("charge".to_string(), hold_id.to_string())]),
    }
}

fn ok(ledger: &Ledger, key: &str, command: Command) -> ledger_core::Outcome {
    ledger
        .submit(Request::new(key, command))
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn err(ledger: &Ledger, key: &str, command: Command) -> CommandError {
    let size = ledger.tree_size();
    let accounts = {
        let mut a = ledger.accounts();
        a.sort_by(|x, y| x.0.cmp(&y.0));
        a
    };
    let e = ledger
        .submit(Request::new(key, command))
        .expect_err("command should fail");
    let mut after = ledger.accounts();
    after.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(ledger.tree_size(), size, "a failed command wrote an entry");
    assert_eq!(after, accounts, "a failed command changed a balance");
    e
}

fn available(ledger: &Ledger, id: &str) -> Fen {
    ledger.balance(&elder(id)).unwrap().available().unwrap()
}

#[test]
fn charge_lifecycle_refund_offset_payout_and_year_close() {
    let f = fixture();
    let l = &f.ledger;
    let issued = ok(l, "issue:E1:2026-01", issue("E1", "500"));
    assert_eq!(issued.entry.as_ref().unwrap().seq, 0);
    assert_eq!(issued.at, "2026-01-01T01:00:00Z");
    ok(l, "issue:E2:2026-01", issue("E2", "100"));

    let held = ok(l, "hold:C1", hold("C1", "E1", "58.5"));
    assert_eq!(held.expires_at.as_deref(), Some("2026-01-01T01:10:00Z"));
    assert_eq!(available(l, "E1"), yuan("441.50"));
    let posted = ok(l, "post:C1", post("C1"));
    assert_eq!(posted.entry.as_ref().unwrap().seq, 2);
    assert_eq!(available(l, "E1"), yuan("441.50"));
    assert_eq!(l.hold("C1").unwrap().unwrap().state, HoldState::Posted);

    // A second post or a void of a posted hold is refused and writes nothing.
    assert!(matches!(
        err(l, "post:C1-again", post("C1")),
        CommandError::HoldNotPending {
            state: HoldState::Posted,
            ..
        }
    ));
    assert!(matches!(
        err(
            l,
            "void:C1",
            Command::Void {
                hold_id: "C1".into()
            }
        ),
        CommandError::HoldNotPending { .. }
    ));

    let refund = Command::Refund {
        hold_id: "C1".into(),
        refs: Refs::from([("reason".to_string(), "服务未完成".to_string())]),
    };
    ok(l, "refund:C1", refund.clone());
    assert_eq!(available(l, "E1"), yuan("500.00"));
    assert!(matches!(
        err(l, "refund:C1-again", refund),
        CommandError::NotRefundable {
            state: HoldState::Refunded,
            ..
        }
    ));

    ok(
        l,
        "offset:E1",
        Command::Offset {
            elder_id: "E1".into(),
            provider_id: "N001".into(),
            month: "2026-01".parse().unwrap(),
            amount: yuan("300"),
            refs: Refs::from([("consent".to_string(), "CONSENT-1".to_string())]),
        },
    );
    ok(l, "hold:C2", hold("C2", "E2", "100"));
    ok(
        l,
        "post:C2",
        Command::Post {
            hold_id: "C2".into(),
            provider_id: "P002".into(),
            refs: Refs::new(),
        },
    );
    assert!(matches!(
        err(
            l,
            "payout:too-much",
            Command::Payout {
                provider_id: "P002".into(),
                district: "130104".into(),
                amount: yuan("100.01"),
                refs: Refs::new()
            }
        ),
        CommandError::InsufficientCredit { .. }
    ));
    ok(
        l,
        "payout:P002",
        Command::Payout {
            provider_id: "P002".into(),
            district: "130104".into(),
            amount: yuan("100"),
            refs: Refs::new(),
        },
    );

    // A hold still pending at the close is voided by it; then the forfeit empties the year.
    f.clock.set(at("2026-12-31T15:55:00Z")).unwrap();
    ok(l, "hold:C3", hold("C3", "E1", "10"));
    assert!(matches!(
        err(
            l,
            "forfeit-early",
            Command::Forfeit {
                elder_id: "E1".into(),
                district: "130102".into(),
                year: y2026()
            }
        ),
        CommandError::YearOpen(_)
    ));
    f.clock.set(at("2026-12-31T16:00:00Z")).unwrap();
    let closed = ok(l, "close:2026", Command::CloseYear { year: y2026() });
    assert_eq!(closed.voided_holds, 1);
    assert_eq!(l.hold("C3").unwrap().unwrap().state, HoldState::Voided);
    assert!(matches!(
        err(l, "issue-late", issue("E1", "1")),
        CommandError::YearClosed(_)
    ));
    let forfeit = ok(
        l,
        "forfeit:E1",
        Command::Forfeit {
            elder_id: "E1".into(),
            district: "130102".into(),
            year: y2026(),
        },
    );
    assert_eq!(forfeit.amount, yuan("200"));
    let nothing = ok(
        l,
        "forfeit:E2",
        Command::Forfeit {
            elder_id: "E2".into(),
            district: "130102".into(),
            year: y2026(),
        },
    );
    assert_eq!((nothing.amount, nothing.entry), (Fen::ZERO, None));
    for (account, balance) in l.elder_accounts(y2026()) {
        assert_eq!(
            balance.posted_credit_balance(),
            Some(Fen::ZERO),
            "{account}"
        );
    }

    // The export verifies offline, against a signed checkpoint.
    let lines = l.entry_lines(0, 100).unwrap();
    assert_eq!(lines.len(), 8);
    let mut export = Vec::new();
    for line in &lines {
        export.extend_from_slice(line);
        export.push(b'\n');
    }
    let checkpoint = l.checkpoint();
    let summary = verify_export(&export[..], &checkpoint, &l.key().public_key_bytes()).unwrap();
    assert_eq!(summary.entries, 8);
    assert_eq!(summary.closed_years, vec![y2026()]);
}

#[test]
fn idempotency_replays_the_outcome_and_refuses_other_content() {
    let f = fixture();
    let l = &f.ledger;
    let first = ok(l, "k1", issue("E1", "500"));
    f.clock.advance(Duration::seconds(30));
    let again = ok(l, "k1", issue("E1", "500"));
    assert_eq!(first, again);
    assert_eq!(l.tree_size(), 1);
    assert!(matches!(
        err(l, "k1", issue("E1", "400")),
        CommandError::IdempotencyMismatch { .. }
    ));
    // Within one group commit too.
    let results = l.submit_each(vec![
        Request::new("k2", issue("E2", "100")),
        Request::new("k2", issue("E2", "100")),
        Request::new("k2", issue("E2", "200")),
    ]);
    assert_eq!(results[0], results[1]);
    assert!(matches!(
        results[2],
        Err(CommandError::IdempotencyMismatch { .. })
    ));
    assert_eq!(l.tree_size(), 2);
}

#[test]
fn bad_input_gets_a_typed_error_and_writes_nothing() {
    let f = fixture();
    let l = &f.ledger;
    ok(l, "i", issue("E1", "100"));
    assert!(matches!(
        err(l, "a", hold("H1", "E9", "1")),
        CommandError::UnknownAccount(_)
    ));
    assert!(matches!(
        err(l, "b", hold("H1", "E1", "100.01")),
        CommandError::InsufficientCredit { .. }
    ));
    assert!(matches!(
        err(l, "c", hold("H1", "E1", "0")),
        CommandError::NonPositiveAmount(_)
    ));
    assert!(matches!(
        err(l, "d", hold("H 1", "E1", "1")),
        CommandError::InvalidRequest(_)
    ));
    assert!(matches!(
        err(l, "e", hold("H1", "E:1", "1")),
        CommandError::InvalidId(_)
    ));
    assert!(matches!(
        err(l, "f", post("nope")),
        CommandError::UnknownHold(_)
    ));
    assert!(matches!(
        err(l, "", issue("E1", "1")),
        CommandError::InvalidRequest(_)
    ));
    assert!(matches!(
        err(l, &"k".repeat(129), issue("E1", "1")),
        CommandError::InvalidRequest(_)
    ));
    let huge = Fen::from_fen(i64::MAX);
    assert!(matches!(
        err(
            l,
            "g",
            Command::Issue {
                elder_id: "E1".into(),
                district: "130102".into(),
                period: "2026-01".parse().unwrap(),
                amount: huge
            }
        ),
        CommandError::Overflow
    ));
    let many_refs: Refs = (0..8).map(|i| (format!("k{i}"), "v".to_string())).collect();
    assert!(matches!(
        err(
            l,
            "h",
            Command::Post {
                hold_id: "H1".into(),
                provider_id: "P1".into(),
                refs: many_refs
            }
        ),
        CommandError::InvalidRequest(_)
    ));
    ok(l, "hold", hold("H1", "E1", "60"));
    assert!(matches!(
        err(l, "dup", hold("H1", "E1", "1")),
        CommandError::HoldExists { .. }
    ));
    assert!(matches!(
        err(l, "over", hold("H2", "E1", "40.01")),
        CommandError::InsufficientCredit { .. }
    ));
    // An atomic group with one bad request leaves nothing of the good ones.
    let r = l.submit_atomic(
        vec![
            Request::new("g1", hold("H3", "E1", "10")),
            Request::new("g2", hold("H4", "E9", "1")),
        ],
        vec![(b"rec".to_vec(), Some(b"v".to_vec()))],
    );
    assert!(matches!(r, Err(CommandError::UnknownAccount(_))));
    assert_eq!(l.hold("H3").unwrap(), None);
    assert_eq!(l.record(b"rec").unwrap(), None);
    assert_eq!(available(l, "E1"), yuan("40"));
}

#[test]
fn holds_expire_by_the_clock_in_every_read_and_in_the_journal_state() {
    let f = fixture();
    let l = &f.ledger;
    ok(l, "i", issue("E1", "100"));
    ok(l, "h", hold("H1", "E1", "80"));
    assert_eq!(available(l, "E1"), yuan("20"));
    f.clock.advance(Duration::seconds(599));
    assert_eq!(available(l, "E1"), yuan("20"));
    f.clock.advance(Duration::seconds(1));
    // Released at once for readers, before any command touched it.
    assert_eq!(available(l, "E1"), yuan("100"));
    assert_eq!(l.hold("H1").unwrap().unwrap().state, HoldState::Expired);
    assert!(matches!(
        err(l, "p", post("H1")),
        CommandError::HoldNotPending {
            state: HoldState::Expired,
            ..
        }
    ));
    ok(l, "h2", hold("H2", "E1", "100"));
}

#[test]
fn reopening_rebuilds_the_same_state_and_the_store_verifies() {
    let f = fixture();
    {
        let l = &f.ledger;
        ok(l, "i1", issue("E1", "500"));
        ok(l, "i2", issue("E2", "300"));
        ok(l, "h1", hold("H1", "E1", "100"));
        ok(l, "p1", post("H1"));
        ok(l, "h2", hold("H2", "E2", "50"));
    }
    let before = {
        let mut a = f.ledger.accounts();
        a.sort_by(|x, y| x.0.cmp(&y.0));
        a
    };
    let cp = f.ledger.checkpoint();
    let Fixture { dir, clock, ledger } = f;
    drop(ledger);
    let summary = verify_store(dir.path()).unwrap();
    assert_eq!(summary.entries, 3);
    for verify in [Verify::Head, Verify::Full] {
        let l = Ledger::open(dir.path(), clock.clone(), verify).unwrap();
        let mut after = l.accounts();
        after.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(after, before);
        assert_eq!(l.checkpoint().root_hash, cp.root_hash);
        assert_eq!(l.hold("H2").unwrap().unwrap().state, HoldState::Pending);
        assert_eq!(l.last_time(), Some(at("2026-01-01T01:00:00Z")));
    }
    assert!(Ledger::create(dir.path(), clock).is_err());
}

#[test]
fn concurrent_holds_never_reserve_more_than_the_credit() {
    let f = fixture();
    ok(&f.ledger, "i", issue("E1", "100"));
    let ledger = Arc::new(f.ledger);
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let l = Arc::clone(&ledger);
            std::thread::spawn(move || {
                l.submit(Request::new(
                    format!("h{i}"),
                    hold(&format!("H{i}"), "E1", "30"),
                ))
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|r| r.is_ok())
        .count();
    assert_eq!(wins, 3);
    assert_eq!(
        ledger.balance(&elder("E1")).unwrap().available(),
        Some(yuan("10"))
    );
}

/// Proofs from the ledger, whose tree reads the entry hashes of finished 64-entry blocks
/// back from the journal: they verify against roots computed from every entry, for leaves
/// and sizes in finished blocks and in the last one, and again after reopening.
#[test]
fn proofs_over_finished_blocks_verify_against_the_whole_journal() {
    use ledger_core::merkle::{root_of, verify_consistency, verify_inclusion};
    let f = fixture();
    let check = |ledger: &Ledger| {
        let len = ledger.tree_size();
        let hashes: Vec<_> = (0..len)
            .map(|seq| ledger.entry(seq).unwrap().unwrap().hash)
            .collect();
        for (seq, size) in [
            (0u64, len),
            (3, len),
            (63, 64),
            (64, 128),
            (100, 128),
            (len - 1, len),
        ] {
            let path = ledger.inclusion_proof(seq, size).unwrap();
            let root = root_of(&hashes[..size as usize]);
            assert!(
                verify_inclusion(&hashes[seq as usize], seq, size, &path, &root),
                "{seq} in {size}"
            );
            assert_eq!(ledger.root_at(size).unwrap(), root);
        }
        for (from, to) in [(1u64, len), (10, len), (64, 128), (70, 128), (127, len)] {
            let path = ledger.consistency_proof(from, to).unwrap();
            let (old, new) = (
                root_of(&hashes[..from as usize]),
                root_of(&hashes[..to as usize]),
            );
            assert!(
                verify_consistency(from, to, &old, &new, &path),
                "{from} to {to}"
            );
        }
        assert_eq!(ledger.checkpoint().root_hash, hex::encode(root_of(&hashes)));
    };
    // At 128 entries the last block is empty; at 150 it holds 22.
    for count in [128, 150] {
        while f.ledger.tree_size() < count {
            let i = f.ledger.tree_size();
            ok(&f.ledger, &format!("i{i}"), issue(&format!("E{i}"), "10"));
        }
        check(&f.ledger);
    }
    let Fixture { dir, clock, ledger } = f;
    drop(ledger);
    check(&Ledger::open(dir.path(), clock, Verify::Full).unwrap());
}

/// Proofs asked for on another thread while commands commit (a proof reads the journal
/// back under the state's read lock): every one verifies against the checkpoint it was
/// asked for, and the commands all commit.
#[test]
fn proofs_asked_for_while_commands_commit_verify() {
    use ledger_core::merkle::{verify_consistency, verify_inclusion};
    let f = fixture();
    for i in 0..130 {
        ok(&f.ledger, &format!("i{i}"), issue(&format!("E{i}"), "10"));
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let ledger = &f.ledger;
        let done = &done;
        scope.spawn(move || {
            for i in 130..400 {
                ok(ledger, &format!("i{i}"), issue(&format!("E{i}"), "10"));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut proofs = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || proofs < 10 {
            let checkpoint = ledger.checkpoint();
            let size = checkpoint.tree_size;
            let root: [u8; 32] = hex::decode(&checkpoint.root_hash)
                .unwrap()
                .try_into()
                .unwrap();
            let seq = proofs % size;
            let hash = ledger.entry(seq).unwrap().unwrap().hash;
            let path = ledger.inclusion_proof(seq, size).unwrap();
            assert!(
                verify_inclusion(&hash, seq, size, &path, &root),
                "{seq} in {size}"
            );
            let from = 1 + (proofs * 7) % size;
            let old = ledger.root_at(from).unwrap();
            let path = ledger.consistency_proof(from, size).unwrap();
            assert!(
                verify_consistency(from, size, &old, &root, &path),
                "{from} to {size}"
            );
            proofs += 1;
        }
    });
    assert_eq!(f.ledger.tree_size(), 400);
}

//! Crash test: this test binary re-runs itself as a child process that writes to a ledger
//! store from several threads and prints a line for every command the ledger acknowledged;
//! the parent kills it with SIGKILL at a random point, reopens the store and checks that
//! every acknowledged command is durable, that nothing is half-applied (atomic groups are
//! all or nothing, balances equal the journal's replay plus the pending holds), and that the
//! store and its export verify. The store is reused, so it grows across crashes.

use chrono::{DateTime, Duration, Utc};
use ledger_core::account::AccountId;
use ledger_core::audit::{verify_export, verify_store};
use ledger_core::checkpoint::Checkpoint;
use ledger_core::clock::{Clock, ManualClock};
use ledger_core::command::{Command, HoldState, Outcome, Refs, Request};
use ledger_core::fiscal::{parse_timestamp, Month};
use ledger_core::journal::{Entry, EntryKind, Side};
use ledger_core::ledger::EXPORT_PAGE_MAX;
use ledger_core::{Fen, Ledger, Verify};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc;
use std::sync::Arc;

/// Set in the child: the store directory. Its absence makes `child_process_entry` a no-op.
const CHILD_ENV: &str = "LEDGER_CRASH_CHILD";
/// Set in the child: the iteration, which makes its idempotency keys and hold ids unique.
const RUN_ENV: &str = "LEDGER_CRASH_RUN";
/// Kill-and-recover rounds on one store.
const ITERATIONS: u64 = 24;
/// How full a write-ahead log file gets before the next goes to the other (16 MiB in
/// production): small, so that the log turns and checkpoints many times in every run.
const LOG_FILE_TARGET: u64 = 8 << 10;
/// Writer threads in the child.
const CHILD_THREADS: u64 = 4;
/// The child's clock starts here (or at the store's last time, if later) and only advances.
const START: &str = "2026-03-02T01:00:00Z";
/// Longest wait for the child's next line before the test gives up on it.
const LINE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
const DISTRICTS: [&str; 2] = ["D1", "D2"];
const PROVIDERS: [&str; 2] = ["P1", "P2"];
const NURSING_HOME: &str = "N1";

fn at(s: &str) -> DateTime<Utc> {
    parse_timestamp(s).unwrap()
}

/// A small deterministic generator (xorshift64), so each iteration's kill point and each
/// child thread's workload follow from a seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A value in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

/// Printed before a submission: what may reach the store from here on.
#[derive(Debug, Serialize, Deserialize)]
struct Try {
    requests: Vec<Request>,
    /// The record key of an atomic group.
    record: Option<String>,
}

/// Printed after the ledger acknowledged one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ack {
    request: Request,
    outcome: Outcome,
    /// The record key of the atomic group the request belonged to.
    record: Option<String>,
}

// ---------------------------------------------------------------------------------------
// The child.
// ---------------------------------------------------------------------------------------

/// The child's entry point; a no-op unless the parent started this binary as a child.
#[test]
fn child_process_entry() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let run: u64 = std::env::var(RUN_ENV)
        .expect("the parent sets the run")
        .parse()
        .expect("the run is a number");
    child_main(&PathBuf::from(dir), run);
}

/// Writes one line and flushes it, so that the parent sees it even if SIGKILL follows at
/// once. Exits when the parent has gone (the pipe is closed).
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(4);
    }
}

fn emit_json(tag: &str, value: &impl Serialize) {
    emit(&format!(
        "{tag} {}\n",
        serde_json::to_string(value).expect("JSON")
    ));
}

fn child_main(dir: &Path, run: u64) -> ! {
    // libtest has printed `test child_process_entry ... ` without a newline: end that line,
    // so that our first line starts a line of its own.
    emit("\n");
    // The parent holds our stdin open; when it goes away, so do we.
    std::thread::spawn(|| {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(3);
    });
    // Turn the write-ahead log often, so that kills land in turns and checkpoints too.
    ledger_core::storage::Store::set_log_file_target(LOG_FILE_TARGET);
    let clock = Arc::new(ManualClock::new(at(START)));
    let ledger = Arc::new(Ledger::open(dir, clock.clone(), Verify::Head).expect("open the store"));
    if let Some(last) = ledger.last_time() {
        // Never moves back: equal or later than START is all `set` accepts.
        let _ = clock.set(last);
    }
    let workers: Vec<_> = (0..CHILD_THREADS)
        .map(|thread| {
            let ledger = Arc::clone(&ledger);
            let clock = Arc::clone(&clock);
            std::thread::spawn(move || Worker::new(run, thread, ledger, clock).work())
        })
        .collect();
    for w in workers {
        w.join().expect("a worker panicked");
    }
    unreachable!("workers never return");
}

/// One writer thread of the child: owns one elder, and remembers the holds it placed and
/// posted in this run.
struct Worker {
    run: u64,
    thread: u64,
    ledger: Arc<Ledger>,
    clock: Arc<ManualClock>,
    rng: XorShift,
    elder_id: String,
    district: &'static str,
    provider: &'static str,
    pending: Vec<String>,
    posted: Vec<String>,
    n: u64,
}

impl Worker {
    fn new(run: u64, thread: u64, ledger: Arc<Ledger>, clock: Arc<ManualClock>) -> Worker {
        let index = usize::try_from(thread).unwrap() % 2;
        Worker {
            run,
            thread,
            ledger,
            clock,
            rng: XorShift::new(run * 1_000 + thread + 1),
            elder_id: format!("E{thread}"),
            district: DISTRICTS[index],
            provider: PROVIDERS[index],
            pending: Vec::new(),
            posted: Vec::new(),
            n: 0,
        }
    }

    fn key(&self, tag: &str) -> String {
        format!("r{}-t{}-n{}-{tag}", self.run, self.thread, self.n)
    }

    fn hold_id(&self, tag: &str) -> String {
        format!("r{}t{}n{}{tag}", self.run, self.thread, self.n)
    }

    fn issue(&mut self) -> Request {
        let amount = Fen::from_fen(i64::try_from(self.rng.between(10_000, 50_000)).unwrap());
        Request::new(
            self.key("issue"),
            Command::Issue {
                elder_id: self.elder_id.clone(),
                district: self.district.into(),
                period: Month::of(self.clock.now()),
                amount,
            },
        )
    }

    fn hold(&mut self, tag: &str) -> Request {
        let amount = Fen::from_fen(i64::try_from(self.rng.between(100, 10_000)).unwrap());
        let ttl_secs = u32::try_from(self.rng.between(30, 600)).unwrap();
        Request::new(
            self.key(tag),
            Command::Hold {
                hold_id: self.hold_id(tag),
                elder_id: self.elder_id.clone(),
                amount,
                ttl_secs,
            },
        )
    }

    fn post(&self, hold_id: &str) -> Request {
        Request::new(
            self.key("post"),
            Command::Post {
                hold_id: hold_id.into(),
                provider_id: self.provider.into(),
                refs: Refs::from([("charge".to_string(), hold_id.to_string())]),
            },
        )
    }

    fn take(list: &mut Vec<String>, rng: &mut XorShift) -> Option<String> {
        if list.is_empty() {
            None
        } else {
            let i = usize::try_from(rng.below(list.len() as u64)).unwrap();
            Some(list.swap_remove(i))
        }
    }

    fn work(mut self) {
        loop {
            self.n += 1;
            if self.thread == 0 {
                self.clock.advance(Duration::seconds(
                    i64::try_from(self.rng.below(20)).unwrap(),
                ));
            }
            match self.rng.below(100) {
                0..=14 => {
                    let r = self.issue();
                    self.one(r);
                }
                15..=39 => {
                    let r = self.hold("h");
                    if self.one(r) {
                        self.pending.push(self.hold_id("h"));
                    }
                }
                40..=54 => {
                    if let Some(id) = Self::take(&mut self.pending, &mut self.rng) {
                        let r = self.post(&id);
                        if self.one(r) {
                            self.posted.push(id);
                        }
                    }
                }
                55..=61 => {
                    if let Some(id) = Self::take(&mut self.pending, &mut self.rng) {
                        let r = Request::new(self.key("void"), Command::Void { hold_id: id });
                        self.one(r);
                    }
                }
                62..=67 => {
                    if let Some(id) = Self::take(&mut self.posted, &mut self.rng) {
                        let r = Request::new(
                            self.key("refund"),
                            Command::Refund {
                                hold_id: id,
                                refs: Refs::from([("reason".to_string(), "complaint".to_string())]),
                            },
                        );
                        self.one(r);
                    }
                }
                68..=74 => {
                    let amount = i64::try_from(self.rng.between(100, 5_000)).unwrap();
                    let r = Request::new(
                        self.key("offset"),
                        Command::Offset {
                            elder_id: self.elder_id.clone(),
                            provider_id: NURSING_HOME.into(),
                            month: Month::of(self.clock.now()),
                            amount: Fen::from_fen(amount),
                            refs: Refs::from([("consent_ref".to_string(), "C-1".to_string())]),
                        },
                    );
                    self.one(r);
                }
                75..=79 => {
                    let amount = i64::try_from(self.rng.between(100, 2_000)).unwrap();
                    let r = Request::new(
                        self.key("payout"),
                        Command::Payout {
                            provider_id: self.provider.into(),
                            district: self.district.into(),
                            amount: Fen::from_fen(amount),
                            refs: Refs::new(),
                        },
                    );
                    self.one(r);
                }
                80..=89 => self.each(),
                _ => self.atomic(),
            }
        }
    }

    /// `submit`; true when acknowledged.
    fn one(&self, request: Request) -> bool {
        emit_json(
            "TRY",
            &Try {
                requests: vec![request.clone()],
                record: None,
            },
        );
        match self.ledger.submit(request.clone()) {
            Ok(outcome) => {
                ack(request, outcome, None);
                true
            }
            Err(_) => false,
        }
    }

    /// `submit_each` of an issue and a hold: each stands alone.
    fn each(&mut self) {
        let requests = vec![self.issue(), self.hold("e")];
        emit_json(
            "TRY",
            &Try {
                requests: requests.clone(),
                record: None,
            },
        );
        let results = self.ledger.submit_each(requests.clone());
        for (request, result) in requests.into_iter().zip(results) {
            if let Ok(outcome) = result {
                if matches!(request.command, Command::Hold { .. }) {
                    self.pending.push(self.hold_id("e"));
                }
                ack(request, outcome, None);
            }
        }
    }

    /// `submit_atomic` with a record: two holds, or a post and a hold. Holds of a group
    /// that failed are not touched again, so their state tells whether the group applied.
    fn atomic(&mut self) {
        let first = match Self::take(&mut self.pending, &mut self.rng) {
            Some(id) if self.rng.below(2) == 0 => self.post(&id),
            _ => self.hold("a"),
        };
        let requests = vec![first, self.hold("b")];
        let record = format!("group/{}", self.key("atomic"));
        emit_json(
            "TRY",
            &Try {
                requests: requests.clone(),
                record: Some(record.clone()),
            },
        );
        let value = serde_json::to_vec(&requests).expect("JSON");
        let result = self.ledger.submit_atomic(
            requests.clone(),
            vec![(record.clone().into_bytes(), Some(value))],
        );
        if let Ok(outcomes) = result {
            for (request, outcome) in requests.into_iter().zip(outcomes) {
                match &request.command {
                    Command::Hold { hold_id, .. } => self.pending.push(hold_id.clone()),
                    Command::Post { hold_id, .. } => self.posted.push(hold_id.clone()),
                    _ => {}
                }
                ack(request, outcome, Some(record.clone()));
            }
        }
    }
}

fn ack(request: Request, outcome: Outcome, record: Option<String>) {
    let seq = outcome
        .entry
        .as_ref()
        .map_or("-".to_string(), |e| e.seq.to_string());
    let line = format!(
        "ACK {} {seq} {}\n",
        request.key,
        serde_json::to_string(&Ack {
            request: request.clone(),
            outcome,
            record,
        })
        .expect("JSON")
    );
    emit(&line);
}

// ---------------------------------------------------------------------------------------
// The parent.
// ---------------------------------------------------------------------------------------

/// The running child; killed (SIGKILL) and reaped on drop, so that no child outlives a
/// failing test.
struct ChildGuard {
    child: Child,
    /// Held open for the child's lifetime: the child exits when it closes.
    _stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
}

impl ChildGuard {
    fn spawn(dir: &Path, run: u64, stderr_path: PathBuf) -> ChildGuard {
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Process::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_process_entry",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, dir)
            .env(RUN_ENV, run.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start the child");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    // A line cut short by the kill was never acknowledged: drop it.
                    Ok(0) | Err(_) => return,
                    Ok(_) if !line.ends_with('\n') => return,
                    Ok(_) => {
                        if sender.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        ChildGuard {
            child,
            _stdin: stdin,
            lines,
            stderr_path,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next complete line, or None once the child's stdout is closed.
    fn next_line(&self) -> Option<String> {
        match self.lines.recv_timeout(LINE_WAIT) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "the child printed nothing for {LINE_WAIT:?}; its stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// SIGKILL, reap, then every complete line the child wrote before it died.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL the child");
        self.child.wait().expect("reap the child");
        let mut rest = Vec::new();
        while let Some(line) = self.next_line() {
            rest.push(line);
        }
        rest
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the children have told the parent, across iterations.
#[derive(Default)]
struct Seen {
    acks: Vec<Ack>,
    /// Hold ids of every submitted hold (acknowledged or not).
    holds: BTreeSet<String>,
    /// Atomic groups: (record key, holds it creates, holds it posts).
    groups: Vec<(String, Vec<String>, Vec<String>)>,
}

impl Seen {
    /// Takes in one line; returns true for an acknowledgement.
    fn read(&mut self, line: &str) -> bool {
        if let Some(rest) = line.strip_prefix("TRY ") {
            let tried: Try = serde_json::from_str(rest).unwrap();
            let mut creates = Vec::new();
            let mut posts = Vec::new();
            for r in &tried.requests {
                match &r.command {
                    Command::Hold { hold_id, .. } => {
                        self.holds.insert(hold_id.clone());
                        creates.push(hold_id.clone());
                    }
                    Command::Post { hold_id, .. } => posts.push(hold_id.clone()),
                    _ => {}
                }
            }
            if let Some(record) = tried.record {
                self.groups.push((record, creates, posts));
            }
            false
        } else if let Some(rest) = line.strip_prefix("ACK ") {
            let mut fields = rest.splitn(3, ' ');
            let (key, seq, json) = (
                fields.next().unwrap(),
                fields.next().unwrap(),
                fields.next().unwrap(),
            );
            let ack: Ack = serde_json::from_str(json).unwrap();
            assert_eq!(ack.request.key, key);
            let entry_seq = ack.outcome.entry.as_ref().map(|e| e.seq.to_string());
            assert_eq!(entry_seq.as_deref().unwrap_or("-"), seq);
            self.acks.push(ack);
            true
        } else {
            false
        }
    }
}

/// How one iteration kills its child.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// As soon as it is started (during start-up or the open).
    Start,
    /// Once it announced its first submission (mid-first-commit, probably).
    FirstTry,
    /// After this many acknowledgements.
    Acks(u64),
}

/// Every sixth iteration kills at start-up and every sixth at the first submission; the
/// others after a few or a few hundred acknowledgements.
fn kill_plan(iteration: u64) -> KillAt {
    let mut rng = XorShift::new(0xC0FFEE + iteration);
    match iteration % 6 {
        1 => KillAt::Start,
        4 => KillAt::FirstTry,
        _ if rng.below(3) == 0 => KillAt::Acks(rng.between(1, 12)),
        _ => KillAt::Acks(rng.between(13, 300)),
    }
}

/// Runs one child until the kill point; returns how many acknowledgements it printed in all.
fn crash_once(dir: &Path, iteration: u64, seen: &mut Seen, logs: &Path) -> u64 {
    let child = ChildGuard::spawn(dir, iteration, logs.join(format!("child-{iteration}.err")));
    let plan = kill_plan(iteration);
    let mut acks = 0;
    let done = |acks: u64, line: &str| match plan {
        KillAt::Start => true,
        KillAt::FirstTry => line.starts_with("TRY "),
        KillAt::Acks(n) => acks >= n,
    };
    if !matches!(plan, KillAt::Start) {
        loop {
            let line = child.next_line().unwrap_or_else(|| {
                panic!(
                    "the child exited before the kill point {plan:?}; its stderr:\n{}",
                    child.stderr()
                )
            });
            acks += u64::from(seen.read(&line));
            if done(acks, &line) {
                break;
            }
        }
    }
    for line in child.kill() {
        acks += u64::from(seen.read(&line));
    }
    acks
}

fn export(ledger: &Ledger) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    loop {
        let page = ledger
            .entry_lines(lines.len() as u64, EXPORT_PAGE_MAX)
            .unwrap();
        if page.is_empty() {
            return lines;
        }
        lines.extend(page);
    }
}

fn verify(lines: &[Vec<u8>], checkpoint: &Checkpoint, ledger: &Ledger) {
    let bytes: Vec<u8> = lines
        .iter()
        .flat_map(|l| l.iter().chain(b"\n"))
        .copied()
        .collect();
    verify_export(&bytes[..], checkpoint, &ledger.key().public_key_bytes())
        .unwrap_or_else(|e| panic!("export does not verify against {checkpoint:?}: {e}"));
}

/// Every acknowledged request replays its outcome and writes nothing; the records of
/// acknowledged atomic groups are there.
fn check_durable(ledger: &Ledger, seen: &Seen) {
    let size = ledger.tree_size();
    let requests: Vec<Request> = seen.acks.iter().map(|a| a.request.clone()).collect();
    let results = ledger.submit_each(requests);
    for (ack, result) in seen.acks.iter().zip(results) {
        assert_eq!(
            result.as_ref(),
            Ok(&ack.outcome),
            "acknowledged {:?} was lost",
            ack.request
        );
        if let Some(record) = &ack.record {
            assert!(
                ledger.record(record.as_bytes()).unwrap().is_some(),
                "record {record} of an acknowledged group is missing"
            );
        }
    }
    assert_eq!(ledger.tree_size(), size, "a replay wrote an entry");
}

/// Atomic groups are all or nothing: the record, the holds they create, and the posts.
fn check_groups(ledger: &Ledger, seen: &Seen) {
    for (record, creates, posts) in &seen.groups {
        let applied = ledger.record(record.as_bytes()).unwrap().is_some();
        for id in creates {
            assert_eq!(
                ledger.hold(id).unwrap().is_some(),
                applied,
                "group {record}: hold {id} vs record"
            );
        }
        for id in posts {
            let hold = ledger.hold(id).unwrap().expect("a posted hold exists");
            assert_eq!(
                hold.charge_seq.is_some(),
                applied,
                "group {record}: post of {id} vs record"
            );
        }
    }
}

/// Balances equal the replay of the journal plus the pending holds; every posted or
/// refunded hold points at its entries.
fn check_balances(ledger: &Ledger, seen: &Seen, lines: &[Vec<u8>]) {
    let entries: Vec<Entry> = lines
        .iter()
        .map(|l| Entry::parse_line(l).unwrap())
        .collect();
    let mut expected: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for entry in &entries {
        for p in &entry.postings {
            let sums = expected.entry(p.account.to_string()).or_default();
            match p.side {
                Side::Debit => sums.0 += p.amount.fen(),
                Side::Credit => sums.1 += p.amount.fen(),
            }
        }
    }
    for id in &seen.holds {
        let Some(hold) = ledger.hold(id).unwrap() else {
            continue;
        };
        let account = AccountId::elder(&hold.elder_id, hold.year).unwrap();
        match hold.state {
            HoldState::Pending => {
                expected.entry(account.to_string()).or_default().2 += hold.amount.fen();
            }
            HoldState::Posted | HoldState::Refunded => {
                let charge = &entries[usize::try_from(hold.charge_seq.unwrap()).unwrap()];
                assert_eq!(charge.kind, EntryKind::Charge, "hold {id}");
                assert_eq!(charge.postings[0].account, account, "hold {id}");
                assert_eq!(charge.postings[0].amount, hold.amount, "hold {id}");
                if hold.state == HoldState::Refunded {
                    let refund = &entries[usize::try_from(hold.refund_seq.unwrap()).unwrap()];
                    assert_eq!(refund.kind, EntryKind::Refund, "hold {id}");
                    assert_eq!(refund.postings[1].account, account, "hold {id}");
                }
            }
            HoldState::Voided | HoldState::Expired => {}
        }
    }
    let live: BTreeMap<String, (i64, i64, i64)> = ledger
        .accounts()
        .into_iter()
        .map(|(a, b)| {
            assert_eq!(b.credits_pending, Fen::ZERO);
            if a.is_elder() {
                assert!(!b.available().unwrap().is_negative(), "{a} below zero");
            }
            let sums = (
                b.debits_posted.fen(),
                b.credits_posted.fen(),
                b.debits_pending.fen(),
            );
            (a.to_string(), sums)
        })
        .collect();
    assert_eq!(
        live, expected,
        "balances differ from journal replay + pending holds"
    );
    let net: i64 = live.values().map(|(d, c, _)| c - d).sum();
    assert_eq!(net, 0);
}

#[test]
fn acknowledged_commands_survive_sigkill() {
    ledger_core::storage::Store::set_log_file_target(LOG_FILE_TARGET);
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let dir = store.path();
    let clock = Arc::new(ManualClock::new(at(START)));
    drop(Ledger::create(dir, clock.clone()).unwrap());
    let mut seen = Seen::default();
    let mut last: Option<Checkpoint> = None;
    let mut total_acks = 0;
    for iteration in 0..ITERATIONS {
        let acks = crash_once(dir, iteration, &mut seen, logs.path());
        total_acks += acks;

        verify_store(dir).unwrap_or_else(|e| panic!("iteration {iteration}: store: {e}"));
        let ledger = Ledger::open(dir, clock.clone(), Verify::Full)
            .unwrap_or_else(|e| panic!("iteration {iteration}: open: {e}"));
        if let Some(t) = ledger.last_time() {
            if t > clock.now() {
                clock.set(t).unwrap();
            }
        }
        check_durable(&ledger, &seen);
        check_groups(&ledger, &seen);
        let lines = export(&ledger);
        check_balances(&ledger, &seen, &lines);
        // The journal only grows: the last iteration's checkpoint still verifies.
        if let Some(previous) = &last {
            assert!(ledger.tree_size() >= previous.tree_size);
            verify(&lines, previous, &ledger);
        }
        let checkpoint = ledger.checkpoint();
        verify(&lines, &checkpoint, &ledger);
        eprintln!(
            "iteration {iteration}: kill {:?}, {acks} acks, tree_size {}",
            kill_plan(iteration),
            checkpoint.tree_size
        );
        last = Some(checkpoint);
    }
    eprintln!(
        "{ITERATIONS} iterations, {total_acks} acks, {} entries",
        last.map_or(0, |c| c.tree_size)
    );
    assert!(total_acks > 0, "no child acknowledged anything");
}

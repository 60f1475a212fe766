//! Benchmarks of issue 2: durable hold+post pairs per second with 1, 8 and 64 concurrent
//! submitters (commit latency percentiles, peak RSS), and the offline verifier
//! (`audit::verify_export` in-process and the real `ledger-audit verify` binary) over a
//! 1,000,000-entry export. Results go into BENCHMARKS.md.
//!
//! A submitter places a hold, waits until it is durable, posts it, waits again, and so on.
//! Two drivers: `threads` gives each submitter an OS thread blocked in `Ledger::submit`;
//! `callbacks` drives every submitter from one thread through `Ledger::submit_each_with`,
//! each sending its next command from its answer, which is how ledger-server's handlers use
//! the ledger (async tasks woken by the answer, not a thread each).
//!
//! The bench runs on mimalloc, the global allocator of the ledger-server binary, which is
//! where the core runs in production.
//!
//! `cargo bench -p ledger-core --bench ledger -- [commit|verify|all] [options]`
//!
//! Every measurement runs in a child process of this binary (re-executed with an internal
//! subcommand), so each peak RSS (`VmHWM`) is that measurement's own and not the sum of
//! everything run before it.

// Floats are used only to report rates and durations; no money is computed here.
#![allow(clippy::float_arithmetic)]

use ledger_core::checkpoint::LedgerKey;
use ledger_core::clock::ManualClock;
use ledger_core::command::{Command, Refs, Request};
use ledger_core::fiscal::{format_timestamp, parse_timestamp};
use ledger_core::journal::{Entry, EntryKind, Posting, ZERO_HASH};
use ledger_core::merkle::MerkleTree;
use ledger_core::{Fen, Ledger};
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str =
    "usage: cargo bench -p ledger-core --bench ledger -- [commit|verify|all] [options]
  --submitters 1,8,64   concurrent submitters, one commit run per value  (commit)
  --driver threads,callbacks
                        how submitters are driven (module docs)          (commit)
  --seconds 10          measured seconds per commit run                  (commit)
  --elders 20000        elders issued 500.00 each before a commit run    (commit)
  --entries 1000000     entries in the generated export                  (verify)
  --repeats 3           runs of each measurement; the median is reported
  --retries 3           reruns of a run during which other processes took over 5% of a core
  --quiet-wait 120      seconds to wait, before each run, for other processes to go idle
  --data-dir DIR        where stores and exports go (default: cargo's target/tmp)
  --audit-bin PATH      the ledger-audit binary (default: the one cargo built)";

/// The ledger's clock during the commit runs: mid-March 2026, inside fiscal year 2026.
const BENCH_NOW: &str = "2026-03-15T02:00:00Z";
/// Credit issued to each elder before the commit runs (fen): 500.00 yuan.
const ISSUE_FEN: i64 = 50_000;
/// Each hold and charge (fen): 1.00 yuan, so an elder covers 500 pairs.
const CHARGE_FEN: i64 = 100;
/// Issue requests per `submit_each` while setting up.
const ISSUE_BATCH_REQUESTS: usize = 4096;
/// How long a benchmark hold lives; far beyond any run, so nothing expires mid-run.
const HOLD_TTL_SECS: u32 = 3600;
/// How often the parent samples a child's /proc status for its peak RSS.
const RSS_POLL: Duration = Duration::from_millis(5);
/// Providers the generated charges spread over.
const PROVIDERS: u64 = 50;
/// Fraction of generated entries that are issues (one elder each): 1 in this many.
const ISSUE_EVERY: u64 = 10;

/// How submitters are driven (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Threads,
    Callbacks,
}

impl Driver {
    fn parse(text: &str) -> Result<Driver, String> {
        match text {
            "threads" => Ok(Driver::Threads),
            "callbacks" => Ok(Driver::Callbacks),
            other => Err(format!(
                "--driver: {other:?} is neither threads nor callbacks"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Driver::Threads => "threads",
            Driver::Callbacks => "callbacks",
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    submitters: Vec<usize>,
    drivers: Vec<Driver>,
    seconds: u64,
    elders: usize,
    entries: u64,
    repeats: usize,
    retries: usize,
    quiet_wait_secs: u64,
    data_dir: PathBuf,
    audit_bin: PathBuf,
    dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            submitters: vec![1, 8, 64],
            drivers: vec![Driver::Threads, Driver::Callbacks],
            seconds: 10,
            elders: 20_000,
            entries: 1_000_000,
            repeats: 3,
            retries: 3,
            quiet_wait_secs: 120,
            data_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ledger-bench"),
            audit_bin: PathBuf::from(env!("CARGO_BIN_EXE_ledger-audit")),
            dir: None,
        }
    }
}

fn parse_args(args: &[String]) -> Result<(String, Options), String> {
    let mut what = None;
    let mut options = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{arg} needs a value"));
        let number = |text: String| {
            text.replace('_', "")
                .parse::<u64>()
                .map_err(|e| format!("{arg}: {e}"))
        };
        match arg.as_str() {
            // cargo bench appends --bench to every bench binary's arguments.
            "--bench" => {}
            "--submitters" => {
                options.submitters = value()?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("--submitters: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "--driver" => {
                options.drivers = value()?
                    .split(',')
                    .map(|s| Driver::parse(s.trim()))
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => options.seconds = number(value()?)?,
            "--elders" => {
                options.elders = usize::try_from(number(value()?)?).map_err(|e| e.to_string())?
            }
            "--entries" => options.entries = number(value()?)?,
            "--repeats" => {
                options.repeats = usize::try_from(number(value()?)?).map_err(|e| e.to_string())?
            }
            "--retries" => {
                options.retries = usize::try_from(number(value()?)?).map_err(|e| e.to_string())?
            }
            "--quiet-wait" => options.quiet_wait_secs = number(value()?)?,
            "--data-dir" => options.data_dir = PathBuf::from(value()?),
            "--audit-bin" => options.audit_bin = PathBuf::from(value()?),
            "--dir" => options.dir = Some(PathBuf::from(value()?)),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            other if what.is_none() => what = Some(other.to_string()),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    Ok((what.unwrap_or_else(|| "all".into()), options))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (what, options) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(problem) => {
            eprintln!("ledger bench: {problem}\n{USAGE}");
            std::process::exit(2);
        }
    };
    match what.as_str() {
        "commit" => commit(&options),
        "verify" => verify(&options),
        "all" => {
            commit(&options);
            verify(&options);
        }
        // Internal: one measurement in a process of its own.
        "commit-one" => commit_one(&options),
        "generate-export" => generate_export(&options),
        "verify-one" => verify_one(&options),
        other => {
            eprintln!("ledger bench: unknown benchmark {other:?}\n{USAGE}");
            std::process::exit(2);
        }
    }
}

/// CPU time this process has used so far (user + system), in clock ticks of 10 ms.
fn cpu_ticks() -> u64 {
    cpu_ticks_of(Path::new("/proc/self/stat")).unwrap_or(0)
}

/// User + system CPU ticks from a /proc/PID/stat file: fields 14 and 15, counted after the
/// parenthesised command name (which may hold spaces).
fn cpu_ticks_of(stat: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Bytes written so far to the block device that holds `dir` (sectors written, from
/// /proc/diskstats, × 512), by every process: the bench runs alone (see `undisturbed`).
/// Counts what reached the device, so writes still in the page cache count later. 0 if
/// unknown. (`write_bytes` of /proc/self/io is no use here: it counts sled's writes many
/// times over what the device gets.)
fn device_bytes_written(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::metadata(dir).map(|m| m.dev()) else {
        return 0;
    };
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let Ok(stats) = std::fs::read_to_string("/proc/diskstats") else {
        return 0;
    };
    stats
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[0] == major.to_string() && f[1] == minor.to_string())
        .and_then(|f| f[9].parse::<u64>().ok())
        .map_or(0, |sectors| sectors * 512)
}

/// Peak resident set size of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    status_field(Path::new("/proc/self/status"), "VmHWM:").unwrap_or(0)
}

fn status_field(path: &Path, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs this binary with `args`, echoes its stderr, and returns its `RESULT` line's fields.
fn run_child(args: &[String]) -> BTreeMap<String, String> {
    let exe = std::env::current_exe().expect("the running bench binary has a path");
    let output = Process::new(exe)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("re-running the bench binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child {args:?} failed:\n{stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("child {args:?} printed no RESULT line:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Share of one core that other processes may take during a run before it is rerun.
const OTHERS_SHARE_MAX: f64 = 0.05;
/// How long other processes must stay below that share before a run starts.
const QUIET_PROBE: Duration = Duration::from_secs(2);

/// CPU ticks (user + system, with reaped children's) of every process but this one, by pid.
/// Kernel threads are left out: the I/O a run causes is done there, on the run's behalf.
fn others_ticks() -> BTreeMap<u32, u64> {
    const KERNEL_THREAD_FLAG: u64 = 0x0020_0000;
    let me = std::process::id();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    proc_dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
            let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
            let (parent, flags) = (number(1)?, number(6)?);
            if flags & KERNEL_THREAD_FLAG != 0 || parent == 2 || pid == 2 {
                return None;
            }
            Some((pid, number(11)? + number(12)? + number(13)? + number(14)?))
        })
        .collect()
}

/// Cores' worth of CPU other processes used between two `others_ticks` snapshots taken
/// `elapsed` apart (a process that started in between counts in full).
fn others_share(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>, elapsed: Duration) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, now)| now.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks as f64 / 100.0 / elapsed.as_secs_f64().max(1e-3)
}

/// Waits, up to `--quiet-wait`, until other processes stay below `OTHERS_SHARE_MAX`.
fn wait_until_quiet(options: &Options) {
    let deadline = Instant::now() + Duration::from_secs(options.quiet_wait_secs);
    loop {
        let before = others_ticks();
        std::thread::sleep(QUIET_PROBE);
        let share = others_share(&before, &others_ticks(), QUIET_PROBE);
        if share < OTHERS_SHARE_MAX || Instant::now() >= deadline {
            return;
        }
    }
}

/// Runs one measurement after waiting for quiet, and reruns it (up to `--retries` times)
/// while other processes took more than `OTHERS_SHARE_MAX` of a core during it. Returns
/// the result with that share, in percent of a core, and the load average before it.
fn undisturbed<T>(options: &Options, mut run: impl FnMut() -> T) -> (T, String, String) {
    let mut attempt = 0;
    loop {
        wait_until_quiet(options);
        let load = load_average();
        let before = others_ticks();
        let started = Instant::now();
        let result = run();
        let share = others_share(&before, &others_ticks(), started.elapsed());
        attempt += 1;
        if share < OTHERS_SHARE_MAX || attempt > options.retries {
            return (result, format!("{:.0}%", share * 100.0), load);
        }
        eprintln!(
            "(other processes took {:.0}% of a core during that run; running it again)",
            share * 100.0
        );
    }
}

fn field<'a>(result: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    result.get(name).map_or("?", String::as_str)
}

fn common_args(options: &Options) -> Vec<String> {
    vec![
        "--data-dir".into(),
        options.data_dir.display().to_string(),
        "--seconds".into(),
        options.seconds.to_string(),
        "--elders".into(),
        options.elders.to_string(),
        "--entries".into(),
        options.entries.to_string(),
    ]
}

fn mib(kib: &str) -> String {
    kib.parse::<u64>()
        .map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

// ---------------------------------------------------------------------------------------
// Commit: hold + post pairs through the real writer thread, sled and fsync.

fn commit(options: &Options) {
    println!(
        "\n## commit: hold+post pairs, {} s per run, {} elders, median of {} runs\n",
        options.seconds, options.elders, options.repeats
    );
    println!(
        "| driver | submitters | pairs/s (= posted charges/s) | runs' range | commits/s | p50 ms \
         | p99 ms | max ms | CPU µs/commit | device bytes/pair | peak RSS MiB | others' CPU \
         | load before |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &driver in &options.drivers {
        for &submitters in &options.submitters {
            let mut args = vec![
                "commit-one".into(),
                "--submitters".into(),
                submitters.to_string(),
                "--driver".into(),
                driver.name().into(),
            ];
            args.extend(common_args(options));
            let mut runs: Vec<(f64, BTreeMap<String, String>, String, String)> =
                (0..options.repeats.max(1))
                    .map(|_| {
                        let (r, others, load) = undisturbed(options, || run_child(&args));
                        let rate = field(&r, "pairs_per_s").parse().unwrap_or(f64::NAN);
                        (rate, r, others, load)
                    })
                    .collect();
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (low, high) = (runs[0].0, runs[runs.len() - 1].0);
            let (_, r, others, load) = &runs[runs.len() / 2];
            println!(
                "| {} | {} | {} | {low:.0}–{high:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                driver.name(),
                submitters,
                field(r, "pairs_per_s"),
                field(r, "commits_per_s"),
                field(r, "p50_ms"),
                field(r, "p99_ms"),
                field(r, "max_ms"),
                field(r, "cpu_us_per_commit"),
                field(r, "device_b_per_pair"),
                mib(field(r, "peak_rss_kib")),
                others,
                load,
            );
        }
    }
}

/// The one-minute load average, to show how busy the machine was (other work skews runs).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn issue_elders(ledger: &Ledger, elders: usize) {
    let period = "2026-03".parse().expect("a valid month");
    let ids: Vec<usize> = (0..elders).collect();
    for chunk in ids.chunks(ISSUE_BATCH_REQUESTS) {
        let requests = chunk
            .iter()
            .map(|&i| {
                Request::new(
                    format!("issue-{i}"),
                    Command::Issue {
                        elder_id: elder_id(i),
                        district: "130102".into(),
                        period,
                        amount: Fen::from_fen(ISSUE_FEN),
                    },
                )
            })
            .collect();
        for result in ledger.submit_each(requests) {
            result.expect("issuing bench credit");
        }
    }
}

fn elder_id(i: usize) -> String {
    format!("E{i:08}")
}

/// The hold and the post of pair number `pair` of submitter `thread`.
fn pair_requests(thread: usize, pair: usize, submitters: usize, elders: usize) -> [Request; 2] {
    let elder = (thread + pair * submitters) % elders;
    let hold_id = format!("H{thread}x{pair}");
    let hold = Request::new(
        format!("hold-{thread}-{pair}"),
        Command::Hold {
            hold_id: hold_id.clone(),
            elder_id: elder_id(elder),
            amount: Fen::from_fen(CHARGE_FEN),
            ttl_secs: HOLD_TTL_SECS,
        },
    );
    let refs = Refs::from([
        ("charge".to_string(), format!("C{thread:03}{pair:08}")),
        ("order".to_string(), format!("O{thread:03}{pair:08}")),
        ("receipt".to_string(), format!("R2026{thread:03}{pair:07}")),
    ]);
    let post = Request::new(
        format!("post-{thread}-{pair}"),
        Command::Post {
            hold_id,
            provider_id: format!("P{:03}", thread % 16),
            refs,
        },
    );
    [hold, post]
}

/// One submitter thread: hold then post, each waited for until durable, until `deadline`.
/// Returns the latency of every commit, in nanoseconds.
fn submitter(
    ledger: &Ledger,
    thread: usize,
    submitters: usize,
    elders: usize,
    deadline: Instant,
) -> Vec<u64> {
    let mut latencies = Vec::new();
    let mut pair = 0usize;
    while Instant::now() < deadline {
        for request in pair_requests(thread, pair, submitters, elders) {
            let started = Instant::now();
            if let Err(e) = ledger.submit(request) {
                panic!("submitter {thread}, pair {pair}: {e}");
            }
            latencies.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        pair += 1;
    }
    latencies
}

/// `submitters` submitters driven from this thread through `Ledger::submit_each_with`, the
/// way ledger-server's handlers use the ledger: each waits for its durable answer before its
/// next command, without an OS thread of its own. Returns every commit's latency (ns).
fn callbacks(ledger: &Ledger, submitters: usize, elders: usize, deadline: Instant) -> Vec<u64> {
    /// A submitter: its pair, the post waiting for its hold, when its request went in.
    struct Stream {
        pair: usize,
        post: Option<Request>,
        started: Instant,
    }
    let (done_sender, done) = crossbeam_channel::unbounded::<(usize, bool)>();
    let submit = |id: usize, stream: &mut Stream| {
        let request = match stream.post.take() {
            Some(post) => post,
            None => {
                let [hold, post] = pair_requests(id, stream.pair, submitters, elders);
                stream.post = Some(post);
                hold
            }
        };
        let sender = done_sender.clone();
        stream.started = Instant::now();
        ledger.submit_each_with(vec![request], move |results| {
            let ok = results.iter().all(Result::is_ok);
            // The driver stops listening only once it has every answer it waits for.
            let _ = sender.send((id, ok));
        });
    };
    let mut streams: Vec<Stream> = (0..submitters)
        .map(|_| Stream {
            pair: 0,
            post: None,
            started: Instant::now(),
        })
        .collect();
    for (id, stream) in streams.iter_mut().enumerate() {
        submit(id, stream);
    }
    let mut latencies = Vec::new();
    let mut running = submitters;
    while running > 0 {
        let (id, ok) = done.recv().expect("the ledger answers every request");
        assert!(ok, "submitter {id}: a command failed");
        let stream = &mut streams[id];
        latencies.push(u64::try_from(stream.started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        let pair_done = stream.post.is_none();
        if pair_done {
            stream.pair += 1;
        }
        // A submitter stops after a whole pair once the time is up.
        if !pair_done || Instant::now() < deadline {
            submit(id, stream);
        } else {
            running -= 1;
        }
    }
    latencies
}

fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
    sorted[rank - 1]
}

fn millis(nanos: u64) -> String {
    format!("{:.2}", nanos as f64 / 1e6)
}

fn commit_one(options: &Options) {
    let submitters = *options
        .submitters
        .first()
        .expect("commit-one gets one --submitters");
    let driver = *options
        .drivers
        .first()
        .expect("commit-one gets one --driver");
    std::fs::create_dir_all(&options.data_dir).expect("creating the bench data dir");
    let dir = tempfile::tempdir_in(&options.data_dir).expect("a temp dir for the store");
    let clock = Arc::new(ManualClock::new(
        parse_timestamp(BENCH_NOW).expect("a valid time"),
    ));
    let ledger = Ledger::create(dir.path(), clock).expect("creating the bench store");
    let setup = Instant::now();
    issue_elders(&ledger, options.elders);
    eprintln!(
        "commit {} S={submitters}: issued {} elders in {:.1} s; running {} s",
        driver.name(),
        options.elders,
        setup.elapsed().as_secs_f64(),
        options.seconds
    );
    let ticks_before = cpu_ticks();
    let written_before = device_bytes_written(&options.data_dir);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let mut latencies: Vec<u64> = match driver {
        Driver::Callbacks => callbacks(&ledger, submitters, options.elders, deadline),
        Driver::Threads => std::thread::scope(|scope| {
            let handles: Vec<_> = (0..submitters)
                .map(|t| {
                    let ledger = &ledger;
                    scope.spawn(move || submitter(ledger, t, submitters, options.elders, deadline))
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a submitter panicked"))
                .collect()
        }),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_ms = (cpu_ticks() - ticks_before) * 10;
    let written = device_bytes_written(&options.data_dir).saturating_sub(written_before);
    latencies.sort_unstable();
    let commits = latencies.len();
    let pairs = commits / 2;
    let expected_size = u64::try_from(options.elders + pairs).expect("fits");
    assert_eq!(
        ledger.tree_size(),
        expected_size,
        "one entry per issue and per post"
    );
    println!(
        "RESULT submitters={submitters} pairs={pairs} seconds={elapsed:.2} pairs_per_s={:.0} commits_per_s={:.0} p50_ms={} p99_ms={} max_ms={} cpu_us_per_commit={:.1} device_b_per_pair={} peak_rss_kib={}",
        pairs as f64 / elapsed,
        commits as f64 / elapsed,
        millis(percentile(&latencies, 500)),
        millis(percentile(&latencies, 990)),
        millis(latencies.last().copied().unwrap_or(0)),
        cpu_ms as f64 * 1000.0 / commits as f64,
        written / u64::try_from(pairs.max(1)).expect("fits"),
        peak_rss_kib(),
    );
}

// ---------------------------------------------------------------------------------------
// Verify: a generated export, checked in-process and by the real binary.

fn export_dir(options: &Options) -> PathBuf {
    options
        .dir
        .clone()
        .unwrap_or_else(|| options.data_dir.join(format!("export-{}", options.entries)))
}

fn verify(options: &Options) {
    let dir = export_dir(options);
    if !dir.join("complete").exists() {
        let mut args = vec![
            "generate-export".into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        args.extend(common_args(options));
        let r = run_child(&args);
        eprintln!(
            "generated {} entries ({} bytes) in {} s",
            field(&r, "entries"),
            field(&r, "bytes"),
            field(&r, "seconds")
        );
    }
    let bytes = std::fs::metadata(dir.join("entries.jsonl")).map_or(0, |m| m.len());
    println!(
        "\n## verify: {} entries, {:.1} MiB export, median of {} runs\n",
        options.entries,
        bytes as f64 / 1024.0 / 1024.0,
        options.repeats
    );
    println!(
        "| verifier | seconds | entries/s | MB/s of export | CPU s | peak RSS MiB | others' CPU \
         | load before |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut in_process = Vec::new();
    for _ in 0..options.repeats.max(1) {
        let mut args = vec![
            "verify-one".into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        args.extend(common_args(options));
        let (r, others, load) = undisturbed(options, || run_child(&args));
        in_process.push(VerifyRun {
            seconds: field(&r, "seconds").parse().unwrap_or(f64::NAN),
            cpu_seconds: field(&r, "cpu_seconds").parse().unwrap_or(f64::NAN),
            peak_rss_kib: field(&r, "peak_rss_kib").parse().unwrap_or(0),
            others,
            load,
        });
    }
    print_verify_row(
        "audit::verify_export (in-process)",
        &mut in_process,
        options.entries,
        bytes,
    );
    let mut binary: Vec<VerifyRun> = (0..options.repeats.max(1))
        .map(|_| {
            let (mut run, others, load) = undisturbed(options, || run_audit_binary(options, &dir));
            run.others = others;
            run.load = load;
            run
        })
        .collect();
    print_verify_row(
        "ledger-audit verify (binary)",
        &mut binary,
        options.entries,
        bytes,
    );
}

/// One verification: wall and CPU time, peak RSS, other processes' CPU during it, and the
/// load average before it.
struct VerifyRun {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
    others: String,
    load: String,
}

fn print_verify_row(name: &str, runs: &mut [VerifyRun], entries: u64, bytes: u64) {
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let median = &runs[runs.len() / 2];
    let peak = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
    println!(
        "| {name} | {:.3} | {:.0} | {:.0} | {:.2} | {} | {} | {} |",
        median.seconds,
        entries as f64 / median.seconds,
        bytes as f64 / median.seconds / 1e6,
        median.cpu_seconds,
        mib(&peak.to_string()),
        median.others,
        median.load,
    );
}

/// Runs `ledger-audit verify` on the export. Its peak RSS and CPU time are sampled from
/// /proc/PID every `RSS_POLL` until it exits, so the CPU time misses at most that much.
fn run_audit_binary(options: &Options, dir: &Path) -> VerifyRun {
    let started = Instant::now();
    let child = Process::new(&options.audit_bin)
        .arg("verify")
        .arg("--entries")
        .arg(dir.join("entries.jsonl"))
        .arg("--checkpoint")
        .arg(dir.join("checkpoint.json"))
        .arg("--public-key")
        .arg(dir.join("public-key.json"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", options.audit_bin.display()));
    let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
    let (mut peak, mut ticks) = (0, 0);
    // A zombie's status has no VmHWM line, so sampling stops at exit without reaping it.
    while let Some(hwm) = status_field(&proc_dir.join("status"), "VmHWM:") {
        peak = peak.max(hwm);
        ticks = cpu_ticks_of(&proc_dir.join("stat")).unwrap_or(ticks);
        std::thread::sleep(RSS_POLL);
    }
    let output = child.wait_with_output().expect("waiting for ledger-audit");
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ledger-audit failed: {stdout}");
    eprintln!("ledger-audit: {}", stdout.trim());
    VerifyRun {
        seconds,
        cpu_seconds: ticks as f64 / 100.0,
        peak_rss_kib: peak,
        others: String::new(),
        load: String::new(),
    }
}

fn verify_one(options: &Options) {
    let dir = export_dir(options);
    let checkpoint = serde_json::from_slice(
        &std::fs::read(dir.join("checkpoint.json")).expect("reading checkpoint.json"),
    )
    .expect("checkpoint.json parses");
    let key_doc: ledger_core::checkpoint::PublicKeyDoc = serde_json::from_slice(
        &std::fs::read(dir.join("public-key.json")).expect("reading public-key.json"),
    )
    .expect("public-key.json parses");
    let key = key_doc.public_key_bytes().expect("a valid public key");
    let ticks_before = cpu_ticks();
    let started = Instant::now();
    let file = std::fs::File::open(dir.join("entries.jsonl")).expect("opening entries.jsonl");
    let summary = ledger_core::audit::verify_export(file, &checkpoint, &key)
        .expect("the generated export verifies");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(summary.entries, options.entries);
    let cpu_seconds = (cpu_ticks() - ticks_before) as f64 / 100.0;
    println!(
        "RESULT entries={} seconds={seconds:.4} cpu_seconds={cpu_seconds:.2} peak_rss_kib={}",
        summary.entries,
        peak_rss_kib()
    );
}

/// Writes a valid export of `entries` entries: one issue (500.00 to a new elder) in every
/// `ISSUE_EVERY`, the rest charges of 1.00–9.99 against earlier elders, chained and sealed
/// exactly as the ledger does, with a checkpoint signed by a fixed bench key.
fn generate_export(options: &Options) {
    let dir = export_dir(options);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the export dir");
    let started = Instant::now();
    let key = LedgerKey::from_seed(&[42u8; 32]).expect("a fixed bench seed");
    let year = "2026".parse().expect("a valid year");
    let file = std::fs::File::create(dir.join("entries.jsonl")).expect("creating entries.jsonl");
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut merkle = MerkleTree::new();
    let mut prev = ZERO_HASH;
    let start = parse_timestamp("2026-01-01T01:00:00Z").expect("a valid time");
    let mut bytes = 0u64;
    for seq in 0..options.entries {
        let at =
            format_timestamp(start + chrono::Duration::seconds(i64::try_from(seq).expect("fits")));
        let (kind, postings, refs) = if seq % ISSUE_EVERY == 0 {
            let elder = ledger_core::account::AccountId::elder(
                &elder_id(usize::try_from(seq / ISSUE_EVERY).expect("fits")),
                year,
            )
            .expect("a valid elder id");
            let funding =
                ledger_core::account::AccountId::funding(&format!("1301{:02}", seq % 8), year)
                    .expect("a valid district");
            let amount = Fen::from_fen(ISSUE_FEN);
            (
                EntryKind::Issue,
                vec![
                    Posting::debit(funding, amount),
                    Posting::credit(elder, amount),
                ],
                Refs::from([("period".to_string(), "2026-01".to_string())]),
            )
        } else {
            // Block b holds the issue to elder b and charges to elders b - j·97 (j = 1..9),
            // or to elder b itself early on: no elder takes more than 18 charges of < 10.00.
            let (block, j) = (seq / ISSUE_EVERY, seq % ISSUE_EVERY);
            let elder_index = block.checked_sub(j * 97).unwrap_or(block);
            let elder = ledger_core::account::AccountId::elder(
                &elder_id(usize::try_from(elder_index).expect("fits")),
                year,
            )
            .expect("a valid elder id");
            let payable = ledger_core::account::AccountId::provider_payable(&format!(
                "P{:03}",
                seq % PROVIDERS
            ))
            .expect("a valid provider");
            let amount = Fen::from_fen(100 + i64::try_from(seq % 900).expect("fits"));
            (
                EntryKind::Charge,
                vec![
                    Posting::debit(elder, amount),
                    Posting::credit(payable, amount),
                ],
                Refs::from([
                    ("charge".to_string(), format!("C{seq:08}")),
                    ("order".to_string(), format!("O{seq:08}")),
                    ("receipt".to_string(), format!("R2026{seq:09}")),
                ]),
            )
        };
        let entry = Entry::seal(seq, at, kind, postings, refs, prev);
        let line = entry.to_line();
        bytes += u64::try_from(line.len()).expect("fits") + 1;
        out.write_all(&line)
            .and_then(|()| out.write_all(b"\n"))
            .expect("writing entries.jsonl");
        merkle.push(entry.hash);
        prev = entry.hash;
    }
    out.flush().expect("flushing entries.jsonl");
    let checkpoint = key.sign_checkpoint(
        options.entries,
        &merkle.root(),
        &prev,
        "2026-12-31T16:00:00Z",
    );
    let checkpoint = serde_json::to_vec(&checkpoint).expect("a checkpoint serialises");
    let public_key = serde_json::to_vec(&key.public_key_doc()).expect("a key document serialises");
    std::fs::write(dir.join("checkpoint.json"), checkpoint).expect("writing checkpoint.json");
    std::fs::write(dir.join("public-key.json"), public_key).expect("writing public-key.json");
    std::fs::write(dir.join("complete"), b"").expect("marking the export complete");
    println!(
        "RESULT entries={} bytes={bytes} seconds={:.1} peak_rss_kib={}",
        options.entries,
        started.elapsed().as_secs_f64(),
        peak_rss_kib()
    );
}

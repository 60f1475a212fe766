//! Creating and opening a store for the command line: `init` and `simulate` create one the
//! same way, `serve` and `simulate` open one into an `AppState` the same way.

use anyhow::Context;
use ledger_core::Ledger;
use ledger_server::app::{AppState, Config};
use ledger_server::clock::{ClockMode, ServerClock};
use ledger_server::pii::Pii;
use ledger_server::registry::{prefix, record, Registry, Role};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Creates a new store in `dir` (absent or empty) with its PII key and the first city_admin
/// key, and returns that key's text (shown only here).
///
/// Atomic for the operator: a marker file is written (and made durable) before anything
/// else, and `finish_init` removes it once the store is complete (with its fixtures, if
/// any). A store with the marker is refused by `open`, and `create` clears such a leftover
/// of an interrupted init and starts again.
pub fn create(dir: &Path) -> anyhow::Result<String> {
    let marker = dir.join(INIT_MARKER);
    if marker.exists() {
        tracing::warn!(dir = %dir.display(), "clearing an interrupted init");
        clear_dir(dir)?;
    } else if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!(
            "{} is not empty; only a new store can be created there (nothing was changed)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&marker, b"init started; not a store yet\n")?;
    std::fs::File::open(&marker)?.sync_all()?;
    sync_dir(dir)?;
    create_inside(dir)
}

/// Marks the store `create` made in `dir` complete: from now on `open` accepts it.
pub fn finish_init(dir: &Path) -> anyhow::Result<()> {
    std::fs::remove_file(dir.join(INIT_MARKER))?;
    sync_dir(dir)?;
    Ok(())
}

/// While this file exists in a data dir, the dir holds an init that has not finished.
const INIT_MARKER: &str = "init.incomplete";

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Removes everything in `dir` (the leftovers of an interrupted init, which started empty).
fn clear_dir(dir: &Path) -> anyhow::Result<()> {
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn create_inside(dir: &Path) -> anyhow::Result<String> {
    // Creating stamps no time on the store: a later `serve --clock manual:T` starts at T, not
    // at the wall-clock moment of init.
    let clock = Arc::new(ServerClock::new(&ClockMode::Manual(
        chrono::DateTime::UNIX_EPOCH,
    )));
    let ledger = Ledger::create(dir, clock)?;
    Pii::create(dir)?;
    let now = ledger_core::fiscal::format_timestamp(chrono::Utc::now());
    let key =
        ledger_server::auth::new_key("first city admin".into(), Role::CityAdmin, None, None, now)
            .map_err(|e| anyhow::anyhow!(e.message))?;
    ledger
        .submit_atomic(
            Vec::new(),
            vec![record(prefix::KEY, &key.record.id, &key.record)],
        )
        .context("writing the first key")?;
    Ok(key.text)
}

/// Opens the store in `data` (verifying the chain head), resumes a manual clock, and builds
/// the server's state.
pub fn open(
    data: PathBuf,
    clock_mode: &ClockMode,
    hold_ttl_secs: u32,
    sms: &str,
) -> anyhow::Result<AppState> {
    if data.join(INIT_MARKER).exists() {
        anyhow::bail!(
            "{} holds an init that did not finish; run init there again",
            data.display()
        );
    }
    open_initializing(data, clock_mode, hold_ttl_secs, sms)
}

/// `open`, for a store `create` made whose init is not finished yet (loading fixtures).
pub fn open_initializing(
    data: PathBuf,
    clock_mode: &ClockMode,
    hold_ttl_secs: u32,
    sms: &str,
) -> anyhow::Result<AppState> {
    let clock = Arc::new(ServerClock::new(clock_mode));
    tracing::info!(dir = %data.display(), "opening the store and verifying the chain head");
    let ledger = Arc::new(
        Ledger::open(&data, clock.clone(), ledger_core::Verify::Head)
            .with_context(|| format!("opening {}", data.display()))?,
    );
    if let Some(t) = ledger.last_time() {
        clock.catch_up(t);
    }
    if let Some(bytes) = ledger.record(prefix::CLOCK.as_bytes())? {
        let text: String = serde_json::from_slice(&bytes)?;
        clock.catch_up(ledger_core::fiscal::parse_timestamp(&text)?);
    }
    let registry = Arc::new(Registry::load(ledger.clone())?);
    let settlement = Arc::new(ledger_server::settlement::Settlement::load(ledger.clone())?);
    let sms = ledger_server::sms::sender_from_flag(sms, &data)?;
    Ok(AppState {
        ledger,
        registry,
        clock,
        pii: Arc::new(Pii::open(&data)?),
        settlement,
        sms,
        config: Arc::new(Config {
            data_dir: data,
            hold_ttl_secs,
        }),
        jobs: Arc::default(),
    })
}

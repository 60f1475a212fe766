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
pub fn create(dir: &Path) -> anyhow::Result<String> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!(
            "{} is not empty; only a new store can be created there (nothing was changed)",
            dir.display()
        );
    }
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

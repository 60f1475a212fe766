//! `ledger-server`: `init` creates a store and the first city_admin key; `serve` runs the API
//! (API.md "Commands").

use anyhow::Context;
use clap::{Parser, Subcommand};
use ledger_core::Ledger;
use ledger_server::app::{app, AppState, Config};
use ledger_server::clock::{ClockMode, ServerClock};
use ledger_server::pii::Pii;
use ledger_server::registry::{prefix, record, Registry, Role};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "ledger-server", about = "Subsidy ledger server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates a new store in DIR (absent or empty) and prints the first city_admin key.
    Init {
        #[arg(long)]
        data: PathBuf,
    },
    /// Serves the API.
    Serve {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// `system` or `manual:RFC3339`.
        #[arg(long, default_value = "system")]
        clock: ClockMode,
        /// Seconds a charge's hold lives before it expires.
        #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..=86_400))]
        hold_ttl: u32,
        /// Where SMS codes go: `outbox` appends JSON lines to DIR/sms-outbox.jsonl.
        #[arg(long, default_value = "outbox")]
        sms: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Init { data } => init(&data),
        Command::Serve {
            data,
            listen,
            clock,
            hold_ttl,
            sms,
        } => serve(data, listen, clock, hold_ttl, sms),
    }
}

fn init(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!(
            "{} is not empty; init only creates a new store (nothing was changed)",
            dir.display()
        );
    }
    // Init stamps no time on the store: a later `serve --clock manual:T` starts at T, not at
    // the wall-clock moment of init.
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
    drop(ledger);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({ "admin_key": key.text }))?;
    out.flush()?;
    Ok(())
}

fn serve(
    data: PathBuf,
    listen: SocketAddr,
    clock_mode: ClockMode,
    hold_ttl_secs: u32,
    sms: String,
) -> anyhow::Result<()> {
    let clock = Arc::new(ServerClock::new(&clock_mode));
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
    let sms: Arc<dyn ledger_server::sms::SmsSender> = match sms.as_str() {
        "outbox" => Arc::new(ledger_server::sms::Outbox::new(&data)),
        other => anyhow::bail!(
            "--sms {other}: only `outbox` is available in this build (SMPP and HTTP gateways: issue 7)"
        ),
    };
    let state = AppState {
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
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "serving");
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
        }
        axum::serve(listener, app(state))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

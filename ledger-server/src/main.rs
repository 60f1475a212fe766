//! `ledger-server`: `init` creates a store and the first city_admin key (optionally loading a
//! fixture folder), `serve` runs the API, `simulate` runs the fixtures' reference year through
//! the real flows (API.md "Commands").

mod simulate;
mod store;

/// See the workspace manifest: glibc's allocator cost ~20 % of the CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ledger_server::app::app;
use ledger_server::clock::ClockMode;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
        /// A fixture folder (districts, streets and zones, policy, catalog, providers) to load
        /// through the setup endpoints.
        #[arg(long)]
        fixtures: Option<PathBuf>,
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
        /// Where SMS codes go: `outbox` appends JSON lines to DIR/sms-outbox.jsonl;
        /// `smpp://USER:PASSWORD@HOST:PORT?source=ADDR` sends through an SMS centre;
        /// `https://URL` POSTs signed JSON (key in env LEDGER_SMS_HMAC_KEY).
        #[arg(long, default_value = "outbox")]
        sms: String,
    },
    /// Creates a new store in DIR and runs the fixtures' reference year through the real
    /// flows; prints the year report JSON as the last line of stdout.
    Simulate {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        fixtures: PathBuf,
        /// Share of the reference year to run, e.g. 0.01 (exact figures at 1).
        #[arg(long, default_value = "1")]
        scale: fixtures::Scale,
        /// Seed of the plan: the same seed gives the same year.
        #[arg(long, default_value_t = 2016)]
        seed: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The simulator sends about a million requests: it logs warnings only, unless RUST_LOG
    // says, and not the warnings of the wrong codes it enters on purpose.
    let default_filter = match cli.command {
        Command::Simulate { .. } => "warn,ledger_server::routes::charges=error",
        Command::Init { .. } | Command::Serve { .. } => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(ledger_server::sms::quiet_pdu_logs(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        ))
        .init();
    match cli.command {
        Command::Init { data, fixtures } => init(&data, fixtures.as_deref()),
        Command::Serve {
            data,
            listen,
            clock,
            hold_ttl,
            sms,
        } => serve(data, listen, &clock, hold_ttl, &sms),
        Command::Simulate {
            data,
            fixtures,
            scale,
            seed,
        } => simulate::run(&simulate::Options {
            data,
            fixtures,
            scale,
            seed,
        }),
    }
}

fn init(dir: &Path, fixtures: Option<&Path>) -> anyhow::Result<()> {
    // Parsed and cross-checked before the store exists, so bad fixtures change nothing.
    let fixtures = fixtures
        .map(|f| fixtures::Fixtures::load(f).with_context(|| format!("fixtures {}", f.display())))
        .transpose()?;
    let admin_key = store::create(dir)?;
    if let Some(fx) = &fixtures {
        simulate::load_into(dir, &admin_key, fx).context("loading the fixtures")?;
    }
    store::finish_init(dir)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({ "admin_key": admin_key }))?;
    out.flush()?;
    Ok(())
}

fn serve(
    data: PathBuf,
    listen: SocketAddr,
    clock_mode: &ClockMode,
    hold_ttl_secs: u32,
    sms: &str,
) -> anyhow::Result<()> {
    let state = store::open(data, clock_mode, hold_ttl_secs, sms)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        ledger_server::sms::start(&state);
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

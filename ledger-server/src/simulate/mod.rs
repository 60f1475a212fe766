//! `ledger-server simulate`: a new store, the real server in process on 127.0.0.1:0, the
//! fixtures loaded through the setup endpoints, and the planned reference year driven over
//! real HTTP (see `year`); then the server is stopped, the store's journal verified in full,
//! the year report printed beside the reference figures (stderr) and, as the last line of
//! stdout, exactly as `GET /v1/reports/years/{YYYY}` returned it.
//!
//! Over HTTP rather than by calling handlers: the point is to exercise what terminals and
//! staff desks exercise (routing, auth, body limits, the SMS outbox, keep-alive
//! connections), and a client on the same runtime costs little next to the ledger's fsyncs.

mod api;
mod outbox;
mod report;
pub mod server;
pub mod setup;
mod year;

pub use api::Api;

use fixtures::{Fixtures, Scale, Targets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger_server::clock::ClockMode;
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Time to live of a hold in the simulation (the server's default).
const HOLD_TTL_SECS: u32 = 600;

pub struct Options {
    pub data: PathBuf,
    pub fixtures: PathBuf,
    pub scale: Scale,
    pub seed: u64,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let fx = Fixtures::load(&options.fixtures)?;
    let targets = Targets::scaled(&fx.reference, options.scale);
    let plan = Arc::new(fixtures::plan(&fx, &targets, options.seed)?);
    eprintln!(
        "simulate: planned {} (scale {}, seed {}): {} elders, {} charges, {} offsets in {:.1?}",
        targets.year,
        options.scale,
        options.seed,
        plan.elders.len(),
        plan.services.len(),
        plan.offsets.len(),
        started.elapsed()
    );
    let admin_key = crate::store::create(&options.data)?;
    crate::store::finish_init(&options.data)?;
    let year = ledger_core::fiscal::Year::new(targets.year).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = crate::store::open(
        options.data.clone(),
        &ClockMode::Manual(year.start()),
        HOLD_TTL_SECS,
        "outbox",
    )?;
    let progress = progress_bar(&plan);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outputs = runtime.block_on(async {
        let running = server::start(state).await?;
        let api = Api::new(running.addr)?;
        let result = async {
            setup::load(&api, &admin_key, &fx).await?;
            let keys = keys(&api, &admin_key, &fx).await?;
            year::run(
                api.clone(),
                keys,
                &fx,
                Arc::clone(&plan),
                &options.data,
                progress.clone(),
            )
            .await
        }
        .await;
        drop(api);
        running.stop().await?;
        result
    })?;
    drop(runtime);
    progress.finish_and_clear();
    let driven = started.elapsed();
    let verified_at = Instant::now();
    let audit = ledger_core::audit::verify_store(&options.data);
    let report: serde_json::Value = serde_json::from_str(&outputs.report_text)?;
    let mismatches = report::print(
        &report,
        &targets,
        &fx.reference,
        options.scale,
        &outputs.tally,
    );
    match &audit {
        Ok(summary) => eprintln!(
            "simulate: ledger verification passed in {:.1?}: {summary}",
            verified_at.elapsed()
        ),
        Err(e) => eprintln!("simulate: ledger verification FAILED: {e}"),
    }
    eprintln!(
        "simulate: done in {:.1?} (the year itself {:.1?})",
        started.elapsed(),
        driven
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", outputs.report_text.trim_end())?;
    out.flush()?;
    audit.map_err(|e| anyhow::anyhow!("ledger verification failed: {e}"))?;
    anyhow::ensure!(
        mismatches == 0,
        "{mismatches} figures differ from the targets"
    );
    Ok(())
}

/// Loads a fixture folder into a new store (`init --fixtures`), through the setup endpoints
/// of an in-process server on 127.0.0.1:0 with the clock at the epoch (so nothing is stamped
/// with the wall-clock time of init).
pub fn load_into(data: &std::path::Path, admin_key: &str, fx: &Fixtures) -> anyhow::Result<()> {
    let state = crate::store::open_initializing(
        data.to_path_buf(),
        &ClockMode::Manual(chrono::DateTime::UNIX_EPOCH),
        HOLD_TTL_SECS,
        "outbox",
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let running = server::start(state).await?;
        let api = Api::new(running.addr)?;
        let result = setup::load(&api, admin_key, fx).await;
        drop(api);
        running.stop().await?;
        result
    })
}

/// Two staff keys per district (registration and its four-eyes approval), the 12349
/// hotline, and one terminal key per provider.
async fn keys(api: &Api, admin: &str, fx: &Fixtures) -> anyhow::Result<year::Keys> {
    let key = |role: &'static str, name: String, district: Option<&str>, provider: Option<&str>| {
        let mut body = json!({"role": role, "name": name});
        if let Some(d) = district {
            body["district"] = json!(d);
        }
        if let Some(p) = provider {
            body["provider"] = json!(p);
        }
        async move {
            let created = api.post("/v1/keys", admin, &body, 201).await?;
            created["key"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("no key in {created}"))
        }
    };
    let (mut registrar, mut approver, mut provider) =
        (HashMap::new(), HashMap::new(), HashMap::new());
    for d in &fx.districts {
        registrar.insert(
            d.code.clone(),
            key(
                "district_staff",
                format!("{}登记员", d.name),
                Some(&d.code),
                None,
            )
            .await?,
        );
        approver.insert(
            d.code.clone(),
            key(
                "district_staff",
                format!("{}审核员", d.name),
                Some(&d.code),
                None,
            )
            .await?,
        );
    }
    for p in &fx.providers {
        provider.insert(
            p.id.clone(),
            key("provider", format!("{}终端", p.name), None, Some(&p.id)).await?,
        );
    }
    Ok(year::Keys {
        admin: admin.to_string(),
        hotline: key("hotline", "12349呼叫中心".into(), None, None).await?,
        registrar,
        approver,
        provider,
    })
}

/// One bar over registrations, charges, offsets and receipt marks; drawn on stderr only when
/// it is a terminal.
fn progress_bar(plan: &fixtures::Plan) -> ProgressBar {
    let services = plan
        .services
        .iter()
        .filter(|s| s.outcome.is_service())
        .count();
    let length = (plan.elders.len() + plan.services.len() + plan.offsets.len() + services) as u64;
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

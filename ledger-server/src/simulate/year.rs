//! Driving a planned year through the real flows over HTTP, one simulated day at a time:
//! the manual clock moves to the day's morning; on a month's first day the previous month is
//! closed (and after a quarter, closed for reconciliation and paid), that month's new elders
//! are registered, approved and carded, and the month's credit is issued; then the day's
//! charges and offsets run on many terminals at once, so the ledger's group commit batches
//! them, while each district bureau marks the previous day's receipts against their paper
//! copies. The clock does not move while a day's charges are in flight, so no hold expires
//! unplanned and a token's code is the one for the day's time.

use super::api::{expect_status, Api, Reply};
use super::outbox::Outbox;
use fixtures::files::DispatchMode;
use fixtures::plan::{Outcome, Plan, PlannedElder, PlannedService};
use fixtures::Fixtures;
use indicatif::ProgressBar;
use ledger_core::fiscal::{format_timestamp, Month, Quarter, Year};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Terminals (provider apps, staff desks) working at once.
pub const TERMINALS: usize = 64;
/// Local time of day (UTC+08:00) at which each simulated day's work happens.
const WORKDAY_HOUR_LOCAL: i64 = 9;
/// One service in this many has its receipt disputed at first, then matched and paid by a
/// second close of the quarter.
const DISPUTED_ONE_IN: usize = 1000;
/// Token parameters of the planned hardware tokens (API.md defaults).
const TOKEN_DIGITS: usize = 6;
const TOKEN_PERIOD_SECS: u64 = 30;
/// Wrong codes that void a hold (API.md: the 5th wrong code).
const ATTEMPTS_MAX: usize = 5;

/// The API keys the simulation works with.
pub struct Keys {
    pub admin: String,
    pub hotline: String,
    /// District → the staff key that registers elders (and refunds).
    pub registrar: HashMap<String, String>,
    /// District → the second staff key that approves (four eyes), reconciles, offsets.
    pub approver: HashMap<String, String>,
    /// Provider → its terminal key.
    pub provider: HashMap<String, String>,
}

/// What happened, for the summary on stderr.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub registered: u64,
    pub tokens: u64,
    pub orders: u64,
    pub confirmed: u64,
    pub wrong_codes: u64,
    pub refunded: u64,
    pub expired: u64,
    pub voided: u64,
    pub offsets: u64,
    pub services: u64,
    pub receipts_marked: u64,
    pub disputed: u64,
    pub payouts: u64,
    pub requests: u64,
    /// Wall time per phase.
    pub phases: BTreeMap<&'static str, Duration>,
}

pub struct Outputs {
    /// `GET /v1/reports/years/{YYYY}`, as the server sent it.
    pub report_text: String,
    pub tally: Tally,
}

struct Sim {
    api: Api,
    keys: Keys,
    plan: Arc<Plan>,
    free_districts: Vec<String>,
    outbox: Outbox,
    /// Plan elder index → the server's elder id, set at registration.
    ids: Vec<OnceLock<String>>,
    /// Unix seconds of the simulated clock (for tokens).
    now: Mutex<i64>,
    /// Holds left to expire today, checked after the clock moves: (charge id, provider key, code).
    expiring: Mutex<Vec<(String, String, String)>>,
    /// Receipts confirmed today, marked by their district's bureau tomorrow.
    unmarked: Mutex<Vec<Unmarked>>,
    /// (district, quarter) → receipts marked disputed, to match once the quarter is closed.
    disputed: Mutex<HashMap<(String, Quarter), Vec<String>>>,
    tally: Mutex<Tally>,
    progress: ProgressBar,
}

/// Runs `work` over `items` on [`TERMINALS`] concurrent tasks; the first error stops the run.
async fn parallel<I, F, Fut>(items: Vec<I>, work: F) -> anyhow::Result<()>
where
    I: Send + 'static,
    F: Fn(I) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let queue = Arc::new(Mutex::new(items.into_iter()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TERMINALS {
        let queue = Arc::clone(&queue);
        let work = work.clone();
        tasks.spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                match next {
                    Some(item) => work(item).await?,
                    None => return anyhow::Ok(()),
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Runs the planned year and returns the year report; `data` is the store's folder (for the
/// SMS outbox).
pub async fn run(
    api: Api,
    keys: Keys,
    fx: &Fixtures,
    plan: Arc<Plan>,
    data: &std::path::Path,
    progress: ProgressBar,
) -> anyhow::Result<Outputs> {
    let sim = Arc::new(Sim {
        api,
        keys,
        free_districts: fx
            .districts
            .iter()
            .filter(|d| d.dispatch_mode == DispatchMode::Free)
            .map(|d| d.code.clone())
            .collect(),
        outbox: Outbox::new(data),
        ids: (0..plan.elders.len()).map(|_| OnceLock::new()).collect(),
        now: Mutex::new(0),
        expiring: Mutex::new(Vec::new()),
        unmarked: Mutex::new(Vec::new()),
        disputed: Mutex::new(HashMap::new()),
        tally: Mutex::new(Tally::default()),
        plan,
        progress,
    });
    let districts: Vec<String> = fx.districts.iter().map(|d| d.code.clone()).collect();
    sim.year(&districts).await?;
    let year = sim.plan.calendar.year;
    let report_text = sim.report_text(year).await?;
    let tally = sim.tally.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Outputs { report_text, tally })
}

impl Sim {
    fn count(&self, f: impl FnOnce(&mut Tally)) {
        f(&mut self.tally.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn timed(&self, phase: &'static str, started: Instant) {
        self.count(|t| *t.phases.entry(phase).or_default() += started.elapsed());
    }

    fn id(&self, elder: usize) -> anyhow::Result<&str> {
        self.ids[elder]
            .get()
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("elder {} has no id: not registered yet", elder + 1))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Reply> {
        self.count(|t| t.requests += 1);
        self.api
            .call(method, path, key, body, idempotency_key)
            .await
    }

    async fn post(
        &self,
        path: &str,
        key: &str,
        body: &Value,
        status: u16,
    ) -> anyhow::Result<Value> {
        let reply = self.call(Method::POST, path, key, Some(body), None).await?;
        expect_status(&reply, status, &Method::POST, path)?;
        Ok(reply.body)
    }

    async fn year(self: &Arc<Self>, districts: &[String]) -> anyhow::Result<()> {
        let calendar = self.plan.calendar;
        let year = Year::new(calendar.year).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut by_day: Vec<Vec<Event>> = (0..calendar.days()).map(|_| Vec::new()).collect();
        for (k, s) in self.plan.services.iter().enumerate() {
            by_day[usize::from(s.day)].push(Event::Charge(k));
        }
        for (k, o) in self.plan.offsets.iter().enumerate() {
            by_day[usize::from(o.day)].push(Event::Offset(k));
        }
        for (day, events) in by_day.into_iter().enumerate() {
            let day = u16::try_from(day).expect("a year has fewer than 65536 days");
            self.day(year, day, events, districts).await?;
        }
        self.set_clock(year.end()).await?;
        self.check_expired().await?;
        let december = Month::new(year, 12).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.month_end(december, districts).await?;
        self.close_year(year).await
    }

    /// One simulated day: the clock, the month's start (previous month closed, new elders,
    /// issuance), yesterday's holds found expired, then the day's charges and offsets on the
    /// terminals while the bureaus mark yesterday's receipts.
    async fn day(
        self: &Arc<Self>,
        year: Year,
        day: u16,
        events: Vec<Event>,
        districts: &[String],
    ) -> anyhow::Result<()> {
        let (month_number, day_of_month) = self.plan.calendar.date(day);
        let month = Month::new(year, month_number).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.set_clock(year.start() + chrono::Duration::days(i64::from(day)))
            .await?;
        self.progress
            .set_message(format!("{year}-{month_number:02}-{day_of_month:02}"));
        if day_of_month == 1 {
            if month_number > 1 {
                self.month_end(month_previous(month), districts).await?;
            }
            self.register(month_number).await?;
            self.issue(month).await?;
        }
        self.check_expired().await?;
        let started = Instant::now();
        let bureaus = self.mark_receipts();
        let sim = Arc::clone(self);
        parallel(events, move |event| {
            let sim = Arc::clone(&sim);
            async move { sim.event(event).await }
        })
        .await?;
        join_all(bureaus).await?;
        self.timed("charges, offsets and receipt marks", started);
        Ok(())
    }

    /// Moves the manual clock to the morning of the day that starts at `midnight`.
    async fn set_clock(&self, midnight: chrono::DateTime<chrono::Utc>) -> anyhow::Result<()> {
        let at = midnight + chrono::Duration::hours(WORKDAY_HOUR_LOCAL);
        self.post(
            "/v1/admin/clock",
            &self.keys.admin,
            &json!({"now": format_timestamp(at)}),
            200,
        )
        .await?;
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = at.timestamp();
        Ok(())
    }

    /// After `month` ended: its close, and after a quarter's last month the reconciliation.
    async fn month_end(self: &Arc<Self>, month: Month, districts: &[String]) -> anyhow::Result<()> {
        let started = Instant::now();
        let report = self
            .post(
                &format!("/v1/periods/{month}/close"),
                &self.keys.admin,
                &json!({}),
                200,
            )
            .await?;
        anyhow::ensure!(report["closed"] == true, "{month} did not close: {report}");
        self.progress.suspend(|| {
            eprintln!(
                "simulate: {month} closed: issued {} to {} elders, consumed {} in {} charges, {} refunded, offsets {}",
                report["issued"]["total"], report["issued"]["count"], report["consumed"]["total"],
                report["consumed"]["count"], report["refunded"]["count"], report["offsets"]["total"]
            );
        });
        self.timed("month closes", started);
        if month.number() % 3 == 0 {
            // The quarter's last receipts are marked, then districts close side by side.
            let started = Instant::now();
            join_all(self.mark_receipts()).await?;
            let mut bureaus = tokio::task::JoinSet::new();
            for district in districts {
                let (sim, district) = (Arc::clone(self), district.clone());
                bureaus.spawn(async move { sim.reconcile(&district, month.quarter()).await });
            }
            while let Some(done) = bureaus.join_next().await {
                done??;
            }
            self.timed("reconciliation", started);
        }
        Ok(())
    }

    // ---- elders -----------------------------------------------------------------------

    async fn register(self: &Arc<Self>, month: u32) -> anyhow::Result<()> {
        let started = Instant::now();
        let joiners: Vec<usize> = (0..self.plan.elders.len())
            .filter(|&i| self.plan.elders[i].join_month == month)
            .collect();
        let sim = Arc::clone(self);
        parallel(joiners, move |i| {
            let sim = Arc::clone(&sim);
            async move { sim.register_one(i).await }
        })
        .await?;
        self.timed("registration", started);
        Ok(())
    }

    /// Registers (first staff key), approves (second key), binds the card and any token.
    async fn register_one(&self, i: usize) -> anyhow::Result<()> {
        let e = &self.plan.elders[i];
        let registrar = &self.keys.registrar[&e.district];
        let mut body = json!({"name": e.name, "gender": e.gender.to_string(), "id_number": e.id_number,
            "district": e.district, "street": e.street, "address": e.address, "categories": e.categories});
        if let Some(phone) = &e.phone {
            body["phone"] = json!(phone);
        }
        if e.categories.contains(&"severely_disabled") {
            body["assessment"] = json!({"standard": "河北省《老年人生活能力评估标准》",
                "result": "重度失能", "assessor": "第三方评估组织（模拟）"});
        }
        let created = self.post("/v1/elders", registrar, &body, 201).await?;
        let id = created["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no id in {created}"))?
            .to_string();
        self.post(
            &format!("/v1/elders/{id}/approve"),
            &self.keys.approver[&e.district],
            &json!({}),
            200,
        )
        .await?;
        self.post(
            &format!("/v1/elders/{id}/cards"),
            registrar,
            &json!({"uid": e.card_uid}),
            201,
        )
        .await?;
        if let Some(t) = &e.token {
            let body = json!({"serial": t.serial, "secret": t.secret_base32, "digits": TOKEN_DIGITS,
                "period": TOKEN_PERIOD_SECS, "algorithm": "SHA1"});
            self.post(&format!("/v1/elders/{id}/tokens"), registrar, &body, 201)
                .await?;
            self.count(|t| t.tokens += 1);
        }
        self.ids[i]
            .set(id)
            .map_err(|_| anyhow::anyhow!("elder {} registered twice", e.number))?;
        self.count(|t| t.registered += 1);
        self.progress.inc(1);
        Ok(())
    }

    async fn issue(&self, month: Month) -> anyhow::Result<()> {
        let started = Instant::now();
        let issued = self
            .post(
                &format!("/v1/periods/{month}/issue"),
                &self.keys.admin,
                &json!({}),
                200,
            )
            .await?;
        let active: Vec<&PlannedElder> = self
            .plan
            .elders
            .iter()
            .filter(|e| e.join_month <= month.number())
            .collect();
        let total = active.iter().try_fold(ledger_core::Fen::ZERO, |sum, e| {
            sum.checked_add(e.monthly_credit)
        });
        anyhow::ensure!(
            issued["elders"] == json!(active.len())
                && issued["total"] == json!(total.map(|t| t.to_string())),
            "issuance of {month} credited {issued}, the plan expects {} elders",
            active.len()
        );
        self.timed("issuance", started);
        Ok(())
    }

    // ---- charges and offsets ----------------------------------------------------------

    async fn event(&self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Charge(k) => self.charge(&self.plan.services[k]).await?,
            Event::Offset(k) => self.offset(k).await?,
        }
        self.progress.inc(1);
        Ok(())
    }

    /// Order (hotline) → accept → agree (provider) → swipe → code → confirm, as planned.
    async fn charge(&self, s: &PlannedService) -> anyhow::Result<()> {
        let e = &self.plan.elders[s.elder];
        let elder_id = self.id(s.elder)?;
        let terminal = &self.keys.provider[&s.provider];
        let mut body =
            json!({"elder_id": elder_id, "item_code": s.item, "note": "12349 热线来电（模拟）"});
        if self.free_districts.contains(&e.district) {
            body["provider_id"] = json!(s.provider);
        }
        let order = self
            .post("/v1/orders", &self.keys.hotline, &body, 201)
            .await?;
        anyhow::ensure!(
            order["provider_id"] == json!(s.provider),
            "order dispatched to the wrong provider: {order}"
        );
        let oid = order["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no order id in {order}"))?;
        self.post(
            &format!("/v1/orders/{oid}/accept"),
            terminal,
            &json!({}),
            200,
        )
        .await?;
        self.post(
            &format!("/v1/orders/{oid}/agree"),
            terminal,
            &json!({"price": s.price.to_string()}),
            200,
        )
        .await?;
        let swipe = json!({"order_id": oid, "card_uid": e.card_uid, "amount": s.amount.to_string(), "staff": "护理员（模拟）"});
        let reply = self
            .call(
                Method::POST,
                "/v1/charges",
                terminal,
                Some(&swipe),
                Some(&format!("swipe-{oid}")),
            )
            .await?;
        expect_status(&reply, 201, &Method::POST, "/v1/charges")?;
        let cid = reply.body["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no charge id in {}", reply.body))?;
        self.count(|t| t.orders += 1);
        let code = self.code(cid, &reply.body["challenge"], e)?;
        let confirm = format!("/v1/charges/{cid}/confirm");
        match s.outcome {
            Outcome::Confirmed | Outcome::ConfirmedAfterWrongCode => {
                if s.outcome == Outcome::ConfirmedAfterWrongCode {
                    self.wrong_code(&confirm, terminal, &code, e, 422, "code_invalid")
                        .await?;
                }
                let receipt = self.confirm(&confirm, terminal, &code).await?;
                let disputed = self.count_service() % DISPUTED_ONE_IN == 0;
                self.unmarked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Unmarked {
                        district: e.district.clone(),
                        quarter: Quarter::of(self.now_utc()),
                        no: receipt,
                        status: if disputed { "disputed" } else { "matched" },
                    });
            }
            Outcome::Refunded => {
                self.confirm(&confirm, terminal, &code).await?;
                let staff = &self.keys.registrar[&e.district];
                let refunded = self
                    .post(
                        &format!("/v1/charges/{cid}/refund"),
                        staff,
                        &json!({"reason": "老人经12349投诉服务未完成（模拟）"}),
                        200,
                    )
                    .await?;
                anyhow::ensure!(
                    refunded["status"] == "refunded",
                    "refund of {cid}: {refunded}"
                );
                self.count(|t| t.refunded += 1);
            }
            Outcome::Expired => {
                self.expiring
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((cid.to_string(), terminal.clone(), code));
            }
            Outcome::TooManyAttempts => {
                for _ in 1..ATTEMPTS_MAX {
                    self.wrong_code(&confirm, terminal, &code, e, 422, "code_invalid")
                        .await?;
                }
                self.wrong_code(&confirm, terminal, &code, e, 409, "too_many_attempts")
                    .await?;
                self.count(|t| t.voided += 1);
            }
        }
        Ok(())
    }

    /// Confirms with the code; returns the receipt number.
    async fn confirm(&self, path: &str, terminal: &str, code: &str) -> anyhow::Result<String> {
        let done = self
            .post(path, terminal, &json!({"code": code}), 200)
            .await?;
        anyhow::ensure!(done["status"] == "confirmed", "{path}: {done}");
        self.count(|t| t.confirmed += 1);
        done["receipt"]["no"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("{path}: no receipt number in {done}"))
    }

    /// Counts a confirmed service and returns how many came before it.
    fn count_service(&self) -> usize {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        tally.services += 1;
        usize::try_from(tally.services - 1).unwrap_or(0)
    }

    fn now_utc(&self) -> chrono::DateTime<chrono::Utc> {
        let secs = *self.now.lock().unwrap_or_else(|p| p.into_inner());
        chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default()
    }

    async fn wrong_code(
        &self,
        path: &str,
        terminal: &str,
        right: &str,
        e: &PlannedElder,
        status: u16,
        code: &str,
    ) -> anyhow::Result<()> {
        let wrong = self.wrong(right, e)?;
        let reply = self
            .call(
                Method::POST,
                path,
                terminal,
                Some(&json!({"code": wrong})),
                None,
            )
            .await?;
        expect_status(&reply, status, &Method::POST, path)?;
        anyhow::ensure!(
            reply.code() == code,
            "{path}: expected {code}, got {}",
            reply.body
        );
        self.count(|t| t.wrong_codes += 1);
        Ok(())
    }

    /// The code the elder reads out: the SMS that reached the elder's phone, or the token.
    fn code(&self, charge_id: &str, challenge: &Value, e: &PlannedElder) -> anyhow::Result<String> {
        match (challenge.as_str(), &e.phone, &e.token) {
            (Some("sms"), Some(phone), _) => {
                let sms = self.outbox.take(charge_id)?;
                anyhow::ensure!(
                    &sms.to == phone,
                    "the SMS of {charge_id} went to another phone"
                );
                Ok(sms.code)
            }
            (Some("token"), _, Some(token)) => totp(&token.secret_base32, self.now_secs()),
            _ => anyhow::bail!(
                "charge {charge_id}: unexpected challenge {challenge} for elder {}",
                e.number
            ),
        }
    }

    fn now_secs(&self) -> u64 {
        u64::try_from(*self.now.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or(0)
    }

    /// A code that is surely wrong: not the SMS code, nor any token code the server accepts
    /// now (±1 step).
    fn wrong(&self, right: &str, e: &PlannedElder) -> anyhow::Result<String> {
        let mut accepted = vec![right.to_string()];
        if let Some(token) = &e.token {
            let now = self.now_secs();
            for at in [
                now.saturating_sub(TOKEN_PERIOD_SECS),
                now,
                now + TOKEN_PERIOD_SECS,
            ] {
                accepted.push(totp(&token.secret_base32, at)?);
            }
        }
        let mut n: u32 = right.parse().unwrap_or(0);
        loop {
            n = (n + 1) % 1_000_000;
            let candidate = format!("{n:06}");
            if !accepted.contains(&candidate) {
                return Ok(candidate);
            }
        }
    }

    /// Holds left to expire: after the clock moved past their time to live, the right code
    /// gets 410.
    async fn check_expired(&self) -> anyhow::Result<()> {
        let due = std::mem::take(&mut *self.expiring.lock().unwrap_or_else(|p| p.into_inner()));
        for (cid, terminal, code) in due {
            let path = format!("/v1/charges/{cid}/confirm");
            let reply = self
                .call(
                    Method::POST,
                    &path,
                    &terminal,
                    Some(&json!({"code": code})),
                    None,
                )
                .await?;
            expect_status(&reply, 410, &Method::POST, &path)?;
            anyhow::ensure!(reply.code() == "charge_expired", "{path}: {}", reply.body);
            self.count(|t| t.expired += 1);
        }
        Ok(())
    }

    async fn offset(&self, k: usize) -> anyhow::Result<()> {
        let o = &self.plan.offsets[k];
        let e = &self.plan.elders[o.elder];
        let month = format!("{}-{:02}", self.plan.calendar.year, o.month);
        let body = json!({"elder_id": self.id(o.elder)?, "provider_id": o.provider, "month": month,
            "amount": o.amount.to_string(), "consent_ref": format!("CONSENT-{:05}-{}{:02}", e.number, self.plan.calendar.year, o.month)});
        self.post("/v1/offsets", &self.keys.approver[&e.district], &body, 201)
            .await?;
        self.count(|t| t.offsets += 1);
        Ok(())
    }

    // ---- reconciliation and closes ----------------------------------------------------

    /// Each district's bureau marks the receipts confirmed since its last round, one after
    /// another (the server serialises marks per district and quarter anyway), beside the
    /// terminals' work. Returns the running bureaus.
    fn mark_receipts(self: &Arc<Self>) -> tokio::task::JoinSet<anyhow::Result<()>> {
        let unmarked =
            std::mem::take(&mut *self.unmarked.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_district: BTreeMap<String, Vec<Unmarked>> = BTreeMap::new();
        for u in unmarked {
            by_district.entry(u.district.clone()).or_default().push(u);
        }
        let mut bureaus = tokio::task::JoinSet::new();
        for (district, receipts) in by_district {
            let sim = Arc::clone(self);
            bureaus.spawn(async move {
                let staff = &sim.keys.approver[&district];
                for u in receipts {
                    let path = format!(
                        "/v1/reconciliations/{district}/{}/receipts/{}",
                        u.quarter, u.no
                    );
                    sim.post(&path, staff, &json!({"status": u.status}), 200)
                        .await?;
                    if u.status == "disputed" {
                        let mut disputed = sim.disputed.lock().unwrap_or_else(|p| p.into_inner());
                        disputed
                            .entry((district.clone(), u.quarter))
                            .or_default()
                            .push(u.no);
                    }
                    sim.count(|t| t.receipts_marked += 1);
                    sim.progress.inc(1);
                }
                anyhow::Ok(())
            });
        }
        bureaus
    }

    /// After the quarter: every receipt is marked; the close pays the matched ones, the
    /// disputed ones are then matched and a second close pays them too; all is paid.
    async fn reconcile(self: &Arc<Self>, district: &str, quarter: Quarter) -> anyhow::Result<()> {
        let staff = self.keys.approver[district].clone();
        let base = format!("/v1/reconciliations/{district}/{quarter}");
        let listing = self.api.get(&base, &staff).await?;
        let mut due = 0i64;
        for provider in listing["providers"].as_array().into_iter().flatten() {
            for r in provider["receipts"].as_array().into_iter().flatten() {
                anyhow::ensure!(
                    r["status"] != "open",
                    "{district} {quarter}: receipt {} was never marked",
                    r["no"]
                );
                due += r["amount"]
                    .as_str()
                    .and_then(|a| a.parse::<ledger_core::Fen>().ok())
                    .map_or(0, |f| f.fen());
            }
        }
        let first = self
            .post(&format!("{base}/close"), &staff, &json!({}), 200)
            .await?;
        let disputed = self
            .disputed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(district.to_string(), quarter))
            .unwrap_or_default();
        for no in &disputed {
            self.post(
                &format!("{base}/receipts/{no}"),
                &staff,
                &json!({"status": "matched"}),
                200,
            )
            .await?;
        }
        let second = self
            .post(&format!("{base}/close"), &staff, &json!({}), 200)
            .await?;
        let paid: i64 = [&first, &second]
            .iter()
            .flat_map(|c| c["payouts"].as_array().into_iter().flatten())
            .map(|p| {
                p["amount"]
                    .as_str()
                    .and_then(|a| a.parse::<ledger_core::Fen>().ok())
                    .map_or(0, |f| f.fen())
            })
            .sum();
        anyhow::ensure!(
            paid == due,
            "{district} {quarter}: paid {paid} fen of {due} fen of receipts"
        );
        let payouts = [&first, &second]
            .iter()
            .map(|c| c["payouts"].as_array().map_or(0, Vec::len))
            .sum::<usize>();
        self.count(|t| {
            t.disputed += disputed.len() as u64;
            t.payouts += payouts as u64;
        });
        Ok(())
    }

    /// A dry run, then the close; both must agree on what is forfeited.
    async fn close_year(&self, year: Year) -> anyhow::Result<()> {
        let started = Instant::now();
        let dry = self
            .post(
                &format!("/v1/years/{year}/close?dry_run=true"),
                &self.keys.admin,
                &json!({}),
                200,
            )
            .await?;
        let closed = self
            .post(
                &format!("/v1/years/{year}/close"),
                &self.keys.admin,
                &json!({}),
                200,
            )
            .await?;
        anyhow::ensure!(
            dry["forfeited_total"] == closed["forfeited_total"]
                && closed["already_closed"] == false,
            "year close: dry run {dry}, close {closed}"
        );
        self.progress
            .suspend(|| eprintln!("simulate: {year} closed: {closed}"));
        self.timed("year close", started);
        Ok(())
    }

    async fn report_text(&self, year: i32) -> anyhow::Result<String> {
        let path = format!("/v1/reports/years/{year}");
        let reply = self.api.get_text(&path, &self.keys.admin).await?;
        Ok(reply)
    }
}

/// A receipt waiting for its district's bureau.
struct Unmarked {
    district: String,
    quarter: Quarter,
    no: String,
    status: &'static str,
}

async fn join_all(mut tasks: tokio::task::JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Charge(usize),
    Offset(usize),
}

fn month_previous(month: Month) -> Month {
    let (year, number) = if month.number() == 1 {
        (month.year().get() - 1, 12)
    } else {
        (month.year().get(), month.number() - 1)
    };
    Year::new(year)
        .and_then(|y| Month::new(y, number))
        .expect("the month before a month of a valid year is valid")
}

/// The RFC 6238 code of a base32 secret at unix time `at` (SHA-1, 6 digits, 30 s).
fn totp(secret_base32: &str, at: u64) -> anyhow::Result<String> {
    let bytes = totp_rs::Secret::Encoded(secret_base32.to_string())
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("token secret: {e:?}"))?;
    let totp = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        TOKEN_DIGITS,
        1,
        TOKEN_PERIOD_SECS,
        bytes,
    );
    Ok(totp.generate(at))
}

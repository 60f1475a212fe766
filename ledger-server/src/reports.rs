//! Month and year reports, computed from the journal (the ground truth) in one pass over the
//! entries of the period, with the registry resolving elders to districts.

use ledger_core::account::AccountId;
use ledger_core::fiscal::{parse_timestamp, Month, Year};
use ledger_core::journal::{Entry, EntryKind};
use ledger_core::Fen;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A count and a sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub total: Fen,
}

impl Tally {
    fn add(&mut self, amount: Fen) {
        self.count += 1;
        self.total = self
            .total
            .checked_add(amount)
            .expect("report totals stay far below the i64 range of fen");
    }
    pub fn json(&self) -> Value {
        json!({"count": self.count, "total": self.total.to_string()})
    }
}

/// The elder id of an elder posting, if any.
fn elder_of(entry: &Entry) -> Option<(&str, Year)> {
    entry.postings.iter().find_map(|p| match &p.account {
        AccountId::Elder { elder_id, year } => Some((elder_id.as_str(), *year)),
        _ => None,
    })
}

fn provider_of(entry: &Entry) -> Option<&str> {
    entry.postings.iter().find_map(|p| match &p.account {
        AccountId::ProviderPayable { provider_id } => Some(provider_id.as_str()),
        _ => None,
    })
}

fn amount_of(entry: &Entry) -> Fen {
    entry
        .postings
        .iter()
        .filter(|p| p.side == ledger_core::journal::Side::Debit)
        .fold(Fen::ZERO, |sum, p| {
            sum.checked_add(p.amount)
                .expect("entry amounts were checked when written")
        })
}

/// Per-district figures of one month.
#[derive(Debug, Default, Clone)]
struct MonthFigures {
    issued: Tally,
    consumed: Tally,
    refunded: Tally,
    offsets: Tally,
}

/// The month report: what was issued, consumed, refunded and offset in the month (by entry
/// time in UTC+08:00), per district and in total.
pub fn month_report(
    month: Month,
    entries: impl IntoIterator<Item = Entry>,
    district_of: &dyn Fn(&str) -> Option<String>,
    closed_at: Option<&str>,
) -> Value {
    let mut total = MonthFigures::default();
    let mut by_district: BTreeMap<String, MonthFigures> = BTreeMap::new();
    for entry in entries {
        let entry = &entry;
        let Ok(at) = parse_timestamp(&entry.at) else {
            continue;
        };
        if !month.contains(at) {
            continue;
        }
        let Some((elder, _)) = elder_of(entry) else {
            continue;
        };
        let district = district_of(elder).unwrap_or_else(|| "unknown".into());
        let amount = amount_of(entry);
        let d = by_district.entry(district).or_default();
        let (slot, slot_d) = match entry.kind {
            EntryKind::Issue => (&mut total.issued, &mut d.issued),
            EntryKind::Charge => (&mut total.consumed, &mut d.consumed),
            EntryKind::Refund => (&mut total.refunded, &mut d.refunded),
            EntryKind::Offset => (&mut total.offsets, &mut d.offsets),
            EntryKind::Forfeit | EntryKind::Payout => continue,
        };
        slot.add(amount);
        slot_d.add(amount);
    }
    let figures = |f: &MonthFigures| {
        json!({"issued": f.issued.json(), "consumed": f.consumed.json(),
            "refunded": f.refunded.json(), "offsets": f.offsets.json()})
    };
    let mut report = figures(&total);
    report["period"] = json!(month.to_string());
    report["closed"] = json!(closed_at.is_some());
    report["closed_at"] = json!(closed_at);
    report["by_district"] = Value::Array(
        by_district
            .iter()
            .map(|(code, f)| {
                let mut v = figures(f);
                v["district"] = json!(code);
                v
            })
            .collect(),
    );
    report
}

#[derive(Debug, Default)]
struct YearGroup {
    services: Tally,
    served: BTreeSet<String>,
    offsets: Tally,
    offset_elders: BTreeSet<String>,
    issued: Fen,
    forfeited: Fen,
}

impl YearGroup {
    fn json(&self) -> Value {
        json!({
            "services": self.services.count,
            "elders_served": self.served.len(),
            "consumption_total": self.services.total.to_string(),
            "offsets": {"elders": self.offset_elders.len(), "total": self.offsets.total.to_string()},
            "issued_total": self.issued.to_string(),
            "forfeited_total": self.forfeited.to_string(),
        })
    }
}

/// The year report of API.md: services are confirmed charges not refunded, consumption their
/// sum; offsets apart; per district and per provider.
pub fn year_report(
    year: Year,
    entries: impl IntoIterator<Item = Entry>,
    district_of: &dyn Fn(&str) -> Option<String>,
    cards_issued: u64,
) -> Value {
    // charge id → (elder, district, provider, amount) for charges of this year still standing.
    let mut charges: HashMap<String, (String, String, String, Fen)> = HashMap::new();
    let mut total = YearGroup::default();
    let mut by_district: BTreeMap<String, YearGroup> = BTreeMap::new();
    let mut by_provider: BTreeMap<String, YearGroup> = BTreeMap::new();
    for entry in entries {
        let entry = &entry;
        let Some((elder, entry_year)) = elder_of(entry) else {
            continue;
        };
        if entry_year != year {
            continue;
        }
        let district = district_of(elder).unwrap_or_else(|| "unknown".into());
        let amount = amount_of(entry);
        let provider = provider_of(entry).unwrap_or("").to_string();
        match entry.kind {
            EntryKind::Charge => {
                let id = entry
                    .refs
                    .get("charge")
                    .cloned()
                    .unwrap_or_else(|| format!("seq-{}", entry.seq));
                charges.insert(id, (elder.to_string(), district, provider, amount));
            }
            EntryKind::Refund => {
                if let Some(id) = entry.refs.get("charge") {
                    charges.remove(id);
                }
            }
            EntryKind::Offset => {
                for g in [
                    &mut total,
                    by_district.entry(district).or_default(),
                    by_provider.entry(provider).or_default(),
                ] {
                    g.offsets.add(amount);
                    g.offset_elders.insert(elder.to_string());
                }
            }
            EntryKind::Issue => {
                for g in [&mut total, by_district.entry(district).or_default()] {
                    g.issued = g.issued.checked_add(amount).expect("bounded totals");
                }
            }
            EntryKind::Forfeit => {
                for g in [&mut total, by_district.entry(district).or_default()] {
                    g.forfeited = g.forfeited.checked_add(amount).expect("bounded totals");
                }
            }
            EntryKind::Payout => {}
        }
    }
    for (elder, district, provider, amount) in charges.values() {
        for g in [
            &mut total,
            by_district.entry(district.clone()).or_default(),
            by_provider.entry(provider.clone()).or_default(),
        ] {
            g.services.add(*amount);
            g.served.insert(elder.clone());
        }
    }
    json!({
        "year": year.to_string(),
        "cards_issued": cards_issued,
        "elders_served": total.served.len(),
        "services": total.services.count,
        "consumption_total": total.services.total.to_string(),
        "offsets": {"elders": total.offset_elders.len(), "total": total.offsets.total.to_string()},
        "issued_total": total.issued.to_string(),
        "forfeited_total": total.forfeited.to_string(),
        "by_district": by_district.iter().map(|(code, g)| {
            let mut v = g.json();
            v["district"] = json!(code);
            v
        }).collect::<Vec<_>>(),
        "by_provider": by_provider.iter().map(|(id, g)| json!({
            "provider_id": id,
            "services": g.services.count,
            "elders_served": g.served.len(),
            "consumption_total": g.services.total.to_string(),
            "offsets": {"elders": g.offset_elders.len(), "total": g.offsets.total.to_string()},
        })).collect::<Vec<_>>(),
    })
}

/// Every durable journal entry in seq order, read a page at a time.
pub fn journal(ledger: &ledger_core::Ledger) -> impl Iterator<Item = Entry> + '_ {
    let size = ledger.tree_size();
    let page = ledger_core::ledger::EXPORT_PAGE_MAX;
    (0..size.div_ceil(page)).flat_map(move |i| {
        let lines = ledger
            .entry_lines(i * page, page)
            .expect("reading the store's own journal; a failure here means the disk is gone");
        lines.into_iter().map(|line| {
            Entry::parse_line(&line).expect("the store's own entries were checked when written")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_entries() -> Vec<Entry> {
        include_str!("../../../shared/vectors/journal.jsonl")
            .lines()
            .map(|l| Entry::parse_line(l.as_bytes()).unwrap())
            .collect()
    }

    fn district_of(elder: &str) -> Option<String> {
        Some(
            if elder == "E00000001" {
                "130102"
            } else {
                "130104"
            }
            .to_string(),
        )
    }

    #[test]
    fn month_report_of_the_vectors() {
        let r = month_report(
            "2026-01".parse().unwrap(),
            vector_entries(),
            &district_of,
            None,
        );
        assert_eq!(r["issued"], json!({"count": 2, "total": "600.00"}));
        assert_eq!(r["consumed"], json!({"count": 2, "total": "158.50"}));
        assert_eq!(r["refunded"], json!({"count": 1, "total": "58.50"}));
        assert_eq!(r["offsets"], json!({"count": 1, "total": "300.00"}));
        assert_eq!(r["by_district"][1]["district"], "130104");
        assert_eq!(r["by_district"][1]["consumed"]["total"], "100.00");
        let feb = month_report(
            "2026-02".parse().unwrap(),
            vector_entries(),
            &district_of,
            Some("x"),
        );
        assert_eq!(feb["issued"]["count"], 0);
        assert_eq!(feb["closed"], true);
    }

    #[test]
    fn year_report_of_the_vectors_counts_unrefunded_charges_only() {
        let r = year_report("2026".parse().unwrap(), vector_entries(), &district_of, 2);
        assert_eq!(r["services"], 1);
        assert_eq!(r["elders_served"], 1);
        assert_eq!(r["consumption_total"], "100.00");
        assert_eq!(r["offsets"], json!({"elders": 1, "total": "300.00"}));
        assert_eq!(r["issued_total"], "600.00");
        assert_eq!(r["forfeited_total"], "200.00");
        assert_eq!(r["cards_issued"], 2);
        assert_eq!(r["by_provider"][0]["provider_id"], "N001");
        let other = year_report("2027".parse().unwrap(), vector_entries(), &district_of, 0);
        assert_eq!(other["issued_total"], "0.00");
    }
}

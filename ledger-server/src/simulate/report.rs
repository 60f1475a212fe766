//! The year report as a table beside the reference figures (stderr), and what the run did.

use super::year::Tally;
use fixtures::files::Reference;
use fixtures::{Scale, Targets};
use ledger_core::Fen;
use serde_json::Value;

/// `1234567` → `1,234,567`.
fn grouped(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn count(n: u64) -> String {
    grouped(&n.to_string())
}

/// An amount with grouped yuan: `47,320,805.40`.
fn yuan(amount: Fen) -> String {
    let text = amount.to_string();
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, "00"));
    format!("{}.{fraction}", grouped(whole))
}

fn amount_of(v: &Value) -> Fen {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(Fen::ZERO)
}

/// Prints the table and returns how many figures differ from the targets.
pub fn print(
    report: &Value,
    targets: &Targets,
    reference: &Reference,
    scale: Scale,
    tally: &Tally,
) -> usize {
    let active = |list: &Value, field: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .filter(|g| {
                g[field].as_u64().unwrap_or(0) > 0
                    || g["offsets"]["elders"].as_u64().unwrap_or(0) > 0
            })
            .count() as u64
    };
    let rows: Vec<(&str, String, String, String)> = vec![
        (
            "cards issued",
            count(report["cards_issued"].as_u64().unwrap_or(0)),
            count(targets.cards_issued),
            count(reference.cards_issued),
        ),
        (
            "elders served",
            count(report["elders_served"].as_u64().unwrap_or(0)),
            count(targets.elders_served),
            count(reference.elders_served),
        ),
        (
            "providers",
            count(active(&report["by_provider"], "services")),
            count(reference.providers),
            count(reference.providers),
        ),
        (
            "districts",
            count(active(&report["by_district"], "services")),
            count(reference.districts),
            count(reference.districts),
        ),
        (
            "services",
            count(report["services"].as_u64().unwrap_or(0)),
            count(targets.services),
            count(reference.services),
        ),
        (
            "consumption (yuan)",
            yuan(amount_of(&report["consumption_total"])),
            yuan(Fen::from_fen(targets.consumption_fen)),
            yuan(reference.consumption_total),
        ),
        (
            "offset elders",
            count(report["offsets"]["elders"].as_u64().unwrap_or(0)),
            count(targets.offset_elders),
            count(reference.offsets.elders),
        ),
        (
            "offsets (yuan)",
            yuan(amount_of(&report["offsets"]["total"])),
            yuan(Fen::from_fen(targets.offsets_fen)),
            yuan(reference.offsets.total),
        ),
    ];
    let mut mismatches = 0;
    eprintln!();
    eprintln!(
        "{} year report (scale {scale}) against the reference (石家庄 {}):",
        report["year"].as_str().unwrap_or("?"),
        reference.year
    );
    eprintln!(
        "  {:<20} {:>16} {:>16} {:>16}",
        "figure", "report", "target", "reference"
    );
    for (name, got, want, reference) in &rows {
        let mark = if got == want { "ok" } else { "DIFFERS" };
        if got != want {
            mismatches += 1;
        }
        eprintln!("  {name:<20} {got:>16} {want:>16} {reference:>16}  {mark}");
    }
    eprintln!(
        "  {:<20} {:>16}",
        "issued (yuan)",
        yuan(amount_of(&report["issued_total"]))
    );
    eprintln!(
        "  {:<20} {:>16}",
        "forfeited (yuan)",
        yuan(amount_of(&report["forfeited_total"]))
    );
    eprintln!(
        "simulate: {} elders registered ({} with tokens), {} orders, {} confirmed, {} wrong codes, {} refunded, {} expired, {} voided, {} offsets, {} receipts marked ({} disputed first), {} payouts, {} requests",
        tally.registered, tally.tokens, tally.orders, tally.confirmed, tally.wrong_codes, tally.refunded, tally.expired,
        tally.voided, tally.offsets, tally.receipts_marked, tally.disputed, tally.payouts, tally.requests
    );
    for (phase, took) in &tally.phases {
        eprintln!("simulate: phase {phase}: {took:.1?}");
    }
    mismatches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_grouped_by_thousands() {
        assert_eq!(count(208_311), "208,311");
        assert_eq!(count(11), "11");
        assert_eq!(yuan(Fen::from_fen(4_732_080_540)), "47,320,805.40");
        assert_eq!(yuan(Fen::from_fen(5)), "0.05");
    }
}

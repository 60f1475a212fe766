//! The drain of delivery reports: records what a receipt says on the charge, as
//! `sms_status: delivered` (or `failed` when the SMS centre gave up, so the terminal resends
//! or switches to the token). It takes the charge's elder and order locks, as every other
//! change to a charge does, so a report that arrives while the send is still being recorded
//! waits for it; and it applies only to the charge's latest SMS (same `sent_at`) while that
//! is `sent` or `queued`. The write is one record, outside any ledger command.

use super::{Delivery, DeliveryReport};
use crate::app::AppState;
use crate::error::ApiError;
use crate::settlement::{elder_lock, order_lock, prefix, record, SmsStatus};

/// Starts the server's sender and, when it has receipts, a task draining them.
pub fn start(state: &AppState) {
    let Some(mut reports) = state.sms.start() else {
        return;
    };
    let state = state.clone();
    tokio::spawn(async move {
        while let Some(report) = reports.recv().await {
            if let Err(e) = apply(&state, &report).await {
                tracing::warn!(charge = %report.charge_id, error = %e.message,
                    "recording an SMS delivery report failed");
            }
        }
    });
}

/// The status a report moves an SMS to from `current`, if any.
fn next_status(current: Option<SmsStatus>, delivery: Delivery) -> Option<SmsStatus> {
    match (current, delivery) {
        (Some(SmsStatus::Queued | SmsStatus::Sent), Delivery::Delivered) => {
            Some(SmsStatus::Delivered)
        }
        (Some(SmsStatus::Queued | SmsStatus::Sent), Delivery::Undelivered) => {
            Some(SmsStatus::Failed)
        }
        (Some(SmsStatus::Delivered | SmsStatus::Failed) | None, _) => None,
    }
}

async fn apply(s: &AppState, report: &DeliveryReport) -> Result<(), ApiError> {
    let Some(charge) = s.settlement.read().charges.get(&report.charge_id).cloned() else {
        return Ok(());
    };
    let _locks = s
        .settlement
        .lock(&[elder_lock(&charge.elder_id), order_lock(&charge.order_id)])
        .await;
    let Some(mut charge) = s.settlement.read().charges.get(&report.charge_id).cloned() else {
        return Ok(());
    };
    if charge.sms_sent_at.last() != Some(&report.sent_at) {
        return Ok(());
    }
    let Some(status) = next_status(charge.sms_status, report.delivery) else {
        return Ok(());
    };
    charge.sms_status = Some(status);
    s.settlement
        .commit(
            Vec::new(),
            vec![record(prefix::CHARGE, &charge.id, &charge)],
        )
        .await?;
    tracing::info!(charge = %charge.id, sms_status = ?status, "SMS delivery report recorded");
    s.settlement
        .write()
        .charges
        .insert(charge.id.clone(), charge);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(current: Option<SmsStatus>, delivery: Delivery, expected: Option<SmsStatus>) {
        assert_eq!(
            next_status(current, delivery),
            expected,
            "{current:?} {delivery:?}"
        );
    }

    #[test]
    fn receipts_move_sent_messages_only() {
        use Delivery::{Delivered, Undelivered};
        use SmsStatus::{Delivered as D, Failed as F, Queued as Q, Sent as S};
        check(Some(S), Delivered, Some(D));
        check(Some(Q), Delivered, Some(D));
        check(Some(S), Undelivered, Some(F));
        check(Some(D), Undelivered, None);
        check(Some(F), Delivered, None);
        check(None, Delivered, None);
    }
}

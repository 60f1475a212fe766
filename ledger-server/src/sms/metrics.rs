//! SMS counters for `GET /v1/health` (`"sms"`): messages the gateway accepted (`sent`),
//! sends that failed or ran past [`super::SEND_TIMEOUT`] (`failed`), delivery receipts by
//! outcome, and send latency (count, total and worst, in milliseconds). [`Metered`] wraps
//! any sender, so every `--sms` choice is counted the same way.

use super::{DeliveryReports, SendFuture, SmsMessage, SmsSender};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The counters as the health endpoint shows them.
#[derive(Debug, Clone, Serialize)]
pub struct SmsMetrics {
    /// `outbox`, `smpp` or `http`.
    pub sender: &'static str,
    pub sent: u64,
    pub failed: u64,
    pub delivered: u64,
    pub undelivered: u64,
    /// Delivery reports dropped because the drain fell behind by more than
    /// [`super::REPORTS_CAPACITY`].
    pub reports_dropped: u64,
    pub latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Sends timed (accepted or failed, timed out included).
    pub count: u64,
    pub total: u64,
    pub max: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    delivered: AtomicU64,
    undelivered: AtomicU64,
    reports_dropped: AtomicU64,
    latency_count: AtomicU64,
    latency_total_ms: AtomicU64,
    latency_max_ms: AtomicU64,
}

impl Counters {
    fn finish(&self, started: Instant, accepted: bool) {
        let outcome = if accepted { &self.sent } else { &self.failed };
        outcome.fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_total_ms.fetch_add(ms, Ordering::Relaxed);
        self.latency_max_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

/// Counts a send as failed if its future is dropped unfinished: the charge request gave up
/// at [`super::SEND_TIMEOUT`].
struct Timing<'a> {
    counters: &'a Counters,
    started: Instant,
    done: bool,
}

impl Timing<'_> {
    fn finish(mut self, accepted: bool) {
        self.done = true;
        self.counters.finish(self.started, accepted);
    }
}

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.counters.finish(self.started, false);
        }
    }
}

/// A sender with counters.
pub struct Metered<S> {
    name: &'static str,
    inner: S,
    counters: Arc<Counters>,
}

impl<S> Metered<S> {
    pub fn new(name: &'static str, inner: S) -> Metered<S> {
        Metered {
            name,
            inner,
            counters: Arc::default(),
        }
    }
}

impl<S: SmsSender> SmsSender for Metered<S> {
    fn send(&self, message: SmsMessage) -> SendFuture<'_> {
        let timing = Timing {
            counters: &self.counters,
            started: Instant::now(),
            done: false,
        };
        let send = self.inner.send(message);
        Box::pin(async move {
            let result = send.await;
            timing.finish(result.is_ok());
            result
        })
    }

    /// Passes the inner sender's reports on, counting them by outcome on the way.
    fn start(&self) -> Option<DeliveryReports> {
        let mut inner = self.inner.start()?;
        let (tx, rx) = tokio::sync::mpsc::channel(super::REPORTS_CAPACITY);
        let counters = Arc::clone(&self.counters);
        tokio::spawn(async move {
            while let Some(report) = inner.recv().await {
                let counter = match report.delivery {
                    super::Delivery::Delivered => &counters.delivered,
                    super::Delivery::Undelivered => &counters.undelivered,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if tx.try_send(report).is_err() {
                    counters.reports_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Some(rx)
    }

    fn metrics(&self) -> Option<SmsMetrics> {
        let c = &self.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(SmsMetrics {
            sender: self.name,
            sent: read(&c.sent),
            failed: read(&c.failed),
            delivered: read(&c.delivered),
            undelivered: read(&c.undelivered),
            reports_dropped: read(&c.reports_dropped),
            latency_ms: Latency {
                count: read(&c.latency_count),
                total: read(&c.latency_total_ms),
                max: read(&c.latency_max_ms),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::SmsError;
    use super::*;

    struct Fixed(Option<std::time::Duration>, bool);

    impl SmsSender for Fixed {
        fn send(&self, _: SmsMessage) -> SendFuture<'_> {
            let (delay, accept) = (self.0, self.1);
            Box::pin(async move {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                if accept {
                    Ok(())
                } else {
                    Err(SmsError::Rejected("no".into()))
                }
            })
        }
    }

    fn message() -> SmsMessage {
        SmsMessage {
            to: "13812345678".into(),
            text: "t".into(),
            charge_id: "C1".into(),
            sent_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn check(sender: &Metered<Fixed>, expected: (u64, u64, u64)) {
        let m = sender.metrics().unwrap();
        assert_eq!((m.sent, m.failed, m.latency_ms.count), expected);
    }

    #[tokio::test]
    async fn counts_accepted_refused_and_abandoned_sends() {
        let ok = Metered::new("t", Fixed(None, true));
        ok.send(message()).await.unwrap();
        check(&ok, (1, 0, 1));
        let refused = Metered::new("t", Fixed(None, false));
        assert!(refused.send(message()).await.is_err());
        check(&refused, (0, 1, 1));
        let slow = Metered::new("t", Fixed(Some(std::time::Duration::from_secs(60)), true));
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(10), slow.send(message())).await;
        assert!(gave_up.is_err());
        check(&slow, (0, 1, 1));
    }
}

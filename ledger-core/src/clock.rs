//! The ledger's sense of time: a `Clock` is passed in, so the core never reads the OS clock
//! and tests (and the server's `--clock manual:T`) control expiry and fiscal periods.

use chrono::{DateTime, Utc};
use std::sync::Mutex;

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// A clock that moves only when told to, and never backwards.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the clock never moves back: it is {now}, asked for {requested}")]
pub struct ClockBackwards {
    pub now: DateTime<Utc>,
    pub requested: DateTime<Utc>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock to `to`; equal is allowed, earlier is refused.
    pub fn set(&self, to: DateTime<Utc>) -> Result<(), ClockBackwards> {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if to < *now {
            return Err(ClockBackwards {
                now: *now,
                requested: to,
            });
        }
        *now = to;
        Ok(())
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_never_moves_back() {
        let t0 = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let clock = ManualClock::new(t0);
        assert!(clock.set(t0 - chrono::Duration::seconds(1)).is_err());
        assert_eq!(clock.now(), t0);
        clock.set(t0).unwrap();
        clock.advance(chrono::Duration::seconds(5));
        assert_eq!(clock.now(), t0 + chrono::Duration::seconds(5));
    }
}

//! The server's clock: the system clock, or `--clock manual:T`, which moves only through
//! `POST /v1/admin/clock` and never back, across restarts too (it resumes at the later of T,
//! the last time set, and the last time the ledger stamped).

use chrono::{DateTime, Utc};
use ledger_core::clock::{Clock, ClockBackwards, ManualClock};

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

pub enum ServerClock {
    System(SystemClock),
    Manual(ManualClock),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockMode {
    System,
    Manual(DateTime<Utc>),
}

impl std::str::FromStr for ClockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<ClockMode, String> {
        if s == "system" {
            return Ok(ClockMode::System);
        }
        let t = s
            .strip_prefix("manual:")
            .ok_or_else(|| format!("--clock must be system or manual:RFC3339, not {s:?}"))?;
        ledger_core::fiscal::parse_timestamp(t)
            .map(ClockMode::Manual)
            .map_err(|e| e.to_string())
    }
}

impl ServerClock {
    pub fn new(mode: &ClockMode) -> ServerClock {
        match mode {
            ClockMode::System => ServerClock::System(SystemClock),
            ClockMode::Manual(t) => ServerClock::Manual(ManualClock::new(*t)),
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, ServerClock::Manual(_))
    }

    /// Moves a manual clock forward; `None` for the system clock.
    pub fn set(&self, to: DateTime<Utc>) -> Option<Result<(), ClockBackwards>> {
        match self {
            ServerClock::System(_) => None,
            ServerClock::Manual(m) => Some(m.set(to)),
        }
    }

    /// Moves a manual clock forward to `to` if it is behind (restart resume).
    pub fn catch_up(&self, to: DateTime<Utc>) {
        if let ServerClock::Manual(m) = self {
            if m.now() < to {
                let _ = m.set(to);
            }
        }
    }
}

impl Clock for ServerClock {
    fn now(&self) -> DateTime<Utc> {
        match self {
            ServerClock::System(c) => c.now(),
            ServerClock::Manual(c) => c.now(),
        }
    }
}

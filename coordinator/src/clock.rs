//! The coordinator's clock: the system clock in production, a hand-moved one in tests, so that
//! timeouts, holdoffs and anything else stamped by the store can be tested without sleeping.

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};

/// Where "now" comes from. Cheap to clone; clones share a manual clock.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<DateTime<Utc>>>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => f.write_str("Clock(system)"),
            Some(_) => write!(f, "Clock(manual at {})", self.now()),
        }
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands at `start` until moved with [`Clock::advance`] or [`Clock::set`].
    pub fn manual(start: DateTime<Utc>) -> Clock {
        Clock {
            manual: Some(Arc::new(Mutex::new(start))),
        }
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            None => Utc::now(),
            Some(t) => match t.lock() {
                Ok(t) => *t,
                Err(p) => *p.into_inner(),
            },
        }
    }

    /// Moves a manual clock forward by `d`; does nothing to the system clock.
    pub fn advance(&self, d: chrono::Duration) {
        if let Some(t) = &self.manual {
            let mut g = match t.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            *g += d;
        }
    }

    /// Sets a manual clock to `to`; does nothing to the system clock.
    pub fn set(&self, to: DateTime<Utc>) {
        if let Some(t) = &self.manual {
            let mut g = match t.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            *g = to;
        }
    }
}

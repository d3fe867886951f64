//! The node's clock: Unix-epoch microseconds that never go backwards.
//!
//! Machines assert that time is monotonic, and stored expiry times must mean the same after a
//! restart. So: the wall clock read once at start, plus a monotonic `Instant` since then. An
//! NTP step while running shifts nothing until the next restart.

use pbx_actors::Timestamp;
use pbx_actors::time::Clock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy)]
pub struct SystemClock {
    base_unix_us: u64,
    start: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let base = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        SystemClock { base_unix_us: base, start: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.base_unix_us + self.start.elapsed().as_micros() as u64)
    }
}

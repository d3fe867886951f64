//! Time as the machines see it: a number handed to them, never read from a clock.
//!
//! Every sans-IO machine takes `now: Timestamp` as an argument and reports when it next
//! wants to be called with `poll_timeout`. The node feeds the system clock in; the simulator
//! feeds a virtual one. Nothing here reads a clock.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// Microseconds since an origin chosen by whoever drives the machine (the node uses the Unix
/// epoch, so stored expiry times survive a restart). Only ever moves forward for one machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub const fn from_secs(secs: u64) -> Timestamp {
        Timestamp(secs * 1_000_000)
    }

    pub const fn from_millis(millis: u64) -> Timestamp {
        Timestamp(millis * 1_000)
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Whole seconds, rounded down.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000
    }

    /// The time `d` after this one, saturating instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_micros().min(u64::MAX as u128) as u64))
    }

    /// The time `d` before this one, saturating at the origin.
    pub fn saturating_sub(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(d.as_micros().min(u64::MAX as u128) as u64))
    }

    /// How long from `earlier` to this time; zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// Where a shell gets `now` from: a monotonic wall clock in the node, a virtual one in tests
/// and the simulator. Only actor shells hold one; machines are handed its readings.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        self.saturating_add(d)
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: Duration) -> Timestamp {
        self.saturating_sub(d)
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;
    fn sub(self, earlier: Timestamp) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arithmetic saturates instead of wrapping, so a far-future timer cannot wrap to the past.
    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp(u64::MAX - 1);
        assert_eq!(t + Duration::from_secs(10), Timestamp(u64::MAX));
        assert_eq!(Timestamp(5) - Timestamp(9), Duration::ZERO);
        assert_eq!(Timestamp::from_secs(3) - Timestamp::from_millis(500), Duration::from_millis(2500));
    }
}

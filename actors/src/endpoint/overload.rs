//! Overload detection by queueing delay, the idea of CoDel (RFC 8289) applied to SIP requests:
//! what matters is not how long the queue in front of a shard is but how long messages wait
//! in it, and not a burst (which drains) but a *standing* queue, one that never drains. The
//! endpoint shard tells [`StandingQueue`] how long each message it takes waited; while a
//! standing queue is detected it answers new work (a REGISTER or INVITE without credentials)
//! 503 with Retry-After, so the work in progress — the second half of digest flows, ACKs,
//! BYEs, responses — completes and the queue drains, instead of every call taking longer,
//! holding its RTP ports longer, and the phones' retransmissions feeding the queue until
//! nothing completes at all.
//!
//! Sans-IO: time and waits come in as arguments.

use crate::Timestamp;
use std::time::Duration;

/// A wait above this, for a whole [`INTERVAL_MS`], is a standing queue. RFC 8289's 5 ms suits
/// packets; a SIP shard on a busy two-core machine is descheduled for tens of milliseconds
/// at a time without being overloaded (20 ms shed calls at 2,000/s, under half of capacity,
/// while a build ran beside it), and a phone notices nothing under T1.
pub const TARGET_MS: u64 = 50;
/// How long the wait must stay above [`TARGET_MS`] before new work is shed: longer than a
/// burst or a descheduled spell takes to drain, shorter than SIP's T1 (500 ms), after which
/// the phones retransmit.
pub const INTERVAL_MS: u64 = 200;

/// The shortest wait seen in the current interval, and whether the last full interval had
/// none at or under the target.
#[derive(Debug, Default)]
pub struct StandingQueue {
    interval_end: Option<Timestamp>,
    min_wait: Duration,
    standing: bool,
}

impl StandingQueue {
    /// A message that waited `waited` is taken at `now`.
    pub fn observe(&mut self, now: Timestamp, waited: Duration) {
        let target = Duration::from_millis(TARGET_MS);
        match self.interval_end {
            Some(end) if now < end => self.min_wait = self.min_wait.min(waited),
            _ => {
                // An interval ended (or none began): its shortest wait decides; a quiet spell
                // with no message at all ends it too.
                self.standing = self.interval_end.is_some_and(|end| now < end + Duration::from_millis(INTERVAL_MS))
                    && self.min_wait > target;
                self.interval_end = Some(now + Duration::from_millis(INTERVAL_MS));
                self.min_wait = waited;
            }
        }
        // One message that waited no longer than the target: the queue drained.
        if waited <= target {
            self.standing = false;
        }
    }

    /// Whether the queue stood above the target for a whole interval and has not drained since.
    pub fn standing(&self) -> bool {
        self.standing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A burst that drains within the interval is not a standing queue; waits above the target
    /// for a whole interval are, until one message waits no longer than the target.
    #[test]
    fn only_a_queue_that_stands_for_an_interval_counts() {
        let mut q = StandingQueue::default();
        let t0 = Timestamp::from_secs(100);
        let step = INTERVAL_MS / 10;
        // A burst: long waits, then the queue drains inside the interval.
        let burst = [0, 2 * TARGET_MS, 2 * TARGET_MS, TARGET_MS + 1, TARGET_MS / 2, 0];
        for (i, wait) in burst.into_iter().enumerate() {
            q.observe(t0 + ms(i as u64 * step), ms(wait));
        }
        q.observe(t0 + ms(INTERVAL_MS + 1), ms(TARGET_MS + 10));
        assert!(!q.standing(), "the burst drained");
        // Waits above the target through a whole interval.
        let start = t0 + ms(INTERVAL_MS + 1);
        for i in 1..=20 {
            q.observe(start + ms(i * step), ms(TARGET_MS + 5 + i));
        }
        assert!(q.standing(), "a standing queue after an interval above the target");
        let later = start + ms(21 * step);
        q.observe(later, ms(TARGET_MS + 50));
        assert!(q.standing());
        q.observe(later + ms(1), ms(TARGET_MS));
        assert!(!q.standing(), "one message at the target: drained");
        // A long quiet spell ends what was measured before it.
        for i in 0..25 {
            q.observe(later + ms(2 + i * step), ms(TARGET_MS + 40));
        }
        assert!(q.standing());
        q.observe(later + ms(100 * INTERVAL_MS), ms(TARGET_MS + 40));
        assert!(!q.standing(), "nothing for a long while: the old interval says nothing of now");
    }
}

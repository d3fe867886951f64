//! Limits on failed voucher redemptions, so codes cannot be guessed online: a token bucket per
//! source network and one per serial, each charged one token per failed redeem.
//!
//! Each bucket is kept as GCRA keeps it: the one time at which it is full again (`full_at`).
//! A failure moves it `refill` later (from now at the earliest); a redeem is let in while one
//! more failure would keep `full_at` within `burst × refill` of now. So a client may fail
//! `burst` times at once, then once per `refill`, and a refused client learns exactly when to
//! come back. A bucket that is full again is forgotten, so the tables hold only clients that
//! failed recently; they are bounded all the same (see [`SOURCES_TRACKED_MAX`]).

use crate::Timestamp;
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// Source networks whose recent failures are remembered at most (about 100 bytes each).
pub const SOURCES_TRACKED_MAX: usize = 100_000;
/// Serials whose recent failures are remembered at most. Only serials the desk knows are
/// charged, so this bounds them only if the vendor sells more than this.
pub const SERIALS_TRACKED_MAX: usize = 100_000;

/// How many failed redeems are let through, per source network and per serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedeemLimits {
    /// Failures a source network (an IPv4 address, an IPv6 /64) may make in a row.
    pub source_burst: u32,
    /// Then one more per this many seconds.
    pub source_refill_s: u64,
    /// Failures naming one serial, from wherever, in a row: what a guessing campaign spread
    /// over many sources still meets.
    pub serial_burst: u32,
    /// Then one more per this many seconds.
    pub serial_refill_s: u64,
}

impl Default for RedeemLimits {
    /// A person mistyping a code has ten tries, then one a minute. A serial takes twenty
    /// failures, then one per five minutes: at most 308 guesses a day against one serial,
    /// whatever the number of sources.
    fn default() -> RedeemLimits {
        RedeemLimits { source_burst: 10, source_refill_s: 60, serial_burst: 20, serial_refill_s: 300 }
    }
}

/// Which limit refused a redeem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitedBy {
    Source,
    Serial,
}

impl LimitedBy {
    pub fn label(self) -> &'static str {
        match self {
            LimitedBy::Source => "source",
            LimitedBy::Serial => "serial",
        }
    }
}

/// The key a source is limited by: an IPv4 address, or the /64 of an IPv6 one (a single
/// subscriber usually holds a whole /64).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    full_at: Timestamp,
    /// Refused since it last let a redeem in (so the shell logs a refusal once, not per request).
    limited: bool,
}

/// One table of buckets, bounded.
#[derive(Debug)]
pub(super) struct Buckets<K> {
    by_key: HashMap<K, Bucket>,
    /// The same buckets by the time they are full again: the next to forget first.
    by_full_at: BTreeSet<(Timestamp, K)>,
    max: usize,
}

impl<K: Clone + Eq + Hash + Ord> Buckets<K> {
    pub(super) fn new(max: usize) -> Buckets<K> {
        Buckets { by_key: HashMap::new(), by_full_at: BTreeSet::new(), max }
    }

    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// `Ok` if one more failure of `key` fits now; else how long until it does, and whether
    /// this is the first refusal since it last fitted.
    pub(super) fn admit(
        &mut self,
        key: &K,
        now: Timestamp,
        burst: u32,
        refill: Duration,
    ) -> Result<(), (Duration, bool)> {
        let Some(bucket) = self.by_key.get_mut(key) else { return Ok(()) };
        let allowance = refill.saturating_mul(burst.saturating_sub(1));
        let due = bucket.full_at.saturating_since(now);
        if due <= allowance {
            bucket.limited = false;
            return Ok(());
        }
        let first = !bucket.limited;
        bucket.limited = true;
        Err((due - allowance, first))
    }

    /// Charges one failure of `key`.
    pub(super) fn charge(&mut self, key: &K, now: Timestamp, refill: Duration) {
        self.forget_full(now);
        let full_at = match self.by_key.get(key) {
            Some(b) => {
                self.by_full_at.remove(&(b.full_at, key.clone()));
                b.full_at.max(now).saturating_add(refill)
            }
            None => {
                if self.by_key.len() >= self.max {
                    // Full of clients that failed recently: forget the one nearest to full.
                    if let Some((_, oldest)) = self.by_full_at.pop_first() {
                        self.by_key.remove(&oldest);
                    }
                }
                now.saturating_add(refill)
            }
        };
        let limited = self.by_key.get(key).is_some_and(|b| b.limited);
        self.by_key.insert(key.clone(), Bucket { full_at, limited });
        self.by_full_at.insert((full_at, key.clone()));
    }

    /// Forgets the buckets that are full again: they limit nothing.
    fn forget_full(&mut self, now: Timestamp) {
        while let Some((full_at, key)) = self.by_full_at.first().cloned() {
            if full_at > now {
                break;
            }
            self.by_full_at.pop_first();
            self.by_key.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_secs(1_000_000);

    fn at(s: u64) -> Timestamp {
        Timestamp::from_secs(T0.as_secs() + s)
    }

    /// `burst` failures at once, then one per refill; the wait is exact, the first refusal
    /// is flagged once.
    #[test]
    fn a_bucket_lets_a_burst_through_then_one_per_refill() {
        let mut b = Buckets::new(10);
        let refill = Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.admit(&"k", T0, 3, refill), Ok(()));
            b.charge(&"k", T0, refill);
        }
        assert_eq!(b.admit(&"k", T0, 3, refill), Err((refill, true)));
        assert_eq!(b.admit(&"k", at(59), 3, refill), Err((Duration::from_secs(1), false)));
        assert_eq!(b.admit(&"k", at(60), 3, refill), Ok(()));
        b.charge(&"k", at(60), refill);
        assert_eq!(b.admit(&"k", at(60), 3, refill), Err((refill, true)));
        // Another key is not touched.
        assert_eq!(b.admit(&"other", T0, 3, refill), Ok(()));
        // Full again after burst × refill: forgotten at the next charge.
        b.charge(&"other", at(240), refill);
        assert_eq!(b.len(), 1);
    }

    /// The table never holds more than its bound; the bucket nearest to full goes first.
    #[test]
    fn the_table_is_bounded() {
        let mut b = Buckets::new(3);
        let refill = Duration::from_secs(60);
        b.charge(&1, T0, refill);
        for _ in 0..5 {
            b.charge(&2, T0, refill);
        }
        b.charge(&3, T0, refill);
        b.charge(&3, T0, refill);
        b.charge(&4, T0, refill);
        assert_eq!(b.len(), 3);
        assert_eq!(b.admit(&1, T0, 1, refill), Ok(()), "key 1 was nearest to full");
        assert!(b.admit(&2, T0, 1, refill).is_err());
        assert!(b.admit(&4, T0, 1, refill).is_err());
    }

    /// IPv6 sources are grouped by /64, IPv4 (and mapped IPv4) kept whole.
    #[test]
    fn sources_group_by_slash_64() {
        let key = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }
}

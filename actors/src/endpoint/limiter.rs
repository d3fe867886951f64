//! Per-source admission of new SIP transactions: one token bucket per source, the way
//! Kamailio's `pike` module and Asterisk's fail2ban recipes cut one address's flood down
//! before it costs a transaction, a registrar round trip or a challenge.
//!
//! A source is an IPv4 address, or an IPv6 /64 (one customer's prefix: an attacker holding a
//! /64 would otherwise have 2^64 fresh sources). Each bucket holds up to `burst` tokens and
//! refills at `rate_per_s`; a new request takes one token, and with none left it is dropped
//! and counted — never answered, which would make pbx the amplifier. Retransmissions of a
//! transaction already filed and ACKs are not counted here (the transaction layer absorbs
//! them), so a phone whose answer was lost is not punished for resending.
//!
//! State is bounded: at most [`SOURCES_TRACKED_MAX`] buckets. A bucket idle long enough to be
//! full again holds nothing a decision needs and is forgotten first; when every tracked source
//! is busy (a flood from more sources than that, which spoofing makes cheap), new sources share
//! one overflow bucket of `burst × OVERFLOW_SHARE` — a spoofed flood from everywhere is bounded
//! as a whole instead of per address.
//!
//! A node's endpoint shards (`super::shard`) share one limiter ([`SharedLimiter`], behind a
//! lock taken once per new request): a source is bounded as a whole, whichever shards its
//! Call-IDs land on, exactly as with one endpoint.
//!
//! Sans-IO: time comes in as `now` (each shard passes its own; a bucket never refills
//! backwards when two shards' clocks read a little apart).

use crate::Timestamp;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// One limiter for all the endpoint shards of a node.
pub type SharedLimiter = Arc<Mutex<SourceLimiter>>;

/// May `ip` start a new transaction at `now`, against the shared `limiter`?
pub fn admit(limiter: &SharedLimiter, now: Timestamp, ip: IpAddr) -> bool {
    // A shard that panicked mid-admit left buckets that are still consistent enough to bound.
    limiter.lock().unwrap_or_else(PoisonError::into_inner).admit(now, ip)
}

/// Sources with a bucket at once.
pub const SOURCES_TRACKED_MAX: usize = 65_536;
/// The overflow bucket (sources beyond [`SOURCES_TRACKED_MAX`]) is this many sources' worth.
pub const OVERFLOW_SHARE: u64 = 64;
/// Micro-tokens per token: integer arithmetic with sub-token refill.
const UNIT: u64 = 1_000_000;

/// The bucket's size and refill; `rate_per_s == 0` turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceLimit {
    /// New transactions per second one source may start, on average.
    pub rate_per_s: u32,
    /// How many it may start at once (a burst after silence): an office of phones behind one
    /// NAT address re-registering after a power cut, each REGISTER twice (401, then with
    /// credentials), needs about twice its phones.
    pub burst: u32,
}

impl Default for SourceLimit {
    /// 100 new transactions per second, bursts of 400: a 200-phone office behind one address
    /// re-registers at once; a phone in a call makes a few per minute. Kamailio's pike
    /// examples allow 16 per 2 s per source; we are more generous because a whole office shares
    /// one NAT address here, and cheaper answers (stateless challenges) do the rest.
    fn default() -> Self {
        SourceLimit { rate_per_s: 100, burst: 400 }
    }
}

/// Where a request came from, as the limiter counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    V4(u32),
    /// The upper 64 bits of the address.
    V6(u64),
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => SourceKey::V6((u128::from(v6) >> 64) as u64),
        }
    }

    /// The address (IPv4) or the /64's first address (IPv6), for logs.
    pub fn address(self) -> IpAddr {
        match self {
            SourceKey::V4(v4) => IpAddr::V4(v4.into()),
            SourceKey::V6(prefix) => IpAddr::V6(Ipv6Addr::from(u128::from(prefix) << 64)),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Micro-tokens at `at`.
    tokens: u64,
    at: Timestamp,
}

impl Bucket {
    fn refilled(self, now: Timestamp, rate_per_s: u64, capacity: u64) -> u64 {
        let elapsed_us = now.as_micros().saturating_sub(self.at.as_micros());
        // rate_per_s tokens per 10^6 µs: elapsed_us × rate_per_s micro-tokens.
        self.tokens.saturating_add(elapsed_us.saturating_mul(rate_per_s)).min(capacity)
    }
}

/// The token buckets. See the module doc.
#[derive(Debug)]
pub struct SourceLimiter {
    limit: SourceLimit,
    buckets: HashMap<SourceKey, Bucket>,
    /// (last use, source), oldest first: the candidates for forgetting.
    by_use: BTreeSet<(Timestamp, SourceKey)>,
    overflow: Bucket,
}

impl SourceLimiter {
    pub fn new(limit: SourceLimit) -> SourceLimiter {
        let overflow = Bucket { tokens: u64::from(limit.burst) * UNIT * OVERFLOW_SHARE, at: Timestamp::ZERO };
        SourceLimiter { limit, buckets: HashMap::new(), by_use: BTreeSet::new(), overflow }
    }

    /// A new limiter, to share among a node's endpoint shards.
    pub fn shared(limit: SourceLimit) -> SharedLimiter {
        Arc::new(Mutex::new(SourceLimiter::new(limit)))
    }

    pub fn limit(&self) -> SourceLimit {
        self.limit
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// May `ip` start a new transaction at `now`? Takes a token when it may.
    pub fn admit(&mut self, now: Timestamp, ip: IpAddr) -> bool {
        if self.limit.rate_per_s == 0 {
            return true;
        }
        let rate = u64::from(self.limit.rate_per_s);
        let capacity = u64::from(self.limit.burst.max(1)) * UNIT;
        let key = SourceKey::of(ip);
        let bucket = match self.buckets.get(&key) {
            Some(b) => *b,
            None => {
                if self.buckets.len() >= SOURCES_TRACKED_MAX && !self.forget_one_idle(now, rate, capacity) {
                    return self.admit_overflow(now, rate, capacity);
                }
                Bucket { tokens: capacity, at: now }
            }
        };
        let tokens = bucket.refilled(now, rate, capacity);
        let admitted = tokens >= UNIT;
        // Never backwards: another shard may have stamped the bucket a little later.
        let at = now.max(bucket.at);
        let updated = Bucket { tokens: if admitted { tokens - UNIT } else { tokens }, at };
        if let Some(old) = self.buckets.insert(key, updated) {
            self.by_use.remove(&(old.at, key));
        }
        self.by_use.insert((at, key));
        debug_assert_eq!(self.buckets.len(), self.by_use.len());
        assert!(self.buckets.len() <= SOURCES_TRACKED_MAX);
        admitted
    }

    /// Forgets the least recently used source if its bucket is full again by now (it would
    /// decide nothing differently from a fresh one). False when even that one is busy.
    fn forget_one_idle(&mut self, now: Timestamp, rate: u64, capacity: u64) -> bool {
        let Some(&(at, key)) = self.by_use.first() else { return false };
        let bucket = self.buckets[&key];
        if bucket.refilled(now, rate, capacity) < capacity {
            return false;
        }
        self.by_use.remove(&(at, key));
        self.buckets.remove(&key);
        true
    }

    fn admit_overflow(&mut self, now: Timestamp, rate: u64, capacity: u64) -> bool {
        let (rate, capacity) = (rate * OVERFLOW_SHARE, capacity * OVERFLOW_SHARE);
        let tokens = self.overflow.refilled(now, rate, capacity);
        let admitted = tokens >= UNIT;
        self.overflow = Bucket { tokens: if admitted { tokens - UNIT } else { tokens }, at: now.max(self.overflow.at) };
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A source gets its burst at once, then the rate; another source is not affected.
    #[test]
    fn burst_then_rate_per_source() {
        let mut l = SourceLimiter::new(SourceLimit { rate_per_s: 10, burst: 5 });
        let t0 = Timestamp::from_secs(100);
        let admitted = (0..20).filter(|_| l.admit(t0, ip("192.0.2.1"))).count();
        assert_eq!(admitted, 5);
        assert!(l.admit(t0, ip("192.0.2.2")), "another source has its own bucket");
        // 10/s: one more token every 100 ms.
        assert!(!l.admit(t0 + Duration::from_millis(99), ip("192.0.2.1")));
        assert!(l.admit(t0 + Duration::from_millis(100), ip("192.0.2.1")));
        assert!(!l.admit(t0 + Duration::from_millis(150), ip("192.0.2.1")));
        // After a long silence, a full burst again — never more.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| l.admit(later, ip("192.0.2.1"))).count(), 5);
    }

    /// IPv6 sources are counted per /64; an IPv4-mapped address is its IPv4 address.
    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_v4_is_v4() {
        let mut l = SourceLimiter::new(SourceLimit { rate_per_s: 1, burst: 2 });
        let t = Timestamp::from_secs(1);
        assert!(l.admit(t, ip("2001:db8:1:2::1")));
        assert!(l.admit(t, ip("2001:db8:1:2:ffff::9")));
        assert!(!l.admit(t, ip("2001:db8:1:2:aaaa::1")), "same /64: same bucket");
        assert!(l.admit(t, ip("2001:db8:1:3::1")), "another /64");
        assert!(l.admit(t, ip("::ffff:192.0.2.7")));
        assert!(l.admit(t, ip("192.0.2.7")));
        assert!(!l.admit(t, ip("192.0.2.7")), "mapped and plain are one source");
        assert_eq!(SourceKey::of(ip("2001:db8:1:2::1")).address(), ip("2001:db8:1:2::"));
    }

    /// Off means off.
    #[test]
    fn rate_zero_admits_everything() {
        let mut l = SourceLimiter::new(SourceLimit { rate_per_s: 0, burst: 0 });
        assert!((0..10_000).all(|_| l.admit(Timestamp::ZERO, ip("192.0.2.1"))));
        assert_eq!(l.tracked(), 0);
    }

    /// More sources than the table holds: idle ones are forgotten, busy ones are kept, and the
    /// excess shares one overflow bucket, so the table never grows past its bound.
    #[test]
    fn table_is_bounded_and_busy_sources_keep_their_buckets() {
        let mut l = SourceLimiter::new(SourceLimit { rate_per_s: 1, burst: 1 });
        let t = Timestamp::from_secs(10);
        // A busy source: its one token spent.
        assert!(l.admit(t, ip("198.51.100.1")));
        for n in 0..SOURCES_TRACKED_MAX as u32 - 1 {
            l.admit(t, IpAddr::V4((0x0a00_0000 + n).into()));
        }
        assert_eq!(l.tracked(), SOURCES_TRACKED_MAX);
        assert!(!l.admit(t, ip("198.51.100.1")), "still limited: its bucket was not dropped");
        // New sources now share the overflow bucket: 64 of them get through, then none.
        let fresh = (0..1000u32).filter(|n| l.admit(t, IpAddr::V4((0x0b00_0000 + n).into()))).count();
        assert_eq!(fresh as u64, OVERFLOW_SHARE);
        assert_eq!(l.tracked(), SOURCES_TRACKED_MAX);
        // Two seconds later every bucket is full again: a new source takes an idle one's place.
        let later = t + Duration::from_secs(2);
        assert!(l.admit(later, ip("203.0.113.5")));
        assert_eq!(l.tracked(), SOURCES_TRACKED_MAX);
    }
}

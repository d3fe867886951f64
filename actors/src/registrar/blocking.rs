//! Slowing password guessing without letting anyone lock out a phone that is not guessing
//! (issue 14). Sans-IO like the machine that owns it: time comes in as `now`.
//!
//! Who can make a failure count. A digest answer is only weighed when its nonce was minted
//! for the address it claims to come from (the nonce's tag covers that address, see
//! `digest.rs`), so its sender could read our challenge there: a spoofed UDP REGISTER "from"
//! an office's NAT address carries a nonce minted for some other address and is re-challenged
//! without counting against anybody. What is left is a real guesser: on its own address, or on
//! a shared one (the stranger behind the office NAT).
//!
//! What counts, within `auth_failure_window_s`:
//! - per (source, user): `auth_failures_max` failures block that user's authentication from
//!   that source for `block_s` (answered 403);
//! - per user, from all sources: `user_auth_failures_max` failures lock the user for `block_s`
//!   (a guesser spread over many addresses is slowed too). Only extensions that exist are
//!   counted; a locked user's answers get the very 401 a wrong password gets, so the lock
//!   tells nobody that the user exists, nor whether a guess made during it was right.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host or one site gets a /64, RFC 6177).
//!
//! Who is spared: an address (IP and port) that a user authenticated from in the last
//! `max_expires_s`, or that holds one of the user's live bindings, is trusted for that user:
//! no block and no lock stops it. A registered phone keeps registering and calling while a
//! stranger behind the same NAT (same IP, another port) guesses its password. The trade-off:
//! a phone that is *not* registered yet (just booted, or its NAT mapping moved to a new port)
//! on a blocked (source, user) or a locked user waits until the block ends (`block_s`).
//!
//! Bounds: the (source, user) table holds [`AUTH_FAILURE_PAIRS_MAX`] records. A record is
//! dropped only once idle (no failure in the window, no block), never to make room, so filling
//! the table cannot lift anybody's block or reset anybody's count. A failure that finds the
//! table full of active records is counted against its wider prefix (IPv4 /24, IPv6 /48) in a
//! second table of [`AUTH_FAILURE_PREFIXES_MAX`]; a blocked prefix refuses every untrusted
//! answer from it. If that is full too, the failure is counted only against its user (that
//! table cannot overflow: one record per extension) and reported, so the per-user lock still
//! bounds guessing. The trust table holds [`TRUSTED_SOURCES_MAX`] entries; only a correct
//! answer creates one, so strangers cannot fill it.

use super::machine::RegistrarEvent;
use crate::time::Timestamp;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// (source, user) pairs whose recent failures or block we remember.
pub const AUTH_FAILURE_PAIRS_MAX: usize = 10_000;
/// Prefixes (/24, /48) that failures are counted against once the pair table is full.
pub const AUTH_FAILURE_PREFIXES_MAX: usize = 1_000;
/// (address, user) pairs that authenticated recently, spared by blocks.
pub const TRUSTED_SOURCES_MAX: usize = 20_000;
/// Highest `auth_failures_max` and `user_auth_failures_max`: a record keeps one time per
/// failure in the window, so this bounds its size.
pub const AUTH_FAILURES_LIMIT_MAX: u32 = 100;
/// IPv6 sources are grouped by this prefix: one host or site.
pub const IPV6_SOURCE_PREFIX_LEN: u8 = 64;
/// Failures are aggregated by these prefixes when the pair table is full.
pub const IPV4_AGGREGATE_PREFIX_LEN: u8 = 24;
pub const IPV6_AGGREGATE_PREFIX_LEN: u8 = 48;

/// The source a failure counts against: an IPv4 address, or the /64 of an IPv6 one.
pub fn source_group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, IPV6_SOURCE_PREFIX_LEN)),
    }
}

/// The wider prefix failures are aggregated under when the pair table is full, and its length.
pub fn aggregate_prefix(ip: IpAddr) -> (IpAddr, u8) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & (u32::MAX << (32 - IPV4_AGGREGATE_PREFIX_LEN));
            (IpAddr::V4(Ipv4Addr::from(bits)), IPV4_AGGREGATE_PREFIX_LEN)
        }
        IpAddr::V6(v6) => (IpAddr::V6(mask_v6(v6, IPV6_AGGREGATE_PREFIX_LEN)), IPV6_AGGREGATE_PREFIX_LEN),
    }
}

fn mask_v6(ip: Ipv6Addr, len: u8) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(ip) & (u128::MAX << (128 - u32::from(len))))
}

/// An address as compared for trust: its IPv4-mapped form read as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Whether two transport addresses are the same, mapped IPv4 read as IPv4.
pub fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    canonical(a) == canonical(b)
}

/// The limits, from `RegistrarConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Failures per (source, user) in the window that block it; 0 never blocks.
    pub pair_failures_max: u32,
    /// Failures per user in the window that lock it; 0 never locks.
    pub user_failures_max: u32,
    pub window: Duration,
    pub block: Duration,
    /// How long a success keeps its address trusted for its user.
    pub trust: Duration,
}

/// Recent failures of one key, and its block.
#[derive(Default, Debug)]
struct FailureRecord {
    /// Failure times inside the window, oldest first; fewer than the limit.
    times: VecDeque<Timestamp>,
    blocked_until: Option<Timestamp>,
}

impl FailureRecord {
    fn is_blocked(&self, now: Timestamp) -> bool {
        self.blocked_until.is_some_and(|until| until > now)
    }

    /// When it will hold nothing a future decision needs.
    fn idle_at(&self, window: Duration) -> Timestamp {
        let last = self.times.back().map_or(Timestamp::ZERO, |t| *t + window);
        last.max(self.blocked_until.unwrap_or(Timestamp::ZERO))
    }

    /// Counts a failure at `now`; the end of the block when it reaches `max`. A failure while
    /// blocked changes nothing: a block is never lengthened by the traffic it refuses.
    fn add(&mut self, now: Timestamp, limits: &Limits, max: u32) -> Option<Timestamp> {
        if max == 0 || self.is_blocked(now) {
            return None;
        }
        while self.times.front().is_some_and(|t| *t + limits.window <= now) {
            self.times.pop_front();
        }
        self.times.push_back(now);
        if self.times.len() < max as usize {
            return None;
        }
        self.times.clear();
        let until = now + limits.block;
        self.blocked_until = Some(until);
        Some(until)
    }
}

/// A bounded table of failure records. A record leaves only once idle, never to make room.
#[derive(Debug)]
struct FailureTable<K> {
    records: BTreeMap<K, FailureRecord>,
    max: usize,
    /// Set when a scan found the table full of active records: none turns idle before it, so
    /// no new key is looked for room until then (a flood costs no scan per packet).
    full_until: Option<Timestamp>,
}

impl<K: Ord> FailureTable<K> {
    fn new(max: usize) -> Self {
        FailureTable { records: BTreeMap::new(), max, full_until: None }
    }

    fn is_blocked(&self, key: &K, now: Timestamp) -> bool {
        self.records.get(key).is_some_and(|r| r.is_blocked(now))
    }

    /// The record for `key`, created if there is room; `None` when full of active records.
    fn record(&mut self, key: K, now: Timestamp, window: Duration) -> Option<&mut FailureRecord> {
        if !self.records.contains_key(&key) && self.records.len() >= self.max {
            if self.full_until.is_some_and(|until| now < until) {
                return None;
            }
            self.forget_idle(now, window);
            if self.records.len() >= self.max {
                self.full_until = self.records.values().map(|r| r.idle_at(window)).min();
                return None;
            }
        }
        Some(self.records.entry(key).or_default())
    }

    fn forget_idle(&mut self, now: Timestamp, window: Duration) {
        self.records.retain(|_, r| r.idle_at(window) > now);
        self.full_until = None;
    }

    fn blocked(&self, now: Timestamp) -> usize {
        self.records.values().filter(|r| r.is_blocked(now)).count()
    }
}

/// The failure tables and the trusted addresses.
#[derive(Debug)]
pub struct Guard {
    limits: Limits,
    pairs: FailureTable<(IpAddr, String)>,
    prefixes: FailureTable<(IpAddr, u8)>,
    users: FailureTable<String>,
    /// (address, user) → when that user last authenticated from that address.
    trusted: BTreeMap<(SocketAddr, String), Timestamp>,
}

impl Guard {
    /// `users_max` bounds the per-user table: the directory's size.
    pub fn new(limits: Limits, users_max: usize) -> Guard {
        Guard {
            limits,
            pairs: FailureTable::new(AUTH_FAILURE_PAIRS_MAX),
            prefixes: FailureTable::new(AUTH_FAILURE_PREFIXES_MAX),
            users: FailureTable::new(users_max),
            trusted: BTreeMap::new(),
        }
    }

    /// Whether `user` authenticated from exactly `source` (IP and port) within the trust period.
    pub fn recently_succeeded(&self, now: Timestamp, source: SocketAddr, user: &str) -> bool {
        self.trusted.get(&(canonical(source), user.to_owned())).is_some_and(|at| *at + self.limits.trust > now)
    }

    /// Whether answers for `user` from `source` are refused (403): its (source, user) pair or
    /// its prefix is blocked. The caller checks trust first.
    pub fn is_blocked(&self, now: Timestamp, source: IpAddr, user: &str) -> bool {
        self.pairs.is_blocked(&(source_group(source), user.to_owned()), now)
            || self.prefixes.is_blocked(&aggregate_prefix(source), now)
    }

    /// Whether `user` is locked (answers from untrusted sources fail whatever they say).
    pub fn is_locked(&self, now: Timestamp, user: &str) -> bool {
        self.users.is_blocked(&user.to_owned(), now)
    }

    /// Counts a failed answer for `user` from `source`: against the pair (or, when that table is
    /// full, the prefix) and, if `count_user` (an existing, unlocked extension), against the
    /// user. The events to report: blocks and locks begun, or a failure no table could hold.
    pub fn failed(
        &mut self,
        now: Timestamp,
        source: IpAddr,
        user: &str,
        count_user: bool,
        events: &mut Vec<RegistrarEvent>,
    ) {
        let limits = self.limits;
        let group = source_group(source);
        if let Some(record) = self.pairs.record((group, user.to_owned()), now, limits.window) {
            if let Some(until) = record.add(now, &limits, limits.pair_failures_max) {
                events.push(RegistrarEvent::Blocked { source: group, user: user.to_owned(), until });
            }
        } else {
            let (prefix, len) = aggregate_prefix(source);
            match self.prefixes.record((prefix, len), now, limits.window) {
                Some(record) => {
                    if let Some(until) = record.add(now, &limits, limits.pair_failures_max) {
                        events.push(RegistrarEvent::PrefixBlocked { prefix, len, until });
                    }
                }
                None => events.push(RegistrarEvent::FailureUntracked { source: group }),
            }
        }
        if count_user
            && let Some(record) = self.users.record(user.to_owned(), now, limits.window)
            && let Some(until) = record.add(now, &limits, limits.user_failures_max)
        {
            events.push(RegistrarEvent::UserLocked { user: user.to_owned(), source: group, until });
        }
    }

    /// `user` authenticated from `source`: that address is trusted for that user for a while.
    pub fn succeeded(&mut self, now: Timestamp, source: SocketAddr, user: &str) {
        let key = (canonical(source), user.to_owned());
        if !self.trusted.contains_key(&key) && self.trusted.len() >= TRUSTED_SOURCES_MAX {
            let trust = self.limits.trust;
            self.trusted.retain(|_, at| *at + trust > now);
            if self.trusted.len() >= TRUSTED_SOURCES_MAX {
                // Only correct answers make entries, so this is the directory's own phones
                // churning ports: the oldest success goes (its binding, if any, still counts).
                let oldest = self.trusted.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.trusted.remove(&oldest);
                }
            }
        }
        self.trusted.insert(key, now);
    }

    /// Forgets what no future decision needs.
    pub fn forget_idle(&mut self, now: Timestamp) {
        let window = self.limits.window;
        self.pairs.forget_idle(now, window);
        self.prefixes.forget_idle(now, window);
        self.users.forget_idle(now, window);
        let trust = self.limits.trust;
        self.trusted.retain(|_, at| *at + trust > now);
    }

    /// Forgets the lock and the count of a user that no longer exists.
    pub fn forget_user(&mut self, user: &str) {
        self.users.records.remove(user);
        self.trusted.retain(|(_, u), _| u != user);
    }

    /// Active blocks of (source, user) pairs and of prefixes.
    pub fn blocked(&self, now: Timestamp) -> usize {
        self.pairs.blocked(now) + self.prefixes.blocked(now)
    }

    /// Users locked now.
    pub fn locked(&self, now: Timestamp) -> usize {
        self.users.blocked(now)
    }

    /// Table sizes, for `Debug` and tests: (pairs, prefixes, users, trusted).
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        (self.pairs.records.len(), self.prefixes.records.len(), self.users.records.len(), self.trusted.len())
    }

    /// The bounds, for tests.
    #[cfg(test)]
    pub fn check_bounds(&self) -> Result<(), String> {
        let (pairs, prefixes, users, trusted) = self.sizes();
        if pairs > AUTH_FAILURE_PAIRS_MAX
            || prefixes > AUTH_FAILURE_PREFIXES_MAX
            || users > self.users.max
            || trusted > TRUSTED_SOURCES_MAX
        {
            return Err(format!("tables past their bounds: {:?}", self.sizes()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_secs(1_000_000);

    fn limits() -> Limits {
        Limits {
            pair_failures_max: 3,
            user_failures_max: 5,
            window: Duration::from_secs(60),
            block: Duration::from_secs(300),
            trust: Duration::from_secs(3600),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// IPv6 sources are grouped by /64 and IPv4-mapped addresses read as IPv4; prefixes for
    /// aggregation are /24 and /48.
    #[test]
    fn sources_group_by_address_and_slash_64() {
        assert_eq!(source_group(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(source_group(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(aggregate_prefix(ip("192.0.2.77")), (ip("192.0.2.0"), 24));
        assert_eq!(aggregate_prefix(ip("2001:db8:1:2::9")), (ip("2001:db8:1::"), 48));
        assert!(same_address("[::ffff:127.0.0.1]:5060".parse().unwrap(), "127.0.0.1:5060".parse().unwrap()));
    }

    /// Two addresses of one /64 share a (source, user) count: their failures add up to a
    /// block that covers both, and not a neighbouring /64.
    #[test]
    fn ipv6_failures_add_up_per_slash_64() {
        let mut g = Guard::new(limits(), 10);
        let mut events = Vec::new();
        for host in ["2001:db8::1", "2001:db8::2", "2001:db8::3"] {
            g.failed(T0, ip(host), "100", false, &mut events);
        }
        assert!(matches!(events[..], [RegistrarEvent::Blocked { .. }]), "{events:?}");
        assert!(g.is_blocked(T0, ip("2001:db8::ffff"), "100"));
        assert!(!g.is_blocked(T0, ip("2001:db8:0:1::1"), "100"));
    }

    /// A table full of active blocks keeps them all: the next new source is counted against
    /// its prefix, and a blocked prefix refuses its other addresses; when the prefixes are
    /// full too, the failure is reported untracked and still counts against the user.
    #[test]
    fn a_full_table_keeps_its_blocks_and_aggregates_newcomers() {
        let mut g = Guard::new(Limits { pair_failures_max: 1, ..limits() }, 10);
        let mut events = Vec::new();
        for i in 0..AUTH_FAILURE_PAIRS_MAX {
            let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
            g.failed(T0, source, "100", false, &mut events);
        }
        assert_eq!(g.blocked(T0), AUTH_FAILURE_PAIRS_MAX);
        events.clear();
        g.failed(T0, ip("198.51.100.9"), "100", false, &mut events);
        assert!(matches!(events[..], [RegistrarEvent::PrefixBlocked { len: 24, .. }]), "{events:?}");
        assert!(g.is_blocked(T0, ip("198.51.100.200"), "200"), "the whole /24, for every user");
        assert!(g.is_blocked(T0, ip("10.0.0.0"), "100"), "the first block is still there");
        for i in 0..AUTH_FAILURE_PREFIXES_MAX as u32 {
            g.failed(T0, IpAddr::V4(Ipv4Addr::from(0xac00_0000 + (i << 8))), "100", false, &mut events);
        }
        events.clear();
        g.failed(T0, ip("203.0.113.1"), "100", true, &mut events);
        assert!(matches!(events[..], [RegistrarEvent::FailureUntracked { .. }]), "{events:?}");
        g.check_bounds().unwrap();
        // Blocks end, the tables empty.
        let later = T0 + Duration::from_secs(300);
        assert!(!g.is_blocked(later, ip("10.0.0.0"), "100"));
        g.forget_idle(later + Duration::from_secs(60));
        assert_eq!(g.sizes(), (0, 0, 0, 0));
    }

    /// A full table looks for room at most once until a record can turn idle: a flood of new
    /// sources against a table full of blocks does not scan it per packet (and stays correct
    /// once a block ends).
    #[test]
    fn a_full_table_is_not_rescanned_before_anything_can_leave() {
        let mut g = Guard::new(Limits { pair_failures_max: 1, ..limits() }, 10);
        let mut events = Vec::new();
        for i in 0..AUTH_FAILURE_PAIRS_MAX {
            g.failed(T0, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32)), "1", false, &mut events);
        }
        g.failed(T0, ip("198.51.100.1"), "1", false, &mut events);
        assert_eq!(g.pairs.full_until, Some(T0 + Duration::from_secs(300)));
        let after = T0 + Duration::from_secs(300);
        g.failed(after, ip("198.51.100.1"), "2", false, &mut events);
        assert!(g.is_blocked(after, ip("198.51.100.1"), "2"), "room found once the blocks ended");
    }

    /// A lock is not lengthened by the attempts it refuses; trust lasts its period.
    #[test]
    fn blocks_do_not_grow_and_trust_expires() {
        let mut g = Guard::new(limits(), 10);
        let mut events = Vec::new();
        for i in 0..5 {
            g.failed(T0, IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)), "100", true, &mut events);
        }
        assert!(events.iter().any(|e| matches!(e, RegistrarEvent::UserLocked { .. })), "{events:?}");
        for _ in 0..50 {
            g.failed(T0 + Duration::from_secs(200), ip("192.0.2.99"), "100", true, &mut events);
        }
        assert!(!g.is_locked(T0 + Duration::from_secs(300), "100"), "lock ends on time");
        let phone: SocketAddr = "192.0.2.7:5060".parse().unwrap();
        g.succeeded(T0, phone, "100");
        assert!(g.recently_succeeded(T0 + Duration::from_secs(3599), phone, "100"));
        assert!(!g.recently_succeeded(T0 + Duration::from_secs(3599), "192.0.2.7:5061".parse().unwrap(), "100"));
        assert!(!g.recently_succeeded(T0 + Duration::from_secs(3599), phone, "101"));
        assert!(!g.recently_succeeded(T0 + Duration::from_secs(3600), phone, "100"));
    }
}

//! The node's RTP port pairs: each call's relay leases two (one per side) and gives them back
//! when it ends. A pair is an even RTP port and the odd RTCP port above it (RFC 3550 §11).
//!
//! - **Random choice.** A pair is drawn at random among the free ones, from the pool's own
//!   generator (seeded by the caller: the node from the OS, the simulator from its seed), so
//!   one call's ports tell nothing about the next call's: a stranger who wants to inject
//!   media must find the port first (RFC 3550 §9.1 and RFC 8445 make the same point about
//!   predictable ports). Handing ports out in order from the bottom of the range, as before,
//!   made the next call's port a guess away. Drawing from the free list is one step, so no
//!   retry is needed here; a pair that will not bind (another program holds it) is the
//!   shell's to give back and try another, a bounded number of times.
//! - **Quarantine.** A released pair is held back from the draw until
//!   [`RELEASED_HELD_PAIRS_MAX`] (at most a quarter of the pool) later releases, so the stray
//!   late packets of a call that just ended reach a closed port rather than the next call;
//!   when nothing else is free the longest-held pair goes first, so capacity is never lost.
//! - **Parking.** A session's two pairs may be parked when it ends instead of released: its
//!   sockets stay bound (the shell keeps them, and drops what reaches them), so the next call
//!   takes them without a `socket`, `bind` and `close` per port (about 37 µs a call here, a
//!   tenth of a call's CPU). Parked pairs stay leased and count against the lease limit (they
//!   hold descriptors); at most an eighth of it is parked (and [`PARKED_SETS_MAX`] sets). A set
//!   is drawn again only past its own quarantine ([`PARKED_QUARANTINE_SETS`] later sets
//!   parked, as a released pair waits out [`RELEASED_HELD_PAIRS_MAX`] releases), and only at
//!   random among at least [`PARKED_DRAW_MIN_SETS`] such sets: at a low call rate nothing is
//!   drawn from the park and ports come from the whole range as before; at a high one the
//!   draw is among the many sets that recent calls left, which nobody outside those calls
//!   has seen. The shell closes a set that stays parked too long ([`PARKED_IDLE_MS`], [`PortPool::unpark`]),
//!   and takes the oldest set whatever its quarantine when nothing else can be leased.
//!
//! Pure bookkeeping, and no global randomness: binding the sockets is the shell's job.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

/// Pairs held back after release, at most: a few seconds of releases at a high call rate.
pub const RELEASED_HELD_PAIRS_MAX: usize = 64;
/// Sets (a session's two pairs) parked at most.
pub const PARKED_SETS_MAX: usize = 1_024;
/// Sets that must be parked after a set before it may be drawn (its quarantine).
pub const PARKED_QUARANTINE_SETS: usize = 32;
/// Sets past their quarantine that must be parked before one is drawn from the park.
pub const PARKED_DRAW_MIN_SETS: usize = 64;
/// A set parked this long without being drawn is closed by the shell: an idle node holds no
/// sockets after its last call for longer than this.
pub const PARKED_IDLE_MS: u64 = 10_000;

/// A parked set: its two RTP ports and the shell's token for the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parked {
    pub ports: [u16; 2],
    pub token: u64,
}

#[derive(Debug)]
pub struct PortPool {
    /// The lowest RTP port; pair `i` is `base + 2 i`.
    base: u16,
    /// Pairs free to draw, in no meaningful order.
    free: Vec<u16>,
    /// Pairs released lately, oldest first: out of the draw until the line is full.
    held: VecDeque<u16>,
    held_max: usize,
    leased: Vec<bool>,
    /// Pairs that may be leased at once (what the open-file limit allows; the range's size by
    /// default).
    lease_max: usize,
    /// Parked sets, oldest first (their pairs are leased).
    parked: VecDeque<Parked>,
    /// Sets parked at most, before the lease limit's share (0, no parking, until
    /// [`PortPool::park_sets`]).
    parked_limit: usize,
    quarantine: usize,
    draw_min: usize,
    idle_ms: u64,
    rng: StdRng,
}

impl PortPool {
    /// Every even port `p` with `first <= p` and `p + 1 <= last`; port 0 is never used. An
    /// empty or inverted range gives a pool that allocates nothing. `seed` seeds the draw.
    pub fn new(first: u16, last: u16, seed: u64) -> PortPool {
        let base = first.max(2).checked_next_multiple_of(2).unwrap_or(u16::MAX);
        let pairs = if last > base { (last - base).div_ceil(2) as usize } else { 0 };
        let free = (0..pairs).map(|i| base + 2 * i as u16).collect();
        PortPool {
            base,
            free,
            held: VecDeque::new(),
            held_max: RELEASED_HELD_PAIRS_MAX.min(pairs / 4),
            leased: vec![false; pairs],
            lease_max: pairs,
            parked: VecDeque::new(),
            parked_limit: 0,
            quarantine: PARKED_QUARANTINE_SETS,
            draw_min: PARKED_DRAW_MIN_SETS,
            idle_ms: PARKED_IDLE_MS,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The RTP port of a free pair drawn at random; the longest-held released pair when no
    /// other is free; `None` when every pair is leased.
    pub fn allocate(&mut self) -> Option<u16> {
        if self.leased_pairs() >= self.lease_max {
            return None;
        }
        let port = if self.free.is_empty() {
            self.held.pop_front()?
        } else {
            let pick = self.rng.random_range(0..self.free.len());
            self.free.swap_remove(pick)
        };
        let i = self.index(port).expect("free ports are in range");
        assert!(!self.leased[i], "a free pair is not leased");
        self.leased[i] = true;
        Some(port)
    }

    /// Gives a pair back. A port that is not leased (never allocated, or released already) is
    /// ignored, so a double release cannot put a pair in line twice.
    pub fn release(&mut self, port: u16) -> bool {
        let Some(i) = self.index(port).filter(|&i| self.leased[i]) else { return false };
        self.leased[i] = false;
        self.held.push_back(port);
        while self.held.len() > self.held_max {
            let oldest = self.held.pop_front().expect("longer than the bound, so not empty");
            self.free.push(oldest);
        }
        true
    }

    /// Pairs leased now for calls (parked pairs are not in a call).
    pub fn in_use(&self) -> usize {
        self.leased_pairs() - self.parked_pairs()
    }

    /// Pairs that may still be leased before the pool is at its limit.
    pub fn headroom(&self) -> usize {
        self.lease_max.saturating_sub(self.leased_pairs())
    }

    /// Pairs parked now.
    pub fn parked_pairs(&self) -> usize {
        2 * self.parked.len()
    }

    /// Pairs leased, parked ones included: what holds descriptors.
    fn leased_pairs(&self) -> usize {
        self.leased.len() - self.free.len() - self.held.len()
    }

    /// Sets that may be parked at once: an eighth of the lease limit (a quarter of its pairs).
    fn parked_max(&self) -> usize {
        self.parked_limit.min(self.lease_max / 8)
    }

    /// Parks a set of two leased pairs under the shell's `token`; false (nothing changes) when
    /// the park is full or a port is not a leased pair's, and the caller releases them.
    pub fn park(&mut self, ports: [u16; 2], token: u64) -> bool {
        let leased = |port| self.index(port).is_some_and(|i| self.leased[i]);
        if self.parked.len() >= self.parked_max() || ports[0] == ports[1] || !ports.into_iter().all(leased) {
            return false;
        }
        self.parked.push_back(Parked { ports, token });
        true
    }

    /// A parked set drawn at random among those past their quarantine, if there are at least
    /// the draw's minimum of them; it leaves the park (its pairs stay leased, now for a call).
    pub fn take_parked(&mut self) -> Option<Parked> {
        let eligible = self.parked.len().saturating_sub(self.quarantine);
        if eligible < self.draw_min.max(1) {
            return None;
        }
        let pick = self.rng.random_range(0..eligible);
        self.parked.remove(pick)
    }

    /// The longest-parked set, quarantine or not: for when no pair can be leased otherwise.
    pub fn take_parked_oldest(&mut self) -> Option<Parked> {
        self.parked.pop_front()
    }

    /// Takes the set parked under `token` out of the park, for the shell to close and release:
    /// false if it is not parked (drawn meanwhile for a call).
    pub fn unpark(&mut self, token: u64) -> bool {
        let Some(i) = self.parked.iter().position(|parked| parked.token == token) else { return false };
        self.parked.remove(i);
        true
    }

    /// Parks ended sessions' sets within the defaults: up to [`PARKED_SETS_MAX`] sets, each
    /// drawn after [`PARKED_QUARANTINE_SETS`], only from [`PARKED_DRAW_MIN_SETS`], closed after
    /// [`PARKED_IDLE_MS`]. A new pool parks nothing (a test's pools may share a port range,
    /// and parked sockets would hold ports another pool draws); the node's pool parks.
    pub fn park_sets(&mut self) {
        self.set_parking(PARKED_SETS_MAX, PARKED_QUARANTINE_SETS, PARKED_DRAW_MIN_SETS, PARKED_IDLE_MS);
    }

    /// Parking's bounds: at most `max` sets, each drawn after `quarantine` later ones, only
    /// from `draw_min` sets past theirs, closed after `idle_ms` parked (the constants by
    /// default; tests use small ones). `max` 0 turns parking off.
    pub fn set_parking(&mut self, max: usize, quarantine: usize, draw_min: usize, idle_ms: u64) {
        (self.parked_limit, self.quarantine, self.draw_min, self.idle_ms) = (max, quarantine, draw_min, idle_ms);
    }

    /// How long the shell keeps a set parked.
    pub fn parked_idle_ms(&self) -> u64 {
        self.idle_ms
    }

    /// Pairs that may be leased at once: the range's, or fewer if limited.
    pub fn capacity(&self) -> usize {
        self.lease_max
    }

    /// At most `max` pairs leased at once, drawn from the whole range still: the node sets
    /// what its open-file limit allows (two descriptors a pair), so a call finds the pool
    /// empty (and is refused 503) before a socket fails with EMFILE and starves SIP TCP or
    /// the API of descriptors.
    pub fn limit_leases(&mut self, max: usize) {
        self.lease_max = max.min(self.leased.len());
    }

    fn index(&self, port: u16) -> Option<usize> {
        let offset = port.checked_sub(self.base)?;
        let i = (offset / 2) as usize;
        (offset % 2 == 0 && i < self.leased.len()).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Only even RTP ports whose RTCP port is also in range; odd and zero bounds are handled.
    #[test]
    fn pairs_in_range() {
        let mut pool = PortPool::new(10_001, 10_008, 1);
        assert_eq!(pool.capacity(), 3, "10002, 10004, 10006 (10008 has no 10009)");
        let all: BTreeSet<u16> = std::iter::from_fn(|| pool.allocate()).collect();
        assert_eq!(all, BTreeSet::from([10_002, 10_004, 10_006]));
        assert_eq!(PortPool::new(0, 3, 1).capacity(), 1, "port 0 is never used");
        assert_eq!(PortPool::new(20, 10, 1).capacity(), 0);
        assert_eq!(PortPool::new(20, 20, 1).capacity(), 0);
        assert_eq!(PortPool::new(65_534, 65_535, 1).capacity(), 1);
        assert_eq!(PortPool::new(65_535, 65_535, 1).capacity(), 0);
        assert_eq!(PortPool::new(20_000, 29_999, 1).capacity(), 5_000);
    }

    /// Ports come in no predictable order: from a wide range, neither ascending nor a fixed
    /// step, and another seed gives another sequence; the same seed the same (determinism).
    #[test]
    fn allocation_is_random_and_seeded() {
        let draw = |seed| {
            let mut pool = PortPool::new(20_000, 29_999, seed);
            (0..20).map(|_| pool.allocate().unwrap()).collect::<Vec<u16>>()
        };
        let ports = draw(7);
        let steps: BTreeSet<i32> = ports.windows(2).map(|w| i32::from(w[1]) - i32::from(w[0])).collect();
        assert!(steps.len() > 10, "steps between consecutive ports vary: {ports:?}");
        assert!(ports.windows(2).any(|w| w[1] < w[0]), "not ascending: {ports:?}");
        assert_eq!(ports, draw(7));
        assert_ne!(ports, draw(8));
    }

    /// A released pair is held back while other pairs are free, and handed out again when it
    /// is the only one left.
    #[test]
    fn released_pairs_are_held_back() {
        let mut pool = PortPool::new(100, 115, 3);
        assert_eq!((pool.capacity(), pool.held_max), (8, 2));
        let a = pool.allocate().unwrap();
        assert!(pool.release(a));
        let others: Vec<u16> = (0..7).map(|_| pool.allocate().unwrap()).collect();
        assert!(!others.contains(&a), "{a} came back while others were free: {others:?}");
        assert_eq!(pool.allocate(), Some(a), "the last free pair");
        assert_eq!(pool.allocate(), None, "all eight leased");
        assert_eq!((pool.in_use(), pool.capacity()), (8, 8));
    }

    /// Releasing what is not leased changes nothing: no double entries, no foreign ports.
    #[test]
    fn release_is_idempotent() {
        let mut pool = PortPool::new(100, 103, 5);
        let a = pool.allocate().unwrap();
        assert!(pool.release(a));
        assert!(!pool.release(a), "second release");
        assert!(!pool.release(101) && !pool.release(98) && !pool.release(200));
        assert_eq!(pool.in_use(), 0);
        let both: BTreeSet<u16> = [pool.allocate().unwrap(), pool.allocate().unwrap()].into();
        assert_eq!(both, BTreeSet::from([100, 102]), "each in line once only");
        assert_eq!(pool.allocate(), None);
    }

    proptest! {
        /// Under any sequence of allocations and releases (valid or not): a pair is never
        /// leased twice, every allocated port is an even port of the range, `allocate` fails
        /// only when every pair is leased, and the counts always add up to the capacity.
        #[test]
        fn leases_stay_consistent(
            seed in any::<u64>(),
            range in (2u16..200, 0u16..40),
            steps in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>(), 0u16..300), 1..300),
        ) {
            let (first, len) = range;
            let mut pool = PortPool::new(first, first + len, seed);
            let mut leased = BTreeSet::new();
            for (allocate, pick, stray) in steps {
                if allocate {
                    match pool.allocate() {
                        Some(port) => {
                            prop_assert!(port % 2 == 0 && port >= first && port < first + len, "{port}");
                            prop_assert!(leased.insert(port), "{} leased twice", port);
                        }
                        None => prop_assert_eq!(leased.len(), pool.capacity()),
                    }
                } else if !leased.is_empty() && stray % 2 == 0 {
                    let port = *leased.iter().nth(pick.index(leased.len())).unwrap();
                    prop_assert!(pool.release(port));
                    leased.remove(&port);
                } else {
                    let was_leased = leased.remove(&stray);
                    prop_assert_eq!(pool.release(stray), was_leased, "release of {}", stray);
                }
                prop_assert_eq!(pool.in_use(), leased.len());
                prop_assert_eq!(pool.free.len() + pool.held.len() + leased.len(), pool.capacity());
                prop_assert!(pool.held.len() <= pool.held_max);
            }
        }
    }

    /// A lease limit below the range: no more than that many pairs at once, any of the range's
    /// drawn; a release makes room again.
    #[test]
    fn the_lease_limit_caps_pairs_at_once() {
        let mut pool = PortPool::new(10_000, 10_099, 7);
        pool.limit_leases(3);
        assert_eq!(pool.capacity(), 3);
        let leased: Vec<u16> = std::iter::from_fn(|| pool.allocate()).collect();
        assert_eq!(leased.len(), 3);
        assert!(pool.allocate().is_none());
        assert!(pool.release(leased[1]));
        assert!(pool.allocate().is_some());
        pool.limit_leases(1_000);
        assert_eq!(pool.capacity(), 50, "never beyond the range");
    }

    fn lease_set(pool: &mut PortPool) -> [u16; 2] {
        [pool.allocate().unwrap(), pool.allocate().unwrap()]
    }

    /// A parked set is not drawn before `quarantine` later sets are parked, nor while fewer
    /// than `draw_min` are past theirs; then sets come out at random (not oldest first), and
    /// parked pairs count as leased against the limit but not as in use.
    #[test]
    fn parked_sets_wait_out_their_quarantine_and_are_drawn_at_random() {
        let mut pool = PortPool::new(10_000, 19_999, 11);
        pool.set_parking(100, 3, 4, 1_000);
        for token in 0..6 {
            let set = lease_set(&mut pool);
            assert!(pool.park(set, token));
            assert_eq!(pool.take_parked(), None, "{} parked: 3 in quarantine, fewer than 4 past it", token + 1);
        }
        assert_eq!((pool.in_use(), pool.parked_pairs()), (0, 12));
        let set = lease_set(&mut pool);
        assert!(pool.park(set, 6));
        assert_eq!(pool.in_use(), 0);
        let drawn: Vec<u64> = std::iter::from_fn(|| pool.take_parked()).map(|p| p.token).collect();
        assert_eq!(drawn.len(), 1, "4 past quarantine: one drawn leaves 3 < 4: {drawn:?}");
        assert!(drawn[0] < 4, "only a set past its quarantine: {drawn:?}");
        assert_eq!(pool.in_use(), 2, "the drawn set's pairs are in a call now");
        // Drawn at random: over many seeds, not always the oldest.
        let firsts: BTreeSet<u64> = (0..40)
            .map(|seed| {
                let mut pool = PortPool::new(10_000, 19_999, seed);
                pool.set_parking(100, 0, 1, 1_000);
                for token in 0..8 {
                    let set = lease_set(&mut pool);
                    assert!(pool.park(set, token));
                }
                pool.take_parked().unwrap().token
            })
            .collect();
        assert!(firsts.len() > 4, "drawn at random: {firsts:?}");
    }

    /// The park holds at most an eighth of the lease limit's pairs' sets; what is not leased
    /// cannot be parked; `unpark` takes a set out once; when nothing else can be leased, the
    /// oldest set comes out whatever its quarantine.
    #[test]
    fn parking_is_bounded_and_takes_only_leased_pairs() {
        let mut pool = PortPool::new(10_000, 10_063, 13);
        assert_eq!(pool.capacity(), 32);
        assert_eq!(pool.parked_max(), 0, "a new pool parks nothing");
        let set = lease_set(&mut pool);
        assert!(!pool.park(set, 9));
        assert!(pool.release(set[0]) && pool.release(set[1]));
        pool.park_sets();
        assert_eq!(pool.parked_max(), 4);
        for token in 0..4 {
            let set = lease_set(&mut pool);
            assert!(pool.park(set, token));
        }
        let set = lease_set(&mut pool);
        assert!(!pool.park(set, 9), "the park is full");
        assert!(pool.release(set[0]) && pool.release(set[1]));
        assert!(!pool.park(set, 9), "released pairs cannot be parked");
        let one = pool.allocate().unwrap();
        assert!(!pool.park([one, one], 9), "a set is two pairs");
        assert!(pool.release(one));
        assert!(pool.unpark(2));
        assert!(!pool.unpark(2), "once");
        assert_eq!(pool.parked_pairs(), 6);
        assert_eq!(pool.take_parked(), None, "too few past quarantine");
        assert_eq!(pool.take_parked_oldest().map(|p| p.token), Some(0));
        pool.limit_leases(8);
        assert_eq!(pool.parked_max(), 1);
    }
}

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
//!
//! Pure bookkeeping, and no global randomness: binding the sockets is the shell's job.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

/// Pairs held back after release, at most: a few seconds of releases at a high call rate.
pub const RELEASED_HELD_PAIRS_MAX: usize = 64;

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
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The RTP port of a free pair drawn at random; the longest-held released pair when no
    /// other is free; `None` when every pair is leased.
    pub fn allocate(&mut self) -> Option<u16> {
        if self.in_use() >= self.lease_max {
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

    /// Pairs leased now.
    pub fn in_use(&self) -> usize {
        self.leased.len() - self.free.len() - self.held.len()
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
}

//! The node's RTP port pairs: each call's relay leases two (one per side) and gives them back
//! when it ends. A pair is an even RTP port and the odd RTCP port above it (RFC 3550 §11).
//!
//! Ports are handed out round-robin: a released pair goes to the back of the line, so the
//! stray late packets of a call that just ended reach a closed port, not the next call. Pure
//! bookkeeping: binding the sockets is the shell's job.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct PortPool {
    /// The lowest RTP port; pair `i` is `base + 2 i`.
    base: u16,
    free: VecDeque<u16>,
    leased: Vec<bool>,
}

impl PortPool {
    /// Every even port `p` with `first <= p` and `p + 1 <= last`; port 0 is never used. An
    /// empty or inverted range gives a pool that allocates nothing.
    pub fn new(first: u16, last: u16) -> PortPool {
        let base = first.max(2).checked_next_multiple_of(2).unwrap_or(u16::MAX);
        let pairs = if last > base { (last - base).div_ceil(2) as usize } else { 0 };
        let free = (0..pairs).map(|i| base + 2 * i as u16).collect();
        PortPool { base, free, leased: vec![false; pairs] }
    }

    /// The RTP port of a free pair, the one released longest ago (or never used).
    pub fn allocate(&mut self) -> Option<u16> {
        let port = self.free.pop_front()?;
        let i = self.index(port).expect("free ports are in range");
        self.leased[i] = true;
        Some(port)
    }

    /// Gives a pair back. A port that is not leased (never allocated, or released already) is
    /// ignored, so a double release cannot put a pair in line twice.
    pub fn release(&mut self, port: u16) -> bool {
        let Some(i) = self.index(port).filter(|&i| self.leased[i]) else { return false };
        self.leased[i] = false;
        self.free.push_back(port);
        true
    }

    /// Pairs leased now.
    pub fn in_use(&self) -> usize {
        self.leased.len() - self.free.len()
    }

    /// Pairs in the range.
    pub fn capacity(&self) -> usize {
        self.leased.len()
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

    /// Only even RTP ports whose RTCP port is also in range; odd and zero bounds are handled.
    #[test]
    fn pairs_in_range() {
        let mut pool = PortPool::new(10_001, 10_008);
        assert_eq!(pool.capacity(), 3, "10002, 10004, 10006 (10008 has no 10009)");
        assert_eq!(std::iter::from_fn(|| pool.allocate()).collect::<Vec<_>>(), [10_002, 10_004, 10_006]);
        assert_eq!(PortPool::new(0, 3).capacity(), 1, "port 0 is never used");
        assert_eq!(PortPool::new(20, 10).capacity(), 0);
        assert_eq!(PortPool::new(20, 20).capacity(), 0);
        assert_eq!(PortPool::new(65_534, 65_535).capacity(), 1);
        assert_eq!(PortPool::new(65_535, 65_535).capacity(), 0);
        assert_eq!(PortPool::new(20_000, 29_999).capacity(), 5_000);
    }

    /// A released pair goes to the back of the line, behind pairs never used.
    #[test]
    fn round_robin() {
        let mut pool = PortPool::new(100, 107);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert!(pool.release(a));
        assert_eq!(pool.allocate(), Some(104));
        assert_eq!(pool.allocate(), Some(106));
        assert_eq!(pool.allocate(), Some(a));
        assert_eq!(pool.allocate(), None, "all four leased");
        assert_eq!((pool.in_use(), pool.capacity()), (4, 4));
        assert!(pool.release(b));
        assert_eq!(pool.in_use(), 3);
    }

    /// Releasing what is not leased changes nothing: no double entries, no foreign ports.
    #[test]
    fn release_is_idempotent() {
        let mut pool = PortPool::new(100, 103);
        let a = pool.allocate().unwrap();
        assert!(pool.release(a));
        assert!(!pool.release(a), "second release");
        assert!(!pool.release(101) && !pool.release(98) && !pool.release(200));
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.allocate(), Some(102));
        assert_eq!(pool.allocate(), Some(100), "in line once only");
        assert_eq!(pool.allocate(), None);
    }
}

//! Calls: a back-to-back user agent (B2BUA) that puts a caller through to every contact of the
//! dialled extension, anchors their media, and writes a call detail record when it ends.
//!
//! - [`leg`]: [`Leg`], the sans-IO machine of one SIP dialog (RFC 3261 §12–15), as UAS toward
//!   the caller (the A-leg) or as UAC toward one callee contact (a B-leg).
//! - [`b2bua`]: [`Call`], the sans-IO machine that joins the legs: forking, first 2xx wins,
//!   no-answer timeout, CANCEL, BYE either way, re-INVITE/UPDATE relayed, SDP offer/answer
//!   rewritten so media flows through pbx's ports, and the CDR.
//! - [`actor`]: the ractor shells. One actor per leg, one per call (the legs' supervisor), and
//!   the `calls` actor that starts calls and lists them.
//!
//! Routing needs no table of dialogs: every tag and branch pbx makes names the leg it belongs
//! to ([`LegId::tag`], [`LegId::branch`]), so the endpoint finds the leg of an in-dialog request
//! from its To tag, of a response from its Via branch.

pub mod actor;
pub mod b2bua;
pub mod leg;

pub use b2bua::{Call, CallConfig, CallInput, CallOutput};
pub use leg::{Leg, LegCommand, LegEvent, LegInput, LegOutput, SipIn, SipOut};

use crate::Timestamp;
use std::net::SocketAddr;

/// Splitmix64: a cheap, well-mixed sequence from a seed (SSRCs, SDP session ids, seeds).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hands out each new call's CDR id and seed.
#[derive(Debug)]
pub struct CallIds {
    rng: u64,
    counter: u64,
}

impl CallIds {
    pub fn new(seed: u64) -> CallIds {
        CallIds { rng: seed, counter: 0 }
    }

    /// Milliseconds (41 bits for centuries) and a counter: unique per node, fits in 57 bits.
    /// The seed feeds the call's SSRCs and SDP session ids.
    pub fn next(&mut self, now: Timestamp) -> (u64, u64) {
        self.counter += 1;
        let id = ((now.as_micros() / 1000) << 16) | (self.counter & 0xffff);
        (id, splitmix64(&mut self.rng))
    }
}

/// One leg of one call, unique on this node (the endpoint hands them out from a random start,
/// so tags stay unique across restarts too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

const BRANCH_PREFIX: &str = "z9hG4bK";

impl LegId {
    /// pbx's tag in this leg's dialog: the leg id, 16 hex digits.
    pub fn tag(self) -> String {
        format!("{:016x}", self.0)
    }

    /// The leg a tag of ours names; `None` for a tag pbx did not make.
    pub fn from_tag(tag: &str) -> Option<LegId> {
        (tag.len() == 16).then(|| u64::from_str_radix(tag, 16).ok().map(LegId)).flatten()
    }

    /// A Via branch for this leg's `n`th request (RFC 3261 §8.1.1.7 magic cookie first).
    pub fn branch(self, n: u64) -> String {
        format!("{BRANCH_PREFIX}{:016x}.{n:x}", self.0)
    }

    /// The leg a branch of ours names.
    pub fn from_branch(branch: &str) -> Option<LegId> {
        let rest = branch.strip_prefix(BRANCH_PREFIX)?;
        let (id, n) = rest.split_once('.')?;
        if n.is_empty() {
            return None;
        }
        LegId::from_tag(id)
    }
}

impl std::fmt::Display for LegId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where pbx itself is reached for SIP: written into Via and Contact of what it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSip {
    pub address: SocketAddr,
}

#[cfg(test)]
mod tests;

//! pbx-actors: every pbx subsystem, each a sans-IO machine with a thin ractor shell beside it.
//!
//! A subsystem's folder holds it whole: `machine.rs` is pure logic (time, input and
//! randomness come in; outputs and the next wake-up go out), `actor.rs` is the ractor shell
//! that feeds it the clock and performs its outputs through ports. The `tidy` test keeps the
//! machines honest: none may read a clock, a global RNG, or import tokio.

pub mod bugs;
pub mod call;
pub mod cdr;
pub mod conference;
pub mod endpoint;
pub mod entry;
pub mod licence;
pub mod media;
pub mod privacy;
pub mod proxy;
pub mod push;
pub mod registrar;
pub mod sdp;
pub mod shell;
pub mod sip;
pub mod store;
pub mod time;

pub use time::Timestamp;

/// Splitmix64: a cheap, well-mixed sequence from a seed (SSRCs, SDP session ids, seeds).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

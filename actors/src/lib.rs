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
pub mod registrar;
pub mod sdp;
pub mod shell;
pub mod sip;
pub mod store;
pub mod time;

pub use time::Timestamp;

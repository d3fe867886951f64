//! Conference rooms (issue 16): numbers callers dial to meet, each mixed by one
//! [`Mixer`](crate::media::mixer::Mixer).
//!
//! - `room`: the sans-IO machine of one room's membership: admission (full, locked), PIN entry
//!   by DTMF with three tries, the `*` controls (mute self, lock, mute all), the moderator,
//!   what the API may do (mute, kick, lock), and which prompt plays to whom.
//! - `dtmf`: RFC 4733 telephone events to digits, once per key press.
//! - `tones`: the prompts, synthesised (no audio files are shipped).
//!
//! - `core`: one room in use as a sans-IO unit (the room machine, the mixer, strict sources,
//!   silence, participation records), driven by the room's actor and by the simulator.
//! - `actor`: the shells: the node's registry of rooms and one actor per room in use (the
//!   room machine, the mixer, a socket per participant).

pub mod actor;
pub mod core;
pub mod dtmf;
pub mod room;
pub mod tones;

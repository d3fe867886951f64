//! Conference rooms (issue 16): numbers callers dial to meet, each mixed by one
//! [`Mixer`](crate::media::mixer::Mixer).
//!
//! - `room`: the sans-IO machine of one room's membership: admission (full, locked), PIN entry
//!   by DTMF with three tries, the `*` controls (mute self, lock, mute all), the moderator,
//!   what the API may do (mute, kick, lock), and which prompt plays to whom.
//! - `dtmf`: RFC 4733 telephone events to digits, once per key press.
//! - `tones`: the prompts, synthesised (no audio files are shipped).
//!
//! Not built yet: the room actor (mixer + room machine + sockets), `[[conferences]]` in the
//! config and the admin API, the SIP side (answering a room's number), participation records.

pub mod dtmf;
pub mod room;
pub mod tones;

//! Media anchoring: the RTP relay that sits between the two phones of a call when pbx keeps
//! the media path (for NAT traversal, recording later, and codec bridging).
//!
//! - `g711`: µ-law and A-law, and direct conversion between them.
//! - `rtp`: zero-copy views of RTP headers, RTCP compounds and RFC 4733 events.
//! - `mixer`: the sans-IO machine of one conference room's audio (jitter buffers, loss
//!   concealment, the loudest talkers summed, each participant hearing everyone but itself).
//! - `relay`: the sans-IO machine of one call's relay (latching, SSRC/sequence rewriting,
//!   transcoding, statistics, inactivity).
//! - `srtp`: SRTP and SRTCP (RFC 3711, AES-CM with HMAC-SHA1, 80- and 32-bit tags) in place:
//!   a media worker decrypts what arrives on an SRTP leg before the relay reads it and
//!   encrypts what the relay sends toward one, so each leg has its own keys ([`SrtpKeys`]).
//! - `pool`: the node's RTP/RTCP port pairs.
//! - `actor`: the shell that binds the sockets and runs each call's relay in a shared media
//!   worker (`MediaSession`); its `sys` has the workers' epoll, eventfd, `recvmmsg` and
//!   `sendmmsg`.
//!
//! Not here: SDP and SDES keying (the call layer turns offers and answers into [`PeerMedia`]
//! and [`SrtpKeys`]), DTLS-SRTP, RTCP generation, codecs other than G.711.

pub mod actor;
pub mod g711;
pub mod mixer;
pub mod pool;
pub mod relay;
pub mod rtp;
pub mod srtp;
#[cfg(test)]
pub(crate) mod tone_power;

pub use actor::{MediaArgs, MediaError, MediaEvent, MediaSession};
pub use g711::G711;
pub use pool::PortPool;
pub use relay::{Forward, PacketKind, PeerMedia, Relay, RelayConfig, RelayInput, RelayOutput, Side, SideStats};

/// One leg's SRTP keys as SDES agreed them (RFC 4568): the phone's, which it encrypts what it
/// sends with, and pbx's, which pbx encrypts what it sends the phone with. Debug shows suites
/// only ([`srtp::KeyMaterial`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrtpKeys {
    pub remote: srtp::KeyMaterial,
    pub local: srtp::KeyMaterial,
}

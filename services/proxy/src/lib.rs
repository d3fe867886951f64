//! pbx-proxy-service: `pbx proxy`, the public edge through which softphones reach a PBX
//! without a VPN (the seed's "Auerproxy Server").
//!
//! The PBX dials **out** to the proxy over QUIC with mutual TLS ([`link`]; certificates from
//! `pbx proxy init`), so the office opens no inbound port. Softphones connect to the proxy over
//! TLS or TCP ([`edge`]); the proxy relays each message of theirs, unchanged, to the PBX and
//! back, and their media as QUIC datagrams ([`media`]). It authenticates nothing: the PBX's
//! registrar challenges through it, so the proxy never sees a password (digest answers only).
//!
//! What it keeps about a softphone (the seed's fields: addresses of softphone and PBX, the
//! PBX's serial, the user name, the push token, the last use) is recorded by one
//! [`session`] actor per softphone connection into the proxy's redb ([`ledger`]), and deleted
//! 12 months after the last use by the ledger's reaper. Debug mode, switched on by the PBX's
//! admin and ending by itself, adds the destinations of calls, deleted after 4 weeks.

pub mod cli;
pub mod edge;
pub mod ledger;
pub mod link;
pub mod media;
pub mod provision;
pub mod session;
pub mod wire;

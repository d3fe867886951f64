//! The softphone proxy's records (`pbx proxy`, the seed's "Auerproxy Server"): what the proxy
//! keeps about the softphones that reach a PBX through it, and for how long.
//!
//! The seed: "the following data is sent to the Auerproxy server to establish a connection:
//! current external IP address and port of the softphone and PBX, serial number of the PBX,
//! username and associated password of the softphone, tokens for push notifications, if
//! applicable. This data (except the password) is stored and deleted 12 months after the last
//! use." And for debugging: "real names of call destinations. This additional data is stored
//! for up to 4 weeks and then automatically deleted."
//!
//! - [`SessionRecord`]: exactly the seed's fields — never the password (the proxy relays the
//!   digest exchange and keeps nothing of it). Category `proxy-session` of the inventory.
//! - [`DebugRecord`]: a call destination's real name, recorded only while the PBX's admin has
//!   switched debug mode on for that PBX; debug mode ends by itself. Category `proxy-debug`.
//! - [`machine::Ledger`]: the sans-IO machine holding both, their retention and their bounds;
//!   `pbx-proxy-service`'s `ledger` module is its shell and its redb store.
//!
//! Not here: relaying SIP and media, and the provisioning cache (held in the proxy's memory
//! until the softphone fetched it once: category `provisioning-cache`).

pub mod machine;

#[cfg(test)]
mod tests;

pub use machine::{Ledger, LedgerConfig, LedgerInput, LedgerOutput, LedgerState, LedgerStats, Persist};

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// The seed: "deleted 12 months after the last use".
pub const SESSION_RETENTION_DAYS: u32 = 365;
/// The seed: debug data "is stored for up to 4 weeks and then automatically deleted".
pub const DEBUG_RETENTION_DAYS: u32 = 28;
/// How long debug mode lasts when the admin gives no length: as long as its records are kept.
pub const DEBUG_MODE_DAYS: u32 = 28;
/// The longest debug mode may be switched on for at once: it ends by itself, and soon.
pub const DEBUG_MODE_DAYS_MAX: u32 = 90;
/// Sessions held at most. A stranger can make the proxy record a session (the PBX, not the
/// proxy, authenticates), so the table has a bound: beyond it the least recently used session
/// is dropped (and counted), which costs a real softphone nothing but its record.
pub const SESSIONS_MAX: usize = 100_000;
/// Debug records held at most; beyond it the oldest is dropped.
pub const DEBUG_RECORDS_MAX: usize = 100_000;
/// PBXs in debug mode at once at most (each is an authenticated PBX; a switch beyond it is
/// refused).
pub const DEBUG_MODES_MAX: usize = 10_000;
/// A session's last use is written to storage when it moved by more than this: a write per
/// SIP message would be too many, and a crash loses at most this much of the last use (which
/// only makes the record due earlier).
pub const LAST_USE_WRITE_AFTER: Duration = Duration::from_secs(60);
/// The reaper deletes what fell due at most this long after it fell due, and wakes at most
/// once per interval: one storage transaction per run.
pub const REAPER_INTERVAL: Duration = Duration::from_secs(3_600);

/// Field lengths taken at most; a longer value is refused (nothing a softphone sends needs
/// more).
pub const USER_BYTES_MAX: usize = 128;
pub const PBX_SERIAL_BYTES_MAX: usize = 64;
pub const PUSH_TOKEN_BYTES_MAX: usize = crate::push::rfc8599::PN_VALUE_BYTES_MAX;
pub const DESTINATION_BYTES_MAX: usize = 256;

const _: () = assert!(DEBUG_MODE_DAYS <= DEBUG_MODE_DAYS_MAX);
const _: () = assert!(LAST_USE_WRITE_AFTER.as_secs() < REAPER_INTERVAL.as_secs());

/// What identifies a session: the PBX, the user, and the softphone's address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    pub pbx_serial: String,
    pub user: String,
    pub softphone: SocketAddr,
}

/// One softphone's session through the proxy (category `proxy-session`): the seed's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The softphone's external IP address and port, as the proxy sees it.
    pub softphone: SocketAddr,
    /// The PBX's external IP address and port (its link to the proxy).
    pub pbx: SocketAddr,
    /// The PBX's serial number.
    pub pbx_serial: String,
    /// The softphone's user name (the To user of its REGISTER): the extension.
    pub user: String,
    /// The push token the softphone registered with (RFC 8599 `pn-prid`), if any.
    pub push_token: Option<String>,
    pub last_use: Timestamp,
}

impl SessionRecord {
    pub fn key(&self) -> SessionKey {
        SessionKey { pbx_serial: self.pbx_serial.clone(), user: self.user.clone(), softphone: self.softphone }
    }
}

/// A call destination's real name, recorded while debug mode is on (category `proxy-debug`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugRecord {
    pub pbx_serial: String,
    /// The calling softphone's user.
    pub user: String,
    /// The destination: its display name and number (`Anna Schmidt <201>`), or the number.
    pub destination: String,
    pub at: Timestamp,
}

impl DebugRecord {
    /// Whether the record is about `user`: as the caller, or as the destination's number.
    pub fn involves(&self, user: &str) -> bool {
        self.user == user || destination_number(&self.destination) == user
    }
}

/// The number of a destination as [`DebugRecord`] writes it: inside the last `<…>`, or all.
pub fn destination_number(destination: &str) -> &str {
    match destination.strip_suffix('>').and_then(|d| d.rsplit_once('<')) {
        Some((_, number)) => number,
        None => destination,
    }
}

/// How much the ledger holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCounts {
    pub sessions: usize,
    pub debug_records: usize,
    /// PBXs in debug mode.
    pub debug_modes: usize,
}

/// What the ledger holds about one user, for a subject-access request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerExport {
    pub sessions: Vec<SessionRecord>,
    pub debug_records: Vec<DebugRecord>,
}

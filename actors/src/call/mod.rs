//! Calls: a back-to-back user agent (B2BUA) that puts a caller through to every contact of the
//! dialled extension, anchors their media, and writes a call detail record when it ends.
//!
//! - [`leg`]: [`Leg`], the sans-IO machine of one SIP dialog (RFC 3261 §12–15), as UAS toward
//!   the caller (the A-leg) or as UAC toward one callee contact (a B-leg).
//! - [`b2bua`]: [`Call`], the sans-IO machine that joins the legs: forking, first 2xx wins,
//!   no-answer timeout, CANCEL, BYE either way, re-INVITE/UPDATE relayed, SDP offer/answer
//!   rewritten so media flows through pbx's ports, and the CDR.
//! - [`core`]: [`CallCore`], one call as a sans-IO unit: the call machine and its legs', a
//!   leg's events looped back into the call at once. The call actor drives it in the product,
//!   the simulator on virtual time.
//! - [`destination`]: where a B-leg's requests go, the Contact or the REGISTER's source (NAT).
//! - [`actor`]: the ractor shells. One actor per call (its legs are machines inside it), and
//!   the `calls` actor that starts calls, lists them and hangs up the legs of a call whose
//!   actor failed.
//!
//! Routing needs no table of dialogs: every tag and branch pbx makes names the leg it belongs
//! to ([`LegId::tag`], [`LegId::branch`]), so the endpoint finds the leg of an in-dialog request
//! from its To tag, of a response from its Via branch. The leg then checks the rest of the
//! dialog's identity (RFC 3261 §12.2.2: Call-ID and the remote tag; a response's Call-ID) and
//! answers 481 or drops what does not belong: a tag alone opens nothing.

pub mod actor;
pub mod b2bua;
pub mod core;
pub mod destination;
pub mod leg;
pub mod transfer;
pub mod wake;

pub use b2bua::{Call, CallConfig, CallInput, CallOutput, RoomAnswer, SrtpSetup};
pub use core::{CallCore, CoreInput, CoreOutput};
pub use leg::{Leg, LegCommand, LegEvent, LegInput, LegOutput, SipIn, SipOut};

use crate::Timestamp;
use crate::cdr::{Cdr, Disposition, HangupSide};
use crate::registrar::Route;
use crate::sip::message::{Request, Transport};
use crate::sip::transaction::ServerKey;
use std::net::SocketAddr;

/// A call the endpoint asks the calls actor to run.
#[derive(Debug)]
pub struct CallStart {
    pub a: LegId,
    pub key: ServerKey,
    pub invite: Request,
    pub source: SocketAddr,
    pub transport: Transport,
    pub route: Route,
    /// One per contact of `route.contacts`, then one per contact of `route.forwards` (busy
    /// first), for the forward the call may take.
    pub forks: Vec<LegId>,
}

impl CallStart {
    /// The call's legs: the caller's, then one per contact.
    pub fn legs(&self) -> Vec<LegId> {
        std::iter::once(self.a).chain(self.forks.iter().copied()).collect()
    }

    /// The record of this call as it starts: "failed, did not start" until the call says
    /// otherwise. The calls shell keeps it to store should the call's actor never come up or fail.
    pub fn cdr(&self, id: u64, now: Timestamp) -> Cdr {
        Cdr {
            id,
            call_id: self.invite.call_id().unwrap_or_default(),
            caller: self.route.caller.clone(),
            callee: self.route.callee.clone(),
            start: now,
            answer: None,
            end: now,
            disposition: Disposition::Failed { reason: "call did not start".into() },
            hangup: Some(HangupSide::Pbx),
            codec_caller: None,
            codec_callee: None,
            media: Default::default(),
            follows: None,
            transfer: None,
        }
    }
}

/// The record of a call that did not start (`error`: why — no RTP ports, most likely), as
/// the calls shell and the simulator store it.
pub fn not_started(mut cdr: Cdr, now: Timestamp, error: &dyn std::fmt::Display) -> Cdr {
    cdr.end = now;
    cdr.disposition = Disposition::Failed { reason: format!("call did not start: {error}") };
    cdr
}

pub use crate::splitmix64;

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

/// One leg of one call: 128 bits from the endpoint's CSPRNG (RFC 3261 §19.3 asks tags for
/// at least 32 random bits; RFC 4122-strength here). Every tag, branch and Call-ID pbx writes for
/// the leg carries it, so nobody who has not seen the dialog can name it (an off-path stranger
/// cannot guess 2^128), and one call teaches nothing about the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u128);

const BRANCH_PREFIX: &str = "z9hG4bK";
/// Hex digits of a leg id in a tag.
const LEG_TAG_CHARS: usize = 32;

impl LegId {
    /// pbx's tag in this leg's dialog: the leg id, 32 hex digits.
    pub fn tag(self) -> String {
        format!("{:032x}", self.0)
    }

    /// The leg a tag of ours names; `None` for a tag pbx did not make.
    pub fn from_tag(tag: &str) -> Option<LegId> {
        let hex = tag.len() == LEG_TAG_CHARS && tag.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| u128::from_str_radix(tag, 16).ok().map(LegId)).flatten()
    }

    /// A Via branch for this leg's `n`th request (RFC 3261 §8.1.1.7 magic cookie first).
    pub fn branch(self, n: u64) -> String {
        format!("{BRANCH_PREFIX}{:032x}.{n:x}", self.0)
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

    /// The Call-ID of the dialog pbx starts for this leg (B-legs).
    pub fn call_id(self) -> String {
        format!("{:032x}@pbx", self.0)
    }
}

impl std::fmt::Display for LegId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// An extension's media encryption policy (`media_encryption` in its config), for the legs
/// toward its phones. SRTP is keyed by SDES, whose keys travel in the SDP: pbx puts them only
/// into SDP sent over SIP over TLS, and takes them only from SDP that came over it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaEncryption {
    /// SRTP when the phone is on TLS and offers or accepts it, else plain RTP.
    #[default]
    Optional,
    /// SRTP or no call: a phone not on TLS, or one that offers or accepts no usable key, gets
    /// 488 (as caller) or is not called (as callee).
    Required,
    /// Plain RTP only; an RTP/SAVP offer gets 488.
    Off,
}

/// The media encryption of every extension: those named in the config, the default for the
/// rest (API-made extensions among them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaPolicy {
    pub default: MediaEncryption,
    pub extensions: std::collections::HashMap<String, MediaEncryption>,
}

impl MediaPolicy {
    pub fn of(&self, extension: &str) -> MediaEncryption {
        self.extensions.get(extension).copied().unwrap_or(self.default)
    }
}

impl MediaEncryption {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaEncryption::Optional => "optional",
            MediaEncryption::Required => "required",
            MediaEncryption::Off => "off",
        }
    }
}

/// Where pbx itself is reached for SIP: written into Via and Contact of what it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSip {
    pub address: SocketAddr,
    /// Where pbx takes SIP over TLS, when it does.
    pub tls: Option<SocketAddr>,
}

impl LocalSip {
    /// The address pbx names in Via and Contact on a leg of this transport.
    pub fn for_transport(&self, transport: crate::sip::message::Transport) -> SocketAddr {
        match (transport, self.tls) {
            (crate::sip::message::Transport::Tls, Some(tls)) => tls,
            _ => self.address,
        }
    }
}

#[cfg(test)]
mod tests;

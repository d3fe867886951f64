//! The RTP relay of one anchored call, as a sans-IO machine: what arrives on side A's local
//! ports goes out of side B's to B's phone, and the other way round.
//!
//! What it does (RFC 3550 unless named):
//! - **Sources: strict RTP with source learning** (the defence against "RTP bleed", Asterisk
//!   CVE-2017-14099). A side's expected RTP source is the address its SDP declared; packets
//!   from it are accepted, and it is where the other side's audio goes. Behind NAT a phone's
//!   packets come from elsewhere, so for [`LEARNING_WINDOW_MS`] after each `Configure` (each
//!   offer/answer) pbx may *learn* another source: after [`LEARNING_PACKETS`] packets from it
//!   in a row, one SSRC, consecutive sequence numbers (up to [`LEARNING_CANDIDATES_MAX`]
//!   sources are tracked at once). The learned source is then that side's source and
//!   destination (symmetric RTP, RFC 4961) and nothing else is learned until the next
//!   `Configure`. Within the window a packet from the SDP address still takes over from a
//!   learned source (the address the phone declared in authenticated SIP beats one inferred
//!   from packets); once it has been heard, the window closes. A packet from any other
//!   address is dropped and counted in [`SideStats::foreign`], whatever its SSRC (before a
//!   side's first SDP its packets are dropped uncounted there: whose they are is not known
//!   yet, and a phone's first packets often overtake its answer). The old rule
//!   (a new SSRC from a new source re-latches) let one packet from anywhere take the callee's
//!   audio. A `Configure` with the same SDP address keeps a learned source (a NAT phone's
//!   hold and resume keep their audio); one with a new address forgets it. A side whose SDP
//!   names no address (c=0.0.0.0, the RFC 2543 hold) is sent nothing and learns nothing. The
//!   payload type is checked before a packet can change any state (learning, statistics,
//!   inactivity). Unusable addresses (port 0, unspecified, multicast, broadcast) are never a
//!   source or a destination.
//!
//!   Compared: Asterisk's `strictrtp = yes` (seqno learning) accepts the SDP address at once,
//!   another source after `probation` (default 4) sequential packets, and locks 5 s after the
//!   remote address was set; rtpengine's default `endpoint-learning = delayed` takes the
//!   first source seen after 3 s, `heuristic` preferring the SDP address. pbx takes
//!   Asterisk's numbers (4 packets, 5 s), its priority for the SDP address, and learns
//!   nothing for a side without one. What remains: an attacker who knows a port (they are
//!   drawn at random, see `pool`) and streams to it within the window of a phone whose SDP
//!   address never sends (a NAT phone) can race it and win; one who sprays more sources than
//!   [`LEARNING_CANDIDATES_MAX`] can keep a NAT phone from being learned (one-way audio until
//!   the next re-INVITE). A NAT binding that changes mid-call without a re-INVITE is not
//!   followed.
//! - **RTCP sources.** Accepted from the SDP's RTCP address (`a=rtcp`, else the RTP port + 1)
//!   and, once a NAT source was learned for RTP, from that source's port + 1 (where NATs that
//!   keep port parity put it); sent to where it last came from among those, else the learned
//!   RTP source's port + 1, else the SDP's. RTCP learns nothing on its own: it has no sequence
//!   numbers to prove a stream, and losing it behind a NAT that maps it elsewhere costs only
//!   the reports (pbx needs none). Anything else is foreign, as for RTP.
//! - **One outbound stream per side.** Toward each phone pbx sends as one source of its own:
//!   an SSRC and initial sequence number and timestamp drawn from the seed (§5.1). Sequence
//!   numbers and timestamps are the input's plus an offset, so loss and reordering upstream
//!   show through; when the input SSRC changes the offsets are recomputed so the output
//!   continues (next sequence number, timestamp advanced by the wall time since the last
//!   packet) and the marker bit is set. A packet that is dropped here leaves a sequence gap
//!   that the receiving phone counts as loss.
//! - **Payload.** The audio PT of each side is its negotiated G.711 law; when the laws
//!   differ the payload is transcoded (same sample count, timestamp unchanged) and the PT set
//!   to the destination's. RFC 4733 telephone-event packets get the destination's event PT,
//!   or are dropped when it has none. Comfort noise (RFC 3389, PT 13) counts as traffic but is
//!   not forwarded; any other PT is dropped before it touches anything. Dropped packets are
//!   counted in [`SideStats::dropped`].
//! - **RTCP** compounds are forwarded to the other side with every sender SSRC (SR, RR, SDES,
//!   BYE) rewritten to pbx's outbound SSRC toward that side. Report blocks pass through as
//!   is: their SSRC names pbx's stream toward the reporter and their figures describe that
//!   leg only; the far phone ignores blocks about sources it does not know.
//! - **Inactivity.** A side whose SDP says it sends and that has sent no RTP for
//!   [`RelayConfig::inactivity`], counted from its (re)configuration or its last packet, gives
//!   one [`RelayOutput::Inactive`]; another only after new traffic and a new silence (or a new
//!   `Configure`). Comfort noise counts as traffic; RTCP and foreign packets do not.
//! - **Statistics** per side: what arrived on its ports and left from them, and the loss
//!   (§A.3, with the §A.1 sequence tracking) and interarrival jitter (§A.8) of the stream its
//!   phone sends, restarted when that SSRC changes. Byte and packet counts include RTCP and
//!   foreign packets.
//!
//! Deliberately not done: no jitter buffer or re-timing (packets leave as they come), no
//! SRTP, no RTCP of its own (no reports are generated, only forwarded), no rtcp-mux (RFC
//! 5761), no codecs beyond G.711, no comfort-noise generation.
//!
//! Calling contract (like every machine here): `handle(now, input)`, then drain
//! `poll_output()` until `None`, then arm a wake-up at `poll_timeout()` and call
//! `handle(now, RelayInput::Timeout)` when it passes. `now` never goes backwards (an earlier
//! one is taken as the latest seen). Packets are rewritten in place when the caller hands over
//! the only reference to their bytes, so forwarding allocates nothing. A shell that reads into
//! a buffer of its own calls [`Relay::relay_in_place`] instead of handing over a packet: the
//! datagram is rewritten in that buffer and the answer says where to send it, with no output
//! queued (the same rules, counters and state changes as a `Packet` input).

use super::g711::G711;
use super::rtp::{RtcpCompound, RtpPacket, TelephoneEvent, rewrite_rtcp_sender_ssrc, rewrite_rtp_header};
use crate::time::Timestamp;
use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Outputs waiting for the caller. One input makes at most two, so a caller that drains after
/// every `handle` never reaches it; beyond it outputs are dropped and counted.
pub const OUTPUTS_MAX: usize = 16;
/// How long after a side's `Configure` a source other than its SDP address may be learned,
/// and the SDP address may take over from a learned one: Asterisk's strict-RTP learning time
/// (`STRICT_RTP_LEARN_TIMEOUT`, 5 s), long enough for a phone to start sending after the
/// answer, short enough that the race is over early in the call.
pub const LEARNING_WINDOW_MS: u64 = 5_000;
/// Packets from one new source, one SSRC, consecutive sequence numbers, that make it learned:
/// Asterisk's `probation` default (and pjmedia's). A stranger must know the port and send a
/// plausible stream; one stray packet changes nothing.
pub const LEARNING_PACKETS: u16 = 4;
/// Sources tracked at once as learning candidates; beyond it the least advanced (the newest
/// among them) is forgotten, so a spray of sources cannot grow memory.
pub const LEARNING_CANDIDATES_MAX: usize = 4;
/// RFC 3389 comfort noise, static PT (RFC 3551 §6).
const COMFORT_NOISE_PT: u8 = 13;
/// §A.1: a forward jump of the sequence number up to this is loss, not a restart.
const SEQUENCE_DROPOUT_MAX: u16 = 3_000;
/// §A.1: a backward jump up to this is reordering, not a restart.
const SEQUENCE_MISORDER_MAX: u16 = 100;
/// µs per tick of the 8 kHz RTP clock of G.711 and telephone-event.
const TICK_US: u64 = 125;

const _: () = assert!(OUTPUTS_MAX >= 2);
const _: () = assert!(LEARNING_PACKETS >= 2, "one packet must never be enough to learn a source");
const _: () = assert!(LEARNING_CANDIDATES_MAX >= 1);
/// The two call legs: A is the caller, B the callee.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayConfig {
    /// Silence from a sending side after which it is reported inactive (RFC 3550 gives no
    /// number; 60 s is what Asterisk's `rtptimeout` examples and most SBCs use).
    pub inactivity: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig { inactivity: Duration::from_secs(60) }
    }
}

/// What one side's SDP says about its phone's media.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerMedia {
    /// `c=` and `m=` port; `None` (or port 0, or an unspecified address) means none yet.
    pub rtp: Option<SocketAddr>,
    /// `a=rtcp`, else the RTP port + 1.
    pub rtcp: Option<SocketAddr>,
    /// The PT this side's phone sends and expects, and its law.
    pub codec: (u8, G711),
    /// The PT of `telephone-event/8000`, if negotiated.
    pub telephone_event: Option<u8>,
    /// False when the SDP direction is recvonly or inactive: the phone will not send (hold),
    /// so its inactivity clock is off.
    pub sends: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Rtp,
    Rtcp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayInput {
    /// The side's SDP (first offer/answer, or a re-INVITE). Replaces the previous one.
    Configure {
        side: Side,
        peer: PeerMedia,
    },
    /// A datagram that arrived on `side`'s local RTP or RTCP port.
    Packet {
        side: Side,
        kind: PacketKind,
        source: SocketAddr,
        bytes: Bytes,
    },
    Timeout,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayOutput {
    /// Send `bytes` from `side`'s local port of `kind` to `destination`.
    Transmit { side: Side, kind: PacketKind, destination: SocketAddr, bytes: Bytes },
    /// The side's phone has been silent for the configured time; once per silence.
    Inactive { side: Side },
}

/// Where a packet relayed in place goes: out of `side`'s local port of `kind`, to `destination`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub side: Side,
    pub kind: PacketKind,
    pub destination: SocketAddr,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SideStats {
    /// Datagrams (RTP and RTCP) that arrived on this side's ports, and their bytes.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Datagrams sent from this side's ports to its phone, and their bytes.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// RFC 3550 §A.3 cumulative loss of the RTP this side's phone sent, over all its SSRCs.
    pub lost: u64,
    /// RFC 3550 §A.8 interarrival jitter of the RTP this side's phone sends, in µs.
    pub jitter_us: u64,
    /// Arrived here and not forwarded: malformed, unknown PT, foreign or still-learning
    /// source, no destination.
    pub dropped: u64,
    /// Of `dropped`: RTP and RTCP from an address that is not (and could not become) this
    /// side's source; see the module doc. The `pbx_rtp_foreign_packets_total` metric. Packets
    /// before the side's first SDP are not counted here: pbx does not know its source yet, and
    /// a phone's first packets routinely overtake the answer that tells it.
    pub foreign: u64,
    /// RFC 4733 telephone-event packets from this side's phone.
    pub events: u64,
}

/// Whether an address can be a media source or destination: a port, and a unicast address
/// (pbx never sends media to, nor accepts it from, an unspecified, multicast or broadcast one).
fn usable(address: SocketAddr) -> bool {
    let unicast = match address.ip().to_canonical() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()),
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    };
    address.port() != 0 && unicast
}

/// Where a packet came from, as far as a side's sources go (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// The side's source now: its SDP address, or the source learned for it.
    Current,
    /// The SDP address while a learned source is current, within the window: it takes over.
    Declared,
    /// Another address within the window, before the stream was confirmed: it may be learned.
    Candidate,
    /// Anything else: dropped and counted.
    Foreign,
}

/// A source that sent packets in sequence during the learning window.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    source: SocketAddr,
    ssrc: u32,
    next_seq: u16,
    packets: u16,
}

/// The RTP source of one side: what its SDP declared, what was learned, and the window.
#[derive(Clone, Debug, Default)]
struct RtpSource {
    /// The SDP's RTP address, if usable.
    declared: Option<SocketAddr>,
    /// A source learned in a window, kept across `Configure`s with the same SDP address.
    learned: Option<SocketAddr>,
    /// Learning is allowed before this instant (set by each `Configure` with an address).
    learning_until: Option<Timestamp>,
    /// A packet from the current source came since the last `Configure`: no more candidates.
    confirmed: bool,
    candidates: Vec<Candidate>,
}

impl RtpSource {
    fn configure(&mut self, now: Timestamp, declared: Option<SocketAddr>) {
        let declared = declared.filter(|a| usable(*a));
        if declared != self.declared {
            self.learned = None;
        }
        self.declared = declared;
        self.confirmed = false;
        self.candidates.clear();
        self.learning_until = declared.map(|_| now + Duration::from_millis(LEARNING_WINDOW_MS));
    }

    /// Where this side's packets are accepted from and its audio goes.
    fn current(&self) -> Option<SocketAddr> {
        self.learned.or(self.declared)
    }

    fn learning(&self, now: Timestamp) -> bool {
        self.learning_until.is_some_and(|until| now < until)
    }

    /// Where `source` stands; changes nothing.
    fn origin(&self, now: Timestamp, source: SocketAddr) -> Origin {
        if !usable(source) {
            Origin::Foreign
        } else if Some(source) == self.current() {
            Origin::Current
        } else if Some(source) == self.declared && self.learning(now) {
            Origin::Declared
        } else if !self.confirmed && self.learning(now) {
            Origin::Candidate
        } else {
            Origin::Foreign
        }
    }

    /// A well-formed packet from the current or declared source: the stream is confirmed.
    /// Heard from the SDP address, that address is the source for good and the window closes.
    fn confirm(&mut self, source: SocketAddr) {
        if Some(source) == self.declared {
            self.learned = None;
            self.learning_until = None;
        } else {
            self.learned = Some(source);
        }
        self.confirmed = true;
        self.candidates.clear();
    }

    /// A well-formed packet from a candidate; whether its source is now learned.
    fn probe(&mut self, source: SocketAddr, ssrc: u32, seq: u16) -> bool {
        let next_seq = seq.wrapping_add(1);
        match self.candidates.iter_mut().find(|c| c.source == source) {
            Some(c) => {
                c.packets = if c.ssrc == ssrc && c.next_seq == seq { c.packets + 1 } else { 1 };
                c.ssrc = ssrc;
                c.next_seq = next_seq;
                if c.packets >= LEARNING_PACKETS {
                    self.confirm(source);
                    return true;
                }
            }
            None => {
                if self.candidates.len() >= LEARNING_CANDIDATES_MAX {
                    // The least advanced goes; among equals the newest, so a spray of fresh
                    // sources cannot push out a stream that started before it.
                    let (i, _) = self
                        .candidates
                        .iter()
                        .enumerate()
                        .min_by_key(|(i, c)| (c.packets, std::cmp::Reverse(*i)))
                        .expect("the list is full, so not empty");
                    self.candidates.remove(i);
                }
                self.candidates.push(Candidate { source, ssrc, next_seq, packets: 1 });
            }
        }
        false
    }
}

/// The RTCP source of one side (see the module doc: no learning of its own).
#[derive(Clone, Copy, Debug, Default)]
struct RtcpSource {
    /// The SDP's RTCP address, if usable.
    declared: Option<SocketAddr>,
    /// Where the side's RTCP last came from, among the accepted addresses.
    heard: Option<SocketAddr>,
}

impl RtcpSource {
    fn configure(&mut self, declared: Option<SocketAddr>) {
        let declared = declared.filter(|a| usable(*a));
        if declared != self.declared {
            self.heard = None;
        }
        self.declared = declared;
    }

    /// The RTCP counterpart of a learned RTP source: its port + 1.
    fn beside(rtp: &RtpSource) -> Option<SocketAddr> {
        let learned = rtp.learned?;
        Some(SocketAddr::new(learned.ip(), learned.port().checked_add(1)?))
    }

    fn accepts(&self, rtp: &RtpSource, source: SocketAddr) -> bool {
        usable(source) && (Some(source) == self.declared || Some(source) == RtcpSource::beside(rtp))
    }

    fn destination(&self, rtp: &RtpSource) -> Option<SocketAddr> {
        self.heard.filter(|a| self.accepts(rtp, *a)).or(RtcpSource::beside(rtp)).or(self.declared)
    }
}

/// Reception statistics of the stream one phone sends (RFC 3550 §A.1, §A.3, §A.8).
#[derive(Clone, Copy, Debug, Default)]
struct Reception {
    ssrc: Option<u32>,
    base_seq: u64,
    max_seq: u16,
    cycles: u64,
    /// §A.1's `bad_seq`: after a big jump, the sequence number that confirms a restart.
    bad_seq: Option<u16>,
    received: u64,
    /// Loss of earlier SSRCs and of sequences before a restart.
    lost_before: u64,
    transit: Option<u32>,
    /// §A.8's integer form: the jitter in ticks, times 16.
    jitter_x16: u64,
}

impl Reception {
    fn packet(&mut self, ssrc: u32, seq: u16, timestamp: u32, now: Timestamp, audio: bool) {
        if self.ssrc != Some(ssrc) {
            self.restart(ssrc, seq);
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta < SEQUENCE_DROPOUT_MAX {
                if seq < self.max_seq {
                    self.cycles += 1 << 16;
                }
                self.max_seq = seq;
                self.received += 1;
            } else if u32::from(delta) <= (1 << 16) - u32::from(SEQUENCE_MISORDER_MAX) {
                // A big jump: a restart only if the next packet follows it (§A.1).
                if self.bad_seq == Some(seq) {
                    self.restart(ssrc, seq);
                } else {
                    self.bad_seq = Some(seq.wrapping_add(1));
                    return;
                }
            } else {
                self.received += 1; // duplicate or reordered
            }
        }
        if audio {
            // §A.8: arrival and timestamp in the same 8 kHz units; wrapping is harmless since
            // only differences of transit times are used.
            let transit = ((now.as_micros() / TICK_US) as u32).wrapping_sub(timestamp);
            if let Some(previous) = self.transit {
                let d = transit.wrapping_sub(previous) as i32;
                let d = u64::from(d.unsigned_abs());
                self.jitter_x16 = (self.jitter_x16 + d).saturating_sub((self.jitter_x16 + 8) >> 4);
            }
            self.transit = Some(transit);
        }
    }

    fn restart(&mut self, ssrc: u32, seq: u16) {
        *self = Reception {
            ssrc: Some(ssrc),
            base_seq: u64::from(seq),
            max_seq: seq,
            received: 1,
            lost_before: self.lost(),
            ..Reception::default()
        };
    }

    fn lost(&self) -> u64 {
        let current = if self.ssrc.is_some() {
            let expected = (self.cycles + u64::from(self.max_seq) + 1).saturating_sub(self.base_seq);
            expected.saturating_sub(self.received)
        } else {
            0
        };
        self.lost_before + current
    }

    fn jitter_us(&self) -> u64 {
        (self.jitter_x16 >> 4) * TICK_US
    }
}

/// How the input stream maps onto pbx's outbound stream toward one side.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    input_ssrc: u32,
    seq_offset: u16,
    ts_offset: u32,
}

/// pbx's outbound RTP stream toward one side's phone.
#[derive(Clone, Copy, Debug)]
struct Sending {
    ssrc: u32,
    mapping: Option<Mapping>,
    /// The highest sequence number and timestamp sent, and when. Before the first packet they
    /// are random (§5.1) and the first packet goes out one above them.
    last_seq: u16,
    last_ts: u32,
    last_at: Option<Timestamp>,
}

impl Sending {
    fn new(rng: &mut StdRng) -> Sending {
        Sending { ssrc: rng.random(), mapping: None, last_seq: rng.random(), last_ts: rng.random(), last_at: None }
    }

    /// The outbound marker, sequence number and timestamp of an input packet.
    fn map(&mut self, now: Timestamp, ssrc: u32, marker: bool, seq: u16, ts: u32) -> (bool, u16, u32) {
        let switched = self.mapping.is_none_or(|m| m.input_ssrc != ssrc);
        if switched {
            let elapsed =
                self.last_at.map_or(0, |at| (now.as_micros().saturating_sub(at.as_micros()) / TICK_US) as u32);
            self.mapping = Some(Mapping {
                input_ssrc: ssrc,
                seq_offset: self.last_seq.wrapping_add(1).wrapping_sub(seq),
                ts_offset: self.last_ts.wrapping_add(elapsed.max(1)).wrapping_sub(ts),
            });
        }
        let mapping = self.mapping.expect("set above");
        let (out_seq, out_ts) = (seq.wrapping_add(mapping.seq_offset), ts.wrapping_add(mapping.ts_offset));
        // Only forward movement counts: a late reordered packet must not pull them back.
        if switched || (out_seq.wrapping_sub(self.last_seq) as i16) > 0 {
            self.last_seq = out_seq;
        }
        if switched || (out_ts.wrapping_sub(self.last_ts) as i32) > 0 {
            self.last_ts = out_ts;
        }
        self.last_at = Some(now);
        (marker || switched, out_seq, out_ts)
    }
}

#[derive(Debug)]
struct SideState {
    peer: Option<PeerMedia>,
    rtp_source: RtpSource,
    rtcp_source: RtcpSource,
    reception: Reception,
    sending: Sending,
    /// When the phone last sent RTP, or the side was configured.
    active_at: Timestamp,
    inactive_reported: bool,
    stats: SideStats,
}

impl SideState {
    fn inactive_at(&self, inactivity: Duration) -> Option<Timestamp> {
        let peer = self.peer.as_ref()?;
        (peer.sends && !self.inactive_reported).then(|| self.active_at + inactivity)
    }
}

/// See the module doc for what it does and the calling contract.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    now: Timestamp,
    sides: [SideState; 2],
    outputs: VecDeque<RelayOutput>,
}

/// What an RTP packet carries, by its PT; `None` of these: dropped before anything changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carries {
    Audio,
    Event,
    ComfortNoise,
}

impl Relay {
    pub fn new(config: RelayConfig, seed: u64, now: Timestamp) -> Relay {
        let mut rng = StdRng::seed_from_u64(seed);
        let side = |sending| SideState {
            peer: None,
            rtp_source: RtpSource::default(),
            rtcp_source: RtcpSource::default(),
            reception: Reception::default(),
            sending,
            active_at: now,
            inactive_reported: false,
            stats: SideStats::default(),
        };
        let a = Sending::new(&mut rng);
        let mut b = Sending::new(&mut rng);
        if b.ssrc == a.ssrc {
            b.ssrc = !a.ssrc;
        }
        Relay { config, now, sides: [side(a), side(b)], outputs: VecDeque::with_capacity(OUTPUTS_MAX) }
    }

    pub fn handle(&mut self, now: Timestamp, input: RelayInput) {
        self.now = self.now.max(now);
        let now = self.now;
        match input {
            RelayInput::Configure { side, peer } => self.configure(now, side, peer),
            RelayInput::Packet { side, kind, source, bytes } => {
                let mut buf = writable(bytes);
                if let Some(Forward { side: to, kind, destination }) = self.forward(now, side, kind, source, &mut buf) {
                    let output = RelayOutput::Transmit { side: to, kind, destination, bytes: buf.freeze() };
                    self.emit(side, output);
                }
            }
            RelayInput::Timeout => {
                for side in [Side::A, Side::B] {
                    let s = &mut self.sides[side.index()];
                    if s.inactive_at(self.config.inactivity).is_some_and(|at| at <= now) {
                        s.inactive_reported = true;
                        self.emit(side, RelayOutput::Inactive { side });
                    }
                }
            }
        }
    }

    /// A datagram that arrived on `side`'s local port of `kind`, relayed in `packet` itself
    /// (rewritten there when it is to be sent): where to send it, or `None` when it is dropped.
    /// Counts as a `Packet` input and its `Transmit` would, and queues no output.
    pub fn relay_in_place(
        &mut self,
        now: Timestamp,
        side: Side,
        kind: PacketKind,
        source: SocketAddr,
        packet: &mut [u8],
    ) -> Option<Forward> {
        self.now = self.now.max(now);
        let forward = self.forward(self.now, side, kind, source, packet)?;
        let stats = &mut self.sides[forward.side.index()].stats;
        stats.packets_out += 1;
        stats.bytes_out += packet.len() as u64;
        Some(forward)
    }

    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.sides.iter().filter_map(|s| s.inactive_at(self.config.inactivity)).min()
    }

    pub fn stats(&self, side: Side) -> SideStats {
        let s = &self.sides[side.index()];
        SideStats { lost: s.reception.lost(), jitter_us: s.reception.jitter_us(), ..s.stats }
    }

    /// Where the side's RTP is accepted from and its audio sent: its SDP address or the source
    /// learned for it; `None` before its SDP, or while it names no address.
    pub fn source(&self, side: Side) -> Option<SocketAddr> {
        self.sides[side.index()].rtp_source.current()
    }

    fn configure(&mut self, now: Timestamp, side: Side, peer: PeerMedia) {
        let s = &mut self.sides[side.index()];
        s.rtp_source.configure(now, peer.rtp);
        s.rtcp_source.configure(peer.rtcp);
        s.peer = Some(peer);
        s.active_at = now;
        s.inactive_reported = false;
    }

    /// Counts a datagram in, rewrites it in place and says where it goes, or counts it dropped.
    fn forward(
        &mut self,
        now: Timestamp,
        side: Side,
        kind: PacketKind,
        source: SocketAddr,
        packet: &mut [u8],
    ) -> Option<Forward> {
        let stats = &mut self.sides[side.index()].stats;
        stats.packets_in += 1;
        stats.bytes_in += packet.len() as u64;
        let forwarded = match kind {
            PacketKind::Rtp => self.rtp(now, side, source, packet),
            PacketKind::Rtcp => self.rtcp(side, source, packet),
        };
        if forwarded.is_none() {
            self.sides[side.index()].stats.dropped += 1;
        }
        forwarded
    }

    /// Where to send an RTP packet from `from`'s phone (rewritten in place), or `None` to drop it.
    fn rtp(&mut self, now: Timestamp, from: Side, source: SocketAddr, bytes: &mut [u8]) -> Option<Forward> {
        let to = from.other();
        let s = &mut self.sides[from.index()];
        let peer = s.peer.as_ref()?;
        let origin = s.rtp_source.origin(now, source);
        if origin == Origin::Foreign {
            s.stats.foreign += 1;
            return None;
        }
        // Nothing below changes state before the packet proved well-formed with a known PT.
        let packet = RtpPacket::parse(bytes)?;
        let (ssrc, seq, ts, marker, pt) =
            (packet.ssrc(), packet.sequence(), packet.timestamp(), packet.marker(), packet.payload_type());
        let payload = packet.payload_range();
        let carries = if pt == peer.codec.0 {
            Carries::Audio
        } else if Some(pt) == peer.telephone_event {
            TelephoneEvent::parse(&bytes[payload.clone()])?;
            Carries::Event
        } else if pt == COMFORT_NOISE_PT {
            Carries::ComfortNoise
        } else {
            return None;
        };
        let law = peer.codec.1;
        match origin {
            Origin::Current | Origin::Declared => s.rtp_source.confirm(source),
            Origin::Candidate if s.rtp_source.probe(source, ssrc, seq) => {}
            Origin::Candidate | Origin::Foreign => return None,
        }
        s.active_at = now;
        s.inactive_reported = false;
        s.reception.packet(ssrc, seq, ts, now, carries == Carries::Audio);
        if carries == Carries::Event {
            s.stats.events += 1;
        }
        let d = &mut self.sides[to.index()];
        let destination_peer = d.peer.as_ref()?;
        let destination = d.rtp_source.current()?;
        let (out_pt, transcode) = match carries {
            Carries::Audio => {
                (destination_peer.codec.0, (law != destination_peer.codec.1).then_some(destination_peer.codec.1))
            }
            Carries::Event => (destination_peer.telephone_event?, None),
            Carries::ComfortNoise => return None,
        };
        let (marker, seq, ts) = d.sending.map(now, ssrc, marker, seq, ts);
        rewrite_rtp_header(bytes, marker, out_pt, seq, ts, d.sending.ssrc);
        if let Some(to_law) = transcode {
            law.transcode(to_law, &mut bytes[payload]);
        }
        Some(Forward { side: to, kind: PacketKind::Rtp, destination })
    }

    /// Where to send an RTCP compound from `from`'s phone (rewritten in place), or `None` to
    /// drop it.
    fn rtcp(&mut self, from: Side, source: SocketAddr, bytes: &mut [u8]) -> Option<Forward> {
        let to = from.other();
        let s = &mut self.sides[from.index()];
        s.peer.as_ref()?;
        if !s.rtcp_source.accepts(&s.rtp_source, source) {
            s.stats.foreign += 1;
            return None;
        }
        RtcpCompound::parse(bytes)?;
        s.rtcp_source.heard = Some(source);
        let d = &self.sides[to.index()];
        d.peer.as_ref()?;
        let destination = d.rtcp_source.destination(&d.rtp_source)?;
        rewrite_rtcp_sender_ssrc(bytes, d.sending.ssrc)?;
        Some(Forward { side: to, kind: PacketKind::Rtcp, destination })
    }

    /// Queues an output caused by `cause`'s traffic; a full queue drops it, counted there.
    fn emit(&mut self, cause: Side, output: RelayOutput) {
        if self.outputs.len() >= OUTPUTS_MAX {
            self.sides[cause.index()].stats.dropped += 1;
            return;
        }
        if let RelayOutput::Transmit { side, bytes, .. } = &output {
            let stats = &mut self.sides[side.index()].stats;
            stats.packets_out += 1;
            stats.bytes_out += bytes.len() as u64;
        }
        self.outputs.push_back(output);
    }
}

/// The packet's bytes, to rewrite: in place when the caller gave up its only reference, else
/// a copy.
fn writable(bytes: Bytes) -> BytesMut {
    bytes.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]))
}

#[cfg(test)]
mod tests;

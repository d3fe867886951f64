//! The RTP relay of one anchored call, as a sans-IO machine: what arrives on side A's local
//! ports goes out of side B's to B's phone, and the other way round.
//!
//! What it does (RFC 3550 unless named):
//! - **Destinations.** A side's RTP destination is the address its phone's RTP comes from
//!   (symmetric RTP, RFC 4961: phones behind NAT receive where they send), else its SDP
//!   address. RTCP is latched the same way, separately. Latch rule: the first packet latches
//!   its source and SSRC; a packet from another source is admitted, and re-latches, only if it
//!   carries a different SSRC (a re-INVITE to a new address, a fork taking over); a packet from
//!   elsewhere with the latched SSRC is a stray and dropped, so it cannot steal the stream.
//!   The latched source itself may change SSRC at will. A `Configure` whose SDP address
//!   differs from the previous one clears the latch (the phone said it moved). Packets with
//!   an unusable source (port 0, unspecified address) are dropped.
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
//!   or are dropped when it has none. Any other PT (comfort noise, a codec not negotiated) is
//!   dropped. Dropped packets are counted in [`SideStats::dropped`].
//! - **RTCP** compounds are forwarded to the other side with every sender SSRC (SR, RR, SDES,
//!   BYE) rewritten to pbx's outbound SSRC toward that side. Report blocks pass through as
//!   is: their SSRC names pbx's stream toward the reporter and their figures describe that
//!   leg only; the far phone ignores blocks about sources it does not know.
//! - **Inactivity.** A side whose SDP says it sends and that has sent no RTP for
//!   [`RelayConfig::inactivity`], counted from its (re)configuration or its last packet, gives
//!   one [`RelayOutput::Inactive`]; another only after new traffic and a new silence (or a new
//!   `Configure`). Comfort noise counts as traffic; RTCP does not.
//! - **Statistics** per side: what arrived on its ports and left from them, and the loss
//!   (§A.3, with the §A.1 sequence tracking) and interarrival jitter (§A.8) of the stream its
//!   phone sends, restarted when that SSRC changes. Byte and packet counts include RTCP.
//!
//! Deliberately not done: no jitter buffer or re-timing (packets leave as they come), no
//! SRTP, no RTCP of its own (no reports are generated, only forwarded), no rtcp-mux (RFC
//! 5761), no codecs beyond G.711, no comfort-noise generation.
//!
//! Calling contract (like every machine here): `handle(now, input)`, then drain
//! `poll_output()` until `None`, then arm a wake-up at `poll_timeout()` and call
//! `handle(now, RelayInput::Timeout)` when it passes. `now` never goes backwards (an earlier
//! one is taken as the latest seen). Packets are rewritten in place when the caller hands over
//! the only reference to their bytes, so forwarding allocates nothing.

use super::g711::G711;
use super::rtp::{RtcpCompound, RtpPacket, TelephoneEvent, rewrite_rtcp_sender_ssrc, rewrite_rtp_header};
use crate::time::Timestamp;
use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

/// Outputs waiting for the caller. One input makes at most two, so a caller that drains after
/// every `handle` never reaches it; beyond it outputs are dropped and counted.
pub const OUTPUTS_MAX: usize = 16;
/// §A.1: a forward jump of the sequence number up to this is loss, not a restart.
const SEQUENCE_DROPOUT_MAX: u16 = 3_000;
/// §A.1: a backward jump up to this is reordering, not a restart.
const SEQUENCE_MISORDER_MAX: u16 = 100;
/// µs per tick of the 8 kHz RTP clock of G.711 and telephone-event.
const TICK_US: u64 = 125;

const _: () = assert!(OUTPUTS_MAX >= 2);

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
    /// Arrived here and not forwarded: malformed, unknown PT, stray source, no destination.
    pub dropped: u64,
    /// RFC 4733 telephone-event packets from this side's phone.
    pub events: u64,
}

/// The source a side's packets are admitted from (see the module doc for the rule).
#[derive(Clone, Copy, Debug, Default)]
struct Latch {
    current: Option<(SocketAddr, Option<u32>)>,
}

impl Latch {
    /// Whether a packet from `source` with sender `ssrc` is admitted; latches or re-latches.
    fn admit(&mut self, source: SocketAddr, ssrc: Option<u32>) -> bool {
        if !usable(source) {
            return false;
        }
        let admitted = match self.current {
            None => true,
            Some((latched, _)) if latched == source => true,
            Some((_, latched_ssrc)) => ssrc.is_some() && ssrc != latched_ssrc,
        };
        if admitted {
            self.current = Some((source, ssrc.or(self.current.and_then(|(_, s)| s))));
        }
        admitted
    }

    fn address(&self) -> Option<SocketAddr> {
        self.current.map(|(address, _)| address)
    }
}

fn usable(address: SocketAddr) -> bool {
    address.port() != 0 && !address.ip().is_unspecified()
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
    rtp_latch: Latch,
    rtcp_latch: Latch,
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

/// What an admitted RTP packet carries, by its PT.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carries {
    Audio,
    Event,
    Other,
}

impl Relay {
    pub fn new(config: RelayConfig, seed: u64, now: Timestamp) -> Relay {
        let mut rng = StdRng::seed_from_u64(seed);
        let side = |sending| SideState {
            peer: None,
            rtp_latch: Latch::default(),
            rtcp_latch: Latch::default(),
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
                let stats = &mut self.sides[side.index()].stats;
                stats.packets_in += 1;
                stats.bytes_in += bytes.len() as u64;
                let forwarded = match kind {
                    PacketKind::Rtp => self.rtp(now, side, source, bytes),
                    PacketKind::Rtcp => self.rtcp(side, source, bytes),
                };
                match forwarded {
                    Some(output) => self.emit(side, output),
                    None => self.sides[side.index()].stats.dropped += 1,
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

    fn configure(&mut self, now: Timestamp, side: Side, peer: PeerMedia) {
        let s = &mut self.sides[side.index()];
        if let Some(previous) = &s.peer {
            if previous.rtp != peer.rtp {
                s.rtp_latch = Latch::default();
            }
            if previous.rtcp != peer.rtcp {
                s.rtcp_latch = Latch::default();
            }
        }
        s.peer = Some(peer);
        s.active_at = now;
        s.inactive_reported = false;
    }

    /// The packet to send for an RTP packet from `from`'s phone, or `None` to drop it.
    fn rtp(&mut self, now: Timestamp, from: Side, source: SocketAddr, bytes: Bytes) -> Option<RelayOutput> {
        let to = from.other();
        let packet = RtpPacket::parse(&bytes)?;
        let (ssrc, seq, ts, marker, pt) =
            (packet.ssrc(), packet.sequence(), packet.timestamp(), packet.marker(), packet.payload_type());
        let payload = packet.payload_range();
        let s = &mut self.sides[from.index()];
        let peer = s.peer.as_ref()?;
        if !s.rtp_latch.admit(source, Some(ssrc)) {
            return None;
        }
        s.active_at = now;
        s.inactive_reported = false;
        let carries = if pt == peer.codec.0 {
            Carries::Audio
        } else if Some(pt) == peer.telephone_event {
            Carries::Event
        } else {
            Carries::Other
        };
        s.reception.packet(ssrc, seq, ts, now, carries == Carries::Audio);
        if carries == Carries::Event {
            TelephoneEvent::parse(&bytes[payload.clone()])?;
            s.stats.events += 1;
        }
        let law = peer.codec.1;
        let d = &mut self.sides[to.index()];
        let destination_peer = d.peer.as_ref()?;
        let destination = d.rtp_latch.address().or(destination_peer.rtp.filter(|a| usable(*a)))?;
        let (out_pt, transcode) = match carries {
            Carries::Audio => {
                (destination_peer.codec.0, (law != destination_peer.codec.1).then_some(destination_peer.codec.1))
            }
            Carries::Event => (destination_peer.telephone_event?, None),
            Carries::Other => return None,
        };
        let (marker, seq, ts) = d.sending.map(now, ssrc, marker, seq, ts);
        let mut buf = writable(bytes);
        rewrite_rtp_header(&mut buf, marker, out_pt, seq, ts, d.sending.ssrc);
        if let Some(to_law) = transcode {
            law.transcode(to_law, &mut buf[payload]);
        }
        Some(RelayOutput::Transmit { side: to, kind: PacketKind::Rtp, destination, bytes: buf.freeze() })
    }

    /// The compound to send for an RTCP compound from `from`'s phone, or `None` to drop it.
    fn rtcp(&mut self, from: Side, source: SocketAddr, bytes: Bytes) -> Option<RelayOutput> {
        let to = from.other();
        let sender = RtcpCompound::parse(&bytes)?.sender_ssrc();
        let s = &mut self.sides[from.index()];
        s.peer.as_ref()?;
        if !s.rtcp_latch.admit(source, sender) {
            return None;
        }
        let d = &self.sides[to.index()];
        let destination = d.rtcp_latch.address().or(d.peer.as_ref()?.rtcp.filter(|a| usable(*a)))?;
        let mut buf = writable(bytes);
        rewrite_rtcp_sender_ssrc(&mut buf, d.sending.ssrc)?;
        Some(RelayOutput::Transmit { side: to, kind: PacketKind::Rtcp, destination, bytes: buf.freeze() })
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

use super::*;
use crate::media::g711::{ALAW_TO_ULAW, ULAW_TO_ALAW};
use proptest::prelude::*;

const PCMU: (u8, G711) = (0, G711::Mu);
const PCMA: (u8, G711) = (8, G711::A);
const CALLER_SSRC: u32 = 0x1111_1111;
const CALLEE_SSRC: u32 = 0x2222_2222;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// The caller's SDP says 192.0.2.10; behind a NAT it sends from 198.51.100.7 instead.
fn caller_sdp() -> SocketAddr {
    addr("192.0.2.10:4000")
}
fn caller_nat() -> SocketAddr {
    addr("198.51.100.7:5555")
}
fn callee() -> SocketAddr {
    addr("192.0.2.20:6000")
}

fn peer(rtp: SocketAddr, codec: (u8, G711), telephone_event: Option<u8>) -> PeerMedia {
    let rtcp = SocketAddr::new(rtp.ip(), rtp.port() + 1);
    PeerMedia { rtp: Some(rtp), rtcp: Some(rtcp), codec, telephone_event, sends: true }
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Bytes {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    rewrite_rtp_header(&mut p, false, pt, seq, ts, ssrc);
    p.extend_from_slice(payload);
    p.into()
}

/// A receiver report with no blocks, then an SDES with one CNAME chunk.
fn rtcp(ssrc: u32) -> Bytes {
    let s = ssrc.to_be_bytes();
    let rr = [0x80, 201, 0, 1, s[0], s[1], s[2], s[3]];
    let sdes = [0x81, 202, 0, 2, s[0], s[1], s[2], s[3], 1, 1, b'x', 0];
    [rr.as_slice(), sdes.as_slice()].concat().into()
}

/// A relay on virtual time that drains after every input, as the shell does.
struct Harness {
    relay: Relay,
    now: Timestamp,
    /// Packets go through `relay_in_place` (as the session's task does) instead of `handle`.
    in_place: bool,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(RelayConfig::default())
    }

    fn with(config: RelayConfig) -> Harness {
        let now = Timestamp::from_secs(1_000);
        Harness { relay: Relay::new(config, 7, now), now, in_place: false }
    }

    /// Both sides configured: A is the caller (PCMU), B the callee with `b_codec`.
    fn call(b_codec: (u8, G711)) -> Harness {
        let mut h = Harness::new();
        h.input(RelayInput::Configure { side: Side::A, peer: peer(caller_sdp(), PCMU, Some(101)) });
        h.input(RelayInput::Configure { side: Side::B, peer: peer(callee(), b_codec, Some(96)) });
        h
    }

    fn input(&mut self, input: RelayInput) -> Vec<RelayOutput> {
        self.relay.handle(self.now, input);
        std::iter::from_fn(|| self.relay.poll_output()).collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
    }

    /// A packet arriving 20 ms after the previous one.
    fn packet(&mut self, side: Side, kind: PacketKind, source: SocketAddr, bytes: Bytes) -> Vec<RelayOutput> {
        self.advance(Duration::from_millis(20));
        if self.in_place {
            let mut buf = bytes.to_vec();
            let forward = self.relay.relay_in_place(self.now, side, kind, source, &mut buf);
            assert!(self.relay.poll_output().is_none(), "relaying in place queues nothing");
            return forward
                .map(|Forward { side, kind, destination }| RelayOutput::Transmit {
                    side,
                    kind,
                    destination,
                    bytes: buf.into(),
                })
                .into_iter()
                .collect();
        }
        self.input(RelayInput::Packet { side, kind, source, bytes })
    }

    fn rtp(&mut self, side: Side, source: SocketAddr, bytes: Bytes) -> Vec<RelayOutput> {
        self.packet(side, PacketKind::Rtp, source, bytes)
    }

    fn outbound_ssrc(&self, toward: Side) -> u32 {
        self.relay.sides[toward.index()].sending.ssrc
    }
}

/// The one datagram sent: (local side, kind, destination, bytes).
fn sent(outputs: Vec<RelayOutput>) -> (Side, PacketKind, SocketAddr, Bytes) {
    match <[RelayOutput; 1]>::try_from(outputs) {
        Ok([RelayOutput::Transmit { side, kind, destination, bytes }]) => (side, kind, destination, bytes),
        Ok(other) => panic!("expected one transmit, got {other:?}"),
        Err(other) => panic!("expected one transmit, got {other:?}"),
    }
}

/// (marker, PT, seq, ts, SSRC, payload) of a sent RTP packet.
fn fields(bytes: &Bytes) -> (bool, u8, u16, u32, u32, Vec<u8>) {
    let p = RtpPacket::parse(bytes).expect("the relay sends valid RTP");
    (p.marker(), p.payload_type(), p.sequence(), p.timestamp(), p.ssrc(), p.payload().to_vec())
}

/// Nothing is forwarded toward a side before its SDP is known, nor from a side before its
/// own; both are counted as dropped.
#[test]
fn forwards_only_once_both_sides_are_configured() {
    let mut h = Harness::new();
    assert!(h.rtp(Side::A, caller_sdp(), rtp(0, 1, 0, CALLER_SSRC, &[0xFF; 160])).is_empty());
    h.input(RelayInput::Configure { side: Side::A, peer: peer(caller_sdp(), PCMU, None) });
    assert!(h.rtp(Side::A, caller_sdp(), rtp(0, 2, 160, CALLER_SSRC, &[0xFF; 160])).is_empty());
    h.input(RelayInput::Configure { side: Side::B, peer: peer(callee(), PCMU, None) });
    let (side, kind, destination, _) = sent(h.rtp(Side::A, caller_sdp(), rtp(0, 3, 320, CALLER_SSRC, &[0xFF; 160])));
    assert_eq!((side, kind, destination), (Side::B, PacketKind::Rtp, callee()));
    let a = h.relay.stats(Side::A);
    assert_eq!((a.packets_in, a.dropped, a.bytes_in), (3, 2, 3 * 172));
    assert_eq!(a.foreign, 0, "before its SDP a side's source is unknown, not foreign");
    assert_eq!((h.relay.stats(Side::B).packets_out, h.relay.stats(Side::B).bytes_out), (1, 172));
}

/// Same codec: the payload passes untouched; SSRC is pbx's, sequence numbers and timestamps
/// keep the input's spacing from a random start, and the first packet carries the marker.
#[test]
fn passthrough_rewrites_ssrc_and_keeps_payload() {
    let mut h = Harness::call(PCMU);
    let payload: Vec<u8> = (0..160).map(|i| i as u8).collect();
    let out: Vec<_> = (0..3u16)
        .map(|i| {
            fields(&sent(h.rtp(Side::A, caller_sdp(), rtp(0, 10 + i, 160 * u32::from(i), CALLER_SSRC, &payload))).3)
        })
        .collect();
    let ssrc = h.outbound_ssrc(Side::B);
    assert_ne!(ssrc, CALLER_SSRC);
    for (i, (marker, pt, seq, ts, out_ssrc, out_payload)) in out.iter().enumerate() {
        assert_eq!((*marker, *pt, *out_ssrc), (i == 0, 0, ssrc));
        assert_eq!(*seq, out[0].2.wrapping_add(i as u16));
        assert_eq!(*ts, out[0].3.wrapping_add(160 * i as u32));
        assert_eq!(out_payload, &payload);
    }
}

/// µ-law from A reaches B as A-law with B's PT, and back; the sample count and timestamp
/// spacing are unchanged.
#[test]
fn transcodes_between_laws() {
    let mut h = Harness::call((97, G711::A));
    let ulaw: Vec<u8> = (0..160).map(|i| (i * 7) as u8).collect();
    let (_, _, _, bytes) = sent(h.rtp(Side::A, caller_sdp(), rtp(0, 1, 0, CALLER_SSRC, &ulaw)));
    let (_, pt, _, _, _, payload) = fields(&bytes);
    assert_eq!(pt, 97);
    assert_eq!(payload, ulaw.iter().map(|&c| ULAW_TO_ALAW[c as usize]).collect::<Vec<_>>());

    let alaw: Vec<u8> = (0..160).map(|i| (i * 3) as u8).collect();
    let first = fields(&sent(h.rtp(Side::B, callee(), rtp(97, 50, 8000, CALLEE_SSRC, &alaw))).3);
    let second = fields(&sent(h.rtp(Side::B, callee(), rtp(97, 51, 8160, CALLEE_SSRC, &alaw))).3);
    assert_eq!(first.1, 0);
    assert_eq!(first.5, alaw.iter().map(|&c| ALAW_TO_ULAW[c as usize]).collect::<Vec<_>>());
    assert_eq!(second.3.wrapping_sub(first.3), 160);
}

/// Telephone events take the destination's event PT; a malformed event, and any event toward
/// a side that did not negotiate them, is dropped.
#[test]
fn telephone_events_take_the_destination_pt() {
    let mut h = Harness::call(PCMU);
    let (_, _, _, bytes) = sent(h.rtp(Side::A, caller_sdp(), rtp(101, 1, 0, CALLER_SSRC, &[5, 0x0A, 0, 160])));
    assert_eq!(fields(&bytes).1, 96);
    assert_eq!(fields(&bytes).5, [5, 0x0A, 0, 160]);
    assert!(h.rtp(Side::A, caller_sdp(), rtp(101, 2, 0, CALLER_SSRC, &[5, 0x0A, 0])).is_empty(), "malformed");
    h.input(RelayInput::Configure { side: Side::B, peer: peer(callee(), PCMU, None) });
    assert!(h.rtp(Side::A, caller_sdp(), rtp(101, 3, 0, CALLER_SSRC, &[5, 0x8A, 1, 64])).is_empty());
    let a = h.relay.stats(Side::A);
    assert_eq!((a.events, a.dropped), (2, 2));
}

/// A PT neither negotiated codec nor event (here comfort noise, 13) is dropped and leaves a
/// sequence gap, so the far phone sees it as one lost packet rather than a shifted stream.
#[test]
fn unknown_payload_types_are_dropped() {
    let mut h = Harness::call(PCMU);
    let first = fields(&sent(h.rtp(Side::A, caller_sdp(), rtp(0, 1, 0, CALLER_SSRC, &[0xFF; 160]))).3);
    assert!(h.rtp(Side::A, caller_sdp(), rtp(13, 2, 160, CALLER_SSRC, &[40])).is_empty());
    let third = fields(&sent(h.rtp(Side::A, caller_sdp(), rtp(0, 3, 320, CALLER_SSRC, &[0xFF; 160]))).3);
    assert_eq!(third.2.wrapping_sub(first.2), 2);
    assert_eq!(h.relay.stats(Side::A).dropped, 1);
    assert_eq!(h.relay.stats(Side::A).lost, 0, "it arrived, so it is not lost");
    // A PT that is not even comfort noise changes nothing at all, not even the statistics.
    let before = h.relay.sides[0].reception;
    assert!(h.rtp(Side::A, caller_sdp(), rtp(97, 9, 1_280, 0x9999_9999, &[0; 160])).is_empty());
    assert_eq!(format!("{:?}", h.relay.sides[0].reception), format!("{before:?}"));
    assert_eq!(h.relay.stats(Side::A).dropped, 2);
}

/// A sending side silent for the configured time is reported once; new traffic and new
/// silence report it again; a side on hold (not sending) never is.
#[test]
fn inactivity_is_reported_once_per_silence() {
    let mut h = Harness::with(RelayConfig { inactivity: Duration::from_secs(10) });
    let start = h.now;
    assert_eq!(h.relay.poll_timeout(), None, "nothing configured");
    h.input(RelayInput::Configure { side: Side::A, peer: peer(caller_sdp(), PCMU, None) });
    h.input(RelayInput::Configure { side: Side::B, peer: PeerMedia { sends: false, ..peer(callee(), PCMU, None) } });
    assert_eq!(h.relay.poll_timeout(), Some(start + Duration::from_secs(10)));
    h.advance(Duration::from_millis(9_999));
    assert!(h.input(RelayInput::Timeout).is_empty(), "early wake-up does nothing");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.input(RelayInput::Timeout), [RelayOutput::Inactive { side: Side::A }]);
    assert_eq!(h.relay.poll_timeout(), None);
    h.advance(Duration::from_secs(30));
    assert!(h.input(RelayInput::Timeout).is_empty(), "once per silence");

    h.rtp(Side::A, caller_sdp(), rtp(13, 1, 0, CALLER_SSRC, &[40])); // comfort noise is traffic
    let spoke = h.now;
    assert_eq!(h.relay.poll_timeout(), Some(spoke + Duration::from_secs(10)));
    h.now = spoke + Duration::from_secs(10);
    assert_eq!(h.input(RelayInput::Timeout), [RelayOutput::Inactive { side: Side::A }]);
}

/// Loss per RFC 3550 §A.3 over sequence gaps and an SSRC change; jitter per §A.8 from one
/// packet arriving 10 ms late (80 ticks / 16 = 5 ticks = 625 µs).
#[test]
fn loss_and_jitter_follow_rfc3550() {
    let mut h = Harness::call(PCMU);
    for seq in (1..=10u16).filter(|s| *s != 4 && *s != 7) {
        h.advance(Duration::from_millis(if seq == 5 || seq == 8 { 20 } else { 0 }));
        h.rtp(Side::A, caller_sdp(), rtp(0, seq, u32::from(seq) * 160, CALLER_SSRC, &[0; 160]));
    }
    assert_eq!(h.relay.stats(Side::A).lost, 2);
    assert_eq!(h.relay.stats(Side::A).jitter_us, 0);
    h.advance(Duration::from_millis(10));
    h.rtp(Side::A, caller_sdp(), rtp(0, 11, 11 * 160, CALLER_SSRC, &[0; 160]));
    assert_eq!(h.relay.stats(Side::A).jitter_us, 625);

    // A new SSRC restarts the count; the old stream's loss is kept.
    h.rtp(Side::A, caller_sdp(), rtp(0, 100, 0, 0x4444_4444, &[0; 160]));
    h.rtp(Side::A, caller_sdp(), rtp(0, 102, 320, 0x4444_4444, &[0; 160]));
    assert_eq!(h.relay.stats(Side::A).lost, 3);
    // One far jump is held back (§A.1); a second in sequence restarts the count.
    h.rtp(Side::A, caller_sdp(), rtp(0, 30_000, 640, 0x4444_4444, &[0; 160]));
    assert_eq!(h.relay.stats(Side::A).lost, 3);
    h.rtp(Side::A, caller_sdp(), rtp(0, 30_001, 800, 0x4444_4444, &[0; 160]));
    h.rtp(Side::A, caller_sdp(), rtp(0, 30_002, 960, 0x4444_4444, &[0; 160]));
    assert_eq!(h.relay.stats(Side::A).lost, 3);
}

/// The output queue never grows past its bound; what does not fit is counted as dropped.
#[test]
fn outputs_are_bounded_when_not_drained() {
    let mut h = Harness::call(PCMU);
    for seq in 0..100u16 {
        h.relay.handle(
            h.now,
            RelayInput::Packet {
                side: Side::A,
                kind: PacketKind::Rtp,
                source: caller_sdp(),
                bytes: rtp(0, seq, 0, CALLER_SSRC, &[0; 160]),
            },
        );
    }
    assert_eq!(h.relay.outputs.len(), OUTPUTS_MAX);
    assert_eq!(h.relay.stats(Side::A).dropped, 100 - OUTPUTS_MAX as u64);
    assert_eq!(h.relay.stats(Side::B).packets_out, OUTPUTS_MAX as u64);
}

/// Packets handed over with their only reference are rewritten in place, not copied.
#[test]
fn forwarding_reuses_the_buffer() {
    let mut h = Harness::call(PCMA);
    let bytes = rtp(0, 1, 0, CALLER_SSRC, &[0; 160]);
    let at = bytes.as_ptr();
    assert_eq!(sent(h.rtp(Side::A, caller_sdp(), bytes)).3.as_ptr(), at);
    let shared = rtp(0, 2, 160, CALLER_SSRC, &[0; 160]);
    let out = sent(h.rtp(Side::A, caller_sdp(), shared.clone())).3;
    assert_ne!(out.as_ptr(), shared.as_ptr());
    assert_eq!(fields(&shared).4, CALLER_SSRC, "the caller's copy is untouched");
}

/// The same seed and inputs give the same outputs; another seed another SSRC.
#[test]
fn deterministic_from_the_seed() {
    let run = |seed| {
        let mut relay = Relay::new(RelayConfig::default(), seed, Timestamp::ZERO);
        relay.handle(Timestamp::ZERO, RelayInput::Configure { side: Side::A, peer: peer(caller_sdp(), PCMU, None) });
        relay.handle(Timestamp::ZERO, RelayInput::Configure { side: Side::B, peer: peer(callee(), PCMA, None) });
        let bytes = rtp(0, 1, 0, CALLER_SSRC, &[1; 160]);
        relay.handle(
            Timestamp(20_000),
            RelayInput::Packet { side: Side::A, kind: PacketKind::Rtp, source: caller_sdp(), bytes },
        );
        relay.poll_output()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

/// A stranger's address, and one more for sprays.
fn stranger() -> SocketAddr {
    addr("203.0.113.66:7000")
}

fn window() -> Duration {
    Duration::from_millis(LEARNING_WINDOW_MS)
}

impl Harness {
    /// `n` audio packets from `source` on `side`, sequence numbers from `seq` up, 20 ms apart;
    /// everything the relay sent for them.
    fn stream(&mut self, side: Side, source: SocketAddr, ssrc: u32, seq: u16, n: u16) -> Vec<RelayOutput> {
        (0..n)
            .flat_map(|i| {
                let seq = seq.wrapping_add(i);
                self.rtp(side, source, rtp(0, seq, u32::from(seq) * 160, ssrc, &[0x55; 160]))
            })
            .collect()
    }

    /// Where the callee's next packet goes: the caller's destination.
    fn toward_caller(&mut self, seq: u16) -> SocketAddr {
        sent(self.rtp(Side::B, callee(), rtp(0, seq, u32::from(seq) * 160, CALLEE_SSRC, &[0; 160]))).2
    }
}

/// The SDP address is the source and the destination: accepted from the first packet, and
/// the other side's audio goes there before and after.
#[test]
fn the_sdp_address_is_the_source_and_destination() {
    let mut h = Harness::call(PCMU);
    assert_eq!(h.toward_caller(1), caller_sdp(), "before the caller sent anything");
    assert_eq!(h.stream(Side::A, caller_sdp(), CALLER_SSRC, 1, 1).len(), 1, "its first packet is forwarded");
    assert_eq!(h.toward_caller(2), caller_sdp());
    assert_eq!(h.relay.source(Side::A), Some(caller_sdp()));
    assert_eq!(h.relay.stats(Side::A).foreign, 0);
}

/// RTP bleed (CVE-2017-14099): once the caller's stream came from its SDP address, a stranger
/// streaming well-formed RTP with consecutive sequence numbers, with a new SSRC or the
/// caller's own, inside the window or after it, gets nothing, changes nothing and is counted.
#[test]
fn a_stranger_cannot_take_the_stream() {
    let mut h = Harness::call(PCMU);
    h.stream(Side::A, caller_sdp(), CALLER_SSRC, 1, 3);
    assert!(h.stream(Side::A, stranger(), 0x6666_6666, 500, 20).is_empty(), "new SSRC, inside the window");
    assert!(h.stream(Side::A, stranger(), CALLER_SSRC, 4, 20).is_empty(), "the caller's SSRC and sequence");
    h.advance(window());
    assert!(h.stream(Side::A, stranger(), 0x7777_7777, 9, 20).is_empty(), "after the window");
    assert!(h.packet(Side::A, PacketKind::Rtcp, stranger(), rtcp(CALLER_SSRC)).is_empty(), "RTCP too");
    assert_eq!(h.relay.stats(Side::A).foreign, 61);
    assert_eq!(h.toward_caller(1), caller_sdp(), "the callee's audio still goes to the caller");
    assert_eq!(h.stream(Side::A, caller_sdp(), CALLER_SSRC, 4, 1).len(), 1, "and the caller still gets through");
}

/// Behind NAT: packets from another source are held back until LEARNING_PACKETS of them came
/// in sequence; the last of those is forwarded and the source is then the caller's
/// destination. The probation packets are dropped but not foreign.
#[test]
fn a_nat_source_is_learned_after_consecutive_packets() {
    let mut h = Harness::call(PCMU);
    let probation = LEARNING_PACKETS - 1;
    assert!(h.stream(Side::A, caller_nat(), CALLER_SSRC, 10, probation).is_empty());
    assert_eq!(h.toward_caller(1), caller_sdp(), "not learned yet");
    assert_eq!(h.stream(Side::A, caller_nat(), CALLER_SSRC, 10 + probation, 1).len(), 1, "learned");
    assert_eq!(h.toward_caller(2), caller_nat());
    assert_eq!(h.stream(Side::A, caller_nat(), CALLER_SSRC, 11 + probation, 5).len(), 5);
    let a = h.relay.stats(Side::A);
    assert_eq!((a.dropped, a.foreign), (u64::from(probation), 0));
    // Learned, the stream is confirmed: another source now is foreign, however it streams.
    assert!(h.stream(Side::A, stranger(), CALLER_SSRC, 100, 10).is_empty());
    assert_eq!(h.relay.stats(Side::A).foreign, 10);
    assert_eq!(h.toward_caller(3), caller_nat());
}

/// Learning needs consecutive sequence numbers and one SSRC: a gap or an SSRC change starts
/// the count again.
#[test]
fn learning_needs_consecutive_sequence_numbers() {
    let mut h = Harness::call(PCMU);
    let at = |seq: u16, ssrc: u32| rtp(0, seq, u32::from(seq) * 160, ssrc, &[0; 160]);
    for (seq, ssrc) in [(1, CALLER_SSRC), (2, CALLER_SSRC), (3, CALLER_SSRC), (5, CALLER_SSRC)] {
        assert!(h.rtp(Side::A, caller_nat(), at(seq, ssrc)).is_empty(), "{seq}: the gap before 5 restarts");
    }
    for (seq, ssrc) in [(6, CALLER_SSRC), (7, CALLER_SSRC), (8, 0x4242_4242)] {
        assert!(h.rtp(Side::A, caller_nat(), at(seq, ssrc)).is_empty(), "{seq}: the SSRC change restarts");
    }
    for seq in [9, 10] {
        assert!(h.rtp(Side::A, caller_nat(), at(seq, 0x4242_4242)).is_empty());
    }
    assert_eq!(h.rtp(Side::A, caller_nat(), at(11, 0x4242_4242)).len(), 1, "8, 9, 10, 11: learned");
    assert_eq!(h.relay.source(Side::A), Some(caller_nat()));
}

/// The window closes LEARNING_WINDOW_MS after the Configure: a NAT stream that starts later is
/// foreign, however long it streams; the SDP address is still accepted.
#[test]
fn learning_ends_with_the_window() {
    let mut h = Harness::call(PCMU);
    h.advance(window());
    assert!(h.stream(Side::A, caller_nat(), CALLER_SSRC, 1, 20).is_empty());
    assert_eq!(h.relay.stats(Side::A).foreign, 20);
    assert_eq!(h.toward_caller(1), caller_sdp());
    assert_eq!(h.stream(Side::A, caller_sdp(), CALLER_SSRC, 21, 1).len(), 1, "the SDP address needs no window");

    // A stream that began inside the window and completes after it is not learned either.
    let mut h = Harness::call(PCMU);
    h.advance(window() - Duration::from_millis(60));
    assert!(h.stream(Side::A, caller_nat(), CALLER_SSRC, 1, LEARNING_PACKETS).is_empty());
    assert_eq!(h.relay.source(Side::A), Some(caller_sdp()));
}

/// Within the window the SDP address takes over from a learned source (which might be a
/// stranger who won the race), and closes the window; after the window it cannot.
#[test]
fn the_sdp_address_takes_over_within_the_window() {
    let mut h = Harness::call(PCMU);
    assert_eq!(h.stream(Side::A, stranger(), 0x6666_6666, 1, LEARNING_PACKETS).len(), 1, "the stranger won the race");
    assert_eq!(h.toward_caller(1), stranger());
    assert_eq!(h.stream(Side::A, caller_sdp(), CALLER_SSRC, 1, 1).len(), 1);
    assert_eq!(h.toward_caller(2), caller_sdp(), "the phone's own address wins");
    assert!(h.stream(Side::A, stranger(), 0x6666_6666, 5, 10).is_empty(), "and the stranger is foreign");

    // After the window a learned source stays, whatever comes from the SDP address.
    let mut h = Harness::call(PCMU);
    h.stream(Side::A, caller_nat(), CALLER_SSRC, 1, LEARNING_PACKETS);
    h.advance(window());
    assert!(h.stream(Side::A, caller_sdp(), CALLER_SSRC, 10, 3).is_empty());
    assert_eq!(h.toward_caller(1), caller_nat());
}

/// Each Configure (re-INVITE, UPDATE) reopens the window: with the same SDP address the
/// learned source is kept (hold/resume keeps a NAT phone's audio) and a moved NAT binding can
/// be learned again; with a new address the learned source is forgotten.
#[test]
fn configure_reopens_learning() {
    let mut h = Harness::call(PCMU);
    h.stream(Side::A, caller_nat(), CALLER_SSRC, 1, LEARNING_PACKETS);
    h.advance(window());
    let rebound = addr("198.51.100.7:6001");
    assert!(h.stream(Side::A, rebound, CALLER_SSRC, 10, LEARNING_PACKETS).is_empty(), "window closed");

    h.input(RelayInput::Configure { side: Side::A, peer: peer(caller_sdp(), PCMU, Some(101)) });
    assert_eq!(h.toward_caller(1), caller_nat(), "same SDP address: the learned source is kept");
    assert_eq!(h.stream(Side::A, rebound, CALLER_SSRC, 20, LEARNING_PACKETS).len(), 1, "learned again");
    assert_eq!(h.toward_caller(2), rebound);

    let moved = addr("192.0.2.11:4002");
    h.input(RelayInput::Configure { side: Side::A, peer: peer(moved, PCMU, Some(101)) });
    assert_eq!(h.toward_caller(3), moved, "a new SDP address forgets the learned source");
    assert!(h.stream(Side::A, rebound, CALLER_SSRC, 30, 1).is_empty());
}

/// The payload type is checked first: a stream of an unnegotiated PT from a would-be source
/// neither learns it nor counts as traffic; the negotiated PT then learns it afresh.
#[test]
fn payload_type_is_checked_before_learning() {
    let mut h = Harness::with(RelayConfig { inactivity: Duration::from_secs(10) });
    h.input(RelayInput::Configure { side: Side::A, peer: peer(caller_sdp(), PCMU, Some(101)) });
    h.input(RelayInput::Configure { side: Side::B, peer: peer(callee(), PCMU, Some(96)) });
    let inactive_at = h.relay.poll_timeout();
    for seq in 1..=10u16 {
        assert!(h.rtp(Side::A, caller_nat(), rtp(97, seq, 0, CALLER_SSRC, &[0; 160])).is_empty());
    }
    assert_eq!(h.relay.sides[0].rtp_source.candidates.len(), 0, "no candidate from a bad PT");
    assert_eq!(h.relay.poll_timeout(), inactive_at, "not traffic");
    assert_eq!(h.relay.stats(Side::A).lost, 0, "not counted in reception");
    assert_eq!(h.stream(Side::A, caller_nat(), CALLER_SSRC, 11, LEARNING_PACKETS).len(), 1);
}

/// A side on RFC 2543 hold (c=0.0.0.0: no address) is sent nothing and learns nothing.
#[test]
fn a_side_without_an_address_learns_nothing() {
    let mut h = Harness::call(PCMU);
    h.input(RelayInput::Configure {
        side: Side::A,
        peer: PeerMedia { rtp: None, rtcp: None, ..peer(caller_sdp(), PCMU, None) },
    });
    assert!(h.rtp(Side::B, callee(), rtp(0, 1, 0, CALLEE_SSRC, &[0; 160])).is_empty(), "nowhere to send");
    assert!(h.stream(Side::A, caller_nat(), CALLER_SSRC, 1, 10).is_empty());
    assert!(h.stream(Side::A, caller_sdp(), CALLER_SSRC, 11, 2).is_empty(), "not even from the old address");
    assert_eq!(h.relay.stats(Side::A).foreign, 12);
    assert_eq!(h.relay.source(Side::A), None);
}

/// Multicast, broadcast and unspecified addresses are never a destination nor a source, even
/// if an SDP named one (the SDP layer refuses them first; this is the second line).
#[test]
fn unusable_addresses_are_never_used() {
    let mut h = Harness::call(PCMU);
    for bad in ["224.0.0.1:4000", "255.255.255.255:4000", "0.0.0.0:4000", "192.0.2.10:0", "[ff02::1]:4000"] {
        h.input(RelayInput::Configure { side: Side::A, peer: peer(addr(bad), PCMU, None) });
        assert!(h.rtp(Side::B, callee(), rtp(0, 1, 0, CALLEE_SSRC, &[0; 160])).is_empty(), "{bad}");
        assert!(h.stream(Side::A, addr(bad), CALLER_SSRC, 1, LEARNING_PACKETS).is_empty(), "{bad}");
    }
}

/// Candidates are bounded: a spray of one-packet sources while the NAT phone streams neither
/// grows the list nor keeps the phone from being learned.
#[test]
fn candidates_are_bounded() {
    let mut h = Harness::call(PCMU);
    let mut learned = false;
    for round in 0..LEARNING_PACKETS {
        learned |= !h.stream(Side::A, caller_nat(), CALLER_SSRC, 1 + round, 1).is_empty();
        for n in 0..10u16 {
            let spray = SocketAddr::new([203, 0, 113, 1 + n as u8].into(), 9000 + round);
            h.stream(Side::A, spray, u32::from(n), 1000 * n, 1);
            assert!(h.relay.sides[0].rtp_source.candidates.len() <= LEARNING_CANDIDATES_MAX);
        }
    }
    assert!(learned, "the phone's stream survived the spray");
    assert_eq!(h.toward_caller(1), caller_nat());
}

/// A new SSRC from the accepted source (the phone restarted its stream) continues pbx's
/// outbound stream: same SSRC, next sequence number, timestamp advanced by the wall time,
/// marker set.
#[test]
fn a_new_ssrc_from_the_source_continues_the_stream() {
    let mut h = Harness::call(PCMU);
    let before = fields(&sent(h.rtp(Side::A, caller_sdp(), rtp(0, 500, 9_000, CALLER_SSRC, &[0; 160]))).3);
    let after = fields(&sent(h.rtp(Side::A, caller_sdp(), rtp(0, 7, 123, 0x3333_3333, &[0; 160]))).3);
    assert!(after.0, "marker on the change");
    assert_eq!(after.4, before.4, "same outbound SSRC");
    assert_eq!(after.2, before.2.wrapping_add(1), "sequence continues");
    assert_eq!(after.3, before.3.wrapping_add(160), "timestamp advances by the 20 ms between them");
    let next = fields(&sent(h.rtp(Side::A, caller_sdp(), rtp(0, 8, 283, 0x3333_3333, &[0; 160]))).3);
    assert!(!next.0);
    assert_eq!((next.2, next.3), (after.2.wrapping_add(1), after.3.wrapping_add(160)));
}

/// RTCP goes to the other side's RTCP address with the sender SSRC set to the outbound RTP
/// SSRC toward that side; it is accepted from the SDP's RTCP address, and once a NAT source
/// was learned from that source's port + 1 (then sent there); from anywhere else it is
/// foreign, even from the NAT's address on another port.
#[test]
fn rtcp_sources_follow_the_rtp_source() {
    let mut h = Harness::call(PCMU);
    let rtp_ssrc = h.outbound_ssrc(Side::B);
    let (side, kind, destination, bytes) =
        sent(h.packet(Side::A, PacketKind::Rtcp, addr("192.0.2.10:4001"), rtcp(CALLER_SSRC)));
    assert_eq!((side, kind, destination), (Side::B, PacketKind::Rtcp, addr("192.0.2.20:6001")));
    assert!(RtcpCompound::parse(&bytes).unwrap().packets().all(|p| p.sender_ssrc() == Some(rtp_ssrc)));
    let callee_rtcp =
        |h: &mut Harness| sent(h.packet(Side::B, PacketKind::Rtcp, addr("192.0.2.20:6001"), rtcp(CALLEE_SSRC)));
    let (_, _, destination, bytes) = callee_rtcp(&mut h);
    assert_eq!(destination, addr("192.0.2.10:4001"));
    assert_eq!(RtcpCompound::parse(&bytes).unwrap().sender_ssrc(), Some(h.outbound_ssrc(Side::A)));

    // Behind NAT: nothing beside the NAT source is accepted until RTP taught pbx the source.
    let mut h = Harness::call(PCMU);
    let nat_rtcp = addr("198.51.100.7:5556");
    assert!(h.packet(Side::A, PacketKind::Rtcp, nat_rtcp, rtcp(CALLER_SSRC)).is_empty());
    h.stream(Side::A, caller_nat(), CALLER_SSRC, 1, LEARNING_PACKETS);
    assert_eq!(callee_rtcp(&mut h).2, nat_rtcp, "sent beside the learned RTP source");
    assert_eq!(sent(h.packet(Side::A, PacketKind::Rtcp, nat_rtcp, rtcp(CALLER_SSRC))).2, addr("192.0.2.20:6001"));
    assert_eq!(callee_rtcp(&mut h).2, nat_rtcp);
    for elsewhere in [addr("198.51.100.7:7777"), stranger()] {
        assert!(h.packet(Side::A, PacketKind::Rtcp, elsewhere, rtcp(CALLER_SSRC)).is_empty(), "{elsewhere}");
    }
    assert!(h.packet(Side::A, PacketKind::Rtcp, nat_rtcp, Bytes::from_static(&[0x80, 201, 0, 9])).is_empty());
    let a = h.relay.stats(Side::A);
    assert_eq!((a.foreign, a.dropped), (3, 4 + u64::from(LEARNING_PACKETS) - 1), "{a:?}");
}

#[derive(Clone, Debug)]
enum Step {
    Configure {
        side: Side,
        codec: bool,
        te: Option<u8>,
        sends: bool,
        sdp: u8,
    },
    Rtp {
        side: Side,
        source: u8,
        pt: u8,
        seq: u16,
        ssrc: u8,
        len: usize,
    },
    /// `n` audio packets in sequence from one source: what learning needs.
    Burst {
        side: Side,
        source: u8,
        seq: u16,
        ssrc: u8,
        n: u16,
    },
    Raw {
        side: Side,
        kind: PacketKind,
        source: u8,
        bytes: Vec<u8>,
    },
    Wait {
        ms: u32,
    },
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::A), Just(Side::B)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (side(), any::<bool>(), proptest::option::of(prop_oneof![Just(96u8), Just(101)]), any::<bool>(), 0..3u8)
            .prop_map(|(side, codec, te, sends, sdp)| Step::Configure { side, codec, te, sends, sdp }),
        (
            side(),
            0..5u8,
            prop_oneof![Just(0u8), Just(8), Just(96), Just(101), Just(13)],
            any::<u16>(),
            0..3u8,
            0..200usize
        )
            .prop_map(|(side, source, pt, seq, ssrc, len)| Step::Rtp { side, source, pt, seq, ssrc, len }),
        (side(), 0..5u8, any::<u16>(), 0..3u8, 1..6u16).prop_map(|(side, source, seq, ssrc, n)| Step::Burst {
            side,
            source,
            seq,
            ssrc,
            n
        }),
        (
            side(),
            prop_oneof![Just(PacketKind::Rtp), Just(PacketKind::Rtcp)],
            0..5u8,
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(side, kind, source, bytes)| Step::Raw { side, kind, source, bytes }),
        (0..9_000u32).prop_map(|ms| Step::Wait { ms }),
        (0..90_000u32).prop_map(|ms| Step::Wait { ms }),
    ]
}

/// Source `n`: 0 to 2 are SDP addresses, 3 and 4 only ever send.
fn source(n: u8) -> SocketAddr {
    SocketAddr::new([192, 0, 2, n].into(), 4000 + u16::from(n))
}

impl Harness {
    /// Runs one step; the outputs, and the RTP datagrams that arrived per (side, source).
    fn step(
        &mut self,
        step: Step,
        arrived: &mut std::collections::HashMap<(Side, SocketAddr), u16>,
    ) -> Vec<RelayOutput> {
        let mut count = |side, from, n: u16| *arrived.entry((side, from)).or_default() += n;
        match step {
            Step::Configure { side, codec, te, sends, sdp } => {
                let codec = if codec { PCMU } else { PCMA };
                self.input(RelayInput::Configure { side, peer: PeerMedia { sends, ..peer(source(sdp), codec, te) } })
            }
            Step::Rtp { side, source: from, pt, seq, ssrc, len } => {
                count(side, source(from), 1);
                self.rtp(side, source(from), rtp(pt, seq, u32::from(seq) * 160, u32::from(ssrc), &vec![0x55; len]))
            }
            Step::Burst { side, source: from, seq, ssrc, n } => {
                count(side, source(from), n);
                self.stream(side, source(from), u32::from(ssrc), seq, n)
            }
            Step::Raw { side, kind, source: from, bytes } => {
                if kind == PacketKind::Rtp {
                    count(side, source(from), 1);
                }
                self.packet(side, kind, source(from), bytes.into())
            }
            Step::Wait { ms } => {
                self.advance(Duration::from_millis(u64::from(ms)));
                self.input(RelayInput::Timeout)
            }
        }
    }
}

proptest! {
    /// Relaying in place (the session's task) and relaying handed-over packets (`handle`) are
    /// one machine: under any sequence of steps both send the same bytes to the same places
    /// and keep the same counters.
    #[test]
    fn relaying_in_place_is_the_same_machine(steps in proptest::collection::vec(step(), 1..80)) {
        let mut handed = Harness::with(RelayConfig { inactivity: Duration::from_secs(30) });
        let mut in_place = Harness { in_place: true, ..Harness::with(RelayConfig { inactivity: Duration::from_secs(30) }) };
        let (mut arrived, mut arrived_too) = (std::collections::HashMap::new(), std::collections::HashMap::new());
        for step in steps {
            let expected = handed.step(step.clone(), &mut arrived);
            prop_assert_eq!(in_place.step(step, &mut arrived_too), expected);
            for side in [Side::A, Side::B] {
                prop_assert_eq!(in_place.relay.stats(side), handed.relay.stats(side));
            }
        }
    }

    /// Under any sequence of configurations, packets (valid or not) and waits: nothing
    /// panics, every arrival is either forwarded or counted as dropped, foreign ones among
    /// them, everything sent carries pbx's SSRC toward that side, and Inactive comes at most
    /// once per silence.
    #[test]
    fn every_arrival_is_forwarded_or_dropped(steps in proptest::collection::vec(step(), 1..80)) {
        let mut h = Harness::with(RelayConfig { inactivity: Duration::from_secs(30) });
        let mut arrived = std::collections::HashMap::new();
        for step in steps {
            let outputs = h.step(step, &mut arrived);
            let mut inactive = [0; 2];
            for output in outputs {
                match output {
                    RelayOutput::Transmit { side, kind: PacketKind::Rtp, bytes, .. } => {
                        prop_assert_eq!(fields(&bytes).4, h.outbound_ssrc(side));
                    }
                    RelayOutput::Transmit { side, kind: PacketKind::Rtcp, bytes, .. } => {
                        let sender = RtcpCompound::parse(&bytes).and_then(|c| c.sender_ssrc());
                        prop_assert!(sender.is_none_or(|s| s == h.outbound_ssrc(side)));
                    }
                    RelayOutput::Inactive { side } => inactive[side.index()] += 1,
                }
            }
            prop_assert!(inactive.iter().all(|n| *n <= 1));
            for side in [Side::A, Side::B] {
                let (from, to) = (h.relay.stats(side), h.relay.stats(side.other()));
                prop_assert_eq!(from.packets_in, to.packets_out + from.dropped);
                prop_assert!(from.foreign <= from.dropped);
                prop_assert!(h.relay.sides[side.index()].rtp_source.candidates.len() <= LEARNING_CANDIDATES_MAX);
            }
        }
    }

    /// Whatever arrives, in any order and timing: RTP toward a side goes only to an SDP
    /// address it was configured with, or to an address that sent that side's port at least
    /// LEARNING_PACKETS RTP packets. A few packets from anywhere never take a call's audio.
    #[test]
    fn audio_goes_only_to_declared_or_learned_sources(steps in proptest::collection::vec(step(), 1..120)) {
        let mut h = Harness::with(RelayConfig { inactivity: Duration::from_secs(30) });
        let mut arrived = std::collections::HashMap::new();
        let mut declared: Vec<(Side, SocketAddr)> = Vec::new();
        for step in steps {
            if let Step::Configure { side, sdp, .. } = &step {
                declared.push((*side, source(*sdp)));
            }
            for output in h.step(step, &mut arrived) {
                if let RelayOutput::Transmit { side, kind: PacketKind::Rtp, destination, .. } = output {
                    let sent_enough = arrived.get(&(side, destination)).is_some_and(|n| *n >= LEARNING_PACKETS);
                    prop_assert!(
                        declared.contains(&(side, destination)) || sent_enough,
                        "{:?} got side {:?}'s audio", destination, side
                    );
                }
            }
        }
    }
}

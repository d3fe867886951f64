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

/// The caller's SDP says 192.0.2.10 but its NAT sends from 198.51.100.7.
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
}

impl Harness {
    fn new() -> Harness {
        Harness::with(RelayConfig::default())
    }

    fn with(config: RelayConfig) -> Harness {
        let now = Timestamp::from_secs(1_000);
        Harness { relay: Relay::new(config, 7, now), now }
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
    assert!(h.rtp(Side::A, caller_nat(), rtp(0, 1, 0, CALLER_SSRC, &[0xFF; 160])).is_empty());
    h.input(RelayInput::Configure { side: Side::A, peer: peer(caller_sdp(), PCMU, None) });
    assert!(h.rtp(Side::A, caller_nat(), rtp(0, 2, 160, CALLER_SSRC, &[0xFF; 160])).is_empty());
    h.input(RelayInput::Configure { side: Side::B, peer: peer(callee(), PCMU, None) });
    let (side, kind, destination, _) = sent(h.rtp(Side::A, caller_nat(), rtp(0, 3, 320, CALLER_SSRC, &[0xFF; 160])));
    assert_eq!((side, kind, destination), (Side::B, PacketKind::Rtp, callee()));
    let a = h.relay.stats(Side::A);
    assert_eq!((a.packets_in, a.dropped, a.bytes_in), (3, 2, 3 * 172));
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
            fields(&sent(h.rtp(Side::A, caller_nat(), rtp(0, 10 + i, 160 * u32::from(i), CALLER_SSRC, &payload))).3)
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
    let (_, _, _, bytes) = sent(h.rtp(Side::A, caller_nat(), rtp(0, 1, 0, CALLER_SSRC, &ulaw)));
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
    let (_, _, _, bytes) = sent(h.rtp(Side::A, caller_nat(), rtp(101, 1, 0, CALLER_SSRC, &[5, 0x0A, 0, 160])));
    assert_eq!(fields(&bytes).1, 96);
    assert_eq!(fields(&bytes).5, [5, 0x0A, 0, 160]);
    assert!(h.rtp(Side::A, caller_nat(), rtp(101, 2, 0, CALLER_SSRC, &[5, 0x0A, 0])).is_empty(), "malformed");
    h.input(RelayInput::Configure { side: Side::B, peer: peer(callee(), PCMU, None) });
    assert!(h.rtp(Side::A, caller_nat(), rtp(101, 3, 0, CALLER_SSRC, &[5, 0x8A, 1, 64])).is_empty());
    let a = h.relay.stats(Side::A);
    assert_eq!((a.events, a.dropped), (2, 2));
}

/// A PT neither negotiated codec nor event (here comfort noise, 13) is dropped and leaves a
/// sequence gap, so the far phone sees it as one lost packet rather than a shifted stream.
#[test]
fn unknown_payload_types_are_dropped() {
    let mut h = Harness::call(PCMU);
    let first = fields(&sent(h.rtp(Side::A, caller_nat(), rtp(0, 1, 0, CALLER_SSRC, &[0xFF; 160]))).3);
    assert!(h.rtp(Side::A, caller_nat(), rtp(13, 2, 160, CALLER_SSRC, &[40])).is_empty());
    let third = fields(&sent(h.rtp(Side::A, caller_nat(), rtp(0, 3, 320, CALLER_SSRC, &[0xFF; 160]))).3);
    assert_eq!(third.2.wrapping_sub(first.2), 2);
    assert_eq!(h.relay.stats(Side::A).dropped, 1);
    assert_eq!(h.relay.stats(Side::A).lost, 0, "it arrived, so it is not lost");
}

/// Symmetric RTP: toward A the relay sends to A's SDP address until A's phone has sent,
/// then to where A's packets come from.
#[test]
fn latches_to_the_source_not_the_sdp_address() {
    let mut h = Harness::call(PCMU);
    assert_eq!(sent(h.rtp(Side::B, callee(), rtp(0, 1, 0, CALLEE_SSRC, &[0; 160]))).2, caller_sdp());
    sent(h.rtp(Side::A, caller_nat(), rtp(0, 1, 0, CALLER_SSRC, &[0; 160])));
    assert_eq!(sent(h.rtp(Side::B, callee(), rtp(0, 2, 160, CALLEE_SSRC, &[0; 160]))).2, caller_nat());
}

/// A packet from elsewhere carrying the latched SSRC is a stray: dropped, and the stream
/// toward A stays where it was.
#[test]
fn stray_source_with_the_latched_ssrc_is_dropped() {
    let mut h = Harness::call(PCMU);
    sent(h.rtp(Side::A, caller_nat(), rtp(0, 1, 0, CALLER_SSRC, &[0; 160])));
    assert!(h.rtp(Side::A, addr("203.0.113.66:7000"), rtp(0, 2, 160, CALLER_SSRC, &[0; 160])).is_empty());
    assert_eq!(h.relay.stats(Side::A).dropped, 1);
    assert_eq!(sent(h.rtp(Side::B, callee(), rtp(0, 1, 0, CALLEE_SSRC, &[0; 160]))).2, caller_nat());
}

/// A new source with a new SSRC (a re-INVITE to a new address, a fork taking over) takes the
/// latch; the outbound stream keeps its SSRC, continues its sequence and marks the change.
#[test]
fn new_source_with_new_ssrc_relatches_and_the_stream_continues() {
    let mut h = Harness::call(PCMU);
    let before = fields(&sent(h.rtp(Side::A, caller_nat(), rtp(0, 500, 9_000, CALLER_SSRC, &[0; 160]))).3);
    let moved = addr("198.51.100.8:6666");
    let after = fields(&sent(h.rtp(Side::A, moved, rtp(0, 7, 123, 0x3333_3333, &[0; 160]))).3);
    assert!(after.0, "marker on the change");
    assert_eq!(after.4, before.4, "same outbound SSRC");
    assert_eq!(after.2, before.2.wrapping_add(1), "sequence continues");
    assert_eq!(after.3, before.3.wrapping_add(160), "timestamp advances by the 20 ms between them");
    let next = fields(&sent(h.rtp(Side::A, moved, rtp(0, 8, 283, 0x3333_3333, &[0; 160]))).3);
    assert!(!next.0);
    assert_eq!((next.2, next.3), (after.2.wrapping_add(1), after.3.wrapping_add(160)));
    assert_eq!(sent(h.rtp(Side::B, callee(), rtp(0, 1, 0, CALLEE_SSRC, &[0; 160]))).2, moved);
}

/// A re-INVITE with a new SDP address forgets the old latch, so traffic goes to the new
/// address even if the phone kept its SSRC.
#[test]
fn configure_with_a_new_address_clears_the_latch() {
    let mut h = Harness::call(PCMU);
    sent(h.rtp(Side::A, caller_nat(), rtp(0, 1, 0, CALLER_SSRC, &[0; 160])));
    let new_sdp = addr("192.0.2.11:4002");
    h.input(RelayInput::Configure { side: Side::A, peer: peer(new_sdp, PCMU, Some(101)) });
    assert_eq!(sent(h.rtp(Side::B, callee(), rtp(0, 1, 0, CALLEE_SSRC, &[0; 160]))).2, new_sdp);
    sent(h.rtp(Side::A, caller_nat(), rtp(0, 2, 160, CALLER_SSRC, &[0; 160])));
    h.input(RelayInput::Configure { side: Side::A, peer: peer(new_sdp, PCMA, None) });
    let (_, _, destination, _) = sent(h.rtp(Side::B, callee(), rtp(0, 2, 160, CALLEE_SSRC, &[0; 160])));
    assert_eq!(destination, caller_nat(), "the same address keeps the latch");
}

/// RTCP goes to the other side's RTCP address with the sender SSRC set to the outbound RTP
/// SSRC toward that side, and latches on its own.
#[test]
fn rtcp_is_forwarded_with_the_outbound_ssrc() {
    let mut h = Harness::call(PCMU);
    let rtp_ssrc = fields(&sent(h.rtp(Side::A, caller_nat(), rtp(0, 1, 0, CALLER_SSRC, &[0; 160]))).3).4;
    let (side, kind, destination, bytes) =
        sent(h.packet(Side::A, PacketKind::Rtcp, addr("198.51.100.7:5556"), rtcp(CALLER_SSRC)));
    assert_eq!((side, kind, destination), (Side::B, PacketKind::Rtcp, addr("192.0.2.20:6001")));
    let compound = RtcpCompound::parse(&bytes).unwrap();
    assert!(compound.packets().all(|p| p.sender_ssrc() == Some(rtp_ssrc)));

    let (_, _, destination, bytes) =
        sent(h.packet(Side::B, PacketKind::Rtcp, addr("192.0.2.20:6001"), rtcp(CALLEE_SSRC)));
    assert_eq!(destination, addr("198.51.100.7:5556"), "RTCP latched");
    assert_eq!(RtcpCompound::parse(&bytes).unwrap().sender_ssrc(), Some(h.outbound_ssrc(Side::A)));
    assert_eq!(sent(h.rtp(Side::B, callee(), rtp(0, 1, 0, CALLEE_SSRC, &[0; 160]))).2, caller_nat(), "RTP latch apart");
    assert!(h.packet(Side::A, PacketKind::Rtcp, caller_nat(), Bytes::from_static(&[0x80, 201, 0, 9])).is_empty());
    assert_eq!(h.relay.stats(Side::A).dropped, 1);
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

    h.rtp(Side::A, caller_nat(), rtp(13, 1, 0, CALLER_SSRC, &[40])); // comfort noise is traffic
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
        h.rtp(Side::A, caller_nat(), rtp(0, seq, u32::from(seq) * 160, CALLER_SSRC, &[0; 160]));
    }
    assert_eq!(h.relay.stats(Side::A).lost, 2);
    assert_eq!(h.relay.stats(Side::A).jitter_us, 0);
    h.advance(Duration::from_millis(10));
    h.rtp(Side::A, caller_nat(), rtp(0, 11, 11 * 160, CALLER_SSRC, &[0; 160]));
    assert_eq!(h.relay.stats(Side::A).jitter_us, 625);

    // A new SSRC restarts the count; the old stream's loss is kept.
    h.rtp(Side::A, caller_nat(), rtp(0, 100, 0, 0x4444_4444, &[0; 160]));
    h.rtp(Side::A, caller_nat(), rtp(0, 102, 320, 0x4444_4444, &[0; 160]));
    assert_eq!(h.relay.stats(Side::A).lost, 3);
    // One far jump is held back (§A.1); a second in sequence restarts the count.
    h.rtp(Side::A, caller_nat(), rtp(0, 30_000, 640, 0x4444_4444, &[0; 160]));
    assert_eq!(h.relay.stats(Side::A).lost, 3);
    h.rtp(Side::A, caller_nat(), rtp(0, 30_001, 800, 0x4444_4444, &[0; 160]));
    h.rtp(Side::A, caller_nat(), rtp(0, 30_002, 960, 0x4444_4444, &[0; 160]));
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
                source: caller_nat(),
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
    assert_eq!(sent(h.rtp(Side::A, caller_nat(), bytes)).3.as_ptr(), at);
    let shared = rtp(0, 2, 160, CALLER_SSRC, &[0; 160]);
    let out = sent(h.rtp(Side::A, caller_nat(), shared.clone())).3;
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
            RelayInput::Packet { side: Side::A, kind: PacketKind::Rtp, source: caller_nat(), bytes },
        );
        relay.poll_output()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[derive(Clone, Debug)]
enum Step {
    Configure { side: Side, codec: bool, te: Option<u8>, sends: bool, sdp: u8 },
    Rtp { side: Side, source: u8, pt: u8, seq: u16, ssrc: u8, len: usize },
    Raw { side: Side, kind: PacketKind, source: u8, bytes: Vec<u8> },
    Wait { ms: u32 },
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
            0..4u8,
            prop_oneof![Just(0u8), Just(8), Just(96), Just(101), Just(13)],
            any::<u16>(),
            0..3u8,
            0..200usize
        )
            .prop_map(|(side, source, pt, seq, ssrc, len)| Step::Rtp { side, source, pt, seq, ssrc, len }),
        (
            side(),
            prop_oneof![Just(PacketKind::Rtp), Just(PacketKind::Rtcp)],
            0..4u8,
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(side, kind, source, bytes)| Step::Raw { side, kind, source, bytes }),
        (0..90_000u32).prop_map(|ms| Step::Wait { ms }),
    ]
}

proptest! {
    /// Under any sequence of configurations, packets (valid or not) and waits: nothing
    /// panics, every arrival is either forwarded or counted as dropped, everything sent
    /// carries pbx's SSRC toward that side, and Inactive comes at most once per silence.
    #[test]
    fn every_arrival_is_forwarded_or_dropped(steps in proptest::collection::vec(step(), 1..80)) {
        let mut h = Harness::with(RelayConfig { inactivity: Duration::from_secs(30) });
        let source = |n: u8| SocketAddr::new([192, 0, 2, n].into(), 4000 + u16::from(n));
        for step in steps {
            let outputs = match step {
                Step::Configure { side, codec, te, sends, sdp } => {
                    let codec = if codec { PCMU } else { PCMA };
                    h.input(RelayInput::Configure { side, peer: PeerMedia { sends, ..peer(source(sdp), codec, te) } })
                }
                Step::Rtp { side, source: from, pt, seq, ssrc, len } => {
                    h.rtp(side, source(from), rtp(pt, seq, u32::from(seq) * 160, u32::from(ssrc), &vec![0x55; len]))
                }
                Step::Raw { side, kind, source: from, bytes } => h.packet(side, kind, source(from), bytes.into()),
                Step::Wait { ms } => {
                    h.advance(Duration::from_millis(u64::from(ms)));
                    h.input(RelayInput::Timeout)
                }
            };
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
            }
        }
    }
}

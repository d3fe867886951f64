//! Criterion benchmarks of the media path: what one RTP packet costs pbx on the CPU.
//!
//! - `relay/passthrough_pcmu`: one 20 ms G.711 packet (12-byte header, 160-byte payload)
//!   through the sans-IO `Relay` between two PCMU legs: latch check, loss/jitter bookkeeping,
//!   header rewrite to pbx's SSRC and sequence, output drained. The packet is copied into a
//!   fresh buffer first and freed after, as a shell that hands packets over would.
//! - `relay/in_place_pcmu`: the same packet relayed in the caller's buffer
//!   (`Relay::relay_in_place`), as the media session's task does: no copy, no allocation.
//! - `relay/transcode_pcmu_to_pcma`: the same with a PCMA callee, so the payload is also
//!   converted µ-law → A-law.
//! - `g711/ulaw_to_alaw_160`: the table conversion of one payload alone.
//! - `mixer/room_of_5_talkers_N`: one 20 ms tick of a conference room's `Mixer` with five
//!   PCMU participants of whom N talk: each participant's packet received (RTP parsed, decoded
//!   into its jitter buffer), the frames taken, the talkers chosen and summed, one packet
//!   mixed, encoded and framed for each participant, outputs drained. Participants mixed per
//!   core in real time = 5 × 20 ms / the time of one iteration.
//!
//! Sockets and the actor mailbox are not measured. Runs are short, as in `sip.rs`. See
//! docs/PERFORMANCE.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pbx_actors::Timestamp;
use pbx_actors::media::{G711, PacketKind, PeerMedia, Relay, RelayConfig, RelayInput, RelayOutput, Side};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

const PAYLOAD_BYTES: usize = 160;

fn peer(rtp: SocketAddr, codec: (u8, G711)) -> PeerMedia {
    PeerMedia { rtp: Some(rtp), rtcp: None, codec, telephone_event: Some(101), sends: true }
}

fn relay(c: &mut Criterion) {
    let caller: SocketAddr = "192.0.2.10:4000".parse().expect("literal");
    let callee: SocketAddr = "192.0.2.20:6000".parse().expect("literal");
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(1));
    for (name, callee_codec) in [("passthrough_pcmu", (0, G711::Mu)), ("transcode_pcmu_to_pcma", (8, G711::A))] {
        let mut now = Timestamp::from_secs(1_000);
        let mut relay = Relay::new(RelayConfig::default(), 1, now);
        relay.handle(now, RelayInput::Configure { side: Side::A, peer: peer(caller, (0, G711::Mu)) });
        relay.handle(now, RelayInput::Configure { side: Side::B, peer: peer(callee, callee_codec) });
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
        packet.extend((0..PAYLOAD_BYTES).map(|i| i as u8));
        let mut seq = 0u16;
        group.bench_function(name, |b| {
            b.iter(|| {
                now = now + Duration::from_millis(20);
                seq = seq.wrapping_add(1);
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                let bytes = packet.clone().into();
                relay.handle(now, RelayInput::Packet { side: Side::A, kind: PacketKind::Rtp, source: caller, bytes });
                let out = relay.poll_output();
                assert!(matches!(out, Some(RelayOutput::Transmit { .. })), "every packet is forwarded");
                black_box(out)
            })
        });
    }
    let mut now = Timestamp::from_secs(1_000);
    let mut relay = Relay::new(RelayConfig::default(), 1, now);
    relay.handle(now, RelayInput::Configure { side: Side::A, peer: peer(caller, (0, G711::Mu)) });
    relay.handle(now, RelayInput::Configure { side: Side::B, peer: peer(callee, (0, G711::Mu)) });
    let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
    packet.extend((0..PAYLOAD_BYTES).map(|i| i as u8));
    let mut seq = 0u16;
    group.bench_function("in_place_pcmu", |b| {
        b.iter(|| {
            now = now + Duration::from_millis(20);
            seq = seq.wrapping_add(1);
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            let forward = relay.relay_in_place(now, Side::A, PacketKind::Rtp, caller, &mut packet);
            assert!(forward.is_some(), "every packet is forwarded");
            black_box(forward)
        })
    });
    group.finish();
}

fn g711(c: &mut Criterion) {
    let mut group = c.benchmark_group("g711");
    group.throughput(Throughput::Bytes(PAYLOAD_BYTES as u64));
    let mut payload: Vec<u8> = (0..PAYLOAD_BYTES).map(|i| i as u8).collect();
    group.bench_function("ulaw_to_alaw_160", |b| b.iter(|| G711::Mu.transcode(G711::A, black_box(&mut payload))));
    group.finish();
}

fn mixer(c: &mut Criterion) {
    use pbx_actors::media::mixer::{FRAME_MS, FRAME_SAMPLES, Mixer, MixerConfig, MixerOutput, Participant};
    let mut group = c.benchmark_group("mixer");
    for talkers in [1u32, 3, 5] {
        let mut mixer: Mixer<u32> = Mixer::new(MixerConfig::default(), Timestamp::ZERO);
        for id in 0..5u32 {
            let participant =
                Participant { law: G711::Mu, payload_type: 0, ssrc: id, initial_timestamp: 0, initial_sequence: 0 };
            mixer.join(id, participant).expect("room has space");
        }
        // A tone for talkers, G.711 silence for listeners.
        let payloads: Vec<Vec<u8>> = (0..5u32)
            .map(|id| {
                (0..FRAME_SAMPLES)
                    .map(|i| {
                        let level = if id < talkers { 6000.0 } else { 0.0 };
                        let t = i as f64 / 8000.0;
                        G711::Mu.encode(
                            (level * (2.0 * std::f64::consts::PI * (300.0 + 200.0 * f64::from(id)) * t).sin()) as i16,
                        )
                    })
                    .collect()
            })
            .collect();
        let mut tick = 0u64;
        let mut packet = vec![0u8; 12 + FRAME_SAMPLES];
        group.throughput(Throughput::Elements(5));
        group.bench_function(format!("room_of_5_talkers_{talkers}"), |b| {
            b.iter(|| {
                for (id, payload) in payloads.iter().enumerate() {
                    packet[0] = 0x80;
                    packet[1] = 0;
                    packet[2..4].copy_from_slice(&(tick as u16).to_be_bytes());
                    packet[4..8].copy_from_slice(&((tick as u32).wrapping_mul(FRAME_SAMPLES as u32)).to_be_bytes());
                    packet[8..12].copy_from_slice(&(id as u32).to_be_bytes());
                    packet[12..].copy_from_slice(payload);
                    mixer.receive(id as u32, &packet);
                }
                tick += 1;
                mixer.handle_timeout(Timestamp::from_millis(tick * FRAME_MS));
                let mut sent = 0;
                while let Some(out) = mixer.poll_output() {
                    sent += usize::from(matches!(out, MixerOutput::Rtp { .. }));
                }
                assert_eq!(sent, 5, "one packet per participant per tick");
                black_box(sent)
            })
        });
    }
    group.finish();
}

fn short() -> Criterion {
    Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(30)
}

criterion_group! { name = benches; config = short(); targets = relay, g711, mixer }
criterion_main!(benches);

//! Criterion benchmarks of SRTP (`media::srtp`) on the relay's path: what one 20 ms G.711 packet
//! (12-byte header, 160-byte payload) costs when a leg is encrypted.
//!
//! - `srtp/plain_copy`: the packet copied into the relay's buffer, nothing else: the floor a
//!   plain-RTP relay pays per packet, for comparison.
//! - `srtp/protect_80`, `srtp/protect_32`: a packet from a plain-RTP leg encrypted toward an
//!   SRTP leg (AES-128 counter mode, HMAC-SHA1 tag of 80 or 32 bits), in place.
//! - `srtp/unprotect_protect_80`, `srtp/unprotect_protect_32`: an SRTP packet from one leg
//!   authenticated and decrypted under its keys, then encrypted again under the other leg's,
//!   in place: an SRTP-to-SRTP call.
//!
//! Each packet has the next sequence number (replay protection refuses a repeat); the phone's
//! own encryption is done outside the measurement. Packets per second per core = 1 / the time
//! of one iteration. Runs are short, as in `rtp.rs`. See docs/PERFORMANCE.md.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pbx_actors::media::srtp::{KEY_SALT_BYTES, KeyMaterial, SRTCP_TRAILER_BYTES, SrtpSession, Suite};
use std::hint::black_box;
use std::time::Duration;

const PAYLOAD_BYTES: usize = 160;
const PACKET_BYTES: usize = 12 + PAYLOAD_BYTES;
/// The relay's buffer: the packet and room for any SRTP trailer.
const BUFFER_BYTES: usize = PACKET_BYTES + SRTCP_TRAILER_BYTES;

/// Fixed keys, distinct per direction and leg (a benchmark needs no secrecy).
fn key(suite: Suite, fill: u8) -> KeyMaterial {
    KeyMaterial::new(suite, [fill; KEY_SALT_BYTES])
}

/// The next plain packet of the phone's stream, in a buffer with room for a trailer.
fn next_packet(sequence: &mut u16) -> Vec<u8> {
    *sequence = sequence.wrapping_add(1);
    let mut packet = vec![0x80, 0];
    packet.extend(sequence.to_be_bytes());
    packet.extend((u32::from(*sequence) * PAYLOAD_BYTES as u32).to_be_bytes());
    packet.extend(0x1234_5678u32.to_be_bytes());
    packet.extend((0..PAYLOAD_BYTES).map(|i| i as u8));
    packet.resize(BUFFER_BYTES, 0);
    packet
}

fn srtp(c: &mut Criterion) {
    let mut group = c.benchmark_group("srtp");
    group.throughput(Throughput::Elements(1));

    let mut sequence = 0u16;
    let mut relay_buffer = vec![0u8; BUFFER_BYTES];
    group.bench_function("plain_copy", |b| {
        b.iter_batched(
            || next_packet(&mut sequence),
            |packet| {
                relay_buffer[..PACKET_BYTES].copy_from_slice(&packet[..PACKET_BYTES]);
                black_box(&relay_buffer);
                packet
            },
            BatchSize::SmallInput,
        )
    });

    for (name, suite) in [("80", Suite::AesCm128HmacSha1_80), ("32", Suite::AesCm128HmacSha1_32)] {
        // Toward leg B pbx sends under key 2 and B under key 3; plain leg A has no keys.
        let mut leg_b = SrtpSession::new(&key(suite, 3), &key(suite, 2));
        let mut sequence = 0u16;
        group.bench_function(format!("protect_{name}"), |b| {
            b.iter_batched(
                || next_packet(&mut sequence),
                |mut packet| {
                    let len = leg_b.protect_rtp(&mut packet, PACKET_BYTES).expect("protects");
                    black_box(len);
                    packet
                },
                BatchSize::SmallInput,
            )
        });

        // Phone A sends under key 1 (pbx's leg A unprotects with it); leg B as above.
        let mut phone_a = SrtpSession::new(&key(suite, 4), &key(suite, 1));
        let mut leg_a = SrtpSession::new(&key(suite, 1), &key(suite, 4));
        let mut leg_b = SrtpSession::new(&key(suite, 3), &key(suite, 2));
        let mut sequence = 0u16;
        group.bench_function(format!("unprotect_protect_{name}"), |b| {
            b.iter_batched(
                || {
                    let mut packet = next_packet(&mut sequence);
                    let len = phone_a.protect_rtp(&mut packet, PACKET_BYTES).expect("the phone protects");
                    (packet, len)
                },
                |(mut packet, len)| {
                    let len = leg_a.unprotect_rtp(&mut packet[..len]).expect("authenticates");
                    let len = leg_b.protect_rtp(&mut packet, len).expect("protects");
                    black_box(len);
                    packet
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn short() -> Criterion {
    Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(30)
}

criterion_group! { name = benches; config = short(); targets = srtp }
criterion_main!(benches);

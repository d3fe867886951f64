//! The RTP relay machine (actors/src/media/relay.rs) of one call, fed a script of SDP
//! configurations, packets on either side's RTP and RTCP ports from a handful of sources, and
//! the passing of time. Beyond "no panic": outputs stay bounded and every transmission goes to
//! a usable address.
//!
//! Script, one op after another until the bytes run out:
//! `0 side addr codec flags` configure; `1|2 side|kind src len bytes…` a packet (len bytes,
//! fewer if the input ends); `3 n` n × 20 ms pass (n ≥ 128: (n − 127) s), then a timeout.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pbx_actors::Timestamp;
use pbx_actors::media::{G711, PacketKind, PeerMedia, Relay, RelayConfig, RelayInput, RelayOutput, Side};
use std::net::SocketAddr;
use std::time::Duration;

const SOURCES: [&str; 6] =
    ["192.0.2.10:4000", "192.0.2.10:4001", "192.0.2.20:5000", "192.0.2.20:5001", "198.51.100.66:6666", "0.0.0.0:0"];

fn source(n: u8) -> SocketAddr {
    SOURCES[n as usize % SOURCES.len()].parse().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let mut now = Timestamp::from_secs(1_000);
    let mut relay = Relay::new(RelayConfig { inactivity: Duration::from_secs(5) }, 42, now);
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let input = match op % 4 {
            0 => {
                let (Some(side), Some(addr), Some(codec), Some(flags)) =
                    (bytes.next(), bytes.next(), bytes.next(), bytes.next())
                else {
                    break;
                };
                let rtp = (addr & 0x80 == 0).then(|| source(addr));
                let rtcp = (addr & 0x40 == 0).then(|| source(addr >> 3));
                let law = if codec & 0x80 == 0 { G711::Mu } else { G711::A };
                let peer = PeerMedia {
                    rtp,
                    rtcp,
                    codec: (codec & 0x7F, law),
                    telephone_event: (flags & 1 == 1).then_some(flags >> 1),
                    sends: flags & 0x80 == 0,
                };
                RelayInput::Configure { side: if side & 1 == 0 { Side::A } else { Side::B }, peer }
            }
            1 | 2 => {
                let (Some(how), Some(src), Some(len)) = (bytes.next(), bytes.next(), bytes.next()) else { break };
                let packet: Vec<u8> = bytes.by_ref().take(len as usize).collect();
                let side = if how & 1 == 0 { Side::A } else { Side::B };
                let kind = if op % 4 == 1 { PacketKind::Rtp } else { PacketKind::Rtcp };
                RelayInput::Packet { side, kind, source: source(src), bytes: Bytes::from(packet) }
            }
            _ => {
                let Some(n) = bytes.next() else { break };
                let step = if n < 128 {
                    Duration::from_millis(20 * u64::from(n))
                } else {
                    Duration::from_secs(u64::from(n - 127))
                };
                now = now + step;
                RelayInput::Timeout
            }
        };
        relay.handle(now, input);
        let mut outputs = 0;
        while let Some(output) = relay.poll_output() {
            outputs += 1;
            assert!(outputs <= 2, "one input made more than two outputs");
            if let RelayOutput::Transmit { destination, .. } = output {
                assert!(destination.port() != 0 && !destination.ip().is_unspecified(), "sent to {destination}");
            }
        }
        let _ = (relay.poll_timeout(), relay.stats(Side::A), relay.stats(Side::B));
    }
});

//! RTP/RTCP views (actors/src/media/rtp.rs) and G.711 transcoding: any datagram that reaches
//! a media port, read as RTP and as RTCP, every accessor, and the in-place rewrites the relay
//! does on what the views accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_actors::media::G711;
use pbx_actors::media::rtp::{self, RtcpCompound, RtpPacket, TelephoneEvent};

fuzz_target!(|data: &[u8]| {
    if let Some(packet) = RtpPacket::parse(data) {
        let _ = (packet.marker(), packet.payload_type(), packet.sequence(), packet.timestamp(), packet.ssrc());
        let _ = (packet.csrc_count(), packet.has_extension(), packet.has_padding());
        let range = packet.payload_range();
        assert!(packet.header_len() <= range.start && range.start <= range.end && range.end <= data.len());
        let payload = packet.payload();
        let _ = TelephoneEvent::parse(payload);
        let mut copy = data.to_vec();
        rtp::rewrite_rtp_header(&mut copy, true, 8, 1, 2, 3);
        let again = RtpPacket::parse(&copy).expect("a rewritten packet is still RTP");
        assert_eq!((again.payload_type(), again.sequence(), again.ssrc()), (8, 1, 3));
        let mut audio = copy[range].to_vec();
        G711::Mu.transcode(G711::A, &mut audio);
        G711::A.transcode(G711::Mu, &mut audio);
    }
    if let Some(compound) = RtcpCompound::parse(data) {
        let _ = compound.sender_ssrc();
        let mut total = 0;
        for packet in compound.packets() {
            let _ = (packet.packet_type(), packet.count(), packet.sender_ssrc());
            total += packet.bytes().len();
        }
        assert_eq!(total, data.len(), "the packets of a compound cover it exactly");
        let mut copy = data.to_vec();
        let rewritten = rtp::rewrite_rtcp_sender_ssrc(&mut copy, 0xdead_beef).expect("parsed, so rewritable");
        let after = RtcpCompound::parse(&copy).expect("still a compound");
        assert!(after.packets().filter(|p| p.sender_ssrc() == Some(0xdead_beef)).count() >= rewritten);
    } else {
        let mut copy = data.to_vec();
        assert_eq!(rtp::rewrite_rtcp_sender_ssrc(&mut copy, 1), None);
        assert_eq!(copy, data, "a refused compound is left unchanged");
    }
});

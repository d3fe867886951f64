//! Zero-copy views of the packets a media relay reads and rewrites: the RTP fixed header
//! (RFC 3550 §5.1), RTCP compound packets (RFC 3550 §6.1) and the RFC 4733 telephone-event
//! payload. Each view checks the bytes once and then reads fields by offset; malformed input
//! gives `None`, never a panic.
//!
//! Not done: header-extension contents (RFC 8285) are skipped, not read; RTCP report blocks
//! and SDES items are not decoded. SRTP/SRTCP (RFC 3711) is `srtp`'s: it hands this module
//! plain packets.

/// The only RTP/RTCP version in use (RFC 3550 §5.1).
pub const VERSION: u8 = 2;
/// Bytes of the RTP fixed header, before any CSRC.
pub const RTP_HEADER_BYTES: usize = 12;

/// A checked RTP packet: version 2, and the CSRC list, header extension and padding all lie
/// inside the bytes.
#[derive(Clone, Copy, Debug)]
pub struct RtpPacket<'a> {
    bytes: &'a [u8],
    header_len: usize,
    payload_end: usize,
}

impl<'a> RtpPacket<'a> {
    pub fn parse(bytes: &'a [u8]) -> Option<RtpPacket<'a>> {
        if bytes.len() < RTP_HEADER_BYTES || bytes[0] >> 6 != VERSION {
            return None;
        }
        let mut header_len = RTP_HEADER_BYTES + 4 * (bytes[0] & 0x0F) as usize;
        if bytes[0] & 0x10 != 0 {
            // §5.3.1: 16 bits profile-defined, 16 bits length in 32-bit words, then the words.
            let words = bytes.get(header_len + 2..header_len + 4)?;
            header_len += 4 + 4 * u16::from_be_bytes([words[0], words[1]]) as usize;
        }
        if header_len > bytes.len() {
            return None;
        }
        let mut payload_end = bytes.len();
        if bytes[0] & 0x20 != 0 {
            // §5.1: the last octet counts the padding octets, itself included.
            let padding = bytes[bytes.len() - 1] as usize;
            if padding == 0 || padding > bytes.len() - header_len {
                return None;
            }
            payload_end -= padding;
        }
        Some(RtpPacket { bytes, header_len, payload_end })
    }

    pub fn marker(&self) -> bool {
        self.bytes[1] & 0x80 != 0
    }

    pub fn payload_type(&self) -> u8 {
        self.bytes[1] & 0x7F
    }

    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }

    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.bytes[4], self.bytes[5], self.bytes[6], self.bytes[7]])
    }

    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.bytes[8], self.bytes[9], self.bytes[10], self.bytes[11]])
    }

    pub fn csrc_count(&self) -> usize {
        (self.bytes[0] & 0x0F) as usize
    }

    pub fn has_extension(&self) -> bool {
        self.bytes[0] & 0x10 != 0
    }

    pub fn has_padding(&self) -> bool {
        self.bytes[0] & 0x20 != 0
    }

    /// Where the payload starts: after the fixed header, the CSRCs and any extension.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The payload's byte range in the packet, padding excluded.
    pub fn payload_range(&self) -> std::ops::Range<usize> {
        self.header_len..self.payload_end
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..self.payload_end]
    }
}

/// Rewrites the fields a relay owns in a packet that [`RtpPacket::parse`] accepted; CSRCs,
/// extension, payload and padding are left where they are.
pub fn rewrite_rtp_header(packet: &mut [u8], marker: bool, payload_type: u8, sequence: u16, timestamp: u32, ssrc: u32) {
    packet[1] = (u8::from(marker) << 7) | (payload_type & 0x7F);
    packet[2..4].copy_from_slice(&sequence.to_be_bytes());
    packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
    packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// RTCP packet types of RFC 3550 §12.1.
pub mod rtcp_type {
    pub const SR: u8 = 200;
    pub const RR: u8 = 201;
    pub const SDES: u8 = 202;
    pub const BYE: u8 = 203;
    pub const APP: u8 = 204;
}

/// A checked RTCP compound packet: every packet is version 2 and its length field walks
/// exactly to the end of the datagram (the §A.2 validity check, without requiring SR/RR
/// first, so reduced-size RTCP of RFC 5506 passes too).
#[derive(Clone, Copy, Debug)]
pub struct RtcpCompound<'a> {
    bytes: &'a [u8],
}

/// One packet of a compound.
#[derive(Clone, Copy, Debug)]
pub struct RtcpPacket<'a> {
    bytes: &'a [u8],
}

impl<'a> RtcpCompound<'a> {
    pub fn parse(bytes: &'a [u8]) -> Option<RtcpCompound<'a>> {
        if bytes.is_empty() {
            return None;
        }
        let mut offset = 0;
        while offset < bytes.len() {
            let header = bytes.get(offset..offset + 4)?;
            if header[0] >> 6 != VERSION {
                return None;
            }
            offset += 4 * (u16::from_be_bytes([header[2], header[3]]) as usize + 1);
        }
        (offset == bytes.len()).then_some(RtcpCompound { bytes })
    }

    pub fn packets(&self) -> impl Iterator<Item = RtcpPacket<'a>> + 'a {
        let mut rest = self.bytes;
        std::iter::from_fn(move || {
            let len = 4 * (u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]) as usize + 1);
            let (packet, tail) = rest.split_at_checked(len)?;
            rest = tail;
            Some(RtcpPacket { bytes: packet })
        })
    }

    /// The SSRC of the sender, from the first packet that names one.
    pub fn sender_ssrc(&self) -> Option<u32> {
        self.packets().find_map(|p| p.sender_ssrc())
    }
}

impl RtcpPacket<'_> {
    pub fn packet_type(&self) -> u8 {
        self.bytes[1]
    }

    /// The 5-bit count field: report blocks, SDES chunks, or BYE sources.
    pub fn count(&self) -> usize {
        (self.bytes[0] & 0x1F) as usize
    }

    /// Where this packet names its sender (SR, RR, the first SDES chunk, the first BYE
    /// source), the offset of that SSRC in the packet.
    fn sender_ssrc_offset(&self) -> Option<usize> {
        let named = match self.packet_type() {
            rtcp_type::SR | rtcp_type::RR => true,
            rtcp_type::SDES | rtcp_type::BYE => self.count() > 0,
            _ => false,
        };
        (named && self.bytes.len() >= 8).then_some(4)
    }

    pub fn sender_ssrc(&self) -> Option<u32> {
        let at = self.sender_ssrc_offset()?;
        Some(u32::from_be_bytes([self.bytes[at], self.bytes[at + 1], self.bytes[at + 2], self.bytes[at + 3]]))
    }

    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

/// Sets the sender SSRC of every SR, RR, SDES (first chunk) and BYE (first source) packet of
/// a compound to `ssrc`; other packet types, report blocks and further chunks are untouched.
/// Returns how many were rewritten, or `None` (and changes nothing) if the bytes are not a
/// valid compound.
pub fn rewrite_rtcp_sender_ssrc(compound: &mut [u8], ssrc: u32) -> Option<usize> {
    RtcpCompound::parse(compound)?;
    let (mut offset, mut rewritten) = (0, 0);
    // The parse above checked that these lengths walk exactly to the end.
    while offset < compound.len() {
        let len = 4 * (u16::from_be_bytes([compound[offset + 2], compound[offset + 3]]) as usize + 1);
        if let Some(at) = (RtcpPacket { bytes: &compound[offset..offset + len] }).sender_ssrc_offset() {
            compound[offset + at..offset + at + 4].copy_from_slice(&ssrc.to_be_bytes());
            rewritten += 1;
        }
        offset += len;
    }
    Some(rewritten)
}

/// An RFC 4733 §2.3 named-event payload (DTMF digits 0–9 are events 0–9, `*` 10, `#` 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    /// The last packet(s) of the event (§2.5.1.3 sends it three times).
    pub end: bool,
    /// Power level in −dBm0, 0..=63.
    pub volume: u8,
    /// In timestamp units since the event began.
    pub duration: u16,
}

impl TelephoneEvent {
    /// The first event of a payload; longer payloads (several events, §2.5.1.5 via RFC 2198)
    /// are accepted as long as they hold whole 4-byte events.
    pub fn parse(payload: &[u8]) -> Option<TelephoneEvent> {
        if payload.len() < 4 || !payload.len().is_multiple_of(4) {
            return None;
        }
        Some(TelephoneEvent {
            event: payload[0],
            end: payload[1] & 0x80 != 0,
            volume: payload[1] & 0x3F,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rtp(first: u8, rest_of_header: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut p = vec![first, 0x80 | 8, 0x12, 0x34, 0, 0, 0x03, 0x20, 0xde, 0xad, 0xbe, 0xef];
        p.extend_from_slice(rest_of_header);
        p.extend_from_slice(tail);
        p
    }

    /// A plain packet's fields read as written, and the payload is everything after 12 bytes.
    #[test]
    fn reads_fixed_header() {
        let bytes = rtp(0x80, &[], &[1, 2, 3]);
        let p = RtpPacket::parse(&bytes).unwrap();
        assert!(p.marker());
        assert_eq!((p.payload_type(), p.sequence(), p.timestamp(), p.ssrc()), (8, 0x1234, 800, 0xdeadbeef));
        assert_eq!((p.csrc_count(), p.has_extension(), p.has_padding()), (0, false, false));
        assert_eq!(p.payload(), &[1, 2, 3]);
    }

    /// CSRCs, a one-word extension and two bytes of padding are all skipped around the payload.
    #[test]
    fn skips_csrc_extension_and_padding() {
        let csrc = [0, 0, 0, 1, 0, 0, 0, 2];
        let extension = [0xBE, 0xDE, 0, 1, 9, 9, 9, 9];
        let bytes = rtp(0x80 | 0x20 | 0x10 | 2, &[csrc.as_slice(), extension.as_slice()].concat(), &[7, 7, 0, 2]);
        let p = RtpPacket::parse(&bytes).unwrap();
        assert_eq!((p.csrc_count(), p.has_extension(), p.has_padding()), (2, true, true));
        assert_eq!(p.header_len(), 12 + 8 + 8);
        assert_eq!(p.payload(), &[7, 7]);
    }

    /// Each way a header can lie about its length is refused.
    #[test]
    fn refuses_malformed_rtp() {
        assert!(RtpPacket::parse(&[0x80; 11]).is_none(), "short");
        assert!(RtpPacket::parse(&rtp(0x40, &[], &[])).is_none(), "version 1");
        assert!(RtpPacket::parse(&rtp(0x81, &[], &[])).is_none(), "CSRC past the end");
        assert!(RtpPacket::parse(&rtp(0x90, &[0, 0, 0, 2, 1, 1, 1, 1], &[])).is_none(), "extension past the end");
        assert!(RtpPacket::parse(&rtp(0xA0, &[], &[1, 0])).is_none(), "zero padding count");
        assert!(RtpPacket::parse(&rtp(0xA0, &[], &[1, 9])).is_none(), "padding past the header");
    }

    /// Only the owned fields change; the rewritten packet parses with the new values.
    #[test]
    fn rewrites_header_fields() {
        let mut bytes = rtp(0x80, &[], &[5, 6]);
        rewrite_rtp_header(&mut bytes, false, 0, 7, 8, 9);
        let p = RtpPacket::parse(&bytes).unwrap();
        assert_eq!((p.marker(), p.payload_type(), p.sequence(), p.timestamp(), p.ssrc()), (false, 0, 7, 8, 9));
        assert_eq!(p.payload(), &[5, 6]);
    }

    /// An SR with one report block, an SDES with one chunk, and a BYE.
    fn compound() -> Vec<u8> {
        let mut sr = vec![0x81, 200, 0, 12, 0, 0, 0, 1];
        sr.extend_from_slice(&[0; 20]); // sender info
        sr.extend_from_slice(&[0, 0, 0, 0x77]); // report block: SSRC of the reported source
        sr.extend_from_slice(&[0; 20]);
        let sdes = [0x81, 202, 0, 2, 0, 0, 0, 1, 1, 1, b'a', 0];
        let bye = [0x81, 203, 0, 1, 0, 0, 0, 1];
        [sr.as_slice(), sdes.as_slice(), bye.as_slice()].concat()
    }

    /// The walk finds every packet, and each names the sender.
    #[test]
    fn walks_compound() {
        let bytes = compound();
        let c = RtcpCompound::parse(&bytes).unwrap();
        let types: Vec<_> = c.packets().map(|p| (p.packet_type(), p.sender_ssrc())).collect();
        assert_eq!(types, [(200, Some(1)), (202, Some(1)), (203, Some(1))]);
        assert_eq!(c.sender_ssrc(), Some(1));
    }

    /// The sender SSRC is replaced everywhere it appears; the report block's SSRC stays.
    #[test]
    fn rewrites_sender_ssrc_only() {
        let mut bytes = compound();
        assert_eq!(rewrite_rtcp_sender_ssrc(&mut bytes, 0xAABBCCDD), Some(3));
        let c = RtcpCompound::parse(&bytes).unwrap();
        assert!(c.packets().all(|p| p.sender_ssrc() == Some(0xAABBCCDD)));
        assert_eq!(&bytes[28..32], &[0, 0, 0, 0x77], "report block passes through");
    }

    /// Lengths that overrun or stop short of the datagram, and a wrong version, are refused.
    #[test]
    fn refuses_malformed_rtcp() {
        let good = compound();
        assert!(RtcpCompound::parse(&good[..good.len() - 4]).is_none(), "last packet cut");
        assert!(RtcpCompound::parse(&[&good[..], &[0x80, 200]].concat()).is_none(), "trailing bytes");
        let mut v1 = good.clone();
        v1[0] = 0x41;
        assert!(RtcpCompound::parse(&v1).is_none());
        assert!(RtcpCompound::parse(&[]).is_none());
        assert_eq!(rewrite_rtcp_sender_ssrc(&mut v1, 5), None);
    }

    /// The RFC 4733 §2.3 layout: event, E bit, volume, duration.
    #[test]
    fn reads_telephone_event() {
        let e = TelephoneEvent::parse(&[11, 0x80 | 10, 0x03, 0x20]).unwrap();
        assert_eq!(e, TelephoneEvent { event: 11, end: true, volume: 10, duration: 800 });
        assert!(TelephoneEvent::parse(&[1, 2, 3]).is_none());
        assert!(TelephoneEvent::parse(&[1, 2, 3, 4, 5]).is_none());
    }

    proptest! {
        /// Arbitrary bytes never panic any view, and what parses stays inside the bytes.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(p) = RtpPacket::parse(&bytes) {
                prop_assert!(p.payload_range().end <= bytes.len());
                let _ = (p.marker(), p.payload_type(), p.sequence(), p.timestamp(), p.ssrc(), p.payload());
            }
            if let Some(c) = RtcpCompound::parse(&bytes) {
                prop_assert_eq!(c.packets().map(|p| p.bytes().len()).sum::<usize>(), bytes.len());
                let _ = c.sender_ssrc();
            }
            let mut copy = bytes.clone();
            let _ = rewrite_rtcp_sender_ssrc(&mut copy, 1);
            let _ = TelephoneEvent::parse(&bytes);
        }

        /// Arbitrary bytes behind a valid version octet reach the deeper checks, still no panic.
        #[test]
        fn versioned_bytes_never_panic(first in any::<u8>(), rest in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = [&[0x80 | (first & 0x3F)], rest.as_slice()].concat();
            if let Some(p) = RtpPacket::parse(&bytes) {
                prop_assert!(p.header_len() <= p.payload_range().end);
            }
            let _ = RtcpCompound::parse(&bytes).map(|c| c.sender_ssrc());
        }
    }
}

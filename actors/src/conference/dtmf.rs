//! RFC 4733 telephone events to key presses.
//!
//! A sender repeats each event in several packets (one every 50 ms or so while the key is
//! down, the end packet three times, §2.5.1.3 and §2.5.1.4), all with the RTP timestamp of the
//! event's start. A key press is therefore reported once per (SSRC, timestamp), on its first
//! packet: the room reacts while the key is still down, as phones' users expect. Events other
//! than the sixteen DTMF ones (flash, modem tones) are ignored.

use crate::media::rtp::{RtpPacket, TelephoneEvent};

/// One key of a phone's keypad.
pub fn digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// Key presses from one participant's telephone-event packets.
#[derive(Debug, Default)]
pub struct DigitReader {
    /// The (SSRC, timestamp) of the last event reported.
    last: Option<(u32, u32)>,
}

impl DigitReader {
    /// The key this packet reports, if it is the first packet of a new press. `packet` must be
    /// of the negotiated telephone-event payload type; anything malformed gives `None`.
    pub fn read(&mut self, packet: &RtpPacket<'_>) -> Option<char> {
        let event = TelephoneEvent::parse(packet.payload())?;
        let key = digit(event.event)?;
        let press = (packet.ssrc(), packet.timestamp());
        if self.last == Some(press) {
            return None;
        }
        self.last = Some(press);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_packet(ssrc: u32, timestamp: u32, event: u8, end: bool, duration: u16) -> Vec<u8> {
        let mut p = vec![0x80, 101, 0, 1];
        p.extend_from_slice(&timestamp.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[event, if end { 0x80 | 10 } else { 10 }]);
        p.extend_from_slice(&duration.to_be_bytes());
        p
    }

    #[test]
    fn a_press_repeated_in_many_packets_is_one_key() {
        let mut reader = DigitReader::default();
        let mut keys = Vec::new();
        // "*6#": each press in 4 packets while down and 3 end packets, as RFC 4733 senders do.
        for (n, event) in [10u8, 6, 11].into_iter().enumerate() {
            let ts = 8000 + 1600 * n as u32;
            for i in 0..7u16 {
                let bytes = event_packet(7, ts, event, i >= 4, 400 * (i + 1));
                keys.extend(reader.read(&RtpPacket::parse(&bytes).unwrap()));
            }
        }
        assert_eq!(keys, vec!['*', '6', '#']);
    }

    #[test]
    fn the_same_key_twice_is_two_presses() {
        let mut reader = DigitReader::default();
        let a = event_packet(7, 100, 5, true, 800);
        let b = event_packet(7, 2000, 5, false, 160);
        assert_eq!(reader.read(&RtpPacket::parse(&a).unwrap()), Some('5'));
        assert_eq!(reader.read(&RtpPacket::parse(&b).unwrap()), Some('5'));
        // A new stream (SSRC) with the same timestamp is a new press too.
        let c = event_packet(8, 2000, 5, false, 160);
        assert_eq!(reader.read(&RtpPacket::parse(&c).unwrap()), Some('5'));
    }

    #[test]
    fn other_events_and_malformed_payloads_are_no_key() {
        let mut reader = DigitReader::default();
        let flash = event_packet(7, 100, 16, false, 160);
        assert_eq!(reader.read(&RtpPacket::parse(&flash).unwrap()), None);
        let mut short = event_packet(7, 200, 1, false, 160);
        short.truncate(14);
        assert_eq!(reader.read(&RtpPacket::parse(&short).unwrap()), None);
        assert_eq!((0..=15).filter_map(digit).collect::<String>(), "0123456789*#ABCD");
    }
}

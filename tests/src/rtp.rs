//! RTP for the call tests: packets (RFC 3550 §5.1), pcap files (the SIPp `play_pcap_audio`
//! input and the fixtures in /usr/share/sip-tester) and a UDP sink that records what pbx relays.
//!
//! The pcap reader takes classic libpcap files (micro- or nanosecond, either byte order) with
//! Ethernet (optionally 802.1Q-tagged), Linux cooked (SLL) or raw IP link layers, IPv4 or IPv6
//! without extension headers, and keeps only UDP. The writer produces what SIPp reads:
//! Ethernet/IPv4/UDP, one stream, one destination port. No pcapng, no IP fragments, no RTCP.

use crate::audio::G711;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest an [`RtpSink`] records, whatever the test forgets.
pub const SINK_MAX: Duration = Duration::from_secs(120);

/// One RTP packet, borrowed from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtp<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// Parses an RTP packet: version 2, CSRCs, header extension and padding skipped.
pub fn parse_rtp(bytes: &[u8]) -> Result<Rtp<'_>, String> {
    if bytes.len() < 12 {
        return Err(format!("RTP packet of {} bytes is shorter than the 12-byte header", bytes.len()));
    }
    if bytes[0] >> 6 != 2 {
        return Err(format!("RTP version {} (expected 2)", bytes[0] >> 6));
    }
    let csrc_count = usize::from(bytes[0] & 0x0F);
    let mut start = 12 + 4 * csrc_count;
    if bytes[0] & 0x10 != 0 {
        let words = bytes.get(start + 2..start + 4).ok_or("RTP header extension cut short")?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let mut end = bytes.len();
    if bytes[0] & 0x20 != 0 {
        let padding = usize::from(*bytes.last().unwrap_or(&0));
        end = end.checked_sub(padding).ok_or("RTP padding longer than the packet")?;
    }
    if start > end {
        return Err("RTP header longer than the packet".into());
    }
    Ok(Rtp {
        marker: bytes[1] & 0x80 != 0,
        payload_type: bytes[1] & 0x7F,
        sequence: u16::from_be_bytes([bytes[2], bytes[3]]),
        timestamp: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        ssrc: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        payload: &bytes[start..end],
    })
}

/// A minimal RTP packet (no CSRC, extension or padding).
pub fn rtp_packet(payload_type: u8, sequence: u16, timestamp: u32, ssrc: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + payload.len());
    out.push(0x80);
    out.push(payload_type & 0x7F | if marker { 0x80 } else { 0 });
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One UDP datagram from a pcap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapUdp {
    /// Capture time since the epoch (µs).
    pub time_us: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;

/// Every UDP datagram in a classic pcap file, in file order.
pub fn read_pcap(path: &Path) -> io::Result<Vec<PcapUdp>> {
    let bytes = std::fs::read(path)?;
    parse_pcap(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

/// [`read_pcap`] on bytes.
pub fn parse_pcap(bytes: &[u8]) -> Result<Vec<PcapUdp>, String> {
    let header = bytes.get(..24).ok_or("shorter than a pcap header")?;
    let magic = [header[0], header[1], header[2], header[3]];
    let (big_endian, nanos) = match magic {
        [0xD4, 0xC3, 0xB2, 0xA1] => (false, false),
        [0xA1, 0xB2, 0xC3, 0xD4] => (true, false),
        [0x4D, 0x3C, 0xB2, 0xA1] => (false, true),
        [0xA1, 0xB2, 0x3C, 0x4D] => (true, true),
        _ => return Err(format!("not a classic pcap file (magic {magic:02x?}); pcapng is not read")),
    };
    let u32_at = |b: &[u8], at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big_endian { u32::from_be_bytes(w) } else { u32::from_le_bytes(w) }
    };
    let linktype = u32_at(header, 20);
    let mut out = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let record = bytes.get(at..at + 16).ok_or("packet header cut short")?;
        let (seconds, fraction, captured) = (u32_at(record, 0), u32_at(record, 4), u32_at(record, 8) as usize);
        let frame = bytes.get(at + 16..at + 16 + captured).ok_or("packet data cut short")?;
        at += 16 + captured;
        let time_us = u64::from(seconds) * 1_000_000 + u64::from(if nanos { fraction / 1000 } else { fraction });
        let ip = match linktype {
            LINKTYPE_ETHERNET => ethernet_payload(frame),
            LINKTYPE_LINUX_SLL => {
                frame.get(14..16).filter(|t| t == &[0x08, 0x00] || t == &[0x86, 0xDD]).and(frame.get(16..))
            }
            LINKTYPE_RAW => Some(frame),
            other => return Err(format!("unsupported pcap link type {other}")),
        };
        if let Some((src, dst, payload)) = ip.and_then(udp_in_ip) {
            out.push(PcapUdp { time_us, src, dst, payload: payload.to_vec() });
        }
    }
    Ok(out)
}

/// The IP packet inside an Ethernet frame, skipping 802.1Q tags; `None` for non-IP frames.
fn ethernet_payload(frame: &[u8]) -> Option<&[u8]> {
    let mut type_at = 12;
    loop {
        let ethertype = frame.get(type_at..type_at + 2)?;
        match ethertype {
            [0x81, 0x00] | [0x88, 0xA8] => type_at += 4,
            [0x08, 0x00] | [0x86, 0xDD] => return frame.get(type_at + 2..),
            _ => return None,
        }
    }
}

/// Source, destination and payload of a UDP datagram in an IPv4 or IPv6 packet.
fn udp_in_ip(ip: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let (src, dst, udp) = match ip.first()? >> 4 {
        4 => {
            let header_len = usize::from(ip[0] & 0x0F) * 4;
            let total_len = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            if *ip.get(9)? != 17 || header_len < 20 {
                return None;
            }
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (src, dst, ip.get(header_len..total_len.min(ip.len()))?)
        }
        6 => {
            if *ip.get(6)? != 17 {
                return None;
            }
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(src)), IpAddr::V6(Ipv6Addr::from(dst)), ip.get(40..)?)
        }
        _ => return None,
    };
    let port = |at: usize| u16::from_be_bytes([udp[at], udp[at + 1]]);
    let length = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    let payload = udp.get(8..length.clamp(8, udp.len()))?;
    Some((SocketAddr::new(src, port(0)), SocketAddr::new(dst, port(2)), payload))
}

/// Writes datagrams as an Ethernet/IPv4/UDP pcap (UDP checksum 0, "not computed", which SIPp
/// recomputes anyway when it replays).
pub fn write_pcap(path: &Path, datagrams: &[PcapUdp]) -> io::Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // time zone, accuracy
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    for d in datagrams {
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (d.src.ip(), d.dst.ip()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "write_pcap writes IPv4 only"));
        };
        let udp_len = u16::try_from(8 + d.payload.len()).map_err(|_| io::Error::other("datagram over 64 KiB"))?;
        let ip_len = udp_len.checked_add(20).ok_or_else(|| io::Error::other("datagram over 64 KiB"))?;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let checksum = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&d.src.port().to_be_bytes());
        frame.extend_from_slice(&d.dst.port().to_be_bytes());
        frame.extend_from_slice(&udp_len.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&d.payload);
        out.extend_from_slice(&((d.time_us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((d.time_us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out)
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// G.711 payload per packet: 20 ms at 8 kHz.
pub const SAMPLES_PER_PACKET: usize = 160;
/// The SSRC of streams written by [`g711_stream_pcap`].
pub const PCAP_SSRC: u32 = 0x5EED_0001;

/// Writes `samples` as one G.711 RTP stream (20 ms packets, 20 ms apart) for SIPp's
/// `play_pcap_audio`; SIPp replaces the addresses and ports, so those are placeholders.
/// The RTP header is replayed as written: sequence numbers from 1, timestamps from 0.
pub fn g711_stream_pcap(path: &Path, law: G711, samples: &[i16]) -> io::Result<()> {
    let src: SocketAddr = "192.0.2.1:4000".parse().expect("literal address");
    let dst: SocketAddr = "192.0.2.2:4000".parse().expect("literal address");
    let datagrams: Vec<PcapUdp> = samples
        .chunks(SAMPLES_PER_PACKET)
        .enumerate()
        .map(|(i, chunk)| PcapUdp {
            time_us: 1_000_000 + i as u64 * 20_000,
            src,
            dst,
            payload: rtp_packet(
                law.payload_type(),
                (i + 1) as u16,
                (i * SAMPLES_PER_PACKET) as u32,
                PCAP_SSRC,
                i == 0,
                &law.encode(chunk),
            ),
        })
        .collect();
    write_pcap(path, &datagrams)
}

/// The payload type of telephone-event in the conference scenarios (`conference_uac*.xml`).
pub const TELEPHONE_EVENT_PT: u8 = 101;

/// [`g711_stream_pcap`] with RFC 4733 key presses: each `(ms, key)` sends the key's event at
/// that time into the stream (a start packet, then the end packet three times, 20 ms apart,
/// all with the RTP timestamp of the event's start, §2.5.1.3 and §2.5.1.4; a different SSRC is
/// not needed, the audio packets go on beside them). Keys: `0`–`9`, `*`, `#`.
pub fn g711_stream_with_keys_pcap(path: &Path, law: G711, samples: &[i16], keys: &[(u64, char)]) -> io::Result<()> {
    let src: SocketAddr = "192.0.2.1:4000".parse().expect("literal address");
    let dst: SocketAddr = "192.0.2.2:4000".parse().expect("literal address");
    let mut datagrams: Vec<PcapUdp> = Vec::new();
    let mut sequence: u16 = 1;
    let packets = samples.len().div_ceil(SAMPLES_PER_PACKET);
    let mut pending: Vec<(u64, char)> = keys.to_vec();
    pending.sort_by_key(|(ms, _)| *ms);
    let mut pending = pending.into_iter().peekable();
    for i in 0..packets {
        let at_ms = i as u64 * 20;
        let timestamp = (i * SAMPLES_PER_PACKET) as u32;
        let time_us = 1_000_000 + at_ms * 1_000;
        let chunk = &samples[i * SAMPLES_PER_PACKET..((i + 1) * SAMPLES_PER_PACKET).min(samples.len())];
        let payload = rtp_packet(law.payload_type(), sequence, timestamp, PCAP_SSRC, i == 0, &law.encode(chunk));
        sequence = sequence.wrapping_add(1);
        datagrams.push(PcapUdp { time_us, src, dst, payload });
        while let Some(&(ms, key)) = pending.peek() {
            if ms > at_ms {
                break;
            }
            pending.next();
            let event = match key {
                '0'..='9' => key as u8 - b'0',
                '*' => 10,
                '#' => 11,
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("no RFC 4733 event for {other:?}"),
                    ));
                }
            };
            // Start (marker, 400 samples so far), then the end three times (E bit, 800).
            for (n, (end, duration)) in [(false, 400u16), (true, 800), (true, 800), (true, 800)].into_iter().enumerate()
            {
                let mut body = vec![event, if end { 0x80 | 10 } else { 10 }];
                body.extend_from_slice(&duration.to_be_bytes());
                let payload = rtp_packet(TELEPHONE_EVENT_PT, sequence, timestamp, PCAP_SSRC, n == 0, &body);
                sequence = sequence.wrapping_add(1);
                datagrams.push(PcapUdp { time_us: time_us + 5_000 + n as u64 * 20_000, src, dst, payload });
            }
        }
    }
    datagrams.sort_by_key(|d| d.time_us);
    write_pcap(path, &datagrams)
}

/// The SDP port of the SIPp call scenarios is `-mp` plus this (`[media_port+4]`).
pub const SIPP_MEDIA_PORT_OFFSET: u16 = 4;

/// One datagram a sink received.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
}

impl Datagram {
    pub fn rtp(&self) -> Option<Rtp<'_>> {
        parse_rtp(&self.bytes).ok()
    }
}

/// A UDP socket on 127.0.0.1 recording every datagram on a background thread until
/// [`RtpSink::finish`] (or [`SINK_MAX`]); stands where a phone's RTP port would be.
pub struct RtpSink {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Datagram>>>,
}

impl RtpSink {
    /// Binds a free even port (RTP's convention, RFC 3550 §11) and starts recording.
    pub fn bind() -> RtpSink {
        let socket = (0..200)
            .filter_map(|_| UdpSocket::bind("127.0.0.1:0").ok())
            .find(|s| s.local_addr().is_ok_and(|a| a.port() % 2 == 0))
            .expect("an even free UDP port on 127.0.0.1");
        RtpSink::start(socket)
    }

    /// Binds a free even port whose two even predecessors are free too, for a SIPp phone:
    /// SIPp binds its `-mp` port and `-mp`+2 itself, the call scenarios put `-mp`+4 (this
    /// sink) in the SDP and replay their pcap from it.
    pub fn for_sipp() -> RtpSink {
        for _ in 0..200 {
            let sink = RtpSink::bind();
            let below = [sink.port().checked_sub(SIPP_MEDIA_PORT_OFFSET), sink.port().checked_sub(2)];
            if below.iter().all(|p| p.is_some_and(|p| p > 1024 && UdpSocket::bind(("127.0.0.1", p)).is_ok())) {
                return sink;
            }
        }
        panic!("no even UDP port on 127.0.0.1 with its two even predecessors free");
    }

    /// Records on `socket` (already bound).
    pub fn start(socket: UdpSocket) -> RtpSink {
        let port = socket.local_addr().expect("sink address").port();
        socket.set_read_timeout(Some(Duration::from_millis(20))).expect("sink read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + SINK_MAX;
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65_535];
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    got.push(Datagram { from, bytes: buf[..n].to_vec() });
                }
            }
            got
        });
        RtpSink { port, stop, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops recording and returns everything received.
    pub fn finish(mut self) -> Vec<Datagram> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for RtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The audio of the G.711 packets among `datagrams`, placed by RTP timestamp (relative to the
/// first packet, so a lost packet leaves silence rather than shifting the rest). Packets of
/// another payload type or SSRC than the first G.711 packet's are skipped.
pub fn g711_audio(datagrams: &[Datagram]) -> Vec<i16> {
    let packets: Vec<Rtp<'_>> = datagrams.iter().filter_map(Datagram::rtp).collect();
    let Some(first) = packets.iter().find(|p| G711::from_payload_type(p.payload_type).is_some()) else {
        return Vec::new();
    };
    let (law, ssrc, base) =
        (G711::from_payload_type(first.payload_type).expect("checked"), first.ssrc, first.timestamp);
    let mut audio = Vec::new();
    for p in packets.iter().filter(|p| p.ssrc == ssrc && p.payload_type == first.payload_type) {
        let offset = p.timestamp.wrapping_sub(base) as usize;
        // A timestamp far behind the first (wrapped) or absurdly far ahead is not this stream.
        if offset > 10 * 60 * 8_000 {
            continue;
        }
        let samples = law.decode(p.payload);
        if audio.len() < offset + samples.len() {
            audio.resize(offset + samples.len(), 0);
        }
        audio[offset..offset + samples.len()].copy_from_slice(&samples);
    }
    audio
}

/// Where `received` (a contiguous stretch of at least one packet) starts in `sent`: the lag
/// with the smallest mean absolute difference over its first packet.
pub fn align(sent: &[i16], received: &[i16]) -> Option<usize> {
    let probe = received.get(..SAMPLES_PER_PACKET)?;
    (0..=sent.len().checked_sub(probe.len())?).min_by_key(|&lag| {
        probe.iter().zip(&sent[lag..]).map(|(&r, &s)| (i64::from(r) - i64::from(s)).abs()).sum::<i64>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{G711_RATE_HZ, chirp, tone};

    /// A packet written with every header field set parses back to the same fields; a packet
    /// with CSRCs, an extension and padding yields just its payload; garbage is an error.
    #[test]
    fn rtp_header_round_trips() {
        let packet = rtp_packet(8, 65_535, 0xDEAD_BEEF, 0x0102_0304, true, &[1, 2, 3]);
        let rtp = parse_rtp(&packet).unwrap();
        assert_eq!(
            rtp,
            Rtp {
                marker: true,
                payload_type: 8,
                sequence: 65_535,
                timestamp: 0xDEAD_BEEF,
                ssrc: 0x0102_0304,
                payload: &[1, 2, 3]
            }
        );
        let mut fancy = vec![0xB1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        fancy.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        fancy.extend_from_slice(&[0xBE, 0xDE, 0, 1, 7, 7, 7, 7]); // one-word extension
        fancy.extend_from_slice(&[5, 6, 0, 2]); // payload 5 6, two bytes of padding
        assert_eq!(parse_rtp(&fancy).unwrap().payload, &[5, 6]);
        assert!(parse_rtp(&[0x80; 11]).is_err());
        assert!(parse_rtp(&[0x40; 12]).is_err());
        assert!(parse_rtp(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF]).is_err());
    }

    /// The sip-tester fixture SIPp plays by default reads as one A-law stream to one port.
    #[test]
    fn reads_the_sip_tester_alaw_pcap() {
        let path = Path::new("/usr/share/sip-tester/g711a.pcap");
        if !path.exists() {
            panic!("{} missing: install sip-tester (./scripts/test does)", path.display());
        }
        let datagrams = read_pcap(path).unwrap();
        assert!(datagrams.len() > 100, "{} datagrams", datagrams.len());
        let dst = datagrams[0].dst;
        assert!(datagrams.iter().all(|d| d.dst == dst));
        let packets: Vec<Rtp<'_>> = datagrams.iter().map(|d| parse_rtp(&d.payload).unwrap()).collect();
        assert!(packets.iter().all(|p| p.payload_type == 8), "all PCMA");
        assert!(packets.windows(2).all(|w| w[1].sequence == w[0].sequence.wrapping_add(1)));
    }

    /// A generated stream reads back packet by packet, and its audio decodes to what was
    /// encoded; also through the Linux cooked and raw-IP link layers.
    #[test]
    fn generated_pcap_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.pcap");
        let samples = tone(1000.0, G711_RATE_HZ, 0.2, 8000.0);
        g711_stream_pcap(&path, G711::Pcmu, &samples).unwrap();
        let datagrams = read_pcap(&path).unwrap();
        assert_eq!(datagrams.len(), 10);
        assert_eq!(datagrams[1].time_us - datagrams[0].time_us, 20_000);
        let first = parse_rtp(&datagrams[0].payload).unwrap();
        assert_eq!((first.payload_type, first.sequence, first.timestamp, first.ssrc), (0, 1, 0, PCAP_SSRC));
        let decoded: Vec<i16> =
            datagrams.iter().flat_map(|d| G711::Pcmu.decode(parse_rtp(&d.payload).unwrap().payload)).collect();
        assert_eq!(decoded, G711::Pcmu.decode(&G711::Pcmu.encode(&samples)));

        let bytes = std::fs::read(&path).unwrap();
        let frame = &bytes[24 + 16..24 + 16 + 14 + 20 + 8 + 172];
        let relink = |linktype: u32, prefix: &[u8]| {
            let mut out = bytes[..24].to_vec();
            out[20..24].copy_from_slice(&linktype.to_le_bytes());
            let body = [prefix, &frame[14..]].concat();
            out.extend_from_slice(&bytes[24..32]);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&body);
            parse_pcap(&out).unwrap()
        };
        let sll = relink(LINKTYPE_LINUX_SLL, &[0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00]);
        assert_eq!(sll, datagrams[..1]);
        assert_eq!(relink(LINKTYPE_RAW, &[]), datagrams[..1]);
        assert!(parse_pcap(&bytes[..30]).is_err());
        assert!(parse_pcap(b"\x0a\x0d\x0d\x0a not pcap at all").is_err());
    }

    /// Audio placed by timestamp survives a lost packet, and alignment finds a chirp's offset.
    #[test]
    fn audio_by_timestamp_and_alignment() {
        let sent = chirp(300.0, 3000.0, G711_RATE_HZ, 1.0, 8000.0);
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let datagrams: Vec<Datagram> = sent
            .chunks(SAMPLES_PER_PACKET)
            .enumerate()
            .skip(7)
            .filter(|(i, _)| *i != 9)
            .map(|(i, c)| Datagram {
                from,
                bytes: rtp_packet(0, i as u16, 1000 + (i * SAMPLES_PER_PACKET) as u32, 7, false, &G711::Pcmu.encode(c)),
            })
            .collect();
        let audio = g711_audio(&datagrams);
        assert_eq!(audio.len(), sent.len() - 7 * SAMPLES_PER_PACKET);
        assert!(
            audio[2 * SAMPLES_PER_PACKET..3 * SAMPLES_PER_PACKET].iter().all(|&s| s == 0),
            "lost packet is silence"
        );
        assert_eq!(align(&sent, &audio), Some(7 * SAMPLES_PER_PACKET));
    }

    /// The sink records datagrams with their source until finished.
    #[test]
    fn sink_records_datagrams() {
        let sink = RtpSink::bind();
        assert_eq!(sink.port() % 2, 0);
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..3u16 {
            sender.send_to(&rtp_packet(0, i, 0, 1, false, &[0xFF; 160]), ("127.0.0.1", sink.port())).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        let got = sink.finish();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|d| d.from == sender.local_addr().unwrap()));
    }
}

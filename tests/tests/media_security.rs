//! Media security end to end, against the real `pbx` binary: strangers cannot take a call's
//! audio (the "RTP bleed" class, Asterisk CVE-2017-14099), a phone behind NAT still gets its
//! audio, pbx's media ports are not predictable, and an SDP naming a multicast or broadcast
//! address is refused with 488 (pbx is no reflector).
//!
//! The callee is SIPp (registered, replays a pcap); the caller is a scripted phone written
//! here on raw UDP sockets, so the test knows exactly where its RTP comes from and goes to.
//! The stranger is a UDP socket on 127.0.0.9. SIPp replays pcaps through a raw socket: these
//! tests need root or CAP_NET_RAW on sipp.

use pbx_tests::audio::{G711, G711_RATE_HZ, dominant_frequency, tone, tone_share};
use pbx_tests::rtp::{Datagram, RtpSink, SAMPLES_PER_PACKET, g711_audio, g711_stream_pcap, rtp_packet};
use pbx_tests::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest the scripted phone waits for one SIP message.
const SIP_TIMEOUT: Duration = Duration::from_secs(5);
/// The caller's tone, the callee's, and the stranger's: each side can tell whose audio it got.
const CALLER_HZ: f64 = 1000.0;
const CALLEE_HZ: f64 = 600.0;
const STRANGER_HZ: f64 = 2000.0;
/// The caller's SSRC, which the stranger also tries.
const CALLER_SSRC: u32 = 0x0CA1_1E55;
/// The 20 ms packet interval of G.711 at 8 kHz.
const PACKET_INTERVAL: Duration = Duration::from_millis(20);

fn node() -> Pbx {
    Pbx::start(PbxOptions::default().own_rtp_ports(100))
}

/// SIPp registered as 101, answering one call, replaying `seconds` of the callee's tone.
fn callee(pbx: &Pbx, sink: &RtpSink, seconds: f64) -> SippProcess {
    let pcap = pbx.scratch().join("callee.pcap");
    g711_stream_pcap(&pcap, G711::Pcmu, &tone(CALLEE_HZ, G711_RATE_HZ, seconds, 8000.0)).expect("write pcap");
    let sipp = Sipp::registered_callee(pbx, "call_uas.xml", "101", "secret-101", 1)
        .media(G711::Pcmu, sink, Some(&pcap))
        .timeout(Duration::from_secs(60))
        .spawn();
    pbx.wait_registered("101", &sipp);
    sipp
}

/// A UDP socket on an even port of 127.0.0.1 (RTP's convention).
fn even_socket() -> UdpSocket {
    (0..200)
        .filter_map(|_| UdpSocket::bind("127.0.0.1:0").ok())
        .find(|s| s.local_addr().is_ok_and(|a| a.port() % 2 == 0))
        .expect("an even free UDP port on 127.0.0.1")
}

/// A datagram and when it arrived.
struct Arrival {
    at: Instant,
    datagram: Datagram,
}

/// Records every datagram arriving on a socket, with its arrival time, until dropped.
struct Recorder {
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Arrival>>>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    fn start(socket: UdpSocket) -> Recorder {
        socket.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
        let (stop, got) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (flag, sink) = (stop.clone(), got.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut buf = vec![0u8; 65_535];
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let arrival = Arrival { at: Instant::now(), datagram: Datagram { from, bytes: buf[..n].to_vec() } };
                    sink.lock().expect("recorder lock").push(arrival);
                }
            }
        });
        Recorder { stop, got, thread: Some(thread) }
    }

    /// What arrived since `since`.
    fn since(&self, since: Instant) -> Vec<Datagram> {
        let got = self.got.lock().expect("recorder lock");
        got.iter().filter(|a| a.at >= since).map(|a| a.datagram.clone()).collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends a G.711 tone as RTP from `socket` to `to`, 20 ms apart, until dropped.
struct Streamer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u16>>,
}

impl Streamer {
    fn start(socket: UdpSocket, to: SocketAddr, hz: f64, ssrc: u32, first_seq: u16) -> Streamer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let samples = tone(hz, G711_RATE_HZ, 1.0, 8000.0);
            let mut seq = first_seq;
            let started = Instant::now();
            let deadline = started + Duration::from_secs(60);
            for i in 0u32.. {
                if flag.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let chunk = samples.chunks(SAMPLES_PER_PACKET).nth(i as usize % 50).expect("50 packets a second");
                let packet = rtp_packet(0, seq, i * SAMPLES_PER_PACKET as u32, ssrc, i == 0, &G711::Pcmu.encode(chunk));
                let _ = socket.send_to(&packet, to);
                seq = seq.wrapping_add(1);
                let next = started + PACKET_INTERVAL * (i + 1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            seq
        });
        Streamer { stop, thread: Some(thread) }
    }

    /// Stops; the next sequence number it would have sent.
    fn stop(mut self) -> u16 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A scripted caller (extension 100) on raw UDP: INVITE with an SDP naming `media`, the 407
/// answered with digest, the 200 ACKed; later BYE.
struct Caller {
    sip: UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    call_id: String,
    tag: String,
    cseq: u32,
    branches: u32,
    /// The To of the answer (with pbx's tag) and the Request-URI of in-dialog requests.
    to: String,
    target: String,
}

impl Caller {
    fn new(pbx: &Pbx) -> Caller {
        let sip = UdpSocket::bind("127.0.0.1:0").expect("bind caller SIP");
        let local = sip.local_addr().expect("caller address");
        let id = format!("{}-{}", local.port(), std::process::id());
        Caller {
            sip,
            server: pbx.sip,
            local,
            call_id: format!("media-security-{id}"),
            tag: format!("caller-{id}"),
            cseq: 0,
            branches: 0,
            to: format!("<sip:101@{}>", pbx.sip.ip()),
            target: format!("sip:101@{}", pbx.sip),
        }
    }

    fn branch(&mut self) -> String {
        self.branches += 1;
        format!("z9hG4bK-ms-{}-{}", self.call_id, self.branches)
    }

    fn send(&self, message: &str) {
        self.sip.send_to(message.as_bytes(), self.server).expect("send SIP");
    }

    fn recv(&self) -> Option<String> {
        self.sip.set_read_timeout(Some(SIP_TIMEOUT)).ok()?;
        let mut buf = vec![0u8; 65_535];
        let (n, _) = self.sip.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The next final response to CSeq `cseq` (1xx and others skipped).
    fn final_response(&self, cseq: u32, method: &str) -> String {
        let deadline = Instant::now() + SIP_TIMEOUT;
        while Instant::now() < deadline {
            let Some(m) = self.recv() else { break };
            let ours = header_values(&m, "CSeq").first().is_some_and(|c| c == &format!("{cseq} {method}"));
            if ours && status_code(&m).is_some_and(|c| c >= 200) {
                return m;
            }
        }
        panic!("no final response to CSeq {cseq} {method} within {SIP_TIMEOUT:?}");
    }

    /// A request of this dialog; `transaction` is its Via branch and CSeq number.
    fn request(&self, method: &str, uri: &str, transaction: (&str, u32), to: &str, extra: &str, body: &str) -> String {
        let (branch, cseq) = transaction;
        let content_type = if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" };
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:100@{}>;tag={}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:100@{}>\r\n\
{extra}{content_type}Content-Length: {}\r\n\r\n{body}",
            self.local,
            self.server.ip(),
            self.tag,
            self.call_id,
            self.local,
            body.len()
        )
    }

    /// INVITE with an SDP naming `connection` and `port`, through the digest challenge; the
    /// final response (a 2xx is ACKed and the dialog kept, anything else ACKed by the
    /// transaction's rule).
    fn invite(&mut self, connection: &str, port: u16) -> String {
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {connection}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        );
        let target = self.target.clone();
        let to = self.to.clone();
        let mut auth = String::new();
        for _ in 0..2 {
            self.cseq += 1;
            let (cseq, branch) = (self.cseq, self.branch());
            self.send(&self.request("INVITE", &target, (&branch, cseq), &to, &auth, &sdp));
            let response = self.final_response(cseq, "INVITE");
            let code = status_code(&response).expect("a response");
            if code >= 300 {
                // RFC 3261 §17.1.1.3: the ACK of a failure reuses the INVITE's branch.
                let their_to = header_values(&response, "To").into_iter().next().unwrap_or_default();
                self.send(&self.request("ACK", &target, (&branch, cseq), &their_to, "", ""));
            }
            if code != 407 || !auth.is_empty() {
                if (200..300).contains(&code) {
                    self.to = header_values(&response, "To").into_iter().next().expect("a To in the 200");
                    let contact = header_values(&response, "Contact").into_iter().next().expect("a Contact in the 200");
                    self.target = contact.trim_start_matches('<').split('>').next().unwrap_or_default().to_string();
                    let branch = self.branch();
                    let ack = self.request("ACK", &self.target, (&branch, cseq), &self.to, "", "");
                    self.send(&ack);
                }
                return response;
            }
            let challenge = header_values(&response, "Proxy-Authenticate")
                .into_iter()
                .find(|c| param(c, "algorithm").is_none_or(|a| a.eq_ignore_ascii_case("MD5")))
                .expect("an MD5 challenge");
            auth = format!(
                "Proxy-Authorization: {}\r\n",
                authorization(&challenge, "100", "secret-100", "INVITE", &target, 1)
            );
        }
        unreachable!("the loop returns on its second pass")
    }

    /// BYE in the dialog; its final response code.
    fn bye(&mut self) -> u16 {
        self.cseq += 1;
        let (cseq, branch, target, to) = (self.cseq, self.branch(), self.target.clone(), self.to.clone());
        self.send(&self.request("BYE", &target, (&branch, cseq), &to, "", ""));
        status_code(&self.final_response(cseq, "BYE")).expect("a response")
    }
}

/// pbx's media address in an SDP body (c= and the m=audio port).
fn media_address(message: &str) -> SocketAddr {
    let sdp = body(message);
    let (port, _) = sdp_audio(sdp).unwrap_or_else(|| panic!("no m=audio in {message}"));
    let ip: IpAddr = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no c= in {message}"));
    SocketAddr::new(ip, port)
}

/// The number of G.711 RTP packets among `datagrams` that came from pbx's ports.
fn from_pbx(pbx: &Pbx, datagrams: &[Datagram]) -> usize {
    let ports = pbx.rtp_ports.clone().expect("own RTP ports");
    datagrams
        .iter()
        .filter(|d| d.from.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) && ports.contains(&d.from.port()))
        .filter(|d| d.rtp().is_some_and(|r| r.payload_type == 0))
        .count()
}

fn foreign_packets(pbx: &Pbx) -> f64 {
    pbx.metric("pbx_rtp_foreign_packets_total").unwrap_or(0.0)
}

/// A stranger on 127.0.0.9 streams well-formed RTP with consecutive sequence numbers to the
/// caller-facing port mid-call, first with a new SSRC, then with the caller's own SSRC and
/// sequence: it receives nothing, the caller keeps receiving the callee's audio, the callee
/// never hears the stranger, and `pbx_rtp_foreign_packets_total` counts every packet.
#[test]
fn a_stranger_cannot_take_a_calls_audio() {
    let pbx = node();
    let callee_sink = RtpSink::for_sipp();
    let callee = callee(&pbx, &callee_sink, 10.0);
    let phone = even_socket();
    let phone_address = phone.local_addr().unwrap();
    let mut caller = Caller::new(&pbx);
    let answer = caller.invite("127.0.0.1", phone_address.port());
    assert_eq!(status_code(&answer), Some(200), "{answer}\n{}", pbx.log());
    let pbx_media = media_address(&answer);
    let heard = Recorder::start(phone.try_clone().unwrap());
    let talking = Streamer::start(phone.try_clone().unwrap(), pbx_media, CALLER_HZ, CALLER_SSRC, 1);
    std::thread::sleep(Duration::from_secs(2));
    let foreign_before = foreign_packets(&pbx);

    let stranger = UdpSocket::bind("127.0.0.9:0").expect("bind on 127.0.0.9 (loopback is a /8)");
    let stranger_got = Recorder::start(stranger.try_clone().unwrap());
    let attack_started = Instant::now();
    let new_ssrc = Streamer::start(stranger.try_clone().unwrap(), pbx_media, STRANGER_HZ, 0x0BAD_0BAD, 40_000);
    std::thread::sleep(Duration::from_secs(2));
    new_ssrc.stop();
    // The caller's SSRC, sequence numbers just ahead of the caller's (the caller is at ~200).
    let same_ssrc = Streamer::start(stranger.try_clone().unwrap(), pbx_media, STRANGER_HZ, CALLER_SSRC, 230);
    std::thread::sleep(Duration::from_secs(2));
    same_ssrc.stop();
    std::thread::sleep(Duration::from_millis(500));
    talking.stop();

    assert_eq!(caller.bye(), 200);
    let callee = callee.wait();
    assert!(callee.success, "callee: {}", callee.report());

    let stranger_received = stranger_got.since(attack_started);
    assert!(stranger_received.is_empty(), "the stranger received {} datagrams", stranger_received.len());
    let during_attack = heard.since(attack_started);
    let packets = from_pbx(&pbx, &during_attack);
    assert!(packets >= 150, "the caller got {packets} packets from pbx during the 4 s attack");
    let audio = g711_audio(&during_attack);
    assert_eq!(dominant_frequency(&audio, G711_RATE_HZ), CALLEE_HZ, "the caller still hears the callee");
    let at_callee = g711_audio(&callee_sink.finish());
    assert!(at_callee.len() > 3 * G711_RATE_HZ as usize, "the callee heard {} samples", at_callee.len());
    assert!(tone_share(&at_callee, G711_RATE_HZ, CALLER_HZ) > 0.8, "the callee hears the caller");
    assert!(tone_share(&at_callee, G711_RATE_HZ, STRANGER_HZ) < 0.01, "and never the stranger");
    let foreign = foreign_packets(&pbx) - foreign_before;
    assert!(foreign >= 190.0, "pbx_rtp_foreign_packets_total grew by {foreign}, the stranger sent ~200");
}

/// A phone behind a NAT that rebinds its port: its SDP names one port, its RTP leaves from
/// (and must come back to) another. pbx learns the real source, and audio flows both ways.
#[test]
fn a_nat_rebound_phone_gets_audio_both_ways() {
    let pbx = node();
    let callee_sink = RtpSink::for_sipp();
    let callee = callee(&pbx, &callee_sink, 6.0);
    let declared = even_socket();
    let declared_port = declared.local_addr().unwrap().port();
    let nat = even_socket();
    assert_ne!(nat.local_addr().unwrap().port(), declared_port);
    let mut caller = Caller::new(&pbx);
    let answer = caller.invite("127.0.0.1", declared_port);
    assert_eq!(status_code(&answer), Some(200), "{answer}\n{}", pbx.log());
    let pbx_media = media_address(&answer);
    let heard = Recorder::start(nat.try_clone().unwrap());
    let started = Instant::now();
    let talking = Streamer::start(nat.try_clone().unwrap(), pbx_media, CALLER_HZ, CALLER_SSRC, 1);
    std::thread::sleep(Duration::from_secs(3));
    talking.stop();
    assert_eq!(caller.bye(), 200);
    let callee = callee.wait();
    assert!(callee.success, "callee: {}", callee.report());

    let at_nat = heard.since(started);
    let packets = from_pbx(&pbx, &at_nat);
    assert!(packets >= 100, "the phone got {packets} packets at its real (NAT) port in 3 s");
    assert_eq!(dominant_frequency(&g711_audio(&at_nat), G711_RATE_HZ), CALLEE_HZ);
    let at_callee = g711_audio(&callee_sink.finish());
    assert!(at_callee.len() > 2 * G711_RATE_HZ as usize, "the callee heard {} samples", at_callee.len());
    assert!(tone_share(&at_callee, G711_RATE_HZ, CALLER_HZ) > 0.8, "the callee hears the NAT phone");
    drop(declared);
}

/// Ten calls in a row: pbx's media ports (the caller's side, from its answers; the callee's,
/// from its offers) come in no predictable order, not the old bottom-up steps of +2.
#[test]
fn media_ports_are_not_predictable() {
    const CALLS: u32 = 10;
    let pbx = node();
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee = Sipp::registered_callee(&pbx, "call_load_uas.xml", "101", "secret-101", CALLS)
        .media(G711::Pcmu, &callee_sink, None)
        .spawn();
    pbx.wait_registered("101", &callee);
    let caller = Sipp::new("call_load_uac.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &caller_sink, None)
        .args(&["-r", "5", "-m", &CALLS.to_string(), "-l", "1", "-d", "100"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    let mut ports: Vec<u16> = caller
        .received()
        .iter()
        .filter(|m| status_code(m) == Some(200) && sdp_audio(body(m)).is_some())
        .map(|m| media_address(m).port())
        .collect();
    ports.dedup(); // a retransmitted 200 repeats its port
    let offered: Vec<u16> = callee.received_requests("INVITE").iter().map(|m| media_address(m).port()).collect();
    assert_eq!((ports.len(), offered.len()), (CALLS as usize, CALLS as usize), "{ports:?} {offered:?}");
    for sequence in [&ports, &offered] {
        let steps: Vec<i32> = sequence.windows(2).map(|w| i32::from(w[1]) - i32::from(w[0])).collect();
        assert!(steps.iter().any(|s| *s < 0), "ascending, as if handed out in order: {sequence:?}");
        let distinct: std::collections::BTreeSet<i32> = steps.iter().copied().collect();
        assert!(distinct.len() > 3, "a fixed step between calls: {sequence:?}");
    }
}

/// An INVITE whose SDP names a multicast or the broadcast address gets 488 (after the
/// digest: the caller proved who it is, and the callee is registered), and the callee's
/// phone is never rung.
#[test]
fn multicast_or_broadcast_offer_gets_488() {
    let pbx = node();
    let phone = UdpSocket::bind("127.0.0.1:0").expect("bind the callee's SIP socket");
    let contact = format!("Contact: <sip:101@{}>", phone.local_addr().unwrap());
    let registered = SipClient::udp(pbx.sip).register("101", "secret-101", "MD5", &[&contact, "Expires: 120"]);
    assert_eq!(registered.as_deref().and_then(status_code), Some(200), "{registered:?}");
    let rung = Recorder::start(phone);
    let started = Instant::now();
    for connection in ["224.0.0.1", "255.255.255.255"] {
        let mut caller = Caller::new(&pbx);
        let response = caller.invite(connection, 40_000);
        assert_eq!(status_code(&response), Some(488), "c={connection}: {response}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(rung.since(started).is_empty(), "the callee's phone got a request");
    let (_, calls) = pbx.api("GET", "/api/v1/calls", None);
    assert!(calls.contains("\"calls\":[]"), "{calls}");
}

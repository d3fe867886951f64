//! Calls end to end: two phones registered at the real `pbx` binary call each other through
//! it; pbx is a B2BUA that challenges the INVITE (407, MD5 first for SIPp), anchors the media
//! on its own `--rtp-ports` and transcodes PCMU ↔ PCMA. Phones are SIPp (caller scenarios
//! straight at pbx, callees registered with SIPp's own address, see `call_register.xml`) and
//! baresip; RTP is received on the test's own sockets and decoded by the test's own G.711.
//!
//! The clients themselves are checked peer to peer in `clients.rs`; a failure here is pbx's.
//! Each node gets a private block of RTP ports, so "from pbx" means "from that block".
//! SIPp replays pcaps through a raw socket: these tests need root or CAP_NET_RAW on sipp.

use pbx_tests::audio::{G711, G711_RATE_HZ, chirp, dominant_frequency, g711_conversion_tolerance, tone, tone_share};
use pbx_tests::baresip::{Baresip, registered_account};
use pbx_tests::rtp::{Datagram, RtpSink, SAMPLES_PER_PACKET, align, g711_audio, g711_stream_pcap};
use pbx_tests::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a media call lasts (`-d`): two seconds of audio each way fit in it.
const CALL_MS: &str = "2500";
/// Longest pbx may take to forget a finished call and free its ports.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The no-answer timeout configured where a test needs one.
const NO_ANSWER_TIMEOUT_S: u64 = 2;

/// A node with extensions 100 and 101 (MD5 first) and its own RTP ports.
fn node() -> Pbx {
    Pbx::start(PbxOptions::default().own_rtp_ports(100))
}

/// Writes `samples` as a pcap of `law` packets in the node's scratch dir; its path.
fn pcap(pbx: &Pbx, name: &str, law: G711, samples: &[i16]) -> PathBuf {
    let path = pbx.scratch().join(name);
    g711_stream_pcap(&path, law, samples).expect("write pcap");
    path
}

/// A SIPp caller from 100 to `to` running `scenario` against the node.
fn caller(pbx: &Pbx, scenario: &str, to: &str) -> Sipp {
    Sipp::new(scenario, pbx.sip, &pbx.scratch()).caller("100", "secret-100", to)
}

/// A SIPp callee registered as 101 running `scenario` for `calls` calls.
fn callee(pbx: &Pbx, scenario: &str, calls: u32) -> Sipp {
    Sipp::registered_callee(pbx, scenario, "101", "secret-101", calls)
}

/// Asserts that every datagram came from 127.0.0.1 on one of the node's RTP ports, none from
/// `not_from` (the other phone: pbx must relay, not connect the phones to each other).
fn assert_from_pbx(pbx: &Pbx, datagrams: &[Datagram], not_from: u16, min_packets: usize) {
    let ports = pbx.rtp_ports.clone().expect("node has its own RTP ports");
    assert!(datagrams.len() >= min_packets, "{} datagrams arrived, expected at least {min_packets}", datagrams.len());
    for d in datagrams {
        assert_eq!(d.from.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST), "{d:?}");
        assert!(ports.contains(&d.from.port()), "RTP from {} is not from pbx's ports {ports:?}", d.from);
        assert_ne!(d.from.port(), not_from, "RTP came straight from the other phone");
    }
}

/// Asserts that the node advertised one of its own ports on 127.0.0.1 in `sdp`.
fn assert_pbx_sdp(pbx: &Pbx, sdp: &str) -> Vec<u8> {
    let ports = pbx.rtp_ports.clone().expect("node has its own RTP ports");
    let (port, payload_types) = sdp_audio(sdp).unwrap_or_else(|| panic!("no m=audio in {sdp:?}"));
    assert!(ports.contains(&port), "SDP names port {port}, not one of pbx's {ports:?}:\n{sdp}");
    assert!(sdp.contains("c=IN IP4 127.0.0.1"), "SDP connection is not 127.0.0.1:\n{sdp}");
    payload_types
}

/// Asserts that `received` is `sent` within G.711 conversion error, sample by sample, over at
/// least `min_packets` packets (aligned on the first received packet).
fn assert_close_audio(sent: &[i16], received: &[i16], min_packets: usize) {
    assert!(received.len() >= min_packets * SAMPLES_PER_PACKET, "only {} samples arrived", received.len());
    let lag = align(sent, received).expect("received audio aligns with what was sent");
    let n = received.len().min(sent.len() - lag);
    let off: Vec<(usize, i16, i16)> = (0..n)
        .filter(|&i| {
            (i32::from(received[i]) - i32::from(sent[lag + i])).abs() > g711_conversion_tolerance(sent[lag + i])
        })
        .map(|i| (i, sent[lag + i], received[i]))
        .take(10)
        .collect();
    assert!(off.is_empty(), "samples beyond G.711 conversion error (index, sent, received): {off:?}");
}

/// Waits until the API lists no call and no RTP port is in use.
fn assert_nothing_left(pbx: &Pbx) {
    let no_calls = || {
        let (code, body) = pbx.api("GET", "/api/v1/calls", None);
        let listed = serde_json::from_str::<serde_json::Value>(&body).ok();
        code == 200 && listed.and_then(|v| v["calls"].as_array().map(|calls| calls.is_empty())) == Some(true)
    };
    assert!(wait_until(CLEANUP_TIMEOUT, no_calls), "calls left: {:?}", pbx.api("GET", "/api/v1/calls", None));
    assert!(
        wait_until(CLEANUP_TIMEOUT, || pbx.metric("pbx_rtp_ports_in_use") == Some(0.0)),
        "pbx_rtp_ports_in_use is not 0:\n{}",
        pbx.metrics()
    );
}

/// A basic call: the INVITE is challenged (407) and re-sent with digest, the callee's 180 and
/// 200 reach the caller, both SDPs name pbx's ports, RTP flows both ways from pbx's ports (not
/// from the other phone) and the audio arrives as sent; afterwards nothing is left.
#[test]
fn basic_call_relays_rtp_through_pbx() {
    let pbx = node();
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let sent = chirp(300.0, 3000.0, G711_RATE_HZ, 2.0, 8000.0);
    let caller_pcap = pcap(&pbx, "caller.pcap", G711::Pcmu, &sent);
    let callee_pcap = pcap(&pbx, "callee.pcap", G711::Pcmu, &tone(600.0, G711_RATE_HZ, 2.0, 8000.0));
    let callee = callee(&pbx, "call_uas.xml", 1).media(G711::Pcmu, &callee_sink, Some(&callee_pcap)).spawn();
    pbx.wait_registered("101", &callee);
    let caller = caller(&pbx, "call_uac.xml", "101")
        .media(G711::Pcmu, &caller_sink, Some(&caller_pcap))
        .args(&["-d", CALL_MS, "-m", "1"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    let codes = caller.received_codes();
    assert!(codes.contains(&407), "INVITE challenged: {codes:?}");
    assert!(codes.contains(&180), "ringing relayed: {codes:?}");
    assert!(codes.ends_with(&[200, 200]), "answered, then BYE answered: {codes:?}");
    let answer = caller.received().into_iter().find(|m| status_code(m) == Some(200)).expect("200");
    assert_pbx_sdp(&pbx, body(&answer));
    let offer = &callee.received_requests("INVITE")[0];
    assert_pbx_sdp(&pbx, body(offer));

    let (caller_port, callee_port) = (caller_sink.port(), callee_sink.port());
    let at_callee = callee_sink.finish();
    assert_from_pbx(&pbx, &at_callee, caller_port, 50);
    assert_close_audio(&G711::Pcmu.decode(&G711::Pcmu.encode(&sent)), &g711_audio(&at_callee), 50);
    let at_caller = caller_sink.finish();
    assert_from_pbx(&pbx, &at_caller, callee_port, 50);
    assert_eq!(dominant_frequency(&g711_audio(&at_caller), G711_RATE_HZ), 600.0);
    assert_nothing_left(&pbx);
}

/// A busy callee's 486 reaches the caller, who ACKs it; the callee gets its ACK from pbx.
#[test]
fn busy_callee_gives_486() {
    let pbx = node();
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee =
        callee(&pbx, "call_uas_reject.xml", 1).media(G711::Pcmu, &callee_sink, None).key("code", "486").spawn();
    pbx.wait_registered("101", &callee);
    let caller =
        caller(&pbx, "call_uac_fail.xml", "101").media(G711::Pcmu, &caller_sink, None).args(&["-m", "1"]).run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    assert_eq!(caller.received_codes().last(), Some(&486), "{}", caller.messages);
    assert_eq!(callee.received_requests("ACK").len(), 1, "{}", callee.messages);
    assert_nothing_left(&pbx);
}

/// A callee that rings and never answers: after `[calls] no_answer_timeout_s` pbx CANCELs it
/// and gives the caller 480.
#[test]
fn unanswered_call_gets_480_after_the_no_answer_timeout() {
    let pbx = Pbx::start(
        PbxOptions::default().own_rtp_ports(100).calls(&format!("no_answer_timeout_s = {NO_ANSWER_TIMEOUT_S}")),
    );
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee = callee(&pbx, "call_uas_ring.xml", 1).media(G711::Pcmu, &callee_sink, None).spawn();
    pbx.wait_registered("101", &callee);
    let started = Instant::now();
    let caller =
        caller(&pbx, "call_uac_fail.xml", "101").media(G711::Pcmu, &caller_sink, None).args(&["-m", "1"]).run();
    let took = started.elapsed();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    let codes = caller.received_codes();
    assert!(codes.contains(&180), "ringing relayed: {codes:?}");
    assert_eq!(codes.last(), Some(&480), "{}", caller.messages);
    let timeout = Duration::from_secs(NO_ANSWER_TIMEOUT_S);
    assert!(took >= timeout && took < timeout + Duration::from_secs(5), "480 after {took:?}, timeout {timeout:?}");
    assert_eq!(callee.received_requests("CANCEL").len(), 1, "{}", callee.messages);
    assert_nothing_left(&pbx);
}

/// The caller gives up while it rings: CANCEL → 200, 487 → ACK; pbx cancels the callee too.
#[test]
fn caller_cancels_while_ringing() {
    let pbx = node();
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee = callee(&pbx, "call_uas_ring.xml", 1).media(G711::Pcmu, &callee_sink, None).spawn();
    pbx.wait_registered("101", &callee);
    let caller =
        caller(&pbx, "call_uac_cancel.xml", "101").media(G711::Pcmu, &caller_sink, None).args(&["-m", "1"]).run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    assert!(caller.received_codes().ends_with(&[180, 200, 487]), "{:?}", caller.received_codes());
    assert_eq!(callee.received_requests("CANCEL").len(), 1, "{}", callee.messages);
    assert_eq!(callee.received_requests("ACK").len(), 1, "{}", callee.messages);
    assert_nothing_left(&pbx);
}

/// A known extension with no binding: 480 Temporarily Unavailable.
#[test]
fn unregistered_callee_gives_480() {
    let pbx = node();
    let caller_sink = RtpSink::for_sipp();
    let caller =
        caller(&pbx, "call_uac_fail.xml", "101").media(G711::Pcmu, &caller_sink, None).args(&["-m", "1"]).run();
    assert!(caller.success, "caller: {}", caller.report());
    assert_eq!(caller.received_codes().last(), Some(&480), "{}", caller.messages);
    assert_nothing_left(&pbx);
}

/// A number that is no extension: 404 Not Found.
#[test]
fn unknown_number_gives_404() {
    let pbx = node();
    let caller_sink = RtpSink::for_sipp();
    let caller =
        caller(&pbx, "call_uac_fail.xml", "999").media(G711::Pcmu, &caller_sink, None).args(&["-m", "1"]).run();
    assert!(caller.success, "caller: {}", caller.report());
    assert_eq!(caller.received_codes().last(), Some(&404), "{}", caller.messages);
    assert_nothing_left(&pbx);
}

/// Hold and resume: the caller's re-INVITEs (a=sendonly, then a=sendrecv) reach the callee as
/// such, each is answered 200 (a=recvonly, then a=sendrecv) and ACKed on both legs.
#[test]
fn hold_and_resume_pass_through() {
    let pbx = node();
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let audio = tone(1000.0, G711_RATE_HZ, 1.0, 8000.0);
    let caller_pcap = pcap(&pbx, "caller.pcap", G711::Pcmu, &audio);
    let callee_pcap = pcap(&pbx, "callee.pcap", G711::Pcmu, &audio);
    let callee = callee(&pbx, "call_uas.xml", 1).media(G711::Pcmu, &callee_sink, Some(&callee_pcap)).spawn();
    pbx.wait_registered("101", &callee);
    let caller = caller(&pbx, "call_uac_hold.xml", "101")
        .media(G711::Pcmu, &caller_sink, Some(&caller_pcap))
        .args(&["-d", "1000", "-m", "1"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    let answers: Vec<&str> = caller
        .received()
        .iter()
        .filter(|m| status_code(m) == Some(200) && sdp_audio(body(m)).is_some())
        .map(|m| sdp_direction(body(m)))
        .collect();
    assert_eq!(answers, ["sendrecv", "recvonly", "sendrecv"], "{}", caller.messages);
    let offers: Vec<&str> = callee.received_requests("INVITE").iter().map(|m| sdp_direction(body(m))).collect();
    assert_eq!(offers, ["sendrecv", "sendonly", "sendrecv"], "{}", callee.messages);
    assert_eq!(callee.received_requests("ACK").len(), 3, "{}", callee.messages);
    assert_nothing_left(&pbx);
}

/// Late offer: an INVITE without SDP gets pbx's offer in the 200 (pbx's ports), the caller's
/// answer in the ACK completes it, and the caller's audio reaches the callee through pbx.
#[test]
fn late_offer_call() {
    let pbx = node();
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let sent = chirp(300.0, 3000.0, G711_RATE_HZ, 2.0, 8000.0);
    let caller_pcap = pcap(&pbx, "caller.pcap", G711::Pcmu, &sent);
    let callee_pcap = pcap(&pbx, "callee.pcap", G711::Pcmu, &tone(600.0, G711_RATE_HZ, 2.0, 8000.0));
    let callee = callee(&pbx, "call_uas.xml", 1).media(G711::Pcmu, &callee_sink, Some(&callee_pcap)).spawn();
    pbx.wait_registered("101", &callee);
    let caller = caller(&pbx, "call_uac_late.xml", "101")
        .media(G711::Pcmu, &caller_sink, Some(&caller_pcap))
        .args(&["-d", CALL_MS, "-m", "1"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    let offer = caller.received().into_iter().find(|m| status_code(m) == Some(200)).expect("200");
    assert!(assert_pbx_sdp(&pbx, body(&offer)).contains(&0), "pbx offers PCMU: {offer}");
    let (caller_port, callee_port) = (caller_sink.port(), callee_sink.port());
    let at_callee = callee_sink.finish();
    assert_from_pbx(&pbx, &at_callee, caller_port, 50);
    assert_close_audio(&G711::Pcmu.decode(&G711::Pcmu.encode(&sent)), &g711_audio(&at_callee), 50);
    assert_from_pbx(&pbx, &caller_sink.finish(), callee_port, 50);
    assert_nothing_left(&pbx);
}

/// Transcoding: a µ-law-only caller calls an A-law-only callee. pbx offers the callee PCMA;
/// what arrives there is A-law that decodes to the caller's µ-law audio within G.711
/// conversion error, sample by sample; the callee's A-law tone reaches the caller as µ-law.
#[test]
fn pcmu_caller_to_pcma_only_callee_is_transcoded() {
    let pbx = node();
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let sent = chirp(300.0, 3000.0, G711_RATE_HZ, 2.0, 8000.0);
    let caller_pcap = pcap(&pbx, "caller.pcap", G711::Pcmu, &sent);
    let callee_pcap = pcap(&pbx, "callee.pcap", G711::Pcma, &tone(600.0, G711_RATE_HZ, 2.0, 8000.0));
    let callee = callee(&pbx, "call_uas.xml", 1).media(G711::Pcma, &callee_sink, Some(&callee_pcap)).spawn();
    pbx.wait_registered("101", &callee);
    let caller = caller(&pbx, "call_uac.xml", "101")
        .media(G711::Pcmu, &caller_sink, Some(&caller_pcap))
        .args(&["-d", CALL_MS, "-m", "1"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    let offer = &callee.received_requests("INVITE")[0];
    assert!(assert_pbx_sdp(&pbx, body(offer)).contains(&8), "pbx offers the callee PCMA: {offer}");
    let answer = caller.received().into_iter().find(|m| status_code(m) == Some(200)).expect("200");
    assert_eq!(assert_pbx_sdp(&pbx, body(&answer)), [0], "the caller's answer is PCMU only: {answer}");

    let (caller_port, callee_port) = (caller_sink.port(), callee_sink.port());
    let at_callee = callee_sink.finish();
    assert_from_pbx(&pbx, &at_callee, caller_port, 50);
    assert!(at_callee.iter().all(|d| d.rtp().is_some_and(|r| r.payload_type == 8)), "PCMA to the callee");
    assert_close_audio(&G711::Pcmu.decode(&G711::Pcmu.encode(&sent)), &g711_audio(&at_callee), 50);
    let at_caller = caller_sink.finish();
    assert_from_pbx(&pbx, &at_caller, callee_port, 50);
    assert!(at_caller.iter().all(|d| d.rtp().is_some_and(|r| r.payload_type == 0)), "PCMU to the caller");
    let heard = g711_audio(&at_caller);
    assert_eq!(dominant_frequency(&heard, G711_RATE_HZ), 600.0);
    assert!(tone_share(&heard, G711_RATE_HZ, 600.0) > 0.8, "600 Hz share {}", tone_share(&heard, G711_RATE_HZ, 600.0));
    assert_nothing_left(&pbx);
}

/// Two registered baresips call through pbx: each hears the other's tone (1 kHz, 600 Hz), and
/// each receives its RTP from pbx's ports.
#[test]
fn baresip_to_baresip_through_pbx() {
    let pbx = Pbx::start(PbxOptions::default().md5_only().own_rtp_ports(100));
    let mut alice = Baresip::start(&registered_account("100", "secret-100", pbx.sip), 1000.0);
    let mut bob = Baresip::start(&registered_account("101", "secret-101", pbx.sip), 600.0);
    let timeout = Duration::from_secs(10);
    assert!(wait_until(timeout, || alice.is_registered() && bob.is_registered()), "{}{}", alice.report(), bob.report());
    alice.dial(&format!("sip:101@{}", pbx.sip));
    assert!(alice.wait_event("CALL_ESTABLISHED", timeout).is_some(), "{}", alice.report());
    assert!(bob.wait_event("CALL_ESTABLISHED", timeout).is_some(), "{}", bob.report());
    std::thread::sleep(Duration::from_secs(3));
    alice.hangup();
    assert!(alice.wait_event("CALL_CLOSED", timeout).is_some(), "{}", alice.report());
    assert!(bob.wait_event("CALL_CLOSED", timeout).is_some(), "{}", bob.report());
    for (phone, hz) in [(&bob, 1000.0), (&alice, 600.0)] {
        let wav = phone.received_audio().unwrap_or_else(|| panic!("no recording\n{}", phone.report()));
        let (samples, rate) = (wav.mono(), wav.rate_hz as usize);
        assert!(samples.len() > 2 * rate, "{} samples\n{}", samples.len(), phone.report());
        let middle = &samples[rate / 2..samples.len() - rate / 2];
        assert_eq!(dominant_frequency(middle, wav.rate_hz), hz, "\n{}", phone.report());
        assert!(tone_share(middle, wav.rate_hz, hz) > 0.8, "tone share {}", tone_share(middle, wav.rate_hz, hz));
        assert_rtp_source_is_pbx(&pbx, phone);
    }
    assert_nothing_left(&pbx);
}

/// baresip logs where its RTP comes from ("… established, receiving from 127.0.0.1:PORT").
fn assert_rtp_source_is_pbx(pbx: &Pbx, phone: &Baresip) {
    let log = phone.log();
    let source = log
        .lines()
        .find_map(|l| l.split("receiving from ").nth(1))
        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("baresip logged no RTP source\n{}", phone.report()));
    let ports = pbx.rtp_ports.clone().expect("own RTP ports");
    assert!(ports.contains(&source.port()), "baresip got RTP from {source}, not from pbx's {ports:?}");
}

/// A REGISTER sent on behalf of a phone (from another port than the Contact it names, as SIPp
/// load tests and gateways do) routes calls to the Contact: the call reaches the phone there, and
/// nothing goes to the port the REGISTER came from.
#[test]
fn call_reaches_a_contact_registered_on_behalf() {
    let pbx = node();
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee_pcap = pcap(&pbx, "callee.pcap", G711::Pcmu, &tone(600.0, G711_RATE_HZ, 0.5, 8000.0));
    let caller_pcap = pcap(&pbx, "caller.pcap", G711::Pcmu, &tone(1000.0, G711_RATE_HZ, 0.5, 8000.0));
    let callee = Sipp::server("call_uas.xml", &pbx.scratch())
        .media(G711::Pcmu, &callee_sink, Some(&callee_pcap))
        .args(&["-m", "1"])
        .spawn();
    let mut on_behalf = SipClient::udp(pbx.sip);
    assert_ne!(on_behalf.local(), callee.local());
    let contact = format!("Contact: <sip:101@{};transport=UDP>", callee.local());
    let answer =
        on_behalf.register("101", "secret-101", "MD5", &[&contact, "Expires: 600"]).expect("REGISTER answered");
    assert_eq!(status_code(&answer), Some(200), "{answer}");
    let caller = caller(&pbx, "call_uac.xml", "101")
        .media(G711::Pcmu, &caller_sink, Some(&caller_pcap))
        .args(&["-d", "500", "-m", "1"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    assert_eq!(callee.received_requests("INVITE").len(), 1, "{}", callee.messages);
    let stray = on_behalf.recv(Duration::from_millis(300));
    assert!(stray.is_none(), "the registering client got {stray:?}");
    assert_nothing_left(&pbx);
}

/// A phone behind a symmetric NAT names in its Via and Contact an address its NAT does not
/// forward (one learned by STUN: here another port of the same host, then another host), and
/// sends from another: pbx detects NAT by the Via and calls it where its REGISTER came from. The
/// call reaches the phone, and nothing goes to the address it named.
#[test]
fn call_reaches_a_phone_behind_symmetric_nat_at_its_source() {
    for named_ip in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)] {
        let pbx = node();
        let decoy = std::net::UdpSocket::bind((named_ip, 0)).expect("bind the named address");
        let named = decoy.local_addr().expect("decoy address");
        let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
        let callee_pcap = pcap(&pbx, "callee.pcap", G711::Pcmu, &tone(600.0, G711_RATE_HZ, 0.5, 8000.0));
        let caller_pcap = pcap(&pbx, "caller.pcap", G711::Pcmu, &tone(1000.0, G711_RATE_HZ, 0.5, 8000.0));
        let callee = Sipp::new("call_register_nat.xml", pbx.sip, &pbx.scratch())
            .args(&["-s", "101", "-au", "101", "-ap", "secret-101", "-m", "1", "-set", "expected_calls", "1"])
            .args(&["-oocsf", &asset("sipp/call_uas.xml").to_string_lossy()])
            .key("sent_by", &named.to_string())
            .media(G711::Pcmu, &callee_sink, Some(&callee_pcap))
            .spawn();
        assert_ne!(named, callee.local());
        let contact = format!("sip:101@{named};transport=UDP");
        assert!(
            wait_until(Duration::from_secs(10), || pbx.contacts_of("101") == [contact.clone()]),
            "101 not registered as {contact}: {:?}",
            pbx.registrations()
        );
        let caller = caller(&pbx, "call_uac.xml", "101")
            .media(G711::Pcmu, &caller_sink, Some(&caller_pcap))
            .args(&["-d", "500", "-m", "1"])
            .run();
        let callee = callee.finish_after(&caller);
        assert!(caller.success, "named {named}, caller: {}", caller.report());
        assert!(callee.success, "named {named}, callee: {}", callee.report());
        assert_eq!(callee.received_requests("INVITE").len(), 1, "{}", callee.messages);
        decoy.set_read_timeout(Some(Duration::from_millis(300))).expect("read timeout");
        let mut buf = [0u8; 2048];
        let stray =
            decoy.recv_from(&mut buf).ok().map(|(n, from)| (from, String::from_utf8_lossy(&buf[..n]).into_owned()));
        assert!(stray.is_none(), "the address the phone named got {stray:?}");
        assert_nothing_left(&pbx);
    }
}

/// Load: 20 calls/s for 10 s, 5 s each (up to 100 at once), each challenged and relayed; every
/// call completes, and afterwards the API lists no call and no RTP port is in use.
#[test]
fn load_run_completes_and_leaves_nothing_behind() {
    // 50 calls/s for 20 s, 10 s each: up to 500 calls at once, two RTP port pairs each.
    const CALLS: u32 = 1000;
    let pbx = Pbx::start(PbxOptions::default().own_rtp_ports(2400));
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let run_timeout = Duration::from_secs(90);
    let callee = callee(&pbx, "call_load_uas.xml", CALLS)
        .media(G711::Pcmu, &callee_sink, None)
        .without_message_trace()
        .timeout(run_timeout)
        .spawn();
    pbx.wait_registered("101", &callee);
    let caller = caller(&pbx, "call_load_uac.xml", "101")
        .media(G711::Pcmu, &caller_sink, None)
        .args(&["-r", "50", "-m", &CALLS.to_string(), "-d", "10000"])
        .without_message_trace()
        .timeout(run_timeout)
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    assert_eq!(caller.calls_counted("Successful call"), Some(u64::from(CALLS)), "{}", caller.screen);
    assert_eq!(caller.calls_counted("Failed call"), Some(0), "{}", caller.screen);
    assert_nothing_left(&pbx);
}

/// The CDRs the node lists (newest first), as JSON.
fn cdrs(pbx: &Pbx) -> Vec<serde_json::Value> {
    let (code, body) = pbx.api("GET", "/api/v1/cdrs?limit=500", None);
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("CDR page is JSON");
    page["cdrs"].as_array().cloned().unwrap_or_default()
}

/// Active calls in the state `state`.
fn calls_in(pbx: &Pbx, state: &str) -> usize {
    let (_, body) = pbx.api("GET", "/api/v1/calls", None);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    list["calls"].as_array().map_or(0, |calls| calls.iter().filter(|c| c["state"] == state).count())
}

/// The caller vanishes mid-call (SIGKILL: no BYE). Its RTP stops; after `rtp_timeout_s` pbx
/// hangs up the call, BYEs the callee and writes the CDR (answered, hung up by pbx).
#[test]
fn vanished_caller_is_hung_up_by_the_rtp_timeout() {
    const RTP_TIMEOUT_S: u64 = 5;
    let pbx = Pbx::start(PbxOptions::default().own_rtp_ports(100).calls(&format!("rtp_timeout_s = {RTP_TIMEOUT_S}")));
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let caller_pcap = pcap(&pbx, "caller.pcap", G711::Pcmu, &tone(1000.0, G711_RATE_HZ, 1.0, 8000.0));
    // The callee talks on for longer than the timeout: only the caller's silence counts.
    let callee_pcap = pcap(&pbx, "callee.pcap", G711::Pcmu, &tone(600.0, G711_RATE_HZ, 12.0, 8000.0));
    let callee = callee(&pbx, "call_uas.xml", 1)
        .media(G711::Pcmu, &callee_sink, Some(&callee_pcap))
        .timeout(Duration::from_secs(40))
        .spawn();
    pbx.wait_registered("101", &callee);
    let caller = caller(&pbx, "call_uac.xml", "101")
        .media(G711::Pcmu, &caller_sink, Some(&caller_pcap))
        .args(&["-d", "60000", "-m", "1"])
        .timeout(Duration::from_secs(70))
        .spawn();
    assert!(wait_until(Duration::from_secs(10), || calls_in(&pbx, "answered") == 1), "the call was not answered");
    std::thread::sleep(Duration::from_secs(1));
    let vanished_at = Instant::now();
    caller.kill();

    let timeout = Duration::from_secs(RTP_TIMEOUT_S);
    assert!(wait_until(timeout + Duration::from_secs(10), || cdrs(&pbx).len() == 1), "no CDR after the RTP timeout");
    let hung_up_after = vanished_at.elapsed();
    assert!(hung_up_after >= timeout - Duration::from_secs(2), "hung up after {hung_up_after:?}, before the timeout");
    let cdr = &cdrs(&pbx)[0];
    assert_eq!(cdr["disposition"], "answered", "{cdr}");
    assert_eq!(cdr["hangup"], "pbx", "{cdr}");
    assert!(cdr["media"]["caller"]["packets_in"].as_u64().unwrap_or(0) >= 25, "the caller's RTP was counted: {cdr}");
    let callee = callee.wait();
    assert!(callee.success, "the callee got its BYE and ended: {}", callee.report());
    assert_eq!(callee.received_requests("BYE").len(), 1, "{}", callee.messages);
    // The vanished caller's BYE goes unanswered: its transaction (Timer F, 32 s) bounds the end.
    assert!(
        wait_until(Duration::from_secs(45), || pbx.metric("pbx_rtp_ports_in_use") == Some(0.0)),
        "ports still in use:\n{}",
        pbx.metrics()
    );
    assert_nothing_left(&pbx);
}

/// kill -9 of the node with calls in progress: after the restart, the CDR of every call that
/// had ended before the kill is there; the calls cut off leave none (they never ended).
#[test]
fn kill9_keeps_the_cdrs_of_finished_calls() {
    const DONE: u32 = 6;
    const CUT: u32 = 3;
    let mut pbx = node();
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee = callee(&pbx, "call_load_uas.xml", DONE + CUT)
        .media(G711::Pcmu, &callee_sink, None)
        .timeout(Duration::from_secs(60))
        .spawn();
    pbx.wait_registered("101", &callee);
    let finished = caller(&pbx, "call_load_uac.xml", "101")
        .media(G711::Pcmu, &caller_sink, None)
        .args(&["-r", "10", "-m", &DONE.to_string(), "-d", "200"])
        .run();
    assert!(finished.success, "caller: {}", finished.report());
    assert_eq!(finished.calls_counted("Successful call"), Some(u64::from(DONE)), "{}", finished.screen);
    assert!(wait_until(CLEANUP_TIMEOUT, || cdrs(&pbx).len() == DONE as usize), "CDRs: {:?}", cdrs(&pbx));

    let cut_sink = RtpSink::for_sipp();
    let cut = caller(&pbx, "call_load_uac.xml", "101")
        .media(G711::Pcmu, &cut_sink, None)
        .args(&["-r", "10", "-m", &CUT.to_string(), "-d", "30000"])
        .timeout(Duration::from_secs(40))
        .spawn();
    assert!(wait_until(Duration::from_secs(10), || calls_in(&pbx, "answered") == CUT as usize), "calls in progress");
    pbx.kill9();
    drop(cut.kill());
    drop(callee.kill());
    pbx.start_again();

    let records = cdrs(&pbx);
    assert_eq!(records.len(), DONE as usize, "{records:?}");
    assert!(records.iter().all(|c| c["disposition"] == "answered" && c["hangup"] == "caller"), "{records:?}");
    assert_eq!(calls_in(&pbx, "answered") + calls_in(&pbx, "ringing"), 0, "no call survives a restart");
}

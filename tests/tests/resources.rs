//! Resources end to end (issue 14): the open-file limit pbx raises at start, the SIP TCP
//! connection caps (per source and the first-message timeout), against the real binary.
//!
//! Other sources are other loopback addresses (127.0.0.2, …): on Linux all of 127.0.0.0/8 is
//! local, so a client bound there is, to pbx, another phone. SIPp replays its pcap through a
//! raw socket: the call here needs root or CAP_NET_RAW on sipp, as in `calls.rs`.

use pbx_node::sip::transport::{TCP_CONNECTIONS_PER_SOURCE_MAX, TCP_FIRST_MESSAGE_S};
use pbx_tests::audio::{G711, G711_RATE_HZ, tone};
use pbx_tests::rtp::{RtpSink, g711_stream_pcap};
use pbx_tests::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

/// The soft open-file limit the node is started with: the common default.
const SOFT_LIMIT: u64 = 1_024;
/// TCP connections held open during the call: what starved RTP before the limit was raised.
const HELD_CONNECTIONS: usize = 1_000;
/// Addresses they come from (each below the per-source cap).
const HELD_SOURCES: usize = 8;
/// Longest the node may take to account for connections opened or closed.
const SETTLE: Duration = Duration::from_secs(30);

const _: () = assert!(HELD_CONNECTIONS / HELD_SOURCES < TCP_CONNECTIONS_PER_SOURCE_MAX);

/// 127.0.0.`n`.
fn loopback(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, u8::try_from(n).expect("a loopback host number")))
}

/// This process's hard open-file limit, from /proc/self/limits (the node inherits it).
fn hard_open_file_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let hard = line.split_whitespace().nth(4).expect("the hard limit column");
    if hard == "unlimited" { u64::MAX } else { hard.parse().expect("a number") }
}

/// `text` without terminal colour sequences (ESC [ … m), as the human log format writes them.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An OPTIONS from `local` over TCP, as raw text.
fn options(pbx: &Pbx, local: std::net::SocketAddr, id: &str) -> String {
    format!(
        "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-{id}\r\nMax-Forwards: 70\r\n\
From: <sip:probe@{ip}>;tag={id}\r\nTo: <sip:{sip}>\r\nCall-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        sip = pbx.sip,
        ip = local.ip(),
    )
}

/// Whether pbx has closed `stream` (EOF or reset), without waiting.
fn is_closed(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn tcp_connections(pbx: &Pbx) -> Option<f64> {
    pbx.metric("pbx_sip_tcp_connections")
}

/// Started with a soft open-file limit of 1,024 (the usual default), pbx raises it to the hard
/// limit and logs before, soft and hard; then 1,000 TCP connections held open from eight
/// addresses leave room for a call whose RTP flows through pbx's ports, and all 1,000 are
/// still open after it. (With the limit left at 1,024 the connections alone exhaust it.)
#[test]
fn a_raised_open_file_limit_leaves_rtp_room_beside_1000_tcp_connections() {
    let hard = hard_open_file_limit();
    assert!(hard >= 4 * SOFT_LIMIT, "this test needs a hard open-file limit of at least 4,096 (ulimit -Hn): {hard}");
    let pbx = Pbx::start(PbxOptions::default().own_rtp_ports(100).open_files_soft(SOFT_LIMIT));
    let log = strip_ansi(&pbx.log());
    let line = log.lines().find(|l| l.contains("open-file limit")).unwrap_or_else(|| panic!("no limit line:\n{log}"));
    let hard_text = if hard == u64::MAX { "unlimited".to_string() } else { hard.to_string() };
    for field in [format!("before={SOFT_LIMIT}"), format!("hard={hard_text}")] {
        assert!(line.contains(&field), "{field} missing in {line:?}");
    }
    assert!(!line.contains(&format!("soft={SOFT_LIMIT} ")), "the soft limit was not raised: {line:?}");

    let mut held = Vec::with_capacity(HELD_CONNECTIONS);
    for i in 0..HELD_CONNECTIONS {
        let mut stream = tcp_connect_from(loopback(10 + i % HELD_SOURCES), pbx.sip)
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", pbx.log()));
        // One message each, so the first-message timeout does not close them during the call.
        let local = stream.local_addr().expect("local address");
        stream.write_all(options(&pbx, local, &format!("held-{i}")).as_bytes()).expect("send OPTIONS");
        held.push(stream);
    }
    assert!(
        wait_until(SETTLE, || tcp_connections(&pbx) == Some(HELD_CONNECTIONS as f64)),
        "pbx holds {:?} TCP connections, not {HELD_CONNECTIONS}:\n{}",
        tcp_connections(&pbx),
        pbx.metrics()
    );

    let callee_sink = RtpSink::for_sipp();
    let caller_sink = RtpSink::for_sipp();
    let pcap = pbx.scratch().join("caller.pcap");
    g711_stream_pcap(&pcap, G711::Pcmu, &tone(440.0, G711_RATE_HZ, 2.0, 8000.0)).expect("write pcap");
    let callee = Sipp::registered_callee(&pbx, "call_uas.xml", "101", "secret-101", 1)
        .media(G711::Pcmu, &callee_sink, Some(&pcap))
        .spawn();
    let contact = format!("sip:101@{};transport=UDP", callee.local());
    assert!(
        wait_until(Duration::from_secs(10), || pbx.contacts_of("101") == [contact.clone()]),
        "callee not registered: {:?}",
        pbx.registrations()
    );
    let caller = Sipp::new("call_uac.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &caller_sink, Some(&pcap))
        .args(&["-d", "2500", "-m", "1"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}\n{}", caller.report(), pbx.log());
    assert!(callee.success, "callee: {}", callee.report());
    let ports = pbx.rtp_ports.clone().expect("own RTP ports");
    let at_callee = callee_sink.finish();
    let from_pbx = at_callee.iter().filter(|d| ports.contains(&d.from.port())).count();
    assert!(from_pbx >= 50, "{from_pbx} RTP packets reached the callee from pbx's ports {ports:?}");
    assert_eq!(tcp_connections(&pbx), Some(HELD_CONNECTIONS as f64), "the connections stayed open throughout");
    drop(held);
    assert!(wait_until(SETTLE, || tcp_connections(&pbx) == Some(0.0)), "closed connections are forgotten");
}

/// One address may hold `TCP_CONNECTIONS_PER_SOURCE_MAX` SIP TCP connections; those beyond are
/// closed at once and counted (`reason="per_source"`), while a phone on another address still
/// registers over TCP and over UDP.
#[test]
fn tcp_connections_beyond_the_per_source_cap_are_refused() {
    const EXTRA: usize = 20;
    let pbx = Pbx::start(PbxOptions::default());
    let refused = || pbx.metric(r#"pbx_sip_tcp_refused_total{reason="per_source"}"#).unwrap_or(0.0);
    let mut streams: Vec<TcpStream> = (0..TCP_CONNECTIONS_PER_SOURCE_MAX + EXTRA)
        .map(|i| tcp_connect_from(loopback(1), pbx.sip).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    assert!(wait_until(SETTLE, || refused() == EXTRA as f64), "refused: {}\n{}", refused(), pbx.metrics());
    let mut closed = || streams.iter_mut().map(is_closed).filter(|&c| c).count();
    let deadline = Instant::now() + SETTLE;
    let mut now_closed = closed();
    while now_closed < EXTRA && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        now_closed = closed();
    }
    assert_eq!(now_closed, EXTRA, "exactly the connections beyond the cap are closed");

    let other = loopback(2);
    let mut tcp_phone = SipClient::tcp_from(other, pbx.sip);
    let contact = format!("Contact: <sip:100@{};transport=tcp>", tcp_phone.local());
    let answer = tcp_phone.register("100", "secret-100", "MD5", &[&contact, "Expires: 300"]);
    assert_eq!(answer.as_deref().and_then(status_code), Some(200), "TCP from {other}: {answer:?}");
    let mut udp_phone = SipClient::udp_from(other, pbx.sip);
    let contact = format!("Contact: <sip:101@{}>", udp_phone.local());
    let answer = udp_phone.register("101", "secret-101", "MD5", &[&contact, "Expires: 300"]);
    assert_eq!(answer.as_deref().and_then(status_code), Some(200), "UDP from {other}: {answer:?}");

    let mut one_more = tcp_connect_from(loopback(1), pbx.sip).expect("connect");
    assert!(wait_until(SETTLE, || refused() == (EXTRA + 1) as f64), "the source is still at its cap");
    assert!(wait_until(SETTLE, || is_closed(&mut one_more)), "and its new connection is closed");
}

/// A TCP connection that sends no complete SIP message (nothing, or only keep-alive CRLFs) is
/// closed once `TCP_FIRST_MESSAGE_S` have passed, and counted; it is open before that; one that
/// sent a message stays open and is answered.
#[test]
fn a_connection_that_says_nothing_is_closed_after_the_first_message_timeout() {
    let pbx = Pbx::start(PbxOptions::default());
    let mut silent = tcp_connect_from(loopback(1), pbx.sip).expect("connect");
    let mut pinging = tcp_connect_from(loopback(1), pbx.sip).expect("connect");
    pinging.write_all(b"\r\n\r\n").expect("ping");
    let mut talking = SipClient::tcp(pbx.sip);
    let request = talking.request("OPTIONS", &format!("sip:{}", pbx.sip), "100", None, &[]);
    assert_eq!(talking.transact(&request).as_deref().and_then(status_code), Some(200));

    std::thread::sleep(Duration::from_secs(5));
    assert!(!is_closed(&mut silent) && !is_closed(&mut pinging), "closed before the timeout");
    let timeout = Duration::from_secs(TCP_FIRST_MESSAGE_S) + SETTLE;
    assert!(wait_until(timeout, || is_closed(&mut silent)), "the silent connection is still open");
    assert!(wait_until(SETTLE, || is_closed(&mut pinging)), "keep-alives alone keep no connection");
    assert_eq!(pbx.metric("pbx_sip_tcp_silent_timeouts_total"), Some(2.0));
    let request = talking.request("OPTIONS", &format!("sip:{}", pbx.sip), "100", None, &[]);
    assert_eq!(talking.transact(&request).as_deref().and_then(status_code), Some(200), "the talker stays");
}

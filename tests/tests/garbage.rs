//! Garbage at the SIP sockets of a running node: random datagrams and streams, cut messages,
//! megabytes, bad framing, connection churn. After each, the node must still be up and serve
//! a REGISTER as usual: a 401 challenge, then 200 once the digest is answered.
//!
//! The byte sources are a seeded SplitMix64, so a failure can be replayed from the seed printed
//! with it.

use pbx_tests::*;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Most a UDP datagram can carry over IPv4 (65,535 - 20 IP - 8 UDP).
const UDP_PAYLOAD_BYTES_MAX: usize = 65_507;
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, seeded, good enough to make noise.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low + 1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Bytes drawn from what SIP heads are made of, so the noise reaches past the start line.
    /// All UTF-8 (see `udp_request_with_a_latin1_octet_gets_400` for the rest).
    fn sipish(&mut self, len: usize) -> Vec<u8> {
        const PARTS: &[&[u8]] = &[
            b"\r\n",
            b": ",
            b";",
            b",",
            b"<",
            b">",
            b"\"",
            b"\\",
            b"=",
            b" ",
            b"\t",
            b"%",
            b"@",
            b"sip:",
            b"tag",
            b"branch",
            b"z9hG4bK",
            b"Via",
            b"To",
            b"From",
            b"Call-ID",
            b"CSeq",
            b"Contact",
            b"Content-Length",
            b"l",
            b"i",
            b"m",
            b"v",
            b"REGISTER",
            b"0",
            b"4294967296",
            b"-1",
            b"\x7f",
            b"\x00",
            b"\xc3\xa9",
        ];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            out.extend_from_slice(PARTS[self.between(0, PARTS.len() - 1)]);
        }
        out.truncate(len);
        out
    }
}

/// A REGISTER for extension 100 from `client`, with `Content-Length` replaced by `length`
/// (`None`: no Content-Length at all).
fn register(client: &mut SipClient, server: SocketAddr, length: Option<usize>) -> String {
    let contact = format!("Contact: <sip:100@{}>", client.local());
    let request = client.request("REGISTER", &format!("sip:{server}"), "100", None, &[&contact]);
    match length {
        Some(n) => request.replace("Content-Length: 0\r\n", &format!("Content-Length: {n}\r\n")),
        None => request.replace("Content-Length: 0\r\n", ""),
    }
}

fn tcp_client(pbx: &Pbx) -> SipClient {
    let client = SipClient::tcp(pbx.sip);
    client.set_write_timeout(CLOSE_TIMEOUT);
    client
}

/// The node is up, logged no panic, challenges a fresh REGISTER with 401 and takes the answer
/// to it with 200, on the transport the garbage came on (`tcp`) and on UDP.
fn assert_serves_registers(pbx: &mut Pbx, tcp: bool) {
    assert!(pbx.is_running(), "node exited:\n{}", pbx.log());
    assert!(!pbx.log().contains("panicked"), "panic in the node log:\n{}", pbx.log());
    let transports: &[bool] = if tcp { &[true, false] } else { &[false] };
    for &over_tcp in transports {
        let mut client = if over_tcp { tcp_client(pbx) } else { SipClient::udp(pbx.sip) };
        let request = register(&mut client, pbx.sip, Some(0));
        let challenge = client.transact(&request);
        let challenge = challenge.unwrap_or_else(|| panic!("no answer to REGISTER (tcp: {over_tcp}):\n{}", pbx.log()));
        assert_eq!(status_code(&challenge), Some(401), "{challenge}");
        assert!(!header_values(&challenge, "WWW-Authenticate").is_empty(), "{challenge}");
        let contact = format!("Contact: <sip:100@{}>", client.local());
        let ok = client.register("100", "secret-100", "MD5", &[&contact]).expect("an answer to the digest");
        assert_eq!(status_code(&ok), Some(200), "{ok}");
    }
}

/// Drains whatever the node sends back to `client` until it stays quiet for `quiet`.
fn drain(client: &mut SipClient, quiet: Duration) -> Vec<String> {
    std::iter::from_fn(|| client.recv(quiet)).take(10_000).collect()
}

/// Hundreds of random datagrams (1–1500 octets) leave the node serving; and each of a hundred
/// datagrams of SIP-shaped noise behind a true start line and Via is answered with an error.
#[test]
fn udp_random_datagrams_leave_the_node_serving() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let mut client = SipClient::udp(pbx.sip);
    let seed = 0x5EED_0001;
    let mut noise = Noise(seed);
    for _ in 0..300 {
        let len = noise.between(1, 1500);
        client.send_bytes(&noise.bytes(len));
    }
    for answer in drain(&mut client, Duration::from_millis(300)) {
        assert!(status_code(&answer).is_some_and(|c| c >= 400), "seed {seed:#x}: noise accepted: {answer}");
    }
    // The Via is ours with rport, so whatever the noise does to the rest, the node can answer
    // (RFC 3261 §8.2, the facade's promise: never a silent drop of a request it could answer).
    for n in 0..100 {
        let head = format!(
            "REGISTER sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP {};rport;branch=z9hG4bK-noise-{n}\r\n",
            pbx.sip,
            client.local()
        );
        let len = noise.between(1, 1500);
        let mut datagram = head.into_bytes();
        datagram.extend(noise.sipish(len));
        datagram.extend_from_slice(b"\r\n\r\n");
        client.send_bytes(&datagram);
        let answer = client.recv(ANSWER_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "seed {seed:#x}, noise {n} unanswered:\n{}\n{}",
                String::from_utf8_lossy(&datagram).escape_debug(),
                pbx.log()
            )
        });
        assert!(status_code(&answer).is_some_and(|c| c >= 400), "seed {seed:#x}, noise {n} accepted: {answer}");
    }
    assert_serves_registers(&mut pbx, false);
}

/// A REGISTER whose head holds one non-UTF-8 octet (a Latin-1 display name from an old phone)
/// is answered 400 saying so — its Via is readable, so it is never silently dropped (RFC 3261
/// header values are TEXT-UTF8).
#[test]
fn udp_request_with_a_latin1_octet_gets_400() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let mut client = SipClient::udp(pbx.sip);
    let request = register(&mut client, pbx.sip, Some(0));
    let mut latin1 = Vec::new();
    for line in request.split_inclusive("\r\n") {
        match line.strip_prefix("From: ") {
            Some(rest) => latin1.extend([b"From: \"M\xfcller\" ".as_slice(), rest.as_bytes()].concat()),
            None => latin1.extend_from_slice(line.as_bytes()),
        }
    }
    assert!(std::str::from_utf8(&latin1).is_err());
    client.send_bytes(&latin1);
    let answer = client.recv(Duration::from_secs(2)).expect("an answer to a request with a readable Via");
    assert!(answer.starts_with("SIP/2.0 400 Header section is not valid UTF-8\r\n"), "{answer}");
    assert_serves_registers(&mut pbx, false);
}

/// A REGISTER cut short at every 9th octet, alone or closed with a blank line, leaves the
/// node serving; what reads as a request with our Via is refused, never taken.
#[test]
fn udp_truncated_register_leaves_the_node_serving() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let mut client = SipClient::udp(pbx.sip);
    let whole = register(&mut client, pbx.sip, Some(0));
    let cuts: Vec<usize> = (1..whole.len() - 4).step_by(9).collect();
    for &cut in &cuts {
        client.send_bytes(&whole.as_bytes()[..cut]);
        let mut closed = whole.as_bytes()[..cut].to_vec();
        closed.extend_from_slice(b"\r\n\r\n");
        client.send_bytes(&closed);
    }
    for answer in drain(&mut client, Duration::from_millis(500)) {
        // A cut inside a trailing header can leave a whole REGISTER ("User-Agent: pbx"), which
        // is rightly challenged with 401; anything else is refused.
        assert!(status_code(&answer).is_some_and(|c| c >= 400), "{answer}");
    }
    assert_serves_registers(&mut pbx, false);
}

/// One megabyte sent as a REGISTER head claiming it all, then garbage, in datagrams of the
/// largest UDP size: the first is refused (≥ 400), the rest dropped, the node keeps serving.
#[test]
fn udp_megabyte_in_largest_datagrams_leaves_the_node_serving() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let mut client = SipClient::udp(pbx.sip);
    let total = 1 << 20;
    let mut noise = Noise(0x5EED_0002);
    let mut message = register(&mut client, pbx.sip, Some(total)).into_bytes();
    message.extend(noise.bytes(total - message.len()));
    let datagrams: Vec<&[u8]> = message.chunks(UDP_PAYLOAD_BYTES_MAX).collect();
    assert_eq!(datagrams.len(), 17);
    for datagram in &datagrams {
        client.send_bytes(datagram);
        // Loopback drops what the receiver's buffer cannot hold; pace the burst a little.
        std::thread::sleep(Duration::from_millis(5));
    }
    let answer =
        client.recv(ANSWER_TIMEOUT).unwrap_or_else(|| panic!("no answer to the 1 MB REGISTER:\n{}", pbx.log()));
    let code = status_code(&answer);
    assert!(code == Some(400) || code == Some(513), "{answer}");
    assert_serves_registers(&mut pbx, false);
}

/// Random bytes on TCP: past the header-section bound (16 KiB) the node closes the stream;
/// shorter garbage that never ends a header section may stay open, but blocks no one else.
#[test]
fn tcp_random_bytes_are_closed_and_the_node_keeps_serving() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let mut noise = Noise(0x5EED_0003);
    // Held open on purpose while the node is checked, then dropped.
    let mut lingering = Vec::new();
    for round in 0..5 {
        let mut client = tcp_client(&pbx);
        let short = noise.between(1, 10_000);
        client.send_bytes(&noise.bytes(short));
        lingering.push(client);
        let mut client = tcp_client(&pbx);
        let len = noise.between(17 * 1024, 64 * 1024);
        client.send_bytes(&noise.bytes(len));
        assert!(client.closed_by_server(CLOSE_TIMEOUT), "round {round}: {len} random octets, still open");
    }
    assert_serves_registers(&mut pbx, true);
    drop(lingering);
    assert_serves_registers(&mut pbx, true);
}

/// A one-megabyte TCP stream (a REGISTER head that never ends) is cut off once the header
/// section passes its bound; the node keeps serving.
#[test]
fn tcp_megabyte_stream_is_cut_off_and_the_node_keeps_serving() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let mut client = tcp_client(&pbx);
    let mut noise = Noise(0x5EED_0004);
    let head = register(&mut client, pbx.sip, None);
    let mut stream = head.trim_end().as_bytes().to_vec();
    while stream.len() < 1 << 20 {
        // Printable header lines with no blank line among them: one header section, forever.
        let value: String = (0..noise.between(10, 200)).map(|_| (b'!' + (noise.next() % 94) as u8) as char).collect();
        stream.extend_from_slice(format!("\r\nX-Noise: {value}").as_bytes());
    }
    client.send_bytes(&stream);
    assert!(client.closed_by_server(CLOSE_TIMEOUT), "an endless header section was not cut off");
    assert_serves_registers(&mut pbx, true);
}

/// A REGISTER without Content-Length on TCP cannot be framed: 400, then the node closes the
/// connection (RFC 3261 §18.3); it keeps serving.
#[test]
fn tcp_register_without_content_length_gets_400_and_close() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let mut client = tcp_client(&pbx);
    let request = register(&mut client, pbx.sip, None);
    client.send(&request);
    let answer = client.recv(ANSWER_TIMEOUT).unwrap_or_else(|| panic!("no answer:\n{}", pbx.log()));
    assert_eq!(status_code(&answer), Some(400), "{answer}");
    assert!(client.closed_by_server(CLOSE_TIMEOUT), "connection left open after a framing error");
    assert_serves_registers(&mut pbx, true);
}

/// A REGISTER on TCP claiming a 10 MB body gets 513 Message Too Large (or just a close), and
/// the connection is closed rather than the body awaited; the node keeps serving.
#[test]
fn tcp_register_with_huge_content_length_gets_513_or_close() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let mut client = tcp_client(&pbx);
    let request = register(&mut client, pbx.sip, Some(10_000_000));
    client.send(&request);
    if let Some(answer) = client.recv(ANSWER_TIMEOUT) {
        assert_eq!(status_code(&answer), Some(513), "{answer}");
    }
    assert!(client.closed_by_server(CLOSE_TIMEOUT), "connection left open awaiting 10 MB");
    assert_serves_registers(&mut pbx, true);
}

/// 200 TCP connections opened at once (beyond the per-source cap, so some are closed at
/// once), some with half a request on them, then all dropped: the node frees every one of them
/// (its open-connection gauge returns to 0, so the source may connect again) and keeps serving.
#[test]
fn many_tcp_connections_opened_and_dropped_leave_the_node_serving() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let mut half = SipClient::udp(pbx.sip);
    let partial = register(&mut half, pbx.sip, Some(0));
    let partial = &partial.as_bytes()[..partial.len() / 2];
    let connections: Vec<TcpStream> = (0..200)
        .map(|n| {
            let stream = TcpStream::connect_timeout(&pbx.sip, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connection {n} refused: {e}\n{}", pbx.log()));
            if n % 2 == 0 {
                use std::io::Write;
                let _ = (&stream).write_all(partial);
            }
            stream
        })
        .collect();
    drop(connections);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pbx.metric("pbx_sip_tcp_connections").unwrap_or(0.0) > 0.0 {
        assert!(std::time::Instant::now() < deadline, "connections not freed:\n{}", pbx.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_serves_registers(&mut pbx, true);
}

/// A message trickled onto TCP and never finished is cut off after the partial-message
/// deadline (20 s, like Kamailio's tcp_msg_read_timeout), even while bytes keep coming.
#[test]
fn tcp_unfinished_message_is_closed_after_the_deadline() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let mut client = SipClient::tcp(pbx.sip);
    let started = std::time::Instant::now();
    client.send("REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK-slow\r\n");
    // Keep trickling header bytes every few seconds: it must not reset the deadline.
    let mut closed = false;
    for n in 0..12 {
        if client.closed_by_server(Duration::from_secs(3)) {
            closed = true;
            break;
        }
        client.send(&format!("X-Trickle-{n}: a\r\n"));
    }
    let elapsed = started.elapsed();
    assert!(closed, "connection still open after {elapsed:?}");
    assert!(elapsed >= Duration::from_secs(19), "closed too early, after {elapsed:?}");
    assert_serves_registers(&mut pbx, false);
}

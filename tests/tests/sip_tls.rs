//! SIP over TLS end to end (issue 17, part 1): the certificate pbx made at first start is the
//! one its API fingerprints; TLS 1.2 and 1.3 both carry SIP; a phone registered over TLS is
//! reached down the connection it opened (`sips:` and `;transport=tls` alike); baresip calls
//! over TLS; and strangers on the TLS port (plain SIP, a broken or stalled handshake, a client
//! that does not trust the certificate) are closed and counted while pbx goes on serving.

use pbx_tests::baresip::{Baresip, registered_account, registered_account_tls};
use pbx_tests::tls::Version;
use pbx_tests::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// pbx's own TLS handshake limit (node/src/sip/transport.rs `TLS_HANDSHAKE_S`).
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(10);

/// What `GET /api/v1/sip` says of TLS: its listen address and fingerprint.
fn tls_info(pbx: &Pbx) -> (String, String) {
    let (status, body) = pbx.api("GET", "/api/v1/sip", None);
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let tls = &info["tls"];
    assert_eq!(tls["self_signed"], true, "{body}");
    (tls["listen"].as_str().expect("listen").to_string(), tls["fingerprint_sha256"].as_str().expect("fp").to_string())
}

fn refused(pbx: &Pbx, reason: &str) -> f64 {
    let name = format!("pbx_sip_tls_refused_total{{reason=\"{reason}\"}}");
    pbx.metric(&name).unwrap_or(0.0)
}

/// REGISTER over `client` for `user` with `uri` as Request-URI and digest-uri, and `contact`.
fn register_at(client: &mut SipClient, uri: &str, user: &str, password: &str, contact: &str) -> String {
    let contact = format!("Contact: {contact}");
    let first = client.request("REGISTER", uri, user, None, &[&contact, "Expires: 600"]);
    let challenge = client.transact(&first).expect("401");
    assert_eq!(status_code(&challenge), Some(401), "{challenge}");
    let chosen = header_values(&challenge, "WWW-Authenticate")
        .into_iter()
        .find(|c| param(c, "algorithm").is_some_and(|a| a.eq_ignore_ascii_case("MD5")))
        .expect("an MD5 challenge");
    let auth = format!("Authorization: {}", authorization(&chosen, user, password, "REGISTER", uri, 1));
    let second = client.request("REGISTER", uri, user, None, &[&contact, "Expires: 600", &auth]);
    client.transact(&second).expect("REGISTER answered")
}

/// The self-signed certificate's fingerprint on the API is the certificate served; TLS 1.2
/// and TLS 1.3 handshakes both succeed and carry SIP; a `sips:` REGISTER binds the phone over
/// TLS; a call to it arrives down that same connection (pbx's Via says TLS, its Contact
/// `transport=tls`), and the phone's answer goes back to the caller.
#[test]
fn a_phone_registered_over_tls_is_reached_on_its_own_connection() {
    let pbx = Pbx::start(PbxOptions::default());
    let (listen, fingerprint) = tls_info(&pbx);
    assert_eq!(listen, pbx.tls.to_string());
    assert_eq!(pbx.metric("pbx_sip_tls_refused_total{reason=\"handshake\"}"), Some(0.0), "counters exist from start");

    for version in [Version::Tls12, Version::Tls13] {
        let mut client = SipClient::tls(pbx.tls, &fingerprint, version).expect("TLS handshake");
        let (negotiated, _) = client.tls_session().expect("a TLS session");
        let expected = match version {
            Version::Tls12 => rustls::ProtocolVersion::TLSv1_2,
            Version::Tls13 => rustls::ProtocolVersion::TLSv1_3,
        };
        assert_eq!(negotiated, expected);
        let options = client.request("OPTIONS", &format!("sip:{}", pbx.tls), "100", None, &[]);
        let answer = client.transact(&options).expect("OPTIONS answered over TLS");
        assert_eq!(status_code(&answer), Some(200), "{answer}");
        assert!(header_values(&answer, "Via")[0].starts_with("SIP/2.0/TLS"), "{answer}");
    }

    let mut phone = SipClient::tls(pbx.tls, &fingerprint, Version::Tls13).expect("TLS handshake");
    let uri = format!("sips:{}", pbx.tls);
    let contact = format!("<sips:100@{}>", phone.local());
    let answer = register_at(&mut phone, &uri, "100", "secret-100", &contact);
    assert_eq!(status_code(&answer), Some(200), "{answer}");
    let registration = pbx.registrations().into_iter().find(|r| r["aor"] == "100").expect("100 registered");
    assert_eq!(registration["transport"], "TLS", "{registration}");

    let mut caller = SipClient::udp(pbx.sip);
    let invite = caller.request("INVITE", &format!("sip:100@{}", pbx.sip), "101", Some("100"), &[]);
    let challenge = caller.transact(&invite).expect("INVITE challenged");
    assert_eq!(status_code(&challenge), Some(407), "{challenge}");
    let chosen = header_values(&challenge, "Proxy-Authenticate")
        .into_iter()
        .find(|c| param(c, "algorithm").is_some_and(|a| a.eq_ignore_ascii_case("MD5")))
        .expect("MD5");
    let ack = caller.request("ACK", &format!("sip:100@{}", pbx.sip), "101", Some("100"), &[]);
    caller.send(&ack);
    let auth = format!(
        "Proxy-Authorization: {}",
        authorization(&chosen, "101", "secret-101", "INVITE", &format!("sip:100@{}", pbx.sip), 1)
    );
    let invite = caller.request("INVITE", &format!("sip:100@{}", pbx.sip), "101", Some("100"), &[&auth]);
    caller.send(&invite);

    let deadline = Instant::now() + WAIT;
    let arrived = loop {
        let left = deadline.checked_duration_since(Instant::now()).expect("no INVITE reached the TLS phone");
        let message = phone.recv(left).expect("the TLS connection stays open");
        if request_method(&message) == Some("INVITE") {
            break message;
        }
    };
    let via = &header_values(&arrived, "Via")[0];
    assert!(via.starts_with(&format!("SIP/2.0/TLS {}", pbx.tls)), "{arrived}");
    let contact = &header_values(&arrived, "Contact")[0];
    assert!(contact.contains(&format!("{};transport=tls", pbx.tls)), "{arrived}");
    // Busy: a final answer from the phone travels back to the caller.
    let busy = response_to(&arrived, 486, "Busy Here");
    phone.send(&busy);
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.checked_duration_since(Instant::now()).expect("the caller got no 486");
        let message = caller.recv(left).expect("an answer");
        if status_code(&message) == Some(486) {
            break;
        }
    }
}

/// A response to `request` (its Via, From, To with a tag, Call-ID, CSeq).
fn response_to(request: &str, code: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for name in ["Via", "From", "Call-ID", "CSeq"] {
        for value in header_values(request, name) {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str(&format!("To: {};tag=tls-phone\r\nContent-Length: 0\r\n\r\n", header_values(request, "To")[0]));
    out
}

/// Strangers on the TLS port: plain SIP (closed at once, `not_tls`), a handshake record of
/// garbage (`handshake`), a client that does not trust the certificate (it gives up; pbx counts
/// the failed handshake), and a connection that never says anything (closed after the handshake
/// limit, `timeout`). pbx answers over TLS and UDP afterwards.
#[test]
fn strangers_on_the_tls_port_are_closed_and_counted() {
    let pbx = Pbx::start(PbxOptions::default());
    let (_, fingerprint) = tls_info(&pbx);

    let mut plain = SipClient::tcp(pbx.tls);
    let options = plain.request("OPTIONS", &format!("sip:{}", pbx.tls), "100", None, &[]);
    plain.send(&options);
    assert!(plain.closed_by_server(Duration::from_secs(3)), "plain SIP on the TLS port is closed");
    assert!(wait_until(WAIT, || refused(&pbx, "not_tls") == 1.0), "counted: {}", pbx.metrics());

    let mut garbage = SipClient::tcp(pbx.tls);
    garbage.send_bytes(&[22, 3, 1, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x00]);
    assert!(garbage.closed_by_server(Duration::from_secs(3)), "a broken handshake is closed");
    assert!(wait_until(WAIT, || refused(&pbx, "handshake") >= 1.0), "counted: {}", pbx.metrics());

    let stranger = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
    let distrust = SipClient::tls(pbx.tls, stranger, Version::Tls13);
    assert!(distrust.is_err(), "a client pinning another certificate gives up");
    assert!(wait_until(WAIT, || refused(&pbx, "handshake") >= 2.0), "counted: {}", pbx.metrics());

    let started = Instant::now();
    let mut silent = TcpStream::connect_timeout(&pbx.tls, Duration::from_secs(3)).expect("connect");
    silent.set_read_timeout(Some(TLS_HANDSHAKE + Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut silent, &mut buf);
    assert!(matches!(read, Ok(0)) || read.is_err(), "closed, not answered: {read:?}");
    let waited = started.elapsed();
    assert!(waited >= TLS_HANDSHAKE - Duration::from_secs(1), "closed after the handshake limit, not at {waited:?}");
    assert!(waited < TLS_HANDSHAKE + Duration::from_secs(5), "closed within the handshake limit: {waited:?}");
    assert!(wait_until(WAIT, || refused(&pbx, "timeout") == 1.0), "counted: {}", pbx.metrics());
    let _ = silent.write_all(b"late");

    let mut client = SipClient::tls(pbx.tls, &fingerprint, Version::Tls12).expect("TLS still served");
    let options = client.request("OPTIONS", &format!("sip:{}", pbx.tls), "100", None, &[]);
    assert_eq!(client.transact(&options).as_deref().and_then(status_code), Some(200));
    assert!(pbx.answers_options(), "UDP still served");
}

/// A baresip registered over TLS calls a baresip registered over UDP: the call is set up and
/// each hears the other's tone.
#[test]
fn baresip_over_tls_calls_a_phone_on_udp() {
    let pbx = Pbx::start(PbxOptions::default().md5_only().own_rtp_ports(100));
    let mut alice = Baresip::start(&registered_account_tls("100", "secret-100", pbx.tls, None), 1000.0);
    let mut bob = Baresip::start(&registered_account("101", "secret-101", pbx.sip), 600.0);
    assert!(wait_until(WAIT, || alice.is_registered() && bob.is_registered()), "{}{}", alice.report(), bob.report());
    let registration = pbx.registrations().into_iter().find(|r| r["aor"] == "100").expect("100 registered");
    assert_eq!(registration["transport"], "TLS", "{registration}");
    // And the other way round: pbx reaches alice down her TLS connection.
    bob.dial(&format!("sip:100@{}", pbx.sip));
    assert!(bob.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", bob.report());
    assert!(alice.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", alice.report());
    std::thread::sleep(Duration::from_secs(3));
    bob.hangup();
    assert!(bob.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", bob.report());
    assert!(alice.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", alice.report());
    for (phone, hz) in [(&alice, 600.0), (&bob, 1000.0)] {
        phone.assert_hears(hz);
    }
}

/// SRTP end to end with a real client: a baresip on TLS that insists on SRTP (`srtp-mand`:
/// RTP/SAVP with an AES_CM_128_HMAC_SHA1_80 key) calls a baresip on UDP with plain RTP. Each
/// hears the other's tone, so pbx decrypted the one leg and encrypted toward it with the keys
/// SDES agreed; pbx's counters show SRTP packets authenticated in both directions.
#[test]
fn baresip_with_mandatory_srtp_calls_a_plain_phone() {
    let pbx = Pbx::start(PbxOptions::default().md5_only().own_rtp_ports(100));
    let mut alice = Baresip::start(&registered_account_tls("100", "secret-100", pbx.tls, Some("srtp-mand")), 1000.0);
    let mut bob = Baresip::start(&registered_account("101", "secret-101", pbx.sip), 600.0);
    assert!(wait_until(WAIT, || alice.is_registered() && bob.is_registered()), "{}{}", alice.report(), bob.report());
    alice.dial(&format!("sip:101@{};transport=tls", pbx.tls));
    assert!(alice.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", alice.report());
    assert!(bob.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", bob.report());
    std::thread::sleep(Duration::from_secs(3));
    alice.hangup();
    assert!(alice.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", alice.report());
    assert!(bob.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", bob.report());
    assert!(alice.log().contains("SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)"), "{}", alice.report());
    for (phone, hz) in [(&bob, 1000.0), (&alice, 600.0)] {
        assert!(phone.assert_hears(hz) > 0.8, "\n{}", phone.report());
    }
    // Every SRTP packet authenticated (baresip's RTCP is another matter: libre sends an
    // RTCP APP "PINGPONG" in clear at the start and its closing BYE unencrypted; pbx drops both).
    let metrics = pbx.metrics();
    assert!(!metrics.contains("pbx_srtp_dropped_total{kind=\"rtp\""), "SRTP packets dropped:\n{metrics}");
    let relayed = pbx.metric("pbx_rtp_packets_total{direction=\"in\"}").unwrap_or(0.0);
    assert!(relayed > 200.0, "{relayed} packets relayed");
}

/// The SRTP leg on the wire, checked with an SRTP implementation independent of pbx's (the
/// `libsrtp` crate, a port of Cisco's): this test is the caller on TLS, offering RTP/SAVP with
/// its own key, and sends a 1 kHz tone as SRTP; a baresip on UDP answers with a 600 Hz tone.
/// What pbx sends the caller is not plain (decoded as it arrives it is noise) and decrypts with
/// the key pbx answered to the 600 Hz tone; the callee, which has no SRTP, hears 1 kHz.
#[test]
fn the_srtp_leg_is_encrypted_on_the_wire_and_the_plain_leg_is_not() {
    use base64::Engine as _;
    use libsrtp::{MasterKey, ProtectionProfile, RecvSession, SendSession, StreamConfig};
    use pbx_tests::audio::{G711, G711_RATE_HZ, dominant_frequency, tone, tone_share};
    use pbx_tests::rtp::{parse_rtp, rtp_packet};

    let pbx = Pbx::start(PbxOptions::default().md5_only().own_rtp_ports(100));
    let (_, fingerprint) = tls_info(&pbx);
    let mut bob = Baresip::start(&registered_account("101", "secret-101", pbx.sip), 600.0);
    assert!(wait_until(WAIT, || bob.is_registered()), "{}", bob.report());

    let media = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind RTP");
    media.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let ours: [u8; 30] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let inline = base64::engine::general_purpose::STANDARD.encode(ours);
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio {} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{inline}\r\na=sendrecv\r\n",
        media.local_addr().unwrap().port()
    );
    let mut alice = SipClient::tls(pbx.tls, &fingerprint, Version::Tls13).expect("TLS");
    let uri = format!("sip:101@{}", pbx.tls);
    let body_headers =
        |sdp: &str| vec!["Content-Type: application/sdp".to_string(), format!("Content-Length: {}", sdp.len())];
    let invite_with = |client: &mut SipClient, extra: &[String]| {
        let contact = format!("Contact: <sip:100@{};transport=tls>", client.local());
        let mut lines: Vec<&str> = vec![&contact];
        lines.extend(extra.iter().map(String::as_str));
        let head = client.request("INVITE", &uri, "100", Some("101"), &lines);
        // `request` ends with an empty body: put the SDP in its place.
        head.replace("Content-Length: 0\r\n\r\n", "\r\n") + &sdp
    };
    let first = invite_with(&mut alice, &body_headers(&sdp));
    let challenge = alice.transact(&first).expect("challenged");
    assert_eq!(status_code(&challenge), Some(407), "{challenge}");
    let chosen = header_values(&challenge, "Proxy-Authenticate")
        .into_iter()
        .find(|c| param(c, "algorithm").is_some_and(|a| a.eq_ignore_ascii_case("MD5")))
        .expect("MD5");
    let ack = alice.request("ACK", &uri, "100", Some("101"), &[]);
    alice.send(&ack);
    let mut extra = body_headers(&sdp);
    extra.push(format!("Proxy-Authorization: {}", authorization(&chosen, "100", "secret-100", "INVITE", &uri, 1)));
    let invite = invite_with(&mut alice, &extra);
    let ok = alice.transact(&invite).expect("answered");
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    let answer = body(&ok);
    assert!(answer.contains("RTP/SAVP"), "{answer}");
    let line = answer.lines().find(|l| l.starts_with("a=crypto:")).unwrap_or_else(|| panic!("no key: {answer}"));
    assert!(line.starts_with("a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:"), "{line}");
    let theirs = base64::engine::general_purpose::STANDARD
        .decode(line.rsplit("inline:").next().unwrap().trim())
        .expect("base64 key");
    assert_eq!(theirs.len(), 30);
    assert_ne!(theirs, ours, "pbx answers with a key of its own");
    let port: u16 = answer
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split(' ').next()?.parse().ok())
        .expect("pbx's port");
    let to = header_values(&ok, "To")[0].clone();
    let ack = format!(
        "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/TLS {};branch=z9hG4bK-ack-srtp\r\nMax-Forwards: 70\r\n\
From: <sip:100@{}>;tag={}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n",
        alice.local(),
        pbx.tls.ip(),
        header_values(&ok, "From")[0].rsplit("tag=").next().unwrap(),
        header_values(&ok, "Call-ID")[0],
    );
    alice.send(&ack);
    assert!(bob.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", bob.report());

    let config = |key: &[u8]| {
        StreamConfig::new(
            vec![MasterKey::new(&key[..16], &key[16..], &None)],
            &ProtectionProfile::Aes128CmHmacSha180,
            &ProtectionProfile::Aes128CmHmacSha180,
        )
    };
    let mut sender = SendSession::new();
    sender.add_stream(None, &config(&ours)).expect("sender");
    let mut receiver = RecvSession::new();
    receiver.add_stream(None, &config(&theirs)).expect("receiver");
    let samples = tone(1000.0, G711_RATE_HZ, 4.0, 8000.0);
    let pbx_media = std::net::SocketAddr::new(pbx.tls.ip(), port);
    let mut wire = Vec::new();
    let started = Instant::now();
    for (n, frame) in samples.chunks(160).enumerate() {
        let packet = rtp_packet(0, n as u16, (n * 160) as u32, 0x5eed_0001, n == 0, &G711::Pcmu.encode(frame));
        media.send_to(&sender.rtp_protect(packet).expect("protect"), pbx_media).expect("send");
        let due = started + Duration::from_millis(20 * (n as u64 + 1));
        while Instant::now() < due {
            let mut buf = [0u8; 2048];
            if let Ok((len, from)) = media.recv_from(&mut buf) {
                assert_eq!(from, pbx_media, "media comes from pbx's port");
                wire.push(buf[..len].to_vec());
            }
        }
    }
    let bye = alice.request("BYE", &uri, "100", Some("101"), &[]);
    let bye = bye.replace(&format!("To: <sip:101@{}>", pbx.tls.ip()), &format!("To: {to}"));
    let bye = bye.replace(
        &format!("Call-ID: {}", header_values(&bye, "Call-ID")[0]),
        &format!("Call-ID: {}", header_values(&ok, "Call-ID")[0]),
    );
    let bye = bye.replace(
        &format!(";tag={}", header_values(&bye, "From")[0].rsplit("tag=").next().unwrap()),
        &format!(";tag={}", header_values(&ok, "From")[0].rsplit("tag=").next().unwrap()),
    );
    alice.send(&bye);
    assert!(bob.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", bob.report());

    assert!(wire.len() > 100, "{} packets from pbx", wire.len());
    // As it arrives: RTP headers in clear, payloads (and a 10-byte tag) that are not PCMU audio.
    let raw: Vec<i16> = wire
        .iter()
        .filter_map(|p| parse_rtp(p).ok().map(|r| G711::Pcmu.decode(&r.payload[..r.payload.len().saturating_sub(10)])))
        .flatten()
        .collect();
    assert!(tone_share(&raw, G711_RATE_HZ, 600.0) < 0.2, "the SRTP leg carries the tone in clear");
    // Decrypted with pbx's answered key: the callee's 600 Hz.
    let decrypted: Vec<Vec<u8>> = wire.into_iter().filter_map(|p| receiver.rtp_unprotect(p).ok()).collect();
    assert!(decrypted.len() > 100, "{} packets authenticated", decrypted.len());
    let heard: Vec<i16> =
        decrypted.iter().flat_map(|p| G711::Pcmu.decode(parse_rtp(p).expect("RTP").payload)).collect();
    let middle = &heard[heard.len() / 4..heard.len() * 3 / 4];
    assert_eq!(dominant_frequency(middle, G711_RATE_HZ), 600.0);
    assert!(tone_share(middle, G711_RATE_HZ, 600.0) > 0.8, "{}", tone_share(middle, G711_RATE_HZ, 600.0));
    // The plain leg: the callee (no SRTP) decoded the caller's tone.
    let wav = bob.received_audio().unwrap_or_else(|| panic!("no recording\n{}", bob.report()));
    let samples = wav.mono();
    let rate = wav.rate_hz as usize;
    assert!(samples.len() > 2 * rate, "{} samples", samples.len());
    assert_eq!(dominant_frequency(&samples[rate / 2..samples.len() - rate / 2], wav.rate_hz), 1000.0);
}

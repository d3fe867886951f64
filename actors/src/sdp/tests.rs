use super::*;
use proptest::prelude::*;

/// A phone's offer: G.722 first, PCMU also as a dynamic PT, DTMF, an unknown attribute, video.
const PHONE: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 9 0 8 96 101\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:96 pcmu/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:30\r\n\
a=x-unknown:keep me\r\n\
m=video 51372 RTP/AVP 31 34\r\n\
a=rtpmap:31 H261/90000\r\n";

fn sdp(text: &str) -> SessionDescription {
    parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn error(text: &str) -> String {
    parse(text.as_bytes()).expect_err(text).to_string()
}

fn local() -> LocalSession {
    LocalSession::new(42, "203.0.113.1".parse().unwrap())
}

/// The phone's offer reads as its audio stream, in the offerer's order, other formats skipped.
#[test]
fn phone_offer_reads_as_audio() {
    let audio = sdp(PHONE).audio().unwrap();
    assert_eq!(audio.rtp, Some("192.0.2.10:49170".parse().unwrap()));
    assert_eq!(audio.rtcp, Some("192.0.2.10:49171".parse().unwrap()));
    assert_eq!(audio.codecs, [(0, Codec::Pcmu), (8, Codec::Pcma), (96, Codec::Pcmu)]);
    assert_eq!((audio.telephone_event, audio.direction, audio.ptime), (Some(101), Direction::SendRecv, Some(30)));
    assert_eq!(sdp(PHONE).media_count(), 2);
    assert_eq!(sdp(PHONE).origin(), "alice 2890844526 2890844526 IN IP4 192.0.2.10");
}

/// Printing what was parsed gives back the very bytes, unknown lines included; LF-only parses alike.
#[test]
fn printing_loses_nothing_and_lf_is_accepted() {
    assert_eq!(sdp(PHONE).to_bytes(), PHONE.as_bytes());
    assert_eq!(sdp(&PHONE.replace("\r\n", "\n")), sdp(PHONE));
    // c= out of its RFC place is moved there, and nothing else changes.
    let late_c = PHONE.replace("c=IN IP4 192.0.2.10\r\nt=0 0\r\n", "t=0 0\r\nc=IN IP4 192.0.2.10\r\n");
    assert_eq!(sdp(&late_c).to_bytes(), PHONE.as_bytes());
}

/// Each malformed body is refused with a message naming the line and what is wrong.
#[test]
fn bad_bodies_say_what_is_wrong() {
    let phone = |from: &str, to: &str| PHONE.replace(from, to);
    let c = "c=IN IP4 192.0.2.10";
    let cases = [
        ("v=0\no=a 1 1 IN IP4 192.0.2.1\nm=audio x RTP/AVP 0\n".into(), "line 3: m= line: port is not a number"),
        ("".into(), "no v= line"),
        ("v=0\ns=-\n".into(), "no o= line"),
        ("v=0\no=a 1 1 IN IP4 192.0.2.1\n".into(), "no s= line"),
        ("o=a 1 1 IN IP4 192.0.2.1\nv=0\n".into(), "line 1: SDP does not start with v="),
        ("v=1\n".into(), "line 1: v= line: version is not 0"),
        ("v=0\nv=0\n".into(), "line 2: second v= line"),
        ("v=0\nhello\n".into(), "line 2: not a <letter>=<value> line"),
        (
            phone("2890844526 2890844526", "1"),
            "line 2: o= line: expected <username> <sess-id> <sess-version> <nettype> <addrtype> <address>",
        ),
        (phone("s=-", "o=a 1 1 IN IP4 192.0.2.1"), "line 3: second o= line"),
        (phone("t=0 0", "s=again"), "line 5: second s= line"),
        (phone(c, "c=IN IP4 pbx.example"), "line 4: c= line: address is not an IP literal"),
        (phone(c, "c=IN IP6 192.0.2.10"), "line 4: c= line: address does not match its IP4/IP6 type"),
        (phone(c, "c=IN IP4 224.2.1.1/127"), "line 4: c= line: address is not an IP literal"),
        (phone(c, "c=IN IP4"), "line 4: c= line: expected IN <IP4|IP6> <address>"),
        (phone("t=0 0", c), "line 5: second c= line"),
        (phone("a=ptime:30", "c=IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1"), "line 12: second c= line"),
        (
            phone("m=video 51372 RTP/AVP 31 34", "m=video 51372"),
            "line 13: m= line: expected <media> <port> <proto> <formats>",
        ),
        (phone("m=audio 49170", "m=audio 49170/x"), "line 6: m= line: port count is not a number"),
    ];
    for (body, expected) in cases {
        assert_eq!(error(&body), expected, "{body}");
    }
    assert_eq!(parse(b"v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=\xff\r\n").unwrap_err(), SdpError::NotUtf8);
    let big = format!("{PHONE}{}", "a=x\r\n".repeat(SDP_BYTES_MAX / 5));
    assert_eq!(error(&big), format!("SDP body of {} bytes is larger than 16384", big.len()));
}

/// 64 media sections are read; the 65th is refused.
#[test]
fn media_sections_are_bounded() {
    let head = "v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\n";
    assert_eq!(sdp(&format!("{head}{}", "m=audio 0 RTP/AVP 0\r\n".repeat(64))).media_count(), 64);
    assert_eq!(error(&format!("{head}{}", "m=audio 0 RTP/AVP 0\r\n".repeat(65))), "more than 64 media sections");
}

/// IPv6 c= works at media level, where it overrides the session's, and a=rtcp may move RTCP.
#[test]
fn ipv6_and_rtcp_attribute() {
    let text = PHONE.replace("a=ptime:30\r\n", "c=IN IP6 2001:db8::7\r\na=rtcp:53020\r\n");
    let audio = sdp(&text).audio().unwrap();
    assert_eq!(audio.rtp, Some("[2001:db8::7]:49170".parse().unwrap()));
    assert_eq!(audio.rtcp, Some("[2001:db8::7]:53020".parse().unwrap()));
    let text = PHONE.replace("a=ptime:30", "a=rtcp:53020 IN IP4 198.51.100.4");
    assert_eq!(sdp(&text).audio().unwrap().rtcp, Some("198.51.100.4:53020".parse().unwrap()));
    // An unreadable a=rtcp falls back to port + 1; RTP port 65535 has no such port.
    assert_eq!(sdp(&PHONE.replace("a=ptime:30", "a=rtcp:x")).audio().unwrap().rtcp.unwrap().port(), 49171);
    assert_eq!(sdp(&PHONE.replace("49170", "65535")).audio().unwrap().rtcp, None);
}

/// Hold: c=0.0.0.0 leaves no RTP address; direction comes from the media, else the session.
#[test]
fn hold_and_direction_levels() {
    let held = sdp(&PHONE.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0")).audio().unwrap();
    assert_eq!((held.rtp, held.rtcp, held.direction), (None, None, Direction::SendRecv));
    let session_level = PHONE.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
    assert_eq!(sdp(&session_level).audio().unwrap().direction, Direction::SendOnly);
    let both = session_level.replace("a=ptime:30", "a=inactive");
    assert_eq!(sdp(&both).audio().unwrap().direction, Direction::Inactive);
    let no_c = sdp(&PHONE.replace("c=IN IP4 192.0.2.10\r\n", "")).audio().unwrap();
    assert_eq!((no_c.rtp, no_c.rtcp), (None, None));
}

/// A description naming a media address pbx must never send to is refused whole, at session
/// or media level, in c= or a=rtcp: multicast, the limited broadcast, 0.x.x.x, `::` and their
/// IPv4-mapped forms. c=0.0.0.0 (RFC 2543 hold) is no such address: it reads as none.
#[test]
fn reflector_addresses_are_refused() {
    let c = "c=IN IP4 192.0.2.10";
    let refused = [
        ("c=IN IP4 224.0.0.1", "media address is multicast"),
        ("c=IN IP4 239.255.255.250", "media address is multicast"),
        ("c=IN IP4 255.255.255.255", "media address is the broadcast address 255.255.255.255"),
        ("c=IN IP4 0.1.2.3", "media address is in 0.0.0.0/8, which is never a destination"),
        ("c=IN IP6 ff02::1", "media address is multicast"),
        ("c=IN IP6 ::", "media address :: is unspecified (0.0.0.0 is the only hold address)"),
        ("c=IN IP6 ::ffff:0.0.0.0", "media address ::ffff:0.0.0.0 is unspecified"),
        ("c=IN IP6 ::ffff:255.255.255.255", "media address is the broadcast address 255.255.255.255"),
        ("c=IN IP6 ::ffff:224.1.1.1", "media address is multicast"),
    ];
    for (line, reason) in refused {
        assert_eq!(error(&PHONE.replace(c, line)), format!("line 4: {reason}"), "session level {line}");
        let media_level = PHONE.replace("a=ptime:30", line);
        assert_eq!(error(&media_level), format!("line 11: {reason}"), "media level {line}");
    }
    let rtcp = PHONE.replace("a=ptime:30", "a=rtcp:53020 IN IP4 224.0.0.1");
    assert_eq!(
        error(&rtcp),
        "line 11: a=rtcp address is one pbx never sends media to (multicast, broadcast, unspecified)"
    );
    assert!(parse(PHONE.replace("a=ptime:30", "a=rtcp:53020 IN IP4 255.255.255.255").as_bytes()).is_err());

    // Hold and ordinary unicast addresses pass; a directed broadcast cannot be known.
    for fine in ["c=IN IP4 0.0.0.0", "c=IN IP4 192.0.2.255", "c=IN IP6 2001:db8::1", "c=IN IP4 127.0.0.1"] {
        assert!(parse(PHONE.replace(c, fine).as_bytes()).is_ok(), "{fine}");
    }
    let held = sdp(&PHONE.replace("a=ptime:30", "a=rtcp:53020 IN IP4 0.0.0.0")).audio().unwrap();
    assert_eq!((held.rtp.is_some(), held.rtcp), (true, None), "an a=rtcp of 0.0.0.0 names no RTCP address");
}

/// audio() skips port-0, non-RTP and non-audio lines and reads an SRTP line (RTP/SAVP) as
/// secure with its keys; an rtpmap renaming a static PT wins.
#[test]
fn audio_picks_the_first_usable_line() {
    let text = PHONE.replace(
        "m=audio 49170 RTP/AVP",
        "m=audio 0 RTP/AVP 0\r\nm=audio 6000 UDP/TLS/RTP/SAVPF 0\r\nm=audio 49170 RTP/AVPF",
    );
    let sd = sdp(&text);
    assert_eq!((sd.audio_index(), sd.audio().unwrap().rtp.unwrap().port()), (Some(2), 49170));
    assert!(!sd.audio().unwrap().secure);
    let text = PHONE.replace(
        "m=audio 49170 RTP/AVP",
        "m=audio 0 RTP/AVP 0\r\nm=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\nm=audio 49170 RTP/AVPF",
    );
    let audio = sdp(&text).audio().unwrap();
    assert_eq!((audio.rtp.unwrap().port(), audio.secure), (5000, true));
    assert_eq!(audio.crypto, ["1 AES_CM_128_HMAC_SHA1_80 inline:x"]);
    assert_eq!(sdp(&PHONE.replace("m=audio", "m=image")).audio(), None);
    let renamed = sdp(&PHONE.replace("a=rtpmap:9 G722/8000", "a=rtpmap:0 G722/8000\r\na=rtpmap:9 PCMA/8000/1")).audio();
    assert_eq!(renamed.unwrap().codecs, [(9, Codec::Pcma), (8, Codec::Pcma), (96, Codec::Pcmu)]);
}

/// pbx's offer is exactly what the brief describes, and parses back to what it offered.
#[test]
fn offer_is_exact_and_reads_back() {
    let mut session = local();
    let body = offer(&mut session, 40000, &[(0, Codec::Pcmu), (8, Codec::Pcma)], Some(101), Direction::SendRecv);
    let expected = "v=0\r\no=pbx 42 0 IN IP4 203.0.113.1\r\ns=pbx\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n\
        m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
    assert_eq!(body, expected.as_bytes());
    let audio = parse(&body).unwrap().audio().unwrap();
    assert_eq!(audio.rtp, Some("203.0.113.1:40000".parse().unwrap()));
    assert_eq!((audio.codecs.len(), audio.telephone_event, audio.ptime), (2, Some(101), Some(20)));
    let mut v6 = LocalSession::new(7, "2001:db8::1".parse().unwrap());
    let body = offer(&mut v6, 40000, &[(8, Codec::Pcma)], None, Direction::Inactive);
    assert!(std::str::from_utf8(&body).unwrap().contains("o=pbx 7 0 IN IP6 2001:db8::1\r\n"));
    assert_eq!(parse(&body).unwrap().audio().unwrap().direction, Direction::Inactive);
}

/// The o= version stays for a repeated description and goes up by one for a changed one.
#[test]
fn version_goes_up_only_on_change() {
    let mut session = local();
    let codecs = [(0, Codec::Pcmu)];
    let first = offer(&mut session, 40000, &codecs, None, Direction::SendRecv);
    assert_eq!(offer(&mut session, 40000, &codecs, None, Direction::SendRecv), first);
    let hold = offer(&mut session, 40000, &codecs, None, Direction::SendOnly);
    assert_eq!((parse(&hold).unwrap().origin(), session.version), ("pbx 42 1 IN IP4 203.0.113.1", 1));
    offer(&mut session, 40000, &codecs, None, Direction::SendRecv);
    assert_eq!(session.version, 2);
}

/// The answer keeps m= order, accepts audio with one codec at the offerer's PT and its DTMF PT,
/// and rejects video with port 0, keeping its proto and first format.
#[test]
fn answer_accepts_audio_and_rejects_the_rest() {
    let offered = sdp(&PHONE.replace("m=audio", "m=video 0 RTP/AVP 31\r\nm=audio"));
    let body = answer(&mut local(), &offered, 40002, Codec::Pcma, true, Direction::SendRecv).unwrap();
    let text = std::str::from_utf8(&body).unwrap();
    let media: Vec<&str> = text.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(media, ["m=video 0 RTP/AVP 31", "m=audio 40002 RTP/AVP 8 101", "m=video 0 RTP/AVP 31"]);
    let audio = parse(&body).unwrap().audio().unwrap();
    assert_eq!((audio.codecs, audio.telephone_event), (vec![(8, Codec::Pcma)], Some(101)));
    assert!(text.starts_with("v=0\r\no=pbx 42 0 IN IP4 203.0.113.1\r\ns=pbx\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n"));
    // PCMU at the offerer's first PT for it, no DTMF when not wanted, the given direction.
    let body = answer(&mut local(), &sdp(PHONE), 40002, Codec::Pcmu, false, Direction::RecvOnly).unwrap();
    let audio = parse(&body).unwrap().audio().unwrap();
    assert_eq!(
        (audio.codecs, audio.telephone_event, audio.direction),
        (vec![(0, Codec::Pcmu)], None, Direction::RecvOnly)
    );
    // The offerer's AVPF stays AVPF; DTMF the offerer did not offer is not answered.
    let avpf = sdp(&PHONE.replace("RTP/AVP 9", "RTP/AVPF 9").replace(" 101\r\n", "\r\n"));
    let body = answer(&mut local(), &avpf, 40002, Codec::Pcma, true, Direction::SendRecv).unwrap();
    assert!(std::str::from_utf8(&body).unwrap().contains("m=audio 40002 RTP/AVPF 8\r\n"));
}

/// No usable audio line, or the codec not offered, is NotAcceptable.
#[test]
fn answer_refuses_what_it_cannot_accept() {
    let no_pcma = sdp(&PHONE.replace(" 0 8 96 101", " 0 101"));
    assert_eq!(answer(&mut local(), &no_pcma, 1, Codec::Pcma, true, Direction::SendRecv), Err(NotAcceptable));
    let video_only = sdp(&PHONE.replace("m=audio", "m=text"));
    assert_eq!(answer(&mut local(), &video_only, 1, Codec::Pcmu, true, Direction::SendRecv), Err(NotAcceptable));
}

/// The far leg is offered the near side's G.711 first, then the other one; DTMF PT carried over or 101.
#[test]
fn plan_offer_and_choose() {
    let near =
        sdp(&PHONE.replace(" 9 0 8 96 101", " 8 96").replace("pcmu/8000", "telephone-event/8000")).audio().unwrap();
    assert_eq!(plan_offer(Some(&near)), Ok((vec![(8, Codec::Pcma), (0, Codec::Pcmu)], Some(96))));
    assert_eq!(plan_offer(None), Ok((vec![(0, Codec::Pcmu), (8, Codec::Pcma)], Some(101))));
    let phone = sdp(PHONE).audio().unwrap();
    assert_eq!(plan_offer(Some(&phone)), Ok((phone.codecs.clone(), Some(101))));
    let g722_only = Audio { codecs: vec![], telephone_event: None, ..near.clone() };
    assert_eq!(plan_offer(Some(&g722_only)), Err(NotAcceptable));
    assert_eq!((choose(&near, Codec::Pcma), choose(&near, Codec::Pcmu)), (Some(Codec::Pcma), Some(Codec::Pcma)));
    assert_eq!((choose(&phone, Codec::Pcma), choose(&g722_only, Codec::Pcmu)), (Some(Codec::Pcma), None));
}

/// Direction and codec helpers match RFC 3264 §6.1 and RFC 3551.
#[test]
fn direction_and_codec_helpers() {
    let answers: Vec<_> = Direction::ALL.iter().map(|d| d.answer()).collect();
    assert_eq!(answers, [Direction::SendRecv, Direction::RecvOnly, Direction::SendOnly, Direction::Inactive]);
    let flags: Vec<_> = Direction::ALL.iter().map(|d| (d.sends(), d.receives())).collect();
    assert_eq!(flags, [(true, true), (true, false), (false, true), (false, false)]);
    assert_eq!((Codec::Pcmu.static_pt(), Codec::Pcma.static_pt(), Codec::Pcmu.other()), (0, 8, Codec::Pcma));
    assert_eq!((Codec::from_encoding("PCMA/16000"), Codec::from_encoding("pcma/8000/1")), (None, Some(Codec::Pcma)));
}

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9./+-]{1,8}"
}

/// Lines of these kinds with any value a line can hold.
fn lines(kinds: &'static str) -> impl Strategy<Value = Vec<String>> {
    let line = (proptest::sample::select(kinds.chars().collect::<Vec<_>>()), "[^\n]{0,12}");
    proptest::collection::vec(line.prop_map(|(kind, value)| format!("{kind}={value}")), 0..5)
}

/// Any address a description may name (the refused ones have their own test).
fn address() -> impl Strategy<Value = IpAddr> {
    any::<IpAddr>().prop_filter("a refused media address", |ip| refused_address(*ip).is_none())
}

fn media() -> impl Strategy<Value = Media> {
    let head = (token(), any::<u16>(), any::<Option<u16>>(), token(), proptest::collection::vec(token(), 0..4));
    (head, proptest::option::of(address()), lines("abik")).prop_map(|(head, connection, lines)| {
        let (kind, port, port_count, proto, formats) = head;
        Media { kind, port, port_count, proto, formats, connection, lines }
    })
}

fn description() -> impl Strategy<Value = SessionDescription> {
    let origin = "[!-~]{1,8}( [!-~]{1,8}){5}";
    let parts = (origin, "[^\n]{0,12}", proptest::option::of(address()), lines("abeikprtuz"));
    (parts, proptest::collection::vec(media(), 0..4)).prop_map(|((origin, name, connection, lines), media)| {
        SessionDescription { origin, name, connection, lines, media }
    })
}

proptest! {
    /// Arbitrary bytes never panic the parser, nor does a prefix of the phone offer or one byte of it changed.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in 0..PHONE.len(), byte in any::<u8>()) {
        let _ = parse(&bytes);
        let _ = parse(&PHONE.as_bytes()[..cut]);
        let mut bytes = PHONE.as_bytes().to_vec();
        bytes[cut] = byte;
        let _ = parse(&bytes).map(|sd| sd.audio());
    }

    /// SDP-shaped text never panics parse, audio() or answer(), and what parses prints and parses alike.
    #[test]
    fn sdp_shaped_text_never_panics(body in proptest::collection::vec("[vosctmab]=[ -~]{0,24}", 0..12)) {
        let text = format!("v=0\no=a 1 1 IN IP4 192.0.2.1\ns=-\n{}", body.join("\n"));
        if let Ok(sd) = parse(text.as_bytes()) {
            let _ = sd.audio();
            let _ = answer(&mut local(), &sd, 1, Codec::Pcmu, true, Direction::SendRecv);
            prop_assert_eq!(parse(&sd.to_bytes()), Ok(sd));
        }
    }

    /// Printing any description and parsing it gives the same description.
    #[test]
    fn print_then_parse_round_trips(sd in description()) {
        prop_assert_eq!(parse(&sd.to_bytes()), Ok(sd));
    }
}

/// A session given an `a=crypto` line writes it on the audio line of every description, offers
/// RTP/SAVP when told to and echoes the offer's profile in answers; without it, plain again.
#[test]
fn a_session_with_a_key_writes_it_on_the_audio_line() {
    let mut session = LocalSession::new(7, "192.0.2.1".parse().unwrap());
    let codecs = [(0, Codec::Pcmu)];
    session.set_crypto(Some(("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY".into(), true)));
    let offered = String::from_utf8(offer(&mut session, 20000, &codecs, None, Direction::SendRecv).to_vec()).unwrap();
    assert!(offered.contains("m=audio 20000 RTP/SAVP 0\r\n"), "{offered}");
    assert!(offered.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY\r\n"), "{offered}");
    session.set_crypto(Some(("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:KEY".into(), false)));
    let phone = sdp(PHONE);
    let answered = answer(&mut session, &phone, 20000, Codec::Pcmu, false, Direction::SendRecv).unwrap();
    let answered = String::from_utf8(answered.to_vec()).unwrap();
    assert_eq!(answered.matches("a=crypto:").count(), 1, "on the audio line only: {answered}");
    assert!(answered.contains("m=audio 20000 RTP/AVP 0\r\n"), "the offer's profile: {answered}");
    session.set_crypto(None);
    let plain = String::from_utf8(offer(&mut session, 20000, &codecs, None, Direction::SendRecv).to_vec()).unwrap();
    assert!(!plain.contains("crypto") && plain.contains("RTP/AVP"), "{plain}");
}

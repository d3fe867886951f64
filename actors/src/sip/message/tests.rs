use super::*;

const REGISTER: &[u8] = b"REGISTER sip:pbx.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:100@pbx.example>;tag=abc\r\n\
To: <sip:100@pbx.example>\r\n\
Call-ID: reg-1@10.0.0.5\r\n\
CSeq: 7 REGISTER\r\n\
Contact: <sip:100@10.0.0.5:5062>;expires=60, \"Desk\" <sip:100@10.0.0.6>\r\n\
Content-Length: 0\r\n\r\n";

fn request(bytes: &[u8]) -> Request {
    match parse_datagram(bytes) {
        Ok(Message::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn rejection(bytes: &[u8]) -> (u16, String) {
    match parse_datagram(bytes) {
        Err(ParseError::Reject { code, reason, .. }) => (code, reason),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A REGISTER parses into typed headers, and printing it and parsing again keeps its meaning.
#[test]
fn register_parses_and_round_trips() {
    let r = request(REGISTER);
    assert_eq!(r.method, Method::REGISTER);
    assert_eq!(r.cseq().unwrap().cseq, 7);
    assert_eq!(r.branch().as_deref(), Some("z9hG4bK-1"));
    let Contacts::List(contacts) = r.contacts().unwrap() else { panic!("contacts") };
    assert_eq!(contacts.len(), 2);
    let again = request(&r.to_bytes());
    assert_eq!(again.call_id(), r.call_id());
    assert_eq!(again.to_bytes(), r.to_bytes());
}

/// Via stamping: received always when rport is asked (RFC 3581), and responses go back there.
#[test]
fn rport_and_received_route_the_response_to_the_nat_address() {
    let mut r = request(REGISTER);
    let nat: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    r.stamp_via_source(nat);
    let via = r.top_via().unwrap();
    assert_eq!(via.params.get_val("received").map(|v| v.as_str()), Some("203.0.113.9"));
    assert_eq!(via.params.get_val("rport").map(|v| v.as_str()), Some("40000"));
    let resp = r.response(200, Some("t1"));
    assert_eq!(resp.udp_destination("192.0.2.1:1".parse().unwrap()), nat);
    assert!(resp.header(&Name::TO).unwrap().ends_with(";tag=t1"));
}

/// Without rport, the response goes to the sent-by port at the received address.
#[test]
fn without_rport_the_response_uses_the_sent_by_port() {
    let text = String::from_utf8(REGISTER.to_vec()).unwrap().replace(";rport", "");
    let mut r = request(text.as_bytes());
    r.stamp_via_source("203.0.113.9:40000".parse().unwrap());
    let resp = r.response(200, None);
    assert_eq!(resp.udp_destination("192.0.2.1:1".parse().unwrap()), "203.0.113.9:5062".parse().unwrap());
}

/// Each missing mandatory header gets a 400 naming it, with the head kept for the answer.
#[test]
fn missing_headers_are_named_in_the_400() {
    let text = String::from_utf8(REGISTER.to_vec()).unwrap();
    for (line, name) in [
        ("Call-ID: reg-1@10.0.0.5\r\n", "Call-ID"),
        ("CSeq: 7 REGISTER\r\n", "CSeq"),
        ("From: <sip:100@pbx.example>;tag=abc\r\n", "From"),
    ] {
        let (code, reason) = rejection(text.replace(line, "").as_bytes());
        assert_eq!(code, 400);
        assert!(reason.contains(name), "{reason}");
    }
    match parse_datagram(text.replace("CSeq: 7 REGISTER", "CSeq: 7 INVITE").as_bytes()) {
        Err(ParseError::Reject { code: 400, head, .. }) => {
            let resp = head.response(400, "CSeq method does not match Request-Line").unwrap();
            assert!(resp.to_bytes().starts_with(b"SIP/2.0 400 CSeq method does not match"));
        }
        other => panic!("{other:?}"),
    }
}

/// Unknown URI schemes get 416, other SIP versions 505.
#[test]
fn scheme_and_version_errors_get_their_own_codes() {
    let text = String::from_utf8(REGISTER.to_vec()).unwrap();
    assert_eq!(rejection(text.replace("REGISTER sip:pbx.example", "REGISTER tel:+15551234").as_bytes()).0, 416);
    assert_eq!(rejection(text.replace("SIP/2.0\r\nVia", "SIP/7.0\r\nVia").as_bytes()).0, 505);
}

/// A Content-Length past the end of the datagram is a 400; a shorter one truncates the body.
#[test]
fn content_length_is_checked_against_the_datagram() {
    let text = String::from_utf8(REGISTER.to_vec()).unwrap();
    let (code, _) = rejection(text.replace("Content-Length: 0", "Content-Length: 10").as_bytes());
    assert_eq!(code, 400);
    let longer = text.replace("Content-Length: 0", "Content-Length: 2") + "abcdef";
    assert_eq!(&request(longer.as_bytes()).body[..], b"ab");
}

/// Stream framing: waits for more, needs Content-Length, answers keep-alives.
#[test]
fn stream_framing() {
    assert_eq!(frame_stream(&REGISTER[..40]), Frame::Incomplete);
    assert_eq!(frame_stream(REGISTER), Frame::Message { len: REGISTER.len() });
    let mut two = REGISTER.to_vec();
    two.extend_from_slice(REGISTER);
    assert_eq!(frame_stream(&two), Frame::Message { len: REGISTER.len() });
    assert_eq!(frame_stream(b"\r\n\r\n"), Frame::KeepAlive { len: 4 });
    let text = String::from_utf8(REGISTER.to_vec()).unwrap().replace("Content-Length: 0\r\n", "");
    assert!(matches!(frame_stream(text.as_bytes()), Frame::Broken { code: 400, .. }));
    assert!(matches!(frame_stream(&vec![b'a'; HEAD_BYTES_MAX + 1]), Frame::Broken { .. }));
}

/// Folded header lines are joined; compact header names are understood.
#[test]
fn folding_and_compact_forms() {
    let text = "OPTIONS sip:pbx SIP/2.0\r\nv: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\nf: <sip:a@b>\r\n ;tag=1\r\nt: <sip:pbx>\r\ni: c1\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";
    let r = request(text.as_bytes());
    assert_eq!(r.from().unwrap().tag.as_deref(), Some("1"));
    assert_eq!(r.call_id().as_deref(), Some("c1"));
}

proptest::proptest! {
    /// Arbitrary bytes never panic the parser or the framer.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
        let _ = parse_datagram(&bytes);
        let _ = frame_stream(&bytes);
    }

    /// Any prefix of a valid message, or one byte changed, never panics.
    #[test]
    fn mutated_messages_never_panic(cut in 0usize..REGISTER.len(), at in 0usize..REGISTER.len(), byte in proptest::num::u8::ANY) {
        let _ = parse_datagram(&REGISTER[..cut]);
        let mut m = REGISTER.to_vec();
        m[at] = byte;
        let _ = parse_datagram(&m);
    }
}

/// A head with a Latin-1 byte is answered 400 (not dropped); `<sip:…>` as Request-URI is 400.
#[test]
fn non_utf8_and_bracketed_uri_get_400() {
    let text = String::from_utf8(REGISTER.to_vec()).unwrap();
    let mut latin1 = text.replace("From: <sip:100", "From: \"M_ller\" <sip:100").into_bytes();
    let at = latin1.iter().position(|b| *b == b'_').unwrap();
    latin1[at] = 0xfc;
    let (code, reason) = rejection(&latin1);
    assert_eq!((code, reason.as_str()), (400, "Header section is not valid UTF-8"));
    assert_eq!(rejection(text.replace("REGISTER sip:pbx.example", "REGISTER <sip:pbx.example>").as_bytes()).0, 400);
}

/// Stamping changes only the top Via and keeps every other Via, in order, also when several
/// share one header line.
#[test]
fn stamping_keeps_the_other_vias_in_order() {
    let text = String::from_utf8(REGISTER.to_vec()).unwrap().replace(
        "Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport\r\n",
        "Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport, SIP/2.0/TCP 10.9.9.9;branch=z9hG4bK-2\r\nVia: SIP/2.0/UDP 10.8.8.8;branch=z9hG4bK-3\r\n",
    );
    let mut r = request(text.as_bytes());
    r.stamp_via_source("203.0.113.9:40000".parse().unwrap());
    let vias: Vec<Via> = r.headers.get_named().unwrap();
    let branches: Vec<String> = vias.iter().map(|v| v.params.get_val("branch").unwrap().to_string()).collect();
    assert_eq!(branches, ["z9hG4bK-1", "z9hG4bK-2", "z9hG4bK-3"]);
    assert_eq!(vias[0].params.get_val("rport").map(|v| v.as_str()), Some("40000"));
    assert!(vias[1].params.get_val("received").is_none());
    assert!(r.to_bytes().starts_with(b"REGISTER sip:pbx.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport=40000;received=203.0.113.9\r\n"), "{}", String::from_utf8_lossy(&r.to_bytes()));
}

/// The typed headers a request keeps say what its raw text says, also after stamping (a lone
/// top Via and a folded one): the printed request parses back to the same values, and its
/// responses go where the request's reply destination says.
#[test]
fn typed_headers_agree_with_the_raw_text() {
    let folded = String::from_utf8(REGISTER.to_vec()).unwrap().replace(
        "Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport\r\n",
        "Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport, SIP/2.0/TCP 10.9.9.9;branch=z9hG4bK-2\r\nExpires: 30\r\nRequire: foo, bar\r\n",
    );
    for text in [REGISTER, folded.as_bytes()] {
        let mut r = request(text);
        let nat: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        r.stamp_via_source(nat);
        let again = request(&r.to_bytes());
        let received = |r: &Request| r.top_via_ref().and_then(|v| v.params.get_val("received")).map(|v| v.to_string());
        assert_eq!(received(&r).as_deref(), Some("203.0.113.9"));
        assert_eq!(received(&r), received(&again));
        assert_eq!(r.branch_str(), again.branch_str());
        assert_eq!(r.call_id_str(), again.call_id_str());
        assert_eq!(r.cseq_ref().map(|c| c.cseq), again.cseq_ref().map(|c| c.cseq));
        assert_eq!(r.from_ref().and_then(|f| f.tag.clone()), again.from_ref().and_then(|f| f.tag.clone()));
        assert_eq!(r.expires(), again.expires());
        assert_eq!(r.required(), again.required());
        let rebuilt = Request::new(r.method.clone(), r.uri.clone(), r.headers.clone(), r.body.clone());
        assert_eq!(rebuilt.required(), r.required());
        assert_eq!(rebuilt.expires(), r.expires());
        assert_eq!(received(&rebuilt), received(&r));
        let response = r.response(200, Some("t"));
        assert_eq!(r.reply_destination("192.0.2.1:1".parse().unwrap(), Transport::Udp), nat);
        assert_eq!(response.udp_destination("192.0.2.1:1".parse().unwrap()), nat);
    }
    assert_eq!(request(folded.as_bytes()).required(), ["foo", "bar"]);
    assert_eq!(request(folded.as_bytes()).expires(), Some(Ok(30)));
    assert!(request(REGISTER).required().is_empty());
}

/// Via stamping that writes the parameters into the raw text says what printing the stamped
/// typed Via says: for each shape (rport asked, not asked, a received of the client's, rport
/// not last, odd spacing) the top Via read back from the printed request equals the typed one.
#[test]
fn stamped_via_text_agrees_with_the_typed_via() {
    let original = "Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport\r\n";
    for via in [
        "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport",
        "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1",
        "SIP/2.0/UDP 10.0.0.5:5062;rport;branch=z9hG4bK-1",
        "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;received=198.51.100.1;rport",
        "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;RPORT",
        "SIP/2.0/UDP   10.0.0.5:5062 ; branch=z9hG4bK-1 ;rport",
        "SIP/2.0/UDP [2001:db8::5]:5062;branch=z9hG4bK-1;rport",
    ] {
        let text = String::from_utf8(REGISTER.to_vec()).unwrap().replace(original, &format!("Via: {via}\r\n"));
        for source in ["203.0.113.9:40000", "[2001:db8::9]:40000"] {
            let mut r = request(text.as_bytes());
            r.stamp_via_source(source.parse().unwrap());
            let again = request(&r.to_bytes());
            let params = |r: &Request| {
                let via = r.top_via_ref().unwrap();
                ["branch", "rport", "received"].map(|p| via.params.get_val(p).map(|v| v.to_string()))
            };
            assert_eq!(params(&r), params(&again), "{via} from {source}");
            let stamped = params(&r);
            assert_eq!(stamped[2].as_deref(), Some(source.parse::<SocketAddr>().unwrap().ip().to_string().as_str()));
            // ezk reads parameter names as written: `RPORT` is not `rport`.
            let asked = via.contains("rport");
            assert_eq!(stamped[1].is_some(), asked, "{via}");
        }
    }
}

/// CSeq and methods read by hand in their common shape equal what ezk's grammar reads, and
/// other shapes still go through it.
#[test]
fn cseq_and_method_shortcuts_agree_with_ezk() {
    for value in ["7 REGISTER", "0 INVITE", "999999999 OPTIONS", "12 FOO", "4294967295 ACK", "3  BYE", "5 register"] {
        let src = Bytes::copy_from_slice(value.as_bytes());
        let text = std::str::from_utf8(&src).unwrap();
        let mut values = Values::default();
        values.push(&BytesStr::from_parse(&src, text));
        let ours = decode_cseq(&values).map(|c| (c.cseq, c.method.to_string()));
        let ezk = decode::<CSeq>(&values).map(|c| (c.cseq, c.method.to_string()));
        assert_eq!(ours, ezk, "{value}");
    }
    for token in ["REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "register", "INVITEX"] {
        let src = Bytes::copy_from_slice(token.as_bytes());
        let text = std::str::from_utf8(&src).unwrap();
        assert_eq!(method_of(&src, text), Method::from_parse(&src, text), "{token}");
    }
}

/// The line splitter the parser uses gives exactly what `split('\n')` gives (with and without
/// the trailing `\r` taken off each piece), on short and long lines, empty pieces and ends.
#[test]
fn lines_split_as_str_split_does() {
    for text in [
        "",
        "\n",
        "a",
        "a\n",
        "\nb",
        "REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4\r\n\r\n",
        "12345678\n12345678901234567\n\n\r\n\r\r\nx",
        "only one very long line without any newline in it at all, longer than eight bytes",
    ] {
        assert_eq!(Lines::new(text, false).collect::<Vec<_>>(), text.split('\n').collect::<Vec<_>>(), "{text:?}");
        let stripped: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
        assert_eq!(Lines::new(text, true).collect::<Vec<_>>(), stripped, "{text:?}");
    }
}

/// The token table holds exactly RFC 3261's token characters (alphanumerics and `-.!%*_+`'~`).
#[test]
fn token_table_is_the_token_rule() {
    for b in 0..=255u8 {
        assert_eq!(TOKEN_BYTES[usize::from(b)], b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b), "{b}");
    }
}

/// The hand-written decimal printers write what `Display` writes, at the edges of their types.
#[test]
fn decimals_print_as_display_does() {
    for n in [0u32, 7, 9, 10, 99, 100, 5060, 65_535, u32::MAX] {
        let mut text = String::from("x");
        super::push_decimal(&mut text, n);
        assert_eq!(text, format!("x{n}"));
    }
    for n in [0usize, 1, 172, 1_000_000, usize::MAX] {
        let mut out = bytes::BytesMut::new();
        super::put_decimal(&mut out, n);
        assert_eq!(&out[..], n.to_string().as_bytes());
    }
}

/// The word-at-a-time byte search finds what a byte-by-byte search finds, from any start.
#[test]
fn find_either_agrees_with_position() {
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = next(40);
        // A small alphabet, with 0x80 and 0xff among it, so matches and near-misses are common.
        let alphabet = [0u8, 1, b'"', b'\\', 0x80, 0xff, b'a'];
        let buf: Vec<u8> = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
        let (a, b) = (alphabet[next(7)], alphabet[next(7)]);
        let from = next(45);
        let want = buf.get(from..).and_then(|rest| rest.iter().position(|&c| c == a || c == b).map(|p| from + p));
        assert_eq!(find_either(&buf, from, a, b), want, "{buf:?} from {from} for {a} {b}");
    }
}

/// The header-store keys the parser's name table carries, worked out at compile time, are the
/// keys the store computes for those names, in every spelling the table takes.
#[test]
fn core_name_keys_are_the_stores() {
    for spelling in [
        "v",
        "F",
        "t",
        "I",
        "l",
        "m",
        "to",
        "VIA",
        "from",
        "CSeq",
        "call-id",
        "Expires",
        "contact",
        "require",
        "User-Agent",
        "max-forwards",
        "Authorization",
        "content-length",
    ] {
        let (name, _, key) = Core::of(spelling).expect("a name in the table");
        assert_eq!(key, Headers::key_of(&name), "{spelling}");
    }
    assert!(Core::of("x-custom").is_none());
    assert_eq!(*reply_keys(), REPLY_NAMES.each_ref().map(Headers::key_of));
}

/// The case-blind substring search answers as comparing every window does.
#[test]
fn contains_ignore_case_agrees_with_windows() {
    let mut next = xorshift(0x1234_5678_9abc_def1);
    let alphabet = b"rRpPoOtT;=eEcCiIvVdD";
    for _ in 0..20_000 {
        let len = next(30);
        let hay: String = (0..len).map(|_| char::from(alphabet[next(alphabet.len())])).collect();
        for needle in ["received", "rport", "r", "Rp"] {
            let want = hay.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()));
            assert_eq!(contains_ignore_case(&hay, needle), want, "{hay:?} {needle:?}");
        }
    }
}

/// A deterministic xorshift generator for the randomised tests here and in `shapes`: each call
/// gives a number below its bound, so a failure repeats.
pub(super) fn xorshift(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |bound| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    }
}

/// `seed` with one to three random edits from `alphabet` (insert, remove or replace a char).
pub(super) fn mutated(seed: &str, alphabet: &[char], next: &mut impl FnMut(usize) -> usize) -> String {
    let mut text: Vec<char> = seed.chars().collect();
    for _ in 0..1 + next(3) {
        let at = next(text.len() + 1);
        match next(3) {
            0 => text.insert(at, alphabet[next(alphabet.len())]),
            1 if at < text.len() => {
                text.remove(at);
            }
            _ if at < text.len() => text[at] = alphabet[next(alphabet.len())],
            _ => {}
        }
    }
    text.into_iter().collect()
}

/// What a request pbx builds and a response keep typed, read by hand where the shape is common,
/// is what ezk decodes from the same headers: top Via, From, To, CSeq and the first Contact, for
/// common values, unusual ones (ezk's path) and comma-folded Vias and Contacts.
#[test]
fn hand_read_core_headers_agree_with_ezk() {
    let vias = [
        "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport",
        "SIP/2.0/TCP pbx.example;branch=z9hG4bK-2",
        "SIP/2.0/UDP [2001:db8::5]:5062;branch=z9hG4bK-3",
        "SIP/2.0/UDP 10.0.0.5:5062;branch=\"z9hG4bK-4\"",
        "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK-5, SIP/2.0/UDP 10.0.0.6;branch=z9hG4bK-6",
    ];
    let name_addrs = [
        "<sip:100@pbx.example>;tag=abc",
        "\"Desk 1\" <sip:101@10.0.0.5:5062;transport=udp>;tag=x-y",
        "Bob <sip:bob@example.com>",
        "sip:carol@example.com;tag=9",
        "\"M\\\"x\" <sip:%61@example.com>;tag=q",
    ];
    let contacts =
        ["<sip:100@10.0.0.5:5062>;expires=60", "<sip:a@1.2.3.4>, <sip:b@5.6.7.8>", "\"D\" <sip:d@[2001:db8::1]>"];
    let cseqs = ["7 INVITE", "4294967295 BYE", " 12  ACK", "1 invite"];
    for (i, via) in vias.iter().enumerate() {
        let from = name_addrs[i % name_addrs.len()];
        let to = name_addrs[(i + 1) % name_addrs.len()];
        let contact = contacts[i % contacts.len()];
        let cseq = cseqs[i % cseqs.len()];
        let mut headers = Headers::new();
        headers.insert(Name::VIA, *via);
        headers.insert(Name::FROM, from);
        headers.insert(Name::TO, to);
        headers.insert(Name::CALL_ID, "c-1");
        headers.insert(Name::CSEQ, cseq);
        headers.insert(Name::CONTACT, contact);
        let ezk_via = headers.get_named::<Vec<Via>>().ok().and_then(|v| v.into_iter().next());
        let ezk_from = headers.get::<FromTo>(Name::FROM).ok();
        let ezk_to = headers.get::<FromTo>(Name::TO).ok();
        let ezk_cseq = headers.get_named::<CSeq>().ok();
        let ezk_contact =
            headers.get_named::<Vec<Contact>>().ok().and_then(|c| c.into_iter().next()).map(|c| c.uri.uri);
        let show = |v: &Option<Via>| v.as_ref().map(|v| format!("{v:?}"));
        let request =
            Request::new(Method::INVITE, parse_sip_uri("sip:101@pbx.example").unwrap(), headers.clone(), Bytes::new());
        assert_eq!(show(&request.top_via()), show(&ezk_via), "{via}");
        assert_eq!(format!("{:?}", request.from()), format!("{ezk_from:?}"), "{from}");
        assert_eq!(format!("{:?}", request.to()), format!("{ezk_to:?}"), "{to}");
        assert_eq!(format!("{:?}", request.cseq()), format!("{ezk_cseq:?}"), "{cseq}");
        assert_eq!(format!("{:?}", first_contact(&headers)), format!("{ezk_contact:?}"), "{contact}");
        let response = Response { code: 200, reason: String::new(), headers, body: Bytes::new() };
        assert_eq!(show(&response.top_via()), show(&ezk_via), "{via}");
        assert_eq!(format!("{:?}", response.to()), format!("{ezk_to:?}"), "{to}");
        assert_eq!(format!("{:?}", response.cseq()), format!("{ezk_cseq:?}"), "{cseq}");
        assert_eq!(format!("{:?}", response.first_contact()), format!("{ezk_contact:?}"), "{contact}");
    }
}

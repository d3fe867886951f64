use super::*;
use crate::sip::message::tests::{mutated, xorshift};
use crate::sip::message::{Values, decode};

/// A value laid out field by field (ezk's `Debug` prints a URI as text, which hides whether a
/// host is an address or a name), so two values compare equal only when every field is.
fn show_uri(uri: &SipUri) -> String {
    let user = match &uri.user_part {
        SipUriUserPart::Empty => "-".to_owned(),
        SipUriUserPart::User(user) => format!("u:{user}"),
        SipUriUserPart::UserPw(pw) => format!("up:{}:{}", pw.user, pw.password),
    };
    format!("{}|{user}|{:?}|{:?}|{:?}", uri.sips, uri.host_port, uri.uri_params, uri.header_params)
}

fn show_via(via: &Via) -> String {
    format!("{}|{:?}|{:?}", via.transport, via.sent_by, via.params)
}

fn show_from_to(value: &FromTo) -> String {
    format!("{:?}|{}|{:?}|{:?}", value.uri.name, show_uri(&value.uri.uri), value.tag, value.params)
}

fn show_contact(value: &Contact) -> String {
    format!("{:?}|{}|{:?}", value.uri.name, show_uri(&value.uri.uri), value.params)
}

fn hand_contact(text: &str) -> Option<Contact> {
    let (src, _) = values(text);
    contact(&src, std::str::from_utf8(&src).expect("utf-8"))
}

/// ezk's reading of one Contact value as `Request::contacts` asked for it: the list of one.
fn ezk_contact(text: &str) -> Option<String> {
    let (_, values) = values(text);
    let list = decode::<Vec<Contact>>(&values)?;
    match list.as_slice() {
        [one] => Some(show_contact(one)),
        _ => None,
    }
}

fn values(text: &str) -> (Bytes, Values) {
    let src = Bytes::copy_from_slice(text.as_bytes());
    let value = BytesStr::from_parse(&src, std::str::from_utf8(&src).expect("utf-8"));
    let mut values = Values::default();
    values.push(&value);
    (src, values)
}

/// What the parser read before the hand readers: ezk's answer for a lone value, as parse_inner
/// used it (the top Via and whether it stood alone; From/To as decoded).
fn ezk_via(text: &str) -> Option<(String, bool)> {
    let (_, values) = values(text);
    let vias = decode::<Vec<Via>>(&values)?;
    Some((show_via(vias.first()?), vias.len() == 1))
}

fn ezk_from_to(text: &str) -> Option<String> {
    let (_, values) = values(text);
    decode::<FromTo>(&values).map(|v| show_from_to(&v))
}

/// The hand readers on a copy of `text` in a buffer of its own, as the parser calls them.
fn hand_via(text: &str) -> Option<Via> {
    let (src, _) = values(text);
    via(&src, std::str::from_utf8(&src).expect("utf-8"))
}

fn hand_from_to(text: &str) -> Option<FromTo> {
    let (src, _) = values(text);
    from_to(&src, std::str::from_utf8(&src).expect("utf-8"))
}

fn hand_uri(text: &str) -> Option<SipUri> {
    let (src, _) = values(text);
    whole_sip_uri(&src, std::str::from_utf8(&src).expect("utf-8"))
}

/// ezk's reading of a whole text as one URI, as the parser asks for a Request-URI.
fn ezk_uri(text: &str) -> Option<String> {
    use ezk_sip_types::parse::Parse;
    let (src, _) = values(text);
    match SipUri::parse(&src)(std::str::from_utf8(&src).expect("utf-8")) {
        Ok(("", uri)) => Some(show_uri(&uri)),
        _ => None,
    }
}

/// Where the hand reader answers, it must answer what ezk does.
fn agree(text: &str) {
    if let Some(mine) = hand_uri(text) {
        assert_eq!(ezk_uri(text), Some(show_uri(&mine)), "URI {text:?}");
    }
    if let Some(mine) = hand_via(text) {
        assert_eq!(ezk_via(text), Some((show_via(&mine), true)), "Via {text:?}");
    }
    if let Some(mine) = hand_contact(text) {
        assert_eq!(ezk_contact(text), Some(show_contact(&mine)), "Contact {text:?}");
    }
    if let Some(mine) = hand_from_to(text) {
        assert_eq!(ezk_from_to(text), Some(show_from_to(&mine)), "From/To {text:?}");
    }
}

const VIAS: &[&str] = &[
    "SIP/2.0/UDP 127.0.0.1:35090;branch=z9hG4bK-1-2-3;rport",
    "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;received=192.0.2.1;rport=5060",
    "SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bKnashds8",
    "SIP/2.0/UDP host.example.com.:5062;branch=z9hG4bK.abc;alias",
    "SIP/2.0/TLS 10.0.0.1;branch=z9hG4bK~x*y(z)'!",
    "SIP/2.0/WSS a-b.c;maddr=239.255.255.1;ttl=16;branch=z9hG4bK1",
    "SIP/2.0/UDP 0.0.0.0:1;branch=1",
];

const FROM_TOS: &[&str] = &[
    "<sip:u10000@pbx.test>;tag=1-2",
    "<sip:u10000@pbx.test>",
    "\"Alice\" <sip:alice@atlanta.example.com>;tag=1928301774",
    "\"Bob Smith\"<sips:bob@192.0.2.4:5061;transport=tls>",
    "Bob <sip:bob@biloxi.example.com;user=phone>;tag=a6c85cf;x=y",
    "Carol Q. Public <sip:+15551234567@example.com>",
    "<sip:example.com>",
    "<sip:192.0.2.1:5060;lr>;tag",
    "<SIP:Alice@Example.COM>;tag=x;tag=y",
    "<sip:a!b~c*d'e(f)&g=h+i$j,k;l?m/n@host>",
    "<sip:@host>",
    "<sip:u10000@127.0.0.1:35090;transport=udp>",
    "<sip:alice@192.0.2.4:5060;ob>;expires=3600;+sip.instance=\"<urn:uuid:1>\"",
    "<sip:alice@192.0.2.4:5060>;q=0.7;expires=60",
];

const URIS: &[&str] = &[
    "sip:pbx.test",
    "sip:u10000@127.0.0.1:35090;transport=udp",
    "sips:alice@atlanta.example.com:5061;maddr=10.0.0.1;lr",
    "sip:192.0.2.1",
    "SIP:+15551234567@gw.example.com;user=phone",
];

// Every common shape takes the hand path, and gives exactly ezk's value.
#[test]
fn common_shapes_are_read_by_hand_as_ezk_reads_them() {
    for text in URIS {
        assert!(hand_uri(text).is_some(), "hand path declined URI {text:?}");
        agree(text);
    }
    for text in VIAS {
        assert!(hand_via(text).is_some(), "hand path declined Via {text:?}");
        agree(text);
    }
    for text in FROM_TOS {
        let quoted_param = text.ends_with('"');
        assert_eq!(hand_from_to(text).is_some(), !quoted_param, "hand path on From/To {text:?}");
        assert_eq!(hand_contact(text).is_some(), !quoted_param, "hand path on Contact {text:?}");
        agree(text);
    }
}

// Shapes the hand readers must leave to ezk (escapes, quoting, IPv6, spaces, leftovers).
#[test]
fn unusual_shapes_are_left_to_ezk() {
    for text in [
        "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1",
        "SIP/2.0/UDP 10.0.0.1:5060 ;branch=z9hG4bK1",
        "SIP / 2.0 / UDP 10.0.0.1;branch=z9hG4bK1",
        "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2",
        "SIP/2.0/UDP 10.0.0.1;branch=\"quoted\"",
        "SIP/2.0/UDP 10.0.0.1;branch=a%20b",
        "SIP/2.0/UDP 010.0.0.1;branch=z9hG4bK1",
        "SIP/2.0/UDP 1.2.3.4.example.com;branch=z9hG4bK1",
        "SIP/2.0/UDP 10.0.0.1:99999;branch=z9hG4bK1",
        "SIP/2.0/UDP 10.0.0.1;branch=",
        "SIP/2.0/UDP h\u{e9}te;branch=1",
    ] {
        assert!(hand_via(text).is_none(), "hand path took Via {text:?}");
    }
    for text in ["sip:a@b?subject=x", "sip:a@b>", "sip:[::1]:5060", "tel:+1555", "sip:a@b;x=1 "] {
        assert!(hand_uri(text).is_none(), "hand path took URI {text:?}");
    }
    for text in [
        "sip:alice@example.com;tag=1",
        "\"A \\\"quoted\\\" name\" <sip:a@b>",
        "\"\" <sip:a@b>",
        "<sip:a%40b@host>",
        "<sip:user:password@host>",
        "<sip:user:pass%41word@host>",
        "<sip:a@b?subject=x>",
        "<sip:a@b> ;tag=1",
        "<tel:+15551234567>;tag=1",
        "<sip:a@b>;tag=1 junk",
        "\u{e9}l\u{e8}ve <sip:a@b>",
    ] {
        assert!(hand_from_to(text).is_none(), "hand path took From/To {text:?}");
    }
}

// Random edits of the common shapes: wherever the hand readers still answer, they answer ezk's
// value (a deterministic generator, so a failure repeats).
#[test]
fn mutated_shapes_agree_with_ezk() {
    const ALPHABET: &[char] = &[
        ';', '=', '<', '>', '"', '@', ':', '%', '.', ' ', '\t', ',', '?', '[', ']', '-', '_', 'a', 'Z', '0', '9', '\\',
        '/', '&', '\u{e9}', '+',
    ];
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let mut answered = 0;
    for round in 0..30_000 {
        let seeds = [VIAS, FROM_TOS, URIS][round % 3];
        let text = mutated(seeds[next(seeds.len())], ALPHABET, &mut next);
        if hand_via(&text).is_some() || hand_from_to(&text).is_some() || hand_uri(&text).is_some() {
            answered += 1;
        }
        if hand_contact(&text).is_some() {
            answered += 1;
        }
        agree(&text);
    }
    // Most edits leave a shape the hand readers still take: the comparison has teeth.
    assert!(answered > 8_000, "only {answered} mutations took the hand path");
}

/// The hand printer of a URI writes exactly what ezk's printer writes: on the common shapes,
/// on unusual ones it must leave to ezk, and on 20,000 random edits of both that ezk reads.
#[test]
fn uris_print_by_hand_as_ezk_prints_them() {
    use crate::sip::message::print_sip_uri;
    use ezk_sip_types::parse::Parse;
    use ezk_sip_types::print::AppendCtx;
    let check = |text: &str| -> bool {
        let (src, _) = values(text);
        let Ok(("", uri)) = SipUri::parse(&src)(std::str::from_utf8(&src).expect("utf-8")) else { return false };
        assert_eq!(print_sip_uri(&uri), uri.default_print_ctx().to_string(), "{text:?}");
        true
    };
    const UNUSUAL: &[&str] = &[
        "sip:%61lice@pbx.test",
        "sip:a%20b@pbx.test;x=%41",
        "sip:alice:secret@pbx.test",
        "sip:alice@[2001:db8::1]:5060;transport=tcp",
        "sip:alice@pbx.test;lr;LR",
        "sip:alice@pbx.test;transport=udp;Transport=tcp",
        "sip:alice@pbx.test?subject=hi&priority=urgent",
        "sip:alice@pbx.test;x=\"quoted\"",
        "sip:alice@pbx.test;ob;x=",
        "sip:+1-555(0)@pbx.test;user=phone",
        "sip:alice@PBX.Test:05060;Method=INVITE",
        "sips:bob@10.0.0.1:1;a=b;c;d=e",
        "sip:al$ice@pbx.test",
        "sip:pbx.test;maddr=239.255.255.1;ttl=15",
    ];
    for text in URIS.iter().chain(UNUSUAL) {
        assert!(check(text), "ezk reads {text:?}");
    }
    for text in URIS {
        let (src, _) = values(text);
        let uri = whole_sip_uri(&src, std::str::from_utf8(&src).expect("utf-8")).expect("a common shape");
        assert!(crate::sip::message::print_plain_sip_uri(&uri).is_some(), "hand printer declined {text:?}");
    }
    const ALPHABET: &[char] =
        &[';', '=', '@', ':', '%', '.', '?', '&', '[', ']', '-', '_', 'a', 'Z', '0', '9', '+', '$', '!', '\'', '"'];
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let seeds: Vec<&str> = URIS.iter().chain(UNUSUAL).copied().collect();
    let mut printed = 0;
    for _ in 0..20_000 {
        if check(&mutated(seeds[next(seeds.len())], ALPHABET, &mut next)) {
            printed += 1;
        }
    }
    // Most edits still read as a URI: the comparison has teeth.
    assert!(printed > 5_000, "only {printed} mutations read as a URI");
}

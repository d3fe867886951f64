//! The leg and call machines on virtual time, with SIP messages as text.

use super::b2bua::{CallSetup, ENDING_BOUND};
use super::*;
use crate::Timestamp;
use crate::cdr::{Disposition, HangupSide};
use crate::media::g711::G711;
use crate::media::relay::Side;
use crate::registrar::{Binding, Route};
use crate::sip::message::{self, Message, Method, Name};
use crate::sip::transaction::{ServerKey, TimerConfig, TransactionInput, TransactionOutput, Transactions};
use crate::sip::{Request, Response, Transport};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

const PHONE: &str = "127.0.0.1:5062";
const PBX: &str = "127.0.0.1:5060";

fn local() -> LocalSip {
    LocalSip { address: PBX.parse().unwrap(), tls: None }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn parse_request(text: &str) -> Request {
    match message::parse_datagram(text.replace('\n', "\r\n").as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

const PCMU_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
const PCMA_ANSWER: &str = "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 41000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
const PCMU_ANSWER: &str = "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 41000 RTP/AVP 0\r\na=sendrecv\r\n";

/// An INVITE from the caller, run through a transaction layer so it carries a server key.
fn invite(body: &str) -> (ServerKey, Request) {
    let content = if body.is_empty() { String::new() } else { "Content-Type: application/sdp\n".into() };
    let text = format!(
        "INVITE sip:101@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-inv1;rport\nMax-Forwards: 70\n\
From: \"Alice\" <sip:100@127.0.0.1>;tag=alice\nTo: <sip:101@127.0.0.1>\nCall-ID: call-1\nCSeq: 1 INVITE\n\
Contact: <sip:100@{PHONE}>\n{content}Content-Length: {}\n\n{body}",
        body.len()
    );
    received(&text)
}

/// A request from the phone as the endpoint hands it on: through a transaction layer, so it
/// carries its server key.
fn received(text: &str) -> (ServerKey, Request) {
    let bytes = text.replace('\n', "\r\n").replace("\r\r\n", "\r\n");
    let mut transactions = Transactions::new(TimerConfig::default());
    let message = message::parse_datagram(bytes.as_bytes()).expect("a valid request");
    transactions.handle(
        Timestamp::ZERO,
        TransactionInput::Received { message, source: PHONE.parse().unwrap(), transport: Transport::Udp },
    );
    while let Some(out) = transactions.poll_output() {
        if let TransactionOutput::Request { key, request, .. } = out {
            return (key, request);
        }
    }
    panic!("the transaction layer passed no request on")
}

fn drain_leg(leg: &mut Leg) -> (Vec<SipOut>, Vec<LegEvent>) {
    let (mut sip, mut events) = (Vec::new(), Vec::new());
    while let Some(out) = leg.poll_output() {
        match out {
            LegOutput::Sip(s) => sip.push(s),
            LegOutput::Event(e) => events.push(e),
        }
    }
    (sip, events)
}

fn sent_text(out: &SipOut) -> String {
    match out {
        SipOut::Request { request, .. } => String::from_utf8_lossy(&request.to_bytes()).into_owned(),
        SipOut::Response { response, .. } => String::from_utf8_lossy(&response.to_bytes()).into_owned(),
    }
}

fn a_leg(id: u128) -> (Leg, ServerKey, Request) {
    let (key, request) = invite(PCMU_OFFER);
    let leg = Leg::uas(
        LegId(id),
        Timestamp::ZERO,
        TimerConfig::default(),
        local(),
        key.clone(),
        request.clone(),
        PHONE.parse().unwrap(),
        Transport::Udp,
    )
    .expect("a usable INVITE");
    (leg, key, request)
}

#[test]
fn leg_ids_survive_tags_and_branches() {
    let leg = LegId(0x0123_4567_89ab_cdef);
    assert_eq!(LegId::from_tag(&leg.tag()), Some(leg));
    assert_eq!(LegId::from_branch(&leg.branch(7)), Some(leg));
    assert!(leg.branch(1).starts_with("z9hG4bK"));
    assert_eq!(LegId::from_tag("alice"), None);
    assert_eq!(LegId::from_branch("z9hG4bK-inv1"), None);
    assert_eq!(LegId::from_branch(&format!("z9hG4bK{}.", leg.tag())), None);
}

/// A-leg: 180, 200 with our tag and Contact, the 2xx retransmitted on T1, 2*T1.. until the ACK,
/// then the caller's BYE is answered 200 and the leg finishes.
#[test]
fn uas_answers_retransmits_until_ack_and_takes_bye() {
    let (mut leg, _, invite) = a_leg(0xa);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Progress { code: 180, sdp: None }));
    let (sip, _) = drain_leg(&mut leg);
    assert!(sent_text(&sip[0]).starts_with("SIP/2.0 180 Ringing"), "{}", sent_text(&sip[0]));
    assert!(sent_text(&sip[0]).contains(&format!("tag={}", LegId(0xa).tag())));

    let answer = Bytes::from_static(PCMU_ANSWER.as_bytes());
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Answer { sdp: Some(answer) }));
    let (sip, _) = drain_leg(&mut leg);
    let ok = sent_text(&sip[0]);
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    assert!(ok.contains("Contact: <sip:pbx@127.0.0.1:5060>"), "{ok}");
    assert!(ok.contains("Content-Type: application/sdp"), "{ok}");

    // Retransmissions at 500 ms and then 1 s later (T1, 2*T1), nothing in between.
    assert_eq!(leg.poll_timeout(), Some(Timestamp::ZERO + ms(500)));
    leg.handle(Timestamp::ZERO + ms(500), LegInput::Timeout);
    let (sip, _) = drain_leg(&mut leg);
    assert_eq!(sip.len(), 1);
    assert!(sent_text(&sip[0]).starts_with("SIP/2.0 200 OK"));
    assert_eq!(leg.poll_timeout(), Some(Timestamp::ZERO + ms(1500)));

    let ack = parse_request(&format!(
        "ACK sip:pbx@{PBX} SIP/2.0\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-ack1\nMax-Forwards: 70\n\
From: <sip:100@127.0.0.1>;tag=alice\nTo: <sip:101@127.0.0.1>;tag={}\nCall-ID: call-1\nCSeq: 1 ACK\nContent-Length: 0\n\n",
        LegId(0xa).tag()
    ));
    leg.handle(Timestamp::ZERO + ms(700), LegInput::Sip(SipIn::Ack { request: ack }));
    let (_, events) = drain_leg(&mut leg);
    assert_eq!(events, vec![LegEvent::Acked { sdp: None }]);
    assert_eq!(leg.poll_timeout(), None, "no retransmission after the ACK");

    let (bye_key, bye) = in_dialog(&invite, "BYE", 2, &LegId(0xa).tag());
    leg.handle(Timestamp::ZERO + ms(900), LegInput::Sip(SipIn::Request { key: bye_key, request: bye }));
    let (sip, events) = drain_leg(&mut leg);
    assert!(sent_text(&sip[0]).starts_with("SIP/2.0 200 OK"));
    assert_eq!(events, vec![LegEvent::Bye, LegEvent::Finished]);
    assert!(leg.is_done());
}

/// An in-dialog request from the caller, with its server key.
fn in_dialog(_invite: &Request, method: &str, cseq: u32, our_tag: &str) -> (ServerKey, Request) {
    let text = format!(
        "{method} sip:pbx@{PBX} SIP/2.0\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-{method}{cseq};rport\nMax-Forwards: 70\n\
From: <sip:100@127.0.0.1>;tag=alice\nTo: <sip:101@127.0.0.1>;tag={our_tag}\nCall-ID: call-1\nCSeq: {cseq} {method}\n\
Content-Length: 0\n\n"
    );
    received(&text)
}

/// RFC 3261 §12.2.2: a request carrying our To tag but another Call-ID or From tag is not of
/// the dialog — 481, and the call goes on; an ACK likewise changes nothing. Only the real
/// caller's BYE ends it.
#[test]
fn strangers_knowing_our_tag_cannot_end_or_ack_the_dialog() {
    let (mut leg, _, invite) = a_leg(0xe1);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Answer { sdp: None }));
    drain_leg(&mut leg);
    let tag = LegId(0xe1).tag();
    for (from_tag, call_id) in [("alice", "call-2"), ("mallory", "call-1"), ("", "call-1")] {
        let from = if from_tag.is_empty() { String::new() } else { format!(";tag={from_tag}") };
        for method in ["BYE", "INVITE", "UPDATE", "ACK"] {
            let text = format!(
                "{method} sip:pbx@{PBX} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.9:5099;branch=z9hG4bK-x{method}{from_tag}{call_id}\n\
Max-Forwards: 70\nFrom: <sip:100@127.0.0.1>{from}\nTo: <sip:101@127.0.0.1>;tag={tag}\nCall-ID: {call_id}\n\
CSeq: 1 {method}\nContent-Length: 0\n\n"
            );
            let input = if method == "ACK" {
                SipIn::Ack { request: parse_request(&text) }
            } else {
                let (key, request) = received(&text);
                SipIn::Request { key, request }
            };
            leg.handle(Timestamp::ZERO + ms(10), LegInput::Sip(input));
            let (sip, events) = drain_leg(&mut leg);
            assert!(events.is_empty(), "{method} from {from_tag}/{call_id}: {events:?}");
            if method != "ACK" {
                assert!(sent_text(&sip[0]).starts_with("SIP/2.0 481"), "{method}: {}", sent_text(&sip[0]));
            }
        }
    }
    assert!(!leg.is_done());
    assert!(leg.poll_timeout().is_some(), "still waiting for the real ACK");
    let (key, bye) = in_dialog(&invite, "BYE", 2, &tag);
    leg.handle(Timestamp::ZERO + ms(20), LegInput::Sip(SipIn::Request { key, request: bye }));
    let (_, events) = drain_leg(&mut leg);
    assert_eq!(events, vec![LegEvent::Bye, LegEvent::Finished]);
}

/// A 200 that is never ACKed: 64*T1 later the leg reports it and sends a BYE.
#[test]
fn uas_without_ack_gives_up_with_bye() {
    let (mut leg, _, _) = a_leg(0xb);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Answer { sdp: None }));
    drain_leg(&mut leg);
    let mut now = Timestamp::ZERO;
    let mut retransmissions = 0;
    while let Some(at) = leg.poll_timeout() {
        now = at;
        leg.handle(now, LegInput::Timeout);
        let (sip, events) = drain_leg(&mut leg);
        if events.contains(&LegEvent::NoAck) {
            assert!(sent_text(&sip[0]).starts_with("BYE sip:100@127.0.0.1:5062 SIP/2.0"), "{}", sent_text(&sip[0]));
            break;
        }
        retransmissions += 1;
        assert!(retransmissions < 20, "bounded");
    }
    assert_eq!(now, Timestamp::ZERO + ms(32_000));
    // 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, ..., 31.5 s: intervals capped at T2 = 4 s.
    assert_eq!(retransmissions, 10);
}

#[test]
fn uas_cancel_gets_487() {
    let (mut leg, _, _) = a_leg(0xc);
    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Cancel));
    let (sip, events) = drain_leg(&mut leg);
    assert!(sent_text(&sip[0]).starts_with("SIP/2.0 487 Request Terminated"), "{}", sent_text(&sip[0]));
    assert_eq!(events, vec![LegEvent::Cancelled, LegEvent::Finished]);
}

fn b_leg(id: u128) -> Leg {
    let from = leg::name_addr(Some("Alice"), message::parse_sip_uri("sip:100@127.0.0.1:5060").unwrap());
    let to = leg::name_addr(None, message::parse_sip_uri("sip:101@127.0.0.1:5060").unwrap());
    Leg::uac(
        LegId(id),
        Timestamp::ZERO,
        TimerConfig::default(),
        local(),
        from,
        to,
        message::parse_sip_uri("sip:101@127.0.0.1:5064").unwrap(),
        "127.0.0.1:5064".parse().unwrap(),
        Transport::Udp,
    )
}

fn request_out(out: &SipOut) -> &Request {
    match out {
        SipOut::Request { request, .. } => request,
        other => panic!("not a request: {other:?}"),
    }
}

/// The callee's response to a request of ours, with its tag.
fn answer_to(request: &Request, code: u16, body: &str) -> Response {
    let mut response = request.response(code, Some("bob"));
    if code > 100 && code < 300 {
        response.headers.insert(Name::CONTACT, "<sip:101@127.0.0.1:5064>");
    }
    if !body.is_empty() {
        response.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        response.body = Bytes::copy_from_slice(body.as_bytes());
    }
    match message::parse_datagram(&response.to_bytes()) {
        Ok(Message::Response(r)) => r,
        other => panic!("not a response: {other:?}"),
    }
}

/// B-leg: INVITE naming the leg in tag and branch, 180 relayed, 200 ACKed, BYE on hang-up.
#[test]
fn uac_invites_acks_and_hangs_up() {
    let mut leg = b_leg(0xd);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Invite { sdp: Some(Bytes::from_static(b"v=0\r\n")) }));
    let (sip, _) = drain_leg(&mut leg);
    let invite = request_out(&sip[0]).clone();
    let text = sent_text(&sip[0]);
    assert!(text.starts_with("INVITE sip:101@127.0.0.1:5064 SIP/2.0"), "{text}");
    assert_eq!(LegId::from_branch(&invite.branch().unwrap()), Some(LegId(0xd)));
    assert_eq!(invite.from().unwrap().tag.unwrap().as_str(), LegId(0xd).tag());
    assert!(text.contains("CSeq: 1 INVITE"), "{text}");
    assert!(text.contains("From: \"Alice\"<sip:100@127.0.0.1>"), "{text}");

    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Response { response: answer_to(&invite, 180, "") }));
    let (_, events) = drain_leg(&mut leg);
    assert_eq!(events, vec![LegEvent::Progress { code: 180, sdp: None }]);

    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Response { response: answer_to(&invite, 200, PCMU_ANSWER) }));
    let (sip, events) = drain_leg(&mut leg);
    let ack = sent_text(&sip[0]);
    assert!(ack.starts_with("ACK sip:101@127.0.0.1:5064 SIP/2.0"), "{ack}");
    assert!(ack.contains("CSeq: 1 ACK") && ack.contains(";tag=bob"), "{ack}");
    assert_eq!(events, vec![LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) }]);

    // A retransmitted 2xx is ACKed again, and tells the call nothing new.
    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Response { response: answer_to(&invite, 200, PCMU_ANSWER) }));
    let (sip, events) = drain_leg(&mut leg);
    assert_eq!(sip.len(), 1);
    assert!(events.is_empty());

    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Hangup));
    let (sip, _) = drain_leg(&mut leg);
    let bye = request_out(&sip[0]).clone();
    assert!(sent_text(&sip[0]).contains("CSeq: 2 BYE"));
    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Response { response: answer_to(&bye, 200, "") }));
    let (_, events) = drain_leg(&mut leg);
    assert_eq!(events, vec![LegEvent::Finished]);
}

/// A response that names our branch but carries another Call-ID (a stranger who guessed or
/// saw the branch) is ignored: a forged 486 does not end a ringing call, a forged 200 answers
/// nothing; once answered, a 2xx with another To tag is not ACKed either.
#[test]
fn uac_ignores_responses_of_another_call_id_or_tag() {
    let mut leg = b_leg(0xe2);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Invite { sdp: None }));
    let (sip, _) = drain_leg(&mut leg);
    let invite = request_out(&sip[0]).clone();
    let forged = |code: u16, call_id: &str, tag: &str| {
        let text = String::from_utf8(answer_to(&invite, code, "").to_bytes().to_vec())
            .unwrap()
            .replace(&format!("Call-ID: {}", invite.call_id().unwrap()), &format!("Call-ID: {call_id}"))
            .replace(";tag=bob", &format!(";tag={tag}"));
        match message::parse_datagram(text.as_bytes()) {
            Ok(Message::Response(r)) => r,
            other => panic!("{other:?}"),
        }
    };
    for code in [180, 486, 200] {
        leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Response { response: forged(code, "evil@x", "bob") }));
        let (sip, events) = drain_leg(&mut leg);
        assert!(sip.is_empty() && events.is_empty(), "{code}: {sip:?} {events:?}");
    }
    assert!(!leg.is_done());
    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Response { response: answer_to(&invite, 200, "") }));
    let (_, events) = drain_leg(&mut leg);
    assert_eq!(events, vec![LegEvent::Answered { sdp: None }]);
    let call_id = invite.call_id().unwrap();
    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Response { response: forged(200, &call_id, "eve") }));
    let (sip, _) = drain_leg(&mut leg);
    assert!(sip.is_empty(), "a 2xx of another dialog is not ACKed: {sip:?}");
}

/// RFC 3261 §9.1: no CANCEL before a provisional response; then one with the INVITE's branch.
/// A 2xx that crosses the CANCEL is ACKed and BYEd, never reported as an answer.
#[test]
fn uac_cancel_waits_for_provisional_and_a_crossing_2xx_is_byed() {
    let mut leg = b_leg(0xe);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Invite { sdp: None }));
    let (sip, _) = drain_leg(&mut leg);
    let invite = request_out(&sip[0]).clone();
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Hangup));
    let (sip, _) = drain_leg(&mut leg);
    assert!(sip.is_empty(), "no CANCEL before a provisional response");

    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Response { response: answer_to(&invite, 100, "") }));
    let (sip, events) = drain_leg(&mut leg);
    let cancel = request_out(&sip[0]);
    assert_eq!(cancel.method, Method::CANCEL);
    assert_eq!(cancel.branch(), invite.branch());
    assert!(events.is_empty());

    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Response { response: answer_to(&invite, 200, PCMU_ANSWER) }));
    let (sip, events) = drain_leg(&mut leg);
    let methods: Vec<Method> = sip.iter().map(|s| request_out(s).method.clone()).collect();
    assert_eq!(methods, vec![Method::ACK, Method::BYE]);
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn uac_failure_and_timeout_finish_the_leg() {
    let mut leg = b_leg(0xf);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Invite { sdp: None }));
    let (sip, _) = drain_leg(&mut leg);
    let invite = request_out(&sip[0]).clone();
    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Response { response: answer_to(&invite, 486, "") }));
    assert_eq!(drain_leg(&mut leg).1, vec![LegEvent::Failed { code: 486 }, LegEvent::Finished]);

    let mut leg = b_leg(0x10);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Invite { sdp: None }));
    drain_leg(&mut leg);
    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Timeout { method: Method::INVITE }));
    assert_eq!(drain_leg(&mut leg).1, vec![LegEvent::Failed { code: 408 }, LegEvent::Finished]);
}

/// A re-INVITE from the far end while one of ours is out is glare: 491 (RFC 3261 §14.2).
#[test]
fn reinvite_glare_is_491() {
    let (mut leg, _, invite) = a_leg(0x11);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Answer { sdp: None }));
    drain_leg(&mut leg);
    let tag = LegId(0x11).tag();
    let ack = parse_request(&format!(
        "ACK sip:pbx@{PBX} SIP/2.0\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-ack2\nMax-Forwards: 70\n\
From: <sip:100@127.0.0.1>;tag=alice\nTo: <sip:101@127.0.0.1>;tag={tag}\nCall-ID: call-1\nCSeq: 1 ACK\nContent-Length: 0\n\n"
    ));
    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Ack { request: ack }));
    drain_leg(&mut leg);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Offer { method: Method::INVITE, sdp: None }));
    let (sip, _) = drain_leg(&mut leg);
    assert_eq!(request_out(&sip[0]).method, Method::INVITE);
    let (key, reinvite) = in_dialog(&invite, "INVITE", 2, &tag);
    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Request { key, request: reinvite }));
    let (sip, events) = drain_leg(&mut leg);
    assert!(sent_text(&sip[0]).starts_with("SIP/2.0 491"), "{}", sent_text(&sip[0]));
    assert!(events.is_empty());
}

// --- the call machine ---

fn binding(contact: &str, port: u16) -> Binding {
    Binding {
        aor: "101".into(),
        contact: contact.into(),
        expires_at: Timestamp::ZERO + Duration::from_secs(3600),
        call_id: "reg".into(),
        cseq: 1,
        source: format!("127.0.0.1:{port}").parse().unwrap(),
        transport: Transport::Udp,
        user_agent: None,
        nat: false,
    }
}

struct Harness {
    call: Call,
    started: Vec<LegId>,
    legs: Vec<Leg>,
    commands: Vec<(LegId, LegCommand)>,
    media: Vec<(Side, crate::media::relay::PeerMedia)>,
    stopped: Vec<LegId>,
    ended: Option<crate::cdr::Cdr>,
    over: bool,
    keys: Vec<(Side, Option<crate::media::SrtpKeys>)>,
    notices: Vec<&'static str>,
    pushes: Vec<(LegId, Binding)>,
    /// Forks that waited for a push and ended without a leg (`ForkGone`).
    gone: Vec<LegId>,
    /// Transfer lookups asked for: (attempt, number, transferee, secure).
    lookups: Vec<(u64, String, String, bool)>,
    /// Records of a transferred call's earlier parts.
    segments: Vec<crate::cdr::Cdr>,
    /// Attended transfers asked for: (attempt, replaces, transferor).
    replaces: Vec<(u64, super::transfer::Replaces, String)>,
    /// Legs handed over to another call.
    handovers: Vec<(LegId, super::b2bua::TakeOver)>,
    /// Park orbits claimed (attempt, orbit), and how often the call left its orbit.
    parks: Vec<(u64, String)>,
    unparked: usize,
}

const A: LegId = LegId(1);
const B1: LegId = LegId(2);
const B2: LegId = LegId(3);

fn call_with(body: &str, forks: usize) -> Harness {
    let contacts: Vec<Binding> =
        (0..forks).map(|n| binding(&format!("sip:101@127.0.0.1:{}", 5064 + n), 5064 + n as u16)).collect();
    call_to(body, contacts)
}

/// The config and set-up of call 7 from the caller (offering `body`) to `contacts`, one fork each.
fn call_setup(body: &str, contacts: Vec<Binding>) -> (CallConfig, CallSetup) {
    let forks = contacts.len();
    let (key, request) = invite(body);
    let setup = CallSetup {
        id: 7,
        start: CallStart {
            a: A,
            key,
            invite: request,
            source: PHONE.parse().unwrap(),
            transport: Transport::Udp,
            route: Route {
                caller: "100".into(),
                caller_display_name: "Alice".into(),
                callee: "101".into(),
                target: "101".into(),
                contacts,
                room: false,
                forwards: Default::default(),
                intercom: false,
                pickup: None,
                replaces: None,
                park: None,
            },
            forks: [B1, B2][..forks].to_vec(),
        },
        media: ["127.0.0.1:20000".parse().unwrap(), "127.0.0.1:20002".parse().unwrap()],
        seed: 42,
        room: None,
        srtp: SrtpSetup { policy: Default::default(), keys: [[7; 30], [9; 30]] },
        push_wait: None,
    };
    let config = CallConfig {
        no_answer: Duration::from_secs(30),
        timers: TimerConfig::default(),
        local_sip: local(),
        bugs: Default::default(),
        park_timeout: Duration::from_secs(45),
    };
    (config, setup)
}

fn call_to(body: &str, contacts: Vec<Binding>) -> Harness {
    let (config, setup) = call_setup(body, contacts);
    harness(config, setup)
}

fn harness(config: CallConfig, setup: CallSetup) -> Harness {
    let mut h = Harness {
        call: Call::new(Timestamp::ZERO, config, setup),
        started: vec![],
        legs: vec![],
        commands: vec![],
        media: vec![],
        stopped: vec![],
        ended: None,
        over: false,
        keys: vec![],
        notices: vec![],
        pushes: vec![],
        gone: vec![],
        lookups: vec![],
        segments: vec![],
        replaces: vec![],
        handovers: vec![],
        parks: vec![],
        unparked: 0,
    };
    h.drain();
    h
}

impl Harness {
    fn drain(&mut self) {
        while let Some(out) = self.call.poll_output() {
            match out {
                CallOutput::StartLeg(leg) => {
                    self.started.push(leg.id());
                    self.legs.push(*leg);
                }
                CallOutput::ToLeg { leg, command } => self.commands.push((leg, command)),
                CallOutput::StopLeg { leg } => self.stopped.push(leg),
                CallOutput::ConfigureMedia { side, peer } => self.media.push((side, peer)),
                CallOutput::Record(cdr) => {
                    assert!(self.ended.is_none(), "one record per call");
                    self.ended = Some(*cdr)
                }
                CallOutput::Over => self.over = true,
                CallOutput::MediaKeys { side, keys } => self.keys.push((side, keys)),
                CallOutput::Notice { message, .. } => self.notices.push(message),
                CallOutput::Push { leg, binding, .. } => self.pushes.push((leg, *binding)),
                CallOutput::ForkGone { leg } => self.gone.push(leg),
                CallOutput::Transfer { attempt, number, transferee, secure } => {
                    self.lookups.push((attempt, number, transferee, secure))
                }
                CallOutput::Segment(cdr) => self.segments.push(*cdr),
                CallOutput::Replace { attempt, replaces, transferor } => {
                    self.replaces.push((attempt, replaces, transferor))
                }
                CallOutput::HandOver { leg, handover } => self.handovers.push((leg, *handover)),
                CallOutput::Park { attempt, orbit } => self.parks.push((attempt, orbit)),
                CallOutput::Unparked => self.unparked += 1,
            }
        }
    }

    fn event(&mut self, at: Duration, leg: LegId, event: LegEvent) {
        self.call.handle(Timestamp::ZERO + at, CallInput::Leg { leg, event });
        self.drain();
    }

    fn take_commands(&mut self) -> Vec<(LegId, LegCommand)> {
        std::mem::take(&mut self.commands)
    }

    fn finish(&mut self, at: Duration, legs: &[LegId]) {
        for leg in legs {
            self.event(at, *leg, LegEvent::Finished);
        }
    }
}

fn sdp_of(command: &LegCommand) -> crate::sdp::Audio {
    let body = match command {
        LegCommand::Invite { sdp } | LegCommand::Answer { sdp } | LegCommand::Offer { sdp, .. } => sdp.clone(),
        LegCommand::Progress { sdp, .. } | LegCommand::AnswerOffer { sdp, .. } => sdp.clone(),
        other => panic!("no SDP in {other:?}"),
    };
    crate::sdp::parse(&body.expect("an SDP body")).unwrap().audio().unwrap()
}

/// Two contacts ring; the second answers with PCMA only, so pbx answers the µ-law caller with
/// PCMU and transcodes; the first is cancelled. The caller hangs up; the CDR says so.
#[test]
fn forked_call_answered_transcoded_and_hung_up_by_caller() {
    let mut h = call_with(PCMU_OFFER, 2);
    assert_eq!(h.started, vec![A, B1, B2]);
    let invites = h.take_commands();
    assert_eq!(invites.len(), 2);
    let offered = sdp_of(&invites[0].1);
    assert_eq!(offered.rtp, Some("127.0.0.1:20002".parse().unwrap()), "the callee sees pbx's B-side port");
    let codecs: Vec<_> = offered.codecs.iter().map(|(_, c)| *c).collect();
    assert_eq!(codecs, vec![crate::sdp::Codec::Pcmu, crate::sdp::Codec::Pcma], "µ-law first, A-law for transcoding");
    assert_eq!(offered.telephone_event, Some(101));

    h.event(ms(100), B1, LegEvent::Progress { code: 180, sdp: None });
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::Progress { code: 180, sdp: None })]));

    h.event(ms(2000), B2, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMA_ANSWER.as_bytes())) });
    let commands = h.take_commands();
    assert!(commands.iter().any(|(leg, c)| *leg == B1 && matches!(c, LegCommand::Hangup)), "{commands:?}");
    let (_, answer) = commands.iter().find(|(leg, _)| *leg == A).expect("the caller is answered");
    let answered = sdp_of(answer);
    assert_eq!(answered.rtp, Some("127.0.0.1:20000".parse().unwrap()));
    assert_eq!(answered.codecs, vec![(0, crate::sdp::Codec::Pcmu)]);
    let sides: Vec<_> = h.media.iter().map(|(side, peer)| (*side, peer.codec.1, peer.rtp)).collect();
    assert!(sides.contains(&(Side::A, G711::Mu, Some("127.0.0.1:40000".parse().unwrap()))), "{sides:?}");
    assert!(sides.contains(&(Side::B, G711::A, Some("127.0.0.1:41000".parse().unwrap()))), "{sides:?}");

    h.event(ms(2100), B1, LegEvent::Failed { code: 487 });
    h.finish(ms(2100), &[B1]);
    assert!(h.ended.is_none() && !h.over);

    h.event(ms(62_000), A, LegEvent::Bye);
    let commands = h.take_commands();
    assert!(matches!(commands[..], [(B2, LegCommand::Hangup)]), "{commands:?}");
    h.finish(ms(62_000), &[A]);
    let cdr = h.ended.clone().expect("a CDR as soon as the call is hung up");
    assert!(!h.over, "the callee's BYE is still out");
    h.finish(ms(62_050), &[B2]);
    assert!(h.over);
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!(cdr.hangup, Some(HangupSide::Caller));
    assert_eq!(cdr.answer, Some(Timestamp::ZERO + ms(2000)));
    assert_eq!(cdr.end, Timestamp::ZERO + ms(62_000));
    assert_eq!(cdr.duration_s(), 60);
    assert_eq!((cdr.codec_caller.as_deref(), cdr.codec_callee.as_deref()), (Some("PCMU"), Some("PCMA")));
    assert_eq!((cdr.caller.as_str(), cdr.callee.as_str(), cdr.call_id.as_str()), ("100", "101", "call-1"));
    let mut stopped = h.stopped.clone();
    stopped.sort();
    assert_eq!(stopped, vec![A, B1, B2]);
}

#[test]
fn no_answer_times_out_with_480() {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    assert_eq!(h.call.poll_timeout(), Some(Timestamp::ZERO + Duration::from_secs(30)));
    h.call.handle(Timestamp::ZERO + Duration::from_secs(30), CallInput::Timeout);
    h.drain();
    let commands = h.take_commands();
    assert!(
        commands.iter().any(|(leg, c)| *leg == A && matches!(c, LegCommand::Reject { code: 480, .. })),
        "{commands:?}"
    );
    assert!(commands.iter().any(|(leg, c)| *leg == B1 && matches!(c, LegCommand::Hangup)), "{commands:?}");
    h.finish(Duration::from_secs(31), &[A, B1]);
    assert_eq!(h.ended.unwrap().disposition, Disposition::NoAnswer);
}

#[test]
fn busy_everywhere_is_486_and_a_6xx_wins() {
    let mut h = call_with(PCMU_OFFER, 2);
    h.take_commands();
    h.event(ms(10), B1, LegEvent::Failed { code: 486 });
    assert!(h.take_commands().is_empty(), "one contact still rings");
    h.event(ms(20), B2, LegEvent::Failed { code: 404 });
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::Reject { code: 486, .. })]));
    h.finish(ms(30), &[B1, B2, A]);
    assert_eq!(h.ended.unwrap().disposition, Disposition::Busy);

    let mut h = call_with(PCMU_OFFER, 2);
    h.take_commands();
    h.event(ms(10), B1, LegEvent::Failed { code: 486 });
    h.event(ms(20), B2, LegEvent::Failed { code: 603 });
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::Reject { code: 603, .. })]));
}

#[test]
fn nothing_acceptable_is_488() {
    let video_only = PCMU_OFFER.replace("m=audio 40000 RTP/AVP 0 101", "m=audio 40000 RTP/AVP 9");
    let mut h = call_with(&video_only, 1);
    assert_eq!(h.started, vec![A], "no callee is rung");
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::Reject { code: 488, .. })]));
    h.finish(ms(1), &[A]);
    assert_eq!(h.ended.unwrap().disposition, Disposition::Rejected { code: 488 });
}

#[test]
fn caller_cancel_cancels_every_fork() {
    let mut h = call_with(PCMU_OFFER, 2);
    h.take_commands();
    h.event(ms(500), A, LegEvent::Cancelled);
    let commands = h.take_commands();
    assert_eq!(commands.iter().filter(|(_, c)| matches!(c, LegCommand::Hangup)).count(), 2, "{commands:?}");
    h.finish(ms(600), &[A, B1, B2]);
    let cdr = h.ended.unwrap();
    assert_eq!(cdr.disposition, Disposition::Cancelled);
    assert_eq!(cdr.hangup, Some(HangupSide::Caller));
}

/// Late offer: the callee gets pbx's own offer, the caller gets pbx's offer in the 200 (the
/// callee's codec first) and answers in the ACK.
#[test]
fn late_offer_answer_in_ack() {
    let mut h = call_with("", 1);
    let invites = h.take_commands();
    let offered = sdp_of(&invites[0].1);
    assert_eq!(offered.codecs.len(), 2);
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMA_ANSWER.as_bytes())) });
    let commands = h.take_commands();
    let (_, answer) = commands.iter().find(|(leg, _)| *leg == A).unwrap();
    let offer_to_caller = sdp_of(answer);
    assert_eq!(offer_to_caller.codecs[0], (8, crate::sdp::Codec::Pcma), "the callee's codec first");
    assert!(h.media.iter().all(|(side, _)| *side == Side::B), "the caller's side waits for its answer");
    let caller_answer = PCMU_ANSWER.replace("41000", "40000");
    h.event(ms(150), A, LegEvent::Acked { sdp: Some(Bytes::from(caller_answer)) });
    let sides: Vec<_> = h.media.iter().map(|(side, peer)| (*side, peer.codec.1)).collect();
    assert_eq!(sides, vec![(Side::B, G711::A), (Side::A, G711::Mu)]);
}

/// Hold: the caller's re-INVITE (sendonly) goes to the callee as pbx's offer, sendonly; the
/// callee's answer (recvonly) comes back to the caller rewritten; resume likewise.
#[test]
fn hold_and_resume_are_relayed() {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    h.take_commands();
    h.event(ms(150), A, LegEvent::Acked { sdp: None });
    let hold = PCMU_OFFER.replace("a=sendrecv", "a=sendonly");
    h.event(ms(5000), A, LegEvent::Offer { method: Method::INVITE, sdp: Some(Bytes::from(hold)) });
    let commands = h.take_commands();
    let [(B1, ref offer @ LegCommand::Offer { .. })] = commands[..] else { panic!("{commands:?}") };
    assert_eq!(sdp_of(offer).direction, crate::sdp::Direction::SendOnly);
    let held = PCMU_ANSWER.replace("a=sendrecv", "a=recvonly");
    h.event(ms(5100), B1, LegEvent::OfferAnswered { code: 200, sdp: Some(Bytes::from(held)) });
    let commands = h.take_commands();
    let [(A, ref answer @ LegCommand::AnswerOffer { code: 200, .. })] = commands[..] else { panic!("{commands:?}") };
    assert_eq!(sdp_of(answer).direction, crate::sdp::Direction::RecvOnly);
    let (side, peer) = h.media.iter().rev().find(|(side, _)| *side == Side::B).unwrap();
    assert!(!peer.sends, "the held callee is not expected to send: {side:?}");

    // Glare inside pbx: the callee re-INVITEs while the caller's offer is out.
    let resume = PCMU_OFFER.to_string();
    h.event(ms(9000), A, LegEvent::Offer { method: Method::INVITE, sdp: Some(Bytes::from(resume)) });
    h.take_commands();
    h.event(
        ms(9001),
        B1,
        LegEvent::Offer { method: Method::INVITE, sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) },
    );
    assert!(matches!(h.take_commands()[..], [(B1, LegCommand::AnswerOffer { code: 491, .. })]));
}

/// A leg whose actor died: the other side is hung up, and the call still ends with a CDR.
#[test]
fn lost_leg_ends_the_call() {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    h.take_commands();
    h.call.handle(Timestamp::ZERO + ms(200), CallInput::LegLost { leg: B1 });
    h.drain();
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::Hangup)]));
    h.finish(ms(300), &[A]);
    let cdr = h.ended.unwrap();
    assert_eq!(cdr.hangup, Some(HangupSide::Pbx), "pbx ended it");
    assert_eq!(cdr.disposition, Disposition::Answered, "it had been answered");
}

/// Legs that never finish cannot hold a call forever.
#[test]
fn ending_is_bounded() {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    h.call.handle(Timestamp::ZERO + ms(200), CallInput::MediaInactive { side: Side::A });
    h.drain();
    assert!(!h.over);
    let deadline = h.call.poll_timeout().unwrap();
    assert_eq!(deadline, Timestamp::ZERO + ms(200) + ENDING_BOUND);
    h.call.handle(deadline, CallInput::Timeout);
    h.drain();
    assert!(h.over, "over at the bound");
    let mut stopped = h.stopped.clone();
    stopped.sort();
    assert_eq!(stopped, vec![A, B1], "every leg stopped");
    let cdr = h.ended.expect("recorded when the RTP timeout hung up");
    assert_eq!(cdr.end, Timestamp::ZERO + ms(200));
    assert_eq!(cdr.hangup, Some(HangupSide::Pbx));
    assert_eq!(cdr.disposition, Disposition::Answered);
}

/// A failure of what the call depends on (its media session, the endpoint) ends an answered
/// call with BYE both sides and a `failed` CDR naming it.
#[test]
fn failure_ends_an_answered_call_as_failed() {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    h.take_commands();
    h.call.handle(Timestamp::ZERO + ms(200), CallInput::Fail { reason: "media session failed".into() });
    h.drain();
    let mut commands = h.take_commands();
    commands.sort_by_key(|(leg, _)| *leg);
    assert!(matches!(commands[..], [(A, LegCommand::Hangup), (B1, LegCommand::Hangup)]), "{commands:?}");
    h.finish(ms(300), &[A, B1]);
    let cdr = h.ended.unwrap();
    assert_eq!(cdr.disposition, Disposition::Failed { reason: "media session failed".into() });
    assert_eq!(cdr.hangup, Some(HangupSide::Pbx));
    assert_eq!(cdr.answer, Some(Timestamp::ZERO + ms(100)), "the answer time is kept");
}

/// The same while ringing: the caller gets 500, the callee's INVITE is cancelled; a second
/// failure changes nothing.
#[test]
fn failure_while_ringing_answers_the_caller_500() {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    h.call.handle(Timestamp::ZERO + ms(200), CallInput::Fail { reason: "SIP endpoint restarted".into() });
    h.drain();
    let mut commands = h.take_commands();
    commands.sort_by_key(|(leg, _)| *leg);
    assert!(
        matches!(commands[..], [(A, LegCommand::Reject { code: 500, .. }), (B1, LegCommand::Hangup)]),
        "{commands:?}"
    );
    h.call.handle(Timestamp::ZERO + ms(250), CallInput::Fail { reason: "again".into() });
    h.drain();
    assert!(h.take_commands().is_empty());
    h.finish(ms(300), &[A, B1]);
    let cdr = h.ended.unwrap();
    assert_eq!(cdr.disposition, Disposition::Failed { reason: "SIP endpoint restarted".into() });
}

/// An answered call: the caller's PCMU offer, the callee's PCMU answer, the caller's ACK.
fn answered_call() -> Harness {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    h.event(ms(150), A, LegEvent::Acked { sdp: None });
    h.take_commands();
    h
}

/// An INVITE whose offer names a multicast or broadcast media address (an authenticated
/// reflector) gets 488 and rings nobody; so does `::`.
#[test]
fn reflector_offer_in_invite_is_488() {
    for address in ["IP4 224.0.0.1", "IP4 255.255.255.255", "IP6 ff0e::1", "IP6 ::"] {
        let offer = PCMU_OFFER.replace("c=IN IP4 127.0.0.1", &format!("c=IN {address}"));
        let mut h = call_with(&offer, 1);
        assert_eq!(h.started, vec![A], "no callee is rung for {address}");
        assert!(matches!(h.take_commands()[..], [(A, LegCommand::Reject { code: 488, .. })]), "{address}");
        assert!(h.media.is_empty(), "the relay learns nothing of it");
        h.finish(ms(1), &[A]);
        assert_eq!(h.ended.unwrap().disposition, Disposition::Rejected { code: 488 });
    }
}

/// A re-INVITE or UPDATE offer with such an address, from either side, gets 488; nothing is
/// relayed and the media stays as it was.
#[test]
fn reflector_offer_in_reinvite_or_update_is_488() {
    let mut h = answered_call();
    let configured = h.media.len();
    let multicast = PCMU_OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 239.1.2.3");
    h.event(ms(1000), A, LegEvent::Offer { method: Method::INVITE, sdp: Some(Bytes::from(multicast)) });
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::AnswerOffer { code: 488, sdp: None })]));
    let broadcast = PCMU_ANSWER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 255.255.255.255");
    h.event(ms(2000), B1, LegEvent::Offer { method: Method::UPDATE, sdp: Some(Bytes::from(broadcast)) });
    assert!(matches!(h.take_commands()[..], [(B1, LegCommand::AnswerOffer { code: 488, sdp: None })]));
    assert_eq!(h.media.len(), configured, "no reconfiguration");
    assert!(h.ended.is_none(), "the call goes on");
}

/// The callee answers with a multicast address: it is ACKed and hung up, the caller gets 488,
/// the CDR says failed, and the relay is never pointed there.
#[test]
fn reflector_answer_fails_the_call() {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    let multicast = PCMU_ANSWER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 224.0.0.251");
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from(multicast)) });
    let commands = h.take_commands();
    assert!(
        commands.iter().any(|(leg, c)| *leg == A && matches!(c, LegCommand::Reject { code: 488, .. })),
        "{commands:?}"
    );
    assert!(commands.iter().any(|(leg, c)| *leg == B1 && matches!(c, LegCommand::Hangup)), "{commands:?}");
    assert!(h.media.is_empty(), "{:?}", h.media);
    h.finish(ms(200), &[A, B1]);
    let cdr = h.ended.unwrap();
    assert!(matches!(cdr.disposition, Disposition::Failed { .. }), "{:?}", cdr.disposition);
    assert_eq!(cdr.hangup, Some(HangupSide::Pbx));

    // The same answer to a relayed re-INVITE gets the offerer 488; the media stays.
    let mut h = answered_call();
    let configured = h.media.len();
    h.event(
        ms(1000),
        A,
        LegEvent::Offer { method: Method::INVITE, sdp: Some(Bytes::from_static(PCMU_OFFER.as_bytes())) },
    );
    h.take_commands();
    let broadcast = PCMU_ANSWER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 255.255.255.255");
    h.event(ms(1100), B1, LegEvent::OfferAnswered { code: 200, sdp: Some(Bytes::from(broadcast)) });
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::AnswerOffer { code: 488, sdp: None })]));
    assert_eq!(h.media.len(), configured);
}

/// The RFC 2543 hold (c=0.0.0.0) is no reflector: the re-INVITE is relayed, and the relay is
/// told the holding side has no address (it sends it nothing).
#[test]
fn hold_by_zero_address_is_relayed() {
    let mut h = answered_call();
    let hold = PCMU_OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0").replace("a=sendrecv", "a=sendonly");
    h.event(ms(1000), A, LegEvent::Offer { method: Method::INVITE, sdp: Some(Bytes::from(hold)) });
    let commands = h.take_commands();
    let [(B1, ref offer @ LegCommand::Offer { .. })] = commands[..] else { panic!("{commands:?}") };
    assert_eq!(sdp_of(offer).rtp, Some("127.0.0.1:20002".parse().unwrap()), "pbx offers its own address");
    let held = PCMU_ANSWER.replace("a=sendrecv", "a=recvonly");
    h.event(ms(1100), B1, LegEvent::OfferAnswered { code: 200, sdp: Some(Bytes::from(held)) });
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::AnswerOffer { code: 200, .. })]));
    let (_, caller) = h.media.iter().rev().find(|(side, _)| *side == Side::A).unwrap();
    assert_eq!((caller.rtp, caller.sends), (None, false), "{caller:?}");
}

/// An early answer (183 with SDP) configures the relay, and the 200 configures it again with
/// the same media, so source learning starts afresh when the phones start sending.
#[test]
fn early_answer_is_reapplied_at_the_answer() {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    h.event(ms(100), B1, LegEvent::Progress { code: 183, sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    let early = h.media.clone();
    assert_eq!(early.len(), 2, "both sides configured by the early answer");
    h.event(ms(30_000), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    assert_eq!(h.media.len(), 4, "{:?}", h.media);
    let mut again = h.media[2..].to_vec();
    let mut first = early;
    again.sort_by_key(|(side, _)| side.index());
    first.sort_by_key(|(side, _)| side.index());
    assert_eq!(again, first);
}

/// Where each B-leg's INVITE is sent, leg by leg.
fn invite_destinations(h: &mut Harness) -> Vec<SocketAddr> {
    let commands = h.take_commands();
    let mut to = Vec::new();
    for leg in h.legs.iter_mut().filter(|l| l.id() != A) {
        let (_, command) = commands.iter().find(|(id, _)| *id == leg.id()).expect("an INVITE command per B-leg");
        leg.handle(Timestamp::ZERO, LegInput::Command(command.clone()));
        let (sip, _) = drain_leg(leg);
        match &sip[0] {
            SipOut::Request { request, destination, .. } if request.method == Method::INVITE => to.push(*destination),
            other => panic!("not an INVITE: {other:?}"),
        }
    }
    to
}

/// A B-leg's INVITE goes to the Contact when it names another port than the REGISTER came from
/// (a REGISTER sent on behalf of a device), and to the source when the binding is flagged NAT
/// (a private Contact, or a Via that did not name the source) or the Contact is a name.
#[test]
fn b_leg_invites_the_contact_unless_nat() {
    let on_behalf = Binding { source: "127.0.0.1:40000".parse().unwrap(), ..binding("sip:101@127.0.0.1:5070", 0) };
    let natted =
        Binding { source: "127.0.0.1:40002".parse().unwrap(), nat: true, ..binding("sip:101@192.168.1.20:5060", 0) };
    let symmetric =
        Binding { source: "127.0.0.1:40006".parse().unwrap(), nat: true, ..binding("sip:101@127.0.0.1:5072", 0) };
    let named = Binding { source: "127.0.0.1:40004".parse().unwrap(), ..binding("sip:101@phone.example:5060", 0) };
    let mut h = call_to(PCMU_OFFER, vec![on_behalf, natted]);
    assert_eq!(invite_destinations(&mut h), ["127.0.0.1:5070".parse().unwrap(), "127.0.0.1:40002".parse().unwrap()]);
    let mut h = call_to(PCMU_OFFER, vec![symmetric, named]);
    assert_eq!(invite_destinations(&mut h), ["127.0.0.1:40006".parse().unwrap(), "127.0.0.1:40004".parse().unwrap()]);
}

/// A [`CallCore`] for a call from the caller to `forks` contacts, and what it said at once.
fn core_with(forks: usize) -> (CallCore, Vec<CoreOutput>) {
    let contacts: Vec<Binding> =
        (0..forks).map(|n| binding(&format!("sip:101@127.0.0.1:{}", 5064 + n), 5064 + n as u16)).collect();
    let (config, setup) = call_setup(PCMU_OFFER, contacts);
    let mut core = CallCore::new(Timestamp::ZERO, config, setup, core::Legs::new());
    let outputs = core_outputs(&mut core);
    (core, outputs)
}

fn core_outputs(core: &mut CallCore) -> Vec<CoreOutput> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

/// The SIP the core sent for `leg`, as text.
fn core_sip(outputs: &[CoreOutput], leg: LegId) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            CoreOutput::Sip(l, out) if *l == leg => Some(sent_text(out)),
            _ => None,
        })
        .collect()
}

/// CallCore starts the legs (up before their SIP is routed back) and the callee's INVITE goes
/// out; its 200 is looped back into the call in the same step: the callee is ACKed, the caller
/// answered 200 and the media set, with no driver in between.
#[test]
fn core_loops_a_legs_events_back_into_the_call_at_once() {
    let (mut core, outputs) = core_with(1);
    let ups: Vec<LegId> =
        outputs.iter().filter_map(|o| if let CoreOutput::LegUp(l) = o { Some(*l) } else { None }).collect();
    assert_eq!(ups, vec![A, B1]);
    let invite = outputs
        .iter()
        .find_map(|o| match o {
            CoreOutput::Sip(B1, out) => Some(request_out(out).clone()),
            _ => None,
        })
        .expect("the callee is invited");
    assert_eq!(invite.method, Method::INVITE);
    assert!(core_sip(&outputs, A).is_empty(), "{:?}", core_sip(&outputs, A));

    let ok = answer_to(&invite, 200, PCMU_ANSWER);
    core.handle(Timestamp::ZERO + ms(100), CoreInput::Sip(B1, SipIn::Response { response: ok }));
    let outputs = core_outputs(&mut core);
    let to_callee = core_sip(&outputs, B1);
    assert!(to_callee.iter().any(|s| s.starts_with("ACK ")), "{to_callee:?}");
    let to_caller = core_sip(&outputs, A);
    assert!(to_caller.iter().any(|s| s.starts_with("SIP/2.0 200 OK")), "{to_caller:?}");
    assert!(outputs.iter().any(|o| matches!(o, CoreOutput::ConfigureMedia { side: Side::A, .. })));
    assert_eq!(core.call().state(), "answered");
}

/// CallCore's timeout is the earliest of the call's and its legs': the no-answer deadline while
/// ringing, the caller's 2xx retransmission once answered; a timeout feeds the leg that is due.
#[test]
fn core_timeout_is_the_earliest_of_call_and_legs() {
    let (mut core, outputs) = core_with(1);
    assert_eq!(core.poll_timeout(), Some(Timestamp::ZERO + Duration::from_secs(30)));
    let invite = outputs
        .iter()
        .find_map(|o| match o {
            CoreOutput::Sip(B1, out) => Some(request_out(out).clone()),
            _ => None,
        })
        .unwrap();
    core.handle(
        Timestamp::ZERO,
        CoreInput::Sip(B1, SipIn::Response { response: answer_to(&invite, 200, PCMU_ANSWER) }),
    );
    core_outputs(&mut core);
    assert_eq!(core.poll_timeout(), Some(Timestamp::ZERO + ms(500)), "the caller's 200 waits for its ACK");
    core.handle(Timestamp::ZERO + ms(500), CoreInput::Timeout);
    let again = core_sip(&core_outputs(&mut core), A);
    assert!(again.len() == 1 && again[0].starts_with("SIP/2.0 200 OK"), "{again:?}");
}

// --- calls to a conference room ---

fn room_call(body: &str, answer: crate::call::RoomAnswer) -> Harness {
    let (config, mut setup) = call_setup(body, vec![]);
    setup.start.route.room = true;
    setup.start.route.callee = "800".into();
    setup.media = ["127.0.0.1:20000".parse().unwrap(); 2];
    setup.room = Some(answer);
    harness(config, setup)
}

/// A call to a room is answered by pbx at once with the room's port and the caller's codec;
/// the room's media learns the caller's; pbx hanging up (a kick) keeps the CDR `answered`.
#[test]
fn a_room_answers_the_caller_itself_and_may_hang_up() {
    let mut h = room_call(PCMU_OFFER, crate::call::RoomAnswer::Admitted);
    assert_eq!(h.started, vec![A], "no B-legs");
    let commands = h.take_commands();
    let [(A, answer @ LegCommand::Answer { .. })] = &commands[..] else { panic!("{commands:?}") };
    let answered = sdp_of(answer);
    assert_eq!(answered.rtp, Some("127.0.0.1:20000".parse().unwrap()));
    assert_eq!(answered.codecs, vec![(0, crate::sdp::Codec::Pcmu)]);
    assert_eq!(h.media.len(), 1);
    assert_eq!((h.media[0].0, h.media[0].1.codec.1), (Side::A, G711::Mu));
    assert_eq!(h.call.poll_timeout(), None, "no ringing timeout");
    // A re-INVITE (hold) is answered by pbx, not relayed.
    h.event(
        ms(1000),
        A,
        LegEvent::Offer { method: Method::INVITE, sdp: Some(Bytes::from_static(PCMU_OFFER.as_bytes())) },
    );
    let commands = h.take_commands();
    assert!(matches!(&commands[..], [(A, LegCommand::AnswerOffer { code: 200, sdp: Some(_) })]), "{commands:?}");
    h.call.handle(Timestamp::ZERO + ms(5000), CallInput::Hangup);
    h.drain();
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::Hangup)]));
    let cdr = h.ended.clone().expect("recorded as the call ends");
    assert_eq!((cdr.disposition, cdr.hangup), (Disposition::Answered, Some(HangupSide::Pbx)));
    assert_eq!(cdr.callee, "800");
    h.finish(ms(5100), &[A]);
    assert!(h.over);
}

/// A room's refusal reaches the caller with its code and reason phrase; nothing is answered.
#[test]
fn a_refused_room_call_gets_the_rooms_code_and_reason() {
    let refused = crate::call::RoomAnswer::Refused { code: 403, reason: "Licence: conferences not licensed".into() };
    let mut h = room_call(PCMU_OFFER, refused);
    let commands = h.take_commands();
    let [(A, LegCommand::Reject { code: 403, reason: Some(reason) })] = &commands[..] else { panic!("{commands:?}") };
    assert_eq!(reason, "Licence: conferences not licensed");
    assert!(h.media.is_empty());
    assert_eq!(h.ended.clone().unwrap().disposition, Disposition::Rejected { code: 403 });
}

/// A late offer to a room: pbx offers PCMU, PCMA and telephone-event in its 200, and the
/// caller's answer in the ACK configures the room's side.
#[test]
fn a_late_offer_to_a_room_is_answered_with_pbx_s_offer() {
    let mut h = room_call("", crate::call::RoomAnswer::Admitted);
    let commands = h.take_commands();
    let [(A, offer @ LegCommand::Answer { .. })] = &commands[..] else { panic!("{commands:?}") };
    let offered = sdp_of(offer);
    assert_eq!(offered.codecs.len(), 2);
    assert_eq!(offered.telephone_event, Some(101));
    assert!(h.media.is_empty());
    h.event(ms(100), A, LegEvent::Acked { sdp: Some(Bytes::from_static(PCMA_ANSWER.as_bytes())) });
    assert_eq!((h.media[0].0, h.media[0].1.codec.1), (Side::A, G711::A));
}

// --- SRTP by SDES ---

/// A 30-byte key||salt as SDES writes it.
fn inline(byte: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([byte; 30])
}

fn secure_offer(proto: &str, crypto: &str) -> String {
    PCMU_OFFER.replace("m=audio 40000 RTP/AVP 0 101", &format!("m=audio 40000 {proto} 0 101")) + crypto
}

/// A call whose caller came over `transport`, with these policies and contacts.
fn call_over(body: &str, contacts: Vec<Binding>, transport: Transport, policy: [MediaEncryption; 2]) -> Harness {
    let (config, mut setup) = call_setup(body, contacts);
    setup.start.transport = transport;
    setup.srtp.policy = policy;
    harness(config, setup)
}

fn tls_binding(contact: &str, port: u16) -> Binding {
    Binding { transport: Transport::Tls, ..binding(contact, port) }
}

fn sdp_text(command: &LegCommand) -> String {
    match command {
        LegCommand::Invite { sdp } | LegCommand::Answer { sdp } | LegCommand::Offer { sdp, .. } => {
            String::from_utf8_lossy(sdp.as_deref().unwrap_or_default()).into_owned()
        }
        other => panic!("no SDP in {other:?}"),
    }
}

fn rejected(h: &mut Harness) -> (u16, Option<String>) {
    let commands = h.take_commands();
    match &commands[..] {
        [(A, LegCommand::Reject { code, reason })] => (*code, reason.clone()),
        other => panic!("expected one rejection of the caller, got {other:?}"),
    }
}

/// A caller on TLS offering RTP/SAVP with an AES_CM_128_HMAC_SHA1_32 key, a callee on UDP:
/// the callee gets plain RTP/AVP without any key; the caller's answer is RTP/SAVP with a key of
/// pbx's own of the same suite and the offered tag; the media session gets the caller's key to
/// decrypt with and pbx's to encrypt with, for side A only.
#[test]
fn a_tls_caller_gets_srtp_and_a_udp_callee_plain_rtp() {
    let crypto = format!(
        "a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{}\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{}|2^31\r\n",
        inline(0),
        inline(3)
    );
    let offer = secure_offer("RTP/SAVP", &crypto);
    let mut h = call_over(&offer, vec![binding("sip:101@127.0.0.1:5064", 5064)], Transport::Tls, Default::default());
    let invites = h.take_commands();
    let to_callee = sdp_text(&invites[0].1);
    assert!(to_callee.contains("RTP/AVP") && !to_callee.contains("crypto"), "{to_callee}");
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    let commands = h.take_commands();
    let (_, answer) = commands.iter().find(|(leg, _)| *leg == A).expect("the caller is answered");
    let answer = sdp_text(answer);
    assert!(answer.contains("m=audio 20000 RTP/SAVP 0"), "{answer}");
    let line = answer.lines().find(|l| l.starts_with("a=crypto:")).expect("pbx's key");
    assert!(line.starts_with("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"), "{line}");
    assert!(!line.contains(&inline(3)), "pbx never answers with the offerer's key");
    let ours = crate::sdp::crypto::parse(line).unwrap().unwrap().key;
    assert_eq!(ours.key_salt(), &[7u8; 30], "pbx's A-side key is made of the setup's bytes for side A");
    assert_eq!(h.keys.len(), 1, "{:?}", h.keys);
    let (side, keys) = &h.keys[0];
    let keys = keys.as_ref().expect("SRTP on side A");
    assert_eq!(*side, Side::A);
    assert_eq!(keys.remote.key_salt(), &[3u8; 30], "the caller's key decrypts what it sends");
    assert_eq!(keys.local, ours, "pbx's answered key encrypts what it sends the caller");
    let keys_at = h.media.iter().position(|(side, _)| *side == Side::A);
    assert!(keys_at.is_some(), "side A configured after its keys");
}

/// Keys never travel over UDP: an `a=crypto` in RTP/AVP from a UDP caller is ignored (plain
/// answer, a notice), RTP/SAVP from it gets 488; a malformed key over TLS gets 488 naming the
/// length; policy `off` refuses RTP/SAVP and `required` refuses a caller without SRTP.
#[test]
fn srtp_offers_pbx_must_refuse_or_ignore() {
    let crypto = format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n", inline(3));
    let contacts = || vec![binding("sip:101@127.0.0.1:5064", 5064)];
    let optional = [MediaEncryption::Optional; 2];

    let mut h = call_over(&secure_offer("RTP/AVP", &crypto), contacts(), Transport::Udp, optional);
    let invites = h.take_commands();
    assert_eq!(invites.len(), 1, "the call goes on, plain");
    assert_eq!(h.notices.len(), 1, "{:?}", h.notices);
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    let commands = h.take_commands();
    let (_, answer) = commands.iter().find(|(leg, _)| *leg == A).expect("answered");
    assert!(!sdp_text(answer).contains("crypto"), "no key over UDP: {}", sdp_text(answer));
    assert!(h.keys.is_empty());

    let mut h = call_over(&secure_offer("RTP/SAVP", &crypto), contacts(), Transport::Udp, optional);
    let (code, reason) = rejected(&mut h);
    assert_eq!(code, 488);
    assert!(reason.unwrap().contains("TLS"));

    let short = format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n", &inline(3)[..39]);
    let mut h = call_over(&secure_offer("RTP/SAVP", &short), contacts(), Transport::Tls, optional);
    let (code, reason) = rejected(&mut h);
    assert_eq!(code, 488);
    let reason = reason.expect("a reason");
    assert!(reason.contains("29 bytes, 30 expected"), "{reason}");

    let off = [MediaEncryption::Off, MediaEncryption::Optional];
    let mut h = call_over(&secure_offer("RTP/SAVP", &crypto), contacts(), Transport::Tls, off);
    assert_eq!(rejected(&mut h).0, 488);

    let required = [MediaEncryption::Required, MediaEncryption::Optional];
    let mut h = call_over(PCMU_OFFER, contacts(), Transport::Tls, required);
    assert_eq!(rejected(&mut h).0, 488, "no a=crypto from a caller that must have SRTP");
    let mut h = call_over(&secure_offer("RTP/AVP", &crypto), contacts(), Transport::Udp, required);
    assert_eq!(rejected(&mut h).0, 488, "a caller that must have SRTP is not on TLS");
}

/// A callee with one contact on TLS and one on UDP: the TLS one is offered pbx's key (RTP/AVP,
/// SRTP optional), the UDP one the same SDP without it; when the TLS one answers with its key,
/// side B speaks SRTP. With policy `required`, the UDP contact is not called at all, and a
/// callee with only UDP contacts makes the call fail with 488.
#[test]
fn a_callee_on_tls_is_offered_a_key_and_others_are_not() {
    let contacts =
        || vec![tls_binding("sip:101@127.0.0.1:5064;transport=tls", 5064), binding("sip:101@127.0.0.1:5066", 5066)];
    let mut h = call_over(PCMU_OFFER, contacts(), Transport::Udp, Default::default());
    let invites = h.take_commands();
    let (secure, plain) = (sdp_text(&invites[0].1), sdp_text(&invites[1].1));
    assert!(secure.contains("RTP/AVP") && secure.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"), "{secure}");
    assert!(!plain.contains("crypto"), "{plain}");
    let answer = PCMU_ANSWER.to_string() + &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n", inline(5));
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from(answer)) });
    let (side, keys) = h.keys.last().cloned().expect("keys for side B");
    assert_eq!(side, Side::B);
    let keys = keys.expect("SRTP on side B");
    assert_eq!((keys.remote.key_salt(), keys.local.key_salt()), (&[5u8; 30], &[9u8; 30]));
    let to_caller = h.take_commands().into_iter().find(|(leg, _)| *leg == A).expect("answered").1;
    assert!(!sdp_text(&to_caller).contains("crypto"), "the caller's leg stays plain");

    let required = [MediaEncryption::Optional, MediaEncryption::Required];
    let mut h = call_over(PCMU_OFFER, contacts(), Transport::Udp, required);
    let invites = h.take_commands();
    assert_eq!(invites.len(), 1, "only the TLS contact is called: {invites:?}");
    assert!(sdp_text(&invites[0].1).contains("m=audio 20002 RTP/SAVP"), "{}", sdp_text(&invites[0].1));

    let mut h = call_over(PCMU_OFFER, vec![binding("sip:101@127.0.0.1:5066", 5066)], Transport::Udp, required);
    assert_eq!(rejected(&mut h).0, 488);
}

// --- push (RFC 8599) ---

const PUSH_WAIT: Duration = Duration::from_secs(20);

fn pushed_binding(port: u16) -> Binding {
    binding(&format!("sip:101@127.0.0.1:{port};pn-provider=fcm;pn-param=proj;pn-prid=tok-1"), port)
}

fn call_pushing(contacts: Vec<Binding>) -> Harness {
    let (config, mut setup) = call_setup(PCMU_OFFER, contacts);
    setup.push_wait = Some(PUSH_WAIT);
    harness(config, setup)
}

/// A contact with push parameters is not sent an INVITE: the call asks for a push and waits.
/// When the phone registers (from a new port), the INVITE goes there and the call proceeds; the
/// plain contact rang meanwhile and is cancelled when the woken one answers.
#[test]
fn a_pushed_phone_is_called_when_it_registers() {
    let mut h = call_pushing(vec![pushed_binding(5064), binding("sip:101@127.0.0.1:5066", 5066)]);
    assert_eq!(h.started, vec![A, B2], "only the plain contact rings at once");
    assert_eq!(h.pushes.len(), 1);
    assert_eq!(h.pushes[0].0, B1);
    assert_eq!(h.call.poll_timeout(), Some(Timestamp::ZERO + PUSH_WAIT), "the push timer comes first");
    h.take_commands();
    let woken = pushed_binding(5070);
    h.call.handle(Timestamp::ZERO + ms(900), CallInput::Woken { leg: B1, binding: Box::new(woken) });
    h.drain();
    assert_eq!(h.started, vec![A, B2, B1]);
    let invite = h.take_commands();
    assert!(matches!(invite[..], [(B1, LegCommand::Invite { .. })]), "{invite:?}");
    let leg = h.legs.iter().find(|l| l.id() == B1).expect("B1 started");
    assert_eq!(leg.destination(), "127.0.0.1:5070".parse().unwrap(), "called where it registered now");
    h.event(ms(1500), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    let commands = h.take_commands();
    assert!(commands.iter().any(|(leg, c)| *leg == B2 && matches!(c, LegCommand::Hangup)), "{commands:?}");
    assert!(commands.iter().any(|(leg, c)| *leg == A && matches!(c, LegCommand::Answer { .. })), "{commands:?}");
    assert_eq!(h.call.poll_timeout(), None, "no push timer once answered");
    assert!(h.gone.is_empty(), "the woken fork got its leg");
}

/// A fork still waiting for its push when another answers, or when the caller gives up, is
/// reported gone once (it never had a leg to stop).
#[test]
fn a_fork_still_waiting_when_the_call_moves_on_is_reported_gone() {
    let mut h = call_pushing(vec![pushed_binding(5064), binding("sip:101@127.0.0.1:5066", 5066)]);
    h.take_commands();
    h.event(ms(500), B2, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    assert_eq!(h.gone, [B1], "answered elsewhere");
    h.call.handle(Timestamp::ZERO + ms(900), CallInput::Woken { leg: B1, binding: Box::new(pushed_binding(5070)) });
    h.drain();
    assert_eq!(h.gone, [B1], "once");
    assert_eq!(h.started, vec![A, B2]);
}

/// No fork waits past its push timer: the caller gets 480 then (and not before), and a refused
/// push ends the wait at once.
#[test]
fn a_pushed_phone_that_never_registers_ends_in_480_at_the_timer() {
    let mut h = call_pushing(vec![pushed_binding(5064)]);
    assert_eq!(h.started, vec![A]);
    assert!(h.take_commands().is_empty(), "the caller waits");
    h.call.handle(Timestamp::ZERO + PUSH_WAIT - ms(1), CallInput::Timeout);
    h.drain();
    assert!(h.take_commands().is_empty(), "not before the timer");
    assert!(h.gone.is_empty());
    h.call.handle(Timestamp::ZERO + PUSH_WAIT, CallInput::Timeout);
    h.drain();
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::Reject { code: 480, .. })]));
    assert_eq!(h.gone, [B1], "the endpoint, which routed the fork, is told it is gone");
    h.call.handle(
        Timestamp::ZERO + PUSH_WAIT + ms(10),
        CallInput::Woken { leg: B1, binding: Box::new(pushed_binding(5070)) },
    );
    h.drain();
    assert_eq!(h.started, vec![A], "too late: nothing is started");

    let mut h = call_pushing(vec![pushed_binding(5064)]);
    h.call.handle(Timestamp::ZERO + ms(300), CallInput::PushFailed { leg: B1 });
    h.drain();
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::Reject { code: 480, .. })]));
    assert_eq!(h.gone, [B1]);
    h.finish(ms(400), &[A]);
    assert!(h.over, "no leg is left waiting");
}

/// Without push (not configured or not licensed) such a contact is called like any other.
#[test]
fn without_push_a_pushed_contact_is_called_at_once() {
    let mut h = call_to(PCMU_OFFER, vec![pushed_binding(5064)]);
    assert_eq!(h.started, vec![A, B1]);
    assert!(h.pushes.is_empty());
    assert!(matches!(h.take_commands()[..], [(B1, LegCommand::Invite { .. })]));
}

// ---- forwarding (issue 18) ----

const B3: LegId = LegId(4);
const B4: LegId = LegId(5);

/// Call 7 to 101's one phone (B1), 101 forwarding on busy to 102 (B3) and, after 20 s without
/// an answer, to 103 (B4).
fn forwarded_call() -> Harness {
    let (config, mut setup) = call_setup(PCMU_OFFER, vec![binding("sip:101@127.0.0.1:5064", 5064)]);
    let phone =
        |aor: &str, port: u16| Binding { aor: aor.into(), ..binding(&format!("sip:{aor}@127.0.0.1:{port}"), port) };
    setup.start.route.forwards = crate::registrar::Forwards {
        busy: Some(crate::registrar::Forward { target: "102".into(), contacts: vec![phone("102", 5070)] }),
        no_answer: vec![(
            Duration::from_secs(20),
            crate::registrar::Forward { target: "103".into(), contacts: vec![phone("103", 5080)] },
        )],
        busy_moves_on: false,
    };
    setup.start.forks = vec![B1, B3, B4];
    harness(config, setup)
}

fn invited(h: &mut Harness, leg: LegId) -> bool {
    h.take_commands().iter().any(|(l, c)| *l == leg && matches!(c, LegCommand::Invite { .. }))
}

/// Only the dialled extension's phone rings at first; busy → the busy forward rings (To: 102),
/// the no-answer forward's leg is dropped, the caller never hears the 486; the forward's answer
/// connects the call, whose record still names the number dialled.
#[test]
fn busy_phones_forward_the_call_and_the_caller_never_hears_busy() {
    let mut h = forwarded_call();
    assert_eq!(h.started, vec![A, B1]);
    assert!(invited(&mut h, B1));
    h.event(ms(500), B1, LegEvent::Failed { code: 486 });
    assert!(invited(&mut h, B3), "the busy forward rings");
    assert_eq!(h.started, vec![A, B1, B3]);
    assert_eq!(h.gone, vec![B4], "the no-answer forward is not taken");
    let leg = h.legs.iter_mut().find(|l| l.id() == B3).expect("B3 started");
    leg.handle(Timestamp::ZERO + ms(500), LegInput::Command(LegCommand::Invite { sdp: None }));
    let (sip, _) = drain_leg(leg);
    let text = sent_text(&sip[0]);
    assert!(text.starts_with("INVITE sip:102@127.0.0.1:5070 SIP/2.0\r\n"), "{text}");
    assert!(text.contains("\r\nTo: <sip:102@127.0.0.1>\r\n"), "the forward's INVITE is to 102: {text}");
    h.event(ms(900), B3, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    let commands = h.take_commands();
    assert!(commands.iter().any(|(l, c)| *l == A && matches!(c, LegCommand::Answer { .. })), "{commands:?}");
    assert!(!commands.iter().any(|(l, c)| *l == A && matches!(c, LegCommand::Reject { .. })));
    h.event(ms(5_000), A, LegEvent::Bye);
    let cdr = h.ended.clone().expect("a record");
    assert_eq!((cdr.callee.as_str(), cdr.disposition.clone()), ("101", Disposition::Answered));
}

/// Nobody answers within the forward's 20 s: the phone is cancelled, the no-answer forward
/// rings with a fresh no-answer bound, and the cancelled phone's 487 says nothing to the caller.
#[test]
fn unanswered_phones_forward_after_their_time_and_their_487_is_not_the_callers() {
    let mut h = forwarded_call();
    h.take_commands();
    h.event(ms(100), B1, LegEvent::Progress { code: 180, sdp: None });
    h.take_commands();
    assert_eq!(h.call.poll_timeout(), Some(Timestamp::ZERO + Duration::from_secs(20)));
    h.call.handle(Timestamp::ZERO + Duration::from_secs(20), CallInput::Timeout);
    h.drain();
    let commands = h.take_commands();
    assert!(commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::Hangup)), "B1 cancelled: {commands:?}");
    assert!(commands.iter().any(|(l, c)| *l == B4 && matches!(c, LegCommand::Invite { .. })), "{commands:?}");
    assert_eq!(h.gone, vec![B3], "the busy forward is not taken");
    h.event(Duration::from_secs(20), B1, LegEvent::Failed { code: 487 });
    h.finish(Duration::from_secs(20), &[B1]);
    assert!(h.ended.is_none(), "the caller still rings");
    assert!(!h.take_commands().iter().any(|(l, _)| *l == A));
    // The call's own bound starts again for the forward: 30 s from the forward.
    assert_eq!(h.call.poll_timeout(), Some(Timestamp::ZERO + Duration::from_secs(50)));
    // The forward is busy: the caller hears that one, not the cancelled phone's 487.
    h.event(Duration::from_secs(21), B4, LegEvent::Failed { code: 486 });
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::Reject { code: 486, .. })]));
    assert_eq!(h.ended.clone().expect("a record").disposition, Disposition::Busy);
}

/// A phone that cannot be reached (480, 408) takes the no-answer forward at once; answered
/// first, neither forward is taken and both forwards' legs go.
#[test]
fn unreachable_phones_take_the_no_answer_forward_and_an_answer_drops_both() {
    let mut h = forwarded_call();
    h.take_commands();
    h.event(ms(300), B1, LegEvent::Failed { code: 408 });
    assert!(invited(&mut h, B4));
    assert_eq!(h.gone, vec![B3]);

    let mut h = forwarded_call();
    h.take_commands();
    h.event(ms(300), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    let mut gone = h.gone.clone();
    gone.sort();
    assert_eq!(gone, vec![B3, B4]);
    assert_eq!(h.call.poll_timeout(), None, "no forward timer once answered");
}

/// An intercom call asks every phone to answer by itself (`Call-Info: answer-after=0` and
/// `Alert-Info: info=alert-autoanswer`), and pbx hangs up both sides `INTERCOM_MAX` after the
/// answer; an ordinary call's INVITE carries neither and has no such bound.
#[test]
fn intercom_calls_ask_for_auto_answer_and_end_after_their_cap() {
    let (config, mut setup) = call_setup(PCMU_OFFER, vec![binding("sip:101@127.0.0.1:5064", 5064)]);
    setup.start.route.intercom = true;
    let mut h = harness(config, setup);
    let invite = h.take_commands().into_iter().find(|(l, _)| *l == B1).expect("B1 invited").1;
    let leg = h.legs.iter_mut().find(|l| l.id() == B1).expect("B1 started");
    leg.handle(Timestamp::ZERO, LegInput::Command(invite));
    let text = sent_text(&drain_leg(leg).0[0]);
    assert!(text.contains("\r\nCall-Info: <sip:127.0.0.1:5060>;answer-after=0\r\n"), "{text}");
    assert!(text.contains("\r\nAlert-Info: <http://127.0.0.1/>;info=alert-autoanswer;delay=0\r\n"), "{text}");
    h.event(ms(200), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    h.take_commands();
    let cap = Timestamp::ZERO + ms(200) + super::b2bua::INTERCOM_MAX;
    assert_eq!(h.call.poll_timeout(), Some(cap));
    h.call.handle(cap, CallInput::Timeout);
    h.drain();
    let commands = h.take_commands();
    assert!(commands.iter().any(|(l, c)| *l == A && matches!(c, LegCommand::Hangup)), "{commands:?}");
    assert!(commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::Hangup)), "{commands:?}");
    let cdr = h.ended.clone().expect("a record");
    assert_eq!((cdr.disposition, cdr.hangup), (Disposition::Answered, Some(HangupSide::Pbx)));

    let mut plain = call_with(PCMU_OFFER, 1);
    let invite = plain.take_commands().into_iter().find(|(l, _)| *l == B1).expect("B1 invited").1;
    let leg = plain.legs.iter_mut().find(|l| l.id() == B1).expect("B1 started");
    leg.handle(Timestamp::ZERO, LegInput::Command(invite));
    let text = sent_text(&drain_leg(leg).0[0]);
    assert!(!text.contains("Call-Info") && !text.contains("Alert-Info"), "{text}");
    plain.event(ms(200), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    assert_eq!(plain.call.poll_timeout(), None);
}

/// A hunt group's stages: a busy member passes the call on to the next at once, an unanswered
/// one after its time, and the stage after that stays queued (unlike a busy forward, which
/// ends the forwarding).
#[test]
fn hunt_stages_pass_on_busy_and_unanswered_members_in_turn() {
    let (config, mut setup) = call_setup(PCMU_OFFER, vec![binding("sip:101@127.0.0.1:5064", 5064)]);
    let phone =
        |aor: &str, port: u16| Binding { aor: aor.into(), ..binding(&format!("sip:{aor}@127.0.0.1:{port}"), port) };
    let stage = |aor: &str, port| crate::registrar::Forward { target: "600".into(), contacts: vec![phone(aor, port)] };
    setup.start.route.forwards = crate::registrar::Forwards {
        busy: None,
        no_answer: vec![(Duration::from_secs(10), stage("102", 5070)), (Duration::from_secs(10), stage("103", 5080))],
        busy_moves_on: true,
    };
    setup.start.forks = vec![B1, B3, B4];
    let mut h = harness(config, setup);
    assert!(invited(&mut h, B1));
    h.event(ms(500), B1, LegEvent::Failed { code: 486 });
    assert!(invited(&mut h, B3), "busy: the next member rings at once");
    assert!(h.gone.is_empty(), "the last stage stays queued");
    assert_eq!(h.call.poll_timeout(), Some(Timestamp::ZERO + ms(10_500)));
    h.call.handle(Timestamp::ZERO + ms(10_500), CallInput::Timeout);
    h.drain();
    let commands = h.take_commands();
    assert!(commands.iter().any(|(l, c)| *l == B3 && matches!(c, LegCommand::Hangup)), "{commands:?}");
    assert!(commands.iter().any(|(l, c)| *l == B4 && matches!(c, LegCommand::Invite { .. })), "{commands:?}");
    h.event(ms(11_000), B4, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    assert!(h.take_commands().iter().any(|(l, c)| *l == A && matches!(c, LegCommand::Answer { .. })));
}

/// Directed pickup: a phone's INVITE takes the ringing call — it is answered with pbx's
/// B-side port, the caller is answered, the ringing phone is cancelled; a call already
/// answered cannot be picked up.
#[test]
fn a_ringing_call_is_picked_up_by_another_phones_invite() {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    h.event(ms(100), B1, LegEvent::Progress { code: 180, sdp: None });
    h.take_commands();
    assert!(h.call.can_be_picked_up());
    let (key, request) = invite(PCMU_OFFER);
    let (_, setup) = call_setup(PCMU_OFFER, vec![]);
    let picker = CallStart { a: B3, key, invite: request, forks: vec![], ..setup.start };
    h.call.handle(Timestamp::ZERO + ms(3_000), CallInput::PickUp(Box::new(picker)));
    h.drain();
    assert!(h.started.contains(&B3));
    let commands = h.take_commands();
    assert!(commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::Hangup)), "{commands:?}");
    let (_, to_picker) = commands.iter().find(|(l, _)| *l == B3).expect("the picker is answered");
    assert_eq!(sdp_of(to_picker).rtp, Some("127.0.0.1:20002".parse().unwrap()), "pbx's B side");
    let (_, to_caller) = commands.iter().find(|(l, _)| *l == A).expect("the caller is answered");
    assert_eq!(sdp_of(to_caller).rtp, Some("127.0.0.1:20000".parse().unwrap()));
    let sides: Vec<_> = h.media.iter().map(|(side, peer)| (*side, peer.rtp)).collect();
    assert!(sides.contains(&(Side::B, Some("127.0.0.1:40000".parse().unwrap()))), "{sides:?}");
    assert!(!h.call.can_be_picked_up(), "answered: no second pickup");
    // The picker hangs up: the call ends, answered.
    h.event(ms(9_000), B3, LegEvent::Bye);
    assert_eq!(h.ended.clone().expect("a record").disposition, Disposition::Answered);
}

// ---- Transfer (RFC 3515) ----

const T1: LegId = LegId(20);
const T2: LegId = LegId(21);

fn refer_to(number: &str) -> LegEvent {
    LegEvent::Refer(super::transfer::ReferTo { number: number.into(), secure: false, replaces: None })
}

/// A call 100 → 101 answered by its one phone (B1), its media settings so far forgotten.
fn transferable_call() -> Harness {
    let mut h = answered_call();
    h.media.clear();
    h
}

/// Where a transfer to `number` goes: its phones, a leg each.
fn transfer_route(number: &str, legs: &[LegId]) -> super::b2bua::TransferLookup {
    let contacts = legs
        .iter()
        .enumerate()
        .map(|(n, _)| {
            let port = 5070 + n as u16;
            Binding { aor: number.into(), ..binding(&format!("sip:{number}@127.0.0.1:{port}"), port) }
        })
        .collect();
    Ok((Box::new(Route::extension("100", number, contacts)), legs.to_vec()))
}

impl Harness {
    fn routed(&mut self, at: Duration, attempt: u64, result: super::b2bua::TransferLookup) {
        self.call.handle(Timestamp::ZERO + at, CallInput::TransferRoute { attempt, result });
        self.drain();
    }
}

fn notified(commands: &[(LegId, LegCommand)], leg: LegId) -> Vec<u16> {
    commands
        .iter()
        .filter(|(l, _)| *l == leg)
        .filter_map(|(_, c)| match c {
            LegCommand::NotifyRefer { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

/// The callee transfers the caller to 102: looked up as if 100 dialled it, 202, the target's
/// phone offered pbx's B-side port; its answer replaces 101 (NOTIFY 200, BYE), the caller is
/// re-offered, the record so far names the transfer and the call goes on under the next one.
#[test]
fn blind_transfer_by_the_callee_joins_the_caller_to_the_target() {
    let mut h = transferable_call();
    h.event(ms(5000), B1, refer_to("102"));
    assert_eq!(h.lookups, vec![(1, "102".into(), "100".into(), false)]);
    assert!(h.take_commands().is_empty(), "the REFER waits for the lookup");

    h.routed(ms(5010), 1, transfer_route("102", &[T1]));
    let commands = h.take_commands();
    assert!(
        commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::AnswerRefer { code: 202, .. })),
        "{commands:?}"
    );
    assert!(h.started.contains(&T1));
    let (_, invite) = commands.iter().find(|(l, c)| *l == T1 && matches!(c, LegCommand::Invite { .. })).unwrap();
    let offered = sdp_of(invite);
    assert_eq!(offered.rtp, Some("127.0.0.1:20002".parse().unwrap()), "the target gets the transferor's side");
    assert_eq!(offered.codecs[0].1, crate::sdp::Codec::Pcmu, "the transferee's codec first");

    h.event(ms(6000), T1, LegEvent::Progress { code: 180, sdp: None });
    assert_eq!(notified(&h.take_commands(), B1), vec![180]);
    assert!(h.segments.is_empty() && h.ended.is_none());

    let answer = PCMA_ANSWER.replace("41000", "42000");
    h.event(ms(9000), T1, LegEvent::Answered { sdp: Some(Bytes::from(answer)) });
    let commands = h.take_commands();
    assert_eq!(notified(&commands, B1), vec![200]);
    assert!(commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::Hangup)), "{commands:?}");
    let (_, reoffer) = commands.iter().find(|(l, c)| *l == A && matches!(c, LegCommand::Offer { .. })).unwrap();
    assert_eq!(sdp_of(reoffer).direction, crate::sdp::Direction::SendRecv, "the caller is taken off hold");
    assert!(
        h.media.iter().any(|(side, peer)| *side == Side::B && peer.rtp == Some("127.0.0.1:42000".parse().unwrap()))
    );
    let first = h.segments.first().expect("the record up to the transfer");
    assert_eq!((first.id, first.caller.as_str(), first.callee.as_str()), (7, "100", "101"));
    let transfer = first.transfer.clone().unwrap();
    assert_eq!((transfer.by.as_str(), transfer.to.as_str()), ("101", "102"));
    assert_eq!(first.end, Timestamp::ZERO + ms(9000));

    // The old callee's leg finishing does not end the call; the caller's BYE does.
    h.event(ms(9050), B1, LegEvent::Finished);
    assert!(h.ended.is_none());
    h.event(ms(20_000), A, LegEvent::Bye);
    assert!(h.take_commands().iter().any(|(l, c)| *l == T1 && matches!(c, LegCommand::Hangup)));
    let last = h.ended.clone().unwrap();
    assert_eq!((last.id, last.follows), (transfer.next, Some(7)));
    assert_eq!((last.caller.as_str(), last.callee.as_str()), ("100", "102"));
    assert_eq!((last.start, last.answer), (Timestamp::ZERO + ms(5000), Some(Timestamp::ZERO + ms(9000))));
    assert_eq!(last.hangup, Some(HangupSide::Caller));
    h.finish(ms(20_000), &[A, T1]);
    assert!(h.over);
}

/// The caller transfers the callee: the target takes the caller's side (A), and the old
/// caller's leg, now a spare, finishing does not end the call.
#[test]
fn blind_transfer_by_the_caller_puts_the_target_on_its_side() {
    let mut h = transferable_call();
    h.event(ms(5000), A, refer_to("102"));
    assert_eq!(h.lookups, vec![(1, "102".into(), "101".into(), false)]);
    h.routed(ms(5010), 1, transfer_route("102", &[T1]));
    let commands = h.take_commands();
    let (_, invite) = commands.iter().find(|(l, _)| *l == T1).unwrap();
    assert_eq!(sdp_of(invite).rtp, Some("127.0.0.1:20000".parse().unwrap()));
    h.event(ms(8000), T1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    let commands = h.take_commands();
    assert!(commands.iter().any(|(l, c)| *l == A && matches!(c, LegCommand::Hangup)), "{commands:?}");
    assert!(commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::Offer { .. })), "{commands:?}");
    h.event(ms(8050), A, LegEvent::Finished);
    assert!(h.ended.is_none(), "the transferor's leg going is no hang-up");
    h.event(ms(30_000), T1, LegEvent::Bye);
    let last = h.ended.clone().unwrap();
    assert_eq!((last.caller.as_str(), last.callee.as_str()), ("102", "101"), "parties by side");
    assert_eq!(last.hangup, Some(HangupSide::Caller));
}

/// A busy target: the transferor hears 486 by NOTIFY and keeps the call; a REFER refused by
/// the lookup (outside the dial plan) gets the lookup's answer and changes nothing.
#[test]
fn failed_transfer_gives_the_call_back_to_the_transferor() {
    let mut h = transferable_call();
    h.event(ms(1000), B1, refer_to("999"));
    h.routed(ms(1001), 1, Err((403, "Forbidden (no such number)".into())));
    let commands = h.take_commands();
    assert!(
        matches!(&commands[..], [(B1, LegCommand::AnswerRefer { code: 403, reason: Some(r) })] if r.contains("no such")),
        "{commands:?}"
    );

    h.event(ms(2000), B1, refer_to("102"));
    h.routed(ms(2010), 2, transfer_route("102", &[T1, T2]));
    h.take_commands();
    h.event(ms(3000), T1, LegEvent::Failed { code: 486 });
    assert!(notified(&h.take_commands(), B1).is_empty(), "one phone of two is busy");
    h.event(ms(3100), T2, LegEvent::Failed { code: 486 });
    assert_eq!(notified(&h.take_commands(), B1), vec![486]);
    assert!(h.segments.is_empty());
    h.event(ms(10_000), B1, LegEvent::Bye);
    let cdr = h.ended.clone().unwrap();
    assert_eq!((cdr.callee.as_str(), cdr.follows, cdr.hangup), ("101", None, Some(HangupSide::Callee)));
}

/// Blind transfer where the transferor hangs up at once: the caller waits; the target does
/// not answer in time, so the transferor is rung back (a lookup of its own extension); its
/// answer reconnects the call.
#[test]
fn a_transferor_that_left_is_rung_back_when_the_target_fails() {
    let mut h = transferable_call();
    h.event(ms(1000), B1, refer_to("102"));
    h.routed(ms(1010), 1, transfer_route("102", &[T1]));
    h.take_commands();
    h.event(ms(1500), B1, LegEvent::Bye);
    h.event(ms(1500), B1, LegEvent::Finished);
    assert!(h.ended.is_none(), "the caller waits for the target");
    assert!(!h.take_commands().iter().any(|(l, _)| *l == A));

    // The transferor's side goes quiet meanwhile: no reason to end the call.
    h.call.handle(Timestamp::ZERO + ms(20_000), CallInput::MediaInactive { side: Side::B });
    h.drain();
    assert!(h.ended.is_none(), "a quiet transferor's side during a transfer is no dead call");
    h.call.handle(Timestamp::ZERO + ms(1010) + Duration::from_secs(30), CallInput::Timeout);
    h.drain();
    assert!(h.take_commands().iter().any(|(l, c)| *l == T1 && matches!(c, LegCommand::Hangup)));
    assert_eq!(h.lookups.last().unwrap(), &(2, "101".into(), "100".into(), false), "a recall of 101");
    h.routed(ms(31_100), 2, transfer_route("101", &[T2]));
    h.event(ms(31_200), T1, LegEvent::Failed { code: 487 });
    h.event(ms(33_000), T2, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    let first = h.segments.first().unwrap();
    assert_eq!(first.transfer.as_ref().unwrap().to, "101");
    h.event(ms(40_000), A, LegEvent::Bye);
    assert_eq!(h.ended.clone().unwrap().callee, "101");
}

/// A REFER before the answer, a second one while one runs, and one beyond the limit are
/// refused; a lookup that comes back after the call ended starts nothing.
#[test]
fn refers_out_of_turn_are_refused() {
    let mut h = call_with(PCMU_OFFER, 1);
    h.take_commands();
    h.event(ms(10), A, refer_to("102"));
    assert!(matches!(h.take_commands()[..], [(A, LegCommand::AnswerRefer { code: 403, .. })]));
    h.event(ms(100), B1, LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    h.take_commands();
    h.event(ms(200), A, refer_to("102"));
    h.event(ms(210), B1, refer_to("103"));
    assert!(matches!(h.take_commands()[..], [(B1, LegCommand::AnswerRefer { code: 491, .. })]));
    // The transferee hangs up while the target is looked up.
    h.event(ms(300), B1, LegEvent::Bye);
    assert!(h.ended.is_some());
    h.routed(ms(400), 1, transfer_route("102", &[T1]));
    assert!(!h.started.contains(&T1));
    assert!(h.gone.contains(&T1), "the unused leg id is given back");
}

/// An answered A-leg and a REFER in its dialog with `refer_to` (and any extra header lines).
fn refer_in_dialog(leg: &mut Leg, cseq: u32, lines: &str) -> (Vec<SipOut>, Vec<LegEvent>) {
    let tag = leg.id().tag();
    let text = format!(
        "REFER sip:pbx@{PBX} SIP/2.0\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-refer{cseq};rport\nMax-Forwards: 70\n\
From: <sip:100@127.0.0.1>;tag=alice\nTo: <sip:101@127.0.0.1>;tag={tag}\nCall-ID: call-1\nCSeq: {cseq} REFER\n\
Contact: <sip:100@{PHONE}>\n{lines}Content-Length: 0\n\n"
    );
    let (key, request) = received(&text);
    leg.handle(Timestamp::ZERO + ms(1000), LegInput::Sip(SipIn::Request { key, request }));
    drain_leg(leg)
}

fn confirmed_a_leg() -> Leg {
    let (mut leg, _, _) = a_leg(0xb);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::Answer { sdp: None }));
    let ack = parse_request(&format!(
        "ACK sip:pbx@{PBX} SIP/2.0\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-ack1\nMax-Forwards: 70\n\
From: <sip:100@127.0.0.1>;tag=alice\nTo: <sip:101@127.0.0.1>;tag={}\nCall-ID: call-1\nCSeq: 1 ACK\nContent-Length: 0\n\n",
        LegId(0xb).tag()
    ));
    leg.handle(Timestamp::ZERO, LegInput::Sip(SipIn::Ack { request: ack }));
    drain_leg(&mut leg);
    leg
}

/// RFC 3515: a REFER is handed to the call with its target read; 202 is followed by NOTIFY
/// `100 Trying` at once, progress by NOTIFYs, and the final one ends the subscription.
#[test]
fn leg_takes_a_refer_and_reports_progress_by_notify() {
    let mut leg = confirmed_a_leg();
    let (sip, events) = refer_in_dialog(&mut leg, 2, "Refer-To: <sip:102@127.0.0.1>\n");
    assert!(sip.is_empty(), "answered once the call decides");
    let expected = super::transfer::ReferTo { number: "102".into(), secure: false, replaces: None };
    assert_eq!(events, vec![LegEvent::Refer(expected)]);
    // A second REFER meanwhile waits its turn.
    let (sip, _) = refer_in_dialog(&mut leg, 3, "Refer-To: <sip:103@127.0.0.1>\n");
    assert!(sent_text(&sip[0]).starts_with("SIP/2.0 491"), "{}", sent_text(&sip[0]));

    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::AnswerRefer { code: 202, reason: None }));
    let (sip, _) = drain_leg(&mut leg);
    assert!(sent_text(&sip[0]).starts_with("SIP/2.0 202 Accepted"), "{}", sent_text(&sip[0]));
    let notify = sent_text(&sip[1]);
    assert!(notify.starts_with("NOTIFY sip:100@"), "{notify}");
    for line in
        ["Event: refer;id=2", "Subscription-State: active", "Content-Type: message/sipfrag", "SIP/2.0 100 Trying"]
    {
        assert!(notify.contains(line), "{line} in {notify}");
    }
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::NotifyRefer { code: 200, reason: "OK".into() }));
    let (sip, _) = drain_leg(&mut leg);
    let notify = sent_text(&sip[0]);
    assert!(notify.contains("Subscription-State: terminated;reason=noresource"), "{notify}");
    assert!(notify.contains("SIP/2.0 200 OK"), "{notify}");
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::NotifyRefer { code: 486, reason: "Busy".into() }));
    assert!(drain_leg(&mut leg).0.is_empty(), "no NOTIFY after the subscription ended");
}

/// A stranger's Refer-To (another host, another scheme) is refused 403 by the leg, with the
/// reason; none or two get 400; `Refer-Sub: false` (RFC 4488) gets 202 and no NOTIFY.
#[test]
fn leg_refuses_bad_refer_targets() {
    let mut leg = confirmed_a_leg();
    for (lines, status) in [
        ("Refer-To: <sip:102@evil.example.net>\n", "SIP/2.0 403 Forbidden (Refer-To names another host)"),
        ("Refer-To: <tel:+15550100>\n", "SIP/2.0 403 Forbidden (Refer-To is not a SIP URI)"),
        ("", "SIP/2.0 400"),
        ("Refer-To: <sip:102@127.0.0.1>\nRefer-To: <sip:103@127.0.0.1>\n", "SIP/2.0 400"),
    ] {
        let (sip, events) = refer_in_dialog(&mut leg, 2, lines);
        assert!(events.is_empty(), "{lines}");
        assert!(sent_text(&sip[0]).starts_with(status), "{lines}: {}", sent_text(&sip[0]));
    }
    let (_, events) = refer_in_dialog(&mut leg, 3, "Refer-To: <sip:102@127.0.0.1>\nRefer-Sub: false\n");
    assert_eq!(events.len(), 1);
    leg.handle(Timestamp::ZERO, LegInput::Command(LegCommand::AnswerRefer { code: 202, reason: None }));
    let (sip, _) = drain_leg(&mut leg);
    assert_eq!(sip.len(), 1, "the 202 alone");
}

/// Attended transfer: 101 is in call 7 with 100 (the transferee) and in a consultation call
/// with 102; it REFERs call 7 with Replaces naming the consultation. The consultation call
/// reserves itself (only for 101), call 7 hands 100's leg over and ends (NOTIFY 200, BYE to
/// 101, its record names the transfer), the consultation call takes 100 in 101's place (BYE to
/// 101, 100 re-offered) and goes on under a record that follows call 7's.
#[test]
fn attended_transfer_joins_the_transferee_to_the_consultation_call() {
    let mut h1 = transferable_call();
    let (config, mut setup) =
        call_setup(PCMU_OFFER, vec![Binding { aor: "102".into(), ..binding("sip:102@127.0.0.1:5090", 5090) }]);
    setup.id = 9;
    setup.start.a = LegId(10);
    setup.start.forks = vec![LegId(11)];
    setup.start.route.caller = "101".into();
    setup.start.route.callee = "102".into();
    setup.start.route.target = "102".into();
    let mut h2 = harness(config, setup);
    h2.event(ms(100), LegId(11), LegEvent::Answered { sdp: Some(Bytes::from_static(PCMU_ANSWER.as_bytes())) });
    h2.take_commands();

    let replaces = super::transfer::Replaces { call_id: "c2".into(), to_tag: "t".into(), from_tag: "f".into() };
    let target = super::transfer::ReferTo { number: "102".into(), secure: false, replaces: Some(replaces.clone()) };
    h1.event(ms(5000), B1, LegEvent::Refer(target));
    assert_eq!(h1.replaces, vec![(1, replaces, "101".into())]);
    assert!(h1.lookups.is_empty());

    let now = Timestamp::ZERO + ms(5001);
    assert_eq!(h2.call.reserve_replacement(now, LegId(11), "101"), None, "not the transferor's leg");
    assert_eq!(h2.call.reserve_replacement(now, LegId(10), "100"), None, "not the transferor");
    let next = h2.call.reserve_replacement(now, LegId(10), "101").expect("reserved");
    assert_eq!(h2.call.reserve_replacement(now, LegId(10), "101"), None, "once");

    h1.call.handle(now, CallInput::Replaced { attempt: 1, result: Ok(next) });
    h1.drain();
    let commands = h1.take_commands();
    assert!(commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::AnswerRefer { code: 202, .. })));
    assert_eq!(notified(&commands, B1), vec![200]);
    assert!(commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::Hangup)), "{commands:?}");
    assert!(!commands.iter().any(|(l, _)| *l == A), "the transferee is not hung up: {commands:?}");
    let [(leg, handover)] = std::mem::take(&mut h1.handovers).try_into().expect("one handover");
    assert_eq!((leg, handover.party.as_str(), handover.follows), (A, "100", 7));
    let record = h1.ended.clone().expect("call 7 ended");
    let transfer = record.transfer.clone().unwrap();
    assert_eq!((transfer.by.as_str(), transfer.to.as_str(), transfer.next), ("101", "102", next));
    h1.finish(ms(5100), &[B1]);
    assert!(h1.over, "call 7 is over without the handed leg");
    assert!(!h1.stopped.contains(&A), "the handed leg is not stopped");

    // The consultation leg's BYE while reserved does not end the consultation call.
    h2.event(ms(5002), LegId(10), LegEvent::Bye);
    assert!(h2.ended.is_none());
    h2.call.handle(Timestamp::ZERO + ms(5003), CallInput::TakeOver(Box::new(handover)));
    h2.drain();
    let commands = h2.take_commands();
    let (_, reoffer) =
        commands.iter().find(|(l, c)| *l == A && matches!(c, LegCommand::Offer { .. })).expect("re-offer");
    assert_eq!(sdp_of(reoffer).rtp, Some("127.0.0.1:20000".parse().unwrap()), "toward the joined call's relay");
    let segment = h2.segments.first().expect("the consultation's record");
    assert_eq!((segment.id, segment.caller.as_str(), segment.callee.as_str()), (9, "101", "102"));
    h2.event(ms(5004), LegId(10), LegEvent::Finished);
    h2.event(ms(9000), LegId(11), LegEvent::Bye);
    let last = h2.ended.clone().expect("ended by 102");
    assert_eq!((last.id, last.follows), (next, Some(7)));
    assert_eq!((last.caller.as_str(), last.callee.as_str(), last.hangup), ("100", "102", Some(HangupSide::Callee)));
    assert!(h2.take_commands().iter().any(|(l, c)| *l == A && matches!(c, LegCommand::Hangup)));
}

/// A reservation nobody follows up runs out: the reserved leg's BYE meanwhile then ends the
/// call; a transferee that comes too late is hung up on.
#[test]
fn a_reservation_runs_out() {
    let mut h = transferable_call();
    let next = h.call.reserve_replacement(Timestamp::ZERO + ms(1000), B1, "101");
    assert!(next.is_some());
    h.event(ms(1500), B1, LegEvent::Bye);
    assert!(h.ended.is_none());
    h.call.handle(Timestamp::ZERO + ms(1000) + super::b2bua::REPLACE_WAIT, CallInput::Timeout);
    h.drain();
    assert_eq!(h.ended.clone().expect("ended").hangup, Some(HangupSide::Callee));
    let late = super::b2bua::TakeOver {
        leg: LegId(30),
        session: crate::sdp::LocalSession::new(1, "127.0.0.1".parse().unwrap()),
        codec: None,
        party: "103".into(),
        transferor: "101".into(),
        follows: 1,
    };
    h.call.handle(Timestamp::ZERO + ms(7000), CallInput::TakeOver(Box::new(late)));
    h.drain();
    assert!(h.take_commands().iter().any(|(l, c)| *l == LegId(30) && matches!(c, LegCommand::Hangup)));
}

/// An INVITE with `Replaces` from another phone of the answered callee's extension takes its
/// place: answered on pbx's B-side port, the old phone gets a BYE, the call goes on (one
/// record). Another extension may not; while the call rang, any may (a pickup).
#[test]
fn invite_with_replaces_moves_the_call_to_another_phone() {
    let mut h = transferable_call();
    let (key, invite) = invite(PCMU_OFFER);
    let replaces = super::transfer::Replaces { call_id: "x".into(), to_tag: "a".into(), from_tag: "b".into() };
    let route = Route { replaces: Some(replaces), ..transfer_route("101", &[]).unwrap().0.as_ref().clone() };
    let start = |caller: &str| CallStart {
        a: LegId(40),
        key: key.clone(),
        invite: invite.clone(),
        source: PHONE.parse().unwrap(),
        transport: Transport::Udp,
        route: Route { caller: caller.into(), ..route.clone() },
        forks: vec![],
    };
    assert!(!h.call.can_replace(B1, "102"), "another extension's call");
    assert!(!h.call.can_replace(A, "101"), "not 101's side");
    assert!(h.call.can_replace(B1, "101"));
    h.call.handle(Timestamp::ZERO + ms(3000), CallInput::ReplaceLeg { leg: B1, start: Box::new(start("101")) });
    h.drain();
    assert!(h.started.contains(&LegId(40)));
    let commands = h.take_commands();
    let (_, answer) = commands.iter().find(|(l, c)| *l == LegId(40) && matches!(c, LegCommand::Answer { .. })).unwrap();
    assert_eq!(sdp_of(answer).rtp, Some("127.0.0.1:20002".parse().unwrap()));
    assert!(commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::Hangup)), "{commands:?}");
    assert_eq!(h.call.answered_legs(), Some((A, LegId(40))));
    h.event(ms(3100), B1, LegEvent::Finished);
    assert!(h.ended.is_none());
    h.event(ms(9000), LegId(40), LegEvent::Bye);
    let cdr = h.ended.clone().unwrap();
    assert_eq!((cdr.id, cdr.callee.as_str(), cdr.hangup, cdr.follows), (7, "101", Some(HangupSide::Callee), None));

    let ringing = call_with(PCMU_OFFER, 1);
    assert!(ringing.call.can_replace(B1, "102"), "a ringing call is a pickup for anyone");
}

/// Call park: 101 transfers the caller to orbit 701; once the orbit is claimed the REFER gets
/// 202 and NOTIFY 200, 101 is hung up, the relay's side B sends nowhere and its silence does
/// not end the call. 103 dials 701 and takes the parked side; the records chain through the
/// park. Unretrieved, a parked call rings the parker back.
#[test]
fn a_parked_call_waits_in_its_orbit_until_retrieved_or_it_rings_back() {
    let mut h = transferable_call();
    h.event(ms(1000), B1, refer_to("701"));
    let mut parked_route = *transfer_route("701", &[]).unwrap().0;
    parked_route.park = Some("701".into());
    h.routed(ms(1001), 1, Ok((Box::new(parked_route.clone()), vec![])));
    assert_eq!(h.parks, vec![(1, "701".into())]);
    assert!(h.take_commands().is_empty(), "the REFER waits for the orbit");
    h.call.handle(Timestamp::ZERO + ms(1002), CallInput::Parked { attempt: 1, ok: true });
    h.drain();
    let commands = h.take_commands();
    assert!(commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::AnswerRefer { code: 202, .. })));
    assert_eq!(notified(&commands, B1), vec![200]);
    assert!(commands.iter().any(|(l, c)| *l == B1 && matches!(c, LegCommand::Hangup)));
    assert!(h.media.iter().any(|(side, peer)| *side == Side::B && peer.rtp.is_none() && !peer.sends));
    let first = h.segments.first().unwrap().clone();
    assert_eq!(first.transfer.as_ref().map(|t| (t.by.as_str(), t.to.as_str())), Some(("101", "701")));
    h.event(ms(1100), B1, LegEvent::Finished);
    h.call.handle(Timestamp::ZERO + ms(30_000), CallInput::MediaInactive { side: Side::B });
    h.drain();
    assert!(h.ended.is_none(), "parked: the empty side's silence and the parker's leg going are fine");
    assert!(h.call.can_retrieve("701") && !h.call.can_retrieve("702"));

    let (key, invite) = invite(PCMU_OFFER);
    let start = CallStart {
        a: LegId(50),
        key,
        invite,
        source: PHONE.parse().unwrap(),
        transport: Transport::Udp,
        route: Route { caller: "103".into(), ..parked_route },
        forks: vec![],
    };
    h.call.handle(Timestamp::ZERO + ms(31_000), CallInput::Retrieve(Box::new(start)));
    h.drain();
    assert_eq!(h.unparked, 1);
    let commands = h.take_commands();
    let (_, answer) = commands.iter().find(|(l, c)| *l == LegId(50) && matches!(c, LegCommand::Answer { .. })).unwrap();
    assert_eq!(sdp_of(answer).rtp, Some("127.0.0.1:20002".parse().unwrap()));
    assert_eq!(h.call.answered_legs(), Some((A, LegId(50))));
    let parked_part = h.segments.last().unwrap().clone();
    assert_eq!(parked_part.transfer.as_ref().map(|t| (t.by.as_str(), t.to.as_str())), Some(("701", "103")));
    h.event(ms(40_000), A, LegEvent::Bye);
    let last = h.ended.clone().unwrap();
    assert_eq!((last.caller.as_str(), last.callee.as_str(), last.follows), ("100", "103", Some(parked_part.id)));

    // Another parked call nobody takes: after the park timeout, a recall of 101.
    let mut h = transferable_call();
    h.event(ms(1000), B1, refer_to("702"));
    let mut route = *transfer_route("702", &[]).unwrap().0;
    route.park = Some("702".into());
    h.routed(ms(1001), 1, Ok((Box::new(route), vec![])));
    h.call.handle(Timestamp::ZERO + ms(1002), CallInput::Parked { attempt: 1, ok: true });
    h.drain();
    h.call.handle(Timestamp::ZERO + ms(1002) + Duration::from_secs(45), CallInput::Timeout);
    h.drain();
    assert_eq!(h.unparked, 1);
    assert_eq!(h.lookups.last(), Some(&(2, "101".into(), "100".into(), false)), "the parker is rung back");

    // A taken orbit: the REFER is refused and the call goes on.
    let mut h = transferable_call();
    h.event(ms(1000), B1, refer_to("701"));
    let mut route = *transfer_route("701", &[]).unwrap().0;
    route.park = Some("701".into());
    h.routed(ms(1001), 1, Ok((Box::new(route), vec![])));
    h.call.handle(Timestamp::ZERO + ms(1002), CallInput::Parked { attempt: 1, ok: false });
    h.drain();
    let commands = h.take_commands();
    assert!(
        matches!(&commands[..], [(B1, LegCommand::AnswerRefer { code: 403, reason: Some(r) })] if r.contains("in use")),
        "{commands:?}"
    );
}

/// A `sips:` Refer-To (RFC 5630: TLS all the way) to a target with no phone on TLS is refused
/// before anything rings, not downgraded to its UDP phones.
#[test]
fn a_sips_target_without_tls_phones_is_refused() {
    let mut h = transferable_call();
    let target = super::transfer::ReferTo { number: "102".into(), secure: true, replaces: None };
    h.event(ms(1000), B1, LegEvent::Refer(target));
    assert_eq!(h.lookups, vec![(1, "102".into(), "100".into(), true)]);
    h.routed(ms(1001), 1, transfer_route("102", &[T1]));
    let commands = h.take_commands();
    assert!(
        matches!(&commands[..], [(B1, LegCommand::AnswerRefer { code: 403, reason: Some(r) })] if r.contains("sips")),
        "{commands:?}"
    );
    assert!(!h.started.contains(&T1) && h.gone.contains(&T1));
}

/// A stranger who learned pbx's tag sends REFER with another From tag (or Call-ID): 481,
/// and the call hears nothing — only the dialog's own party can transfer it.
#[test]
fn a_strangers_refer_is_not_of_the_dialog() {
    let mut leg = confirmed_a_leg();
    let tag = leg.id().tag();
    for (from_tag, call_id) in [("mallory", "call-1"), ("alice", "other-call")] {
        let text = format!(
            "REFER sip:pbx@{PBX} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.9:5062;branch=z9hG4bK-evil-{from_tag};rport\n\
Max-Forwards: 70\nFrom: <sip:100@127.0.0.1>;tag={from_tag}\nTo: <sip:101@127.0.0.1>;tag={tag}\nCall-ID: {call_id}\n\
CSeq: 9 REFER\nRefer-To: <sip:102@127.0.0.1>\nContent-Length: 0\n\n"
        );
        let (key, request) = received(&text);
        leg.handle(Timestamp::ZERO + ms(1000), LegInput::Sip(SipIn::Request { key, request }));
        let (sip, events) = drain_leg(&mut leg);
        assert!(events.is_empty(), "{from_tag}/{call_id}: {events:?}");
        assert!(sent_text(&sip[0]).starts_with("SIP/2.0 481"), "{}", sent_text(&sip[0]));
    }
}

use super::*;
use crate::endpoint::SourceLimit;

const SRC: &str = "127.0.0.1:5062";

fn request(method: &str, branch: &str) -> Bytes {
    Bytes::from(format!(
        "{method} sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:100@pbx>;tag=f1\r\nTo: <sip:100@pbx>\r\nCall-ID: c-{branch}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ))
}

/// Handles `input` at `now`; a message off the wire was read just then (`e.handle` for one
/// that waited).
fn run(e: &mut Endpoint, now: Timestamp, mut input: EndpointInput) -> Vec<EndpointOutput> {
    if let EndpointInput::Inbound { received, .. } = &mut input {
        *received = now;
    }
    e.handle(now, input);
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn inbound(bytes: Bytes) -> EndpointInput {
    EndpointInput::Inbound { bytes, source: SRC.parse().unwrap(), transport: Transport::Udp, received: Timestamp::ZERO }
}

/// The transaction id of the INVITE the endpoint handed to the registrar to route.
fn routed_tx(outs: &[EndpointOutput]) -> u64 {
    outs.iter()
        .find_map(|o| match o {
            EndpointOutput::Route { tx, .. } => Some(*tx),
            _ => None,
        })
        .expect("handed to the registrar")
}

fn transmitted(outs: &[EndpointOutput]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            EndpointOutput::Transmit { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        })
        .collect()
}

/// OPTIONS is answered 200 with Allow, back to the source port (rport).
#[test]
fn options_answered_with_allow() {
    let mut e = Endpoint::new(TimerConfig::default(), [0; 32]);
    let outs = run(&mut e, Timestamp::ZERO, inbound(request("OPTIONS", "z9hG4bK-o1")));
    let sent = transmitted(&outs);
    assert_eq!(sent.len(), 1, "{outs:?}");
    assert!(sent[0].starts_with("SIP/2.0 200 OK\r\n"), "{}", sent[0]);
    assert!(sent[0].contains(&format!("Allow: {ALLOW}")));
    assert!(sent[0].contains("rport=5062"));
    assert!(
        outs.iter()
            .any(|o| matches!(o, EndpointOutput::Transmit { destination, .. } if destination.to_string() == SRC))
    );
}

/// An unsupported method gets 405 with Allow; a malformed request 400 naming the problem.
#[test]
fn unsupported_and_malformed() {
    let mut e = Endpoint::new(TimerConfig::default(), [0; 32]);
    let sent = transmitted(&run(&mut e, Timestamp::ZERO, inbound(request("SUBSCRIBE", "z9hG4bK-s1"))));
    assert!(sent[0].starts_with("SIP/2.0 405 Method Not Allowed\r\n"));
    assert!(sent[0].contains(&format!("Allow: {ALLOW}")));
    let broken =
        String::from_utf8(request("OPTIONS", "z9hG4bK-b1").to_vec()).unwrap().replace("Call-ID: c-z9hG4bK-b1\r\n", "");
    let outs = run(&mut e, Timestamp::ZERO, inbound(Bytes::from(broken)));
    assert!(transmitted(&outs)[0].starts_with("SIP/2.0 400 Missing Call-ID header\r\n"));
    assert!(outs.iter().any(|o| matches!(o, EndpointOutput::Event(EndpointEvent::Malformed { answered: true, .. }))));
    let outs = run(&mut e, Timestamp::ZERO, inbound(Bytes::from_static(b"\x00\x01garbage")));
    assert!(transmitted(&outs).is_empty());
    assert!(outs.iter().any(|o| matches!(o, EndpointOutput::Event(EndpointEvent::Malformed { answered: false, .. }))));
}

/// A REGISTER goes to the registrar once; its retransmission is answered from the transaction.
#[test]
fn register_dispatched_once_and_retransmission_absorbed() {
    let mut e = Endpoint::new(TimerConfig::default(), [0; 32]);
    let outs = run(&mut e, Timestamp::ZERO, inbound(request("REGISTER", "z9hG4bK-r1")));
    let (tx, req) = outs
        .into_iter()
        .find_map(|o| match o {
            EndpointOutput::Register { tx, request, .. } => Some((tx, request)),
            _ => None,
        })
        .expect("REGISTER handed to the registrar");
    // Retransmitted before the answer: absorbed silently, not handed out again.
    let outs = run(&mut e, Timestamp::from_millis(500), inbound(request("REGISTER", "z9hG4bK-r1")));
    assert!(!outs.iter().any(|o| matches!(o, EndpointOutput::Register { .. })), "{outs:?}");
    let answer = req.response(401, Some("t"));
    let first = transmitted(&run(
        &mut e,
        Timestamp::from_millis(600),
        EndpointInput::RegistrarResponse { tx, response: answer, authenticated: true },
    ));
    assert!(first[0].starts_with("SIP/2.0 401"));
    // Retransmitted after the answer: the same answer again, still not re-dispatched.
    let outs = run(&mut e, Timestamp::from_millis(900), inbound(request("REGISTER", "z9hG4bK-r1")));
    assert_eq!(transmitted(&outs), first);
    assert!(!outs.iter().any(|o| matches!(o, EndpointOutput::Register { .. })));
}

/// A registrar that never answers: the REGISTER gets 500 when the deadline passes, not before.
#[test]
fn silent_registrar_gets_500_on_time() {
    let mut e = Endpoint::new(TimerConfig::default(), [0; 32]);
    run(&mut e, Timestamp::ZERO, inbound(request("REGISTER", "z9hG4bK-r2")));
    let deadline = Timestamp::from_secs(REGISTRAR_ANSWER_S_MAX);
    assert!(e.poll_timeout().is_some_and(|t| t <= deadline));
    let early = run(&mut e, Timestamp(deadline.0 - 1), EndpointInput::Timeout);
    assert!(transmitted(&early).iter().all(|m| !m.starts_with("SIP/2.0 500")));
    let sent = transmitted(&run(&mut e, deadline, EndpointInput::Timeout));
    assert!(sent.iter().any(|m| m.starts_with("SIP/2.0 500 Registrar did not answer")), "{sent:?}");
}

/// A Require we do not support gets 420 naming it; an unknown method 501, a known one 405.
#[test]
fn require_and_unknown_methods() {
    let mut e = Endpoint::new(TimerConfig::default(), [0; 32]);
    let with_require = String::from_utf8(request("OPTIONS", "z9hG4bK-q1").to_vec())
        .unwrap()
        .replace("Content-Length", "Require: foo, bar\r\nContent-Length");
    let sent = transmitted(&run(&mut e, Timestamp::ZERO, inbound(Bytes::from(with_require))));
    assert!(sent[0].starts_with("SIP/2.0 420 Bad Extension\r\n"), "{}", sent[0]);
    assert!(sent[0].contains("Unsupported: foo, bar"));
    let sent = transmitted(&run(&mut e, Timestamp::ZERO, inbound(request("NEWMETHOD", "z9hG4bK-n1"))));
    assert!(sent[0].starts_with("SIP/2.0 501 Not Implemented\r\n"), "{}", sent[0]);
    let sent = transmitted(&run(&mut e, Timestamp::ZERO, inbound(request("MESSAGE", "z9hG4bK-i1"))));
    assert!(sent.iter().any(|m| m.starts_with("SIP/2.0 405 Method Not Allowed\r\n")), "{sent:?}");
}

/// A new INVITE goes to the registrar with nothing sent yet; once routed (the caller
/// authenticated): 100 Trying and a call with one leg per contact. The caller's CANCEL reaches
/// the A-leg; in-dialog requests reach the leg their To tag names, or get 481; a leg that goes
/// down with the INVITE unanswered answers it 500.
#[test]
fn invites_are_routed_to_calls_and_legs() {
    let mut e = Endpoint::new(TimerConfig::default(), [0; 32]);
    let outs = run(&mut e, Timestamp::ZERO, inbound(request("INVITE", "z9hG4bK-call1")));
    assert!(transmitted(&outs).is_empty(), "nothing for a caller not yet authenticated: {outs:?}");
    let tx = routed_tx(&outs);
    let route = Route::extension("100", "101", vec![]);
    let outs = run(&mut e, Timestamp::ZERO, EndpointInput::Routed { tx, route });
    assert!(transmitted(&outs).iter().any(|m| m.starts_with("SIP/2.0 100 Trying\r\n")), "{outs:?}");
    let a = outs
        .iter()
        .find_map(|o| match o {
            EndpointOutput::StartCall(start) => Some(start.a),
            _ => None,
        })
        .expect("a call");
    assert_eq!(a.tag().len(), 32, "128 random bits");

    let cancel = String::from_utf8(request("CANCEL", "z9hG4bK-call1").to_vec()).unwrap();
    let outs = run(&mut e, Timestamp::ZERO, inbound(Bytes::from(cancel)));
    assert!(transmitted(&outs)[0].starts_with("SIP/2.0 200 OK\r\n"), "{outs:?}");
    assert!(outs.iter().any(|o| matches!(o, EndpointOutput::ToLeg { leg, input: SipIn::Cancel } if *leg == a)));

    let bye = |tag: &str| {
        let text = String::from_utf8(request("BYE", "z9hG4bK-bye1").to_vec()).unwrap();
        Bytes::from(text.replace("To: <sip:100@pbx>", &format!("To: <sip:100@pbx>;tag={tag}")))
    };
    let outs = run(&mut e, Timestamp::ZERO, inbound(bye(&a.tag())));
    assert!(outs.iter().any(|o| matches!(o, EndpointOutput::ToLeg { leg, input: SipIn::Request { .. } } if *leg == a)));
    let outs = run(&mut e, Timestamp::ZERO, inbound(bye(&LegId(0x999).tag()).slice(..).to_vec().into()));
    assert!(transmitted(&outs).is_empty(), "a retransmitted BYE is absorbed by its transaction");

    // The leg goes with the INVITE and the BYE unanswered (both in its mailbox): the INVITE
    // gets 500, the BYE 481, and neither transaction is left waiting for an answer.
    assert_eq!(e.transactions(), 3, "INVITE, CANCEL, BYE");
    let outs = run(&mut e, Timestamp::ZERO, EndpointInput::LegDown { leg: a });
    let sent = transmitted(&outs);
    assert!(sent[0].starts_with("SIP/2.0 500 Call Failed\r\n"), "{outs:?}");
    assert!(sent[1].starts_with("SIP/2.0 481"), "{sent:?}");
    let text = String::from_utf8(request("BYE", "z9hG4bK-bye2").to_vec()).unwrap();
    let stale = text.replace("To: <sip:100@pbx>", &format!("To: <sip:100@pbx>;tag={}", a.tag()));
    let outs = run(&mut e, Timestamp::ZERO, inbound(Bytes::from(stale)));
    assert!(transmitted(&outs)[0].starts_with("SIP/2.0 481"), "{outs:?}");
    run(&mut e, Timestamp::from_secs(40), EndpointInput::Timeout);
    assert_eq!(e.transactions(), 0, "every transaction ended by its timers");
}

/// The licence's limit on calls at once: a call beyond it gets 403 saying so, an emergency
/// number never does, and a call that ends makes room.
#[test]
fn licence_call_limit_refuses_beyond_it_but_not_emergency_numbers() {
    let mut e = Endpoint::new(TimerConfig::default(), [0; 32]);
    e.set_call_limit(Some(1));
    e.set_emergency_numbers(vec!["112".into()]);
    let call = |e: &mut Endpoint, branch: &str, callee: &str| {
        let outs = run(e, Timestamp::ZERO, inbound(request("INVITE", branch)));
        let tx = routed_tx(&outs);
        let route = Route::extension("100", callee, vec![]);
        run(e, Timestamp::ZERO, EndpointInput::Routed { tx, route })
    };
    let started = |outs: &[EndpointOutput]| {
        outs.iter().find_map(|o| match o {
            EndpointOutput::StartCall(start) => Some(start.a),
            _ => None,
        })
    };
    let first = call(&mut e, "z9hG4bK-l1", "101");
    let a = started(&first).expect("a call");
    assert_eq!(e.calls(), 1);
    let refused = transmitted(&call(&mut e, "z9hG4bK-l2", "102"));
    assert!(refused.iter().any(|m| m.starts_with("SIP/2.0 403 Licence limit: 1 concurrent calls\r\n")), "{refused:?}");
    let emergency = call(&mut e, "z9hG4bK-l3", "112");
    assert!(started(&emergency).is_some(), "{emergency:?}");
    assert_eq!(e.calls(), 2);
    run(&mut e, Timestamp::ZERO, EndpointInput::LegDown { leg: a });
    assert_eq!(e.calls(), 1);
    e.set_call_limit(Some(2));
    assert!(started(&call(&mut e, "z9hG4bK-l4", "103")).is_some());
}

fn handed_to_registrar(outs: &[EndpointOutput]) -> Option<u64> {
    outs.iter().find_map(|o| match o {
        EndpointOutput::Register { tx, .. } | EndpointOutput::Route { tx, .. } => Some(*tx),
        _ => None,
    })
}

/// An answer to a request that did not authenticate (a challenge) leaves once and keeps no
/// transaction: no Timer G retransmissions of a 407, and the request's retransmission is new
/// work for the registrar (a new challenge), not a replay of the old answer.
#[test]
fn unauthenticated_answers_are_stateless() {
    let mut e = Endpoint::new(TimerConfig::default(), [1; 32]);
    let invite = request("INVITE", "z9hG4bK-u1");
    let outs = run(&mut e, Timestamp::ZERO, inbound(invite.clone()));
    let tx = handed_to_registrar(&outs).expect("to the registrar");
    let Some(EndpointOutput::Route { request: req, .. }) =
        outs.iter().find(|o| matches!(o, EndpointOutput::Route { .. }))
    else {
        unreachable!()
    };
    let challenge = req.response(407, Some("t"));
    let outs = run(
        &mut e,
        Timestamp::from_millis(1),
        EndpointInput::RegistrarResponse { tx, response: challenge, authenticated: false },
    );
    assert_eq!(transmitted(&outs).len(), 1, "{outs:?}");
    assert!(transmitted(&outs)[0].starts_with("SIP/2.0 407"));
    assert_eq!(e.transactions(), 0, "nothing kept");
    assert_eq!(e.poll_timeout(), None, "no timer: nothing will be retransmitted");
    // Over the next minute nothing more leaves.
    for s in 1..60 {
        assert!(transmitted(&run(&mut e, Timestamp::from_secs(s), EndpointInput::Timeout)).is_empty());
    }
    // The retransmitted INVITE is asked about again.
    let outs = run(&mut e, Timestamp::from_secs(61), inbound(invite));
    assert!(handed_to_registrar(&outs).is_some());
}

/// A source's new requests beyond its burst are dropped unanswered and counted; another
/// source is not affected, and retransmissions of a transaction already held are not counted.
#[test]
fn new_requests_over_the_source_limit_are_dropped() {
    let mut e = Endpoint::new(TimerConfig::default(), [2; 32]);
    e.set_source_limit(SourceLimit { rate_per_s: 1, burst: 3 });
    let mut dropped = 0;
    for n in 0..10 {
        let outs = run(&mut e, Timestamp::ZERO, inbound(request("REGISTER", &format!("z9hG4bK-f{n}"))));
        if outs.iter().any(|o| matches!(o, EndpointOutput::Event(EndpointEvent::RateLimited { .. }))) {
            assert!(transmitted(&outs).is_empty() && handed_to_registrar(&outs).is_none());
            dropped += 1;
        }
    }
    assert_eq!(dropped, 7);
    // A retransmission of the first (held, at the registrar) is absorbed, not refused.
    let outs = run(&mut e, Timestamp::ZERO, inbound(request("REGISTER", "z9hG4bK-f0")));
    assert!(!outs.iter().any(|o| matches!(o, EndpointOutput::Event(EndpointEvent::RateLimited { .. }))));
    let other = EndpointInput::Inbound {
        bytes: request("REGISTER", "z9hG4bK-o1"),
        source: "127.0.0.2:5062".parse().unwrap(),
        transport: Transport::Udp,
        received: Timestamp::ZERO,
    };
    assert!(handed_to_registrar(&run(&mut e, Timestamp::ZERO, other)).is_some());
    // A second later the first source has a token again.
    let outs = run(&mut e, Timestamp::from_secs(1), inbound(request("REGISTER", "z9hG4bK-f99")));
    assert!(handed_to_registrar(&outs).is_some());
}

/// A `received=` the client wrote itself never steers the answer: it goes to the packet's
/// real source, with `received` rewritten to that address.
#[test]
fn client_supplied_received_is_overwritten() {
    let mut e = Endpoint::new(TimerConfig::default(), [3; 32]);
    let text = String::from_utf8(request("OPTIONS", "z9hG4bK-rv").to_vec())
        .unwrap()
        .replace(";rport\r\n", ";received=203.0.113.66\r\n");
    let outs = run(&mut e, Timestamp::ZERO, inbound(Bytes::from(text)));
    let destinations: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            EndpointOutput::Transmit { destination, .. } => Some(destination.ip().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(destinations, vec!["127.0.0.1".to_string()]);
    let sent = transmitted(&outs);
    assert!(sent[0].contains("received=127.0.0.1") && !sent[0].contains("203.0.113.66"), "{}", sent[0]);
}

/// Leg ids (pbx's tags, branches, B-leg Call-IDs) of consecutive calls share nothing: 128
/// random bits each, no counter to learn from one call the next.
#[test]
fn consecutive_calls_get_unrelated_leg_ids() {
    let mut e = Endpoint::new(TimerConfig::default(), [4; 32]);
    let mut ids = Vec::new();
    for n in 0..50 {
        let outs = run(&mut e, Timestamp::ZERO, inbound(request("INVITE", &format!("z9hG4bK-c{n}"))));
        let tx = handed_to_registrar(&outs).unwrap();
        let route = Route::extension("100", "101", vec![]);
        let outs = run(&mut e, Timestamp::ZERO, EndpointInput::Routed { tx, route });
        ids.extend(outs.iter().find_map(|o| match o {
            EndpointOutput::StartCall(s) => Some(s.a.0),
            _ => None,
        }));
    }
    assert_eq!(ids.len(), 50);
    for pair in ids.windows(2) {
        let distance = pair[0].abs_diff(pair[1]);
        assert!(distance > 1 << 64, "consecutive ids {:032x} {:032x} are close", pair[0], pair[1]);
        // About half of the 128 bits differ between two random ids; a counter flips a few.
        assert!((pair[0] ^ pair[1]).count_ones() > 32, "{:032x} {:032x}", pair[0], pair[1]);
    }
    // Another seed (another start) gives other ids.
    let mut other = Endpoint::new(TimerConfig::default(), [5; 32]);
    let outs = run(&mut other, Timestamp::ZERO, inbound(request("INVITE", "z9hG4bK-c0")));
    let tx = handed_to_registrar(&outs).unwrap();
    let route = Route::extension("100", "101", vec![]);
    let outs = run(&mut other, Timestamp::ZERO, EndpointInput::Routed { tx, route });
    assert!(outs.iter().any(|o| matches!(o, EndpointOutput::StartCall(s) if s.a.0 != ids[0])));
}

/// A CANCEL with the INVITE's branch but another Call-ID or From tag (a stranger guessing a
/// phone's branch) gets 481 and cancels nothing.
#[test]
fn cancel_must_be_of_the_invites_dialog_attempt() {
    let mut e = Endpoint::new(TimerConfig::default(), [6; 32]);
    let outs = run(&mut e, Timestamp::ZERO, inbound(request("INVITE", "z9hG4bK-cx")));
    let tx = handed_to_registrar(&outs).unwrap();
    let route = Route::extension("100", "101", vec![]);
    run(&mut e, Timestamp::ZERO, EndpointInput::Routed { tx, route });
    let cancel = String::from_utf8(request("CANCEL", "z9hG4bK-cx").to_vec()).unwrap();
    for forged in [cancel.replace("Call-ID: c-z9hG4bK-cx", "Call-ID: other"), cancel.replace("tag=f1", "tag=evil")] {
        let outs = run(&mut e, Timestamp::ZERO, inbound(Bytes::from(forged)));
        assert!(transmitted(&outs)[0].starts_with("SIP/2.0 481"), "{outs:?}");
        assert!(!outs.iter().any(|o| matches!(o, EndpointOutput::ToLeg { input: SipIn::Cancel, .. })));
    }
    let outs = run(&mut e, Timestamp::ZERO, inbound(Bytes::from(cancel)));
    assert!(outs.iter().any(|o| matches!(o, EndpointOutput::ToLeg { input: SipIn::Cancel, .. })));
}

/// Shard 1 of 2: its registrar transaction ids read back as shard 1, and every leg of a call
/// it starts (caller's and callee's) is one it owns, so the Call-ID pbx draws for a callee's
/// leg sends the callee's messages back to this shard (`super::shard`).
#[test]
fn a_shard_names_itself_in_its_tx_ids_and_legs() {
    use crate::endpoint::shard::{self, Shard};
    use crate::registrar::Binding;
    let shard = Shard::new(1, 2).unwrap();
    let mut e = Endpoint::new(TimerConfig::default(), [8; 32]);
    e.set_shard(shard);
    for n in 0..20 {
        let outs = run(&mut e, Timestamp::ZERO, inbound(request("INVITE", &format!("z9hG4bK-sh{n}"))));
        let tx = routed_tx(&outs);
        assert_eq!(shard::of_tx(tx, 2), 1, "tx {tx}");
        let contact = Binding {
            aor: "101".into(),
            contact: "sip:101@127.0.0.1:5070".into(),
            expires_at: Timestamp::from_secs(3600),
            call_id: "reg".into(),
            cseq: 1,
            source: "127.0.0.1:5070".parse().unwrap(),
            transport: Transport::Udp,
            user_agent: None,
            nat: false,
        };
        let route = Route {
            caller: "100".into(),
            caller_display_name: String::new(),
            callee: "101".into(),
            target: "101".into(),
            contacts: vec![contact.clone(), contact],
            room: false,
            forwards: Default::default(),
            intercom: false,
            pickup: None,
            replaces: None,
            park: None,
        };
        let outs = run(&mut e, Timestamp::ZERO, EndpointInput::Routed { tx, route });
        let start = outs
            .into_iter()
            .find_map(|o| match o {
                EndpointOutput::StartCall(start) => Some(start),
                _ => None,
            })
            .expect("a call");
        assert_eq!(start.forks.len(), 2);
        for leg in std::iter::once(start.a).chain(start.forks.iter().copied()) {
            assert!(shard.owns_leg(leg), "{leg}");
            assert_eq!(shard::of_call_id(leg.call_id().as_bytes(), 2), 1, "{leg}");
        }
    }
}

/// Two shards sharing the node's limiter bound a source as a whole: its burst of 4 is spent
/// across both, whichever shard each request reaches.
#[test]
fn shards_share_the_source_limit() {
    use crate::endpoint::limiter::SourceLimiter;
    use crate::endpoint::shard::Shard;
    let limiter = SourceLimiter::shared(SourceLimit { rate_per_s: 1, burst: 4 });
    let mut shards: Vec<Endpoint> = (0..2)
        .map(|index| {
            let mut e = Endpoint::new(TimerConfig::default(), [9; 32]);
            e.set_shard(Shard::new(index, 2).unwrap());
            e.share_source_limiter(limiter.clone());
            e
        })
        .collect();
    let mut admitted = 0;
    for n in 0..10 {
        let e = &mut shards[n % 2];
        let outs = run(e, Timestamp::ZERO, inbound(request("REGISTER", &format!("z9hG4bK-s{n}"))));
        admitted += usize::from(handed_to_registrar(&outs).is_some());
    }
    assert_eq!(admitted, 4, "the burst, once, across both shards");
}

/// A message that waited long after a quiet spell (the shard was descheduled, not
/// overloaded) is worked on, however long it waited: only a standing queue sheds.
#[test]
fn a_stall_alone_sheds_nothing() {
    let mut e = Endpoint::new(TimerConfig::default(), [0; 32]);
    let read_at = Timestamp::from_secs(10);
    for (n, waited_ms) in [(1, 300), (2, 2_000)] {
        let input = EndpointInput::Inbound {
            bytes: request("REGISTER", &format!("z9hG4bK-r{n}")),
            source: SRC.parse().unwrap(),
            transport: Transport::Udp,
            received: read_at,
        };
        e.handle(read_at + Duration::from_millis(waited_ms), input);
        let outs: Vec<_> = std::iter::from_fn(|| e.poll_output()).collect();
        assert!(handed_to_registrar(&outs).is_some(), "{outs:?}");
    }
}

/// A standing queue (every message waiting past the target for a whole interval) sheds new
/// REGISTERs and INVITEs without credentials even at short waits, a flow's second half only
/// past T1; once a message comes through at the target, new work is taken again.
#[test]
fn a_standing_queue_sheds_new_work_but_not_digest_responses() {
    use crate::endpoint::overload::{INTERVAL_MS, TARGET_MS};
    let mut e = Endpoint::new(TimerConfig::default(), [0; 32]);
    let start = Timestamp::from_secs(10);
    let wait = Duration::from_millis(TARGET_MS + 10);
    let taken = |e: &mut Endpoint, at: Timestamp, waited: Duration, bytes: Bytes| {
        let input = EndpointInput::Inbound {
            bytes,
            source: SRC.parse().unwrap(),
            transport: Transport::Udp,
            received: at - waited,
        };
        e.handle(at, input);
        std::iter::from_fn(|| e.poll_output()).collect::<Vec<_>>()
    };
    let mut at = start;
    for i in 0..2 * INTERVAL_MS / 10 + 1 {
        at = start + Duration::from_millis(i * 10);
        taken(&mut e, at, wait, request("OPTIONS", &format!("z9hG4bK-o{i}")));
    }
    let outs = taken(&mut e, at, wait, request("REGISTER", "z9hG4bK-r1"));
    assert!(handed_to_registrar(&outs).is_none(), "{outs:?}");
    assert!(transmitted(&outs)[0].starts_with("SIP/2.0 503 "), "{outs:?}");
    let outs = taken(&mut e, at, wait, request("INVITE", "z9hG4bK-i1"));
    assert!(handed_to_registrar(&outs).is_none(), "{outs:?}");
    assert!(outs.iter().any(|o| matches!(o, EndpointOutput::Event(EndpointEvent::Shed { method: "INVITE" }))));
    let with = |branch: &str| {
        let text = String::from_utf8(request("REGISTER", branch).to_vec()).unwrap();
        let credentials =
            "Authorization: Digest username=\"100\", realm=\"pbx\", nonce=\"n\", uri=\"sip:pbx\", response=\"0\"\r\n";
        Bytes::from(text.replacen("Max-Forwards", &format!("{credentials}Max-Forwards"), 1))
    };
    let outs = taken(&mut e, at, wait, with("z9hG4bK-r2"));
    assert!(handed_to_registrar(&outs).is_some(), "credentials pass a standing queue: {outs:?}");
    let stale = Duration::from_millis(SHED_CREDENTIALED_AFTER_MS + 1);
    let outs = taken(&mut e, at, stale, with("z9hG4bK-r4"));
    let sent = transmitted(&outs);
    assert!(
        handed_to_registrar(&outs).is_none() && sent[0].starts_with("SIP/2.0 503 "),
        "past T1 they go too: {outs:?}"
    );
    assert!(sent[0].contains(&format!("\r\nRetry-After: {OVERLOAD_RETRY_AFTER_S}\r\n")), "{}", sent[0]);
    assert!(outs.iter().any(|o| matches!(o, EndpointOutput::Event(EndpointEvent::Shed { method: "REGISTER" }))));
    taken(&mut e, at, Duration::from_millis(TARGET_MS), request("OPTIONS", "z9hG4bK-drained"));
    let outs = taken(&mut e, at, wait, request("REGISTER", "z9hG4bK-r3"));
    assert!(handed_to_registrar(&outs).is_some(), "drained: new work is taken again: {outs:?}");
}

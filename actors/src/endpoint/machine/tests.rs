use super::*;

const SRC: &str = "127.0.0.1:5062";

fn request(method: &str, branch: &str) -> Bytes {
    Bytes::from(format!(
        "{method} sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:100@pbx>;tag=f1\r\nTo: <sip:100@pbx>\r\nCall-ID: c-{branch}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn run(e: &mut Endpoint, now: Timestamp, input: EndpointInput) -> Vec<EndpointOutput> {
    e.handle(now, input);
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn inbound(bytes: Bytes) -> EndpointInput {
    EndpointInput::Inbound { bytes, source: SRC.parse().unwrap(), transport: Transport::Udp }
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
    let mut e = Endpoint::new(TimerConfig::default(), 0);
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
    let mut e = Endpoint::new(TimerConfig::default(), 0);
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
    let mut e = Endpoint::new(TimerConfig::default(), 0);
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
    let mut e = Endpoint::new(TimerConfig::default(), 0);
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
    let mut e = Endpoint::new(TimerConfig::default(), 0);
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

/// A new INVITE: 100 at once, then to the registrar; once routed, a call with one leg per
/// contact. The caller's CANCEL reaches the A-leg; in-dialog requests reach the leg their To
/// tag names, or get 481; a leg that goes down with the INVITE unanswered answers it 500.
#[test]
fn invites_are_routed_to_calls_and_legs() {
    let mut e = Endpoint::new(TimerConfig::default(), 0x100);
    let outs = run(&mut e, Timestamp::ZERO, inbound(request("INVITE", "z9hG4bK-call1")));
    assert!(transmitted(&outs)[0].starts_with("SIP/2.0 100 Trying\r\n"));
    let tx = outs
        .iter()
        .find_map(|o| match o {
            EndpointOutput::Route { tx, .. } => Some(*tx),
            _ => None,
        })
        .expect("handed to the registrar");
    let route =
        Route { caller: "100".into(), caller_display_name: String::new(), callee: "101".into(), contacts: vec![] };
    let outs = run(&mut e, Timestamp::ZERO, EndpointInput::Routed { tx, route });
    let [EndpointOutput::StartCall(start)] = &outs[..] else { panic!("{outs:?}") };
    assert_eq!(start.a, LegId(0x101));

    let cancel = String::from_utf8(request("CANCEL", "z9hG4bK-call1").to_vec()).unwrap();
    let outs = run(&mut e, Timestamp::ZERO, inbound(Bytes::from(cancel)));
    assert!(transmitted(&outs)[0].starts_with("SIP/2.0 200 OK\r\n"), "{outs:?}");
    assert!(outs.iter().any(|o| matches!(o, EndpointOutput::ToLeg { leg: LegId(0x101), input: SipIn::Cancel })));

    let bye = |tag: &str| {
        let text = String::from_utf8(request("BYE", "z9hG4bK-bye1").to_vec()).unwrap();
        Bytes::from(text.replace("To: <sip:100@pbx>", &format!("To: <sip:100@pbx>;tag={tag}")))
    };
    let outs = run(&mut e, Timestamp::ZERO, inbound(bye(&LegId(0x101).tag())));
    assert!(
        outs.iter().any(|o| matches!(o, EndpointOutput::ToLeg { leg: LegId(0x101), input: SipIn::Request { .. } }))
    );
    let outs = run(&mut e, Timestamp::ZERO, inbound(bye(&LegId(0x999).tag()).slice(..).to_vec().into()));
    assert!(transmitted(&outs).is_empty(), "a retransmitted BYE is absorbed by its transaction");

    // The leg goes with the INVITE and the BYE unanswered (both in its mailbox): the INVITE
    // gets 500, the BYE 481, and neither transaction is left waiting for an answer.
    assert_eq!(e.transactions(), 3, "INVITE, CANCEL, BYE");
    let outs = run(&mut e, Timestamp::ZERO, EndpointInput::LegDown { leg: LegId(0x101) });
    let sent = transmitted(&outs);
    assert!(sent[0].starts_with("SIP/2.0 500 Call Failed\r\n"), "{outs:?}");
    assert!(sent[1].starts_with("SIP/2.0 481"), "{sent:?}");
    let text = String::from_utf8(request("BYE", "z9hG4bK-bye2").to_vec()).unwrap();
    let stale = text.replace("To: <sip:100@pbx>", &format!("To: <sip:100@pbx>;tag={}", LegId(0x101).tag()));
    let outs = run(&mut e, Timestamp::ZERO, inbound(Bytes::from(stale)));
    assert!(transmitted(&outs)[0].starts_with("SIP/2.0 481"), "{outs:?}");
    run(&mut e, Timestamp::from_secs(40), EndpointInput::Timeout);
    assert_eq!(e.transactions(), 0, "every transaction ended by its timers");
}

/// The licence's limit on calls at once: a call beyond it gets 403 saying so, an emergency
/// number never does, and a call that ends makes room.
#[test]
fn licence_call_limit_refuses_beyond_it_but_not_emergency_numbers() {
    let mut e = Endpoint::new(TimerConfig::default(), 0x200);
    e.set_call_limit(Some(1));
    e.set_emergency_numbers(vec!["112".into()]);
    let call = |e: &mut Endpoint, branch: &str, callee: &str| {
        let outs = run(e, Timestamp::ZERO, inbound(request("INVITE", branch)));
        let tx = outs
            .iter()
            .find_map(|o| match o {
                EndpointOutput::Route { tx, .. } => Some(*tx),
                _ => None,
            })
            .expect("handed to the registrar");
        let route =
            Route { caller: "100".into(), caller_display_name: String::new(), callee: callee.into(), contacts: vec![] };
        run(e, Timestamp::ZERO, EndpointInput::Routed { tx, route })
    };
    let first = call(&mut e, "z9hG4bK-l1", "101");
    let [EndpointOutput::StartCall(start)] = &first[..] else { panic!("{first:?}") };
    let a = start.a;
    assert_eq!(e.calls(), 1);
    let refused = transmitted(&call(&mut e, "z9hG4bK-l2", "102"));
    assert!(refused[0].starts_with("SIP/2.0 403 Licence limit: 1 concurrent calls\r\n"), "{refused:?}");
    let emergency = call(&mut e, "z9hG4bK-l3", "112");
    assert!(matches!(&emergency[..], [EndpointOutput::StartCall(_)]), "{emergency:?}");
    assert_eq!(e.calls(), 2);
    run(&mut e, Timestamp::ZERO, EndpointInput::LegDown { leg: a });
    assert_eq!(e.calls(), 1);
    e.set_call_limit(Some(2));
    assert!(matches!(&call(&mut e, "z9hG4bK-l4", "103")[..], [EndpointOutput::StartCall(_)]));
}

use super::*;
use crate::registrar::Route;
use crate::sip::transaction::TimerConfig;

const SRC: &str = "127.0.0.1:5062";

fn request(method: &str, branch: &str, to_tag: Option<&str>) -> Bytes {
    let to = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    Bytes::from(format!(
        "{method} sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:100@pbx>;tag=f1\r\nTo: <sip:100@pbx>{to}\r\nCall-ID: c-call\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn inbound(bytes: Bytes) -> GlueInput<u32> {
    GlueInput::Endpoint(EndpointInput::Inbound {
        bytes,
        source: SRC.parse().unwrap(),
        transport: Transport::Udp,
        received: Timestamp::ZERO,
    })
}

fn run(g: &mut EndpointGlue<u32>, input: GlueInput<u32>, licence: &dyn CallLimit) -> Vec<Envelope<u32>> {
    g.handle(Timestamp::ZERO, input, licence);
    std::iter::from_fn(|| g.poll_envelope()).collect()
}

struct Limit(u32);

impl CallLimit for Limit {
    fn concurrent_calls(&self, _now: Timestamp) -> Option<u32> {
        Some(self.0)
    }
}

/// An INVITE through the registrar to a started call; returns the A-leg.
fn call(g: &mut EndpointGlue<u32>, branch: &str, licence: &dyn CallLimit) -> Option<CallStart> {
    let outs = run(g, inbound(request("INVITE", branch, None)), licence);
    let tx = outs
        .iter()
        .find_map(|o| match o {
            Envelope::Registrar(ForRegistrar::Route { tx, .. }) => Some(*tx),
            _ => None,
        })
        .expect("the INVITE is addressed to the registrar");
    let route = Route::extension("100", "101", vec![]);
    let outs = run(g, GlueInput::Endpoint(EndpointInput::Routed { tx, route }), licence);
    outs.into_iter().find_map(|o| match o {
        Envelope::Calls(start) => Some(*start),
        _ => None,
    })
}

fn to_legs(outs: &[Envelope<u32>]) -> Vec<(u32, LegId)> {
    outs.iter()
        .filter_map(|o| match o {
            Envelope::Leg { to, leg, .. } => Some((*to, *leg)),
            _ => None,
        })
        .collect()
}

/// What names a leg whose actor is still starting waits for it (at most
/// LEG_START_QUEUE_MAX), and reaches it, in order, through the handle it comes up with.
#[test]
fn a_starting_leg_gets_what_waited_for_it() {
    let mut g = EndpointGlue::<u32>::new(Endpoint::new(TimerConfig::default(), [0; 32]), Bugs::default());
    let a = call(&mut g, "z9hG4bK-c1", &None::<Limit>).expect("a call").a;
    assert_eq!(g.routed_legs(), 1);
    let outs = run(&mut g, inbound(request("CANCEL", "z9hG4bK-c1", None)), &None::<Limit>);
    assert!(to_legs(&outs).is_empty(), "the CANCEL waits: {outs:?}");
    // ACKs for a 2xx (no transaction of their own): the machine hands each to the leg.
    for n in 0..LEG_START_QUEUE_MAX + 4 {
        let outs = run(&mut g, inbound(request("ACK", &format!("z9hG4bK-k{n}"), Some(&a.tag()))), &None::<Limit>);
        assert!(to_legs(&outs).is_empty());
    }
    let outs = run(&mut g, GlueInput::LegUp { leg: a, to: 7 }, &None::<Limit>);
    assert_eq!(to_legs(&outs), vec![(7, a); LEG_START_QUEUE_MAX], "the queue is bounded");
    assert!(matches!(&outs[0], Envelope::Leg { input: SipIn::Cancel, .. }), "in order: {outs:?}");
    let outs = run(&mut g, inbound(request("BYE", "z9hG4bK-b1", Some(&a.tag()))), &None::<Limit>);
    assert_eq!(to_legs(&outs), vec![(7, a)], "once up, straight to the leg");
    let outs = run(&mut g, GlueInput::Endpoint(EndpointInput::LegDown { leg: a }), &None::<Limit>);
    assert_eq!(g.routed_legs(), 0);
    assert!(outs.iter().any(|o| matches!(o, Envelope::LegsRouted(0))), "{outs:?}");
}

/// A call the calls actor never took (`CallLost` with its legs): its legs leave the table and
/// the caller's INVITE gets its 500; a leg that is up stays (it hangs up on its own).
#[test]
fn a_lost_call_takes_down_the_legs_that_never_came_up() {
    let mut g = EndpointGlue::<u32>::new(Endpoint::new(TimerConfig::default(), [0; 32]), Bugs::default());
    let start = call(&mut g, "z9hG4bK-c2", &None::<Limit>).expect("a call");
    let outs = run(&mut g, GlueInput::CallLost { legs: start.legs() }, &None::<Limit>);
    assert_eq!(g.routed_legs(), 0);
    assert_eq!(g.machine().live_legs(), 0);
    let sent: Vec<String> = outs
        .iter()
        .filter_map(|o| match o {
            Envelope::Net { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        })
        .collect();
    assert!(sent.iter().any(|m| m.starts_with("SIP/2.0 500 Call Failed")), "{sent:?}");

    let b = call(&mut g, "z9hG4bK-c3", &None::<Limit>).expect("a call").a;
    run(&mut g, GlueInput::LegUp { leg: b, to: 1 }, &None::<Limit>);
    run(&mut g, GlueInput::CallLost { legs: vec![b] }, &None::<Limit>);
    assert_eq!((g.routed_legs(), g.machine().live_legs()), (1, 1));
}

/// The licence's limit is read as a call is routed: beyond it, no call starts.
#[test]
fn the_call_limit_is_read_for_each_call() {
    let mut g = EndpointGlue::<u32>::new(Endpoint::new(TimerConfig::default(), [0; 32]), Bugs::default());
    assert!(call(&mut g, "z9hG4bK-l1", &Limit(1)).is_some());
    assert!(call(&mut g, "z9hG4bK-l2", &Limit(1)).is_none());
    assert!(call(&mut g, "z9hG4bK-l3", &Limit(2)).is_some());
}

/// With the injected `unrouted_request` bug an in-dialog BYE never reaches its live leg
/// (without it, the test above shows it does).
#[cfg(feature = "sim-bugs")]
#[test]
fn the_injected_bug_drops_a_bye() {
    let mut bugs = Bugs::default();
    assert!(bugs.enable("unrouted-request"));
    let mut g = EndpointGlue::<u32>::new(Endpoint::new(TimerConfig::default(), [0; 32]), bugs);
    let a = call(&mut g, "z9hG4bK-c4", &None::<Limit>).expect("a call").a;
    run(&mut g, GlueInput::LegUp { leg: a, to: 3 }, &None::<Limit>);
    let outs = run(&mut g, inbound(request("INFO", "z9hG4bK-i1", Some(&a.tag()))), &None::<Limit>);
    assert_eq!(to_legs(&outs), vec![(3, a)]);
    let outs = run(&mut g, inbound(request("BYE", "z9hG4bK-b2", Some(&a.tag()))), &None::<Limit>);
    assert!(to_legs(&outs).is_empty(), "{outs:?}");
}

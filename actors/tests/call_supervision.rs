//! The call shells under supervision, on real actors and real RTP sockets: a leg actor that
//! dies mid-call takes the call down cleanly — the other side gets a BYE, the CDR is stored,
//! the RTP ports go back to the pool and no actor is left behind.

use bytes::Bytes;
use pbx_actors::Timestamp;
use pbx_actors::call::actor::{CallContext, CallsActor, CallsArgs, CallsMsg, LegMsg, SipPort};
use pbx_actors::call::b2bua::CallConfig;
use pbx_actors::call::{LegId, LocalSip, SipIn, SipOut};
use pbx_actors::cdr::{Cdr, CdrStore, Disposition, HangupSide};
use pbx_actors::endpoint::CallStart;
use pbx_actors::media::pool::PortPool;
use pbx_actors::media::relay::RelayConfig;
use pbx_actors::registrar::{Binding, Route};
use pbx_actors::sip::message::{self, Message, Method, Name};
use pbx_actors::sip::transaction::{TimerConfig, TransactionInput, TransactionOutput, Transactions};
use pbx_actors::sip::{Request, Transport};
use pbx_actors::time::Clock;
use ractor::{Actor, ActorRef};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

struct TestClock(std::time::Instant);

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp::ZERO + self.0.elapsed()
    }
}

/// Collects what legs send, and their actors.
struct Port {
    sent: mpsc::UnboundedSender<(LegId, SipOut)>,
    legs: Mutex<HashMap<LegId, ActorRef<LegMsg>>>,
}

impl SipPort for Port {
    fn send(&self, leg: LegId, out: SipOut) {
        let _ = self.sent.send((leg, out));
    }

    fn leg_up(&self, leg: LegId, actor: ActorRef<LegMsg>) {
        self.legs.lock().unwrap().insert(leg, actor);
    }

    fn leg_down(&self, leg: LegId) {
        self.legs.lock().unwrap().remove(&leg);
    }
}

#[derive(Default)]
struct Records(Mutex<Vec<Cdr>>);

impl CdrStore for Records {
    fn persist(&self, cdr: Cdr) -> Result<(), String> {
        self.0.lock().unwrap().push(cdr);
        Ok(())
    }
}

fn invite() -> (pbx_actors::sip::transaction::ServerKey, Request) {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let text = format!(
        "INVITE sip:101@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-sup1;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:100@127.0.0.1>;tag=alice\r\nTo: <sip:101@127.0.0.1>\r\nCall-ID: sup-1\r\n\
CSeq: 1 INVITE\r\nContact: <sip:100@127.0.0.1:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    let mut transactions = Transactions::new(TimerConfig::default());
    let message = message::parse_datagram(text.as_bytes()).unwrap();
    transactions.handle(
        Timestamp::ZERO,
        TransactionInput::Received { message, source: "127.0.0.1:5062".parse().unwrap(), transport: Transport::Udp },
    );
    while let Some(out) = transactions.poll_output() {
        if let TransactionOutput::Request { key, request, .. } = out {
            return (key, request);
        }
    }
    panic!("no request")
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(LegId, SipOut)>, what: &str) -> (LegId, SipOut) {
    tokio::time::timeout(WAIT, rx.recv()).await.unwrap_or_else(|_| panic!("no {what} in {WAIT:?}")).expect("open")
}

#[tokio::test]
async fn a_dead_leg_takes_its_call_down_cleanly() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let port = Arc::new(Port { sent: tx, legs: Mutex::new(HashMap::new()) });
    let records = Arc::new(Records::default());
    let pool = Arc::new(Mutex::new(PortPool::new(31_000, 31_099, 1)));
    let context = CallContext {
        config: CallConfig {
            no_answer: Duration::from_secs(30),
            timers: TimerConfig::default(),
            local_sip: LocalSip { address: "127.0.0.1:5060".parse().unwrap() },
            bugs: Default::default(),
        },
        clock: Arc::new(TestClock(std::time::Instant::now())),
        sip: port.clone(),
        cdrs: records.clone(),
        ports: pool.clone(),
        media_ip: "127.0.0.1".parse().unwrap(),
        relay: RelayConfig { inactivity: Duration::from_secs(60) },
    };
    let (calls, calls_handle) = Actor::spawn(None, CallsActor, CallsArgs { context, seed: 1 }).await.unwrap();
    let (key, request) = invite();
    let binding = Binding {
        aor: "101".into(),
        contact: "sip:101@127.0.0.1:5064".into(),
        expires_at: Timestamp::ZERO + Duration::from_secs(3600),
        call_id: "reg".into(),
        cseq: 1,
        source: "127.0.0.1:5064".parse().unwrap(),
        transport: Transport::Udp,
        user_agent: None,
    };
    let (a, b) = (LegId(0xa1), LegId(0xb1));
    calls
        .cast(CallsMsg::Start(Box::new(CallStart {
            a,
            key,
            invite: request,
            source: "127.0.0.1:5062".parse().unwrap(),
            transport: Transport::Udp,
            route: Route {
                caller: "100".into(),
                caller_display_name: String::new(),
                callee: "101".into(),
                contacts: vec![binding],
            },
            forks: vec![b],
        })))
        .unwrap();

    // The callee is invited and answers; pbx answers the caller.
    let (leg, out) = next(&mut rx, "INVITE to the callee").await;
    assert_eq!(leg, b);
    let SipOut::Request { request: b_invite, .. } = out else { panic!("{out:?}") };
    assert_eq!(b_invite.method, Method::INVITE);
    assert_eq!(pool.lock().unwrap().in_use(), 2, "two port pairs for the call");
    let mut ok = b_invite.response(200, Some("bob"));
    ok.headers.insert(Name::CONTACT, "<sip:101@127.0.0.1:5064>");
    ok.headers.insert(Name::CONTENT_TYPE, "application/sdp");
    ok.body = Bytes::from_static(
        b"v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 41000 RTP/AVP 0\r\n",
    );
    let Ok(Message::Response(ok)) = message::parse_datagram(&ok.to_bytes()) else { panic!("unparsable 200") };
    let b_actor = port.legs.lock().unwrap().get(&b).cloned().expect("the B-leg is up");
    b_actor.cast(LegMsg::Sip(SipIn::Response { response: ok })).unwrap();
    let mut answered = false;
    while !answered {
        match next(&mut rx, "the caller's 200").await {
            (leg, SipOut::Response { response, .. }) if leg == a && response.code == 200 => answered = true,
            (leg, SipOut::Request { request, .. }) if leg == b => assert_eq!(request.method, Method::ACK),
            other => panic!("unexpected {other:?}"),
        }
    }

    // The B-leg's actor dies. The caller gets a BYE, with nothing for the dead leg.
    b_actor.kill();
    let (leg, out) = next(&mut rx, "BYE to the caller").await;
    assert_eq!(leg, a);
    let SipOut::Request { request: bye, .. } = out else { panic!("{out:?}") };
    assert_eq!(bye.method, Method::BYE);
    let a_actor = port.legs.lock().unwrap().get(&a).cloned().expect("the A-leg is up");
    let Ok(Message::Response(done)) = message::parse_datagram(&bye.response(200, None).to_bytes()) else {
        panic!("unparsable 200")
    };
    a_actor.cast(LegMsg::Sip(SipIn::Response { response: done })).unwrap();

    // The call ends: its CDR is stored, its ports are free, no leg is left.
    let deadline = tokio::time::Instant::now() + WAIT;
    while records.0.lock().unwrap().is_empty() || pool.lock().unwrap().in_use() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the call did not end within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cdr = records.0.lock().unwrap()[0].clone();
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!(cdr.hangup, Some(HangupSide::Pbx));
    let list = calls.call(CallsMsg::List, Some(WAIT)).await.unwrap();
    assert!(matches!(list, ractor::rpc::CallResult::Success(ref l) if l.is_empty()), "no active call is left");
    assert!(port.legs.lock().unwrap().is_empty(), "every leg reported down");
    calls.stop(None);
    calls_handle.await.unwrap();
}

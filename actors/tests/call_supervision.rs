//! The call shells under supervision, on real actors and real RTP sockets: whichever actor of
//! a call dies mid-call — the media session, the call's actor, the calls actor — or the
//! endpoint is restarted, the call ends cleanly: the phones get a BYE, one CDR is stored, the
//! RTP ports go back to the pool and no actor is left behind.

use bytes::Bytes;
use pbx_actors::Timestamp;
use pbx_actors::call::CallStart;
use pbx_actors::call::actor::{CallContext, CallLedger, CallMsg, CallsActor, CallsArgs, CallsMsg, SipPort};
use pbx_actors::call::b2bua::CallConfig;
use pbx_actors::call::{LegId, LocalSip, SipIn, SipOut};
use pbx_actors::cdr::{Cdr, CdrStore, Disposition, HangupSide};
use pbx_actors::media::pool::PortPool;
use pbx_actors::media::relay::RelayConfig;
use pbx_actors::registrar::{Binding, Route};
use pbx_actors::shell::Control;
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

/// Collects what legs send, and the actors that run them.
struct Port {
    sent: mpsc::UnboundedSender<(LegId, SipOut)>,
    legs: Mutex<HashMap<LegId, ActorRef<CallMsg>>>,
    adopted: Mutex<Vec<LegId>>,
}

impl SipPort for Port {
    fn send(&self, leg: LegId, out: SipOut) {
        let _ = self.sent.send((leg, out));
    }

    fn leg_up(&self, leg: LegId, actor: ActorRef<CallMsg>) {
        self.legs.lock().unwrap().insert(leg, actor);
    }

    fn leg_down(&self, leg: LegId) {
        self.legs.lock().unwrap().remove(&leg);
    }

    fn adopt(&self, leg: LegId, actor: ActorRef<CallMsg>) {
        self.adopted.lock().unwrap().push(leg);
        self.legs.lock().unwrap().insert(leg, actor);
    }

    fn call_lost(&self, legs: &[LegId]) {
        // Legs that came up report themselves down once they have hung up.
        let _ = legs;
    }
}

#[derive(Default)]
struct Records(Mutex<Vec<Cdr>>);

impl CdrStore for Records {
    fn persist(&self, cdr: Cdr) -> Result<(), pbx_actors::store::StoreError> {
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

const A: LegId = LegId(0xa1);
const B: LegId = LegId(0xb1);

/// A calls actor with one answered call between a caller (leg A) and a callee (leg B).
struct Answered {
    rx: mpsc::UnboundedReceiver<(LegId, SipOut)>,
    port: Arc<Port>,
    records: Arc<Records>,
    pool: Arc<Mutex<PortPool>>,
    context: CallContext,
    ledger: CallLedger,
    calls: ActorRef<CallsMsg>,
    calls_handle: ractor::concurrency::JoinHandle<()>,
}

impl Answered {
    async fn start() -> Answered {
        let (mut call, b_invite) = Answered::ringing().await;
        let mut ok = b_invite.response(200, Some("bob"));
        ok.headers.insert(Name::CONTACT, "<sip:101@127.0.0.1:5064>");
        ok.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        ok.body = Bytes::from_static(
            b"v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 41000 RTP/AVP 0\r\n",
        );
        call.to_b(&ok);
        let mut answered = false;
        while !answered {
            match next(&mut call.rx, "the caller's 200").await {
                (leg, SipOut::Response { response, .. }) if leg == A && response.code == 200 => answered = true,
                (leg, SipOut::Request { request, .. }) if leg == B => assert_eq!(request.method, Method::ACK),
                other => panic!("unexpected {other:?}"),
            }
        }
        call
    }

    /// The B-leg's phone sends `response` (made by `Request::response`) to its leg.
    fn to_b(&self, response: &message::Response) {
        let Ok(Message::Response(response)) = message::parse_datagram(&response.to_bytes()) else {
            panic!("unparsable response")
        };
        self.leg(B).cast(CallMsg::Sip { leg: B, input: Box::new(SipIn::Response { response }) }).unwrap();
    }

    /// A calls actor with one call whose callee (leg B) was invited and not answered yet;
    /// the INVITE it got.
    async fn ringing() -> (Answered, Request) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let port = Arc::new(Port { sent: tx, legs: Mutex::new(HashMap::new()), adopted: Mutex::default() });
        let records = Arc::new(Records::default());
        let pool = Arc::new(Mutex::new(PortPool::new(31_000, 31_099, 1)));
        let context = CallContext {
            config: CallConfig {
                no_answer: Duration::from_secs(30),
                timers: TimerConfig::default(),
                local_sip: LocalSip { address: "127.0.0.1:5060".parse().unwrap(), tls: None },
                bugs: Default::default(),
                park_timeout: Duration::from_secs(45),
            },
            clock: Arc::new(TestClock(std::time::Instant::now())),
            sip: port.clone(),
            cdrs: records.clone(),
            ports: pool.clone(),
            media_ip: "127.0.0.1".parse().unwrap(),
            relay: RelayConfig { inactivity: Duration::from_secs(60) },
            conferences: Default::default(),
            media_policy: Default::default(),
            push: None,
            transfers: None,
        };
        let ledger = CallLedger::default();
        let args = CallsArgs { context: context.clone(), seed: 1, ledger: ledger.clone() };
        let (calls, calls_handle) = Actor::spawn(None, CallsActor, args).await.unwrap();
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
            nat: false,
        };
        calls
            .cast(CallsMsg::Start(Box::new(CallStart {
                a: A,
                key,
                invite: request,
                source: "127.0.0.1:5062".parse().unwrap(),
                transport: Transport::Udp,
                route: Route {
                    caller: "100".into(),
                    caller_display_name: String::new(),
                    callee: "101".into(),
                    target: "101".into(),
                    contacts: vec![binding],
                    room: false,
                    forwards: Default::default(),
                    intercom: false,
                    pickup: None,
                    replaces: None,
                    park: None,
                },
                forks: vec![B],
            })))
            .unwrap();

        // The callee is invited.
        let (leg, out) = next(&mut rx, "INVITE to the callee").await;
        assert_eq!(leg, B);
        let SipOut::Request { request: b_invite, .. } = out else { panic!("{out:?}") };
        assert_eq!(b_invite.method, Method::INVITE);
        assert_eq!(pool.lock().unwrap().in_use(), 2, "two port pairs for the call");
        (Answered { rx, port, records, pool, context, ledger, calls, calls_handle }, b_invite)
    }

    fn leg(&self, leg: LegId) -> ActorRef<CallMsg> {
        self.port.legs.lock().unwrap().get(&leg).cloned().unwrap_or_else(|| panic!("leg {leg} is up"))
    }

    /// The next BYE each of `legs` sends, answered 200 by its phone.
    async fn byes(&mut self, legs: &[LegId]) {
        let mut waiting = legs.to_vec();
        while !waiting.is_empty() {
            let (leg, out) = next(&mut self.rx, "a BYE").await;
            let SipOut::Request { request: bye, .. } = out else { panic!("{leg}: {out:?}") };
            assert_eq!(bye.method, Method::BYE, "{leg}");
            assert!(waiting.contains(&leg), "a BYE from {leg}, wanted {waiting:?}");
            waiting.retain(|l| *l != leg);
            let Ok(Message::Response(done)) = message::parse_datagram(&bye.response(200, None).to_bytes()) else {
                panic!("unparsable 200")
            };
            self.leg(leg).cast(CallMsg::Sip { leg, input: Box::new(SipIn::Response { response: done }) }).unwrap();
        }
    }

    /// The call has ended with one CDR, its ports are free and every leg is down.
    async fn ended(&self) -> Cdr {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.records.0.lock().unwrap().is_empty()
            || self.pool.lock().unwrap().in_use() > 0
            || !self.port.legs.lock().unwrap().is_empty()
        {
            assert!(tokio::time::Instant::now() < deadline, "the call did not end within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let records = self.records.0.lock().unwrap().clone();
        assert_eq!(records.len(), 1, "one CDR: {records:?}");
        records[0].clone()
    }

    async fn no_call_left(&self) {
        let list = self.calls.call(CallsMsg::List, Some(WAIT)).await.unwrap();
        assert!(matches!(list, ractor::rpc::CallResult::Success(ref l) if l.is_empty()), "no active call is left");
    }

    async fn stop(self) {
        self.calls.stop(None);
        self.calls_handle.await.unwrap();
    }
}

/// The call's actor is killed mid-call (no panic, no `post_stop`): the calls actor hangs its
/// legs up (BYE both sides), the CDR says `failed`, the ports are free.
#[tokio::test]
async fn a_killed_call_actor_ends_its_call_with_bye_both_sides() {
    let mut call = Answered::start().await;
    call.leg(A).kill();
    call.byes(&[A, B]).await;
    let cdr = call.ended().await;
    assert_eq!(cdr.disposition, Disposition::Failed { reason: "call failed".into() });
    assert_eq!(cdr.hangup, Some(HangupSide::Pbx));
    call.no_call_left().await;
    call.stop().await;
}

/// The call's actor panics mid-call: the calls actor hangs up its legs, left in the ledger
/// (BYE both sides), and writes a `failed` CDR, once.
#[tokio::test]
async fn a_panicking_call_actor_ends_its_call_with_bye_both_sides() {
    let mut call = Answered::start().await;
    let hit = call.calls.call(|reply| CallsMsg::PanicCall { media: false, reply }, Some(WAIT)).await.unwrap();
    assert!(matches!(hit, ractor::rpc::CallResult::Success(true)));
    call.byes(&[A, B]).await;
    let cdr = call.ended().await;
    assert_eq!(cdr.disposition, Disposition::Failed { reason: "call failed".into() });
    assert_eq!(cdr.hangup, Some(HangupSide::Pbx));
    call.no_call_left().await;
    call.stop().await;
}

/// The call's actor panics while the callee rings: the calls actor hangs up its legs however
/// far they got — 500 to the caller's INVITE, CANCEL to the callee's — and writes a `failed` CDR.
#[tokio::test]
async fn a_panicking_call_actor_while_ringing_answers_500_and_cancels() {
    let (mut call, b_invite) = Answered::ringing().await;
    call.to_b(&b_invite.response(180, Some("bob")));
    let (leg, out) = next(&mut call.rx, "the caller's 180").await;
    assert!(leg == A && matches!(&out, SipOut::Response { response, .. } if response.code == 180), "{leg}: {out:?}");
    let hit = call.calls.call(|reply| CallsMsg::PanicCall { media: false, reply }, Some(WAIT)).await.unwrap();
    assert!(matches!(hit, ractor::rpc::CallResult::Success(true)));
    let (mut refused, mut cancelled) = (false, false);
    while !(refused && cancelled) {
        match next(&mut call.rx, "the caller's 500 and the callee's CANCEL").await {
            (leg, SipOut::Response { response, .. }) if leg == A && response.code == 500 => refused = true,
            (leg, SipOut::Request { request, .. }) if leg == B && request.method == Method::CANCEL => cancelled = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    call.to_b(&b_invite.response(487, Some("bob")));
    let cdr = call.ended().await;
    assert_eq!(cdr.disposition, Disposition::Failed { reason: "call failed".into() });
    call.no_call_left().await;
    call.stop().await;
}

/// The media session panics: the call ends, BYE both sides, `failed` CDR naming it.
#[tokio::test]
async fn a_panicking_media_session_ends_its_call() {
    let mut call = Answered::start().await;
    let hit = call.calls.call(|reply| CallsMsg::PanicCall { media: true, reply }, Some(WAIT)).await.unwrap();
    assert!(matches!(hit, ractor::rpc::CallResult::Success(true)));
    call.byes(&[A, B]).await;
    let cdr = call.ended().await;
    assert_eq!(cdr.disposition, Disposition::Failed { reason: "media session failed".into() });
    call.no_call_left().await;
    call.stop().await;
}

/// The calls actor panics: its call actors die with it, and the calls actor started next (same
/// ledger) hangs up their legs, writes each call's `failed` CDR and starts empty.
#[tokio::test]
async fn a_restarted_calls_actor_ends_the_calls_it_had() {
    let mut call = Answered::start().await;
    call.calls.cast(CallsMsg::Control(Control::Panic)).unwrap();
    call.calls_handle.await.unwrap();
    assert!(call.records.0.lock().unwrap().is_empty(), "nothing written before the restart");
    let args = CallsArgs { context: call.context.clone(), seed: 2, ledger: call.ledger.clone() };
    let (calls, calls_handle) = Actor::spawn(None, CallsActor, args).await.unwrap();
    (call.calls, call.calls_handle) = (calls, calls_handle);
    call.byes(&[A, B]).await;
    let cdr = call.ended().await;
    assert_eq!(cdr.disposition, Disposition::Failed { reason: "calls actor restarted".into() });
    call.no_call_left().await;
    call.stop().await;
}

/// The endpoint restarted: every call re-announces its legs to the new one and ends through
/// it, BYE both sides, `failed` CDR.
#[tokio::test]
async fn calls_end_when_the_endpoint_restarts() {
    let mut call = Answered::start().await;
    call.calls.cast(CallsMsg::EndpointRestarted).unwrap();
    call.byes(&[A, B]).await;
    let mut adopted = call.port.adopted.lock().unwrap().clone();
    adopted.sort();
    assert_eq!(adopted, [A, B], "both legs re-announced before their BYEs");
    let cdr = call.ended().await;
    assert_eq!(cdr.disposition, Disposition::Failed { reason: "SIP endpoint restarted".into() });
    call.no_call_left().await;
    call.stop().await;
}

use super::*;
use std::sync::{Arc, Mutex};

fn softphone() -> SocketAddr {
    "198.51.100.7:50123".parse().unwrap()
}

fn pbx() -> SocketAddr {
    "203.0.113.5:4433".parse().unwrap()
}

fn reader() -> Reader {
    Reader::new(softphone(), pbx(), "PBX-1".into())
}

fn seen(user: &str, push_token: Option<&str>) -> Tell {
    Tell::Seen(SessionSeen {
        softphone: softphone(),
        pbx: pbx(),
        pbx_serial: "PBX-1".into(),
        user: user.into(),
        push_token: push_token.map(String::from),
    })
}

fn called(user: &str, destination: &str) -> Tell {
    Tell::Destination { pbx_serial: "PBX-1".into(), user: user.into(), destination: destination.into() }
}

fn register(user: &str, contact_params: &str) -> String {
    format!(
        "REGISTER sip:pbx.example SIP/2.0\r\n\
         Via: SIP/2.0/TLS 198.51.100.7:50123;branch=z9hG4bK-1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@pbx.example>;tag=a1\r\n\
         To: <sip:{user}@pbx.example>\r\n\
         Call-ID: reg-1\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@198.51.100.7:50123;transport=tls{contact_params}>\r\n\
         Authorization: Digest username=\"secret-user\", realm=\"pbx\", nonce=\"n0nce\", uri=\"sip:pbx.example\", response=\"secret-response\", algorithm=MD5\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn invite(to: &str, from: &str, to_tag: &str) -> String {
    format!(
        "INVITE sip:201@pbx.example SIP/2.0\r\n\
         Via: SIP/2.0/TLS 198.51.100.7:50123;branch=z9hG4bK-2\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{from}@pbx.example>;tag=b2\r\n\
         To: {to}{to_tag}\r\n\
         Call-ID: call-1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:{from}@198.51.100.7:50123;transport=tls>\r\n\
         Proxy-Authorization: Digest username=\"secret-user\", response=\"secret-response\"\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The PBX's answer to the REGISTER of [`register`] (Call-ID `reg-1`, CSeq 1).
fn register_answer(code: u16) -> String {
    format!(
        "SIP/2.0 {code} Whatever\r\n\
         Via: SIP/2.0/TLS 198.51.100.7:50123;branch=z9hG4bK-1\r\n\
         From: <sip:1001@pbx.example>;tag=a1\r\n\
         To: <sip:1001@pbx.example>;tag=r1\r\n\
         Call-ID: reg-1\r\n\
         CSeq: 1 REGISTER\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The softphone's REGISTER for `user` and the PBX's 200 to it: what the reader told.
fn registered(r: &mut Reader, user: &str, params: &str, at: Instant) -> Vec<Tell> {
    let mut told = r.read(register(user, params).as_bytes(), at);
    told.extend(r.read_from_pbx(register_answer(200).as_bytes(), at));
    told
}

/// A REGISTER the PBX does not accept (a stranger's made-up user, a wrong password: 401, 403)
/// leaves nothing: no session, and the connection's INVITEs record no destination.
#[test]
fn only_a_register_the_pbx_accepted_makes_a_session() {
    let mut r = reader();
    let t0 = Instant::now();
    assert!(r.read(register("9999", ";pn-prid=guess").as_bytes(), t0).is_empty(), "not before the answer");
    for code in [401, 403, 100] {
        assert!(r.read_from_pbx(register_answer(code).as_bytes(), t0).is_empty(), "{code}");
    }
    assert!(r.read(invite("\"Anna\" <sip:201@pbx.example>", "9999", "").as_bytes(), t0).is_empty());
    assert!(r.read(OPTIONS.as_bytes(), t0).is_empty());
    let other_call = register_answer(200).replace("reg-1", "reg-2");
    assert!(r.read_from_pbx(other_call.as_bytes(), t0).is_empty(), "a 200 of another Call-ID");
    assert_eq!(r.read_from_pbx(register_answer(200).as_bytes(), t0), [seen("9999", Some("guess"))]);
    assert!(r.read_from_pbx(register_answer(200).as_bytes(), t0).is_empty(), "once");
}

const OPTIONS: &str = "OPTIONS sip:pbx.example SIP/2.0\r\n\
     Via: SIP/2.0/TLS 198.51.100.7:50123;branch=z9hG4bK-3\r\n\
     Max-Forwards: 70\r\n\
     From: <sip:anyone@pbx.example>;tag=c3\r\n\
     To: <sip:pbx.example>\r\n\
     Call-ID: opt-1\r\n\
     CSeq: 1 OPTIONS\r\n\
     Content-Length: 0\r\n\r\n";

const RESPONSE: &str = "SIP/2.0 200 OK\r\n\
     Via: SIP/2.0/TLS 203.0.113.5:4433;branch=z9hG4bK-9\r\n\
     From: <sip:1002@pbx.example>;tag=p1\r\n\
     To: <sip:1001@pbx.example>;tag=q1\r\n\
     Call-ID: in-1\r\n\
     CSeq: 1 INVITE\r\n\
     Content-Length: 0\r\n\r\n";

/// A REGISTER tells the user (the To user) and the push token (the Contact's pn-prid); nothing
/// of its Authorization header reaches the ledger. Before it, other messages tell nothing;
/// after it they are uses, told at most every 30 s unless the token changes.
#[test]
fn a_register_tells_the_user_and_the_push_token() {
    let mut r = reader();
    let t0 = Instant::now();
    assert!(r.read(OPTIONS.as_bytes(), t0).is_empty(), "no user known yet");
    assert!(r.read(RESPONSE.as_bytes(), t0).is_empty());
    let told = registered(&mut r, "1001", ";pn-provider=fcm;pn-param=proj;pn-prid=tok:en-1", t0);
    assert_eq!(told, [seen("1001", Some("tok:en-1"))]);
    assert!(!format!("{told:?}").contains("secret") && !format!("{told:?}").contains("n0nce"));
    assert!(r.read(OPTIONS.as_bytes(), t0 + SEEN_EVERY - Duration::from_millis(1)).is_empty(), "within 30 s");
    assert_eq!(r.read(RESPONSE.as_bytes(), t0 + SEEN_EVERY), [seen("1001", Some("tok:en-1"))], "30 s later");
    let told = registered(&mut r, "1001", "", t0 + SEEN_EVERY);
    assert_eq!(told, [seen("1001", None)], "the token is gone: told at once");
}

/// An INVITE outside a dialog tells the destination — Request-URI user and To display name,
/// quotes removed — and a use, once per Call-ID; a re-INVITE (To with a tag) only a use; without a display name
/// the destination is the number; without an accepted REGISTER nothing is recorded.
#[test]
fn an_invite_tells_its_destination() {
    let mut r = reader();
    let t0 = Instant::now();
    registered(&mut r, "1001", "", t0);
    let told = r.read(invite("\"Anna Schmidt\" <sip:201@pbx.example>", "1001", "").as_bytes(), t0);
    assert_eq!(told, [called("1001", "Anna Schmidt <201>")]);
    assert!(!format!("{told:?}").contains("secret"));
    let told = r.read(invite("\"Anna Schmidt\" <sip:201@pbx.example>", "1001", "").as_bytes(), t0);
    assert!(told.is_empty(), "the INVITE again (with credentials, same Call-ID): the same call");
    let later = t0 + SEEN_EVERY;
    let reinvite = invite("\"Anna Schmidt\" <sip:201@pbx.example>", "1001", ";tag=x9").replace("call-1", "call-2");
    let told = r.read(reinvite.as_bytes(), later);
    assert_eq!(told, [seen("1001", None)], "a re-INVITE is no new call");
    assert!(reader().read(invite("<sip:201@pbx.example>", "1002", "").as_bytes(), t0).is_empty());
    let mut r = reader();
    registered(&mut r, "1002", "", t0);
    let told = r.read(invite("<sip:201@pbx.example>", "1002", "").as_bytes(), t0 + SEEN_EVERY);
    assert_eq!(told, [called("1002", "201"), seen("1002", None)]);
}

/// Display names as people read them; a long one is cut so that the destination fits the
/// ledger's bound, at a character boundary.
#[test]
fn display_names_are_cleaned() {
    assert_eq!(display_name("\"Anna Schmidt\""), "Anna Schmidt");
    assert_eq!(display_name("Anna   Schmidt "), "Anna Schmidt");
    assert_eq!(display_name("\"A \\\"Nick\\\" B\""), "A \"Nick\" B");
    assert_eq!(display_name("\"<evil>\t\""), "evil");
    let text = invite(&format!("\"{}\" <sip:201@pbx.example>", "ä".repeat(300)), "1001", "");
    let Ok(Message::Request(request)) = parse_datagram(text.as_bytes()) else { panic!("parses") };
    let d = destination(&request).unwrap();
    assert!(d.len() <= DESTINATION_BYTES_MAX && d.ends_with("ä <201>"), "{} bytes: {d}", d.len());
}

/// Malformed bytes never panic and tell nothing wrong: garbage, cut-off messages and
/// thousands of random mutations of a REGISTER and an INVITE; whatever is told fits the
/// ledger's bounds and never carries the Authorization header's values.
#[test]
fn malformed_bytes_are_ignored() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let goods = [register("1001", ";pn-prid=x").into_bytes(), invite("\"A\" <sip:201@p>", "1001", "").into_bytes()];
    let mut cases: Vec<Vec<u8>> = vec![Vec::new(), b"\r\n\r\n".to_vec(), vec![0xff; 100], b"REGISTER".to_vec()];
    for good in &goods {
        cases.extend((0..good.len()).step_by(5).map(|n| good[..n].to_vec()));
        for _ in 0..3_000 {
            let mut m = good.clone();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..m.len());
                m[i] = rng.random();
            }
            cases.push(m);
        }
    }
    let mut r = reader();
    let t0 = Instant::now();
    for (n, case) in cases.iter().enumerate() {
        for tell in r.read(case, t0 + SEEN_EVERY * n as u32) {
            let text = format!("{tell:?}");
            assert!(!text.contains("secret") && !text.contains("n0nce"), "{text}");
            match tell {
                Tell::Seen(s) => assert!(!s.user.is_empty() && s.user.len() <= USER_BYTES_MAX),
                Tell::Destination { destination, .. } => assert!(destination.len() <= DESTINATION_BYTES_MAX),
            }
        }
    }
}

/// One connection registers a few users at most; more are ignored.
#[test]
fn a_connection_registers_a_few_users_at_most() {
    let mut r = reader();
    let t0 = Instant::now();
    let told: Vec<Tell> =
        (0..USERS_PER_CONNECTION_MAX + 2).flat_map(|n| registered(&mut r, &format!("{}", 2000 + n), "", t0)).collect();
    assert_eq!(told.len(), USERS_PER_CONNECTION_MAX, "{told:?}");
}

/// A ledger that writes down what it is told.
struct FakeLedger;

impl Actor for FakeLedger {
    type Msg = LedgerMsg;
    type State = Arc<Mutex<Vec<String>>>;
    type Arguments = Arc<Mutex<Vec<String>>>;

    async fn pre_start(&self, _me: ActorRef<LedgerMsg>, told: Self::State) -> Result<Self::State, ActorProcessingErr> {
        Ok(told)
    }

    async fn handle(
        &self,
        _me: ActorRef<LedgerMsg>,
        msg: LedgerMsg,
        told: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let entry = match msg {
            LedgerMsg::Seen(s) => format!("seen {} {:?}", s.user, s.push_token),
            LedgerMsg::Destination { user, destination, .. } => format!("called {user} {destination}"),
            _ => "other".into(),
        };
        told.lock().unwrap().push(entry);
        Ok(())
    }
}

/// The actor: what the softphone sends reaches the ledger; garbage does not stop it.
#[tokio::test]
async fn the_actor_tells_the_ledger() {
    let told = Arc::new(Mutex::new(Vec::new()));
    let (ledger, _) = Actor::spawn(None, FakeLedger, told.clone()).await.unwrap();
    let session =
        spawn(SessionArgs { softphone: softphone(), pbx: pbx(), pbx_serial: "PBX-1".into(), ledger }).await.unwrap();
    session.cast(SessionMsg::FromPhone(Bytes::from_static(b"\xff\xfe garbage"))).unwrap();
    session.cast(SessionMsg::FromPhone(register("1001", ";pn-prid=tok").into())).unwrap();
    session.cast(SessionMsg::FromPbx(register_answer(200).into())).unwrap();
    session.cast(SessionMsg::FromPhone(invite("\"Anna\" <sip:201@pbx.example>", "1001", "").into())).unwrap();
    let want = ["seen 1001 Some(\"tok\")", "called 1001 Anna <201>"];
    for _ in 0..500 {
        if told.lock().unwrap().len() >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*told.lock().unwrap(), want);
    session.stop(None);
}

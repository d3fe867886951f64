//! The registrar machine on virtual time: no runtime, no clock, every digest computed here
//! from RFC 7616's formulas, independently of `digest.rs`.

use super::forwarding::Forwarding;
use super::machine::*;
use crate::sip::message::{Message, Name, parse_datagram};
use crate::sip::{Request, Response, Transport};
use crate::time::Timestamp;
use sha2::Digest;
use std::net::SocketAddr;
use std::time::Duration;

pub(super) const PASSWORD_100: &str = "secret-100";
pub(super) const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

pub(super) fn source() -> SocketAddr {
    "192.0.2.7:5060".parse().unwrap()
}

fn h(algorithm: &str, data: &str) -> String {
    match algorithm {
        "MD5" => hex::encode(md5::Md5::digest(data.as_bytes())),
        "SHA-256" => hex::encode(sha2::Sha256::digest(data.as_bytes())),
        other => panic!("no such algorithm {other}"),
    }
}

/// One `WWW-Authenticate: Digest` challenge, read with a parser of the test's own.
#[derive(Debug, Clone)]
pub(super) struct Challenge {
    pub names: Vec<String>,
    pub algorithm: String,
    pub realm: String,
    pub nonce: String,
    pub opaque: String,
    pub stale: bool,
}

pub(super) fn challenges(response: &Response) -> Vec<Challenge> {
    challenges_in(response, &Name::WWW_AUTHENTICATE)
}

/// The Digest challenges in one header (WWW- or Proxy-Authenticate).
fn challenges_in(response: &Response, header: &Name) -> Vec<Challenge> {
    response
        .headers
        .get_raw(header)
        .map(|v| {
            let params = v.as_str().strip_prefix("Digest ").expect("a Digest challenge");
            let mut c = Challenge {
                names: vec![],
                algorithm: String::new(),
                realm: String::new(),
                nonce: String::new(),
                opaque: String::new(),
                stale: false,
            };
            for param in params.split(", ") {
                let (name, value) = param.split_once('=').expect("name=value");
                let value = value.trim_matches('"').to_owned();
                c.names.push(name.to_owned());
                match name {
                    "algorithm" => c.algorithm = value,
                    "realm" => c.realm = value,
                    "nonce" => c.nonce = value,
                    "opaque" => c.opaque = value,
                    "stale" => c.stale = value == "true",
                    _ => {}
                }
            }
            c
        })
        .collect()
}

/// The challenge for `algorithm` in a 401.
pub(super) fn challenge_for(response: &Response, algorithm: &str) -> Challenge {
    assert_eq!(response.code, 401, "expected a challenge");
    challenges(response).into_iter().find(|c| c.algorithm == algorithm).expect("challenge for the algorithm")
}

/// `Authorization` for `qop=auth` (RFC 7616 §3.4.1), built from HA1 and HA2 by hand.
pub(super) fn authorization(c: &Challenge, user: &str, password: &str, nc: u32) -> String {
    digest_answer(c, user, password, "REGISTER", "sip:pbx", nc)
}

/// A `qop=auth` answer for `method` with digest `uri` (RFC 7616 §3.4.1).
fn digest_answer(c: &Challenge, user: &str, password: &str, method: &str, uri: &str, nc: u32) -> String {
    let cnonce = "0a4f113b";
    let ha1 = h(&c.algorithm, &format!("{user}:{}:{password}", c.realm));
    let ha2 = h(&c.algorithm, &format!("{method}:{uri}"));
    let nc = format!("{nc:08x}");
    let response = h(&c.algorithm, &format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce));
    format!(
        r#"Digest username="{user}", realm="{}", nonce="{}", uri="{uri}", response="{response}", algorithm={}, opaque="{}", qop=auth, nc={nc}, cnonce="{cnonce}""#,
        c.realm, c.nonce, c.algorithm, c.opaque
    )
}

/// `Authorization` the RFC 2617 way without qop: `H(HA1:nonce:HA2)`, no algorithm (MD5).
fn authorization_without_qop(c: &Challenge, user: &str, password: &str) -> String {
    let uri = "sip:pbx";
    let ha1 = h("MD5", &format!("{user}:{}:{password}", c.realm));
    let ha2 = h("MD5", &format!("REGISTER:{uri}"));
    let response = h("MD5", &format!("{ha1}:{}:{ha2}", c.nonce));
    format!(r#"Digest username="{user}", realm="{}", nonce="{}", uri="{uri}", response="{response}""#, c.realm, c.nonce)
}

/// A REGISTER for `aor`, built as text and parsed like one from the network.
#[derive(Clone)]
pub(super) struct Reg {
    pub aor: String,
    pub contacts: Vec<String>,
    pub expires: Option<u32>,
    pub call_id: String,
    pub cseq: u32,
    pub auth: Option<String>,
    /// The top Via's sent-by; `source()`'s address when `None`.
    pub sent_by: Option<String>,
}

impl Reg {
    pub fn new(aor: &str, contacts: &[&str]) -> Reg {
        Reg {
            aor: aor.into(),
            contacts: contacts.iter().map(|c| c.to_string()).collect(),
            expires: None,
            call_id: format!("call-{aor}"),
            cseq: 1,
            auth: None,
            sent_by: None,
        }
    }
    pub fn expires(mut self, e: u32) -> Reg {
        self.expires = Some(e);
        self
    }
    pub fn call_id(mut self, call_id: &str) -> Reg {
        self.call_id = call_id.into();
        self
    }
    pub fn cseq(mut self, cseq: u32) -> Reg {
        self.cseq = cseq;
        self
    }
    pub fn auth(mut self, auth: String) -> Reg {
        self.auth = Some(auth);
        self
    }
    pub fn sent_by(mut self, sent_by: &str) -> Reg {
        self.sent_by = Some(sent_by.into());
        self
    }
    pub fn request(&self) -> Request {
        let mut text = format!(
            "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{}\r\n\
             From: <sip:{aor}@pbx>;tag=f1\r\nTo: <sip:{aor}@pbx>\r\nCall-ID: {}\r\nCSeq: {} REGISTER\r\n\
             User-Agent: TestPhone/1.0\r\n",
            self.sent_by.clone().unwrap_or_else(|| source().to_string()),
            self.cseq,
            self.call_id,
            self.cseq,
            aor = self.aor
        );
        for c in &self.contacts {
            text.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = self.expires {
            text.push_str(&format!("Expires: {e}\r\n"));
        }
        if let Some(a) = &self.auth {
            text.push_str(&format!("Authorization: {a}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        match parse_datagram(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("test REGISTER does not parse: {other:?}"),
        }
    }
}

/// What one input produced, split by kind.
#[derive(Debug, Default)]
struct Step {
    persisted: Vec<RegistrarCommand>,
    response: Option<Response>,
    /// Whether the response said the request authenticated.
    authenticated: Option<bool>,
    routed: Option<Route>,
    events: Vec<RegistrarEvent>,
}

impl Step {
    fn code(&self) -> u16 {
        self.response.as_ref().expect("a response").code
    }
    fn response(&self) -> &Response {
        self.response.as_ref().expect("a response")
    }
    /// The `Contact` values of the response.
    fn contacts(&self) -> Vec<String> {
        self.response().headers.get_raw(&Name::CONTACT).map(|v| v.to_string()).collect()
    }
}

struct Harness {
    m: Registrar,
    now: Timestamp,
    next_tx: u64,
}

pub(super) fn extension(number: &str, password: &str) -> Extension {
    Extension {
        number: number.into(),
        display_name: format!("Phone {number}"),
        ha1_md5: h("MD5", &format!("{number}:pbx:{password}")),
        ha1_sha256: h("SHA-256", &format!("{number}:pbx:{password}")),
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with(RegistrarConfig::default(), vec![])
    }

    fn with(config: RegistrarConfig, bindings: Vec<Binding>) -> Harness {
        let extensions = vec![extension("100", PASSWORD_100), extension("200", "secret-200")];
        let mut m = Registrar::new(config, [42; 32], extensions, bindings, T0);
        while m.poll_output().is_some() {}
        Harness { m, now: T0, next_tx: 1 }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
    }

    fn drain(&mut self) -> Step {
        let mut step = Step::default();
        while let Some(out) = self.m.poll_output() {
            match out {
                RegistrarOutput::Persist(c) => {
                    assert!(step.response.is_none(), "Persist after the Respond it guards: {c:?}");
                    step.persisted.push(c);
                }
                RegistrarOutput::Respond { tx, response, authenticated } => {
                    assert_eq!(tx, self.next_tx - 1, "response for the request just sent");
                    assert!(step.response.replace(response).is_none(), "one response per request");
                    assert!(step.routed.is_none(), "routed and answered");
                    step.authenticated = Some(authenticated);
                }
                RegistrarOutput::Event(e) => step.events.push(e),
                RegistrarOutput::Routed { tx, route } => {
                    assert_eq!(tx, self.next_tx - 1, "route for the INVITE just sent");
                    assert!(step.response.is_none() && step.routed.replace(route).is_none(), "one answer");
                }
            }
        }
        step
    }

    fn send_from(&mut self, reg: &Reg, from: SocketAddr) -> Step {
        let tx = self.next_tx;
        self.next_tx += 1;
        let input = RegistrarInput::Register { tx, request: reg.request(), source: from, transport: Transport::Udp };
        self.m.handle(self.now, input);
        self.drain()
    }

    fn send(&mut self, reg: &Reg) -> Step {
        self.send_from(reg, source())
    }

    fn timeout(&mut self) -> Step {
        self.m.handle(self.now, RegistrarInput::Timeout);
        self.drain()
    }

    /// Moves to `at` and fires the timer there.
    fn timeout_at(&mut self, at: Timestamp) -> Step {
        self.now = at;
        self.timeout()
    }

    /// Challenge, then answer it with `password` over SHA-256 (cseq + 1).
    fn register_with(&mut self, reg: &Reg, password: &str) -> Step {
        let first = self.send(reg);
        let c = challenge_for(first.response(), "SHA-256");
        let reg = reg.clone().cseq(reg.cseq + 1).auth(authorization(&c, &reg.aor, password, 1));
        self.send(&reg)
    }

    /// An INVITE from `user` (authenticated with `auth`, a Proxy-Authorization value) to `callee`.
    fn invite_from(&mut self, user: &str, callee: &str, auth: Option<String>, from: SocketAddr) -> Step {
        let mut text = format!(
            "INVITE sip:{callee}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-i{}\r\n\
             From: <sip:{user}@pbx>;tag=i1\r\nTo: <sip:{callee}@pbx>\r\nCall-ID: invite-{}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:{user}@{from}>\r\n",
            self.next_tx, self.next_tx
        );
        if let Some(a) = auth {
            text.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        let Ok(Message::Request(request)) = parse_datagram(text.as_bytes()) else { panic!("test INVITE parses") };
        let tx = self.next_tx;
        self.next_tx += 1;
        self.m.handle(self.now, RegistrarInput::Route { tx, request, source: from });
        self.drain()
    }

    /// An INVITE challenged (407), then answered with `password` over MD5, from `from`.
    fn call_from(&mut self, user: &str, password: &str, callee: &str, from: SocketAddr) -> Step {
        let first = self.invite_from(user, callee, None, from);
        assert_eq!(first.code(), 407, "{:?}", first.response);
        let c = challenges_in(first.response(), &Name::PROXY_AUTHENTICATE).into_iter().find(|c| c.algorithm == "MD5");
        let c = c.expect("an MD5 challenge");
        let auth = digest_answer(&c, user, password, "INVITE", &format!("sip:{callee}@pbx"), 1);
        self.invite_from(user, callee, Some(auth), from)
    }

    /// Adds these extensions, each with the password `secret-<number>`.
    fn add_extensions(&mut self, numbers: &[&str]) {
        for number in numbers {
            let input = RegistrarInput::PutExtension {
                number: number.to_string(),
                password: format!("secret-{number}"),
                display_name: String::new(),
            };
            self.m.handle(self.now, input);
            self.drain();
        }
    }

    fn register(&mut self, reg: &Reg) -> Step {
        let step = self.register_with(reg, PASSWORD_100);
        assert_eq!(step.code(), 200, "{:?}", step.response);
        step
    }
}

/// Challenge from `from`, then answer with `password` over SHA-256 from `from` (cseq + 1).
fn register_from(h: &mut Harness, reg: &Reg, password: &str, from: SocketAddr) -> Step {
    let first = h.send_from(reg, from);
    let c = challenge_for(first.response(), "SHA-256");
    h.send_from(&reg.clone().cseq(reg.cseq + 1).auth(authorization(&c, &reg.aor, password, 1)), from)
}

fn put(contact: &str) -> impl Fn(&RegistrarCommand) -> bool + '_ {
    move |c| matches!(c, RegistrarCommand::PutBinding(b) if b.contact == contact)
}

/// MD5 and SHA-256 both work end to end: challenge, answer, 200, binding stored first.
#[test]
fn digest_flows_for_md5_and_sha256() {
    for algorithm in ["SHA-256", "MD5"] {
        let mut h = Harness::new();
        let reg = Reg::new("100", &["<sip:100@192.0.2.7:5060>"]).expires(600);
        let first = h.send(&reg);
        assert_eq!(first.code(), 401);
        assert!(first.persisted.is_empty());
        let all = challenges(first.response());
        assert_eq!(all.iter().map(|c| c.algorithm.as_str()).collect::<Vec<_>>(), ["SHA-256", "MD5"]);
        assert_eq!(all[0].nonce, all[1].nonce, "one nonce for both challenges");
        let c = challenge_for(first.response(), algorithm);
        assert_eq!(c.names, ["realm", "nonce", "opaque", "algorithm", "qop"]);
        let ok = h.send(&reg.clone().cseq(2).auth(authorization(&c, "100", PASSWORD_100, 1)));
        assert_eq!(ok.code(), 200, "{algorithm}");
        assert!(ok.persisted.iter().any(put("sip:100@192.0.2.7:5060")));
        assert_eq!(ok.contacts(), ["<sip:100@192.0.2.7:5060>;expires=600"]);
        assert!(
            ok.events
                .contains(&RegistrarEvent::Registered { aor: "100".into(), contact: "sip:100@192.0.2.7:5060".into() })
        );
        let b = h.m.bindings().next().unwrap();
        assert_eq!((b.source, b.transport, b.cseq), (source(), Transport::Udp, 2));
        assert_eq!((b.call_id.as_str(), b.user_agent.as_deref()), ("call-100", Some("TestPhone/1.0")));
        assert_eq!(b.expires_at, T0 + Duration::from_secs(600));
    }
}

/// The configured algorithms set the challenge order, and an algorithm left out is refused.
#[test]
fn configured_algorithm_order_and_refusal() {
    let config =
        RegistrarConfig { digest_algorithms: vec![crate::registrar::digest::Algorithm::Md5], ..Default::default() };
    let mut h = Harness::with(config, vec![]);
    let reg = Reg::new("100", &["<sip:100@192.0.2.7:5060>"]);
    let first = h.send(&reg);
    let all = challenges(first.response());
    assert_eq!(all.iter().map(|c| c.algorithm.as_str()).collect::<Vec<_>>(), ["MD5"]);
    // A SHA-256 answer computed correctly is still refused: SHA-256 was not offered.
    let mut sha = challenge_for(first.response(), "MD5");
    sha.algorithm = "SHA-256".into();
    let refused = h.send(&reg.clone().cseq(2).auth(authorization(&sha, "100", PASSWORD_100, 1)));
    assert_eq!(refused.code(), 401);
    let md5 = challenge_for(refused.response(), "MD5");
    assert_eq!(h.send(&reg.clone().cseq(3).auth(authorization(&md5, "100", PASSWORD_100, 1))).code(), 200);
}

/// An answer without qop (RFC 2069: no nonce count, replayable) is challenged again and
/// counted against nobody, unless `allow_rfc2069` is set.
#[test]
fn answer_without_qop_is_refused_unless_rfc2069_is_allowed() {
    let reg = Reg::new("100", &["<sip:100@192.0.2.7>"]);
    let mut h = Harness::new();
    let c = challenge_for(h.send(&reg).response(), "MD5");
    let refused = h.send(&reg.clone().cseq(2).auth(authorization_without_qop(&c, "100", PASSWORD_100)));
    assert_eq!((refused.code(), refused.authenticated), (401, Some(false)));
    assert_eq!(refused.events, [RegistrarEvent::AuthIgnored { source: source().ip(), reason: "qop" }]);
    assert_eq!(h.m.binding_count(), 0);

    let mut h = Harness::with(RegistrarConfig { allow_rfc2069: true, ..Default::default() }, vec![]);
    let c = challenge_for(h.send(&reg).response(), "MD5");
    let ok = h.send(&reg.clone().cseq(2).auth(authorization_without_qop(&c, "100", PASSWORD_100)));
    assert_eq!(ok.code(), 200);
}

/// A correct answer on an expired nonce gets stale=true; a µs earlier it is still good.
#[test]
fn expired_nonce_is_stale() {
    let mut h = Harness::new();
    let reg = Reg::new("100", &["<sip:100@192.0.2.7>"]);
    let c = challenge_for(h.send(&reg).response(), "SHA-256");
    h.advance(Duration::from_secs(300));
    let stale = h.send(&reg.clone().cseq(2).auth(authorization(&c, "100", PASSWORD_100, 1)));
    assert_eq!(stale.code(), 401);
    assert!(challenges(stale.response()).iter().all(|c| c.stale));
    assert!(stale.events.iter().all(|e| !matches!(e, RegistrarEvent::AuthFailed { .. })), "stale is no failure");
    // A wrong password on the stale nonce is a failure, and says nothing about staleness.
    let wrong = h.send(&reg.clone().cseq(3).auth(authorization(&c, "100", "wrong-password", 2)));
    assert!(challenges(wrong.response()).iter().all(|c| !c.stale));
    assert!(matches!(wrong.events[..], [RegistrarEvent::AuthFailed { .. }]));

    let mut h = Harness::new();
    let c = challenge_for(h.send(&reg).response(), "SHA-256");
    h.advance(Duration::from_micros(299_999_999));
    assert_eq!(h.send(&reg.clone().cseq(2).auth(authorization(&c, "100", PASSWORD_100, 1))).code(), 200);
}

/// A nonce count not above the highest seen for that nonce is refused with a fresh challenge.
#[test]
fn nonce_count_replay_is_refused() {
    let mut h = Harness::new();
    let reg = Reg::new("100", &["<sip:100@192.0.2.7>"]);
    let c = challenge_for(h.send(&reg).response(), "SHA-256");
    assert_eq!(h.send(&reg.clone().cseq(2).auth(authorization(&c, "100", PASSWORD_100, 1))).code(), 200);
    let replay = h.send(&reg.clone().cseq(3).auth(authorization(&c, "100", PASSWORD_100, 1)));
    assert_eq!(replay.code(), 401);
    let fresh = challenge_for(replay.response(), "SHA-256");
    assert!(!fresh.stale);
    assert_ne!(fresh.nonce, c.nonce);
    assert_eq!(h.send(&reg.clone().cseq(4).auth(authorization(&c, "100", PASSWORD_100, 3))).code(), 200);
}

/// Unknown user and wrong password: same status, headers and parameter names; byte for byte
/// the same but for nonce, opaque and the AOR the client itself put in From/To.
#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    let mut h = Harness::new();
    let mut answer = |aor: &str, password: &str| {
        let reg = Reg::new(aor, &["<sip:x@192.0.2.7>"]).call_id("same-call");
        let c = challenge_for(h.send(&reg).response(), "SHA-256");
        h.send(&reg.clone().cseq(2).auth(authorization(&c, aor, password, 1)))
    };
    let wrong = answer("100", "not-the-password");
    let unknown = answer("999", "not-the-password");
    for step in [&wrong, &unknown] {
        assert_eq!(step.code(), 401);
        assert!(step.persisted.is_empty());
        assert!(matches!(step.events[..], [RegistrarEvent::AuthFailed { .. }]));
    }
    let (a, b) = (wrong.response(), unknown.response());
    assert_eq!(a.reason, b.reason);
    let names = |r: &Response| r.headers.iter().map(|(n, _)| n.as_print_str().to_owned()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b));
    let shape = |r: &Response| challenges(r).into_iter().map(|c| (c.names, c.algorithm, c.stale)).collect::<Vec<_>>();
    assert_eq!(shape(a), shape(b));
    // Byte for byte once the values that must differ are blanked out.
    let blank = |r: &Response, aor: &str| {
        let mut text = String::from_utf8(r.to_bytes().to_vec()).unwrap().replace(&format!("sip:{aor}@"), "sip:AOR@");
        for c in challenges(r) {
            text = text.replace(&c.nonce, "N").replace(&c.opaque, "O");
        }
        text
    };
    assert_eq!(blank(a, "100"), blank(b, "999"));
}

/// Five failures in the window block that user from that source: 403 (unauthenticated) even
/// with the right password; the same user from elsewhere and other users from the same
/// source are unaffected, and the block lifts after block_s.
#[test]
fn repeated_failures_block_the_user_from_that_source_until_block_s_passes() {
    let mut h = Harness::new();
    let reg = Reg::new("100", &["<sip:100@192.0.2.7>"]);
    let mut blocked_at = T0;
    for i in 0..5 {
        h.advance(Duration::from_secs(1));
        let step = h.register_with(&reg, "guess-guess");
        assert_eq!(step.code(), 401);
        assert!(step.events.contains(&RegistrarEvent::AuthFailed { source: source().ip(), user: "100".into() }));
        let blocked = step.events.iter().any(|e| matches!(e, RegistrarEvent::Blocked { .. }));
        assert_eq!(blocked, i == 4, "blocked on the fifth failure only");
        blocked_at = h.now;
    }
    let until = blocked_at + Duration::from_secs(300);
    assert_eq!(h.m.blocked_sources(h.now), 1);
    let refused = h.register_with(&reg.clone().cseq(10), PASSWORD_100);
    assert_eq!((refused.code(), refused.authenticated), (403, Some(false)));
    assert_eq!(refused.events, [RegistrarEvent::Rejected { source: source().ip(), method: "REGISTER", code: 403 }]);
    assert!(h.m.bindings().next().is_none());
    // Other users from this source, and this user from elsewhere, go on.
    let other_user = h.register_with(&Reg::new("200", &["<sip:200@192.0.2.7>"]), "secret-200");
    assert_eq!(other_user.code(), 200, "the block is per (source, user)");
    let elsewhere: SocketAddr = "198.51.100.1:5060".parse().unwrap();
    assert_eq!(register_from(&mut h, &reg.clone().cseq(20), PASSWORD_100, elsewhere).code(), 200);

    h.now = Timestamp(until.as_micros() - 1);
    assert_eq!(h.register_with(&reg.clone().cseq(30), PASSWORD_100).code(), 403, "still blocked");
    h.now = until;
    assert_eq!(h.m.blocked_sources(h.now), 0);
    h.register(&reg.clone().cseq(40));
}

/// Failures spread wider than the window never add up to a block.
#[test]
fn failures_outside_the_window_do_not_block() {
    let mut h = Harness::new();
    let reg = Reg::new("100", &["<sip:100@192.0.2.7>"]);
    for _ in 0..10 {
        let step = h.register_with(&reg, "guess-guess");
        assert!(step.events.contains(&RegistrarEvent::AuthFailed { source: source().ip(), user: "100".into() }));
        assert!(
            !step
                .events
                .iter()
                .any(|e| matches!(e, RegistrarEvent::Blocked { .. } | RegistrarEvent::UserLocked { .. }))
        );
        h.advance(Duration::from_secs(15));
    }
}

/// 0 < Expires < min gets 423 with Min-Expires, and nothing is bound.
#[test]
fn too_brief_interval_gets_423_with_min_expires() {
    let mut h = Harness::new();
    let step = h.register_with(&Reg::new("100", &["<sip:100@192.0.2.7>"]).expires(30), PASSWORD_100);
    assert_eq!(step.code(), 423);
    assert_eq!(step.response().header(&Name::MIN_EXPIRES), Some("60"));
    assert!(step.persisted.is_empty());
    assert_eq!(h.m.binding_count(), 0);
}

/// The Contact expires param wins over the Expires header; the header over the default (3600);
/// anything above the maximum is lowered to it.
#[test]
fn expiry_sources_and_cap() {
    let mut h = Harness::new();
    let reg = Reg::new(
        "100",
        &["<sip:100@192.0.2.7:1>;expires=120", "<sip:100@192.0.2.7:2>", "<sip:100@192.0.2.7:3>;expires=99999"],
    )
    .expires(300);
    let ok = h.register(&reg);
    let mut contacts = ok.contacts();
    contacts.sort();
    assert_eq!(
        contacts,
        [
            "<sip:100@192.0.2.7:1>;expires=120",
            "<sip:100@192.0.2.7:2>;expires=300",
            "<sip:100@192.0.2.7:3>;expires=3600"
        ]
    );
}

/// With neither param nor header the default applies; several contacts are all listed, and a
/// query REGISTER lists them with their remaining seconds and stores nothing.
#[test]
fn default_expiry_multiple_contacts_and_query() {
    let mut h = Harness::new();
    let ok = h.register(&Reg::new("100", &["<sip:100@192.0.2.7:1>, <sip:100@192.0.2.7:2>;expires=600"]));
    assert_eq!(ok.contacts(), ["<sip:100@192.0.2.7:1>;expires=3600", "<sip:100@192.0.2.7:2>;expires=600"]);
    assert_eq!(ok.persisted.len(), 2);
    h.advance(Duration::from_secs(100));
    let query = h.register(&Reg::new("100", &[]).cseq(10));
    assert_eq!(query.contacts(), ["<sip:100@192.0.2.7:1>;expires=3500", "<sip:100@192.0.2.7:2>;expires=500"]);
    assert!(query.persisted.is_empty());
}

/// `Contact: *` with Expires 0 removes every binding; with another Expires it is a 400; Expires 0
/// on one contact removes only that one.
#[test]
fn star_and_zero_expiry_remove_bindings() {
    let mut h = Harness::new();
    h.register(&Reg::new("100", &["<sip:100@192.0.2.7:1>", "<sip:100@192.0.2.7:2>", "<sip:100@192.0.2.7:3>"]));
    let one = h.register(&Reg::new("100", &["<sip:100@192.0.2.7:1>;expires=0"]).cseq(10));
    assert_eq!(
        one.persisted,
        [RegistrarCommand::RemoveBinding { aor: "100".into(), contact: "sip:100@192.0.2.7:1".into() }]
    );
    assert_eq!(one.contacts().len(), 2);
    assert_eq!(h.register_with(&Reg::new("100", &["*"]).expires(10).cseq(20), PASSWORD_100).code(), 400);
    let all = h.register(&Reg::new("100", &["*"]).expires(0).cseq(30));
    assert_eq!(all.persisted.len(), 2);
    assert_eq!(all.events.iter().filter(|e| matches!(e, RegistrarEvent::Unregistered { .. })).count(), 2);
    assert!(all.contacts().is_empty());
    assert_eq!(h.m.binding_count(), 0);
    assert_eq!(h.m.poll_timeout(), None);
}

/// Same Call-ID with a CSeq not above the stored one is refused with 500 and changes nothing.
#[test]
fn out_of_order_cseq_is_refused() {
    let mut h = Harness::new();
    h.register(&Reg::new("100", &["<sip:100@192.0.2.7>"]).cseq(10)); // stored CSeq 11
    let step = h.register_with(&Reg::new("100", &["<sip:100@192.0.2.7>;expires=0"]).cseq(9), PASSWORD_100);
    assert_eq!(step.code(), 500);
    assert!(step.persisted.is_empty());
    assert_eq!(h.m.binding_count(), 1);
}

/// The authenticated user must be the AOR; more than BINDINGS_PER_AOR_MAX contacts is refused.
#[test]
fn wrong_aor_and_too_many_contacts_are_forbidden() {
    let mut h = Harness::new();
    let reg = Reg::new("200", &["<sip:200@192.0.2.7>"]);
    let c = challenge_for(h.send(&reg).response(), "SHA-256");
    let step = h.send(&reg.clone().cseq(2).auth(authorization(&c, "100", PASSWORD_100, 1)));
    assert_eq!(step.code(), 403);
    let many: Vec<String> = (0..=BINDINGS_PER_AOR_MAX).map(|i| format!("<sip:100@192.0.2.7:{}>", 1000 + i)).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let step = h.register_with(&Reg::new("100", &many), PASSWORD_100);
    assert_eq!(step.code(), 403);
    assert_eq!(h.m.binding_count(), 0);
}

/// A binding lives until exactly expires_at: not a microsecond early, and not a microsecond late.
#[test]
fn binding_expires_exactly_at_expires_at() {
    let mut h = Harness::new();
    h.register(&Reg::new("100", &["<sip:100@192.0.2.7>"]).expires(60));
    let at = h.m.poll_timeout().unwrap();
    assert_eq!(at, T0 + Duration::from_secs(60));
    h.now = Timestamp(at.as_micros() - 1);
    assert!(h.timeout().events.is_empty());
    assert_eq!(h.m.binding_count(), 1);
    h.now = at;
    let step = h.timeout();
    assert_eq!(
        step.persisted,
        [RegistrarCommand::RemoveBinding { aor: "100".into(), contact: "sip:100@192.0.2.7".into() }]
    );
    assert_eq!(step.events, [RegistrarEvent::Expired { aor: "100".into(), contact: "sip:100@192.0.2.7".into() }]);
    assert_eq!(h.m.poll_timeout(), None);
}

/// A refresh (same contact and Call-ID) stores nothing until the flush timer, then one batch.
#[test]
fn refreshes_are_persisted_in_a_batch_at_the_flush_timer() {
    let mut h = Harness::new();
    let reg = Reg::new("100", &["<sip:100@192.0.2.7>"]).expires(600);
    h.register(&reg);
    h.advance(Duration::from_secs(100));
    let refresh = h.register(&reg.clone().cseq(10));
    assert!(refresh.persisted.is_empty(), "no write on the hot path");
    assert!(refresh.events.is_empty());
    assert_eq!(refresh.contacts(), ["<sip:100@192.0.2.7>;expires=600"]);
    let flush_at = h.now + Duration::from_secs(5);
    assert_eq!(h.m.poll_timeout(), Some(flush_at));
    h.now = flush_at;
    let flush = h.timeout();
    let [RegistrarCommand::PutBinding(b)] = &flush.persisted[..] else { panic!("{:?}", flush.persisted) };
    assert_eq!((b.cseq, b.expires_at), (11, T0 + Duration::from_secs(700)));
    assert_eq!(h.m.poll_timeout(), Some(T0 + Duration::from_secs(700)));
    // A contact arriving from a new address is no mere refresh: stored at once.
    let moved = h.send_from(&reg.clone().cseq(20), "192.0.2.99:5060".parse().unwrap());
    let c = challenge_for(moved.response(), "SHA-256");
    let moved = h.send_from(
        &reg.clone().cseq(21).auth(authorization(&c, "100", PASSWORD_100, 1)),
        "192.0.2.99:5060".parse().unwrap(),
    );
    assert_eq!(moved.code(), 200);
    assert_eq!(moved.persisted.len(), 1);
}

/// Restoring from storage keeps live bindings and drops (and removes) expired ones.
#[test]
fn restore_drops_expired_bindings() {
    let binding = |contact: &str, expires_at: Timestamp| Binding {
        aor: "100".into(),
        contact: contact.into(),
        expires_at,
        call_id: "c".into(),
        cseq: 1,
        source: source(),
        transport: Transport::Tcp,
        user_agent: None,
        nat: false,
    };
    let live = binding("sip:100@192.0.2.7:1", T0 + Duration::from_secs(10));
    let dead = binding("sip:100@192.0.2.7:2", T0);
    let mut m = Registrar::new(
        RegistrarConfig::default(),
        [1; 32],
        vec![extension("100", PASSWORD_100)],
        vec![live.clone(), dead],
        T0,
    );
    let mut outputs = vec![];
    while let Some(o) = m.poll_output() {
        outputs.push(o);
    }
    assert!(
        matches!(&outputs[..], [RegistrarOutput::Persist(RegistrarCommand::RemoveBinding { contact, .. })] if contact == "sip:100@192.0.2.7:2")
    );
    assert_eq!(m.bindings().collect::<Vec<_>>(), [&live]);
    assert_eq!(m.poll_timeout(), Some(live.expires_at));
}

/// Validation errors are events naming the field; removal takes the bindings with it.
#[test]
fn extension_directory_validation_and_removal() {
    let mut h = Harness::new();
    let put = |h: &mut Harness, number: &str, password: &str, display_name: &str| {
        let input = RegistrarInput::PutExtension {
            number: number.into(),
            password: password.into(),
            display_name: display_name.into(),
        };
        h.m.handle(h.now, input);
        h.drain()
    };
    let reason = |step: Step| match &step.events[..] {
        [RegistrarEvent::ExtensionInvalid { reason }] => reason.clone(),
        other => panic!("expected ExtensionInvalid, got {other:?}"),
    };
    assert!(reason(put(&mut h, "", "long-enough", "x")).starts_with("number"));
    assert!(reason(put(&mut h, "1 2", "long-enough", "x")).starts_with("number"));
    assert!(reason(put(&mut h, &"1".repeat(33), "long-enough", "x")).starts_with("number"));
    assert!(reason(put(&mut h, "300", "long-enough", &"d".repeat(65))).starts_with("display_name"));
    assert!(reason(put(&mut h, "300", "short", "x")).starts_with("password"));
    assert!(reason(put(&mut h, "300", &"p".repeat(129), "x")).starts_with("password"));
    let ok = put(&mut h, "a_b.c-9", "long-enough", &"d".repeat(64));
    assert!(
        matches!(&ok.persisted[..], [RegistrarCommand::PutExtension(e)] if e.ha1_md5 == super::ha1(super::Algorithm::Md5, "a_b.c-9", "pbx", "long-enough"))
    );
    assert_eq!(ok.events, [RegistrarEvent::ExtensionChanged { number: "a_b.c-9".into() }]);

    h.register(&Reg::new("100", &["<sip:100@192.0.2.7>"]));
    h.m.handle(h.now, RegistrarInput::RemoveExtension { number: "100".into() });
    let removed = h.drain();
    assert_eq!(
        removed.persisted,
        [
            RegistrarCommand::RemoveBinding { aor: "100".into(), contact: "sip:100@192.0.2.7".into() },
            RegistrarCommand::RemoveExtension { number: "100".into() }
        ]
    );
    assert_eq!(h.m.binding_count(), 0);
    h.m.handle(h.now, RegistrarInput::RemoveExtension { number: "100".into() });
    assert_eq!(h.drain().events, [RegistrarEvent::NoSuchExtension { number: "100".into() }]);
}

/// Neither HA1 nor the password shows up in any Debug output or event.
#[test]
fn secrets_never_appear_in_debug_output() {
    let mut h = Harness::new();
    let password = "hunter2-hunter2";
    let input =
        RegistrarInput::PutExtension { number: "300".into(), password: password.into(), display_name: "D".into() };
    h.m.handle(h.now, input);
    let mut printed = String::new();
    while let Some(o) = h.m.poll_output() {
        printed.push_str(&format!("{o:?}"));
    }
    printed.push_str(&format!("{:?} {:?}", h.m, h.m.extensions().collect::<Vec<_>>()));
    let e = h.m.extensions().find(|e| e.number == "300").unwrap();
    assert!(printed.contains("<redacted>"));
    for secret in [password, &e.ha1_md5, &e.ha1_sha256] {
        assert!(!printed.contains(secret), "{secret} leaked into {printed}");
    }
}

/// Time going backwards (a wall clock stepped back) is treated as no time passing.
#[test]
fn time_going_backwards_is_tolerated() {
    let mut h = Harness::new();
    h.register(&Reg::new("100", &["<sip:100@192.0.2.7>"]).expires(60));
    h.now = Timestamp(h.now.as_micros() - 1_000_000);
    assert!(h.timeout().events.is_empty());
    assert_eq!(h.m.binding_count(), 1);
}

/// A write the store refused is written again, from the current state, at the next flush.
#[test]
fn refused_writes_are_rewritten_at_the_next_flush() {
    let mut h = Harness::new();
    let ok = h.register(&Reg::new("100", &["<sip:100@192.0.2.7>"]));
    h.m.persist_failed(&ok.persisted);
    let flush_at = h.now + Duration::from_secs(5);
    assert_eq!(h.m.poll_timeout(), Some(flush_at));
    h.now = flush_at;
    assert_eq!(h.timeout().persisted, ok.persisted);
    // A removal that failed is retried as a removal.
    let gone = h.register(&Reg::new("100", &["*"]).expires(0).cseq(10));
    h.m.persist_failed(&gone.persisted);
    h.advance(Duration::from_secs(5));
    assert_eq!(h.timeout().persisted, gone.persisted);
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    enum Op {
        /// Register contact `c` (of 4) with an optional expires param, from one of 2 Call-IDs.
        Register {
            c: u8,
            expires: Option<u32>,
            call: u8,
        },
        Star,
        Advance {
            s: u32,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, prop::option::of(prop::sample::select(vec![0u32, 30, 60, 61, 600, 3600, 7200])), 0u8..2)
                .prop_map(|(c, expires, call)| Op::Register { c, expires, call }),
            1 => Just(Op::Star),
            3 => (0u32..4000).prop_map(|s| Op::Advance { s }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Under any sequence of registrations, removals and time, the machine never panics,
        /// keeps no expired binding, answers every REGISTER once, and what it persisted (once the
        /// flush timer has fired) is exactly what it holds in memory.
        #[test]
        fn persisted_state_matches_memory(ops in prop::collection::vec(op(), 1..24)) {
            let mut h = Harness::new();
            let mut store: BTreeMap<(String, String), Binding> = BTreeMap::new();
            let apply = |store: &mut BTreeMap<(String, String), Binding>, commands: &[RegistrarCommand]| {
                for c in commands {
                    match c {
                        RegistrarCommand::PutBinding(b) => { store.insert((b.aor.clone(), b.contact.clone()), b.clone()); }
                        RegistrarCommand::RemoveBinding { aor, contact } => { store.remove(&(aor.clone(), contact.clone())); }
                        _ => {}
                    }
                }
            };
            let mut cseq = [100u32, 100];
            for op in ops {
                let steps = match op {
                    Op::Register { c, expires, call } => {
                        cseq[call as usize] += 2;
                        let contact = match expires {
                            Some(e) => format!("<sip:100@192.0.2.7:{}>;expires={e}", 5000 + c as u32),
                            None => format!("<sip:100@192.0.2.7:{}>", 5000 + c as u32),
                        };
                        let reg = Reg::new("100", &[contact.as_str()]).call_id(&format!("call-{call}")).cseq(cseq[call as usize]);
                        let first = h.send(&reg);
                        let c = challenge_for(first.response(), "SHA-256");
                        let second = h.send(&reg.clone().cseq(reg.cseq + 1).auth(authorization(&c, "100", PASSWORD_100, 1)));
                        prop_assert!([200, 423, 500].contains(&second.code()), "{:?}", second.response);
                        vec![first, second]
                    }
                    Op::Star => {
                        cseq[0] += 2;
                        let reg = Reg::new("100", &["*"]).expires(0).call_id("call-0").cseq(cseq[0]);
                        let first = h.send(&reg);
                        let c = challenge_for(first.response(), "SHA-256");
                        vec![first, h.send(&reg.clone().cseq(reg.cseq + 1).auth(authorization(&c, "100", PASSWORD_100, 1)))]
                    }
                    Op::Advance { s } => {
                        let target = h.now + Duration::from_secs(s.into());
                        let mut steps = vec![];
                        while let Some(at) = h.m.poll_timeout().filter(|at| *at <= target) {
                            h.now = at.max(h.now);
                            steps.push(h.timeout());
                        }
                        h.now = target;
                        steps
                    }
                };
                for step in steps {
                    apply(&mut store, &step.persisted);
                }
                prop_assert!(h.m.bindings().all(|b| b.expires_at > h.now));
                prop_assert!(h.m.binding_count() <= BINDINGS_PER_AOR_MAX);
            }
            // Past the flush timer: every refresh is written, every expiry removed.
            let end = h.now + Duration::from_secs(6);
            while let Some(at) = h.m.poll_timeout().filter(|at| *at <= end) {
                h.now = at.max(h.now);
                let step = h.timeout();
                apply(&mut store, &step.persisted);
            }
            let mut memory_sorted: Vec<&Binding> = h.m.bindings().collect();
            memory_sorted.sort_by(|a, b| a.contact.cmp(&b.contact));
            let stored: Vec<&Binding> = store.values().collect();
            prop_assert_eq!(memory_sorted, stored);
        }
    }
}

/// Rectification renames, keeps the password hashes, stores the change; an unknown number or
/// a bad name is refused with the reason.
#[test]
fn rename_changes_only_the_display_name() {
    let mut h = Harness::new();
    h.m.handle(h.now, RegistrarInput::Rename { number: "100".into(), display_name: "Front desk".into() });
    let step = h.drain();
    let [RegistrarCommand::PutExtension(e)] = step.persisted.as_slice() else { panic!("{:?}", step.persisted) };
    assert_eq!((e.display_name.as_str(), &e.ha1_md5), ("Front desk", &extension("100", PASSWORD_100).ha1_md5));
    assert_eq!(step.events, [RegistrarEvent::ExtensionChanged { number: "100".into() }]);
    h.m.handle(h.now, RegistrarInput::Rename { number: "999".into(), display_name: "X".into() });
    assert!(matches!(h.drain().events.as_slice(), [RegistrarEvent::NoSuchExtension { .. }]));
    h.m.handle(h.now, RegistrarInput::Rename { number: "100".into(), display_name: "a\u{7}b".into() });
    assert!(
        matches!(h.drain().events.as_slice(), [RegistrarEvent::ExtensionInvalid { reason }] if reason.starts_with("display_name"))
    );
    // Still registers with the old password.
    h.register(&Reg::new("100", &["sip:100@192.0.2.7:5060"]));
}

/// Forgetting an address removes the bindings from it or pointing at it, durably, and no
/// other; the event counts them.
#[test]
fn forget_address_removes_its_bindings_only() {
    let mut h = Harness::new();
    h.register(&Reg::new("100", &["sip:100@192.0.2.7:5060", "sip:100@198.51.100.9:5060"]));
    let other: SocketAddr = "203.0.113.5:5060".parse().unwrap();
    let reg = Reg::new("200", &["sip:200@203.0.113.5:5060"]);
    let first = h.send_from(&reg, other);
    let c = challenge_for(first.response(), "SHA-256");
    let reg = reg.clone().cseq(2).auth(authorization(&c, "200", "secret-200", 1));
    assert_eq!(h.send_from(&reg, other).code(), 200);
    h.m.handle(h.now, RegistrarInput::ForgetAddress { ip: "198.51.100.9".parse().unwrap() });
    let step = h.drain();
    assert_eq!(
        step.persisted,
        [RegistrarCommand::RemoveBinding { aor: "100".into(), contact: "sip:100@198.51.100.9:5060".into() }]
    );
    assert_eq!(step.events.last(), Some(&RegistrarEvent::AddressForgotten { bindings: 1 }));
    // The source address of 100's REGISTER: its other binding goes too.
    h.m.handle(h.now, RegistrarInput::ForgetAddress { ip: "::ffff:192.0.2.7".parse().unwrap() });
    assert_eq!(h.drain().events.last(), Some(&RegistrarEvent::AddressForgotten { bindings: 1 }));
    assert_eq!(h.m.binding_count(), 1, "200's binding from elsewhere stays");
}

/// The NAT flag a REGISTER stores (`registrar::nat`): a phone naming its source is not behind
/// NAT, nor is a REGISTER on behalf of another device (Via names the source, the Contact another
/// port); a Via naming another port or host than the source is (symmetric NAT behind a
/// STUN-learned address), and so is a private Contact from a public source. A change of the
/// flag is written at once, not batched like a refresh.
#[test]
fn register_stores_whether_the_phone_is_behind_nat() {
    let stored = |step: &Step, contact: &str| -> bool {
        assert_eq!(step.code(), 200, "{:?}", step.response);
        match step.persisted.iter().find(|c| put(contact)(c)) {
            Some(RegistrarCommand::PutBinding(b)) => b.nat,
            other => panic!("no binding for {contact} persisted: {other:?} in {:?}", step.persisted),
        }
    };
    let mut h = Harness::new();
    let behind: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let cases = [
        // (Contact, Via sent-by, source, NAT)
        ("<sip:100@192.0.2.7:5060>", "192.0.2.7:5060", source(), false),
        ("<sip:100@192.0.2.7:5070>", "192.0.2.7:5060", source(), false),
        ("<sip:100@192.0.2.7:5062>", "192.0.2.7:5062", behind, true),
        ("<sip:100@192.0.2.9:5060>", "192.0.2.9:5060", source(), true),
        ("<sip:100@10.0.0.7:5060>", "10.0.0.7:5060", source(), true),
        ("<sip:100@10.0.0.8:5060>", "192.0.2.7:5060", source(), true),
    ];
    for (i, (contact, sent_by, from, nat)) in cases.into_iter().enumerate() {
        let reg = Reg::new("100", &[contact]).call_id(&format!("nat-{i}")).sent_by(sent_by).expires(600);
        let step = register_from(&mut h, &reg, PASSWORD_100, from);
        assert_eq!(stored(&step, contact.trim_matches(['<', '>'])), nat, "{contact} via {sent_by} from {from}");
    }
    // The first phone refreshes from the same source, but its Via now names another port: only
    // the flag changed, and that is not a refresh to batch: written with this REGISTER.
    let reg =
        Reg::new("100", &["<sip:100@192.0.2.7:5060>"]).call_id("nat-0").cseq(5).sent_by("192.0.2.7:5099").expires(600);
    let step = register_from(&mut h, &reg, PASSWORD_100, source());
    assert!(stored(&step, "sip:100@192.0.2.7:5060"));
}

/// Another node's committed changes land in memory as they are, and are never written again.
#[test]
fn replicated_changes_apply_to_memory_without_persisting() {
    let mut h = Harness::new();
    let remote = Binding {
        aor: "300".into(),
        contact: "sip:300@203.0.113.5:5060".into(),
        expires_at: h.now + Duration::from_secs(60),
        call_id: "c".into(),
        cseq: 1,
        source: "203.0.113.5:5060".parse().unwrap(),
        transport: Transport::Udp,
        user_agent: None,
        nat: false,
    };
    h.m.handle(
        h.now,
        RegistrarInput::Replicated(vec![
            RegistrarCommand::PutExtension(extension("300", "secret-300")),
            RegistrarCommand::PutBinding(remote.clone()),
        ]),
    );
    let step = h.drain();
    assert!(step.persisted.is_empty() && step.events.is_empty(), "{:?}", step.persisted);
    assert!(h.m.extensions().any(|e| e.number == "300"));
    assert_eq!(h.m.bindings().filter(|b| b.aor == "300").count(), 1);
    // A refresh from the other node replaces the expiry; its removal removes it.
    let later = Binding { expires_at: h.now + Duration::from_secs(120), cseq: 2, ..remote.clone() };
    h.m.handle(h.now, RegistrarInput::Replicated(vec![RegistrarCommand::PutBinding(later.clone())]));
    assert_eq!(h.m.bindings().find(|b| b.aor == "300"), Some(&later));
    h.m.handle(
        h.now,
        RegistrarInput::Replicated(vec![RegistrarCommand::RemoveBinding {
            aor: "300".into(),
            contact: remote.contact,
        }]),
    );
    assert!(h.drain().persisted.is_empty());
    assert_eq!(h.m.bindings().filter(|b| b.aor == "300").count(), 0);
    assert_eq!(h.m.poll_timeout(), None, "no expiry left behind for the removed binding");
}

/// Regression (issue 14): at the binding limit, one REGISTER that adds a contact and removes
/// another (the addition listed first) is answered 200 with the limit kept, instead of
/// tripping the per-AOR assertion and killing the registrar; the next REGISTER still works.
#[test]
fn add_and_remove_in_one_register_at_the_binding_limit() {
    let mut h = Harness::new();
    let full: Vec<String> = (0..BINDINGS_PER_AOR_MAX).map(|i| format!("<sip:100@192.0.2.7:{}>", 1000 + i)).collect();
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    h.register(&Reg::new("100", &full));
    assert_eq!(h.m.binding_count(), BINDINGS_PER_AOR_MAX);
    let swap = Reg::new("100", &["<sip:100@192.0.2.7:2000>", "<sip:100@192.0.2.7:1000>;expires=0"]).cseq(10);
    let ok = h.register(&swap);
    let contacts = ok.contacts();
    assert_eq!(contacts.len(), BINDINGS_PER_AOR_MAX, "{contacts:?}");
    assert!(contacts.iter().any(|c| c.starts_with("<sip:100@192.0.2.7:2000>")), "{contacts:?}");
    assert!(!contacts.iter().any(|c| c.starts_with("<sip:100@192.0.2.7:1000>")), "{contacts:?}");
    let other: SocketAddr = "198.51.100.20:5060".parse().unwrap();
    let reg = Reg::new("200", &["<sip:200@198.51.100.20>"]);
    let c = challenge_for(h.send_from(&reg, other).response(), "SHA-256");
    assert_eq!(h.send_from(&reg.clone().cseq(2).auth(authorization(&c, "200", "secret-200", 1)), other).code(), 200);
}

/// Random REGISTER sequences against the registrar's invariants (issue 14).
mod register_sequences {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// The two AORs of the harness and their passwords.
    const AORS: [(&str, &str); 2] = [("100", PASSWORD_100), ("200", "secret-200")];
    /// Contacts are drawn from this many per AOR: more than the limit, so it is reached.
    const CONTACTS: u8 = 14;
    /// Expires values around the edges: 0, below/at/above min (60), above max (3600).
    const EXPIRES: [u32; 9] = [0, 0, 30, 59, 60, 61, 600, 3600, u32::MAX];

    #[derive(Clone, Debug)]
    pub(super) enum Op {
        /// A REGISTER for AOR `aor` with `contacts` (index, optional `expires` param), an
        /// optional Expires header, from Call-ID `call` (of 2).
        Register {
            aor: usize,
            contacts: Vec<(u8, Option<u32>)>,
            header: Option<u32>,
            call: u8,
        },
        /// `Contact: *` with this Expires header (only 0 is valid).
        Star {
            aor: usize,
            header: Option<u32>,
        },
        /// Another node's committed binding (expiring after `s` seconds) or its removal.
        ReplicatedPut {
            aor: usize,
            c: u8,
            s: u32,
        },
        ReplicatedRemove {
            aor: usize,
            c: u8,
        },
        Advance {
            s: u32,
        },
    }

    /// Mostly values that bind, so that the limit is reached often.
    fn expires() -> impl Strategy<Value = u32> {
        prop_oneof![3 => prop::sample::select(EXPIRES.to_vec()), 2 => Just(0u32), 5 => Just(600u32)]
    }

    pub(super) fn op() -> impl Strategy<Value = Op> {
        let contact = (0..CONTACTS, prop::option::weighted(0.6, expires()));
        prop_oneof![
            8 => (0..2usize, prop::collection::vec(contact, 0..12), prop::option::weighted(0.2, expires()), 0..2u8)
                .prop_map(|(aor, contacts, header, call)| Op::Register { aor, contacts, header, call }),
            1 => (0..2usize, prop::option::of(prop::sample::select(vec![0u32, 0, 60]))).prop_map(|(aor, header)| Op::Star { aor, header }),
            2 => (0..2usize, 0..CONTACTS, 1u32..4000).prop_map(|(aor, c, s)| Op::ReplicatedPut { aor, c, s }),
            1 => (0..2usize, 0..CONTACTS).prop_map(|(aor, c)| Op::ReplicatedRemove { aor, c }),
            3 => (0u32..4000).prop_map(|s| Op::Advance { s }),
        ]
    }

    fn contact_uri(aor: &str, c: u8) -> String {
        format!("sip:{aor}@192.0.2.7:{}", 5000 + u32::from(c))
    }

    /// The AOR's bindings as the machine holds them: contact → expiry.
    fn held(h: &Harness, aor: &str) -> BTreeMap<String, Timestamp> {
        h.m.bindings().filter(|b| b.aor == aor).map(|b| (b.contact.clone(), b.expires_at)).collect()
    }

    /// Fires every timer due by `h.now`, as the shell does.
    fn fire_due(h: &mut Harness) {
        for _ in 0..1000 {
            match h.m.poll_timeout() {
                Some(at) if at <= h.now => {
                    h.timeout();
                }
                _ => return,
            }
        }
        panic!("timers keep firing at the same instant");
    }

    /// Runs `ops`, checking after every step: the structural invariants, no binding at or past
    /// its expiry, every 200 lists exactly the AOR's current bindings with their remaining
    /// seconds, a REGISTER the rules allow is answered 200 with the expected contacts, and a
    /// refused one changes nothing.
    pub(super) fn run(ops: &[Op]) -> Result<(), TestCaseError> {
        let mut h = Harness::new();
        let mut cseq = [[100u32; 2]; 2];
        for op in ops {
            let (aor_index, contacts, header, call) = match op.clone() {
                Op::Advance { s } => {
                    h.advance(Duration::from_secs(s.into()));
                    fire_due(&mut h);
                    prop_assert!(h.m.check_invariants().is_ok(), "{:?}", h.m.check_invariants());
                    continue;
                }
                Op::ReplicatedPut { aor, c, s } => {
                    let aor = AORS[aor].0;
                    let before = held(&h, aor);
                    let contact = contact_uri(aor, c);
                    let binding = Binding {
                        aor: aor.into(),
                        contact: contact.clone(),
                        expires_at: h.now + Duration::from_secs(s.into()),
                        call_id: "replicated".into(),
                        cseq: 1,
                        source: "203.0.113.5:5060".parse().unwrap(),
                        transport: Transport::Udp,
                        user_agent: None,
                        nat: false,
                    };
                    h.m.handle(h.now, RegistrarInput::Replicated(vec![RegistrarCommand::PutBinding(binding)]));
                    prop_assert!(h.drain().persisted.is_empty(), "a replicated change is never written again");
                    let after = held(&h, aor);
                    let room = before.contains_key(&contact) || before.len() < BINDINGS_PER_AOR_MAX;
                    prop_assert_eq!(after.contains_key(&contact), room);
                    prop_assert!(h.m.check_invariants().is_ok(), "{:?}", h.m.check_invariants());
                    continue;
                }
                Op::ReplicatedRemove { aor, c } => {
                    let aor = AORS[aor].0;
                    let contact = contact_uri(aor, c);
                    let command = RegistrarCommand::RemoveBinding { aor: aor.into(), contact: contact.clone() };
                    h.m.handle(h.now, RegistrarInput::Replicated(vec![command]));
                    prop_assert!(h.drain().persisted.is_empty());
                    prop_assert!(!held(&h, aor).contains_key(&contact));
                    prop_assert!(h.m.check_invariants().is_ok(), "{:?}", h.m.check_invariants());
                    continue;
                }
                Op::Register { aor, contacts, header, call } => (aor, Some(contacts), header, call),
                Op::Star { aor, header } => (aor, None, header, 0),
            };
            let (aor, password) = AORS[aor_index];
            let before = held(&h, aor);
            let texts: Vec<String> = match &contacts {
                None => vec!["*".into()],
                Some(list) => list
                    .iter()
                    .map(|(c, e)| match e {
                        Some(e) => format!("<{}>;expires={e}", contact_uri(aor, *c)),
                        None => format!("<{}>", contact_uri(aor, *c)),
                    })
                    .collect(),
            };
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let counter = &mut cseq[aor_index][call as usize];
            *counter += 2;
            let mut reg = Reg::new(aor, &texts).call_id(&format!("call-{aor}-{call}")).cseq(*counter);
            reg.expires = header;
            let step = h.register_with(&reg, password);
            let code = step.code();
            prop_assert!([200, 400, 403, 423].contains(&code), "unexpected {:?}", step.response);

            // What the rules say (RFC 3261 §10.3 steps 6–7 as machine.rs documents them).
            let expected: Option<BTreeSet<String>> = match &contacts {
                None => (header == Some(0)).then(BTreeSet::new),
                Some(list) => {
                    // A duplicate contact: the later one wins, but any too brief is refused.
                    let mut plan: Vec<(String, u32)> = Vec::new();
                    let mut too_brief = false;
                    for (c, e) in list {
                        let uri = contact_uri(aor, *c);
                        let e = e.or(header).unwrap_or(3600);
                        too_brief |= e != 0 && e < 60;
                        plan.retain(|(u, _)| *u != uri);
                        plan.push((uri, e));
                    }
                    let mut after: BTreeSet<String> = before.keys().cloned().collect();
                    for (uri, e) in &plan {
                        if *e == 0 {
                            after.remove(uri);
                        } else {
                            after.insert(uri.clone());
                        }
                    }
                    (!too_brief && after.len() <= BINDINGS_PER_AOR_MAX).then_some(after)
                }
            };
            let now_held = held(&h, aor);
            match expected {
                Some(after) => {
                    prop_assert_eq!(code, 200, "{:?}", step.response);
                    prop_assert_eq!(now_held.keys().cloned().collect::<BTreeSet<_>>(), after);
                }
                None => {
                    prop_assert_ne!(code, 200);
                    prop_assert_eq!(&now_held, &before, "a refused REGISTER changed the bindings");
                }
            }
            if code == 200 {
                let mut listed = step.contacts();
                listed.sort();
                let mut current: Vec<String> = now_held
                    .iter()
                    .map(|(c, at)| {
                        let remaining_s = (at.as_micros() - h.now.as_micros()).div_ceil(1_000_000);
                        format!("<{c}>;expires={remaining_s}")
                    })
                    .collect();
                current.sort();
                prop_assert_eq!(listed, current, "the 200 lists exactly the current bindings");
            }
            prop_assert!(h.m.check_invariants().is_ok(), "{:?}", h.m.check_invariants());
            prop_assert!(h.m.bindings().all(|b| b.expires_at > h.now), "a binding outlived its expiry");
            prop_assert!(held(&h, aor).len() <= BINDINGS_PER_AOR_MAX);
        }
        Ok(())
    }

    /// Pinned from the proptest before the fix (issue 14): six bindings, then one REGISTER
    /// adding five and removing one (final count 10) tripped the assertion, because the
    /// additions were applied first.
    #[test]
    fn pinned_add_five_remove_one_reaching_the_limit() {
        let register = |contacts: &[(u8, Option<u32>)]| Op::Register {
            aor: 1,
            contacts: contacts.to_vec(),
            header: None,
            call: 0,
        };
        let ops = [
            register(&[(2, None), (11, None), (9, None)]),
            register(&[(7, None), (0, None), (4, None)]),
            register(&[(5, None), (3, None), (1, None), (6, None), (8, None), (0, Some(0))]),
        ];
        run(&ops).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any sequence of REGISTERs (contacts, `*`, expires 0, header and param expires,
        /// duplicates, two AORs at and past the limit), replicated changes and time holds the
        /// registrar's invariants after every step and never panics.
        #[test]
        fn invariants_hold_after_every_step(ops in prop::collection::vec(op(), 1..60)) {
            run(&ops)?;
        }
    }
}

/// Spoofing (issue 14): answers claiming to come from the office's address but carrying a
/// nonce minted for another address (or a made-up one) are challenged again and counted
/// against nobody, however many; the office's phone then registers at once.
#[test]
fn answers_with_foreign_nonces_count_against_nobody() {
    let mut h = Harness::new();
    let attacker: SocketAddr = "198.51.100.66:5060".parse().unwrap();
    let reg = Reg::new("100", &["<sip:100@192.0.2.7>"]);
    for i in 0..50 {
        let theirs = challenge_for(h.send_from(&reg, attacker).response(), "SHA-256");
        let mut forged = theirs.clone();
        forged.nonce = format!("{:064x}", i);
        for c in [&theirs, &forged] {
            let spoofed = h.send(&reg.clone().cseq(2).auth(authorization(c, "100", "guess-guess", 1)));
            assert_eq!((spoofed.code(), spoofed.authenticated), (401, Some(false)));
            assert_eq!(spoofed.events, [RegistrarEvent::AuthIgnored { source: source().ip(), reason: "nonce" }]);
        }
    }
    assert_eq!(h.m.blocked_sources(h.now), 0);
    h.register(&reg.clone().cseq(10));
}

/// IPv6 sources are one source per /64: failures from five addresses of one /64, each on a
/// nonce fetched by another address of it, block that /64 for the user, not the next /64.
#[test]
fn ipv6_sources_count_per_slash_64() {
    let mut h = Harness::new();
    let reg = Reg::new("100", &["<sip:100@[2001:db8::7]>"]);
    let fetcher: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
    for i in 2..7u16 {
        let c = challenge_for(h.send_from(&reg, fetcher).response(), "SHA-256");
        let from = SocketAddr::new(format!("2001:db8::{i}").parse().unwrap(), 5060);
        let step = h.send_from(&reg.clone().cseq(2).auth(authorization(&c, "100", "guess-guess", 1)), from);
        assert!(step.events.iter().any(|e| matches!(e, RegistrarEvent::AuthFailed { .. })), "{:?}", step.events);
    }
    assert_eq!(h.m.blocked_sources(h.now), 1);
    let same_64: SocketAddr = "[2001:db8::ffff]:5060".parse().unwrap();
    assert_eq!(register_from(&mut h, &reg.clone().cseq(10), PASSWORD_100, same_64).code(), 403);
    let next_64: SocketAddr = "[2001:db8:0:1::1]:5060".parse().unwrap();
    assert_eq!(register_from(&mut h, &reg.clone().cseq(20), PASSWORD_100, next_64).code(), 200);
}

/// The digest `uri` must be the Request-URI: a correct digest over another URI (a captured
/// answer replayed elsewhere) is 400, counted as a failure, and five block the pair.
#[test]
fn digest_uri_other_than_the_request_uri_is_400_and_counted() {
    let mut h = Harness::new();
    let reg = Reg::new("100", &["<sip:100@192.0.2.7>"]);
    for i in 0..5 {
        let c = challenge_for(h.send(&reg).response(), "SHA-256");
        let auth = digest_answer(&c, "100", PASSWORD_100, "REGISTER", "sip:elsewhere.example", 1);
        let step = h.send(&reg.clone().cseq(2).auth(auth));
        assert_eq!((step.code(), step.authenticated), (400, Some(false)));
        assert!(step.events.contains(&RegistrarEvent::AuthFailed { source: source().ip(), user: "100".into() }));
        assert_eq!(step.events.iter().any(|e| matches!(e, RegistrarEvent::Blocked { .. })), i == 4);
    }
    assert_eq!(h.m.binding_count(), 0);
    // The same URI in another case and with the same parameters is the Request-URI.
    let c = challenge_for(h.send_from(&reg, "198.51.100.1:5060".parse().unwrap()).response(), "SHA-256");
    let auth = digest_answer(&c, "100", PASSWORD_100, "REGISTER", "SIP:PBX", 1);
    assert_eq!(h.send_from(&reg.clone().cseq(2).auth(auth), "198.51.100.1:5060".parse().unwrap()).code(), 200);
}

/// A stranger behind the phone's NAT (same IP, other port) and guessers on four other
/// addresses: the stranger is blocked for the user, the user is locked for everybody
/// untrusted (a right password from a new address gets the wrong-password 401), yet the phone
/// registered from its own address refreshes and calls throughout; its registration and
/// calls still work, and the lock ends after block_s.
#[test]
fn strangers_cannot_lock_out_a_registered_phone() {
    let mut h = Harness::new();
    let phone: SocketAddr = "192.0.2.7:5060".parse().unwrap();
    let stranger: SocketAddr = "192.0.2.7:6000".parse().unwrap();
    let reg = Reg::new("100", &["<sip:100@192.0.2.7:5060>"]).expires(600);
    h.register(&reg);
    let mut cseq = 10;
    let mut guess = |h: &mut Harness, from: SocketAddr, user: &str| {
        cseq += 2;
        register_from(h, &Reg::new(user, &["<sip:x@192.0.2.7:6000>"]).call_id("stranger").cseq(cseq), "guess", from)
    };
    let mut events = Vec::new();
    for _ in 0..20 {
        let step = guess(&mut h, stranger, "100");
        assert!([401, 403].contains(&step.code()));
        events.extend(step.events);
        guess(&mut h, stranger, "999");
    }
    assert!(events.iter().any(|e| matches!(e, RegistrarEvent::Blocked { user, .. } if user == "100")));
    assert_eq!(register_from(&mut h, &reg.clone().call_id("s2"), PASSWORD_100, stranger).code(), 403);
    for i in 1..=4u8 {
        let from = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, i)), 5060);
        for _ in 0..5 {
            events.extend(guess(&mut h, from, "100").events);
        }
    }
    assert!(events.iter().any(|e| matches!(e, RegistrarEvent::UserLocked { user, .. } if user == "100")), "{events:?}");
    assert_eq!(h.m.locked_users(h.now), 1);

    // The registered phone: refresh, then a call, both from its own address.
    h.advance(Duration::from_secs(30));
    let refresh = register_from(&mut h, &reg.clone().cseq(100), PASSWORD_100, phone);
    assert_eq!(refresh.code(), 200, "{:?}", refresh.response);
    let call = h.call_from("100", PASSWORD_100, "200", phone);
    assert_eq!(call.code(), 480, "authenticated and looked up: 200 has no phone (not 403 or 407)");
    assert_eq!(call.authenticated, Some(true));

    // A new phone of 100 elsewhere, right password: the 401 a wrong password gets, counted.
    let newcomer: SocketAddr = "198.51.100.50:5060".parse().unwrap();
    let locked_out = register_from(&mut h, &reg.clone().call_id("new"), PASSWORD_100, newcomer);
    assert_eq!(locked_out.code(), 401);
    assert!(locked_out.events.contains(&RegistrarEvent::AuthFailed { source: newcomer.ip(), user: "100".into() }));
    let wrong =
        register_from(&mut h, &Reg::new("999", &["<sip:x@198.51.100.51>"]), "x", "198.51.100.51:5060".parse().unwrap());
    let header_names =
        |s: &Step| s.response().headers.iter().map(|(n, _)| n.as_print_str().to_owned()).collect::<Vec<_>>();
    assert_eq!(header_names(&locked_out), header_names(&wrong), "a lock looks like a wrong password");
    h.now = h.now + Duration::from_secs(300);
    assert_eq!(h.m.locked_users(h.now), 0);
    assert_eq!(register_from(&mut h, &reg.clone().call_id("new").cseq(50), PASSWORD_100, newcomer).code(), 200);
}

/// INVITE authentication follows the same rules: a foreign nonce is re-challenged (407) and
/// counted against nobody; wrong answers count and block the pair, which then gets 403 even
/// with the right password; an address trusted for the caller is spared.
#[test]
fn invite_authentication_follows_the_same_rules() {
    let mut h = Harness::new();
    let desk: SocketAddr = "192.0.2.7:5060".parse().unwrap();
    let callee = h.register_with(&Reg::new("200", &["<sip:200@192.0.2.7:5070>"]).call_id("callee"), "secret-200");
    assert_eq!(callee.code(), 200);
    let spoofed_from: SocketAddr = "198.51.100.9:5060".parse().unwrap();
    let theirs = h.invite_from("100", "200", None, spoofed_from);
    let c = challenges_in(theirs.response(), &Name::PROXY_AUTHENTICATE).remove(0);
    let spoofed =
        h.invite_from("100", "200", Some(digest_answer(&c, "100", "guess", "INVITE", "sip:200@pbx", 1)), desk);
    assert_eq!((spoofed.code(), spoofed.authenticated), (407, Some(false)));
    assert!(matches!(spoofed.events[..], [RegistrarEvent::AuthIgnored { reason: "nonce", .. }]));
    for _ in 0..5 {
        assert_eq!(h.call_from("100", "guess", "200", desk).code(), 407);
    }
    let blocked = h.call_from("100", PASSWORD_100, "200", desk);
    assert_eq!((blocked.code(), blocked.authenticated), (403, Some(false)));
    // 100 registers from another port (a different address): trusted there, it calls.
    let phone: SocketAddr = "192.0.2.7:5080".parse().unwrap();
    assert_eq!(register_from(&mut h, &Reg::new("100", &["<sip:100@192.0.2.7:5080>"]), PASSWORD_100, phone).code(), 403);
    let elsewhere: SocketAddr = "198.51.100.30:5060".parse().unwrap();
    let reg = Reg::new("100", &["<sip:100@198.51.100.30:5060>"]).call_id("elsewhere");
    assert_eq!(register_from(&mut h, &reg, PASSWORD_100, elsewhere).code(), 200);
    let routed = h.call_from("100", PASSWORD_100, "200", elsewhere);
    let route = routed.routed.expect("routed");
    assert_eq!((route.caller.as_str(), route.callee.as_str(), route.contacts.len()), ("100", "200", 1));
}

/// A flood of failures from more sources than the table holds keeps every table within its
/// bound and every block it made: once full, newcomers are counted by /48 (for IPv6), whose
/// block then covers its other addresses but not the next /48.
#[test]
fn failure_tables_stay_bounded_and_keep_their_blocks() {
    let config = RegistrarConfig { auth_failures_max: 1, user_auth_failures_max: 100, ..Default::default() };
    let mut h = Harness::with(config, vec![]);
    let reg = Reg::new("999", &["<sip:x@192.0.2.7>"]);
    // The n-th /64 of 2001:db8:<high>::/48.
    let source = |high: u16, n: u16| {
        let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, high, n, 0, 0, 0, 1);
        SocketAddr::new(std::net::IpAddr::V6(ip), 5060)
    };
    for n in 0..super::AUTH_FAILURE_PAIRS_MAX as u16 {
        let step = register_from(&mut h, &reg, "guess", source(0, n));
        assert_eq!(step.code(), 401);
        assert!(matches!(step.events[..], [RegistrarEvent::AuthFailed { .. }, RegistrarEvent::Blocked { .. }]));
    }
    let overflow = register_from(&mut h, &reg, "guess", source(1, 0));
    assert!(matches!(overflow.events[..], [_, RegistrarEvent::PrefixBlocked { len: 48, .. }]), "{:?}", overflow.events);
    assert_eq!(register_from(&mut h, &reg, "guess", source(1, 1)).code(), 403, "the /48 is blocked");
    assert_eq!(register_from(&mut h, &reg, "guess", source(2, 0)).code(), 401, "not the next /48");
    assert_eq!(register_from(&mut h, &reg, "guess", source(0, 0)).code(), 403, "the first block is kept");
    h.m.check_invariants().unwrap();
    h.m.check_guard_bounds().unwrap();
    assert_eq!(h.m.blocked_sources(h.now), super::AUTH_FAILURE_PAIRS_MAX + 2);
}

/// A nonce answered after the registrar forgot minting it (more newer challenges than it
/// remembers) is still recognised by its HMAC; a remembered one answered from another source
/// is not weighed, as before.
#[test]
fn nonces_are_recognised_whether_remembered_or_not() {
    let mut h = Harness::new();
    let reg = Reg::new("100", &["<sip:100@192.0.2.7>"]);
    let c = challenge_for(h.send(&reg).response(), "SHA-256");
    let other: SocketAddr = "198.51.100.9:5060".parse().unwrap();
    let foreign = h.send_from(&reg.clone().cseq(2).auth(authorization(&c, "100", PASSWORD_100, 1)), other);
    assert_eq!((foreign.code(), foreign.authenticated), (401, Some(false)));
    assert_eq!(foreign.events, [RegistrarEvent::AuthIgnored { source: other.ip(), reason: "nonce" }]);
    // Newer challenges push it out of what the registrar remembers (mint order is time order).
    let stranger = Reg::new("200", &["<sip:200@192.0.2.8>"]);
    for _ in 0..NONCES_MINTED_REMEMBERED_MAX {
        h.advance(Duration::from_micros(1));
        assert_eq!(h.send(&stranger).code(), 401);
    }
    assert_eq!(h.send(&reg.clone().cseq(3).auth(authorization(&c, "100", PASSWORD_100, 1))).code(), 200);
}

/// A conference room's number is routed to the room once the caller has authenticated (a
/// stranger learns nothing: the 407 comes first); a number that is neither room nor extension
/// stays 404; PIN failures reported by a room are counted like wrong passwords.
#[test]
fn room_numbers_route_to_the_room_and_pin_failures_count() {
    let config =
        RegistrarConfig { rooms: ["800".to_string()].into(), auth_failures_max: 2, ..RegistrarConfig::default() };
    let mut h = Harness::with(config, vec![]);
    let first = h.invite_from("100", "800", None, source());
    assert_eq!(first.code(), 407, "no route before authentication");
    let routed = h.call_from("100", PASSWORD_100, "800", source());
    let route = routed.routed.expect("routed");
    assert!(route.room && route.contacts.is_empty(), "{route:?}");
    assert_eq!((route.caller.as_str(), route.callee.as_str()), ("100", "800"));
    assert_eq!(h.call_from("100", PASSWORD_100, "801", source()).code(), 404);

    for _ in 0..2 {
        h.m.handle(h.now, RegistrarInput::AuthFailure { source: source().ip(), user: "100".into() });
        let step = h.drain();
        assert!(step.events.iter().any(|e| matches!(e, RegistrarEvent::AuthFailed { user, .. } if user == "100")));
    }
    // The pair is blocked now (the security log says so); as for wrong passwords, the block
    // spares the address this extension just authenticated from (docs/SECURITY.md), so the
    // phone itself still calls.
    assert_eq!(h.m.blocked_sources(h.now), 1);
    assert!(h.call_from("100", PASSWORD_100, "800", source()).routed.is_some());
}

/// A registrar that pushes through FCM, refresh pushes due 120 s before expiry.
fn pushing() -> Harness {
    Harness::with(RegistrarConfig { push_providers: vec!["fcm".into()], ..RegistrarConfig::default() }, vec![])
}

const PUSH_CONTACT: &str = "sip:100@192.0.2.7;pn-provider=fcm;pn-param=proj;pn-prid=tok-1";

fn refreshes_due(step: &Step) -> Vec<String> {
    step.events
        .iter()
        .filter_map(|e| match e {
            RegistrarEvent::PushRefreshDue { binding } => Some(binding.contact.clone()),
            _ => None,
        })
        .collect()
}

/// RFC 8599 §5.6: a push binding still unrefreshed `push_refresh_before_s` before it expires
/// is due for one refresh push, exactly then and once; a refresh re-files it; an ordinary
/// contact never is; an unregistered one is forgotten.
#[test]
fn push_bindings_are_due_a_refresh_push_before_they_expire() {
    let mut h = pushing();
    let reg = Reg::new("100", &[&format!("<{PUSH_CONTACT}>"), "<sip:100@192.0.2.8>"]).expires(3600);
    h.register(&reg);
    h.m.check_invariants().unwrap();
    let due = T0 + Duration::from_secs(3600 - 120);
    assert_eq!(h.m.poll_timeout(), Some(due));
    h.now = Timestamp(due.as_micros() - 1);
    assert!(refreshes_due(&h.timeout()).is_empty());
    h.now = due;
    let step = h.timeout();
    assert_eq!(refreshes_due(&step), [PUSH_CONTACT], "{:?}", step.events);
    h.m.check_invariants().unwrap();
    // Once: the next timer is the expiry itself, and nothing more comes before it.
    assert_eq!(h.m.poll_timeout(), Some(T0 + Duration::from_secs(3600)));
    h.advance(Duration::from_secs(60));
    assert!(refreshes_due(&h.timeout()).is_empty());
    // The woken app registers again: a new registration, a new refresh push due.
    let again = reg.clone().cseq(10);
    h.register(&again);
    let next = h.now + Duration::from_secs(3600 - 120);
    assert_eq!(h.m.poll_timeout(), Some(h.now + Duration::from_secs(5)));
    h.timeout_at(h.now + Duration::from_secs(5));
    assert_eq!(h.m.poll_timeout(), Some(next));
    h.m.check_invariants().unwrap();
    // Unregistered: nothing stays due.
    h.register(&Reg::new("100", &[&format!("<{PUSH_CONTACT}>")]).expires(0).cseq(20));
    assert_eq!(h.m.binding_count(), 1);
    h.m.check_invariants().unwrap();
    h.now = next;
    assert!(refreshes_due(&h.timeout()).is_empty());
}

/// A short registration is pushed half-way through its lifetime, not at once; push off
/// (no provider) makes no refresh at all.
#[test]
fn short_push_registrations_are_refreshed_half_way_and_none_without_push() {
    let mut h = pushing();
    h.register(&Reg::new("100", &[&format!("<{PUSH_CONTACT}>")]).expires(60));
    h.timeout_at(T0 + Duration::from_secs(5));
    assert_eq!(h.m.poll_timeout(), Some(T0 + Duration::from_secs(30)));
    h.now = T0 + Duration::from_secs(30);
    assert_eq!(refreshes_due(&h.timeout()), [PUSH_CONTACT]);

    let mut off = Harness::new();
    off.register(&Reg::new("100", &[&format!("<{PUSH_CONTACT}>")]).expires(600));
    off.timeout_at(T0 + Duration::from_secs(5));
    assert_eq!(off.m.poll_timeout(), Some(T0 + Duration::from_secs(600)), "only the expiry");
}

/// Bindings restored from storage or replicated from another node are due their refresh push
/// too (whichever node leads sends it): from the time left.
#[test]
fn restored_and_replicated_push_bindings_are_due_a_refresh() {
    let binding = |contact: &str, expires_s: u64| Binding {
        aor: "100".into(),
        contact: contact.into(),
        expires_at: T0 + Duration::from_secs(expires_s),
        call_id: "c".into(),
        cseq: 1,
        source: source(),
        transport: Transport::Udp,
        user_agent: None,
        nat: false,
    };
    let config = RegistrarConfig { push_providers: vec!["fcm".into()], ..RegistrarConfig::default() };
    let mut h = Harness::with(config, vec![binding(PUSH_CONTACT, 1000)]);
    assert_eq!(h.m.poll_timeout(), Some(T0 + Duration::from_secs(1000 - 120)));
    let other = "sip:100@192.0.2.9;pn-provider=fcm;pn-param=proj;pn-prid=tok-2";
    h.m.handle(T0, RegistrarInput::Replicated(vec![RegistrarCommand::PutBinding(binding(other, 200))]));
    h.drain();
    h.m.check_invariants().unwrap();
    assert_eq!(h.m.poll_timeout(), Some(T0 + Duration::from_secs(100)));
    h.now = T0 + Duration::from_secs(100);
    assert_eq!(refreshes_due(&h.timeout()), [other]);
    h.m.handle(
        h.now,
        RegistrarInput::Replicated(vec![RegistrarCommand::RemoveBinding {
            aor: "100".into(),
            contact: PUSH_CONTACT.into(),
        }]),
    );
    h.drain();
    h.m.check_invariants().unwrap();
    assert_eq!(h.m.poll_timeout(), Some(T0 + Duration::from_secs(200)), "only the other's expiry");
}

/// RFC 8599 §4.1.4/§5: an app that says it refreshes on its own (`+sip.pnsreg` on its
/// Contact) is told how long before expiry to do so, ahead of the refresh push; others are
/// only told the provider.
#[test]
fn pnsreg_apps_are_told_when_to_refresh() {
    let caps = |step: &Step| -> Vec<String> {
        step.response().headers.get_raw(&Name::from("Feature-Caps")).map(|v| v.to_string()).collect()
    };
    let mut h = pushing();
    let plain = h.register(&Reg::new("100", &[&format!("<{PUSH_CONTACT}>")]).expires(600));
    assert_eq!(caps(&plain), ["*;+sip.pns=\"fcm\""]);
    let pnsreg = h.register(&Reg::new("100", &[&format!("<{PUSH_CONTACT}>;+sip.pnsreg")]).expires(600).cseq(10));
    assert_eq!(caps(&pnsreg), [format!("*;+sip.pns=\"fcm\";+sip.pnsreg=\"{}\"", 120 + PNSREG_MARGIN_S)]);
    let ordinary = h.register(&Reg::new("100", &["<sip:100@192.0.2.8>;+sip.pnsreg"]).expires(600).cseq(20));
    assert!(caps(&ordinary).is_empty(), "no push contact, no Feature-Caps");
}

/// Call forwarding (issue 18): `always` is followed and its loops cut, the ringing extension's
/// busy and no-answer forwards come with the route, an unregistered one goes straight to its
/// no-answer forward; bad settings are refused naming the field; removing an extension switches
/// off every forward to it.
#[test]
fn calls_follow_forwarding_and_loops_are_cut() {
    let mut h = Harness::new();
    h.add_extensions(&["300", "400"]);
    for (number, port) in [("200", 5070), ("300", 5080)] {
        let reg = Reg::new(number, &[&format!("<sip:{number}@192.0.2.7:{port}>")]).call_id(number);
        assert_eq!(h.register_with(&reg, &format!("secret-{number}")).code(), 200);
    }
    let set = |h: &mut Harness, number: &str, f: Forwarding| {
        h.m.handle(h.now, RegistrarInput::SetForwarding { number: number.into(), forwarding: f });
        h.drain()
    };
    let always = |to: &str| Forwarding { always: Some(to.into()), ..Default::default() };
    let step = set(&mut h, "200", always("300"));
    assert!(matches!(&step.persisted[..], [RegistrarCommand::SetForwarding { number, .. }] if number == "200"));
    let route = h.call_from("100", PASSWORD_100, "200", source()).routed.expect("routed");
    assert_eq!((route.callee.as_str(), route.target.as_str()), ("200", "300"));
    assert!(route.contacts.iter().all(|b| b.aor == "300") && route.contacts.len() == 1);
    // 300 → 200 closes a loop: it is cut before it closes, 300 rings.
    set(&mut h, "300", always("200"));
    let route = h.call_from("100", PASSWORD_100, "200", source()).routed.expect("routed");
    assert_eq!(route.target, "300");
    assert_eq!(route.forwards, Forwards::default(), "300's forward back to 200 is no forward");

    // Refused, naming the field; nothing stored.
    for (number, bad, field) in [
        ("200", always("200"), "always: "),
        ("200", Forwarding { busy: Some("999".into()), ..Default::default() }, "busy: "),
        ("200", Forwarding { no_answer_after_s: 0, ..Default::default() }, "no_answer_after_s: "),
    ] {
        let step = set(&mut h, number, bad);
        assert!(step.persisted.is_empty());
        assert!(
            matches!(&step.events[..], [RegistrarEvent::ExtensionInvalid { reason }] if reason.starts_with(field)),
            "{:?}",
            step.events
        );
    }
    let step = set(&mut h, "999", always("200"));
    assert!(matches!(&step.events[..], [RegistrarEvent::NoSuchExtension { .. }]));

    // Busy and no answer come with the route, each resolved; the caller's own extension is fine.
    set(&mut h, "300", Forwarding::default());
    let busy_and_late = Forwarding {
        busy: Some("300".into()),
        no_answer: Some("400".into()),
        no_answer_after_s: 15,
        ..Default::default()
    };
    set(&mut h, "200", busy_and_late);
    let route = h.call_from("100", PASSWORD_100, "200", source()).routed.expect("routed");
    assert_eq!(route.target, "200");
    let busy = route.forwards.busy.clone().expect("a busy forward");
    assert_eq!((busy.target.as_str(), busy.contacts.len()), ("300", 1));
    let [(after, late)] = route.forwards.no_answer.clone().try_into().expect("a no-answer forward");
    assert_eq!((after, late.target.as_str(), late.contacts.len()), (Duration::from_secs(15), "400", 0));
    assert_eq!(route.forwards.contacts(), 1);

    // 200 unregistered: its no-answer forward rings at once — when it has phones.
    let gone = Reg::new("200", &["<sip:200@192.0.2.7:5070>"]).call_id("200").cseq(3).expires(0);
    assert_eq!(h.register_with(&gone, "secret-200").code(), 200);
    assert_eq!(h.call_from("100", PASSWORD_100, "200", source()).code(), 480, "400 has no phone");
    let reg = Reg::new("400", &["<sip:400@192.0.2.7:5090>"]).call_id("400");
    assert_eq!(h.register_with(&reg, "secret-400").code(), 200);
    let route = h.call_from("100", PASSWORD_100, "200", source()).routed.expect("routed");
    assert_eq!((route.callee.as_str(), route.target.as_str()), ("200", "400"));
    assert_eq!(route.forwards, Forwards::default());

    // 300 goes: 200's busy forward to it is switched off, and stored so.
    h.m.handle(h.now, RegistrarInput::RemoveExtension { number: "300".into() });
    let step = h.drain();
    assert!(step.persisted.iter().any(|c| matches!(c, RegistrarCommand::SetForwarding { number, forwarding }
        if number == "200" && forwarding.busy.is_none() && forwarding.no_answer.as_deref() == Some("400"))));
    assert_eq!(h.m.forwarding_of("200").busy, None);
}

/// Feature codes set the caller's own forwarding, after the caller authenticated: 603 saying
/// what was done, 403 for a target that is no extension (nothing changes), 404 for an unknown code.
#[test]
fn feature_codes_set_the_callers_own_forwarding() {
    let mut h = Harness::new();
    let first = h.invite_from("100", "*21*200%23", None, source());
    assert_eq!(first.code(), 407, "a stranger sets nothing");
    let step = h.call_from("100", PASSWORD_100, "*21*200%23", source());
    assert_eq!((step.code(), step.response().reason.as_str()), (603, "Forwarding on: always to 200"));
    assert!(matches!(&step.persisted[..], [RegistrarCommand::SetForwarding { number, forwarding }]
        if number == "100" && forwarding.always.as_deref() == Some("200")));
    assert_eq!(h.m.forwarding_of("100").always.as_deref(), Some("200"));
    let refused = h.call_from("100", PASSWORD_100, "*67*999%23", source());
    assert_eq!(refused.code(), 403);
    assert!(refused.response().reason.contains("busy: 999 is not an extension"), "{}", refused.response().reason);
    assert!(refused.persisted.is_empty());
    assert_eq!(h.call_from("100", PASSWORD_100, "*98%23", source()).code(), 404);
    let off = h.call_from("100", PASSWORD_100, "%2321%23", source());
    assert_eq!((off.code(), off.response().reason.as_str()), (603, "Forwarding off: always"));
    assert_eq!(h.m.forwarding_of("100"), Forwarding::default());
}

/// `*80` + an extension calls its phones as an intercom: routed to its own phones (never
/// forwarded), after the caller authenticated; an unregistered one is 480, a number that is no
/// extension 404.
#[test]
fn intercom_calls_ring_the_extensions_own_phones() {
    let mut h = Harness::new();
    let reg = Reg::new("200", &["<sip:200@192.0.2.7:5070>"]).call_id("200");
    assert_eq!(h.register_with(&reg, "secret-200").code(), 200);
    h.m.handle(
        h.now,
        RegistrarInput::SetForwarding {
            number: "200".into(),
            forwarding: Forwarding { always: Some("100".into()), ..Default::default() },
        },
    );
    h.drain();
    assert_eq!(h.invite_from("100", "*80200", None, source()).code(), 407);
    let route = h.call_from("100", PASSWORD_100, "*80200", source()).routed.expect("routed");
    assert!(route.intercom);
    assert_eq!((route.callee.as_str(), route.target.as_str(), route.contacts.len()), ("200", "200", 1));
    assert_eq!(route.forwards, Forwards::default());
    // Dialled plainly, 200's calls go to 100 (which has no phone): forwarding applies there.
    assert_eq!(h.call_from("100", PASSWORD_100, "200", source()).code(), 480);
    assert_eq!(h.call_from("200", "secret-200", "*80100", source()).code(), 480, "100 has no phone");
    assert_eq!(h.call_from("100", PASSWORD_100, "*80999", source()).code(), 404);
}

/// A ring group: ring all puts every member's phones in the route (a member without a phone or
/// that is no extension left out) with the group's no-answer forward after its seconds; hunt
/// rings the first member with a phone and queues the others, each after the member timeout,
/// then the forward, busy moving on; nobody registered goes to the forward, or 480.
#[test]
fn groups_ring_all_or_hunt_their_members() {
    use super::groups::{Group, Strategy};
    let group = |strategy| Group {
        number: "600".into(),
        name: "Sales".into(),
        strategy,
        members: vec!["999".into(), "100".into(), "200".into(), "300".into()],
        member_timeout_s: 10,
        no_answer: Some("400".into()),
        no_answer_after_s: 25,
    };
    let groups = [
        ("600".to_string(), group(Strategy::RingAll)),
        ("601".to_string(), Group { number: "601".into(), ..group(Strategy::Hunt) }),
    ];
    let config = RegistrarConfig { groups: groups.into(), ..Default::default() };
    let mut h = Harness::with(config, vec![]);
    h.add_extensions(&["300", "400"]);
    assert_eq!(h.call_from("100", PASSWORD_100, "600", source()).code(), 480, "nobody registered, 400 neither");
    for (number, password, port) in
        [("100", PASSWORD_100, 5060), ("200", "secret-200", 5070), ("400", "secret-400", 5090)]
    {
        let reg = Reg::new(number, &[&format!("<sip:{number}@192.0.2.7:{port}>")]).call_id(number);
        assert_eq!(h.register_with(&reg, password).code(), 200);
    }
    let all = h.call_from("100", PASSWORD_100, "600", source()).routed.expect("routed");
    let rung: Vec<&str> = all.contacts.iter().map(|b| b.aor.as_str()).collect();
    assert_eq!(rung, ["100", "200"], "999 is no extension, 300 has no phone");
    assert_eq!((all.callee.as_str(), all.target.as_str()), ("600", "600"));
    let [(after, forward)] = all.forwards.no_answer.clone().try_into().expect("the group's forward");
    assert_eq!((after, forward.target.as_str()), (Duration::from_secs(25), "400"));
    assert!(!all.forwards.busy_moves_on);

    let hunt = h.call_from("100", PASSWORD_100, "601", source()).routed.expect("routed");
    assert!(hunt.contacts.iter().all(|b| b.aor == "100") && hunt.contacts.len() == 1);
    let stages: Vec<(u64, String, String)> = hunt
        .forwards
        .no_answer
        .iter()
        .map(|(after, f)| (after.as_secs(), f.target.clone(), f.contacts[0].aor.clone()))
        .collect();
    assert_eq!(stages, [(10, "601".into(), "200".into()), (10, "400".into(), "400".into())]);
    assert!(hunt.forwards.busy_moves_on);
    assert_eq!(hunt.forwards.contacts(), 2);
}

/// `**` + an extension routes a directed pickup (after authentication, like any call): no
/// phones to ring, the extension named; a number that is no extension is 404.
#[test]
fn star_star_routes_a_pickup_of_the_extension() {
    let mut h = Harness::new();
    assert_eq!(h.invite_from("100", "**200", None, source()).code(), 407);
    let route = h.call_from("100", PASSWORD_100, "**200", source()).routed.expect("routed");
    assert_eq!(route.pickup.as_deref(), Some("200"));
    assert!(route.contacts.is_empty() && !route.intercom);
    assert_eq!(h.call_from("100", PASSWORD_100, "**999", source()).code(), 404);
}

/// Members log out of and back in to their groups with `#45*N#` / `*45*N#` (`*45#`, `#45#`: all
/// their groups): 603 saying so, stored; a logged-out member is not rung; a phone that is no
/// member of the group named gets 403.
#[test]
fn members_log_out_and_in_with_feature_codes() {
    use super::groups::{Group, Strategy};
    let group = |number: &str, members: &[&str]| Group {
        number: number.into(),
        name: String::new(),
        strategy: Strategy::RingAll,
        members: members.iter().map(|m| m.to_string()).collect(),
        member_timeout_s: 10,
        no_answer: None,
        no_answer_after_s: 15,
    };
    let groups = [("600".to_string(), group("600", &["100", "200"])), ("601".to_string(), group("601", &["100"]))];
    let config = RegistrarConfig { groups: groups.into(), ..Default::default() };
    let mut h = Harness::with(config, vec![]);
    for (number, password, port) in [("100", PASSWORD_100, 5060), ("200", "secret-200", 5070)] {
        let reg = Reg::new(number, &[&format!("<sip:{number}@192.0.2.7:{port}>")]).call_id(number);
        assert_eq!(h.register_with(&reg, password).code(), 200);
    }
    let out = h.call_from("100", PASSWORD_100, "%2345*600%23", source());
    assert_eq!((out.code(), out.response().reason.as_str()), (603, "Logged out: 600"));
    assert!(matches!(&out.persisted[..], [RegistrarCommand::GroupLogin { group, member, logged_in: false }]
        if group == "600" && member == "100"));
    let route = h.call_from("200", "secret-200", "600", source()).routed.expect("routed");
    assert!(route.contacts.iter().all(|b| b.aor == "200"), "100 is not rung: {:?}", route.contacts);
    assert!(h.m.logged_in("601", "100"), "only 600");
    assert_eq!(h.call_from("200", "secret-200", "%2345*601%23", source()).code(), 403, "not a member");
    let all = h.call_from("100", PASSWORD_100, "*45%23", source());
    assert_eq!((all.code(), all.response().reason.as_str()), (603, "Logged in: 600, 601"));
    assert_eq!(all.persisted.len(), 1, "only the change is stored");
    assert!(h.m.logged_in("600", "100"));
}

/// A transfer's target (REFER) is routed as if the transferee dialled it: forwarding
/// followed; a number outside the dial plan, a feature code, pickup or intercom is refused 403
/// with the reason; an extension with no phone is 480.
#[test]
fn transfer_targets_are_routed_like_dialled_numbers() {
    let mut h = Harness::new();
    h.add_extensions(&["300", "400"]);
    let reg = Reg::new("300", &["<sip:300@192.0.2.7:5080>"]).call_id("300");
    assert_eq!(h.register_with(&reg, "secret-300").code(), 200);
    h.m.handle(
        h.now,
        RegistrarInput::SetForwarding {
            number: "200".into(),
            forwarding: Forwarding { always: Some("300".into()), ..Default::default() },
        },
    );
    h.drain();
    let route = h.m.transfer_route("100", "200").expect("routed");
    assert_eq!((route.caller.as_str(), route.callee.as_str(), route.target.as_str()), ("100", "200", "300"));
    assert_eq!(route.contacts.len(), 1);
    for (number, code, reason) in [
        ("999", 403, "no such number"),
        ("*21*300#", 403, "not a number"),
        ("**300", 403, "not a number"),
        ("*80300", 403, "not a number"),
        ("400", 480, "Temporarily Unavailable"),
    ] {
        let (got, why) = h.m.transfer_route("100", number).expect_err(number);
        assert_eq!(got, code, "{number}: {why}");
        assert!(why.contains(reason), "{number}: {why}");
    }
}

/// Park orbits: as a transfer's target, the route says park there; dialled, it says take the
/// call parked there (no phones ring either way).
#[test]
fn park_orbits_route_to_the_park() {
    let config = RegistrarConfig { park_orbits: ["701".to_string()].into(), ..RegistrarConfig::default() };
    let mut h = Harness::with(config, Vec::new());
    let route = h.m.transfer_route("100", "701").expect("an orbit");
    assert_eq!((route.park.as_deref(), route.contacts.len()), (Some("701"), 0));
    let route = h.call_from("100", PASSWORD_100, "701", source()).routed.expect("routed");
    assert_eq!((route.park.as_deref(), route.caller.as_str()), (Some("701"), "100"));
    assert!(h.m.transfer_route("100", "702").is_err(), "no orbit, no extension");
    h.add_extensions(&["701"]);
    let route = h.m.transfer_route("100", "701").err();
    assert_eq!(route.map(|(code, _)| code), Some(480), "an extension 701 (no phone) wins over the orbit");
}

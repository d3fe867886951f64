//! Criterion benchmarks of the SIP hot path: what one REGISTER or INVITE costs pbx on the CPU.
//!
//! - `message/*`: parse ([`parse_datagram`]) and print (`to_bytes`) of a REGISTER and of an
//!   INVITE with an SDP body, as they come off and go onto a UDP socket.
//! - `digest/*`: the server's side of verifying one `Authorization: Digest` answer (RFC 7616,
//!   RFC 8760) with MD5 and SHA-256: parse the credentials, check the nonce's tag, recompute
//!   the request digest from the stored HA1, compare in constant time.
//! - `registrar/*`: the whole `Registrar::handle` of an authenticated REGISTER that refreshes a
//!   binding (nonce count advancing), on virtual time, outputs drained.
//! - `transaction/*`: one non-INVITE server transaction (RFC 3261 §17.2.2) from the request
//!   arriving to the final response going out, through the sans-IO `Transactions` machine.
//!
//! Runs are kept short (3 s of measurement, 30 samples) so `cargo bench -p pbx-benches`
//! finishes in well under two minutes on a 2-core machine. See docs/PERFORMANCE.md.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pbx_actors::Timestamp;
use pbx_actors::registrar::digest::{self, Algorithm, Credentials, NonceKey, QopAuth};
use pbx_actors::registrar::{Extension, Registrar, RegistrarConfig, RegistrarInput, RegistrarOutput};
use pbx_actors::sip::message::{Message, Name, Request, Transport, parse_datagram};
use pbx_actors::sip::transaction::{TimerConfig, TransactionInput, TransactionOutput, Transactions};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

const REGISTER: &str = "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=1928301774\r\n\
To: <sip:1001@pbx.example.com>\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:1001@192.0.2.10:5060;transport=udp>;expires=3600\r\n\
Expires: 3600\r\n\
User-Agent: bench-phone/1.0\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, REFER\r\n\
Content-Length: 0\r\n\
\r\n";

const INVITE_HEAD: &str = "INVITE sip:1002@pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds8;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=9fxced76sl\r\n\
To: <sip:1002@pbx.example.com>\r\n\
Call-ID: 3848276298220188511@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:1001@192.0.2.10:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, REFER\r\n\
Supported: replaces, timer\r\n\
User-Agent: bench-phone/1.0\r\n\
Content-Type: application/sdp\r\n";

const SDP: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

fn invite() -> Vec<u8> {
    format!("{INVITE_HEAD}Content-Length: {}\r\n\r\n{SDP}", SDP.len()).into_bytes()
}

fn parse(bytes: &[u8]) -> Message {
    parse_datagram(bytes).expect("the bench messages are valid")
}

fn message(c: &mut Criterion) {
    let mut group = c.benchmark_group("message");
    for (name, bytes) in [("register", REGISTER.as_bytes().to_vec()), ("invite_sdp", invite())] {
        let parsed = parse(&bytes);
        group.bench_function(format!("parse_{name}"), |b| b.iter(|| parse_datagram(black_box(&bytes))));
        group.bench_function(format!("print_{name}"), |b| b.iter(|| black_box(&parsed).to_bytes()));
        group.bench_function(format!("parse_print_{name}"), |b| b.iter(|| parse(black_box(&bytes)).to_bytes()));
    }
    group.finish();
}

const REALM: &str = "pbx";
const USER: &str = "1001";
const PASSWORD: &str = "correct horse battery";
const DIGEST_URI: &str = "sip:pbx.example.com";
/// The address the bench's phone sends from (its nonces are bound to it).
const SOURCE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10));

/// What the server does with one `Authorization` value: read it, check that the nonce is one
/// it minted and the opaque the one that went with it, recompute the request digest from the
/// stored HA1 and compare in constant time. The nonce-count bookkeeping is the registrar's
/// (see `registrar/register_*`).
fn verify(key: &NonceKey, ha1: &str, value: &str) -> bool {
    let Some(creds) = Credentials::parse(value) else { return false };
    let Some(algorithm) = Algorithm::from_name(creds.algorithm.as_deref().unwrap_or("MD5")) else { return false };
    let Some(minted) = key.verify(&creds.nonce, SOURCE) else { return false };
    if !creds.opaque.as_deref().is_some_and(|o| minted.opaque_is(o)) {
        return false;
    }
    let (Some(nc), Some(cnonce)) = (creds.nc.as_deref(), creds.cnonce.as_deref()) else { return false };
    let qop = Some(QopAuth { nc, cnonce });
    let expected = digest::request_digest(algorithm, ha1, &creds.nonce, qop, "REGISTER", &creds.uri);
    digest::constant_time_eq(expected.as_bytes(), creds.response.as_bytes())
}

/// The `Authorization` value a phone sends back for `nonce`.
fn authorization(algorithm: Algorithm, nonce: &str, opaque: &str, nc: u32) -> String {
    let ha1 = digest::ha1(algorithm, USER, REALM, PASSWORD);
    let nc = format!("{nc:08x}");
    let qop = Some(QopAuth { nc: &nc, cnonce: "0a4f113b" });
    let response = digest::request_digest(algorithm, &ha1, nonce, qop, "REGISTER", DIGEST_URI);
    format!(
        "Digest username=\"{USER}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{DIGEST_URI}\", \
         response=\"{response}\", algorithm={}, opaque=\"{opaque}\", qop=auth, nc={nc}, cnonce=\"0a4f113b\"",
        algorithm.name()
    )
}

fn digest_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("digest");
    let key = NonceKey::new([7; 32]);
    let (nonce, opaque) = key.mint(Timestamp::from_secs(1_000), [9; 8], SOURCE);
    for (name, algorithm) in [("verify_md5", Algorithm::Md5), ("verify_sha256", Algorithm::Sha256)] {
        let ha1 = digest::ha1(algorithm, USER, REALM, PASSWORD);
        let value = authorization(algorithm, &nonce, &opaque, 1);
        assert!(verify(&key, &ha1, &value), "the bench's own answer must verify");
        group.bench_function(name, |b| b.iter(|| verify(&key, black_box(&ha1), black_box(&value))));
    }
    group.finish();
}

fn register_request(call_id: &str, cseq: u32, authorization: Option<&str>) -> Request {
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let text = format!(
        "REGISTER {DIGEST_URI} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{call_id}{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{USER}@pbx.example.com>;tag=1928301774\r\n\
         To: <sip:{USER}@pbx.example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{USER}@192.0.2.10:5060>\r\n\
         Expires: 3600\r\n\
         {auth}Content-Length: 0\r\n\r\n"
    );
    match parse(text.as_bytes()) {
        Message::Request(request) => request,
        Message::Response(_) => unreachable!("a REGISTER is a request"),
    }
}

/// A quoted parameter of a challenge, e.g. `nonce`.
fn challenge_param(value: &str, name: &str) -> String {
    let start = value.find(&format!("{name}=\"")).expect("challenge has the parameter") + name.len() + 2;
    value[start..].split('"').next().expect("closing quote").to_owned()
}

/// The full registrar round of an authenticated REGISTER that refreshes an existing binding:
/// credentials checked (nonce count advancing), the binding refreshed, the 200 built.
fn registrar_register(c: &mut Criterion) {
    let mut group = c.benchmark_group("registrar");
    let source: SocketAddr = "192.0.2.10:5060".parse().expect("literal");
    for (name, algorithm) in [("register_md5", Algorithm::Md5), ("register_sha256", Algorithm::Sha256)] {
        let config = RegistrarConfig { realm: REALM.into(), ..RegistrarConfig::default() };
        let extension = Extension {
            number: USER.into(),
            display_name: String::new(),
            ha1_md5: digest::ha1(Algorithm::Md5, USER, REALM, PASSWORD),
            ha1_sha256: digest::ha1(Algorithm::Sha256, USER, REALM, PASSWORD),
        };
        let mut now = Timestamp::from_secs(1_000);
        let mut registrar = Registrar::new(config, [42; 32], vec![extension], Vec::new(), now);
        while registrar.poll_output().is_some() {}
        // One challenge, then every REGISTER answers it with the next nonce count.
        let input = |request| RegistrarInput::Register { tx: 1, request, source, transport: Transport::Udp };
        registrar.handle(now, input(register_request("bench-call", 1, None)));
        let challenge = std::iter::from_fn(|| registrar.poll_output())
            .find_map(|out| match out {
                RegistrarOutput::Respond { response, .. } => Some(response),
                _ => None,
            })
            .expect("an unauthenticated REGISTER is challenged");
        let value = challenge
            .headers
            .get_raw(&Name::WWW_AUTHENTICATE)
            .map(|v| v.to_string())
            .find(|v| v.contains(&format!("algorithm={}", algorithm.name())))
            .expect("a challenge for each algorithm");
        let (nonce, opaque) = (challenge_param(&value, "nonce"), challenge_param(&value, "opaque"));
        let mut nc = 1u32;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    nc += 1;
                    register_request("bench-call", nc, Some(&authorization(algorithm, &nonce, &opaque, nc)))
                },
                |request| {
                    now = Timestamp(now.as_micros() + 1);
                    registrar.handle(now, input(request));
                    let mut ok = false;
                    while let Some(out) = registrar.poll_output() {
                        if let RegistrarOutput::Respond { response, .. } = out {
                            ok = response.code == 200;
                        }
                    }
                    assert!(ok, "an authenticated refresh gets 200");
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// One non-INVITE server transaction (RFC 3261 §17.2.2) from the request arriving to the 200
/// leaving. Virtual time advances 1 ms per REGISTER, so transactions completed 32 s earlier
/// (Timer J) are reaped as they would be at 1,000 REGISTER/s: the table holds ~32,000.
fn transaction_round(c: &mut Criterion) {
    let mut group = c.benchmark_group("transaction");
    let source: SocketAddr = "192.0.2.10:5060".parse().expect("literal");
    let mut transactions = Transactions::new(TimerConfig::default());
    let mut now = Timestamp::from_secs(1);
    let mut n = 0u64;
    group.bench_function("non_invite_server_round", |b| {
        b.iter_batched(
            || {
                n += 1;
                Message::Request(register_request(&format!("tx{n}"), 1, None))
            },
            |message| {
                now = Timestamp(now.as_micros() + 1_000);
                transactions.handle(now, TransactionInput::Received { message, source, transport: Transport::Udp });
                let (key, request) = std::iter::from_fn(|| transactions.poll_output())
                    .find_map(|out| match out {
                        TransactionOutput::Request { key, request, .. } => Some((key, request)),
                        _ => None,
                    })
                    .expect("a new request reaches the TU");
                let response = request.response(200, Some("bench"));
                transactions.handle(now, TransactionInput::SendResponse { key, response });
                let mut sent = false;
                while let Some(out) = transactions.poll_output() {
                    sent |= matches!(out, TransactionOutput::Transmit { .. });
                }
                assert!(sent, "the final response goes out");
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn short() -> Criterion {
    Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(30)
}

criterion_group! { name = benches; config = short(); targets = message, digest_verify, registrar_register, transaction_round }
criterion_main!(benches);

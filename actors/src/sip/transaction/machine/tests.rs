use super::*;
use crate::sip::message::parse_datagram;
use proptest::prelude::*;

const PHONE: &str = "10.0.0.5:5062";
const PBX_VIA: &str = "192.0.2.1:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn ms(millis: u64) -> Timestamp {
    Timestamp::from_millis(millis)
}

fn via_transport(transport: Transport) -> &'static str {
    transport.via_name()
}

fn parse_request(text: &str) -> Request {
    match parse_datagram(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

/// A request as a phone at 10.0.0.5 sends it to the PBX. `branch` empty means no branch
/// parameter at all (an RFC 2543 peer).
fn phone_request(method: &str, branch: &str, cseq: u32, to_tag: Option<&str>, transport: Transport) -> Request {
    let branch = if branch.is_empty() { String::new() } else { format!(";branch={branch}") };
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let cseq_method = method;
    parse_request(&format!(
        "{method} sip:200@pbx.example SIP/2.0\r\n\
         Via: SIP/2.0/{} {PHONE}{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:100@pbx.example>;tag=a1\r\n\
         To: <sip:200@pbx.example>{to_tag}\r\n\
         Call-ID: call-1@10.0.0.5\r\n\
         CSeq: {cseq} {cseq_method}\r\n\
         Content-Length: 0\r\n\r\n",
        via_transport(transport)
    ))
}

/// A request the PBX (as TU) sends to a phone.
fn pbx_request(method: &str, branch: &str, transport: Transport) -> Request {
    parse_request(&format!(
        "{method} sip:100@10.0.0.5:5062 SIP/2.0\r\n\
         Via: SIP/2.0/{} {PBX_VIA};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         Route: <sip:proxy.example;lr>\r\n\
         From: <sip:200@pbx.example>;tag=p1\r\n\
         To: <sip:100@pbx.example>\r\n\
         Call-ID: out-1@192.0.2.1\r\n\
         CSeq: 5 {method}\r\n\
         Content-Length: 0\r\n\r\n",
        via_transport(transport)
    ))
}

fn received(request: Request, source: &str, transport: Transport) -> TransactionInput {
    TransactionInput::Received { message: Message::Request(request), source: addr(source), transport }
}

fn received_response(response: Response) -> TransactionInput {
    TransactionInput::Received { message: Message::Response(response), source: addr(PHONE), transport: Transport::Udp }
}

fn send(request: Request, transport: Transport) -> TransactionInput {
    TransactionInput::SendRequest { request, destination: addr(PHONE), transport }
}

fn first_line(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).lines().next().unwrap_or_default().to_owned()
}

/// Drives one table in virtual time and checks the contract after every step.
struct Harness {
    machine: Transactions,
    now: Timestamp,
}

impl Harness {
    fn new() -> Self {
        Harness { machine: Transactions::new(TimerConfig::default()), now: Timestamp::ZERO }
    }

    fn step(&mut self, now: Timestamp, input: TransactionInput) -> Vec<TransactionOutput> {
        self.now = now;
        self.machine.handle(now, input);
        if let Some(at) = self.machine.poll_timeout() {
            assert!(at > now, "poll_timeout {at} is not after now {now}");
        }
        std::iter::from_fn(|| self.machine.poll_output()).collect()
    }

    fn at(&mut self, millis: u64, input: TransactionInput) -> Vec<TransactionOutput> {
        self.step(ms(millis), input)
    }

    /// Fires every timer up to and including `millis`, each at its exact instant.
    fn run_until(&mut self, millis: u64) -> Vec<(Timestamp, TransactionOutput)> {
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            match self.machine.poll_timeout() {
                Some(at) if at <= ms(millis) => {
                    seen.extend(self.step(at, TransactionInput::Timeout).into_iter().map(|o| (at, o)));
                }
                _ => return seen,
            }
        }
        panic!("timers did not settle: livelock");
    }

    /// The one server key a fresh request produced.
    fn server_key(outputs: &[TransactionOutput]) -> (ServerKey, Request) {
        outputs
            .iter()
            .find_map(|o| match o {
                TransactionOutput::Request { key, request, .. } => Some((key.clone(), request.clone())),
                _ => None,
            })
            .expect("a Request output")
    }
}

fn transmit_times(seen: &[(Timestamp, TransactionOutput)]) -> Vec<u64> {
    seen.iter()
        .filter(|(_, o)| matches!(o, TransactionOutput::Transmit { .. }))
        .map(|(at, _)| at.as_micros() / 1_000)
        .collect()
}

fn transmits(outputs: &[TransactionOutput]) -> Vec<Bytes> {
    outputs
        .iter()
        .filter_map(|o| match o {
            TransactionOutput::Transmit { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .collect()
}

fn is_timeout(o: &TransactionOutput) -> bool {
    matches!(o, TransactionOutput::Timeout { .. })
}

fn is_terminated(o: &TransactionOutput) -> bool {
    matches!(o, TransactionOutput::Terminated { .. })
}

/// The timed events that are not transmissions: (millis, "Timeout"/"Terminated"/…).
fn events(seen: &[(Timestamp, TransactionOutput)]) -> Vec<(u64, &'static str)> {
    seen.iter()
        .filter_map(|(at, o)| {
            let name = match o {
                TransactionOutput::Transmit { .. } => return None,
                TransactionOutput::Request { .. } => "Request",
                TransactionOutput::StrayAck { .. } => "StrayAck",
                TransactionOutput::Response { .. } => "Response",
                TransactionOutput::StrayResponse { .. } => "StrayResponse",
                TransactionOutput::Timeout { .. } => "Timeout",
                TransactionOutput::Terminated { .. } => "Terminated",
                TransactionOutput::Forged { .. } => "Forged",
            };
            Some((at.as_micros() / 1_000, name))
        })
        .collect()
}

// ---- INVITE client (§17.1.1) ----

/// Timer A retransmits an INVITE over UDP at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s and Timer B ends it at 32 s.
#[test]
fn invite_client_timer_a_doubles_until_timer_b() {
    let mut h = Harness::new();
    let out = h.at(0, send(pbx_request("INVITE", "z9hG4bK-a", Transport::Udp), Transport::Udp));
    assert_eq!(transmits(&out).len(), 1);
    assert_eq!(h.machine.poll_timeout(), Some(Timestamp(500_000)));
    let seen = h.run_until(60_000);
    assert_eq!(transmit_times(&seen), [500, 1_500, 3_500, 7_500, 15_500, 31_500]);
    assert_eq!(seen.iter().filter(|(at, _)| *at == Timestamp(31_500_000)).count(), 1, "exact instant");
    assert_eq!(events(&seen), [(32_000, "Timeout"), (32_000, "Terminated")]);
    assert!(h.machine.is_empty());
    assert_eq!(h.machine.poll_timeout(), None);
}

/// Over TCP an INVITE is sent once (no Timer A) and Timer B still fires at 64*T1.
#[test]
fn invite_client_tcp_has_no_timer_a_but_timer_b() {
    let mut h = Harness::new();
    let out = h.at(0, send(pbx_request("INVITE", "z9hG4bK-a", Transport::Tcp), Transport::Tcp));
    assert_eq!(transmits(&out).len(), 1);
    let seen = h.run_until(60_000);
    assert_eq!(transmit_times(&seen), Vec::<u64>::new());
    assert_eq!(events(&seen), [(32_000, "Timeout"), (32_000, "Terminated")]);
}

/// A provisional response moves the INVITE to Proceeding: Timers A and B stop, the 1xx goes up.
#[test]
fn invite_client_provisional_stops_a_and_b() {
    let mut h = Harness::new();
    let invite = pbx_request("INVITE", "z9hG4bK-a", Transport::Udp);
    h.at(0, send(invite.clone(), Transport::Udp));
    let out = h.at(300, received_response(invite.response(180, Some("x9"))));
    assert!(matches!(&out[..], [TransactionOutput::Response { response, .. }] if response.code == 180));
    assert_eq!(h.machine.poll_timeout(), None);
    assert_eq!(h.machine.len(), 1);
}

/// A 486 is ACKed by the transaction (§17.1.1.3); Timer D re-sends the same ACK for a retransmitted 486 and ends it at 32 s.
#[test]
fn invite_client_acks_non_2xx_and_timer_d_absorbs_retransmissions() {
    let mut h = Harness::new();
    let invite = pbx_request("INVITE", "z9hG4bK-a", Transport::Udp);
    h.at(0, send(invite.clone(), Transport::Udp));
    let busy = invite.response(486, Some("x9"));
    let out = h.at(400, received_response(busy.clone()));
    let acks = transmits(&out);
    assert_eq!(acks.len(), 1);
    assert!(out.iter().any(|o| matches!(o, TransactionOutput::Response { response, .. } if response.code == 486)));
    let ack = parse_request(std::str::from_utf8(&acks[0]).expect("utf8"));
    assert_eq!(ack.method, Method::ACK);
    assert_eq!(ack.branch(), invite.branch(), "same branch as the INVITE");
    assert_eq!(ack.cseq().map(|c| (c.cseq, c.method)), Some((5, Method::ACK)));
    assert_eq!(ack.to().and_then(|t| t.tag).as_deref(), Some("x9"), "To tag of the response");
    assert_eq!(ack.header(&Name::ROUTE), Some("<sip:proxy.example;lr>"));
    assert_eq!(ack.headers.get_raw(&Name::VIA).count(), 1);

    let again = h.at(450, received_response(busy));
    assert_eq!(transmits(&again), acks, "the same ACK, and nothing for the TU");
    assert_eq!(again.len(), 1);
    assert_eq!(h.machine.poll_timeout(), Some(ms(32_400)));
    let seen = h.run_until(40_000);
    assert_eq!(events(&seen), [(32_400, "Terminated")]);
}

/// Over TCP Timer D is zero: the ACK is sent and the transaction ends at once.
#[test]
fn invite_client_tcp_non_2xx_terminates_at_once() {
    let mut h = Harness::new();
    let invite = pbx_request("INVITE", "z9hG4bK-a", Transport::Tcp);
    h.at(0, send(invite.clone(), Transport::Tcp));
    let out = h.at(1_000, received_response(invite.response(486, Some("x9"))));
    assert_eq!(transmits(&out).len(), 1);
    assert!(is_terminated(out.last().expect("outputs")));
    assert!(h.machine.is_empty());
}

/// A 2xx goes up and ends the INVITE transaction; its retransmission comes up as a stray.
#[test]
fn invite_client_2xx_terminates_and_retransmission_is_stray() {
    let mut h = Harness::new();
    let invite = pbx_request("INVITE", "z9hG4bK-a", Transport::Udp);
    h.at(0, send(invite.clone(), Transport::Udp));
    let ok = invite.response(200, Some("x9"));
    let out = h.at(400, received_response(ok.clone()));
    assert!(matches!(&out[..], [TransactionOutput::Response { .. }, TransactionOutput::Terminated { .. }]));
    let again = h.at(450, received_response(ok));
    assert!(matches!(&again[..], [TransactionOutput::StrayResponse { response, .. }] if response.code == 200));
}

/// §9.1: a cancelled INVITE that never gets a final response is given up 64*T1 after the CANCEL.
#[test]
fn cancelled_invite_client_is_given_up_after_64_t1() {
    let mut h = Harness::new();
    let invite = pbx_request("INVITE", "z9hG4bK-a", Transport::Tcp);
    h.at(0, send(invite.clone(), Transport::Tcp));
    h.at(100, received_response(invite.response(180, Some("x9"))));
    h.at(10_000, send(pbx_request("CANCEL", "z9hG4bK-a", Transport::Tcp), Transport::Tcp));
    assert_eq!(h.machine.len(), 2);
    let seen = h.run_until(60_000);
    let invite_key = TransactionKey::Client(ClientKey::of_request(&invite).expect("key"));
    let invite_end: Vec<_> = seen
        .iter()
        .filter(|(_, o)| matches!(o, TransactionOutput::Timeout { key } | TransactionOutput::Terminated { key } if *key == invite_key))
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(invite_end, [ms(42_000), ms(42_000)]);
}

/// An ACK from the TU (for a 2xx) goes straight to the wire without a transaction.
#[test]
fn tu_ack_is_sent_without_a_transaction() {
    let mut h = Harness::new();
    let out = h.at(0, send(pbx_request("ACK", "z9hG4bK-ack", Transport::Udp), Transport::Udp));
    assert_eq!(transmits(&out).len(), 1);
    assert_eq!(out.len(), 1);
    assert!(h.machine.is_empty());
}

/// A client request without a magic-cookie branch is refused with Timeout and Terminated.
#[test]
fn client_request_without_cookie_is_refused() {
    let mut h = Harness::new();
    let out = h.at(0, send(pbx_request("OPTIONS", "old-style", Transport::Udp), Transport::Udp));
    assert!(matches!(&out[..], [a, b] if is_timeout(a) && is_terminated(b)));
    assert!(h.machine.is_empty());
}

// ---- non-INVITE client (§17.1.2) ----

/// Timer E doubles from T1 and caps at T2 (0.5, 1.5, 3.5, 7.5, 11.5 … 31.5 s); Timer F ends it at 32 s.
#[test]
fn non_invite_client_timer_e_caps_at_t2_then_timer_f() {
    let mut h = Harness::new();
    h.at(0, send(pbx_request("OPTIONS", "z9hG4bK-o", Transport::Udp), Transport::Udp));
    let seen = h.run_until(60_000);
    assert_eq!(transmit_times(&seen), [500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]);
    assert_eq!(events(&seen), [(32_000, "Timeout"), (32_000, "Terminated")]);
}

/// In Proceeding, Timer E retransmits at T2.
#[test]
fn non_invite_client_proceeding_retransmits_at_t2() {
    let mut h = Harness::new();
    let options = pbx_request("OPTIONS", "z9hG4bK-o", Transport::Udp);
    h.at(0, send(options.clone(), Transport::Udp));
    h.run_until(600);
    let out = h.at(700, received_response(options.response(100, None)));
    assert_eq!(out.len(), 1, "the 1xx goes up");
    let seen = h.run_until(60_000);
    assert_eq!(transmit_times(&seen), [1_500, 5_500, 9_500, 13_500, 17_500, 21_500, 25_500, 29_500]);
    assert_eq!(events(&seen), [(32_000, "Timeout"), (32_000, "Terminated")]);
}

/// A final response goes up once; Timer K (T4) absorbs its retransmissions, then ends it; on TCP K is zero.
#[test]
fn non_invite_client_timer_k() {
    let mut h = Harness::new();
    let options = pbx_request("OPTIONS", "z9hG4bK-o", Transport::Udp);
    h.at(0, send(options.clone(), Transport::Udp));
    let ok = options.response(200, Some("x9"));
    let out = h.at(400, received_response(ok.clone()));
    assert!(matches!(&out[..], [TransactionOutput::Response { response, .. }] if response.code == 200));
    assert!(h.at(450, received_response(ok)).is_empty(), "retransmitted final absorbed");
    let seen = h.run_until(60_000);
    assert_eq!(transmit_times(&seen), Vec::<u64>::new(), "Timer E stopped");
    assert_eq!(events(&seen), [(5_400, "Terminated")]);

    let options = pbx_request("OPTIONS", "z9hG4bK-t", Transport::Tcp);
    h.at(61_000, send(options.clone(), Transport::Tcp));
    let out = h.at(61_100, received_response(options.response(200, Some("x9"))));
    assert!(matches!(&out[..], [TransactionOutput::Response { .. }, TransactionOutput::Terminated { .. }]));
}

// ---- INVITE server (§17.2.1, RFC 6026) ----

/// The 100 Trying goes out after 200 ms of TU silence, and is re-sent for a retransmitted INVITE; not if the TU answered first.
#[test]
fn invite_server_sends_100_trying_after_200ms_unless_tu_answered() {
    let mut h = Harness::new();
    let out = h.at(0, received(phone_request("INVITE", "z9hG4bK-i", 1, None, Transport::Udp), PHONE, Transport::Udp));
    assert_eq!(out.len(), 1, "only the Request for the TU");
    let seen = h.run_until(400);
    assert_eq!(transmit_times(&seen), [200]);
    let TransactionOutput::Transmit { bytes, destination, .. } = &seen[0].1 else { panic!("transmit") };
    assert_eq!(first_line(bytes), "SIP/2.0 100 Trying");
    assert_eq!(*destination, addr(PHONE));
    let again =
        h.at(500, received(phone_request("INVITE", "z9hG4bK-i", 1, None, Transport::Udp), PHONE, Transport::Udp));
    assert_eq!(transmits(&again).iter().map(first_line).collect::<Vec<_>>(), ["SIP/2.0 100 Trying"]);

    let out =
        h.at(1_000, received(phone_request("INVITE", "z9hG4bK-j", 2, None, Transport::Udp), PHONE, Transport::Udp));
    let (key, request) = Harness::server_key(&out);
    let ringing = h.at(1_100, TransactionInput::SendResponse { key, response: request.response(180, Some("b1")) });
    assert_eq!(transmits(&ringing).len(), 1);
    assert_eq!(transmit_times(&h.run_until(2_000)), Vec::<u64>::new(), "no 100 after the TU's 180");
}

/// A 486 is retransmitted by Timer G (T1 doubling, capped at T2) until Timer H fires at 64*T1 with Timeout.
#[test]
fn invite_server_timer_g_and_h() {
    let mut h = Harness::new();
    let out = h.at(0, received(phone_request("INVITE", "z9hG4bK-i", 1, None, Transport::Udp), PHONE, Transport::Udp));
    let (key, request) = Harness::server_key(&out);
    let busy = h.at(100, TransactionInput::SendResponse { key, response: request.response(486, Some("b1")) });
    assert_eq!(transmits(&busy).iter().map(first_line).collect::<Vec<_>>(), ["SIP/2.0 486 Busy Here"]);
    let again =
        h.at(150, received(phone_request("INVITE", "z9hG4bK-i", 1, None, Transport::Udp), PHONE, Transport::Udp));
    assert_eq!(transmits(&again), transmits(&busy), "retransmitted INVITE gets the 486 again");
    let seen = h.run_until(60_000);
    assert_eq!(transmit_times(&seen), [600, 1_600, 3_600, 7_600, 11_600, 15_600, 19_600, 23_600, 27_600, 31_600]);
    assert_eq!(events(&seen), [(32_100, "Timeout"), (32_100, "Terminated")]);
}

/// The ACK for a 486 is absorbed (Confirmed): Timer G stops, its retransmission is absorbed, Timer I ends it after T4; on TCP at once.
#[test]
fn invite_server_ack_confirms_and_timer_i() {
    let mut h = Harness::new();
    let out = h.at(0, received(phone_request("INVITE", "z9hG4bK-i", 1, None, Transport::Udp), PHONE, Transport::Udp));
    let (key, request) = Harness::server_key(&out);
    h.at(0, TransactionInput::SendResponse { key, response: request.response(486, Some("b1")) });
    h.run_until(600);
    let ack = phone_request("ACK", "z9hG4bK-i", 1, Some("b1"), Transport::Udp);
    assert!(h.at(1_000, received(ack.clone(), PHONE, Transport::Udp)).is_empty(), "ACK absorbed");
    assert!(h.at(1_200, received(ack, PHONE, Transport::Udp)).is_empty(), "retransmitted ACK absorbed");
    let seen = h.run_until(60_000);
    assert_eq!(transmit_times(&seen), Vec::<u64>::new(), "Timer G stopped");
    assert_eq!(events(&seen), [(6_000, "Terminated")]);

    let out =
        h.at(61_000, received(phone_request("INVITE", "z9hG4bK-t", 2, None, Transport::Tcp), PHONE, Transport::Tcp));
    let (key, request) = Harness::server_key(&out);
    let busy = h.at(61_000, TransactionInput::SendResponse { key, response: request.response(486, Some("b2")) });
    assert_eq!(transmits(&busy).len(), 1);
    assert_eq!(h.machine.poll_timeout(), Some(ms(61_000 + 32_000)), "Timer H, no Timer G on TCP");
    let ack = phone_request("ACK", "z9hG4bK-t", 2, Some("b2"), Transport::Tcp);
    let out = h.at(61_100, received(ack, PHONE, Transport::Tcp));
    assert!(matches!(&out[..], [TransactionOutput::Terminated { .. }]), "Timer I is zero on TCP");
}

/// RFC 6026: after a 2xx the transaction is Accepted: retransmitted INVITEs are absorbed, the TU's 2xx
/// retransmissions pass, the 2xx ACK goes up as a stray, and Timer L ends it at 64*T1.
#[test]
fn invite_server_accepted_and_timer_l() {
    let mut h = Harness::new();
    let invite = phone_request("INVITE", "z9hG4bK-i", 1, None, Transport::Udp);
    let out = h.at(0, received(invite.clone(), PHONE, Transport::Udp));
    let (key, request) = Harness::server_key(&out);
    let ok = request.response(200, Some("b1"));
    assert_eq!(transmits(&h.at(0, TransactionInput::SendResponse { key: key.clone(), response: ok.clone() })).len(), 1);
    assert!(h.at(500, received(invite, PHONE, Transport::Udp)).is_empty(), "retransmitted INVITE absorbed");
    assert_eq!(transmits(&h.at(500, TransactionInput::SendResponse { key, response: ok })).len(), 1);
    let ack = phone_request("ACK", "z9hG4bK-ack2xx", 1, Some("b1"), Transport::Udp);
    let out = h.at(600, received(ack, PHONE, Transport::Udp));
    assert!(matches!(&out[..], [TransactionOutput::StrayAck { .. }]));
    let seen = h.run_until(60_000);
    assert_eq!(events(&seen), [(32_000, "Terminated")]);
}

/// An ACK that matches no transaction at all (the usual ACK for a 2xx) goes up as StrayAck.
#[test]
fn ack_without_transaction_is_stray() {
    let mut h = Harness::new();
    let ack = phone_request("ACK", "z9hG4bK-new", 1, Some("b1"), Transport::Udp);
    let out = h.at(0, received(ack, PHONE, Transport::Udp));
    assert!(matches!(&out[..], [TransactionOutput::StrayAck { request, .. }] if request.method == Method::ACK));
    assert!(h.machine.is_empty());
}

// ---- non-INVITE server (§17.2.2) ----

/// A retransmitted REGISTER is absorbed before the response and answered with the same response after; Timer J ends it at 64*T1.
#[test]
fn non_invite_server_absorbs_retransmissions_and_timer_j() {
    let mut h = Harness::new();
    let register = phone_request("REGISTER", "z9hG4bK-r", 7, None, Transport::Udp);
    let out = h.at(0, received(register.clone(), PHONE, Transport::Udp));
    let (key, request) = Harness::server_key(&out);
    assert_eq!(key.method(), &Method::REGISTER);
    assert!(h.at(400, received(register.clone(), PHONE, Transport::Udp)).is_empty(), "absorbed in Trying");
    let ok =
        h.at(450, TransactionInput::SendResponse { key: key.clone(), response: request.response(200, Some("r1")) });
    let again = h.at(900, received(register, PHONE, Transport::Udp));
    assert_eq!(transmits(&again), transmits(&ok));
    let late = h.at(950, TransactionInput::SendResponse { key, response: request.response(500, Some("r1")) });
    assert!(late.is_empty(), "a second final is discarded in Completed");
    let seen = h.run_until(60_000);
    assert_eq!(events(&seen), [(32_450, "Terminated")]);
}

/// A provisional response is re-sent for a retransmission; over TCP Timer J is zero.
#[test]
fn non_invite_server_provisional_resent_and_tcp_j_zero() {
    let mut h = Harness::new();
    let bye = phone_request("BYE", "z9hG4bK-b", 2, Some("b1"), Transport::Tcp);
    let out = h.at(0, received(bye.clone(), PHONE, Transport::Tcp));
    let (key, request) = Harness::server_key(&out);
    let trying = h.at(10, TransactionInput::SendResponse { key: key.clone(), response: request.response(100, None) });
    assert_eq!(transmits(&h.at(20, received(bye, PHONE, Transport::Tcp))), transmits(&trying));
    let out = h.at(30, TransactionInput::SendResponse { key, response: request.response(200, None) });
    assert!(matches!(&out[..], [TransactionOutput::Transmit { .. }, TransactionOutput::Terminated { .. }]));
}

// ---- matching (§17.2.3) ----

/// Without the magic cookie, RFC 2543 matching still recognises a retransmitted INVITE and its ACK (by the response's To tag).
#[test]
fn rfc2543_matching_without_cookie() {
    let mut h = Harness::new();
    let invite = phone_request("INVITE", "", 1, None, Transport::Udp);
    let out = h.at(0, received(invite.clone(), PHONE, Transport::Udp));
    let (key, request) = Harness::server_key(&out);
    assert_eq!(key.branch(), None);
    h.at(10, TransactionInput::SendResponse { key, response: request.response(480, Some("b1")) });
    let again = h.at(20, received(invite, PHONE, Transport::Udp));
    assert_eq!(transmits(&again).iter().map(first_line).collect::<Vec<_>>(), ["SIP/2.0 480 Temporarily Unavailable"]);
    assert_eq!(h.machine.len(), 1);

    let other_cseq = h.at(30, received(phone_request("INVITE", "", 2, None, Transport::Udp), PHONE, Transport::Udp));
    assert!(
        other_cseq.iter().any(|o| matches!(o, TransactionOutput::Request { .. })),
        "a new CSeq is a new transaction"
    );
    assert_eq!(h.machine.len(), 2);

    let wrong_tag = phone_request("ACK", "", 1, Some("zz"), Transport::Udp);
    assert!(matches!(&h.at(40, received(wrong_tag, PHONE, Transport::Udp))[..], [TransactionOutput::StrayAck { .. }]));
    let ack = phone_request("ACK", "", 1, Some("b1"), Transport::Udp);
    assert!(h.at(50, received(ack, PHONE, Transport::Udp)).is_empty(), "ACK matched by the response's To tag");
    assert_eq!(transmit_times(&h.run_until(1_000)), [230], "only the second INVITE's 100; no 480 after the ACK");
}

/// A CANCEL is its own transaction, passed to the TU, and find_invite_for_cancel names the INVITE it cancels.
#[test]
fn cancel_is_its_own_transaction_and_finds_the_invite() {
    let mut h = Harness::new();
    let out = h.at(0, received(phone_request("INVITE", "z9hG4bK-i", 1, None, Transport::Udp), PHONE, Transport::Udp));
    let (invite_key, _) = Harness::server_key(&out);
    let cancel = phone_request("CANCEL", "z9hG4bK-i", 1, None, Transport::Udp);
    let out = h.at(1_000, received(cancel.clone(), PHONE, Transport::Udp));
    let (cancel_key, cancel_request) = Harness::server_key(&out);
    assert_eq!(cancel_key.method(), &Method::CANCEL);
    assert_ne!(cancel_key, invite_key);
    assert_eq!(h.machine.len(), 2);
    assert_eq!(h.machine.find_invite_for_cancel(&cancel_request), Some(invite_key));
    let stray = phone_request("CANCEL", "z9hG4bK-other", 1, None, Transport::Udp);
    assert_eq!(h.machine.find_invite_for_cancel(&stray), None, "the TU answers 481");

    let legacy = h.at(2_000, received(phone_request("INVITE", "", 3, None, Transport::Udp), PHONE, Transport::Udp));
    let (legacy_key, _) = Harness::server_key(&legacy);
    let legacy_cancel = phone_request("CANCEL", "", 3, None, Transport::Udp);
    assert_eq!(h.machine.find_invite_for_cancel(&legacy_cancel), Some(legacy_key), "RFC 2543 CANCEL");
}

/// Responses over UDP follow the Via's received/rport (the NAT address), over TCP the connection.
#[test]
fn responses_route_by_via_on_udp_and_by_connection_on_tcp() {
    let mut h = Harness::new();
    let nat = "203.0.113.9:40000";
    let out = h.at(0, received(phone_request("OPTIONS", "z9hG4bK-n", 1, None, Transport::Udp), nat, Transport::Udp));
    let (key, request) = Harness::server_key(&out);
    let out = h.at(1, TransactionInput::SendResponse { key, response: request.response(200, Some("o1")) });
    assert!(matches!(&out[..], [TransactionOutput::Transmit { destination, .. }] if *destination == addr(nat)));

    let conn = "203.0.113.9:51000";
    let mut tcp = phone_request("OPTIONS", "z9hG4bK-m", 1, None, Transport::Tcp);
    tcp.headers.remove(&Name::VIA);
    tcp.headers.insert(Name::VIA, "SIP/2.0/TCP 10.0.0.5:5062;branch=z9hG4bK-m");
    let out = h.at(2, received(tcp, conn, Transport::Tcp));
    let (key, request) = Harness::server_key(&out);
    let out = h.at(3, TransactionInput::SendResponse { key, response: request.response(200, Some("o2")) });
    assert!(matches!(&out[0], TransactionOutput::Transmit { destination, .. } if *destination == addr(conn)));
}

// ---- bounds and contract ----

/// `n` client transactions started through the private door, their outputs drained: a table
/// filled in milliseconds (65,536 printed requests take seconds in a debug build).
fn fill(h: &mut Harness, n: usize) {
    for n in 0..n {
        let key = TransactionKey::Client(ClientKey { branch: format!("z9hG4bK-fill{n}"), method: Method::OPTIONS });
        let kind = Kind::NonInviteClient {
            state: NonInviteClientState::Trying,
            bytes: Bytes::new(),
            destination: addr(PHONE),
            call_id: None,
        };
        h.machine.start(Timestamp::ZERO, key, Transport::Tcp, kind);
    }
    while h.machine.poll_output().is_some() {}
}

/// Over TRANSACTIONS_MAX a new request gets a stateless 503 with Retry-After (the same bytes when retransmitted) and a new client request is refused.
#[test]
fn over_the_bound_requests_get_503_and_client_requests_are_refused() {
    let mut h = Harness::new();
    fill(&mut h, TRANSACTIONS_MAX);
    assert_eq!(h.machine.len(), TRANSACTIONS_MAX);

    let register = phone_request("REGISTER", "z9hG4bK-r", 7, None, Transport::Udp);
    let out = h.at(1, received(register.clone(), PHONE, Transport::Udp));
    let sent = transmits(&out);
    assert_eq!(out.len(), 1);
    let text = String::from_utf8_lossy(&sent[0]).into_owned();
    assert!(text.starts_with("SIP/2.0 503 Service Unavailable\r\n"), "{text}");
    assert!(text.contains(&format!("Retry-After: {OVERLOAD_RETRY_AFTER_S}\r\n")), "{text}");
    assert!(text.contains("To: <sip:200@pbx.example>;tag="), "{text}");
    assert_eq!(transmits(&h.at(2, received(register, PHONE, Transport::Udp))), sent, "stateless, same To tag");
    assert_eq!(h.machine.len(), TRANSACTIONS_MAX);

    let out = h.at(3, send(pbx_request("OPTIONS", "z9hG4bK-one-more", Transport::Udp), Transport::Udp));
    assert!(matches!(&out[..], [a, b] if is_timeout(a) && is_terminated(b)));
    assert_eq!(h.machine.len(), TRANSACTIONS_MAX);
}

/// At the bound, a transaction that only waits out retransmissions (Timer J) is evicted to
/// make room for a new request instead of a 503; its late retransmission is then new work.
#[test]
fn at_the_bound_a_lingering_transaction_makes_room() {
    let mut h = Harness::new();
    fill(&mut h, TRANSACTIONS_MAX - 1);
    // The last slot: a REGISTER answered 200, now lingering under Timer J.
    let first = phone_request("REGISTER", "z9hG4bK-first", 1, None, Transport::Udp);
    let (key, request) = Harness::server_key(&h.at(1, received(first.clone(), PHONE, Transport::Udp)));
    h.at(2, TransactionInput::SendResponse { key: key.clone(), response: request.response(200, Some("t")) });
    assert_eq!(h.machine.len(), TRANSACTIONS_MAX);

    let second = phone_request("REGISTER", "z9hG4bK-second", 2, None, Transport::Udp);
    let out = h.at(3, received(second, PHONE, Transport::Udp));
    assert!(
        out.iter().any(|o| matches!(o, TransactionOutput::Terminated { key: TransactionKey::Server(k) } if *k == key)),
        "the lingering transaction is ended: {out:?}"
    );
    assert!(out.iter().any(|o| matches!(o, TransactionOutput::Request { .. })), "the new request is taken: {out:?}");
    assert!(transmits(&out).is_empty(), "no 503: {out:?}");
    assert_eq!(h.machine.len(), TRANSACTIONS_MAX);

    // Nothing lingers now: the next new request is refused with 503 after all.
    let third = phone_request("REGISTER", "z9hG4bK-third", 3, None, Transport::Udp);
    let sent = transmits(&h.at(4, received(third, PHONE, Transport::Udp)));
    assert!(String::from_utf8_lossy(&sent[0]).starts_with("SIP/2.0 503"), "{sent:?}");
}

/// At the bound, an INVITE answered 2xx (Accepted, Timer L) makes room for a new request too:
/// it only absorbs retransmissions of a request already answered.
#[test]
fn at_the_bound_an_accepted_invite_makes_room() {
    let mut h = Harness::new();
    fill(&mut h, TRANSACTIONS_MAX - 1);
    let invite = phone_request("INVITE", "z9hG4bK-answered", 1, None, Transport::Udp);
    let (key, request) = Harness::server_key(&h.at(1, received(invite, PHONE, Transport::Udp)));
    h.at(2, TransactionInput::SendResponse { key: key.clone(), response: request.response(200, Some("t")) });
    assert!(h.machine.has_server(&key), "Accepted: still there under Timer L");
    assert_eq!(h.machine.len(), TRANSACTIONS_MAX);

    let next = phone_request("INVITE", "z9hG4bK-next", 1, None, Transport::Udp);
    let out = h.at(3, received(next, PHONE, Transport::Udp));
    assert!(
        out.iter().any(|o| matches!(o, TransactionOutput::Terminated { key: TransactionKey::Server(k) } if *k == key)),
        "the Accepted INVITE is ended: {out:?}"
    );
    assert!(out.iter().any(|o| matches!(o, TransactionOutput::Request { .. })), "the new INVITE is taken: {out:?}");
    assert!(transmits(&out).is_empty(), "no 503: {out:?}");
}

/// At the bound with nothing lingering, the oldest request the TU marked unvetted (a stranger's,
/// waiting for authentication) makes room; one it vouched for again is kept. Only when none is
/// left unvetted does a new request get 503.
#[test]
fn at_the_bound_unvetted_requests_go_first() {
    let mut h = Harness::new();
    fill(&mut h, TRANSACTIONS_MAX - 2);
    let stranger = phone_request("REGISTER", "z9hG4bK-stranger", 1, None, Transport::Udp);
    let (stranger_key, _) = Harness::server_key(&h.at(1, received(stranger, PHONE, Transport::Udp)));
    h.machine.mark_unvetted(&stranger_key);
    let phone = phone_request("INVITE", "z9hG4bK-phone", 1, None, Transport::Udp);
    let (phone_key, _) = Harness::server_key(&h.at(2, received(phone, PHONE, Transport::Udp)));
    h.machine.mark_unvetted(&phone_key);
    h.machine.mark_vetted(&phone_key);
    assert_eq!(h.machine.len(), TRANSACTIONS_MAX);

    let next = phone_request("REGISTER", "z9hG4bK-next", 2, None, Transport::Udp);
    let out = h.at(3, received(next, PHONE, Transport::Udp));
    assert!(
        out.iter().any(
            |o| matches!(o, TransactionOutput::Terminated { key: TransactionKey::Server(k) } if *k == stranger_key)
        ),
        "the unvetted request is evicted: {out:?}"
    );
    assert!(out.iter().any(|o| matches!(o, TransactionOutput::Request { .. })), "{out:?}");
    assert!(h.machine.has_server(&phone_key), "the vetted one stays");
    let last = phone_request("REGISTER", "z9hG4bK-last", 3, None, Transport::Udp);
    let sent = transmits(&h.at(4, received(last, PHONE, Transport::Udp)));
    assert!(String::from_utf8_lossy(&sent[0]).starts_with("SIP/2.0 503"), "{sent:?}");
}

/// An INVITE the TU marked unvetted sends no 100 Trying of its own, however long the TU takes:
/// a stranger gets one datagram back, not two. Once vetted the TU sends the 100 itself.
#[test]
fn unvetted_invite_sends_no_trying_of_its_own() {
    let mut h = Harness::new();
    let invite = phone_request("INVITE", "z9hG4bK-nt", 1, None, Transport::Udp);
    let (key, _) = Harness::server_key(&h.at(0, received(invite.clone(), PHONE, Transport::Udp)));
    h.machine.mark_unvetted(&key);
    assert_eq!(h.machine.poll_timeout(), None, "no Trying timer");
    assert!(transmits(&h.at(1_000, TransactionInput::Timeout)).is_empty());
    // A retransmission is absorbed silently: nothing to resend yet.
    assert!(transmits(&h.at(1_500, received(invite, PHONE, Transport::Udp))).is_empty());
    assert_eq!(h.machine.len(), 1);
}

/// A stateless answer goes out once and ends the transaction: no Timer G for a 407, and the
/// request's retransmission is a new request for the TU.
#[test]
fn stateless_response_leaves_once_and_keeps_nothing() {
    let mut h = Harness::new();
    let invite = phone_request("INVITE", "z9hG4bK-sl", 1, None, Transport::Udp);
    let (key, request) = Harness::server_key(&h.at(0, received(invite.clone(), PHONE, Transport::Udp)));
    let out = h.at(10, TransactionInput::SendStatelessResponse { key, response: request.response(407, Some("t")) });
    assert_eq!(transmits(&out).len(), 1);
    assert!(h.machine.is_empty());
    assert_eq!(h.machine.poll_timeout(), None);
    let again = h.at(600, received(invite, PHONE, Transport::Udp));
    assert!(again.iter().any(|o| matches!(o, TransactionOutput::Request { .. })), "{again:?}");
}

/// A response with our branch and CSeq method but another Call-ID does not touch the client
/// transaction: it is reported forged, and the real response still completes it.
#[test]
fn response_of_another_call_id_is_dropped_as_forged() {
    let mut h = Harness::new();
    let request = pbx_request("OPTIONS", "z9hG4bK-cid", Transport::Udp);
    h.at(0, send(request.clone(), Transport::Udp));
    let mut forged = request.response(486, Some("x"));
    forged.headers.remove(&Name::CALL_ID);
    forged.headers.insert(Name::CALL_ID, "someone-else");
    let forged = match crate::sip::message::parse_datagram(&forged.to_bytes()) {
        Ok(Message::Response(r)) => r,
        other => panic!("{other:?}"),
    };
    let out = h.at(5, received_response(forged));
    assert!(matches!(&out[..], [TransactionOutput::Forged { .. }]), "{out:?}");
    let real = match crate::sip::message::parse_datagram(&request.response(200, Some("x")).to_bytes()) {
        Ok(Message::Response(r)) => r,
        other => panic!("{other:?}"),
    };
    let out = h.at(6, received_response(real));
    assert!(out.iter().any(|o| matches!(o, TransactionOutput::Response { .. })), "{out:?}");
}

/// Time going backwards is a bug in the driver and stops the machine (the assert stays on in release).
#[test]
#[should_panic(expected = "time went backwards")]
fn time_going_backwards_panics() {
    let mut machine = Transactions::new(TimerConfig::default());
    machine.handle(ms(10), TransactionInput::Timeout);
    machine.handle(ms(9), TransactionInput::Timeout);
}

// ---- property ----

#[derive(Debug, Clone)]
enum Op {
    /// A phone's request: method index, branch index (0 = no cookie), CSeq, transport.
    Receive {
        method: usize,
        branch: usize,
        cseq: u32,
        tcp: bool,
        to_tag: bool,
    },
    /// A response to one of our client requests: branch index, method index, code.
    Respond {
        branch: usize,
        method: usize,
        code: u16,
    },
    /// The TU starts a client transaction.
    Send {
        method: usize,
        branch: usize,
        tcp: bool,
    },
    /// The TU answers the n-th server request it was given.
    Answer {
        nth: usize,
        code: u16,
    },
    Timeout,
}

const METHODS: [&str; 6] = ["INVITE", "ACK", "CANCEL", "REGISTER", "OPTIONS", "BYE"];
const CODES: [u16; 7] = [100, 180, 200, 302, 404, 486, 503];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..METHODS.len(), 0usize..4, 1u32..3, any::<bool>(), any::<bool>())
            .prop_map(|(method, branch, cseq, tcp, to_tag)| Op::Receive { method, branch, cseq, tcp, to_tag }),
        (0usize..4, 0..METHODS.len(), 0..CODES.len()).prop_map(|(branch, method, code)| Op::Respond {
            branch,
            method,
            code: CODES[code]
        }),
        (0..METHODS.len(), 0usize..4, any::<bool>()).prop_map(|(method, branch, tcp)| Op::Send { method, branch, tcp }),
        (0usize..8, 0..CODES.len()).prop_map(|(nth, code)| Op::Answer { nth, code: CODES[code] }),
        Just(Op::Timeout),
    ]
}

fn branch_name(index: usize) -> &'static str {
    ["", "z9hG4bK-p1", "z9hG4bK-p2", "z9hG4bK-p3"][index]
}

proptest! {
    /// Random interleavings of inputs at random times never panic, and poll_timeout is never in the past.
    #[test]
    fn random_interleavings_keep_the_contract(steps in prop::collection::vec((0u64..40_000_000, op()), 1..60)) {
        let mut machine = Transactions::new(TimerConfig::default());
        let mut now = Timestamp::ZERO;
        let mut server_requests: Vec<(ServerKey, Request)> = Vec::new();
        for (delay_us, op) in steps {
            now = now + Duration::from_micros(delay_us);
            let transport = |tcp: bool| if tcp { Transport::Tcp } else { Transport::Udp };
            let input = match op {
                Op::Receive { method, branch, cseq, tcp, to_tag } => received(
                    phone_request(METHODS[method], branch_name(branch), cseq, to_tag.then_some("b1"), transport(tcp)),
                    PHONE,
                    transport(tcp),
                ),
                Op::Respond { branch, method, code } => {
                    let request = pbx_request(METHODS[method], branch_name(branch.max(1)), Transport::Udp);
                    received_response(request.response(code, Some("x9")))
                }
                Op::Send { method, branch, tcp } => {
                    send(pbx_request(METHODS[method], branch_name(branch), transport(tcp)), transport(tcp))
                }
                Op::Answer { nth, code } => match server_requests.get(nth) {
                    Some((key, request)) => {
                        TransactionInput::SendResponse { key: key.clone(), response: request.response(code, Some("b1")) }
                    }
                    None => TransactionInput::Timeout,
                },
                Op::Timeout => TransactionInput::Timeout,
            };
            machine.handle(now, input);
            while let Some(output) = machine.poll_output() {
                if let TransactionOutput::Request { key, request, .. } = output {
                    server_requests.push((key, request));
                }
            }
            if let Some(at) = machine.poll_timeout() {
                prop_assert!(at > now, "poll_timeout {} is not after now {}", at, now);
            }
            prop_assert!(machine.len() <= TRANSACTIONS_MAX);
            if machine.is_empty() {
                prop_assert_eq!(machine.poll_timeout(), None);
            }
        }
        // Every timer eventually fires, and only server transactions awaiting the TU remain.
        while let Some(at) = machine.poll_timeout() {
            machine.handle(at, TransactionInput::Timeout);
            while machine.poll_output().is_some() {}
        }
        let settled = machine.transactions.values().all(|tx| {
            matches!(
                tx.kind,
                Kind::InviteServer { state: InviteServerState::Proceeding, .. }
                    | Kind::NonInviteServer {
                        state: NonInviteServerState::Trying | NonInviteServerState::Proceeding,
                        ..
                    }
                    | Kind::InviteClient { state: InviteClientState::Proceeding, .. }
            )
        });
        prop_assert!(settled, "only transactions waiting on a peer or the TU outlive their timers");
    }
}

/// A message that arrives after a timer was due sees that timer fire first: time order holds even if the driver is late.
#[test]
fn late_input_runs_due_timers_first() {
    let mut h = Harness::new();
    let options = pbx_request("OPTIONS", "z9hG4bK-o", Transport::Tcp);
    h.at(0, send(options.clone(), Transport::Tcp));
    let out = h.at(33_000, received_response(options.response(200, Some("x9"))));
    assert!(matches!(
        &out[..],
        [
            TransactionOutput::Timeout { .. },
            TransactionOutput::Terminated { .. },
            TransactionOutput::StrayResponse { .. }
        ]
    ));
}

//! One SIP dialog (RFC 3261 §12–15) as a sans-IO machine: the A-leg, where pbx is the UAS
//! toward the caller, or a B-leg, where pbx is the UAC toward one contact of the callee.
//!
//! The transaction layer (in the endpoint) makes requests and non-2xx responses reliable; this
//! machine does what RFC 3261 leaves to the TU: the ACK for a 2xx and its retransmissions
//! (§13.2.2.4), retransmitting our own 2xx until the ACK comes or giving up with a BYE
//! (§13.3.1.4), CANCEL (§9.1), BYE (§15), re-INVITE and UPDATE (§14, RFC 3311) with glare
//! answered 491, and in-dialog CSeq order (§12.2.2).
//!
//! Bodies are opaque here: the call machine writes and reads the SDP.
//!
//! Deliberately not done: route sets (pbx talks to phones directly; in-dialog requests go back
//! over the flow the dialog came on, which also gets through NAT), 100rel/PRACK, session timers,
//! forked early dialogs on one leg (each callee contact has its own leg), and the refresh of a
//! remote target by a re-INVITE (the flow stays where it is).

use super::{LegId, LocalSip};
use crate::Timestamp;
use crate::sip::message::{CSeq, FromTo, Headers, Method, Name, NameAddr, SipUri, Via, first_contact};
use crate::sip::transaction::{ServerKey, TimerConfig};
use crate::sip::{Request, Response, Transport};
use bytes::Bytes;
use ezk_sip_types::host::Host;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

/// What the endpoint hands a leg.
#[derive(Debug)]
pub enum SipIn {
    /// An in-dialog request (its server transaction is `key`).
    Request { key: ServerKey, request: Request },
    /// The ACK for a 2xx this leg sent.
    Ack { request: Request },
    /// The caller CANCELled the INVITE (the endpoint answered the CANCEL itself).
    Cancel,
    /// A response to a request this leg sent, or a retransmitted 2xx to its INVITE.
    Response { response: Response },
    /// A request this leg sent got no final response (Timer B or F, or the CANCEL guard).
    Timeout { method: Method },
}

/// What a leg asks the endpoint to send.
#[derive(Debug)]
pub enum SipOut {
    Request { request: Request, destination: SocketAddr, transport: Transport },
    Response { key: ServerKey, response: Response },
}

/// What the call asks of a leg.
#[derive(Debug, Clone)]
pub enum LegCommand {
    /// B-leg: send the INVITE (with an offer, or none for a late offer).
    Invite { sdp: Option<Bytes> },
    /// A-leg: a provisional response (180 or 183, maybe with early media).
    Progress { code: u16, sdp: Option<Bytes> },
    /// A-leg: 200 OK to the INVITE.
    Answer { sdp: Option<Bytes> },
    /// A-leg: a final failure response to the INVITE (with this reason phrase, if given).
    Reject { code: u16, reason: Option<String> },
    /// End the dialog however far it got: CANCEL or BYE (B-leg), BYE (A-leg once answered; an
    /// unanswered A-leg gets 500 — the call should use `Reject`).
    Hangup,
    /// Send a re-INVITE or UPDATE with this offer.
    Offer { method: Method, sdp: Option<Bytes> },
    /// Answer the re-INVITE/UPDATE this leg reported as `LegEvent::Offer`.
    AnswerOffer { code: u16, sdp: Option<Bytes> },
    /// Answer the REFER this leg reported as `LegEvent::Refer`: 202 starts the implicit
    /// subscription (RFC 3515 §2.4.4: NOTIFY `100 Trying` at once), anything else refuses it.
    AnswerRefer { code: u16, reason: Option<String> },
    /// The accepted REFER's progress (RFC 3515 §2.4.5): NOTIFY with this status line as
    /// `message/sipfrag`; a final code (200 and up) ends the subscription.
    NotifyRefer { code: u16, reason: String },
}

/// What a leg tells its call.
#[derive(Debug, Clone, PartialEq)]
pub enum LegEvent {
    /// B-leg: a provisional response other than 100.
    Progress { code: u16, sdp: Option<Bytes> },
    /// B-leg: a 2xx to the INVITE (already ACKed).
    Answered { sdp: Option<Bytes> },
    /// B-leg: a final failure to the INVITE (408 when it timed out).
    Failed { code: u16 },
    /// A-leg: the caller cancelled; the leg answered 487.
    Cancelled,
    /// The ACK for our 2xx (its body is the answer to an offer made in the 2xx).
    Acked { sdp: Option<Bytes> },
    /// The far end sent a re-INVITE or UPDATE; answer with `LegCommand::AnswerOffer`.
    Offer { method: Method, sdp: Option<Bytes> },
    /// The final response to our `LegCommand::Offer`.
    OfferAnswered { code: u16, sdp: Option<Bytes> },
    /// The far end asks pbx to transfer the call (REFER, its `Refer-To` read and checked by
    /// `transfer::parse_refer_to`); answer with `LegCommand::AnswerRefer`.
    Refer(super::transfer::ReferTo),
    /// The far end hung up (BYE answered 200).
    Bye,
    /// Our 2xx was never ACKed (64*T1): the leg sent a BYE.
    NoAck,
    /// Nothing more will happen on this leg: stop it.
    Finished,
}

#[derive(Debug)]
// Moved straight into `handle` and never stored: boxing would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum LegInput {
    Sip(SipIn),
    Command(LegCommand),
    Timeout,
}

#[derive(Debug)]
// Moved straight into `handle` and never stored: boxing would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum LegOutput {
    Sip(SipOut),
    Event(LegEvent),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Uas,
    Uac,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// B-leg before its INVITE went out.
    Idle,
    /// INVITE sent or received, no final response yet.
    Early,
    Confirmed,
    /// BYE sent, waiting for its answer.
    Ending,
    Done,
}

/// A 2xx to an INVITE, retransmitted until its ACK comes (RFC 3261 §13.3.1.4).
struct Unacked {
    key: ServerKey,
    cseq: u32,
    response: Response,
    next: Timestamp,
    interval: Duration,
    deadline: Timestamp,
}

/// The initial INVITE of a B-leg, kept for CANCEL and ACK.
struct Sent {
    request: Request,
    provisional: bool,
    cancel_wanted: bool,
    cancel_sent: bool,
    /// The ACK for its 2xx, sent again for every retransmitted 2xx.
    ack: Option<Request>,
}

pub struct Leg {
    id: LegId,
    role: Role,
    state: State,
    timers: TimerConfig,
    local_sip: LocalSip,
    call_id: String,
    /// Our side, without the tag.
    local: FromTo,
    /// Their side, with their tag once known.
    remote: FromTo,
    remote_target: SipUri,
    /// Where requests of this dialog go: the flow it came on (RFC 5626 spirit, NAT-friendly).
    destination: SocketAddr,
    transport: Transport,
    local_cseq: u32,
    remote_cseq: Option<u32>,
    next_branch: u64,
    /// A-leg: the INVITE's server transaction, until its final response.
    invite: Option<(ServerKey, Request)>,
    /// B-leg: our INVITE.
    sent: Option<Sent>,
    unacked: Option<Unacked>,
    /// A re-INVITE/UPDATE from the far end waiting for our answer.
    offer_in: Option<(ServerKey, Request)>,
    /// A re-INVITE/UPDATE of ours waiting for its answer: (method, cseq).
    offer_out: Option<(Method, u32)>,
    /// A REFER from the far end waiting for our answer.
    refer_in: Option<(ServerKey, Request)>,
    /// The implicit subscription of an accepted REFER (RFC 3515 §2.4.4): its event id (the
    /// REFER's CSeq). `None` when there is none, or the REFER asked for none (RFC 4488).
    refer_sub: Option<u32>,
    outputs: VecDeque<LegOutput>,
    now: Timestamp,
    /// B-leg: its INVITE asks the phone to answer by itself (intercom).
    auto_answer: bool,
}

/// The `Allow` of what a leg sends and of its 405s.
pub const LEG_ALLOW: &str = "INVITE, ACK, CANCEL, BYE, UPDATE, OPTIONS, INFO, REFER, NOTIFY";

/// What an intercom INVITE carries so the phone answers by itself: `Call-Info` with
/// `answer-after=0` (Snom, Yealink, Grandstream, Linphone, baresip) and `Alert-Info` with
/// `info=alert-autoanswer` (Cisco/Linksys, Polycom, Yealink), as Asterisk's and FreePBX's
/// intercom send both.
pub const AUTO_ANSWER_ALERT_INFO: &str = "<http://127.0.0.1/>;info=alert-autoanswer;delay=0";

impl std::fmt::Debug for Leg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leg").field("id", &self.id).field("role", &self.role).field("state", &self.state).finish()
    }
}

impl Leg {
    /// The A-leg for an INVITE that arrived from `source` (already answered 100 Trying).
    #[allow(clippy::too_many_arguments)]
    pub fn uas(
        id: LegId,
        now: Timestamp,
        timers: TimerConfig,
        local_sip: LocalSip,
        key: ServerKey,
        invite: Request,
        source: SocketAddr,
        transport: Transport,
    ) -> Option<Leg> {
        let remote = invite.from()?;
        let mut local = invite.to()?;
        local.tag = None;
        let remote_target = first_contact(&invite.headers).unwrap_or_else(|| remote.uri.uri.clone());
        Some(Leg {
            id,
            role: Role::Uas,
            state: State::Early,
            timers,
            local_sip,
            call_id: invite.call_id()?,
            local,
            remote,
            remote_target,
            destination: source,
            transport,
            local_cseq: 0,
            remote_cseq: Some(invite.cseq()?.cseq),
            next_branch: 1,
            invite: Some((key, invite)),
            sent: None,
            unacked: None,
            offer_in: None,
            offer_out: None,
            refer_in: None,
            refer_sub: None,
            outputs: VecDeque::new(),
            now,
            auto_answer: false,
        })
    }

    /// A B-leg toward one contact: `from` is how the caller is presented, `to` the dialled
    /// AOR, `target` the contact's URI, `destination` where its requests go (`call::destination`).
    #[allow(clippy::too_many_arguments)]
    pub fn uac(
        id: LegId,
        now: Timestamp,
        timers: TimerConfig,
        local_sip: LocalSip,
        from: FromTo,
        to: FromTo,
        target: SipUri,
        destination: SocketAddr,
        transport: Transport,
    ) -> Leg {
        Leg {
            id,
            role: Role::Uac,
            state: State::Idle,
            timers,
            local_sip,
            call_id: id.call_id(),
            local: from,
            remote: to,
            remote_target: target,
            destination,
            transport,
            local_cseq: 0,
            remote_cseq: None,
            next_branch: 1,
            invite: None,
            sent: None,
            unacked: None,
            offer_in: None,
            offer_out: None,
            refer_in: None,
            refer_sub: None,
            outputs: VecDeque::new(),
            now,
            auto_answer: false,
        }
    }

    /// This B-leg's INVITE asks the phone to answer at once (intercom, paging).
    pub fn auto_answer(mut self) -> Leg {
        self.auto_answer = true;
        self
    }

    /// Where this leg's requests go.
    pub fn destination(&self) -> SocketAddr {
        self.destination
    }

    pub fn id(&self) -> LegId {
        self.id
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The far end's tag in this dialog, once it has one.
    pub fn remote_tag(&self) -> Option<&str> {
        self.remote.tag.as_ref().map(|t| t.as_str())
    }

    pub fn handle(&mut self, now: Timestamp, input: LegInput) {
        self.now = self.now.max(now);
        if self.state == State::Done {
            return;
        }
        match input {
            LegInput::Sip(sip) => self.sip(sip),
            LegInput::Command(command) => self.command(command),
            LegInput::Timeout => self.timeout(),
        }
    }

    pub fn poll_output(&mut self) -> Option<LegOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.unacked.as_ref().map(|u| if self.transport.is_reliable() { u.deadline } else { u.next.min(u.deadline) })
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn sip(&mut self, input: SipIn) {
        match input {
            SipIn::Request { key, request } => self.request(key, request),
            SipIn::Ack { request } => self.ack(request),
            SipIn::Cancel => {
                if let Some((key, invite)) = self.invite.take() {
                    let response = self.response_to(&invite, 487);
                    self.send_response(key, response);
                    self.event(LegEvent::Cancelled);
                    self.finish();
                }
            }
            SipIn::Response { response } => self.response(response),
            SipIn::Timeout { method } => {
                if method == Method::INVITE && self.state == State::Early && self.role == Role::Uac {
                    self.event(LegEvent::Failed { code: 408 });
                    self.finish();
                } else if method == Method::BYE {
                    self.finish();
                } else if self.offer_out.as_ref().is_some_and(|(m, _)| *m == method) {
                    self.offer_out = None;
                    self.event(LegEvent::OfferAnswered { code: 408, sdp: None });
                }
            }
        }
    }

    fn command(&mut self, command: LegCommand) {
        match command {
            LegCommand::Invite { sdp } if self.state == State::Idle => {
                let request = self.request_for(Method::INVITE, sdp);
                self.sent = Some(Sent {
                    request: request.clone(),
                    provisional: false,
                    cancel_wanted: false,
                    cancel_sent: false,
                    ack: None,
                });
                self.state = State::Early;
                self.send_request(request);
            }
            LegCommand::Progress { code, sdp } => {
                if let Some((key, invite)) = &self.invite {
                    let (key, mut response) = (key.clone(), self.response_to(invite, code));
                    self.set_body(&mut response.headers, &mut response.body, sdp);
                    self.send_response(key, response);
                }
            }
            LegCommand::Answer { sdp } => {
                if let Some((key, invite)) = self.invite.take() {
                    let mut response = self.response_to(&invite, 200);
                    self.set_body(&mut response.headers, &mut response.body, sdp);
                    let cseq = self.remote_cseq.unwrap_or_default();
                    self.start_unacked(key.clone(), cseq, response.clone());
                    self.send_response(key, response);
                    self.state = State::Confirmed;
                }
            }
            LegCommand::Reject { code, reason } => {
                if let Some((key, invite)) = self.invite.take() {
                    let mut response = self.response_to(&invite, code.clamp(300, 699));
                    if let Some(reason) = reason {
                        response.reason = reason;
                    }
                    self.send_response(key, response);
                    self.finish();
                }
            }
            LegCommand::Hangup => self.hang_up(),
            LegCommand::Offer { method, sdp } if self.state == State::Confirmed && self.offer_out.is_none() => {
                let request = self.request_for(method.clone(), sdp);
                self.offer_out = Some((method, self.local_cseq));
                self.send_request(request);
            }
            LegCommand::Offer { method, .. } => {
                // Not now (not confirmed, or one of ours is still out): the call hears a 491,
                // exactly as if the far end had refused it.
                let _ = method;
                self.event(LegEvent::OfferAnswered { code: 491, sdp: None });
            }
            LegCommand::AnswerOffer { code, sdp } => {
                if let Some((key, request)) = self.offer_in.take() {
                    let mut response = self.response_to(&request, code);
                    if (200..300).contains(&code) {
                        self.set_body(&mut response.headers, &mut response.body, sdp);
                        if request.method == Method::INVITE {
                            let cseq = request.cseq().map(|c| c.cseq).unwrap_or_default();
                            self.start_unacked(key.clone(), cseq, response.clone());
                        }
                    }
                    self.send_response(key, response);
                }
            }
            LegCommand::AnswerRefer { code, reason } => {
                if let Some((key, request)) = self.refer_in.take() {
                    let mut response = self.response_to(&request, code);
                    match reason {
                        Some(reason) => response.reason = reason,
                        // RFC 3515 §2.4.2; not in RFC 3261's table of reason phrases.
                        None if code == 202 => response.reason = "Accepted".into(),
                        None => {}
                    }
                    self.send_response(key, response);
                    let no_sub = request
                        .headers
                        .get_raw(&Name::from("Refer-Sub"))
                        .any(|v| v.as_str().trim().eq_ignore_ascii_case("false"));
                    if (200..300).contains(&code) && !no_sub {
                        self.refer_sub = request.cseq().map(|c| c.cseq);
                        self.notify_refer(100, "Trying");
                    }
                }
            }
            LegCommand::NotifyRefer { code, reason } => self.notify_refer(code, &reason),
            LegCommand::Invite { .. } => {}
        }
    }

    /// A NOTIFY of the REFER subscription, if there is one; a final status ends it.
    fn notify_refer(&mut self, code: u16, reason: &str) {
        let Some(id) = self.refer_sub else { return };
        if self.state != State::Confirmed {
            return;
        }
        let mut request = self.request_for(Method::NOTIFY, None);
        request.headers.insert(Name::EVENT, format!("refer;id={id}"));
        let state = if code >= 200 { "terminated;reason=noresource" } else { "active;expires=60" };
        request.headers.insert(Name::SUBSCRIPTION_STATE, state);
        request.headers.insert(Name::CONTACT, self.contact());
        request.headers.insert(Name::CONTENT_TYPE, "message/sipfrag;version=2.0");
        request.body = Bytes::from(super::transfer::sipfrag(code, reason));
        if code >= 200 {
            self.refer_sub = None;
        }
        self.send_request(request);
    }

    fn hang_up(&mut self) {
        match (self.role, self.state) {
            (_, State::Done | State::Ending) => {}
            (Role::Uac, State::Idle) => self.finish(),
            (Role::Uac, State::Early) => {
                let Some(sent) = &mut self.sent else { return self.finish() };
                sent.cancel_wanted = true;
                // RFC 3261 §9.1: no CANCEL before a provisional response; it goes out with the
                // first one, or the 2xx that may come instead is ACKed and BYEd.
                if sent.provisional && !sent.cancel_sent {
                    self.send_cancel();
                }
            }
            (Role::Uas, State::Early) => {
                if let Some((key, invite)) = self.invite.take() {
                    let response = self.response_to(&invite, 500);
                    self.send_response(key, response);
                }
                self.finish();
            }
            (_, State::Confirmed) => {
                self.unacked = None;
                if let Some((key, request)) = self.offer_in.take() {
                    let response = self.response_to(&request, 487);
                    self.send_response(key, response);
                }
                let bye = self.request_for(Method::BYE, None);
                self.state = State::Ending;
                self.send_request(bye);
            }
            (Role::Uas, State::Idle) => self.finish(),
        }
    }

    fn send_cancel(&mut self) {
        let Some(sent) = &mut self.sent else { return };
        sent.cancel_sent = true;
        let invite = &sent.request;
        // RFC 3261 §9.1: Request-URI, Call-ID, To, From and the Via (branch) of the INVITE,
        // CSeq number of the INVITE with method CANCEL.
        let mut headers = Headers::new();
        for name in [Name::VIA, Name::MAX_FORWARDS, Name::FROM, Name::TO, Name::CALL_ID] {
            for value in invite.headers.get_raw(&name) {
                headers.insert(name.clone(), value.as_str());
            }
        }
        let number = invite.cseq().map(|c| c.cseq).unwrap_or(1);
        headers.insert_named(&CSeq::new(number, Method::CANCEL));
        let cancel = Request::new(Method::CANCEL, invite.uri.clone(), headers, Bytes::new());
        self.send_request(cancel);
    }

    /// RFC 3261 §12.2.2: a request is of this dialog when its Call-ID, To tag (ours) and From
    /// tag (theirs) are the dialog's. The endpoint routed it by the To tag alone; a stranger
    /// who learned or guessed that must still produce the rest.
    fn of_this_dialog(&self, request: &Request) -> bool {
        let tag = |ft: Option<FromTo>| ft.and_then(|f| f.tag).map(|t| t.as_str().to_owned());
        request.call_id().as_deref() == Some(self.call_id.as_str())
            && tag(request.to()) == Some(self.id.tag())
            // A caller without a From tag (RFC 2543) has none in its requests either; a callee
            // is only in a dialog with us once it has given its tag.
            && (self.role == Role::Uas || self.remote.tag.is_some())
            && tag(request.from()) == self.remote.tag.as_ref().map(|t| t.as_str().to_owned())
    }

    fn request(&mut self, key: ServerKey, request: Request) {
        if !self.of_this_dialog(&request) {
            let response = self.response_to(&request, 481);
            return self.send_response(key, response);
        }
        let Some(cseq) = request.cseq() else { return };
        // RFC 3261 §12.2.2: a lower CSeq than one already seen is out of order.
        if self.remote_cseq.is_some_and(|seen| cseq.cseq < seen) || self.state == State::Idle {
            let response = self.response_to(&request, 500);
            return self.send_response(key, response);
        }
        self.remote_cseq = Some(cseq.cseq);
        let method = request.method.clone();
        if method == Method::BYE {
            let response = self.response_to(&request, 200);
            self.send_response(key, response);
            if let Some((key, invite)) = self.invite.take() {
                let response = self.response_to(&invite, 487);
                self.send_response(key, response);
            }
            if let Some((key, pending)) = self.offer_in.take() {
                let response = self.response_to(&pending, 487);
                self.send_response(key, response);
            }
            if let Some((key, pending)) = self.refer_in.take() {
                let response = self.response_to(&pending, 487);
                self.send_response(key, response);
            }
            self.refer_sub = None;
            self.event(LegEvent::Bye);
            self.finish();
        } else if method == Method::INVITE || method == Method::UPDATE {
            let early_update = method == Method::UPDATE && self.state == State::Early;
            if !(self.state == State::Confirmed || early_update) {
                let response = self.response_to(&request, 481);
                return self.send_response(key, response);
            }
            // RFC 3261 §14.2 and RFC 3311 §5.2: one offer at a time, in either direction.
            if self.offer_in.is_some() || self.offer_out.is_some() || self.unacked.is_some() {
                let mut response = self.response_to(&request, if method == Method::INVITE { 491 } else { 500 });
                if method == Method::UPDATE {
                    response.headers.insert(Name::RETRY_AFTER, "1");
                }
                return self.send_response(key, response);
            }
            let sdp = (!request.body.is_empty()).then(|| request.body.clone());
            self.offer_in = Some((key, request));
            self.event(LegEvent::Offer { method, sdp });
        } else if method == Method::REFER {
            self.refer(key, request);
        } else if method == Method::OPTIONS || method == Method::INFO || method == Method::NOTIFY {
            // Keep-alives and in-dialog chatter: acknowledged here, not relayed.
            let response = self.response_to(&request, 200);
            self.send_response(key, response);
        } else {
            let mut response = self.response_to(&request, 405);
            response.headers.insert(Name::ALLOW, LEG_ALLOW);
            self.send_response(key, response);
        }
    }

    /// A REFER in this dialog: its `Refer-To` read and checked (`transfer`), then handed to
    /// the call; one at a time.
    fn refer(&mut self, key: ServerKey, request: Request) {
        let refuse = |leg: &mut Leg, code: u16, reason: &str| {
            let mut response = leg.response_to(&request, code);
            response.reason = reason.to_owned();
            leg.send_response(key.clone(), response);
        };
        if self.state != State::Confirmed {
            return refuse(self, 403, "Forbidden (call not answered)");
        }
        if self.refer_in.is_some() {
            return refuse(self, 491, "Request Pending");
        }
        // The compact form `r` is the same name (RFC 3515 §2.1).
        let values: Vec<String> = request.headers.get_raw(&Name::REFER_TO).map(|v| v.as_str().to_owned()).collect();
        let [value] = values.as_slice() else {
            return refuse(self, 400, "Bad Request (exactly one Refer-To needed)");
        };
        match super::transfer::parse_refer_to(value, &self.own_hosts()) {
            Ok(target) => {
                self.refer_in = Some((key, request));
                self.event(LegEvent::Refer(target));
            }
            Err(reason) => refuse(self, 403, reason),
        }
    }

    /// The hosts that name pbx in this dialog: its SIP addresses, and the host the phone put
    /// in the URI it called pbx by (the caller's To) or pbx wrote as its own (a B-leg's From).
    fn own_hosts(&self) -> Vec<String> {
        let mut hosts = vec![self.local_sip.address.ip().to_string()];
        if let Some(tls) = self.local_sip.tls {
            hosts.push(tls.ip().to_string());
        }
        hosts.push(match &self.local.uri.uri.host_port.host {
            Host::IP4(ip) => ip.to_string(),
            Host::IP6(ip) => ip.to_string(),
            Host::Name(name) => name.as_str().to_owned(),
        });
        hosts
    }

    fn ack(&mut self, request: Request) {
        if !self.of_this_dialog(&request) {
            return;
        }
        let cseq = request.cseq().map(|c| c.cseq);
        if self.unacked.as_ref().is_some_and(|u| Some(u.cseq) == cseq) {
            self.unacked = None;
            let sdp = (!request.body.is_empty()).then(|| request.body.clone());
            self.event(LegEvent::Acked { sdp });
        }
    }

    fn response(&mut self, response: Response) {
        // Routed by our branch or From tag; a response must also be of our Call-ID, and once
        // the far end has a tag, carry it (a 2xx retransmission included).
        let to_tag = response.to().and_then(|to| to.tag);
        let their_tag_known = self.remote.tag.is_some() && self.state != State::Early;
        if response.call_id().as_deref() != Some(self.call_id.as_str())
            || (their_tag_known && to_tag.as_ref().map(|t| t.as_str()) != self.remote.tag.as_ref().map(|t| t.as_str()))
        {
            return;
        }
        let Some(cseq) = response.cseq() else { return };
        let code = response.code;
        let invite_cseq = self.sent.as_ref().and_then(|s| s.request.cseq()).map(|c| c.cseq);
        if cseq.method == Method::INVITE && Some(cseq.cseq) == invite_cseq {
            self.invite_response(response);
        } else if self.offer_out.as_ref().is_some_and(|(m, n)| *m == cseq.method && *n == cseq.cseq) {
            if code < 200 {
                return;
            }
            self.offer_out = None;
            if cseq.method == Method::INVITE && (200..300).contains(&code) {
                let ack = self.ack_for(cseq.cseq);
                self.send_request(ack);
            }
            let sdp = (!response.body.is_empty()).then(|| response.body.clone());
            self.event(LegEvent::OfferAnswered { code, sdp });
            if code == 408 || code == 481 {
                // RFC 3261 §12.2.1.2: the dialog is gone.
                self.hang_up();
            }
        } else if cseq.method == Method::INVITE && (200..300).contains(&code) {
            // A 2xx retransmitted for a re-INVITE already answered: ACK it again.
            let ack = self.ack_for(cseq.cseq);
            self.send_request(ack);
        } else if cseq.method == Method::BYE && code >= 200 && self.state == State::Ending {
            self.finish();
        }
    }

    fn invite_response(&mut self, response: Response) {
        let code = response.code;
        let sdp = (!response.body.is_empty()).then(|| response.body.clone());
        if code < 200 {
            // An early dialog (RFC 3261 §12.1.2): its tag is the far end's until a 2xx names
            // the confirmed one, so an early UPDATE from the callee is recognised.
            if code > 100
                && self.state == State::Early
                && let Some(FromTo { tag: Some(tag), .. }) = response.to()
            {
                self.remote.tag = Some(tag);
            }
            let Some(sent) = &mut self.sent else { return };
            sent.provisional = true;
            if sent.cancel_wanted && !sent.cancel_sent {
                self.send_cancel();
            } else if code > 100 && self.state == State::Early && !sent.cancel_wanted {
                self.event(LegEvent::Progress { code, sdp });
            }
            return;
        }
        if code >= 300 {
            if self.state == State::Early {
                self.event(LegEvent::Failed { code });
                self.finish();
            }
            return;
        }
        // A 2xx: the first one confirms the dialog; later copies are retransmissions to ACK.
        if let Some(ack) = self.sent.as_ref().and_then(|s| s.ack.clone()) {
            self.send_request(ack);
            return;
        }
        if self.state != State::Early {
            return;
        }
        if let Some(to) = response.to() {
            self.remote.tag = to.tag;
        }
        if let Some(target) = response.first_contact() {
            self.remote_target = target;
        }
        let number = self.sent.as_ref().and_then(|s| s.request.cseq()).map(|c| c.cseq).unwrap_or(1);
        let ack = self.ack_for(number);
        let cancelled = self.sent.as_ref().is_some_and(|s| s.cancel_wanted);
        if let Some(sent) = &mut self.sent {
            sent.ack = Some(ack.clone());
        }
        self.state = State::Confirmed;
        self.send_request(ack);
        if cancelled {
            // Answered after we gave up on it (RFC 3261 §15: BYE right after the ACK).
            self.hang_up();
        } else {
            self.event(LegEvent::Answered { sdp });
        }
    }

    fn timeout(&mut self) {
        let now = self.now;
        let Some(unacked) = &mut self.unacked else { return };
        if unacked.deadline <= now {
            self.unacked = None;
            self.event(LegEvent::NoAck);
            self.hang_up();
            return;
        }
        if !self.transport.is_reliable() && unacked.next <= now {
            // RFC 3261 §13.3.1.4: T1, doubling up to T2. RFC 6026 keeps the server transaction
            // (Accepted) alive for 64*T1 precisely to carry these.
            unacked.next = now + unacked.interval;
            unacked.interval = (unacked.interval * 2).min(self.timers.t2);
            let (key, response) = (unacked.key.clone(), unacked.response.clone());
            self.outputs.push_back(LegOutput::Sip(SipOut::Response { key, response }));
        }
    }

    fn start_unacked(&mut self, key: ServerKey, cseq: u32, response: Response) {
        let t1 = self.timers.t1;
        self.unacked = Some(Unacked {
            key,
            cseq,
            response,
            next: self.now + t1,
            interval: (t1 * 2).min(self.timers.t2),
            deadline: self.now + t1.saturating_mul(64),
        });
    }

    /// A response in this dialog: our tag on To (RFC 3261 §12.1.1), our Contact on 2xx/1xx of
    /// dialog-creating requests.
    fn response_to(&self, request: &Request, code: u16) -> Response {
        let tag = self.id.tag();
        let mut response = request.response(code, Some(&tag));
        if (101..300).contains(&code) && (request.method == Method::INVITE || request.method == Method::UPDATE) {
            response.headers.insert(Name::CONTACT, self.contact());
        }
        response
    }

    fn contact(&self) -> String {
        format!("<sip:pbx@{}{}>", self.local_sip.for_transport(self.transport), self.transport.uri_param())
    }

    fn set_body(&self, headers: &mut Headers, body: &mut Bytes, sdp: Option<Bytes>) {
        if let Some(sdp) = sdp.filter(|b| !b.is_empty()) {
            headers.insert(Name::CONTENT_TYPE, "application/sdp");
            *body = sdp;
        }
    }

    /// A request of ours in this dialog (RFC 3261 §12.2.1.1); the initial INVITE of a B-leg too.
    fn request_for(&mut self, method: Method, sdp: Option<Bytes>) -> Request {
        self.local_cseq += 1;
        let mut headers = self.dialog_headers(CSeq::new(self.local_cseq, method.clone()));
        if method == Method::INVITE || method == Method::UPDATE {
            headers.insert(Name::CONTACT, self.contact());
            headers.insert(Name::ALLOW, LEG_ALLOW);
        }
        if self.auto_answer && method == Method::INVITE && self.state == State::Idle {
            let own = self.local_sip.for_transport(self.transport);
            headers.insert(Name::from("Call-Info"), format!("<sip:{own}>;answer-after=0"));
            headers.insert(Name::from("Alert-Info"), AUTO_ANSWER_ALERT_INFO);
        }
        let mut body = Bytes::new();
        self.set_body(&mut headers, &mut body, sdp);
        Request::new(method, self.remote_target.clone(), headers, body)
    }

    /// The ACK for a 2xx (RFC 3261 §13.2.2.4): its own branch, the INVITE's CSeq number.
    fn ack_for(&mut self, cseq: u32) -> Request {
        let headers = self.dialog_headers(CSeq::new(cseq, Method::ACK));
        Request::new(Method::ACK, self.remote_target.clone(), headers, Bytes::new())
    }

    /// Via (a new branch), Max-Forwards, From (ours, tagged), To, Call-ID and CSeq. For the
    /// A-leg pbx's side is the INVITE's To: requests from us swap the two.
    fn dialog_headers(&mut self, cseq: CSeq) -> Headers {
        let mut headers = Headers::new();
        headers.insert_named(&self.via());
        headers.insert(Name::MAX_FORWARDS, "70");
        let mut local = self.local.clone();
        local.tag = Some(self.id.tag().into());
        headers.insert_type(Name::FROM, &local);
        headers.insert_type(Name::TO, &self.remote);
        headers.insert(Name::CALL_ID, self.call_id.as_str());
        headers.insert_named(&cseq);
        headers
    }

    fn via(&mut self) -> Via {
        let branch = self.id.branch(self.next_branch);
        self.next_branch += 1;
        let text = format!(
            "SIP/2.0/{} {};branch={branch};rport",
            self.transport.via_name(),
            self.local_sip.for_transport(self.transport)
        );
        crate::sip::message::parse_via(&text).expect("a Via pbx prints is one it can read")
    }

    fn send_request(&mut self, request: Request) {
        self.outputs.push_back(LegOutput::Sip(SipOut::Request {
            request,
            destination: self.destination,
            transport: self.transport,
        }));
    }

    fn send_response(&mut self, key: ServerKey, response: Response) {
        self.outputs.push_back(LegOutput::Sip(SipOut::Response { key, response }));
    }

    fn event(&mut self, event: LegEvent) {
        self.outputs.push_back(LegOutput::Event(event));
    }

    fn finish(&mut self) {
        if self.state != State::Done {
            self.state = State::Done;
            self.unacked = None;
            self.event(LegEvent::Finished);
        }
    }
}

/// A From/To value for `uri` with an optional display name.
pub fn name_addr(display: Option<&str>, uri: SipUri) -> FromTo {
    FromTo::new(NameAddr { name: display.filter(|d| !d.is_empty()).map(|d| d.to_owned().into()), uri }, None)
}

//! The endpoint machine: bytes in, transactions, dispatch by method; bytes and work out.
//!
//! Sans-IO: it never reads a clock, a socket or a global RNG. Calling contract, as for every
//! machine in pbx: `handle(now, input)` with a `now` that never goes backwards, then drain
//! `poll_output` until `None`, then ask `poll_timeout` when to call `handle(now, Timeout)`.
//!
//! Calls: a new INVITE goes to the registrar (authenticate the caller, find the callee), then
//! out as `StartCall` with leg ids for the call's legs. From then on the endpoint only routes:
//! an in-dialog request by its To tag, a response by its Via branch, a 2xx retransmission by its
//! From tag — each names the leg pbx made it for (`LegId`, 128 bits from the CSPRNG seeded at
//! construction, so nobody can guess one) — and a CANCEL by the INVITE it cancels (same
//! branch, Call-ID and From tag). The leg then checks the rest of the dialog's identity (RFC
//! 3261 §12.2.2). What legs send comes back as `FromLeg`.
//!
//! Strangers cost no state (docs/SECURITY.md): a new request from a source over its
//! [`SourceLimit`] is dropped before it makes a transaction; answers to requests nobody
//! vouched for — challenges and refusals from the registrar (`authenticated: false`), 481 for
//! a dialog we do not have, OPTIONS, 405/501/420, 503 when full — go out once, statelessly
//! (Kamailio's `sl_send_reply`): no transaction is kept and nothing is retransmitted, so one
//! datagram in gives at most one datagram out. An INVITE gets its 100 Trying only once the
//! caller has authenticated (or the transaction's own 200 ms timer, if the registrar is slow).

use super::limiter::{SharedLimiter, SourceLimit, SourceLimiter};
use super::overload::StandingQueue;
use super::shard::Shard;
use crate::Timestamp;
use crate::call::{CallStart, LegId, SipIn, SipOut};
use crate::registrar::Route;
use crate::sip::message::{self, Message, ParseError, RawHead, Request, Response, Transport};
use crate::sip::transaction::{
    ServerKey, TimerConfig, TransactionInput, TransactionKey, TransactionOutput, Transactions,
};
use bytes::Bytes;
use ezk_sip_types::{Method, Name};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// The methods this endpoint acts on; the `Allow` header of every 405 and OPTIONS answer.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, UPDATE, OPTIONS, INFO, REGISTER";
/// Methods SIP defines (RFC 3261 and its extensions), with their metric labels; others are
/// answered 501 and counted as "other", so invented method names cannot grow a label set.
const KNOWN_METHODS: [(Method, &str); 14] = [
    (Method::INVITE, "INVITE"),
    (Method::ACK, "ACK"),
    (Method::CANCEL, "CANCEL"),
    (Method::BYE, "BYE"),
    (Method::REGISTER, "REGISTER"),
    (Method::MESSAGE, "MESSAGE"),
    (Method::UPDATE, "UPDATE"),
    (Method::PRACK, "PRACK"),
    (Method::OPTIONS, "OPTIONS"),
    (Method::SUBSCRIBE, "SUBSCRIBE"),
    (Method::NOTIFY, "NOTIFY"),
    (Method::PUBLISH, "PUBLISH"),
    (Method::INFO, "INFO"),
    (Method::REFER, "REFER"),
];
/// REGISTERs and INVITEs handed to the registrar and not yet answered; beyond it new ones get 503.
pub const PENDING_REGISTERS_MAX: usize = 16_384;
/// A REGISTER or INVITE the registrar has not answered in this time gets 500: a transaction must end.
pub const REGISTRAR_ANSWER_S_MAX: u64 = 16;
/// Seconds a client should wait before retrying after a 503 (RFC 3261 §20.33).
pub const OVERLOAD_RETRY_AFTER_S: u32 = 5;
/// Overload shedding (see `super::overload`): while a standing queue is in front of the shard,
/// a new REGISTER or INVITE without credentials is answered 503 with Retry-After, not worked
/// on; one with credentials (its challenge is already paid for, the flow is half done) only
/// if it also waited longer than this, RFC 3261's T1, after which its phone has retransmitted
/// it anyway. Without a standing queue nothing is shed, however long one message waited: a
/// shard descheduled for a moment is not an overloaded one.
pub const SHED_CREDENTIALED_AFTER_MS: u64 = 500;

#[derive(Debug)]
pub enum EndpointInput {
    /// One UDP datagram, or one message framed off a TCP stream, and when the transport read
    /// it (the time it waited before this input is what overload shedding goes by).
    Inbound {
        bytes: Bytes,
        source: SocketAddr,
        transport: Transport,
        received: Timestamp,
    },
    /// The registrar's answer to the REGISTER handed out as `Register { tx, .. }`, or to the
    /// INVITE handed out as `Route { tx, .. }`.
    RegistrarResponse {
        tx: u64,
        response: Response,
        /// False for an answer to a request that did not authenticate (a challenge, a blocked
        /// source): sent statelessly.
        authenticated: bool,
    },
    /// The registrar let the INVITE handed out as `Route { tx, .. }` through.
    Routed {
        tx: u64,
        route: Route,
    },
    /// A call leg sends.
    FromLeg {
        leg: LegId,
        out: SipOut,
    },
    /// A leg is gone (finished, or its call could not start or failed). An INVITE it never
    /// answered is answered 500 now; later requests naming it get 481.
    LegDown {
        leg: LegId,
    },
    /// A leg whose call could not start for want of capacity (RTP ports, open files): as
    /// `LegDown`, but the INVITE gets 503 with Retry-After, the answer of a node that is busy
    /// for now (RFC 3261 §21.5.4), not the 500 of a fault.
    Refused {
        leg: LegId,
    },
    Timeout,
}

#[derive(Debug)]
// Moved straight into `handle` and never stored: boxing would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum EndpointOutput {
    Transmit {
        destination: SocketAddr,
        transport: Transport,
        bytes: Bytes,
    },
    /// A new REGISTER for the registrar; answer it with `RegistrarResponse { tx, .. }`.
    Register {
        tx: u64,
        request: Box<Request>,
        source: SocketAddr,
        transport: Transport,
    },
    /// A new INVITE for the registrar to authenticate and route; answer with `Routed` or
    /// `RegistrarResponse`.
    Route {
        tx: u64,
        request: Box<Request>,
        source: SocketAddr,
    },
    /// Start a call: the legs named here are live from now on.
    StartCall(Box<CallStart>),
    /// Hand this to the leg's actor.
    ToLeg {
        leg: LegId,
        input: SipIn,
    },
    Event(EndpointEvent),
}

/// What the shell logs and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A new request (not a retransmission), labelled by method ("other" for one SIP does
    /// not define), for `pbx_sip_requests_total`.
    Request { method: &'static str },
    /// A response this endpoint sent (first transmission), for `pbx_sip_responses_total`.
    Response { code: u16 },
    /// Input that was refused or dropped, and why.
    Malformed { source: SocketAddr, reason: String, answered: bool },
    /// A new request over its source's admission limit: dropped, unanswered
    /// (`pbx_sip_rate_limited_total`).
    RateLimited { source: SocketAddr },
    /// A new REGISTER or INVITE answered 503 because the node is overloaded: it waited too
    /// long before it was read, or too many wait for the registrar (`pbx_sip_shed_total`).
    Shed { method: &'static str },
    /// Something that named none of our dialogs or transactions — `what`: "response" (a
    /// response with a branch or tag of ours but another Call-ID, or one for no live leg),
    /// "request" (an in-dialog request for no live leg), "cancel" (a CANCEL for no INVITE of
    /// its dialog attempt) — dropped or answered 481 (`pbx_sip_unmatched_total{what}`).
    Unmatched { source: SocketAddr, what: &'static str },
    /// A transaction or a registrar answer timed out.
    TimedOut { what: &'static str },
}

/// A REGISTER out at the registrar: its transaction, when to give up, and the request's raw
/// Via/From/To/Call-ID/CSeq lines for the 500 to send then (built only then: the registrar
/// almost always answers in time).
struct Pending {
    key: ServerKey,
    deadline: Timestamp,
    head: RawHead,
    /// An INVITE: kept to start the call with, and its 487 should it be cancelled meanwhile.
    invite: Option<(Request, SocketAddr, Transport)>,
}

/// A live leg, and the caller's INVITE it has yet to answer (A-legs only) with the 500 it gets
/// should the leg go down first.
struct LiveLeg {
    invite: Option<(ServerKey, Response)>,
    /// In-dialog requests handed to the leg and not yet answered, each with the 481 it gets
    /// should the leg go first — stopped with the request still in its mailbox, as when both
    /// parties hang up at once. Without it the request's server transaction, which waits for
    /// its answer with no timer (RFC 3261 §17.2.2), would never end.
    requests: Vec<(ServerKey, Response)>,
    /// The caller's leg of a call: one per call in progress.
    caller: bool,
}

/// In-dialog requests one leg may have unanswered at once; more get 503 (a phone has one or
/// two: a BYE crossing a re-INVITE).
pub const LEG_REQUESTS_MAX: usize = 8;

pub struct Endpoint {
    transactions: Transactions,
    next_tx: u64,
    /// Ids are handed out in increasing order with a fixed timeout, so the first entry is
    /// always the next to time out.
    pending: BTreeMap<u64, Pending>,
    legs: HashMap<LegId, LiveLeg>,
    /// Unanswered INVITEs of A-legs, for CANCEL.
    invites: HashMap<ServerKey, LegId>,
    /// A CSPRNG (ChaCha12): leg ids, and so pbx's tags, branches and Call-IDs.
    rng: StdRng,
    /// Keys the To tags of stateless answers (a retransmitted request gets the same tag).
    tag_key: u64,
    /// Shared by every shard of the node: a source is bounded as a whole.
    limiter: SharedLimiter,
    /// Which shard of the node's endpoint this is: its leg ids and registrar transaction ids
    /// say so (`super::shard`).
    shard: Shard,
    /// Calls in progress (their A-legs are live).
    calls: usize,
    /// The licence's limit on calls at once (`None`: none); beyond it a new INVITE gets 403.
    call_limit: Option<u32>,
    /// Numbers never refused for a licence limit.
    emergency_numbers: Vec<String>,
    outputs: VecDeque<EndpointOutput>,
    now: Timestamp,
    /// How long the inbound message being handled waited before it was; zero otherwise.
    waited: Duration,
    /// Whether messages have been waiting too long for a while (overload).
    queue: StandingQueue,
}

impl Endpoint {
    /// `seed` keys the CSPRNG that draws leg ids (pbx's tags, branches and Call-IDs): the
    /// node passes 256 bits from the OS at every start, the simulator one from its run's seed.
    pub fn new(timers: TimerConfig, seed: [u8; 32]) -> Endpoint {
        let mut rng = StdRng::from_seed(seed);
        let tag_key = rng.random();
        Endpoint {
            transactions: Transactions::new(timers),
            next_tx: 1,
            pending: BTreeMap::new(),
            legs: HashMap::new(),
            invites: HashMap::new(),
            rng,
            tag_key,
            limiter: SourceLimiter::shared(SourceLimit::default()),
            shard: Shard::ONE,
            calls: 0,
            call_limit: None,
            emergency_numbers: Vec::new(),
            outputs: VecDeque::new(),
            now: Timestamp::ZERO,
            waited: Duration::ZERO,
            queue: StandingQueue::default(),
        }
    }

    /// The licence's limit on calls at once, as it stands now (it changes when the licence
    /// does); calls already up are never cut.
    pub fn set_call_limit(&mut self, limit: Option<u32>) {
        self.call_limit = limit;
    }

    /// Each source's admission limit for new transactions (`[sip]` settings).
    pub fn set_source_limit(&mut self, limit: SourceLimit) {
        self.limiter = SourceLimiter::shared(limit);
    }

    /// The node's limiter, shared with its other endpoint shards (see `super::shard`).
    pub fn share_source_limiter(&mut self, limiter: SharedLimiter) {
        self.limiter = limiter;
    }

    /// This machine is `shard` of the node's endpoint: the leg ids it draws and its registrar
    /// transaction ids name it. Set before the first input.
    pub fn set_shard(&mut self, shard: Shard) {
        self.shard = shard;
    }

    /// Numbers a licence limit never refuses (`calls.emergency_numbers`).
    pub fn set_emergency_numbers(&mut self, numbers: Vec<String>) {
        self.emergency_numbers = numbers;
    }

    /// A live leg this endpoint did not start: its call outlived the endpoint actor that did
    /// (the supervisor restarted it). From now on what the leg sends goes out and what names it
    /// reaches it, so it can end its dialog. Its transactions died with the old endpoint; it is
    /// not counted as a call in progress. A leg already known is left as it is.
    pub fn adopt_leg(&mut self, leg: LegId) {
        self.legs.entry(leg).or_insert(LiveLeg { invite: None, requests: Vec::new(), caller: false });
    }

    /// Calls in progress.
    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn handle(&mut self, now: Timestamp, input: EndpointInput) {
        assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        self.now = now;
        match input {
            EndpointInput::Inbound { bytes, source, transport, received } => {
                self.waited = now.saturating_since(received);
                self.queue.observe(now, self.waited);
                self.inbound(&bytes, source, transport);
            }
            EndpointInput::RegistrarResponse { tx, response, authenticated } => {
                // An answer that comes after we gave up (500 sent) is dropped.
                if let Some(pending) = self.pending.remove(&tx) {
                    if authenticated {
                        self.respond(pending.key, response);
                    } else {
                        self.respond_stateless(pending.key, response);
                    }
                }
            }
            EndpointInput::Routed { tx, route } => {
                if let Some(Pending { key, invite: Some((invite, source, transport)), .. }) = self.pending.remove(&tx)
                    // Evicted meanwhile (the table was full of strangers' requests): the caller
                    // retransmits and starts over.
                    && self.transactions.has_server(&key)
                {
                    self.transactions.mark_vetted(&key);
                    // RFC 3261 §17.2.1: 100 Trying now that we will take a while (forking).
                    self.respond(key.clone(), invite.response(100, None));
                    self.start_call(key, invite, source, transport, route);
                }
            }
            EndpointInput::FromLeg { leg, out } => self.leg_sends(leg, out),
            EndpointInput::LegDown { leg } => self.leg_down(leg, false),
            EndpointInput::Refused { leg } => self.leg_down(leg, true),
            EndpointInput::Timeout => {
                self.transactions.handle(now, TransactionInput::Timeout);
                while let Some(entry) = self.pending.first_entry() {
                    if entry.get().deadline > now {
                        break;
                    }
                    let pending = entry.remove();
                    self.outputs.push_back(EndpointOutput::Event(EndpointEvent::TimedOut { what: "registrar answer" }));
                    if let Some(give_up) = pending.head.response(500, "Registrar did not answer") {
                        self.respond(pending.key, give_up);
                    }
                }
            }
        }
        self.drain_transactions();
        self.waited = Duration::ZERO;
    }

    pub fn poll_output(&mut self) -> Option<EndpointOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let pending = self.pending.first_key_value().map(|(_, p)| p.deadline);
        match (self.transactions.poll_timeout(), pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Live transactions, for metrics and bounds.
    pub fn transactions(&self) -> usize {
        self.transactions.len()
    }

    /// When the oldest live transaction began (see [`Transactions::oldest`]).
    pub fn oldest_transaction(&self) -> Option<Timestamp> {
        self.transactions.oldest()
    }

    /// The oldest live transaction, described (see [`Transactions::describe_oldest`]).
    pub fn describe_oldest_transaction(&self) -> Option<String> {
        self.transactions.describe_oldest()
    }

    /// Legs the endpoint routes to: started and not yet reported down.
    pub fn live_legs(&self) -> usize {
        self.legs.len()
    }

    fn inbound(&mut self, bytes: &[u8], source: SocketAddr, transport: Transport) {
        let parsed = match transport {
            Transport::Udp => message::parse_datagram(bytes),
            Transport::Tcp | Transport::Tls => message::parse_stream_frame(bytes),
        };
        match parsed {
            Ok(Message::Request(request)) => {
                // The key is read once: for the limiter (a new transaction, not a
                // retransmission or an ACK, counts against its source) and for the table.
                let Some(key) = ServerKey::of_request(&request) else {
                    tracing::debug!(%source, "request without a readable Via or CSeq: dropped");
                    return;
                };
                if request.method != Method::ACK
                    && !self.transactions.has_server(&key)
                    && !super::limiter::admit(&self.limiter, self.now, source.ip())
                {
                    self.outputs.push_back(EndpointOutput::Event(EndpointEvent::RateLimited { source }));
                    return;
                }
                // The transaction layer stamps Via received/rport (RFC 3581) as it files it.
                self.transactions
                    .handle(self.now, TransactionInput::ReceivedRequest { request, key, source, transport });
            }
            Ok(Message::Response(response)) => {
                self.transactions.handle(
                    self.now,
                    TransactionInput::Received { message: Message::Response(response), source, transport },
                );
            }
            Err(ParseError::Reject { code, reason, head }) => {
                // No transaction: the request is unusable, so is its branch. Answer to where
                // it came from; a retransmission is just answered again.
                let answered = match head.response(code, &reason) {
                    Some(response) => {
                        self.outputs.push_back(EndpointOutput::Event(EndpointEvent::Response { code }));
                        self.outputs.push_back(EndpointOutput::Transmit {
                            destination: source,
                            transport,
                            bytes: response.to_bytes(),
                        });
                        true
                    }
                    None => false,
                };
                self.outputs.push_back(EndpointOutput::Event(EndpointEvent::Malformed { source, reason, answered }));
            }
            Err(ParseError::Discard(reason)) => {
                self.outputs.push_back(EndpointOutput::Event(EndpointEvent::Malformed {
                    source,
                    reason,
                    answered: false,
                }));
            }
        }
    }

    /// Moves the transaction layer's outputs out, acting as its transaction user.
    fn drain_transactions(&mut self) {
        while let Some(out) = self.transactions.poll_output() {
            match out {
                TransactionOutput::Transmit { destination, transport, bytes } => {
                    self.outputs.push_back(EndpointOutput::Transmit { destination, transport, bytes });
                }
                TransactionOutput::Request { key, request, source, transport } => {
                    self.dispatch(key, request, source, transport);
                }
                TransactionOutput::StrayAck { request, .. } => {
                    // The ACK for a 2xx (RFC 3261 §13.3.1.4): to the leg its To tag names.
                    let tag = request.to().and_then(|to| to.tag);
                    if let Some(leg) = self.leg_named(tag.and_then(|t| LegId::from_tag(&t))) {
                        self.outputs.push_back(EndpointOutput::ToLeg { leg, input: SipIn::Ack { request } });
                    }
                }
                TransactionOutput::StrayResponse { response, source } => {
                    // A 2xx retransmitted after our INVITE transaction ended: the leg ACKs it
                    // again (if its Call-ID is the dialog's). Its From tag is ours.
                    let tag = response
                        .headers
                        .get::<ezk_sip_types::header::typed::FromTo>(Name::FROM)
                        .ok()
                        .and_then(|f| f.tag);
                    match self.leg_named(tag.and_then(|t| LegId::from_tag(&t))) {
                        Some(leg) => {
                            self.outputs.push_back(EndpointOutput::ToLeg { leg, input: SipIn::Response { response } })
                        }
                        None => self.unmatched(source, "response"),
                    }
                }
                TransactionOutput::Response { key, response } => {
                    if let Some(leg) = self.leg_named(LegId::from_branch(key.branch())) {
                        self.outputs.push_back(EndpointOutput::ToLeg { leg, input: SipIn::Response { response } });
                    }
                }
                TransactionOutput::Forged { source } => self.unmatched(source, "response"),
                TransactionOutput::Timeout { key } => {
                    self.outputs.push_back(EndpointOutput::Event(EndpointEvent::TimedOut { what: "transaction" }));
                    if let TransactionKey::Client(key) = key
                        && let Some(leg) = self.leg_named(LegId::from_branch(key.branch()))
                    {
                        let method = key.method().clone();
                        self.outputs.push_back(EndpointOutput::ToLeg { leg, input: SipIn::Timeout { method } });
                    }
                }
                TransactionOutput::Terminated { .. } => {}
            }
        }
    }

    fn dispatch(&mut self, key: ServerKey, request: Request, source: SocketAddr, transport: Transport) {
        let method = request.method.clone();
        let known = KNOWN_METHODS.iter().find(|(m, _)| *m == method).map(|(_, label)| *label);
        self.outputs.push_back(EndpointOutput::Event(EndpointEvent::Request { method: known.unwrap_or("other") }));
        // RFC 3261 §8.2.2.3: the one extension we support is `replaces` (RFC 3891) on an
        // INVITE; any other Require (outside CANCEL and ACK, which never carry one that
        // matters) is refused with the tags listed as Unsupported.
        let mut required = request.required();
        if method == Method::INVITE {
            required.retain(|tag| !tag.eq_ignore_ascii_case("replaces"));
        }
        if !required.is_empty() && method != Method::CANCEL && method != Method::ACK {
            let mut response = request.response(420, Some(&self.stateless_tag(&request)));
            response.headers.insert(Name::UNSUPPORTED, required.join(", "));
            self.respond_stateless(key, response);
            return;
        }
        let to_tag = request.to_ref().and_then(|to| to.tag.clone());
        if method == Method::REGISTER {
            self.hand_to_registrar(key, request, source, transport);
        } else if let Some(tag) = to_tag {
            // In a dialog: the tag is pbx's, and names the leg.
            match LegId::from_tag(&tag).and_then(|leg| self.legs.get_mut(&leg).map(|live| (leg, live))) {
                Some((_, live)) if live.requests.len() >= LEG_REQUESTS_MAX => {
                    let mut response = request.response(503, None);
                    response.headers.insert(Name::RETRY_AFTER, OVERLOAD_RETRY_AFTER_S.to_string());
                    self.respond_stateless(key, response);
                }
                Some((leg, live)) => {
                    // The leg checks Call-ID and From tag (RFC 3261 §12.2.2) and answers 481
                    // itself when they are not its dialog's.
                    live.requests.push((key.clone(), request.response(481, None)));
                    self.outputs.push_back(EndpointOutput::ToLeg { leg, input: SipIn::Request { key, request } })
                }
                None => {
                    self.unmatched(source, "request");
                    let response = request.response(481, None);
                    self.respond_stateless(key, response);
                }
            }
        } else if method == Method::INVITE {
            // No 100 yet: a stranger's INVITE gets exactly one datagram back (the 407).
            self.hand_to_registrar(key, request, source, transport);
        } else if method == Method::OPTIONS {
            // RFC 3261 §11.2: what we can do. A to-tag, as for any final response of a UAS.
            let mut response = request.response(200, Some(&self.stateless_tag(&request)));
            response.headers.insert(Name::ALLOW, ALLOW);
            response.headers.insert(Name::ACCEPT, "application/sdp");
            self.respond_stateless(key, response);
        } else if method == Method::CANCEL {
            self.cancel(key, request, source);
        } else if method == Method::BYE || method == Method::UPDATE || method == Method::INFO {
            // Only meaningful inside a dialog, and this one names none (RFC 3261 §15.1.2).
            self.unmatched(source, "request");
            let response = request.response(481, Some(&self.stateless_tag(&request)));
            self.respond_stateless(key, response);
        } else {
            // 405 for a method SIP defines that this node does not serve; 501 for one it does
            // not know at all (RFC 3261 §21.4.6 / §21.5.2).
            let code = if known.is_some() { 405 } else { 501 };
            let mut response = request.response(code, Some(&self.stateless_tag(&request)));
            response.headers.insert(Name::ALLOW, ALLOW);
            self.respond_stateless(key, response);
        }
    }

    /// The leg is gone: its unanswered INVITE gets its give-up answer (503 with Retry-After
    /// when `busy`), its pending requests theirs.
    fn leg_down(&mut self, leg: LegId, busy: bool) {
        let Some(LiveLeg { invite, requests, caller }) = self.legs.remove(&leg) else { return };
        if caller {
            self.calls -= 1;
        }
        if let Some((key, mut give_up)) = invite {
            self.invites.remove(&key);
            if busy {
                give_up.code = 503;
                give_up.reason = "Service Unavailable".into();
                give_up.headers.insert(Name::RETRY_AFTER, OVERLOAD_RETRY_AFTER_S.to_string());
            }
            self.respond(key, give_up);
        }
        for (key, gone) in requests {
            self.respond(key, gone);
        }
    }

    /// Whether this new REGISTER or INVITE is shed: only while a standing queue is detected;
    /// then one without credentials always, one with past [`SHED_CREDENTIALED_AFTER_MS`].
    fn too_late(&self, request: &Request) -> bool {
        if !self.queue.standing() {
            return false;
        }
        let credentialed =
            request.headers.contains(&Name::AUTHORIZATION) || request.headers.contains(&Name::PROXY_AUTHORIZATION);
        !credentialed || self.waited > Duration::from_millis(SHED_CREDENTIALED_AFTER_MS)
    }

    /// A REGISTER or a new INVITE goes to the registrar, bounded in number and in time.
    fn hand_to_registrar(&mut self, key: ServerKey, request: Request, source: SocketAddr, transport: Transport) {
        if self.pending.len() >= PENDING_REGISTERS_MAX || self.too_late(&request) {
            let method = if request.method == Method::INVITE { "INVITE" } else { "REGISTER" };
            self.outputs.push_back(EndpointOutput::Event(EndpointEvent::Shed { method }));
            let mut response = request.response(503, None);
            response.headers.insert(Name::RETRY_AFTER, OVERLOAD_RETRY_AFTER_S.to_string());
            self.respond_stateless(key, response);
            return;
        }
        self.transactions.mark_unvetted(&key);
        let tx = self.shard.tx(self.next_tx);
        self.next_tx += 1;
        let deadline = self.now + Duration::from_secs(REGISTRAR_ANSWER_S_MAX);
        let head = request.reply_head();
        if request.method == Method::INVITE {
            let invite = Some((request.clone(), source, transport));
            self.pending.insert(tx, Pending { key, deadline, head, invite });
            self.outputs.push_back(EndpointOutput::Route { tx, request: Box::new(request), source });
        } else {
            self.pending.insert(tx, Pending { key, deadline, head, invite: None });
            self.outputs.push_back(EndpointOutput::Register { tx, request: Box::new(request), source, transport });
        }
    }

    /// RFC 3261 §9.2: 200 to the CANCEL; the INVITE it names gets its 487 from the leg (or from
    /// here, while the registrar still has it).
    fn cancel(&mut self, key: ServerKey, request: Request, source: SocketAddr) {
        let invite = self.transactions.find_invite_for_cancel(&request);
        let leg = invite.as_ref().and_then(|k| self.invites.get(k)).copied();
        let waiting = invite
            .as_ref()
            .and_then(|k| self.pending.iter().find(|(_, p)| p.invite.is_some() && p.key == *k).map(|(tx, _)| *tx));
        if leg.is_none() && waiting.is_none() {
            self.unmatched(source, "cancel");
            let response = request.response(481, Some(&self.stateless_tag(&request)));
            return self.respond_stateless(key, response);
        }
        let tag = self.stateless_tag(&request);
        self.respond(key, request.response(200, Some(&tag)));
        if let Some(leg) = leg {
            self.outputs.push_back(EndpointOutput::ToLeg { leg, input: SipIn::Cancel });
        } else if let Some(pending) = waiting.and_then(|tx| self.pending.remove(&tx))
            && let Some((invite, _, _)) = pending.invite
        {
            let response = invite.response(487, Some(&tag));
            self.respond(pending.key, response);
        }
    }

    fn start_call(&mut self, key: ServerKey, invite: Request, source: SocketAddr, transport: Transport, route: Route) {
        if let Some(limit) = self.call_limit
            && self.calls >= limit as usize
            && !self.emergency_numbers.contains(&route.callee)
        {
            // RFC 3261 §21.4.4: understood, refused; the reason phrase says why.
            let mut response = invite.response(403, Some(&self.stateless_tag(&invite)));
            response.reason = format!("Licence limit: {limit} concurrent calls");
            return self.respond(key, response);
        }
        self.calls += 1;
        let a = self.new_leg();
        let mut give_up = invite.response(500, Some(&a.tag()));
        give_up.reason = "Call Failed".into();
        self.legs.insert(a, LiveLeg { invite: Some((key.clone(), give_up)), requests: Vec::new(), caller: true });
        self.invites.insert(key.clone(), a);
        // A leg per contact that rings now, then per contact of the forwards the call may take.
        let forks: Vec<LegId> = (0..route.contacts.len() + route.forwards.contacts()).map(|_| self.new_leg()).collect();
        for leg in &forks {
            self.legs.insert(*leg, LiveLeg { invite: None, requests: Vec::new(), caller: false });
        }
        self.outputs.push_back(EndpointOutput::StartCall(Box::new(CallStart {
            a,
            key,
            invite,
            source,
            transport,
            route,
            forks,
        })));
    }

    /// A fresh leg id from the CSPRNG (a repeat of a live one, at odds of 2^-128, is drawn
    /// again), one this shard owns: drawn until `leg % shards` names it (`super::shard`).
    fn new_leg(&mut self) -> LegId {
        loop {
            let leg = LegId(self.rng.random());
            if self.shard.owns_leg(leg) && !self.legs.contains_key(&leg) {
                return leg;
            }
        }
    }

    fn leg_sends(&mut self, leg: LegId, out: SipOut) {
        if !self.legs.contains_key(&leg) {
            return;
        }
        match out {
            SipOut::Request { request, destination, transport } => {
                self.transactions.handle(self.now, TransactionInput::SendRequest { request, destination, transport });
            }
            SipOut::Response { key, response } => {
                if response.code >= 200
                    && let Some(live) = self.legs.get_mut(&leg)
                {
                    if live.invite.as_ref().is_some_and(|(k, _)| *k == key) {
                        live.invite = None;
                        self.invites.remove(&key);
                    }
                    live.requests.retain(|(k, _)| *k != key);
                }
                self.respond(key, response);
            }
        }
    }

    /// The live leg a tag or branch of ours names.
    fn leg_named(&self, leg: Option<LegId>) -> Option<LegId> {
        leg.filter(|leg| self.legs.contains_key(leg))
    }

    fn respond(&mut self, key: ServerKey, response: Response) {
        self.outputs.push_back(EndpointOutput::Event(EndpointEvent::Response { code: response.code }));
        self.transactions.handle(self.now, TransactionInput::SendResponse { key, response });
    }

    /// Once, with no transaction kept (see the module doc).
    fn respond_stateless(&mut self, key: ServerKey, response: Response) {
        self.outputs.push_back(EndpointOutput::Event(EndpointEvent::Response { code: response.code }));
        self.transactions.handle(self.now, TransactionInput::SendStatelessResponse { key, response });
    }

    fn unmatched(&mut self, source: SocketAddr, what: &'static str) {
        self.outputs.push_back(EndpointOutput::Event(EndpointEvent::Unmatched { source, what }));
    }

    /// The To tag of an answer outside any dialog of ours: a keyed hash of the request's
    /// Call-ID and From tag, so a retransmission gets the same tag (RFC 3261 §8.2.7) without
    /// our keeping anything. 16 hex digits: never mistaken for a leg's tag (32).
    fn stateless_tag(&self, request: &Request) -> String {
        use std::hash::{DefaultHasher, Hasher};
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(self.tag_key);
        hasher.write(request.call_id_str().unwrap_or_default().as_bytes());
        if let Some(tag) = request.from_ref().and_then(|f| f.tag.as_ref()) {
            hasher.write(tag.as_bytes());
        }
        format!("{:016x}", hasher.finish())
    }
}

#[cfg(test)]
mod tests;

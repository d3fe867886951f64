//! The endpoint machine: bytes in, transactions, dispatch by method; bytes and work out.
//!
//! Sans-IO: it never reads a clock, a socket or a global RNG. Calling contract, as for every
//! machine in pbx: `handle(now, input)` with a `now` that never goes backwards, then drain
//! `poll_output` until `None`, then ask `poll_timeout` when to call `handle(now, Timeout)`.
//!
//! It does not route calls (a later issue's B2BUA does): INVITE is answered 405 for now.

use crate::Timestamp;
use crate::sip::message::{self, Message, ParseError, Request, Response, Transport};
use crate::sip::transaction::{ServerKey, TimerConfig, TransactionInput, TransactionOutput, Transactions};
use bytes::Bytes;
use ezk_sip_types::{Method, Name};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// The methods this endpoint acts on; the `Allow` header of every 405 and OPTIONS answer.
pub const ALLOW: &str = "REGISTER, OPTIONS";
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
/// REGISTERs handed to the registrar and not yet answered; beyond it new ones get 503.
pub const PENDING_REGISTERS_MAX: usize = 16_384;
/// A REGISTER the registrar has not answered in this time gets 500: a transaction must end.
pub const REGISTRAR_ANSWER_S_MAX: u64 = 16;
/// Seconds a client should wait before retrying after a 503 (RFC 3261 §20.33).
pub const OVERLOAD_RETRY_AFTER_S: u32 = 5;

#[derive(Debug)]
pub enum EndpointInput {
    /// One UDP datagram, or one message framed off a TCP stream.
    Inbound {
        bytes: Bytes,
        source: SocketAddr,
        transport: Transport,
    },
    /// The registrar's answer to the REGISTER handed out as `Register { tx, .. }`.
    RegistrarResponse {
        tx: u64,
        response: Response,
    },
    Timeout,
}

#[derive(Debug)]
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
    /// A transaction or a registrar answer timed out.
    TimedOut { what: &'static str },
}

/// A REGISTER out at the registrar: its transaction, when to give up, and the 500 to send then
/// (built from the request while we still have it).
struct Pending {
    key: ServerKey,
    deadline: Timestamp,
    give_up: Response,
}

pub struct Endpoint {
    transactions: Transactions,
    next_tx: u64,
    /// Ids are handed out in increasing order with a fixed timeout, so the first entry is
    /// always the next to time out.
    pending: BTreeMap<u64, Pending>,
    outputs: VecDeque<EndpointOutput>,
    now: Timestamp,
}

impl Endpoint {
    pub fn new(timers: TimerConfig) -> Endpoint {
        Endpoint {
            transactions: Transactions::new(timers),
            next_tx: 1,
            pending: BTreeMap::new(),
            outputs: VecDeque::new(),
            now: Timestamp::ZERO,
        }
    }

    pub fn handle(&mut self, now: Timestamp, input: EndpointInput) {
        assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        self.now = now;
        match input {
            EndpointInput::Inbound { bytes, source, transport } => self.inbound(&bytes, source, transport),
            EndpointInput::RegistrarResponse { tx, response } => {
                // An answer that comes after we gave up (500 sent) is dropped.
                if let Some(pending) = self.pending.remove(&tx) {
                    self.respond(pending.key, response);
                }
            }
            EndpointInput::Timeout => {
                self.transactions.handle(now, TransactionInput::Timeout);
                while let Some(entry) = self.pending.first_entry() {
                    if entry.get().deadline > now {
                        break;
                    }
                    let pending = entry.remove();
                    self.outputs.push_back(EndpointOutput::Event(EndpointEvent::TimedOut { what: "registrar answer" }));
                    self.respond(pending.key, pending.give_up);
                }
            }
        }
        self.drain_transactions();
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

    fn inbound(&mut self, bytes: &[u8], source: SocketAddr, transport: Transport) {
        let parsed = match transport {
            Transport::Udp => message::parse_datagram(bytes),
            Transport::Tcp => message::parse_stream_frame(bytes),
        };
        match parsed {
            Ok(Message::Request(request)) => {
                // The transaction layer stamps Via received/rport (RFC 3581) as it files it.
                self.transactions.handle(
                    self.now,
                    TransactionInput::Received { message: Message::Request(request), source, transport },
                );
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
                TransactionOutput::StrayAck { .. } | TransactionOutput::StrayResponse { .. } => {
                    // No dialogs yet: an ACK for a 2xx or a response we never asked for has
                    // no one to go to (RFC 3261 §17.1.3 / §17.2.3: pass to the TU, which drops).
                }
                TransactionOutput::Response { .. } => {}
                TransactionOutput::Timeout { .. } => {
                    self.outputs.push_back(EndpointOutput::Event(EndpointEvent::TimedOut { what: "transaction" }));
                }
                TransactionOutput::Terminated { .. } => {}
            }
        }
    }

    fn dispatch(&mut self, key: ServerKey, request: Request, source: SocketAddr, transport: Transport) {
        let method = request.method.clone();
        let known = KNOWN_METHODS.iter().find(|(m, _)| *m == method).map(|(_, label)| *label);
        self.outputs.push_back(EndpointOutput::Event(EndpointEvent::Request { method: known.unwrap_or("other") }));
        // RFC 3261 §8.2.2.3: we support no extension, so any Require (outside CANCEL and ACK,
        // which never carry one that matters) is refused with the tags listed as Unsupported.
        let required: Vec<String> = request
            .headers
            .get_raw(&Name::REQUIRE)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if !required.is_empty() && method != Method::CANCEL && method != Method::ACK {
            let mut response = request.response(420, Some(&self.next_tag()));
            response.headers.insert(Name::UNSUPPORTED, required.join(", "));
            self.respond(key, response);
            return;
        }
        if method == Method::REGISTER {
            if self.pending.len() >= PENDING_REGISTERS_MAX {
                let mut response = request.response(503, None);
                response.headers.insert(Name::RETRY_AFTER, OVERLOAD_RETRY_AFTER_S.to_string());
                self.respond(key, response);
                return;
            }
            let tx = self.next_tx;
            self.next_tx += 1;
            let deadline = self.now + Duration::from_secs(REGISTRAR_ANSWER_S_MAX);
            let mut give_up = request.response(500, None);
            give_up.reason = "Registrar did not answer".into();
            self.pending.insert(tx, Pending { key, deadline, give_up });
            self.outputs.push_back(EndpointOutput::Register { tx, request: Box::new(request), source, transport });
        } else if method == Method::OPTIONS {
            // RFC 3261 §11.2: what we can do. A to-tag, as for any final response of a UAS.
            let mut response = request.response(200, Some(&self.next_tag()));
            response.headers.insert(Name::ALLOW, ALLOW);
            response.headers.insert(Name::ACCEPT, "application/sdp");
            self.respond(key, response);
        } else if method == Method::CANCEL {
            // Nothing here can be cancelled yet (RFC 3261 §9.2).
            let response = request.response(481, Some(&self.next_tag()));
            self.respond(key, response);
        } else {
            // 405 for a method SIP defines that this node does not serve; 501 for one it does
            // not know at all (RFC 3261 §21.4.6 / §21.5.2).
            let code = if known.is_some() { 405 } else { 501 };
            let mut response = request.response(code, Some(&self.next_tag()));
            response.headers.insert(Name::ALLOW, ALLOW);
            self.respond(key, response);
        }
    }

    fn respond(&mut self, key: ServerKey, response: Response) {
        self.outputs.push_back(EndpointOutput::Event(EndpointEvent::Response { code: response.code }));
        self.transactions.handle(self.now, TransactionInput::SendResponse { key, response });
    }

    /// To-tags need only be unique per dialog attempt; the transaction counter suffices and
    /// keeps the machine free of any RNG.
    fn next_tag(&mut self) -> String {
        self.next_tx += 1;
        format!("pbx{:x}", self.next_tx)
    }
}

#[cfg(test)]
mod tests;

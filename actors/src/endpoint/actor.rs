//! The endpoint's ractor shell: feeds the glue (the machine and its routing, [`super::glue`])
//! the clock and the transports' input, delivers its envelopes (bytes onto the wire, REGISTERs
//! to the registrar, calls to the calls actor, SIP to legs, metrics, logs), and keeps one timer
//! armed for the next wake-up. Never sleeps in `handle`; decides nothing the glue does not.
//!
//! Shards: a node runs one such actor per endpoint shard (`super::shard`), each with its own
//! glue and machine; [`EndpointSink`] is the sharded endpoint as the rest of the node sees it
//! (it picks the shard of a message, a leg or a registrar answer). Gauges that were one
//! endpoint's (`pbx_call_legs_active`) are summed over the shards there.
//!
//! Restarts: the node supervises each shard's actor alone. A new incarnation starts with an empty machine
//! (the old one's transactions are gone); the calls that outlived it re-announce their legs
//! ([`EndpointMsg::Adopt`]) so that their BYEs go out through it (see `crate::call::actor`).
//! It reaches the registrar and the calls actor through [`Current`] references, so their
//! restarts need nothing from it either.

use super::glue::{EndpointGlue, Envelope, ForRegistrar, GlueInput};
use super::limiter::SharedLimiter;
use super::machine::{Endpoint, EndpointEvent, EndpointInput};
use super::shard::{self, ENDPOINT_SHARDS_MAX, Shard};
use crate::Timestamp;
use crate::bugs::Bugs;
use crate::call::actor::{CallMsg, CallsMsg, SipPort};
use crate::call::{LegId, SipOut};
use crate::licence::LicenceView;
use crate::registrar::{RegistrarMsg, ResponseSink, Route};
use crate::shell::{Control, Current, WakeTimer};
use crate::sip::message::{Response, Transport};
use crate::sip::transaction::TimerConfig;
use crate::time::Clock;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The port through which bytes leave: the node's UDP socket and TCP connections.
pub trait Wire: Send + Sync + 'static {
    /// Queue `bytes` for `destination`; never blocks. A full queue or a closed connection drops
    /// the message (SIP over UDP tolerates loss; the transaction layer retransmits).
    fn send(&self, destination: SocketAddr, transport: Transport, bytes: Bytes);
}

pub enum EndpointMsg {
    /// A message off the wire, and when the transport read it.
    Inbound {
        bytes: Bytes,
        source: SocketAddr,
        transport: Transport,
        read_at: std::time::Instant,
    },
    RegistrarResponse {
        tx: u64,
        response: Response,
        authenticated: bool,
    },
    Routed {
        tx: u64,
        route: Route,
    },
    FromLeg {
        leg: LegId,
        out: SipOut,
    },
    /// The leg runs in this call's actor.
    LegUp {
        leg: LegId,
        actor: ActorRef<CallMsg>,
    },
    LegDown {
        leg: LegId,
    },
    /// A leg whose call could not start for want of capacity ([`SipPort::refused`]).
    Refused {
        leg: LegId,
    },
    /// A leg of a call that outlived the endpoint actor that started it: route to it again.
    Adopt {
        leg: LegId,
        actor: ActorRef<CallMsg>,
    },
    /// The call these legs belonged to is gone. Legs that never came up are down now; legs
    /// that did are being hung up and say `LegDown` when done.
    CallLost {
        legs: Vec<LegId>,
    },
    /// Live transactions, for the API and metrics.
    Transactions(ractor::RpcReplyPort<usize>),
    Wake,
    Control(Control),
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for EndpointMsg {}

pub struct EndpointArgs {
    pub clock: Arc<dyn Clock>,
    pub wire: Arc<dyn Wire>,
    pub registrar: Current<RegistrarMsg>,
    pub calls: Current<CallsMsg>,
    pub timers: TimerConfig,
    /// Keys the CSPRNG of leg ids (pbx's tags, branches, Call-IDs): 256 bits from the OS.
    pub seed: [u8; 32],
    /// Which shard of the node's endpoint this actor is.
    pub shard: Shard,
    /// The sharded endpoint this actor is a shard of (for the summed gauges).
    pub sink: EndpointSink,
    /// Each source's admission limit for new transactions, shared by all shards.
    pub limiter: SharedLimiter,
    /// Inbound messages counted by the transports for this shard and not yet handled; the shell decrements it
    /// as it takes each one, so the transports can bound what piles up in the mailbox. Never
    /// taken below zero: a restart resets it while messages may still be on their way.
    pub inbound_backlog: Arc<AtomicUsize>,
    /// The licence in force, when a licence service is configured; its limit on calls at once
    /// is read for every new call. `None`: no limit.
    pub licence: Option<LicenceView>,
    /// Numbers no licence limit refuses.
    pub emergency_numbers: Vec<String>,
}

pub struct EndpointState {
    glue: EndpointGlue<ActorRef<CallMsg>>,
    clock: Arc<dyn Clock>,
    wire: Arc<dyn Wire>,
    registrar: Current<RegistrarMsg>,
    calls: Current<CallsMsg>,
    inbound_backlog: Arc<AtomicUsize>,
    timer: WakeTimer,
    licence: Option<LicenceView>,
    shard: Shard,
    sink: EndpointSink,
    counters: SipCounters,
}

/// The handles of the per-request and per-response counters, looked up once per label: the
/// `counter!` macro registers its key with the recorder on every call (hashing the name and
/// labels, and for a response printing its code), two per REGISTER. Bounded: a handful of
/// method labels, and status codes are 100–699.
#[derive(Default)]
struct SipCounters {
    requests: Vec<(&'static str, metrics::Counter)>,
    responses: std::collections::BTreeMap<u16, metrics::Counter>,
}

impl SipCounters {
    fn request(&mut self, method: &'static str) -> &metrics::Counter {
        let i = match self.requests.iter().position(|(m, _)| *m == method) {
            Some(i) => i,
            None => {
                self.requests.push((method, metrics::counter!("pbx_sip_requests_total", "method" => method)));
                self.requests.len() - 1
            }
        };
        &self.requests[i].1
    }

    fn response(&mut self, code: u16) -> &metrics::Counter {
        self.responses
            .entry(code)
            .or_insert_with(|| metrics::counter!("pbx_sip_responses_total", "code" => code.to_string()))
    }
}

pub struct EndpointActor;

/// The node's endpoint as the registrar, the legs, the transports and the API reach it: one
/// [`Current`] per shard, each pointed at its shard's incarnation by `connect`. What is sent to
/// a shard while there is none (or while it restarts) is lost, as UDP would lose it;
/// transactions retransmit. Each message goes to the shard that owns what it names: a leg
/// (`shard::of_leg`), a registrar transaction (`shard::of_tx`), a SIP message's Call-ID
/// (`shard::of_message`).
#[derive(Clone)]
pub struct EndpointSink(Arc<Shards>);

struct Shards {
    actors: Vec<Current<EndpointMsg>>,
    /// Each shard's legs routed, for the one `pbx_call_legs_active` gauge.
    legs_routed: Vec<AtomicUsize>,
}

impl Default for EndpointSink {
    /// One shard.
    fn default() -> EndpointSink {
        EndpointSink::new(1)
    }
}

impl EndpointSink {
    /// `count` shards (1 to [`ENDPOINT_SHARDS_MAX`]; clamped), none running yet.
    pub fn new(count: usize) -> EndpointSink {
        let count = count.clamp(1, ENDPOINT_SHARDS_MAX);
        EndpointSink(Arc::new(Shards {
            actors: (0..count).map(|_| Current::default()).collect(),
            legs_routed: (0..count).map(|_| AtomicUsize::new(0)).collect(),
        }))
    }

    /// How many shards.
    pub fn count(&self) -> usize {
        self.0.actors.len()
    }

    /// Shard `index` (below [`EndpointSink::count`]).
    pub fn shard(&self, index: usize) -> &Current<EndpointMsg> {
        &self.0.actors[index]
    }

    /// Every shard, in order.
    pub fn shards(&self) -> &[Current<EndpointMsg>] {
        &self.0.actors
    }

    /// Points shard `index` at its new incarnation.
    pub fn connect(&self, index: usize, endpoint: ActorRef<EndpointMsg>) {
        self.0.actors[index].set(endpoint);
    }

    /// The shard a SIP message from the network goes to, by its Call-ID.
    pub fn for_message(&self, bytes: &[u8]) -> usize {
        shard::of_message(bytes, self.count())
    }

    fn for_leg(&self, leg: LegId) -> &Current<EndpointMsg> {
        self.shard(shard::of_leg(leg, self.count()))
    }

    fn for_tx(&self, tx: u64) -> &Current<EndpointMsg> {
        self.shard(shard::of_tx(tx, self.count()))
    }

    /// Shard `index` routes `n` legs now: the node's gauge is the sum over its shards.
    fn legs_routed(&self, index: usize, n: usize) {
        self.0.legs_routed[index].store(n, Ordering::Relaxed);
        let total: usize = self.0.legs_routed.iter().map(|l| l.load(Ordering::Relaxed)).sum();
        metrics::gauge!("pbx_call_legs_active").set(total as f64);
    }
}

impl ResponseSink for EndpointSink {
    fn deliver(&self, tx: u64, response: Response, authenticated: bool) {
        let _ = self.for_tx(tx).cast(EndpointMsg::RegistrarResponse { tx, response, authenticated });
    }

    fn route(&self, tx: u64, route: Route) {
        let _ = self.for_tx(tx).cast(EndpointMsg::Routed { tx, route });
    }
}

impl SipPort for EndpointSink {
    fn send(&self, leg: LegId, out: SipOut) {
        let _ = self.for_leg(leg).cast(EndpointMsg::FromLeg { leg, out });
    }

    fn leg_up(&self, leg: LegId, actor: ActorRef<CallMsg>) {
        let _ = self.for_leg(leg).cast(EndpointMsg::LegUp { leg, actor });
    }

    fn leg_down(&self, leg: LegId) {
        let _ = self.for_leg(leg).cast(EndpointMsg::LegDown { leg });
    }

    fn refused(&self, leg: LegId) {
        let _ = self.for_leg(leg).cast(EndpointMsg::Refused { leg });
    }

    fn adopt(&self, leg: LegId, actor: ActorRef<CallMsg>) {
        let _ = self.for_leg(leg).cast(EndpointMsg::Adopt { leg, actor });
    }

    fn call_lost(&self, legs: &[LegId]) {
        // A call's legs are all one shard's; grouped anyway, so no shard hears of another's.
        for index in 0..self.count() {
            let mine: Vec<LegId> = legs.iter().copied().filter(|&l| shard::of_leg(l, self.count()) == index).collect();
            if !mine.is_empty() {
                let _ = self.shard(index).cast(EndpointMsg::CallLost { legs: mine });
            }
        }
    }
}

impl Actor for EndpointActor {
    type Msg = EndpointMsg;
    type State = EndpointState;
    type Arguments = EndpointArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<EndpointMsg>,
        args: EndpointArgs,
    ) -> Result<EndpointState, ActorProcessingErr> {
        let mut machine = Endpoint::new(args.timers, args.seed);
        machine.set_shard(args.shard);
        machine.share_source_limiter(args.limiter);
        // This incarnation routes no leg yet (the calls re-announce theirs).
        args.sink.legs_routed(args.shard.index, 0);
        machine.set_emergency_numbers(args.emergency_numbers);
        Ok(EndpointState {
            // The product never injects a bug (`Bugs` is empty without the simulator's feature).
            glue: EndpointGlue::new(machine, Bugs::default()),
            clock: args.clock,
            wire: args.wire,
            registrar: args.registrar,
            calls: args.calls,
            inbound_backlog: args.inbound_backlog,
            timer: WakeTimer::default(),
            licence: args.licence,
            shard: args.shard,
            sink: args.sink,
            counters: SipCounters::default(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<EndpointMsg>,
        msg: EndpointMsg,
        s: &mut EndpointState,
    ) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        let input = match msg {
            EndpointMsg::Inbound { bytes, source, transport, read_at } => {
                let _ = s.inbound_backlog.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                // The wait in this shard's mailbox, on the machine's clock.
                let received = now.saturating_sub(read_at.elapsed());
                GlueInput::Endpoint(EndpointInput::Inbound { bytes, source, transport, received })
            }
            EndpointMsg::RegistrarResponse { tx, response, authenticated } => {
                GlueInput::Endpoint(EndpointInput::RegistrarResponse { tx, response, authenticated })
            }
            EndpointMsg::Routed { tx, route } => GlueInput::Endpoint(EndpointInput::Routed { tx, route }),
            EndpointMsg::FromLeg { leg, out } => GlueInput::Endpoint(EndpointInput::FromLeg { leg, out }),
            EndpointMsg::LegUp { leg, actor } => GlueInput::LegUp { leg, to: actor },
            EndpointMsg::LegDown { leg } => GlueInput::Endpoint(EndpointInput::LegDown { leg }),
            EndpointMsg::Refused { leg } => GlueInput::Endpoint(EndpointInput::Refused { leg }),
            EndpointMsg::Adopt { leg, actor } => GlueInput::Adopt { leg, to: actor },
            EndpointMsg::CallLost { legs } => GlueInput::CallLost { legs },
            EndpointMsg::Transactions(reply) => {
                let _ = reply.send(s.glue.machine().transactions());
                return Ok(());
            }
            EndpointMsg::Control(control) => {
                control.obey("endpoint");
                return Ok(());
            }
            EndpointMsg::Wake => {
                s.timer.fired();
                GlueInput::Endpoint(EndpointInput::Timeout)
            }
        };
        s.glue.handle(now, input, &s.licence);
        while let Some(envelope) = s.glue.poll_envelope() {
            s.deliver(now, envelope);
        }
        s.timer.arm(&me, now, s.glue.poll_timeout(), || EndpointMsg::Wake);
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<EndpointMsg>, s: &mut EndpointState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        Ok(())
    }
}

impl EndpointState {
    /// Delivers one of the glue's envelopes to whom it is addressed.
    fn deliver(&mut self, now: Timestamp, envelope: Envelope<ActorRef<CallMsg>>) {
        match envelope {
            Envelope::Net { destination, transport, bytes } => self.wire.send(destination, transport, bytes),
            Envelope::Registrar(ForRegistrar::Register { tx, request, source, transport }) => {
                if !self.registrar.cast(RegistrarMsg::Register { tx, request: *request, source, transport }) {
                    tracing::error!("registrar is gone; the REGISTER will be answered 500 on timeout");
                }
            }
            Envelope::Registrar(ForRegistrar::Route { tx, request, source }) => {
                if !self.registrar.cast(RegistrarMsg::Route { tx, request: *request, source }) {
                    tracing::error!("registrar is gone; the INVITE will be answered 500 on timeout");
                }
            }
            Envelope::Calls(start) => {
                let legs = start.legs();
                if !self.calls.cast(CallsMsg::Start(start)) {
                    tracing::error!("calls actor is gone; the INVITE is answered 500");
                    self.glue.handle(now, GlueInput::CallLost { legs }, &self.licence);
                }
            }
            Envelope::Leg { to, leg, input } => {
                let _ = to.cast(CallMsg::Sip { leg, input: Box::new(input) });
            }
            Envelope::Event(event) => record(&mut self.counters, event),
            Envelope::LegsRouted(n) => self.sink.legs_routed(self.shard.index, n),
        }
    }
}

fn record(counters: &mut SipCounters, event: EndpointEvent) {
    match event {
        EndpointEvent::Request { method } => counters.request(method).increment(1),
        EndpointEvent::Response { code } => counters.response(code).increment(1),
        EndpointEvent::Malformed { source, reason, answered } => {
            metrics::counter!("pbx_sip_malformed_total").increment(1);
            tracing::info!(%source, %reason, answered, "malformed SIP message");
        }
        EndpointEvent::TimedOut { what } => {
            tracing::debug!(what, "timed out");
        }
        EndpointEvent::Shed { method } => {
            metrics::counter!("pbx_sip_shed_total", "method" => method).increment(1);
            tracing::debug!(method, "overloaded: a new request answered 503");
        }
        EndpointEvent::RateLimited { source } => {
            metrics::counter!("pbx_sip_rate_limited_total").increment(1);
            tracing::debug!(%source, "new request over the source's limit: dropped");
        }
        EndpointEvent::Unmatched { source, what } => {
            metrics::counter!("pbx_sip_unmatched_total", "what" => what).increment(1);
            tracing::debug!(%source, what, "names no dialog or transaction of ours");
        }
    }
}

//! The endpoint's glue: the routing between the endpoint machine and the rest of a node
//! (registrar, calls, legs, the wire), as a sans-IO component that two drivers share — the
//! ractor shell ([`super::actor`]) in the product, and the simulator's node on virtual time
//! (as quinn-proto's `Endpoint` sits under quinn).
//!
//! It owns what the shell used to decide on its own:
//! - the leg table: which legs are up (with the driver's handle to reach each: the product's
//!   call actor's `ActorRef`, the simulator's nothing), and a short start-up queue per leg
//!   that is not up yet (a CANCEL can overtake the call's start), bounded by [`LEG_START_QUEUE_MAX`];
//! - the call limit: the licence's limit on calls at once, read as each call is routed;
//! - turning the machine's outputs into addressed [`Envelope`]s, which the driver only
//!   delivers.
//!
//! Calling contract, as for every machine in pbx: `handle(now, input, licence)` with a `now`
//! that never goes backwards, then drain [`EndpointGlue::poll_envelope`] until `None` (before
//! the next `handle`, but for the `CallLost` below, which may come mid-drain), then ask
//! [`EndpointGlue::poll_timeout`] when to call `handle(now, Timeout)`. A [`Envelope::Calls`]
//! the driver cannot deliver (the calls actor is gone) is reported back as
//! [`GlueInput::CallLost`] with [`CallStart::legs`].
//!
//! What it does not do: metrics, logs and the inbound backlog stay with the shell (they are
//! I/O); what the calls actor does with a `CallStart` is the calls glue's
//! (`crate::call::not_started` for the CDR of a call that did not start).

use super::machine::{Endpoint, EndpointEvent, EndpointInput, EndpointOutput};
use crate::Timestamp;
use crate::bugs::Bugs;
use crate::call::{CallStart, LegId, SipIn};
use crate::licence::{LicenceView, Watchdog};
use crate::registrar::RegistrarInput;
use crate::sip::message::{Request, Transport};
use bytes::Bytes;
use ezk_sip_types::Method;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// What waits for a leg that is still starting; more is dropped (UDP peers resend).
pub const LEG_START_QUEUE_MAX: usize = 16;

/// Where the licence's limit on calls at once is read, as each call is routed.
pub trait CallLimit {
    /// The limit in force at `now`; `None`: no limit.
    fn concurrent_calls(&self, now: Timestamp) -> Option<u32>;
}

/// The product's shared licence state (the watchdog's shell keeps it current).
impl CallLimit for LicenceView {
    fn concurrent_calls(&self, _now: Timestamp) -> Option<u32> {
        Some(self.effective().limits.concurrent_calls)
    }
}

/// The watchdog machine itself, where the driver owns it (the simulator).
impl CallLimit for Watchdog {
    fn concurrent_calls(&self, now: Timestamp) -> Option<u32> {
        Some(self.effective(now).limits.concurrent_calls)
    }
}

/// No licence service configured: no limit.
impl<T: CallLimit> CallLimit for Option<T> {
    fn concurrent_calls(&self, now: Timestamp) -> Option<u32> {
        self.as_ref().and_then(|l| l.concurrent_calls(now))
    }
}

/// What the glue takes. `H` is how the driver reaches a leg once it is up.
#[derive(Debug)]
// Moved straight into `handle` and never stored, like `EndpointInput`.
#[allow(clippy::large_enum_variant)]
pub enum GlueInput<H> {
    /// For the endpoint machine. A `Routed` reads the call limit first; a `LegDown` also
    /// takes the leg out of the table.
    Endpoint(EndpointInput),
    /// A leg is running (in its call's actor): what waited for it goes to it now.
    LegUp { leg: LegId, to: H },
    /// A leg of a call that outlived the endpoint actor that started it: route to it again.
    Adopt { leg: LegId, to: H },
    /// The call these legs belonged to is gone (or never reached the calls actor). Legs whose
    /// actor never came up are down now; legs with an actor hang up on their own and say
    /// `LegDown` when done.
    CallLost { legs: Vec<LegId> },
}

/// A REGISTER or a new INVITE for the registrar (see [`EndpointOutput::Register`] and
/// [`EndpointOutput::Route`]); answered by `RegistrarResponse` or `Routed`.
#[derive(Debug)]
pub enum ForRegistrar {
    Register { tx: u64, request: Box<Request>, source: SocketAddr, transport: Transport },
    Route { tx: u64, request: Box<Request>, source: SocketAddr },
}

impl From<ForRegistrar> for RegistrarInput {
    fn from(work: ForRegistrar) -> RegistrarInput {
        match work {
            ForRegistrar::Register { tx, request, source, transport } => {
                RegistrarInput::Register { tx, request: *request, source, transport }
            }
            ForRegistrar::Route { tx, request, source } => RegistrarInput::Route { tx, request: *request, source },
        }
    }
}

/// One output, addressed: who it is for, and what.
#[derive(Debug)]
// Moved straight to the driver and never stored: boxing would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum Envelope<H> {
    /// Bytes onto the wire.
    Net { destination: SocketAddr, transport: Transport, bytes: Bytes },
    /// To the registrar.
    Registrar(ForRegistrar),
    /// To the calls actor: start this call (its legs are in the table from now on).
    Calls(Box<CallStart>),
    /// To the leg, reached through `to` (its call's actor).
    Leg { to: H, leg: LegId, input: SipIn },
    /// For the shell's logs and metrics.
    Event(EndpointEvent),
    /// The number of legs routed changed (`pbx_call_legs_active`).
    LegsRouted(usize),
}

/// Where a leg's SIP goes: its actor, or a short queue until the actor is up.
#[derive(Debug)]
enum LegRoute<H> {
    Up(H),
    Starting(Vec<SipIn>),
}

/// The endpoint machine and its routing (see the module doc).
pub struct EndpointGlue<H> {
    machine: Endpoint,
    legs: HashMap<LegId, LegRoute<H>>,
    bugs: Bugs,
    /// What the glue itself addressed (queued SIP for a leg now up, table sizes); the
    /// machine's outputs are addressed as they are polled, so they are not moved twice.
    envelopes: VecDeque<Envelope<H>>,
}

impl<H: Clone> EndpointGlue<H> {
    pub fn new(machine: Endpoint, bugs: Bugs) -> EndpointGlue<H> {
        EndpointGlue { machine, legs: HashMap::new(), bugs, envelopes: VecDeque::new() }
    }

    /// The machine, for what drivers read of it (transactions, live legs).
    pub fn machine(&self) -> &Endpoint {
        &self.machine
    }

    /// Legs in the table: up, or starting with a queue.
    pub fn routed_legs(&self) -> usize {
        self.legs.len()
    }

    pub fn handle(&mut self, now: Timestamp, input: GlueInput<H>, licence: &dyn CallLimit) {
        match input {
            GlueInput::Endpoint(input) => {
                match &input {
                    // The licence's limit is read for every new call; calls already up are never cut.
                    EndpointInput::Routed { .. } => {
                        if let Some(limit) = licence.concurrent_calls(now) {
                            self.machine.set_call_limit(Some(limit));
                        }
                    }
                    EndpointInput::LegDown { leg } | EndpointInput::Refused { leg }
                        if self.legs.remove(leg).is_some() =>
                    {
                        self.envelopes.push_back(Envelope::LegsRouted(self.legs.len()));
                    }
                    _ => {}
                }
                self.machine.handle(now, input);
            }
            GlueInput::LegUp { leg, to } => {
                // A leg the call drew itself (a transfer's) is new to the machine too.
                self.machine.adopt_leg(leg);
                if let Some(LegRoute::Starting(queued)) = self.legs.insert(leg, LegRoute::Up(to.clone())) {
                    for input in queued {
                        self.envelopes.push_back(Envelope::Leg { to: to.clone(), leg, input });
                    }
                }
                self.envelopes.push_back(Envelope::LegsRouted(self.legs.len()));
            }
            GlueInput::Adopt { leg, to } => {
                self.machine.adopt_leg(leg);
                self.legs.insert(leg, LegRoute::Up(to));
                self.envelopes.push_back(Envelope::LegsRouted(self.legs.len()));
            }
            GlueInput::CallLost { legs } => {
                for leg in legs {
                    if !matches!(self.legs.get(&leg), Some(LegRoute::Up(_))) {
                        self.legs.remove(&leg);
                        self.machine.handle(now, EndpointInput::LegDown { leg });
                    }
                }
                self.envelopes.push_back(Envelope::LegsRouted(self.legs.len()));
            }
        }
    }

    /// The next envelope to deliver: first what the glue addressed itself, then the machine's
    /// outputs, addressed as they come (in the machine's order).
    pub fn poll_envelope(&mut self) -> Option<Envelope<H>> {
        if let Some(envelope) = self.envelopes.pop_front() {
            return Some(envelope);
        }
        loop {
            let out = self.machine.poll_output()?;
            if let Some(envelope) = self.address(out) {
                return Some(envelope);
            }
        }
    }

    /// Addresses one output of the machine; `None` when it waits in a leg's start-up queue
    /// (or is dropped: the queue is full).
    fn address(&mut self, out: EndpointOutput) -> Option<Envelope<H>> {
        let envelope = match out {
            EndpointOutput::Transmit { destination, transport, bytes } => {
                Envelope::Net { destination, transport, bytes }
            }
            EndpointOutput::Register { tx, request, source, transport } => {
                Envelope::Registrar(ForRegistrar::Register { tx, request, source, transport })
            }
            EndpointOutput::Route { tx, request, source } => {
                Envelope::Registrar(ForRegistrar::Route { tx, request, source })
            }
            EndpointOutput::StartCall(start) => {
                self.legs.insert(start.a, LegRoute::Starting(Vec::new()));
                Envelope::Calls(start)
            }
            EndpointOutput::ToLeg { leg, input } => {
                if self.bugs.unrouted_request() && is_bye(&input) {
                    return None;
                }
                match self.legs.entry(leg).or_insert(LegRoute::Starting(Vec::new())) {
                    LegRoute::Up(to) => Envelope::Leg { to: to.clone(), leg, input },
                    LegRoute::Starting(queue) if queue.len() < LEG_START_QUEUE_MAX => {
                        queue.push(input);
                        return None;
                    }
                    LegRoute::Starting(_) => return None,
                }
            }
            EndpointOutput::Event(event) => Envelope::Event(event),
        };
        Some(envelope)
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.machine.poll_timeout()
    }
}

/// The injected bug's victim: an in-dialog BYE.
fn is_bye(input: &SipIn) -> bool {
    matches!(input, SipIn::Request { request, .. } if request.method == Method::BYE)
}

#[cfg(test)]
mod tests;

//! [`CallCore`]: one call as a sans-IO unit — its [`Call`] machine and the [`Leg`] machines of
//! its legs, with the routing between them. Both drivers run this same code: the call actor
//! ([`super::actor::CallActor`]) in the product, and the simulator's node on virtual time.
//!
//! What a leg tells the call ([`LegEvent`]) goes back into [`Call::handle`] at once, in the
//! same step, and what the call asks of a leg ([`CallOutput::ToLeg`]) goes into the leg the
//! same way, until neither has anything left to say. What leaves the call — SIP for the
//! endpoint, legs up and down, media settings, the CDR, the end — comes out of
//! [`CallCore::poll_output`] in the order it happened. [`CallCore::poll_timeout`] is the
//! earliest timeout of the call and its legs.
//!
//! The leg machines live in a [`LegTable`]: a plain map in the simulator, the table the call
//! actor shares with the calls actor's ledger ([`super::actor::CallLegs`]) in the product, so
//! that the legs outlive an actor that fails and can still be hung up.

use super::LegId;
use super::b2bua::{Call, CallConfig, CallInput, CallOutput, CallSetup};
use super::leg::{Leg, LegEvent, LegInput, LegOutput, SipIn, SipOut};
use crate::Timestamp;
use crate::bugs::Bugs;
use crate::cdr::Cdr;
use crate::media::relay::{PeerMedia, Side};
use std::collections::{BTreeMap, VecDeque};

/// A call's leg machines by id. Ordered, so that every pass over them (timeouts) runs in the
/// same order on every run: the simulator's replays depend on it.
pub type Legs = BTreeMap<LegId, Box<Leg>>;

/// Where a [`CallCore`] keeps its legs' machines.
pub trait LegTable {
    /// Runs `f` on the legs (each use is one short step).
    fn with<R>(&mut self, f: impl FnOnce(&mut Legs) -> R) -> R;
    /// Runs `f` on the legs, read-only.
    fn peek<R>(&self, f: impl FnOnce(&Legs) -> R) -> R;
}

impl LegTable for Legs {
    fn with<R>(&mut self, f: impl FnOnce(&mut Legs) -> R) -> R {
        f(self)
    }

    fn peek<R>(&self, f: impl FnOnce(&Legs) -> R) -> R {
        f(self)
    }
}

/// What a call's driver hands it.
#[derive(Debug)]
// Moved straight into `handle`, as `LegInput` is: boxing would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum CoreInput {
    /// SIP from the endpoint for one of the call's legs (ignored if the leg is gone).
    Sip(LegId, SipIn),
    /// The media relay saw no RTP from this side for the configured time.
    MediaInactive { side: Side },
    /// Something the call depends on failed (its media session, the SIP endpoint): the call
    /// ends, `failed` with this reason.
    Fail { reason: String },
    /// pbx hangs up an answered call (a conference room hung up on its participant).
    Hangup,
    /// A fork's pushed phone registered (see `CallInput::Woken`).
    Woken { leg: LegId, binding: Box<crate::registrar::Binding> },
    /// A fork's push was refused (see `CallInput::PushFailed`).
    PushFailed { leg: LegId },
    /// A phone picks the ringing call up (see `CallInput::PickUp`).
    PickUp(Box<super::CallStart>),
    /// The calls actor's answer to `CoreOutput::Park` (see `CallInput::Parked`).
    Parked { attempt: u64, ok: bool },
    /// A phone dialled the orbit this call is parked in (see `CallInput::Retrieve`).
    Retrieve(Box<super::CallStart>),
    /// An INVITE with `Replaces` takes a leg's place (see `CallInput::ReplaceLeg`).
    ReplaceLeg { leg: LegId, start: Box<super::CallStart> },
    /// The answer to `CoreOutput::Replace` (see `CallInput::Replaced`).
    Replaced { attempt: u64, result: Result<u64, (u16, String)> },
    /// Another call's transferee, its leg machine and what goes with it (see
    /// `CallInput::TakeOver`): the machine joins this call's table.
    TakeOver { machine: Box<Leg>, takeover: Box<super::b2bua::TakeOver> },
    /// The answer to `CoreOutput::Transfer` (see `CallInput::TransferRoute`).
    TransferRoute { attempt: u64, result: super::b2bua::TransferLookup },
    /// The time given to `handle` has reached [`CallCore::poll_timeout`] (early is harmless).
    Timeout,
}

/// What leaves the call, in the order it happened.
// Taken out at once by the driver; boxing the SIP would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum CoreOutput {
    /// SIP for the endpoint to send for this leg.
    Sip(LegId, SipOut),
    /// The leg is running in this call: route its SIP here.
    LegUp(LegId),
    /// The leg is gone (its dialog is over).
    LegDown(LegId),
    ConfigureMedia {
        side: Side,
        peer: PeerMedia,
    },
    /// The side's SRTP keys (`None`: plain RTP), before the `ConfigureMedia` that uses them.
    MediaKeys {
        side: Side,
        keys: Option<crate::media::SrtpKeys>,
    },
    /// A media-security notice for the log (see `CallOutput::Notice`).
    Notice {
        side: Side,
        message: &'static str,
    },
    /// Wake this fork's phone by push (see `CallOutput::Push`).
    Push {
        leg: LegId,
        binding: Box<crate::registrar::Binding>,
        caller: String,
        callee: String,
    },
    /// Look a transfer's target up (see `CallOutput::Transfer`).
    Transfer {
        attempt: u64,
        number: String,
        transferee: String,
        secure: bool,
    },
    /// Claim a park orbit (see `CallOutput::Park`).
    Park {
        attempt: u64,
        orbit: String,
    },
    /// The call left its orbit (see `CallOutput::Unparked`).
    Unparked,
    /// Find the call holding this dialog (see `CallOutput::Replace`).
    Replace {
        attempt: u64,
        replaces: super::transfer::Replaces,
        transferor: String,
    },
    /// This leg's machine leaves the call for the call that reserved itself (see
    /// `CallOutput::HandOver`): send both there as `CoreInput::TakeOver`. Not down: the other
    /// call's `LegUp` reroutes it.
    HandOver {
        machine: Box<Leg>,
        takeover: Box<super::b2bua::TakeOver>,
    },
    /// The record of the call up to a completed transfer: store it (the driver fills in the
    /// media counters so far); the call goes on.
    Segment(Box<Cdr>),
    /// The call has ended: store its record (the driver fills in the media counters). Legs may
    /// still be finishing their last transactions.
    Record(Box<Cdr>),
    /// Every leg has finished (or the bound came): the call's driver may stop it. Legs still in
    /// the table are the driver's to report down.
    Over,
}

/// One call: the call machine, its legs' machines, and the routing between them.
pub struct CallCore<L: LegTable = Legs> {
    call: Call,
    legs: L,
    bugs: Bugs,
    /// Leg events the call machine has not heard yet.
    events: VecDeque<(LegId, LegEvent)>,
    outputs: VecDeque<CoreOutput>,
}

impl<L: LegTable> CallCore<L> {
    /// The call as it starts: its first outputs (the B-legs' INVITEs, or the caller's
    /// rejection) wait in [`poll_output`](Self::poll_output).
    pub fn new(now: Timestamp, config: CallConfig, setup: CallSetup, legs: L) -> CallCore<L> {
        let mut core = CallCore {
            call: Call::new(now, config, setup),
            legs,
            bugs: config.bugs,
            events: VecDeque::new(),
            outputs: VecDeque::new(),
        };
        core.drain(now);
        core
    }

    pub fn handle(&mut self, now: Timestamp, input: CoreInput) {
        match input {
            CoreInput::Sip(leg, sip) => self.feed_leg(now, leg, LegInput::Sip(sip)),
            CoreInput::MediaInactive { side } => self.call.handle(now, CallInput::MediaInactive { side }),
            CoreInput::Fail { reason } => self.call.handle(now, CallInput::Fail { reason }),
            CoreInput::Hangup => self.call.handle(now, CallInput::Hangup),
            CoreInput::Woken { leg, binding } => self.call.handle(now, CallInput::Woken { leg, binding }),
            CoreInput::PushFailed { leg } => self.call.handle(now, CallInput::PushFailed { leg }),
            CoreInput::PickUp(start) => self.call.handle(now, CallInput::PickUp(start)),
            CoreInput::Parked { attempt, ok } => self.call.handle(now, CallInput::Parked { attempt, ok }),
            CoreInput::Retrieve(start) => self.call.handle(now, CallInput::Retrieve(start)),
            CoreInput::ReplaceLeg { leg, start } => self.call.handle(now, CallInput::ReplaceLeg { leg, start }),
            CoreInput::Replaced { attempt, result } => self.call.handle(now, CallInput::Replaced { attempt, result }),
            CoreInput::TakeOver { machine, takeover } => {
                let id = machine.id();
                self.legs.with(|legs| legs.insert(id, machine));
                // The endpoint routes the leg here from now on.
                self.outputs.push_back(CoreOutput::LegUp(id));
                self.call.handle(now, CallInput::TakeOver(takeover));
            }
            CoreInput::TransferRoute { attempt, result } => {
                self.call.handle(now, CallInput::TransferRoute { attempt, result })
            }
            CoreInput::Timeout => {
                self.call.handle(now, CallInput::Timeout);
                let (events, outputs) = (&mut self.events, &mut self.outputs);
                self.legs.with(|legs| {
                    for leg in legs.values_mut() {
                        if leg.poll_timeout().is_some_and(|at| at <= now) {
                            feed(leg, now, Some(LegInput::Timeout), events, outputs);
                        }
                    }
                });
            }
        }
        self.drain(now);
    }

    pub fn poll_output(&mut self) -> Option<CoreOutput> {
        self.outputs.pop_front()
    }

    /// The earliest timeout among the call and its legs.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let legs = self.legs.peek(|legs| legs.values().filter_map(|leg| leg.poll_timeout()).min());
        match (self.call.poll_timeout(), legs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn call(&self) -> &Call {
        &self.call
    }

    /// See [`Call::reserve_replacement`].
    pub fn reserve_replacement(&mut self, now: Timestamp, leg: LegId, transferor: &str) -> Option<u64> {
        self.call.reserve_replacement(now, leg, transferor)
    }

    pub fn legs(&self) -> &L {
        &self.legs
    }

    pub fn legs_mut(&mut self) -> &mut L {
        &mut self.legs
    }

    /// Feeds one leg; what it tells the call waits in `events` for [`drain`](Self::drain).
    fn feed_leg(&mut self, now: Timestamp, leg: LegId, input: LegInput) {
        let (events, outputs) = (&mut self.events, &mut self.outputs);
        self.legs.with(|legs| {
            if let Some(machine) = legs.get_mut(&leg) {
                feed(machine, now, Some(input), events, outputs);
            }
        });
    }

    /// Runs the call machine and its legs until neither has anything left to say.
    fn drain(&mut self, now: Timestamp) {
        loop {
            while let Some(out) = self.call.poll_output() {
                match out {
                    CallOutput::StartLeg(mut leg) => {
                        let id = leg.id();
                        feed(&mut leg, now, None, &mut self.events, &mut self.outputs);
                        self.legs.with(|legs| legs.insert(id, leg));
                        self.outputs.push_back(CoreOutput::LegUp(id));
                    }
                    CallOutput::ToLeg { leg, command } => self.feed_leg(now, leg, LegInput::Command(command)),
                    CallOutput::StopLeg { leg } => {
                        if self.legs.with(|legs| legs.remove(&leg)).is_some() {
                            self.outputs.push_back(CoreOutput::LegDown(leg));
                        }
                    }
                    // Never in the table: the endpoint routed it all the same.
                    CallOutput::ForkGone { leg } => self.outputs.push_back(CoreOutput::LegDown(leg)),
                    CallOutput::ConfigureMedia { side, peer } => {
                        self.outputs.push_back(CoreOutput::ConfigureMedia { side, peer })
                    }
                    CallOutput::Record(cdr) => self.outputs.push_back(CoreOutput::Record(cdr)),
                    CallOutput::MediaKeys { side, keys } => {
                        self.outputs.push_back(CoreOutput::MediaKeys { side, keys })
                    }
                    CallOutput::Notice { side, message } => {
                        self.outputs.push_back(CoreOutput::Notice { side, message })
                    }
                    CallOutput::Push { leg, binding, caller, callee } => {
                        self.outputs.push_back(CoreOutput::Push { leg, binding, caller, callee })
                    }
                    CallOutput::Transfer { attempt, number, transferee, secure } => {
                        self.outputs.push_back(CoreOutput::Transfer { attempt, number, transferee, secure })
                    }
                    CallOutput::Segment(cdr) => self.outputs.push_back(CoreOutput::Segment(cdr)),
                    CallOutput::Park { attempt, orbit } => self.outputs.push_back(CoreOutput::Park { attempt, orbit }),
                    CallOutput::Unparked => self.outputs.push_back(CoreOutput::Unparked),
                    CallOutput::Replace { attempt, replaces, transferor } => {
                        self.outputs.push_back(CoreOutput::Replace { attempt, replaces, transferor })
                    }
                    CallOutput::HandOver { leg, handover } => {
                        if let Some(machine) = self.legs.with(|legs| legs.remove(&leg)) {
                            self.outputs.push_back(CoreOutput::HandOver { machine, takeover: handover });
                        }
                    }
                    CallOutput::Over => self.outputs.push_back(CoreOutput::Over),
                }
            }
            let Some((leg, event)) = self.events.pop_front() else { break };
            if self.bugs.lost_leg_event()
                && self.call.id() % 8 == 3
                && matches!(event, LegEvent::Bye | LegEvent::Finished)
            {
                // Injected bug: for one call in eight the loop-back loses a leg's hang-up.
                continue;
            }
            self.call.handle(now, CallInput::Leg { leg, event });
        }
    }
}

/// Feeds `input` (if any) to one leg and queues its SIP; its events go to `events`.
pub fn feed(
    leg: &mut Leg,
    now: Timestamp,
    input: Option<LegInput>,
    events: &mut VecDeque<(LegId, LegEvent)>,
    outputs: &mut VecDeque<CoreOutput>,
) {
    if let Some(input) = input {
        leg.handle(now, input);
    }
    let id = leg.id();
    while let Some(out) = leg.poll_output() {
        match out {
            LegOutput::Sip(out) => outputs.push_back(CoreOutput::Sip(id, out)),
            LegOutput::Event(event) => events.push_back((id, event)),
        }
    }
}

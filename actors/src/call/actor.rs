//! The ractor shells of calls.
//!
//! - [`CallActor`]: one per call, around a [`CallCore`] — the call machine and the [`Leg`]
//!   machines of its legs (no actor per leg: a leg's SIP comes to the call's actor,
//!   [`CallMsg::Sip`], its events go straight into the call machine, its SIP out through the
//!   [`SipPort`]). The simulator drives the same core. It owns
//!   its media session (a call that ends or dies takes its media with it, and the ports go
//!   back to the pool); a media session that fails ends the call (BYE both sides, `failed`
//!   CDR). One timer wakes it for the earliest of the call's and its legs' timeouts.
//! - [`CallsActor`]: starts calls, lists them for the API, and notices a call actor that failed:
//!   its legs are handed to an [`OrphanLegs`] actor that hangs them up, and a CDR says the call
//!   failed.
//!
//! What happens when an actor dies (docs/ARCHITECTURE.md, "Calls: actors and who supervises
//! whom"):
//!
//! - A call's leg machines live in a table shared with the calls actor's [`CallLedger`]
//!   ([`CallLegs`]), so they outlive the call's actor. A call actor that dies (panics, or is
//!   killed with the calls actor) leaves them there; the calls actor (or the one restarted
//!   after it) takes them out and starts one [`OrphanLegs`] actor for them: each leg hangs up
//!   however far its dialog got — BYE, CANCEL, or 500 to an unanswered INVITE — and is
//!   reported down to the endpoint when its dialog is over (at most [`ENDING_BOUND`]). So the
//!   phones hear a BYE whichever actor above the legs failed. That actor exists only for a
//!   call whose actor failed.
//! - The CDR is written exactly once, by whichever of these gets there first (a shared flag per
//!   call): the call actor as the call ends, the calls actor when the call actor failed
//!   (`failed`, "call failed"), or a restarted calls actor for the calls its failed predecessor
//!   left in the [`CallLedger`] (`failed`, "calls actor restarted").
//! - The endpoint restarted (its transactions are gone): the calls actor tells every call,
//!   which re-announces its legs to the new endpoint ([`SipPort::adopt`]) and ends with BYE both
//!   sides and a `failed` CDR ("SIP endpoint restarted").

use super::b2bua::{CallConfig, CallSetup, RoomAnswer, SrtpSetup};
use super::core::{CallCore, CoreInput, CoreOutput, LegTable, Legs, feed};
use super::leg::{Leg, LegCommand, LegEvent, LegInput, SipIn, SipOut};
use super::{CallIds, CallStart, LegId};
use crate::Timestamp;
use crate::cdr::{ActiveCall, Cdr, CdrStore, Disposition, HangupSide, MediaCounters};
use crate::conference::actor::{ConferencesMsg, Refused, Seat, SeatEvent};
use crate::media::actor::{MediaArgs, MediaEvent, MediaSession};
use crate::media::pool::PortPool;
use crate::media::relay::RelayConfig;
use crate::media::relay::{PeerMedia, Side, SideStats};
use crate::media::srtp::KEY_SALT_BYTES;
use crate::shell::{Control, WakeTimer};
use crate::store::StoreError;
use crate::time::Clock;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rand::TryRngCore as _;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use super::b2bua::ENDING_BOUND;

/// How the calls reach the SIP endpoint. Must not block.
pub trait SipPort: Send + Sync + 'static {
    fn send(&self, leg: LegId, out: SipOut);
    /// The leg is running in this call's actor; route its SIP there ([`CallMsg::Sip`]).
    fn leg_up(&self, leg: LegId, call: ActorRef<CallMsg>);
    /// The leg is gone.
    fn leg_down(&self, leg: LegId);
    /// The leg is gone because its call could not start for want of capacity: its INVITE, if
    /// unanswered, gets 503 with Retry-After rather than 500.
    fn refused(&self, leg: LegId) {
        self.leg_down(leg);
    }
    /// The leg is running in this actor (its call's, or the [`OrphanLegs`] hanging it up), but
    /// the endpoint may not know it (it was restarted, or knew the leg's dead call actor):
    /// learn it again, so the leg can end its dialog through it.
    fn adopt(&self, leg: LegId, call: ActorRef<CallMsg>);
    /// The call these legs belonged to is gone: those that never came up are down; the others
    /// are being hung up and get `leg_down` when done.
    fn call_lost(&self, legs: &[LegId]);
}

/// How long the API waits for one call's snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_millis(500);

/// The leg machines of one call, shared between its actor and the calls actor's ledger so that
/// they outlive an actor that fails (see the module doc). Only the call's actor touches them
/// while it runs; each use is one short step that never awaits.
#[derive(Clone, Default)]
pub struct CallLegs(Arc<Mutex<Legs>>);

impl CallLegs {
    fn lock(&self) -> MutexGuard<'_, Legs> {
        // A panic inside a leg machine leaves it as it was: hanging it up is still the best try.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LegTable for CallLegs {
    fn with<R>(&mut self, f: impl FnOnce(&mut Legs) -> R) -> R {
        f(&mut self.lock())
    }

    fn peek<R>(&self, f: impl FnOnce(&Legs) -> R) -> R {
        f(&self.lock())
    }
}

/// Feeds `input` (if any) to one leg outside a call (an orphan hanging up) and sends its SIP
/// out; its events go to `events`.
fn feed_orphan(
    leg: &mut Leg,
    now: Timestamp,
    input: Option<LegInput>,
    sip: &dyn SipPort,
    events: &mut VecDeque<(LegId, LegEvent)>,
) {
    let mut outputs = VecDeque::new();
    feed(leg, now, input, events, &mut outputs);
    for out in outputs {
        if let CoreOutput::Sip(leg, out) = out {
            sip.send(leg, out);
        }
    }
}

/// The earliest timeout among `legs`.
fn legs_timeout(legs: &Legs) -> Option<Timestamp> {
    legs.values().filter_map(|leg| leg.poll_timeout()).min()
}

pub enum CallMsg {
    /// SIP from the endpoint for one of the call's legs.
    Sip {
        leg: LegId,
        input: Box<SipIn>,
    },
    Media(MediaEvent),
    /// From the conference room that is this call's far end.
    Seat(SeatEvent),
    /// From push dispatch: a pushed phone registered, or its push was refused.
    Push(super::wake::WakeEvent),
    Snapshot(RpcReplyPort<ActiveCall>),
    Wake,
    /// The endpoint was restarted: re-announce the legs to the new one and end the call.
    EndpointLost,
    Control(Control),
    /// Test hook: the call's media session panics.
    PanicMedia,
    /// A phone dialled the pickup of this call's callee: taken if the call still rings (`Ok`),
    /// else handed back.
    PickUp {
        start: Box<CallStart>,
        reply: RpcReplyPort<Result<(), Box<CallStart>>>,
    },
    /// The calls actor's answer to `CoreOutput::Replace`: the call that reserved itself (and
    /// the id of the record the joined call goes on under), or the refusal.
    Replaced {
        attempt: u64,
        result: Result<(u64, ActorRef<CallMsg>), (u16, String)>,
    },
    /// Another call's attended transfer asks to replace this call's `leg` (see
    /// `Call::reserve_replacement`).
    Reserve {
        leg: LegId,
        transferor: String,
        reply: RpcReplyPort<Option<u64>>,
    },
    /// The transferee of an attended transfer, handed over by its call.
    TakeOver {
        machine: Box<Leg>,
        takeover: Box<super::b2bua::TakeOver>,
    },
    /// The calls actor's answer to a park (`CoreOutput::Park`).
    Parked {
        attempt: u64,
        ok: bool,
    },
    /// A phone dialled the orbit `orbit`: taken if this call is parked there (`Ok`), else
    /// handed back.
    Retrieve {
        orbit: String,
        start: Box<CallStart>,
        reply: RpcReplyPort<Result<(), Box<CallStart>>>,
    },
    /// An INVITE with `Replaces` naming this call's `leg`: taken if the call allows it
    /// (`Call::can_replace`: `Ok`), else handed back.
    ReplaceLeg {
        leg: LegId,
        start: Box<CallStart>,
        reply: RpcReplyPort<Result<(), Box<CallStart>>>,
    },
    /// The answer to a transfer's lookup (`CoreOutput::Transfer`).
    TransferRoute {
        attempt: u64,
        result: super::b2bua::TransferLookup,
    },
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for CallMsg {}

pub struct OrphanArgs {
    pub legs: Legs,
    pub clock: Arc<dyn Clock>,
    pub sip: Arc<dyn SipPort>,
}

pub struct OrphanState {
    legs: Legs,
    clock: Arc<dyn Clock>,
    sip: Arc<dyn SipPort>,
    timer: WakeTimer,
    events: VecDeque<(LegId, LegEvent)>,
}

/// The legs of a call whose actor failed: each hangs up however far its dialog got, and is
/// reported down when it is over; the actor stops when none is left, or at [`ENDING_BOUND`].
/// Linked to nothing, so a calls actor that fails next does not take it along.
pub struct OrphanLegs;

impl Actor for OrphanLegs {
    type Msg = CallMsg;
    type State = OrphanState;
    type Arguments = OrphanArgs;

    async fn pre_start(&self, me: ActorRef<CallMsg>, args: OrphanArgs) -> Result<OrphanState, ActorProcessingErr> {
        for leg in args.legs.keys() {
            // The endpoint still routes the leg to the dead call actor (or not at all).
            args.sip.adopt(*leg, me.clone());
        }
        Ok(OrphanState {
            legs: args.legs,
            clock: args.clock,
            sip: args.sip,
            timer: WakeTimer::default(),
            events: VecDeque::new(),
        })
    }

    async fn post_start(&self, me: ActorRef<CallMsg>, s: &mut OrphanState) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        for leg in s.legs.values_mut() {
            tracing::warn!(leg = %leg.id(), "the call's actor is gone: its leg hangs up");
            metrics::counter!("pbx_call_legs_orphaned_total").increment(1);
            feed_orphan(leg, now, Some(LegInput::Command(LegCommand::Hangup)), &*s.sip, &mut s.events);
        }
        me.exit_after(ENDING_BOUND);
        s.settle(&me);
        Ok(())
    }

    async fn handle(&self, me: ActorRef<CallMsg>, msg: CallMsg, s: &mut OrphanState) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        match msg {
            CallMsg::Sip { leg, input } => {
                if let Some(machine) = s.legs.get_mut(&leg) {
                    feed_orphan(machine, now, Some(LegInput::Sip(*input)), &*s.sip, &mut s.events);
                }
            }
            CallMsg::Wake => {
                s.timer.fired();
                for leg in s.legs.values_mut() {
                    if leg.poll_timeout().is_some_and(|at| at <= now) {
                        feed_orphan(leg, now, Some(LegInput::Timeout), &*s.sip, &mut s.events);
                    }
                }
            }
            // Not a call any more: nothing else concerns it.
            _ => {}
        }
        s.settle(&me);
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<CallMsg>, s: &mut OrphanState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        for leg in s.legs.keys() {
            s.sip.leg_down(*leg);
        }
        Ok(())
    }
}

impl OrphanState {
    /// Legs whose dialog is over go down; the actor goes with the last one.
    fn settle(&mut self, me: &ActorRef<CallMsg>) {
        while let Some((leg, event)) = self.events.pop_front() {
            if event == LegEvent::Finished && self.legs.remove(&leg).is_some() {
                self.sip.leg_down(leg);
            }
        }
        if self.legs.is_empty() {
            me.stop(None);
            return;
        }
        self.timer.arm(me, self.clock.now(), legs_timeout(&self.legs), || CallMsg::Wake);
    }
}

/// Hands the legs left in `legs` (a call whose actor is gone without stopping them) to an
/// [`OrphanLegs`] actor.
async fn orphan(context: &CallContext, legs: &CallLegs) {
    let legs = std::mem::take(&mut *legs.lock());
    if legs.is_empty() {
        return;
    }
    let ids: Vec<LegId> = legs.keys().copied().collect();
    let args = OrphanArgs { legs, clock: context.clock.clone(), sip: context.sip.clone() };
    if let Err(error) = Box::pin(Actor::spawn(None, OrphanLegs, args)).await {
        tracing::error!(%error, "the legs of a failed call could not be hung up");
        for leg in ids {
            context.sip.leg_down(leg);
        }
    }
}

/// What every call of a node shares.
#[derive(Clone)]
pub struct CallContext {
    pub config: CallConfig,
    pub clock: Arc<dyn Clock>,
    pub sip: Arc<dyn SipPort>,
    pub cdrs: Arc<dyn CdrStore>,
    pub ports: Arc<Mutex<PortPool>>,
    /// The address RTP sockets bind to and SDP names.
    pub media_ip: IpAddr,
    pub relay: RelayConfig,
    /// The node's conference rooms (empty until they start: a room's number is then unknown).
    pub conferences: crate::shell::Current<ConferencesMsg>,
    /// Each extension's media encryption.
    pub media_policy: Arc<super::MediaPolicy>,
    /// Push dispatch (RFC 8599); `None`: no push configured.
    pub push: Option<Arc<dyn super::wake::PushPort>>,
    /// Where a transfer's target is looked up (the registrar); `None`: transfers are refused.
    pub transfers: Option<Arc<dyn TransferPort>>,
}

/// How calls look a transfer's target up: the registrar's `transfer_route`. Must not block;
/// `reply` hears the answer once.
pub trait TransferPort: Send + Sync + 'static {
    fn route(&self, transferee: String, number: String, reply: TransferReply);
}

/// Hears a transfer lookup's answer once: the route, or the refusal's code and reason phrase.
pub type TransferReply = Box<dyn FnOnce(Result<crate::registrar::Route, (u16, String)>) + Send>;

/// A fresh leg id from the OS's CSPRNG (module `call`, [`LegId`]): a transfer's legs, which no
/// endpoint drew.
fn fresh_leg() -> LegId {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("the OS random source");
    LegId(u128::from_le_bytes(bytes))
}

/// The caller's and callee's SRTP policy and fresh key bytes from the OS for pbx's keys.
fn srtp_setup(context: &CallContext, start: &CallStart) -> SrtpSetup {
    let policy = [context.media_policy.of(&start.route.caller), context.media_policy.of(&start.route.target)];
    let mut keys = [[0u8; KEY_SALT_BYTES]; 2];
    for key in &mut keys {
        rand::rngs::OsRng.try_fill_bytes(key).expect("the OS random source");
    }
    SrtpSetup { policy, keys }
}

/// How long a call to a room waits for its seat.
const ADMIT_WAIT: Duration = Duration::from_secs(5);

/// What carries a call's media: pbx's relay between the two phones, or a seat in a
/// conference room (the room's mixer is the far end).
enum CallMedia {
    Relay(MediaSession),
    /// `None` once the call has left the room (it ended) or was never let in.
    Room(Option<Seat>),
}

impl CallMedia {
    fn configure(&self, side: Side, peer: PeerMedia) {
        match self {
            CallMedia::Relay(media) => media.configure(side, peer),
            CallMedia::Room(Some(seat)) => seat.configure(peer),
            CallMedia::Room(None) => {}
        }
    }

    fn stats(&self) -> [SideStats; 2] {
        match self {
            CallMedia::Relay(media) => media.stats(),
            CallMedia::Room(_) => Default::default(),
        }
    }
}

pub struct CallArgs {
    pub start: CallStart,
    pub id: u64,
    pub seed: u64,
    pub context: CallContext,
    /// Whether the call's CDR is written (or being written): shared with the calls actor, so
    /// that whoever writes it, writes it once.
    pub recorded: Arc<AtomicBool>,
    /// Where the call keeps its leg machines: shared with the calls actor, which hangs them up
    /// should this actor fail.
    pub legs: CallLegs,
    /// The calls actor (it finds the other call of an attended transfer).
    pub calls: Option<ActorRef<CallsMsg>>,
}

pub struct CallState {
    /// The call machine and its legs' (kept in the [`CallLegs`] shared with the ledger).
    core: CallCore<CallLegs>,
    context: CallContext,
    media: CallMedia,
    timer: WakeTimer,
    recorded: Arc<AtomicBool>,
    /// The media counters already written in the records of a transferred call's earlier parts.
    counted: [MediaCounters; 2],
    calls: Option<ActorRef<CallsMsg>>,
    /// The call that reserved itself for this call's attended transfer, until the handover.
    join: Option<ActorRef<CallMsg>>,
    /// Legs handed to another call: their SIP that still comes here goes on there.
    handed: Vec<(LegId, ActorRef<CallMsg>)>,
}

pub struct CallActor;

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallState;
    type Arguments = CallArgs;

    async fn pre_start(&self, me: ActorRef<CallMsg>, args: CallArgs) -> Result<CallState, ActorProcessingErr> {
        let context = args.context;
        if args.start.route.room {
            let (media, local, answer) = admit(&me, &context, &args.start).await;
            let srtp = srtp_setup(&context, &args.start);
            let setup = CallSetup {
                id: args.id,
                start: args.start,
                media: [local; 2],
                seed: args.seed,
                room: Some(answer),
                srtp,
                push_wait: None,
            };
            let core = CallCore::new(context.clock.now(), context.config, setup, args.legs);
            return Ok(CallState::new(core, context, media, args.recorded, args.calls));
        }
        let events = {
            let me = me.clone();
            Arc::new(move |event: MediaEvent| {
                let _ = me.cast(CallMsg::Media(event));
            })
        };
        let media_args = MediaArgs {
            pool: context.ports.clone(),
            bind: context.media_ip,
            clock: context.clock.clone(),
            config: context.relay,
            seed: args.seed,
            events,
        };
        let media = MediaSession::start(media_args).await?;
        let srtp = srtp_setup(&context, &args.start);
        let setup = CallSetup {
            id: args.id,
            start: args.start,
            media: media.local(),
            seed: args.seed,
            room: None,
            srtp,
            push_wait: context.push.as_ref().and_then(|p| p.wait()),
        };
        let core = CallCore::new(context.clock.now(), context.config, setup, args.legs);
        let media = CallMedia::Relay(media);
        Ok(CallState::new(core, context, media, args.recorded, args.calls))
    }

    async fn post_start(&self, me: ActorRef<CallMsg>, s: &mut CallState) -> Result<(), ActorProcessingErr> {
        s.drain(&me).await;
        Ok(())
    }

    async fn handle(&self, me: ActorRef<CallMsg>, msg: CallMsg, s: &mut CallState) -> Result<(), ActorProcessingErr> {
        let now = s.context.clock.now();
        match msg {
            CallMsg::Sip { leg, input } => match s.handed.iter().find(|(handed, _)| *handed == leg) {
                // Routed here before the call that took the leg announced it.
                Some((_, to)) => {
                    let _ = to.cast(CallMsg::Sip { leg, input });
                }
                None => s.core.handle(now, CoreInput::Sip(leg, *input)),
            },
            CallMsg::Replaced { attempt, result } => {
                let result = result.map(|(next, call)| {
                    s.join = Some(call);
                    next
                });
                s.core.handle(now, CoreInput::Replaced { attempt, result });
            }
            CallMsg::Parked { attempt, ok } => s.core.handle(now, CoreInput::Parked { attempt, ok }),
            CallMsg::Retrieve { orbit, start, reply } => {
                if s.core.call().can_retrieve(&orbit) {
                    tracing::info!(call = s.core.call().id(), %orbit, by = %start.route.caller, "parked call retrieved");
                    s.core.handle(now, CoreInput::Retrieve(start));
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(start));
                }
            }
            CallMsg::ReplaceLeg { leg, start, reply } => {
                if s.core.call().can_replace(leg, &start.route.caller) {
                    tracing::info!(call = s.core.call().id(), by = %start.route.caller, "INVITE with Replaces taken");
                    s.core.handle(now, CoreInput::ReplaceLeg { leg, start });
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(start));
                }
            }
            CallMsg::Reserve { leg, transferor, reply } => {
                let _ = reply.send(s.core.reserve_replacement(now, leg, &transferor));
            }
            CallMsg::TakeOver { machine, takeover } => {
                tracing::info!(call = s.core.call().id(), leg = %machine.id(), "attended transfer: transferee joins");
                s.core.handle(now, CoreInput::TakeOver { machine, takeover });
            }
            CallMsg::Media(MediaEvent::Inactive { side }) => s.core.handle(now, CoreInput::MediaInactive { side }),
            CallMsg::Media(MediaEvent::Failed) => {
                tracing::error!(call = s.core.call().id(), "media session failed: the call ends");
                metrics::counter!("pbx_call_actor_failures_total", "actor" => "media").increment(1);
                s.core.handle(now, CoreInput::Fail { reason: "media session failed".into() });
            }
            CallMsg::Seat(SeatEvent::Hangup) => s.core.handle(now, CoreInput::Hangup),
            CallMsg::Push(super::wake::WakeEvent::Woken { leg, binding }) => {
                s.core.handle(now, CoreInput::Woken { leg, binding })
            }
            CallMsg::Push(super::wake::WakeEvent::Failed { leg }) => s.core.handle(now, CoreInput::PushFailed { leg }),
            CallMsg::Seat(SeatEvent::Inactive) => s.core.handle(now, CoreInput::MediaInactive { side: Side::A }),
            CallMsg::Snapshot(reply) => {
                let _ = reply.send(s.snapshot());
            }
            CallMsg::Wake => {
                s.timer.fired();
                s.core.handle(now, CoreInput::Timeout);
            }
            CallMsg::EndpointLost => {
                s.core.legs().peek(|legs| {
                    for leg in legs.keys() {
                        s.context.sip.adopt(*leg, me.clone());
                    }
                });
                s.core.handle(now, CoreInput::Fail { reason: "SIP endpoint restarted".into() });
            }
            CallMsg::PickUp { start, reply } => {
                if s.core.call().can_be_picked_up() {
                    tracing::info!(call = s.core.call().id(), by = %start.route.caller, "call picked up");
                    s.core.handle(now, CoreInput::PickUp(start));
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(start));
                }
            }
            CallMsg::TransferRoute { attempt, result } => {
                s.core.handle(now, CoreInput::TransferRoute { attempt, result })
            }
            CallMsg::Control(control) => control.obey("call"),
            CallMsg::PanicMedia => {
                if let CallMedia::Relay(media) = &s.media {
                    media.panic();
                }
            }
        }
        s.drain(&me).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<CallMsg>,
        _event: SupervisionEvent,
        _s: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        // A call supervises no actor (its legs are machines, its media a task): ractor's default,
        // stopping on any event, must not apply.
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<CallMsg>, s: &mut CallState) -> Result<(), ActorProcessingErr> {
        // Not run when the actor failed or was killed: then the calls actor hangs the legs up.
        s.timer.cancel();
        let legs = s.core.legs_mut().with(std::mem::take);
        for leg in legs.into_keys() {
            s.context.sip.leg_down(leg);
        }
        Ok(())
    }
}

impl CallState {
    fn new(
        core: CallCore<CallLegs>,
        context: CallContext,
        media: CallMedia,
        recorded: Arc<AtomicBool>,
        calls: Option<ActorRef<CallsMsg>>,
    ) -> CallState {
        let (timer, counted, join, handed) = (WakeTimer::default(), Default::default(), None, Vec::new());
        CallState { core, context, media, timer, recorded, counted, calls, join, handed }
    }

    /// Takes what the call said out of its core (SIP, legs up and down, media, the CDR), then
    /// arms the timer for the earliest timeout among the call and its legs.
    async fn drain(&mut self, me: &ActorRef<CallMsg>) {
        while let Some(out) = self.core.poll_output() {
            match out {
                CoreOutput::Sip(leg, out) => self.context.sip.send(leg, out),
                CoreOutput::LegUp(leg) => self.context.sip.leg_up(leg, me.clone()),
                CoreOutput::LegDown(leg) => self.context.sip.leg_down(leg),
                CoreOutput::ConfigureMedia { side, peer } => self.media.configure(side, peer),
                CoreOutput::MediaKeys { side, keys } => {
                    if let CallMedia::Relay(media) = &self.media {
                        tracing::debug!(?side, srtp = keys.is_some(), "media keys");
                        media.set_keys(side, keys);
                    }
                }
                CoreOutput::Notice { side, message } => tracing::warn!(?side, "{message}"),
                CoreOutput::Push { leg, binding, caller, callee } => {
                    let Some(push) = &self.context.push else { continue };
                    let request = super::wake::WakeRequest { leg, binding: *binding, caller, callee };
                    let me = me.clone();
                    push.wake(
                        request,
                        Box::new(move |event| {
                            let _ = me.cast(CallMsg::Push(event));
                        }),
                    );
                }
                CoreOutput::Transfer { attempt, number, transferee, secure } => {
                    tracing::info!(call = self.core.call().id(), %number, %transferee, secure, "transfer");
                    let me = me.clone();
                    let answer = move |result| {
                        let _ = me.cast(CallMsg::TransferRoute { attempt, result });
                    };
                    let Some(port) = &self.context.transfers else {
                        answer(Err((403, "Forbidden (transfer is not available)".into())));
                        continue;
                    };
                    let policy = self.context.media_policy.clone();
                    port.route(
                        transferee,
                        number,
                        Box::new(move |result| {
                            // Transfer targets get plain RTP (module `b2bua`, Transfer).
                            let result = result.and_then(|route| match policy.of(&route.target) {
                                super::MediaEncryption::Required => {
                                    Err((488, "Not Acceptable Here (the target requires media encryption)".into()))
                                }
                                _ => {
                                    let legs = route.contacts.iter().map(|_| fresh_leg()).collect();
                                    Ok((Box::new(route), legs))
                                }
                            });
                            answer(result)
                        }),
                    );
                }
                CoreOutput::Park { attempt, orbit } => {
                    tracing::info!(call = self.core.call().id(), %orbit, "park");
                    let ask = CallsMsg::Park { from: me.clone(), attempt, orbit };
                    if self.calls.as_ref().is_none_or(|calls| calls.cast(ask).is_err()) {
                        let _ = me.cast(CallMsg::Parked { attempt, ok: false });
                    }
                }
                CoreOutput::Unparked => {
                    if let Some(calls) = &self.calls {
                        let _ = calls.cast(CallsMsg::Unpark { from: me.get_id() });
                    }
                }
                CoreOutput::Replace { attempt, replaces, transferor } => {
                    let ask = CallsMsg::Replace { from: me.clone(), attempt, replaces, transferor };
                    if self.calls.as_ref().is_none_or(|calls| calls.cast(ask).is_err()) {
                        let refused = Err((403, "Forbidden (attended transfer is not available)".into()));
                        let _ = me.cast(CallMsg::Replaced { attempt, result: refused });
                    }
                }
                CoreOutput::HandOver { machine, takeover } => {
                    let leg = machine.id();
                    let sent = match self.join.take() {
                        Some(join) => match join.cast(CallMsg::TakeOver { machine, takeover }) {
                            Ok(()) => {
                                self.handed.push((leg, join));
                                None
                            }
                            Err(ractor::MessagingErr::SendErr(CallMsg::TakeOver { machine, .. })) => Some(machine),
                            Err(_) => None,
                        },
                        None => Some(machine),
                    };
                    if let Some(machine) = sent {
                        // The other call is gone: the transferee is hung up on.
                        let legs = CallLegs::default();
                        legs.lock().insert(leg, machine);
                        orphan(&self.context, &legs).await;
                    }
                }
                CoreOutput::Segment(cdr) => {
                    let mut cdr = *cdr;
                    let now = self.media_counters();
                    cdr.media = [0, 1].map(|i| now[i].since(self.counted[i]));
                    self.counted = now;
                    record_cdr(&self.context.cdrs, cdr).await;
                }
                CoreOutput::Record(cdr) => {
                    if !self.recorded.swap(true, Ordering::SeqCst) {
                        Box::pin(self.finish(*cdr)).await;
                    }
                }
                CoreOutput::Over => me.stop(None),
            }
        }
        self.timer.arm(me, self.context.clock.now(), self.core.poll_timeout(), || CallMsg::Wake);
    }

    /// The CDR with the relay's counters, stored before the call actor goes.
    async fn finish(&mut self, mut cdr: Cdr) {
        let now = self.media_counters();
        cdr.media = [0, 1].map(|i| now[i].since(self.counted[i]));
        if let CallMedia::Room(seat) = &mut self.media {
            // The call is over for the room too (its legs may still be finishing a BYE).
            seat.take();
        }
        record_cdr(&self.context.cdrs, cdr).await;
    }

    fn media_counters(&self) -> [MediaCounters; 2] {
        self.media.stats().map(MediaCounters::from)
    }

    fn snapshot(&self) -> ActiveCall {
        let machine = self.core.call();
        let record = machine.record();
        ActiveCall {
            id: record.id,
            call_id: record.call_id,
            caller: record.caller,
            callee: record.callee,
            start: record.start,
            answer: record.answer,
            state: machine.state().to_owned(),
            codec_caller: record.codec_caller,
            codec_callee: record.codec_callee,
            media: self.media_counters(),
        }
    }
}

/// A seat in the room the call dialled, or why there is none; the address the call's SDP names.
async fn admit(
    me: &ActorRef<CallMsg>,
    context: &CallContext,
    start: &CallStart,
) -> (CallMedia, std::net::SocketAddr, RoomAnswer) {
    let nowhere = std::net::SocketAddr::new(context.media_ip, 0);
    let Some(conferences) = context.conferences.get() else {
        return (CallMedia::Room(None), nowhere, RoomAnswer::Refused { code: 404, reason: "Not Found".into() });
    };
    let events = {
        let me = me.clone();
        Arc::new(move |event: SeatEvent| {
            let _ = me.cast(CallMsg::Seat(event));
        })
    };
    let answer = conferences
        .call(
            |reply| ConferencesMsg::Admit {
                room: start.route.callee.clone(),
                caller: start.route.caller.clone(),
                source: start.source.ip(),
                events,
                reply,
            },
            Some(ADMIT_WAIT),
        )
        .await;
    let answer = match answer {
        Ok(ractor::rpc::CallResult::Success(answer)) => answer,
        _ => Err(Refused { code: 500, reason: "Conference service did not answer".into() }),
    };
    match answer {
        Ok(seat) => {
            let local = seat.local;
            (CallMedia::Room(Some(seat)), local, RoomAnswer::Admitted)
        }
        Err(Refused { code, reason }) => (CallMedia::Room(None), nowhere, RoomAnswer::Refused { code, reason }),
    }
}

/// Stores a CDR and counts it, returning once it is durable (or storing it failed): queued
/// to the store's writer when it takes it at once, else on a blocking thread.
async fn record_cdr(store: &Arc<dyn CdrStore>, cdr: Cdr) {
    let label = cdr.disposition.name();
    tracing::info!(
        call = cdr.id,
        caller = %cdr.caller,
        callee = %cdr.callee,
        disposition = label,
        hangup = cdr.hangup.map(|h| h.name()).unwrap_or(""),
        duration_s = cdr.duration_s(),
        "call ended"
    );
    let id = cdr.id;
    let (stored, outcome) = tokio::sync::oneshot::channel();
    let result = match store.submit(
        cdr,
        Box::new(move |result| {
            let _ = stored.send(result);
        }),
    ) {
        Ok(()) => {
            outcome.await.unwrap_or_else(|_| Err(StoreError::Stopped("the CDR writer dropped the record".into())))
        }
        Err(refused) => {
            let (cdr, _) = *refused;
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.persist(cdr))
                .await
                .unwrap_or_else(|error| Err(StoreError::Stopped(format!("CDR writer panicked: {error}"))))
        }
    };
    match result {
        Ok(()) => metrics::counter!("pbx_calls_total", "disposition" => label).increment(1),
        Err(error) => tracing::error!(cdr = id, %error, "CDR not stored"),
    }
}

pub enum CallsMsg {
    Start(Box<CallStart>),
    /// A call claims a park orbit: `from` hears [`CallMsg::Parked`] (`false`: the orbit is
    /// taken).
    Park {
        from: ActorRef<CallMsg>,
        attempt: u64,
        orbit: String,
    },
    /// The call left its orbit.
    Unpark {
        from: ractor::ActorId,
    },
    /// A call's attended transfer: find the call holding the dialog `replaces` names (not
    /// `from`'s), have it reserve itself for `transferor`, and answer `from` with
    /// [`CallMsg::Replaced`].
    Replace {
        from: ActorRef<CallMsg>,
        attempt: u64,
        replaces: super::transfer::Replaces,
        transferor: String,
    },
    /// A pickup found no ringing call to take: the picking phone's call starts as a call
    /// with nobody to ring (480, "no call to pick up").
    NothingToPickUp(Box<CallStart>),
    List(RpcReplyPort<Vec<ActiveCall>>),
    /// From the task that started a call actor (started off this actor's loop, so call set-ups
    /// — RTP sockets bound, legs spawned — run in parallel rather than one after the other).
    Started(Box<Started>),
    /// The endpoint was restarted: every call ends (BYE both sides, `failed` CDR).
    EndpointRestarted,
    Control(Control),
    /// Test hook: the oldest call's actor (or, with `media`, its media session) panics.
    /// `false` when no call is in progress.
    PanicCall {
        media: bool,
        reply: RpcReplyPort<bool>,
    },
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for CallsMsg {}

pub struct CallsArgs {
    pub context: CallContext,
    pub seed: u64,
    /// The table of running calls; the same one across restarts of the calls actor.
    pub ledger: CallLedger,
}

/// What the calls actor remembers of a running call: enough for a CDR should its actor fail.
struct Running {
    actor: ActorRef<CallMsg>,
    /// The extension (or group) its phones ring for: what a pickup names.
    target: String,
    /// The park orbit the call waits in, if any: what dialling an orbit names.
    parked: Option<String>,
    legs: Vec<LegId>,
    /// The call's leg machines, to hang up should its actor fail.
    machines: CallLegs,
    cdr: Cdr,
    /// Shared with the call's actor: set by whoever writes the CDR.
    recorded: Arc<AtomicBool>,
}

/// The running calls, by actor id, kept outside the calls actor so that they outlive it: a
/// calls actor that panics takes its call actors with it (they are linked to it), and the one
/// the supervisor starts next finds them here, hangs up their legs and writes their `failed`
/// CDRs (see the module doc).
#[derive(Clone, Default)]
pub struct CallLedger(Arc<Mutex<HashMap<ractor::ActorId, Running>>>);

impl CallLedger {
    fn lock(&self) -> MutexGuard<'_, HashMap<ractor::ActorId, Running>> {
        // Each use is one short step: a panic elsewhere cannot leave the table half-updated.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a call's start went.
pub struct Started {
    /// The call's actor, or why it did not start and whether for want of capacity (no RTP
    /// ports or open files: the caller is told to retry later).
    result: Result<ActorRef<CallMsg>, (String, bool)>,
    legs: Vec<LegId>,
    machines: CallLegs,
    cdr: Cdr,
    recorded: Arc<AtomicBool>,
    target: String,
}

/// How long a call actor may take to say whether it takes a pickup.
const PICKUP_WAIT: Duration = Duration::from_secs(2);

pub struct CallsState {
    context: CallContext,
    ids: CallIds,
    calls: CallLedger,
    /// Calls whose actor ended before their `Started` arrived (supervision events and messages
    /// are not ordered): not to be listed as running.
    ended_early: std::collections::HashSet<ractor::ActorId>,
    /// Calls that could not start since the last log line about it, and when that was.
    refused: u64,
    refused_logged: Option<Timestamp>,
}

/// At most one log line per this interval about calls that could not start.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct CallsActor;

impl Actor for CallsActor {
    type Msg = CallsMsg;
    type State = CallsState;
    type Arguments = CallsArgs;

    async fn pre_start(&self, _me: ActorRef<CallsMsg>, args: CallsArgs) -> Result<CallsState, ActorProcessingErr> {
        // Calls a failed calls actor left: their actors died with it, their legs are still up.
        let left = std::mem::take(&mut *args.ledger.lock());
        if !left.is_empty() {
            tracing::error!(calls = left.len(), "calls actor restarted: the calls in progress end as failed");
        }
        for running in left.into_values() {
            end_failed(&args.context, running, "calls actor restarted").await;
        }
        metrics::gauge!("pbx_calls_active").set(0.0);
        Ok(CallsState {
            context: args.context,
            ids: CallIds::new(args.seed),
            calls: args.ledger,
            ended_early: Default::default(),
            refused: 0,
            refused_logged: None,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<CallsMsg>,
        msg: CallsMsg,
        s: &mut CallsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CallsMsg::Start(start) if start.route.pickup.is_some() && start.route.contacts.is_empty() => {
                s.pick_up(&me, start)
            }
            CallsMsg::Start(start) if start.route.replaces.is_some() && start.route.contacts.is_empty() => {
                s.replace_leg(&me, start)
            }
            CallsMsg::Start(start) if start.route.park.is_some() && start.route.contacts.is_empty() => {
                s.retrieve(&me, start)
            }
            CallsMsg::Park { from, attempt, orbit } => {
                let mut calls = s.calls.lock();
                let free = !calls.values().any(|r| r.parked.as_deref() == Some(orbit.as_str()));
                let ok = free && calls.get_mut(&from.get_id()).map(|r| r.parked = Some(orbit)).is_some();
                let _ = from.cast(CallMsg::Parked { attempt, ok });
            }
            CallsMsg::Unpark { from } => {
                if let Some(running) = s.calls.lock().get_mut(&from) {
                    running.parked = None;
                }
            }
            CallsMsg::Start(start) | CallsMsg::NothingToPickUp(start) => s.start(&me, *start),
            CallsMsg::Started(started) => s.started(*started).await,
            CallsMsg::Replace { from, attempt, replaces, transferor } => s.replace(from, attempt, replaces, transferor),
            CallsMsg::List(reply) => {
                let actors: Vec<ActorRef<CallMsg>> = s.calls.lock().values().map(|r| r.actor.clone()).collect();
                let mut list = Vec::with_capacity(actors.len());
                for actor in actors {
                    if let Ok(ractor::rpc::CallResult::Success(call)) =
                        actor.call(CallMsg::Snapshot, Some(SNAPSHOT_WAIT)).await
                    {
                        list.push(call);
                    }
                }
                list.sort_by_key(|c| c.id);
                let _ = reply.send(list);
            }
            CallsMsg::EndpointRestarted => {
                let calls = s.calls.lock();
                if !calls.is_empty() {
                    tracing::warn!(calls = calls.len(), "SIP endpoint restarted: the calls in progress end");
                }
                for running in calls.values() {
                    let _ = running.actor.cast(CallMsg::EndpointLost);
                }
            }
            CallsMsg::Control(control) => control.obey("calls"),
            CallsMsg::PanicCall { media, reply } => {
                let oldest = s.calls.lock().values().min_by_key(|r| r.cdr.id).map(|r| r.actor.clone());
                if let Some(actor) = &oldest {
                    let _ = actor.cast(if media { CallMsg::PanicMedia } else { CallMsg::Control(Control::Panic) });
                }
                let _ = reply.send(oldest.is_some());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<CallsMsg>,
        event: SupervisionEvent,
        s: &mut CallsState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                let running = s.calls.lock().remove(&cell.get_id());
                match running {
                    // A call that stops takes its legs down first: legs left mean it was killed.
                    Some(running) if !running.machines.lock().is_empty() => {
                        tracing::error!(call = running.cdr.id, "call actor killed: the call ends as failed");
                        end_failed(&s.context, running, "call failed").await;
                    }
                    Some(_) => {}
                    None => {
                        s.ended_early.insert(cell.get_id());
                    }
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let running = s.calls.lock().remove(&cell.get_id());
                match running {
                    Some(running) => {
                        tracing::error!(call = running.cdr.id, %error, "call actor failed: the call ends as failed");
                        metrics::counter!("pbx_call_actor_failures_total", "actor" => "call").increment(1);
                        end_failed(&s.context, running, "call failed").await;
                    }
                    None => {
                        s.ended_early.insert(cell.get_id());
                    }
                }
            }
            _ => {}
        }
        metrics::gauge!("pbx_calls_active").set(s.calls.lock().len() as f64);
        Ok(())
    }
}

/// A call whose actor is gone without having finished it: its legs that came up are hung up
/// ([`OrphanLegs`]), the endpoint forgets those that never did, and the CDR says it failed —
/// unless the call's actor wrote one already.
async fn end_failed(context: &CallContext, running: Running, reason: &str) {
    orphan(context, &running.machines).await;
    context.sip.call_lost(&running.legs);
    if running.recorded.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut cdr = running.cdr;
    cdr.end = context.clock.now();
    cdr.disposition = Disposition::Failed { reason: reason.into() };
    cdr.hangup = Some(HangupSide::Pbx);
    record_cdr(&context.cdrs, cdr).await;
}

impl CallsState {
    /// The call and leg a `Replaces` names (RFC 3891 §3: its Call-ID and both tags, one of
    /// them pbx's), other than `except`'s.
    fn find_dialog(
        &self,
        replaces: &super::transfer::Replaces,
        except: Option<ractor::ActorId>,
    ) -> Option<(ActorRef<CallMsg>, LegId)> {
        self.calls.lock().values().filter(|r| Some(r.actor.get_id()) != except).find_map(|running| {
            let pairs = [(&replaces.to_tag, &replaces.from_tag), (&replaces.from_tag, &replaces.to_tag)];
            pairs.into_iter().find_map(|(ours, theirs)| {
                let leg = LegId::from_tag(ours)?;
                let matches = running.machines.peek(|legs| {
                    legs.get(&leg).is_some_and(|machine| {
                        machine.call_id() == replaces.call_id && machine.remote_tag() == Some(theirs.as_str())
                    })
                });
                matches.then(|| (running.actor.clone(), leg))
            })
        })
    }

    /// A phone dialled a park orbit: the call parked there is asked (off this actor's loop) to
    /// take its INVITE; none → the INVITE starts as a call that answers 480 (`Call::new`).
    fn retrieve(&mut self, me: &ActorRef<CallsMsg>, start: Box<CallStart>) {
        let orbit = start.route.park.clone().unwrap_or_default();
        let parked =
            self.calls.lock().values().find(|r| r.parked.as_deref() == Some(orbit.as_str())).map(|r| r.actor.clone());
        let (me, sip, inviter) = (me.clone(), self.context.sip.clone(), start.a);
        ractor::concurrency::spawn(async move {
            let mut start = start;
            if let Some(call) = parked {
                let asked = call.call(|reply| CallMsg::Retrieve { orbit, start, reply }, Some(PICKUP_WAIT)).await;
                start = match asked {
                    Ok(ractor::rpc::CallResult::Success(Ok(()))) => return,
                    Ok(ractor::rpc::CallResult::Success(Err(back))) => back,
                    _ => return sip.leg_down(inviter),
                };
            }
            let _ = me.cast(CallsMsg::NothingToPickUp(start));
        });
    }

    /// An INVITE with `Replaces` (RFC 3891): the call holding the dialog it names is asked
    /// (off this actor's loop) to take it; not found or not allowed → the INVITE starts as a
    /// call that answers 481 (`Call::new`).
    fn replace_leg(&mut self, me: &ActorRef<CallsMsg>, start: Box<CallStart>) {
        let found = start.route.replaces.as_ref().and_then(|r| self.find_dialog(r, None));
        let (me, sip, inviter) = (me.clone(), self.context.sip.clone(), start.a);
        ractor::concurrency::spawn(async move {
            let mut start = start;
            if let Some((call, leg)) = found {
                let asked = call.call(|reply| CallMsg::ReplaceLeg { leg, start, reply }, Some(PICKUP_WAIT)).await;
                start = match asked {
                    Ok(ractor::rpc::CallResult::Success(Ok(()))) => return,
                    Ok(ractor::rpc::CallResult::Success(Err(back))) => back,
                    _ => return sip.leg_down(inviter),
                };
            }
            let _ = me.cast(CallsMsg::NothingToPickUp(start));
        });
    }

    /// An attended transfer's other call: the one whose leg the `Replaces` names, asked off
    /// this actor's loop to reserve itself; `from` hears the outcome.
    fn replace(
        &mut self,
        from: ActorRef<CallMsg>,
        attempt: u64,
        replaces: super::transfer::Replaces,
        transferor: String,
    ) {
        let found = self.find_dialog(&replaces, Some(from.get_id()));
        ractor::concurrency::spawn(async move {
            let refused = |reason: &str| Err((403, format!("Forbidden ({reason})")));
            let result = match found {
                None => refused("no call to replace"),
                Some((call, leg)) => {
                    let asked = call.call(|reply| CallMsg::Reserve { leg, transferor, reply }, Some(PICKUP_WAIT)).await;
                    match asked {
                        Ok(ractor::rpc::CallResult::Success(Some(next))) => Ok((next, call)),
                        _ => refused("that call cannot be joined"),
                    }
                }
            };
            let _ = from.cast(CallMsg::Replaced { attempt, result });
        });
    }

    /// A directed pickup: the calls ringing its extension are asked in turn (off this actor's
    /// loop) until one takes it; none did → [`CallsMsg::NothingToPickUp`].
    fn pick_up(&mut self, me: &ActorRef<CallsMsg>, start: Box<CallStart>) {
        let number = start.route.pickup.clone().unwrap_or_default();
        let candidates: Vec<ActorRef<CallMsg>> =
            self.calls.lock().values().filter(|r| r.target == number).map(|r| r.actor.clone()).collect();
        let (me, sip, picker) = (me.clone(), self.context.sip.clone(), start.a);
        ractor::concurrency::spawn(async move {
            let mut start = start;
            for call in candidates {
                let asked = call.call(|reply| CallMsg::PickUp { start, reply }, Some(PICKUP_WAIT)).await;
                start = match asked {
                    Ok(ractor::rpc::CallResult::Success(Ok(()))) => return,
                    Ok(ractor::rpc::CallResult::Success(Err(back))) => back,
                    // The call went (or did not answer) with the INVITE: the endpoint answers
                    // it 500 as its leg goes.
                    _ => return sip.leg_down(picker),
                };
            }
            let _ = me.cast(CallsMsg::NothingToPickUp(start));
        });
    }

    fn start(&mut self, me: &ActorRef<CallsMsg>, start: CallStart) {
        let now = self.context.clock.now();
        let (id, seed) = self.ids.next(now);
        let legs = start.legs();
        let cdr = start.cdr(id, now);
        let target = start.route.target.clone();
        tracing::info!(call = id, caller = %start.route.caller, callee = %start.route.callee, contacts = start.forks.len(), "call");
        let recorded = Arc::new(AtomicBool::new(false));
        let machines = CallLegs::default();
        let args = CallArgs {
            start,
            id,
            seed,
            context: self.context.clone(),
            recorded: recorded.clone(),
            legs: machines.clone(),
            calls: Some(me.clone()),
        };
        let me = me.clone();
        ractor::concurrency::spawn(async move {
            let result = Actor::spawn_linked(None, CallActor, args, me.get_cell()).await;
            // The CDR says why the call did not start (the media's error), not how ractor saw it.
            let result = result.map(|(actor, _)| actor).map_err(|e| match e {
                ractor::SpawnErr::StartupFailed(inner) => {
                    let busy = inner.downcast_ref::<crate::media::MediaError>().is_some_and(|m| m.is_capacity());
                    (inner.to_string(), busy)
                }
                other => (other.to_string(), false),
            });
            let _ = me.cast(CallsMsg::Started(Box::new(Started { result, legs, machines, cdr, recorded, target })));
        });
    }

    async fn started(&mut self, started: Started) {
        let Started { result, legs, machines, cdr, recorded, target } = started;
        match result {
            Ok(actor) => {
                if self.ended_early.remove(&actor.get_id()) {
                    // A call that stopped leaves no legs behind; one that failed leaves them up.
                    orphan(&self.context, &machines).await;
                } else {
                    let parked = None;
                    let running = Running { actor, target, parked, legs, machines, cdr, recorded };
                    self.calls.lock().insert(running.actor.get_id(), running);
                }
            }
            Err((error, busy)) => {
                // Out of ports or files: the endpoint answers the INVITE 503 with Retry-After
                // as its legs go; any other failure 500. Logged once per interval: under
                // overload this happens for every call.
                let now = self.context.clock.now();
                self.refused += 1;
                if self.refused_logged.is_none_or(|at| now.saturating_since(at) >= REFUSED_LOG_INTERVAL) {
                    tracing::warn!(%error, busy, refused = self.refused, "call could not start (count since the last such line)");
                    self.refused_logged = Some(now);
                    self.refused = 0;
                }
                metrics::counter!("pbx_calls_refused_total").increment(1);
                for leg in &legs {
                    if busy {
                        self.context.sip.refused(*leg);
                    } else {
                        self.context.sip.leg_down(*leg);
                    }
                }
                // Stored without holding up this actor, which starts every call: nothing waits
                // for this record.
                let cdrs = self.context.cdrs.clone();
                ractor::concurrency::spawn(async move {
                    record_cdr(&cdrs, super::not_started(cdr, now, &error)).await;
                });
            }
        }
        metrics::gauge!("pbx_calls_active").set(self.calls.lock().len() as f64);
    }
}

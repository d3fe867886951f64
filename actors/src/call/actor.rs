//! The ractor shells of calls.
//!
//! - [`LegActor`]: one per leg, around a [`Leg`] machine. SIP goes out through the
//!   [`SipPort`] (the endpoint), events go to its call.
//! - [`CallActor`]: one per call, around a [`Call`] machine; it spawns its legs and its media
//!   session (owned by it: a call that ends or dies takes its media with it, and the ports go
//!   back to the pool). A leg that fails is reported to the machine as lost, so the other side
//!   gets its BYE or final response; a media session that fails ends the call (BYE both sides,
//!   `failed` CDR).
//! - [`CallsActor`]: starts calls, lists them for the API, and notices a call actor that failed:
//!   a CDR says the call failed.
//!
//! What happens when an actor dies (docs/ARCHITECTURE.md, "Calls: actors and who supervises
//! whom"):
//!
//! - Legs are linked to nothing; a leg and its call actor watch each other (ractor monitors).
//!   A call actor that dies (panics, or is killed with the calls actor) leaves its legs
//!   orphaned: each hangs up on its own — BYE, CANCEL, or 500 to an unanswered INVITE — stops
//!   when its dialog is over (at most [`ENDING_BOUND`]) and tells the endpoint it is down. So
//!   the phones hear a BYE whichever actor above the legs failed.
//! - The CDR is written exactly once, by whichever of these gets there first (a shared flag per
//!   call): the call actor as the call ends, the calls actor when the call actor failed
//!   (`failed`, "call failed"), or a restarted calls actor for the calls its failed predecessor
//!   left in the [`CallLedger`] (`failed`, "calls actor restarted").
//! - The endpoint restarted (its transactions are gone): the calls actor tells every call,
//!   which re-announces its legs to the new endpoint ([`SipPort::adopt`]) and ends with BYE both
//!   sides and a `failed` CDR ("SIP endpoint restarted").

use super::b2bua::{Call, CallConfig, CallInput, CallOutput, CallSetup};
use super::leg::{Leg, LegCommand, LegEvent, LegInput, LegOutput, SipIn, SipOut};
use super::{CallIds, CallStart, LegId};
use crate::cdr::{ActiveCall, Cdr, CdrStore, Disposition, HangupSide, MediaCounters};
use crate::media::actor::{MediaArgs, MediaEvent, MediaSession};
use crate::media::pool::PortPool;
use crate::media::relay::RelayConfig;
use crate::shell::{Control, WakeTimer};
use crate::store::StoreError;
use crate::time::Clock;
use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use super::b2bua::ENDING_BOUND;

/// How the legs reach the SIP endpoint. Must not block.
pub trait SipPort: Send + Sync + 'static {
    fn send(&self, leg: LegId, out: SipOut);
    /// The leg's actor is running; route its SIP to it.
    fn leg_up(&self, leg: LegId, actor: ActorRef<LegMsg>);
    /// The leg is gone.
    fn leg_down(&self, leg: LegId);
    /// The leg's actor is running, but the endpoint that knew it was restarted: learn it again
    /// (so the leg can end its dialog through the new endpoint).
    fn adopt(&self, leg: LegId, actor: ActorRef<LegMsg>);
    /// The call these legs belonged to is gone: those whose actor never came up are down; the
    /// others hang up on their own and call `leg_down` when done.
    fn call_lost(&self, legs: &[LegId]);
}

/// How long the API waits for one call's snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_millis(500);

// Moved straight into `handle` and never stored: boxing would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum LegMsg {
    Sip(SipIn),
    Command(LegCommand),
    Wake,
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for LegMsg {}

pub struct LegArgs {
    pub leg: Leg,
    pub clock: Arc<dyn Clock>,
    pub sip: Arc<dyn SipPort>,
    pub call: ActorRef<CallMsg>,
}

pub struct LegState {
    machine: Leg,
    clock: Arc<dyn Clock>,
    sip: Arc<dyn SipPort>,
    call: ActorRef<CallMsg>,
    timer: WakeTimer,
    /// Set once the call's actor is gone without having stopped this leg: the leg has hung up
    /// on its own, stops when its dialog is over (or at [`ENDING_BOUND`]) and then tells the
    /// endpoint it is down.
    orphan: bool,
}

pub struct LegActor;

impl Actor for LegActor {
    type Msg = LegMsg;
    type State = LegState;
    type Arguments = LegArgs;

    async fn pre_start(&self, me: ActorRef<LegMsg>, args: LegArgs) -> Result<LegState, ActorProcessingErr> {
        // Not linked to the call: a call actor that dies must not take its legs with it, or the
        // phones would never hear a BYE. Each watches the other instead.
        args.call.get_cell().monitor(me.get_cell());
        me.get_cell().monitor(args.call.get_cell());
        Ok(LegState {
            machine: args.leg,
            clock: args.clock,
            sip: args.sip,
            call: args.call,
            timer: WakeTimer::default(),
            orphan: false,
        })
    }

    async fn post_start(&self, me: ActorRef<LegMsg>, s: &mut LegState) -> Result<(), ActorProcessingErr> {
        // The call went while this leg was starting: no event about it will come.
        if s.call.get_status() >= ActorStatus::Stopping {
            s.orphaned(&me);
        }
        Ok(())
    }

    async fn handle(&self, me: ActorRef<LegMsg>, msg: LegMsg, s: &mut LegState) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        let input = match msg {
            LegMsg::Sip(sip) => LegInput::Sip(sip),
            LegMsg::Command(command) => LegInput::Command(command),
            LegMsg::Wake => {
                s.timer.fired();
                LegInput::Timeout
            }
        };
        s.machine.handle(now, input);
        s.drain(&me);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<LegMsg>,
        event: SupervisionEvent,
        s: &mut LegState,
    ) -> Result<(), ActorProcessingErr> {
        // Only the call is watched. A call that stopped normally stopped this leg first (a stop
        // is taken before any supervision event), so this is a call that failed or was killed.
        if let SupervisionEvent::ActorTerminated(cell, ..) | SupervisionEvent::ActorFailed(cell, _) = event
            && cell.get_id() == s.call.get_id()
        {
            s.orphaned(&me);
        }
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<LegMsg>, s: &mut LegState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        if s.orphan {
            s.sip.leg_down(s.machine.id());
        }
        Ok(())
    }
}

impl LegState {
    fn drain(&mut self, me: &ActorRef<LegMsg>) {
        let leg = self.machine.id();
        while let Some(out) = self.machine.poll_output() {
            match out {
                LegOutput::Sip(out) => self.sip.send(leg, out),
                LegOutput::Event(LegEvent::Finished) if self.orphan => me.stop(None),
                LegOutput::Event(_) if self.orphan => {}
                LegOutput::Event(event) => {
                    let _ = self.call.cast(CallMsg::Leg { leg, event });
                }
            }
        }
        self.timer.arm(me, self.clock.now(), self.machine.poll_timeout(), || LegMsg::Wake);
    }

    /// The call's actor is gone: hang up however far the dialog got, and go when it is over.
    fn orphaned(&mut self, me: &ActorRef<LegMsg>) {
        if self.orphan {
            return;
        }
        self.orphan = true;
        tracing::warn!(leg = %self.machine.id(), "the call's actor is gone: its leg hangs up on its own");
        metrics::counter!("pbx_call_legs_orphaned_total").increment(1);
        self.machine.handle(self.clock.now(), LegInput::Command(LegCommand::Hangup));
        self.drain(me);
        me.exit_after(ENDING_BOUND);
    }
}

pub enum CallMsg {
    Leg {
        leg: LegId,
        event: LegEvent,
    },
    Media(MediaEvent),
    Snapshot(RpcReplyPort<ActiveCall>),
    Wake,
    /// The endpoint was restarted: re-announce the legs to the new one and end the call.
    EndpointLost,
    Control(Control),
    /// Test hook: the call's media session panics.
    PanicMedia,
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for CallMsg {}

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
}

pub struct CallArgs {
    pub start: CallStart,
    pub id: u64,
    pub seed: u64,
    pub context: CallContext,
    /// Whether the call's CDR is written (or being written): shared with the calls actor, so
    /// that whoever writes it, writes it once.
    pub recorded: Arc<AtomicBool>,
}

pub struct CallState {
    machine: Call,
    context: CallContext,
    legs: HashMap<LegId, ActorRef<LegMsg>>,
    /// Leg actors by actor id, to tell which leg a supervision event is about.
    leg_ids: HashMap<ractor::ActorId, LegId>,
    media: MediaSession,
    timer: WakeTimer,
    recorded: Arc<AtomicBool>,
}

pub struct CallActor;

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallState;
    type Arguments = CallArgs;

    async fn pre_start(&self, me: ActorRef<CallMsg>, args: CallArgs) -> Result<CallState, ActorProcessingErr> {
        let context = args.context;
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
        let setup = CallSetup { id: args.id, start: args.start, media: media.local(), seed: args.seed };
        let machine = Call::new(context.clock.now(), context.config, setup);
        Ok(CallState {
            machine,
            context,
            legs: HashMap::new(),
            leg_ids: HashMap::new(),
            media,
            timer: WakeTimer::default(),
            recorded: args.recorded,
        })
    }

    async fn post_start(&self, me: ActorRef<CallMsg>, s: &mut CallState) -> Result<(), ActorProcessingErr> {
        s.drain(&me).await;
        Ok(())
    }

    async fn handle(&self, me: ActorRef<CallMsg>, msg: CallMsg, s: &mut CallState) -> Result<(), ActorProcessingErr> {
        let now = s.context.clock.now();
        match msg {
            CallMsg::Leg { leg, event } => s.machine.handle(now, CallInput::Leg { leg, event }),
            CallMsg::Media(MediaEvent::Inactive { side }) => s.machine.handle(now, CallInput::MediaInactive { side }),
            CallMsg::Media(MediaEvent::Failed) => {
                tracing::error!(call = s.machine.id(), "media session failed: the call ends");
                metrics::counter!("pbx_call_actor_failures_total", "actor" => "media").increment(1);
                s.machine.handle(now, CallInput::Fail { reason: "media session failed".into() });
            }
            CallMsg::Snapshot(reply) => {
                let _ = reply.send(s.snapshot());
            }
            CallMsg::Wake => {
                s.timer.fired();
                s.machine.handle(now, CallInput::Timeout);
            }
            CallMsg::EndpointLost => {
                for (leg, actor) in &s.legs {
                    s.context.sip.adopt(*leg, actor.clone());
                }
                s.machine.handle(now, CallInput::Fail { reason: "SIP endpoint restarted".into() });
            }
            CallMsg::Control(control) => control.obey("call"),
            CallMsg::PanicMedia => s.media.panic(),
        }
        s.drain(&me).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<CallMsg>,
        event: SupervisionEvent,
        s: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        let now = s.context.clock.now();
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(leg) = s.leg_ids.remove(&cell.get_id()) {
                    tracing::error!(%leg, %error, "call leg failed");
                    metrics::counter!("pbx_call_actor_failures_total", "actor" => "leg").increment(1);
                    s.legs.remove(&leg);
                    s.context.sip.leg_down(leg);
                    s.machine.handle(now, CallInput::LegLost { leg });
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(leg) = s.leg_ids.remove(&cell.get_id()) {
                    // Stopped by us after `StopLeg`, or by someone else: either way it is gone.
                    if s.legs.remove(&leg).is_some() {
                        s.context.sip.leg_down(leg);
                        s.machine.handle(now, CallInput::LegLost { leg });
                    }
                }
            }
            _ => {}
        }
        s.drain(&me).await;
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<CallMsg>, s: &mut CallState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        // Legs are not linked to the call: stopped here, before they could hear that it went.
        for (leg, actor) in s.legs.drain() {
            s.context.sip.leg_down(leg);
            actor.stop(None);
        }
        Ok(())
    }
}

impl CallState {
    async fn drain(&mut self, me: &ActorRef<CallMsg>) {
        while let Some(out) = self.machine.poll_output() {
            match out {
                CallOutput::StartLeg(leg) => {
                    let id = leg.id();
                    let args = LegArgs {
                        leg: *leg,
                        clock: self.context.clock.clone(),
                        sip: self.context.sip.clone(),
                        call: me.clone(),
                    };
                    // Boxed, like `finish` below: the future of a leg's start-up is ~7 KiB, and
                    // inline it would be part of this call's handler future, which ractor keeps
                    // allocated for the whole call.
                    match Box::pin(Actor::spawn(None, LegActor, args)).await {
                        Ok((actor, _)) => {
                            self.context.sip.leg_up(id, actor.clone());
                            self.leg_ids.insert(actor.get_id(), id);
                            self.legs.insert(id, actor);
                        }
                        Err(error) => {
                            tracing::error!(leg = %id, %error, "call leg did not start");
                            self.context.sip.leg_down(id);
                            self.machine.handle(self.context.clock.now(), CallInput::LegLost { leg: id });
                        }
                    }
                }
                CallOutput::ToLeg { leg, command } => {
                    if let Some(actor) = self.legs.get(&leg) {
                        let _ = actor.cast(LegMsg::Command(command));
                    }
                }
                CallOutput::StopLeg { leg } => {
                    if let Some(actor) = self.legs.remove(&leg) {
                        self.context.sip.leg_down(leg);
                        actor.stop(None);
                    }
                }
                CallOutput::ConfigureMedia { side, peer } => self.media.configure(side, peer),
                CallOutput::Record(cdr) => {
                    if !self.recorded.swap(true, Ordering::SeqCst) {
                        Box::pin(self.finish(*cdr)).await;
                    }
                }
                CallOutput::Over => me.stop(None),
            }
        }
        self.timer.arm(me, self.context.clock.now(), self.machine.poll_timeout(), || CallMsg::Wake);
    }

    /// The CDR with the relay's counters, stored before the call actor goes.
    async fn finish(&mut self, mut cdr: Cdr) {
        cdr.media = self.media_counters();
        record_cdr(&self.context.cdrs, cdr).await;
    }

    fn media_counters(&self) -> [MediaCounters; 2] {
        self.media.stats().map(MediaCounters::from)
    }

    fn snapshot(&self) -> ActiveCall {
        let record = self.machine.record();
        ActiveCall {
            id: record.id,
            call_id: record.call_id,
            caller: record.caller,
            callee: record.callee,
            start: record.start,
            answer: record.answer,
            state: self.machine.state().to_owned(),
            codec_caller: record.codec_caller,
            codec_callee: record.codec_callee,
            media: self.media_counters(),
        }
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
    legs: Vec<LegId>,
    cdr: Cdr,
    /// Shared with the call's actor: set by whoever writes the CDR.
    recorded: Arc<AtomicBool>,
}

/// The running calls, by actor id, kept outside the calls actor so that they outlive it: a
/// calls actor that panics takes its call actors with it (they are linked to it), and the one
/// the supervisor starts next finds them here and writes their `failed` CDRs. Their legs are
/// not linked to anything and hang up on their own (see the module doc).
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
    result: Result<ActorRef<CallMsg>, String>,
    legs: Vec<LegId>,
    cdr: Cdr,
    recorded: Arc<AtomicBool>,
}

pub struct CallsState {
    context: CallContext,
    ids: CallIds,
    calls: CallLedger,
    /// Calls whose actor ended before their `Started` arrived (supervision events and messages
    /// are not ordered): not to be listed as running.
    ended_early: std::collections::HashSet<ractor::ActorId>,
}

pub struct CallsActor;

impl Actor for CallsActor {
    type Msg = CallsMsg;
    type State = CallsState;
    type Arguments = CallsArgs;

    async fn pre_start(&self, _me: ActorRef<CallsMsg>, args: CallsArgs) -> Result<CallsState, ActorProcessingErr> {
        // Calls a failed calls actor left: their actors died with it, their legs are hanging up.
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
        })
    }

    async fn handle(
        &self,
        me: ActorRef<CallsMsg>,
        msg: CallsMsg,
        s: &mut CallsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CallsMsg::Start(start) => s.start(&me, *start),
            CallsMsg::Started(started) => s.started(*started).await,
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
            SupervisionEvent::ActorTerminated(cell, _, _) if s.calls.lock().remove(&cell.get_id()).is_none() => {
                s.ended_early.insert(cell.get_id());
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

/// A call whose actor is gone without having finished it: the endpoint forgets its legs that
/// never came up (those that did hang up on their own), and the CDR says it failed — unless
/// the call's actor wrote one already.
async fn end_failed(context: &CallContext, running: Running, reason: &str) {
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
    fn start(&mut self, me: &ActorRef<CallsMsg>, start: CallStart) {
        let now = self.context.clock.now();
        let (id, seed) = self.ids.next(now);
        let legs = start.legs();
        let cdr = start.cdr(id, now);
        tracing::info!(call = id, caller = %start.route.caller, callee = %start.route.callee, contacts = start.forks.len(), "call");
        let recorded = Arc::new(AtomicBool::new(false));
        let args = CallArgs { start, id, seed, context: self.context.clone(), recorded: recorded.clone() };
        let me = me.clone();
        ractor::concurrency::spawn(async move {
            let result = Actor::spawn_linked(None, CallActor, args, me.get_cell()).await;
            // The CDR says why the call did not start (the media's error), not how ractor saw it.
            let result = result.map(|(actor, _)| actor).map_err(|e| match e {
                ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
                other => other.to_string(),
            });
            let _ = me.cast(CallsMsg::Started(Box::new(Started { result, legs, cdr, recorded })));
        });
    }

    async fn started(&mut self, started: Started) {
        let Started { result, legs, cdr, recorded } = started;
        match result {
            Ok(actor) => {
                if !self.ended_early.remove(&actor.get_id()) {
                    self.calls.lock().insert(actor.get_id(), Running { actor, legs, cdr, recorded });
                }
            }
            Err(error) => {
                // No ports, most likely: the endpoint answers the INVITE 500 as its leg goes.
                tracing::warn!(%error, "call could not start");
                metrics::counter!("pbx_calls_refused_total").increment(1);
                for leg in &legs {
                    self.context.sip.leg_down(*leg);
                }
                record_cdr(&self.context.cdrs, super::not_started(cdr, self.context.clock.now(), &error)).await;
            }
        }
        metrics::gauge!("pbx_calls_active").set(self.calls.lock().len() as f64);
    }
}

//! The ractor shells of calls.
//!
//! - [`LegActor`]: one per leg, around a [`Leg`] machine. SIP goes out through the
//!   [`SipPort`] (the endpoint), events go to its call.
//! - [`CallActor`]: one per call, around a [`Call`] machine; it spawns and supervises its legs
//!   and its media session (all linked to it). A leg that fails is reported to the machine as
//!   lost, so the other side gets its BYE or final response; when the call actor itself stops,
//!   ractor stops its children and the media ports go back to the pool.
//! - [`CallsActor`]: starts calls, lists them for the API, and notices a call actor that failed
//!   (its legs are reported down to the endpoint, which answers a pending INVITE, and a CDR
//!   says the call failed).

use super::b2bua::{Call, CallConfig, CallInput, CallOutput, CallSetup};
use super::leg::{Leg, LegCommand, LegEvent, LegInput, LegOutput, SipIn, SipOut};
use super::{CallIds, LegId};
use crate::cdr::{ActiveCall, Cdr, CdrStore, Disposition, HangupSide, MediaCounters};
use crate::endpoint::CallStart;
use crate::media::actor::{MediaArgs, MediaEvent, MediaMsg};
use crate::media::pool::PortPool;
use crate::media::relay::RelayConfig;
use crate::shell::WakeTimer;
use crate::time::Clock;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the legs reach the SIP endpoint. Must not block.
pub trait SipPort: Send + Sync + 'static {
    fn send(&self, leg: LegId, out: SipOut);
    /// The leg's actor is running; route its SIP to it.
    fn leg_up(&self, leg: LegId, actor: ActorRef<LegMsg>);
    /// The leg is gone.
    fn leg_down(&self, leg: LegId);
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
}

pub struct LegActor;

impl Actor for LegActor {
    type Msg = LegMsg;
    type State = LegState;
    type Arguments = LegArgs;

    async fn pre_start(&self, _me: ActorRef<LegMsg>, args: LegArgs) -> Result<LegState, ActorProcessingErr> {
        Ok(LegState {
            machine: args.leg,
            clock: args.clock,
            sip: args.sip,
            call: args.call,
            timer: WakeTimer::default(),
        })
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
        let leg = s.machine.id();
        while let Some(out) = s.machine.poll_output() {
            match out {
                LegOutput::Sip(out) => s.sip.send(leg, out),
                LegOutput::Event(event) => {
                    let _ = s.call.cast(CallMsg::Leg { leg, event });
                }
            }
        }
        s.timer.arm(&me, now, s.machine.poll_timeout(), || LegMsg::Wake);
        Ok(())
    }
}

pub enum CallMsg {
    Leg { leg: LegId, event: LegEvent },
    Media(MediaEvent),
    Snapshot(RpcReplyPort<ActiveCall>),
    Wake,
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
}

pub struct CallState {
    machine: Call,
    context: CallContext,
    legs: HashMap<LegId, ActorRef<LegMsg>>,
    /// Leg actors by actor id, to tell which leg a supervision event is about.
    leg_ids: HashMap<ractor::ActorId, LegId>,
    media: ActorRef<MediaMsg>,
    timer: WakeTimer,
    recorded: bool,
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
        let (media, local) = crate::media::actor::spawn_linked(media_args, me.get_cell()).await?;
        let setup = CallSetup { id: args.id, start: args.start, media: local, seed: args.seed };
        let machine = Call::new(context.clock.now(), context.config, setup);
        Ok(CallState {
            machine,
            context,
            legs: HashMap::new(),
            leg_ids: HashMap::new(),
            media,
            timer: WakeTimer::default(),
            recorded: false,
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
            CallMsg::Snapshot(reply) => {
                let _ = reply.send(s.snapshot().await);
            }
            CallMsg::Wake => {
                s.timer.fired();
                s.machine.handle(now, CallInput::Timeout);
            }
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
                    s.legs.remove(&leg);
                    s.context.sip.leg_down(leg);
                    s.machine.handle(now, CallInput::LegLost { leg });
                } else if cell.get_id() == s.media.get_id() {
                    tracing::error!(%error, "media session failed");
                    s.machine.handle(now, CallInput::MediaInactive { side: crate::media::relay::Side::A });
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
        for leg in s.legs.keys() {
            s.context.sip.leg_down(*leg);
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
                        leg,
                        clock: self.context.clock.clone(),
                        sip: self.context.sip.clone(),
                        call: me.clone(),
                    };
                    match Actor::spawn_linked(None, LegActor, args, me.get_cell()).await {
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
                CallOutput::ConfigureMedia { side, peer } => {
                    let _ = self.media.cast(MediaMsg::Configure { side, peer });
                }
                CallOutput::Record(cdr) => {
                    if !self.recorded {
                        self.recorded = true;
                        self.finish(*cdr).await;
                    }
                }
                CallOutput::Over => me.stop(None),
            }
        }
        self.timer.arm(me, self.context.clock.now(), self.machine.poll_timeout(), || CallMsg::Wake);
    }

    /// The CDR with the relay's counters, stored before the call actor goes.
    async fn finish(&mut self, mut cdr: Cdr) {
        cdr.media = self.media_counters().await;
        record_cdr(&self.context.cdrs, cdr).await;
    }

    async fn media_counters(&self) -> [MediaCounters; 2] {
        match self.media.call(MediaMsg::Stats, Some(SNAPSHOT_WAIT)).await {
            Ok(ractor::rpc::CallResult::Success(stats)) => stats.map(MediaCounters::from),
            _ => Default::default(),
        }
    }

    async fn snapshot(&self) -> ActiveCall {
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
            media: self.media_counters().await,
        }
    }
}

/// Stores a CDR on a blocking thread (it waits for a durable commit) and counts it.
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
    let store = store.clone();
    let id = cdr.id;
    match tokio::task::spawn_blocking(move || store.persist(cdr)).await {
        Ok(Ok(())) => metrics::counter!("pbx_calls_total", "disposition" => label).increment(1),
        Ok(Err(error)) => tracing::error!(cdr = id, %error, "CDR not stored"),
        Err(error) => tracing::error!(cdr = id, %error, "CDR writer panicked"),
    }
}

pub enum CallsMsg {
    Start(Box<CallStart>),
    List(RpcReplyPort<Vec<ActiveCall>>),
    /// From the task that started a call actor (started off this actor's loop, so call set-ups
    /// — RTP sockets bound, legs spawned — run in parallel rather than one after the other).
    Started(Box<Started>),
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for CallsMsg {}

pub struct CallsArgs {
    pub context: CallContext,
    pub seed: u64,
}

/// What the calls actor remembers of a running call: enough for a CDR should its actor fail.
struct Running {
    actor: ActorRef<CallMsg>,
    legs: Vec<LegId>,
    cdr: Cdr,
}

/// How a call's start went.
pub struct Started {
    result: Result<ActorRef<CallMsg>, String>,
    legs: Vec<LegId>,
    cdr: Cdr,
}

pub struct CallsState {
    context: CallContext,
    ids: CallIds,
    calls: HashMap<ractor::ActorId, Running>,
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
        Ok(CallsState {
            context: args.context,
            ids: CallIds::new(args.seed),
            calls: HashMap::new(),
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
                let mut list = Vec::with_capacity(s.calls.len());
                for running in s.calls.values() {
                    if let Ok(ractor::rpc::CallResult::Success(call)) =
                        running.actor.call(CallMsg::Snapshot, Some(SNAPSHOT_WAIT)).await
                    {
                        list.push(call);
                    }
                }
                list.sort_by_key(|c| c.id);
                let _ = reply.send(list);
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
            SupervisionEvent::ActorTerminated(cell, _, _) if s.calls.remove(&cell.get_id()).is_none() => {
                s.ended_early.insert(cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let running = s.calls.remove(&cell.get_id());
                if running.is_none() {
                    s.ended_early.insert(cell.get_id());
                }
                if let Some(running) = running {
                    tracing::error!(call = running.cdr.id, %error, "call failed");
                    for leg in &running.legs {
                        s.context.sip.leg_down(*leg);
                    }
                    let mut cdr = running.cdr;
                    cdr.end = s.context.clock.now();
                    cdr.disposition = Disposition::Failed { reason: "call failed".into() };
                    cdr.hangup = Some(HangupSide::Pbx);
                    record_cdr(&s.context.cdrs, cdr).await;
                }
            }
            _ => {}
        }
        metrics::gauge!("pbx_calls_active").set(s.calls.len() as f64);
        Ok(())
    }
}

impl CallsState {
    fn start(&mut self, me: &ActorRef<CallsMsg>, start: CallStart) {
        let now = self.context.clock.now();
        let (id, seed) = self.ids.next(now);
        let legs: Vec<LegId> = std::iter::once(start.a).chain(start.forks.iter().copied()).collect();
        let cdr = Cdr::starting(id, &start, now);
        tracing::info!(call = id, caller = %start.route.caller, callee = %start.route.callee, contacts = start.forks.len(), "call");
        let args = CallArgs { start, id, seed, context: self.context.clone() };
        let me = me.clone();
        ractor::concurrency::spawn(async move {
            let result = Actor::spawn_linked(None, CallActor, args, me.get_cell()).await;
            let result = result.map(|(actor, _)| actor).map_err(|e| e.to_string());
            let _ = me.cast(CallsMsg::Started(Box::new(Started { result, legs, cdr })));
        });
    }

    async fn started(&mut self, started: Started) {
        let Started { result, legs, cdr } = started;
        match result {
            Ok(actor) => {
                if !self.ended_early.remove(&actor.get_id()) {
                    self.calls.insert(actor.get_id(), Running { actor, legs, cdr });
                }
            }
            Err(error) => {
                // No ports, most likely: the endpoint answers the INVITE 500 as its leg goes.
                tracing::warn!(%error, "call could not start");
                metrics::counter!("pbx_calls_refused_total").increment(1);
                for leg in &legs {
                    self.context.sip.leg_down(*leg);
                }
                let mut cdr = cdr;
                cdr.end = self.context.clock.now();
                cdr.disposition = Disposition::Failed { reason: format!("call did not start: {error}") };
                record_cdr(&self.context.cdrs, cdr).await;
            }
        }
        metrics::gauge!("pbx_calls_active").set(self.calls.len() as f64);
    }
}

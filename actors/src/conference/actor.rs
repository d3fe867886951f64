//! The ractor shells of conference rooms.
//!
//! - [`ConferencesActor`]: one per node. Knows the configured rooms, admits callers (the
//!   licence's `conference` feature and `conference_rooms` limit, then the room's own answer),
//!   starts a [`RoomActor`] when a room's first caller arrives and stops it when its last one
//!   leaves, answers the API, and keeps the metrics. A room that fails hangs up every call in it.
//! - [`RoomActor`]: one per room in use, around a [`RoomCore`] (the room machine, the mixer
//!   and what decides about packets, the sans-IO unit the simulator runs too). Each
//!   participant has its own RTP port pair from the node's pool; a task per participant reads
//!   its socket and hands the datagrams to the room, a ticker wakes it every 20 ms on the
//!   room's clock, and the mixed packets go out from the participant's socket.
//!
//! A participant is a call whose far end is the room: the call's actor asks
//! [`ConferencesMsg::Admit`] for a seat, answers the caller with the seat's address, tells the
//! room where the caller's media is ([`RoomMsg::Peer`]) and leaves when the call ends
//! ([`RoomMsg::Leave`], also sent when its [`Seat`] handle is dropped: a call actor that dies
//! leaves the room). The room tells the call when to hang up ([`SeatEvent`]). Rooms are
//! reached by `ActorRef`, never by pointer: a participant anchored on another node could join
//! through the actor mesh (docs/ARCHITECTURE.md, "Conferences").

pub use super::core::{
    Control, ParticipantView, Participation, Refused, RoomCore, RoomCoreOutput, RoomDecl, RoomView, SeatEvent,
};
use crate::Timestamp;
use crate::licence::{Feature, LicenceView};
use crate::media::mixer::{FRAME_MS, MixerConfig};
use crate::media::pool::PortPool;
use crate::media::relay::PeerMedia;
use crate::time::Clock;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Where ended participations go (the node stores them).
pub trait ParticipationSink: Send + Sync + 'static {
    fn record(&self, participation: Participation);
    /// A caller keyed a wrong PIN three times: count an authentication failure for its source.
    fn auth_failure(&self, source: IpAddr, caller: &str);
}

pub type SeatEvents = Arc<dyn Fn(SeatEvent) + Send + Sync>;

/// A seat in a room, for the call whose far end it is. Dropping it leaves the room.
pub struct Seat {
    pub room: ActorRef<RoomMsg>,
    pub participant: u64,
    /// pbx's RTP address for this participant (what the call's SDP names).
    pub local: SocketAddr,
}

impl Seat {
    pub fn configure(&self, peer: PeerMedia) {
        let _ = self.room.cast(RoomMsg::Peer { participant: self.participant, peer });
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let _ = self.room.cast(RoomMsg::Leave { participant: self.participant });
    }
}

pub enum ConferencesMsg {
    Admit {
        room: String,
        caller: String,
        source: IpAddr,
        events: SeatEvents,
        reply: RpcReplyPort<Result<Seat, Refused>>,
    },
    /// A room's participant left (any reason).
    Left {
        room: String,
        participant: u64,
    },
    List(RpcReplyPort<Vec<RoomView>>),
    /// `None`: no such room, or (for a participant) no such participant.
    Control {
        room: String,
        control: Control,
        reply: RpcReplyPort<Option<bool>>,
    },
    /// The supervisor's ping and the test hook's panic.
    Shell(crate::shell::Control),
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for ConferencesMsg {}

pub struct ConferencesArgs {
    pub rooms: Vec<RoomDecl>,
    pub mixer: MixerConfig,
    pub ports: Arc<Mutex<PortPool>>,
    pub media_ip: IpAddr,
    pub clock: Arc<dyn Clock>,
    /// `None`: no licence service configured, rooms are not gated.
    pub licence: Option<LicenceView>,
    /// No RTP from a participant for this long ends its call (`calls.rtp_timeout_s`).
    pub inactivity: Duration,
    pub sink: Arc<dyn ParticipationSink>,
    pub seed: u64,
}

struct Active {
    actor: ActorRef<RoomMsg>,
    /// Participants admitted and not yet reported left, with their calls' event handles (to
    /// hang them up should the room fail).
    seats: HashMap<u64, SeatEvents>,
}

pub struct ConferencesState {
    decls: BTreeMap<String, RoomDecl>,
    active: BTreeMap<String, Active>,
    args: ConferencesArgs,
    next_participant: u64,
}

/// How long the registry waits for a room's answer.
const ROOM_WAIT: Duration = Duration::from_secs(2);

pub struct ConferencesActor;

impl Actor for ConferencesActor {
    type Msg = ConferencesMsg;
    type State = ConferencesState;
    type Arguments = ConferencesArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        args: ConferencesArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let decls = args.rooms.iter().map(|d| (d.number.clone(), d.clone())).collect();
        let state = ConferencesState { decls, active: BTreeMap::new(), next_participant: 1, args };
        state.gauges();
        Ok(state)
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConferencesMsg::Admit { room, caller, source, events, reply } => {
                let result = s.admit(&me, room, caller, source, events).await;
                let _ = reply.send(result);
            }
            ConferencesMsg::Left { room, participant } => s.left(&room, participant),
            ConferencesMsg::List(reply) => {
                let mut views = Vec::new();
                for decl in s.decls.values() {
                    let view = match s.active.get(&decl.number) {
                        Some(active) => match active.actor.call(RoomMsg::View, Some(ROOM_WAIT)).await {
                            Ok(ractor::rpc::CallResult::Success(view)) => view,
                            _ => RoomView::idle(decl),
                        },
                        None => RoomView::idle(decl),
                    };
                    views.push(view);
                }
                let _ = reply.send(views);
            }
            ConferencesMsg::Control { room, control, reply } => {
                let answer = match (s.decls.contains_key(&room), s.active.get(&room)) {
                    (false, _) => None,
                    (true, Some(active)) => {
                        match active.actor.call(|r| RoomMsg::Control(control, r), Some(ROOM_WAIT)).await {
                            Ok(ractor::rpc::CallResult::Success(done)) => Some(done),
                            _ => Some(false),
                        }
                    }
                    // An idle room has nobody to mute or kick; locking it is moot (an empty
                    // room forgets its lock).
                    (true, None) => Some(false),
                };
                let _ = reply.send(answer);
            }
            ConferencesMsg::Shell(control) => control.obey("conferences"),
        }
        s.gauges();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (id, failed) = match &event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell.get_id(), false),
            SupervisionEvent::ActorFailed(cell, _) => (cell.get_id(), true),
            _ => return Ok(()),
        };
        let Some(number) = s.active.iter().find(|(_, a)| a.actor.get_id() == id).map(|(n, _)| n.clone()) else {
            return Ok(());
        };
        let active = s.active.remove(&number).expect("found above");
        if failed || !active.seats.is_empty() {
            tracing::error!(room = %number, participants = active.seats.len(), "conference room failed: its calls end");
            metrics::counter!("pbx_conference_room_failures_total").increment(1);
            for events in active.seats.values() {
                events(SeatEvent::Hangup);
            }
        }
        s.gauges();
        Ok(())
    }
}

impl ConferencesState {
    fn gauges(&self) {
        metrics::gauge!("pbx_conference_rooms_active").set(self.active.len() as f64);
        let participants: usize = self.active.values().map(|a| a.seats.len()).sum();
        metrics::gauge!("pbx_conference_participants").set(participants as f64);
    }

    async fn admit(
        &mut self,
        me: &ActorRef<ConferencesMsg>,
        room: String,
        caller: String,
        source: IpAddr,
        events: SeatEvents,
    ) -> Result<Seat, Refused> {
        let Some(decl) = self.decls.get(&room).cloned() else {
            return Err(Refused::new(404, "Not Found"));
        };
        if let Some(licence) = &self.args.licence {
            let effective = licence.effective();
            if !effective.has(Feature::Conference) {
                return Err(Refused::new(403, "Licence: conferences not licensed"));
            }
            let rooms = effective.limits.conference_rooms as usize;
            if !self.active.contains_key(&room) && self.active.len() >= rooms {
                return Err(Refused::new(403, format!("Licence limit: {rooms} conference rooms")));
            }
        }
        if !self.active.contains_key(&room) {
            let args = RoomArgs {
                decl,
                mixer: self.args.mixer,
                ports: self.args.ports.clone(),
                media_ip: self.args.media_ip,
                clock: self.args.clock.clone(),
                inactivity: self.args.inactivity,
                sink: self.args.sink.clone(),
                registry: me.clone(),
                seed: self.args.seed ^ self.next_participant.rotate_left(17),
            };
            let (actor, _) = Actor::spawn_linked(None, RoomActor, args, me.get_cell())
                .await
                .map_err(|e| Refused::new(500, format!("Conference room failed to start: {e}")))?;
            self.active.insert(room.clone(), Active { actor, seats: HashMap::new() });
        }
        let participant = self.next_participant;
        self.next_participant += 1;
        let active = self.active.get_mut(&room).expect("started above");
        let answer = active
            .actor
            .call(
                |reply| RoomMsg::Admit { participant, caller, source, events: events.clone(), reply },
                Some(ROOM_WAIT),
            )
            .await;
        let result = match answer {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(Refused::new(500, "Conference room did not answer")),
        };
        match result {
            Ok(local) => {
                active.seats.insert(participant, events);
                Ok(Seat { room: active.actor.clone(), participant, local })
            }
            Err(refused) => {
                if active.seats.is_empty() {
                    // Started for this caller, who did not get in.
                    let active = self.active.remove(&room).expect("present");
                    active.actor.stop(None);
                }
                Err(refused)
            }
        }
    }

    fn left(&mut self, room: &str, participant: u64) {
        let Some(active) = self.active.get_mut(room) else { return };
        active.seats.remove(&participant);
        if active.seats.is_empty() {
            let active = self.active.remove(room).expect("present");
            active.actor.stop(None);
        }
    }
}

pub enum RoomMsg {
    Admit {
        participant: u64,
        caller: String,
        source: IpAddr,
        events: SeatEvents,
        reply: RpcReplyPort<Result<SocketAddr, Refused>>,
    },
    /// Where the participant's media is and how it is coded (its call's SDP).
    Peer {
        participant: u64,
        peer: PeerMedia,
    },
    /// The participant's call ended.
    Leave {
        participant: u64,
    },
    /// A datagram reached the participant's RTP socket.
    Packet {
        participant: u64,
        from: SocketAddr,
        datagram: Vec<u8>,
    },
    Tick,
    View(RpcReplyPort<RoomView>),
    Control(Control, RpcReplyPort<bool>),
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for RoomMsg {}

pub struct RoomArgs {
    decl: RoomDecl,
    mixer: MixerConfig,
    ports: Arc<Mutex<PortPool>>,
    media_ip: IpAddr,
    clock: Arc<dyn Clock>,
    inactivity: Duration,
    sink: Arc<dyn ParticipationSink>,
    registry: ActorRef<ConferencesMsg>,
    seed: u64,
}

/// Datagrams read from one participant's port and not yet handled by the room: beyond it the
/// reader drops them (counted), so a flood at one port costs a bounded mailbox, not memory.
pub const PACKETS_QUEUED_MAX: usize = 64;

/// One participant's port, as the room's shell holds it.
struct Port {
    events: SeatEvents,
    /// Datagrams handed to the room and not yet handled (see [`PACKETS_QUEUED_MAX`]).
    queued: Arc<std::sync::atomic::AtomicUsize>,
    socket: Arc<tokio::net::UdpSocket>,
    /// Held so that nobody else binds the RTCP port the SDP implies; nothing is read from it.
    _rtcp: std::net::UdpSocket,
    port: u16,
    reader: tokio::task::JoinHandle<()>,
}

pub struct RoomState {
    core: RoomCore,
    ports: BTreeMap<u64, Port>,
    pool: Arc<Mutex<PortPool>>,
    media_ip: IpAddr,
    clock: Arc<dyn Clock>,
    sink: Arc<dyn ParticipationSink>,
    registry: ActorRef<ConferencesMsg>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// Pairs tried before a seat is refused for want of ports.
const BIND_TRIES: usize = 8;

pub struct RoomActor;

impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(&self, _me: ActorRef<RoomMsg>, args: RoomArgs) -> Result<RoomState, ActorProcessingErr> {
        let now = args.clock.now();
        Ok(RoomState {
            core: RoomCore::new(args.decl, args.mixer, args.inactivity, now, args.seed),
            ports: BTreeMap::new(),
            pool: args.ports,
            media_ip: args.media_ip,
            clock: args.clock,
            sink: args.sink,
            registry: args.registry,
            ticker: None,
        })
    }

    async fn post_start(&self, me: ActorRef<RoomMsg>, s: &mut RoomState) -> Result<(), ActorProcessingErr> {
        tracing::info!(room = %s.core.number(), "conference room opened");
        // The ticker wakes the room every frame, half a frame after the mixer's ticks fall due,
        // so each wake plays exactly one (tokio's interval keeps its phase; a late wake plays
        // what it missed, see `Mixer::handle_timeout`).
        let frame = Duration::from_millis(FRAME_MS);
        let first = s.core.poll_timeout().saturating_since(s.clock.now()) + frame / 2;
        s.ticker = Some(tokio::spawn(async move {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + first, frame);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                if me.cast(RoomMsg::Tick).is_err() {
                    return;
                }
            }
        }));
        Ok(())
    }

    async fn handle(&self, me: ActorRef<RoomMsg>, msg: RoomMsg, s: &mut RoomState) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        match msg {
            RoomMsg::Admit { participant, caller, source, events, reply } => {
                let _ = reply.send(s.admit(&me, now, participant, caller, source, events));
            }
            RoomMsg::Peer { participant, peer } => s.core.peer(participant, peer),
            RoomMsg::Leave { participant } => s.core.leave(now, participant),
            RoomMsg::Packet { participant, from, datagram } => {
                if let Some(port) = s.ports.get(&participant) {
                    port.queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                }
                s.core.packet(now, participant, from, &datagram)
            }
            RoomMsg::Tick => s.core.handle_timeout(now),
            RoomMsg::View(reply) => {
                let _ = reply.send(s.core.view());
            }
            RoomMsg::Control(control, reply) => {
                let _ = reply.send(s.core.control(now, control));
            }
        }
        s.drain();
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<RoomMsg>, s: &mut RoomState) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = s.ticker.take() {
            ticker.abort();
        }
        s.core.close(s.clock.now());
        s.drain();
        tracing::info!(room = %s.core.number(), "conference room closed");
        Ok(())
    }
}

impl Drop for RoomState {
    fn drop(&mut self) {
        // A room that failed, or went with a failed conferences actor (no `post_stop`), still
        // hangs up its callers, gives its ports back and stops its tasks. A room that stopped
        // has no port left here.
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        for port in self.ports.values() {
            (port.events)(SeatEvent::Hangup);
            port.reader.abort();
            pool.release(port.port);
        }
    }
}

impl RoomState {
    fn admit(
        &mut self,
        me: &ActorRef<RoomMsg>,
        now: Timestamp,
        participant: u64,
        caller: String,
        source: IpAddr,
        events: SeatEvents,
    ) -> Result<SocketAddr, Refused> {
        // The room's own rules first: a refused caller costs no port.
        self.core.admissible()?;
        let (port, socket, rtcp) = self.bind()?;
        let socket = Arc::new(socket);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let reader = {
            let (socket, queued) = (socket.clone(), queued.clone());
            let me = me.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                    if queued.load(std::sync::atomic::Ordering::Acquire) >= PACKETS_QUEUED_MAX {
                        metrics::counter!("pbx_conference_packets_shed_total").increment(1);
                        continue;
                    }
                    queued.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    let datagram = buf[..n].to_vec();
                    if me.cast(RoomMsg::Packet { participant, from, datagram }).is_err() {
                        return;
                    }
                }
            })
        };
        self.ports.insert(participant, Port { events, queued, socket, _rtcp: rtcp, port, reader });
        if let Err(refused) = self.core.admit(now, participant, caller, source) {
            self.release(participant);
            return Err(refused);
        }
        Ok(SocketAddr::new(self.media_ip, port))
    }

    /// A port pair from the pool, both bound (RTP non-blocking for tokio).
    fn bind(&mut self) -> Result<(u16, tokio::net::UdpSocket, std::net::UdpSocket), Refused> {
        for _ in 0..BIND_TRIES {
            let Some(port) = self.pool.lock().unwrap_or_else(PoisonError::into_inner).allocate() else {
                break;
            };
            let rtp = std::net::UdpSocket::bind(SocketAddr::new(self.media_ip, port));
            let rtcp = std::net::UdpSocket::bind(SocketAddr::new(self.media_ip, port + 1));
            if let (Ok(rtp), Ok(rtcp)) = (rtp, rtcp)
                && rtp.set_nonblocking(true).is_ok()
                && let Ok(rtp) = tokio::net::UdpSocket::from_std(rtp)
            {
                return Ok((port, rtp, rtcp));
            }
            self.pool.lock().unwrap_or_else(PoisonError::into_inner).release(port);
        }
        Err(Refused::new(503, "No RTP ports free"))
    }

    fn release(&mut self, participant: u64) -> Option<Port> {
        let port = self.ports.remove(&participant)?;
        port.reader.abort();
        self.pool.lock().unwrap_or_else(PoisonError::into_inner).release(port.port);
        Some(port)
    }

    /// Carries out what the room's core said.
    fn drain(&mut self) {
        let number = self.core.number().to_owned();
        while let Some(output) = self.core.poll_output() {
            match output {
                RoomCoreOutput::Send { participant, to, datagram } => {
                    let Some(port) = self.ports.get(&participant) else { continue };
                    if port.socket.try_send_to(&datagram, to).is_err() {
                        metrics::counter!("pbx_conference_packets_dropped_total").increment(1);
                    }
                }
                RoomCoreOutput::Seat { participant, event } => {
                    if let Some(port) = self.ports.get(&participant) {
                        tracing::info!(room = %number, participant, ?event, "the room ends a participant's call");
                        (port.events)(event);
                    }
                }
                RoomCoreOutput::Gone { participant, record } => {
                    self.release(participant);
                    self.sink.record(record);
                    let _ = self.registry.cast(ConferencesMsg::Left { room: number.clone(), participant });
                }
                RoomCoreOutput::AuthFailure { source, caller } => {
                    tracing::warn!(room = %number, %source, "conference PIN wrong three times");
                    metrics::counter!("pbx_conference_pin_failures_total").increment(1);
                    self.sink.auth_failure(source, &caller);
                }
                RoomCoreOutput::Overruns(n) => metrics::counter!("pbx_mixer_frame_overruns_total").increment(n),
                RoomCoreOutput::Foreign { .. } => {
                    metrics::counter!("pbx_conference_foreign_packets_total").increment(1);
                }
            }
        }
    }
}

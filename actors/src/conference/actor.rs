//! The ractor shells of conference rooms.
//!
//! - [`ConferencesActor`]: one per node. Knows the configured rooms, admits callers (the
//!   licence's `conference` feature and `conference_rooms` limit, then the room's own answer),
//!   starts a [`RoomActor`] when a room's first caller arrives and stops it when its last one
//!   leaves, answers the API, and keeps the metrics. A room that fails hangs up every call in it.
//! - [`RoomActor`]: one per room in use, around the [`Room`] machine (who is in, PINs, keys)
//!   and the [`Mixer`] machine (the audio). Each participant has its own RTP port pair from the
//!   node's pool; a task per participant reads its socket and hands the datagrams to the room
//!   (source checked first), the room's clock ticks the mixer every 20 ms, and the mixed
//!   packets go out from the participant's socket. Key presses (RFC 4733) are read here.
//!
//! A participant is a call whose far end is the room: the call's actor asks
//! [`ConferencesMsg::Admit`] for a seat, answers the caller with the seat's address, tells the
//! room where the caller's media is ([`RoomMsg::Peer`]) and leaves when the call ends
//! ([`RoomMsg::Leave`], also sent when its [`Seat`] handle is dropped: a call actor that dies
//! leaves the room). The room tells the call when to hang up ([`SeatEvent`]). Rooms are
//! reached by `ActorRef`, never by pointer: a participant anchored on another node could join
//! through the actor mesh (docs/ARCHITECTURE.md, "Conferences").

use super::room::{HangupReason, Prompt, Room, RoomConfig, RoomOutput};
use super::{dtmf::DigitReader, tones};
use crate::Timestamp;
use crate::licence::{Feature, LicenceView};
use crate::media::mixer::{FRAME_MS, Mixer, MixerConfig, MixerOutput, Participant};
use crate::media::pool::PortPool;
use crate::media::relay::PeerMedia;
use crate::media::rtp::RtpPacket;
use crate::time::Clock;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A room as configured: its number, its name and its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomDecl {
    pub number: String,
    pub name: String,
    pub config: RoomConfig,
}

/// A participant's ended stay in a room: what the participation record keeps (never audio).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Participation {
    pub room: String,
    /// The caller's extension.
    pub number: String,
    /// When it came into the room (after its PIN); `None`: it never got in.
    pub joined: Option<Timestamp>,
    pub left: Timestamp,
}

/// Where ended participations go (the node stores them).
pub trait ParticipationSink: Send + Sync + 'static {
    fn record(&self, participation: Participation);
    /// A caller keyed a wrong PIN three times: count an authentication failure for its source.
    fn auth_failure(&self, source: IpAddr, caller: &str);
}

/// What a room tells a participant's call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatEvent {
    /// The room hung up on it (kicked, PIN failed or timed out, the room failed): BYE.
    Hangup,
    /// No RTP from it for the configured time: the call ends as any call would.
    Inactive,
}

pub type SeatEvents = Arc<dyn Fn(SeatEvent) + Send + Sync>;

/// One participant as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParticipantView {
    pub id: u64,
    pub number: String,
    /// `None` while at the PIN prompt.
    pub joined: Option<Timestamp>,
    pub moderator: bool,
    pub muted: bool,
    pub talking: bool,
    pub packets_in: u64,
    pub concealed_frames: u64,
}

/// One room as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoomView {
    pub number: String,
    pub name: String,
    pub pin: bool,
    pub moderator_pin: bool,
    pub max_participants: usize,
    pub active: bool,
    pub locked: bool,
    /// The participant id of the loudest talker.
    pub active_speaker: Option<u64>,
    pub frame_overruns: u64,
    pub participants: Vec<ParticipantView>,
}

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

/// Why a caller did not get a seat: the SIP answer to its INVITE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub reason: String,
}

impl Refused {
    fn new(code: u16, reason: impl Into<String>) -> Refused {
        Refused { code, reason: reason.into() }
    }
}

/// An API request about one room's participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Mute { participant: u64, muted: bool },
    Kick { participant: u64 },
    Lock { locked: bool },
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
                            _ => idle_view(decl),
                        },
                        None => idle_view(decl),
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

fn idle_view(decl: &RoomDecl) -> RoomView {
    RoomView {
        number: decl.number.clone(),
        name: decl.name.clone(),
        pin: decl.config.pin.is_some(),
        moderator_pin: decl.config.moderator_pin.is_some(),
        max_participants: decl.config.max_participants,
        active: false,
        locked: false,
        active_speaker: None,
        frame_overruns: 0,
        participants: Vec::new(),
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

/// One participant, as the room's shell holds it.
struct Place {
    caller: String,
    source: IpAddr,
    events: SeatEvents,
    socket: Arc<tokio::net::UdpSocket>,
    /// Held so that nobody else binds the RTCP port the SDP implies; nothing is read from it.
    _rtcp: std::net::UdpSocket,
    port: u16,
    reader: tokio::task::JoinHandle<()>,
    /// From the SDP; `None` until the call configures it.
    peer: Option<PeerMedia>,
    /// Where its RTP really comes from (latched on the first packet from its SDP address or
    /// its signalling source's IP); packets go there.
    latched: Option<SocketAddr>,
    in_mixer: bool,
    /// Still at the PIN prompt.
    lobby: bool,
    muted: bool,
    /// Prompts asked for before the mixer knew the participant.
    queued: Vec<Prompt>,
    digits: DigitReader,
    joined: Option<Timestamp>,
    last_packet: Timestamp,
    foreign: u64,
}

pub struct RoomState {
    decl: RoomDecl,
    room: Room<u64>,
    mixer: Mixer<u64>,
    places: BTreeMap<u64, Place>,
    ports: Arc<Mutex<PortPool>>,
    media_ip: IpAddr,
    clock: Arc<dyn Clock>,
    inactivity: Duration,
    sink: Arc<dyn ParticipationSink>,
    registry: ActorRef<ConferencesMsg>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    rng: u64,
    overruns_seen: u64,
    send_dropped: u64,
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
            room: Room::new(args.decl.config.clone()),
            mixer: Mixer::new(args.mixer, now),
            decl: args.decl,
            places: BTreeMap::new(),
            ports: args.ports,
            media_ip: args.media_ip,
            clock: args.clock,
            inactivity: args.inactivity,
            sink: args.sink,
            registry: args.registry,
            ticker: None,
            rng: args.seed,
            overruns_seen: 0,
            send_dropped: 0,
        })
    }

    async fn post_start(&self, me: ActorRef<RoomMsg>, s: &mut RoomState) -> Result<(), ActorProcessingErr> {
        tracing::info!(room = %s.decl.number, "conference room opened");
        // The ticker wakes the room every frame, half a frame after the mixer's ticks fall due,
        // so each wake plays exactly one (tokio's interval keeps its phase; a late wake plays
        // what it missed, see `Mixer::handle_timeout`).
        let frame = Duration::from_millis(FRAME_MS);
        let first = s.mixer.poll_timeout().saturating_since(s.clock.now()) + frame / 2;
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
            RoomMsg::Peer { participant, peer } => s.peer(participant, peer),
            RoomMsg::Leave { participant } => {
                if s.places.contains_key(&participant) {
                    s.room.leave(participant);
                    s.remove(now, participant);
                }
            }
            RoomMsg::Packet { participant, from, datagram } => s.packet(now, participant, from, &datagram),
            RoomMsg::Tick => s.tick(now),
            RoomMsg::View(reply) => {
                let _ = reply.send(s.view());
            }
            RoomMsg::Control(control, reply) => {
                let done = match control {
                    Control::Mute { participant, muted } => s.room.set_muted(participant, muted),
                    Control::Kick { participant } => s.room.kick(participant),
                    Control::Lock { locked } => {
                        s.room.set_locked(locked);
                        true
                    }
                };
                let _ = reply.send(done);
            }
        }
        s.carry_out(now);
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<RoomMsg>, s: &mut RoomState) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = s.ticker.take() {
            ticker.abort();
        }
        let now = s.clock.now();
        let left: Vec<u64> = s.places.keys().copied().collect();
        for participant in left {
            s.room.leave(participant);
            s.remove(now, participant);
        }
        tracing::info!(room = %s.decl.number, "conference room closed");
        Ok(())
    }
}

impl Drop for RoomState {
    fn drop(&mut self) {
        // A room that failed (no `post_stop`) still gives its ports back and stops its tasks.
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        let mut pool = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        for place in self.places.values() {
            place.reader.abort();
            pool.release(place.port);
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
        let probe = self.room.members().count();
        if probe >= self.decl.config.max_participants {
            return Err(Refused::new(486, "Conference room full"));
        }
        if self.room.is_locked() {
            return Err(Refused::new(403, "Conference locked"));
        }
        let (port, socket, rtcp) = self.bind()?;
        let socket = Arc::new(socket);
        let reader = {
            let socket = socket.clone();
            let me = me.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                    let datagram = buf[..n].to_vec();
                    if me.cast(RoomMsg::Packet { participant, from, datagram }).is_err() {
                        return;
                    }
                }
            })
        };
        let local = SocketAddr::new(self.media_ip, port);
        self.places.insert(
            participant,
            Place {
                caller,
                source,
                events,
                socket,
                _rtcp: rtcp,
                port,
                reader,
                peer: None,
                latched: None,
                in_mixer: false,
                lobby: true,
                muted: false,
                queued: Vec::new(),
                digits: DigitReader::default(),
                joined: None,
                last_packet: now,
                foreign: 0,
            },
        );
        if let Err(refusal) = self.room.arrive(now, participant) {
            self.remove(now, participant);
            return Err(Refused::new(refusal.status(), capitalised(&refusal.to_string())));
        }
        Ok(local)
    }

    /// A port pair from the pool, both bound (RTP non-blocking for tokio).
    fn bind(&mut self) -> Result<(u16, tokio::net::UdpSocket, std::net::UdpSocket), Refused> {
        for _ in 0..BIND_TRIES {
            let Some(port) = self.ports.lock().unwrap_or_else(PoisonError::into_inner).allocate() else {
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
            self.ports.lock().unwrap_or_else(PoisonError::into_inner).release(port);
        }
        Err(Refused::new(503, "No RTP ports free"))
    }

    fn peer(&mut self, participant: u64, peer: PeerMedia) {
        let Some(place) = self.places.get_mut(&participant) else { return };
        let (payload_type, law) = peer.codec;
        let changed = place.peer.as_ref().is_none_or(|old| old.codec != peer.codec);
        if place.peer.as_ref().is_some_and(|old| old.rtp != peer.rtp) {
            place.latched = None;
        }
        place.peer = Some(peer);
        if !changed {
            return;
        }
        if place.in_mixer {
            self.mixer.leave(participant);
        }
        let r = crate::splitmix64(&mut self.rng);
        let stream = Participant {
            law,
            payload_type,
            ssrc: r as u32,
            initial_timestamp: (r >> 32) as u32,
            initial_sequence: (r >> 16) as u16,
        };
        if self.mixer.join(participant, stream).is_err() {
            return;
        }
        place.in_mixer = true;
        self.mixer.set_in_lobby(participant, place.lobby);
        self.mixer.set_muted(participant, place.muted);
        for prompt in std::mem::take(&mut place.queued) {
            self.mixer.play(participant, tones::render(prompt));
        }
    }

    fn packet(&mut self, now: Timestamp, participant: u64, from: SocketAddr, datagram: &[u8]) {
        let Some(place) = self.places.get_mut(&participant) else { return };
        let Some(peer) = &place.peer else { return };
        // Strict source: the address its SDP named, or (NAT) one of the IPs it is known by,
        // latched by its first packet; nothing else.
        let accepted = match place.latched {
            Some(latched) => latched == from,
            None => {
                let named = peer.rtp == Some(from);
                let known = peer.rtp.is_some_and(|a| a.ip() == from.ip()) || place.source == from.ip();
                if named || known {
                    place.latched = Some(from);
                }
                named || known
            }
        };
        if !accepted {
            place.foreign += 1;
            metrics::counter!("pbx_conference_foreign_packets_total").increment(1);
            return;
        }
        place.last_packet = now;
        let Some(packet) = RtpPacket::parse(datagram) else { return };
        if peer.telephone_event.is_some_and(|pt| pt == packet.payload_type()) {
            if let Some(key) = place.digits.read(&packet) {
                self.room.key(now, participant, key);
            }
            return;
        }
        self.mixer.receive(participant, datagram);
    }

    fn tick(&mut self, now: Timestamp) {
        self.mixer.handle_timeout(now);
        let overruns = self.mixer.stats().frame_overruns;
        if overruns > self.overruns_seen {
            metrics::counter!("pbx_mixer_frame_overruns_total").increment(overruns - self.overruns_seen);
            self.overruns_seen = overruns;
        }
        while let Some(output) = self.mixer.poll_output() {
            let MixerOutput::Rtp { to, packet } = output else { continue };
            let Some(place) = self.places.get(&to) else { continue };
            let Some(destination) = place.latched.or(place.peer.as_ref().and_then(|p| p.rtp)) else { continue };
            if place.socket.try_send_to(&packet, destination).is_err() {
                self.send_dropped += 1;
                metrics::counter!("pbx_conference_packets_dropped_total").increment(1);
            }
        }
        self.room.handle_timeout(now);
        // Participants that stopped sending: their calls end as any call's would.
        if !self.inactivity.is_zero() {
            for place in self.places.values_mut() {
                let sends = place.peer.as_ref().is_some_and(|p| p.sends);
                if sends && now.saturating_since(place.last_packet) >= self.inactivity {
                    place.last_packet = now;
                    (place.events)(SeatEvent::Inactive);
                }
            }
        }
    }

    /// Carries out what the room machine said.
    fn carry_out(&mut self, now: Timestamp) {
        let outputs: Vec<RoomOutput<u64>> = self.room.drain_outputs().collect();
        for output in outputs {
            match output {
                RoomOutput::Join { id, moderator, muted } => {
                    if let Some(place) = self.places.get_mut(&id) {
                        place.lobby = false;
                        place.muted = muted;
                        place.joined = Some(now);
                        tracing::info!(room = %self.decl.number, participant = id, moderator, "joined the conference");
                    }
                    self.mixer.set_in_lobby(id, false);
                    self.mixer.set_muted(id, muted);
                }
                RoomOutput::SetMuted { id, muted } => {
                    if let Some(place) = self.places.get_mut(&id) {
                        place.muted = muted;
                    }
                    self.mixer.set_muted(id, muted);
                }
                RoomOutput::Play { to, prompt } => {
                    if let Some(place) = self.places.get_mut(&to) {
                        if place.in_mixer {
                            self.mixer.play(to, tones::render(prompt));
                        } else {
                            place.queued.push(prompt);
                        }
                    }
                }
                RoomOutput::Hangup { id, reason } => {
                    if let Some(place) = self.places.get(&id) {
                        tracing::info!(room = %self.decl.number, participant = id, ?reason, "the room hangs up");
                        (place.events)(SeatEvent::Hangup);
                        if reason == HangupReason::Kicked {
                            metrics::counter!("pbx_conference_kicks_total").increment(1);
                        }
                    }
                    self.remove(now, id);
                }
                RoomOutput::AuthFailure { id } => {
                    if let Some(place) = self.places.get(&id) {
                        tracing::warn!(room = %self.decl.number, source = %place.source, "conference PIN wrong three times");
                        metrics::counter!("pbx_conference_pin_failures_total").increment(1);
                        self.sink.auth_failure(place.source, &place.caller);
                    }
                }
                RoomOutput::Locked(locked) => {
                    tracing::info!(room = %self.decl.number, locked, "conference lock");
                }
            }
        }
    }

    /// The participant is out of the room (the machine knows already): its ports go back, its
    /// record is written, the registry hears of it.
    fn remove(&mut self, now: Timestamp, participant: u64) {
        let Some(place) = self.places.remove(&participant) else { return };
        place.reader.abort();
        self.mixer.leave(participant);
        self.ports.lock().unwrap_or_else(PoisonError::into_inner).release(place.port);
        self.sink.record(Participation {
            room: self.decl.number.clone(),
            number: place.caller.clone(),
            joined: place.joined,
            left: now,
        });
        let _ = self.registry.cast(ConferencesMsg::Left { room: self.decl.number.clone(), participant });
    }

    fn view(&self) -> RoomView {
        let participants = self
            .room
            .members()
            .filter_map(|(id, member)| {
                let place = self.places.get(&id)?;
                let stats = self.mixer.participant_stats(id).unwrap_or_default();
                Some(ParticipantView {
                    id,
                    number: place.caller.clone(),
                    joined: member.joined,
                    moderator: member.moderator,
                    muted: member.muted,
                    talking: self.mixer.is_talking(id),
                    packets_in: stats.packets,
                    concealed_frames: stats.concealed,
                })
            })
            .collect();
        RoomView {
            locked: self.room.is_locked(),
            active: true,
            active_speaker: self.mixer.active_speaker(),
            frame_overruns: self.mixer.stats().frame_overruns,
            participants,
            ..idle_view(&self.decl)
        }
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

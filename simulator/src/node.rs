//! One pbx node in the simulation: the product's own machines — endpoint (transactions),
//! registrar, a [`CallCore`] per call (the call machine and its legs', as the call actor runs
//! them), a relay machine per call's media, a [`RoomCore`] per conference room in use — wired
//! as the node's actors wire them, but synchronously and on the node's virtual clock.
//!
//! Conference rooms are glued as `actors/src/conference/actor.rs` and the call shell glue them:
//! a call whose route is a room asks the conferences registry for a seat (the room's own
//! answer first, then a port pair from the node's pool, then the room core's admission; a
//! room is opened for its first caller and closed when the registry hears its last one
//! left), the call machine answers the caller itself with the seat's port, its `ConfigureMedia`
//! goes to the room (`RoomCore::peer`), datagrams to a participant's port go to the room's
//! mailbox, the room's tick is scheduled from `poll_timeout` on the node's clock, what the room
//! says is carried out (a mixed packet leaves from the participant's port, a hang-up or silence
//! goes to the call, a participant gone gives its port back and tells the registry), and the
//! call's record takes it out of the room. The licence gate on rooms is not run: the simulated
//! licence has none.
//!
//! Push (RFC 8599) is glued as `node/src/push_dispatch.rs` and the registrar shell glue it: a
//! call's [`CoreOutput::Push`] goes to the push dispatch's mailbox, which refuses it at once
//! beyond [`PUSHES_IN_FLIGHT_MAX`], else asks the registrar to watch for the phone's next
//! REGISTER (its mailbox; at most [`PUSH_WATCHERS_MAX`] watches) and pushes
//! ([`NodeOutput::Push`], answered by the world's push service through
//! [`SimNode::push_answered`]). The answer is recorded (a `PushRecord`, through the replicated
//! store); "unregistered" drops the token's bindings and fails the fork; "delivered" waits the
//! push wait for the watch, whose binding (`PushContactRegistered`) wakes the fork. A binding
//! due for a refresh push (`PushRefreshDue`) is pushed and recorded the same way, with no call
//! waiting. For the checkers the glue reports each fork that waits for a push and how its wait
//! ended ([`ForkEvent`]); that is observation, not a decision.
//!
//! The retention reaper runs here too, over the node's simulated disk: its batches are disk
//! writes, its answer comes once a batch is durable, and a node restarted after a crash builds
//! a new reaper whose first run is at once — the product's own restart path.
//!
//! This file is the simulator's counterpart of the actor shells (`actors/src/*/actor.rs`): it
//! routes each machine's outputs to the machine they are for, and hands the world what leaves
//! the node (datagrams, disk writes). It decides nothing a shell does not decide. The
//! endpoint's routing is not copied here but run: the product's own [`EndpointGlue`] (the leg
//! table with its start-up queue, the call-limit read, the addressing of the endpoint's
//! outputs) is driven here as the endpoint shell drives it; so is the call actor's
//! [`CallCore`] (a leg's events go back into its call in the same step), and the CDR of a call
//! that did not start is the calls shell's ([`not_started`]). Like the shells, each actor has a FIFO mailbox
//! ([`Mailboxes`]); which actor runs next is drawn from the seed, the way a multi-threaded
//! runtime would interleave them.

use bytes::Bytes;
use pbx_actors::Timestamp;
use pbx_actors::bugs::Bugs;
use pbx_actors::call::b2bua::{CallConfig, CallSetup, RoomAnswer};
use pbx_actors::call::core::{CallCore, CoreInput, CoreOutput, Legs};
use pbx_actors::call::{CallIds, CallStart, LegId, LocalSip, not_started, splitmix64};
use pbx_actors::cdr::{Cdr, MediaCounters};
use pbx_actors::conference::actor::PACKETS_QUEUED_MAX;
use pbx_actors::conference::core::{Refused, RoomCore, RoomCoreOutput, RoomDecl, SeatEvent};
use pbx_actors::endpoint::glue::{EndpointGlue, Envelope, GlueInput};
use pbx_actors::endpoint::machine::{Endpoint, EndpointEvent, EndpointInput};
use pbx_actors::entry::Entry;
use pbx_actors::licence::{Effective, Stored, Watchdog, WatchdogConfig, WatchdogEvent, WatchdogInput, WatchdogOutput};
use pbx_actors::media::actor::MediaError;
use pbx_actors::media::mixer::MixerConfig;
use pbx_actors::media::pool::PortPool;
use pbx_actors::media::relay::{PacketKind, PeerMedia, Relay, RelayConfig, RelayInput, RelayOutput, Side};
use pbx_actors::privacy::AuditEntry;
use pbx_actors::privacy::reaper::{Batch, Reaper, ReaperConfig, ReaperInput, ReaperOutput};
use pbx_actors::privacy::{SecurityEntry, SecurityEvent};
use pbx_actors::push::PUSHES_IN_FLIGHT_MAX;
use pbx_actors::push::{PushContact, PushParams, PushRecord};
use pbx_actors::registrar::actor::PUSH_WATCHERS_MAX;
use pbx_actors::registrar::glue::{self, WriteJob};
use pbx_actors::registrar::{
    Binding, Extension, Forwarding, Registrar, RegistrarCommand, RegistrarConfig, RegistrarEvent, RegistrarInput,
};
use pbx_actors::sip::message::{Response, Transport};
use pbx_actors::sip::transaction::TimerConfig;
use pbx_actors::store::StoreError;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// Mixed into the node's seed for its RTP port pool, so the pool draws its own sequence without
/// shifting the generators derived before it.
const POOL_SEED_SALT: u64 = 0x706f_7274_706f_6f6c;
/// Mixed into the node's seed for its conference rooms' seeds (the registry's `seed`).
const ROOMS_SEED_SALT: u64 = 0x726f_6f6d_7365_6564;

/// How a node is set up; the same for every incarnation of it.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where its SIP socket listens; its media ports are on the same IP.
    pub sip: SocketAddr,
    pub rtp_ports: (u16, u16),
    pub registrar: RegistrarConfig,
    pub no_answer: Duration,
    pub rtp_timeout: Duration,
    /// (number, password): put at every start, as the appliance puts its config's extensions.
    pub extensions: Vec<(String, String)>,
    pub bugs: Bugs,
    /// After each message an actor handles, the chance that the node pauses (a descheduled
    /// thread, a slow actor) and lets the world go on before the rest of its mailboxes run.
    pub stall: f64,
    /// The licence watchdog's settings, when the node is licensed through a service.
    pub licence: Option<WatchdogConfig>,
    /// The retention reaper's rules and pace, when it runs.
    pub reaper: Option<ReaperConfig>,
    /// The conference rooms (their numbers are also in `registrar.rooms`), and how they mix.
    pub rooms: Vec<RoomDecl>,
    pub mixer: MixerConfig,
    /// How long a call waits for a pushed phone (RFC 8599); `None`: push is off, and phones
    /// with push parameters are called like any other.
    pub push_wait: Option<Duration>,
    /// Deliberate bugs of this glue.
    pub sim_bugs: crate::options::SimBugs,
}

/// A durable change, written by the world's simulated disk.
#[derive(Clone, Debug)]
pub enum DiskWrite {
    /// What the product replicates (registrar commands, CDRs, the verified licence): the
    /// product's own [`Entry`], committed by the product's `apply_entry`.
    Entry(Entry),
    /// One line of the security log (a failed authentication, a block).
    SecurityLog(Box<SecurityEntry>),
    /// One line of the privacy audit (a reaper run).
    Audit(AuditEntry),
    /// One retention batch: a write transaction that changes at most `limit` records.
    Reap(Batch),
}

/// What waits for a write to be durable: the registrar's answers (a 200 never leaves before
/// the binding it reports is stored — the registrar's glue, which its shell's writer follows
/// too).
#[derive(Debug)]
pub enum Deferred {
    /// A registrar job queued by the glue ([`glue::dispatch`]): delivered by [`glue::settle`]
    /// once every write before it and its own `commands` (if any) are durable.
    Registrar {
        job: WriteJob<()>,
        /// What the write held, for the machine to rewrite if the disk refused it.
        commands: Vec<RegistrarCommand>,
    },
    /// The reaper's batch for `rule`: it hears how many records changed.
    Reaped { rule: usize },
}

/// One batch for the disk: the write (if any) and what to deliver once it is durable.
#[derive(Debug)]
pub struct Job {
    pub write: Option<DiskWrite>,
    pub deferred: Vec<Deferred>,
}

pub enum NodeOutput {
    Transmit {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Bytes,
        /// A conference room's mixed audio (from a participant's port).
        room: bool,
    },
    /// The watchdog asks the licence service; answer with [`SimNode::licence_response`].
    LicenceCheck { request: u64, serial: String },
    /// Hand to the disk; call [`SimNode::committed`] with `deferred` and the disk's answer
    /// once it is durable.
    Write(Job),
    /// Push this app through its provider; answer with [`SimNode::push_answered`].
    Push(PushSend),
    /// A fork began or ended its wait for a pushed phone (for the checkers).
    Fork(ForkEvent),
}

/// One push the node's dispatch sends (RFC 8599 `pn-*` of the binding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSend {
    pub id: u64,
    pub aor: String,
    pub provider: String,
    pub param: String,
    /// `pn-prid`: the app's token.
    pub prid: String,
    /// A call waits for the phone (`false`: a refresh push, RFC 8599 §5.6).
    pub call: bool,
}

/// What the push service answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Accepted for delivery (whether it reaches the phone, the service does not say).
    Delivered,
    /// The token is void (FCM's `UNREGISTERED`).
    Unregistered,
}

/// A call's fork and its push, as the checkers see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForkEvent {
    /// The fork `leg` of call `call` waits for its pushed phone. `call_id`: the caller's
    /// Call-ID; `only`: every fork of the call waits (the caller hears nothing meanwhile).
    Parked { call: u64, leg: LegId, call_id: String, only: bool },
    /// Its wait is over.
    Resolved { call: u64, leg: LegId, how: Resolution },
}

/// How a fork's wait for its pushed phone ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The phone registered: the fork's INVITE went to the fresh binding (its leg started).
    Invited,
    /// The push failed (`PushFailed` reached the call): the fork ends like a 480.
    Refused,
    /// The call ended it: the caller's final response (the push timer's 480 among them), an
    /// answer elsewhere, a forward elsewhere, or — with another fork ringing, where a fork's
    /// end leaves no trace outside the call machine — the call, woken after the fork's timer,
    /// asking to be woken no sooner than now (its `poll_timeout` covers every waiting fork's
    /// timer).
    Ended,
}

/// Counters for the run's summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeStats {
    pub calls_started: u64,
    pub calls_refused: u64,
    pub cdrs_written: u64,
    pub registered: u64,
    pub expired: u64,
    pub auth_failed: u64,
    pub malformed: u64,
    pub licence_checks_ok: u64,
    pub licence_checks_failed: u64,
    pub licence_changes: u64,
    /// Changes to "expired": licensed features switched off.
    pub licence_expired: u64,
    /// Reaper runs finished (their audit entry handed to the disk).
    pub reaper_runs: u64,
    /// Security-log entries handed to the disk.
    pub security_logged: u64,
    /// Calls to conference rooms: given a seat, refused (full, no such room, no port).
    pub room_seats: u64,
    pub room_refused: u64,
    /// Rooms opened (for a first caller).
    pub rooms_opened: u64,
    /// Participation records (a participant out of its room), each a disk write.
    pub participations: u64,
    /// Callers hung up after three wrong PINs (each an authentication failure for the
    /// registrar).
    pub room_pin_failures: u64,
    /// Mixer ticks skipped because the room was woken too late.
    pub mixer_overruns: u64,
    /// Datagrams a participant's port refused (not from its phone).
    pub room_foreign: u64,
    /// Datagrams a participant's port shed (too many waiting for the room).
    pub room_shed: u64,
    /// Pushes sent for calls, and refresh pushes (RFC 8599 §5.6).
    pub pushes: u64,
    pub refresh_pushes: u64,
    /// Pushes not sent (too many in flight, or no push parameters), watches not taken (the
    /// registrar's table full).
    pub pushes_refused: u64,
    pub watches_refused: u64,
    /// Push records handed to the disk.
    pub push_records: u64,
    /// Forks woken (their phone registered: INVITE sent), forks whose push failed, and calls
    /// whose caller got 480 while a fork still waited for its phone (the push timer's).
    pub forks_woken: u64,
    pub forks_refused: u64,
    pub push_timeouts: u64,
}

/// A call as the node holds it: the call actor's core (call machine and legs) and its media.
struct SimCall {
    core: CallCore,
    media: CallMedia,
    started: Timestamp,
    recorded: bool,
    /// The caller's leg and Call-ID, and its forks waiting for a pushed phone (since when):
    /// what the checkers are told about.
    a: LegId,
    call_id: String,
    parked: BTreeMap<LegId, Timestamp>,
    /// Its forks that have no leg machine yet (parked ones), or never got one: the endpoint
    /// routes them from the call's start (`CallStart::forks`).
    unstarted: BTreeSet<LegId>,
    /// The forks parked at its start were told about: a fork parked from now on (a forward's,
    /// `b2bua::Call::forward`) is told about as it parks.
    announced: bool,
}

/// One push of the node's push dispatch (a task of `push_dispatch.rs`).
struct PushTask {
    /// The call and fork waiting for it; `None`: a refresh push.
    fork: Option<(u64, LegId)>,
    binding: Binding,
    params: PushParams,
    caller: String,
    callee: String,
    /// When it was sent.
    at: Timestamp,
    /// Once the service said delivered: until when the task waits for the phone's REGISTER.
    until: Option<Timestamp>,
    /// The binding the watch reported before the service answered (the task reads it after).
    registered: Option<Binding>,
}

/// A message for the push dispatch actor.
enum PushWork {
    /// A call's fork: push its phone.
    Wake { call: u64, leg: LegId, binding: Binding, caller: String, callee: String },
    /// A binding due for its refresh push.
    Refresh(Binding),
    /// The service answered push `id` (its task, really: it runs beside the actor).
    Answered { id: u64, outcome: PushOutcome },
}

/// What carries a call's media (the call shell's `CallMedia`): pbx's relay between the two
/// phones and its two port pairs, or a seat in a conference room.
// Each call holds one, in place in the call table: boxing the relay would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum CallMedia {
    Relay {
        relay: Relay,
        ports: [u16; 2],
    },
    /// `None` once the call has left the room (its record came out) or was never let in.
    Room(Option<Seat>),
}

/// A participant's place, as its call holds it (the shell's `Seat`): dropping it leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seat {
    /// The room's instance (a room closed and opened again is another).
    room: u64,
    participant: u64,
}

/// A room in use: the room actor's state.
struct SimRoom {
    core: RoomCore,
    /// Each participant's RTP port (its RTCP port is one above, held and never read).
    ports: BTreeMap<u64, u16>,
    /// Each participant's call (the shell's `SeatEvents` handle).
    calls: BTreeMap<u64, u64>,
    /// Datagrams read from each participant's port and not yet handled: beyond
    /// [`PACKETS_QUEUED_MAX`] the reader sheds them, as the room shell's does.
    queued: BTreeMap<u64, usize>,
}

/// A room as the conferences registry knows it: its actor, and the participants admitted and
/// not yet reported gone.
struct Active {
    room: u64,
    seats: BTreeSet<u64>,
}

/// Where a media port's datagrams go.
#[derive(Clone, Copy, Debug)]
enum MediaPort {
    Relay(u64, Side),
    /// (room, participant)
    Room(u64, u64),
}

/// A message for a room's actor.
enum RoomInput {
    Peer { participant: u64, peer: PeerMedia },
    Leave { participant: u64 },
    Packet { participant: u64, from: SocketAddr, datagram: Bytes },
    Tick,
}

/// An input on its way to a machine (a message in some actor's mailbox).
enum Work {
    /// For the endpoint's glue; a simulated leg needs no handle to be reached, so `()`.
    Endpoint(GlueInput<()>),
    Registrar(RegistrarInput),
    /// For the calls actor: start this call.
    Calls(Box<CallStart>),
    /// For a call's actor (its legs' SIP too: they run inside it).
    Call(u64, CoreInput),
    Relay(u64, RelayInput),
    Watchdog(WatchdogInput),
    Reaper(ReaperInput),
    /// For a room's actor.
    Room(u64, RoomInput),
    /// For the conferences registry: this room's participant is gone.
    Left {
        number: String,
        participant: u64,
    },
    /// For the push dispatch.
    Push(PushWork),
    /// For the registrar's shell: report the next REGISTER of `aor`'s app `prid` to push `push`
    /// (`RegistrarMsg::AwaitPushContact`).
    AwaitPushContact {
        aor: String,
        prid: String,
        push: u64,
    },
}

/// Whose mailbox a [`Work`] waits in: one per actor of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mailbox {
    Endpoint,
    Registrar,
    Calls,
    Call(u64),
    Relay(u64),
    Watchdog,
    Reaper,
    Room(u64),
    Conferences,
    Push,
}

impl Work {
    fn mailbox(&self) -> Mailbox {
        match self {
            Work::Endpoint(_) => Mailbox::Endpoint,
            Work::Registrar(_) => Mailbox::Registrar,
            Work::Calls(_) => Mailbox::Calls,
            Work::Call(id, _) => Mailbox::Call(*id),
            Work::Relay(id, _) => Mailbox::Relay(*id),
            Work::Watchdog(_) => Mailbox::Watchdog,
            Work::Reaper(_) => Mailbox::Reaper,
            Work::Room(id, _) => Mailbox::Room(*id),
            Work::Left { .. } => Mailbox::Conferences,
            Work::Push(_) => Mailbox::Push,
            Work::AwaitPushContact { .. } => Mailbox::Registrar,
        }
    }
}

/// The node's actors' mailboxes. Each is first in, first out, as ractor's are; which actor
/// runs next is drawn from the node's seed, so each run tries one of the interleavings that
/// concurrent actors allow — a leg may be stopped while a request for it waits in its mailbox,
/// a call may hear of a hang-up before its leg's last response went out.
struct Mailboxes {
    queues: BTreeMap<Mailbox, VecDeque<Work>>,
    rng: u64,
}

/// `p` as a threshold on a uniform u64.
fn chance(rng: &mut u64, p: f64) -> bool {
    p > 0.0 && (splitmix64(rng) as f64) < p * u64::MAX as f64
}

impl Mailboxes {
    fn push(&mut self, work: Work) {
        self.queues.entry(work.mailbox()).or_default().push_back(work);
    }

    fn pop(&mut self) -> Option<Work> {
        let n = self.queues.len() as u64;
        if n == 0 {
            return None;
        }
        let pick = (splitmix64(&mut self.rng) % n) as usize;
        let mut entry = self.queues.iter_mut().nth(pick).map(|(key, queue)| (*key, queue.pop_front()))?;
        if self.queues.get(&entry.0).is_some_and(VecDeque::is_empty) {
            self.queues.remove(&entry.0);
        }
        entry.1.take()
    }
}

pub struct SimNode {
    config: NodeConfig,
    call_config: CallConfig,
    relay_config: RelayConfig,
    endpoint: EndpointGlue<()>,
    registrar: Registrar,
    watchdog: Option<Watchdog>,
    reaper: Option<Reaper>,
    calls: BTreeMap<u64, SimCall>,
    leg_calls: BTreeMap<LegId, u64>,
    /// RTP port of a pair → what it carries; its RTCP port is one above.
    media_ports: BTreeMap<u16, MediaPort>,
    pool: PortPool,
    /// Rooms in use, by instance; the conferences registry by room number.
    rooms: BTreeMap<u64, SimRoom>,
    active: BTreeMap<String, Active>,
    next_room: u64,
    next_participant: u64,
    rooms_seed: u64,
    ids: CallIds,
    work: Mailboxes,
    outputs: VecDeque<NodeOutput>,
    /// Registrar jobs with commands handed to the disk and not yet settled: the count the
    /// registrar shell's writer keeps (`Writer::pending`), which the glue's bypass reads.
    registrar_writes: usize,
    /// The push dispatch's tasks by push id, and the id of the next (from the clock at start,
    /// as the product's).
    pushes: BTreeMap<u64, PushTask>,
    next_push: u64,
    /// The registrar shell's watches for pushed phones: (AOR, push id) → pushes.
    push_watchers: BTreeMap<(String, String), Vec<u64>>,
    pub stats: NodeStats,
}

impl SimNode {
    /// Starts a node from what its disk holds (the appliance's start: restore, then put the
    /// configured extensions): extensions, bindings, call forwarding (given to the registrar as
    /// its shell gives it, `Registrar::with_forwarding`) and the licence. Drain
    /// [`poll_output`](Self::poll_output) afterwards.
    pub fn start(
        config: NodeConfig,
        seed: u64,
        (extensions, bindings, forwarding): (Vec<Extension>, Vec<Binding>, Vec<(String, Forwarding)>),
        licence: Option<Stored>,
        now: Timestamp,
    ) -> SimNode {
        let mut rng = seed;
        // The node reads 256 bits from the OS; a simulated node expands its seed to as many.
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(splitmix64(&mut rng)),
            &mut secret,
        );
        // Injected: the glue forgets the stored forwarding (every forward is off after a crash).
        let forwarding = if config.sim_bugs.forgotten_forwarding { Vec::new() } else { forwarding };
        let registrar =
            Registrar::new(config.registrar.clone(), secret, extensions, bindings, now).with_forwarding(forwarding);
        let timers = TimerConfig::default();
        let call_config = CallConfig {
            no_answer: config.no_answer,
            timers,
            local_sip: LocalSip { address: config.sip, tls: None },
            bugs: config.bugs,
            park_timeout: std::time::Duration::from_secs(45),
        };
        let mut node = SimNode {
            endpoint: EndpointGlue::new(Endpoint::new(timers, seed32(&mut rng)), config.bugs),
            registrar,
            watchdog: config.licence.clone().map(|c| Watchdog::new(c, now, licence)),
            reaper: config.reaper.clone().map(|c| Reaper::new(c, now)),
            call_config,
            relay_config: RelayConfig { inactivity: config.rtp_timeout },
            calls: BTreeMap::new(),
            leg_calls: BTreeMap::new(),
            media_ports: BTreeMap::new(),
            pool: PortPool::new(config.rtp_ports.0, config.rtp_ports.1, seed ^ POOL_SEED_SALT),
            rooms: BTreeMap::new(),
            active: BTreeMap::new(),
            next_room: 1,
            next_participant: 1,
            rooms_seed: seed ^ ROOMS_SEED_SALT,
            ids: CallIds::new(rng),
            work: Mailboxes { queues: BTreeMap::new(), rng: splitmix64(&mut rng) },
            outputs: VecDeque::new(),
            registrar_writes: 0,
            pushes: BTreeMap::new(),
            next_push: now.as_micros(),
            push_watchers: BTreeMap::new(),
            stats: NodeStats::default(),
            config,
        };
        // Bindings dropped while restoring come out as persists.
        node.drain_registrar(now);
        for (number, password) in node.config.extensions.clone() {
            node.work.push(Work::Registrar(RegistrarInput::PutExtension {
                display_name: format!("Phone {number}"),
                number,
                password,
            }));
        }
        node.run(now);
        node
    }

    pub fn sip_address(&self) -> SocketAddr {
        self.config.sip
    }

    /// A datagram for this node: SIP on its SIP port, RTP/RTCP on a media port.
    pub fn datagram(&mut self, now: Timestamp, from: SocketAddr, to: SocketAddr, bytes: Bytes) {
        if to == self.config.sip {
            let inbound = EndpointInput::Inbound { bytes, source: from, transport: Transport::Udp, received: now };
            self.work.push(Work::Endpoint(GlueInput::Endpoint(inbound)));
        } else {
            let port = to.port();
            let (rtp, kind) =
                if port.is_multiple_of(2) { (port, PacketKind::Rtp) } else { (port - 1, PacketKind::Rtcp) };
            // A closed port: the kernel would drop it.
            match self.media_ports.get(&rtp) {
                None => return,
                Some(&MediaPort::Relay(call, side)) => {
                    self.work.push(Work::Relay(call, RelayInput::Packet { side, kind, source: from, bytes }))
                }
                // The room reads its participants' RTP sockets; their RTCP ports are held only.
                Some(&MediaPort::Room(room, participant)) => {
                    let Some(r) = self.rooms.get_mut(&room).filter(|_| kind == PacketKind::Rtp) else { return };
                    let queued = r.queued.entry(participant).or_default();
                    if *queued >= PACKETS_QUEUED_MAX {
                        self.stats.room_shed += 1;
                        return;
                    }
                    *queued += 1;
                    let input = RoomInput::Packet { participant, from, datagram: bytes };
                    self.work.push(Work::Room(room, input));
                }
            }
        }
        self.run(now);
    }

    /// A disk write this node asked for is durable (`outcome`: what the disk said, the
    /// records a retention batch changed): deliver what waited for it.
    pub fn committed(&mut self, now: Timestamp, deferred: Vec<Deferred>, outcome: Result<u64, String>) {
        for d in deferred {
            match d {
                Deferred::Registrar { job, commands } => {
                    let stored = (!commands.is_empty()).then(|| {
                        self.registrar_writes -= 1;
                        outcome.clone().map(drop).map_err(StoreError::Disk)
                    });
                    if let Some(Err(_)) = &stored {
                        self.registrar.persist_failed(&commands);
                    }
                    self.deliver_registrar(job, stored.as_ref());
                }
                Deferred::Reaped { rule } => self.work.push(Work::Reaper(match outcome.clone() {
                    Ok(records) => ReaperInput::Done { rule, records },
                    Err(error) => ReaperInput::Failed { rule, error },
                })),
            }
        }
        self.run(now);
    }

    /// Wakes every machine whose time has come.
    pub fn timeout(&mut self, now: Timestamp) {
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.work.push(Work::Endpoint(GlueInput::Endpoint(EndpointInput::Timeout)));
        }
        if self.registrar.poll_timeout().is_some_and(|t| t <= now) {
            self.work.push(Work::Registrar(RegistrarInput::Timeout));
        }
        if self.watchdog.as_ref().and_then(Watchdog::poll_timeout).is_some_and(|t| t <= now) {
            self.work.push(Work::Watchdog(WatchdogInput::Timeout));
        }
        if self.reaper.as_ref().and_then(Reaper::poll_timeout).is_some_and(|t| t <= now) {
            self.work.push(Work::Reaper(ReaperInput::Timeout));
        }
        for (id, c) in &self.calls {
            if c.core.poll_timeout().is_some_and(|t| t <= now) {
                self.work.push(Work::Call(*id, CoreInput::Timeout));
            }
            if let CallMedia::Relay { relay, .. } = &c.media
                && relay.poll_timeout().is_some_and(|t| t <= now)
            {
                self.work.push(Work::Relay(*id, RelayInput::Timeout));
            }
        }
        // The room's ticker: a tick for every mixer frame that fell due.
        for (id, room) in &self.rooms {
            if room.core.poll_timeout() <= now {
                self.work.push(Work::Room(*id, RoomInput::Tick));
            }
        }
        self.run(now);
    }

    /// The earliest time any machine of the node wants to be woken.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let watchdog = self.watchdog.as_ref().and_then(Watchdog::poll_timeout);
        let reaper = self.reaper.as_ref().and_then(Reaper::poll_timeout);
        let mut at =
            [self.endpoint.poll_timeout(), self.registrar.poll_timeout(), watchdog, reaper].into_iter().flatten().min();
        for c in self.calls.values() {
            let relay = match &c.media {
                CallMedia::Relay { relay, .. } => relay.poll_timeout(),
                CallMedia::Room(_) => None,
            };
            for t in [c.core.poll_timeout(), relay].into_iter().flatten() {
                at = Some(at.map_or(t, |a: Timestamp| a.min(t)));
            }
        }
        for room in self.rooms.values() {
            let t = room.core.poll_timeout();
            at = Some(at.map_or(t, |a: Timestamp| a.min(t)));
        }
        at
    }

    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }

    /// Whether messages wait in mailboxes: the node stalled; call [`step`](Self::step) later.
    pub fn has_work(&self) -> bool {
        !self.work.queues.is_empty()
    }

    /// Runs what waits in the mailboxes (after a stall).
    pub fn step(&mut self, now: Timestamp) {
        self.run(now);
    }

    fn run(&mut self, now: Timestamp) {
        while let Some(work) = self.work.pop() {
            match work {
                Work::Endpoint(input) => {
                    // The glue reads the licence's call limit for every new call.
                    self.endpoint.handle(now, input, &self.watchdog);
                    self.drain_endpoint();
                }
                Work::Calls(start) => self.start_call(now, *start),
                Work::Watchdog(input) => {
                    if let Some(w) = self.watchdog.as_mut() {
                        w.handle(now, input);
                        self.drain_watchdog();
                    }
                }
                Work::Registrar(input) => {
                    self.registrar.handle(now, input);
                    self.drain_registrar(now);
                }
                Work::Reaper(input) => {
                    if let Some(r) = self.reaper.as_mut() {
                        r.handle(now, input);
                        self.drain_reaper();
                    }
                }
                Work::Call(id, input) => {
                    let Some(c) = self.calls.get_mut(&id) else { continue };
                    let refused = match &input {
                        CoreInput::PushFailed { leg } => Some(*leg),
                        _ => None,
                    };
                    c.core.handle(now, input);
                    if let Some(leg) = refused {
                        self.resolve_fork(id, leg, Resolution::Refused);
                    }
                    self.drain_call(now, id);
                    self.settle_forks(now, id);
                }
                Work::Relay(id, input) => self.relay(now, id, input),
                Work::Room(id, input) => self.room(now, id, input),
                Work::Left { number, participant } => self.left(now, &number, participant),
                Work::Push(work) => self.push(now, work),
                Work::AwaitPushContact { aor, prid, push } => self.await_push_contact(now, aor, prid, push),
            }
            if chance(&mut self.work.rng, self.config.stall) {
                break;
            }
        }
    }

    /// The endpoint shell's delivery of the glue's envelopes (the calls actor always takes a
    /// start here: it cannot be gone).
    fn drain_endpoint(&mut self) {
        while let Some(envelope) = self.endpoint.poll_envelope() {
            match envelope {
                Envelope::Net { destination, bytes, .. } => self.outputs.push_back(NodeOutput::Transmit {
                    from: self.config.sip,
                    to: destination,
                    bytes,
                    room: false,
                }),
                Envelope::Registrar(work) => self.work.push(Work::Registrar(work.into())),
                Envelope::Calls(start) => self.work.push(Work::Calls(start)),
                Envelope::Leg { leg, input, .. } => {
                    // To the call actor the leg runs in; a leg gone since is a dead letter.
                    if let Some(&call) = self.leg_calls.get(&leg) {
                        self.work.push(Work::Call(call, CoreInput::Sip(leg, input)));
                    }
                }
                Envelope::Event(EndpointEvent::Malformed { .. }) => self.stats.malformed += 1,
                Envelope::Event(_) | Envelope::LegsRouted(_) => {}
            }
        }
    }

    /// A leg is gone: the endpoint hears of it (the call shells' `leg_down`).
    fn leg_down(&mut self, leg: LegId) {
        self.work.push(Work::Endpoint(GlueInput::Endpoint(EndpointInput::LegDown { leg })));
    }

    /// The watchdog shell's drain: checks go to the service, the verified licence to disk.
    fn drain_watchdog(&mut self) {
        let Some(w) = self.watchdog.as_mut() else { return };
        while let Some(out) = w.poll_output() {
            match out {
                WatchdogOutput::Check { request, serial } => {
                    self.outputs.push_back(NodeOutput::LicenceCheck { request, serial })
                }
                WatchdogOutput::Persist(stored) => self.outputs.push_back(NodeOutput::Write(Job {
                    write: Some(DiskWrite::Entry(Entry::Licence(stored))),
                    deferred: Vec::new(),
                })),
                WatchdogOutput::Event(WatchdogEvent::Checked { .. }) => self.stats.licence_checks_ok += 1,
                WatchdogOutput::Event(WatchdogEvent::CheckFailed { .. }) => self.stats.licence_checks_failed += 1,
                WatchdogOutput::Event(WatchdogEvent::StatusChanged { to, .. }) => {
                    self.stats.licence_changes += 1;
                    self.stats.licence_expired += u64::from(to == "expired");
                }
                WatchdogOutput::Event(_) => {}
            }
        }
    }

    /// The licence service's answer to a `LicenceCheck` (a body, or why there is none).
    pub fn licence_response(
        &mut self,
        now: Timestamp,
        request: u64,
        result: Result<Bytes, pbx_actors::licence::LicenceServiceError>,
    ) {
        self.work.push(Work::Watchdog(WatchdogInput::Response { request, result }));
        self.run(now);
    }

    /// The push service's answer to [`NodeOutput::Push`] `id`.
    pub fn push_answered(&mut self, now: Timestamp, id: u64, outcome: PushOutcome) {
        self.work.push(Work::Push(PushWork::Answered { id, outcome }));
        self.run(now);
    }

    /// The licence as the node holds it: status name, what is in force, the last success.
    pub fn licence(&self, now: Timestamp) -> Option<(&'static str, Effective, Option<Timestamp>)> {
        self.watchdog.as_ref().map(|w| (w.status().name(), w.effective(now), w.last_success()))
    }

    /// The reaper shell's drain: each batch a write whose answer waits for its commit, each
    /// run's audit entry a write.
    fn drain_reaper(&mut self) {
        let Some(r) = self.reaper.as_mut() else { return };
        while let Some(out) = r.poll_output() {
            let job = match out {
                ReaperOutput::Work(batch) => {
                    let rule = batch.rule;
                    Job { write: Some(DiskWrite::Reap(batch)), deferred: vec![Deferred::Reaped { rule }] }
                }
                ReaperOutput::Audit(entry) => {
                    self.stats.reaper_runs += 1;
                    Job { write: Some(DiskWrite::Audit(entry)), deferred: Vec::new() }
                }
            };
            self.outputs.push_back(NodeOutput::Write(job));
        }
    }

    /// The registrar shell's drain, through the product's glue: what may leave at once goes to
    /// the endpoint's mailbox now, the rest waits for the disk behind the writes before it;
    /// failed authentications and blocks go to the security log.
    fn drain_registrar(&mut self, now: Timestamp) {
        let mut events = Vec::new();
        let dispatch =
            glue::dispatch(&mut self.registrar, self.registrar_writes, None, self.config.bugs, |e| events.push(e));
        for event in events {
            match event {
                RegistrarEvent::Registered { .. } => self.stats.registered += 1,
                RegistrarEvent::Expired { .. } => self.stats.expired += 1,
                RegistrarEvent::AuthFailed { source, user } => {
                    self.stats.auth_failed += 1;
                    self.log_security(now, source, Some(user), SecurityEvent::AuthFailed);
                }
                RegistrarEvent::Blocked { source, user, until } => {
                    self.log_security(now, source, Some(user), SecurityEvent::Blocked { until })
                }
                RegistrarEvent::UserLocked { user, source, until } => {
                    self.log_security(now, source, Some(user), SecurityEvent::UserLocked { until })
                }
                RegistrarEvent::PrefixBlocked { prefix, len, until } => {
                    self.log_security(now, prefix, None, SecurityEvent::PrefixBlocked { until, prefix_len: len })
                }
                RegistrarEvent::PushContactRegistered { binding } => self.wake_push_watchers(now, *binding),
                RegistrarEvent::PushRefreshDue { binding } if self.config.push_wait.is_some() => {
                    self.work.push(Work::Push(PushWork::Refresh(*binding)));
                }
                _ => {}
            }
        }
        for (tx, response, authenticated) in dispatch.now {
            self.respond(tx, response, authenticated);
        }
        if let Some(job) = dispatch.now_job {
            self.deliver_registrar(job, None);
        }
        if let Some(mut job) = dispatch.queued {
            let commands = std::mem::take(&mut job.commands);
            let write = (!commands.is_empty()).then(|| {
                self.registrar_writes += 1;
                DiskWrite::Entry(Entry::Registrar(commands.clone()))
            });
            self.outputs
                .push_back(NodeOutput::Write(Job { write, deferred: vec![Deferred::Registrar { job, commands }] }));
        }
    }

    /// A registrar job's answers, to the endpoint's mailbox ([`glue::settle`]: a refused write
    /// turns a 200 into 500).
    fn deliver_registrar(&mut self, job: WriteJob<()>, stored: Option<&Result<(), StoreError>>) {
        let settled = glue::settle(job, stored);
        for (tx, response, authenticated) in settled.responses {
            self.respond(tx, response, authenticated);
        }
        for (tx, route) in settled.routes {
            self.work.push(Work::Endpoint(GlueInput::Endpoint(EndpointInput::Routed { tx, route })));
        }
    }

    fn respond(&mut self, tx: u64, response: Response, authenticated: bool) {
        self.work.push(Work::Endpoint(GlueInput::Endpoint(EndpointInput::RegistrarResponse {
            tx,
            response,
            authenticated,
        })));
    }

    /// The registrar shell's `SecurityLog` report, as a disk write.
    fn log_security(&mut self, at: Timestamp, source: std::net::IpAddr, user: Option<String>, event: SecurityEvent) {
        self.stats.security_logged += 1;
        let entry = SecurityEntry::new(at, source, user, event);
        let write = Some(DiskWrite::SecurityLog(Box::new(entry)));
        self.outputs.push_back(NodeOutput::Write(Job { write, deferred: Vec::new() }));
    }

    /// The calls actor's start: an id and seed, two port pairs, the call machine. No ports:
    /// the call did not start, and its CDR says so as the calls shell's does.
    fn start_call(&mut self, now: Timestamp, start: CallStart) {
        if start.route.room {
            return self.start_room_call(now, start);
        }
        let (id, seed) = self.ids.next(now);
        let ports = match (self.pool.allocate(), self.pool.allocate()) {
            (Some(a), Some(b)) => [a, b],
            (a, b) => {
                let mut tried = 0;
                for port in [a, b].into_iter().flatten() {
                    tried += 1;
                    self.pool.release(port);
                }
                self.stats.calls_refused += 1;
                for leg in start.legs() {
                    self.leg_down(leg);
                }
                let bind = self.config.sip.ip();
                let (in_use, capacity) = (self.pool.in_use(), self.pool.capacity());
                let error = MediaError::NoPorts { bind, tried, in_use, capacity };
                self.write_cdr(not_started(start.cdr(id, now), now, &error));
                return;
            }
        };
        self.stats.calls_started += 1;
        let ip = self.config.sip.ip();
        let media = [SocketAddr::new(ip, ports[0]), SocketAddr::new(ip, ports[1])];
        for (port, side) in ports.iter().zip([Side::A, Side::B]) {
            self.media_ports.insert(*port, MediaPort::Relay(id, side));
        }
        let relay = Relay::new(self.relay_config, seed, now);
        let (a, call_id) = (start.a, start.invite.call_id().unwrap_or_default());
        let forks: BTreeSet<LegId> = start.forks.iter().copied().collect();
        let push_wait = match self.config.push_wait {
            Some(wait) if self.config.sim_bugs.slow_push_timer => Some(wait * 3),
            wait => wait,
        };
        let setup = CallSetup { id, start, media, seed, room: None, srtp: srtp_setup(seed), push_wait };
        let core = CallCore::new(now, self.call_config, setup, Legs::new());
        let media = CallMedia::Relay { relay, ports };
        let (parked, unstarted) = (BTreeMap::new(), forks);
        let forks = unstarted.len();
        let announced = false;
        let call = SimCall { core, media, started: now, recorded: false, a, call_id, parked, unstarted, announced };
        self.calls.insert(id, call);
        self.drain_call(now, id);
        // Every fork parked so far began waiting now (the call's first forks, or a forward's
        // when none of them could be called); a forward's later are told about as they park.
        if let Some(c) = self.calls.get_mut(&id) {
            c.announced = true;
            let only = c.parked.len() == forks;
            for leg in c.parked.keys() {
                let event = ForkEvent::Parked { call: id, leg: *leg, call_id: c.call_id.clone(), only };
                self.outputs.push_back(NodeOutput::Fork(event));
            }
        }
    }

    /// The call shell's start of a call to a room: a seat (or why there is none), then the
    /// call machine, which answers the caller itself (or refuses it with the room's answer).
    fn start_room_call(&mut self, now: Timestamp, start: CallStart) {
        let (id, seed) = self.ids.next(now);
        let (seat, local, answer) = self.admit(now, id, &start);
        if seat.is_some() {
            self.stats.room_seats += 1;
        } else {
            self.stats.room_refused += 1;
        }
        self.stats.calls_started += 1;
        let a = start.a;
        let setup = CallSetup {
            id,
            start,
            media: [local; 2],
            seed,
            room: Some(answer),
            srtp: srtp_setup(seed),
            push_wait: None,
        };
        let core = CallCore::new(now, self.call_config, setup, Legs::new());
        let (call_id, parked, unstarted) = (String::new(), BTreeMap::new(), BTreeSet::new());
        let media = CallMedia::Room(seat);
        let call =
            SimCall { core, media, started: now, recorded: false, a, call_id, parked, unstarted, announced: true };
        self.calls.insert(id, call);
        self.drain_call(now, id);
    }

    /// The conferences registry's admission (`ConferencesState::admit`, without the licence
    /// gate): the room is opened for its first caller and closed again if that caller is
    /// refused; the address is what the call's SDP names (port 0 when refused).
    fn admit(&mut self, now: Timestamp, call: u64, start: &CallStart) -> (Option<Seat>, SocketAddr, RoomAnswer) {
        let nowhere = SocketAddr::new(self.config.sip.ip(), 0);
        let number = start.route.callee.clone();
        let Some(decl) = self.config.rooms.iter().find(|d| d.number == number).cloned() else {
            return (None, nowhere, RoomAnswer::Refused { code: 404, reason: "Not Found".into() });
        };
        let room = match self.active.get(&number) {
            Some(active) => active.room,
            None => {
                let room = self.next_room;
                self.next_room += 1;
                let seed = self.rooms_seed ^ self.next_participant.rotate_left(17);
                let core = RoomCore::new(decl, self.config.mixer, self.config.rtp_timeout, now, seed);
                let r = SimRoom { core, ports: BTreeMap::new(), calls: BTreeMap::new(), queued: BTreeMap::new() };
                self.rooms.insert(room, r);
                self.active.insert(number.clone(), Active { room, seats: BTreeSet::new() });
                self.stats.rooms_opened += 1;
                room
            }
        };
        let participant = self.next_participant;
        self.next_participant += 1;
        let caller = start.route.caller.clone();
        match self.seat(now, room, participant, call, caller, start.source.ip()) {
            Ok(port) => {
                if let Some(active) = self.active.get_mut(&number) {
                    active.seats.insert(participant);
                }
                let local = SocketAddr::new(self.config.sip.ip(), port);
                (Some(Seat { room, participant }), local, RoomAnswer::Admitted)
            }
            Err(Refused { code, reason }) => {
                if self.active.get(&number).is_some_and(|a| a.seats.is_empty()) {
                    // Opened for this caller, who did not get in.
                    self.active.remove(&number);
                    self.stop_room(now, room);
                }
                (None, nowhere, RoomAnswer::Refused { code, reason })
            }
        }
    }

    /// The room actor's admission (`RoomState::admit`): the room's own rules first (a refused
    /// caller costs no port), then a port pair, then the room core.
    fn seat(
        &mut self,
        now: Timestamp,
        room: u64,
        participant: u64,
        call: u64,
        caller: String,
        source: std::net::IpAddr,
    ) -> Result<u16, Refused> {
        let Some(r) = self.rooms.get_mut(&room) else {
            return Err(Refused::new(500, "Conference room did not answer"));
        };
        r.core.admissible()?;
        let Some(port) = self.pool.allocate() else { return Err(Refused::new(503, "No RTP ports free")) };
        r.ports.insert(participant, port);
        r.calls.insert(participant, call);
        self.media_ports.insert(port, MediaPort::Room(room, participant));
        if let Err(refused) = r.core.admit(now, participant, caller, source) {
            self.release(room, participant);
            return Err(refused);
        }
        self.drain_room(room);
        Ok(port)
    }

    /// A participant's port goes back to the pool.
    fn release(&mut self, room: u64, participant: u64) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.calls.remove(&participant);
        r.queued.remove(&participant);
        if let Some(port) = r.ports.remove(&participant) {
            self.media_ports.remove(&port);
            self.pool.release(port);
        }
    }

    /// A message for a room's actor; a room closed since is a dead letter.
    fn room(&mut self, now: Timestamp, id: u64, input: RoomInput) {
        let Some(room) = self.rooms.get_mut(&id) else { return };
        match input {
            RoomInput::Peer { participant, peer } => room.core.peer(participant, peer),
            RoomInput::Leave { participant } => room.core.leave(now, participant),
            RoomInput::Packet { participant, from, datagram } => {
                if let Some(queued) = room.queued.get_mut(&participant) {
                    *queued = queued.saturating_sub(1);
                }
                room.core.packet(now, participant, from, &datagram)
            }
            RoomInput::Tick => room.core.handle_timeout(now),
        }
        self.drain_room(id);
    }

    /// The room shell's drain: packets out of the participants' ports, seat events to the
    /// calls, a participant gone gives its port back and tells the registry.
    fn drain_room(&mut self, id: u64) {
        let ip = self.config.sip.ip();
        loop {
            let Some(room) = self.rooms.get_mut(&id) else { return };
            let Some(out) = room.core.poll_output() else { return };
            match out {
                RoomCoreOutput::Send { participant, to, datagram } => {
                    if let Some(&port) = room.ports.get(&participant) {
                        let from = SocketAddr::new(ip, port);
                        let bytes = Bytes::from(datagram);
                        self.outputs.push_back(NodeOutput::Transmit { from, to, bytes, room: true });
                    }
                }
                RoomCoreOutput::Seat { participant, event } => {
                    if let Some(&call) = room.calls.get(&participant) {
                        let input = match event {
                            SeatEvent::Hangup => CoreInput::Hangup,
                            SeatEvent::Inactive => CoreInput::MediaInactive { side: Side::A },
                        };
                        self.work.push(Work::Call(call, input));
                    }
                }
                RoomCoreOutput::Gone { participant, record } => {
                    self.release(id, participant);
                    self.stats.participations += 1;
                    self.work.push(Work::Left { number: record.room.clone(), participant });
                    // The node's sink: the record through the replicated store, like a CDR.
                    let write = Some(DiskWrite::Entry(Entry::Participations(vec![record])));
                    self.outputs.push_back(NodeOutput::Write(Job { write, deferred: Vec::new() }));
                }
                RoomCoreOutput::AuthFailure { source, caller } => {
                    // Counted by the registrar like a wrong password (the node's sink).
                    self.stats.room_pin_failures += 1;
                    self.work.push(Work::Registrar(RegistrarInput::AuthFailure { source, user: caller }));
                }
                RoomCoreOutput::Overruns(n) => self.stats.mixer_overruns += n,
                RoomCoreOutput::Foreign { .. } => self.stats.room_foreign += 1,
            }
        }
    }

    /// The registry hears a participant left (`ConferencesState::left`): the room closes with
    /// its last seat.
    fn left(&mut self, now: Timestamp, number: &str, participant: u64) {
        let Some(active) = self.active.get_mut(number) else { return };
        active.seats.remove(&participant);
        if active.seats.is_empty() {
            let room = active.room;
            self.active.remove(number);
            self.stop_room(now, room);
        }
    }

    /// The room's actor stops (`post_stop`): whoever is still in leaves, and the room goes.
    fn stop_room(&mut self, now: Timestamp, id: u64) {
        let Some(room) = self.rooms.get_mut(&id) else { return };
        room.core.close(now);
        self.drain_room(id);
        self.rooms.remove(&id);
    }

    /// The call shell takes its seat back (`seat.take()`): the room hears it left.
    fn leave_room(&mut self, seat: Option<Seat>) {
        if let Some(Seat { room, participant }) = seat
            && !self.config.sim_bugs.stuck_participant
        {
            self.work.push(Work::Room(room, RoomInput::Leave { participant }));
        }
    }

    /// The call shell's drain: SIP to the endpoint, legs up and down, media to the relay, the
    /// CDR (with the relay's counters) to disk.
    fn drain_call(&mut self, now: Timestamp, id: u64) {
        loop {
            let Some(c) = self.calls.get_mut(&id) else { return };
            let Some(out) = c.core.poll_output() else { return };
            match out {
                CoreOutput::Sip(leg, out) => {
                    self.work.push(Work::Endpoint(GlueInput::Endpoint(EndpointInput::FromLeg { leg, out })))
                }
                CoreOutput::LegUp(leg) => {
                    c.unstarted.remove(&leg);
                    if c.parked.contains_key(&leg) {
                        // A woken fork: its INVITE goes to the fresh binding now.
                        self.stats.forks_woken += 1;
                        self.resolve_fork(id, leg, Resolution::Invited);
                    }
                    self.leg_calls.insert(leg, id);
                    // The leg is up: what waited for it in the endpoint comes now.
                    self.work.push(Work::Endpoint(GlueInput::LegUp { leg, to: () }));
                }
                CoreOutput::LegDown(leg) => {
                    // A fork that waited for a push and never got a leg (`CallOutput::ForkGone`).
                    let never_started = c.unstarted.remove(&leg);
                    self.leg_calls.remove(&leg);
                    if never_started && self.config.sim_bugs.forgotten_fork {
                        // Injected: the product before this was fixed (docs/ARCHITECTURE.md,
                        // simulator, "Found with push"); the fork stays in the endpoint's table.
                        c.unstarted.insert(leg);
                        continue;
                    }
                    self.leg_down(leg);
                }
                CoreOutput::ConfigureMedia { side, peer } => match &c.media {
                    CallMedia::Relay { .. } => self.work.push(Work::Relay(id, RelayInput::Configure { side, peer })),
                    CallMedia::Room(Some(Seat { room, participant })) => {
                        let input = RoomInput::Peer { participant: *participant, peer };
                        self.work.push(Work::Room(*room, input));
                    }
                    CallMedia::Room(None) => {}
                },
                // The simulated phones speak plain RTP over UDP (SRTP is never agreed).
                CoreOutput::MediaKeys { .. } | CoreOutput::Notice { .. } => {}
                CoreOutput::Push { leg, binding, caller, callee } => {
                    // The call shell's `PushPort::wake`: a message to the push dispatch.
                    c.parked.insert(leg, now);
                    if c.announced {
                        // A forward's fork: the caller heard its first phones ring.
                        let event = ForkEvent::Parked { call: id, leg, call_id: c.call_id.clone(), only: false };
                        self.outputs.push_back(NodeOutput::Fork(event));
                    }
                    self.work.push(Work::Push(PushWork::Wake { call: id, leg, binding: *binding, caller, callee }));
                }
                CoreOutput::Record(cdr) => {
                    if !c.recorded {
                        c.recorded = true;
                        if !c.parked.is_empty() && cdr.disposition == pbx_actors::cdr::Disposition::NoAnswer {
                            self.stats.push_timeouts += 1;
                        }
                        let waiting: Vec<LegId> = c.parked.keys().copied().collect();
                        for leg in waiting {
                            self.resolve_fork(id, leg, Resolution::Ended);
                        }
                        let Some(c) = self.calls.get_mut(&id) else { return };
                        let mut cdr = *cdr;
                        cdr.media = match &mut c.media {
                            CallMedia::Relay { relay, .. } => {
                                [relay.stats(Side::A), relay.stats(Side::B)].map(MediaCounters::from)
                            }
                            CallMedia::Room(_) => Default::default(),
                        };
                        // The call is over for the room too (its legs may still be finishing a BYE).
                        let seat = match &mut c.media {
                            CallMedia::Room(seat) if !self.config.sim_bugs.stuck_participant => seat.take(),
                            _ => None,
                        };
                        self.leave_room(seat);
                        self.write_cdr(cdr);
                    }
                }
                CoreOutput::Transfer { attempt, number, transferee, .. } => {
                    // The call shell's `TransferPort`: the registrar answers at once.
                    let result = self.registrar.transfer_route(&transferee, &number).map(|route| {
                        let legs = route.contacts.iter().map(|_| self.endpoint_leg()).collect();
                        (Box::new(route), legs)
                    });
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.core.handle(now, CoreInput::TransferRoute { attempt, result });
                    }
                }
                CoreOutput::Segment(cdr) => self.write_cdr(*cdr),
                CoreOutput::Park { attempt, .. } => {
                    // Not in the simulated workload yet: no orbit is given.
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.core.handle(now, CoreInput::Parked { attempt, ok: false });
                    }
                }
                CoreOutput::Unparked => {}
                CoreOutput::Replace { attempt, .. } => {
                    // Not in the simulated workload yet: refused as a node without it would.
                    let result = Err((403, "Forbidden (attended transfer is not simulated)".into()));
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.core.handle(now, CoreInput::Replaced { attempt, result });
                    }
                }
                // Only after a `Replaced` that succeeded, which the simulator never gives.
                CoreOutput::HandOver { machine, .. } => self.leg_down(machine.id()),
                CoreOutput::Over => self.end_call(id),
            }
        }
    }

    /// A fresh leg id for a transfer's fork, as the call shell draws one.
    fn endpoint_leg(&mut self) -> LegId {
        let (high, low) = (splitmix64(&mut self.work.rng), splitmix64(&mut self.work.rng));
        LegId(((high as u128) << 64) | low as u128)
    }

    /// The call actor stops: its remaining legs go (reported down) and its ports return.
    fn end_call(&mut self, id: u64) {
        let waiting: Vec<LegId> = self.calls.get(&id).map(|c| c.parked.keys().copied().collect()).unwrap_or_default();
        for leg in waiting {
            self.resolve_fork(id, leg, Resolution::Ended);
        }
        let Some(c) = self.calls.remove(&id) else { return };
        for leg in c.core.legs().keys() {
            self.leg_calls.remove(leg);
            self.leg_down(*leg);
        }
        match c.media {
            CallMedia::Relay { ports, .. } => {
                for port in ports {
                    self.media_ports.remove(&port);
                    self.pool.release(port);
                }
            }
            // The call actor stops: its seat is dropped, which leaves the room.
            CallMedia::Room(seat) => self.leave_room(seat),
        }
    }

    // ---- Push (RFC 8599): the push dispatch and the registrar shell's watches ----

    /// The push dispatch actor: a call's wake (refused beyond [`PUSHES_IN_FLIGHT_MAX`]: the
    /// fork fails at once) or a refresh push; the service's answer to a task.
    fn push(&mut self, now: Timestamp, work: PushWork) {
        match work {
            PushWork::Wake { call, leg, binding, caller, callee } => {
                self.prune_pushes(now);
                let params = PushContact::params_of(&binding.contact);
                let Some(params) = params.filter(|_| self.pushes.len() < PUSHES_IN_FLIGHT_MAX) else {
                    self.stats.pushes_refused += 1;
                    return self.work.push(Work::Call(call, CoreInput::PushFailed { leg }));
                };
                let id = self.next_push;
                self.next_push += 1;
                self.stats.pushes += 1;
                // The watch first: the phone may register before the service answers.
                let (aor, prid) = (binding.aor.clone(), params.prid.clone());
                self.work.push(Work::AwaitPushContact { aor, prid, push: id });
                self.send_push(id, &binding, &params, true);
                let task = PushTask {
                    fork: Some((call, leg)),
                    binding,
                    params,
                    caller,
                    callee,
                    at: now,
                    until: None,
                    registered: None,
                };
                self.pushes.insert(id, task);
            }
            PushWork::Refresh(binding) => {
                self.prune_pushes(now);
                let params = PushContact::params_of(&binding.contact);
                let Some(params) = params.filter(|_| self.pushes.len() < PUSHES_IN_FLIGHT_MAX) else {
                    self.stats.pushes_refused += 1;
                    return;
                };
                let id = self.next_push;
                self.next_push += 1;
                self.stats.refresh_pushes += 1;
                self.send_push(id, &binding, &params, false);
                // A refresh push is recorded with no caller, the woken user as the callee.
                let callee = binding.aor.clone();
                let task = PushTask {
                    fork: None,
                    binding,
                    params,
                    caller: String::new(),
                    callee,
                    at: now,
                    until: None,
                    registered: None,
                };
                self.pushes.insert(id, task);
            }
            PushWork::Answered { id, outcome } => self.push_outcome(now, id, outcome),
        }
    }

    fn send_push(&mut self, id: u64, binding: &Binding, params: &PushParams, call: bool) {
        self.outputs.push_back(NodeOutput::Push(PushSend {
            id,
            aor: binding.aor.clone(),
            provider: params.provider.clone(),
            param: params.param.clone(),
            prid: params.prid.clone(),
            call,
        }));
    }

    /// A push task hears its service: the push is recorded (category `push-records`, through
    /// the replicated store); a void token's bindings go and its fork fails; a delivered push
    /// waits the push wait for its phone (which may have registered already).
    fn push_outcome(&mut self, now: Timestamp, id: u64, outcome: PushOutcome) {
        let Some(task) = self.pushes.get_mut(&id) else { return };
        let label = match outcome {
            PushOutcome::Delivered => "delivered",
            PushOutcome::Unregistered => "unregistered: UNREGISTERED",
        };
        let record = PushRecord {
            id,
            at: task.at,
            user: task.binding.aor.clone(),
            caller: task.caller.clone(),
            callee: task.callee.clone(),
            provider: task.params.provider.clone(),
            device: task.params.prid.clone(),
            source: task.binding.source,
            outcome: label.into(),
        };
        self.stats.push_records += 1;
        let write = Some(DiskWrite::Entry(Entry::PushRecords(vec![record])));
        self.outputs.push_back(NodeOutput::Write(Job { write, deferred: Vec::new() }));
        let fork = task.fork;
        match (outcome, fork) {
            (PushOutcome::Unregistered, _) => {
                let (aor, prid) = (task.binding.aor.clone(), task.params.prid.clone());
                self.pushes.remove(&id);
                self.work.push(Work::Registrar(RegistrarInput::DropPushToken { aor, prid }));
                if let Some((call, leg)) = fork {
                    self.work.push(Work::Call(call, CoreInput::PushFailed { leg }));
                }
            }
            (PushOutcome::Delivered, Some((call, leg))) => {
                let wait = self.config.push_wait.unwrap_or_default();
                task.until = Some(now + wait);
                if let Some(binding) = task.registered.take() {
                    self.pushes.remove(&id);
                    self.work.push(Work::Call(call, CoreInput::Woken { leg, binding: Box::new(binding) }));
                }
            }
            (PushOutcome::Delivered, None) => {
                self.pushes.remove(&id);
            }
        }
    }

    /// Tasks whose wait is over are gone (the product's end their `timeout`).
    fn prune_pushes(&mut self, now: Timestamp) {
        self.pushes.retain(|_, task| task.until.is_none_or(|until| now <= until));
    }

    /// The registrar shell's `await_push_contact`: at most [`PUSH_WATCHERS_MAX`] watches, those
    /// of finished tasks let go first when it is full.
    fn await_push_contact(&mut self, now: Timestamp, aor: String, prid: String, push: u64) {
        let waiting: usize = self.push_watchers.values().map(Vec::len).sum();
        if waiting >= PUSH_WATCHERS_MAX {
            self.prune_pushes(now);
            let pushes = &self.pushes;
            self.push_watchers.retain(|_, ids| {
                ids.retain(|id| pushes.contains_key(id));
                !ids.is_empty()
            });
            if self.push_watchers.values().map(Vec::len).sum::<usize>() >= PUSH_WATCHERS_MAX {
                self.stats.watches_refused += 1;
                return;
            }
        }
        self.push_watchers.entry((aor, prid)).or_default().push(push);
    }

    /// A pushed phone registered (`PushContactRegistered`): every task watching for it gets
    /// the binding; a task the service has answered wakes its fork now, one not yet answered
    /// when it is.
    fn wake_push_watchers(&mut self, now: Timestamp, binding: Binding) {
        let Some(params) = PushContact::params_of(&binding.contact) else { return };
        let Some(ids) = self.push_watchers.remove(&(binding.aor.clone(), params.prid)) else { return };
        for id in ids {
            let Some(task) = self.pushes.get_mut(&id) else { continue };
            match (task.until, task.fork) {
                (None, _) => task.registered = Some(binding.clone()),
                (Some(until), Some((call, leg))) if now <= until => {
                    self.pushes.remove(&id);
                    self.work.push(Work::Call(call, CoreInput::Woken { leg, binding: Box::new(binding.clone()) }));
                }
                _ => {}
            }
        }
    }

    /// A parked fork's wait is over: the checkers hear how.
    fn resolve_fork(&mut self, call: u64, leg: LegId, how: Resolution) {
        let Some(c) = self.calls.get_mut(&call) else { return };
        if c.parked.remove(&leg).is_some() {
            if how == Resolution::Refused {
                self.stats.forks_refused += 1;
            }
            self.outputs.push_back(NodeOutput::Fork(ForkEvent::Resolved { call, leg, how }));
        }
    }

    /// After the call handled an input: forks the call no longer waits for. An answered call
    /// forgets its waiting forks; with another fork ringing, a fork past its timer has ended
    /// once the call asks to be woken no sooner than now (see [`Resolution::Ended`]); a fork
    /// reported gone without a leg (the call forwarded) has ended.
    fn settle_forks(&mut self, now: Timestamp, id: u64) {
        let Some(c) = self.calls.get(&id) else { return };
        if c.parked.is_empty() {
            return;
        }
        let wait = self.config.push_wait.unwrap_or_default();
        let answered = c.core.call().answered_legs().is_some();
        let ringing = c.core.legs().iter().any(|(leg, l)| *leg != c.a && !c.parked.contains_key(leg) && !l.is_done());
        let quiet = c.core.call().poll_timeout().is_none_or(|t| t > now);
        // A fork the call let go without a leg (`ForkGone`: a forward took the call elsewhere)
        // has ended its wait too.
        let ended: Vec<LegId> = c
            .parked
            .iter()
            .filter(|(leg, at)| answered || (ringing && quiet && **at + wait <= now) || !c.unstarted.contains(*leg))
            .map(|(leg, _)| *leg)
            .collect();
        for leg in ended {
            self.resolve_fork(id, leg, Resolution::Ended);
        }
    }

    fn relay(&mut self, now: Timestamp, id: u64, input: RelayInput) {
        let Some(c) = self.calls.get_mut(&id) else { return };
        let CallMedia::Relay { relay, ports } = &mut c.media else { return };
        relay.handle(now, input);
        let ip = self.config.sip.ip();
        while let Some(out) = relay.poll_output() {
            match out {
                RelayOutput::Transmit { side, kind, destination, bytes } => {
                    let port = ports[side.index()] + u16::from(kind == PacketKind::Rtcp);
                    self.outputs.push_back(NodeOutput::Transmit {
                        from: SocketAddr::new(ip, port),
                        to: destination,
                        bytes,
                        room: false,
                    })
                }
                RelayOutput::Inactive { side } => self.work.push(Work::Call(id, CoreInput::MediaInactive { side })),
            }
        }
    }

    fn write_cdr(&mut self, cdr: Cdr) {
        self.stats.cdrs_written += 1;
        self.outputs.push_back(NodeOutput::Write(Job {
            write: Some(DiskWrite::Entry(Entry::Cdrs(vec![cdr]))),
            deferred: Vec::new(),
        }));
    }

    // ---- What the checkers look at ----

    /// Calls in progress: (id, when it started, its state, its answered legs if any).
    pub fn calls(&self) -> impl Iterator<Item = CallView<'_>> {
        self.calls.iter().map(|(id, c)| CallView {
            id: *id,
            started: c.started,
            state: c.core.call().state(),
            answered: c.core.call().answered_legs().map(|(a, b)| [a, b]),
            legs: c.core.legs(),
        })
    }

    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Legs the calls hold — leg machines alive, and forks of calls in progress that have no
    /// machine yet (waiting for a push) — and legs the endpoint still routes to.
    pub fn leg_counts(&self) -> (usize, usize) {
        let unstarted: usize = self.calls.values().map(|c| c.unstarted.len()).sum();
        (self.leg_calls.len() + unstarted, self.endpoint.machine().live_legs())
    }

    /// Legs in the endpoint glue's table (up, or starting with a queue).
    pub fn legs_in_table(&self) -> usize {
        self.endpoint.routed_legs()
    }

    /// Port pairs leased from the pool, and pairs the running calls' relays and the rooms'
    /// participants hold.
    pub fn ports_in_use(&self) -> (usize, usize) {
        let relays = self.calls.values().filter(|c| matches!(c.media, CallMedia::Relay { .. })).count();
        let seats: usize = self.rooms.values().map(|r| r.ports.len()).sum();
        (self.pool.in_use(), relays * 2 + seats)
    }

    /// The rooms in use, for the checkers: who is in each, by every account the node keeps.
    pub fn rooms(&self) -> Vec<RoomState> {
        self.rooms
            .iter()
            .map(|(id, room)| {
                let seats = self.active.values().find(|a| a.room == *id).map(|a| a.seats.clone());
                let seated = self
                    .calls
                    .values()
                    .filter_map(|c| match c.media {
                        CallMedia::Room(Some(seat)) if seat.room == *id => Some(seat.participant),
                        _ => None,
                    })
                    .collect();
                RoomState {
                    number: room.core.number().to_owned(),
                    participants: room.core.participants().collect(),
                    seats,
                    ported: room.ports.keys().copied().collect(),
                    seated,
                }
            })
            .collect()
    }

    /// Calls holding a seat in a room the node no longer runs.
    pub fn seats_without_room(&self) -> usize {
        self.calls
            .values()
            .filter(|c| matches!(c.media, CallMedia::Room(Some(seat)) if !self.rooms.contains_key(&seat.room)))
            .count()
    }

    pub fn transactions(&self) -> (usize, Option<Timestamp>) {
        (self.endpoint.machine().transactions(), self.endpoint.machine().oldest_transaction())
    }

    pub fn describe_oldest_transaction(&self) -> String {
        self.endpoint.machine().describe_oldest_transaction().unwrap_or_default()
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.registrar.bindings()
    }
}

/// What a checker sees of one room in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomState {
    pub number: String,
    /// Participants in its core: in the room or at its PIN prompt.
    pub participants: BTreeSet<u64>,
    /// Its seats in the conferences registry; `None` when the registry does not know it.
    pub seats: Option<BTreeSet<u64>>,
    /// Participants holding a port.
    pub ported: BTreeSet<u64>,
    /// Participants whose call is up and holds their seat.
    pub seated: BTreeSet<u64>,
}

/// What a checker sees of one call.
pub struct CallView<'a> {
    pub id: u64,
    pub started: Timestamp,
    pub state: &'static str,
    pub answered: Option<[LegId; 2]>,
    legs: &'a Legs,
}

impl CallView<'_> {
    /// Whether this leg's machine is there and its dialog not over.
    pub fn leg_live(&self, leg: LegId) -> bool {
        self.legs.get(&leg).is_some_and(|l| !l.is_done())
    }
}

/// 256 bits from the run's seed stream, for a machine that takes a CSPRNG key.
fn seed32(rng: &mut u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        chunk.copy_from_slice(&splitmix64(rng).to_le_bytes());
    }
    seed
}

/// A call's SRTP set-up in the simulation: default policies, key bytes from the call's seed
/// (the simulated phones are on UDP, so no key is ever used; the product draws them from the OS).
fn srtp_setup(seed: u64) -> pbx_actors::call::SrtpSetup {
    let mut rng = seed ^ 0x5352_5450_4b45_5953;
    let mut keys = [[0u8; pbx_actors::media::srtp::KEY_SALT_BYTES]; 2];
    for key in &mut keys {
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&splitmix64(&mut rng).to_le_bytes()[..chunk.len()]);
        }
    }
    pbx_actors::call::SrtpSetup { policy: Default::default(), keys }
}

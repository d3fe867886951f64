//! The world: one event queue on virtual time, the network between phones and nodes, the
//! nodes' disks, the phones, the faults — and the checkers watching it all.
//!
//! Deterministic by construction: one thread, one queue ordered by (time, sequence number),
//! every random draw from generators seeded by the run's seed (one stream per purpose, so a
//! change in how phones behave does not shift when the network loses packets), and no
//! iteration over hash maps. The trace hash folds every event in the order it happens; the
//! same seed gives the same hash.

use crate::attacker::{AttackKind, AttackStats, Attacker, AttackerConfig, AttackerOutput, Campaign};
use crate::check::{Bounds, Checker, Violation};
use crate::disk::Disk;
use crate::licence::{self, LicenceHost, LicenceModel};
use crate::node::DiskWrite;
use crate::node::{Job, NodeConfig, NodeOutput, NodeStats, PushOutcome, SimNode};
use crate::options::{Options, format_duration};
use crate::phone::{
    Behaviour, PUSH_PORTS, Phone, PhoneConfig, PhoneEvent, PhoneInput, PhoneOutput, PushApp, RoomBehaviour,
};
use crate::proxy::{ProxyReport, SimProxy};
use crate::push::{PushReport, PushService};
use crate::scanner::{Scanner, ScannerOutput};
use bytes::Bytes;
use pbx_actors::Timestamp;
use pbx_actors::conference::core::RoomDecl;
use pbx_actors::conference::room::RoomConfig;
use pbx_actors::entry::Entry;
use pbx_actors::media::mixer::MixerConfig;
use pbx_actors::privacy::reaper::Action;
use pbx_actors::registrar::{Algorithm, RegistrarConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Simulated time starts on Monday 2026-01-05 00:00 UTC (as Unix µs, like the node's clock).
pub const ORIGIN: Timestamp = Timestamp::from_secs(1_767_571_200);
const DAY_S: u64 = 86_400;
/// Wake-ups of one machine at one instant beyond which the run is stuck in a loop.
const SAME_INSTANT_WAKES_MAX: u32 = 10_000;
const NO_ANSWER: Duration = Duration::from_secs(30);
const RTP_TIMEOUT: Duration = Duration::from_secs(60);

/// What the run did, for the summary.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub simulated: Duration,
    pub wall: Duration,
    pub events: u64,
    pub trace_hash: u64,
    pub phones: usize,
    pub calls_dialled: u64,
    pub calls_answered: u64,
    pub calls_failed: u64,
    pub registrations: u64,
    pub cdrs: usize,
    pub node: NodeStats,
    pub faults: Faults,
    pub privacy: PrivacyReport,
    /// What the softphone proxy recorded and deleted.
    pub proxy: ProxyReport,
    /// What the attacker did.
    pub attack: AttackStats,
    /// The most transactions the node's endpoint held at a check.
    pub transactions_max: usize,
    /// Meetings held, phones told to dial a room, and what they heard: frames from rooms, and
    /// of those the frames judged for a lone talker.
    pub meetings: u64,
    pub room_joins: u64,
    /// Participants that vanished rather than hang up.
    pub room_vanished: u64,
    pub room_frames: u64,
    pub lone_talker_frames: u64,
    /// The push service's account, and how the forks that waited for a push ended.
    pub push: PushReport,
    pub forks: crate::check::ForkCounts,
    /// What the users did with call forwarding, and what the checkers judged of it.
    pub forwarding: ForwardingReport,
    pub forwarded: crate::check::ForwardCounts,
    pub checks: u64,
    pub violations: Vec<Violation>,
    /// Every violation by invariant (only the first [`crate::check::VIOLATIONS_MAX`] are kept
    /// in `violations`).
    pub violated: BTreeMap<&'static str, u64>,
}

/// What the office's users did with call forwarding (their feature codes, and pbx's answers).
#[derive(Clone, Debug, Default)]
pub struct ForwardingReport {
    /// Feature codes dialled, and pbx's answers: 603 (done), 403, 404, anything else (none,
    /// or one for overload).
    pub codes: u64,
    pub confirmed: u64,
    pub refused: u64,
    pub unknown: u64,
    pub unanswered: u64,
    /// Loops set up on purpose (two or three phones, each always to the next), and codes
    /// mistyped on purpose.
    pub loops: u64,
    pub mistakes: u64,
    /// The most phones forwarding at once, as their users meant it.
    pub users_max: u64,
}

/// What the retention reaper did and what the intruder tried.
#[derive(Clone, Debug, Default)]
pub struct PrivacyReport {
    /// Records each rule changed: (category, action) → records.
    pub reaped: BTreeMap<(&'static str, Action), u64>,
    /// Password-guessing bursts, their REGISTERs, and the answers: 401, 403 (blocked).
    pub scans: u64,
    pub scan_registers: u64,
    pub scan_rejected: u64,
    pub scan_blocked: u64,
}

impl PrivacyReport {
    /// Records the rule for `category` and `action` changed.
    pub fn records(&self, category: &str, action: Action) -> u64 {
        self.reaped.iter().filter(|((c, a), _)| *c == category && *a == action).map(|(_, n)| n).sum()
    }
}

/// Faults injected.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub datagrams: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub cut_off: u64,
    pub partitions: u64,
    pub crashes: u64,
    pub writes_lost: u64,
    pub phones_away: u64,
    pub licence_outages: u64,
    pub licence_tampered: u64,
}

impl Faults {
    pub fn total(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.reordered
            + self.cut_off
            + self.partitions
            + self.crashes
            + self.phones_away
            + self.licence_outages
            + self.licence_tampered
    }
}

impl Report {
    /// Simulated seconds per wall-clock second.
    pub fn speedup(&self) -> f64 {
        self.simulated.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

/// `3d 04:05:06`.
pub fn format_elapsed(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}d {:02}:{:02}:{:02}", s / DAY_S, s % DAY_S / 3600, s % 3600 / 60, s % 60)
}

/// The command that replays a run.
pub fn replay_command(options: &Options, extra: &str) -> String {
    format!(
        "pbx-sim --seed {} --duration {} --phones {}{extra}",
        options.seed,
        format_duration(options.duration),
        options.workload.phones
    )
}

/// A clock that runs `ppm` parts per million fast (or slow, if negative) against virtual time.
#[derive(Clone, Copy, Debug)]
struct Clock {
    ppm: i64,
    /// Set wrong by this much from the start (a node whose clock is skewed).
    offset_us: i64,
}

impl Clock {
    fn local(self, global: Timestamp) -> Timestamp {
        let elapsed = global.0.saturating_sub(ORIGIN.0) as i128;
        let local = ORIGIN.0 as i128 + self.offset_us as i128 + elapsed + elapsed * self.ppm as i128 / 1_000_000;
        Timestamp(local.max(0) as u64)
    }

    /// The earliest virtual time at which this clock reads `local` or later.
    fn global(self, local: Timestamp) -> Timestamp {
        let want = local.0 as i128 - ORIGIN.0 as i128 - self.offset_us as i128;
        let mut g = (want * 1_000_000 / (1_000_000 + self.ppm as i128)).max(0) as u64;
        while self.local(Timestamp(ORIGIN.0 + g)) < local {
            g += 1;
        }
        Timestamp(ORIGIN.0 + g)
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Bytes,
        /// Sent by a conference room (from a participant's port): what the checkers judge as
        /// room audio. Not part of the trace (the bytes and addresses are).
        room: bool,
    },
    NodeWake {
        node: usize,
    },
    NodeStep {
        node: usize,
        incarnation: u32,
    },
    Commit {
        node: usize,
        incarnation: u32,
    },
    PhoneWake {
        phone: usize,
    },
    Dial {
        phone: usize,
    },
    GoAway {
        phone: usize,
    },
    HangUp {
        phone: usize,
        call_id: String,
    },
    ComeBack {
        phone: usize,
    },
    /// `mid_write`: the crash was aimed at the moment a write is in flight.
    Crash {
        node: usize,
        mid_write: bool,
    },
    Restart {
        node: usize,
    },
    PartitionStart,
    PartitionEnd {
        phones: Vec<usize>,
    },
    Check,
    Drain,
    /// A node's licence check reaches the service.
    LicenceRequest {
        node: usize,
        incarnation: u32,
        request: u64,
        serial: String,
    },
    /// The service's answer reaches the node; `genuine`: a success not tampered with.
    LicenceResponse {
        node: usize,
        incarnation: u32,
        request: u64,
        result: Result<Bytes, pbx_actors::licence::LicenceServiceError>,
        genuine: bool,
    },
    /// The service goes down: for a random time, or for `hours`.
    LicenceOutage {
        hours: Option<u64>,
    },
    /// A password guesser starts a burst.
    ScanStart,
    ScannerWake,
    /// The attacker starts a campaign of this kind.
    AttackStart {
        kind: AttackKind,
    },
    AttackerWake,
    /// A meeting starts: phones are invited to a room.
    Meeting,
    /// A phone dials room `room` (an index into the options' rooms) and stays this long.
    JoinRoom {
        phone: usize,
        room: usize,
        stay: Duration,
    },
    /// The softphone proxy's ledger asked to be woken (its reaper).
    ProxyWake,
    /// The push service's answer to push `id` reaches the node (`phone`: the token's owner).
    PushAnswer {
        node: usize,
        incarnation: u32,
        id: u64,
        outcome: PushOutcome,
        phone: Option<usize>,
    },
    /// A push reaches a phone's app.
    PushReaches {
        phone: usize,
    },
    /// A user sets or clears call forwarding (the next change is drawn now).
    ForwardChange,
    /// A phone dials a feature code (if it is idle by then; else `undo` puts the plan back).
    ForwardCode {
        phone: usize,
        code: String,
        undo: Undo,
    },
}

/// What a feature code that could not be dialled leaves in the users' plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Undo {
    Nothing,
    /// The phone was to forward: it does not.
    Unset,
    /// The phone was to stop forwarding: it still does.
    Reset(Planned),
}

/// What a user means its phone to forward (one kind per phone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Planned {
    Always,
    Busy,
    NoAnswer,
}

impl Planned {
    /// The code that switches it off.
    fn off(self) -> &'static str {
        match self {
            Planned::Always => "%2321%23",
            Planned::Busy => "%2367%23",
            Planned::NoAnswer => "%2361%23",
        }
    }
}

impl Event {
    fn tag(&self) -> u8 {
        match self {
            Event::Deliver { .. } => 1,
            Event::NodeWake { .. } => 2,
            Event::Commit { .. } => 3,
            Event::NodeStep { .. } => 14,
            Event::PhoneWake { .. } => 4,
            Event::Dial { .. } => 5,
            Event::GoAway { .. } => 6,
            Event::ComeBack { .. } => 7,
            Event::Crash { .. } => 8,
            Event::Restart { .. } => 9,
            Event::PartitionStart => 10,
            Event::PartitionEnd { .. } => 11,
            Event::Check => 12,
            Event::Drain => 13,
            Event::HangUp { .. } => 15,
            Event::LicenceRequest { .. } => 16,
            Event::LicenceResponse { .. } => 17,
            Event::LicenceOutage { .. } => 18,
            Event::ScanStart => 19,
            Event::ScannerWake => 20,
            Event::AttackStart { .. } => 21,
            Event::AttackerWake => 22,
            Event::Meeting => 23,
            Event::JoinRoom { .. } => 24,
            Event::ProxyWake => 25,
            Event::PushAnswer { .. } => 26,
            Event::PushReaches { .. } => 27,
            Event::ForwardChange => 28,
            Event::ForwardCode { .. } => 29,
        }
    }
}

struct Scheduled {
    at: Timestamp,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest, and among equals the first scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// FNV-1a, 64 bit: a stable hash (the same on every platform and Rust version).
#[derive(Clone, Copy, Debug)]
struct Trace(u64);

impl Trace {
    fn new() -> Trace {
        Trace(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn u64(&mut self, n: u64) {
        self.bytes(&n.to_le_bytes());
    }

    fn addr(&mut self, a: SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => self.bytes(&ip.octets()),
            IpAddr::V6(ip) => self.bytes(&ip.octets()),
        }
        self.bytes(&a.port().to_le_bytes());
    }
}

struct NodeSlot {
    config: NodeConfig,
    clock: Clock,
    node: Option<SimNode>,
    incarnation: u32,
    disk: Disk,
    /// Writes issued and not yet durable, in commit order: (commit time, job).
    pending: VecDeque<(Timestamp, Job)>,
    armed: Option<Timestamp>,
    wakes_at: (Timestamp, u32),
    /// A `NodeStep` is scheduled (the node stalled with messages waiting).
    stepping: bool,
    /// A crash waits for the node's next write.
    crash_on_write: bool,
    /// Stats of earlier incarnations.
    stats: NodeStats,
    /// When the running incarnation started, on the node's clock; `None` while it is down.
    up_since: Option<Timestamp>,
}

struct PhoneSlot {
    phone: Phone,
    clock: Clock,
    armed: Option<Timestamp>,
    wakes_at: (Timestamp, u32),
    away: bool,
    cut_off: bool,
}

pub struct Sim {
    options: Options,
    now: Timestamp,
    end: Timestamp,
    drain_at: Timestamp,
    draining: bool,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    trace: Trace,
    net_rng: StdRng,
    fault_rng: StdRng,
    work_rng: StdRng,
    stall_rng: StdRng,
    nodes: Vec<NodeSlot>,
    phones: Vec<PhoneSlot>,
    /// Phone by SIP or RTP address.
    phone_at: std::collections::BTreeMap<SocketAddr, usize>,
    checker: Checker,
    report: Report,
    stuck: Option<String>,
    /// The licence service, when the run has one.
    licence: Option<LicenceHost>,
    licence_models: Vec<LicenceModel>,
    licence_rng: StdRng,
    /// The password guesser's burst under way, and its armed wake-up.
    scanner: Option<(Scanner, Option<Timestamp>)>,
    scan_rng: StdRng,
    /// The attacker, its armed wake-up, and the stream its campaigns are drawn from.
    attacker: Option<Attacker>,
    attacker_armed: Option<Timestamp>,
    attack_rng: StdRng,
    /// Meetings and calls to rooms: when, where, who, how long, which tone.
    room_rng: StdRng,
    /// The softphone proxy's ledger, when the run has one (its draws: stream 11).
    proxy: Option<SimProxy>,
    /// The push service and the apps' tokens (its draws: stream 12).
    push: PushService,
    /// Call forwarding: what each user means its phone to forward, the feature codes whose
    /// answer is awaited, and the stream the changes are drawn from (13).
    forwarders: BTreeMap<usize, Planned>,
    codes_in_flight: BTreeSet<String>,
    forward_rng: StdRng,
}

/// The attacker's own address (TEST-NET-1): the only one it receives at.
pub const ATTACKER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66));
/// The office phone whose user is the attacker, when it is an insider.
pub const INSIDER_PHONE: usize = 0;
/// RTP payload bytes of the office's phones: PCMU silence (and A-law's, were pbx to transcode).
const OFFICE_SILENCE: [u8; 2] = [0xFF, 0xD5];

fn seeded(seed: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn phone_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250 + 1) as u8))
}

fn extension(i: usize) -> String {
    format!("{}", 1000 + i)
}

/// An exponential draw with this mean.
fn exponential(rng: &mut StdRng, mean_s: f64) -> Duration {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-u.ln() * mean_s)
}

fn uniform_s(rng: &mut StdRng, (low, high): (u64, u64)) -> Duration {
    Duration::from_secs(if high > low { rng.random_range(low..=high) } else { low })
}

fn drift(rng: &mut StdRng, max_ppm: u32) -> Clock {
    let max = i64::from(max_ppm);
    Clock { ppm: if max == 0 { 0 } else { rng.random_range(-max..=max) }, offset_us: 0 }
}

impl Sim {
    pub fn new(options: Options) -> Sim {
        let seed = options.seed;
        let mut fault_rng = seeded(seed, 1);
        let net_rng = seeded(seed, 2);
        let work_rng = seeded(seed, 3);
        let mut setup_rng = seeded(seed, 4);
        let w = &options.workload;
        let registrar = RegistrarConfig {
            max_expires_s: 3600,
            // The simulated phones answer MD5, as most desk phones do.
            digest_algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            rooms: options.rooms.iter().map(|r| r.number.clone()).collect(),
            // The office's apps are pushed through FCM (RFC 8599).
            push_providers: vec!["fcm".into()],
            ..RegistrarConfig::default()
        };
        let rooms: Vec<RoomDecl> = options
            .rooms
            .iter()
            .map(|r| RoomDecl {
                number: r.number.clone(),
                name: format!("Room {}", r.number),
                config: RoomConfig { pin: r.pin.clone(), moderator_pin: None, max_participants: r.max_participants },
            })
            .collect();
        let passwords: Vec<String> =
            (0..w.phones).map(|i| format!("pw-{}-{:08x}", extension(i), setup_rng.random::<u32>())).collect();
        let mut node_config = NodeConfig {
            sip: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 5060),
            rtp_ports: (20_000, 29_999),
            registrar: registrar.clone(),
            no_answer: NO_ANSWER,
            rtp_timeout: RTP_TIMEOUT,
            extensions: passwords.iter().enumerate().map(|(i, p)| (extension(i), p.clone())).collect(),
            bugs: options.bugs,
            stall: options.faults.stall,
            licence: None,
            reaper: options.privacy.reaper.then(|| options.privacy.reaper_config(options.bugs)),
            rooms,
            mixer: MixerConfig::default(),
            push_wait: Some(options.push.wait()),
            sim_bugs: options.sim_bugs,
        };
        let behaviour = Behaviour {
            answer_probability: w.answer_probability,
            reject_probability: w.reject_probability,
            ring_s: w.ring_s,
            cancel_probability: w.cancel_probability,
            talk_s_mean: w.talk_s_mean,
            rtp_interval_s: w.rtp_interval_s,
            room: RoomBehaviour {
                talk_s: options.conference.talk_s,
                pause_s: options.conference.pause_s,
                mute_probability: options.conference.mute_probability,
                vanish_probability: options.conference.vanish_probability,
            },
        };
        let extensions: Vec<String> = (0..w.phones).map(extension).collect();
        // The longest a phone stays in a call: its talk time, or its stay in a room.
        let talk_max = Duration::from_secs(w.talk_s_max).max(options.conference.stay_max());
        let mut bounds = Bounds::new(NO_ANSWER, RTP_TIMEOUT, talk_max, registrar.max_expires_s);
        if options.forwarding.changes_per_phone_per_day > 0.0 {
            // A forwarded call rings once more, the forward's phones, as long at most.
            bounds = bounds.with_forwarding(NO_ANSWER);
        }
        let drain = options.drain.max(talk_max + NO_ANSWER + Duration::from_secs(600));
        let proxy =
            options.proxy.enabled.then(|| SimProxy::new(options.proxy.clone(), seeded(seed, 11), w.phones, ORIGIN));
        let mut checker = Checker::new(
            ORIGIN,
            bounds,
            &extensions,
            options.privacy.reaper.then(|| (options.privacy.periods(), options.privacy.interval())),
        )
        .with_rooms(options.rooms.iter().map(|r| r.number.clone()))
        .with_push(options.push.wait());
        let mut push = PushService::new(options.push.clone(), seeded(seed, 12));
        let apps = push.choose_apps(w.phones);
        if let Some(p) = &proxy {
            checker = checker.with_proxy(p.config());
        }
        let mut sim = Sim {
            now: ORIGIN,
            end: ORIGIN + options.duration + drain,
            drain_at: ORIGIN + options.duration,
            draining: false,
            queue: BinaryHeap::new(),
            seq: 0,
            trace: Trace::new(),
            net_rng,
            work_rng,
            nodes: Vec::new(),
            phones: Vec::new(),
            phone_at: Default::default(),
            checker,
            report: Report { seed, phones: w.phones, ..Default::default() },
            stuck: None,
            licence: None,
            licence_models: Vec::new(),
            licence_rng: seeded(seed, 7),
            scanner: None,
            scan_rng: seeded(seed, 8),
            attacker: None,
            attacker_armed: None,
            attack_rng: seeded(seed, 9),
            room_rng: seeded(seed, 10),
            proxy,
            push,
            forwarders: BTreeMap::new(),
            codes_in_flight: BTreeSet::new(),
            forward_rng: seeded(seed, 13),
            fault_rng: seeded(seed, 5),
            stall_rng: seeded(seed, 6),
            options: options.clone(),
        };
        let mut clock = drift(&mut fault_rng, options.faults.drift_ppm);
        clock.offset_us = options.licence.node_clock_offset_h * 3_600_000_000;
        if options.licence.enabled {
            let host = LicenceHost::new(setup_rng.random(), IpAddr::V4(Ipv4Addr::new(10, 0, 9, 1)));
            node_config.licence = Some(host.watchdog_config(&options.licence, options.bugs));
            sim.licence = Some(host);
            sim.licence_models.push(LicenceModel::default());
            let at = ORIGIN
                + exponential(&mut sim.licence_rng, 30.0 * DAY_S as f64 / options.licence.outages_per_30d.max(1e-9));
            sim.schedule(at, Event::LicenceOutage { hours: None });
            for &(start_h, hours) in &options.licence.outages {
                sim.schedule(ORIGIN + Duration::from_secs(start_h * 3600), Event::LicenceOutage { hours: Some(hours) });
            }
        }
        sim.nodes.push(NodeSlot {
            config: node_config.clone(),
            clock,
            node: None,
            incarnation: 0,
            disk: Disk::default(),
            pending: VecDeque::new(),
            armed: None,
            wakes_at: (ORIGIN, 0),
            stepping: false,
            crash_on_write: false,
            stats: NodeStats::default(),
            up_since: None,
        });
        sim.start_node(0, setup_rng.random());
        for (i, password) in passwords.into_iter().enumerate() {
            let push = apps[i].then(|| PushApp {
                provider: "fcm".into(),
                param: crate::push::PROJECT.into(),
                token: sim.push.issue_token(i),
                wake_ms: options.push.wake_ms,
                new_port: options.push.new_port,
                awake: Duration::from_secs(options.push.awake_s),
            });
            let config = PhoneConfig {
                extension: extension(i),
                password,
                sip: SocketAddr::new(phone_ip(i), 5060),
                rtp: SocketAddr::new(phone_ip(i), 4000),
                pbx: node_config.sip,
                register_expires_s: w.register_expires_s,
                behaviour: behaviour.clone(),
                push,
            };
            sim.phone_at.insert(config.sip, i);
            if config.push.is_some() {
                // An app may register from any of its ports (see `PhoneInput::Push`).
                for port in 1..PUSH_PORTS {
                    sim.phone_at.insert(SocketAddr::new(config.sip.ip(), config.sip.port() + port), i);
                }
            }
            sim.phone_at.insert(config.rtp, i);
            let clock = drift(&mut fault_rng, options.faults.drift_ppm);
            // Phones boot over the first minute, not all in the same microsecond.
            let boot = ORIGIN + Duration::from_millis(setup_rng.random_range(0..60_000));
            let phone = Phone::new(config, setup_rng.random(), clock.local(boot));
            sim.phones.push(PhoneSlot {
                phone,
                clock,
                armed: None,
                wakes_at: (ORIGIN, 0),
                away: false,
                cut_off: false,
            });
            sim.rearm_phone(i);
            let first = sim.next_dial_time(ORIGIN);
            sim.schedule(first, Event::Dial { phone: i });
            if options.faults.away_per_phone_per_day > 0.0 {
                let at = ORIGIN + exponential(&mut sim.fault_rng, DAY_S as f64 / options.faults.away_per_phone_per_day);
                sim.schedule(at, Event::GoAway { phone: i });
            }
        }
        if options.faults.crashes_per_day > 0.0 {
            let at = ORIGIN + exponential(&mut sim.fault_rng, DAY_S as f64 / options.faults.crashes_per_day);
            sim.schedule(at, Event::Crash { node: 0, mid_write: false });
        }
        if options.net.partitions_per_day > 0.0 {
            let at = ORIGIN + exponential(&mut sim.fault_rng, DAY_S as f64 / options.net.partitions_per_day);
            sim.schedule(at, Event::PartitionStart);
        }
        if options.attacker.enabled {
            let a = &options.attacker;
            let config = AttackerConfig {
                address: ATTACKER_IP,
                pbx: node_config.sip,
                rtp_ports: node_config.rtp_ports,
                phones: sim.phones.iter().map(|p| (p.phone.config().extension.clone(), p.phone.config().sip)).collect(),
                insider: a.insider && !sim.phones.is_empty(),
                on_path: a.on_path,
            };
            sim.attacker = Some(Attacker::new(config, sim.attack_rng.random()));
            for kind in AttackKind::ALL {
                let rate = a.per_day(kind);
                if rate > 0.0 {
                    let mut at = ORIGIN + exponential(&mut sim.attack_rng, DAY_S as f64 / rate);
                    if matches!(kind, AttackKind::Dialog | AttackKind::Rtp) {
                        at = sim.next_office_time(at, |sim| &mut sim.attack_rng);
                    }
                    sim.schedule(at, Event::AttackStart { kind });
                }
            }
        }
        if options.privacy.scans_per_day > 0.0 {
            let at = ORIGIN + exponential(&mut sim.scan_rng, DAY_S as f64 / options.privacy.scans_per_day);
            sim.schedule(at, Event::ScanStart);
        }
        if options.conference.meetings_per_day > 0.0 && !options.rooms.is_empty() {
            let at = sim.next_meeting_time(ORIGIN);
            sim.schedule(at, Event::Meeting);
        }
        if options.forwarding.changes_per_phone_per_day > 0.0 && w.phones >= 2 {
            let at = sim.next_forward_time(ORIGIN);
            sim.schedule(at, Event::ForwardChange);
        }
        sim.schedule(ORIGIN + options.check_every, Event::Check);
        sim.schedule(sim.drain_at, Event::Drain);
        sim
    }

    fn schedule(&mut self, at: Timestamp, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled { at: at.max(self.now), seq: self.seq, event });
    }

    /// Runs to the end (or the first violation, if asked) and reports.
    pub fn run(mut self) -> Report {
        let wall = Instant::now();
        while let Some(Scheduled { at, event, .. }) = self.queue.pop() {
            if at > self.end {
                break;
            }
            self.now = at;
            self.report.events += 1;
            self.trace.u64(at.0);
            self.trace.bytes(&[event.tag()]);
            self.handle(event);
            if let Some(detail) = self.stuck.take() {
                self.checker.violations.push(Violation { at: self.now - ORIGIN, invariant: "time moves on", detail });
                *self.checker.violated.entry("time moves on").or_default() += 1;
            }
            if self.options.stop_at_first_violation && !self.checker.violations.is_empty() {
                break;
            }
        }
        if self.checker.violations.is_empty() || !self.options.stop_at_first_violation {
            self.now = self.now.max(self.end);
            let slot = &self.nodes[0];
            let local = slot.clock.local(self.now);
            let node = slot.node.as_ref().map(|n| (n, local));
            self.checker.final_checks(self.now, node, &slot.disk.duplicate_cdrs);
            self.checker.check_push(self.now);
            self.checker.check_retention(self.now, local, slot.up_since, &slot.disk);
            if let Some(p) = &self.proxy {
                self.checker.check_proxy(self.now, &p.disk);
            }
        }
        let mut report = self.report;
        report.simulated = self.now - ORIGIN;
        report.wall = wall.elapsed();
        report.trace_hash = self.trace.0;
        report.cdrs = self.checker.cdrs_stored();
        report.privacy.reaped = self.nodes[0].disk.reaped.clone();
        if let Some(p) = &self.proxy {
            report.proxy = p.report;
        }
        if let Some(attacker) = &self.attacker {
            report.attack = attacker.stats.clone();
        }
        report.faults.writes_lost = self.nodes.iter().map(|n| n.disk.lost_in_crash).sum();
        let mut stats = self.nodes[0].stats;
        if let Some(node) = &self.nodes[0].node {
            add_stats(&mut stats, &node.stats);
        }
        report.node = stats;
        report.checks = self.checker.checks;
        (report.room_frames, report.lone_talker_frames) = self.checker.room_frames();
        report.push = self.push.report;
        report.forks = self.checker.fork_counts();
        report.forwarded = self.checker.forward_counts();
        report.violations = self.checker.violations;
        report.violated = self.checker.violated;
        report
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, bytes, room } => {
                self.trace.addr(from);
                self.trace.addr(to);
                self.trace.bytes(&bytes);
                self.deliver(from, to, bytes, room);
            }
            Event::NodeWake { node } => {
                let slot = &mut self.nodes[node];
                if slot.armed != Some(self.now) {
                    return;
                }
                slot.armed = None;
                if !count_wake(&mut slot.wakes_at, self.now) {
                    self.stuck = Some(format!("node {node} asks to be woken at the same instant again and again"));
                    return;
                }
                let local = slot.clock.local(self.now);
                if let Some(n) = slot.node.as_mut() {
                    n.timeout(local);
                }
                self.after_node(node);
            }
            Event::NodeStep { node, incarnation } => {
                let slot = &mut self.nodes[node];
                if slot.incarnation != incarnation {
                    return;
                }
                slot.stepping = false;
                let local = slot.clock.local(self.now);
                if let Some(n) = slot.node.as_mut() {
                    n.step(local);
                }
                self.after_node(node);
            }
            Event::Commit { node, incarnation } => {
                let slot = &mut self.nodes[node];
                if slot.incarnation != incarnation {
                    return;
                }
                let Some((_, job)) = slot.pending.pop_front() else { return };
                match &job.write {
                    Some(DiskWrite::Entry(Entry::Licence(stored))) => {
                        if let Some(model) = self.licence_models.get_mut(node) {
                            model.durable_success = Some(stored.checked_at);
                        }
                    }
                    Some(DiskWrite::Entry(Entry::Cdrs(cdrs))) => {
                        for cdr in cdrs {
                            self.checker.cdr_committed(self.now, cdr)
                        }
                    }
                    Some(DiskWrite::SecurityLog(entry)) => {
                        self.checker.security_committed((entry.at, slot.disk.next_id))
                    }
                    Some(DiskWrite::Audit(entry)) => self.checker.audit_committed(self.now, entry),
                    Some(DiskWrite::Entry(Entry::PushRecords(records))) => {
                        for r in records {
                            self.checker.push_committed((r.at, r.id));
                        }
                    }
                    _ => {}
                }
                let outcome = job.write.map_or(Ok(0), |write| slot.disk.apply(write));
                let local = slot.clock.local(self.now);
                if let Some(n) = slot.node.as_mut() {
                    n.committed(local, job.deferred, outcome);
                }
                self.after_node(node);
            }
            Event::PhoneWake { phone } => {
                let slot = &mut self.phones[phone];
                if slot.armed != Some(self.now) {
                    return;
                }
                slot.armed = None;
                if !count_wake(&mut slot.wakes_at, self.now) {
                    self.stuck = Some(format!("phone {phone} asks to be woken at the same instant again and again"));
                    return;
                }
                self.feed_phone(phone, PhoneInput::Timeout);
            }
            Event::Dial { phone } => self.dial(phone),
            Event::HangUp { phone, call_id } => {
                if self.phones[phone].phone.in_call() == Some(call_id.as_str()) {
                    self.feed_phone(phone, PhoneInput::HangUp);
                }
            }
            Event::GoAway { phone } => {
                if self.draining || self.phones[phone].away {
                    return;
                }
                self.report.faults.phones_away += 1;
                self.phones[phone].away = true;
                self.checker.phone_away(self.now, phone, true);
                self.feed_phone(phone, PhoneInput::GoAway);
                let back = self.now + uniform_s(&mut self.fault_rng, self.options.faults.away_s);
                self.schedule(back, Event::ComeBack { phone });
            }
            Event::ComeBack { phone } => {
                if !self.phones[phone].away {
                    return;
                }
                self.phones[phone].away = false;
                self.checker.phone_away(self.now, phone, false);
                self.feed_phone(phone, PhoneInput::ComeBack);
                let rate = self.options.faults.away_per_phone_per_day;
                if rate > 0.0 && !self.draining {
                    let at = self.now + exponential(&mut self.fault_rng, DAY_S as f64 / rate);
                    self.schedule(at, Event::GoAway { phone });
                }
            }
            Event::Crash { node, mid_write } => {
                if self.draining || self.nodes[node].node.is_none() {
                    return;
                }
                // Half the crashes wait for the node's next write and strike while its fsync
                // is under way: the moment that tests what "committed" means.
                if !mid_write && self.fault_rng.random_bool(0.5) {
                    self.nodes[node].crash_on_write = true;
                    return;
                }
                self.report.faults.crashes += 1;
                let slot = &mut self.nodes[node];
                slot.crash_on_write = false;
                if let Some(n) = slot.node.take() {
                    add_stats(&mut slot.stats, &n.stats);
                }
                slot.incarnation += 1;
                slot.stepping = false;
                slot.disk.lost_in_crash += slot.pending.len() as u64;
                slot.pending.clear();
                slot.armed = None;
                slot.up_since = None;
                self.checker.node_crashed(self.now);
                if let Some(model) = self.licence_models.get_mut(node) {
                    model.crashed_since_success = true;
                }
                let down = uniform_s(&mut self.fault_rng, self.options.faults.down_s);
                self.schedule(self.now + down, Event::Restart { node });
            }
            Event::Restart { node } => self.restart(node),
            Event::LicenceRequest { node, incarnation, request, serial } => {
                let from = self.nodes[node].config.sip.ip();
                let Some(host) = self.licence.as_mut() else { return };
                let mut result = host.check(self.now, from, &serial);
                let mut genuine = result.is_ok();
                if result.is_ok() && self.licence_rng.random_bool(self.options.licence.tamper.clamp(0.0, 1.0)) {
                    self.report.faults.licence_tampered += 1;
                    result = result.map(|body| licence::tamper(&body));
                    genuine = false;
                }
                let at = self.now + Duration::from_millis(self.options.net.latency_ms);
                self.schedule(at, Event::LicenceResponse { node, incarnation, request, result, genuine });
            }
            Event::LicenceResponse { node, incarnation, request, result, genuine } => {
                let slot = &mut self.nodes[node];
                if slot.incarnation != incarnation {
                    return;
                }
                let local = slot.clock.local(self.now);
                let Some(n) = slot.node.as_mut() else { return };
                n.licence_response(local, request, result);
                if genuine {
                    let model = &mut self.licence_models[node];
                    model.last_success = Some(local);
                    model.crashed_since_success = false;
                    if !n.has_work()
                        && let Some((status, _, _)) = n.licence(local)
                    {
                        self.checker.check_licensed_after_success(self.now, status);
                    }
                }
                self.after_node(node);
            }
            Event::LicenceOutage { hours } => {
                if self.draining {
                    return;
                }
                let o = &self.options.licence;
                let length = match hours {
                    Some(h) => h,
                    None => {
                        let h = uniform_s(&mut self.licence_rng, o.outage_h).as_secs();
                        let next =
                            exponential(&mut self.licence_rng, 30.0 * DAY_S as f64 / o.outages_per_30d.max(1e-9));
                        self.schedule(self.now + next, Event::LicenceOutage { hours: None });
                        h
                    }
                };
                if let Some(host) = self.licence.as_mut() {
                    self.report.faults.licence_outages += 1;
                    let until = self.now + Duration::from_secs(length * 3600);
                    host.down_until = Some(host.down_until.map_or(until, |u| u.max(until)));
                }
            }
            Event::PartitionStart => {
                if self.draining {
                    return;
                }
                self.report.faults.partitions += 1;
                let count = self.fault_rng.random_range(1..=(self.phones.len() / 10).max(1));
                let mut cut = BTreeSet::new();
                while cut.len() < count.min(self.phones.len()) {
                    cut.insert(self.fault_rng.random_range(0..self.phones.len()));
                }
                let until = self.now + uniform_s(&mut self.fault_rng, self.options.net.partition_s);
                let phones: Vec<usize> = cut.into_iter().collect();
                for &p in &phones {
                    self.phones[p].cut_off = true;
                    self.checker.phone_partitioned(self.now, p, until);
                    self.trace.u64(p as u64);
                }
                self.schedule(until, Event::PartitionEnd { phones });
                let next =
                    self.now + exponential(&mut self.fault_rng, DAY_S as f64 / self.options.net.partitions_per_day);
                self.schedule(next, Event::PartitionStart);
            }
            Event::PartitionEnd { phones } => {
                for p in phones {
                    self.phones[p].cut_off = false;
                }
            }
            Event::AttackStart { kind } => self.attack_start(kind),
            Event::AttackerWake => {
                if self.attacker_armed != Some(self.now) {
                    return;
                }
                self.attacker_armed = None;
                if let Some(a) = self.attacker.as_mut() {
                    a.timeout(self.now);
                }
                self.after_attacker();
            }
            Event::ScanStart => self.scan_start(),
            Event::Meeting => self.meeting(),
            Event::ForwardChange => self.forward_change(),
            Event::ForwardCode { phone, code, undo } => self.dial_code(phone, code, undo),
            Event::JoinRoom { phone, room, stay } => self.join_room(phone, room, stay),
            Event::PushAnswer { node, incarnation, id, outcome, phone } => {
                self.trace.u64(id);
                self.trace.bytes(&[outcome as u8]);
                let slot = &mut self.nodes[node];
                if slot.incarnation != incarnation {
                    return;
                }
                let local = slot.clock.local(self.now);
                let Some(n) = slot.node.as_mut() else { return };
                n.push_answered(local, id, outcome);
                if let (PushOutcome::Unregistered, Some(phone)) = (outcome, phone) {
                    self.checker.push_token_dropped(self.now, phone);
                }
                self.after_node(node);
            }
            Event::PushReaches { phone } => {
                self.trace.u64(phone as u64);
                // A phone that is away (off, or out of reach) never gets it.
                if !self.phones[phone].away {
                    self.push.report.reached += 1;
                    self.feed_phone(phone, PhoneInput::Push);
                }
            }
            Event::ProxyWake => {
                let Some(p) = self.proxy.as_mut() else { return };
                if p.armed != Some(self.now) {
                    return;
                }
                p.armed = None;
                p.wake(self.now, &mut self.checker);
                self.trace.u64(p.report.sessions);
                self.trace.u64(p.report.debug_records);
                self.rearm_proxy();
            }
            Event::ScannerWake => {
                let Some((scanner, armed)) = self.scanner.as_mut() else { return };
                if *armed != Some(self.now) {
                    return;
                }
                *armed = None;
                scanner.timeout(self.now);
                self.after_scanner();
            }
            Event::Check => {
                for (i, slot) in self.nodes.iter().enumerate() {
                    let local = slot.clock.local(self.now);
                    self.checker.check_retention(self.now, local, slot.up_since, &slot.disk);
                    // Between two messages of a stalled node, a call may have heard of its
                    // leg's end and not yet acted on it: judge the node when it is settled.
                    if let Some(node) = slot.node.as_ref().filter(|n| !n.has_work()) {
                        let local = slot.clock.local(self.now);
                        self.report.transactions_max = self.report.transactions_max.max(node.transactions().0);
                        self.checker.check_node(self.now, local, node);
                        self.checker.check_push(self.now);
                        if let (Some(licence), Some(model), Some(config)) =
                            (node.licence(local), self.licence_models.get(i), slot.config.licence.as_ref())
                        {
                            let (grace, retry) = (config.grace, config.retry_interval);
                            self.checker.check_licence(self.now, local, licence, model, grace, retry);
                        }
                    }
                }
                self.checker.check_phones(self.now);
                if let Some(host) = self.licence.as_mut() {
                    host.tick(self.now);
                    self.checker.check_service_log(self.now, &host.desk);
                }
                if let Some(p) = self.proxy.as_mut() {
                    p.maybe_switch_debug(self.now, self.draining, &mut self.checker);
                    self.checker.check_proxy(self.now, &p.disk);
                    self.rearm_proxy();
                }
                self.schedule(self.now + self.options.check_every, Event::Check);
            }
            Event::Drain => {
                // No new calls or faults from here on; what is broken heals, so that every
                // call can end before the final checks.
                self.draining = true;
                if let Some(a) = self.attacker.as_mut() {
                    a.stop();
                }
                for p in 0..self.phones.len() {
                    self.phones[p].cut_off = false;
                    if self.phones[p].away {
                        self.schedule(self.now, Event::ComeBack { phone: p });
                    }
                }
                for n in 0..self.nodes.len() {
                    if self.nodes[n].node.is_none() {
                        self.schedule(self.now, Event::Restart { node: n });
                    }
                }
            }
        }
    }

    fn restart(&mut self, node: usize) {
        let slot = &mut self.nodes[node];
        if slot.node.is_some() {
            return;
        }
        // Only a crashed node is down: this ends its outage.
        self.checker.node_restarted(self.now);
        let seed = self.fault_rng.random();
        self.start_node(node, seed);
        let slot = &self.nodes[node];
        if let Some(n) = &slot.node {
            self.checker.check_restored(self.now, n);
        }
        if !self.draining && self.options.faults.crashes_per_day > 0.0 {
            let at = self.now + exponential(&mut self.fault_rng, DAY_S as f64 / self.options.faults.crashes_per_day);
            self.schedule(at, Event::Crash { node, mid_write: false });
        }
    }

    fn start_node(&mut self, node: usize, seed: u64) {
        let slot = &mut self.nodes[node];
        let stored = slot.disk.snapshot();
        let local = slot.clock.local(self.now);
        slot.up_since = Some(local);
        let licence = slot.disk.licence.clone();
        slot.node = Some(SimNode::start(slot.config.clone(), seed, stored, licence, local));
        self.after_node(node);
    }

    /// Takes what a node put out: datagrams onto the network, writes onto its disk; re-arms
    /// its wake-up.
    fn after_node(&mut self, node: usize) {
        loop {
            let Some(out) = self.nodes[node].node.as_mut().and_then(SimNode::poll_output) else { break };
            match out {
                NodeOutput::Transmit { from, to, bytes, room } => {
                    if from.port() != self.nodes[node].config.sip.port() {
                        let ok = self.phone_media(to).is_some();
                        self.checker.media_from_pbx(self.now, ok, || {
                            format!("pbx sent media from {from} to {to}, which is no office phone")
                        });
                    }
                    self.transmit(from, to, bytes, room)
                }
                NodeOutput::Push(push) => {
                    let fate = self.push.push(&push);
                    let incarnation = self.nodes[node].incarnation;
                    let (id, outcome, phone) = (push.id, fate.outcome, fate.phone);
                    self.schedule(
                        self.now + fate.answer_after,
                        Event::PushAnswer { node, incarnation, id, outcome, phone },
                    );
                    if let (Some(after), Some(phone)) = (fate.reaches_after, phone) {
                        self.schedule(self.now + after, Event::PushReaches { phone });
                    }
                    if let (Some(token), Some(phone)) = (fate.new_token, phone) {
                        self.feed_phone(phone, PhoneInput::NewToken { token });
                    }
                }
                NodeOutput::Fork(event) => self.checker.fork_event(self.now, &event),
                NodeOutput::LicenceCheck { request, serial } => {
                    let incarnation = self.nodes[node].incarnation;
                    let at = self.now + Duration::from_millis(self.options.net.latency_ms);
                    self.schedule(at, Event::LicenceRequest { node, incarnation, request, serial });
                }
                NodeOutput::Write(job) => {
                    let fsync = if job.write.is_some() {
                        let (low, high) = self.options.faults.fsync_ms;
                        Duration::from_millis(if high > low { self.fault_rng.random_range(low..=high) } else { low })
                    } else {
                        Duration::ZERO
                    };
                    let slot = &mut self.nodes[node];
                    let after = slot.pending.back().map_or(self.now, |(at, _)| *at).max(self.now);
                    let at = after + fsync;
                    slot.pending.push_back((at, job));
                    let incarnation = slot.incarnation;
                    let crash = fsync > Duration::ZERO && std::mem::take(&mut slot.crash_on_write);
                    self.schedule(at, Event::Commit { node, incarnation });
                    if crash {
                        self.schedule(self.now, Event::Crash { node, mid_write: true });
                    }
                }
            }
        }
        let slot = &mut self.nodes[node];
        if slot.node.as_ref().is_some_and(SimNode::has_work) && !slot.stepping {
            // Stalled: the rest of its mailboxes run a little later, after whatever arrives.
            slot.stepping = true;
            let incarnation = slot.incarnation;
            let pause = Duration::from_micros(self.stall_rng.random_range(10..2_000));
            self.schedule(self.now + pause, Event::NodeStep { node, incarnation });
        }
        let slot = &mut self.nodes[node];
        let want = slot.node.as_ref().and_then(SimNode::poll_timeout).map(|t| slot.clock.global(t).max(self.now));
        if let Some(at) = arm(&mut slot.armed, want) {
            self.schedule(at, Event::NodeWake { node });
        }
    }

    /// A password guesser from a random address outside the office tries a burst of guesses
    /// (unless the last one is still at it); the next burst is drawn now.
    fn scan_start(&mut self) {
        if self.draining {
            return;
        }
        let p = &self.options.privacy;
        let next = self.now + exponential(&mut self.scan_rng, DAY_S as f64 / p.scans_per_day);
        let count = uniform_s(&mut self.scan_rng, p.scan_guesses).as_secs() as usize;
        self.schedule(next, Event::ScanStart);
        if self.scanner.is_some() {
            return;
        }
        let address = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, self.scan_rng.random_range(1..=254))),
            self.scan_rng.random_range(5060..=65_000),
        );
        // Half the names exist, half do not (the scanner does not know which).
        let phones = self.phones.len();
        let mut users: Vec<String> = (0..4).map(|_| extension(self.scan_rng.random_range(0..phones.max(1)))).collect();
        users.extend(["100", "admin", "9000", "sip"].map(String::from));
        let seed = self.scan_rng.random();
        self.report.privacy.scans += 1;
        self.scanner = Some((Scanner::new(address, self.nodes[0].config.sip, &users, count, seed, self.now), None));
        self.after_scanner();
    }

    fn after_scanner(&mut self) {
        loop {
            let Some(out) = self.scanner.as_mut().and_then(|(s, _)| s.poll_output()) else { break };
            match out {
                ScannerOutput::Transmit { from, to, bytes } => {
                    self.report.privacy.scan_registers += 1;
                    self.send(from, to, bytes);
                }
                ScannerOutput::Answered { code } => {
                    self.report.privacy.scan_rejected += u64::from(code == 401);
                    self.report.privacy.scan_blocked += u64::from(code == 403);
                    self.checker.intruder_answered(self.now, code);
                }
                ScannerOutput::Over => {
                    self.scanner = None;
                    return;
                }
            }
        }
        if let Some((scanner, armed)) = self.scanner.as_mut()
            && let Some(at) = arm(armed, scanner.poll_timeout())
        {
            self.schedule(at, Event::ScannerWake);
        }
    }

    /// The attacker starts a campaign of `kind` (see [`crate::attacker`]); the next is drawn now.
    fn attack_start(&mut self, kind: AttackKind) {
        if self.draining || self.attacker.is_none() {
            return;
        }
        let a = self.options.attacker.clone();
        let mut next = self.now + exponential(&mut self.attack_rng, DAY_S as f64 / a.per_day(kind));
        // Calls are only there to attack during office time: the attacker waits for it.
        if matches!(kind, AttackKind::Dialog | AttackKind::Rtp) {
            next = self.next_office_time(next, |sim| &mut sim.attack_rng);
        }
        self.schedule(next, Event::AttackStart { kind });
        let size = |rng: &mut StdRng, range| uniform_s(rng, range).as_secs() as u32;
        let campaign = match kind {
            AttackKind::Lockout => {
                // A phone other than its own.
                let phones = self.phones.len();
                if phones < 2 {
                    return;
                }
                let target = 1 + self.attack_rng.random_range(0..phones - 1);
                let config = self.phones[target].phone.config();
                let until = self.now + Duration::from_secs(a.lockout_minutes * 60);
                Campaign::Lockout { target: config.sip, user: config.extension.clone(), until }
            }
            AttackKind::Dialog => Campaign::Dialog { forgeries: size(&mut self.attack_rng, a.dialog_forgeries) },
            AttackKind::Rtp => Campaign::Rtp { ports: size(&mut self.attack_rng, a.rtp_ports), packets: a.rtp_packets },
            AttackKind::Flood => Campaign::Flood {
                requests: size(&mut self.attack_rng, a.flood_requests),
                rate_per_s: a.flood_rate_per_s,
            },
        };
        if let Some(attacker) = self.attacker.as_mut() {
            attacker.start(self.now, campaign);
        }
        self.after_attacker();
    }

    fn after_attacker(&mut self) {
        loop {
            let Some(out) = self.attacker.as_mut().and_then(Attacker::poll_output) else { break };
            match out {
                AttackerOutput::Transmit { from, to, bytes } => self.send(from, to, bytes),
                AttackerOutput::Answered { method, code } => self.checker.stranger_answered(self.now, method, code),
                AttackerOutput::Contacted { method } => self.checker.stranger_contacted(self.now, &method),
            }
        }
        let want = self.attacker.as_ref().and_then(Attacker::poll_timeout).map(|t| t.max(self.now));
        if let Some(at) = arm(&mut self.attacker_armed, want) {
            self.schedule(at, Event::AttackerWake);
        }
    }

    /// The attacker reads what its own phone sends and receives (an insider), unless it sees
    /// everything anyway (on-path).
    fn insider_sees(&mut self, phone: usize, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        if phone == INSIDER_PHONE
            && self.options.attacker.insider
            && !self.options.attacker.on_path
            && let Some(a) = self.attacker.as_mut()
        {
            a.observe(from, to, bytes);
        }
    }

    /// The office phone whose RTP (even port) or RTCP (odd port) address this is.
    fn phone_media(&self, to: SocketAddr) -> Option<usize> {
        let rtp = SocketAddr::new(to.ip(), to.port() & !1);
        self.phone_at.get(&rtp).copied().filter(|&p| self.phones[p].phone.config().rtp == rtp)
    }

    /// Media reaching a phone: RTP carrying the office's silence, never a stranger's payload;
    /// no RTCP at all (the office's phones send none, so pbx has none of theirs to relay).
    fn check_phone_media(&mut self, phone: usize, from: SocketAddr, to: SocketAddr, bytes: &[u8], room: bool) {
        let extension = self.phones[phone].phone.config().extension.clone();
        if to.port() % 2 == 1 {
            self.checker.media_at_phone(self.now, false, || {
                format!("RTCP from {from} reached phone {extension} ({} bytes)", bytes.len())
            });
            return;
        }
        let payload = rtp_payload(bytes);
        // A room's mixed audio is judged as such (it is no silence).
        if room {
            self.checker.room_audio(self.now, phone, from, payload.unwrap_or_default());
            return;
        }
        let office = payload.is_some_and(|p| !p.is_empty() && OFFICE_SILENCE.iter().any(|s| p.iter().all(|b| b == s)));
        self.checker.media_at_phone(self.now, office, || {
            let start: Vec<&u8> = bytes.iter().take(16).collect();
            format!("phone {extension} got at {to}, from {from}, RTP that no office phone sent: {start:02x?}…")
        });
    }

    fn feed_phone(&mut self, phone: usize, input: PhoneInput) {
        let slot = &mut self.phones[phone];
        let local = slot.clock.local(self.now);
        slot.phone.handle(local, input);
        while let Some(out) = self.phones[phone].phone.poll_output() {
            match out {
                PhoneOutput::Transmit { from, to, bytes } => {
                    if bytes.starts_with(b"REGISTER ") {
                        self.checker.register_sent(self.now, phone);
                    }
                    if let Some(p) = self.proxy.as_mut()
                        && from == self.phones[phone].phone.sip()
                    {
                        let extension = &self.phones[phone].phone.config().extension;
                        p.phone_sent(self.now, phone, extension, &mut self.checker);
                    }
                    self.insider_sees(phone, from, to, &bytes);
                    self.send(from, to, bytes);
                }
                PhoneOutput::Event(event) => self.phone_event(phone, event),
            }
        }
        self.rearm_proxy();
        self.rearm_phone(phone);
    }

    /// Schedules the proxy ledger's wake-up when it wants one earlier than the one scheduled
    /// (a later one is asked for again when the scheduled one finds nothing due).
    fn rearm_proxy(&mut self) {
        let Some(p) = self.proxy.as_mut() else { return };
        if !p.take_changed() {
            return;
        }
        let Some(want) = p.poll_timeout().map(|t| t.max(self.now)) else { return };
        if p.armed.is_none_or(|armed| want < armed) {
            p.armed = Some(want);
            self.schedule(want, Event::ProxyWake);
        }
    }

    fn rearm_phone(&mut self, phone: usize) {
        let slot = &mut self.phones[phone];
        let want = slot.phone.poll_timeout().map(|t| slot.clock.global(t).max(self.now));
        if let Some(at) = arm(&mut slot.armed, want) {
            self.schedule(at, Event::PhoneWake { phone });
        }
    }

    fn phone_event(&mut self, phone: usize, event: PhoneEvent) {
        // The checkers first: they know who answered a call (forwarding may lead elsewhere).
        self.checker.phone_event(self.now, phone, &event);
        if let PhoneEvent::Established { call_id, caller: true, .. } = &event
            && !self.codes_in_flight.contains(call_id)
        {
            self.maybe_hang_up_together(phone, call_id);
        }
        match &event {
            PhoneEvent::Registered { .. } => self.report.registrations += 1,
            PhoneEvent::Dialing { call_id, callee } => {
                if is_feature_code(callee) {
                    self.report.forwarding.codes += 1;
                    self.codes_in_flight.insert(call_id.clone());
                } else {
                    self.report.calls_dialled += 1;
                }
                if let Some(p) = self.proxy.as_mut() {
                    let extension = &self.phones[phone].phone.config().extension;
                    p.phone_dialled(self.now, phone, extension, callee, &mut self.checker);
                }
            }
            PhoneEvent::Established { call_id, caller: true, .. } => {
                if self.codes_in_flight.remove(call_id) {
                    self.report.forwarding.unanswered += 1;
                } else {
                    self.report.calls_answered += 1;
                }
            }
            PhoneEvent::CallFailed { call_id, code, .. } => {
                if self.codes_in_flight.remove(call_id) {
                    let f = &mut self.report.forwarding;
                    match code {
                        603 => f.confirmed += 1,
                        403 => f.refused += 1,
                        404 => f.unknown += 1,
                        _ => f.unanswered += 1,
                    }
                } else {
                    self.report.calls_failed += 1;
                }
            }
            PhoneEvent::Room { event: crate::phone::RoomEvent::Vanished, .. } => self.report.room_vanished += 1,
            _ => {}
        }
    }

    /// Sometimes both parties of a call that just got answered will hang up at one moment: the
    /// caller and the phone that answered (the checkers know which: forwarding may have led
    /// elsewhere than the dialled number).
    fn maybe_hang_up_together(&mut self, caller: usize, call_id: &str) {
        let w = &self.options.workload;
        if !self.work_rng.random_bool(w.hangup_together_probability.clamp(0.0, 1.0)) {
            return;
        }
        let peer = self.checker.partner(caller).unwrap_or_default();
        let Some(callee) =
            peer.parse::<usize>().ok().and_then(|n| n.checked_sub(1000)).filter(|&i| i < self.phones.len())
        else {
            return;
        };
        let Some(callee_call) = self.phones[callee].phone.in_call().map(str::to_owned) else { return };
        let at = self.now + exponential(&mut self.work_rng, w.talk_s_mean as f64 / 2.0);
        for (phone, call_id) in [(caller, call_id.to_owned()), (callee, callee_call)] {
            let skew = Duration::from_micros(self.work_rng.random_range(0..20_000));
            self.schedule(at + skew, Event::HangUp { phone, call_id });
        }
    }

    /// Puts a datagram on the network: maybe lost, maybe twice, always late.
    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Bytes) {
        self.transmit(from, to, bytes, false);
    }

    /// [`Sim::send`], saying whether a conference room sent it.
    fn transmit(&mut self, from: SocketAddr, to: SocketAddr, bytes: Bytes, room: bool) {
        if self.options.attacker.on_path
            && let Some(a) = self.attacker.as_mut()
        {
            let node = self.nodes[0].config.sip.ip();
            if from.ip() == node || to.ip() == node {
                a.observe(from, to, &bytes);
            }
        }
        let faults = &mut self.report.faults;
        faults.datagrams += 1;
        let cut = |ip: SocketAddr| self.phone_at.get(&ip).is_some_and(|&p| self.phones[p].cut_off);
        if cut(from) || cut(to) {
            faults.cut_off += 1;
            return;
        }
        let net = &self.options.net;
        if net.loss > 0.0 && self.net_rng.random_bool(net.loss) {
            faults.lost += 1;
            return;
        }
        let copies = if net.duplicate > 0.0 && self.net_rng.random_bool(net.duplicate) {
            faults.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = Duration::from_millis(net.latency_ms);
            if net.jitter_ms > 0 {
                delay += Duration::from_micros(self.net_rng.random_range(0..net.jitter_ms * 1000));
            }
            if net.reorder > 0.0 && self.net_rng.random_bool(net.reorder) {
                faults.reordered += 1;
                delay += Duration::from_millis(self.net_rng.random_range(20..200));
            }
            let at = self.now + delay;
            self.seq += 1;
            let event = Event::Deliver { from, to, bytes: bytes.clone(), room };
            self.queue.push(Scheduled { at, seq: self.seq, event });
        }
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, bytes: Bytes, room: bool) {
        if let Some((scanner, _)) = self.scanner.as_mut().filter(|(s, _)| s.address() == to) {
            scanner.datagram(self.now, &bytes);
            self.after_scanner();
            return;
        }
        if let Some(a) = self.attacker.as_mut().filter(|a| a.address() == to.ip()) {
            a.datagram(self.now, from, to, &bytes);
            self.after_attacker();
            return;
        }
        // What pbx relays from its media ports (a challenge it sends to a spoofed source that
        // happens to be a phone's RTP address is no media).
        let sip = self.nodes[0].config.sip;
        if from.ip() == sip.ip()
            && from.port() != sip.port()
            && let Some(phone) = self.phone_media(to)
        {
            self.check_phone_media(phone, from, to, &bytes, room);
        }
        if let Some(&phone) = self.phone_at.get(&to) {
            if self.phones[phone].away {
                if bytes.starts_with(b"INVITE ") {
                    self.checker.invite_to_away_phone(self.now, phone);
                }
                return;
            }
            self.insider_sees(phone, from, to, &bytes);
            self.feed_phone(phone, PhoneInput::Datagram { from, to, bytes });
            return;
        }
        let Some(node) = self.nodes.iter().position(|n| n.config.sip.ip() == to.ip()) else { return };
        let slot = &mut self.nodes[node];
        let local = slot.clock.local(self.now);
        let Some(n) = slot.node.as_mut() else { return };
        n.datagram(local, from, to, bytes);
        self.after_node(node);
    }

    /// Office time: weekdays within office hours (or always, as configured).
    fn in_office(&self, at: Timestamp) -> bool {
        let w = &self.options.workload;
        let secs = at.as_secs() - ORIGIN.as_secs();
        let weekday = (secs / DAY_S) % 7; // 0 = Monday
        let hour = (secs % DAY_S / 3600) as u8;
        (w.weekends || weekday < 5) && hour >= w.office_hours.0 && hour < w.office_hours.1
    }

    /// The next call attempt of a phone: a Poisson process over office time.
    fn next_dial_time(&mut self, from: Timestamp) -> Timestamp {
        let rate = self.options.workload.calls_per_phone_per_hour;
        if rate <= 0.0 {
            return self.end + Duration::from_secs(1);
        }
        let at = from + exponential(&mut self.work_rng, 3600.0 / rate);
        // Outside office time the clock of the process stops: skip to the next opening hour.
        self.next_office_time(at, |sim| &mut sim.work_rng)
    }

    /// `at`, or a random moment of the first office hour after it, drawn from `rng`.
    fn next_office_time(&mut self, mut at: Timestamp, rng: fn(&mut Sim) -> &mut StdRng) -> Timestamp {
        let mut hops = 0;
        while !self.in_office(at) && hops < 24 * 8 {
            at = Timestamp::from_secs(at.as_secs() / 3600 * 3600 + 3600)
                + Duration::from_secs(rng(self).random_range(0..3600));
            hops += 1;
        }
        at
    }

    fn dial(&mut self, phone: usize) {
        if self.draining {
            return;
        }
        let next = self.next_dial_time(self.now);
        self.schedule(next, Event::Dial { phone });
        if self.phones[phone].away {
            return;
        }
        let c = &self.options.conference;
        if !self.options.rooms.is_empty() && c.room_probability > 0.0 && self.room_rng.random_bool(c.room_probability) {
            let room = self.room_rng.random_range(0..self.options.rooms.len());
            let stay = self.meeting_length();
            return self.join_room(phone, room, stay);
        }
        let w = &self.options.workload;
        let callee = if self.work_rng.random_bool(w.unknown_number_probability.clamp(0.0, 1.0)) {
            "9999".to_owned()
        } else if self.phones.len() < 2 {
            return;
        } else {
            let mut other = self.work_rng.random_range(0..self.phones.len() - 1);
            if other >= phone {
                other += 1;
            }
            extension(other)
        };
        let talk = exponential(&mut self.work_rng, w.talk_s_mean as f64)
            .clamp(Duration::from_secs(1), Duration::from_secs(w.talk_s_max));
        self.feed_phone(phone, PhoneInput::Dial { callee, talk });
    }
}

impl Sim {
    /// The next meeting: a Poisson process at `meetings_per_day`, a meeting that falls outside
    /// office time moved into the next office hour.
    fn next_meeting_time(&mut self, from: Timestamp) -> Timestamp {
        let at = from + exponential(&mut self.room_rng, DAY_S as f64 / self.options.conference.meetings_per_day);
        self.next_office_time(at, |sim| &mut sim.room_rng)
    }

    /// How long a meeting lasts (exponential, capped).
    fn meeting_length(&mut self) -> Duration {
        let c = &self.options.conference;
        exponential(&mut self.room_rng, c.meeting_s_mean as f64)
            .clamp(Duration::from_secs(10), Duration::from_secs(c.meeting_s_max))
    }

    /// A meeting: a room and a few phones, who dial in over its first seconds and leave over
    /// as many after its end; the next meeting is drawn now.
    fn meeting(&mut self) {
        if self.draining {
            return;
        }
        let next = self.next_meeting_time(self.now);
        self.schedule(next, Event::Meeting);
        self.report.meetings += 1;
        let room = self.room_rng.random_range(0..self.options.rooms.len());
        let c = self.options.conference.clone();
        let count = (uniform_s(&mut self.room_rng, c.meeting_phones).as_secs() as usize).min(self.phones.len());
        let mut invited = BTreeSet::new();
        while invited.len() < count {
            invited.insert(self.room_rng.random_range(0..self.phones.len()));
        }
        let length = self.meeting_length();
        let spread = Duration::from_secs(crate::options::MEETING_SPREAD_S);
        for phone in invited {
            let join = Duration::from_millis(self.room_rng.random_range(0..=spread.as_millis() as u64));
            let leave = length + Duration::from_millis(self.room_rng.random_range(0..=spread.as_millis() as u64));
            let stay = leave.saturating_sub(join).max(Duration::from_secs(5));
            self.schedule(self.now + join, Event::JoinRoom { phone, room, stay });
        }
    }

    /// A phone dials a room, at a tone nobody there talks at (none free: it stays away).
    fn join_room(&mut self, phone: usize, room: usize, stay: Duration) {
        if self.draining || self.phones[phone].away {
            return;
        }
        let (number, pin) = (self.options.rooms[room].number.clone(), self.options.rooms[room].pin.clone());
        let free = self.checker.free_tones(self.now, &number);
        if free.is_empty() {
            return;
        }
        let tone_hz = free[self.room_rng.random_range(0..free.len())];
        self.report.room_joins += 1;
        self.feed_phone(phone, PhoneInput::JoinRoom { room: number, pin, stay, tone_hz });
    }
}

impl Sim {
    /// The next forwarding change: a Poisson process over the office, one that falls outside
    /// office time moved into the next office hour.
    fn next_forward_time(&mut self, from: Timestamp) -> Timestamp {
        let per_day = self.options.forwarding.changes_per_phone_per_day * self.phones.len().max(1) as f64;
        let at = from + exponential(&mut self.forward_rng, DAY_S as f64 / per_day);
        self.next_office_time(at, |sim| &mut sim.forward_rng)
    }

    /// A phone that would dial now: here, registered, in no call.
    fn phone_idle(&self, phone: usize) -> bool {
        let slot = &self.phones[phone];
        !slot.away && slot.phone.in_call().is_none() && slot.phone.is_registered(slot.clock.local(self.now))
    }

    /// A user changes call forwarding: clears it on a phone that forwards (always, once as many
    /// forward as the office allows), or sets it on an idle phone — now and then on purpose
    /// into a loop of two or three phones, each always to the next, or mistyped.
    fn forward_change(&mut self) {
        if self.draining {
            return;
        }
        let next = self.next_forward_time(self.now);
        self.schedule(next, Event::ForwardChange);
        let f = self.options.forwarding.clone();
        let phones = self.phones.len();
        let users_max = f.users_max(phones);
        let on = self.forwarders.len();
        let rng = &mut self.forward_rng;
        if on > 0 && (on >= users_max || rng.random_bool(0.4)) {
            let Some((&phone, &kind)) = self.forwarders.iter().nth(rng.random_range(0..on)) else { return };
            let code = if rng.random_bool(0.5) { "%23002%23" } else { kind.off() };
            self.forwarders.remove(&phone);
            return self.schedule(self.now, Event::ForwardCode { phone, code: code.into(), undo: Undo::Reset(kind) });
        }
        if rng.random_bool(f.mistake_probability) {
            let phone = rng.random_range(0..phones);
            self.report.forwarding.mistakes += 1;
            let code = match rng.random_range(0..3) {
                0 => "*21*9999%23".to_owned(),
                1 => format!("*67*{}%23", extension(phone)),
                _ => "*99%23".to_owned(),
            };
            return self.schedule(self.now, Event::ForwardCode { phone, code, undo: Undo::Nothing });
        }
        let mut free: Vec<usize> =
            (0..phones).filter(|p| !self.forwarders.contains_key(p) && self.phone_idle(*p)).collect();
        let rng = &mut self.forward_rng;
        let size = if rng.random_bool(f.loop_probability) { rng.random_range(2..=3) } else { 1 };
        if free.len() < size || on + size > users_max {
            return;
        }
        let mut members = Vec::new();
        for _ in 0..size {
            members.push(free.swap_remove(rng.random_range(0..free.len())));
        }
        if size > 1 {
            // A loop: each always to the next, dialled a few seconds apart.
            self.report.forwarding.loops += 1;
            let mut at = self.now;
            for (i, &phone) in members.iter().enumerate() {
                let code = format!("*21*{}%23", extension(members[(i + 1) % size]));
                self.forwarders.insert(phone, Planned::Always);
                self.schedule(at, Event::ForwardCode { phone, code, undo: Undo::Unset });
                at = at + Duration::from_millis(self.forward_rng.random_range(1_000..=10_000));
            }
        } else {
            let phone = members[0];
            let mut target = rng.random_range(0..phones - 1);
            if target >= phone {
                target += 1;
            }
            let target = extension(target);
            let (kind, code) = match rng.random_range(0..3) {
                0 => (Planned::Always, format!("*21*{target}%23")),
                1 => (Planned::Busy, format!("*67*{target}%23")),
                _ if rng.random_bool(f.no_answer_s_probability) => {
                    let s = uniform_s(rng, f.no_answer_s).as_secs();
                    (Planned::NoAnswer, format!("*61*{target}*{s}%23"))
                }
                _ => (Planned::NoAnswer, format!("*61*{target}%23")),
            };
            self.forwarders.insert(phone, kind);
            self.schedule(self.now, Event::ForwardCode { phone, code, undo: Undo::Unset });
        }
        self.report.forwarding.users_max = self.report.forwarding.users_max.max(self.forwarders.len() as u64);
    }

    /// The phone dials the feature code, unless it is no longer idle (the plan is undone).
    fn dial_code(&mut self, phone: usize, code: String, undo: Undo) {
        if self.draining || !self.phone_idle(phone) {
            match undo {
                Undo::Nothing => {}
                Undo::Unset => {
                    self.forwarders.remove(&phone);
                }
                Undo::Reset(kind) => {
                    self.forwarders.insert(phone, kind);
                }
            }
            return;
        }
        // Phones escape `#` in the Request-URI (RFC 3261 §19.1.2); some send it as is.
        let p = self.options.forwarding.unescaped_hash_probability;
        let code = if p > 0.0 && self.forward_rng.random_bool(p) { code.replace("%23", "#") } else { code };
        self.feed_phone(phone, PhoneInput::Dial { callee: code, talk: Duration::from_secs(1) });
    }
}

/// A dialled number that is a feature code (`*21*1002%23`, `%23002%23`).
fn is_feature_code(dialled: &str) -> bool {
    dialled.starts_with(['*', '#']) || dialled.starts_with("%23")
}

/// The payload of an RTP packet (RFC 3550 §5.1: after the CSRCs and the header extension).
fn rtp_payload(bytes: &[u8]) -> Option<&[u8]> {
    let first = *bytes.first()?;
    let mut offset = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = u16::from_be_bytes([*bytes.get(offset + 2)?, *bytes.get(offset + 3)?]);
        offset += 4 + 4 * usize::from(words);
    }
    bytes.get(offset..)
}

/// The one wake-up a machine keeps: when it wants one at a time other than the one armed,
/// that time (to schedule); a wake event that finds another time armed is stale and ignored.
fn arm(armed: &mut Option<Timestamp>, want: Option<Timestamp>) -> Option<Timestamp> {
    if want.is_some() && want != *armed {
        *armed = want;
        return want;
    }
    None
}

/// Counts wake-ups at one instant; false once there are too many.
fn count_wake(wakes: &mut (Timestamp, u32), now: Timestamp) -> bool {
    if wakes.0 == now {
        wakes.1 += 1;
    } else {
        *wakes = (now, 1);
    }
    wakes.1 <= SAME_INSTANT_WAKES_MAX
}

fn add_stats(total: &mut NodeStats, s: &NodeStats) {
    total.calls_started += s.calls_started;
    total.calls_refused += s.calls_refused;
    total.cdrs_written += s.cdrs_written;
    total.registered += s.registered;
    total.expired += s.expired;
    total.auth_failed += s.auth_failed;
    total.malformed += s.malformed;
    total.licence_checks_ok += s.licence_checks_ok;
    total.licence_checks_failed += s.licence_checks_failed;
    total.licence_changes += s.licence_changes;
    total.licence_expired += s.licence_expired;
    total.reaper_runs += s.reaper_runs;
    total.security_logged += s.security_logged;
    total.room_seats += s.room_seats;
    total.room_refused += s.room_refused;
    total.rooms_opened += s.rooms_opened;
    total.participations += s.participations;
    total.room_pin_failures += s.room_pin_failures;
    total.mixer_overruns += s.mixer_overruns;
    total.room_foreign += s.room_foreign;
    total.room_shed += s.room_shed;
    total.pushes += s.pushes;
    total.refresh_pushes += s.refresh_pushes;
    total.pushes_refused += s.pushes_refused;
    total.watches_refused += s.watches_refused;
    total.push_records += s.push_records;
    total.forks_woken += s.forks_woken;
    total.forks_refused += s.forks_refused;
    total.push_timeouts += s.push_timeouts;
}

/// Runs one simulation.
pub fn run(options: Options) -> Report {
    Sim::new(options).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_conversion_finds_the_earliest_instant() {
        for (ppm, offset_us) in [(-200, 0), (-1, -3_600_000_000), (0, 0), (1, 86_400_000_000), (150, 7)] {
            let clock = Clock { ppm, offset_us };
            for secs in [0u64, 1, 3599, 86_400 * 30] {
                let local = ORIGIN + Duration::from_micros(secs * 1_000_003);
                let g = clock.global(local);
                assert!(clock.local(g) >= local, "ppm {ppm}: {g:?} reads before {local:?}");
                if g > ORIGIN && clock.local(ORIGIN) < local {
                    assert!(clock.local(Timestamp(g.0 - 1)) < local, "ppm {ppm}: not the earliest");
                }
            }
        }
    }

    #[test]
    fn office_time_skips_nights_and_weekends() {
        let sim = Sim::new(Options {
            workload: crate::options::Workload { phones: 0, ..Default::default() },
            ..Options::new(1, Duration::from_secs(60))
        });
        assert!(!sim.in_office(ORIGIN + Duration::from_secs(3 * 3600)));
        assert!(sim.in_office(ORIGIN + Duration::from_secs(9 * 3600)));
        assert!(!sim.in_office(ORIGIN + Duration::from_secs(5 * DAY_S + 9 * 3600)), "Saturday");
    }
}

//! What a simulation run is: the seed, how long, the office (workload), the network and the
//! faults. Every field has a default; a workload file (TOML) or `pbx-sim` flags change them.

use pbx_actors::bugs::Bugs;
use pbx_actors::privacy::reaper::{Periods, ReaperConfig, rules};
use serde::Deserialize;
use std::time::Duration;

/// The office: how many phones and how they are used.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    pub phones: usize,
    /// Calls each phone places per hour of office time (a Poisson process).
    pub calls_per_phone_per_hour: f64,
    /// Office hours `[from, to)` in whole hours of the simulated day; no calls outside them and
    /// on weekends. `[0, 24]` with `weekends = true` calls around the clock.
    pub office_hours: (u8, u8),
    pub weekends: bool,
    /// The caller's talk time: exponential with this mean, capped at `talk_s_max`.
    pub talk_s_mean: u64,
    pub talk_s_max: u64,
    pub answer_probability: f64,
    pub reject_probability: f64,
    /// Seconds a callee thinks before answering or rejecting (uniform).
    pub ring_s: (u64, u64),
    pub cancel_probability: f64,
    /// Both parties hang up at the same moment (within 20 ms), so their BYEs cross.
    pub hangup_together_probability: f64,
    /// A dialled number nobody has (answered 404 by the registrar).
    pub unknown_number_probability: f64,
    pub register_expires_s: u32,
    /// A call's phones send one RTP packet each this often (keeps the relay's media timeout
    /// away; 0 sends none, and every answered call ends by the RTP timeout).
    pub rtp_interval_s: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            phones: 20,
            calls_per_phone_per_hour: 1.0,
            office_hours: (8, 18),
            weekends: false,
            talk_s_mean: 180,
            talk_s_max: 3600,
            answer_probability: 0.8,
            reject_probability: 0.1,
            ring_s: (1, 15),
            cancel_probability: 0.05,
            hangup_together_probability: 0.05,
            unknown_number_probability: 0.01,
            register_expires_s: 3600,
            rtp_interval_s: 20,
        }
    }
}

/// One conference room of the node (`[[rooms]]` in a workload file): the product's
/// `RoomDecl`, with the simulation's bounds on what it may hold.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoomOptions {
    /// The number phones dial; not an extension's.
    pub number: String,
    /// Digits the caller keys (then `#`) before it is let in.
    #[serde(default)]
    pub pin: Option<String>,
    /// More callers than this are refused 486 (at most [`ROOM_PARTICIPANTS_MAX`]).
    #[serde(default = "RoomOptions::default_max_participants")]
    pub max_participants: usize,
}

impl RoomOptions {
    fn default_max_participants() -> usize {
        8
    }

    /// The default office's rooms: one open to all, one small with a PIN (so that meetings
    /// key PINs and are sometimes refused as full).
    pub fn office() -> Vec<RoomOptions> {
        vec![
            RoomOptions { number: "800".into(), pin: None, max_participants: 8 },
            RoomOptions { number: "801".into(), pin: Some("2468".into()), max_participants: 3 },
        ]
    }
}

/// How the office uses its conference rooms: meetings (several phones dial one room within a
/// few seconds of each other and stay about as long), stray calls to a room instead of an
/// extension, and what a participant does there — key the PIN, talk in spurts, mute and
/// unmute with `*6`, hang up or vanish.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConferenceOptions {
    /// Meetings per day (a Poisson process; one that falls outside office time is moved into
    /// the next office hour), each in a random room.
    pub meetings_per_day: f64,
    /// Phones a meeting invites (uniform); more than the room takes get 486.
    pub meeting_phones: (u64, u64),
    /// A meeting lasts exponentially long with this mean, capped at `meeting_s_max`; each
    /// phone dials within its first [`MEETING_SPREAD_S`] and leaves within as much after it.
    pub meeting_s_mean: u64,
    pub meeting_s_max: u64,
    /// A call a phone places goes to a random room instead of an extension (it stays as long
    /// as a meeting would).
    pub room_probability: f64,
    /// A participant talks in spurts of this many seconds (uniform) ...
    pub talk_s: (u64, u64),
    /// ... with pauses of this many between them.
    pub pause_s: (u64, u64),
    /// At each change between talking and pausing, the participant keys `*6` (mute, or
    /// unmute) with this probability: a muted participant may well go on talking.
    pub mute_probability: f64,
    /// At the end of its stay a participant vanishes (no BYE, no more RTP) instead of hanging
    /// up: the room's silence timer must end its call.
    pub vanish_probability: f64,
}

/// Seconds over which a meeting's phones dial in, and over which they leave.
pub const MEETING_SPREAD_S: u64 = 20;
/// Participants a simulated room may take at most: each talks at its own tone, and there are
/// this many tones the checkers can tell apart (`crate::check::TONES_HZ`).
pub const ROOM_PARTICIPANTS_MAX: usize = 16;

impl Default for ConferenceOptions {
    /// About one short meeting of three a day, and a call to a room now and then: a few
    /// participant-minutes, so that a day of office costs little more to simulate with a
    /// room's mixer sending each participant 50 packets a second (a 100-phone office runs
    /// about an eighth longer than without rooms).
    fn default() -> Self {
        ConferenceOptions {
            meetings_per_day: 1.0,
            meeting_phones: (2, 4),
            meeting_s_mean: 60,
            meeting_s_max: 600,
            room_probability: 0.0005,
            talk_s: (1, 6),
            pause_s: (1, 10),
            mute_probability: 0.15,
            vanish_probability: 0.1,
        }
    }
}

impl ConferenceOptions {
    /// No meetings and no calls to rooms.
    pub fn off() -> Self {
        ConferenceOptions { meetings_per_day: 0.0, room_probability: 0.0, ..Self::default() }
    }

    /// The longest a phone stays in a room.
    pub fn stay_max(&self) -> Duration {
        Duration::from_secs(self.meeting_s_max + 2 * MEETING_SPREAD_S)
    }
}

/// Phones that are mobile apps woken by push (RFC 8599), and the push service between pbx and
/// them (FCM as the simulation plays it). Such a phone registers with `pn-provider`,
/// `pn-param` and `pn-prid` in its Contact and *sleeps*: it answers nothing (no INVITE, no
/// OPTIONS) unless it is in a call or was woken less than `awake_s` ago. A call to it waits
/// (at most `wait_s`) while pbx pushes it; a push that reaches the phone wakes it, and it
/// registers again (from a new source port, now and then, as a restarted app does) and then
/// takes the INVITE as any phone does. It refreshes its registration as the others do.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PushOptions {
    /// The share of the office's phones that are push apps (drawn from the seed, exactly
    /// this share rounded to whole phones).
    pub phones: f64,
    /// How long a call waits for a pushed phone to register (the node's push wait).
    pub wait_s: u64,
    /// The push service's answer reaches pbx this many milliseconds after the push (uniform).
    pub answer_ms: (u64, u64),
    /// A push the service accepted reaches the phone this many milliseconds after its answer
    /// (uniform) ...
    pub delivery_ms: (u64, u64),
    /// ... except this share, which reaches it this many seconds late (a phone dozing): often
    /// after the call has given up on it.
    pub late: f64,
    pub late_s: (u64, u64),
    /// Pushes the service accepts ("delivered") that never reach the phone.
    pub loss: f64,
    /// Pushes the service answers "unregistered": the app's token is void (the app has a new
    /// one, which it registers with at its next REGISTER). pbx drops the old token's bindings.
    pub unregistered: f64,
    /// A woken app sends its REGISTER this many milliseconds after the push reached it
    /// (uniform): the app starting.
    pub wake_ms: (u64, u64),
    /// A woken app registers from a new source port with this probability (it was restarted);
    /// the old binding of its token goes.
    pub new_port: f64,
    /// An app stays awake this long after a push reached it or its last call ended.
    pub awake_s: u64,
}

/// The shortest stay awake: a call's last transactions (a BYE's retransmissions, 64·T1) must
/// find the app awake.
pub const PUSH_AWAKE_S_MIN: u64 = 40;
/// The longest push wait the node takes (its config refuses longer ones too: a caller hears
/// nothing while it waits).
pub const PUSH_WAIT_S_MAX: u64 = 60;

impl Default for PushOptions {
    /// One phone in ten is an app; pushes mostly wake it within a few seconds, some come late,
    /// a few are lost or hit a stale token.
    fn default() -> Self {
        PushOptions {
            phones: 0.1,
            wait_s: 10,
            answer_ms: (20, 250),
            delivery_ms: (50, 1_500),
            late: 0.03,
            late_s: (5, 60),
            loss: 0.03,
            unregistered: 0.02,
            wake_ms: (300, 3_000),
            new_port: 0.3,
            awake_s: 60,
        }
    }
}

impl PushOptions {
    /// No phone is a push app (pbx still pushes, but no contact asks for it).
    pub fn off() -> Self {
        PushOptions { phones: 0.0, ..Self::default() }
    }

    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.wait_s)
    }
}

/// Call forwarding as the office's users set it: with the feature codes their phones dial
/// (`*21*N#` always, `*67*N#` on busy, `*61*N*S#` on no answer after S seconds, `#21#`,
/// `#67#`, `#61#` and `#002#` off; `#` written `%23`, RFC 3261 §19.1.2), now and then, a few
/// of them at a time — and some on purpose into loops (A always to B while B always to A, and
/// three-cycles), which pbx must cut.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardingOptions {
    /// Changes per phone per day: a Poisson process over the whole office, one that falls
    /// outside office time moved into the next office hour. A change sets forwarding on an idle
    /// phone, or clears it on one that forwards.
    pub changes_per_phone_per_day: f64,
    /// At most this share of the phones forward at a time (rounded, and at least
    /// [`FORWARDING_USERS_MIN`], so that a three-cycle fits): a change past it clears.
    pub users: f64,
    /// A change that sets forwarding sets up a loop instead (two or three phones, each always
    /// to the next) with this probability.
    pub loop_probability: f64,
    /// A no-answer forward names its seconds (uniform in this range) ...
    pub no_answer_s: (u64, u64),
    /// ... with this probability; else pbx's default applies
    /// ([`pbx_actors::registrar::forwarding::NO_ANSWER_AFTER_S_DEFAULT`]).
    pub no_answer_s_probability: f64,
    /// A user mistypes with this probability: a target that is no extension or the phone's own
    /// (pbx answers 403), or a code pbx does not know (404).
    pub mistake_probability: f64,
    /// A phone sends a code's `#` as is in the Request-URI with this probability, else as
    /// `%23` (RFC 3261 §19.1.2 wants it escaped; the README says pbx takes either).
    pub unescaped_hash_probability: f64,
}

/// The fewest phones that may forward at a time (a three-cycle's).
pub const FORWARDING_USERS_MIN: usize = 3;

impl Default for ForwardingOptions {
    /// About one change per phone per ten office days, at most one phone in twenty forwarding:
    /// a few dozen forwarded calls a day in a 100-phone office, which keeps its character.
    fn default() -> Self {
        ForwardingOptions {
            changes_per_phone_per_day: 0.1,
            users: 0.05,
            loop_probability: 0.2,
            no_answer_s: (3, 12),
            no_answer_s_probability: 0.7,
            mistake_probability: 0.05,
            unescaped_hash_probability: 0.0,
        }
    }
}

impl ForwardingOptions {
    /// Nobody forwards.
    pub fn off() -> Self {
        ForwardingOptions { changes_per_phone_per_day: 0.0, ..Self::default() }
    }

    /// Phones that may forward at a time in an office of `phones`.
    pub fn users_max(&self, phones: usize) -> usize {
        ((self.users * phones as f64).round() as usize).max(FORWARDING_USERS_MIN).min(phones)
    }
}

/// Deliberate bugs of the simulator's own glue (`--inject-bug`, beside the product's
/// [`Bugs`]): they prove the checkers see what the glue gets wrong.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimBugs {
    /// A conference participant is not taken out of its room when its call ends (the glue
    /// forgets the product shell's `Leave`).
    pub stuck_participant: bool,
    /// The node hands its calls three times the push wait it is configured with (a unit
    /// slip in the glue), so a fork waits for its pushed phone well past its timer.
    pub slow_push_timer: bool,
    /// A call's fork that never got a leg (its pushed phone never registered) is not reported
    /// down: the glue drops the core's `LegDown` for it, as the product did before
    /// `CallOutput::ForkGone`, so the endpoint routes to it for ever.
    pub forgotten_fork: bool,
    /// A restarted node's registrar is not given the forwarding its disk holds (the glue
    /// forgets the product shell's `with_forwarding`), so every forward set before a crash is
    /// gone from routing though its phone was told it is on.
    pub forgotten_forwarding: bool,
}

impl SimBugs {
    pub const NAMES: [&'static str; 4] =
        ["stuck-participant", "slow-push-timer", "forgotten-fork", "forgotten-forwarding"];

    /// Switches on the bug called `name`; `false` if the simulator has none by that name.
    pub fn enable(&mut self, name: &str) -> bool {
        match name {
            "stuck-participant" => self.stuck_participant = true,
            "slow-push-timer" => self.slow_push_timer = true,
            "forgotten-fork" => self.forgotten_fork = true,
            "forgotten-forwarding" => self.forgotten_forwarding = true,
            _ => return false,
        }
        true
    }
}

/// The network between phones and nodes (in the spirit of TigerBeetle's packet simulator and
/// str0m's netem): every datagram is delayed, and may be lost, duplicated or held back.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetOptions {
    /// One-way delay: `latency_ms` plus a uniform `0..jitter_ms` (jitter reorders datagrams
    /// sent closer together than it).
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub loss: f64,
    pub duplicate: f64,
    /// A datagram held back an extra 20–200 ms (reordered behind later ones).
    pub reorder: f64,
    /// Partitions: some phones cut off from the nodes, on average this often per day.
    pub partitions_per_day: f64,
    pub partition_s: (u64, u64),
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            latency_ms: 5,
            jitter_ms: 5,
            loss: 0.005,
            duplicate: 0.002,
            reorder: 0.002,
            partitions_per_day: 2.0,
            partition_s: (10, 300),
        }
    }
}

impl NetOptions {
    /// A perfect network: no delay variation, no loss, no partitions.
    pub fn quiet() -> Self {
        NetOptions { jitter_ms: 0, loss: 0.0, duplicate: 0.0, reorder: 0.0, partitions_per_day: 0.0, ..Self::default() }
    }
}

/// Faults of machines: node crashes, phones that vanish, clocks that drift.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultOptions {
    /// Node crashes (kill -9: memory and uncommitted writes lost) per node per day.
    pub crashes_per_day: f64,
    /// Seconds a crashed node stays down before it restarts.
    pub down_s: (u64, u64),
    /// Each phone goes away (no BYE, no un-REGISTER) this often per day, for `away_s`.
    pub away_per_phone_per_day: f64,
    pub away_s: (u64, u64),
    /// Every node's and phone's clock runs fast or slow by up to this many parts per million.
    pub drift_ppm: u32,
    /// Milliseconds a write waits for its fsync (uniform).
    pub fsync_ms: (u64, u64),
    /// After each message a node's actor handles, the chance that the node stalls for
    /// 10 µs–2 ms with the rest of its messages waiting, so that datagrams, timers and disk
    /// commits can overtake them — the interleavings of actors on real threads.
    pub stall: f64,
}

impl Default for FaultOptions {
    fn default() -> Self {
        FaultOptions {
            crashes_per_day: 0.5,
            down_s: (5, 120),
            away_per_phone_per_day: 0.2,
            away_s: (60, 4 * 3600),
            drift_ppm: 100,
            fsync_ms: (1, 5),
            stall: 0.02,
        }
    }
}

impl FaultOptions {
    pub fn none() -> Self {
        FaultOptions { crashes_per_day: 0.0, away_per_phone_per_day: 0.0, drift_ppm: 0, stall: 0.0, ..Self::default() }
    }
}

/// The node's retention reaper (its periods and pace), and the intruder whose password
/// guessing fills the security log it works on.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyOptions {
    /// Run the node's retention reaper.
    pub reaper: bool,
    /// Seconds from one reaper run to the next.
    pub interval_s: u64,
    /// Records one batch (one disk transaction) changes at most.
    pub batch: u32,
    /// The node's retention periods (`[privacy]` in its config); defaults: the inventory's.
    pub binding_grace_s: u64,
    pub request_log_anonymise_days: u32,
    pub request_log_delete_days: u32,
    pub cdr_days: u32,
    pub audit_days: u32,
    pub push_days: u32,
    /// Bursts of password guessing from outside the office per day (like sipvicious'
    /// svcrack): REGISTERs with wrong passwords, for extensions that exist and that do not.
    pub scans_per_day: f64,
    /// Guesses one burst tries (uniform); it stops early once the node blocks it.
    pub scan_guesses: (u64, u64),
}

impl Default for PrivacyOptions {
    fn default() -> Self {
        let periods = Periods::default();
        let reaper = ReaperConfig::default();
        PrivacyOptions {
            reaper: true,
            interval_s: reaper.interval.as_secs(),
            batch: reaper.batch,
            binding_grace_s: periods.binding_grace.as_secs(),
            request_log_anonymise_days: periods.request_log_anonymise_days,
            request_log_delete_days: periods.request_log_delete_days,
            cdr_days: periods.cdr_days,
            audit_days: periods.audit_days,
            push_days: periods.push_days,
            scans_per_day: 3.0,
            scan_guesses: (3, 20),
        }
    }
}

impl PrivacyOptions {
    pub fn periods(&self) -> Periods {
        Periods {
            binding_grace: Duration::from_secs(self.binding_grace_s),
            request_log_anonymise_days: self.request_log_anonymise_days,
            request_log_delete_days: self.request_log_delete_days,
            cdr_days: self.cdr_days,
            audit_days: self.audit_days,
            push_days: self.push_days,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_s)
    }

    /// The reaper the node runs: the product's rules for these periods.
    pub fn reaper_config(&self, bugs: Bugs) -> ReaperConfig {
        ReaperConfig {
            rules: rules(&self.periods()),
            interval: self.interval(),
            batch: self.batch,
            bugs,
            ..ReaperConfig::default()
        }
    }
}

/// The attacker ([`crate::attacker`]): who it is, what it can see, and how often it tries
/// each attack. Its campaigns start as Poisson processes over the whole run (nights and
/// weekends too), each kind on its own.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AttackerOptions {
    pub enabled: bool,
    /// It is also the user of the office's first phone (extension 1000) and learns the shape
    /// of pbx's identifiers and ports from that phone's calls.
    pub insider: bool,
    /// It sees every datagram to and from pbx (a tap), so its forgeries carry real
    /// identifiers from the real addresses. Nothing in plain UDP stops that: runs that set it
    /// show the checkers catching a stranger who gets in.
    pub on_path: bool,
    /// Campaigns that keep one phone's address locked out with spoofed failed logins, per
    /// day, and how long each lasts.
    pub lockout_per_day: f64,
    pub lockout_minutes: u64,
    /// Campaigns of forged BYE/re-INVITE/CANCEL requests and 180/486/603/200 answers per day,
    /// and the forgeries in each (uniform).
    pub dialog_per_day: f64,
    pub dialog_forgeries: (u64, u64),
    /// RTP injection campaigns per day, the ports each streams to (uniform), and the packets
    /// of each stream (20 ms apart, consecutive sequence numbers).
    pub rtp_per_day: f64,
    pub rtp_ports: (u64, u64),
    pub rtp_packets: u32,
    /// Floods of unauthenticated REGISTERs and INVITEs from spoofed sources per day, their
    /// size (uniform) and rate.
    pub flood_per_day: f64,
    pub flood_requests: (u64, u64),
    pub flood_rate_per_s: u32,
}

impl Default for AttackerOptions {
    /// A few campaigns of each kind a day: about 1 % of the datagrams of a 50-phone office.
    fn default() -> Self {
        AttackerOptions {
            enabled: true,
            insider: true,
            on_path: false,
            lockout_per_day: 2.0,
            lockout_minutes: 20,
            dialog_per_day: 4.0,
            dialog_forgeries: (20, 100),
            rtp_per_day: 4.0,
            rtp_ports: (50, 300),
            rtp_packets: 8,
            flood_per_day: 2.0,
            flood_requests: (500, 2_000),
            flood_rate_per_s: 200,
        }
    }
}

impl AttackerOptions {
    /// No attacks at all.
    pub fn off() -> Self {
        AttackerOptions { enabled: false, ..Self::default() }
    }

    /// The rate of campaigns of one kind, per day (0 when the attacker is off).
    pub fn per_day(&self, kind: crate::attacker::AttackKind) -> f64 {
        use crate::attacker::AttackKind;
        if !self.enabled {
            return 0.0;
        }
        match kind {
            AttackKind::Lockout => self.lockout_per_day,
            AttackKind::Dialog => self.dialog_per_day,
            AttackKind::Rtp => self.rtp_per_day,
            AttackKind::Flood => self.flood_per_day,
        }
    }

    /// Only the campaigns of `kinds`, each at the rate given.
    pub fn only(kinds: &[(crate::attacker::AttackKind, f64)]) -> Self {
        use crate::attacker::AttackKind;
        let mut o = AttackerOptions {
            lockout_per_day: 0.0,
            dialog_per_day: 0.0,
            rtp_per_day: 0.0,
            flood_per_day: 0.0,
            ..Self::default()
        };
        for &(kind, rate) in kinds {
            match kind {
                AttackKind::Lockout => o.lockout_per_day = rate,
                AttackKind::Dialog => o.dialog_per_day = rate,
                AttackKind::Rtp => o.rtp_per_day = rate,
                AttackKind::Flood => o.flood_per_day = rate,
            }
        }
        o
    }
}

/// Floods faster than this are refused: each request is an event of the simulation.
pub const FLOOD_RATE_PER_S_MAX: u32 = 10_000;
/// Campaign sizes above these are refused, so that a run stays fast.
pub const ATTACK_SIZE_MAX: u64 = 100_000;

/// Reaper intervals shorter than this are refused: the retention checkers allow a run this
/// long ([`crate::check::REAPER_RUN_BOUND`]), and runs must not overlap.
pub const REAPER_INTERVAL_S_MIN: u64 = 60;

/// One run.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Simulated time with workload and faults; then `drain` without either, so that every
    /// call can end before the final checks.
    pub duration: Duration,
    pub drain: Duration,
    pub workload: Workload,
    pub net: NetOptions,
    pub faults: FaultOptions,
    pub licence: crate::licence::LicenceOptions,
    pub privacy: PrivacyOptions,
    pub attacker: AttackerOptions,
    pub rooms: Vec<RoomOptions>,
    pub conference: ConferenceOptions,
    /// Phones woken by push, and the push service.
    pub push: PushOptions,
    /// Call forwarding the users set with feature codes.
    pub forwarding: ForwardingOptions,
    /// The softphone proxy's ledger and the phones that reach the PBX through it.
    pub proxy: crate::proxy::ProxyOptions,
    pub bugs: Bugs,
    pub sim_bugs: SimBugs,
    /// How often the invariant checkers look at the whole system (they also check on events).
    pub check_every: Duration,
    /// Stop at the first violation (the replay shows it); otherwise collect up to 20.
    pub stop_at_first_violation: bool,
}

impl Options {
    pub fn new(seed: u64, duration: Duration) -> Options {
        Options {
            seed,
            duration,
            drain: Duration::from_secs(15 * 60),
            workload: Workload::default(),
            net: NetOptions::default(),
            faults: FaultOptions::default(),
            licence: crate::licence::LicenceOptions::default(),
            privacy: PrivacyOptions::default(),
            attacker: AttackerOptions::default(),
            rooms: RoomOptions::office(),
            conference: ConferenceOptions::default(),
            push: PushOptions::default(),
            forwarding: ForwardingOptions::default(),
            proxy: crate::proxy::ProxyOptions::default(),
            bugs: Bugs::default(),
            sim_bugs: SimBugs::default(),
            check_every: Duration::from_secs(10),
            stop_at_first_violation: true,
        }
    }
}

/// Phones the simulated network has addresses and numbers for.
pub const PHONES_MAX: usize = 10_000;

impl Options {
    /// Refuses what the simulation cannot mean, naming the key and the reason.
    pub fn validate(&self) -> Result<(), String> {
        let w = &self.workload;
        let n = &self.net;
        let f = &self.faults;
        let probabilities = [
            ("office.answer_probability", w.answer_probability),
            ("office.reject_probability", w.reject_probability),
            ("office.cancel_probability", w.cancel_probability),
            ("office.hangup_together_probability", w.hangup_together_probability),
            ("office.unknown_number_probability", w.unknown_number_probability),
            ("network.loss", n.loss),
            ("network.duplicate", n.duplicate),
            ("network.reorder", n.reorder),
            ("faults.stall", f.stall),
            ("licence.tamper", self.licence.tamper),
            ("conference.room_probability", self.conference.room_probability),
            ("conference.mute_probability", self.conference.mute_probability),
            ("conference.vanish_probability", self.conference.vanish_probability),
            ("push.phones", self.push.phones),
            ("push.late", self.push.late),
            ("push.loss", self.push.loss),
            ("push.unregistered", self.push.unregistered),
            ("push.new_port", self.push.new_port),
            ("forwarding.users", self.forwarding.users),
            ("forwarding.loop_probability", self.forwarding.loop_probability),
            ("forwarding.no_answer_s_probability", self.forwarding.no_answer_s_probability),
            ("forwarding.mistake_probability", self.forwarding.mistake_probability),
            ("forwarding.unescaped_hash_probability", self.forwarding.unescaped_hash_probability),
        ];
        for (key, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{key}: {p} is not a probability (0 to 1)"));
            }
        }
        let rates = [
            ("office.calls_per_phone_per_hour", w.calls_per_phone_per_hour),
            ("network.partitions_per_day", n.partitions_per_day),
            ("faults.crashes_per_day", f.crashes_per_day),
            ("faults.away_per_phone_per_day", f.away_per_phone_per_day),
            ("licence.outages_per_30d", self.licence.outages_per_30d),
            ("privacy.scans_per_day", self.privacy.scans_per_day),
            ("attacker.lockout_per_day", self.attacker.lockout_per_day),
            ("attacker.dialog_per_day", self.attacker.dialog_per_day),
            ("attacker.rtp_per_day", self.attacker.rtp_per_day),
            ("attacker.flood_per_day", self.attacker.flood_per_day),
            ("conference.meetings_per_day", self.conference.meetings_per_day),
            ("forwarding.changes_per_phone_per_day", self.forwarding.changes_per_phone_per_day),
        ];
        for (key, r) in rates {
            if !(r.is_finite() && r >= 0.0) {
                return Err(format!("{key}: {r} must be a rate of zero or more"));
            }
        }
        if w.phones > PHONES_MAX {
            return Err(format!(
                "office.phones: {} is more than the {PHONES_MAX} the simulation has room for",
                w.phones
            ));
        }
        if !(w.office_hours.0 < w.office_hours.1 && w.office_hours.1 <= 24) {
            return Err(format!("office.office_hours: {:?} must be [from, to) with from < to <= 24", w.office_hours));
        }
        if w.answer_probability + w.reject_probability > 1.0 {
            return Err("office.answer_probability + office.reject_probability: more than 1".into());
        }
        let ranges = [
            ("office.ring_s", w.ring_s),
            ("network.partition_s", n.partition_s),
            ("faults.down_s", f.down_s),
            ("faults.away_s", f.away_s),
            ("faults.fsync_ms", f.fsync_ms),
            ("licence.outage_h", self.licence.outage_h),
            ("privacy.scan_guesses", self.privacy.scan_guesses),
            ("attacker.dialog_forgeries", self.attacker.dialog_forgeries),
            ("attacker.rtp_ports", self.attacker.rtp_ports),
            ("attacker.flood_requests", self.attacker.flood_requests),
            ("conference.meeting_phones", self.conference.meeting_phones),
            ("conference.talk_s", self.conference.talk_s),
            ("conference.pause_s", self.conference.pause_s),
            ("push.answer_ms", self.push.answer_ms),
            ("push.delivery_ms", self.push.delivery_ms),
            ("push.late_s", self.push.late_s),
            ("push.wake_ms", self.push.wake_ms),
            ("forwarding.no_answer_s", self.forwarding.no_answer_s),
        ];
        for (key, (low, high)) in ranges {
            if low > high {
                return Err(format!("{key}: [{low}, {high}] is not a range (low > high)"));
            }
        }
        let a = &self.attacker;
        let sizes = [
            ("attacker.dialog_forgeries", a.dialog_forgeries.1),
            ("attacker.rtp_ports", a.rtp_ports.1),
            ("attacker.rtp_packets", u64::from(a.rtp_packets)),
            ("attacker.flood_requests", a.flood_requests.1),
        ];
        for (key, size) in sizes {
            if size > ATTACK_SIZE_MAX {
                return Err(format!("{key}: {size} is more than the {ATTACK_SIZE_MAX} a run has room for"));
            }
        }
        if a.flood_rate_per_s == 0 || a.flood_rate_per_s > FLOOD_RATE_PER_S_MAX {
            return Err(format!(
                "attacker.flood_rate_per_s: {} must be 1 to {FLOOD_RATE_PER_S_MAX}",
                a.flood_rate_per_s
            ));
        }
        if a.lockout_minutes == 0 || a.rtp_packets == 0 {
            return Err("attacker.lockout_minutes and attacker.rtp_packets must be positive".into());
        }
        let p = &self.privacy;
        if p.interval_s < REAPER_INTERVAL_S_MIN {
            return Err(format!("privacy.interval_s: {} is less than {REAPER_INTERVAL_S_MIN}", p.interval_s));
        }
        if p.batch == 0 {
            return Err("privacy.batch: must be at least 1".into());
        }
        if self.licence.grace_days == 0 {
            return Err("licence.grace_days: must be at least 1".into());
        }
        if w.talk_s_mean == 0 || w.talk_s_max == 0 || w.register_expires_s == 0 {
            return Err("office.talk_s_mean, office.talk_s_max and office.register_expires_s must be positive".into());
        }
        self.validate_push()?;
        self.validate_forwarding()?;
        self.validate_rooms()
    }

    fn validate_push(&self) -> Result<(), String> {
        let p = &self.push;
        if !(1..=PUSH_WAIT_S_MAX).contains(&p.wait_s) {
            return Err(format!("push.wait_s: {} must be 1 to {PUSH_WAIT_S_MAX}", p.wait_s));
        }
        if p.awake_s < PUSH_AWAKE_S_MIN {
            return Err(format!("push.awake_s: {} is less than {PUSH_AWAKE_S_MIN}", p.awake_s));
        }
        if p.loss + p.unregistered > 1.0 {
            return Err("push.loss + push.unregistered: more than 1".into());
        }
        Ok(())
    }

    fn validate_forwarding(&self) -> Result<(), String> {
        let (low, high) = self.forwarding.no_answer_s;
        let range = pbx_actors::registrar::forwarding::NO_ANSWER_AFTER_S;
        if low < u64::from(*range.start()) || high > u64::from(*range.end()) {
            return Err(format!(
                "forwarding.no_answer_s: [{low}, {high}] must lie within {}–{} (pbx refuses other seconds)",
                range.start(),
                range.end()
            ));
        }
        Ok(())
    }

    fn validate_rooms(&self) -> Result<(), String> {
        let c = &self.conference;
        if c.meeting_s_mean == 0 || c.meeting_s_max == 0 || c.talk_s.0 == 0 || c.pause_s.0 == 0 {
            return Err(
                "conference.meeting_s_mean, conference.meeting_s_max, conference.talk_s and conference.pause_s \
                 must be positive"
                    .into(),
            );
        }
        let phones = self.workload.phones;
        let mut numbers = std::collections::BTreeSet::new();
        for room in &self.rooms {
            let number = &room.number;
            let is_extension = number.parse::<usize>().is_ok_and(|n| (1000..1000 + phones).contains(&n));
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || is_extension || number == "9999" {
                return Err(format!("rooms: {number:?} must be digits, and no extension's number"));
            }
            if !numbers.insert(number.as_str()) {
                return Err(format!("rooms: {number} is declared twice"));
            }
            if room.pin.as_ref().is_some_and(|p| p.is_empty() || p.len() > 16 || !p.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(format!("rooms: {number}'s pin must be 1 to 16 digits"));
            }
            if !(1..=ROOM_PARTICIPANTS_MAX).contains(&room.max_participants) {
                return Err(format!(
                    "rooms: {number}'s max_participants {} must be 1 to {ROOM_PARTICIPANTS_MAX}",
                    room.max_participants
                ));
            }
        }
        Ok(())
    }
}

/// A workload file: `[office]`, `[network]`, `[faults]`, `[licence]`, `[privacy]`,
/// `[attacker]`, `[conference]`, `[push]` and `[forwarding]` tables and `[[rooms]]`, each optional (no `[[rooms]]`:
/// the default office's two rooms; `rooms = []`: none).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadFile {
    pub office: Workload,
    pub network: NetOptions,
    pub faults: FaultOptions,
    pub licence: crate::licence::LicenceOptions,
    pub privacy: PrivacyOptions,
    pub attacker: AttackerOptions,
    pub conference: ConferenceOptions,
    pub push: PushOptions,
    pub forwarding: ForwardingOptions,
    pub rooms: Vec<RoomOptions>,
}

impl Default for WorkloadFile {
    fn default() -> Self {
        WorkloadFile {
            office: Workload::default(),
            network: NetOptions::default(),
            faults: FaultOptions::default(),
            licence: crate::licence::LicenceOptions::default(),
            privacy: PrivacyOptions::default(),
            attacker: AttackerOptions::default(),
            conference: ConferenceOptions::default(),
            push: PushOptions::default(),
            forwarding: ForwardingOptions::default(),
            rooms: RoomOptions::office(),
        }
    }
}

impl WorkloadFile {
    /// Parses a workload file; an error names the key and the reason.
    pub fn parse(text: &str) -> Result<WorkloadFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// `30d`, `12h`, `90m`, `45s` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number with d, h, m or s"))?;
    let secs = match unit {
        "d" => n * 86_400,
        "h" => n * 3_600,
        "m" => n * 60,
        "s" => n,
        _ => return Err(format!("{text:?}: unit must be d, h, m or s")),
    };
    Ok(Duration::from_secs(secs))
}

/// The shortest way to write `d` in the units [`parse_duration`] reads.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s > 0 && s.is_multiple_of(size) {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_bad_ones_say_why() {
        for text in ["30d", "12h", "90m", "45s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(parse_duration("120").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("3w").unwrap_err().contains("unit"));
        assert!(parse_duration("d").unwrap_err().contains("number"));
    }

    #[test]
    fn the_example_workload_parses() {
        let file = WorkloadFile::parse(include_str!("../workloads/office.toml")).unwrap();
        assert_eq!(file.office.phones, 100);
        assert_eq!(file.faults.away_s, (60, 14_400));
        assert_eq!(file.privacy, PrivacyOptions::default(), "the example shows the defaults");
        assert_eq!(file.attacker, AttackerOptions::default(), "the example shows the defaults");
        assert_eq!(file.conference, ConferenceOptions::default(), "the example shows the defaults");
        assert_eq!(file.rooms, RoomOptions::office(), "the example shows the defaults");
        assert_eq!(file.push, PushOptions::default(), "the example shows the defaults");
        assert_eq!(file.forwarding, ForwardingOptions::default(), "the example shows the defaults");
        let harsh = WorkloadFile::parse(include_str!("../workloads/harsh.toml")).unwrap();
        assert_eq!((harsh.office.phones, harsh.network.loss), (40, 0.05));
        assert_eq!(harsh.rooms, RoomOptions::office(), "no [[rooms]]: the office's");
        let none = WorkloadFile::parse("rooms = []\n[conference]\nmeetings_per_day = 0.0\n").unwrap();
        assert!(none.rooms.is_empty());
    }

    #[test]
    fn nonsense_options_are_refused_by_name() {
        let base = Options::new(1, Duration::from_secs(60));
        assert_eq!(base.validate(), Ok(()));
        let mut o = base.clone();
        o.net.loss = 1.5;
        assert!(o.validate().unwrap_err().starts_with("network.loss:"));
        let mut o = base.clone();
        o.workload.office_hours = (18, 8);
        assert!(o.validate().unwrap_err().starts_with("office.office_hours:"));
        let mut o = base.clone();
        o.faults.down_s = (10, 5);
        assert!(o.validate().unwrap_err().starts_with("faults.down_s:"));
        let mut o = base.clone();
        o.workload.phones = PHONES_MAX + 1;
        assert!(o.validate().unwrap_err().starts_with("office.phones:"));
        let mut o = base.clone();
        o.privacy.interval_s = 1;
        assert!(o.validate().unwrap_err().starts_with("privacy.interval_s:"));
        let mut o = base.clone();
        o.attacker.flood_rate_per_s = FLOOD_RATE_PER_S_MAX + 1;
        assert!(o.validate().unwrap_err().starts_with("attacker.flood_rate_per_s:"));
        let mut o = base.clone();
        o.attacker.rtp_ports = (10, 5);
        assert!(o.validate().unwrap_err().starts_with("attacker.rtp_ports:"));
        let mut o = base.clone();
        o.push.wait_s = PUSH_WAIT_S_MAX + 1;
        assert!(o.validate().unwrap_err().starts_with("push.wait_s:"));
        let mut o = base.clone();
        o.push.awake_s = 10;
        assert!(o.validate().unwrap_err().starts_with("push.awake_s:"));
        let mut o = base.clone();
        o.forwarding.no_answer_s = (0, 10);
        assert!(o.validate().unwrap_err().starts_with("forwarding.no_answer_s:"));
        let mut o = base.clone();
        o.forwarding.changes_per_phone_per_day = -1.0;
        assert!(o.validate().unwrap_err().starts_with("forwarding.changes_per_phone_per_day:"));
        let mut o = base.clone();
        o.conference.vanish_probability = 2.0;
        assert!(o.validate().unwrap_err().starts_with("conference.vanish_probability:"));
        let room = |number: &str, pin: Option<&str>, max| RoomOptions {
            number: number.into(),
            pin: pin.map(str::to_owned),
            max_participants: max,
        };
        for (rooms, error) in [
            (vec![room("1005", None, 4)], "extension's"),
            (vec![room("8x", None, 4)], "digits"),
            (vec![room("800", None, 4), room("800", None, 4)], "twice"),
            (vec![room("800", Some("12#"), 4)], "pin"),
            (vec![room("800", None, ROOM_PARTICIPANTS_MAX + 1)], "max_participants"),
        ] {
            let o = Options { rooms, ..base.clone() };
            let message = o.validate().unwrap_err();
            assert!(message.starts_with("rooms:") && message.contains(error), "{message}");
        }
    }

    #[test]
    fn workload_file_names_unknown_keys() {
        let file = WorkloadFile::parse("[office]\nphones = 7\n[network]\nloss = 0.1\n").unwrap();
        assert_eq!(file.office.phones, 7);
        assert_eq!(file.network.loss, 0.1);
        assert_eq!(file.faults, FaultOptions::default());
        let file = WorkloadFile::parse("[privacy]\ncdr_days = 30\ninterval_s = 600\n").unwrap();
        let reaper = file.privacy.reaper_config(Bugs::default());
        assert_eq!((file.privacy.periods().cdr_days, reaper.interval.as_secs()), (30, 600));
        // Registrations, the security log (anonymised, deleted), CDRs, conference participations,
        // push records, the privacy audit.
        assert_eq!(reaper.rules.len(), 7);
        let error = WorkloadFile::parse("[office]\nphone = 7\n").unwrap_err();
        assert!(error.contains("phone"), "{error}");
    }
}

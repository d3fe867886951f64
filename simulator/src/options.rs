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
    pub bugs: Bugs,
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
            bugs: Bugs::default(),
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
        Ok(())
    }
}

/// A workload file: `[office]`, `[network]`, `[faults]`, `[licence]`, `[privacy]` and
/// `[attacker]` tables, each optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadFile {
    pub office: Workload,
    pub network: NetOptions,
    pub faults: FaultOptions,
    pub licence: crate::licence::LicenceOptions,
    pub privacy: PrivacyOptions,
    pub attacker: AttackerOptions,
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
        let harsh = WorkloadFile::parse(include_str!("../workloads/harsh.toml")).unwrap();
        assert_eq!((harsh.office.phones, harsh.network.loss), (40, 0.05));
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
        let mut o = base;
        o.attacker.rtp_ports = (10, 5);
        assert!(o.validate().unwrap_err().starts_with("attacker.rtp_ports:"));
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
        assert_eq!(reaper.rules.len(), 5);
        let error = WorkloadFile::parse("[office]\nphone = 7\n").unwrap_err();
        assert!(error.contains("phone"), "{error}");
    }
}

//! The simulator end to end: whole runs of the product's machines against simulated phones,
//! network and disk. Durations are short so the suite stays quick in a debug build; `pbx-sim`
//! runs the long ones.

use pbx_actors::privacy::reaper::Action;
use pbx_simulator::attacker::AttackKind;
use pbx_simulator::check::{BUCKET, CALLER, CODES, PARTIES, RINGS, TRANSACTIONS_PER_PHONE_MAX, TRANSACTIONS_SLACK};
use pbx_simulator::options::{
    AttackerOptions, ConferenceOptions, FaultOptions, ForwardingOptions, NetOptions, Options, PushOptions, Workload,
};
use pbx_simulator::{Report, run};
use std::process::Command;
use std::time::Duration;

/// A small office calling around the clock, so that a few simulated hours hold many calls.
fn options(seed: u64, hours: u64) -> Options {
    let mut options = Options::new(seed, Duration::from_secs(hours * 3600));
    options.workload = Workload {
        phones: 12,
        calls_per_phone_per_hour: 3.0,
        office_hours: (0, 24),
        weekends: true,
        talk_s_mean: 60,
        talk_s_max: 600,
        ..Workload::default()
    };
    // Faults often enough that a few hours see each kind.
    options.faults.crashes_per_day = 6.0;
    options.faults.away_per_phone_per_day = 2.0;
    options.faults.away_s = (60, 1800);
    options.net.partitions_per_day = 12.0;
    options.net.loss = 0.01;
    // The attacker forges dialogs and floods pbx while the other invariants are checked; its
    // lockout and RTP campaigns have tests of their own (below).
    options.attacker = AttackerOptions::only(&[(AttackKind::Dialog, 12.0), (AttackKind::Flood, 6.0)]);
    options.stop_at_first_violation = false;
    options
}

fn assert_clean(report: &Report) {
    assert!(
        report.violations.is_empty(),
        "seed {}: {}",
        report.seed,
        report.violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    );
}

/// The run did what it claims: phones registered and called, calls were answered, CDRs stored.
fn assert_busy(report: &Report) {
    assert!(report.registrations >= 12, "seed {}: {} registrations", report.seed, report.registrations);
    assert!(report.calls_answered >= 20, "seed {}: {} calls answered", report.seed, report.calls_answered);
    assert!(report.cdrs >= 20, "seed {}: {} CDRs", report.seed, report.cdrs);
    assert!(report.checks > 1000, "seed {}: {} checks", report.seed, report.checks);
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let first = run(options(7, 3));
    let again = run(options(7, 3));
    let other = run(options(8, 3));
    assert_busy(&first);
    assert_clean(&first);
    assert_eq!(first.trace_hash, again.trace_hash, "same seed, same trace");
    assert_eq!((first.events, first.cdrs, first.calls_dialled), (again.events, again.cdrs, again.calls_dialled));
    assert_ne!(first.trace_hash, other.trace_hash, "another seed, another trace");
}

#[test]
fn fixed_seeds_hold_every_invariant_under_faults() {
    for seed in [1, 2, 3] {
        let report = run(options(seed, 4));
        assert_busy(&report);
        assert_clean(&report);
        let f = report.faults;
        assert!(f.lost > 0 && f.duplicated > 0 && f.reordered > 0, "seed {seed}: network faults {f:?}");
    }
}

#[test]
fn without_faults_every_call_reaching_the_pbx_has_its_cdr() {
    let mut o = options(11, 3);
    o.net = NetOptions::quiet();
    o.faults = FaultOptions::none();
    let report = run(o);
    assert_busy(&report);
    assert_clean(&report);
    assert_eq!(report.faults.total(), 0);
    assert_eq!(report.node.cdrs_written as usize, report.cdrs, "every CDR written is stored");
}

#[test]
fn an_injected_missing_cdr_is_caught() {
    let mut o = options(5, 3);
    o.bugs.skip_cdr = true;
    let report = run(o);
    assert!(
        report.violations.iter().any(|v| v.invariant == "every completed call has exactly one CDR"),
        "{:?}",
        report.violations
    );
}

#[test]
fn an_injected_half_hangup_is_caught() {
    let mut o = options(5, 3);
    o.bugs.half_hangup = true;
    let report = run(o);
    assert!(report.violations.iter().any(|v| v.invariant == "a call never has one leg"), "{:?}", report.violations);
}

#[test]
fn an_injected_unrouted_request_is_caught() {
    // Proves the simulator runs the product's endpoint glue: the glue dropping in-dialog BYEs fails a seed that is clean without it.
    let clean = run(options(5, 3));
    assert_busy(&clean);
    assert_clean(&clean);
    let mut o = options(5, 3);
    o.bugs.unrouted_request = true;
    let report = run(o);
    assert!(report.violations.iter().any(|v| v.invariant == "a call never has one leg"), "{:?}", report.violations);
}

#[test]
fn an_injected_lost_leg_event_is_caught() {
    // Proves the simulator runs the product's CallCore: the core losing a leg's hang-up fails a seed that is clean without it.
    let clean = run(options(5, 3));
    assert_busy(&clean);
    assert_clean(&clean);
    let mut o = options(5, 3);
    o.bugs.lost_leg_event = true;
    let report = run(o);
    assert!(report.violations.iter().any(|v| v.invariant == "a call never has one leg"), "{:?}", report.violations);
}

#[test]
fn an_injected_unstored_ok_is_caught() {
    const SEED: u64 = 1;
    // Proves the simulator runs the product's registrar glue: the glue letting a 200 out before
    // its binding is stored fails a seed that is clean without it (a crash aimed at the write
    // then loses a registration the phone was told is stored).
    // Phones away longer than their registrations last come back as new bindings (stored
    // before their 200), and the node crashes often, half the time in a write's fsync.
    let options = |seed| {
        let mut o = Options::new(seed, Duration::from_secs(2 * 86_400));
        o.workload =
            Workload { phones: 12, calls_per_phone_per_hour: 0.0, register_expires_s: 3_600, ..Workload::default() };
        o.faults.crashes_per_day = 24.0;
        o.faults.away_per_phone_per_day = 12.0;
        o.faults.away_s = (4_000, 8_000);
        o.attacker = AttackerOptions::off();
        o.conference = ConferenceOptions::off();
        o.privacy.scans_per_day = 0.0;
        o.stop_at_first_violation = false;
        o
    };
    let clean = run(options(SEED));
    assert_clean(&clean);
    assert!(clean.faults.crashes > 0, "{:?}", clean.faults);
    let mut o = options(SEED);
    o.bugs.unstored_ok = true;
    let report = run(o);
    assert!(
        report.violations.iter().any(|v| v.invariant == "a confirmed registration survives a crash"),
        "{:?}",
        report.violations
    );
}

/// The binary prints a replay command for a failing run, and that command fails the same way.
#[test]
fn pbx_sim_prints_a_replay_command_that_replays() {
    let args = ["--seed", "3", "--duration", "1d", "--phones", "30", "--inject-bug", "skip-cdr", "--no-attacker"];
    replays(&args, "every completed call");
}

/// `args` make pbx-sim fail with a violation of `invariant`; its replay command fails the same.
fn replays(args: &[&str], invariant: &str) {
    let sim = env!("CARGO_BIN_EXE_pbx-sim");
    let first = Command::new(sim).args(args).output().expect("run pbx-sim");
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    assert_eq!(first.status.code(), Some(1), "{stdout}");
    let replay = stdout.lines().find_map(|l| l.strip_prefix("replay: ")).expect("a replay line").to_owned();
    assert!(replay.starts_with(&format!("pbx-sim {} {} ", args[0], args[1])), "{replay}");
    let again = Command::new(sim).args(replay.split_whitespace().skip(1)).output().expect("replay");
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    let violation = |out: &str| out.lines().find(|l| l.contains(invariant)).map(str::to_owned);
    assert!(violation(&stdout).is_some(), "{stdout}");
    assert_eq!(violation(&stdout), violation(&again));
    let hash = |out: &str| out.lines().find(|l| l.contains("trace hash")).map(str::to_owned);
    assert_eq!(hash(&stdout), hash(&again));
}

#[test]
fn pbx_sim_swarm_reports_every_seed() {
    let sim = env!("CARGO_BIN_EXE_pbx-sim");
    let out = Command::new(sim)
        .args(["--swarm", "3", "--seed", "100", "--duration", "12h", "--phones", "10", "--no-attacker"])
        .output()
        .expect("run pbx-sim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.contains(" ok")).count(), 3, "{stdout}");
    assert!(stdout.contains("0 of 3 seeds failed"), "{stdout}");
}

#[test]
fn a_bad_flag_names_itself() {
    let sim = env!("CARGO_BIN_EXE_pbx-sim");
    let out = Command::new(sim).args(["--inject-bug", "nonsense"]).output().expect("run pbx-sim");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--inject-bug nonsense"));
    let out = Command::new(sim).args(["--duration", "3w"]).output().expect("run pbx-sim");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unit"));
}

/// A quiet office over virtual weeks, for the licence scenarios: few calls, no random licence
/// outages or tampering unless a test asks; the other faults stay on.
fn licence_options(seed: u64, days: u64) -> Options {
    let mut options = Options::new(seed, Duration::from_secs(days * 86_400));
    options.workload = Workload { phones: 4, calls_per_phone_per_hour: 0.5, talk_s_max: 600, ..Workload::default() };
    options.licence.outages_per_30d = 0.0;
    options.licence.tamper = 0.0;
    // The attacker and the rooms have tests of their own; these runs are long.
    options.attacker = AttackerOptions::off();
    options.conference = ConferenceOptions::off();
    options.stop_at_first_violation = false;
    options
}

#[test]
fn licence_outage_shorter_than_the_grace_changes_nothing() {
    let mut o = licence_options(21, 30);
    o.licence.outages = vec![(48, 10 * 24)];
    let report = run(o);
    assert_clean(&report);
    assert_eq!(report.faults.licence_outages, 1);
    assert!(report.node.licence_checks_failed >= 10 * 24 - 30, "{:?}", report.node);
    assert_eq!(report.node.licence_expired, 0, "never switched off: {:?}", report.node);
}

#[test]
fn licence_outage_longer_than_the_grace_switches_off_then_on() {
    for offset_h in [0, -72, 72] {
        let mut o = licence_options(22, 30);
        o.licence.outages = vec![(48, 20 * 24)];
        o.licence.node_clock_offset_h = offset_h;
        let report = run(o);
        // The checkers held the watchdog to the deadline (not before it, not more than one
        // retry after it) and to being licensed again at the first successful check.
        assert_clean(&report);
        assert_eq!(report.node.licence_expired, 1, "clock offset {offset_h} h: {:?}", report.node);
        assert!(report.node.licence_checks_ok >= 10, "{:?}", report.node);
    }
}

#[test]
fn tampered_licences_are_never_in_force() {
    let mut o = licence_options(23, 5);
    o.licence.tamper = 1.0;
    let report = run(o);
    assert_clean(&report);
    assert!(report.faults.licence_tampered >= 5, "{:?}", report.faults);
    assert_eq!(report.node.licence_checks_ok, 0, "every answer was altered, none accepted");
}

#[test]
fn an_injected_early_licence_expiry_is_caught() {
    let mut o = licence_options(22, 30);
    o.licence.outages = vec![(48, 20 * 24)];
    o.bugs.early_expiry = true;
    let report = run(o);
    assert!(
        report.violations.iter().any(|v| v.invariant == "no premature licence switch-off"),
        "{:?}",
        report.violations
    );
}

/// A small office over six weeks with every retention period shortened, so that each rule
/// fires inside the run; faults on (crashes lose reaper batches), a password guesser filling
/// the security log.
fn retention_options(seed: u64, days: u64) -> Options {
    let mut options = Options::new(seed, Duration::from_secs(days * 86_400));
    options.workload = Workload { phones: 4, talk_s_max: 600, ..Workload::default() };
    options.privacy.cdr_days = 20;
    options.privacy.request_log_anonymise_days = 7;
    options.privacy.request_log_delete_days = 30;
    options.privacy.audit_days = 30;
    // The attacker and the rooms have tests of their own; these runs are long.
    options.attacker = AttackerOptions::off();
    options.conference = ConferenceOptions::off();
    options.stop_at_first_violation = false;
    options
}

/// The retention invariants hold over virtual weeks: nothing outlives its retention by more
/// than an interval, nothing inside it is touched, every interval has its audit entry — and
/// every rule had records to work on.
#[test]
fn the_reaper_keeps_every_retention_period() {
    let report = run(retention_options(31, 45));
    assert_clean(&report);
    let p = &report.privacy;
    let rules = [("cdr", Action::Delete), ("security-log", Action::Anonymise), ("security-log", Action::Delete)];
    for (category, action) in rules.into_iter().chain([("privacy-audit", Action::Delete)]) {
        assert!(p.records(category, action) > 0, "{category} {action:?}: {p:?}");
    }
    assert!(report.node.reaper_runs >= 45 * 24, "about one run an hour: {:?}", report.node);
    assert!(p.scans >= 45 && p.scan_blocked > 0, "the intruder tried and was blocked: {p:?}");
    assert!(report.faults.crashes > 0, "{:?}", report.faults);
}

#[test]
fn an_injected_lazy_reaper_is_caught() {
    let mut o = retention_options(32, 45);
    o.bugs.lazy_reaper = true;
    o.stop_at_first_violation = true;
    let report = run(o);
    assert!(
        report.violations.iter().any(|v| v.invariant == "no record outlives its retention"),
        "{:?}",
        report.violations
    );
}

#[test]
fn an_injected_eager_reaper_is_caught() {
    let mut o = retention_options(33, 45);
    o.bugs.eager_reaper = true;
    o.stop_at_first_violation = true;
    let report = run(o);
    assert!(
        report.violations.iter().any(|v| v.invariant == "records within retention are untouched"),
        "{:?}",
        report.violations
    );
}

/// With the product's default periods, a reaper that anonymises the security log a week late
/// is caught within a fortnight, and the printed command replays it.
#[test]
fn pbx_sim_replays_a_lazy_reaper() {
    let args = [
        "--seed",
        "4",
        "--duration",
        "16d",
        "--phones",
        "4",
        "--inject-bug",
        "lazy-reaper",
        "--no-attacker",
        "--no-rooms",
    ];
    replays(&args, "outlives");
}

// ---- The attacker (simulator/src/attacker.rs) ----

/// How often `invariant` was violated in a run.
fn violations_of(report: &Report, invariant: &str) -> u64 {
    report.violated.get(invariant).copied().unwrap_or(0)
}

/// An off-path attacker who is also the user of phone 1000 forges BYEs, re-INVITEs, CANCELs and
/// 180/486/603/200 answers with random identifiers and with neighbours of those its own calls
/// showed it, and floods pbx with unauthenticated REGISTERs and INVITEs from spoofed sources:
/// no call is ended, answered or refused by it, pbx accepts none of it and keeps no state for it.
#[test]
fn forged_dialogs_and_floods_change_no_call() {
    let mut o = options(41, 4);
    o.attacker = AttackerOptions::only(&[(AttackKind::Dialog, 60.0), (AttackKind::Flood, 24.0)]);
    let report = run(o);
    assert_busy(&report);
    assert_clean(&report);
    let a = &report.attack;
    assert!(a.sent(AttackKind::Dialog) >= 300, "{a:?}");
    assert!(a.learned_forgeries >= 50, "the insider used what its calls showed it: {a:?}");
    assert!(a.answered("BYE", 481) + a.answered("INVITE", 481) >= 50, "pbx answered its forgeries 481: {a:?}");
    assert!(a.sent(AttackKind::Flood) >= 2_000, "{a:?}");
    let bound = TRANSACTIONS_PER_PHONE_MAX * 12 + TRANSACTIONS_SLACK;
    assert!(report.transactions_max <= bound, "{} transactions", report.transactions_max);
    assert_eq!(a.media_received, 0);
}

/// Spoofed failed logins claiming phones' own addresses — from the phone's port and from
/// others, with nonces the attacker fetched at its own address and with forged ones — lock no
/// phone out: every phone's REGISTER keeps getting 200.
///
/// Fails on pbx before the registrar binds nonces to the source they were sent to and counts
/// failures per (source, user): five spoofed failures then block the phone's IP, and its next
/// REGISTER gets 403 ("no phone is locked out by strangers").
#[test]
fn spoofed_failures_lock_out_no_phone() {
    let mut o = options(42, 4);
    // Each campaign outlasts a phone's refresh interval (at most 90 % of an hour).
    o.attacker = AttackerOptions { lockout_minutes: 60, ..AttackerOptions::only(&[(AttackKind::Lockout, 12.0)]) };
    let report = run(o);
    assert_clean(&report);
    assert!(report.attack.spoofed_logins >= 200, "{:?}", report.attack);
    assert!(report.attack.answered("REGISTER", 401) >= 30, "its nonce probes were answered: {:?}", report.attack);
}

/// Well-formed RTP streamed to pbx's media ports mid-call — new random SSRCs, consecutive
/// sequence numbers, to random ports and to ports next to those of the attacker's own calls,
/// from its own address and spoofed ones, some with a payload type nobody negotiated, some
/// RTCP BYEs — reaches no phone, and pbx sends the stranger nothing.
///
/// Fails on pbx before strict RTP source learning: a packet with a new SSRC from anywhere
/// re-latches a side of the call, so the stranger's audio reaches the other phone ("no phone
/// hears a stranger") and that phone's audio goes to the stranger ("no stranger hears a call").
#[test]
fn injected_rtp_reaches_no_one() {
    let mut o = options(43, 4);
    o.attacker = AttackerOptions::only(&[(AttackKind::Rtp, 48.0)]);
    let report = run(o);
    assert_clean(&report);
    assert!(report.attack.rtp_packets >= 5_000, "{:?}", report.attack);
    assert!(report.attack.rtp_learned_streams >= 300, "{:?}", report.attack);
    assert_eq!(report.attack.media_received, 0);
}

/// The checkers catch a stranger who does get in: an attacker on pbx's network path sees the
/// real tags, branches, Call-IDs and ports, so its BYEs end calls, its answers answer or refuse
/// them, and its RTP from a phone's declared address reaches the other phone.
#[test]
fn an_on_path_attacker_is_caught() {
    let on_path = |seed, kind, per_day| {
        let mut o = options(seed, 4);
        o.attacker = AttackerOptions { on_path: true, ..AttackerOptions::only(&[(kind, per_day)]) };
        run(o)
    };
    let dialogs = on_path(44, AttackKind::Dialog, 200.0);
    for invariant in [
        "no stranger ends a call",
        "a call is answered only by its callee",
        "a call is refused only by its callee",
        "pbx accepts nothing a stranger forged",
    ] {
        assert!(violations_of(&dialogs, invariant) > 0, "{invariant}: {:?}", dialogs.violated);
    }
    let media = on_path(44, AttackKind::Rtp, 48.0);
    assert!(violations_of(&media, "no phone hears a stranger") > 0, "{:?}", media.violated);
}

/// With every kind of campaign on, the same seed gives the same run (trace, violations and
/// all) and another seed another.
#[test]
fn the_attacker_keeps_runs_deterministic() {
    let kinds = AttackKind::ALL.map(|kind| (kind, 48.0));
    let all = |seed| Options { attacker: AttackerOptions::only(&kinds), ..options(seed, 3) };
    let (first, again, other) = (run(all(45)), run(all(45)), run(all(46)));
    assert!(AttackKind::ALL.iter().all(|k| first.attack.sent(*k) > 0), "{:?}", first.attack);
    assert_eq!(first.trace_hash, again.trace_hash, "same seed, same trace");
    assert_eq!(first.violations, again.violations);
    assert_eq!(first.attack.rtp_packets, again.attack.rtp_packets);
    assert_ne!(first.trace_hash, other.trace_hash, "another seed, another trace");
}

// ---- Conference rooms (simulator/src/check/rooms.rs) ----

/// A small office that meets every few minutes in its two rooms (one with a PIN and room for
/// three, so that meetings of up to five are refused 486 in part), on a mediocre network with
/// every fault on; the attacker streams RTP at pbx's ports, the rooms' included.
fn meeting_options(seed: u64, hours: u64) -> Options {
    let mut o = options(seed, hours);
    o.workload.calls_per_phone_per_hour = 1.0;
    o.conference = ConferenceOptions {
        meetings_per_day: 24.0 * 8.0,
        meeting_phones: (2, 5),
        meeting_s_mean: 45,
        meeting_s_max: 120,
        room_probability: 0.02,
        mute_probability: 0.3,
        vanish_probability: 0.2,
        ..ConferenceOptions::default()
    };
    o.attacker = AttackerOptions::only(&[(AttackKind::Rtp, 24.0)]);
    o
}

/// The rooms run on the product's RoomCore under faults, and every room invariant holds and
/// was put to work: participants keyed PINs, talked alone and together, muted, hung up and
/// vanished, a full room refused callers, and listeners were judged on what they heard.
#[test]
fn meetings_hold_every_room_invariant() {
    let report = run(meeting_options(61, 1));
    assert_clean(&report);
    assert!(report.meetings >= 5, "{} meetings", report.meetings);
    let n = &report.node;
    assert!(n.room_seats >= 15 && n.room_refused > 0, "{n:?}");
    assert_eq!(n.participations, n.room_seats, "everyone seated left: {n:?}");
    assert!(report.room_vanished > 0, "{report:?}");
    assert!(report.lone_talker_frames >= 2_000, "{} of {} frames", report.lone_talker_frames, report.room_frames);
    assert_eq!(n.mixer_overruns, 0, "the simulated room wakes on time");
}

/// With rooms busy, the same seed gives the same run and another seed another.
#[test]
fn meetings_keep_runs_deterministic() {
    let (first, again, other) = (run(meeting_options(62, 1)), run(meeting_options(62, 1)), run(meeting_options(63, 1)));
    assert!(first.room_frames > 0);
    assert_eq!(first.trace_hash, again.trace_hash, "same seed, same trace");
    assert_eq!((first.room_frames, first.lone_talker_frames), (again.room_frames, again.lone_talker_frames));
    assert_ne!(first.trace_hash, other.trace_hash, "another seed, another trace");
}

/// Proves the checkers see the room glue: a participant left in its room when its call ends
/// fails a seed that is clean without it.
#[test]
fn an_injected_stuck_participant_is_caught() {
    let clean = run(meeting_options(64, 1));
    assert_clean(&clean);
    let mut o = meeting_options(64, 1);
    o.sim_bugs.stuck_participant = true;
    // Stuck rooms stream on to the end: stop at the first violation.
    o.stop_at_first_violation = true;
    let report = run(o);
    assert!(violations_of(&report, "no mixer outlives its room") > 0, "{:?}", report.violated);
}

/// `pbx-sim --inject-bug stuck-participant` fails, and its replay command fails the same way.
#[test]
fn pbx_sim_replays_a_stuck_participant() {
    // Seed 3 meets in room 801 on its first morning.
    let args = ["--seed", "3", "--duration", "1d", "--phones", "20", "--inject-bug", "stuck-participant"];
    replays(&args, "no mixer outlives its room");
}

// ---- Push (RFC 8599: simulator/src/push.rs, check/push.rs) ----

/// Half the office are apps asleep until pushed, and the push service is unkind: a tenth of
/// the pushes lost, a tenth late, one in twenty to a token just replaced.
fn push_options(seed: u64, hours: u64) -> Options {
    let mut o = options(seed, hours);
    o.push = PushOptions { phones: 0.5, loss: 0.1, late: 0.1, unregistered: 0.05, ..PushOptions::default() };
    o
}

/// Calls to sleeping apps wait for their push and no longer: every fork's wait ends by its
/// timer, every caller of an app never woken hears back by then — and each way a wait ends
/// was taken (woken, refused, timed out).
#[test]
fn pushed_phones_hold_every_invariant() {
    let report = run(push_options(71, 4));
    assert_busy(&report);
    assert_clean(&report);
    let (u, k, n) = (&report.push, &report.forks, &report.node);
    assert_eq!(u.apps, 6);
    assert!(k.parked >= 50 && k.invited > 0 && k.refused > 0 && k.ended > 0, "{k:?}");
    assert_eq!(k.parked, k.invited + k.refused + k.ended, "every wait ended: {k:?}");
    assert!(k.callers_judged > 0 && n.push_timeouts > 0, "{k:?} {n:?}");
    assert!(u.lost > 0 && u.late > 0 && u.unregistered > 0, "{u:?}");
    assert_eq!(n.push_records, u.sent, "every push recorded: {n:?}");
}

/// With pushes, the same seed gives the same run and another seed another.
#[test]
fn pushes_keep_runs_deterministic() {
    let (first, again, other) = (run(push_options(72, 2)), run(push_options(72, 2)), run(push_options(73, 2)));
    assert!(first.push.sent > 0);
    assert_eq!(first.trace_hash, again.trace_hash, "same seed, same trace");
    assert_eq!(first.forks, again.forks);
    assert_ne!(first.trace_hash, other.trace_hash, "another seed, another trace");
}

/// Proves the push checkers see the glue: calls handed three times the push wait hold their
/// forks past the timer, and their callers hear back too late.
#[test]
fn an_injected_slow_push_timer_is_caught() {
    let mut o = push_options(74, 3);
    o.push.loss = 0.5;
    o.sim_bugs.slow_push_timer = true;
    let report = run(o);
    assert!(violations_of(&report, BUCKET) > 0, "{:?}", report.violated);
    assert!(violations_of(&report, CALLER) > 0, "{:?}", report.violated);
}

/// The product as it was before `CallOutput::ForkGone`: a fork whose pushed phone never
/// registered is never reported down, and the endpoint routes to it for ever.
#[test]
fn an_injected_forgotten_fork_is_caught() {
    let mut o = push_options(75, 2);
    o.sim_bugs.forgotten_fork = true;
    let report = run(o);
    assert!(violations_of(&report, "legs are routed while they live") > 0, "{:?}", report.violated);
}

/// Push records go 7 days after they were sent (here 1 day, over 4): the retention checkers
/// hold them to it on the simulated disk, through crashes, and the reaper deletes them.
#[test]
fn push_records_are_kept_for_their_retention_only() {
    let mut o = Options::new(76, Duration::from_secs(4 * 86_400));
    o.workload = Workload { phones: 8, talk_s_max: 600, ..Workload::default() };
    o.push.phones = 0.5;
    o.privacy.push_days = 1;
    o.attacker = AttackerOptions::off();
    o.conference = ConferenceOptions::off();
    o.faults.crashes_per_day = 2.0;
    o.stop_at_first_violation = false;
    let report = run(o);
    assert_clean(&report);
    assert!(report.node.push_records > 0, "{:?}", report.node);
    assert!(report.privacy.records("push-records", Action::Delete) > 0, "{:?}", report.privacy);
}

/// `pbx-sim --inject-bug slow-push-timer` fails, and its replay command fails the same way.
#[test]
fn pbx_sim_replays_a_slow_push_timer() {
    // Seed 1's first call to a sleeping app whose push is late comes on its first morning.
    let args = ["--seed", "1", "--duration", "1d", "--phones", "100", "--inject-bug", "slow-push-timer"];
    replays(&args, BUCKET);
}

// ---- Call forwarding (feature codes, loops: check/forwarding.rs) ----

/// Half the office forwards at a time and changes it every few minutes, a third of the new
/// forwards into loops of two or three, one code in ten mistyped; calls, faults and the
/// attacker as in [`options`].
fn forwarding_options(seed: u64, hours: u64) -> Options {
    let mut o = options(seed, hours);
    o.forwarding = ForwardingOptions {
        changes_per_phone_per_day: 48.0,
        users: 0.5,
        loop_probability: 0.3,
        mistake_probability: 0.1,
        ..ForwardingOptions::default()
    };
    o
}

/// Users set and clear forwarding with feature codes, loops among them, under crashes,
/// partitions and loss: every answer agrees with the model, every call hears its final answer
/// within the ring bound, every call is answered by a phone forwarding may lead to — and each
/// of those was put to work.
#[test]
fn forwarding_holds_every_invariant_under_faults() {
    let mut crashes = 0;
    for seed in [81, 82] {
        let report = run(forwarding_options(seed, 4));
        assert_busy(&report);
        assert_clean(&report);
        let (g, w) = (&report.forwarding, &report.forwarded);
        assert!(g.codes >= 50 && g.confirmed >= 40 && g.loops >= 3, "seed {seed}: {g:?}");
        assert!(g.refused + g.unknown > 0, "seed {seed}: mistakes answered 403 or 404: {g:?}");
        assert!(w.codes_judged >= 40 && w.answered_elsewhere >= 10, "seed {seed}: {w:?}");
        crashes += report.faults.crashes;
    }
    assert!(crashes > 0, "codes whose answer a crash took");
}

/// With forwarding, the same seed gives the same run and another seed another; without it, a
/// run is the one it was before forwarding was simulated.
#[test]
fn forwarding_keeps_runs_deterministic() {
    let (first, again, other) =
        (run(forwarding_options(83, 2)), run(forwarding_options(83, 2)), run(forwarding_options(84, 2)));
    assert!(first.forwarding.codes > 0);
    assert_eq!(first.trace_hash, again.trace_hash, "same seed, same trace");
    assert_eq!(first.forwarded, again.forwarded);
    assert_ne!(first.trace_hash, other.trace_hash, "another seed, another trace");
    let mut off = options(83, 2);
    off.forwarding = ForwardingOptions::off();
    let off = run(off);
    assert_eq!(off.forwarding.codes, 0);
    assert_clean(&off);
}

/// Proves the ring bound bites: with the call machine forwarding without re-arming its
/// no-answer timer, a forward whose phone lets it ring rings on (until a phone gives up after
/// five minutes), and a seed clean without the bug fails.
#[test]
fn an_injected_endless_forward_is_caught() {
    let buggy = |seed| {
        let mut o = forwarding_options(seed, 3);
        // Phones that let it ring: the forward's is left ringing.
        o.workload.answer_probability = 0.5;
        o
    };
    let clean = run(buggy(85));
    assert_clean(&clean);
    let mut o = buggy(85);
    o.bugs.endless_forward = true;
    let report = run(o);
    assert!(violations_of(&report, RINGS) > 0, "{:?}", report.violated);
}

/// Proves the forwarding model is the phones': a restarted node that forgot the stored
/// forwarding rings the dialled extension of a call its forwarding should have taken elsewhere.
#[test]
fn an_injected_forgotten_forwarding_is_caught() {
    let clean = run(forwarding_options(86, 4));
    assert_clean(&clean);
    assert!(clean.faults.crashes > 0, "{:?}", clean.faults);
    let mut o = forwarding_options(86, 4);
    o.sim_bugs.forgotten_forwarding = true;
    let report = run(o);
    assert!(violations_of(&report, PARTIES) > 0, "{:?}", report.violated);
    assert_eq!(violations_of(&report, CODES), 0, "the codes' answers were right: {:?}", report.violated);
}

/// `pbx-sim --inject-bug forgotten-forwarding` fails, and its replay command fails the same way.
#[test]
fn pbx_sim_replays_a_forgotten_forwarding() {
    let args = ["--seed", "1", "--duration", "1d", "--phones", "100", "--inject-bug", "forgotten-forwarding"];
    replays(&args, PARTIES);
}

//! The command line of `pbx-sim` (and `pbx sim`, the same): runs the whole PBX — its own
//! machines — over virtual days against a simulated office, network and disk, with faults,
//! and checks invariants as it goes.
//!
//! `pbx-sim --seed 7 --duration 30d --phones 100` runs one seed and prints a summary;
//! `pbx-sim --swarm 50 --duration 1d` runs 50 seeds and lists the failing ones with the command
//! that replays each. `pbx-sim --raft --seed 7 --duration 1h` simulates the replicated state
//! instead: three voters running the product's Raft under partitions, crashes and restarts
//! ([`crate::raft`]); `--swarm` works the same with it. Exit status 1 when an invariant was
//! violated, 2 for a bad flag.

use crate::attacker::AttackKind;
use crate::options::{
    ConferenceOptions, FaultOptions, ForwardingOptions, NetOptions, Options, PushOptions, SimBugs, WorkloadFile,
    format_duration, parse_duration,
};
use crate::raft::{RaftBug, RaftOptions, RaftReport};
use crate::sim::{Report, replay_command};
use pbx_actors::bugs::Bugs;
use pbx_actors::call::splitmix64;
use pbx_actors::privacy::reaper::Action;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Parser, Debug)]
#[command(name = "pbx-sim", about = "Deterministic simulation of a pbx office over virtual days")]
pub struct Args {
    /// The run's seed; a random one (printed) if not given. With --swarm, the swarm's seeds
    /// are drawn from it.
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated time with calls and faults (then a drain until every call has ended): 30d, 12h, 90m.
    #[arg(long, default_value = "1d", value_parser = parse_duration)]
    duration: Duration,
    /// Phones in the office (default 20, or the workload file's).
    #[arg(long)]
    phones: Option<usize>,
    /// A TOML file with [office], [network], [faults], [licence], [privacy], [attacker],
    /// [conference], [push] and [forwarding] tables and [[rooms]] (see simulator/workloads/).
    #[arg(long)]
    workload: Option<std::path::PathBuf>,
    /// Run this many random seeds and report the failures.
    #[arg(long)]
    swarm: Option<u32>,
    /// No faults at all: a perfect network, no crashes, no phones going away, no drift.
    #[arg(long)]
    no_faults: bool,
    /// Switch on a deliberate bug to see the checkers catch it (skip-cdr, half-hangup,
    /// early-expiry, lazy-reaper, eager-reaper, unrouted-request, lost-leg-event, unstored-ok,
    /// endless-forward; the simulator's own glue: stuck-participant, slow-push-timer,
    /// forgotten-fork, forgotten-forwarding; with --raft: raft-minority-ack, raft-forget-vote).
    #[arg(long, value_name = "BUG")]
    inject_bug: Vec<String>,
    /// Keep going after a violation (collects up to 20) instead of stopping at the first.
    /// A --raft run always runs to its end and collects up to 20.
    #[arg(long)]
    keep_going: bool,
    /// No attacker: no spoofed logins, forged dialogs, injected RTP or floods (the password
    /// guesser of [privacy] still runs).
    #[arg(long)]
    no_attacker: bool,
    /// No meetings and no calls to conference rooms (the rooms stay configured).
    #[arg(long)]
    no_rooms: bool,
    /// No softphone proxy: no phone is remote, the proxy's ledger does not run.
    #[arg(long)]
    no_proxy: bool,
    /// No phone is a mobile app woken by push (pbx still pushes, nobody asks for it).
    #[arg(long)]
    no_push: bool,
    /// Nobody sets call forwarding (no feature codes dialled, no call forwarded).
    #[arg(long)]
    no_forwarding: bool,
    /// The attacker sees every datagram to and from pbx (a tap on its network), so its
    /// forgeries carry the real identifiers: it gets in, and the checkers must say so.
    #[arg(long)]
    attacker_on_path: bool,
    /// Simulate the replicated state: three voters running the product's Raft (openraft over
    /// its redb stores) under partitions, crashes and restarts, with clients writing. Takes
    /// --seed, --duration, --swarm and --inject-bug.
    #[arg(long)]
    raft: bool,
}

/// Runs what the flags ask for; the exit code is the binary's.
pub fn main(args: Args) -> ExitCode {
    if args.raft {
        return raft_main(&args);
    }
    let options = match options(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("pbx-sim: {error}");
            return ExitCode::from(2);
        }
    };
    let extra = extra_flags(&args);
    match args.swarm {
        None => {
            let report = run(options.clone());
            print_report(&report, &options);
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                println!("replay: {}", replay_command(&options, &extra));
                ExitCode::FAILURE
            }
        }
        Some(count) => swarm(options, count, &extra),
    }
}

fn options(args: &Args) -> Result<Options, String> {
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut options = Options::new(seed, args.duration);
    if let Some(path) = &args.workload {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--workload {}: {e}", path.display()))?;
        let file = WorkloadFile::parse(&text).map_err(|e| format!("--workload {}: {e}", path.display()))?;
        options.workload = file.office;
        options.net = file.network;
        options.faults = file.faults;
        options.licence = file.licence;
        options.privacy = file.privacy;
        options.attacker = file.attacker;
        options.conference = file.conference;
        options.push = file.push;
        options.forwarding = file.forwarding;
        options.rooms = file.rooms;
    }
    if args.no_attacker {
        options.attacker.enabled = false;
    }
    if args.no_proxy {
        options.proxy.enabled = false;
    }
    if args.no_push {
        options.push = PushOptions { phones: 0.0, ..options.push };
    }
    if args.no_forwarding {
        options.forwarding = ForwardingOptions::off();
    }
    if args.attacker_on_path {
        options.attacker.on_path = true;
    }
    if args.no_rooms {
        options.conference = ConferenceOptions::off();
    }
    if let Some(phones) = args.phones {
        options.workload.phones = phones;
    }
    if args.no_faults {
        options.net = NetOptions::quiet();
        options.faults = FaultOptions::none();
        options.licence.outages_per_30d = 0.0;
        options.licence.tamper = 0.0;
    }
    let mut bugs = Bugs::default();
    for name in &args.inject_bug {
        if !options.sim_bugs.enable(name) && !bugs.enable(name) {
            let known: Vec<&str> = Bugs::NAMES.iter().chain(SimBugs::NAMES.iter()).copied().collect();
            return Err(format!("--inject-bug {name}: no such bug (known: {})", known.join(", ")));
        }
    }
    options.bugs = bugs;
    options.stop_at_first_violation = !args.keep_going;
    options.validate()?;
    Ok(options)
}

/// The flags a replay needs besides seed, duration and phones.
fn extra_flags(args: &Args) -> String {
    let mut extra = String::new();
    if let Some(path) = &args.workload {
        extra += &format!(" --workload {}", path.display());
    }
    if args.no_faults {
        extra += " --no-faults";
    }
    if args.no_attacker {
        extra += " --no-attacker";
    }
    if args.no_proxy {
        extra += " --no-proxy";
    }
    if args.no_push {
        extra += " --no-push";
    }
    if args.no_forwarding {
        extra += " --no-forwarding";
    }
    if args.attacker_on_path {
        extra += " --attacker-on-path";
    }
    if args.no_rooms {
        extra += " --no-rooms";
    }
    for bug in &args.inject_bug {
        extra += &format!(" --inject-bug {bug}");
    }
    extra
}

/// Runs one seed; a panic in the product's code is a failure like any other.
fn run(options: Options) -> Report {
    let seed = options.seed;
    match std::panic::catch_unwind(AssertUnwindSafe(|| crate::run(options))) {
        Ok(report) => report,
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            Report {
                seed,
                violations: vec![crate::check::Violation {
                    at: Duration::ZERO,
                    invariant: "nothing panics",
                    detail: message,
                }],
                ..Default::default()
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

fn swarm(base: Options, count: u32, extra: &str) -> ExitCode {
    let mut seeds = base.seed;
    let mut failures = Vec::new();
    let mut simulated = Duration::ZERO;
    let mut wall = Duration::ZERO;
    println!("pbx-sim: swarm of {count} seeds from {}, {} each", base.seed, format_duration(base.duration));
    for i in 0..count {
        let options = Options { seed: splitmix64(&mut seeds), ..base.clone() };
        let report = run(options.clone());
        simulated += report.simulated;
        wall += report.wall;
        let verdict =
            if report.violations.is_empty() { "ok".to_owned() } else { format!("FAILED: {}", report.violations[0]) };
        println!("  [{:>3}/{count}] seed {:>20}  trace {:016x}  {verdict}", i + 1, options.seed, report.trace_hash);
        if !report.violations.is_empty() {
            failures.push(replay_command(&options, extra));
        }
    }
    println!(
        "pbx-sim: {} of {count} seeds failed; {} simulated in {:.1} s ({:.0}× real time)",
        failures.len(),
        crate::sim::format_elapsed(simulated),
        wall.as_secs_f64(),
        simulated.as_secs_f64() / wall.as_secs_f64().max(1e-9)
    );
    for command in &failures {
        println!("  replay: {command}");
    }
    if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn print_report(r: &Report, options: &Options) {
    let f = &r.faults;
    println!(
        "pbx-sim: seed {}, {} simulated ({} with calls and faults, then a drain) in {:.2} s wall: {:.0}× real time",
        r.seed,
        crate::sim::format_elapsed(r.simulated),
        format_duration(options.duration),
        r.wall.as_secs_f64(),
        r.speedup()
    );
    println!(
        "  office:     {} phones, {} registrations, {} calls dialled, {} answered, {} failed, {} CDRs stored",
        r.phones, r.registrations, r.calls_dialled, r.calls_answered, r.calls_failed, r.cdrs
    );
    println!(
        "  pbx:        {} calls started, {} refused, {} bindings expired, {} auth failures, {} malformed",
        r.node.calls_started, r.node.calls_refused, r.node.expired, r.node.auth_failed, r.node.malformed
    );
    println!(
        "  faults:     {} injected: of {} datagrams {} lost, {} duplicated, {} reordered, {} cut off in {} partitions; \
         {} node crashes ({} writes lost); {} phones went away",
        f.total(),
        f.datagrams,
        f.lost,
        f.duplicated,
        f.reordered,
        f.cut_off,
        f.partitions,
        f.crashes,
        f.writes_lost,
        f.phones_away
    );
    println!(
        "  licence:    {} checks ok, {} failed, {} status changes; {} service outages, {} answers tampered with",
        r.node.licence_checks_ok,
        r.node.licence_checks_failed,
        r.node.licence_changes,
        f.licence_outages,
        f.licence_tampered
    );
    let p = &r.privacy;
    let deleted = |category| p.records(category, Action::Delete);
    println!(
        "  privacy:    {} reaper runs; deleted {} CDRs, {} bindings, {} audit entries; security log: {} written, \
         {} anonymised, {} deleted; {} scanner bursts: {} REGISTERs, {} refused, {} blocked",
        r.node.reaper_runs,
        deleted("cdr"),
        deleted("registration"),
        deleted("privacy-audit"),
        r.node.security_logged,
        p.records("security-log", Action::Anonymise),
        deleted("security-log"),
        p.scans,
        p.scan_registers,
        p.scan_rejected,
        p.scan_blocked
    );
    let x = &r.proxy;
    if !options.proxy.enabled {
        println!("  proxy:      off");
    } else {
        println!(
            "  proxy:      {} remote phones, {} roams, {} session writes; {} destinations in {} debug-mode switches; \
             reaped {} sessions, {} debug records; {} sessions and {} debug records held at the end",
            x.remote_phones,
            x.roams,
            x.sessions_written,
            x.destinations,
            x.debug_switches,
            x.sessions_reaped,
            x.debug_reaped,
            x.sessions,
            x.debug_records
        );
    }
    let a = &r.attack;
    let kinds = AttackKind::ALL.map(|k| format!("{} {}/{}", k.name(), a.campaigns(k), a.sent(k))).join(", ");
    println!(
        "  attacker:   {}campaigns/datagrams: {kinds}; {} spoofed logins, {} forgeries from what it saw, {} RTP \
         packets ({} streams aimed near ports it saw); pbx answered its forged BYE/INVITE/CANCEL {} times 481; \
         {} media datagrams reached it; at most {} transactions in pbx",
        if options.attacker.on_path {
            "on-path; "
        } else if options.attacker.insider {
            "insider; "
        } else {
            ""
        },
        a.spoofed_logins,
        a.learned_forgeries,
        a.rtp_packets,
        a.rtp_learned_streams,
        a.answered("BYE", 481) + a.answered("INVITE", 481) + a.answered("CANCEL", 481),
        a.media_received,
        r.transactions_max
    );
    println!(
        "  rooms:      {} meetings, {} joins: {} seated, {} refused, {} vanished; {} rooms opened, {} participations, \
         {} PIN failures, {} mixer overruns, {} foreign and {} shed datagrams; {} frames heard, {} with a lone talker",
        r.meetings,
        r.room_joins,
        r.node.room_seats,
        r.node.room_refused,
        r.room_vanished,
        r.node.rooms_opened,
        r.node.participations,
        r.node.room_pin_failures,
        r.node.mixer_overruns,
        r.node.room_foreign,
        r.node.room_shed,
        r.room_frames,
        r.lone_talker_frames
    );
    let (u, k) = (&r.push, &r.forks);
    println!(
        "  push:       {} apps; {} pushes ({} refresh): {} delivered ({} lost, {} late), {} unregistered, {} reached \
         their app; forks: {} waited, {} woken, {} refused, {} ended by the call ({} callers got the push timer's 480, \
         {} callers of apps never woken judged); {} push records written, {} deleted",
        u.apps,
        u.sent,
        u.refresh,
        u.delivered,
        u.lost,
        u.late,
        u.unregistered,
        u.reached,
        k.parked,
        k.invited,
        k.refused,
        k.ended,
        r.node.push_timeouts,
        k.callers_judged,
        r.node.push_records,
        deleted("push-records"),
    );
    let (g, w) = (&r.forwarding, &r.forwarded);
    if options.forwarding.changes_per_phone_per_day <= 0.0 {
        println!("  forwarding: off; longest wait for a final answer {:.1} s", w.longest_ring.as_secs_f64());
    } else {
        println!(
            "  forwarding: {} feature codes ({} loops, {} mistyped; at most {} phones forwarding): {} answered 603, {} \
             403, {} 404, {} otherwise; judged: {} answers to codes, {} answered calls ({} answered where forwarding \
             led), {} answered by two phones; longest wait for a final answer {:.1} s",
            g.codes,
            g.loops,
            g.mistakes,
            g.users_max,
            g.confirmed,
            g.refused,
            g.unknown,
            g.unanswered,
            w.codes_judged,
            w.answers_judged,
            w.answered_elsewhere,
            w.twins,
            w.longest_ring.as_secs_f64()
        );
    }
    let violated: u64 = r.violated.values().sum();
    println!("  invariants: {} checks, {violated} violations", r.checks);
    if violated > r.violations.len() as u64 {
        let counts: Vec<String> = r.violated.iter().map(|(invariant, n)| format!("{n} × {invariant}")).collect();
        println!("    ({}; the first {} follow)", counts.join(", "), r.violations.len());
    }
    for v in &r.violations {
        println!("    {v}");
    }
    println!("  events:     {}, trace hash {:016x}", r.events, r.trace_hash);
}

fn raft_main(args: &Args) -> ExitCode {
    let options = match raft_options(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("pbx-sim: {error}");
            return ExitCode::from(2);
        }
    };
    let Some(count) = args.swarm else {
        let report = raft_run(options.clone());
        println!("pbx-sim --raft: {}", report.summary());
        for v in &report.violations {
            println!("    seed {}: {v}", report.seed);
        }
        if report.violations.is_empty() {
            return ExitCode::SUCCESS;
        }
        println!("replay: {}", options.replay_command());
        return ExitCode::FAILURE;
    };
    let mut seeds = options.seed;
    let mut failures = Vec::new();
    let (mut simulated, mut wall) = (Duration::ZERO, Duration::ZERO);
    println!(
        "pbx-sim --raft: swarm of {count} seeds from {}, {} each",
        options.seed,
        format_duration(options.duration)
    );
    for i in 0..count {
        let options = RaftOptions { seed: splitmix64(&mut seeds), ..options.clone() };
        let report = raft_run(options.clone());
        simulated += report.simulated;
        wall += report.wall;
        let verdict =
            if report.violations.is_empty() { "ok".to_owned() } else { format!("FAILED: {}", report.violations[0]) };
        println!("  [{:>3}/{count}] {}  {verdict}", i + 1, report.summary());
        if !report.violations.is_empty() {
            failures.push(options.replay_command());
        }
    }
    println!(
        "pbx-sim --raft: {} of {count} seeds failed; {} simulated in {:.1} s",
        failures.len(),
        crate::sim::format_elapsed(simulated),
        wall.as_secs_f64()
    );
    for command in &failures {
        println!("  replay: {command}");
    }
    if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn raft_options(args: &Args) -> Result<RaftOptions, String> {
    if args.phones.is_some() || args.workload.is_some() || args.no_faults {
        return Err("--raft takes --seed, --duration, --swarm and --inject-bug only".into());
    }
    let mut options = RaftOptions::new(args.seed.unwrap_or_else(random_seed), args.duration);
    for name in &args.inject_bug {
        let bug = RaftBug::parse(name).ok_or_else(|| {
            format!("--inject-bug {name}: no such bug for --raft (known: {})", RaftBug::NAMES.join(", "))
        })?;
        options.bugs.push(bug);
    }
    Ok(options)
}

/// Runs one Raft seed; a panic in the product's code is a failure like any other.
fn raft_run(options: RaftOptions) -> RaftReport {
    let seed = options.seed;
    std::panic::catch_unwind(AssertUnwindSafe(|| crate::raft::run(options))).unwrap_or_else(|panic| RaftReport {
        seed,
        violations: vec![crate::check::Violation {
            at: Duration::ZERO,
            invariant: "nothing panics",
            detail: panic_message(panic.as_ref()),
        }],
        ..Default::default()
    })
}

/// A seed for a run nobody asked to repeat: it is printed, so it can be.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut state = nanos ^ u64::from(std::process::id()).rotate_left(32);
    splitmix64(&mut state) % 1_000_000_000
}

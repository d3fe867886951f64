//! The registrar glue's rule on the real machine: what leaves at once, what waits for a
//! write, and what a refused write turns a 200 into.

use super::*;
use crate::registrar::machine::{Registrar, RegistrarConfig, RegistrarInput};
use crate::registrar::tests::{PASSWORD_100, Reg, T0, authorization, challenge_for, extension, source};
use crate::sip::Transport;

fn registrar() -> Registrar {
    let mut m = Registrar::new(RegistrarConfig::default(), [42; 32], vec![extension("100", PASSWORD_100)], vec![], T0);
    while m.poll_output().is_some() {}
    m
}

fn register(m: &mut Registrar, tx: u64, reg: &Reg) {
    m.handle(T0, RegistrarInput::Register { tx, request: reg.request(), source: source(), transport: Transport::Udp });
}

fn dispatch_with(m: &mut Registrar, in_flight: usize, bugs: Bugs) -> Dispatch<()> {
    dispatch(m, in_flight, None, bugs, |_| {})
}

/// A challenge leaves at once even behind a write; the authenticated REGISTER that follows
/// queues its 200 behind its binding's write, and a refused write turns it into 503 with
/// Retry-After (no quorum) or 500 (a disk fault).
#[test]
fn a_challenge_leaves_at_once_and_a_200_waits_for_its_write() {
    let mut m = registrar();
    let reg = Reg::new("100", &["sip:100@192.0.2.7:5060"]);
    register(&mut m, 1, &reg);
    let first = dispatch_with(&mut m, 3, Bugs::default());
    assert_eq!(first.now.len(), 1, "the 401 leaves though writes are in flight");
    assert_eq!((first.now[0].0, first.now[0].1.code, first.now[0].2), (1, 401, false));
    assert!(first.now_job.is_none() && first.queued.is_none());

    let c = challenge_for(&first.now[0].1, "SHA-256");
    register(&mut m, 2, &reg.clone().cseq(reg.cseq + 1).auth(authorization(&c, "100", PASSWORD_100, 1)));
    let second = dispatch_with(&mut m, 0, Bugs::default());
    assert!(second.now.is_empty() && second.now_job.is_none(), "nothing of a write leaves before it");
    let job = second.queued.expect("the binding's job");
    assert_eq!(job.commands.len(), 1, "{:?}", job.commands);
    assert_eq!(job.responses.len(), 1);

    let ok = settle(WriteJob { commands: Vec::new(), ..clone_job(&job) }, Some(&Ok(())));
    assert_eq!((ok.responses[0].0, ok.responses[0].1.code, ok.responses[0].2), (2, 200, true));
    let no_quorum = settle(clone_job(&job), Some(&Err(StoreError::NoQuorum { retry_after_s: 5 })));
    assert_eq!(no_quorum.responses[0].1.code, 503);
    assert_eq!(
        no_quorum.responses[0].1.headers.get_raw(&Name::RETRY_AFTER).next().map(|v| v.as_str().to_owned()),
        Some("5".into())
    );
    assert_eq!(
        no_quorum.responses[0].1.headers.get_raw(&Name::CALL_ID).next().map(|v| v.as_str().to_owned()),
        job.responses[0].1.headers.get_raw(&Name::CALL_ID).next().map(|v| v.as_str().to_owned()),
        "the 503 keeps the request's Call-ID"
    );
    let disk = settle(job, Some(&Err(StoreError::Disk("full".into()))));
    assert_eq!(disk.responses[0].1.code, 500);
}

/// A job without commands leaves whole while nothing is being written, and queues behind a
/// write in flight; an admin reply rides in its job either way.
#[test]
fn a_job_without_commands_waits_only_behind_writes_in_flight() {
    let mut m = registrar();
    m.handle(T0, RegistrarInput::RemoveExtension { number: "999".into() });
    let idle = dispatch(&mut m, 0, Some("reply"), Bugs::default(), |_| {});
    assert!(idle.queued.is_none());
    assert_eq!(idle.now_job.expect("the reply's job").reply, Some("reply"));
    m.handle(T0, RegistrarInput::RemoveExtension { number: "999".into() });
    let busy = dispatch(&mut m, 1, Some("reply"), Bugs::default(), |_| {});
    assert!(busy.now_job.is_none());
    assert_eq!(busy.queued.expect("queued behind the write").reply, Some("reply"));
    // Nothing at all: no job.
    let empty = dispatch_with(&mut m, 1, Bugs::default());
    assert!(empty.now.is_empty() && empty.now_job.is_none() && empty.queued.is_none());
}

/// With the injected `unstored-ok` bug the 200 leaves before its binding is stored (what the
/// simulator's durability check then catches: `an_injected_unstored_ok_is_caught`).
#[cfg(feature = "sim-bugs")]
#[test]
fn the_unstored_ok_bug_lets_the_200_out_first() {
    let mut bugs = Bugs::default();
    assert!(bugs.enable("unstored-ok"));
    let mut m = registrar();
    let reg = Reg::new("100", &["sip:100@192.0.2.7:5060"]);
    register(&mut m, 1, &reg);
    let first = dispatch_with(&mut m, 0, bugs);
    let c = challenge_for(&first.now[0].1, "SHA-256");
    register(&mut m, 2, &reg.clone().cseq(reg.cseq + 1).auth(authorization(&c, "100", PASSWORD_100, 1)));
    let second = dispatch_with(&mut m, 0, bugs);
    assert_eq!(second.now.iter().map(|(_, r, _)| r.code).collect::<Vec<_>>(), vec![200]);
    assert_eq!(second.queued.expect("the write still goes").commands.len(), 1);
}

fn clone_job(job: &WriteJob<()>) -> WriteJob<()> {
    WriteJob { commands: job.commands.clone(), responses: job.responses.clone(), routes: Vec::new(), reply: None }
}

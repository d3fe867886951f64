//! Supervision end to end: a panic injected into a core actor of the real `pbx` binary (the
//! test hook `POST /api/v1/debug/panic/{actor}`, on only with `PBX_TEST_HOOKS=1`) is followed
//! by a restart from durable state, `pbx_actor_restarts_total{actor}` and a ready node; a call
//! that loses its actor ends with a BYE to both phones (SIPp) and a `failed` CDR, and the next
//! call works; an actor failing too often stops the node non-zero; `/readyz` tells the truth,
//! in a cluster too (no leader, no readiness; a witness likewise).

use pbx_tests::audio::G711;
use pbx_tests::rtp::RtpSink;
use pbx_tests::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Longest a restart may take to show in the metric and in `/readyz`.
const RESTART_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a callee may take to show up in the API after SIPp started.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an election may take (the nodes' timeouts are 1–2 s; this allows a few rounds).
const ELECTION_TIMEOUT: Duration = Duration::from_secs(15);

fn node() -> Pbx {
    Pbx::start(PbxOptions::default().own_rtp_ports(20).test_hooks())
}

/// Injects a panic into `actor` through the test hook.
fn panic_in(pbx: &Pbx, actor: &str) {
    let (code, body) = pbx.api("POST", &format!("/api/v1/debug/panic/{actor}"), None);
    assert_eq!(code, 202, "panic hook for {actor}: {body}");
}

fn restarts(pbx: &Pbx, actor: &str) -> Option<f64> {
    pbx.metric(&format!("pbx_actor_restarts_total{{actor=\"{actor}\"}}"))
}

/// Waits until `actor` has been restarted `n` times and the node is ready again.
fn wait_restarted(pbx: &Pbx, actor: &str, n: f64) {
    assert!(
        wait_until(RESTART_TIMEOUT, || restarts(pbx, actor) == Some(n)),
        "{actor} restarts: {:?}\n{}",
        restarts(pbx, actor),
        pbx.log()
    );
    assert!(wait_until(RESTART_TIMEOUT, || pbx.readyz().0 == 200), "not ready again: {:?}", pbx.readyz());
}

/// REGISTER `user` from a fresh raw UDP client with `contact`; the final response.
fn register(pbx: &Pbx, user: &str, password: &str, contact: &str) -> String {
    let contact = format!("Contact: <{contact}>");
    SipClient::udp(pbx.sip).register(user, password, "MD5", &[&contact, "Expires: 600"]).expect("an answer to REGISTER")
}

fn cdrs(pbx: &Pbx) -> Vec<serde_json::Value> {
    let (code, body) = pbx.api("GET", "/api/v1/cdrs?limit=500", None);
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("CDR page is JSON");
    page["cdrs"].as_array().cloned().unwrap_or_default()
}

fn calls_answered(pbx: &Pbx) -> usize {
    let (_, body) = pbx.api("GET", "/api/v1/calls", None);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    list["calls"].as_array().map_or(0, |calls| calls.iter().filter(|c| c["state"] == "answered").count())
}

/// The node is ready from the start; `/healthz` stays plain liveness.
#[test]
fn a_fresh_node_is_ready() {
    let pbx = node();
    assert!(wait_until(RESTART_TIMEOUT, || pbx.readyz().0 == 200), "{:?}", pbx.readyz());
    assert_eq!(pbx.readyz().1, serde_json::json!({ "ready": true, "reasons": [] }));
    assert_eq!(restarts(&pbx, "registrar"), Some(0.0), "counted from 0:\n{}", pbx.metrics());
}

/// Without `PBX_TEST_HOOKS=1` the panic hook does not exist (404), even with the token.
#[test]
fn the_panic_hook_is_off_by_default() {
    let pbx = Pbx::start(PbxOptions::default());
    let (code, _) = pbx.api("POST", "/api/v1/debug/panic/registrar", None);
    assert_eq!(code, 404);
    assert!(pbx.answers_options(), "the node still serves SIP");
    assert_eq!(restarts(&pbx, "registrar"), Some(0.0));
}

/// The registrar panics: it is restarted from storage (the bindings from before are still
/// there), the restart is logged and counted, the node is ready again and a phone registers.
#[test]
fn registrar_panic_restarts_it_from_storage() {
    let pbx = node();
    let first = register(&pbx, "100", "secret-100", "sip:100@127.0.0.1:5999");
    assert_eq!(status_code(&first), Some(200), "{first}");
    panic_in(&pbx, "registrar");
    wait_restarted(&pbx, "registrar", 1.0);
    assert_eq!(pbx.contacts_of("100"), ["sip:100@127.0.0.1:5999"], "the binding from before is there");
    let second = register(&pbx, "101", "secret-101", "sip:101@127.0.0.1:5998");
    assert_eq!(status_code(&second), Some(200), "{second}");
    assert_eq!(pbx.contacts_of("101"), ["sip:101@127.0.0.1:5998"]);
    let log = pbx.log();
    assert!(log.contains("core actor failed") && log.contains("registrar: panic injected by the test hook"), "{log}");
}

/// A call in progress (SIPp caller and callee through pbx) when `actor` panics: both phones get
/// a BYE, the CDR says `failed` with `reason`, and a new call between them works.
fn call_ends_when(actor: &str, reason: &str) -> Pbx {
    let pbx = node();
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee = Sipp::registered_callee(&pbx, "call_load_uas.xml", "101", "secret-101", 2)
        .media(G711::Pcmu, &callee_sink, None)
        .timeout(Duration::from_secs(60))
        .spawn();
    let contact = format!("sip:101@{};transport=UDP", callee.local());
    assert!(wait_until(REGISTER_TIMEOUT, || pbx.contacts_of("101") == [contact.clone()]), "101 not registered");
    let hung_up = Sipp::new("call_uac_hungup.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &caller_sink, None)
        .args(&["-m", "1"])
        .timeout(Duration::from_secs(40))
        .spawn();
    assert!(wait_until(Duration::from_secs(10), || calls_answered(&pbx) == 1), "the call was not answered");

    panic_in(&pbx, actor);
    let hung_up = hung_up.wait();
    assert!(hung_up.success, "the caller got pbx's BYE: {}", hung_up.report());
    assert_eq!(hung_up.received_requests("BYE").len(), 1, "{}", hung_up.messages);
    assert!(wait_until(Duration::from_secs(10), || cdrs(&pbx).len() == 1), "no CDR: {:?}", cdrs(&pbx));
    let cdr = &cdrs(&pbx)[0];
    assert_eq!((cdr["disposition"].as_str(), cdr["reason"].as_str()), (Some("failed"), Some(reason)), "{cdr}");
    assert_eq!(cdr["hangup"], "pbx", "{cdr}");

    let next = Sipp::new("call_load_uac.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &RtpSink::for_sipp(), None)
        .args(&["-m", "1", "-d", "300"])
        .run();
    assert!(next.success, "a new call works: {}", next.report());
    let callee = callee.wait();
    assert!(callee.success, "the callee got a BYE for each call: {}", callee.report());
    assert_eq!(callee.received_requests("BYE").len(), 2, "{}", callee.messages);
    assert!(wait_until(Duration::from_secs(10), || cdrs(&pbx).len() == 2), "CDRs: {:?}", cdrs(&pbx));
    assert_eq!(cdrs(&pbx)[0]["disposition"], "answered", "the new call's CDR");
    assert!(
        wait_until(Duration::from_secs(10), || pbx.metric("pbx_rtp_ports_in_use") == Some(0.0)),
        "ports still in use:\n{}",
        pbx.metrics()
    );
    pbx
}

/// The endpoint panics mid-call: its transactions are gone; the call ends through the new one.
#[test]
fn endpoint_panic_ends_calls_with_bye_and_restarts_it() {
    let pbx = call_ends_when("endpoint", "SIP endpoint restarted");
    wait_restarted(&pbx, "endpoint", 1.0);
}

/// The calls actor panics mid-call: it restarts empty; the call it had ends.
#[test]
fn calls_actor_panic_ends_calls_with_bye_and_restarts_it() {
    let pbx = call_ends_when("calls", "calls actor restarted");
    wait_restarted(&pbx, "calls", 1.0);
}

/// The call's own actor panics: its legs hang up on their own; nothing needs a restart.
#[test]
fn call_actor_panic_ends_its_call_with_bye() {
    let pbx = call_ends_when("call", "call failed");
    assert_eq!(pbx.metric("pbx_call_actor_failures_total{actor=\"call\"}"), Some(1.0), "{}", pbx.metrics());
    assert_eq!(pbx.readyz().0, 200);
}

/// The call's media session panics: the call ends as failed.
#[test]
fn media_panic_ends_its_call_with_bye() {
    let pbx = call_ends_when("media", "media session failed");
    assert_eq!(pbx.metric("pbx_call_actor_failures_total{actor=\"media\"}"), Some(1.0), "{}", pbx.metrics());
}

/// One actor failing more often than the restart intensity allows (3 restarts in 60 s) stops
/// the node with a non-zero exit, saying why, for its service manager to start it afresh.
#[test]
fn too_many_restarts_stop_the_node_non_zero() {
    let mut pbx = node();
    for n in 1..=3 {
        panic_in(&pbx, "reaper");
        wait_restarted(&pbx, "reaper", f64::from(n));
    }
    panic_in(&pbx, "reaper");
    let code = pbx.exit_within(Duration::from_secs(20));
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}:\n{}", pbx.log());
    assert!(pbx.log().contains("core actor reaper failed more than 3 times within 60 s"), "{}", pbx.log());
}

/// `pbx cluster init` into `dir` for `nodes`.
fn init(dir: &Path, nodes: &str) {
    let status = Command::new(binary())
        .args(["cluster", "init", "--out"])
        .arg(dir)
        .args(["--nodes", nodes])
        .stdout(Stdio::null())
        .status()
        .expect("run pbx cluster init");
    assert!(status.success(), "pbx cluster init failed: {status}");
}

/// The `[cluster]` section of member `node` of a cluster whose members listen on `ports`.
fn section(node: &str, certs: &Path, members: &[(&str, u16)]) -> String {
    let port = members.iter().find(|(n, _)| *n == node).map(|(_, p)| *p).expect("node among members");
    let mut s = format!("[cluster]\nnode = {node:?}\ncerts = {:?}\nlisten = \"127.0.0.1:{port}\"\n", certs.display());
    for (name, port) in members {
        let role = if name.starts_with('w') { "witness" } else { "voter" };
        s.push_str(&format!(
            "\n[[cluster.members]]\nname = {name:?}\naddress = \"127.0.0.1:{port}\"\nrole = \"{role}\"\n"
        ));
    }
    s
}

/// In a 3-member cluster a lone voter and a lone witness know no leader: 503, saying so; once
/// two members run they elect one and both answer 200.
#[test]
fn readyz_in_a_cluster_needs_a_leader() {
    let certs = tempfile::tempdir().unwrap();
    init(certs.path(), "n1,n2,w3");
    let members: Vec<(&str, u16)> = ["n1", "n2", "w3"].iter().map(|n| (*n, *free_port_block(2).start())).collect();
    let options = |name: &str| PbxOptions::default().own_rtp_ports(20).cluster(&section(name, certs.path(), &members));
    let unready = serde_json::json!({ "ready": false, "reasons": ["cluster: no leader known"] });

    let mut n1 = Pbx::start(options("n1"));
    assert_eq!(n1.readyz(), (503, unready.clone()), "a lone voter");
    // Not SIGTERM: a node without quorum stops only once its pending Raft writes time out.
    n1.kill9();
    let w3 = Pbx::start(options("w3"));
    assert_eq!(w3.readyz(), (503, unready), "a lone witness");

    n1.start_again();
    let ready = || n1.readyz().0 == 200 && w3.readyz().0 == 200;
    assert!(wait_until(ELECTION_TIMEOUT, ready), "n1: {:?}, w3: {:?}", n1.readyz(), w3.readyz());
    assert_eq!(w3.readyz().1, serde_json::json!({ "ready": true, "reasons": [] }));
}

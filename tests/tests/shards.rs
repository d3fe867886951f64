//! The SIP endpoint sharded by Call-ID (`[sip] endpoint_shards`, docs/ARCHITECTURE.md): with two
//! shards, REGISTERs and calls whose Call-IDs land on either shard work end to end. A call
//! lives on the shard its caller's Call-ID names; the Call-ID pbx draws for the callee's leg
//! names the same shard, so the callee's answers and its BYE come back to it.
//!
//! SIPp draws its Call-IDs (`<n>-<pid>@<ip>`); each test checks that they covered both shards
//! (`pbx_actors::endpoint::shard::of_call_id`, the transports' own function). With 16 calls the
//! odds that all land on one shard, so that the check fails, are 2^-15.

use pbx_actors::endpoint::shard::of_call_id;
use pbx_tests::audio::G711;
use pbx_tests::rtp::RtpSink;
use pbx_tests::*;
use std::collections::BTreeSet;
use std::time::Duration;

const SHARDS: usize = 2;
/// Calls and registrations per test: enough that both shards get some (see the module doc).
const FLOWS: u32 = 16;
/// Longest pbx may take to forget a finished call and free its ports.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

fn node() -> Pbx {
    Pbx::start(PbxOptions::default().own_rtp_ports(40).sip(&format!("endpoint_shards = {SHARDS}")))
}

/// The shards the Call-IDs of these messages name.
fn shards_of(messages: &[String]) -> BTreeSet<usize> {
    messages
        .iter()
        .flat_map(|m| header_values(m, "Call-ID"))
        .map(|call_id| of_call_id(call_id.as_bytes(), SHARDS))
        .collect()
}

/// Waits until the API lists no call, no leg is routed and no RTP port is in use.
fn assert_nothing_left(pbx: &Pbx) {
    for metric in ["pbx_calls_active", "pbx_call_legs_active", "pbx_rtp_ports_in_use"] {
        assert!(
            wait_until(CLEANUP_TIMEOUT, || pbx.metric(metric).is_none_or(|n| n == 0.0)),
            "{metric} is not 0:\n{}",
            pbx.metrics()
        );
    }
}

/// REGISTERs with digest, each with a fresh Call-ID: every one gets 401 then 200 from the shard
/// its Call-ID names (the registrar's answers find their way back to it), on both shards.
#[test]
fn registers_on_both_shards() {
    let pbx = node();
    let run = Sipp::new("register_auth.xml", pbx.sip, &pbx.scratch())
        .args(&["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "expires", "120"])
        .args(&["-m", &FLOWS.to_string(), "-r", "20"])
        .run();
    assert!(run.success, "sipp: {}", run.report());
    let codes = run.received_codes();
    assert_eq!(codes.iter().filter(|&&c| c == 401).count(), FLOWS as usize, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), FLOWS as usize, "{codes:?}");
    assert_eq!(shards_of(&run.sent_requests("REGISTER")).len(), SHARDS, "the Call-IDs covered both shards");
    assert_eq!(pbx.contacts_of("100").len(), 1, "one contact, refreshed");
}

/// Calls hung up by the caller: the INVITE (407, then with digest), the callee's 180/200, both
/// ACKs and the caller's BYE reach the right shard and the right leg, for calls on both shards;
/// the callee's leg gets a Call-ID of the call's shard. Nothing is left afterwards.
#[test]
fn calls_on_both_shards_hung_up_by_the_caller() {
    let pbx = node();
    let callee = Sipp::registered_callee(&pbx, "call_load_uas.xml", "101", "secret-101", FLOWS)
        .media(G711::Pcmu, &RtpSink::for_sipp(), None)
        .timeout(Duration::from_secs(60))
        .spawn();
    pbx.wait_registered("101", &callee);
    let caller = Sipp::new("call_load_uac.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &RtpSink::for_sipp(), None)
        .args(&["-m", &FLOWS.to_string(), "-r", "10", "-d", "200"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    let invites = caller.sent_requests("INVITE");
    assert_eq!(shards_of(&invites).len(), SHARDS, "the callers' Call-IDs covered both shards");
    let b_legs = callee.received_requests("INVITE");
    assert_eq!(b_legs.len(), FLOWS as usize, "{}", callee.messages);
    assert_eq!(shards_of(&b_legs).len(), SHARDS, "the callee legs' Call-IDs name both shards");
    assert_eq!(callee.received_requests("BYE").len(), FLOWS as usize, "{}", callee.messages);
    assert_nothing_left(&pbx);
}

/// Calls hung up by the callee: its in-dialog BYE, sent with the Call-ID pbx drew for its leg,
/// reaches the shard that owns the call, whose caller's leg then gets pbx's BYE — for calls on
/// both shards.
#[test]
fn calls_on_both_shards_hung_up_by_the_callee() {
    let pbx = node();
    let callee = Sipp::registered_callee(&pbx, "call_uas_hangup.xml", "101", "secret-101", FLOWS)
        .media(G711::Pcmu, &RtpSink::for_sipp(), None)
        .timeout(Duration::from_secs(60))
        .spawn();
    pbx.wait_registered("101", &callee);
    let caller = Sipp::new("call_uac_hungup.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &RtpSink::for_sipp(), None)
        .args(&["-m", &FLOWS.to_string(), "-r", "10"])
        .timeout(Duration::from_secs(60))
        .run();
    let callee = callee.finish_after(&caller);
    assert!(callee.success, "callee: {}", callee.report());
    assert!(caller.success, "caller: {}", caller.report());
    assert_eq!(shards_of(&caller.sent_requests("INVITE")).len(), SHARDS, "both shards");
    assert_eq!(caller.received_requests("BYE").len(), FLOWS as usize, "{}", caller.messages);
    let byes = callee.sent_requests("BYE");
    assert_eq!(byes.len(), FLOWS as usize, "{}", callee.messages);
    assert_eq!(shards_of(&byes).len(), SHARDS, "the callee's BYEs went to both shards");
    assert_nothing_left(&pbx);
}

/// A shard that fails is restarted alone (one restart counted for the endpoint, the node ready
/// again), and REGISTERs on both shards work afterwards.
#[test]
fn a_failed_shard_restarts_alone() {
    let pbx = Pbx::start(PbxOptions::default().test_hooks().sip(&format!("endpoint_shards = {SHARDS}")));
    let (code, body) = pbx.api("POST", "/api/v1/debug/panic/endpoint-1", None);
    assert_eq!(code, 202, "{body}");
    let restarts = || pbx.metric("pbx_actor_restarts_total{actor=\"endpoint\"}");
    assert!(wait_until(CLEANUP_TIMEOUT, || restarts() == Some(1.0)), "restarts: {:?}\n{}", restarts(), pbx.log());
    assert!(wait_until(CLEANUP_TIMEOUT, || pbx.readyz().0 == 200), "not ready again: {:?}", pbx.readyz());
    let (code, _) = pbx.api("POST", &format!("/api/v1/debug/panic/endpoint-{SHARDS}"), None);
    assert_eq!(code, 404, "no such shard");
    let run = Sipp::new("register_auth.xml", pbx.sip, &pbx.scratch())
        .args(&["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "expires", "120"])
        .args(&["-m", &FLOWS.to_string(), "-r", "20"])
        .run();
    assert!(run.success, "sipp: {}", run.report());
    assert_eq!(shards_of(&run.sent_requests("REGISTER")).len(), SHARDS, "the Call-IDs covered both shards");
    assert_eq!(restarts(), Some(1.0), "shard 0 was not restarted");
}

//! Ring groups end to end (issue 18, item 3): `[[groups]]` in the config, SIPp phones as the
//! members. Ring all rings every member at once and the first to answer takes the call (the
//! others are cancelled); hunt rings them in turn, a busy member passing the call on at once,
//! an unanswered one after `member_timeout_s`; the caller hears ringing throughout and is
//! answered by the member that took it.

use pbx_tests::audio::{G711, G711_RATE_HZ, tone};
use pbx_tests::rtp::{RtpSink, g711_stream_pcap};
use pbx_tests::*;
use std::time::Duration;

const GROUPS: &str = r#"
[[groups]]
number = "600"
name = "Sales"
members = ["101", "102"]

[[groups]]
number = "601"
name = "Support"
strategy = "hunt"
members = ["101", "102"]
member_timeout_s = 2
"#;

fn node() -> Pbx {
    let mut options = PbxOptions::default().own_rtp_ports(100).toml(GROUPS);
    options.extensions.push(ext("102", "secret-102"));
    Pbx::start(options)
}

/// A member registered with SIPp running `scenario` for one call (`keys` its `-key`s).
fn member(pbx: &Pbx, user: &str, scenario: &str, keys: &[(&str, &str)]) -> (SippProcess, RtpSink) {
    let sink = RtpSink::for_sipp();
    let pcap = pbx.scratch().join(format!("member-{user}.pcap"));
    g711_stream_pcap(&pcap, G711::Pcmu, &tone(600.0, G711_RATE_HZ, 1.0, 8000.0)).expect("pcap");
    let mut sipp = Sipp::registered_callee(pbx, scenario, user, &format!("secret-{user}"), 1)
        .media(G711::Pcmu, &sink, Some(&pcap))
        .timeout(Duration::from_secs(20));
    for (name, value) in keys {
        sipp = sipp.key(name, value);
    }
    let process = sipp.spawn();
    pbx.wait_registered(user, &process);
    (process, sink)
}

/// 100 calls `group`; its run.
fn call(pbx: &Pbx, group: &str) -> SippRun {
    let sink = RtpSink::for_sipp();
    let pcap = pbx.scratch().join("caller.pcap");
    g711_stream_pcap(&pcap, G711::Pcmu, &tone(1000.0, G711_RATE_HZ, 1.0, 8000.0)).expect("pcap");
    Sipp::new("call_uac.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", group)
        .media(G711::Pcmu, &sink, Some(&pcap))
        .timeout(Duration::from_secs(15))
        .args(&["-d", "1000", "-m", "1"])
        .run()
}

/// Ring all: both members ring at once; 102 answers, 101 (ringing) is cancelled.
#[test]
fn ring_all_rings_every_member_and_the_first_to_answer_takes_the_call() {
    let pbx = node();
    let (ringing, _) = member(&pbx, "101", "call_uas_ring.xml", &[]);
    let (answering, _) = member(&pbx, "102", "call_uas.xml", &[]);
    let caller = call(&pbx, "600");
    let (answering, ringing) = (answering.finish_after(&caller), ringing.finish_after(&caller));
    assert!(caller.success, "caller: {}", caller.report());
    assert!(answering.success, "102: {}", answering.report());
    assert!(ringing.success, "101 rang and was cancelled: {}", ringing.report());
    assert_eq!(ringing.received_requests("INVITE").len(), 1, "{}", ringing.messages);
    assert_eq!(ringing.received_requests("CANCEL").len(), 1, "{}", ringing.messages);
    let (code, body) = pbx.api("GET", "/api/v1/cdrs", None);
    let cdrs: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(code, 200);
    assert_eq!(
        (cdrs["cdrs"][0]["callee"].as_str(), cdrs["cdrs"][0]["disposition"].as_str()),
        (Some("600"), Some("answered"))
    );
}

/// Hunt: 101 rings alone for its 2 s and is cancelled, then 102 rings and answers.
#[test]
fn hunt_rings_members_in_turn() {
    let pbx = node();
    let (first, _) = member(&pbx, "101", "call_uas_ring.xml", &[]);
    let (second, _) = member(&pbx, "102", "call_uas.xml", &[]);
    let started = std::time::Instant::now();
    let caller = call(&pbx, "601");
    let (second, first) = (second.finish_after(&caller), first.finish_after(&caller));
    assert!(caller.success, "caller: {}", caller.report());
    assert!(first.success && second.success, "101: {}\n102: {}", first.report(), second.report());
    assert_eq!(first.received_requests("CANCEL").len(), 1, "101 was cancelled: {}", first.messages);
    assert!(started.elapsed() >= Duration::from_secs(2), "102 rang only after 101's 2 s");
    assert!(!caller.received_codes().contains(&487), "{:?}", caller.received_codes());
}

/// Hunt: a busy member (486) passes the call on at once; the caller never hears the 486.
#[test]
fn hunt_passes_a_busy_member_on_at_once() {
    let pbx = node();
    let (busy, _) = member(&pbx, "101", "call_uas_reject.xml", &[("code", "486")]);
    let (second, _) = member(&pbx, "102", "call_uas.xml", &[]);
    let caller = call(&pbx, "601");
    let (second, busy) = (second.finish_after(&caller), busy.finish_after(&caller));
    assert!(caller.success, "caller: {}", caller.report());
    assert!(busy.success && second.success, "101: {}\n102: {}", busy.report(), second.report());
    assert!(!caller.received_codes().contains(&486), "{:?}", caller.received_codes());
}

/// A member logs out with `#45*601#` (603 "Logged out: 601"): the hunt group rings the next
/// member at once and never the logged-out one; `*45*601#` logs it back in. Survives a restart.
#[test]
fn a_member_logged_out_is_not_rung_until_it_logs_in_again() {
    let mut pbx = node();
    let code = |pbx: &Pbx, dialled: &str| {
        let run = Sipp::new("call_uac_fail.xml", pbx.sip, &pbx.scratch())
            .caller("101", "secret-101", dialled)
            .media(G711::Pcmu, &RtpSink::for_sipp(), None)
            .args(&["-m", "1"])
            .run();
        run.received_codes().into_iter().rfind(|c| *c >= 200)
    };
    assert_eq!(code(&pbx, "%2345*601%23"), Some(603));
    pbx.restart();
    // The member's own export says so (GDPR Art. 15).
    let (status, body) = pbx.api("GET", "/api/v1/privacy/subjects/101/export", None);
    assert_eq!(status, 200, "{body}");
    let export: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(export["extension"]["ring_groups_logged_out_of"], serde_json::json!(["601"]), "{body}");
    let (skipped, _) = member(&pbx, "101", "call_uas_ring.xml", &[]);
    let (second, _) = member(&pbx, "102", "call_uas.xml", &[]);
    let started = std::time::Instant::now();
    let caller = call(&pbx, "601");
    let (second, skipped) = (second.finish_after(&caller), skipped.stop());
    assert!(caller.success && second.success, "caller: {}\n102: {}", caller.report(), second.report());
    assert!(skipped.received_requests("INVITE").is_empty(), "101 logged out was rung: {}", skipped.messages);
    assert!(started.elapsed() < Duration::from_secs(6), "102 rang at once");
    assert_eq!(code(&pbx, "*45*601%23"), Some(603));
    assert_eq!(code(&pbx, "*45*600%23"), Some(603), "still a member of 600");
    let stranger = Sipp::new("call_uac_fail.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "%2345*601%23")
        .media(G711::Pcmu, &RtpSink::for_sipp(), None)
        .args(&["-m", "1"])
        .run();
    assert!(stranger.received_codes().contains(&403), "100 is no member: {:?}", stranger.received_codes());
}

//! Load leaves nothing behind: SIPp puts calls (with SDP, challenged, relayed, two RTP port pairs
//! leased each) and REGISTER flows on the real `pbx` binary (the debug build `cargo test` makes)
//! at once; once the load is over and RFC 3261's Timer J has passed, pbx's /metrics must show no
//! active call, no call leg, no SIP transaction and no RTP port in use or parked.
//!
//! Rates are a tenth or less of what a release build holds (benches/load/run.sh measures those),
//! so a debug build keeps up on a shared machine; the test proves cleanup, not speed.

use pbx_tests::rtp::RtpSink;
use pbx_tests::*;
use std::time::{Duration, Instant};

/// Calls per second and how long the calls and the REGISTER flows run.
const CALL_RATE_PER_S: u32 = 20;
const LOAD_S: u32 = 30;
/// How long each call is held between ACK and BYE.
const CALL_HOLD_MS: u32 = 2000;
/// REGISTER flows (REGISTER → 401 → REGISTER → 200) per second, each a new Call-ID.
const REGISTER_RATE_PER_S: u32 = 150;
/// The longest the SIPp runs may take: the load, the last calls' hold, retransmissions.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Timer J (64 × T1 = 32 s, RFC 3261 §17.2.2) keeps a finished non-INVITE server transaction on
/// UDP; after the load the gauges must reach 0 within it and a margin.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);

/// The gauges that count what a call or a request holds while it lives, and the sockets ended
/// calls leave parked for the next (closed after 10 s without a call: `PARKED_IDLE_MS`).
const GAUGES: [&str; 5] = [
    "pbx_calls_active",
    "pbx_call_legs_active",
    "pbx_sip_transactions",
    "pbx_rtp_ports_in_use",
    "pbx_rtp_ports_parked",
];

/// Each gauge's value (`None` when /metrics does not list it).
fn gauges(pbx: &Pbx) -> Vec<(&'static str, Option<f64>)> {
    let page = pbx.metrics();
    GAUGES
        .iter()
        .map(|name| {
            let value = page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok());
            (*name, value)
        })
        .collect()
}

/// 600 calls and 4,500 REGISTER flows at once, all successful; afterwards no call, leg,
/// transaction or RTP port is left.
#[test]
fn calls_and_registrations_under_load_leave_nothing_behind() {
    let calls = CALL_RATE_PER_S * LOAD_S;
    let flows = REGISTER_RATE_PER_S * LOAD_S;
    // One SIPp per role on 127.0.0.1: the per-source limit would stand for thousands of phones.
    let options = PbxOptions {
        extensions: vec![ext("100", "secret-100"), ext("101", "secret-101"), ext("102", "secret-102")],
        ..Default::default()
    };
    let pbx = Pbx::start(options.own_rtp_ports(1000).sip("source_rate_per_s = 0"));
    for (name, value) in gauges(&pbx) {
        assert_eq!(value, Some(0.0), "{name} before any load:\n{}", pbx.metrics());
    }
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee = Sipp::registered_callee(&pbx, "call_load_uas.xml", "101", "secret-101", calls)
        .media(audio::G711::Pcmu, &callee_sink, None)
        .without_message_trace()
        .timeout(RUN_TIMEOUT)
        .spawn();
    pbx.wait_registered("101", &callee);

    let started = Instant::now();
    let registrations = Sipp::new("register_auth.xml", pbx.sip, &pbx.scratch())
        .args(&["-s", "102", "-au", "102", "-ap", "secret-102", "-key", "expires", "600"])
        .args(&["-r", &REGISTER_RATE_PER_S.to_string(), "-m", &flows.to_string(), "-l", "1000"])
        .without_message_trace()
        .timeout(RUN_TIMEOUT)
        .spawn();
    let caller = Sipp::new("call_load_uac.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(audio::G711::Pcmu, &caller_sink, None)
        .args(&["-r", &CALL_RATE_PER_S.to_string(), "-m", &calls.to_string(), "-d", &CALL_HOLD_MS.to_string()])
        .without_message_trace()
        .timeout(RUN_TIMEOUT)
        .run();
    let registrations = registrations.wait();
    let callee = callee.finish_after(&caller);
    let load_s = started.elapsed().as_secs();
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    assert_eq!(caller.calls_counted("Successful call"), Some(u64::from(calls)), "{}", caller.screen);
    assert_eq!(caller.calls_counted("Failed call"), Some(0), "{}", caller.screen);
    assert!(registrations.success, "REGISTER flows: {}", registrations.report());
    assert_eq!(registrations.calls_counted("Successful call"), Some(u64::from(flows)), "{}", registrations.screen);
    assert_eq!(registrations.calls_counted("Failed call"), Some(0), "{}", registrations.screen);

    // Every gauge 0 at once, within Timer J and a margin of the load's end.
    let drained = wait_until(DRAIN_TIMEOUT, || gauges(&pbx).iter().all(|(_, v)| *v == Some(0.0)));
    eprintln!("load {load_s} s, then drained in {} s", started.elapsed().as_secs() - load_s);
    assert!(
        drained,
        "left {DRAIN_TIMEOUT:?} after a {load_s} s load: {:?}\n{}",
        gauges(&pbx),
        pbx.api("GET", "/api/v1/calls", None).1
    );
}

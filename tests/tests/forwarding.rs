//! Per-extension call forwarding end to end against the real `pbx` binary on 127.0.0.1: the
//! admin API (`/api/v1/extensions/{number}/forwarding`), the three kinds (always, busy, no
//! answer) on real calls between SIPp phones, loops, the feature codes a phone dials
//! (`*21*N#` and friends, answered 603 with what was set), and the call record of a forwarded
//! call.
//!
//! Caller 100 dials 101; SIPp phones registered as 101, 102 and 103 answer, refuse or ring as
//! each test needs. The dialled phone's run is stopped (SIGTERM: SIPp writes its trace) when a
//! test must show it never saw an INVITE. Feature codes are dialled by a scripted phone on raw
//! UDP (see [`Phone`]), which reads the reason phrase SIPp would hide.

use pbx_tests::audio::{G711, G711_RATE_HZ, dominant_frequency, tone};
use pbx_tests::rtp::{RtpSink, g711_audio, g711_stream_pcap};
use pbx_tests::*;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long an answered call lasts (`-d`): the target's second of tone fits in it.
const CALL_MS: &str = "1500";
/// The tone the forwarding target plays: what the caller hears proves who answered.
const TARGET_HZ: f64 = 600.0;
/// The tone the caller plays.
const CALLER_HZ: f64 = 1000.0;
/// SIPp's own bound on a caller's run.
const CALLER_TIMEOUT: Duration = Duration::from_secs(15);
/// SIPp's own bound on a callee's run (it starts before the caller).
const CALLEE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest pbx may take to forget a finished call, free its ports and write its record.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The no-answer time the no-answer tests configure.
const NO_ANSWER_S: u64 = 2;
/// The documented default of `no_answer_after_s`.
const DEFAULT_NO_ANSWER_S: u64 = 20;
/// Longest a scripted phone waits for a final response.
const SIP_TIMEOUT: Duration = Duration::from_secs(5);

/// A node with extensions 100 to 103 (MD5 first, for SIPp) and its own RTP ports.
fn node() -> Pbx {
    let extensions = ["100", "101", "102", "103"].iter().map(|n| ext(n, &password(n))).collect();
    Pbx::start(PbxOptions { extensions, ..PbxOptions::default() }.own_rtp_ports(100))
}

fn password(number: &str) -> String {
    format!("secret-{number}")
}

// ---- The forwarding API -------------------------------------------------------------------

fn forwarding_path(number: &str) -> String {
    format!("/api/v1/extensions/{number}/forwarding")
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The four fields of a forwarding document, as the contract names them (a missing field reads
/// as null, so the comparison is about the values).
fn fields(v: &Value) -> Value {
    json!({
        "always": v["always"],
        "busy": v["busy"],
        "no_answer": v["no_answer"],
        "no_answer_after_s": v["no_answer_after_s"],
    })
}

/// The forwarding document with these values.
fn forwarding(always: Option<&str>, busy: Option<&str>, no_answer: Option<&str>, after_s: u64) -> Value {
    json!({ "always": always, "busy": busy, "no_answer": no_answer, "no_answer_after_s": after_s })
}

/// Forwarding off: the state of an extension nobody has touched.
fn off() -> Value {
    forwarding(None, None, None, DEFAULT_NO_ANSWER_S)
}

/// `GET …/forwarding`: the status and the raw body.
fn get_raw(pbx: &Pbx, number: &str) -> (u16, String) {
    pbx.api("GET", &forwarding_path(number), None)
}

/// `GET …/forwarding`, asserting 200; its four fields.
fn get(pbx: &Pbx, number: &str) -> Value {
    let (code, body) = get_raw(pbx, number);
    assert_eq!(code, 200, "GET forwarding of {number}: {body}");
    fields(&parse(&body))
}

/// `PUT …/forwarding` with `body`: the status and the raw answer.
fn put_raw(pbx: &Pbx, number: &str, body: &str) -> (u16, String) {
    pbx.api("PUT", &forwarding_path(number), Some(body))
}

/// `PUT …/forwarding` with `body`, asserting 200 and that the answer is `stored`.
fn put(pbx: &Pbx, number: &str, body: &Value, stored: &Value) {
    let (code, answer) = put_raw(pbx, number, &body.to_string());
    assert_eq!(code, 200, "PUT forwarding of {number} {body}: {answer}");
    assert_eq!(&fields(&parse(&answer)), stored, "PUT {body} answered {answer}");
}

/// The first word of an API error (`"busy: …"` → `busy`).
fn error_field(answer: &str) -> String {
    let error =
        parse(answer)["error"].as_str().unwrap_or_else(|| panic!("no \"error\" string in {answer}")).to_string();
    error.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).find(|w| !w.is_empty()).unwrap_or("").to_string()
}

/// A fresh node: every extension's forwarding is off (nulls, 20 s); an unknown extension is
/// 404 on GET and on PUT.
#[test]
fn forwarding_is_off_by_default_and_unknown_extensions_are_404() {
    let pbx = node();
    for number in ["100", "101", "102", "103"] {
        assert_eq!(get(&pbx, number), off(), "extension {number}");
    }
    let (code, body) = get_raw(&pbx, "999");
    assert_eq!(code, 404, "GET forwarding of an unknown extension: {body}");
    let (code, body) = put_raw(&pbx, "999", r#"{"always":"101"}"#);
    assert_eq!(code, 404, "PUT forwarding of an unknown extension: {body}");
    assert_eq!(get_raw(&pbx, "999").0, 404, "the PUT created something");
}

/// PUT stores all three kinds and the seconds, answers with what it stored and GET reads it
/// back; another extension is untouched. Omitted fields are null (the seconds 20), and a PUT
/// of nulls clears.
#[test]
fn forwarding_is_stored_read_back_and_cleared() {
    let pbx = node();
    let full = forwarding(Some("102"), Some("103"), Some("100"), 45);
    put(&pbx, "101", &full, &full);
    assert_eq!(get(&pbx, "101"), full);
    assert_eq!(get(&pbx, "102"), off(), "another extension changed");

    // Fields left out are off; the seconds go back to the default.
    put(&pbx, "101", &json!({ "busy": "102" }), &forwarding(None, Some("102"), None, DEFAULT_NO_ANSWER_S));
    assert_eq!(get(&pbx, "101"), forwarding(None, Some("102"), None, DEFAULT_NO_ANSWER_S));
    put(&pbx, "101", &json!({ "no_answer": "103", "no_answer_after_s": 7 }), &forwarding(None, None, Some("103"), 7));
    assert_eq!(get(&pbx, "101"), forwarding(None, None, Some("103"), 7));

    // The bounds of the seconds are accepted.
    for seconds in [1, 300] {
        let body = json!({ "no_answer": "102", "no_answer_after_s": seconds });
        put(&pbx, "101", &body, &forwarding(None, None, Some("102"), seconds));
    }

    put(&pbx, "101", &json!({ "always": null, "busy": null, "no_answer": null }), &off());
    assert_eq!(get(&pbx, "101"), off(), "nulls did not clear");
}

/// A target that is no extension, a target that is the extension itself, and seconds outside
/// 1..=300 are 400 with an error naming the field first; nothing of the PUT is stored.
#[test]
fn bad_forwarding_is_400_naming_the_field_and_changes_nothing() {
    let pbx = node();
    let before = forwarding(Some("102"), Some("103"), Some("102"), 30);
    put(&pbx, "101", &before, &before);
    for (body, field) in [
        (json!({ "always": "999" }), "always"),
        (json!({ "busy": "999" }), "busy"),
        (json!({ "no_answer": "999" }), "no_answer"),
        (json!({ "always": "101" }), "always"),
        (json!({ "busy": "101" }), "busy"),
        (json!({ "no_answer": "101" }), "no_answer"),
        // One bad field among good ones: the good ones are not stored either.
        (json!({ "always": "103", "busy": "999", "no_answer": "100" }), "busy"),
        (json!({ "no_answer": "102", "no_answer_after_s": 0 }), "no_answer_after_s"),
        (json!({ "no_answer": "102", "no_answer_after_s": 301 }), "no_answer_after_s"),
        (json!({ "no_answer_after_s": 0 }), "no_answer_after_s"),
    ] {
        let (code, answer) = put_raw(&pbx, "101", &body.to_string());
        assert_eq!(code, 400, "PUT {body}: {answer}");
        assert_eq!(error_field(&answer), field, "PUT {body}: the error should name {field} first: {answer}");
        assert_eq!(get(&pbx, "101"), before, "PUT {body} was refused but changed the forwarding");
    }
}

/// Forwarding is kept across a restart (the config-declared extensions are declared again), and
/// calls follow it after the restart.
#[test]
fn forwarding_survives_a_restart() {
    let mut pbx = node();
    let of_101 = forwarding(Some("102"), Some("103"), Some("103"), 7);
    let of_102 = forwarding(None, Some("100"), None, DEFAULT_NO_ANSWER_S);
    put(&pbx, "101", &of_101, &of_101);
    put(&pbx, "102", &json!({ "busy": "100" }), &of_102);
    pbx.restart();
    assert_eq!(get(&pbx, "101"), of_101, "101 after the restart");
    assert_eq!(get(&pbx, "102"), of_102, "102 after the restart");
    assert_eq!(get(&pbx, "103"), off(), "103 after the restart");
    // 101's own export holds its forwarding (GDPR Art. 15).
    let (status, body) = pbx.api("GET", "/api/v1/privacy/subjects/101/export", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(fields(&parse(&body)["extension"]["call_forwarding"]), of_101, "{body}");

    // 101 is not registered: only the restored always-forwarding can get the call answered.
    let target = Target::answering(&pbx, "102");
    let caller = Caller::start(&pbx);
    let run = caller.call("101");
    let (target, target_sink) = target.finish_after(&run);
    assert!(run.success, "caller: {}", run.report());
    assert!(target.success, "102: {}", target.report());
    assert_eq!(target.received_requests("INVITE").len(), 1, "{}", target.messages);
    assert_hears_the_target(&pbx, caller.sink);
    drop(target_sink);
    assert_nothing_left(&pbx);
}

/// An extension's forwarding goes with it: after DELETE the forwarding is 404, and an extension
/// created again with the same number starts with forwarding off.
#[test]
fn forwarding_is_removed_with_its_extension() {
    let pbx = node();
    let create = r#"{"number":"200","password":"secret-200","display_name":"Ext 200"}"#;
    let (code, body) = pbx.api("POST", "/api/v1/extensions", Some(create));
    assert_eq!(code, 201, "{body}");
    assert_eq!(get(&pbx, "200"), off(), "a new extension's forwarding");
    let set = forwarding(Some("101"), Some("102"), Some("103"), 12);
    put(&pbx, "200", &set, &set);

    let (code, body) = pbx.api("DELETE", "/api/v1/extensions/200", None);
    assert_eq!(code, 204, "{body}");
    let (code, body) = get_raw(&pbx, "200");
    assert_eq!(code, 404, "forwarding of a deleted extension: {body}");
    let (code, body) = put_raw(&pbx, "200", r#"{"always":"101"}"#);
    assert_eq!(code, 404, "PUT forwarding of a deleted extension: {body}");

    let (code, body) = pbx.api("POST", "/api/v1/extensions", Some(create));
    assert_eq!(code, 201, "{body}");
    assert_eq!(get(&pbx, "200"), off(), "the old forwarding came back with the number");
}

// ---- Calls --------------------------------------------------------------------------------

/// Writes one second of `hz` as a µ-law pcap in the node's scratch dir; its path.
fn tone_pcap(pbx: &Pbx, name: &str, hz: f64) -> PathBuf {
    let path = pbx.scratch().join(name);
    g711_stream_pcap(&path, G711::Pcmu, &tone(hz, G711_RATE_HZ, 1.0, 8000.0)).expect("write pcap");
    path
}

/// A SIPp phone registered as an extension, with the RTP sink its scenario needs.
struct Target {
    process: SippProcess,
    sink: RtpSink,
}

impl Target {
    /// Registered as `user`, runs `scenario` for one call (`keys` are its `-key`s).
    fn start(pbx: &Pbx, user: &str, scenario: &str, pcap: Option<&std::path::Path>, keys: &[(&str, &str)]) -> Target {
        let sink = RtpSink::for_sipp();
        let mut sipp = Sipp::registered_callee(pbx, scenario, user, &password(user), 1)
            .media(G711::Pcmu, &sink, pcap)
            .timeout(CALLEE_TIMEOUT);
        for (name, value) in keys {
            sipp = sipp.key(name, value);
        }
        let process = sipp.spawn();
        pbx.wait_registered(user, &process);
        Target { process, sink }
    }

    /// Answers one call (180, 200) and plays the target's tone.
    fn answering(pbx: &Pbx, user: &str) -> Target {
        let pcap = tone_pcap(pbx, &format!("target-{user}.pcap"), TARGET_HZ);
        Target::start(pbx, user, "call_uas.xml", Some(pcap.as_path()), &[])
    }

    /// Refuses one call with `code` (404, 480, 486 or 603).
    fn refusing(pbx: &Pbx, user: &str, code: &str) -> Target {
        Target::start(pbx, user, "call_uas_reject.xml", None, &[("code", code)])
    }

    /// Rings (180) until cancelled.
    fn ringing(pbx: &Pbx, user: &str) -> Target {
        Target::start(pbx, user, "call_uas_ring.xml", None, &[])
    }

    /// Its run once the caller's is over (waited for if the caller succeeded, else stopped).
    fn finish_after(self, caller: &SippRun) -> (SippRun, RtpSink) {
        (self.process.finish_after(caller), self.sink)
    }

    /// Its run so far, for a phone that must not have been called (SIGTERM: SIPp writes its
    /// trace and exits).
    fn stop(self) -> SippRun {
        self.process.stop()
    }
}

/// SIPp as extension 100, with its RTP sink and the tone it plays.
struct Caller {
    sink: RtpSink,
    pcap: PathBuf,
    sip: SocketAddr,
    scratch: PathBuf,
}

impl Caller {
    fn start(pbx: &Pbx) -> Caller {
        Caller {
            sink: RtpSink::for_sipp(),
            pcap: tone_pcap(pbx, "caller.pcap", CALLER_HZ),
            sip: pbx.sip,
            scratch: pbx.scratch(),
        }
    }

    fn sipp(&self, scenario: &str, to: &str) -> Sipp {
        Sipp::new(scenario, self.sip, &self.scratch).caller("100", &password("100"), to).timeout(CALLER_TIMEOUT)
    }

    /// A call to `to` that should be answered: `call_uac.xml` (the 407 answered, 200 → ACK,
    /// `CALL_MS` of tone, BYE).
    fn call(&self, to: &str) -> SippRun {
        self.sipp("call_uac.xml", to)
            .media(G711::Pcmu, &self.sink, Some(&self.pcap))
            .args(&["-d", CALL_MS, "-m", "1"])
            .run()
    }

    /// A call to `to` that should fail: `call_uac_fail.xml` (any of its final codes ends it).
    fn failing_call(&self, to: &str) -> SippRun {
        self.sipp("call_uac_fail.xml", to).media(G711::Pcmu, &self.sink, None).args(&["-m", "1"]).run()
    }
}

/// The caller's run ended answered: a 200 to the INVITE and one to the BYE, and none of the
/// failures a forwarding should have hidden.
fn assert_answered(caller: &SippRun) {
    assert!(caller.success, "caller: {}", caller.report());
    let codes = caller.received_codes();
    assert!(codes.ends_with(&[200, 200]), "answered, then BYE answered: {codes:?}\n{}", caller.messages);
    for failure in [480, 486, 487, 408, 603] {
        assert!(!codes.contains(&failure), "the caller saw {failure}: {codes:?}\n{}", caller.messages);
    }
}

/// What the caller heard came from pbx's ports and is the target's tone: the target answered
/// and the caller is connected to it.
fn assert_hears_the_target(pbx: &Pbx, sink: RtpSink) {
    let ports = pbx.rtp_ports.clone().expect("node has its own RTP ports");
    let heard: Vec<_> = sink
        .finish()
        .into_iter()
        .filter(|d| d.from.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) && ports.contains(&d.from.port()))
        .collect();
    assert!(heard.len() >= 25, "{} RTP packets from pbx reached the caller, expected at least 25", heard.len());
    assert_eq!(dominant_frequency(&g711_audio(&heard), G711_RATE_HZ), TARGET_HZ, "the caller heard someone else");
}

/// Waits until the API lists no call and no RTP port is in use.
fn assert_nothing_left(pbx: &Pbx) {
    let no_calls = || {
        let (code, body) = pbx.api("GET", "/api/v1/calls", None);
        let listed = serde_json::from_str::<Value>(&body).ok();
        code == 200 && listed.and_then(|v| v["calls"].as_array().map(Vec::is_empty)) == Some(true)
    };
    assert!(wait_until(CLEANUP_TIMEOUT, no_calls), "calls left: {:?}", pbx.api("GET", "/api/v1/calls", None));
    assert!(
        wait_until(CLEANUP_TIMEOUT, || pbx.metric("pbx_rtp_ports_in_use") == Some(0.0)),
        "pbx_rtp_ports_in_use is not 0:\n{}",
        pbx.metrics()
    );
}

/// The CDRs the node lists (newest first).
fn cdrs(pbx: &Pbx) -> Vec<Value> {
    let (code, body) = pbx.api("GET", "/api/v1/cdrs?limit=500", None);
    assert_eq!(code, 200, "{body}");
    parse(&body)["cdrs"].as_array().cloned().unwrap_or_default()
}

/// The one call made is recorded once: from 100 to the number dialled (101, not the target
/// that answered), answered.
fn assert_forwarded_cdr(pbx: &Pbx) {
    assert!(wait_until(CLEANUP_TIMEOUT, || !cdrs(pbx).is_empty()), "no CDR for the forwarded call");
    let records = cdrs(pbx);
    assert_eq!(records.len(), 1, "one call, one record: {records:?}");
    let cdr = &records[0];
    assert_eq!(cdr["disposition"], "answered", "{cdr}");
    assert_eq!((cdr["caller"].as_str(), cdr["callee"].as_str()), (Some("100"), Some("101")), "{cdr}");
}

/// When SIPp sent or received each `method` request of a run, in seconds (from its
/// `-trace_msg` stamps, `YYYY-MM-DD HH:MM:SS.micro`; every SIPp here reads the same clock).
fn request_times(run: &SippRun, method: &str, sent: bool) -> Vec<f64> {
    run.messages
        .split("----------------------------------------------- ")
        .filter_map(|chunk| {
            let (stamp, rest) = chunk.split_once('\n')?;
            let direction = rest.get(4..)?;
            let was_sent = direction.starts_with("message sent");
            if !was_sent && !direction.starts_with("message received") {
                return None;
            }
            let (_, message) = rest.split_once("\n\n")?;
            (was_sent == sent && request_method(message) == Some(method)).then_some(stamp)
        })
        .map(|stamp| seconds(stamp.trim()).unwrap_or_else(|| panic!("unreadable SIPp time stamp {stamp:?}")))
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS.micro` as seconds since 1970 (proleptic Gregorian, no zone).
fn seconds(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.split_once(' ')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.split(':');
    let (h, min, s) =
        (hms.next()?.parse::<f64>().ok()?, hms.next()?.parse::<f64>().ok()?, hms.next()?.parse::<f64>().ok()?);
    // Days from civil (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

/// The first `method` request a run received, in seconds.
fn first_received(run: &SippRun, method: &str) -> f64 {
    *request_times(run, method, false).first().unwrap_or_else(|| panic!("no {method} received:\n{}", run.messages))
}

/// Always-forwarding: the call goes straight to the target, which answers and is heard; the
/// dialled extension's registered phone never sees an INVITE. One CDR: answered, callee 101.
#[test]
fn always_goes_straight_to_the_target_without_ringing_the_dialled_phone() {
    let pbx = node();
    put(&pbx, "101", &json!({ "always": "102" }), &forwarding(Some("102"), None, None, DEFAULT_NO_ANSWER_S));
    let dialled = Target::ringing(&pbx, "101");
    let target = Target::answering(&pbx, "102");
    let caller = Caller::start(&pbx);
    let run = caller.call("101");
    let (target, _target_sink) = target.finish_after(&run);
    let dialled = dialled.stop();
    assert_answered(&run);
    assert!(target.success, "102: {}", target.report());
    assert_eq!(target.received_requests("INVITE").len(), 1, "102 rang once: {}", target.messages);
    assert!(dialled.received_requests("INVITE").is_empty(), "101's phone was rung: {}", dialled.messages);
    assert_hears_the_target(&pbx, caller.sink);
    assert_nothing_left(&pbx);
    assert_forwarded_cdr(&pbx);
}

/// Always-forwarding does not need the dialled extension to be registered.
#[test]
fn always_forwards_when_the_dialled_extension_is_not_registered() {
    let pbx = node();
    put(&pbx, "101", &json!({ "always": "102" }), &forwarding(Some("102"), None, None, DEFAULT_NO_ANSWER_S));
    assert!(pbx.contacts_of("101").is_empty(), "{:?}", pbx.registrations());
    let target = Target::answering(&pbx, "102");
    let caller = Caller::start(&pbx);
    let run = caller.call("101");
    let (target, _target_sink) = target.finish_after(&run);
    assert_answered(&run);
    assert!(target.success, "102: {}", target.report());
    assert_eq!(target.received_requests("INVITE").len(), 1, "{}", target.messages);
    assert_hears_the_target(&pbx, caller.sink);
    assert_nothing_left(&pbx);
    assert_forwarded_cdr(&pbx);
}

/// Busy-forwarding: 101 answers 486 (and gets its ACK), the call goes on to 102, which
/// answers; the caller never sees the 486 and hears 102.
#[test]
fn busy_forwards_a_486_to_the_target() {
    let pbx = node();
    put(&pbx, "101", &json!({ "busy": "102" }), &forwarding(None, Some("102"), None, DEFAULT_NO_ANSWER_S));
    let dialled = Target::refusing(&pbx, "101", "486");
    let target = Target::answering(&pbx, "102");
    let caller = Caller::start(&pbx);
    let run = caller.call("101");
    let (target, _target_sink) = target.finish_after(&run);
    let (dialled, _dialled_sink) = dialled.finish_after(&run);
    assert_answered(&run);
    assert!(dialled.success, "101: {}", dialled.report());
    assert_eq!(dialled.received_requests("INVITE").len(), 1, "101 was tried first: {}", dialled.messages);
    assert_eq!(dialled.received_requests("ACK").len(), 1, "101's 486 was ACKed: {}", dialled.messages);
    assert!(target.success, "102: {}", target.report());
    assert_eq!(target.received_requests("INVITE").len(), 1, "{}", target.messages);
    assert_hears_the_target(&pbx, caller.sink);
    assert_nothing_left(&pbx);
    assert_forwarded_cdr(&pbx);
}

/// Busy-forwarding waits for the 486: 101 rings for a second, then refuses
/// (`forward_uas_busy.xml`); 102 is rung only after that, and answers.
#[test]
fn busy_forwarding_rings_the_target_only_after_the_486() {
    let pbx = node();
    put(&pbx, "101", &json!({ "busy": "102" }), &forwarding(None, Some("102"), None, DEFAULT_NO_ANSWER_S));
    let dialled = Target::start(&pbx, "101", "forward_uas_busy.xml", None, &[]);
    let target = Target::answering(&pbx, "102");
    let caller = Caller::start(&pbx);
    let run = caller.call("101");
    let (target, _target_sink) = target.finish_after(&run);
    let (dialled, _dialled_sink) = dialled.finish_after(&run);
    assert_answered(&run);
    assert!(dialled.success, "101 rang, refused and got its ACK: {}", dialled.report());
    assert!(target.success, "102: {}", target.report());
    assert_eq!(target.received_requests("INVITE").len(), 1, "{}", target.messages);
    // 101 answers 486 a second after its INVITE.
    let waited = first_received(&target, "INVITE") - first_received(&dialled, "INVITE");
    assert!(waited >= 0.9, "102 rang {waited:.2} s after 101, before 101's 486");
    assert!(waited < 4.0, "102 rang {waited:.2} s after 101, long after 101's 486");
    assert_hears_the_target(&pbx, caller.sink);
    assert_nothing_left(&pbx);
    assert_forwarded_cdr(&pbx);
}

/// The control: once the busy-forwarding is cleared (a PUT of nulls), 101's 486 reaches the
/// caller and 102 is not rung.
#[test]
fn without_busy_forwarding_the_caller_gets_the_486() {
    let pbx = node();
    put(&pbx, "101", &json!({ "busy": "102" }), &forwarding(None, Some("102"), None, DEFAULT_NO_ANSWER_S));
    put(&pbx, "101", &json!({ "always": null, "busy": null, "no_answer": null }), &off());
    let dialled = Target::refusing(&pbx, "101", "486");
    let target = Target::answering(&pbx, "102");
    let caller = Caller::start(&pbx);
    let run = caller.failing_call("101");
    let (dialled, _dialled_sink) = dialled.finish_after(&run);
    let target = target.stop();
    assert!(run.success, "caller: {}", run.report());
    assert_eq!(run.received_codes().last(), Some(&486), "{}", run.messages);
    assert!(dialled.success, "101: {}", dialled.report());
    assert!(target.received_requests("INVITE").is_empty(), "102 was rung: {}", target.messages);
    assert_nothing_left(&pbx);
}

/// No-answer forwarding after 2 s: 101 rings and does not answer; about 2 s after its INVITE pbx
/// CANCELs it and rings 102 (not before), which answers; the caller gets 200 and hears 102.
#[test]
fn no_answer_forwards_after_the_configured_seconds() {
    let pbx = node();
    let body = json!({ "no_answer": "102", "no_answer_after_s": NO_ANSWER_S });
    put(&pbx, "101", &body, &forwarding(None, None, Some("102"), NO_ANSWER_S));
    let dialled = Target::ringing(&pbx, "101");
    let target = Target::answering(&pbx, "102");
    let caller = Caller::start(&pbx);
    let run = caller.call("101");
    let (target, _target_sink) = target.finish_after(&run);
    let (dialled, _dialled_sink) = dialled.finish_after(&run);
    assert_answered(&run);
    assert!(dialled.success, "101 rang and was cancelled: {}", dialled.report());
    assert_eq!(dialled.received_requests("CANCEL").len(), 1, "{}", dialled.messages);
    assert!(target.success, "102: {}", target.report());
    assert_eq!(target.received_requests("INVITE").len(), 1, "{}", target.messages);

    let rang = first_received(&dialled, "INVITE");
    let cancelled = first_received(&dialled, "CANCEL") - rang;
    let limit = NO_ANSWER_S as f64;
    assert!(
        (limit - 0.2..limit + 3.0).contains(&cancelled),
        "101 was cancelled {cancelled:.2} s after it rang, no_answer_after_s = {NO_ANSWER_S}"
    );
    let forwarded = first_received(&target, "INVITE") - rang;
    assert!(
        (limit - 0.2..limit + 3.0).contains(&forwarded),
        "102 rang {forwarded:.2} s after 101, no_answer_after_s = {NO_ANSWER_S}"
    );
    assert_hears_the_target(&pbx, caller.sink);
    assert_nothing_left(&pbx);
    assert_forwarded_cdr(&pbx);
}

/// No-answer forwarding when 101 is not registered at all: 102 rings at once, not after the
/// (default, 20 s) no-answer time.
#[test]
fn no_answer_forwards_at_once_when_the_dialled_extension_is_not_registered() {
    let pbx = node();
    put(&pbx, "101", &json!({ "no_answer": "102" }), &forwarding(None, None, Some("102"), DEFAULT_NO_ANSWER_S));
    let target = Target::answering(&pbx, "102");
    let caller = Caller::start(&pbx);
    let run = caller.call("101");
    let (target, _target_sink) = target.finish_after(&run);
    assert_answered(&run);
    assert!(target.success, "102: {}", target.report());
    let invited = request_times(&run, "INVITE", true);
    let dialled_at = *invited.last().unwrap_or_else(|| panic!("the caller sent no INVITE:\n{}", run.messages));
    let waited = first_received(&target, "INVITE") - dialled_at;
    assert!(waited < 3.0, "102 rang {waited:.2} s after the (authenticated) INVITE to 101");
    assert_hears_the_target(&pbx, caller.sink);
    assert_nothing_left(&pbx);
    assert_forwarded_cdr(&pbx);
}

/// 101 always → 102 and 102 always → 101: a call to 101 rings 102 (the last extension before
/// the loop closes), once; 101's phone is not rung; 102 answers.
#[test]
fn a_forwarding_loop_rings_the_last_extension_before_it_closes() {
    let pbx = node();
    put(&pbx, "101", &json!({ "always": "102" }), &forwarding(Some("102"), None, None, DEFAULT_NO_ANSWER_S));
    put(&pbx, "102", &json!({ "always": "101" }), &forwarding(Some("101"), None, None, DEFAULT_NO_ANSWER_S));
    let dialled = Target::ringing(&pbx, "101");
    let target = Target::answering(&pbx, "102");
    let caller = Caller::start(&pbx);
    let run = caller.call("101");
    let (target, _target_sink) = target.finish_after(&run);
    let dialled = dialled.stop();
    assert_answered(&run);
    assert!(target.success, "102: {}", target.report());
    assert_eq!(target.received_requests("INVITE").len(), 1, "102 rang once: {}", target.messages);
    assert!(dialled.received_requests("INVITE").is_empty(), "101's phone was rung: {}", dialled.messages);
    assert_hears_the_target(&pbx, caller.sink);
    assert_nothing_left(&pbx);
}

/// A loop of three, 101 → 102 → 103 → 101: a call to 101 rings 103 only.
#[test]
fn a_three_extension_loop_rings_the_last_extension_before_it_closes() {
    let pbx = node();
    for (from, to) in [("101", "102"), ("102", "103"), ("103", "101")] {
        put(&pbx, from, &json!({ "always": to }), &forwarding(Some(to), None, None, DEFAULT_NO_ANSWER_S));
    }
    let first = Target::ringing(&pbx, "101");
    let second = Target::ringing(&pbx, "102");
    let target = Target::answering(&pbx, "103");
    let caller = Caller::start(&pbx);
    let run = caller.call("101");
    let (target, _target_sink) = target.finish_after(&run);
    let (first, second) = (first.stop(), second.stop());
    assert_answered(&run);
    assert!(target.success, "103: {}", target.report());
    assert_eq!(target.received_requests("INVITE").len(), 1, "103 rang once: {}", target.messages);
    assert!(first.received_requests("INVITE").is_empty(), "101's phone was rung: {}", first.messages);
    assert!(second.received_requests("INVITE").is_empty(), "102's phone was rung: {}", second.messages);
    assert_hears_the_target(&pbx, caller.sink);
    assert_nothing_left(&pbx);
}

/// The 101 ↔ 102 loop with nobody registered: the caller gets 480 promptly rather than ringing
/// forever, and nothing is left running.
#[test]
fn a_forwarding_loop_to_unregistered_phones_fails_promptly_with_480() {
    let pbx = node();
    put(&pbx, "101", &json!({ "always": "102" }), &forwarding(Some("102"), None, None, DEFAULT_NO_ANSWER_S));
    put(&pbx, "102", &json!({ "always": "101" }), &forwarding(Some("101"), None, None, DEFAULT_NO_ANSWER_S));
    let caller = Caller::start(&pbx);
    let started = Instant::now();
    let run = caller.failing_call("101");
    let took = started.elapsed();
    assert!(run.success, "caller: {}", run.report());
    assert_eq!(run.received_codes().last(), Some(&480), "{}", run.messages);
    assert!(took < Duration::from_secs(10), "the final answer took {took:?}");
    assert_nothing_left(&pbx);
}

// ---- Feature codes ------------------------------------------------------------------------

/// A scripted phone on raw UDP, for feature codes: each [`Phone::dial`] is a new call (INVITE
/// with an SDP offer; the 407 ACKed and answered with MD5 digest; the final response ACKed).
struct Phone {
    sip: UdpSocket,
    /// Where the offer says the phone receives RTP (nothing is expected there).
    media: UdpSocket,
    server: SocketAddr,
    user: String,
    password: String,
    dials: u32,
}

/// What a dialled feature code got.
struct Dialled {
    /// The status of the answer to the first, unauthenticated INVITE.
    challenge: u16,
    /// The final answer to the authenticated INVITE.
    answer: String,
}

impl Dialled {
    fn code(&self) -> u16 {
        status_code(&self.answer).unwrap_or_else(|| panic!("not a response: {}", self.answer))
    }

    /// The reason phrase of the final answer.
    fn reason(&self) -> String {
        let status_line = self.answer.lines().next().unwrap_or_default();
        status_line.splitn(3, ' ').nth(2).unwrap_or_default().trim().to_string()
    }
}

impl Phone {
    fn new(pbx: &Pbx, user: &str, password: &str) -> Phone {
        Phone {
            sip: UdpSocket::bind("127.0.0.1:0").expect("bind phone SIP"),
            media: UdpSocket::bind("127.0.0.1:0").expect("bind phone media"),
            server: pbx.sip,
            user: user.into(),
            password: password.into(),
            dials: 0,
        }
    }

    fn send(&self, message: &str) {
        self.sip.send_to(message.as_bytes(), self.server).expect("send SIP");
    }

    /// The next final response to `cseq` INVITE of `call_id` (1xx, retransmissions of earlier
    /// answers and anything else skipped); `None` after [`SIP_TIMEOUT`].
    fn final_response(&self, call_id: &str, cseq: u32) -> Option<String> {
        let deadline = Instant::now() + SIP_TIMEOUT;
        let mut buf = vec![0u8; 65_535];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.sip.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
            let (n, _) = self.sip.recv_from(&mut buf).ok()?;
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let ours = header_values(&m, "Call-ID").first().is_some_and(|c| c == call_id)
                && header_values(&m, "CSeq").first().is_some_and(|c| c == &format!("{cseq} INVITE"));
            if ours && status_code(&m).is_some_and(|c| c >= 200) {
                return Some(m);
            }
        }
        None
    }

    /// A request of call `call_id`; `extra` header lines end with CRLF.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        method: &str,
        uri: &str,
        (call_id, tag): (&str, &str),
        (branch, cseq): (&str, u32),
        to: &str,
        extra: &str,
        body: &str,
    ) -> String {
        let local = self.sip.local_addr().expect("phone address");
        let content_type = if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" };
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{user}@{host}>;tag={tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
Contact: <sip:{user}@{local}>\r\nUser-Agent: pbx-e2e-forwarding\r\n{extra}{content_type}Content-Length: {}\r\n\r\n{body}",
            body.len(),
            user = self.user,
            host = self.server.ip(),
        )
    }

    /// Dials `dialled` (the Request-URI user, `#` already written `%23`) as a new call.
    fn dial(&mut self, dialled: &str) -> Dialled {
        self.dials += 1;
        let n = self.dials;
        let local = self.sip.local_addr().expect("phone address");
        let media = self.media.local_addr().expect("phone media address");
        let call_id = format!("fwd-{}-{}-{n}@127.0.0.1", local.port(), std::process::id());
        let tag = format!("fc-{n}");
        let uri = format!("sip:{dialled}@{}", self.server);
        let to = format!("<sip:{dialled}@{}>", self.server.ip());
        let sdp = format!(
            "v=0\r\no=- {n} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
            media.port()
        );
        let dialog = (call_id.as_str(), tag.as_str());
        let mut challenge = None;
        let mut auth = String::new();
        for cseq in 1..=2 {
            let branch = format!("z9hG4bK-fwd-{}-{n}-{cseq}", local.port());
            self.send(&self.request("INVITE", &uri, dialog, (&branch, cseq), &to, &auth, &sdp));
            let answer = self
                .final_response(&call_id, cseq)
                .unwrap_or_else(|| panic!("no final answer to INVITE {uri} (CSeq {cseq}) within {SIP_TIMEOUT:?}"));
            let code = status_code(&answer).expect("a response");
            let their_to = header_values(&answer, "To").into_iter().next().unwrap_or_else(|| to.clone());
            if code >= 300 {
                // RFC 3261 §17.1.1.3: the ACK of a failure reuses the INVITE's branch.
                self.send(&self.request("ACK", &uri, dialog, (&branch, cseq), &their_to, "", ""));
            } else {
                // Answered: a feature code should never be, but leave no call behind.
                let (ack, bye) = (format!("{branch}-ack"), format!("{branch}-bye"));
                self.send(&self.request("ACK", &uri, dialog, (&ack, cseq), &their_to, "", ""));
                self.send(&self.request("BYE", &uri, dialog, (&bye, cseq + 1), &their_to, "", ""));
            }
            let first = *challenge.get_or_insert(code);
            if cseq == 2 || code != 407 {
                return Dialled { challenge: first, answer };
            }
            let chosen = header_values(&answer, "Proxy-Authenticate")
                .into_iter()
                .find(|c| param(c, "algorithm").is_none_or(|a| a.eq_ignore_ascii_case("MD5")))
                .unwrap_or_else(|| panic!("no MD5 challenge in {answer}"));
            auth = format!(
                "Proxy-Authorization: {}\r\n",
                authorization(&chosen, &self.user, &self.password, "INVITE", &uri, 1)
            );
        }
        unreachable!("the second pass returns")
    }

    /// Dials `code`, asserting it was challenged and answered `expected`; the answer.
    fn dial_expecting(&mut self, code: &str, expected: u16) -> Dialled {
        let dialled = self.dial(code);
        assert_eq!(dialled.challenge, 407, "{code}: the INVITE is challenged like any call");
        assert_eq!(dialled.code(), expected, "{code}: {}", dialled.answer);
        assert!(!dialled.reason().is_empty(), "{code}: no reason phrase: {}", dialled.answer);
        dialled
    }

    /// Dials a code that sets a target: 603, and the reason phrase names the target.
    fn set(&mut self, code: &str, target: &str) {
        let dialled = self.dial_expecting(code, 603);
        assert!(dialled.reason().contains(target), "{code}: the reason should say what was set: {}", dialled.reason());
    }

    /// Dials a code that clears: 603.
    fn clear(&mut self, code: &str) {
        self.dial_expecting(code, 603);
    }
}

/// The targets only (the seconds left out): what a clear code promises.
fn targets(v: &Value) -> Value {
    json!({ "always": v["always"], "busy": v["busy"], "no_answer": v["no_answer"] })
}

/// `*21*102#` sets always-forwarding of the dialling phone's own extension (603 naming what was
/// set), `#21#` clears it; another phone's code sets its own extension only.
#[test]
fn feature_codes_set_and_clear_always_for_the_callers_own_extension() {
    let pbx = node();
    let mut phone = Phone::new(&pbx, "100", &password("100"));
    phone.set("*21*102%23", "102");
    assert_eq!(get(&pbx, "100"), forwarding(Some("102"), None, None, DEFAULT_NO_ANSWER_S));
    for number in ["101", "102", "103"] {
        assert_eq!(get(&pbx, number), off(), "100's code changed {number}");
    }

    let mut other = Phone::new(&pbx, "101", &password("101"));
    other.set("*21*103%23", "103");
    assert_eq!(get(&pbx, "101"), forwarding(Some("103"), None, None, DEFAULT_NO_ANSWER_S));
    assert_eq!(get(&pbx, "100"), forwarding(Some("102"), None, None, DEFAULT_NO_ANSWER_S), "101's code changed 100");

    phone.clear("%2321%23");
    assert_eq!(get(&pbx, "100"), off());
    assert_eq!(get(&pbx, "101"), forwarding(Some("103"), None, None, DEFAULT_NO_ANSWER_S), "100's clear changed 101");
    assert_nothing_left(&pbx);
}

/// `*67*N#` / `#67#` (busy) and `*61*N#` (keeps the seconds), `*61*N*S#`, `#61#` (no
/// answer), each leaving the other kinds as they were; `#002#` clears all three.
#[test]
fn feature_codes_set_and_clear_busy_and_no_answer() {
    let pbx = node();
    let mut phone = Phone::new(&pbx, "100", &password("100"));
    phone.set("*67*103%23", "103");
    assert_eq!(get(&pbx, "100"), forwarding(None, Some("103"), None, DEFAULT_NO_ANSWER_S));
    phone.set("*61*103*45%23", "103");
    assert_eq!(get(&pbx, "100"), forwarding(None, Some("103"), Some("103"), 45));
    phone.set("*61*102%23", "102");
    assert_eq!(get(&pbx, "100"), forwarding(None, Some("103"), Some("102"), 45), "*61*N# keeps the seconds");
    phone.clear("%2367%23");
    assert_eq!(get(&pbx, "100"), forwarding(None, None, Some("102"), 45));
    phone.clear("%2361%23");
    assert_eq!(targets(&get(&pbx, "100")), targets(&off()));

    phone.set("*21*102%23", "102");
    phone.set("*67*103%23", "103");
    phone.set("*61*102*10%23", "102");
    assert_eq!(get(&pbx, "100"), forwarding(Some("102"), Some("103"), Some("102"), 10));
    phone.clear("%23002%23");
    assert_eq!(targets(&get(&pbx, "100")), targets(&off()), "#002# clears all three");
    assert_nothing_left(&pbx);
}

/// A code naming a target that is no extension (or the phone's own) is 403 with a reason, an
/// unknown code is 404, seconds out of range are refused; none changes anything.
#[test]
fn feature_codes_with_a_bad_target_or_unknown_are_refused_and_change_nothing() {
    let pbx = node();
    let before = forwarding(Some("102"), Some("103"), Some("102"), 30);
    put(&pbx, "100", &before, &before);
    let mut phone = Phone::new(&pbx, "100", &password("100"));
    for code in ["*21*999%23", "*67*999%23", "*61*999%23", "*61*999*10%23", "*21*100%23"] {
        phone.dial_expecting(code, 403);
        assert_eq!(get(&pbx, "100"), before, "{code} was refused but changed the forwarding");
    }
    phone.dial_expecting("*99%23", 404);
    assert_eq!(get(&pbx, "100"), before, "*99# changed the forwarding");
    for code in ["*61*103*0%23", "*61*103*301%23"] {
        let dialled = phone.dial(code);
        assert_eq!(dialled.challenge, 407, "{code}");
        assert!((400..700).contains(&dialled.code()) && dialled.code() != 603, "{code}: {}", dialled.answer);
        assert_eq!(get(&pbx, "100"), before, "{code} changed the forwarding");
    }
    assert_nothing_left(&pbx);
}

/// A feature code from a phone that cannot answer the challenge changes nothing.
#[test]
fn feature_codes_need_the_extensions_password() {
    let pbx = node();
    let mut phone = Phone::new(&pbx, "100", "not-the-password");
    let dialled = phone.dial("*21*102%23");
    assert_eq!(dialled.challenge, 407, "{}", dialled.answer);
    assert!([401, 403, 407].contains(&dialled.code()), "a wrong password: {}", dialled.answer);
    assert_eq!(get(&pbx, "100"), off());
    assert_nothing_left(&pbx);
}

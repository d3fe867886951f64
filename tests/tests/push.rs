//! Push dispatch end to end (issue 17, part 4): a SIPp softphone registers with RFC 8599
//! parameters and goes silent; a call to it makes pbx push through `pbx push-gateway` (the
//! stand-in for FCM and APNs, which checks each request as the real services do); the phone
//! registers again as if woken and gets the INVITE. A phone that never wakes leaves the caller
//! a 480 when the push timer passes; a token the service calls unregistered is dropped; pn
//! parameters pbx cannot use get 400 naming them (555 for a provider it does not push through).

use pbx_tests::audio::G711;
use pbx_tests::push_gateway::{BUNDLE, Gateway, PROJECT, TEAM_ID};
use pbx_tests::rtp::RtpSink;
use pbx_tests::*;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);
/// An APNs device token (64 hex digits) and an FCM registration token.
const APNS_TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const FCM_TOKEN: &str = "fcm-token-101:APA91bHun4MxP5egoKMwt2KZFBaFUH";

/// A pbx pushing through `gateway`, a call waiting `wait_s` for a pushed phone.
fn pbx_with_push(gateway: &Gateway, wait_s: u32) -> Pbx {
    Pbx::start(PbxOptions::default().own_rtp_ports(100).toml(&gateway.push_toml(wait_s)))
}

/// The softphone 101 with push parameters: registers, sleeps `asleep_ms`, then (if `wake`)
/// registers again and answers one call.
fn pushed_phone(
    pbx: &Pbx,
    provider: &str,
    param: &str,
    token: &str,
    asleep_ms: u64,
    wake: bool,
    sink: &RtpSink,
) -> Sipp {
    let pcap = tone_pcap(pbx, "callee.pcap", 600.0);
    Sipp::new("register_push.xml", pbx.sip, &pbx.scratch())
        .args(&["-s", "101", "-au", "101", "-ap", "secret-101", "-m", "1", "-set", "expected_calls", "1"])
        .args(&["-oocsf", &asset("sipp/call_uas.xml").to_string_lossy()])
        .key("pn_provider", provider)
        .key("pn_param", param)
        .key("pn_prid", token)
        .key("asleep_ms", &asleep_ms.to_string())
        .key("wake", if wake { "1" } else { "0" })
        .media(G711::Pcmu, sink, Some(&pcap))
}

/// Half a second of a tone as a PCMU pcap in the node's scratch dir (what the call scenarios
/// play); its path.
fn tone_pcap(pbx: &Pbx, name: &str, hz: f64) -> std::path::PathBuf {
    let path = pbx.scratch().join(name);
    let samples = pbx_tests::audio::tone(hz, pbx_tests::audio::G711_RATE_HZ, 0.5, 8000.0);
    pbx_tests::rtp::g711_stream_pcap(&path, G711::Pcmu, &samples).expect("write pcap");
    path
}

/// 101 registers with FCM parameters and never wakes; 100 calls it and gets 480 (asserted).
/// The sleeping phone, still running, and how long the caller waited for its answer.
fn call_a_phone_that_never_wakes(pbx: &Pbx) -> (SippProcess, Duration) {
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee = pushed_phone(pbx, "fcm", PROJECT, FCM_TOKEN, 8_000, false, &callee_sink).spawn();
    wait_for_contact(pbx);
    let started = Instant::now();
    let caller = Sipp::new("call_uac_fail.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &caller_sink, None)
        .args(&["-m", "1"])
        .run();
    let waited = started.elapsed();
    assert!(caller.success, "caller: {}", caller.report());
    assert_eq!(caller.received_codes().last(), Some(&480), "{:?}", caller.received_codes());
    (callee, waited)
}

fn wait_for_contact(pbx: &Pbx) {
    assert!(wait_until(WAIT, || !pbx.contacts_of("101").is_empty()), "101 never registered: {:?}", pbx.registrations());
}

/// For FCM and for APNs: the phone asleep is pushed (once, with what the service checks: the
/// token; for APNs the VoIP topic, push type and priority), registers 3 s later, and only then
/// receives the INVITE; the caller is answered. The push is a record of category push-records.
#[test]
fn a_sleeping_phone_is_pushed_and_called_when_it_registers() {
    let apns_param = format!("{TEAM_ID}.{BUNDLE}.voip");
    for (provider, param, token) in [("fcm", PROJECT, FCM_TOKEN), ("apns", apns_param.as_str(), APNS_TOKEN)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let gateway = Gateway::start(dir.path());
        let pbx = pbx_with_push(&gateway, 10);
        let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
        let callee = pushed_phone(&pbx, provider, param, token, 3_000, true, &callee_sink).spawn();
        wait_for_contact(&pbx);
        let started = Instant::now();
        let pcap = tone_pcap(&pbx, "caller.pcap", 1000.0);
        let caller = Sipp::new("call_uac.xml", pbx.sip, &pbx.scratch())
            .caller("100", "secret-100", "101")
            .media(G711::Pcmu, &caller_sink, Some(&pcap))
            .args(&["-d", "500", "-m", "1"])
            .run();
        let callee = callee.finish_after(&caller);
        assert!(caller.success, "{provider}: caller: {}", caller.report());
        assert!(callee.success, "{provider}: callee: {}", callee.report());
        assert!(started.elapsed() >= Duration::from_secs(2), "answered before the phone woke");

        let pushes = gateway.pushes_for(token);
        assert_eq!(pushes.len(), 1, "{provider}: {pushes:?}\n{}", gateway.output());
        // The round trip to the stand-in, for docs/PERFORMANCE.md (printed, not asserted).
        let round_trip = pbx.log().lines().find(|l| l.contains("push sent")).map(str::to_string);
        eprintln!("{provider}: {}", round_trip.unwrap_or_default());
        let push = &pushes[0];
        assert_eq!(push["status"], 200, "{provider}: {push}");
        match provider {
            "fcm" => {
                let body: serde_json::Value = serde_json::from_str(push["body"].as_str().unwrap()).unwrap();
                assert_eq!(body["message"]["token"], FCM_TOKEN, "{body}");
                assert_eq!(body["message"]["data"]["type"], "call", "{body}");
                assert!(!push["body"].as_str().unwrap().contains("100"), "the caller's number stays home: {body}");
            }
            _ => {
                assert_eq!(push["headers"]["apns-topic"], format!("{BUNDLE}.voip"), "{push}");
                assert_eq!(push["headers"]["apns-push-type"], "voip", "{push}");
                assert_eq!(push["headers"]["apns-priority"], "10", "{push}");
            }
        }
        // The INVITE came after the phone's second registration, not to the sleeping phone.
        let trace = callee.messages.clone();
        let woke =
            trace.rfind("CSeq: 4 REGISTER").unwrap_or_else(|| panic!("{provider}: never re-registered\n{trace}"));
        let invite = trace.find("INVITE sip:").unwrap_or_else(|| panic!("{provider}: no INVITE\n{trace}"));
        assert!(invite > woke, "{provider}: the INVITE reached the phone before it woke\n{trace}");

        let (status, export) = pbx.api("GET", "/api/v1/privacy/subjects/101/export", None);
        assert_eq!(status, 200, "{export}");
        let export: serde_json::Value = serde_json::from_str(&export).unwrap();
        let records = export["push_records"].as_array().unwrap_or_else(|| panic!("no push_records: {export}"));
        assert_eq!(records.len(), 1, "{export}");
        assert_eq!(records[0]["provider"], provider);
        assert_eq!(records[0]["device"], token);
        assert_eq!(records[0]["caller"], "100");
    }
}

/// A phone that never wakes: the caller waits the push timer (3 s), no longer, and gets 480;
/// nothing else ever reaches the phone.
#[test]
fn a_phone_that_never_wakes_leaves_the_caller_480_at_the_timer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(dir.path());
    let pbx = pbx_with_push(&gateway, 3);
    let (callee, waited) = call_a_phone_that_never_wakes(&pbx);
    assert!(waited >= Duration::from_millis(2_900), "480 before the timer: {waited:?}");
    assert!(waited < Duration::from_secs(8), "the caller waited past the timer: {waited:?}");
    assert_eq!(gateway.pushes_for(FCM_TOKEN).len(), 1);
    let callee = callee.wait();
    assert!(callee.received_requests("INVITE").is_empty(), "{}", callee.messages);
}

/// The service answers the token is unregistered (FCM UNREGISTERED): the caller gets 480 at
/// once, not at the timer, and the phone's binding is dropped.
#[test]
fn a_token_the_service_calls_unregistered_is_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(dir.path());
    let pbx = pbx_with_push(&gateway, 20);
    gateway.unregister(FCM_TOKEN);
    let (callee, waited) = call_a_phone_that_never_wakes(&pbx);
    assert!(waited < Duration::from_secs(10), "waited for the timer: {waited:?}");
    let pushes = gateway.pushes_for(FCM_TOKEN);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0]["status"], 404, "{:?}", pushes[0]);
    assert!(wait_until(WAIT, || pbx.contacts_of("101").is_empty()), "{:?}", pbx.registrations());
    drop(callee);
}

/// A second APNs token (the `:remote` one of a Linphone-style app), 64 hex digits.
const APNS_REMOTE_TOKEN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// The softphone 101 with push parameters registering for `expires_s` seconds (with the media
/// feature tag `pnsreg_tag`), asleep `asleep_ms`, then registering again and ending `after_ms`
/// later.
fn refreshing_phone(pbx: &Pbx, provider: &str, param: &str, token: &str, pnsreg_tag: &str, asleep_ms: u64) -> Sipp {
    Sipp::new("register_refresh_push.xml", pbx.sip, &pbx.scratch())
        .args(&["-s", "101", "-au", "101", "-ap", "secret-101", "-m", "1"])
        .key("pn_provider", provider)
        .key("pn_param", param)
        .key("pn_prid", token)
        .key("pnsreg_tag", pnsreg_tag)
        .key("expires_s", "8")
        .key("asleep_ms", &asleep_ms.to_string())
        .key("after_ms", "2000")
}

/// RFC 8599 §5.6: an app asleep is pushed before its registration runs out, so it registers
/// again and stays reachable. A SIPp softphone registers for 8 s (a refresh push is due
/// half-way, 4 s, as the lifetime is under twice `push.refresh_before_s`) and sleeps:
/// - FCM, the app says it refreshes on its own (`+sip.pnsreg`): the 200 tells it when
///   (`+sip.pnsreg="130"`), and as it did not, the push comes anyway, once, a data message
///   `{"type":"register"}`; after it registers again the next push is due 4 s after that, not
///   before; when it stops registering its binding lapses at expiry and it is pushed no more.
/// - APNs with Linphone's two tokens: a silent background push (priority 5, the bundle's own
///   topic) to the `:remote` token, never a VoIP push.
///
/// Each push is a record of category push-records with no caller.
#[test]
fn an_app_asleep_is_pushed_before_its_registration_runs_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(dir.path());
    let pbx = Pbx::start(PbxOptions::default().registrar("min_expires_s = 4").toml(&gateway.push_toml(5)));

    let started = Instant::now();
    let phone = refreshing_phone(&pbx, "fcm", PROJECT, FCM_TOKEN, ";+sip.pnsreg", 6_000).spawn();
    if !wait_until(WAIT, || !pbx.contacts_of("101").is_empty()) {
        let phone = phone.wait();
        panic!("101 never registered: {}\n{}", phone.report(), phone.messages);
    }
    assert!(wait_until(WAIT, || !gateway.pushes_for(FCM_TOKEN).is_empty()), "no refresh push\n{}", pbx.log());
    let first = started.elapsed();
    assert!(first >= Duration::from_millis(3_500) && first < Duration::from_secs(8), "pushed at {first:?}");
    let phone = phone.wait();
    assert!(phone.success, "{}", phone.report());
    assert!(
        phone.messages.contains(&format!("Feature-Caps: *;+sip.pns=\"fcm\";+sip.pnsreg=\"{}\"", 120 + 10)),
        "the 200 tells a +sip.pnsreg app when to refresh\n{}",
        phone.messages
    );
    let pushes = gateway.pushes_for(FCM_TOKEN);
    assert_eq!(pushes.len(), 1, "one push per registration, none yet for the second: {pushes:?}");
    let body: serde_json::Value = serde_json::from_str(pushes[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!((pushes[0]["status"].as_u64(), &body["message"]["data"]["type"]), (Some(200), &"register".into()));
    // The phone registered again at ~6 s: its next push is due ~4 s later.
    assert!(wait_until(WAIT, || gateway.pushes_for(FCM_TOKEN).len() == 2), "no second refresh push");
    let second = started.elapsed();
    assert!(second >= Duration::from_millis(9_500), "the second push came before its time: {second:?}");
    // Unrefreshed, the binding lapses at its expiry (~14 s) and nobody pushes it again.
    assert!(wait_until(WAIT, || pbx.contacts_of("101").is_empty()), "{:?}", pbx.registrations());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(gateway.pushes_for(FCM_TOKEN).len(), 2, "a lapsed binding was pushed");

    let (status, export) = pbx.api("GET", "/api/v1/privacy/subjects/101/export", None);
    assert_eq!(status, 200, "{export}");
    let export: serde_json::Value = serde_json::from_str(&export).unwrap();
    let records = export["push_records"].as_array().unwrap_or_else(|| panic!("no push_records: {export}"));
    assert_eq!(records.len(), 2, "{export}");
    assert!(
        records.iter().all(|r| r["caller"] == "" && r["callee"] == "101" && r["outcome"] == "delivered"),
        "{export}"
    );

    // APNs, Linphone's form: the background push goes to the `:remote` token.
    let param = format!("{TEAM_ID}.{BUNDLE}.voip&remote");
    let prid = format!("{APNS_TOKEN}:voip&{APNS_REMOTE_TOKEN}:remote");
    let phone = refreshing_phone(&pbx, "apns", &param, &prid, "", 5_000).spawn();
    assert!(wait_until(WAIT, || !gateway.pushes_for(APNS_REMOTE_TOKEN).is_empty()), "{}", gateway.output());
    let push = &gateway.pushes_for(APNS_REMOTE_TOKEN)[0];
    assert_eq!(push["status"], 200, "{push}");
    assert_eq!(
        (&push["headers"]["apns-push-type"], &push["headers"]["apns-priority"], &push["headers"]["apns-topic"]),
        (&"background".into(), &"5".into(), &BUNDLE.into()),
        "{push}"
    );
    assert!(gateway.pushes_for(APNS_TOKEN).is_empty(), "a VoIP push without a call");
    let phone = phone.wait();
    assert!(phone.success, "{}", phone.report());
}

/// pn parameters pbx cannot use are refused naming the parameter (400), a provider pbx does
/// not push through gets 555, a capability query (pn-provider alone) gets 200 with
/// Feature-Caps and makes no binding.
#[test]
fn strangers_with_malformed_push_parameters_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(dir.path());
    let pbx = pbx_with_push(&gateway, 5);
    let mut phone = SipClient::udp(pbx.sip);
    let local = phone.local();
    let cases = [
        ("pn-provider=apns;pn-param=nodot;pn-prid=00aa", 400, "pn-param"),
        ("pn-provider=apns;pn-param=T1.org.example.app.voip;pn-prid=nothex", 400, "pn-prid"),
        ("pn-provider=fcm;pn-param=p", 400, "pn-prid"),
        ("pn-prid=abc", 400, "pn-provider"),
        ("pn-provider=webpush;pn-param=p;pn-prid=x", 555, "Push Notification Service Not Supported"),
    ];
    for (params, code, named) in cases {
        let contact = format!("Contact: <sip:101@{local};{params}>");
        let answer = phone.register("101", "secret-101", "MD5", &[&contact, "Expires: 600"]).expect("answered");
        assert_eq!(status_code(&answer), Some(code), "{params}: {answer}");
        let reason = answer.lines().next().unwrap_or_default();
        assert!(reason.contains(named), "{params}: {reason}");
    }
    let contact = format!("Contact: <sip:101@{local};pn-provider=fcm>");
    let answer = phone.register("101", "secret-101", "MD5", &[&contact, "Expires: 600"]).expect("answered");
    assert_eq!(status_code(&answer), Some(200), "{answer}");
    assert_eq!(header_values(&answer, "Feature-Caps"), ["*;+sip.pns=\"fcm\""], "{answer}");
    assert!(pbx.contacts_of("101").is_empty(), "a query makes no binding");
}

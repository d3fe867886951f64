//! Call transfer end to end (issue 18, item 1): blind transfer by REFER (RFC 3515) from either
//! party, with real softphones (baresip's `transfer` command) and the audio checked after the
//! transfer; a transfer to a busy target, after which the transferor still has the call; and
//! REFERs a stranger would try (another host, another scheme, a number outside the dial plan,
//! a feature code), refused 403 with the reason, the call going on. Attended transfer (REFER
//! with Replaces) with a SIPp transferor (baresip 1.0.0 has no attended transfer) between two
//! baresips, audio checked; a Replaces naming no dialog of the transferor's is refused.

use pbx_tests::audio::dominant_frequency;
use pbx_tests::baresip::{Baresip, registered_account};
use pbx_tests::rtp::RtpSink;
use pbx_tests::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn node() -> Pbx {
    let mut options = PbxOptions::default().md5_only().own_rtp_ports(100);
    options.extensions.push(ext("102", "secret-102"));
    options.extensions.push(ext("103", "secret-103"));
    Pbx::start(options)
}

fn phone(pbx: &Pbx, user: &str, hz: f64) -> Baresip {
    Baresip::start(&registered_account(user, &format!("secret-{user}"), pbx.sip), hz)
}

/// 100 (1 kHz), 101 (600 Hz) and 102 (1400 Hz), registered.
fn three_phones(pbx: &Pbx) -> (Baresip, Baresip, Baresip) {
    let (mut alice, mut bob, mut carol) =
        (phone(pbx, "100", 1000.0), phone(pbx, "101", 600.0), phone(pbx, "102", 1400.0));
    assert!(
        wait_until(WAIT, || alice.is_registered() && bob.is_registered() && carol.is_registered()),
        "{}{}{}",
        alice.report(),
        bob.report(),
        carol.report()
    );
    (alice, bob, carol)
}

/// The loudest frequency of the last seconds `phone` heard (its newest recording, once that
/// call closed), a half second off its end.
fn heard_last(phone: &Baresip, seconds: usize) -> f64 {
    let wav = phone.received_audio().unwrap_or_else(|| panic!("no recording\n{}", phone.report()));
    let (samples, rate) = (wav.mono(), wav.rate_hz as usize);
    assert!(samples.len() > (seconds + 1) * rate, "{} samples\n{}", samples.len(), phone.report());
    let end = samples.len() - rate / 2;
    dominant_frequency(&samples[end - seconds * rate..end], wav.rate_hz)
}

/// What the SIPp callees play: half a second of 600 Hz.
fn callee_pcap(pbx: &Pbx) -> std::path::PathBuf {
    let pcap = pbx.scratch().join("callee.pcap");
    let tone = pbx_tests::audio::tone(600.0, pbx_tests::audio::G711_RATE_HZ, 0.5, 8000.0);
    pbx_tests::rtp::g711_stream_pcap(&pcap, pbx_tests::audio::G711::Pcmu, &tone).expect("pcap");
    pcap
}

/// The stored call records, oldest first.
fn cdrs(pbx: &Pbx) -> Vec<serde_json::Value> {
    let (status, body) = pbx.api("GET", "/api/v1/cdrs", None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut list = v["cdrs"].as_array().cloned().unwrap_or_default();
    list.sort_by_key(|c| c["start"].as_str().unwrap_or_default().to_owned());
    list
}

/// Blind transfer, `transferor` being 100 (the caller) or 101 (the callee): 100 calls 101; the
/// transferor transfers the other to 102. 102's phone rings and answers; the transferor's call
/// ends; the transferee and 102 hear each other through pbx; the records say who transferred
/// to whom and chain.
fn blind_transfer(transferor: &str) {
    let pbx = node();
    let (mut alice, mut bob, mut carol) = three_phones(&pbx);
    alice.dial(&format!("sip:101@{}", pbx.sip));
    assert!(alice.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", alice.report());
    assert!(bob.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", bob.report());
    std::thread::sleep(Duration::from_secs(2));

    let (mut from, mut to, to_hz) = match transferor {
        "100" => (alice, bob, 600.0),
        _ => (bob, alice, 1000.0),
    };
    if let Err(e) = from.command("transfer", &format!("sip:102@{}", pbx.sip)) {
        panic!("baresip transfer: {e}\n{}", from.report());
    }
    assert!(carol.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}\n{}", carol.report(), pbx.log());
    assert!(from.wait_event("CALL_CLOSED", WAIT).is_some(), "the transferor's call ends\n{}", from.report());
    std::thread::sleep(Duration::from_secs(4));
    carol.hangup();
    assert!(carol.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", carol.report());
    assert!(to.wait_event("CALL_CLOSED", WAIT).is_some(), "pbx hangs up the transferee\n{}", to.report());

    assert_eq!(heard_last(&carol, 2), to_hz, "the target hears the transferee\n{}", carol.report());
    assert_eq!(heard_last(&to, 2), 1400.0, "the transferee hears the target\n{}", to.report());

    assert!(wait_until(WAIT, || cdrs(&pbx).len() == 2), "{:?}", cdrs(&pbx));
    let records = cdrs(&pbx);
    let (first, second) = (&records[0], &records[1]);
    assert_eq!((first["caller"].as_str(), first["callee"].as_str()), (Some("100"), Some("101")), "{first}");
    assert_eq!(first["disposition"], "answered");
    assert_eq!(first["transfer"]["by"].as_str(), Some(transferor), "{first}");
    assert_eq!(first["transfer"]["to"], "102", "{first}");
    assert_eq!(first["transfer"]["next"], second["id"], "the chain: {first} {second}");
    assert_eq!(second["follows"], first["id"], "{second}");
    assert_eq!(second["disposition"], "answered");
    let parties = [second["caller"].as_str(), second["callee"].as_str()];
    let expected = if transferor == "101" { [Some("100"), Some("102")] } else { [Some("102"), Some("101")] };
    assert_eq!(parties, expected, "parties by side: {second}");
    assert_eq!(second["hangup"], if transferor == "101" { "callee" } else { "caller" }, "102 hung up: {second}");
    assert!(second["duration_s"].as_u64().unwrap() >= 2, "{second}");
    drop((from, to, carol));
}

#[test]
fn callee_transfers_the_caller_blind() {
    blind_transfer("101");
}

#[test]
fn caller_transfers_the_callee_blind() {
    blind_transfer("100");
}

/// 100 (SIPp) calls 101 (SIPp) and REFERs: what a stranger's Refer-To would do is refused 403
/// with the reason and the call goes on (100 hangs up itself, 101 gets that BYE); a transfer
/// to 102, busy, is accepted (202), NOTIFYs say 100 Trying … 486, and the call goes on too.
#[test]
fn refused_and_failed_transfers_leave_the_call_as_it_was() {
    let pbx = node();
    let busy = Sipp::registered_callee(&pbx, "forward_uas_busy.xml", "102", "secret-102", 1)
        .media(pbx_tests::audio::G711::Pcmu, &RtpSink::for_sipp(), None)
        .timeout(Duration::from_secs(60))
        .spawn();
    pbx.wait_registered("102", &busy);
    let host = pbx.sip;
    let cases = [
        (format!("<sip:102@evil.example.net:{}>", host.port()), 403, "another host"),
        ("<tel:+4930123456>".to_string(), 403, "not a SIP URI"),
        (format!("<sip:999@{host}>"), 403, "no such number"),
        (format!("<sip:*80102@{host}>"), 403, "not a number a call can be transferred to"),
        (format!("<sip:103@{host}>"), 480, "Temporarily Unavailable"),
        (format!("<sip:102@{host}>"), 202, "Accepted"),
    ];
    let pcap = callee_pcap(&pbx);
    let callee = Sipp::registered_callee(&pbx, "call_uas.xml", "101", "secret-101", cases.len() as u32)
        .media(pbx_tests::audio::G711::Pcmu, &RtpSink::for_sipp(), Some(&pcap))
        .timeout(Duration::from_secs(60))
        .spawn();
    pbx.wait_registered("101", &callee);
    for (refer_to, code, reason) in &cases {
        let caller = Sipp::new("transfer_uac_refer.xml", pbx.sip, &pbx.scratch())
            .caller("100", "secret-100", "101")
            .key("refer_to", refer_to)
            .media(pbx_tests::audio::G711::Pcmu, &RtpSink::for_sipp(), None)
            .args(&["-m", "1"])
            .run();
        assert!(caller.success, "{refer_to}: {}\n{}", caller.report(), pbx.log());
        let answer = caller
            .received()
            .into_iter()
            .find(|m| header_values(m, "CSeq").iter().any(|c| c.ends_with("REFER")))
            .unwrap_or_else(|| panic!("{refer_to}: no answer to the REFER\n{}", caller.messages));
        assert_eq!(status_code(&answer), Some(*code), "{refer_to}: {answer}");
        assert!(answer.lines().next().unwrap().contains(reason), "{refer_to}: {answer}");
        let notifies = caller.received_requests("NOTIFY");
        if *code == 202 {
            let fragments: Vec<&str> = notifies.iter().map(|n| body(n).trim()).collect();
            assert_eq!(fragments.first(), Some(&"SIP/2.0 100 Trying"), "{fragments:?}");
            assert_eq!(fragments.last(), Some(&"SIP/2.0 486 Busy Here"), "{fragments:?}");
            let last = notifies.last().unwrap();
            assert!(header_values(last, "Subscription-State")[0].starts_with("terminated"), "{last}");
            assert!(header_values(last, "Event")[0].starts_with("refer"), "{last}");
        } else {
            assert!(notifies.is_empty(), "{refer_to}: {notifies:?}");
        }
        // The caller's own BYE ended the call: pbx sent it none.
        assert!(caller.received_requests("BYE").is_empty(), "{refer_to}: {}", caller.messages);
    }
    let callee_run = callee.wait();
    assert!(callee_run.success, "{}", callee_run.report());
    assert_eq!(callee_run.received_requests("BYE").len(), cases.len(), "{}", callee_run.messages);
    let busy = busy.finish_after(&callee_run);
    assert!(busy.success, "{}", busy.report());
    let records = cdrs(&pbx);
    assert!(records.iter().all(|c| c["transfer"].is_null() && c["callee"] == "101"), "{records:?}");
}

/// A header's value in a SIP message as SIPp's trace shows it (the first of its name).
fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

fn tag(value: &str) -> Option<String> {
    value.split(';').find_map(|p| p.trim().strip_prefix("tag=")).map(String::from)
}

/// The consultation call's dialog as its caller (SIPp) sees it, once pbx answered it: its
/// Call-ID, its own tag and pbx's.
fn dialog_of(sipp: &SippProcess) -> Option<(String, String, String)> {
    let trace = sipp.messages_so_far();
    let ok = trace.split("SIP/2.0 200 OK").nth(1)?;
    let ok = ok.split("\n\n").next()?;
    let call_id = header(ok, "Call-ID")?.to_owned();
    Some((call_id, tag(header(ok, "From")?)?, tag(header(ok, "To")?)?))
}

fn escaped(text: &str) -> String {
    text.replace('%', "%25").replace('@', "%40").replace(';', "%3B").replace('=', "%3D")
}

/// Attended transfer (RFC 5589 §7): 100 (SIPp) calls 102 (baresip, 1400 Hz) to consult, then,
/// in its call with 101 (baresip, 600 Hz), REFERs to 102 with Replaces naming the consultation
/// dialog. pbx joins 101 to 102 itself: 100 gets NOTIFY 100 Trying and 200 OK and a BYE in
/// both calls; 101 and 102 hear each other; the records chain.
#[test]
fn attended_transfer_joins_the_transferee_to_the_consulted_target() {
    let pbx = node();
    let mut bob = phone(&pbx, "101", 600.0);
    let mut carol = phone(&pbx, "102", 1400.0);
    assert!(wait_until(WAIT, || bob.is_registered() && carol.is_registered()), "{}{}", bob.report(), carol.report());
    let law = pbx_tests::audio::G711::Pcmu;
    let consult = Sipp::new("transfer_uac_consult.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "102")
        .media(law, &RtpSink::for_sipp(), None)
        .args(&["-m", "1"])
        .timeout(Duration::from_secs(60))
        .spawn();
    assert!(carol.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", carol.report());
    let mut dialog = None;
    assert!(wait_until(WAIT, || {
        dialog = dialog_of(&consult);
        dialog.is_some()
    }));
    let (call_id, from_tag, to_tag) = dialog.unwrap();
    let replaces = escaped(&format!("{call_id};to-tag={to_tag};from-tag={from_tag}"));
    let refer_to = format!("<sip:102@{}?Replaces={replaces}>", pbx.sip);

    let transferor = Sipp::new("transfer_uac_attended.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .key("refer_to", &refer_to)
        .media(law, &RtpSink::for_sipp(), None)
        .args(&["-m", "1"])
        .run();
    assert!(transferor.success, "{}\n{}", transferor.report(), pbx.log());
    let fragments: Vec<String> =
        transferor.received_requests("NOTIFY").iter().map(|n| body(n).trim().to_owned()).collect();
    assert_eq!(fragments, ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]);
    assert!(bob.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", bob.report());
    let consult = consult.wait();
    assert!(consult.success, "pbx hung up the consultation: {}", consult.report());

    std::thread::sleep(Duration::from_secs(4));
    carol.hangup();
    assert!(carol.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", carol.report());
    assert!(bob.wait_event("CALL_CLOSED", WAIT).is_some(), "pbx hangs up the transferee\n{}", bob.report());
    assert_eq!(heard_last(&carol, 2), 600.0, "the target hears the transferee\n{}", carol.report());
    assert_eq!(heard_last(&bob, 2), 1400.0, "the transferee hears the target\n{}", bob.report());

    assert!(wait_until(WAIT, || cdrs(&pbx).len() == 3), "{:?}", cdrs(&pbx));
    let records = cdrs(&pbx);
    let find = |caller: &str, callee: &str| {
        records
            .iter()
            .find(|c| c["caller"] == caller && c["callee"] == callee)
            .cloned()
            .unwrap_or_else(|| panic!("no record {caller} → {callee}: {records:?}"))
    };
    let (first, consultation, joined) = (find("100", "101"), find("100", "102"), find("101", "102"));
    assert_eq!((first["transfer"]["by"].as_str(), first["transfer"]["to"].as_str()), (Some("100"), Some("102")));
    assert_eq!(first["transfer"]["next"], joined["id"]);
    assert_eq!(consultation["transfer"]["next"], joined["id"]);
    assert_eq!(joined["follows"], first["id"]);
    assert_eq!(joined["hangup"], "callee", "{joined}");
    drop((bob, carol));
}

/// A Replaces naming no dialog of pbx's, or a dialog of another extension, is refused 403 and
/// the call goes on (the transferor hangs up itself).
#[test]
fn attended_transfer_to_a_dialog_not_the_transferors_is_refused() {
    let pbx = node();
    let pcap = callee_pcap(&pbx);
    let law = pbx_tests::audio::G711::Pcmu;
    let callee = Sipp::registered_callee(&pbx, "call_uas.xml", "101", "secret-101", 1)
        .media(law, &RtpSink::for_sipp(), Some(&pcap))
        .timeout(Duration::from_secs(30))
        .spawn();
    pbx.wait_registered("101", &callee);
    let replaces = escaped("nosuchcall@127.0.0.1;to-tag=0123456789abcdef0123456789abcdef;from-tag=x");
    let refer_to = format!("<sip:102@{}?Replaces={replaces}>", pbx.sip);
    let caller = Sipp::new("transfer_uac_refer.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .key("refer_to", &refer_to)
        .media(law, &RtpSink::for_sipp(), None)
        .args(&["-m", "1"])
        .run();
    assert!(caller.success, "{}", caller.report());
    let answer = caller
        .received()
        .into_iter()
        .find(|m| header_values(m, "CSeq").iter().any(|c| c.ends_with("REFER")))
        .expect("an answer to the REFER");
    assert_eq!(status_code(&answer), Some(403), "{answer}");
    assert!(answer.lines().next().unwrap().contains("no call to replace"), "{answer}");
    let callee = callee.finish_after(&caller);
    assert!(callee.success, "{}", callee.report());
}

/// RFC 3891 from a phone: 100 (baresip) calls 101, answered by 101's first phone (SIPp);
/// 101's second phone (SIPp, authenticated as 101) sends an INVITE with `Replaces` naming that
/// dialog (as the first phone sees it) and `Require: replaces`. pbx answers it, hangs up the
/// first phone, and 100 now hears the second phone's tone; its BYE ends the call.
#[test]
fn invite_with_replaces_moves_a_call_to_another_phone() {
    let pbx = node();
    let mut alice = phone(&pbx, "100", 1000.0);
    let law = pbx_tests::audio::G711::Pcmu;
    let first = Sipp::registered_callee(&pbx, "call_uas.xml", "101", "secret-101", 1)
        .media(law, &RtpSink::for_sipp(), Some(&callee_pcap(&pbx)))
        .timeout(Duration::from_secs(30))
        .spawn();
    pbx.wait_registered("101", &first);
    assert!(wait_until(WAIT, || alice.is_registered()), "{}", alice.report());
    alice.dial(&format!("sip:101@{}", pbx.sip));
    assert!(alice.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", alice.report());
    // The dialog as the first phone sees it: pbx's Call-ID and tag (From), its own (To).
    let mut dialog = None;
    assert!(wait_until(WAIT, || {
        let trace = first.messages_so_far();
        // The 200 it sent to pbx's INVITE (the first 200 in its trace answers its REGISTER).
        let ok = trace
            .split("SIP/2.0 200 OK")
            .skip(1)
            .map(|m| m.split("\n\n").next().unwrap_or_default())
            .find(|m| header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE")));
        dialog = ok.and_then(|ok| {
            Some((header(ok, "Call-ID")?.to_owned(), tag(header(ok, "To")?)?, tag(header(ok, "From")?)?))
        });
        dialog.is_some()
    }));
    let (call_id, phone_tag, pbx_tag) = dialog.unwrap();
    let second_pcap = pbx.scratch().join("second.pcap");
    let tone = pbx_tests::audio::tone(1400.0, pbx_tests::audio::G711_RATE_HZ, 4.0, 8000.0);
    pbx_tests::rtp::g711_stream_pcap(&second_pcap, law, &tone).expect("pcap");
    let second = Sipp::new("replaces_uac.xml", pbx.sip, &pbx.scratch())
        .caller("101", "secret-101", "100")
        .key("replaces", &format!("{call_id};to-tag={phone_tag};from-tag={pbx_tag}"))
        .media(law, &RtpSink::for_sipp(), Some(&second_pcap))
        .args(&["-d", "3500", "-m", "1"])
        .run();
    assert!(second.success, "{}\n{}", second.report(), pbx.log());
    let first = first.finish_after(&second);
    assert!(first.success, "the first phone got pbx's BYE: {}", first.report());
    assert!(alice.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", alice.report());
    assert_eq!(heard_last(&alice, 2), 1400.0, "100 hears the second phone\n{}", alice.report());
    let records = cdrs(&pbx);
    assert_eq!(records.len(), 1, "one call, one record: {records:?}");
    assert_eq!((records[0]["callee"].as_str(), records[0]["hangup"].as_str()), (Some("101"), Some("callee")));
}

/// An INVITE with `Replaces` naming no dialog of pbx's gets 481 (RFC 3891 §3).
#[test]
fn invite_with_replaces_naming_nothing_gets_481() {
    let pbx = node();
    let mut client = SipClient::udp(pbx.sip);
    let replaces = "Replaces: nosuchcall@127.0.0.1;to-tag=0123456789abcdef0123456789abcdef;from-tag=x";
    let uri = format!("sip:100@{}", pbx.sip);
    let first = client.request("INVITE", &uri, "101", Some("100"), &[replaces, "Require: replaces"]);
    let challenge = client.transact(&first).expect("407");
    assert_eq!(status_code(&challenge), Some(407), "{challenge}");
    let chosen = header_values(&challenge, "Proxy-Authenticate").pop().expect("a challenge");
    let auth = authorization(&chosen, "101", "secret-101", "INVITE", &uri, 1);
    let proxy_auth = format!("Proxy-Authorization: {auth}");
    let second = client.request("INVITE", &uri, "101", Some("100"), &[replaces, "Require: replaces", &proxy_auth]);
    client.send(&second);
    let answer = std::iter::from_fn(|| client.recv(WAIT)).find(|m| status_code(m).is_some_and(|c| c >= 200));
    let answer = answer.expect("a final answer");
    assert_eq!(status_code(&answer), Some(481), "{answer}");
    assert!(answer.lines().next().unwrap().contains("nothing to replace"), "{answer}");
}

/// Call park (item 5): 101 blind-transfers its caller 100 to orbit 701 and is hung up; 102
/// dials 702 (nothing there: 480), then 701 and takes the call: 100 and 102 hear each other.
/// The records chain through the park.
#[test]
fn a_call_parked_by_transfer_is_retrieved_by_dialling_its_orbit() {
    let pbx = node();
    let (mut alice, mut bob, mut carol) = three_phones(&pbx);
    alice.dial(&format!("sip:101@{}", pbx.sip));
    assert!(alice.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", alice.report());
    assert!(bob.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", bob.report());
    if let Err(e) = bob.command("transfer", &format!("sip:701@{}", pbx.sip)) {
        panic!("baresip transfer: {e}\n{}", bob.report());
    }
    assert!(bob.wait_event("CALL_CLOSED", WAIT).is_some(), "the parker's call ends\n{}", bob.report());

    carol.dial(&format!("sip:702@{}", pbx.sip));
    let closed = carol.wait_event("CALL_CLOSED", WAIT).unwrap_or_else(|| panic!("{}", carol.report()));
    assert!(closed.to_string().contains("480"), "nothing parked at 702: {closed}");
    carol.dial(&format!("sip:701@{}", pbx.sip));
    assert!(carol.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}\n{}", carol.report(), pbx.log());
    std::thread::sleep(Duration::from_secs(4));
    carol.hangup();
    assert!(carol.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", carol.report());
    assert!(alice.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", alice.report());
    assert_eq!(heard_last(&carol, 2), 1000.0, "102 hears the parked caller\n{}", carol.report());
    assert_eq!(heard_last(&alice, 2), 1400.0, "the parked caller hears 102\n{}", alice.report());

    assert!(wait_until(WAIT, || cdrs(&pbx).iter().filter(|c| c["disposition"] == "answered").count() == 3));
    let records: Vec<_> = cdrs(&pbx).into_iter().filter(|c| c["disposition"] == "answered").collect();
    let parked = records.iter().find(|c| c["callee"] == "701").expect("the parked part");
    let first = records.iter().find(|c| c["callee"] == "101").expect("the first part");
    let last = records.iter().find(|c| c["callee"] == "102").expect("the retrieved part");
    assert_eq!((first["transfer"]["by"].as_str(), first["transfer"]["to"].as_str()), (Some("101"), Some("701")));
    assert_eq!(parked["follows"], first["id"]);
    assert_eq!((parked["transfer"]["by"].as_str(), parked["transfer"]["to"].as_str()), (Some("701"), Some("102")));
    assert_eq!(last["follows"], parked["id"]);
    drop((alice, bob, carol));
}

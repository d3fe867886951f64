//! Privacy end to end against the real `pbx` binary: subject rights over the API and the CLI
//! after real calls (SIPp) and real failed registrations, the retention reaper on a real redb
//! file, and the generated privacy notice.

use pbx_actors::Timestamp;
use pbx_actors::cdr::{Cdr, Disposition, MediaCounters};
use pbx_tests::audio::{G711, G711_RATE_HZ, tone};
use pbx_tests::rtp::{RtpSink, g711_stream_pcap};
use pbx_tests::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// The security-log writer commits at most once a second.
const LOG_TIMEOUT: Duration = Duration::from_secs(5);

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn call(pbx: &Pbx, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (code, text) = pbx.api(method, path, body);
    (code, json(&text))
}

/// 100 calls 101 (a SIPp callee registered as 101) for `ms` milliseconds: both SIPps running.
fn sipp_call(pbx: &Pbx, ms: u32) -> (SippProcess, SippProcess) {
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    // The scenarios play audio while the call lasts: a second of tone is enough.
    let pcap = pbx.scratch().join("tone.pcap");
    g711_stream_pcap(&pcap, G711::Pcmu, &tone(440.0, G711_RATE_HZ, 1.0, 8000.0)).expect("write pcap");
    let callee = Sipp::registered_callee(pbx, "call_uas.xml", "101", "secret-101", 1)
        .media(G711::Pcmu, &callee_sink, Some(&pcap))
        .spawn();
    let contact = format!("sip:101@{};transport=UDP", callee.local());
    if !wait_until(REGISTER_TIMEOUT, || pbx.contacts_of("101").contains(&contact)) {
        let run = callee.stop();
        panic!("101 not registered as {contact}: {:?}\n{}", pbx.registrations(), run.report());
    }
    let caller = Sipp::new("call_uac.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &caller_sink, Some(&pcap))
        .args(&["-d", &ms.to_string(), "-m", "1"])
        .spawn();
    (caller, callee)
}

fn finish((caller, callee): (SippProcess, SippProcess)) {
    let caller = caller.wait();
    assert!(caller.success, "caller: {}", caller.report());
    let callee = callee.finish_after(&caller);
    assert!(callee.success, "callee: {}", callee.report());
}

fn cdrs_of(export: &Value) -> Vec<Value> {
    export["cdrs"].as_array().cloned().unwrap_or_default()
}

/// The issue's end-to-end path: after a real call and a failed registration, the export of
/// each party holds their data; erasing 101 while it is in a call is refused and changes
/// nothing; afterwards the erasure empties everything about 101 (its export is 404), and 100's
/// records remain with 101 masked; the audit shows every request by pseudonym only.
#[test]
fn export_erase_export_again_and_the_other_partys_record() {
    let pbx = Pbx::start(PbxOptions::default().own_rtp_ports(100));
    finish(sipp_call(&pbx, 500));
    // A wrong password from a raw client, claiming 101: a security-log entry naming 101.
    let mut raw = SipClient::udp(pbx.sip);
    let answer = raw.register("101", "wrong-password", "MD5", &[]).expect("an answer");
    assert!(matches!(status_code(&answer), Some(401 | 403)), "a wrong password is refused: {answer}");
    let (code, export) = call(&pbx, "GET", "/api/v1/privacy/subjects/101/export", None);
    assert_eq!(code, 200, "{export}");
    assert_eq!(export["kind"], "extension");
    assert_eq!(export["extension"]["display_name"], "Ext 101");
    assert!(!export.to_string().contains("ha1"), "no password hashes in an export: {export}");
    let cdrs = cdrs_of(&export);
    assert_eq!(cdrs.len(), 1, "{export}");
    assert_eq!((cdrs[0]["caller"].as_str(), cdrs[0]["callee"].as_str()), (Some("100"), Some("101")));
    assert!(
        wait_until(LOG_TIMEOUT, || {
            let (_, e) = call(&pbx, "GET", "/api/v1/privacy/subjects/101/export", None);
            e["security_log"].as_array().is_some_and(|l| l.iter().any(|x| x["user"] == "101"))
        }),
        "the failed registration is in 101's export"
    );

    // A second call, still going: erasure is refused with the reason, nothing changes.
    let second = sipp_call(&pbx, 6_000);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, calls) = call(&pbx, "GET", "/api/v1/calls", None);
            calls["calls"].as_array().is_some_and(|c| c.iter().any(|c| c["state"] == "answered"))
        }),
        "the second call is answered"
    );
    let (code, refused) = call(&pbx, "POST", "/api/v1/privacy/subjects/101/erase", None);
    assert_eq!(code, 409, "{refused}");
    assert!(refused["error"].as_str().unwrap_or_default().contains("in 1 call"), "{refused}");
    let (_, still) = call(&pbx, "GET", "/api/v1/privacy/subjects/101/export", None);
    assert_eq!(still["extension"]["display_name"], "Ext 101", "a refused erasure changes nothing");
    finish(second);
    // A call's record is written as its actor ends, a little after the BYE: until then the
    // call is still "ending", and an erasure would still be refused.
    let no_calls = || call(&pbx, "GET", "/api/v1/calls", None).1["calls"].as_array().is_some_and(|c| c.is_empty());
    assert!(wait_until(Duration::from_secs(45), no_calls), "the calls ended");

    let (code, erased) = call(&pbx, "POST", "/api/v1/privacy/subjects/101/erase", None);
    assert_eq!(code, 200, "{erased}");
    assert_eq!(erased["erased"]["cdrs_masked"], 2, "{erased}");
    assert_eq!(erased["erased"]["extension"], 1, "{erased}");
    let (code, gone) = call(&pbx, "GET", "/api/v1/privacy/subjects/101/export", None);
    assert_eq!(code, 404, "nothing personal left about 101: {gone}");
    assert!(gone["error"].as_str().unwrap_or_default().contains("no personal data"), "{gone}");
    assert_eq!(pbx.api("GET", "/api/v1/extensions/101", None).0, 404);
    assert!(pbx.contacts_of("101").is_empty());
    let (_, all) = call(&pbx, "GET", "/api/v1/cdrs", None);
    assert!(!all.to_string().contains("\"101\""), "101 appears in no record: {all}");

    let (code, other) = call(&pbx, "GET", "/api/v1/privacy/subjects/100/export", None);
    assert_eq!(code, 200, "{other}");
    let cdrs = cdrs_of(&other);
    assert_eq!(cdrs.len(), 2, "the other party's records stay: {other}");
    assert!(cdrs.iter().all(|c| c["caller"] == "100" && c["callee"] == "anonymous"), "{other}");

    // Erasing again: nothing left to find.
    assert_eq!(pbx.api("POST", "/api/v1/privacy/subjects/101/erase", None).0, 404);
    let (code, audit) = call(&pbx, "GET", "/api/v1/privacy/audit?subject=101", None);
    assert_eq!(code, 200);
    let rights: Vec<String> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["right"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    // Newest first; every export is audited (the polling ones too, so at least two before).
    assert_eq!(rights[..3], ["erasure erased", "access exported", "erasure refused: in a call"], "{rights:?}");
    assert!(rights.len() >= 5 && rights[3..].iter().all(|r| r == "access exported"), "{rights:?}");
    let whole = pbx.api("GET", "/api/v1/privacy/audit", None).1;
    assert!(!whole.contains("\"101\""), "the audit never names the subject: {whole}");
    assert!(whole.contains("retention"), "the reaper's first run is audited: {whole}");
}

/// Unknown subjects get 404 with a clear message; malformed ids 400; every route needs the token.
#[test]
fn unknown_and_malformed_subjects() {
    let pbx = Pbx::start(PbxOptions::default());
    for path in ["/api/v1/privacy/subjects/555/export", "/api/v1/privacy/subjects/192.0.2.99/export"] {
        let (code, body) = call(&pbx, "GET", path, None);
        assert_eq!(code, 404, "{path}: {body}");
        assert!(body["error"].as_str().unwrap_or_default().contains("no personal data"), "{body}");
    }
    for (method, path) in [
        ("POST", "/api/v1/privacy/subjects/555/erase"),
        ("POST", "/api/v1/privacy/subjects/555/restriction"),
        ("POST", "/api/v1/privacy/subjects/555/objection"),
    ] {
        assert_eq!(pbx.api(method, path, None).0, 404, "{method} {path}");
    }
    let (code, body) =
        call(&pbx, "POST", "/api/v1/privacy/subjects/555/rectification", Some(r#"{"display_name":"X"}"#));
    assert_eq!(code, 404, "{body}");
    let (code, body) = call(&pbx, "GET", "/api/v1/privacy/subjects/anonymous/export", None);
    assert_eq!(code, 400, "{body}");
    let (code, body) = call(&pbx, "GET", "/api/v1/privacy/subjects/a%3Cb/export", None);
    assert_eq!(code, 400, "{body}");
    assert_eq!(pbx.api("POST", "/api/v1/privacy/subjects/100/forget", None).0, 404);
    let (code, body) = call(&pbx, "POST", "/api/v1/privacy/subjects/100/rectification", Some(r#"{"name":"X"}"#));
    assert_eq!(code, 400, "{body}");
    let no_token = http_request(pbx.http, "GET", "/api/v1/privacy/subjects/100/export", None, None).map(|r| r.0);
    assert_eq!(no_token, Some(401));
}

/// Stored CDRs written while the node was stopped: one past the retention period, one inside
/// it. At start the reaper deletes the old one only and audits the run with its count.
#[test]
fn the_reaper_deletes_what_is_past_retention_at_start() {
    let mut pbx = Pbx::start(PbxOptions::default().calls("cdr_retention_days = 30"));
    assert_eq!(pbx.stop(), Some(0), "{}", pbx.log());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let record = |id: u64, age_days: u64| Cdr {
        id,
        call_id: format!("c{id}"),
        caller: "100".into(),
        callee: "101".into(),
        start: Timestamp::from_secs(now - age_days * 86_400 - 60),
        answer: None,
        end: Timestamp::from_secs(now - age_days * 86_400),
        disposition: Disposition::NoAnswer,
        hangup: None,
        codec_caller: None,
        codec_callee: None,
        media: [MediaCounters::default(); 2],
        follows: None,
        transfer: None,
    };
    {
        let storage = pbx_node::storage::Storage::open(&pbx.data_dir()).expect("open the node's storage");
        storage.put_cdrs(&[record(1, 31), record(2, 29)]).expect("store records");
    }
    pbx.start_again();
    let cdrs_left = || {
        let (_, page) = call(&pbx, "GET", "/api/v1/cdrs", None);
        page["cdrs"].as_array().map(|c| c.iter().map(|c| c["id"].as_str().unwrap_or_default().to_string()).collect())
    };
    assert!(wait_until(Duration::from_secs(10), || cdrs_left() == Some(vec!["2".to_string()])), "{:?}", cdrs_left());
    let (_, audit) = call(&pbx, "GET", "/api/v1/privacy/audit", None);
    let run = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "retention" && e["rules"].as_array().unwrap().iter().any(|r| r["records"] == 1))
        .unwrap_or_else(|| panic!("a run that deleted one record: {audit}"));
    let rule = run["rules"].as_array().unwrap().iter().find(|r| r["category"] == "cdr").unwrap();
    assert_eq!((rule["action"].as_str(), rule["records"].as_u64()), (Some("delete"), Some(1)), "{run}");
    assert!(pbx.metric("pbx_privacy_reaper_runs_total").is_some_and(|n| n >= 1.0), "{}", pbx.metrics());
}

/// Restriction hides a subject's records from the call history and the statistics but not
/// from its own export; objection leaves it out of the statistics only; both lift. Done
/// through the `pbx privacy` CLI, which goes through the same API.
#[test]
fn restriction_objection_and_rectification_through_the_cli() {
    let mut pbx = Pbx::start(PbxOptions::default());
    assert_eq!(pbx.stop(), Some(0));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let record = |id: u64, caller: &str, callee: &str| Cdr {
        id,
        call_id: format!("c{id}"),
        caller: caller.into(),
        callee: callee.into(),
        start: Timestamp::from_secs(now - 600),
        answer: Some(Timestamp::from_secs(now - 590)),
        end: Timestamp::from_secs(now - 530 + id),
        disposition: Disposition::Answered,
        hangup: None,
        codec_caller: None,
        codec_callee: None,
        media: [MediaCounters::default(); 2],
        follows: None,
        transfer: None,
    };
    {
        let storage = pbx_node::storage::Storage::open(&pbx.data_dir()).expect("open storage");
        storage.put_cdrs(&[record(1, "100", "101"), record(2, "101", "0301234567")]).unwrap();
    }
    pbx.start_again();
    let cli = |args: &[&str]| {
        let out = Command::new(binary())
            .arg("privacy")
            .args(args)
            .arg("--config")
            .arg(pbx.config_path())
            .arg("--data-dir")
            .arg(pbx.data_dir())
            .arg("--api")
            .arg(format!("http://{}", pbx.http))
            .output()
            .expect("run pbx privacy");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let stats = || call(&pbx, "GET", "/api/v1/statistics", None).1;
    let numbers = |v: &Value| -> Vec<String> {
        v["extensions"].as_array().unwrap().iter().map(|e| e["number"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(numbers(&stats()), ["0301234567", "100", "101"]);

    let (code, out, err) = cli(&["restrict", "101"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(json(&out)["flags"]["restricted_since"].is_string(), "{out}");
    let (_, history) = call(&pbx, "GET", "/api/v1/cdrs", None);
    assert_eq!(history["cdrs"].as_array().unwrap().len(), 0, "both records involve 101: hidden {history}");
    assert_eq!(numbers(&stats()), ["0301234567", "100"], "a restricted subject gets no statistics");
    let (code, out, _) = cli(&["export", "101"]);
    assert_eq!(code, Some(0));
    assert_eq!(cdrs_of(&json(&out)).len(), 2, "its own export still has everything: {out}");
    let (code, _, _) = cli(&["restrict", "101", "--lift"]);
    assert_eq!(code, Some(0));
    assert_eq!(call(&pbx, "GET", "/api/v1/cdrs", None).1["cdrs"].as_array().unwrap().len(), 2);

    let (code, out, err) = cli(&["object", "0301234567"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(numbers(&stats()), ["100", "101"], "an objection leaves the number out of the statistics");
    assert_eq!(stats()["excluded_subjects"], 1);
    assert_eq!(call(&pbx, "GET", "/api/v1/cdrs", None).1["cdrs"].as_array().unwrap().len(), 2, "but in the history");
    let (code, _, _) = cli(&["object", "0301234567", "--withdraw"]);
    assert_eq!(code, Some(0));
    assert_eq!(numbers(&stats()).len(), 3);

    let (code, out, err) = cli(&["rectify", "100", "--display-name", "Reception desk"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(call(&pbx, "GET", "/api/v1/extensions/100", None).1["display_name"], "Reception desk");
    let (code, _, err) = cli(&["export", "4711"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("404") && err.contains("no personal data"), "{err}");
    let (code, out, _) = cli(&["audit", "--subject", "0301234567"]);
    assert_eq!(code, Some(0));
    let audit = json(&out);
    let rights: Vec<&str> = audit["entries"].as_array().unwrap().iter().map(|e| e["right"].as_str().unwrap()).collect();
    assert_eq!(rights, ["objection_withdrawn", "objection"]);
}

/// The notice at `/privacy` (no token: it is public) and from `pbx privacy notice`, in German,
/// English and French: each lists every category of the inventory, with the operator's details
/// and the periods from the config.
#[test]
fn the_notice_lists_every_category_in_three_languages() {
    let pbx = Pbx::start(
        PbxOptions::default()
            .calls("cdr_retention_days = 45")
            .privacy(r#"operator = { name = "Beispiel <GmbH>", email = "datenschutz@beispiel.example" }"#),
    );
    for (lang, word) in [("de", "Datenschutzerklärung"), ("en", "Privacy notice"), ("fr", "protection des données")] {
        let (code, html) =
            http_request(pbx.http, "GET", &format!("/privacy?lang={lang}"), None, None).expect("an answer");
        assert_eq!(code, 200, "{html}");
        assert!(html.contains(&format!("<html lang=\"{lang}\"")) && html.contains(word), "{lang}: {html}");
        assert!(html.contains("Beispiel &lt;GmbH&gt;") && html.contains("datenschutz@beispiel.example"), "{html}");
        for category in pbx_actors::privacy::INVENTORY {
            assert!(html.contains(&format!("id=\"category-{}\"", category.id)), "{lang} lacks {}", category.id);
        }
        assert!(html.contains("45"), "{lang}: the configured CDR period");
        let out = Command::new(binary())
            .args(["privacy", "notice", "--lang", lang, "--config"])
            .arg(pbx.config_path())
            .output()
            .expect("run pbx privacy notice");
        let markdown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && markdown.starts_with("# ") && markdown.contains(word), "{lang}: {markdown}");
    }
    let (code, _) = http_request(pbx.http, "GET", "/privacy?lang=es", None, None).expect("an answer");
    assert_eq!(code, 400);
    let (_, html) = http_request(pbx.http, "GET", "/privacy", None, None).expect("an answer");
    assert!(html.contains("<html lang=\"en\""), "English without a preference");
}

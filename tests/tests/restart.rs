//! Durability end to end: what the node acknowledged survives a clean restart (SIGTERM) and a
//! crash (`kill -9`), on the same data directory and ports.

use pbx_tests::*;

/// A raw REGISTER of `contact` for `user` over a fresh UDP client; the final response.
fn register(pbx: &Pbx, user: &str, password: &str, contact: &str, expires: u32) -> String {
    let contact = format!("Contact: <{contact}>");
    let expires = format!("Expires: {expires}");
    SipClient::udp(pbx.sip).register(user, password, "MD5", &[&contact, &expires]).expect("an answer to REGISTER")
}

/// The node exits 0 on SIGTERM, promptly (the harness bounds the wait).
#[test]
fn node_exits_0_on_sigterm() {
    let mut pbx = Pbx::start(PbxOptions::default());
    assert_eq!(status_code(&register(&pbx, "100", "secret-100", "sip:100@127.0.0.1:7200", 300)), Some(200));
    assert_eq!(pbx.stop(), Some(0), "exit code after SIGTERM:\n{}", pbx.log());
    assert!(!pbx.is_running());
}

/// Bindings registered before a SIGTERM restart are listed after it, by the API and by a query
/// REGISTER, with their expiry counting on from before.
#[test]
fn bindings_survive_sigterm_restart() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let run = sipp_ok(
        &pbx,
        "register_contact.xml",
        &["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "contact", "<sip:100@127.0.0.1:7201>"]
            .into_iter()
            .chain(["-key", "expires", "600", "-m", "1"])
            .collect::<Vec<_>>(),
    );
    assert_eq!(run.received_codes(), vec![401, 200], "{}", run.messages);
    assert_eq!(status_code(&register(&pbx, "100", "secret-100", "sip:100@127.0.0.1:7202", 900)), Some(200));
    assert_eq!(status_code(&register(&pbx, "101", "secret-101", "sip:101@127.0.0.1:7203", 300)), Some(200));
    let mut before: Vec<String> = pbx.registrations().iter().map(|r| r["contact"].as_str().unwrap().into()).collect();
    before.sort();

    pbx.restart();

    let registrations = pbx.registrations();
    let mut after: Vec<String> = registrations.iter().map(|r| r["contact"].as_str().unwrap().into()).collect();
    after.sort();
    assert_eq!(after, before, "{registrations:?}");
    for r in &registrations {
        let expires = r["expires_in_s"].as_u64().unwrap();
        let asked = match r["contact"].as_str().unwrap() {
            "sip:100@127.0.0.1:7201" => 600,
            "sip:100@127.0.0.1:7202" => 900,
            _ => 300,
        };
        assert!(expires <= asked && expires + 30 >= asked, "{r}");
    }
    let query = query_bindings(&pbx, "100", "secret-100");
    assert_eq!(status_code(&query), Some(200), "{query}");
    let mut listed: Vec<String> = listed_bindings(&query).into_iter().map(|(uri, _)| uri).collect();
    listed.sort();
    assert_eq!(listed, vec!["sip:100@127.0.0.1:7201".to_string(), "sip:100@127.0.0.1:7202".to_string()], "{query}");
}

/// A refresh (same Call-ID, higher CSeq, batched for `refresh_flush_s`) acknowledged before a
/// SIGTERM is not lost: the clean stop writes it, and after restart the binding has the new
/// expiry.
#[test]
fn refresh_survives_sigterm_restart() {
    let mut pbx = Pbx::start(PbxOptions::default().registrar("refresh_flush_s = 3600"));
    let args = ["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "expires", "100"];
    let run =
        sipp_ok(&pbx, "register_refresh.xml", &[&args[..], &["-key", "refresh_expires", "3000", "-m", "1"]].concat());
    assert_eq!(run.received_codes(), vec![401, 200, 401, 200], "{}", run.messages);
    let before = pbx.registrations();
    assert!(before.len() == 1 && before[0]["expires_in_s"].as_u64().unwrap() > 2900, "{before:?}");

    pbx.restart();

    let after = pbx.registrations();
    assert_eq!(after.len(), 1, "{after:?}");
    let expires = after[0]["expires_in_s"].as_u64().unwrap();
    assert!(expires > 2900, "the refresh to 3000 s was lost on restart: expires_in_s = {expires}\n{after:?}");
}

/// `kill -9` right after the 200 OK for a new binding loses nothing: the binding was on disk
/// before the 200 was sent.
#[test]
fn new_binding_survives_kill9_right_after_200() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let ok = register(&pbx, "101", "secret-101", "sip:101@127.0.0.1:7210", 600);
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    pbx.kill9();
    pbx.start_again();
    let registrations = pbx.registrations();
    assert_eq!(pbx.contacts_of("101"), vec!["sip:101@127.0.0.1:7210".to_string()], "{registrations:?}");
    assert!(registrations[0]["expires_in_s"].as_u64().is_some_and(|e| e > 500), "{registrations:?}");
    let query = query_bindings(&pbx, "101", "secret-101");
    assert_eq!(listed_bindings(&query).len(), 1, "{query}");
}

/// A binding removed (Expires 0) and acknowledged before `kill -9` stays removed after start.
#[test]
fn removal_survives_kill9_right_after_200() {
    let mut pbx = Pbx::start(PbxOptions::default());
    assert_eq!(status_code(&register(&pbx, "100", "secret-100", "sip:100@127.0.0.1:7211", 600)), Some(200));
    assert_eq!(status_code(&register(&pbx, "100", "secret-100", "sip:100@127.0.0.1:7211", 0)), Some(200));
    pbx.kill9();
    pbx.start_again();
    assert!(pbx.registrations().is_empty(), "{:?}", pbx.registrations());
}

/// An extension created through the API survives a SIGTERM restart and a `kill -9`: it is
/// listed and its password still registers.
#[test]
fn api_extension_survives_restart_and_kill9() {
    let mut pbx = Pbx::start(PbxOptions::default());
    let body = r#"{"number":"800","password":"pw-of-eight-hundred","display_name":"Annex"}"#;
    assert_eq!(pbx.api("POST", "/api/v1/extensions", Some(body)).0, 201);

    pbx.restart();
    let (code, one) = pbx.api("GET", "/api/v1/extensions/800", None);
    assert_eq!(code, 200, "{one}");
    assert!(one.contains("Annex"), "{one}");
    let ok = register(&pbx, "800", "pw-of-eight-hundred", "sip:800@127.0.0.1:7220", 300);
    assert_eq!(status_code(&ok), Some(200), "{ok}");

    let body = r#"{"number":"801","password":"pw-of-eight-o-one"}"#;
    assert_eq!(pbx.api("POST", "/api/v1/extensions", Some(body)).0, 201);
    pbx.kill9();
    pbx.start_again();
    assert_eq!(pbx.api("GET", "/api/v1/extensions/801", None).0, 200);
    let ok = register(&pbx, "801", "pw-of-eight-o-one", "sip:801@127.0.0.1:7221", 300);
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    assert_eq!(pbx.contacts_of("800"), vec!["sip:800@127.0.0.1:7220".to_string()]);
}

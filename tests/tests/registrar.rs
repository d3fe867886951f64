//! The registrar end to end: the real `pbx` binary, SIPp and a raw SIP client on 127.0.0.1.
//!
//! SIPp (MD5 only, answers the first challenge) drives everything a real phone does; the raw
//! client covers what SIPp cannot: SHA-256, stale nonces, nonce-count replay, several contacts in
//! one REGISTER, methods other than REGISTER.

use pbx_tests::*;
use std::time::Duration;

/// A REGISTER with `contact` lines for `user` over a fresh UDP client; the final response.
fn register_raw(pbx: &Pbx, user: &str, password: &str, extra: &[&str]) -> String {
    let mut client = SipClient::udp(pbx.sip);
    client.register(user, password, "MD5", extra).expect("an answer to REGISTER")
}

/// The API's `expires_in_s` of one contact.
fn expires_in_s(pbx: &Pbx, contact: &str) -> u64 {
    let registrations = pbx.registrations();
    let found = registrations.iter().find(|r| r["contact"] == contact);
    found.and_then(|r| r["expires_in_s"].as_u64()).unwrap_or_else(|| panic!("{contact} not in {registrations:?}"))
}

/// The names of a `Digest` challenge's parameters, in order.
fn challenge_param_names(challenge: &str) -> Vec<String> {
    let body = challenge.trim_start_matches("Digest").trim();
    body.split(',').filter_map(|p| p.split_once('=')).map(|(k, _)| k.trim().to_ascii_lowercase()).collect()
}

/// A challenge with its nonce and opaque values blanked: what must not depend on the user.
fn challenge_without_nonce(challenge: &str) -> String {
    let body = challenge.trim_start_matches("Digest").trim();
    body.split(',')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if matches!(k.trim(), "nonce" | "opaque") => format!("{}=…", k.trim()),
            _ => p.trim().to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// SIPp registers extension 100 with MD5 digest; the API then lists the binding.
#[test]
fn sipp_registers_with_md5_digest() {
    let pbx = Pbx::start(PbxOptions::default());
    let run = sipp(
        &pbx,
        "register_auth.xml",
        &["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "expires", "120", "-m", "1"],
    );
    assert!(run.success, "sipp failed: {}\n{}", run.errors, run.messages);
    assert_eq!(run.received_codes(), vec![401, 200]);
    let contacts = pbx.contacts_of("100");
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert!(contacts[0].starts_with("sip:100@127.0.0.1:"), "{contacts:?}");
}

/// A raw client registers with SHA-256 (SIPp knows only MD5), over UDP and over TCP.
#[test]
fn raw_client_registers_with_sha256_over_udp_and_tcp() {
    let pbx = Pbx::start(PbxOptions::default());
    for mut client in [SipClient::udp(pbx.sip), SipClient::tcp(pbx.sip)] {
        let contact = format!("Contact: <sip:101@{}>", client.local());
        let ok = client.register("101", "secret-101", "SHA-256", &[&contact, "Expires: 300"]).expect("an answer");
        assert_eq!(status_code(&ok), Some(200), "{ok}");
        assert!(header_values(&ok, "Contact").iter().any(|c| c.contains(";expires=")), "{ok}");
    }
    let registrations = pbx.registrations();
    let transports: Vec<_> = registrations.iter().map(|r| r["transport"].as_str().unwrap().to_string()).collect();
    assert_eq!(registrations.len(), 2, "{registrations:?}");
    assert!(transports.contains(&"UDP".to_string()) && transports.contains(&"TCP".to_string()), "{transports:?}");
}

/// SIPp with a wrong password is challenged again (401, 401), binds nothing, and is counted.
#[test]
fn sipp_wrong_password_gets_401_again() {
    let pbx = Pbx::start(PbxOptions::default());
    let run =
        sipp_ok(&pbx, "register_wrong_password.xml", &["-s", "100", "-au", "100", "-ap", "not-the-secret", "-m", "1"]);
    assert_eq!(run.received_codes(), vec![401, 401], "{}", run.messages);
    assert!(pbx.registrations().is_empty(), "{:?}", pbx.registrations());
    assert!(pbx.metric("pbx_auth_failures_total").is_some_and(|n| n >= 1.0), "{}", pbx.metrics());
}

/// An unknown user gets the very same final 401 as a wrong password: status line, header order
/// and challenge parameters; only nonce, opaque (and the To tag, Call-ID, …) differ.
#[test]
fn sipp_unknown_user_is_indistinguishable_from_wrong_password() {
    let pbx = Pbx::start(PbxOptions::default());
    let wrong =
        sipp_ok(&pbx, "register_wrong_password.xml", &["-s", "100", "-au", "100", "-ap", "not-the-secret", "-m", "1"]);
    let unknown =
        sipp_ok(&pbx, "register_wrong_password.xml", &["-s", "999", "-au", "999", "-ap", "not-the-secret", "-m", "1"]);
    assert_eq!(wrong.received_codes(), vec![401, 401], "{}", wrong.messages);
    assert_eq!(unknown.received_codes(), vec![401, 401], "{}", unknown.messages);
    let (wrong, unknown) = (&wrong.received()[1], &unknown.received()[1]);
    assert_eq!(wrong.lines().next(), unknown.lines().next(), "status lines differ:\n{wrong}\n---\n{unknown}");
    assert_eq!(header_names(wrong), header_names(unknown), "header order differs:\n{wrong}\n---\n{unknown}");
    let (wrong_challenges, unknown_challenges) =
        (header_values(wrong, "WWW-Authenticate"), header_values(unknown, "WWW-Authenticate"));
    assert_eq!(wrong_challenges.len(), 2, "{wrong}");
    assert_eq!(wrong_challenges.len(), unknown_challenges.len(), "{wrong}\n---\n{unknown}");
    for (w, u) in wrong_challenges.iter().zip(&unknown_challenges) {
        assert_eq!(challenge_param_names(w), challenge_param_names(u), "{w}\n{u}");
        assert_eq!(challenge_without_nonce(w), challenge_without_nonce(u), "{w}\n{u}");
        assert!(!w.contains("stale"), "a wrong password is not a stale nonce: {w}");
    }
    for name in ["Content-Length", "Allow", "Server", "Warning", "Retry-After"] {
        assert_eq!(header_values(wrong, name), header_values(unknown, name), "{name} differs");
    }
    assert!(pbx.metric("pbx_auth_failures_total").is_some_and(|n| n >= 2.0), "{}", pbx.metrics());
}

/// Refreshing a binding with the same Call-ID and a higher CSeq keeps one binding and renews
/// its expiry.
#[test]
fn sipp_refresh_in_same_call_renews_the_binding() {
    let pbx = Pbx::start(PbxOptions::default());
    let args = ["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "expires", "100"];
    let run =
        sipp_ok(&pbx, "register_refresh.xml", &[&args[..], &["-key", "refresh_expires", "900", "-m", "1"]].concat());
    assert_eq!(run.received_codes(), vec![401, 200, 401, 200], "{}", run.messages);
    let registrations = pbx.registrations();
    assert_eq!(registrations.len(), 1, "{registrations:?}");
    let expires = registrations[0]["expires_in_s"].as_u64().unwrap();
    assert!((800..=900).contains(&expires), "refresh asked for 900 s, API says {expires}: {registrations:?}");
}

/// A second SIPp run (new Call-ID) registering the same contact replaces the binding: still one,
/// with the new expiry.
#[test]
fn sipp_reregister_of_same_contact_keeps_one_binding() {
    let pbx = Pbx::start(PbxOptions::default());
    let contact = "<sip:100@127.0.0.1:7100>";
    let register = |expires: &str| {
        let args =
            ["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "contact", contact, "-key", "expires", expires];
        sipp_ok(&pbx, "register_contact.xml", &[&args[..], &["-m", "1"]].concat())
    };
    register("100");
    assert!(expires_in_s(&pbx, "sip:100@127.0.0.1:7100") <= 100);
    let run = register("1000");
    assert_eq!(run.received_codes(), vec![401, 200], "{}", run.messages);
    assert_eq!(pbx.contacts_of("100"), vec!["sip:100@127.0.0.1:7100".to_string()]);
    let expires = expires_in_s(&pbx, "sip:100@127.0.0.1:7100");
    assert!((900..=1000).contains(&expires), "re-register asked for 1000 s, API says {expires}");
}

/// `Expires: 0` on one contact removes that binding and leaves the others.
#[test]
fn sipp_unregisters_one_contact_with_expires_0() {
    let pbx = Pbx::start(PbxOptions::default());
    let register = |contact: &str, expires: &str| {
        let args =
            ["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "contact", contact, "-key", "expires", expires];
        sipp_ok(&pbx, "register_contact.xml", &[&args[..], &["-m", "1"]].concat())
    };
    register("<sip:100@127.0.0.1:7101>", "300");
    register("<sip:100@127.0.0.1:7102>", "300");
    assert_eq!(pbx.contacts_of("100").len(), 2, "{:?}", pbx.registrations());
    let run = register("<sip:100@127.0.0.1:7101>", "0");
    assert_eq!(run.received_codes(), vec![401, 200], "{}", run.messages);
    assert_eq!(pbx.contacts_of("100"), vec!["sip:100@127.0.0.1:7102".to_string()]);
    register("<sip:100@127.0.0.1:7102>", "0");
    assert!(pbx.registrations().is_empty(), "{:?}", pbx.registrations());
}

/// `Contact: *` with `Expires: 0` removes every binding of the extension, and only its own.
#[test]
fn sipp_unregisters_all_with_contact_star() {
    let pbx = Pbx::start(PbxOptions::default());
    let register = |user: &str, password: &str, contact: &str, expires: &str| {
        let args = ["-s", user, "-au", user, "-ap", password, "-key", "contact", contact, "-key", "expires", expires];
        sipp_ok(&pbx, "register_contact.xml", &[&args[..], &["-m", "1"]].concat())
    };
    register("100", "secret-100", "<sip:100@127.0.0.1:7103>", "300");
    register("100", "secret-100", "<sip:100@127.0.0.1:7104>", "300");
    register("101", "secret-101", "<sip:101@127.0.0.1:7105>", "300");
    assert_eq!(pbx.registrations().len(), 3, "{:?}", pbx.registrations());
    let run = register("100", "secret-100", "*", "0");
    assert_eq!(run.received_codes(), vec![401, 200], "{}", run.messages);
    assert!(pbx.contacts_of("100").is_empty(), "{:?}", pbx.registrations());
    assert_eq!(pbx.contacts_of("101"), vec!["sip:101@127.0.0.1:7105".to_string()]);
    let query = query_bindings(&pbx, "100", "secret-100");
    assert_eq!(status_code(&query), Some(200), "{query}");
    assert!(listed_bindings(&query).is_empty(), "{query}");
}

/// A REGISTER without Contact (SIPp) changes nothing and its 200 lists every binding with its
/// remaining seconds.
#[test]
fn sipp_query_register_lists_bindings_with_expires() {
    let pbx = Pbx::start(PbxOptions::default());
    for (contact, expires) in [("<sip:100@127.0.0.1:7106>", "300"), ("<sip:100@127.0.0.1:7107>", "600")] {
        let args =
            ["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "contact", contact, "-key", "expires", expires];
        sipp_ok(&pbx, "register_contact.xml", &[&args[..], &["-m", "1"]].concat());
    }
    let run = sipp_ok(&pbx, "register_query.xml", &["-s", "100", "-au", "100", "-ap", "secret-100", "-m", "1"]);
    assert_eq!(run.received_codes(), vec![401, 200], "{}", run.messages);
    let ok = &run.received()[1];
    let mut listed = listed_bindings(ok);
    listed.sort();
    assert_eq!(listed.len(), 2, "{ok}");
    assert_eq!(listed[0].0, "sip:100@127.0.0.1:7106", "{ok}");
    assert!((290..=300).contains(&listed[0].1), "{ok}");
    assert_eq!(listed[1].0, "sip:100@127.0.0.1:7107", "{ok}");
    assert!((590..=600).contains(&listed[1].1), "{ok}");
    assert_eq!(pbx.contacts_of("100").len(), 2, "a query must not change bindings: {:?}", pbx.registrations());
}

/// An Expires below `min_expires_s` (SIPp) gets 423 Interval Too Brief with Min-Expires, and
/// binds nothing.
#[test]
fn sipp_too_brief_expires_gets_423_with_min_expires() {
    let pbx = Pbx::start(PbxOptions::default().registrar("min_expires_s = 60"));
    let args = ["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "expires", "10", "-m", "1"];
    let run = sipp_ok(&pbx, "register_too_brief.xml", &args);
    assert_eq!(run.received_codes(), vec![401, 423], "{}", run.messages);
    let too_brief = &run.received()[1];
    assert!(too_brief.starts_with("SIP/2.0 423 Interval Too Brief"), "{too_brief}");
    assert_eq!(header_values(too_brief, "Min-Expires"), vec!["60".to_string()], "{too_brief}");
    assert!(pbx.registrations().is_empty(), "{:?}", pbx.registrations());
}

/// One extension holds several contacts at once: from one REGISTER (comma list and two Contact
/// lines) and from another phone; the 200 lists them all.
#[test]
fn several_contacts_bind_to_one_extension() {
    let pbx = Pbx::start(PbxOptions::default());
    let ok = register_raw(
        &pbx,
        "100",
        "secret-100",
        &[
            "Contact: <sip:100@127.0.0.1:7111>, <sip:100@127.0.0.1:7112>",
            "Contact: <sip:100@127.0.0.1:7113>;expires=120",
            "Expires: 300",
        ],
    );
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    assert_eq!(listed_bindings(&ok).len(), 3, "{ok}");
    let run = sipp_ok(
        &pbx,
        "register_auth.xml",
        &["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "expires", "120", "-m", "1"],
    );
    let listed = listed_bindings(&run.received()[1]);
    assert_eq!(listed.len(), 4, "{}", run.received()[1]);
    let contacts = pbx.contacts_of("100");
    assert_eq!(contacts.len(), 4, "{contacts:?}");
    for port in [7111, 7112, 7113] {
        assert!(contacts.contains(&format!("sip:100@127.0.0.1:{port}")), "{port} missing: {contacts:?}");
    }
    let param_expires = expires_in_s(&pbx, "sip:100@127.0.0.1:7113");
    assert!((110..=120).contains(&param_expires), "the expires=120 param beats Expires: 300: {param_expires}");
}

/// Issue 14's one-REGISTER crash: with ten bindings (the per-extension limit), a REGISTER
/// that adds an eleventh contact and removes the first is answered 200 (one in, one out), the
/// registrar stays up — no restart, the node ready — and another phone registers right after.
#[test]
fn add_and_remove_at_the_binding_limit_is_answered_and_the_node_serves_on() {
    let pbx = Pbx::start(PbxOptions::default());
    let ten: Vec<String> = (0..10).map(|n| format!("<sip:100@127.0.0.1:{}>", 7200 + n)).collect();
    let contacts = format!("Contact: {}", ten.join(", "));
    let ok = register_raw(&pbx, "100", "secret-100", &[&contacts, "Expires: 300"]);
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    assert_eq!(pbx.contacts_of("100").len(), 10);

    let swap = "Contact: <sip:100@127.0.0.1:7299>, <sip:100@127.0.0.1:7200>;expires=0";
    let ok = register_raw(&pbx, "100", "secret-100", &[swap, "Expires: 300"]);
    assert_eq!(status_code(&ok), Some(200), "{ok}\n{}", pbx.log());
    let contacts = pbx.contacts_of("100");
    assert_eq!(contacts.len(), 10, "{contacts:?}");
    assert!(contacts.contains(&"sip:100@127.0.0.1:7299".to_string()), "{contacts:?}");
    assert!(!contacts.contains(&"sip:100@127.0.0.1:7200".to_string()), "{contacts:?}");

    let other = register_raw(&pbx, "101", "secret-101", &["Contact: <sip:101@127.0.0.1:7300>"]);
    assert_eq!(status_code(&other), Some(200), "{other}");
    assert_eq!(pbx.metric("pbx_actor_restarts_total{actor=\"registrar\"}"), Some(0.0), "{}", pbx.metrics());
    let (code, ready) = pbx.readyz();
    assert_eq!(code, 200, "{ready}");
}

/// A binding registered for 2 s is gone within 6 s without any further SIP traffic (API and
/// the active-registrations gauge), and a query REGISTER lists none.
#[test]
fn binding_expires_after_its_interval() {
    let pbx = Pbx::start(PbxOptions::default().registrar("min_expires_s = 1"));
    let args = ["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "contact", "<sip:100@127.0.0.1:7120>"];
    let run = sipp_ok(&pbx, "register_contact.xml", &[&args[..], &["-key", "expires", "2", "-m", "1"]].concat());
    assert_eq!(run.received_codes(), vec![401, 200], "{}", run.messages);
    assert_eq!(pbx.contacts_of("100").len(), 1);
    let gone = wait_until(Duration::from_secs(6), || {
        pbx.registrations().is_empty() && pbx.metric("pbx_registrations_active") == Some(0.0)
    });
    assert!(gone, "binding still there after 6 s: {:?}\n{}", pbx.registrations(), pbx.metrics());
    let query = query_bindings(&pbx, "100", "secret-100");
    assert_eq!(status_code(&query), Some(200), "{query}");
    assert!(listed_bindings(&query).is_empty(), "{query}");
}

/// After `auth_failures_max` wrong passwords for 100 from 127.0.0.1, 100 is blocked from that
/// address: even the right password gets 403, while 101 from the same address still
/// registers (the block is per source and user); /metrics counts the failures and the block.
#[test]
fn repeated_failures_block_the_user_from_that_source() {
    let pbx = Pbx::start(PbxOptions::default().registrar("auth_failures_max = 3").registrar("block_s = 60"));
    let mut client = SipClient::udp(pbx.sip);
    let contact = format!("Contact: <sip:100@{}>", client.local());
    for attempt in 1..=3 {
        let refused = client.register("100", "wrong-password", "MD5", &[&contact, "Expires: 60"]).expect("an answer");
        assert_eq!(status_code(&refused), Some(401), "attempt {attempt}: {refused}");
    }
    let blocked = client.register("100", "secret-100", "MD5", &[&contact, "Expires: 60"]).expect("an answer");
    assert_eq!(status_code(&blocked), Some(403), "{blocked}");
    let other = register_raw(&pbx, "101", "secret-101", &["Contact: <sip:101@127.0.0.1:7130>"]);
    assert_eq!(status_code(&other), Some(200), "the block is per source and user: {other}");
    assert_eq!(pbx.contacts_of("100"), Vec::<String>::new(), "{:?}", pbx.registrations());
    assert!(pbx.metric("pbx_blocked_sources_total").is_some_and(|n| n >= 1.0), "{}", pbx.metrics());
    assert!(pbx.metric("pbx_auth_failures_total").is_some_and(|n| n >= 3.0), "{}", pbx.metrics());
}

/// A correct digest whose `uri` is not the Request-URI is refused 400 and counted; an answer
/// without qop is challenged again (401) and not counted; neither binds anything.
#[test]
fn digest_uri_mismatch_is_400_and_answer_without_qop_is_refused() {
    let pbx = Pbx::start(PbxOptions::default());
    let mut client = SipClient::udp(pbx.sip);
    let uri = format!("sip:{}", pbx.sip);
    let contact = format!("Contact: <sip:100@{}>", client.local());
    let md5 = |m: &str| header_values(m, "WWW-Authenticate").into_iter().find(|c| c.contains("MD5")).expect("MD5");
    let first = client.request("REGISTER", &uri, "100", None, &[&contact]);
    let challenge = client.transact(&first).expect("a challenge");
    let elsewhere = authorization(&md5(&challenge), "100", "secret-100", "REGISTER", "sip:elsewhere.example", 1);
    let second = client.request("REGISTER", &uri, "100", None, &[&contact, &format!("Authorization: {elsewhere}")]);
    let refused = client.transact(&second).expect("an answer");
    assert_eq!(status_code(&refused), Some(400), "{refused}");
    assert_eq!(pbx.metric("pbx_auth_failures_total"), Some(1.0), "{}", pbx.metrics());

    let third = client.request("REGISTER", &uri, "100", None, &[&contact]);
    let challenge = client.transact(&third).expect("a challenge");
    let c = md5(&challenge);
    let (realm, nonce) = (param(&c, "realm").unwrap(), param(&c, "nonce").unwrap());
    let ha1 = hash_hex("MD5", &format!("100:{realm}:secret-100"));
    let ha2 = hash_hex("MD5", &format!("REGISTER:{uri}"));
    let response = hash_hex("MD5", &format!("{ha1}:{nonce}:{ha2}"));
    let rfc2069 = format!(
        r#"Authorization: Digest username="100", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{response}""#
    );
    let fourth = client.request("REGISTER", &uri, "100", None, &[&contact, &rfc2069]);
    let again = client.transact(&fourth).expect("an answer");
    assert_eq!(status_code(&again), Some(401), "{again}");
    assert_eq!(pbx.metric("pbx_auth_failures_total"), Some(1.0), "not counted: {}", pbx.metrics());
    assert!(pbx.registrations().is_empty(), "{:?}", pbx.registrations());
}

/// OPTIONS is answered 200 with Allow, over UDP and TCP.
#[test]
fn options_gets_200_with_allow() {
    let pbx = Pbx::start(PbxOptions::default());
    for mut client in [SipClient::udp(pbx.sip), SipClient::tcp(pbx.sip)] {
        let request = client.request("OPTIONS", &format!("sip:{}", pbx.sip), "100", None, &[]);
        let ok = client.transact(&request).expect("an answer to OPTIONS");
        assert_eq!(status_code(&ok), Some(200), "{ok}");
        let allow = header_values(&ok, "Allow").join(",");
        assert!(allow.contains("REGISTER") && allow.contains("OPTIONS"), "{ok}");
    }
}

/// Methods the node does not serve (SUBSCRIBE, MESSAGE, PUBLISH) get 405 with Allow.
#[test]
fn unsupported_methods_get_405_with_allow() {
    let pbx = Pbx::start(PbxOptions::default());
    for mut client in [SipClient::udp(pbx.sip), SipClient::tcp(pbx.sip)] {
        for method in ["SUBSCRIBE", "MESSAGE", "PUBLISH"] {
            let extra: &[&str] = if method == "SUBSCRIBE" { &["Event: presence", "Expires: 60"] } else { &[] };
            let request = client.request(method, "sip:100@127.0.0.1", "101", Some("100"), extra);
            let refused = client.transact(&request).unwrap_or_else(|| panic!("no answer to {method}"));
            assert_eq!(status_code(&refused), Some(405), "{method}: {refused}");
            let allow = header_values(&refused, "Allow").join(",");
            assert!(allow.contains("REGISTER") && allow.contains("OPTIONS"), "{method}: {refused}");
        }
    }
}

/// An answer to a challenge older than `nonce_lifetime_s` gets 401 with `stale=true`, and the
/// fresh challenge then works.
#[test]
fn stale_nonce_gets_401_stale_true() {
    let pbx = Pbx::start(PbxOptions::default().registrar("nonce_lifetime_s = 1"));
    let mut client = SipClient::udp(pbx.sip);
    let uri = format!("sip:{}", pbx.sip);
    let contact = format!("Contact: <sip:100@{}>", client.local());
    let first = client.request("REGISTER", &uri, "100", None, &[&contact]);
    let challenge = client.transact(&first).expect("a challenge");
    assert_eq!(status_code(&challenge), Some(401), "{challenge}");
    let md5 = |m: &str| header_values(m, "WWW-Authenticate").into_iter().find(|c| c.contains("MD5")).expect("MD5");
    std::thread::sleep(Duration::from_secs(2));
    let late = format!("Authorization: {}", authorization(&md5(&challenge), "100", "secret-100", "REGISTER", &uri, 1));
    let second = client.request("REGISTER", &uri, "100", None, &[&contact, &late]);
    let stale = client.transact(&second).expect("an answer");
    assert_eq!(status_code(&stale), Some(401), "{stale}");
    let challenges = header_values(&stale, "WWW-Authenticate");
    assert!(
        !challenges.is_empty() && challenges.iter().all(|c| param(c, "stale").as_deref() == Some("true")),
        "{stale}"
    );
    let fresh = format!("Authorization: {}", authorization(&md5(&stale), "100", "secret-100", "REGISTER", &uri, 1));
    let third = client.request("REGISTER", &uri, "100", None, &[&contact, &fresh]);
    let ok = client.transact(&third).expect("an answer");
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    assert!(pbx.metric("pbx_auth_failures_total").is_none_or(|n| n == 0.0), "stale is no failure: {}", pbx.metrics());
}

/// A nonce count already used is refused (401) even from a fresh Call-ID; a higher count on the
/// same nonce is accepted.
#[test]
fn replayed_nonce_count_gets_401() {
    let pbx = Pbx::start(PbxOptions::default());
    let uri = format!("sip:{}", pbx.sip);
    let mut phone = SipClient::udp(pbx.sip);
    let contact = format!("Contact: <sip:100@{}>", phone.local());
    let first = phone.request("REGISTER", &uri, "100", None, &[&contact]);
    let challenge = phone.transact(&first).expect("a challenge");
    let md5 = header_values(&challenge, "WWW-Authenticate").into_iter().find(|c| c.contains("MD5")).expect("MD5");
    let nc1 = format!("Authorization: {}", authorization(&md5, "100", "secret-100", "REGISTER", &uri, 1));
    let second = phone.request("REGISTER", &uri, "100", None, &[&contact, &nc1]);
    let ok = phone.transact(&second).expect("an answer");
    assert_eq!(status_code(&ok), Some(200), "{ok}");

    let mut attacker = SipClient::udp(pbx.sip);
    let replay = attacker.request("REGISTER", &uri, "100", None, &["Contact: <sip:100@127.0.0.1:7140>", &nc1]);
    let refused = attacker.transact(&replay).expect("an answer");
    assert_eq!(status_code(&refused), Some(401), "replayed nc=1 accepted: {refused}");
    assert_eq!(pbx.contacts_of("100").len(), 1, "{:?}", pbx.registrations());

    let nc2 = format!("Authorization: {}", authorization(&md5, "100", "secret-100", "REGISTER", &uri, 2));
    let next = phone.request("REGISTER", &uri, "100", None, &[&contact, &nc2]);
    let ok = phone.transact(&next).expect("an answer");
    assert_eq!(status_code(&ok), Some(200), "nc=2 on the same nonce: {ok}");
}

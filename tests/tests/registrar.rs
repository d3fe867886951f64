//! The registrar end to end: the real `pbx` binary, SIPp and a raw SIP client on 127.0.0.1.

use pbx_tests::*;

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

//! Lockout end to end (issue 14): strangers guessing passwords cannot lock out real phones.
//!
//! The real `pbx` binary and two baresip phones (100, 101) on 127.0.0.1. A stranger on the
//! same IP address, another port (what a second device behind an office NAT looks like),
//! sends many bad digest REGISTERs for the phones' users and for a user that does not exist,
//! with nonces it fetched itself and with nonces fetched from 127.0.0.2 (what a spoofer can
//! use at best); guessers on 127.0.0.3–6 add failures for 100 until the user is locked. The
//! blocks and the lock are real (a fresh client with the right password is refused), yet both
//! phones keep refreshing their registrations and call each other.

use pbx_tests::baresip::Baresip;
use pbx_tests::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How often the phones refresh (baresip refreshes at 90 % of it).
const REGINT_S: u64 = 10;
/// Longest a phone may take to register or a call to be set up.
const TIMEOUT: Duration = Duration::from_secs(15);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A baresip registered as `user` refreshing every [`REGINT_S`].
fn phone(user: &str, pbx: SocketAddr, tone_hz: f64) -> Baresip {
    let account = format!(
        "<sip:{user}@{pbx};transport=udp>;auth_pass=secret-{user};answermode=auto;audio_codecs=PCMU,PCMA;regint={REGINT_S}"
    );
    Baresip::start(&account, tone_hz)
}

/// One REGISTER from `client` for `user` answered with a wrong password on `challenge`'s
/// nonce; the final answer's status.
fn bad_answer(client: &mut SipClient, pbx: SocketAddr, user: &str, challenge: &str) -> Option<u16> {
    let uri = format!("sip:{pbx}");
    let auth = authorization(challenge, user, "guess-guess", "REGISTER", &uri, 1);
    let contact = format!("Contact: <sip:{user}@{}>", client.local());
    let request = client.request("REGISTER", &uri, user, None, &[&contact, &format!("Authorization: {auth}")]);
    client.transact(&request).as_deref().and_then(status_code)
}

/// A fresh challenge for `user`, fetched by `client` (so bound to its address).
fn challenge(client: &mut SipClient, pbx: SocketAddr, user: &str) -> String {
    let request = client.request("REGISTER", &format!("sip:{pbx}"), user, None, &[]);
    let answer = client.transact(&request).expect("a challenge");
    assert_eq!(status_code(&answer), Some(401), "{answer}");
    header_values(&answer, "WWW-Authenticate").into_iter().next().expect("WWW-Authenticate")
}

/// Spoofed and shared-address guessing blocks the guessers and locks user 100 for untrusted
/// addresses, while the two registered phones keep registering and call each other.
#[test]
fn strangers_on_the_phones_address_cannot_lock_them_out() {
    let pbx = Pbx::start(PbxOptions::default().md5_only().registrar("min_expires_s = 5").own_rtp_ports(100));
    let mut alice = phone("100", pbx.sip, 1000.0);
    let mut bob = phone("101", pbx.sip, 600.0);
    assert!(wait_until(TIMEOUT, || alice.is_registered() && bob.is_registered()), "{}{}", alice.report(), bob.report());
    let phones = |pbx: &Pbx| (pbx.contacts_of("100").len(), pbx.contacts_of("101").len());
    assert_eq!(phones(&pbx), (1, 1), "{:?}", pbx.registrations());

    // The stranger behind the same address, and a spoofer's nonces (fetched from 127.0.0.2).
    let mut stranger = SipClient::udp(pbx.sip);
    let mut elsewhere = SipClient::udp_on(loopback(2), pbx.sip);
    for user in ["100", "101", "555"] {
        for _ in 0..10 {
            let foreign = challenge(&mut elsewhere, pbx.sip, user);
            assert_eq!(
                bad_answer(&mut stranger, pbx.sip, user, &foreign),
                Some(401),
                "a foreign nonce is re-challenged"
            );
        }
        let mut codes = Vec::new();
        for _ in 0..8 {
            let own = challenge(&mut stranger, pbx.sip, user);
            codes.push(bad_answer(&mut stranger, pbx.sip, user, &own));
        }
        assert_eq!(codes, [[Some(401); 5].as_slice(), &[Some(403); 3]].concat(), "{user}: blocked after 5");
    }
    assert!(
        pbx.metric("pbx_auth_ignored_total{reason=\"nonce\"}") == Some(30.0),
        "foreign nonces are ignored: {}",
        pbx.metrics()
    );
    assert_eq!(pbx.metric("pbx_auth_failures_total"), Some(15.0), "only the stranger's own nonces count");
    // Guessers on four other addresses: 5 more failures each for 100 lock it (20 in total).
    for last in 3..=6 {
        let mut guesser = SipClient::udp_on(loopback(last), pbx.sip);
        for _ in 0..5 {
            let own = challenge(&mut guesser, pbx.sip, "100");
            assert_eq!(bad_answer(&mut guesser, pbx.sip, "100", &own), Some(401));
        }
    }
    assert!(pbx.metric("pbx_users_locked_total").is_some_and(|n| n >= 1.0), "{}", pbx.metrics());

    // The blocks are real: the right password from a new port of the phones' address is 403,
    // from a new address 401 (100 is locked there).
    let mut newcomer = SipClient::udp(pbx.sip);
    let contact = format!("Contact: <sip:101@{}>", newcomer.local());
    let refused = newcomer.register("101", "secret-101", "MD5", &[&contact]).expect("an answer");
    assert_eq!(status_code(&refused), Some(403), "{refused}");
    let mut newcomer = SipClient::udp_on(loopback(9), pbx.sip);
    let contact = format!("Contact: <sip:100@{}>", newcomer.local());
    let locked = newcomer.register("100", "secret-100", "MD5", &[&contact]).expect("an answer");
    assert_eq!(status_code(&locked), Some(401), "{locked}");

    // The phones: still registered after more than a refresh interval, and they call.
    std::thread::sleep(Duration::from_secs(REGINT_S + 5));
    assert_eq!(phones(&pbx), (1, 1), "a phone lost its registration: {:?}", pbx.registrations());
    assert!(alice.is_registered() && bob.is_registered(), "{}{}", alice.report(), bob.report());
    alice.dial(&format!("sip:101@{}", pbx.sip));
    assert!(alice.wait_event("CALL_ESTABLISHED", TIMEOUT).is_some(), "{}", alice.report());
    assert!(bob.wait_event("CALL_ESTABLISHED", TIMEOUT).is_some(), "{}", bob.report());
    alice.hangup();
    assert!(alice.wait_event("CALL_CLOSED", TIMEOUT).is_some(), "{}", alice.report());
    assert!(bob.wait_event("CALL_CLOSED", TIMEOUT).is_some(), "{}", bob.report());
}

//! The softphone proxy end to end (issue 17, part 3): `pbx proxy` on its own ports, the PBX
//! dialling out to it over QUIC with mutual TLS, a real softphone (baresip, SRTP over TLS)
//! registered through the proxy calling a phone on the PBX, with the media through the proxy;
//! the proxy never holds the password; strangers' certificates are refused; a provisioning
//! document is served once and forgotten.

use pbx_tests::baresip::{Baresip, registered_account, registered_account_tls};
use pbx_tests::proxy::{self, Proxy};
use pbx_tests::*;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn status(pbx: &Pbx) -> serde_json::Value {
    let (code, body) = pbx.api("GET", "/api/v1/proxy", None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Every file under `dir`, read as bytes.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.push((path.clone(), std::fs::read(&path).expect("read file")));
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A baresip on TLS with mandatory SRTP registers through the proxy and calls a baresip
/// registered on the PBX over UDP: both hear each other's tone,
/// the media crossed the link (the PBX's stand-in counters), the registration is the phone's
/// connection at the proxy (transport TLS), and neither the proxy's data directory nor its
/// debug log holds the password, while the PBX's challenge went through it.
#[test]
fn a_softphone_behind_the_proxy_registers_and_calls_with_media_through_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut proxy = Proxy::start(dir.path());
    let password = "proxy-secret-7f3a9c";
    let mut options = PbxOptions::default().md5_only().own_rtp_ports(100).toml(&proxy.pbx_toml(&proxy.identity));
    options.extensions = vec![ext("100", password), ext("101", "secret-101")];
    let pbx = Pbx::start(options);
    assert!(
        wait_until(WAIT, || status(&pbx)["linked"] == true),
        "not linked: {}\n{}\n{}",
        status(&pbx),
        pbx.log(),
        proxy.output()
    );
    let mut alice = Baresip::start(&registered_account_tls("100", password, proxy.tls, Some("srtp-mand")), 1000.0);
    let mut bob = Baresip::start(&registered_account("101", "secret-101", pbx.sip), 600.0);
    assert!(
        wait_until(WAIT, || alice.is_registered() && bob.is_registered()),
        "{}{}\n{}",
        alice.report(),
        bob.report(),
        proxy.output()
    );
    let registration = pbx.registrations().into_iter().find(|r| r["aor"] == "100").expect("100 registered");
    assert_eq!(registration["transport"], "TLS", "{registration}");
    assert_eq!(status(&pbx)["softphones"], 1);
    // Debug mode on at the proxy for this PBX: 2 days from now (the API's answer).
    let (code, body) = pbx.api("PUT", "/api/v1/proxy/debug", Some(r#"{"days":2}"#));
    assert_eq!(code, 200, "{body}");
    let until: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(until["debug_until"].as_str().is_some_and(|t| t.ends_with('Z')), "{until}");

    alice.dial(&format!("sip:101@{};transport=tls", proxy.tls));
    assert!(alice.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}\n{}", alice.report(), pbx.log());
    assert!(bob.wait_event("CALL_ESTABLISHED", WAIT).is_some(), "{}", bob.report());
    std::thread::sleep(Duration::from_secs(3));
    alice.hangup();
    assert!(alice.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", alice.report());
    assert!(bob.wait_event("CALL_CLOSED", WAIT).is_some(), "{}", bob.report());
    assert!(alice.log().contains("SRTP is Enabled"), "{}", alice.report());
    for (phone, hz) in [(&bob, 1000.0), (&alice, 600.0)] {
        phone.assert_hears(hz);
    }
    for direction in ["to_proxy", "from_proxy"] {
        let packets = pbx.metric(&format!("pbx_proxy_media_packets_total{{direction=\"{direction}\"}}")).unwrap_or(0.0);
        assert!(packets > 100.0, "{packets} media packets {direction}");
    }

    // The subject's export carries what the proxy holds about 100: its session (the seed's
    // fields) and, debug mode being on, the destination of its call; erasure deletes both.
    let export = |pbx: &Pbx| -> serde_json::Value {
        let (code, body) = pbx.api("GET", "/api/v1/privacy/subjects/100/export", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["softphone_proxy"].clone()
    };
    let held = export(&pbx);
    let session = &held["sessions"][0];
    assert_eq!(session["user"], "100", "{held}");
    assert_eq!(session["pbx_serial"].as_str().map(|s| s.starts_with("PBX-")), Some(true), "{held}");
    assert!(session["softphone"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{held}");
    assert!(session["last_use"].as_str().is_some(), "{held}");
    let destinations: Vec<&str> =
        held["debug_records"].as_array().unwrap().iter().filter_map(|r| r["destination"].as_str()).collect();
    assert!(destinations.iter().any(|d| d.contains("101")), "{held}");
    let records = held["sessions"].as_array().unwrap().len() + held["debug_records"].as_array().unwrap().len();
    let (code, body) = pbx.api("POST", "/api/v1/privacy/subjects/100/erase", None);
    assert_eq!(code, 200, "{body}");
    let erased: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(erased["softphone_proxy"]["records"].as_u64(), Some(records as u64), "{erased}");
    // (pbx itself now holds nothing about 100, so its export is a 404: the proxy's ledger tests
    // show the erased records gone from proxy.redb.)

    // The proxy relayed the PBX's challenge and the phone's digest answer, never the password.
    proxy.stop();
    let stored = files_under(&proxy.data);
    assert!(
        stored.iter().any(|(p, _)| p.ends_with("proxy.redb")),
        "the proxy keeps its records: {:?}",
        stored.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    for (path, bytes) in &stored {
        assert!(!contains(bytes, password.as_bytes()), "{} holds the password", path.display());
    }
    let log = proxy.output();
    assert!(log.contains("PBX linked"), "{log}");
    assert!(!log.contains(password), "the proxy's log holds the password");
}

/// A link whose certificate is not this proxy's PBX's is refused: a PBX with a certificate
/// from another proxy CA (unknown issuer) never links, and a client presenting the proxy's own
/// certificate (right CA, wrong name) is closed by the proxy at once. The proxy's PBX links
/// after both.
#[test]
fn a_link_without_the_pbx_certificate_is_refused() {
    use pbx_cluster::identity::{NodeIdentity, NodeName};
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(dir.path());

    let foreign = dir.path().join("foreign");
    proxy::init(&foreign);
    let stranger = Pbx::start(PbxOptions::default().toml(&proxy.pbx_toml(&foreign)));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&stranger)["linked"], false, "{}", proxy.output());
    assert!(stranger.log().contains("softphone proxy not reached"), "{}", stranger.log());
    drop(stranger);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let name = NodeName::new("proxy").unwrap();
        let id = NodeIdentity::load(&proxy.identity, &name).expect("the proxy's certificate");
        let endpoint =
            pbx_cluster::link::client_endpoint(&id, "127.0.0.1:0".parse().unwrap(), b"pbx-proxy/1").expect("endpoint");
        let link = pbx_cluster::link::connect(&endpoint, proxy.link, &name).await.expect("the CA vouches for it");
        let closed = tokio::time::timeout(WAIT, link.connection.closed()).await.expect("closed by the proxy");
        assert!(closed.to_string().contains("not the PBX"), "{closed}");
    });
    let log = proxy.output();
    assert!(log.contains("PBX link refused") && log.contains("UnknownIssuer"), "{log}");
    assert!(log.contains("the certificate is not the PBX's"), "{log}");

    let pbx = Pbx::start(PbxOptions::default().toml(&proxy.pbx_toml(&proxy.identity)));
    assert!(wait_until(WAIT, || status(&pbx)["linked"] == true), "{}", proxy.output());
}

/// Provisioning through the proxy: the PBX hands over a softphone's configuration (no
/// password in it) and gets an enrolment code; the first fetch gets the document, the second
/// nothing; an unknown extension gets 404 at the PBX.
#[test]
fn a_provisioning_document_is_served_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(dir.path());
    let pbx = Pbx::start(PbxOptions::default().toml(&proxy.pbx_toml(&proxy.identity)));
    assert!(wait_until(WAIT, || status(&pbx)["linked"] == true), "{}", proxy.output());
    let (code, body) = pbx.api("POST", "/api/v1/proxy/provisioning", Some(r#"{"extension":"100"}"#));
    assert_eq!(code, 201, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let path = answer["path"].as_str().expect("path").to_string();
    let url = format!("https://{}{path}", proxy.provisioning);
    let client = proxy.client();
    // The document reaches the proxy over the link: wait for it, then it is there once.
    let mut first = None;
    assert!(wait_until(WAIT, || {
        let mut response = client.get(&url).call().expect("GET");
        if response.status() == 200 {
            first = Some(response.body_mut().read_to_string().unwrap());
        }
        first.is_some()
    }));
    let document: serde_json::Value = serde_json::from_str(&first.unwrap()).expect("JSON document");
    assert_eq!(document["user"], "100", "{document}");
    assert_eq!(document["server"]["sip_tls"], proxy.tls.to_string(), "where to register: {document}");
    assert_eq!(document["server"]["tls_fingerprint"], proxy.fingerprint(), "the pin: {document}");
    assert!(!document.to_string().contains("secret-100"), "no password: {document}");
    let second = client.get(&url).call().expect("GET");
    assert_eq!(second.status(), 404, "served once");
    let (code, _) = pbx.api("POST", "/api/v1/proxy/provisioning", Some(r#"{"extension":"999"}"#));
    assert_eq!(code, 404);
}

/// Proxy seats are the licence's, and only a softphone that registers takes one: with one
/// seat, strangers connected through the proxy (not registering) hold none, so a softphone
/// registers past them; a second softphone's REGISTER with credentials is then answered
/// `403 Forbidden (no proxy seat)` (counted), and registers once the first has gone. Without
/// the licence's answer yet (no seats) the PBX does not link at all.
#[test]
fn softphones_through_the_proxy_are_bounded_by_the_licence_seats() {
    use pbx_tests::licence_server::Server;
    use serde_json::json;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let limits =
        json!({ "extensions": 10, "concurrent_calls": 8, "conference_rooms": 0, "proxy_seats": 1, "cluster_nodes": 1 });
    let grant = json!({ "features": [], "limits": limits, "valid_days": 30 });
    assert_eq!(server.call("PUT", "/admin/v1/serials/PBX-SEATS", grant, true).0, 200);
    let proxy = Proxy::start(&dir.path().join("proxy"));
    let options = PbxOptions::default()
        .licence("serial = \"PBX-SEATS\"")
        .licence(&format!("server_url = \"{}\"", server.url("")))
        .licence(&format!("public_key = \"{}\"", server.public_key().to_hex()))
        .licence(&format!("server_ca = {:?}", server.dir.join("tls-cert.pem")))
        .toml(&proxy.pbx_toml(&proxy.identity));
    let pbx = Pbx::start(options);
    assert!(
        wait_until(Duration::from_secs(30), || status(&pbx)["linked"] == true),
        "{}\n{}",
        pbx.log(),
        proxy.output()
    );

    // Strangers connect and speak, but never register: they hold no seat.
    let strangers: Vec<SipClient> = (0..3)
        .map(|_| {
            let mut stranger = SipClient::tcp(proxy.tcp);
            let register = stranger.request("REGISTER", &format!("sip:{}", proxy.tcp), "100", None, &["Expires: 600"]);
            let challenge = stranger.transact(&register).expect("answered through the proxy");
            assert_eq!(status_code(&challenge), Some(401), "{challenge}");
            stranger
        })
        .collect();
    assert!(wait_until(WAIT, || status(&pbx)["softphones"] == 3), "{}", status(&pbx));
    assert_eq!(status(&pbx)["seated"], 0);

    let mut first = SipClient::tcp(proxy.tcp);
    let answer = first.register("100", "secret-100", "MD5", &["Expires: 600"]).expect("answered");
    assert_eq!(status_code(&answer), Some(200), "{answer}");
    assert_eq!(status(&pbx)["seated"], 1);

    let mut second = SipClient::tcp(proxy.tcp);
    let answer = second.register("101", "secret-101", "MD5", &["Expires: 600"]).expect("answered");
    assert_eq!(status_code(&answer), Some(403), "{answer}");
    assert!(answer.starts_with("SIP/2.0 403 Forbidden (no proxy seat)"), "{answer}");
    assert_eq!(pbx.metric("pbx_proxy_flows_refused_total{reason=\"seats\"}"), Some(1.0));
    assert!(pbx.log().contains("every licensed proxy seat is taken"), "{}", pbx.log());
    assert!(pbx.contacts_of("101").is_empty(), "refused before the registrar");

    // The first softphone goes: its seat is free again.
    drop(first);
    assert!(wait_until(WAIT, || status(&pbx)["seated"] == 0), "{}", status(&pbx));
    let answer = second.register("101", "secret-101", "MD5", &["Expires: 600"]).expect("answered");
    assert_eq!(status_code(&answer), Some(200), "{answer}");
    drop(strangers);
}

/// A softphone over UDP through the proxy (`--sip-udp-listen`: each source address a flow):
/// SIPp registers at the proxy's UDP port, a SIPp phone on the PBX calls it, the INVITE comes
/// down the flow (the PBX never sends to the phone's address itself), and each hears the
/// other's tone through the proxy's media ports. The proxy's session records the phone.
#[test]
fn a_softphone_over_udp_through_the_proxy_takes_a_call() {
    use pbx_tests::audio::{G711, G711_RATE_HZ, dominant_frequency, tone};
    use pbx_tests::rtp::{RtpSink, g711_audio, g711_stream_pcap};
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(dir.path());
    let pbx = Pbx::start(PbxOptions::default().own_rtp_ports(20).toml(&proxy.pbx_toml(&proxy.identity)));
    assert!(wait_until(WAIT, || status(&pbx)["linked"] == true), "{}", proxy.output());

    let pcap = |name: &str, hz: f64| {
        let path = pbx.scratch().join(name);
        g711_stream_pcap(&path, G711::Pcmu, &tone(hz, G711_RATE_HZ, 1.5, 8000.0)).expect("write pcap");
        path
    };
    let (caller_pcap, callee_pcap) = (pcap("caller.pcap", 1000.0), pcap("callee.pcap", 600.0));
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee = Sipp::new("call_register.xml", proxy.udp, &pbx.scratch())
        .args(&["-s", "101", "-au", "101", "-ap", "secret-101", "-m", "1", "-set", "expected_calls", "1"])
        .args(&["-oocsf", &asset("sipp/call_uas.xml").to_string_lossy()])
        .media(G711::Pcmu, &callee_sink, Some(&callee_pcap))
        .spawn();
    assert!(wait_until(WAIT, || !pbx.contacts_of("101").is_empty()), "{}\n{}", pbx.log(), proxy.output());
    assert_eq!(status(&pbx)["seated"], 1, "{}", status(&pbx));
    let sent_before = proxy.metric("pbx_proxy_udp_sent_total").unwrap_or(0.0);
    let caller = Sipp::new("call_uac.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &caller_sink, Some(&caller_pcap))
        .args(&["-d", "2000", "-m", "1"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee: {}\n{}", callee.report(), proxy.output());
    assert!(caller.received_codes().ends_with(&[200, 200]), "{:?}", caller.received_codes());
    // The INVITE, its ACK and the BYE went down the flow, not from the PBX's own socket.
    let sent = proxy.metric("pbx_proxy_udp_sent_total").unwrap_or(0.0) - sent_before;
    assert!(sent >= 3.0, "{sent} messages to the phone through the proxy during the call");
    let heard = g711_audio(&callee_sink.finish());
    assert_eq!(dominant_frequency(&heard, G711_RATE_HZ), 1000.0, "the callee hears the caller");
    let heard = g711_audio(&caller_sink.finish());
    assert_eq!(dominant_frequency(&heard, G711_RATE_HZ), 600.0, "the caller hears the callee");
    assert!(proxy.output().contains("sip udp:"), "{}", proxy.output());
}

/// Strangers over UDP at the proxy: twenty addresses of one host that speak but never
/// register get at most `PENDING_FLOWS_PER_SOURCE_MAX` (16) flows at the PBX (the rest are
/// refused and counted), a datagram that is not SIP changes nothing, and every such flow is
/// gone 32 s after it fell silent; a softphone then registers over UDP as usual.
#[test]
fn strangers_over_udp_at_the_proxy_hold_nothing_for_long() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(dir.path());
    let pbx = Pbx::start(PbxOptions::default().toml(&proxy.pbx_toml(&proxy.identity)));
    assert!(wait_until(WAIT, || status(&pbx)["linked"] == true), "{}", proxy.output());

    let strangers: Vec<SipClient> = (0..20)
        .map(|_| {
            let mut stranger = SipClient::udp(proxy.udp);
            let options = stranger.request("OPTIONS", &format!("sip:{}", proxy.udp), "100", None, &[]);
            stranger.send(&options);
            stranger
        })
        .collect();
    let refused = "pbx_proxy_flows_refused_total{reason=\"pending\"}";
    assert!(wait_until(WAIT, || pbx.metric(refused) >= Some(4.0)), "{:?}\n{}", pbx.metric(refused), pbx.log());
    let held = status(&pbx)["softphones"].as_u64().unwrap_or(u64::MAX);
    assert!(held <= 16, "{held} unregistered flows from one host");
    let garbage = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    garbage.send_to(&[0xff; 300], proxy.udp).expect("send");
    // Unregistered UDP flows last 32 s from their last datagram.
    let gone = wait_until(Duration::from_secs(45), || status(&pbx)["softphones"] == 0);
    assert!(gone, "{}\n{}", status(&pbx), proxy.output());
    drop(strangers);

    let mut phone = SipClient::udp(proxy.udp);
    let answer = phone.register("101", "secret-101", "MD5", &["Expires: 600"]).expect("answered");
    assert_eq!(status_code(&answer), Some(200), "{answer}");
    assert_eq!(status(&pbx)["seated"], 1);
}

/// Strangers at the proxy's softphone port: plain SIP on the TLS port is closed at its first
/// byte, a connection that never starts its handshake is closed after the handshake limit
/// (10 s), and the proxy goes on relaying for its PBX.
#[test]
fn strangers_at_the_proxy_are_closed() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(dir.path());
    let pbx = Pbx::start(PbxOptions::default().toml(&proxy.pbx_toml(&proxy.identity)));
    assert!(wait_until(WAIT, || status(&pbx)["linked"] == true), "{}", proxy.output());

    let closed_within = |stream: &mut std::net::TcpStream, limit: Duration| {
        stream.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 64];
        matches!(stream.read(&mut buf), Ok(0) | Err(_)) && {
            // A read error may be the timeout itself: tell the two apart.
            stream.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
            matches!(stream.read(&mut buf), Ok(0)) || stream.write(b"x").is_err()
        }
    };
    let mut plain = std::net::TcpStream::connect(proxy.tls).unwrap();
    plain.write_all(b"OPTIONS sip:proxy SIP/2.0\r\n\r\n").unwrap();
    let started = std::time::Instant::now();
    assert!(closed_within(&mut plain, Duration::from_secs(5)), "plain SIP on the TLS port is closed");
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut silent = std::net::TcpStream::connect(proxy.tls).unwrap();
    let started = std::time::Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(15)), "a silent connection is closed");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(9) && waited < Duration::from_secs(14), "closed after {waited:?}");

    assert_eq!(proxy.metric("pbx_proxy_tls_refused_total{reason=\"not_tls\"}"), Some(1.0), "counted");
    assert_eq!(proxy.metric("pbx_proxy_tls_refused_total{reason=\"timeout\"}"), Some(1.0), "counted");

    let mut client = SipClient::tcp(proxy.tcp);
    let options = client.request("OPTIONS", &format!("sip:{}", proxy.tcp), "100", None, &[]);
    let answer = client.transact(&options).expect("still relayed to the PBX");
    assert_eq!(status_code(&answer), Some(200), "{answer}");
}

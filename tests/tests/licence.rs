//! The licence end to end with real processes: `pbx licence-server` over HTTPS on loopback and
//! `pbx appliance` configured to ask it, trusting its self-signed certificate.
//!
//! The appliance gets its licence at start (GET /api/v1/licence shows it), redeems a voucher
//! through the service (and is refused the second time), and obeys the licence's limits: a new
//! extension beyond them is refused with 403 naming the limit, and nothing stored is deleted.

use pbx_tests::licence_server::Server;
use pbx_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Bound on waiting for the watchdog's first check and the voucher fetch after a redeem.
const LICENCE_WAIT: Duration = Duration::from_secs(30);

fn api_json(pbx: &Pbx, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, text) = pbx.api(method, path, body);
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}")))
}

fn limits(extensions: u32) -> Value {
    json!({ "extensions": extensions, "concurrent_calls": 8, "conference_rooms": 1, "proxy_seats": 0, "cluster_nodes": 1 })
}

#[test]
fn appliance_is_licensed_redeems_a_voucher_and_obeys_the_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    // The vendor sold PBX-E2E 3 extensions; a voucher adds 1.
    let grant = json!({ "features": ["conference"], "limits": limits(3), "valid_days": 30 });
    assert_eq!(server.call("PUT", "/admin/v1/serials/PBX-E2E", grant, true).0, 200);
    let voucher = json!({ "features": ["push"], "limits": { "extensions": 1, "concurrent_calls": 0, "conference_rooms": 0, "proxy_seats": 0, "cluster_nodes": 0 } });
    assert_eq!(server.call("PUT", "/admin/v1/vouchers/V-ONE", voucher, true).0, 200);

    let options = PbxOptions::default()
        .licence("serial = \"PBX-E2E\"")
        .licence(&format!("server_url = \"{}\"", server.url("")))
        .licence(&format!("public_key = \"{}\"", server.public_key().to_hex()))
        .licence(&format!("server_ca = {:?}", server.dir.join("tls-cert.pem")));
    let pbx = Pbx::start(options);

    // The watchdog's check at start: licensed, with the granted limits in force.
    let mut licence = Value::Null;
    let licensed = wait_until(LICENCE_WAIT, || {
        licence = api_json(&pbx, "GET", "/api/v1/licence", None).1;
        licence["status"] == "licensed"
    });
    assert!(licensed, "not licensed within {LICENCE_WAIT:?}: {licence}\n{}", pbx.log());
    assert_eq!(licence["serial"], "PBX-E2E");
    assert_eq!(licence["effective"]["limits"]["extensions"], 3, "{licence}");
    assert_eq!(licence["licence"]["features"], json!(["conference"]), "{licence}");
    assert!(licence["last_success"].as_str().is_some_and(|t| t.ends_with('Z')), "RFC 3339: {licence}");

    // Two extensions from the config file exist; a third fits, a fourth does not.
    let new_ext = |n: &str| format!(r#"{{"number":"{n}","password":"secret-{n}-long"}}"#);
    assert_eq!(pbx.api("POST", "/api/v1/extensions", Some(&new_ext("102"))).0, 201);
    let (status, body) = api_json(&pbx, "POST", "/api/v1/extensions", Some(&new_ext("103")));
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("licence limit: 3 extensions"), "{body}");
    // Changing an extension that exists is never refused.
    assert_eq!(pbx.api("POST", "/api/v1/extensions", Some(&new_ext("100"))).0, 201);

    // Redeem the voucher through the appliance: a release code; the unlocks raise the limit.
    let (status, body) = api_json(&pbx, "POST", "/api/v1/vouchers", Some(r#"{"code":"V-ONE"}"#));
    assert_eq!(status, 200, "{body}\n{}", pbx.log());
    assert_eq!(body["release_code"].as_str().map(str::len), Some(16), "{body}");
    let raised = wait_until(LICENCE_WAIT, || {
        licence = api_json(&pbx, "GET", "/api/v1/licence", None).1;
        licence["effective"]["limits"]["extensions"] == 4
    });
    assert!(raised, "unlocks not in force within {LICENCE_WAIT:?}: {licence}");
    assert!(licence["effective"]["features"].as_array().unwrap().contains(&json!("push")), "{licence}");
    assert_eq!(pbx.api("POST", "/api/v1/extensions", Some(&new_ext("103"))).0, 201);

    // The same voucher again: refused, 409.
    let (status, body) = api_json(&pbx, "POST", "/api/v1/vouchers", Some(r#"{"code":"V-ONE"}"#));
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already redeemed"), "{body}");
    let (status, _) = api_json(&pbx, "POST", "/api/v1/vouchers", Some(r#"{"code":"V-NONE"}"#));
    assert_eq!(status, 404);

    // What left the PBX: the service logged only the serial (and the voucher code).
    let log = server.call("GET", "/admin/v1/log", json!(null), true).1;
    let entries = log["entries"].as_array().expect("log entries");
    assert!(entries.iter().all(|e| e["serial"] == "PBX-E2E"), "{log}");
    assert!(entries.iter().any(|e| e["request"] == "licence") && entries.iter().any(|e| e["request"] == "redeem"));
}

/// Without a licence service nothing is gated, and the API says so.
#[test]
fn without_a_licence_service_nothing_is_gated() {
    let pbx = Pbx::start(PbxOptions::default());
    let (status, licence) = api_json(&pbx, "GET", "/api/v1/licence", None);
    assert_eq!(
        (status, licence["status"].as_str(), licence["managed"].as_bool()),
        (200, Some("unmanaged"), Some(false))
    );
    assert!(licence["serial"].as_str().is_some_and(|s| s.starts_with("PBX-")), "{licence}");
    for n in 102..115 {
        let body = format!(r#"{{"number":"{n}","password":"secret-{n}-long"}}"#);
        assert_eq!(pbx.api("POST", "/api/v1/extensions", Some(&body)).0, 201, "extension {n}");
    }
    let (status, _) = api_json(&pbx, "POST", "/api/v1/vouchers", Some(r#"{"code":"V-ONE"}"#));
    assert_eq!(status, 409);
}

/// A service that answers every request with this raw HTTP response, on a loopback port, until
/// the test ends (each connection gets one answer; bounded by the test's own lifetime).
fn fake_service(response: &'static str) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten().take(50) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(response.as_bytes());
            // Read what the client still sends (its body) before closing: closing with unread
            // data would reset the connection under the answer.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
        }
    });
    addr
}

/// Bad answers — HTML with a 200, a signed-looking document that does not verify, a TLS
/// certificate nobody trusts — are logged and retried; the node keeps running, unlicensed
/// (it never had a licence), and nothing crashes.
#[test]
fn bad_service_answers_are_refused_and_retried() {
    let html = fake_service(
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: text/html\r\ncontent-length: 13\r\n\r\n<html></html>",
    );
    let forged = fake_service(
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{\"document\":\"{}\",\"signature\":\"00112233\"}",
    );
    let tmp = tempfile::tempdir().unwrap();
    let other = Server::start(tmp.path());
    let key = other.public_key().to_hex();
    let untrusted = tmp.path().join("not-the-ca.pem");
    std::fs::write(&untrusted, std::fs::read(other.dir.join("tls-cert.pem")).unwrap()).unwrap();
    let tls_mismatch = tempfile::tempdir().unwrap();
    let second = Server::start(tls_mismatch.path());
    for (url, ca, expect) in [
        (format!("http://{html}"), None, "not JSON"),
        (format!("http://{forged}"), None, "signature"),
        // The second server's certificate, checked against the first one's: the handshake fails.
        (second.url(""), Some(&untrusted), "127.0.0.1"),
    ] {
        let mut options = PbxOptions::default()
            .licence("serial = \"PBX-BAD\"")
            .licence(&format!("server_url = \"{url}\""))
            .licence(&format!("public_key = \"{key}\""));
        if let Some(ca) = ca {
            options = options.licence(&format!("server_ca = {ca:?}"));
        }
        let mut pbx = Pbx::start(options);
        let mut licence = Value::Null;
        let failed = wait_until(LICENCE_WAIT, || {
            licence = api_json(&pbx, "GET", "/api/v1/licence", None).1;
            licence["last_error"].is_string()
        });
        assert!(failed, "{url}: no failed check within {LICENCE_WAIT:?}: {licence}\n{}", pbx.log());
        let error = licence["last_error"].as_str().unwrap();
        assert!(error.contains(expect), "{url}: {error}");
        assert_eq!(licence["status"], "unlicensed", "{licence}");
        assert!(licence["next_check"].as_str().is_some_and(|t| t.ends_with('Z')), "a retry is scheduled: {licence}");
        assert!(pbx.is_running(), "{url}: the node went down\n{}", pbx.log());
    }
}

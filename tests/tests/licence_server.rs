//! `pbx licence-server` end to end: the real binary on 127.0.0.1 with a fresh data directory,
//! driven over HTTPS by ureq (rustls, ring) that trusts only the server's own self-signed
//! `tls-cert.pem` — the way a pbx node will pin it.

use pbx_actors::licence::{Envelope, Feature, Limits};
use pbx_tests::licence_server::Server;
use pbx_tests::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a server with refused arguments may take to exit.
const REFUSAL_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
fn limits(extensions: u32, rooms: u32) -> Value {
    json!({ "extensions": extensions, "concurrent_calls": 8, "conference_rooms": rooms, "proxy_seats": 0, "cluster_nodes": 1 })
}

/// The whole service over HTTPS: admin creates a serial and a voucher; a client gets a licence
/// that verifies with the printed key, redeems once (then 409), gets its unlocks; unknown
/// serials are 404; plain HTTP to the TLS port gets nothing; state survives a restart.
#[test]
fn licence_server_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path());
    let public = server.public_key();
    assert!(server.output().contains(&format!("public key: {}", public.to_hex())), "{}", server.output());

    // Files and their modes.
    use std::os::unix::fs::PermissionsExt;
    let mode = |name: &str| std::fs::metadata(server.dir.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(""), 0o700);
    for secret in ["signing-key.seed", "tls-key.pem", "admin.token"] {
        assert_eq!(mode(secret), 0o600, "{secret}");
    }
    assert_eq!(std::fs::read(server.dir.join("signing-key.seed")).unwrap().len(), 32);

    // Admin: a serial and a voucher; without the token, 401.
    let grant = json!({ "features": ["conference"], "limits": limits(50, 1), "valid_days": 365 });
    assert_eq!(server.call("PUT", "/admin/v1/serials/PBX-1", grant.clone(), false).0, 401);
    assert_eq!(server.call("PUT", "/admin/v1/serials/PBX-1", grant, true).0, 200);
    let voucher = json!({ "features": ["push"], "limits": limits(10, 2) });
    assert_eq!(server.call("PUT", "/admin/v1/vouchers/V-100", voucher, true).0, 200);
    let (status, body) = server.call("PUT", "/admin/v1/vouchers/V-101", json!({ "features": ["fax"] }), true);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("invalid JSON"), "{body}");

    // A licence that verifies with the public key.
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (status, body) = server.call("POST", "/v1/licence", json!({ "serial": "PBX-1" }), false);
    assert_eq!(status, 200, "{body}");
    let envelope: Envelope = serde_json::from_value(body).unwrap();
    let licence = envelope.open_licence(&public, "PBX-1").expect("licence verifies");
    assert_eq!(licence.features, [Feature::Conference].into());
    assert_eq!(licence.limits.extensions, 50);
    assert!(licence.issued_at.abs_diff(started) < 60, "issued_at {} vs {started}", licence.issued_at);
    assert_eq!(licence.valid_until, licence.issued_at + 365 * 86_400);

    // Unknown serial: 404; malformed: 400.
    let (status, body) = server.call("POST", "/v1/licence", json!({ "serial": "PBX-404" }), false);
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown serial")));
    assert_eq!(server.call("POST", "/v1/licence", json!({ "serial": "no spaces" }), false).0, 400);
    assert_eq!(server.call("POST", "/v1/licence", json!({ "serial": 7 }), false).0, 400);

    // Redeem once: a release code; again: 409; unknown voucher: 404.
    let redeem = json!({ "serial": "PBX-1", "code": "V-100" });
    let (status, body) = server.call("POST", "/v1/vouchers/redeem", redeem.clone(), false);
    assert_eq!(status, 200, "{body}");
    let release_code = body["release_code"].as_str().expect("release_code").to_string();
    assert_eq!(release_code.len(), 16);
    let (status, body) = server.call("POST", "/v1/vouchers/redeem", redeem.clone(), false);
    assert_eq!((status, body["error"].as_str()), (409, Some("voucher already redeemed")));
    let (status, body) = server.call("POST", "/v1/vouchers/redeem", json!({ "serial": "PBX-1", "code": "V-9" }), false);
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown voucher")));

    // Unlocks: the redeemed voucher's features and limits, with its release code.
    let (status, body) = server.call("POST", "/v1/unlocks", json!({ "serial": "PBX-1" }), false);
    assert_eq!(status, 200, "{body}");
    let unlocks = serde_json::from_value::<Envelope>(body).unwrap().open_unlocks(&public, "PBX-1").unwrap();
    assert_eq!(unlocks.features, [Feature::Push].into());
    assert_eq!(
        unlocks.limits,
        Limits { extensions: 10, concurrent_calls: 8, conference_rooms: 2, proxy_seats: 0, cluster_nodes: 1 }
    );
    assert_eq!(unlocks.release_codes, vec![release_code.clone()]);

    // The request log: every client request the desk saw (not the one with a bad body), with
    // the TCP peer's address.
    let (status, body) = server.call("GET", "/admin/v1/log", Value::Null, true);
    assert_eq!(status, 200, "{body}");
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 7, "{body}");
    assert!(entries.iter().all(|e| e["ip"] == "127.0.0.1" && e["anonymised"] == false), "{body}");
    assert_eq!(server.call("GET", "/admin/v1/log", Value::Null, false).0, 401);

    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(http_request(server.addr, "POST", "/v1/licence", Some("{\"serial\":\"PBX-1\"}"), None).is_none());

    // A restart keeps the key, the certificate, the redemption and the log.
    let cert = std::fs::read(server.dir.join("tls-cert.pem")).unwrap();
    server.stop();
    let server = Server::start(tmp.path());
    assert_eq!(server.public_key(), public);
    assert_eq!(std::fs::read(server.dir.join("tls-cert.pem")).unwrap(), cert);
    let (status, _) = server.call("POST", "/v1/vouchers/redeem", redeem, false);
    assert_eq!(status, 409);
    let (_, body) = server.call("GET", "/admin/v1/log", Value::Null, true);
    assert_eq!(body["entries"].as_array().unwrap().len(), 8, "{body}");
}

/// `--plain-http` is refused at start on a non-loopback address (exit 2, naming the flag),
/// and serves plain HTTP on loopback.
#[test]
fn plain_http_only_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .args(["licence-server", "--data-dir"])
        .arg(tmp.path().join("refused"))
        .args(["--listen", "0.0.0.0:0", "--plain-http"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pbx licence-server");
    let deadline = Instant::now() + REFUSAL_EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            terminate(&mut child, STOP_TIMEOUT);
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert!(stderr.contains("--plain-http") && stderr.contains("loopback"), "{stderr}");
    assert!(!tmp.path().join("refused").exists(), "a refused start created the data directory");

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Command::new(binary())
        .args(["licence-server", "--data-dir"])
        .arg(tmp.path().join("plain"))
        .args(["--listen", &addr.to_string(), "--plain-http"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pbx licence-server");
    let answered = wait_until(START_TIMEOUT, || {
        http_request(addr, "POST", "/v1/licence", Some("{\"serial\":\"PBX-1\"}"), None)
            .is_some_and(|(code, body)| code == 404 && body.contains("unknown serial"))
    });
    let stopped = terminate(&mut child, STOP_TIMEOUT);
    assert!(answered, "plain HTTP on loopback did not answer");
    assert!(stopped.is_some_and(|s| s.success()));
    assert!(!tmp.path().join("plain").join("tls-cert.pem").exists());
}

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

/// Guessing voucher codes online: one source guessing quickly is refused (429, Retry-After)
/// after its burst, even with the right code, and redeems once it has waited; a campaign spread
/// over many source addresses (curl from 127.0.0.2, .3, …) meets the serial's limit, which
/// also holds the right code back; the admin's stats count both kinds of refusal.
#[test]
fn guessing_voucher_codes_is_rate_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = [
        "--redeem-source-burst",
        "3",
        "--redeem-source-refill-s",
        // Long enough that two requests in a row fall within it even on a loaded machine.
        "20",
        "--redeem-serial-burst",
        "8",
        "--redeem-serial-refill-s",
        "3600",
    ];
    let server = Server::start_with(tmp.path(), &flags);
    let grant = json!({ "features": [], "limits": limits(5, 0), "valid_days": 30 });
    for serial in ["PBX-1", "PBX-2"] {
        assert_eq!(server.call("PUT", &format!("/admin/v1/serials/{serial}"), grant.clone(), true).0, 200);
    }
    let voucher = json!({ "features": ["push"], "limits": limits(1, 0) });
    for code in ["RIGHT-1", "RIGHT-2"] {
        assert_eq!(server.call("PUT", &format!("/admin/v1/vouchers/{code}"), voucher.clone(), true).0, 200);
    }
    let redeem = |serial: &str, code: &str| json!({ "serial": serial, "code": code });

    // One source, guessing as fast as it can: wrong codes are 404 until the burst is spent.
    let mut misses = 0;
    let retry_after = loop {
        assert!(misses < 10, "ten quick guesses and never a 429");
        let (status, body, retry_after) =
            server.post("/v1/vouchers/redeem", redeem("PBX-1", &format!("GUESS-{misses}")));
        match status {
            404 => misses += 1,
            429 => {
                assert!(body["error"].as_str().unwrap().contains("too many failed redeems"), "{body}");
                break retry_after.expect("a 429 says when to come back");
            }
            other => panic!("guess answered {other}: {body}"),
        }
    };
    assert!(misses >= 3, "refused after {misses} guesses, the burst is 3");
    // The right code is held back too while the source is limited.
    let (status, _, _) = server.post("/v1/vouchers/redeem", redeem("PBX-1", "RIGHT-1"));
    assert_eq!(status, 429);
    let wait: u64 = retry_after.parse().expect("Retry-After in seconds");
    assert!((1..=20).contains(&wait), "Retry-After {wait}");
    std::thread::sleep(Duration::from_secs(wait));
    let (status, body, _) = server.post("/v1/vouchers/redeem", redeem("PBX-1", "RIGHT-1"));
    assert_eq!(status, 200, "the right code after waiting: {body}");

    // A campaign against PBX-2 from eight addresses, one guess each: all answered, then the
    // serial is spent, whichever address asks next and whatever code it brings.
    for i in 2..10 {
        let (status, body, _) =
            server.post_from(&format!("127.0.0.{i}"), "/v1/vouchers/redeem", &redeem("PBX-2", &format!("G-{i}")));
        assert_eq!(status, 404, "guess from 127.0.0.{i}: {body}");
    }
    for (source, code) in [("127.0.0.10", "G-10"), ("127.0.0.11", "RIGHT-2")] {
        let (status, body, retry_after) = server.post_from(source, "/v1/vouchers/redeem", &redeem("PBX-2", code));
        assert_eq!(status, 429, "{code} from {source}: {body}");
        assert!(body.contains("serial"), "{body}");
        let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
        assert!((1..=3600).contains(&wait), "Retry-After {wait}");
    }
    // Other serials are not held up by PBX-2's campaign.
    assert_eq!(server.post_from("127.0.0.12", "/v1/unlocks", &json!({ "serial": "PBX-1" })).0, 200);

    let (status, stats) = server.call("GET", "/admin/v1/stats", Value::Null, true);
    assert_eq!(status, 200, "{stats}");
    assert!(stats["redeems_limited"]["source"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["redeems_limited"]["serial"], 2, "{stats}");
    assert_eq!(stats["limits"]["serial_burst"], 8, "{stats}");
    assert_eq!(server.call("GET", "/admin/v1/stats", Value::Null, false).0, 401);
    // The first refusal of each run is logged, the source by its network only.
    let output = plain(&server.output());
    assert!(output.contains("too many failures from this network") && output.contains("source=127.0.0.0"), "{output}");
    assert!(output.contains("too many failures for this serial") && output.contains("serial=PBX-2"), "{output}");
}

/// Voucher codes never reach the server's output or its request log: creating, redeeming,
/// redeeming again and redeeming for an unknown serial leave only the code's keyed hash
/// (which the admin API's answer to creating it gives), while the answer to creating it
/// still carries the code.
#[test]
fn voucher_codes_never_reach_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let code = format!("VC-{:x}-{nanos:08x}", std::process::id());
    let grant = json!({ "features": [], "limits": limits(5, 0), "valid_days": 30 });
    assert_eq!(server.call("PUT", "/admin/v1/serials/PBX-1", grant, true).0, 200);
    let voucher = json!({ "features": ["push"], "limits": limits(1, 0) });
    let (status, created) = server.call("PUT", &format!("/admin/v1/vouchers/{code}"), voucher, true);
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["code"], code.as_str());
    let hash = created["code_hash"].as_str().expect("code_hash").to_string();
    assert!(hash.starts_with('#') && hash.len() == 17, "{hash}");
    let redeem = |serial: &str| json!({ "serial": serial, "code": code });
    assert_eq!(server.call("POST", "/v1/vouchers/redeem", redeem("PBX-1"), false).0, 200);
    assert_eq!(server.call("POST", "/v1/vouchers/redeem", redeem("PBX-1"), false).0, 409);
    assert_eq!(server.call("POST", "/v1/vouchers/redeem", redeem("PBX-404"), false).0, 404);

    let (_, log) = server.call("GET", "/admin/v1/log", Value::Null, true);
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{log}");
    assert!(entries.iter().all(|e| e["code_hash"] == hash.as_str()), "{log}");
    assert!(!log.to_string().contains(&code), "the request log holds the code: {log}");

    server.stop();
    let output = plain(&server.output());
    assert!(output.contains(&hash), "the voucher's creation is not logged by its hash:\n{output}");
    assert!(!output.contains(&code), "the server's output holds the voucher code:\n{output}");
}

/// The server's output without the terminal colours its log lines carry.
fn plain(output: &str) -> String {
    let mut out = String::with_capacity(output.len());
    let mut chars = output.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

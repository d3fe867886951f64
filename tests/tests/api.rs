//! The admin HTTP API, /healthz, /metrics and the binary's start-up contract (config errors,
//! log format), end to end against the real `pbx` binary on 127.0.0.1.

use pbx_tests::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a node with a bad config may take to give up.
const CONFIG_ERROR_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process killed on drop, so a failing assertion leaks nothing.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaped {
    /// Waits (bounded) for the process to exit; its exit code, or `None` if it had to be killed.
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A node started by hand (for flags and environments the harness does not set).
struct Appliance {
    child: Reaped,
    sip: std::net::SocketAddr,
    http: std::net::SocketAddr,
}

/// Runs `pbx appliance` with `args` on free loopback ports and `RUST_LOG=rust_log`, stderr to
/// `stderr_path`.
fn spawn_appliance(dir: &std::path::Path, args: &[&str], rust_log: &str, stderr_path: &std::path::Path) -> Appliance {
    let sip: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(binary())
        .arg("appliance")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--sip-listen", &sip.to_string(), "--http-listen", &http.to_string(), "--sip-tls-listen", "off"])
        .args(args)
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr_path).expect("create stderr file"))
        .spawn()
        .expect("spawn pbx");
    Appliance { child: Reaped(child), sip, http }
}

impl Appliance {
    fn healthy(&self) -> bool {
        wait_until(START_TIMEOUT, || {
            http_request(self.http, "GET", "/healthz", None, None).is_some_and(|(code, _)| code == 200)
        })
    }

    /// SIGTERM, then the exit code (bounded by `STOP_TIMEOUT`).
    fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.0.id().to_string()).status();
        self.child.wait_exit(STOP_TIMEOUT)
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// POST creates (201), GET lists and finds (200), DELETE removes (204); unknown numbers are 404.
#[test]
fn extensions_create_read_delete() {
    let pbx = Pbx::start(PbxOptions::default());
    let body = r#"{"number":"200","password":"pw-of-two-hundred","display_name":"Lobby"}"#;
    let (code, created) = pbx.api("POST", "/api/v1/extensions", Some(body));
    assert_eq!(code, 201, "{created}");
    assert_eq!(json(&created)["number"], "200", "{created}");

    let (code, list) = pbx.api("GET", "/api/v1/extensions", None);
    assert_eq!(code, 200, "{list}");
    let list = json(&list);
    let numbers: Vec<_> = list.as_array().expect("an array").iter().map(|e| e["number"].as_str().unwrap()).collect();
    assert!(numbers.contains(&"100") && numbers.contains(&"101") && numbers.contains(&"200"), "{list}");

    let (code, one) = pbx.api("GET", "/api/v1/extensions/200", None);
    assert_eq!(code, 200, "{one}");
    let one = json(&one);
    assert_eq!((one["number"].as_str(), one["display_name"].as_str()), (Some("200"), Some("Lobby")), "{one}");
    assert_eq!(one["registrations"], 0, "{one}");

    let (code, _) = pbx.api("GET", "/api/v1/extensions/999", None);
    assert_eq!(code, 404);
    let (code, body) = pbx.api("DELETE", "/api/v1/extensions/200", None);
    assert_eq!(code, 204, "{body}");
    let (code, _) = pbx.api("GET", "/api/v1/extensions/200", None);
    assert_eq!(code, 404, "deleted extension still there");
    let (code, _) = pbx.api("DELETE", "/api/v1/extensions/200", None);
    assert_eq!(code, 404, "second DELETE");
}

/// An extension created through the API registers (SIPp, MD5) and is counted on GET; deleting
/// it removes its binding and further registrations fail.
#[test]
fn api_created_extension_registers_and_delete_removes_its_bindings() {
    let pbx = Pbx::start(PbxOptions::default());
    let body = r#"{"number":"300","password":"pw-of-three-hundred","display_name":"Kitchen"}"#;
    assert_eq!(pbx.api("POST", "/api/v1/extensions", Some(body)).0, 201);
    let run = sipp_ok(
        &pbx,
        "register_auth.xml",
        &["-s", "300", "-au", "300", "-ap", "pw-of-three-hundred", "-key", "expires", "120", "-m", "1"],
    );
    assert_eq!(run.received_codes(), vec![401, 200], "{}", run.messages);
    assert_eq!(pbx.contacts_of("300").len(), 1, "{:?}", pbx.registrations());
    let (_, one) = pbx.api("GET", "/api/v1/extensions/300", None);
    assert_eq!(json(&one)["registrations"], 1, "{one}");

    assert_eq!(pbx.api("DELETE", "/api/v1/extensions/300", None).0, 204);
    assert!(pbx.contacts_of("300").is_empty(), "{:?}", pbx.registrations());
    let mut client = SipClient::udp(pbx.sip);
    let contact = format!("Contact: <sip:300@{}>", client.local());
    let refused = client.register("300", "pw-of-three-hundred", "MD5", &[&contact]).expect("an answer");
    assert_eq!(status_code(&refused), Some(401), "a deleted extension must not register: {refused}");
}

/// Every /api/v1 route answers 401 without a token and with a wrong one, and changes nothing.
#[test]
fn api_refuses_missing_or_wrong_token() {
    let pbx = Pbx::start(PbxOptions::default());
    let body = r#"{"number":"400","password":"pw-of-four-hundred"}"#;
    let routes = [
        ("GET", "/api/v1/extensions", None),
        ("POST", "/api/v1/extensions", Some(body)),
        ("GET", "/api/v1/extensions/100", None),
        ("DELETE", "/api/v1/extensions/100", None),
        ("GET", "/api/v1/registrations", None),
    ];
    let wrong = "0".repeat(pbx.token.len());
    for (method, path, body) in routes {
        for token in [None, Some(wrong.as_str()), Some("")] {
            let (code, answer) = http_request(pbx.http, method, path, body, token).expect("an HTTP answer");
            assert_eq!(code, 401, "{method} {path} with token {token:?}: {answer}");
        }
    }
    assert_eq!(pbx.api("GET", "/api/v1/extensions/100", None).0, 200, "DELETE without token took effect");
    assert_eq!(pbx.api("GET", "/api/v1/extensions/400", None).0, 404, "POST without token took effect");
}

/// No endpoint returns a password, and neither config-declared nor API-set passwords appear in
/// the node's log (human or JSON), even after registrations, failures and validation errors.
#[test]
fn passwords_are_never_returned_nor_logged() {
    let pbx = Pbx::start(PbxOptions::default());
    let created = r#"{"number":"500","password":"api-password-500","display_name":"Garage"}"#;
    let rejected = r#"{"number":"bad number!","password":"rejected-password-5","display_name":"x"}"#;
    let mut answers = vec![pbx.api("POST", "/api/v1/extensions", Some(created)).1];
    answers.push(pbx.api("POST", "/api/v1/extensions", Some(rejected)).1);
    let ok = SipClient::udp(pbx.sip).register("500", "api-password-500", "MD5", &["Contact: <sip:500@127.0.0.1:7500>"]);
    assert_eq!(ok.as_deref().and_then(status_code), Some(200), "{ok:?}");
    let failed =
        SipClient::udp(pbx.sip).register("100", "typo-password-100", "MD5", &["Contact: <sip:100@127.0.0.1:7501>"]);
    assert_eq!(failed.as_deref().and_then(status_code), Some(401), "{failed:?}");
    for path in ["/api/v1/extensions", "/api/v1/extensions/500", "/api/v1/extensions/100", "/api/v1/registrations"] {
        answers.push(pbx.api("GET", path, None).1);
    }
    answers.push(pbx.metrics());
    answers.push(http_request(pbx.http, "GET", "/healthz", None, None).expect("healthz").1);
    let log = pbx.log();
    for secret in ["secret-100", "secret-101", "api-password-500", "rejected-password-5", "typo-password-100"] {
        for answer in &answers {
            assert!(!answer.contains(secret), "{secret} returned by the API: {answer}");
        }
        assert!(!log.contains(secret), "{secret} in the node's log:\n{log}");
    }
    assert!(!answers.iter().any(|a| a.contains("\"password\"")), "a password field returned: {answers:?}");
}

/// Even at `RUST_LOG=trace` (every crate, every SIP message) no password reaches the log:
/// neither one from the config file nor one set through the API.
#[test]
fn passwords_are_not_logged_at_trace_level() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("pbx.toml");
    let text = "[registrar]\ndigest_algorithms = [\"MD5\", \"SHA-256\"]\n\n[[extensions]]\nnumber = \"100\"\npassword = \"config-password-100\"\n";
    std::fs::write(&config, text).expect("write config");
    let stderr_path = dir.path().join("stderr.log");
    let mut node = spawn_appliance(dir.path(), &["--config", config.to_str().unwrap()], "trace", &stderr_path);
    let read = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(node.healthy(), "not healthy within {START_TIMEOUT:?}:\n{}", read());
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).expect("admin.token");
    let body = r#"{"number":"700","password":"api-password-700"}"#;
    let created = http_request(node.http, "POST", "/api/v1/extensions", Some(body), Some(token.trim()));
    assert_eq!(created.map(|(code, _)| code), Some(201));
    for (user, password) in [("100", "config-password-100"), ("700", "api-password-700")] {
        let contact = format!("Contact: <sip:{user}@127.0.0.1:7700>");
        let ok = SipClient::udp(node.sip).register(user, password, "MD5", &[&contact]);
        assert_eq!(ok.as_deref().and_then(status_code), Some(200), "{ok:?}");
    }
    assert_eq!(node.terminate(), Some(0), "exit after SIGTERM:\n{}", read());
    let log = read();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "not a trace-level log:\n{log}");
    for secret in ["config-password-100", "api-password-700"] {
        assert!(!log.contains(secret), "{secret} in the trace log:\n{log}");
    }
}

/// The admin token file is created with mode 0600 and is the token the API accepts.
#[test]
fn admin_token_is_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let pbx = Pbx::start(PbxOptions::default());
    let metadata = std::fs::metadata(pbx.data_dir().join("admin.token")).expect("admin.token");
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "mode {:o}", metadata.permissions().mode());
    assert!(pbx.token.len() >= 32, "a token of {} characters", pbx.token.len());
    assert_eq!(pbx.api("GET", "/api/v1/extensions", None).0, 200);
}

/// /healthz answers `ok` without a token.
#[test]
fn healthz_answers_ok_without_token() {
    let pbx = Pbx::start(PbxOptions::default());
    let (code, body) = http_request(pbx.http, "GET", "/healthz", None, None).expect("an HTTP answer");
    assert_eq!((code, body.trim()), (200, "ok"));
}

/// /metrics (no token) counts requests by method, responses by code and active registrations.
#[test]
fn metrics_count_requests_responses_and_registrations() {
    let pbx = Pbx::start(PbxOptions::default());
    assert!(pbx.answers_options(), "OPTIONS unanswered");
    let ok = SipClient::udp(pbx.sip).register("100", "secret-100", "MD5", &["Contact: <sip:100@127.0.0.1:7600>"]);
    assert_eq!(ok.as_deref().and_then(status_code), Some(200), "{ok:?}");
    let ok = SipClient::tcp(pbx.sip).register("101", "secret-101", "SHA-256", &["Contact: <sip:101@127.0.0.1:7601>"]);
    assert_eq!(ok.as_deref().and_then(status_code), Some(200), "{ok:?}");
    let mut client = SipClient::udp(pbx.sip);
    let message = client.request("MESSAGE", "sip:100@127.0.0.1", "101", Some("100"), &[]);
    assert_eq!(client.transact(&message).as_deref().and_then(status_code), Some(405));

    let (code, text) = http_request(pbx.http, "GET", "/metrics", None, None).expect("an HTTP answer");
    assert_eq!(code, 200, "{text}");
    let at_least = |name: &str, n: f64| {
        let value = pbx.metric(name);
        assert!(value.is_some_and(|v| v >= n), "{name} = {value:?}, expected >= {n}:\n{}", pbx.metrics());
    };
    at_least("pbx_sip_requests_total{method=\"REGISTER\"}", 4.0);
    at_least("pbx_sip_requests_total{method=\"OPTIONS\"}", 1.0);
    at_least("pbx_sip_requests_total{method=\"MESSAGE\"}", 1.0);
    at_least("pbx_sip_responses_total{code=\"200\"}", 3.0);
    at_least("pbx_sip_responses_total{code=\"401\"}", 2.0);
    at_least("pbx_sip_responses_total{code=\"405\"}", 1.0);
    assert_eq!(pbx.metric("pbx_registrations_active"), Some(2.0), "{}", pbx.metrics());
}

/// An invalid extension is refused with 400 naming the field, and nothing is created.
#[test]
fn invalid_extension_gets_400_naming_the_field() {
    let pbx = Pbx::start(PbxOptions::default());
    for (body, field) in [
        (r#"{"number":"600","password":"short"}"#, "password"),
        (r#"{"number":"6 0 0","password":"long-enough-password"}"#, "number"),
        (r#"{"number":"","password":"long-enough-password"}"#, "number"),
        (r#"{"number":"600","password":"long-enough-password","display_name":"a\u0007b"}"#, "display_name"),
        (r#"{"number":"600"}"#, "password"),
        (r#"{"number":"600","password":"long-enough-password","pin":"1234"}"#, "pin"),
    ] {
        let (code, answer) = pbx.api("POST", "/api/v1/extensions", Some(body));
        assert_eq!(code, 400, "{body}: {answer}");
        let error = json(&answer)["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(field), "{body}: the error should name {field}: {answer}");
        assert!(!answer.contains("long-enough-password"), "password echoed: {answer}");
    }
    for number in ["600", "6 0 0"] {
        assert_eq!(pbx.api("GET", &format!("/api/v1/extensions/{}", number.replace(' ', "%20")), None).0, 404);
    }
}

/// A config file with an unknown key or a wrongly typed value stops the binary with a non-zero
/// exit, within bounded time, and stderr names the file and the key.
#[test]
fn bad_config_file_exits_non_zero_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text, key) in [
        ("unknown-key.toml", "[registrar]\nmin_expire_s = 5\n", "min_expire_s"),
        ("wrong-type.toml", "[registrar]\nmin_expires_s = \"x\"\n", "registrar.min_expires_s"),
        ("unknown-top.toml", "sip_listn = \"127.0.0.1:5060\"\n", "sip_listn"),
        ("extension-type.toml", "[[extensions]]\nnumber = 100\npassword = \"secret-100\"\n", "extensions[0].number"),
    ] {
        let config = dir.path().join(name);
        std::fs::write(&config, text).expect("write config");
        let stderr_path = dir.path().join(format!("{name}.stderr"));
        let mut node = spawn_appliance(dir.path(), &["--config", config.to_str().unwrap()], "info", &stderr_path);
        let code = node.child.wait_exit(CONFIG_ERROR_EXIT_TIMEOUT);
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        assert!(code.is_some(), "{name}: still running after {CONFIG_ERROR_EXIT_TIMEOUT:?}; stderr:\n{stderr}");
        assert_ne!(code, Some(0), "{name}: exit 0 with a bad config; stderr:\n{stderr}");
        assert!(stderr.contains(config.to_str().unwrap()), "{name}: stderr does not name the file:\n{stderr}");
        assert!(stderr.contains(key), "{name}: stderr does not name {key}:\n{stderr}");
        assert!(http_request(node.http, "GET", "/healthz", None, None).is_none(), "{name}: the API is serving");
    }
}

/// `--log-format json` writes every stderr line as a JSON object, and the node still starts and
/// stops cleanly.
#[test]
fn log_format_json_writes_json_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr_path = dir.path().join("stderr.log");
    let mut node = spawn_appliance(dir.path(), &["--log-format", "json"], "info", &stderr_path);
    let read = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(node.healthy(), "not healthy within {START_TIMEOUT:?}:\n{}", read());
    assert_eq!(node.terminate(), Some(0), "exit after SIGTERM:\n{}", read());
    let stderr = read();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "too few log lines:\n{stderr}");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{stderr}"));
        assert!(value.is_object() && value.get("level").is_some(), "{line}");
    }
    assert!(stderr.contains("ready"), "no start-up line:\n{stderr}");
}

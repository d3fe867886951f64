//! A running `pbx licence-server` for tests: started on a free loopback port with a fresh
//! data directory, reached over HTTPS by a client that trusts only its own certificate.

use crate::{START_TIMEOUT, STOP_TIMEOUT, binary, free_port, terminate, wait_until};
use pbx_actors::licence::PublicKey;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Bound on one HTTPS request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `pbx licence-server`; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts the server on a free loopback port and waits (bounded) until it answers over TLS.
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[])
    }

    /// [`Server::start`] with more arguments (e.g. `--redeem-source-burst 3`).
    pub fn start_with(dir: &Path, args: &[&str]) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join(format!("server-{}.log", addr.port()));
        let child = Command::new(binary())
            .args(["licence-server", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen", &addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("create log file"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("create log file"))
            .spawn()
            .expect("spawn pbx licence-server");
        let mut server = Server { child: Some(child), dir: dir.join("data"), addr, log };
        let ready = wait_until(START_TIMEOUT, || {
            server.dir.join("tls-cert.pem").exists()
                && server.client().get(&server.url("/healthz")).call().is_ok_and(|r| r.status() == 200)
        });
        assert!(ready, "licence server not ready within {START_TIMEOUT:?}:\n{}", server.output());
        if let Some(child) = server.child.as_mut() {
            assert!(child.try_wait().unwrap().is_none(), "server exited:\n{}", server.output());
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        format!("---- stdout ----\n{out}---- stderr ----\n{err}")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin.token")).expect("admin.token").trim().to_string()
    }

    pub fn public_key(&self) -> PublicKey {
        let hex = std::fs::read_to_string(self.dir.join("public-key.hex")).expect("public-key.hex");
        PublicKey::from_hex(&hex).expect("public key in hex")
    }

    /// An HTTPS client trusting only this server's certificate; statuses are not errors.
    pub fn client(&self) -> ureq::Agent {
        let pem = std::fs::read(self.dir.join("tls-cert.pem")).expect("tls-cert.pem");
        let cert = ureq::tls::Certificate::from_pem(&pem).expect("a PEM certificate");
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
            .build();
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into()
    }

    /// `method path` with a JSON body (and the admin token if `admin`): status and JSON answer.
    pub fn call(&self, method: &str, path: &str, body: Value, admin: bool) -> (u16, Value) {
        let agent = self.client();
        let url = self.url(path);
        let auth = format!("Bearer {}", self.token());
        let result = match method {
            "GET" => {
                let mut request = agent.get(&url);
                if admin {
                    request = request.header("Authorization", &auth);
                }
                request.call()
            }
            "POST" | "PUT" => {
                let mut request = if method == "POST" { agent.post(&url) } else { agent.put(&url) };
                if admin {
                    request = request.header("Authorization", &auth);
                }
                request.send_json(&body)
            }
            _ => unreachable!("method {method}"),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.output()));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("read the answer");
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        (status, value)
    }

    /// `POST path` with a JSON body, as a client: status, JSON answer, and its `Retry-After`.
    pub fn post(&self, path: &str, body: Value) -> (u16, Value, Option<String>) {
        let mut response = self
            .client()
            .post(&self.url(path))
            .send_json(&body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.output()));
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("read the answer");
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"));
        (status, value, retry_after)
    }

    /// `POST path` with a JSON body sent by curl from the local address `source` (any of
    /// 127.0.0.0/8): status, body, and its `Retry-After`. Bounded by [`REQUEST_TIMEOUT`].
    pub fn post_from(&self, source: &str, path: &str, body: &Value) -> (u16, String, Option<String>) {
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "--dump-header", "-", "--max-time"])
            .arg(REQUEST_TIMEOUT.as_secs().to_string())
            .arg("--cacert")
            .arg(self.dir.join("tls-cert.pem"))
            .args(["--interface", source, "--header", "Content-Type: application/json", "--data"])
            .arg(body.to_string())
            .arg(self.url(path))
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "curl from {source}: {}\n{text}", String::from_utf8_lossy(&output.stderr));
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let retry_after = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after").then(|| value.trim().to_string())
        });
        (status, body.to_string(), retry_after)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = terminate(&mut child, STOP_TIMEOUT);
            assert!(status.is_some_and(|s| s.success()), "licence server did not exit cleanly on SIGTERM");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_TIMEOUT);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
    }
}

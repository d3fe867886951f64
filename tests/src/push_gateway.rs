//! A running `pbx push-gateway` for tests: the stand-in for FCM and APNs on two free loopback
//! ports, with credentials made by its own `make-credentials` (an FCM service account whose
//! `token_uri` is the gateway, an APNs `.p8`), and a client for what it received.

use crate::{START_TIMEOUT, STOP_TIMEOUT, binary, free_port, terminate, wait_until};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The APNs key id and team the credentials are made with.
pub const KEY_ID: &str = "PBXKEY0001";
pub const TEAM_ID: &str = "PBXTEAM001";
pub const PROJECT: &str = "pbx-push-test";
/// The app's bundle id: RFC 8599 `pn-param` for APNs is `TEAM.BUNDLE.voip`.
pub const BUNDLE: &str = "org.example.pbx";

/// A running gateway; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Gateway {
    child: Option<Child>,
    pub dir: PathBuf,
    pub fcm: SocketAddr,
    pub apns: SocketAddr,
    log: PathBuf,
}

impl Gateway {
    /// Makes credentials in `dir/creds` and starts the gateway; waits (bounded) until it serves.
    pub fn start(dir: &Path) -> Gateway {
        let fcm: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let apns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let data = dir.join("gateway");
        let flags = |c: &mut Command| {
            c.arg("push-gateway").arg("--data-dir").arg(&data);
            c.args(["--fcm-listen", &fcm.to_string(), "--apns-listen", &apns.to_string()]);
        };
        let mut make = Command::new(binary());
        flags(&mut make);
        let made = make
            .args(["make-credentials", "--out"])
            .arg(dir.join("creds"))
            .args(["--project-id", PROJECT, "--team-id", TEAM_ID, "--key-id", KEY_ID, "--bundle-id", BUNDLE])
            .output()
            .expect("run pbx push-gateway make-credentials");
        assert!(made.status.success(), "make-credentials: {}", String::from_utf8_lossy(&made.stderr));
        let log = dir.join("gateway.log");
        let mut serve = Command::new(binary());
        flags(&mut serve);
        let child = serve
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("create log"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("create log"))
            .spawn()
            .expect("spawn pbx push-gateway");
        let gateway = Gateway { child: Some(child), dir: dir.to_path_buf(), fcm, apns, log };
        let ready = wait_until(START_TIMEOUT, || {
            gateway.client().get(&format!("https://{fcm}/_gateway/received")).call().is_ok_and(|r| r.status() == 200)
        });
        assert!(ready, "push gateway not ready within {START_TIMEOUT:?}:\n{}", gateway.output());
        gateway
    }

    pub fn service_account(&self) -> PathBuf {
        self.dir.join("creds").join("fcm-service-account.json")
    }

    pub fn apns_key(&self) -> PathBuf {
        self.dir.join("creds").join(format!("AuthKey_{KEY_ID}.p8"))
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("creds").join("gateway-cert.pem")
    }

    /// The `[push]` section a pbx needs to push through this gateway, waiting `wait_s`.
    pub fn push_toml(&self, wait_s: u32) -> String {
        format!(
            "[push]\nwait_s = {wait_s}\nca = {:?}\n[push.fcm]\nservice_account = {:?}\nurl = \"https://{}\"\n\
             [push.apns]\nkey = {:?}\nkey_id = \"{KEY_ID}\"\nteam_id = \"{TEAM_ID}\"\nurl = \"https://{}\"\nsandbox_url = \"https://{}\"\n",
            self.cert(),
            self.service_account(),
            self.fcm,
            self.apns_key(),
            self.apns,
            self.apns,
        )
    }

    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        format!("---- stdout ----\n{out}---- stderr ----\n{err}")
    }

    /// An HTTPS client trusting only the gateway's certificate (HTTP/1.1, which its FCM
    /// listener serves too); statuses are not errors.
    pub fn client(&self) -> ureq::Agent {
        crate::tls::https_client(&self.dir.join("gateway").join("tls-cert.pem"), Duration::from_secs(10))
    }

    /// Everything the gateway recorded, oldest first (FCM token exchanges, FCM and APNs pushes).
    pub fn received(&self) -> Vec<Value> {
        let mut response = self
            .client()
            .get(&format!("https://{}/_gateway/received", self.fcm))
            .call()
            .unwrap_or_else(|e| panic!("GET /_gateway/received: {e}\n{}", self.output()));
        let text = response.body_mut().read_to_string().expect("read");
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        match value {
            Value::Array(items) => items,
            Value::Object(mut map) => match map.remove("received").or_else(|| map.remove("items")) {
                Some(Value::Array(items)) => items,
                other => panic!("unexpected answer: {other:?}"),
            },
            other => panic!("unexpected answer: {other}"),
        }
    }

    /// Pushes (not token exchanges) the gateway received for `token`.
    pub fn pushes_for(&self, token: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r["service"] != "fcm-token" && r["token"].as_str().is_some_and(|t| t == token))
            .collect()
    }

    /// Marks `token` unregistered: the gateway answers pushes to it as FCM and APNs do.
    pub fn unregister(&self, token: &str) {
        let response = self
            .client()
            .post(&format!("https://{}/_gateway/unregister/{token}", self.fcm))
            .send_empty()
            .unwrap_or_else(|e| panic!("unregister: {e}"));
        assert!(response.status().is_success(), "unregister {token}: {}", response.status());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_TIMEOUT);
        }
    }
}

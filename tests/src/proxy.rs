//! A running `pbx proxy` for tests: link certificates from its own `pbx proxy init`, every
//! listener on a free loopback port, and the `[proxy]` section a pbx needs to dial out to it.

use crate::{START_TIMEOUT, STOP_TIMEOUT, binary, free_port, terminate, wait_until};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Makes the link's certificates in `dir` with `pbx proxy init`.
pub fn init(dir: &Path) {
    let made = Command::new(binary()).args(["proxy", "init", "--out"]).arg(dir).output().expect("run pbx proxy init");
    assert!(made.status.success(), "pbx proxy init: {}", String::from_utf8_lossy(&made.stderr));
}

/// A running proxy; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Proxy {
    child: Option<Child>,
    pub dir: PathBuf,
    pub data: PathBuf,
    pub identity: PathBuf,
    pub link: SocketAddr,
    pub tls: SocketAddr,
    pub tcp: SocketAddr,
    /// SIP over UDP (`--sip-udp-listen`).
    pub udp: SocketAddr,
    pub provisioning: SocketAddr,
    pub metrics: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    /// Certificates in `dir/identity` (made unless there) and the proxy started on them, with
    /// `RUST_LOG=debug` (so a test of what it logs sees more than a production log would).
    pub fn start(dir: &Path) -> Proxy {
        let identity = dir.join("identity");
        if !identity.join("proxy.pem").exists() {
            init(&identity);
        }
        let port = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
        let mut proxy = Proxy {
            child: None,
            dir: dir.to_path_buf(),
            data: dir.join("proxy-data"),
            identity,
            link: port(free_port()),
            tls: port(free_port()),
            tcp: port(free_port()),
            udp: port(free_port()),
            provisioning: port(free_port()),
            metrics: port(free_port()),
            log: dir.join("proxy.log"),
        };
        proxy.spawn();
        proxy
    }

    fn spawn(&mut self) {
        let child = Command::new(binary())
            .args(["proxy", "run", "--data-dir"])
            .arg(&self.data)
            .arg("--identity")
            .arg(&self.identity)
            .args(["--link-listen", &self.link.to_string()])
            .args(["--sip-tls-listen", &self.tls.to_string()])
            .args(["--sip-tcp-listen", &self.tcp.to_string()])
            .args(["--sip-udp-listen", &self.udp.to_string()])
            .args(["--provisioning-listen", &self.provisioning.to_string()])
            .args(["--metrics-listen", &self.metrics.to_string()])
            .args(["--media-bind", "127.0.0.1"])
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&self.log).expect("create log"))
            .stderr(std::fs::File::create(self.log.with_extension("err")).expect("create log"))
            .spawn()
            .expect("spawn pbx proxy");
        self.child = Some(child);
        let ready =
            wait_until(START_TIMEOUT, || std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains("metrics:")));
        assert!(ready, "proxy not ready within {START_TIMEOUT:?}:\n{}", self.output());
    }

    /// The `[proxy]` section of a pbx that dials this proxy with the certificates in `identity`.
    pub fn pbx_toml(&self, identity: &Path) -> String {
        format!("[proxy]\nlink = \"{}\"\nidentity = {:?}\n", self.link, identity)
    }

    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        format!("---- stdout ----\n{out}---- stderr ----\n{err}")
    }

    /// The fingerprint the proxy printed for its softphone certificate.
    pub fn fingerprint(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        out.lines().find_map(|l| l.strip_prefix("tls fingerprint: ")).expect("fingerprint printed").trim().to_string()
    }

    /// An HTTPS client trusting only the proxy's certificate; statuses are not errors.
    pub fn client(&self) -> ureq::Agent {
        crate::tls::https_client(&self.data.join("tls-cert.pem"), Duration::from_secs(10))
    }

    /// A counter or gauge from the proxy's `/metrics` (`name` with its labels, as printed).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = crate::http_request(self.metrics, "GET", "/metrics", None, None)?;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// SIGTERM, then SIGKILL after the grace; the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        terminate(&mut child, STOP_TIMEOUT).and_then(|s| s.code())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

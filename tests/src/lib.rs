//! pbx-tests: end-to-end tests of the real `pbx` binary against real clients (see `tests/`).
//!
//! The harness starts `pbx appliance` on 127.0.0.1 with free ports and a temporary data
//! directory, waits (bounded) for `/healthz`, and on drop stops it: SIGTERM, a bounded wait,
//! then SIGKILL — no test leaks a process. It runs SIPp (Debian `sip-tester`) with bounded
//! timeouts, speaks raw SIP over UDP/TCP for what SIPp cannot do, and computes digests with
//! its own MD5/SHA-256 code, independent of the product's. For calls it adds RTP and pcap
//! handling ([`rtp`]), G.711 and tone detection ([`audio`]) and a scripted softphone
//! ([`baresip`]), all independent of the product's media code too.

pub mod audio;
pub mod baresip;
pub mod licence_server;
pub mod proxy;
pub mod push_gateway;
pub mod rtp;
pub mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest a node may take to answer /healthz after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a node may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on one SIPp run: SIPp's own `-timeout`; the harness kills it
/// [`SIPP_KILL_GRACE`] later.
pub const SIPP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after its own `-timeout` a SIPp run may take to exit before it is killed.
pub const SIPP_KILL_GRACE: Duration = Duration::from_secs(10);

/// The `pbx` binary, built once per test process.
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_binary("pbx-node", "pbx")).clone()
}

/// The simulator's `pbx-sim` binary (its own crate: pbx does not compile it in), built once
/// per test process into the same directory as [`binary`], where `pbx sim` looks for it.
pub fn sim_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_binary("pbx-simulator", "pbx-sim")).clone()
}

/// Builds (debug) one binary of a workspace crate and returns its path.
fn build_binary(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(workspace_dir())
        .status()
        .unwrap_or_else(|e| panic!("run cargo build for the {bin} binary: {e}"));
    assert!(status.success(), "cargo build -p {package} --bin {bin} failed");
    let path = target_dir().join("debug").join(bin);
    assert!(path.exists(), "built {bin} binary not found at {}", path.display());
    path
}

pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() { dir } else { workspace_dir().join(dir) };
    }
    // …/target/debug/deps/<test binary> → …/target
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(|| workspace_dir().join("target"))
}

/// A path inside `tests/` (scenarios, data files).
pub fn asset(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A loopback port free for both UDP and TCP when asked, for a listener the test starts
/// (a node's SIP and HTTP, a softphone, a licence server).
///
/// Taken from the same range as [`free_port_block`], below the kernel's ephemeral ports: a
/// port the kernel picked for `bind(…:0)` and the probe then let go can be handed by the
/// kernel to another socket (a client's, a connection's source port) before the listener
/// binds it — CI once saw a node fail to start on "Address already in use" that way.
pub fn free_port() -> u16 {
    *hand_out(1, true).start()
}

/// `len` consecutive UDP ports on 127.0.0.1, all free when asked, for one node's `--rtp-ports`
/// (or a softphone's). Taken below the kernel's ephemeral range (32768 and up): the kernel
/// never picks these ports for a socket bound to port 0 or a connection's source.
pub fn free_port_block(len: u16) -> RangeInclusive<u16> {
    hand_out(len.max(2), false)
}

/// Never a block overlapping one already handed out in this process (pbx binds its RTP ports
/// only when a call needs them, so probing alone cannot tell); spread by process id so test
/// binaries running at once rarely probe the same ports. With `tcp`, each port must be free
/// for a TCP listener too.
fn hand_out(len: u16, tcp: bool) -> RangeInclusive<u16> {
    const LOW: u32 = 10_000;
    static HANDED_OUT: std::sync::Mutex<Vec<RangeInclusive<u32>>> = std::sync::Mutex::new(Vec::new());
    let high = ephemeral_start().min(32_000);
    let len = u32::from(len);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let offset = std::process::id().wrapping_mul(7_919) % (high - LOW);
    // Even starts, stepping by the length, from an offset that differs between processes.
    let span = high - LOW - len;
    let starts = (0..span / len.max(2)).map(|i| LOW + (offset / 2 * 2 + i * len.max(2)) % span);
    for start in starts {
        let block = start..=start + len - 1;
        if handed_out.iter().any(|b| b.start() <= block.end() && block.start() <= b.end()) {
            continue;
        }
        let free = |p: u32| {
            let udp = UdpSocket::bind(("127.0.0.1", p as u16));
            udp.is_ok() && (!tcp || TcpListener::bind(("127.0.0.1", p as u16)).is_ok())
        };
        if block.clone().all(free) {
            handed_out.push(block.clone());
            return *block.start() as u16..=*block.end() as u16;
        }
    }
    panic!("no block of {len} free ports between {LOW} and {high} (TCP too: {tcp})");
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), read once.
fn ephemeral_start() -> u32 {
    static START: OnceLock<u32> = OnceLock::new();
    *START.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .filter(|&low: &u32| low > 11_000)
            .unwrap_or(32_768)
    })
}

/// One extension declared in the node's config file.
#[derive(Clone)]
pub struct Ext {
    pub number: String,
    pub password: String,
    pub display_name: String,
}

pub fn ext(number: &str, password: &str) -> Ext {
    Ext { number: number.into(), password: password.into(), display_name: format!("Ext {number}") }
}

/// How to start a node.
#[derive(Clone)]
pub struct PbxOptions {
    pub extensions: Vec<Ext>,
    /// Extra `key = value` lines for the `[registrar]` table.
    pub registrar: Vec<String>,
    /// `key = value` lines for the `[calls]` table (written only when there are some).
    pub calls: Vec<String>,
    /// `--rtp-ports`; the binary's default when `None`.
    pub rtp_ports: Option<RangeInclusive<u16>>,
    /// `key = value` lines for the `[licence]` table (written only when there are some).
    pub licence: Vec<String>,
    /// `key = value` lines for the `[privacy]` table (written only when there are some).
    pub privacy: Vec<String>,
    /// `key = value` lines for the `[sip]` table (written only when there are some).
    pub sip: Vec<String>,
    /// TOML appended to the config, a `[cluster]` section: the node then runs as `pbx node`.
    pub cluster: Option<String>,
    /// Extra environment variables for the process (`PBX_TEST_HOOKS=1`, say).
    pub env: Vec<(String, String)>,
    /// The soft open-file limit the node is started with (through `prlimit`); the hard limit
    /// stays the test's.
    pub open_files_soft: Option<u64>,
    /// TOML appended to the config as given (`[[conferences]]` tables, say).
    pub toml: Vec<String>,
}

impl Default for PbxOptions {
    /// Extensions 100 and 101; MD5 offered first so SIPp (MD5 only) can answer.
    fn default() -> Self {
        PbxOptions {
            extensions: vec![ext("100", "secret-100"), ext("101", "secret-101")],
            registrar: vec!["digest_algorithms = [\"MD5\", \"SHA-256\"]".into()],
            calls: Vec::new(),
            rtp_ports: None,
            licence: Vec::new(),
            privacy: Vec::new(),
            sip: Vec::new(),
            cluster: None,
            env: Vec::new(),
            open_files_soft: None,
            toml: Vec::new(),
        }
    }
}

impl PbxOptions {
    pub fn registrar(mut self, line: &str) -> Self {
        self.registrar.push(line.into());
        self
    }

    /// Challenges with MD5 only. baresip 1.0.0 (libre 1.0) gives up on a 401/407 as soon as
    /// one challenge has an algorithm other than MD5 ("Function not implemented"), whatever
    /// the order, so the default MD5-then-SHA-256 does not do for it.
    pub fn md5_only(mut self) -> Self {
        self.registrar.retain(|l| !l.starts_with("digest_algorithms"));
        self.registrar.push("digest_algorithms = [\"MD5\"]".into());
        self
    }

    pub fn calls(mut self, line: &str) -> Self {
        self.calls.push(line.into());
        self
    }

    pub fn licence(mut self, line: &str) -> Self {
        self.licence.push(line.into());
        self
    }

    /// Runs the node as `pbx node` with this `[cluster]` section.
    pub fn cluster(mut self, section: &str) -> Self {
        self.cluster = Some(section.into());
        self
    }

    /// Starts the node with `PBX_TEST_HOOKS=1`: `POST /api/v1/debug/panic/{actor}` exists.
    pub fn test_hooks(mut self) -> Self {
        self.env.push(("PBX_TEST_HOOKS".into(), "1".into()));
        self
    }

    pub fn privacy(mut self, line: &str) -> Self {
        self.privacy.push(line.into());
        self
    }

    pub fn sip(mut self, line: &str) -> Self {
        self.sip.push(line.into());
        self
    }

    /// Starts the node with this soft open-file limit (`prlimit --nofile=N:`).
    pub fn open_files_soft(mut self, limit: u64) -> Self {
        self.open_files_soft = Some(limit);
        self
    }

    /// Appends this TOML to the config file (after the extensions).
    pub fn toml(mut self, text: &str) -> Self {
        self.toml.push(text.into());
        self
    }

    /// A private block of `count` RTP ports (see [`free_port_block`]), so parallel tests never
    /// share one and a test can tell pbx's media ports from everyone else's.
    pub fn own_rtp_ports(mut self, count: u16) -> Self {
        self.rtp_ports = Some(free_port_block(count));
        self
    }
}

/// A running `pbx appliance`, stopped on drop.
pub struct Pbx {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub sip: SocketAddr,
    /// SIP over TLS (`--sip-tls-listen`), on a port of its own.
    pub tls: SocketAddr,
    pub http: SocketAddr,
    pub token: String,
    /// The `--rtp-ports` it was given, if any.
    pub rtp_ports: Option<RangeInclusive<u16>>,
    starts: u32,
    /// `appliance`, or `node` for a cluster member.
    subcommand: &'static str,
    env: Vec<(String, String)>,
    open_files_soft: Option<u64>,
}

impl Pbx {
    pub fn start(options: PbxOptions) -> Pbx {
        let dir = tempfile::Builder::new().prefix("pbx-e2e-").tempdir().expect("temp dir");
        let sip: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut toml = String::from("[registrar]\n");
        for line in &options.registrar {
            toml.push_str(line);
            toml.push('\n');
        }
        if !options.calls.is_empty() {
            toml.push_str("\n[calls]\n");
            for line in &options.calls {
                toml.push_str(line);
                toml.push('\n');
            }
        }
        for (table, lines) in [("licence", &options.licence), ("privacy", &options.privacy), ("sip", &options.sip)] {
            if !lines.is_empty() {
                toml.push_str(&format!("\n[{table}]\n"));
                for line in lines {
                    toml.push_str(line);
                    toml.push('\n');
                }
            }
        }
        for e in &options.extensions {
            toml.push_str(&format!(
                "\n[[extensions]]\nnumber = {:?}\npassword = {:?}\ndisplay_name = {:?}\n",
                e.number, e.password, e.display_name
            ));
        }
        for text in &options.toml {
            toml.push('\n');
            toml.push_str(text);
            toml.push('\n');
        }
        if let Some(cluster) = &options.cluster {
            toml.push('\n');
            toml.push_str(cluster);
        }
        std::fs::write(dir.path().join("pbx.toml"), toml).expect("write config");
        let rtp_ports = options.rtp_ports.clone();
        let subcommand = if options.cluster.is_some() { "node" } else { "appliance" };
        let env = options.env.clone();
        let open_files_soft = options.open_files_soft;
        let mut pbx = Pbx {
            child: None,
            dir,
            sip,
            tls,
            http,
            token: String::new(),
            rtp_ports,
            starts: 0,
            subcommand,
            env,
            open_files_soft,
        };
        pbx.spawn();
        pbx
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pbx.toml")
    }

    /// A scratch directory that lives as long as this node (SIPp traces, CSV files).
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("pbx-{}.log", self.starts))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("create node log");
        // prlimit sets the limit, then execs pbx: the child's pid stays pbx's.
        let mut command = match self.open_files_soft {
            Some(soft) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:")).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        command.arg(self.subcommand);
        if let Some(ports) = &self.rtp_ports {
            command.arg("--rtp-ports").arg(format!("{}-{}", ports.start(), ports.end()));
        }
        let child = command
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--config")
            .arg(self.config_path())
            .arg("--sip-listen")
            .arg(self.sip.to_string())
            .arg("--sip-tls-listen")
            .arg(self.tls.to_string())
            .arg("--http-listen")
            .arg(self.http.to_string())
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pbx");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("pbx exited during start-up with {status}:\n{}", self.log());
            }
            if http_request(self.http, "GET", "/healthz", None, None).is_some_and(|(code, _)| code == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "pbx not healthy within {START_TIMEOUT:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        self.token = std::fs::read_to_string(self.data_dir().join("admin.token"))
            .expect("admin.token written at start")
            .trim()
            .to_string();
    }

    /// Everything the node wrote on stderr, across restarts.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.dir.path().join(format!("pbx-{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    /// SIGTERM, then wait (bounded); returns the exit code. Kills it if it does not stop.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        match terminate(&mut child, STOP_TIMEOUT) {
            Some(status) => status.code(),
            None => panic!("pbx did not stop within {STOP_TIMEOUT:?} of SIGTERM:\n{}", self.log()),
        }
    }

    /// SIGKILL: the crash case. Nothing is flushed.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and start again on the same data directory and ports.
    pub fn restart(&mut self) {
        let code = self.stop();
        assert_eq!(code, Some(0), "pbx should exit 0 on SIGTERM:\n{}", self.log());
        self.spawn();
    }

    /// Start again after `kill9` (or `stop`).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "node still running");
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits (bounded) for the node to exit by itself; its exit code, `None` if it is still
    /// running at `timeout` (it is left running) or was killed by a signal.
    pub fn exit_within(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `GET /readyz`: its status and JSON body (`{"ready":…,"reasons":[…]}`).
    pub fn readyz(&self) -> (u16, serde_json::Value) {
        let (code, body) = http_request(self.http, "GET", "/readyz", None, None)
            .unwrap_or_else(|| panic!("no answer to /readyz:\n{}", self.log()));
        (code, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz body {body:?}: {e}")))
    }

    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http_request(self.http, method, path, body, Some(&self.token))
            .unwrap_or_else(|| panic!("no HTTP answer for {method} {path}:\n{}", self.log()))
    }

    pub fn registrations(&self) -> Vec<serde_json::Value> {
        let (code, body) = self.api("GET", "/api/v1/registrations", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("registrations JSON")
    }

    /// The contacts registered for one extension, per the API.
    pub fn contacts_of(&self, aor: &str) -> Vec<String> {
        self.registrations()
            .into_iter()
            .filter(|r| r["aor"] == aor)
            .map(|r| r["contact"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Waits (at most 10 s) until `sipp`'s address is extension `user`'s only contact.
    pub fn wait_registered(&self, user: &str, sipp: &SippProcess) {
        let contact = format!("sip:{user}@{};transport=UDP", sipp.local());
        assert!(
            wait_until(Duration::from_secs(10), || self.contacts_of(user) == [contact.clone()]),
            "{user} not registered as {contact}: {:?}",
            self.registrations()
        );
    }

    pub fn metrics(&self) -> String {
        http_request(self.http, "GET", "/metrics", None, None).expect("metrics answer").1
    }

    /// The value of one metric line (name with labels exactly as printed), if present.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
        })
    }

    /// The node answers a fresh OPTIONS over UDP with 200.
    pub fn answers_options(&self) -> bool {
        let mut client = SipClient::udp(self.sip);
        let request = client.request("OPTIONS", &format!("sip:{}", self.sip), "100", None, &[]);
        client.send(&request);
        client.recv(Duration::from_secs(3)).is_some_and(|m| status_code(&m) == Some(200))
    }
}

/// SIGTERM, then up to `grace` for the process to exit; SIGKILL if it has not. Its exit status
/// when it stopped by itself in time.
pub fn terminate(child: &mut std::process::Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for Pbx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_TIMEOUT);
        }
        if std::thread::panicking() {
            eprintln!("---- pbx log ----\n{}", self.log());
        }
    }
}

/// A minimal HTTP/1.1 client (Connection: close), bounded by timeouts. `None` when the node
/// does not answer at all.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.into() };
    Some((code, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// The status code of a SIP response text.
pub fn status_code(message: &str) -> Option<u16> {
    message.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// Every value of a header (by full name, case-insensitive) in a SIP message text.
pub fn header_values(message: &str, name: &str) -> Vec<String> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// Asserts that `response` is a 503 with exactly one `Retry-After` of a positive number of
/// seconds (RFC 3261 §21.5.4: busy for now, try again then).
pub fn assert_busy_with_retry_after(response: &str) {
    assert_eq!(status_code(response), Some(503), "{response}");
    let retry_after = header_values(response, "Retry-After");
    assert!(
        retry_after.len() == 1 && retry_after[0].parse::<u32>().is_ok_and(|s| s > 0),
        "Retry-After: {retry_after:?} in {response}"
    );
}

/// The header names of a SIP message, in order.
pub fn header_names(message: &str) -> Vec<String> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).filter_map(|l| l.split_once(':')).map(|(n, _)| n.trim().to_string()).collect()
}

/// A raw SIP client on one UDP socket or one TCP connection, for what SIPp cannot do.
pub struct SipClient {
    udp: Option<UdpSocket>,
    tcp: Option<Stream>,
    server: SocketAddr,
    local: SocketAddr,
    cseq: u32,
    call_id: String,
    tag: String,
    buffer: Vec<u8>,
}

/// A SIP client's stream: TCP, or TLS over it.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tls::TlsStream>),
}

impl Stream {
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(bytes),
            Stream::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        }
    }
}

impl SipClient {
    pub fn udp(server: SocketAddr) -> SipClient {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client UDP");
        let local = socket.local_addr().expect("local addr");
        SipClient::new(Some(socket), None, server, local)
    }

    /// A UDP client on `ip` (another loopback address, e.g. 127.0.0.2: a different source).
    pub fn udp_on(ip: std::net::IpAddr, server: SocketAddr) -> SipClient {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind client UDP");
        let local = socket.local_addr().expect("local addr");
        SipClient::new(Some(socket), None, server, local)
    }

    pub fn tcp(server: SocketAddr) -> SipClient {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(3)).expect("connect TCP");
        let local = stream.local_addr().expect("local addr");
        SipClient::new(None, Some(Stream::Tcp(stream)), server, local)
    }

    /// A TLS client (see [`tls::connect`]): trusts only the certificate with `fingerprint`.
    pub fn tls(server: SocketAddr, fingerprint: &str, version: tls::Version) -> Result<SipClient, String> {
        let stream = tls::connect(server, fingerprint, version)?;
        let local = stream.sock.local_addr().map_err(|e| e.to_string())?;
        Ok(SipClient::new(None, Some(Stream::Tls(Box::new(stream))), server, local))
    }

    /// The TLS version and cipher suite negotiated, on a TLS client.
    pub fn tls_session(&self) -> Option<(rustls::ProtocolVersion, rustls::CipherSuite)> {
        match &self.tcp {
            Some(Stream::Tls(s)) => Some((s.conn.protocol_version()?, s.conn.negotiated_cipher_suite()?.suite())),
            _ => None,
        }
    }

    /// A UDP client on another local address (any of 127.0.0.0/8 on Linux): another phone,
    /// as far as pbx can tell.
    pub fn udp_from(local: std::net::IpAddr, server: SocketAddr) -> SipClient {
        let socket = UdpSocket::bind((local, 0)).expect("bind client UDP");
        let local = socket.local_addr().expect("local addr");
        SipClient::new(Some(socket), None, server, local)
    }

    /// A TCP client connected from another local address.
    pub fn tcp_from(local: std::net::IpAddr, server: SocketAddr) -> SipClient {
        let stream = tcp_connect_from(local, server).expect("connect TCP");
        let local = stream.local_addr().expect("local addr");
        SipClient::new(None, Some(Stream::Tcp(stream)), server, local)
    }

    fn new(udp: Option<UdpSocket>, tcp: Option<Stream>, server: SocketAddr, local: SocketAddr) -> SipClient {
        let id = format!("{:x}{:x}", local.port(), std::process::id());
        SipClient {
            udp,
            tcp,
            server,
            local,
            cseq: 0,
            call_id: format!("e2e-{id}"),
            tag: format!("t{id}"),
            buffer: Vec::new(),
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// A request from `user` with fresh branch and the next CSeq; `extra` header lines are
    /// added as given (e.g. `"Contact: <sip:100@127.0.0.1:5999>"`, `"Expires: 60"`).
    pub fn request(&mut self, method: &str, uri: &str, user: &str, to_user: Option<&str>, extra: &[&str]) -> String {
        self.cseq += 1;
        let transport = match &self.tcp {
            Some(Stream::Tls(_)) => "TLS",
            Some(Stream::Tcp(_)) => "TCP",
            None => "UDP",
        };
        let host = self.server.ip();
        let to = to_user.unwrap_or(user);
        let mut m = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {};branch=z9hG4bK-{}-{};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{user}@{host}>;tag={}\r\nTo: <sip:{to}@{host}>\r\nCall-ID: {}\r\nCSeq: {} {method}\r\nUser-Agent: pbx-e2e\r\n",
            self.local, self.call_id, self.cseq, self.tag, self.call_id, self.cseq
        );
        for line in extra {
            m.push_str(line);
            m.push_str("\r\n");
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    }

    pub fn send(&mut self, message: &str) {
        self.send_bytes(message.as_bytes());
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        if let Some(udp) = &self.udp {
            udp.send_to(bytes, self.server).expect("UDP send");
        } else if let Some(tcp) = &mut self.tcp {
            let _ = tcp.write_all(bytes);
        }
    }

    /// The next message, or `None` after `timeout`. On TCP, framed by Content-Length.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        if let Some(udp) = &self.udp {
            udp.set_read_timeout(Some(timeout)).ok()?;
            let mut buf = vec![0u8; 65_535];
            let (n, _) = udp.recv_from(&mut buf).ok()?;
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let tcp = self.tcp.as_mut()?;
        loop {
            if let Some(len) = frame_len(&self.buffer) {
                let message: Vec<u8> = self.buffer.drain(..len).collect();
                return Some(String::from_utf8_lossy(&message).into_owned());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            tcp.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
            let mut buf = [0u8; 8192];
            match tcp.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    /// Whether the server closed the TCP connection (reads EOF) within `timeout`.
    pub fn closed_by_server(&mut self, timeout: Duration) -> bool {
        let Some(tcp) = self.tcp.as_mut() else { return false };
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let _ = tcp.set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match tcp.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends `request` and returns the first final response, skipping 1xx.
    pub fn transact(&mut self, request: &str) -> Option<String> {
        self.send(request);
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let m = self.recv(left)?;
            if status_code(&m).is_some_and(|c| c >= 200) {
                return Some(m);
            }
        }
        None
    }

    /// REGISTER for `user`, answering the digest challenge with `algorithm` ("MD5" or
    /// "SHA-256") and `password`. Returns the final response.
    pub fn register(&mut self, user: &str, password: &str, algorithm: &str, extra: &[&str]) -> Option<String> {
        let uri = format!("sip:{}", self.server);
        let first = self.request("REGISTER", &uri, user, None, extra);
        let challenge = self.transact(&first)?;
        if status_code(&challenge) != Some(401) {
            return Some(challenge);
        }
        let chosen = header_values(&challenge, "WWW-Authenticate")
            .into_iter()
            .find(|c| param(c, "algorithm").is_some_and(|a| a.eq_ignore_ascii_case(algorithm)))?;
        let auth = authorization(&chosen, user, password, "REGISTER", &uri, 1);
        let mut lines: Vec<&str> = extra.to_vec();
        let auth_line = format!("Authorization: {auth}");
        lines.push(&auth_line);
        let second = self.request("REGISTER", &uri, user, None, &lines);
        self.transact(&second)
    }
}

/// A TCP connection to `server` from `local` (the system picks the port), within 3 s.
pub fn tcp_connect_from(local: std::net::IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(local, 0).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(3))?;
    Ok(socket.into())
}

fn frame_len(buf: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(buf);
    let head_end = text.find("\r\n\r\n")? + 4;
    let length =
        header_values(&text[..head_end], "Content-Length").first().and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    (buf.len() >= head_end + length).then_some(head_end + length)
}

/// A parameter of a `Digest …` challenge, unquoted.
pub fn param(challenge: &str, name: &str) -> Option<String> {
    let body = challenge.trim_start_matches("Digest").trim();
    body.split(',').map(str::trim).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// `H(data)` as lowercase hex, for "MD5" or "SHA-256" (RFC 7616 §3.4.1).
pub fn hash_hex(algorithm: &str, data: &str) -> String {
    use sha2::Digest;
    if algorithm.eq_ignore_ascii_case("SHA-256") {
        hex::encode(sha2::Sha256::digest(data.as_bytes()))
    } else {
        hex::encode(md5::Md5::digest(data.as_bytes()))
    }
}

/// An `Authorization` value answering `challenge` (RFC 7616 §3.4, qop=auth), computed here.
pub fn authorization(challenge: &str, user: &str, password: &str, method: &str, uri: &str, nc: u32) -> String {
    let realm = param(challenge, "realm").unwrap_or_default();
    let nonce = param(challenge, "nonce").unwrap_or_default();
    let opaque = param(challenge, "opaque");
    let algorithm = param(challenge, "algorithm").unwrap_or_else(|| "MD5".into());
    let cnonce = format!("{:08x}", nc.wrapping_mul(2_654_435_761));
    let nc = format!("{nc:08x}");
    let ha1 = hash_hex(&algorithm, &format!("{user}:{realm}:{password}"));
    let ha2 = hash_hex(&algorithm, &format!("{method}:{uri}"));
    let response = hash_hex(&algorithm, &format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    let opaque = opaque.map(|o| format!(", opaque=\"{o}\"")).unwrap_or_default();
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm={algorithm}, qop=auth, nc={nc}, cnonce=\"{cnonce}\"{opaque}"
    )
}

/// One message in a SIPp trace.
#[derive(Debug, Clone)]
pub struct SippMessage {
    /// Sent by SIPp (else received).
    pub sent: bool,
    /// The message as on the wire (CRLF line ends).
    pub text: String,
}

/// The result of one SIPp run.
pub struct SippRun {
    pub success: bool,
    pub exit_code: Option<i32>,
    /// SIPp's message trace (`-trace_msg`): every message sent and received.
    pub messages: String,
    /// SIPp's error trace and stderr, for failure reports.
    pub errors: String,
    /// SIPp's final statistics screen (its stdout).
    pub screen: String,
}

impl SippRun {
    /// Every message of the trace, in order.
    pub fn trace(&self) -> Vec<SippMessage> {
        self.messages
            .split("----------------------------------------------- ")
            .filter_map(|chunk| {
                // "<timestamp>\nUDP message sent (N bytes):\n\n<message>\n"
                let (_, rest) = chunk.split_once('\n')?;
                let sent = match rest.get(4..) {
                    Some(r) if r.starts_with("message sent") => true,
                    Some(r) if r.starts_with("message received") => false,
                    _ => return None,
                };
                let (_, message) = rest.split_once("\n\n")?;
                let message = message.strip_suffix('\n').unwrap_or(message);
                Some(SippMessage { sent, text: message.replace("\r\n", "\n").replace('\n', "\r\n") })
            })
            .collect()
    }

    /// The received messages, in order, as texts.
    pub fn received(&self) -> Vec<String> {
        self.trace().into_iter().filter(|m| !m.sent).map(|m| m.text).collect()
    }

    /// The sent messages, in order, as texts.
    pub fn sent(&self) -> Vec<String> {
        self.trace().into_iter().filter(|m| m.sent).map(|m| m.text).collect()
    }

    pub fn received_codes(&self) -> Vec<u16> {
        self.received().iter().filter_map(|m| status_code(m)).collect()
    }

    /// The received requests with this method, in order.
    pub fn received_requests(&self, method: &str) -> Vec<String> {
        self.received().into_iter().filter(|m| request_method(m) == Some(method)).collect()
    }

    /// The sent requests with this method, in order.
    pub fn sent_requests(&self, method: &str) -> Vec<String> {
        self.sent().into_iter().filter(|m| request_method(m) == Some(method)).collect()
    }

    /// A cumulative count from SIPp's final statistics screen, by its label ("Successful
    /// call", "Failed call", "Total Call created").
    pub fn calls_counted(&self, label: &str) -> Option<u64> {
        let line = self.screen.lines().rfind(|l| l.trim_start().starts_with(label))?;
        line.split('|').nth(2)?.trim().parse().ok()
    }

    /// Everything about the run, for an assertion message.
    pub fn report(&self) -> String {
        format!("exit {:?}\n{}\n{}\n{}", self.exit_code, self.errors, self.screen, self.messages)
    }
}

/// The method of a SIP request text (`None` for a response).
pub fn request_method(message: &str) -> Option<&str> {
    let first = message.lines().next()?;
    if first.starts_with("SIP/2.0") {
        return None;
    }
    first.split(' ').next()
}

/// The body of a SIP message text (after the blank line).
pub fn body(message: &str) -> &str {
    message.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// The port and payload types of an SDP body's first `m=audio` line.
pub fn sdp_audio(sdp: &str) -> Option<(u16, Vec<u8>)> {
    let line = sdp.lines().find_map(|l| l.trim().strip_prefix("m=audio "))?;
    let mut fields = line.split_whitespace();
    let port = fields.next()?.parse().ok()?;
    let _protocol = fields.next()?;
    Some((port, fields.filter_map(|f| f.parse().ok()).collect()))
}

/// The SDP direction attribute (RFC 3264 §5.1; `sendrecv` when absent).
pub fn sdp_direction(sdp: &str) -> &'static str {
    sdp.lines()
        .find_map(|l| {
            ["sendrecv", "sendonly", "recvonly", "inactive"]
                .into_iter()
                .find(|d| l.trim().strip_prefix("a=") == Some(d))
        })
        .unwrap_or("sendrecv")
}

/// A SIPp invocation: scenario from `tests/sipp/`, target, arguments; then [`Sipp::run`] to
/// wait for it or [`Sipp::spawn`] to leave it running (a callee waiting for calls). Traces,
/// stderr and stdout go to files in the given directory, so a long run never blocks on a pipe.
pub struct Sipp {
    scenario: String,
    target: Option<SocketAddr>,
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
    timeout: Duration,
    trace: bool,
}

impl Sipp {
    /// SIPp on 127.0.0.1 and a free port, talking to `target`, writing into `dir`.
    pub fn new(scenario: &str, target: SocketAddr, dir: &Path) -> Sipp {
        Sipp { target: Some(target), ..Sipp::server(scenario, dir) }
    }

    /// SIPp waiting for calls (a scenario that starts with `<recv>`), for peer-to-peer runs.
    pub fn server(scenario: &str, dir: &Path) -> Sipp {
        Sipp {
            scenario: scenario.into(),
            target: None,
            dir: dir.to_path_buf(),
            port: free_port(),
            args: Vec::new(),
            timeout: SIPP_TIMEOUT,
            trace: true,
        }
    }

    /// More SIPp flags, as given.
    pub fn args(mut self, args: &[&str]) -> Sipp {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `-key name value`.
    pub fn key(self, name: &str, value: &str) -> Sipp {
        self.args(&["-key", name, value])
    }

    /// The keys of the `call_uac*.xml` scenarios: `from` calls `to`, answering a challenge with
    /// `password`. `-auth_uri` makes SIPp's digest `uri` the Request-URI (by default SIPp puts
    /// just `sip:host:port` there, which a server checking RFC 2617's uri = Request-URI refuses).
    pub fn caller(self, from: &str, password: &str, to: &str) -> Sipp {
        let target = self.target.expect("a caller scenario has a target");
        self.args(&["-s", to, "-au", from, "-ap", password, "-auth_uri", &format!("{to}@{target}")]).key("caller", from)
    }

    /// The media keys of the call scenarios: the one codec in the SDP, the port in the SDP
    /// (`sink`'s: SIPp binds `-mp` and `-mp`+2, the SDP names `-mp`+4), and the pcap it plays
    /// from that port.
    pub fn media(self, law: audio::G711, sink: &rtp::RtpSink, pcap: Option<&Path>) -> Sipp {
        let sipp = self
            .key("pt", &law.payload_type().to_string())
            .key("codec", law.name())
            .args(&["-mp", &(sink.port() - rtp::SIPP_MEDIA_PORT_OFFSET).to_string()]);
        match pcap {
            Some(path) => sipp.key("pcap", &path.to_string_lossy()),
            None => sipp,
        }
    }

    /// SIPp as a phone registered at `pbx`: `call_register.xml` registers `user` with SIPp's
    /// own address as the contact, then `scenario` (as `-oocsf`) answers each INVITE pbx sends;
    /// SIPp exits once `calls` calls have finished.
    pub fn registered_callee(pbx: &Pbx, scenario: &str, user: &str, password: &str, calls: u32) -> Sipp {
        Sipp::new("call_register.xml", pbx.sip, &pbx.scratch())
            .args(&["-s", user, "-au", user, "-ap", password, "-m", "1", "-set", "expected_calls", &calls.to_string()])
            .args(&["-oocsf", &asset(&format!("sipp/{scenario}")).to_string_lossy()])
    }

    /// SIPp's `-timeout` (it then fails the run); the harness kills it [`SIPP_KILL_GRACE`] later.
    pub fn timeout(mut self, timeout: Duration) -> Sipp {
        self.timeout = timeout;
        self
    }

    /// No `-trace_msg`: for load runs, whose traces would be large.
    pub fn without_message_trace(mut self) -> Sipp {
        self.trace = false;
        self
    }

    /// The local SIP address SIPp binds.
    pub fn local(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn spawn(self) -> SippProcess {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = |what: &str| self.dir.join(format!("sipp-{run}-{what}.log"));
        let (trace, errors, stderr, stdout) = (file("messages"), file("errors"), file("stderr"), file("stdout"));
        let mut command = Command::new("sipp");
        command
            .arg("-sf")
            .arg(asset(&format!("sipp/{}", self.scenario)))
            .args(["-i", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .arg("-timeout")
            .arg(format!("{}s", self.timeout.as_secs().max(1)))
            .args(["-timeout_error", "-nostdin", "-trace_err"])
            .arg("-error_file")
            .arg(&errors);
        if self.trace {
            command.arg("-trace_msg").arg("-message_file").arg(&trace);
        }
        if let Some(target) = self.target {
            command.arg(target.to_string());
        }
        let child = command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("create sipp stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("create sipp stderr file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run sipp ({e}): install it with ./scripts/test (apt-get install sip-tester)")
            });
        SippProcess {
            child: Some(child),
            deadline: Instant::now() + self.timeout + SIPP_KILL_GRACE,
            local: self.local(),
            trace,
            errors,
            stderr,
            stdout,
        }
    }

    pub fn run(self) -> SippRun {
        self.spawn().wait()
    }
}

/// A SIPp process started by [`Sipp::spawn`]; killed on drop if still running.
pub struct SippProcess {
    child: Option<Child>,
    deadline: Instant,
    local: SocketAddr,
    trace: PathBuf,
    errors: PathBuf,
    stderr: PathBuf,
    stdout: PathBuf,
}

impl SippProcess {
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The messages it sent and received so far (SIPp writes its `-trace_msg` log as it goes).
    pub fn messages_so_far(&self) -> String {
        std::fs::read_to_string(&self.trace).unwrap_or_default()
    }

    /// The run of a callee whose caller ran as `caller`: waited for when the caller succeeded
    /// (the callee then ends by itself), else stopped at once rather than left to wait out its
    /// timeout for a call that will not come. A stopped run never counts as a success.
    pub fn finish_after(self, caller: &SippRun) -> SippRun {
        if caller.success { self.wait() } else { self.stop() }
    }

    /// SIGTERM (SIPp then writes its traces and exits at once), a bounded wait, SIGKILL; the run
    /// so far, marked unsuccessful.
    pub fn stop(mut self) -> SippRun {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        self.deadline = self.deadline.min(Instant::now() + SIPP_KILL_GRACE);
        SippRun { success: false, ..self.wait() }
    }

    /// SIGKILL: the phone vanishes without a word (no BYE); the run so far, unsuccessful.
    pub fn kill(mut self) -> SippRun {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
        }
        SippRun { success: false, ..self.wait() }
    }

    /// Waits until SIPp exits (killing it once its timeout and grace have passed); the run.
    pub fn wait(mut self) -> SippRun {
        let status = self.child.take().and_then(|mut child| {
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Some(status);
                }
                if Instant::now() > self.deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        SippRun {
            success: status.is_some_and(|s| s.success()),
            exit_code: status.and_then(|s| s.code()),
            messages: read(&self.trace),
            errors: format!("{}\n{}", read(&self.errors), read(&self.stderr)),
            screen: read(&self.stdout),
        }
    }
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs SIPp with a scenario from `tests/sipp/` against the node, bounded by `SIPP_TIMEOUT`.
/// `args` are extra SIPp flags (`-s 100 -au 100 -ap secret -m 1`, `-t t1` for TCP, …).
pub fn sipp(pbx: &Pbx, scenario: &str, args: &[&str]) -> SippRun {
    Sipp::new(scenario, pbx.sip, &pbx.scratch()).args(args).run()
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A query REGISTER (no Contact, RFC 3261 §10.2.3) for `user` from a fresh UDP client, answered
/// with MD5 digest; the final response.
pub fn query_bindings(pbx: &Pbx, user: &str, password: &str) -> String {
    let mut client = SipClient::udp(pbx.sip);
    client
        .register(user, password, "MD5", &[])
        .unwrap_or_else(|| panic!("no answer to a query REGISTER:\n{}", pbx.log()))
}

/// The bindings a REGISTER response lists: each Contact's URI (without `<>`) and its `expires`.
pub fn listed_bindings(response: &str) -> Vec<(String, u32)> {
    header_values(response, "Contact")
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|c| {
            let uri = c.trim().strip_prefix('<')?.split_once('>')?.0.to_string();
            let expires = c.split(';').find_map(|p| p.trim().strip_prefix("expires="))?.trim().parse().ok()?;
            Some((uri, expires))
        })
        .collect()
}

/// SIPp, asserting that the scenario ran to its end.
pub fn sipp_ok(pbx: &Pbx, scenario: &str, args: &[&str]) -> SippRun {
    let run = sipp(pbx, scenario, args);
    assert!(
        run.success,
        "sipp {scenario} {args:?} failed (exit {:?}):\n{}\n{}",
        run.exit_code, run.errors, run.messages
    );
    run
}

impl SipClient {
    /// Bounds every later write on a TCP client, so a flood the server stops reading cannot
    /// hang a test; a timed-out write is ignored like any other by `send_bytes`.
    pub fn set_write_timeout(&self, timeout: Duration) {
        if let Some(tcp) = &self.tcp {
            let _ = tcp.socket().set_write_timeout(Some(timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Port blocks handed out in one process never overlap and stay below the ephemeral range.
    #[test]
    fn port_blocks_are_disjoint() {
        let blocks: Vec<RangeInclusive<u16>> = [100, 20, 1000, 20, 100].into_iter().map(free_port_block).collect();
        for (i, a) in blocks.iter().enumerate() {
            assert!(*a.end() < 32_768 && *a.start() >= 10_000, "{a:?}");
            for b in &blocks[i + 1..] {
                assert!(a.end() < b.start() || b.end() < a.start(), "{a:?} overlaps {b:?}");
            }
        }
        assert_eq!(blocks[2].clone().count(), 1000);
    }

    /// The trace parser splits SIPp's `-trace_msg` output into messages with CRLF line ends.
    #[test]
    fn sipp_trace_parses() {
        let messages = "----------------------------------------------- 2026-11-26 22:07:02.162467\n\
UDP message sent (40 bytes):\n\nINVITE sip:101@h SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\nv=0\r\n\n\
----------------------------------------------- 2026-11-26 22:07:02.165954\n\
UDP message received [228] bytes :\n\nSIP/2.0 486 Busy Here\r\nCSeq: 1 INVITE\r\n\r\n\n";
        let run = SippRun {
            success: true,
            exit_code: Some(0),
            messages: messages.into(),
            errors: String::new(),
            screen: "  Successful call        |        0                  |       40                 \n".into(),
        };
        assert_eq!(run.sent(), ["INVITE sip:101@h SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\nv=0\r\n"]);
        assert_eq!(run.received_codes(), [486]);
        assert_eq!(body(&run.sent_requests("INVITE")[0]), "v=0\r\n");
        assert_eq!(run.calls_counted("Successful call"), Some(40));
        assert_eq!(run.calls_counted("Failed call"), None);
    }
}

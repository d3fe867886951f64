//! baresip as a scripted softphone: a real SIP user agent (its own SIP stack, digest, SDP
//! offer/answer, jitter buffer, G.711) that the call tests drive like a person would.
//!
//! Debian bookworm ships baresip 1.0.0; the smallest install is
//! `apt-get install -y --no-install-recommends baresip-core` (no GUI, video or GStreamer).
//! Each instance gets a config directory in a temp dir: SIP on 127.0.0.1 and a free port
//! (`net_interface 127.0.0.1` keeps the SDP on loopback too), a private block of RTP ports, a
//! generated tone WAV as its microphone (`aufile`), ALSA's `null` device as its speaker (no
//! sound card needed), every call's audio recorded by `sndfile` (`dump-…-dec.wav` is what it
//! received and decoded, `dump-…-enc.wav` what it sent), auto-answer, and the `ctrl_tcp`
//! module: commands (`dial`, `hangup`) and events (`REGISTER_OK`, `CALL_ESTABLISHED`,
//! `CALL_CLOSED`, …) as JSON in netstrings on a TCP port. Stopped on drop: SIGTERM, a bounded
//! wait, then SIGKILL.

use crate::audio::{G711_RATE_HZ, Wav, read_wav, tone, write_wav};
use crate::{free_port, free_port_block};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest baresip may take to open its control port.
pub const BARESIP_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest baresip may take to exit after SIGTERM (it unregisters first) before it is killed.
pub const BARESIP_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one control command may take to be answered.
pub const BARESIP_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the microphone tone lasts; calls in tests are shorter.
const SOURCE_SECONDS: f64 = 30.0;
/// A netstring longer than this is not baresip talking.
const NETSTRING_MAX_BYTES: usize = 1 << 20;

/// An account line that registers at `registrar` as `user` with digest `password`
/// (`regint` in seconds) and answers every call at once; G.711 only.
pub fn registered_account(user: &str, password: &str, registrar: SocketAddr) -> String {
    format!(
        "<sip:{user}@{registrar};transport=udp>;auth_pass={password};answermode=auto;audio_codecs=PCMU,PCMA;regint=600"
    )
}

/// An account line like [`registered_account`] over TLS to `tls` (baresip 1.0.0 checks no
/// certificate), with media encryption `mediaenc` (`srtp`: SDES offered in RTP/AVP, `srtp-mand`:
/// RTP/SAVP) when given.
pub fn registered_account_tls(user: &str, password: &str, tls: SocketAddr, mediaenc: Option<&str>) -> String {
    let mediaenc = mediaenc.map(|m| format!(";mediaenc={m}")).unwrap_or_default();
    format!(
        "<sip:{user}@{tls};transport=tls>;auth_pass={password};answermode=auto;audio_codecs=PCMU,PCMA;regint=600{mediaenc}"
    )
}

/// An account line that registers nowhere, for calls straight to `sip:user@127.0.0.1:port`.
pub fn local_account(user: &str) -> String {
    format!("<sip:{user}@127.0.0.1>;regint=0;answermode=auto;audio_codecs=PCMU")
}

/// A running baresip.
pub struct Baresip {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ctrl: TcpStream,
    buffer: Vec<u8>,
    /// Events read but not yet waited for.
    pending: VecDeque<Value>,
    /// Every event, for failure reports.
    history: Vec<Value>,
    next_token: u32,
    /// Where it takes SIP (UDP and TCP).
    pub sip: SocketAddr,
}

impl Baresip {
    /// Starts baresip with one `account` line (see [`registered_account`], [`local_account`])
    /// whose microphone plays a sine of `tone_hz` (8 kHz mono WAV).
    pub fn start(account: &str, tone_hz: f64) -> Baresip {
        let dir = tempfile::Builder::new().prefix("baresip-e2e-").tempdir().expect("temp dir");
        let sip: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let ctrl_port = free_port();
        let rtp = free_port_block(20);
        let recordings = dir.path().join("rec");
        std::fs::create_dir(&recordings).expect("create recordings dir");
        let source = dir.path().join("source.wav");
        write_wav(&source, G711_RATE_HZ, &tone(tone_hz, G711_RATE_HZ, SOURCE_SECONDS, 8000.0)).expect("write tone");
        let config = format!(
            "poll_method epoll\n\
             sip_listen {sip}\n\
             net_interface 127.0.0.1\n\
             call_local_timeout 120\n\
             audio_player alsa,null\n\
             audio_alert alsa,null\n\
             audio_source aufile,{source}\n\
             ausrc_srate {G711_RATE_HZ}\n\
             auplay_srate {G711_RATE_HZ}\n\
             ausrc_channels 1\n\
             auplay_channels 1\n\
             rtp_ports {rtp_low}-{rtp_high}\n\
             jitter_buffer_delay 1-10\n\
             statmode_default off\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module aufile.so\n\
             module alsa.so\n\
             module sndfile.so\n\
             module srtp.so\n\
             module_tmp account.so\n\
             module_app menu.so\n\
             module_app ctrl_tcp.so\n\
             ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n\
             snd_path {recordings}\n",
            source = source.display(),
            rtp_low = rtp.start(),
            rtp_high = rtp.end(),
            recordings = recordings.display(),
        );
        std::fs::write(dir.path().join("config"), config).expect("write baresip config");
        std::fs::write(dir.path().join("accounts"), format!("{account}\n")).expect("write baresip accounts");
        let log = std::fs::File::create(dir.path().join("baresip.log")).expect("create baresip log");
        let child = Command::new("baresip")
            .arg("-f")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run baresip ({e}): apt-get install -y --no-install-recommends baresip-core")
            });
        let mut child = Some(child);
        let deadline = Instant::now() + BARESIP_START_TIMEOUT;
        let ctrl = loop {
            if let Ok(stream) =
                TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], ctrl_port)), Duration::from_secs(1))
            {
                break stream;
            }
            let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let log = std::fs::read_to_string(dir.path().join("baresip.log")).unwrap_or_default();
                panic!("baresip did not open its control port ({exited:?}):\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Baresip {
            child,
            dir,
            ctrl,
            buffer: Vec::new(),
            pending: VecDeque::new(),
            history: Vec::new(),
            next_token: 0,
            sip,
        }
    }

    /// Runs a control command (`dial`, `hangup`, `reginfo`, …); the response's `data`, or its
    /// error text.
    pub fn command(&mut self, command: &str, params: &str) -> Result<String, String> {
        self.next_token += 1;
        let token = format!("t{}", self.next_token);
        let request = serde_json::json!({"command": command, "params": params, "token": token}).to_string();
        self.ctrl
            .write_all(format!("{}:{request},", request.len()).as_bytes())
            .map_err(|e| format!("write to baresip control port: {e}"))?;
        let deadline = Instant::now() + BARESIP_COMMAND_TIMEOUT;
        loop {
            let message = self.next_message(deadline).ok_or_else(|| format!("no answer to {command}"))?;
            if message["response"] == true && message["token"] == token.as_str() {
                let data = message["data"].as_str().unwrap_or_default().to_string();
                return if message["ok"] == true { Ok(data) } else { Err(data) };
            }
        }
    }

    /// Waits (bounded) for an event of this type (`CALL_ESTABLISHED`, …) not waited for yet.
    pub fn wait_event(&mut self, kind: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending.iter().position(|e| e["type"] == kind) {
                return self.pending.remove(i);
            }
            self.next_message(deadline)?;
        }
    }

    /// Whether its account is registered, per `reginfo` (a `REGISTER_OK` event may have gone
    /// out before the control connection was up, so events alone cannot tell).
    pub fn is_registered(&mut self) -> bool {
        self.command("reginfo", "").is_ok_and(|info| info.contains("OK") && !info.contains("ERR"))
    }

    /// Dials `uri` (e.g. `sip:101@127.0.0.1:5060`).
    pub fn dial(&mut self, uri: &str) {
        if let Err(e) = self.command("dial", uri) {
            panic!("baresip dial {uri}: {e}\n{}", self.report());
        }
    }

    /// Hangs up the current call.
    pub fn hangup(&mut self) {
        if let Err(e) = self.command("hangup", "") {
            panic!("baresip hangup: {e}\n{}", self.report());
        }
    }

    /// What it received in its last call (the newest `dump-…-dec.wav`), once that call closed.
    pub fn received_audio(&self) -> Option<Wav> {
        let newest = std::fs::read_dir(self.dir.path().join("rec"))
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())?;
        read_wav(&newest).ok()
    }

    /// What it wrote on stdout and stderr so far.
    /// Checks what this phone heard (more than 2 s recorded, `hz` the loudest frequency in the
    /// middle of it) and gives the share of the recording's energy at `hz`.
    pub fn assert_hears(&self, hz: f64) -> f64 {
        let wav = self.received_audio().unwrap_or_else(|| panic!("no recording\n{}", self.report()));
        let (samples, rate) = (wav.mono(), wav.rate_hz as usize);
        assert!(samples.len() > 2 * rate, "{} samples\n{}", samples.len(), self.report());
        let middle = &samples[rate / 2..samples.len() - rate / 2];
        assert_eq!(crate::audio::dominant_frequency(middle, wav.rate_hz), hz, "\n{}", self.report());
        crate::audio::tone_share(middle, wav.rate_hz, hz)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    /// Its log and every event so far, for an assertion message.
    pub fn report(&self) -> String {
        let log = self.log();
        let events: Vec<String> = self.history.iter().map(Value::to_string).collect();
        format!("---- baresip {} log ----\n{log}\n---- events ----\n{}", self.sip, events.join("\n"))
    }

    /// The next netstring message (event or response); events are queued. `None` at the
    /// deadline or when the control connection fails.
    fn next_message(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            if let Some(message) = self.take_netstring() {
                if message["event"] == true {
                    self.history.push(message.clone());
                    self.pending.push_back(message.clone());
                }
                return Some(message);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.ctrl.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
            let mut chunk = [0u8; 8192];
            match self.ctrl.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// One `len:json,` netstring from the buffer, if complete. Garbage is dropped.
    fn take_netstring(&mut self) -> Option<Value> {
        let colon = self.buffer.iter().position(|&b| b == b':')?;
        let len: usize = match std::str::from_utf8(&self.buffer[..colon]).ok().and_then(|s| s.trim().parse().ok()) {
            Some(len) if len <= NETSTRING_MAX_BYTES => len,
            _ => {
                self.buffer.clear();
                return None;
            }
        };
        let end = colon + 1 + len;
        if self.buffer.len() <= end {
            return None;
        }
        let value = serde_json::from_slice(&self.buffer[colon + 1..end]).unwrap_or(Value::Null);
        self.buffer.drain(..=end);
        Some(value)
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::terminate(&mut child, BARESIP_STOP_TIMEOUT);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

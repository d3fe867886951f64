//! The softphone proxy's ledger over virtual time: the product's own
//! [`pbx_actors::proxy::Ledger`], fed as `pbx proxy`'s session actors feed it, with a disk that
//! holds what its `Persist` outputs wrote.
//!
//! Some phones of the office are softphones that reach the PBX through the proxy ("remote"):
//! each of their SIP messages is a use of their session (told at most every 30 s, as the
//! session actor does), each call they dial a destination. Now and then a remote phone roams
//! (a new network, a new external address): its old session is silent for good, and must go
//! 365 days after its last use. Now and then the PBX's admin switches debug mode on (for the
//! default 28 days, or some days, or more than the 90 the ledger allows), or off early.
//!
//! The relay itself (QUIC, TLS, media) is not simulated: the phones still reach the node
//! directly; only what the proxy records is.

use crate::check::Checker;
use pbx_actors::Timestamp;
use pbx_actors::proxy::{Ledger, LedgerConfig, LedgerInput, LedgerOutput, LedgerState, Persist, SessionKey};
use rand::Rng;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The serial the simulated PBX links to the proxy with.
pub const PBX_SERIAL: &str = "SIM-PBX-1";
/// The PBX's address as the proxy sees it (TEST-NET-3).
const PBX_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)), 4433);
/// How often the proxy's session actor tells a use at most (`session::SEEN_EVERY` in
/// pbx-proxy-service).
const SEEN_EVERY: Duration = Duration::from_secs(30);
const DAY_S: f64 = 86_400.0;

/// The proxy in a run.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyOptions {
    pub enabled: bool,
    /// Phones that are softphones reaching the PBX through the proxy.
    pub remote_share: f64,
    /// How often a remote phone moves to another network (its old session goes silent).
    pub roams_per_phone_per_30d: f64,
    /// How often the admin switches debug mode (on, or off while it is on).
    pub debug_switches_per_30d: f64,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions { enabled: true, remote_share: 0.25, roams_per_phone_per_30d: 1.5, debug_switches_per_30d: 6.0 }
    }
}

/// What the proxy's `proxy.redb` holds, as the `Persist` outputs wrote it.
#[derive(Debug, Default)]
pub struct ProxyDisk {
    /// Session → its last use as stored.
    pub sessions: BTreeMap<SessionKey, Timestamp>,
    pub sessions_by_last_use: BTreeSet<(Timestamp, SessionKey)>,
    /// Debug record id → when it was made.
    pub debug: BTreeMap<u64, Timestamp>,
    pub debug_by_at: BTreeSet<(Timestamp, u64)>,
    /// PBX serial → the end of its debug mode.
    pub modes: BTreeMap<String, Timestamp>,
}

impl ProxyDisk {
    pub fn apply(&mut self, p: &Persist) {
        match p {
            Persist::PutSession(record) => {
                let key = record.key();
                if let Some(old) = self.sessions.insert(key.clone(), record.last_use) {
                    self.sessions_by_last_use.remove(&(old, key.clone()));
                }
                self.sessions_by_last_use.insert((record.last_use, key));
            }
            Persist::DeleteSession(key) => {
                if let Some(old) = self.sessions.remove(key) {
                    self.sessions_by_last_use.remove(&(old, key.clone()));
                }
            }
            Persist::PutDebug { id, record } => {
                if let Some(old) = self.debug.insert(*id, record.at) {
                    self.debug_by_at.remove(&(old, *id));
                }
                self.debug_by_at.insert((record.at, *id));
            }
            Persist::DeleteDebug { id } => {
                if let Some(at) = self.debug.remove(id) {
                    self.debug_by_at.remove(&(at, *id));
                }
            }
            Persist::PutDebugMode { pbx_serial, until } => {
                self.modes.insert(pbx_serial.clone(), *until);
            }
            Persist::DeleteDebugMode { pbx_serial } => {
                self.modes.remove(pbx_serial);
            }
        }
    }
}

/// One remote phone.
#[derive(Debug)]
struct Remote {
    /// Its external address as the proxy sees it.
    address: SocketAddr,
    next_roam: Timestamp,
    push_token: Option<String>,
    /// The last use told, and from where.
    told: Option<(Timestamp, SocketAddr)>,
}

/// What the proxy did, for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyReport {
    pub remote_phones: u64,
    pub roams: u64,
    pub debug_switches: u64,
    pub destinations: u64,
    pub sessions_written: u64,
    pub sessions_reaped: u64,
    pub debug_reaped: u64,
    pub sessions: u64,
    pub debug_records: u64,
}

pub struct SimProxy {
    options: ProxyOptions,
    ledger: Ledger,
    pub disk: ProxyDisk,
    rng: StdRng,
    /// By phone index: `Some` for a remote phone.
    remote: Vec<Option<Remote>>,
    next_switch: Timestamp,
    /// The ledger's wake-up the simulation has scheduled.
    pub armed: Option<Timestamp>,
    /// The ledger handled an input since [`SimProxy::take_changed`] last asked (its
    /// `poll_timeout` may have moved).
    changed: bool,
    pub report: ProxyReport,
}

fn exponential(rng: &mut StdRng, mean_s: f64) -> Duration {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-u.ln() * mean_s)
}

impl SimProxy {
    /// The proxy of `phones` phones, its draws from `rng` (a stream of its own).
    pub fn new(options: ProxyOptions, mut rng: StdRng, phones: usize, now: Timestamp) -> SimProxy {
        let ledger = Ledger::new(LedgerConfig::default(), LedgerState::default(), now);
        let mut report = ProxyReport::default();
        let remote = (0..phones)
            .map(|i| {
                let remote = rng.random_bool(options.remote_share.clamp(0.0, 1.0));
                remote.then(|| {
                    report.remote_phones += 1;
                    let next_roam =
                        now + exponential(&mut rng, 30.0 * DAY_S / options.roams_per_phone_per_30d.max(1e-9));
                    let address = external_address(&mut rng);
                    Remote {
                        address,
                        next_roam,
                        push_token: (i % 2 == 0).then(|| format!("sim-token-{i}")),
                        told: None,
                    }
                })
            })
            .collect();
        let next_switch = now + exponential(&mut rng, 30.0 * DAY_S / options.debug_switches_per_30d.max(1e-9));
        SimProxy {
            options,
            ledger,
            disk: ProxyDisk::default(),
            rng,
            remote,
            next_switch,
            armed: None,
            changed: true,
            report,
        }
    }

    pub fn config(&self) -> &LedgerConfig {
        self.ledger.config()
    }

    /// When the ledger next wants a `Tick`.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.ledger.poll_timeout()
    }

    /// Whether the ledger handled anything since the last ask: only then may its wake-up
    /// have moved (so the simulation asks `poll_timeout` only then).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Phone `phone` sent a SIP message at `now`: if it is remote, a use of its session.
    pub fn phone_sent(&mut self, now: Timestamp, phone: usize, extension: &str, checker: &mut Checker) {
        let Some(Some(remote)) = self.remote.get_mut(phone) else { return };
        if now >= remote.next_roam {
            remote.address = external_address(&mut self.rng);
            let mean = 30.0 * DAY_S / self.options.roams_per_phone_per_30d.max(1e-9);
            remote.next_roam = now + exponential(&mut self.rng, mean);
            self.report.roams += 1;
        }
        let address = remote.address;
        if remote.told.is_some_and(|(at, from)| from == address && now - at < SEEN_EVERY) {
            return;
        }
        remote.told = Some((now, address));
        let push_token = remote.push_token.clone();
        checker.proxy_used(now, extension, address);
        let seen = LedgerInput::Seen {
            softphone: address,
            pbx: PBX_ADDRESS,
            pbx_serial: PBX_SERIAL.into(),
            user: extension.into(),
            push_token,
        };
        self.ledger.handle(now, seen);
        self.drain(now, checker);
    }

    /// Phone `phone` dialled `callee`: if it is remote, the proxy sees the call's destination.
    pub fn phone_dialled(
        &mut self,
        now: Timestamp,
        phone: usize,
        extension: &str,
        callee: &str,
        checker: &mut Checker,
    ) {
        if !matches!(self.remote.get(phone), Some(Some(_))) {
            return;
        }
        let destination = format!("Colleague {callee} <{callee}>");
        let input = LedgerInput::Destination { pbx_serial: PBX_SERIAL.into(), user: extension.into(), destination };
        self.ledger.handle(now, input);
        self.drain(now, checker);
    }

    /// At a check point: the admin switches debug mode when it is time (never while draining).
    pub fn maybe_switch_debug(&mut self, now: Timestamp, draining: bool, checker: &mut Checker) {
        if draining || now < self.next_switch {
            return;
        }
        let mean = 30.0 * DAY_S / self.options.debug_switches_per_30d.max(1e-9);
        self.next_switch = now + exponential(&mut self.rng, mean);
        self.report.debug_switches += 1;
        let on = self.ledger.debug_until(PBX_SERIAL, now).is_some();
        let until = if on && self.rng.random_bool(0.5) {
            None
        } else {
            // The default length, a few days, or more than the ledger allows.
            let days = match self.rng.random_range(0..4) {
                0 | 1 => 0,
                2 => self.rng.random_range(1..=14),
                _ => self.rng.random_range(60..=200),
            };
            Some(self.ledger.debug_mode_end(now, days))
        };
        self.ledger.handle(now, LedgerInput::DebugMode { pbx_serial: PBX_SERIAL.into(), until });
        checker.proxy_debug_mode(now, self.ledger.debug_until(PBX_SERIAL, now));
        self.drain(now, checker);
    }

    /// The ledger's wake-up: the reaper runs if something is due.
    pub fn wake(&mut self, now: Timestamp, checker: &mut Checker) {
        if self.ledger.poll_timeout().is_some_and(|t| t <= now) {
            self.ledger.handle(now, LedgerInput::Tick);
        }
        self.drain(now, checker);
    }

    /// The ledger's outputs: each write is judged, then goes to the disk.
    fn drain(&mut self, now: Timestamp, checker: &mut Checker) {
        self.changed = true;
        while let Some(output) = self.ledger.poll_output() {
            match output {
                LedgerOutput::Persist(p) => {
                    checker.proxy_persisted(now, &p, &self.disk);
                    match &p {
                        Persist::PutSession(_) => self.report.sessions_written += 1,
                        Persist::PutDebug { .. } => self.report.destinations += 1,
                        _ => {}
                    }
                    self.disk.apply(&p);
                }
                LedgerOutput::Reaped { sessions, debug_records, .. } => {
                    self.report.sessions_reaped += sessions;
                    self.report.debug_reaped += debug_records;
                }
                LedgerOutput::Evicted { sessions, debug_records } => {
                    checker.proxy_evicted(now, sessions + debug_records);
                }
                LedgerOutput::Erased { .. } | LedgerOutput::Refused { .. } => {}
            }
        }
        let counts = self.ledger.counts();
        (self.report.sessions, self.report.debug_records) = (counts.sessions as u64, counts.debug_records as u64);
    }
}

/// A softphone's address on some network out there (198.18.0.0/15, the benchmarking range).
fn external_address(rng: &mut StdRng) -> SocketAddr {
    let ip = Ipv4Addr::new(198, rng.random_range(18..=19), rng.random(), rng.random_range(1..=254));
    SocketAddr::new(IpAddr::V4(ip), rng.random_range(1_024..=65_535))
}

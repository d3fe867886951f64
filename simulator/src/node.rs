//! One pbx node in the simulation: the product's own machines — endpoint (transactions),
//! registrar, a [`CallCore`] per call (the call machine and its legs', as the call actor runs
//! them), a relay machine per call's media — wired as the node's actors wire them, but
//! synchronously and on the node's virtual clock.
//!
//! The retention reaper runs here too, over the node's simulated disk: its batches are disk
//! writes, its answer comes once a batch is durable, and a node restarted after a crash builds
//! a new reaper whose first run is at once — the product's own restart path.
//!
//! This file is the simulator's counterpart of the actor shells (`actors/src/*/actor.rs`): it
//! routes each machine's outputs to the machine they are for, and hands the world what leaves
//! the node (datagrams, disk writes). It decides nothing a shell does not decide. The
//! endpoint's routing is not copied here but run: the product's own [`EndpointGlue`] (the leg
//! table with its start-up queue, the call-limit read, the addressing of the endpoint's
//! outputs) is driven here as the endpoint shell drives it; so is the call actor's
//! [`CallCore`] (a leg's events go back into its call in the same step), and the CDR of a call
//! that did not start is the calls shell's ([`not_started`]). Like the shells, each actor has a FIFO mailbox
//! ([`Mailboxes`]); which actor runs next is drawn from the seed, the way a multi-threaded
//! runtime would interleave them.

use bytes::Bytes;
use pbx_actors::Timestamp;
use pbx_actors::bugs::Bugs;
use pbx_actors::call::b2bua::{CallConfig, CallSetup};
use pbx_actors::call::core::{CallCore, CoreInput, CoreOutput, Legs};
use pbx_actors::call::{CallIds, CallStart, LegId, LocalSip, not_started, splitmix64};
use pbx_actors::cdr::{Cdr, MediaCounters};
use pbx_actors::endpoint::glue::{EndpointGlue, Envelope, GlueInput};
use pbx_actors::endpoint::machine::{Endpoint, EndpointEvent, EndpointInput};
use pbx_actors::entry::Entry;
use pbx_actors::licence::{Effective, Stored, Watchdog, WatchdogConfig, WatchdogEvent, WatchdogInput, WatchdogOutput};
use pbx_actors::media::actor::MediaError;
use pbx_actors::media::pool::PortPool;
use pbx_actors::media::relay::{PacketKind, Relay, RelayConfig, RelayInput, RelayOutput, Side};
use pbx_actors::privacy::AuditEntry;
use pbx_actors::privacy::reaper::{Batch, Reaper, ReaperConfig, ReaperInput, ReaperOutput};
use pbx_actors::privacy::{SecurityEntry, SecurityEvent};
use pbx_actors::registrar::glue::{self, WriteJob};
use pbx_actors::registrar::{
    Binding, Extension, Registrar, RegistrarCommand, RegistrarConfig, RegistrarEvent, RegistrarInput,
};
use pbx_actors::sip::message::{Response, Transport};
use pbx_actors::sip::transaction::TimerConfig;
use pbx_actors::store::StoreError;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// Mixed into the node's seed for its RTP port pool, so the pool draws its own sequence without
/// shifting the generators derived before it.
const POOL_SEED_SALT: u64 = 0x706f_7274_706f_6f6c;

/// How a node is set up; the same for every incarnation of it.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where its SIP socket listens; its media ports are on the same IP.
    pub sip: SocketAddr,
    pub rtp_ports: (u16, u16),
    pub registrar: RegistrarConfig,
    pub no_answer: Duration,
    pub rtp_timeout: Duration,
    /// (number, password): put at every start, as the appliance puts its config's extensions.
    pub extensions: Vec<(String, String)>,
    pub bugs: Bugs,
    /// After each message an actor handles, the chance that the node pauses (a descheduled
    /// thread, a slow actor) and lets the world go on before the rest of its mailboxes run.
    pub stall: f64,
    /// The licence watchdog's settings, when the node is licensed through a service.
    pub licence: Option<WatchdogConfig>,
    /// The retention reaper's rules and pace, when it runs.
    pub reaper: Option<ReaperConfig>,
}

/// A durable change, written by the world's simulated disk.
#[derive(Clone, Debug)]
pub enum DiskWrite {
    /// What the product replicates (registrar commands, CDRs, the verified licence): the
    /// product's own [`Entry`], committed by the product's `apply_entry`.
    Entry(Entry),
    /// One line of the security log (a failed authentication, a block).
    SecurityLog(Box<SecurityEntry>),
    /// One line of the privacy audit (a reaper run).
    Audit(AuditEntry),
    /// One retention batch: a write transaction that changes at most `limit` records.
    Reap(Batch),
}

/// What waits for a write to be durable: the registrar's answers (a 200 never leaves before
/// the binding it reports is stored — the registrar's glue, which its shell's writer follows
/// too).
#[derive(Debug)]
pub enum Deferred {
    /// A registrar job queued by the glue ([`glue::dispatch`]): delivered by [`glue::settle`]
    /// once every write before it and its own `commands` (if any) are durable.
    Registrar {
        job: WriteJob<()>,
        /// What the write held, for the machine to rewrite if the disk refused it.
        commands: Vec<RegistrarCommand>,
    },
    /// The reaper's batch for `rule`: it hears how many records changed.
    Reaped { rule: usize },
}

/// One batch for the disk: the write (if any) and what to deliver once it is durable.
#[derive(Debug)]
pub struct Job {
    pub write: Option<DiskWrite>,
    pub deferred: Vec<Deferred>,
}

pub enum NodeOutput {
    Transmit {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Bytes,
    },
    /// The watchdog asks the licence service; answer with [`SimNode::licence_response`].
    LicenceCheck {
        request: u64,
        serial: String,
    },
    /// Hand to the disk; call [`SimNode::committed`] with `deferred` and the disk's answer
    /// once it is durable.
    Write(Job),
}

/// Counters for the run's summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeStats {
    pub calls_started: u64,
    pub calls_refused: u64,
    pub cdrs_written: u64,
    pub registered: u64,
    pub expired: u64,
    pub auth_failed: u64,
    pub malformed: u64,
    pub licence_checks_ok: u64,
    pub licence_checks_failed: u64,
    pub licence_changes: u64,
    /// Changes to "expired": licensed features switched off.
    pub licence_expired: u64,
    /// Reaper runs finished (their audit entry handed to the disk).
    pub reaper_runs: u64,
    /// Security-log entries handed to the disk.
    pub security_logged: u64,
}

/// A call as the node holds it: the call actor's core (call machine and legs) and its relay.
struct SimCall {
    core: CallCore,
    relay: Relay,
    ports: [u16; 2],
    started: Timestamp,
    recorded: bool,
}

/// An input on its way to a machine (a message in some actor's mailbox).
enum Work {
    /// For the endpoint's glue; a simulated leg needs no handle to be reached, so `()`.
    Endpoint(GlueInput<()>),
    Registrar(RegistrarInput),
    /// For the calls actor: start this call.
    Calls(Box<CallStart>),
    /// For a call's actor (its legs' SIP too: they run inside it).
    Call(u64, CoreInput),
    Relay(u64, RelayInput),
    Watchdog(WatchdogInput),
    Reaper(ReaperInput),
}

/// Whose mailbox a [`Work`] waits in: one per actor of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mailbox {
    Endpoint,
    Registrar,
    Calls,
    Call(u64),
    Relay(u64),
    Watchdog,
    Reaper,
}

impl Work {
    fn mailbox(&self) -> Mailbox {
        match self {
            Work::Endpoint(_) => Mailbox::Endpoint,
            Work::Registrar(_) => Mailbox::Registrar,
            Work::Calls(_) => Mailbox::Calls,
            Work::Call(id, _) => Mailbox::Call(*id),
            Work::Relay(id, _) => Mailbox::Relay(*id),
            Work::Watchdog(_) => Mailbox::Watchdog,
            Work::Reaper(_) => Mailbox::Reaper,
        }
    }
}

/// The node's actors' mailboxes. Each is first in, first out, as ractor's are; which actor
/// runs next is drawn from the node's seed, so each run tries one of the interleavings that
/// concurrent actors allow — a leg may be stopped while a request for it waits in its mailbox,
/// a call may hear of a hang-up before its leg's last response went out.
struct Mailboxes {
    queues: BTreeMap<Mailbox, VecDeque<Work>>,
    rng: u64,
}

/// `p` as a threshold on a uniform u64.
fn chance(rng: &mut u64, p: f64) -> bool {
    p > 0.0 && (splitmix64(rng) as f64) < p * u64::MAX as f64
}

impl Mailboxes {
    fn push(&mut self, work: Work) {
        self.queues.entry(work.mailbox()).or_default().push_back(work);
    }

    fn pop(&mut self) -> Option<Work> {
        let n = self.queues.len() as u64;
        if n == 0 {
            return None;
        }
        let pick = (splitmix64(&mut self.rng) % n) as usize;
        let mut entry = self.queues.iter_mut().nth(pick).map(|(key, queue)| (*key, queue.pop_front()))?;
        if self.queues.get(&entry.0).is_some_and(VecDeque::is_empty) {
            self.queues.remove(&entry.0);
        }
        entry.1.take()
    }
}

pub struct SimNode {
    config: NodeConfig,
    call_config: CallConfig,
    relay_config: RelayConfig,
    endpoint: EndpointGlue<()>,
    registrar: Registrar,
    watchdog: Option<Watchdog>,
    reaper: Option<Reaper>,
    calls: BTreeMap<u64, SimCall>,
    leg_calls: BTreeMap<LegId, u64>,
    /// RTP port of a pair → (call, side); its RTCP port is one above.
    media_ports: BTreeMap<u16, (u64, Side)>,
    pool: PortPool,
    ids: CallIds,
    work: Mailboxes,
    outputs: VecDeque<NodeOutput>,
    /// Registrar jobs with commands handed to the disk and not yet settled: the count the
    /// registrar shell's writer keeps (`Writer::pending`), which the glue's bypass reads.
    registrar_writes: usize,
    pub stats: NodeStats,
}

impl SimNode {
    /// Starts a node from what its disk holds (the appliance's start: restore, then put the
    /// configured extensions). Drain [`poll_output`](Self::poll_output) afterwards.
    pub fn start(
        config: NodeConfig,
        seed: u64,
        extensions: Vec<Extension>,
        bindings: Vec<Binding>,
        licence: Option<Stored>,
        now: Timestamp,
    ) -> SimNode {
        let mut rng = seed;
        // The node reads 256 bits from the OS; a simulated node expands its seed to as many.
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(splitmix64(&mut rng)),
            &mut secret,
        );
        let registrar = Registrar::new(config.registrar.clone(), secret, extensions, bindings, now);
        let timers = TimerConfig::default();
        let call_config = CallConfig {
            no_answer: config.no_answer,
            timers,
            local_sip: LocalSip { address: config.sip },
            bugs: config.bugs,
        };
        let mut node = SimNode {
            endpoint: EndpointGlue::new(Endpoint::new(timers, seed32(&mut rng)), config.bugs),
            registrar,
            watchdog: config.licence.clone().map(|c| Watchdog::new(c, now, licence)),
            reaper: config.reaper.clone().map(|c| Reaper::new(c, now)),
            call_config,
            relay_config: RelayConfig { inactivity: config.rtp_timeout },
            calls: BTreeMap::new(),
            leg_calls: BTreeMap::new(),
            media_ports: BTreeMap::new(),
            pool: PortPool::new(config.rtp_ports.0, config.rtp_ports.1, seed ^ POOL_SEED_SALT),
            ids: CallIds::new(rng),
            work: Mailboxes { queues: BTreeMap::new(), rng: splitmix64(&mut rng) },
            outputs: VecDeque::new(),
            registrar_writes: 0,
            stats: NodeStats::default(),
            config,
        };
        // Bindings dropped while restoring come out as persists.
        node.drain_registrar(now);
        for (number, password) in node.config.extensions.clone() {
            node.work.push(Work::Registrar(RegistrarInput::PutExtension {
                display_name: format!("Phone {number}"),
                number,
                password,
            }));
        }
        node.run(now);
        node
    }

    pub fn sip_address(&self) -> SocketAddr {
        self.config.sip
    }

    /// A datagram for this node: SIP on its SIP port, RTP/RTCP on a media port.
    pub fn datagram(&mut self, now: Timestamp, from: SocketAddr, to: SocketAddr, bytes: Bytes) {
        if to == self.config.sip {
            let inbound = EndpointInput::Inbound { bytes, source: from, transport: Transport::Udp, received: now };
            self.work.push(Work::Endpoint(GlueInput::Endpoint(inbound)));
        } else {
            let port = to.port();
            let (rtp, kind) =
                if port.is_multiple_of(2) { (port, PacketKind::Rtp) } else { (port - 1, PacketKind::Rtcp) };
            // A closed port: the kernel would drop it.
            let Some(&(call, side)) = self.media_ports.get(&rtp) else { return };
            self.work.push(Work::Relay(call, RelayInput::Packet { side, kind, source: from, bytes }));
        }
        self.run(now);
    }

    /// A disk write this node asked for is durable (`outcome`: what the disk said, the
    /// records a retention batch changed): deliver what waited for it.
    pub fn committed(&mut self, now: Timestamp, deferred: Vec<Deferred>, outcome: Result<u64, String>) {
        for d in deferred {
            match d {
                Deferred::Registrar { job, commands } => {
                    let stored = (!commands.is_empty()).then(|| {
                        self.registrar_writes -= 1;
                        outcome.clone().map(drop).map_err(StoreError::Disk)
                    });
                    if let Some(Err(_)) = &stored {
                        self.registrar.persist_failed(&commands);
                    }
                    self.deliver_registrar(job, stored.as_ref());
                }
                Deferred::Reaped { rule } => self.work.push(Work::Reaper(match outcome.clone() {
                    Ok(records) => ReaperInput::Done { rule, records },
                    Err(error) => ReaperInput::Failed { rule, error },
                })),
            }
        }
        self.run(now);
    }

    /// Wakes every machine whose time has come.
    pub fn timeout(&mut self, now: Timestamp) {
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.work.push(Work::Endpoint(GlueInput::Endpoint(EndpointInput::Timeout)));
        }
        if self.registrar.poll_timeout().is_some_and(|t| t <= now) {
            self.work.push(Work::Registrar(RegistrarInput::Timeout));
        }
        if self.watchdog.as_ref().and_then(Watchdog::poll_timeout).is_some_and(|t| t <= now) {
            self.work.push(Work::Watchdog(WatchdogInput::Timeout));
        }
        if self.reaper.as_ref().and_then(Reaper::poll_timeout).is_some_and(|t| t <= now) {
            self.work.push(Work::Reaper(ReaperInput::Timeout));
        }
        for (id, c) in &self.calls {
            if c.core.poll_timeout().is_some_and(|t| t <= now) {
                self.work.push(Work::Call(*id, CoreInput::Timeout));
            }
            if c.relay.poll_timeout().is_some_and(|t| t <= now) {
                self.work.push(Work::Relay(*id, RelayInput::Timeout));
            }
        }
        self.run(now);
    }

    /// The earliest time any machine of the node wants to be woken.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let watchdog = self.watchdog.as_ref().and_then(Watchdog::poll_timeout);
        let reaper = self.reaper.as_ref().and_then(Reaper::poll_timeout);
        let mut at =
            [self.endpoint.poll_timeout(), self.registrar.poll_timeout(), watchdog, reaper].into_iter().flatten().min();
        for c in self.calls.values() {
            for t in [c.core.poll_timeout(), c.relay.poll_timeout()].into_iter().flatten() {
                at = Some(at.map_or(t, |a: Timestamp| a.min(t)));
            }
        }
        at
    }

    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }

    /// Whether messages wait in mailboxes: the node stalled; call [`step`](Self::step) later.
    pub fn has_work(&self) -> bool {
        !self.work.queues.is_empty()
    }

    /// Runs what waits in the mailboxes (after a stall).
    pub fn step(&mut self, now: Timestamp) {
        self.run(now);
    }

    fn run(&mut self, now: Timestamp) {
        while let Some(work) = self.work.pop() {
            match work {
                Work::Endpoint(input) => {
                    // The glue reads the licence's call limit for every new call.
                    self.endpoint.handle(now, input, &self.watchdog);
                    self.drain_endpoint();
                }
                Work::Calls(start) => self.start_call(now, *start),
                Work::Watchdog(input) => {
                    if let Some(w) = self.watchdog.as_mut() {
                        w.handle(now, input);
                        self.drain_watchdog();
                    }
                }
                Work::Registrar(input) => {
                    self.registrar.handle(now, input);
                    self.drain_registrar(now);
                }
                Work::Reaper(input) => {
                    if let Some(r) = self.reaper.as_mut() {
                        r.handle(now, input);
                        self.drain_reaper();
                    }
                }
                Work::Call(id, input) => {
                    let Some(c) = self.calls.get_mut(&id) else { continue };
                    c.core.handle(now, input);
                    self.drain_call(id);
                }
                Work::Relay(id, input) => self.relay(now, id, input),
            }
            if chance(&mut self.work.rng, self.config.stall) {
                break;
            }
        }
    }

    /// The endpoint shell's delivery of the glue's envelopes (the calls actor always takes a
    /// start here: it cannot be gone).
    fn drain_endpoint(&mut self) {
        while let Some(envelope) = self.endpoint.poll_envelope() {
            match envelope {
                Envelope::Net { destination, bytes, .. } => {
                    self.outputs.push_back(NodeOutput::Transmit { from: self.config.sip, to: destination, bytes })
                }
                Envelope::Registrar(work) => self.work.push(Work::Registrar(work.into())),
                Envelope::Calls(start) => self.work.push(Work::Calls(start)),
                Envelope::Leg { leg, input, .. } => {
                    // To the call actor the leg runs in; a leg gone since is a dead letter.
                    if let Some(&call) = self.leg_calls.get(&leg) {
                        self.work.push(Work::Call(call, CoreInput::Sip(leg, input)));
                    }
                }
                Envelope::Event(EndpointEvent::Malformed { .. }) => self.stats.malformed += 1,
                Envelope::Event(_) | Envelope::LegsRouted(_) => {}
            }
        }
    }

    /// A leg is gone: the endpoint hears of it (the call shells' `leg_down`).
    fn leg_down(&mut self, leg: LegId) {
        self.work.push(Work::Endpoint(GlueInput::Endpoint(EndpointInput::LegDown { leg })));
    }

    /// The watchdog shell's drain: checks go to the service, the verified licence to disk.
    fn drain_watchdog(&mut self) {
        let Some(w) = self.watchdog.as_mut() else { return };
        while let Some(out) = w.poll_output() {
            match out {
                WatchdogOutput::Check { request, serial } => {
                    self.outputs.push_back(NodeOutput::LicenceCheck { request, serial })
                }
                WatchdogOutput::Persist(stored) => self.outputs.push_back(NodeOutput::Write(Job {
                    write: Some(DiskWrite::Entry(Entry::Licence(stored))),
                    deferred: Vec::new(),
                })),
                WatchdogOutput::Event(WatchdogEvent::Checked { .. }) => self.stats.licence_checks_ok += 1,
                WatchdogOutput::Event(WatchdogEvent::CheckFailed { .. }) => self.stats.licence_checks_failed += 1,
                WatchdogOutput::Event(WatchdogEvent::StatusChanged { to, .. }) => {
                    self.stats.licence_changes += 1;
                    self.stats.licence_expired += u64::from(to == "expired");
                }
                WatchdogOutput::Event(_) => {}
            }
        }
    }

    /// The licence service's answer to a `LicenceCheck` (a body, or why there is none).
    pub fn licence_response(
        &mut self,
        now: Timestamp,
        request: u64,
        result: Result<Bytes, pbx_actors::licence::LicenceServiceError>,
    ) {
        self.work.push(Work::Watchdog(WatchdogInput::Response { request, result }));
        self.run(now);
    }

    /// The licence as the node holds it: status name, what is in force, the last success.
    pub fn licence(&self, now: Timestamp) -> Option<(&'static str, Effective, Option<Timestamp>)> {
        self.watchdog.as_ref().map(|w| (w.status().name(), w.effective(now), w.last_success()))
    }

    /// The reaper shell's drain: each batch a write whose answer waits for its commit, each
    /// run's audit entry a write.
    fn drain_reaper(&mut self) {
        let Some(r) = self.reaper.as_mut() else { return };
        while let Some(out) = r.poll_output() {
            let job = match out {
                ReaperOutput::Work(batch) => {
                    let rule = batch.rule;
                    Job { write: Some(DiskWrite::Reap(batch)), deferred: vec![Deferred::Reaped { rule }] }
                }
                ReaperOutput::Audit(entry) => {
                    self.stats.reaper_runs += 1;
                    Job { write: Some(DiskWrite::Audit(entry)), deferred: Vec::new() }
                }
            };
            self.outputs.push_back(NodeOutput::Write(job));
        }
    }

    /// The registrar shell's drain, through the product's glue: what may leave at once goes to
    /// the endpoint's mailbox now, the rest waits for the disk behind the writes before it;
    /// failed authentications and blocks go to the security log.
    fn drain_registrar(&mut self, now: Timestamp) {
        let mut events = Vec::new();
        let dispatch =
            glue::dispatch(&mut self.registrar, self.registrar_writes, None, self.config.bugs, |e| events.push(e));
        for event in events {
            match event {
                RegistrarEvent::Registered { .. } => self.stats.registered += 1,
                RegistrarEvent::Expired { .. } => self.stats.expired += 1,
                RegistrarEvent::AuthFailed { source, user } => {
                    self.stats.auth_failed += 1;
                    self.log_security(now, source, Some(user), SecurityEvent::AuthFailed);
                }
                RegistrarEvent::Blocked { source, user, until } => {
                    self.log_security(now, source, Some(user), SecurityEvent::Blocked { until })
                }
                RegistrarEvent::UserLocked { user, source, until } => {
                    self.log_security(now, source, Some(user), SecurityEvent::UserLocked { until })
                }
                RegistrarEvent::PrefixBlocked { prefix, len, until } => {
                    self.log_security(now, prefix, None, SecurityEvent::PrefixBlocked { until, prefix_len: len })
                }
                _ => {}
            }
        }
        for (tx, response, authenticated) in dispatch.now {
            self.respond(tx, response, authenticated);
        }
        if let Some(job) = dispatch.now_job {
            self.deliver_registrar(job, None);
        }
        if let Some(mut job) = dispatch.queued {
            let commands = std::mem::take(&mut job.commands);
            let write = (!commands.is_empty()).then(|| {
                self.registrar_writes += 1;
                DiskWrite::Entry(Entry::Registrar(commands.clone()))
            });
            self.outputs
                .push_back(NodeOutput::Write(Job { write, deferred: vec![Deferred::Registrar { job, commands }] }));
        }
    }

    /// A registrar job's answers, to the endpoint's mailbox ([`glue::settle`]: a refused write
    /// turns a 200 into 500).
    fn deliver_registrar(&mut self, job: WriteJob<()>, stored: Option<&Result<(), StoreError>>) {
        let settled = glue::settle(job, stored);
        for (tx, response, authenticated) in settled.responses {
            self.respond(tx, response, authenticated);
        }
        for (tx, route) in settled.routes {
            self.work.push(Work::Endpoint(GlueInput::Endpoint(EndpointInput::Routed { tx, route })));
        }
    }

    fn respond(&mut self, tx: u64, response: Response, authenticated: bool) {
        self.work.push(Work::Endpoint(GlueInput::Endpoint(EndpointInput::RegistrarResponse {
            tx,
            response,
            authenticated,
        })));
    }

    /// The registrar shell's `SecurityLog` report, as a disk write.
    fn log_security(&mut self, at: Timestamp, source: std::net::IpAddr, user: Option<String>, event: SecurityEvent) {
        self.stats.security_logged += 1;
        let entry = SecurityEntry::new(at, source, user, event);
        let write = Some(DiskWrite::SecurityLog(Box::new(entry)));
        self.outputs.push_back(NodeOutput::Write(Job { write, deferred: Vec::new() }));
    }

    /// The calls actor's start: an id and seed, two port pairs, the call machine. No ports:
    /// the call did not start, and its CDR says so as the calls shell's does.
    fn start_call(&mut self, now: Timestamp, start: CallStart) {
        let (id, seed) = self.ids.next(now);
        let ports = match (self.pool.allocate(), self.pool.allocate()) {
            (Some(a), Some(b)) => [a, b],
            (a, b) => {
                let mut tried = 0;
                for port in [a, b].into_iter().flatten() {
                    tried += 1;
                    self.pool.release(port);
                }
                self.stats.calls_refused += 1;
                for leg in start.legs() {
                    self.leg_down(leg);
                }
                let bind = self.config.sip.ip();
                let (in_use, capacity) = (self.pool.in_use(), self.pool.capacity());
                let error = MediaError::NoPorts { bind, tried, in_use, capacity };
                self.write_cdr(not_started(start.cdr(id, now), now, &error));
                return;
            }
        };
        self.stats.calls_started += 1;
        let ip = self.config.sip.ip();
        let media = [SocketAddr::new(ip, ports[0]), SocketAddr::new(ip, ports[1])];
        for (port, side) in ports.iter().zip([Side::A, Side::B]) {
            self.media_ports.insert(*port, (id, side));
        }
        let relay = Relay::new(self.relay_config, seed, now);
        let core = CallCore::new(now, self.call_config, CallSetup { id, start, media, seed, room: None }, Legs::new());
        self.calls.insert(id, SimCall { core, relay, ports, started: now, recorded: false });
        self.drain_call(id);
    }

    /// The call shell's drain: SIP to the endpoint, legs up and down, media to the relay, the
    /// CDR (with the relay's counters) to disk.
    fn drain_call(&mut self, id: u64) {
        loop {
            let Some(c) = self.calls.get_mut(&id) else { return };
            let Some(out) = c.core.poll_output() else { return };
            match out {
                CoreOutput::Sip(leg, out) => {
                    self.work.push(Work::Endpoint(GlueInput::Endpoint(EndpointInput::FromLeg { leg, out })))
                }
                CoreOutput::LegUp(leg) => {
                    self.leg_calls.insert(leg, id);
                    // The leg is up: what waited for it in the endpoint comes now.
                    self.work.push(Work::Endpoint(GlueInput::LegUp { leg, to: () }));
                }
                CoreOutput::LegDown(leg) => {
                    self.leg_calls.remove(&leg);
                    self.leg_down(leg);
                }
                CoreOutput::ConfigureMedia { side, peer } => {
                    self.work.push(Work::Relay(id, RelayInput::Configure { side, peer }))
                }
                CoreOutput::Record(cdr) => {
                    if !c.recorded {
                        c.recorded = true;
                        let mut cdr = *cdr;
                        cdr.media = [c.relay.stats(Side::A), c.relay.stats(Side::B)].map(MediaCounters::from);
                        self.write_cdr(cdr);
                    }
                }
                CoreOutput::Over => self.end_call(id),
            }
        }
    }

    /// The call actor stops: its remaining legs go (reported down) and its ports return.
    fn end_call(&mut self, id: u64) {
        let Some(c) = self.calls.remove(&id) else { return };
        for leg in c.core.legs().keys() {
            self.leg_calls.remove(leg);
            self.leg_down(*leg);
        }
        for port in c.ports {
            self.media_ports.remove(&port);
            self.pool.release(port);
        }
    }

    fn relay(&mut self, now: Timestamp, id: u64, input: RelayInput) {
        let Some(c) = self.calls.get_mut(&id) else { return };
        c.relay.handle(now, input);
        let ip = self.config.sip.ip();
        while let Some(out) = c.relay.poll_output() {
            match out {
                RelayOutput::Transmit { side, kind, destination, bytes } => {
                    let port = c.ports[side.index()] + u16::from(kind == PacketKind::Rtcp);
                    self.outputs.push_back(NodeOutput::Transmit {
                        from: SocketAddr::new(ip, port),
                        to: destination,
                        bytes,
                    })
                }
                RelayOutput::Inactive { side } => self.work.push(Work::Call(id, CoreInput::MediaInactive { side })),
            }
        }
    }

    fn write_cdr(&mut self, cdr: Cdr) {
        self.stats.cdrs_written += 1;
        self.outputs.push_back(NodeOutput::Write(Job {
            write: Some(DiskWrite::Entry(Entry::Cdrs(vec![cdr]))),
            deferred: Vec::new(),
        }));
    }

    // ---- What the checkers look at ----

    /// Calls in progress: (id, when it started, its state, its answered legs if any).
    pub fn calls(&self) -> impl Iterator<Item = CallView<'_>> {
        self.calls.iter().map(|(id, c)| CallView {
            id: *id,
            started: c.started,
            state: c.core.call().state(),
            answered: c.core.call().answered_legs().map(|(a, b)| [a, b]),
            legs: c.core.legs(),
        })
    }

    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Leg machines alive, and legs the endpoint still routes to.
    pub fn leg_counts(&self) -> (usize, usize) {
        (self.leg_calls.len(), self.endpoint.machine().live_legs())
    }

    /// Legs in the endpoint glue's table (up, or starting with a queue).
    pub fn legs_in_table(&self) -> usize {
        self.endpoint.routed_legs()
    }

    /// Port pairs leased from the pool, and pairs the running calls hold.
    pub fn ports_in_use(&self) -> (usize, usize) {
        (self.pool.in_use(), self.calls.len() * 2)
    }

    pub fn transactions(&self) -> (usize, Option<Timestamp>) {
        (self.endpoint.machine().transactions(), self.endpoint.machine().oldest_transaction())
    }

    pub fn describe_oldest_transaction(&self) -> String {
        self.endpoint.machine().describe_oldest_transaction().unwrap_or_default()
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.registrar.bindings()
    }
}

/// What a checker sees of one call.
pub struct CallView<'a> {
    pub id: u64,
    pub started: Timestamp,
    pub state: &'static str,
    pub answered: Option<[LegId; 2]>,
    legs: &'a Legs,
}

impl CallView<'_> {
    /// Whether this leg's machine is there and its dialog not over.
    pub fn leg_live(&self, leg: LegId) -> bool {
        self.legs.get(&leg).is_some_and(|l| !l.is_done())
    }
}

/// 256 bits from the run's seed stream, for a machine that takes a CSPRNG key.
fn seed32(rng: &mut u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        chunk.copy_from_slice(&splitmix64(rng).to_le_bytes());
    }
    seed
}

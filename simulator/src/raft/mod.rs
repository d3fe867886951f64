//! The replicated state under faults: three voters running the product's Raft — openraft over
//! its redb log and state-machine stores ([`pbx_cluster::raft::store`]), its RPCs and its
//! client-write path ([`pbx_cluster::raft::net`]) — on a simulated network, with partitions,
//! crashes and restarts drawn from the seed, and clients writing through any node.
//!
//! Unlike the rest of the simulator this part runs real async code: openraft is a set of tokio
//! tasks. It runs them on a current-thread tokio runtime whose clock is paused, so the clock
//! only moves when every task waits (virtual minutes pass in real milliseconds), and openraft's
//! one source of randomness (its election timeouts) is drawn from the seed ([`runtime`]). The
//! faults, the network's delays and the clients draw from their own seeded generators. What is
//! not seeded is tokio's pick among branches of a `select!` that are ready at once (openraft
//! has one, in replication); see [`run`] for what that means for replaying a seed.
//!
//! A node's redb database lives on redb's in-memory backend and survives the node's crash,
//! like its file (every write the store makes is a committed transaction). A crash stops the
//! node's Raft between two of its steps; nothing it committed is lost, nothing else survives.

mod bugs;
mod check;
mod network;
mod runtime;

use crate::check::Violation;
use crate::options::format_duration;
use check::{Checker, Recorder};
use network::SimNetwork;
use openraft::{Raft, ServerState};
use pbx_actors::call::splitmix64;
use pbx_cluster::raft::net::{self, Reply, Rpc, WriteRefused};
use pbx_cluster::raft::store::{self, LogStore, StateMachine};
use pbx_cluster::raft::{Member, NodeId, ReplicaConfig, Request, membership, node_id};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime::SimConfig;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

pub use check::{CONVERGES, MINORITY, NODE_RUNS, NOTHING_LOST, ONE_LEADER, SAME_SEQUENCE};

/// Voters in the simulated cluster; the third is a witness, as on a real appliance + VM + witness.
const NODES: usize = 3;
const NAMES: [&str; NODES] = ["n1", "n2", "w3"];
/// Voters a side needs to elect a leader and commit.
const MAJORITY: usize = NODES / 2 + 1;
/// How often the checkers look at every node.
const TICK: Duration = Duration::from_millis(100);
/// Clients writing at once, and the pause before each one's next write.
const CLIENTS: usize = 2;
const CLIENT_GAP_MS: std::ops::RangeInclusive<u64> = 200..=4000;
/// How long a client waits for one write before it counts it as failed.
const WRITE_BOUND: Duration = Duration::from_secs(3);
/// The pause between two faults.
const FAULT_GAP_MS: std::ops::RangeInclusive<u64> = 2_000..=30_000;
/// One way network delay: usually a LAN's, sometimes a congested WAN's.
const DELAY_MS: std::ops::RangeInclusive<u64> = 1..=10;
const SLOW_DELAY_MS: std::ops::RangeInclusive<u64> = 20..=200;
const SLOW: f64 = 0.05;
/// Requests or replies lost outside any partition.
const LOSS: f64 = 0.005;
/// How long the cluster has, once healed and every node up, to apply every write everywhere.
const SETTLE: Duration = Duration::from_secs(60);
/// How long a node's Raft may take to stop.
const STOP_BOUND: Duration = Duration::from_secs(10);
/// Snapshots are made often and few entries kept behind them, so that a node that was down a
/// while catches up from a snapshot, not only from the log.
const SNAPSHOT_EVERY: u64 = 64;
const LOGS_KEPT: u64 = 16;

/// A deliberate bug, to see the checkers catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftBug {
    /// A node that cannot reach a majority acknowledges writes itself, without Raft.
    MinorityAck,
    /// The log store forgets its vote across a restart ([`bugs::ForgetVote`]).
    ForgetVote,
}

impl RaftBug {
    pub const NAMES: [&str; 2] = ["raft-minority-ack", "raft-forget-vote"];

    pub fn name(self) -> &'static str {
        match self {
            RaftBug::MinorityAck => "raft-minority-ack",
            RaftBug::ForgetVote => "raft-forget-vote",
        }
    }

    pub fn parse(name: &str) -> Option<RaftBug> {
        [RaftBug::MinorityAck, RaftBug::ForgetVote].into_iter().find(|b| b.name() == name)
    }
}

#[derive(Clone, Debug)]
pub struct RaftOptions {
    pub seed: u64,
    /// Virtual time with faults and writes, before the final heal.
    pub duration: Duration,
    pub bugs: Vec<RaftBug>,
}

impl RaftOptions {
    pub fn new(seed: u64, duration: Duration) -> RaftOptions {
        RaftOptions { seed, duration, bugs: Vec::new() }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let bugs: String = self.bugs.iter().map(|b| format!(" --inject-bug {}", b.name())).collect();
        format!("pbx-sim --raft --seed {} --duration {}{bugs}", self.seed, format_duration(self.duration))
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RaftReport {
    pub seed: u64,
    /// Virtual time, including the final heal and settling.
    pub simulated: Duration,
    pub wall: Duration,
    /// Terms in which a leader was seen, and the highest term any node reached.
    pub elections: u64,
    pub terms: u64,
    pub writes_acked: u64,
    pub writes_failed: u64,
    /// Failed writes that were committed all the same (their acknowledgement was lost).
    pub failed_but_applied: u64,
    /// Entries every node applied, in the end.
    pub applied: usize,
    pub partitions: u64,
    pub heals: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub snapshots_installed: u64,
    /// Entries applied a second time after a restart (idempotent re-application).
    pub reapplied: u64,
    pub checks: u64,
    pub violations: Vec<Violation>,
    /// A hash of what happened when (faults, leaders, write outcomes), to compare runs.
    pub trace_hash: u64,
}

impl RaftReport {
    /// The one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "seed {}, {} simulated in {:.2} s: {} elections (last term {}), {} writes acked, {} failed \
             ({} of them committed anyway), {} applied on every node, {} partitions, {} heals, {} crashes, \
             {} restarts, {} snapshots installed, {} entries re-applied after restarts, {} checks, {} violations, \
             trace {:016x}",
            self.seed,
            crate::sim::format_elapsed(self.simulated),
            self.wall.as_secs_f64(),
            self.elections,
            self.terms,
            self.writes_acked,
            self.writes_failed,
            self.failed_but_applied,
            self.applied,
            self.partitions,
            self.heals,
            self.crashes,
            self.restarts,
            self.snapshots_installed,
            self.reapplied,
            self.checks,
            self.violations.len(),
            self.trace_hash
        )
    }
}

/// Runs one seed. A run replays its seed's fault schedule, writes and election timeouts, and
/// in practice every interleaving too: tokio on one thread with a paused clock polls its tasks
/// in the same order each time, and the one unseeded choice (above) has not been seen to
/// matter. The tests check that the same seed gives the same trace hash.
pub fn run(options: RaftOptions) -> RaftReport {
    let wall = std::time::Instant::now();
    let mut seeds = options.seed;
    runtime::seed(splitmix64(&mut seeds));
    let report = match tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build() {
        Ok(rt) => rt.block_on(simulate(options, &mut seeds)),
        Err(e) => RaftReport {
            seed: options.seed,
            violations: vec![Violation {
                at: Duration::ZERO,
                invariant: NODE_RUNS,
                detail: format!("no runtime: {e}"),
            }],
            ..Default::default()
        },
    };
    RaftReport { wall: wall.elapsed(), ..report }
}

type Shared = Arc<Mutex<World>>;
type Metrics = tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>>;
/// Only what changes with elections: a watcher on it wakes once per change of leader or term.
type ServerMetrics = tokio::sync::watch::Receiver<openraft::metrics::RaftServerMetrics<NodeId, Member>>;

/// The world's lock. Nothing panics while holding it, but a poisoned lock would still hold
/// consistent state: every change under it is a few assignments.
fn lock(shared: &Shared) -> MutexGuard<'_, World> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A node: its durable state, and its Raft while it runs.
struct Node {
    id: NodeId,
    db: Arc<pbx_cluster::redb_file::RedbFile>,
    applied: Arc<Recorder>,
    raft: Option<Raft<SimConfig>>,
    /// Bumped at each start, so a watcher knows whether the Raft it watched is still the one.
    incarnation: u64,
    /// Cut off (with the nodes it can reach) from a majority of the voters.
    minority: bool,
    /// Bumped each time the node joins a majority: a write issued and acknowledged on a
    /// minority side with no bump between could not have been committed.
    majority_epoch: u64,
}

/// A write a client has issued and not yet seen the end of.
struct Issued {
    node: usize,
    at: Duration,
    minority: bool,
    majority_epoch: u64,
}

struct World {
    start: Instant,
    end: Instant,
    bugs: Vec<RaftBug>,
    names: Vec<String>,
    members: BTreeMap<NodeId, Member>,
    config: Arc<openraft::Config>,
    nodes: Vec<Node>,
    /// `cut[a][b]`: a and b cannot reach each other.
    cut: [[bool; NODES]; NODES],
    fault_rng: StdRng,
    client_rng: StdRng,
    net_rng: StdRng,
    next_write: u64,
    /// Acknowledged writes: payload → (node, when).
    acked: BTreeMap<Vec<u8>, (usize, Duration)>,
    failed: Vec<Vec<u8>>,
    checker: Checker,
    report: RaftReport,
}

impl World {
    fn now(&self) -> Duration {
        Instant::now().duration_since(self.start)
    }

    fn index(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].raft.is_some()
    }

    fn reachable(&self, from: usize, to: usize) -> bool {
        !self.cut[from][to]
    }

    fn delay(&mut self) -> Duration {
        let ms = if self.net_rng.random_bool(SLOW) { SLOW_DELAY_MS } else { DELAY_MS };
        Duration::from_millis(self.net_rng.random_range(ms))
    }

    /// A request leaves `from` for `to`: how long it travels.
    fn depart(&mut self, from: usize, to: usize) -> Result<Duration, network::Fail> {
        if !self.reachable(from, to) {
            return Err(network::Fail::Unreachable(format!("{} is cut off from {}", self.names[to], self.names[from])));
        }
        if !self.up(to) {
            return Err(network::Fail::Unreachable(format!("{} is down", self.names[to])));
        }
        Ok(self.delay())
    }

    /// The request arrives at `to` (its Raft, and how long the reply will travel) unless a
    /// partition, a crash or bad luck took it.
    fn arrive(&mut self, from: usize, to: usize) -> Result<(Raft<SimConfig>, Duration), network::Fail> {
        let lost = |why: String| Err(network::Fail::Lost(why));
        if !self.reachable(from, to) {
            return lost(format!("cut off from {} in flight", self.names[to]));
        }
        let Some(raft) = self.nodes[to].raft.clone() else { return lost(format!("{} went down", self.names[to])) };
        if self.net_rng.random_bool(LOSS) {
            return lost("request lost".into());
        }
        Ok((raft, self.delay()))
    }

    fn arrive_back(&mut self, from: usize, to: usize) -> Result<(), network::Fail> {
        if !self.reachable(from, to) {
            return Err(network::Fail::Lost(format!("reply from {} cut off in flight", self.names[to])));
        }
        if self.net_rng.random_bool(LOSS) {
            return Err(network::Fail::Lost("reply lost".into()));
        }
        Ok(())
    }

    /// Recomputes which nodes are on a minority side after the partitions or the nodes up changed.
    fn sides_changed(&mut self) {
        for i in 0..NODES {
            let side = (0..NODES).filter(|&j| j == i || (self.up(j) && self.reachable(i, j))).count();
            let minority = side < MAJORITY;
            let node = &mut self.nodes[i];
            if node.minority && !minority {
                node.majority_epoch += 1;
            }
            node.minority = minority;
        }
    }

    /// Folds an event into the trace hash (FNV-1a over its time and text).
    fn trace(&mut self, what: &str) {
        let mut hash = self.report.trace_hash ^ 0xcbf2_9ce4_8422_2325;
        let at = u64::try_from(self.now().as_micros()).unwrap_or(u64::MAX);
        for byte in at.to_le_bytes().iter().chain(what.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.report.trace_hash = hash;
    }

    /// The node that leads in the highest term, as the nodes' own metrics say.
    fn leader(&self) -> Option<usize> {
        (0..NODES)
            .filter_map(|i| {
                let m = self.nodes[i].raft.as_ref()?.server_metrics();
                let m = m.borrow();
                (m.state == ServerState::Leader).then_some((m.vote.leader_id().get_term(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// One look at every node: who leads which term, and what each has applied.
    fn check(&mut self) {
        let at = self.now();
        for i in 0..NODES {
            if let Some(raft) = &self.nodes[i].raft {
                let m = raft.server_metrics();
                let (term, state) = (m.borrow().vote.leader_id().get_term(), m.borrow().state);
                self.observe(i, term, state);
            }
            let applied = self.nodes[i].applied.clone();
            self.checker.applied(at, &self.names, i, &mut applied.state());
        }
    }

    fn observe(&mut self, node: usize, term: u64, state: ServerState) {
        self.report.terms = self.report.terms.max(term);
        if state == ServerState::Leader {
            let at = self.now();
            if self.checker.leader(at, &self.names, term, node) {
                self.trace(&format!("leader {} term {term}", self.names[node]));
            }
        }
    }
}

async fn simulate(options: RaftOptions, seeds: &mut u64) -> RaftReport {
    let shared = match world(&options, seeds) {
        Ok(world) => Arc::new(Mutex::new(world)),
        Err(e) => {
            return RaftReport {
                seed: options.seed,
                violations: vec![Violation { at: Duration::ZERO, invariant: NODE_RUNS, detail: e }],
                ..Default::default()
            };
        }
    };
    for i in 0..NODES {
        start(&shared, i).await;
    }
    let ticker = tokio::spawn(tick(shared.clone()));
    let mut tasks = vec![tokio::spawn(faults(shared.clone()))];
    tasks.extend((0..CLIENTS).map(|_| tokio::spawn(client(shared.clone()))));
    for task in tasks {
        // A task that panicked is reported with the rest below, as a violation.
        if let Err(e) = task.await {
            let mut w = lock(&shared);
            let at = w.now();
            w.checker.violation(at, NODE_RUNS, format!("a simulation task failed: {e}"));
        }
    }
    settle(&shared).await;
    for i in 0..NODES {
        crash(&shared, i).await;
    }
    ticker.abort();
    let mut w = lock(&shared);
    w.report.simulated = w.now();
    w.report.elections = w.checker.leaders.len() as u64;
    w.report.checks = w.checker.checks;
    w.report.violations = std::mem::take(&mut w.checker.violations);
    w.report.clone()
}

fn world(options: &RaftOptions, seeds: &mut u64) -> Result<World, String> {
    let members: Vec<Member> = NAMES
        .iter()
        .map(|&name| Member { name: name.into(), address: format!("sim:{name}"), witness: name.starts_with('w') })
        .collect();
    let mut config = ReplicaConfig::new(members[0].clone(), members.clone());
    config.snapshot_every = SNAPSHOT_EVERY;
    config.logs_kept = LOGS_KEPT;
    let mut nodes = Vec::new();
    for m in &members {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| format!("{}: in-memory database: {e}", m.name))?;
        nodes.push(Node {
            id: node_id(&m.name),
            db: store::prepare(db)?,
            applied: Arc::default(),
            raft: None,
            incarnation: 0,
            minority: true,
            majority_epoch: 0,
        });
    }
    let start = Instant::now();
    let mut rng = || StdRng::seed_from_u64(splitmix64(seeds));
    Ok(World {
        start,
        end: start + options.duration,
        bugs: options.bugs.clone(),
        names: NAMES.iter().map(|n| n.to_string()).collect(),
        members: membership(&members)?,
        config: Arc::new(config.raft_config()?),
        nodes,
        cut: [[false; NODES]; NODES],
        fault_rng: rng(),
        client_rng: rng(),
        net_rng: rng(),
        next_write: 0,
        acked: BTreeMap::new(),
        failed: Vec::new(),
        checker: Checker::default(),
        report: RaftReport { seed: options.seed, ..Default::default() },
    })
}

/// Starts (or restarts) node `i`'s Raft over its database, as the product's `Replica::start`
/// does: a node with an empty log and no vote initialises the membership.
async fn start(shared: &Shared, i: usize) {
    let (id, db, applied, config, members, forget_vote) = {
        let w = lock(shared);
        let n = &w.nodes[i];
        let forget_vote = w.bugs.contains(&RaftBug::ForgetVote);
        (n.id, n.db.clone(), n.applied.clone(), w.config.clone(), w.members.clone(), forget_vote)
    };
    let network = SimNetwork { from: i, shared: shared.clone() };
    let log = LogStore::<SimConfig>::new(db.clone());
    let sm = StateMachine::<SimConfig>::new(db, applied);
    let raft = if forget_vote {
        Raft::new(id, config, network, bugs::ForgetVote(log), sm).await
    } else {
        Raft::new(id, config, network, log, sm).await
    };
    let raft = match raft {
        Ok(raft) => raft,
        Err(e) => {
            let mut w = lock(shared);
            let (at, name) = (w.now(), w.names[i].clone());
            w.checker.violation(at, NODE_RUNS, format!("{name} does not start: {e}"));
            return;
        }
    };
    let fresh = {
        let m = raft.metrics().borrow().clone();
        m.last_log_index.is_none() && m.vote.leader_id().term == 0
    };
    if fresh {
        // Another member's entries may have reached it first: then there is nothing to do.
        let _ = raft.initialize(members).await;
    }
    let mut w = lock(shared);
    w.nodes[i].incarnation += 1;
    tokio::spawn(watch(shared.clone(), i, w.nodes[i].incarnation, raft.server_metrics(), raft.metrics()));
    w.nodes[i].raft = Some(raft);
    w.sides_changed();
}

/// Every state node `i`'s Raft publishes, as it publishes it: a leadership shorter than the
/// checkers' tick is seen too. A Raft that stops without being asked to (its core panicked or
/// hit a storage error) is a violation, and the node counts as down from then on.
async fn watch(shared: Shared, i: usize, incarnation: u64, mut server: ServerMetrics, metrics: Metrics) {
    loop {
        let (term, state) = {
            let m = server.borrow_and_update();
            (m.vote.leader_id().get_term(), m.state)
        };
        lock(&shared).observe(i, term, state);
        if server.changed().await.is_err() {
            break;
        }
    }
    let running = metrics.borrow().running_state.clone();
    let mut w = lock(&shared);
    if w.nodes[i].incarnation == incarnation && w.nodes[i].raft.take().is_some() {
        w.sides_changed();
        let (at, name) = (w.now(), w.names[i].clone());
        let why = running.err().map_or("it panicked (its message is on stderr)".to_string(), |e| e.to_string());
        w.checker.violation(at, NODE_RUNS, format!("{name}'s Raft stopped by itself: {why}"));
    }
}

/// Stops node `i`'s Raft, if it runs: from now on it is unreachable, and its tasks stop
/// between two steps. Its database and applied state stay.
async fn crash(shared: &Shared, i: usize) {
    let raft = {
        let mut w = lock(shared);
        let raft = w.nodes[i].raft.take();
        w.sides_changed();
        raft
    };
    let Some(raft) = raft else { return };
    let stopped = tokio::time::timeout(STOP_BOUND, raft.shutdown()).await;
    if !matches!(stopped, Ok(Ok(()))) {
        let mut w = lock(shared);
        let (at, name) = (w.now(), w.names[i].clone());
        w.checker.violation(at, NODE_RUNS, format!("{name} did not stop within {STOP_BOUND:?}: {stopped:?}"));
    }
}

async fn tick(shared: Shared) {
    loop {
        tokio::time::sleep(TICK).await;
        lock(&shared).check();
    }
}

/// What the fault schedule does next.
#[derive(Debug)]
enum Fault {
    /// Cut one node off from the others (the 1|2 split of three voters).
    Isolate(usize),
    /// Cut the link between two nodes only: each still reaches the third.
    CutLink(usize, usize),
    Heal,
    Crash(usize),
    Restart(usize),
}

fn next_fault(w: &mut World) -> Fault {
    let down: Vec<usize> = (0..NODES).filter(|&i| !w.up(i)).collect();
    let partitioned = w.cut.iter().flatten().any(|&c| c);
    let r: f64 = w.fault_rng.random();
    if !down.is_empty() && (r < 0.4 || down.len() >= 2) {
        return Fault::Restart(down[w.fault_rng.random_range(0..down.len())]);
    }
    if partitioned && r < 0.7 {
        return Fault::Heal;
    }
    let leader = w.leader();
    let any = w.fault_rng.random_range(0..NODES);
    let up: Vec<usize> = (0..NODES).filter(|&i| w.up(i)).collect();
    match w.fault_rng.random_range(0..5) {
        0 => Fault::Isolate(leader.unwrap_or(any)),
        1 => Fault::Isolate(any),
        2 => Fault::CutLink(any, (any + 1 + w.fault_rng.random_range(0..NODES - 1)) % NODES),
        3 => Fault::Crash(leader.unwrap_or(any)),
        _ => Fault::Crash(up[w.fault_rng.random_range(0..up.len())]),
    }
}

async fn faults(shared: Shared) {
    loop {
        let (gap, end) = {
            let mut w = lock(&shared);
            (Duration::from_millis(w.fault_rng.random_range(FAULT_GAP_MS)), w.end)
        };
        tokio::time::sleep(gap).await;
        if Instant::now() >= end {
            return;
        }
        let fault = {
            let mut w = lock(&shared);
            let fault = next_fault(&mut w);
            w.trace(&format!("{fault:?}"));
            match fault {
                Fault::Isolate(i) => {
                    w.cut = [[false; NODES]; NODES];
                    for j in (0..NODES).filter(|&j| j != i) {
                        (w.cut[i][j], w.cut[j][i]) = (true, true);
                    }
                    w.report.partitions += 1;
                }
                Fault::CutLink(a, b) => {
                    w.cut = [[false; NODES]; NODES];
                    (w.cut[a][b], w.cut[b][a]) = (true, true);
                    w.report.partitions += 1;
                }
                Fault::Heal => {
                    w.cut = [[false; NODES]; NODES];
                    w.report.heals += 1;
                }
                Fault::Crash(_) => w.report.crashes += 1,
                Fault::Restart(_) => w.report.restarts += 1,
            }
            w.sides_changed();
            fault
        };
        match fault {
            Fault::Crash(i) => crash(&shared, i).await,
            Fault::Restart(i) => start(&shared, i).await,
            _ => {}
        }
    }
}

/// One client: writes a new payload through a random running node, again and again, each
/// within [`WRITE_BOUND`], and records which were acknowledged.
async fn client(shared: Shared) {
    loop {
        let (gap, end) = {
            let mut w = lock(&shared);
            (Duration::from_millis(w.client_rng.random_range(CLIENT_GAP_MS)), w.end)
        };
        tokio::time::sleep(gap).await;
        if Instant::now() >= end {
            return;
        }
        let (raft, issued, payload, fake_ack) = {
            let mut w = lock(&shared);
            let node = w.client_rng.random_range(0..NODES);
            let Some(raft) = w.nodes[node].raft.clone() else { continue };
            w.next_write += 1;
            let payload = format!("w{}", w.next_write).into_bytes();
            let n = &w.nodes[node];
            let issued = Issued { node, at: w.now(), minority: n.minority, majority_epoch: n.majority_epoch };
            let fake_ack = n.minority && w.bugs.contains(&RaftBug::MinorityAck);
            (raft, issued, payload, fake_ack)
        };
        let request = Request { origin: raft.metrics().borrow().id, payload: payload.clone() };
        let result = if fake_ack {
            Ok(())
        } else {
            match tokio::time::timeout(WRITE_BOUND, write(&shared, issued.node, &raft, request)).await {
                Ok(result) => result,
                Err(_) => Err(format!("not acknowledged within {WRITE_BOUND:?}")),
            }
        };
        lock(&shared).write_ended(issued, payload, result);
    }
}

/// A write through node `via`, as the product's `Replica::write` makes it: through its own
/// Raft when it leads, else forwarded to the leader it knows.
async fn write(shared: &Shared, via: usize, raft: &Raft<SimConfig>, request: Request) -> Result<(), String> {
    match net::write(raft, request.clone()).await {
        Ok(_index) => Ok(()),
        Err(WriteRefused::NotLeader { leader: Some(leader) }) => {
            let Some(to) = lock(shared).index(leader) else { return Err(format!("unknown leader {leader}")) };
            match network::call(shared, via, to, &Rpc::Write(request), WRITE_BOUND).await {
                Ok(Reply::Write(r)) => r.map(|_index| ()).map_err(|e| e.to_string()),
                Ok(_) => Err("the leader answered another call".into()),
                Err(e) => Err(e.to_string()),
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

impl World {
    fn write_ended(&mut self, issued: Issued, payload: Vec<u8>, result: Result<(), String>) {
        let at = self.now();
        let name = self.names[issued.node].clone();
        let shown = check::show(&payload);
        match result {
            Ok(()) => {
                let n = &self.nodes[issued.node];
                self.checker.checks += 1;
                if issued.minority && n.minority && n.majority_epoch == issued.majority_epoch {
                    let detail = format!(
                        "{name} acknowledged {shown}, issued at {}, though from then on it reached no majority \
                         of the voters",
                        crate::sim::format_elapsed(issued.at)
                    );
                    self.checker.violation(at, MINORITY, detail);
                }
                self.trace(&format!("acked {shown} via {name}"));
                self.acked.insert(payload, (issued.node, at));
                self.report.writes_acked += 1;
            }
            Err(_) => {
                self.trace(&format!("failed {shown} via {name}"));
                self.failed.push(payload);
                self.report.writes_failed += 1;
            }
        }
    }
}

/// Heals every partition, restarts every node that is down, and gives the cluster
/// [`SETTLE`] to apply the same writes everywhere, every acknowledged one among them; then
/// checks that it did.
async fn settle(shared: &Shared) {
    {
        let mut w = lock(shared);
        w.cut = [[false; NODES]; NODES];
        w.trace("final heal");
    }
    for i in 0..NODES {
        if !lock(shared).up(i) {
            start(shared, i).await;
        }
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        tokio::time::sleep(TICK).await;
        let w = lock(shared);
        let settled = {
            let first = w.nodes[0].applied.state();
            w.acked.keys().all(|p| first.contains(p)) && w.nodes[1..].iter().all(|n| n.applied.state().log == first.log)
        };
        if settled || Instant::now() >= deadline {
            break;
        }
    }
    let mut w = lock(shared);
    w.check();
    w.final_check();
}

impl World {
    fn final_check(&mut self) {
        let at = self.now();
        let mut lost = Vec::new();
        for i in 0..NODES {
            let applied = self.nodes[i].applied.clone();
            let state = applied.state();
            self.report.snapshots_installed += state.installs;
            self.report.reapplied += state.reapplied;
            for (payload, &(node, acked_at)) in &self.acked {
                self.checker.checks += 1;
                if !state.contains(payload) {
                    lost.push(format!(
                        "{} (acknowledged by {} at {}) is not applied on {} ({} entries applied)",
                        check::show(payload),
                        self.names[node],
                        crate::sim::format_elapsed(acked_at),
                        self.names[i],
                        state.log.len()
                    ));
                }
            }
        }
        for detail in lost.iter().take(5) {
            self.checker.violation(at, NOTHING_LOST, detail.clone());
        }
        let logs: Vec<Vec<Vec<u8>>> = self.nodes.iter().map(|n| n.applied.state().log.clone()).collect();
        if lost.is_empty() && logs.iter().any(|l| l != &logs[0]) {
            let lengths: Vec<String> = (0..NODES).map(|i| format!("{} {}", self.names[i], logs[i].len())).collect();
            let detail = format!("entries applied after {SETTLE:?}: {}", lengths.join(", "));
            self.checker.violation(at, CONVERGES, detail);
        }
        self.report.applied = logs[0].len();
        let first = self.nodes[0].applied.clone();
        let first = first.state();
        self.report.failed_but_applied = self.failed.iter().filter(|p| first.contains(p)).count() as u64;
    }
}

//! Criterion benchmarks of the cluster's Raft (`pbx_cluster::raft::Replica`), in one process:
//! members linked by real QUIC with mutual TLS on 127.0.0.1, each with its own redb file in a
//! temp directory (durable commits, fsync included), an applier that keeps nothing (so only
//! Raft, QUIC and redb are measured, not the node's own storage).
//!
//! - `election/after_leader_loss`: three members (n1, n2, witness w3) with the product's
//!   timings (`ReplicaConfig::new`: heartbeat 200 ms, election timeout 1–2 s). One iteration
//!   shuts the leader down and times until both survivors name the same new leader; the dead
//!   member is restarted (not timed) before the next. One election per sample.
//! - `write/…`: `Replica::write` of a 200-byte payload (about one replicated binding) until
//!   it is committed and applied on the leader: on a cluster of one, and on three members
//!   through the leader and through a follower (which forwards it to the leader); `…_x16`
//!   is 16 writers at once (throughput is per write); `…_100k` one 100 KB payload, about what
//!   the registrar's writer sends when it batches 512 new bindings.
//!
//! Setup is not measured. About two minutes in all. See docs/PERFORMANCE.md, "Cluster".

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use pbx_cluster::identity::{self, NodeIdentity, NodeName};
use pbx_cluster::link;
use pbx_cluster::raft::{Applier, ApplyError, Member, Replica, ReplicaConfig, Request, store};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Longest any election or restart may take before the bench gives up (a bug, not a result).
const BOUND: Duration = Duration::from_secs(30);

/// Applies nothing: the bench measures Raft, not the node's storage.
struct Discard;

impl Applier for Discard {
    fn apply(&self, _: &[&Request]) -> Result<(), ApplyError> {
        Ok(())
    }
    fn snapshot(&self) -> Result<Vec<u8>, ApplyError> {
        Ok(Vec::new())
    }
    fn install(&self, _: &[u8]) -> Result<(), ApplyError> {
        Ok(())
    }
}

struct Cluster {
    certs: tempfile::TempDir,
    data: Vec<tempfile::TempDir>,
    members: Vec<Member>,
    replicas: Vec<Option<Arc<Replica>>>,
}

impl Cluster {
    /// `names` members (a name starting with `w` is a witness), all started, a leader agreed.
    async fn start(names: &[&str]) -> Cluster {
        let certs = tempfile::tempdir().expect("temp dir");
        let list = identity::parse_node_names(&names.join(",")).expect("node names");
        identity::init(certs.path(), &list).expect("cluster identities");
        let members = names
            .iter()
            .map(|name| {
                // Learn a free port, then let go of it for the replica to bind (and rebind).
                let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free UDP port");
                let address = socket.local_addr().expect("bound").to_string();
                Member { name: name.to_string(), address, witness: name.starts_with('w') }
            })
            .collect();
        let data = names.iter().map(|_| tempfile::tempdir().expect("temp dir")).collect();
        let mut cluster = Cluster { certs, data, members, replicas: vec![None; names.len()] };
        for i in 0..names.len() {
            cluster.replicas[i] = Some(Arc::new(cluster.member(i).await));
        }
        cluster.leader().await;
        cluster
    }

    async fn member(&self, i: usize) -> Replica {
        let me = self.members[i].clone();
        let identity =
            NodeIdentity::load(self.certs.path(), &NodeName::new(&me.name).expect("name")).expect("identity");
        let address: SocketAddr = me.address.parse().expect("address");
        // A stopped member's socket closes once its connections have drained: retry a while.
        let started = Instant::now();
        let endpoint = loop {
            match link::endpoint(&identity, address) {
                Ok(endpoint) => break endpoint,
                Err(e) if started.elapsed() > BOUND => panic!("bind {address} again: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let db = store::open(self.data[i].path()).expect("raft redb");
        let config = ReplicaConfig::new(me, self.members.clone());
        Replica::start(config, Some(endpoint), db, Arc::new(Discard)).await.expect("replica starts")
    }

    /// The index of the member every running member names as leader, once they agree.
    async fn leader(&self) -> usize {
        let started = Instant::now();
        loop {
            let views: Vec<Option<String>> = self.replicas.iter().flatten().map(|r| r.status().leader).collect();
            if let Some(Some(name)) = views.first()
                && views.iter().all(|v| v.as_ref() == Some(name))
                && let Some(i) = self.members.iter().position(|m| &m.name == name)
                && self.replicas[i].is_some()
            {
                return i;
            }
            assert!(started.elapsed() < BOUND, "no agreed leader within {BOUND:?}: {views:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Once a leader is agreed and every running member holds and applied the same log: a
    /// member just restarted that lags stands for election with a shorter log, is refused, and
    /// delays the next election by seconds (a different measurement).
    async fn settled(&self) -> usize {
        let started = Instant::now();
        loop {
            let leader = self.leader().await;
            let logs: Vec<_> =
                self.replicas.iter().flatten().map(|r| r.status()).map(|s| (s.last_log_index, s.applied)).collect();
            if logs.iter().all(|l| *l == logs[0] && l.0 == l.1) {
                return leader;
            }
            assert!(started.elapsed() < BOUND, "members not caught up within {BOUND:?}: {logs:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(&mut self, i: usize) {
        let replica = self.replicas[i].take().expect("member running");
        Arc::into_inner(replica).expect("no write in flight").shutdown().await;
    }

    async fn shutdown(mut self) {
        for i in 0..self.replicas.len() {
            if self.replicas[i].is_some() {
                self.stop(i).await;
            }
        }
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

fn election(c: &mut Criterion) {
    let rt = runtime();
    let mut cluster = rt.block_on(Cluster::start(&["n1", "n2", "w3"]));
    let mut times = Vec::new();
    let mut group = c.benchmark_group("election");
    // One election per sample; the time asked for is too short on purpose (criterion says so).
    group.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_millis(1));
    group.bench_function("after_leader_loss", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let old = cluster.settled().await;
                    let replica = cluster.replicas[old].take().expect("leader running");
                    let started = Instant::now();
                    // Raft stops at once; closing the links (not timed apart) goes on beside.
                    let stopping = tokio::spawn(async move {
                        Arc::into_inner(replica).expect("no write in flight").shutdown().await;
                    });
                    let new = cluster.leader().await;
                    let took = started.elapsed();
                    assert_ne!(new, old, "a survivor leads");
                    total += took;
                    times.push(took);
                    stopping.await.expect("shutdown");
                    cluster.replicas[old] = Some(Arc::new(cluster.member(old).await));
                    cluster.leader().await;
                }
                total
            })
        })
    });
    group.finish();
    times.sort();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        eprintln!(
            "election/after_leader_loss: {} elections, min {min:?}, median {:?}, max {max:?}",
            times.len(),
            times[times.len() / 2]
        );
    }
    rt.block_on(cluster.shutdown());
}

fn write(c: &mut Criterion) {
    let rt = runtime();
    let small = vec![0x5a; 200];
    let large = vec![0x5a; 100_000];
    let mut group = c.benchmark_group("write");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for names in [&["n1"][..], &["n1", "n2", "w3"][..]] {
        let cluster = rt.block_on(Cluster::start(names));
        let leader = rt.block_on(cluster.leader());
        let mut via = vec![("leader", leader)];
        if names.len() > 1 {
            // A voter that does not lead (the witness serves no SIP, so never writes).
            let follower = (0..names.len()).find(|&i| i != leader && !cluster.members[i].witness).expect("a voter");
            via.push(("follower", follower));
        }
        for (role, i) in via {
            let replica = cluster.replicas[i].clone().expect("running");
            let id = format!("{}_member{}_{role}", names.len(), if names.len() > 1 { "s" } else { "" });
            group.throughput(Throughput::Elements(1));
            group.bench_function(format!("{id}/200b"), |b| {
                b.iter(|| rt.block_on(replica.write(small.clone())).expect("committed"))
            });
            group.bench_function(format!("{id}/100k"), |b| {
                b.iter(|| rt.block_on(replica.write(large.clone())).expect("committed"))
            });
            group.throughput(Throughput::Elements(16));
            group.bench_function(format!("{id}/200b_x16"), |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let mut writers = tokio::task::JoinSet::new();
                        for _ in 0..16 {
                            let (replica, payload) = (replica.clone(), small.clone());
                            writers.spawn(async move { replica.write(payload).await });
                        }
                        while let Some(done) = writers.join_next().await {
                            done.expect("writer").expect("committed");
                        }
                    })
                })
            });
        }
        rt.block_on(cluster.shutdown());
    }
    group.finish();
}

criterion_group!(benches, election, write);
criterion_main!(benches);

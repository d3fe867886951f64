//! Three Raft replicas in one process, linked by real QUIC with mutual TLS on 127.0.0.1, each
//! with its own redb file: a leader is elected, writes through any member commit everywhere in
//! one order, the leader's loss elects another that keeps every committed write, a member
//! alone never commits, and a restarted member catches up (from the log, or from a snapshot).

mod common;

use common::LogBuffer;
use pbx_cluster::identity::{self, NodeIdentity, NodeName};
use pbx_cluster::link;
use pbx_cluster::raft::{Applier, ApplyError, Member, Replica, ReplicaConfig, Request, WriteError, store};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const ELECTION: Duration = Duration::from_secs(10);

/// Records what it applies, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);

impl Recorder {
    fn payloads(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().iter().map(|(_, p)| p.clone()).collect()
    }
}

impl Applier for Recorder {
    fn apply(&self, requests: &[&Request]) -> Result<(), ApplyError> {
        self.0.lock().unwrap().extend(requests.iter().map(|r| (r.origin, r.payload.clone())));
        Ok(())
    }
    fn snapshot(&self) -> Result<Vec<u8>, ApplyError> {
        postcard::to_allocvec(&*self.0.lock().unwrap()).map_err(ApplyError::storage)
    }
    fn install(&self, snapshot: &[u8]) -> Result<(), ApplyError> {
        *self.0.lock().unwrap() = postcard::from_bytes(snapshot).map_err(|e| ApplyError::undecodable("snapshot", e))?;
        Ok(())
    }
}

struct Node {
    replica: Replica,
    applied: Arc<Recorder>,
}

struct Cluster {
    _certs: tempfile::TempDir,
    certs: std::path::PathBuf,
    data: Vec<tempfile::TempDir>,
    members: Vec<Member>,
    nodes: Vec<Option<Node>>,
    /// Each member's applied state, kept across its restarts like the node's own redb file.
    recorders: Vec<Arc<Recorder>>,
    snapshot_every: u64,
}

fn identity(dir: &Path, node: &str) -> NodeIdentity {
    NodeIdentity::load(dir, &NodeName::new(node).unwrap()).unwrap()
}

impl Cluster {
    /// Three members whose UDP ports are taken now and kept for restarts.
    async fn new(snapshot_every: u64, started: usize) -> Cluster {
        let certs = tempfile::tempdir().unwrap();
        identity::init(certs.path(), &identity::parse_node_names("n1,n2,w3").unwrap()).unwrap();
        let mut members = Vec::new();
        for name in ["n1", "n2", "w3"] {
            // Learn a free port, then let go of it for the replica to bind.
            let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let address = socket.local_addr().unwrap().to_string();
            members.push(Member { name: name.into(), address, witness: name == "w3" });
        }
        let data = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut cluster = Cluster {
            certs: certs.path().to_path_buf(),
            _certs: certs,
            data,
            members,
            nodes: Vec::new(),
            recorders: (0..3).map(|_| Arc::default()).collect(),
            snapshot_every,
        };
        for i in 0..3 {
            let node = if i < started { Some(cluster.start(i).await) } else { None };
            cluster.nodes.push(node);
        }
        cluster
    }

    async fn start(&self, i: usize) -> Node {
        let me = self.members[i].clone();
        let mut config = ReplicaConfig::new(me.clone(), self.members.clone());
        config.write_timeout = Duration::from_secs(5);
        config.snapshot_every = self.snapshot_every;
        config.logs_kept = if self.snapshot_every < 100 { 0 } else { 1000 };
        let address: SocketAddr = me.address.parse().unwrap();
        // A stopped member's socket closes once its last connection has drained: retry a while.
        let mut tries = 0;
        let endpoint = loop {
            match link::endpoint(&identity(&self.certs, &me.name), address) {
                Ok(e) => break e,
                Err(e) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = e;
                }
                Err(e) => panic!("bind the member's port again: {e}"),
            }
        };
        let db = store::open(self.data[i].path()).unwrap();
        let applied = self.recorders[i].clone();
        let replica = Replica::start(config, Some(endpoint), db, applied.clone()).await.unwrap();
        Node { replica, applied }
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().unwrap()
    }

    /// The index of the member every running member names as leader, once they agree.
    async fn leader(&self) -> usize {
        let deadline = tokio::time::Instant::now() + ELECTION;
        loop {
            let views: Vec<Option<String>> = self.nodes.iter().flatten().map(|n| n.replica.status().leader).collect();
            if let Some(Some(name)) = views.first()
                && views.iter().all(|v| v.as_ref() == Some(name))
                && let Some(i) = self.members.iter().position(|m| &m.name == name)
                && self.nodes[i].is_some()
            {
                return i;
            }
            assert!(tokio::time::Instant::now() < deadline, "no agreed leader within {ELECTION:?}: {views:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(&mut self, i: usize) {
        let node = self.nodes[i].take().unwrap();
        node.replica.shutdown().await;
    }

    /// Waits until member `i` has applied exactly `want`.
    async fn applied(&self, i: usize, want: &[Vec<u8>]) {
        let deadline = tokio::time::Instant::now() + ELECTION;
        loop {
            let got = self.node(i).applied.payloads();
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member {i} applied {:?}, not {:?}: {:?}",
                String::from_utf8_lossy(&got.concat()),
                String::from_utf8_lossy(&want.concat()),
                self.node(i).replica.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(mut self) {
        for i in 0..3 {
            if self.nodes[i].is_some() {
                self.stop(i).await;
            }
        }
    }
}

fn run(test: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async { tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test within its time bound") });
}

#[test]
fn writes_through_any_member_survive_the_leaders_loss() {
    run(async {
        let mut cluster = Cluster::new(10_000, 3).await;
        let first = cluster.leader().await;
        let follower = (first + 1) % 3;
        let mut written = Vec::new();
        // Through the leader and through a follower (forwarded).
        for (i, via) in [first, follower, first, follower].into_iter().enumerate() {
            let payload = format!("w{i}").into_bytes();
            cluster.node(via).replica.write(payload.clone()).await.unwrap();
            written.push(payload);
        }
        for i in 0..3 {
            cluster.applied(i, &written).await;
        }
        let status = cluster.node(first).replica.status();
        assert_eq!(status.state, "Leader");
        assert!(status.members.iter().all(|m| m.matched.is_some()), "{status:?}");

        // The leader dies; the other two elect one of themselves in a later term.
        let term = status.term;
        cluster.stop(first).await;
        let second = cluster.leader().await;
        assert_ne!(second, first);
        assert!(cluster.node(second).replica.status().term > term);
        let survivor = (0..3).find(|&i| i != first && i != second).unwrap();
        for via in [second, survivor] {
            let payload = format!("after-{via}").into_bytes();
            cluster.node(via).replica.write(payload.clone()).await.unwrap();
            written.push(payload);
        }
        cluster.applied(second, &written).await;
        cluster.applied(survivor, &written).await;

        // The dead member comes back with its redb file and catches up.
        let node = cluster.start(first).await;
        cluster.nodes[first] = Some(node);
        cluster.applied(first, &written).await;
        cluster.shutdown().await;
    });
}

#[test]
fn a_member_alone_never_commits() {
    run(async {
        let mut cluster = Cluster::new(10_000, 3).await;
        let leader = cluster.leader().await;
        cluster.node(leader).replica.write(b"before".to_vec()).await.unwrap();
        let alone = (leader + 1) % 3;
        // A follower learns that an entry committed from the leader's next message: stopped
        // before that, it would hold "before" uncommitted forever (what CI once hit).
        cluster.applied(alone, &[b"before".to_vec()]).await;
        for i in 0..3 {
            if i != alone {
                cluster.stop(i).await;
            }
        }
        let err = cluster.node(alone).replica.write(b"minority".to_vec()).await.unwrap_err();
        assert!(matches!(err, WriteError::NoQuorum(_)), "{err}");
        cluster.applied(alone, &[b"before".to_vec()]).await;
        cluster.shutdown().await;
    });
}

#[test]
fn a_member_far_behind_catches_up_from_a_snapshot() {
    run(async {
        // A snapshot every 20 entries and no log kept behind it: the member that missed them
        // (here: one that starts late) can only catch up from a snapshot.
        let mut cluster = Cluster::new(20, 2).await;
        let leader = cluster.leader().await;
        let behind = 2;
        let mut written = Vec::new();
        for i in 0..60u32 {
            let payload = i.to_be_bytes().to_vec();
            cluster.node(leader).replica.write(payload.clone()).await.unwrap();
            written.push(payload);
        }
        cluster.node(leader).replica.raft().trigger().snapshot().await.unwrap();
        let node = cluster.start(behind).await;
        cluster.nodes[behind] = Some(node);
        cluster.applied(behind, &written).await;
        cluster.shutdown().await;
    });
}

#[test]
fn compaction_leaves_no_applied_entry_in_the_log() {
    run(async {
        let cluster = Cluster::new(10_000, 3).await;
        let leader = cluster.leader().await;
        let mut written = Vec::new();
        for i in 0..5u8 {
            cluster.node(leader).replica.write(vec![i]).await.unwrap();
            written.push(vec![i]);
        }
        for i in 0..3 {
            cluster.applied(i, &written).await;
            let replica = &cluster.node(i).replica;
            let upto = replica.compact(ELECTION).await.unwrap().expect("entries applied");
            assert!(upto >= 5, "compacted up to {upto}");
            // The purge may wait for replication to finish: bounded.
            let purged = replica
                .raft()
                .wait(Some(ELECTION))
                .metrics(|m| m.purged.is_some_and(|p| p.index >= upto), "log purged")
                .await;
            assert!(purged.is_ok(), "member {i} did not purge up to {upto}: {purged:?}");
        }
        // Writes go on after compaction, and every member still agrees.
        cluster.node(leader).replica.write(b"after".to_vec()).await.unwrap();
        written.push(b"after".to_vec());
        for i in 0..3 {
            cluster.applied(i, &written).await;
        }
        cluster.shutdown().await;
    });
}

/// A cluster of one (an appliance) restarted on its redb file starts as quietly as it did the
/// first time: it does not ask Raft to initialise a log that is not empty (openraft refused at
/// ERROR on every restart), and its writes still commit. On a current-thread runtime Raft's
/// core has not loaded the stored log when `Replica::start` decides, which is what made the
/// old check (Raft's metrics) see every restart as fresh.
#[test]
fn a_restarted_cluster_of_one_does_not_initialise_again() {
    let logs = LogBuffer::default();
    let subscriber = logs.subscriber();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let data = tempfile::tempdir().unwrap();
    let me = Member { name: "n1".into(), address: "127.0.0.1:1".into(), witness: false };
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            tokio::time::timeout(TEST_TIMEOUT, async {
                for payload in [b"first".to_vec(), b"after restart".to_vec()] {
                    let db = store::open(data.path()).unwrap();
                    let config = ReplicaConfig::new(me.clone(), vec![me.clone()]);
                    let replica = Replica::start(config, None, db, Arc::new(Recorder::default())).await.unwrap();
                    replica.write(payload).await.unwrap();
                    replica.shutdown().await;
                }
            })
            .await
            .expect("test within its time bound")
        })
    });
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(logs.matches("cluster membership initialised").count(), 1, "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
}

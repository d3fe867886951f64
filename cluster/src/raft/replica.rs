//! One node's Raft: started from its identity and the member list, written to through
//! [`Replica::write`] whichever node leads, and shown by [`Replica::status`].

use super::net::{self, Client, Network, Reply, Rpc, WriteRefused};
use super::store::{LogStore, StateMachine};
use super::{Applier, Member, NodeId, Request, TypeConfig, membership, node_id};
use openraft::storage::RaftLogStorage;
use openraft::{Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Largest payload [`Replica::write`] takes: one entry must fit one RPC message
/// ([`net::MESSAGE_BYTES_MAX`]) with room for its framing. pbx's batches are far smaller (512
/// commands of at most a few hundred bytes).
pub const WRITE_PAYLOAD_BYTES_MAX: usize = 4 << 20;

/// Timing of one node's Raft. Elections start after `election_min..election_max` without a
/// heartbeat, so a dead leader is replaced within about `election_max` plus one election.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub me: Member,
    pub members: Vec<Member>,
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// How long [`Replica::write`] keeps trying (through elections) before it gives up.
    pub write_timeout: Duration,
    /// Entries applied since the last snapshot that make a new one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for followers only a little behind.
    pub logs_kept: u64,
}

impl ReplicaConfig {
    pub fn new(me: Member, members: Vec<Member>) -> ReplicaConfig {
        ReplicaConfig {
            me,
            members,
            heartbeat: Duration::from_millis(200),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(2000),
            write_timeout: Duration::from_secs(10),
            snapshot_every: 10_000,
            logs_kept: 1000,
        }
    }

    /// openraft's configuration for these timings, validated.
    pub fn raft_config(&self) -> Result<openraft::Config, String> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: "pbx".into(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_min),
            election_timeout_max: ms(self.election_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.logs_kept,
            snapshot_max_chunk_size: net::SNAPSHOT_CHUNK_BYTES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No leader could commit the write in time: no quorum (this node is on a minority side,
    /// or too many members are down) or an election that did not end.
    #[error("not committed within {0:?}: no leader with a quorum")]
    NoQuorum(Duration),
    #[error("{0}")]
    Failed(String),
}

/// A member as `GET /api/v1/cluster` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub id: NodeId,
    pub role: String,
    pub address: String,
    /// The last log index the leader knows this member holds (only on the leader).
    pub matched: Option<u64>,
    /// Entries this member is behind the leader's log (only on the leader).
    pub lag: Option<u64>,
    /// Whether this node has a live actor session with the member (filled by the node).
    pub actor_link: Option<bool>,
}

/// One node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub id: NodeId,
    pub role: String,
    pub state: String,
    pub leader: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    pub members: Vec<MemberStatus>,
}

fn role(m: &Member) -> String {
    if m.witness { "witness" } else { "voter" }.to_string()
}

pub struct Replica {
    raft: Raft<TypeConfig>,
    id: NodeId,
    config: ReplicaConfig,
    members: BTreeMap<NodeId, Member>,
    client: Client,
    /// The links endpoint and its RPC server; `None` for a cluster of one, which has no links.
    links: Option<(quinn::Endpoint, JoinHandle<()>)>,
    /// The log's database, for [`Replica::rewrite_file`].
    db: Arc<crate::redb_file::RedbFile>,
}

impl Replica {
    /// Serves Raft on `endpoint` (from [`crate::link::endpoint`]; `None` for a cluster of
    /// one), starts it over `db`, and initialises the membership if this node's log is empty
    /// (every node may do so: the same member list makes the same first entry).
    pub async fn start(
        config: ReplicaConfig,
        endpoint: Option<quinn::Endpoint>,
        db: Arc<crate::redb_file::RedbFile>,
        applier: Arc<dyn Applier>,
    ) -> Result<Replica, String> {
        let members = membership(&config.members)?;
        let id = node_id(&config.me.name);
        if !members.contains_key(&id) {
            return Err(format!("node {} is not in its own member list", config.me.name));
        }
        if endpoint.is_none() && members.len() > 1 {
            return Err("a cluster of more than one member needs a links endpoint".into());
        }
        let client = Client::new(endpoint.clone());
        let raft_config = Arc::new(config.raft_config()?);
        let mut log = LogStore::<TypeConfig>::new(db.clone());
        // Fresh is read from the stored log and vote, before Raft starts: its metrics show them
        // only once its core task has loaded them, and a restarted node that asked to
        // initialise got openraft's "Can not initialize" at ERROR on every start.
        let fresh = log.get_log_state().await.map_err(|e| e.to_string())?.last_log_id.is_none()
            && log.read_vote().await.map_err(|e| e.to_string())?.is_none_or(|v| v.leader_id().term == 0);
        let sm = StateMachine::<TypeConfig>::new(db.clone(), applier);
        let raft =
            Raft::new(id, raft_config, Network::new(client.clone()), log, sm).await.map_err(|e| e.to_string())?;
        let links = endpoint.map(|e| {
            let server = tokio::spawn(net::serve(e.clone(), raft.clone(), members.clone()));
            (e, server)
        });
        if fresh {
            match raft.initialize(members.clone()).await {
                Ok(()) => tracing::info!(members = members.len(), "cluster membership initialised"),
                // Another member's entries reached us first: nothing to do.
                Err(e) => tracing::debug!(error = %e, "membership already initialised"),
            }
        }
        Ok(Replica { raft, id, config, members, client, links, db })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The leader this node knows of, if any.
    pub fn leader(&self) -> Option<Member> {
        net::leader(&self.raft.metrics().borrow()).map(|(_, m)| m)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Commits `payload` through whichever member leads, and returns its log index once it is
    /// committed and applied on the leader. Keeps trying through elections for
    /// `write_timeout`; a node on a minority side never gets a commit and returns
    /// [`WriteError::NoQuorum`]. A payload over [`WRITE_PAYLOAD_BYTES_MAX`] is refused.
    pub async fn write(&self, payload: Vec<u8>) -> Result<u64, WriteError> {
        if payload.len() > WRITE_PAYLOAD_BYTES_MAX {
            return Err(WriteError::Failed(format!(
                "a write of {} bytes, more than {WRITE_PAYLOAD_BYTES_MAX}",
                payload.len()
            )));
        }
        let request = Request { origin: self.id, payload };
        let deadline = tokio::time::Instant::now() + self.config.write_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(WriteError::NoQuorum(self.config.write_timeout));
            }
            let leader = self.raft.metrics().borrow().current_leader;
            let attempt = match leader {
                Some(l) if l == self.id => {
                    tokio::time::timeout(remaining, net::write(&self.raft, request.clone())).await.ok()
                }
                Some(l) => match self.members.get(&l) {
                    Some(member) => {
                        match self.client.call::<TypeConfig>(l, member, &Rpc::Write(request.clone()), remaining).await {
                            Ok(Reply::Write(r)) => Some(r),
                            _ => None,
                        }
                    }
                    None => None,
                },
                None => None,
            };
            match attempt {
                Some(Ok(index)) => return Ok(index),
                Some(Err(WriteRefused::Failed(why))) => return Err(WriteError::Failed(why)),
                // No leader, a leader that stepped down, or one we cannot reach: wait and ask again.
                Some(Err(WriteRefused::NotLeader { .. })) | None => {
                    tokio::time::sleep(pause.min(remaining)).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Waits until this node has applied the entry at `index` (a write's, to read its effect
    /// here), for at most `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), WriteError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "entry applied here")
            .await
            .map(|_| ())
            .map_err(|e| WriteError::Failed(format!("entry {index} not applied on this node: {e}")))
    }

    /// Compaction: a snapshot of everything applied here, then the log up to it purged, so
    /// changed or erased data lingers in the log no longer than this is called. Returns the
    /// index the log was purged up to (`None`: nothing applied yet). The purge itself may lag
    /// a few seconds on a leader still sending those entries to a follower.
    pub async fn compact(&self, timeout: Duration) -> Result<Option<u64>, WriteError> {
        let fail = |e: String| WriteError::Failed(format!("compaction: {e}"));
        let Some(applied) = self.raft.metrics().borrow().last_applied else { return Ok(None) };
        let snapshot_at =
            |m: &openraft::RaftMetrics<NodeId, Member>| m.snapshot.is_some_and(|s| s.index >= applied.index);
        if !snapshot_at(&self.raft.metrics().borrow()) {
            self.raft.trigger().snapshot().await.map_err(|e| fail(e.to_string()))?;
            self.raft
                .wait(Some(timeout))
                .metrics(snapshot_at, "snapshot built")
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        let upto = self.raft.metrics().borrow().snapshot.map_or(applied.index, |s| s.index);
        self.raft.trigger().purge_log(upto).await.map_err(|e| fail(e.to_string()))?;
        Ok(Some(upto))
    }

    /// Rewrites the log's file with only its live rows (see [`super::store::rewrite`]): after
    /// a compaction, what the purge removed is then gone from the file too. Blocking: the log's
    /// reads and writes wait for the copy; call it off the runtime's threads.
    pub fn rewrite_file(&self) -> Result<crate::redb_file::Rewritten, String> {
        super::store::rewrite(&self.db)
    }

    /// This node's view: its state, the leader, the term, and per member what the leader knows.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index;
        let replication = m.replication.clone();
        let members = self
            .members
            .iter()
            .map(|(id, member)| {
                let matched = replication.as_ref().and_then(|r| r.get(id)).map(|l| l.map_or(0, |l| l.index));
                MemberStatus {
                    name: member.name.clone(),
                    id: *id,
                    role: role(member),
                    address: member.address.clone(),
                    matched,
                    lag: matched.map(|i| last.unwrap_or(0).saturating_sub(i)),
                    actor_link: None,
                }
            })
            .collect();
        Status {
            node: self.config.me.name.clone(),
            id: self.id,
            role: role(&self.config.me),
            state: format!("{:?}", m.state),
            leader: net::leader(&m).map(|(_, l)| l.name),
            term: m.current_term,
            last_log_index: last,
            committed: m.last_applied.map(|l| l.index),
            applied: m.last_applied.map(|l| l.index),
            members,
        }
    }

    /// Waits until this node's metrics satisfy `ready`, for at most `timeout`.
    pub async fn wait_until(&self, timeout: Duration, ready: impl Fn(&Status) -> bool) -> Result<Status, Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.raft.metrics();
        loop {
            let status = self.status();
            if ready(&status) {
                return Ok(status);
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Err(self.status());
            }
        }
    }

    /// Stops Raft and closes the links.
    pub async fn shutdown(self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not stop cleanly");
        }
        self.client.close();
        if let Some((endpoint, server)) = self.links {
            server.abort();
            endpoint.close(0u32.into(), b"node stopping");
            // Let the close frames go out and the connections drain, so the port is free again.
            let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
        }
    }
}

//! Raft RPCs over the node links: one bidirectional QUIC stream per call, the request written
//! and finished, the reply read to its end. Both are postcard, at most [`MESSAGE_BYTES_MAX`].
//!
//! A node keeps one link per peer, opened on first use and dropped on any failure (the next
//! call opens a new one; openraft backs off between attempts to an unreachable peer). It
//! accepts links only from nodes of its membership: a certificate from the cluster CA for a
//! name that is not a member is refused and logged like any other refusal.
//!
//! Every RPC is checked against the peer the link authenticated before Raft sees it
//! ([`dispatch`]): a member speaks only for itself (the vote of an append, vote or snapshot
//! request names its sender; a forwarded write's origin is its sender), and a snapshot chunk
//! stays within [`SNAPSHOT_CHUNK_BYTES`] and [`SNAPSHOT_BYTES_MAX`]. A refused RPC gets no
//! reply (a forwarded write gets a `Failed` answer saying why), is logged at warn with the
//! peer, and counted in `pbx_cluster_rpc_refusals_total{rpc, reason}`.

use super::snapshot::{REFUSALS_METRIC, SNAPSHOT_BYTES_MAX};
use super::{Member, NodeId, PbxConfig, Request, node_id};
use crate::identity::NodeName;
use crate::link;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{Raft, RaftMetrics, Vote};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest message either side reads (request or reply): a snapshot chunk
/// ([`SNAPSHOT_CHUNK_BYTES`]) or a forwarded write ([`super::WRITE_PAYLOAD_BYTES_MAX`]) with
/// room to spare. An append that would be larger is split by openraft before it is sent (see
/// [`Connection`]), so no member sends what another refuses.
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;
/// The snapshot chunk a leader sends (openraft's `snapshot_max_chunk_size`) and the largest a
/// follower accepts.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 3 << 20;
/// Longest a link may take to open before the call counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// QUIC stream error code of a refused RPC (the stream is reset, no reply is sent).
const REFUSED_CODE: u32 = 1;
const _: () = assert!(SNAPSHOT_CHUNK_BYTES < MESSAGE_BYTES_MAX as u64 / 2);
const _: () = assert!(super::replica::WRITE_PAYLOAD_BYTES_MAX < MESSAGE_BYTES_MAX / 2);

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Rpc<C: PbxConfig> {
    Append(AppendEntriesRequest<C>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<C>),
    /// A client write forwarded by a follower to the node it believes leads.
    Write(Request),
}

/// Why a forwarded write was not committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteRefused {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The index of the committed entry.
    Write(Result<u64, WriteRefused>),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetError(pub String);

/// Commits `request` through `raft` (its log index), or says who leads instead.
pub async fn write<C: PbxConfig>(raft: &Raft<C>, request: Request) -> Result<u64, WriteRefused> {
    match raft.client_write(request).await {
        Ok(r) => Ok(r.log_id.index),
        Err(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
            Err(WriteRefused::NotLeader { leader: f.leader_id })
        }
        Err(e) => Err(WriteRefused::Failed(e.to_string())),
    }
}

/// An RPC refused before it reached Raft: what it was, why, and the detail for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub rpc: &'static str,
    pub reason: &'static str,
    pub detail: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} RPC refused ({}): {}", self.rpc, self.reason, self.detail)
    }
}

impl Refused {
    /// What the sender is told: a forwarded write learns why; a Raft RPC gets nothing (its
    /// sender sees a network error and backs off as for a lost reply).
    pub fn reply(&self) -> Option<Reply> {
        (self.rpc == "write").then(|| Reply::Write(Err(WriteRefused::Failed(self.to_string()))))
    }
}

/// The node a vote names as its leader or candidate must be the peer that sent it.
fn check_vote(rpc: &'static str, vote: &Vote<NodeId>, peer: NodeId) -> Result<(), Refused> {
    match vote.leader_id().voted_for() {
        Some(claimed) if claimed == peer => Ok(()),
        claimed => Err(Refused {
            rpc,
            reason: "impostor",
            detail: format!("its vote names node {claimed:?}, the link authenticated node {peer}"),
        }),
    }
}

/// Whether an RPC from the member `peer` (the node id of the name its certificate carries)
/// may go to Raft: a member speaks only for itself, and snapshot chunks stay within bounds.
pub fn check<C: PbxConfig>(peer: NodeId, rpc: &Rpc<C>) -> Result<(), Refused> {
    match rpc {
        Rpc::Append(r) => check_vote("append", &r.vote, peer),
        Rpc::Vote(r) => check_vote("vote", &r.vote, peer),
        Rpc::Snapshot(r) => {
            check_vote("snapshot", &r.vote, peer)?;
            let len = r.data.len() as u64;
            let refused = |reason, detail| Err(Refused { rpc: "snapshot", reason, detail });
            if len > SNAPSHOT_CHUNK_BYTES {
                return refused("chunk_too_large", format!("a chunk of {len} bytes (at most {SNAPSHOT_CHUNK_BYTES})"));
            }
            match r.offset.checked_add(len) {
                Some(end) if end <= SNAPSHOT_BYTES_MAX => Ok(()),
                _ => refused(
                    "too_large",
                    format!("{len} bytes at offset {}: past the snapshot bound of {SNAPSHOT_BYTES_MAX}", r.offset),
                ),
            }
        }
        Rpc::Write(r) if r.origin == peer => Ok(()),
        Rpc::Write(r) => Err(Refused {
            rpc: "write",
            reason: "origin",
            detail: format!("a write claiming origin node {}, the link authenticated node {peer}", r.origin),
        }),
    }
}

/// Hands one RPC from the member `peer` to the local Raft once [`check`] lets it; a refusal is
/// logged (with `peer_name`, as its certificate names it) and counted.
pub async fn dispatch<C: PbxConfig>(
    raft: &Raft<C>,
    peer: NodeId,
    peer_name: &str,
    rpc: Rpc<C>,
) -> Result<Reply, Refused> {
    if let Err(refused) = check(peer, &rpc) {
        tracing::warn!(peer = peer_name, rpc = refused.rpc, reason = refused.reason, detail = %refused.detail, "cluster RPC refused");
        metrics::counter!(REFUSALS_METRIC, "rpc" => refused.rpc, "reason" => refused.reason).increment(1);
        return Err(refused);
    }
    Ok(match rpc {
        Rpc::Append(r) => Reply::Append(raft.append_entries(r).await),
        Rpc::Vote(r) => Reply::Vote(raft.vote(r).await),
        Rpc::Snapshot(r) => Reply::Snapshot(raft.install_snapshot(r).await),
        Rpc::Write(r) => Reply::Write(write(raft, r).await),
    })
}

/// Serves the RPCs of every link the endpoint accepts from a member, until the endpoint closes.
pub async fn serve<C: PbxConfig>(endpoint: quinn::Endpoint, raft: Raft<C>, members: BTreeMap<NodeId, Member>) {
    let names: Vec<String> = members.values().map(|m| m.name.clone()).collect();
    while let Some(accepted) = link::accept(&endpoint).await {
        let Ok(link) = accepted else { continue };
        if !names.iter().any(|n| n == link.peer.as_str()) {
            tracing::warn!(peer = %link.peer, remote = %link.connection.remote_address(), "cluster link refused: not a member");
            metrics::counter!(link::REFUSALS_METRIC, "by" => "us", "reason" => "NotAMember").increment(1);
            link.connection.close(0u32.into(), b"not a member of this cluster");
            continue;
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let peer_id = node_id(link.peer.as_str());
            while let Ok((mut send, mut recv)) = link.connection.accept_bi().await {
                let raft = raft.clone();
                let peer = link.peer.clone();
                tokio::spawn(async move {
                    let bytes = match recv.read_to_end(MESSAGE_BYTES_MAX).await {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "unreadable Raft RPC");
                            metrics::counter!(REFUSALS_METRIC, "rpc" => "any", "reason" => "unreadable").increment(1);
                            let _ = send.reset(REFUSED_CODE.into());
                            return;
                        }
                    };
                    let rpc = match postcard::from_bytes::<Rpc<C>>(&bytes) {
                        Ok(rpc) => rpc,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "undecodable Raft RPC");
                            metrics::counter!(REFUSALS_METRIC, "rpc" => "any", "reason" => "undecodable").increment(1);
                            let _ = send.reset(REFUSED_CODE.into());
                            return;
                        }
                    };
                    let reply = match dispatch(&raft, peer_id, peer.as_str(), rpc).await {
                        Ok(reply) => reply,
                        Err(refused) => match refused.reply() {
                            Some(reply) => reply,
                            None => {
                                let _ = send.reset(REFUSED_CODE.into());
                                return;
                            }
                        },
                    };
                    let Ok(bytes) = postcard::to_allocvec(&reply) else { return };
                    if send.write_all(&bytes).await.is_ok() {
                        let _ = send.finish();
                        // Let the reply leave before the stream is dropped.
                        let _ = send.stopped().await;
                    }
                });
            }
        });
    }
}

/// Opens links and makes calls to other members. Cheap to clone; all clones share the links.
/// [`Client::close`] lets go of the endpoint in every clone at once, so the port is freed even
/// while some task of openraft's still holds a clone.
#[derive(Clone)]
pub struct Client {
    endpoint: Arc<Mutex<Option<quinn::Endpoint>>>,
    links: Arc<Mutex<HashMap<NodeId, quinn::Connection>>>,
}

/// Why a call failed: before it reached the peer, or after.
#[derive(Debug)]
pub enum CallError {
    Unreachable(String),
    /// Not sent: encoded, it is larger than [`MESSAGE_BYTES_MAX`] (its size).
    TooLarge(usize),
    Failed(String),
}

impl Client {
    /// `None`: a cluster of one, which calls nobody.
    pub fn new(endpoint: Option<quinn::Endpoint>) -> Client {
        Client { endpoint: Arc::new(Mutex::new(endpoint)), links: Arc::default() }
    }

    /// Closes every link and forgets the endpoint; later calls fail as unreachable.
    pub fn close(&self) {
        for (_, c) in self.links.lock().expect("links lock").drain() {
            c.close(0u32.into(), b"node stopping");
        }
        self.endpoint.lock().expect("endpoint lock").take();
    }

    async fn connection(&self, target: NodeId, member: &Member) -> Result<quinn::Connection, CallError> {
        if let Some(c) = self.links.lock().expect("links lock").get(&target).filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let addr: SocketAddr = member.address.parse().map_err(|e| CallError::Unreachable(format!("address: {e}")))?;
        let name = NodeName::new(&member.name).map_err(|e| CallError::Unreachable(e.to_string()))?;
        let endpoint = self.endpoint.lock().expect("endpoint lock").clone();
        let endpoint = endpoint.ok_or_else(|| CallError::Unreachable("this node is stopping".into()))?;
        let link = tokio::time::timeout(CONNECT_TIMEOUT, link::connect(&endpoint, addr, &name))
            .await
            .map_err(|_| CallError::Unreachable(format!("no link to {member} within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        self.links.lock().expect("links lock").insert(target, link.connection.clone());
        Ok(link.connection)
    }

    /// One call: `rpc` to `target`, its reply within `timeout`.
    pub async fn call<C: PbxConfig>(
        &self,
        target: NodeId,
        member: &Member,
        rpc: &Rpc<C>,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let bytes = postcard::to_allocvec(rpc).map_err(|e| CallError::Failed(e.to_string()))?;
        if bytes.len() > MESSAGE_BYTES_MAX {
            return Err(CallError::TooLarge(bytes.len()));
        }
        let connection = self.connection(target, member).await?;
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&bytes).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            let bytes = recv.read_to_end(MESSAGE_BYTES_MAX).await.map_err(|e| e.to_string())?;
            postcard::from_bytes::<Reply>(&bytes).map_err(|e| format!("undecodable reply: {e}"))
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no reply from {member} within {timeout:?}")),
        };
        result.map_err(|e| {
            // A link that failed a call is not trusted with the next one.
            self.links.lock().expect("links lock").remove(&target);
            connection.close(0u32.into(), b"call failed");
            CallError::Failed(e)
        })
    }
}

/// openraft's view of the network: a [`Client`] per target.
pub struct Network {
    client: Client,
}

impl Network {
    pub fn new(client: Client) -> Network {
        Network { client }
    }
}

pub struct Connection {
    client: Client,
    target: NodeId,
    member: Member,
}

impl<C: PbxConfig> RaftNetworkFactory<C> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        Connection { client: self.client.clone(), target, member: node.clone() }
    }
}

impl Connection {
    async fn rpc<C: PbxConfig, E: std::error::Error>(
        &self,
        rpc: Rpc<C>,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, Member, E>> {
        let entries = match &rpc {
            Rpc::Append(r) => r.entries.len() as u64,
            _ => 0,
        };
        self.client.call(self.target, &self.member, &rpc, option.hard_ttl()).await.map_err(|e| match e {
            CallError::Unreachable(why) => RPCError::Unreachable(Unreachable::new(&NetError(why))),
            // openraft sends fewer entries at once and tries again; one entry always fits, as
            // `Replica::write` bounds every payload.
            CallError::TooLarge(_) if entries > 1 => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((entries / 2).max(1)))
            }
            CallError::TooLarge(bytes) => RPCError::Network(NetworkError::new(&NetError(format!(
                "a message of {bytes} bytes, more than the {MESSAGE_BYTES_MAX} any member reads"
            )))),
            CallError::Failed(why) => RPCError::Network(NetworkError::new(&NetError(why))),
        })
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, Member, E> {
        RPCError::Network(NetworkError::new(&NetError(format!("{} answered another call", self.member))))
    }
}

impl<C: PbxConfig> RaftNetwork<C> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.rpc(Rpc::Append(rpc), &option).await? {
            Reply::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.rpc(Rpc::Snapshot(rpc), &option).await? {
            Reply::Snapshot(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.rpc::<C, _>(Rpc::Vote(rpc), &option).await? {
            Reply::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }
}

/// The leader a node's metrics name, with its member record.
pub fn leader(metrics: &RaftMetrics<NodeId, Member>) -> Option<(NodeId, Member)> {
    let id = metrics.current_leader?;
    let member = metrics.membership_config.membership().get_node(&id)?.clone();
    Some((id, member))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::TypeConfig;
    use openraft::{CommittedLeaderId, LogId, SnapshotMeta, StoredMembership};

    const A: NodeId = 1;
    const B: NodeId = 2;

    fn snapshot(leader: NodeId, offset: u64, len: usize) -> Rpc<TypeConfig> {
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, leader), 10)),
            last_membership: StoredMembership::default(),
            snapshot_id: "3-10-9".into(),
        };
        Rpc::Snapshot(InstallSnapshotRequest {
            vote: Vote::new_committed(3, leader),
            meta,
            offset,
            data: vec![7; len],
            done: false,
        })
    }

    fn refused(peer: NodeId, rpc: &Rpc<TypeConfig>) -> (&'static str, &'static str) {
        let r = check(peer, rpc).unwrap_err();
        (r.rpc, r.reason)
    }

    /// A member speaks only for itself: a vote, an append or a snapshot naming another node,
    /// or a write claiming another origin, is refused; its own are let through.
    #[test]
    fn rpcs_must_come_from_the_node_they_name() {
        let vote = |candidate| Rpc::<TypeConfig>::Vote(VoteRequest::new(Vote::new(4, candidate), None));
        assert_eq!(check(A, &vote(A)), Ok(()));
        assert_eq!(refused(B, &vote(A)), ("vote", "impostor"));
        let append = |leader| {
            Rpc::<TypeConfig>::Append(AppendEntriesRequest {
                vote: Vote::new_committed(4, leader),
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            })
        };
        assert_eq!(check(A, &append(A)), Ok(()));
        assert_eq!(refused(B, &append(A)), ("append", "impostor"));
        assert_eq!(refused(B, &snapshot(A, 0, 1)), ("snapshot", "impostor"));
        let write = |origin| Rpc::<TypeConfig>::Write(Request { origin, payload: vec![1] });
        assert_eq!(check(B, &write(B)), Ok(()));
        let r = check(B, &write(A)).unwrap_err();
        assert_eq!((r.rpc, r.reason), ("write", "origin"));
        // The forwarder learns why; a refused Raft RPC gets no reply at all.
        assert!(matches!(r.reply(), Some(Reply::Write(Err(WriteRefused::Failed(why)))) if why.contains("origin")));
        assert!(check(B, &vote(A)).unwrap_err().reply().is_none());
    }

    /// Snapshot chunks: an oversized chunk, an offset past the bound (2⁴⁰, u64::MAX) or a
    /// chunk ending past it is refused; a full-size chunk right up to the bound is not.
    #[test]
    fn snapshot_chunks_stay_within_bounds() {
        let chunk = SNAPSHOT_CHUNK_BYTES as usize;
        assert_eq!(check(A, &snapshot(A, 0, chunk)), Ok(()));
        assert_eq!(check(A, &snapshot(A, SNAPSHOT_BYTES_MAX - 5, 5)), Ok(()));
        assert_eq!(refused(A, &snapshot(A, 0, chunk + 1)), ("snapshot", "chunk_too_large"));
        assert_eq!(refused(A, &snapshot(A, 1 << 40, 1)), ("snapshot", "too_large"));
        assert_eq!(refused(A, &snapshot(A, u64::MAX, 1)), ("snapshot", "too_large"));
        assert_eq!(refused(A, &snapshot(A, SNAPSHOT_BYTES_MAX - 5, 6)), ("snapshot", "too_large"));
    }
}

//! Raft RPCs over the node links: one bidirectional QUIC stream per call, the request written
//! and finished, the reply read to its end. Both are postcard.
//!
//! A node keeps one link per peer, opened on first use and dropped on any failure (the next
//! call opens a new one; openraft backs off between attempts to an unreachable peer). It
//! accepts links only from nodes of its membership: a certificate from the cluster CA for a
//! name that is not a member is refused and logged like any other refusal.

use super::{Member, NodeId, PbxConfig, Request};
use crate::identity::NodeName;
use crate::link;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{Raft, RaftMetrics};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest message either side reads: a snapshot chunk (openraft sends 3 MiB) with room to spare.
const MESSAGE_MAX: usize = 16 << 20;
/// Longest a link may take to open before the call counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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

#[derive(Serialize, Deserialize)]
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

/// Hands one RPC to the local Raft.
pub async fn dispatch<C: PbxConfig>(raft: &Raft<C>, rpc: Rpc<C>) -> Reply {
    match rpc {
        Rpc::Append(r) => Reply::Append(raft.append_entries(r).await),
        Rpc::Vote(r) => Reply::Vote(raft.vote(r).await),
        Rpc::Snapshot(r) => Reply::Snapshot(raft.install_snapshot(r).await),
        Rpc::Write(r) => Reply::Write(write(raft, r).await),
    }
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
            while let Ok((mut send, mut recv)) = link.connection.accept_bi().await {
                let raft = raft.clone();
                let peer = link.peer.clone();
                tokio::spawn(async move {
                    let Ok(bytes) = recv.read_to_end(MESSAGE_MAX).await else { return };
                    let reply = match postcard::from_bytes::<Rpc<C>>(&bytes) {
                        Ok(rpc) => dispatch(&raft, rpc).await,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "undecodable Raft RPC");
                            return;
                        }
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
        let connection = self.connection(target, member).await?;
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            let bytes = postcard::to_allocvec(rpc).map_err(|e| e.to_string())?;
            send.write_all(&bytes).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            let bytes = recv.read_to_end(MESSAGE_MAX).await.map_err(|e| e.to_string())?;
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
        self.client.call(self.target, &self.member, &rpc, option.hard_ttl()).await.map_err(|e| match e {
            CallError::Unreachable(why) => RPCError::Unreachable(Unreachable::new(&NetError(why))),
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

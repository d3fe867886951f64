//! The network between the simulated nodes: each RPC is encoded as the product's links encode
//! it (postcard [`Rpc`]), waits a seeded delay, and is handed to the target's Raft through the
//! product's [`net::dispatch`] (which checks it against the sender as the links do); the reply comes back the same way. A call to a node that is
//! down or cut off fails as unreachable; a request or reply caught by a partition (or lost at
//! random) fails as a network error, as a QUIC stream would.

use super::runtime::SimConfig;
use super::{Shared, lock};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use pbx_cluster::raft::net::{self, NetError, Reply, Rpc};
use pbx_cluster::raft::{Member, NodeId};
use std::fmt;
use std::time::Duration;

/// Why a call failed.
#[derive(Debug)]
pub enum Fail {
    /// Never left: the target is down or cut off from the caller.
    Unreachable(String),
    /// Left, but the request or its reply was lost, or the reply did not come in time.
    Lost(String),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Unreachable(why) => write!(f, "unreachable: {why}"),
            Fail::Lost(why) => write!(f, "lost: {why}"),
        }
    }
}

impl Fail {
    fn rpc_error<E: std::error::Error>(self) -> RPCError<NodeId, Member, E> {
        match self {
            Fail::Unreachable(why) => RPCError::Unreachable(Unreachable::new(&NetError(why))),
            Fail::Lost(why) => RPCError::Network(NetworkError::new(&NetError(why))),
        }
    }
}

/// One call from node `from` to node `to` over the simulated network, its reply within `ttl`.
pub async fn call(shared: &Shared, from: usize, to: usize, rpc: &Rpc<SimConfig>, ttl: Duration) -> Result<Reply, Fail> {
    let request = postcard::to_allocvec(rpc).map_err(|e| Fail::Lost(format!("unencodable request: {e}")))?;
    let (there, peer) = {
        let mut world = lock(shared);
        (world.depart(from, to)?, (world.nodes[from].id, world.names[from].clone()))
    };
    let exchange = async {
        tokio::time::sleep(there).await;
        let (target, back) = lock(shared).arrive(from, to)?;
        let rpc = postcard::from_bytes::<Rpc<SimConfig>>(&request)
            .map_err(|e| Fail::Lost(format!("undecodable request: {e}")))?;
        // As the links do: checked against the sender, a refused RPC gets no reply.
        let reply = match net::dispatch(&target, peer.0, &peer.1, rpc).await {
            Ok(reply) => reply,
            Err(refused) => refused.reply().ok_or_else(|| Fail::Lost(refused.to_string()))?,
        };
        let reply = postcard::to_allocvec(&reply).map_err(|e| Fail::Lost(format!("unencodable reply: {e}")))?;
        tokio::time::sleep(back).await;
        lock(shared).arrive_back(from, to)?;
        postcard::from_bytes::<Reply>(&reply).map_err(|e| Fail::Lost(format!("undecodable reply: {e}")))
    };
    match tokio::time::timeout(ttl, exchange).await {
        Ok(result) => result,
        Err(_) => Err(Fail::Lost(format!("no reply within {ttl:?}"))),
    }
}

/// openraft's view of the network from one node.
pub struct SimNetwork {
    pub from: usize,
    pub shared: Shared,
}

impl RaftNetworkFactory<SimConfig> for SimNetwork {
    type Network = SimLink;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> SimLink {
        let to = lock(&self.shared).index(target);
        SimLink { from: self.from, to, target, shared: self.shared.clone() }
    }
}

pub struct SimLink {
    from: usize,
    /// `None` for an id that is no member's: every call to it is unreachable.
    to: Option<usize>,
    target: NodeId,
    shared: Shared,
}

impl SimLink {
    async fn rpc<E: std::error::Error>(
        &self,
        rpc: Rpc<SimConfig>,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, Member, E>> {
        let to = self.to.ok_or_else(|| Fail::Unreachable(format!("no member has id {}", self.target)).rpc_error())?;
        call(&self.shared, self.from, to, &rpc, option.hard_ttl()).await.map_err(Fail::rpc_error)
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, Member, E> {
        Fail::Lost(format!("node {} answered another call", self.target)).rpc_error()
    }
}

impl RaftNetwork<SimConfig> for SimLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.rpc(Rpc::Append(rpc), &option).await? {
            Reply::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<SimConfig>,
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
        match self.rpc(Rpc::Vote(rpc), &option).await? {
            Reply::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }
}

//! Replicated state: openraft, its log and state machine in redb, its RPCs over the QUIC links.
//!
//! What is replicated is opaque here: a [`Request`] carries the bytes of one application
//! command batch (the node's `Command`, postcard), and an [`Applier`] applies committed batches
//! in log order to the node's own storage. So this crate knows Raft, redb and QUIC, and nothing
//! of SIP; the node knows its commands, and nothing of Raft.
//!
//! - [`store`]: the Raft log, vote and state-machine metadata in one redb database
//!   (`DATA_DIR/raft.redb` on a node, an in-memory backend in the simulator).
//! - [`net`]: the RPCs (append entries, vote, snapshot, and a forwarded client write) over
//!   bidirectional streams of the mutual-TLS links of [`crate::link`], each checked against
//!   the peer the link authenticated.
//! - [`snapshot`]: the bounded buffer a snapshot is streamed into.
//! - [`Replica`]: one node's Raft, with `write` that forwards to the leader when this node is
//!   not it, and the status the API shows.
//!
//! Node ids are derived from node names ([`node_id`]): the certificate names the node, the id
//! follows, and no id needs configuring.

use openraft::{RaftTypeConfig, StoredMembership};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub mod net;
mod replica;
pub mod snapshot;
pub mod store;

pub use replica::{MemberStatus, Replica, ReplicaConfig, Status, WRITE_PAYLOAD_BYTES_MAX, WriteError};
pub use snapshot::{SNAPSHOT_BYTES_MAX, SnapshotBuffer};

pub type NodeId = u64;

/// A member as the Raft membership records it: its name (as in its certificate), where its
/// Raft link listens, and whether it is a witness (votes, serves no SIP or media).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub address: String,
    pub witness: bool,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.address)
    }
}

/// One batch of application commands, encoded by the application, plus the id of the node
/// that proposed it (so that node's applier can tell its own changes from others').
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub origin: NodeId,
    pub payload: Vec<u8>,
}

/// What applying a request answers: nothing but "applied".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response;

openraft::declare_raft_types!(
    /// The product's Raft: tokio runtime.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = SnapshotBuffer,
);

/// Any Raft type configuration with pbx's data types; the simulator's differs only in its
/// runtime (seeded randomness).
pub trait PbxConfig:
    RaftTypeConfig<
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<Self>,
        SnapshotData = SnapshotBuffer,
        Responder = openraft::impls::OneshotResponder<Self>,
    >
{
}

impl<C> PbxConfig for C where
    C: RaftTypeConfig<
            D = Request,
            R = Response,
            NodeId = NodeId,
            Node = Member,
            Entry = openraft::Entry<C>,
            SnapshotData = SnapshotBuffer,
            Responder = openraft::impls::OneshotResponder<C>,
        >
{
}

/// Applies committed commands to the application's state, in log order. Called again for
/// entries it may already have applied when a node restarts between applying and recording
/// that it did, so applying must be idempotent (puts and removes by key are).
pub trait Applier: Send + Sync + 'static {
    /// `requests` are consecutive committed entries. An `Err` is a storage failure: the node's
    /// Raft stops rather than skip a committed change.
    fn apply(&self, requests: &[&Request]) -> Result<(), ApplyError>;
    /// The whole replicated state, for a follower too far behind to catch up from the log.
    fn snapshot(&self) -> Result<Vec<u8>, ApplyError>;
    /// Replaces the whole replicated state with a snapshot's.
    fn install(&self, snapshot: &[u8]) -> Result<(), ApplyError>;
}

/// Why an [`Applier`] could not apply, snapshot or install. Either way the node's Raft stops
/// rather than skip a committed change; the kind says whether an upgrade (a newer node wrote
/// what this one cannot read) or the disk needs looking at.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An entry or snapshot this node's code cannot read: written by a newer version, or
    /// damaged.
    #[error("undecodable {what}: {reason}")]
    Undecodable { what: String, reason: String },
    /// The node's own storage failed.
    #[error("storage failed: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApplyError {
    pub fn undecodable(what: impl Into<String>, reason: impl std::fmt::Display) -> ApplyError {
        ApplyError::Undecodable { what: what.into(), reason: reason.to_string() }
    }

    pub fn storage(error: impl std::error::Error + Send + Sync + 'static) -> ApplyError {
        ApplyError::Storage(Box::new(error))
    }
}

/// A stable id for a node name: FNV-1a, 64 bits. [`check_ids`] refuses a member list where two
/// names collide (never seen, but checked rather than assumed).
pub fn node_id(name: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The membership of a cluster whose members are `members`, keyed by their ids.
pub fn membership(members: &[Member]) -> Result<BTreeMap<NodeId, Member>, String> {
    let mut map = BTreeMap::new();
    for m in members {
        if let Some(other) = map.insert(node_id(&m.name), m.clone()) {
            return Err(format!("members {} and {} have the same node id", other.name, m.name));
        }
    }
    Ok(map)
}

/// The membership a state machine starts with before any is applied.
pub(crate) fn empty_membership() -> StoredMembership<NodeId, Member> {
    StoredMembership::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        // FNV-1a test vector: the empty string is the offset basis.
        assert_eq!(node_id(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(node_id("appliance"), node_id("vm1"));
        assert_eq!(node_id("vm1"), node_id("vm1"));
        let m = |n: &str| Member { name: n.into(), address: "127.0.0.1:1".into(), witness: false };
        assert_eq!(membership(&[m("a"), m("b")]).map(|m| m.len()), Ok(2));
        assert!(membership(&[m("a"), m("a")]).unwrap_err().contains("same node id"));
    }
}

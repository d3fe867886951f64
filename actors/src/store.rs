//! The error of the store ports (registrar bindings and extensions, call records): one type, so
//! a caller can tell "the cluster has no quorum, try again later" from "the disk failed" and
//! answer each as its protocol says (SIP: 503 with Retry-After, or 500).

/// Why a store could not take a write. Nothing of it was stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The cluster could not commit the write: this node is on a minority side, or too many
    /// members are down, or an election did not end in time. Worth retrying after
    /// `retry_after_s` seconds.
    #[error("not committed: no quorum (retry after {retry_after_s} s)")]
    NoQuorum { retry_after_s: u32 },
    /// The local database refused the write (I/O, a full disk, a failed commit).
    #[error("storage failed: {0}")]
    Disk(String),
    /// Replication failed other than for want of a quorum (the Raft runtime stopped, a payload
    /// it refused).
    #[error("replication failed: {0}")]
    Replication(String),
    /// The data could not be encoded or decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The writer is gone (shutting down, or a restarted actor's fenced-off old incarnation).
    #[error("store stopped: {0}")]
    Stopped(String),
}

impl StoreError {
    /// How long a client should wait before trying again, when trying again can help.
    pub fn retry_after_s(&self) -> Option<u32> {
        match self {
            StoreError::NoQuorum { retry_after_s } => Some(*retry_after_s),
            _ => None,
        }
    }
}

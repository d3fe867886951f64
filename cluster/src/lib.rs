//! pbx-cluster: what links pbx nodes into one exchange.
//!
//! - [`identity`]: the cluster CA and node certificates `pbx cluster init` makes.
//! - [`link`]: QUIC links between nodes, authenticated both ways by those certificates.
//! - [`mesh`]: ractor_cluster over those links, so actors address actors on other nodes.
//! - [`raft`]: replicated durable state with openraft (a redb log, RPCs over the links); the
//!   node applies the committed commands to its own storage.
//! - [`redb_file`]: a redb database that can be rewritten into a fresh file, so deleted data
//!   leaves the disk file too (the Raft log's and the node's).

pub mod identity;
pub mod link;
pub mod mesh;
pub mod raft;
pub mod redb_file;

//! pbx-cluster: what links pbx nodes into one exchange.
//!
//! Built so far: [`identity`] (the cluster CA and node certificates `pbx cluster init` makes)
//! and [`link`] (QUIC links between nodes, authenticated both ways by those certificates).
//!
//! Still to come, as ARCHITECTURE.md lays out: ractor_cluster running over these links, so
//! actors address actors on other nodes; replicated durable state with openraft (a redb log and
//! state machine, over the same links), applying the `apply(Command)` commands an appliance
//! applies locally today; membership and failover of an appliance, VMs and a witness.

pub mod identity;
pub mod link;
pub mod raft;

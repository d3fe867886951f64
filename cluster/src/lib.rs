//! pbx-cluster: what links pbx nodes into one exchange.
//!
//! Built so far: [`identity`] (the cluster CA and node certificates `pbx cluster init` makes),
//! [`link`] (QUIC links between nodes, authenticated both ways by those certificates) and
//! [`mesh`] (ractor_cluster over those links, so actors address actors on other nodes).
//!
//! Still to come, as ARCHITECTURE.md lays out: replicated durable state with openraft (a redb log and
//! state machine, over the same links), applying the `apply(Command)` commands an appliance
//! applies locally today; membership and failover of an appliance, VMs and a witness.

pub mod identity;
pub mod link;
pub mod mesh;

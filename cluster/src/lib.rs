//! pbx-cluster: what links pbx nodes into one exchange.
//!
//! This crate will own, as ARCHITECTURE.md lays out:
//! - QUIC links between nodes (quinn + rustls with the ring provider) authenticated by mutual
//!   TLS against a cluster CA made by `pbx cluster init` (rcgen);
//! - ractor_cluster running over those QUIC streams, so actors address actors on other nodes;
//! - replicated durable state with openraft (a redb log and state machine, QUIC network),
//!   applying the same `apply(Command)` commands an appliance applies locally today;
//! - membership and failover of an appliance plus VM instances and a witness.
//!
//! It holds no code yet: an appliance is a cluster of one and needs none of it.

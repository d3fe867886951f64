//! pbx-node: the `pbx` binary's library half — CLI-independent wiring of real I/O into the
//! actors, one folder per subsystem (docs/ARCHITECTURE.md, "Crates and folders"):
//!
//! - [`appliance`]: the composer of `pbx appliance` / `pbx node` — builds storage, the cluster,
//!   the supervision tree, SIP sockets and the admin HTTP API, and registers every route.
//! - [`supervisor`]: the core actors under one supervisor, restarted from durable state.
//! - [`sip`]: SIP sockets (UDP, TCP) and the process's open-file limit.
//! - [`cluster`]: replication through Raft, the applier, the compactor; `pbx cluster status`.
//! - [`privacy`]: subject rights, audit, notice over HTTP; `pbx privacy`.
//! - [`conference`], [`push`]: where conference participations and push records go.
//! - [`licence`]: the client of the vendor's licence service.
//! - [`http`]: the admin API's state and routes (its kernel is `pbx_host::http`).
//! - [`storage`]: the node's redb file; [`secrets`]: the admin token and the privacy key;
//!   [`config`]: the config file and flags; [`api_client`]: the CLI's client of the admin API.
//!
//! No import circles between these (node/tests/tidy.rs). The licence service of
//! `pbx licence-server` is its own crate, pbx-licence-service, composed into the same binary.

pub mod api_client;
pub mod appliance;
pub mod cluster;
pub mod conference;
pub mod config;
pub mod http;
pub mod licence;
pub mod privacy;
pub mod proxy_link;
pub mod push;
pub mod push_dispatch;
pub mod secrets;
pub mod sip;
pub mod storage;
pub mod supervisor;

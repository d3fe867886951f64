//! pbx-node: the `pbx` binary's library half — CLI-independent wiring of real I/O into the
//! actors: configuration, redb storage, SIP sockets, the admin HTTP API, the supervision
//! tree of `pbx appliance` (the licence service of `pbx licence-server` is
//! its own crate, pbx-licence-service, composed into the same binary).

pub mod api_client;
pub mod appliance;
pub mod cluster;
pub mod cluster_cli;
pub mod config;
pub mod core_actors;
pub mod http;
pub mod licence;
pub mod limits;
pub mod privacy;
pub mod privacy_cli;
pub mod secrets;
pub mod storage;
pub mod supervisor;
pub mod transport;

//! pbx-node: the `pbx` binary's library half — CLI-independent wiring of real I/O into the
//! actors: configuration, redb storage, SIP sockets, the admin HTTP API, and the supervision
//! tree of `pbx appliance`.

pub mod appliance;
pub mod clock;
pub mod config;
pub mod http;
pub mod licence;
pub mod storage;
pub mod transport;

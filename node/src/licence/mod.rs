//! The node's part of licensing: the client of the vendor's licence service
//! ([`client`]). The machines (watchdog, voucher sync, desk) are `pbx_actors::licence`; the
//! service itself, `pbx licence-server`, is the pbx-licence-service crate.

pub mod client;

pub use client::*;

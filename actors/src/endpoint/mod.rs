//! The SIP endpoint: where every message that reaches pbx enters, and every answer leaves.
//!
//! It parses what the transports hand it (`sip::message`), runs the RFC 3261 §17 transaction
//! layer (`sip::transaction`) so retransmissions are absorbed and answered from memory, and
//! acts as the transaction user that dispatches new requests by method: REGISTER to the
//! registrar, a new INVITE to the registrar (caller authenticated with 407, callee looked up)
//! and then to the calls actor, requests and responses of a call to the leg whose tag or branch
//! they carry, OPTIONS answered here (phones use it as a keep-alive), other methods 405 with
//! `Allow`. A malformed request gets 400 with a reason phrase saying what is wrong.
//!
//! A node runs one endpoint per core ([`shard`]): the transports hand each message to the shard
//! its Call-ID names, and everything of one call (both legs, their transactions) lives on the
//! shard that took the caller's INVITE.

pub mod actor;
pub mod glue;
pub mod limiter;
pub mod machine;
pub mod overload;
pub mod shard;

pub use actor::{EndpointActor, EndpointArgs, EndpointMsg, Wire};
pub use limiter::SourceLimit;
pub use machine::{Endpoint, EndpointEvent, EndpointInput, EndpointOutput};
pub use shard::Shard;

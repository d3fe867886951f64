//! SIP: messages, transports' framing rules and transactions (RFC 3261).
//!
//! - [`message`]: the facade over ezk-sip-types — parse, check, print, Via stamping.
//! - [`headers`]: the header store messages keep their header lines in.
//! - [`transaction`]: RFC 3261 §17 client and server transactions as a sans-IO machine.
//! - [`replaces`]: RFC 3891's `Replaces` value.
//!
//! Sockets live in the node; everything here is bytes in, bytes out.

pub mod headers;
pub mod message;
pub mod replaces;
pub mod transaction;

pub use message::{Message, Request, Response, Transport};

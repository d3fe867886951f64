//! SIP transactions (RFC 3261 §17, amended by RFC 6026) as a sans-IO machine.
//!
//! A transaction is one request and the responses to it, made reliable over UDP by
//! retransmission timers and kept alive long enough to absorb retransmissions. This module
//! holds the four state machines of RFC 3261 §17 — INVITE client (§17.1.1), non-INVITE client
//! (§17.1.2), INVITE server (§17.2.1, with RFC 6026's "Accepted" state) and non-INVITE server
//! (§17.2.2) — behind one table, [`Transactions`], keyed by the matching rules of §17.1.3 and
//! §17.2.3 (with the RFC 2543 fallback for branches without the magic cookie).
//!
//! It is pure logic: bytes and time come in, bytes and events go out; it never reads a clock,
//! an RNG or a socket. See [`Transactions`] for the calling contract.
//!
//! What it deliberately does not do: dialogs, the ACK and retransmissions of a 2xx to INVITE
//! (those belong to the TU, RFC 3261 §13.2.2.4 and §13.3.1.4), proxy behaviour (Timer C,
//! forking), transport errors (the shell learns of those, not this machine) and DNS (RFC 3263):
//! the TU hands in a resolved destination.

mod machine;

pub use machine::{
    BRANCH_COOKIE, ClientKey, OVERLOAD_RETRY_AFTER_S, ServerKey, TRANSACTIONS_MAX, TRYING_DELAY, TimerConfig,
    TransactionInput, TransactionKey, TransactionOutput, Transactions,
};

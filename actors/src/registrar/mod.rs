//! The registrar: REGISTER with digest authentication and bindings that expire (RFC 3261 §10,
//! RFC 7616, RFC 8760), the extension directory, and blocking of password guessing that
//! spoofed traffic cannot turn against users.
//!
//! - [`digest`]: HA1, request digests, challenges, credentials, self-verifying nonces bound to
//!   the source they were sent to, the digest `uri` rule.
//! - [`blocking`]: failures per (source, user) and per user, trusted addresses, bounded tables.
//! - [`machine`]: [`Registrar`], the sans-IO machine: every decision, no I/O, no clock.
//! - [`forwarding`]: call forwarding per extension (always, busy, no answer), its loops cut,
//!   and the feature codes that set it (issue 18).
//! - [`groups`]: ring groups (ring all, hunt), from the config file.
//! - [`nat`]: whether a registering phone is behind NAT (Via, Contact, transport against the
//!   source), kept on its binding for the calls to it (issue 15).
//! - [`stored`]: the earlier shapes of bindings and commands that old files and peers hold.
//! - [`glue`]: what of the machine's outputs leaves at once and what waits for a write (the
//!   writer bypass), shared by the shell and the simulator.
//! - [`actor`]: [`RegistrarActor`], the ractor shell: clock, storage and response ports.
//!
//! Privacy (seed: "password never stored"): an extension keeps `H(user:realm:password)` for
//! MD5 and SHA-256, never the password; neither the password nor the HA1s appear in `Debug`
//! output, logs, events or API answers. Bindings expire (RFC 3261 §10.2.1); the retention of
//! auth-failure logs (14 days, then anonymised) is the retention reaper's job, not this one's.
//!
//! Anti-enumeration: a user that does not exist and a wrong password get the same 401 (same
//! headers in the same order; only nonce and opaque differ), after the same digest work.

pub mod actor;
pub mod blocking;
pub mod digest;
pub mod forwarding;
pub mod glue;
pub mod groups;
pub mod machine;
pub mod nat;
pub mod stored;

pub use actor::{
    ChangeError, Clock, ExtensionView, RefreshPushes, RefreshTo, RegistrarActor, RegistrarArgs, RegistrarMsg,
    RegistrarStats, RegistrarStore, ResponseSink,
};
pub use blocking::{AUTH_FAILURE_PAIRS_MAX, AUTH_FAILURE_PREFIXES_MAX, AUTH_FAILURES_LIMIT_MAX, TRUSTED_SOURCES_MAX};
pub use digest::{Algorithm, ha1};
pub use forwarding::Forwarding;
pub use machine::{
    BINDINGS_PER_AOR_MAX, Binding, EXTENSIONS_MAX, Extension, Forward, Forwards, NONCES_TRACKED_MAX, Registrar,
    RegistrarCommand, RegistrarConfig, RegistrarEvent, RegistrarInput, RegistrarOutput, Route,
};
pub use stored::{BindingV1, RegistrarCommandV1};

#[cfg(test)]
mod tests;

//! pbx-host: what a pbx process needs from the machine it runs on, shared by the node
//! (`pbx-node`) and the licence service (`pbx-licence-service`) so that neither depends on the
//! other for it.
//!
//! - [`secret_file`]: secret files in a data directory (admin token, keys), never through a link.
//! - [`clock`]: the wall clock as Unix-epoch microseconds that never go backwards.
//! - [`http`]: the HTTP kernel — JSON errors, bearer-token checks, RFC 3339 times — which knows
//!   no route and no subsystem.
//! - [`store`]: the error of a redb file that could not be opened, read or decoded, and the
//!   decoding of a stored record from its version enum.
//! - [`stream`]: SIP over TCP and TLS connections served within bounds (connection caps per
//!   source, handshake and message deadlines, framing), shared by the node's SIP ports and the
//!   softphone proxy's edge.
//! - [`wait_for_shutdown_signal`]: SIGTERM or SIGINT.
//!
//! Not here: what a SIP message means, storage schemas or a subsystem's routes.

pub mod clock;
pub mod http;
pub mod secret_file;
pub mod store;
pub mod stream;
pub mod tls;

/// Returns at the first SIGTERM or SIGINT.
pub async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

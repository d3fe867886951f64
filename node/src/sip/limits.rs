//! The process's open-file limit (`RLIMIT_NOFILE`): raised at start from its soft value to
//! the hard one, as nginx's `worker_rlimit_nofile` and Kamailio's `open_files_limit` do.
//!
//! Every SIP TCP connection, RTP port, redb file and HTTP client is a descriptor. With the
//! common default soft limit of 1,024, about 1,000 idle TCP connections left no descriptor to
//! bind a call's RTP ports. The soft limit may be raised to the hard one without privilege;
//! the hard limit is the operator's (systemd's `LimitNOFILE=`, `ulimit -Hn`), and the TCP
//! connection cap follows what was obtained (the transport's `tcp_connections_cap`, which the
//! caller passes in: this module asks nothing of the transport).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The soft limit asked for when the hard limit is "unlimited" (Linux's default
/// `fs.nr_open`, the most a process may have).
pub const OPEN_FILES_UNLIMITED_TARGET: u64 = 1 << 20;
/// Descriptors kept for everything but SIP TCP and RTP: redb files, the HTTP API, the cluster's
/// QUIC sockets, log files, the runtime's own.
pub const OPEN_FILES_RESERVE: u64 = 256;

/// The open-file limit before and after [`raise_open_file_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process was started with.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
}

/// The soft open-file limit in force (`u64::MAX` when unlimited).
pub fn open_file_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Raises the soft open-file limit to the hard one (to [`OPEN_FILES_UNLIMITED_TARGET`] when
/// that is unlimited). Never lowers it. The error is the system's refusal; the limit is then
/// what it was.
pub fn raise_open_file_limit() -> std::io::Result<OpenFiles> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let before = current.unwrap_or(u64::MAX);
    let target = maximum.unwrap_or(OPEN_FILES_UNLIMITED_TARGET);
    if target > before {
        setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum })?;
    }
    Ok(OpenFiles { before, soft: open_file_limit(), hard: maximum })
}

/// RTP port pairs that may be open at once within the soft open-file limit `soft`: what the
/// SIP TCP connection cap and [`OPEN_FILES_RESERVE`] leave, two descriptors a pair.
pub fn rtp_pairs_within(soft: u64, tcp_connections_cap: usize) -> usize {
    let left = soft.saturating_sub(tcp_connections_cap as u64).saturating_sub(OPEN_FILES_RESERVE);
    usize::try_from(left / 2).unwrap_or(usize::MAX)
}

/// Raises the limit and says so in the log: before, now, hard, and a warning when the limit
/// cannot cover `rtp_ports` RTP ports, the SIP TCP connections and the reserve at once.
pub fn raise_and_log(rtp_ports: u64, tcp_connections_cap: fn(u64) -> usize) {
    let hard = |h: Option<u64>| h.map_or_else(|| "unlimited".to_string(), |h| h.to_string());
    match raise_open_file_limit() {
        Ok(limits) => {
            let what =
                if limits.soft > limits.before { "soft raised to the hard limit" } else { "soft already at its most" };
            tracing::info!(
                before = limits.before,
                soft = limits.soft,
                hard = %hard(limits.hard),
                "open-file limit (RLIMIT_NOFILE): {what}"
            );
            let tcp = tcp_connections_cap(limits.soft) as u64;
            let needed = rtp_ports.saturating_add(tcp).saturating_add(OPEN_FILES_RESERVE);
            if limits.soft < needed {
                tracing::warn!(
                    soft = limits.soft,
                    needed,
                    rtp_ports,
                    tcp_connections = tcp,
                    rtp_pairs_at_once = rtp_pairs_within(limits.soft, tcp as usize),
                    "open-file limit below what RTP ports and SIP TCP may use at once: calls are limited to the RTP pairs it allows; raise the hard limit (systemd LimitNOFILE=)"
                );
            }
        }
        Err(error) => {
            let now = getrlimit(Resource::Nofile);
            tracing::warn!(
                %error,
                soft = now.current.unwrap_or(u64::MAX),
                hard = %hard(now.maximum),
                "open-file limit (RLIMIT_NOFILE) could not be raised"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raising leaves the soft limit at the hard one (or the unlimited target), never below
    /// where it was; a second raise changes nothing.
    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let limits = raise_open_file_limit().unwrap();
        assert!(limits.soft >= limits.before);
        assert_eq!(limits.soft, limits.hard.unwrap_or(OPEN_FILES_UNLIMITED_TARGET));
        assert_eq!(open_file_limit(), limits.soft);
        let again = raise_open_file_limit().unwrap();
        assert_eq!((again.before, again.soft), (limits.soft, limits.soft));
    }

    /// What SIP TCP and the reserve leave, in pairs; nothing when they take it all.
    #[test]
    fn rtp_pairs_are_what_tcp_and_the_reserve_leave() {
        assert_eq!(rtp_pairs_within(20_000, 4_096), (20_000 - 4_096 - OPEN_FILES_RESERVE as usize) / 2);
        assert_eq!(rtp_pairs_within(1_024, 4_096), 0);
        assert_eq!(rtp_pairs_within(u64::MAX, 0), usize::try_from((u64::MAX - OPEN_FILES_RESERVE) / 2).unwrap());
    }
}

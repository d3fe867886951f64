//! The softphone proxy's retention invariants ([`crate::proxy`]), counted like the others.
//!
//! On every write of the proxy's ledger:
//! - **No destination is recorded while debug mode is off**: a debug record's time lies in a
//!   window the admin opened and that had not ended (its end, or an earlier switch-off).
//! - **Records within retention are untouched**: a session is deleted no sooner than 365 days
//!   after the last use the checker saw of it, a debug record no sooner than 28 days after it
//!   was made (the run holds far fewer than the ledger's bounds, so nothing is evicted).
//!
//! At each check point, on the proxy's disk:
//! - **No record outlives its retention**: the oldest stored session is gone one reaper
//!   interval after its last use plus 365 days plus the minute a stored last use may lag the
//!   real one ([`LAST_USE_WRITE_AFTER`]); the oldest debug record one interval after its time
//!   plus 28 days; a debug mode one interval after its end.

use super::Checker;
use crate::proxy::ProxyDisk;
use pbx_actors::Timestamp;
use pbx_actors::proxy::{LAST_USE_WRITE_AFTER, LedgerConfig, Persist};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug)]
pub(super) struct ProxyModel {
    session_retention: Duration,
    debug_retention: Duration,
    interval: Duration,
    /// Debug mode as switched: [from, until), the last one possibly still open.
    windows: Vec<(Timestamp, Timestamp)>,
    /// (phone, its external address) → the last use told.
    uses: BTreeMap<(usize, SocketAddr), Timestamp>,
}

impl ProxyModel {
    pub(super) fn new(config: &LedgerConfig) -> ProxyModel {
        ProxyModel {
            session_retention: config.session_retention(),
            debug_retention: config.debug_retention(),
            interval: config.reaper_interval,
            windows: Vec::new(),
            uses: BTreeMap::new(),
        }
    }
}

impl Checker {
    /// The proxy's ledger, with its periods, is watched.
    pub fn with_proxy(mut self, config: &LedgerConfig) -> Checker {
        self.proxy = Some(ProxyModel::new(config));
        self
    }

    /// The admin switched debug mode at `now`: on until `until`, or off.
    pub fn proxy_debug_mode(&mut self, now: Timestamp, until: Option<Timestamp>) {
        let Some(m) = self.proxy.as_mut() else { return };
        if let Some(open) = m.windows.last_mut().filter(|(_, end)| *end > now) {
            open.1 = now;
        }
        if let Some(until) = until {
            m.windows.push((now, until));
        }
    }

    /// A remote phone's session (`extension` from `softphone`) was used at `now`.
    pub fn proxy_used(&mut self, now: Timestamp, extension: &str, softphone: SocketAddr) {
        let Some(&phone) = self.by_extension.get(extension) else { return };
        if let Some(m) = self.proxy.as_mut() {
            m.uses.insert((phone, softphone), now);
        }
    }

    /// The ledger wrote `p` at `now`; `disk` is what it held before.
    pub fn proxy_persisted(&mut self, now: Timestamp, p: &Persist, disk: &ProxyDisk) {
        let Some(m) = self.proxy.as_mut() else { return };
        let origin = self.origin;
        let when = move |t: Timestamp| crate::sim::format_elapsed(t - origin);
        let (invariant, holds, detail): (&'static str, bool, Box<dyn FnOnce() -> String>) = match p {
            Persist::PutDebug { record, .. } => {
                let at = record.at;
                let on = m.windows.iter().any(|(from, until)| *from <= at && at < *until);
                let detail = move || format!("a destination was recorded at {} with debug mode off", when(at));
                ("no destination is recorded while debug mode is off", on, Box::new(detail))
            }
            Persist::DeleteSession(key) => {
                let phone = self.by_extension.get(&key.user).copied();
                let last = phone.and_then(|p| m.uses.remove(&(p, key.softphone)));
                let kept = last.is_none_or(|last| last + m.session_retention <= now);
                let detail = move || {
                    let last = last.map_or("?".into(), when);
                    format!("a proxy session last used at {last} was deleted at {}", when(now))
                };
                ("records within retention are untouched", kept, Box::new(detail))
            }
            Persist::DeleteDebug { id } => {
                let at = disk.debug.get(id).copied();
                let kept = at.is_none_or(|at| at + m.debug_retention <= now);
                let detail = move || {
                    format!("a proxy debug record of {} was deleted at {}", at.map_or("?".into(), when), when(now))
                };
                ("records within retention are untouched", kept, Box::new(detail))
            }
            Persist::PutSession(_) | Persist::PutDebugMode { .. } | Persist::DeleteDebugMode { .. } => return,
        };
        self.check(now, invariant, holds, detail);
    }

    /// The ledger dropped records to stay within its bounds: never in a run this size.
    pub fn proxy_evicted(&mut self, now: Timestamp, records: u64) {
        self.check(now, "the proxy's ledger stays within its bounds", records == 0, || {
            format!("{records} records were dropped to make room")
        });
    }

    /// The proxy's disk against its retention, at `now` (the proxy's clock is virtual time).
    pub fn check_proxy(&mut self, now: Timestamp, disk: &ProxyDisk) {
        let Some(m) = self.proxy.as_ref() else { return };
        let (interval, origin) = (m.interval, self.origin);
        let when = move |t: Timestamp| crate::sim::format_elapsed(t - origin);
        let oldest = [
            (
                "proxy session",
                disk.sessions_by_last_use.first().map(|(t, _)| *t + m.session_retention + LAST_USE_WRITE_AFTER),
            ),
            ("proxy debug record", disk.debug_by_at.first().map(|(t, _)| *t + m.debug_retention)),
            ("proxy debug mode", disk.modes.values().min().copied()),
        ];
        for (what, due) in oldest {
            let Some(due) = due else { continue };
            self.check(now, "no record outlives its retention", now <= due + interval, || {
                format!("a {what} due at {} is still stored at {}", when(due), when(now))
            });
        }
    }
}

//! The proxy's ledger: its session and debug records in memory, their retention and bounds,
//! mirrored to storage through [`Persist`] outputs. Sans-IO: no clock, no I/O.
//!
//! Calling contract: feed inputs with [`Ledger::handle`], then drain [`Ledger::poll_output`]
//! and perform every [`Persist`] in one storage transaction; call `handle(now, Tick)` when
//! [`Ledger::poll_timeout`] says. `now` must not go backwards (an earlier one counts as the
//! latest seen). Memory is the source of truth while running; storage is read once at start
//! ([`LedgerState`]).
//!
//! Retention (seed, "Auerproxy Server"): a session is due [`super::SESSION_RETENTION_DAYS`]
//! after its last use, a debug record [`super::DEBUG_RETENTION_DAYS`] after it was made, a
//! PBX's debug mode at its end. A `Tick` deletes everything due at `now`; `poll_timeout` is
//! the next due time, but no sooner than one reaper interval after the last run, so a record
//! is gone at most one interval after it fell due (at once, after a start: the first run is
//! due whenever anything is).
//!
//! Destinations are recorded only while the PBX's debug mode is on at `now`, whether or not
//! the reaper has run since it ended.

use super::{
    DEBUG_MODE_DAYS, DEBUG_MODE_DAYS_MAX, DEBUG_MODES_MAX, DEBUG_RECORDS_MAX, DEBUG_RETENTION_DAYS,
    DESTINATION_BYTES_MAX, DebugRecord, LAST_USE_WRITE_AFTER, LedgerCounts, LedgerExport, PBX_SERIAL_BYTES_MAX,
    PUSH_TOKEN_BYTES_MAX, REAPER_INTERVAL, SESSION_RETENTION_DAYS, SESSIONS_MAX, SessionKey, SessionRecord,
    USER_BYTES_MAX,
};
use crate::Timestamp;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// Periods in days (the proxy's flags) and bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    pub session_retention_days: u32,
    pub debug_retention_days: u32,
    /// Debug mode's length when the admin gives none.
    pub debug_mode_days: u32,
    pub sessions_max: usize,
    pub debug_records_max: usize,
    pub debug_modes_max: usize,
    pub reaper_interval: Duration,
}

impl Default for LedgerConfig {
    fn default() -> LedgerConfig {
        LedgerConfig {
            session_retention_days: SESSION_RETENTION_DAYS,
            debug_retention_days: DEBUG_RETENTION_DAYS,
            debug_mode_days: DEBUG_MODE_DAYS,
            sessions_max: SESSIONS_MAX,
            debug_records_max: DEBUG_RECORDS_MAX,
            debug_modes_max: DEBUG_MODES_MAX,
            reaper_interval: REAPER_INTERVAL,
        }
    }
}

fn days(d: u32) -> Duration {
    Duration::from_secs(u64::from(d) * 86_400)
}

impl LedgerConfig {
    pub fn session_retention(&self) -> Duration {
        days(self.session_retention_days)
    }

    pub fn debug_retention(&self) -> Duration {
        days(self.debug_retention_days)
    }
}

/// What storage held at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerState {
    pub sessions: Vec<SessionRecord>,
    /// Each with its storage id.
    pub debug_records: Vec<(u64, DebugRecord)>,
    /// PBX serial → the end of its debug mode.
    pub debug_modes: Vec<(String, Timestamp)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerInput {
    /// A softphone's session was used (any message of it). Written when new, when a field
    /// changed, or when its last use moved by more than [`LAST_USE_WRITE_AFTER`].
    Seen { softphone: SocketAddr, pbx: SocketAddr, pbx_serial: String, user: String, push_token: Option<String> },
    /// `user` called `destination`: recorded only while the PBX is in debug mode.
    Destination { pbx_serial: String, user: String, destination: String },
    /// Debug mode on until `until` (capped at [`DEBUG_MODE_DAYS_MAX`] from now), or off.
    DebugMode { pbx_serial: String, until: Option<Timestamp> },
    /// Deletes every record of `user` (of one PBX, or of all): sessions, and debug records
    /// naming the user as caller or destination. Answered with [`LedgerOutput::Erased`].
    Erase { pbx_serial: Option<String>, user: String },
    /// The reaper: deletes what is due.
    Tick,
}

/// A storage operation; the shell performs a drained batch in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    PutSession(SessionRecord),
    DeleteSession(SessionKey),
    PutDebug { id: u64, record: DebugRecord },
    DeleteDebug { id: u64 },
    PutDebugMode { pbx_serial: String, until: Timestamp },
    DeleteDebugMode { pbx_serial: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerOutput {
    Persist(Persist),
    /// A reaper run deleted these (only when it deleted something).
    Reaped {
        sessions: u64,
        debug_records: u64,
        debug_modes: u64,
    },
    /// A bound was full: the least recently used session or the oldest debug record went.
    Evicted {
        sessions: u64,
        debug_records: u64,
    },
    /// An erasure deleted this many records.
    Erased {
        records: usize,
    },
    /// An input was not taken (why, in a few words; no personal data).
    Refused {
        reason: &'static str,
    },
}

/// Counters since start, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerStats {
    pub sessions_reaped: u64,
    pub debug_reaped: u64,
    pub sessions_evicted: u64,
    pub debug_evicted: u64,
    pub refused: u64,
    /// Session uses that did not need a write.
    pub writes_saved: u64,
}

#[derive(Clone, Debug)]
struct Session {
    record: SessionRecord,
    /// The last use storage holds.
    stored_last_use: Timestamp,
}

#[derive(Debug)]
pub struct Ledger {
    config: LedgerConfig,
    now: Timestamp,
    sessions: BTreeMap<SessionKey, Session>,
    /// (last use, key): the least recently used first, for the reaper and the bound.
    by_last_use: BTreeSet<(Timestamp, SessionKey)>,
    /// (made at, id) → record: the oldest first.
    debug: BTreeMap<(Timestamp, u64), DebugRecord>,
    next_debug_id: u64,
    /// PBX serial → end of debug mode.
    debug_modes: BTreeMap<String, Timestamp>,
    last_reap: Option<Timestamp>,
    outputs: VecDeque<LedgerOutput>,
    stats: LedgerStats,
}

impl Ledger {
    /// The ledger with what storage held. Beyond a bound, the oldest loaded records are
    /// dropped at once (their deletes are the first outputs); what is due goes at the first
    /// `Tick`, which [`Ledger::poll_timeout`] asks for at once.
    pub fn new(config: LedgerConfig, state: LedgerState, now: Timestamp) -> Ledger {
        assert!(config.sessions_max > 0 && config.debug_records_max > 0 && !config.reaper_interval.is_zero());
        let mut ledger = Ledger {
            config,
            now,
            sessions: BTreeMap::new(),
            by_last_use: BTreeSet::new(),
            debug: BTreeMap::new(),
            next_debug_id: 1,
            debug_modes: BTreeMap::new(),
            last_reap: None,
            outputs: VecDeque::new(),
            stats: LedgerStats::default(),
        };
        for record in state.sessions {
            let key = record.key();
            if let Some(old) = ledger.sessions.remove(&key) {
                ledger.by_last_use.remove(&(old.record.last_use, key.clone()));
            }
            ledger.by_last_use.insert((record.last_use, key.clone()));
            ledger.sessions.insert(key, Session { stored_last_use: record.last_use, record });
        }
        for (id, record) in state.debug_records {
            ledger.next_debug_id = ledger.next_debug_id.max(id.saturating_add(1));
            ledger.debug.insert((record.at, id), record);
        }
        ledger.debug_modes.extend(state.debug_modes);
        let (sessions, debug_records) = (ledger.evict_sessions(0), ledger.evict_debug(0));
        if sessions + debug_records > 0 {
            ledger.outputs.push_back(LedgerOutput::Evicted { sessions, debug_records });
        }
        ledger
    }

    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    pub fn stats(&self) -> LedgerStats {
        self.stats
    }

    pub fn counts(&self) -> LedgerCounts {
        LedgerCounts {
            sessions: self.sessions.len(),
            debug_records: self.debug.len(),
            debug_modes: self.debug_modes.len(),
        }
    }

    /// Every session, least recently used first.
    pub fn sessions(&self) -> impl Iterator<Item = &SessionRecord> {
        self.by_last_use.iter().filter_map(|(_, key)| self.sessions.get(key)).map(|s| &s.record)
    }

    /// Every debug record, oldest first.
    pub fn debug_records(&self) -> impl Iterator<Item = &DebugRecord> {
        self.debug.values()
    }

    /// Everything held, as storage would load it.
    pub fn state(&self) -> LedgerState {
        LedgerState {
            sessions: self.sessions().cloned().collect(),
            debug_records: self.debug.iter().map(|((_, id), r)| (*id, r.clone())).collect(),
            debug_modes: self.debug_modes.iter().map(|(s, until)| (s.clone(), *until)).collect(),
        }
    }

    /// The end of the PBX's debug mode, if it is on at `now`.
    pub fn debug_until(&self, pbx_serial: &str, now: Timestamp) -> Option<Timestamp> {
        self.debug_modes.get(pbx_serial).copied().filter(|until| *until > now)
    }

    /// When debug mode switched on at `now` for `days` ends (0: the configured length), capped
    /// at [`DEBUG_MODE_DAYS_MAX`].
    pub fn debug_mode_end(&self, now: Timestamp, days_on: u32) -> Timestamp {
        let length = if days_on == 0 { self.config.debug_mode_days } else { days_on };
        now + days(length.min(DEBUG_MODE_DAYS_MAX))
    }

    /// What the ledger holds about `user` of the PBX `pbx_serial` (`None`: of every PBX).
    /// Scoped by the PBX that asks: a proxy once used by another PBX may hold that PBX's user
    /// of the same name, whose data is not this one's to see.
    pub fn export(&self, user: &str, pbx_serial: Option<&str>) -> LedgerExport {
        let of_pbx = |serial: &str| pbx_serial.is_none_or(|s| s == serial);
        LedgerExport {
            sessions: self.sessions().filter(|r| r.user == user && of_pbx(&r.pbx_serial)).cloned().collect(),
            debug_records: self.debug.values().filter(|r| r.involves(user) && of_pbx(&r.pbx_serial)).cloned().collect(),
        }
    }

    pub fn poll_output(&mut self) -> Option<LedgerOutput> {
        self.outputs.pop_front()
    }

    /// When a `Tick` is next wanted: when the next record falls due, but not before one
    /// reaper interval after the last run. `None`: nothing held falls due.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let session = self.by_last_use.first().map(|(t, _)| *t + self.config.session_retention());
        let debug = self.debug.keys().next().map(|(t, _)| *t + self.config.debug_retention());
        let mode = self.debug_modes.values().min().copied();
        let due = [session, debug, mode].into_iter().flatten().min()?;
        Some(match self.last_reap {
            Some(last) => due.max(last + self.config.reaper_interval),
            None => due,
        })
    }

    pub fn handle(&mut self, now: Timestamp, input: LedgerInput) {
        self.now = self.now.max(now);
        let now = self.now;
        match input {
            LedgerInput::Seen { softphone, pbx, pbx_serial, user, push_token } => {
                let too_long = user.len() > USER_BYTES_MAX
                    || pbx_serial.len() > PBX_SERIAL_BYTES_MAX
                    || push_token.as_ref().is_some_and(|t| t.len() > PUSH_TOKEN_BYTES_MAX);
                if user.is_empty() || pbx_serial.is_empty() || too_long {
                    self.refuse("session field empty or too long");
                    return;
                }
                self.seen(now, SessionRecord { softphone, pbx, pbx_serial, user, push_token, last_use: now });
            }
            LedgerInput::Destination { pbx_serial, user, destination } => {
                if self.debug_until(&pbx_serial, now).is_none() {
                    return;
                }
                if destination.is_empty() || destination.len() > DESTINATION_BYTES_MAX || user.len() > USER_BYTES_MAX {
                    self.refuse("destination empty or too long");
                    return;
                }
                let id = self.next_debug_id;
                self.next_debug_id += 1;
                let record = DebugRecord { pbx_serial, user, destination, at: now };
                self.persist(Persist::PutDebug { id, record: record.clone() });
                self.debug.insert((now, id), record);
                let evicted = self.evict_debug(0);
                if evicted > 0 {
                    self.outputs.push_back(LedgerOutput::Evicted { sessions: 0, debug_records: evicted });
                }
            }
            LedgerInput::DebugMode { pbx_serial, until } => match until.filter(|u| *u > now) {
                Some(until) => {
                    if pbx_serial.is_empty() || pbx_serial.len() > PBX_SERIAL_BYTES_MAX {
                        self.refuse("PBX serial empty or too long");
                        return;
                    }
                    if !self.debug_modes.contains_key(&pbx_serial)
                        && self.debug_modes.len() >= self.config.debug_modes_max
                    {
                        self.refuse("too many PBXs in debug mode");
                        return;
                    }
                    let until = until.min(now + days(DEBUG_MODE_DAYS_MAX));
                    self.debug_modes.insert(pbx_serial.clone(), until);
                    self.persist(Persist::PutDebugMode { pbx_serial, until });
                }
                None => {
                    if self.debug_modes.remove(&pbx_serial).is_some() {
                        self.persist(Persist::DeleteDebugMode { pbx_serial });
                    }
                }
            },
            LedgerInput::Erase { pbx_serial, user } => {
                let of_pbx = |serial: &str| pbx_serial.as_deref().is_none_or(|s| s == serial);
                let sessions: Vec<(Timestamp, SessionKey)> = self
                    .sessions
                    .iter()
                    .filter(|(k, _)| k.user == user && of_pbx(&k.pbx_serial))
                    .map(|(k, s)| (s.record.last_use, k.clone()))
                    .collect();
                let debug: Vec<(Timestamp, u64)> = self
                    .debug
                    .iter()
                    .filter(|(_, r)| r.involves(&user) && of_pbx(&r.pbx_serial))
                    .map(|(k, _)| *k)
                    .collect();
                let records = sessions.len() + debug.len();
                for (last_use, key) in sessions {
                    self.remove_session(last_use, key);
                }
                for key in debug {
                    self.debug.remove(&key);
                    self.persist(Persist::DeleteDebug { id: key.1 });
                }
                self.outputs.push_back(LedgerOutput::Erased { records });
            }
            LedgerInput::Tick => self.reap(now),
        }
    }

    fn seen(&mut self, now: Timestamp, record: SessionRecord) {
        let key = record.key();
        let Some(session) = self.sessions.get_mut(&key) else {
            let evicted = self.evict_sessions(1);
            if evicted > 0 {
                self.outputs.push_back(LedgerOutput::Evicted { sessions: evicted, debug_records: 0 });
            }
            self.by_last_use.insert((now, key.clone()));
            self.sessions.insert(key, Session { record: record.clone(), stored_last_use: now });
            self.persist(Persist::PutSession(record));
            return;
        };
        let previous = session.record.last_use;
        let changed = session.record.pbx != record.pbx || session.record.push_token != record.push_token;
        let write = changed || now - session.stored_last_use > LAST_USE_WRITE_AFTER;
        session.record = record;
        if write {
            session.stored_last_use = now;
            let record = session.record.clone();
            self.persist(Persist::PutSession(record));
        } else {
            self.stats.writes_saved += 1;
        }
        if previous != now {
            self.by_last_use.remove(&(previous, key.clone()));
            self.by_last_use.insert((now, key));
        }
    }

    fn remove_session(&mut self, last_use: Timestamp, key: SessionKey) {
        self.by_last_use.remove(&(last_use, key.clone()));
        self.sessions.remove(&key);
        self.persist(Persist::DeleteSession(key));
    }

    /// Drops the least recently used sessions until `room` more fit; how many went.
    fn evict_sessions(&mut self, room: usize) -> u64 {
        let mut evicted = 0;
        while self.sessions.len() + room > self.config.sessions_max {
            let Some((last_use, key)) = self.by_last_use.first().cloned() else { break };
            self.remove_session(last_use, key);
            evicted += 1;
        }
        self.stats.sessions_evicted += evicted;
        evicted
    }

    /// Drops the oldest debug records until `room` more fit; how many went.
    fn evict_debug(&mut self, room: usize) -> u64 {
        let mut evicted = 0;
        while self.debug.len() + room > self.config.debug_records_max {
            let Some(((_, id), _)) = self.debug.pop_first() else { break };
            self.persist(Persist::DeleteDebug { id });
            evicted += 1;
        }
        self.stats.debug_evicted += evicted;
        evicted
    }

    fn reap(&mut self, now: Timestamp) {
        self.last_reap = Some(now);
        let (session_retention, debug_retention) = (self.config.session_retention(), self.config.debug_retention());
        let mut sessions = 0;
        while let Some((last_use, key)) = self.by_last_use.first().cloned() {
            if last_use + session_retention > now {
                break;
            }
            self.remove_session(last_use, key);
            sessions += 1;
        }
        let mut debug_records = 0;
        while let Some(((at, id), _)) = self.debug.first_key_value() {
            if *at + debug_retention > now {
                break;
            }
            let id = *id;
            self.debug.pop_first();
            self.persist(Persist::DeleteDebug { id });
            debug_records += 1;
        }
        let ended: Vec<String> =
            self.debug_modes.iter().filter(|(_, until)| **until <= now).map(|(s, _)| s.clone()).collect();
        let debug_modes = ended.len() as u64;
        for pbx_serial in ended {
            self.debug_modes.remove(&pbx_serial);
            self.persist(Persist::DeleteDebugMode { pbx_serial });
        }
        self.stats.sessions_reaped += sessions;
        self.stats.debug_reaped += debug_records;
        if sessions + debug_records + debug_modes > 0 {
            self.outputs.push_back(LedgerOutput::Reaped { sessions, debug_records, debug_modes });
        }
    }

    fn persist(&mut self, p: Persist) {
        self.outputs.push_back(LedgerOutput::Persist(p));
    }

    fn refuse(&mut self, reason: &'static str) {
        self.stats.refused += 1;
        self.outputs.push_back(LedgerOutput::Refused { reason });
    }
}

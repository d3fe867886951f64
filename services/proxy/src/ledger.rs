//! The proxy's records: the ractor shell of [`pbx_actors::proxy::Ledger`] and its redb store,
//! `DATA_DIR/proxy.redb` (categories `proxy-session` and `proxy-debug` of the inventory).
//!
//! [`LedgerActor`] loads every record at start, feeds the machine the system clock, and hands
//! each batch of the machine's [`Persist`] outputs to one writer thread, which performs it in
//! one durable redb transaction (`Durability::Immediate`): what was committed survives a
//! kill -9. Replies that promise something stored (an erasure, a debug-mode switch) go out
//! after their batch committed. One timer, re-armed after every message, wakes the reaper.
//!
//! What it never does: log a user name, a push token or a destination (counts only), or keep
//! anything of a softphone's Authorization header (the [`crate::session`] actor never passes
//! it on).

use anyhow::Context;
use pbx_actors::Timestamp;
use pbx_actors::proxy::{
    DebugRecord, Ledger, LedgerInput, LedgerOutput, LedgerState, Persist, SessionKey, SessionRecord,
};
use pbx_actors::shell::WakeTimer;
use pbx_actors::time::Clock;
use pbx_host::store::{StorageError, decode, redb_err};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

pub use pbx_actors::proxy::LedgerCounts;

pub const DB_FILE: &str = "proxy.redb";

/// (PBX serial, user, softphone address) → a session.
const SESSIONS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("proxy_sessions");
/// Id → a debug record.
const DEBUG: TableDefinition<u64, &[u8]> = TableDefinition::new("proxy_debug");
/// PBX serial → the end of its debug mode.
const DEBUG_MODE: TableDefinition<&str, &[u8]> = TableDefinition::new("proxy_debug_mode");

/// Every table of `proxy.redb`, with the privacy inventory's category for those holding
/// personal data (a test checks both). A PBX's debug mode names a PBX, not a person.
pub const TABLES: &[(&str, Option<&str>)] =
    &[("proxy_sessions", Some("proxy-session")), ("proxy_debug", Some("proxy-debug")), ("proxy_debug_mode", None)];

/// Operations a failed write keeps for the next attempt at most; beyond, the oldest are
/// dropped (memory stays right; storage catches up at the next change of those records).
const UNWRITTEN_OPS_MAX: usize = 100_000;
/// After a failed write, the writer tries again this often until it succeeds.
const WRITE_RETRY: Duration = Duration::from_secs(5);

/// The proxy's retention periods (its flags); defaults: the inventory's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    pub session_retention_days: u32,
    pub debug_retention_days: u32,
    pub debug_mode_days: u32,
}

impl Default for LedgerConfig {
    fn default() -> LedgerConfig {
        LedgerConfig {
            session_retention_days: pbx_actors::proxy::SESSION_RETENTION_DAYS,
            debug_retention_days: pbx_actors::proxy::DEBUG_RETENTION_DAYS,
            debug_mode_days: pbx_actors::proxy::DEBUG_MODE_DAYS,
        }
    }
}

impl LedgerConfig {
    /// The machine's configuration: these periods, the default bounds and reaper interval.
    pub fn machine(&self) -> pbx_actors::proxy::LedgerConfig {
        pbx_actors::proxy::LedgerConfig {
            session_retention_days: self.session_retention_days,
            debug_retention_days: self.debug_retention_days,
            debug_mode_days: self.debug_mode_days,
            ..pbx_actors::proxy::LedgerConfig::default()
        }
    }
}

/// One use of a softphone's session, as the session actor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSeen {
    pub softphone: SocketAddr,
    pub pbx: SocketAddr,
    pub pbx_serial: String,
    pub user: String,
    pub push_token: Option<String>,
}

pub enum LedgerMsg {
    Seen(SessionSeen),
    /// A call's destination (recorded only while the PBX is in debug mode).
    Destination {
        pbx_serial: String,
        user: String,
        destination: String,
    },
    /// Some(days) switches debug mode on for that many days (0 = the default length), None off.
    /// Answered, once stored, with its end (Unix seconds) or `None` (off, or refused).
    DebugMode {
        pbx_serial: String,
        days: Option<u32>,
        reply: Option<RpcReplyPort<Option<u64>>>,
    },
    /// Everything held about a user name of the PBX `pbx_serial` (`None`: of every PBX), as
    /// JSON.
    Export {
        pbx_serial: Option<String>,
        user: String,
        reply: RpcReplyPort<serde_json::Value>,
    },
    /// Deletes everything held about a user name of the PBX `pbx_serial` (`None`: of every
    /// PBX); answered, once stored, with the number of records deleted.
    Erase {
        pbx_serial: Option<String>,
        user: String,
        reply: RpcReplyPort<usize>,
    },
    /// Sessions, debug records and PBXs in debug mode held now.
    Counts(RpcReplyPort<LedgerCounts>),
    /// The reaper's timer (sent by the actor to itself).
    Wake,
}

// Local only; see `pbx_actors::shell` on ractor's `cluster` feature.
impl ractor::Message for LedgerMsg {}

/// Opens (creating) `DATA_DIR/proxy.redb`, loads it and starts the ledger on the system clock.
pub async fn start(
    data_dir: &Path,
    config: LedgerConfig,
) -> anyhow::Result<(ActorRef<LedgerMsg>, tokio::task::JoinHandle<()>)> {
    start_with_clock(data_dir, config, Arc::new(pbx_host::clock::SystemClock::new())).await
}

/// [`start`] with another clock (tests).
pub async fn start_with_clock(
    data_dir: &Path,
    config: LedgerConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(ActorRef<LedgerMsg>, tokio::task::JoinHandle<()>)> {
    let dir = data_dir.to_path_buf();
    let (store, state) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = LedgerStore::open(&dir).context("open the proxy's ledger (proxy.redb)")?;
        let state = store.load().context("load the proxy's ledger")?;
        Ok((store, state))
    })
    .await
    .context("load the proxy's ledger")??;
    let args = LedgerArgs { store: Arc::new(store), state, config: config.machine(), clock };
    let (actor, handle) = Actor::spawn(None, LedgerActor, args).await.context("start the ledger actor")?;
    Ok((actor, handle))
}

// ---- Storage ----

#[derive(Serialize, Deserialize)]
enum StoredSessionV {
    V1(SessionRecord),
}

#[derive(Serialize, Deserialize)]
enum StoredDebugV {
    V1(DebugRecord),
}

#[derive(Serialize, Deserialize)]
enum StoredDebugModeV {
    V1 { until: Timestamp },
}

/// `DATA_DIR/proxy.redb`.
pub struct LedgerStore {
    db: Database,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(value).map_err(redb_err)
}

impl LedgerStore {
    pub fn open(dir: &Path) -> Result<LedgerStore, StorageError> {
        let path = dir.join(DB_FILE);
        let db = Database::create(&path)
            .map_err(|e| StorageError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        let tx = db.begin_write().map_err(redb_err)?;
        tx.open_table(SESSIONS).map_err(redb_err)?;
        tx.open_table(DEBUG).map_err(redb_err)?;
        tx.open_table(DEBUG_MODE).map_err(redb_err)?;
        tx.commit().map_err(redb_err)?;
        Ok(LedgerStore { db })
    }

    /// Every record stored.
    pub fn load(&self) -> Result<LedgerState, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let mut state = LedgerState::default();
        for row in tx.open_table(SESSIONS).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let StoredSessionV::V1(record) = decode("proxy_sessions", || format!("{:?}", k.value()), v.value())?;
            state.sessions.push(record);
        }
        for row in tx.open_table(DEBUG).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let StoredDebugV::V1(record) = decode("proxy_debug", || k.value().to_string(), v.value())?;
            state.debug_records.push((k.value(), record));
        }
        for row in tx.open_table(DEBUG_MODE).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let StoredDebugModeV::V1 { until } = decode("proxy_debug_mode", || k.value().to_string(), v.value())?;
            state.debug_modes.push((k.value().to_string(), until));
        }
        Ok(state)
    }

    /// Performs the operations in one durable transaction: all or none.
    pub fn apply(&self, ops: &[Persist]) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(redb_err)?;
        // Said explicitly: a reply goes out only for what is on disk.
        tx.set_durability(Durability::Immediate).map_err(redb_err)?;
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(redb_err)?;
            let mut debug = tx.open_table(DEBUG).map_err(redb_err)?;
            let mut modes = tx.open_table(DEBUG_MODE).map_err(redb_err)?;
            for op in ops {
                match op {
                    Persist::PutSession(record) => {
                        let softphone = record.softphone.to_string();
                        let key = (record.pbx_serial.as_str(), record.user.as_str(), softphone.as_str());
                        let value = encode(&StoredSessionV::V1(record.clone()))?;
                        sessions.insert(key, value.as_slice()).map_err(redb_err)?;
                    }
                    Persist::DeleteSession(SessionKey { pbx_serial, user, softphone }) => {
                        let softphone = softphone.to_string();
                        sessions.remove((pbx_serial.as_str(), user.as_str(), softphone.as_str())).map_err(redb_err)?;
                    }
                    Persist::PutDebug { id, record } => {
                        let value = encode(&StoredDebugV::V1(record.clone()))?;
                        debug.insert(*id, value.as_slice()).map_err(redb_err)?;
                    }
                    Persist::DeleteDebug { id } => {
                        debug.remove(*id).map_err(redb_err)?;
                    }
                    Persist::PutDebugMode { pbx_serial, until } => {
                        let value = encode(&StoredDebugModeV::V1 { until: *until })?;
                        modes.insert(pbx_serial.as_str(), value.as_slice()).map_err(redb_err)?;
                    }
                    Persist::DeleteDebugMode { pbx_serial } => {
                        modes.remove(pbx_serial.as_str()).map_err(redb_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(redb_err)
    }
}

// ---- The writer: one thread, batches in order ----

struct WriteJob {
    ops: Vec<Persist>,
    /// Told whether the batch is on disk.
    done: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// Applies jobs in order, each queued run of them in one transaction; a failed batch is kept
/// and tried again (with the next, or after [`WRITE_RETRY`]). Ends when the sender is dropped
/// and the queue is written.
fn write_loop(store: Arc<LedgerStore>, jobs: mpsc::Receiver<WriteJob>) {
    let mut unwritten: Vec<Persist> = Vec::new();
    let mut open = true;
    while open || !unwritten.is_empty() {
        let first = if !open {
            None
        } else if unwritten.is_empty() {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            }
        } else {
            match jobs.recv_timeout(WRITE_RETRY) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            }
        };
        let mut ops = std::mem::take(&mut unwritten);
        let mut done = Vec::new();
        let queued = first.into_iter().chain(std::iter::from_fn(|| jobs.try_recv().ok()));
        for job in queued {
            ops.extend(job.ops);
            done.extend(job.done);
        }
        let ok = match store.apply(&ops) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, ops = ops.len(), "the proxy's ledger could not be written; trying again");
                metrics::counter!("pbx_proxy_ledger_write_failures_total").increment(1);
                let excess = ops.len().saturating_sub(UNWRITTEN_OPS_MAX);
                if excess > 0 {
                    tracing::error!(dropped = excess, "the proxy's ledger dropped unwritten operations");
                }
                unwritten = ops.split_off(excess);
                if !open {
                    // The actor stopped: one last try was made.
                    break;
                }
                false
            }
        };
        for d in done {
            let _ = d.send(ok);
        }
    }
}

// ---- The actor ----

pub struct LedgerArgs {
    pub store: Arc<LedgerStore>,
    pub state: LedgerState,
    pub config: pbx_actors::proxy::LedgerConfig,
    pub clock: Arc<dyn Clock>,
}

pub struct LedgerActorState {
    machine: Ledger,
    clock: Arc<dyn Clock>,
    timer: WakeTimer,
    writer: Option<mpsc::Sender<WriteJob>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

pub struct LedgerActor;

impl Actor for LedgerActor {
    type Msg = LedgerMsg;
    type State = LedgerActorState;
    type Arguments = LedgerArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<LedgerMsg>,
        args: LedgerArgs,
    ) -> Result<LedgerActorState, ActorProcessingErr> {
        let now = args.clock.now();
        let machine = Ledger::new(args.config, args.state, now);
        let counts = machine.counts();
        tracing::info!(
            sessions = counts.sessions,
            debug_records = counts.debug_records,
            debug_modes = counts.debug_modes,
            "proxy ledger loaded"
        );
        let (writer, jobs) = mpsc::channel();
        let store = args.store;
        let writer_thread = std::thread::Builder::new()
            .name("proxy-ledger-writer".into())
            .spawn(move || write_loop(store, jobs))
            .map_err(|e| format!("start the ledger's writer thread: {e}"))?;
        Ok(LedgerActorState {
            machine,
            clock: args.clock,
            timer: WakeTimer::default(),
            writer: Some(writer),
            writer_thread: Some(writer_thread),
        })
    }

    async fn post_start(&self, me: ActorRef<LedgerMsg>, s: &mut LedgerActorState) -> Result<(), ActorProcessingErr> {
        // What loading dropped beyond a bound is written now.
        s.drain();
        s.rearm(&me);
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<LedgerMsg>, s: &mut LedgerActorState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        // Whatever is queued is written before the actor is gone.
        s.writer = None;
        if let Some(thread) = s.writer_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<LedgerMsg>,
        msg: LedgerMsg,
        s: &mut LedgerActorState,
    ) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        match msg {
            LedgerMsg::Seen(SessionSeen { softphone, pbx, pbx_serial, user, push_token }) => {
                s.machine.handle(now, LedgerInput::Seen { softphone, pbx, pbx_serial, user, push_token });
                s.drain();
            }
            LedgerMsg::Destination { pbx_serial, user, destination } => {
                s.machine.handle(now, LedgerInput::Destination { pbx_serial, user, destination });
                s.drain();
            }
            LedgerMsg::DebugMode { pbx_serial, days, reply } => {
                let until = days.map(|d| s.machine.debug_mode_end(now, d));
                s.machine.handle(now, LedgerInput::DebugMode { pbx_serial: pbx_serial.clone(), until });
                let until = s.machine.debug_until(&pbx_serial, now);
                tracing::info!(
                    on = until.is_some(),
                    until_unix_s = until.map(|t| t.as_secs()),
                    "proxy debug mode switched"
                );
                let stored = s.drain_then();
                if let Some(reply) = reply {
                    tokio::spawn(async move {
                        let ok = stored.await.unwrap_or(false);
                        let _ = reply.send(until.filter(|_| ok).map(|t| t.as_secs()));
                    });
                }
            }
            LedgerMsg::Export { pbx_serial, user, reply } => {
                let _ = reply.send(export_json(&s.machine.export(&user, pbx_serial.as_deref())));
            }
            LedgerMsg::Erase { pbx_serial, user, reply } => {
                s.machine.handle(now, LedgerInput::Erase { pbx_serial, user });
                let (stored, erased) = s.drain_counting();
                tracing::info!(records = erased, "proxy ledger erasure");
                tokio::spawn(async move {
                    if !stored.await.unwrap_or(false) {
                        tracing::error!("an erasure is not yet on disk; the writer keeps trying");
                    }
                    let _ = reply.send(erased);
                });
            }
            LedgerMsg::Counts(reply) => {
                let _ = reply.send(s.machine.counts());
            }
            LedgerMsg::Wake => {
                s.timer.fired();
                if s.machine.poll_timeout().is_some_and(|t| t <= now) {
                    s.machine.handle(now, LedgerInput::Tick);
                }
                s.drain();
            }
        }
        s.rearm(&me);
        Ok(())
    }
}

impl LedgerActorState {
    /// Takes the machine's outputs: the operations go to the writer as one batch.
    fn drain(&mut self) {
        let _ = self.drain_counting();
    }

    /// [`Self::drain`], with a receiver told when the batch is on disk.
    fn drain_then(&mut self) -> tokio::sync::oneshot::Receiver<bool> {
        self.drain_counting().0
    }

    /// [`Self::drain_then`], and how many records an erasure among the outputs deleted.
    fn drain_counting(&mut self) -> (tokio::sync::oneshot::Receiver<bool>, usize) {
        let mut ops = Vec::new();
        let mut erased = 0;
        while let Some(output) = self.machine.poll_output() {
            match output {
                LedgerOutput::Persist(op) => ops.push(op),
                LedgerOutput::Reaped { sessions, debug_records, debug_modes } => {
                    tracing::info!(sessions, debug_records, debug_modes, "proxy ledger retention run");
                    metrics::counter!("pbx_proxy_ledger_reaped_total", "category" => "proxy-session")
                        .increment(sessions);
                    metrics::counter!("pbx_proxy_ledger_reaped_total", "category" => "proxy-debug")
                        .increment(debug_records);
                }
                LedgerOutput::Evicted { sessions, debug_records } => {
                    tracing::warn!(sessions, debug_records, "proxy ledger full: the oldest records were dropped");
                    metrics::counter!("pbx_proxy_ledger_evicted_total", "category" => "proxy-session")
                        .increment(sessions);
                    metrics::counter!("pbx_proxy_ledger_evicted_total", "category" => "proxy-debug")
                        .increment(debug_records);
                }
                LedgerOutput::Erased { records } => erased += records,
                LedgerOutput::Refused { reason } => {
                    tracing::debug!(reason, "proxy ledger refused an input");
                    metrics::counter!("pbx_proxy_ledger_refused_total").increment(1);
                }
            }
        }
        let counts = self.machine.counts();
        metrics::gauge!("pbx_proxy_ledger_sessions").set(counts.sessions as f64);
        metrics::gauge!("pbx_proxy_ledger_debug_records").set(counts.debug_records as f64);
        let (done, stored) = tokio::sync::oneshot::channel();
        if ops.is_empty() {
            let _ = done.send(true);
        } else if let Some(writer) = &self.writer
            && writer.send(WriteJob { ops, done: Some(done) }).is_err()
        {
            tracing::error!("the proxy ledger's writer is gone; a batch was not written");
        }
        (stored, erased)
    }

    /// One timer: at the machine's next due time, and at least every reaper interval (a
    /// wake-up with nothing due costs nothing, and no timer sleeps for months).
    fn rearm(&mut self, me: &ActorRef<LedgerMsg>) {
        let now = self.clock.now();
        let latest = now + self.machine.config().reaper_interval;
        let at = self.machine.poll_timeout().map_or(latest, |t| t.min(latest));
        self.timer.arm(me, now, Some(at), || LedgerMsg::Wake);
    }
}

/// An export as JSON: times in RFC 3339 (UTC).
fn export_json(export: &pbx_actors::proxy::LedgerExport) -> serde_json::Value {
    let rfc3339 = pbx_host::http::rfc3339;
    serde_json::json!({
        "sessions": export.sessions.iter().map(|r| serde_json::json!({
            "softphone": r.softphone.to_string(),
            "pbx": r.pbx.to_string(),
            "pbx_serial": r.pbx_serial,
            "user": r.user,
            "push_token": r.push_token,
            "last_use": rfc3339(r.last_use),
        })).collect::<Vec<_>>(),
        "debug_records": export.debug_records.iter().map(|r| serde_json::json!({
            "pbx_serial": r.pbx_serial,
            "user": r.user,
            "destination": r.destination,
            "at": rfc3339(r.at),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests;

//! The Raft log, the vote and the state machine's metadata, in one redb database.
//!
//! Every write is one durable redb transaction, committed before openraft is told it is done:
//! a vote or a log entry this node acknowledged survives `kill -9`. The application's state
//! itself lives wherever the [`Applier`] keeps it (the node's `pbx.redb`); this file records
//! how far that state has applied the log. The applier writes first and the mark second (not
//! flushed on its own: the next log append's flush carries it), so a crash re-applies the last
//! few entries — harmless, as applying is idempotent.
//!
//! Values are postcard. openraft's own types are stored as openraft serialises them; a change
//! of their format would need a new table, like any format change of ours.

use super::snapshot::{SNAPSHOT_BYTES_MAX, SnapshotBuffer};
use super::{Applier, Member, NodeId, PbxConfig, Request, Response, empty_membership};
use crate::redb_file::{RedbFile, Rewritten, check_all_copied, copy_table};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::RangeBounds;
use std::sync::Arc;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";
const SNAPSHOT: &str = "snapshot";

pub const DB_FILE: &str = "raft.redb";

/// Opens (or creates) the Raft database in `data_dir` and makes sure its tables exist.
pub fn open(data_dir: &std::path::Path) -> Result<Arc<RedbFile>, String> {
    tables(RedbFile::create(&data_dir.join(DB_FILE))?)
}

/// Makes sure the tables of an in-memory database exist.
pub fn prepare(db: Database) -> Result<Arc<RedbFile>, String> {
    tables(RedbFile::in_memory(db))
}

fn tables(db: RedbFile) -> Result<Arc<RedbFile>, String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.open_table(LOG).map_err(|e| e.to_string())?;
    tx.open_table(META).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok(Arc::new(db))
}

/// Rewrites the Raft file with only its live rows ([`RedbFile::rewrite`]): after a compaction,
/// the purged entries and the replaced snapshot are then gone from the file, not only from the
/// tables. Raft's reads and writes wait for it.
pub fn rewrite(db: &RedbFile) -> Result<Rewritten, String> {
    db.rewrite(|from, to| {
        copy_table(from, to, LOG)?;
        copy_table(from, to, META)?;
        check_all_copied(from, &[LOG.name(), META.name()])
    })
}

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AnyError> {
    postcard::to_allocvec(value).map_err(any)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AnyError> {
    postcard::from_bytes(bytes).map_err(any)
}

fn get_meta<T: DeserializeOwned>(db: &RedbFile, key: &str) -> Result<Option<T>, AnyError> {
    let tx = db.begin_read().map_err(any)?;
    let table = tx.open_table(META).map_err(any)?;
    match table.get(key).map_err(any)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn put_meta(db: &RedbFile, values: &[(&str, Vec<u8>)]) -> Result<(), AnyError> {
    put_meta_with(db, values, redb::Durability::Immediate)
}

fn put_meta_with(db: &RedbFile, values: &[(&str, Vec<u8>)], durability: redb::Durability) -> Result<(), AnyError> {
    let mut tx = db.begin_write().map_err(any)?;
    tx.set_durability(durability).map_err(any)?;
    {
        let mut table = tx.open_table(META).map_err(any)?;
        for (key, value) in values {
            table.insert(*key, value.as_slice()).map_err(any)?;
        }
    }
    tx.commit().map_err(any)
}

/// The log and the vote.
pub struct LogStore<C> {
    db: Arc<RedbFile>,
    _config: PhantomData<C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore { db: self.db.clone(), _config: PhantomData }
    }
}

impl<C: PbxConfig> LogStore<C> {
    pub fn new(db: Arc<RedbFile>) -> Self {
        LogStore { db, _config: PhantomData }
    }

    fn last_entry(&self) -> Result<Option<Entry<C>>, AnyError> {
        let tx = self.db.begin_read().map_err(any)?;
        let table = tx.open_table(LOG).map_err(any)?;
        match table.last().map_err(any)? {
            Some((_, v)) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Removes the entries with index in `range`.
    fn remove(&self, range: impl RangeBounds<u64>) -> Result<(), AnyError> {
        let tx = self.db.begin_write().map_err(any)?;
        tx.open_table(LOG).map_err(any)?.retain_in(range, |_, _| false).map_err(any)?;
        tx.commit().map_err(any)
    }
}

impl<C: PbxConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<NodeId>> {
        let read = || -> Result<Vec<Entry<C>>, AnyError> {
            let tx = self.db.begin_read().map_err(any)?;
            let table = tx.open_table(LOG).map_err(any)?;
            let mut entries = Vec::new();
            for row in table.range(range).map_err(any)? {
                let (_, v) = row.map_err(any)?;
                entries.push(decode(v.value())?);
            }
            Ok(entries)
        };
        read().map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl<C: PbxConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<NodeId>> {
        let purged: Option<LogId<NodeId>> = get_meta(&self.db, PURGED).map_err(StorageIOError::read_logs)?;
        let last = self.last_entry().map_err(StorageIOError::read_logs)?.map(|e| e.log_id);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = || put_meta(&self.db, &[(VOTE, encode(vote)?)]);
        write().map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        get_meta(&self.db, VOTE).map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Not flushed by itself (openraft allows a committed id that lags after a crash): the
        // next log append, durable and in the same file, carries it. redb makes non-durable
        // commits durable in order, so whatever survives a crash has committed ≥ applied, and a
        // committed id lost with a crash is committed again by the next leader. This saves one
        // fsync per batch of entries (a REGISTER that adds a binding, a batch of CDRs).
        let write = || put_meta_with(&self.db, &[(COMMITTED, encode(&committed)?)], redb::Durability::None);
        write().map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed: Option<Option<LogId<NodeId>>> =
            get_meta(&self.db, COMMITTED).map_err(|e| StorageError::from(StorageIOError::read(e)))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        let write = || -> Result<(), AnyError> {
            let tx = self.db.begin_write().map_err(any)?;
            {
                let mut table = tx.open_table(LOG).map_err(any)?;
                for entry in entries {
                    table.insert(entry.log_id.index, encode(&entry)?.as_slice()).map_err(any)?;
                }
            }
            tx.commit().map_err(any)
        };
        match write() {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.remove(log_id.index..).map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = || -> Result<(), AnyError> {
            // The mark first: a crash after it leaves stale entries below it, which are ignored
            // and removed by the next purge, never a gap the mark does not explain.
            put_meta(&self.db, &[(PURGED, encode(&log_id)?)])?;
            self.remove(..=log_id.index)
        };
        write().map_err(|e| StorageIOError::write_logs(e).into())
    }
}

/// A snapshot as stored: openraft's metadata and the applier's bytes.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// How far the state machine has applied the log, and the membership it applied last.
type Applied = (Option<LogId<NodeId>>, StoredMembership<NodeId, Member>);

/// The state machine: the [`Applier`] does the applying, this records how far it got.
pub struct StateMachine<C> {
    db: Arc<RedbFile>,
    applier: Arc<dyn Applier>,
    _config: PhantomData<C>,
}

impl<C> Clone for StateMachine<C> {
    fn clone(&self) -> Self {
        StateMachine { db: self.db.clone(), applier: self.applier.clone(), _config: PhantomData }
    }
}

impl<C: PbxConfig> StateMachine<C> {
    pub fn new(db: Arc<RedbFile>, applier: Arc<dyn Applier>) -> Self {
        StateMachine { db, applier, _config: PhantomData }
    }

    fn applied(&self) -> Result<Applied, AnyError> {
        let applied = get_meta(&self.db, APPLIED)?.flatten();
        let membership = get_meta(&self.db, MEMBERSHIP)?.unwrap_or_else(empty_membership);
        Ok((applied, membership))
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, AnyError> {
        get_meta(&self.db, SNAPSHOT)
    }
}

impl<C: PbxConfig> RaftSnapshotBuilder<C> for StateMachine<C> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<NodeId>> {
        let build = || -> Result<Snapshot<C>, AnyError> {
            // The mark before the data: the data then holds at least what the mark says (maybe
            // more, which re-applying after an install makes no worse).
            let (applied, membership) = self.applied()?;
            let data = self.applier.snapshot().map_err(any)?;
            if data.len() as u64 > SNAPSHOT_BYTES_MAX {
                // Followers refuse it; the log still serves those close enough behind.
                tracing::warn!(
                    bytes = data.len(),
                    max = SNAPSHOT_BYTES_MAX,
                    "snapshot larger than any member accepts: a member far behind cannot catch up"
                );
                metrics::counter!("pbx_raft_snapshots_oversized_total").increment(1);
            }
            let snapshot_id = match applied {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, data.len()),
                None => format!("0-0-{}", data.len()),
            };
            let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
            let stored = StoredSnapshot { meta: meta.clone(), data };
            put_meta(&self.db, &[(SNAPSHOT, encode(&stored)?)])?;
            Ok(Snapshot { meta, snapshot: Box::new(SnapshotBuffer::from_vec(stored.data)) })
        };
        build().map_err(|e| StorageIOError::write_snapshot(None, e).into())
    }
}

impl<C: PbxConfig> RaftStateMachine<C> for StateMachine<C> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<Applied, StorageError<NodeId>> {
        self.applied().map_err(|e| StorageIOError::read_state_machine(e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else { return Ok(Vec::new()) };
        let requests: Vec<&Request> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(request) => Some(request),
                _ => None,
            })
            .collect();
        let membership = entries.iter().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(StoredMembership::new(Some(e.log_id), m.clone())),
            _ => None,
        });
        let apply = || -> Result<(), AnyError> {
            if !requests.is_empty() {
                self.applier.apply(&requests).map_err(any)?;
            }
            let mut marks = vec![(APPLIED, encode(&Some(last))?)];
            if let Some(m) = &membership {
                marks.push((MEMBERSHIP, encode(m)?));
            }
            // Not flushed by itself: the next durable commit (a log append) carries it. A crash
            // before that re-applies these entries, which applying again makes no worse.
            put_meta_with(&self.db, &marks, redb::Durability::None)
        };
        apply().map_err(|e| StorageIOError::apply(last, e))?;
        Ok(vec![Response; entries.len()])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBuffer>, StorageError<NodeId>> {
        Ok(Box::new(SnapshotBuffer::new()))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<SnapshotBuffer>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let install = || -> Result<(), AnyError> {
            self.applier.install(&data).map_err(any)?;
            let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
            put_meta(
                &self.db,
                &[
                    (APPLIED, encode(&meta.last_log_id)?),
                    (MEMBERSHIP, encode(&meta.last_membership)?),
                    (SNAPSHOT, encode(&stored)?),
                ],
            )
        };
        install().map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<NodeId>> {
        let stored = self.stored_snapshot().map_err(|e| StorageIOError::read_snapshot(None, e))?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(SnapshotBuffer::from_vec(s.data)) }))
    }
}

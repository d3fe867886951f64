//! The node's durable state: one redb file in the data directory.
//!
//! Durable changes arrive as commands (`RegistrarCommand`) and are applied by [`Storage::apply`]
//! in one write transaction — the shape openraft will replicate when the cluster arrives
//! (ARCHITECTURE.md, "Cluster"). Values are postcard inside explicit version enums so the
//! format can evolve without a migration flag day. A commit is durable (fsync) before
//! `apply` returns, so the phone's 200 OK is only sent for a binding that a `kill -9` keeps.
//!
//! Call detail records go through [`CdrWriter`], which batches the records of calls ending
//! together into one durable commit (group commit, as the registrar's writer does), and are
//! read back a page at a time by end time ([`Storage::query_cdrs`]).
//!
//! The file is a [`RedbFile`]: after an erasure or a retention change, [`Storage::rewrite`]
//! copies the live rows into a fresh file and replaces the old one, so what was erased,
//! masked, anonymised or deleted leaves the disk file too (redb does not clear freed pages).
//! Whether a rewrite is due is kept in the file itself (`maintenance` table), in the same
//! transaction as the change that made it due, so a crash before the rewrite does not forget it.

use pbx_actors::Timestamp;
use pbx_actors::cdr::{Cdr, CdrStore, CdrStored};
use pbx_actors::conference::core::Participation;
use pbx_actors::push::PushRecord;
use pbx_actors::registrar::{Binding, BindingV1, Extension, Forwarding, RegistrarCommand, RegistrarStore};
use pbx_actors::store::StoreError;
use pbx_cluster::redb_file::{RedbFile, Rewritten, check_all_copied, copy_table};
use redb::{Durability, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

mod privacy;
pub use privacy::{
    Erased, Flags, SECURITY_INTERVAL_S, SECURITY_NETWORKS_PER_INTERVAL_MAX, SECURITY_ROW_BYTES_MAX,
    SECURITY_ROWS_PER_KIND_PER_DAY_MAX, SecurityAggregator, SecurityKey, SecurityWriter, SubjectRecords, Tombstone,
    restricted,
};

const EXTENSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("extensions");
/// Call forwarding by extension number (only what is on).
const FORWARDING: TableDefinition<&str, &[u8]> = TableDefinition::new("call_forwarding");
/// Ring-group members logged out, keyed `group\0member` (no value).
const GROUP_LOGOUTS: TableDefinition<&str, ()> = TableDefinition::new("group_logouts");
/// Keyed by `aor \0 contact`, so one AOR's bindings sit together.
const BINDINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("bindings");
/// Keyed by `(end µs, id)`: a time window is a key range, and the id keeps apart calls that
/// ended in the same microsecond.
const CDRS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("cdrs");
/// Ended conference participations, keyed by `(left µs, participant id)`
/// (`conference-participation`).
const PARTICIPATIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("conference_participations");
/// Pushes sent to wake mobile softphones, keyed by `(sent µs, push id)` (`push-records`).
const PUSH_RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("push_records");
/// The last verified licence and voucher unlocks (keys `licence`, `unlocks`), as the service
/// signed them, so a restart during an outage still knows what is licensed.
const LICENCE: TableDefinition<&str, &[u8]> = TableDefinition::new("licence");
/// Failed authentications and blocks, keyed by `(at µs, seq)` (category `security-log`).
const SECURITY_LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("security_log");
/// Retention runs and subject-rights requests, keyed by `(at µs, seq)` (`privacy-audit`).
const PRIVACY_AUDIT: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("privacy_audit");
/// Restrictions and objections, keyed by subject id (`privacy-preferences`).
const PRIVACY_FLAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("privacy_flags");
/// Erasure tombstones: the keyed pseudonym of each erased number (`erasure-tombstone`).
const TOMBSTONES: TableDefinition<&str, &[u8]> = TableDefinition::new("erasure_tombstones");
/// The file's own housekeeping (no personal data): whether a rewrite is due.
const MAINTENANCE: TableDefinition<&str, &[u8]> = TableDefinition::new("maintenance");
/// The `MAINTENANCE` key saying a rewrite is due; its value (a random u64) tells this request
/// from a later one.
const REWRITE_DUE: &str = "rewrite_due";

pub const DB_FILE: &str = "pbx.redb";

/// Every table of the file; each must be declared in the privacy inventory
/// (`pbx_actors::privacy::INVENTORY`) — a test checks it.
pub const TABLES: &[&str] = &[
    "extensions",
    "call_forwarding",
    "group_logouts",
    "bindings",
    "cdrs",
    "conference_participations",
    "push_records",
    "security_log",
    "privacy_audit",
    "privacy_flags",
    "erasure_tombstones",
];
/// Tables that hold no personal data: the licence documents (serial number, features, limits,
/// signatures — about the PBX, not about anyone), and the file's housekeeping.
pub const NON_PERSONAL_TABLES: &[&str] = &["licence", "maintenance"];

/// Records one CDR page holds at most.
pub const CDR_PAGE_MAX: usize = 500;
/// Rows one CDR query reads at most. A filter that matches little ends the page early (with a
/// cursor) instead of letting one request scan the whole table.
pub const CDR_QUERY_ROWS_MAX: usize = 10_000;
/// Records the CDR writer takes into one transaction at most.
pub const CDR_BATCH_MAX: usize = 512;
/// How long the CDR writer collects records after the first one of a batch before it commits
/// them (unless [`CDR_BATCH_MAX`] come first): a few ms against the ~1-2 ms of a durable
/// commit, so calls ending together share an fsync instead of each paying for one, and no
/// caller waits noticeably longer for "stored".
pub const CDR_COMMIT_WINDOW_MS: u64 = 5;
/// Records waiting for the CDR writer; when full, `persist` waits for room.
pub const CDR_QUEUE_MAX: usize = 4_096;
const _: () = assert!(CDR_PAGE_MAX < CDR_QUERY_ROWS_MAX && CDR_BATCH_MAX <= CDR_QUEUE_MAX);

#[derive(Serialize, Deserialize)]
enum StoredExtensionV {
    V1(Extension),
}

#[derive(Serialize, Deserialize)]
enum StoredForwardingV {
    V1(Forwarding),
}

#[derive(Serialize, Deserialize)]
enum StoredBindingV {
    /// Before issue 15: no NAT flag; read with the flag computed as V1 routed it.
    V1(BindingV1),
    /// With the NAT flag the registrar decided from the REGISTER (`Binding::nat`).
    V2(Binding),
}

impl StoredBindingV {
    pub(crate) fn into_binding(self) -> Binding {
        match self {
            StoredBindingV::V1(b) => b.into(),
            StoredBindingV::V2(b) => b,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum StoredCdrV {
    /// Before issue 18: no transfer fields.
    V1(pbx_actors::cdr::CdrV1),
    V2(Cdr),
}

impl StoredCdrV {
    pub(crate) fn into_cdr(self) -> Cdr {
        match self {
            StoredCdrV::V1(c) => c.into(),
            StoredCdrV::V2(c) => c,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum StoredParticipationV {
    V1(Participation),
}

#[derive(Serialize, Deserialize)]
enum StoredPushRecordV {
    V1(PushRecord),
}

#[derive(Serialize, Deserialize)]
enum StoredLicenceV {
    V1(pbx_actors::licence::Stored),
}

#[derive(Serialize, Deserialize)]
enum StoredUnlocksV {
    V1(pbx_actors::licence::StoredUnlocks),
}

pub use pbx_host::store::StorageError;
pub(crate) use pbx_host::store::{decode, redb_err};

pub struct Storage {
    db: RedbFile,
    /// Second half of the keys of time-keyed logs: records of the same microsecond stay apart.
    seq: std::sync::atomic::AtomicU64,
    /// Rung when a change made a rewrite due (an erasure, a retention run that changed records,
    /// a snapshot installed): the node's compactor then rewrites the files.
    rewrite_wanted: tokio::sync::Notify,
}

/// Everything the node restores at start.
pub struct Snapshot {
    pub extensions: Vec<Extension>,
    pub bindings: Vec<Binding>,
    /// Call forwarding by extension.
    pub forwarding: Vec<(String, Forwarding)>,
    /// (group, member) pairs logged out.
    pub logged_out: Vec<(String, String)>,
}

impl Storage {
    /// Opens (or creates) `DATA_DIR/pbx.redb` and makes sure every table exists.
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        let path = data_dir.join(DB_FILE);
        let db = RedbFile::create(&path)
            .map_err(|reason| StorageError::Open { path: path.display().to_string(), reason })?;
        let tx = db.begin_write().map_err(redb_err)?;
        tx.open_table(EXTENSIONS).map_err(redb_err)?;
        tx.open_table(FORWARDING).map_err(redb_err)?;
        tx.open_table(GROUP_LOGOUTS).map_err(redb_err)?;
        tx.open_table(BINDINGS).map_err(redb_err)?;
        tx.open_table(CDRS).map_err(redb_err)?;
        tx.open_table(PARTICIPATIONS).map_err(redb_err)?;
        tx.open_table(PUSH_RECORDS).map_err(redb_err)?;
        tx.open_table(LICENCE).map_err(redb_err)?;
        tx.open_table(SECURITY_LOG).map_err(redb_err)?;
        tx.open_table(PRIVACY_AUDIT).map_err(redb_err)?;
        tx.open_table(PRIVACY_FLAGS).map_err(redb_err)?;
        tx.open_table(TOMBSTONES).map_err(redb_err)?;
        tx.open_table(MAINTENANCE).map_err(redb_err)?;
        tx.commit().map_err(redb_err)?;
        Ok(Storage {
            db,
            seq: std::sync::atomic::AtomicU64::new(rand::random::<u32>().into()),
            rewrite_wanted: tokio::sync::Notify::new(),
        })
    }

    /// Whether a rewrite is due, and which request made it so (see [`Storage::rewrite`]).
    pub fn rewrite_due(&self) -> Result<Option<u64>, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(MAINTENANCE).map_err(redb_err)?;
        Ok(table.get(REWRITE_DUE).map_err(redb_err)?.and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes)))
    }

    /// Waits until a change makes a rewrite due (or [`Storage::want_rewrite`] is called).
    pub async fn rewrite_wanted(&self) {
        self.rewrite_wanted.notified().await
    }

    /// Wakes whoever waits in [`Storage::rewrite_wanted`] (now, or at its next wait).
    pub fn want_rewrite(&self) {
        self.rewrite_wanted.notify_one();
    }

    /// Copies every live row into a fresh file that replaces `pbx.redb` ([`RedbFile::rewrite`]):
    /// rows deleted or changed before are then not in the file in any form. Writers wait
    /// meanwhile; none is lost. `done` is the [`Storage::rewrite_due`] value this rewrite
    /// answers: if it is still the due one, the new file no longer says a rewrite is due (a
    /// change made during the rewrite left a new value, which stays).
    pub fn rewrite(&self, done: Option<u64>) -> Result<Rewritten, StorageError> {
        self.db
            .rewrite(|from, to| {
                copy_table(from, to, EXTENSIONS)?;
                copy_table(from, to, FORWARDING)?;
                copy_table(from, to, GROUP_LOGOUTS)?;
                copy_table(from, to, BINDINGS)?;
                copy_table(from, to, CDRS)?;
                copy_table(from, to, PARTICIPATIONS)?;
                copy_table(from, to, PUSH_RECORDS)?;
                copy_table(from, to, LICENCE)?;
                copy_table(from, to, SECURITY_LOG)?;
                copy_table(from, to, PRIVACY_AUDIT)?;
                copy_table(from, to, PRIVACY_FLAGS)?;
                copy_table(from, to, TOMBSTONES)?;
                copy_table(from, to, MAINTENANCE)?;
                if let Some(done) = done {
                    let mut maintenance = to.open_table(MAINTENANCE).map_err(|e| e.to_string())?;
                    let still = maintenance.get(REWRITE_DUE).map_err(|e| e.to_string())?.map(|v| v.value().to_vec());
                    if still.as_deref() == Some(done.to_le_bytes().as_slice()) {
                        maintenance.remove(REWRITE_DUE).map_err(|e| e.to_string())?;
                    }
                }
                let names = [
                    EXTENSIONS.name(),
                    FORWARDING.name(),
                    GROUP_LOGOUTS.name(),
                    BINDINGS.name(),
                    CDRS.name(),
                    PARTICIPATIONS.name(),
                    PUSH_RECORDS.name(),
                    LICENCE.name(),
                    SECURITY_LOG.name(),
                    PRIVACY_AUDIT.name(),
                    PRIVACY_FLAGS.name(),
                    TOMBSTONES.name(),
                    MAINTENANCE.name(),
                ];
                check_all_copied(from, &names)
            })
            .map_err(StorageError::Redb)
    }

    /// The stored licence and unlocks, if any.
    #[allow(clippy::type_complexity)]
    pub fn load_licence(
        &self,
    ) -> Result<(Option<pbx_actors::licence::Stored>, Option<pbx_actors::licence::StoredUnlocks>), StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(LICENCE).map_err(redb_err)?;
        let licence = match table.get("licence").map_err(redb_err)? {
            Some(v) => match decode::<StoredLicenceV>("licence", || "licence".into(), v.value())? {
                StoredLicenceV::V1(s) => Some(s),
            },
            None => None,
        };
        let unlocks = match table.get("unlocks").map_err(redb_err)? {
            Some(v) => match decode::<StoredUnlocksV>("licence", || "unlocks".into(), v.value())? {
                StoredUnlocksV::V1(s) => Some(s),
            },
            None => None,
        };
        Ok((licence, unlocks))
    }

    fn put_licence_row(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        tx.open_table(LICENCE).map_err(redb_err)?.insert(key, value).map_err(redb_err)?;
        tx.commit().map_err(redb_err)
    }

    pub fn load(&self) -> Result<Snapshot, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let extensions = read_all(&tx, EXTENSIONS, |v: StoredExtensionV| match v {
            StoredExtensionV::V1(e) => e,
        })?;
        let bindings = read_all(&tx, BINDINGS, StoredBindingV::into_binding)?;
        let mut forwarding = Vec::new();
        for row in tx.open_table(FORWARDING).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let StoredForwardingV::V1(f) = decode(FORWARDING.name(), || k.value().to_string(), v.value())?;
            forwarding.push((k.value().to_string(), f));
        }
        let mut logged_out = Vec::new();
        for row in tx.open_table(GROUP_LOGOUTS).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, _) = row.map_err(redb_err)?;
            if let Some((group, member)) = k.value().split_once('\0') {
                logged_out.push((group.to_owned(), member.to_owned()));
            }
        }
        Ok(Snapshot { extensions, bindings, forwarding, logged_out })
    }

    /// Applies commands in one durable transaction: all or none.
    pub fn apply(&self, commands: &[RegistrarCommand]) -> Result<(), StorageError> {
        if commands.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(redb_err)?;
        apply_in(&tx, commands)?;
        tx.commit().map_err(redb_err)
    }

    /// Every stored call record, oldest end first (a cluster snapshot; the API pages instead).
    pub fn all_cdrs(&self) -> Result<Vec<Cdr>, StorageError> {
        self.all_rows(CDRS, |key, bytes| {
            let cdr = decode::<StoredCdrV>("cdrs", || format!("{key:?}"), bytes)?.into_cdr();
            Ok(cdr)
        })
    }

    /// Every stored conference participation, oldest first (a cluster snapshot carries them).
    pub fn all_participations(&self) -> Result<Vec<Participation>, StorageError> {
        self.all_rows(PARTICIPATIONS, |key, bytes| {
            let StoredParticipationV::V1(p) = decode("conference_participations", || format!("{key:?}"), bytes)?;
            Ok(p)
        })
    }

    /// Every stored push record, oldest first (a cluster snapshot carries them).
    pub fn all_push_records(&self) -> Result<Vec<PushRecord>, StorageError> {
        self.all_rows(PUSH_RECORDS, privacy::decode_push)
    }

    /// Every row of a record table keyed by (time µs, id), in key order, each read by `read`.
    fn all_rows<T>(
        &self,
        table: TableDefinition<(u64, u64), &[u8]>,
        read: impl Fn((u64, u64), &[u8]) -> Result<T, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let mut out = Vec::new();
        for row in tx.open_table(table).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            out.push(read(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Replaces every extension and binding with these, in one durable transaction (a cluster
    /// node installing a snapshot of the replicated state).
    pub fn replace_registrar(
        &self,
        extensions: &[Extension],
        bindings: &[Binding],
        forwarding: &[(String, Forwarding)],
        logged_out: &[(String, String)],
    ) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        tx.open_table(EXTENSIONS).map_err(redb_err)?.retain(|_, _| false).map_err(redb_err)?;
        tx.open_table(BINDINGS).map_err(redb_err)?.retain(|_, _| false).map_err(redb_err)?;
        tx.open_table(FORWARDING).map_err(redb_err)?.retain(|_, _| false).map_err(redb_err)?;
        tx.open_table(GROUP_LOGOUTS).map_err(redb_err)?.retain(|_, _| false).map_err(redb_err)?;
        let mut commands: Vec<RegistrarCommand> =
            extensions.iter().cloned().map(RegistrarCommand::PutExtension).collect();
        commands.extend(bindings.iter().cloned().map(RegistrarCommand::PutBinding));
        commands.extend(
            forwarding
                .iter()
                .map(|(number, f)| RegistrarCommand::SetForwarding { number: number.clone(), forwarding: f.clone() }),
        );
        commands.extend(logged_out.iter().map(|(group, member)| RegistrarCommand::GroupLogin {
            group: group.clone(),
            member: member.clone(),
            logged_in: false,
        }));
        apply_in(&tx, &commands)?;
        // What the snapshot dropped (an erasure this node missed, say) is in freed pages now.
        mark_rewrite_due(&tx)?;
        tx.commit().map_err(redb_err)?;
        self.want_rewrite();
        Ok(())
    }

    /// Stores call records in one durable transaction: all or none. Storing a record again
    /// (same end and id) keeps one copy, so a retried batch does no harm.
    pub fn put_cdrs(&self, cdrs: &[Cdr]) -> Result<(), StorageError> {
        let mut tx = self.db.begin_write().map_err(redb_err)?;
        // The default today, said explicitly: `persist` promises the record is on disk.
        tx.set_durability(Durability::Immediate).map_err(redb_err)?;
        {
            let mut table = tx.open_table(CDRS).map_err(redb_err)?;
            for cdr in cdrs {
                let value = postcard::to_allocvec(&StoredCdrV::V2(cdr.clone())).map_err(redb_err)?;
                table.insert((cdr.end.as_micros(), cdr.id), value.as_slice()).map_err(redb_err)?;
            }
        }
        tx.commit().map_err(redb_err)
    }

    /// Stores ended conference participations in one durable transaction; storing one again
    /// (same end and id) keeps one copy.
    pub fn put_participations(&self, participations: &[Participation]) -> Result<(), StorageError> {
        let mut tx = self.db.begin_write().map_err(redb_err)?;
        tx.set_durability(Durability::Immediate).map_err(redb_err)?;
        {
            let mut table = tx.open_table(PARTICIPATIONS).map_err(redb_err)?;
            for p in participations {
                let value = postcard::to_allocvec(&StoredParticipationV::V1(p.clone())).map_err(redb_err)?;
                table.insert((p.left.as_micros(), p.id), value.as_slice()).map_err(redb_err)?;
            }
        }
        tx.commit().map_err(redb_err)
    }

    /// Stores push records in one durable transaction; storing one again (same time and id)
    /// keeps one copy.
    pub fn put_push_records(&self, records: &[PushRecord]) -> Result<(), StorageError> {
        let mut tx = self.db.begin_write().map_err(redb_err)?;
        tx.set_durability(Durability::Immediate).map_err(redb_err)?;
        {
            let mut table = tx.open_table(PUSH_RECORDS).map_err(redb_err)?;
            for r in records {
                let value = postcard::to_allocvec(&StoredPushRecordV::V1(r.clone())).map_err(redb_err)?;
                table.insert((r.at.as_micros(), r.id), value.as_slice()).map_err(redb_err)?;
            }
        }
        tx.commit().map_err(redb_err)
    }

    /// One page of call records that ended in `from <= end < to`, newest first, optionally only
    /// those where `extension` is caller or callee, none involving a `hidden` number (a
    /// restricted subject's), continuing below `after`. The cursor is
    /// `Some` when more records may follow: a page can end early (even empty) once it has read
    /// [`CDR_QUERY_ROWS_MAX`] rows.
    pub fn query_cdrs(
        &self,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        extension: Option<&str>,
        hidden: &std::collections::BTreeSet<String>,
        after: Option<CdrCursor>,
        limit: usize,
    ) -> Result<(Vec<Cdr>, Option<CdrCursor>), StorageError> {
        let limit = limit.clamp(1, CDR_PAGE_MAX);
        let lower = (from.map_or(0, Timestamp::as_micros), 0);
        // Both bounds are exclusive, so the lower of the two is the one that applies.
        let upper = match (to.map(|t| (t.as_micros(), 0)), after.map(|c| (c.end, c.id))) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(CDRS).map_err(redb_err)?;
        let rows = match upper {
            Some(upper) if upper <= lower => return Ok((Vec::new(), None)),
            Some(upper) => table.range(lower..upper),
            None => table.range(lower..),
        }
        .map_err(redb_err)?;
        let mut page = Vec::new();
        let mut last_read = None;
        for (read, row) in rows.rev().enumerate() {
            if read == CDR_QUERY_ROWS_MAX {
                return Ok((page, last_read));
            }
            let (k, v) = row.map_err(redb_err)?;
            let (end, id) = k.value();
            // A second version turns this into a match that upgrades.
            let cdr = decode::<StoredCdrV>("cdrs", || format!("{end}/{id}"), v.value())?.into_cdr();
            if extension.is_none_or(|e| cdr.involves(e)) && !hidden.iter().any(|h| cdr.involves(h)) {
                if page.len() == limit {
                    return Ok((page, last_read));
                }
                page.push(cdr);
            }
            last_read = Some(CdrCursor { end, id });
        }
        Ok((page, None))
    }
}

/// Where a page of CDRs stopped: the key of the last row it read. The next page continues
/// strictly below it. Shown to API clients as 32 hex digits; opaque to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdrCursor {
    end: u64,
    id: u64,
}

impl std::fmt::Display for CdrCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.end, self.id)
    }
}

impl std::str::FromStr for CdrCursor {
    type Err = String;
    fn from_str(s: &str) -> Result<CdrCursor, String> {
        let bad = || "not a cursor from a previous page".to_string();
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let end = u64::from_str_radix(&s[..16], 16).map_err(|_| bad())?;
        let id = u64::from_str_radix(&s[16..], 16).map_err(|_| bad())?;
        Ok(CdrCursor { end, id })
    }
}

/// Every record of one table, decoded from its version enum and brought up to the current type.
fn read_all<V: serde::de::DeserializeOwned, T>(
    tx: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    upgrade: impl Fn(V) -> T,
) -> Result<Vec<T>, StorageError> {
    let mut out = Vec::new();
    for row in tx.open_table(table).map_err(redb_err)?.iter().map_err(redb_err)? {
        let (k, v) = row.map_err(redb_err)?;
        out.push(upgrade(decode(table.name(), || k.value().to_string(), v.value())?));
    }
    Ok(out)
}

fn apply_in(tx: &redb::WriteTransaction, commands: &[RegistrarCommand]) -> Result<(), StorageError> {
    let mut extensions = tx.open_table(EXTENSIONS).map_err(redb_err)?;
    let mut bindings = tx.open_table(BINDINGS).map_err(redb_err)?;
    let mut forwarding = tx.open_table(FORWARDING).map_err(redb_err)?;
    let mut logouts = tx.open_table(GROUP_LOGOUTS).map_err(redb_err)?;
    for command in commands {
        match command {
            RegistrarCommand::PutExtension(ext) => {
                let value = postcard::to_allocvec(&StoredExtensionV::V1(ext.clone())).map_err(redb_err)?;
                extensions.insert(ext.number.as_str(), value.as_slice()).map_err(redb_err)?;
            }
            RegistrarCommand::RemoveExtension { number } => {
                extensions.remove(number.as_str()).map_err(redb_err)?;
                forwarding.remove(number.as_str()).map_err(redb_err)?;
                remove_member_logouts(&mut logouts, number)?;
            }
            RegistrarCommand::GroupLogin { group, member, logged_in: true } => {
                logouts.remove(format!("{group}\0{member}").as_str()).map_err(redb_err)?;
            }
            RegistrarCommand::GroupLogin { group, member, logged_in: false } => {
                logouts.insert(format!("{group}\0{member}").as_str(), ()).map_err(redb_err)?;
            }
            RegistrarCommand::SetForwarding { number, forwarding: f } if f.is_off() => {
                forwarding.remove(number.as_str()).map_err(redb_err)?;
            }
            RegistrarCommand::SetForwarding { number, forwarding: f } => {
                let value = postcard::to_allocvec(&StoredForwardingV::V1(f.clone())).map_err(redb_err)?;
                forwarding.insert(number.as_str(), value.as_slice()).map_err(redb_err)?;
            }
            RegistrarCommand::PutBinding(b) => {
                let value = postcard::to_allocvec(&StoredBindingV::V2(b.clone())).map_err(redb_err)?;
                bindings.insert(binding_key(&b.aor, &b.contact).as_str(), value.as_slice()).map_err(redb_err)?;
            }
            RegistrarCommand::RemoveBinding { aor, contact } => {
                bindings.remove(binding_key(aor, contact).as_str()).map_err(redb_err)?;
            }
        }
    }
    Ok(())
}

/// Removes every log-out row of `member` (its extension went, or was erased).
pub(crate) fn remove_member_logouts(table: &mut redb::Table<&str, ()>, member: &str) -> Result<(), StorageError> {
    let suffix = format!("\0{member}");
    table.retain(|key, _| !key.ends_with(&suffix)).map_err(redb_err)
}

/// Records in `tx` that the file needs a rewrite: it commits with the change that left
/// personal data in freed pages, so a crash before the rewrite does not forget it.
pub(crate) fn mark_rewrite_due(tx: &redb::WriteTransaction) -> Result<(), StorageError> {
    let request: u64 = rand::random();
    tx.open_table(MAINTENANCE)
        .map_err(redb_err)?
        .insert(REWRITE_DUE, request.to_le_bytes().as_slice())
        .map_err(redb_err)?;
    Ok(())
}

fn binding_key(aor: &str, contact: &str) -> String {
    format!("{aor}\0{contact}")
}

impl pbx_actors::licence::LicenceStore for Storage {
    fn save_licence(&self, stored: &pbx_actors::licence::Stored) -> Result<(), StoreError> {
        let value = postcard::to_allocvec(&StoredLicenceV::V1(stored.clone()))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.put_licence_row("licence", &value).map_err(|e| StoreError::Disk(e.to_string()))
    }

    fn save_unlocks(&self, stored: &pbx_actors::licence::StoredUnlocks) -> Result<(), StoreError> {
        let value = postcard::to_allocvec(&StoredUnlocksV::V1(stored.clone()))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.put_licence_row("unlocks", &value).map_err(|e| StoreError::Disk(e.to_string()))
    }
}

impl RegistrarStore for Storage {
    fn apply(&self, commands: &[RegistrarCommand]) -> Result<(), StoreError> {
        Storage::apply(self, commands).map_err(|e| StoreError::Disk(e.to_string()))
    }
}

/// A finished call's record and whom to tell whether it is stored.
type CdrJob = (Cdr, CdrStored);

/// The node's [`CdrStore`]: group commit on a thread of its own, batched by time. Each
/// `submit` queues its record without waiting (`persist` queues and waits); the thread takes
/// the first record waiting, collects what else comes for [`CDR_COMMIT_WINDOW_MS`] (up to
/// [`CDR_BATCH_MAX`]), stores them in one durable transaction, then answers each caller. Under
/// load one fsync serves many ending calls, and no caller hears "stored" before its record is
/// on disk. Dropping the writer stores what is queued and ends the thread.
pub struct CdrWriter {
    /// `None` only while dropping.
    jobs: Option<SyncSender<CdrJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where the CDR writer's batches go: the node's redb, or (on a cluster node) the cluster.
pub trait CdrSink: Send + Sync + 'static {
    fn put_cdrs(&self, cdrs: &[Cdr]) -> Result<(), StoreError>;
}

impl CdrSink for Storage {
    fn put_cdrs(&self, cdrs: &[Cdr]) -> Result<(), StoreError> {
        Storage::put_cdrs(self, cdrs).map_err(|e| StoreError::Disk(e.to_string()))
    }
}

impl CdrWriter {
    pub fn start(storage: Arc<dyn CdrSink>) -> std::io::Result<CdrWriter> {
        CdrWriter::with_window(storage, Duration::from_millis(CDR_COMMIT_WINDOW_MS))
    }

    /// With another commit window than [`CDR_COMMIT_WINDOW_MS`] (tests).
    fn with_window(storage: Arc<dyn CdrSink>, window: Duration) -> std::io::Result<CdrWriter> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<CdrJob>(CDR_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || write_cdrs(&queue, &storage, window))?;
        Ok(CdrWriter { jobs: Some(jobs), thread: Some(thread) })
    }
}

impl CdrStore for CdrWriter {
    fn persist(&self, cdr: Cdr) -> Result<(), StoreError> {
        let (reply, stored) = std::sync::mpsc::sync_channel(1);
        let jobs = self.jobs.as_ref().expect("the queue lives until drop");
        let tell: CdrStored = Box::new(move |result| {
            let _ = reply.send(result);
        });
        jobs.send((cdr, tell)).map_err(|_| StoreError::Stopped("the CDR writer has stopped".into()))?;
        stored.recv().map_err(|_| StoreError::Stopped("the CDR writer stopped before storing the record".into()))?
    }

    fn submit(&self, cdr: Cdr, stored: CdrStored) -> Result<(), Box<(Cdr, CdrStored)>> {
        let jobs = self.jobs.as_ref().expect("the queue lives until drop");
        match jobs.try_send((cdr, stored)) {
            Ok(()) => Ok(()),
            // Full: the caller waits for room on a blocking thread (`persist`), as before.
            Err(TrySendError::Full(job)) => Err(Box::new(job)),
            Err(TrySendError::Disconnected((_, stored))) => {
                stored(Err(StoreError::Stopped("the CDR writer has stopped".into())));
                Ok(())
            }
        }
    }
}

impl Drop for CdrWriter {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: one batch per window (see [`CdrWriter`]) until the queue closes.
fn write_cdrs(queue: &Receiver<CdrJob>, storage: &Arc<dyn CdrSink>, window: Duration) {
    while let Ok(first) = queue.recv() {
        let until = Instant::now() + window;
        let mut batch = vec![first];
        while batch.len() < CDR_BATCH_MAX {
            match queue.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let (cdrs, replies): (Vec<Cdr>, Vec<_>) = batch.into_iter().unzip();
        let result = storage.put_cdrs(&cdrs);
        match &result {
            Ok(()) => metrics::counter!("pbx_cdrs_stored_total").increment(cdrs.len() as u64),
            Err(error) => {
                tracing::error!(%error, records = cdrs.len(), "CDR storage refused a batch");
                metrics::counter!("pbx_cdr_storage_failures_total").increment(1);
            }
        }
        for reply in replies {
            reply(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::Timestamp;
    use pbx_actors::sip::Transport;

    fn binding(aor: &str, contact: &str) -> Binding {
        Binding {
            aor: aor.into(),
            contact: contact.into(),
            expires_at: Timestamp::from_secs(1_000),
            call_id: "c".into(),
            cseq: 1,
            source: "127.0.0.1:5062".parse().unwrap(),
            transport: Transport::Udp,
            user_agent: Some("test".into()),
            nat: false,
        }
    }

    /// A bindings table written before issue 15 (`StoredBindingV::V1`: no NAT flag) still
    /// loads, each flag what the Contact rule said (a Contact of the source's class: not NAT;
    /// a private Contact from loopback: NAT); a binding written now is V2 and reads back whole.
    #[test]
    fn bindings_stored_before_the_nat_flag_still_load() {
        // `StoredBindingV::V1` of binding("101", "sip:101@127.0.0.1:5070") as the code before
        // issue 15 encoded it (postcard): variant 0; aor, contact (length, bytes); expires_at
        // (varint µs); call_id; cseq; source (V4, octets, varint port); Udp; Some("test").
        const ON_BEHALF_V1: &[u8] = &[
            0, 3, b'1', b'0', b'1', 22, b's', b'i', b'p', b':', b'1', b'0', b'1', b'@', b'1', b'2', b'7', b'.', b'0',
            b'.', b'0', b'.', b'1', b':', b'5', b'0', b'7', b'0', 128, 148, 235, 220, 3, 1, b'c', 1, 0, 127, 0, 0, 1,
            198, 39, 0, 1, 4, b't', b'e', b's', b't',
        ];
        let natted = binding("102", "sip:102@192.168.1.20:5060");
        let natted_v1 = postcard::to_allocvec(&StoredBindingV::V1(BindingV1::from(&natted))).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        {
            let tx = s.db.begin_write().unwrap();
            let mut table = tx.open_table(BINDINGS).unwrap();
            table.insert(binding_key("101", "sip:101@127.0.0.1:5070").as_str(), ON_BEHALF_V1).unwrap();
            table.insert(binding_key("102", &natted.contact).as_str(), natted_v1.as_slice()).unwrap();
            drop(table);
            tx.commit().unwrap();
        }
        let symmetric = Binding { nat: true, ..binding("103", "sip:103@127.0.0.1:5072") };
        s.apply(&[RegistrarCommand::PutBinding(symmetric.clone())]).unwrap();
        let mut loaded = s.load().unwrap().bindings;
        loaded.sort_by(|a, b| a.aor.cmp(&b.aor));
        assert_eq!(loaded, [binding("101", "sip:101@127.0.0.1:5070"), Binding { nat: true, ..natted }, symmetric]);
    }

    /// Every table is a declared place of personal data, and every table is listed in TABLES.
    #[test]
    fn every_table_is_in_the_privacy_inventory() {
        use redb::TableHandle;
        // The tables a fresh file really has, so a table added without a declaration fails here.
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let read = storage.db.begin_read().unwrap();
        let mut actual: Vec<String> = read.list_tables().unwrap().map(|t| t.name().to_string()).collect();
        actual.sort();
        let mut declared: Vec<String> = TABLES.iter().chain(NON_PERSONAL_TABLES).map(|t| t.to_string()).collect();
        declared.sort();
        assert_eq!(actual, declared);
        for table in TABLES {
            let place = format!("redb:{table}");
            assert!(
                pbx_actors::privacy::INVENTORY.iter().any(|c| c.stored_in.contains(&place.as_str())),
                "redb table {table} holds data not declared in the privacy inventory"
            );
        }
    }

    /// docs/PRIVACY.md names every category, so the human-readable side cannot lose one.
    #[test]
    fn docs_name_every_category() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PRIVACY.md");
        let doc = std::fs::read_to_string(&path).expect("docs/PRIVACY.md");
        for c in pbx_actors::privacy::INVENTORY {
            assert!(doc.contains(&format!("| `{}`", c.id)), "docs/PRIVACY.md has no row for `{}`", c.id);
        }
    }

    fn cdr(id: u64, end_s: u64, caller: &str, callee: &str) -> Cdr {
        use pbx_actors::cdr::{Disposition, MediaCounters};
        Cdr {
            id,
            call_id: format!("call-{id}"),
            caller: caller.into(),
            callee: callee.into(),
            start: Timestamp::from_secs(end_s - 5),
            answer: Some(Timestamp::from_secs(end_s - 3)),
            end: Timestamp::from_secs(end_s),
            disposition: Disposition::Answered,
            hangup: None,
            codec_caller: Some("PCMU".into()),
            codec_callee: Some("PCMA".into()),
            media: [MediaCounters { packets_in: id, ..MediaCounters::default() }, MediaCounters::default()],
            follows: None,
            transfer: None,
        }
    }

    fn ids(cdrs: &[Cdr]) -> Vec<u64> {
        cdrs.iter().map(|c| c.id).collect()
    }

    /// Records persisted by many callers at once through the writer are all stored, whole, and
    /// are still there after the writer and the file are closed and reopened.
    #[test]
    fn persisted_cdrs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let expected: Vec<Cdr> = (1..=40).map(|id| cdr(id, 1_000 + id, "100", "101")).collect();
        {
            let writer = Arc::new(CdrWriter::start(Arc::new(Storage::open(dir.path()).unwrap())).unwrap());
            let threads: Vec<_> = expected
                .chunks(10)
                .map(|chunk| {
                    let (writer, chunk) = (writer.clone(), chunk.to_vec());
                    std::thread::spawn(move || chunk.into_iter().map(|c| writer.persist(c)).collect::<Vec<_>>())
                })
                .collect();
            for t in threads {
                assert!(t.join().unwrap().iter().all(Result::is_ok));
            }
        }
        let s = Storage::open(dir.path()).unwrap();
        let (page, next) = s.query_cdrs(None, None, None, &Default::default(), None, 100).unwrap();
        assert_eq!(next, None);
        let mut newest_first = expected.clone();
        newest_first.reverse();
        assert_eq!(page, newest_first);
    }

    /// Records by the batch the sink was given them in.
    #[derive(Default)]
    struct Batches(std::sync::Mutex<Vec<Vec<u64>>>);

    impl CdrSink for Batches {
        fn put_cdrs(&self, cdrs: &[Cdr]) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(ids(cdrs));
            Ok(())
        }
    }

    /// Records submitted (without waiting) within one commit window share one commit, and
    /// each submitter is told its record is stored; the window starts again after a commit.
    #[test]
    fn submitted_cdrs_within_a_window_share_a_commit() {
        let sink = Arc::new(Batches::default());
        let writer = CdrWriter::with_window(sink.clone(), Duration::from_millis(500)).unwrap();
        let (told, stored) = std::sync::mpsc::channel();
        let submit = |id| {
            let told = told.clone();
            let done: CdrStored = Box::new(move |result| told.send((id, result)).unwrap());
            assert!(writer.submit(cdr(id, 1_000, "100", "101"), done).is_ok(), "the queue has room");
        };
        submit(1);
        std::thread::sleep(Duration::from_millis(20));
        submit(2);
        let wait = Duration::from_secs(5);
        let mut heard = vec![stored.recv_timeout(wait).unwrap(), stored.recv_timeout(wait).unwrap()];
        heard.sort_by_key(|(id, _)| *id);
        assert_eq!(heard, [(1, Ok(())), (2, Ok(()))]);
        submit(3);
        assert_eq!(stored.recv_timeout(wait).unwrap(), (3, Ok(())));
        drop(writer);
        assert_eq!(*sink.0.lock().unwrap(), [vec![1, 2], vec![3]]);
    }

    /// `from` is inclusive and `to` exclusive on the end time; the extension filter matches
    /// caller or callee; results are newest first.
    #[test]
    fn query_filters_by_end_time_and_extension() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        s.put_cdrs(&[cdr(1, 100, "100", "101"), cdr(2, 200, "101", "102"), cdr(3, 300, "102", "100")]).unwrap();
        s.put_cdrs(&[cdr(4, 300, "103", "104")]).unwrap();
        let q = |from: Option<u64>, to: Option<u64>, ext: Option<&str>| {
            let (page, next) = s
                .query_cdrs(
                    from.map(Timestamp::from_secs),
                    to.map(Timestamp::from_secs),
                    ext,
                    &Default::default(),
                    None,
                    50,
                )
                .unwrap();
            assert_eq!(next, None);
            ids(&page)
        };
        assert_eq!(q(None, None, None), [4, 3, 2, 1]);
        assert_eq!(q(Some(200), None, None), [4, 3, 2]);
        assert_eq!(q(None, Some(300), None), [2, 1]);
        assert_eq!(q(Some(200), Some(300), None), [2]);
        assert_eq!(q(Some(300), Some(200), None), Vec::<u64>::new());
        assert_eq!(q(None, None, Some("100")), [3, 1]);
        assert_eq!(q(None, None, Some("10")), Vec::<u64>::new());
        assert_eq!(q(Some(150), None, Some("102")), [3, 2]);
    }

    /// Walking the cursor visits every record once, newest first, `limit` at a time, and the
    /// last page says there is no more.
    #[test]
    fn pages_follow_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        // Ids 1..=7, three of them ending in the same second.
        let records: Vec<Cdr> = (1..=7).map(|id| cdr(id, if id <= 3 { 50 } else { 50 + id }, "100", "101")).collect();
        s.put_cdrs(&records).unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        for _ in 0..10 {
            let (page, next) = s.query_cdrs(None, None, None, &Default::default(), cursor, 3).unwrap();
            assert!(page.len() <= 3);
            seen.extend(ids(&page));
            cursor = next;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(cursor, None, "the walk did not end");
        assert_eq!(seen, [7, 6, 5, 4, 3, 2, 1]);
        let (page, next) = s.query_cdrs(None, None, None, &Default::default(), None, 7).unwrap();
        assert_eq!((page.len(), next), (7, None), "an exact fit needs no further page");
        let (page, next) =
            s.query_cdrs(None, Some(Timestamp::from_secs(56)), Some("100"), &Default::default(), None, 2).unwrap();
        assert_eq!(ids(&page), [5, 4]);
        let (page, next) =
            s.query_cdrs(None, Some(Timestamp::from_secs(56)), Some("100"), &Default::default(), next, 2).unwrap();
        assert_eq!((ids(&page), next.is_some()), (vec![3, 2], true));
    }

    /// A filter that matches nothing ends a page after CDR_QUERY_ROWS_MAX rows with a cursor,
    /// and the next page finishes the table.
    #[test]
    fn a_page_reads_at_most_the_row_bound() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let records: Vec<Cdr> = (1..=CDR_QUERY_ROWS_MAX as u64 + 10).map(|id| cdr(id, 1_000, "100", "101")).collect();
        s.put_cdrs(&records).unwrap();
        let (page, next) = s.query_cdrs(None, None, Some("999"), &Default::default(), None, 50).unwrap();
        assert!(page.is_empty() && next.is_some());
        let (page, next) = s.query_cdrs(None, None, Some("999"), &Default::default(), next, 50).unwrap();
        assert_eq!((page.len(), next), (0, None));
        let (page, _) = s.query_cdrs(None, None, Some("100"), &Default::default(), None, 10_000).unwrap();
        assert_eq!(page.len(), CDR_PAGE_MAX, "limit is capped");
    }

    /// A cursor prints as 32 hex digits and reads back; anything else is refused.
    #[test]
    fn cursor_round_trips_and_refuses_garbage() {
        let c = CdrCursor { end: 1_700_000_000_000_000, id: u64::MAX };
        assert_eq!(c.to_string().parse::<CdrCursor>(), Ok(c));
        for bad in ["", "xyz", &"0".repeat(31), &"g".repeat(32), &"0".repeat(33), "+000000000000000000000000000000f"] {
            assert!(bad.parse::<CdrCursor>().is_err(), "{bad:?}");
        }
    }

    /// Not a check: how long a rewrite of a file with 100,000 call records takes here (the
    /// number docs/PRIVACY.md quotes). `cargo test -p pbx-node --lib rewrite_speed -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a timing report, not a check: 100,000 call records and a file rewrite take seconds; run it by hand for the number docs/PRIVACY.md quotes"]
    fn rewrite_speed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for chunk in 0..100u64 {
            let records: Vec<Cdr> = (0..1_000)
                .map(|i| cdr(chunk * 1_000 + i + 1, 1_000 + chunk * 1_000 + i, "100", "0301234567"))
                .collect();
            s.put_cdrs(&records).unwrap();
        }
        let done = s.rewrite(None).unwrap();
        let mb = done.bytes_before as f64 / 1e6;
        eprintln!(
            "rewrite of {mb:.1} MB ({} MB after) took {} ms: {:.0} MB/s",
            done.bytes_after / 1_000_000,
            done.held.as_millis(),
            mb / done.held.as_secs_f64()
        );
    }

    /// Commands applied, the file closed and reopened: the state is what the commands said.
    #[test]
    fn commands_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path()).unwrap();
            s.apply(&[
                RegistrarCommand::PutBinding(binding("100", "sip:100@a")),
                RegistrarCommand::PutBinding(binding("100", "sip:100@b")),
                RegistrarCommand::PutBinding(binding("101", "sip:101@c")),
                RegistrarCommand::RemoveBinding { aor: "100".into(), contact: "sip:100@a".into() },
            ])
            .unwrap();
        }
        let s = Storage::open(dir.path()).unwrap();
        let snap = s.load().unwrap();
        let mut got: Vec<_> = snap.bindings.iter().map(|b| (b.aor.as_str(), b.contact.as_str())).collect();
        got.sort();
        assert_eq!(got, vec![("100", "sip:100@b"), ("101", "sip:101@c")]);
        assert_eq!(snap.bindings[0], binding(&snap.bindings[0].aor, &snap.bindings[0].contact));
    }
}

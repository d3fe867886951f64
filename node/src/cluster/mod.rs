//! A node's side of the cluster: what it replicates and how committed changes reach its
//! storage and its registrar.
//!
//! Durable changes become Raft entries ([`Entry`], defined in `pbx_actors::entry` with the
//! [`apply_entry`] the simulator's disk runs too), committed by a majority before anyone is
//! told they happened: the registrar's commands (through [`ReplicatedStore`]: a REGISTER is
//! answered only once its binding is committed; a node without a quorum answers 500 and
//! changes nothing), call records ([`ReplicatedCdrs`]), conference participations and push
//! records ([`ReplicatedParticipations`], [`ReplicatedPushRecords`]), the licence documents
//! ([`ReplicatedLicence`]), and the privacy ledger's subject requests: erasure and the
//! restriction and objection flags ([`Replication::erase`], [`Replication::flag`]). Every
//! node applies every committed entry, in log order, to its own `pbx.redb` ([`NodeApplier`]);
//! registrar commands another node proposed also go to this node's registrar, so it routes
//! calls to phones registered anywhere (its own it applied to memory already).
//!
//! An erasure leaves, on every node, a tombstone of the erased number made with that node's
//! privacy key; snapshots carry the tombstones. The compactor ([`start_compactor`]) purges the
//! log and then rewrites `raft.redb` and, when an erasure or a retention change made it due,
//! `pbx.redb` into fresh files, so the erased bytes leave every file of the data directory
//! ([`SCRUB_BOUND`]).

pub mod cli;

use crate::secrets::PrivacyKey;
use crate::storage::{CdrSink, Erased, Flags, Storage, Tombstone};
use pbx_actors::Timestamp;
use pbx_actors::cdr::Cdr;
use pbx_actors::conference::core::Participation;
use pbx_actors::entry::{Entry, EntryStore, apply_entry};
use pbx_actors::licence::{LicenceStore, Stored, StoredUnlocks};
use pbx_actors::privacy::{AuditEntry, AuditEvent, Right, Subject};
use pbx_actors::push::PushRecord;
use pbx_actors::registrar::{
    Binding, BindingV1, Extension, Forwarding, RegistrarCommand, RegistrarMsg, RegistrarStore,
};
use pbx_actors::store::StoreError;
use pbx_cluster::raft::{Applier, ApplyError, NodeId, Replica, Request, WriteError};
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest an API request waits for its committed entry to be applied on this node.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// What a write refused for want of a quorum tells its client to wait before trying again (a
/// SIP 503's Retry-After): about a few elections (1–2 s each), short enough that a phone
/// re-registers soon after the cluster is whole.
pub const NO_QUORUM_RETRY_AFTER_S: u32 = 5;

/// The store ports' error for a failed cluster write: no quorum stays no quorum, so the
/// registrar can answer 503 rather than 500.
pub fn store_error(error: WriteError) -> StoreError {
    match error {
        WriteError::NoQuorum(_) => StoreError::NoQuorum { retry_after_s: NO_QUORUM_RETRY_AFTER_S },
        WriteError::Failed(reason) => StoreError::Replication(reason),
    }
}
/// How often the Raft log is compacted (snapshot, then purge): the longest a change, and the
/// personal data in it, stays in `raft.redb`'s log after it was applied (category `cluster-log`).
pub const COMPACTION_INTERVAL: Duration = Duration::from_secs(3600);
/// After an erasure is applied here (or a retention run changed records), the log is
/// compacted and the files rewritten this soon — in one go with any erasures that follow
/// within it, and with the registrar's own removals that follow the erasure.
pub const ERASURE_COMPACTION_DELAY: Duration = Duration::from_secs(2);
/// Longest the compactor waits for a purge on a leader still sending those entries to a
/// follower, before it tries again.
const PURGE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed scrub (no purge in time, a disk error), the next try.
const SCRUB_RETRY: Duration = Duration::from_secs(30);
/// The bound docs/PRIVACY.md states: an erasure's bytes (and an anonymised or masked record's
/// old ones) are gone from every file of the data directory this long after the erasure was
/// applied (the retention run ended): the delay, the purge's wait, and 3 s for the rewrites
/// (tens of MB of data at the copy speed measured, docs/PRIVACY.md). A purge not done in its
/// wait is tried again [`SCRUB_RETRY`] later.
pub const SCRUB_BOUND: Duration = Duration::from_secs(15);
const _: () = assert!(ERASURE_COMPACTION_DELAY.as_secs() + PURGE_TIMEOUT.as_secs() + 3 <= SCRUB_BOUND.as_secs());

fn encode(entry: Entry) -> Result<Vec<u8>, String> {
    entry.encode()
}

/// The replicated state as a snapshot carries it.
#[derive(Serialize, Deserialize)]
enum SnapshotV {
    V1 {
        extensions: Vec<Extension>,
        bindings: Vec<BindingV1>,
        cdrs: Vec<Cdr>,
        licence: Option<Stored>,
        unlocks: Option<StoredUnlocks>,
        flags: BTreeMap<String, Flags>,
    },
    /// With the erasure tombstones, each under the fingerprint of the key that made it.
    V2 {
        extensions: Vec<Extension>,
        bindings: Vec<BindingV1>,
        cdrs: Vec<Cdr>,
        licence: Option<Stored>,
        unlocks: Option<StoredUnlocks>,
        flags: BTreeMap<String, Flags>,
        tombstones: Vec<Tombstone>,
    },
    /// Bindings with the NAT flag (issue 15).
    V3 {
        extensions: Vec<Extension>,
        bindings: Vec<Binding>,
        cdrs: Vec<Cdr>,
        licence: Option<Stored>,
        unlocks: Option<StoredUnlocks>,
        flags: BTreeMap<String, Flags>,
        tombstones: Vec<Tombstone>,
    },
    /// With the records replicated since issues 16 and 17: conference participations and push
    /// records (a node that joins, or falls behind a compaction, has them too).
    V4 {
        extensions: Vec<Extension>,
        bindings: Vec<Binding>,
        cdrs: Vec<Cdr>,
        participations: Vec<Participation>,
        push_records: Vec<PushRecord>,
        licence: Option<Stored>,
        unlocks: Option<StoredUnlocks>,
        flags: BTreeMap<String, Flags>,
        tombstones: Vec<Tombstone>,
    },
    /// With call forwarding (issue 18).
    V5 {
        extensions: Vec<Extension>,
        bindings: Vec<Binding>,
        forwarding: Vec<(String, Forwarding)>,
        /// Ring-group members logged out: (group, member).
        logged_out: Vec<(String, String)>,
        cdrs: Vec<Cdr>,
        participations: Vec<Participation>,
        push_records: Vec<PushRecord>,
        licence: Option<Stored>,
        unlocks: Option<StoredUnlocks>,
        flags: BTreeMap<String, Flags>,
        tombstones: Vec<Tombstone>,
    },
}

fn bindings_from_v1(bindings: Vec<BindingV1>) -> Vec<Binding> {
    bindings.into_iter().map(Into::into).collect()
}

/// Where applied changes of other nodes go before the registrar runs, and after.
enum Delivery {
    Pending(Vec<RegistrarCommand>),
    Registrar(ActorRef<RegistrarMsg>),
}

/// Applies committed entries to the node's storage and (other nodes' registrar commands) to
/// its registrar.
pub struct NodeApplier {
    me: NodeId,
    storage: Arc<Storage>,
    /// Makes the tombstone of an erased number (this node's key: the pseudonym the node's
    /// audit uses too).
    key: PrivacyKey,
    delivery: Mutex<Delivery>,
    /// What this node's own erasures erased here, for the API request that asked for them.
    erased: Mutex<HashMap<(String, Timestamp), Erased>>,
}

/// The same audit entry, with the records a node changed.
fn with_records(mut audit: AuditEntry, n: u64) -> AuditEntry {
    if let AuditEvent::SubjectRequest { records, .. } = &mut audit.event {
        *records = n;
    }
    audit
}

/// What a restriction or objection request does to a subject's flags.
pub fn change_flags(flags: &mut Flags, right: Right, at: Timestamp) {
    match right {
        Right::Restriction => flags.restricted_since = flags.restricted_since.or(Some(at)),
        Right::RestrictionLifted => flags.restricted_since = None,
        Right::Objection => flags.objected_since = flags.objected_since.or(Some(at)),
        Right::ObjectionWithdrawn => flags.objected_since = None,
        Right::Access | Right::Erasure | Right::Rectification => {}
    }
}

impl NodeApplier {
    pub fn new(me: NodeId, storage: Arc<Storage>, key: PrivacyKey) -> Arc<NodeApplier> {
        Arc::new(NodeApplier {
            me,
            storage,
            key,
            delivery: Mutex::new(Delivery::Pending(Vec::new())),
            erased: Mutex::default(),
        })
    }

    /// The node's storage, where committed entries land.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The node's privacy key, which makes its tombstones.
    pub fn key(&self) -> &PrivacyKey {
        &self.key
    }

    /// From now on other nodes' changes go to `registrar`, starting with those applied since
    /// the node started (the registrar restored from storage before some of them; applying a
    /// put or remove again is harmless).
    pub fn connect(&self, registrar: ActorRef<RegistrarMsg>) {
        let mut delivery = self.delivery.lock().expect("delivery lock");
        if let Delivery::Pending(pending) = std::mem::replace(&mut *delivery, Delivery::Registrar(registrar.clone()))
            && !pending.is_empty()
        {
            let _ = registrar.cast(RegistrarMsg::Replicated(pending));
        }
    }

    /// The registrar is being restarted: other nodes' changes wait (as at start) until
    /// `connect` hands them to the new one, which loads storage after this call — so nothing
    /// applied in between is missed. A node still waiting for its first registrar keeps what
    /// it has.
    pub fn disconnect(&self) {
        let mut delivery = self.delivery.lock().expect("delivery lock");
        if matches!(*delivery, Delivery::Registrar(_)) {
            *delivery = Delivery::Pending(Vec::new());
        }
    }

    /// `others` to the registrar; before it runs, `all` wait for it (this node's own entries
    /// replayed at start may postdate what the registrar restored).
    fn deliver(&self, all: &[RegistrarCommand], others: Vec<RegistrarCommand>) {
        match &mut *self.delivery.lock().expect("delivery lock") {
            Delivery::Pending(pending) => pending.extend_from_slice(all),
            Delivery::Registrar(r) if !others.is_empty() => {
                let _ = r.cast(RegistrarMsg::Replicated(others));
            }
            Delivery::Registrar(_) => {}
        }
    }

    /// One committed entry, applied as every store applies it ([`apply_entry`]).
    fn apply_one(&self, origin: NodeId, entry: Entry) -> Result<(), ApplyError> {
        apply_entry(&mut Applying { applier: self, origin }, entry)
    }
}

/// The node's applier applying one entry from `origin`.
struct Applying<'a> {
    applier: &'a NodeApplier,
    origin: NodeId,
}

impl EntryStore for Applying<'_> {
    type Error = ApplyError;

    /// Stored, then (another node's) to this node's registrar.
    fn apply_registrar(&mut self, commands: Vec<RegistrarCommand>) -> Result<(), ApplyError> {
        self.applier.storage.apply(&commands).map_err(ApplyError::storage)?;
        let others = if self.origin == self.applier.me { Vec::new() } else { commands.clone() };
        self.applier.deliver(&commands, others);
        Ok(())
    }

    fn put_cdrs(&mut self, cdrs: Vec<Cdr>) -> Result<(), ApplyError> {
        self.applier.storage.put_cdrs(&cdrs).map_err(ApplyError::storage)
    }

    fn put_participations(&mut self, participations: Vec<Participation>) -> Result<(), ApplyError> {
        self.applier.storage.put_participations(&participations).map_err(ApplyError::storage)
    }

    fn put_push_records(&mut self, records: Vec<PushRecord>) -> Result<(), ApplyError> {
        self.applier.storage.put_push_records(&records).map_err(ApplyError::storage)
    }

    fn save_licence(&mut self, stored: Stored) -> Result<(), ApplyError> {
        self.applier.storage.save_licence(&stored).map_err(ApplyError::storage)
    }

    fn save_unlocks(&mut self, stored: StoredUnlocks) -> Result<(), ApplyError> {
        self.applier.storage.save_unlocks(&stored).map_err(ApplyError::storage)
    }

    /// Leaves a tombstone made with this node's privacy key; this node's own erasures keep
    /// what they erased for the API request that asked.
    fn erase(&mut self, subject: String, audit: AuditEntry) -> Result<(), ApplyError> {
        let at = audit.at;
        let parsed = Subject::parse(&subject).map_err(|e| ApplyError::undecodable("erasure subject", e))?;
        let tombstone = self.applier.key.tombstone(&parsed, at);
        let erased = self
            .applier
            .storage
            .erase(&parsed, tombstone.as_ref(), |n| with_records(audit, n))
            .map_err(ApplyError::storage)?;
        if self.origin == self.applier.me {
            self.applier.erased.lock().expect("erased lock").insert((subject, at), erased);
        }
        Ok(())
    }

    fn flag(&mut self, subject: String, right: Right, at: Timestamp, audit: AuditEntry) -> Result<(), ApplyError> {
        self.applier
            .storage
            .update_flags(&subject, |f| change_flags(f, right, at), &audit)
            .map_err(ApplyError::storage)?;
        Ok(())
    }
}

fn decode(request: &Request) -> Result<Entry, ApplyError> {
    Entry::decode(&request.payload)
        .map_err(|e| ApplyError::undecodable(format!("replicated entry from node {}", request.origin), e))
}

impl Applier for NodeApplier {
    fn apply(&self, requests: &[&Request]) -> Result<(), ApplyError> {
        for request in requests {
            self.apply_one(request.origin, decode(request)?)?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, ApplyError> {
        let s = &self.storage;
        let state = s.load().map_err(ApplyError::storage)?;
        let (licence, unlocks) = s.load_licence().map_err(ApplyError::storage)?;
        postcard::to_allocvec(&SnapshotV::V5 {
            extensions: state.extensions,
            bindings: state.bindings,
            forwarding: state.forwarding,
            logged_out: state.logged_out,
            cdrs: s.all_cdrs().map_err(ApplyError::storage)?,
            participations: s.all_participations().map_err(ApplyError::storage)?,
            push_records: s.all_push_records().map_err(ApplyError::storage)?,
            licence,
            unlocks,
            flags: s.all_flags().map_err(ApplyError::storage)?,
            tombstones: s.tombstones().map_err(ApplyError::storage)?.into_values().collect(),
        })
        .map_err(ApplyError::storage)
    }

    fn install(&self, snapshot: &[u8]) -> Result<(), ApplyError> {
        // Snapshots before V4 carry no participations or push records: none are added. Before
        // V5 no forwarding: there was none.
        let (extensions, bindings, cdrs, licence, unlocks, flags, tombstones, records, (forwarding, logged_out)) =
            match postcard::from_bytes(snapshot).map_err(|e| ApplyError::undecodable("snapshot", e))? {
                SnapshotV::V1 { extensions, bindings, cdrs, licence, unlocks, flags } => {
                    let bindings = bindings_from_v1(bindings);
                    (extensions, bindings, cdrs, licence, unlocks, flags, Vec::new(), None, Default::default())
                }
                SnapshotV::V2 { extensions, bindings, cdrs, licence, unlocks, flags, tombstones } => {
                    let bindings = bindings_from_v1(bindings);
                    (extensions, bindings, cdrs, licence, unlocks, flags, tombstones, None, Default::default())
                }
                SnapshotV::V3 { extensions, bindings, cdrs, licence, unlocks, flags, tombstones } => {
                    (extensions, bindings, cdrs, licence, unlocks, flags, tombstones, None, Default::default())
                }
                SnapshotV::V4 {
                    extensions,
                    bindings,
                    cdrs,
                    participations,
                    push_records,
                    licence,
                    unlocks,
                    flags,
                    tombstones,
                } => {
                    let records = Some((participations, push_records));
                    (extensions, bindings, cdrs, licence, unlocks, flags, tombstones, records, Default::default())
                }
                SnapshotV::V5 {
                    extensions,
                    bindings,
                    forwarding,
                    logged_out,
                    cdrs,
                    participations,
                    push_records,
                    licence,
                    unlocks,
                    flags,
                    tombstones,
                } => {
                    let records = Some((participations, push_records));
                    (extensions, bindings, cdrs, licence, unlocks, flags, tombstones, records, (forwarding, logged_out))
                }
            };
        let s = &self.storage;
        // Tombstones first: a crash part-way must not leave the extensions without them.
        s.put_tombstones(&tombstones).map_err(ApplyError::storage)?;
        let before = s.load().map_err(ApplyError::storage)?;
        s.replace_registrar(&extensions, &bindings, &forwarding, &logged_out).map_err(ApplyError::storage)?;
        // Records only ever leave by retention, which every node applies by the same rules:
        // adding the snapshot's is enough.
        s.put_cdrs(&cdrs).map_err(ApplyError::storage)?;
        if let Some((participations, push_records)) = &records {
            s.put_participations(participations).map_err(ApplyError::storage)?;
            s.put_push_records(push_records).map_err(ApplyError::storage)?;
        }
        if let Some(l) = &licence {
            s.save_licence(l).map_err(ApplyError::storage)?;
        }
        if let Some(u) = &unlocks {
            s.save_unlocks(u).map_err(ApplyError::storage)?;
        }
        s.replace_flags(&flags).map_err(ApplyError::storage)?;
        // The registrar learns the difference: what went, then what is.
        let mut commands: Vec<RegistrarCommand> = before
            .bindings
            .into_iter()
            .filter(|b| !bindings.iter().any(|n| n.aor == b.aor && n.contact == b.contact))
            .map(|b| RegistrarCommand::RemoveBinding { aor: b.aor, contact: b.contact })
            .collect();
        commands.extend(
            before
                .extensions
                .into_iter()
                .filter(|e| !extensions.iter().any(|n| n.number == e.number))
                .map(|e| RegistrarCommand::RemoveExtension { number: e.number }),
        );
        commands.extend(extensions.into_iter().map(RegistrarCommand::PutExtension));
        commands.extend(bindings.into_iter().map(RegistrarCommand::PutBinding));
        // Forwarding the snapshot does not name is off.
        commands.extend(
            before
                .forwarding
                .into_iter()
                .filter(|(n, _)| !forwarding.iter().any(|(m, _)| m == n))
                .map(|(number, _)| RegistrarCommand::SetForwarding { number, forwarding: Forwarding::default() }),
        );
        commands.extend(
            forwarding.into_iter().map(|(number, forwarding)| RegistrarCommand::SetForwarding { number, forwarding }),
        );
        // Log-outs likewise: those the snapshot lacks are log-ins.
        let login =
            |(group, member): (String, String), logged_in| RegistrarCommand::GroupLogin { group, member, logged_in };
        commands
            .extend(before.logged_out.into_iter().filter(|pair| !logged_out.contains(pair)).map(|p| login(p, true)));
        commands.extend(logged_out.into_iter().map(|p| login(p, false)));
        self.deliver(&commands, commands.clone());
        Ok(())
    }
}

/// Compacts the node's Raft log every [`COMPACTION_INTERVAL`], and [`ERASURE_COMPACTION_DELAY`]
/// after the storage says a rewrite is due (an erasure applied, a retention run that changed
/// records, a snapshot installed; or left due by the last run), so the log never holds
/// personal data longer than that after it changed. After each compaction `raft.redb` is
/// rewritten (the purged entries and the replaced snapshot leave the file); when a rewrite is
/// due, once the purge is done, `pbx.redb` too.
pub fn start_compactor(replica: Arc<Replica>, applier: Arc<NodeApplier>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let storage = applier.storage.clone();
        if matches!(storage.rewrite_due(), Ok(Some(_))) {
            storage.want_rewrite();
        }
        let mut wait = COMPACTION_INTERVAL;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = storage.rewrite_wanted() => tokio::time::sleep(ERASURE_COMPACTION_DELAY).await,
            }
            wait = match compact_and_scrub(&replica, &storage).await {
                Ok(()) => COMPACTION_INTERVAL,
                Err(e) => {
                    tracing::warn!(error = %e, retry_s = SCRUB_RETRY.as_secs(), "compaction or rewrite not finished");
                    metrics::counter!("pbx_storage_rewrite_failures_total").increment(1);
                    SCRUB_RETRY
                }
            }
        }
    })
}

/// One turn of the compactor: snapshot and purge; wait for the purge when a rewrite of
/// `pbx.redb` is due; rewrite `raft.redb`, then (if due) `pbx.redb`.
async fn compact_and_scrub(replica: &Arc<Replica>, storage: &Arc<Storage>) -> Result<(), String> {
    let due = storage.rewrite_due().map_err(|e| e.to_string())?;
    let upto = replica.compact(APPLY_TIMEOUT).await.map_err(|e| e.to_string())?;
    metrics::counter!("pbx_raft_compactions_total").increment(1);
    tracing::debug!(?upto, "Raft log compacted");
    if let (Some(upto), Some(_)) = (upto, due) {
        // The purge runs in Raft's own time; the file is rewritten once it is done.
        replica
            .raft()
            .wait(Some(PURGE_TIMEOUT))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= upto), "log purged up to the snapshot")
            .await
            .map_err(|e| format!("purge up to {upto}: {e}"))?;
    }
    let r = replica.clone();
    let raft = tokio::task::spawn_blocking(move || r.rewrite_file()).await.map_err(|e| e.to_string())??;
    metrics::histogram!("pbx_storage_rewrite_seconds", "file" => "raft.redb").record(raft.held.as_secs_f64());
    let Some(due) = due else { return Ok(()) };
    let s = storage.clone();
    let pbx = tokio::task::spawn_blocking(move || s.rewrite(Some(due))).await.map_err(|e| e.to_string())?;
    let pbx = pbx.map_err(|e| e.to_string())?;
    metrics::histogram!("pbx_storage_rewrite_seconds", "file" => "pbx.redb").record(pbx.held.as_secs_f64());
    metrics::counter!("pbx_storage_rewrites_total").increment(1);
    tracing::info!(
        raft_bytes = raft.bytes_after,
        raft_ms = raft.held.as_millis() as u64,
        pbx_bytes = pbx.bytes_after,
        pbx_ms = pbx.held.as_millis() as u64,
        "data files rewritten: erased, masked and anonymised data is gone from them"
    );
    Ok(())
}

/// Writes entries through the cluster, from threads that are not the runtime's (the writers)
/// or from async handlers.
#[derive(Clone)]
pub struct Replication {
    pub replica: Arc<Replica>,
    pub applier: Arc<NodeApplier>,
    runtime: tokio::runtime::Handle,
}

impl Replication {
    pub fn new(replica: Arc<Replica>, applier: Arc<NodeApplier>, runtime: tokio::runtime::Handle) -> Replication {
        Replication { replica, applier, runtime }
    }

    /// Commits `entry`; blocks the calling (non-runtime) thread.
    fn write_blocking(&self, entry: Entry) -> Result<u64, StoreError> {
        let payload = encode(entry).map_err(StoreError::Corrupt)?;
        self.runtime.block_on(self.replica.write(payload)).map_err(store_error)
    }

    /// Commits `entry` and waits until this node has applied it too.
    async fn write_here(&self, entry: Entry) -> Result<(), StoreError> {
        let index = self.replica.write(encode(entry).map_err(StoreError::Corrupt)?).await.map_err(store_error)?;
        self.replica.wait_applied(index, APPLY_TIMEOUT).await.map_err(store_error)
    }

    /// Returns once every entry committed before the call is applied on this node: it commits
    /// an empty registrar batch (which every node, old or new, applies as nothing) and waits
    /// for it here.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.write_here(Entry::Registrar(Vec::new())).await
    }

    /// Erasure on every node: committed, then applied here; what it erased here.
    pub async fn erase(&self, subject: &Subject, audit: AuditEntry) -> Result<Erased, StoreError> {
        let key = (subject.id(), audit.at);
        self.write_here(Entry::Erase { subject: subject.id(), audit }).await?;
        let erased = self.applier.erased.lock().expect("erased lock").remove(&key);
        Ok(erased.unwrap_or_default())
    }

    /// A restriction or objection on every node; the subject's flags here afterwards.
    pub async fn flag(
        &self,
        subject: &Subject,
        right: Right,
        at: Timestamp,
        audit: AuditEntry,
    ) -> Result<Flags, StoreError> {
        self.write_here(Entry::Flag { subject: subject.id(), right, at, audit }).await?;
        let flags = self.applier.storage.all_flags().map_err(|e| StoreError::Disk(e.to_string()))?;
        Ok(flags.get(&subject.id()).copied().unwrap_or_default())
    }
}

/// The registrar's store on a cluster node: a batch of commands is one Raft entry, stored
/// once a majority holds it. Called on the registrar's writer thread, never on the runtime.
pub struct ReplicatedStore(pub Replication);

impl RegistrarStore for ReplicatedStore {
    fn apply(&self, commands: &[RegistrarCommand]) -> Result<(), StoreError> {
        if commands.is_empty() {
            return Ok(());
        }
        self.0.write_blocking(Entry::Registrar(commands.to_vec())).map(|_| ())
    }
}

/// The CDR writer's sink on a cluster node. A batch the cluster cannot commit (no quorum) is
/// kept in this node's file rather than lost, and counted: the call happened.
pub struct ReplicatedCdrs(pub Replication);

impl CdrSink for ReplicatedCdrs {
    fn put_cdrs(&self, cdrs: &[Cdr]) -> Result<(), StoreError> {
        match self.0.write_blocking(Entry::Cdrs(cdrs.to_vec())) {
            Ok(_) => Ok(()),
            Err(reason) => {
                tracing::warn!(%reason, records = cdrs.len(), "call records not replicated; kept on this node only");
                metrics::counter!("pbx_cdrs_unreplicated_total").increment(cdrs.len() as u64);
                self.0.applier.storage.put_cdrs(cdrs).map_err(|e| StoreError::Disk(e.to_string()))
            }
        }
    }
}

/// Conference participation records go to every node like call records; without a quorum
/// they are kept on this node.
pub struct ReplicatedParticipations(pub Replication);

impl ReplicatedParticipations {
    /// Blocks until stored: call it off the async runtime.
    pub fn put(&self, participations: &[Participation]) -> Result<(), StoreError> {
        match self.0.write_blocking(Entry::Participations(participations.to_vec())) {
            Ok(_) => Ok(()),
            Err(reason) => {
                tracing::warn!(%reason, records = participations.len(), "participations not replicated; kept on this node only");
                self.0.applier.storage.put_participations(participations).map_err(|e| StoreError::Disk(e.to_string()))
            }
        }
    }
}

/// Push records go to every node like call records; without a quorum they are kept on this
/// node.
pub struct ReplicatedPushRecords(pub Replication);

impl ReplicatedPushRecords {
    /// Blocks until stored: call it off the async runtime.
    pub fn put(&self, records: &[PushRecord]) -> Result<(), StoreError> {
        match self.0.write_blocking(Entry::PushRecords(records.to_vec())) {
            Ok(_) => Ok(()),
            Err(reason) => {
                tracing::warn!(%reason, records = records.len(), "push records not replicated; kept on this node only");
                self.0.applier.storage.put_push_records(records).map_err(|e| StoreError::Disk(e.to_string()))
            }
        }
    }
}

/// The licence store on a cluster node: the verified documents go to every node, so any of
/// them restarting during a licence-service outage knows what is licensed.
pub struct ReplicatedLicence(pub Replication);

impl LicenceStore for ReplicatedLicence {
    fn save_licence(&self, stored: &Stored) -> Result<(), StoreError> {
        self.0.write_blocking(Entry::Licence(stored.clone())).map(|_| ())
    }

    fn save_unlocks(&self, stored: &StoredUnlocks) -> Result<(), StoreError> {
        self.0.write_blocking(Entry::Unlocks(stored.clone())).map(|_| ())
    }
}

/// What `GET /api/v1/cluster` reads: the replica and the actor mesh.
#[derive(Clone)]
pub struct ClusterApi {
    pub token: String,
    pub replica: Arc<Replica>,
    pub mesh: Arc<Mutex<Option<pbx_cluster::mesh::Mesh>>>,
}

impl ClusterApi {
    /// The replica's status, with which members this node has a live actor session with.
    pub fn status(&self) -> pbx_cluster::raft::Status {
        let mut status = self.replica.status();
        let connected = self.mesh.lock().expect("mesh lock").as_ref().map(|m| m.connected());
        for member in &mut status.members {
            if member.name != status.node {
                member.actor_link = connected.as_ref().map(|c| c.iter().any(|n| n.as_str() == member.name));
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::Timestamp;
    use pbx_actors::entry::{EntryV, EntryV1};
    use pbx_actors::registrar::RegistrarCommandV1;

    fn binding(aor: &str) -> Binding {
        Binding {
            aor: aor.into(),
            contact: format!("sip:{aor}@192.0.2.1:5060"),
            expires_at: Timestamp::from_secs(2_000_000_000),
            call_id: "c".into(),
            cseq: 1,
            source: "192.0.2.1:5060".parse().unwrap(),
            transport: pbx_actors::sip::Transport::Udp,
            user_agent: None,
            nat: false,
        }
    }

    fn entry(origin: NodeId, commands: Vec<RegistrarCommand>) -> Request {
        request(origin, Entry::Registrar(commands))
    }

    fn request(origin: NodeId, entry: Entry) -> Request {
        Request { origin, payload: encode(entry).unwrap() }
    }

    fn cdr(id: u64, caller: &str) -> Cdr {
        use pbx_actors::cdr::{Disposition, MediaCounters};
        Cdr {
            id,
            call_id: format!("call-{id}"),
            caller: caller.into(),
            callee: "101".into(),
            start: Timestamp::from_secs(1_000),
            answer: None,
            end: Timestamp::from_secs(1_010),
            disposition: Disposition::Answered,
            hangup: None,
            codec_caller: None,
            codec_callee: None,
            media: [MediaCounters::default(), MediaCounters::default()],
            follows: None,
            transfer: None,
        }
    }

    fn audit(right: Right) -> AuditEntry {
        let event = AuditEvent::SubjectRequest { right, subject: "p".into(), records: 0, outcome: "done".into() };
        AuditEntry { at: Timestamp::from_secs(2_000), event }
    }

    /// A registrar entry in the Raft log as the code before issue 15 wrote it (`EntryV::V1`,
    /// bindings without the NAT flag) still applies, each flag from the Contact rule; today's
    /// entries (V2) carry the flag as the registrar decided it, Via half included.
    #[test]
    fn entries_written_before_the_nat_flag_still_apply() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let applier = NodeApplier::new(1, storage.clone(), key(1));
        let believed = binding("100");
        let natted = Binding { contact: "sip:200@10.0.0.5:5060".into(), nat: true, ..binding("200") };
        let old: Vec<RegistrarCommandV1> = [&believed, &natted]
            .into_iter()
            .map(|b| RegistrarCommandV1::from(&RegistrarCommand::PutBinding(b.clone())))
            .collect();
        let v1 = Request { origin: 2, payload: postcard::to_allocvec(&EntryV::V1(EntryV1::Registrar(old))).unwrap() };
        // Only the Via said so: a V2 entry keeps it.
        let symmetric = Binding { nat: true, ..binding("300") };
        applier.apply(&[&v1, &entry(2, vec![RegistrarCommand::PutBinding(symmetric.clone())])]).unwrap();
        let mut loaded = storage.load().unwrap().bindings;
        loaded.sort_by(|a, b| a.aor.cmp(&b.aor));
        assert_eq!(loaded, [believed, natted, symmetric]);
    }

    /// A delivered push to `user`'s app for a call from `caller` (empty: a refresh push).
    fn push_record(user: &str, caller: &str) -> PushRecord {
        PushRecord {
            id: 4,
            at: Timestamp::from_secs(1_000),
            user: user.into(),
            caller: caller.into(),
            callee: user.into(),
            provider: "fcm".into(),
            device: "token-4".into(),
            source: "192.0.2.1:5060".parse().unwrap(),
            outcome: "delivered".into(),
        }
    }

    /// A push-record entry lands in the node's file whoever proposed it, and once however
    /// often it is applied (a replay after a crash); an entry of the kind the log held before
    /// push records existed (participations, V2 as stored) still applies beside it.
    #[test]
    fn push_records_apply_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let applier = NodeApplier::new(1, storage.clone(), key(1));
        let record = push_record("100", "101");
        let pushes = request(2, Entry::PushRecords(vec![record.clone()]));
        // `Entry::Participations(vec![])` as a node before push records wrote it.
        let participations = Request { origin: 2, payload: vec![1, 6, 0] };
        applier.apply(&[&participations, &pushes, &pushes]).unwrap();
        applier.apply(&[&request(1, Entry::PushRecords(vec![record.clone()]))]).unwrap();
        let held = storage.subject_records(&Subject::Number("101".into())).unwrap();
        assert_eq!(held.push_records, [record]);
    }

    /// A snapshot carries conference participations and push records: a node that installs it
    /// holds them (its subject export and retention then cover them as on the others), and a
    /// snapshot taken before they were carried still installs.
    #[test]
    fn snapshots_carry_participations_push_records_and_forwarding() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let a_storage = Arc::new(Storage::open(dirs[0].path()).unwrap());
        let a = NodeApplier::new(1, a_storage.clone(), key(1));
        let participation = Participation {
            id: 9,
            room: "800".into(),
            number: "101".into(),
            arrived: Timestamp::from_secs(900),
            joined: Some(Timestamp::from_secs(910)),
            left: Timestamp::from_secs(960),
        };
        let record = push_record("101", "");
        let forwarding = Forwarding { busy: Some("102".into()), ..Default::default() };
        let set = RegistrarCommand::SetForwarding { number: "101".into(), forwarding: forwarding.clone() };
        a.apply(&[
            &request(2, Entry::Participations(vec![participation.clone()])),
            &request(2, Entry::PushRecords(vec![record.clone()])),
            &request(2, Entry::Registrar(vec![set.clone()])),
            &request(
                2,
                Entry::Registrar(vec![RegistrarCommand::GroupLogin {
                    group: "600".into(),
                    member: "101".into(),
                    logged_in: false,
                }]),
            ),
        ])
        .unwrap();
        let b_storage = Arc::new(Storage::open(dirs[1].path()).unwrap());
        let b = NodeApplier::new(2, b_storage.clone(), key(2));
        // b had forwarding of its own for 100, which the snapshot does not have: it goes.
        let stale = RegistrarCommand::SetForwarding { number: "100".into(), forwarding: forwarding.clone() };
        b.apply(&[&request(2, Entry::Registrar(vec![stale]))]).unwrap();
        b.install(&a.snapshot().unwrap()).unwrap();
        assert_eq!(b_storage.load().unwrap().forwarding, [("101".to_string(), forwarding.clone())]);
        assert_eq!(b_storage.load().unwrap().logged_out, [("600".to_string(), "101".to_string())]);
        {
            let Delivery::Pending(pending) = &*b.delivery.lock().unwrap() else { panic!("not connected yet") };
            let off = RegistrarCommand::SetForwarding { number: "100".into(), forwarding: Forwarding::default() };
            assert!(pending.contains(&set) && pending.contains(&off), "the registrar learns both");
        }
        assert_eq!(b_storage.all_participations().unwrap(), std::slice::from_ref(&participation));
        assert_eq!(b_storage.all_push_records().unwrap(), std::slice::from_ref(&record));
        let held = b_storage.subject_records(&Subject::Number("101".into())).unwrap();
        assert_eq!((held.participations, held.push_records), (vec![participation], vec![record]));
        // A V3 snapshot (none carried) installs and adds none.
        let v3 = postcard::to_allocvec(&SnapshotV::V3 {
            extensions: Vec::new(),
            bindings: Vec::new(),
            cdrs: Vec::new(),
            licence: None,
            unlocks: None,
            flags: BTreeMap::new(),
            tombstones: Vec::new(),
        })
        .unwrap();
        let c_dir = tempfile::tempdir().unwrap();
        let c_storage = Arc::new(Storage::open(c_dir.path()).unwrap());
        NodeApplier::new(3, c_storage.clone(), key(3)).install(&v3).unwrap();
        assert!(c_storage.all_push_records().unwrap().is_empty());
    }

    /// Every table of the Raft file is a declared place of personal data (`raft:<table>`).
    #[test]
    fn raft_tables_are_in_the_privacy_inventory() {
        use redb::TableHandle;
        let dir = tempfile::tempdir().unwrap();
        let db = pbx_cluster::raft::store::open(dir.path()).unwrap();
        let read = db.begin_read().unwrap();
        let tables: Vec<String> = read.list_tables().unwrap().map(|t| t.name().to_string()).collect();
        assert!(!tables.is_empty());
        for table in tables {
            let place = format!("raft:{table}");
            assert!(
                pbx_actors::privacy::INVENTORY.iter().any(|c| c.stored_in.contains(&place.as_str())),
                "Raft table {table} is not declared in the privacy inventory"
            );
        }
    }

    fn key(byte: u8) -> PrivacyKey {
        PrivacyKey::from_bytes(&[byte; 32])
    }

    /// Every kind of entry lands in storage whoever proposed it; a snapshot carries the state
    /// to another node and replaces what it had; erasure erases on every node and leaves each
    /// a tombstone made with its own key, which a later snapshot carries; a payload nobody can
    /// read stops the applier with a reason.
    #[test]
    fn applies_snapshots_and_refuses_garbage() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let a_storage = Arc::new(Storage::open(dirs[0].path()).unwrap());
        let a = NodeApplier::new(1, a_storage.clone(), key(1));
        let b_storage = Arc::new(Storage::open(dirs[1].path()).unwrap());
        let b = NodeApplier::new(2, b_storage.clone(), key(2));
        let put = |aor: &str| vec![RegistrarCommand::PutBinding(binding(aor))];
        a.apply(&[&entry(1, put("100")), &entry(2, put("200"))]).unwrap();
        a.apply(&[
            &request(2, Entry::Cdrs(vec![cdr(7, "100"), cdr(8, "200")])),
            &request(
                2,
                Entry::Flag {
                    subject: "200".into(),
                    right: Right::Restriction,
                    at: Timestamp::from_secs(5),
                    audit: audit(Right::Restriction),
                },
            ),
        ])
        .unwrap();
        b.apply(&[&entry(2, put("300"))]).unwrap();
        b.install(&a.snapshot().unwrap()).unwrap();
        let mut aors: Vec<String> = b_storage.load().unwrap().bindings.into_iter().map(|b| b.aor).collect();
        aors.sort();
        assert_eq!(aors, ["100", "200"]);
        assert_eq!(b_storage.all_cdrs().unwrap().len(), 2);
        assert_eq!(b_storage.all_flags().unwrap()["200"].restricted_since, Some(Timestamp::from_secs(5)));
        // Before the registrar connects, b kept what it must tell it: 300 went, 100 and 200 are.
        {
            let Delivery::Pending(pending) = &*b.delivery.lock().unwrap() else { panic!("not connected yet") };
            let gone = RegistrarCommand::RemoveBinding { aor: "300".into(), contact: binding("300").contact };
            assert!(pending.contains(&gone));
        }
        // An erasure proposed by b: both erase; b keeps what it erased for its API answer.
        let erase = request(2, Entry::Erase { subject: "200".into(), audit: audit(Right::Erasure) });
        a.apply(&[&erase]).unwrap();
        b.apply(&[&erase]).unwrap();
        for s in [&a_storage, &b_storage] {
            assert!(s.load().unwrap().bindings.iter().all(|b| b.aor != "200"));
            assert!(s.all_flags().unwrap().is_empty());
        }
        assert_eq!(b.erased.lock().unwrap().len(), 1);
        assert!(a.erased.lock().unwrap().is_empty(), "not a's request");
        let number = Subject::Number("200".into());
        for (s, k) in [(&a_storage, key(1)), (&b_storage, key(2))] {
            let tombstones = s.tombstones().unwrap();
            assert_eq!(tombstones.len(), 1);
            let t = &tombstones[&k.pseudonym(&number)];
            assert_eq!((t.key.as_str(), t.at), (k.fingerprint().as_str(), Timestamp::from_secs(2_000)));
            assert!(s.rewrite_due().unwrap().is_some(), "the erased bytes are to leave the file");
        }
        assert_ne!(key(1).pseudonym(&number), key(2).pseudonym(&number));
        // A node that missed the erasure gets a's tombstone with the snapshot, under a's key.
        let c_storage = Arc::new(Storage::open(dirs[2].path()).unwrap());
        let c = NodeApplier::new(3, c_storage.clone(), key(3));
        c.install(&a.snapshot().unwrap()).unwrap();
        assert_eq!(c_storage.tombstones().unwrap(), a_storage.tombstones().unwrap());
        // A snapshot of the first version (no tombstones) still installs.
        let v1 = postcard::to_allocvec(&SnapshotV::V1 {
            extensions: Vec::new(),
            bindings: vec![BindingV1::from(&binding("400"))],
            cdrs: Vec::new(),
            licence: None,
            unlocks: None,
            flags: BTreeMap::new(),
        })
        .unwrap();
        c.install(&v1).unwrap();
        assert_eq!(c_storage.load().unwrap().bindings.len(), 1);
        assert_eq!(c_storage.tombstones().unwrap().len(), 1, "installing never drops a tombstone");
        // A V2 snapshot (bindings without the NAT flag) installs with each flag from the
        // Contact rule: a Contact in the source's class is believed, a private one is not.
        let natted = Binding { contact: "sip:500@10.0.0.5:5060".into(), nat: true, ..binding("500") };
        let v2 = postcard::to_allocvec(&SnapshotV::V2 {
            extensions: Vec::new(),
            bindings: vec![BindingV1::from(&binding("400")), BindingV1::from(&natted)],
            cdrs: Vec::new(),
            licence: None,
            unlocks: None,
            flags: BTreeMap::new(),
            tombstones: Vec::new(),
        })
        .unwrap();
        c.install(&v2).unwrap();
        let mut loaded = c_storage.load().unwrap().bindings;
        loaded.sort_by(|a, b| a.aor.cmp(&b.aor));
        assert_eq!(loaded, [binding("400"), natted.clone()]);
        let garbage = Request { origin: 2, payload: vec![0xff, 0xff, 0xff] };
        let refused = a.apply(&[&garbage]).unwrap_err();
        assert!(
            matches!(&refused, ApplyError::Undecodable { what, .. } if what == "replicated entry from node 2"),
            "{refused}"
        );
        let refused = c.install(&[0xff, 0xff]).unwrap_err();
        assert!(matches!(&refused, ApplyError::Undecodable { what, .. } if what == "snapshot"), "{refused}");
    }
}

//! The privacy side of storage: the security log, the privacy audit, restriction and objection
//! flags, the retention reaper's batches, and the subject-rights reads and erasure.
//!
//! Each batch and each erasure is one durable redb transaction: all or nothing, so a crash
//! never leaves half a change, and every change is written so that doing it again changes
//! nothing more (deleted rows are gone; anonymised rows are marked; masked values no longer
//! match the subject).
//!
//! An erasure, and a retention batch that changed records, also mark the file for a rewrite
//! (in the same transaction): the node's compactor then copies the live rows into a fresh
//! file, so the erased or anonymised bytes leave the disk file as well as the tables.

use super::{
    BINDINGS, CDRS, EXTENSIONS, FORWARDING, PARTICIPATIONS, PRIVACY_AUDIT, PRIVACY_FLAGS, PUSH_RECORDS, SECURITY_LOG,
    Storage, StorageError, StoredBindingV, StoredCdrV, StoredExtensionV, StoredForwardingV, StoredParticipationV,
    StoredPushRecordV, TOMBSTONES, decode, mark_rewrite_due, redb_err,
};
use pbx_actors::Timestamp;
use pbx_actors::cdr::Cdr;
use pbx_actors::conference::core::Participation;
use pbx_actors::privacy::reaper::{Action, Batch};
use pbx_actors::privacy::{
    AuditEntry, AuditEvent, ERASED, SUBJECT_ID_MAX, SecurityEntry, SecurityEvent, Subject, flood_network,
};
use pbx_actors::push::PushRecord;
use pbx_actors::registrar::{Binding, Extension};
use pbx_actors::store::StoreError;
use redb::{Durability, ReadableTable};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

/// V1: one row per event, before flood aggregation (no `source_bits`, no `count`).
/// V2: [`SecurityEntry`] with both.
#[derive(Serialize, Deserialize)]
enum StoredSecurityV {
    V1(SecurityEntryV1),
    V2(SecurityEntry),
}

/// A security-log row as version 1 stored it.
#[derive(Serialize, Deserialize)]
struct SecurityEntryV1 {
    at: Timestamp,
    source: std::net::IpAddr,
    user: Option<String>,
    event: SecurityEvent,
    anonymised: bool,
}

impl From<SecurityEntryV1> for SecurityEntry {
    fn from(v1: SecurityEntryV1) -> SecurityEntry {
        let mut e = SecurityEntry::new(v1.at, v1.source, v1.user, v1.event);
        if v1.anonymised {
            // Already truncated and masked, and both are idempotent: this only marks it and
            // says so in `source_bits`.
            e.anonymise();
        }
        e
    }
}

#[derive(Serialize, Deserialize)]
enum StoredAuditV {
    V1(AuditEntry),
}

#[derive(Serialize, Deserialize)]
enum StoredFlagsV {
    V1(Flags),
}

#[derive(Serialize, Deserialize)]
enum StoredTombstoneV {
    V1 { key: String, at: Timestamp },
}

/// What is kept of an erased number: its keyed pseudonym — HMAC-SHA-256 with a node's privacy
/// key, the same the audit names it by — never the number. A config file entry whose number
/// has a tombstone is not applied at start, so the erasure is not undone (docs/PRIVACY.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub pseudonym: String,
    /// The fingerprint of the privacy key that made `pseudonym`: only that key's holder can
    /// match a number against it (on a cluster each node has its own key today).
    pub key: String,
    /// When the erasure was made.
    pub at: Timestamp,
}

/// A subject's restriction (Art. 18) and objection (Art. 21), and since when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    pub restricted_since: Option<Timestamp>,
    pub objected_since: Option<Timestamp>,
}

impl Flags {
    pub fn is_empty(&self) -> bool {
        self.restricted_since.is_none() && self.objected_since.is_none()
    }
}

/// The numbers and addresses under restriction: their records are kept, not shown.
pub fn restricted(flags: &BTreeMap<String, Flags>) -> std::collections::BTreeSet<String> {
    flags.iter().filter(|(_, f)| f.restricted_since.is_some()).map(|(id, _)| id.clone()).collect()
}

/// What the node's file holds about one subject (the registrar's and the calls' memory are
/// added by the caller).
#[derive(Debug, Default)]
pub struct SubjectRecords {
    pub extension: Option<Extension>,
    pub bindings: Vec<Binding>,
    pub cdrs: Vec<Cdr>,
    pub participations: Vec<Participation>,
    pub push_records: Vec<PushRecord>,
    pub security_log: Vec<SecurityEntry>,
    pub flags: Option<Flags>,
}

impl SubjectRecords {
    pub fn is_empty(&self) -> bool {
        self.extension.is_none()
            && self.bindings.is_empty()
            && self.cdrs.is_empty()
            && self.participations.is_empty()
            && self.push_records.is_empty()
            && self.security_log.is_empty()
            && self.flags.is_none()
    }
}

/// What an erasure changed, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub extension: u64,
    pub bindings: u64,
    pub cdrs_masked: u64,
    pub participations: u64,
    pub push_records: u64,
    pub security_log: u64,
    pub flags: u64,
}

impl Erased {
    pub fn total(&self) -> u64 {
        self.extension
            + self.bindings
            + self.cdrs_masked
            + self.participations
            + self.push_records
            + self.security_log
            + self.flags
    }
}

/// Whether a CDR is about `subject`: as caller or callee, or (an address) in its Call-ID.
fn cdr_involves(cdr: &Cdr, subject: &Subject) -> bool {
    match subject {
        Subject::Number(n) => cdr.involves(n),
        Subject::Ip(ip) => cdr.call_id.contains(&ip.to_string()),
    }
}

/// Whether a push record is about `subject`: as the woken user, caller or callee, or (an
/// address) as the address the woken app registered from.
fn push_involves(r: &PushRecord, subject: &Subject) -> bool {
    match subject {
        Subject::Number(n) => r.involves(n),
        Subject::Ip(ip) => r.source.ip().to_canonical() == *ip,
    }
}

/// A push record, from whichever version stored it.
pub(super) fn decode_push(key: (u64, u64), bytes: &[u8]) -> Result<PushRecord, StorageError> {
    let StoredPushRecordV::V1(r) = decode("push_records", || format!("{key:?}"), bytes)?;
    Ok(r)
}

/// Whether a security-log entry is about `subject`: its source, or the user it claimed.
fn security_involves(e: &SecurityEntry, subject: &Subject) -> bool {
    match subject {
        Subject::Number(n) => e.user.as_deref() == Some(n),
        Subject::Ip(ip) => e.source.to_canonical() == *ip,
    }
}

/// A security-log row's key: (time of its first event in µs, sequence number).
pub type SecurityKey = (u64, u64);

/// A security-log row, from whichever version stored it.
fn decode_security(key: SecurityKey, bytes: &[u8]) -> Result<SecurityEntry, StorageError> {
    Ok(match decode("security_log", || format!("{key:?}"), bytes)? {
        StoredSecurityV::V1(v1) => v1.into(),
        StoredSecurityV::V2(e) => e,
    })
}

/// A security-log row in the current version.
fn encode_security(e: &SecurityEntry) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(&StoredSecurityV::V2(e.clone())).map_err(redb_err)
}

impl Storage {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Stores security-log entries in one durable transaction, one row each (the writer
    /// aggregates first, see [`SecurityAggregator`]; this is for tests and benches).
    pub fn put_security_entries(&self, entries: &[SecurityEntry]) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        {
            let mut table = tx.open_table(SECURITY_LOG).map_err(redb_err)?;
            for e in entries {
                table.insert((e.at.as_micros(), self.next_seq()), encode_security(e)?.as_slice()).map_err(redb_err)?;
            }
        }
        tx.commit().map_err(redb_err)
    }

    /// Adds the aggregator's pending sums to their rows in one durable transaction: a row
    /// that exists absorbs its sum ([`SecurityEntry::absorb`]: its count grows, an erasure's
    /// mask stays), a missing one (new, or erased meanwhile) is written. Returns the rows made.
    pub fn merge_security_rows(&self, rows: &[(SecurityKey, SecurityEntry)]) -> Result<u64, StorageError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        let mut created = 0;
        {
            let mut table = tx.open_table(SECURITY_LOG).map_err(redb_err)?;
            for (key, sum) in rows {
                let stored = match table.get(*key).map_err(redb_err)? {
                    Some(v) => Some(decode_security(*key, v.value())?),
                    None => None,
                };
                let merged = match stored {
                    Some(mut row) => {
                        row.absorb(sum);
                        row
                    }
                    None => {
                        created += 1;
                        sum.clone()
                    }
                };
                table.insert(*key, encode_security(&merged)?.as_slice()).map_err(redb_err)?;
            }
        }
        tx.commit().map_err(redb_err)?;
        Ok(created)
    }

    /// The security log, newest first, at most `limit` entries.
    pub fn security_log(&self, limit: usize) -> Result<Vec<SecurityEntry>, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(SECURITY_LOG).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(redb_err)?.rev().take(limit) {
            let (k, v) = row.map_err(redb_err)?;
            out.push(decode_security(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Stores one audit entry durably.
    pub fn put_audit(&self, entry: &AuditEntry) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        insert_audit(&tx, entry, self.next_seq())?;
        tx.commit().map_err(redb_err)
    }

    /// Audit entries, newest first, those `keep` accepts, at most `limit`; reads at most
    /// `rows_max` rows.
    pub fn audit(
        &self,
        limit: usize,
        rows_max: usize,
        keep: impl Fn(&AuditEntry) -> bool,
    ) -> Result<Vec<AuditEntry>, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(PRIVACY_AUDIT).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(redb_err)?.rev().take(rows_max) {
            let (k, v) = row.map_err(redb_err)?;
            let StoredAuditV::V1(e) = decode("privacy_audit", || format!("{:?}", k.value()), v.value())?;
            if keep(&e) {
                out.push(e);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every subject's flags.
    pub fn all_flags(&self) -> Result<BTreeMap<String, Flags>, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(PRIVACY_FLAGS).map_err(redb_err)?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let StoredFlagsV::V1(f) = decode("privacy_flags", || k.value().to_string(), v.value())?;
            out.insert(k.value().to_string(), f);
        }
        Ok(out)
    }

    /// Replaces every subject's flags with these (a cluster node installing a snapshot).
    pub fn replace_flags(&self, flags: &BTreeMap<String, Flags>) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        {
            let mut table = tx.open_table(PRIVACY_FLAGS).map_err(redb_err)?;
            table.retain(|_, _| false).map_err(redb_err)?;
            for (subject, f) in flags {
                let value = postcard::to_allocvec(&StoredFlagsV::V1(*f)).map_err(redb_err)?;
                table.insert(subject.as_str(), value.as_slice()).map_err(redb_err)?;
            }
        }
        tx.commit().map_err(redb_err)
    }

    /// Changes one subject's flags with `change` and stores them with the audit entry in one
    /// transaction (flags that end up empty are deleted). Returns the new flags.
    pub fn update_flags(
        &self,
        subject: &str,
        change: impl FnOnce(&mut Flags),
        audit: &AuditEntry,
    ) -> Result<Flags, StorageError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        let flags = {
            let mut table = tx.open_table(PRIVACY_FLAGS).map_err(redb_err)?;
            let mut flags = match table.get(subject).map_err(redb_err)? {
                Some(v) => {
                    let StoredFlagsV::V1(f) = decode("privacy_flags", || subject.to_string(), v.value())?;
                    f
                }
                None => Flags::default(),
            };
            change(&mut flags);
            if flags.is_empty() {
                table.remove(subject).map_err(redb_err)?;
            } else {
                let value = postcard::to_allocvec(&StoredFlagsV::V1(flags)).map_err(redb_err)?;
                table.insert(subject, value.as_slice()).map_err(redb_err)?;
            }
            flags
        };
        insert_audit(&tx, audit, self.next_seq())?;
        tx.commit().map_err(redb_err)?;
        Ok(flags)
    }

    /// Everything the file holds about `subject`. Reads whole tables: an admin's rare request.
    pub fn subject_records(&self, subject: &Subject) -> Result<SubjectRecords, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let mut out = SubjectRecords::default();
        if let Subject::Number(n) = subject
            && let Some(v) = tx.open_table(EXTENSIONS).map_err(redb_err)?.get(n.as_str()).map_err(redb_err)?
        {
            let StoredExtensionV::V1(e) = decode("extensions", || n.clone(), v.value())?;
            out.extension = Some(e);
        }
        for row in tx.open_table(BINDINGS).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let b = decode::<StoredBindingV>("bindings", || k.value().to_string(), v.value())?.into_binding();
            if b.involves(subject) {
                out.bindings.push(b);
            }
        }
        for row in tx.open_table(CDRS).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let c = decode::<StoredCdrV>("cdrs", || format!("{:?}", k.value()), v.value())?.into_cdr();
            if cdr_involves(&c, subject) {
                out.cdrs.push(c);
            }
        }
        if let Subject::Number(n) = subject {
            for row in tx.open_table(PARTICIPATIONS).map_err(redb_err)?.iter().map_err(redb_err)? {
                let (k, v) = row.map_err(redb_err)?;
                let StoredParticipationV::V1(p) =
                    decode("conference_participations", || format!("{:?}", k.value()), v.value())?;
                if p.involves(n) {
                    out.participations.push(p);
                }
            }
        }
        for row in tx.open_table(PUSH_RECORDS).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let r = decode_push(k.value(), v.value())?;
            if push_involves(&r, subject) {
                out.push_records.push(r);
            }
        }
        for row in tx.open_table(SECURITY_LOG).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let e = decode_security(k.value(), v.value())?;
            if security_involves(&e, subject) {
                out.security_log.push(e);
            }
        }
        let id = subject.id();
        if let Some(v) = tx.open_table(PRIVACY_FLAGS).map_err(redb_err)?.get(id.as_str()).map_err(redb_err)? {
            let StoredFlagsV::V1(f) = decode("privacy_flags", || id.clone(), v.value())?;
            out.flags = Some(f);
        }
        Ok(out)
    }

    /// Erases `subject` from every table in one durable transaction, with its audit entry: the
    /// extension and its bindings (or the bindings from or to the address) are deleted; in CDRs
    /// the subject becomes [`ERASED`] and the other party's record stays (a caller's Call-ID,
    /// which its phone made and which often names its address, goes too); its conference
    /// participations and the push records naming it (or sent to a phone at the address) are
    /// deleted; security-log entries
    /// from the address are deleted, and the subject's number in others becomes [`ERASED`];
    /// restriction and objection flags are deleted; an erased number's `tombstone` is kept.
    /// Doing it again changes nothing. The file is marked for a rewrite
    /// ([`Storage::rewrite`]): until then the erased bytes may linger in freed pages.
    pub fn erase(
        &self,
        subject: &Subject,
        tombstone: Option<&Tombstone>,
        audit: impl FnOnce(u64) -> AuditEntry,
    ) -> Result<Erased, StorageError> {
        let mut tx = self.db.begin_write().map_err(redb_err)?;
        tx.set_durability(Durability::Immediate).map_err(redb_err)?;
        let mut erased = Erased::default();
        {
            if let Subject::Number(n) = subject {
                let mut extensions = tx.open_table(EXTENSIONS).map_err(redb_err)?;
                erased.extension += u64::from(extensions.remove(n.as_str()).map_err(redb_err)?.is_some());
                super::remove_member_logouts(&mut tx.open_table(super::GROUP_LOGOUTS).map_err(redb_err)?, n)?;
                // Its call forwarding goes with it, and so does every forward naming it.
                let mut forwarding = tx.open_table(FORWARDING).map_err(redb_err)?;
                forwarding.remove(n.as_str()).map_err(redb_err)?;
                let mut naming = Vec::new();
                for row in forwarding.iter().map_err(redb_err)? {
                    let (k, v) = row.map_err(redb_err)?;
                    let StoredForwardingV::V1(f) = decode("call_forwarding", || k.value().to_string(), v.value())?;
                    if f.names(n) {
                        naming.push((k.value().to_string(), f));
                    }
                }
                for (number, mut f) in naming {
                    for slot in [&mut f.always, &mut f.busy, &mut f.no_answer] {
                        if slot.as_deref() == Some(n.as_str()) {
                            *slot = None;
                        }
                    }
                    if f.is_off() {
                        forwarding.remove(number.as_str()).map_err(redb_err)?;
                    } else {
                        let value = postcard::to_allocvec(&StoredForwardingV::V1(f)).map_err(redb_err)?;
                        forwarding.insert(number.as_str(), value.as_slice()).map_err(redb_err)?;
                    }
                }
            }
            let mut bindings = tx.open_table(BINDINGS).map_err(redb_err)?;
            let mut doomed = Vec::new();
            for row in bindings.iter().map_err(redb_err)? {
                let (k, v) = row.map_err(redb_err)?;
                let b = decode::<StoredBindingV>("bindings", || k.value().to_string(), v.value())?.into_binding();
                if b.involves(subject) {
                    doomed.push(k.value().to_string());
                }
            }
            for k in &doomed {
                bindings.remove(k.as_str()).map_err(redb_err)?;
            }
            erased.bindings = doomed.len() as u64;

            let mut cdrs = tx.open_table(CDRS).map_err(redb_err)?;
            let mut masked = Vec::new();
            for row in cdrs.iter().map_err(redb_err)? {
                let (k, v) = row.map_err(redb_err)?;
                let mut c = decode::<StoredCdrV>("cdrs", || format!("{:?}", k.value()), v.value())?.into_cdr();
                if !cdr_involves(&c, subject) {
                    continue;
                }
                match subject {
                    Subject::Number(n) => {
                        if c.caller == *n {
                            c.caller = ERASED.into();
                            c.call_id = ERASED.into();
                        }
                        if c.callee == *n {
                            c.callee = ERASED.into();
                        }
                        if let Some(t) = c.transfer.as_mut() {
                            for party in [&mut t.by, &mut t.to] {
                                if *party == *n {
                                    *party = ERASED.into();
                                }
                            }
                        }
                    }
                    Subject::Ip(_) => c.call_id = ERASED.into(),
                }
                masked.push((k.value(), c));
            }
            for (k, c) in &masked {
                let value = postcard::to_allocvec(&StoredCdrV::V2(c.clone())).map_err(redb_err)?;
                cdrs.insert(*k, value.as_slice()).map_err(redb_err)?;
            }
            erased.cdrs_masked = masked.len() as u64;

            // A participation is one person's alone (the room is nobody's): it goes whole.
            if let Subject::Number(n) = subject {
                let mut participations = tx.open_table(PARTICIPATIONS).map_err(redb_err)?;
                let mut doomed = Vec::new();
                for row in participations.iter().map_err(redb_err)? {
                    let (k, v) = row.map_err(redb_err)?;
                    let StoredParticipationV::V1(p) =
                        decode("conference_participations", || format!("{:?}", k.value()), v.value())?;
                    if p.involves(n) {
                        doomed.push(k.value());
                    }
                }
                for k in &doomed {
                    participations.remove(*k).map_err(redb_err)?;
                }
                erased.participations = doomed.len() as u64;
            }

            // A push record goes whole, whichever of its three numbers (or the woken app's
            // address) is erased: it is kept days, for troubleshooting, and no bill or call
            // history rests on it (the call's CDR keeps the other party's side).
            let mut pushes = tx.open_table(PUSH_RECORDS).map_err(redb_err)?;
            let mut doomed = Vec::new();
            for row in pushes.iter().map_err(redb_err)? {
                let (k, v) = row.map_err(redb_err)?;
                if push_involves(&decode_push(k.value(), v.value())?, subject) {
                    doomed.push(k.value());
                }
            }
            for k in &doomed {
                pushes.remove(*k).map_err(redb_err)?;
            }
            erased.push_records = doomed.len() as u64;

            let mut log = tx.open_table(SECURITY_LOG).map_err(redb_err)?;
            let mut changed = Vec::new();
            for row in log.iter().map_err(redb_err)? {
                let (k, v) = row.map_err(redb_err)?;
                let mut e = decode_security(k.value(), v.value())?;
                if security_involves(&e, subject) {
                    // An address's own attempts go; a number named in someone else's attempt
                    // (the attacker's address stays as evidence) loses the number.
                    let keep = matches!(subject, Subject::Number(_)).then(|| {
                        e.user = Some(ERASED.into());
                        e
                    });
                    changed.push((k.value(), keep));
                }
            }
            for (k, keep) in &changed {
                match keep {
                    Some(e) => {
                        log.insert(*k, encode_security(e)?.as_slice()).map_err(redb_err)?;
                    }
                    None => drop(log.remove(*k).map_err(redb_err)?),
                }
            }
            erased.security_log = changed.len() as u64;

            let mut flags = tx.open_table(PRIVACY_FLAGS).map_err(redb_err)?;
            erased.flags += u64::from(flags.remove(subject.id().as_str()).map_err(redb_err)?.is_some());
        }
        if let Some(t) = tombstone {
            insert_tombstone(&tx, t)?;
        }
        insert_audit(&tx, &audit(erased.total()), self.next_seq())?;
        mark_rewrite_due(&tx)?;
        tx.commit().map_err(redb_err)?;
        self.want_rewrite();
        Ok(erased)
    }

    /// Every erasure tombstone, by pseudonym.
    pub fn tombstones(&self) -> Result<BTreeMap<String, Tombstone>, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(TOMBSTONES).map_err(redb_err)?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let pseudonym = k.value().to_string();
            let StoredTombstoneV::V1 { key, at } = decode("erasure_tombstones", || pseudonym.clone(), v.value())?;
            out.insert(pseudonym.clone(), Tombstone { pseudonym, key, at });
        }
        Ok(out)
    }

    /// Adds tombstones (a cluster node installing a snapshot): never removes one.
    pub fn put_tombstones(&self, tombstones: &[Tombstone]) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        for t in tombstones {
            insert_tombstone(&tx, t)?;
        }
        tx.commit().map_err(redb_err)
    }

    /// One retention batch (the reaper's [`Batch`]), in one durable transaction; the count of
    /// records changed. The meaning of each (category, action) is the inventory's rule.
    pub fn reap(&self, batch: &Batch) -> Result<u64, StorageError> {
        let limit = batch.limit as usize;
        let cutoff = batch.cutoff.as_micros();
        let tx = self.db.begin_write().map_err(redb_err)?;
        let changed = match (batch.category, batch.action) {
            ("registration", Action::Delete) => {
                let mut table = tx.open_table(BINDINGS).map_err(redb_err)?;
                let mut due = Vec::new();
                for row in table.iter().map_err(redb_err)? {
                    let (k, v) = row.map_err(redb_err)?;
                    let b = decode::<StoredBindingV>("bindings", || k.value().to_string(), v.value())?.into_binding();
                    if b.expires_at.as_micros() < cutoff {
                        due.push(k.value().to_string());
                        if due.len() == limit {
                            break;
                        }
                    }
                }
                for k in &due {
                    table.remove(k.as_str()).map_err(redb_err)?;
                }
                due.len()
            }
            ("cdr", Action::Delete) => delete_oldest(&mut tx.open_table(CDRS).map_err(redb_err)?, cutoff, limit)?,
            ("conference-participation", Action::Delete) => {
                delete_oldest(&mut tx.open_table(PARTICIPATIONS).map_err(redb_err)?, cutoff, limit)?
            }
            ("push-records", Action::Delete) => {
                delete_oldest(&mut tx.open_table(PUSH_RECORDS).map_err(redb_err)?, cutoff, limit)?
            }
            ("security-log", Action::Delete) => {
                delete_oldest(&mut tx.open_table(SECURITY_LOG).map_err(redb_err)?, cutoff, limit)?
            }
            ("privacy-audit", Action::Delete) => {
                delete_oldest(&mut tx.open_table(PRIVACY_AUDIT).map_err(redb_err)?, cutoff, limit)?
            }
            ("security-log", Action::Anonymise) => {
                let mut table = tx.open_table(SECURITY_LOG).map_err(redb_err)?;
                let mut due = Vec::new();
                for row in table.range((0, 0)..(cutoff, 0)).map_err(redb_err)? {
                    let (k, v) = row.map_err(redb_err)?;
                    let e = decode_security(k.value(), v.value())?;
                    if !e.anonymised {
                        due.push((k.value(), e));
                        if due.len() == limit {
                            break;
                        }
                    }
                }
                for (k, e) in &mut due {
                    e.anonymise();
                    table.insert(*k, encode_security(e)?.as_slice()).map_err(redb_err)?;
                }
                due.len()
            }
            (category, action) => {
                return Err(StorageError::Redb(format!("no retention rule {category}/{}", action.name())));
            }
        };
        // Deleted and anonymised rows' old bytes are in freed pages now; the rewrite comes
        // after the run (see `RetentionStore::audit` below), or at the next start.
        if changed > 0 {
            mark_rewrite_due(&tx)?;
        }
        tx.commit().map_err(redb_err)?;
        Ok(changed as u64)
    }
}

/// One extension's calls in the statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallStats {
    pub number: String,
    pub calls_made: u64,
    pub calls_received: u64,
    /// Of the calls made and received, those answered.
    pub answered: u64,
    /// Answered time, in seconds.
    pub talk_s: u64,
}

impl Storage {
    /// Calls per number over the CDRs that ended at or after `from`, newest first, reading at
    /// most `rows_max` rows (then `true`: the figures are partial). Numbers in `excluded`
    /// (they objected, or are restricted) get no row; their calls still count for the other
    /// party, without naming them.
    pub fn statistics(
        &self,
        from: Timestamp,
        excluded: &std::collections::BTreeSet<String>,
        rows_max: usize,
    ) -> Result<(Vec<CallStats>, bool), StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(CDRS).map_err(redb_err)?;
        let mut by_number: BTreeMap<String, CallStats> = BTreeMap::new();
        let mut truncated = false;
        for (read, row) in table.range((from.as_micros(), 0)..).map_err(redb_err)?.rev().enumerate() {
            if read == rows_max {
                truncated = true;
                break;
            }
            let (k, v) = row.map_err(redb_err)?;
            let c = decode::<StoredCdrV>("cdrs", || format!("{:?}", k.value()), v.value())?.into_cdr();
            let answered = u64::from(c.answer.is_some());
            for (number, made) in [(&c.caller, true), (&c.callee, false)] {
                if excluded.contains(number) || number == ERASED {
                    continue;
                }
                let s = by_number
                    .entry(number.clone())
                    .or_insert_with(|| CallStats { number: number.clone(), ..CallStats::default() });
                if made {
                    s.calls_made += 1;
                } else {
                    s.calls_received += 1;
                }
                s.answered += answered;
                s.talk_s += c.duration_s();
            }
        }
        Ok((by_number.into_values().collect(), truncated))
    }
}

/// Deletes the oldest rows of a time-keyed table before `cutoff` µs, at most `limit`.
fn delete_oldest(
    table: &mut redb::Table<'_, (u64, u64), &[u8]>,
    cutoff: u64,
    limit: usize,
) -> Result<usize, StorageError> {
    let mut deleted = 0;
    for row in table.extract_from_if((0, 0)..(cutoff, 0), |_, _| true).map_err(redb_err)?.take(limit) {
        row.map_err(redb_err)?;
        deleted += 1;
    }
    Ok(deleted)
}

fn insert_tombstone(tx: &redb::WriteTransaction, t: &Tombstone) -> Result<(), StorageError> {
    let value = postcard::to_allocvec(&StoredTombstoneV::V1 { key: t.key.clone(), at: t.at }).map_err(redb_err)?;
    tx.open_table(TOMBSTONES).map_err(redb_err)?.insert(t.pseudonym.as_str(), value.as_slice()).map_err(redb_err)?;
    Ok(())
}

fn insert_audit(tx: &redb::WriteTransaction, entry: &AuditEntry, seq: u64) -> Result<(), StorageError> {
    let value = postcard::to_allocvec(&StoredAuditV::V1(entry.clone())).map_err(redb_err)?;
    tx.open_table(PRIVACY_AUDIT)
        .map_err(redb_err)?
        .insert((entry.at.as_micros(), seq), value.as_slice())
        .map_err(redb_err)?;
    Ok(())
}

impl pbx_actors::privacy::actor::RetentionStore for Storage {
    fn reap(&self, batch: &Batch) -> Result<u64, StoreError> {
        Storage::reap(self, batch).map_err(|e| StoreError::Disk(e.to_string()))
    }
    /// The end of a run: if its batches changed records, the rewrite they marked due starts.
    fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.put_audit(entry).map_err(|e| StoreError::Disk(e.to_string()))?;
        if let AuditEvent::Retention { rules, .. } = &entry.event
            && rules.iter().any(|r| r.records > 0)
        {
            self.want_rewrite();
        }
        Ok(())
    }
}

/// Seconds of one security-log interval: within one, the events of one kind from one network
/// are one entry with a count.
pub const SECURITY_INTERVAL_S: u64 = 60;
/// Networks (an IPv4 /24, an IPv6 /64: [`flood_network`]) with an entry of their own per event
/// kind and interval; the events of that kind from further networks in that interval share one
/// more entry, with source `::/0`. A small office's phones fail from a handful of networks.
pub const SECURITY_NETWORKS_PER_INTERVAL_MAX: usize = 16;
/// Rows one event kind adds to the security log per day at most, whatever the traffic: an entry
/// per network and the overflow entry, per interval (17 × 1,440 = 24,480). Each node start may
/// add one more interval's worth (its first interval starts afresh).
pub const SECURITY_ROWS_PER_KIND_PER_DAY_MAX: u64 =
    (SECURITY_NETWORKS_PER_INTERVAL_MAX as u64 + 1) * (86_400 / SECURITY_INTERVAL_S);
/// Bytes of a claimed user name the log keeps (as many as a subject id has), cut at a
/// character boundary: the name is the request's to choose, a row's size is not.
pub const SECURITY_USER_BYTES_MAX: usize = SUBJECT_ID_MAX;
/// Bytes of one stored row at most: the key (16) and the postcard value: version 1, time ≤ 10,
/// address 17, bits 1, user 2 + [`SECURITY_USER_BYTES_MAX`], event ≤ 11, flag 1, count ≤ 5.
pub const SECURITY_ROW_BYTES_MAX: usize = 16 + 1 + 10 + 17 + 1 + 2 + SECURITY_USER_BYTES_MAX + 11 + 1 + 5;
/// How often the writer stores what it aggregated: one transaction per this period at most.
pub const SECURITY_FLUSH_MS: u64 = 1_000;
/// Events waiting for the writer at most; beyond, they are counted and dropped. The writer
/// only adds each to a map, so it keeps up with any rate the SIP side produces.
const SECURITY_QUEUE_MAX: usize = 16_384;

const _: () = assert!(SECURITY_FLUSH_MS < SECURITY_INTERVAL_S * 1_000);

/// Which entry of an interval an event counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    /// Its own network's.
    Network(std::net::IpAddr),
    /// The interval's networks were all taken: the shared one.
    Beyond,
}

/// One entry of an interval: its row and what it gained since the last flush.
struct Bucket {
    row: SecurityKey,
    pending: Option<SecurityEntry>,
}

/// Folds security events into one entry per (interval, event kind, network), at most
/// [`SECURITY_NETWORKS_PER_INTERVAL_MAX`] networks + 1 per kind and interval, so that a flood
/// from one address, one /24 (IPv4) or one /64 (IPv6), or spoofed from everywhere, adds a
/// bounded number of rows a day. Pure: time comes from the events, sequence numbers from the
/// caller.
///
/// An event counts in the interval of its own time; one older than the interval before the
/// newest seen (a clock stepped back) counts in that one, so no interval is ever re-opened
/// and the bound holds whatever the clock does.
#[derive(Default)]
pub struct SecurityAggregator {
    /// The newest interval seen (index: seconds / [`SECURITY_INTERVAL_S`]).
    newest: u64,
    buckets: BTreeMap<(u64, &'static str, Group), Bucket>,
}

impl SecurityAggregator {
    /// Counts one event; `next_seq` gives a new row its sequence number.
    pub fn absorb(&mut self, mut entry: SecurityEntry, next_seq: impl FnOnce() -> u64) {
        if let Some(user) = &mut entry.user
            && user.len() > SECURITY_USER_BYTES_MAX
        {
            let cut = (0..=SECURITY_USER_BYTES_MAX).rev().find(|&i| user.is_char_boundary(i)).unwrap_or(0);
            user.truncate(cut);
        }
        entry.source = entry.source.to_canonical();
        entry.source_bits = entry.source_bits.min(pbx_actors::privacy::address_bits(entry.source));
        let interval = (entry.at.as_secs() / SECURITY_INTERVAL_S).max(self.newest.saturating_sub(1));
        if interval > self.newest {
            self.newest = interval;
            self.forget_closed(false);
        }
        let kind = entry.event.name();
        let mut group = Group::Network(flood_network(entry.source).0);
        if !self.buckets.contains_key(&(interval, kind, group))
            && self.networks(interval, kind) >= SECURITY_NETWORKS_PER_INTERVAL_MAX
        {
            group = Group::Beyond;
            (entry.source, entry.source_bits) = (std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0);
        }
        let bucket = self
            .buckets
            .entry((interval, kind, group))
            .or_insert_with(|| Bucket { row: (entry.at.as_micros(), next_seq()), pending: None });
        match &mut bucket.pending {
            Some(sum) => sum.absorb(&entry),
            None => bucket.pending = Some(entry),
        }
    }

    /// Networks with an entry of their own in `interval` for `kind`.
    fn networks(&self, interval: u64, kind: &'static str) -> usize {
        let first = Group::Network(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        self.buckets.range((interval, kind, first)..(interval, kind, Group::Beyond)).count()
    }

    /// What the entries gained since the last call, with their rows (for
    /// [`Storage::merge_security_rows`]); forgets the intervals no event can count in any more.
    pub fn take_pending(&mut self) -> Vec<(SecurityKey, SecurityEntry)> {
        let pending = self.buckets.values_mut().filter_map(|b| b.pending.take().map(|e| (b.row, e))).collect();
        self.forget_closed(true);
        pending
    }

    /// Drops the entries of intervals no event counts in any more (those with unstored
    /// counts only when `stored_or_not`).
    fn forget_closed(&mut self, stored_or_not: bool) {
        let oldest_open = self.newest.saturating_sub(1);
        self.buckets.retain(|(interval, _, _), b| *interval >= oldest_open || (b.pending.is_some() && !stored_or_not));
    }

    /// Entries held (for the bound on the writer's memory).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The node's [`pbx_actors::privacy::SecurityLog`]: queues events without blocking; a thread
/// aggregates them ([`SecurityAggregator`]) and stores the sums once a second at most.
pub struct SecurityWriter {
    queue: Option<SyncSender<SecurityEntry>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SecurityWriter {
    pub fn start(storage: Arc<Storage>) -> std::io::Result<SecurityWriter> {
        let (queue, rx) = std::sync::mpsc::sync_channel(SECURITY_QUEUE_MAX);
        let thread =
            std::thread::Builder::new().name("security-log".into()).spawn(move || write_security(&rx, &storage))?;
        Ok(SecurityWriter { queue: Some(queue), thread: Some(thread) })
    }
}

impl pbx_actors::privacy::SecurityLog for SecurityWriter {
    fn record(&self, entry: SecurityEntry) {
        let Some(queue) = &self.queue else { return };
        if let Err(TrySendError::Full(_)) = queue.try_send(entry) {
            metrics::counter!("pbx_security_log_dropped_total").increment(1);
        }
    }
}

impl Drop for SecurityWriter {
    /// Stores what is pending, then returns.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_security(rx: &Receiver<SecurityEntry>, storage: &Storage) {
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::{Duration, Instant};
    let mut aggregator = SecurityAggregator::default();
    // When the oldest unstored event must be stored.
    let mut due: Option<Instant> = None;
    loop {
        let received = match due {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let closed = match received {
            Ok(entry) => {
                metrics::counter!("pbx_security_log_entries_total").increment(1);
                aggregator.absorb(entry, || storage.next_seq());
                let at = *due.get_or_insert_with(|| Instant::now() + Duration::from_millis(SECURITY_FLUSH_MS));
                if Instant::now() < at {
                    continue;
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let rows = aggregator.take_pending();
        due = None;
        if !rows.is_empty() {
            match storage.merge_security_rows(&rows) {
                Ok(created) => metrics::counter!("pbx_security_log_rows_created_total").increment(created),
                Err(error) => tracing::error!(%error, rows = rows.len(), "could not store security-log entries"),
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::cdr::{Disposition, MediaCounters};
    use pbx_actors::privacy::{Right, SecurityEvent};
    use pbx_actors::registrar::RegistrarCommand;
    use pbx_actors::sip::Transport;

    const DAY: u64 = 86_400;

    fn open() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        (dir, s)
    }

    fn cdr(id: u64, end_s: u64, caller: &str, callee: &str) -> Cdr {
        Cdr {
            id,
            call_id: format!("{id}-42@192.0.2.{id}"),
            caller: caller.into(),
            callee: callee.into(),
            start: Timestamp::from_secs(end_s - 100),
            answer: Some(Timestamp::from_secs(end_s - 60)),
            end: Timestamp::from_secs(end_s),
            disposition: Disposition::Answered,
            hangup: None,
            codec_caller: None,
            codec_callee: None,
            media: [MediaCounters::default(); 2],
            follows: None,
            transfer: None,
        }
    }

    fn entry(at_s: u64, source: &str, user: Option<&str>) -> SecurityEntry {
        SecurityEntry::new(
            Timestamp::from_secs(at_s),
            source.parse().unwrap(),
            user.map(str::to_string),
            SecurityEvent::AuthFailed,
        )
    }

    fn binding(aor: &str, contact: &str, source: &str, expires_s: u64) -> Binding {
        Binding {
            aor: aor.into(),
            contact: contact.into(),
            expires_at: Timestamp::from_secs(expires_s),
            call_id: "c".into(),
            cseq: 1,
            source: source.parse().unwrap(),
            transport: Transport::Udp,
            user_agent: None,
            nat: false,
        }
    }

    fn batch(category: &'static str, action: Action, cutoff_s: u64, limit: u32) -> Batch {
        Batch { rule: 0, category, action, cutoff: Timestamp::from_secs(cutoff_s), limit }
    }

    fn audit_at(at_s: u64) -> AuditEntry {
        AuditEntry {
            at: Timestamp::from_secs(at_s),
            event: AuditEvent::SubjectRequest {
                right: Right::Access,
                subject: "p".into(),
                records: 0,
                outcome: "x".into(),
            },
        }
    }

    /// Each rule changes exactly the records older than its cut-off, oldest first, at most
    /// `limit` per batch; running it again changes nothing; an unknown rule is an error.
    #[test]
    fn reap_batches_follow_the_rules() {
        let (_dir, s) = open();
        s.put_cdrs(&[cdr(1, 10 * DAY, "100", "101"), cdr(2, 20 * DAY, "100", "101"), cdr(3, 30 * DAY, "100", "101")])
            .unwrap();
        s.put_security_entries(&[
            entry(DAY, "192.0.2.7", Some("1001")),
            entry(2 * DAY, "2001:db8::7", None),
            entry(40 * DAY, "192.0.2.8", None),
        ])
        .unwrap();
        s.apply(&[
            RegistrarCommand::PutBinding(binding("100", "sip:100@192.0.2.1", "192.0.2.1:5060", 100)),
            RegistrarCommand::PutBinding(binding("101", "sip:101@192.0.2.2", "192.0.2.2:5060", 300)),
        ])
        .unwrap();
        for at in [DAY, 5 * DAY] {
            s.put_audit(&audit_at(at)).unwrap();
        }

        assert_eq!(s.reap(&batch("cdr", Action::Delete, 25 * DAY, 1)).unwrap(), 1, "the limit holds");
        assert_eq!(s.reap(&batch("cdr", Action::Delete, 25 * DAY, 10)).unwrap(), 1);
        assert_eq!(s.reap(&batch("cdr", Action::Delete, 25 * DAY, 10)).unwrap(), 0, "again: nothing");
        let left = s.query_cdrs(None, None, None, &Default::default(), None, 10).unwrap().0;
        assert_eq!(left.iter().map(|c| c.id).collect::<Vec<_>>(), [3]);

        assert_eq!(s.reap(&batch("security-log", Action::Anonymise, 10 * DAY, 10)).unwrap(), 2);
        assert_eq!(s.reap(&batch("security-log", Action::Anonymise, 10 * DAY, 10)).unwrap(), 0, "marked: not again");
        let log = s.security_log(10).unwrap();
        assert_eq!(
            log.iter().map(|e| (e.source.to_string(), e.user.clone(), e.anonymised)).collect::<Vec<_>>(),
            [
                ("192.0.2.8".to_string(), None, false),
                ("2001:db8::".into(), None, true),
                ("192.0.2.0".into(), Some("1xxx".into()), true),
            ]
        );
        assert_eq!(s.reap(&batch("security-log", Action::Delete, 10 * DAY, 10)).unwrap(), 2);
        assert_eq!(s.security_log(10).unwrap().len(), 1);

        assert_eq!(s.reap(&batch("registration", Action::Delete, 200, 10)).unwrap(), 1);
        assert_eq!(s.load().unwrap().bindings.iter().map(|b| b.aor.as_str()).collect::<Vec<_>>(), ["101"]);
        assert_eq!(s.reap(&batch("privacy-audit", Action::Delete, 2 * DAY, 10)).unwrap(), 1);
        assert_eq!(s.audit(10, 100, |_| true).unwrap().len(), 1);
        assert!(s.reap(&batch("cdr", Action::Anonymise, 0, 1)).is_err(), "no such rule");
    }

    /// Erasing a number: its extension and bindings go, CDRs keep the other party with the
    /// subject masked (a caller's Call-ID too), security entries naming it lose the name, its
    /// flags go, the audit entry is in the same transaction; doing it again changes nothing.
    #[test]
    fn erasing_a_number_masks_it_everywhere_once() {
        let (_dir, s) = open();
        s.apply(&[
            RegistrarCommand::PutExtension(Extension {
                number: "101".into(),
                display_name: "Ann".into(),
                ha1_md5: "x".into(),
                ha1_sha256: "y".into(),
            }),
            RegistrarCommand::PutBinding(binding("101", "sip:101@192.0.2.2", "192.0.2.2:5060", 300)),
            RegistrarCommand::PutBinding(binding("100", "sip:100@192.0.2.1", "192.0.2.1:5060", 300)),
            // 101's forwarding, 100's forward on busy to 101 and on no answer to 102, 102's always to 101.
            RegistrarCommand::SetForwarding { number: "101".into(), forwarding: forward(Some("100"), None, None) },
            RegistrarCommand::SetForwarding {
                number: "100".into(),
                forwarding: forward(None, Some("101"), Some("102")),
            },
            RegistrarCommand::SetForwarding { number: "102".into(), forwarding: forward(Some("101"), None, None) },
            RegistrarCommand::GroupLogin { group: "600".into(), member: "101".into(), logged_in: false },
            RegistrarCommand::GroupLogin { group: "600".into(), member: "100".into(), logged_in: false },
        ])
        .unwrap();
        s.put_cdrs(&[cdr(1, 100, "100", "101"), cdr(2, 200, "101", "100"), cdr(3, 300, "100", "102")]).unwrap();
        s.put_security_entries(&[entry(10, "203.0.113.9", Some("101")), entry(11, "203.0.113.9", Some("100"))])
            .unwrap();
        s.update_flags("101", |f| f.restricted_since = Some(Timestamp::from_secs(5)), &audit_at(5)).unwrap();
        let subject = Subject::Number("101".into());
        let held = s.subject_records(&subject).unwrap();
        assert_eq!(
            (held.extension.is_some(), held.bindings.len(), held.cdrs.len(), held.security_log.len()),
            (true, 1, 2, 1)
        );

        let erased = s.erase(&subject, None, |_| audit_at(5)).unwrap();
        assert_eq!(
            erased,
            Erased {
                extension: 1,
                bindings: 1,
                cdrs_masked: 2,
                participations: 0,
                push_records: 0,
                security_log: 1,
                flags: 1,
            }
        );
        assert!(s.subject_records(&subject).unwrap().is_empty());
        let cdrs = s.query_cdrs(None, None, None, &Default::default(), None, 10).unwrap().0;
        let view: Vec<_> =
            cdrs.iter().map(|c| (c.id, c.caller.as_str(), c.callee.as_str(), c.call_id.as_str())).collect();
        assert_eq!(
            view,
            [(3, "100", "102", "3-42@192.0.2.3"), (2, ERASED, "100", ERASED), (1, "100", ERASED, "1-42@192.0.2.1")]
        );
        let users: Vec<_> = s.security_log(10).unwrap().into_iter().map(|e| e.user.unwrap()).collect();
        assert_eq!(users, ["100", ERASED]);
        assert!(s.all_flags().unwrap().is_empty());
        assert_eq!(s.audit(10, 100, |e| e.at == Timestamp::from_secs(5)).unwrap().len(), 2, "flag change and erasure");
        assert_eq!(s.erase(&subject, None, audit_at).unwrap(), Erased::default(), "again: nothing");
        assert_eq!(s.load().unwrap().bindings.len(), 1, "100's binding stays");
        // 101's forwarding went, and every forward naming it: 102's whole, 100's on busy.
        assert_eq!(s.load().unwrap().forwarding, [("100".to_string(), forward(None, None, Some("102")))]);
        assert_eq!(s.load().unwrap().logged_out, [("600".to_string(), "100".to_string())], "101's log-out went");
    }

    /// A transferred call's record names the transfer's target: it is part of that number's
    /// records (access, erasure), and erasing the number masks it there too.
    #[test]
    fn a_transfer_target_is_erased_from_the_records_that_name_it() {
        let (_dir, s) = open();
        let mut first = cdr(1, 100, "100", "101");
        first.transfer = Some(pbx_actors::cdr::Transferred { by: "101".into(), to: "102".into(), next: 2 });
        let mut second = cdr(2, 200, "100", "102");
        second.follows = Some(1);
        s.put_cdrs(&[first, second]).unwrap();
        let subject = Subject::Number("102".into());
        assert_eq!(s.subject_records(&subject).unwrap().cdrs.len(), 2);
        let erased = s.erase(&subject, None, |_| audit_at(5)).unwrap();
        assert_eq!(erased.cdrs_masked, 2);
        let cdrs = s.query_cdrs(None, None, None, &Default::default(), None, 10).unwrap().0;
        let first = cdrs.iter().find(|c| c.id == 1).unwrap();
        let transfer = first.transfer.clone().unwrap();
        assert_eq!((transfer.by.as_str(), transfer.to.as_str(), transfer.next), ("101", ERASED, 2));
        let second = cdrs.iter().find(|c| c.id == 2).unwrap();
        assert_eq!((second.callee.as_str(), second.follows), (ERASED, Some(1)));
    }

    fn forward(always: Option<&str>, busy: Option<&str>, no_answer: Option<&str>) -> pbx_actors::registrar::Forwarding {
        pbx_actors::registrar::Forwarding {
            always: always.map(Into::into),
            busy: busy.map(Into::into),
            no_answer: no_answer.map(Into::into),
            no_answer_after_s: 20,
        }
    }

    fn occurrences(dir: &std::path::Path, needle: &[u8]) -> usize {
        let bytes = std::fs::read(dir.join(super::super::DB_FILE)).unwrap();
        bytes.windows(needle.len()).filter(|w| *w == needle).count()
    }

    /// An erasure marks the file for a rewrite and keeps the tombstone it is given; until the
    /// rewrite the erased display name can still be in the file's freed pages, after it not
    /// (nor the number), while everything else is still there; the rewrite clears the mark it
    /// was asked for, not a newer one.
    #[test]
    fn the_rewrite_after_an_erasure_leaves_no_trace_in_the_file() {
        let (dir, s) = open();
        let name = "Quirinus Zwetschgenbaum";
        let number = "74123";
        let mut commands = vec![RegistrarCommand::PutExtension(Extension {
            number: number.into(),
            display_name: name.into(),
            ha1_md5: "x".into(),
            ha1_sha256: "y".into(),
        })];
        // Enough other rows that the erased ones sit between live ones.
        for i in 0..300 {
            commands.push(RegistrarCommand::PutExtension(Extension {
                number: format!("2{i:03}"),
                display_name: format!("Colleague {i}"),
                ha1_md5: "x".into(),
                ha1_sha256: "y".into(),
            }));
        }
        s.apply(&commands).unwrap();
        s.put_cdrs(
            &(1..200)
                .map(|id| cdr(id, 1_000 + id, if id % 2 == 0 { number } else { "2001" }, "2002"))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(s.rewrite_due().unwrap(), None);
        let tombstone = Tombstone {
            pseudonym: "0123456789abcdef0123456789abcdef".into(),
            key: "k".into(),
            at: Timestamp::from_secs(9),
        };
        s.erase(&Subject::Number(number.into()), Some(&tombstone), |_| audit_at(9)).unwrap();
        let due = s.rewrite_due().unwrap().expect("an erasure makes a rewrite due");
        assert_eq!(s.tombstones().unwrap().into_values().collect::<Vec<_>>(), [tombstone]);
        assert!(s.subject_records(&Subject::Number(number.into())).unwrap().is_empty());
        let before = (occurrences(dir.path(), name.as_bytes()), occurrences(dir.path(), number.as_bytes()));
        // A change after the rewrite was asked for keeps the file due.
        s.rewrite(Some(due.wrapping_add(1))).unwrap();
        assert_eq!(s.rewrite_due().unwrap(), Some(due), "not the rewrite asked for: still due");
        assert_eq!(occurrences(dir.path(), name.as_bytes()), 0, "before the rewrite: {before:?}");
        assert_eq!(occurrences(dir.path(), number.as_bytes()), 0, "the number is masked everywhere");
        s.rewrite(Some(due)).unwrap();
        assert_eq!(s.rewrite_due().unwrap(), None);
        assert_eq!(s.load().unwrap().extensions.len(), 300);
        assert_eq!(s.all_cdrs().unwrap().len(), 199);
        assert_eq!(s.tombstones().unwrap().len(), 1);
        assert_eq!(s.audit(10, 100, |_| true).unwrap().len(), 1);
        drop(s);
        let s = Storage::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap().extensions.len(), 300, "the rewritten file reopens whole");
    }

    /// A retention batch that changes records marks the file for a rewrite; one that changes
    /// nothing does not. After the rewrite the anonymised entry's address and user name are
    /// not in the file.
    #[test]
    fn a_retention_change_makes_a_rewrite_due() {
        let (dir, s) = open();
        s.put_security_entries(&[
            entry(DAY, "198.51.100.77", Some("ghost-7c1e9a")),
            entry(40 * DAY, "192.0.2.8", None),
        ])
        .unwrap();
        assert_eq!(s.reap(&batch("cdr", Action::Delete, 10 * DAY, 10)).unwrap(), 0);
        assert_eq!(s.rewrite_due().unwrap(), None, "nothing changed");
        assert_eq!(s.reap(&batch("security-log", Action::Anonymise, 10 * DAY, 10)).unwrap(), 1);
        let due = s.rewrite_due().unwrap().expect("due after a change");
        s.rewrite(Some(due)).unwrap();
        assert_eq!(occurrences(dir.path(), b"ghost-7c1e9a"), 0);
        assert_eq!(occurrences(dir.path(), &[198, 51, 100, 77]), 0);
        assert_eq!(s.security_log(10).unwrap().len(), 2);
    }

    /// Erasing an address: bindings from it or to it, its own security entries, and Call-IDs
    /// naming it.
    #[test]
    fn erasing_an_address() {
        let (_dir, s) = open();
        s.apply(&[
            RegistrarCommand::PutBinding(binding("100", "sip:100@192.0.2.1:5060", "198.51.100.1:5060", 300)),
            RegistrarCommand::PutBinding(binding("101", "sip:101@[2001:db8::5]:5060", "[2001:db8::5]:5060", 300)),
            RegistrarCommand::PutBinding(binding("102", "sip:102@192.0.2.10", "192.0.2.10:5060", 300)),
        ])
        .unwrap();
        s.put_cdrs(&[cdr(1, 100, "100", "101")]).unwrap();
        s.put_security_entries(&[entry(10, "192.0.2.1", Some("100")), entry(11, "192.0.2.9", None)]).unwrap();
        let subject = Subject::parse("192.0.2.1").unwrap();
        assert_eq!(s.subject_records(&subject).unwrap().cdrs.len(), 1, "its Call-ID names it");
        let erased = s.erase(&subject, None, audit_at).unwrap();
        assert_eq!((erased.bindings, erased.security_log, erased.cdrs_masked), (1, 1, 1));
        assert_eq!(s.security_log(10).unwrap().len(), 1);
        let v6 = Subject::parse("2001:db8::5").unwrap();
        assert_eq!(s.erase(&v6, None, audit_at).unwrap().bindings, 1);
        assert_eq!(s.load().unwrap().bindings.iter().map(|b| b.aor.as_str()).collect::<Vec<_>>(), ["102"]);
    }

    /// Statistics count calls per number in the window and leave out excluded numbers and
    /// erased parties; flags read back as set and vanish when empty.
    #[test]
    fn statistics_and_flags() {
        let (_dir, s) = open();
        s.put_cdrs(&[cdr(1, 300, "100", "101"), cdr(2, 200, "101", "0301"), cdr(3, 150, "100", "101")]).unwrap();
        let excluded = ["0301".to_string()].into_iter().collect();
        let (rows, truncated) = s.statistics(Timestamp::from_secs(160), &excluded, 100).unwrap();
        assert!(!truncated);
        let view: Vec<_> = rows.iter().map(|r| (r.number.as_str(), r.calls_made, r.calls_received, r.talk_s)).collect();
        assert_eq!(view, [("100", 1, 0, 60), ("101", 1, 1, 120)]);
        assert!(s.statistics(Timestamp::ZERO, &Default::default(), 2).unwrap().1, "row bound reached");
        let f = s.update_flags("0301", |f| f.objected_since = Some(Timestamp::from_secs(1)), &audit_at(1)).unwrap();
        assert_eq!(s.all_flags().unwrap().get("0301"), Some(&f));
        s.update_flags("0301", |f| f.objected_since = None, &audit_at(2)).unwrap();
        assert!(s.all_flags().unwrap().is_empty());
    }

    /// A tiny deterministic generator for the flood tests (xorshift64).
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// A day of flood: 1,000,000 events of two kinds, half from one /24 and half spoofed from
    /// all over IPv4 and IPv6 with 64-byte user names, leave at most
    /// `SECURITY_ROWS_PER_KIND_PER_DAY_MAX` rows per kind (here exactly that: every interval
    /// saturates), each at most `SECURITY_ROW_BYTES_MAX` bytes, and every event is counted.
    #[test]
    fn a_day_of_flood_stays_within_the_bound() {
        const EVENTS: u64 = 1_000_000;
        const DAY_US: u64 = 86_400 * 1_000_000;
        let (dir, s) = open();
        let mut aggregator = SecurityAggregator::default();
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut interval = 0;
        for i in 0..EVENTS {
            let at = Timestamp(DAY * 1_000_000 + i * DAY_US / EVENTS);
            if at.as_secs() / SECURITY_INTERVAL_S != interval {
                s.merge_security_rows(&aggregator.take_pending()).unwrap();
                interval = at.as_secs() / SECURITY_INTERVAL_S;
            }
            let r = next(&mut rng);
            let source: std::net::IpAddr = match r % 4 {
                0 | 1 => format!("203.0.113.{}", r >> 56).parse().unwrap(),
                2 => std::net::Ipv4Addr::from_bits((r >> 32) as u32).into(),
                _ => std::net::Ipv6Addr::from_bits(u128::from(r) << 64 | u128::from(next(&mut rng))).into(),
            };
            let user = format!("{:x}-{}", r, "é".repeat(40));
            let event = if i % 2 == 0 {
                SecurityEvent::AuthFailed
            } else {
                SecurityEvent::Blocked { until: Timestamp(u64::MAX) }
            };
            aggregator.absorb(SecurityEntry::new(at, source, Some(user), event), || s.next_seq());
            assert!(aggregator.len() <= 4 * (SECURITY_NETWORKS_PER_INTERVAL_MAX + 1), "two intervals of two kinds");
        }
        s.merge_security_rows(&aggregator.take_pending()).unwrap();

        let rows = s.security_log(usize::MAX).unwrap();
        let bound = 2 * SECURITY_ROWS_PER_KIND_PER_DAY_MAX as usize;
        assert_eq!(rows.len(), bound, "every interval saturates, none goes beyond");
        assert_eq!(rows.iter().map(|e| u64::from(e.count)).sum::<u64>(), EVENTS, "every event counted");
        let flood = rows.iter().filter(|e| e.source.to_string() == "203.0.113.0" && e.source_bits == 24);
        assert_eq!(flood.count(), 2 * 1_440, "the /24 is one entry per kind and interval");
        assert_eq!(rows.iter().filter(|e| e.source_bits == 0).count(), 2 * 1_440, "one overflow entry each");
        assert!(rows.iter().all(|e| e.user.as_ref().is_some_and(|u| u.len() <= SECURITY_USER_BYTES_MAX)));
        let tx = s.db.begin_read().unwrap();
        let table = tx.open_table(SECURITY_LOG).unwrap();
        let mut bytes = 0;
        for row in table.iter().unwrap() {
            let (_, v) = row.unwrap();
            assert!(16 + v.value().len() <= SECURITY_ROW_BYTES_MAX, "{} bytes", v.value().len());
            bytes += 16 + v.value().len();
        }
        let file = std::fs::metadata(dir.path().join(crate::storage::DB_FILE)).unwrap().len();
        eprintln!("a day at the bound: {} rows, {bytes} bytes of keys and values, pbx.redb {file} bytes", rows.len());
    }

    /// A flood from one address within an interval is one row with its count and the exact
    /// address; from several addresses of one /24 one row naming the /24; another interval
    /// starts another row; an event older than the interval before the newest counts there.
    #[test]
    fn floods_from_one_source_or_network_are_one_row_per_interval() {
        let (_dir, s) = open();
        let mut aggregator = SecurityAggregator::default();
        let at = |secs: u64| Timestamp::from_secs(600 + secs);
        for i in 0..10_000u64 {
            aggregator.absorb(entry(600 + i % 60, "198.51.100.7", Some("100")), || s.next_seq());
            aggregator.absorb(entry(600 + i % 60, &format!("192.0.2.{}", i % 200), Some("101")), || s.next_seq());
        }
        aggregator.absorb(entry(660, "198.51.100.7", Some("100")), || s.next_seq());
        let no_user = SecurityEntry::new(at(0), "198.51.100.7".parse().unwrap(), None, SecurityEvent::AuthFailed);
        aggregator.absorb(no_user, || s.next_seq());
        assert_eq!(s.merge_security_rows(&aggregator.take_pending()).unwrap(), 3);
        aggregator.absorb(entry(0, "198.51.100.7", Some("100")), || s.next_seq());
        assert_eq!(s.merge_security_rows(&aggregator.take_pending()).unwrap(), 0, "counted in the interval at 600 s");
        let view: Vec<_> = s
            .security_log(10)
            .unwrap()
            .into_iter()
            .map(|e| (e.at.as_secs(), e.source.to_string(), e.source_bits, e.user, e.count))
            .collect();
        assert_eq!(
            view,
            [
                (660, "198.51.100.7".into(), 32, Some("100".into()), 1),
                (600, "192.0.2.0".into(), 24, Some("101".into()), 10_000),
                (600, "198.51.100.7".into(), 32, Some("100".into()), 10_002),
            ]
        );
    }

    /// Rows stored before aggregation (version 1) read as single events; an anonymised one
    /// says its source is a /24.
    #[test]
    fn version_1_rows_still_read() {
        let (_dir, s) = open();
        let v1 = |source: &str, anonymised| SecurityEntryV1 {
            at: Timestamp::from_secs(5),
            source: source.parse().unwrap(),
            user: Some("1xxx".into()),
            event: SecurityEvent::AuthFailed,
            anonymised,
        };
        let tx = s.db.begin_write().unwrap();
        {
            let mut table = tx.open_table(SECURITY_LOG).unwrap();
            for (seq, row) in [(1, v1("192.0.2.9", false)), (2, v1("192.0.2.0", true))] {
                let bytes = postcard::to_allocvec(&StoredSecurityV::V1(row)).unwrap();
                table.insert((5_000_000, seq), bytes.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        let view: Vec<_> = s
            .security_log(10)
            .unwrap()
            .into_iter()
            .map(|e| (e.source.to_string(), e.source_bits, e.count, e.anonymised))
            .collect();
        assert_eq!(view, [("192.0.2.0".to_string(), 24, 1, true), ("192.0.2.9".into(), 32, 1, false)]);
    }

    /// The writer thread: a burst of events from one address is one row with their count,
    /// and events a flush later add to the same row (not a new one); an erasure's mask on
    /// the row survives the later additions.
    #[test]
    fn the_writer_adds_to_the_open_row() {
        use pbx_actors::privacy::SecurityLog;
        let (_dir, s) = open();
        let s = Arc::new(s);
        let at = 1_000 * SECURITY_INTERVAL_S;
        let writer = SecurityWriter::start(s.clone()).unwrap();
        for _ in 0..1_000 {
            writer.record(entry(at, "198.51.100.7", Some("100")));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.security_log(10).unwrap().first().map(|e| e.count) != Some(1_000) {
            assert!(std::time::Instant::now() < deadline, "{:?}", s.security_log(10));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        s.erase(&Subject::Number("100".into()), None, |_| audit_at(at)).unwrap();
        for _ in 0..500 {
            writer.record(entry(at + 1, "198.51.100.7", Some("100")));
        }
        drop(writer);
        let view: Vec<_> = s.security_log(10).unwrap().into_iter().map(|e| (e.count, e.user)).collect();
        assert_eq!(view, [(1_500, Some(ERASED.to_string()))]);
    }

    fn participation(id: u64, number: &str, left_s: u64) -> Participation {
        Participation {
            id,
            room: "800".into(),
            number: number.into(),
            arrived: Timestamp::from_secs(left_s - 60),
            joined: Some(Timestamp::from_secs(left_s - 50)),
            left: Timestamp::from_secs(left_s),
        }
    }

    /// Participations: stored once however often written, exported and erased with their
    /// number (whole: nobody else is in the record), and reaped by their end.
    #[test]
    fn participations_are_exported_erased_and_reaped() {
        let (_dir, s) = open();
        let (a, b, c) =
            (participation(1, "100", 10 * DAY), participation(2, "101", 10 * DAY), participation(3, "100", 30 * DAY));
        s.put_participations(&[a.clone(), b.clone(), c.clone()]).unwrap();
        s.put_participations(std::slice::from_ref(&a)).unwrap();
        let number = |n: &str| Subject::Number(n.into());
        assert_eq!(s.subject_records(&number("100")).unwrap().participations, [a.clone(), c.clone()]);
        assert!(s.subject_records(&Subject::Ip("192.0.2.7".parse().unwrap())).unwrap().participations.is_empty());
        assert_eq!(s.reap(&batch("conference-participation", Action::Delete, 20 * DAY, 10)).unwrap(), 2);
        assert_eq!(s.subject_records(&number("100")).unwrap().participations, [c]);
        let erased = s.erase(&number("100"), None, |_| audit_at(40 * DAY)).unwrap();
        assert_eq!(erased.participations, 1);
        assert!(s.subject_records(&number("100")).unwrap().participations.is_empty());
        assert!(s.subject_records(&number("101")).unwrap().participations.is_empty(), "reaped before");
    }

    fn push(id: u64, at_s: u64, user: &str, caller: &str, source: &str) -> PushRecord {
        PushRecord {
            id,
            at: Timestamp::from_secs(at_s),
            user: user.into(),
            caller: caller.into(),
            callee: user.into(),
            provider: "fcm".into(),
            device: format!("token-{id}"),
            source: source.parse().unwrap(),
            outcome: "delivered".into(),
        }
    }

    /// Push records: written once however often stored, read back whole after the file is
    /// closed and reopened, and reaped by the default rule at exactly 7 days — one sent 7 days
    /// less a second before the run stays, one sent 7 days and a second before goes.
    #[test]
    fn push_records_are_stored_and_reaped_at_seven_days() {
        let dir = tempfile::tempdir().unwrap();
        let now = 100 * DAY;
        let week = 7 * DAY;
        let (young, old) = (
            push(1, now - week + 1, "100", "101", "192.0.2.7:5060"),
            push(2, now - week - 1, "100", "101", "192.0.2.7:5060"),
        );
        {
            let s = Storage::open(dir.path()).unwrap();
            s.put_push_records(&[young.clone(), old.clone()]).unwrap();
            s.put_push_records(std::slice::from_ref(&young)).unwrap();
        }
        let s = Storage::open(dir.path()).unwrap();
        let number = Subject::Number("100".into());
        assert_eq!(s.subject_records(&number).unwrap().push_records, [old.clone(), young.clone()], "oldest first");
        let rule = pbx_actors::privacy::reaper::rules(&Default::default())
            .into_iter()
            .find(|r| r.category == "push-records")
            .expect("a rule for push records");
        assert_eq!((rule.action, rule.after.as_secs()), (Action::Delete, week));
        let cutoff = now - rule.after.as_secs();
        assert_eq!(s.reap(&batch("push-records", Action::Delete, cutoff, 10)).unwrap(), 1);
        assert_eq!(s.reap(&batch("push-records", Action::Delete, cutoff, 10)).unwrap(), 0, "again: nothing");
        assert_eq!(s.subject_records(&number).unwrap().push_records, [young]);
    }

    /// Push records are exported and erased with any number they name (woken user, caller,
    /// callee) and with the address the woken app registered from, whole; records of others
    /// stay, and the erasure's count is the erase answer's `push_records`; after the rewrite
    /// the erased token is not in the file.
    #[test]
    fn push_records_are_exported_and_erased() {
        let (dir, s) = open();
        let to_100 = push(1, DAY, "100", "101", "192.0.2.7:5060");
        let to_102 = push(2, 2 * DAY, "102", "103", "[2001:db8::7]:5060");
        let to_104 = push(3, 3 * DAY, "104", "105", "198.51.100.4:5060");
        s.put_push_records(&[to_100.clone(), to_102.clone(), to_104.clone()]).unwrap();
        let number = |n: &str| Subject::Number(n.into());
        let ip = |a: &str| Subject::Ip(a.parse().unwrap());
        assert_eq!(
            s.subject_records(&number("100")).unwrap().push_records,
            std::slice::from_ref(&to_100),
            "the woken user"
        );
        assert_eq!(
            s.subject_records(&number("101")).unwrap().push_records,
            std::slice::from_ref(&to_100),
            "the caller"
        );
        assert_eq!(
            s.subject_records(&ip("2001:db8::7")).unwrap().push_records,
            std::slice::from_ref(&to_102),
            "the app's address"
        );
        assert!(!s.subject_records(&number("103")).unwrap().is_empty(), "a caller's records are held about it");
        assert!(s.subject_records(&number("10")).unwrap().push_records.is_empty());

        let erased = s.erase(&number("101"), None, |_| audit_at(10 * DAY)).unwrap();
        assert_eq!((erased.push_records, erased.total()), (1, 1));
        assert!(s.subject_records(&number("100")).unwrap().push_records.is_empty(), "gone whole");
        let erased = s.erase(&ip("2001:db8::7"), None, |_| audit_at(10 * DAY)).unwrap();
        assert_eq!(erased.push_records, 1);
        assert_eq!(s.erase(&ip("2001:db8::7"), None, |_| audit_at(10 * DAY)).unwrap().push_records, 0, "once");
        assert_eq!(s.subject_records(&number("104")).unwrap().push_records, [to_104], "others' records stay");
        s.rewrite(s.rewrite_due().unwrap()).unwrap();
        assert_eq!(occurrences(dir.path(), b"token-1"), 0, "the erased push token left the file");
        assert!(occurrences(dir.path(), b"token-3") > 0, "the kept one is still there");
    }
}

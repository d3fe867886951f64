//! A node's simulated disk: what the node's redb file would hold, with crash semantics.
//!
//! A write is durable only once its commit (the fsync) has happened; writes are committed in
//! the order they were issued, each `fsync` after the previous one (a single writer, as redb
//! has). A crash loses every write not yet committed — and the answers that waited for them.
//!
//! Besides extensions, bindings, CDRs and the licence it holds what the retention reaper
//! works on: the security log and the privacy audit. A retention batch ([`Disk::reap`]) is
//! one write transaction like any other, so a crash can lose it too.

use crate::node::DiskWrite;
use pbx_actors::Timestamp;
use pbx_actors::cdr::Cdr;
use pbx_actors::entry::{EntryStore, apply_entry};
use pbx_actors::licence::{Stored, StoredUnlocks};
use pbx_actors::privacy::reaper::{Action, Batch};
use pbx_actors::privacy::{AuditEntry, Right, SecurityEntry};
use pbx_actors::registrar::{Binding, Extension, Forwarding, RegistrarCommand};
use std::collections::{BTreeMap, BTreeSet};

/// Records of one kind, keyed `(time, id)` so that the oldest come first, as the node's tables
/// are (CDRs by `(end, id)`, the logs by `(at, id)`).
pub type Key = (Timestamp, u64);

#[derive(Default)]
pub struct Disk {
    pub extensions: BTreeMap<String, Extension>,
    pub bindings: BTreeMap<(String, String), Binding>,
    /// Call forwarding by extension (only what is on).
    pub forwarding: BTreeMap<String, Forwarding>,
    /// CDRs by id; a second CDR with the same id is kept aside as a duplicate.
    pub cdrs: BTreeMap<u64, Cdr>,
    /// The CDRs' `(end, id)`, oldest first: the order the reaper deletes them in.
    pub cdr_ends: BTreeSet<Key>,
    pub duplicate_cdrs: Vec<Cdr>,
    /// Ended conference participations by `(left, participant id)`.
    pub participations: BTreeMap<Key, pbx_actors::conference::core::Participation>,
    /// Push records by `(sent, push id)`: one per push the node sent (`crate::push`).
    pub push_records: BTreeMap<Key, pbx_actors::push::PushRecord>,
    pub security_log: BTreeMap<Key, SecurityEntry>,
    /// Keys of security-log entries not yet anonymised.
    pub security_fresh: BTreeSet<Key>,
    pub audit: BTreeMap<Key, AuditEntry>,
    /// The id the next log or audit entry gets (the tables' autoincrement).
    pub next_id: u64,
    /// The watchdog's last verified licence.
    pub licence: Option<Stored>,
    /// The feature unlocks (no simulated party writes them yet).
    pub unlocks: Option<StoredUnlocks>,
    /// Records each retention rule changed, over the run.
    pub reaped: BTreeMap<(&'static str, Action), u64>,
    /// Writes committed, and writes lost in crashes.
    pub commits: u64,
    pub lost_in_crash: u64,
}

impl Disk {
    /// Applies a committed write: a replicated [`Entry`] as every store applies it
    /// ([`apply_entry`]), or one of the node's own tables. A retention batch answers how many
    /// records it changed, or why the store cannot do it; every other write changes what it
    /// says (`Ok(0)`).
    pub fn apply(&mut self, write: DiskWrite) -> Result<u64, String> {
        self.commits += 1;
        match write {
            DiskWrite::Entry(entry) => apply_entry(self, entry)?,
            DiskWrite::SecurityLog(entry) => {
                let key = (entry.at, self.next_id);
                self.next_id += 1;
                if !entry.anonymised {
                    self.security_fresh.insert(key);
                }
                self.security_log.insert(key, *entry);
            }
            DiskWrite::Audit(entry) => {
                self.audit.insert((entry.at, self.next_id), entry);
                self.next_id += 1;
            }
            DiskWrite::Reap(batch) => return self.reap(&batch),
        }
        Ok(0)
    }

    /// One retention batch, as the node's store does it (the meaning each (category, action)
    /// has for every store): at most `limit` records, oldest first, among those older than
    /// the cut-off that the action has not yet changed:
    /// - registration/delete: stored bindings whose `expires_at` < cutoff;
    /// - security-log/anonymise: source IP → its /24 or /48, claimed user masked, marked;
    /// - security-log/delete, cdr/delete (by `end`), conference-participation/delete (by
    ///   `left`), push-records/delete (by `at`), privacy-audit/delete: the records go.
    ///
    /// Any other pair is an error, as the node's store answers it.
    pub fn reap(&mut self, batch: &Batch) -> Result<u64, String> {
        let limit = batch.limit as usize;
        let before = (batch.cutoff, 0);
        let changed = match (batch.category, batch.action) {
            ("registration", Action::Delete) => {
                let mut due: Vec<(Timestamp, (String, String))> = self
                    .bindings
                    .iter()
                    .filter(|(_, b)| b.expires_at < batch.cutoff)
                    .map(|(key, b)| (b.expires_at, key.clone()))
                    .collect();
                due.sort();
                due.truncate(limit);
                for (_, key) in &due {
                    self.bindings.remove(key);
                }
                due.len()
            }
            ("security-log", Action::Anonymise) => {
                let due: Vec<Key> = self.security_fresh.range(..before).take(limit).copied().collect();
                for key in &due {
                    self.security_fresh.remove(key);
                    if let Some(e) = self.security_log.get_mut(key) {
                        e.anonymise();
                    }
                }
                due.len()
            }
            ("security-log", Action::Delete) => {
                let due: Vec<Key> = self.security_log.range(..before).take(limit).map(|(key, _)| *key).collect();
                for key in &due {
                    self.security_log.remove(key);
                    self.security_fresh.remove(key);
                }
                due.len()
            }
            ("cdr", Action::Delete) => {
                let due: Vec<Key> = self.cdr_ends.range(..before).take(limit).copied().collect();
                for key in &due {
                    self.cdr_ends.remove(key);
                    self.cdrs.remove(&key.1);
                }
                due.len()
            }
            ("conference-participation", Action::Delete) => {
                let due: Vec<Key> = self.participations.range(..before).take(limit).map(|(key, _)| *key).collect();
                for key in &due {
                    self.participations.remove(key);
                }
                due.len()
            }
            ("push-records", Action::Delete) => {
                let due: Vec<Key> = self.push_records.range(..before).take(limit).map(|(key, _)| *key).collect();
                for key in &due {
                    self.push_records.remove(key);
                }
                due.len()
            }
            ("privacy-audit", Action::Delete) => {
                let due: Vec<Key> = self.audit.range(..before).take(limit).map(|(key, _)| *key).collect();
                for key in &due {
                    self.audit.remove(key);
                }
                due.len()
            }
            (category, action) => return Err(format!("no table holds {category:?} for {}", action.name())),
        };
        *self.reaped.entry((batch.category, batch.action)).or_default() += changed as u64;
        Ok(changed as u64)
    }

    /// Records the reaper changed, all rules together.
    pub fn reaped_total(&self) -> u64 {
        self.reaped.values().sum()
    }

    /// What a node restores from at start.
    pub fn snapshot(&self) -> (Vec<Extension>, Vec<Binding>, Vec<(String, Forwarding)>) {
        (
            self.extensions.values().cloned().collect(),
            self.bindings.values().cloned().collect(),
            self.forwarding.iter().map(|(n, f)| (n.clone(), f.clone())).collect(),
        )
    }
}

/// The replicated tables, as the node's applier changes them.
impl EntryStore for Disk {
    type Error = String;

    fn apply_registrar(&mut self, commands: Vec<RegistrarCommand>) -> Result<(), String> {
        for command in commands {
            match command {
                RegistrarCommand::PutExtension(e) => {
                    self.extensions.insert(e.number.clone(), e);
                }
                RegistrarCommand::RemoveExtension { number } => {
                    self.extensions.remove(&number);
                    self.bindings.retain(|(aor, _), _| *aor != number);
                }
                RegistrarCommand::PutBinding(b) => {
                    self.bindings.insert((b.aor.clone(), b.contact.clone()), b);
                }
                RegistrarCommand::RemoveBinding { aor, contact } => {
                    self.bindings.remove(&(aor, contact));
                }
                RegistrarCommand::SetForwarding { number, forwarding } if forwarding.is_off() => {
                    self.forwarding.remove(&number);
                }
                RegistrarCommand::SetForwarding { number, forwarding } => {
                    self.forwarding.insert(number, forwarding);
                }
                // The simulated office has no ring groups yet.
                RegistrarCommand::GroupLogin { .. } => {}
            }
        }
        Ok(())
    }

    fn put_participations(
        &mut self,
        participations: Vec<pbx_actors::conference::core::Participation>,
    ) -> Result<(), String> {
        for p in participations {
            self.participations.insert((p.left, p.id), p);
        }
        Ok(())
    }

    fn put_push_records(&mut self, records: Vec<pbx_actors::push::PushRecord>) -> Result<(), String> {
        for r in records {
            self.push_records.insert((r.at, r.id), r);
        }
        Ok(())
    }

    fn put_cdrs(&mut self, cdrs: Vec<Cdr>) -> Result<(), String> {
        for cdr in cdrs {
            let key = (cdr.end, cdr.id);
            if let Some(previous) = self.cdrs.insert(cdr.id, cdr) {
                self.cdr_ends.remove(&(previous.end, previous.id));
                self.duplicate_cdrs.push(previous);
            }
            self.cdr_ends.insert(key);
        }
        Ok(())
    }

    fn save_licence(&mut self, stored: Stored) -> Result<(), String> {
        self.licence = Some(stored);
        Ok(())
    }

    fn save_unlocks(&mut self, stored: StoredUnlocks) -> Result<(), String> {
        self.unlocks = Some(stored);
        Ok(())
    }

    /// No simulated party makes subject requests: a store that gets one says so.
    fn erase(&mut self, subject: String, _audit: AuditEntry) -> Result<(), String> {
        Err(format!("the simulated disk takes no erasure (subject {subject})"))
    }

    fn flag(&mut self, subject: String, right: Right, _at: Timestamp, _audit: AuditEntry) -> Result<(), String> {
        Err(format!("the simulated disk takes no {right:?} (subject {subject})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::entry::Entry;
    use pbx_actors::privacy::SecurityEvent;
    use pbx_actors::sip::message::Transport;
    use std::time::Duration;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    fn batch(category: &'static str, action: Action, cutoff: u64, limit: u32) -> Batch {
        Batch { rule: 0, category, action, cutoff: t(cutoff), limit }
    }

    fn binding(aor: &str, expires: u64) -> Binding {
        Binding {
            aor: aor.into(),
            contact: format!("sip:{aor}@10.1.0.1"),
            expires_at: t(expires),
            call_id: "c".into(),
            cseq: 1,
            source: "10.1.0.1:5060".parse().unwrap(),
            transport: Transport::Udp,
            user_agent: None,
            nat: false,
        }
    }

    fn log(disk: &mut Disk, at: u64, ip: &str, user: &str) {
        let entry = SecurityEntry::new(t(at), ip.parse().unwrap(), Some(user.into()), SecurityEvent::AuthFailed);
        disk.apply(DiskWrite::SecurityLog(Box::new(entry))).unwrap();
    }

    fn cdr(id: u64, end: u64) -> Cdr {
        Cdr {
            id,
            call_id: format!("call-{id}"),
            caller: "1000".into(),
            callee: "1001".into(),
            start: t(end) - Duration::from_secs(60),
            answer: None,
            end: t(end),
            disposition: pbx_actors::cdr::Disposition::NoAnswer,
            hangup: None,
            codec_caller: None,
            codec_callee: None,
            media: Default::default(),
            follows: None,
            transfer: None,
        }
    }

    /// Deletes change only records older than the cut-off, the oldest first, at most `limit`,
    /// and say how many; what is left is what is younger or beyond the limit.
    #[test]
    fn deletes_take_the_oldest_first_up_to_the_limit() {
        let mut disk = Disk::default();
        for (id, end) in [(1, 50), (2, 10), (3, 30), (4, 100), (5, 20)] {
            disk.apply(DiskWrite::Entry(Entry::Cdrs(vec![cdr(id, end)]))).unwrap();
        }
        assert_eq!(disk.reap(&batch("cdr", Action::Delete, 60, 2)), Ok(2));
        assert_eq!(disk.cdrs.keys().copied().collect::<Vec<_>>(), [1, 3, 4], "ends 10 and 20 went first");
        assert_eq!(disk.reap(&batch("cdr", Action::Delete, 60, 10)), Ok(2));
        assert_eq!(disk.reap(&batch("cdr", Action::Delete, 60, 10)), Ok(0), "idempotent");
        assert_eq!(disk.cdrs.keys().copied().collect::<Vec<_>>(), [4]);
        assert_eq!(disk.reap(&batch("cdr", Action::Delete, 100, 10)), Ok(0), "end == cutoff is not older");
        assert_eq!(disk.cdr_ends.len(), disk.cdrs.len());

        for (aor, expires) in [("a", 40), ("b", 5), ("c", 90)] {
            let b = binding(aor, expires);
            disk.bindings.insert((b.aor.clone(), b.contact.clone()), b);
        }
        assert_eq!(disk.reap(&batch("registration", Action::Delete, 50, 1)), Ok(1));
        assert!(!disk.bindings.keys().any(|(aor, _)| aor == "b"), "the longest expired first");
        assert_eq!(disk.reap(&batch("registration", Action::Delete, 50, 5)), Ok(1));
        assert_eq!(disk.bindings.len(), 1);

        for at in [3, 1, 2] {
            disk.apply(DiskWrite::Audit(AuditEntry {
                at: t(at),
                event: pbx_actors::privacy::AuditEvent::Retention { rules: Vec::new(), finished: t(at) },
            }))
            .unwrap();
        }
        assert_eq!(disk.reap(&batch("privacy-audit", Action::Delete, 3, 9)), Ok(2));
        assert_eq!(disk.audit.keys().map(|k| k.0).collect::<Vec<_>>(), [t(3)]);
        assert_eq!(disk.reaped[&("cdr", Action::Delete)], 4);
        assert_eq!(disk.reaped_total(), 8);
    }

    /// Anonymising truncates the address, masks the user, marks the entry, never twice; a
    /// delete takes anonymised and fresh entries alike.
    #[test]
    fn the_security_log_is_anonymised_then_deleted() {
        let mut disk = Disk::default();
        log(&mut disk, 10, "203.0.113.77", "1001");
        log(&mut disk, 20, "2001:db8:1:2::3", "admin");
        log(&mut disk, 30, "198.51.100.9", "9999");
        assert_eq!(disk.reap(&batch("security-log", Action::Anonymise, 25, 1)), Ok(1));
        assert_eq!(disk.reap(&batch("security-log", Action::Anonymise, 25, 5)), Ok(1));
        assert_eq!(disk.reap(&batch("security-log", Action::Anonymise, 25, 5)), Ok(0), "not twice");
        let entries: Vec<(String, &str, bool)> = disk
            .security_log
            .values()
            .map(|e| (e.source.to_string(), e.user.as_deref().unwrap_or(""), e.anonymised))
            .collect();
        assert_eq!(
            entries,
            [
                ("203.0.113.0".into(), "1xxx", true),
                ("2001:db8:1::".into(), "adxxx", true),
                ("198.51.100.9".into(), "9999", false)
            ]
        );
        assert_eq!(disk.security_fresh.len(), 1);
        assert_eq!(disk.reap(&batch("security-log", Action::Delete, 31, 2)), Ok(2));
        assert_eq!(disk.reap(&batch("security-log", Action::Delete, 31, 2)), Ok(1));
        assert!(disk.security_log.is_empty() && disk.security_fresh.is_empty());
    }

    /// A pair no table holds is refused, as the node's store refuses it, and changes nothing.
    #[test]
    fn an_unknown_rule_is_an_error() {
        let mut disk = Disk::default();
        disk.apply(DiskWrite::Entry(Entry::Cdrs(vec![cdr(1, 1)]))).unwrap();
        assert!(disk.reap(&batch("cdr", Action::Anonymise, 10, 5)).unwrap_err().contains("cdr"));
        assert!(disk.reap(&batch("licence-service-log", Action::Delete, 10, 5)).is_err());
        assert_eq!(disk.cdrs.len(), 1);
    }
}

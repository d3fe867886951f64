//! What a node makes durable through the replicated store: [`Entry`], one Raft entry's payload
//! (versioned as stored: [`EntryV`]), and [`apply_entry`], the one place that says what a
//! committed entry changes. Both stores that commit entries implement [`EntryStore`]: the
//! node's applier (pbx-node's `cluster::NodeApplier`, over `pbx.redb`) and the simulator's
//! disk, so the simulator's durable path is the product's entries, applied by the product's
//! code.

use crate::Timestamp;
use crate::cdr::{Cdr, CdrV1};
use crate::conference::core::Participation;
use crate::licence::{Stored, StoredUnlocks};
use crate::privacy::{AuditEntry, Right};
use crate::push::PushRecord;
use crate::registrar::{RegistrarCommand, RegistrarCommandV1};
use serde::{Deserialize, Serialize};

/// One replicated entry's payload, versioned like every stored value.
///
/// A node writes the newest version only. In a cluster of mixed versions an older node cannot
/// read it: its state machine stops at that entry with a storage error (nothing applied
/// wrongly, the entry stays in the log) and catches up once it runs the new version
/// (docs/ARCHITECTURE.md, "Cluster").
#[derive(Serialize, Deserialize)]
pub enum EntryV {
    /// Before issue 15: bindings without the NAT flag.
    V1(EntryV1),
    /// Bindings with the NAT flag (`Binding::nat`, issue 15).
    V2(Entry),
}

/// [`Entry`] as written before issue 15: the same variants, in the same order, with registrar
/// commands of the old shape. Never edit it (postcard reads variants by position).
#[derive(Serialize, Deserialize)]
pub enum EntryV1 {
    Registrar(Vec<RegistrarCommandV1>),
    Cdrs(Vec<CdrV1>),
    Licence(Stored),
    Unlocks(StoredUnlocks),
    Erase { subject: String, audit: AuditEntry },
    Flag { subject: String, right: Right, at: Timestamp, audit: AuditEntry },
}

impl From<EntryV1> for Entry {
    /// A V1 binding's NAT flag is computed as V1 routed it (`BindingV1`'s `From`).
    fn from(entry: EntryV1) -> Entry {
        match entry {
            EntryV1::Registrar(commands) => Entry::Registrar(commands.into_iter().map(Into::into).collect()),
            EntryV1::Cdrs(cdrs) => Entry::CdrsV1(cdrs),
            EntryV1::Licence(l) => Entry::Licence(l),
            EntryV1::Unlocks(u) => Entry::Unlocks(u),
            EntryV1::Erase { subject, audit } => Entry::Erase { subject, audit },
            EntryV1::Flag { subject, right, at, audit } => Entry::Flag { subject, right, at, audit },
        }
    }
}

/// A durable change. Never reorder or edit a variant: a new shape is a new [`EntryV`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Entry {
    Registrar(Vec<RegistrarCommand>),
    /// Records as written before issue 18 (no transfer fields); read, never written.
    CdrsV1(Vec<CdrV1>),
    Licence(Stored),
    Unlocks(StoredUnlocks),
    /// Erasure of a subject (its id); `audit` gets the record count each node erased.
    Erase {
        subject: String,
        audit: AuditEntry,
    },
    /// A restriction or objection set or lifted at `at`.
    Flag {
        subject: String,
        right: Right,
        at: Timestamp,
        audit: AuditEntry,
    },
    /// Ended conference participations (issue 16): appended last, so every entry written
    /// before reads as it did.
    Participations(Vec<Participation>),
    /// Pushes sent to wake mobile softphones (issue 17, category `push-records`): appended
    /// last, so every entry written before reads as it did.
    PushRecords(Vec<PushRecord>),
    /// Call records with their transfer fields (issue 18, `Cdr::follows`, `Cdr::transfer`):
    /// appended last, so every entry written before reads as it did.
    Cdrs(Vec<Cdr>),
}

impl Entry {
    /// The entry as the Raft log stores it (the newest version).
    pub fn encode(self) -> Result<Vec<u8>, String> {
        postcard::to_allocvec(&EntryV::V2(self)).map_err(|e| e.to_string())
    }

    /// An entry of any version, as the newest.
    pub fn decode(bytes: &[u8]) -> Result<Entry, postcard::Error> {
        Ok(match postcard::from_bytes::<EntryV>(bytes)? {
            EntryV::V1(entry) => entry.into(),
            EntryV::V2(entry) => entry,
        })
    }
}

/// A store committed entries are applied to, one change at a time, in log order.
pub trait EntryStore {
    type Error;

    /// The registrar's commands (extensions and bindings put or removed).
    fn apply_registrar(&mut self, commands: Vec<RegistrarCommand>) -> Result<(), Self::Error>;
    fn put_cdrs(&mut self, cdrs: Vec<Cdr>) -> Result<(), Self::Error>;
    /// The licence watchdog's last verified licence.
    fn save_licence(&mut self, stored: Stored) -> Result<(), Self::Error>;
    fn save_unlocks(&mut self, stored: StoredUnlocks) -> Result<(), Self::Error>;
    /// Erases what the store holds of `subject`; `audit` records it with the count erased.
    fn erase(&mut self, subject: String, audit: AuditEntry) -> Result<(), Self::Error>;
    /// Sets or lifts a restriction or objection on `subject`.
    fn flag(&mut self, subject: String, right: Right, at: Timestamp, audit: AuditEntry) -> Result<(), Self::Error>;
    /// Ended conference participations (category `conference-participation`).
    fn put_participations(&mut self, participations: Vec<Participation>) -> Result<(), Self::Error>;
    /// Pushes sent to wake phones (category `push-records`).
    fn put_push_records(&mut self, records: Vec<PushRecord>) -> Result<(), Self::Error>;
}

/// What a committed entry changes in `store`.
pub fn apply_entry<S: EntryStore + ?Sized>(store: &mut S, entry: Entry) -> Result<(), S::Error> {
    match entry {
        Entry::Registrar(commands) => store.apply_registrar(commands),
        Entry::CdrsV1(cdrs) => store.put_cdrs(cdrs.into_iter().map(Cdr::from).collect()),
        Entry::Cdrs(cdrs) => store.put_cdrs(cdrs),
        Entry::Licence(stored) => store.save_licence(stored),
        Entry::Unlocks(stored) => store.save_unlocks(stored),
        Entry::Erase { subject, audit } => store.erase(subject, audit),
        Entry::Flag { subject, right, at, audit } => store.flag(subject, right, at, audit),
        Entry::Participations(participations) => store.put_participations(participations),
        Entry::PushRecords(records) => store.put_push_records(records),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the stored encoding is what the Raft logs hold: version 2, variant by position,
    // postcard varints; a change of shape or order fails here.
    #[test]
    fn the_stored_encoding_is_pinned() {
        let stored = [1, 0, 1, 1, 3, b'1', b'0', b'0'];
        let entry = Entry::decode(&stored).unwrap();
        assert!(
            matches!(&entry, Entry::Registrar(c) if matches!(&c[..], [RegistrarCommand::RemoveExtension { number }] if number == "100"))
        );
        assert_eq!(entry.encode().unwrap(), stored);
        assert!(Entry::decode(&[2, 0]).is_err(), "no version 3 yet");
    }

    fn push_record() -> PushRecord {
        PushRecord {
            id: 7,
            at: Timestamp(1),
            user: "1".into(),
            caller: "2".into(),
            callee: "1".into(),
            provider: "fcm".into(),
            device: "t".into(),
            source: "192.0.2.1:5060".parse().expect("an address"),
            outcome: "delivered".into(),
        }
    }

    // Proves push records reach the log and come back whole (postcard), as the last variant
    // (7): a record's fields in their order, each pinned, so a change of shape fails here.
    #[test]
    fn push_records_round_trip_as_the_last_variant() {
        let stored = [
            1, 7, 1, 7, 1, 1, b'1', 1, b'2', 1, b'1', 3, b'f', b'c', b'm', 1, b't', 0, 192, 0, 2, 1, 196, 39, 9, b'd',
            b'e', b'l', b'i', b'v', b'e', b'r', b'e', b'd',
        ];
        let encoded = Entry::PushRecords(vec![push_record()]).encode().unwrap();
        assert_eq!(encoded, stored);
        let Entry::PushRecords(records) = Entry::decode(&encoded).unwrap() else { panic!("not push records") };
        assert_eq!(records, [push_record()]);
    }

    // Proves entries written before push records existed still read as they did: the
    // participations entry (variant 6, the last one then) and a call-record batch, as stored.
    #[test]
    fn entries_written_before_push_records_still_decode() {
        assert!(matches!(Entry::decode(&[1, 6, 0]).unwrap(), Entry::Participations(p) if p.is_empty()));
        assert!(matches!(Entry::decode(&[1, 1, 0]).unwrap(), Entry::CdrsV1(c) if c.is_empty()));
        assert_eq!(Entry::Participations(Vec::new()).encode().unwrap(), [1, 6, 0]);
        assert!(matches!(Entry::decode(&[1, 8, 0]).unwrap(), Entry::Cdrs(c) if c.is_empty()));
        assert!(Entry::decode(&[1, 9, 0]).is_err(), "no variant after the records with transfers yet");
    }

    /// A record written before issue 18 reads back whole, with no transfer.
    #[test]
    fn records_written_before_transfers_still_decode() {
        let old = CdrV1 {
            id: 7,
            call_id: "c".into(),
            caller: "100".into(),
            callee: "101".into(),
            start: Timestamp::from_secs(1),
            answer: None,
            end: Timestamp::from_secs(2),
            disposition: crate::cdr::Disposition::Busy,
            hangup: None,
            codec_caller: None,
            codec_callee: None,
            media: Default::default(),
        };
        let bytes = postcard::to_allocvec(&EntryV::V2(Entry::CdrsV1(vec![old.clone()]))).unwrap();
        let Entry::CdrsV1(read) = Entry::decode(&bytes).unwrap() else { panic!("the old variant") };
        let cdr = Cdr::from(read[0].clone());
        assert_eq!((cdr.id, cdr.caller.as_str(), cdr.follows, cdr.transfer), (7, "100", None, None));
    }
}

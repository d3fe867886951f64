//! A node's simulated disk: what the node's redb file would hold, with crash semantics.
//!
//! A write is durable only once its commit (the fsync) has happened; writes are committed in
//! the order they were issued, each `fsync` after the previous one (a single writer, as redb
//! has). A crash loses every write not yet committed — and the answers that waited for them.

use crate::node::DiskWrite;
use pbx_actors::cdr::Cdr;
use pbx_actors::registrar::{Binding, Extension, RegistrarCommand};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Disk {
    pub extensions: BTreeMap<String, Extension>,
    pub bindings: BTreeMap<(String, String), Binding>,
    /// CDRs by id; a second CDR with the same id is kept aside as a duplicate.
    pub cdrs: BTreeMap<u64, Cdr>,
    pub duplicate_cdrs: Vec<Cdr>,
    /// The watchdog's last verified licence.
    pub licence: Option<pbx_actors::licence::Stored>,
    /// Writes committed, and writes lost in crashes.
    pub commits: u64,
    pub lost_in_crash: u64,
}

impl Disk {
    /// Applies a committed write.
    pub fn apply(&mut self, write: DiskWrite) {
        self.commits += 1;
        match write {
            DiskWrite::Registrar(commands) => {
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
                    }
                }
            }
            DiskWrite::Licence(stored) => self.licence = Some(*stored),
            DiskWrite::Cdr(cdr) => {
                if let Some(previous) = self.cdrs.insert(cdr.id, (*cdr).clone()) {
                    self.duplicate_cdrs.push(previous);
                }
            }
        }
    }

    /// What a node restores from at start.
    pub fn snapshot(&self) -> (Vec<Extension>, Vec<Binding>) {
        (self.extensions.values().cloned().collect(), self.bindings.values().cloned().collect())
    }
}

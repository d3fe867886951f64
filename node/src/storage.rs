//! The node's durable state: one redb file in the data directory.
//!
//! Durable changes arrive as commands (`RegistrarCommand`) and are applied by [`Storage::apply`]
//! in one write transaction — the shape openraft will replicate when the cluster arrives
//! (ARCHITECTURE.md, "Cluster"). Values are postcard inside explicit version enums so the
//! format can evolve without a migration flag day. A commit is durable (fsync) before
//! `apply` returns, so the phone's 200 OK is only sent for a binding that a `kill -9` keeps.

use pbx_actors::registrar::{Binding, Extension, RegistrarCommand, RegistrarStore};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const EXTENSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("extensions");
/// Keyed by `aor \0 contact`, so one AOR's bindings sit together.
const BINDINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("bindings");

pub const DB_FILE: &str = "pbx.redb";

/// Every table of the file; each must be declared in the privacy inventory
/// (`pbx_actors::privacy::INVENTORY`) — a test checks it.
pub const TABLES: &[&str] = &["extensions", "bindings"];

#[derive(Serialize, Deserialize)]
enum StoredExtensionV {
    V1(Extension),
}

#[derive(Serialize, Deserialize)]
enum StoredBindingV {
    V1(Binding),
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{0}")]
    Redb(String),
    #[error("decode {table} record {key:?}: {reason}")]
    Decode { table: String, key: String, reason: String },
}

fn redb_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Redb(e.to_string())
}

pub struct Storage {
    db: Database,
}

/// Everything the node restores at start.
pub struct Snapshot {
    pub extensions: Vec<Extension>,
    pub bindings: Vec<Binding>,
}

impl Storage {
    /// Opens (or creates) `DATA_DIR/pbx.redb` and makes sure every table exists.
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        let path = data_dir.join(DB_FILE);
        let db = Database::create(&path)
            .map_err(|e| StorageError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        let tx = db.begin_write().map_err(redb_err)?;
        tx.open_table(EXTENSIONS).map_err(redb_err)?;
        tx.open_table(BINDINGS).map_err(redb_err)?;
        tx.commit().map_err(redb_err)?;
        Ok(Storage { db })
    }

    pub fn load(&self) -> Result<Snapshot, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let extensions = read_all(&tx, EXTENSIONS, |v: StoredExtensionV| match v {
            StoredExtensionV::V1(e) => e,
        })?;
        let bindings = read_all(&tx, BINDINGS, |v: StoredBindingV| match v {
            StoredBindingV::V1(b) => b,
        })?;
        Ok(Snapshot { extensions, bindings })
    }

    /// Applies commands in one durable transaction: all or none.
    pub fn apply(&self, commands: &[RegistrarCommand]) -> Result<(), StorageError> {
        if commands.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(redb_err)?;
        {
            let mut extensions = tx.open_table(EXTENSIONS).map_err(redb_err)?;
            let mut bindings = tx.open_table(BINDINGS).map_err(redb_err)?;
            for command in commands {
                match command {
                    RegistrarCommand::PutExtension(ext) => {
                        let value = postcard::to_allocvec(&StoredExtensionV::V1(ext.clone())).map_err(redb_err)?;
                        extensions.insert(ext.number.as_str(), value.as_slice()).map_err(redb_err)?;
                    }
                    RegistrarCommand::RemoveExtension { number } => {
                        extensions.remove(number.as_str()).map_err(redb_err)?;
                    }
                    RegistrarCommand::PutBinding(b) => {
                        let value = postcard::to_allocvec(&StoredBindingV::V1(b.clone())).map_err(redb_err)?;
                        bindings
                            .insert(binding_key(&b.aor, &b.contact).as_str(), value.as_slice())
                            .map_err(redb_err)?;
                    }
                    RegistrarCommand::RemoveBinding { aor, contact } => {
                        bindings.remove(binding_key(aor, contact).as_str()).map_err(redb_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(redb_err)
    }
}

/// Every record of one table, decoded from its version enum and brought up to the current type.
fn read_all<V: serde::de::DeserializeOwned, T>(
    tx: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    upgrade: impl Fn(V) -> T,
) -> Result<Vec<T>, StorageError> {
    use redb::TableHandle;
    let mut out = Vec::new();
    for row in tx.open_table(table).map_err(redb_err)?.iter().map_err(redb_err)? {
        let (k, v) = row.map_err(redb_err)?;
        let decoded: V = postcard::from_bytes(v.value()).map_err(|e| StorageError::Decode {
            table: table.name().to_string(),
            key: k.value().to_string(),
            reason: e.to_string(),
        })?;
        out.push(upgrade(decoded));
    }
    Ok(out)
}

fn binding_key(aor: &str, contact: &str) -> String {
    format!("{aor}\0{contact}")
}

impl RegistrarStore for Storage {
    fn apply(&self, commands: &[RegistrarCommand]) -> Result<(), String> {
        Storage::apply(self, commands).map_err(|e| e.to_string())
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
        }
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
        let mut declared: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
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

//! A redb database that can be rewritten into a fresh file while it is in use, so that what
//! was deleted or overwritten is gone from the disk file, not only from the tables.
//!
//! redb never zeroes a page it frees: a deleted row (a display name, an address) stays in the
//! file until its page happens to be reused, and `Database::compact` only moves pages down and
//! cuts the file's tail — freed pages below the new end keep their old bytes (a test below
//! shows it). [`RedbFile::rewrite`] therefore copies the live rows into a new file next to the
//! old one, makes it durable, renames it over the old one (atomic on POSIX) and carries on with
//! the new file: the old file's name is gone and its inode is freed once the last transaction
//! on it ends. What it does not do: overwrite the blocks the old file occupied on the device
//! (the file system may keep them until reused; on flash, wear levelling decides) — that is the
//! job of disk encryption.
//!
//! Transactions are begun through [`RedbFile`] (the same names as redb's), and a rewrite takes
//! the database for itself: it waits for the write transaction in progress, if any, and new
//! ones wait for the rewrite. No write is lost; writes are delayed by the copy's length.

use redb::{
    Database, Key, ReadTransaction, ReadableDatabase, TableDefinition, TableError, TableHandle, Value, WriteTransaction,
};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Suffix of the file a rewrite builds next to the database's own; one left by a crash is
/// removed when the database is opened.
pub const REWRITE_SUFFIX: &str = "rewrite";

/// A redb database, on disk (rewritable) or in memory (a rewrite does nothing).
pub struct RedbFile {
    db: RwLock<Database>,
    path: Option<PathBuf>,
}

/// What one rewrite did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// How long writers waited: the copy, from taking the database to handing it back.
    pub held: Duration,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The file a rewrite of `path` builds: `pbx.redb` → `pbx.redb.rewrite`.
pub fn rewrite_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(REWRITE_SUFFIX);
    path.with_file_name(name)
}

impl RedbFile {
    /// Opens (or creates) the database at `path`, first removing a half-built rewrite of it
    /// that a crash left behind (the database itself is whole: the rename is the switch).
    pub fn create(path: &Path) -> Result<RedbFile, String> {
        let leftover = rewrite_path(path);
        match std::fs::remove_file(&leftover) {
            Ok(()) => tracing::warn!(file = %leftover.display(), "removed an unfinished rewrite"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&format!("remove {}", leftover.display()), e)),
        }
        let db = Database::create(path).map_err(|e| err(&format!("open {}", path.display()), e))?;
        Ok(RedbFile { db: RwLock::new(db), path: Some(path.to_path_buf()) })
    }

    /// A database without a file of its own (an in-memory backend): nothing to rewrite.
    pub fn in_memory(db: Database) -> RedbFile {
        RedbFile { db: RwLock::new(db), path: None }
    }

    /// The file, if the database has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn begin_read(&self) -> Result<ReadTransaction, redb::TransactionError> {
        self.db.read().unwrap_or_else(PoisonError::into_inner).begin_read()
    }

    pub fn begin_write(&self) -> Result<WriteTransaction, redb::TransactionError> {
        self.db.read().unwrap_or_else(PoisonError::into_inner).begin_write()
    }

    /// Copies the live data into a fresh file with `copy` (from a read transaction of the
    /// current data into a write transaction of the new file), compacts that, and replaces
    /// the database's file with it. While it runs no write transaction begins; the one in
    /// progress when it is called finishes first. On error the database is unchanged.
    ///
    /// Callers must not hold a write transaction of this database on the calling thread, nor
    /// begin a transaction on it while holding one of its write transactions (the rewrite would
    /// wait for the first, the first for the rewrite).
    pub fn rewrite(
        &self,
        copy: impl FnOnce(&ReadTransaction, &WriteTransaction) -> Result<(), String>,
    ) -> Result<Rewritten, String> {
        let Some(path) = &self.path else { return Ok(Rewritten::default()) };
        let fresh_path = rewrite_path(path);
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        // redb has one writer at a time: this waits for a write begun before the lock, and
        // holding it keeps the data still while it is copied.
        let hold = db.begin_write().map_err(|e| err("hold the writer", e))?;
        let read = db.begin_read().map_err(|e| err("read the live data", e))?;
        let bytes_before = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let built = (|| -> Result<Database, String> {
            let _ = std::fs::remove_file(&fresh_path);
            let mut fresh = Database::create(&fresh_path).map_err(|e| err("create the new file", e))?;
            let tx = fresh.begin_write().map_err(|e| err("write the new file", e))?;
            copy(&read, &tx)?;
            // The default durability: fsync before commit returns.
            tx.commit().map_err(|e| err("commit the new file", e))?;
            fresh.compact().map_err(|e| err("compact the new file", e))?;
            Ok(fresh)
        })();
        let fresh = match built {
            Ok(fresh) => fresh,
            Err(e) => {
                let _ = std::fs::remove_file(&fresh_path);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&fresh_path, path) {
            drop(fresh);
            let _ = std::fs::remove_file(&fresh_path);
            return Err(err("replace the old file", e));
        }
        // The rename is durable once the directory is.
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| err("sync the directory", e))?;
        }
        drop(read);
        hold.abort().map_err(|e| err("release the writer", e))?;
        // The old database closes on the old (now unnamed) file; transactions still reading it
        // keep it open until they end.
        drop(std::mem::replace(&mut *db, fresh));
        let held = started.elapsed();
        drop(db);
        let bytes_after = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(Rewritten { bytes_before, bytes_after, held })
    }
}

/// Copies every row of `table` from `from` into `to` (creating it there, empty if need be);
/// the number of rows. A table `from` does not have is created empty.
pub fn copy_table<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, String> {
    let what = |e: &dyn std::fmt::Display| format!("copy table {}: {e}", table.name());
    let mut target = to.open_table(table).map_err(|e| what(&e))?;
    let source = match from.open_table(table) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(what(&e)),
    };
    let mut rows = 0;
    for row in redb::ReadableTable::iter(&source).map_err(|e| what(&e))? {
        let (k, v) = row.map_err(|e| what(&e))?;
        target.insert(k.value(), v.value()).map_err(|e| what(&e))?;
        rows += 1;
    }
    Ok(rows)
}

/// Fails naming any table of `from` not in `copied`: a rewrite that does not know a table
/// would lose it.
pub fn check_all_copied(from: &ReadTransaction, copied: &[&str]) -> Result<(), String> {
    for table in from.list_tables().map_err(|e| err("list tables", e))? {
        if !copied.contains(&table.name()) {
            return Err(format!("table {} has no copy rule: the rewrite would lose it", table.name()));
        }
    }
    if from.list_multimap_tables().map_err(|e| err("list tables", e))?.next().is_some() {
        return Err("a multimap table has no copy rule: the rewrite would lose it".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

    /// How often `needle` occurs in the file at `path`, as raw bytes.
    fn occurrences(path: &Path, needle: &[u8]) -> usize {
        let bytes = std::fs::read(path).unwrap();
        bytes.windows(needle.len()).filter(|w| *w == needle).count()
    }

    /// A fixed pseudo-random workload shaped like pbx's: rows of mixed sizes written in a few
    /// transactions, some carrying `secret` (also in a second table), a large value replaced
    /// (as the Raft snapshot is), then the secret rows deleted and a few small writes after.
    fn workload(db: &RedbFile, round: u64, secret: &[u8]) {
        let mut seed = 0x9e37_79b9_7f4a_7c15 ^ round;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let n = 200 + rnd() % 2000;
        let victims: Vec<u64> = (0..4 + rnd() % 12).map(|_| rnd() % n).collect();
        for chunk in 0..5 {
            let tx = db.begin_write().unwrap();
            {
                let (mut t, mut meta) = (tx.open_table(T).unwrap(), tx.open_table(META).unwrap());
                for i in (chunk * n / 5)..((chunk + 1) * n / 5) {
                    let size = if rnd() % 10 == 0 { 2_000 + rnd() % 20_000 } else { 40 + rnd() % 300 };
                    let mut v = vec![b'a' + (i % 26) as u8; size as usize];
                    if victims.contains(&i) {
                        v[..secret.len()].copy_from_slice(secret);
                        meta.insert(i.to_string().as_str(), v.as_slice()).unwrap();
                    }
                    t.insert(i, v.as_slice()).unwrap();
                }
                meta.insert("snapshot", vec![b'z'; 100_000].as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let tx = db.begin_write().unwrap();
        {
            let (mut t, mut meta) = (tx.open_table(T).unwrap(), tx.open_table(META).unwrap());
            for v in &victims {
                t.remove(*v).unwrap();
                meta.remove(v.to_string().as_str()).unwrap();
            }
            meta.insert("snapshot", vec![b'y'; 100_000].as_slice()).unwrap();
        }
        tx.commit().unwrap();
        for i in 0..3 {
            let tx = db.begin_write().unwrap();
            tx.open_table(T).unwrap().insert(n + i, b"later".as_slice()).unwrap();
            tx.commit().unwrap();
        }
    }

    fn copy_both(db: &RedbFile) -> Result<Rewritten, String> {
        db.rewrite(|from, to| {
            copy_table(from, to, T)?;
            copy_table(from, to, META)?;
            check_all_copied(from, &["t", "meta"])
        })
    }

    /// The finding that makes the rewrite necessary: after deleting rows and `compact()`,
    /// their bytes are still in the file in most rounds of the workload (redb does not zero
    /// freed pages; compaction moves live pages down and cuts the tail, and what it does not
    /// overwrite stays).
    #[test]
    fn compact_alone_leaves_deleted_bytes_in_the_file() {
        let mut residue = Vec::new();
        for round in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.redb");
            let secret = format!("Zelda-Quarantotto-{round}");
            let db = RedbFile::create(&path).unwrap();
            workload(&db, round, secret.as_bytes());
            let mut db = db.db.into_inner().unwrap();
            db.compact().unwrap();
            drop(db);
            residue.push(occurrences(&path, secret.as_bytes()));
        }
        assert!(
            residue.iter().any(|&n| n > 0),
            "redb's compact now clears freed pages ({residue:?}): see the module doc"
        );
    }

    /// After a rewrite none of the deleted bytes are in the file; every table and live row is
    /// still there, the database goes on taking writes, and it reopens with them.
    #[test]
    fn rewrite_keeps_live_rows_and_drops_deleted_bytes() {
        for round in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.redb");
            let secret = format!("Zelda-Quarantotto-{round}");
            let db = RedbFile::create(&path).unwrap();
            workload(&db, round, secret.as_bytes());
            let rows = db.begin_read().unwrap().open_table(T).unwrap().len().unwrap();
            let done = copy_both(&db).unwrap();
            assert!(done.bytes_after <= done.bytes_before, "{done:?}");
            assert_eq!(occurrences(&path, secret.as_bytes()), 0, "round {round}");
            assert!(!rewrite_path(&path).exists());
            let tx = db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert("after", b"the rewrite".as_slice()).unwrap();
            tx.commit().unwrap();
            drop(db);
            let db = RedbFile::create(&path).unwrap();
            let read = db.begin_read().unwrap();
            let meta = read.open_table(META).unwrap();
            assert_eq!(meta.get("after").unwrap().unwrap().value(), b"the rewrite");
            assert_eq!(meta.get("snapshot").unwrap().unwrap().value(), vec![b'y'; 100_000].as_slice());
            assert_eq!(read.open_table(T).unwrap().len().unwrap(), rows);
        }
    }

    /// A table the copy does not name stops the rewrite and leaves the database as it was;
    /// a half-built file left by a crash is removed at open.
    #[test]
    fn an_unknown_table_stops_the_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let db = RedbFile::create(&path).unwrap();
        workload(&db, 0, b"x");
        let refused = db.rewrite(|from, to| {
            copy_table(from, to, T)?;
            check_all_copied(from, &["t"])
        });
        assert!(refused.unwrap_err().contains("meta"));
        assert!(!rewrite_path(&path).exists());
        assert!(db.begin_read().unwrap().open_table(META).unwrap().get("snapshot").unwrap().is_some());
        drop(db);
        std::fs::write(rewrite_path(&path), b"half").unwrap();
        drop(RedbFile::create(&path).unwrap());
        assert!(!rewrite_path(&path).exists());
    }

    /// A writer on another thread during rewrites loses nothing: every committed row is in the
    /// database afterwards.
    #[test]
    fn concurrent_writes_survive_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let db = std::sync::Arc::new(RedbFile::create(&path).unwrap());
        let writer = {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..400u64 {
                    let tx = db.begin_write().unwrap();
                    tx.open_table(T).unwrap().insert(i, b"w".as_slice()).unwrap();
                    tx.commit().unwrap();
                }
            })
        };
        for _ in 0..5 {
            copy_both(&db).unwrap();
        }
        writer.join().unwrap();
        assert_eq!(db.begin_read().unwrap().open_table(T).unwrap().len().unwrap(), 400);
    }
}

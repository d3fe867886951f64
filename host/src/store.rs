//! What every redb file of a pbx process shares: its error, and how a stored record is read
//! back from its version enum. The schemas stay with their owners (node, licence service).

/// A redb file could not be opened, read, decoded or written: what and why.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{0}")]
    Redb(String),
    #[error("decode {table} record {key:?}: {reason}")]
    Decode { table: String, key: String, reason: String },
}

/// Any redb error, as a [`StorageError`].
pub fn redb_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Redb(e.to_string())
}

/// A stored value, decoded from its version enum; the error names the table and the key.
pub fn decode<V: serde::de::DeserializeOwned>(
    table: &str,
    key: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<V, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Decode {
        table: table.to_string(),
        key: key(),
        reason: e.to_string(),
    })
}

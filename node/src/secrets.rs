//! The node's secrets in its data directory, in one module: the admin token and the secret-file
//! rules (from [`pbx_host::secret_file`], shared with the licence service) and the privacy key,
//! whose pseudonyms name data subjects in the audit and the tombstones.

pub use pbx_host::secret_file::{ADMIN_TOKEN_FILE, admin_token, read, restrict_permissions, write, write_secret};

/// The privacy key's file in the data directory.
pub const PRIVACY_KEY_FILE: &str = "privacy.key";

/// The node's privacy key (`DATA_DIR/privacy.key`): what makes a subject's pseudonym.
#[derive(Clone)]
pub struct PrivacyKey(ring::hmac::Key);

impl PrivacyKey {
    /// Reads `DATA_DIR/privacy.key`, making it (32 random bytes, mode 0600) at first start.
    pub fn open(data_dir: &std::path::Path) -> anyhow::Result<PrivacyKey> {
        use anyhow::Context;
        let path = data_dir.join(PRIVACY_KEY_FILE);
        let hex_key = match read(&path).with_context(|| format!("read {}", path.display()))? {
            Some(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
            None => {
                let key = hex::encode(rand::random::<[u8; 32]>());
                write_secret(&path, &key).with_context(|| format!("write {}", path.display()))?;
                key
            }
        };
        let bytes = hex::decode(&hex_key)
            .ok()
            .filter(|b| b.len() == 32)
            .with_context(|| format!("{}: not 64 hex digits", path.display()))?;
        Ok(PrivacyKey::from_bytes(&bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> PrivacyKey {
        PrivacyKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    /// The subject as the audit and the tombstones name it: 16 bytes of HMAC-SHA-256 of its
    /// id, in hex.
    pub fn pseudonym(&self, subject: &pbx_actors::privacy::Subject) -> String {
        let tag = ring::hmac::sign(&self.0, format!("subject:{}", subject.id()).as_bytes());
        hex::encode(&tag.as_ref()[..16])
    }

    /// Which key this is, without revealing it: 8 bytes of HMAC-SHA-256 of a fixed label.
    pub fn fingerprint(&self) -> String {
        hex::encode(&ring::hmac::sign(&self.0, b"pbx privacy key fingerprint").as_ref()[..8])
    }

    /// The tombstone an erasure of `subject` leaves: for a number, its pseudonym; an address
    /// leaves none (no config file declares one).
    pub fn tombstone(
        &self,
        subject: &pbx_actors::privacy::Subject,
        at: pbx_actors::Timestamp,
    ) -> Option<crate::storage::Tombstone> {
        match subject {
            pbx_actors::privacy::Subject::Number(_) => {
                Some(crate::storage::Tombstone { pseudonym: self.pseudonym(subject), key: self.fingerprint(), at })
            }
            pbx_actors::privacy::Subject::Ip(_) => None,
        }
    }
}

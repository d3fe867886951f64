//! The documents the licence service signs and pbx verifies offline: a [`Licence`] (what a
//! serial may do, until when) and the [`Unlocks`] its redeemed vouchers add.
//!
//! On the wire a document travels in an [`Envelope`]: the document's JSON text exactly as
//! signed, and an Ed25519 signature over those bytes (hex). pbx verifies the signature with
//! the service's public key *before* it parses the text, so nothing unsigned is ever read,
//! and keeps the envelope as it came, so it can verify it again after a restart without
//! asking the service. Pure: no clock, no I/O, no RNG (Ed25519 signing is deterministic).

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// What a document can be, so a licence cannot be passed off as unlocks or the other way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Licence,
    Unlocks,
}

/// Features a licence or a voucher switches on, beyond numeric limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Conference rooms (N-party mixing).
    Conference,
    /// Running as more than one node.
    Cluster,
    /// Softphones reaching pbx through the proxy, without VPN.
    SoftphoneProxy,
    /// Push notifications to wake mobile softphones.
    Push,
}

impl Feature {
    pub const ALL: [Feature; 4] = [Feature::Conference, Feature::Cluster, Feature::SoftphoneProxy, Feature::Push];

    pub fn name(self) -> &'static str {
        match self {
            Feature::Conference => "conference",
            Feature::Cluster => "cluster",
            Feature::SoftphoneProxy => "softphone_proxy",
            Feature::Push => "push",
        }
    }
}

/// Numeric limits. The rest of pbx obeys the effective ones (licence and unlocks while
/// licensed, [`Limits::UNLICENSED`] otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Extensions that may exist. Extensions beyond it are never deleted: no new ones.
    pub extensions: u32,
    /// Calls up at once; more get SIP 403. Emergency numbers are never refused.
    pub concurrent_calls: u32,
    pub conference_rooms: u32,
    pub proxy_seats: u32,
    pub cluster_nodes: u32,
}

impl Limits {
    /// A small office without a licence (or whose licence lapsed): internal calls go on.
    pub const UNLICENSED: Limits =
        Limits { extensions: 10, concurrent_calls: 4, conference_rooms: 0, proxy_seats: 0, cluster_nodes: 1 };

    /// Each limit raised by `extra` (saturating): a voucher adds to a licence.
    pub fn plus(self, extra: Limits) -> Limits {
        Limits {
            extensions: self.extensions.saturating_add(extra.extensions),
            concurrent_calls: self.concurrent_calls.saturating_add(extra.concurrent_calls),
            conference_rooms: self.conference_rooms.saturating_add(extra.conference_rooms),
            proxy_seats: self.proxy_seats.saturating_add(extra.proxy_seats),
            cluster_nodes: self.cluster_nodes.saturating_add(extra.cluster_nodes),
        }
    }

    pub const ZERO: Limits =
        Limits { extensions: 0, concurrent_calls: 0, conference_rooms: 0, proxy_seats: 0, cluster_nodes: 0 };
}

/// What the service grants one PBX serial number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    pub kind: Kind,
    pub serial: String,
    pub features: BTreeSet<Feature>,
    pub limits: Limits,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; after it the licence grants nothing, however recently it was fetched.
    pub valid_until: u64,
}

/// What the vouchers redeemed for one serial add, as of `issued_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unlocks {
    pub kind: Kind,
    pub serial: String,
    pub features: BTreeSet<Feature>,
    /// Added to the licence's limits.
    pub limits: Limits,
    /// The release codes of the redeemed vouchers, for the admin to see.
    pub release_codes: Vec<String>,
    /// Unix seconds.
    pub issued_at: u64,
}

/// A signed document as it travels and as pbx stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The document's JSON text, byte for byte what was signed.
    pub document: String,
    /// Ed25519 over `document`'s bytes, lowercase hex (128 characters).
    pub signature: String,
}

/// Why an envelope was refused. Each is logged and retried on schedule; none switches
/// anything off early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not an envelope (not JSON, missing fields, not hex).
    Malformed(String),
    /// The signature does not verify with the service's key: tampered, or another key.
    BadSignature,
    /// Signed, but not the document expected (wrong kind or fields).
    Unreadable(String),
    /// For another serial number.
    WrongSerial { expected: String, found: String },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Malformed(why) => write!(f, "malformed envelope: {why}"),
            Refused::BadSignature => write!(f, "signature does not verify with the licence service's key"),
            Refused::Unreadable(why) => write!(f, "signed document unreadable: {why}"),
            Refused::WrongSerial { expected, found } => write!(f, "document for serial {found:?}, not {expected:?}"),
        }
    }
}

/// The service's Ed25519 public key (32 bytes), as configured in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// From 64 hex digits; the error says what is wrong.
    pub fn from_hex(text: &str) -> Result<PublicKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes, expected 32", b.len()))?;
        Ok(PublicKey(key))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// The service's signing key, from its 32-byte Ed25519 seed. The shell that owns it draws
/// the seed once (from the OS) and stores it; signing itself needs no randomness.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey(Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are an Ed25519 seed"))
    }

    pub fn public_key(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(key)
    }

    /// Signs a document: its JSON text and the signature over it.
    pub fn seal<T: Serialize>(&self, document: &T) -> Envelope {
        let text = serde_json::to_string(document).expect("licence documents always serialize");
        let signature = hex::encode(self.0.sign(text.as_bytes()).as_ref());
        Envelope { document: text, signature }
    }
}

impl Envelope {
    /// Parses an envelope as received (JSON).
    pub fn parse(bytes: &[u8]) -> Result<Envelope, Refused> {
        serde_json::from_slice(bytes).map_err(|e| Refused::Malformed(e.to_string()))
    }

    /// Checks the signature, then reads the document and checks its kind and serial.
    pub fn open_licence(&self, key: &PublicKey, serial: &str) -> Result<Licence, Refused> {
        let licence: Licence = self.open(key)?;
        check(licence.kind, Kind::Licence, &licence.serial, serial)?;
        Ok(licence)
    }

    pub fn open_unlocks(&self, key: &PublicKey, serial: &str) -> Result<Unlocks, Refused> {
        let unlocks: Unlocks = self.open(key)?;
        check(unlocks.kind, Kind::Unlocks, &unlocks.serial, serial)?;
        Ok(unlocks)
    }

    fn open<T: for<'de> Deserialize<'de>>(&self, key: &PublicKey) -> Result<T, Refused> {
        let signature = hex::decode(&self.signature).map_err(|e| Refused::Malformed(format!("signature: {e}")))?;
        UnparsedPublicKey::new(&ED25519, key.0)
            .verify(self.document.as_bytes(), &signature)
            .map_err(|_| Refused::BadSignature)?;
        serde_json::from_str(&self.document).map_err(|e| Refused::Unreadable(e.to_string()))
    }
}

fn check(kind: Kind, expected_kind: Kind, found: &str, expected: &str) -> Result<(), Refused> {
    if kind != expected_kind {
        return Err(Refused::Unreadable(format!("a {kind:?} document where a {expected_kind:?} was expected")));
    }
    if found != expected {
        return Err(Refused::WrongSerial { expected: expected.into(), found: found.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_key() -> SigningKey {
        SigningKey::from_seed(&[7; 32])
    }

    fn licence(serial: &str) -> Licence {
        Licence {
            kind: Kind::Licence,
            serial: serial.into(),
            features: [Feature::Conference].into(),
            limits: Limits { extensions: 50, ..Limits::UNLICENSED },
            issued_at: 1_767_571_200,
            valid_until: 1_799_107_200,
        }
    }

    #[test]
    fn a_sealed_licence_opens_with_the_key_and_serial() {
        let key = test_key();
        let envelope = key.seal(&licence("PBX-1"));
        let wire = serde_json::to_vec(&envelope).unwrap();
        let back = Envelope::parse(&wire).unwrap();
        assert_eq!(back.open_licence(&key.public_key(), "PBX-1").unwrap(), licence("PBX-1"));
    }

    #[test]
    fn tampering_wrong_keys_kinds_and_serials_are_refused() {
        let key = test_key();
        let public = key.public_key();
        let mut envelope = key.seal(&licence("PBX-1"));
        envelope.document = envelope.document.replace("50", "5000");
        assert_eq!(envelope.open_licence(&public, "PBX-1"), Err(Refused::BadSignature));
        let other = SigningKey::from_seed(&[9; 32]);
        assert_eq!(other.seal(&licence("PBX-1")).open_licence(&public, "PBX-1"), Err(Refused::BadSignature));
        assert!(matches!(key.seal(&licence("PBX-2")).open_licence(&public, "PBX-1"), Err(Refused::WrongSerial { .. })));
        let unlocks = Unlocks {
            kind: Kind::Unlocks,
            serial: "PBX-1".into(),
            features: Default::default(),
            limits: Limits::ZERO,
            release_codes: vec![],
            issued_at: 0,
        };
        assert!(matches!(key.seal(&unlocks).open_licence(&public, "PBX-1"), Err(Refused::Unreadable(_))));
        assert!(matches!(Envelope::parse(b"<html>"), Err(Refused::Malformed(_))));
        let bad_hex = Envelope { document: "{}".into(), signature: "zz".into() };
        assert!(matches!(bad_hex.open_licence(&public, "PBX-1"), Err(Refused::Malformed(_))));
    }

    #[test]
    fn public_keys_read_from_hex_say_what_is_wrong() {
        let public = test_key().public_key();
        assert_eq!(PublicKey::from_hex(&public.to_hex()), Ok(public));
        assert!(PublicKey::from_hex("abc").unwrap_err().contains("hex"));
        assert!(PublicKey::from_hex("abcd").unwrap_err().contains("2 bytes"));
    }
}

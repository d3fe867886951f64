//! The keys of both push services, as the files Google and Apple hand out hold them, and the
//! making of new ones for the stand-in.
//!
//! - FCM: a service account's `private_key` is an RSA key in PKCS#8 PEM (`BEGIN PRIVATE KEY`);
//!   its public half is an RSA SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`, RFC 5280 §4.1.2.7).
//! - APNs: an `AuthKey_<KEYID>.p8` is an ECDSA P-256 key in PKCS#8 PEM; its public half a P-256
//!   SubjectPublicKeyInfo with the point uncompressed (SEC 1 §2.3.3).
//!
//! Signing and verifying are ring's. ring cannot make RSA keys, so [`generate_rsa`] uses the
//! `rsa` crate (RustCrypto) for generation and PEM encoding only: no private-key operation of
//! that crate runs here, so RUSTSEC-2023-0071 (timing of its RSA decryption and signing, the
//! "Marvin attack") does not reach us, and 0.10 replaced the variable-time arithmetic anyway.
//!
//! Not here: encrypted PKCS#8, RSA public keys as PKCS#1 PEM, X.509 certificates as keys,
//! curves other than P-256.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_2048_8192_SHA256,
    RsaKeyPair, RsaPublicKeyComponents, UnparsedPublicKey,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// Bits of the RSA keys [`generate_rsa`] makes: what Google makes for service accounts.
pub const RSA_KEY_BITS: usize = 2048;

/// The DER of a P-256 SubjectPublicKeyInfo up to its 65-byte uncompressed point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) 04 x y }.
/// DER is canonical, so every such key starts with exactly these bytes.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// An uncompressed P-256 point: 0x04, x, y.
const P256_POINT_BYTES: usize = 65;

/// Why a key could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no {0} PEM block")]
    Pem(&'static str),
    #[error("not an RSA key ring accepts (2048 to 8192 bits, PKCS#8 or PKCS#1): {0}")]
    Rsa(String),
    #[error("not an ECDSA P-256 key in PKCS#8 with its public key: {0}")]
    Ec(String),
    #[error("not a P-256 public key (SubjectPublicKeyInfo, uncompressed point)")]
    EcPublic,
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// An RSA public key to check RS256 signatures with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    /// Modulus and exponent, big-endian without leading zeros (what ring wants).
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaPublicKey {
    /// Reads a `BEGIN PUBLIC KEY` PEM (SubjectPublicKeyInfo) holding an RSA key.
    pub fn from_pem(pem: &str) -> Result<RsaPublicKey, KeyError> {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).map_err(|_| KeyError::Pem("PUBLIC KEY"))?;
        let key = rsa::PublicKey::from_public_key_der(der.as_ref()).map_err(|e| KeyError::Rsa(e.to_string()))?;
        Ok(RsaPublicKey { n: key.n_bytes().into_vec(), e: key.e_bytes().into_vec() })
    }

    /// Whether `signature` is this key's RSASSA-PKCS1-v1_5 SHA-256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        RsaPublicKeyComponents { n: &self.n, e: &self.e }
            .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
            .is_ok()
    }
}

/// A P-256 public key to check ES256 signatures with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcPublicKey {
    point: Vec<u8>,
}

impl EcPublicKey {
    /// Reads a `BEGIN PUBLIC KEY` PEM (SubjectPublicKeyInfo) holding a P-256 key.
    pub fn from_pem(pem: &str) -> Result<EcPublicKey, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).map_err(|_| KeyError::Pem("PUBLIC KEY"))?;
        match der.as_ref().strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == P256_POINT_BYTES && point[0] == 0x04 => {
                Ok(EcPublicKey { point: point.to_vec() })
            }
            _ => Err(KeyError::EcPublic),
        }
    }

    /// Whether `signature` (`r || s`, 64 bytes) is this key's ECDSA SHA-256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.point).verify(message, signature).is_ok()
    }
}

/// An RSA signing key from a `BEGIN PRIVATE KEY` (PKCS#8, what Google's service-account JSON
/// holds) or `BEGIN RSA PRIVATE KEY` (PKCS#1) PEM.
pub fn rsa_signing_key(pem: &str) -> Result<RsaKeyPair, KeyError> {
    if let Ok(der) = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()) {
        return RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| KeyError::Rsa(e.to_string()));
    }
    let der = PrivatePkcs1KeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| KeyError::Pem("PRIVATE KEY"))?;
    RsaKeyPair::from_der(der.secret_pkcs1_der()).map_err(|e| KeyError::Rsa(e.to_string()))
}

/// An ECDSA P-256 signing key from a `.p8` (PKCS#8 PEM with the public key inside, as Apple's
/// and ring's are).
pub fn ec_signing_key(pem: &str) -> Result<EcdsaKeyPair, KeyError> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| KeyError::Pem("PRIVATE KEY"))?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der(), &SystemRandom::new())
        .map_err(|e| KeyError::Ec(e.to_string()))
}

/// The `BEGIN PUBLIC KEY` PEM of an RSA private key's PEM: to register an existing service
/// account's key with the gateway.
pub fn rsa_public_pem(private_pem: &str) -> Result<String, KeyError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    let key = rsa_signing_key(private_pem)?;
    let public = rsa::PublicKey::from_pkcs1_der(key.public().as_ref()).map_err(|e| KeyError::Rsa(e.to_string()))?;
    rsa_spki_pem(&public)
}

/// The `BEGIN PUBLIC KEY` PEM of a `.p8`: to register an existing APNs key with the gateway.
pub fn ec_public_pem(private_pem: &str) -> Result<String, KeyError> {
    let key = ec_signing_key(private_pem)?;
    Ok(ec_spki_pem(key.public_key().as_ref()))
}

/// A new RSA key: (PKCS#8 private PEM, SubjectPublicKeyInfo PEM).
pub fn generate_rsa() -> Result<(String, String), KeyError> {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key =
        rsa::PrivateKey::new(&mut getrandom::SysRng, RSA_KEY_BITS).map_err(|e| KeyError::Generate(e.to_string()))?;
    let private = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok((private.to_string(), rsa_spki_pem(key.as_public_key())?))
}

/// A new ECDSA P-256 key: (PKCS#8 private PEM, the `.p8`; SubjectPublicKeyInfo PEM).
pub fn generate_ec() -> Result<(String, String), KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), ec_spki_pem(key.public_key().as_ref())))
}

fn rsa_spki_pem(key: &rsa::PublicKey) -> Result<String, KeyError> {
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    key.to_public_key_pem(LineEnding::LF).map_err(|e| KeyError::Generate(e.to_string()))
}

fn ec_spki_pem(point: &[u8]) -> String {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    pem("PUBLIC KEY", &der)
}

/// RFC 7468 text: base64 in lines of 64 characters between the label's lines.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a generated RSA key signs (ring) what its public PEM verifies, and that the
    // public PEM derived from the private one is the same key.
    #[test]
    fn rsa_keys_match() {
        let (private, public) = generate_rsa().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{private}");
        let signer = rsa_signing_key(&private).unwrap();
        let mut signature = vec![0; signer.public().modulus_len()];
        signer.sign(&ring::signature::RSA_PKCS1_SHA256, &SystemRandom::new(), b"m", &mut signature).unwrap();
        let verifier = RsaPublicKey::from_pem(&public).unwrap();
        assert!(verifier.verify(b"m", &signature));
        assert!(!verifier.verify(b"n", &signature));
        assert_eq!(RsaPublicKey::from_pem(&rsa_public_pem(&private).unwrap()).unwrap(), verifier);
    }

    // Proves the P-256 public PEM round-trips and refuses other shapes: an RSA key, garbage.
    #[test]
    fn ec_public_keys_are_checked() {
        let (private, public) = generate_ec().unwrap();
        assert_eq!(ec_public_pem(&private).unwrap(), public);
        assert!(EcPublicKey::from_pem(&public).is_ok());
        let (_, rsa_public) = generate_rsa().unwrap();
        assert_eq!(EcPublicKey::from_pem(&rsa_public), Err(KeyError::EcPublic));
        assert_eq!(EcPublicKey::from_pem("junk"), Err(KeyError::Pem("PUBLIC KEY")));
        assert!(matches!(RsaPublicKey::from_pem(&public), Err(KeyError::Rsa(_))));
        assert!(ec_signing_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }
}

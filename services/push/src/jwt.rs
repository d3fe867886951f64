//! JSON Web Tokens as both push services use them: compact JWS (RFC 7515 §7.1) with a JSON
//! header and claims (RFC 7519). FCM's OAuth token endpoint takes an RS256 assertion (RFC 7523
//! §2.1, Google's "service account" flow); APNs takes an ES256 provider token. Signing and
//! verifying are ring's (RSASSA-PKCS1-v1_5 with SHA-256; ECDSA P-256 with SHA-256 in JWS's
//! fixed `r || s` form, RFC 7518 §3.4).
//!
//! Shared by the client (which signs) and the gateway stand-in (which verifies). Not here:
//! JWE, other algorithms, `crit` headers, nested tokens; the claims' meaning (times, issuer,
//! audience) is for the caller to check.

use crate::keys::{EcPublicKey, RsaPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Map, Value};

/// Longest token decoded. Ours are under 1 KiB (an RS256 signature is 342 characters); a
/// stranger's megabyte is refused before any base64 or JSON work.
pub const JWT_BYTES_MAX: usize = 8 * 1024;

/// Why a token could not be read, verified or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("longer than {JWT_BYTES_MAX} bytes")]
    TooLong,
    #[error("not three base64url segments separated by dots")]
    Shape,
    #[error("the {0} is not base64url without padding")]
    Base64(&'static str),
    #[error("the {0} is not a JSON object")]
    Json(&'static str),
    #[error("the signature does not verify")]
    Signature,
    #[error("signing failed")]
    Sign,
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The JOSE header (`alg`, `kid`, …).
    pub header: Map<String, Value>,
    /// The claims set (`iss`, `iat`, …).
    pub claims: Map<String, Value>,
    /// `header.claims` as received: what the signature covers.
    signing_input: String,
    signature: Vec<u8>,
}

impl Decoded {
    /// The header's `alg`, if a string.
    pub fn alg(&self) -> Option<&str> {
        self.header.get("alg").and_then(Value::as_str)
    }

    /// The header's `kid`, if a string.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// A string claim.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A whole-number claim (NumericDate, RFC 7519 §2): seconds since the Unix epoch.
    pub fn claim_u64(&self, name: &str) -> Option<u64> {
        self.claims.get(name).and_then(Value::as_u64)
    }

    /// Checks an RS256 signature (the caller has checked `alg`).
    pub fn verify_rs256(&self, key: &RsaPublicKey) -> Result<(), JwtError> {
        key.verify(self.signing_input.as_bytes(), &self.signature).then_some(()).ok_or(JwtError::Signature)
    }

    /// Checks an ES256 signature (the caller has checked `alg`).
    pub fn verify_es256(&self, key: &EcPublicKey) -> Result<(), JwtError> {
        key.verify(self.signing_input.as_bytes(), &self.signature).then_some(()).ok_or(JwtError::Signature)
    }
}

/// Splits and decodes a compact JWS; verifies nothing.
pub fn decode(token: &str) -> Result<Decoded, JwtError> {
    if token.len() > JWT_BYTES_MAX {
        return Err(JwtError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    let object = |segment: &str, what: &'static str| -> Result<Map<String, Value>, JwtError> {
        let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| JwtError::Base64(what))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(JwtError::Json(what)),
        }
    };
    Ok(Decoded {
        header: object(header, "header")?,
        claims: object(claims, "claims")?,
        signing_input: format!("{header}.{claims}"),
        signature: URL_SAFE_NO_PAD.decode(signature).map_err(|_| JwtError::Base64("signature"))?,
    })
}

/// `header.claims` of a new token, header `{"alg":alg,"typ":"JWT"[,"kid":kid]}`.
fn signing_input(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Map::new();
    header.insert("alg".into(), alg.into());
    header.insert("typ".into(), "JWT".into());
    if let Some(kid) = kid {
        header.insert("kid".into(), kid.into());
    }
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!("{}.{}", encode(&Value::Object(header)), encode(claims))
}

/// A new RS256 token (RSASSA-PKCS1-v1_5, SHA-256): FCM's OAuth assertion.
pub fn sign_rs256(key: &RsaKeyPair, kid: Option<&str>, claims: &Value) -> Result<String, JwtError> {
    let input = signing_input("RS256", kid, claims);
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut signature).map_err(|_| JwtError::Sign)?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// A new ES256 token (ECDSA P-256, SHA-256, `r || s`): an APNs provider token.
pub fn sign_es256(key: &EcdsaKeyPair, kid: Option<&str>, claims: &Value) -> Result<String, JwtError> {
    let input = signing_input("ES256", kid, claims);
    let signature = key.sign(&SystemRandom::new(), input.as_bytes()).map_err(|_| JwtError::Sign)?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use serde_json::json;

    // Proves an ES256 token made here verifies with the matching public key, names its kid,
    // and fails with any other key or a changed claim.
    #[test]
    fn es256_round_trip_and_tamper() {
        let (private, public) = keys::generate_ec().unwrap();
        let key = keys::ec_signing_key(&private).unwrap();
        let token = sign_es256(&key, Some("KEY1"), &json!({"iss": "TEAM", "iat": 5})).unwrap();
        let decoded = decode(&token).unwrap();
        assert_eq!((decoded.alg(), decoded.kid(), decoded.claim_u64("iat")), (Some("ES256"), Some("KEY1"), Some(5)));
        decoded.verify_es256(&EcPublicKey::from_pem(&public).unwrap()).unwrap();
        let (_, other) = keys::generate_ec().unwrap();
        assert_eq!(decoded.verify_es256(&EcPublicKey::from_pem(&other).unwrap()), Err(JwtError::Signature));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(json!({"iss": "TEAM", "iat": 6}).to_string());
        parts[1] = &forged;
        let forged = decode(&parts.join(".")).unwrap();
        assert_eq!(forged.verify_es256(&EcPublicKey::from_pem(&public).unwrap()), Err(JwtError::Signature));
    }

    // Proves malformed tokens are refused with the reason, never a panic.
    #[test]
    fn malformed_tokens_are_named() {
        assert_eq!(decode("a.b").unwrap_err(), JwtError::Shape);
        assert_eq!(decode("a.b.c.d").unwrap_err(), JwtError::Shape);
        assert_eq!(decode("!!.e30.AA").unwrap_err(), JwtError::Base64("header"));
        assert_eq!(decode("W10.e30.AA").unwrap_err(), JwtError::Json("header"), "[] is no object");
        assert_eq!(decode("e30.e30.A").unwrap_err(), JwtError::Base64("signature"));
        assert_eq!(decode(&"e".repeat(JWT_BYTES_MAX + 1)).unwrap_err(), JwtError::TooLong);
        assert!(decode("e30.e30.").is_ok(), "an empty signature decodes; it cannot verify");
    }
}

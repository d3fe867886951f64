//! Server-side HTTP Digest for SIP (RFC 3261 §22.4, RFC 7616, RFC 8760): HA1, request digests,
//! challenges, the client's credentials, and self-verifying nonces.
//!
//! - Algorithms: `MD5` and `SHA-256` (RFC 8760 §2), `qop=auth` only. A client that answers
//!   without `qop` is accepted the RFC 2617 §3.2.2.1 way (`H(HA1:nonce:HA2)`): old phones
//!   still do this. Such an answer carries no nonce count, so its replay protection is the
//!   nonce lifetime plus the registrar's Call-ID/CSeq ordering (a replayed REGISTER has a
//!   CSeq the registrar has already seen).
//! - Nonces verify themselves: `hex(timestamp_us ‖ random ‖ tag)` where `tag` is an
//!   HMAC-SHA-256 of the first two parts under a secret the registrar draws from its seeded
//!   RNG. No nonce needs to be stored to be recognised; only used ones are tracked, for their
//!   nonce count. The opaque is a second HMAC of the same parts, so it needs no storage either.
//! - Credentials are parsed here rather than with ezk's `DigestResponse`: that type keeps `nc`
//!   only as a number, but the digest is computed over the text the client sent.
//!
//! Not done: `-sess` algorithms, `auth-int`, `userhash`, `username*` (our user names are ASCII
//! tokens), SHA-512-256, and `Authentication-Info` (RFC 7616 §3.5; optional, and SIP phones
//! ignore it).

use crate::time::Timestamp;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fmt;

/// Bytes of random in a nonce, between its timestamp and its tag.
const NONCE_RANDOM_BYTES: usize = 8;
/// Bytes of HMAC kept as the nonce's tag: 128 bits is beyond guessing.
const NONCE_TAG_BYTES: usize = 16;
const NONCE_BYTES: usize = 8 + NONCE_RANDOM_BYTES + NONCE_TAG_BYTES;
/// A nonce is printed as lowercase hex of its 32 bytes (timestamp, random, tag).
pub const NONCE_CHARS: usize = NONCE_BYTES * 2;
const OPAQUE_BYTES: usize = 8;
/// Longest credentials header we read; a longer one is not from a phone.
pub const CREDENTIALS_CHARS_MAX: usize = 4096;
/// More parameters than this in one credentials header is not a phone either.
const CREDENTIAL_PARAMS_MAX: usize = 32;

/// The digest algorithms we offer, strongest first (RFC 8760 §2.4: challenges go in order of
/// preference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    Sha256,
    Md5,
}

impl Algorithm {
    /// The order challenges are offered in.
    pub const PREFERENCE: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Md5];

    /// The token used in `algorithm=` (RFC 7616 §6.1).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    /// The algorithm a client named; `None` for one we do not offer.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        if name.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else if name.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else {
            None
        }
    }

    /// `H(data)` as lowercase hex (RFC 7616 §3.4.1).
    pub fn hash_hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Sha256 => hex::encode(Sha256::digest(data)),
            Algorithm::Md5 => hex::encode(Md5::digest(data)),
        }
    }

    /// Length in hex characters of this algorithm's digests.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Md5 => 32,
        }
    }
}

/// `HA1 = H(username ":" realm ":" password)` (RFC 7616 §3.4.2): what we store instead of the
/// password.
pub fn ha1(algorithm: Algorithm, user: &str, realm: &str, password: &str) -> String {
    algorithm.hash_hex(format!("{user}:{realm}:{password}").as_bytes())
}

/// The `qop=auth` part of an answer: the nonce count as the client printed it, and its cnonce.
#[derive(Clone, Copy, Debug)]
pub struct QopAuth<'a> {
    pub nc: &'a str,
    pub cnonce: &'a str,
}

/// The request digest a client must send (RFC 7616 §3.4.1, §3.4.3), with `HA2 = H(method ":"
/// uri)`. Without `qop` it is the RFC 2617 compatible `H(HA1 ":" nonce ":" HA2)`.
pub fn request_digest(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    qop: Option<QopAuth<'_>>,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = algorithm.hash_hex(format!("{method}:{uri}").as_bytes());
    let data = match qop {
        Some(QopAuth { nc, cnonce }) => format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"),
        None => format!("{ha1}:{nonce}:{ha2}"),
    };
    algorithm.hash_hex(data.as_bytes())
}

/// Equality whose time depends only on the lengths, not on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// One `WWW-Authenticate` value (RFC 7616 §3.3). Every challenge we send has the same
/// parameters in the same order, whoever asked: only nonce and opaque vary.
pub fn challenge(algorithm: Algorithm, realm: &str, nonce: &str, opaque: &str, stale: bool) -> String {
    let stale = if stale { ", stale=true" } else { "" };
    format!(
        "Digest realm={}, nonce=\"{nonce}\", opaque=\"{opaque}\"{stale}, algorithm={}, qop=\"auth\"",
        quote(realm),
        algorithm.name()
    )
}

/// A quoted-string (RFC 3261 §25.1), escaping `"` and `\`.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The parameters of an `Authorization: Digest …` value (RFC 7616 §3.4), as the client sent
/// them (quoted strings unescaped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub opaque: Option<String>,
    pub qop: Option<String>,
    pub cnonce: Option<String>,
    pub nc: Option<String>,
    pub userhash: bool,
}

impl Credentials {
    /// Reads one credentials value; `None` if it is not Digest, is malformed, repeats a
    /// parameter (RFC 7616 §3.4: each at most once) or lacks one RFC 7616 requires. Never
    /// panics, whatever the bytes.
    pub fn parse(value: &str) -> Option<Credentials> {
        if value.len() > CREDENTIALS_CHARS_MAX {
            return None;
        }
        let value = value.trim_start();
        let (scheme, mut rest) = value.split_once([' ', '\t'])?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut creds = Credentials::default();
        let mut seen: Vec<String> = Vec::new();
        loop {
            rest = rest.trim_start_matches([' ', '\t']);
            if rest.is_empty() {
                break;
            }
            if seen.len() >= CREDENTIAL_PARAMS_MAX {
                return None;
            }
            let (name, after) = rest.split_once('=')?;
            let name = name.trim_matches([' ', '\t']).to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(is_token_byte) || seen.contains(&name) {
                return None;
            }
            let after = after.trim_start_matches([' ', '\t']);
            let (param, after) = if let Some(quoted) = after.strip_prefix('"') {
                unquote(quoted)?
            } else {
                let end = after.find([',', ' ', '\t']).unwrap_or(after.len());
                let token = &after[..end];
                if token.is_empty() || !token.bytes().all(is_token_byte) {
                    return None;
                }
                (token.to_owned(), &after[end..])
            };
            let after = after.trim_start_matches([' ', '\t']);
            rest = match after.strip_prefix(',') {
                Some(more) => more,
                None if after.is_empty() => after,
                None => return None,
            };
            match name.as_str() {
                "username" => creds.username = param,
                "realm" => creds.realm = param,
                "nonce" => creds.nonce = param,
                "uri" => creds.uri = param,
                "response" => creds.response = param,
                "algorithm" => creds.algorithm = Some(param),
                "opaque" => creds.opaque = Some(param),
                "qop" => creds.qop = Some(param),
                "cnonce" => creds.cnonce = Some(param),
                "nc" => creds.nc = Some(param),
                "userhash" => creds.userhash = param.eq_ignore_ascii_case("true"),
                _ => {}
            }
            seen.push(name);
        }
        let required = ["username", "realm", "nonce", "uri", "response"];
        required.iter().all(|r| seen.iter().any(|s| s == r)).then_some(creds)
    }
}

/// Reads a quoted-string body (after the opening quote): its unescaped text and what follows
/// the closing quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// HMAC-SHA-256 (RFC 2104) over the concatenation of `parts`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner);
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer.finalize());
    out
}

/// Mints and recognises nonces under one secret. The secret never leaves this type; `Debug`
/// does not show it.
pub struct NonceKey {
    secret: [u8; 32],
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

impl NonceKey {
    pub fn new(secret: [u8; 32]) -> NonceKey {
        NonceKey { secret }
    }

    /// A fresh nonce minted at `now`, and its opaque.
    pub fn mint(&self, now: Timestamp, random: [u8; NONCE_RANDOM_BYTES]) -> (String, String) {
        let mut body = [0u8; 8 + NONCE_RANDOM_BYTES];
        body[..8].copy_from_slice(&now.as_micros().to_be_bytes());
        body[8..].copy_from_slice(&random);
        let tag = hmac_sha256(&self.secret, &[b"nonce", &body]);
        let mut nonce = hex::encode(body);
        nonce.push_str(&hex::encode(&tag[..NONCE_TAG_BYTES]));
        let opaque = self.opaque_of(&body);
        (nonce, opaque)
    }

    /// When `nonce` was minted, if we minted it (its tag checks out, in constant time).
    pub fn minted_at(&self, nonce: &str) -> Option<Timestamp> {
        let bytes = self.decode(nonce)?;
        let (body, tag) = bytes.split_at(8 + NONCE_RANDOM_BYTES);
        let expected = hmac_sha256(&self.secret, &[b"nonce", body]);
        if !constant_time_eq(&expected[..NONCE_TAG_BYTES], tag) {
            return None;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&body[..8]);
        Some(Timestamp(u64::from_be_bytes(ts)))
    }

    /// The opaque that went out with `nonce`; `None` if `nonce` is not even shaped like ours.
    pub fn opaque_for(&self, nonce: &str) -> Option<String> {
        let bytes = self.decode(nonce)?;
        Some(self.opaque_of(&bytes[..8 + NONCE_RANDOM_BYTES]))
    }

    /// A short keyed tag of `data` (hex of 8 bytes), for values that must look random to others
    /// but be the same each time for the same input (the To tag of our REGISTER answers).
    pub fn tag(&self, label: &[u8], data: &[u8]) -> String {
        hex::encode(&hmac_sha256(&self.secret, &[label, data])[..OPAQUE_BYTES])
    }

    fn opaque_of(&self, body: &[u8]) -> String {
        hex::encode(&hmac_sha256(&self.secret, &[b"opaque", body])[..OPAQUE_BYTES])
    }

    fn decode(&self, nonce: &str) -> Option<Vec<u8>> {
        if nonce.len() != NONCE_CHARS {
            return None;
        }
        hex::decode(nonce).ok()
    }
}

/// When a nonce was minted, read from its first 16 hex characters without checking its tag.
/// Only for nonces already checked with [`NonceKey::minted_at`].
pub(crate) fn nonce_timestamp(nonce: &str) -> Option<Timestamp> {
    u64::from_str_radix(nonce.get(..16)?, 16).ok().map(Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The RFC 7616 §3.9.1 example: our HA1 and request digest give its published responses.
    #[test]
    fn rfc7616_examples() {
        let realm = "http-auth@example.org";
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let qop = Some(QopAuth { nc: "00000001", cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ" });
        let md5 = ha1(Algorithm::Md5, "Mufasa", realm, "Circle of Life");
        assert_eq!(
            request_digest(Algorithm::Md5, &md5, nonce, qop, "GET", "/dir/index.html"),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
        let sha = ha1(Algorithm::Sha256, "Mufasa", realm, "Circle of Life");
        assert_eq!(
            request_digest(Algorithm::Sha256, &sha, nonce, qop, "GET", "/dir/index.html"),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    /// A nonce is recognised with its mint time; a changed character or another key is not.
    #[test]
    fn nonces_verify_themselves() {
        let key = NonceKey::new([7; 32]);
        let (nonce, opaque) = key.mint(Timestamp(1_234_567), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(nonce.len(), NONCE_CHARS);
        assert_eq!(key.minted_at(&nonce), Some(Timestamp(1_234_567)));
        assert_eq!(nonce_timestamp(&nonce), Some(Timestamp(1_234_567)));
        assert_eq!(key.opaque_for(&nonce), Some(opaque));
        let mut forged = nonce.clone().into_bytes();
        forged[20] = if forged[20] == b'0' { b'1' } else { b'0' };
        assert_eq!(key.minted_at(std::str::from_utf8(&forged).unwrap()), None);
        assert_eq!(NonceKey::new([8; 32]).minted_at(&nonce), None);
        assert_eq!(key.minted_at("zz"), None);
    }

    /// Credentials parse with quoted and token values, any case of names; duplicates are refused.
    #[test]
    fn credentials_parse() {
        let c = Credentials::parse(
            r#"Digest username="100", Realm="pbx",nonce="n", uri="sip:pbx", response="ab", algorithm=SHA-256, qop=auth, nc=0000000a, cnonce="c\"x""#,
        )
        .unwrap();
        assert_eq!((c.username.as_str(), c.realm.as_str(), c.nc.as_deref()), ("100", "pbx", Some("0000000a")));
        assert_eq!(c.cnonce.as_deref(), Some("c\"x"));
        assert_eq!(c.algorithm.as_deref(), Some("SHA-256"));
        assert!(
            Credentials::parse(r#"Digest username="1", username="2", realm="r", nonce="n", uri="u", response="x""#)
                .is_none()
        );
        assert!(Credentials::parse(r#"Basic dXNlcjpwYXNz"#).is_none());
        assert!(Credentials::parse(r#"Digest username="1", realm="r", nonce="n", uri="u""#).is_none());
        assert_eq!(
            challenge(Algorithm::Md5, "a\"b", "n", "o", true),
            r#"Digest realm="a\"b", nonce="n", opaque="o", stale=true, algorithm=MD5, qop="auth""#
        );
    }

    proptest! {
        /// The credentials parser never panics, whatever the input.
        #[test]
        fn credentials_parser_never_panics(s in "\\PC{0,200}") {
            let _ = Credentials::parse(&s);
            let _ = Credentials::parse(&format!("Digest {s}"));
        }

        /// Constant-time equality agrees with ordinary equality.
        #[test]
        fn constant_time_eq_is_eq(a in proptest::collection::vec(any::<u8>(), 0..8), b in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
        }
    }
}

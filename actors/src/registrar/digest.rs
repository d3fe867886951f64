//! Server-side HTTP Digest for SIP (RFC 3261 §22.4, RFC 7616, RFC 8760): HA1, request digests,
//! challenges, the client's credentials, and self-verifying nonces.
//!
//! - Algorithms: `MD5` and `SHA-256` (RFC 8760 §2), `qop=auth` only. An answer without
//!   `qop` (RFC 2069, `H(HA1:nonce:HA2)`) carries no nonce count and so has no replay
//!   protection but the nonce lifetime: the registrar refuses it unless `[registrar]
//!   allow_rfc2069 = true` ([`request_digest`] still computes it).
//! - Nonces verify themselves: `hex(timestamp_us ‖ random ‖ tag)` where `tag` is an
//!   HMAC-SHA-256 of the first two parts *and of the source the challenge went to* (an IPv4
//!   address or an IPv6 /64) under a 256-bit secret the node reads from the OS. No nonce
//!   needs to be stored to be recognised; only used ones are tracked, for their nonce count.
//!   The opaque is more bytes of the same HMAC, so it needs no storage either, and one HMAC
//!   checks both. Binding
//!   the nonce to its source is what keeps spoofed answers from counting against a source
//!   (docs/SECURITY.md): an answer is only weighed if its nonce went to the address it claims
//!   to come from, so its sender could read our challenge there.
//! - The credentials' `uri` must be the Request-URI (RFC 3261 §22.4 via RFC 2617
//!   §3.2.2.5), compared as SIP URIs are (§19.1.4): [`uri_matches`].
//! - Credentials are parsed here rather than with ezk's `DigestResponse`: that type keeps `nc`
//!   only as a number, but the digest is computed over the text the client sent.
//!
//! Not done: `-sess` algorithms, `auth-int`, `userhash`, `username*` (our user names are ASCII
//! tokens), SHA-512-256, and `Authentication-Info` (RFC 7616 §3.5; optional, and SIP phones
//! ignore it).

use crate::sip::message::{SipUri, SipUriUserPart, find_either, parse_sip_uri, trim_sp, trim_sp_start};
use crate::time::Timestamp;
use ezk_sip_types::host::Host;
use md5::{Digest, Md5};
use ring::{digest as ring_digest, hmac};
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

/// Bytes of random in a nonce, between its timestamp and its tag.
const NONCE_RANDOM_BYTES: usize = 8;
/// Bytes of HMAC kept as the nonce's tag: 128 bits is beyond guessing.
const NONCE_TAG_BYTES: usize = 16;
/// The part of a nonce its tag covers: timestamp and random.
const NONCE_BODY_BYTES: usize = 8 + NONCE_RANDOM_BYTES;
const NONCE_BYTES: usize = NONCE_BODY_BYTES + NONCE_TAG_BYTES;
/// A nonce is printed as lowercase hex of its 32 bytes (timestamp, random, tag).
pub const NONCE_CHARS: usize = NONCE_BYTES * 2;
const OPAQUE_BYTES: usize = 8;
const _: () = assert!(NONCE_TAG_BYTES + OPAQUE_BYTES <= 32, "both from one HMAC-SHA-256");
/// Longest credentials header we read; a longer one is not from a phone.
pub const CREDENTIALS_CHARS_MAX: usize = 4096;
/// More parameters than this in one credentials header is not a phone either.
const CREDENTIAL_PARAMS_MAX: usize = 32;
/// The credentials parameters we read; the first five are the ones RFC 7616 §3.4 requires.
/// `Credentials::parse` files them by their index here.
const CREDENTIAL_PARAMS: [&str; 11] =
    ["username", "realm", "nonce", "uri", "response", "algorithm", "opaque", "qop", "cnonce", "nc", "userhash"];
const _: () = assert!(CREDENTIAL_PARAMS.len() <= 16, "seen as bits of a u16");

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
            Algorithm::Sha256 => to_hex(ring_digest::digest(&ring_digest::SHA256, data)),
            Algorithm::Md5 => to_hex(Md5::digest(data)),
        }
    }

    /// `H(parts concatenated)` as lowercase hex, without building the concatenation.
    fn hash_hex_parts(self, parts: &[&[u8]]) -> String {
        match self {
            Algorithm::Sha256 => {
                let mut context = ring_digest::Context::new(&ring_digest::SHA256);
                for part in parts {
                    context.update(part);
                }
                to_hex(context.finish())
            }
            Algorithm::Md5 => {
                let mut hasher = Md5::new();
                for part in parts {
                    hasher.update(part);
                }
                to_hex(hasher.finalize())
            }
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
    response_digest(algorithm, ha1, nonce, qop, &ha2(algorithm, method, uri))
}

/// `HA2 = H(method ":" uri)` (RFC 7616 §3.4.3, `qop=auth`): the same for every request of one
/// method to one URI, so the registrar keeps the last one.
pub fn ha2(algorithm: Algorithm, method: &str, uri: &str) -> String {
    algorithm.hash_hex_parts(&[method.as_bytes(), b":", uri.as_bytes()])
}

/// [`request_digest`] from `HA2` already computed ([`ha2`]).
pub fn response_digest(algorithm: Algorithm, ha1: &str, nonce: &str, qop: Option<QopAuth<'_>>, ha2: &str) -> String {
    let (ha1, nonce, ha2) = (ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes());
    match qop {
        Some(QopAuth { nc, cnonce }) => {
            algorithm.hash_hex_parts(&[ha1, b":", nonce, b":", nc.as_bytes(), b":", cnonce.as_bytes(), b":auth:", ha2])
        }
        None => algorithm.hash_hex_parts(&[ha1, b":", nonce, b":", ha2]),
    }
}

/// Lowercase hex of `bytes`, as `hex::encode` writes it, through its slice encoder (`encode`
/// collects the digits one `char` at a time, several times slower on every nonce and digest).
pub(super) fn to_hex(bytes: impl AsRef<[u8]>) -> String {
    let bytes = bytes.as_ref();
    let mut out = vec![0u8; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("the output is twice the input");
    String::from_utf8(out).expect("hex digits are ASCII")
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
    // Pushed piece by piece into one buffer sized once: `format!` was half the cost of a 401.
    const FIXED: &str = "Digest realm=\"\", nonce=\"\", opaque=\"\", stale=true, algorithm=, qop=\"auth\"";
    let mut out = String::with_capacity(FIXED.len() + 2 * realm.len() + nonce.len() + opaque.len() + 8);
    out.push_str("Digest realm=");
    push_quoted(&mut out, realm);
    out.push_str(", nonce=\"");
    out.push_str(nonce);
    out.push_str("\", opaque=\"");
    out.push_str(opaque);
    out.push('"');
    if stale {
        out.push_str(", stale=true");
    }
    out.push_str(", algorithm=");
    out.push_str(algorithm.name());
    out.push_str(", qop=\"auth\"");
    out
}

/// A quoted-string (RFC 3261 §25.1), escaping `"` and `\`, appended to `out`.
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The parameters of an `Authorization: Digest …` value (RFC 7616 §3.4), as the client sent
/// them (quoted strings unescaped): slices of the header's text, copied only where a quoted
/// value held an escape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: Cow<'a, str>,
    pub realm: Cow<'a, str>,
    pub nonce: Cow<'a, str>,
    pub uri: Cow<'a, str>,
    pub response: Cow<'a, str>,
    pub algorithm: Option<Cow<'a, str>>,
    pub opaque: Option<Cow<'a, str>>,
    pub qop: Option<Cow<'a, str>>,
    pub cnonce: Option<Cow<'a, str>>,
    pub nc: Option<Cow<'a, str>>,
    pub userhash: bool,
}

impl<'a> Credentials<'a> {
    /// Reads one credentials value; `None` if it is not Digest, is malformed, repeats a
    /// parameter (RFC 7616 §3.4: each at most once) or lacks one RFC 7616 requires. Never
    /// panics, whatever the bytes.
    pub fn parse(value: &'a str) -> Option<Credentials<'a>> {
        if value.len() > CREDENTIALS_CHARS_MAX {
            return None;
        }
        let value = value.trim_start();
        let (scheme, mut rest) = value.split_once([' ', '\t'])?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut creds = Credentials::default();
        // Which parameters came, to refuse a repeat: the ones we read as bits (no allocation
        // per parameter), any others by their lowercased name.
        let mut known_seen = 0u16;
        let mut others_seen: Vec<String> = Vec::new();
        let mut count = 0;
        loop {
            rest = trim_sp_start(rest);
            if rest.is_empty() {
                break;
            }
            if count >= CREDENTIAL_PARAMS_MAX {
                return None;
            }
            count += 1;
            let eq = rest.bytes().position(|b| b == b'=')?;
            let (name, after) = (&rest[..eq], &rest[eq + 1..]);
            let name = trim_sp(name);
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return None;
            }
            let known = CREDENTIAL_PARAMS.iter().position(|k| k.eq_ignore_ascii_case(name));
            match known {
                Some(i) if known_seen & (1 << i) != 0 => return None,
                Some(i) => known_seen |= 1 << i,
                None => {
                    let lower = name.to_ascii_lowercase();
                    if others_seen.contains(&lower) {
                        return None;
                    }
                    others_seen.push(lower);
                }
            }
            let after = trim_sp_start(after);
            let (param, after) = if let Some(quoted) = after.strip_prefix('"') {
                unquote(quoted)?
            } else {
                let end = after.bytes().position(|b| matches!(b, b',' | b' ' | b'\t')).unwrap_or(after.len());
                let token = &after[..end];
                if token.is_empty() || !token.bytes().all(is_token_byte) {
                    return None;
                }
                (Cow::Borrowed(token), &after[end..])
            };
            let after = trim_sp_start(after);
            rest = match after.strip_prefix(',') {
                Some(more) => more,
                None if after.is_empty() => after,
                None => return None,
            };
            // By index into CREDENTIAL_PARAMS (its order), not by comparing the names again.
            match known {
                Some(0) => creds.username = param,
                Some(1) => creds.realm = param,
                Some(2) => creds.nonce = param,
                Some(3) => creds.uri = param,
                Some(4) => creds.response = param,
                Some(5) => creds.algorithm = Some(param),
                Some(6) => creds.opaque = Some(param),
                Some(7) => creds.qop = Some(param),
                Some(8) => creds.cnonce = Some(param),
                Some(9) => creds.nc = Some(param),
                Some(10) => creds.userhash = param.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        // RFC 7616 §3.4: the first five of CREDENTIAL_PARAMS are required.
        let required = (1u16 << 5) - 1;
        (known_seen & required == required).then_some(creds)
    }
}

/// Reads a quoted-string body (after the opening quote): its unescaped text and what follows
/// the closing quote.
fn unquote(s: &str) -> Option<(Cow<'_, str>, &str)> {
    // Most quoted values hold no escape: the slice up to the closing quote, not copied.
    let end = find_either(s.as_bytes(), 0, b'"', b'\\')?;
    if s.as_bytes()[end] == b'"' {
        return Some((Cow::Borrowed(&s[..end]), &s[end + 1..]));
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((Cow::Owned(out), &s[i + 1..])),
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

fn is_token_byte(b: u8) -> bool {
    crate::sip::message::TOKEN_BYTES[usize::from(b)]
}

/// Mints and recognises nonces under one secret. The secret never leaves this type; `Debug`
/// does not show it. The key is ring's, with the HMAC pads hashed once here rather than on
/// every nonce (two SHA-256 compressions per tag instead of four, in ring's assembly).
pub struct NonceKey {
    key: hmac::Key,
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

impl NonceKey {
    pub fn new(secret: [u8; 32]) -> NonceKey {
        NonceKey { key: hmac::Key::new(hmac::HMAC_SHA256, &secret) }
    }

    /// HMAC-SHA-256 (RFC 2104) over the concatenation of `parts`.
    fn hmac(&self, parts: &[&[u8]]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        for part in parts {
            context.update(part);
        }
        context.sign()
    }

    /// A fresh nonce minted at `now` for a challenge sent to `source` (the registrar passes the
    /// source's group: an IPv4 address or an IPv6 /64), and its opaque. One HMAC gives both:
    /// its first 16 bytes are the nonce's tag, the next 8 the opaque, so an answer is checked
    /// with one HMAC too ([`NonceKey::verify`]).
    pub fn mint(&self, now: Timestamp, random: [u8; NONCE_RANDOM_BYTES], source: IpAddr) -> (String, String) {
        let (nonce, opaque, _) = self.mint_recognised(now, random, source);
        (nonce, opaque)
    }

    /// [`NonceKey::mint`], and what [`NonceKey::verify`] will say of the nonce for `source`.
    pub fn mint_recognised(
        &self,
        now: Timestamp,
        random: [u8; NONCE_RANDOM_BYTES],
        source: IpAddr,
    ) -> (String, String, Minted) {
        let mut body = [0u8; NONCE_BODY_BYTES];
        body[..8].copy_from_slice(&now.as_micros().to_be_bytes());
        body[8..].copy_from_slice(&random);
        let mac = self.hmac(&[b"nonce", &body, &source_bytes(source)]);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..NONCE_BODY_BYTES].copy_from_slice(&body);
        nonce[NONCE_BODY_BYTES..].copy_from_slice(&mac.as_ref()[..NONCE_TAG_BYTES]);
        let opaque = opaque_bytes(&mac);
        (to_hex(nonce), to_hex(opaque), Minted { at: Timestamp(now.as_micros()), opaque })
    }

    /// What a nonce says, if we minted it for `source` (its tag checks out, in constant time):
    /// when, and the opaque that went out with it. A nonce minted for another source is `None`,
    /// exactly like a forged one.
    pub fn verify(&self, nonce: &str, source: IpAddr) -> Option<Minted> {
        let mut bytes = [0u8; NONCE_BYTES];
        if nonce.len() != NONCE_CHARS || hex::decode_to_slice(nonce, &mut bytes).is_err() {
            return None;
        }
        let (body, tag) = bytes.split_at(NONCE_BODY_BYTES);
        let mac = self.hmac(&[b"nonce", body, &source_bytes(source)]);
        if !constant_time_eq(&mac.as_ref()[..NONCE_TAG_BYTES], tag) {
            return None;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&body[..8]);
        Some(Minted { at: Timestamp(u64::from_be_bytes(ts)), opaque: opaque_bytes(&mac) })
    }

    /// When `nonce` was minted, if we minted it for `source` (see [`NonceKey::verify`]).
    pub fn minted_at(&self, nonce: &str, source: IpAddr) -> Option<Timestamp> {
        self.verify(nonce, source).map(|minted| minted.at)
    }

    /// A short keyed tag of `data` (hex of 8 bytes), for values that must look random to others
    /// but be the same each time for the same input.
    pub fn tag(&self, label: &[u8], data: &[u8]) -> String {
        to_hex(&self.hmac(&[label, data]).as_ref()[..OPAQUE_BYTES])
    }
}

/// A nonce [`NonceKey::verify`] recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Minted {
    /// When it was minted.
    pub at: Timestamp,
    opaque: [u8; OPAQUE_BYTES],
}

impl Minted {
    /// Whether `opaque` is the one that went out with the nonce (lowercase hex, as we print it).
    pub fn opaque_is(&self, opaque: &str) -> bool {
        let mut given = [0u8; OPAQUE_BYTES];
        opaque.len() == OPAQUE_BYTES * 2
            && !opaque.bytes().any(|b| b.is_ascii_uppercase())
            && hex::decode_to_slice(opaque, &mut given).is_ok()
            && given == self.opaque
    }
}

/// The opaque's bytes: the HMAC's bytes after those the nonce's tag keeps.
fn opaque_bytes(mac: &hmac::Tag) -> [u8; OPAQUE_BYTES] {
    let mut opaque = [0u8; OPAQUE_BYTES];
    opaque.copy_from_slice(&mac.as_ref()[NONCE_TAG_BYTES..NONCE_TAG_BYTES + OPAQUE_BYTES]);
    opaque
}

/// The 16 bytes a source is hashed as: IPv4 as its IPv4-mapped IPv6 form, so that a phone
/// reaching a dual-stack socket counts as the same source either way.
fn source_bytes(source: IpAddr) -> [u8; 16] {
    match source.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Whether the credentials' `uri` names the Request-URI (RFC 2617 §3.2.2.5, which RFC 3261
/// §22.4 keeps), compared by RFC 3261 §19.1.4: scheme, user (case-sensitive, escapes decoded),
/// host (case-insensitive), port (an omitted port is not the default one), the `user`, `ttl`,
/// `method`, `maddr` and `transport` parameters present in both or neither, any other
/// parameter present in both equal, headers all equal; parameters case-insensitively. A `uri`
/// that is not a SIP URI matches nothing.
pub fn uri_matches(uri: &str, request_uri: &SipUri) -> bool {
    parse_sip_uri(uri).is_some_and(|uri| sip_uris_equal(&uri, request_uri))
}

fn sip_uris_equal(a: &SipUri, b: &SipUri) -> bool {
    let users_equal = match (&a.user_part, &b.user_part) {
        (SipUriUserPart::Empty, SipUriUserPart::Empty) => true,
        (SipUriUserPart::User(x), SipUriUserPart::User(y)) => x == y,
        (SipUriUserPart::UserPw(x), SipUriUserPart::UserPw(y)) => x.user == y.user && x.password == y.password,
        _ => false,
    };
    let hosts_equal = match (&a.host_port.host, &b.host_port.host) {
        (Host::Name(x), Host::Name(y)) => x.eq_ignore_ascii_case(y),
        (x, y) => x == y,
    };
    if a.sips != b.sips || !users_equal || !hosts_equal || a.host_port.port != b.host_port.port {
        return false;
    }
    // The usual case, no parameters and no headers on either side, without printing them.
    let bare = |uri: &SipUri| uri.uri_params.is_empty() && uri.header_params.is_empty();
    if bare(a) && bare(b) {
        return true;
    }
    let (pa, pb) = (uri_params(&a.uri_params.to_string()), uri_params(&b.uri_params.to_string()));
    let params_equal = pa.iter().chain(&pb).all(|(name, _)| {
        let (x, y) = (pa.iter().find(|(n, _)| n == name), pb.iter().find(|(n, _)| n == name));
        match (x, y) {
            (Some(x), Some(y)) => x.1 == y.1,
            _ => !matches!(name.as_str(), "user" | "ttl" | "method" | "maddr" | "transport"),
        }
    });
    let headers = |uri: &SipUri| {
        let mut list = uri_headers(&uri.header_params.to_string());
        list.sort();
        list
    };
    params_equal && headers(a) == headers(b)
}

/// `;name[=value]…` as printed, names and values lowercased and unescaped.
fn uri_params(printed: &str) -> Vec<(String, Option<String>)> {
    printed
        .split(';')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (unescape(n).to_ascii_lowercase(), Some(unescape(v).to_ascii_lowercase())),
            None => (unescape(p).to_ascii_lowercase(), None),
        })
        .collect()
}

/// `?name=value&…` as printed: names lowercased, values unescaped.
fn uri_headers(printed: &str) -> Vec<(String, String)> {
    printed
        .trim_start_matches('?')
        .split('&')
        .filter(|h| !h.is_empty())
        .map(|h| {
            let (n, v) = h.split_once('=').unwrap_or((h, ""));
            (unescape(n).to_ascii_lowercase(), unescape(v))
        })
        .collect()
}

/// `%XX` escapes decoded (RFC 3261 §19.1.4: an escaped character equals itself unescaped);
/// a malformed escape is kept as it is.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    // The slice encoder writes what `hex::encode` and `{:016x}` write (the To tag relies on it).
    #[test]
    fn to_hex_is_lowercase_hex() {
        for n in [0u64, 1, 0xabc, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(to_hex(n.to_be_bytes()), format!("{n:016x}"));
            assert_eq!(to_hex(n.to_le_bytes()), hex::encode(n.to_le_bytes()));
        }
        assert_eq!(to_hex([0u8; 0]), "");
    }

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
        let source: IpAddr = "192.0.2.7".parse().unwrap();
        let (nonce, opaque) = key.mint(Timestamp(1_234_567), [1, 2, 3, 4, 5, 6, 7, 8], source);
        assert_eq!(nonce.len(), NONCE_CHARS);
        assert_eq!(key.minted_at(&nonce, source), Some(Timestamp(1_234_567)));
        assert_eq!(nonce_timestamp(&nonce), Some(Timestamp(1_234_567)));
        let minted = key.verify(&nonce, source).unwrap();
        assert!(minted.opaque_is(&opaque));
        assert!(!minted.opaque_is(&opaque.to_ascii_uppercase()));
        assert!(!minted.opaque_is(&opaque[1..]));
        let (_, other_opaque) = key.mint(Timestamp(1_234_567), [1, 2, 3, 4, 5, 6, 7, 9], source);
        assert!(!minted.opaque_is(&other_opaque));
        let mut forged = nonce.clone().into_bytes();
        forged[20] = if forged[20] == b'0' { b'1' } else { b'0' };
        assert_eq!(key.minted_at(std::str::from_utf8(&forged).unwrap(), source), None);
        assert_eq!(NonceKey::new([8; 32]).minted_at(&nonce, source), None);
        assert_eq!(key.minted_at("zz", source), None);
    }

    /// A nonce is bound to the source it was minted for: another address does not verify it,
    /// the IPv4-mapped form of the same address does.
    #[test]
    fn nonces_are_bound_to_their_source() {
        let key = NonceKey::new([7; 32]);
        let source: IpAddr = "192.0.2.7".parse().unwrap();
        let (nonce, _) = key.mint(Timestamp(5), [0; 8], source);
        assert_eq!(key.minted_at(&nonce, "192.0.2.8".parse().unwrap()), None);
        assert_eq!(key.minted_at(&nonce, "::ffff:192.0.2.7".parse().unwrap()), Some(Timestamp(5)));
        let v6: IpAddr = "2001:db8::".parse().unwrap();
        let (nonce, _) = key.mint(Timestamp(5), [0; 8], v6);
        assert_eq!(key.minted_at(&nonce, "2001:db8::1".parse().unwrap()), None);
    }

    /// The digest `uri` is compared with the Request-URI as RFC 3261 §19.1.4 compares SIP URIs.
    #[test]
    fn digest_uri_is_compared_as_rfc3261_compares_uris() {
        let request = parse_sip_uri("sip:101@pbx.example.com:5060;transport=udp").unwrap();
        for same in [
            "sip:101@pbx.example.com:5060;transport=udp",
            "sip:101@PBX.Example.COM:5060;Transport=UDP",
            "sip:%31%30%31@pbx.example.com:5060;transport=udp",
            "sip:101@pbx.example.com:5060;transport=udp;lr",
        ] {
            assert!(uri_matches(same, &request), "{same}");
        }
        for different in [
            "sip:101@pbx.example.com:5060",
            "sip:101@pbx.example.com;transport=udp",
            "sips:101@pbx.example.com:5060;transport=udp",
            "sip:102@pbx.example.com:5060;transport=udp",
            "sip:101@pbx.example.org:5060;transport=udp",
            "sip:101@pbx.example.com:5060;transport=tcp",
            "sip:101@pbx.example.com:5060;transport=udp?subject=x",
            "tel:101",
            "",
        ] {
            assert!(!uri_matches(different, &request), "{different}");
        }
        let plain = parse_sip_uri("sip:pbx").unwrap();
        assert!(uri_matches("sip:pbx", &plain));
        assert!(!uri_matches("sip:PBX.", &plain));
        let with_params = parse_sip_uri("sip:pbx;foo=bar").unwrap();
        assert!(uri_matches("sip:pbx;foo=BAR", &with_params));
        assert!(!uri_matches("sip:pbx;foo=baz", &with_params));
        assert!(uri_matches("sip:pbx", &with_params), "a parameter in one only is ignored");
    }

    /// Credentials parse with quoted and token values, any case of names; duplicates are refused.
    #[test]
    fn credentials_parse() {
        let c = Credentials::parse(
            r#"Digest username="100", Realm="pbx",nonce="n", uri="sip:pbx", response="ab", algorithm=SHA-256, qop=auth, nc=0000000a, cnonce="c\"x""#,
        )
        .unwrap();
        assert_eq!((c.username.as_ref(), c.realm.as_ref(), c.nc.as_deref()), ("100", "pbx", Some("0000000a")));
        assert!(matches!(c.username, Cow::Borrowed(_)), "a value without escapes is not copied");
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
        assert_eq!(
            challenge(Algorithm::Sha256, "pbx.example", "n1", "o1", false),
            r#"Digest realm="pbx.example", nonce="n1", opaque="o1", algorithm=SHA-256, qop="auth""#
        );
    }

    proptest! {
        /// The credentials parser and the URI comparison never panic, whatever the input.
        #[test]
        fn credentials_parser_never_panics(s in "\\PC{0,200}") {
            let _ = Credentials::parse(&s);
            let _ = Credentials::parse(&format!("Digest {s}"));
            let request = parse_sip_uri("sip:100@pbx;transport=udp").unwrap();
            let _ = uri_matches(&s, &request);
            let _ = uri_matches(&format!("sip:{s}"), &request);
        }

        /// Constant-time equality agrees with ordinary equality.
        #[test]
        fn constant_time_eq_is_eq(a in proptest::collection::vec(any::<u8>(), 0..8), b in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
        }
    }
}

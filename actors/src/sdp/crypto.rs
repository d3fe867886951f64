//! SDES keying for SRTP: the `a=crypto` attribute of RFC 4568 (§4 syntax, §6 for SRTP), as pbx
//! reads it from a phone's offer or answer and writes it in its own. The keys feed
//! `media::srtp`.
//!
//! What it accepts (RFC 4568 §9.1 grammar):
//! `<tag> <crypto-suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>][;...] [<session-param>...]`
//! - **Suites**: `AES_CM_128_HMAC_SHA1_80` and `AES_CM_128_HMAC_SHA1_32` ([`Suite`]). A line of
//!   any other suite (AES_256_CM_*, AEAD_AES_*_GCM, F8_*) is skipped, not an error, so an offer
//!   that lists AES-256 first and AES-128 second gets the AES-128 line.
//! - **Key**: standard base64 of exactly [`KEY_SALT_BYTES`] (30) bytes, padding optional (30
//!   bytes need none). Only the first key parameter is read (§6.1: more than one key needs
//!   MKIs, which are refused anyway).
//! - **Lifetime** (`2^31` or decimal): checked for syntax, then ignored. The offerer's limit
//!   is for its own key and can only be lower than RFC 3711's maxima, which `media::srtp`
//!   enforces; when it runs out, the phone re-keys with a re-INVITE like any key change.
//! - **MKI**: refused ([`CryptoError::Mki`]). With an MKI every SRTP packet carries its bytes
//!   and the sender may switch keys by it; pbx keeps one key per direction. Common softphones
//!   send none by default; lines with one are passed over when the offer has another
//!   supported line without.
//! - **Session parameters** (§6.3: KDR, UNENCRYPTED_SRTP, UNENCRYPTED_SRTCP,
//!   UNAUTHENTICATED_SRTP, FEC_ORDER, FEC_KEY, WSH, extensions): each changes how SRTP runs,
//!   and `media::srtp` implements none of the changes, so a line with any is skipped like an
//!   unknown suite. Only WSH (a window-size hint, advice to the receiver) is ignored.
//!
//! Errors name what was wrong ([`CryptoError`]'s text is fit for a 488's reason or a log line)
//! and never include key bytes.
//!
//! What it does not do: pick or compare m= profiles (RTP/SAVP, RTP/SAVPF), DTLS-SRTP
//! (`a=fingerprint`), or ZRTP; deciding that an answer must carry exactly one `a=crypto` whose
//! tag was offered (§5.1.2) is the caller's.

use crate::media::srtp::{KEY_SALT_BYTES, KeyMaterial, Suite};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use zeroize::Zeroizing;

/// §9.1: `tag = 1*9DIGIT`.
pub const TAG_DIGITS_MAX: usize = 9;
/// A longer `inline:` value is not a 30-byte key (40 characters), whatever it decodes to; the
/// limit keeps a hostile SDP from making pbx decode kilobytes per line.
const INLINE_CHARACTERS_MAX: usize = 256;

const _: () = assert!(KEY_SALT_BYTES.div_ceil(3) * 4 <= INLINE_CHARACTERS_MAX);

/// The `a=crypto` line pbx takes from an offer: its tag (the answer repeats it, §5.1.2) and
/// the offerer's key, which the offerer sends with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offered {
    pub tag: u32,
    pub key: KeyMaterial,
}

impl Offered {
    pub fn suite(&self) -> Suite {
        self.key.suite()
    }
}

/// Why an `a=crypto` line of a supported suite cannot be used. The call layer answers 488 with
/// this text; no variant carries key bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Not `<tag> <suite> inline:<key>`, or a field of it is out of range.
    #[error("a=crypto: {0}")]
    Syntax(&'static str),
    /// The `inline:` key is not standard base64.
    #[error("a=crypto: inline key is not base64")]
    Base64,
    /// The key and salt decode to the wrong number of bytes (16 + 14 for both suites).
    #[error("a=crypto: inline key and salt are {got} bytes, {expected} expected")]
    KeyLength { expected: usize, got: usize },
    /// The key carries an MKI, which pbx does not do (module doc).
    #[error("a=crypto: MKI is not supported (offer a key without |<MKI>:<length>)")]
    Mki,
    /// The lifetime is neither `2^<n>` nor a decimal number.
    #[error("a=crypto: key lifetime is neither 2^<n> nor a decimal number")]
    Lifetime,
}

/// Reads one `a=crypto` attribute: its value (`<tag> <suite> inline:...`), with or without the
/// leading `a=crypto:`. `Ok(None)` when the suite or a session parameter is one pbx does not
/// support (module doc): not an error, the offer may have another line.
pub fn parse(value: &str) -> Result<Option<Offered>, CryptoError> {
    let value = value.strip_prefix("a=").unwrap_or(value);
    let value = value.strip_prefix("crypto:").unwrap_or(value);
    let mut fields = value.split_ascii_whitespace();
    let (Some(tag), Some(suite), Some(key_params)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(CryptoError::Syntax("expected <tag> <crypto-suite> <key-params>"));
    };
    let tag = parse_tag(tag)?;
    let Some(suite) = Suite::from_sdes_name(suite) else { return Ok(None) };
    if !fields.all(|param| param.starts_with("WSH=")) {
        return Ok(None);
    }
    let first_key = key_params.split(';').next().unwrap_or(key_params);
    let Some(key_info) = first_key.strip_prefix("inline:") else {
        return Err(CryptoError::Syntax("key method is not inline:"));
    };
    let mut parts = key_info.split('|');
    let key_salt = parts.next().unwrap_or(key_info);
    for part in parts.by_ref().take(2) {
        match part.contains(':') {
            true => return Err(CryptoError::Mki),
            false => check_lifetime(part)?,
        }
    }
    if parts.next().is_some() {
        return Err(CryptoError::Syntax("more than a key, a lifetime and an MKI in inline:"));
    }
    Ok(Some(Offered { tag, key: KeyMaterial::new(suite, decode_key(key_salt)?) }))
}

/// Picks the first line of one media section that pbx can use (the offerer lists them in its
/// order of preference, §5.1.1). `lines` are the values of its `a=crypto` attributes, as for
/// [`parse`]. `Ok(None)`: no line of a supported suite and parameters (the caller answers 488
/// or offers plain RTP). `Err`: lines of supported suites were there but none usable; the
/// error is the first line's (a malformed key, an MKI).
pub fn choose<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Option<Offered>, CryptoError> {
    let mut first_error = None;
    for line in lines {
        match parse(line) {
            Ok(Some(offered)) => return Ok(Some(offered)),
            Ok(None) => {}
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(None), Err)
}

/// The `a=crypto` line (without CRLF) that offers or answers `key` under `tag`: standard base64
/// (40 characters: 30 bytes need no padding), no lifetime, no MKI, no session parameters, the
/// plain form every SDES phone reads. In an answer, `tag` is the offered line's (§5.1.2) and `key` a fresh one of its
/// suite: never the offerer's (RFC 3711 §9.1).
pub fn line(tag: u32, key: &KeyMaterial) -> String {
    let mut line = format!("a=crypto:{tag} {} inline:", key.suite().sdes_name());
    STANDARD.encode_string(key.key_salt(), &mut line);
    line
}

fn parse_tag(tag: &str) -> Result<u32, CryptoError> {
    if tag.is_empty() || tag.len() > TAG_DIGITS_MAX || !tag.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CryptoError::Syntax("tag is not 1 to 9 digits"));
    }
    tag.parse().map_err(|_| CryptoError::Syntax("tag is not 1 to 9 digits"))
}

/// §9.1: `lifetime = ["2^"] 1*(DIGIT)`; the value itself is ignored (module doc).
fn check_lifetime(lifetime: &str) -> Result<(), CryptoError> {
    let digits = lifetime.strip_prefix("2^").unwrap_or(lifetime);
    match !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        true => Ok(()),
        false => Err(CryptoError::Lifetime),
    }
}

fn decode_key(text: &str) -> Result<[u8; KEY_SALT_BYTES], CryptoError> {
    if text.len() > INLINE_CHARACTERS_MAX {
        return Err(CryptoError::KeyLength { expected: KEY_SALT_BYTES, got: text.len() / 4 * 3 });
    }
    let decoded = Zeroizing::new(STANDARD_PAD_INDIFFERENT.decode(text).map_err(|_| CryptoError::Base64)?);
    decoded.as_slice().try_into().map_err(|_| CryptoError::KeyLength { expected: KEY_SALT_BYTES, got: decoded.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// RFC 4568's own example key (§5.1.1); 40 characters, 30 bytes.
    const RFC_KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    fn decoded(text: &str) -> [u8; KEY_SALT_BYTES] {
        STANDARD.decode(text).expect("base64").try_into().expect("30 bytes")
    }

    /// The plain form softphones send (tag, suite, a bare inline key) reads as that tag, suite
    /// and key, with or without its `a=crypto:`.
    #[test]
    fn plain_softphone_line() {
        let offered =
            parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}")).expect("parses").expect("supported");
        assert_eq!(offered.tag, 1);
        assert_eq!(offered.suite(), Suite::AesCm128HmacSha1_80);
        assert_eq!(offered.key.key_salt(), &decoded(RFC_KEY));
        let short_tag = parse(&format!("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{RFC_KEY}")).expect("parses");
        assert_eq!(short_tag.map(|o| (o.tag, o.suite())), Some((2, Suite::AesCm128HmacSha1_32)), "with its a=crypto:");
    }

    /// A BroadWorks SBC's offer (captured in liblinphone's tests): every line has a `2^31`
    /// lifetime, AES-256 lines follow; the first AES-128 line is chosen, lifetime ignored.
    #[test]
    fn sbc_offer_with_lifetimes() {
        let lines = [
            "1 AES_CM_128_HMAC_SHA1_80 inline:zc409/eT1JuwUPQAswLkF878WJvn5Rpo+aLUt+SI|2^31",
            "2 AES_CM_128_HMAC_SHA1_32 inline:ebHN/WPPcu2E+Jm4kdx9YK58jVFDKD4uRgwFu18k|2^31",
            "3 AES_256_CM_HMAC_SHA1_80 inline:M9UR+6n8F8DZ5mh/V5vh2VKdYZ+5Hb4K3mwepx8oM9aIQYb7RzdfJE42ezOTcQ==|2^31",
            "4 AES_256_CM_HMAC_SHA1_32 inline:AIsXIk2O8tsCefUYXpqP96hNZKJR+nJZcXlCOiXZW6TDEtg/g5HQD7lcj0KJPA==|2^31",
        ];
        let offered = choose(lines.into_iter()).expect("parses").expect("supported");
        assert_eq!((offered.tag, offered.suite()), (1, Suite::AesCm128HmacSha1_80));
        assert_eq!(offered.key.key_salt(), &decoded("zc409/eT1JuwUPQAswLkF878WJvn5Rpo+aLUt+SI"));
        assert!(parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|1048576")).expect("decimal").is_some());
    }

    /// An offer listing suites pbx lacks first (AEAD-GCM, AES-256) gets its first AES-128 line,
    /// and a 32-bit-tag line ahead of an 80-bit one is taken: the offerer's order decides.
    #[test]
    fn unknown_suites_are_skipped() {
        let lines = [
            "1 AEAD_AES_256_GCM inline:M9UR+6n8F8DZ5mh/V5vh2VKdYZ+5Hb4K3mwepx8oM9aIQYb7RzdfJE42ezOT",
            "2 AES_256_CM_HMAC_SHA1_80 inline:M9UR+6n8F8DZ5mh/V5vh2VKdYZ+5Hb4K3mwepx8oM9aIQYb7RzdfJE42ezOTcQ==",
            "3 AES_CM_128_HMAC_SHA1_32 inline:ebHN/WPPcu2E+Jm4kdx9YK58jVFDKD4uRgwFu18k",
            "4 AES_CM_128_HMAC_SHA1_80 inline:zc409/eT1JuwUPQAswLkF878WJvn5Rpo+aLUt+SI",
        ];
        let offered = choose(lines.into_iter()).expect("parses").expect("supported");
        assert_eq!((offered.tag, offered.suite()), (3, Suite::AesCm128HmacSha1_32));
        assert_eq!(choose(lines[..2].iter().copied()), Ok(None), "nothing pbx speaks");
        assert_eq!(choose(std::iter::empty()), Ok(None));
        assert_eq!(
            parse("7 F8_128_HMAC_SHA1_80 inline:not-even-base64"),
            Ok(None),
            "an unknown suite's key is not read"
        );
    }

    /// A key of 29 or 31 bytes is refused with both lengths named, whatever its padding.
    #[test]
    fn wrong_key_length() {
        for (bytes, padded) in [(29, true), (29, false), (31, true), (31, false), (16, true), (0, true)] {
            let mut text = STANDARD.encode(vec![7u8; bytes]);
            if !padded {
                text = text.trim_end_matches('=').to_owned();
            }
            let result = parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{text}"));
            assert_eq!(result, Err(CryptoError::KeyLength { expected: 30, got: bytes }), "{bytes} bytes, {text}");
        }
        let error = CryptoError::KeyLength { expected: 30, got: 29 };
        assert_eq!(error.to_string(), "a=crypto: inline key and salt are 29 bytes, 30 expected");
        let huge = "A".repeat(10_000);
        assert!(matches!(
            parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{huge}")),
            Err(CryptoError::KeyLength { .. })
        ));
    }

    /// Characters outside standard base64 (or URL-safe ones) are a base64 error.
    #[test]
    fn bad_base64() {
        for key in ["WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGV!", "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubG-_", "WVNf=X19"]
        {
            assert_eq!(parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}")), Err(CryptoError::Base64), "{key}");
        }
    }

    /// An MKI (RFC 4568's own example, `|2^20|1:32`, or one without a lifetime) is refused with
    /// its own error; a line without one further down is chosen instead.
    #[test]
    fn mki_is_refused() {
        let with_mki = format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:32");
        assert_eq!(parse(&with_mki), Err(CryptoError::Mki));
        assert_eq!(parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|1:4")), Err(CryptoError::Mki));
        assert_eq!(choose([with_mki.as_str()].into_iter()), Err(CryptoError::Mki));
        let without = format!("2 AES_CM_128_HMAC_SHA1_32 inline:{RFC_KEY}");
        let offered = choose([with_mki.as_str(), without.as_str()].into_iter()).expect("parses").expect("supported");
        assert_eq!(offered.tag, 2);
        assert!(CryptoError::Mki.to_string().contains("MKI is not supported"));
    }

    /// Lines that are not `<tag> <suite> inline:<key>` are syntax errors naming the field.
    #[test]
    fn syntax_errors() {
        let cases = [
            ("", "expected <tag> <crypto-suite> <key-params>"),
            ("1 AES_CM_128_HMAC_SHA1_80", "expected <tag> <crypto-suite> <key-params>"),
            ("x AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}", "tag is not 1 to 9 digits"),
            ("1234567890 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}", "tag is not 1 to 9 digits"),
            ("1 AES_CM_128_HMAC_SHA1_80 outline:{RFC_KEY}", "key method is not inline:"),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|2^20|1:4",
                "more than a key, a lifetime and an MKI in inline:",
            ),
        ];
        for (line, reason) in cases {
            let line = line.replace("{RFC_KEY}", RFC_KEY);
            assert_eq!(parse(&line), Err(CryptoError::Syntax(reason)), "{line}");
        }
        for lifetime in ["2^", "2^x", "", "forever"] {
            let line = format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|{lifetime}");
            assert_eq!(parse(&line), Err(CryptoError::Lifetime), "{line}");
        }
        assert_eq!(
            parse(&format!("999999999 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}")).map(|o| o.map(|o| o.tag)),
            Ok(Some(999_999_999))
        );
    }

    /// A malformed line of a supported suite is reported only when no other line is usable.
    #[test]
    fn choose_reports_the_first_error_only_when_nothing_is_usable() {
        let bad = "1 AES_CM_128_HMAC_SHA1_80 inline:AAAA";
        let worse = "2 AES_CM_128_HMAC_SHA1_80 inline:!!!!";
        let good = format!("3 AES_CM_128_HMAC_SHA1_32 inline:{RFC_KEY}");
        assert_eq!(choose([bad, worse].into_iter()), Err(CryptoError::KeyLength { expected: 30, got: 3 }));
        assert_eq!(choose([bad, worse, good.as_str()].into_iter()).map(|o| o.map(|o| o.tag)), Ok(Some(3)));
    }

    /// Session parameters that change SRTP make a line unsupported (skipped); WSH is ignored;
    /// extra key parameters after `;` are not read.
    #[test]
    fn session_parameters() {
        for param in [
            "UNENCRYPTED_SRTCP",
            "UNENCRYPTED_SRTP",
            "UNAUTHENTICATED_SRTP",
            "KDR=1",
            "FEC_ORDER=FEC_SRTP",
            "-X_VENDOR",
        ] {
            assert_eq!(parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY} {param}")), Ok(None), "{param}");
        }
        assert!(parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY} WSH=64")).expect("parses").is_some());
        let two_keys = format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20;inline:zc409/eT1JuwUPQAswLkF878WJvn5Rpo+aLUt+SI|2^20"
        );
        assert_eq!(parse(&two_keys).expect("parses").expect("supported").key.key_salt(), &decoded(RFC_KEY));
    }

    /// What [`line`] writes parses back to the same tag and key, in the 40-character form
    /// phones send; its text never appears in `Debug` of the key.
    #[test]
    fn answer_line_round_trips() {
        for suite in Suite::ALL {
            let key = KeyMaterial::generate(&mut StdRng::seed_from_u64(5), suite);
            let text = line(17, &key);
            let encoded = text.rsplit(':').next().expect("inline value");
            assert_eq!(encoded.len(), 40);
            assert!(text.starts_with(&format!("a=crypto:17 {} inline:", suite.sdes_name())), "{text}");
            assert_eq!(parse(&text), Ok(Some(Offered { tag: 17, key: key.clone() })));
            assert!(!format!("{:?}", parse(&text)).contains(encoded));
        }
    }
}

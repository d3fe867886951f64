//! Digest credentials (actors/src/registrar/digest.rs): `Credentials::parse` on any
//! Authorization value (its doc promises "never panics, whatever the bytes"), then what the
//! registrar does with parsed credentials — check the nonce, compute the digest, compare.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_actors::registrar::digest::{self, Algorithm, Credentials, NonceKey, QopAuth};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    let key = NonceKey::new([7; 32]);
    let source: std::net::IpAddr = [192, 0, 2, 7].into();
    let _ = key.verify(value, source).map(|m| m.opaque_is(value));
    let Some(c) = Credentials::parse(value) else { return };
    let _ = key.verify(&c.nonce, source).map(|m| c.opaque.as_deref().map(|o| m.opaque_is(o)));
    let algorithm = c.algorithm.as_deref().map_or(Some(Algorithm::Md5), Algorithm::from_name);
    if let Some(algorithm) = algorithm {
        let ha1 = digest::ha1(algorithm, &c.username, &c.realm, "password");
        let qop = match (&c.qop, &c.nc, &c.cnonce) {
            (Some(_), Some(nc), Some(cnonce)) => Some(QopAuth { nc, cnonce }),
            _ => None,
        };
        let expected = digest::request_digest(algorithm, &ha1, &c.nonce, qop, "REGISTER", &c.uri);
        let _ = digest::constant_time_eq(expected.as_bytes(), c.response.as_bytes());
    }
    let _ = Credentials::parse(&format!("{value}, x=1"));
});

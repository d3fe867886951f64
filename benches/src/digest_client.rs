//! A load generator's side of digest authentication: reading a challenge, answering it.

use pbx_actors::registrar::digest::{self, Algorithm, QopAuth};
use std::collections::HashMap;

pub struct Challenge {
    pub algorithm: Algorithm,
    realm: String,
    nonce: String,
    opaque: Option<String>,
    qop_auth: bool,
}

impl Challenge {
    pub fn read(value: &str) -> Option<Challenge> {
        let rest = value.strip_prefix("Digest")?.trim_start();
        let mut params = HashMap::new();
        let mut rest = rest;
        while !rest.is_empty() {
            let (name, after) = rest.split_once('=')?;
            let after = after.trim_start();
            let (param, after) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let end = quoted.find('"')?;
                    (&quoted[..end], &quoted[end + 1..])
                }
                None => {
                    let end = after.find(',').unwrap_or(after.len());
                    (after[..end].trim(), &after[end..])
                }
            };
            params.insert(name.trim().to_ascii_lowercase(), param.to_owned());
            rest = after.trim_start().trim_start_matches(',').trim_start();
        }
        let algorithm = match params.get("algorithm") {
            None => Algorithm::Md5,
            Some(name) => Algorithm::from_name(name)?,
        };
        Some(Challenge {
            algorithm,
            realm: params.remove("realm")?,
            nonce: params.remove("nonce")?,
            opaque: params.remove("opaque"),
            qop_auth: params.get("qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth")),
        })
    }
}

/// The `Authorization` value for `challenge` (RFC 7616 §3.4, nonce count 1).
pub fn answer(algorithm: Algorithm, user: &str, password: &str, uri: &str, challenge: &Challenge) -> String {
    let ha1 = digest::ha1(algorithm, user, &challenge.realm, password);
    let cnonce = format!("{:08x}", (challenge.nonce.len() as u32).wrapping_mul(2_654_435_761));
    let qop = challenge.qop_auth.then_some(QopAuth { nc: "00000001", cnonce: &cnonce });
    let response = digest::request_digest(algorithm, &ha1, &challenge.nonce, qop, "REGISTER", uri);
    let mut value = format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
        challenge.realm,
        challenge.nonce,
        algorithm.name()
    );
    if let Some(opaque) = &challenge.opaque {
        value.push_str(&format!(", opaque=\"{opaque}\""));
    }
    if qop.is_some() {
        value.push_str(&format!(", qop=auth, nc=00000001, cnonce=\"{cnonce}\""));
    }
    value
}

//! Helpers shared by the targets that drive machines with a script of SIP requests
//! (`registrar`, `sip_endpoint`): the directory, a script's chunks, and filling in what only a
//! real client could know (the nonce it was challenged with, the right digest).

use pbx_actors::Timestamp;
use pbx_actors::registrar::digest::{self, Algorithm, Credentials, QopAuth};
use pbx_actors::registrar::{Extension, Registrar, RegistrarConfig};
use pbx_actors::sip::Response;
use pbx_actors::sip::message::{self, Message, Name};
use std::net::SocketAddr;
use std::time::Duration;

pub const SOURCES: [&str; 4] = ["192.0.2.7:5060", "192.0.2.8:5062", "[2001:db8::7]:5060", "198.51.100.66:5060"];
pub const START: Timestamp = Timestamp::from_secs(1_700_000_000);
/// Requests one input may hold: beyond, it is the same work again.
pub const CHUNKS_MAX: usize = 64;

/// `PBX_FUZZ_TRACE=1` prints what a script does (replaying a crash or checking a seed).
pub fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("PBX_FUZZ_TRACE").is_some())
}

/// Extensions 100, 101 and 200, password `secret-<number>`; MD5 challenged first (SIPp's way).
pub fn registrar() -> Registrar {
    let config = RegistrarConfig { digest_algorithms: vec![Algorithm::Md5, Algorithm::Sha256], ..Default::default() };
    let extensions = ["100", "101", "200"]
        .map(|number| {
            let password = format!("secret-{number}");
            Extension {
                number: number.into(),
                display_name: format!("Phone {number}"),
                ha1_md5: digest::ha1(Algorithm::Md5, number, "pbx", &password),
                ha1_sha256: digest::ha1(Algorithm::Sha256, number, "pbx", &password),
            }
        })
        .to_vec();
    let mut registrar = Registrar::new(config, [42; 32], extensions, Vec::new(), START);
    while registrar.poll_output().is_some() {}
    registrar
}

/// One request of a script, after its prefix lines: `+N` (N seconds pass), `@N` (source N of
/// [`SOURCES`]), `tcp` (arrived on a stream).
pub struct Chunk<'a> {
    pub advance: Option<Duration>,
    pub source: SocketAddr,
    pub tcp: bool,
    pub text: &'a str,
}

/// Splits a script at lines `%%` and reads each chunk's prefix lines.
pub fn chunks(script: &str) -> impl Iterator<Item = Chunk<'_>> {
    script.split("\n%%\n").take(CHUNKS_MAX).map(|mut text| {
        let mut chunk = Chunk { advance: None, source: SOURCES[0].parse().unwrap(), tcp: false, text: "" };
        loop {
            let (line, rest) = text.split_once('\n').unwrap_or((text, ""));
            if let Some(n) = line.strip_prefix('+') {
                chunk.advance = Some(Duration::from_secs(n.trim().parse::<u16>().unwrap_or(1).into()));
            } else if let Some(n) = line.strip_prefix('@') {
                let n = n.trim().parse::<usize>().unwrap_or(0) % SOURCES.len();
                chunk.source = SOURCES[n].parse().unwrap();
            } else if line == "tcp" {
                chunk.tcp = true;
            } else {
                break;
            }
            text = rest;
        }
        chunk.text = text;
        chunk
    })
}

/// The last challenges seen, and the substitutions that answer them.
#[derive(Default)]
pub struct Client {
    challenges: Vec<(String, String)>,
    /// Requests filled so far: `$NC`, a nonce count that goes up with every request.
    filled: u32,
}

impl Client {
    /// Remembers the nonces and opaques of a 401/407.
    pub fn saw(&mut self, response: &Response) {
        let found: Vec<(String, String)> = [Name::WWW_AUTHENTICATE, Name::PROXY_AUTHENTICATE]
            .iter()
            .flat_map(|name| response.headers.get_raw(name))
            .map(|v| (param(v.as_str(), "nonce"), param(v.as_str(), "opaque")))
            .collect();
        if !found.is_empty() {
            self.challenges = found;
        }
    }

    /// Line ends to CRLF, then `$NONCE`/`$OPAQUE` (first challenge), `$NONCE2`/`$OPAQUE2`
    /// (second), `$NC` (a nonce count, one more each request) and `$RESPONSE` (the digest for
    /// the credentials as written, password `secret-<username>`) filled in.
    pub fn fill(&mut self, text: &str) -> String {
        self.filled += 1;
        let mut text = text.replace('\n', "\r\n").replace("$NC", &format!("{:08x}", self.filled));
        text.push_str("\r\n");
        for (n, (nonce, opaque)) in self.challenges.iter().enumerate().take(2).rev() {
            let suffix = if n == 0 { "" } else { "2" };
            text = text.replace(&format!("$NONCE{suffix}"), nonce).replace(&format!("$OPAQUE{suffix}"), opaque);
        }
        if text.contains("$RESPONSE")
            && let Some(response) = right_response(&text)
        {
            text = text.replace("$RESPONSE", &response);
        }
        text
    }
}

/// `name="value"` out of a challenge.
fn param(challenge: &str, name: &str) -> String {
    let key = format!("{name}=\"");
    challenge.find(&key).and_then(|at| challenge[at + key.len()..].split('"').next()).unwrap_or_default().to_owned()
}

/// The correct `response` for the credentials in the request's (Proxy-)Authorization.
fn right_response(text: &str) -> Option<String> {
    let Ok(Message::Request(request)) = message::parse_datagram(text.as_bytes()) else { return None };
    let value = request.header(&Name::AUTHORIZATION).or_else(|| request.header(&Name::PROXY_AUTHORIZATION))?;
    let c = Credentials::parse(value)?;
    let algorithm = c.algorithm.as_deref().map_or(Some(Algorithm::Md5), Algorithm::from_name)?;
    let ha1 = digest::ha1(algorithm, &c.username, &c.realm, &format!("secret-{}", c.username));
    let qop = match (&c.qop, &c.nc, &c.cnonce) {
        (Some(_), Some(nc), Some(cnonce)) => Some(QopAuth { nc, cnonce }),
        _ => None,
    };
    Some(digest::request_digest(algorithm, &ha1, &c.nonce, qop, &request.method.to_string(), &c.uri))
}

//! The stand-in's state and its request dispatch, without I/O: a request (already read, body
//! bounded by the listener) and the time in, an answer out, and the records of what was
//! received. The listeners ([`super::listener`]) are the shell; [`super::fcm`] and
//! [`super::apns`] validate as the real services do.
//!
//! Every table is bounded ([`RECEIVED_MAX`], [`ACCESS_TOKENS_MAX`], [`UNREGISTERED_MAX`],
//! [`REGISTRATIONS_MAX`]); a full table drops its oldest entry, never refuses the newest.

use crate::keys::{EcPublicKey, RsaPublicKey};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Records kept of what was received (`GET /_gateway/received`); the oldest go first. A test
/// run sends tens of pushes; a thousand covers a long end-to-end suite.
pub const RECEIVED_MAX: usize = 1_000;
/// Bytes of a request body kept in its record. Wake-ups are a few hundred bytes; a message
/// FCM would accept is at most 4 KiB of data plus its envelope.
pub const RECEIVED_BODY_BYTES_MAX: usize = 8 * 1024;
/// Access tokens the OAuth endpoint keeps valid at once; past it the oldest is forgotten (its
/// holder gets 401 and exchanges a new one, as after an expiry).
pub const ACCESS_TOKENS_MAX: usize = 4_096;
/// Tokens marked unregistered; past it the oldest mark is dropped.
pub const UNREGISTERED_MAX: usize = 10_000;
/// Service accounts and APNs keys registered, each.
pub const REGISTRATIONS_MAX: usize = 256;
/// Google's access tokens live an hour; it says 3599 s left when it hands one out.
pub const ACCESS_TOKEN_LIFETIME_S: u64 = 3_599;
/// Clock difference tolerated between a client and the gateway for `iat` and `exp`.
pub const CLOCK_SKEW_S: u64 = 300;

/// Which listener a request came in on: they speak different error dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Fcm,
    Apns,
}

/// A request as the shell read it.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1): what the client thinks our name is.
    pub authority: Option<String>,
    /// "HTTP/2.0" or "HTTP/1.1".
    pub version: String,
    /// `None`: the body was larger than the listener reads.
    pub body: Option<Bytes>,
}

/// An answer for the shell to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(status: StatusCode, value: &Value) -> Answer {
        Answer {
            status,
            headers: vec![(http::header::CONTENT_TYPE, "application/json; charset=UTF-8".into())],
            body: value.to_string().into_bytes(),
        }
    }
}

/// Which service a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// `messages:send`.
    Fcm,
    /// The OAuth token endpoint (no body kept: the assertion is a credential).
    FcmToken,
    /// `/3/device/<token>`.
    Apns,
}

/// One request the gateway received, and what it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedPush {
    /// Grows by one per record, from 1: `?after=<id>` pages.
    pub id: u64,
    /// Which endpoint received it.
    pub service: Service,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    /// The same time as Unix milliseconds.
    pub at_unix_ms: u64,
    /// The device or registration token pushed to, when there was one.
    pub token: Option<String>,
    /// Who authenticated: the service account's email (FCM), `<team>/<key id>` (APNs).
    pub sender: Option<String>,
    /// "HTTP/2.0" or "HTTP/1.1".
    pub version: String,
    /// The headers a test asserts on: `apns-*`, the FCM project.
    pub headers: BTreeMap<String, String>,
    /// The body as text, at most [`RECEIVED_BODY_BYTES_MAX`] bytes of it.
    pub body: String,
    /// Whether the body was longer than what was kept (or than the listener reads).
    pub body_truncated: bool,
    /// The status the gateway answered.
    pub status: u16,
    /// Why it refused, in the service's words (APNs reason, FCM status and errorCode, OAuth
    /// error).
    pub reason: Option<String>,
}

/// An FCM service account's public half, as registered.
#[derive(Debug, Clone)]
pub struct FcmAccount {
    pub client_email: String,
    pub project_id: String,
    pub private_key_id: Option<String>,
    pub key: RsaPublicKey,
}

/// An APNs signing key's public half, as registered.
#[derive(Debug, Clone)]
pub struct ApnsKeyEntry {
    pub team_id: String,
    pub key_id: String,
    pub key: EcPublicKey,
    /// Topics this key may push to; a bundle ID also allows `<bundle>.voip`. Empty: any.
    pub topics: Vec<String>,
}

/// Registered credentials by client email and by key ID.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub fcm: BTreeMap<String, FcmAccount>,
    pub apns: BTreeMap<String, ApnsKeyEntry>,
}

impl Registry {
    /// Adds or replaces; false when the table is full of others.
    pub fn add_fcm(&mut self, account: FcmAccount) -> bool {
        if self.fcm.len() >= REGISTRATIONS_MAX && !self.fcm.contains_key(&account.client_email) {
            return false;
        }
        self.fcm.insert(account.client_email.clone(), account);
        true
    }

    /// Adds or replaces; false when the table is full of others.
    pub fn add_apns(&mut self, key: ApnsKeyEntry) -> bool {
        if self.apns.len() >= REGISTRATIONS_MAX && !self.apns.contains_key(&key.key_id) {
            return false;
        }
        self.apns.insert(key.key_id.clone(), key);
        true
    }
}

/// An access token handed out.
#[derive(Debug, Clone)]
pub struct Grant {
    pub client_email: String,
    pub project_id: String,
    pub expires_at_ms: u64,
    pub issued_at_ms: u64,
}

/// Settings that change what the gateway accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// Apple's `TooManyProviderTokenUpdates`: a new provider token for a key sooner than this
    /// after the last is refused with 429. 0 (the default): not checked, so tests that start
    /// several clients on one key pass; 1200 is Apple's rule.
    pub apns_token_update_interval_s_min: u64,
}

/// What the handlers share, behind one lock (held for a request's validation, no I/O).
pub struct State {
    /// From the config file and `Gateway::register_*` calls.
    pub registry: Registry,
    /// From `DATA_DIR/registrations.json`, replaced whenever the file changes.
    pub file_registry: Registry,
    pub grants: BTreeMap<String, Grant>,
    pub unregistered: BTreeMap<String, u64>,
    pub received: VecDeque<ReceivedPush>,
    pub next_record_id: u64,
    pub messages_sent: u64,
    /// Per APNs key ID: the last provider token seen and when it was first seen.
    pub provider_tokens: BTreeMap<String, (String, u64)>,
    pub rng: StdRng,
    pub settings: Settings,
}

impl State {
    pub fn fcm_account(&self, client_email: &str) -> Option<&FcmAccount> {
        self.registry.fcm.get(client_email).or_else(|| self.file_registry.fcm.get(client_email))
    }

    pub fn apns_key(&self, key_id: &str) -> Option<&ApnsKeyEntry> {
        self.registry.apns.get(key_id).or_else(|| self.file_registry.apns.get(key_id))
    }

    /// Keeps `record`, dropping the oldest past [`RECEIVED_MAX`]; returns its id.
    pub fn record(&mut self, mut record: ReceivedPush) -> u64 {
        self.next_record_id += 1;
        record.id = self.next_record_id;
        if self.received.len() >= RECEIVED_MAX {
            self.received.pop_front();
        }
        self.received.push_back(record);
        self.next_record_id
    }

    /// Keeps a new access token, forgetting expired ones and then the oldest when full.
    pub fn grant(&mut self, token: String, grant: Grant, now_ms: u64) {
        if self.grants.len() >= ACCESS_TOKENS_MAX {
            self.grants.retain(|_, g| g.expires_at_ms > now_ms);
        }
        if self.grants.len() >= ACCESS_TOKENS_MAX
            && let Some(oldest) = self.grants.iter().min_by_key(|(_, g)| g.issued_at_ms).map(|(t, _)| t.clone())
        {
            self.grants.remove(&oldest);
        }
        self.grants.insert(token, grant);
    }

    /// Marks `token` unregistered at `now_ms`, dropping the oldest mark when full.
    pub fn unregister(&mut self, token: &str, now_ms: u64) {
        if self.unregistered.len() >= UNREGISTERED_MAX
            && !self.unregistered.contains_key(token)
            && let Some(oldest) = self.unregistered.iter().min_by_key(|(_, at)| **at).map(|(t, _)| t.clone())
        {
            self.unregistered.remove(&oldest);
        }
        self.unregistered.insert(token.to_string(), now_ms);
    }

    /// `n` random bytes as base64url: access tokens.
    pub fn random_token(&mut self, bytes: usize) -> String {
        use base64::Engine;
        use rand::RngCore;
        let mut buffer = vec![0; bytes];
        self.rng.fill_bytes(&mut buffer);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buffer)
    }

    /// A random UUID (version 4) in Apple's upper-case form: `apns-id`s.
    pub fn random_uuid(&mut self) -> String {
        use rand::RngCore;
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
        format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
    }
}

/// The gateway's state and dispatch.
pub struct Core {
    state: Mutex<State>,
}

impl Core {
    /// A core with `registry` registered, drawing ids from `seed`.
    pub fn new(registry: Registry, settings: Settings, seed: u64) -> Core {
        Core {
            state: Mutex::new(State {
                registry,
                file_registry: Registry::default(),
                grants: BTreeMap::new(),
                unregistered: BTreeMap::new(),
                received: VecDeque::new(),
                next_record_id: 0,
                messages_sent: 0,
                provider_tokens: BTreeMap::new(),
                rng: StdRng::seed_from_u64(seed),
                settings,
            }),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers one request.
    pub fn handle(&self, listener: Listener, request: &Request, now_ms: u64) -> Answer {
        let mut state = self.state();
        if let Some(rest) = request.path.strip_prefix("/_gateway/") {
            return admin(&mut state, listener, request, rest, now_ms);
        }
        match listener {
            Listener::Fcm => super::fcm::handle(&mut state, request, now_ms),
            Listener::Apns => super::apns::handle(&mut state, request, now_ms),
        }
    }
}

/// `/_gateway/…`: what tests read and steer.
fn admin(state: &mut State, listener: Listener, request: &Request, rest: &str, now_ms: u64) -> Answer {
    let not_found = || match listener {
        Listener::Fcm => super::fcm::not_found(),
        Listener::Apns => super::apns::reason_answer(StatusCode::NOT_FOUND, "BadPath", None, None),
    };
    match (&request.method, rest) {
        (&Method::GET, "received") => {
            let query = form_decode(&request.query).unwrap_or_default();
            let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let service = get("service");
            let token = get("token");
            let after = get("after").and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
            let records: Vec<&ReceivedPush> = state
                .received
                .iter()
                .filter(|r| r.id > after)
                .filter(|r| service.is_none_or(|s| serde_json::to_value(r.service).ok() == Some(json!(s))))
                .filter(|r| token.is_none_or(|t| r.token.as_deref() == Some(t)))
                .collect();
            Answer::json(StatusCode::OK, &json!(records))
        }
        (&Method::DELETE, "received") => {
            let cleared = state.received.len();
            state.received.clear();
            Answer::json(StatusCode::OK, &json!({ "cleared": cleared }))
        }
        (&Method::POST, rest) if rest.starts_with("unregister/") => {
            let raw = &rest["unregister/".len()..];
            match percent_decode(raw) {
                Some(token) if !token.is_empty() && token.len() <= crate::rfc8599::PN_VALUE_BYTES_MAX => {
                    state.unregister(&token, now_ms);
                    Answer::json(StatusCode::OK, &json!({ "unregistered": token, "at_unix_ms": now_ms }))
                }
                _ => Answer::json(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "unregister/<token>: a token of 1 to 1024 bytes, percent-encoded" }),
                ),
            }
        }
        _ => not_found(),
    }
}

/// What a handler noted about a request for its record.
#[derive(Debug, Default)]
pub struct Noted {
    pub token: Option<String>,
    pub sender: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub reason: Option<String>,
}

/// A record of `request` as answered by `answer`.
pub fn record_of(service: Service, request: &Request, answer: &Answer, noted: Noted, now_ms: u64) -> ReceivedPush {
    let body = request.body.as_deref().unwrap_or_default();
    let kept = &body[..body.len().min(RECEIVED_BODY_BYTES_MAX)];
    ReceivedPush {
        id: 0,
        service,
        at: rfc3339_ms(now_ms),
        at_unix_ms: now_ms,
        token: noted.token,
        sender: noted.sender,
        version: request.version.clone(),
        headers: noted.headers,
        body: if service == Service::FcmToken { String::new() } else { String::from_utf8_lossy(kept).into_owned() },
        body_truncated: request.body.is_none() || body.len() > RECEIVED_BODY_BYTES_MAX,
        status: answer.status.as_u16(),
        reason: noted.reason,
    }
}

/// UTC, milliseconds, `Z` (the project's one time format, pbx_host::http::rfc3339).
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{unix_ms}ms"))
}

/// `%XX` decoded (no `+`: paths), `None` for a broken escape or non-UTF-8: SIP's decoder
/// (RFC 3261 §19.1.2 and RFC 3986 escape alike).
pub use pbx_actors::sip::message::percent_decode;

/// `application/x-www-form-urlencoded` pairs (`+` is a space), `None` for a broken escape.
pub fn form_decode(text: &str) -> Option<Vec<(String, String)>> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(&k.replace('+', " "))?, percent_decode(&v.replace('+', " "))?))
        })
        .collect()
}

/// The header's value when present exactly once and text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let core = Core::new(Registry::default(), Settings::default(), 7);
        core.state.into_inner().unwrap()
    }

    fn record(token: &str) -> ReceivedPush {
        ReceivedPush {
            id: 0,
            service: Service::Apns,
            at: String::new(),
            at_unix_ms: 0,
            token: Some(token.into()),
            sender: None,
            version: String::new(),
            headers: BTreeMap::new(),
            body: String::new(),
            body_truncated: false,
            status: 200,
            reason: None,
        }
    }

    // Proves the received list keeps the newest RECEIVED_MAX records with growing ids.
    #[test]
    fn received_is_bounded() {
        let mut state = state();
        for i in 0..RECEIVED_MAX + 5 {
            state.record(record(&i.to_string()));
        }
        assert_eq!(state.received.len(), RECEIVED_MAX);
        assert_eq!(state.received.front().map(|r| r.id), Some(6));
        assert_eq!(state.received.back().map(|r| r.id), Some(RECEIVED_MAX as u64 + 5));
    }

    // Proves full token tables forget expired grants first, then the oldest.
    #[test]
    fn grants_and_marks_are_bounded() {
        let mut state = state();
        let grant = |issued: u64, expires: u64| Grant {
            client_email: "a".into(),
            project_id: "p".into(),
            expires_at_ms: expires,
            issued_at_ms: issued,
        };
        for i in 0..ACCESS_TOKENS_MAX as u64 {
            state.grant(format!("t{i}"), grant(i, if i == 5 { 10 } else { 1_000_000 }), 0);
        }
        state.grant("new".into(), grant(99_999, 1_000_000), 100);
        assert!(!state.grants.contains_key("t5"), "the expired grant went first");
        assert!(state.grants.contains_key("t0"));
        state.grant("newer".into(), grant(100_000, 1_000_000), 100);
        assert!(!state.grants.contains_key("t0"), "then the oldest");
        assert_eq!(state.grants.len(), ACCESS_TOKENS_MAX);
        for i in 0..UNREGISTERED_MAX as u64 + 1 {
            state.unregister(&i.to_string(), i);
        }
        assert_eq!(state.unregistered.len(), UNREGISTERED_MAX);
        assert!(!state.unregistered.contains_key("0"));
    }

    // Proves the decoders: escapes, plus signs in forms, broken input refused.
    #[test]
    fn decoders() {
        assert_eq!(percent_decode("a%3Ab"), Some("a:b".into()));
        assert_eq!(percent_decode("a%3"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(form_decode("a=b+c&d=%26"), Some(vec![("a".into(), "b c".into()), ("d".into(), "&".into())]));
        assert_eq!(form_decode("a=%zz"), None);
        assert_eq!(rfc3339_ms(1_714_564_800_250), "2024-05-01T12:00:00.250Z");
        let mut state = state();
        let uuid = state.random_uuid();
        assert_eq!((uuid.len(), &uuid[14..15]), (36, "4"));
    }
}

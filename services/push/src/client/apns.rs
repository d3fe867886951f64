//! APNs, sans-IO: the provider token (an ES256 JWT from a `.p8` key, Apple's "Establishing a
//! token-based connection to APNs"), the `POST /3/device/<token>` request of a VoIP push
//! (PushKit: `apns-push-type: voip`, topic `<bundle>.voip`, priority 10), and what each answer
//! means ([`Outcome`], Apple's "Handling notification responses from APNs").
//!
//! Apple refuses a provider token older than an hour (`ExpiredProviderToken`) and one
//! replaced more often than every 20 minutes (`TooManyProviderTokenUpdates`), so
//! [`ProviderTokenCache`] makes a new one every [`PROVIDER_TOKEN_REFRESH_S`] (50 minutes).
//!
//! Not here: certificate-based authentication, alert payload building (`aps.alert`), Live
//! Activities, the `apns-unique-id` of the sandbox.

use super::{BuildError, CredentialError, Outcome, origin, read_bounded, retry_after};
use crate::rfc8599::ApnsTarget;
use ring::signature::EcdsaKeyPair;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Apple's production endpoint.
pub const APNS_PRODUCTION: &str = "https://api.push.apple.com";
/// Apple's sandbox, for development builds of the app (Linphone's `pn-provider=apns.dev`).
pub const APNS_SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// Apple refuses provider tokens whose `iat` is older than this.
pub const PROVIDER_TOKEN_AGE_S_MAX: u64 = 3_600;
/// Apple refuses a new provider token sooner than this after the last.
pub const PROVIDER_TOKEN_UPDATE_S_MIN: u64 = 20 * 60;
/// A provider token is replaced after this long: well inside the hour, not within 20 minutes.
pub const PROVIDER_TOKEN_REFRESH_S: u64 = 50 * 60;
const _: () = assert!(PROVIDER_TOKEN_UPDATE_S_MIN <= PROVIDER_TOKEN_REFRESH_S);
const _: () = assert!(PROVIDER_TOKEN_REFRESH_S < PROVIDER_TOKEN_AGE_S_MAX);
/// Apple's payload limit for every push type but VoIP.
pub const APNS_PAYLOAD_BYTES_MAX: usize = 4_096;
/// Apple's payload limit for VoIP pushes.
pub const APNS_VOIP_PAYLOAD_BYTES_MAX: usize = 5_120;
/// The largest `.p8` read (Apple's are ~250 bytes).
pub const P8_BYTES_MAX: usize = 16 * 1024;
/// `apns-priority` of a push to deliver at once (a ringing call).
pub const PRIORITY_IMMEDIATE: u8 = 10;
/// `apns-priority` of background pushes (Apple refuses them at 10).
pub const PRIORITY_BACKGROUND: u8 = 5;

/// A token-signing key: Apple's `.p8`, its key ID and the team it belongs to.
#[derive(Clone)]
pub struct ApnsKey {
    /// The provider token's `iss`: the team the key belongs to.
    pub team_id: String,
    /// The provider token's `kid`: the key's ID in Apple's developer account.
    pub key_id: String,
    key: Arc<EcdsaKeyPair>,
}

impl std::fmt::Debug for ApnsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsKey").field("team_id", &self.team_id).field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Apple's team and key IDs are 10 characters of A-Z and 0-9; a stand-in's may differ, so any
/// 1-32 letters and digits.
fn id_ok(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric())
}

impl ApnsKey {
    /// A key from the `.p8`'s text.
    pub fn from_p8(pem: &str, team_id: &str, key_id: &str) -> Result<ApnsKey, CredentialError> {
        for id in [team_id, key_id] {
            if !id_ok(id) {
                return Err(CredentialError::Id(id.into()));
            }
        }
        Ok(ApnsKey { team_id: team_id.into(), key_id: key_id.into(), key: Arc::new(crate::keys::ec_signing_key(pem)?) })
    }

    /// Reads `AuthKey_<KEYID>.p8`.
    pub fn read(path: &Path, team_id: &str, key_id: &str) -> Result<ApnsKey, CredentialError> {
        let bytes = read_bounded(path, P8_BYTES_MAX)?;
        ApnsKey::from_p8(&String::from_utf8_lossy(&bytes), team_id, key_id)
    }

    /// A provider token issued at `now_unix_s`: header `{"alg":"ES256","kid":key_id}`, claims
    /// `{"iss":team_id,"iat":now}`.
    pub fn provider_token(&self, now_unix_s: u64) -> Result<String, CredentialError> {
        let claims = json!({ "iss": self.team_id, "iat": now_unix_s });
        Ok(crate::jwt::sign_es256(&self.key, Some(&self.key_id), &claims)?)
    }
}

/// The provider token in use, replaced every [`PROVIDER_TOKEN_REFRESH_S`].
#[derive(Debug, Default)]
pub struct ProviderTokenCache {
    token: Option<(String, u64)>,
}

impl ProviderTokenCache {
    /// The token to send at `now_unix_s`: the cached one while younger than the refresh
    /// period, else a new one.
    pub fn token(&mut self, key: &ApnsKey, now_unix_s: u64) -> Result<String, CredentialError> {
        if let Some((token, issued)) = &self.token
            && now_unix_s >= *issued
            && now_unix_s - issued < PROVIDER_TOKEN_REFRESH_S
        {
            return Ok(token.clone());
        }
        let token = key.provider_token(now_unix_s)?;
        self.token = Some((token.clone(), now_unix_s));
        Ok(token)
    }

    /// Forgets the token (APNs refused it).
    pub fn clear(&mut self) {
        self.token = None;
    }
}

/// `apns-push-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushType {
    /// PushKit: wakes the app to report an incoming call to CallKit.
    Voip,
    /// A user-visible notification.
    Alert,
    /// A silent update (`content-available`); Apple wants priority 5.
    Background,
}

impl PushType {
    /// The `apns-push-type` header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            PushType::Voip => "voip",
            PushType::Alert => "alert",
            PushType::Background => "background",
        }
    }
}

/// One push to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsPush {
    /// Hex digits, as the app reported them (RFC 8599 `pn-prid`).
    pub device_token: String,
    /// `apns-topic`: the bundle ID, or `<bundle>.voip` for PushKit.
    pub topic: String,
    /// `apns-push-type`.
    pub push_type: PushType,
    /// 10 at once, 5 power-considerate, 1 lowest.
    pub priority: u8,
    /// Unix seconds after which Apple drops the push; 0: deliver now or never.
    pub expiration_unix_s: u64,
    /// The JSON payload.
    pub payload: Vec<u8>,
    /// `apns-collapse-id`: pushes with the same one replace each other on the device.
    pub collapse_id: Option<String>,
    /// Our id for the push (a UUID); APNs makes one when absent.
    pub apns_id: Option<String>,
}

impl ApnsPush {
    /// The VoIP wake-up of an RFC 8599 target: its `:voip` token, topic `<bundle>.voip`,
    /// priority 10, expiring `ttl` after `now_unix_s` (0 for a zero ttl), payload
    /// `{"aps":{}, <data>}`.
    pub fn voip_wake_up(
        target: &ApnsTarget,
        data: &BTreeMap<String, String>,
        ttl: Duration,
        now_unix_s: u64,
    ) -> Result<ApnsPush, BuildError> {
        let device_token = target.voip_token.clone().ok_or(BuildError::NoVoipToken)?;
        Ok(ApnsPush {
            device_token,
            topic: target.voip_topic(),
            push_type: PushType::Voip,
            priority: PRIORITY_IMMEDIATE,
            expiration_unix_s: expiration(ttl, now_unix_s),
            payload: payload(json!({}), data, APNS_VOIP_PAYLOAD_BYTES_MAX)?,
            collapse_id: None,
            apns_id: None,
        })
    }

    /// The registration-refresh push of an RFC 8599 target (§5.6): a silent background push
    /// (`content-available`, priority 5 as Apple requires) to its `:remote` token on the
    /// bundle's own topic, payload `{"aps":{"content-available":1}, <data>}`. Never a VoIP
    /// push: iOS ends an app that gets one without reporting a call.
    pub fn background_refresh(
        target: &ApnsTarget,
        data: &BTreeMap<String, String>,
        ttl: Duration,
        now_unix_s: u64,
    ) -> Result<ApnsPush, BuildError> {
        let device_token = target.remote_token.clone().ok_or(BuildError::NoRemoteToken)?;
        Ok(ApnsPush {
            device_token,
            topic: target.bundle_id.clone(),
            push_type: PushType::Background,
            priority: PRIORITY_BACKGROUND,
            expiration_unix_s: expiration(ttl, now_unix_s),
            payload: payload(json!({ "content-available": 1 }), data, APNS_PAYLOAD_BYTES_MAX)?,
            collapse_id: None,
            apns_id: None,
        })
    }
}

/// `apns-expiration`: `ttl` after `now_unix_s`, or 0 (deliver now or never) for a zero ttl.
fn expiration(ttl: Duration, now_unix_s: u64) -> u64 {
    match ttl.as_secs() {
        0 => 0,
        ttl_s => now_unix_s.saturating_add(ttl_s),
    }
}

/// The JSON payload `{"aps": aps, <data>}`, at most `limit` bytes; `aps` is Apple's key.
fn payload(aps: Value, data: &BTreeMap<String, String>, limit: usize) -> Result<Vec<u8>, BuildError> {
    if data.contains_key("aps") {
        return Err(BuildError::ReservedKey("aps".into()));
    }
    let mut payload = Map::new();
    payload.insert("aps".into(), aps);
    payload.extend(data.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))));
    let payload = Value::Object(payload).to_string().into_bytes();
    if payload.len() > limit {
        return Err(BuildError::TooLarge(payload.len(), limit));
    }
    Ok(payload)
}

/// `POST {endpoint}/3/device/{token}` for `push`, authorized by `provider_token`.
pub fn send_request(
    endpoint: &str,
    provider_token: &str,
    push: &ApnsPush,
) -> Result<http::Request<Vec<u8>>, BuildError> {
    let authority = origin(endpoint)?;
    if push.device_token.is_empty() {
        return Err(BuildError::NoToken);
    }
    if !push.device_token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BuildError::Header("path", push.device_token.clone()));
    }
    let limit = if push.push_type == PushType::Voip { APNS_VOIP_PAYLOAD_BYTES_MAX } else { APNS_PAYLOAD_BYTES_MAX };
    if push.payload.len() > limit {
        return Err(BuildError::TooLarge(push.payload.len(), limit));
    }
    let mut request = http::Request::post(format!("https://{authority}/3/device/{}", push.device_token))
        .header(http::header::AUTHORIZATION, format!("bearer {provider_token}"))
        .header("apns-topic", &push.topic)
        .header("apns-push-type", push.push_type.as_str())
        .header("apns-priority", push.priority.to_string())
        .header("apns-expiration", push.expiration_unix_s.to_string())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(id) = &push.collapse_id {
        request = request.header("apns-collapse-id", id);
    }
    if let Some(id) = &push.apns_id {
        request = request.header("apns-id", id);
    }
    request
        .body(push.payload.clone())
        .map_err(|_| BuildError::Header("apns-topic, apns-id or apns-collapse-id", push.topic.clone()))
}

/// What APNs' answer means.
pub fn send_outcome(response: &http::Response<Vec<u8>>) -> Outcome {
    let status = response.status();
    let apns_id = response.headers().get("apns-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if status.is_success() {
        return Outcome::Delivered { id: apns_id };
    }
    let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    let reason_code = body.get("reason").and_then(Value::as_str).unwrap_or_default().to_string();
    let reason = format!("{} {reason_code}", status.as_u16());
    match (status.as_u16(), reason_code.as_str()) {
        (410, _) | (400, "BadDeviceToken") => Outcome::Unregistered { reason },
        (403, "ExpiredProviderToken" | "InvalidProviderToken") => Outcome::Reauthenticate { reason },
        (429, _) | (500..=599, _) => Outcome::Retry { after: retry_after(response.headers()), reason },
        _ => Outcome::Fatal { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    fn key() -> (ApnsKey, String) {
        let (private, public) = crate::keys::generate_ec().unwrap();
        (ApnsKey::from_p8(&private, "ABCD1234", "KEY123").unwrap(), public)
    }

    fn target() -> ApnsTarget {
        match crate::rfc8599::parse("apns", "ABCD1234.org.example.app.voip", TOKEN).unwrap() {
            crate::rfc8599::PushTarget::Apns(t) => t,
            other => panic!("{other:?}"),
        }
    }

    // Proves the provider token is Apple's shape and verifies with the key's public half.
    #[test]
    fn provider_token_shape() {
        let (key, public) = key();
        let jwt = crate::jwt::decode(&key.provider_token(1_000).unwrap()).unwrap();
        jwt.verify_es256(&crate::keys::EcPublicKey::from_pem(&public).unwrap()).unwrap();
        assert_eq!(
            (jwt.alg(), jwt.kid(), jwt.claim_str("iss"), jwt.claim_u64("iat")),
            (Some("ES256"), Some("KEY123"), Some("ABCD1234"), Some(1_000))
        );
        assert!(matches!(ApnsKey::from_p8("junk", "ABCD1234", "K"), Err(CredentialError::Key(_))));
        assert!(matches!(ApnsKey::from_p8("junk", "AB.CD", "K"), Err(CredentialError::Id(_))));
    }

    // Proves the cache keeps a token for 50 minutes, then makes a new one, and after a clear.
    #[test]
    fn provider_token_refresh() {
        let (key, _) = key();
        let mut cache = ProviderTokenCache::default();
        let first = cache.token(&key, 1_000).unwrap();
        assert_eq!(cache.token(&key, 1_000 + PROVIDER_TOKEN_REFRESH_S - 1).unwrap(), first);
        let second = cache.token(&key, 1_000 + PROVIDER_TOKEN_REFRESH_S).unwrap();
        assert_ne!(second, first);
        cache.clear();
        assert_ne!(cache.token(&key, 1_000 + PROVIDER_TOKEN_REFRESH_S).unwrap(), second);
    }

    // Proves the VoIP request's headers and payload.
    #[test]
    fn voip_request_shape() {
        let data: BTreeMap<String, String> = [("call-id".into(), "c1".into())].into();
        let push = ApnsPush::voip_wake_up(&target(), &data, Duration::from_secs(30), 1_000).unwrap();
        let request = send_request("https://127.0.0.1:8442", "jwt", &push).unwrap();
        assert_eq!(request.uri().to_string(), format!("https://127.0.0.1:8442/3/device/{TOKEN}"));
        let h = request.headers();
        assert_eq!(
            (&h["authorization"], &h["apns-topic"], &h["apns-push-type"]),
            (
                &"bearer jwt".parse::<http::HeaderValue>().unwrap(),
                &"org.example.app.voip".parse::<http::HeaderValue>().unwrap(),
                &"voip".parse::<http::HeaderValue>().unwrap()
            )
        );
        assert_eq!((h["apns-priority"].to_str().unwrap(), h["apns-expiration"].to_str().unwrap()), ("10", "1030"));
        assert_eq!(serde_json::from_slice::<Value>(request.body()).unwrap(), json!({"aps": {}, "call-id": "c1"}));
        let remote_only = ApnsTarget { voip_token: None, ..target() };
        assert_eq!(ApnsPush::voip_wake_up(&remote_only, &data, Duration::ZERO, 0), Err(BuildError::NoVoipToken));
        let now_or_never = ApnsPush::voip_wake_up(&target(), &data, Duration::ZERO, 1_000).unwrap();
        assert_eq!(now_or_never.expiration_unix_s, 0);
    }

    // Proves the refresh push is a silent background push to the `:remote` token on the
    // bundle's topic at priority 5, and that a target without that token gets none.
    #[test]
    fn background_refresh_shape() {
        let data: BTreeMap<String, String> = [("type".into(), "register".into())].into();
        let both = ApnsTarget { remote_token: Some("00ff".repeat(16)), ..target() };
        let push = ApnsPush::background_refresh(&both, &data, Duration::from_secs(60), 1_000).unwrap();
        let request = send_request("https://127.0.0.1:8442", "jwt", &push).unwrap();
        assert_eq!(request.uri().path(), format!("/3/device/{}", "00ff".repeat(16)));
        let h = request.headers();
        let get = |name: &str| h[name].to_str().unwrap().to_string();
        assert_eq!(
            (get("apns-topic"), get("apns-push-type"), get("apns-priority"), get("apns-expiration")),
            ("org.example.app".into(), "background".into(), "5".into(), "1060".into())
        );
        let body = serde_json::from_slice::<Value>(request.body()).unwrap();
        assert_eq!(body, json!({"aps": {"content-available": 1}, "type": "register"}));
        assert_eq!(ApnsPush::background_refresh(&target(), &data, Duration::ZERO, 0), Err(BuildError::NoRemoteToken));
    }

    // Proves Apple's answers map to the outcomes the dispatch acts on.
    #[test]
    fn outcomes() {
        let answer = |status: u16, reason: &str| {
            let body = if reason.is_empty() { String::new() } else { json!({"reason": reason}).to_string() };
            send_outcome(
                &http::Response::builder().status(status).header("apns-id", "ID-1").body(body.into_bytes()).unwrap(),
            )
        };
        assert_eq!(answer(200, ""), Outcome::Delivered { id: "ID-1".into() });
        assert!(matches!(answer(410, "Unregistered"), Outcome::Unregistered { .. }));
        assert!(matches!(answer(400, "BadDeviceToken"), Outcome::Unregistered { .. }));
        assert!(matches!(answer(403, "ExpiredProviderToken"), Outcome::Reauthenticate { .. }));
        assert!(matches!(answer(403, "InvalidProviderToken"), Outcome::Reauthenticate { .. }));
        assert!(matches!(answer(429, "TooManyRequests"), Outcome::Retry { .. }));
        assert!(matches!(answer(503, "ServiceUnavailable"), Outcome::Retry { .. }));
        assert!(matches!(answer(400, "TopicDisallowed"), Outcome::Fatal { reason } if reason == "400 TopicDisallowed"));
        assert!(matches!(answer(413, "PayloadTooLarge"), Outcome::Fatal { .. }));
    }
}

//! The APNs side of the stand-in: `POST /3/device/<token>` with token-based authentication,
//! validating as Apple's "Sending notification requests to APNs" and "Handling notification
//! responses from APNs" describe, answering `200` with `apns-id`, or Apple's status and
//! `{"reason": …}` (with `"timestamp"` for 410).
//!
//! Checks, in order: path (`BadPath` 404, `MethodNotAllowed` 405, `MissingDeviceToken`),
//! `DuplicateHeaders`, the provider token (`MissingProviderToken`, `InvalidProviderToken`,
//! `ExpiredProviderToken` 403; `TooManyProviderTokenUpdates` 429 when enabled), the device
//! token (`BadDeviceToken`: 64 hex digits), the topic (`MissingTopic`, `TopicDisallowed`,
//! `BadTopic`), `InvalidPushType`, `BadPriority`, `BadExpirationDate`, `BadMessageId`,
//! `BadCollapseId`, the payload (`PayloadEmpty`, `PayloadTooLarge` 413), then `Unregistered`
//! (410) for a token marked so.
//!
//! Apple documents no reason for a payload that is not a JSON object; the stand-in answers
//! `PayloadEmpty` for it (the closest of Apple's reasons, and what a client treats the same
//! way). Not here: certificate authentication, `DeviceTokenNotForTopic` (no token is bound to
//! a topic), the sandbox/production split, rate limits (`TooManyRequests`).

use super::machine::{Answer, CLOCK_SKEW_S, Noted, Request, Service, State, header, percent_decode, record_of};
use http::{HeaderName, Method, StatusCode};
use serde_json::json;

/// Apple's payload limit for every push type but VoIP.
pub const PAYLOAD_BYTES_MAX: usize = 4_096;
/// Apple's payload limit for VoIP pushes; also what the listener reads at most.
pub const VOIP_PAYLOAD_BYTES_MAX: usize = 5_120;
/// A provider token older than this is `ExpiredProviderToken`.
const PROVIDER_TOKEN_AGE_S_MAX: u64 = 3_600;
/// Device tokens are 32 bytes, written as hex.
const DEVICE_TOKEN_HEX_DIGITS: usize = 64;
/// `apns-collapse-id` may hold at most this many bytes.
const COLLAPSE_ID_BYTES_MAX: usize = 64;
/// The push types Apple knows.
const PUSH_TYPES: [&str; 9] =
    ["alert", "background", "location", "voip", "complication", "fileprovider", "mdm", "liveactivity", "pushtotalk"];
/// Headers a request may carry once only.
const SINGLE_HEADERS: [&str; 7] = [
    "authorization",
    "apns-topic",
    "apns-push-type",
    "apns-priority",
    "apns-expiration",
    "apns-id",
    "apns-collapse-id",
];
/// Headers a record keeps.
const RECORDED_HEADERS: [&str; 6] =
    ["apns-topic", "apns-push-type", "apns-priority", "apns-expiration", "apns-id", "apns-collapse-id"];

/// A refusal: Apple's status and reason.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    /// 410's last-valid time, Unix milliseconds.
    timestamp: Option<u64>,
}

fn refuse(status: StatusCode, reason: &'static str) -> Refusal {
    Refusal { status, reason, timestamp: None }
}

fn bad(reason: &'static str) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, reason)
}

/// `{"reason": …[, "timestamp": …]}` with `apns-id` when one is known.
pub fn reason_answer(status: StatusCode, reason: &str, apns_id: Option<&str>, timestamp: Option<u64>) -> Answer {
    let mut body = json!({ "reason": reason });
    if let Some(t) = timestamp {
        body["timestamp"] = t.into();
    }
    let mut answer = Answer::json(status, &body);
    if let Some(id) = apns_id {
        answer.headers.push((HeaderName::from_static("apns-id"), id.into()));
    }
    answer
}

/// Answers a request on the APNs listener (paths other than `/_gateway/`).
pub fn handle(state: &mut State, request: &Request, now_ms: u64) -> Answer {
    let mut noted = Noted::default();
    for name in RECORDED_HEADERS {
        if let Some(value) = header(&request.headers, name) {
            noted.headers.insert(name.into(), value.into());
        }
    }
    let apns_id = header(&request.headers, "apns-id")
        .filter(|id| uuid_ok(id))
        .map(str::to_string)
        .unwrap_or_else(|| state.random_uuid());
    let answer = match check(state, request, now_ms, &mut noted) {
        Ok(()) => Answer {
            status: StatusCode::OK,
            headers: vec![(HeaderName::from_static("apns-id"), apns_id)],
            body: Vec::new(),
        },
        Err(r) => {
            noted.reason = Some(r.reason.into());
            reason_answer(r.status, r.reason, Some(&apns_id), r.timestamp)
        }
    };
    let record = record_of(Service::Apns, request, &answer, noted, now_ms);
    state.record(record);
    answer
}

fn check(state: &mut State, request: &Request, now_ms: u64, noted: &mut Noted) -> Result<(), Refusal> {
    let path = percent_decode(&request.path).ok_or_else(|| refuse(StatusCode::NOT_FOUND, "BadPath"))?;
    let device_token = path.strip_prefix("/3/device/").ok_or_else(|| refuse(StatusCode::NOT_FOUND, "BadPath"))?;
    if request.method != Method::POST {
        return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"));
    }
    if device_token.is_empty() {
        return Err(bad("MissingDeviceToken"));
    }
    noted.token = Some(device_token.to_string());
    if SINGLE_HEADERS.iter().any(|name| request.headers.get_all(*name).iter().count() > 1) {
        return Err(bad("DuplicateHeaders"));
    }
    let topics = authenticate(state, request, now_ms, noted)?;
    if device_token.len() != DEVICE_TOKEN_HEX_DIGITS || !device_token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("BadDeviceToken"));
    }
    let topic = header(&request.headers, "apns-topic").filter(|t| !t.is_empty()).ok_or_else(|| bad("MissingTopic"))?;
    let push_type = header(&request.headers, "apns-push-type").unwrap_or("alert");
    let allowed = topics.is_empty()
        || topics.iter().any(|t| t == topic || topic.strip_suffix(".voip").is_some_and(|bundle| bundle == t));
    if !allowed {
        return Err(bad("TopicDisallowed"));
    }
    if !PUSH_TYPES.contains(&push_type) {
        return Err(bad("InvalidPushType"));
    }
    if push_type == "voip" && !topic.ends_with(".voip") {
        // PushKit pushes go to `<bundle>.voip`; Apple refuses the bundle's own topic for them.
        return Err(bad("BadTopic"));
    }
    match header(&request.headers, "apns-priority") {
        None | Some("10" | "5" | "1") => {}
        Some(_) => return Err(bad("BadPriority")),
    }
    if push_type == "background" && header(&request.headers, "apns-priority").is_none_or(|p| p == "10") {
        // Apple: background pushes must have priority 5.
        return Err(bad("BadPriority"));
    }
    if header(&request.headers, "apns-expiration").is_some_and(|e| e.is_empty() || e.parse::<u64>().is_err()) {
        return Err(bad("BadExpirationDate"));
    }
    if header(&request.headers, "apns-id").is_some_and(|id| !uuid_ok(id)) {
        return Err(bad("BadMessageId"));
    }
    if header(&request.headers, "apns-collapse-id").is_some_and(|id| id.len() > COLLAPSE_ID_BYTES_MAX) {
        return Err(bad("BadCollapseId"));
    }
    let limit = if push_type == "voip" { VOIP_PAYLOAD_BYTES_MAX } else { PAYLOAD_BYTES_MAX };
    let payload = request.body.as_ref().ok_or_else(|| refuse(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"))?;
    if payload.len() > limit {
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"));
    }
    if !serde_json::from_slice::<serde_json::Value>(payload).is_ok_and(|v| v.is_object()) {
        return Err(bad("PayloadEmpty"));
    }
    if let Some(at) = state.unregistered.get(device_token) {
        return Err(Refusal { status: StatusCode::GONE, reason: "Unregistered", timestamp: Some(*at) });
    }
    Ok(())
}

/// Checks the provider token; returns the key's allowed topics.
fn authenticate(state: &mut State, request: &Request, now_ms: u64, noted: &mut Noted) -> Result<Vec<String>, Refusal> {
    let invalid = || refuse(StatusCode::FORBIDDEN, "InvalidProviderToken");
    let authorization = header(&request.headers, "authorization")
        .filter(|a| !a.trim().is_empty())
        .ok_or_else(|| refuse(StatusCode::FORBIDDEN, "MissingProviderToken"))?;
    let token = authorization
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(invalid)?;
    let jwt = crate::jwt::decode(token).map_err(|_| invalid())?;
    if jwt.alg() != Some("ES256") {
        return Err(invalid());
    }
    let key = jwt.kid().and_then(|kid| state.apns_key(kid)).cloned().ok_or_else(invalid)?;
    if jwt.claim_str("iss") != Some(key.team_id.as_str()) || jwt.verify_es256(&key.key).is_err() {
        return Err(invalid());
    }
    noted.sender = Some(format!("{}/{}", key.team_id, key.key_id));
    let iat = jwt.claim_u64("iat").ok_or_else(invalid)?;
    let now_s = now_ms / 1_000;
    if iat > now_s + CLOCK_SKEW_S {
        return Err(invalid());
    }
    if iat + PROVIDER_TOKEN_AGE_S_MAX < now_s {
        return Err(refuse(StatusCode::FORBIDDEN, "ExpiredProviderToken"));
    }
    let interval_ms = state.settings.apns_token_update_interval_s_min * 1_000;
    if interval_ms > 0 {
        match state.provider_tokens.get(&key.key_id) {
            Some((last, _)) if last == token => {}
            Some((_, first_seen)) if now_ms.saturating_sub(*first_seen) < interval_ms => {
                return Err(refuse(StatusCode::TOO_MANY_REQUESTS, "TooManyProviderTokenUpdates"));
            }
            _ => {
                state.provider_tokens.insert(key.key_id.clone(), (token.to_string(), now_ms));
            }
        }
    }
    Ok(key.topics)
}

/// A canonical UUID: 8-4-4-4-12 hex digits.
fn uuid_ok(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the UUID shape Apple wants for apns-id.
    #[test]
    fn uuids() {
        assert!(uuid_ok("123E4567-E89B-12D3-A456-426614174000"));
        assert!(uuid_ok("123e4567-e89b-12d3-a456-426614174000"));
        assert!(!uuid_ok("123e4567e89b12d3a456426614174000"));
        assert!(!uuid_ok("123e4567-e89b-12d3-a456-42661417400g"));
    }
}

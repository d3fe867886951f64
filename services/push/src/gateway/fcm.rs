//! The FCM side of the stand-in: Google's OAuth 2.0 token endpoint for service accounts
//! (`POST /token`, RFC 7523 JWT bearer grant) and FCM HTTP v1 (`POST
//! /v1/projects/{project}/messages:send`), validating as they do and answering in their error
//! formats: OAuth's `{"error","error_description"}` (RFC 6749 §5.2) and Google's
//! `{"error":{"code","message","status","details"}}` (google.rpc.Status, with
//! `google.firebase.fcm.v1.FcmError` and `google.rpc.BadRequest` details).
//!
//! The rules are written from Google's documentation, not shared with the client half, so a
//! client mistake is not mirrored here. Messages follow Google's wording where it is known;
//! where it is not (a reserved data key, a topic name) they say the same thing in plain words.
//!
//! Not here: notification and webpush payload validation (accepted when they are objects),
//! topic subscriptions, condition syntax, the legacy API, quotas.

use super::machine::{
    ACCESS_TOKEN_LIFETIME_S, Answer, CLOCK_SKEW_S, Grant, Noted, Request, Service, State, form_decode, header,
    percent_decode, record_of,
};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

/// The largest request body read on the FCM listener. FCM takes 4 KiB of data per message;
/// the rest of a message is its envelope.
pub const FCM_REQUEST_BYTES_MAX: usize = 64 * 1024;
/// RFC 7523's grant type.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Scopes that grant FCM HTTP v1: its own, or all of Google Cloud.
const FCM_SCOPES: [&str; 2] =
    ["https://www.googleapis.com/auth/firebase.messaging", "https://www.googleapis.com/auth/cloud-platform"];
/// Google refuses assertions valid for longer than an hour.
const ASSERTION_LIFETIME_S_MAX: u64 = 3_600;
/// FCM's limit on a message's data (keys and values).
const DATA_BYTES_MAX: usize = 4_096;
/// FCM keeps messages at most four weeks.
const TTL_S_MAX: u64 = 28 * 24 * 3_600;
/// Longest registration token accepted (real ones are ~160 characters).
const REGISTRATION_TOKEN_BYTES_MAX: usize = 4_096;
/// Google's wording for a bad `iat`/`exp`.
const TIMEFRAME: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable \
                         timeframe. Check your iat and exp values in the JWT claim.";

/// Answers a request on the FCM listener (paths other than `/_gateway/`).
pub fn handle(state: &mut State, request: &Request, now_ms: u64) -> Answer {
    let path = percent_decode(&request.path).unwrap_or_default();
    if path == "/token" {
        let mut noted = Noted::default();
        let answer = token(state, request, now_ms, &mut noted).unwrap_or_else(|r| r.answer(&mut noted));
        let record = record_of(Service::FcmToken, request, &answer, noted, now_ms);
        state.record(record);
        return answer;
    }
    if let Some(project) = path.strip_prefix("/v1/projects/").and_then(|p| p.strip_suffix("/messages:send"))
        && !project.is_empty()
        && !project.contains('/')
    {
        let mut noted = Noted::default();
        noted.headers.insert("project".into(), project.into());
        let answer = send(state, request, project, now_ms, &mut noted).unwrap_or_else(|r| r.answer(&mut noted));
        let record = record_of(Service::Fcm, request, &answer, noted, now_ms);
        state.record(record);
        return answer;
    }
    not_found()
}

/// Google's 404 for a path no API serves.
pub fn not_found() -> Answer {
    FcmRefusal::new(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found.").answer(&mut Noted::default())
}

// ---- OAuth token endpoint ----

/// A refused token request: RFC 6749 §5.2's error object.
struct OAuthRefusal {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthRefusal {
    fn grant(description: impl Into<String>) -> OAuthRefusal {
        OAuthRefusal { status: StatusCode::BAD_REQUEST, error: "invalid_grant", description: description.into() }
    }

    fn answer(self, noted: &mut Noted) -> Answer {
        noted.reason = Some(format!("{}: {}", self.error, self.description));
        Answer::json(self.status, &json!({ "error": self.error, "error_description": self.description }))
    }
}

fn token(state: &mut State, request: &Request, now_ms: u64, noted: &mut Noted) -> Result<Answer, OAuthRefusal> {
    let invalid_request = |description: &str| OAuthRefusal {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        description: description.into(),
    };
    if request.method != Method::POST {
        return Err(OAuthRefusal { status: StatusCode::METHOD_NOT_ALLOWED, ..invalid_request("Invalid HTTP method") });
    }
    let Some(body) = &request.body else {
        return Err(invalid_request(&format!(
            "Request payload size exceeds the limit: {FCM_REQUEST_BYTES_MAX} bytes."
        )));
    };
    let form_type = header(&request.headers, "content-type")
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(invalid_request("Bad Request: expected application/x-www-form-urlencoded"));
    }
    let form = std::str::from_utf8(body).ok().and_then(form_decode).ok_or_else(|| invalid_request("Bad Request"))?;
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    match field("grant_type") {
        None => return Err(invalid_request("Missing required parameter: grant_type")),
        Some(JWT_BEARER) => {}
        Some(other) => {
            return Err(OAuthRefusal {
                status: StatusCode::BAD_REQUEST,
                error: "unsupported_grant_type",
                description: format!("Invalid grant_type: {other}"),
            });
        }
    }
    let assertion = field("assertion").ok_or_else(|| invalid_request("Missing required parameter: assertion"))?;
    let jwt = crate::jwt::decode(assertion).map_err(|e| OAuthRefusal::grant(format!("Invalid JWT: {e}")))?;
    if jwt.alg() != Some("RS256") {
        return Err(OAuthRefusal::grant(format!("Invalid JWT: unsupported algorithm {:?}; expected RS256", jwt.alg())));
    }
    let account = jwt
        .claim_str("iss")
        .and_then(|iss| state.fcm_account(iss))
        .cloned()
        .ok_or_else(|| OAuthRefusal::grant("Invalid grant: account not found"))?;
    noted.sender = Some(account.client_email.clone());
    let kid_mismatch = matches!((jwt.kid(), &account.private_key_id), (Some(kid), Some(id)) if kid != id);
    if kid_mismatch || jwt.verify_rs256(&account.key).is_err() {
        return Err(OAuthRefusal::grant("Invalid JWT Signature."));
    }
    let audience = format!("https://{}/token", request.authority.as_deref().unwrap_or_default());
    if jwt.claim_str("aud") != Some(audience.as_str()) {
        return Err(OAuthRefusal::grant(format!(
            "Invalid JWT: Failed audience check. The right audience is {audience}"
        )));
    }
    let now_s = now_ms / 1_000;
    let timely = match (jwt.claim_u64("iat"), jwt.claim_u64("exp")) {
        (Some(iat), Some(exp)) => {
            exp > iat
                && exp - iat <= ASSERTION_LIFETIME_S_MAX
                && iat <= now_s + CLOCK_SKEW_S
                && exp + CLOCK_SKEW_S > now_s
        }
        _ => false,
    };
    if !timely {
        return Err(OAuthRefusal::grant(TIMEFRAME));
    }
    let scopes: Vec<&str> = jwt.claim_str("scope").unwrap_or_default().split_whitespace().collect();
    if scopes.is_empty() {
        return Err(OAuthRefusal {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_scope",
            description: "Empty or missing scope not allowed.".into(),
        });
    }
    if !scopes.iter().any(|s| FCM_SCOPES.contains(s)) {
        return Err(OAuthRefusal {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_scope",
            description: "Invalid OAuth scope or ID token audience provided.".into(),
        });
    }
    let access_token = format!("ya29.stand-in.{}", state.random_token(32));
    let grant = Grant {
        client_email: account.client_email,
        project_id: account.project_id,
        expires_at_ms: now_ms + ACCESS_TOKEN_LIFETIME_S * 1_000,
        issued_at_ms: now_ms,
    };
    state.grant(access_token.clone(), grant, now_ms);
    Ok(Answer::json(
        StatusCode::OK,
        &json!({ "access_token": access_token, "expires_in": ACCESS_TOKEN_LIFETIME_S, "token_type": "Bearer" }),
    ))
}

// ---- messages:send ----

/// A refused send: google.rpc.Status with FCM's details.
struct FcmRefusal {
    status: StatusCode,
    grpc: &'static str,
    message: String,
    /// FcmError.errorCode, when FCM names one.
    error_code: Option<&'static str>,
    /// The field a google.rpc.BadRequest violation names.
    field: Option<String>,
}

impl FcmRefusal {
    fn new(status: StatusCode, grpc: &'static str, message: impl Into<String>) -> FcmRefusal {
        FcmRefusal { status, grpc, message: message.into(), error_code: None, field: None }
    }

    /// 400 INVALID_ARGUMENT, errorCode INVALID_ARGUMENT.
    fn invalid(message: impl Into<String>, field: Option<&str>) -> FcmRefusal {
        FcmRefusal {
            status: StatusCode::BAD_REQUEST,
            grpc: "INVALID_ARGUMENT",
            message: message.into(),
            error_code: Some("INVALID_ARGUMENT"),
            field: field.map(str::to_string),
        }
    }

    /// Protobuf JSON's refusal of a field the message type does not have.
    fn unknown(name: &str, at: &str) -> FcmRefusal {
        let place = if at.is_empty() { String::new() } else { format!(" at '{at}'") };
        FcmRefusal::invalid(
            format!("Invalid JSON payload received. Unknown name \"{name}\"{place}: Cannot find field."),
            Some(at),
        )
    }

    /// Protobuf JSON's refusal of a value of the wrong type.
    fn bad_value(at: &str, type_name: &str, value: &Value) -> FcmRefusal {
        FcmRefusal::invalid(format!("Invalid value at '{at}' ({type_name}), {value}"), Some(at))
    }

    fn answer(self, noted: &mut Noted) -> Answer {
        let mut details = Vec::new();
        if let Some(code) = self.error_code {
            details.push(json!({ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code }));
        }
        if let Some(field) = &self.field {
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{ "field": field, "description": self.message }],
            }));
        }
        noted.reason = Some(format!("{} {}", self.grpc, self.error_code.unwrap_or_default()).trim().to_string());
        let mut error = json!({ "code": self.status.as_u16(), "message": self.message, "status": self.grpc });
        if !details.is_empty() {
            error["details"] = Value::Array(details);
        }
        Answer::json(self.status, &json!({ "error": error }))
    }
}

fn send(
    state: &mut State,
    request: &Request,
    project: &str,
    now_ms: u64,
    noted: &mut Noted,
) -> Result<Answer, FcmRefusal> {
    if request.method != Method::POST {
        return Err(FcmRefusal::new(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found."));
    }
    let Some(authorization) = header(&request.headers, "authorization") else {
        return Err(FcmRefusal::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login \
             cookie or other valid authentication credential.",
        ));
    };
    let token = authorization
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let grant =
        token.and_then(|t| state.grants.get(t)).filter(|g| g.expires_at_ms > now_ms).cloned().ok_or_else(|| {
            FcmRefusal::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or \
             other valid authentication credential.",
            )
        })?;
    noted.sender = Some(grant.client_email.clone());
    if grant.project_id != project {
        return Err(FcmRefusal::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!(
                "Permission 'cloudmessaging.messages.create' denied on resource \
                 '//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."
            ),
        ));
    }
    let Some(body) = &request.body else {
        return Err(FcmRefusal::invalid(
            format!("Request payload size exceeds the limit: {FCM_REQUEST_BYTES_MAX} bytes."),
            None,
        ));
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        FcmRefusal::invalid(format!("Invalid JSON payload received. Unexpected token. ({e})"), Some(""))
    })?;
    let valid = validate(&value)?;
    noted.token = valid.token.clone();
    if let Some(token) = &valid.token
        && state.unregistered.contains_key(token)
    {
        return Err(FcmRefusal {
            error_code: Some("UNREGISTERED"),
            ..FcmRefusal::new(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found.")
        });
    }
    let name = if valid.validate_only {
        format!("projects/{project}/messages/fake_message_id")
    } else {
        state.messages_sent += 1;
        format!("projects/{project}/messages/{}", state.messages_sent)
    };
    Ok(Answer::json(StatusCode::OK, &json!({ "name": name })))
}

/// What a valid request asks.
struct Valid {
    token: Option<String>,
    validate_only: bool,
}

const MESSAGE_FIELDS: [&str; 11] = [
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "fcmOptions",
    "token",
    "topic",
    "condition",
];
const ANDROID_FIELDS: [&str; 12] = [
    "collapse_key",
    "collapseKey",
    "priority",
    "ttl",
    "restricted_package_name",
    "restrictedPackageName",
    "data",
    "notification",
    "fcm_options",
    "fcmOptions",
    "direct_boot_ok",
    "directBootOk",
];

/// The `SendMessageRequest` rules FCM applies before it accepts a message.
fn validate(body: &Value) -> Result<Valid, FcmRefusal> {
    let top = body
        .as_object()
        .ok_or_else(|| FcmRefusal::invalid("Invalid JSON payload received. Expected an object.", Some("")))?;
    if let Some(name) = top.keys().find(|k| !matches!(k.as_str(), "message" | "validate_only" | "validateOnly")) {
        return Err(FcmRefusal::unknown(name, ""));
    }
    let validate_only = match top.get("validate_only").or_else(|| top.get("validateOnly")) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(FcmRefusal::bad_value("validate_only", "TYPE_BOOL", v)),
    };
    let message = match top.get("message") {
        None | Some(Value::Null) => {
            return Err(FcmRefusal::invalid("Request contains an invalid argument.", Some("message")));
        }
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(FcmRefusal::bad_value("message", "type.googleapis.com/google.firebase.fcm.v1.Message", v));
        }
    };
    if let Some(name) = message.keys().find(|k| !MESSAGE_FIELDS.contains(&k.as_str())) {
        return Err(FcmRefusal::unknown(name, "message"));
    }
    let targets: Vec<&str> =
        ["token", "topic", "condition"].into_iter().filter(|f| message.get(*f).is_some_and(|v| !v.is_null())).collect();
    let token = match targets.as_slice() {
        [] => return Err(FcmRefusal::invalid("Recipient of the message is not set.", None)),
        [_, second, ..] => {
            return Err(FcmRefusal::invalid(
                format!(
                    "Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set '{second}'"
                ),
                Some("message"),
            ));
        }
        ["token"] => {
            let token = string(message, "token", "message.token")?;
            let ok = (1..=REGISTRATION_TOKEN_BYTES_MAX).contains(&token.len())
                && token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b));
            if !ok {
                return Err(FcmRefusal::invalid(
                    "The registration token is not a valid FCM registration token",
                    Some("message.token"),
                ));
            }
            Some(token.to_string())
        }
        ["topic"] => {
            let topic = string(message, "topic", "message.topic")?;
            let name = topic.strip_prefix("/topics/").unwrap_or(topic);
            let ok = (1..=900).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b));
            if !ok {
                return Err(FcmRefusal::invalid(format!("Invalid topic name {topic:?}"), Some("message.topic")));
            }
            None
        }
        _ => {
            if string(message, "condition", "message.condition")?.trim().is_empty() {
                return Err(FcmRefusal::invalid("Invalid condition: it is empty", Some("message.condition")));
            }
            None
        }
    };
    for name in ["notification", "webpush", "apns", "fcm_options", "fcmOptions"] {
        if let Some(v) = message.get(name).filter(|v| !v.is_null() && !v.is_object()) {
            return Err(FcmRefusal::bad_value(&format!("message.{name}"), "TYPE_MESSAGE", v));
        }
    }
    let mut data_bytes = string_map(message.get("data"), "message.data")?;
    if let Some(android) = message.get("android").filter(|v| !v.is_null()) {
        data_bytes += validate_android(android)?;
    }
    if data_bytes > DATA_BYTES_MAX {
        return Err(FcmRefusal::invalid("Android message is too big", Some("message")));
    }
    Ok(Valid { token, validate_only })
}

/// `message.android`; returns its data's size.
fn validate_android(android: &Value) -> Result<usize, FcmRefusal> {
    let android = android.as_object().ok_or_else(|| {
        FcmRefusal::bad_value("message.android", "type.googleapis.com/google.firebase.fcm.v1.AndroidConfig", android)
    })?;
    if let Some(name) = android.keys().find(|k| !ANDROID_FIELDS.contains(&k.as_str())) {
        return Err(FcmRefusal::unknown(name, "message.android"));
    }
    if let Some(priority) = android.get("priority").filter(|v| !v.is_null())
        && !matches!(priority.as_str(), Some("normal" | "high" | "NORMAL" | "HIGH"))
    {
        return Err(FcmRefusal::bad_value(
            "message.android.priority",
            "type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority",
            priority,
        ));
    }
    if let Some(ttl) = android.get("ttl").filter(|v| !v.is_null()) {
        let seconds = ttl.as_str().and_then(duration_s).ok_or_else(|| {
            FcmRefusal::bad_value("message.android.ttl", "type.googleapis.com/google.protobuf.Duration", ttl)
        })?;
        if seconds > TTL_S_MAX {
            return Err(FcmRefusal::invalid(
                format!("Invalid value at 'message.android.ttl': at most {TTL_S_MAX}s (4 weeks)"),
                Some("message.android.ttl"),
            ));
        }
    }
    for name in ["collapse_key", "collapseKey", "restricted_package_name", "restrictedPackageName"] {
        if let Some(v) = android.get(name).filter(|v| !v.is_null() && !v.is_string()) {
            return Err(FcmRefusal::bad_value(&format!("message.android.{name}"), "TYPE_STRING", v));
        }
    }
    string_map(android.get("data"), "message.android.data")
}

/// A protobuf `Duration` in JSON: whole seconds, up to nine fractional digits, then `s`.
/// Returns the whole seconds.
fn duration_s(text: &str) -> Option<u64> {
    let number = text.strip_suffix('s')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 12 || !digits(whole) || fraction.len() > 9 || !digits(fraction) {
        return None;
    }
    if number.ends_with('.') {
        return None;
    }
    whole.parse().ok()
}

/// A `map<string, string>`: an object of strings, no reserved key. Returns its size in bytes.
fn string_map(value: Option<&Value>, at: &str) -> Result<usize, FcmRefusal> {
    let map: &Map<String, Value> = match value {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::Object(m)) => m,
        Some(v) => return Err(FcmRefusal::bad_value(at, "TYPE_MESSAGE", v)),
    };
    let mut bytes = 0;
    for (index, (key, value)) in map.iter().enumerate() {
        let Some(text) = value.as_str() else {
            return Err(FcmRefusal::bad_value(&format!("{at}[{index}].value"), "TYPE_STRING", value));
        };
        let lower = key.to_ascii_lowercase();
        let reserved = matches!(lower.as_str(), "from" | "message_type" | "notification" | "collapse_key")
            || lower.starts_with("google")
            || lower.starts_with("gcm");
        if reserved {
            return Err(FcmRefusal::invalid(format!("Invalid data payload key: {key:?} is reserved"), Some(at)));
        }
        bytes += key.len() + text.len();
    }
    Ok(bytes)
}

fn string<'a>(object: &'a Map<String, Value>, name: &str, at: &str) -> Result<&'a str, FcmRefusal> {
    let value = &object[name];
    value.as_str().ok_or_else(|| FcmRefusal::bad_value(at, "TYPE_STRING", value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: Value) -> String {
        match validate(&body) {
            Err(r) => r.message,
            Ok(_) => panic!("accepted {body}"),
        }
    }

    // Proves the message rules FCM applies: target, types, reserved keys, ttl, size, fields.
    #[test]
    fn message_rules() {
        let ok =
            json!({"message": {"token": "t:1", "data": {"a": "b"}, "android": {"priority": "high", "ttl": "30s"}}});
        assert_eq!(validate(&ok).ok().map(|v| v.token), Some(Some("t:1".into())));
        assert_eq!(refused(json!({})), "Request contains an invalid argument.");
        assert_eq!(refused(json!({"message": {}})), "Recipient of the message is not set.");
        assert!(
            refused(json!({"message": {"token": "t", "topic": "x"}})).contains("oneof field 'target' is already set")
        );
        assert_eq!(
            refused(json!({"message": {"token": "bad token"}})),
            "The registration token is not a valid FCM registration token"
        );
        assert!(
            refused(json!({"message": {"token": "t", "data": {"a": 1}}}))
                .starts_with("Invalid value at 'message.data[0].value' (TYPE_STRING), 1")
        );
        assert!(refused(json!({"message": {"token": "t", "data": {"from": "x"}}})).contains("reserved"));
        assert!(refused(json!({"message": {"token": "t", "android": {"ttl": "30"}}})).contains("message.android.ttl"));
        assert!(refused(json!({"message": {"token": "t", "android": {"ttl": "-1s"}}})).contains("message.android.ttl"));
        assert!(refused(json!({"message": {"token": "t", "android": {"ttl": "2419201s"}}})).contains("at most"));
        assert!(refused(json!({"message": {"token": "t", "android": {"priority": "urgent"}}})).contains("priority"));
        assert!(
            refused(json!({"message": {"token": "t", "androidx": {}}}))
                .contains("Unknown name \"androidx\" at 'message'")
        );
        assert!(refused(json!({"message": {"token": "t"}, "extra": 1})).contains("Unknown name \"extra\""));
        assert_eq!(
            refused(json!({"message": {"token": "t", "data": {"k": "v".repeat(DATA_BYTES_MAX)}}})),
            "Android message is too big"
        );
        assert!(
            validate(&json!({"message": {"topic": "/topics/news", "android": {"ttl": "3.5s"}}, "validate_only": true}))
                .is_ok_and(|v| v.validate_only && v.token.is_none())
        );
    }

    // Proves the Duration grammar.
    #[test]
    fn durations() {
        assert_eq!(duration_s("0s"), Some(0));
        assert_eq!(duration_s("3.000000001s"), Some(3));
        for bad in ["", "s", "3", "3.s", ".5s", "3.0000000001s", "1e3s", "-1s", "3 s"] {
            assert_eq!(duration_s(bad), None, "{bad}");
        }
    }
}

//! FCM HTTP v1, sans-IO: a service account's OAuth 2.0 access token (RFC 7523 JWT bearer
//! grant, RS256 assertion, Google's "Using OAuth 2.0 for server to server applications"), the
//! `messages:send` request of a data-only, high-priority message to one registration token,
//! and what each answer means ([`Outcome`]).
//!
//! A wake-up is data-only on purpose: the app decides what to show, and a ringing call's
//! details (who calls) stay out of Google's notification path; `android.priority: high` is
//! what lets FCM wake a dozing device (FCM "Set and manage Android message priority").
//!
//! Not here: notification messages, topics and conditions, the legacy HTTP API, Google's
//! metadata-server credentials, domain-wide delegation (`sub`).

use super::{BuildError, CredentialError, Outcome, origin, read_bounded, retry_after};
use ring::signature::RsaKeyPair;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Where FCM HTTP v1 lives; the gateway stand-in's URL replaces it in tests.
pub const FCM_ENDPOINT: &str = "https://fcm.googleapis.com";
/// Google's token URI, used when a service-account JSON names none.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The OAuth scope FCM HTTP v1 asks for.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The RFC 7523 grant type of a JWT assertion.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime of an assertion: the longest Google accepts (`exp - iat` at most an hour).
pub const ASSERTION_LIFETIME_S: u64 = 3_600;
/// An access token is replaced this long before it expires, so no send races its expiry.
pub const ACCESS_TOKEN_MARGIN_S: u64 = 300;
/// The largest service-account JSON read (Google's are ~2.3 KiB).
pub const SERVICE_ACCOUNT_BYTES_MAX: usize = 64 * 1024;
/// FCM keeps a message at most four weeks (AndroidConfig.ttl).
pub const FCM_TTL_S_MAX: u64 = 28 * 24 * 3_600;
/// FCM's limit on a message's data (keys and values, UTF-8).
pub const FCM_DATA_BYTES_MAX: usize = 4_096;

/// A Google service account, as its JSON key file describes it.
#[derive(Clone)]
pub struct ServiceAccount {
    /// The Firebase project messages are sent in (`/v1/projects/{project_id}/…`).
    pub project_id: String,
    /// The assertion's `iss`.
    pub client_email: String,
    /// Sent as the assertion's `kid` when the file names it.
    pub private_key_id: Option<String>,
    /// Where assertions are exchanged, and their `aud`.
    pub token_uri: http::Uri,
    key: Arc<RsaKeyPair>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ServiceAccountJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    project_id: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    client_email: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccount {
    /// Reads a service-account JSON key file (`"type": "service_account"`).
    pub fn from_json(json: &[u8]) -> Result<ServiceAccount, CredentialError> {
        let file: ServiceAccountJson =
            serde_json::from_slice(json).map_err(|e| CredentialError::Json(e.to_string()))?;
        if file.kind.as_deref().is_some_and(|k| k != "service_account") {
            return Err(CredentialError::Json(format!("type {:?} is not service_account", file.kind)));
        }
        let required =
            |value: Option<String>, name| value.filter(|v| !v.trim().is_empty()).ok_or(CredentialError::Field(name));
        let project_id = required(file.project_id, "project_id")?;
        if !project_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
            return Err(CredentialError::Json(format!("project_id {project_id:?} is not a project ID")));
        }
        let token_uri = file.token_uri.unwrap_or_else(|| GOOGLE_TOKEN_URI.into());
        let parsed: http::Uri = token_uri.parse().map_err(|_| CredentialError::TokenUri(token_uri.clone()))?;
        if parsed.scheme_str() != Some("https") || parsed.host().is_none() {
            return Err(CredentialError::TokenUri(token_uri));
        }
        Ok(ServiceAccount {
            project_id,
            client_email: required(file.client_email, "client_email")?,
            private_key_id: file.private_key_id.filter(|k| !k.is_empty()),
            token_uri: parsed,
            key: Arc::new(crate::keys::rsa_signing_key(&required(file.private_key, "private_key")?)?),
        })
    }

    /// Reads the JSON key file at `path`.
    pub fn read(path: &Path) -> Result<ServiceAccount, CredentialError> {
        ServiceAccount::from_json(&read_bounded(path, SERVICE_ACCOUNT_BYTES_MAX)?)
    }

    /// The RS256 assertion for the token endpoint, valid from `now_unix_s` for
    /// [`ASSERTION_LIFETIME_S`].
    pub fn assertion(&self, now_unix_s: u64) -> Result<String, CredentialError> {
        let claims = json!({
            "iss": self.client_email,
            "scope": FCM_SCOPE,
            "aud": self.token_uri.to_string(),
            "iat": now_unix_s,
            "exp": now_unix_s + ASSERTION_LIFETIME_S,
        });
        Ok(crate::jwt::sign_rs256(&self.key, self.private_key_id.as_deref(), &claims)?)
    }

    /// `POST token_uri` exchanging a new assertion for an access token.
    pub fn token_request(&self, now_unix_s: u64) -> Result<http::Request<Vec<u8>>, CredentialError> {
        let body = format!("grant_type={}&assertion={}", form_encode(JWT_BEARER_GRANT), self.assertion(now_unix_s)?);
        Ok(http::Request::post(self.token_uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.into_bytes())
            .expect("a parsed URI and constant headers make a request"))
    }
}

/// `application/x-www-form-urlencoded` for a value: unreserved characters kept, the rest `%XX`.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An OAuth access token and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// Sent as `Authorization: Bearer <value>`.
    pub value: String,
    /// When Google stops accepting it: the answer's time plus `expires_in`.
    pub expires_at_unix_s: u64,
}

/// The token endpoint's answer: the token, or what to do instead ([`Outcome::Retry`] when
/// Google is overloaded, [`Outcome::Fatal`] when it refuses the assertion).
pub fn token_outcome(response: &http::Response<Vec<u8>>, now_unix_s: u64) -> Result<AccessToken, Outcome> {
    #[derive(Deserialize)]
    struct Granted {
        access_token: String,
        expires_in: u64,
    }
    #[derive(Deserialize)]
    struct Refused {
        error: Option<String>,
        error_description: Option<String>,
    }
    let status = response.status();
    if status.is_success() {
        return match serde_json::from_slice::<Granted>(response.body()) {
            Ok(g) if !g.access_token.is_empty() => {
                Ok(AccessToken { value: g.access_token, expires_at_unix_s: now_unix_s.saturating_add(g.expires_in) })
            }
            _ => Err(Outcome::Fatal { reason: "token endpoint: 200 without an access_token".into() }),
        };
    }
    if status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(Outcome::Retry {
            after: retry_after(response.headers()),
            reason: format!("token endpoint: {status}"),
        });
    }
    let refused = serde_json::from_slice::<Refused>(response.body()).ok();
    let (error, description) = refused.map_or((None, None), |r| (r.error, r.error_description));
    Err(Outcome::Fatal {
        reason: format!(
            "token endpoint refused the assertion: {status} {}: {}",
            error.unwrap_or_default(),
            description.unwrap_or_default()
        ),
    })
}

/// The access token in use, kept until [`ACCESS_TOKEN_MARGIN_S`] before it expires.
#[derive(Debug, Default)]
pub struct AccessTokenCache {
    token: Option<AccessToken>,
}

impl AccessTokenCache {
    /// The cached token while it has more than the margin left.
    pub fn get(&self, now_unix_s: u64) -> Option<&str> {
        self.token
            .as_ref()
            .filter(|t| now_unix_s.saturating_add(ACCESS_TOKEN_MARGIN_S) < t.expires_at_unix_s)
            .map(|t| t.value.as_str())
    }

    /// Keeps a token just received.
    pub fn put(&mut self, token: AccessToken) {
        self.token = Some(token);
    }

    /// Forgets the token (FCM refused it).
    pub fn clear(&mut self) {
        self.token = None;
    }
}

/// A data-only, high-priority message to one registration token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmPush {
    /// The registration token (RFC 8599 `pn-prid`).
    pub token: String,
    /// The app's data; values are strings in FCM.
    pub data: BTreeMap<String, String>,
    /// How long FCM keeps trying: a call's wake-up is worthless once the call stops ringing.
    /// Whole seconds; `0` means now or never.
    pub ttl: Duration,
}

/// Whether FCM reserves a data key ("from", "message_type", "notification", or a word
/// starting with "google" or "gcm", FCM "Data messages").
pub fn reserved_data_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    matches!(lower.as_str(), "from" | "message_type" | "notification" | "collapse_key")
        || lower.starts_with("google")
        || lower.starts_with("gcm")
}

/// `POST {endpoint}/v1/projects/{project_id}/messages:send` for `push`.
pub fn send_request(
    endpoint: &str,
    project_id: &str,
    access_token: &str,
    push: &FcmPush,
) -> Result<http::Request<Vec<u8>>, BuildError> {
    let authority = origin(endpoint)?;
    if push.token.is_empty() {
        return Err(BuildError::NoToken);
    }
    if let Some(key) = push.data.keys().find(|k| reserved_data_key(k)) {
        return Err(BuildError::ReservedKey(key.clone()));
    }
    let ttl_s = push.ttl.as_secs();
    if ttl_s > FCM_TTL_S_MAX {
        return Err(BuildError::Ttl(ttl_s, FCM_TTL_S_MAX));
    }
    let data_bytes: usize = push.data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if data_bytes > FCM_DATA_BYTES_MAX {
        return Err(BuildError::TooLarge(data_bytes, FCM_DATA_BYTES_MAX));
    }
    let body = json!({
        "message": {
            "token": push.token,
            "data": push.data,
            "android": { "priority": "high", "ttl": format!("{ttl_s}s") },
        }
    });
    let uri = format!("https://{authority}/v1/projects/{project_id}/messages:send");
    let bearer = format!("Bearer {access_token}");
    http::Request::post(uri)
        .header(http::header::AUTHORIZATION, bearer)
        .header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(body.to_string().into_bytes())
        .map_err(|_| BuildError::Header("authorization or path", project_id.into()))
}

/// What an answer to `messages:send` means.
pub fn send_outcome(response: &http::Response<Vec<u8>>) -> Outcome {
    let status = response.status();
    let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    if status.is_success() {
        let id = body.get("name").and_then(Value::as_str).unwrap_or_default();
        return Outcome::Delivered { id: id.into() };
    }
    let error = body.get("error");
    let text = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str).unwrap_or_default().to_string();
    let (grpc_status, message) = (text("status"), text("message"));
    let error_code = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|d| d.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with("fcm.v1.FcmError")))
        .find_map(|d| d.get("errorCode").and_then(Value::as_str))
        .unwrap_or_default()
        .to_string();
    let reason = format!("{} {grpc_status} {error_code}: {message}", status.as_u16());
    let bad_token = status == http::StatusCode::BAD_REQUEST && message.contains("registration token");
    if error_code == "UNREGISTERED" || status == http::StatusCode::NOT_FOUND || bad_token {
        Outcome::Unregistered { reason }
    } else if status == http::StatusCode::UNAUTHORIZED {
        Outcome::Reauthenticate { reason }
    } else if status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Outcome::Retry { after: retry_after(response.headers()), reason }
    } else {
        Outcome::Fatal { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account_json(private_key: &str, token_uri: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": "pbx-test",
            "private_key_id": "k1",
            "private_key": private_key,
            "client_email": "pbx@pbx-test.iam.gserviceaccount.com",
            "token_uri": token_uri,
        })
        .to_string()
    }

    fn response(status: u16, body: &str) -> http::Response<Vec<u8>> {
        http::Response::builder().status(status).body(body.as_bytes().to_vec()).unwrap()
    }

    // Proves the assertion carries Google's claims for the time given and verifies with the
    // account's public key, and the token request is the RFC 7523 form.
    #[test]
    fn assertion_and_token_request() {
        let (private, public) = crate::keys::generate_rsa().unwrap();
        let account =
            ServiceAccount::from_json(account_json(&private, "https://127.0.0.1:9/token").as_bytes()).unwrap();
        let jwt = crate::jwt::decode(&account.assertion(1_000).unwrap()).unwrap();
        jwt.verify_rs256(&crate::keys::RsaPublicKey::from_pem(&public).unwrap()).unwrap();
        assert_eq!((jwt.alg(), jwt.kid()), (Some("RS256"), Some("k1")));
        assert_eq!(jwt.claim_str("iss"), Some("pbx@pbx-test.iam.gserviceaccount.com"));
        assert_eq!(
            (jwt.claim_str("scope"), jwt.claim_str("aud")),
            (Some(FCM_SCOPE), Some("https://127.0.0.1:9/token"))
        );
        assert_eq!((jwt.claim_u64("iat"), jwt.claim_u64("exp")), (Some(1_000), Some(4_600)));
        let request = account.token_request(1_000).unwrap();
        let body = String::from_utf8(request.body().clone()).unwrap();
        assert!(body.starts_with("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=ey"));
        assert_eq!(request.uri(), "https://127.0.0.1:9/token");
    }

    // Proves service-account files missing what the flow needs are refused by field.
    #[test]
    fn bad_service_accounts_are_named() {
        let (private, _) = crate::keys::generate_rsa().unwrap();
        let good: Value = serde_json::from_str(&account_json(&private, GOOGLE_TOKEN_URI)).unwrap();
        let without = |field: &str| {
            let mut v = good.clone();
            v.as_object_mut().unwrap().remove(field);
            ServiceAccount::from_json(v.to_string().as_bytes()).unwrap_err().to_string()
        };
        assert!(without("client_email").contains("client_email"));
        assert!(without("private_key").contains("private_key"));
        assert_eq!(
            ServiceAccount::from_json(without_uri(&good).as_bytes()).unwrap().token_uri,
            GOOGLE_TOKEN_URI,
            "no token_uri: Google's"
        );
        let mut http_uri = good.clone();
        http_uri["token_uri"] = "http://x/token".into();
        assert!(matches!(
            ServiceAccount::from_json(http_uri.to_string().as_bytes()),
            Err(CredentialError::TokenUri(_))
        ));
        assert!(matches!(ServiceAccount::from_json(b"{"), Err(CredentialError::Json(_))));
    }

    fn without_uri(v: &Value) -> String {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("token_uri");
        v.to_string()
    }

    // Proves the token cache hands the token out until five minutes before it expires.
    #[test]
    fn access_token_cache_margin() {
        let mut cache = AccessTokenCache::default();
        assert_eq!(cache.get(0), None);
        let answer = response(200, r#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#);
        cache.put(token_outcome(&answer, 1_000).unwrap());
        assert_eq!(cache.get(1_000 + 3_599 - ACCESS_TOKEN_MARGIN_S - 1), Some("ya29.x"));
        assert_eq!(cache.get(1_000 + 3_599 - ACCESS_TOKEN_MARGIN_S), None);
        cache.clear();
        assert_eq!(cache.get(1_000), None);
    }

    // Proves token endpoint errors become Fatal (refused) or Retry (overloaded).
    #[test]
    fn token_errors() {
        let refused = token_outcome(
            &response(400, r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#),
            0,
        );
        assert!(matches!(refused, Err(Outcome::Fatal { reason })
                if reason.contains("invalid_grant: Invalid JWT Signature.")));
        assert!(matches!(token_outcome(&response(503, ""), 0), Err(Outcome::Retry { .. })));
        assert!(matches!(token_outcome(&response(200, "{}"), 0), Err(Outcome::Fatal { .. })));
    }

    // Proves the send request's shape: data-only, high priority, ttl in seconds, bearer token.
    #[test]
    fn send_request_shape() {
        let push = FcmPush {
            token: "tok:1".into(),
            data: [("call".into(), "c1".into())].into(),
            ttl: Duration::from_secs(30),
        };
        let request = send_request("https://127.0.0.1:8441", "pbx-test", "ya29.x", &push).unwrap();
        assert_eq!(request.uri(), "https://127.0.0.1:8441/v1/projects/pbx-test/messages:send");
        assert_eq!(request.headers()["authorization"], "Bearer ya29.x");
        let body: Value = serde_json::from_slice(request.body()).unwrap();
        assert_eq!(
            body,
            json!({"message": {
                "token": "tok:1", "data": {"call": "c1"}, "android": {"priority": "high", "ttl": "30s"}
            }})
        );
        let reserved = FcmPush { data: [("google.x".into(), "1".into())].into(), ..push.clone() };
        assert_eq!(
            send_request(FCM_ENDPOINT, "p", "t", &reserved).unwrap_err(),
            BuildError::ReservedKey("google.x".into())
        );
        let long = FcmPush { ttl: Duration::from_secs(FCM_TTL_S_MAX + 1), ..push.clone() };
        assert!(matches!(send_request(FCM_ENDPOINT, "p", "t", &long), Err(BuildError::Ttl(..))));
        let big = FcmPush { data: [("k".into(), "v".repeat(FCM_DATA_BYTES_MAX))].into(), ..push };
        assert!(matches!(send_request(FCM_ENDPOINT, "p", "t", &big), Err(BuildError::TooLarge(..))));
    }

    // Proves FCM's answers map to the outcomes the dispatch acts on.
    #[test]
    fn send_outcomes() {
        let err = |code: u16, status: &str, error_code: &str, message: &str| {
            let details = if error_code.is_empty() {
                json!([])
            } else {
                json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}])
            };
            let body = json!({"error": {"code": code, "message": message, "status": status, "details": details}});
            send_outcome(&response(code, &body.to_string()))
        };
        assert_eq!(
            send_outcome(&response(200, r#"{"name":"projects/p/messages/1"}"#)),
            Outcome::Delivered { id: "projects/p/messages/1".into() }
        );
        assert!(matches!(
            err(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
            Outcome::Unregistered { .. }
        ));
        let bad_token = err(
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
        );
        assert!(matches!(bad_token, Outcome::Unregistered { .. }));
        assert!(matches!(
            err(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'"),
            Outcome::Fatal { .. }
        ));
        assert!(matches!(
            err(401, "UNAUTHENTICATED", "", "Request had invalid authentication credentials."),
            Outcome::Reauthenticate { .. }
        ));
        assert!(matches!(err(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "x"), Outcome::Fatal { .. }));
        assert!(matches!(err(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "x"), Outcome::Retry { .. }));
        assert!(matches!(err(503, "UNAVAILABLE", "UNAVAILABLE", "x"), Outcome::Retry { .. }));
        assert!(matches!(send_outcome(&response(502, "<html>")), Outcome::Retry { .. }));
    }
}

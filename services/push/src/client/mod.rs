//! The client half: what pbx's push dispatch calls to wake a phone through FCM or APNs
//! (RFC 8599 §6: the proxy sends the push before it forwards the INVITE).
//!
//! Sans-IO first ([`fcm`], [`apns`]): functions that build the HTTP requests as values and
//! classify the answers into an [`Outcome`], given the time as Unix seconds; they never read a
//! clock, a socket or a random source (ring's signing draws its own nonces). Then a thin async
//! shell ([`sender`]): one HTTP/2 connection per origin over tokio-rustls (ring), which caches
//! the OAuth access token and the APNs provider token and retries once when the service says
//! the credentials went stale.
//!
//! Calling contract: `now_unix_s` never goes backwards between calls on one cache; a caller
//! that acts on [`Outcome::Retry`] waits at least `after`; [`Outcome::Unregistered`] means the
//! binding's push parameters are dead (drop them; the phone re-registers with new ones).
//!
//! Not here: topics and conditions, notification (alert) payloads beyond a data map,
//! Web Push, APNs certificate authentication (tokens only), the dispatch actor's own retry
//! schedule and per-binding state.

pub mod apns;
pub mod fcm;
pub mod sender;

use std::time::Duration;

/// Wait before a retry when the service names none: FCM's guidance is at least 10 s with
/// exponential backoff; the caller's backoff grows from here.
pub const RETRY_AFTER_S_DEFAULT: u64 = 10;
/// The longest `Retry-After` honoured: a ringing phone will not wait longer anyway.
pub const RETRY_AFTER_S_MAX: u64 = 3_600;

/// What a push service's answer means for the push and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted. `id`: FCM's message name, or APNs' `apns-id`.
    Delivered { id: String },
    /// The token is dead or was never valid: drop it (FCM `UNREGISTERED`, an invalid
    /// registration token; APNs 410, `BadDeviceToken`).
    Unregistered { reason: String },
    /// Overloaded or failing on the service's side: try again after `after`.
    Retry { after: Duration, reason: String },
    /// The credentials were refused as stale (FCM 401; APNs `ExpiredProviderToken`,
    /// `InvalidProviderToken`): make new ones and send once more. The senders do this
    /// themselves and report a second refusal as [`Outcome::Fatal`].
    Reauthenticate { reason: String },
    /// Retrying will not help: the request or the credentials are wrong.
    Fatal { reason: String },
}

/// Why a request could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("endpoint {0:?}: {1}")]
    Endpoint(String, &'static str),
    #[error("the push names no token")]
    NoToken,
    #[error("the target has no VoIP token (pn-prid without :voip)")]
    NoVoipToken,
    #[error("the target has no user-notification token (pn-prid without :remote)")]
    NoRemoteToken,
    #[error("data key {0:?} is reserved by the service")]
    ReservedKey(String),
    #[error("ttl {0} s is longer than the service keeps a message ({1} s)")]
    Ttl(u64, u64),
    #[error("payload of {0} bytes is larger than the service takes ({1})")]
    TooLarge(usize, usize),
    #[error("header {0} cannot hold {1:?}")]
    Header(&'static str, String),
}

/// Why credentials could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{0} is larger than {1} bytes")]
    TooLarge(String, usize),
    #[error("service account JSON: {0}")]
    Json(String),
    #[error("service account JSON: {0} is missing or empty")]
    Field(&'static str),
    #[error("token_uri {0:?} is not an https URL")]
    TokenUri(String),
    #[error("team id or key id {0:?}: 1-32 letters and digits")]
    Id(String),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Jwt(#[from] crate::jwt::JwtError),
}

/// A file read whole, refused past `bytes_max` (credentials are small; a huge file is a
/// mistake, not a key).
fn read_bounded(path: &std::path::Path, bytes_max: usize) -> Result<Vec<u8>, CredentialError> {
    use std::io::Read;
    let read_error = |error| CredentialError::Read { path: path.display().to_string(), error };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(bytes_max as u64 + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() > bytes_max {
        return Err(CredentialError::TooLarge(path.display().to_string(), bytes_max));
    }
    Ok(bytes)
}

/// `Retry-After` in seconds (RFC 9110 §10.2.3), capped; an HTTP-date or nothing gives the
/// default.
fn retry_after(headers: &http::HeaderMap) -> Duration {
    let seconds = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(RETRY_AFTER_S_DEFAULT);
    Duration::from_secs(seconds.min(RETRY_AFTER_S_MAX))
}

/// An `https://host[:port]` origin (no path), as both services' endpoints are given.
fn origin(endpoint: &str) -> Result<http::uri::Authority, BuildError> {
    let uri: http::Uri = endpoint.parse().map_err(|_| BuildError::Endpoint(endpoint.into(), "not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(BuildError::Endpoint(endpoint.into(), "not https"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(BuildError::Endpoint(endpoint.into(), "an origin has no path"));
    }
    uri.authority().cloned().ok_or_else(|| BuildError::Endpoint(endpoint.into(), "no host"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves Retry-After is read as seconds, capped, and defaulted for dates and garbage.
    #[test]
    fn retry_after_is_bounded() {
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&h)
        };
        assert_eq!(with("30"), Duration::from_secs(30));
        assert_eq!(with("99999999"), Duration::from_secs(RETRY_AFTER_S_MAX));
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), Duration::from_secs(RETRY_AFTER_S_DEFAULT));
        assert_eq!(retry_after(&http::HeaderMap::new()), Duration::from_secs(RETRY_AFTER_S_DEFAULT));
    }

    // Proves endpoints must be https origins.
    #[test]
    fn endpoints_are_https_origins() {
        assert_eq!(origin("https://api.push.apple.com").unwrap().as_str(), "api.push.apple.com");
        assert_eq!(origin("https://127.0.0.1:8442/").unwrap().as_str(), "127.0.0.1:8442");
        assert!(origin("http://api.push.apple.com").is_err());
        assert!(origin("https://fcm.googleapis.com/v1").is_err());
        assert!(origin("not a url").is_err());
    }
}

//! The HTTP kernel both HTTP servers (the node's admin API, the licence service) build on: the
//! JSON error body, the bearer-token check and the one time format. It imports no subsystem
//! and registers no route: the servers compose their routes themselves.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use pbx_actors::Timestamp;

/// UTC, milliseconds, `Z`: one fixed shape that sorts as text.
pub fn rfc3339(t: Timestamp) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_micros()) * 1_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        // Past the year 9999: no clock of ours gives such a time; show the raw count, not a lie.
        .unwrap_or_else(|| format!("{}µs", t.as_micros()))
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message.into() }))
}

/// Whether the request carries `Authorization: Bearer <token>`. Constant-time comparison, so
/// the token cannot be guessed byte by byte from timings.
pub fn bearer_matches(req: &HttpRequest, token: &str) -> bool {
    let Some(value) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ") else { return false };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the output shape: UTC with milliseconds, and the raw count past the year 9999.
    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        assert_eq!(rfc3339(Timestamp(1_714_564_800_250_999)), "2024-05-01T12:00:00.250Z");
        assert_eq!(rfc3339(Timestamp::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(Timestamp(u64::MAX)), format!("{}µs", u64::MAX));
    }

    // Proves only `Bearer <the token>` passes: another token, another scheme or none is refused.
    #[test]
    fn only_the_bearer_token_passes() {
        let req = |value: Option<&str>| {
            let mut r = actix_web::test::TestRequest::default();
            if let Some(v) = value {
                r = r.insert_header(("authorization", v));
            }
            r.to_http_request()
        };
        assert!(bearer_matches(&req(Some("Bearer abc")), "abc"));
        assert!(!bearer_matches(&req(Some("Bearer abd")), "abc"));
        assert!(!bearer_matches(&req(Some("Bearer ab")), "abc"));
        assert!(!bearer_matches(&req(Some("Basic abc")), "abc"));
        assert!(!bearer_matches(&req(None), "abc"));
    }
}

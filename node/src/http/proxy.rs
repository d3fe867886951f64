//! `/api/v1/proxy`: the softphone proxy this PBX dials out to (`[proxy]`): its link, debug
//! mode, and one-time provisioning of a softphone through it.

use super::{ApiState, error, require_auth, rfc3339};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use pbx_actors::Timestamp;
use serde::Deserialize;

fn handle(state: &ApiState) -> Result<&std::sync::Arc<crate::proxy_link::ProxyHandle>, Box<HttpResponse>> {
    state
        .proxy
        .as_ref()
        .ok_or_else(|| Box::new(error(StatusCode::NOT_FOUND, "no softphone proxy configured ([proxy])")))
}

/// `GET /api/v1/proxy`: the link and how many softphones are connected through it.
async fn status(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    match handle(&state) {
        Ok(proxy) => HttpResponse::Ok().json(proxy.status()),
        Err(response) => *response,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DebugIn {
    /// Days debug mode lasts; absent: the proxy's default (4 weeks).
    days: Option<u32>,
}

/// Debug mode's end as the API shows it.
fn until_json(until: Option<u64>) -> serde_json::Value {
    serde_json::json!({ "debug_until": until.map(|s| rfc3339(Timestamp(s.saturating_mul(1_000_000)))) })
}

/// `PUT /api/v1/proxy/debug`: debug mode on (the proxy records the destinations of its
/// softphones' calls, kept 4 weeks); it ends by itself.
async fn debug_on(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<DebugIn>) -> HttpResponse {
    require_auth!(req, state);
    let proxy = match handle(&state) {
        Ok(p) => p,
        Err(response) => return *response,
    };
    if body.days.is_some_and(|d| !(1..=365).contains(&d)) {
        return error(StatusCode::BAD_REQUEST, "days: 1–365");
    }
    match proxy.debug_mode(Some(body.days.unwrap_or(0))).await {
        Ok(until) => HttpResponse::Ok().json(until_json(until)),
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// `DELETE /api/v1/proxy/debug`: debug mode off now.
async fn debug_off(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    let proxy = match handle(&state) {
        Ok(p) => p,
        Err(response) => return *response,
    };
    match proxy.debug_mode(None).await {
        Ok(until) => HttpResponse::Ok().json(until_json(until)),
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionIn {
    extension: String,
}

/// `POST /api/v1/proxy/provisioning`: hands the proxy the configuration of a softphone for
/// `extension` (server, user name; never the password), to be fetched once with the enrolment
/// code this answers with: `GET https://<proxy>:8444/provision/<code>`.
async fn provision(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<ProvisionIn>) -> HttpResponse {
    require_auth!(req, state);
    let proxy = match handle(&state) {
        Ok(p) => p,
        Err(response) => return *response,
    };
    let known = state.storage.load().map(|s| s.extensions.iter().any(|e| e.number == body.extension));
    match known {
        Ok(true) => {}
        Ok(false) => return error(StatusCode::NOT_FOUND, format!("no extension {:?}", body.extension)),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("storage: {e}")),
    }
    let code = enrolment_code();
    let document = serde_json::json!({
        "user": body.extension,
        "auth_user": body.extension,
        "transport": "tls",
        "media_encryption": "sdes",
        "pbx_serial": state.serial,
    })
    .to_string();
    match proxy.provision(code.clone(), document).await {
        Ok(()) => {
            HttpResponse::Created().json(serde_json::json!({ "code": code, "path": format!("/provision/{code}") }))
        }
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// 26 characters of base32 from the OS: 130 bits, typed or scanned once.
fn enrolment_code() -> String {
    use rand::TryRngCore;
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bytes = [0u8; 26];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("the OS random source");
    bytes.iter().map(|b| ALPHABET[usize::from(b % 32)] as char).collect()
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/proxy", web::get().to(status))
        .route("/api/v1/proxy/debug", web::put().to(debug_on))
        .route("/api/v1/proxy/debug", web::delete().to(debug_off))
        .route("/api/v1/proxy/provisioning", web::post().to(provision));
}

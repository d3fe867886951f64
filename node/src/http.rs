//! The admin HTTP API (actix-web). Handlers only turn requests into actor messages and the
//! answers into JSON; the registrar owns the data and its rules.
//!
//! Every `/api/v1` route needs `Authorization: Bearer <DATA_DIR/admin.token>`. `/healthz` and
//! `/metrics` are open: they carry no personal data (counts only) and listen on 127.0.0.1 by
//! default, as Kamailio's and Asterisk's Prometheus modules do. Passwords are accepted on
//! POST and never returned.

use crate::clock::SystemClock;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use pbx_actors::Timestamp;
use pbx_actors::endpoint::EndpointMsg;
use pbx_actors::registrar::RegistrarMsg;
use pbx_actors::time::Clock;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a handler waits for an actor before answering 503.
const ACTOR_CALL_TIMEOUT_MS: u64 = 5_000;
/// Largest JSON body the API accepts.
const JSON_BODY_BYTES_MAX: usize = 16 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub token: String,
    pub registrar: ActorRef<RegistrarMsg>,
    pub endpoint: ActorRef<EndpointMsg>,
    pub prometheus: PrometheusHandle,
    pub clock: SystemClock,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewExtension {
    number: String,
    password: String,
    #[serde(default)]
    display_name: String,
}

#[derive(Serialize)]
struct ExtensionOut {
    number: String,
    display_name: String,
    registrations: usize,
}

#[derive(Serialize)]
struct RegistrationOut {
    aor: String,
    contact: String,
    expires_in_s: u64,
    source: String,
    transport: &'static str,
    user_agent: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message.into() }))
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn authorized(req: &HttpRequest, state: &ApiState) -> bool {
    let Some(value) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ") else { return false };
    let (a, b) = (given.trim().as_bytes(), state.token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

macro_rules! require_auth {
    ($req:expr, $state:expr) => {
        if !authorized(&$req, &$state) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (see DATA_DIR/admin.token)");
        }
    };
}

async fn ask<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    msg: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
) -> Result<T, HttpResponse> {
    match actor.call(msg, Some(Duration::from_millis(ACTOR_CALL_TIMEOUT_MS))).await {
        Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
        _ => Err(error(StatusCode::SERVICE_UNAVAILABLE, "the registrar did not answer in time")),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    // The registrar keeps `pbx_registrations_active` current itself; blocks lapse with time,
    // so that gauge is read when asked for.
    if let Ok(stats) = ask(&state.registrar, RegistrarMsg::Stats).await {
        metrics::gauge!("pbx_blocked_sources").set(stats.blocked_sources as f64);
    }
    if let Ok(n) = ask(&state.endpoint, EndpointMsg::Transactions).await {
        metrics::gauge!("pbx_sip_transactions").set(n as f64);
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.prometheus.render())
}

/// The directory as the API shows it: each extension with its count of live registrations.
async fn directory(state: &ApiState) -> Result<Vec<ExtensionOut>, HttpResponse> {
    let extensions = ask(&state.registrar, RegistrarMsg::ListExtensions).await?;
    let bindings = ask(&state.registrar, RegistrarMsg::ListBindings).await?;
    Ok(extensions
        .into_iter()
        .map(|e| ExtensionOut {
            registrations: bindings.iter().filter(|b| b.aor == e.number).count(),
            number: e.number,
            display_name: e.display_name,
        })
        .collect())
}

async fn list_extensions(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    match directory(&state).await {
        Ok(out) => HttpResponse::Ok().json(out),
        Err(r) => r,
    }
}

async fn get_extension(req: HttpRequest, state: web::Data<ApiState>, number: web::Path<String>) -> HttpResponse {
    require_auth!(req, state);
    match directory(&state).await.map(|d| d.into_iter().find(|e| e.number == *number)) {
        Ok(Some(e)) => HttpResponse::Ok().json(e),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no extension {number:?}")),
        Err(r) => r,
    }
}

async fn put_extension(req: HttpRequest, state: web::Data<ApiState>, body: web::Bytes) -> HttpResponse {
    require_auth!(req, state);
    let new: NewExtension = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let (number, display_name) = (new.number.clone(), new.display_name.clone());
    let result = ask(&state.registrar, |reply| RegistrarMsg::PutExtension {
        number: new.number,
        password: new.password,
        display_name: new.display_name,
        reply,
    })
    .await;
    match result {
        Ok(Ok(())) => {
            tracing::info!(%number, "extension saved via API");
            HttpResponse::Created().json(ExtensionOut { number, display_name, registrations: 0 })
        }
        Ok(Err(reason)) => error(StatusCode::BAD_REQUEST, reason),
        Err(r) => r,
    }
}

async fn delete_extension(req: HttpRequest, state: web::Data<ApiState>, number: web::Path<String>) -> HttpResponse {
    require_auth!(req, state);
    let number = number.into_inner();
    match ask(&state.registrar, |reply| RegistrarMsg::RemoveExtension { number: number.clone(), reply }).await {
        Ok(Ok(())) => {
            tracing::info!(%number, "extension removed via API");
            HttpResponse::NoContent().finish()
        }
        Ok(Err(reason)) if reason.contains("no such") => error(StatusCode::NOT_FOUND, reason),
        Ok(Err(reason)) => error(StatusCode::BAD_REQUEST, reason),
        Err(r) => r,
    }
}

async fn registrations(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    let bindings = match ask(&state.registrar, RegistrarMsg::ListBindings).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now: Timestamp = state.clock.now();
    let out: Vec<RegistrationOut> = bindings
        .into_iter()
        .map(|b| RegistrationOut {
            expires_in_s: b.expires_at.saturating_since(now).as_secs(),
            aor: b.aor,
            contact: b.contact,
            source: b.source.to_string(),
            transport: b.transport.via_name(),
            user_agent: b.user_agent,
        })
        .collect();
    HttpResponse::Ok().json(out)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(JSON_BODY_BYTES_MAX))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics))
        .route("/api/v1/extensions", web::get().to(list_extensions))
        .route("/api/v1/extensions", web::post().to(put_extension))
        .route("/api/v1/extensions/{number}", web::get().to(get_extension))
        .route("/api/v1/extensions/{number}", web::delete().to(delete_extension))
        .route("/api/v1/registrations", web::get().to(registrations));
}

//! The admin HTTP API (actix-web). Handlers only turn requests into actor messages (or, for
//! call records, storage reads) and the answers into JSON; the actors own the data and its rules.
//!
//! Every `/api/v1` route needs `Authorization: Bearer <DATA_DIR/admin.token>`. `/healthz`,
//! `/readyz` and `/metrics` are open: they carry no personal data (counts and actor names only)
//! and listen on 127.0.0.1 by default, as Kamailio's and Asterisk's Prometheus modules do.
//! Passwords are accepted on POST and never returned.
//!
//! `/healthz` is liveness: the process serves HTTP. `/readyz` is readiness: 200 only when every
//! core actor answers a ping within a second and the node knows a Raft leader, else 503 with
//! the reasons (`crate::supervisor`). `POST /api/v1/debug/panic/{actor}` exists only when the
//! process was started with `PBX_TEST_HOOKS=1` (docs/SECURITY.md).
//!
//! `GET /api/v1/cdrs` pages through call detail records newest first (by end time), the order
//! a call history is read in; `GET /api/v1/calls` shows the calls in progress. Their JSON field
//! names are part of the API (README, "Admin API"): times are RFC 3339 UTC strings with
//! milliseconds, durations whole seconds, ids strings (they exceed JavaScript's 2^53).

use crate::storage::{CDR_PAGE_MAX, CdrCursor, Storage};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use pbx_actors::Timestamp;
use pbx_actors::cdr::{ActiveCall, Cdr, Disposition, MediaCounters};
use pbx_actors::endpoint::EndpointMsg;
use pbx_actors::licence::{LicenceView, RedeemError, VoucherMsg};
use pbx_actors::registrar::{ChangeError, Forwarding, RegistrarMsg, forwarding};
use pbx_actors::shell::Current;
use pbx_actors::store::StoreError;
use pbx_actors::time::Clock;
use pbx_host::clock::SystemClock;
pub(crate) use pbx_host::http::{bearer_matches, error, rfc3339};

mod conferences;
mod proxy;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long a handler waits for an actor before answering 503.
const ACTOR_CALL_TIMEOUT_MS: u64 = 5_000;
/// Largest JSON body the API accepts.
const JSON_BODY_BYTES_MAX: usize = 16 * 1024;
/// CDRs per page when the request does not say.
const CDR_PAGE_DEFAULT: usize = 50;
/// Longest `extension` filter: a bound on the request, not a format check (a callee is whatever
/// was dialled).
const EXTENSION_FILTER_CHARS_MAX: usize = 64;

/// The calls in progress, as the calls subsystem sees them. A future, so the real view can ask
/// its actor without blocking a worker.
pub trait CallsView: Send + Sync {
    /// `None` when the calls subsystem did not answer.
    fn active(&self) -> Pin<Box<dyn Future<Output = Option<Vec<ActiveCall>>> + Send + '_>>;
}

#[derive(Clone)]
pub struct ApiState {
    pub token: String,
    pub registrar: Current<RegistrarMsg>,
    /// Every shard of the SIP endpoint.
    pub endpoint: pbx_actors::endpoint::actor::EndpointSink,
    pub prometheus: PrometheusHandle,
    pub clock: SystemClock,
    /// Read directly for CDR queries: redb readers do not wait for the writers.
    pub storage: Arc<Storage>,
    pub calls: Arc<dyn CallsView>,
    /// The licence in force; `None` when no licence service is configured (nothing gated).
    pub licence: Option<LicenceView>,
    pub vouchers: Option<Current<VoucherMsg>>,
    pub serial: String,
    /// Where subject requests are replicated to every node (one, on an appliance).
    pub cluster: crate::cluster::Replication,
    /// Every core actor, for `/readyz` and the test hook.
    pub core: crate::supervisor::CoreActors,
    /// `PBX_TEST_HOOKS=1` at start: the panic hook answers (its route exists only then).
    pub test_hooks: bool,
    /// Where SIP is served, for `GET /api/v1/sip`.
    pub sip: Arc<SipInfo>,
    /// The softphone proxy's link; `None` without `[proxy]`.
    pub proxy: Option<Arc<crate::proxy_link::ProxyHandle>>,
}

/// `GET /api/v1/sip`: the listeners, and the TLS certificate a phone may pin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SipInfo {
    pub udp: std::net::SocketAddr,
    pub tcp: std::net::SocketAddr,
    /// `None`: `sip_tls_listen = "off"`.
    pub tls: Option<SipTlsInfo>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SipTlsInfo {
    pub listen: std::net::SocketAddr,
    /// The PEM file served (the chain's first certificate is the one fingerprinted).
    pub certificate: String,
    /// SHA-256 of the certificate, `AB:CD:…` (what `openssl x509 -fingerprint -sha256` prints).
    pub fingerprint_sha256: String,
    /// Made by pbx at first start, not given by the operator.
    pub self_signed: bool,
}

/// The SIP listeners and the TLS certificate's fingerprint.
async fn sip_info(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    HttpResponse::Ok().json(&*state.sip)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoucherIn {
    code: String,
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

/// Both legs' RTP counters, named rather than indexed.
#[derive(Serialize)]
struct MediaOut {
    caller: MediaCounters,
    callee: MediaCounters,
}

#[derive(Serialize)]
pub(crate) struct CdrOut {
    id: String,
    call_id: String,
    caller: String,
    callee: String,
    start: String,
    answer: Option<String>,
    end: String,
    /// Answer to end: the billed time; 0 when not answered.
    duration_s: u64,
    /// Start to end, ringing included.
    total_s: u64,
    disposition: &'static str,
    /// The SIP status of a `rejected` call.
    code: Option<u16>,
    /// What went wrong in a `failed` call.
    reason: Option<String>,
    hangup: Option<&'static str>,
    codec_caller: Option<String>,
    codec_callee: Option<String>,
    media: MediaOut,
    /// The record this one goes on from (the call was transferred), as a decimal string.
    follows: Option<String>,
    /// The transfer that ended this record: who transferred, to what number, and the record
    /// the call went on in.
    transfer: Option<TransferOut>,
}

#[derive(Serialize)]
struct TransferOut {
    by: String,
    to: String,
    next: String,
}

impl From<Cdr> for CdrOut {
    fn from(c: Cdr) -> CdrOut {
        let (code, reason) = match &c.disposition {
            Disposition::Rejected { code } => (Some(*code), None),
            Disposition::Failed { reason } => (None, Some(reason.clone())),
            _ => (None, None),
        };
        CdrOut {
            id: c.id.to_string(),
            duration_s: c.duration_s(),
            total_s: c.end.saturating_since(c.start).as_secs(),
            disposition: c.disposition.name(),
            code,
            reason,
            hangup: c.hangup.map(|h| h.name()),
            start: rfc3339(c.start),
            answer: c.answer.map(rfc3339),
            end: rfc3339(c.end),
            media: MediaOut { caller: c.media[0], callee: c.media[1] },
            call_id: c.call_id,
            caller: c.caller,
            callee: c.callee,
            codec_caller: c.codec_caller,
            codec_callee: c.codec_callee,
            follows: c.follows.map(|id| id.to_string()),
            transfer: c.transfer.map(|t| TransferOut { by: t.by, to: t.to, next: t.next.to_string() }),
        }
    }
}

#[derive(Serialize)]
struct CdrPageOut {
    cdrs: Vec<CdrOut>,
    /// Pass as `cursor` for the next (older) page; `null` when there is none.
    next: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct ActiveCallOut {
    id: String,
    call_id: String,
    caller: String,
    callee: String,
    start: String,
    answer: Option<String>,
    state: String,
    /// Since the answer, as of this response; 0 while ringing.
    duration_s: u64,
    codec_caller: Option<String>,
    codec_callee: Option<String>,
    media: MediaOut,
}

impl ActiveCallOut {
    pub(crate) fn new(c: ActiveCall, now: Timestamp) -> ActiveCallOut {
        ActiveCallOut {
            id: c.id.to_string(),
            start: rfc3339(c.start),
            answer: c.answer.map(rfc3339),
            duration_s: c.answer.map_or(0, |a| now.saturating_since(a).as_secs()),
            media: MediaOut { caller: c.media[0], callee: c.media[1] },
            call_id: c.call_id,
            caller: c.caller,
            callee: c.callee,
            state: c.state,
            codec_caller: c.codec_caller,
            codec_callee: c.codec_callee,
        }
    }
}

/// A checked `GET /api/v1/cdrs` query string.
#[derive(Debug, PartialEq)]
struct CdrQuery {
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    extension: Option<String>,
    cursor: Option<CdrCursor>,
    limit: usize,
}

/// A refused query parameter: its name and why.
type BadParameter = (&'static str, String);

fn parse_cdr_query(query: &str) -> Result<CdrQuery, BadParameter> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|e| ("query", format!("query: not a URL-encoded query string ({e})")))?
        .into_inner();
    let mut q = CdrQuery { from: None, to: None, extension: None, cursor: None, limit: CDR_PAGE_DEFAULT };
    let mut seen: Vec<&'static str> = Vec::new();
    for (key, value) in pairs {
        let name = match key.as_str() {
            "from" => "from",
            "to" => "to",
            "extension" => "extension",
            "cursor" => "cursor",
            "limit" => "limit",
            _ => {
                let reason = format!("{key:?}: unknown parameter (known: from, to, extension, cursor, limit)");
                return Err(("query", reason));
            }
        };
        if seen.contains(&name) {
            return Err((name, format!("{name}: given twice")));
        }
        seen.push(name);
        let bad = |reason: String| (name, format!("{name}: {reason}"));
        match name {
            "from" => q.from = Some(parse_time(&value).map_err(bad)?),
            "to" => q.to = Some(parse_time(&value).map_err(bad)?),
            "extension" => {
                if value.is_empty() || value.chars().count() > EXTENSION_FILTER_CHARS_MAX {
                    return Err(bad(format!("must be 1–{EXTENSION_FILTER_CHARS_MAX} characters")));
                }
                q.extension = Some(value);
            }
            "cursor" => q.cursor = Some(value.parse().map_err(bad)?),
            _ => {
                q.limit = match value.parse::<usize>() {
                    Ok(n) if (1..=CDR_PAGE_MAX).contains(&n) => n,
                    _ => return Err(bad(format!("{value:?} is not a number from 1 to {CDR_PAGE_MAX}"))),
                }
            }
        }
    }
    if let (Some(from), Some(to)) = (q.from, q.to)
        && to <= from
    {
        return Err(("to", "to: must be later than from".into()));
    }
    Ok(q)
}

/// RFC 3339 (`2024-05-01T12:00:00Z`, any offset, optional fraction) or Unix seconds, from 1970
/// to the end of the year 9999 (the last time RFC 3339 can write).
fn parse_time(s: &str) -> Result<Timestamp, String> {
    const UNIX_S_MAX: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let out_of_range = || format!("{s:?} is outside 1970 to the year 9999");
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u64>() {
            Ok(secs) if secs <= UNIX_S_MAX => Ok(Timestamp::from_secs(secs)),
            _ => Err(out_of_range()),
        };
    }
    // An unencoded `+02:00` arrives as ` 02:00`: in a query string `+` means a space.
    let text = match s.char_indices().rev().nth(5) {
        Some((i, ' ')) => format!("{}+{}", &s[..i], &s[i + 1..]),
        _ => s.to_string(),
    };
    let t = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time (2024-05-01T12:00:00Z) nor Unix seconds"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000).map(Timestamp).map_err(|_| out_of_range())
}

/// A voucher not redeemed, by why: 400 for a code that is none, 404 for an unknown voucher, 409
/// for one redeemed before, 429 when the service rate-limits, 503 when too many redeems are in
/// flight, 502 when the service failed or answered nonsense. The body's `kind` names the case.
pub(crate) fn voucher_refused(refused: RedeemError) -> HttpResponse {
    use pbx_actors::licence::LicenceServiceError as Service;
    let (status, kind) = match &refused {
        RedeemError::InvalidCode(_) => (StatusCode::BAD_REQUEST, "invalid_code"),
        RedeemError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        RedeemError::Unreadable(_) => (StatusCode::BAD_GATEWAY, "unreadable_answer"),
        RedeemError::Service(Service::AlreadyRedeemed) => (StatusCode::CONFLICT, "already_redeemed"),
        RedeemError::Service(Service::UnknownVoucher) => (StatusCode::NOT_FOUND, "unknown_voucher"),
        // The service refuses guesses beyond its per-source and per-serial limits.
        RedeemError::Service(Service::RateLimited(_)) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        RedeemError::Service(Service::UnknownSerial) => (StatusCode::BAD_GATEWAY, "unknown_serial"),
        RedeemError::Service(Service::Transport(_) | Service::NoAnswer(_)) => (StatusCode::BAD_GATEWAY, "unreachable"),
        RedeemError::Service(Service::Tls(_)) => (StatusCode::BAD_GATEWAY, "tls"),
        RedeemError::Service(Service::Status { .. } | Service::BadDocument(_)) => {
            (StatusCode::BAD_GATEWAY, "service_error")
        }
    };
    HttpResponse::build(status).json(serde_json::json!({ "error": refused.to_string(), "kind": kind }))
}

/// A change replicated through the cluster that did not happen: 503, with Retry-After when the
/// cluster has no quorum (the same request may succeed later).
pub(crate) fn not_replicated(failed: &StoreError, message: String) -> HttpResponse {
    let mut response = HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE);
    if let Some(retry_after_s) = failed.retry_after_s() {
        response.insert_header(("Retry-After", retry_after_s.to_string()));
    }
    response.json(serde_json::json!({ "error": message }))
}

/// An admin change the registrar did not make, by why: 400 for an invalid request, 404 for an
/// unknown extension, 503 with Retry-After when the cluster has no quorum (the same request
/// may succeed later), 500 for a storage fault.
pub(crate) fn change_refused(refused: ChangeError) -> HttpResponse {
    let status = match &refused {
        ChangeError::Invalid(_) => StatusCode::BAD_REQUEST,
        ChangeError::NoSuchExtension => StatusCode::NOT_FOUND,
        ChangeError::Store(e) if e.retry_after_s().is_some() => StatusCode::SERVICE_UNAVAILABLE,
        ChangeError::Store(_) | ChangeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = HttpResponse::build(status);
    if let ChangeError::Store(e) = &refused
        && let Some(retry_after_s) = e.retry_after_s()
    {
        response.insert_header(("Retry-After", retry_after_s.to_string()));
    }
    response.json(serde_json::json!({ "error": refused.to_string() }))
}

/// Whether the request carries the admin token.
pub(crate) fn authorized(req: &HttpRequest, state: &ApiState) -> bool {
    bearer_matches(req, &state.token)
}

/// Answers 401 unless the request carries the admin token (the privacy routes use it too).
macro_rules! require_auth {
    ($req:expr, $state:expr) => {
        if !$crate::http::authorized(&$req, &$state) {
            return $crate::http::error(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (see DATA_DIR/admin.token)",
            );
        }
    };
}
pub(crate) use require_auth;

pub(crate) async fn ask<M: ractor::Message, T: Send + 'static>(
    actor: &Current<M>,
    msg: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
) -> Result<T, HttpResponse> {
    let Some(actor) = actor.get() else {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "the actor is not running (it is being restarted)"));
    };
    match actor.call(msg, Some(Duration::from_millis(ACTOR_CALL_TIMEOUT_MS))).await {
        Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
        _ => Err(error(StatusCode::SERVICE_UNAVAILABLE, "the actor did not answer in time")),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// 200 `{"ready":true,"reasons":[]}`, or 503 with what is not ready.
pub(crate) fn readiness(reasons: Vec<String>) -> HttpResponse {
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    HttpResponse::build(status).json(serde_json::json!({ "ready": reasons.is_empty(), "reasons": reasons }))
}

async fn readyz(state: web::Data<ApiState>, cluster: web::Data<crate::cluster::ClusterApi>) -> HttpResponse {
    let wait = Duration::from_millis(crate::supervisor::READY_ANSWER_MS);
    let answers = state.core.answers(wait).await;
    readiness(crate::supervisor::unready_reasons(&answers, cluster.replica.leader().is_some()))
}

/// A witness runs no SIP actors: it is ready when it knows a leader.
pub(crate) async fn readyz_witness(cluster: web::Data<crate::cluster::ClusterApi>) -> HttpResponse {
    readiness(crate::supervisor::unready_reasons(&[], cluster.replica.leader().is_some()))
}

/// The test hook: `actor` panics (see `CoreActors::inject_panic` for the names).
async fn inject_panic(req: HttpRequest, state: web::Data<ApiState>, actor: web::Path<String>) -> HttpResponse {
    require_auth!(req, state);
    if !state.test_hooks {
        return error(StatusCode::NOT_FOUND, "test hooks are off");
    }
    tracing::warn!(actor = %actor, "test hook: injecting a panic");
    match state.core.inject_panic(&actor).await {
        Ok(()) => HttpResponse::Accepted().json(serde_json::json!({ "panicked": actor.as_str() })),
        Err(reason) => error(StatusCode::NOT_FOUND, reason),
    }
}

async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    // The registrar keeps `pbx_registrations_active` current itself; blocks lapse with time,
    // so that gauge is read when asked for.
    if let Ok(stats) = ask(&state.registrar, RegistrarMsg::Stats).await {
        metrics::gauge!("pbx_blocked_sources").set(stats.blocked_sources as f64);
    }
    // Summed over the endpoint's shards; left as it was when one does not answer.
    let mut transactions = Some(0);
    for shard in state.endpoint.shards() {
        let n = ask(shard, EndpointMsg::Transactions).await.ok();
        transactions = transactions.zip(n).map(|(sum, n)| sum + n);
    }
    if let Some(n) = transactions {
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
    // The licence limits how many extensions exist; one that exists may always be changed,
    // and none is ever deleted for a licence.
    if let Some(licence) = &state.licence {
        let limit = licence.effective().limits.extensions;
        let existing = match ask(&state.registrar, RegistrarMsg::ListExtensions).await {
            Ok(list) => list,
            Err(r) => return r,
        };
        if !existing.iter().any(|e| e.number == number) && existing.len() >= limit as usize {
            return error(
                StatusCode::FORBIDDEN,
                format!("licence limit: {limit} extensions (there are {}); no new extension", existing.len()),
            );
        }
    }
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
        Ok(Err(refused)) => change_refused(refused),
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
        Ok(Err(refused)) => change_refused(refused),
        Err(r) => r,
    }
}

/// A forwarding as the API takes it: an omitted target is off, omitted seconds the default.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardingIn {
    #[serde(default)]
    always: Option<String>,
    #[serde(default)]
    busy: Option<String>,
    #[serde(default)]
    no_answer: Option<String>,
    #[serde(default)]
    no_answer_after_s: Option<u32>,
}

async fn get_forwarding(req: HttpRequest, state: web::Data<ApiState>, number: web::Path<String>) -> HttpResponse {
    require_auth!(req, state);
    let number = number.into_inner();
    match ask(&state.registrar, |reply| RegistrarMsg::GetForwarding { number: number.clone(), reply }).await {
        Ok(Some(forwarding)) => HttpResponse::Ok().json(forwarding),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no extension {number:?}")),
        Err(r) => r,
    }
}

async fn put_forwarding(
    req: HttpRequest,
    state: web::Data<ApiState>,
    number: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    require_auth!(req, state);
    let number = number.into_inner();
    let new: ForwardingIn = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let forwarding = Forwarding {
        always: new.always,
        busy: new.busy,
        no_answer: new.no_answer,
        no_answer_after_s: new.no_answer_after_s.unwrap_or(forwarding::NO_ANSWER_AFTER_S_DEFAULT),
    };
    let result = ask(&state.registrar, |reply| RegistrarMsg::SetForwarding {
        number: number.clone(),
        forwarding: forwarding.clone(),
        reply,
    })
    .await;
    match result {
        Ok(Ok(())) => {
            tracing::info!(%number, "call forwarding set via API");
            HttpResponse::Ok().json(forwarding)
        }
        Ok(Err(refused)) => change_refused(refused),
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

async fn cdrs(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    let q = match parse_cdr_query(req.query_string()) {
        Ok(q) => q,
        Err((parameter, message)) => {
            return HttpResponse::BadRequest().json(serde_json::json!({ "error": message, "parameter": parameter }));
        }
    };
    let storage = state.storage.clone();
    // A restricted subject's records are kept but not shown (GDPR Art. 18): only its export has them.
    let page = web::block(move || {
        let hidden = crate::storage::restricted(&storage.all_flags()?);
        storage.query_cdrs(q.from, q.to, q.extension.as_deref(), &hidden, q.cursor, q.limit)
    })
    .await;
    match page {
        Ok(Ok((cdrs, next))) => HttpResponse::Ok()
            .json(CdrPageOut { cdrs: cdrs.into_iter().map(CdrOut::from).collect(), next: next.map(|c| c.to_string()) }),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "CDR query failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "storage: the call records could not be read")
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "no worker free to read the call records"),
    }
}

async fn calls(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    let Ok(Some(active)) =
        tokio::time::timeout(Duration::from_millis(ACTOR_CALL_TIMEOUT_MS), state.calls.active()).await
    else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the calls subsystem did not answer in time");
    };
    let now = state.clock.now();
    let calls: Vec<ActiveCallOut> = active.into_iter().map(|c| ActiveCallOut::new(c, now)).collect();
    HttpResponse::Ok().json(serde_json::json!({ "calls": calls }))
}

/// The licence as this node holds it: status, the licence and unlocks, what is in force.
async fn licence(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    match &state.licence {
        Some(view) => {
            let mut out = serde_json::to_value(view.snapshot()).unwrap_or_default();
            if let Some(map) = out.as_object_mut() {
                map.insert("serial".into(), state.serial.clone().into());
                map.insert("managed".into(), true.into());
                // The node's own times as the rest of the API writes them; the signed documents'
                // `issued_at` / `valid_until` stay as signed (Unix seconds).
                for key in ["last_success", "grace_until", "next_check", "unlocks_fetched_at"] {
                    if let Some(value) = map.get_mut(key)
                        && let Some(micros) = value.as_u64()
                    {
                        *value = rfc3339(Timestamp(micros)).into();
                    }
                }
            }
            HttpResponse::Ok().json(out)
        }
        None => HttpResponse::Ok().json(serde_json::json!({
            "serial": state.serial,
            "managed": false,
            "status": "unmanaged",
            "note": "no licence service configured ([licence] server_url, public_key): nothing is gated",
        })),
    }
}

/// Redeems a voucher through the licence service; its unlocks are fetched right after.
async fn redeem_voucher(req: HttpRequest, state: web::Data<ApiState>, body: web::Bytes) -> HttpResponse {
    require_auth!(req, state);
    let input: VoucherIn = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let Some(vouchers) = &state.vouchers else {
        return error(StatusCode::CONFLICT, "no licence service configured: vouchers cannot be redeemed");
    };
    let Some(vouchers) = vouchers.get() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the voucher sync is not running");
    };
    // The service call is bounded at 60 s by the voucher shell; wait a little longer.
    let answer = vouchers.call(|reply| VoucherMsg::Redeem { code: input.code, reply }, Some(Duration::from_secs(70)));
    match answer.await {
        Ok(ractor::rpc::CallResult::Success(Ok(release_code))) => {
            tracing::info!("voucher redeemed via API");
            HttpResponse::Ok().json(serde_json::json!({ "release_code": release_code }))
        }
        Ok(ractor::rpc::CallResult::Success(Err(refused))) => voucher_refused(refused),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "the voucher sync did not answer in time"),
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(JSON_BODY_BYTES_MAX))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/api/v1/extensions", web::get().to(list_extensions))
        .route("/api/v1/extensions", web::post().to(put_extension))
        .route("/api/v1/extensions/{number}", web::get().to(get_extension))
        .route("/api/v1/extensions/{number}", web::delete().to(delete_extension))
        .route("/api/v1/extensions/{number}/forwarding", web::get().to(get_forwarding))
        .route("/api/v1/extensions/{number}/forwarding", web::put().to(put_forwarding))
        .route("/api/v1/registrations", web::get().to(registrations))
        .route("/api/v1/cdrs", web::get().to(cdrs))
        .route("/api/v1/calls", web::get().to(calls))
        .route("/api/v1/licence", web::get().to(licence))
        .route("/api/v1/vouchers", web::post().to(redeem_voucher))
        .route("/api/v1/sip", web::get().to(sip_info))
        .configure(conferences::routes)
        .configure(proxy::routes)
        .configure(cluster_routes);
}

/// Routes that exist only with `PBX_TEST_HOOKS=1` (off by default; docs/SECURITY.md).
pub fn test_hook_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/debug/panic/{actor}", web::post().to(inject_panic));
}

async fn cluster_status(
    req: actix_web::HttpRequest,
    api: Option<actix_web::web::Data<crate::cluster::ClusterApi>>,
) -> actix_web::HttpResponse {
    use actix_web::http::StatusCode;
    let Some(api) = api else { return error(StatusCode::NOT_FOUND, "not a cluster node") };
    if !bearer_matches(&req, &api.token) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (see DATA_DIR/admin.token)");
    }
    actix_web::HttpResponse::Ok().json(api.status())
}

/// `GET /api/v1/cluster` (404 on a node that is not in a cluster).
pub fn cluster_routes(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.route("/api/v1/cluster", actix_web::web::get().to(cluster_status));
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::cdr::HangupSide;
    use pbx_actors::store::StoreError;

    // Proves each refused admin change gets its own status, by type rather than by message text.
    #[test]
    fn a_refused_change_answers_by_its_kind() {
        let status = |e: ChangeError| change_refused(e).status().as_u16();
        assert_eq!(status(ChangeError::Invalid("password: too short".into())), 400);
        assert_eq!(status(ChangeError::NoSuchExtension), 404);
        assert_eq!(status(ChangeError::Store(StoreError::Disk("disk on fire".into()))), 500);
        assert_eq!(status(ChangeError::Internal("no result".into())), 500);
        let no_quorum = change_refused(ChangeError::Store(StoreError::NoQuorum { retry_after_s: 5 }));
        assert_eq!(no_quorum.status().as_u16(), 503);
        assert_eq!(no_quorum.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    }

    /// Both time forms are read; RFC 3339 offsets are honoured; the output is UTC with ms.
    #[test]
    fn times_in_and_out() {
        let t = Timestamp::from_secs(1_714_564_800); // 2024-05-01T12:00:00Z
        assert_eq!(parse_time("1714564800"), Ok(t));
        assert_eq!(parse_time("2024-05-01T12:00:00Z"), Ok(t));
        assert_eq!(parse_time("2024-05-01T14:00:00+02:00"), Ok(t));
        assert_eq!(parse_time("2024-05-01T14:00:00 02:00"), Ok(t), "a + decoded to a space");
        assert_eq!(parse_time("2024-05-01T12:00:00.250Z"), Ok(Timestamp(t.as_micros() + 250_000)));
        assert_eq!(rfc3339(Timestamp(t.as_micros() + 250_999)), "2024-05-01T12:00:00.250Z");
        assert_eq!(rfc3339(Timestamp::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_time("253402300799").map(rfc3339), Ok("9999-12-31T23:59:59.000Z".into()));
        for bad in ["", "yesterday", "2024-05-01", "2024-13-01T00:00:00Z", "-5", "1.5", "1969-12-31T23:59:59Z"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
        assert!(parse_time("253402300800").unwrap_err().contains("outside"));
        assert!(parse_time(&"9".repeat(60)).unwrap_err().contains("outside"));
    }

    /// Every parameter is read; limit defaults to 50.
    #[test]
    fn cdr_query_reads_every_parameter() {
        let q = parse_cdr_query("").unwrap();
        assert_eq!((q.from, q.to, q.extension, q.cursor, q.limit), (None, None, None, None, 50));
        let cursor = "0000000000000001000000000000000f";
        let q = parse_cdr_query(&format!(
            "from=2024-05-01T00:00:00%2B02:00&to=1714564800&extension=100&limit=500&cursor={cursor}"
        ))
        .unwrap();
        assert_eq!(q.from, Some(Timestamp::from_secs(1_714_514_400)));
        assert_eq!(q.to, Some(Timestamp::from_secs(1_714_564_800)));
        assert_eq!((q.extension.as_deref(), q.limit), (Some("100"), 500));
        assert_eq!(q.cursor.map(|c| c.to_string()).as_deref(), Some(cursor));
    }

    /// A bad parameter is refused naming it, in the message and in `parameter`.
    #[test]
    fn cdr_query_names_the_bad_parameter() {
        for (query, parameter, why) in [
            ("from=yesterday", "from", "RFC 3339"),
            ("to=2024-05-01", "to", "RFC 3339"),
            ("from=200&to=100", "to", "later than from"),
            ("from=100&to=100", "to", "later than from"),
            ("limit=0", "limit", "1 to 500"),
            ("limit=501", "limit", "1 to 500"),
            ("limit=ten", "limit", "1 to 500"),
            ("cursor=abc", "cursor", "previous page"),
            ("extension=", "extension", "1–64"),
            ("limit=5&limit=6", "limit", "twice"),
            ("extention=100", "query", "\"extention\": unknown parameter"),
        ] {
            let (name, message) = parse_cdr_query(query).unwrap_err();
            assert_eq!(name, parameter, "{query}");
            assert!(message.starts_with(parameter) || name == "query", "{query}: {message}");
            assert!(message.contains(why), "{query}: {message}");
        }
    }

    /// The CDR's JSON has the documented names and shapes (README, "Admin API").
    #[test]
    fn cdr_json_shape() {
        let mut media = [MediaCounters::default(); 2];
        media[1].lost = 3;
        let cdr = Cdr {
            id: u64::MAX,
            call_id: "abc@phone".into(),
            caller: "100".into(),
            callee: "101".into(),
            start: Timestamp::from_secs(1_714_564_800),
            answer: Some(Timestamp::from_secs(1_714_564_805)),
            end: Timestamp::from_millis(1_714_564_867_500),
            disposition: Disposition::Rejected { code: 603 },
            hangup: Some(HangupSide::Callee),
            codec_caller: Some("PCMU".into()),
            codec_callee: None,
            media,
            follows: Some(41),
            transfer: Some(pbx_actors::cdr::Transferred { by: "101".into(), to: "102".into(), next: 1 << 57 }),
        };
        let json = serde_json::to_value(CdrOut::from(cdr)).unwrap();
        let counters = serde_json::json!({
            "packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0, "lost": 0, "jitter_us": 0
        });
        let mut callee = counters.clone();
        callee["lost"] = 3.into();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "18446744073709551615",
                "call_id": "abc@phone",
                "caller": "100",
                "callee": "101",
                "start": "2024-05-01T12:00:00.000Z",
                "answer": "2024-05-01T12:00:05.000Z",
                "end": "2024-05-01T12:01:07.500Z",
                "duration_s": 62,
                "total_s": 67,
                "disposition": "rejected",
                "code": 603,
                "reason": null,
                "hangup": "callee",
                "codec_caller": "PCMU",
                "codec_callee": null,
                "media": { "caller": counters, "callee": callee },
                "follows": "41",
                "transfer": { "by": "101", "to": "102", "next": "144115188075855872" },
            })
        );
    }

    /// An active call's duration runs from its answer to now; a ringing call shows 0.
    #[test]
    fn active_call_duration_runs_from_answer() {
        let call = ActiveCall {
            id: 7,
            call_id: "c".into(),
            caller: "100".into(),
            callee: "101".into(),
            start: Timestamp::from_secs(100),
            answer: Some(Timestamp::from_secs(110)),
            state: "answered".into(),
            codec_caller: None,
            codec_callee: None,
            media: Default::default(),
        };
        let out = serde_json::to_value(ActiveCallOut::new(call.clone(), Timestamp::from_secs(145))).unwrap();
        assert_eq!(
            (out["duration_s"].as_u64(), out["state"].as_str(), out["id"].as_str()),
            (Some(35), Some("answered"), Some("7"))
        );
        let ringing = ActiveCall { answer: None, state: "ringing".into(), ..call };
        assert_eq!(
            serde_json::to_value(ActiveCallOut::new(ringing, Timestamp::from_secs(145))).unwrap()["duration_s"],
            0
        );
    }
}

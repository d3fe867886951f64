//! Subject rights (GDPR Art. 15–21), the privacy audit, the inventory and the generated notice
//! over HTTP. The CLI (`pbx privacy …`) calls these same routes.
//!
//! A subject is named by its id: an extension or any number, or an IP address
//! ([`Subject::parse`]). Every request is audited in the same transaction as its change
//! (access in its own): the right, the time, how many records, and the subject as a keyed
//! pseudonym — HMAC-SHA-256 of the id with the node's `DATA_DIR/privacy.key` — so the audit
//! can prove a request was honoured (`GET /api/v1/privacy/audit?subject=1001` recomputes it)
//! without keeping the number or address it was about.
//!
//! Erasure wins over the config file: an erased number keeps a tombstone (its pseudonym,
//! never the number, replicated with the erasure), and a `[[extensions]]` entry with a
//! tombstoned number is not applied at start but named in a warning
//! ([`config_extensions_to_apply`]). Why a tombstone rather than refusing the erasure:
//! docs/PRIVACY.md, "Erasure and the config file".

pub mod cli;

use crate::config::ExtensionDecl;
use crate::http::{ActiveCallOut, ApiState, CdrOut, ask, error, require_auth, rfc3339};
use crate::storage::{Flags, SubjectRecords, Tombstone};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use pbx_actors::privacy::reaper::Periods;
use pbx_actors::privacy::{AuditEntry, AuditEvent, INVENTORY, Right, Subject, notice};
use pbx_actors::registrar::{ChangeError, RegistrarMsg};
use pbx_actors::time::Clock;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

pub use crate::secrets::{PRIVACY_KEY_FILE, PrivacyKey};
/// Audit entries one request returns at most, and rows it reads at most.
const AUDIT_PAGE_MAX: usize = 1_000;
/// Security-log entries one request may ask for.
const SECURITY_PAGE_MAX: usize = 1_000;
const AUDIT_ROWS_MAX: usize = 100_000;
/// CDR rows the statistics read at most (newest first).
const STATISTICS_ROWS_MAX: usize = 200_000;
/// Times the start tries to learn every erasure committed so far (each try a Raft write,
/// bounded by its own timeout) before it applies the config file's extensions.
const BARRIER_TRIES_MAX: u32 = 6;

/// What the privacy routes need besides the API state: their own `web::Data`, which the
/// composer (`crate::appliance`) registers with [`routes`], so the API core knows nothing of it.
pub struct Privacy {
    key: PrivacyKey,
    pub periods: Periods,
    pub operator: crate::config::OperatorSection,
}

impl Privacy {
    /// The privacy routes' state over the node's key.
    pub fn new(key: PrivacyKey, periods: Periods, operator: crate::config::OperatorSection) -> Privacy {
        Privacy { key, periods, operator }
    }

    /// Reads (or makes) the key, see [`PrivacyKey::open`].
    pub fn open(
        data_dir: &Path,
        periods: Periods,
        operator: crate::config::OperatorSection,
    ) -> anyhow::Result<Privacy> {
        Ok(Privacy::new(PrivacyKey::open(data_dir)?, periods, operator))
    }

    /// The notice for `lang`, with this node's periods and operator.
    pub fn notice(&self, lang: notice::Lang) -> notice::Notice {
        notice::notice(lang, &operator(&self.operator), &self.periods, &pbx_actors::licence::SCHEDULE)
    }

    /// The subject as the audit names it (see [`PrivacyKey::pseudonym`]).
    pub fn pseudonym(&self, subject: &Subject) -> String {
        self.key.pseudonym(subject)
    }
}

/// The operator's details as the notice takes them.
pub fn operator(o: &crate::config::OperatorSection) -> notice::Operator {
    notice::Operator {
        name: o.name.clone(),
        address: o.address.clone(),
        email: o.email.clone(),
        phone: o.phone.clone(),
        dpo: o.dpo.clone(),
        authority: o.authority.clone(),
    }
}

/// The subject a path names, or the 400 saying why not (boxed: a response is large).
fn parse_subject(id: &str) -> Result<Subject, Box<HttpResponse>> {
    Subject::parse(id).map_err(|reason| Box::new(error(StatusCode::BAD_REQUEST, format!("subject {id:?}: {reason}"))))
}

fn not_found(subject: &Subject) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "pbx holds no personal data about {:?} (no extension, registration, call record, conference participation, push record, security-log entry or privacy flag)",
            subject.id()
        ),
    )
}

fn storage_failed(what: &str, e: impl std::fmt::Display) -> HttpResponse {
    tracing::error!(error = %e, "{what} failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("storage: {what} failed"))
}

fn audit_entry(
    state: &ApiState,
    privacy: &Privacy,
    right: Right,
    subject: &Subject,
    records: u64,
    outcome: &str,
) -> AuditEntry {
    AuditEntry {
        at: state.clock.now(),
        event: AuditEvent::SubjectRequest {
            right,
            subject: privacy.pseudonym(subject),
            records,
            outcome: outcome.into(),
        },
    }
}

/// Everything about `subject`: the file's records plus the registrar's memory (bindings not
/// yet flushed) and the calls in progress.
struct Held {
    stored: SubjectRecords,
    extension: Option<pbx_actors::registrar::ExtensionView>,
    bindings: Vec<pbx_actors::registrar::Binding>,
    calls: Vec<pbx_actors::cdr::ActiveCall>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.stored.is_empty() && self.extension.is_none() && self.bindings.is_empty() && self.calls.is_empty()
    }
}

async fn held(state: &ApiState, subject: &Subject) -> Result<Held, HttpResponse> {
    let storage = state.storage.clone();
    let s = subject.clone();
    let stored = match web::block(move || storage.subject_records(&s)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(storage_failed("reading the subject's records", e)),
        Err(_) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "no worker free to read the records")),
    };
    let extensions = ask(&state.registrar, RegistrarMsg::ListExtensions).await?;
    let bindings = ask(&state.registrar, RegistrarMsg::ListBindings).await?;
    let calls = match tokio::time::timeout(Duration::from_secs(5), state.calls.active()).await {
        Ok(Some(calls)) => calls,
        // An erasure must know whether the subject is in a call: no answer, no erasure.
        _ => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "the calls subsystem did not answer in time")),
    };
    let (extension, bindings, calls) = match subject {
        Subject::Number(n) => (
            extensions.into_iter().find(|e| e.number == *n),
            bindings.into_iter().filter(|b| b.aor == *n).collect(),
            calls.into_iter().filter(|c| c.caller == *n || c.callee == *n).collect(),
        ),
        Subject::Ip(ip) => (
            None,
            bindings.into_iter().filter(|b| b.involves(subject)).collect(),
            calls.into_iter().filter(|c| c.call_id.contains(&ip.to_string())).collect(),
        ),
    };
    Ok(Held { stored, extension, bindings, calls })
}

fn binding_json(b: &pbx_actors::registrar::Binding) -> serde_json::Value {
    json!({
        "aor": b.aor,
        "contact": b.contact,
        "source": b.source.to_string(),
        "transport": b.transport.via_name(),
        "user_agent": b.user_agent,
        "call_id": b.call_id,
        "expires_at": rfc3339(b.expires_at),
    })
}

/// A push record as the subject export shows it: all of it, the token too (it is the
/// subject's, and access covers it).
fn push_json(r: &pbx_actors::push::PushRecord) -> serde_json::Value {
    json!({
        "at": rfc3339(r.at),
        "user": r.user,
        "caller": r.caller,
        "callee": r.callee,
        "provider": r.provider,
        "device": r.device,
        "source": r.source.to_string(),
        "outcome": r.outcome,
    })
}

fn flags_json(f: &Flags) -> serde_json::Value {
    json!({
        "restricted_since": f.restricted_since.map(rfc3339),
        "objected_since": f.objected_since.map(rfc3339),
    })
}

/// The subject a path names and what is held about it; 400 for a malformed id, 404 when
/// nothing is held.
async fn known_subject(state: &ApiState, id: &str) -> Result<(Subject, Held), HttpResponse> {
    let subject = parse_subject(id).map_err(|r| *r)?;
    let held = held(state, &subject).await?;
    if held.is_empty() {
        return Err(not_found(&subject));
    }
    Ok((subject, held))
}

/// `GET /api/v1/privacy/subjects/{id}/export` — access and portability (Art. 15, 20).
async fn export(
    req: HttpRequest,
    state: web::Data<ApiState>,
    privacy: web::Data<Privacy>,
    id: web::Path<String>,
) -> HttpResponse {
    require_auth!(req, state);
    let (subject, held) = match known_subject(&state, &id).await {
        Ok(known) => known,
        Err(r) => return r,
    };
    let now = state.clock.now();
    // Memory is the registrar's current view; the file may hold a binding memory has dropped.
    let mut bindings: Vec<_> = held.bindings.iter().map(binding_json).collect();
    for b in &held.stored.bindings {
        if !held.bindings.iter().any(|m| m.aor == b.aor && m.contact == b.contact) {
            bindings.push(binding_json(b));
        }
    }
    let kind = match (&subject, held.extension.is_some() || held.stored.extension.is_some()) {
        (Subject::Ip(_), _) => "ip_address",
        (Subject::Number(_), true) => "extension",
        (Subject::Number(_), false) => "number",
    };
    let extension = held
        .extension
        .as_ref()
        .map(|e| e.display_name.clone())
        .or_else(|| held.stored.extension.as_ref().map(|e| e.display_name.clone()));
    let records = (held.stored.cdrs.len()
        + held.stored.participations.len()
        + held.stored.push_records.len()
        + held.stored.security_log.len()
        + bindings.len()
        + held.calls.len()) as u64
        + u64::from(extension.is_some());
    // The softphone proxy's records of this user name (`[proxy]`), asked over the link.
    let proxied = match (&subject, &state.proxy) {
        (Subject::Number(n), Some(proxy)) => {
            Some(proxy.export(n).await.unwrap_or_else(|reason| json!({ "error": reason })))
        }
        _ => None,
    };
    let (forwarding, logged_out) = match &subject {
        Subject::Number(n) => {
            let forwarding =
                ask(&state.registrar, |reply| RegistrarMsg::GetForwarding { number: n.clone(), reply }).await;
            let groups = ask(&state.registrar, |reply| RegistrarMsg::LoggedOutOf { member: n.clone(), reply }).await;
            (forwarding.ok().flatten(), groups.unwrap_or_default())
        }
        Subject::Ip(_) => (None, Vec::new()),
    };
    let document = json!({
        "subject": subject.id(),
        "kind": kind,
        "softphone_proxy": proxied,
        "generated_at": rfc3339(now),
        "controller": privacy.operator.name,
        "extension": extension.map(|display_name| json!({
            "number": subject.id(),
            "display_name": display_name,
            "password": "not stored; pbx keeps only digest hashes of it (MD5 and SHA-256), which are credentials and are not exported",
            "call_forwarding": forwarding,
            "ring_groups_logged_out_of": logged_out,
        })),
        "registrations": bindings,
        "cdrs": held.stored.cdrs.iter().cloned().map(CdrOut::from).collect::<Vec<_>>(),
        "conference_participations": held.stored.participations.iter().map(|p| json!({
            "room": p.room,
            "number": p.number,
            "arrived": rfc3339(p.arrived),
            "joined": p.joined.map(rfc3339),
            "left": rfc3339(p.left),
        })).collect::<Vec<_>>(),
        "push_records": held.stored.push_records.iter().map(push_json).collect::<Vec<_>>(),
        "calls_in_progress": held.calls.iter().cloned().map(|c| ActiveCallOut::new(c, now)).collect::<Vec<_>>(),
        "security_log": held.stored.security_log.iter().map(security_json).collect::<Vec<_>>(),
        "privacy_flags": held.stored.flags.as_ref().map(flags_json),
        "inventory": "GET /api/v1/privacy/inventory lists every category pbx keeps, why, and for how long",
    });
    let storage = state.storage.clone();
    let entry = audit_entry(&state, &privacy, Right::Access, &subject, records, "exported");
    if let Ok(Err(e)) = web::block(move || storage.put_audit(&entry)).await {
        return storage_failed("auditing the export", e);
    }
    tracing::info!(kind, records, "subject data exported");
    HttpResponse::Ok().json(document)
}

/// `POST /api/v1/privacy/subjects/{id}/erase` — erasure (Art. 17). Refused with 409 while the
/// subject is in a call (nothing is changed then); otherwise all at once, in one transaction.
async fn erase(
    req: HttpRequest,
    state: web::Data<ApiState>,
    privacy: web::Data<Privacy>,
    id: web::Path<String>,
) -> HttpResponse {
    require_auth!(req, state);
    let (subject, held) = match known_subject(&state, &id).await {
        Ok(known) => known,
        Err(r) => return r,
    };
    if !held.calls.is_empty() {
        let storage = state.storage.clone();
        let entry = audit_entry(&state, &privacy, Right::Erasure, &subject, 0, "refused: in a call");
        let _ = web::block(move || storage.put_audit(&entry)).await;
        return error(
            StatusCode::CONFLICT,
            format!(
                "{} is in {} call(s) right now; nothing was erased. Erase after the call ends (its record is then erased too).",
                subject.id(),
                held.calls.len()
            ),
        );
    }
    // Every node erases, in log order; the answer says what went here.
    let audit = audit_entry(&state, &privacy, Right::Erasure, &subject, 0, "erased");
    let erased = match state.cluster.erase(&subject, audit).await {
        Ok(e) => e,
        Err(failed) => return crate::http::not_replicated(&failed, format!("the erasure: {failed}")),
    };
    // The file is erased; now the registrar's memory (its own removals are stored too, which
    // also takes any binding refreshed in the meantime).
    let forgotten = match &subject {
        Subject::Number(n) if held.extension.is_some() => {
            ask(&state.registrar, |reply| RegistrarMsg::RemoveExtension { number: n.clone(), reply }).await
        }
        Subject::Number(_) => Ok(Ok(())),
        Subject::Ip(ip) => ask(&state.registrar, |reply| RegistrarMsg::ForgetAddress { ip: *ip, reply }).await,
    };
    match forgotten {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => tracing::warn!(%reason, "registrar after erasure"),
        Err(r) => return r,
    }
    tracing::info!(records = erased.total(), "subject erased");
    // The softphone proxy's records of this user name: erased there, over the link. Not linked
    // now: the answer says so, and the request is to be repeated once it is.
    let proxied = match (&subject, &state.proxy) {
        (Subject::Number(n), Some(proxy)) => Some(match proxy.erase(n).await {
            Ok(records) => json!({ "records": records }),
            Err(reason) => {
                tracing::warn!(%reason, "the softphone proxy's records were not erased");
                json!({ "error": format!("{reason}: erase again once the proxy is linked") })
            }
        }),
        _ => None,
    };
    HttpResponse::Ok().json(json!({ "subject": subject.id(), "erased": erased, "softphone_proxy": proxied }))
}

/// Restriction (Art. 18) and objection (Art. 21): set with POST, lifted with DELETE.
async fn flag(
    req: HttpRequest,
    state: web::Data<ApiState>,
    privacy: web::Data<Privacy>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    require_auth!(req, state);
    let (id, which) = path.into_inner();
    let subject = match parse_subject(&id) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let set = req.method() == actix_web::http::Method::POST;
    let right = match (which.as_str(), set) {
        ("restriction", true) => Right::Restriction,
        ("restriction", false) => Right::RestrictionLifted,
        ("objection", true) => Right::Objection,
        ("objection", false) => Right::ObjectionWithdrawn,
        _ => return error(StatusCode::NOT_FOUND, format!("no such right {which:?}: restriction or objection")),
    };
    if set && let Err(r) = known_subject(&state, &id).await {
        return r;
    }
    let now = state.clock.now();
    let audit = audit_entry(&state, &privacy, right, &subject, 1, "done");
    // Set on every node, in log order.
    let result = state.cluster.flag(&subject, right, now, audit).await;
    match result {
        Ok(flags) => {
            tracing::info!(right = right.name(), "privacy flag changed");
            HttpResponse::Ok().json(json!({ "subject": subject.id(), "flags": flags_json(&flags) }))
        }
        Err(failed) => crate::http::not_replicated(&failed, format!("changing the privacy flags: {failed}")),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rectification {
    display_name: String,
}

/// `POST /api/v1/privacy/subjects/{id}/rectification` — rectification (Art. 16) of what a
/// subject can correct: the extension's display name.
async fn rectify(
    req: HttpRequest,
    state: web::Data<ApiState>,
    privacy: web::Data<Privacy>,
    id: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    require_auth!(req, state);
    let subject = match parse_subject(&id) {
        Ok(Subject::Number(n)) => n,
        Ok(Subject::Ip(_)) => return error(StatusCode::BAD_REQUEST, "an IP address has nothing to rectify"),
        Err(r) => return *r,
    };
    let input: Rectification = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let result = ask(&state.registrar, |reply| RegistrarMsg::Rename {
        number: subject.clone(),
        display_name: input.display_name.clone(),
        reply,
    })
    .await;
    let subject = Subject::Number(subject);
    match result {
        Ok(Ok(())) => {
            let storage = state.storage.clone();
            let entry = audit_entry(&state, &privacy, Right::Rectification, &subject, 1, "display name changed");
            if let Ok(Err(e)) = web::block(move || storage.put_audit(&entry)).await {
                return storage_failed("auditing the rectification", e);
            }
            HttpResponse::Ok().json(json!({ "subject": subject.id(), "display_name": input.display_name }))
        }
        Ok(Err(ChangeError::NoSuchExtension)) => {
            error(StatusCode::NOT_FOUND, format!("no extension {:?}", subject.id()))
        }
        Ok(Err(refused)) => crate::http::change_refused(refused),
        Err(r) => r,
    }
}

fn audit_json(e: &AuditEntry) -> serde_json::Value {
    match &e.event {
        AuditEvent::Retention { rules, finished } => json!({
            "at": rfc3339(e.at),
            "kind": "retention",
            "finished": rfc3339(*finished),
            "rules": rules.iter().map(|r| json!({
                "category": r.category,
                "action": r.action.name(),
                "cutoff": rfc3339(r.cutoff),
                "records": r.records,
                "error": r.error,
            })).collect::<Vec<_>>(),
        }),
        AuditEvent::SubjectRequest { right, subject, records, outcome } => json!({
            "at": rfc3339(e.at),
            "kind": "subject_request",
            "right": right.name(),
            "subject": subject,
            "records": records,
            "outcome": outcome,
        }),
    }
}

/// `GET /api/v1/privacy/audit[?subject=ID][&limit=N]` — newest first.
async fn audit(req: HttpRequest, state: web::Data<ApiState>, privacy: web::Data<Privacy>) -> HttpResponse {
    require_auth!(req, state);
    let Ok(q) = web::Query::<Vec<(String, String)>>::from_query(req.query_string()) else {
        return error(StatusCode::BAD_REQUEST, "the query string is not name=value pairs");
    };
    let (mut pseudonym, mut limit) = (None, 100);
    for (k, v) in q.into_inner() {
        match k.as_str() {
            "subject" => match Subject::parse(&v) {
                Ok(s) => pseudonym = Some(privacy.pseudonym(&s)),
                Err(reason) => return error(StatusCode::BAD_REQUEST, format!("subject: {reason}")),
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=AUDIT_PAGE_MAX).contains(&n) => limit = n,
                _ => return error(StatusCode::BAD_REQUEST, format!("limit: not between 1 and {AUDIT_PAGE_MAX}")),
            },
            other => return error(StatusCode::BAD_REQUEST, format!("unknown parameter {other:?}: subject, limit")),
        }
    }
    let storage = state.storage.clone();
    let entries = web::block(move || {
        storage.audit(limit, AUDIT_ROWS_MAX, |e| match (&pseudonym, &e.event) {
            (None, _) => true,
            (Some(p), AuditEvent::SubjectRequest { subject, .. }) => subject == p,
            (Some(_), _) => false,
        })
    })
    .await;
    match entries {
        Ok(Ok(entries)) => {
            HttpResponse::Ok().json(json!({ "entries": entries.iter().map(audit_json).collect::<Vec<_>>() }))
        }
        Ok(Err(e)) => storage_failed("reading the audit", e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "no worker free"),
    }
}

/// One security-log entry as the API shows it: `source` with `source_bits` (32 or 128 for one
/// address; 24 or 64 for several of that network; 0 for the interval's overflow entry),
/// `count` the events it stands for (a flood within one interval is one entry).
pub(crate) fn security_json(e: &pbx_actors::privacy::SecurityEntry) -> serde_json::Value {
    let blocked_until = e.event.until().map(rfc3339);
    json!({
        "at": rfc3339(e.at),
        "source": e.source.to_string(),
        "source_bits": e.source_bits,
        "user": e.user,
        "event": e.event.name(),
        "count": e.count,
        "blocked_until": blocked_until,
        "anonymised": e.anonymised,
    })
}

/// `GET /api/v1/security-log?limit=N` — the newest entries (default 100, at most
/// [`SECURITY_PAGE_MAX`]); those naming a restricted subject (Art. 18) as user or as the exact
/// source are left out.
async fn security_log(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    let Ok(q) = web::Query::<Vec<(String, String)>>::from_query(req.query_string()) else {
        return error(StatusCode::BAD_REQUEST, "the query string is not name=value pairs");
    };
    let mut limit = 100;
    for (k, v) in q.into_inner() {
        match k.as_str() {
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=SECURITY_PAGE_MAX).contains(&n) => limit = n,
                _ => return error(StatusCode::BAD_REQUEST, format!("limit: not between 1 and {SECURITY_PAGE_MAX}")),
            },
            other => return error(StatusCode::BAD_REQUEST, format!("unknown parameter {other:?}: limit")),
        }
    }
    let storage = state.storage.clone();
    let entries = web::block(move || {
        let hidden = crate::storage::restricted(&storage.all_flags()?);
        let entries = storage.security_log(limit)?;
        Ok::<_, crate::storage::StorageError>(
            entries
                .into_iter()
                .filter(|e| {
                    let exact = e.source_bits == pbx_actors::privacy::address_bits(e.source);
                    !(e.user.as_ref().is_some_and(|u| hidden.contains(u))
                        || (exact && hidden.contains(&e.source.to_string())))
                })
                .collect::<Vec<_>>(),
        )
    })
    .await;
    match entries {
        Ok(Ok(entries)) => {
            HttpResponse::Ok().json(json!({ "entries": entries.iter().map(security_json).collect::<Vec<_>>() }))
        }
        Ok(Err(e)) => storage_failed("reading the security log", e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "no worker free"),
    }
}

/// `GET /api/v1/privacy/inventory` — every category, with this node's periods.
async fn inventory(req: HttpRequest, state: web::Data<ApiState>, privacy: web::Data<Privacy>) -> HttpResponse {
    require_auth!(req, state);
    let categories: Vec<_> = INVENTORY
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "data": c.data,
                "purpose": c.purpose,
                "legal_basis": c.legal_basis.iter().map(|b| match b {
                    pbx_actors::privacy::LegalBasis::LegitimateInterest(why) => format!("{} ({why})", b.article()),
                    other => other.article().to_string(),
                }).collect::<Vec<_>>(),
                "retention": format!("{:?}", notice::retention_for(c, &privacy.periods)),
                "stored_in": c.stored_in,
                "subjects": c.subjects,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "categories": categories }))
}

/// `GET /api/v1/statistics[?days=N]` — calls per extension over the last N days (default 30),
/// a processing on legitimate interest: subjects who objected or are restricted are left out.
async fn statistics(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    let Ok(q) = web::Query::<Vec<(String, String)>>::from_query(req.query_string()) else {
        return error(StatusCode::BAD_REQUEST, "the query string is not name=value pairs");
    };
    let mut days = 30u64;
    for (k, v) in q.into_inner() {
        match (k.as_str(), v.parse::<u64>()) {
            ("days", Ok(n)) if (1..=3_650).contains(&n) => days = n,
            ("days", _) => return error(StatusCode::BAD_REQUEST, "days: not between 1 and 3650"),
            (other, _) => return error(StatusCode::BAD_REQUEST, format!("unknown parameter {other:?}: days")),
        }
    }
    let now = state.clock.now();
    let from = now - Duration::from_secs(days * 86_400);
    let storage = state.storage.clone();
    let result = web::block(move || {
        let flags = storage.all_flags()?;
        let excluded: BTreeSet<String> = flags.into_keys().collect();
        storage.statistics(from, &excluded, STATISTICS_ROWS_MAX).map(|s| (s, excluded.len()))
    })
    .await;
    match result {
        Ok(Ok(((rows, truncated), excluded))) => HttpResponse::Ok().json(json!({
            "from": rfc3339(from),
            "to": rfc3339(now),
            "extensions": rows,
            "excluded_subjects": excluded,
            "truncated": truncated,
        })),
        Ok(Err(e)) => storage_failed("computing the statistics", e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "no worker free"),
    }
}

/// `GET /privacy[?lang=de|en|fr]` — the privacy notice as a web page, open to everyone (it is
/// what the operator publishes). Without `lang`, the browser's Accept-Language decides.
async fn privacy_notice(req: HttpRequest, privacy: web::Data<Privacy>) -> HttpResponse {
    let Ok(q) = web::Query::<Vec<(String, String)>>::from_query(req.query_string()) else {
        return error(StatusCode::BAD_REQUEST, "the query string is not name=value pairs");
    };
    let mut lang = None;
    for (k, v) in q.into_inner() {
        match k.as_str() {
            "lang" => match v.parse::<notice::Lang>() {
                Ok(l) => lang = Some(l),
                Err(reason) => return error(StatusCode::BAD_REQUEST, format!("lang: {reason}")),
            },
            other => return error(StatusCode::BAD_REQUEST, format!("unknown parameter {other:?}: lang")),
        }
    }
    let lang =
        lang.unwrap_or_else(|| notice::negotiate(req.headers().get("accept-language").and_then(|v| v.to_str().ok())));
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("content-language", lang.code()))
        .insert_header(("vary", "Accept-Language"))
        .body(privacy.notice(lang).html())
}

/// A config file entry the start leaves out, and why; `entry` counts the file's
/// `[[extensions]]` from 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeftOut {
    /// Its number was erased at `at` (a tombstone made with this node's key).
    Erased { entry: usize, at: pbx_actors::Timestamp },
    /// Its number is not in the directory, and this node holds tombstones made with other
    /// keys (`keys`, their fingerprints) that it cannot match numbers against: it cannot tell
    /// a new extension from an erased one, and errs on the side of the erasure.
    Unknowable { entry: usize, keys: Vec<String> },
}

/// Splits the config file's extensions into those to apply at start and those to leave out:
/// a number with a tombstone of this node's `key` is left out; so is a number not yet in the
/// directory (`existing`) while tombstones of other keys are held. Everything else applies
/// (a number in the directory without a tombstone of ours was never erased here, or was
/// created anew through the API).
pub fn sort_declared<'a>(
    declared: &'a [ExtensionDecl],
    key: &PrivacyKey,
    tombstones: &std::collections::BTreeMap<String, Tombstone>,
    existing: &BTreeSet<String>,
) -> (Vec<&'a ExtensionDecl>, Vec<LeftOut>) {
    let mine = key.fingerprint();
    let foreign: BTreeSet<String> = tombstones.values().filter(|t| t.key != mine).map(|t| t.key.clone()).collect();
    let (mut apply, mut left_out) = (Vec::new(), Vec::new());
    for (i, ext) in declared.iter().enumerate() {
        let entry = i + 1;
        let pseudonym = key.pseudonym(&Subject::Number(ext.number.clone()));
        match tombstones.get(&pseudonym) {
            Some(t) if t.key == mine => left_out.push(LeftOut::Erased { entry, at: t.at }),
            _ if !existing.contains(&ext.number) && !foreign.is_empty() => {
                left_out.push(LeftOut::Unknowable { entry, keys: foreign.iter().cloned().collect() })
            }
            _ => apply.push(ext),
        }
    }
    (apply, left_out)
}

/// The config file's (`file`) extensions to apply at this start, once every change committed
/// before now is applied here (so an erasure made while this node was down is known); each one
/// left out is named in a warning, by its place in the file (not its number or name: the log
/// is not the place to repeat an erased subject's data).
pub async fn config_extensions_to_apply(
    cluster: &crate::cluster::Replication,
    key: &PrivacyKey,
    declared: &[ExtensionDecl],
    file: &str,
) -> Result<Vec<ExtensionDecl>, String> {
    if declared.is_empty() {
        return Ok(Vec::new());
    }
    // A cluster that has no quorum yet (this node came up first) is waited for, as long as
    // the writes of the extensions themselves would be.
    let mut tries = 1;
    while let Err(e) = cluster.barrier().await {
        if tries == BARRIER_TRIES_MAX {
            return Err(format!("the cluster did not commit an entry in {tries} tries: {e}"));
        }
        tries += 1;
    }
    let storage = cluster.applier.storage();
    let tombstones = storage.tombstones().map_err(|e| e.to_string())?;
    let existing: BTreeSet<String> =
        storage.load().map_err(|e| e.to_string())?.extensions.into_iter().map(|e| e.number).collect();
    let (apply, left_out) = sort_declared(declared, key, &tombstones, &existing);
    for reason in &left_out {
        match reason {
            LeftOut::Erased { entry, at } => tracing::warn!(
                file,
                entry,
                erased_at = %rfc3339(*at),
                "config: [[extensions]] entry #{entry} names a number that was erased (GDPR Art. 17); it is not \
                 applied. Remove the entry from the file; the number itself can be created anew through the API"
            ),
            LeftOut::Unknowable { entry, keys } => tracing::warn!(
                file,
                entry,
                keys = %keys.join(","),
                "config: [[extensions]] entry #{entry} is not applied: its number is not in the directory and this \
                 node holds erasure tombstones made with another node's privacy key, so it cannot tell whether the \
                 number was erased. Create it through the API, or give every node the same privacy.key"
            ),
        }
    }
    metrics::gauge!("pbx_config_extensions_left_out").set(left_out.len() as f64);
    Ok(apply.into_iter().cloned().collect())
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/privacy", web::get().to(privacy_notice))
        .route("/api/v1/privacy/subjects/{id}/export", web::get().to(export))
        .route("/api/v1/privacy/subjects/{id}/erase", web::post().to(erase))
        .route("/api/v1/privacy/subjects/{id}/rectification", web::post().to(rectify))
        .route("/api/v1/privacy/subjects/{id}/{right}", web::post().to(flag))
        .route("/api/v1/privacy/subjects/{id}/{right}", web::delete().to(flag))
        .route("/api/v1/privacy/audit", web::get().to(audit))
        .route("/api/v1/security-log", web::get().to(security_log))
        .route("/api/v1/privacy/inventory", web::get().to(inventory))
        .route("/api/v1/statistics", web::get().to(statistics));
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::Timestamp;

    /// A push record is exported whole, each field under its name: the time as RFC 3339, the
    /// token and the app's address included (they are the subject's).
    #[test]
    fn push_records_export_every_field() {
        let record = pbx_actors::push::PushRecord {
            id: 9,
            at: Timestamp::from_secs(1_714_564_800),
            user: "100".into(),
            caller: "101".into(),
            callee: "100".into(),
            provider: "fcm".into(),
            device: "token-9".into(),
            source: "[2001:db8::7]:5061".parse().unwrap(),
            outcome: "failed: 503".into(),
        };
        assert_eq!(
            push_json(&record),
            json!({
                "at": "2024-05-01T12:00:00.000Z",
                "user": "100",
                "caller": "101",
                "callee": "100",
                "provider": "fcm",
                "device": "token-9",
                "source": "[2001:db8::7]:5061",
                "outcome": "failed: 503",
            })
        );
    }

    fn decl(number: &str) -> ExtensionDecl {
        ExtensionDecl {
            number: number.into(),
            password: "pw".into(),
            display_name: format!("Name {number}"),
            media_encryption: None,
        }
    }

    fn numbers(applied: &[&ExtensionDecl]) -> Vec<String> {
        applied.iter().map(|e| e.number.clone()).collect()
    }

    /// A config entry whose number this node's key tombstoned is left out (named by its place in
    /// the file); others apply, whether new or already in the directory; without tombstones
    /// everything applies.
    #[test]
    fn an_erased_number_in_the_file_is_left_out() {
        let key = PrivacyKey::from_bytes(&[7; 32]);
        let declared = [decl("100"), decl("101"), decl("102")];
        let at = Timestamp::from_secs(1_000);
        let t = key.tombstone(&Subject::Number("101".into()), at).unwrap();
        assert!(!t.pseudonym.contains("101") && t.pseudonym.len() == 32, "a pseudonym, not the number: {t:?}");
        let tombstones = [(t.pseudonym.clone(), t)].into_iter().collect();
        let existing = ["100".to_string()].into_iter().collect();
        let (apply, left_out) = sort_declared(&declared, &key, &tombstones, &existing);
        assert_eq!(numbers(&apply), ["100", "102"]);
        assert_eq!(left_out, [LeftOut::Erased { entry: 2, at }]);
        let (apply, left_out) = sort_declared(&declared, &key, &Default::default(), &existing);
        assert_eq!((apply.len(), left_out.len()), (3, 0));
        assert!(key.tombstone(&Subject::parse("192.0.2.1").unwrap(), at).is_none(), "addresses leave none");
    }

    /// Tombstones made with another node's key (a snapshot from it) cannot be matched: numbers
    /// not in the directory are left out rather than risk undoing an erasure; numbers in it
    /// apply; this node's own tombstones still match.
    #[test]
    fn foreign_tombstones_leave_out_what_cannot_be_told_apart() {
        let (mine, theirs) = (PrivacyKey::from_bytes(&[1; 32]), PrivacyKey::from_bytes(&[2; 32]));
        assert_ne!(mine.fingerprint(), theirs.fingerprint());
        let at = Timestamp::from_secs(5);
        let foreign = theirs.tombstone(&Subject::Number("101".into()), at).unwrap();
        let own = mine.tombstone(&Subject::Number("103".into()), at).unwrap();
        let tombstones = [foreign, own].into_iter().map(|t| (t.pseudonym.clone(), t)).collect();
        let declared = [decl("100"), decl("101"), decl("102"), decl("103")];
        let existing = ["100".to_string(), "103".to_string()].into_iter().collect();
        let (apply, left_out) = sort_declared(&declared, &mine, &tombstones, &existing);
        assert_eq!(numbers(&apply), ["100"]);
        let keys = vec![theirs.fingerprint()];
        assert_eq!(
            left_out,
            [
                LeftOut::Unknowable { entry: 2, keys: keys.clone() },
                LeftOut::Unknowable { entry: 3, keys },
                LeftOut::Erased { entry: 4, at },
            ]
        );
    }
}

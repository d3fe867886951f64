//! pbx-licence-service: `pbx licence-server`, the vendor's licence and voucher service, as a
//! role of the one `pbx` binary (the node crate depends on this one, never the reverse) — the
//! thin shell around [`pbx_actors::licence::desk::Desk`] (seed: the PBX asks the vendor's
//! licence server daily and redeems vouchers at a voucher center; pbx ships that service).
//!
//! The shell owns what the desk may not touch: the data directory (created 0700), the
//! Ed25519 seed (32 bytes from the OS, 0600), a self-signed TLS certificate made with rcgen,
//! the admin token, one redb file, the clock, and HTTPS (rustls with ring). Every `Persist`
//! the desk hands out is committed durably before the HTTP answer leaves, so a voucher a
//! client was told is redeemed stays redeemed after a crash. A timer task wakes the desk when
//! [`Desk::poll_timeout`] says, so request logs are anonymised on time (14 days).
//!
//! Data directory:
//! - `signing-key.seed`: the Ed25519 seed (raw 32 bytes, 0600). Losing it means every pbx
//!   must be configured with a new public key; back it up.
//! - `public-key.hex`: the public key, for pbx's configuration (rewritten at every start).
//! - `tls-cert.pem`, `tls-key.pem` (0600): the self-signed certificate clients pin, made at
//!   first start for the listen host (and `--cert-name`s); delete both to make new ones.
//! - `admin.token` (0600): the bearer token of `/admin/v1/*`.
//! - `licence.redb`: serials, vouchers and the request log.
//!
//! Voucher redemption is rate-limited by the desk (per source network and per serial; the
//! `--redeem-*` flags); a limited redeem is answered 429 with `Retry-After`, the first of a
//! run logged at warn, all counted in `GET /admin/v1/stats`. Voucher codes never reach a log:
//! the request log and the log lines carry [`Desk::code_hash`] instead (only the admin API's
//! answer to creating a voucher repeats the code it was given).
//!
//! Not here: revocation, ACME certificates, clustering of the service.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use anyhow::Context;
use pbx_actors::Timestamp;
use pbx_actors::licence::desk::{
    Desk, DeskCommand, DeskError, DeskOutput, DeskState, Grant, LimitedBy, LogEntry, RedeemLimits, Request, Voucher,
    anonymise,
};
use pbx_actors::licence::{Feature, Limits, SigningKey};
use pbx_actors::time::Clock;
use pbx_host::clock::SystemClock;
use pbx_host::http::{bearer_matches, error, rfc3339};
use pbx_host::secret_file::{admin_token, restrict_permissions};
use pbx_host::wait_for_shutdown_signal;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SEED_FILE: &str = "signing-key.seed";
pub const PUBLIC_KEY_FILE: &str = "public-key.hex";
pub const CERT_FILE: &str = "tls-cert.pem";
pub const CERT_KEY_FILE: &str = "tls-key.pem";
pub const DB_FILE: &str = "licence.redb";

const SERIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("licence_serials");
const VOUCHERS: TableDefinition<&str, &[u8]> = TableDefinition::new("licence_vouchers");
/// Keyed by the entry's id, which grows with time.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("licence_log");

/// Every table of `licence.redb`, with the privacy inventory's category for those holding
/// personal data (a test checks both). Serials and vouchers are the vendor's sales records:
/// a serial names a PBX, not a person.
pub const TABLES: &[(&str, Option<&str>)] =
    &[("licence_serials", None), ("licence_vouchers", None), ("licence_log", Some("licence-service-log"))];

/// Largest request body read; a serial and a code fit many times over.
pub const BODY_BYTES_MAX: usize = 16 * 1024;
/// Log entries one `GET /admin/v1/log` page holds at most (and by default).
pub const LOG_PAGE_MAX: usize = 1_000;
/// The retention timer sleeps at most this long before it asks the desk again.
const TIMER_SLEEP_S_MAX: u64 = 3_600;
/// Connections served at once; past it the kernel's backlog holds them.
const CONNECTIONS_MAX: usize = 1_024;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Data directory: signing key, TLS certificate, admin token, redb file.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Where to serve HTTPS: IP:PORT or HOST:PORT; the certificate made at first start names
    /// this host.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// Further names (DNS or IP) for the certificate made at first start; repeatable.
    #[arg(long, value_name = "NAME")]
    pub cert_name: Vec<String>,
    /// Serve plain HTTP instead of HTTPS: only on a loopback address (tests, a local TLS proxy).
    #[arg(long)]
    pub plain_http: bool,
    /// Failed voucher redeems one source network (IPv4 address, IPv6 /64) may make in a row.
    #[arg(long, value_name = "N", default_value_t = RedeemLimits::default().source_burst, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub redeem_source_burst: u32,
    /// Then one more per this many seconds.
    #[arg(long, value_name = "S", default_value_t = RedeemLimits::default().source_refill_s, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub redeem_source_refill_s: u64,
    /// Failed voucher redeems naming one serial, from any sources, in a row.
    #[arg(long, value_name = "N", default_value_t = RedeemLimits::default().serial_burst, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub redeem_serial_burst: u32,
    /// Then one more per this many seconds.
    #[arg(long, value_name = "S", default_value_t = RedeemLimits::default().serial_refill_s, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub redeem_serial_refill_s: u64,
}

impl Args {
    pub fn redeem_limits(&self) -> RedeemLimits {
        RedeemLimits {
            source_burst: self.redeem_source_burst,
            source_refill_s: self.redeem_source_refill_s,
            serial_burst: self.redeem_serial_burst,
            serial_refill_s: self.redeem_serial_refill_s,
        }
    }
}

/// Why the arguments cannot work; the binary exits 2 with this message.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("--listen {0:?}: {1}")]
    Listen(String, String),
    #[error(
        "--plain-http is only allowed on a loopback address (127.0.0.0/8, ::1), not {0}: clients would send serials and voucher codes in the clear; drop --plain-http to serve HTTPS"
    )]
    PlainHttpNotLoopback(SocketAddr),
}

/// The listen host (as given, for the certificate) and the addresses it resolves to, checked
/// against `--plain-http`.
pub fn check_args(args: &Args) -> Result<(String, Vec<SocketAddr>), UsageError> {
    let listen = args.listen.trim();
    let (host, port) =
        listen.rsplit_once(':').ok_or_else(|| UsageError::Listen(listen.into(), "expected ADDR:PORT".into()))?;
    port.parse::<u16>().map_err(|_| UsageError::Listen(listen.into(), format!("{port:?} is not a port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| UsageError::Listen(listen.into(), format!("cannot resolve: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(UsageError::Listen(listen.into(), "resolves to no address".into()));
    }
    if args.plain_http
        && let Some(public) = addrs.iter().find(|a| !a.ip().is_loopback())
    {
        return Err(UsageError::PlainHttpNotLoopback(*public));
    }
    Ok((host, addrs))
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let (host, addrs) = check_args(&args)?;
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("create data directory {}", dir.display()))?;
    restrict_permissions(dir, 0o700);
    let seed = signing_seed(dir).context("read or create the signing key")?;
    let public = SigningKey::from_seed(&seed).public_key();
    write_file(&dir.join(PUBLIC_KEY_FILE), format!("{}\n", public.to_hex()).as_bytes(), 0o644)
        .context("write public-key.hex")?;
    let token = admin_token(dir).context("create admin token")?;
    let storage = Arc::new(LicenceStorage::open(dir).context("open licence storage")?);
    let state = storage.load().context("load serials, vouchers and request log")?;
    tracing::info!(
        serials = state.serials.len(),
        vouchers = state.vouchers.len(),
        log = state.log.len(),
        "state restored"
    );
    let limits = args.redeem_limits();
    let mut desk = Desk::new(SigningKey::from_seed(&seed), state).with_redeem_limits(limits);
    // What loading changed (codes of an older log replaced by their hashes) is written now.
    let migrated = drain(&mut desk);
    if !migrated.is_empty() {
        storage.apply(&migrated).context("hash the voucher codes of the request log")?;
        tracing::info!(entries = migrated.len(), "voucher codes in the request log replaced by their hashes");
    }
    tracing::info!(?limits, "voucher redeem limits");
    let desk = Arc::new(Mutex::new(desk));
    let shared =
        Shared { desk: desk.clone(), storage: storage.clone(), seed, limits, clock: SystemClock::new(), token };

    let tls = if args.plain_http {
        None
    } else {
        Some(tls_config(dir, &cert_names(&host, &args.cert_name)).context("set up TLS")?)
    };

    let data = web::Data::new(shared.clone());
    let server = actix_web::HttpServer::new(move || actix_web::App::new().app_data(data.clone()).configure(routes))
        .workers(1)
        .max_connections(CONNECTIONS_MAX)
        .disable_signals()
        .shutdown_timeout(2);
    let server = match tls {
        Some(config) => server.bind_rustls_0_23(&addrs[..], config),
        None => server.bind(&addrs[..]),
    }
    .with_context(|| format!("bind {}", args.listen))?
    .run();
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);
    let timer_task = tokio::spawn(retention_timer(shared));

    let scheme = if args.plain_http { "http" } else { "https" };
    // Printed on stdout, for whoever configures the pbx nodes.
    println!("public key: {}", public.to_hex());
    if !args.plain_http {
        println!("certificate: {}", dir.join(CERT_FILE).display());
    }
    println!("listening: {scheme}://{}", args.listen);
    tracing::info!(listen = %args.listen, %scheme, public_key = %public.to_hex(), "pbx licence server ready");

    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    server_handle.stop(true).await;
    let _ = server_task.await;
    timer_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// What every handler shares.
#[derive(Clone)]
struct Shared {
    desk: Arc<Mutex<Desk>>,
    storage: Arc<LicenceStorage>,
    /// To build a fresh desk from storage after a failed write.
    seed: [u8; 32],
    limits: RedeemLimits,
    clock: SystemClock,
    token: String,
}

impl Shared {
    /// Runs `f` on the desk, then writes what it persisted (one durable transaction) before
    /// returning its answer. A failed write reloads the desk from storage, so memory never
    /// claims what the disk does not hold. Blocking: call it on a blocking thread.
    fn on_desk<T>(&self, f: impl FnOnce(&mut Desk, Timestamp) -> T) -> Result<T, StorageError> {
        let mut desk = self.desk.lock().unwrap_or_else(|e| e.into_inner());
        let answer = f(&mut desk, self.clock.now());
        let commands = drain(&mut desk);
        match self.storage.apply(&commands) {
            Ok(()) => Ok(answer),
            Err(e) => {
                tracing::error!(error = %e, "licence storage write failed; reloading the desk");
                match self.storage.load() {
                    Ok(state) => desk.reload(SigningKey::from_seed(&self.seed), state),
                    Err(e) => tracing::error!(error = %e, "licence storage reload failed"),
                }
                Err(e)
            }
        }
    }

    /// [`Shared::on_desk`] from a handler: storage failures answer 500.
    async fn with_desk<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Desk, Timestamp) -> T + Send + 'static,
    ) -> Result<T, HttpResponse> {
        let shared = self.clone();
        match web::block(move || shared.on_desk(f)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "storage: the change could not be saved")),
            Err(_) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "no worker free to answer")),
        }
    }
}

/// The desk's durable changes, in order.
fn drain(desk: &mut Desk) -> Vec<DeskCommand> {
    std::iter::from_fn(|| desk.poll_output())
        .map(|output| match output {
            DeskOutput::Persist(command) => command,
        })
        .collect()
}

/// Wakes the desk when its next log entry is due for anonymisation or deletion.
async fn retention_timer(shared: Shared) {
    loop {
        let now = shared.clock.now();
        let due = shared.desk.lock().unwrap_or_else(|e| e.into_inner()).poll_timeout();
        let cap = now.saturating_add(Duration::from_secs(TIMER_SLEEP_S_MAX));
        let wake = due.map_or(cap, |d| d.min(cap));
        tokio::time::sleep(wake.saturating_since(now)).await;
        if due.is_none_or(|d| d > shared.clock.now()) {
            continue;
        }
        let worker = shared.clone();
        let done = tokio::task::spawn_blocking(move || worker.on_desk(|desk, now| desk.handle_timeout(now))).await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::error!("request log retention failed; retrying in a minute");
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

// ---- HTTP ----

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/v1/licence", web::post().to(licence))
        .route("/v1/unlocks", web::post().to(unlocks))
        .route("/v1/vouchers/redeem", web::post().to(redeem))
        .route("/admin/v1/serials/{serial}", web::put().to(put_serial))
        .route("/admin/v1/vouchers/{code}", web::put().to(put_voucher))
        .route("/admin/v1/log", web::get().to(log))
        .route("/admin/v1/stats", web::get().to(stats))
        .default_service(web::to(|| async { error(StatusCode::NOT_FOUND, "no such path or method") }));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialBody {
    serial: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    serial: String,
    code: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    features: BTreeSet<Feature>,
    limits: Limits,
    valid_days: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VoucherBody {
    features: BTreeSet<Feature>,
    limits: Limits,
}

#[derive(Serialize)]
struct LogEntryOut {
    id: u64,
    at: String,
    ip: IpAddr,
    anonymised: bool,
    serial: String,
    request: Request,
    /// The keyed hash of the code a redeem named (`#` and 16 hex digits), never the code.
    #[serde(skip_serializing_if = "Option::is_none")]
    code_hash: Option<String>,
    outcome: String,
}

impl From<LogEntry> for LogEntryOut {
    fn from(e: LogEntry) -> LogEntryOut {
        LogEntryOut {
            id: e.id,
            at: rfc3339(e.at),
            ip: e.ip,
            anonymised: e.anonymised,
            serial: e.serial,
            request: e.request,
            code_hash: e.code_hash,
            outcome: e.outcome,
        }
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// The request body as JSON of type `T`, at most [`BODY_BYTES_MAX`] bytes; errors as JSON.
async fn read_json<T: for<'de> Deserialize<'de>>(payload: web::Payload) -> Result<T, HttpResponse> {
    let body = match payload.to_bytes_limited(BODY_BYTES_MAX).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return Err(error(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))),
        Err(_) => {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {BODY_BYTES_MAX} bytes")));
        }
    };
    let mut deserializer = serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
}

fn peer_ip(req: &HttpRequest) -> IpAddr {
    req.peer_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

fn desk_error(e: DeskError) -> HttpResponse {
    let status = match e {
        DeskError::UnknownSerial | DeskError::UnknownVoucher => StatusCode::NOT_FOUND,
        DeskError::AlreadyRedeemed => StatusCode::CONFLICT,
        DeskError::Invalid(_) => StatusCode::BAD_REQUEST,
        DeskError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
    };
    error(status, e.to_string())
}

async fn licence(req: HttpRequest, shared: web::Data<Shared>, payload: web::Payload) -> HttpResponse {
    let body: SerialBody = match read_json(payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ip = peer_ip(&req);
    match shared.with_desk(move |desk, now| desk.check(now, ip, &body.serial)).await {
        Ok(Ok(envelope)) => HttpResponse::Ok().json(envelope),
        Ok(Err(e)) => desk_error(e),
        Err(r) => r,
    }
}

async fn unlocks(req: HttpRequest, shared: web::Data<Shared>, payload: web::Payload) -> HttpResponse {
    let body: SerialBody = match read_json(payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ip = peer_ip(&req);
    match shared.with_desk(move |desk, now| desk.unlocks(now, ip, &body.serial)).await {
        Ok(Ok(envelope)) => HttpResponse::Ok().json(envelope),
        Ok(Err(e)) => desk_error(e),
        Err(r) => r,
    }
}

async fn redeem(req: HttpRequest, shared: web::Data<Shared>, payload: web::Payload) -> HttpResponse {
    let body: RedeemBody = match read_json(payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ip = peer_ip(&req);
    let serial = body.serial.clone();
    match shared.with_desk(move |desk, now| desk.redeem(now, ip, &body.serial, &body.code)).await {
        Ok(Ok(release_code)) => HttpResponse::Ok().json(serde_json::json!({ "release_code": release_code })),
        Ok(Err(e @ DeskError::RateLimited { by, retry_after_s, first })) => {
            if first {
                // Once per run of refusals, not per request: a flood must not flood the log.
                match by {
                    LimitedBy::Source => tracing::warn!(
                        source = %anonymise(ip), retry_after_s, "voucher redeems refused: too many failures from this network"
                    ),
                    // Only serials the desk knows are limited, so this one is well-formed.
                    LimitedBy::Serial => tracing::warn!(
                        %serial, retry_after_s, "voucher redeems refused: too many failures for this serial"
                    ),
                }
            }
            let mut response = desk_error(e);
            if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&retry_after_s.to_string()) {
                response.headers_mut().insert(actix_web::http::header::RETRY_AFTER, value);
            }
            response
        }
        Ok(Err(e)) => desk_error(e),
        Err(r) => r,
    }
}

macro_rules! require_admin {
    ($req:expr, $shared:expr) => {
        if !bearer_matches(&$req, &$shared.token) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (see DATA_DIR/admin.token)");
        }
    };
}

async fn put_serial(
    req: HttpRequest,
    shared: web::Data<Shared>,
    serial: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    require_admin!(req, shared);
    let body: GrantBody = match read_json(payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let serial = serial.into_inner();
    let grant = Grant { features: body.features, limits: body.limits, valid_days: body.valid_days };
    let (s, g) = (serial.clone(), grant.clone());
    match shared.with_desk(move |desk, _| desk.put_serial(&s, g)).await {
        Ok(Ok(())) => {
            tracing::info!(%serial, "serial saved via admin API");
            HttpResponse::Ok().json(serde_json::json!({
                "serial": serial, "features": grant.features, "limits": grant.limits, "valid_days": grant.valid_days,
            }))
        }
        Ok(Err(e)) => desk_error(e),
        Err(r) => r,
    }
}

async fn put_voucher(
    req: HttpRequest,
    shared: web::Data<Shared>,
    code: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    require_admin!(req, shared);
    let body: VoucherBody = match read_json(payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let voucher = Voucher { code: code.into_inner(), features: body.features, limits: body.limits, redeemed: None };
    let v = voucher.clone();
    match shared.with_desk(move |desk, _| desk.put_voucher(v.clone()).map(|()| desk.code_hash(&v.code))).await {
        Ok(Ok(code_hash)) => {
            // The code is the voucher's value: logs name it by its hash only.
            tracing::info!(%code_hash, "voucher saved via admin API");
            HttpResponse::Ok().json(serde_json::json!({
                "code": voucher.code, "code_hash": code_hash, "features": voucher.features, "limits": voucher.limits,
            }))
        }
        Ok(Err(e)) => desk_error(e),
        Err(r) => r,
    }
}

/// `GET /admin/v1/log?after=ID&limit=N`: entries with id above `after`, oldest first, at most
/// `limit` (1 to [`LOG_PAGE_MAX`], default that); `next` is the `after` of the next page.
async fn log(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    require_admin!(req, shared);
    let mut after: Option<u64> = None;
    let mut limit = LOG_PAGE_MAX;
    for (key, value) in
        web::Query::<Vec<(String, String)>>::from_query(req.query_string()).map(|q| q.into_inner()).unwrap_or_default()
    {
        match key.as_str() {
            "after" => match value.parse() {
                Ok(v) => after = Some(v),
                Err(_) => return error(StatusCode::BAD_REQUEST, "after: an entry id (a whole number)"),
            },
            "limit" => match value.parse::<usize>() {
                Ok(v) if (1..=LOG_PAGE_MAX).contains(&v) => limit = v,
                _ => return error(StatusCode::BAD_REQUEST, format!("limit: 1 to {LOG_PAGE_MAX}")),
            },
            other => {
                return error(StatusCode::BAD_REQUEST, format!("{other:?}: unknown parameter (known: after, limit)"));
            }
        }
    }
    let page: Vec<LogEntry> = {
        let desk = shared.desk.lock().unwrap_or_else(|e| e.into_inner());
        let log = &desk.state().log;
        let start = after.map_or(0, |a| log.partition_point(|e| e.id <= a));
        log.range(start..).take(limit).cloned().collect()
    };
    let next = if page.len() == limit { page.last().map(|e| e.id) } else { None };
    let entries: Vec<LogEntryOut> = page.into_iter().map(LogEntryOut::from).collect();
    HttpResponse::Ok().json(serde_json::json!({ "entries": entries, "next": next }))
}

/// `GET /admin/v1/stats`: what the redeem limits did since the start, and their settings.
async fn stats(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    require_admin!(req, shared);
    let stats = shared.desk.lock().unwrap_or_else(|e| e.into_inner()).redeem_stats();
    let l = shared.limits;
    HttpResponse::Ok().json(serde_json::json!({
        "redeems_limited": { "source": stats.limited_by_source, "serial": stats.limited_by_serial },
        "tracked": { "sources": stats.sources_tracked, "serials": stats.serials_tracked },
        "limits": {
            "source_burst": l.source_burst, "source_refill_s": l.source_refill_s,
            "serial_burst": l.serial_burst, "serial_refill_s": l.serial_refill_s,
        },
    }))
}

// ---- Files ----

/// Writes `bytes` to `path` with `mode`, durably, never through a link ([`pbx_host::secret_file`]).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    pbx_host::secret_file::write(path, bytes, mode).with_context(|| format!("write {}", path.display()))
}

/// Reads `DIR/signing-key.seed`, or draws 32 bytes from the OS and stores them (0600) at first
/// start. A seed file of the wrong size is an error, never overwritten: it is the service's
/// identity.
fn signing_seed(dir: &Path) -> anyhow::Result<[u8; 32]> {
    use rand::TryRngCore;
    let path = dir.join(SEED_FILE);
    if let Some(bytes) = pbx_host::secret_file::read(&path).with_context(|| format!("read {}", path.display()))? {
        return bytes.try_into().map_err(|b: Vec<u8>| {
            anyhow::anyhow!("{}: {} bytes, expected 32 (restore it from a backup)", path.display(), b.len())
        });
    }
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut seed).context("draw a seed from the OS")?;
    write_file(&path, &seed, 0o600)?;
    tracing::info!(path = %path.display(), "signing key created");
    Ok(seed)
}

/// The names a new certificate is made for: the listen host unless it is a wildcard address
/// (no client connects to 0.0.0.0), then every `--cert-name`; `localhost` if that leaves none.
fn cert_names(host: &str, extra: &[String]) -> Vec<String> {
    let wildcard = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    let mut names: Vec<String> = Some(host.to_string()).filter(|_| !wildcard).into_iter().collect();
    for name in extra {
        if !name.is_empty() && !names.contains(name) {
            names.push(name.clone());
        }
    }
    if names.is_empty() {
        tracing::warn!("listening on a wildcard address without --cert-name: the certificate names only localhost");
        names.push("localhost".into());
    }
    names
}

/// The server's TLS configuration (ring provider), from `tls-cert.pem` and `tls-key.pem`,
/// made self-signed for `names` at first start.
fn tls_config(dir: &Path, names: &[String]) -> anyhow::Result<rustls::ServerConfig> {
    let identity = pbx_host::tls::identity(&dir.join(CERT_FILE), &dir.join(CERT_KEY_FILE), Some(names))?;
    if identity.created {
        tracing::info!(path = %dir.join(CERT_FILE).display(), ?names, "self-signed TLS certificate created");
    }
    pbx_host::tls::server_config(&identity, &[])
}

// ---- Storage ----

#[derive(Serialize, Deserialize)]
enum StoredGrantV {
    V1(Grant),
}

#[derive(Serialize, Deserialize)]
enum StoredVoucherV {
    V1(Voucher),
}

#[derive(Serialize, Deserialize)]
enum StoredLogEntryV {
    V1(LogEntry),
}

/// `licence.redb` could not be opened, read, decoded or written: what and why.
pub use pbx_host::store::StorageError;
use pbx_host::store::{decode, redb_err};

/// `DIR/licence.redb`: what the desk persists, one durable transaction per request.
pub struct LicenceStorage {
    db: Database,
}

impl LicenceStorage {
    pub fn open(dir: &Path) -> Result<LicenceStorage, StorageError> {
        let path = dir.join(DB_FILE);
        let db = Database::create(&path)
            .map_err(|e| StorageError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        let tx = db.begin_write().map_err(redb_err)?;
        tx.open_table(SERIALS).map_err(redb_err)?;
        tx.open_table(VOUCHERS).map_err(redb_err)?;
        tx.open_table(LOG).map_err(redb_err)?;
        tx.commit().map_err(redb_err)?;
        Ok(LicenceStorage { db })
    }

    pub fn load(&self) -> Result<DeskState, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let mut state = DeskState::default();
        for row in tx.open_table(SERIALS).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let StoredGrantV::V1(grant) = decode("licence_serials", || k.value().to_string(), v.value())?;
            state.serials.insert(k.value().to_string(), grant);
        }
        for row in tx.open_table(VOUCHERS).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let StoredVoucherV::V1(voucher) = decode("licence_vouchers", || k.value().to_string(), v.value())?;
            state.vouchers.insert(voucher.code.clone(), voucher);
        }
        for row in tx.open_table(LOG).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let StoredLogEntryV::V1(entry) = decode("licence_log", || k.value().to_string(), v.value())?;
            state.log.push_back(entry);
        }
        Ok(state)
    }

    /// Applies the desk's commands in one durable transaction: all or none.
    pub fn apply(&self, commands: &[DeskCommand]) -> Result<(), StorageError> {
        if commands.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(redb_err)?;
        // Said explicitly: an answer goes out only for what is on disk.
        tx.set_durability(Durability::Immediate).map_err(redb_err)?;
        {
            let mut serials = tx.open_table(SERIALS).map_err(redb_err)?;
            let mut vouchers = tx.open_table(VOUCHERS).map_err(redb_err)?;
            let mut log = tx.open_table(LOG).map_err(redb_err)?;
            for command in commands {
                match command {
                    DeskCommand::PutSerial { serial, grant } => {
                        let value = postcard::to_allocvec(&StoredGrantV::V1(grant.clone())).map_err(redb_err)?;
                        serials.insert(serial.as_str(), value.as_slice()).map_err(redb_err)?;
                    }
                    DeskCommand::PutVoucher(voucher) => {
                        let value = postcard::to_allocvec(&StoredVoucherV::V1(voucher.clone())).map_err(redb_err)?;
                        vouchers.insert(voucher.code.as_str(), value.as_slice()).map_err(redb_err)?;
                    }
                    DeskCommand::PutLog(entry) => {
                        let value = postcard::to_allocvec(&StoredLogEntryV::V1(entry.clone())).map_err(redb_err)?;
                        log.insert(entry.id, value.as_slice()).map_err(redb_err)?;
                    }
                    DeskCommand::RemoveLogBefore { id } => {
                        for row in log.extract_from_if(..*id, |_, _| true).map_err(redb_err)? {
                            row.map_err(redb_err)?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(redb_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::licence::desk::ANONYMISE_AFTER_S;

    fn args(listen: &str, plain_http: bool) -> Args {
        Args {
            data_dir: "/nonexistent".into(),
            listen: listen.into(),
            cert_name: vec![],
            plain_http,
            redeem_source_burst: 1,
            redeem_source_refill_s: 1,
            redeem_serial_burst: 1,
            redeem_serial_refill_s: 1,
        }
    }

    /// Plain HTTP is refused unless every listen address is loopback; bad addresses are named.
    #[test]
    fn plain_http_only_on_loopback() {
        assert!(check_args(&args("127.0.0.1:8443", true)).is_ok());
        assert!(check_args(&args("[::1]:8443", true)).is_ok());
        assert!(matches!(check_args(&args("0.0.0.0:8443", true)), Err(UsageError::PlainHttpNotLoopback(_))));
        assert!(matches!(check_args(&args("192.0.2.1:8443", true)), Err(UsageError::PlainHttpNotLoopback(_))));
        let (host, _) = check_args(&args("192.0.2.1:8443", false)).unwrap();
        assert_eq!(host, "192.0.2.1");
        assert!(matches!(check_args(&args("8443", false)), Err(UsageError::Listen(..))));
        assert!(matches!(check_args(&args("127.0.0.1:http", false)), Err(UsageError::Listen(..))));
    }

    /// Certificates name the listen host, never a wildcard, plus every --cert-name once.
    #[test]
    fn certificate_names() {
        assert_eq!(cert_names("127.0.0.1", &[]), vec!["127.0.0.1"]);
        assert_eq!(cert_names("0.0.0.0", &[]), vec!["localhost"]);
        assert_eq!(cert_names("::", &["lic.example".into(), "lic.example".into()]), vec!["lic.example"]);
        assert_eq!(cert_names("lic.example", &["192.0.2.1".into()]), vec!["lic.example", "192.0.2.1"]);
    }

    /// Every table is listed, and the ones with personal data are declared in the inventory.
    #[test]
    fn every_table_is_listed_and_personal_ones_declared() {
        use redb::TableHandle;
        let dir = tempfile::tempdir().unwrap();
        let storage = LicenceStorage::open(dir.path()).unwrap();
        let read = storage.db.begin_read().unwrap();
        let mut actual: Vec<String> = read.list_tables().unwrap().map(|t| t.name().to_string()).collect();
        actual.sort();
        let mut listed: Vec<String> = TABLES.iter().map(|(t, _)| t.to_string()).collect();
        listed.sort();
        assert_eq!(actual, listed);
        for (table, category) in TABLES {
            if let Some(id) = category {
                let declared = pbx_actors::privacy::category(id).expect("declared category");
                assert!(
                    declared.stored_in.contains(&format!("licence-server:{table}").as_str()),
                    "{table} not in {id}"
                );
            }
        }
    }

    /// What the desk persists, storage gives back: a restart resumes the same state.
    #[test]
    fn storage_round_trips_the_desk() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LicenceStorage::open(dir.path()).unwrap();
        let seed = [5; 32];
        let mut desk = Desk::new(SigningKey::from_seed(&seed), DeskState::default());
        let t0 = Timestamp::from_secs(1_767_571_200);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let grant = Grant { features: [Feature::Push].into(), limits: Limits::UNLICENSED, valid_days: 30 };
        desk.put_serial("PBX-1", grant).unwrap();
        desk.put_voucher(Voucher {
            code: "V-1".into(),
            features: BTreeSet::new(),
            limits: Limits::ZERO,
            redeemed: None,
        })
        .unwrap();
        desk.check(t0, ip, "PBX-1").unwrap();
        desk.check(t0, ip, "PBX-2").unwrap_err();
        desk.redeem(t0, ip, "PBX-1", "V-1").unwrap();
        desk.handle_timeout(t0.saturating_add(Duration::from_secs(ANONYMISE_AFTER_S)));
        storage.apply(&drain(&mut desk)).unwrap();
        storage.apply(&[DeskCommand::RemoveLogBefore { id: 1 }]).unwrap();
        drop(storage);
        let loaded = LicenceStorage::open(dir.path()).unwrap().load().unwrap();
        let mut expected = desk.state().clone();
        expected.log.pop_front();
        assert_eq!(loaded, expected);
        assert!(loaded.log.iter().all(|e| e.anonymised && e.ip == "192.0.2.0".parse::<IpAddr>().unwrap()));
    }

    /// The seed is made once and then read back; a damaged seed file is an error, kept as is.
    #[test]
    fn the_seed_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = signing_seed(dir.path()).unwrap();
        assert_eq!(signing_seed(dir.path()).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(SEED_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(SEED_FILE), b"short").unwrap();
        assert!(signing_seed(dir.path()).unwrap_err().to_string().contains("5 bytes"));
        assert_eq!(std::fs::read(dir.path().join(SEED_FILE)).unwrap(), b"short");
    }
}

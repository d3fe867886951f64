//! `pbx appliance`: a single node on its embedded default — a data directory with one redb
//! file, no other server to install.
//!
//! Start-up order: data directory → storage (restore) → CDR writer → admin token → sockets →
//! supervisor → security-log writer → registrar → calls → licence watchdog and voucher sync
//! (when a service is configured) → privacy key and retention reaper → endpoint → transports →
//! HTTP. The core actors run under the supervisor (`crate::supervisor`), which restarts one
//! that fails from its durable state (`crate::supervisor::core_actors`). Any failure before serving names
//! what it was doing and the node exits non-zero. SIGTERM/SIGINT stop the HTTP server, then
//! the actors in the reverse of their start (the registrar, last, flushes batched binding
//! refreshes as it stops), then the CDR writer (it stores what is queued), then exit 0. A
//! supervisor that gave up (an actor failing too often) stops the node the same way, and the
//! process exits non-zero for its service manager to start it afresh.

use crate::cluster::{ClusterApi, NodeApplier, ReplicatedCdrs, ReplicatedLicence, ReplicatedStore, Replication};
use crate::config::{ClusterConfig, Config, Role};
use crate::http::{self, ApiState, CallsView};
use crate::licence::{self, HttpLicenceService};
use crate::secrets::{admin_token, restrict_permissions};
use crate::sip::transport::{self, Backlog, SipSockets};
use crate::storage::{CdrWriter, SecurityWriter, Storage};
use crate::supervisor::core_actors::{
    CallsChild, ConferencesChild, EndpointChild, ReaperChild, RegistrarChild, VoucherChild, WatchdogChild,
};
use crate::supervisor::{self, CoreActors, Supervisor, SupervisorArgs, SupervisorMsg};
use anyhow::Context;
use pbx_actors::call::LocalSip;
use pbx_actors::call::actor::{CallContext, CallLedger, CallsMsg};
use pbx_actors::call::b2bua::CallConfig;
use pbx_actors::cdr::{ActiveCall, CdrStore};
use pbx_actors::endpoint::Shard;
use pbx_actors::endpoint::actor::EndpointSink;
use pbx_actors::endpoint::limiter::SourceLimiter;
use pbx_actors::licence::{LicenceService, LicenceStore, LicenceView, VoucherConfig, WatchdogConfig};
use pbx_actors::media::pool::PortPool;
use pbx_actors::media::relay::RelayConfig;
use pbx_actors::privacy::reaper::{self, ReaperConfig};
use pbx_actors::registrar::RegistrarMsg;
use pbx_actors::shell::Current;
use pbx_actors::sip::transaction::TimerConfig;
use pbx_host::clock::SystemClock;
use pbx_host::wait_for_shutdown_signal;
use ractor::{Actor, ActorRef};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `PBX_TEST_HOOKS=1` turns on the test hooks (off by default; docs/SECURITY.md says why it is
/// safe): `POST /api/v1/debug/panic/{actor}`, which end-to-end tests use to prove supervision.
pub const TEST_HOOKS_ENV: &str = "PBX_TEST_HOOKS";

pub async fn run(config: Config, prometheus: metrics_exporter_prometheus::PrometheusHandle) -> anyhow::Result<()> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("create data directory {}", data_dir.display()))?;
    restrict_permissions(data_dir, 0o700);
    let storage = Arc::new(Storage::open(data_dir).context("open storage")?);
    let snapshot = storage.load().context("load stored state")?;
    let token = admin_token(data_dir).context("create admin token")?;
    tracing::info!(
        data_dir = %data_dir.display(),
        extensions = snapshot.extensions.len(),
        bindings = snapshot.bindings.len(),
        "state restored"
    );
    drop(snapshot);

    // Durable changes go through Raft on every node: an appliance is a cluster of one, with the
    // same code path and no links.
    let cluster = match &config.cluster {
        Some(c) => start_cluster(c, data_dir, &storage, &token).await?,
        None => start_single(data_dir, &storage, &token).await?,
    };
    if config.cluster.as_ref().is_some_and(|c| c.role == Role::Witness) {
        let served = run_witness(&config, &cluster).await;
        cluster.shutdown().await;
        return served;
    }
    let replication = cluster.replication.clone();
    // Where finished calls' records go; the calls actor takes a clone of this.
    let cdr_store: Arc<dyn CdrStore> =
        Arc::new(CdrWriter::start(Arc::new(ReplicatedCdrs(replication.clone()))).context("start CDR writer")?);

    let sockets = SipSockets::bind(config.sip_listen, config.sip_tls.as_ref().map(|t| t.listen)).await?;
    let wire = sockets.wire();
    let sip_tls = match &config.sip_tls {
        Some(tls) => Some(sip_tls_identity(tls, &config).context("SIP over TLS")?),
        None => None,
    };
    let clock = SystemClock::new();
    let test_hooks = std::env::var(TEST_HOOKS_ENV).is_ok_and(|v| v == "1");
    if test_hooks {
        tracing::warn!(
            "{TEST_HOOKS_ENV}=1: the test hooks are on (POST /api/v1/debug/panic/{{actor}}); never in production"
        );
    }

    // The core actors run under one supervisor, which restarts one that fails; everything that
    // reaches them holds a `Current`, pointed at each new incarnation.
    let (give_up_tx, mut give_up) = tokio::sync::mpsc::unbounded_channel();
    let (supervisor, supervisor_handle) =
        Actor::spawn(Some("supervisor".into()), Supervisor, SupervisorArgs { give_up: give_up_tx })
            .await
            .context("start the supervisor")?;
    let mut core = CoreActors::default();

    // Failed authentications and blocks, for the security log (category `security-log`).
    let security_log = Arc::new(SecurityWriter::start(storage.clone()).context("start security-log writer")?);
    // The SIP endpoint's shards: every core parses and runs transactions (docs/ARCHITECTURE.md).
    let sink = EndpointSink::new(config.sip.endpoint_shards());
    core.endpoint = sink.clone();
    let registrar = RegistrarChild {
        config: config.registrar.clone(),
        storage: storage.clone(),
        clock,
        store: Arc::new(ReplicatedStore(replication.clone())),
        sink: sink.clone(),
        security: Some(security_log.clone()),
        applier: cluster.applier.clone(),
        current: core.registrar.clone(),
        refresh_pushes: core.refresh_pushes.clone(),
        fence: None,
    };
    supervisor::start(&supervisor, registrar).await.map_err(anyhow::Error::msg).context("start registrar")?;

    // An entry whose number was erased is left out (erasure wins over the file; warned).
    let config_file = config.file.as_ref().map_or_else(|| "(no config file)".into(), |f| f.display().to_string());
    if config.cluster.is_some() {
        // In a cluster the declared extensions are written through Raft, which needs a quorum
        // that may form only after this node is up: write them in the background.
        let (registrar, extensions) = (core.registrar.clone(), config.extensions.clone());
        let (replication, key) = (replication.clone(), cluster.applier.key().clone());
        tokio::spawn(async move {
            let extensions =
                match crate::privacy::config_extensions_to_apply(&replication, &key, &extensions, &config_file).await {
                    Ok(e) => e,
                    Err(reason) => return tracing::error!(%reason, "config: extensions not stored"),
                };
            for ext in &extensions {
                let result = match registrar.get() {
                    Some(registrar) => put_extension(&registrar, ext, Duration::from_secs(60)).await,
                    None => Err("the registrar is not running".into()),
                };
                if let Err(reason) = result {
                    tracing::error!(number = %ext.number, %reason, "config: extension not stored");
                }
            }
        });
    } else {
        let registrar = core.registrar.get().context("the registrar just started")?;
        let key = cluster.applier.key();
        let extensions =
            crate::privacy::config_extensions_to_apply(&replication, key, &config.extensions, &config_file)
                .await
                .map_err(|reason| anyhow::anyhow!("config: extensions: {reason}"))?;
        for ext in &extensions {
            put_extension(&registrar, ext, Duration::from_secs(10))
                .await
                .map_err(|reason| anyhow::anyhow!("config: extension {:?}: {reason}", ext.number))?;
        }
    }

    // Via and Contact name where pbx is reached: the listen address, or the media address with
    // the SIP port when listening on a wildcard.
    let sip_address = advertised(config.sip_listen, config.calls.media_address);
    let timers = TimerConfig::default();
    // Before the first call starts the media workers.
    pbx_actors::media::actor::set_media_io(config.calls.media_io);
    let mut ports = PortPool::new(config.rtp_ports.low, config.rtp_ports.high, rand::random());
    let range_pairs = ports.capacity();
    // No more pairs at once than the open-file limit allows (see `limits`).
    let soft = crate::sip::limits::open_file_limit();
    ports.limit_leases(crate::sip::limits::rtp_pairs_within(soft, crate::sip::transport::tcp_connections_cap(soft)));
    // Ended calls' sockets are parked for the next calls (media/pool.rs, **Parking**).
    ports.park_sets();
    tracing::info!(pairs = range_pairs, at_once = ports.capacity(), "RTP port pool");
    // Gauges exist from the start, so "none in use" reads 0 rather than absent.
    for gauge in ["pbx_rtp_ports_in_use", "pbx_rtp_ports_parked", "pbx_calls_active", "pbx_call_legs_active"] {
        metrics::gauge!(gauge).set(0.0);
    }
    let ports = Arc::new(Mutex::new(ports));
    // The licence before the calls and rooms it gates (push, conferences).
    let licence_store: Arc<dyn LicenceStore> = Arc::new(ReplicatedLicence(replication.clone()));
    let licence = start_licence(&config, &storage, licence_store, clock, &supervisor, &mut core).await?;
    let push = start_push(&config, &core, &replication, clock, &licence).await?;
    let context = CallContext {
        config: CallConfig {
            no_answer: Duration::from_secs(config.calls.no_answer_timeout_s.into()),
            timers,
            local_sip: LocalSip {
                address: sip_address,
                tls: config.sip_tls.as_ref().map(|t| advertised(t.listen, config.calls.media_address)),
            },
            bugs: Default::default(),
            park_timeout: Duration::from_secs(config.calls.park_timeout_s.into()),
        },
        clock: Arc::new(clock),
        sip: Arc::new(sink.clone()),
        cdrs: cdr_store.clone(),
        ports: ports.clone(),
        media_ip: config.calls.media_address,
        relay: RelayConfig { inactivity: Duration::from_secs(config.calls.rtp_timeout_s.into()) },
        conferences: core.conferences.clone(),
        media_policy: Arc::new(config.media_policy()),
        push,
        transfers: Some(Arc::new(RegistrarTransfers(core.registrar.clone()))),
    };
    let calls = CallsChild { context, ledger: CallLedger::default(), current: core.calls.clone() };
    supervisor::start(&supervisor, calls).await.map_err(anyhow::Error::msg).context("start calls")?;

    // Conference rooms: after the licence, which gates them.
    for gauge in ["pbx_conference_rooms_active", "pbx_conference_participants"] {
        metrics::gauge!(gauge).set(0.0);
    }
    metrics::counter!("pbx_mixer_frame_overruns_total").increment(0);
    let conferences = ConferencesChild {
        rooms: config.conferences.clone(),
        mixer: config.mixer,
        ports,
        media_ip: config.calls.media_address,
        clock,
        licence: licence.view.clone(),
        inactivity: Duration::from_secs(config.calls.rtp_timeout_s.into()),
        sink: Arc::new(crate::conference::Participations::new(core.registrar.clone(), replication.clone())),
        current: core.conferences.clone(),
    };
    supervisor::start(&supervisor, conferences).await.map_err(anyhow::Error::msg).context("start conferences")?;
    if !config.conferences.is_empty() {
        tracing::info!(rooms = config.conferences.len(), "conference rooms ready");
    }

    let privacy = actix_web::web::Data::new(
        crate::privacy::Privacy::open(data_dir, config.privacy.periods.clone(), config.privacy.operator.clone())
            .context("privacy key")?,
    );
    let reaper_config = ReaperConfig {
        rules: reaper::rules(&config.privacy.periods),
        interval: Duration::from_secs(config.privacy.reaper_interval_s.into()),
        batch: config.privacy.reaper_batch,
        ..ReaperConfig::default()
    };
    let reaper = ReaperChild { config: reaper_config, clock, storage: storage.clone(), current: core.reaper.clone() };
    supervisor::start(&supervisor, reaper).await.map_err(anyhow::Error::msg).context("start retention reaper")?;

    // One limiter for all shards: a source is bounded as a whole (docs/SECURITY.md).
    let limiter = SourceLimiter::shared(config.sip.source_limit);
    let mut backlogs = Vec::new();
    for index in 0..sink.count() {
        let backlog = Backlog::default();
        backlogs.push(backlog.clone());
        let endpoint = EndpointChild {
            clock,
            wire: wire.clone(),
            registrar: core.registrar.clone(),
            calls: core.calls.clone(),
            timers,
            limiter: limiter.clone(),
            backlog,
            licence: licence.view.clone(),
            emergency_numbers: config.calls.emergency_numbers.clone(),
            sink: sink.clone(),
            shard: Shard { index, count: sink.count() },
        };
        supervisor::start(&supervisor, endpoint)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("start SIP endpoint shard {index}"))?;
    }
    tracing::info!(shards = sink.count(), "SIP endpoint started");
    let inbound = transport::Inbound::new(sink, backlogs);

    // The softphone proxy, dialled out to (`[proxy]`): its phones enter the same endpoint.
    let proxy = match &config.proxy {
        Some(proxy) => {
            let args = crate::proxy_link::ProxyArgs {
                config: proxy.clone(),
                serial: licence.serial.clone(),
                licence: licence.view.clone(),
                wire: wire.clone(),
                inbound: inbound.clone(),
                media_ip: config.calls.media_address,
            };
            Some(crate::proxy_link::start(args).context("softphone proxy ([proxy])")?)
        }
        None => None,
    };
    let udp_task = tokio::spawn(transport::serve_udp(sockets.udp.clone(), inbound.clone()));
    let slots = transport::StreamSlots::new();
    let tcp_task = tokio::spawn(transport::serve_tcp(sockets.tcp, inbound.clone(), wire.clone(), slots.clone()));
    let tls_task = match (sockets.tls, &sip_tls) {
        (Some(listener), Some((server, _))) => {
            Some(tokio::spawn(transport::serve_tls(listener, inbound, wire.clone(), slots, server.clone())))
        }
        _ => None,
    };

    let state = ApiState {
        token,
        registrar: core.registrar.clone(),
        endpoint: core.endpoint.clone(),
        prometheus,
        clock,
        storage: storage.clone(),
        calls: Arc::new(CallsList(core.calls.clone())),
        licence: licence.view.clone(),
        vouchers: core.vouchers.clone(),
        serial: licence.serial.clone(),
        cluster: replication.clone(),
        core: core.clone(),
        test_hooks,
        sip: Arc::new(http::SipInfo {
            udp: config.sip_listen,
            tcp: config.sip_listen,
            tls: config
                .sip_tls
                .as_ref()
                .zip(sip_tls.as_ref())
                .map(|(t, (_, info))| http::SipTlsInfo { listen: t.listen, ..info.clone() }),
        }),
        proxy: proxy.as_ref().map(|(handle, _)| handle.clone()),
    };
    let cluster_api = actix_web::web::Data::new(cluster.api.clone());
    let server = actix_web::HttpServer::new(move || {
        let app = actix_web::App::new()
            .app_data(actix_web::web::Data::new(state.clone()))
            .app_data(cluster_api.clone())
            .app_data(privacy.clone())
            .configure(http::routes)
            .configure(crate::privacy::routes);
        if test_hooks { app.configure(http::test_hook_routes) } else { app }
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(config.http_listen)
    .with_context(|| format!("bind admin HTTP {}", config.http_listen))?
    .run();
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);
    tracing::info!(
        sip = %config.sip_listen,
        sip_tls = %config.sip_tls.as_ref().map_or("off".to_string(), |t| t.listen.to_string()),
        http = %config.http_listen,
        "pbx appliance ready"
    );

    // A signal stops the node cleanly (exit 0); a supervisor that gave up stops it too, and the
    // process exits non-zero so that its service manager starts it afresh.
    let gave_up = tokio::select! {
        signal = wait_for_shutdown_signal() => { signal?; None }
        reason = give_up.recv() => reason,
    };
    tracing::info!("shutting down");
    server_handle.stop(true).await;
    let _ = server_task.await;
    udp_task.abort();
    tcp_task.abort();
    if let Some((_, task)) = proxy {
        task.abort();
    }
    if let Some(task) = tls_task {
        task.abort();
    }
    // The core actors stop in the reverse of their start: the endpoint first, the registrar
    // (which flushes batched binding refreshes) last. Calls in progress end with the node
    // (their phones see no more answers); their actors and ports go with the calls actor.
    let _ = supervisor.call(SupervisorMsg::Shutdown, None).await;
    let _ = supervisor_handle.await;
    cluster.shutdown().await;
    drop(security_log);
    // The last handle once the actors are gone: dropping it stores what is queued and joins the
    // writer's thread.
    drop(cdr_store);
    match gave_up {
        None => {
            tracing::info!("stopped");
            Ok(())
        }
        Some(reason) => Err(anyhow::anyhow!(reason)),
    }
}

/// How calls look a transfer's target up: the registrar's `TransferRoute`, off the call's loop.
struct RegistrarTransfers(pbx_actors::shell::Current<RegistrarMsg>);

/// How long a transfer's lookup may take before the REFER is refused.
const TRANSFER_LOOKUP_WAIT: Duration = Duration::from_secs(5);

impl pbx_actors::call::actor::TransferPort for RegistrarTransfers {
    fn route(&self, transferee: String, number: String, reply: pbx_actors::call::actor::TransferReply) {
        let Some(registrar) = self.0.get() else {
            return reply(Err((500, "Server Internal Error (registrar not running)".into())));
        };
        tokio::spawn(async move {
            let asked = registrar
                .call(|r| RegistrarMsg::TransferRoute { transferee, number, reply: r }, Some(TRANSFER_LOOKUP_WAIT))
                .await;
            match asked {
                Ok(ractor::rpc::CallResult::Success(result)) => reply(result),
                _ => reply(Err((500, "Server Internal Error (registrar did not answer)".into()))),
            }
        });
    }
}

/// Stores one declared extension through the registrar; `Err` names the reason.
async fn put_extension(
    registrar: &ActorRef<RegistrarMsg>,
    ext: &crate::config::ExtensionDecl,
    timeout: Duration,
) -> Result<(), String> {
    let result = registrar
        .call(
            |reply| RegistrarMsg::PutExtension {
                number: ext.number.clone(),
                password: ext.password.clone(),
                display_name: ext.display_name.clone(),
                reply,
            },
            Some(timeout),
        )
        .await;
    match result {
        Ok(ractor::rpc::CallResult::Success(r)) => r.map_err(|e| e.to_string()),
        _ => Err("the registrar did not answer".into()),
    }
}

/// This node in its cluster: Raft (links on `listen`), the actor mesh (links on the next
/// port), and what applies committed entries here.
struct ClusterNode {
    api: ClusterApi,
    applier: Arc<NodeApplier>,
    replication: Replication,
    compactor: tokio::task::JoinHandle<()>,
}

impl ClusterNode {
    fn new(
        replica: pbx_cluster::raft::Replica,
        applier: Arc<NodeApplier>,
        token: &str,
        mesh: Option<pbx_cluster::mesh::Mesh>,
    ) -> ClusterNode {
        let replica = Arc::new(replica);
        let replication = Replication::new(replica.clone(), applier.clone(), tokio::runtime::Handle::current());
        let compactor = crate::cluster::start_compactor(replica.clone(), applier.clone());
        let api = ClusterApi { token: token.to_string(), replica, mesh: Arc::new(Mutex::new(mesh)) };
        ClusterNode { api, applier, replication, compactor }
    }

    async fn shutdown(self) {
        let mesh = self.api.mesh.lock().expect("mesh lock").take();
        if let Some(mesh) = mesh {
            mesh.shutdown().await;
        }
        self.compactor.abort();
        drop(self.replication);
        match Arc::try_unwrap(self.api.replica) {
            Ok(replica) => replica.shutdown().await,
            Err(replica) => {
                let _ = replica.raft().shutdown().await;
            }
        }
    }
}

/// The port after `addr`'s: where a member's actor mesh listens, next to its Raft links.
fn mesh_address(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let port = addr.port().checked_add(1).with_context(|| format!("no port after {addr} for the actor mesh"))?;
    Ok(SocketAddr::new(addr.ip(), port))
}

async fn start_cluster(
    c: &ClusterConfig,
    data_dir: &Path,
    storage: &Arc<Storage>,
    token: &str,
) -> anyhow::Result<ClusterNode> {
    use pbx_cluster::identity::{NodeIdentity, NodeName};
    use pbx_cluster::mesh::{Backoff, Mesh, Peer};
    use pbx_cluster::raft::{Replica, ReplicaConfig, node_id, store};
    let identity = NodeIdentity::load(&c.certs, &c.node)
        .with_context(|| format!("config: cluster.certs: the certificate of node {}", c.node))?;
    let me = c.members.iter().find(|m| m.name == c.node.as_str()).context("this node among the members")?.clone();
    let mut replica_config = ReplicaConfig::new(me, c.members.clone());
    replica_config.heartbeat = c.heartbeat;
    replica_config.election_min = c.election_min;
    replica_config.election_max = c.election_max;
    let endpoint = pbx_cluster::link::endpoint(&identity, c.listen).context("cluster links")?;
    let db = store::open(data_dir).map_err(|e| anyhow::anyhow!("open the Raft log: {e}"))?;
    let key = crate::privacy::PrivacyKey::open(data_dir).context("privacy key")?;
    let applier = NodeApplier::new(node_id(c.node.as_str()), storage.clone(), key);
    let replica = Replica::start(replica_config, Some(endpoint), db, applier.clone())
        .await
        .map_err(|e| anyhow::anyhow!("start Raft: {e}"))?;
    let mut peers = Vec::new();
    for m in &c.members {
        let addr: SocketAddr = m.address.parse().context("member address")?;
        peers.push(Peer { name: NodeName::new(&m.name).context("member name")?, addr: mesh_address(addr)? });
    }
    let mesh = Mesh::start(&identity, mesh_address(c.listen)?, &peers, Backoff::default())
        .await
        .context("start the actor mesh")?;
    tracing::info!(node = %c.node, raft = %c.listen, mesh = %mesh.local_addr(), members = c.members.len(), "cluster node started");
    Ok(ClusterNode::new(replica, applier, token, Some(mesh)))
}

/// The appliance: a cluster of one, its only member named `appliance`, with no links.
async fn start_single(data_dir: &Path, storage: &Arc<Storage>, token: &str) -> anyhow::Result<ClusterNode> {
    use pbx_cluster::raft::{Member, Replica, ReplicaConfig, node_id, store};
    let me = Member { name: "appliance".into(), address: String::new(), witness: false };
    let db = store::open(data_dir).map_err(|e| anyhow::anyhow!("open the Raft log: {e}"))?;
    let key = crate::privacy::PrivacyKey::open(data_dir).context("privacy key")?;
    let applier = NodeApplier::new(node_id(&me.name), storage.clone(), key);
    let replica = Replica::start(ReplicaConfig::new(me.clone(), vec![me]), None, db, applier.clone())
        .await
        .map_err(|e| anyhow::anyhow!("start Raft: {e}"))?;
    Ok(ClusterNode::new(replica, applier, token, None))
}

/// A witness: votes in Raft and answers the cluster status; no SIP, no media.
async fn run_witness(config: &Config, node: &ClusterNode) -> anyhow::Result<()> {
    let api = actix_web::web::Data::new(node.api.clone());
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(api.clone())
            .route("/healthz", actix_web::web::get().to(|| async { "ok\n" }))
            .route("/readyz", actix_web::web::get().to(http::readyz_witness))
            .configure(crate::http::cluster_routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(config.http_listen)
    .with_context(|| format!("bind admin HTTP {}", config.http_listen))?
    .run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    tracing::info!(http = %config.http_listen, "pbx witness ready (votes, serves no SIP or media)");
    wait_for_shutdown_signal().await?;
    handle.stop(true).await;
    let _ = task.await;
    Ok(())
}

/// The licence side of a running node.
struct Licensing {
    serial: String,
    /// `None`: no licence service configured, nothing is gated.
    view: Option<LicenceView>,
}

/// Starts the licence watchdog and the voucher sync under `supervisor` when a licence service
/// is configured, from what the last run stored (so an outage at start changes nothing within
/// the grace), and records them in `core`.
async fn start_licence(
    config: &Config,
    storage: &Arc<Storage>,
    store: Arc<dyn LicenceStore>,
    clock: SystemClock,
    supervisor: &ActorRef<SupervisorMsg>,
    core: &mut CoreActors,
) -> anyhow::Result<Licensing> {
    let serial = licence::serial(config.licence.serial.as_deref(), &config.data_dir).context("serial number")?;
    let Some(service_config) = &config.licence.service else {
        tracing::info!(%serial, "no licence service configured: nothing is gated by a licence");
        return Ok(Licensing { serial, view: None });
    };
    let service: Arc<dyn LicenceService> =
        Arc::new(HttpLicenceService::new(service_config).map_err(|e| anyhow::anyhow!("config: {e}"))?);
    let view = LicenceView::new();
    let l = &config.licence;
    let mut watchdog = WatchdogConfig::new(serial.clone(), service_config.public_key);
    watchdog.check_interval = Duration::from_secs(u64::from(l.check_interval_h) * 3600);
    watchdog.retry_interval = Duration::from_secs(u64::from(l.retry_interval_h) * 3600);
    watchdog.grace = Duration::from_secs(u64::from(l.grace_days) * 86_400);
    let mut vouchers = VoucherConfig::new(serial.clone(), service_config.public_key);
    vouchers.interval = Duration::from_secs(u64::from(l.voucher_interval_h) * 3600);
    vouchers.retry = watchdog.retry_interval;
    let (watchdog_current, voucher_current) = (Current::default(), Current::default());
    let watchdog = WatchdogChild {
        config: watchdog,
        clock,
        service: service.clone(),
        store: store.clone(),
        storage: storage.clone(),
        view: view.clone(),
        current: watchdog_current.clone(),
    };
    supervisor::start(supervisor, watchdog).await.map_err(anyhow::Error::msg).context("start licence watchdog")?;
    let vouchers = VoucherChild {
        config: vouchers,
        clock,
        service,
        store,
        storage: storage.clone(),
        view: view.clone(),
        current: voucher_current.clone(),
    };
    supervisor::start(supervisor, vouchers).await.map_err(anyhow::Error::msg).context("start voucher sync")?;
    core.watchdog = Some(watchdog_current);
    core.vouchers = Some(voucher_current);
    tracing::info!(%serial, service = %service_config.url, "licence watchdog and voucher sync started");
    Ok(Licensing { serial, view: Some(view) })
}

/// Calls in progress, from the calls actor.
struct CallsList(Current<CallsMsg>);

impl CallsView for CallsList {
    fn active(&self) -> Pin<Box<dyn Future<Output = Option<Vec<ActiveCall>>> + Send + '_>> {
        Box::pin(async move {
            let calls = self.0.get()?;
            match calls.call(CallsMsg::List, Some(Duration::from_secs(4))).await {
                Ok(ractor::rpc::CallResult::Success(list)) => Some(list),
                _ => None,
            }
        })
    }
}

/// Where pbx is reached at a listen address: itself, or the media address with its port when it
/// is a wildcard (Via and Contact must name a host a phone can send to).
fn advertised(listen: SocketAddr, media_address: std::net::IpAddr) -> SocketAddr {
    if listen.ip().is_unspecified() { SocketAddr::new(media_address, listen.port()) } else { listen }
}

/// SIP over TLS's server configuration and what the API says of it. The self-signed default
/// is made at first start for the address phones are told (and `localhost`); its fingerprint
/// is logged, so an operator can give it to phones that pin it.
fn sip_tls_identity(
    tls: &crate::config::SipTls,
    config: &Config,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, http::SipTlsInfo)> {
    let names = tls.self_signed.then(|| {
        let host = advertised(tls.listen, config.calls.media_address).ip().to_string();
        let mut names = vec![host];
        if names[0] != "localhost" {
            names.push("localhost".into());
        }
        names
    });
    let identity = pbx_host::tls::identity(&tls.certificate, &tls.key, names.as_deref())?;
    if identity.created {
        tracing::info!(path = %tls.certificate.display(), ?names, "self-signed SIP TLS certificate created");
    }
    tracing::info!(
        listen = %tls.listen,
        fingerprint_sha256 = %identity.fingerprint,
        self_signed = tls.self_signed,
        "SIP over TLS certificate"
    );
    let server = pbx_host::tls::server_config(&identity, &[])?;
    let info = http::SipTlsInfo {
        listen: tls.listen,
        certificate: tls.certificate.display().to_string(),
        fingerprint_sha256: identity.fingerprint,
        self_signed: tls.self_signed,
    };
    Ok((Arc::new(server), info))
}

/// Push dispatch (RFC 8599) when `[push]` names a provider: its actor, and the calls' port to
/// it (gated by the licence's `push` feature). Credentials that cannot be read stop the start,
/// naming the file.
async fn start_push(
    config: &Config,
    core: &CoreActors,
    replication: &Replication,
    clock: SystemClock,
    licence: &Licensing,
) -> anyhow::Result<Option<Arc<dyn pbx_actors::call::wake::PushPort>>> {
    use crate::push_dispatch::{NodePush, PushArgs, PushDispatchActor, Senders};
    let Some(push) = &config.push else { return Ok(None) };
    let senders = Senders::from_config(push)?;
    let args = PushArgs {
        senders,
        registrar: core.registrar.clone(),
        records: Arc::new(crate::push::PushRecords::new(replication.clone())),
        clock: Arc::new(clock),
    };
    let (actor, _) =
        Actor::spawn(Some("push-dispatch".into()), PushDispatchActor, args).await.context("start push dispatch")?;
    // Refresh pushes (RFC 8599 §5.6): licensed like calls' pushes, and sent by one node only,
    // the cluster's leader (the appliance alone leads itself).
    let (refresher, view, replica) = (actor.clone(), licence.view.clone(), replication.replica.clone());
    core.refresh_pushes.set(Box::new(move |binding| {
        let licensed = view.as_ref().is_none_or(|view| view.effective().has(pbx_actors::licence::Feature::Push));
        if licensed && replica.is_leader() {
            let _ = refresher.cast(crate::push_dispatch::PushMsg::Refresh { binding });
        }
    }));
    tracing::info!(
        providers = ?push.providers(),
        wait_s = push.wait_s,
        refresh_before_s = push.refresh_before_s,
        "push dispatch ready"
    );
    Ok(Some(Arc::new(NodePush { actor, wait: Duration::from_secs(push.wait_s.into()), licence: licence.view.clone() })))
}

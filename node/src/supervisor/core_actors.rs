//! The node's core actors as children of its supervisor (`crate::supervisor`): how each is
//! started — and started again after it failed — from its durable state, and who is pointed
//! at the new incarnation. Everything that reaches a core actor holds a [`Current`], so a
//! restart is one `set`.
//!
//! | actor | a restart starts from | who learns of it |
//! | --- | --- | --- |
//! | registrar | extensions and bindings reloaded from storage (what a crash would keep; a refresh still batched is lost, as in a crash); nonces, failure counts and blocks start empty | endpoint, API, cluster applier (reconnected; changes applied meanwhile are delivered) |
//! | calls | the running calls' ledger: their CDRs are written `failed`, their legs hang up | endpoint, API |
//! | licence watchdog, voucher sync | the licence and unlocks stored | API, readiness |
//! | reaper | its configuration (its progress is in storage) | readiness |
//! | endpoint (each shard alone) | an empty transaction table (UDP peers retransmit) | transports, registrar and legs (`EndpointSink`, that shard's slot), API; the calls actor ends the calls in progress |

use crate::cluster::NodeApplier;
use crate::sip::transport::Backlog;
use crate::storage::Storage;
use crate::supervisor::{Child, StartFuture};
use pbx_actors::call::actor::{CallContext, CallLedger, CallsActor, CallsArgs, CallsMsg};
use pbx_actors::conference::actor::{ConferencesActor, ConferencesArgs, ConferencesMsg, ParticipationSink, RoomDecl};
use pbx_actors::endpoint::actor::{EndpointSink, Wire};
use pbx_actors::endpoint::limiter::SharedLimiter;
use pbx_actors::endpoint::{EndpointActor, EndpointArgs, Shard};
use pbx_actors::licence::{
    LicenceService, LicenceStore, LicenceView, VoucherActor, VoucherArgs, VoucherConfig, VoucherMsg, WatchdogActor,
    WatchdogArgs, WatchdogConfig, WatchdogMsg,
};
use pbx_actors::media::mixer::MixerConfig;
use pbx_actors::media::pool::PortPool;
use pbx_actors::privacy::actor::{ReaperActor, ReaperArgs, ReaperMsg};
use pbx_actors::privacy::reaper::ReaperConfig;
use pbx_actors::registrar::{
    RegistrarActor, RegistrarArgs, RegistrarCommand, RegistrarConfig, RegistrarMsg, RegistrarStore,
};
use pbx_actors::shell::Current;
use pbx_actors::sip::transaction::TimerConfig;
use pbx_host::clock::SystemClock;
use ractor::{Actor, ActorCell};
use std::sync::{Arc, Mutex, PoisonError};

/// Runs blocking storage work off the runtime's threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(work).await.map_err(|e| format!("blocking task: {e}"))
}

pub struct RegistrarChild {
    pub config: RegistrarConfig,
    pub storage: Arc<Storage>,
    pub clock: SystemClock,
    /// Where its changes are stored (through Raft).
    pub store: Arc<dyn RegistrarStore>,
    pub sink: EndpointSink,
    pub security: Option<Arc<dyn pbx_actors::privacy::SecurityLog>>,
    pub applier: Arc<NodeApplier>,
    pub current: Current<RegistrarMsg>,
    pub refresh_pushes: pbx_actors::registrar::RefreshPushes,
    /// The running incarnation's store, closed before the next one loads.
    pub fence: Option<Arc<Fenced>>,
}

impl Child for RegistrarChild {
    fn name(&self) -> &'static str {
        "registrar"
    }

    fn start(&mut self, supervisor: ActorCell, restart: bool) -> StartFuture<'_> {
        Box::pin(async move {
            // The failed incarnation's writer thread may still be storing: let its write in
            // progress finish and refuse the rest, so what is loaded next is all there is.
            if let Some(old) = self.fence.take() {
                blocking(move || old.close()).await?;
            }
            // Other nodes' changes wait from here until the new incarnation is connected.
            self.applier.disconnect();
            let storage = self.storage.clone();
            let snapshot = blocking(move || storage.load()).await?.map_err(|e| format!("load stored state: {e}"))?;
            let (extensions, bindings) = (snapshot.extensions.len(), snapshot.bindings.len());
            let fence = Arc::new(Fenced::new(self.store.clone()));
            let args = RegistrarArgs {
                config: self.config.clone(),
                // The nonce key and randomness: 256 bits straight from the OS, fresh for every
                // incarnation (nonces of a failed one are answered stale and re-challenged).
                secret: os_secret().map_err(|e| format!("read 256 bits of OS randomness for the registrar: {e}"))?,
                extensions: snapshot.extensions,
                bindings: snapshot.bindings,
                forwarding: snapshot.forwarding,
                logged_out: snapshot.logged_out,
                clock: Arc::new(self.clock),
                store: fence.clone(),
                sink: Arc::new(self.sink.clone()),
                security: self.security.clone(),
                refresh_pushes: self.refresh_pushes.clone(),
            };
            let (registrar, _) = Actor::spawn_linked(Some("registrar".into()), RegistrarActor, args, supervisor)
                .await
                .map_err(|e| e.to_string())?;
            self.fence = Some(fence);
            self.current.set(registrar.clone());
            self.applier.connect(registrar.clone());
            if restart {
                tracing::warn!(extensions, bindings, "registrar restarted from storage");
            }
            Ok(registrar.get_cell())
        })
    }
}

/// The registrar's store as one incarnation sees it. Closed when the supervisor restarts the
/// registrar — after the write in progress, if any, has finished — so that the failed
/// incarnation's writer thread stores nothing the next one did not load: its REGISTERs still
/// queued are answered 500 (never 200 for a binding not stored) and the phones retry.
pub struct Fenced {
    inner: Arc<dyn RegistrarStore>,
    open: Mutex<bool>,
}

impl Fenced {
    fn new(inner: Arc<dyn RegistrarStore>) -> Fenced {
        Fenced { inner, open: Mutex::new(true) }
    }

    /// Waits for the write in progress, then refuses every later one.
    fn close(&self) {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }
}

impl RegistrarStore for Fenced {
    fn apply(&self, commands: &[RegistrarCommand]) -> Result<(), pbx_actors::store::StoreError> {
        // Held across the write: `close` waits for it. Only this incarnation's one writer
        // thread ever applies, so nothing else waits here.
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if !*open {
            return Err(pbx_actors::store::StoreError::Stopped(
                "the registrar was restarted: a write of the failed incarnation is refused".into(),
            ));
        }
        self.inner.apply(commands)
    }
}

pub struct CallsChild {
    pub context: CallContext,
    pub ledger: CallLedger,
    pub current: Current<CallsMsg>,
}

impl Child for CallsChild {
    fn name(&self) -> &'static str {
        "calls"
    }

    fn start(&mut self, supervisor: ActorCell, _restart: bool) -> StartFuture<'_> {
        Box::pin(async move {
            let args = CallsArgs { context: self.context.clone(), seed: rand::random(), ledger: self.ledger.clone() };
            let (calls, _) = Actor::spawn_linked(Some("calls".into()), CallsActor, args, supervisor)
                .await
                .map_err(|e| e.to_string())?;
            self.current.set(calls.clone());
            Ok(calls.get_cell())
        })
    }
}

pub struct ReaperChild {
    pub config: ReaperConfig,
    pub clock: SystemClock,
    pub storage: Arc<Storage>,
    pub current: Current<ReaperMsg>,
}

impl Child for ReaperChild {
    fn name(&self) -> &'static str {
        "reaper"
    }

    fn start(&mut self, supervisor: ActorCell, _restart: bool) -> StartFuture<'_> {
        Box::pin(async move {
            let args =
                ReaperArgs { config: self.config.clone(), clock: Arc::new(self.clock), store: self.storage.clone() };
            let (reaper, _) = Actor::spawn_linked(Some("reaper".into()), ReaperActor, args, supervisor)
                .await
                .map_err(|e| e.to_string())?;
            self.current.set(reaper.clone());
            Ok(reaper.get_cell())
        })
    }
}

pub struct WatchdogChild {
    pub config: WatchdogConfig,
    pub clock: SystemClock,
    pub service: Arc<dyn LicenceService>,
    pub store: Arc<dyn LicenceStore>,
    pub storage: Arc<Storage>,
    pub view: LicenceView,
    pub current: Current<WatchdogMsg>,
}

impl Child for WatchdogChild {
    fn name(&self) -> &'static str {
        "licence-watchdog"
    }

    fn start(&mut self, supervisor: ActorCell, _restart: bool) -> StartFuture<'_> {
        Box::pin(async move {
            let storage = self.storage.clone();
            let (stored, _) =
                blocking(move || storage.load_licence()).await?.map_err(|e| format!("load the stored licence: {e}"))?;
            let args = WatchdogArgs {
                config: self.config.clone(),
                clock: Arc::new(self.clock),
                service: self.service.clone(),
                store: self.store.clone(),
                stored,
                view: self.view.clone(),
            };
            let (watchdog, _) = Actor::spawn_linked(Some("licence-watchdog".into()), WatchdogActor, args, supervisor)
                .await
                .map_err(|e| e.to_string())?;
            self.current.set(watchdog.clone());
            Ok(watchdog.get_cell())
        })
    }
}

pub struct VoucherChild {
    pub config: VoucherConfig,
    pub clock: SystemClock,
    pub service: Arc<dyn LicenceService>,
    pub store: Arc<dyn LicenceStore>,
    pub storage: Arc<Storage>,
    pub view: LicenceView,
    pub current: Current<VoucherMsg>,
}

impl Child for VoucherChild {
    fn name(&self) -> &'static str {
        "voucher-sync"
    }

    fn start(&mut self, supervisor: ActorCell, _restart: bool) -> StartFuture<'_> {
        Box::pin(async move {
            let storage = self.storage.clone();
            let (_, stored) =
                blocking(move || storage.load_licence()).await?.map_err(|e| format!("load the stored unlocks: {e}"))?;
            let args = VoucherArgs {
                config: self.config.clone(),
                clock: Arc::new(self.clock),
                service: self.service.clone(),
                store: self.store.clone(),
                stored,
                view: self.view.clone(),
            };
            let (vouchers, _) = Actor::spawn_linked(Some("voucher-sync".into()), VoucherActor, args, supervisor)
                .await
                .map_err(|e| e.to_string())?;
            self.current.set(vouchers.clone());
            Ok(vouchers.get_cell())
        })
    }
}

/// One shard of the SIP endpoint (`pbx_actors::endpoint::shard`); each is a child of its own,
/// restarted alone.
pub struct EndpointChild {
    pub clock: SystemClock,
    pub wire: Arc<dyn Wire>,
    pub registrar: Current<RegistrarMsg>,
    pub calls: Current<CallsMsg>,
    pub timers: TimerConfig,
    /// Shared by all shards: a source is bounded as a whole.
    pub limiter: SharedLimiter,
    /// This shard's backlog.
    pub backlog: Backlog,
    pub licence: Option<LicenceView>,
    pub emergency_numbers: Vec<String>,
    /// The sharded endpoint; this child keeps its slot `shard.index` pointed at its incarnation.
    pub sink: EndpointSink,
    pub shard: Shard,
}

impl Child for EndpointChild {
    fn name(&self) -> &'static str {
        // Every shard: restarts are counted for the endpoint as a whole.
        "endpoint"
    }

    fn start(&mut self, supervisor: ActorCell, restart: bool) -> StartFuture<'_> {
        Box::pin(async move {
            // What the failed incarnation had queued is gone with its mailbox.
            self.backlog.reset();
            let args = EndpointArgs {
                clock: Arc::new(self.clock),
                wire: self.wire.clone(),
                registrar: self.registrar.clone(),
                calls: self.calls.clone(),
                timers: self.timers,
                // A fresh CSPRNG key per incarnation: leg ids never repeat across restarts.
                seed: rand::random(),
                shard: self.shard,
                sink: self.sink.clone(),
                limiter: self.limiter.clone(),
                inbound_backlog: self.backlog.0.clone(),
                licence: self.licence.clone(),
                emergency_numbers: self.emergency_numbers.clone(),
            };
            // ractor names are unique: shard 0 keeps the name one endpoint had.
            let name = match self.shard.index {
                0 => "endpoint".to_string(),
                n => format!("endpoint-{n}"),
            };
            let (endpoint, _) =
                Actor::spawn_linked(Some(name), EndpointActor, args, supervisor).await.map_err(|e| e.to_string())?;
            self.sink.connect(self.shard.index, endpoint.clone());
            if restart {
                // Its transactions are gone: the calls in progress end through the new one.
                let _ = self.calls.cast(CallsMsg::EndpointRestarted);
            }
            Ok(endpoint.get_cell())
        })
    }
}

/// 256 bits from the operating system's CSPRNG.
fn os_secret() -> Result<[u8; 32], rand::rand_core::OsError> {
    let mut secret = [0u8; 32];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut secret)?;
    Ok(secret)
}

/// The node's conference rooms (`[[conferences]]`): the registry actor, whose rooms are its
/// linked children (a registry that fails takes its rooms, and their ports, with it).
pub struct ConferencesChild {
    pub rooms: Vec<RoomDecl>,
    pub mixer: MixerConfig,
    pub ports: Arc<Mutex<PortPool>>,
    pub media_ip: std::net::IpAddr,
    pub clock: SystemClock,
    pub licence: Option<LicenceView>,
    pub inactivity: std::time::Duration,
    pub sink: Arc<dyn ParticipationSink>,
    pub current: Current<ConferencesMsg>,
}

impl Child for ConferencesChild {
    fn name(&self) -> &'static str {
        "conferences"
    }

    fn start(&mut self, supervisor: ActorCell, _restart: bool) -> StartFuture<'_> {
        Box::pin(async move {
            let args = ConferencesArgs {
                rooms: self.rooms.clone(),
                mixer: self.mixer,
                ports: self.ports.clone(),
                media_ip: self.media_ip,
                clock: Arc::new(self.clock),
                licence: self.licence.clone(),
                inactivity: self.inactivity,
                sink: self.sink.clone(),
                seed: rand::random(),
            };
            let (actor, _) = Actor::spawn_linked(Some("conferences".into()), ConferencesActor, args, supervisor)
                .await
                .map_err(|e| e.to_string())?;
            self.current.set(actor.clone());
            Ok(actor.get_cell())
        })
    }
}

//! The ractor shells of the licence [`Watchdog`] and the [`VoucherSync`]: they feed the
//! machines the clock and the licence service's answers, store what the machines persist, log
//! and count their events, and publish a [`LicenceView`] the rest of pbx reads synchronously.
//!
//! The service is a blocking port ([`LicenceService`]): the node implements it with an HTTPS
//! client, tests with a fake. A shell never calls it in `handle`: each call runs under
//! `spawn_blocking`, bounded by [`SERVICE_CALL_TIMEOUT_S`], and its result comes back to the
//! shell as a message, so the machine always gets exactly one answer per request. Storage
//! ([`LicenceStore`]) is written the same way, off the actor; loading happens in the node before
//! spawning (the args carry what was stored).
//!
//! Not done: a bounded mailbox (these actors see a message an hour, and an admin's redeems).

use super::document::{Licence, Unlocks};
use super::error::{LicenceServiceError, RedeemError};
use super::vouchers::{StoredUnlocks, VoucherConfig, VoucherEvent, VoucherInput, VoucherOutput, VoucherSync};
use super::watchdog::{Effective, Stored, Watchdog, WatchdogConfig, WatchdogEvent, WatchdogInput, WatchdogOutput};
use crate::Timestamp;
use crate::shell::WakeTimer;
use crate::store::StoreError;
use crate::time::Clock;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// One call to the licence service gets this long; then the machine is told it failed (and
/// a late answer is dropped).
pub const SERVICE_CALL_TIMEOUT_S: u64 = 60;

/// The licence service, over the network. Blocking: the shells call it off the actor. Each
/// returns a 200's body, or why not (transport, TLS, HTTP status). For `redeem` the node maps
/// 409 to [`LicenceServiceError::AlreadyRedeemed`] and 404 to
/// [`LicenceServiceError::UnknownVoucher`], which the admin API answers by kind.
pub trait LicenceService: Send + Sync + 'static {
    fn check(&self, serial: &str) -> Result<Bytes, LicenceServiceError>;
    fn unlocks(&self, serial: &str) -> Result<Bytes, LicenceServiceError>;
    fn redeem(&self, serial: &str, code: &str) -> Result<Bytes, LicenceServiceError>;
}

/// Where the last verified licence and unlocks are kept across restarts. Blocking; called
/// off the actor.
pub trait LicenceStore: Send + Sync + 'static {
    fn save_licence(&self, stored: &Stored) -> Result<(), StoreError>;
    fn save_unlocks(&self, stored: &StoredUnlocks) -> Result<(), StoreError>;
}

/// The licence as pbx sees it now: what `GET /api/v1/licence` shows and what the rest of pbx
/// obeys (`effective`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LicenceSnapshot {
    /// "unlicensed", "licensed", "grace" or "expired".
    pub status: &'static str,
    /// The last licence that verified, in force or not.
    pub licence: Option<Licence>,
    pub unlocks: Option<Unlocks>,
    /// The licence's features and limits plus the unlocks' while licensed (including grace);
    /// `Limits::UNLICENSED` and no features otherwise.
    pub effective: Effective,
    pub last_success: Option<Timestamp>,
    /// Why the last licence check failed; `None` after a success.
    pub last_error: Option<String>,
    pub grace_until: Option<Timestamp>,
    /// `None` while a check is in flight.
    pub next_check: Option<Timestamp>,
    pub unlocks_fetched_at: Option<Timestamp>,
    /// Why the last unlocks fetch failed; `None` after a success.
    pub unlocks_error: Option<String>,
    /// The licence's share of `effective`, before unlocks.
    #[serde(skip)]
    licensed: Effective,
}

impl Default for LicenceSnapshot {
    fn default() -> LicenceSnapshot {
        LicenceSnapshot {
            status: "unlicensed",
            licence: None,
            unlocks: None,
            effective: Effective::unlicensed(),
            last_success: None,
            last_error: None,
            grace_until: None,
            next_check: None,
            unlocks_fetched_at: None,
            unlocks_error: None,
            licensed: Effective::unlicensed(),
        }
    }
}

/// The shared, synchronously readable licence state. The shells write it after every message
/// they handle; everyone else only reads. Starts unlicensed.
#[derive(Clone, Default)]
pub struct LicenceView(Arc<RwLock<LicenceSnapshot>>);

impl LicenceView {
    pub fn new() -> LicenceView {
        LicenceView::default()
    }

    pub fn snapshot(&self) -> LicenceSnapshot {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The features and limits in force now.
    pub fn effective(&self) -> Effective {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).effective.clone()
    }

    fn update(&self, change: impl FnOnce(&mut LicenceSnapshot)) {
        let mut snapshot = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut snapshot);
        snapshot.effective = match &snapshot.unlocks {
            Some(unlocks) => snapshot.licensed.clone().with_unlocks(unlocks),
            None => snapshot.licensed.clone(),
        };
    }

    fn set_watchdog(&self, machine: &Watchdog, now: Timestamp) {
        self.update(|s| {
            s.status = machine.status().name();
            s.licence = machine.licence().cloned();
            s.licensed = machine.effective(now);
            s.last_success = machine.last_success();
            s.last_error = machine.last_error().map(str::to_string);
            s.grace_until = machine.grace_until();
            s.next_check = machine.next_check();
        });
    }

    fn set_vouchers(&self, machine: &VoucherSync) {
        self.update(|s| {
            s.unlocks = machine.unlocks().cloned();
            s.unlocks_fetched_at = machine.fetched_at();
            s.unlocks_error = machine.last_error().map(str::to_string);
        });
    }
}

/// Runs `call` on the blocking pool, bounded by [`SERVICE_CALL_TIMEOUT_S`], and casts its
/// result (or why there is none) back to `me`.
fn call_service<M: ractor::Message>(
    me: &ActorRef<M>,
    call: impl FnOnce() -> Result<Bytes, LicenceServiceError> + Send + 'static,
    answer: impl FnOnce(Result<Bytes, LicenceServiceError>) -> M + Send + 'static,
) {
    let me = me.clone();
    tokio::spawn(async move {
        let task = tokio::task::spawn_blocking(call);
        let result = match tokio::time::timeout(Duration::from_secs(SERVICE_CALL_TIMEOUT_S), task).await {
            Ok(Ok(result)) => result,
            Ok(Err(failed)) => Err(LicenceServiceError::NoAnswer(format!("licence service call failed: {failed}"))),
            Err(_) => Err(LicenceServiceError::NoAnswer(format!(
                "licence service did not answer within {SERVICE_CALL_TIMEOUT_S} s"
            ))),
        };
        let _ = me.cast(answer(result));
    });
}

// ---------------------------------------------------------------------------------------------
// Watchdog

pub struct WatchdogArgs {
    pub config: WatchdogConfig,
    /// Unix-epoch µs, so a stored `checked_at` keeps its meaning across restarts.
    pub clock: Arc<dyn Clock>,
    pub service: Arc<dyn LicenceService>,
    pub store: Arc<dyn LicenceStore>,
    /// What [`LicenceStore::save_licence`] last saved, loaded by the node.
    pub stored: Option<Stored>,
    pub view: LicenceView,
}

pub enum WatchdogMsg {
    /// The machine's timer.
    Wake,
    /// The licence service's answer to check `request`.
    CheckAnswer {
        request: u64,
        result: Result<Bytes, LicenceServiceError>,
    },
    Control(crate::shell::Control),
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for WatchdogMsg {}

pub struct WatchdogState {
    machine: Watchdog,
    clock: Arc<dyn Clock>,
    service: Arc<dyn LicenceService>,
    store: Arc<dyn LicenceStore>,
    view: LicenceView,
    timer: WakeTimer,
}

pub struct WatchdogActor;

impl Actor for WatchdogActor {
    type Msg = WatchdogMsg;
    type State = WatchdogState;
    type Arguments = WatchdogArgs;

    async fn pre_start(
        &self,
        me: ActorRef<WatchdogMsg>,
        args: WatchdogArgs,
    ) -> Result<WatchdogState, ActorProcessingErr> {
        let now = args.clock.now();
        let machine = Watchdog::new(args.config, now, args.stored);
        tracing::info!(status = machine.status().name(), serial = %machine.config().serial, "licence watchdog started");
        set_status_gauge(machine.status().name());
        let mut state = WatchdogState {
            machine,
            clock: args.clock,
            service: args.service,
            store: args.store,
            view: args.view,
            timer: WakeTimer::default(),
        };
        state.drain(&me, now);
        Ok(state)
    }

    async fn post_start(&self, me: ActorRef<WatchdogMsg>, s: &mut WatchdogState) -> Result<(), ActorProcessingErr> {
        s.rearm(&me);
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<WatchdogMsg>, s: &mut WatchdogState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<WatchdogMsg>,
        msg: WatchdogMsg,
        s: &mut WatchdogState,
    ) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        match msg {
            WatchdogMsg::Wake => {
                s.timer.fired();
                s.machine.handle(now, WatchdogInput::Timeout);
            }
            WatchdogMsg::CheckAnswer { request, result } => {
                s.machine.handle(now, WatchdogInput::Response { request, result });
            }
            WatchdogMsg::Control(control) => control.obey("licence-watchdog"),
        }
        s.drain(&me, now);
        s.rearm(&me);
        Ok(())
    }
}

impl WatchdogState {
    /// Performs the machine's outputs, then publishes the view.
    fn drain(&mut self, me: &ActorRef<WatchdogMsg>, now: Timestamp) {
        while let Some(output) = self.machine.poll_output() {
            match output {
                WatchdogOutput::Check { request, serial } => {
                    let service = self.service.clone();
                    call_service(
                        me,
                        move || service.check(&serial),
                        move |result| WatchdogMsg::CheckAnswer { request, result },
                    );
                }
                WatchdogOutput::Persist(stored) => {
                    let store = self.store.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(error) = store.save_licence(&stored) {
                            tracing::error!(%error, "could not store the licence");
                            metrics::counter!("pbx_licence_store_failures_total").increment(1);
                        }
                    });
                }
                WatchdogOutput::Event(event) => log_watchdog_event(event),
            }
        }
        self.view.set_watchdog(&self.machine, now);
        let remaining = self.machine.grace_until().map_or(0, |until| until.saturating_since(now).as_secs());
        metrics::gauge!("pbx_licence_grace_remaining_seconds").set(remaining as f64);
    }

    fn rearm(&mut self, me: &ActorRef<WatchdogMsg>) {
        self.timer.arm(me, self.clock.now(), self.machine.poll_timeout(), || WatchdogMsg::Wake);
    }
}

const STATUS_NAMES: [&str; 4] = ["unlicensed", "licensed", "grace", "expired"];

/// `pbx_licence_status{status}` is 1 for the current status, 0 for the others.
fn set_status_gauge(current: &'static str) {
    for name in STATUS_NAMES {
        metrics::gauge!("pbx_licence_status", "status" => name).set(if name == current { 1.0 } else { 0.0 });
    }
}

fn log_watchdog_event(event: WatchdogEvent) {
    match event {
        WatchdogEvent::Checked { valid_until } => {
            tracing::debug!(valid_until, "licence check succeeded");
            metrics::counter!("pbx_licence_checks_total", "result" => "ok").increment(1);
        }
        WatchdogEvent::CheckFailed { reason, retry_at } => {
            tracing::warn!(%reason, %retry_at, "licence check failed; licensed features stay on until the grace period ends");
            metrics::counter!("pbx_licence_checks_total", "result" => "failed").increment(1);
        }
        WatchdogEvent::StatusChanged { from, to } => {
            match to {
                "licensed" => tracing::info!(from, to, "licence status changed"),
                "grace" => tracing::warn!(from, to, "licence status changed: the licence service is unreachable"),
                "expired" => tracing::error!(from, to, "licence status changed: licensed features are off"),
                _ => tracing::info!(from, to, "licence status changed"),
            }
            set_status_gauge(to);
        }
        WatchdogEvent::StoredIgnored { reason } => {
            tracing::warn!(%reason, "the stored licence does not verify; ignored");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Vouchers

pub struct VoucherArgs {
    pub config: VoucherConfig,
    pub clock: Arc<dyn Clock>,
    pub service: Arc<dyn LicenceService>,
    pub store: Arc<dyn LicenceStore>,
    /// What [`LicenceStore::save_unlocks`] last saved, loaded by the node.
    pub stored: Option<StoredUnlocks>,
    pub view: LicenceView,
}

/// Messages to the voucher actor. `Redeem` carries a voucher code, so this type has no `Debug`.
pub enum VoucherMsg {
    /// An admin redeems `code`: the release code, or the reason it was not redeemed.
    Redeem {
        code: String,
        reply: RpcReplyPort<Result<String, RedeemError>>,
    },
    Wake,
    FetchAnswer {
        request: u64,
        result: Result<Bytes, LicenceServiceError>,
    },
    RedeemAnswer {
        request: u64,
        result: Result<Bytes, LicenceServiceError>,
    },
    Control(crate::shell::Control),
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for VoucherMsg {}

pub struct VoucherState {
    machine: VoucherSync,
    clock: Arc<dyn Clock>,
    service: Arc<dyn LicenceService>,
    store: Arc<dyn LicenceStore>,
    view: LicenceView,
    timer: WakeTimer,
    /// Admins waiting, by the token the shell gave their request. The machine answers every
    /// token (bounded by its in-flight limit), so this cannot grow without bound.
    replies: BTreeMap<u64, RpcReplyPort<Result<String, RedeemError>>>,
    next_token: u64,
}

pub struct VoucherActor;

impl Actor for VoucherActor {
    type Msg = VoucherMsg;
    type State = VoucherState;
    type Arguments = VoucherArgs;

    async fn pre_start(&self, me: ActorRef<VoucherMsg>, args: VoucherArgs) -> Result<VoucherState, ActorProcessingErr> {
        let now = args.clock.now();
        let machine = VoucherSync::new(args.config, now, args.stored);
        let mut state = VoucherState {
            machine,
            clock: args.clock,
            service: args.service,
            store: args.store,
            view: args.view,
            timer: WakeTimer::default(),
            replies: BTreeMap::new(),
            next_token: 1,
        };
        state.drain(&me);
        Ok(state)
    }

    async fn post_start(&self, me: ActorRef<VoucherMsg>, s: &mut VoucherState) -> Result<(), ActorProcessingErr> {
        s.rearm(&me);
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<VoucherMsg>, s: &mut VoucherState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<VoucherMsg>,
        msg: VoucherMsg,
        s: &mut VoucherState,
    ) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        match msg {
            VoucherMsg::Redeem { code, reply } => {
                let token = s.next_token;
                s.next_token += 1;
                s.replies.insert(token, reply);
                s.machine.handle(now, VoucherInput::RedeemRequest { token, code });
            }
            VoucherMsg::Wake => {
                s.timer.fired();
                s.machine.handle(now, VoucherInput::Timeout);
            }
            VoucherMsg::FetchAnswer { request, result } => {
                s.machine.handle(now, VoucherInput::FetchResponse { request, result });
            }
            VoucherMsg::RedeemAnswer { request, result } => {
                s.machine.handle(now, VoucherInput::RedeemResponse { request, result });
            }
            VoucherMsg::Control(control) => control.obey("voucher-sync"),
        }
        s.drain(&me);
        s.rearm(&me);
        Ok(())
    }
}

impl VoucherState {
    fn drain(&mut self, me: &ActorRef<VoucherMsg>) {
        while let Some(output) = self.machine.poll_output() {
            match output {
                VoucherOutput::Fetch { request, serial } => {
                    let service = self.service.clone();
                    call_service(
                        me,
                        move || service.unlocks(&serial),
                        move |result| VoucherMsg::FetchAnswer { request, result },
                    );
                }
                VoucherOutput::Redeem { request, serial, code } => {
                    let service = self.service.clone();
                    call_service(
                        me,
                        move || service.redeem(&serial, &code),
                        move |result| VoucherMsg::RedeemAnswer { request, result },
                    );
                }
                VoucherOutput::Persist(stored) => {
                    let store = self.store.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(error) = store.save_unlocks(&stored) {
                            tracing::error!(%error, "could not store the voucher unlocks");
                            metrics::counter!("pbx_licence_store_failures_total").increment(1);
                        }
                    });
                }
                VoucherOutput::Redeemed { token, result } => {
                    if let Some(reply) = self.replies.remove(&token) {
                        let _ = reply.send(result);
                    }
                }
                VoucherOutput::Event(event) => log_voucher_event(event),
            }
        }
        self.view.set_vouchers(&self.machine);
    }

    fn rearm(&mut self, me: &ActorRef<VoucherMsg>) {
        self.timer.arm(me, self.clock.now(), self.machine.poll_timeout(), || VoucherMsg::Wake);
    }
}

fn log_voucher_event(event: VoucherEvent) {
    match event {
        VoucherEvent::Fetched { features, release_codes } => {
            tracing::debug!(features, release_codes, "voucher unlocks fetched");
            metrics::counter!("pbx_voucher_fetches_total", "result" => "ok").increment(1);
        }
        VoucherEvent::FetchFailed { reason, retry_at } => {
            tracing::warn!(%reason, %retry_at, "voucher unlocks fetch failed; the unlocks held stay");
            metrics::counter!("pbx_voucher_fetches_total", "result" => "failed").increment(1);
        }
        VoucherEvent::Redeemed { release_code } => {
            tracing::info!(%release_code, "voucher redeemed");
            metrics::counter!("pbx_voucher_redeems_total", "result" => "ok").increment(1);
        }
        VoucherEvent::RedeemFailed { reason } => {
            tracing::warn!(%reason, "voucher not redeemed");
            metrics::counter!("pbx_voucher_redeems_total", "result" => "failed").increment(1);
        }
        VoucherEvent::StoredIgnored { reason } => {
            tracing::warn!(%reason, "the stored voucher unlocks do not verify; ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::licence::document::{Feature, Kind, Limits, SigningKey};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const SERIAL: &str = "PBX-0001";
    const EPOCH_S: u64 = 1_700_000_000;
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn service_key() -> SigningKey {
        SigningKey::from_seed(&[7; 32])
    }

    /// A virtual Unix-epoch clock on tokio's (paused) time.
    struct TokioClock(tokio::time::Instant);
    impl Clock for TokioClock {
        fn now(&self) -> Timestamp {
            Timestamp::from_secs(EPOCH_S) + self.0.elapsed()
        }
    }

    fn clock() -> Arc<dyn Clock> {
        Arc::new(TokioClock(tokio::time::Instant::now()))
    }

    fn licence() -> Licence {
        Licence {
            kind: Kind::Licence,
            serial: SERIAL.into(),
            features: [Feature::Conference].into(),
            limits: Limits { extensions: 100, ..Limits::UNLICENSED },
            issued_at: EPOCH_S,
            valid_until: EPOCH_S + 400 * 24 * 3600,
        }
    }

    /// The licence service: up or down, counting calls; vouchers "GOOD-n" redeem once.
    #[derive(Default)]
    struct FakeService {
        down: AtomicBool,
        checks: AtomicUsize,
        fetches: AtomicUsize,
        redeemed: Mutex<Vec<String>>,
    }

    impl LicenceService for FakeService {
        fn check(&self, serial: &str) -> Result<Bytes, LicenceServiceError> {
            assert_eq!(serial, SERIAL);
            self.checks.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(LicenceServiceError::Transport("connect: connection refused".into()));
            }
            Ok(serde_json::to_vec(&service_key().seal(&licence())).unwrap().into())
        }

        fn unlocks(&self, serial: &str) -> Result<Bytes, LicenceServiceError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let release_codes: Vec<String> = self.redeemed.lock().unwrap().clone();
            let unlocks = Unlocks {
                kind: Kind::Unlocks,
                serial: serial.into(),
                features: if release_codes.is_empty() { Default::default() } else { [Feature::Cluster].into() },
                limits: Limits { extensions: 10 * release_codes.len() as u32, ..Limits::ZERO },
                release_codes,
                issued_at: EPOCH_S,
            };
            Ok(serde_json::to_vec(&service_key().seal(&unlocks)).unwrap().into())
        }

        fn redeem(&self, _serial: &str, code: &str) -> Result<Bytes, LicenceServiceError> {
            let release = format!("R-{code}");
            let mut redeemed = self.redeemed.lock().unwrap();
            if !code.starts_with("GOOD-") {
                return Err(LicenceServiceError::UnknownVoucher);
            }
            if redeemed.contains(&release) {
                return Err(LicenceServiceError::AlreadyRedeemed);
            }
            redeemed.push(release.clone());
            Ok(format!(r#"{{"release_code":"{release}"}}"#).into())
        }
    }

    #[derive(Default)]
    struct MemoryStore {
        licences: Mutex<Vec<Stored>>,
        unlocks: Mutex<Vec<StoredUnlocks>>,
    }

    impl LicenceStore for MemoryStore {
        fn save_licence(&self, stored: &Stored) -> Result<(), StoreError> {
            self.licences.lock().unwrap().push(stored.clone());
            Ok(())
        }

        fn save_unlocks(&self, stored: &StoredUnlocks) -> Result<(), StoreError> {
            self.unlocks.lock().unwrap().push(stored.clone());
            Ok(())
        }
    }

    /// Lets virtual time pass in small steps until `done` holds (bounded).
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never happened: {what}");
    }

    fn spawn_args(
        service: &Arc<FakeService>,
        store: &Arc<MemoryStore>,
        stored: Option<Stored>,
        view: &LicenceView,
    ) -> WatchdogArgs {
        WatchdogArgs {
            config: WatchdogConfig::new(SERIAL, service_key().public_key()),
            clock: clock(),
            service: service.clone(),
            store: store.clone(),
            stored,
            view: view.clone(),
        }
    }

    /// A check happens at start and licenses the node; with the service down the node stays
    /// licensed for the 14 days' grace, retrying hourly, then expires; it recovers at the first
    /// check after the service is back.
    #[tokio::test(start_paused = true)]
    async fn watchdog_checks_at_start_and_holds_through_the_grace_period() {
        let service = Arc::new(FakeService::default());
        let store = Arc::new(MemoryStore::default());
        let view = LicenceView::new();
        assert_eq!(view.effective(), Effective::unlicensed());
        let (actor, handle) =
            Actor::spawn(None, WatchdogActor, spawn_args(&service, &store, None, &view)).await.unwrap();
        until("licensed", || view.snapshot().status == "licensed").await;
        assert_eq!(service.checks.load(Ordering::SeqCst), 1);
        let effective = view.effective();
        assert!(effective.licensed && effective.has(Feature::Conference));
        assert_eq!(effective.limits.extensions, 100);
        until("stored", || store.licences.lock().unwrap().len() == 1).await;
        assert_eq!(view.snapshot().grace_until, Some(Timestamp::from_secs(EPOCH_S) + 14 * DAY));

        service.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(13 * DAY).await;
        let snapshot = view.snapshot();
        assert_eq!(snapshot.status, "grace");
        assert!(snapshot.effective.licensed);
        assert_eq!(snapshot.last_error.as_deref(), Some("connect: connection refused"));
        // The daily check at +1 d, then hourly up to 13 d.
        let checks = service.checks.load(Ordering::SeqCst);
        assert!((1 + 1 + 12 * 24 - 1..=1 + 1 + 12 * 24).contains(&checks), "{checks} checks");

        tokio::time::sleep(DAY + HOUR).await;
        assert_eq!(view.snapshot().status, "expired");
        assert_eq!(view.effective(), Effective::unlicensed());

        service.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(HOUR + Duration::from_secs(1)).await;
        until("licensed again", || view.snapshot().status == "licensed").await;
        assert!(view.effective().licensed);
        actor.stop(None);
        handle.await.unwrap();
    }

    /// A node restarted within the grace period from its stored licence is licensed before any
    /// check, with the service down.
    #[tokio::test(start_paused = true)]
    async fn watchdog_restarted_offline_is_licensed_from_storage() {
        let service = Arc::new(FakeService::default());
        service.down.store(true, Ordering::SeqCst);
        let store = Arc::new(MemoryStore::default());
        let view = LicenceView::new();
        let stored = Stored {
            envelope: service_key().seal(&licence()),
            checked_at: Timestamp::from_secs(EPOCH_S - 10 * 24 * 3600),
        };
        let (actor, handle) =
            Actor::spawn(None, WatchdogActor, spawn_args(&service, &store, Some(stored), &view)).await.unwrap();
        assert_eq!(view.snapshot().status, "licensed");
        assert!(view.effective().licensed);
        until("checked", || view.snapshot().status == "grace").await;
        tokio::time::sleep(3 * DAY + 23 * HOUR).await;
        assert_eq!(view.snapshot().status, "grace");
        tokio::time::sleep(2 * HOUR).await;
        assert_eq!(view.snapshot().status, "expired");
        assert!(store.licences.lock().unwrap().is_empty());
        actor.stop(None);
        handle.await.unwrap();
    }

    /// Vouchers: unlocks fetched at start; a redeem answers the admin with the release code and
    /// the new unlocks show in the view at once; a second redeem of the same code gets the
    /// service's refusal. Unlocks only count while licensed.
    #[tokio::test(start_paused = true)]
    async fn vouchers_fetch_redeem_and_extend_the_licence() {
        let service = Arc::new(FakeService::default());
        let store = Arc::new(MemoryStore::default());
        let view = LicenceView::new();
        let args = VoucherArgs {
            config: VoucherConfig::new(SERIAL, service_key().public_key()),
            clock: clock(),
            service: service.clone(),
            store: store.clone(),
            stored: None,
            view: view.clone(),
        };
        let (vouchers, vouchers_handle) = Actor::spawn(None, VoucherActor, args).await.unwrap();
        until("unlocks fetched", || view.snapshot().unlocks.is_some()).await;
        assert_eq!(service.fetches.load(Ordering::SeqCst), 1);

        let redeem = |code: &str| {
            let code = code.to_string();
            move |reply| VoucherMsg::Redeem { code, reply }
        };
        assert_eq!(ractor::call!(vouchers, redeem("GOOD-1")).unwrap(), Ok("R-GOOD-1".to_string()));
        until("fetched again", || view.snapshot().unlocks.is_some_and(|u| u.release_codes == ["R-GOOD-1"])).await;
        assert_eq!(service.fetches.load(Ordering::SeqCst), 2);
        // Not licensed yet: the unlocks add nothing.
        assert_eq!(view.effective(), Effective::unlicensed());

        assert_eq!(
            ractor::call!(vouchers, redeem("GOOD-1")).unwrap(),
            Err(RedeemError::Service(LicenceServiceError::AlreadyRedeemed))
        );
        assert_eq!(
            ractor::call!(vouchers, redeem("NOPE")).unwrap(),
            Err(RedeemError::Service(LicenceServiceError::UnknownVoucher))
        );
        assert!(ractor::call!(vouchers, redeem("not a code!")).unwrap().is_err());

        let (watchdog, watchdog_handle) =
            Actor::spawn(None, WatchdogActor, spawn_args(&service, &store, None, &view)).await.unwrap();
        until("licensed", || view.snapshot().status == "licensed").await;
        let effective = view.effective();
        assert!(effective.has(Feature::Conference) && effective.has(Feature::Cluster));
        assert_eq!(effective.limits.extensions, 110);
        until("unlocks stored", || store.unlocks.lock().unwrap().len() == 2).await;

        tokio::time::sleep(DAY).await;
        assert_eq!(service.fetches.load(Ordering::SeqCst), 3, "daily fetch");
        for (actor, handle) in [(vouchers.get_cell(), vouchers_handle), (watchdog.get_cell(), watchdog_handle)] {
            actor.stop(None);
            handle.await.unwrap();
        }
    }
}

//! Push dispatch (RFC 8599): the actor that wakes a sleeping mobile softphone when a call is
//! for it. A call asks ([`PushPort::wake`]); the actor first asks the registrar to report the
//! phone's next REGISTER (`RegistrarMsg::AwaitPushContact`), then sends the push through the
//! phone's provider (FCM HTTP v1 or APNs, `pbx_push_service::client`), records it (category
//! `push-records`, 7 days), and tells the call: the fresh binding when the phone registers
//! within the wait, `Failed` when the provider refused (a token answered unregistered is dropped
//! from the registrar). The watch is set before the push goes, so a phone that registers before
//! the provider's answer arrives is not missed.
//!
//! What goes to the provider: the token (`pn-prid`), the app's project or topic (`pn-param`)
//! and a data message `{"type":"call"}` — never the caller's number or name (the app learns
//! who calls from the INVITE, over SIP).
//!
//! Refresh pushes (RFC 8599 §5.6): a push binding still unrefreshed `push.refresh_before_s`
//! before it expires (the registrar's `PushRefreshDue`) is pushed `{"type":"register"}` so the
//! app, asleep, registers again and stays reachable: FCM as a data message, APNs as a silent
//! background push to the app's `:remote` token (an app with only a VoIP token is not pushed:
//! iOS ends an app that gets a VoIP push without reporting a call; logged). In a cluster only
//! the Raft leader sends them (every node's registrar holds every binding; one push is
//! enough). Each is a push record like a call's, with an empty caller.
//!
//! Push is gated by the licence's `push` feature: without it [`PushPort::wait`] is `None` and
//! calls go to such phones directly, as to any other.

use pbx_actors::Timestamp;
use pbx_actors::call::wake::{PushPort, WakeEvent, WakeRequest};
use pbx_actors::licence::Feature;
use pbx_actors::licence::LicenceView;
use pbx_actors::push::rfc8599::{self, PushTarget};
use pbx_actors::push::{PushRecord, PushRecordSink};
use pbx_actors::registrar::{Binding, RegistrarMsg};
use pbx_actors::shell::Current;
use pbx_actors::time::Clock;
use pbx_push_service::client::Outcome;
use pbx_push_service::client::apns::{ApnsKey, ApnsPush};
use pbx_push_service::client::fcm::{FcmPush, ServiceAccount};
use pbx_push_service::client::sender::{ApnsSender, FcmSender, HttpsClient, Trust};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use pbx_actors::push::PUSHES_IN_FLIGHT_MAX;
/// The longest pbx waits for a push service's answer.
pub const PUSH_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The senders, one per provider configured.
pub struct Senders {
    pub fcm: Option<FcmSender>,
    pub apns: Option<ApnsSender>,
    pub apns_sandbox: Option<ApnsSender>,
}

impl Senders {
    /// Reads the credentials named in `config`; errors name the file.
    pub fn from_config(config: &crate::config::PushConfig) -> anyhow::Result<Senders> {
        use anyhow::Context;
        let trust = match &config.ca {
            Some(path) => Trust::from_pem_file(path).with_context(|| format!("push.ca {}", path.display()))?,
            None => Trust::WebPkiRoots,
        };
        let http = Arc::new(HttpsClient::new(&trust, PUSH_SEND_TIMEOUT).context("push: HTTPS client")?);
        let fcm = match &config.fcm {
            Some(f) => {
                let account = ServiceAccount::read(&f.service_account)
                    .with_context(|| format!("push.fcm.service_account {}", f.service_account.display()))?;
                Some(FcmSender::new(account, &f.url, http.clone()))
            }
            None => None,
        };
        let (apns, apns_sandbox) = match &config.apns {
            Some(a) => {
                let key = ApnsKey::read(&a.key, &a.team_id, &a.key_id)
                    .with_context(|| format!("push.apns.key {}", a.key.display()))?;
                let production = ApnsSender::new(key.clone(), &a.url, http.clone());
                (Some(production), Some(ApnsSender::new(key, &a.sandbox_url, http)))
            }
            None => (None, None),
        };
        Ok(Senders { fcm, apns, apns_sandbox })
    }
}

pub enum PushMsg {
    /// Wake `request`'s phone; the registrar is watched for it at most `wait`.
    Wake { request: WakeRequest, wait: Duration, events: Box<dyn Fn(WakeEvent) + Send + Sync> },
    /// `binding` comes close to its expiry unrefreshed: push its app to register again.
    Refresh { binding: Binding },
}

/// Why a push is sent: the data message it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// A call waits for the phone (`{"type":"call"}`; APNs: a VoIP push).
    Call,
    /// Its registration is about to expire (`{"type":"register"}`; APNs: a background push).
    Refresh,
}

// Local only; see `pbx_actors::shell` on ractor's `cluster` feature.
impl ractor::Message for PushMsg {}

pub struct PushArgs {
    pub senders: Senders,
    pub registrar: Current<RegistrarMsg>,
    pub records: Arc<dyn PushRecordSink>,
    pub clock: Arc<dyn Clock>,
}

pub struct PushState {
    /// What every push task reads (never changed after the start).
    shared: Arc<PushArgs>,
    in_flight: Arc<AtomicUsize>,
    next_id: u64,
}

pub struct PushDispatchActor;

impl Actor for PushDispatchActor {
    type Msg = PushMsg;
    type State = PushState;
    type Arguments = PushArgs;

    async fn pre_start(&self, _me: ActorRef<PushMsg>, args: PushArgs) -> Result<PushState, ActorProcessingErr> {
        for outcome in ["delivered", "unregistered", "failed"] {
            metrics::counter!("pbx_push_sent_total", "outcome" => outcome).increment(0);
        }
        let next_id = args.clock.now().as_micros();
        Ok(PushState { shared: Arc::new(args), in_flight: Arc::new(AtomicUsize::new(0)), next_id })
    }

    async fn handle(&self, _me: ActorRef<PushMsg>, msg: PushMsg, s: &mut PushState) -> Result<(), ActorProcessingErr> {
        let aor = match &msg {
            PushMsg::Wake { request, .. } => &request.binding.aor,
            PushMsg::Refresh { binding } => &binding.aor,
        };
        if s.in_flight.fetch_add(1, Ordering::AcqRel) >= PUSHES_IN_FLIGHT_MAX {
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%aor, "too many pushes in flight: this one is not sent");
            if let PushMsg::Wake { request, events, .. } = msg {
                events(WakeEvent::Failed { leg: request.leg });
            }
            return Ok(());
        }
        let (in_flight, shared) = (s.in_flight.clone(), s.shared.clone());
        let id = s.next_id;
        s.next_id += 1;
        tokio::spawn(async move {
            match msg {
                PushMsg::Wake { request, wait, events } => wake(id, request, wait, events, &shared).await,
                PushMsg::Refresh { binding } => refresh(id, binding, &shared).await,
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }
}

/// The refresh push of `binding` (module doc): sent, recorded; a token its service calls
/// unregistered is dropped, as after a call's push.
async fn refresh(id: u64, binding: Binding, shared: &PushArgs) {
    let Some(params) = pbx_actors::push::PushContact::params_of(&binding.contact) else { return };
    let at = shared.clock.now();
    let outcome = send(&shared.senders, &params, at, Purpose::Refresh).await;
    if let Err(SendError::NoRemoteToken) = outcome {
        tracing::info!(aor = %binding.aor, "refresh push not sent: the app gave no :remote token (APNs)");
        return;
    }
    let metric = account(id, &binding, &params, outcome, String::new(), binding.aor.clone(), at, shared);
    tracing::info!(aor = %binding.aor, provider = %params.provider, outcome = metric, "refresh push sent");
}

async fn wake(
    id: u64,
    request: WakeRequest,
    wait: Duration,
    events: Box<dyn Fn(WakeEvent) + Send + Sync>,
    shared: &PushArgs,
) {
    let PushArgs { registrar, clock, .. } = shared;
    let WakeRequest { leg, binding, caller, callee } = request;
    let Some(params) = pbx_actors::push::PushContact::params_of(&binding.contact) else {
        return events(WakeEvent::Failed { leg });
    };
    // The watch first: the phone may register before the provider answers.
    let (reply, registered) = tokio::sync::oneshot::channel();
    registrar.cast(RegistrarMsg::AwaitPushContact { aor: binding.aor.clone(), prid: params.prid.clone(), reply });
    let at = clock.now();
    let sent = std::time::Instant::now();
    let outcome = send(&shared.senders, &params, at, Purpose::Call).await;
    // The provider's answer time, the push's round trip (docs/PERFORMANCE.md): a wall-clock
    // measurement for the operator, never an input to the machines.
    let round_trip = sent.elapsed();
    metrics::histogram!("pbx_push_round_trip_seconds").record(round_trip.as_secs_f64());
    let metric = account(id, &binding, &params, outcome, caller, callee, at, shared);
    let round_trip_ms = round_trip.as_millis() as u64;
    tracing::info!(aor = %binding.aor, provider = %params.provider, outcome = metric, round_trip_ms, "push sent");
    if metric != "delivered" {
        return events(WakeEvent::Failed { leg });
    }
    // The call's own timer ends the wait too; this one only lets the task go.
    if let Ok(Ok(binding)) = tokio::time::timeout(wait, registered).await {
        events(WakeEvent::Woken { leg, binding: Box::new(binding) });
    }
}

/// Counts, logs nothing, and records (category `push-records`) one push's `outcome`; drops a
/// token the service calls unregistered. The metric label: `delivered`, `unregistered` or
/// `failed`.
#[allow(clippy::too_many_arguments)]
fn account(
    id: u64,
    binding: &Binding,
    params: &pbx_actors::push::PushParams,
    outcome: Result<Outcome, SendError>,
    caller: String,
    callee: String,
    at: Timestamp,
    shared: &PushArgs,
) -> &'static str {
    let (metric, label) = match &outcome {
        Ok(Outcome::Delivered { .. }) => ("delivered", "delivered".to_string()),
        Ok(Outcome::Unregistered { reason }) => {
            let drop = RegistrarMsg::DropPushToken { aor: binding.aor.clone(), prid: params.prid.clone() };
            shared.registrar.cast(drop);
            ("unregistered", format!("unregistered: {reason}"))
        }
        Ok(other) => ("failed", format!("failed: {other:?}")),
        Err(reason) => ("failed", format!("failed: {reason}")),
    };
    metrics::counter!("pbx_push_sent_total", "outcome" => metric).increment(1);
    shared.records.record(PushRecord {
        id,
        at,
        user: binding.aor.clone(),
        caller,
        callee,
        provider: params.provider.clone(),
        device: params.prid.clone(),
        source: binding.source,
        outcome: label,
    });
    metric
}

/// Why a push did not reach its service.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// A refresh push for an APNs app without a `:remote` token: not sent (module doc).
    #[error("no :remote token for a background push")]
    NoRemoteToken,
    #[error("{0}")]
    Other(String),
}

/// How long a push is worth delivering: a call's ring, or a refresh until the binding lapses.
const PUSH_TTL: Duration = Duration::from_secs(30);

/// The push for `params` through its provider, for `purpose`: `Err` when no answer came or pbx
/// could not build the request.
async fn send(
    senders: &Senders,
    params: &pbx_actors::push::PushParams,
    at: Timestamp,
    purpose: Purpose,
) -> Result<Outcome, SendError> {
    let other = |e: &dyn std::fmt::Display| SendError::Other(e.to_string());
    let now_unix_s = at.as_secs();
    let kind = match purpose {
        Purpose::Call => "call",
        Purpose::Refresh => "register",
    };
    let data: BTreeMap<String, String> = [("type".to_string(), kind.to_string())].into();
    let target = rfc8599::parse(&params.provider, &params.param, &params.prid).map_err(|e| other(&e))?;
    match target {
        PushTarget::Fcm(target) => {
            let sender = senders.fcm.as_ref().ok_or_else(|| other(&"FCM is not configured"))?;
            let push = FcmPush { token: target.token, data, ttl: PUSH_TTL };
            sender.send(&push, now_unix_s).await.map_err(|e| other(&e))
        }
        PushTarget::Apns(target) => {
            let sender = match target.sandbox {
                true => senders.apns_sandbox.as_ref(),
                false => senders.apns.as_ref(),
            }
            .ok_or_else(|| other(&"APNs is not configured"))?;
            let push = match purpose {
                Purpose::Call => ApnsPush::voip_wake_up(&target, &data, PUSH_TTL, now_unix_s).map_err(|e| other(&e))?,
                Purpose::Refresh => {
                    ApnsPush::background_refresh(&target, &data, PUSH_TTL, now_unix_s).map_err(|e| match e {
                        pbx_push_service::client::BuildError::NoRemoteToken => SendError::NoRemoteToken,
                        e => other(&e),
                    })?
                }
            };
            sender.send(&push, now_unix_s).await.map_err(|e| other(&e))
        }
    }
}

/// The calls' way to push dispatch: licensed or not, how long to wait.
pub struct NodePush {
    pub actor: ActorRef<PushMsg>,
    pub wait: Duration,
    /// `None`: no licence service, nothing gated.
    pub licence: Option<LicenceView>,
}

impl PushPort for NodePush {
    fn wait(&self) -> Option<Duration> {
        let licensed = self.licence.as_ref().is_none_or(|view| view.effective().has(Feature::Push));
        licensed.then_some(self.wait)
    }

    fn wake(&self, request: WakeRequest, events: Box<dyn Fn(WakeEvent) + Send + Sync>) {
        if let Err(e) = self.actor.cast(PushMsg::Wake { request, wait: self.wait, events }) {
            tracing::warn!(error = %e, "push dispatch not running");
        }
    }
}

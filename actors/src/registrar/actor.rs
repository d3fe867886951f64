//! The registrar's ractor shell: feeds [`Registrar`] the clock and messages, writes its
//! `Persist` commands to the store *before* delivering the responses that depend on them,
//! logs and counts its events, and keeps exactly one timer armed for its next wake-up.
//!
//! If the store refuses a batch, the REGISTER it guarded is answered 500 (never a 200 for a
//! binding that is not stored), the admin request gets `Err`, and the machine rewrites the
//! affected keys from its current state at the next flush ([`Registrar::persist_failed`]).
//!
//! Group commit: the shell hands each handled message's commands and responses, in order, to
//! one writer thread, which takes every job waiting, applies all their commands in a single
//! durable transaction, and only then delivers their responses. Under load one fsync serves
//! many REGISTERs; the registrar's thread never waits on the disk; and a 200 still never
//! leaves before the binding it reports is stored.
//!
//! Writer bypass: what depends on no stored state skips the writer thread. A response to a
//! request that proved nobody (a challenge, a 403 for a blocked source, a 400) never waits:
//! a node whose store cannot commit (a minority node, a stalled disk) still challenges at
//! once. Authenticated responses, routes and admin replies of a job with no commands go
//! straight out too, but only while no job with commands is in flight (`Writer::pending`),
//! so nothing that follows a command overtakes it. The rule itself is [`super::glue`]'s,
//! which the simulator drives too; this shell only counts the jobs in flight and moves them.
//!
//! Not done: a bounded mailbox (ractor's is unbounded; the endpoint in front sheds load).

use super::forwarding::Forwarding;
use super::glue::{self, Dispatch, WriteJob};
use super::machine::{
    Binding, Extension, Registrar, RegistrarCommand, RegistrarConfig, RegistrarEvent, RegistrarInput, Route,
};
use crate::bugs::Bugs;
use crate::shell::WakeTimer;
use crate::sip::{Request, Response, Transport};
use crate::store::StoreError;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Where durable changes go: redb in the product, memory in tests and the simulator. Applies the
/// whole batch or none of it.
pub trait RegistrarStore: Send + Sync + 'static {
    fn apply(&self, commands: &[RegistrarCommand]) -> Result<(), StoreError>;
}

/// Where time comes from: the shared trait of `crate::time`, re-exported here. The node's clock
/// must give Unix-epoch µs (as the node's does) so stored expiry times survive a restart.
pub use crate::time::Clock;

/// Where REGISTER responses go: the endpoint, which owns the server transactions. Must not
/// block.
pub trait ResponseSink: Send + Sync + 'static {
    /// `authenticated`: whether the request proved who sent it (see `RegistrarOutput::Respond`).
    fn deliver(&self, tx: u64, response: Response, authenticated: bool);
    /// The INVITE that arrived with `tx` is authenticated and may be put through.
    fn route(&self, tx: u64, route: Route);
}

pub struct RegistrarArgs {
    pub config: RegistrarConfig,
    /// 256 bits for the nonce key and the machine's randomness: from the OS in the node
    /// (`pbx_node` reads them at start), never derived from a smaller seed.
    pub secret: [u8; 32],
    pub extensions: Vec<Extension>,
    pub bindings: Vec<Binding>,
    /// Call forwarding as stored, by extension.
    pub forwarding: Vec<(String, Forwarding)>,
    /// (group, member) pairs logged out, as stored.
    pub logged_out: Vec<(String, String)>,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn RegistrarStore>,
    pub sink: Arc<dyn ResponseSink>,
    /// Where failed authentications and blocks are recorded (the node's security log).
    pub security: Option<Arc<dyn crate::privacy::SecurityLog>>,
    /// Where push bindings due for a refresh push go (push dispatch, once it runs).
    pub refresh_pushes: RefreshPushes,
}

/// Where the registrar hands push bindings due for a refresh push (RFC 8599 §5.6): empty until
/// push dispatch runs ([`RefreshPushes::set`]), then to it. Clones share the destination, so
/// the registrar (started first, restarted by its supervisor) and push dispatch meet here.
#[derive(Clone, Default)]
pub struct RefreshPushes(Arc<OnceLock<RefreshTo>>);

/// Where [`RefreshPushes`] hands a due binding.
pub type RefreshTo = Box<dyn Fn(Binding) + Send + Sync>;

impl RefreshPushes {
    /// From now on due bindings go to `to` (set once; later calls are ignored).
    pub fn set(&self, to: RefreshTo) {
        let _ = self.0.set(to);
    }

    /// `binding` is due for a refresh push; dropped when nothing pushes (push off).
    pub fn due(&self, binding: Binding) {
        if let Some(to) = self.0.get() {
            to(binding);
        }
    }
}

/// An extension as the API shows it: no hashes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtensionView {
    pub number: String,
    pub display_name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistrarStats {
    pub bindings: usize,
    /// Active blocks of (source, user) pairs and of prefixes.
    pub blocked_sources: usize,
    /// Users locked for untrusted addresses.
    pub locked_users: usize,
}

/// Messages to the registrar. `PutExtension` carries a password, so this type has no `Debug`.
pub enum RegistrarMsg {
    /// A REGISTER inside server transaction `tx`; the response goes to the [`ResponseSink`].
    Register {
        tx: u64,
        request: Request,
        source: SocketAddr,
        transport: Transport,
    },
    /// A new INVITE inside server transaction `tx`: answered through the [`ResponseSink`], by
    /// `deliver` (407, 403, 404, 480) or `route`.
    Route {
        tx: u64,
        request: Request,
        source: SocketAddr,
    },
    /// `Err`: [`ChangeError::Invalid`] naming the field (`"password: …"`), or a storage failure.
    PutExtension {
        number: String,
        password: String,
        display_name: String,
        reply: RpcReplyPort<Result<(), ChangeError>>,
    },
    /// [`ChangeError::NoSuchExtension`] for an unknown number. Removes the extension's bindings too.
    RemoveExtension {
        number: String,
        reply: RpcReplyPort<Result<(), ChangeError>>,
    },
    /// Rectification: a new display name. `Err` like `PutExtension`.
    Rename {
        number: String,
        display_name: String,
        reply: RpcReplyPort<Result<(), ChangeError>>,
    },
    /// `number`'s call forwarding; `Err` like `PutExtension` (the reason names the field).
    SetForwarding {
        number: String,
        forwarding: Forwarding,
        reply: RpcReplyPort<Result<(), ChangeError>>,
    },
    /// `number`'s call forwarding; `None` for a number that is no extension.
    GetForwarding {
        number: String,
        reply: RpcReplyPort<Option<Forwarding>>,
    },
    /// Where a call transferred by REFER to `number` goes, as if `transferee` dialled it
    /// (`Registrar::transfer_route`); `Err`: the refusal's code and reason phrase.
    TransferRoute {
        transferee: String,
        number: String,
        reply: RpcReplyPort<Result<super::Route, (u16, String)>>,
    },
    /// The ring groups `member` is logged out of.
    LoggedOutOf {
        member: String,
        reply: RpcReplyPort<Vec<String>>,
    },
    /// Erasure of an address: removes every binding from or to `ip`; `Ok` once stored.
    ForgetAddress {
        ip: std::net::IpAddr,
        reply: RpcReplyPort<Result<(), ChangeError>>,
    },
    /// An authentication failure found elsewhere (a conference PIN): counted and blocked alike.
    AuthFailure {
        source: std::net::IpAddr,
        user: String,
    },
    /// A call waits for the phone with push id `prid` (RFC 8599 `pn-prid`) of `aor` to
    /// register after its push: `reply` gets the binding when it does. Dropped unanswered when
    /// the call gives up first (the sender is closed) or more than [`PUSH_WATCHERS_MAX`] wait.
    AwaitPushContact {
        aor: String,
        prid: String,
        reply: tokio::sync::oneshot::Sender<Binding>,
    },
    /// The push service refused `aor`'s token `prid` as unregistered: its bindings go.
    DropPushToken {
        aor: String,
        prid: String,
    },
    ListBindings(RpcReplyPort<Vec<Binding>>),
    ListExtensions(RpcReplyPort<Vec<ExtensionView>>),
    Stats(RpcReplyPort<RegistrarStats>),
    /// Changes another cluster node made, committed by the cluster: applied to memory only.
    Replicated(Vec<RegistrarCommand>),
    /// The machine's timer.
    Wake,
    /// From the writer: these commands could not be stored; the machine rewrites their keys.
    PersistFailed(Vec<RegistrarCommand>),
    /// Answered once everything handled before it is stored and delivered.
    Barrier(RpcReplyPort<Result<(), ChangeError>>),
    Control(crate::shell::Control),
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for RegistrarMsg {}

/// An admin request's reply port and the outcome to send once its commands are stored.
type PendingReply = (RpcReplyPort<Result<(), ChangeError>>, Result<(), ChangeError>);

/// Why an admin change to the registrar (an extension, an address's bindings) was not made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The request is invalid; the text starts with the field it is about (`"password: …"`).
    #[error("{0}")]
    Invalid(String),
    #[error("no such extension")]
    NoSuchExtension,
    /// The change is valid but could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registrar gave no answer for the request (a bug, logged).
    #[error("{0}")]
    Internal(String),
}

pub struct RegistrarState {
    machine: Registrar,
    clock: Arc<dyn Clock>,
    security: Option<Arc<dyn crate::privacy::SecurityLog>>,
    writer: Option<Writer>,
    timer: WakeTimer,
    /// Calls waiting for a pushed phone to register, by (AOR, push id).
    push_watchers: HashMap<(String, String), Vec<tokio::sync::oneshot::Sender<Binding>>>,
    refresh_pushes: RefreshPushes,
}

/// Calls that may wait at once for pushed phones to register (each holds a oneshot sender
/// here); beyond it a new wait is not taken (that call's push times out). A call waits at most
/// its push timer, so only calls in progress ever count.
pub const PUSH_WATCHERS_MAX: usize = 4_096;

/// Jobs the writer takes into one transaction at most.
pub const WRITE_BATCH_JOBS_MAX: usize = 512;

struct Writer {
    jobs: std::sync::mpsc::Sender<WriteJob<PendingReply>>,
    thread: std::thread::JoinHandle<()>,
    /// Where responses go when they bypass the thread.
    sink: Arc<dyn ResponseSink>,
    /// Jobs with commands handed to the thread and not yet stored. Only the actor increments
    /// it, so a zero it reads stays zero until its own next send.
    pending: Arc<AtomicUsize>,
}

impl Writer {
    fn start(store: Arc<dyn RegistrarStore>, sink: Arc<dyn ResponseSink>, registrar: ActorRef<RegistrarMsg>) -> Writer {
        let (jobs, queue) = std::sync::mpsc::channel::<WriteJob<PendingReply>>();
        let pending = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (sink, pending) = (sink.clone(), pending.clone());
            std::thread::Builder::new()
                .name("registrar-writer".into())
                .spawn(move || write_loop(&queue, &*store, &*sink, &registrar, &pending))
                .expect("spawn the registrar's writer thread")
        };
        Writer { jobs, thread, sink, pending }
    }

    /// Delivers what the glue lets out at once and queues the rest, in order.
    fn submit(&self, dispatch: Dispatch<PendingReply>) {
        for (tx, response, authenticated) in dispatch.now {
            self.sink.deliver(tx, response, authenticated);
        }
        if let Some(job) = dispatch.now_job {
            deliver(job, &*self.sink, None);
        }
        let Some(job) = dispatch.queued else { return };
        if !job.commands.is_empty() {
            self.pending.fetch_add(1, Ordering::AcqRel);
        }
        // The writer ends only after the actor stops, so this cannot fail while handling.
        let _ = self.jobs.send(job);
    }

    /// Closes the queue and waits until every job is stored and answered.
    fn finish(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

fn write_loop(
    queue: &std::sync::mpsc::Receiver<WriteJob<PendingReply>>,
    store: &dyn RegistrarStore,
    sink: &dyn ResponseSink,
    registrar: &ActorRef<RegistrarMsg>,
    pending: &AtomicUsize,
) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        jobs.extend(queue.try_iter().take(WRITE_BATCH_JOBS_MAX - 1));
        let mut refused = store_batch(jobs, |commands| store.apply(commands), sink, registrar, pending);
        // The jobs queued while a write was refused have waited as long as it did, and their
        // write would meet the same fault (no quorum, a broken disk): they get its error at
        // once, so no REGISTER waits behind more than one refused write (a minority node
        // answers 503 within one write timeout, inside the endpoint's patience).
        while let Some(error) = refused {
            let behind: Vec<WriteJob<PendingReply>> = queue.try_iter().take(WRITE_BATCH_JOBS_MAX).collect();
            if behind.is_empty() {
                break;
            }
            refused = store_batch(behind, |_| Err(error.clone()), sink, registrar, pending);
        }
    }
}

/// Stores the commands of `jobs` with `write` in one batch, then delivers the jobs in order;
/// the store's error, if it refused them.
fn store_batch(
    mut jobs: Vec<WriteJob<PendingReply>>,
    write: impl FnOnce(&[RegistrarCommand]) -> Result<(), StoreError>,
    sink: &dyn ResponseSink,
    registrar: &ActorRef<RegistrarMsg>,
    pending: &AtomicUsize,
) -> Option<StoreError> {
    let mut commands = Vec::new();
    let stored: Vec<bool> = jobs
        .iter_mut()
        .map(|job| {
            let had = !job.commands.is_empty();
            commands.append(&mut job.commands);
            had
        })
        .collect();
    let result: Result<(), StoreError> = if commands.is_empty() { Ok(()) } else { write(&commands) };
    if let Err(error) = &result {
        tracing::error!(%error, commands = commands.len(), "registrar storage refused a batch");
        metrics::counter!("pbx_registrar_storage_failures_total").increment(1);
        let _ = registrar.cast(RegistrarMsg::PersistFailed(commands));
    }
    let stored_jobs = stored.iter().filter(|had| **had).count();
    pending.fetch_sub(stored_jobs, Ordering::AcqRel);
    for (job, had_commands) in jobs.into_iter().zip(stored) {
        deliver(job, sink, had_commands.then_some(&result));
    }
    result.err()
}

/// Delivers a job's responses, routes and reply; `stored` is the outcome of its commands, if
/// it had any: a failure turns its responses into 503/500 and its reply into an error
/// ([`glue::settle`]).
fn deliver(job: WriteJob<PendingReply>, sink: &dyn ResponseSink, stored: Option<&Result<(), StoreError>>) {
    let settled = glue::settle(job, stored);
    for (tx, response, authenticated) in settled.responses {
        sink.deliver(tx, response, authenticated);
    }
    for (tx, route) in settled.routes {
        sink.route(tx, route);
    }
    if let Some(((reply, outcome), failed)) = settled.reply {
        let outcome = match (outcome, failed) {
            (Ok(()), Some(error)) => Err(ChangeError::Store(error)),
            (other, _) => other,
        };
        let _ = reply.send(outcome);
    }
}

pub struct RegistrarActor;

impl Actor for RegistrarActor {
    type Msg = RegistrarMsg;
    type State = RegistrarState;
    type Arguments = RegistrarArgs;

    async fn pre_start(
        &self,
        me: ActorRef<RegistrarMsg>,
        args: RegistrarArgs,
    ) -> Result<RegistrarState, ActorProcessingErr> {
        let now = args.clock.now();
        let machine = Registrar::new(args.config, args.secret, args.extensions, args.bindings, now)
            .with_forwarding(args.forwarding)
            .with_logged_out(args.logged_out);
        let writer = Writer::start(args.store, args.sink, me);
        let mut state = RegistrarState {
            machine,
            clock: args.clock,
            security: args.security,
            writer: Some(writer),
            timer: WakeTimer::default(),
            push_watchers: HashMap::new(),
            refresh_pushes: args.refresh_pushes,
        };
        // Bindings that expired while the node was down are dropped from storage now.
        state.drain(None);
        Ok(state)
    }

    async fn post_stop(&self, _me: ActorRef<RegistrarMsg>, s: &mut RegistrarState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        // A clean stop writes the batched refreshes too, then waits for the writer to finish.
        s.machine.flush_now();
        s.drain(None);
        if let Some(writer) = s.writer.take() {
            writer.finish();
        }
        Ok(())
    }

    async fn post_start(&self, me: ActorRef<RegistrarMsg>, s: &mut RegistrarState) -> Result<(), ActorProcessingErr> {
        s.rearm(&me);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<RegistrarMsg>,
        msg: RegistrarMsg,
        s: &mut RegistrarState,
    ) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        match msg {
            RegistrarMsg::Register { tx, request, source, transport } => {
                // One span per transaction: every log line about this REGISTER carries its ids.
                let span = tracing::info_span!(
                    "sip_transaction",
                    tx,
                    method = "REGISTER",
                    call_id = request.call_id_str().unwrap_or(""),
                    branch = request.branch_str().unwrap_or(""),
                    %source,
                );
                let _entered = span.enter();
                s.machine.handle(now, RegistrarInput::Register { tx, request, source, transport });
                s.drain(None);
            }
            RegistrarMsg::Route { tx, request, source } => {
                s.machine.handle(now, RegistrarInput::Route { tx, request, source });
                s.drain(None);
            }
            RegistrarMsg::PutExtension { number, password, display_name, reply } => {
                s.machine.handle(now, RegistrarInput::PutExtension { number, password, display_name });
                s.drain(Some(reply));
            }
            RegistrarMsg::RemoveExtension { number, reply } => {
                s.machine.handle(now, RegistrarInput::RemoveExtension { number });
                s.drain(Some(reply));
            }
            RegistrarMsg::Rename { number, display_name, reply } => {
                s.machine.handle(now, RegistrarInput::Rename { number, display_name });
                s.drain(Some(reply));
            }
            RegistrarMsg::SetForwarding { number, forwarding, reply } => {
                s.machine.handle(now, RegistrarInput::SetForwarding { number, forwarding });
                s.drain(Some(reply));
            }
            RegistrarMsg::GetForwarding { number, reply } => {
                let known = s.machine.extensions().any(|e| e.number == number);
                let _ = reply.send(known.then(|| s.machine.forwarding_of(&number)));
            }
            RegistrarMsg::TransferRoute { transferee, number, reply } => {
                let _ = reply.send(s.machine.transfer_route(&transferee, &number));
            }
            RegistrarMsg::LoggedOutOf { member, reply } => {
                let _ = reply.send(s.machine.logged_out_of(&member));
            }
            RegistrarMsg::ForgetAddress { ip, reply } => {
                s.machine.handle(now, RegistrarInput::ForgetAddress { ip });
                s.drain(Some(reply));
            }
            RegistrarMsg::AuthFailure { source, user } => {
                s.machine.handle(now, RegistrarInput::AuthFailure { source, user });
                s.drain(None);
            }
            RegistrarMsg::Replicated(commands) => {
                s.machine.handle(now, RegistrarInput::Replicated(commands));
                s.drain(None);
            }
            RegistrarMsg::PersistFailed(commands) => {
                s.machine.persist_failed(&commands);
            }
            RegistrarMsg::Barrier(reply) => {
                if let Some(writer) = &s.writer {
                    let _ = writer.jobs.send(WriteJob { reply: Some((reply, Ok(()))), ..WriteJob::default() });
                }
            }
            RegistrarMsg::AwaitPushContact { aor, prid, reply } => s.await_push_contact(aor, prid, reply),
            RegistrarMsg::DropPushToken { aor, prid } => {
                tracing::info!(%aor, "push token unregistered by its service: its bindings go");
                s.machine.handle(now, RegistrarInput::DropPushToken { aor, prid });
                s.drain(None);
            }
            RegistrarMsg::ListBindings(reply) => {
                let live = s.machine.bindings().filter(|b| b.expires_at > now).cloned().collect();
                let _ = reply.send(live);
            }
            RegistrarMsg::ListExtensions(reply) => {
                let views = s
                    .machine
                    .extensions()
                    .map(|e| ExtensionView { number: e.number.clone(), display_name: e.display_name.clone() })
                    .collect();
                let _ = reply.send(views);
            }
            RegistrarMsg::Stats(reply) => {
                let stats = RegistrarStats {
                    bindings: s.machine.binding_count(),
                    blocked_sources: s.machine.blocked_sources(now),
                    locked_users: s.machine.locked_users(now),
                };
                let _ = reply.send(stats);
            }
            RegistrarMsg::Wake => {
                s.timer.fired();
                s.machine.handle(now, RegistrarInput::Timeout);
                s.drain(None);
            }
            RegistrarMsg::Control(control) => control.obey("registrar"),
        }
        s.rearm(&me);
        Ok(())
    }
}

impl RegistrarState {
    /// Hands the machine's outputs, in order, to the writer (`Writer::submit`): commands are
    /// stored before the responses (and the admin `reply`) that follow them are delivered.
    /// Events are logged here.
    fn drain(&mut self, reply: Option<RpcReplyPort<Result<(), ChangeError>>>) {
        let mut extension_result = None;
        let in_flight = self.writer.as_ref().map_or(0, |w| w.pending.load(Ordering::Acquire));
        let (security, now) = (self.security.as_deref(), self.clock.now());
        // The outcome is known once the events are in; it is filled in below.
        let reply = reply.map(|r| (r, Err(ChangeError::Internal("no result from the registrar".into()))));
        let mut woken = Vec::new();
        let mut refresh = Vec::new();
        let mut dispatch = glue::dispatch(&mut self.machine, in_flight, reply, Bugs::default(), |event| {
            if let Some(security) = security {
                record_security_event(security, &event, now);
            }
            match &event {
                RegistrarEvent::PushContactRegistered { binding } => woken.push((**binding).clone()),
                RegistrarEvent::PushRefreshDue { binding } => refresh.push((**binding).clone()),
                _ => {}
            }
            if let Some(result) = log_event(event) {
                extension_result = Some(result);
            }
        });
        if let Some(result) = extension_result
            && let Some((_, outcome)) =
                dispatch.now_job.as_mut().or(dispatch.queued.as_mut()).and_then(|job| job.reply.as_mut())
        {
            *outcome = result;
        }
        metrics::gauge!("pbx_registrations_active").set(self.machine.binding_count() as f64);
        if let Some(writer) = &self.writer {
            writer.submit(dispatch);
        }
        for binding in woken {
            self.wake_push_watchers(binding);
        }
        for binding in refresh {
            self.refresh_pushes.due(binding);
        }
    }

    fn await_push_contact(&mut self, aor: String, prid: String, reply: tokio::sync::oneshot::Sender<Binding>) {
        let waiting: usize = self.push_watchers.values().map(Vec::len).sum();
        if waiting >= PUSH_WATCHERS_MAX {
            self.push_watchers.retain(|_, senders| {
                senders.retain(|s| !s.is_closed());
                !senders.is_empty()
            });
            if self.push_watchers.values().map(Vec::len).sum::<usize>() >= PUSH_WATCHERS_MAX {
                tracing::warn!(%aor, "too many calls waiting for pushed phones: this one is not watched");
                return;
            }
        }
        self.push_watchers.entry((aor, prid)).or_default().push(reply);
    }

    /// A pushed phone registered: every call waiting for it gets its binding.
    fn wake_push_watchers(&mut self, binding: Binding) {
        let Some(params) = crate::push::PushContact::params_of(&binding.contact) else { return };
        if let Some(senders) = self.push_watchers.remove(&(binding.aor.clone(), params.prid)) {
            for sender in senders {
                let _ = sender.send(binding.clone());
            }
        }
    }

    /// One timer, for the machine's earliest wake-up; never sleep in `handle`.
    fn rearm(&mut self, me: &ActorRef<RegistrarMsg>) {
        self.timer.arm(me, self.clock.now(), self.machine.poll_timeout(), || RegistrarMsg::Wake);
    }
}

/// Failed authentications and blocks go to the security log (category `security-log`).
fn record_security_event(log: &dyn crate::privacy::SecurityLog, event: &RegistrarEvent, at: crate::Timestamp) {
    use crate::privacy::{SecurityEntry, SecurityEvent};
    let (source, user, event) = match event {
        RegistrarEvent::AuthFailed { source, user } => (*source, Some(user.clone()), SecurityEvent::AuthFailed),
        RegistrarEvent::Blocked { source, user, until } => {
            (*source, Some(user.clone()), SecurityEvent::Blocked { until: *until })
        }
        RegistrarEvent::UserLocked { user, source, until } => {
            (*source, Some(user.clone()), SecurityEvent::UserLocked { until: *until })
        }
        RegistrarEvent::PrefixBlocked { prefix, len, until } => {
            (*prefix, None, SecurityEvent::PrefixBlocked { until: *until, prefix_len: *len })
        }
        _ => return,
    };
    log.record(SecurityEntry::new(at, source, user, event));
}

/// Logs and counts one event; for an extension change, its result for the admin API.
fn log_event(event: RegistrarEvent) -> Option<Result<(), ChangeError>> {
    match event {
        RegistrarEvent::Registered { aor, contact } => tracing::info!(%aor, %contact, "registered"),
        RegistrarEvent::PushContactRegistered { binding } => {
            tracing::debug!(aor = %binding.aor, "push contact registered")
        }
        RegistrarEvent::PushRefreshDue { binding } => {
            tracing::debug!(aor = %binding.aor, "push contact due for a refresh push")
        }
        RegistrarEvent::Unregistered { aor, contact } => tracing::info!(%aor, %contact, "unregistered"),
        RegistrarEvent::Expired { aor, contact } => tracing::info!(%aor, %contact, "registration expired"),
        RegistrarEvent::AuthFailed { source, user } => {
            tracing::warn!(%source, user = ?user, "authentication failed");
            metrics::counter!("pbx_auth_failures_total").increment(1);
        }
        RegistrarEvent::Blocked { source, user, until } => {
            tracing::warn!(%source, %user, %until, "user blocked from this source after repeated authentication failures");
            metrics::counter!("pbx_blocked_sources_total").increment(1);
        }
        RegistrarEvent::UserLocked { user, source, until } => {
            tracing::warn!(%user, last_source = %source, %until, "user locked after repeated authentication failures from all sources (its registered phones are spared)");
            metrics::counter!("pbx_users_locked_total").increment(1);
        }
        RegistrarEvent::PrefixBlocked { prefix, len, until } => {
            tracing::warn!(%prefix, len, %until, "prefix blocked: the per-source failure table is full");
            metrics::counter!("pbx_blocked_prefixes_total").increment(1);
        }
        RegistrarEvent::FailureUntracked { source } => {
            tracing::debug!(%source, "authentication failure not tracked by source: the failure tables are full");
            metrics::counter!("pbx_auth_failures_untracked_total").increment(1);
        }
        RegistrarEvent::AuthIgnored { source, reason } => {
            tracing::debug!(%source, reason, "credentials ignored, challenged again");
            metrics::counter!("pbx_auth_ignored_total", "reason" => reason).increment(1);
        }
        RegistrarEvent::Rejected { source, method: "INVITE", code } => {
            tracing::debug!(%source, code, "INVITE rejected");
            metrics::counter!("pbx_invite_rejected_total", "code" => code.to_string()).increment(1);
        }
        RegistrarEvent::Rejected { source, code, .. } => {
            tracing::debug!(%source, code, "REGISTER rejected");
            metrics::counter!("pbx_register_rejected_total", "code" => code.to_string()).increment(1);
        }
        RegistrarEvent::ExtensionChanged { number } => {
            tracing::info!(%number, "extension changed");
            return Some(Ok(()));
        }
        RegistrarEvent::ForwardingChanged { number, forwarding } => {
            tracing::info!(%number, ?forwarding, "call forwarding changed");
            return Some(Ok(()));
        }
        RegistrarEvent::ExtensionInvalid { reason } => {
            tracing::info!(%reason, "extension change refused");
            return Some(Err(ChangeError::Invalid(reason)));
        }
        RegistrarEvent::NoSuchExtension { number } => {
            tracing::info!(%number, "extension change refused: no such extension");
            return Some(Err(ChangeError::NoSuchExtension));
        }
        RegistrarEvent::AddressForgotten { bindings } => {
            tracing::info!(bindings, "bindings of an erased address removed");
            return Some(Ok(()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use crate::registrar::tests::{PASSWORD_100, Reg, authorization, challenge_for, source};
    use crate::sip::message::Name;
    use std::sync::Mutex;
    use std::time::Duration;

    /// The REGISTER message a phone at `source()` sends inside transaction `tx`.
    fn register(tx: u64, reg: &Reg) -> RegistrarMsg {
        RegistrarMsg::Register { tx, request: reg.request(), source: source(), transport: Transport::Udp }
    }

    /// Waits until the writer has stored and delivered everything queued so far. It yields
    /// instead of awaiting, so the paused runtime never looks idle and virtual time cannot jump
    /// ahead while the (real) writer thread works.
    async fn settle(actor: &ActorRef<RegistrarMsg>) {
        let (tx, mut rx) = ractor::concurrency::oneshot();
        actor.cast(RegistrarMsg::Barrier(tx.into())).unwrap();
        for _ in 0..10_000_000 {
            match rx.try_recv() {
                Ok(result) => return result.unwrap(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                Err(e) => panic!("barrier dropped: {e}"),
            }
        }
        panic!("the writer did not settle");
    }

    /// A virtual clock on tokio's (paused) time, starting at an arbitrary epoch offset.
    struct TokioClock(tokio::time::Instant);
    impl Clock for TokioClock {
        fn now(&self) -> Timestamp {
            Timestamp::from_secs(1_700_000_000) + self.0.elapsed()
        }
    }

    /// Stores and deliveries in one journal, to check their order; responses kept whole. The
    /// store refuses every batch while `broken` is set.
    #[derive(Default)]
    struct Journal {
        entries: Mutex<Vec<String>>,
        responses: Mutex<Vec<Response>>,
        broken: std::sync::atomic::AtomicBool,
        /// While set, every write fails for want of a quorum.
        minority: std::sync::atomic::AtomicBool,
        /// While set, every write waits (a stalled disk, a write waiting for a quorum).
        stalled: Mutex<bool>,
        unstalled: std::sync::Condvar,
        /// Writes the store was asked for.
        attempts: std::sync::atomic::AtomicUsize,
    }
    impl Journal {
        fn entries(&self) -> Vec<String> {
            self.entries.lock().unwrap().clone()
        }

        fn stall(&self, stalled: bool) {
            *self.stalled.lock().unwrap() = stalled;
            self.unstalled.notify_all();
        }
    }
    impl RegistrarStore for Journal {
        fn apply(&self, commands: &[RegistrarCommand]) -> Result<(), StoreError> {
            self.attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(self.unstalled.wait_while(self.stalled.lock().unwrap(), |stalled| *stalled).unwrap());
            if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Disk("disk on fire".into()));
            }
            if self.minority.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::NoQuorum { retry_after_s: 7 });
            }
            let mut entries = self.entries.lock().unwrap();
            for c in commands {
                entries.push(match c {
                    RegistrarCommand::PutExtension(e) => format!("put-extension {}", e.number),
                    RegistrarCommand::RemoveExtension { number } => format!("remove-extension {number}"),
                    RegistrarCommand::PutBinding(b) => format!("put-binding {}", b.contact),
                    RegistrarCommand::RemoveBinding { contact, .. } => format!("remove-binding {contact}"),
                    RegistrarCommand::SetForwarding { number, .. } => format!("set-forwarding {number}"),
                    RegistrarCommand::GroupLogin { group, member, .. } => format!("group-login {group} {member}"),
                });
            }
            Ok(())
        }
    }
    impl ResponseSink for Journal {
        fn deliver(&self, tx: u64, response: Response, _authenticated: bool) {
            self.entries.lock().unwrap().push(format!("respond {tx} {}", response.code));
            self.responses.lock().unwrap().push(response);
        }

        fn route(&self, tx: u64, route: Route) {
            self.entries.lock().unwrap().push(format!("route {tx} {}->{}", route.caller, route.callee));
        }
    }

    /// Extension 100 with [`PASSWORD_100`], as the directory stores it (HA1 only).
    fn extension_100() -> Extension {
        Extension {
            number: "100".into(),
            display_name: String::new(),
            ha1_md5: crate::registrar::ha1(crate::registrar::Algorithm::Md5, "100", "pbx", PASSWORD_100),
            ha1_sha256: crate::registrar::ha1(crate::registrar::Algorithm::Sha256, "100", "pbx", PASSWORD_100),
        }
    }

    /// A registrar shell on virtual time whose store and sink are `journal`.
    async fn spawn_over(
        journal: &Arc<Journal>,
        secret: u8,
        extensions: Vec<Extension>,
    ) -> (ActorRef<RegistrarMsg>, tokio::task::JoinHandle<()>) {
        let args = RegistrarArgs {
            config: RegistrarConfig::default(),
            secret: [secret; 32],
            extensions,
            bindings: vec![],
            forwarding: vec![],
            logged_out: vec![],
            clock: Arc::new(TokioClock(tokio::time::Instant::now())),
            store: journal.clone(),
            sink: journal.clone(),
            security: None,
            refresh_pushes: Default::default(),
        };
        Actor::spawn(None, RegistrarActor, args).await.unwrap()
    }

    /// The shell stores a new binding before it delivers the 200, and expires it on virtual time.
    #[tokio::test(start_paused = true)]
    async fn persists_before_responding_and_expires_on_virtual_time() {
        let journal = Arc::new(Journal::default());
        let (actor, handle) = spawn_over(&journal, 1, vec![]).await;
        let put = |reply| RegistrarMsg::PutExtension {
            number: "100".into(),
            password: PASSWORD_100.into(),
            display_name: "Desk".into(),
            reply,
        };
        assert_eq!(ractor::call!(actor, put).unwrap(), Ok(()));
        let short = |reply| RegistrarMsg::PutExtension {
            number: "101".into(),
            password: "short".into(),
            display_name: "Desk".into(),
            reply,
        };
        assert!(
            matches!(ractor::call!(actor, short).unwrap(), Err(ChangeError::Invalid(r)) if r.starts_with("password"))
        );
        let views = ractor::call!(actor, RegistrarMsg::ListExtensions).unwrap();
        assert_eq!(views, vec![ExtensionView { number: "100".into(), display_name: "Desk".into() }]);

        let reg = Reg::new("100", &["<sip:100@192.0.2.7:5060>"]).expires(120);
        actor.cast(register(1, &reg)).unwrap();
        settle(&actor).await;
        let challenge = challenge_for(journal.responses.lock().unwrap().last().unwrap(), "SHA-256");
        actor.cast(register(2, &reg.clone().cseq(2).auth(authorization(&challenge, "100", PASSWORD_100, 1)))).unwrap();
        let stats = ractor::call!(actor, RegistrarMsg::Stats).unwrap();
        assert_eq!(stats, RegistrarStats { bindings: 1, blocked_sources: 0, locked_users: 0 });
        settle(&actor).await;
        assert_eq!(
            journal.entries(),
            ["put-extension 100", "respond 1 401", "put-binding sip:100@192.0.2.7:5060", "respond 2 200"]
        );

        tokio::time::sleep(Duration::from_secs(119)).await;
        assert_eq!(ractor::call!(actor, RegistrarMsg::ListBindings).unwrap().len(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(ractor::call!(actor, RegistrarMsg::Stats).unwrap().bindings, 0);
        settle(&actor).await;
        assert_eq!(journal.entries().last().map(String::as_str), Some("remove-binding sip:100@192.0.2.7:5060"));
        actor.stop(None);
        handle.await.unwrap();
    }

    /// A store that refuses the binding makes the REGISTER a 500; once it recovers, the flush
    /// writes the binding after all.
    #[tokio::test(start_paused = true)]
    async fn storage_failure_answers_500_and_is_retried() {
        let journal = Arc::new(Journal::default());
        let (actor, handle) = spawn_over(&journal, 2, vec![extension_100()]).await;
        let reg = Reg::new("100", &["<sip:100@192.0.2.7:5060>"]);
        actor.cast(register(1, &reg)).unwrap();
        settle(&actor).await;
        let challenge = challenge_for(journal.responses.lock().unwrap().last().unwrap(), "MD5");
        journal.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        actor.cast(register(2, &reg.clone().cseq(2).auth(authorization(&challenge, "100", PASSWORD_100, 1)))).unwrap();
        settle(&actor).await;
        assert_eq!(journal.entries(), ["respond 1 401", "respond 2 500"]);
        journal.broken.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(6)).await;
        settle(&actor).await;
        assert_eq!(journal.entries().last().map(String::as_str), Some("put-binding sip:100@192.0.2.7:5060"));
        actor.stop(None);
        handle.await.unwrap();
    }

    /// A store without a quorum makes the REGISTER a 503 with the store's Retry-After (not the
    /// 500 of a disk fault); once the cluster is whole again, the flush writes the binding.
    #[tokio::test(start_paused = true)]
    async fn no_quorum_answers_503_with_retry_after() {
        let journal = Arc::new(Journal::default());
        let (actor, handle) = spawn_over(&journal, 3, vec![extension_100()]).await;
        let reg = Reg::new("100", &["<sip:100@192.0.2.7:5060>"]);
        actor.cast(register(1, &reg)).unwrap();
        settle(&actor).await;
        let challenge = challenge_for(journal.responses.lock().unwrap().last().unwrap(), "MD5");
        journal.minority.store(true, std::sync::atomic::Ordering::SeqCst);
        actor.cast(register(2, &reg.clone().cseq(2).auth(authorization(&challenge, "100", PASSWORD_100, 1)))).unwrap();
        settle(&actor).await;
        assert_eq!(journal.entries(), ["respond 1 401", "respond 2 503"]);
        let refused = journal.responses.lock().unwrap().last().unwrap().clone();
        let retry_after: Vec<String> =
            refused.headers.get_raw(&Name::RETRY_AFTER).map(|v| v.as_str().to_string()).collect();
        assert_eq!(retry_after, ["7"]);
        assert_eq!(refused.headers.get_raw(&Name::CALL_ID).count(), 1, "the 503 keeps the request's Call-ID");
        journal.minority.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(6)).await;
        settle(&actor).await;
        assert_eq!(journal.entries().last().map(String::as_str), Some("put-binding sip:100@192.0.2.7:5060"));
        actor.stop(None);
        handle.await.unwrap();
    }

    /// An admin change the store cannot take says why, typed: no quorum or a disk fault, each
    /// its own error, next to an invalid request and an unknown extension.
    #[tokio::test(start_paused = true)]
    async fn admin_changes_say_why_they_failed() {
        let journal = Arc::new(Journal::default());
        let (actor, handle) = spawn_over(&journal, 4, vec![]).await;
        let put = |reply| RegistrarMsg::PutExtension {
            number: "100".into(),
            password: PASSWORD_100.into(),
            display_name: "Desk".into(),
            reply,
        };
        journal.minority.store(true, std::sync::atomic::Ordering::SeqCst);
        let refused = ractor::call!(actor, put).unwrap();
        assert_eq!(refused, Err(ChangeError::Store(StoreError::NoQuorum { retry_after_s: 7 })));
        journal.minority.store(false, std::sync::atomic::Ordering::SeqCst);
        journal.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        let refused = ractor::call!(actor, put).unwrap();
        assert!(matches!(refused, Err(ChangeError::Store(StoreError::Disk(_)))), "{refused:?}");
        journal.broken.store(false, std::sync::atomic::Ordering::SeqCst);
        let gone = |reply| RegistrarMsg::RemoveExtension { number: "999".into(), reply };
        assert_eq!(ractor::call!(actor, gone).unwrap(), Err(ChangeError::NoSuchExtension));
        actor.stop(None);
        handle.await.unwrap();
    }

    /// A write that hangs (a minority node waiting for a quorum) holds back what depends on it,
    /// the 200 for its binding and an authenticated refresh behind it, but not a challenge to
    /// someone else, which depends on no stored state.
    #[tokio::test(start_paused = true)]
    async fn a_challenge_does_not_wait_for_a_stalled_write() {
        let journal = Arc::new(Journal::default());
        let (actor, handle) = spawn_over(&journal, 5, vec![extension_100()]).await;
        let reg = Reg::new("100", &["<sip:100@192.0.2.7:5060>"]);
        actor.cast(register(1, &reg)).unwrap();
        settle(&actor).await;
        let challenge = challenge_for(journal.responses.lock().unwrap().last().unwrap(), "MD5");
        journal.stall(true);
        actor.cast(register(2, &reg.clone().cseq(2).auth(authorization(&challenge, "100", PASSWORD_100, 1)))).unwrap();
        actor.cast(register(3, &Reg::new("100", &["<sip:100@192.0.2.8:5060>"]).call_id("other"))).unwrap();
        actor.cast(register(4, &reg.clone().cseq(3).auth(authorization(&challenge, "100", PASSWORD_100, 2)))).unwrap();
        // The actor has handled all three once it answers this.
        ractor::call!(actor, RegistrarMsg::Stats).unwrap();
        assert_eq!(journal.entries(), ["respond 1 401", "respond 3 401"], "only the challenge is out while stalled");
        journal.stall(false);
        settle(&actor).await;
        assert_eq!(
            journal.entries(),
            ["respond 1 401", "respond 3 401", "put-binding sip:100@192.0.2.7:5060", "respond 2 200", "respond 4 200"]
        );
        actor.stop(None);
        handle.await.unwrap();
    }

    /// A minority node: a REGISTER queued behind a write that waits for a quorum gets that
    /// write's 503 when it fails, not a write timeout of its own after it (which would outlast
    /// the endpoint's patience and turn into a 500).
    #[tokio::test(start_paused = true)]
    async fn what_waited_behind_a_refused_write_fails_with_it() {
        let journal = Arc::new(Journal::default());
        let (actor, handle) = spawn_over(&journal, 6, vec![extension_100()]).await;
        let (a, b) = (Reg::new("100", &["<sip:100@192.0.2.7:5060>"]), Reg::new("100", &["<sip:100@192.0.2.8:5060>"]));
        let b = b.call_id("other");
        for (tx, reg) in [(1, &a), (2, &b)] {
            actor.cast(register(tx, reg)).unwrap();
        }
        settle(&actor).await;
        let responses = journal.responses.lock().unwrap().clone();
        let (ca, cb) = (challenge_for(&responses[0], "MD5"), challenge_for(&responses[1], "MD5"));
        journal.minority.store(true, std::sync::atomic::Ordering::SeqCst);
        journal.stall(true);
        actor.cast(register(3, &a.clone().cseq(2).auth(authorization(&ca, "100", PASSWORD_100, 1)))).unwrap();
        // The writer has taken the first binding's write and waits in it.
        for _ in 0..10_000_000 {
            if journal.attempts.load(std::sync::atomic::Ordering::SeqCst) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(journal.attempts.load(std::sync::atomic::Ordering::SeqCst), 1, "the first write is in flight");
        actor.cast(register(4, &b.clone().cseq(2).auth(authorization(&cb, "100", PASSWORD_100, 1)))).unwrap();
        ractor::call!(actor, RegistrarMsg::Stats).unwrap();
        journal.stall(false);
        settle(&actor).await;
        assert_eq!(journal.entries(), ["respond 1 401", "respond 2 401", "respond 3 503", "respond 4 503"]);
        assert_eq!(
            journal.attempts.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the REGISTER behind the refused write did not wait for a write of its own"
        );
        actor.stop(None);
        handle.await.unwrap();
    }
}

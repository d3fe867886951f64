//! The node's supervisor: one ractor actor that starts the core actors linked to itself —
//! registrar, calls, licence watchdog, voucher sync, retention reaper, SIP endpoint (see
//! `core_actors` for each) — and restarts one that fails from its durable state, as an
//! Erlang/OTP `one_for_one` supervisor with `permanent` children does. Each restart is logged
//! (the actor's name and what ractor caught: the panic message) and counted
//! (`pbx_actor_restarts_total{actor}`).
//!
//! Restarts are bounded like OTP's restart intensity ([`Intensity`]): more than
//! [`RESTARTS_MAX`] restarts of one actor within [`RESTART_WINDOW_S`] and the supervisor gives
//! up — the node stops and exits non-zero, so that its service manager (systemd's
//! `Restart=on-failure`) starts the whole process afresh: the next level of the tree.
//!
//! Per-call actors (a call, its legs, its media session) are not children here: a call that
//! loses one ends with BYE and a `failed` CDR (`pbx_actors::call::actor`); restarting half a
//! call would be a worse lie than ending it.
//!
//! Readiness (`/readyz`) lives here too: every core actor must answer a ping ([`Control::Ping`])
//! within [`READY_ANSWER_MS`], and the node must know a Raft leader.
//!
//! Not done: a wedged actor (one whose `handle` never returns) is not restarted; it makes
//! `/readyz` answer 503, which is what an orchestrator acts on.

pub mod core_actors;

use pbx_actors::call::actor::CallsMsg;
use pbx_actors::conference::actor::ConferencesMsg;
use pbx_actors::endpoint::EndpointMsg;
use pbx_actors::endpoint::actor::EndpointSink;
use pbx_actors::licence::{VoucherMsg, WatchdogMsg};
use pbx_actors::privacy::actor::ReaperMsg;
use pbx_actors::registrar::RegistrarMsg;
use pbx_actors::shell::{Control, Current};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Restarts of one actor tolerated within [`RESTART_WINDOW_S`]; one more and the node exits.
/// OTP's default is 1 in 5 s; a little more slack here, since a restart here is cheap and a
/// whole-process restart drops every call.
pub const RESTARTS_MAX: u32 = 3;
pub const RESTART_WINDOW_S: u64 = 60;
/// How soon a restart that itself failed (storage unreadable, say) is tried again; each try
/// counts against the intensity, so this ends in a restart or in the node exiting.
pub const RESTART_RETRY_MS: u64 = 1_000;
/// How long each core actor gets to stop at shutdown before the next is stopped anyway.
pub const STOP_WAIT_S: u64 = 10;
/// How long `/readyz` waits for each actor's answer.
pub const READY_ANSWER_MS: u64 = 1_000;

const _: () = assert!(RESTARTS_MAX >= 1 && RESTART_WINDOW_S >= 1);
const _: () = assert!(RESTART_RETRY_MS < RESTART_WINDOW_S * 1_000);

/// Erlang/OTP's restart intensity for one child, as a pure machine: time comes in.
#[derive(Debug)]
pub struct Intensity {
    max: u32,
    window: Duration,
    /// When the restarts still inside the window happened, oldest first; at most `max`.
    recent: VecDeque<Instant>,
}

/// What to do about a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Restart,
    /// More than `max` restarts within the window: stop the node.
    GiveUp,
}

impl Intensity {
    pub fn new(max: u32, window: Duration) -> Intensity {
        Intensity { max, window, recent: VecDeque::with_capacity(max as usize) }
    }

    /// The child failed at `now` (never earlier than a previous call's `now`).
    pub fn failed(&mut self, now: Instant) -> Verdict {
        while self.recent.front().is_some_and(|&at| now.saturating_duration_since(at) >= self.window) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max as usize {
            return Verdict::GiveUp;
        }
        self.recent.push_back(now);
        Verdict::Restart
    }
}

impl Default for Intensity {
    fn default() -> Intensity {
        Intensity::new(RESTARTS_MAX, Duration::from_secs(RESTART_WINDOW_S))
    }
}

pub type StartFuture<'a> = Pin<Box<dyn Future<Output = Result<ActorCell, String>> + Send + 'a>>;

/// A core actor as the supervisor sees it.
pub trait Child: Send + 'static {
    /// Its name in logs and in `pbx_actor_restarts_total{actor}`.
    fn name(&self) -> &'static str;
    /// Starts it linked to `supervisor`, from durable state, and points everything that
    /// reaches it at the new incarnation. `restart`: an earlier incarnation failed.
    fn start(&mut self, supervisor: ActorCell, restart: bool) -> StartFuture<'_>;
}

pub enum SupervisorMsg {
    /// Start a child (at start-up, in order); `Err` says why it did not start.
    Start(Box<dyn Child>, RpcReplyPort<Result<(), String>>),
    /// Try again to restart child `n`, whose restart failed.
    Retry(usize),
    /// Stop every child, the last started first; answered once they are stopped.
    Shutdown(RpcReplyPort<()>),
}

// Local only; see `pbx_actors::shell` on ractor's `cluster` feature.
impl ractor::Message for SupervisorMsg {}

pub struct SupervisorArgs {
    /// Told why, once, when a child failed too often: the node then stops and exits non-zero.
    pub give_up: tokio::sync::mpsc::UnboundedSender<String>,
}

struct Supervised {
    child: Box<dyn Child>,
    /// The running incarnation; `None` while it restarts.
    cell: Option<ActorCell>,
    intensity: Intensity,
}

pub struct SupervisorState {
    children: Vec<Supervised>,
    give_up: tokio::sync::mpsc::UnboundedSender<String>,
    /// Shutting down (or given up): children that stop are not restarted.
    stopping: bool,
}

pub struct Supervisor;

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState { children: Vec::new(), give_up: args.give_up, stopping: false })
    }

    async fn handle(
        &self,
        me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        s: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start(mut child, reply) => {
                let name = child.name();
                // Present from the start, so "never restarted" reads 0 rather than absent.
                metrics::counter!("pbx_actor_restarts_total", "actor" => name).increment(0);
                let result = child.start(me.get_cell(), false).await;
                let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
                if let Ok(cell) = result {
                    s.children.push(Supervised { child, cell: Some(cell), intensity: Intensity::default() });
                }
                let _ = reply.send(outcome);
            }
            SupervisorMsg::Retry(n) => s.restart(&me, n).await,
            SupervisorMsg::Shutdown(reply) => {
                s.stopping = true;
                for supervised in s.children.iter_mut().rev() {
                    if let Some(cell) = supervised.cell.take() {
                        let wait = Some(Duration::from_secs(STOP_WAIT_S));
                        if cell.stop_and_wait(None, wait).await.is_err() {
                            tracing::warn!(actor = supervised.child.name(), "did not stop in time");
                        }
                    }
                }
                let _ = reply.send(());
                me.stop(None);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        s: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped ({})", reason.as_deref().unwrap_or("no reason given")))
            }
            _ => return Ok(()),
        };
        if s.stopping {
            return Ok(());
        }
        let Some(n) = s.children.iter().position(|c| c.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        s.children[n].cell = None;
        let name = s.children[n].child.name();
        tracing::error!(actor = name, reason = %why, "core actor failed; restarting it from its durable state");
        s.restart(&me, n).await;
        Ok(())
    }
}

impl SupervisorState {
    async fn restart(&mut self, me: &ActorRef<SupervisorMsg>, n: usize) {
        if self.stopping {
            return;
        }
        let supervised = &mut self.children[n];
        let name = supervised.child.name();
        if supervised.intensity.failed(Instant::now()) == Verdict::GiveUp {
            let reason = format!(
                "core actor {name} failed more than {RESTARTS_MAX} times within {RESTART_WINDOW_S} s: \
                 the node stops so that its service manager starts it afresh"
            );
            tracing::error!(actor = name, "{reason}");
            self.stopping = true;
            let _ = self.give_up.send(reason);
            return;
        }
        match supervised.child.start(me.get_cell(), true).await {
            Ok(cell) => {
                supervised.cell = Some(cell);
                metrics::counter!("pbx_actor_restarts_total", "actor" => name).increment(1);
                tracing::warn!(actor = name, "core actor restarted");
            }
            Err(error) => {
                tracing::error!(actor = name, %error, "core actor did not restart; trying again");
                me.send_after(Duration::from_millis(RESTART_RETRY_MS), move || SupervisorMsg::Retry(n));
            }
        }
    }
}

/// Starts `child` under `supervisor`; `Err` says why it did not start.
pub async fn start(supervisor: &ActorRef<SupervisorMsg>, child: impl Child) -> Result<(), String> {
    match supervisor.call(|reply| SupervisorMsg::Start(Box::new(child), reply), None).await {
        Ok(ractor::rpc::CallResult::Success(result)) => result,
        _ => Err("the supervisor did not answer".into()),
    }
}

/// Every core actor of a node that serves SIP, as it runs now.
#[derive(Clone, Default)]
pub struct CoreActors {
    pub registrar: Current<RegistrarMsg>,
    /// Every shard of the SIP endpoint.
    pub endpoint: EndpointSink,
    pub calls: Current<CallsMsg>,
    pub reaper: Current<ReaperMsg>,
    pub conferences: Current<ConferencesMsg>,
    /// `None` when no licence service is configured (then neither licence actor runs).
    pub watchdog: Option<Current<WatchdogMsg>>,
    pub vouchers: Option<Current<VoucherMsg>>,
    /// Where the registrar's refresh pushes (RFC 8599) go: push dispatch, when it runs.
    pub refresh_pushes: pbx_actors::registrar::RefreshPushes,
}

/// How one actor answered a ping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Answered,
    /// No incarnation is running (it is being restarted, or never started).
    NotRunning,
    /// Running, but no answer within the wait: wedged or flooded.
    NoAnswer,
}

/// Pings `actor` (its `Control(Ping)`, built by `wrap`), waiting at most `wait`.
pub async fn ping<M: ractor::Message>(actor: &Current<M>, wrap: fn(Control) -> M, wait: Duration) -> Answer {
    let Some(actor) = actor.get() else { return Answer::NotRunning };
    match actor.call(|reply| wrap(Control::Ping(reply)), Some(wait)).await {
        Ok(ractor::rpc::CallResult::Success(())) => Answer::Answered,
        Ok(_) => Answer::NoAnswer,
        Err(_) => Answer::NotRunning,
    }
}

/// The endpoint's answer: every shard's pings at once, the worst answer (one shard down is
/// the endpoint not ready).
async fn ping_shards(endpoint: &EndpointSink, wait: Duration) -> Answer {
    let mut pings = tokio::task::JoinSet::new();
    for shard in endpoint.shards() {
        let shard = shard.clone();
        pings.spawn(async move { ping(&shard, EndpointMsg::Control, wait).await });
    }
    let mut worst = Answer::Answered;
    while let Some(answer) = pings.join_next().await {
        match answer.unwrap_or(Answer::NoAnswer) {
            Answer::NotRunning => worst = Answer::NotRunning,
            Answer::NoAnswer if worst == Answer::Answered => worst = Answer::NoAnswer,
            _ => {}
        }
    }
    worst
}

impl CoreActors {
    /// Every core actor's answer to a ping, asked at once (so the whole takes one wait at most).
    pub async fn answers(&self, wait: Duration) -> Vec<(&'static str, Answer)> {
        async fn optional<M: ractor::Message>(
            actor: &Option<Current<M>>,
            wrap: fn(Control) -> M,
            wait: Duration,
        ) -> Option<Answer> {
            match actor {
                Some(actor) => Some(ping(actor, wrap, wait).await),
                None => None,
            }
        }
        let (registrar, endpoint, calls, reaper, conferences, watchdog, vouchers) = tokio::join!(
            ping(&self.registrar, RegistrarMsg::Control, wait),
            ping_shards(&self.endpoint, wait),
            ping(&self.calls, CallsMsg::Control, wait),
            ping(&self.reaper, ReaperMsg::Control, wait),
            ping(&self.conferences, ConferencesMsg::Shell, wait),
            optional(&self.watchdog, WatchdogMsg::Control, wait),
            optional(&self.vouchers, VoucherMsg::Control, wait),
        );
        let mut answers = vec![
            ("registrar", registrar),
            ("endpoint", endpoint),
            ("calls", calls),
            ("reaper", reaper),
            ("conferences", conferences),
        ];
        answers.extend(watchdog.map(|a| ("licence-watchdog", a)));
        answers.extend(vouchers.map(|a| ("voucher-sync", a)));
        answers
    }

    /// The test hook: makes `target` panic. `call` and `media` are the oldest call's actor and
    /// media session. `Err` names what is not there.
    pub async fn inject_panic(&self, target: &str) -> Result<(), String> {
        let sent = match target {
            "registrar" => self.registrar.cast(RegistrarMsg::Control(Control::Panic)),
            // "endpoint" is shard 0; "endpoint-N" shard N.
            "endpoint" => self.endpoint.shard(0).cast(EndpointMsg::Control(Control::Panic)),
            shard if shard.starts_with("endpoint-") => {
                let count = self.endpoint.count();
                let n = shard["endpoint-".len()..].parse::<usize>().ok().filter(|&n| n < count);
                let Some(n) = n else { return Err(format!("{target}: no such shard (the endpoint has {count})")) };
                self.endpoint.shard(n).cast(EndpointMsg::Control(Control::Panic))
            }
            "calls" => self.calls.cast(CallsMsg::Control(Control::Panic)),
            "conferences" => self.conferences.cast(ConferencesMsg::Shell(Control::Panic)),
            "reaper" => self.reaper.cast(ReaperMsg::Control(Control::Panic)),
            "licence-watchdog" => self.watchdog.as_ref().is_some_and(|a| a.cast(WatchdogMsg::Control(Control::Panic))),
            "voucher-sync" => self.vouchers.as_ref().is_some_and(|a| a.cast(VoucherMsg::Control(Control::Panic))),
            "call" | "media" => {
                let Some(calls) = self.calls.get() else { return Err("calls: not running".into()) };
                let media = target == "media";
                match calls.call(|reply| CallsMsg::PanicCall { media, reply }, Some(Duration::from_secs(1))).await {
                    Ok(ractor::rpc::CallResult::Success(true)) => true,
                    Ok(ractor::rpc::CallResult::Success(false)) => return Err("no call in progress".into()),
                    _ => false,
                }
            }
            _ => {
                return Err(format!(
                    "{target:?}: no such actor (registrar, endpoint, endpoint-N, calls, call, media, reaper, \
                     conferences, licence-watchdog, voucher-sync)"
                ));
            }
        };
        if sent { Ok(()) } else { Err(format!("{target}: not running")) }
    }
}

/// `/readyz`'s reasons for not being ready; none means ready.
pub fn unready_reasons(answers: &[(&str, Answer)], leader_known: bool) -> Vec<String> {
    let mut reasons: Vec<String> = answers
        .iter()
        .filter_map(|(name, answer)| match answer {
            Answer::Answered => None,
            Answer::NotRunning => Some(format!("{name}: not running")),
            Answer::NoAnswer => Some(format!("{name}: no answer within {:.0} s", READY_ANSWER_MS as f64 / 1000.0)),
        })
        .collect();
    if !leader_known {
        reasons.push("cluster: no leader known".into());
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Up to the maximum within the window each failure restarts; one more gives up.
    #[test]
    fn intensity_gives_up_after_max_restarts_in_the_window() {
        let start = Instant::now();
        let mut intensity = Intensity::new(3, Duration::from_secs(60));
        for s in [0, 10, 20] {
            assert_eq!(intensity.failed(start + Duration::from_secs(s)), Verdict::Restart, "at {s} s");
        }
        assert_eq!(intensity.failed(start + Duration::from_secs(59)), Verdict::GiveUp);
    }

    /// Failures spread wider than the window restart forever; the window slides.
    #[test]
    fn intensity_forgets_restarts_older_than_the_window() {
        let start = Instant::now();
        let mut intensity = Intensity::new(3, Duration::from_secs(60));
        // Every 21 s: at most three failures (this one and two before) inside any 60 s.
        for n in 0..100u64 {
            assert_eq!(intensity.failed(start + Duration::from_secs(n * 21)), Verdict::Restart, "failure {n}");
        }
        let mut tight = Intensity::new(3, Duration::from_secs(60));
        for s in [0, 30, 59, 60, 61] {
            let verdict = tight.failed(start + Duration::from_secs(s));
            // At 60 s the restart at 0 s has left the window; at 61 s three remain (30, 59, 60).
            let want = if s == 61 { Verdict::GiveUp } else { Verdict::Restart };
            assert_eq!(verdict, want, "at {s} s");
        }
    }

    /// One allowed restart: the second failure in the window gives up (OTP's intensity 1).
    #[test]
    fn intensity_of_one() {
        let start = Instant::now();
        let mut intensity = Intensity::new(1, Duration::from_secs(5));
        assert_eq!(intensity.failed(start), Verdict::Restart);
        assert_eq!(intensity.failed(start + Duration::from_secs(4)), Verdict::GiveUp);
    }

    /// Ready only when every actor answered and a leader is known; each reason names the actor.
    #[test]
    fn readiness_names_every_reason() {
        let all = [("registrar", Answer::Answered), ("endpoint", Answer::Answered)];
        assert!(unready_reasons(&all, true).is_empty());
        let some = [("registrar", Answer::NoAnswer), ("endpoint", Answer::Answered), ("calls", Answer::NotRunning)];
        assert_eq!(
            unready_reasons(&some, false),
            ["registrar: no answer within 1 s", "calls: not running", "cluster: no leader known"]
        );
    }

    enum TestMsg {
        Control(Control),
        /// Holds the actor's loop (test only: product shells never sleep in `handle`).
        Stall(Duration),
    }
    impl ractor::Message for TestMsg {}

    struct TestActor;
    impl Actor for TestActor {
        type Msg = TestMsg;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<TestMsg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(&self, _: ActorRef<TestMsg>, msg: TestMsg, _: &mut ()) -> Result<(), ActorProcessingErr> {
            match msg {
                TestMsg::Control(control) => control.obey("test"),
                TestMsg::Stall(d) => tokio::time::sleep(d).await,
            }
            Ok(())
        }
    }

    /// A ping is answered by a running actor, not by a wedged one within the wait, and an
    /// actor that is not running (none yet, or stopped) reads as such.
    #[tokio::test(start_paused = true)]
    async fn ping_tells_answered_wedged_and_gone_apart() {
        let wait = Duration::from_millis(READY_ANSWER_MS);
        let (actor, handle) = Actor::spawn(None, TestActor, ()).await.unwrap();
        let current = Current::new(actor.clone());
        assert_eq!(ping(&current, TestMsg::Control, wait).await, Answer::Answered);
        actor.cast(TestMsg::Stall(Duration::from_secs(5))).unwrap();
        assert_eq!(ping(&current, TestMsg::Control, wait).await, Answer::NoAnswer);
        let reasons = unready_reasons(&[("registrar", Answer::NoAnswer)], true);
        assert_eq!(reasons, ["registrar: no answer within 1 s"]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ping(&current, TestMsg::Control, wait).await, Answer::Answered, "answers again once free");
        actor.stop(None);
        handle.await.unwrap();
        assert_eq!(ping(&current, TestMsg::Control, wait).await, Answer::NotRunning);
        assert_eq!(ping(&Current::<TestMsg>::default(), TestMsg::Control, wait).await, Answer::NotRunning);
    }

    /// A child that panics is restarted (a new incarnation reachable through its `Current`)
    /// and counted; past the intensity the supervisor gives up and says why.
    #[tokio::test]
    async fn supervisor_restarts_a_panicking_child_then_gives_up() {
        struct TestChild {
            current: Current<TestMsg>,
            starts: std::sync::Arc<std::sync::atomic::AtomicU32>,
        }
        impl Child for TestChild {
            fn name(&self) -> &'static str {
                "test"
            }
            fn start(&mut self, supervisor: ActorCell, _restart: bool) -> StartFuture<'_> {
                Box::pin(async move {
                    let (actor, _) =
                        Actor::spawn_linked(None, TestActor, (), supervisor).await.map_err(|e| e.to_string())?;
                    self.current.set(actor.clone());
                    self.starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(actor.get_cell())
                })
            }
        }
        let (give_up, mut gave_up) = tokio::sync::mpsc::unbounded_channel();
        let (supervisor, handle) = Actor::spawn(None, Supervisor, SupervisorArgs { give_up }).await.unwrap();
        let current = Current::default();
        let starts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        start(&supervisor, TestChild { current: current.clone(), starts: starts.clone() }).await.unwrap();
        let wait = Duration::from_secs(5);
        for restarts in 1..=RESTARTS_MAX {
            let before = current.get().unwrap().get_id();
            assert!(current.cast(TestMsg::Control(Control::Panic)));
            let deadline = Instant::now() + wait;
            while current.get().unwrap().get_id() == before {
                assert!(Instant::now() < deadline, "not restarted");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(ping(&current, TestMsg::Control, wait).await, Answer::Answered);
            assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 1 + restarts);
        }
        assert!(current.cast(TestMsg::Control(Control::Panic)));
        let reason = tokio::time::timeout(wait, gave_up.recv()).await.unwrap().unwrap();
        assert!(reason.contains("core actor test failed more than 3 times within 60 s"), "{reason}");
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 1 + RESTARTS_MAX, "no restart past the bound");
        let () = supervisor.call(SupervisorMsg::Shutdown, Some(wait)).await.unwrap().unwrap();
        handle.await.unwrap();
    }
}

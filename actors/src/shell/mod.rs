//! What every actor shell shares. Shells are the only code in this crate allowed to touch
//! tokio and the clock (the tidy test treats this folder like `actor.rs` files).
//!
//! Message types: the workspace builds ractor with its `cluster` feature (pbx-cluster's
//! ractor_cluster needs it, and a feature is on for every crate of a build). With it, ractor
//! has no blanket `Message` impl, so each shell's message type says `impl ractor::Message for
//! X {}`: the defaults keep it local only (not serializable), as it was without the feature.

use crate::Timestamp;
use ractor::{ActorRef, RpcReplyPort};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// What every long-lived actor answers the same way, in its shell and never in its machine.
pub enum Control {
    /// Answered at once: the actor is taking its messages (the node's `/readyz`).
    Ping(RpcReplyPort<()>),
    /// Panics in `handle`. Only the node's test hook sends it (`PBX_TEST_HOOKS=1`, off by
    /// default, docs/SECURITY.md), to prove that supervision restarts what panics.
    Panic,
}

impl Control {
    /// Does what the message asks; `actor` names the actor in the panic message.
    pub fn obey(self, actor: &str) {
        match self {
            Control::Ping(reply) => {
                let _ = reply.send(());
            }
            Control::Panic => panic!("{actor}: panic injected by the test hook"),
        }
    }
}

/// An actor reference that follows restarts: whoever holds a clone reaches the actor that runs
/// now, because the node's supervisor puts each new incarnation in ([`Current::set`]).
pub struct Current<M: ractor::Message>(Arc<RwLock<Option<ActorRef<M>>>>);

impl<M: ractor::Message> Clone for Current<M> {
    fn clone(&self) -> Self {
        Current(self.0.clone())
    }
}

impl<M: ractor::Message> Default for Current<M> {
    /// Empty until the first [`Current::set`]: messages sent before are dropped.
    fn default() -> Self {
        Current(Arc::new(RwLock::new(None)))
    }
}

impl<M: ractor::Message> Current<M> {
    pub fn new(actor: ActorRef<M>) -> Current<M> {
        Current(Arc::new(RwLock::new(Some(actor))))
    }

    /// From now on, `actor` is the one reached.
    pub fn set(&self, actor: ActorRef<M>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(actor);
    }

    /// The actor as it is now; `None` before the first start.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sends `msg` to the current actor; `false` when there is none or it has stopped (a
    /// restart is under way: the message is lost, as one sent just before a panic would be).
    pub fn cast(&self, msg: M) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|actor| actor.cast(msg).is_ok())
    }
}

/// The one timer a shell keeps for its machine's next wake-up (`poll_timeout`).
///
/// It is re-armed only when the wanted time moves earlier: a timer that fires early is
/// harmless (the machine does nothing and the shell arms again), while spawning a timer task
/// for every message is not free at thousands of messages a second.
#[derive(Default)]
pub struct WakeTimer {
    armed: Option<(Timestamp, ractor::concurrency::JoinHandle<()>)>,
}

impl WakeTimer {
    /// After each handled message: make sure a `wake()` message reaches `me` by `at`.
    pub fn arm<M: ractor::Message>(
        &mut self,
        me: &ActorRef<M>,
        now: Timestamp,
        at: Option<Timestamp>,
        wake: fn() -> M,
    ) {
        let Some(at) = at else { return };
        if self.armed.as_ref().is_some_and(|(armed, _)| *armed <= at) {
            return;
        }
        self.cancel();
        let wait = Duration::from_micros(at.as_micros().saturating_sub(now.as_micros()));
        let me = me.clone();
        let handle = ractor::concurrency::spawn(async move {
            ractor::concurrency::sleep(wait).await;
            let _ = me.cast(wake());
        });
        self.armed = Some((at, handle));
    }

    /// The wake-up arrived: the timer is spent.
    pub fn fired(&mut self) {
        self.armed = None;
    }

    pub fn cancel(&mut self) {
        if let Some((_, handle)) = self.armed.take() {
            handle.abort();
        }
    }
}

impl Drop for WakeTimer {
    fn drop(&mut self) {
        self.cancel();
    }
}

//! What every actor shell shares. Shells are the only code in this crate allowed to touch
//! tokio and the clock (the tidy test treats this folder like `actor.rs` files).
//!
//! Message types: the workspace builds ractor with its `cluster` feature (pbx-cluster's
//! ractor_cluster needs it, and a feature is on for every crate of a build). With it, ractor
//! has no blanket `Message` impl, so each shell's message type says `impl ractor::Message for
//! X {}`: the defaults keep it local only (not serializable), as it was without the feature.

use crate::Timestamp;
use ractor::ActorRef;
use std::time::Duration;

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

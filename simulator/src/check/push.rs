//! The push invariants (RFC 8599: phones that are mobile apps, asleep until pushed), counted
//! like the others. A call to such a phone *parks* its fork (the product's call machine,
//! `actors/src/call/b2bua.rs`, module doc "Push") while the node pushes the phone and waits
//! for its REGISTER, at most the push wait; the node's glue reports each parked fork and how
//! its wait ended ([`ForkEvent`]).
//!
//! - **A push bucket never holds an INVITE past its timer**: a fork parked at `t` has ended
//!   its wait by `t + wait + SLACK` — its INVITE sent to the woken phone's fresh binding, its
//!   push refused, or the fork ended by the call (the push timer's 480 to the caller, an
//!   answer elsewhere; see [`crate::node::Resolution`]). Judged as each wait ends, and at
//!   every check for the waits still open.
//! - **A caller of a sleeping phone hears back by the push timer**: from the caller's side,
//!   when every fork of its call was parked and none was woken, the caller has its final
//!   response by `t + wait + SLACK` — unless a fault may have eaten it (the caller away or
//!   cut off, the node down, in that window).
//!
//! `SLACK` is the other checkers' room for network delay, retransmissions, drift and the check
//! period. The push records each push leaves are held to their 7 days by the retention
//! checkers (`Checker::check_retention`), like CDRs. A node that crashes takes its parked
//! forks with it: those waits are judged no more (their callers' are, with the outage exempt).

use super::{Checker, SLACK};
use crate::node::{ForkEvent, Resolution};
use pbx_actors::Timestamp;
use pbx_actors::call::LegId;
use std::collections::BTreeMap;
use std::time::Duration;

pub const BUCKET: &str = "a push bucket never holds an INVITE past its timer";
pub const CALLER: &str = "a caller of a sleeping phone hears back by the push timer";

/// A caller whose every fork waits for a pushed phone.
#[derive(Debug)]
struct Waiting {
    since: Timestamp,
    woken: bool,
}

/// What the push checkers keep.
#[derive(Debug, Default)]
pub(super) struct PushModel {
    /// The node's push wait (zero: push is off, nothing is judged).
    wait: Duration,
    /// Forks waiting for their pushed phone: (call, leg) → since when, and the caller's
    /// Call-ID.
    open: BTreeMap<(u64, LegId), (Timestamp, String)>,
    /// Callers all of whose forks wait, by their Call-ID.
    callers: BTreeMap<String, Waiting>,
    counts: ForkCounts,
}

/// How the parked forks' waits ended, over the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkCounts {
    pub parked: u64,
    pub invited: u64,
    pub refused: u64,
    pub ended: u64,
    /// Callers judged: every fork parked, none woken.
    pub callers_judged: u64,
}

impl Checker {
    /// Judges parked forks against the node's push wait.
    pub fn with_push(mut self, wait: Duration) -> Checker {
        self.push.wait = wait;
        self
    }

    pub fn fork_counts(&self) -> ForkCounts {
        self.push.counts
    }

    /// What the node's glue said of a fork waiting for a push.
    pub fn fork_event(&mut self, now: Timestamp, event: &ForkEvent) {
        match event {
            ForkEvent::Parked { call, leg, call_id, only } => {
                self.push.counts.parked += 1;
                self.push.open.insert((*call, *leg), (now, call_id.clone()));
                if *only {
                    self.push.callers.entry(call_id.clone()).or_insert(Waiting { since: now, woken: false });
                }
            }
            ForkEvent::Resolved { call, leg, how } => {
                let Some((since, call_id)) = self.push.open.remove(&(*call, *leg)) else { return };
                let counts = &mut self.push.counts;
                match how {
                    Resolution::Invited => counts.invited += 1,
                    Resolution::Refused => counts.refused += 1,
                    Resolution::Ended => counts.ended += 1,
                }
                if *how == Resolution::Invited
                    && let Some(waiting) = self.push.callers.get_mut(&call_id)
                {
                    // Woken: the call goes on as any other, judged by the other checkers.
                    waiting.woken = true;
                }
                let (wait, age, origin) = (self.push.wait, now - since, self.origin);
                self.check(now, BUCKET, age <= wait + SLACK, || {
                    format!(
                        "call {call}'s fork {:x} waited for its pushed phone from {} and ended its wait ({how:?}) \
                         {age:?} later; the push timer is {wait:?}",
                        leg.0,
                        crate::sim::format_elapsed(since - origin)
                    )
                });
            }
        }
    }

    /// The node crashed: its parked forks are gone with its memory.
    pub(super) fn forget_forks(&mut self) {
        self.push.open.clear();
    }

    /// Forks still waiting past their timer, and callers of sleeping phones who have not heard
    /// back by it.
    pub fn check_push(&mut self, now: Timestamp) {
        let bound = self.push.wait + SLACK;
        let overdue: Vec<((u64, LegId), Timestamp)> =
            self.push.open.iter().filter(|(_, (since, _))| *since + bound < now).map(|(k, (v, _))| (*k, *v)).collect();
        for ((call, leg), since) in overdue {
            self.push.open.remove(&(call, leg));
            let (wait, origin) = (self.push.wait, self.origin);
            self.check(now, BUCKET, false, || {
                format!(
                    "call {call}'s fork {:x} has waited for its pushed phone since {}, {:?}; the push timer is {wait:?}",
                    leg.0,
                    crate::sim::format_elapsed(since - origin),
                    now - since
                )
            });
        }
        let due: Vec<String> =
            self.push.callers.iter().filter(|(_, w)| w.since + bound <= now).map(|(id, _)| id.clone()).collect();
        for call_id in due {
            let Some(waiting) = self.push.callers.remove(&call_id) else { continue };
            let Some(attempt) = self.attempts.get(&call_id).filter(|_| !waiting.woken) else { continue };
            let (caller, callee, deadline) = (attempt.caller, attempt.callee.clone(), waiting.since + bound);
            if self.disturbed(caller, waiting.since, deadline) {
                continue;
            }
            self.push.counts.callers_judged += 1;
            let heard = attempt.final_at.is_some_and(|at| at <= deadline);
            let extension = self.phones[caller].extension.clone();
            let (origin, wait) = (self.origin, self.push.wait);
            self.check(now, CALLER, heard, || {
                format!(
                    "{extension}'s call {call_id} to {callee} waited for a push from {} and had no final response by \
                     {} (the push timer is {:?})",
                    crate::sim::format_elapsed(waiting.since - origin),
                    crate::sim::format_elapsed(deadline - origin),
                    wait
                )
            });
        }
    }

    /// The node dropped `phone`'s push token (its service said unregistered) at `now`: the
    /// phone's binding under it is gone on purpose, so no registration of it must survive a
    /// crash — until one whose REGISTER left after the drop (it carries the new token).
    pub fn push_token_dropped(&mut self, now: Timestamp, phone: usize) {
        let model = &mut self.phones[phone];
        model.durable_until = None;
        model.recent.clear();
        model.token_dropped = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Bounds;
    use crate::phone::PhoneEvent;

    const SECOND: Duration = Duration::from_secs(1);
    const T0: Timestamp = Timestamp::from_secs(1_000 * 86_400);
    const WAIT: Duration = Duration::from_secs(10);

    fn checker() -> Checker {
        let bounds = Bounds::new(Duration::from_secs(30), Duration::from_secs(60), Duration::from_secs(600), 3600);
        Checker::new(T0, bounds, &["1000".to_owned(), "1001".to_owned()], None).with_push(WAIT)
    }

    fn parked(c: &mut Checker, at: Timestamp, leg: u128) {
        let event = ForkEvent::Parked { call: 7, leg: LegId(leg), call_id: "a".into(), only: true };
        c.fork_event(at, &event);
    }

    fn resolved(c: &mut Checker, at: Timestamp, leg: u128, how: Resolution) {
        c.fork_event(at, &ForkEvent::Resolved { call: 7, leg: LegId(leg), how });
    }

    fn violations(c: &mut Checker, invariant: &str) -> usize {
        let n = c.violations.iter().filter(|v| v.invariant == invariant).count();
        c.violations.clear();
        n
    }

    /// A fork whose wait ends within the push timer (and the slack) passes; one that ends
    /// later, or is still waiting at a check after it, is caught — once.
    #[test]
    fn a_fork_held_past_its_timer_is_caught() {
        let mut c = checker();
        parked(&mut c, T0, 1);
        c.check_push(T0 + WAIT + SLACK);
        resolved(&mut c, T0 + WAIT + SLACK, 1, Resolution::Ended);
        assert_eq!(violations(&mut c, BUCKET), 0);

        parked(&mut c, T0, 2);
        resolved(&mut c, T0 + WAIT + SLACK + SECOND, 2, Resolution::Invited);
        assert_eq!(violations(&mut c, BUCKET), 1, "woken too late");

        parked(&mut c, T0, 3);
        c.check_push(T0 + WAIT + SLACK + SECOND);
        c.check_push(T0 + WAIT + SLACK + 2 * SECOND);
        assert_eq!(violations(&mut c, BUCKET), 1, "still waiting, reported once");
        resolved(&mut c, T0 + 60 * SECOND, 3, Resolution::Ended);
        assert_eq!(violations(&mut c, BUCKET), 0, "already reported");
        assert_eq!(c.fork_counts().parked, 3);
    }

    /// A caller whose only callee sleeps and is never woken must hear its final response by
    /// the push timer; one woken in time goes on as any call; a caller cut off is not judged.
    #[test]
    fn a_caller_left_waiting_past_the_push_timer_is_caught() {
        let dial = |c: &mut Checker| {
            c.phone_event(T0, 1, &PhoneEvent::Dialing { call_id: "a".into(), callee: "1000".into() });
            parked(c, T0, 1);
        };
        let mut c = checker();
        dial(&mut c);
        c.check_push(T0 + WAIT + SLACK);
        assert_eq!(violations(&mut c, CALLER), 1, "no final response");

        let mut c = checker();
        dial(&mut c);
        c.phone_event(
            T0 + WAIT + SECOND,
            1,
            &PhoneEvent::CallFailed { call_id: "a".into(), code: 480, reason: String::new() },
        );
        resolved(&mut c, T0 + WAIT, 1, Resolution::Ended);
        c.check_push(T0 + WAIT + SLACK);
        assert_eq!(violations(&mut c, CALLER), 0);
        assert_eq!(c.fork_counts().callers_judged, 1);

        let mut c = checker();
        dial(&mut c);
        resolved(&mut c, T0 + 3 * SECOND, 1, Resolution::Invited);
        c.check_push(T0 + WAIT + SLACK);
        assert_eq!(violations(&mut c, CALLER), 0, "woken: it rings as any call");

        let mut c = checker();
        dial(&mut c);
        c.phone_partitioned(T0 + SECOND, 1, T0 + 20 * SECOND);
        c.check_push(T0 + WAIT + SLACK);
        assert_eq!(violations(&mut c, CALLER), 0, "cut off: its 480 may be lost");
    }

    /// After the node drops a phone's token, a crash may take its registration: only a REGISTER
    /// sent after the drop counts as one that must survive.
    #[test]
    fn a_dropped_token_is_no_registration_to_keep() {
        let mut c = checker();
        c.register_sent(T0, 0);
        c.push_token_dropped(T0 + SECOND, 0);
        c.phone_event(T0 + 2 * SECOND, 0, &PhoneEvent::Registered { expires_s: 3600 });
        assert_eq!(c.phones[0].durable_until, None);
        assert!(c.phones[0].recent.is_empty());
        c.register_sent(T0 + 3 * SECOND, 0);
        c.phone_event(T0 + 4 * SECOND, 0, &PhoneEvent::Registered { expires_s: 3600 });
        assert_eq!(c.phones[0].recent.len(), 1, "a refresh held in memory for now");
    }
}

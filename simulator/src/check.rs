//! Invariant checkers: what must hold however the seed plays out. They run as the simulation
//! goes — on phone events, on datagrams, and on a periodic look at every node — and once more
//! when the run has drained. Each check is counted, so a summary says how much was verified.
//!
//! The checkers judge the product from outside where they can: from the phones' side (every
//! dialled call the pbx took on leaves exactly one CDR; when one party hangs up the other is
//! hung up too; a phone whose binding has expired gets no INVITE) and from the node's state
//! (no call outlives its bounds, none is answered with one leg, no port leaks, no transaction
//! outlives its timers, no binding outlives its expiry).
//!
//! The conference rooms' checkers (`check/rooms.rs`) judge what participants hear (never themselves,
//! never a muted participant, always a lone talker), that a vanished participant's call ends,
//! and that no room, seat, mixer or port outlives its participants.
//!
//! The push checkers (`check/push.rs`) hold a fork that waits for a pushed phone to its timer,
//! from the node's account and from its caller's.
//!
//! The forwarding checkers (`check/forwarding.rs`) keep a model of every extension's call
//! forwarding from the feature codes its phone dialled and the answers it got: the answers
//! agree with it, every call hears its final answer within the ring bound (a forward, loops
//! included, adds one no-answer time at most), and a call is answered by a phone of the
//! extension its forwarding leads to — one phone per call.
//!
//! The retention checkers judge the node's disk: no record outlives its retention (plus the
//! reaper's interval, see [`Checker::check_retention`]), nothing inside its retention is
//! touched (a ledger of every CDR and security-log entry the disk committed), and every
//! interval the node was up left its reaper run's audit entry. The softphone proxy's checkers
//! (`check/proxy.rs`) hold its ledger to the same: sessions gone 365 days after their last
//! use, debug records 28 days after they were made, no destination recorded out of debug mode.

use crate::disk::{Disk, Key};
use crate::node::SimNode;
use crate::options::format_duration;
use crate::phone::{PhoneEvent, Word};
use pbx_actors::Timestamp;
use pbx_actors::call::b2bua::ENDING_BOUND;
use pbx_actors::cdr::{Cdr, Disposition, HangupSide};
use pbx_actors::privacy::reaper::Periods;
use pbx_actors::privacy::{AuditEntry, AuditEvent};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

mod forwarding;
mod proxy;
mod push;
mod rooms;

pub use forwarding::{CODES, ForwardCounts, PARTIES, RINGS};
pub use push::{BUCKET, CALLER, ForkCounts};

/// RFC 3261's 64*T1 with T1 = 500 ms: how long a transaction may retransmit.
const T1_64: Duration = Duration::from_secs(32);
/// Room for network delay, clock drift and the checks' own period.
const SLACK: Duration = Duration::from_secs(15);
/// How long the registrar may hold a refresh in memory before storing it (its default).
const REFRESH_FLUSH: Duration = Duration::from_secs(5);
/// Server and client transactions one phone's traffic may keep in pbx's endpoint at once, for
/// the "strangers cost no state" bound: a REGISTER, an INVITE and its CANCEL, a BYE each way,
/// the B-leg's INVITE and BYE, each kept 32 s after its answer (Timers J and K), and a phone
/// that retries and redials within those 32 s. Unauthenticated traffic is answered
/// statelessly, so a flood adds nothing to the count.
pub const TRANSACTIONS_PER_PHONE_MAX: usize = 16;
/// Room in that bound for a burst (all phones re-registering after a partition).
pub const TRANSACTIONS_SLACK: usize = 64;
/// Violations kept in full when a run does not stop at the first.
pub const VIOLATIONS_MAX: usize = 20;
/// How long one reaper run may take, from its start until its last batch is durable. A run
/// is a few batches, one disk commit each, queued behind the node's other writes (each
/// waits milliseconds for its fsync) and behind its stalled mailboxes (at most 2 ms per
/// stall): milliseconds in practice, seconds for a backlog of thousands of batches. A minute
/// is far above that, and far below the interval (an hour), so it hides no real lateness;
/// the checkers hold every run to it ("a reaper run ends within its bound").
pub const REAPER_RUN_BOUND: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time since the start of the run.
    pub at: Duration,
    pub invariant: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", crate::sim::format_elapsed(self.at), self.invariant, self.detail)
    }
}

/// The limits the checkers hold the system to, derived from its configuration.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// The longest a call may ring before its caller has the final answer (the no-answer time;
    /// with forwarding, once more for the forward).
    pub ring: Duration,
    /// The longest a call may stay in a node: ringing, talking and ending.
    pub call: Duration,
    /// The longest a transaction may live.
    pub transaction: Duration,
    /// When one party of an answered call has hung up (sent its first BYE), the other must be
    /// hung up within this.
    pub hangup: Duration,
    /// A phone's binding lasts at most this long after its last REGISTER.
    pub binding: Duration,
    /// Silence that ends a call (the node's RTP timeout, a room's too).
    pub silence: Duration,
    /// The check period.
    pub every: Duration,
}

impl Bounds {
    pub fn new(no_answer: Duration, rtp_timeout: Duration, talk_max: Duration, max_expires_s: u32) -> Bounds {
        Bounds {
            ring: no_answer,
            call: no_answer + talk_max + rtp_timeout + ENDING_BOUND + SLACK,
            // An INVITE server transaction: the answer (bounded by the no-answer time), then
            // Timer L; a client one: the CANCEL guard after the no-answer CANCEL.
            transaction: no_answer + T1_64 + T1_64 + SLACK,
            hangup: T1_64 + SLACK,
            binding: Duration::from_secs(u64::from(max_expires_s)),
            silence: rtp_timeout,
            every: Duration::from_secs(10),
        }
    }

    /// With call forwarding: a call rings its first phones for the no-answer time at most (a
    /// no-answer forward at `min(no_answer_after_s, no_answer)`, a busy forward whenever the
    /// last phone refuses, both within the no-answer time), then the forward's phones for the
    /// no-answer time again (their push wait inside it); a call is forwarded once at most.
    /// Ringing, a call's life and its INVITE transaction's grow by one no-answer time.
    pub fn with_forwarding(mut self, no_answer: Duration) -> Bounds {
        self.ring += no_answer;
        self.call += no_answer;
        self.transaction += no_answer;
        self
    }
}

/// One call a phone placed, as the phones saw it.
#[derive(Debug, Default)]
struct Attempt {
    caller: usize,
    callee: String,
    dialled: Timestamp,
    /// The pbx took the call on: the caller heard ringing or was answered.
    reached: bool,
    ended: Option<Timestamp>,
    /// When the caller had its final response (a failure, or the answer).
    final_at: Option<Timestamp>,
    /// It dialled a feature code (`*21*1002#`), not a number.
    feature_code: bool,
    /// The extension whose phone answered it (the callee's, or the one forwarding led to).
    answered_by: Option<String>,
}

/// An answered call as one phone sees it.
#[derive(Clone, Debug)]
struct Dialog {
    call_id: String,
    /// The other party: for a caller, the extension whose phone answered (the dialled one's,
    /// or the one its forwarding led to); for a callee, the caller.
    peer: String,
    since: Timestamp,
    /// This phone placed the call.
    caller: bool,
}

#[derive(Debug, Default)]
struct PhoneModel {
    extension: String,
    /// The latest a binding of this phone may last: its last REGISTER plus the expiry the
    /// registrar grants at most.
    binding_until: Option<Timestamp>,
    dialog: Option<Dialog>,
    /// 200s to its REGISTERs not yet known to be stored: (when it arrived, the expiry it
    /// granted). A refresh is stored within `refresh_flush_s` of its 200.
    recent: Vec<(Timestamp, Timestamp)>,
    /// The expiry that must survive a crash: that of a 200 known to be stored.
    durable_until: Option<Timestamp>,
    /// The expiry its last 200 granted, as the phone counts it (from the 200's arrival, so
    /// never earlier than the registrar's).
    granted_until: Option<Timestamp>,
    /// When the phone sent the first REGISTER since its last answer: the registrar handled the
    /// one that was answered no earlier.
    flow_sent: Option<Timestamp>,
    /// When this phone was away or cut off (from, to): a BYE for it may never have arrived,
    /// so its calls overlapping these are exempt from the hang-up check.
    disturbed: Vec<(Timestamp, Timestamp)>,
    /// When pbx last dropped its push token (its binding under it gone on purpose).
    token_dropped: Option<Timestamp>,
    /// What its user said lately (BYE, CANCEL, refusals): (when, Call-ID, peer, word).
    said: VecDeque<(Timestamp, String, String, Word)>,
    /// Calls it answered lately: (when, caller).
    answered: VecDeque<(Timestamp, String)>,
    /// The Call-ID of the last call it dialled.
    dialling: Option<String>,
}

/// A phone that must be hung up by a deadline because its peer hung up.
#[derive(Debug)]
struct Expectation {
    /// When the earlier of the two phones' sides of the call was established.
    since: Timestamp,
    phone: usize,
    call_id: String,
    peer: usize,
    deadline: Timestamp,
}

pub struct Checker {
    origin: Timestamp,
    bounds: Bounds,
    phones: Vec<PhoneModel>,
    by_extension: BTreeMap<String, usize>,
    attempts: BTreeMap<String, Attempt>,
    expectations: Vec<Expectation>,
    /// Node downtimes: (crash, restart). Calls overlapping one may have lost their CDR.
    outages: Vec<(Timestamp, Timestamp)>,
    /// Every CDR the disk ever committed: id → Call-ID (the reaper deletes old ones).
    cdr_calls: BTreeMap<u64, String>,
    retention: Option<RetentionModel>,
    rooms: rooms::Rooms,
    push: push::PushModel,
    /// The softphone proxy's ledger, when the run has one.
    proxy: Option<proxy::ProxyModel>,
    /// Call forwarding as the phones were told it is.
    forwarding: forwarding::ForwardingModel,
    pub checks: u64,
    pub violations: Vec<Violation>,
    /// Every violation by invariant, also those beyond the [`VIOLATIONS_MAX`] kept in full.
    pub violated: BTreeMap<&'static str, u64>,
}

impl Checker {
    /// `retention`: the reaper's periods and interval, when it runs.
    pub fn new(
        origin: Timestamp,
        bounds: Bounds,
        extensions: &[String],
        retention: Option<(Periods, Duration)>,
    ) -> Checker {
        let phones: Vec<PhoneModel> =
            extensions.iter().map(|e| PhoneModel { extension: e.clone(), ..Default::default() }).collect();
        let by_extension = extensions.iter().enumerate().map(|(i, e)| (e.clone(), i)).collect();
        Checker {
            origin,
            bounds,
            phones,
            by_extension,
            attempts: BTreeMap::new(),
            expectations: Vec::new(),
            outages: Vec::new(),
            cdr_calls: BTreeMap::new(),
            retention: retention.map(|(periods, interval)| RetentionModel {
                periods,
                interval,
                cdrs: BTreeSet::new(),
                security: BTreeSet::new(),
                security_fresh: BTreeSet::new(),
                push: BTreeSet::new(),
            }),
            rooms: rooms::Rooms::default(),
            push: push::PushModel::default(),
            proxy: None,
            forwarding: forwarding::ForwardingModel::default(),
            checks: 0,
            violations: Vec::new(),
            violated: BTreeMap::new(),
        }
    }

    fn violate(&mut self, now: Timestamp, invariant: &'static str, detail: String) {
        *self.violated.entry(invariant).or_default() += 1;
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push(Violation { at: now - self.origin, invariant, detail });
        }
    }

    pub(crate) fn check(
        &mut self,
        now: Timestamp,
        invariant: &'static str,
        holds: bool,
        detail: impl FnOnce() -> String,
    ) {
        self.checks += 1;
        if !holds {
            self.violate(now, invariant, detail());
        }
    }

    /// [`Checker::check`] whose detail is written from the checker's state, only on failure.
    pub(crate) fn check_with(
        &mut self,
        now: Timestamp,
        invariant: &'static str,
        holds: bool,
        detail: impl FnOnce(&Checker) -> String,
    ) {
        self.checks += 1;
        if !holds {
            let detail = detail(self);
            self.violate(now, invariant, detail);
        }
    }

    // ---- What the world reports ----

    pub fn phone_event(&mut self, now: Timestamp, phone: usize, event: &PhoneEvent) {
        match event {
            PhoneEvent::Dialing { call_id, callee } => {
                let feature_code = self.code_dialled(now, phone, call_id, callee);
                let attempt =
                    Attempt { caller: phone, callee: callee.clone(), dialled: now, feature_code, ..Default::default() };
                self.attempts.insert(call_id.clone(), attempt);
                self.phones[phone].dialling = Some(call_id.clone());
            }
            PhoneEvent::Ringing { call_id } => {
                if let Some(a) = self.attempts.get_mut(call_id) {
                    a.reached = true;
                }
            }
            PhoneEvent::CallFailed { call_id, code, reason } => {
                if let Some(a) = self.attempts.get_mut(call_id) {
                    a.ended = Some(now);
                    a.final_at.get_or_insert(now);
                }
                self.final_answer(now, call_id, Some((*code, reason)));
                self.room_stay_ends(now, call_id);
                if *code == 486 || *code == 603 {
                    self.check_refused_by_callee(now, phone, call_id, *code);
                }
            }
            PhoneEvent::Established { call_id, peer, caller } => {
                if let Some(a) = self.attempts.get_mut(call_id) {
                    a.reached = true;
                    a.final_at.get_or_insert(now);
                }
                if *caller {
                    self.final_answer(now, call_id, None);
                }
                let partner = match caller {
                    true => self.check_answered_by_callee(now, phone, call_id),
                    false => {
                        self.one_callee_per_call(now, phone, call_id, peer);
                        self.remember(now, phone, |m| m.answered.push_back((now, peer.clone())));
                        None
                    }
                };
                let peer = partner.unwrap_or_else(|| peer.clone());
                self.phones[phone].dialog =
                    Some(Dialog { call_id: call_id.clone(), peer, since: now, caller: *caller });
            }
            PhoneEvent::Said { call_id, peer, word } => {
                if *word == Word::Bye {
                    // It stops talking as it says goodbye.
                    self.room_stay_ends(now, call_id);
                }
                let said = (now, call_id.clone(), peer.clone(), *word);
                self.remember(now, phone, |m| m.said.push_back(said));
            }
            PhoneEvent::Ended { call_id, .. } => {
                if let Some(a) = self.attempts.get_mut(call_id) {
                    a.ended = Some(now);
                }
                // A BYE that overtook the caller's 2xx ends its wait (the call was answered).
                self.ring_ends(now, call_id);
                self.room_stay_ends(now, call_id);
                if let Some(dialog) = self.phones[phone].dialog.take_if(|d| d.call_id == *call_id) {
                    let (since, peer) = (dialog.since, &dialog.peer);
                    // The clock runs from the hang-up itself (the first BYE), not from its
                    // answer: a BYE pbx absorbs without routing it (answered only when the call
                    // ends some other way) must not buy the call time.
                    let bye = self.phones[phone].said.iter().find(|(_, c, _, w)| c == call_id && *w == Word::Bye);
                    let hung_up = bye.map_or(now, |(at, ..)| *at);
                    self.expect_hangup(now, phone, peer, since, hung_up);
                }
            }
            PhoneEvent::Registered { expires_s } => {
                let expires = now + Duration::from_secs(u64::from(*expires_s));
                let model = &mut self.phones[phone];
                // A binding the registrar cannot have held any more when the REGISTER came (the
                // last one granted had lapsed before the flow began) is a new binding, which is
                // stored before its 200 leaves: it must survive any later crash. A refresh may be
                // held in memory for `refresh_flush_s` first.
                let sent = model.flow_sent.take();
                let new = *expires_s > 0 && sent.is_some_and(|s| model.granted_until.is_none_or(|u| u + SLACK <= s));
                model.granted_until = Some(expires);
                // Its REGISTER may have been handled before pbx dropped its push token: the
                // binding this 200 confirms may be gone on purpose.
                let dropped = model.token_dropped.is_some_and(|d| sent.is_none_or(|s| s <= d));
                match (dropped, new) {
                    (true, _) => {}
                    (false, true) => model.durable_until = model.durable_until.max(Some(expires)),
                    (false, false) => model.recent.push((now, expires)),
                }
                self.check(now, "no phone is locked out by strangers", true, String::new);
            }
            PhoneEvent::RegisterFailed { code } => {
                self.phones[phone].flow_sent = None;
                // A phone knows its password: pbx answers it 403 only for a block that
                // somebody else's failures caused.
                let extension = self.phones[phone].extension.clone();
                self.check(now, "no phone is locked out by strangers", *code != 403, || {
                    format!("phone {extension}'s REGISTER got 403: its address is blocked")
                });
            }
            PhoneEvent::Room { call_id, event } => self.room_event(now, phone, call_id, event),
            PhoneEvent::DialIgnored | PhoneEvent::Incoming { .. } => {}
        }
    }

    /// Keeps a record of what a phone said or answered, and forgets what no CDR or answer can
    /// still be about (older than the longest call).
    fn remember(&mut self, now: Timestamp, phone: usize, add: impl FnOnce(&mut PhoneModel)) {
        let keep = self.bounds.call + self.bounds.call;
        let model = &mut self.phones[phone];
        add(model);
        while model.said.front().is_some_and(|(at, ..)| *at + keep < now) {
            model.said.pop_front();
        }
        while model.answered.front().is_some_and(|(at, _)| *at + keep < now) {
            model.answered.pop_front();
        }
    }

    /// The phone at `extension` said `word` to `caller` since `since` (any word when `None`).
    fn callee_said(&self, extension: &str, caller: &str, since: Timestamp, word: impl Fn(Word) -> bool) -> bool {
        let Some(&callee) = self.by_extension.get(extension) else { return false };
        self.phones[callee].said.iter().any(|(at, _, peer, w)| *at >= since && peer == caller && word(*w))
    }

    /// A caller's call was answered: by a callee's phone, which sent a 2xx to pbx for this
    /// caller since the call was dialled — never by somebody who forged the callee's 200 —
    /// and that callee is the dialled extension or one its forwarding leads to
    /// ([`PARTIES`]). The extension that answered, for the caller's dialog.
    fn check_answered_by_callee(&mut self, now: Timestamp, caller: usize, call_id: &str) -> Option<String> {
        // A room is answered by pbx itself; a feature code never.
        let attempt = self.attempts.get(call_id).filter(|a| !self.is_room(&a.callee))?;
        let (callee, since, code) = (attempt.callee.clone(), attempt.dialled, attempt.feature_code);
        let extension = self.phones[caller].extension.clone();
        if code {
            self.check(now, CODES, false, || {
                format!("{extension}'s feature code {callee} ({call_id}) was answered 2xx")
            });
            return None;
        }
        // The phones that answered this caller since it dialled: the one still in the call
        // first (pbx hangs up an answer that came too late, e.g. after a forward), then the
        // latest.
        let mut answerers: Vec<(bool, Timestamp, String)> = self
            .phones
            .iter()
            .filter_map(|m| {
                let at = m.answered.iter().rev().find(|(at, peer)| *at >= since && *peer == extension)?.0;
                let open = m.dialog.as_ref().is_some_and(|d| !d.caller && d.peer == extension && d.since >= since);
                Some((open, at, m.extension.clone()))
            })
            .collect();
        answerers.sort_by_key(|(open, at, _)| std::cmp::Reverse((*open, *at)));
        let answerers: Vec<String> = answerers.into_iter().map(|(_, _, e)| e).collect();
        self.check(now, "a call is answered only by its callee", !answerers.is_empty(), || {
            format!("{extension}'s call {call_id} to {callee} was answered, but no callee's phone answered it")
        });
        let answerer = self.check_right_parties(now, call_id, &callee, since, &answerers)?;
        if let Some(a) = self.attempts.get_mut(call_id) {
            a.answered_by = Some(answerer.clone());
        }
        Some(answerer)
    }

    /// A caller's call was refused (486, 603): by its callee, who said so since the call was
    /// dialled — never by somebody who forged the refusal.
    fn check_refused_by_callee(&mut self, now: Timestamp, caller: usize, call_id: &str, code: u16) {
        // A room (full) is refused by pbx itself; a feature code is answered by it.
        let Some(attempt) = self.attempts.get(call_id).filter(|a| !self.is_room(&a.callee) && !a.feature_code) else {
            return;
        };
        let (callee, since) = (attempt.callee.clone(), attempt.dialled);
        let extension = self.phones[caller].extension.clone();
        // With forwarding, the phones of the extension it leads to may refuse (on busy).
        let Some(parties) = self.parties(&callee, since, now) else { return };
        let refused = parties.iter().any(|p| self.callee_said(p, &extension, since, |w| w == Word::Reject(code)));
        self.check(now, "a call is refused only by its callee", refused, || {
            format!("{extension}'s call {call_id} to {callee} got {code}, but {callee} never said {code}")
        });
    }

    /// `phone` ended its call with `peer` (hung up at `hung_up`): the peer's side of that call
    /// must end soon.
    fn expect_hangup(&mut self, now: Timestamp, phone: usize, peer: &str, since: Timestamp, hung_up: Timestamp) {
        let Some(&peer_index) = self.by_extension.get(peer) else { return };
        let Some(dialog) = &self.phones[peer_index].dialog else { return };
        if dialog.peer != self.phones[phone].extension || dialog.since > now {
            return;
        }
        self.expectations.push(Expectation {
            since: since.min(dialog.since),
            phone: peer_index,
            call_id: dialog.call_id.clone(),
            peer: phone,
            deadline: hung_up + self.bounds.hangup,
        });
    }

    /// A phone sent a REGISTER: its binding may now last until `now` + the longest expiry.
    pub fn register_sent(&mut self, now: Timestamp, phone: usize) {
        self.phones[phone].binding_until = Some(now + self.bounds.binding + SLACK);
        self.phones[phone].flow_sent.get_or_insert(now);
    }

    pub fn phone_away(&mut self, now: Timestamp, phone: usize, away: bool) {
        if away {
            self.room_phone_gone(now, phone);
            self.room_disturbed(Some(phone));
        }
        let model = &mut self.phones[phone];
        if away {
            model.dialog = None;
            model.disturbed.push((now, Timestamp(u64::MAX)));
        } else if let Some(open) = model.disturbed.iter_mut().rev().find(|(_, to)| to.0 == u64::MAX) {
            open.1 = now;
        }
    }

    /// The other party of `phone`'s call, as the checkers know it: for a caller, the extension
    /// whose phone answered (forwarding may have led elsewhere than the dialled number).
    pub fn partner(&self, phone: usize) -> Option<&str> {
        self.phones[phone].dialog.as_ref().map(|d| d.peer.as_str())
    }

    /// The phone is cut off from the nodes until `until`.
    pub fn phone_partitioned(&mut self, now: Timestamp, phone: usize, until: Timestamp) {
        self.phones[phone].disturbed.push((now, until));
        self.room_disturbed(Some(phone));
    }

    pub fn node_crashed(&mut self, now: Timestamp) {
        self.outages.push((now, Timestamp(u64::MAX)));
        self.forget_forks();
        self.room_disturbed(None);
        self.settle_registrations(now);
    }

    /// The node crashed at `crash`: a 200 that arrived at least `refresh_flush_s` (+ slack)
    /// before it was stored, and its expiry must survive; a later one — a refresh still in
    /// memory — may be lost, and the binding come back with the earlier expiry (the
    /// registrar's documented trade: refreshes are written in batches).
    fn settle_registrations(&mut self, crash: Timestamp) {
        for model in &mut self.phones {
            for (at, until) in std::mem::take(&mut model.recent) {
                if at + REFRESH_FLUSH + SLACK <= crash {
                    model.durable_until = model.durable_until.max(Some(until));
                }
            }
        }
    }

    /// A node restarted: every phone whose stored registration has not expired is bound.
    pub fn check_restored(&mut self, now: Timestamp, node: &SimNode) {
        let bound: std::collections::BTreeSet<&str> = node.bindings().map(|b| b.aor.as_str()).collect();
        let durable: Vec<(String, Timestamp)> = self
            .phones
            .iter()
            .filter_map(|m| m.durable_until.map(|until| (m.extension.clone(), until)))
            .filter(|(_, until)| *until > now + SLACK)
            .collect();
        for (extension, until) in durable {
            let present = bound.contains(extension.as_str());
            let origin = self.origin;
            self.check(now, "a confirmed registration survives a crash", present, || {
                format!(
                    "{extension} was registered until {} (its 200 was stored), but the node came back without it",
                    crate::sim::format_elapsed(until - origin),
                )
            });
        }
    }

    pub fn node_restarted(&mut self, now: Timestamp) {
        if let Some(open) = self.outages.iter_mut().rev().find(|(_, to)| to.0 == u64::MAX) {
            open.1 = now;
        }
    }

    /// Whether a phone's calls in `[from, to]` may have lost a BYE to a fault: the phone was
    /// away or cut off, or a node was down, at some time in it.
    fn disturbed(&self, phone: usize, from: Timestamp, to: Timestamp) -> bool {
        let overlaps = |(a, b): &(Timestamp, Timestamp)| *a <= to && *b >= from;
        self.phones[phone].disturbed.iter().any(overlaps) || self.outages.iter().any(overlaps)
    }

    /// An INVITE reached a phone that is away: its binding must still have been live.
    pub fn invite_to_away_phone(&mut self, now: Timestamp, phone: usize) {
        let until = self.phones[phone].binding_until;
        let extension = self.phones[phone].extension.clone();
        // pbx may have sent it while the binding lived, then retransmitted it for 64*T1.
        let until = until.map(|u| u + T1_64);
        self.check(now, "bindings expire on time", until.is_some_and(|u| now <= u), || {
            format!(
                "an INVITE reached away phone {extension} after its binding had to expire (at the latest {until:?})"
            )
        });
    }

    // ---- The periodic look at a node ----

    pub fn check_node(&mut self, now: Timestamp, node_now: Timestamp, node: &SimNode) {
        let bounds = self.bounds;
        for call in node.calls() {
            let age = node_now - call.started;
            self.check(now, "every call ends", age <= bounds.call, || {
                format!("call {} ({}) is {age:?} old", call.id, call.state)
            });
            if let Some([a, b]) = call.answered {
                let (a, b) = (call.leg_live(a), call.leg_live(b));
                self.check(now, "a call never has one leg", a && b, || {
                    format!("call {} is answered but its legs are: caller {}, callee {}", call.id, live(a), live(b))
                });
            }
        }
        let (machines, routed) = node.leg_counts();
        self.check(now, "legs are routed while they live", machines == routed, || {
            format!("{machines} leg machines and forks waiting for a push, the endpoint routes to {routed}")
        });
        let (leased, held) = node.ports_in_use();
        self.check(now, "no RTP port leaks", leased == held, || {
            format!("{leased} port pairs leased, relays and rooms' participants hold {held}")
        });
        self.check_rooms(now, node);
        let (count, oldest) = node.transactions();
        self.check_state(now, count);
        if let Some(oldest) = oldest {
            let age = node_now - oldest;
            self.check(now, "no transaction outlives its timers", age <= bounds.transaction, || {
                format!("the oldest of {count} transactions is {age:?} old: {}", node.describe_oldest_transaction())
            });
        }
        for binding in node.bindings() {
            self.check(now, "bindings expire on time", binding.expires_at + Duration::from_secs(1) >= node_now, || {
                format!("{} → {} expired at {} but is still bound", binding.aor, binding.contact, binding.expires_at)
            });
        }
    }

    /// The endpoint holds `transactions`: no more than the office's phones can make (what
    /// strangers send is answered without keeping any).
    pub fn check_state(&mut self, now: Timestamp, transactions: usize) {
        let bound = TRANSACTIONS_PER_PHONE_MAX * self.phones.len() + TRANSACTIONS_SLACK;
        self.check(now, "strangers cost no state", transactions <= bound, || {
            format!("{transactions} transactions in the endpoint, more than the office's {bound}")
        });
    }

    /// Periodic, node-independent checks: expected hang-ups that are overdue, calls that rang
    /// too long, two callees still in one call.
    pub fn check_phones(&mut self, now: Timestamp) {
        self.check_vanished(now);
        self.check_rings(now);
        self.check_one_callee(now);
        self.forget_left(now);
        let due: Vec<Expectation> = {
            let (due, pending) = std::mem::take(&mut self.expectations).into_iter().partition(|e| e.deadline <= now);
            self.expectations = pending;
            due
        };
        for e in due {
            let model = &self.phones[e.phone];
            let exempt = self.disturbed(e.phone, e.since, e.deadline) || self.disturbed(e.peer, e.since, e.deadline);
            let still = model.dialog.as_ref().is_some_and(|d| d.call_id == e.call_id);
            let (phone, peer) = (model.extension.clone(), self.phones[e.peer].extension.clone());
            self.check(now, "a call never has one leg", exempt || !still, || {
                format!("{peer} hung up but {phone} is still in the call ({})", e.call_id)
            });
        }
    }

    // ---- The end of the run, after the drain ----

    /// Phones still register during the drain, so transactions may be alive at the end; the
    /// periodic check (run once more here) bounds their age.
    pub fn final_checks(&mut self, now: Timestamp, node: Option<(&SimNode, Timestamp)>, duplicates: &[Cdr]) {
        self.check_vanished(now);
        self.check_rings(now);
        self.check_one_callee(now);
        if let Some((node, node_now)) = node {
            self.check_node(now, node_now, node);
            let calls = node.call_count();
            self.check(now, "every call ends", calls == 0, || format!("{calls} calls still up after the drain"));
            let (leased, _) = node.ports_in_use();
            self.check(now, "no RTP port leaks", leased == 0, || format!("{leased} port pairs leased after the drain"));
            let rooms: Vec<String> = node.rooms().into_iter().map(|r| r.number).collect();
            self.check(now, "a room empties when its last participant leaves", rooms.is_empty(), || {
                format!("rooms {rooms:?} still open after the drain")
            });
            let (machines, routed) = node.leg_counts();
            let table = node.legs_in_table();
            self.check(now, "every call ends", machines == 0 && routed == 0 && table == 0, || {
                format!("{machines} leg machines, {routed} routed legs and {table} in the glue's table after the drain")
            });
        }
        let dialogs: Vec<(String, Option<Dialog>)> =
            self.phones.iter().map(|m| (m.extension.clone(), m.dialog.clone())).collect();
        for (extension, in_call) in dialogs {
            self.check(now, "every call ends", in_call.is_none(), || {
                format!("phone {extension} is still in call {:?} after the drain", in_call.map(|d| d.call_id))
            });
        }
        // Every CDR ever stored, also those the reaper has deleted since.
        let cdr_calls = std::mem::take(&mut self.cdr_calls);
        let mut by_call_id: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (id, call_id) in &cdr_calls {
            by_call_id.entry(call_id.as_str()).or_default().push(*id);
        }
        self.check(now, "every completed call has exactly one CDR", duplicates.is_empty(), || {
            format!("{} CDR ids written twice", duplicates.len())
        });
        let attempts = std::mem::take(&mut self.attempts);
        for (call_id, attempt) in &attempts {
            let found = by_call_id.get(call_id.as_str()).map_or(0, Vec::len);
            let window_end = attempt.ended.unwrap_or(now) + SLACK;
            let crashed = self.outages.iter().any(|(crash, _)| *crash >= attempt.dialled && *crash <= window_end);
            let caller = self.phones[attempt.caller].extension.clone();
            self.check(now, "every completed call has exactly one CDR", found <= 1, || {
                format!("call {call_id} ({caller} → {}) has {found} CDRs", attempt.callee)
            });
            if attempt.reached && attempt.ended.is_some() && !crashed {
                self.check(now, "every completed call has exactly one CDR", found == 1, || {
                    format!("call {call_id} ({caller} → {}) was taken on and ended, but has no CDR", attempt.callee)
                });
            }
        }
        for (call_id, ids) in &by_call_id {
            let known = attempts.contains_key(*call_id);
            self.check(now, "every CDR is for a call a phone made", known, || {
                format!("CDRs {ids:?} name Call-ID {call_id}, which no phone dialled")
            });
        }
        self.attempts = attempts;
        self.cdr_calls = cdr_calls;
    }

    pub fn attempts(&self) -> usize {
        self.attempts.len()
    }

    /// CDRs the disk ever committed.
    pub fn cdrs_stored(&self) -> usize {
        self.cdr_calls.len()
    }

    // ---- Retention ----

    /// A CDR is durable: into the ledger. Who pbx says ended the call must have said so: a
    /// caller's hang-up or cancel is the caller's BYE or CANCEL, a callee's hang-up the callee's
    /// BYE — never a stranger's forgery that pbx took for theirs.
    pub fn cdr_committed(&mut self, now: Timestamp, cdr: &Cdr) {
        self.room_cdr(&cdr.call_id);
        self.check_cdr_hangup(now, cdr);
        self.record_cdr(cdr);
    }

    fn check_cdr_hangup(&mut self, now: Timestamp, cdr: &Cdr) {
        let answered = cdr.answer.is_some();
        let by_caller = answered || cdr.disposition == Disposition::Cancelled;
        match cdr.hangup {
            Some(HangupSide::Caller) if by_caller => {
                let said = self.by_extension.get(&cdr.caller).is_some_and(|&c| {
                    self.phones[c]
                        .said
                        .iter()
                        .any(|(_, call_id, _, w)| *call_id == cdr.call_id && matches!(w, Word::Bye | Word::Cancel))
                });
                self.check(now, "no stranger ends a call", said, || {
                    format!(
                        "call {} ({} → {}) was {} by the caller, who never said BYE or CANCEL",
                        cdr.call_id,
                        cdr.caller,
                        cdr.callee,
                        if answered { "hung up" } else { "cancelled" }
                    )
                });
            }
            Some(HangupSide::Callee) if answered => {
                let attempt = self.attempts.get(&cdr.call_id);
                let since = attempt.map_or(self.origin, |a| a.dialled);
                // The callee is the phone that answered: the dialled extension's, or one its
                // forwarding leads to (any of them, if the caller never heard who).
                let parties = match attempt.and_then(|a| a.answered_by.clone()) {
                    Some(answerer) => vec![answerer],
                    None => self
                        .parties(&cdr.callee, since, since + self.bounds.ring + SLACK)
                        .map_or_else(|| vec![cdr.callee.clone()], |p| p.into_iter().collect()),
                };
                let said = parties.iter().any(|p| self.callee_said(p, &cdr.caller, since, |w| w == Word::Bye));
                self.check(now, "no stranger ends a call", said, || {
                    format!(
                        "call {} ({} → {}) was hung up by the callee, who never said BYE",
                        cdr.call_id, cdr.caller, cdr.callee
                    )
                });
            }
            _ => {}
        }
    }

    fn record_cdr(&mut self, cdr: &Cdr) {
        self.cdr_calls.insert(cdr.id, cdr.call_id.clone());
        if let Some(r) = self.retention.as_mut() {
            r.cdrs.insert((cdr.end, cdr.id));
        }
    }

    /// A security-log entry is durable under `key` (it is committed fresh, not anonymised).
    pub fn security_committed(&mut self, key: Key) {
        if let Some(r) = self.retention.as_mut() {
            r.security.insert(key);
            r.security_fresh.insert(key);
        }
    }

    /// A push record is durable under `key` (its sending time and id): into the ledger.
    pub fn push_committed(&mut self, key: Key) {
        if let Some(r) = self.retention.as_mut() {
            r.push.insert(key);
        }
    }

    /// A reaper run's audit entry is durable: the run kept to its bound.
    pub fn audit_committed(&mut self, now: Timestamp, entry: &AuditEntry) {
        if let AuditEvent::Retention { finished, .. } = &entry.event {
            let took = *finished - entry.at;
            let origin = self.origin;
            self.check(now, "a reaper run ends within its bound", took <= REAPER_RUN_BOUND, || {
                format!("the run that started at {} took {took:?}", crate::sim::format_elapsed(entry.at - origin))
            });
        }
    }

    /// The node's disk against the retention rules, on the node's clock (`node_now`; records
    /// carry its times, so its drift does not matter). `up_since`: when the node last
    /// started, if it is up.
    ///
    /// Untouched, always: every CDR whose end and every security-log entry whose time is
    /// within its retention of `node_now` is on the disk, and a security-log entry younger
    /// than the anonymise period is not anonymised. Exact: a batch's cut-off is its run's
    /// start minus the period, never later than `node_now` minus it.
    ///
    /// Gone on time, while the node is up: a record due at `due` (its time plus its period:
    /// a binding's expiry plus the grace, a CDR's end plus `cdr_days`, a log or audit entry's
    /// time plus its period) is gone — anonymised, for the anonymise rule — by
    /// `due + interval + REAPER_RUN_BOUND` (the run after `due` starts within an interval and
    /// takes at most the bound). A crash may lose the run that was due; the restarted node's
    /// first run is at once, so a record that fell due before the node's last start is gone
    /// by `up_since + REAPER_RUN_BOUND` instead. While the node is down nothing is due.
    ///
    /// Audited, while the node is up: once it has been up for the bound, the newest audit
    /// entry on the disk is from a run that started at or after `up_since` and at most
    /// `interval + REAPER_RUN_BOUND` before `node_now`: every interval the node was up has
    /// its run on record (a crash loses only the run it interrupted).
    pub fn check_retention(&mut self, now: Timestamp, node_now: Timestamp, up_since: Option<Timestamp>, disk: &Disk) {
        let Some(r) = self.retention.as_mut() else { return };
        let days = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
        let p = &r.periods;
        let (cdr, anonymise, delete, audit) =
            (days(p.cdr_days), days(p.request_log_anonymise_days), days(p.request_log_delete_days), days(p.audit_days));
        let push = days(p.push_days);
        let (grace, interval) = (p.binding_grace, r.interval);
        let origin = self.origin;
        let when = move |t: Timestamp| crate::sim::format_elapsed(t - origin);
        let untouched = [
            ("CDR", "deleted", cdr, missing(&mut r.cdrs, node_now - cdr, &disk.cdr_ends)),
            ("security-log entry", "deleted", delete, missing(&mut r.security, node_now - delete, &disk.security_log)),
            ("security-log entry", "anonymised", anonymise, {
                missing(&mut r.security_fresh, node_now - anonymise, &disk.security_fresh)
            }),
            ("push record", "deleted", push, missing(&mut r.push, node_now - push, &disk.push_records)),
        ];
        for (what, how, period, gone) in untouched {
            self.check(now, "records within retention are untouched", gone.is_none(), || {
                let (at, id) = gone.unwrap_or_default();
                format!(
                    "{what} {id} of {} was {how} by {}, inside its {}",
                    when(at),
                    when(node_now),
                    format_duration(period)
                )
            });
        }
        let Some(up) = up_since else { return };
        let deadline = |due: Timestamp| if due < up { up } else { due + interval } + REAPER_RUN_BOUND;
        let oldest = [
            ("binding", "deleted", disk.bindings.values().map(|b| b.expires_at).min().map(|t| t + grace)),
            ("CDR", "deleted", disk.cdr_ends.first().map(|k| k.0 + cdr)),
            ("conference participation", "deleted", disk.participations.first_key_value().map(|(k, _)| k.0 + cdr)),
            ("push record", "deleted", disk.push_records.first_key_value().map(|(k, _)| k.0 + push)),
            ("security-log entry", "anonymised", disk.security_fresh.first().map(|k| k.0 + anonymise)),
            ("security-log entry", "deleted", disk.security_log.first_key_value().map(|(k, _)| k.0 + delete)),
            ("audit entry", "deleted", disk.audit.first_key_value().map(|(k, _)| k.0 + audit)),
        ];
        for (what, how, due) in oldest {
            let Some(due) = due else { continue };
            self.check(now, "no record outlives its retention", node_now <= deadline(due), || {
                format!("a {what} due at {} is not {how} at {} (node up since {})", when(due), when(node_now), when(up))
            });
        }
        if node_now >= up + REAPER_RUN_BOUND {
            let newest = disk.audit.last_key_value().map(|(k, _)| k.0);
            let want = up.max(node_now - interval - REAPER_RUN_BOUND);
            self.check(now, "every reaper interval leaves an audit entry", newest >= Some(want), || {
                let newest = newest.map_or("none".into(), when);
                format!("the newest is from {newest}; one from {} or later was due (up since {})", when(want), when(up))
            });
        }
    }

    /// An intruder's REGISTER was answered.
    pub fn intruder_answered(&mut self, now: Timestamp, code: u16) {
        self.check(now, "an intruder never gets in", code == 401 || code == 403, || {
            format!("a password guesser's REGISTER got {code}")
        });
    }

    /// pbx answered the attacker at its own address: its nonce probes are never let in, its
    /// forged BYEs and re-INVITEs never accepted (a CANCEL's 200 says nothing on its own: a
    /// CANCEL of an answered call is answered 200 and changes nothing; what a CANCEL did
    /// shows in the CDR, [`Checker::cdr_committed`]).
    pub fn stranger_answered(&mut self, now: Timestamp, method: &str, code: u16) {
        let success = (200..300).contains(&code);
        match method {
            "REGISTER" => {
                self.check(now, "an intruder never gets in", !success, || format!("the attacker's REGISTER got {code}"))
            }
            "BYE" | "INVITE" => self.check(now, "pbx accepts nothing a stranger forged", !success, || {
                format!("the attacker's forged in-dialog {method} got {code}")
            }),
            _ => {}
        }
    }

    /// pbx sent the attacker a request: it took the attacker for a party of a call.
    pub fn stranger_contacted(&mut self, now: Timestamp, method: &str) {
        self.check(now, "pbx accepts nothing a stranger forged", false, || {
            format!("pbx sent the attacker a {method}, as to a party of a call")
        });
    }

    /// A media datagram reached a phone's RTP or RTCP port: it carries what an office phone
    /// said (the office's PCMU silence), or a stranger's voice (`detail`).
    pub fn media_at_phone(&mut self, now: Timestamp, ok: bool, detail: impl FnOnce() -> String) {
        self.check(now, "no phone hears a stranger", ok, detail);
    }

    /// pbx sent media from one of its media ports: only ever to an office phone.
    pub fn media_from_pbx(&mut self, now: Timestamp, ok: bool, detail: impl FnOnce() -> String) {
        self.check(now, "no stranger hears a call", ok, detail);
    }
}

/// The retention checkers' model: the periods, and a ledger of what must still be on disk.
struct RetentionModel {
    periods: Periods,
    interval: Duration,
    /// Committed CDRs `(end, id)` still inside their retention.
    cdrs: BTreeSet<Key>,
    /// Committed security-log entries still inside the delete period, and those still inside
    /// the anonymise period.
    security: BTreeSet<Key>,
    security_fresh: BTreeSet<Key>,
    /// Committed push records `(sent, id)` still inside their 7 days.
    push: BTreeSet<Key>,
}

/// Drops from `ledger` what is older than `from` (no longer protected), then finds an entry
/// of the rest that `disk` lacks. Cheap enough for every check: every key on the disk came
/// through the ledger, so the disk holds all of the rest exactly when it holds as many keys
/// from `from` on — and counting those is counting the few it holds before `from` (at most an
/// interval's worth, while the reaper works).
fn missing(ledger: &mut BTreeSet<Key>, from: Timestamp, disk: &impl Table) -> Option<Key> {
    while ledger.first().is_some_and(|k| k.0 < from) {
        ledger.pop_first();
    }
    if disk.count() - disk.count_before(from) == ledger.len() {
        return None;
    }
    ledger.iter().find(|k| !disk.holds(k)).copied()
}

/// A disk table's keys, oldest first.
trait Table {
    fn count(&self) -> usize;
    fn count_before(&self, from: Timestamp) -> usize;
    fn holds(&self, key: &Key) -> bool;
}

impl Table for BTreeSet<Key> {
    fn count(&self) -> usize {
        self.len()
    }
    fn count_before(&self, from: Timestamp) -> usize {
        self.range(..(from, 0)).count()
    }
    fn holds(&self, key: &Key) -> bool {
        self.contains(key)
    }
}

impl<V> Table for BTreeMap<Key, V> {
    fn count(&self) -> usize {
        self.len()
    }
    fn count_before(&self, from: Timestamp) -> usize {
        self.range(..(from, 0)).count()
    }
    fn holds(&self, key: &Key) -> bool {
        self.contains_key(key)
    }
}

fn live(yes: bool) -> &'static str {
    if yes { "up" } else { "gone" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::DiskWrite;
    use crate::proxy::ProxyDisk;
    use pbx_actors::cdr::Disposition;
    use pbx_actors::privacy::reaper::{Action, Batch};
    use pbx_actors::proxy::Persist;

    const HOUR: Duration = Duration::from_secs(3_600);
    const DAY: Duration = Duration::from_secs(86_400);
    const SECOND: Duration = Duration::from_secs(1);
    const T0: Timestamp = Timestamp::from_secs(1_000 * 86_400);

    fn checker() -> Checker {
        let bounds = Bounds::new(Duration::from_secs(30), Duration::from_secs(60), Duration::from_secs(600), 3600);
        Checker::new(T0, bounds, &[], Some((Periods::default(), HOUR)))
    }

    fn store_cdr(checker: &mut Checker, disk: &mut Disk, id: u64, end: Timestamp) {
        let cdr = Cdr {
            id,
            call_id: format!("call-{id}"),
            caller: "1000".into(),
            callee: "1001".into(),
            start: end,
            answer: None,
            end,
            disposition: Disposition::NoAnswer,
            hangup: None,
            codec_caller: None,
            codec_callee: None,
            media: Default::default(),
            follows: None,
            transfer: None,
        };
        checker.cdr_committed(T0, &cdr);
        disk.apply(DiskWrite::Entry(pbx_actors::entry::Entry::Cdrs(vec![cdr]))).unwrap();
    }

    fn audit(disk: &mut Disk, at: Timestamp) {
        let event = AuditEvent::Retention { rules: Vec::new(), finished: at };
        disk.apply(DiskWrite::Audit(AuditEntry { at, event })).unwrap();
    }

    fn violated(checker: &mut Checker, invariant: &str) -> bool {
        let found = checker.violations.iter().any(|v| v.invariant == invariant);
        checker.violations.clear();
        found
    }

    /// A CDR is due 90 days after its end and must be gone one interval plus the run bound
    /// later; after a restart, what fell due before it must be gone a run bound after it;
    /// while the node is down nothing is due.
    #[test]
    fn a_record_outlives_its_retention_by_at_most_an_interval() {
        let (mut c, mut disk) = (checker(), Disk::default());
        store_cdr(&mut c, &mut disk, 1, T0);
        let due = T0 + 90 * DAY;
        let deadline = due + HOUR + REAPER_RUN_BOUND;
        let up = Some(T0);
        c.check_retention(T0, deadline, up, &disk);
        assert!(!violated(&mut c, "no record outlives its retention"));
        c.check_retention(T0, deadline + SECOND, up, &disk);
        assert!(violated(&mut c, "no record outlives its retention"));
        c.check_retention(T0, deadline + DAY, None, &disk);
        assert!(!violated(&mut c, "no record outlives its retention"), "the node is down");
        let restart = due + 5 * HOUR;
        c.check_retention(T0, restart + REAPER_RUN_BOUND, Some(restart), &disk);
        assert!(!violated(&mut c, "no record outlives its retention"));
        c.check_retention(T0, restart + REAPER_RUN_BOUND + SECOND, Some(restart), &disk);
        assert!(violated(&mut c, "no record outlives its retention"));
    }

    /// A push record is due 7 days after it was sent: one still on the disk an interval and the
    /// run bound later is flagged, and the disk's rule keeps it at a run 7 days less a second
    /// after it, deletes it at one 7 days and a second after; deleted a day early, it is
    /// missed.
    #[test]
    fn a_push_record_is_due_seven_days_after_it_was_sent() {
        let (mut c, mut disk) = (checker(), Disk::default());
        let record = pbx_actors::push::PushRecord {
            id: 1,
            at: T0,
            user: "1000".into(),
            caller: "1001".into(),
            callee: "1000".into(),
            provider: "fcm".into(),
            device: "token".into(),
            source: "10.1.0.1:5060".parse().unwrap(),
            outcome: "delivered".into(),
        };
        c.push_committed((record.at, record.id));
        disk.apply(DiskWrite::Entry(pbx_actors::entry::Entry::PushRecords(vec![record.clone()]))).unwrap();
        let deadline = T0 + 7 * DAY + HOUR + REAPER_RUN_BOUND;
        c.check_retention(T0, deadline, Some(T0), &disk);
        assert!(!violated(&mut c, "no record outlives its retention"));
        c.check_retention(T0, deadline + SECOND, Some(T0), &disk);
        assert!(violated(&mut c, "no record outlives its retention"));
        let run = |disk: &mut Disk, at: Timestamp| {
            let cutoff = at - 7 * DAY;
            disk.reap(&Batch { rule: 0, category: "push-records", action: Action::Delete, cutoff, limit: 10 }).unwrap()
        };
        assert_eq!(run(&mut disk, T0 + 7 * DAY - SECOND), 0);
        c.check_retention(T0, T0 + 7 * DAY - SECOND, Some(T0), &disk);
        assert!(!violated(&mut c, "records within retention are untouched"));
        assert_eq!(run(&mut disk, T0 + 7 * DAY + SECOND), 1);
        assert!(disk.push_records.is_empty());
        c.check_retention(T0, T0 + 7 * DAY + SECOND, Some(T0), &disk);
        assert!(!violated(&mut c, "records within retention are untouched"), "it was due");

        let (mut c, mut disk) = (checker(), Disk::default());
        c.push_committed((record.at, record.id));
        disk.apply(DiskWrite::Entry(pbx_actors::entry::Entry::PushRecords(vec![record]))).unwrap();
        assert_eq!(run(&mut disk, T0 + 8 * DAY), 1);
        c.check_retention(T0, T0 + 6 * DAY, Some(T0), &disk);
        assert!(violated(&mut c, "records within retention are untouched"), "deleted a day early");
    }

    fn proxy_checker() -> Checker {
        let bounds = Bounds::new(Duration::from_secs(30), Duration::from_secs(60), Duration::from_secs(600), 3600);
        Checker::new(T0, bounds, &["1000".to_string()], None).with_proxy(&pbx_actors::proxy::LedgerConfig::default())
    }

    /// Drains the ledger's outputs through the checker onto the disk.
    fn proxy_drain(c: &mut Checker, ledger: &mut pbx_actors::proxy::Ledger, disk: &mut ProxyDisk, now: Timestamp) {
        while let Some(out) = ledger.poll_output() {
            if let pbx_actors::proxy::LedgerOutput::Persist(p) = out {
                c.proxy_persisted(now, &p, disk);
                disk.apply(&p);
            }
        }
    }

    /// A proxy session is due 365 days after its last use: on the disk a minute (the stored
    /// last use may lag) and a reaper interval later it is flagged; the product's ledger keeps
    /// it at a run a second before its due time and deletes it at one on it, which the
    /// "untouched" check accepts, while a deletion a day early is caught.
    #[test]
    fn a_proxy_session_is_due_365_days_after_its_last_use() {
        use pbx_actors::proxy::{
            LAST_USE_WRITE_AFTER, Ledger, LedgerConfig, LedgerInput, LedgerState, REAPER_INTERVAL,
        };
        let (mut c, mut disk) = (proxy_checker(), ProxyDisk::default());
        let mut ledger = Ledger::new(LedgerConfig::default(), LedgerState::default(), T0);
        let softphone: std::net::SocketAddr = "198.18.0.7:40000".parse().unwrap();
        let seen = LedgerInput::Seen {
            softphone,
            pbx: "203.0.113.5:4433".parse().unwrap(),
            pbx_serial: crate::proxy::PBX_SERIAL.into(),
            user: "1000".into(),
            push_token: None,
        };
        c.proxy_used(T0, "1000", softphone);
        ledger.handle(T0, seen);
        proxy_drain(&mut c, &mut ledger, &mut disk, T0);
        assert_eq!(disk.sessions.len(), 1);
        let deadline = T0 + 365 * DAY + LAST_USE_WRITE_AFTER + REAPER_INTERVAL;
        c.check_proxy(deadline, &disk);
        assert!(!violated(&mut c, "no record outlives its retention"));
        c.check_proxy(deadline + SECOND, &disk);
        assert!(violated(&mut c, "no record outlives its retention"));
        ledger.handle(T0 + 365 * DAY - SECOND, LedgerInput::Tick);
        proxy_drain(&mut c, &mut ledger, &mut disk, T0 + 365 * DAY - SECOND);
        assert_eq!(disk.sessions.len(), 1);
        ledger.handle(T0 + 365 * DAY, LedgerInput::Tick);
        proxy_drain(&mut c, &mut ledger, &mut disk, T0 + 365 * DAY);
        assert!(disk.sessions.is_empty());
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        // A deletion inside the retention.
        let key = pbx_actors::proxy::SessionKey { pbx_serial: "P".into(), user: "1000".into(), softphone };
        c.proxy_used(T0, "1000", softphone);
        c.proxy_persisted(T0 + 364 * DAY, &Persist::DeleteSession(key), &disk);
        assert!(violated(&mut c, "records within retention are untouched"));
    }

    /// A proxy debug record is due 28 days after it was made (flagged an interval later, and
    /// when deleted a second early); a destination recorded before debug mode, after its end
    /// or after it was switched off is caught, one inside the window is not.
    #[test]
    fn proxy_debug_records_only_in_debug_mode_and_for_28_days() {
        use pbx_actors::proxy::{DebugRecord, REAPER_INTERVAL};
        let (mut c, mut disk) = (proxy_checker(), ProxyDisk::default());
        let put = |at: Timestamp, id| Persist::PutDebug {
            id,
            record: DebugRecord { pbx_serial: "P".into(), user: "1000".into(), destination: "201".into(), at },
        };
        c.proxy_persisted(T0, &put(T0, 1), &disk);
        assert!(violated(&mut c, "no destination is recorded while debug mode is off"), "before it is on");
        c.proxy_debug_mode(T0, Some(T0 + DAY));
        let at = T0 + HOUR;
        c.proxy_persisted(at, &put(at, 2), &disk);
        assert!(c.violations.is_empty());
        disk.apply(&put(at, 2));
        c.proxy_persisted(T0 + DAY, &put(T0 + DAY, 3), &disk);
        assert!(violated(&mut c, "no destination is recorded while debug mode is off"), "at its end");
        c.proxy_debug_mode(T0 + 2 * DAY, Some(T0 + 10 * DAY));
        c.proxy_debug_mode(T0 + 3 * DAY, None);
        c.proxy_persisted(T0 + 3 * DAY, &put(T0 + 3 * DAY, 4), &disk);
        assert!(violated(&mut c, "no destination is recorded while debug mode is off"), "switched off");
        c.proxy_persisted(T0 + 2 * DAY, &put(T0 + 2 * DAY, 5), &disk);
        assert!(c.violations.is_empty(), "inside the second window");
        c.check_proxy(at + 28 * DAY + REAPER_INTERVAL, &disk);
        assert!(c.violations.is_empty());
        c.check_proxy(at + 28 * DAY + REAPER_INTERVAL + SECOND, &disk);
        assert!(violated(&mut c, "no record outlives its retention"));
        c.proxy_persisted(at + 28 * DAY - SECOND, &Persist::DeleteDebug { id: 2 }, &disk);
        assert!(violated(&mut c, "records within retention are untouched"));
        c.proxy_persisted(at + 28 * DAY, &Persist::DeleteDebug { id: 2 }, &disk);
        assert!(c.violations.is_empty());
    }

    /// The ledger: a CDR deleted inside its retention is missed, one deleted after it is not;
    /// a security-log entry anonymised inside its 14 days is caught too.
    #[test]
    fn a_record_touched_inside_its_retention_is_caught() {
        let (mut c, mut disk) = (checker(), Disk::default());
        for day in 0..3u32 {
            store_cdr(&mut c, &mut disk, day.into(), T0 + day * DAY);
        }
        let reap = |disk: &mut Disk, category, action, cutoff| {
            disk.reap(&Batch { rule: 0, category, action, cutoff, limit: 10 }).unwrap();
        };
        let now = T0 + 91 * DAY;
        reap(&mut disk, "cdr", Action::Delete, now - 90 * DAY);
        c.check_retention(T0, now, None, &disk);
        assert!(!violated(&mut c, "records within retention are untouched"), "the first CDR was due");
        reap(&mut disk, "cdr", Action::Delete, now - 89 * DAY);
        c.check_retention(T0, now, None, &disk);
        assert!(violated(&mut c, "records within retention are untouched"), "the second was not");

        let (mut c, mut disk) = (checker(), Disk::default());
        let entry = pbx_actors::privacy::SecurityEntry::new(
            T0,
            "203.0.113.5".parse().unwrap(),
            Some("1000".into()),
            pbx_actors::privacy::SecurityEvent::AuthFailed,
        );
        c.security_committed((entry.at, disk.next_id));
        disk.apply(DiskWrite::SecurityLog(Box::new(entry))).unwrap();
        let now = T0 + 13 * DAY;
        reap(&mut disk, "security-log", Action::Anonymise, now);
        c.check_retention(T0, now, None, &disk);
        assert!(violated(&mut c, "records within retention are untouched"));
    }

    /// Once the node has been up for the run bound, the newest audit entry is from this
    /// incarnation and at most an interval plus the bound old.
    #[test]
    fn every_interval_leaves_its_audit_entry() {
        let (mut c, mut disk) = (checker(), Disk::default());
        audit(&mut disk, T0);
        let invariant = "every reaper interval leaves an audit entry";
        c.check_retention(T0, T0 + HOUR + REAPER_RUN_BOUND, Some(T0), &disk);
        assert!(!violated(&mut c, invariant));
        c.check_retention(T0, T0 + HOUR + REAPER_RUN_BOUND + SECOND, Some(T0), &disk);
        assert!(violated(&mut c, invariant));
        let restart = T0 + 10 * 60 * SECOND;
        c.check_retention(T0, restart + REAPER_RUN_BOUND - SECOND, Some(restart), &disk);
        assert!(!violated(&mut c, invariant), "the restarted node's first run may still be under way");
        c.check_retention(T0, restart + REAPER_RUN_BOUND, Some(restart), &disk);
        assert!(violated(&mut c, invariant), "an entry from before the restart does not count");
        audit(&mut disk, restart);
        c.check_retention(T0, restart + REAPER_RUN_BOUND, Some(restart), &disk);
        assert!(!violated(&mut c, invariant));
    }

    // ---- The attacker's checkers can fail ----

    fn office() -> Checker {
        let bounds = Bounds::new(Duration::from_secs(30), Duration::from_secs(60), Duration::from_secs(600), 3600);
        Checker::new(T0, bounds, &["1000".to_owned(), "1001".to_owned()], None)
    }

    fn answered(call_id: &str, hangup: HangupSide) -> Cdr {
        Cdr {
            id: 1,
            call_id: call_id.into(),
            caller: "1000".into(),
            callee: "1001".into(),
            start: T0,
            answer: Some(T0 + SECOND),
            end: T0 + 60 * SECOND,
            disposition: Disposition::Answered,
            hangup: Some(hangup),
            codec_caller: None,
            codec_callee: None,
            media: Default::default(),
            follows: None,
            transfer: None,
        }
    }

    /// 1000 calls 1001 (Call-ID "a"; pbx's toward 1001 is "b") and both are in the call.
    fn call_up(c: &mut Checker) {
        c.phone_event(T0, 0, &PhoneEvent::Dialing { call_id: "a".into(), callee: "1001".into() });
        let t = T0 + SECOND;
        c.phone_event(t, 1, &PhoneEvent::Established { call_id: "b".into(), peer: "1000".into(), caller: false });
        c.phone_event(t, 0, &PhoneEvent::Established { call_id: "a".into(), peer: "1001".into(), caller: true });
    }

    fn said(c: &mut Checker, phone: usize, call_id: &str, word: Word) {
        let peer = if phone == 0 { "1001" } else { "1000" };
        c.phone_event(T0 + 2 * SECOND, phone, &PhoneEvent::Said { call_id: call_id.into(), peer: peer.into(), word });
    }

    /// pbx's CDR says who hung up; unless that party said BYE (or, the caller, CANCEL), a
    /// stranger did it.
    #[test]
    fn a_hang_up_its_party_never_said_is_a_strangers() {
        let invariant = "no stranger ends a call";
        for side in [HangupSide::Caller, HangupSide::Callee] {
            let mut c = office();
            call_up(&mut c);
            c.cdr_committed(T0 + HOUR, &answered("a", side));
            assert!(violated(&mut c, invariant), "{side:?}");
            // The other party's BYE does not explain it.
            let (other, other_call) = if side == HangupSide::Caller { (1, "b") } else { (0, "a") };
            said(&mut c, other, other_call, Word::Bye);
            c.cdr_committed(T0 + HOUR, &answered("a", side));
            assert!(violated(&mut c, invariant), "{side:?}");
            let (phone, call_id) = if side == HangupSide::Caller { (0, "a") } else { (1, "b") };
            said(&mut c, phone, call_id, Word::Bye);
            c.cdr_committed(T0 + HOUR, &answered("a", side));
            assert!(!violated(&mut c, invariant), "{side:?}");
        }
        let mut c = office();
        call_up(&mut c);
        c.cdr_committed(T0 + HOUR, &answered("a", HangupSide::Pbx));
        assert!(!violated(&mut c, invariant), "pbx's own hang-ups are not judged here");
    }

    /// A caller answered while its callee never sent a 2xx, or refused with a code its callee
    /// never sent, was answered or refused by a stranger.
    #[test]
    fn an_answer_or_refusal_the_callee_never_gave_is_a_strangers() {
        let mut c = office();
        c.phone_event(T0, 0, &PhoneEvent::Dialing { call_id: "a".into(), callee: "1001".into() });
        c.phone_event(
            T0 + SECOND,
            0,
            &PhoneEvent::Established { call_id: "a".into(), peer: "1001".into(), caller: true },
        );
        assert!(violated(&mut c, "a call is answered only by its callee"));
        let mut c = office();
        call_up(&mut c);
        assert!(c.violations.is_empty(), "{:?}", c.violations);

        let mut c = office();
        c.phone_event(T0, 0, &PhoneEvent::Dialing { call_id: "a".into(), callee: "1001".into() });
        said(&mut c, 1, "b", Word::Reject(603));
        c.phone_event(
            T0 + 3 * SECOND,
            0,
            &PhoneEvent::CallFailed { call_id: "a".into(), code: 486, reason: "Busy Here".into() },
        );
        assert!(violated(&mut c, "a call is refused only by its callee"), "it said 603, not 486");
        c.phone_event(
            T0 + 3 * SECOND,
            0,
            &PhoneEvent::CallFailed { call_id: "a".into(), code: 603, reason: "Decline".into() },
        );
        assert!(!violated(&mut c, "a call is refused only by its callee"));
    }

    /// A phone's REGISTER refused 403 is a phone locked out (it knows its password); 401 after
    /// a crash lost the nonce, or 408 in a partition, are not.
    #[test]
    fn a_phone_refused_403_is_locked_out() {
        let mut c = office();
        for code in [401, 408] {
            c.phone_event(T0, 1, &PhoneEvent::RegisterFailed { code });
        }
        assert!(!violated(&mut c, "no phone is locked out by strangers"));
        c.phone_event(T0, 1, &PhoneEvent::RegisterFailed { code: 403 });
        assert!(violated(&mut c, "no phone is locked out by strangers"));
    }

    /// The endpoint may hold what the office's phones make; beyond that it keeps strangers'
    /// state.
    #[test]
    fn transactions_beyond_the_office_bound_are_strangers_state() {
        let mut c = office();
        let bound = 2 * TRANSACTIONS_PER_PHONE_MAX + TRANSACTIONS_SLACK;
        c.check_state(T0, bound);
        assert!(!violated(&mut c, "strangers cost no state"));
        c.check_state(T0, bound + 1);
        assert!(violated(&mut c, "strangers cost no state"));
    }
}

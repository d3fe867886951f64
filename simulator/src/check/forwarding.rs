//! The forwarding invariants (issue 18: call forwarding per extension, always / on busy / on no
//! answer, set by feature codes), counted like the others. The checkers keep their own model of
//! every extension's forwarding, built only from what the phones saw: the feature codes each
//! dialled and the answers it got. It follows pbx's documented rules
//! (`actors/src/registrar/forwarding.rs`) but is written here on its own, so a slip in the
//! product's routing is not copied into its judge: the dialled extension's `always` target is
//! followed, and that one's, at most [`FORWARD_HOPS_MAX`] steps, a target already met (a loop)
//! not taken; the extension reached rings, and its no-answer, then its busy forward (each
//! through its own `always` chain, loops cut the same way, an extension already met never
//! followed) are where the call may go next — once at most.
//!
//! What a phone was told is not always what pbx holds at every instant: a code takes effect in
//! pbx between the phone's INVITE and its answer, and a code whose answer never came (lost in a
//! crash, refused for overload) may or may not have been done. So the model holds, per
//! extension and over time, the set of values its forwarding may have had; a call is judged
//! against every combination of the values of the extensions on its way while it was routed
//! (from its dialling to its answer).
//!
//! - **Feature-code answers agree with the model**: a code pbx knows is answered 603 with the
//!   reason phrase that says what was done (`Forwarding on: always to 1002`); a target that is
//!   no extension, or the phone's own, 403; a code pbx does not know, 404; never 2xx, never 400
//!   (`#` as is or as `%23`: pbx's README takes either). No answer at all (a crash), or one for
//!   overload or a failed write, leaves the code maybe done.
//! - **A forwarding loop never rings forever**: every call a phone places has its final answer
//!   (2xx or failure) within the ring bound ([`super::Bounds::ring`], plus the slack): the
//!   no-answer time, and with forwarding once more for the forward (see
//!   [`super::Bounds::with_forwarding`]). Unless a fault may have eaten the answer (the caller
//!   away or cut off, the node down, in that time).
//! - **A forwarded call connects the right two parties**: the phone that answered a call is one
//!   of the extension its forwarding led to, or of that one's busy or no-answer target — and
//!   one callee phone per call: a second phone that answered the same call is hung up within
//!   the hang-up bound.

use super::{Checker, SLACK};
use pbx_actors::Timestamp;
use pbx_actors::registrar::forwarding::{FORWARD_HOPS_MAX, NO_ANSWER_AFTER_S, NO_ANSWER_AFTER_S_DEFAULT};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub const CODES: &str = "feature-code answers agree with the model";
pub const RINGS: &str = "a forwarding loop never rings forever";
pub const PARTIES: &str = "a forwarded call connects the right two parties";

/// Combinations of uncertain forwarding one call is judged against at most; a call with more
/// is not judged (none comes near: a few phones forward at a time, and a value is uncertain
/// only while its code is answered or after a crash ate the answer).
const COMBINATIONS_MAX: usize = 256;

/// One extension's forwarding as the model holds it (the product's `Forwarding`, restated).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fwd {
    always: Option<String>,
    busy: Option<String>,
    no_answer: Option<String>,
    after_s: u32,
}

impl Default for Fwd {
    fn default() -> Self {
        Fwd { always: None, busy: None, no_answer: None, after_s: NO_ANSWER_AFTER_S_DEFAULT }
    }
}

impl Fwd {
    fn describe(&self) -> String {
        let mut on = Vec::new();
        if let Some(t) = &self.always {
            on.push(format!("always {t}"));
        }
        if let Some(t) = &self.busy {
            on.push(format!("busy {t}"));
        }
        if let Some(t) = &self.no_answer {
            on.push(format!("no answer {t} after {} s", self.after_s));
        }
        if on.is_empty() { "off".into() } else { on.join(", ") }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Always,
    Busy,
    NoAnswer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Always => "always",
            Kind::Busy => "busy",
            Kind::NoAnswer => "no answer",
        }
    }

    fn slot(self, f: &mut Fwd) -> &mut Option<String> {
        match self {
            Kind::Always => &mut f.always,
            Kind::Busy => &mut f.busy,
            Kind::NoAnswer => &mut f.no_answer,
        }
    }
}

/// A feature code as the checkers read what a phone dialled.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Code {
    Set(Kind, String, Option<u32>),
    Clear(Kind),
    ClearAll,
    Unknown,
}

/// `None` for a number; a code for what starts with `*` or `#` (`%23`, RFC 3261 §19.1.2).
fn read_code(dialled: &str) -> Option<Code> {
    if !dialled.starts_with(['*', '#']) && !dialled.starts_with("%23") {
        return None;
    }
    let text = dialled.replace("%23", "#");
    let kind = |digits: &str| match digits {
        "21" => Some(Kind::Always),
        "67" => Some(Kind::Busy),
        "61" => Some(Kind::NoAnswer),
        _ => None,
    };
    if text == "#002#" {
        return Some(Code::ClearAll);
    }
    if let Some(kind) = text.strip_prefix('#').and_then(|t| t.strip_suffix('#')).and_then(kind) {
        return Some(Code::Clear(kind));
    }
    let Some(body) = text.strip_prefix('*').and_then(|t| t.strip_suffix('#')) else { return Some(Code::Unknown) };
    let parts: Vec<&str> = body.split('*').collect();
    let number = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric());
    Some(match parts[..] {
        [k, target] if number(target) => kind(k).map_or(Code::Unknown, |k| Code::Set(k, target.into(), None)),
        [k, target, s] if number(target) && kind(k) == Some(Kind::NoAnswer) => {
            match s.parse::<u32>().ok().filter(|_| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
            {
                Some(s) => Code::Set(Kind::NoAnswer, target.into(), Some(s)),
                None => Code::Unknown,
            }
        }
        _ => Code::Unknown,
    })
}

/// A code dialled, waiting for its answer.
#[derive(Debug)]
struct PendingCode {
    extension: String,
    dialled: String,
    /// The answer the model expects: 603 with this reason phrase, 403 or 404.
    expected: u16,
    reason: Option<String>,
    /// The extension's forwarding before the code, and what it is once the code is done.
    before: Vec<Fwd>,
    after: Vec<Fwd>,
}

/// Two callee phones in one caller's call at once: one must be hung up by `deadline`.
#[derive(Debug)]
struct Twin {
    since: Timestamp,
    deadline: Timestamp,
    caller: usize,
    call_id: String,
    first: (usize, String),
    second: (usize, String),
}

/// What the forwarding checkers keep.
#[derive(Debug, Default)]
pub(super) struct ForwardingModel {
    /// Per extension, from when on its forwarding may have had which values (oldest first);
    /// before its first entry, and for an extension with none, it is off.
    history: BTreeMap<String, Vec<(Timestamp, Vec<Fwd>)>>,
    /// Feature codes dialled and not yet answered, by Call-ID.
    codes: BTreeMap<String, PendingCode>,
    /// Calls waiting for their final answer: (dialled, Call-ID).
    waiting: BTreeSet<(Timestamp, String)>,
    twins: Vec<Twin>,
    counts: ForwardCounts,
}

/// What the forwarding checkers judged, over the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardCounts {
    /// Feature codes whose answer (603, 403, 404, 400) was judged against the model ...
    pub codes_judged: u64,
    /// ... and those answered otherwise (lost, refused for overload): maybe done, maybe not.
    pub codes_unsure: u64,
    /// Answered calls whose answering phone was judged against the forwarding, and of those
    /// the ones answered by another extension than the dialled one.
    pub answers_judged: u64,
    pub answered_elsewhere: u64,
    /// Calls whose wait for a final answer was judged, and the longest of those waits.
    pub rings_judged: u64,
    pub longest_ring: Duration,
    /// Calls two callee phones answered (the later one is hung up within the bound).
    pub twins: u64,
}

impl ForwardingModel {
    /// The values `extension`'s forwarding may have had at some time in `[from, to]`.
    fn values(&self, extension: &str, from: Timestamp, to: Timestamp) -> Vec<Fwd> {
        let Some(entries) = self.history.get(extension) else { return vec![Fwd::default()] };
        let first = entries.partition_point(|(since, _)| *since <= from);
        let mut values = if first == 0 { vec![Fwd::default()] } else { Vec::new() };
        for (since, set) in &entries[first.saturating_sub(1)..] {
            if *since > to {
                break;
            }
            for f in set {
                if !values.contains(f) {
                    values.push(f.clone());
                }
            }
        }
        values
    }

    /// The values `extension`'s forwarding may have now.
    fn latest(&self, extension: &str) -> Vec<Fwd> {
        self.history.get(extension).and_then(|e| e.last()).map_or_else(|| vec![Fwd::default()], |(_, v)| v.clone())
    }

    fn set(&mut self, now: Timestamp, extension: &str, values: Vec<Fwd>) {
        self.history.entry(extension.to_owned()).or_default().push((now, values));
    }

    /// Every extension `dialled` may ring, for one fixed choice per uncertain extension met
    /// (`fixed`), branching on the next uncertain one; `None` past the budget.
    fn explore(
        &self,
        dialled: &str,
        (from, to): (Timestamp, Timestamp),
        is_extension: &dyn Fn(&str) -> bool,
        fixed: &mut BTreeMap<String, Fwd>,
        out: &mut BTreeSet<String>,
        budget: &mut usize,
    ) -> Option<()> {
        *budget = budget.checked_sub(1)?;
        let routed = {
            let lookup = |extension: &str| match fixed.get(extension) {
                Some(f) => Ok(f.clone()),
                None => {
                    let mut values = self.values(extension, from, to);
                    if values.len() == 1 { Ok(values.remove(0)) } else { Err(extension.to_owned()) }
                }
            };
            route(dialled, &lookup, is_extension)
        };
        match routed {
            Ok(parties) => out.extend(parties),
            Err(uncertain) => {
                for value in self.values(&uncertain, from, to) {
                    fixed.insert(uncertain.clone(), value);
                    self.explore(dialled, (from, to), is_extension, fixed, out, budget)?;
                }
                fixed.remove(&uncertain);
            }
        }
        Some(())
    }
}

/// The extensions a call to `dialled` may ring with this forwarding: the one its `always` chain
/// leads to, then its no-answer and busy targets; `Err` names an extension whose forwarding
/// `lookup` cannot tell.
fn route(
    dialled: &str,
    lookup: &dyn Fn(&str) -> Result<Fwd, String>,
    is_extension: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, String> {
    let mut met = Vec::new();
    let rings = follow(dialled, lookup, &mut met)?;
    let f = lookup(&rings)?;
    let mut parties = vec![rings];
    // The no-answer target first, then the busy one, through one list of extensions met: a
    // target already on the way is no forward.
    for to in [f.no_answer, f.busy].into_iter().flatten() {
        if !met.contains(&to) && is_extension(&to) {
            parties.push(follow(&to, lookup, &mut met)?);
        }
    }
    Ok(parties)
}

/// Follows `always` from `from`; every extension met goes into `met`; a target already met is
/// not taken, nor a step past [`FORWARD_HOPS_MAX`].
fn follow(from: &str, lookup: &dyn Fn(&str) -> Result<Fwd, String>, met: &mut Vec<String>) -> Result<String, String> {
    let mut at = from.to_owned();
    if !met.contains(&at) {
        met.push(at.clone());
    }
    for _ in 0..FORWARD_HOPS_MAX {
        let Some(next) = lookup(&at)?.always else { break };
        if met.contains(&next) {
            break;
        }
        met.push(next.clone());
        at = next;
    }
    Ok(at)
}

impl Checker {
    pub fn forward_counts(&self) -> ForwardCounts {
        self.forwarding.counts
    }

    /// A phone dialled: its call waits for its final answer; a feature code (`true`) is read
    /// against the model, and what it asks becomes possible at once (pbx may do it before its
    /// answer arrives).
    pub(super) fn code_dialled(&mut self, now: Timestamp, phone: usize, call_id: &str, dialled: &str) -> bool {
        self.forwarding.waiting.insert((now, call_id.to_owned()));
        let Some(code) = read_code(dialled) else { return false };
        let extension = self.phones[phone].extension.clone();
        let before = self.forwarding.latest(&extension);
        let apply = |f: &Fwd| {
            let mut next = f.clone();
            match &code {
                Code::Set(kind, target, after_s) => {
                    *kind.slot(&mut next) = Some(target.clone());
                    if let Some(s) = after_s {
                        next.after_s = *s;
                    }
                }
                Code::Clear(kind) => *kind.slot(&mut next) = None,
                Code::ClearAll => next = Fwd { after_s: f.after_s, ..Fwd::default() },
                Code::Unknown => {}
            }
            next
        };
        let mut after: Vec<Fwd> = Vec::new();
        for f in before.iter().map(apply) {
            if !after.contains(&f) {
                after.push(f);
            }
        }
        let (expected, reason) = match &code {
            Code::Unknown => (404, None),
            Code::Set(_, target, _) if !self.by_extension.contains_key(target) || *target == extension => (403, None),
            Code::Set(_, _, Some(s)) if !NO_ANSWER_AFTER_S.contains(s) => (403, None),
            Code::Set(Kind::NoAnswer, target, Some(s)) => {
                (603, Some(format!("Forwarding on: no answer to {target} after {s} s")))
            }
            Code::Set(kind, target, _) => (603, Some(format!("Forwarding on: {} to {target}", kind.name()))),
            Code::Clear(kind) => (603, Some(format!("Forwarding off: {}", kind.name()))),
            Code::ClearAll => (603, Some("Forwarding off: all".into())),
        };
        if expected == 603 {
            let mut either = before.clone();
            either.extend(after.iter().filter(|f| !before.contains(f)).cloned());
            self.forwarding.set(now, &extension, either);
        }
        let pending = PendingCode { extension, dialled: dialled.to_owned(), expected, reason, before, after };
        self.forwarding.codes.insert(call_id.to_owned(), pending);
        true
    }

    /// A caller had its final answer (`None`: the 2xx): its wait is judged against the ring
    /// bound, and a feature code's answer against the model.
    pub(super) fn final_answer(&mut self, now: Timestamp, call_id: &str, answer: Option<(u16, &str)>) {
        self.ring_ends(now, call_id);
        let Some(code) = self.forwarding.codes.remove(call_id) else { return };
        match answer {
            // Answered 2xx (judged by `check_answered_by_callee`): what it asked may be done.
            None => self.forwarding.counts.codes_unsure += 1,
            // pbx's own answers to a code (400: it could not read it; never due for a code
            // the model reads).
            Some((answered, reason)) if matches!(answered, 400 | 403 | 404 | 603) => {
                self.forwarding.counts.codes_judged += 1;
                let agrees = answered == code.expected && (answered != 603 || code.reason.as_deref() == Some(reason));
                self.check(now, CODES, agrees, || {
                    let expected = match &code.reason {
                        Some(r) => format!("603 {r:?}"),
                        None => code.expected.to_string(),
                    };
                    let was = code.before.iter().map(Fwd::describe).collect::<Vec<_>>().join(" or ");
                    format!(
                        "{} dialled {} ({call_id}) and got {answered} {reason:?}; its forwarding was {was}, so {expected} \
                         was due",
                        code.extension, code.dialled
                    )
                });
                let now_is = if answered == 603 { code.after } else { code.before };
                self.forwarding.set(now, &code.extension, now_is);
            }
            // No answer from pbx (the phone's 408), or one for overload or a failed write (503,
            // 500): maybe done, maybe not.
            Some(_) => self.forwarding.counts.codes_unsure += 1,
        }
    }

    /// The caller's wait for its final answer is over (the answer came, or a BYE that
    /// overtook the 2xx): judged against the ring bound, once.
    pub(super) fn ring_ends(&mut self, now: Timestamp, call_id: &str) {
        let Some(attempt) = self.attempts.get(call_id) else { return };
        let (caller, dialled) = (attempt.caller, attempt.dialled);
        if !self.forwarding.waiting.remove(&(dialled, call_id.to_owned())) || self.disturbed(caller, dialled, now) {
            return;
        }
        let took = now - dialled;
        let counts = &mut self.forwarding.counts;
        counts.rings_judged += 1;
        counts.longest_ring = counts.longest_ring.max(took);
        let bound = self.bounds.ring + SLACK;
        self.check_with(now, RINGS, took <= bound, |c| {
            format!("final answer {:.1} s after it was dialled; {}", took.as_secs_f64(), c.ring_detail(call_id))
        });
    }

    /// Every extension a call to `dialled`, routed at some time in `[from, to]`, may ring (the
    /// dialled one's, where its forwarding leads, and that one's busy and no-answer targets);
    /// `None` when there are too many ways to tell.
    pub(super) fn parties(&self, dialled: &str, from: Timestamp, to: Timestamp) -> Option<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        let mut budget = COMBINATIONS_MAX;
        let is_extension = |n: &str| self.by_extension.contains_key(n);
        self.forwarding.explore(dialled, (from, to), &is_extension, &mut BTreeMap::new(), &mut out, &mut budget)?;
        Some(out)
    }

    /// The caller's call was answered by the phones of `answerers` (since it was dialled): one
    /// of them must be of an extension the call could ring. The one that is (or the first),
    /// for the caller's dialog.
    pub(super) fn check_right_parties(
        &mut self,
        now: Timestamp,
        call_id: &str,
        dialled: &str,
        since: Timestamp,
        answerers: &[String],
    ) -> Option<String> {
        let first = answerers.first()?.clone();
        let Some(parties) = self.parties(dialled, since, now) else { return Some(first) };
        let right = answerers.iter().find(|a| parties.contains(*a)).cloned();
        let counts = &mut self.forwarding.counts;
        counts.answers_judged += 1;
        counts.answered_elsewhere += u64::from(right.as_ref().is_some_and(|r| r != dialled));
        self.check_with(now, PARTIES, right.is_some(), |c| {
            let caller = c.attempts.get(call_id).map(|a| c.phones[a.caller].extension.clone()).unwrap_or_default();
            format!(
                "{caller}'s call {call_id} to {dialled} was answered by {}, but only {} may answer it: {}",
                answerers.join(" and "),
                parties.iter().cloned().collect::<Vec<_>>().join(", "),
                c.forwarding_of(&parties, dialled, since, now)
            )
        });
        Some(right.unwrap_or(first))
    }

    /// `phone` answered a call from `caller` (its Call-ID toward the phone: `call_id`): another
    /// callee phone already in that caller's call must be hung up within the hang-up bound.
    pub(super) fn one_callee_per_call(&mut self, now: Timestamp, phone: usize, call_id: &str, caller: &str) {
        let Some(&caller_index) = self.by_extension.get(caller) else { return };
        let Some(attempt_id) = self.phones[caller_index].dialling.clone() else { return };
        let Some(attempt) = self.attempts.get(&attempt_id) else { return };
        let since = attempt.dialled;
        let others: Vec<(usize, String)> = self
            .phones
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != phone)
            .filter_map(|(i, m)| m.dialog.as_ref().map(|d| (i, d)))
            .filter(|(_, d)| !d.caller && d.peer == caller && d.since >= since)
            .map(|(i, d)| (i, d.call_id.clone()))
            .collect();
        for first in others {
            self.forwarding.counts.twins += 1;
            self.forwarding.twins.push(Twin {
                since: now,
                deadline: now + self.bounds.hangup,
                caller: caller_index,
                call_id: attempt_id.clone(),
                first,
                second: (phone, call_id.to_owned()),
            });
        }
    }

    /// Two callee phones still in one call past the hang-up bound.
    pub(super) fn check_one_callee(&mut self, now: Timestamp) {
        let (due, pending) = std::mem::take(&mut self.forwarding.twins).into_iter().partition(|t| t.deadline <= now);
        self.forwarding.twins = pending;
        for twin in due {
            let Twin { since, deadline, caller, call_id, first, second } = twin;
            let exempt = [caller, first.0, second.0].iter().any(|&p| self.disturbed(p, since, deadline));
            let still = |(p, id): &(usize, String)| self.phones[*p].dialog.as_ref().is_some_and(|d| d.call_id == *id);
            let both = still(&first) && still(&second);
            self.check_with(now, PARTIES, exempt || !both, |c| {
                format!(
                    "{}'s call {call_id} was answered by both {} and {}, and both are still in it {} s later",
                    c.phones[caller].extension,
                    c.phones[first.0].extension,
                    c.phones[second.0].extension,
                    (deadline - since).as_secs()
                )
            });
        }
    }

    /// Calls waiting for their final answer past the ring bound, each reported once.
    pub(super) fn check_rings(&mut self, now: Timestamp) {
        let bound = self.bounds.ring + SLACK;
        while let Some((dialled, call_id)) = self.forwarding.waiting.first().cloned() {
            if dialled + bound >= now {
                break;
            }
            self.forwarding.waiting.pop_first();
            let Some(caller) = self.attempts.get(&call_id).map(|a| a.caller) else { continue };
            if self.disturbed(caller, dialled, now) {
                continue;
            }
            self.check_with(now, RINGS, false, |c| {
                let waited = (now - dialled).as_secs_f64();
                format!("no final answer {waited:.1} s after it was dialled; {}", c.ring_detail(&call_id))
            });
        }
    }

    fn ring_detail(&self, call_id: &str) -> String {
        let Some(a) = self.attempts.get(call_id) else { return String::new() };
        let (caller, callee) = (&self.phones[a.caller].extension, &a.callee);
        let bound = self.bounds.ring + SLACK;
        let parties = self.parties(callee, a.dialled, a.dialled + bound).unwrap_or_default();
        format!(
            "{caller}'s call {call_id} to {callee} may ring {} s at most (ringing {} s, slack {} s); {}",
            bound.as_secs(),
            self.bounds.ring.as_secs(),
            SLACK.as_secs(),
            self.forwarding_of(&parties, callee, a.dialled, a.dialled + bound)
        )
    }

    /// The forwarding the model holds for `dialled` and the extensions of `parties`.
    fn forwarding_of(&self, parties: &BTreeSet<String>, dialled: &str, from: Timestamp, to: Timestamp) -> String {
        let mut extensions = vec![dialled.to_owned()];
        extensions.extend(parties.iter().filter(|p| *p != dialled).cloned());
        let described: Vec<String> = extensions
            .iter()
            .map(|e| {
                let values = self.forwarding.values(e, from, to);
                format!("{e}: {}", values.iter().map(Fwd::describe).collect::<Vec<_>>().join(" or "))
            })
            .collect();
        format!("forwarding as its phones were told: {}", described.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Bounds;
    use crate::phone::PhoneEvent;

    const SECOND: Duration = Duration::from_secs(1);
    const T0: Timestamp = Timestamp::from_secs(1_000 * 86_400);
    const NO_ANSWER: Duration = Duration::from_secs(30);

    /// Phones 0–3 are 1000–1003.
    fn checker() -> Checker {
        let bounds =
            Bounds::new(NO_ANSWER, Duration::from_secs(60), Duration::from_secs(600), 3600).with_forwarding(NO_ANSWER);
        let extensions: Vec<String> = (1000..1004).map(|n| n.to_string()).collect();
        Checker::new(T0, bounds, &extensions, None)
    }

    fn violations(c: &mut Checker, invariant: &str) -> usize {
        let n = c.violations.iter().filter(|v| v.invariant == invariant).count();
        c.violations.clear();
        n
    }

    /// `phone` dials `code` at `at` and pbx answers `answer` with `reason`.
    fn code(c: &mut Checker, at: Timestamp, phone: usize, code: &str, answer: u16, reason: &str) {
        let call_id = format!("code-{phone}-{}", at.as_micros());
        c.phone_event(at, phone, &PhoneEvent::Dialing { call_id: call_id.clone(), callee: code.into() });
        let failed = PhoneEvent::CallFailed { call_id, code: answer, reason: reason.into() };
        c.phone_event(at + SECOND, phone, &failed);
    }

    /// `caller` dials `callee` at `at` (Call-ID `id`); `answerer` answers a second later.
    fn answered(c: &mut Checker, at: Timestamp, id: &str, caller: usize, callee: &str, answerer: usize) {
        let extension = format!("{}", 1000 + caller);
        c.phone_event(at, caller, &PhoneEvent::Dialing { call_id: id.into(), callee: callee.into() });
        let b = format!("{id}-b{answerer}");
        let t = at + SECOND;
        c.phone_event(t, answerer, &PhoneEvent::Established { call_id: b, peer: extension, caller: false });
        c.phone_event(t, caller, &PhoneEvent::Established { call_id: id.into(), peer: callee.into(), caller: true });
    }

    #[test]
    fn codes_read_as_the_phones_dial_them() {
        let set = |k, t: &str, s| Some(Code::Set(k, t.into(), s));
        assert_eq!(read_code("*21*1002%23"), set(Kind::Always, "1002", None));
        assert_eq!(read_code("*67*1002#"), set(Kind::Busy, "1002", None));
        assert_eq!(read_code("*61*1002*15%23"), set(Kind::NoAnswer, "1002", Some(15)));
        assert_eq!(read_code("%2361%23"), Some(Code::Clear(Kind::NoAnswer)));
        assert_eq!(read_code("%23002%23"), Some(Code::ClearAll));
        assert_eq!(read_code("1002"), None);
        for unknown in ["*99%23", "*21*%23", "*21*1002*5%23", "*61*1002*x%23", "*61*1002*1000%23", "#"] {
            assert_eq!(read_code(unknown), Some(Code::Unknown), "{unknown}");
        }
    }

    /// Each answer pbx gives must be the one the model expects: 603 saying what was done, 403
    /// for a target that is no extension or the phone's own, 404 for an unknown code.
    #[test]
    fn feature_code_answers_are_held_to_the_model() {
        let mut c = checker();
        code(&mut c, T0, 0, "*21*1001%23", 603, "Forwarding on: always to 1001");
        code(&mut c, T0 + 5 * SECOND, 0, "*61*1002*7%23", 603, "Forwarding on: no answer to 1002 after 7 s");
        code(&mut c, T0 + 10 * SECOND, 0, "%2321%23", 603, "Forwarding off: always");
        code(&mut c, T0 + 15 * SECOND, 0, "*21*9999%23", 403, "Forbidden (always: 9999 is not an extension)");
        code(&mut c, T0 + 20 * SECOND, 0, "*21*1000%23", 403, "Forbidden");
        code(&mut c, T0 + 25 * SECOND, 0, "*99%23", 404, "Not Found");
        assert_eq!(violations(&mut c, CODES), 0);
        assert_eq!(c.forward_counts().codes_judged, 6);
        // Not what the code asked; a bad target taken; an unknown code answered as known.
        code(&mut c, T0 + 30 * SECOND, 1, "*67*1002%23", 603, "Forwarding on: always to 1002");
        code(&mut c, T0 + 35 * SECOND, 1, "*21*9999%23", 603, "Forwarding on: always to 9999");
        code(&mut c, T0 + 40 * SECOND, 1, "*98%23", 603, "Forwarding off: all");
        assert_eq!(violations(&mut c, CODES), 3);
        // `#` as is: a code like any other (README), not a malformed request.
        code(&mut c, T0 + 42 * SECOND, 3, "*21*1001#", 400, "Malformed Request-URI");
        assert_eq!(violations(&mut c, CODES), 1);
        // A code lost with the node is maybe done: both stay possible, nothing is judged.
        code(&mut c, T0 + 45 * SECOND, 2, "*21*1003%23", 408, "");
        assert_eq!(violations(&mut c, CODES), 0);
        assert_eq!(c.forwarding.latest("1002").len(), 2);
    }

    /// A call to an extension that forwards always is answered by its target's phone (through
    /// a loop, by the last before it closes) — not by the dialled extension's.
    #[test]
    fn a_call_is_answered_where_its_forwarding_leads() {
        let mut c = checker();
        code(&mut c, T0, 1, "*21*1002%23", 603, "Forwarding on: always to 1002");
        answered(&mut c, T0 + 10 * SECOND, "a", 0, "1001", 2);
        assert_eq!(violations(&mut c, PARTIES), 0);
        assert_eq!(c.forward_counts().answered_elsewhere, 1);
        answered(&mut c, T0 + 20 * SECOND, "b", 0, "1001", 1);
        assert_eq!(violations(&mut c, PARTIES), 1, "1001 forwards always: its phone does not ring");
        // A loop 1001 → 1002 → 1001 rings 1002 for a call to 1001, 1001 for a call to 1002.
        code(&mut c, T0 + 30 * SECOND, 2, "*21*1001%23", 603, "Forwarding on: always to 1001");
        answered(&mut c, T0 + 40 * SECOND, "c", 0, "1001", 2);
        answered(&mut c, T0 + 50 * SECOND, "d", 0, "1002", 1);
        assert_eq!(violations(&mut c, PARTIES), 0);
        answered(&mut c, T0 + 60 * SECOND, "e", 0, "1002", 2);
        assert_eq!(violations(&mut c, PARTIES), 1);
        // 1001 busy to 1003: 1002 (whose always leads to 1001) may end at 1003 too.
        code(&mut c, T0 + 70 * SECOND, 1, "*67*1003%23", 603, "Forwarding on: busy to 1003");
        answered(&mut c, T0 + 80 * SECOND, "f", 0, "1002", 3);
        assert_eq!(violations(&mut c, PARTIES), 0);
        // While 1003's own always-forward is uncertain (its code unanswered), either may hold.
        code(&mut c, T0 + 90 * SECOND, 3, "*21*1000%23", 408, "");
        answered(&mut c, T0 + 100 * SECOND, "g", 0, "1003", 3);
        assert_eq!(violations(&mut c, PARTIES), 0);
        answered(&mut c, T0 + 110 * SECOND, "h", 1, "1003", 0);
        assert_eq!(violations(&mut c, PARTIES), 0, "1003 → 1000 may be on");
    }

    /// The answer to a call comes within the ring bound (here 30 + 30 + 15 s), or a check
    /// after it reports the call once; a caller cut off is not judged.
    #[test]
    fn a_call_that_rings_past_the_bound_is_caught() {
        let bound = 2 * NO_ANSWER + SLACK;
        let mut c = checker();
        c.phone_event(T0, 0, &PhoneEvent::Dialing { call_id: "a".into(), callee: "1001".into() });
        let failed =
            PhoneEvent::CallFailed { call_id: "a".into(), code: 480, reason: "Temporarily Unavailable".into() };
        c.phone_event(T0 + bound, 0, &failed);
        assert_eq!(violations(&mut c, RINGS), 0);
        c.phone_event(T0, 0, &PhoneEvent::Dialing { call_id: "b".into(), callee: "1001".into() });
        c.check_phones(T0 + bound);
        assert_eq!(violations(&mut c, RINGS), 0);
        c.check_phones(T0 + bound + SECOND);
        c.check_phones(T0 + bound + 2 * SECOND);
        assert_eq!(violations(&mut c, RINGS), 1, "once");
        let failed = PhoneEvent::CallFailed { call_id: "b".into(), code: 480, reason: String::new() };
        c.phone_event(T0 + bound + 3 * SECOND, 0, &failed);
        assert_eq!(violations(&mut c, RINGS), 0, "already reported");
        c.phone_event(T0, 0, &PhoneEvent::Dialing { call_id: "c".into(), callee: "1001".into() });
        let failed = PhoneEvent::CallFailed { call_id: "c".into(), code: 487, reason: String::new() };
        c.phone_event(T0 + bound + SECOND, 0, &failed);
        assert_eq!(violations(&mut c, RINGS), 1, "late");
        c.phone_event(T0, 0, &PhoneEvent::Dialing { call_id: "d".into(), callee: "1001".into() });
        c.phone_partitioned(T0 + SECOND, 0, T0 + 20 * SECOND);
        c.check_phones(T0 + bound + SECOND);
        assert_eq!(violations(&mut c, RINGS), 0, "cut off: its answer may be lost");
        assert_eq!(c.forward_counts().rings_judged, 2);
    }

    /// Two callee phones that both answered one call: one must be hung up within the bound.
    #[test]
    fn two_callees_in_one_call_are_caught() {
        let mut c = checker();
        code(&mut c, T0, 1, "*61*1002*5%23", 603, "Forwarding on: no answer to 1002 after 5 s");
        c.phone_event(T0 + 10 * SECOND, 0, &PhoneEvent::Dialing { call_id: "a".into(), callee: "1001".into() });
        let t = T0 + 16 * SECOND;
        for (phone, b) in [(1, "b1"), (2, "b2")] {
            let answer = PhoneEvent::Established { call_id: b.into(), peer: "1000".into(), caller: false };
            c.phone_event(t, phone, &answer);
        }
        c.phone_event(t, 0, &PhoneEvent::Established { call_id: "a".into(), peer: "1001".into(), caller: true });
        assert_eq!(c.violations, vec![]);
        let hangup = c.bounds.hangup;
        c.check_phones(t + hangup);
        assert_eq!(violations(&mut c, PARTIES), 1, "both still in the call");
        // The same, but pbx hangs up the later one in time.
        for (phone, b) in [(1, "c1"), (2, "c2")] {
            let answer = PhoneEvent::Established { call_id: b.into(), peer: "1000".into(), caller: false };
            c.phone_event(t + hangup, phone, &answer);
        }
        let ended =
            PhoneEvent::Ended { call_id: "c2".into(), peer: "1000".into(), reason: crate::phone::EndReason::RemoteBye };
        c.phone_event(t + hangup + SECOND, 2, &ended);
        c.check_phones(t + 2 * hangup);
        assert_eq!(violations(&mut c, PARTIES), 0);
    }
}

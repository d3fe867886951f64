//! What must hold however the seed plays out, checked as the run goes and once it has healed:
//! at most one leader per term; every node applies the same sequence of writes; a write once
//! acknowledged is applied on every node in the end; and no node on a side without a majority
//! of the voters acknowledges a write.

use super::NODES;
use crate::check::Violation;
use pbx_cluster::raft::{Applier, ApplyError, Request};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Violations kept: the first ones say what went wrong, the rest would only repeat it.
const VIOLATIONS_MAX: usize = 20;

pub const ONE_LEADER: &str = "at most one leader per term";
pub const SAME_SEQUENCE: &str = "every node applies the same sequence";
pub const NOTHING_LOST: &str = "no acknowledged write is lost";
pub const MINORITY: &str = "a minority side never serves writes";
pub const CONVERGES: &str = "the cluster converges after the final heal";
pub const NODE_RUNS: &str = "a node starts and stops when told";

/// A node's application state: the payloads it applied, in log order. Like the node's own
/// database it outlives the node's crashes.
#[derive(Default)]
pub struct Recorder(Mutex<Applied>);

#[derive(Default)]
pub struct Applied {
    pub log: Vec<Vec<u8>>,
    /// Where each payload is in `log` (payloads are unique).
    positions: BTreeMap<Vec<u8>, usize>,
    /// Re-applying after a restart (or a snapshot holding more than its mark said): the next
    /// payload must be `log[i]`.
    replay: Option<usize>,
    /// Bumped by every snapshot installed, which replaces `log`.
    pub installs: u64,
    pub reapplied: u64,
    /// What this applier saw that cannot happen in a correct Raft.
    problems: Vec<String>,
}

impl Recorder {
    pub fn state(&self) -> MutexGuard<'_, Applied> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Applied {
    fn apply(&mut self, payload: &[u8]) {
        if let Some(i) = self.replay {
            self.replay = None;
            if self.log[i] == payload {
                self.reapplied += 1;
                self.replay = (i + 1 < self.log.len()).then_some(i + 1);
                return;
            }
            self.problems.push(format!(
                "re-applied {} at position {i}, where {} was applied before",
                show(payload),
                show(&self.log[i])
            ));
        }
        if let Some(&i) = self.positions.get(payload) {
            // Applied before: a suffix from here is applied again (idempotent, allowed).
            self.reapplied += 1;
            self.replay = (i + 1 < self.log.len()).then_some(i + 1);
            return;
        }
        self.positions.insert(payload.to_vec(), self.log.len());
        self.log.push(payload.to_vec());
    }

    /// Takes the problems seen since the last call.
    pub fn take_problems(&mut self) -> Vec<String> {
        std::mem::take(&mut self.problems)
    }

    pub fn contains(&self, payload: &[u8]) -> bool {
        self.positions.contains_key(payload)
    }
}

impl Applier for Recorder {
    fn apply(&self, requests: &[&Request]) -> Result<(), ApplyError> {
        let mut state = self.state();
        for request in requests {
            state.apply(&request.payload);
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, ApplyError> {
        postcard::to_allocvec(&self.state().log).map_err(ApplyError::storage)
    }

    fn install(&self, snapshot: &[u8]) -> Result<(), ApplyError> {
        let log: Vec<Vec<u8>> = postcard::from_bytes(snapshot).map_err(|e| ApplyError::undecodable("snapshot", e))?;
        let mut state = self.state();
        // What was applied was committed, so any later snapshot extends it.
        if let Some(i) = state
            .log
            .iter()
            .zip(&log)
            .position(|(a, b)| a != b)
            .or_else(|| (log.len() < state.log.len()).then_some(log.len()))
        {
            let had = state.log.get(i).map_or("nothing".into(), |p| show(p));
            let got = log.get(i).map_or("nothing".into(), |p| show(p));
            state.problems.push(format!("installed a snapshot with {got} at position {i}, where {had} was applied"));
        }
        state.positions = log.iter().enumerate().map(|(i, p)| (p.clone(), i)).collect();
        state.log = log;
        state.replay = None;
        state.installs += 1;
        Ok(())
    }
}

/// A payload as the report shows it (the clients write `w<n>`).
pub fn show(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

/// The checkers' state across the run.
#[derive(Default)]
pub struct Checker {
    pub violations: Vec<Violation>,
    pub checks: u64,
    /// Who was seen leading each term.
    pub leaders: BTreeMap<u64, usize>,
    /// The longest applied sequence seen; every node's must agree with it where both reach.
    canon: Vec<Vec<u8>>,
    /// The node that applied `canon`'s last entry.
    canon_node: usize,
    /// How far each node's sequence has been compared, and at which of its snapshot installs.
    compared: [(usize, u64); NODES],
    /// Nodes whose sequence departed from the others': reported once, then no longer compared.
    diverged: [bool; NODES],
}

impl Checker {
    pub fn violation(&mut self, at: Duration, invariant: &'static str, detail: String) {
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push(Violation { at, invariant, detail });
        }
    }

    /// `node` is leader in `term`. Returns whether that is news (first sight of this term).
    pub fn leader(&mut self, at: Duration, names: &[String], term: u64, node: usize) -> bool {
        self.checks += 1;
        match self.leaders.get(&term) {
            Some(&other) if other != node => {
                let detail = format!("{} and {} both led term {term}", names[other], names[node]);
                self.violation(at, ONE_LEADER, detail);
                false
            }
            Some(_) => false,
            None => {
                self.leaders.insert(term, node);
                true
            }
        }
    }

    /// Compares what `node` has applied since the last look with what the others applied.
    pub fn applied(&mut self, at: Duration, names: &[String], node: usize, state: &mut Applied) {
        for problem in state.take_problems() {
            self.violation(at, SAME_SEQUENCE, format!("{}: {problem}", names[node]));
        }
        if self.diverged[node] {
            return;
        }
        let (mut from, installs) = self.compared[node];
        if installs != state.installs {
            from = 0;
        }
        for (i, payload) in state.log.iter().enumerate().skip(from) {
            self.checks += 1;
            match self.canon.get(i) {
                Some(p) if p == payload => {}
                Some(p) => {
                    let detail = format!(
                        "{} applied {} at position {i}, {} applied {} there",
                        names[node],
                        show(payload),
                        names[self.canon_node],
                        show(p)
                    );
                    self.violation(at, SAME_SEQUENCE, detail);
                    self.diverged[node] = true;
                    break;
                }
                None => {
                    self.canon.push(payload.clone());
                    self.canon_node = node;
                }
            }
        }
        self.compared[node] = (state.log.len(), state.installs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(r: &Recorder, payloads: &[&str]) {
        let requests: Vec<Request> =
            payloads.iter().map(|p| Request { origin: 1, payload: p.as_bytes().to_vec() }).collect();
        r.apply(&requests.iter().collect::<Vec<_>>()).unwrap();
    }

    #[test]
    fn a_suffix_applied_again_is_allowed_anything_else_is_not() {
        let r = Recorder::default();
        apply(&r, &["a", "b", "c"]);
        apply(&r, &["b", "c", "d"]);
        assert_eq!(r.state().log.len(), 4);
        assert!(r.state().take_problems().is_empty());
        apply(&r, &["c", "x"]);
        assert_eq!(r.state().take_problems().len(), 1, "x where d was");
    }

    #[test]
    fn a_snapshot_must_extend_what_was_applied() {
        let r = Recorder::default();
        apply(&r, &["a", "b"]);
        let bytes = |log: &[&str]| {
            postcard::to_allocvec(&log.iter().map(|p| p.as_bytes().to_vec()).collect::<Vec<_>>()).unwrap()
        };
        r.install(&bytes(&["a", "b", "c"])).unwrap();
        assert!(r.state().take_problems().is_empty());
        r.install(&bytes(&["a"])).unwrap();
        assert_eq!(r.state().take_problems().len(), 1);
    }

    #[test]
    fn two_leaders_in_a_term_and_diverging_sequences_are_caught() {
        let names: Vec<String> = ["n1", "n2", "w3"].map(String::from).to_vec();
        let mut c = Checker::default();
        assert!(c.leader(Duration::ZERO, &names, 1, 0));
        assert!(!c.leader(Duration::ZERO, &names, 1, 0));
        assert!(c.leader(Duration::ZERO, &names, 2, 1));
        assert!(c.violations.is_empty());
        c.leader(Duration::ZERO, &names, 2, 2);
        assert_eq!(c.violations[0].invariant, ONE_LEADER);
        let (a, b) = (Recorder::default(), Recorder::default());
        apply(&a, &["a", "b"]);
        apply(&b, &["a", "c"]);
        c.applied(Duration::ZERO, &names, 0, &mut a.state());
        c.applied(Duration::ZERO, &names, 1, &mut b.state());
        assert_eq!(c.violations.len(), 2);
        assert!(
            c.violations[1].detail.contains("n2 applied c at position 1, n1 applied b there"),
            "{}",
            c.violations[1]
        );
    }
}

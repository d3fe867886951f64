//! The retention reaper: applies every retention rule of the inventory on the injected clock.
//!
//! Sans-IO. Every `interval` a run starts; it fixes one cut-off per rule (`run start − after`)
//! and asks the shell for batches of at most `batch` records ([`ReaperOutput::Work`]), one at a
//! time, until a batch comes back short (the rule is done) or the run's batch bound is reached
//! (the next run goes on). Then it hands out one [`AuditEntry`] for the run — each rule, its
//! cut-off and how many records it deleted or anonymised, never the records — and sleeps
//! until the next run.
//!
//! A batch changes only records older than its cut-off that the action has not yet changed
//! (a deleted record is gone, an anonymised one is marked), so batches and runs are
//! idempotent: a crash mid-run loses nothing but the run's audit entry, and the run at the
//! next start (the first run is at once) finishes the work. A record due at time `t` is
//! therefore gone by `t + interval` plus one run's length, while the node runs.

use super::{AuditEntry, AuditEvent, RuleOutcome};
use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// What a rule does to a record once it is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Delete,
    /// IP addresses truncated (IPv4 /24, IPv6 /48), numbers and user names masked.
    Anonymise,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Delete => "delete",
            Action::Anonymise => "anonymise",
        }
    }
}

/// One retention rule: records of `category` older than `after` (counted from the time the
/// category's retention names) get `action`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// An inventory id (`super::INVENTORY`).
    pub category: &'static str,
    pub action: Action,
    pub after: Duration,
}

#[derive(Clone, Debug)]
pub struct ReaperConfig {
    /// Applied in this order each run (anonymise before delete, so a record that is due for
    /// both is not anonymised after it is gone — harmless either way).
    pub rules: Vec<Rule>,
    pub interval: Duration,
    /// Records one batch changes at most: one storage transaction.
    pub batch: u32,
    /// Batches one rule gets per run at most; the rest waits for the next run.
    pub batches_per_rule_max: u32,
    /// Deliberate bugs for the simulator's self-test; none anywhere else.
    pub bugs: crate::bugs::Bugs,
}

impl ReaperConfig {
    /// The rule's period in force: its own, or twice or half of it under an injected bug.
    fn after(&self, rule: &Rule) -> Duration {
        match (self.bugs.lazy_reaper(), self.bugs.eager_reaper()) {
            (true, _) => rule.after * 2,
            (_, true) => rule.after / 2,
            _ => rule.after,
        }
    }
}

impl Default for ReaperConfig {
    fn default() -> ReaperConfig {
        ReaperConfig {
            rules: Vec::new(),
            interval: Duration::from_secs(3_600),
            batch: 500,
            batches_per_rule_max: 1_000,
            bugs: Default::default(),
        }
    }
}

/// Work for the storage: change at most `limit` records of `category` that are older than
/// `cutoff` and not yet changed by `action`; answer with how many were changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Index into the config's rules; echoed back in the answer.
    pub rule: usize,
    pub category: &'static str,
    pub action: Action,
    pub cutoff: Timestamp,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReaperInput {
    /// The time `poll_timeout` asked for has come (or passed).
    Timeout,
    /// The storage changed `records` records for the batch of `rule`.
    Done { rule: usize, records: u64 },
    /// The storage could not do the batch of `rule`; the rule stops for this run.
    Failed { rule: usize, error: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReaperOutput {
    Work(Batch),
    /// The run is over: store this (the shell also logs and counts it).
    Audit(AuditEntry),
}

/// The run under way.
#[derive(Debug)]
struct Run {
    started: Timestamp,
    /// The rule being applied (index into `config.rules`).
    rule: usize,
    /// Batches the current rule has had.
    batches: u32,
    outcomes: Vec<RuleOutcome>,
}

#[derive(Debug)]
pub struct Reaper {
    config: ReaperConfig,
    next_run: Timestamp,
    run: Option<Run>,
    outputs: VecDeque<ReaperOutput>,
    runs: u64,
}

impl Reaper {
    /// The first run is due at once: whatever fell due while the node was down goes first.
    pub fn new(config: ReaperConfig, now: Timestamp) -> Reaper {
        assert!(config.batch > 0 && config.batches_per_rule_max > 0 && !config.interval.is_zero());
        Reaper { config, next_run: now, run: None, outputs: VecDeque::new(), runs: 0 }
    }

    pub fn config(&self) -> &ReaperConfig {
        &self.config
    }

    /// Runs finished since start.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// When the next run starts; `None` while a batch is out (its answer moves things on).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.run.is_none().then_some(self.next_run)
    }

    pub fn poll_output(&mut self) -> Option<ReaperOutput> {
        self.outputs.pop_front()
    }

    pub fn handle(&mut self, now: Timestamp, input: ReaperInput) {
        match input {
            ReaperInput::Timeout => {
                if self.run.is_none() && now >= self.next_run {
                    self.run = Some(Run { started: now, rule: 0, batches: 0, outcomes: Vec::new() });
                    self.start_rule(now);
                }
            }
            ReaperInput::Done { rule, records } => {
                let (batch, batches_max) = (self.config.batch, self.config.batches_per_rule_max);
                let Some(run) = self.current(rule) else { return };
                let outcome = run.outcomes.last_mut().expect("a rule in progress has its outcome");
                outcome.records += records;
                if records >= u64::from(batch) && run.batches < batches_max {
                    self.work();
                } else {
                    self.next_rule(now);
                }
            }
            ReaperInput::Failed { rule, error } => {
                let Some(run) = self.current(rule) else { return };
                run.outcomes.last_mut().expect("a rule in progress has its outcome").error = Some(error);
                self.next_rule(now);
            }
        }
    }

    /// The run, if `rule` is the rule it is waiting for; a stray answer is ignored.
    fn current(&mut self, rule: usize) -> Option<&mut Run> {
        self.run.as_mut().filter(|run| run.rule == rule)
    }

    fn start_rule(&mut self, now: Timestamp) {
        let run = self.run.as_mut().expect("a rule starts inside a run");
        let Some(rule) = self.config.rules.get(run.rule) else {
            self.finish(now);
            return;
        };
        let cutoff = run.started - self.config.after(rule);
        run.batches = 0;
        run.outcomes.push(RuleOutcome {
            category: rule.category.to_string(),
            action: rule.action,
            cutoff,
            records: 0,
            error: None,
        });
        self.work();
    }

    fn work(&mut self) {
        let run = self.run.as_mut().expect("work happens inside a run");
        let rule = &self.config.rules[run.rule];
        run.batches += 1;
        let cutoff = run.outcomes.last().expect("the rule's outcome").cutoff;
        self.outputs.push_back(ReaperOutput::Work(Batch {
            rule: run.rule,
            category: rule.category,
            action: rule.action,
            cutoff,
            limit: self.config.batch,
        }));
    }

    fn next_rule(&mut self, now: Timestamp) {
        self.run.as_mut().expect("inside a run").rule += 1;
        self.start_rule(now);
    }

    fn finish(&mut self, now: Timestamp) {
        let run = self.run.take().expect("a run to finish");
        self.runs += 1;
        self.next_run = (run.started + self.config.interval).max(now);
        self.outputs.push_back(ReaperOutput::Audit(AuditEntry {
            at: run.started,
            event: AuditEvent::Retention { rules: run.outcomes, finished: now },
        }));
    }
}

/// The rules for the given periods, in the order a run applies them. `None` leaves a rule out.
/// The node builds its rules with this from its config, the simulator from its options.
pub fn rules(periods: &Periods) -> Vec<Rule> {
    let days = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
    vec![
        Rule { category: "registration", action: Action::Delete, after: periods.binding_grace },
        Rule { category: "security-log", action: Action::Anonymise, after: days(periods.request_log_anonymise_days) },
        Rule { category: "security-log", action: Action::Delete, after: days(periods.request_log_delete_days) },
        Rule { category: "cdr", action: Action::Delete, after: days(periods.cdr_days) },
        Rule { category: "conference-participation", action: Action::Delete, after: days(periods.cdr_days) },
        Rule { category: "push-records", action: Action::Delete, after: days(periods.push_days) },
        Rule { category: "privacy-audit", action: Action::Delete, after: days(periods.audit_days) },
    ]
}

/// The retention periods of the node's stored categories (defaults: the inventory's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Periods {
    /// A stored binding that expired this long ago is deleted (its registrar should have).
    pub binding_grace: Duration,
    pub request_log_anonymise_days: u32,
    pub request_log_delete_days: u32,
    pub cdr_days: u32,
    pub audit_days: u32,
    /// Push records (`push-records`): the seed's "stored for up to 7 days".
    pub push_days: u32,
}

impl Default for Periods {
    fn default() -> Periods {
        Periods {
            binding_grace: Duration::from_secs(60),
            request_log_anonymise_days: 14,
            request_log_delete_days: 90,
            cdr_days: 90,
            audit_days: 1_095,
            push_days: 7,
        }
    }
}

#[cfg(test)]
mod tests;

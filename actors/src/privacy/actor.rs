//! The ractor shell of the retention [`Reaper`]: feeds it the clock, runs its batches against
//! the storage off the actor, stores its audit entries, logs and counts.
//!
//! Storage is a blocking port ([`RetentionStore`]): the node implements it over redb, tests
//! over memory. Each batch runs under `spawn_blocking` and its result comes back as a message,
//! so the machine gets exactly one answer per batch and the actor never blocks.

use super::AuditEntry;
use super::reaper::{Batch, Reaper, ReaperConfig, ReaperInput, ReaperOutput};
use crate::shell::WakeTimer;
use crate::store::StoreError;
use crate::time::Clock;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;

/// Where the reaper's work happens. Blocking; called off the actor.
pub trait RetentionStore: Send + Sync + 'static {
    /// Deletes or anonymises at most `batch.limit` records of `batch.category` older than
    /// `batch.cutoff` that the action has not yet changed, in one durable transaction;
    /// returns how many it changed.
    fn reap(&self, batch: &Batch) -> Result<u64, StoreError>;
    /// Stores one audit entry durably.
    fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
}

pub struct ReaperArgs {
    pub config: ReaperConfig,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn RetentionStore>,
}

pub enum ReaperMsg {
    /// The machine's timer.
    Wake,
    /// A batch's result.
    Done {
        rule: usize,
        result: Result<u64, StoreError>,
    },
    /// Runs finished since start (for tests and status).
    Runs(RpcReplyPort<u64>),
    Control(crate::shell::Control),
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for ReaperMsg {}

pub struct ReaperState {
    machine: Reaper,
    clock: Arc<dyn Clock>,
    store: Arc<dyn RetentionStore>,
    timer: WakeTimer,
}

pub struct ReaperActor;

impl Actor for ReaperActor {
    type Msg = ReaperMsg;
    type State = ReaperState;
    type Arguments = ReaperArgs;

    async fn pre_start(&self, _me: ActorRef<ReaperMsg>, args: ReaperArgs) -> Result<ReaperState, ActorProcessingErr> {
        let now = args.clock.now();
        tracing::info!(
            rules = args.config.rules.len(),
            interval_s = args.config.interval.as_secs(),
            "retention reaper started"
        );
        Ok(ReaperState {
            machine: Reaper::new(args.config, now),
            clock: args.clock,
            store: args.store,
            timer: WakeTimer::default(),
        })
    }

    async fn post_start(&self, me: ActorRef<ReaperMsg>, s: &mut ReaperState) -> Result<(), ActorProcessingErr> {
        s.rearm(&me);
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<ReaperMsg>, s: &mut ReaperState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<ReaperMsg>,
        msg: ReaperMsg,
        s: &mut ReaperState,
    ) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        match msg {
            ReaperMsg::Wake => {
                s.timer.fired();
                s.machine.handle(now, ReaperInput::Timeout);
            }
            ReaperMsg::Done { rule, result: Ok(records) } => s.machine.handle(now, ReaperInput::Done { rule, records }),
            ReaperMsg::Done { rule, result: Err(error) } => {
                tracing::error!(%error, rule, "a retention batch failed; the next run tries again");
                metrics::counter!("pbx_privacy_reaper_failures_total").increment(1);
                s.machine.handle(now, ReaperInput::Failed { rule, error: error.to_string() });
            }
            ReaperMsg::Runs(reply) => {
                let _ = reply.send(s.machine.runs());
            }
            ReaperMsg::Control(control) => control.obey("reaper"),
        }
        s.drain(&me);
        s.rearm(&me);
        Ok(())
    }
}

impl ReaperState {
    fn drain(&mut self, me: &ActorRef<ReaperMsg>) {
        while let Some(output) = self.machine.poll_output() {
            match output {
                ReaperOutput::Work(batch) => {
                    let (store, me) = (self.store.clone(), me.clone());
                    tokio::task::spawn(async move {
                        let rule = batch.rule;
                        let result = tokio::task::spawn_blocking(move || {
                            let result = store.reap(&batch);
                            if let Ok(records) = result {
                                metrics::counter!(
                                    "pbx_privacy_reaped_records_total",
                                    "category" => batch.category,
                                    "action" => batch.action.name()
                                )
                                .increment(records);
                            }
                            result
                        })
                        .await
                        .unwrap_or_else(|e| Err(StoreError::Stopped(format!("the batch did not finish: {e}"))));
                        let _ = me.cast(ReaperMsg::Done { rule, result });
                    });
                }
                ReaperOutput::Audit(entry) => {
                    if let super::AuditEvent::Retention { rules, finished } = &entry.event {
                        let records: u64 = rules.iter().map(|r| r.records).sum();
                        let failed = rules.iter().filter(|r| r.error.is_some()).count();
                        tracing::info!(records, failed_rules = failed, at = %entry.at, %finished, "retention run finished");
                        metrics::counter!("pbx_privacy_reaper_runs_total").increment(1);
                        metrics::gauge!("pbx_privacy_reaper_last_run_timestamp_seconds").set(entry.at.as_secs() as f64);
                    }
                    let store = self.store.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(error) = store.audit(&entry) {
                            tracing::error!(%error, "could not store the retention run's audit entry");
                            metrics::counter!("pbx_privacy_audit_failures_total").increment(1);
                        }
                    });
                }
            }
        }
    }

    fn rearm(&mut self, me: &ActorRef<ReaperMsg>) {
        self.timer.arm(me, self.clock.now(), self.machine.poll_timeout(), || ReaperMsg::Wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use crate::privacy::reaper::{Action, Rule};
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    struct TokioClock(tokio::time::Instant);
    impl Clock for TokioClock {
        fn now(&self) -> Timestamp {
            Timestamp(self.0.elapsed().as_micros() as u64 + 10 * 86_400_000_000)
        }
    }

    /// Records keyed by time; deletes what the batch says; fails once when asked to.
    #[derive(Default)]
    struct MemStore {
        records: Mutex<BTreeMap<u64, ()>>,
        audits: Mutex<Vec<AuditEntry>>,
        fail_next: Mutex<bool>,
    }
    impl RetentionStore for MemStore {
        fn reap(&self, batch: &Batch) -> Result<u64, StoreError> {
            if std::mem::take(&mut *self.fail_next.lock().unwrap()) {
                return Err(StoreError::Disk("disk on fire".into()));
            }
            let mut records = self.records.lock().unwrap();
            let due: Vec<u64> =
                records.range(..batch.cutoff.as_micros()).map(|(k, _)| *k).take(batch.limit as usize).collect();
            for k in &due {
                records.remove(k);
            }
            Ok(due.len() as u64)
        }
        fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
            self.audits.lock().unwrap().push(entry.clone());
            Ok(())
        }
    }

    /// On paused tokio time: the shell runs at once, deletes in batches, audits each run,
    /// survives a failing batch, and runs again each interval.
    #[tokio::test(start_paused = true)]
    async fn the_shell_reaps_in_batches_and_audits_every_run() {
        let store = Arc::new(MemStore::default());
        let day = 86_400_000_000u64;
        // 25 records older than a day (due), 5 younger (not).
        store.records.lock().unwrap().extend((0..25).map(|i| (i, ())).chain((0..5).map(|i| (10 * day + i, ()))));
        *store.fail_next.lock().unwrap() = true;
        let config = ReaperConfig {
            rules: vec![
                Rule { category: "x", action: Action::Delete, after: Duration::from_secs(86_400) },
                Rule { category: "y", action: Action::Delete, after: Duration::from_secs(86_400) },
            ],
            interval: Duration::from_secs(60),
            batch: 10,
            batches_per_rule_max: 100,
            ..ReaperConfig::default()
        };
        let clock = Arc::new(TokioClock(tokio::time::Instant::now()));
        let (actor, handle) =
            Actor::spawn(None, ReaperActor, ReaperArgs { config, clock, store: store.clone() }).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Run 1: rule x failed, rule y deleted all 25 in three batches.
        assert_eq!(store.records.lock().unwrap().len(), 5);
        tokio::time::sleep(Duration::from_secs(61)).await;
        let runs = ractor::call!(actor, ReaperMsg::Runs).unwrap();
        assert_eq!(runs, 2);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let audits = store.audits.lock().unwrap().clone();
        assert_eq!(audits.len(), 2);
        let counts: Vec<Vec<(u64, bool)>> = audits
            .iter()
            .map(|a| match &a.event {
                crate::privacy::AuditEvent::Retention { rules, .. } => {
                    rules.iter().map(|r| (r.records, r.error.is_some())).collect()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(counts, [vec![(0, true), (25, false)], vec![(0, false), (0, false)]]);
        actor.stop(None);
        handle.await.unwrap();
    }
}

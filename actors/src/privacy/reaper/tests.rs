use super::*;
use std::collections::BTreeMap;

const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

fn config(batch: u32) -> ReaperConfig {
    ReaperConfig {
        rules: vec![
            Rule { category: "log", action: Action::Anonymise, after: 14 * DAY },
            Rule { category: "log", action: Action::Delete, after: 90 * DAY },
        ],
        interval: HOUR,
        batch,
        batches_per_rule_max: 1_000,
        ..ReaperConfig::default()
    }
}

fn work(r: &mut Reaper) -> Vec<Batch> {
    let mut out = Vec::new();
    while let Some(o) = r.poll_output() {
        if let ReaperOutput::Work(b) = o {
            out.push(b);
        }
    }
    out
}

fn audits(r: &mut Reaper) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    while let Some(o) = r.poll_output() {
        match o {
            ReaperOutput::Audit(a) => out.push(a),
            ReaperOutput::Work(b) => panic!("unexpected work {b:?}"),
        }
    }
    out
}

/// The first run starts at once, fixes each rule's cut-off at run start − after, goes rule by
/// rule, and ends with one audit entry naming every rule with its count; the next run is one
/// interval after this one started.
#[test]
fn a_run_applies_every_rule_and_leaves_one_audit_entry() {
    let t0 = Timestamp::ZERO + 100 * DAY;
    let mut r = Reaper::new(config(10), t0);
    assert_eq!(r.poll_timeout(), Some(t0));
    r.handle(t0, ReaperInput::Timeout);
    let b = work(&mut r);
    assert_eq!(b, [Batch { rule: 0, category: "log", action: Action::Anonymise, cutoff: t0 - 14 * DAY, limit: 10 }]);
    assert_eq!(r.poll_timeout(), None, "no timer while a batch is out");
    let t1 = t0 + Duration::from_secs(1);
    r.handle(t1, ReaperInput::Done { rule: 0, records: 3 });
    let b = work(&mut r);
    assert_eq!(b, [Batch { rule: 1, category: "log", action: Action::Delete, cutoff: t0 - 90 * DAY, limit: 10 }]);
    r.handle(t1, ReaperInput::Done { rule: 1, records: 0 });
    let a = audits(&mut r);
    assert_eq!(a.len(), 1);
    let AuditEvent::Retention { rules, finished } = &a[0].event else { panic!("{a:?}") };
    assert_eq!((a[0].at, *finished), (t0, t1));
    assert_eq!(
        rules.iter().map(|o| (o.action, o.cutoff, o.records, o.error.clone())).collect::<Vec<_>>(),
        [(Action::Anonymise, t0 - 14 * DAY, 3, None), (Action::Delete, t0 - 90 * DAY, 0, None)]
    );
    assert_eq!((r.poll_timeout(), r.runs()), (Some(t0 + HOUR), 1));
    r.handle(t0 + HOUR - Duration::from_secs(1), ReaperInput::Timeout);
    assert!(r.poll_output().is_none(), "a timeout before the run is due does nothing");
}

/// A full batch asks for another with the same cut-off; a short one ends the rule. The batch
/// bound per rule stops a rule that keeps finding work, and the next run goes on.
#[test]
fn full_batches_repeat_up_to_the_bound() {
    let t0 = Timestamp::ZERO + 100 * DAY;
    let mut c = config(10);
    c.batches_per_rule_max = 3;
    let mut r = Reaper::new(c, t0);
    r.handle(t0, ReaperInput::Timeout);
    for _ in 0..3 {
        let b = work(&mut r);
        assert_eq!((b.len(), b[0].rule, b[0].cutoff), (1, 0, t0 - 14 * DAY));
        r.handle(t0, ReaperInput::Done { rule: 0, records: 10 });
    }
    let b = work(&mut r);
    assert_eq!(b[0].rule, 1, "three batches were the bound: on to the next rule");
    r.handle(t0, ReaperInput::Done { rule: 1, records: 10 });
    assert_eq!(work(&mut r)[0].rule, 1, "a full batch asks for another");
    r.handle(t0, ReaperInput::Done { rule: 1, records: 4 });
    let a = audits(&mut r);
    let AuditEvent::Retention { rules, .. } = &a[0].event else { panic!() };
    assert_eq!(rules.iter().map(|o| o.records).collect::<Vec<_>>(), [30, 14]);
}

/// A failing batch ends its rule for this run with the error in the audit; the other rules
/// still run, and the next run tries again. Answers for a rule not in progress are ignored.
#[test]
fn a_failure_is_audited_and_the_run_goes_on() {
    let t0 = Timestamp::ZERO + 100 * DAY;
    let mut r = Reaper::new(config(10), t0);
    r.handle(t0, ReaperInput::Timeout);
    work(&mut r);
    r.handle(t0, ReaperInput::Done { rule: 1, records: 5 });
    assert!(r.poll_output().is_none(), "a stray answer changes nothing");
    r.handle(t0, ReaperInput::Failed { rule: 0, error: "disk full".into() });
    assert_eq!(work(&mut r)[0].rule, 1);
    r.handle(t0, ReaperInput::Done { rule: 1, records: 2 });
    let a = audits(&mut r);
    let AuditEvent::Retention { rules, .. } = &a[0].event else { panic!() };
    assert_eq!(rules[0].error.as_deref(), Some("disk full"));
    assert_eq!((rules[0].records, rules[1].records), (0, 2));
    r.handle(t0 + HOUR, ReaperInput::Timeout);
    assert_eq!(work(&mut r)[0].rule, 0, "the next run starts over");
}

/// A run that lasts longer than the interval starts the next one as soon as it ends; no rules
/// still make a run (and an audit entry).
#[test]
fn late_runs_and_empty_rule_sets() {
    let t0 = Timestamp::from_secs(10);
    let mut r = Reaper::new(ReaperConfig { rules: Vec::new(), ..ReaperConfig::default() }, t0);
    r.handle(t0, ReaperInput::Timeout);
    assert_eq!(audits(&mut r).len(), 1);
    let mut r = Reaper::new(config(1), t0);
    r.handle(t0, ReaperInput::Timeout);
    work(&mut r);
    let late = t0 + 2 * HOUR;
    r.handle(late, ReaperInput::Done { rule: 0, records: 0 });
    work(&mut r);
    r.handle(late, ReaperInput::Done { rule: 1, records: 0 });
    let a = audits(&mut r);
    let AuditEvent::Retention { rules, .. } = &a[0].event else { panic!() };
    assert_eq!(rules[0].cutoff, Timestamp::ZERO, "a cut-off before the origin saturates");
    assert_eq!(r.poll_timeout(), Some(late));
}

/// A model store driven over 200 virtual days, records arriving every 10 minutes: after every
/// run, no record is older than its rule allows plus one interval, and no record inside its
/// retention was touched.
#[test]
fn over_virtual_months_records_leave_on_time_and_not_before() {
    #[derive(Clone, Copy, PartialEq, Debug)]
    struct Record {
        anonymised: bool,
    }
    let mut store: BTreeMap<u64, Record> = BTreeMap::new();
    let c = config(7);
    let mut r = Reaper::new(c.clone(), Timestamp::ZERO);
    let step = Duration::from_secs(600);
    let mut now = Timestamp::ZERO;
    let (mut changed, mut steps) = (0, 0u64);
    while now < Timestamp::ZERO + 200 * DAY {
        store.insert(now.as_micros(), Record { anonymised: false });
        if r.poll_timeout().is_some_and(|t| t <= now) {
            r.handle(now, ReaperInput::Timeout);
        }
        while let Some(out) = r.poll_output() {
            let ReaperOutput::Work(b) = out else { continue };
            let due: Vec<u64> = store
                .range(..b.cutoff.as_micros())
                .filter(|(_, rec)| b.action == Action::Delete || !rec.anonymised)
                .map(|(k, _)| *k)
                .take(b.limit as usize)
                .collect();
            for k in &due {
                match b.action {
                    Action::Delete => drop(store.remove(k)),
                    Action::Anonymise => store.get_mut(k).unwrap().anonymised = true,
                }
            }
            changed += due.len();
            r.handle(now, ReaperInput::Done { rule: b.rule, records: due.len() as u64 });
        }
        steps += 1;
        // Every 37th step (not in step with the runs): a full check is a walk over the store.
        for (k, rec) in if steps % 37 == 0 { store.iter() } else { Default::default() } {
            let age = now.saturating_since(Timestamp(*k));
            assert!(age <= 90 * DAY + c.interval, "a record {age:?} old outlived its deletion");
            assert!(rec.anonymised || age <= 14 * DAY + c.interval, "a record {age:?} old is not anonymised");
            assert!(!rec.anonymised || age >= 14 * DAY, "a record {age:?} old was anonymised early");
        }
        now = now + step;
    }
    assert!(changed > 20_000, "the reaper did work: {changed}");
    assert!(r.runs() >= 200 * 24 - 1, "{} runs", r.runs());
}

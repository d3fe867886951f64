//! Criterion benchmarks of the privacy work on a real redb file (in a temp directory):
//!
//! - `reaper/delete_cdrs_500`: one retention batch deleting 500 expired CDRs (one durable
//!   transaction), the table holding 500 more that stay.
//! - `reaper/anonymise_security_log_500`: one batch anonymising 500 security-log entries.
//! - `erase/extension_among_10000_cdrs`: erasing one extension from a file of 10,000 CDRs
//!   (100 of them its own): the whole scan, masking and the audit entry in one transaction.
//!
//! Setup (filling the file) is not measured. Runs are short: 10 samples each. See
//! docs/PERFORMANCE.md.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pbx_actors::Timestamp;
use pbx_actors::cdr::{Cdr, Disposition, MediaCounters};
use pbx_actors::privacy::reaper::{Action, Batch};
use pbx_actors::privacy::{AuditEntry, AuditEvent, Right, SecurityEntry, SecurityEvent, Subject};
use pbx_node::storage::Storage;
use std::time::Duration;

const DAY: u64 = 86_400;

fn cdr(id: u64, end_s: u64, caller: &str) -> Cdr {
    Cdr {
        id,
        call_id: format!("{id}-bench@192.0.2.1"),
        caller: caller.into(),
        callee: "0301234567".into(),
        start: Timestamp::from_secs(end_s - 120),
        answer: Some(Timestamp::from_secs(end_s - 100)),
        end: Timestamp::from_secs(end_s),
        disposition: Disposition::Answered,
        hangup: None,
        codec_caller: Some("PCMU".into()),
        codec_callee: Some("PCMU".into()),
        media: [MediaCounters { packets_in: 5_000, bytes_in: 860_000, ..MediaCounters::default() }; 2],
        follows: None,
        transfer: None,
    }
}

fn storage() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Storage::open(dir.path()).expect("open storage");
    (dir, s)
}

fn reaper(c: &mut Criterion) {
    let mut group = c.benchmark_group("reaper");
    group.bench_function("delete_cdrs_500", |b| {
        b.iter_batched(
            || {
                let (dir, s) = storage();
                let old: Vec<Cdr> = (0..500).map(|i| cdr(i, 10 * DAY + i, "100")).collect();
                let young: Vec<Cdr> = (500..1_000).map(|i| cdr(i, 200 * DAY + i, "100")).collect();
                s.put_cdrs(&old).expect("put");
                s.put_cdrs(&young).expect("put");
                (dir, s)
            },
            |(_dir, s)| {
                let batch = Batch {
                    rule: 0,
                    category: "cdr",
                    action: Action::Delete,
                    cutoff: Timestamp::from_secs(100 * DAY),
                    limit: 500,
                };
                assert_eq!(s.reap(&batch).expect("reap"), 500);
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("anonymise_security_log_500", |b| {
        b.iter_batched(
            || {
                let (dir, s) = storage();
                let entries: Vec<SecurityEntry> = (0..500u64)
                    .map(|i| {
                        SecurityEntry::new(
                            Timestamp::from_secs(DAY + i),
                            format!("203.0.113.{}", i % 250).parse().expect("ip"),
                            Some(format!("{}", 1000 + i)),
                            SecurityEvent::AuthFailed,
                        )
                    })
                    .collect();
                s.put_security_entries(&entries).expect("put");
                (dir, s)
            },
            |(_dir, s)| {
                let batch = Batch {
                    rule: 0,
                    category: "security-log",
                    action: Action::Anonymise,
                    cutoff: Timestamp::from_secs(30 * DAY),
                    limit: 500,
                };
                assert_eq!(s.reap(&batch).expect("reap"), 500);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn erase(c: &mut Criterion) {
    let mut group = c.benchmark_group("erase");
    group.bench_function("extension_among_10000_cdrs", |b| {
        b.iter_batched(
            || {
                let (dir, s) = storage();
                let records: Vec<Cdr> =
                    (0..10_000).map(|i| cdr(i, DAY + i, if i % 100 == 0 { "1001" } else { "100" })).collect();
                for chunk in records.chunks(2_000) {
                    s.put_cdrs(chunk).expect("put");
                }
                (dir, s)
            },
            |(_dir, s)| {
                let subject = Subject::Number("1001".into());
                let audit = |records| AuditEntry {
                    at: Timestamp::from_secs(2 * DAY),
                    event: AuditEvent::SubjectRequest {
                        right: Right::Erasure,
                        subject: "pseudonym".into(),
                        records,
                        outcome: "erased".into(),
                    },
                };
                assert_eq!(s.erase(&subject, None, audit).expect("erase").cdrs_masked, 100);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn short() -> Criterion {
    Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1))
}

criterion_group! { name = benches; config = short(); targets = reaper, erase }
criterion_main!(benches);

use super::*;
use crate::Timestamp;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);
const MICRO: Duration = Duration::from_micros(1);
const T0: Timestamp = Timestamp::from_secs(1_767_571_200);

fn phone(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([198, 51, 100, 7], port))
}

fn pbx() -> std::net::SocketAddr {
    "203.0.113.5:40000".parse().unwrap()
}

fn seen(user: &str, port: u16, token: Option<&str>) -> LedgerInput {
    LedgerInput::Seen {
        softphone: phone(port),
        pbx: pbx(),
        pbx_serial: "PBX-1".into(),
        user: user.into(),
        push_token: token.map(String::from),
    }
}

fn destination(user: &str, to: &str) -> LedgerInput {
    LedgerInput::Destination { pbx_serial: "PBX-1".into(), user: user.into(), destination: to.into() }
}

fn debug_on(until: Timestamp) -> LedgerInput {
    LedgerInput::DebugMode { pbx_serial: "PBX-1".into(), until: Some(until) }
}

fn ledger() -> Ledger {
    Ledger::new(LedgerConfig::default(), LedgerState::default(), T0)
}

fn outputs(l: &mut Ledger) -> Vec<LedgerOutput> {
    std::iter::from_fn(|| l.poll_output()).collect()
}

fn persists(l: &mut Ledger) -> Vec<Persist> {
    outputs(l)
        .into_iter()
        .filter_map(|o| match o {
            LedgerOutput::Persist(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// A session is due exactly 365 days after its last use: a use at day 200 moves it to day
/// 565; a run a microsecond before keeps it, a run at the instant deletes it, in memory and
/// through a delete for storage, and says so.
#[test]
fn a_session_used_again_is_kept_another_twelve_months() {
    let mut l = ledger();
    l.handle(T0, seen("1001", 5060, Some("tok")));
    let put = persists(&mut l);
    assert!(matches!(&put[..], [Persist::PutSession(r)] if r.last_use == T0 && r.push_token.as_deref() == Some("tok")));
    assert_eq!(l.poll_timeout(), Some(T0 + 365 * DAY));
    let used = T0 + 200 * DAY;
    l.handle(used, seen("1001", 5060, Some("tok")));
    assert_eq!(persists(&mut l).len(), 1, "moved by more than a minute: written");
    assert_eq!(l.poll_timeout(), Some(used + 365 * DAY));
    l.handle(T0 + 365 * DAY, LedgerInput::Tick);
    assert!(outputs(&mut l).is_empty(), "the old due time deletes nothing");
    l.handle(used + 365 * DAY - MICRO, LedgerInput::Tick);
    assert!(outputs(&mut l).is_empty());
    assert_eq!(l.counts().sessions, 1);
    l.handle(used + 365 * DAY, LedgerInput::Tick);
    let out = outputs(&mut l);
    let key = SessionKey { pbx_serial: "PBX-1".into(), user: "1001".into(), softphone: phone(5060) };
    assert_eq!(
        out,
        [
            LedgerOutput::Persist(Persist::DeleteSession(key)),
            LedgerOutput::Reaped { sessions: 1, debug_records: 0, debug_modes: 0 }
        ]
    );
    assert_eq!((l.counts(), l.poll_timeout(), l.stats().sessions_reaped), (LedgerCounts::default(), None, 1));
}

/// Writes: a new session, a changed field (push token, PBX address), and a last use more than
/// a minute after the stored one; uses within the minute stay in memory (and still count for
/// retention).
#[test]
fn uses_write_only_what_storage_needs() {
    let mut l = ledger();
    l.handle(T0, seen("1001", 5060, None));
    assert_eq!(persists(&mut l).len(), 1);
    l.handle(T0 + Duration::from_secs(30), seen("1001", 5060, None));
    l.handle(T0 + Duration::from_secs(60), seen("1001", 5060, None));
    assert!(persists(&mut l).is_empty(), "a minute exactly: not more than a minute");
    assert_eq!(l.poll_timeout(), Some(T0 + Duration::from_secs(60) + 365 * DAY), "memory has the last use");
    l.handle(T0 + Duration::from_secs(61), seen("1001", 5060, Some("new-token")));
    let p = persists(&mut l);
    assert!(matches!(&p[..], [Persist::PutSession(r)] if r.push_token.as_deref() == Some("new-token")), "{p:?}");
    l.handle(T0 + Duration::from_secs(62), seen("1001", 5060, None));
    assert_eq!(persists(&mut l).len(), 1, "the token dropped: written");
    l.handle(T0 + Duration::from_secs(63), seen("1001", 5061, None));
    assert_eq!(persists(&mut l).len(), 1, "another port is another session");
    assert_eq!((l.counts().sessions, l.stats().writes_saved), (2, 2));
}

/// A debug record made at `t` is kept at `t + 28 days − 1 µs` and deleted at `t + 28 days`.
#[test]
fn a_debug_record_is_deleted_after_four_weeks_to_the_microsecond() {
    let mut l = ledger();
    l.handle(T0, debug_on(T0 + 2 * DAY));
    let at = T0 + DAY;
    l.handle(at, destination("1001", "Anna Schmidt <201>"));
    let p = persists(&mut l);
    let [_, Persist::PutDebug { id, record }] = &p[..] else { panic!("{p:?}") };
    assert_eq!((record.destination.as_str(), record.at), ("Anna Schmidt <201>", at));
    assert_eq!(l.poll_timeout(), Some(T0 + 2 * DAY), "the mode's end is due first");
    l.handle(T0 + 2 * DAY, LedgerInput::Tick);
    assert_eq!(persists(&mut l), [Persist::DeleteDebugMode { pbx_serial: "PBX-1".into() }]);
    assert_eq!(l.poll_timeout(), Some(at + 28 * DAY));
    l.handle(at + 28 * DAY - MICRO, LedgerInput::Tick);
    assert_eq!(l.counts().debug_records, 1);
    l.handle(at + 28 * DAY, LedgerInput::Tick);
    assert_eq!(persists(&mut l), [Persist::DeleteDebug { id: *id }]);
    assert_eq!(l.counts().debug_records, 0);
}

/// Destinations are recorded only while the PBX is in debug mode: not before it is switched
/// on, not for another PBX, not from its end on (even before a run deletes the mode), not
/// after it is switched off. The default length is 28 days, a longer one is capped at 90.
#[test]
fn destinations_are_recorded_only_in_debug_mode() {
    let mut l = ledger();
    l.handle(T0, destination("1001", "201"));
    assert!(outputs(&mut l).is_empty());
    let until = l.debug_mode_end(T0, 0);
    assert_eq!(until, T0 + 28 * DAY);
    assert_eq!(l.debug_mode_end(T0, 400), T0 + 90 * DAY);
    l.handle(T0, debug_on(until));
    assert_eq!(persists(&mut l), [Persist::PutDebugMode { pbx_serial: "PBX-1".into(), until }]);
    assert_eq!(l.debug_until("PBX-1", T0), Some(until));
    l.handle(T0, LedgerInput::Destination { pbx_serial: "PBX-2".into(), user: "1".into(), destination: "2".into() });
    l.handle(until - MICRO, destination("1001", "Bob <202>"));
    assert_eq!(l.counts().debug_records, 1);
    assert_eq!(l.poll_timeout(), Some(until), "the mode's end is due first");
    l.handle(until, destination("1001", "Carol <203>"));
    assert_eq!(l.counts().debug_records, 1, "ended at `until`, before any run");
    assert_eq!(l.debug_until("PBX-1", until), None);
    l.handle(until, LedgerInput::Tick);
    let out = outputs(&mut l);
    assert!(out.contains(&LedgerOutput::Persist(Persist::DeleteDebugMode { pbx_serial: "PBX-1".into() })), "{out:?}");
    assert_eq!(l.counts().debug_modes, 0);
    // On far too long: capped. Off: nothing more recorded, and the switch is stored.
    let now = until + DAY;
    l.handle(now, debug_on(now + 1_000 * DAY));
    assert_eq!(l.debug_until("PBX-1", now), Some(now + 90 * DAY));
    outputs(&mut l);
    l.handle(now, LedgerInput::DebugMode { pbx_serial: "PBX-1".into(), until: None });
    assert_eq!(persists(&mut l), [Persist::DeleteDebugMode { pbx_serial: "PBX-1".into() }]);
    l.handle(now, destination("1001", "Dave <204>"));
    assert_eq!(l.counts().debug_records, 1);
    // An end in the past switches it off too.
    l.handle(now, debug_on(now));
    assert_eq!(l.debug_until("PBX-1", now), None);
}

/// Erasure deletes the user's sessions and the debug records naming the user as caller or as
/// destination number, of every PBX or of one; the count is answered; others stay. Export
/// shows the same records before.
#[test]
fn erasure_deletes_every_record_of_the_user() {
    let mut l = ledger();
    l.handle(T0, debug_on(T0 + DAY));
    l.handle(T0, LedgerInput::DebugMode { pbx_serial: "PBX-2".into(), until: Some(T0 + DAY) });
    l.handle(T0, seen("1001", 5060, None));
    l.handle(T0, seen("1001", 5062, None));
    l.handle(T0, seen("1002", 5064, None));
    l.handle(
        T0,
        LedgerInput::Seen {
            softphone: phone(5066),
            pbx: pbx(),
            pbx_serial: "PBX-2".into(),
            user: "1001".into(),
            push_token: None,
        },
    );
    l.handle(T0, destination("1001", "Erika <300>"));
    l.handle(T0, destination("1002", "Max Mustermann <1001>"));
    l.handle(T0, destination("1002", "Anna <201>"));
    outputs(&mut l);
    let export = l.export("1001", None);
    assert_eq!((export.sessions.len(), export.debug_records.len()), (3, 2));
    let other = l.export("1001", Some("PBX-2"));
    assert_eq!((other.sessions.len(), other.debug_records.len()), (1, 0), "only that PBX's: {other:?}");
    l.handle(T0, LedgerInput::Erase { pbx_serial: Some("PBX-2".into()), user: "1001".into() });
    let out = outputs(&mut l);
    assert_eq!(out.last(), Some(&LedgerOutput::Erased { records: 1 }), "{out:?}");
    l.handle(T0, LedgerInput::Erase { pbx_serial: None, user: "1001".into() });
    let out = outputs(&mut l);
    assert_eq!(out.last(), Some(&LedgerOutput::Erased { records: 4 }));
    let deletes = out.iter().filter(|o| matches!(o, LedgerOutput::Persist(_))).count();
    assert_eq!(deletes, 4, "each deletion goes to storage: {out:?}");
    assert_eq!(l.export("1001", None), LedgerExport::default());
    assert_eq!(l.counts(), LedgerCounts { sessions: 1, debug_records: 1, debug_modes: 2 });
    assert_eq!(l.export("1002", None).debug_records[0].destination, "Anna <201>");
}

/// State a stranger can make the proxy hold is bounded: beyond the bound the least recently
/// used session goes (a fresh use keeps one), and the oldest debug record; both are counted
/// and deleted from storage. PBXs in debug mode beyond theirs are refused.
#[test]
fn the_bounds_hold_and_drop_the_oldest() {
    let config = LedgerConfig { sessions_max: 3, debug_records_max: 2, debug_modes_max: 1, ..LedgerConfig::default() };
    let mut l = Ledger::new(config, LedgerState::default(), T0);
    for (i, port) in [5060, 5061, 5062].into_iter().enumerate() {
        l.handle(T0 + Duration::from_secs(i as u64), seen("1001", port, None));
    }
    l.handle(T0 + Duration::from_secs(10), seen("1001", 5060, None));
    outputs(&mut l);
    l.handle(T0 + Duration::from_secs(11), seen("1001", 5063, None));
    let out = outputs(&mut l);
    let gone = SessionKey { pbx_serial: "PBX-1".into(), user: "1001".into(), softphone: phone(5061) };
    assert!(out.contains(&LedgerOutput::Persist(Persist::DeleteSession(gone))), "{out:?}");
    assert!(out.contains(&LedgerOutput::Evicted { sessions: 1, debug_records: 0 }));
    let ports: Vec<u16> = l.sessions().map(|r| r.softphone.port()).collect();
    assert_eq!(ports, [5062, 5060, 5063], "least recently used first");
    l.handle(T0, debug_on(T0 + DAY));
    for n in 0..3 {
        l.handle(T0 + Duration::from_secs(20 + n), destination("1001", &format!("{n}")));
    }
    let out = outputs(&mut l);
    assert!(out.contains(&LedgerOutput::Persist(Persist::DeleteDebug { id: 1 })), "{out:?}");
    let kept: Vec<&str> = l.debug_records().map(|r| r.destination.as_str()).collect();
    assert_eq!(kept, ["1", "2"]);
    l.handle(T0, LedgerInput::DebugMode { pbx_serial: "PBX-2".into(), until: Some(T0 + DAY) });
    assert_eq!(outputs(&mut l), [LedgerOutput::Refused { reason: "too many PBXs in debug mode" }]);
    assert_eq!((l.stats().sessions_evicted, l.stats().debug_evicted, l.stats().refused), (1, 1, 1));
}

/// After a run, the next is no sooner than one interval later even if something falls due
/// before; so a record is gone at most one interval after it fell due.
#[test]
fn runs_are_an_interval_apart() {
    let mut l = ledger();
    l.handle(T0, LedgerInput::Tick);
    l.handle(T0, debug_on(T0 + Duration::from_secs(60)));
    assert_eq!(l.poll_timeout(), Some(T0 + REAPER_INTERVAL));
    l.handle(T0 + REAPER_INTERVAL, LedgerInput::Tick);
    assert_eq!((l.counts().debug_modes, l.poll_timeout()), (0, None));
}

/// Loaded state: beyond a bound the oldest go at once; what fell due while the proxy was down
/// goes at the first run, which is due at once; new debug records take ids after the loaded.
#[test]
fn loaded_state_is_bounded_and_reaped_at_once() {
    let record = |port, last_use| SessionRecord {
        softphone: phone(port),
        pbx: pbx(),
        pbx_serial: "PBX-1".into(),
        user: "1001".into(),
        push_token: None,
        last_use,
    };
    let now = T0 + 400 * DAY;
    let state = LedgerState {
        sessions: vec![record(1, T0), record(2, now - DAY), record(3, now - 2 * DAY)],
        debug_records: vec![(
            7,
            DebugRecord { pbx_serial: "PBX-1".into(), user: "1".into(), destination: "2".into(), at: now - DAY },
        )],
        debug_modes: vec![("PBX-1".into(), now + DAY)],
    };
    let config = LedgerConfig { sessions_max: 2, ..LedgerConfig::default() };
    let mut l = Ledger::new(config, state, now);
    let out = outputs(&mut l);
    assert_eq!(out.last(), Some(&LedgerOutput::Evicted { sessions: 1, debug_records: 0 }), "{out:?}");
    assert_eq!(l.poll_timeout(), Some(now + DAY), "the debug mode's end is due first");
    let state = LedgerState { sessions: vec![record(1, T0)], ..l.state() };
    let mut l = Ledger::new(LedgerConfig::default(), state, now);
    assert_eq!(l.poll_timeout(), Some(T0 + 365 * DAY), "overdue: at once");
    l.handle(now, LedgerInput::Tick);
    assert!(outputs(&mut l).contains(&LedgerOutput::Reaped { sessions: 1, debug_records: 0, debug_modes: 0 }));
    l.handle(now, destination("1", "3"));
    assert!(persists(&mut l).iter().any(|p| matches!(p, Persist::PutDebug { id: 8, .. })));
}

/// Fields that are empty or too long are refused and recorded nowhere.
#[test]
fn oversized_fields_are_refused() {
    let mut l = ledger();
    l.handle(T0, seen("", 5060, None));
    l.handle(T0, seen(&"1".repeat(USER_BYTES_MAX + 1), 5060, None));
    l.handle(T0, seen("1001", 5060, Some(&"t".repeat(PUSH_TOKEN_BYTES_MAX + 1))));
    l.handle(T0, debug_on(T0 + DAY));
    outputs(&mut l);
    l.handle(T0, destination("1001", &"x".repeat(DESTINATION_BYTES_MAX + 1)));
    assert_eq!(outputs(&mut l), [LedgerOutput::Refused { reason: "destination empty or too long" }]);
    assert_eq!((l.counts().sessions, l.counts().debug_records, l.stats().refused), (0, 0, 4));
}

/// The number of a destination as the debug record writes it.
#[test]
fn destination_numbers() {
    assert_eq!(destination_number("Anna Schmidt <201>"), "201");
    assert_eq!(destination_number("201"), "201");
    assert_eq!(destination_number("a <b> <c>"), "c");
    assert_eq!(destination_number("<>"), "");
}

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

const DAY_S: u64 = 86_400;
const T0: Timestamp = Timestamp::from_secs(1_767_571_200);

/// A clock the test sets.
struct TestClock(AtomicU64);

impl TestClock {
    fn at(t: Timestamp) -> Arc<TestClock> {
        Arc::new(TestClock(AtomicU64::new(t.as_micros())))
    }

    fn set(&self, t: Timestamp) {
        self.0.store(t.as_micros(), Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

fn seen(user: &str, token: Option<&str>) -> LedgerMsg {
    LedgerMsg::Seen(SessionSeen {
        softphone: "198.51.100.7:50123".parse().unwrap(),
        pbx: "203.0.113.5:4433".parse().unwrap(),
        pbx_serial: "PBX-1".into(),
        user: user.into(),
        push_token: token.map(String::from),
    })
}

async fn start_at(dir: &Path, clock: &Arc<TestClock>) -> (ActorRef<LedgerMsg>, tokio::task::JoinHandle<()>) {
    start_with_clock(dir, LedgerConfig::default(), clock.clone()).await.unwrap()
}

/// Stops the actor once it handled what was sent before, and waits until its writer has
/// written everything queued (a stop signal overtakes messages still in the mailbox).
async fn stop(actor: ActorRef<LedgerMsg>, handle: tokio::task::JoinHandle<()>) {
    ractor::call!(actor, LedgerMsg::Counts).unwrap();
    actor.stop(None);
    handle.await.unwrap();
}

fn stored(dir: &Path) -> LedgerState {
    LedgerStore::open(dir).unwrap().load().unwrap()
}

async fn debug_mode(actor: &ActorRef<LedgerMsg>, days: Option<u32>) -> Option<u64> {
    ractor::call!(actor, |reply| LedgerMsg::DebugMode { pbx_serial: "PBX-1".into(), days, reply: Some(reply) }).unwrap()
}

fn destination(user: &str, to: &str) -> LedgerMsg {
    LedgerMsg::Destination { pbx_serial: "PBX-1".into(), user: user.into(), destination: to.into() }
}

/// Every table of a fresh file is listed, and those with personal data are declared in the
/// inventory as stored on the proxy.
#[test]
fn every_table_is_listed_and_personal_ones_declared() {
    use redb::TableHandle;
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::open(dir.path()).unwrap();
    let read = store.db.begin_read().unwrap();
    let mut actual: Vec<String> = read.list_tables().unwrap().map(|t| t.name().to_string()).collect();
    actual.sort();
    let mut listed: Vec<String> = TABLES.iter().map(|(t, _)| t.to_string()).collect();
    listed.sort();
    assert_eq!(actual, listed);
    for (table, category) in TABLES {
        if let Some(id) = category {
            let declared = pbx_actors::privacy::category(id).expect("declared category");
            assert!(declared.stored_in.contains(&format!("proxy:{table}").as_str()), "{table} not in {id}");
        }
    }
}

/// What the ledger wrote is in the file after a restart: the session with every seed field,
/// the debug record, the debug mode. And a copy of the file taken while the store is still
/// open, as a kill -9 leaves it, loads every committed record.
#[tokio::test]
async fn committed_records_survive_a_restart_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(T0);
    let (actor, handle) = start_at(dir.path(), &clock).await;
    actor.cast(seen("1001", Some("fcm-token"))).unwrap();
    assert_eq!(debug_mode(&actor, Some(0)).await, Some(T0.as_secs() + 28 * DAY_S));
    actor.cast(destination("1001", "Anna Schmidt <201>")).unwrap();
    let counts = ractor::call!(actor, LedgerMsg::Counts).unwrap();
    assert_eq!(counts, LedgerCounts { sessions: 1, debug_records: 1, debug_modes: 1 });
    stop(actor, handle).await;
    let state = stored(dir.path());
    let [session] = &state.sessions[..] else { panic!("{state:?}") };
    assert_eq!(
        (session.user.as_str(), session.pbx_serial.as_str(), session.push_token.as_deref(), session.last_use),
        ("1001", "PBX-1", Some("fcm-token"), T0)
    );
    assert_eq!((session.softphone.port(), session.pbx.port()), (50123, 4433));
    assert_eq!(state.debug_records[0].1.destination, "Anna Schmidt <201>");
    assert_eq!(state.debug_modes, [("PBX-1".to_string(), T0 + Duration::from_secs(28 * DAY_S))]);

    // The crash: the store stays open (never closed cleanly) while its file is copied.
    let store = LedgerStore::open(dir.path()).unwrap();
    let record = SessionRecord { user: "1002".into(), ..session.clone() };
    store.apply(&[Persist::PutSession(record), Persist::DeleteDebug { id: state.debug_records[0].0 }]).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join(DB_FILE), crashed.path().join(DB_FILE)).unwrap();
    let state = stored(crashed.path());
    let mut users: Vec<&str> = state.sessions.iter().map(|s| s.user.as_str()).collect();
    users.sort();
    assert_eq!((users, state.debug_records.len()), (vec!["1001", "1002"], 0));
    drop(store);
}

/// The running reaper deletes from the file, not only from memory: a session stored at T0 is
/// still in the file after a restart a day later, and gone from it once the ledger woke at
/// T0 + 365 days.
#[tokio::test]
async fn the_reaper_deletes_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(T0);
    let (actor, handle) = start_at(dir.path(), &clock).await;
    actor.cast(seen("1001", None)).unwrap();
    stop(actor, handle).await;
    assert_eq!(stored(dir.path()).sessions.len(), 1);

    clock.set(T0 + Duration::from_secs(DAY_S));
    let (actor, handle) = start_at(dir.path(), &clock).await;
    actor.cast(LedgerMsg::Wake).unwrap();
    assert_eq!(ractor::call!(actor, LedgerMsg::Counts).unwrap().sessions, 1, "not due yet");
    clock.set(T0 + Duration::from_secs(365 * DAY_S));
    actor.cast(LedgerMsg::Wake).unwrap();
    assert_eq!(ractor::call!(actor, LedgerMsg::Counts).unwrap().sessions, 0);
    stop(actor, handle).await;
    assert!(stored(dir.path()).sessions.is_empty(), "deleted from the file");
}

/// Export shows a user's session and the debug records naming them (as caller or destination)
/// with RFC 3339 times; erasure deletes them from memory and file and answers the count; other
/// users stay.
#[tokio::test]
async fn export_and_erasure_by_user() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(T0);
    let (actor, handle) = start_at(dir.path(), &clock).await;
    actor.cast(seen("1001", Some("tok-1"))).unwrap();
    actor.cast(seen("1002", None)).unwrap();
    debug_mode(&actor, Some(1)).await;
    actor.cast(destination("1001", "Erika <300>")).unwrap();
    actor.cast(destination("1002", "Max Mustermann <1001>")).unwrap();
    actor.cast(destination("1002", "Anna <201>")).unwrap();
    let export =
        ractor::call!(actor, |reply| LedgerMsg::Export { pbx_serial: None, user: "1001".into(), reply }).unwrap();
    assert_eq!(export["sessions"][0]["push_token"], "tok-1", "{export}");
    assert_eq!(export["sessions"][0]["softphone"], "198.51.100.7:50123");
    assert_eq!(export["sessions"][0]["last_use"], "2026-01-05T00:00:00.000Z");
    assert_eq!(export["debug_records"].as_array().map(Vec::len), Some(2), "{export}");
    let erased =
        ractor::call!(actor, |reply| LedgerMsg::Erase { pbx_serial: None, user: "1001".into(), reply }).unwrap();
    assert_eq!(erased, 3);
    let export =
        ractor::call!(actor, |reply| LedgerMsg::Export { pbx_serial: None, user: "1001".into(), reply }).unwrap();
    assert_eq!(export, serde_json::json!({ "sessions": [], "debug_records": [] }));
    stop(actor, handle).await;
    let state = stored(dir.path());
    assert_eq!(state.sessions.iter().map(|s| s.user.as_str()).collect::<Vec<_>>(), ["1002"]);
    let destinations: Vec<&str> = state.debug_records.iter().map(|(_, r)| r.destination.as_str()).collect();
    assert_eq!(destinations, ["Anna <201>"]);
}

/// Debug mode: the default length, a given one, the cap at 90 days, off; a destination after
/// it is switched off, or after its end, is not recorded.
#[tokio::test]
async fn debug_mode_switches_and_ends_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(T0);
    let (actor, handle) = start_at(dir.path(), &clock).await;
    let t0 = T0.as_secs();
    assert_eq!(debug_mode(&actor, Some(3)).await, Some(t0 + 3 * DAY_S));
    assert_eq!(debug_mode(&actor, Some(1_000)).await, Some(t0 + 90 * DAY_S));
    assert_eq!(debug_mode(&actor, None).await, None);
    actor.cast(destination("1001", "201")).unwrap();
    assert_eq!(debug_mode(&actor, Some(0)).await, Some(t0 + 28 * DAY_S));
    clock.set(T0 + Duration::from_secs(28 * DAY_S));
    actor.cast(destination("1001", "202")).unwrap();
    actor.cast(LedgerMsg::Wake).unwrap();
    let counts = ractor::call!(actor, LedgerMsg::Counts).unwrap();
    assert_eq!((counts.debug_records, counts.debug_modes), (0, 0));
    stop(actor, handle).await;
    assert!(stored(dir.path()).debug_modes.is_empty());
}

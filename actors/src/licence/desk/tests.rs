use super::*;

const DAY_S: u64 = 86_400;
/// 2026-01-05T00:00:00Z, a virtual "now".
const T0: Timestamp = Timestamp::from_secs(1_767_571_200);

fn at(offset_s: u64) -> Timestamp {
    Timestamp::from_secs(T0.as_secs() + offset_s)
}

fn ip() -> IpAddr {
    "192.0.2.77".parse().unwrap()
}

fn key() -> SigningKey {
    SigningKey::from_seed(&[3; 32])
}

fn grant() -> Grant {
    Grant {
        features: [Feature::Conference].into(),
        limits: Limits { extensions: 50, ..Limits::UNLICENSED },
        valid_days: 365,
    }
}

fn voucher(code: &str, feature: Feature, rooms: u32) -> Voucher {
    Voucher {
        code: code.into(),
        features: [feature].into(),
        limits: Limits { conference_rooms: rooms, extensions: 10, ..Limits::ZERO },
        redeemed: None,
    }
}

/// A desk with serial PBX-1 and vouchers V-1 (conference, 2 rooms) and V-2 (push, 3 rooms).
fn desk() -> Desk {
    let mut desk = Desk::new(key(), DeskState::default());
    desk.put_serial("PBX-1", grant()).unwrap();
    desk.put_voucher(voucher("V-1", Feature::Conference, 2)).unwrap();
    desk.put_voucher(voucher("V-2", Feature::Push, 3)).unwrap();
    drain(&mut desk);
    desk
}

fn drain(desk: &mut Desk) -> Vec<DeskCommand> {
    std::iter::from_fn(|| desk.poll_output()).map(|DeskOutput::Persist(c)| c).collect()
}

/// Applies persisted commands to a state, as the shell's storage does.
fn apply(state: &mut DeskState, commands: Vec<DeskCommand>) {
    for command in commands {
        match command {
            DeskCommand::PutSerial { serial, grant } => {
                state.serials.insert(serial, grant);
            }
            DeskCommand::PutVoucher(v) => {
                state.vouchers.insert(v.code.clone(), v);
            }
            DeskCommand::PutLog(e) => match state.log.iter_mut().find(|x| x.id == e.id) {
                Some(x) => *x = e,
                None => state.log.push_back(e),
            },
            DeskCommand::RemoveLogBefore { id } => state.log.retain(|e| e.id >= id),
        }
    }
}

/// A check issues the serial's grant, signed, issued now and valid for valid_days.
#[test]
fn a_check_issues_a_signed_licence() {
    let mut desk = desk();
    let envelope = desk.check(at(5), ip(), "PBX-1").unwrap();
    let licence = envelope.open_licence(&key().public_key(), "PBX-1").unwrap();
    assert_eq!(licence.features, grant().features);
    assert_eq!(licence.limits, grant().limits);
    assert_eq!(licence.issued_at, T0.as_secs() + 5);
    assert_eq!(licence.valid_until, T0.as_secs() + 5 + 365 * DAY_S);
}

/// Unknown serials and bad syntax are refused, and logged all the same.
#[test]
fn unknown_and_malformed_serials_are_refused_and_logged() {
    let mut desk = desk();
    assert_eq!(desk.check(T0, ip(), "PBX-9"), Err(DeskError::UnknownSerial));
    assert_eq!(desk.unlocks(T0, ip(), "PBX-9"), Err(DeskError::UnknownSerial));
    assert!(matches!(desk.check(T0, ip(), ""), Err(DeskError::Invalid(_))));
    assert!(matches!(desk.check(T0, ip(), "a b"), Err(DeskError::Invalid(_))));
    assert!(matches!(desk.check(T0, ip(), &"x".repeat(65)), Err(DeskError::Invalid(_))));
    assert!(desk.check(T0, ip(), &"x".repeat(64)).is_err_and(|e| e == DeskError::UnknownSerial));
    assert!(matches!(desk.redeem(T0, ip(), "PBX-1", "bad/code"), Err(DeskError::Invalid(_))));
    assert_eq!(desk.redeem(T0, ip(), "PBX-1", "V-404"), Err(DeskError::UnknownVoucher));
    assert_eq!(desk.redeem(T0, ip(), "PBX-9", "V-1"), Err(DeskError::UnknownSerial));
    let log = &desk.state().log;
    assert_eq!(log.len(), 9);
    assert_eq!(log[0].outcome, "unknown serial");
    assert_eq!(log[3].serial, "a?b");
    assert_eq!(log[7].code_hash, Some(desk.code_hash("V-404")));
    assert!(log.iter().all(|e| e.ip == ip() && !e.anonymised));
    assert!(log.iter().zip(0..).all(|(e, id)| e.id == id));
    // A failed redeem burns nothing.
    assert!(desk.state().vouchers.values().all(|v| v.redeemed.is_none()));
}

/// A voucher redeems once; a second redeem, even by the same serial, is refused.
#[test]
fn a_voucher_redeems_once() {
    let mut desk = desk();
    desk.put_serial("PBX-2", grant()).unwrap();
    let code = desk.redeem(at(1), ip(), "PBX-1", "V-1").unwrap();
    assert_eq!(code.len(), 16);
    assert!(code.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(desk.redeem(at(2), ip(), "PBX-1", "V-1"), Err(DeskError::AlreadyRedeemed));
    assert_eq!(desk.redeem(at(3), ip(), "PBX-2", "V-1"), Err(DeskError::AlreadyRedeemed));
    let redemption = desk.state().vouchers["V-1"].redeemed.clone().unwrap();
    assert_eq!((redemption.serial.as_str(), redemption.release_code.as_str(), redemption.at), ("PBX-1", &*code, at(1)));
    // A redeemed voucher cannot be rewritten by the admin.
    assert_eq!(desk.put_voucher(voucher("V-1", Feature::Cluster, 9)), Err(DeskError::AlreadyRedeemed));
}

/// Release codes are bound to serial and code, and the same for the same key (no RNG).
#[test]
fn release_codes_are_deterministic_and_bound() {
    let mut a = desk();
    let mut b = desk();
    a.put_serial("PBX-2", grant()).unwrap();
    let one = a.redeem(T0, ip(), "PBX-1", "V-1").unwrap();
    assert_eq!(b.redeem(at(9), ip(), "PBX-1", "V-1").unwrap(), one);
    assert_ne!(a.redeem(T0, ip(), "PBX-1", "V-2").unwrap(), one);
    assert_ne!(b.redeem(T0, ip(), "PBX-2", "V-2").unwrap_or_default(), one);
}

/// Unlocks join the features and sum the limits of every voucher the serial redeemed, only its.
#[test]
fn unlocks_sum_the_redeemed_vouchers() {
    let mut desk = desk();
    desk.put_serial("PBX-2", grant()).unwrap();
    desk.put_voucher(voucher("V-3", Feature::Cluster, 100)).unwrap();
    let public = key().public_key();
    let empty = desk.unlocks(T0, ip(), "PBX-1").unwrap().open_unlocks(&public, "PBX-1").unwrap();
    assert_eq!((empty.limits, empty.features.len(), empty.release_codes.len()), (Limits::ZERO, 0, 0));
    let c1 = desk.redeem(at(1), ip(), "PBX-1", "V-2").unwrap();
    let c2 = desk.redeem(at(2), ip(), "PBX-1", "V-1").unwrap();
    desk.redeem(at(3), ip(), "PBX-2", "V-3").unwrap();
    let unlocks = desk.unlocks(at(4), ip(), "PBX-1").unwrap().open_unlocks(&public, "PBX-1").unwrap();
    assert_eq!(unlocks.features, [Feature::Conference, Feature::Push].into());
    assert_eq!(unlocks.limits, Limits { conference_rooms: 5, extensions: 20, ..Limits::ZERO });
    assert_eq!(unlocks.release_codes, vec![c1, c2]);
    assert_eq!(unlocks.issued_at, T0.as_secs() + 4);
}

/// Every change comes out as a Persist, in order; replaying them rebuilds the same state.
#[test]
fn every_change_is_persisted_and_replays_to_the_same_state() {
    let mut desk = Desk::new(key(), DeskState::default());
    let mut stored = DeskState::default();
    desk.put_serial("PBX-1", grant()).unwrap();
    desk.put_voucher(voucher("V-1", Feature::Conference, 2)).unwrap();
    let commands = drain(&mut desk);
    assert!(matches!(&commands[..], [DeskCommand::PutSerial { .. }, DeskCommand::PutVoucher(_)]));
    apply(&mut stored, commands);
    desk.check(T0, ip(), "PBX-1").unwrap();
    let commands = drain(&mut desk);
    assert!(matches!(&commands[..], [DeskCommand::PutLog(e)] if e.request == Request::Licence));
    apply(&mut stored, commands);
    desk.redeem(at(1), ip(), "PBX-1", "V-1").unwrap();
    let commands = drain(&mut desk);
    assert!(matches!(&commands[..], [DeskCommand::PutVoucher(v), DeskCommand::PutLog(_)] if v.redeemed.is_some()));
    apply(&mut stored, commands);
    // Refused requests persist only their log entry.
    assert!(desk.redeem(at(2), ip(), "PBX-1", "V-1").is_err());
    let commands = drain(&mut desk);
    assert!(matches!(&commands[..], [DeskCommand::PutLog(e)] if e.outcome == "voucher already redeemed"));
    apply(&mut stored, commands);
    desk.handle_timeout(at(ANONYMISE_AFTER_S + 10));
    apply(&mut stored, drain(&mut desk));
    assert_eq!(&stored, desk.state());
    // A desk built from what was stored carries on: new ids follow the old.
    let mut again = Desk::new(key(), stored);
    again.check(at(ANONYMISE_AFTER_S + 20), ip(), "PBX-1").unwrap();
    assert_eq!(again.state().log.back().unwrap().id, 3);
    assert!(drain(&mut again).len() == 1 && again.poll_output().is_none());
}

/// IPs are anonymised exactly 14 days after the request, not a microsecond earlier.
#[test]
fn anonymisation_happens_at_fourteen_days() {
    let mut desk = desk();
    let v6: IpAddr = "2001:db8:1234:5678::9".parse().unwrap();
    assert_eq!(desk.poll_timeout(), None);
    desk.check(at(0), ip(), "PBX-1").unwrap();
    desk.check(at(60), v6, "PBX-9").unwrap_err();
    drain(&mut desk);
    let due = at(ANONYMISE_AFTER_S);
    assert_eq!(desk.poll_timeout(), Some(due));
    desk.handle_timeout(Timestamp(due.0 - 1));
    assert!(drain(&mut desk).is_empty());
    assert_eq!(desk.state().log[0].ip, ip());
    desk.handle_timeout(due);
    let commands = drain(&mut desk);
    assert!(matches!(&commands[..], [DeskCommand::PutLog(e)] if e.id == 0 && e.anonymised));
    assert_eq!(desk.state().log[0].ip, "192.0.2.0".parse::<IpAddr>().unwrap());
    assert_eq!(desk.state().log[1].ip, v6);
    assert_eq!(desk.poll_timeout(), Some(at(ANONYMISE_AFTER_S + 60)));
    desk.handle_timeout(at(ANONYMISE_AFTER_S + 60));
    assert_eq!(desk.state().log[1].ip, "2001:db8:1234::".parse::<IpAddr>().unwrap());
    assert_eq!(drain(&mut desk).len(), 1);
    // Both anonymised: next the deletion of the oldest, at 90 days.
    assert_eq!(desk.poll_timeout(), Some(at(LOG_KEEP_S)));
    desk.handle_timeout(at(LOG_KEEP_S));
    assert_eq!(drain(&mut desk), vec![DeskCommand::RemoveLogBefore { id: 1 }]);
    assert_eq!(desk.state().log.len(), 1);
    desk.handle_timeout(at(LOG_KEEP_S + 60));
    assert_eq!(drain(&mut desk), vec![DeskCommand::RemoveLogBefore { id: 2 }]);
    assert_eq!(desk.poll_timeout(), None);
}

/// Mapped IPv4 addresses are logged as IPv4, and anonymise to their /24.
#[test]
fn mapped_addresses_are_logged_as_ipv4() {
    let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
    assert_eq!(anonymise(mapped), "198.51.100.0".parse::<IpAddr>().unwrap());
    let mut desk = desk();
    desk.check(T0, mapped, "PBX-1").unwrap();
    assert_eq!(desk.state().log[0].ip, "198.51.100.7".parse::<IpAddr>().unwrap());
}

/// A clock stepping back does not reorder the log or delay anonymisation past its due time.
#[test]
fn time_never_goes_backwards_in_the_log() {
    let mut desk = desk();
    desk.check(at(100), ip(), "PBX-1").unwrap();
    desk.check(at(50), ip(), "PBX-1").unwrap();
    let log = &desk.state().log;
    assert_eq!((log[0].at, log[1].at), (at(100), at(100)));
    let licence = desk.check(at(10), ip(), "PBX-1").unwrap().open_licence(&key().public_key(), "PBX-1").unwrap();
    assert_eq!(licence.issued_at, T0.as_secs() + 100);
}

/// The log never holds more than LOG_ENTRIES_MAX entries: the oldest go first.
#[test]
fn the_log_is_bounded() {
    let mut desk = desk();
    for i in 0..LOG_ENTRIES_MAX as u64 + 2 {
        let _ = desk.check(at(i / 1000), ip(), "PBX-9");
    }
    let log = &desk.state().log;
    assert_eq!(log.len(), LOG_ENTRIES_MAX);
    assert_eq!(log.front().unwrap().id, 2);
    let removals: Vec<_> =
        drain(&mut desk).into_iter().filter(|c| matches!(c, DeskCommand::RemoveLogBefore { .. })).collect();
    assert_eq!(removals, vec![DeskCommand::RemoveLogBefore { id: 1 }, DeskCommand::RemoveLogBefore { id: 2 }]);
}

/// Admin input is checked: names, validity, no pre-redeemed vouchers.
#[test]
fn admin_changes_are_validated() {
    let mut desk = desk();
    assert!(matches!(desk.put_serial("no spaces", grant()), Err(DeskError::Invalid(_))));
    assert!(matches!(desk.put_serial("PBX-3", Grant { valid_days: 0, ..grant() }), Err(DeskError::Invalid(_))));
    let mut pre = voucher("V-9", Feature::Push, 1);
    pre.redeemed = Some(Redemption { serial: "PBX-1".into(), release_code: "x".into(), at: T0 });
    assert!(matches!(desk.put_voucher(pre), Err(DeskError::Invalid(_))));
    assert!(drain(&mut desk).is_empty());
}

fn limited(by: LimitedBy, retry_after_s: u64, first: bool) -> Result<String, DeskError> {
    Err(DeskError::RateLimited { by, retry_after_s, first })
}

fn source(i: u32) -> IpAddr {
    IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + i)) // 198.51.100.0 + i
}

/// One source guessing codes: ten failures, then refused for a minute (even with the right
/// code), then one more try; another source with the right code is not held up.
#[test]
fn failures_from_one_source_are_limited() {
    let mut desk = desk();
    for i in 0..10 {
        assert_eq!(desk.redeem(at(0), ip(), "PBX-1", &format!("G-{i}")), Err(DeskError::UnknownVoucher));
    }
    assert_eq!(desk.redeem(at(0), ip(), "PBX-1", "G-10"), limited(LimitedBy::Source, 60, true));
    assert_eq!(desk.redeem(at(1), ip(), "PBX-1", "V-1"), limited(LimitedBy::Source, 59, false));
    assert!(desk.state().vouchers["V-1"].redeemed.is_none(), "a limited redeem looked at the code");
    // Another source: its own bucket, and the serial has room for 20.
    desk.redeem(at(2), source(1), "PBX-1", "V-2").unwrap();
    // A minute later one more failure fits, and no more.
    assert_eq!(desk.redeem(at(60), ip(), "PBX-1", "G-11"), Err(DeskError::UnknownVoucher));
    assert_eq!(desk.redeem(at(60), ip(), "PBX-1", "V-1"), limited(LimitedBy::Source, 60, true));
    // Once it has waited, the right code redeems.
    desk.redeem(at(120), ip(), "PBX-1", "V-1").unwrap();
    let stats = desk.redeem_stats();
    assert_eq!((stats.limited_by_source, stats.limited_by_serial), (3, 0));
}

/// A campaign against one serial spread over many sources (one guess each) meets the serial's
/// limit; other serials are not held up, and the serial recovers at the refill rate.
#[test]
fn a_campaign_over_many_sources_meets_the_serial_limit() {
    let mut desk = desk();
    desk.put_serial("PBX-2", grant()).unwrap();
    for i in 0..20 {
        assert_eq!(desk.redeem(at(0), source(i), "PBX-1", &format!("G-{i}")), Err(DeskError::UnknownVoucher));
    }
    assert_eq!(desk.redeem(at(0), source(100), "PBX-1", "G-x"), limited(LimitedBy::Serial, 300, true));
    assert_eq!(desk.redeem(at(10), source(101), "PBX-1", "V-1"), limited(LimitedBy::Serial, 290, false));
    desk.redeem(at(10), source(102), "PBX-2", "V-1").unwrap();
    // Five minutes on, one more guess fits.
    assert_eq!(desk.redeem(at(300), source(103), "PBX-1", "G-y"), Err(DeskError::UnknownVoucher));
    assert_eq!(desk.redeem(at(300), source(104), "PBX-1", "V-2"), limited(LimitedBy::Serial, 300, true));
    let stats = desk.redeem_stats();
    assert_eq!((stats.limited_by_source, stats.limited_by_serial), (0, 3));
    assert_eq!(stats.serials_tracked, 1);
}

/// Refused redeems cost no durable write and no log entry; successes charge nothing; unknown
/// serials charge only the source (the serial table holds real serials only).
#[test]
fn what_limits_charge_and_persist() {
    let mut desk = desk();
    desk.put_voucher(voucher("V-3", Feature::Push, 1)).unwrap();
    drain(&mut desk);
    for code in ["V-1", "V-2", "V-3"] {
        desk.redeem(at(0), ip(), "PBX-1", code).unwrap();
    }
    assert_eq!(desk.redeem_stats().sources_tracked, 0, "successes were charged");
    for i in 0..10 {
        assert_eq!(desk.redeem(at(0), ip(), &format!("PBX-{i}0"), "G-1"), Err(DeskError::UnknownSerial));
    }
    let stats = desk.redeem_stats();
    assert_eq!((stats.sources_tracked, stats.serials_tracked), (1, 0));
    drain(&mut desk);
    let logged = desk.state().log.len();
    for _ in 0..100 {
        assert!(matches!(desk.redeem(at(1), ip(), "PBX-1", "G-2"), Err(DeskError::RateLimited { .. })));
    }
    assert!(drain(&mut desk).is_empty(), "a refused redeem was persisted");
    assert_eq!(desk.state().log.len(), logged);
    // Checks and unlocks are not limited.
    desk.check(at(1), ip(), "PBX-1").unwrap();
    desk.unlocks(at(1), ip(), "PBX-1").unwrap();
}

/// Addresses of one IPv6 /64 share a bucket; the next /64 has its own.
#[test]
fn ipv6_sources_are_limited_per_slash_64() {
    let mut desk = desk().with_redeem_limits(RedeemLimits { source_burst: 2, ..RedeemLimits::default() });
    let v6 = |host: u16| IpAddr::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, host));
    desk.redeem(at(0), v6(1), "PBX-1", "G-1").unwrap_err();
    desk.redeem(at(0), v6(2), "PBX-1", "G-2").unwrap_err();
    assert_eq!(desk.redeem(at(0), v6(3), "PBX-1", "V-1"), limited(LimitedBy::Source, 60, true));
    let next: IpAddr = "2001:db8:0:2::1".parse().unwrap();
    desk.redeem(at(0), next, "PBX-1", "V-1").unwrap();
}

/// The request log holds a keyed hash of each code, never the code: the same under the same
/// key (so the vendor can match it), different under another key.
#[test]
fn codes_are_never_logged() {
    let mut desk = desk();
    desk.redeem(at(0), ip(), "PBX-1", "V-1").unwrap();
    desk.redeem(at(0), ip(), "PBX-9", "V-2").unwrap_err();
    desk.redeem(at(0), ip(), "PBX-1", "bad/code").unwrap_err();
    let log = &desk.state().log;
    let hashes: Vec<&str> = log.iter().filter_map(|e| e.code_hash.as_deref()).collect();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.iter().all(|h| h.len() == 17 && h.starts_with('#')), "{hashes:?}");
    assert_eq!(hashes[0], desk.code_hash("V-1"));
    assert_eq!(hashes[1], desk.code_hash("V-2"));
    let text = format!("{:?}", desk.state().log);
    assert!(!text.contains("V-1") && !text.contains("V-2") && !text.contains("bad/code"), "{text}");
    assert_eq!(Desk::new(key(), DeskState::default()).code_hash("V-1"), hashes[0]);
    assert_ne!(Desk::new(SigningKey::from_seed(&[4; 32]), DeskState::default()).code_hash("V-1"), hashes[0]);
}

/// A log stored before codes were hashed has them hashed when loaded, persisted as PutLog.
#[test]
fn codes_logged_before_hashing_are_hashed_at_load() {
    let mut desk = desk();
    desk.redeem(at(0), ip(), "PBX-1", "V-1").unwrap();
    desk.check(at(0), ip(), "PBX-1").unwrap();
    let mut state = desk.state().clone();
    state.log[0].code_hash = Some("V-1".into());
    let mut loaded = Desk::new(key(), state);
    let commands = drain(&mut loaded);
    assert!(matches!(&commands[..], [DeskCommand::PutLog(e)] if e.id == 0), "{commands:?}");
    assert_eq!(loaded.state().log[0].code_hash, Some(loaded.code_hash("V-1")));
    assert_eq!(loaded.state(), desk.state());
    // Loading again changes nothing.
    assert!(drain(&mut Desk::new(key(), loaded.state().clone())).is_empty());
}

/// A desk reloaded from storage (after a failed write) holds what was stored, and still
/// limits the source and serial that were failing.
#[test]
fn a_reload_keeps_the_limits() {
    let mut desk = desk().with_redeem_limits(RedeemLimits { source_burst: 2, ..RedeemLimits::default() });
    desk.redeem(at(0), ip(), "PBX-1", "G-1").unwrap_err();
    desk.redeem(at(0), ip(), "PBX-1", "G-2").unwrap_err();
    // The write of the second failure's log entry failed: storage holds the rest.
    let mut stored = desk.state().clone();
    stored.log.pop_back();
    drain(&mut desk);
    desk.reload(key(), stored.clone());
    assert_eq!(desk.state(), &stored);
    assert_eq!(desk.redeem(at(0), ip(), "PBX-1", "V-1"), limited(LimitedBy::Source, 60, true));
    assert_eq!(desk.redeem_stats().limited_by_source, 1);
}

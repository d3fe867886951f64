use super::*;
use crate::conference::room::RoomConfig;
use crate::media::g711::G711;

fn decl(pin: Option<&str>, max: usize) -> RoomDecl {
    RoomDecl {
        number: "800".into(),
        name: "Test".into(),
        config: RoomConfig { pin: pin.map(str::to_owned), moderator_pin: None, max_participants: max },
    }
}

fn peer(port: u16) -> PeerMedia {
    PeerMedia {
        rtp: Some(SocketAddr::new([192, 0, 2, 10].into(), port)),
        rtcp: None,
        codec: (0, G711::Mu),
        telephone_event: Some(101),
        sends: true,
    }
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn rtp(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&0x1234u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn outputs(core: &mut RoomCore) -> Vec<RoomCoreOutput> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

const SIGNALLING: [u8; 4] = [192, 0, 2, 10];

/// The first packet from the SDP's IP latches the source; then only that address is taken,
/// packets go there, and anything else is reported foreign.
#[test]
fn the_source_is_latched_and_strangers_are_foreign() {
    let mut core = RoomCore::new(decl(None, 5), MixerConfig::default(), Duration::ZERO, at(0), 7);
    core.admit(at(0), 1, "100".into(), SIGNALLING.into()).unwrap();
    core.peer(1, peer(4000));
    let natted = SocketAddr::new(SIGNALLING.into(), 4711);
    core.packet(at(5), 1, natted, &rtp(0, 1, 0, &[0xff; 160]));
    let stranger = SocketAddr::new([198, 51, 100, 1].into(), 4000);
    core.packet(at(6), 1, stranger, &rtp(0, 2, 160, &[0x00; 160]));
    core.packet(at(7), 1, SocketAddr::new(SIGNALLING.into(), 4000), &rtp(0, 3, 320, &[0x00; 160]));
    let out = outputs(&mut core);
    assert_eq!(
        out.iter().filter(|o| matches!(o, RoomCoreOutput::Foreign { .. })).count(),
        2,
        "a stranger, and the SDP's port once another one is latched: {out:?}"
    );
    core.handle_timeout(at(20));
    let sends: Vec<SocketAddr> = outputs(&mut core)
        .into_iter()
        .filter_map(|o| if let RoomCoreOutput::Send { to, .. } = o { Some(to) } else { None })
        .collect();
    assert_eq!(sends, [natted], "symmetric RTP: to where it sends from");
}

/// A participant that sends nothing for the inactivity is reported once per period; one on
/// hold (its SDP says it does not send) never is.
#[test]
fn silence_is_reported_at_the_inactivity() {
    let mut core = RoomCore::new(decl(None, 5), MixerConfig::default(), Duration::from_secs(5), at(0), 7);
    core.admit(at(0), 1, "100".into(), SIGNALLING.into()).unwrap();
    core.admit(at(0), 2, "101".into(), SIGNALLING.into()).unwrap();
    core.peer(1, peer(4000));
    core.peer(2, PeerMedia { sends: false, ..peer(4002) });
    let mut inactive = Vec::new();
    for ms in (20..=6_000).step_by(20) {
        core.handle_timeout(at(ms));
        for o in outputs(&mut core) {
            if let RoomCoreOutput::Seat { participant, event: SeatEvent::Inactive } = o {
                inactive.push((participant, ms));
            }
        }
    }
    assert_eq!(inactive, [(1, 5_000)]);
}

/// Admission: full and locked refuse with their codes; leaving gives the record with the
/// times, and a PIN caller who never got in has none for `joined`.
#[test]
fn admission_and_records() {
    let mut core = RoomCore::new(decl(Some("12"), 2), MixerConfig::default(), Duration::ZERO, at(0), 7);
    core.admit(at(0), 1, "100".into(), SIGNALLING.into()).unwrap();
    core.peer(1, peer(4000));
    for (seq, key) in [(1u16, 1u8), (2, 2), (3, 11)] {
        core.packet(
            at(100 * u64::from(seq)),
            1,
            SocketAddr::new(SIGNALLING.into(), 4000),
            &rtp(101, seq, u32::from(seq) * 800, &[key, 0x0a, 0, 160]),
        );
    }
    core.admit(at(400), 2, "101".into(), SIGNALLING.into()).unwrap();
    assert_eq!(core.admit(at(500), 3, "102".into(), SIGNALLING.into()), Err(Refused::new(486, "Conference room full")));
    assert!(core.control(at(600), Control::Lock { locked: true }));
    core.leave(at(700), 2);
    assert_eq!(core.admit(at(800), 4, "103".into(), SIGNALLING.into()), Err(Refused::new(403, "Conference locked")));
    core.leave(at(900), 1);
    let records: Vec<Participation> = outputs(&mut core)
        .into_iter()
        .filter_map(|o| if let RoomCoreOutput::Gone { record, .. } = o { Some(record) } else { None })
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!((records[0].number.as_str(), records[0].joined, records[0].left), ("101", None, at(700)));
    assert_eq!((records[1].number.as_str(), records[1].joined, records[1].left), ("100", Some(at(300)), at(900)));
    assert!(core.is_empty());
}

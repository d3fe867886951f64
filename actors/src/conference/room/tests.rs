use super::*;

fn config(pin: Option<&str>, moderator_pin: Option<&str>, max: usize) -> RoomConfig {
    RoomConfig { pin: pin.map(Into::into), moderator_pin: moderator_pin.map(Into::into), max_participants: max }
}

fn t(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

fn outputs(room: &mut Room<u32>) -> Vec<RoomOutput<u32>> {
    room.drain_outputs().collect()
}

fn keys(room: &mut Room<u32>, now: Timestamp, id: u32, typed: &str) {
    for key in typed.chars() {
        room.key(now, id, key);
    }
}

#[test]
fn without_a_pin_callers_join_at_once_and_the_room_hears_them() {
    let mut room = Room::new(config(None, None, 10));
    room.arrive(t(0), 1).unwrap();
    assert_eq!(
        outputs(&mut room),
        vec![
            RoomOutput::Join { id: 1, moderator: false, muted: false },
            RoomOutput::Play { to: 1, prompt: Prompt::Joined },
        ]
    );
    room.arrive(t(1), 2).unwrap();
    assert_eq!(
        outputs(&mut room),
        vec![
            RoomOutput::Join { id: 2, moderator: false, muted: false },
            RoomOutput::Play { to: 2, prompt: Prompt::Joined },
            RoomOutput::Play { to: 1, prompt: Prompt::SomeoneJoined },
        ]
    );
    assert!(room.leave(1));
    assert_eq!(outputs(&mut room), vec![RoomOutput::Play { to: 2, prompt: Prompt::SomeoneLeft }]);
    assert!(!room.leave(1));
    assert_eq!(room.poll_timeout(), None, "nobody waits at a PIN prompt");
}

#[test]
fn the_right_pin_joins_the_moderator_pin_joins_as_moderator() {
    let mut room = Room::new(config(Some("1234"), Some("9999"), 10));
    room.arrive(t(0), 1).unwrap();
    assert_eq!(outputs(&mut room), vec![RoomOutput::Play { to: 1, prompt: Prompt::EnterPin }]);
    keys(&mut room, t(2), 1, "12*1234#"); // `*` clears a mistyped start
    assert_eq!(outputs(&mut room)[0], RoomOutput::Join { id: 1, moderator: false, muted: false });
    room.arrive(t(3), 2).unwrap();
    keys(&mut room, t(4), 2, "9999#");
    let out = outputs(&mut room);
    assert!(out.contains(&RoomOutput::Join { id: 2, moderator: true, muted: false }));
    assert!(out.contains(&RoomOutput::Play { to: 1, prompt: Prompt::SomeoneJoined }));
    let members: Vec<_> = room.members().collect();
    assert_eq!(members[0].1, Member { joined: Some(t(2)), moderator: false, muted: false });
    assert_eq!(members[1].1, Member { joined: Some(t(4)), moderator: true, muted: false });
}

#[test]
fn three_wrong_pins_hang_up_and_count_as_an_auth_failure() {
    let mut room = Room::new(config(Some("1234"), None, 10));
    room.arrive(t(0), 1).unwrap();
    outputs(&mut room);
    keys(&mut room, t(1), 1, "1111#");
    assert_eq!(outputs(&mut room), vec![RoomOutput::Play { to: 1, prompt: Prompt::WrongPin }]);
    keys(&mut room, t(2), 1, "12345#"); // a prefix of the right one is not right either
    assert_eq!(outputs(&mut room), vec![RoomOutput::Play { to: 1, prompt: Prompt::WrongPin }]);
    keys(&mut room, t(3), 1, "123#");
    assert_eq!(
        outputs(&mut room),
        vec![RoomOutput::AuthFailure { id: 1 }, RoomOutput::Hangup { id: 1, reason: HangupReason::PinTriesExhausted }]
    );
    assert!(room.is_empty(), "the caller left the room");
    // An entry far too long is wrong, not truncated into a right one.
    room.arrive(t(4), 2).unwrap();
    keys(&mut room, t(4), 2, &format!("{}1234#", "0".repeat(40)));
    assert_eq!(outputs(&mut room).last(), Some(&RoomOutput::Play { to: 2, prompt: Prompt::WrongPin }));
    // Only a moderator PIN: an empty entry joins as a participant.
    let mut room = Room::new(config(None, Some("77"), 10));
    room.arrive(t(0), 3).unwrap();
    keys(&mut room, t(1), 3, "#");
    assert!(outputs(&mut room).contains(&RoomOutput::Join { id: 3, moderator: false, muted: false }));
}

#[test]
fn a_silent_caller_at_the_pin_prompt_is_hung_up_in_time() {
    let mut room = Room::new(config(Some("1"), None, 10));
    room.arrive(t(10), 1).unwrap();
    room.arrive(t(20), 2).unwrap();
    keys(&mut room, t(21), 2, "1#");
    assert_eq!(room.poll_timeout(), Some(t(10 + PIN_ENTRY_S)), "the joined one has no deadline");
    outputs(&mut room);
    room.handle_timeout(t(10 + PIN_ENTRY_S) - Duration::from_millis(1));
    assert!(outputs(&mut room).is_empty());
    room.handle_timeout(t(10 + PIN_ENTRY_S));
    assert_eq!(outputs(&mut room), vec![RoomOutput::Hangup { id: 1, reason: HangupReason::PinTimeout }]);
    assert_eq!(room.members().map(|(id, _)| id).collect::<Vec<_>>(), vec![2]);
    assert_eq!(room.poll_timeout(), None);
}

#[test]
fn a_full_room_refuses_486_and_counts_callers_at_the_prompt() {
    let mut room = Room::new(config(Some("1"), None, 2));
    room.arrive(t(0), 1).unwrap();
    room.arrive(t(0), 2).unwrap();
    assert_eq!(room.arrive(t(0), 3), Err(Refusal::Full));
    assert_eq!(Refusal::Full.status(), 486);
    room.leave(1);
    assert_eq!(room.arrive(t(1), 3), Ok(()));
}

#[test]
fn star_six_mutes_and_unmutes_oneself() {
    let mut room = Room::new(config(None, None, 10));
    room.arrive(t(0), 1).unwrap();
    outputs(&mut room);
    keys(&mut room, t(1), 1, "*6");
    assert_eq!(
        outputs(&mut room),
        vec![RoomOutput::SetMuted { id: 1, muted: true }, RoomOutput::Play { to: 1, prompt: Prompt::Muted }]
    );
    keys(&mut room, t(2), 1, "6*9*6"); // a 6 without `*`, an unknown command, then *6
    assert_eq!(
        outputs(&mut room),
        vec![RoomOutput::SetMuted { id: 1, muted: false }, RoomOutput::Play { to: 1, prompt: Prompt::Unmuted }]
    );
}

#[test]
fn a_moderator_locks_and_mutes_all_and_others_may_not() {
    let mut room = Room::new(config(None, Some("42"), 10));
    for id in 1..=3 {
        room.arrive(t(0), id).unwrap();
    }
    keys(&mut room, t(1), 1, "42#");
    keys(&mut room, t(1), 2, "#");
    keys(&mut room, t(1), 3, "#");
    outputs(&mut room);
    // A participant may not lock or mute all.
    keys(&mut room, t(2), 2, "*5*7");
    assert_eq!(
        outputs(&mut room),
        vec![
            RoomOutput::Play { to: 2, prompt: Prompt::NotAllowed },
            RoomOutput::Play { to: 2, prompt: Prompt::NotAllowed }
        ]
    );
    // 3 muted itself before the moderator mutes all.
    keys(&mut room, t(3), 3, "*6");
    outputs(&mut room);
    keys(&mut room, t(4), 1, "*7");
    let out = outputs(&mut room);
    assert_eq!(
        out,
        vec![RoomOutput::SetMuted { id: 2, muted: true }, RoomOutput::Play { to: 1, prompt: Prompt::Muted }]
    );
    // Someone joining while all are muted joins muted.
    room.arrive(t(5), 4).unwrap();
    keys(&mut room, t(5), 4, "#");
    assert!(outputs(&mut room).contains(&RoomOutput::Join { id: 4, moderator: false, muted: true }));
    // Unmuting all undoes what muting all did: 3 muted itself and stays muted.
    keys(&mut room, t(6), 1, "*7");
    let out = outputs(&mut room);
    assert!(out.contains(&RoomOutput::SetMuted { id: 2, muted: false }));
    assert!(out.contains(&RoomOutput::SetMuted { id: 4, muted: false }));
    assert!(!out.iter().any(|o| matches!(o, RoomOutput::SetMuted { id: 3, .. })));
    // Locking: a new caller gets 403, those in stay.
    keys(&mut room, t(7), 1, "*5");
    assert_eq!(outputs(&mut room), vec![RoomOutput::Locked(true), RoomOutput::Play { to: 1, prompt: Prompt::Locked }]);
    assert_eq!(room.arrive(t(8), 5), Err(Refusal::Locked));
    assert_eq!(Refusal::Locked.status(), 403);
    assert_eq!(room.members().count(), 4);
    keys(&mut room, t(9), 1, "*5");
    assert!(!room.is_locked());
    assert_eq!(room.arrive(t(9), 5), Ok(()));
}

#[test]
fn the_api_mutes_kicks_and_locks() {
    let mut room = Room::new(config(None, None, 10));
    room.arrive(t(0), 1).unwrap();
    room.arrive(t(0), 2).unwrap();
    outputs(&mut room);
    assert!(room.set_muted(2, true));
    assert!(!room.set_muted(9, true));
    assert_eq!(outputs(&mut room), vec![RoomOutput::SetMuted { id: 2, muted: true }]);
    assert!(room.kick(2));
    assert_eq!(
        outputs(&mut room),
        vec![
            RoomOutput::Hangup { id: 2, reason: HangupReason::Kicked },
            RoomOutput::Play { to: 1, prompt: Prompt::SomeoneLeft },
        ]
    );
    assert!(!room.kick(2));
    room.set_locked(true);
    room.set_locked(true);
    assert_eq!(outputs(&mut room), vec![RoomOutput::Locked(true)], "said once");
    // The last one leaving unlocks the room for the next meeting.
    room.leave(1);
    assert!(room.is_empty() && !room.is_locked());
}

#[test]
fn keys_from_strangers_and_unknown_keys_change_nothing() {
    let mut room = Room::new(config(Some("5"), None, 10));
    room.key(t(0), 9, '#');
    room.arrive(t(0), 1).unwrap();
    outputs(&mut room);
    for key in "ABCD".chars() {
        room.key(t(1), 1, key);
    }
    keys(&mut room, t(1), 1, "#");
    assert_eq!(
        outputs(&mut room),
        vec![RoomOutput::Play { to: 1, prompt: Prompt::WrongPin }],
        "letters are not the PIN"
    );
    assert!(
        constant_time_eq("1234", "1234") && !constant_time_eq("1234", "1235") && !constant_time_eq("1234", "12345")
    );
    assert!(!constant_time_eq("", "0"));
}

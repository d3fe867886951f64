//! The conference rooms' invariants, counted like the others.
//!
//! From the phones' side, by what they hear ([`crate::audio`]: each participant talks at a
//! tone of its own, so a listener's frame says whom it holds):
//! - **A participant never hears itself**: a frame from its room never holds its own tone.
//! - **A muted participant is not heard**: nor the tone of anyone whose `*6` muted it (at
//!   least [`SETTLE`] ago; muted, a participant may go on talking).
//! - **A lone talker reaches every participant**: while exactly one participant of a room may
//!   be heard — talking, unmuted and in the room for [`SETTLE`], everyone else silent, muted or
//!   out for as long — every other participant in the room hears it: never
//!   [`MISSED_FRAMES_MAX`] frames in a row without its tone.
//! - **No phone hears a stranger** (the attacker's invariant, for room audio): a room sends
//!   its participants office tones and its prompts, nothing with a mean ([`MEAN_MAX`]).
//! - **A vanished participant's call ends**: a phone that left without a BYE has its call
//!   ended by the room's silence timer — its CDR is stored within the RTP timeout (+ a BYE's
//!   transaction time and slack), unless the node was down since the call was dialled.
//!
//! From the node's state, when its mailboxes are empty ([`Checker::check_rooms`]):
//! - **A room empties when its last participant leaves**: no room is open with nobody in it,
//!   and none is after the drain.
//! - **No mixer outlives its room**: the registry's seats, the room core's participants and
//!   the ports it holds are the same set, every participant's call is up and holds its seat,
//!   and no call holds a seat in a room that is gone.
//!
//! The "no RTP port leaks" count (pairs leased = relays' pairs + rooms' participants) is in
//! [`Checker::check_node`].
//!
//! What a phone did reaches the checker when the phone did it; what the room does with it
//! comes a network delay (up to 200 ms for a held-back datagram), a jitter buffer (40 ms, up
//! to 256 ms for a sender whose clock runs fast) and a tick later. Each judgement therefore
//! waits [`SETTLE`] after the last change it depends on. A stay that a fault touched — its
//! phone away or cut off, the node down — is judged no more (its keys and audio may have been
//! lost), but its tone still counts as one that may be heard.

use super::{Checker, SLACK, T1_64};
use crate::audio::{ABSENT_MAX, Frame, HEARD_MIN, MEAN_MAX, TONES_HZ, ToneTable};
use crate::node::SimNode;
use crate::phone::RoomEvent;
use pbx_actors::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

/// How long after a phone's step (answered, keyed, talking, quiet, muted, gone) the room's
/// audio is sure to follow it: network delay and a held-back datagram (≤ 210 ms), the
/// jitter buffer (≤ 256 ms when the talker's clock runs ahead), a tick.
pub const SETTLE: Duration = Duration::from_millis(600);
/// Frames in a row a listener may miss the lone talker in (lost and late packets, each
/// concealed for three frames): more is no longer the network's doing.
pub const MISSED_FRAMES_MAX: u32 = 10;

/// One phone's stay in a room, as the phone told it.
#[derive(Debug)]
struct Stay {
    phone: usize,
    /// When it dialled.
    since: Timestamp,
    room: String,
    tone: u32,
    /// The room's RTP address (from its answer).
    media: Option<SocketAddr>,
    /// When its `#` went out (or the room answered, without a PIN).
    entered: Option<Timestamp>,
    /// Talking since.
    loud: Option<Timestamp>,
    /// When it last stopped talking.
    quiet: Option<Timestamp>,
    muted: bool,
    mute_changed: Option<Timestamp>,
    /// A fault touched it: not judged any more.
    disturbed: bool,
    left: Option<Timestamp>,
    /// Frames in a row without the lone talker's tone.
    missed: u32,
}

impl Stay {
    fn settled(at: Option<Timestamp>, now: Timestamp) -> bool {
        at.is_some_and(|t| t + SETTLE <= now)
    }

    /// Its `*6` muted it long enough ago for the room to know.
    fn surely_muted(&self, now: Timestamp) -> bool {
        self.muted && self.mute_changed.is_none_or(|t| t + SETTLE <= now)
    }

    /// Whether the room may be playing its tone now.
    fn may_be_heard(&self, now: Timestamp) -> bool {
        let sounding = self.loud.is_some() || self.quiet.is_some_and(|t| t + SETTLE > now);
        sounding && self.media.is_some() && !self.surely_muted(now)
    }

    /// Whether the room is surely playing its tone now, to everyone in it.
    fn surely_heard(&self, now: Timestamp) -> bool {
        let unmuted = !self.muted && self.mute_changed.is_none_or(|t| t + SETTLE <= now);
        Self::settled(self.loud, now)
            && unmuted
            && Self::settled(self.entered, now)
            && !self.disturbed
            && self.left.is_none()
    }
}

/// A participant that vanished: its call must end by `deadline`.
#[derive(Debug)]
struct Vanished {
    call_id: String,
    phone: usize,
    /// When its call was dialled: a node down since then may have lost it.
    since: Timestamp,
    deadline: Timestamp,
}

/// What the checkers know of the office's conference rooms.
#[derive(Debug, Default)]
pub(super) struct Rooms {
    numbers: BTreeSet<String>,
    /// Stays by Call-ID: current ones, and left ones for [`SETTLE`] (they may still be heard).
    stays: BTreeMap<String, Stay>,
    /// Each room's stays.
    by_room: BTreeMap<String, BTreeSet<String>>,
    /// Each phone's current stay.
    current: BTreeMap<usize, String>,
    vanished: Vec<Vanished>,
    tones: ToneTable,
    /// Frames from rooms phones received, and those judged for a lone talker.
    pub(super) frames: u64,
    pub(super) lone_talker_frames: u64,
}

impl Checker {
    /// The node's conference rooms: calls to them are answered and refused by pbx itself.
    pub fn with_rooms(mut self, numbers: impl IntoIterator<Item = String>) -> Checker {
        self.rooms.numbers = numbers.into_iter().collect();
        self
    }

    pub(super) fn is_room(&self, number: &str) -> bool {
        self.rooms.numbers.contains(number)
    }

    /// Frames phones received from rooms, and frames judged for a lone talker.
    pub fn room_frames(&self) -> (u64, u64) {
        (self.rooms.frames, self.rooms.lone_talker_frames)
    }

    /// The tones nobody in `room` talks at (nor may still be heard at): one for a phone about
    /// to dial it.
    pub fn free_tones(&mut self, now: Timestamp, room: &str) -> Vec<u32> {
        self.forget_left(now);
        let used: BTreeSet<u32> = self
            .rooms
            .by_room
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|id| self.rooms.stays.get(id).map(|s| s.tone))
            .collect();
        TONES_HZ.iter().copied().filter(|t| !used.contains(t)).collect()
    }

    /// Stays left longer than [`SETTLE`] ago are heard no more.
    pub(super) fn forget_left(&mut self, now: Timestamp) {
        let gone: Vec<String> = self
            .rooms
            .stays
            .iter()
            .filter(|(_, s)| s.left.is_some_and(|t| t + SETTLE <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(stay) = self.rooms.stays.remove(&id)
                && let Some(set) = self.rooms.by_room.get_mut(&stay.room)
            {
                set.remove(&id);
                if set.is_empty() {
                    self.rooms.by_room.remove(&stay.room);
                }
            }
        }
    }

    /// A phone's step in a room.
    pub(super) fn room_event(&mut self, now: Timestamp, phone: usize, call_id: &str, event: &RoomEvent) {
        if let RoomEvent::Dialled { room, tone_hz } = event {
            let disturbed = self.disturbed(phone, now, now);
            let stay = Stay {
                phone,
                since: now,
                room: room.clone(),
                tone: *tone_hz,
                media: None,
                entered: None,
                loud: None,
                quiet: None,
                muted: false,
                mute_changed: None,
                disturbed,
                left: None,
                missed: 0,
            };
            self.rooms.stays.insert(call_id.to_owned(), stay);
            self.rooms.by_room.entry(room.clone()).or_default().insert(call_id.to_owned());
            self.rooms.current.insert(phone, call_id.to_owned());
            return;
        }
        if let RoomEvent::Vanished = event {
            self.phones[phone].dialog = None;
            self.room_stay_ends(now, call_id);
            let since = self.rooms.stays.get(call_id).map_or(now, |s| s.since);
            let deadline = now + self.bounds.silence + T1_64 + SLACK;
            // pbx may have ended the call already (its BYE lost on the way): its CDR is stored.
            if !self.cdr_calls.values().any(|c| c == call_id) {
                self.rooms.vanished.push(Vanished { call_id: call_id.to_owned(), phone, since, deadline });
            }
            return;
        }
        let Some(stay) = self.rooms.stays.get_mut(call_id) else { return };
        match event {
            RoomEvent::Answered { media } => stay.media = Some(*media),
            RoomEvent::Entered => stay.entered = Some(now),
            RoomEvent::Loud(true) => stay.loud = Some(now),
            RoomEvent::Loud(false) => {
                stay.loud = None;
                stay.quiet = Some(now);
            }
            RoomEvent::Muted(muted) => {
                stay.muted = *muted;
                stay.mute_changed = Some(now);
            }
            RoomEvent::Dialled { .. } | RoomEvent::Vanished => {}
        }
    }

    /// A phone's stay is over (hung up, refused, vanished, gone away): it may be heard a
    /// little longer.
    pub(super) fn room_stay_ends(&mut self, now: Timestamp, call_id: &str) {
        let Some(stay) = self.rooms.stays.get_mut(call_id) else { return };
        if stay.left.is_none() {
            stay.left = Some(now);
            if stay.loud.take().is_some() {
                stay.quiet = Some(now);
            }
        }
        if self.rooms.current.get(&stay.phone).is_some_and(|c| c == call_id) {
            self.rooms.current.remove(&stay.phone);
        }
    }

    /// The phone's current stay, if any, ends with its call.
    pub(super) fn room_phone_gone(&mut self, now: Timestamp, phone: usize) {
        if let Some(call_id) = self.rooms.current.get(&phone).cloned() {
            self.room_stay_ends(now, &call_id);
        }
    }

    /// A fault touched the phone (`None`: every phone, the node went down): its stays are
    /// judged no more.
    pub(super) fn room_disturbed(&mut self, phone: Option<usize>) {
        for stay in self.rooms.stays.values_mut() {
            if phone.is_none_or(|p| p == stay.phone) {
                stay.disturbed = true;
            }
        }
    }

    /// A CDR is stored: a vanished participant's call has ended.
    pub(super) fn room_cdr(&mut self, call_id: &str) {
        self.rooms.vanished.retain(|v| v.call_id != call_id);
    }

    /// Vanished participants whose call is overdue.
    pub(super) fn check_vanished(&mut self, now: Timestamp) {
        let (due, pending): (Vec<Vanished>, Vec<Vanished>) =
            std::mem::take(&mut self.rooms.vanished).into_iter().partition(|v| v.deadline <= now);
        self.rooms.vanished = pending;
        for v in due {
            let down = self.outages.iter().any(|(crash, up)| *crash <= v.deadline && *up >= v.since);
            let extension = self.phones[v.phone].extension.clone();
            let silence = self.bounds.silence;
            self.check(now, "a vanished participant's call ends", down, || {
                format!("{extension} vanished from its room call {} and it was not over {silence:?} later", v.call_id)
            });
        }
    }

    /// A frame a room sent reached `phone`'s RTP port. Judged for strangers' audio always; and
    /// for who is (not) in it when it comes from the room of the phone's current stay (a
    /// room may also stream to a phone that vanished from it, or whose answer got lost).
    pub fn room_audio(&mut self, now: Timestamp, phone: usize, from: SocketAddr, payload: &[u8]) {
        let rooms = &self.rooms;
        let current = rooms.current.get(&phone).and_then(|id| rooms.stays.get(id).map(|s| (id, s)));
        let frame = Frame::decode(&rooms.tones, payload);
        // What the frame is judged on, worked out before anything is counted: the listener's
        // stay and tone, those in its room surely muted, and the lone talker if there is one.
        let judged = current.filter(|(_, s)| s.media == Some(from)).map(|(id, listener)| {
            let others: Vec<&Stay> = rooms
                .by_room
                .get(&listener.room)
                .into_iter()
                .flatten()
                .filter(|other| *other != id)
                .filter_map(|other| rooms.stays.get(other))
                .collect();
            let muted: Vec<(usize, u32)> = others
                .iter()
                .filter(|s| s.surely_muted(now) && !s.disturbed && s.left.is_none())
                .map(|s| (s.phone, s.tone))
                .collect();
            let in_room = listener.left.is_none() && !listener.disturbed && Stay::settled(listener.entered, now);
            let mut audible = others.iter().filter(|s| s.may_be_heard(now));
            let talker = match (audible.next(), audible.next()) {
                (Some(only), None) if in_room && only.surely_heard(now) => Some((only.phone, only.tone)),
                _ => None,
            };
            (id.clone(), listener.tone, muted, talker)
        });
        self.rooms.frames += 1;
        let mean = frame.mean();
        self.check_with(now, "no phone hears a stranger", mean.abs() <= MEAN_MAX, |c| {
            let who = &c.phones[phone].extension;
            format!("phone {who} got from its room at {from} a frame with a mean of {mean:.0}: no office audio")
        });
        let Some((call_id, tone, muted, talker)) = judged else { return };
        let room = |c: &Checker| c.rooms.stays.get(&call_id).map(|s| s.room.clone()).unwrap_or_default();
        let own = frame.amplitude(&self.rooms.tones, tone);
        self.check_with(now, "a participant never hears itself", own <= ABSENT_MAX, |c| {
            let who = &c.phones[phone].extension;
            format!("{who} heard its own tone ({tone} Hz, amplitude {own:.0}) in room {}", room(c))
        });
        for (other, hz) in muted {
            let level = frame.amplitude(&self.rooms.tones, hz);
            self.check_with(now, "a muted participant is not heard", level <= ABSENT_MAX, |c| {
                let (who, muted) = (&c.phones[phone].extension, &c.phones[other].extension);
                format!("{who} heard {muted}, muted, in room {} ({hz} Hz, amplitude {level:.0})", room(c))
            });
        }
        let stay = self.rooms.stays.get_mut(&call_id).expect("judged above");
        let Some((talker, hz)) = talker else {
            stay.missed = 0;
            return;
        };
        let level = frame.amplitude(&self.rooms.tones, hz);
        stay.missed = if level >= HEARD_MIN { 0 } else { stay.missed + 1 };
        let stay = self.rooms.stays.get_mut(&call_id).expect("judged above");
        let missed = stay.missed;
        if missed >= MISSED_FRAMES_MAX {
            stay.missed = 0;
        }
        self.rooms.lone_talker_frames += 1;
        self.check_with(now, "a lone talker reaches every participant", missed < MISSED_FRAMES_MAX, |c| {
            let (who, talker) = (&c.phones[phone].extension, &c.phones[talker].extension);
            format!("{who} missed {talker}, alone talking in room {}, {missed} frames in a row ({hz} Hz)", room(c))
        });
    }

    /// The node's rooms against its registry, its ports and its calls (mailboxes empty).
    pub(super) fn check_rooms(&mut self, now: Timestamp, node: &SimNode) {
        for room in node.rooms() {
            let number = room.number.clone();
            self.check(now, "a room empties when its last participant leaves", !room.participants.is_empty(), || {
                format!("room {number} is open with nobody in it")
            });
            let agree = room.seats.as_ref() == Some(&room.participants) && room.ported == room.participants;
            self.check(now, "no mixer outlives its room", agree, || {
                format!(
                    "room {number}: participants {:?}, registry seats {:?}, ports held for {:?}",
                    room.participants, room.seats, room.ported
                )
            });
            let orphans: Vec<&u64> = room.participants.difference(&room.seated).collect();
            self.check(now, "no mixer outlives its room", orphans.is_empty(), || {
                format!("room {number}: participants {orphans:?} have no call holding their seat")
            });
        }
        let stray = node.seats_without_room();
        self.check(now, "no mixer outlives its room", stray == 0, || {
            format!("{stray} calls hold a seat in a room that is closed")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{FRAME_SAMPLES, tone_frame};
    use crate::check::Bounds;
    use crate::phone::PhoneEvent;
    use pbx_actors::cdr::{Cdr, Disposition, HangupSide};

    const T0: Timestamp = Timestamp::from_secs(1_000 * 86_400);
    const ROOM: &str = "800";
    const SILENCE: [u8; FRAME_SAMPLES] = [0xFF; FRAME_SAMPLES];

    fn media() -> SocketAddr {
        "10.0.0.1:20000".parse().unwrap()
    }

    fn at(ms: u64) -> Timestamp {
        T0 + Duration::from_millis(ms)
    }

    /// An office of three, all in room 800 since `at(0)` (talking at 2000, 2100 and 2200 Hz),
    /// all quiet.
    fn meeting() -> Checker {
        let bounds = Bounds::new(Duration::from_secs(30), Duration::from_secs(60), Duration::from_secs(600), 3600);
        let extensions = ["1000".to_string(), "1001".into(), "1002".into()];
        let mut c = Checker::new(T0, bounds, &extensions, None).with_rooms([ROOM.to_string()]);
        for (phone, tone_hz) in [(0, 2000), (1, 2100), (2, 2200)] {
            let call_id = format!("call-{phone}");
            c.phone_event(at(0), phone, &PhoneEvent::Dialing { call_id: call_id.clone(), callee: ROOM.into() });
            for event in [
                RoomEvent::Dialled { room: ROOM.into(), tone_hz },
                RoomEvent::Answered { media: media() },
                RoomEvent::Entered,
            ] {
                c.phone_event(at(0), phone, &PhoneEvent::Room { call_id: call_id.clone(), event });
            }
        }
        c
    }

    fn event(c: &mut Checker, ms: u64, phone: usize, event: RoomEvent) {
        c.phone_event(at(ms), phone, &PhoneEvent::Room { call_id: format!("call-{phone}"), event });
    }

    fn violations(c: &mut Checker, invariant: &str) -> usize {
        let n = c.violations.iter().filter(|v| v.invariant == invariant).count();
        c.violations.clear();
        n
    }

    // Proves a frame holding the listener's own tone is caught, and one holding another's is not.
    #[test]
    fn hearing_oneself_is_caught() {
        let mut c = meeting();
        c.room_audio(at(5_000), 0, media(), &tone_frame(2100));
        assert_eq!(violations(&mut c, "a participant never hears itself"), 0);
        c.room_audio(at(5_020), 0, media(), &tone_frame(2000));
        assert_eq!(violations(&mut c, "a participant never hears itself"), 1);
        // Another room (one it vanished from): only strangers' audio is judged.
        c.room_audio(at(5_040), 0, "10.0.0.1:20002".parse().unwrap(), &tone_frame(2000));
        assert_eq!(violations(&mut c, "a participant never hears itself"), 0);
        assert_eq!(c.room_frames().0, 3);
    }

    // Proves a lone talker missing from ten frames in a row is caught, fewer are the network's,
    // and nothing is judged until the talker has been talking for the settling time.
    #[test]
    fn a_lone_talker_missed_is_caught() {
        let mut c = meeting();
        event(&mut c, 10_000, 0, RoomEvent::Loud(true));
        for i in 0..20 {
            c.room_audio(at(10_000 + 20 * i), 1, media(), &SILENCE);
        }
        assert_eq!(c.room_frames().1, 0, "not judged while it settles");
        let start = 10_000 + SETTLE.as_millis() as u64;
        for i in 0..MISSED_FRAMES_MAX as u64 - 1 {
            c.room_audio(at(start + 20 * i), 1, media(), &SILENCE);
        }
        c.room_audio(at(start + 200), 1, media(), &tone_frame(2000));
        assert_eq!(violations(&mut c, "a lone talker reaches every participant"), 0);
        for i in 0..MISSED_FRAMES_MAX as u64 {
            c.room_audio(at(start + 220 + 20 * i), 1, media(), &SILENCE);
        }
        assert_eq!(violations(&mut c, "a lone talker reaches every participant"), 1);
        // A second talker: nobody is alone, nothing is judged.
        event(&mut c, start + 500, 2, RoomEvent::Loud(true));
        let judged = c.room_frames().1;
        for i in 0..20 {
            c.room_audio(at(start + 2_000 + 20 * i), 1, media(), &SILENCE);
        }
        assert_eq!(c.room_frames().1, judged);
        // The listener talking too changes nothing: it must hear the other.
        event(&mut c, start + 3_000, 2, RoomEvent::Loud(false));
        event(&mut c, start + 3_000, 1, RoomEvent::Loud(true));
        for i in 0..20 {
            c.room_audio(at(start + 4_000 + 20 * i), 1, media(), &tone_frame(2000));
        }
        assert_eq!(c.room_frames().1, judged + 20);
        assert_eq!(violations(&mut c, "a lone talker reaches every participant"), 0);
    }

    // Proves a talker muted (long enough ago for the room to know) must not be heard.
    #[test]
    fn a_muted_talker_heard_is_caught() {
        let mut c = meeting();
        event(&mut c, 1_000, 0, RoomEvent::Loud(true));
        event(&mut c, 2_000, 0, RoomEvent::Muted(true));
        c.room_audio(at(2_100), 1, media(), &tone_frame(2000));
        assert_eq!(violations(&mut c, "a muted participant is not heard"), 0, "the room may not know yet");
        c.room_audio(at(3_000), 1, media(), &SILENCE);
        assert_eq!(violations(&mut c, "a muted participant is not heard"), 0);
        c.room_audio(at(3_020), 1, media(), &tone_frame(2000));
        assert_eq!(violations(&mut c, "a muted participant is not heard"), 1);
        assert_eq!(c.room_frames().1, 0, "muted, it is no lone talker");
    }

    // Proves room audio with a mean — a constant payload, as the attacker sends — is a stranger's.
    #[test]
    fn a_strangers_payload_from_a_room_is_caught() {
        let mut c = meeting();
        c.room_audio(at(1_000), 0, media(), &[crate::attacker::ATTACK_PAYLOAD; FRAME_SAMPLES]);
        assert_eq!(violations(&mut c, "no phone hears a stranger"), 1);
    }

    // Proves a vanished participant's call must leave its CDR within the silence bound, unless
    // the node was down since it dialled.
    #[test]
    fn a_vanished_call_that_does_not_end_is_caught() {
        let mut c = meeting();
        event(&mut c, 1_000, 0, RoomEvent::Vanished);
        let bound = Duration::from_secs(60) + T1_64 + SLACK;
        c.check_phones(at(1_000) + bound - Duration::from_secs(1));
        assert_eq!(violations(&mut c, "a vanished participant's call ends"), 0);
        c.check_phones(at(1_000) + bound);
        assert_eq!(violations(&mut c, "a vanished participant's call ends"), 1);

        let mut c = meeting();
        event(&mut c, 1_000, 1, RoomEvent::Vanished);
        let cdr = Cdr {
            id: 1,
            call_id: "call-1".into(),
            caller: "1001".into(),
            callee: ROOM.into(),
            start: at(0),
            answer: Some(at(0)),
            end: at(61_000),
            disposition: Disposition::Answered,
            hangup: Some(HangupSide::Pbx),
            codec_caller: None,
            codec_callee: None,
            media: Default::default(),
            follows: None,
            transfer: None,
        };
        c.cdr_committed(at(61_000), &cdr);
        c.check_phones(at(1_000) + bound);
        assert_eq!(violations(&mut c, "a vanished participant's call ends"), 0);

        // pbx ended the call before the phone vanished (its BYE was lost): nothing to wait for.
        let mut c = meeting();
        c.cdr_committed(at(500), &cdr);
        event(&mut c, 1_000, 1, RoomEvent::Vanished);
        c.check_phones(at(1_000) + bound);
        assert_eq!(violations(&mut c, "a vanished participant's call ends"), 0, "its CDR came first");

        let mut c = meeting();
        c.node_crashed(at(500));
        c.node_restarted(at(700));
        event(&mut c, 1_000, 0, RoomEvent::Vanished);
        c.check_phones(at(1_000) + bound);
        assert_eq!(violations(&mut c, "a vanished participant's call ends"), 0, "the crash took the call");
    }
}

//! One conference room's membership as a sans-IO machine: who is in, who is still entering a
//! PIN, who is muted, whether the room is locked, and which prompt plays to whom. The room's
//! actor feeds it callers, key presses, API requests and the clock, and carries out its
//! outputs (join the mixer, mute there, play a prompt, hang up, count an auth failure).
//!
//! The rules, where issue 16 was silent following Asterisk's ConfBridge:
//! - **Admission** happens at the INVITE: a room at its `max_participants` (counting callers
//!   still at the PIN prompt) refuses with 486 Busy Here; a locked room refuses with 403
//!   ("Conference locked"). Locking never drops anyone already in.
//! - **PIN.** With a PIN set, an admitted caller hears [`Prompt::EnterPin`] and keys the PIN
//!   followed by `#` (`*` clears what was typed). The moderator PIN, if set, admits as
//!   moderator. A wrong entry plays [`Prompt::WrongPin`]; the third hangs up and is reported as
//!   an authentication failure (the node's blocking counts it for the caller's source). A caller
//!   who keys nothing for [`PIN_ENTRY_S`] is hung up, so a silent caller does not hold a place.
//!   Entries longer than [`PIN_DIGITS_MAX`] count as wrong. Without a PIN everyone joins at once
//!   (and nobody is moderator unless the moderator PIN is set and keyed: a room with only a
//!   moderator PIN asks every caller for a PIN, and an empty entry — just `#` — joins as a
//!   participant).
//! - **Keys in the room**: `*6` mutes and unmutes oneself; a moderator's `*5` locks and
//!   unlocks, `*7` mutes every participant who is not a moderator, and unmutes them when
//!   pressed again. Others pressing `*5` or `*7` hear [`Prompt::NotAllowed`].
//! - **Prompts**: the joiner hears [`Prompt::Joined`], everyone else [`Prompt::SomeoneJoined`];
//!   a leaver's room hears [`Prompt::SomeoneLeft`].

use crate::Timestamp;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// Seconds a caller may sit at the PIN prompt without completing an entry.
pub const PIN_ENTRY_S: u64 = 30;
/// Wrong PIN entries before the caller is hung up.
pub const PIN_TRIES: u32 = 3;
/// Digits one PIN entry may hold; a longer one is wrong.
pub const PIN_DIGITS_MAX: usize = 16;

/// A room as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomConfig {
    pub pin: Option<String>,
    pub moderator_pin: Option<String>,
    pub max_participants: usize,
}

/// Why a caller was not let in (the SIP answer to its INVITE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 486 Busy Here.
    #[error("conference room full")]
    Full,
    /// 403 Forbidden.
    #[error("conference locked")]
    Locked,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Full => 486,
            Refusal::Locked => 403,
        }
    }

    /// The SIP reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "Conference room full",
            Refusal::Locked => "Conference locked",
        }
    }
}

/// The prompts a room plays (`tones` renders them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prompt {
    EnterPin,
    WrongPin,
    Joined,
    SomeoneJoined,
    SomeoneLeft,
    Muted,
    Unmuted,
    Locked,
    Unlocked,
    NotAllowed,
}

impl Prompt {
    /// Every prompt.
    pub const ALL: [Prompt; 10] = [
        Prompt::EnterPin,
        Prompt::WrongPin,
        Prompt::Joined,
        Prompt::SomeoneJoined,
        Prompt::SomeoneLeft,
        Prompt::Muted,
        Prompt::Unmuted,
        Prompt::Locked,
        Prompt::Unlocked,
        Prompt::NotAllowed,
    ];
}

/// Why the room hangs up on a participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangupReason {
    PinTriesExhausted,
    PinTimeout,
    Kicked,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomOutput<P> {
    /// Add to the mixer (muted or not).
    Join {
        id: P,
        moderator: bool,
        muted: bool,
    },
    SetMuted {
        id: P,
        muted: bool,
    },
    Play {
        to: P,
        prompt: Prompt,
    },
    /// End the participant's call; it has left the room (no `leave` needed).
    Hangup {
        id: P,
        reason: HangupReason,
    },
    /// The caller keyed a wrong PIN [`PIN_TRIES`] times: count it against its source.
    AuthFailure {
        id: P,
    },
    Locked(bool),
}

/// One participant as the API lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// `None` while still at the PIN prompt.
    pub joined: Option<Timestamp>,
    pub moderator: bool,
    pub muted: bool,
}

struct Entry {
    member: Member,
    /// Digits typed at the PIN prompt, or after `*` in the room.
    keys: String,
    tries: u32,
    /// When a PIN entry must be complete.
    deadline: Option<Timestamp>,
    /// Muted by a moderator's `*7` (undone by the next `*7`), as opposed to by itself or the API.
    muted_by_all: bool,
}

pub struct Room<P> {
    config: RoomConfig,
    entries: HashMap<P, Entry>,
    order: Vec<P>,
    locked: bool,
    all_muted: bool,
    outputs: Vec<RoomOutput<P>>,
}

impl<P: Copy + Eq + Hash> Room<P> {
    pub fn new(config: RoomConfig) -> Room<P> {
        Room {
            config,
            entries: HashMap::new(),
            order: Vec::new(),
            locked: false,
            all_muted: false,
            outputs: Vec::new(),
        }
    }

    /// Whether a new caller would be let in now (a full room says so before a locked one).
    pub fn admission(&self) -> Result<(), Refusal> {
        if self.entries.len() >= self.config.max_participants {
            return Err(Refusal::Full);
        }
        if self.locked {
            return Err(Refusal::Locked);
        }
        Ok(())
    }

    /// A caller dialled the room: admitted (and asked for a PIN, or joined), or refused.
    pub fn arrive(&mut self, now: Timestamp, id: P) -> Result<(), Refusal> {
        if self.entries.contains_key(&id) {
            return Ok(());
        }
        self.admission()?;
        let asks_pin = self.config.pin.is_some() || self.config.moderator_pin.is_some();
        let entry = Entry {
            member: Member { joined: None, moderator: false, muted: false },
            keys: String::new(),
            tries: 0,
            deadline: asks_pin.then(|| now + Duration::from_secs(PIN_ENTRY_S)),
            muted_by_all: false,
        };
        self.entries.insert(id, entry);
        self.order.push(id);
        if asks_pin {
            self.outputs.push(RoomOutput::Play { to: id, prompt: Prompt::EnterPin });
        } else {
            self.join(now, id, false);
        }
        Ok(())
    }

    /// A participant's call ended (it hung up, or its call failed).
    pub fn leave(&mut self, id: P) -> bool {
        let Some(entry) = self.entries.remove(&id) else { return false };
        self.order.retain(|p| *p != id);
        if entry.member.joined.is_some() {
            self.tell_others(id, Prompt::SomeoneLeft);
        }
        if self.entries.is_empty() {
            // An empty room forgets its lock, as ConfBridge's does when its last user leaves.
            self.locked = false;
            self.all_muted = false;
        }
        true
    }

    /// One key press from a participant.
    pub fn key(&mut self, now: Timestamp, id: P, key: char) {
        let Some(entry) = self.entries.get_mut(&id) else { return };
        if entry.member.joined.is_none() {
            self.pin_key(now, id, key);
        } else {
            self.room_key(id, key);
        }
    }

    fn pin_key(&mut self, now: Timestamp, id: P, key: char) {
        let entry = self.entries.get_mut(&id).expect("checked by the caller");
        match key {
            '*' => entry.keys.clear(),
            '#' => {
                let typed = std::mem::take(&mut entry.keys);
                let is = |pin: &Option<String>| pin.as_deref().is_some_and(|p| constant_time_eq(p, &typed));
                if is(&self.config.moderator_pin) {
                    self.join(now, id, true);
                } else if is(&self.config.pin) || (self.config.pin.is_none() && typed.is_empty()) {
                    self.join(now, id, false);
                } else {
                    entry.tries += 1;
                    if entry.tries >= PIN_TRIES {
                        self.outputs.push(RoomOutput::AuthFailure { id });
                        self.hang_up(id, HangupReason::PinTriesExhausted);
                    } else {
                        self.outputs.push(RoomOutput::Play { to: id, prompt: Prompt::WrongPin });
                    }
                }
            }
            _ => {
                // Kept up to one past the most, so an over-long entry stays wrong.
                if entry.keys.len() <= PIN_DIGITS_MAX {
                    entry.keys.push(key);
                }
            }
        }
    }

    fn room_key(&mut self, id: P, key: char) {
        let entry = self.entries.get_mut(&id).expect("checked by the caller");
        if key == '*' {
            entry.keys.clear();
            entry.keys.push('*');
            return;
        }
        if entry.keys != "*" {
            return;
        }
        entry.keys.clear();
        let moderator = entry.member.moderator;
        match key {
            '6' => {
                let muted = !entry.member.muted;
                entry.member.muted = muted;
                entry.muted_by_all = false;
                self.outputs.push(RoomOutput::SetMuted { id, muted });
                self.outputs
                    .push(RoomOutput::Play { to: id, prompt: if muted { Prompt::Muted } else { Prompt::Unmuted } });
            }
            '5' if moderator => {
                self.locked = !self.locked;
                self.outputs.push(RoomOutput::Locked(self.locked));
                let prompt = if self.locked { Prompt::Locked } else { Prompt::Unlocked };
                self.outputs.push(RoomOutput::Play { to: id, prompt });
            }
            '7' if moderator => {
                self.all_muted = !self.all_muted;
                let muting = self.all_muted;
                for other in &self.order {
                    let entry = self.entries.get_mut(other).expect("order and entries agree");
                    if entry.member.moderator || entry.member.joined.is_none() {
                        continue;
                    }
                    // Unmuting all undoes only what muting all did.
                    if muting && !entry.member.muted {
                        entry.member.muted = true;
                        entry.muted_by_all = true;
                        self.outputs.push(RoomOutput::SetMuted { id: *other, muted: true });
                    } else if !muting && entry.muted_by_all {
                        entry.member.muted = false;
                        entry.muted_by_all = false;
                        self.outputs.push(RoomOutput::SetMuted { id: *other, muted: false });
                    }
                }
                let prompt = if muting { Prompt::Muted } else { Prompt::Unmuted };
                self.outputs.push(RoomOutput::Play { to: id, prompt });
            }
            '5' | '7' => self.outputs.push(RoomOutput::Play { to: id, prompt: Prompt::NotAllowed }),
            _ => {}
        }
    }

    /// The API mutes or unmutes a participant; whether it is one (joined).
    pub fn set_muted(&mut self, id: P, muted: bool) -> bool {
        let Some(entry) = self.entries.get_mut(&id).filter(|e| e.member.joined.is_some()) else { return false };
        entry.member.muted = muted;
        entry.muted_by_all = false;
        self.outputs.push(RoomOutput::SetMuted { id, muted });
        true
    }

    /// The API removes a participant; whether it was one.
    pub fn kick(&mut self, id: P) -> bool {
        if !self.entries.contains_key(&id) {
            return false;
        }
        self.hang_up(id, HangupReason::Kicked);
        true
    }

    /// The API locks or unlocks the room.
    pub fn set_locked(&mut self, locked: bool) {
        if self.locked != locked {
            self.locked = locked;
            self.outputs.push(RoomOutput::Locked(locked));
        }
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Participants in arrival order, those at the PIN prompt included.
    pub fn members(&self) -> impl Iterator<Item = (P, Member)> + '_ {
        self.order.iter().map(|id| (*id, self.entries[id].member))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When [`Room::handle_timeout`] is next due: the earliest PIN deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.entries.values().filter_map(|e| e.deadline).min()
    }

    /// Hangs up on callers whose PIN entry ran out of time.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let late: Vec<P> =
            self.order.iter().copied().filter(|id| self.entries[id].deadline.is_some_and(|d| d <= now)).collect();
        for id in late {
            self.hang_up(id, HangupReason::PinTimeout);
        }
    }

    pub fn drain_outputs(&mut self) -> std::vec::Drain<'_, RoomOutput<P>> {
        self.outputs.drain(..)
    }

    fn join(&mut self, now: Timestamp, id: P, moderator: bool) {
        let all_muted = self.all_muted && !moderator;
        let entry = self.entries.get_mut(&id).expect("joined from an entry");
        entry.member = Member { joined: Some(now), moderator, muted: all_muted };
        entry.muted_by_all = all_muted;
        entry.deadline = None;
        entry.keys.clear();
        self.outputs.push(RoomOutput::Join { id, moderator, muted: all_muted });
        self.outputs.push(RoomOutput::Play { to: id, prompt: Prompt::Joined });
        self.tell_others(id, Prompt::SomeoneJoined);
    }

    fn hang_up(&mut self, id: P, reason: HangupReason) {
        self.outputs.push(RoomOutput::Hangup { id, reason });
        self.leave(id);
    }

    fn tell_others(&mut self, id: P, prompt: Prompt) {
        for other in &self.order {
            if *other != id && self.entries[other].member.joined.is_some() {
                self.outputs.push(RoomOutput::Play { to: *other, prompt });
            }
        }
    }
}

/// Compares a PIN without stopping at the first difference (an entry's timing says nothing of
/// how much of it was right).
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests;

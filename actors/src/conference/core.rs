//! One room in use as a sans-IO unit: the [`Room`] machine (who is in, PINs, keys, the API's
//! controls) and the [`Mixer`] (the audio), with what the shell must not decide on its own —
//! which datagrams a participant's port accepts (strict source), where its packets go, when it
//! has been silent too long, what its participation record says. The room's actor drives it
//! with its sockets and clock; the simulator drives the same code on virtual time.
//!
//! **Strict source.** A participant's port takes RTP from the address its SDP named, or — a
//! phone behind NAT sends from another port — from one of the IPs it is known by (its SDP's,
//! its signalling source's), latched by the first such packet; anything else is counted and
//! dropped. Packets go to the latched address once there is one (symmetric RTP), else to the
//! SDP's.
//!
//! **Silence.** A participant whose SDP says it sends and from whom nothing came for the
//! configured inactivity is reported ([`SeatEvent::Inactive`]): its call ends as any call's
//! would at the RTP timeout. Until then the mixer conceals its frames, then plays silence.

use super::room::{Prompt, Refusal, Room, RoomOutput};
use super::{dtmf::DigitReader, tones};
use crate::Timestamp;
use crate::media::mixer::{Mixer, MixerConfig, MixerOutput, Participant};
use crate::media::relay::PeerMedia;
use crate::media::rtp::RtpPacket;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A room as configured: its number, its name and its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomDecl {
    pub number: String,
    pub name: String,
    pub config: super::room::RoomConfig,
}

/// A participant's ended stay in a room: what the participation record keeps (never audio).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participation {
    /// The participant's id on the node that ran the room (as the API listed it).
    pub id: u64,
    pub room: String,
    /// The caller's extension.
    pub number: String,
    /// When its call reached the room.
    pub arrived: Timestamp,
    /// When it came into the room (after its PIN); `None`: it never got in.
    pub joined: Option<Timestamp>,
    pub left: Timestamp,
}

impl Participation {
    /// Whether the record is about this number.
    pub fn involves(&self, number: &str) -> bool {
        self.number == number
    }
}

/// What a room tells a participant's call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatEvent {
    /// The room hung up on it (kicked, PIN failed or timed out, the room failed): BYE.
    Hangup,
    /// No RTP from it for the configured time: the call ends as any call would.
    Inactive,
}

/// Why a caller did not get a seat: the SIP answer to its INVITE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub reason: String,
}

impl Refused {
    pub fn new(code: u16, reason: impl Into<String>) -> Refused {
        Refused { code, reason: reason.into() }
    }
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused::new(refusal.status(), refusal.reason())
    }
}

/// An API request about one room's participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Mute { participant: u64, muted: bool },
    Kick { participant: u64 },
    Lock { locked: bool },
}

/// One participant as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParticipantView {
    pub id: u64,
    pub number: String,
    /// `None` while at the PIN prompt.
    pub joined: Option<Timestamp>,
    pub moderator: bool,
    pub muted: bool,
    pub talking: bool,
    pub packets_in: u64,
    pub concealed_frames: u64,
}

/// One room as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoomView {
    pub number: String,
    pub name: String,
    pub pin: bool,
    pub moderator_pin: bool,
    pub max_participants: usize,
    pub active: bool,
    pub locked: bool,
    /// The participant id of the loudest talker.
    pub active_speaker: Option<u64>,
    pub frame_overruns: u64,
    pub participants: Vec<ParticipantView>,
}

impl RoomView {
    /// A room nobody is in.
    pub fn idle(decl: &RoomDecl) -> RoomView {
        RoomView {
            number: decl.number.clone(),
            name: decl.name.clone(),
            pin: decl.config.pin.is_some(),
            moderator_pin: decl.config.moderator_pin.is_some(),
            max_participants: decl.config.max_participants,
            active: false,
            locked: false,
            active_speaker: None,
            frame_overruns: 0,
            participants: Vec::new(),
        }
    }
}

/// What the room asks of its shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomCoreOutput {
    /// Send this datagram from the participant's port.
    Send { participant: u64, to: SocketAddr, datagram: Vec<u8> },
    /// Tell the participant's call.
    Seat { participant: u64, event: SeatEvent },
    /// The participant is out of the room: its port goes back; this is its record.
    Gone { participant: u64, record: Participation },
    /// A caller keyed a wrong PIN three times: count an authentication failure for its source.
    AuthFailure { source: IpAddr, caller: String },
    /// Ticks the mixer skipped since the last such output (for the metric).
    Overruns(u64),
    /// A datagram from an address the participant's port does not take.
    Foreign { participant: u64, from: SocketAddr },
}

struct Place {
    caller: String,
    source: IpAddr,
    arrived: Timestamp,
    /// From the SDP; `None` until the call configures it.
    peer: Option<PeerMedia>,
    latched: Option<SocketAddr>,
    in_mixer: bool,
    lobby: bool,
    muted: bool,
    /// Prompts asked for before the mixer knew the participant.
    queued: Vec<Prompt>,
    digits: DigitReader,
    joined: Option<Timestamp>,
    last_packet: Timestamp,
}

pub struct RoomCore {
    decl: RoomDecl,
    room: Room<u64>,
    mixer: Mixer<u64>,
    places: BTreeMap<u64, Place>,
    inactivity: Duration,
    rng: u64,
    overruns_seen: u64,
    outputs: VecDeque<RoomCoreOutput>,
}

impl RoomCore {
    /// `inactivity`: silence that ends a participant's call (zero: never).
    pub fn new(decl: RoomDecl, mixer: MixerConfig, inactivity: Duration, now: Timestamp, seed: u64) -> RoomCore {
        RoomCore {
            room: Room::new(decl.config.clone()),
            mixer: Mixer::new(mixer, now),
            decl,
            places: BTreeMap::new(),
            inactivity,
            rng: seed,
            overruns_seen: 0,
            outputs: VecDeque::new(),
        }
    }

    pub fn number(&self) -> &str {
        &self.decl.number
    }

    /// Whether a caller would be let in now (checked before the shell binds its port).
    pub fn admissible(&self) -> Result<(), Refused> {
        self.room.admission().map_err(Refused::from)
    }

    /// A caller arrives (its port is bound): admitted, or refused.
    pub fn admit(&mut self, now: Timestamp, participant: u64, caller: String, source: IpAddr) -> Result<(), Refused> {
        self.room.arrive(now, participant)?;
        self.places.insert(
            participant,
            Place {
                caller,
                source,
                arrived: now,
                peer: None,
                latched: None,
                in_mixer: false,
                lobby: true,
                muted: false,
                queued: Vec::new(),
                digits: DigitReader::default(),
                joined: None,
                last_packet: now,
            },
        );
        self.carry_out(now);
        Ok(())
    }

    /// Where the participant's media is and how it is coded (its call's SDP).
    pub fn peer(&mut self, participant: u64, peer: PeerMedia) {
        let Some(place) = self.places.get_mut(&participant) else { return };
        let (payload_type, law) = peer.codec;
        let changed = place.peer.as_ref().is_none_or(|old| old.codec != peer.codec);
        if place.peer.as_ref().is_some_and(|old| old.rtp != peer.rtp) {
            place.latched = None;
        }
        place.peer = Some(peer);
        if !changed {
            return;
        }
        if place.in_mixer {
            self.mixer.leave(participant);
        }
        let r = crate::splitmix64(&mut self.rng);
        let stream = Participant {
            law,
            payload_type,
            ssrc: r as u32,
            initial_timestamp: (r >> 32) as u32,
            initial_sequence: (r >> 16) as u16,
        };
        place.in_mixer = self.mixer.join(participant, stream).is_ok();
        if !place.in_mixer {
            return;
        }
        self.mixer.set_in_lobby(participant, place.lobby);
        self.mixer.set_muted(participant, place.muted);
        for prompt in std::mem::take(&mut place.queued) {
            self.mixer.play(participant, tones::prompt(prompt));
        }
    }

    /// The participant's call ended.
    pub fn leave(&mut self, now: Timestamp, participant: u64) {
        if self.places.contains_key(&participant) {
            self.room.leave(participant);
            self.remove(now, participant);
            self.carry_out(now);
        }
    }

    /// A datagram reached the participant's port.
    pub fn packet(&mut self, now: Timestamp, participant: u64, from: SocketAddr, datagram: &[u8]) {
        let Some(place) = self.places.get_mut(&participant) else { return };
        let Some(peer) = &place.peer else { return };
        let accepted = match place.latched {
            Some(latched) => latched == from,
            None => {
                let known = peer.rtp.is_some_and(|a| a.ip() == from.ip()) || place.source == from.ip();
                if known {
                    place.latched = Some(from);
                }
                known
            }
        };
        if !accepted {
            self.outputs.push_back(RoomCoreOutput::Foreign { participant, from });
            return;
        }
        place.last_packet = now;
        let Some(packet) = RtpPacket::parse(datagram) else { return };
        if peer.telephone_event.is_some_and(|pt| pt == packet.payload_type()) {
            if let Some(key) = place.digits.read(&packet) {
                self.room.key(now, participant, key);
                self.carry_out(now);
            }
            return;
        }
        self.mixer.receive(participant, datagram);
    }

    /// An API request; whether it applied to someone (a lock always does).
    pub fn control(&mut self, now: Timestamp, control: Control) -> bool {
        let done = match control {
            Control::Mute { participant, muted } => self.room.set_muted(participant, muted),
            Control::Kick { participant } => self.room.kick(participant),
            Control::Lock { locked } => {
                self.room.set_locked(locked);
                true
            }
        };
        self.carry_out(now);
        done
    }

    /// When [`RoomCore::handle_timeout`] is next due: the mixer's next tick.
    pub fn poll_timeout(&self) -> Timestamp {
        self.mixer.poll_timeout()
    }

    /// Plays the ticks due, hangs up on PIN entries that ran out of time, reports the silent.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.mixer.handle_timeout(now);
        let overruns = self.mixer.stats().frame_overruns;
        if overruns > self.overruns_seen {
            self.outputs.push_back(RoomCoreOutput::Overruns(overruns - self.overruns_seen));
            self.overruns_seen = overruns;
        }
        while let Some(output) = self.mixer.poll_output() {
            let MixerOutput::Rtp { to, packet } = output else { continue };
            let Some(place) = self.places.get(&to) else { continue };
            let Some(destination) = place.latched.or(place.peer.as_ref().and_then(|p| p.rtp)) else { continue };
            self.outputs.push_back(RoomCoreOutput::Send { participant: to, to: destination, datagram: packet });
        }
        self.room.handle_timeout(now);
        if !self.inactivity.is_zero() {
            for (id, place) in self.places.iter_mut() {
                let sends = place.peer.as_ref().is_some_and(|p| p.sends);
                if sends && now.saturating_since(place.last_packet) >= self.inactivity {
                    place.last_packet = now;
                    self.outputs.push_back(RoomCoreOutput::Seat { participant: *id, event: SeatEvent::Inactive });
                }
            }
        }
        self.carry_out(now);
    }

    pub fn poll_output(&mut self) -> Option<RoomCoreOutput> {
        self.outputs.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// Participants in the room or at its PIN prompt.
    pub fn participants(&self) -> impl Iterator<Item = u64> + '_ {
        self.places.keys().copied()
    }

    /// Everyone leaves (the room closes): their records come out.
    pub fn close(&mut self, now: Timestamp) {
        let left: Vec<u64> = self.places.keys().copied().collect();
        for participant in left {
            self.room.leave(participant);
            self.remove(now, participant);
        }
        self.room.drain_outputs().for_each(drop);
    }

    pub fn view(&self) -> RoomView {
        let participants = self
            .room
            .members()
            .filter_map(|(id, member)| {
                let place = self.places.get(&id)?;
                let stats = self.mixer.participant_stats(id).unwrap_or_default();
                Some(ParticipantView {
                    id,
                    number: place.caller.clone(),
                    joined: member.joined,
                    moderator: member.moderator,
                    muted: member.muted,
                    talking: self.mixer.is_talking(id),
                    packets_in: stats.packets,
                    concealed_frames: stats.concealed,
                })
            })
            .collect();
        RoomView {
            locked: self.room.is_locked(),
            active: true,
            active_speaker: self.mixer.active_speaker(),
            frame_overruns: self.mixer.stats().frame_overruns,
            participants,
            ..RoomView::idle(&self.decl)
        }
    }

    /// What the room machine said, carried out on the mixer and the outputs.
    fn carry_out(&mut self, now: Timestamp) {
        let outputs: Vec<RoomOutput<u64>> = self.room.drain_outputs().collect();
        for output in outputs {
            match output {
                RoomOutput::Join { id, muted, .. } => {
                    if let Some(place) = self.places.get_mut(&id) {
                        place.lobby = false;
                        place.muted = muted;
                        place.joined = Some(now);
                    }
                    self.mixer.set_in_lobby(id, false);
                    self.mixer.set_muted(id, muted);
                }
                RoomOutput::SetMuted { id, muted } => {
                    if let Some(place) = self.places.get_mut(&id) {
                        place.muted = muted;
                    }
                    self.mixer.set_muted(id, muted);
                }
                RoomOutput::Play { to, prompt } => {
                    if let Some(place) = self.places.get_mut(&to) {
                        if place.in_mixer {
                            self.mixer.play(to, tones::prompt(prompt));
                        } else {
                            place.queued.push(prompt);
                        }
                    }
                }
                RoomOutput::Hangup { id, .. } => {
                    if self.places.contains_key(&id) {
                        self.outputs.push_back(RoomCoreOutput::Seat { participant: id, event: SeatEvent::Hangup });
                    }
                    self.remove(now, id);
                }
                RoomOutput::AuthFailure { id } => {
                    if let Some(place) = self.places.get(&id) {
                        let (source, caller) = (place.source, place.caller.clone());
                        self.outputs.push_back(RoomCoreOutput::AuthFailure { source, caller });
                    }
                }
                RoomOutput::Locked(_) => {}
            }
        }
    }

    /// The participant is out of the room (the machine knows already).
    fn remove(&mut self, now: Timestamp, participant: u64) {
        let Some(place) = self.places.remove(&participant) else { return };
        self.mixer.leave(participant);
        let record = Participation {
            id: participant,
            room: self.decl.number.clone(),
            number: place.caller,
            arrived: place.arrived,
            joined: place.joined,
            left: now,
        };
        self.outputs.push_back(RoomCoreOutput::Gone { participant, record });
    }
}

#[cfg(test)]
mod tests;

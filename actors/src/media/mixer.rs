//! The audio mixer of one conference room, as a sans-IO machine: RTP in from each participant,
//! one mixed RTP stream out to each, every 20 ms on the room's own clock.
//!
//! What it does:
//! - **Frames on the room's clock.** [`Mixer::poll_timeout`] names the next 20 ms tick; at each
//!   tick every participant's jitter buffer gives one frame of 160 samples (8 kHz), the frames
//!   are mixed and every participant gets one packet. A shell that wakes late gets the missed
//!   ticks at once, up to [`CATCH_UP_FRAMES_MAX`]; ticks further behind are skipped and counted
//!   ([`MixerStats::frame_overruns`]): a stalled mixer drops audio rather than building a
//!   backlog it can never play.
//! - **Nobody hears themselves.** The mix is the sum of the talkers; a talker hears that sum
//!   minus its own frame, a listener the whole sum. Sums are 32-bit, the result saturates to
//!   16 bits (a clipped peak, never a wrapped one).
//! - **Cost grows with talkers, not listeners.** A frame whose mean amplitude is below the
//!   speech threshold ([`MixerConfig::speech_threshold`]) is left out of the mix, and at most
//!   [`MixerConfig::talkers_max`] (the loudest, default 4) are mixed. Everyone outside the
//!   talkers hears the same sum, encoded once per G.711 law; only each talker's own packet is
//!   mixed and encoded for it alone.
//! - **A jitter buffer per participant.** Samples are placed by RTP timestamp in a ring of
//!   [`JITTER_RING_SAMPLES`] samples and played [`JITTER_DEPTH_FRAMES`] frames behind the
//!   first packet, whatever the sender's packet time (10, 20, 30 ms …). A packet too late for
//!   its place is dropped and counted; a new SSRC, or a timestamp beyond the ring, restarts
//!   playout at that packet; so does a late packet when the buffer is empty (a sender whose
//!   clock runs slow, or one that paused), so a participant never stays behind for good.
//! - **Loss concealment**: a frame that did not arrive repeats the last one received, halving
//!   its level each time ([`CONCEAL_FRAMES`] frames: 1, ½, ¼), then silence.
//! - **Muting** takes a participant out of the mix (it still hears the room).
//! - **The lobby**: a participant who is not yet in the room (at the PIN prompt) is neither
//!   mixed nor hears the room ([`Mixer::set_in_lobby`]); it hears only its prompts.
//! - **Prompts** ([`Mixer::play`]): samples queued for one participant are added to what it
//!   hears, frame by frame (that participant's packet is then mixed and encoded for it alone).
//!   A new prompt replaces one still playing; at most [`PROMPT_SAMPLES_MAX`] samples.
//! - **Active speaker**: the loudest talker of the last tick ([`Mixer::active_speaker`]), and
//!   [`MixerOutput::Speaker`] when it changes.
//! - **PCMU and PCMA per participant** ([`Participant::law`]); each gets its own SSRC, sequence
//!   and timestamp, and the payload type its SDP negotiated.
//!
//! Bounded: at most [`PARTICIPANTS_MAX`] participants (a room's own limit is lower), and a
//! participant holds a fixed ring, whatever it sends.
//!
//! Not done here: other codecs, RTCP, comfort noise (silence is sent as G.711 silence, which
//! keeps NAT bindings open), DTMF (the shell reads RFC 4733 events before the mixer).

use super::g711::G711;
use super::rtp::RtpPacket;
use crate::Timestamp;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

/// Samples per second of G.711.
pub const SAMPLE_RATE: u32 = 8_000;
/// One mixing period.
pub const FRAME_MS: u64 = 20;
/// Samples in one frame.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE as usize) * (FRAME_MS as usize) / 1000;
/// Samples a participant's ring holds (256 ms; a power of two, so a position follows the RTP
/// timestamp across its wrap): a packet beyond it restarts playout.
pub const JITTER_RING_SAMPLES: usize = 2_048;
/// Frames played behind the first packet of a stream (40 ms): the jitter absorbed.
pub const JITTER_DEPTH_FRAMES: usize = 2;
/// Frames concealed by repeating the last one received, at 1, ½, ¼ of its level; then silence.
pub const CONCEAL_FRAMES: u32 = 3;
/// Ticks a late wake-up still plays; ticks further behind are skipped and counted.
pub const CATCH_UP_FRAMES_MAX: u32 = 3;
/// Participants one mixer takes at most.
pub const PARTICIPANTS_MAX: usize = 1_000;
/// Samples one queued prompt may hold (8 s).
pub const PROMPT_SAMPLES_MAX: usize = 8 * SAMPLE_RATE as usize;
/// A late packet further behind than this (1 s of samples) is a restarted stream, not jitter.
const LATE_RESTART_SAMPLES: u32 = SAMPLE_RATE;

const RING_SAMPLES: usize = JITTER_RING_SAMPLES;
const _: () = assert!(RING_SAMPLES.is_power_of_two() && RING_SAMPLES > 2 * DEPTH_SAMPLES as usize);
const DEPTH_SAMPLES: u32 = (JITTER_DEPTH_FRAMES * FRAME_SAMPLES) as u32;
const FRAME: Duration = Duration::from_millis(FRAME_MS);
const RTP_HEADER_BYTES: usize = 12;

/// How a room mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MixerConfig {
    /// Talkers mixed at most, the loudest first.
    pub talkers_max: usize,
    /// Mean absolute amplitude (16-bit scale) below which a frame is not speech and is left
    /// out of the mix. 64 is about −54 dBov: a quiet room's noise floor stays out, a voice is in.
    pub speech_threshold: u16,
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig { talkers_max: 4, speech_threshold: 64 }
    }
}

/// How one participant's audio is coded, and how its outgoing stream is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Participant {
    pub law: G711,
    /// The payload type its SDP negotiated for `law` (0 or 8 unless the phone chose another).
    pub payload_type: u8,
    /// The SSRC of the stream pbx sends it.
    pub ssrc: u32,
    /// The first RTP timestamp and sequence number of that stream (random, from the shell).
    pub initial_timestamp: u32,
    pub initial_sequence: u16,
}

/// What the mixer asks of its shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MixerOutput<P> {
    /// Send this RTP packet to the participant.
    Rtp { to: P, packet: Vec<u8> },
    /// The loudest talker changed (`None`: nobody is talking).
    Speaker(Option<P>),
}

/// Counters for the API and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MixerStats {
    /// Ticks skipped because the mixer was woken too late to play them.
    pub frame_overruns: u64,
    /// Ticks played.
    pub frames: u64,
}

/// One participant's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParticipantStats {
    pub packets: u64,
    /// Packets that came too late for their place and were dropped.
    pub late: u64,
    /// Packets that were not RTP, or not of the participant's payload type.
    pub rejected: u64,
    /// Frames played from concealment or silence because nothing arrived for them.
    pub concealed: u64,
    /// Times playout restarted (new SSRC, a jump in timestamps, a stream that fell behind).
    pub restarts: u64,
}

/// A participant's jitter buffer: samples placed by RTP timestamp, played from `play`.
struct Jitter {
    samples: Box<[i16; RING_SAMPLES]>,
    present: Box<[bool; RING_SAMPLES]>,
    /// The RTP timestamp of the next sample played; `None` before the first packet.
    play: Option<u32>,
    ssrc: u32,
    /// Samples buffered at or after `play`.
    buffered: usize,
}

impl Jitter {
    fn new() -> Jitter {
        Jitter {
            samples: Box::new([0; RING_SAMPLES]),
            present: Box::new([false; RING_SAMPLES]),
            play: None,
            ssrc: 0,
            buffered: 0,
        }
    }

    fn restart(&mut self, ssrc: u32, timestamp: u32) {
        self.present.fill(false);
        self.buffered = 0;
        self.ssrc = ssrc;
        self.play = Some(timestamp.wrapping_sub(DEPTH_SAMPLES));
    }

    /// Places one packet's samples; whether it was late (dropped) and whether playout restarted.
    fn put(&mut self, ssrc: u32, timestamp: u32, law: G711, payload: &[u8]) -> (bool, bool) {
        let mut restarted = false;
        let play = match self.play {
            Some(play) if ssrc == self.ssrc => play,
            _ => {
                self.restart(ssrc, timestamp);
                restarted = true;
                timestamp.wrapping_sub(DEPTH_SAMPLES)
            }
        };
        let ahead = timestamp.wrapping_sub(play);
        let behind = play.wrapping_sub(timestamp);
        let len = payload.len().min(RING_SAMPLES - DEPTH_SAMPLES as usize);
        let play = if behind > 0 && behind <= LATE_RESTART_SAMPLES {
            // Late. While others wait in the buffer this is jitter beyond the depth: dropped.
            // With nothing buffered the stream has fallen behind the room: start again here.
            if self.buffered > 0 {
                return (true, restarted);
            }
            self.restart(ssrc, timestamp);
            restarted = true;
            timestamp.wrapping_sub(DEPTH_SAMPLES)
        } else if behind > LATE_RESTART_SAMPLES && ahead as usize + len > RING_SAMPLES {
            // Beyond the ring (a jump, or a sender's clock far ahead): start again here.
            self.restart(ssrc, timestamp);
            restarted = true;
            timestamp.wrapping_sub(DEPTH_SAMPLES)
        } else {
            play
        };
        let offset = timestamp.wrapping_sub(play) as usize;
        for (i, &code) in payload[..len].iter().enumerate() {
            let index = (timestamp.wrapping_add(i as u32) as usize) % RING_SAMPLES;
            if offset + i < RING_SAMPLES && !self.present[index] {
                self.samples[index] = law.decode(code);
                self.present[index] = true;
                self.buffered += 1;
            }
        }
        (false, restarted)
    }

    /// Drops the next `frames` frames unplayed.
    fn skip(&mut self, frames: u64) {
        let Some(play) = self.play else { return };
        if frames.saturating_mul(FRAME_SAMPLES as u64) >= RING_SAMPLES as u64 {
            self.present.fill(false);
            self.buffered = 0;
            self.play = Some(play.wrapping_add((frames as u32).wrapping_mul(FRAME_SAMPLES as u32)));
        } else {
            let mut discard = [0; FRAME_SAMPLES];
            for _ in 0..frames {
                self.take(&mut discard);
            }
        }
    }

    /// Takes the next frame into `frame`; whether any of it had arrived.
    fn take(&mut self, frame: &mut [i16; FRAME_SAMPLES]) -> bool {
        let Some(play) = self.play else { return false };
        let mut any = false;
        for (i, out) in frame.iter_mut().enumerate() {
            let index = (play.wrapping_add(i as u32) as usize) % RING_SAMPLES;
            if self.present[index] {
                *out = self.samples[index];
                self.present[index] = false;
                self.buffered -= 1;
                any = true;
            } else {
                *out = 0;
            }
        }
        self.play = Some(play.wrapping_add(FRAME_SAMPLES as u32));
        any
    }
}

/// One participant's state.
struct Member {
    participant: Participant,
    muted: bool,
    jitter: Jitter,
    /// This tick's frame (received, concealed or silent).
    frame: [i16; FRAME_SAMPLES],
    /// The last frame received, for concealment.
    last: [i16; FRAME_SAMPLES],
    /// Frames concealed in a row.
    missing: u32,
    /// This tick's mean absolute amplitude.
    energy: u32,
    /// Not in the room yet: not mixed, hears only its prompt.
    lobby: bool,
    /// A prompt being played to it (shared: every listener of the same prompt plays one
    /// rendering), and how far.
    prompt: Option<(Arc<[i16]>, usize)>,
    sequence: u16,
    timestamp: u32,
    first_sent: bool,
    stats: ParticipantStats,
}

/// The mixer of one room, generic over how its shell names a participant.
pub struct Mixer<P> {
    config: MixerConfig,
    members: HashMap<P, Member>,
    /// Join order, so ticks and their outputs are deterministic.
    order: Vec<P>,
    next_tick: Timestamp,
    speaker: Option<P>,
    outputs: VecDeque<MixerOutput<P>>,
    stats: MixerStats,
    /// This tick's talkers (indices into `order`), loudest first.
    talkers: Vec<usize>,
    sum: Box<[i32; FRAME_SAMPLES]>,
}

/// Why a participant was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the mixer is full ({PARTICIPANTS_MAX} participants)")]
    Full,
    #[error("already a participant")]
    AlreadyJoined,
}

impl<P: Copy + Eq + Hash> Mixer<P> {
    /// A mixer whose first tick is one frame after `now`.
    pub fn new(config: MixerConfig, now: Timestamp) -> Mixer<P> {
        Mixer {
            config,
            members: HashMap::new(),
            order: Vec::new(),
            next_tick: now + FRAME,
            speaker: None,
            outputs: VecDeque::new(),
            stats: MixerStats::default(),
            talkers: Vec::new(),
            sum: Box::new([0; FRAME_SAMPLES]),
        }
    }

    pub fn join(&mut self, id: P, participant: Participant) -> Result<(), JoinError> {
        if self.members.contains_key(&id) {
            return Err(JoinError::AlreadyJoined);
        }
        if self.members.len() >= PARTICIPANTS_MAX {
            return Err(JoinError::Full);
        }
        self.members.insert(
            id,
            Member {
                participant,
                muted: false,
                jitter: Jitter::new(),
                frame: [0; FRAME_SAMPLES],
                last: [0; FRAME_SAMPLES],
                missing: CONCEAL_FRAMES,
                energy: 0,
                lobby: false,
                prompt: None,
                sequence: participant.initial_sequence,
                timestamp: participant.initial_timestamp,
                first_sent: false,
                stats: ParticipantStats::default(),
            },
        );
        self.order.push(id);
        Ok(())
    }

    /// Removes a participant; whether it was one.
    pub fn leave(&mut self, id: P) -> bool {
        if self.members.remove(&id).is_none() {
            return false;
        }
        self.order.retain(|p| *p != id);
        // The last tick's talkers are indices into `order`, which just shifted.
        self.talkers.clear();
        if self.speaker == Some(id) {
            self.speaker = None;
            self.outputs.push_back(MixerOutput::Speaker(None));
        }
        true
    }

    pub fn set_muted(&mut self, id: P, muted: bool) -> bool {
        self.members.get_mut(&id).map(|m| m.muted = muted).is_some()
    }

    /// Puts a participant in the lobby or takes it out (see the module doc).
    pub fn set_in_lobby(&mut self, id: P, lobby: bool) -> bool {
        self.members.get_mut(&id).map(|m| m.lobby = lobby).is_some()
    }

    /// Plays `samples` to one participant over what it hears; replaces a prompt still playing.
    /// At most [`PROMPT_SAMPLES_MAX`] samples of it are played.
    pub fn play(&mut self, id: P, samples: Arc<[i16]>) -> bool {
        self.members.get_mut(&id).map(|m| m.prompt = Some((samples, 0))).is_some()
    }

    pub fn is_muted(&self, id: P) -> Option<bool> {
        self.members.get(&id).map(|m| m.muted)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Participants in join order.
    pub fn participants(&self) -> impl Iterator<Item = P> + '_ {
        self.order.iter().copied()
    }

    /// The loudest talker of the last tick.
    pub fn active_speaker(&self) -> Option<P> {
        self.speaker
    }

    /// Whether the participant's frame was mixed in the last tick.
    pub fn is_talking(&self, id: P) -> bool {
        self.talkers.iter().any(|&i| self.order.get(i) == Some(&id))
    }

    pub fn stats(&self) -> MixerStats {
        self.stats
    }

    pub fn participant_stats(&self, id: P) -> Option<ParticipantStats> {
        self.members.get(&id).map(|m| m.stats)
    }

    /// One datagram from a participant (the shell has checked its source). Anything but RTP of
    /// the participant's payload type is counted and dropped.
    pub fn receive(&mut self, from: P, datagram: &[u8]) {
        let Some(member) = self.members.get_mut(&from) else { return };
        let packet = match RtpPacket::parse(datagram) {
            Some(p) if p.payload_type() == member.participant.payload_type => p,
            _ => {
                member.stats.rejected += 1;
                return;
            }
        };
        member.stats.packets += 1;
        let (late, restarted) =
            member.jitter.put(packet.ssrc(), packet.timestamp(), member.participant.law, packet.payload());
        member.stats.late += u64::from(late);
        member.stats.restarts += u64::from(restarted);
    }

    /// When [`Mixer::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Timestamp {
        self.next_tick
    }

    /// Plays every tick due by `now` (at most [`CATCH_UP_FRAMES_MAX`]; the rest are skipped and
    /// counted as overruns).
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let mut played = 0;
        while self.next_tick <= now {
            if played == CATCH_UP_FRAMES_MAX {
                let behind = now.saturating_since(self.next_tick).as_micros() / FRAME.as_micros() + 1;
                let behind = u64::try_from(behind).unwrap_or(u64::MAX);
                self.stats.frame_overruns += behind;
                self.next_tick = self.next_tick + FRAME * u32::try_from(behind).unwrap_or(u32::MAX);
                // Every participant's playout skips the same ticks, so streams stay aligned.
                for member in self.members.values_mut() {
                    member.jitter.skip(behind);
                }
                break;
            }
            self.tick();
            played += 1;
            self.next_tick = self.next_tick + FRAME;
        }
    }

    pub fn poll_output(&mut self) -> Option<MixerOutput<P>> {
        self.outputs.pop_front()
    }

    /// One 20 ms frame: take, select, mix, send.
    fn tick(&mut self) {
        self.stats.frames += 1;
        // Take each participant's frame, concealing what did not arrive.
        for id in &self.order {
            let member = self.members.get_mut(id).expect("order and members agree");
            if member.jitter.take(&mut member.frame) {
                member.last = member.frame;
                member.missing = 0;
            } else {
                member.stats.concealed += 1;
                if member.missing < CONCEAL_FRAMES {
                    let shift = member.missing;
                    for (out, last) in member.frame.iter_mut().zip(member.last.iter()) {
                        *out = last >> shift;
                    }
                } else {
                    member.frame = [0; FRAME_SAMPLES];
                }
                member.missing = member.missing.saturating_add(1);
            }
            let total: u32 = member.frame.iter().map(|s| s.unsigned_abs() as u32).sum();
            member.energy = total / FRAME_SAMPLES as u32;
        }
        // The talkers: unmuted, above the threshold, the loudest few.
        self.talkers.clear();
        for (index, id) in self.order.iter().enumerate() {
            let member = &self.members[id];
            if !member.muted && !member.lobby && member.energy >= u32::from(self.config.speech_threshold) {
                self.talkers.push(index);
            }
        }
        let members = &self.members;
        let order = &self.order;
        self.talkers.sort_by(|&a, &b| members[&order[b]].energy.cmp(&members[&order[a]].energy).then(a.cmp(&b)));
        self.talkers.truncate(self.config.talkers_max);
        self.sum.fill(0);
        for &index in &self.talkers {
            for (sum, &sample) in self.sum.iter_mut().zip(self.members[&self.order[index]].frame.iter()) {
                *sum += i32::from(sample);
            }
        }
        let speaker = self.talkers.first().map(|&i| self.order[i]);
        if speaker != self.speaker {
            self.speaker = speaker;
            self.outputs.push_back(MixerOutput::Speaker(speaker));
        }
        // Everyone but the talkers (and those hearing a prompt, or in the lobby) hears the
        // whole sum: encoded once per law.
        let mut everyone: [Option<[u8; FRAME_SAMPLES]>; 2] = [None, None];
        for (index, id) in self.order.iter().enumerate() {
            let member = self.members.get_mut(id).expect("order and members agree");
            let law = member.participant.law;
            let talker = self.talkers.contains(&index);
            let mut payload = [0u8; FRAME_SAMPLES];
            if talker || member.lobby || member.prompt.is_some() {
                let mut heard = [0i32; FRAME_SAMPLES];
                if !member.lobby {
                    heard.copy_from_slice(&self.sum[..]);
                }
                if talker {
                    for (h, &own) in heard.iter_mut().zip(member.frame.iter()) {
                        *h -= i32::from(own);
                    }
                }
                if let Some((samples, at)) = &mut member.prompt {
                    let len = samples.len().min(PROMPT_SAMPLES_MAX);
                    let end = (*at + FRAME_SAMPLES).min(len);
                    for (h, &p) in heard.iter_mut().zip(samples[*at..end].iter()) {
                        *h += i32::from(p);
                    }
                    *at = end;
                    if end == len {
                        member.prompt = None;
                    }
                }
                for (out, &h) in payload.iter_mut().zip(heard.iter()) {
                    *out = law.encode(saturate(h));
                }
            } else {
                let slot = &mut everyone[usize::from(law == G711::A)];
                payload = *slot.get_or_insert_with(|| {
                    let mut encoded = [0u8; FRAME_SAMPLES];
                    for (out, &sum) in encoded.iter_mut().zip(self.sum.iter()) {
                        *out = law.encode(saturate(sum));
                    }
                    encoded
                });
            }
            let packet = member.packet(&payload);
            self.outputs.push_back(MixerOutput::Rtp { to: *id, packet });
        }
    }
}

impl Member {
    /// The next packet of the stream pbx sends this participant.
    fn packet(&mut self, payload: &[u8; FRAME_SAMPLES]) -> Vec<u8> {
        let mut packet = Vec::with_capacity(RTP_HEADER_BYTES + FRAME_SAMPLES);
        let marker = if self.first_sent { 0 } else { 0x80 };
        packet.push(0x80);
        packet.push(marker | (self.participant.payload_type & 0x7f));
        packet.extend_from_slice(&self.sequence.to_be_bytes());
        packet.extend_from_slice(&self.timestamp.to_be_bytes());
        packet.extend_from_slice(&self.participant.ssrc.to_be_bytes());
        packet.extend_from_slice(payload);
        self.first_sent = true;
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
        packet
    }
}

fn saturate(sample: i32) -> i16 {
    sample.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests;

use super::*;
use crate::media::tone_power::power;
use std::f64::consts::PI;

/// A test phone: one tone, 20 ms packets in its law.
struct Phone {
    law: G711,
    payload_type: u8,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    /// Hz; 0 for silence.
    tone: f64,
    amplitude: f64,
    /// Samples sent so far (the tone's phase).
    sent: u64,
}

impl Phone {
    fn new(law: G711, tone: f64, amplitude: f64, ssrc: u32) -> Phone {
        Phone {
            law,
            payload_type: law.static_payload_type(),
            ssrc,
            sequence: 1000,
            timestamp: ssrc.wrapping_mul(7),
            tone,
            amplitude,
            sent: 0,
        }
    }

    fn participant(&self, ssrc: u32) -> Participant {
        Participant {
            law: self.law,
            payload_type: self.payload_type,
            ssrc,
            initial_timestamp: 5_000,
            initial_sequence: 77,
        }
    }

    /// The next packet of `samples` samples.
    fn packet_of(&mut self, samples: usize) -> Vec<u8> {
        let mut packet = vec![0x80, self.payload_type];
        packet.extend_from_slice(&self.sequence.to_be_bytes());
        packet.extend_from_slice(&self.timestamp.to_be_bytes());
        packet.extend_from_slice(&self.ssrc.to_be_bytes());
        for i in 0..samples as u64 {
            let t = (self.sent + i) as f64 / f64::from(SAMPLE_RATE);
            let sample = (self.amplitude * (2.0 * PI * self.tone * t).sin()).round() as i16;
            packet.push(self.law.encode(sample));
        }
        self.sent += samples as u64;
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples as u32);
        packet
    }

    fn packet(&mut self) -> Vec<u8> {
        self.packet_of(FRAME_SAMPLES)
    }
}

fn at(frame: u64) -> Timestamp {
    Timestamp::from_millis(frame * FRAME_MS)
}

/// What each participant was sent, decoded, and the RTP headers of its packets.
#[derive(Default)]
struct Heard {
    samples: HashMap<u32, Vec<i16>>,
    headers: HashMap<u32, Vec<[u8; 12]>>,
    speakers: Vec<Option<u32>>,
}

fn drain(mixer: &mut Mixer<u32>, laws: &HashMap<u32, G711>, heard: &mut Heard) {
    while let Some(output) = mixer.poll_output() {
        match output {
            MixerOutput::Rtp { to, packet } => {
                assert_eq!(packet.len(), 12 + FRAME_SAMPLES, "one 20 ms G.711 frame per packet");
                heard.headers.entry(to).or_default().push(packet[..12].try_into().unwrap());
                let law = laws[&to];
                heard.samples.entry(to).or_default().extend(packet[12..].iter().map(|&c| law.decode(c)));
            }
            MixerOutput::Speaker(s) => heard.speakers.push(s),
        }
    }
}

/// Runs `frames` ticks: every phone sends one packet before each tick (`send` picks which).
fn run(mixer: &mut Mixer<u32>, phones: &mut [(u32, Phone)], frames: u64, send: impl FnMut(u64, u32) -> bool) -> Heard {
    run_from(mixer, phones, 0, frames, send)
}

/// As [`run`], from tick `start`.
fn run_from(
    mixer: &mut Mixer<u32>,
    phones: &mut [(u32, Phone)],
    start: u64,
    frames: u64,
    mut send: impl FnMut(u64, u32) -> bool,
) -> Heard {
    let laws: HashMap<u32, G711> = phones.iter().map(|(id, p)| (*id, p.law)).collect();
    let mut heard = Heard::default();
    for frame in start..start + frames {
        for (id, phone) in phones.iter_mut() {
            if send(frame, *id) {
                let packet = phone.packet();
                mixer.receive(*id, &packet);
            } else {
                phone.packet(); // time goes on for a phone that does not send
            }
        }
        mixer.handle_timeout(at(frame + 1));
        drain(mixer, &laws, &mut heard);
    }
    heard
}

fn room(phones: &[(u32, Phone)], config: MixerConfig) -> Mixer<u32> {
    let mut mixer = Mixer::new(config, Timestamp::ZERO);
    for (id, phone) in phones {
        mixer.join(*id, phone.participant(0x1000 + id)).unwrap();
    }
    mixer
}

fn rms(samples: &[i16]) -> f64 {
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len().max(1) as f64).sqrt()
}

/// The steady part of what one participant heard (after the jitter buffer filled).
fn steady(heard: &Heard, id: u32) -> &[i16] {
    &heard.samples[&id][FRAME_SAMPLES * 4..]
}

#[test]
fn each_hears_the_others_tones_and_never_its_own() {
    let tones = [(1, 440.0), (2, 1000.0), (3, 1850.0)];
    let mut phones: Vec<(u32, Phone)> = tones
        .iter()
        .map(|&(id, f)| (id, Phone::new(if id == 2 { G711::A } else { G711::Mu }, f, 6000.0, id)))
        .collect();
    let mut mixer = room(&phones, MixerConfig::default());
    let heard = run(&mut mixer, &mut phones, 50, |_, _| true);
    for &(id, own) in &tones {
        let samples = steady(&heard, id);
        let own_power = power(samples, own);
        for &(other, f) in tones.iter().filter(|(o, _)| *o != id) {
            let p = power(samples, f);
            assert!(
                p > 1000.0 * own_power.max(1.0),
                "{id} hears {other}'s {f} Hz ({p:.0}) far above its own ({own_power:.0})"
            );
        }
        assert!(own_power < 100.0, "{id} hears its own tone: {own_power}");
    }
    // Every participant got one packet per tick.
    for &(id, _) in &tones {
        assert_eq!(heard.headers[&id].len(), 50);
    }
}

#[test]
fn one_talker_reaches_everyone_else_and_hears_silence() {
    let mut phones = vec![
        (1, Phone::new(G711::Mu, 700.0, 8000.0, 1)),
        (2, Phone::new(G711::Mu, 0.0, 0.0, 2)),
        (3, Phone::new(G711::A, 0.0, 0.0, 3)),
    ];
    let mut mixer = room(&phones, MixerConfig::default());
    let heard = run(&mut mixer, &mut phones, 30, |_, _| true);
    assert!(steady(&heard, 1).iter().all(|&s| s.abs() <= 8), "the talker hears (near) silence");
    for listener in [2, 3] {
        let samples = steady(&heard, listener);
        assert!(rms(samples) > 5000.0, "{listener} hears the talker: rms {}", rms(samples));
        assert!(power(samples, 700.0) > 1e6);
    }
    assert_eq!(mixer.active_speaker(), Some(1));
    assert!(mixer.is_talking(1) && !mixer.is_talking(2));
    assert_eq!(heard.speakers, vec![Some(1)], "the speaker is announced once");
}

#[test]
fn the_jitter_buffer_waits_two_frames_then_plays_in_timestamp_order() {
    let mut phones = vec![(1, Phone::new(G711::Mu, 500.0, 4000.0, 1)), (2, Phone::new(G711::Mu, 0.0, 0.0, 2))];
    let mut in_order = room(&phones, MixerConfig::default());
    let reference = run(&mut in_order, &mut phones, 20, |_, _| true);

    // The same audio with packets 4 and 5 swapped (both arrive before 4 is due).
    let mut phones = vec![(1, Phone::new(G711::Mu, 500.0, 4000.0, 1)), (2, Phone::new(G711::Mu, 0.0, 0.0, 2))];
    let mut mixer = room(&phones, MixerConfig::default());
    let laws = HashMap::from([(1, G711::Mu), (2, G711::Mu)]);
    let mut heard = Heard::default();
    let mut held = None;
    for frame in 0..20u64 {
        let packet = phones[0].1.packet();
        match frame {
            4 => held = Some(packet),
            5 => {
                mixer.receive(1, &packet);
                mixer.receive(1, &held.take().unwrap());
            }
            _ => mixer.receive(1, &packet),
        }
        let silent = phones[1].1.packet();
        mixer.receive(2, &silent);
        mixer.handle_timeout(at(frame + 1));
        drain(&mut mixer, &laws, &mut heard);
    }
    assert_eq!(heard.samples[&2], reference.samples[&2], "reordering within the depth changes nothing");
    // The first two ticks are the buffer's depth: silence; the talker's first frame is the third.
    let listener = &heard.samples[&2];
    assert!(listener[..2 * FRAME_SAMPLES].iter().all(|&s| s == 0));
    assert!(rms(&listener[2 * FRAME_SAMPLES..3 * FRAME_SAMPLES]) > 2000.0);
    assert_eq!(mixer.participant_stats(1).unwrap().late, 0);
}

#[test]
fn a_silent_sender_is_concealed_then_fades_to_silence_and_the_others_go_on() {
    let mut phones = vec![
        (1, Phone::new(G711::Mu, 400.0, 8000.0, 1)),
        (2, Phone::new(G711::Mu, 1200.0, 8000.0, 2)),
        (3, Phone::new(G711::Mu, 0.0, 0.0, 3)),
    ];
    let mut mixer = room(&phones, MixerConfig::default());
    // Phone 1 stops after frame 9 (its last frame plays at tick 12).
    let heard = run(&mut mixer, &mut phones, 30, |frame, id| id != 1 || frame < 10);
    let by_frame = |id: u32, tick: usize| heard.samples[&id][tick * FRAME_SAMPLES..(tick + 1) * FRAME_SAMPLES].to_vec();
    // Phone 2 hears 1 alone: full, then the last frame repeated at 1, ½, ¼, then nothing.
    let last = rms(&by_frame(2, 11));
    let conceal: Vec<f64> = (12..16).map(|t| rms(&by_frame(2, t))).collect();
    assert!((conceal[0] / last - 1.0).abs() < 0.05, "first lost frame repeated whole: {conceal:?} after {last}");
    assert!((conceal[1] / last - 0.5).abs() < 0.05, "then at half: {conceal:?}");
    assert!((conceal[2] / last - 0.25).abs() < 0.05, "then a quarter: {conceal:?}");
    assert!(conceal[3] < 1.0, "then silence: {conceal:?}");
    assert!(by_frame(2, 20).iter().all(|&s| s.abs() <= 8));
    // Phone 3 still hears 2 all along.
    for tick in 4..30 {
        assert!(power(&by_frame(3, tick), 1200.0) > 1e5, "tick {tick}: 3 hears 2");
    }
    assert_eq!(mixer.participant_stats(1).unwrap().concealed, 2 + 18, "two ticks of depth, then the 18 never sent");
}

#[test]
fn a_muted_participant_is_not_mixed_but_hears_the_room() {
    let mut phones = vec![
        (1, Phone::new(G711::Mu, 600.0, 8000.0, 1)),
        (2, Phone::new(G711::Mu, 1500.0, 8000.0, 2)),
        (3, Phone::new(G711::Mu, 0.0, 0.0, 3)),
    ];
    let mut mixer = room(&phones, MixerConfig::default());
    assert!(mixer.set_muted(1, true));
    assert!(!mixer.set_muted(9, true), "no such participant");
    let heard = run(&mut mixer, &mut phones, 30, |_, _| true);
    assert!(power(steady(&heard, 3), 600.0) < 10.0, "nobody hears the muted one");
    assert!(power(steady(&heard, 3), 1500.0) > 1e6);
    assert!(power(steady(&heard, 1), 1500.0) > 1e6, "the muted one hears the room");
    assert_eq!(mixer.is_muted(1), Some(true));
    assert!(!mixer.is_talking(1));
}

#[test]
fn only_the_loudest_talkers_are_mixed() {
    // Six talkers, louder with the id; at most 4 mixed: 1 and 2 left out.
    let tones = [300.0, 500.0, 800.0, 1100.0, 1500.0, 2100.0];
    let mut phones: Vec<(u32, Phone)> = tones
        .iter()
        .enumerate()
        .map(|(i, &f)| (i as u32 + 1, Phone::new(G711::Mu, f, 1000.0 * (i as f64 + 1.0), i as u32 + 1)))
        .collect();
    phones.push((7, Phone::new(G711::Mu, 0.0, 0.0, 7)));
    let mut mixer = room(&phones, MixerConfig { talkers_max: 4, ..MixerConfig::default() });
    let heard = run(&mut mixer, &mut phones, 30, |_, _| true);
    let listener = steady(&heard, 7);
    for (i, &f) in tones.iter().enumerate() {
        let p = power(listener, f);
        if i < 2 {
            // Mixed, talker 1's tone would give (1000 / 2)² = 250,000: what is there is the
            // other tones' leakage and G.711's quantisation noise.
            assert!(p < 2e3, "talker {} is among the quietest: not mixed ({p})", i + 1);
        } else {
            assert!(p > 1e6, "talker {} is mixed ({p})", i + 1);
        }
    }
    assert_eq!(mixer.active_speaker(), Some(6));
    // A talker left out hears the four loudest too.
    assert!(power(steady(&heard, 1), 2100.0) > 1e6);
}

#[test]
fn noise_below_the_threshold_is_left_out() {
    let mut phones = vec![(1, Phone::new(G711::Mu, 300.0, 40.0, 1)), (2, Phone::new(G711::Mu, 0.0, 0.0, 2))];
    let mut mixer = room(&phones, MixerConfig::default());
    let heard = run(&mut mixer, &mut phones, 20, |_, _| true);
    assert!(steady(&heard, 2).iter().all(|&s| s == 0), "a hiss below the threshold is not mixed");
    assert_eq!(mixer.active_speaker(), None);
    // With the threshold at zero the same hiss is mixed.
    let mut phones = vec![(1, Phone::new(G711::Mu, 300.0, 40.0, 1)), (2, Phone::new(G711::Mu, 0.0, 0.0, 2))];
    let mut mixer = room(&phones, MixerConfig { speech_threshold: 0, ..MixerConfig::default() });
    let heard = run(&mut mixer, &mut phones, 20, |_, _| true);
    assert!(rms(steady(&heard, 2)) > 20.0);
}

#[test]
fn loud_sums_saturate_instead_of_wrapping() {
    // Two talkers at nearly full scale in phase: their sum is twice what 16 bits hold.
    let mut phones = vec![
        (1, Phone::new(G711::Mu, 200.0, 30_000.0, 1)),
        (2, Phone::new(G711::Mu, 200.0, 30_000.0, 2)),
        (3, Phone::new(G711::Mu, 0.0, 0.0, 3)),
    ];
    let mut mixer = room(&phones, MixerConfig::default());
    let heard = run(&mut mixer, &mut phones, 20, |_, _| true);
    let listener = steady(&heard, 3);
    let single: Vec<i16> = {
        let mut p = Phone::new(G711::Mu, 200.0, 30_000.0, 9);
        let mut out = Vec::new();
        for _ in 0..20 {
            out.extend(p.packet()[12..].iter().map(|&c| G711::Mu.decode(c)));
        }
        out
    };
    // The listener's samples follow the tone's sign (a wrapped sum would flip it) and clip.
    let mut clipped = 0;
    for (heard, single) in listener.iter().zip(&single[FRAME_SAMPLES * 2..]) {
        if single.abs() > 2000 {
            assert_eq!(heard.signum(), single.signum(), "a sum past 16 bits keeps its sign");
        }
        clipped += usize::from(heard.abs() >= 32_000);
    }
    assert!(clipped > 100, "peaks clip at full scale: {clipped}");
}

#[test]
fn outgoing_streams_are_well_formed_rtp() {
    let mut phones = vec![(1, Phone::new(G711::Mu, 0.0, 0.0, 1)), (2, Phone::new(G711::A, 0.0, 0.0, 2))];
    phones[1].1.payload_type = 98; // a dynamic payload type negotiated for PCMA
    let mut mixer = room(&phones, MixerConfig::default());
    let heard = run(&mut mixer, &mut phones, 5, |_, _| true);
    for (id, pt) in [(1u32, 0u8), (2, 98)] {
        let headers = &heard.headers[&id];
        for (n, h) in headers.iter().enumerate() {
            assert_eq!(h[0], 0x80, "version 2, no padding, extension or CSRC");
            assert_eq!(h[1] & 0x7f, pt);
            assert_eq!(h[1] & 0x80 != 0, n == 0, "marker on the first packet only");
            assert_eq!(u16::from_be_bytes([h[2], h[3]]), 77 + n as u16);
            assert_eq!(u32::from_be_bytes([h[4], h[5], h[6], h[7]]), 5_000 + 160 * n as u32);
            assert_eq!(u32::from_be_bytes([h[8], h[9], h[10], h[11]]), 0x1000 + id);
        }
    }
    // Silence in each law is that law's silence code word.
    assert!(heard.samples[&1].iter().chain(&heard.samples[&2]).all(|&s| s.abs() <= 8));
}

#[test]
fn packets_of_any_length_and_a_wrapping_timestamp_play_continuously() {
    // 30 ms packets, timestamps crossing 2^32 in the middle.
    let mut talker = Phone::new(G711::Mu, 500.0, 8000.0, 1);
    talker.timestamp = u32::MAX - 1_000;
    let listener = Phone::new(G711::Mu, 0.0, 0.0, 2);
    let mut mixer: Mixer<u32> = Mixer::new(MixerConfig::default(), Timestamp::ZERO);
    mixer.join(1, talker.participant(11)).unwrap();
    mixer.join(2, listener.participant(12)).unwrap();
    let laws = HashMap::from([(1, G711::Mu), (2, G711::Mu)]);
    let mut heard = Heard::default();
    let mut sent_ms = 0;
    for tick in 1..=60u64 {
        while sent_ms < tick * FRAME_MS + 10 {
            mixer.receive(1, &talker.packet_of(240));
            sent_ms += 30;
        }
        mixer.handle_timeout(at(tick));
        drain(&mut mixer, &laws, &mut heard);
    }
    let stats = mixer.participant_stats(1).unwrap();
    assert_eq!((stats.late, stats.restarts), (0, 1), "one start, nothing late across the wrap");
    let samples = &heard.samples[&2][FRAME_SAMPLES * 3..];
    // Continuous: no frame of the steady part is silent.
    for frame in samples.chunks(FRAME_SAMPLES) {
        assert!(rms(frame) > 3000.0, "a gap in the played audio");
    }
    assert_eq!(mixer.participant_stats(1).unwrap().concealed, 2, "only the depth");
}

#[test]
fn late_packets_are_dropped_while_audio_waits_and_restart_a_stream_that_fell_behind() {
    let mut talker = Phone::new(G711::Mu, 500.0, 8000.0, 1);
    let mut mixer: Mixer<u32> = Mixer::new(MixerConfig::default(), Timestamp::ZERO);
    mixer.join(1, talker.participant(11)).unwrap();
    let early = talker.packet();
    let on_time = talker.packet();
    mixer.receive(1, &on_time);
    // `early`'s timestamp is one frame before the one that started playout: within the depth.
    mixer.receive(1, &early);
    assert_eq!(mixer.participant_stats(1).unwrap().late, 0);
    for tick in 1..=4 {
        mixer.handle_timeout(at(tick));
    }
    // Played past both; now a packet from before the playout point while the next waits.
    let next = talker.packet();
    let ahead = talker.packet();
    mixer.receive(1, &ahead);
    mixer.receive(1, &early);
    assert_eq!(mixer.participant_stats(1).unwrap().late, 1, "late with audio waiting: dropped");
    let _ = next;
    for tick in 5..=10 {
        mixer.handle_timeout(at(tick));
    }
    // The buffer ran dry; a packet behind the playout point now restarts the stream there.
    let restarts = mixer.participant_stats(1).unwrap().restarts;
    mixer.receive(1, &early);
    let stats = mixer.participant_stats(1).unwrap();
    assert_eq!((stats.late, stats.restarts), (1, restarts + 1));
}

#[test]
fn a_new_ssrc_or_a_jump_restarts_playout() {
    let mut talker = Phone::new(G711::Mu, 500.0, 8000.0, 1);
    let mut mixer: Mixer<u32> = Mixer::new(MixerConfig::default(), Timestamp::ZERO);
    mixer.join(1, talker.participant(11)).unwrap();
    mixer.receive(1, &talker.packet());
    talker.ssrc = 99;
    mixer.receive(1, &talker.packet());
    talker.timestamp = talker.timestamp.wrapping_add(SAMPLE_RATE * 10);
    mixer.receive(1, &talker.packet());
    assert_eq!(mixer.participant_stats(1).unwrap().restarts, 3);
}

#[test]
fn a_late_wake_plays_three_ticks_and_counts_the_rest_as_overruns() {
    let phones = vec![(1, Phone::new(G711::Mu, 0.0, 0.0, 1)), (2, Phone::new(G711::Mu, 0.0, 0.0, 2))];
    let mut mixer = room(&phones, MixerConfig::default());
    mixer.handle_timeout(at(1));
    assert_eq!(mixer.poll_timeout(), at(2));
    // Woken a second late: 50 ticks were due.
    mixer.handle_timeout(at(51));
    let stats = mixer.stats();
    assert_eq!(stats.frames, 1 + CATCH_UP_FRAMES_MAX as u64);
    assert_eq!(stats.frames + stats.frame_overruns, 51);
    assert_eq!(mixer.poll_timeout(), at(52), "back on the room's clock");
    let mut packets = 0;
    while let Some(out) = mixer.poll_output() {
        packets += usize::from(matches!(out, MixerOutput::Rtp { .. }));
    }
    assert_eq!(packets, 2 * (1 + CATCH_UP_FRAMES_MAX as usize));
    // Nothing is due before the next tick.
    mixer.handle_timeout(at(51) + Duration::from_millis(19));
    assert_eq!(mixer.stats().frames, 1 + CATCH_UP_FRAMES_MAX as u64);
}

#[test]
fn strangers_garbage_and_wrong_payload_types_are_counted_not_played() {
    let mut phones = vec![(1, Phone::new(G711::Mu, 500.0, 8000.0, 1)), (2, Phone::new(G711::Mu, 0.0, 0.0, 2))];
    let mut mixer = room(&phones, MixerConfig::default());
    mixer.receive(1, b"not rtp");
    mixer.receive(1, &[0x80, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xd5, 0xd5]); // PCMA to a PCMU participant
    mixer.receive(42, &phones[0].1.packet()); // nobody
    assert_eq!(mixer.participant_stats(1).unwrap().rejected, 2);
    assert_eq!(mixer.participant_stats(42), None);
    // Seeded random datagrams and timestamps: never a panic, the ring stays bounded.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for tick in 1..=200u64 {
        for _ in 0..20 {
            let len = (next() % 600) as usize;
            let mut datagram: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 12 && next() % 2 == 0 {
                datagram[0] = 0x80;
                datagram[1] = 0;
            }
            mixer.receive(1, &datagram);
        }
        mixer.receive(2, &phones[1].1.packet());
        mixer.handle_timeout(at(tick));
        while mixer.poll_output().is_some() {}
    }
    assert!(mixer.participant_stats(1).unwrap().packets > 0, "some of the noise was RTP");
}

#[test]
fn joining_leaving_and_the_speaker_going() {
    let mut phones = vec![(1, Phone::new(G711::Mu, 500.0, 8000.0, 1)), (2, Phone::new(G711::Mu, 0.0, 0.0, 2))];
    let mut mixer = room(&phones, MixerConfig::default());
    assert_eq!(mixer.join(1, phones[0].1.participant(5)), Err(JoinError::AlreadyJoined));
    let heard = run(&mut mixer, &mut phones, 10, |_, _| true);
    assert_eq!(heard.speakers, vec![Some(1)]);
    assert!(mixer.is_talking(1));
    assert!(mixer.leave(1));
    assert!(!mixer.is_talking(1) && !mixer.is_talking(2), "nobody left talking until the next tick");
    assert!(!mixer.leave(1));
    assert_eq!(mixer.poll_output(), Some(MixerOutput::Speaker(None)));
    assert_eq!(mixer.participants().collect::<Vec<_>>(), vec![2]);
    mixer.handle_timeout(at(11));
    let outputs: Vec<_> = std::iter::from_fn(|| mixer.poll_output()).collect();
    assert_eq!(outputs.len(), 1, "one packet, to the one left");
    assert!(mixer.leave(2));
    assert!(mixer.is_empty());
    let mut full: Mixer<u32> = Mixer::new(MixerConfig::default(), Timestamp::ZERO);
    for id in 0..PARTICIPANTS_MAX as u32 {
        full.join(id, phones[1].1.participant(id)).unwrap();
    }
    assert_eq!(full.join(u32::MAX, phones[1].1.participant(0)), Err(JoinError::Full));
}

#[test]
fn one_in_the_lobby_hears_only_its_prompt_and_is_not_heard() {
    let mut phones = vec![
        (1, Phone::new(G711::Mu, 600.0, 8000.0, 1)),
        (2, Phone::new(G711::Mu, 1500.0, 8000.0, 2)),
        (3, Phone::new(G711::A, 0.0, 0.0, 3)),
    ];
    let mut mixer = room(&phones, MixerConfig::default());
    assert!(mixer.set_in_lobby(2, true));
    assert!(!mixer.set_in_lobby(9, true), "no such participant");
    let prompt: Vec<i16> = (0..FRAME_SAMPLES * 10)
        .map(|i| (5000.0 * (2.0 * PI * 2400.0 * i as f64 / f64::from(SAMPLE_RATE)).sin()) as i16)
        .collect();
    assert!(mixer.play(2, prompt.into()));
    let heard = run(&mut mixer, &mut phones, 30, |_, _| true);
    let lobby = &heard.samples[&2];
    // The prompt plays from the first tick, alone: the room's talker is not in it.
    assert!(power(&lobby[..FRAME_SAMPLES * 10], 2400.0) > 1e6);
    assert!(power(&lobby[..FRAME_SAMPLES * 10], 600.0) < 10.0, "the lobby hears nothing of the room");
    // After the prompt: silence.
    assert!(rms(&lobby[FRAME_SAMPLES * 11..]) < 10.0);
    // Nobody hears the one in the lobby, though it sends a loud tone.
    assert!(power(steady(&heard, 3), 1500.0) < 10.0);
    assert!(power(steady(&heard, 3), 600.0) > 1e6);
    // Out of the lobby it is in the room both ways.
    mixer.set_in_lobby(2, false);
    let heard = run_from(&mut mixer, &mut phones, 30, 30, |_, _| true);
    assert!(power(steady(&heard, 3), 1500.0) > 1e6);
    assert!(power(steady(&heard, 2), 600.0) > 1e6);
}

#[test]
fn a_prompt_is_heard_over_the_room_by_its_listener_only() {
    let mut phones = vec![
        (1, Phone::new(G711::Mu, 600.0, 8000.0, 1)),
        (2, Phone::new(G711::Mu, 0.0, 0.0, 2)),
        (3, Phone::new(G711::Mu, 0.0, 0.0, 3)),
    ];
    let mut mixer = room(&phones, MixerConfig::default());
    let prompt: Vec<i16> = (0..FRAME_SAMPLES * 40)
        .map(|i| (4000.0 * (2.0 * PI * 2400.0 * i as f64 / f64::from(SAMPLE_RATE)).sin()) as i16)
        .collect();
    // A prompt to the talker: it hears the prompt and still not itself.
    let prompt: std::sync::Arc<[i16]> = prompt.into();
    assert!(mixer.play(1, prompt.clone()));
    assert!(mixer.play(2, prompt));
    let heard = run(&mut mixer, &mut phones, 30, |_, _| true);
    assert!(power(steady(&heard, 1), 2400.0) > 1e6);
    assert!(power(steady(&heard, 1), 600.0) < 100.0, "the talker never hears itself");
    assert!(power(steady(&heard, 2), 2400.0) > 1e6);
    assert!(power(steady(&heard, 2), 600.0) > 1e6, "the room goes on under the prompt");
    assert!(power(steady(&heard, 3), 2400.0) < 10.0, "only its listener hears a prompt");
    // An over-long prompt is cut to the bound.
    mixer.play(3, vec![1000; PROMPT_SAMPLES_MAX * 2].into());
    let mut frames = 0;
    let laws: HashMap<u32, G711> = phones.iter().map(|(id, p)| (*id, p.law)).collect();
    let mut heard = Heard::default();
    for frame in 0..(PROMPT_SAMPLES_MAX / FRAME_SAMPLES + 5) as u64 {
        mixer.handle_timeout(at(31 + frame));
        drain(&mut mixer, &laws, &mut heard);
        frames += 1;
    }
    let samples = &heard.samples[&3];
    assert_eq!(samples.len(), frames * FRAME_SAMPLES);
    // The room fell silent within a few frames (its talker stopped); the prompt goes on to the
    // bound and no further.
    assert!(samples[FRAME_SAMPLES * 10..PROMPT_SAMPLES_MAX].iter().all(|s| s.abs() > 500));
    assert!(samples[PROMPT_SAMPLES_MAX..].iter().all(|s| s.abs() < 100));
}

//! The office's audio in conference rooms, and how a listener tells who it hears.
//!
//! Each participant talks at a tone of its own ([`TONES_HZ`]): a sine whose frequency is a
//! multiple of 50 Hz, so that one 20 ms frame (160 samples at 8 kHz) holds a whole number of
//! its periods — every frame of it is the same 160 G.711 bytes ([`tone_frame`]), and over a
//! frame the tones are orthogonal: the DFT bin of one holds nothing of another. The room's
//! mixer decodes, sums and re-encodes what it hears (G.711 both ways), adds its prompts (tones
//! of 1 kHz and below, `pbx_actors::conference::tones`), and conceals a lost frame by
//! repeating the last at ½ and ¼ of its level; none of that moves energy from one tone's bin
//! to another's beyond a few per cent, so one DFT bin says whose tone a received frame holds, and how loud ([`Frame::amplitude`]: a dot product with the tone's
//! cosine and sine over the frame, tables built once in a [`ToneTable`]).
//!
//! A talker's level is [`TONE_AMPLITUDE`]: four talkers (the mixer's `talkers_max`) and a
//! prompt sum to less than full scale, so no mix clips. [`HEARD_MIN`] is a fifth of it (the
//! last concealed frame of a talker, at a quarter, still counts as heard); [`ABSENT_MAX`] is
//! the same level seen from the other side: more than that of a tone in a frame means its talker is in it.
//! The unit tests below hold the prompts, the G.711 round trips and a full mix to those bounds.

use pbx_actors::media::g711::G711;

/// Samples in one 20 ms frame at 8 kHz: the mixer's frame and the phones' packet.
pub const FRAME_SAMPLES: usize = 160;
const SAMPLE_RATE: f64 = 8_000.0;
/// Partial sums a bin is computed in.
const LANES: usize = 8;
const _: () = assert!(FRAME_SAMPLES.is_multiple_of(LANES));
/// The talkers' tones: far above the prompts' (at most 1 kHz), 100 Hz (two bins) apart.
pub const TONES_HZ: [u32; 16] =
    [2000, 2100, 2200, 2300, 2400, 2500, 2600, 2700, 2800, 2900, 3000, 3100, 3200, 3300, 3400, 3500];
/// A talker's amplitude (16-bit scale): 4 × this plus a prompt (10 362) stays below 32 767.
pub const TONE_AMPLITUDE: f64 = 5_000.0;
/// A tone at least this loud in a frame: its talker is heard (its last concealed frame, at a
/// quarter of its level, too).
pub const HEARD_MIN: f64 = TONE_AMPLITUDE / 5.0;
/// A tone louder than this in a frame: its talker is in it (what must not be, for oneself or
/// a muted participant).
pub const ABSENT_MAX: f64 = HEARD_MIN;
/// A frame whose mean is further from zero than this holds something no office phone sent:
/// tones over whole periods have no mean, the prompts' partial periods little (< 300); the
/// attacker's constant payload decodes to a mean of thousands.
pub const MEAN_MAX: f64 = 1_500.0;

const _: () = assert!(TONE_AMPLITUDE * 4.0 + 10_362.0 < 32_767.0);
const _: () = {
    let mut i = 0;
    while i < TONES_HZ.len() {
        assert!(TONES_HZ[i].is_multiple_of(50) && TONES_HZ[i] > 1_000 && TONES_HZ[i] < 4_000);
        i += 1;
    }
};

/// One frame of the tone at `hz` (a multiple of 50 Hz), µ-law: the payload of every packet its
/// talker sends while talking.
pub fn tone_frame(hz: u32) -> [u8; FRAME_SAMPLES] {
    let mut frame = [0u8; FRAME_SAMPLES];
    for (n, byte) in frame.iter_mut().enumerate() {
        let phase = 2.0 * std::f64::consts::PI * f64::from(hz) * n as f64 / SAMPLE_RATE;
        *byte = G711::Mu.encode((phase.sin() * TONE_AMPLITUDE).round() as i16);
    }
    frame
}

/// One received frame, decoded, ready to be asked how loud a tone is in it.
pub struct Frame {
    samples: [f32; FRAME_SAMPLES],
    /// How many of the samples the payload held (a short payload is zero-padded).
    len: usize,
}

impl Frame {
    /// A µ-law payload (at most one frame is read).
    pub fn decode(table: &ToneTable, payload: &[u8]) -> Frame {
        let mut samples = [0f32; FRAME_SAMPLES];
        for (s, &b) in samples.iter_mut().zip(payload) {
            *s = table.mu_law[usize::from(b)];
        }
        Frame { samples, len: payload.len().min(FRAME_SAMPLES) }
    }

    /// The amplitude of the tone at `hz` in the frame (one DFT bin; `hz` a multiple of 50 Hz,
    /// of which a frame holds whole periods): a pure tone of amplitude A gives A.
    pub fn amplitude(&self, table: &ToneTable, hz: u32) -> f64 {
        let Some((cos, sin)) = table.bins.get(&hz) else { return 0.0 };
        // Eight partial sums side by side (the compiler keeps them in one vector register),
        // added up in a fixed order: the same result on every run.
        let (mut re, mut im) = ([0f32; LANES], [0f32; LANES]);
        let chunks = self.samples.chunks_exact(LANES).zip(cos.chunks_exact(LANES)).zip(sin.chunks_exact(LANES));
        for ((x, c), s) in chunks {
            for i in 0..LANES {
                re[i] += x[i] * c[i];
                im[i] += x[i] * s[i];
            }
        }
        let (re, im): (f32, f32) = (re.iter().sum(), im.iter().sum());
        2.0 * f64::from(re.hypot(im)) / FRAME_SAMPLES as f64
    }

    /// The mean of the samples (their DC component).
    pub fn mean(&self) -> f64 {
        if self.len == 0 {
            return 0.0;
        }
        f64::from(self.samples[..self.len].iter().sum::<f32>()) / self.len as f64
    }
}

/// The DFT bins of the talkers' tones over one frame (cosine and sine tables) and µ-law's
/// code words as samples, built once.
pub struct ToneTable {
    bins: std::collections::BTreeMap<u32, Bin>,
    mu_law: [f32; 256],
}

type Bin = (Box<[f32; FRAME_SAMPLES]>, Box<[f32; FRAME_SAMPLES]>);

impl Default for ToneTable {
    fn default() -> Self {
        let bins = TONES_HZ
            .iter()
            .map(|&hz| {
                let (mut cos, mut sin) = (Box::new([0f32; FRAME_SAMPLES]), Box::new([0f32; FRAME_SAMPLES]));
                for n in 0..FRAME_SAMPLES {
                    let phase = 2.0 * std::f64::consts::PI * f64::from(hz) * n as f64 / SAMPLE_RATE;
                    cos[n] = phase.cos() as f32;
                    sin[n] = phase.sin() as f32;
                }
                (hz, (cos, sin))
            })
            .collect();
        let mut mu_law = [0f32; 256];
        for (code, sample) in mu_law.iter_mut().enumerate() {
            *sample = f32::from(G711::Mu.decode(code as u8));
        }
        ToneTable { bins, mu_law }
    }
}

impl std::fmt::Debug for ToneTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToneTable").field("tones", &self.bins.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::conference::room::Prompt;
    use pbx_actors::conference::tones;

    const PROMPTS: [Prompt; 10] = Prompt::ALL;

    fn linear(hz: u32) -> Vec<i16> {
        tone_frame(hz).iter().map(|&b| G711::Mu.decode(b)).collect()
    }

    /// What the mixer sends a listener: the talkers' decoded frames (at `levels`, its
    /// concealment) and a prompt's frame summed, saturated, µ-law encoded — then decoded.
    fn mixed(table: &ToneTable, talkers: &[(u32, i32)], prompt: &[i16]) -> Frame {
        let mut sum = [0i32; FRAME_SAMPLES];
        for &(hz, shift) in talkers {
            for (s, x) in sum.iter_mut().zip(linear(hz)) {
                *s += i32::from(x >> shift);
            }
        }
        for (s, &p) in sum.iter_mut().zip(prompt) {
            *s += i32::from(p);
        }
        let encoded: Vec<u8> = sum.iter().map(|&s| G711::Mu.encode(s.clamp(-32_768, 32_767) as i16)).collect();
        Frame::decode(table, &encoded)
    }

    // Proves a tone is heard at its own frequency and at no other of the table.
    #[test]
    fn each_tone_is_in_its_own_bin_only() {
        let table = ToneTable::default();
        for &hz in &TONES_HZ {
            let frame = Frame::decode(&table, &tone_frame(hz));
            let own = frame.amplitude(&table, hz);
            assert!((own - TONE_AMPLITUDE).abs() < 250.0, "{hz}: {own}");
            assert!(frame.mean().abs() < 50.0, "{hz}");
            for &other in TONES_HZ.iter().filter(|&&o| o != hz) {
                let a = frame.amplitude(&table, other);
                assert!(a < 100.0, "{hz} leaks into {other}: {a}");
            }
        }
    }

    // Proves the mixer's worst case keeps the bounds: four talkers (one concealed at ¼), each
    // prompt's every frame on top; every talker heard, every other tone absent, the mean small.
    #[test]
    fn a_full_mix_with_any_prompt_keeps_every_tone_apart() {
        let table = ToneTable::default();
        let talkers = [(2000, 0), (2700, 0), (3100, 1), (3500, 2)];
        for prompt in PROMPTS {
            let samples = tones::render(prompt);
            for chunk in samples.chunks(FRAME_SAMPLES).chain(std::iter::once(&[][..])) {
                let heard = mixed(&table, &talkers, chunk);
                for &(hz, shift) in &talkers {
                    let a = heard.amplitude(&table, hz);
                    assert!(a >= HEARD_MIN && a >= TONE_AMPLITUDE / f64::from(1 << shift) * 0.9, "{hz}: {a}");
                }
                for &hz in TONES_HZ.iter().filter(|hz| !talkers.iter().any(|(t, _)| t == *hz)) {
                    let a = heard.amplitude(&table, hz);
                    assert!(a < ABSENT_MAX / 3.0, "{prompt:?}: {hz} Hz at {a}");
                }
                assert!(heard.mean().abs() < MEAN_MAX / 3.0, "{prompt:?}: mean {}", heard.mean());
            }
        }
    }

    // Proves the attacker's payload (a constant byte) is told from office audio by its mean.
    #[test]
    fn a_constant_payload_has_a_mean() {
        let frame = Frame::decode(&ToneTable::default(), &[crate::attacker::ATTACK_PAYLOAD; FRAME_SAMPLES]);
        assert!(frame.mean().abs() > MEAN_MAX * 2.0, "{}", frame.mean());
    }
}

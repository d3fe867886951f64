//! Audio for checking what the media path delivered: G.711 µ-law and A-law (ITU-T G.711),
//! test signals, a Goertzel tone detector and 16-bit PCM WAV files.
//!
//! Written here, independent of the product's codecs in `actors/src/media`, so the end-to-end
//! tests check pbx's transcoding against a second implementation. The encoders follow the
//! classic Sun reference (`g711.c`): segment search, 4-bit mantissa, µ-law with a bias of 0x84.
//! Not here: resampling, other codecs, WAV formats other than 16-bit integer PCM.

use std::io;
use std::path::Path;

/// The G.711 sample rate (Hz).
pub const G711_RATE_HZ: u32 = 8_000;

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32_635;

/// One linear sample to µ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let value = i32::from(sample);
    let sign = if value < 0 { 0x80 } else { 0x00 };
    let magnitude = value.abs().min(ULAW_CLIP) + ULAW_BIAS;
    // magnitude is in 0x84..=0x7FFF: its top bit is bit 7..=14, the segment 0..=7.
    let exponent = (31 - magnitude.leading_zeros() as i32 - 7) as u8;
    let mantissa = ((magnitude >> (exponent + 3)) & 0x0F) as u8;
    !(sign | (exponent << 4) | mantissa)
}

/// One µ-law byte to a linear sample.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let byte = !byte;
    let exponent = (byte >> 4) & 0x07;
    let mantissa = i32::from(byte & 0x0F);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    (if byte & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// One linear sample to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let value = i32::from(sample);
    // Negative values map to -value - 1 so that -32768 stays in range.
    let (mask, magnitude) = if value >= 0 { (0xD5, value) } else { (0x55, -value - 1) };
    // magnitude <= 32767 < 0x100 << 7, so a segment is always found.
    let segment = (0..8).find(|s| magnitude < (0x100 << s)).unwrap_or(7);
    let shift = if segment < 2 { 4 } else { segment + 3 };
    ((segment << 4) | ((magnitude >> shift) & 0x0F)) as u8 ^ mask
}

/// One A-law byte to a linear sample.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let byte = byte ^ 0x55;
    let segment = i32::from((byte & 0x70) >> 4);
    let mut magnitude = i32::from(byte & 0x0F) << 4;
    magnitude += match segment {
        0 => 8,
        _ => 0x108,
    };
    if segment > 1 {
        magnitude <<= segment - 1;
    }
    (if byte & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

/// The G.711 payload types (RFC 3551 table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum G711 {
    /// Payload type 0.
    Pcmu,
    /// Payload type 8.
    Pcma,
}

impl G711 {
    pub fn from_payload_type(payload_type: u8) -> Option<G711> {
        match payload_type {
            0 => Some(G711::Pcmu),
            8 => Some(G711::Pcma),
            _ => None,
        }
    }

    pub fn payload_type(self) -> u8 {
        match self {
            G711::Pcmu => 0,
            G711::Pcma => 8,
        }
    }

    /// The SDP encoding name (`a=rtpmap:<pt> <name>/8000`).
    pub fn name(self) -> &'static str {
        match self {
            G711::Pcmu => "PCMU",
            G711::Pcma => "PCMA",
        }
    }

    pub fn encode(self, samples: &[i16]) -> Vec<u8> {
        let f = match self {
            G711::Pcmu => linear_to_ulaw,
            G711::Pcma => linear_to_alaw,
        };
        samples.iter().map(|&s| f(s)).collect()
    }

    pub fn decode(self, bytes: &[u8]) -> Vec<i16> {
        let f = match self {
            G711::Pcmu => ulaw_to_linear,
            G711::Pcma => alaw_to_linear,
        };
        bytes.iter().map(|&b| f(b)).collect()
    }
}

/// The largest difference a G.711 µ-law ↔ A-law conversion may introduce at `reference`:
/// about one quantisation step of the coarser law at that level (4-bit mantissa, so a step is
/// at most 1/16 of the value), and at least 32 near zero where both laws are fine-grained.
pub fn g711_conversion_tolerance(reference: i16) -> i32 {
    (i32::from(reference).abs() / 16).max(32)
}

/// `seconds` of a sine at `frequency_hz`, peak `amplitude`, sampled at `rate_hz`.
pub fn tone(frequency_hz: f64, rate_hz: u32, seconds: f64, amplitude: f64) -> Vec<i16> {
    let n = (f64::from(rate_hz) * seconds).round() as usize;
    (0..n)
        .map(|i| (amplitude * (2.0 * std::f64::consts::PI * frequency_hz * i as f64 / f64::from(rate_hz)).sin()) as i16)
        .collect()
}

/// A linear sweep from `from_hz` to `to_hz` over `seconds`: unlike a tone it never repeats, so
/// a received copy can be aligned with what was sent without ambiguity.
pub fn chirp(from_hz: f64, to_hz: f64, rate_hz: u32, seconds: f64, amplitude: f64) -> Vec<i16> {
    let n = (f64::from(rate_hz) * seconds).round() as usize;
    let rate = (to_hz - from_hz) / seconds;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate_hz);
            (amplitude * (2.0 * std::f64::consts::PI * (from_hz * t + rate * t * t / 2.0)).sin()) as i16
        })
        .collect()
}

/// The Goertzel power of `samples` at `frequency_hz`: |X(f)|² of a one-bin DFT.
pub fn goertzel_power(samples: &[i16], rate_hz: u32, frequency_hz: f64) -> f64 {
    let coefficient = 2.0 * (2.0 * std::f64::consts::PI * frequency_hz / f64::from(rate_hz)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s = f64::from(x) + coefficient * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coefficient * s1 * s2
}

/// The share (0..=1) of the signal's energy that is a sine at `frequency_hz`: about 1 for a
/// clean tone whose frequency falls on a DFT bin of the window, about 0 for silence or another
/// frequency.
pub fn tone_share(samples: &[i16], rate_hz: u32, frequency_hz: f64) -> f64 {
    let energy: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    if samples.is_empty() || energy == 0.0 {
        return 0.0;
    }
    2.0 * goertzel_power(samples, rate_hz, frequency_hz) / (samples.len() as f64 * energy)
}

/// The frequency (10 Hz steps from 50 Hz to Nyquist) with the largest Goertzel power.
pub fn dominant_frequency(samples: &[i16], rate_hz: u32) -> f64 {
    let top = rate_hz / 2;
    (5..top / 10)
        .map(|step| f64::from(step * 10))
        .map(|f| (f, goertzel_power(samples, rate_hz, f)))
        .fold((0.0, f64::MIN), |best, (f, p)| if p > best.1 { (f, p) } else { best })
        .0
}

/// A 16-bit PCM WAV file's content.
#[derive(Debug, Clone, PartialEq)]
pub struct Wav {
    pub rate_hz: u32,
    pub channels: u16,
    /// Interleaved when `channels > 1`.
    pub samples: Vec<i16>,
}

impl Wav {
    /// The first channel only.
    pub fn mono(&self) -> Vec<i16> {
        self.samples.iter().step_by(usize::from(self.channels.max(1))).copied().collect()
    }
}

/// Writes mono 16-bit PCM.
pub fn write_wav(path: &Path, rate_hz: u32, samples: &[i16]) -> io::Result<()> {
    let data_len = u32::try_from(samples.len() * 2).map_err(|_| invalid("WAV data over 4 GiB"))?;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate_hz.to_le_bytes());
    out.extend_from_slice(&(rate_hz * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out)
}

/// Reads 16-bit PCM. A data chunk whose size is 0 or runs past the end (a recorder killed
/// before it rewrote the header) is taken to be the rest of the file.
pub fn read_wav(path: &Path) -> io::Result<Wav> {
    let bytes = std::fs::read(path)?;
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(invalid("not a RIFF/WAVE file"));
    }
    let mut format: Option<(u16, u16, u32, u16)> = None;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]) as usize;
        let body = at + 8;
        if id == b"fmt " {
            let f = bytes.get(body..body + 16).ok_or_else(|| invalid("short fmt chunk"))?;
            let le16 = |i: usize| u16::from_le_bytes([f[i], f[i + 1]]);
            format = Some((le16(0), le16(2), u32::from_le_bytes([f[4], f[5], f[6], f[7]]), le16(14)));
        } else if id == b"data" {
            let (tag, channels, rate_hz, bits) = format.ok_or_else(|| invalid("data chunk before fmt chunk"))?;
            // 0xFFFE is WAVE_FORMAT_EXTENSIBLE, which libsndfile writes for some layouts.
            if !(tag == 1 || tag == 0xFFFE) || bits != 16 {
                return Err(invalid(&format!("unsupported WAV format tag {tag} with {bits} bits")));
            }
            let end = if size == 0 || body + size > bytes.len() { bytes.len() } else { body + size };
            let samples = bytes[body..end].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
            return Ok(Wav { rate_hz, channels, samples });
        }
        at = body + size + (size & 1);
    }
    Err(invalid("no data chunk"))
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every µ-law and A-law byte decodes to a value that encodes back to the same byte (the
    /// two laws' negative zero aside), so encoder and decoder agree with each other.
    #[test]
    fn every_g711_byte_round_trips() {
        for byte in 0..=255u8 {
            let u = ulaw_to_linear(byte);
            if u != 0 {
                assert_eq!(linear_to_ulaw(u), byte, "µ-law {byte:#04x} → {u}");
            }
            let a = alaw_to_linear(byte);
            assert_eq!(linear_to_alaw(a), byte, "A-law {byte:#04x} → {a}");
        }
    }

    /// Known points of the G.711 tables: silence, full scale, and the sign bit.
    #[test]
    fn g711_matches_reference_points() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0xAA), 32_256);
        assert_eq!(alaw_to_linear(0x2A), -32_256);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    /// Encoding then decoding keeps every sample within the conversion tolerance, both laws,
    /// and µ-law → A-law through linear stays within it too.
    #[test]
    fn g711_error_stays_within_tolerance() {
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            for law in [G711::Pcmu, G711::Pcma] {
                let back = law.decode(&law.encode(&[s]))[0];
                assert!(
                    (i32::from(back) - i32::from(s)).abs() <= g711_conversion_tolerance(s),
                    "{law:?}: {s} → {back}"
                );
            }
            let mu = ulaw_to_linear(linear_to_ulaw(s));
            let a = alaw_to_linear(linear_to_alaw(mu));
            assert!((i32::from(a) - i32::from(mu)).abs() <= g711_conversion_tolerance(mu), "{s}: µ {mu} → A {a}");
        }
    }

    /// The Goertzel detector finds a tone's frequency and tells it from another one.
    #[test]
    fn goertzel_finds_the_tone() {
        let samples = tone(1000.0, G711_RATE_HZ, 0.5, 8000.0);
        assert_eq!(dominant_frequency(&samples, G711_RATE_HZ), 1000.0);
        assert!(tone_share(&samples, G711_RATE_HZ, 1000.0) > 0.95);
        assert!(tone_share(&samples, G711_RATE_HZ, 600.0) < 0.01);
        assert_eq!(tone_share(&[0; 400], G711_RATE_HZ, 1000.0), 0.0);
        let coded = G711::Pcmu.decode(&G711::Pcmu.encode(&samples));
        assert_eq!(dominant_frequency(&coded, G711_RATE_HZ), 1000.0);
    }

    /// A written WAV reads back identically; a header whose data size was never filled in
    /// still yields every sample.
    #[test]
    fn wav_round_trips_and_tolerates_an_unfinished_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let samples = tone(440.0, 16_000, 0.1, 1000.0);
        write_wav(&path, 16_000, &samples).unwrap();
        let wav = read_wav(&path).unwrap();
        assert_eq!(wav, Wav { rate_hz: 16_000, channels: 1, samples: samples.clone() });
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40..44].copy_from_slice(&0u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_wav(&path).unwrap().samples, samples);
        std::fs::write(&path, b"RIFF\0\0\0\0WAVEdata").unwrap();
        assert!(read_wav(&path).is_err());
    }
}

//! The room's prompts, synthesised: no audio files are shipped. Each prompt is a short pattern
//! of sine tones at 8 kHz (16-bit linear, ready for the mixer's G.711 encoders), distinct
//! enough to tell apart by ear: rising for joining, falling for leaving, a repeated beep for
//! "key your PIN", a low buzz for "wrong" and "not allowed". Speech (espeak-ng) is not used;
//! the room's number and name are said by nobody.

use super::room::Prompt;
use crate::media::mixer::SAMPLE_RATE;
/// The level of every tone: −10 dBov, loud enough over a talker, far from clipping in a mix.
const AMPLITUDE: f64 = 10_362.0;

/// One step of a prompt: tone frequencies in Hz (one or two, summed), then milliseconds of it.
type Step = (&'static [f64], u32);

/// A prompt's steps; an empty frequency list is a pause.
pub fn pattern(prompt: Prompt) -> &'static [Step] {
    match prompt {
        Prompt::EnterPin => &[(&[880.0], 120), (&[], 80), (&[880.0], 120), (&[], 80), (&[880.0], 120)],
        Prompt::WrongPin => &[(&[300.0, 330.0], 500)],
        Prompt::Joined => &[(&[523.25], 120), (&[659.25], 120), (&[783.99], 160)],
        Prompt::SomeoneJoined => &[(&[659.25], 100), (&[783.99], 140)],
        Prompt::SomeoneLeft => &[(&[783.99], 100), (&[523.25], 140)],
        Prompt::Muted => &[(&[440.0], 200)],
        Prompt::Unmuted => &[(&[880.0], 200)],
        Prompt::Locked => &[(&[600.0], 150), (&[], 60), (&[600.0], 150)],
        Prompt::Unlocked => &[(&[1000.0], 150), (&[], 60), (&[1000.0], 150)],
        Prompt::NotAllowed => &[(&[300.0, 330.0], 200), (&[], 60), (&[300.0, 330.0], 200)],
    }
}

/// The prompt as 8 kHz samples, rendered once per process and shared by every listener.
pub fn prompt(prompt: Prompt) -> std::sync::Arc<[i16]> {
    static RENDERED: std::sync::OnceLock<Vec<std::sync::Arc<[i16]>>> = std::sync::OnceLock::new();
    let all = RENDERED.get_or_init(|| Prompt::ALL.iter().map(|&p| render(p).into()).collect());
    let index = Prompt::ALL.iter().position(|&p| p == prompt).expect("every prompt is in Prompt::ALL");
    all[index].clone()
}

/// The prompt as 8 kHz samples. Each tone rises and falls over 5 ms, so it starts and ends
/// without a click.
pub fn render(prompt: Prompt) -> Vec<i16> {
    let mut out = Vec::new();
    for &(tones, ms) in pattern(prompt) {
        let n = (SAMPLE_RATE * ms / 1000) as usize;
        let ramp = (SAMPLE_RATE as usize * 5 / 1000).min(n / 2).max(1);
        for i in 0..n {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            let edge = (i.min(n - 1 - i) as f64 / ramp as f64).min(1.0);
            let level = AMPLITUDE / tones.len().max(1) as f64 * edge;
            let sample: f64 = tones.iter().map(|f| (2.0 * std::f64::consts::PI * f * t).sin() * level).sum();
            out.push(sample.round() as i16);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::tone_power::power;

    const ALL: [Prompt; 10] = Prompt::ALL;

    #[test]
    fn every_step_sounds_its_frequencies_for_its_length() {
        for prompt in ALL {
            let samples = render(prompt);
            let total: u32 = pattern(prompt).iter().map(|(_, ms)| ms).sum();
            assert_eq!(samples.len() as u32, total * SAMPLE_RATE / 1000, "{prompt:?}");
            assert!(total <= 600, "{prompt:?} is short: {total} ms");
            let mut at = 0;
            for &(tones, ms) in pattern(prompt) {
                let n = (SAMPLE_RATE * ms / 1000) as usize;
                let step = &samples[at..at + n];
                if tones.is_empty() {
                    assert!(step.iter().all(|&s| s == 0), "{prompt:?}: a pause is silent");
                } else {
                    for &f in tones {
                        // A pure tone of amplitude A gives (A/2)²; the edges take a little.
                        let expected = (AMPLITUDE / tones.len() as f64 / 2.0).powi(2);
                        assert!(power(step, f) > expected * 0.8, "{prompt:?}: {f} Hz present");
                    }
                    assert!(power(step, 2000.0) < 1_000.0, "{prompt:?}: nothing at 2 kHz");
                }
                at += n;
            }
        }
    }

    #[test]
    fn prompts_are_distinct_and_never_clip() {
        let rendered: Vec<Vec<i16>> = ALL.iter().map(|p| render(*p)).collect();
        for (i, a) in rendered.iter().enumerate() {
            assert!(a.iter().all(|s| s.unsigned_abs() <= AMPLITUDE as u16 + 1));
            assert_eq!(a.first(), Some(&0), "starts without a click");
            for b in &rendered[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}

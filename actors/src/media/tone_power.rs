//! Test helper: how much of one frequency 8 kHz audio holds (Goertzel), for tests that check
//! what a listener hears by its tones.

/// Power of `freq` Hz in `samples` (8 kHz), normalised by length: a pure tone of amplitude A
/// gives (A/2)².
pub(crate) fn power(samples: &[i16], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(super::mixer::SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len() as f64).powi(2)
}

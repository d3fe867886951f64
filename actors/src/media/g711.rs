//! ITU-T G.711 (11/88) companding: µ-law (PCMU, RTP payload type 0) and A-law (PCMA, 8), the
//! two codecs every SIP phone speaks, and direct µ-law↔A-law conversion for a relay that
//! bridges a phone of each kind.
//!
//! The encoders take 16-bit linear PCM and keep its top 14 (µ-law) or 13 (A-law) bits, as
//! G.711 defines them; the arithmetic is the classic one of the Sun/CCITT reference code,
//! which matches the tables of G.711 §3 and §4. The conversion tables are built at compile
//! time as decode-then-encode, so a transcoded sample is exactly what a decoder followed by an
//! encoder would give (not G.711 Table 3/4's transparency-optimised mapping, which differs in
//! a few code words).
//!
//! Not done: Appendix I packet-loss concealment, Appendix II comfort noise, G.711.1.

/// The two G.711 laws. Which one a phone uses is negotiated in SDP (`PCMU/8000`, `PCMA/8000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum G711 {
    /// µ-law, North America and Japan; RTP static payload type 0.
    Mu,
    /// A-law, the rest of the world; RTP static payload type 8.
    A,
}

impl G711 {
    /// The code word to linear PCM.
    pub fn decode(self, code: u8) -> i16 {
        match self {
            G711::Mu => ulaw_to_linear(code),
            G711::A => alaw_to_linear(code),
        }
    }

    /// Linear PCM to the code word of the quantisation interval it falls in.
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            G711::Mu => linear_to_ulaw(sample),
            G711::A => linear_to_alaw(sample),
        }
    }

    /// The RTP static payload type of RFC 3551 Table 4.
    pub fn static_payload_type(self) -> u8 {
        match self {
            G711::Mu => 0,
            G711::A => 8,
        }
    }

    /// Rewrites `payload` (one code word per sample) from this law to `to`, in place. The
    /// sample count, and so the RTP timestamp, does not change.
    pub fn transcode(self, to: G711, payload: &mut [u8]) {
        let table = match (self, to) {
            (G711::Mu, G711::A) => &ULAW_TO_ALAW,
            (G711::A, G711::Mu) => &ALAW_TO_ULAW,
            _ => return,
        };
        for byte in payload {
            *byte = table[*byte as usize];
        }
    }
}

/// µ-law adds this bias before finding the segment, so that segment boundaries fall on powers
/// of two (G.711 Table 2's decision values, scaled to 16 bits).
const ULAW_BIAS: i32 = 0x84;
/// The largest magnitude µ-law represents; larger input saturates to the last step.
const ULAW_CLIP: i32 = 32635;

/// The segment (chord) of a magnitude: segments double in width from `first_end` on; 8 means
/// beyond the last one.
const fn segment(magnitude: i32, first_end: i32) -> i32 {
    let mut seg = 0;
    while seg < 8 && magnitude >= (first_end << seg) {
        seg += 1;
    }
    seg
}

pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let mut pcm = sample as i32;
    let sign = if pcm < 0 { 0x80 } else { 0 };
    if pcm < 0 {
        pcm = -pcm;
    }
    if pcm > ULAW_CLIP {
        pcm = ULAW_CLIP;
    }
    pcm += ULAW_BIAS;
    let seg = segment(pcm, 0x100); // < 8: the clip keeps pcm below 0x8000
    let mantissa = (pcm >> (seg + 3)) & 0x0F;
    !((sign | (seg << 4) | mantissa) as u8)
}

pub const fn ulaw_to_linear(code: u8) -> i16 {
    let code = !code as i32;
    let magnitude = ((((code & 0x0F) << 3) + ULAW_BIAS) << ((code & 0x70) >> 4)) - ULAW_BIAS;
    if code & 0x80 != 0 { -magnitude as i16 } else { magnitude as i16 }
}

pub const fn linear_to_alaw(sample: i16) -> u8 {
    // A-law codes 13 bits; the even bits (0x55) are inverted on the line (G.711 §4).
    let mut pcm = (sample as i32) >> 3;
    let mask = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let seg = segment(pcm, 0x20);
    let code = if seg >= 8 {
        0x7F
    } else if seg < 2 {
        (seg << 4) | ((pcm >> 1) & 0x0F)
    } else {
        (seg << 4) | ((pcm >> seg) & 0x0F)
    };
    (code ^ mask) as u8
}

pub const fn alaw_to_linear(code: u8) -> i16 {
    let code = (code ^ 0x55) as i32;
    let seg = (code & 0x70) >> 4;
    let step = (code & 0x0F) << 4;
    let magnitude = match seg {
        0 => step + 8,
        _ => (step + 0x108) << (seg - 1),
    };
    if code & 0x80 != 0 { magnitude as i16 } else { -magnitude as i16 }
}

const fn build_table(from_ulaw: bool) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = if from_ulaw {
            linear_to_alaw(ulaw_to_linear(code as u8))
        } else {
            linear_to_ulaw(alaw_to_linear(code as u8))
        };
        code += 1;
    }
    table
}

/// µ-law code word → A-law code word.
pub static ULAW_TO_ALAW: [u8; 256] = build_table(true);
/// A-law code word → µ-law code word.
pub static ALAW_TO_ULAW: [u8; 256] = build_table(false);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Code words and decoded values of G.711 Tables 1 and 2 (scaled to 16 bits): silence, the
    /// ends of the range, and segment boundaries.
    #[test]
    fn known_values() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0xEF), 132, "first step of segment 1");
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);

        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        assert_eq!(linear_to_alaw(64 * 8), 0xF5, "first step of segment 2");
        assert_eq!(alaw_to_linear(0xF5), 66 * 8);
    }

    /// Every code word decodes to a value that encodes back to the same word (except µ-law's
    /// negative zero, 0x7F, which is the same value as 0xFF).
    #[test]
    fn code_words_round_trip() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            assert!(back == code || (code == 0x7F && back == 0xFF), "µ-law {code:#04x} -> {back:#04x}");
            assert_eq!(linear_to_alaw(alaw_to_linear(code)), code, "A-law {code:#04x}");
        }
    }

    /// The compile-time tables are decode-then-encode, and `transcode` applies them.
    #[test]
    fn conversion_tables_agree_with_decode_encode() {
        for code in 0..=255u8 {
            assert_eq!(ULAW_TO_ALAW[code as usize], G711::A.encode(G711::Mu.decode(code)));
            assert_eq!(ALAW_TO_ULAW[code as usize], G711::Mu.encode(G711::A.decode(code)));
        }
        let mut payload: Vec<u8> = (0..=255).collect();
        G711::Mu.transcode(G711::A, &mut payload);
        assert_eq!(payload, ULAW_TO_ALAW);
        G711::A.transcode(G711::A, &mut payload);
        assert_eq!(payload, ULAW_TO_ALAW, "same law is a no-op");
    }

    proptest! {
        /// Quantisation error stays within 1/32 of the magnitude (the steps of a logarithmic
        /// law grow with it) plus a few units near zero, and the sign survives.
        #[test]
        fn round_trip_error_is_bounded(x in any::<i16>()) {
            let mag = (x as i32).abs();
            let mu = G711::Mu.decode(G711::Mu.encode(x)) as i32;
            let a = G711::A.decode(G711::A.encode(x)) as i32;
            prop_assert!((mu - x as i32).abs() <= (mag + ULAW_BIAS) / 32 + 4, "µ-law {} -> {}", x, mu);
            prop_assert!((a - x as i32).abs() <= mag / 32 + 16, "A-law {} -> {}", x, a);
            prop_assert!(mu.signum() * (x as i32).signum() >= 0, "µ-law keeps the sign of {}", x);
            prop_assert!(a.signum() * (x as i32).signum() >= 0, "A-law keeps the sign of {}", x);
        }
    }
}

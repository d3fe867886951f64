//! SRTP and SRTCP (RFC 3711) for the relay's legs keyed by SDES (RFC 4568 `a=crypto`, read and
//! written by `sdp::crypto`), as a sans-IO transform: no clock, no sockets, no global random
//! generator. A B2BUA relay decrypts what one phone sends and encrypts it again, under other
//! keys, for the other; either leg may also be plain RTP (no [`SrtpSession`] on that side).
//!
//! What it does:
//! - **Suites**: the two that SDES softphones offer (RFC 4568 §6.2.1, §6.2.2),
//!   `AES_CM_128_HMAC_SHA1_80` and `AES_CM_128_HMAC_SHA1_32`: AES-128 in counter mode (§4.1.1)
//!   and HMAC-SHA1 tags (§4.2.1) of 80 or 32 bits on SRTP, always 80 bits on SRTCP (RFC 4568
//!   §6.2.2: the short tag is for RTP only). Session keys come from the master key and salt
//!   by the AES-CM PRF (§4.3.1, §4.3.3) with a key derivation rate of 0, RFC 4568's default.
//! - **Packet index** (§3.3.1): each SSRC's rollover counter (ROC) is inferred from its
//!   sequence numbers as Appendix A does, so a call may run past 65,536 packets (22 minutes
//!   at 50 packets/s) in either direction. A new SSRC starts at ROC 0: SDES has no way to say
//!   otherwise. The SRTCP index is explicit (§3.4); pbx's own starts at 0 and counts up.
//! - **Replay protection** (§3.3.2): per SSRC, the highest index seen and a window of
//!   [`REPLAY_WINDOW_PACKETS`] below it, for SRTP and SRTCP alike. A packet is checked against
//!   the window first and moves it only once authenticated, so forgeries change nothing.
//!   Outbound, the same window refuses to protect an index twice: in counter mode a repeated
//!   index under one key repeats the keystream (§9.1), which must never happen even if the
//!   relay were to forward a duplicate.
//! - **Bounded state**: at most [`SSRCS_PER_DIRECTION_MAX`] SSRCs per direction. Inbound, an
//!   SSRC is remembered only after a packet of it authenticated (a flood of forged SSRCs
//!   costs one HMAC each and no memory), and the least recently used is forgotten to make
//!   room: only a phone cycling through more SSRCs than that loses anything (a forgotten
//!   SSRC's ROC and replay window). Outbound, a further SSRC is refused
//!   ([`SrtpError::Exhausted`]) rather than one forgotten, since forgetting an outbound SSRC's
//!   index could reuse its keystream; the relay sends one SSRC per side, so it uses one entry.
//! - **Key lifetime** (§9.2): an index past 2^48 (SRTP) or 2^31 − 1 (SRTCP) is refused with
//!   [`SrtpError::Exhausted`]; re-keying is the signalling's business (a re-INVITE).
//! - **In place, no allocation**: every operation works in the caller's buffer and returns the
//!   new length. Keys are expanded once per [`SrtpSession`] (AES key schedule, keyed HMAC),
//!   never per packet. Master keys are wiped from memory when dropped.
//!
//! Calling contract: one [`SrtpSession`] per SRTP leg, built from the key the phone sent in
//! its SDP (`remote`: it encrypts what it sends with it) and the one pbx sent in its own
//! (`local`). One session serves both RTP and RTCP of that leg: SRTP and SRTCP have separate
//! session keys derived from the same master key (§4.3.2). Unprotect what arrives from the
//! phone, protect what goes to it. Keep the session for as long as the keys are unchanged,
//! across re-INVITEs too: it holds each SSRC's ROC and replay window, and a new session with
//! the same key would guess ROC 0 and fail to authenticate a stream that has wrapped, and
//! would accept a replay of packets the old one had seen. A new key means a new session.
//!
//! Deliberately not done: MKI (offers with one are refused in `sdp::crypto`), key derivation
//! rates other than 0, AES-192/256 (RFC 6188), AEAD-GCM (RFC 7714), f8 mode, the NULL cipher,
//! the UNENCRYPTED_*/UNAUTHENTICATED_SRTP session parameters, header-extension encryption
//! (RFC 6904), DTLS-SRTP keying, and SRTCP index rollover after 2^31 packets.
//!
//! Why not a crate (as of `rtc-srtp` 0.21.1, `libsrtp` 0.1.0): `rtc-srtp` (webrtc-rs,
//! maintained) creates each new SSRC's state before authenticating the packet and never frees
//! it, so forged packets with random SSRCs grow memory without bound; it also allocates a
//! buffer per packet, leaves replay protection off unless asked, and pulls in ~100 crates
//! (url, ICU, nix, serde, a second rand). `webrtc-srtp` is its older sibling, on tokio and
//! webrtc-util. `libsrtp`, a Rust port of Cisco's libsrtp, looks sound but is experimental
//! (one release, one author), takes and drops the caller's buffer on every error, and
//! allocates and re-keys HMAC per packet; it is the independent implementation the tests check
//! this one against, byte for byte. `srtp` binds the C libsrtp and OpenSSL. This module is
//! AES-CM and HMAC-SHA1 from RustCrypto (`aes`, `ctr`, `hmac`, `sha1`), checked with RFC 3711
//! Appendix B's and libsrtp's test vectors.

use super::rtp::{RTP_HEADER_BYTES, VERSION};
use aes::Aes128;
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher, StreamCipherCoreWrapper};
use ctr::CtrCore;
use ctr::flavors::Ctr128BE;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::fmt;
use zeroize::Zeroize;

/// AES-128 master key (RFC 4568 §6.2.1).
pub const MASTER_KEY_BYTES: usize = 16;
/// Master salt of both suites (RFC 4568 §6.2.1: 112 bits).
pub const MASTER_SALT_BYTES: usize = 14;
/// An SDES `inline:` key: the master key then the master salt.
pub const KEY_SALT_BYTES: usize = MASTER_KEY_BYTES + MASTER_SALT_BYTES;
/// Indices below the highest seen that are still told apart from replays (§3.3.2 asks for at
/// least 64; libsrtp uses 128). An older packet is refused as a replay: at 50 packets/s that
/// is 2.5 s late, long after any jitter buffer would have played it.
pub const REPLAY_WINDOW_PACKETS: u64 = 128;
/// SSRCs remembered per direction (module doc, **Bounded state**). A phone sends one at a
/// time; a few more cover a stream restarted on hold or transfer.
pub const SSRCS_PER_DIRECTION_MAX: usize = 4;
/// The longest trailer [`SrtpSession::protect_rtp`] appends: an 80-bit tag.
pub const SRTP_TRAILER_BYTES_MAX: usize = 10;
/// What [`SrtpSession::protect_rtcp`] appends: the E flag and 31-bit SRTCP index, then an
/// 80-bit tag (§3.4).
pub const SRTCP_TRAILER_BYTES: usize = SRTCP_INDEX_BYTES + SRTCP_TAG_BYTES;

/// The HMAC-SHA1 key of both suites (RFC 4568 §6.2.1: n_a = 160 bits).
const AUTH_KEY_BYTES: usize = 20;
/// SRTCP's tag is 80 bits in both suites (RFC 4568 §6.2.2).
const SRTCP_TAG_BYTES: usize = 10;
const SRTCP_INDEX_BYTES: usize = 4;
/// The E flag, top bit of the word that carries the SRTCP index (§3.4).
const SRTCP_ENCRYPTED: u32 = 1 << 31;
/// §3.4: the SRTCP index is 31 bits; §9.2: no more packets under one master key.
const SRTCP_INDEX_MAX: u64 = (1 << 31) - 1;
/// §3.3.1: the SRTP index is 48 bits (ROC and sequence number).
const SRTP_INDEX_MAX: u64 = (1 << 48) - 1;
/// Bytes before the encrypted part of an RTCP compound: its first header and sender SSRC.
const RTCP_CLEAR_BYTES: usize = 8;
/// §4.3.1 key derivation labels.
const LABEL_RTP_ENCRYPTION: u8 = 0x00;
const LABEL_RTP_AUTH: u8 = 0x01;
const LABEL_RTP_SALT: u8 = 0x02;
const LABEL_RTCP_ENCRYPTION: u8 = 0x03;
const LABEL_RTCP_AUTH: u8 = 0x04;
const LABEL_RTCP_SALT: u8 = 0x05;

const _: () = assert!(REPLAY_WINDOW_PACKETS >= 64, "RFC 3711 §3.3.2: a window of at least 64");
const _: () = assert!(REPLAY_WINDOW_PACKETS <= u128::BITS as u64, "the window is one u128");
const _: () = assert!(SSRCS_PER_DIRECTION_MAX >= 1);
const _: () = assert!(SRTP_TRAILER_BYTES_MAX <= SRTCP_TRAILER_BYTES, "room for SRTCP is room for SRTP");

/// An SDES crypto suite pbx speaks (RFC 4568 §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Suite {
    /// AES-128 counter mode, 80-bit HMAC-SHA1 tag on SRTP and SRTCP: what every SDES phone
    /// offers first.
    AesCm128HmacSha1_80,
    /// The same with a 32-bit SRTP tag (SRTCP keeps 80 bits): 6 bytes less per packet.
    AesCm128HmacSha1_32,
}

impl Suite {
    /// Every suite, in pbx's order of preference (the longer tag first).
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    /// The name in `a=crypto` lines (RFC 4568 §6.2).
    pub fn sdes_name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite of an `a=crypto` name, compared exactly: RFC 4568 §6.2 defines the names in
    /// upper case, and that is how phones send them.
    pub fn from_sdes_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.sdes_name() == name)
    }

    /// Bytes of the SRTP authentication tag (the SRTCP tag is always 10).
    pub fn rtp_tag_bytes(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }
}

/// A master key and salt for one direction of one leg: what an `inline:` carries. The bytes
/// are wiped when the value is dropped and never printed: `Debug` shows the suite only.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial {
    suite: Suite,
    key_salt: [u8; KEY_SALT_BYTES],
}

impl KeyMaterial {
    /// Key material read from an SDP (`key_salt` is the decoded `inline:` value).
    pub fn new(suite: Suite, key_salt: [u8; KEY_SALT_BYTES]) -> KeyMaterial {
        KeyMaterial { suite, key_salt }
    }

    /// Fresh key material for pbx's side of a leg. A cryptographic generator is required (a
    /// predictable key is no key), and a key must never serve two legs or two directions
    /// (RFC 3711 §9.1: two senders under one key share keystream).
    pub fn generate(rng: &mut impl rand::CryptoRng, suite: Suite) -> KeyMaterial {
        let mut key_salt = [0; KEY_SALT_BYTES];
        rng.fill_bytes(&mut key_salt);
        KeyMaterial { suite, key_salt }
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The master key then the master salt, as `inline:` encodes them.
    pub fn key_salt(&self) -> &[u8; KEY_SALT_BYTES] {
        &self.key_salt
    }

    fn master_key(&self) -> &[u8] {
        &self.key_salt[..MASTER_KEY_BYTES]
    }

    fn master_salt(&self) -> &[u8] {
        &self.key_salt[MASTER_KEY_BYTES..]
    }
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        self.key_salt.zeroize();
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial").field("suite", &self.suite).finish_non_exhaustive()
    }
}

/// Why a packet was not protected or unprotected. The packet is to be dropped and counted
/// ([`SrtpError::as_str`] names the reason for a metric label); nothing here panics on what the
/// network sends, and a failed operation leaves the session's state as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SrtpError {
    /// Not a packet this module can read: shorter than its header and trailer, not version
    /// 2, a header running past the packet; or, to protect, no room left in the buffer for
    /// the trailer.
    #[error("malformed SRTP/SRTCP packet (too short, wrong version, header past its end, or no room for the trailer)")]
    Malformed,
    /// The authentication tag does not match: a forgery, corruption, the wrong key, or a ROC
    /// guessed wrong after a jump of more than 32,768 sequence numbers.
    #[error("SRTP/SRTCP authentication failed")]
    Auth,
    /// Unprotect: the index was already accepted, or is older than the replay window.
    /// Protect: the index was already protected, or is older than the window (its keystream
    /// may have been used).
    #[error("SRTP/SRTCP index replayed or older than the replay window")]
    Replay,
    /// A limit of RFC 3711 §9.2 (2^48 SRTP, 2^31 SRTCP packets) was reached, or an outbound
    /// direction was asked to protect a further SSRC beyond [`SSRCS_PER_DIRECTION_MAX`]:
    /// the leg needs new keys.
    #[error("SRTP key exhausted: re-key the leg")]
    Exhausted,
}

impl SrtpError {
    /// Every reason, in declaration order (a counter array may be indexed by `as usize`).
    pub const ALL: [SrtpError; 4] = [SrtpError::Malformed, SrtpError::Auth, SrtpError::Replay, SrtpError::Exhausted];

    /// A short name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SrtpError::Malformed => "malformed",
            SrtpError::Auth => "auth",
            SrtpError::Replay => "replay",
            SrtpError::Exhausted => "exhausted",
        }
    }
}

/// The SRTP transform of one leg (module doc, calling contract): inbound under the phone's
/// key, outbound under pbx's. Every method works in place and allocates nothing.
pub struct SrtpSession {
    inbound: Context,
    outbound: Context,
}

impl SrtpSession {
    /// `remote`: the key the phone sent in its SDP, which it encrypts with; `local`: the key
    /// pbx sent in its own. They must differ (§9.1: two senders under one key would share
    /// keystream); `sdp::crypto` always answers with a fresh key.
    pub fn new(remote: &KeyMaterial, local: &KeyMaterial) -> SrtpSession {
        SrtpSession { inbound: Context::new(remote, Role::Inbound), outbound: Context::new(local, Role::Outbound) }
    }

    /// Authenticates and decrypts, in place, an SRTP packet from the phone; returns the length
    /// of the RTP packet now at the start of `packet` (the tag stripped).
    pub fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        self.inbound.unprotect_rtp(packet)
    }

    /// Encrypts and authenticates, in place, the RTP packet in `buffer[..len]`; returns the
    /// length of the SRTP packet. `buffer` needs [`SRTP_TRAILER_BYTES_MAX`] spare bytes after
    /// `len` for the tag.
    pub fn protect_rtp(&mut self, buffer: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        self.outbound.protect_rtp(buffer, len)
    }

    /// Authenticates and (when its E flag says so) decrypts, in place, an SRTCP compound from
    /// the phone; returns the length of the RTCP compound now at the start of `packet`.
    pub fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        self.inbound.unprotect_rtcp(packet)
    }

    /// Encrypts and authenticates, in place, the RTCP compound in `buffer[..len]`; returns the
    /// length of the SRTCP packet. `buffer` needs [`SRTCP_TRAILER_BYTES`] spare bytes after
    /// `len`.
    pub fn protect_rtcp(&mut self, buffer: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        self.outbound.protect_rtcp(buffer, len)
    }
}

impl fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpSession")
            .field("remote", &self.inbound.suite)
            .field("local", &self.outbound.suite)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Inbound,
    Outbound,
}

/// One direction's session keys (§4.3) and its SSRCs' indices.
struct Context {
    suite: Suite,
    role: Role,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    streams: [Option<Stream>; SSRCS_PER_DIRECTION_MAX],
    /// Stamps [`Stream::used`]: the least recently used stream is the one evicted.
    uses: u64,
}

/// The session keys of SRTP or of SRTCP, expanded once.
struct SessionKeys {
    cipher: Aes128,
    salt: [u8; MASTER_SALT_BYTES],
    /// Keyed once; each packet clones it (a copy of two SHA-1 states) instead of re-keying.
    auth: Hmac<Sha1>,
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        // `cipher` and `auth` wipe themselves (the `zeroize` features of `aes`, `hmac`, `sha1`).
        self.salt.zeroize();
    }
}

/// What one SSRC has reached, per direction.
struct Stream {
    ssrc: u32,
    rtp: Option<Window>,
    rtcp: Option<Window>,
    used: u64,
}

/// The highest index accepted (or protected) and which of the [`REPLAY_WINDOW_PACKETS`]
/// below it were: bit k of `seen` stands for `highest - k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    highest: u64,
    seen: u128,
}

impl Window {
    fn check(&self, index: u64) -> Result<(), SrtpError> {
        let Some(behind) = self.highest.checked_sub(index) else { return Ok(()) };
        if behind >= REPLAY_WINDOW_PACKETS || self.seen & (1 << behind) != 0 {
            return Err(SrtpError::Replay);
        }
        Ok(())
    }

    fn accept(window: Option<Window>, index: u64) -> Window {
        let Some(mut window) = window else { return Window { highest: index, seen: 1 } };
        match index.checked_sub(window.highest) {
            Some(ahead) => {
                window.seen = if ahead >= REPLAY_WINDOW_PACKETS { 1 } else { (window.seen << ahead) | 1 };
                window.highest = index;
            }
            None => window.seen |= 1 << (window.highest - index),
        }
        window
    }
}

/// §3.3.1 and Appendix A: the index of a packet with sequence number `sequence`, given the
/// highest index of its SSRC so far: the ROC that puts it nearest, within 2^15 either way. At
/// ROC 0 a packet is never placed before the start (RFC's ROC − 1 mod 2^32), as libsrtp does.
fn estimate_index(highest: u64, sequence: u16) -> u64 {
    const HALF: u16 = 1 << 15;
    let roc = highest >> 16;
    let highest_sequence = highest as u16;
    let roc = if highest_sequence < HALF {
        if sequence > highest_sequence && sequence - highest_sequence > HALF { roc.saturating_sub(1) } else { roc }
    } else if sequence < highest_sequence - HALF {
        roc + 1
    } else {
        roc
    };
    (roc << 16) | u64::from(sequence)
}

/// §4.3.3: the AES-CM PRF keystream for one label, with a key derivation rate of 0 (so the
/// index term is 0): IV = (master salt XOR label·2^48)·2^16.
fn derive(master: &Aes128, master_salt: &[u8], label: u8, out: &mut [u8]) {
    let mut iv = [0; 16];
    iv[..MASTER_SALT_BYTES].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    apply_keystream(master, &iv, out);
}

/// AES in counter mode from `iv`, the counter in the low bits (§4.1.1). A packet is far
/// shorter than 2^16 blocks, so the 128-bit counter never carries into the IV's other bits.
fn apply_keystream(cipher: &Aes128, iv: &[u8; 16], data: &mut [u8]) {
    let core = CtrCore::<&Aes128, Ctr128BE>::inner_iv_init(cipher, iv.into());
    StreamCipherCoreWrapper::from_core(core).apply_keystream(data);
}

/// §4.1.1: IV = (k_s·2^16) XOR (SSRC·2^64) XOR (i·2^16), `index` being the 48-bit SRTP or the
/// 31-bit SRTCP index.
fn packet_iv(salt: &[u8; MASTER_SALT_BYTES], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0; 16];
    iv[..MASTER_SALT_BYTES].copy_from_slice(salt);
    iv[4..8].iter_mut().zip(ssrc.to_be_bytes()).for_each(|(b, s)| *b ^= s);
    iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]).for_each(|(b, i)| *b ^= i);
    iv
}

/// The length of an RTP header (fixed part, CSRCs, extension) that lies within `packet`.
/// Padding is not looked at: in SRTP its count byte is encrypted.
fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    if packet.len() < RTP_HEADER_BYTES || first >> 6 != VERSION {
        return None;
    }
    let mut len = RTP_HEADER_BYTES + 4 * usize::from(first & 0x0F);
    if first & 0x10 != 0 {
        // RFC 3550 §5.3.1: 16 bits profile-defined, 16 bits length in 32-bit words.
        let words = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (len <= packet.len()).then_some(len)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl SessionKeys {
    fn derive(master: &Aes128, master_salt: &[u8], labels: [u8; 3]) -> SessionKeys {
        let [encryption, auth, salt_label] = labels;
        let mut key = [0; MASTER_KEY_BYTES];
        let mut auth_key = [0; AUTH_KEY_BYTES];
        let mut salt = [0; MASTER_SALT_BYTES];
        derive(master, master_salt, encryption, &mut key);
        derive(master, master_salt, auth, &mut auth_key);
        derive(master, master_salt, salt_label, &mut salt);
        let keys = SessionKeys {
            cipher: Aes128::new(&key.into()),
            salt,
            auth: <Hmac<Sha1> as KeyInit>::new_from_slice(&auth_key).expect("HMAC takes a key of any length"),
        };
        key.zeroize();
        auth_key.zeroize();
        keys
    }

    /// HMAC-SHA1 of `data` then `suffix` (§4.2.1: SRTP appends the ROC, SRTCP nothing).
    fn mac(&self, data: &[u8], suffix: &[u8]) -> Hmac<Sha1> {
        let mut mac = self.auth.clone();
        mac.update(data);
        mac.update(suffix);
        mac
    }
}

impl Context {
    fn new(key: &KeyMaterial, role: Role) -> Context {
        let master = Aes128::new_from_slice(key.master_key()).expect("a master key is 16 bytes");
        let rtp = [LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT];
        let rtcp = [LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT];
        Context {
            suite: key.suite,
            role,
            rtp: SessionKeys::derive(&master, key.master_salt(), rtp),
            rtcp: SessionKeys::derive(&master, key.master_salt(), rtcp),
            streams: Default::default(),
            uses: 0,
        }
    }

    fn stream(&self, ssrc: u32) -> Option<&Stream> {
        self.streams.iter().flatten().find(|s| s.ssrc == ssrc)
    }

    /// The slot for `ssrc`: its own, a free one, or (inbound only) the least recently used.
    /// Outbound, with every slot taken by other SSRCs, none (module doc, **Bounded state**).
    fn slot(&self, ssrc: u32) -> Option<usize> {
        let own = self.streams.iter().position(|s| s.as_ref().is_some_and(|s| s.ssrc == ssrc));
        let free = || self.streams.iter().position(Option::is_none);
        let oldest = || (0..self.streams.len()).min_by_key(|i| self.streams[*i].as_ref().map_or(0, |s| s.used));
        match self.role {
            Role::Inbound => own.or_else(free).or_else(oldest),
            Role::Outbound => own.or_else(free),
        }
    }

    /// Records what an authenticated (or protected) packet of `ssrc` reached.
    fn update(&mut self, slot: usize, ssrc: u32, rtp: Option<Window>, rtcp: Option<Window>) {
        self.uses += 1;
        let stream = self.streams[slot].get_or_insert(Stream { ssrc, rtp: None, rtcp: None, used: 0 });
        if stream.ssrc != ssrc {
            *stream = Stream { ssrc, rtp: None, rtcp: None, used: 0 };
        }
        stream.rtp = rtp.or(stream.rtp);
        stream.rtcp = rtcp.or(stream.rtcp);
        stream.used = self.uses;
    }

    fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_bytes = self.suite.rtp_tag_bytes();
        let end = packet.len().checked_sub(tag_bytes).ok_or(SrtpError::Malformed)?;
        let header_len = rtp_header_len(&packet[..end]).ok_or(SrtpError::Malformed)?;
        let sequence = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = read_u32(packet, 8);
        let window = self.stream(ssrc).and_then(|s| s.rtp);
        let index = window.map_or(u64::from(sequence), |w| estimate_index(w.highest, sequence));
        if index > SRTP_INDEX_MAX {
            return Err(SrtpError::Exhausted);
        }
        if let Some(window) = window {
            window.check(index)?;
        }
        let roc = (index >> 16) as u32;
        let (authenticated, tag) = packet.split_at_mut(end);
        self.rtp.mac(authenticated, &roc.to_be_bytes()).verify_truncated_left(tag).map_err(|_| SrtpError::Auth)?;
        let iv = packet_iv(&self.rtp.salt, ssrc, index);
        apply_keystream(&self.rtp.cipher, &iv, &mut authenticated[header_len..]);
        let slot = self.slot(ssrc).expect("an inbound direction always has a slot");
        self.update(slot, ssrc, Some(Window::accept(window, index)), None);
        Ok(end)
    }

    fn protect_rtp(&mut self, buffer: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_bytes = self.suite.rtp_tag_bytes();
        let end = len.checked_add(tag_bytes).filter(|end| *end <= buffer.len()).ok_or(SrtpError::Malformed)?;
        let header_len = rtp_header_len(&buffer[..len]).ok_or(SrtpError::Malformed)?;
        let sequence = u16::from_be_bytes([buffer[2], buffer[3]]);
        let ssrc = read_u32(buffer, 8);
        let slot = self.slot(ssrc).ok_or(SrtpError::Exhausted)?;
        let window = self.stream(ssrc).and_then(|s| s.rtp);
        let index = window.map_or(u64::from(sequence), |w| estimate_index(w.highest, sequence));
        if index > SRTP_INDEX_MAX {
            return Err(SrtpError::Exhausted);
        }
        if let Some(window) = window {
            window.check(index)?;
        }
        let roc = (index >> 16) as u32;
        let iv = packet_iv(&self.rtp.salt, ssrc, index);
        apply_keystream(&self.rtp.cipher, &iv, &mut buffer[header_len..len]);
        let full_tag = self.rtp.mac(&buffer[..len], &roc.to_be_bytes()).finalize().into_bytes();
        buffer[len..end].copy_from_slice(&full_tag[..tag_bytes]);
        self.update(slot, ssrc, Some(Window::accept(window, index)), None);
        Ok(end)
    }

    fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_start = packet.len().checked_sub(SRTCP_TAG_BYTES).ok_or(SrtpError::Malformed)?;
        let end = tag_start.checked_sub(SRTCP_INDEX_BYTES).ok_or(SrtpError::Malformed)?;
        if end < RTCP_CLEAR_BYTES || packet[0] >> 6 != VERSION {
            return Err(SrtpError::Malformed);
        }
        let word = read_u32(packet, end);
        let index = u64::from(word & !SRTCP_ENCRYPTED);
        let ssrc = read_u32(packet, 4);
        let window = self.stream(ssrc).and_then(|s| s.rtcp);
        if let Some(window) = window {
            window.check(index)?;
        }
        let (authenticated, tag) = packet.split_at_mut(tag_start);
        self.rtcp.mac(authenticated, &[]).verify_truncated_left(tag).map_err(|_| SrtpError::Auth)?;
        if word & SRTCP_ENCRYPTED != 0 {
            let iv = packet_iv(&self.rtcp.salt, ssrc, index);
            apply_keystream(&self.rtcp.cipher, &iv, &mut authenticated[RTCP_CLEAR_BYTES..end]);
        }
        let slot = self.slot(ssrc).expect("an inbound direction always has a slot");
        self.update(slot, ssrc, None, Some(Window::accept(window, index)));
        Ok(end)
    }

    fn protect_rtcp(&mut self, buffer: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let end =
            len.checked_add(SRTCP_TRAILER_BYTES).filter(|end| *end <= buffer.len()).ok_or(SrtpError::Malformed)?;
        if len < RTCP_CLEAR_BYTES || buffer[0] >> 6 != VERSION {
            return Err(SrtpError::Malformed);
        }
        let ssrc = read_u32(buffer, 4);
        let slot = self.slot(ssrc).ok_or(SrtpError::Exhausted)?;
        let window = self.stream(ssrc).and_then(|s| s.rtcp);
        // §3.4: the first SRTCP index is 0; each packet takes the next.
        let index = window.map_or(0, |w| w.highest + 1);
        if index > SRTCP_INDEX_MAX {
            return Err(SrtpError::Exhausted);
        }
        let iv = packet_iv(&self.rtcp.salt, ssrc, index);
        apply_keystream(&self.rtcp.cipher, &iv, &mut buffer[RTCP_CLEAR_BYTES..len]);
        let word = SRTCP_ENCRYPTED | index as u32;
        let tag_start = len + SRTCP_INDEX_BYTES;
        buffer[len..tag_start].copy_from_slice(&word.to_be_bytes());
        let full_tag = self.rtcp.mac(&buffer[..tag_start], &[]).finalize().into_bytes();
        buffer[tag_start..end].copy_from_slice(&full_tag[..SRTCP_TAG_BYTES]);
        self.update(slot, ssrc, None, Some(Window::accept(window, index)));
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// RFC 3711 Appendix B.3 and libsrtp's `srtp_validate` (test/srtp_driver.c): master key.
    const MASTER_KEY: [u8; 16] = hex16("e1f97a0d3e018be0d64fa32c06de4139");
    const MASTER_SALT: [u8; 14] = [0x0e, 0xc6, 0x75, 0xad, 0x49, 0x8a, 0xfe, 0xeb, 0xb6, 0x96, 0x0b, 0x3a, 0xab, 0xe6];
    /// libsrtp's test packet: seq 0x1234, SSRC 0xcafebabe, 16 bytes of 0xab.
    const RTP_PLAIN: [u8; 28] = [
        0x80, 0x0f, 0x12, 0x34, 0xde, 0xca, 0xfb, 0xad, 0xca, 0xfe, 0xba, 0xbe, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
    ];
    /// The same under AES_CM_128_HMAC_SHA1_80 (libsrtp `srtp_ciphertext_ref`).
    const SRTP_80: [u8; 38] = [
        0x80, 0x0f, 0x12, 0x34, 0xde, 0xca, 0xfb, 0xad, 0xca, 0xfe, 0xba, 0xbe, 0x4e, 0x55, 0xdc, 0x4c, 0xe7, 0x99,
        0x78, 0xd8, 0x8c, 0xa4, 0xd2, 0x15, 0x94, 0x9d, 0x24, 0x02, 0xb7, 0x8d, 0x6a, 0xcc, 0x99, 0xea, 0x17, 0x9b,
        0x8d, 0xbb,
    ];
    /// libsrtp's RTCP test compound (an SR header, SSRC 0xcafebabe, 16 bytes of 0xab).
    const RTCP_PLAIN: [u8; 24] = [
        0x81, 0xc8, 0x00, 0x0b, 0xca, 0xfe, 0xba, 0xbe, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
    ];
    /// The same as SRTCP with index 1 (libsrtp `srtcp_ciphertext_ref`).
    const SRTCP_INDEX_1: [u8; 38] = [
        0x81, 0xc8, 0x00, 0x0b, 0xca, 0xfe, 0xba, 0xbe, 0x71, 0x28, 0x03, 0x5b, 0xe4, 0x87, 0xb9, 0xbd, 0xbe, 0xf8,
        0x90, 0x41, 0xf9, 0x77, 0xa5, 0xa8, 0x80, 0x00, 0x00, 0x01, 0x99, 0x3e, 0x08, 0xcd, 0x54, 0xd6, 0xc1, 0x23,
        0x07, 0x98,
    ];

    const fn hex16(text: &str) -> [u8; 16] {
        let bytes = text.as_bytes();
        let mut out = [0; 16];
        let mut i = 0;
        while i < 16 {
            out[i] = (nibble(bytes[2 * i]) << 4) | nibble(bytes[2 * i + 1]);
            i += 1;
        }
        out
    }

    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lower-case hex digit"),
        }
    }

    fn reference_key(suite: Suite) -> KeyMaterial {
        let mut key_salt = [0; KEY_SALT_BYTES];
        key_salt[..16].copy_from_slice(&MASTER_KEY);
        key_salt[16..].copy_from_slice(&MASTER_SALT);
        KeyMaterial::new(suite, key_salt)
    }

    fn random_key(seed: u64, suite: Suite) -> KeyMaterial {
        KeyMaterial::generate(&mut StdRng::seed_from_u64(seed), suite)
    }

    /// A 172-byte G.711 packet: 12-byte header, 160 bytes of payload.
    fn rtp(sequence: u16, ssrc: u32) -> Vec<u8> {
        let mut packet = vec![0x80, 0x00];
        packet.extend(sequence.to_be_bytes());
        packet.extend((u32::from(sequence) * 160).to_be_bytes());
        packet.extend(ssrc.to_be_bytes());
        packet.extend((0..160).map(|i| i as u8));
        packet
    }

    /// An RR with no report blocks then an SDES with one CNAME, as a phone sends.
    fn rtcp(ssrc: u32) -> Vec<u8> {
        let mut packet = vec![0x80, 201, 0, 1];
        packet.extend(ssrc.to_be_bytes());
        packet.extend([0x81, 202, 0, 3]);
        packet.extend(ssrc.to_be_bytes());
        packet.extend([1, 4, b'p', b'b', b'x', b'!', 0, 0]);
        packet
    }

    /// Protects `packet` with `session` (spare room for any trailer), returning the result.
    fn protect(session: &mut SrtpSession, packet: &[u8], rtcp: bool) -> Result<Vec<u8>, SrtpError> {
        let mut buffer = packet.to_vec();
        buffer.resize(packet.len() + SRTCP_TRAILER_BYTES, 0);
        let len = match rtcp {
            false => session.protect_rtp(&mut buffer, packet.len())?,
            true => session.protect_rtcp(&mut buffer, packet.len())?,
        };
        buffer.truncate(len);
        Ok(buffer)
    }

    fn unprotect(session: &mut SrtpSession, packet: &[u8], rtcp: bool) -> Result<Vec<u8>, SrtpError> {
        let mut buffer = packet.to_vec();
        let len = match rtcp {
            false => session.unprotect_rtp(&mut buffer)?,
            true => session.unprotect_rtcp(&mut buffer)?,
        };
        buffer.truncate(len);
        Ok(buffer)
    }

    /// A sender whose `local` key is `key`, and a receiver whose `remote` key is `key`: what
    /// one protects the other unprotects.
    fn pair(key: &KeyMaterial) -> (SrtpSession, SrtpSession) {
        let other = random_key(99, key.suite());
        (SrtpSession::new(&other, key), SrtpSession::new(key, &other))
    }

    /// RFC 3711 B.2: the AES-CM keystream of the appendix's session key and salt.
    #[test]
    fn aes_cm_keystream_matches_rfc_3711_b2() {
        let cipher = Aes128::new(&hex16("2b7e151628aed2a6abf7158809cf4f3c").into());
        let iv = hex16("f0f1f2f3f4f5f6f7f8f9fafbfcfd0000");
        let mut keystream = [0; 48];
        apply_keystream(&cipher, &iv, &mut keystream);
        assert_eq!(keystream[..16], hex16("e03ead0935c95e80e166b16dd92b4eb4"));
        assert_eq!(keystream[16..32], hex16("d23513162b02d0f72a43a2fe4a5f97ab"));
        assert_eq!(keystream[32..], hex16("41e95b3bb0a2e8dd477901e4fca894c0"));
        // The IV built from the B.2 inputs (salt, SSRC 0, index 0) is the one above.
        let salt: [u8; 14] = iv[..14].try_into().expect("14 bytes");
        assert_eq!(packet_iv(&salt, 0, 0), iv);
    }

    /// RFC 3711 B.3: the SRTP session key, salt and authentication key of the appendix's
    /// master key and salt.
    #[test]
    fn key_derivation_matches_rfc_3711_b3() {
        let master = Aes128::new(&MASTER_KEY.into());
        let mut key = [0; 16];
        derive(&master, &MASTER_SALT, LABEL_RTP_ENCRYPTION, &mut key);
        assert_eq!(key, hex16("c61e7a93744f39ee10734afe3ff7a087"));
        let mut salt = [0; 14];
        derive(&master, &MASTER_SALT, LABEL_RTP_SALT, &mut salt);
        assert_eq!(salt[..], hex16("30cbbc08863d8c85d49db34a9ae10000")[..14]);
        let mut auth = [0; 20];
        derive(&master, &MASTER_SALT, LABEL_RTP_AUTH, &mut auth);
        assert_eq!(auth[..16], hex16("cebe321f6ff7716b6fd4ab49af256a15"));
        assert_eq!(auth[16..], [0x6d, 0x38, 0xba, 0xa4]);
    }

    /// libsrtp's known answers: the test packet protected under both suites (the 32-bit tag
    /// is the 80-bit one truncated), and each unprotected back to the plain packet.
    #[test]
    fn srtp_matches_libsrtp_test_vectors() {
        for suite in Suite::ALL {
            let key = reference_key(suite);
            let tag_bytes = suite.rtp_tag_bytes();
            let expected = &SRTP_80[..RTP_PLAIN.len() + tag_bytes];
            let (mut sender, mut receiver) = pair(&key);
            assert_eq!(protect(&mut sender, &RTP_PLAIN, false).expect("protects"), expected, "{suite:?}");
            assert_eq!(unprotect(&mut receiver, expected, false).expect("unprotects"), RTP_PLAIN, "{suite:?}");
        }
    }

    /// libsrtp's SRTCP known answer (index 1: libsrtp's first index is 1, pbx's 0, so one
    /// compound goes first), under both suites: SRTCP's tag is 80 bits in each.
    #[test]
    fn srtcp_matches_libsrtp_test_vector() {
        for suite in Suite::ALL {
            let (mut sender, mut receiver) = pair(&reference_key(suite));
            let first = protect(&mut sender, &RTCP_PLAIN, true).expect("index 0");
            assert_eq!(first[RTCP_PLAIN.len()..][..4], [0x80, 0, 0, 0], "E flag and index 0");
            assert_eq!(protect(&mut sender, &RTCP_PLAIN, true).expect("index 1"), SRTCP_INDEX_1, "{suite:?}");
            assert_eq!(unprotect(&mut receiver, &SRTCP_INDEX_1, true).expect("unprotects"), RTCP_PLAIN);
            assert_eq!(unprotect(&mut receiver, &first, true).expect("index 0, late"), RTCP_PLAIN);
        }
    }

    /// Both suites round-trip a stream of G.711 packets, and the trailer has the suite's length.
    #[test]
    fn round_trip_both_suites() {
        for suite in Suite::ALL {
            let (mut sender, mut receiver) = pair(&random_key(1, suite));
            for sequence in 0..100 {
                let plain = rtp(sequence, 0x1234_5678);
                let protected = protect(&mut sender, &plain, false).expect("protects");
                assert_eq!(protected.len(), plain.len() + suite.rtp_tag_bytes());
                assert_ne!(protected[12..172], plain[12..], "the payload is encrypted");
                assert_eq!(protected[..12], plain[..12], "the header is not");
                assert_eq!(unprotect(&mut receiver, &protected, false).expect("unprotects"), plain);
            }
        }
    }

    /// SRTCP round-trips under both suites, encrypted after the first 8 bytes, 14 bytes added.
    #[test]
    fn srtcp_round_trip() {
        for suite in Suite::ALL {
            let (mut sender, mut receiver) = pair(&random_key(2, suite));
            for n in 0..5 {
                let plain = rtcp(0xdead_beef);
                let protected = protect(&mut sender, &plain, true).expect("protects");
                assert_eq!(protected.len(), plain.len() + SRTCP_TRAILER_BYTES);
                assert_eq!(protected[..8], plain[..8]);
                assert_ne!(protected[8..plain.len()], plain[8..]);
                assert_eq!(read_u32(&protected, plain.len()), SRTCP_ENCRYPTED | n, "index {n}");
                assert_eq!(unprotect(&mut receiver, &protected, true).expect("unprotects"), plain);
            }
        }
    }

    /// Any one byte changed, anywhere (header, payload, tag), fails authentication and leaves
    /// the receiver able to take the genuine packet.
    #[test]
    fn tampered_byte_fails_authentication() {
        for (suite, rtcp_too) in [
            (Suite::AesCm128HmacSha1_80, false),
            (Suite::AesCm128HmacSha1_32, false),
            (Suite::AesCm128HmacSha1_80, true),
        ] {
            let (mut sender, mut receiver) = pair(&random_key(3, suite));
            let plain = if rtcp_too { rtcp(7) } else { rtp(7, 7) };
            let protected = protect(&mut sender, &plain, rtcp_too).expect("protects");
            for at in 0..protected.len() {
                let mut tampered = protected.clone();
                tampered[at] ^= 0x01;
                assert_eq!(unprotect(&mut receiver, &tampered, rtcp_too), Err(SrtpError::Auth), "{suite:?} byte {at}");
            }
            assert_eq!(unprotect(&mut receiver, &protected, rtcp_too).expect("the genuine one"), plain);
        }
    }

    /// A packet accepted once is refused the second time (SRTP and SRTCP), late ones within
    /// the window are accepted once, and ones older than the window are refused.
    #[test]
    fn replay_is_refused() {
        let (mut sender, mut receiver) = pair(&random_key(4, Suite::AesCm128HmacSha1_80));
        let packets: Vec<Vec<u8>> =
            (0..300).map(|s| protect(&mut sender, &rtp(s, 42), false).expect("protects")).collect();
        unprotect(&mut receiver, &packets[0], false).expect("first");
        assert_eq!(unprotect(&mut receiver, &packets[0], false), Err(SrtpError::Replay));
        unprotect(&mut receiver, &packets[200], false).expect("a jump ahead");
        unprotect(&mut receiver, &packets[150], false).expect("late, inside the window");
        assert_eq!(unprotect(&mut receiver, &packets[150], false), Err(SrtpError::Replay));
        assert_eq!(unprotect(&mut receiver, &packets[50], false), Err(SrtpError::Replay), "older than the window");
        unprotect(&mut receiver, &packets[73], false).expect("exactly the window's oldest");
        unprotect(&mut receiver, &packets[201], false).expect("next");

        let compound = protect(&mut sender, &rtcp(42), true).expect("protects");
        unprotect(&mut receiver, &compound, true).expect("first");
        assert_eq!(unprotect(&mut receiver, &compound, true), Err(SrtpError::Replay));
    }

    /// The sender refuses to protect an index twice (keystream reuse, §9.1) or one older than
    /// its window, and a refusal changes nothing.
    #[test]
    fn protect_refuses_an_index_twice() {
        let (mut sender, mut receiver) = pair(&random_key(5, Suite::AesCm128HmacSha1_80));
        let first = protect(&mut sender, &rtp(10, 1), false).expect("protects");
        assert_eq!(protect(&mut sender, &rtp(10, 1), false), Err(SrtpError::Replay));
        protect(&mut sender, &rtp(9, 1), false).expect("an earlier index, never used");
        protect(&mut sender, &rtp(500, 1), false).expect("a jump ahead");
        assert_eq!(protect(&mut sender, &rtp(11, 1), false), Err(SrtpError::Replay), "older than the window");
        assert_eq!(unprotect(&mut receiver, &first, false).expect("unprotects"), rtp(10, 1));
    }

    /// A receiver with another key (or another suite's tag length) authenticates nothing, and
    /// remembers no SSRC for it.
    #[test]
    fn wrong_key_fails() {
        let key = random_key(6, Suite::AesCm128HmacSha1_80);
        let (mut sender, _) = pair(&key);
        let (_, mut stranger) = pair(&random_key(7, Suite::AesCm128HmacSha1_80));
        let mut key_salt = *key.key_salt();
        let (_, mut short_tag) = pair(&KeyMaterial::new(Suite::AesCm128HmacSha1_32, key_salt));
        key_salt[29] ^= 1;
        let (_, mut other_salt) = pair(&KeyMaterial::new(Suite::AesCm128HmacSha1_80, key_salt));
        for sequence in 0..10 {
            let protected = protect(&mut sender, &rtp(sequence, 9), false).expect("protects");
            assert_eq!(unprotect(&mut stranger, &protected, false), Err(SrtpError::Auth));
            assert_eq!(unprotect(&mut short_tag, &protected, false), Err(SrtpError::Auth));
            assert_eq!(unprotect(&mut other_salt, &protected, false), Err(SrtpError::Auth));
        }
        let compound = protect(&mut sender, &rtcp(9), true).expect("protects");
        assert_eq!(unprotect(&mut stranger, &compound, true), Err(SrtpError::Auth));
        assert!(stranger.inbound.streams.iter().all(Option::is_none), "forgeries leave no state");
    }

    /// Packets too short for a header and tag, of another version, or with a header past the
    /// end are malformed; so is protecting into a buffer without room for the trailer.
    #[test]
    fn malformed_packets_are_refused() {
        let (mut sender, mut receiver) = pair(&random_key(8, Suite::AesCm128HmacSha1_80));
        for bytes in [&[][..], &[0x80; 21], &[0x40; 40], &[0x8f; 40], &[0x90; 40]] {
            assert_eq!(unprotect(&mut receiver, bytes, false), Err(SrtpError::Malformed), "{bytes:?}");
        }
        for bytes in [&[][..], &[0x80; 21], &[0x40; 40]] {
            assert_eq!(unprotect(&mut receiver, bytes, true), Err(SrtpError::Malformed), "{bytes:?}");
        }
        let mut tight = rtp(1, 1);
        let len = tight.len();
        assert_eq!(sender.protect_rtp(&mut tight, len), Err(SrtpError::Malformed));
        assert_eq!(sender.protect_rtp(&mut tight, len + 1), Err(SrtpError::Malformed));
        assert_eq!(sender.protect_rtcp(&mut [0x80; 7], 7), Err(SrtpError::Malformed));
    }

    /// A stream that runs past sequence number 65535 keeps authenticating (the ROC is
    /// inferred on both sides), with reordering and loss across the wrap.
    #[test]
    fn rollover_counter_follows_the_wrap() {
        let (mut sender, mut receiver) = pair(&random_key(10, Suite::AesCm128HmacSha1_32));
        let mut protected: Vec<(u16, Vec<u8>)> = Vec::new();
        for n in 0..400u32 {
            let sequence = 65_400u16.wrapping_add(n as u16);
            protected.push((sequence, protect(&mut sender, &rtp(sequence, 5), false).expect("protects")));
        }
        // Swap neighbours and lose one in ten, around the wrap.
        for pair in protected.chunks(2) {
            for (sequence, packet) in pair.iter().rev().filter(|(s, _)| s % 10 != 5) {
                assert_eq!(unprotect(&mut receiver, packet, false).expect("unprotects"), rtp(*sequence, 5));
            }
        }
        let stream = receiver.inbound.stream(5).expect("remembered");
        assert_eq!(stream.rtp.expect("an RTP window").highest, (1 << 16) | u64::from(65_400u16.wrapping_add(399)));
    }

    /// Index estimation (Appendix A) around the wrap, both ways, and at the start.
    #[test]
    fn index_estimation() {
        let roc = 3u64 << 16;
        assert_eq!(estimate_index(roc | 65_000, 10), (4 << 16) | 10, "just past the wrap");
        assert_eq!(estimate_index(roc | 10, 65_000), (2 << 16) | 65_000, "just before it");
        assert_eq!(estimate_index(roc | 1_000, 1_001), roc | 1_001);
        assert_eq!(estimate_index(roc | 40_000, 8_000), roc | 8_000, "within 2^15 behind");
        assert_eq!(estimate_index(10, 60_000), 60_000, "ROC 0 is never stepped back");
    }

    /// Inbound, the least recently used SSRC makes room for a new authenticated one; outbound,
    /// a further SSRC is refused rather than one forgotten.
    #[test]
    fn ssrcs_are_bounded() {
        let key = random_key(11, Suite::AesCm128HmacSha1_80);
        let (mut sender, mut receiver) = pair(&key);
        let count = SSRCS_PER_DIRECTION_MAX as u32;
        for ssrc in 0..count {
            let protected = protect(&mut sender, &rtp(1, ssrc), false).expect("protects");
            unprotect(&mut receiver, &protected, false).expect("unprotects");
        }
        assert_eq!(protect(&mut sender, &rtp(1, count), false), Err(SrtpError::Exhausted));
        let mut other_sender = SrtpSession::new(&random_key(12, Suite::AesCm128HmacSha1_80), &key);
        let protected = protect(&mut other_sender, &rtp(1, count), false).expect("a fresh sender");
        unprotect(&mut receiver, &protected, false).expect("evicts SSRC 0, the least recently used");
        assert!(receiver.inbound.stream(0).is_none());
        assert!(receiver.inbound.stream(count).is_some());
    }

    /// `Debug` never shows key bytes.
    #[test]
    fn debug_hides_the_key() {
        let key = KeyMaterial::new(Suite::AesCm128HmacSha1_80, [0xAB; KEY_SALT_BYTES]);
        assert_eq!(format!("{key:?}"), "KeyMaterial { suite: AesCm128HmacSha1_80, .. }");
        let session = SrtpSession::new(&key, &KeyMaterial::new(Suite::AesCm128HmacSha1_32, [0xAB; KEY_SALT_BYTES]));
        assert_eq!(
            format!("{session:?}"),
            "SrtpSession { remote: AesCm128HmacSha1_80, local: AesCm128HmacSha1_32, .. }"
        );
    }

    /// Byte for byte against an independent implementation (the `libsrtp` crate, a port of
    /// Cisco's libsrtp): for both suites, its protect and ours give the same bytes for the same
    /// packets across a ROC wrap, RTP and RTCP, and each unprotects what the other protected.
    #[test]
    fn interoperates_with_libsrtp() {
        use libsrtp::{MasterKey, ProtectionProfile, RecvSession, SendSession, StreamConfig};
        for (suite, profile) in [
            (Suite::AesCm128HmacSha1_80, ProtectionProfile::Aes128CmHmacSha180),
            (Suite::AesCm128HmacSha1_32, ProtectionProfile::Aes128CmHmacSha132),
        ] {
            let key = random_key(20, suite);
            let (master_key, master_salt) = key.key_salt().split_at(MASTER_KEY_BYTES);
            let config = StreamConfig::new(
                vec![MasterKey::new(master_key, master_salt, &None)],
                &profile,
                &ProtectionProfile::Aes128CmHmacSha180,
            );
            let mut theirs_out = SendSession::new();
            theirs_out.add_stream(None, &config).expect("their sender");
            let mut theirs_in = RecvSession::new();
            theirs_in.add_stream(None, &config).expect("their receiver");
            let (mut ours_out, mut ours_in) = pair(&key);
            for n in 0..300u32 {
                let plain = rtp(65_500u16.wrapping_add(n as u16), 0x0102_0304);
                let ours = protect(&mut ours_out, &plain, false).expect("we protect");
                let theirs = theirs_out.rtp_protect(plain.clone()).expect("they protect");
                assert_eq!(ours, theirs, "{suite:?} packet {n}");
                assert_eq!(theirs_in.rtp_unprotect(ours).expect("they unprotect ours"), plain);
                assert_eq!(unprotect(&mut ours_in, &theirs, false).expect("we unprotect theirs"), plain);
            }
            for n in 0..5 {
                let plain = rtcp(0x0102_0304);
                let ours = protect(&mut ours_out, &plain, true).expect("we protect");
                let theirs = theirs_out.rtcp_protect(plain.clone()).expect("they protect");
                assert_eq!(ours, theirs, "{suite:?} compound {n}");
                assert_eq!(theirs_in.rtcp_unprotect(ours).expect("they unprotect ours"), plain);
                assert_eq!(unprotect(&mut ours_in, &theirs, true).expect("we unprotect theirs"), plain);
            }
        }
    }

    proptest! {
        /// Whatever bytes arrive, unprotecting them returns an error or a length within the
        /// packet, and never panics.
        #[test]
        fn unprotect_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), rtcp_kind: bool) {
            let (_, mut receiver) = pair(&random_key(30, Suite::AesCm128HmacSha1_32));
            let mut buffer = bytes.clone();
            let result = match rtcp_kind {
                true => receiver.unprotect_rtcp(&mut buffer),
                false => receiver.unprotect_rtp(&mut buffer),
            };
            if let Ok(len) = result {
                prop_assert!(len <= bytes.len());
            }
        }

        /// A genuine packet cut short, or with one byte changed, is refused without a panic;
        /// untouched, it unprotects back.
        #[test]
        fn damaged_packets_are_refused(
            sequence: u16,
            cut in 0usize..200,
            at in 0usize..200,
            flip in 1u8..,
            rtcp_kind: bool,
        ) {
            let (mut sender, mut receiver) = pair(&random_key(32, Suite::AesCm128HmacSha1_80));
            let plain = if rtcp_kind { rtcp(u32::from(sequence)) } else { rtp(sequence, 8) };
            let protected = protect(&mut sender, &plain, rtcp_kind).expect("protects");
            let short = &protected[..cut.min(protected.len() - 1)];
            prop_assert!(unprotect(&mut receiver, short, rtcp_kind).is_err());
            let mut changed = protected.clone();
            changed[at % protected.len()] ^= flip;
            prop_assert!(unprotect(&mut receiver, &changed, rtcp_kind).is_err());
            prop_assert_eq!(unprotect(&mut receiver, &protected, rtcp_kind).expect("the genuine one"), plain);
        }

        /// Whatever bytes are handed to protect, with any length and room, it returns an error
        /// or a length within the buffer, and never panics; what it protected unprotects back.
        #[test]
        fn protect_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            room in 0usize..20,
            rtcp_kind: bool,
        ) {
            let (mut sender, mut receiver) = pair(&random_key(31, Suite::AesCm128HmacSha1_80));
            let mut buffer = bytes.clone();
            buffer.resize(bytes.len() + room, 0);
            let result = match rtcp_kind {
                true => sender.protect_rtcp(&mut buffer, bytes.len()),
                false => sender.protect_rtp(&mut buffer, bytes.len()),
            };
            if let Ok(len) = result {
                prop_assert!(len <= buffer.len());
                buffer.truncate(len);
                let back = unprotect(&mut receiver, &buffer, rtcp_kind).expect("unprotects what was protected");
                prop_assert_eq!(back, bytes);
            }
        }
    }
}

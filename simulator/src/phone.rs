//! A simulated SIP phone: the user agent the deterministic simulator puts in front of pbx.
//!
//! [`Phone`] is a sans-IO machine (like quinn-proto's `Connection`): it never reads a clock, a
//! socket or a global RNG. Time comes in as `now`, datagrams come in and go out as values, and
//! every random choice (tags, branches, think times, whether to answer) is drawn from one
//! `StdRng` seeded at construction, so a run is replayed byte for byte from its seed.
//!
//! What it implements, over UDP only:
//! - Registration (RFC 3261 §10.2) with digest authentication (RFC 3261 §22.2, RFC 2617,
//!   RFC 7616: `MD5` with `qop=auth`, or without qop), refreshed at 50–90 % of the granted
//!   expiry and retried 30–60 s after a failure.
//! - Calls as caller and callee (RFC 3261 §13–15): INVITE with an SDP offer (RFC 3264),
//!   407 → ACK → authenticated INVITE, provisional responses, ACK of 2xx (§13.2.2.4) and of
//!   non-2xx (§17.1.1.3), CANCEL (§9), BYE, and a trickle of RTP (RFC 3550) while talking.
//! - The transaction rules a UA needs on a lossy network (§17): request retransmission at
//!   T1 doubling (capped at T2 for non-INVITE), 64·T1 timeouts, retransmission of our final
//!   responses to INVITE until the ACK (§13.3.1.4, §17.2.1), and a response cache that answers
//!   a retransmitted request with the very same bytes.
//!
//! - Conference rooms ([`PhoneInput::JoinRoom`]): it dials the room, keys the PIN and `#` as
//!   RFC 4733 telephone events, then talks in spurts — one PCMU packet every 20 ms of its own
//!   tone ([`crate::audio`]) — and pauses (one silent packet every `rtp_interval_s`, as a phone
//!   with voice activity detection would), keys `*6` now and then (muted, it may well go on
//!   talking), and at the end of its stay hangs up or vanishes (no BYE, no more RTP). Each
//!   step is a [`RoomEvent`], so the checkers know what the room should hear of it.
//!
//! - Push (RFC 8599), for a phone configured as an app ([`PushApp`]): it registers with
//!   `pn-provider`, `pn-param` and `pn-prid` in its Contact and *sleeps* — every request that
//!   reaches it is dropped unanswered — except while it is in a call and for
//!   [`PushApp::awake`] after a push reached it ([`PhoneInput::Push`]) or its last call ended.
//!   A push makes it register at once (after [`PushApp::wake_ms`], the app starting), now and
//!   then from a new source port with a new registration (a restarted app); a new token
//!   ([`PhoneInput::NewToken`]) goes into its next REGISTER. Its refreshes are as any phone's.
//!
//! What it deliberately does not do: TCP/TLS, DNS, Record-Route/route sets (pbx is a B2BUA
//! and the phone talks to it directly), forking, early media, re-INVITE offers of its own,
//! PRACK, and any audio beyond a fixed silent PCMU packet and a room talker's tone; it
//! listens to nothing (the simulator's checkers do).
//!
//! Calling contract: after [`Phone::new`] or any [`Phone::handle`], drain
//! [`Phone::poll_output`] until `None`, then ask [`Phone::poll_timeout`] and call
//! `handle(now, PhoneInput::Timeout)` once `now` reaches it. `now` never goes backwards.
//! Every `handle` first runs the timers that are due, whatever its input, so a late
//! `Timeout` loses nothing.

use bytes::{BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};
use pbx_actors::Timestamp;
use pbx_actors::sip::message::{Message, Name, Request, Response, parse_datagram};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// RFC 3261 §17.1.1.1: the round-trip estimate every retransmission timer starts from.
const T1: Duration = Duration::from_millis(500);
/// RFC 3261 §17.1.2.2: the cap on non-INVITE request (and final response) retransmission.
const T2: Duration = Duration::from_secs(4);
/// RFC 3261 §17.1.1.2 Timer B / §17.1.2.2 Timer F / §13.3.1.4: a transaction gives up
/// after 64·T1.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);
/// How long a response stays cached for retransmitted requests: as long as the peer's
/// client transaction can live (64·T1).
const RESPONSE_CACHE_TIMEOUT: Duration = TRANSACTION_TIMEOUT;
/// Cached responses and ACKs kept at most; a phone has one call, so a handful suffices.
const RESPONSES_CACHED_MAX: usize = 32;
/// Our final responses to INVITEs waiting for their ACK, at most.
const FINALS_PENDING_MAX: usize = 8;
/// Client transactions in flight at most: a REGISTER, an INVITE, its CANCEL and a BYE.
const CLIENT_TRANSACTIONS_MAX: usize = 8;
/// Retry a failed or timed-out registration after a uniform wait in this range (brief).
const REGISTER_RETRY_S: (u64, u64) = (30, 60);
/// Refresh a registration at a uniform share of the granted expiry in this range, in %.
const REGISTER_REFRESH_PERCENT: (u64, u64) = (50, 90);
/// The longest expiry we ask for after a 423 Min-Expires (RFC 3261 §10.2.8): a day.
const REGISTER_EXPIRES_S_MAX: u32 = 86_400;
/// A caller that decided to give up sends CANCEL after a uniform wait in this range.
const CANCEL_AFTER_S: (u64, u64) = (5, 40);
/// Nobody rings for ever in a long run: a callee that "lets it ring" answers 480 after this,
/// and a caller still hearing ringing after this CANCELs. pbx's own no-answer timer (a
/// minute or so) should always fire first; this only keeps a phone from being stuck in a call
/// when the pbx behind it vanished. RFC 3261 §16.6 Timer C is "greater than 3 minutes".
const RING_S_MAX: u64 = 300;
/// The callee's exponential talk time is cut at this many means, so no call lasts for days.
const TALK_MEANS_MAX: u64 = 10;
/// The callee's talk time is at least this (brief: "min 1 s").
const TALK_S_MIN: u64 = 1;
/// One RTP packet carries 20 ms of PCMU at 8 kHz: 160 bytes (RFC 3551 §4.5.14).
const RTP_PAYLOAD_BYTES: usize = 160;
const RTP_HEADER_BYTES: usize = 12;
/// PCMU's static payload type (RFC 3551 Table 4).
const RTP_PT_PCMU: u8 = 0;
/// μ-law silence.
const PCMU_SILENCE: u8 = 0xFF;
const MAX_FORWARDS: u8 = 70;
/// The telephone-event payload type the phones offer (RFC 4733 §7.1.1; dynamic).
const RTP_PT_TELEPHONE_EVENT: u8 = 101;
/// A room talker's packet time: one 20 ms frame.
const ROOM_FRAME: Duration = Duration::from_millis(20);
/// A room's first key press goes out this long after its answer (the user hears the prompt).
const ROOM_FIRST_KEY: Duration = Duration::from_secs(1);
/// Key presses in a room are this far apart: more than the network holds a datagram back
/// (200 ms at most), so a late packet of one press never arrives after the next press.
const ROOM_KEY_GAP: Duration = Duration::from_millis(400);
/// Packets one key press is sent in (RFC 4733 §2.5.1: repeated while the key is down, the end
/// packet three times): the room reads the press from whichever arrives first.
const ROOM_KEY_PACKETS: u16 = 5;

const _: () = assert!(T1.as_millis() < T2.as_millis());
const _: () = assert!(REGISTER_RETRY_S.0 <= REGISTER_RETRY_S.1);
const _: () = assert!(REGISTER_REFRESH_PERCENT.0 <= REGISTER_REFRESH_PERCENT.1 && REGISTER_REFRESH_PERCENT.1 < 100);
const _: () = assert!(CANCEL_AFTER_S.0 <= CANCEL_AFTER_S.1);

/// Source ports a push app may register from: its configured SIP port and the next ones.
pub const PUSH_PORTS: u16 = 8;

/// A phone that is a mobile app woken by push (RFC 8599).
#[derive(Clone, Debug)]
pub struct PushApp {
    /// `pn-provider` and `pn-param` of its Contact.
    pub provider: String,
    pub param: String,
    /// Its first `pn-prid` (the app's token).
    pub token: String,
    /// From a push to its REGISTER, milliseconds (uniform).
    pub wake_ms: (u64, u64),
    /// A woken app registers from another source port with this probability.
    pub new_port: f64,
    /// It stays awake this long after a push or its last call.
    pub awake: Duration,
}

/// Who a phone is and how its user behaves.
#[derive(Clone, Debug)]
pub struct PhoneConfig {
    /// E.g. "201"; also the digest user name.
    pub extension: String,
    pub password: String,
    /// The phone's SIP UDP address (e.g. 10.1.0.7:5060).
    pub sip: SocketAddr,
    /// Its RTP address (port even).
    pub rtp: SocketAddr,
    /// The pbx's SIP address (e.g. 10.0.0.1:5060); the domain in URIs is `pbx.ip()`.
    pub pbx: SocketAddr,
    /// Asked for in REGISTER; the phone uses whatever the pbx grants.
    pub register_expires_s: u32,
    pub behaviour: Behaviour,
    /// A mobile app woken by push, or a desk phone (`None`).
    pub push: Option<PushApp>,
}

/// The user behind the phone. Probabilities outside 0..=1 (or NaN) are clamped (NaN → 0).
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// On an incoming call: answer (200) with this probability,
    pub answer_probability: f64,
    /// else reject with 486 (or 603, 50/50) with this, else let it ring "for ever" (480 after
    /// [`RING_S_MAX`], in case the pbx never cancels).
    pub reject_probability: f64,
    /// Uniform think time before answering or rejecting, seconds (low, high).
    pub ring_s: (u64, u64),
    /// A caller that hears ringing gives up (CANCEL) after a uniform 5..40 s with this
    /// probability.
    pub cancel_probability: f64,
    /// The callee's own talk time when it answers: exponential with this mean (min 1 s).
    pub talk_s_mean: u64,
    /// While a call is established, one small RTP packet goes from `rtp` to the peer's media
    /// address every this many seconds, the first at establishment (0 = never).
    pub rtp_interval_s: u64,
    /// What the user does in a conference room.
    pub room: RoomBehaviour,
}

/// A participant of a conference room: how it talks and what it keys.
#[derive(Clone, Debug)]
pub struct RoomBehaviour {
    /// Spurts of talking last this many seconds (uniform) ...
    pub talk_s: (u64, u64),
    /// ... and the pauses between them this many.
    pub pause_s: (u64, u64),
    /// At each change between talking and pausing, key `*6` with this probability.
    pub mute_probability: f64,
    /// At the end of the stay, vanish instead of hanging up, with this probability.
    pub vanish_probability: f64,
}

impl Default for RoomBehaviour {
    fn default() -> Self {
        RoomBehaviour { talk_s: (1, 6), pause_s: (1, 10), mute_probability: 0.15, vanish_probability: 0.0 }
    }
}

pub enum PhoneInput {
    /// A datagram for the phone; `to` is its SIP address ([`Phone::sip`]) or `config.rtp` (RTP
    /// is absorbed); anything else (a push app's old port) is dropped.
    Datagram { from: SocketAddr, to: SocketAddr, bytes: Bytes },
    /// Place a call; after the answer the caller hangs up after `talk` (unless the callee
    /// does first). Ignored ([`PhoneEvent::DialIgnored`]) when away, in a call, or not
    /// registered.
    Dial { callee: String, talk: Duration },
    /// The phone vanishes: every call and transaction is dropped without a word (no BYE, no
    /// unREGISTER, no events), and all input but `ComeBack` is ignored.
    GoAway,
    /// Back with fresh state: registers anew, with a new REGISTER Call-ID.
    ComeBack,
    /// Dial the conference room `room` and take part (see the module doc) until `stay` has
    /// passed since it answered: key `pin` and `#` first when there is one, talk at `tone_hz`
    /// (one of [`crate::audio::TONES_HZ`]). Ignored like `Dial`.
    JoinRoom { room: String, pin: Option<String>, stay: Duration, tone_hz: u32 },
    /// Hang up the established call now, as if its talk time had run out (both parties
    /// saying goodbye at once makes BYEs cross). Ignored outside an established call.
    HangUp,
    /// A push reached the app: it wakes and registers (ignored by a phone that is no app).
    Push,
    /// The app has a new push token (the old one is void): its next REGISTER carries it.
    NewToken { token: String },
    /// Nothing happened but time: `now` reached [`Phone::poll_timeout`].
    Timeout,
}

pub enum PhoneOutput {
    Transmit { from: SocketAddr, to: SocketAddr, bytes: Bytes },
    Event(PhoneEvent),
}

/// What happened, for the simulator's checker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhoneEvent {
    /// A 200 to REGISTER, with the expiry the pbx granted (Contact `;expires=`, else
    /// `Expires`, else what we asked).
    Registered {
        expires_s: u32,
    },
    /// A final non-2xx other than a challenge we could answer, or no final response within
    /// 32 s (code 408). The phone retries 30–60 s later.
    RegisterFailed {
        code: u16,
    },
    DialIgnored,
    Dialing {
        call_id: String,
        callee: String,
    },
    /// The first 180/183 as caller.
    Ringing {
        call_id: String,
    },
    /// Caller: a final non-2xx to the (authenticated) INVITE, 408 on timeout, 487 after our
    /// CANCEL. `reason`: the response's reason phrase (empty on a timeout): what a feature
    /// code did, for one (`Forwarding on: always to 1002`).
    CallFailed {
        call_id: String,
        code: u16,
        reason: String,
    },
    /// Callee: a new INVITE from the pbx (`caller` is the From user part).
    Incoming {
        call_id: String,
        caller: String,
    },
    /// 2xx exchanged. Caller: on receiving the 200. Callee: on *sending* the 200, so an ACK
    /// that never comes shows as `Ended { reason: Timeout }` after this.
    Established {
        call_id: String,
        peer: String,
        caller: bool,
    },
    /// An established call is over for this phone. For a local hangup this is announced when
    /// the BYE gets its final response (or times out: `Timeout`). Also a call whose BYE
    /// overtook its 2xx (`RemoteBye` before any `Established`).
    Ended {
        call_id: String,
        peer: String,
        reason: EndReason,
    },
    /// The phone sent a BYE, a CANCEL or a refusal (the first time, not its retransmissions):
    /// only these may end, cancel or refuse its calls, whatever strangers send.
    Said {
        call_id: String,
        peer: String,
        word: Word,
    },
    /// A step of a call to a conference room (after its `Dialing`).
    Room {
        call_id: String,
        event: RoomEvent,
    },
}

/// What a participant of a conference room did, as the phone saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomEvent {
    /// It dialled the room, and will talk at this tone.
    Dialled { room: String, tone_hz: u32 },
    /// The room answered: its RTP comes from (and goes to) `media`.
    Answered { media: SocketAddr },
    /// The PIN's `#` went out (at the answer when the room has no PIN): it should be in.
    Entered,
    /// It started (`true`) or stopped talking.
    Loud(bool),
    /// The `6` of `*6` went out: it should be muted (`true`) or unmuted.
    Muted(bool),
    /// It vanished: no BYE, no more RTP; only the room's silence timer can end the call.
    Vanished,
}

/// What a phone's user said to end, give up or refuse a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    /// A BYE (a hang-up, or the end of a call whose 2xx was never ACKed).
    Bye,
    /// A CANCEL of a ringing call.
    Cancel,
    /// A final non-2xx to an INVITE: 486 (busy or rejected), 603, 480 (rang too long).
    Reject(u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// We sent BYE and it was answered.
    LocalHangup,
    /// The peer sent BYE.
    RemoteBye,
    /// Our 2xx was never ACKed (we then sent BYE), or our BYE was never answered.
    Timeout,
}

/// A simulated SIP phone. See the module doc for the calling contract.
pub struct Phone {
    config: PhoneConfig,
    /// Where its SIP is now: `config.sip`, or another of a push app's ports.
    sip: SocketAddr,
    /// A push app: its token, the one it registers with next, when it falls asleep again, and
    /// when the app woken by a push sends its REGISTER.
    token: String,
    next_token: Option<String>,
    awake_until: Timestamp,
    wake_at: Option<Timestamp>,
    rng: StdRng,
    away: bool,
    outputs: VecDeque<PhoneOutput>,
    registration: Registration,
    call: Option<Call>,
    /// Our requests waiting for a final response (or, for INVITE, any response).
    transactions: Vec<ClientTransaction>,
    /// Our final responses to INVITEs, retransmitted until ACKed.
    finals: Vec<PendingFinal>,
    /// The last response to each request we answered, by (Call-ID, CSeq, method), so a
    /// retransmitted request gets the same bytes rather than a new transaction.
    responses: BTreeMap<(String, u32, String), Cached>,
    /// The ACK we sent for each INVITE final, by (Call-ID, CSeq), so a retransmitted final
    /// response is ACKed again (RFC 3261 §13.2.2.4, §17.1.1.2).
    acks: BTreeMap<(String, u32), Cached>,
    /// The last nonce we answered and its count, so a reused nonce gets nc+1 (RFC 7616 §3.4).
    nonce: Option<(String, u32)>,
}

/// A datagram kept to be sent again, and until when it is worth keeping.
struct Cached {
    to: SocketAddr,
    bytes: Bytes,
    until: Timestamp,
}

struct Registration {
    call_id: String,
    from_tag: String,
    cseq: u32,
    expires_s: u32,
    /// When the next REGISTER (first, refresh or retry) goes out.
    send_at: Option<Timestamp>,
    /// This attempt already answered a challenge: another non-stale one means bad
    /// credentials.
    answered_challenge: bool,
    /// The binding the pbx granted lasts until then.
    granted_until: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Register,
    Invite,
    Cancel,
    Bye,
}

impl Kind {
    fn method(self) -> &'static str {
        match self {
            Kind::Register => "REGISTER",
            Kind::Invite => "INVITE",
            Kind::Cancel => "CANCEL",
            Kind::Bye => "BYE",
        }
    }
}

/// A client transaction (RFC 3261 §17.1), keyed by branch and method (a CANCEL shares its
/// INVITE's branch).
#[derive(Clone)]
struct ClientTransaction {
    kind: Kind,
    branch: String,
    call_id: String,
    cseq: u32,
    to: SocketAddr,
    bytes: Bytes,
    /// The next retransmission; `None` once an INVITE has had a provisional response.
    resend_at: Option<Timestamp>,
    interval: Duration,
    /// When the transaction times out; `None` for an INVITE in its proceeding state.
    give_up_at: Option<Timestamp>,
}

/// One of our final responses to an INVITE, resent until the ACK (Timers G/H, §13.3.1.4).
struct PendingFinal {
    call_id: String,
    cseq: u32,
    success: bool,
    to: SocketAddr,
    bytes: Bytes,
    resend_at: Timestamp,
    interval: Duration,
    give_up_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Caller: INVITE sent, no response yet.
    Calling,
    /// Caller: a provisional response came.
    Proceeding,
    /// Caller: CANCEL sent, waiting for the 487 (or a racing 200).
    Cancelling,
    /// Callee: 180 sent, the user is thinking (or lets it ring).
    Offered,
    /// Both: 2xx exchanged, media flowing.
    Established,
    /// Both: we sent BYE and wait for its answer; the reason to announce then.
    Terminating(EndReasonCode),
}

/// Why we are sending BYE: the [`EndReason`] to announce when it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndReasonCode {
    LocalHangup,
    Timeout,
}

/// What the callee's user will do once the think time is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Answer,
    Reject(u16),
}

/// The one call a phone can have (set up, established or being torn down).
struct Call {
    call_id: String,
    caller: bool,
    /// The other party's extension (callee for a caller, From user for a callee).
    peer: String,
    phase: Phase,
    /// Our From (caller) or To (callee) header value, with our tag.
    local: String,
    /// The peer's header value, with its tag once known.
    remote: String,
    /// The CSeq of our next in-dialog request.
    next_cseq: u32,
    /// Where in-dialog requests go: the peer's Contact URI and its address.
    target: Option<(String, SocketAddr)>,
    /// The peer's RTP address from its SDP.
    media: Option<SocketAddr>,
    /// Our SDP (kept so a re-INVITE gets the same one).
    sdp: Bytes,
    rtp_seq: u16,
    rtp_timestamp: u32,
    rtp_ssrc: u32,
    rtp_at: Option<Timestamp>,
    hangup_at: Option<Timestamp>,
    /// Caller: the INVITE's Request-URI, branch and CSeq (ACK of non-2xx and CANCEL reuse
    /// them), the talk time, and whether a challenge was already answered.
    invite_uri: String,
    invite_branch: String,
    invite_cseq: u32,
    talk: Duration,
    answered_challenge: bool,
    ringing_heard: bool,
    cancel_at: Option<Timestamp>,
    /// Callee: the INVITE being answered and where it came from, and the user's plan.
    invite: Option<(Request, SocketAddr)>,
    decision: Option<(Timestamp, Decision)>,
    /// A call to a conference room: what the participant does there.
    room: Option<RoomCall>,
}

/// What a key press in a room is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyRole {
    Pin,
    /// The `#` after the PIN: in the room once it arrives.
    Enter,
    /// The `*` of `*6`.
    Star,
    /// The `6` of `*6`: mute or unmute.
    Mute,
}

/// A participant's plan and state in a conference room.
struct RoomCall {
    /// The payload of a packet while talking: a frame of its tone.
    tone: [u8; RTP_PAYLOAD_BYTES],
    tone_hz: u32,
    pin: Option<String>,
    /// Key presses still to make, and when the next goes out.
    keys: VecDeque<(char, KeyRole)>,
    key_at: Option<Timestamp>,
    loud: bool,
    muted: bool,
    /// The next change between talking and pausing (once in the room).
    turn_at: Option<Timestamp>,
    /// At the end of the stay, vanish rather than hang up.
    vanish: bool,
    /// RTP timestamp 0: the answer. Timestamps follow the clock, silence or not.
    origin: Timestamp,
}

impl Phone {
    /// A phone that will REGISTER as soon as it is polled (`poll_timeout() == Some(now)`).
    pub fn new(config: PhoneConfig, seed: u64, now: Timestamp) -> Phone {
        let mut rng = StdRng::seed_from_u64(seed);
        let registration = Registration::fresh(&mut rng, &config, now);
        let token = config.push.as_ref().map(|p| p.token.clone()).unwrap_or_default();
        Phone {
            sip: config.sip,
            token,
            next_token: None,
            awake_until: now,
            wake_at: None,
            config,
            rng,
            away: false,
            outputs: VecDeque::new(),
            registration,
            call: None,
            transactions: Vec::new(),
            finals: Vec::new(),
            responses: BTreeMap::new(),
            acks: BTreeMap::new(),
            nonce: None,
        }
    }

    pub fn config(&self) -> &PhoneConfig {
        &self.config
    }

    pub fn is_away(&self) -> bool {
        self.away
    }

    /// Its SIP address now (a push app may have moved to another port).
    pub fn sip(&self) -> SocketAddr {
        self.sip
    }

    /// The push token it registers with (empty for a phone that is no app).
    pub fn push_token(&self) -> &str {
        &self.token
    }

    /// A push app that would drop a request arriving now: no call, not woken lately.
    pub fn is_asleep(&self, now: Timestamp) -> bool {
        self.config.push.is_some() && self.call.is_none() && self.finals.is_empty() && now >= self.awake_until
    }

    /// The Call-ID of the call being set up, in progress or being torn down.
    pub fn in_call(&self) -> Option<&str> {
        self.call.as_ref().map(|c| c.call_id.as_str())
    }

    /// Whether the pbx's last grant still covers `now`.
    pub fn is_registered(&self, now: Timestamp) -> bool {
        self.registration.granted_until.is_some_and(|until| now < until)
    }

    pub fn poll_output(&mut self) -> Option<PhoneOutput> {
        self.outputs.pop_front()
    }

    /// The earliest time a timer is due; `None` when away.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.away {
            return None;
        }
        let mut times = vec![self.registration.send_at, self.wake_at];
        for tx in &self.transactions {
            times.extend([tx.resend_at, tx.give_up_at]);
        }
        for f in &self.finals {
            times.extend([Some(f.resend_at), Some(f.give_up_at)]);
        }
        if let Some(call) = &self.call {
            times.extend([call.rtp_at, call.hangup_at, call.cancel_at, call.decision.map(|(at, _)| at)]);
            if let Some(room) = call.room.as_ref().filter(|_| call.phase == Phase::Established) {
                times.extend([room.key_at, room.turn_at]);
            }
        }
        times.into_iter().flatten().min()
    }

    pub fn handle(&mut self, now: Timestamp, input: PhoneInput) {
        match input {
            PhoneInput::GoAway => {
                self.go_away();
                return;
            }
            // Told even when it is off: the app has its new token when it starts again.
            PhoneInput::NewToken { token } => {
                if self.config.push.is_some() {
                    self.next_token = Some(token);
                }
                return;
            }
            PhoneInput::ComeBack => {
                if self.away {
                    self.away = false;
                    self.registration = Registration::fresh(&mut self.rng, &self.config, now);
                    self.awake_until = now;
                }
                return;
            }
            _ if self.away => return,
            _ => {}
        }
        let busy = self.call.is_some() || !self.finals.is_empty();
        self.prune_caches(now);
        self.run_timers(now);
        match input {
            PhoneInput::Datagram { from, to, bytes } => {
                if to != self.sip {
                    return; // RTP from the pbx, a stray, or a push app's old port: nothing to do.
                }
                match parse_datagram(&bytes) {
                    // A sleeping app hears no request (the OS holds no socket open for it).
                    Ok(Message::Request(_)) if self.is_asleep(now) => {}
                    Ok(Message::Request(request)) => self.on_request(now, from, request),
                    Ok(Message::Response(response)) => self.on_response(now, response),
                    Err(_) => {} // Malformed: a phone just drops it.
                }
            }
            PhoneInput::Dial { callee, talk } => self.dial(now, callee, talk, None),
            PhoneInput::JoinRoom { room, pin, stay, tone_hz } => {
                let vanish = self.chance(self.config.behaviour.room.vanish_probability);
                let plan = RoomCall {
                    tone: crate::audio::tone_frame(tone_hz),
                    tone_hz,
                    pin,
                    keys: VecDeque::new(),
                    key_at: None,
                    loud: false,
                    muted: false,
                    turn_at: None,
                    vanish,
                    origin: now,
                };
                self.dial(now, room, stay, Some(plan))
            }
            PhoneInput::HangUp => {
                if let Some(call) = self.call.as_mut().filter(|c| c.phase == Phase::Established) {
                    call.hangup_at = Some(now);
                    self.run_timers(now);
                }
            }
            PhoneInput::Push => {
                if let Some(app) = &self.config.push {
                    let (awake, wake_ms) = (app.awake, app.wake_ms);
                    self.awake_until = self.awake_until.max(now + awake);
                    let (low, high) = (wake_ms.0.min(wake_ms.1), wake_ms.0.max(wake_ms.1));
                    let delay = Duration::from_micros(self.rng.random_range(low * 1_000..=high * 1_000));
                    self.wake_at = Some(self.wake_at.map_or(now + delay, |at| at.min(now + delay)));
                }
            }
            PhoneInput::Timeout | PhoneInput::GoAway | PhoneInput::ComeBack | PhoneInput::NewToken { .. } => {}
        }
        // The app stays awake through a call and a while after it.
        let busy = busy || self.call.is_some() || !self.finals.is_empty();
        if let Some(app) = self.config.push.as_ref().filter(|_| busy) {
            self.awake_until = self.awake_until.max(now + app.awake);
        }
    }

    /// The app, woken by a push, registers: from a new port with a new registration now and
    /// then (it was restarted; never in a call, whose dialog names the old address), else
    /// at once in its registration, superseding a REGISTER still unanswered.
    fn wake(&mut self, now: Timestamp) {
        let Some(app) = &self.config.push else { return };
        let new_port = app.new_port;
        if self.call.is_none() && self.finals.is_empty() && self.chance(new_port) {
            let base = self.config.sip.port();
            let current = self.sip.port() - base;
            let next = (current + 1 + self.rng.random_range(0..PUSH_PORTS - 1)) % PUSH_PORTS;
            self.sip = SocketAddr::new(self.config.sip.ip(), base + next);
            self.transactions.retain(|t| t.kind != Kind::Register);
            self.registration = Registration::fresh(&mut self.rng, &self.config, now);
        } else {
            self.registration.send_at = Some(now);
        }
        self.registration.answered_challenge = false;
    }

    fn go_away(&mut self) {
        self.away = true;
        self.wake_at = None;
        self.outputs.clear();
        self.call = None;
        self.transactions.clear();
        self.finals.clear();
        self.responses.clear();
        self.acks.clear();
        self.nonce = None;
        self.registration.send_at = None;
        self.registration.granted_until = None;
    }

    // ---- plumbing -------------------------------------------------------------------------

    fn transmit(&mut self, to: SocketAddr, bytes: Bytes) {
        self.outputs.push_back(PhoneOutput::Transmit { from: self.sip, to, bytes });
    }

    fn event(&mut self, event: PhoneEvent) {
        self.outputs.push_back(PhoneOutput::Event(event));
    }

    fn token(&mut self) -> String {
        format!("{:016x}", self.rng.random::<u64>())
    }

    fn branch(&mut self) -> String {
        format!("z9hG4bK{}", self.token())
    }

    fn domain(&self) -> IpAddr {
        self.config.pbx.ip()
    }

    fn contact(&self) -> String {
        format!("<{}>", self.contact_uri())
    }

    /// Its Contact URI: with the push parameters (RFC 8599 §4.1) for an app.
    fn contact_uri(&self) -> String {
        match &self.config.push {
            None => format!("sip:{}@{}", self.config.extension, self.sip),
            Some(app) => format!(
                "sip:{}@{};pn-provider={};pn-param={};pn-prid={}",
                self.config.extension, self.sip, app.provider, app.param, self.token
            ),
        }
    }

    /// A uniform duration between `low_s` and `high_s` seconds (inclusive), µs resolution.
    fn uniform(&mut self, (low_s, high_s): (u64, u64)) -> Duration {
        let (low, high) = (low_s.min(high_s) * 1_000_000, low_s.max(high_s) * 1_000_000);
        Duration::from_micros(self.rng.random_range(low..=high))
    }

    fn chance(&mut self, p: f64) -> bool {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.rng.random_bool(p)
    }

    fn prune_caches(&mut self, now: Timestamp) {
        self.responses.retain(|_, c| c.until > now);
        self.acks.retain(|_, c| c.until > now);
    }

    /// Prints a request: the header order every UA here uses (RFC 3261 §8.1.1).
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        method: &str,
        uri: &str,
        branch: &str,
        from: &str,
        to: &str,
        call_id: &str,
        cseq: u32,
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Bytes {
        let mut text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch};rport\r\nMax-Forwards: {MAX_FORWARDS}\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n",
            self.sip
        );
        for (name, value) in extra {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str(&format!("User-Agent: pbx-sim-phone\r\nContent-Length: {}\r\n\r\n", body.len()));
        let mut bytes = BytesMut::from(text.as_bytes());
        bytes.put_slice(body);
        bytes.freeze()
    }

    /// Sends a request and opens its client transaction.
    fn start_transaction(
        &mut self,
        now: Timestamp,
        kind: Kind,
        (branch, call_id, cseq): (String, String, u32),
        to: SocketAddr,
        bytes: Bytes,
    ) {
        // A phone has at most one of each kind in flight; the bound guards against a bug.
        if self.transactions.len() >= CLIENT_TRANSACTIONS_MAX {
            self.transactions.remove(0);
        }
        self.transmit(to, bytes.clone());
        self.transactions.push(ClientTransaction {
            kind,
            branch,
            call_id,
            cseq,
            to,
            bytes,
            resend_at: Some(now + T1),
            interval: T1,
            give_up_at: Some(now + TRANSACTION_TIMEOUT),
        });
    }

    /// Sends a response and caches it against retransmissions of its request.
    fn respond(&mut self, now: Timestamp, request: &Request, to: SocketAddr, response: Response) {
        let bytes = response.to_bytes();
        if let (Some(call_id), Some(cseq)) = (request.call_id(), request.cseq()) {
            if self.responses.len() >= RESPONSES_CACHED_MAX {
                self.responses.pop_first();
            }
            let key = (call_id, cseq.cseq, request.method.to_string());
            self.responses.insert(key, Cached { to, bytes: bytes.clone(), until: now + RESPONSE_CACHE_TIMEOUT });
        }
        self.transmit(to, bytes);
    }

    /// Sends a final response to an INVITE and keeps resending it until the ACK.
    fn respond_final(&mut self, now: Timestamp, request: &Request, to: SocketAddr, response: Response) {
        let success = (200..300).contains(&response.code);
        self.respond(now, request, to, response);
        let (Some(call_id), Some(cseq)) = (request.call_id(), request.cseq()) else { return };
        let Some(bytes) = self.responses.get(&(call_id.clone(), cseq.cseq, "INVITE".into())).map(|c| c.bytes.clone())
        else {
            return;
        };
        if self.finals.len() >= FINALS_PENDING_MAX {
            self.finals.remove(0);
        }
        self.finals.push(PendingFinal {
            call_id,
            cseq: cseq.cseq,
            success,
            to,
            bytes,
            resend_at: now + T1,
            interval: T1,
            give_up_at: now + TRANSACTION_TIMEOUT,
        });
    }

    fn sdp(&mut self) -> Bytes {
        let ip = self.config.rtp.ip();
        let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
        let session = self.rng.random_range(1..=u32::MAX);
        Bytes::from(format!(
            "v=0\r\no=- {session} 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n",
            self.config.rtp.port()
        ))
    }

    // ---- timers ---------------------------------------------------------------------------

    fn run_timers(&mut self, now: Timestamp) {
        if self.wake_at.is_some_and(|at| at <= now) {
            self.wake_at = None;
            self.wake(now);
        }
        if self.registration.send_at.is_some_and(|at| at <= now) {
            self.registration.send_at = None;
            self.registration.answered_challenge = false;
            self.send_register(now, None);
        }

        // Client transactions: time out, else retransmit.
        let (expired, alive): (Vec<_>, Vec<_>) = std::mem::take(&mut self.transactions)
            .into_iter()
            .partition(|tx| tx.give_up_at.is_some_and(|at| at <= now));
        self.transactions = alive;
        for i in 0..self.transactions.len() {
            let tx = &mut self.transactions[i];
            if tx.resend_at.is_some_and(|at| at <= now) {
                tx.interval = if tx.kind == Kind::Invite { tx.interval * 2 } else { (tx.interval * 2).min(T2) };
                tx.resend_at = Some(now + tx.interval);
                let (to, bytes) = (tx.to, tx.bytes.clone());
                self.transmit(to, bytes);
            }
        }
        for tx in expired {
            self.on_transaction_timeout(now, tx);
        }

        // Our INVITE finals awaiting ACK: give up, else resend.
        let (expired, alive): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.finals).into_iter().partition(|f| f.give_up_at <= now);
        self.finals = alive;
        for i in 0..self.finals.len() {
            let f = &mut self.finals[i];
            if f.resend_at <= now {
                f.interval = (f.interval * 2).min(T2);
                f.resend_at = now + f.interval;
                let (to, bytes) = (f.to, f.bytes.clone());
                self.transmit(to, bytes);
            }
        }
        for f in expired {
            // RFC 3261 §13.3.1.4: a 2xx never ACKed ends the dialog with a BYE.
            let ours = self.call.as_ref().is_some_and(|c| c.call_id == f.call_id && c.phase == Phase::Established);
            if f.success && ours {
                self.send_bye(now, EndReasonCode::Timeout);
            }
        }

        self.run_call_timers(now);
    }

    fn run_call_timers(&mut self, now: Timestamp) {
        let due = |at: Option<Timestamp>| at.is_some_and(|at| at <= now);
        let Some(call) = &mut self.call else { return };
        if let Some((at, decision)) = call.decision
            && at <= now
        {
            call.decision = None;
            self.decide(now, decision);
        }
        let Some(call) = &mut self.call else { return };
        if due(call.cancel_at) {
            call.cancel_at = None;
            if call.phase == Phase::Proceeding {
                self.send_cancel(now);
            }
        }
        let Some(call) = &mut self.call else { return };
        if due(call.hangup_at) && call.phase == Phase::Established && call.room.as_ref().is_some_and(|r| r.vanish) {
            return self.vanish();
        }
        if due(call.hangup_at) {
            call.hangup_at = None;
            let (call_id, established) = (call.call_id.clone(), call.phase == Phase::Established);
            // RFC 3261 §15: the callee should not send BYE before its 2xx is ACKed; try again
            // shortly (the 2xx gives up within 64·T1 anyway).
            if self.finals.iter().any(|f| f.call_id == call_id && f.success) {
                if let Some(call) = &mut self.call {
                    call.hangup_at = Some(now + T1);
                }
            } else if established {
                self.send_bye(now, EndReasonCode::LocalHangup);
            }
        }
        self.run_room_timers(now);
        let Some(call) = &mut self.call else { return };
        if due(call.rtp_at) {
            let at = call.rtp_at.take().unwrap_or(now);
            if call.phase == Phase::Established {
                self.send_rtp(now, at);
            }
        }
    }

    fn on_transaction_timeout(&mut self, now: Timestamp, tx: ClientTransaction) {
        match tx.kind {
            Kind::Register => self.register_failed(now, 408),
            Kind::Invite => {
                if self.call.as_ref().is_some_and(|c| c.caller && c.call_id == tx.call_id && c.invite_cseq == tx.cseq) {
                    self.call_failed(408, "");
                }
            }
            Kind::Cancel => {} // The INVITE's own timer decides.
            Kind::Bye => self.end_after_bye(&tx.call_id, EndReason::Timeout),
        }
    }

    // ---- registration ---------------------------------------------------------------------

    fn send_register(&mut self, now: Timestamp, authorization: Option<(&str, String)>) {
        // One REGISTER at a time (RFC 3261 §10.2): a new one supersedes one unanswered (only a
        // woken app starts one early). A new flow carries the app's newest token.
        self.transactions.retain(|t| t.kind != Kind::Register);
        if authorization.is_none()
            && let Some(token) = self.next_token.take()
        {
            self.token = token;
        }
        let reg = &mut self.registration;
        reg.cseq += 1;
        let (call_id, cseq, expires) = (reg.call_id.clone(), reg.cseq, reg.expires_s);
        let aor = format!("<sip:{}@{}>", self.config.extension, self.domain());
        let from = format!("{aor};tag={}", self.registration.from_tag);
        let branch = self.branch();
        let mut extra = vec![("Contact", self.contact()), ("Expires", expires.to_string())];
        if let Some((name, value)) = authorization {
            extra.push((name, value));
        }
        let uri = format!("sip:{}", self.domain());
        let bytes = self.request("REGISTER", &uri, &branch, &from, &aor, &call_id, cseq, &extra, b"");
        self.start_transaction(now, Kind::Register, (branch, call_id, cseq), self.config.pbx, bytes);
    }

    fn register_failed(&mut self, now: Timestamp, code: u16) {
        self.event(PhoneEvent::RegisterFailed { code });
        let wait = self.uniform(REGISTER_RETRY_S);
        self.registration.send_at = Some(now + wait);
    }

    fn on_register_response(&mut self, now: Timestamp, response: &Response) {
        match response.code {
            200..=299 => {
                let granted =
                    granted_expiry(response, &self.contact_uri(), self.sip).unwrap_or(self.registration.expires_s);
                self.registration.granted_until = Some(now + Duration::from_secs(granted.into()));
                self.event(PhoneEvent::Registered { expires_s: granted });
                let wait = if granted == 0 {
                    self.uniform(REGISTER_RETRY_S)
                } else {
                    let percent = self.rng.random_range(REGISTER_REFRESH_PERCENT.0..=REGISTER_REFRESH_PERCENT.1);
                    Duration::from_micros(u64::from(granted) * 10_000 * percent)
                };
                self.registration.send_at = Some(now + wait);
            }
            401 | 407 => {
                let uri = format!("sip:{}", self.domain());
                match self.answer_challenge(response, "REGISTER", &uri) {
                    Some((auth, stale)) if stale || !self.registration.answered_challenge => {
                        self.registration.answered_challenge = true;
                        self.send_register(now, Some(auth));
                    }
                    _ => self.register_failed(now, response.code),
                }
            }
            423 => {
                // RFC 3261 §10.2.8: ask again with at least Min-Expires.
                let min = response.header(&Name::MIN_EXPIRES).and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(min) if min > self.registration.expires_s && min <= REGISTER_EXPIRES_S_MAX => {
                        self.registration.expires_s = min;
                        self.send_register(now, None);
                    }
                    _ => self.register_failed(now, 423),
                }
            }
            code => self.register_failed(now, code),
        }
    }

    /// The (Proxy-)Authorization header answering the MD5 challenge of a 401/407, and whether
    /// the challenge said `stale=true`; `None` when there is no MD5 challenge we can read.
    fn answer_challenge(
        &mut self,
        response: &Response,
        method: &str,
        uri: &str,
    ) -> Option<((&'static str, String), bool)> {
        let (challenge_name, answer_name) = if response.code == 407 {
            (Name::PROXY_AUTHENTICATE, "Proxy-Authorization")
        } else {
            (Name::WWW_AUTHENTICATE, "Authorization")
        };
        let challenge = response.headers.get_raw(&challenge_name).find_map(|v| {
            let c = Challenge::parse(v.as_str())?;
            c.md5.then_some(c)
        })?;
        let nc = match &mut self.nonce {
            Some((nonce, count)) if *nonce == challenge.nonce => {
                *count += 1;
                *count
            }
            _ => 1,
        };
        self.nonce = Some((challenge.nonce.clone(), nc));
        let cnonce = self.token();
        let value = authorization(&self.config.extension, &self.config.password, &challenge, method, uri, &cnonce, nc);
        Some(((answer_name, value), challenge.stale))
    }

    // ---- calls as caller ------------------------------------------------------------------

    fn dial(&mut self, now: Timestamp, callee: String, talk: Duration, room: Option<RoomCall>) {
        if self.call.is_some() || !self.is_registered(now) {
            self.event(PhoneEvent::DialIgnored);
            return;
        }
        let call_id = format!("{}@{}", self.token(), self.sip.ip());
        let tag = self.token();
        let local = format!("<sip:{}@{}>;tag={tag}", self.config.extension, self.domain());
        let invite_uri = format!("sip:{callee}@{}", self.domain());
        let sdp = self.sdp();
        let ssrc = self.rng.random();
        self.call = Some(Call {
            call_id: call_id.clone(),
            caller: true,
            peer: callee.clone(),
            phase: Phase::Calling,
            local,
            remote: format!("<{invite_uri}>"),
            next_cseq: 1,
            target: None,
            media: None,
            sdp,
            rtp_seq: 0,
            rtp_timestamp: 0,
            rtp_ssrc: ssrc,
            rtp_at: None,
            hangup_at: None,
            invite_uri,
            invite_branch: String::new(),
            invite_cseq: 0,
            talk,
            answered_challenge: false,
            ringing_heard: false,
            cancel_at: None,
            invite: None,
            decision: None,
            room,
        });
        let tone = self.call.as_ref().and_then(|c| c.room.as_ref()).map(|r| r.tone_hz);
        self.event(PhoneEvent::Dialing { call_id: call_id.clone(), callee: callee.clone() });
        if let Some(tone_hz) = tone {
            self.event(PhoneEvent::Room { call_id, event: RoomEvent::Dialled { room: callee, tone_hz } });
        }
        self.send_invite(now, None);
    }

    fn send_invite(&mut self, now: Timestamp, authorization: Option<(&str, String)>) {
        let branch = self.branch();
        let contact = self.contact();
        let Some(call) = &mut self.call else { return };
        let cseq = call.next_cseq;
        call.next_cseq += 1;
        call.invite_cseq = cseq;
        call.invite_branch = branch.clone();
        call.phase = Phase::Calling;
        let mut extra = vec![("Contact", contact), ("Content-Type", "application/sdp".to_owned())];
        if let Some((name, value)) = authorization {
            extra.push((name, value));
        }
        let call = self.call.as_ref().expect("checked above");
        let bytes = self.request(
            "INVITE",
            &call.invite_uri,
            &branch,
            &call.local,
            &call.remote,
            &call.call_id,
            cseq,
            &extra,
            &call.sdp,
        );
        let call_id = call.call_id.clone();
        self.start_transaction(now, Kind::Invite, (branch, call_id, cseq), self.config.pbx, bytes);
    }

    /// RFC 3261 §9.1: CANCEL copies the INVITE's Request-URI, Via branch, From, To, Call-ID and
    /// CSeq number.
    fn send_cancel(&mut self, now: Timestamp) {
        let Some(call) = &mut self.call else { return };
        call.phase = Phase::Cancelling;
        let call = self.call.as_ref().expect("checked above");
        let (branch, call_id, cseq) = (call.invite_branch.clone(), call.call_id.clone(), call.invite_cseq);
        let bytes =
            self.request("CANCEL", &call.invite_uri, &branch, &call.local, &call.remote, &call_id, cseq, &[], b"");
        let said = PhoneEvent::Said { call_id: call_id.clone(), peer: call.peer.clone(), word: Word::Cancel };
        self.event(said);
        // The INVITE now waits for its 487 no longer than a transaction lives.
        if let Some(tx) = self.transactions.iter_mut().find(|t| t.kind == Kind::Invite && t.branch == branch) {
            tx.give_up_at = Some(now + TRANSACTION_TIMEOUT);
        }
        self.start_transaction(now, Kind::Cancel, (branch, call_id, cseq), self.config.pbx, bytes);
    }

    fn on_invite_response(&mut self, now: Timestamp, response: &Response, tx: &ClientTransaction) {
        let ours = self.call.as_ref().is_some_and(|c| c.caller && c.call_id == tx.call_id && c.invite_cseq == tx.cseq);
        if !ours {
            return;
        }
        let code = response.code;
        if code >= 300 {
            self.ack_non_2xx(now, response, tx);
        }
        let call = self.call.as_mut().expect("checked above");
        match code {
            100..=199 => {
                if call.phase == Phase::Calling {
                    call.phase = Phase::Proceeding;
                    call.cancel_at.get_or_insert(now + Duration::from_secs(RING_S_MAX));
                }
                if (code == 180 || code == 183) && !call.ringing_heard {
                    call.ringing_heard = true;
                    let call_id = call.call_id.clone();
                    self.event(PhoneEvent::Ringing { call_id });
                    if self.chance(self.config.behaviour.cancel_probability) {
                        let wait = self.uniform(CANCEL_AFTER_S);
                        if let Some(call) = &mut self.call {
                            call.cancel_at = Some(now + wait);
                        }
                    }
                }
            }
            200..=299 => self.on_invite_success(now, response),
            401 | 407 => {
                let uri = call.invite_uri.clone();
                let answered = call.answered_challenge;
                match self.answer_challenge(response, "INVITE", &uri) {
                    Some((auth, stale)) if stale || !answered => {
                        if let Some(call) = &mut self.call {
                            call.answered_challenge = true;
                        }
                        self.send_invite(now, Some(auth));
                    }
                    _ => self.call_failed(code, &response.reason),
                }
            }
            _ => self.call_failed(code, &response.reason),
        }
    }

    fn on_invite_success(&mut self, now: Timestamp, response: &Response) {
        let branch = self.branch();
        let Some(call) = &mut self.call else { return };
        let cancelled = call.phase == Phase::Cancelling;
        call.phase = Phase::Established;
        call.cancel_at = None;
        if let Some(to) = response.header(&Name::TO) {
            call.remote = to.to_owned();
        }
        let target_uri = response.header(&Name::CONTACT).map(uri_of).unwrap_or(&call.invite_uri).to_owned();
        let target_addr = address_of(&target_uri).unwrap_or(self.config.pbx);
        call.target = Some((target_uri.clone(), target_addr));
        call.media = media_of(&response.body);
        // RFC 3261 §13.2.2.4: the ACK of a 2xx is a new transaction to the remote target.
        let call = self.call.as_ref().expect("checked above");
        let bytes = self.request(
            "ACK",
            &target_uri,
            &branch,
            &call.local,
            &call.remote,
            &call.call_id,
            call.invite_cseq,
            &[],
            b"",
        );
        let (call_id, cseq, peer) = (call.call_id.clone(), call.invite_cseq, call.peer.clone());
        let room_media = call.room.as_ref().and(call.media);
        self.cache_ack(now, (call_id.clone(), cseq), target_addr, bytes);
        self.event(PhoneEvent::Established { call_id: call_id.clone(), peer, caller: true });
        if let Some(media) = room_media {
            self.event(PhoneEvent::Room { call_id, event: RoomEvent::Answered { media } });
        }
        if cancelled {
            // Our CANCEL lost the race with the answer: hang up at once (RFC 3261 §9.1).
            self.send_bye(now, EndReasonCode::LocalHangup);
            return;
        }
        self.start_talking(now);
        if let Some(call) = &mut self.call {
            call.hangup_at = Some(now + call.talk);
        }
    }

    /// RFC 3261 §17.1.1.3: the ACK of a non-2xx final has the INVITE's branch, Request-URI,
    /// From and Call-ID, and the response's To.
    fn ack_non_2xx(&mut self, now: Timestamp, response: &Response, tx: &ClientTransaction) {
        let Some(call) = &self.call else { return };
        let to = response.header(&Name::TO).unwrap_or(&call.remote);
        let bytes =
            self.request("ACK", &call.invite_uri, &tx.branch, &call.local, to, &call.call_id, tx.cseq, &[], b"");
        self.cache_ack(now, (tx.call_id.clone(), tx.cseq), self.config.pbx, bytes);
    }

    fn cache_ack(&mut self, now: Timestamp, key: (String, u32), to: SocketAddr, bytes: Bytes) {
        if self.acks.len() >= RESPONSES_CACHED_MAX {
            self.acks.pop_first();
        }
        self.acks.insert(key, Cached { to, bytes: bytes.clone(), until: now + RESPONSE_CACHE_TIMEOUT });
        self.transmit(to, bytes);
    }

    fn call_failed(&mut self, code: u16, reason: &str) {
        let Some(call) = self.call.take() else { return };
        // Its CANCEL, if any, has nothing left to cancel.
        self.transactions.retain(|t| t.call_id != call.call_id);
        self.event(PhoneEvent::CallFailed { call_id: call.call_id, code, reason: reason.to_owned() });
    }

    // ---- calls as callee ------------------------------------------------------------------

    fn on_invite(&mut self, now: Timestamp, from: SocketAddr, request: Request) {
        let Some(call_id) = request.call_id() else { return };
        if request.to().is_some_and(|to| to.tag.is_some()) {
            return self.on_reinvite(now, from, &request, &call_id);
        }
        if let Some(call) = &self.call {
            if call.call_id != call_id {
                let busy = request.response(486, Some(&self.token()));
                self.respond(now, &request, from, busy);
                let peer = request.from().map(|f| user_of(&f)).unwrap_or_default();
                self.event(PhoneEvent::Said { call_id, peer, word: Word::Reject(486) });
            }
            // Same Call-ID: a retransmission our cache no longer holds; the 180 went out.
            return;
        }
        let caller = request.from().map(|f| user_of(&f)).unwrap_or_default();
        let tag = self.token();
        let local = format!("{};tag={tag}", request.header(&Name::TO).unwrap_or_default());
        let remote = request.header(&Name::FROM).unwrap_or_default().to_owned();
        let target_uri = request.header(&Name::CONTACT).map(uri_of).unwrap_or_default().to_owned();
        let target_addr = address_of(&target_uri).unwrap_or(from);
        let behaviour = self.config.behaviour.clone();
        let roll: f64 = self.rng.random_range(0.0..1.0);
        let think = self.uniform(behaviour.ring_s);
        let decision = if roll < behaviour.answer_probability {
            (think, Decision::Answer)
        } else if roll < behaviour.answer_probability + behaviour.reject_probability {
            (think, Decision::Reject(if self.rng.random_bool(0.5) { 486 } else { 603 }))
        } else {
            (Duration::from_secs(RING_S_MAX), Decision::Reject(480))
        };
        let sdp = self.sdp();
        let ssrc = self.rng.random();
        let ringing = request.response(180, Some(&tag));
        self.respond(now, &request, from, ringing);
        self.call = Some(Call {
            call_id: call_id.clone(),
            caller: false,
            peer: caller.clone(),
            phase: Phase::Offered,
            local,
            remote,
            next_cseq: 1,
            target: Some((target_uri, target_addr)),
            media: media_of(&request.body),
            sdp,
            rtp_seq: 0,
            rtp_timestamp: 0,
            rtp_ssrc: ssrc,
            rtp_at: None,
            hangup_at: None,
            invite_uri: String::new(),
            invite_branch: String::new(),
            invite_cseq: request.cseq().map(|c| c.cseq).unwrap_or_default(),
            talk: Duration::ZERO,
            answered_challenge: false,
            ringing_heard: false,
            cancel_at: None,
            invite: Some((request, from)),
            decision: Some((now + decision.0, decision.1)),
            room: None,
        });
        self.event(PhoneEvent::Incoming { call_id, caller });
    }

    /// The user's think time is over: answer or reject the ringing call.
    fn decide(&mut self, now: Timestamp, decision: Decision) {
        let Some(call) = &mut self.call else { return };
        if call.phase != Phase::Offered {
            return;
        }
        let Some((request, from)) = call.invite.take() else { return };
        let tag = tag_of(&call.local).unwrap_or_default().to_owned();
        match decision {
            Decision::Reject(code) => {
                let said = PhoneEvent::Said {
                    call_id: call.call_id.clone(),
                    peer: call.peer.clone(),
                    word: Word::Reject(code),
                };
                self.call = None;
                let response = request.response(code, Some(&tag));
                self.respond_final(now, &request, from, response);
                self.event(said);
            }
            Decision::Answer => {
                call.phase = Phase::Established;
                let (call_id, peer, sdp) = (call.call_id.clone(), call.peer.clone(), call.sdp.clone());
                let response = self.with_sdp(request.response(200, Some(&tag)), sdp);
                self.respond_final(now, &request, from, response);
                self.event(PhoneEvent::Established { call_id, peer, caller: false });
                self.start_talking(now);
                let talk = self.talk_time();
                if let Some(call) = &mut self.call {
                    call.hangup_at = Some(now + talk);
                }
            }
        }
    }

    /// The callee's talk time: exponential with the configured mean, at least 1 s, at most
    /// [`TALK_MEANS_MAX`] means.
    fn talk_time(&mut self) -> Duration {
        let mean = self.config.behaviour.talk_s_mean.max(TALK_S_MIN) as f64;
        let u: f64 = self.rng.random_range(0.0..1.0);
        let secs = (-mean * (1.0 - u).ln()).clamp(TALK_S_MIN as f64, mean * TALK_MEANS_MAX as f64);
        Duration::from_micros((secs * 1e6) as u64)
    }

    fn with_sdp(&self, mut response: Response, sdp: Bytes) -> Response {
        response.headers.insert(Name::CONTACT, self.contact());
        response.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        response.body = sdp;
        response
    }

    fn on_reinvite(&mut self, now: Timestamp, from: SocketAddr, request: &Request, call_id: &str) {
        let Some(call) = self.call.as_mut().filter(|c| c.call_id == call_id && c.phase == Phase::Established) else {
            let response = request.response(481, None);
            return self.respond(now, request, from, response);
        };
        // A session refresh or a media move from the pbx: follow it, answer with our same SDP.
        if let Some(media) = media_of(&request.body) {
            call.media = Some(media);
        }
        let sdp = call.sdp.clone();
        let response = self.with_sdp(request.response(200, None), sdp);
        self.respond_final(now, request, from, response);
    }

    fn on_cancel(&mut self, now: Timestamp, from: SocketAddr, request: Request) {
        let call_id = request.call_id().unwrap_or_default();
        let cseq = request.cseq().map(|c| c.cseq);
        let ringing = self.call.as_ref().is_some_and(|c| {
            !c.caller && c.call_id == call_id && c.phase == Phase::Offered && Some(c.invite_cseq) == cseq
        });
        let known = ringing
            || self.call.as_ref().is_some_and(|c| c.call_id == call_id)
            || self.finals.iter().any(|f| f.call_id == call_id);
        let ok = request.response(if known { 200 } else { 481 }, None);
        self.respond(now, &request, from, ok);
        if ringing {
            // RFC 3261 §9.2: the INVITE itself ends with 487.
            let call = self.call.take().expect("checked above");
            if let Some((invite, invite_from)) = call.invite {
                let tag = tag_of(&call.local).unwrap_or_default();
                let terminated = invite.response(487, Some(tag));
                self.respond_final(now, &invite, invite_from, terminated);
            }
        }
    }

    fn on_ack(&mut self, request: &Request) {
        let (Some(call_id), Some(cseq)) = (request.call_id(), request.cseq()) else { return };
        self.finals.retain(|f| !(f.call_id == call_id && f.cseq == cseq.cseq));
    }

    // ---- in dialog ------------------------------------------------------------------------

    fn on_request(&mut self, now: Timestamp, from: SocketAddr, request: Request) {
        let method = request.method.to_string();
        if method == "ACK" {
            return self.on_ack(&request);
        }
        let (Some(call_id), Some(cseq)) = (request.call_id(), request.cseq()) else { return };
        if let Some(cached) = self.responses.get_mut(&(call_id.clone(), cseq.cseq, method.clone())) {
            cached.until = now + RESPONSE_CACHE_TIMEOUT;
            let (to, bytes) = (cached.to, cached.bytes.clone());
            return self.transmit(to, bytes);
        }
        match method.as_str() {
            "INVITE" => self.on_invite(now, from, request),
            "CANCEL" => self.on_cancel(now, from, request),
            "BYE" => self.on_bye(now, from, request, &call_id),
            "OPTIONS" | "INFO" | "NOTIFY" | "UPDATE" | "MESSAGE" => {
                let in_dialog = request.to().is_some_and(|to| to.tag.is_some());
                let known = self.call.as_ref().is_some_and(|c| c.call_id == call_id);
                let code = if in_dialog && !known && method != "OPTIONS" { 481 } else { 200 };
                let mut response = request.response(code, None);
                response.headers.insert(Name::ALLOW, ALLOW);
                self.respond(now, &request, from, response);
            }
            _ => {
                let mut response = request.response(405, None);
                response.headers.insert(Name::ALLOW, ALLOW);
                self.respond(now, &request, from, response);
            }
        }
    }

    fn on_bye(&mut self, now: Timestamp, from: SocketAddr, request: Request, call_id: &str) {
        let phase = self.call.as_ref().filter(|c| c.call_id == call_id).map(|c| c.phase);
        let code = if phase.is_some() { 200 } else { 481 };
        let response = request.response(code, None);
        self.respond(now, &request, from, response);
        match phase {
            Some(Phase::Established) => {
                let call = self.call.take().expect("checked above");
                // Our 2xx needs no more resending: the BYE proves it arrived.
                self.finals.retain(|f| f.call_id != call.call_id);
                self.event(PhoneEvent::Ended { call_id: call.call_id, peer: call.peer, reason: EndReason::RemoteBye });
            }
            // Our own BYE is in flight: its answer ends the call.
            Some(Phase::Terminating(_)) | None => {}
            // A BYE before any 2xx: pbx's BYE overtook the 2xx it follows (the network
            // reordered them; pbx never sends BYE on an early dialog). The call is over.
            Some(_) => {
                if let Some(call) = self.call.take() {
                    let (call_id, peer) = (call.call_id, call.peer);
                    self.event(PhoneEvent::Ended { call_id, peer, reason: EndReason::RemoteBye });
                }
            }
        }
    }

    /// Sends BYE to the remote target (RFC 3261 §15.1.1); the call ends on its answer.
    fn send_bye(&mut self, now: Timestamp, reason: EndReasonCode) {
        let branch = self.branch();
        let Some(call) = &mut self.call else { return };
        call.phase = Phase::Terminating(reason);
        call.rtp_at = None;
        call.hangup_at = None;
        if let Some(room) = &mut call.room {
            room.key_at = None;
            room.turn_at = None;
        }
        let cseq = call.next_cseq;
        call.next_cseq += 1;
        let (uri, to) = call.target.clone().unwrap_or_else(|| (call.invite_uri.clone(), self.config.pbx));
        let call = self.call.as_ref().expect("checked above");
        let bytes = self.request("BYE", &uri, &branch, &call.local, &call.remote, &call.call_id, cseq, &[], b"");
        let call_id = call.call_id.clone();
        let said = PhoneEvent::Said { call_id: call_id.clone(), peer: call.peer.clone(), word: Word::Bye };
        self.event(said);
        self.start_transaction(now, Kind::Bye, (branch, call_id, cseq), to, bytes);
    }

    fn end_after_bye(&mut self, call_id: &str, timed_out: EndReason) {
        let Some(Phase::Terminating(code)) = self.call.as_ref().filter(|c| c.call_id == call_id).map(|c| c.phase)
        else {
            return;
        };
        let call = self.call.take().expect("checked above");
        let reason = match (code, timed_out) {
            (EndReasonCode::Timeout, _) | (_, EndReason::Timeout) => EndReason::Timeout,
            (EndReasonCode::LocalHangup, _) => EndReason::LocalHangup,
        };
        self.event(PhoneEvent::Ended { call_id: call.call_id, peer: call.peer, reason });
    }

    // ---- responses ------------------------------------------------------------------------

    fn on_response(&mut self, now: Timestamp, response: Response) {
        let (Some(branch), Some(cseq)) = (response.branch(), response.cseq()) else { return };
        let method = cseq.method.to_string();
        let Some(index) = self.transactions.iter().position(|t| t.branch == branch && t.kind.method() == method) else {
            // No transaction: a retransmitted final to an INVITE we answered gets its ACK again.
            if method == "INVITE" && response.code >= 200 {
                let call_id = response.header(&Name::CALL_ID).unwrap_or_default().to_owned();
                if let Some(ack) = self.acks.get(&(call_id, cseq.cseq)) {
                    let (to, bytes) = (ack.to, ack.bytes.clone());
                    self.transmit(to, bytes);
                }
            }
            return;
        };
        if self.transactions[index].cseq != cseq.cseq {
            return; // Not our request's response: a stray with a recycled branch.
        }
        if response.code < 200 {
            let cancelling = self.call.as_ref().is_some_and(|c| c.phase == Phase::Cancelling);
            let tx = &mut self.transactions[index];
            if tx.kind != Kind::Invite {
                // §17.1.2.2: a provisional slows a non-INVITE's retransmissions to T2.
                tx.interval = T2;
                tx.resend_at = Some(now + T2);
                return;
            }
            // RFC 3261 §17.1.1.2: proceeding, no more retransmissions and no Timer B (but a
            // CANCEL's deadline for the 487 stays).
            tx.resend_at = None;
            if !cancelling {
                tx.give_up_at = None;
            }
            let tx = tx.clone();
            return self.on_invite_response(now, &response, &tx);
        }
        let tx = self.transactions.remove(index);
        match tx.kind {
            Kind::Register => {
                if response.header(&Name::CALL_ID) == Some(self.registration.call_id.as_str()) {
                    self.on_register_response(now, &response);
                }
            }
            Kind::Invite => self.on_invite_response(now, &response, &tx),
            Kind::Cancel => {} // 200 or 481: either way the INVITE's final decides.
            Kind::Bye => self.end_after_bye(&tx.call_id, EndReason::LocalHangup),
        }
    }

    // ---- media ----------------------------------------------------------------------------

    fn start_talking(&mut self, now: Timestamp) {
        let interval = self.config.behaviour.rtp_interval_s;
        if let Some(call) = &mut self.call
            && (interval > 0 || call.room.is_some())
        {
            call.rtp_at = Some(now);
        }
        let Some(room) = self.call.as_mut().and_then(|c| c.room.as_mut()) else { return };
        room.origin = now;
        match room.pin.clone() {
            Some(pin) => {
                room.keys = pin.chars().map(|c| (c, KeyRole::Pin)).chain([('#', KeyRole::Enter)]).collect();
                room.key_at = Some(now + ROOM_FIRST_KEY);
            }
            None => self.enter_room(now),
        }
    }

    /// In the room: say so, and pause before the first spurt.
    fn enter_room(&mut self, now: Timestamp) {
        let pause = self.uniform(self.config.behaviour.room.pause_s);
        let Some(call) = self.call.as_mut() else { return };
        let Some(room) = call.room.as_mut() else { return };
        room.turn_at = Some(now + pause);
        let call_id = call.call_id.clone();
        self.event(PhoneEvent::Room { call_id, event: RoomEvent::Entered });
    }

    /// A room's timers: the next key press, the next change between talking and pausing.
    fn run_room_timers(&mut self, now: Timestamp) {
        let due = |at: Option<Timestamp>| at.is_some_and(|at| at <= now);
        let Some(call) = self.call.as_mut().filter(|c| c.phase == Phase::Established) else { return };
        let call_id = call.call_id.clone();
        let Some(room) = call.room.as_mut() else { return };
        if due(room.key_at) {
            room.key_at = None;
            if let Some((key, role)) = room.keys.pop_front() {
                if !room.keys.is_empty() {
                    room.key_at = Some(now + ROOM_KEY_GAP);
                }
                self.send_key(now, key);
                match role {
                    KeyRole::Pin | KeyRole::Star => {}
                    KeyRole::Enter => self.enter_room(now),
                    KeyRole::Mute => {
                        let Some(room) = self.call.as_mut().and_then(|c| c.room.as_mut()) else { return };
                        room.muted = !room.muted;
                        let event = RoomEvent::Muted(room.muted);
                        self.event(PhoneEvent::Room { call_id: call_id.clone(), event });
                    }
                }
            }
        }
        let Some(room) = self.call.as_mut().and_then(|c| c.room.as_mut()) else { return };
        if due(room.turn_at) {
            let loud = !room.loud;
            let behaviour = self.config.behaviour.room.clone();
            let next = self.uniform(if loud { behaviour.talk_s } else { behaviour.pause_s });
            let mute = self.chance(behaviour.mute_probability);
            let Some(call) = self.call.as_mut() else { return };
            let Some(room) = call.room.as_mut() else { return };
            room.loud = loud;
            room.turn_at = Some(now + next);
            if loud {
                // Talking: a frame every 20 ms from now on.
                call.rtp_at = Some(now);
            }
            if mute && room.keys.is_empty() {
                room.keys = [('*', KeyRole::Star), ('6', KeyRole::Mute)].into();
                room.key_at = Some(now);
            }
            self.event(PhoneEvent::Room { call_id, event: RoomEvent::Loud(loud) });
            self.run_room_timers(now);
        }
    }

    /// The RTP timestamp of a room call now: the samples since its answer, in whole frames.
    fn room_timestamp(now: Timestamp, room: &RoomCall) -> u32 {
        let frames = now.saturating_since(room.origin).as_micros() / ROOM_FRAME.as_micros();
        (frames as u32).wrapping_mul(RTP_PAYLOAD_BYTES as u32)
    }

    /// One key press as RFC 4733 telephone events (§2.3): [`ROOM_KEY_PACKETS`] packets of one
    /// event, all with the press's timestamp, the last ones with the end bit.
    fn send_key(&mut self, now: Timestamp, key: char) {
        let Some(call) = &mut self.call else { return };
        let (Some(to), Some(room)) = (call.media, call.room.as_ref()) else { return };
        let event = match key {
            '0'..='9' => key as u8 - b'0',
            '*' => 10,
            '#' => 11,
            _ => return,
        };
        let timestamp = Self::room_timestamp(now, room);
        for i in 0..ROOM_KEY_PACKETS {
            let end = i >= ROOM_KEY_PACKETS - 2;
            let duration = 160 * (i.min(ROOM_KEY_PACKETS - 3) + 1);
            let mut packet = BytesMut::with_capacity(RTP_HEADER_BYTES + 4);
            packet.put_u8(0x80);
            packet.put_u8(RTP_PT_TELEPHONE_EVENT | if i == 0 { 0x80 } else { 0 });
            packet.put_u16(call.rtp_seq);
            packet.put_u32(timestamp);
            packet.put_u32(call.rtp_ssrc);
            packet.put_u8(event);
            packet.put_u8(if end { 0x80 | 10 } else { 10 });
            packet.put_u16(duration);
            call.rtp_seq = call.rtp_seq.wrapping_add(1);
            self.outputs.push_back(PhoneOutput::Transmit { from: self.config.rtp, to, bytes: packet.freeze() });
        }
    }

    /// The end of a room stay without a word: the call is dropped as if the phone had died.
    fn vanish(&mut self) {
        let Some(call) = self.call.take() else { return };
        self.transactions.retain(|t| t.call_id != call.call_id);
        self.event(PhoneEvent::Room { call_id: call.call_id, event: RoomEvent::Vanished });
    }

    /// One RTP packet of PCMU silence (RFC 3550 §5.1 header, no CSRC, no extension); in a
    /// room, of its tone while talking.
    /// `at`: when it was due (a room talker's frames keep to their 20 ms grid).
    fn send_rtp(&mut self, now: Timestamp, at: Timestamp) {
        let interval = self.config.behaviour.rtp_interval_s;
        let Some(call) = &mut self.call else { return };
        let Some(to) = call.media else { return };
        if let Some(room) = &call.room {
            let mut packet = BytesMut::with_capacity(RTP_HEADER_BYTES + RTP_PAYLOAD_BYTES);
            packet.put_u8(0x80);
            packet.put_u8(RTP_PT_PCMU);
            packet.put_u16(call.rtp_seq);
            packet.put_u32(Self::room_timestamp(at, room));
            packet.put_u32(call.rtp_ssrc);
            if room.loud {
                packet.put_slice(&room.tone);
            } else {
                packet.put_bytes(PCMU_SILENCE, RTP_PAYLOAD_BYTES);
            }
            call.rtp_seq = call.rtp_seq.wrapping_add(1);
            // Talking, the next frame follows this one; pausing, a packet now and then keeps
            // the room's silence timer away (none at all when the interval is 0).
            call.rtp_at = if room.loud {
                Some(if at + ROOM_FRAME > now { at + ROOM_FRAME } else { now + ROOM_FRAME })
            } else {
                (interval > 0).then(|| now + Duration::from_secs(interval))
            };
            self.outputs.push_back(PhoneOutput::Transmit { from: self.config.rtp, to, bytes: packet.freeze() });
            return;
        }
        let mut packet = BytesMut::with_capacity(RTP_HEADER_BYTES + RTP_PAYLOAD_BYTES);
        packet.put_u8(0x80); // V=2, no padding, no extension, no CSRC.
        packet.put_u8(RTP_PT_PCMU);
        packet.put_u16(call.rtp_seq);
        packet.put_u32(call.rtp_timestamp);
        packet.put_u32(call.rtp_ssrc);
        packet.put_bytes(PCMU_SILENCE, RTP_PAYLOAD_BYTES);
        call.rtp_seq = call.rtp_seq.wrapping_add(1);
        // The timestamp runs at 8 kHz across the gap, as if the silence had been sent.
        call.rtp_timestamp = call.rtp_timestamp.wrapping_add((interval * 8000) as u32);
        call.rtp_at = Some(now + Duration::from_secs(interval));
        self.outputs.push_back(PhoneOutput::Transmit { from: self.config.rtp, to, bytes: packet.freeze() });
    }
}

impl Registration {
    /// A new registration session: new Call-ID and From tag, REGISTER due at once.
    fn fresh(rng: &mut StdRng, config: &PhoneConfig, now: Timestamp) -> Registration {
        Registration {
            call_id: format!("{:016x}@{}", rng.random::<u64>(), config.sip.ip()),
            from_tag: format!("{:016x}", rng.random::<u64>()),
            cseq: 0,
            expires_s: config.register_expires_s,
            send_at: Some(now),
            answered_challenge: false,
            granted_until: None,
        }
    }
}

/// Methods we answer, for Allow (RFC 3261 §20.5).
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY, UPDATE, MESSAGE";

// ---- small parsers: header values as text ---------------------------------------------------

/// The expiry a 200 to REGISTER grants us: our Contact's `expires`, else the Expires header.
fn granted_expiry(response: &Response, contact: &str, sip: SocketAddr) -> Option<u32> {
    let contacts: Vec<&str> = response.headers.get_raw(&Name::CONTACT).flat_map(|v| split_list(v.as_str())).collect();
    // Ours is our very Contact (an app's earlier token may be bound at the same address), else
    // the one at our address; a registrar that lists only one binding means ours.
    let ours = contacts
        .iter()
        .find(|c| uri_of(c).eq_ignore_ascii_case(contact))
        .or_else(|| contacts.iter().find(|c| address_of(uri_of(c)) == Some(sip)));
    let from_contact = ours
        .or(contacts.first().filter(|_| contacts.len() == 1))
        .and_then(|c| param_of(c, "expires"))
        .and_then(|e| e.parse().ok());
    from_contact.or_else(|| response.header(&Name::EXPIRES).and_then(|e| e.trim().parse().ok()))
}

/// Splits a comma-separated header value, leaving commas inside `<…>` and quotes alone.
fn split_list(value: &str) -> Vec<&str> {
    let (mut parts, mut start, mut angle, mut quoted) = (Vec::new(), 0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts
}

/// The URI of a name-addr (`"Bob" <sip:…>;tag=x` → `sip:…`) or of a bare addr-spec.
fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value.trim().split(';').next().unwrap_or(""),
    }
}

/// A header parameter (after the URI) such as `tag` or `expires`, case-insensitive name.
fn param_of<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let params = match value.find('>') {
        Some(close) => &value[close + 1..],
        None => value.split_once(';').map(|(_, p)| p).unwrap_or(""),
    };
    params.split(';').find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub(crate) fn tag_of(value: &str) -> Option<&str> {
    param_of(value, "tag")
}

/// The user part of a From/To.
fn user_of(from_to: &pbx_actors::sip::message::FromTo) -> String {
    match &from_to.uri.uri.user_part {
        pbx_actors::sip::message::SipUriUserPart::User(user) => user.to_string(),
        _ => String::new(),
    }
}

/// The socket address a `sip:` URI with an IP host names (5060 when it has no port).
fn address_of(uri: &str) -> Option<SocketAddr> {
    let rest = uri.strip_prefix("sip:")?;
    let host_port = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let host_port = host_port.split([';', '?']).next()?;
    host_port
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| host_port.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 5060)))
}

/// Where the peer wants RTP, from its SDP.
pub(crate) fn media_of(body: &[u8]) -> Option<SocketAddr> {
    pbx_actors::sdp::parse(body).ok()?.audio()?.rtp
}

/// One `WWW-Authenticate`/`Proxy-Authenticate: Digest …` challenge (RFC 7616 §3.3).
#[derive(Clone, Debug, Default)]
pub(crate) struct Challenge {
    realm: String,
    pub(crate) nonce: String,
    opaque: Option<String>,
    /// The server offers `qop=auth` (we never do `auth-int`).
    qop_auth: bool,
    stale: bool,
    /// `algorithm=MD5` or no algorithm (RFC 2617's default).
    pub(crate) md5: bool,
}

impl Challenge {
    pub(crate) fn parse(value: &str) -> Option<Challenge> {
        let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut challenge = Challenge { md5: true, ..Challenge::default() };
        let mut nonce = None;
        for (name, value) in digest_params(rest)? {
            match name.to_ascii_lowercase().as_str() {
                "realm" => challenge.realm = value,
                "nonce" => nonce = Some(value),
                "opaque" => challenge.opaque = Some(value),
                "stale" => challenge.stale = value.eq_ignore_ascii_case("true"),
                "algorithm" => challenge.md5 = value.eq_ignore_ascii_case("MD5"),
                "qop" => challenge.qop_auth = value.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")),
                _ => {}
            }
        }
        challenge.nonce = nonce?;
        Some(challenge)
    }
}

/// `name=value` and `name="quoted value"` pairs, comma separated (RFC 7616 §3.3); `None` if
/// the text does not follow that shape.
fn digest_params(mut rest: &str) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(params);
        }
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.push((name.trim().to_owned(), value));
        rest = after;
    }
}

fn md5_hex(text: &str) -> String {
    hex::encode(Md5::digest(text.as_bytes()))
}

/// The credentials answering `challenge` (RFC 7616 §3.4.1 with `qop=auth`, else the RFC 2617
/// §3.2.2.1 form without qop).
pub(crate) fn authorization(
    user: &str,
    password: &str,
    challenge: &Challenge,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let ha1 = md5_hex(&format!("{user}:{}:{password}", challenge.realm));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let mut value = format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\"",
        challenge.realm, challenge.nonce
    );
    if challenge.qop_auth {
        let response = md5_hex(&format!("{ha1}:{}:{nc:08x}:{cnonce}:auth:{ha2}", challenge.nonce));
        value
            .push_str(&format!(", response=\"{response}\", algorithm=MD5, cnonce=\"{cnonce}\", qop=auth, nc={nc:08x}"));
    } else {
        let response = md5_hex(&format!("{ha1}:{}:{ha2}", challenge.nonce));
        value.push_str(&format!(", response=\"{response}\", algorithm=MD5"));
    }
    if let Some(opaque) = &challenge.opaque {
        value.push_str(&format!(", opaque=\"{opaque}\""));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::sip::message::CSeq;

    const A_SIP: &str = "10.1.0.1:5060";
    const B_SIP: &str = "10.1.0.2:5060";
    const C_SIP: &str = "10.1.0.3:5060";
    const PBX: &str = "10.0.0.1:5060";
    /// Steps a harness run may take before we call it a livelock.
    const STEPS_MAX: usize = 100_000;
    const LATENCY: Duration = Duration::from_millis(10);

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    fn behaviour() -> Behaviour {
        Behaviour {
            answer_probability: 1.0,
            reject_probability: 0.0,
            ring_s: (1, 2),
            cancel_probability: 0.0,
            talk_s_mean: 1000,
            rtp_interval_s: 5,
            room: RoomBehaviour::default(),
        }
    }

    fn config(extension: &str, sip: &str, pbx: &str, behaviour: Behaviour) -> PhoneConfig {
        let sip = addr(sip);
        PhoneConfig {
            extension: extension.into(),
            password: format!("secret-{extension}"),
            sip,
            rtp: SocketAddr::new(sip.ip(), 40_000),
            pbx: addr(pbx),
            register_expires_s: 3600,
            behaviour,
            push: None,
        }
    }

    fn text(bytes: &Bytes) -> &str {
        std::str::from_utf8(bytes).expect("the phone prints UTF-8")
    }

    fn request(bytes: &Bytes) -> Request {
        match parse_datagram(bytes) {
            Ok(Message::Request(request)) => request,
            other => panic!("not a request: {other:?}\n{}", text(bytes)),
        }
    }

    fn response(bytes: &Bytes) -> Response {
        match parse_datagram(bytes) {
            Ok(Message::Response(response)) => response,
            other => panic!("not a response: {other:?}\n{}", text(bytes)),
        }
    }

    fn cseq(bytes: &Bytes) -> CSeq {
        match parse_datagram(bytes) {
            Ok(Message::Request(r)) => r.cseq().expect("CSeq"),
            Ok(Message::Response(r)) => r.cseq().expect("CSeq"),
            Err(e) => panic!("unparsable: {e:?}"),
        }
    }

    struct InFlight {
        at: Timestamp,
        seq: u64,
        from: SocketAddr,
        to: SocketAddr,
        bytes: Bytes,
    }

    type DropRule = Box<dyn FnMut(&Bytes) -> bool>;

    /// Phones on a loopback network with fixed latency: every datagram goes to the phone
    /// owning its `to`, except REGISTERs, which a fake registrar answers 200 at once.
    struct Net {
        now: Timestamp,
        phones: Vec<Phone>,
        in_flight: Vec<InFlight>,
        seq: u64,
        /// Every datagram a phone transmitted, dropped or not.
        wire: Vec<(Timestamp, SocketAddr, SocketAddr, Bytes)>,
        events: Vec<(usize, PhoneEvent)>,
        /// Says which transmitted datagrams the network loses.
        drop: DropRule,
        duplicate: bool,
    }

    impl Net {
        fn new(configs: Vec<PhoneConfig>, seed: u64) -> Net {
            let phones =
                configs.into_iter().enumerate().map(|(i, c)| Phone::new(c, seed + i as u64, Timestamp::ZERO)).collect();
            Net {
                now: Timestamp::ZERO,
                phones,
                in_flight: Vec::new(),
                seq: 0,
                wire: Vec::new(),
                events: Vec::new(),
                drop: Box::new(|_| false),
                duplicate: false,
            }
        }

        /// A (201) and B (202), each the other's "pbx".
        fn pair(a: Behaviour, b: Behaviour, seed: u64) -> Net {
            Net::new(vec![config("201", A_SIP, B_SIP, a), config("202", B_SIP, A_SIP, b)], seed)
        }

        fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Bytes) {
            self.seq += 1;
            self.in_flight.push(InFlight { at: self.now + LATENCY, seq: self.seq, from, to, bytes });
        }

        fn drain(&mut self, i: usize) {
            while let Some(output) = self.phones[i].poll_output() {
                match output {
                    PhoneOutput::Event(event) => self.events.push((i, event)),
                    PhoneOutput::Transmit { from, to, bytes } => {
                        self.wire.push((self.now, from, to, bytes.clone()));
                        if (self.drop)(&bytes) {
                            continue;
                        }
                        if bytes.starts_with(b"REGISTER ") {
                            let register = request(&bytes);
                            let mut ok = register.response(200, Some("registrar"));
                            let contact = register.header(&Name::CONTACT).expect("Contact");
                            ok.headers.insert(Name::CONTACT, format!("{contact};expires=600"));
                            self.send(to, from, ok.to_bytes());
                            continue;
                        }
                        self.send(from, to, bytes.clone());
                        if self.duplicate {
                            self.send(from, to, bytes);
                        }
                    }
                }
            }
        }

        fn run_until(&mut self, end: Timestamp) {
            for _ in 0..STEPS_MAX {
                for i in 0..self.phones.len() {
                    self.drain(i);
                }
                let datagram =
                    self.in_flight.iter().enumerate().min_by_key(|(_, d)| (d.at, d.seq)).map(|(n, d)| (n, d.at));
                let timer = self.phones.iter().filter_map(|p| p.poll_timeout()).min();
                let next = match (datagram, timer) {
                    (Some((_, d)), Some(t)) => d.min(t),
                    (Some((_, d)), None) => d,
                    (None, Some(t)) => t,
                    (None, None) => end,
                };
                if next > end {
                    self.now = end;
                    return;
                }
                self.now = self.now.max(next);
                match datagram {
                    Some((n, at)) if at <= next => {
                        let d = self.in_flight.remove(n);
                        let owner = self.phones.iter().position(|p| {
                            p.config().sip.ip() == d.to.ip()
                                && (p.config().sip.port()..p.config().sip.port() + PUSH_PORTS).contains(&d.to.port())
                                || p.config().rtp == d.to
                        });
                        if let Some(i) = owner {
                            let input = PhoneInput::Datagram { from: d.from, to: d.to, bytes: d.bytes };
                            self.phones[i].handle(self.now, input);
                        }
                    }
                    _ => {
                        for i in 0..self.phones.len() {
                            if self.phones[i].poll_timeout().is_some_and(|t| t <= self.now) {
                                self.phones[i].handle(self.now, PhoneInput::Timeout);
                            }
                        }
                    }
                }
                if self.now >= end && self.in_flight.is_empty() {
                    return;
                }
            }
            panic!("no quiescence after {STEPS_MAX} steps: livelock");
        }

        fn input(&mut self, i: usize, input: PhoneInput) {
            self.phones[i].handle(self.now, input);
            self.drain(i);
        }

        /// Events of phone `i` other than registration and what its user said.
        fn events_of(&self, i: usize) -> Vec<PhoneEvent> {
            self.events
                .iter()
                .filter(|(p, e)| *p == i && !matches!(e, PhoneEvent::Registered { .. } | PhoneEvent::Said { .. }))
                .map(|(_, e)| e.clone())
                .collect()
        }

        fn count_sent(&self, start: &str) -> usize {
            self.wire.iter().filter(|(_, _, _, b)| b.starts_with(start.as_bytes())).count()
        }
    }

    fn call_id_of(events: &[PhoneEvent]) -> String {
        match &events[0] {
            PhoneEvent::Dialing { call_id, .. } | PhoneEvent::Incoming { call_id, .. } => call_id.clone(),
            other => panic!("first event is {other:?}"),
        }
    }

    fn app(token: &str, new_port: f64) -> PushApp {
        PushApp {
            provider: "fcm".into(),
            param: "sim-office-app".into(),
            token: token.into(),
            wake_ms: (500, 500),
            new_port,
            awake: Duration::from_secs(60),
        }
    }

    /// The Contact of the last REGISTER phone `from` sent.
    fn last_contact(net: &Net, from: &str) -> String {
        let (_, _, _, bytes) = net
            .wire
            .iter()
            .rev()
            .find(|(_, f, _, b)| f.ip() == addr(from).ip() && b.starts_with(b"REGISTER "))
            .expect("a REGISTER");
        request(bytes).header(&Name::CONTACT).expect("Contact").to_owned()
    }

    /// A push app registers with its `pn-*` Contact and sleeps: A's INVITE gets nothing from it
    /// until a push wakes it; then it registers at once and A's INVITE, sent again, rings it
    /// and is answered. A new token goes into its next REGISTER.
    #[test]
    fn a_push_app_sleeps_until_pushed() {
        let b = PhoneConfig { push: Some(app("tok-1", 0.0)), ..config("202", B_SIP, A_SIP, behaviour()) };
        let mut net = Net::new(vec![config("201", A_SIP, B_SIP, behaviour()), b], 5);
        net.run_until(Timestamp::from_secs(100));
        let contact = last_contact(&net, B_SIP);
        assert_eq!(contact, "<sip:202@10.1.0.2:5060;pn-provider=fcm;pn-param=sim-office-app;pn-prid=tok-1>");
        assert!(net.phones[1].is_asleep(net.now));
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(30) });
        net.run_until(Timestamp::from_secs(105));
        assert_eq!(net.count_sent("SIP/2.0 180"), 0, "asleep: not a word");
        assert!(net.events_of(1).is_empty());
        let registers = net.count_sent("REGISTER ");
        net.input(1, PhoneInput::NewToken { token: "tok-2".into() });
        net.input(1, PhoneInput::Push);
        net.run_until(Timestamp::from_secs(106));
        assert_eq!(net.count_sent("REGISTER "), registers + 1, "woken: it registers at once");
        assert!(last_contact(&net, B_SIP).contains(";pn-prid=tok-2>"), "with its new token");
        net.run_until(Timestamp::from_secs(125));
        assert!(matches!(net.events_of(1)[..], [PhoneEvent::Incoming { .. }, PhoneEvent::Established { .. }, ..]));
        assert!(!net.phones[1].is_asleep(net.now), "in a call");
    }

    /// A woken app may register from another of its ports, with a new registration; what
    /// reaches its old port is dropped from then on.
    #[test]
    fn a_woken_app_may_move_to_a_new_port() {
        let b = PhoneConfig { push: Some(app("tok-1", 1.0)), ..config("202", B_SIP, A_SIP, behaviour()) };
        let mut net = Net::new(vec![config("201", A_SIP, B_SIP, behaviour()), b], 6);
        net.run_until(Timestamp::from_secs(10));
        let call_id = |net: &Net| {
            let (_, _, _, bytes) = net
                .wire
                .iter()
                .rev()
                .find(|(_, f, _, b)| f.ip() == addr(B_SIP).ip() && b.starts_with(b"REGISTER "))
                .unwrap();
            request(bytes).call_id().unwrap()
        };
        let before = call_id(&net);
        net.input(1, PhoneInput::Push);
        net.run_until(Timestamp::from_secs(11));
        let moved = net.phones[1].sip();
        assert_ne!(moved, addr(B_SIP));
        assert!((addr(B_SIP).port()..addr(B_SIP).port() + PUSH_PORTS).contains(&moved.port()));
        assert!(last_contact(&net, B_SIP).starts_with(&format!("<sip:202@{moved};pn-provider=fcm")));
        assert_ne!(call_id(&net), before, "a restarted app's new registration");
        let options = format!(
            "OPTIONS sip:202@{B_SIP} SIP/2.0\r\nVia: SIP/2.0/UDP {A_SIP};branch=z9hG4bKx\r\nFrom: <sip:201@{A_SIP}>;tag=a\r\n\
             To: <sip:202@{B_SIP}>\r\nCall-ID: o@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let sent = net.wire.len();
        let input = PhoneInput::Datagram { from: addr(A_SIP), to: addr(B_SIP), bytes: Bytes::from(options) };
        net.input(1, input);
        assert_eq!(net.wire.len(), sent, "its old port is closed");
    }

    /// A dials B, B rings, answers, both are established, A hangs up after `talk`: both end.
    #[test]
    fn call_between_two_phones_ends_on_both_sides() {
        let mut net = Net::pair(behaviour(), behaviour(), 1);
        net.run_until(Timestamp::from_secs(1));
        assert!(net.events.iter().filter(|(_, e)| matches!(e, PhoneEvent::Registered { expires_s: 600 })).count() == 2);
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(30) });
        net.run_until(Timestamp::from_secs(60));
        let (a, b) = (net.events_of(0), net.events_of(1));
        let call_id = call_id_of(&a);
        let peer_a = "202".to_owned();
        let peer_b = "201".to_owned();
        assert_eq!(
            a,
            vec![
                PhoneEvent::Dialing { call_id: call_id.clone(), callee: peer_a.clone() },
                PhoneEvent::Ringing { call_id: call_id.clone() },
                PhoneEvent::Established { call_id: call_id.clone(), peer: peer_a.clone(), caller: true },
                PhoneEvent::Ended { call_id: call_id.clone(), peer: peer_a, reason: EndReason::LocalHangup },
            ]
        );
        assert_eq!(
            b,
            vec![
                PhoneEvent::Incoming { call_id: call_id.clone(), caller: peer_b.clone() },
                PhoneEvent::Established { call_id: call_id.clone(), peer: peer_b.clone(), caller: false },
                PhoneEvent::Ended { call_id, peer: peer_b, reason: EndReason::RemoteBye },
            ]
        );
        assert_eq!((net.phones[0].in_call(), net.phones[1].in_call()), (None, None));
        // Both sides sent RTP to the other's media address, every 5 s of a 30 s call.
        let rtp_to = |to: SocketAddr| net.wire.iter().filter(|(_, _, t, _)| *t == to).count();
        assert!((6..=8).contains(&rtp_to(net.phones[1].config().rtp)), "{}", rtp_to(net.phones[1].config().rtp));
        assert!((6..=8).contains(&rtp_to(net.phones[0].config().rtp)));
        let packet = &net.wire.iter().find(|(_, _, t, _)| *t == net.phones[1].config().rtp).expect("RTP").3;
        assert_eq!((packet.len(), packet[0], packet[1]), (RTP_HEADER_BYTES + RTP_PAYLOAD_BYTES, 0x80, 0));
        // Nothing was retransmitted on a lossless network.
        assert_eq!((net.count_sent("INVITE "), net.count_sent("SIP/2.0 200"), net.count_sent("BYE ")), (1, 2, 1));
    }

    /// The callee's own (short) talk time ends the call: it sends BYE, the caller sees RemoteBye.
    #[test]
    fn callee_hangs_up_first() {
        let mut net = Net::pair(behaviour(), Behaviour { talk_s_mean: 1, ..behaviour() }, 2);
        net.run_until(Timestamp::from_secs(1));
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(600) });
        net.run_until(Timestamp::from_secs(60));
        let (a, b) = (net.events_of(0), net.events_of(1));
        assert!(matches!(a.last(), Some(PhoneEvent::Ended { reason: EndReason::RemoteBye, .. })), "{a:?}");
        assert!(matches!(b.last(), Some(PhoneEvent::Ended { reason: EndReason::LocalHangup, .. })), "{b:?}");
        // B's BYE went to A's Contact, from B's dialog state (CSeq 1 in B's own space).
        let bye = net.wire.iter().find(|(_, _, _, b)| b.starts_with(b"BYE ")).expect("BYE");
        assert_eq!(bye.2, addr(A_SIP));
        assert!(text(&bye.3).starts_with("BYE sip:201@10.1.0.1:5060 SIP/2.0\r\n"));
        assert_eq!(cseq(&bye.3).cseq, 1);
    }

    /// A lost INVITE, a lost 200 and a lost BYE are all recovered by retransmission.
    #[test]
    fn lost_datagrams_are_retransmitted() {
        let mut net = Net::pair(behaviour(), behaviour(), 3);
        let mut lost = Vec::new();
        net.drop = Box::new(move |bytes| {
            let text = String::from_utf8_lossy(bytes);
            let kind = ["INVITE ", "SIP/2.0 200", "BYE "].into_iter().find(|k| text.starts_with(k));
            match kind {
                // Lose the first of each (the REGISTER's 200 is made by the registrar).
                Some(k) if !lost.contains(&k) && !text.contains("REGISTER") => {
                    lost.push(k);
                    true
                }
                _ => false,
            }
        });
        net.run_until(Timestamp::from_secs(1));
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(10) });
        net.run_until(Timestamp::from_secs(60));
        let (a, b) = (net.events_of(0), net.events_of(1));
        assert!(matches!(a[2], PhoneEvent::Established { .. }) && a.len() == 4, "{a:?}");
        assert!(matches!(a[3], PhoneEvent::Ended { reason: EndReason::LocalHangup, .. }), "{a:?}");
        assert!(matches!(b[2], PhoneEvent::Ended { reason: EndReason::RemoteBye, .. }) && b.len() == 3, "{b:?}");
        assert_eq!(net.count_sent("INVITE "), 2);
        assert_eq!(net.count_sent("BYE "), 2);
        // The retransmitted 200 (to INVITE) went out again with the same bytes.
        let oks: Vec<&Bytes> = net
            .wire
            .iter()
            .map(|(_, _, _, b)| b)
            .filter(|b| b.starts_with(b"SIP/2.0 200") && cseq(b).method == pbx_actors::sip::message::Method::INVITE)
            .collect();
        assert!(oks.len() >= 2 && oks.iter().all(|b| *b == oks[0]));
    }

    /// Every datagram delivered twice: the same calls, the same events, once each.
    #[test]
    fn duplicated_datagrams_change_nothing() {
        let run = |duplicate| {
            let mut net = Net::pair(behaviour(), behaviour(), 4);
            net.duplicate = duplicate;
            net.run_until(Timestamp::from_secs(1));
            net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(10) });
            net.run_until(Timestamp::from_secs(60));
            (net.events_of(0), net.events_of(1))
        };
        assert_eq!(run(true), run(false));
    }

    /// A rejecting callee answers 486 or 603; the caller ACKs it (so it is not resent) and fails.
    #[test]
    fn rejected_call_fails_and_is_acked() {
        let reject = Behaviour { answer_probability: 0.0, reject_probability: 1.0, ..behaviour() };
        let mut net = Net::pair(behaviour(), reject, 5);
        net.run_until(Timestamp::from_secs(1));
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(10) });
        net.run_until(Timestamp::from_secs(60));
        let a = net.events_of(0);
        assert!(matches!(a.last(), Some(PhoneEvent::CallFailed { code: 486 | 603, .. })), "{a:?}");
        assert_eq!(net.count_sent("SIP/2.0 486") + net.count_sent("SIP/2.0 603"), 1);
        let ack = net.wire.iter().find(|(_, _, _, b)| b.starts_with(b"ACK ")).expect("ACK");
        let invite = net.wire.iter().find(|(_, _, _, b)| b.starts_with(b"INVITE ")).expect("INVITE");
        // RFC 3261 §17.1.1.3: same branch as the INVITE, To with the callee's tag.
        assert_eq!(request(&ack.3).branch(), request(&invite.3).branch());
        assert!(request(&ack.3).to().expect("To").tag.is_some());
        assert_eq!(net.events_of(1).len(), 1, "the callee only saw Incoming");
        assert_eq!((net.phones[0].in_call(), net.phones[1].in_call()), (None, None));
        assert!(net.phones[1].finals.is_empty());
    }

    /// A caller that gives up on a ringing call CANCELs; the INVITE ends 487 on both sides.
    #[test]
    fn caller_cancels_a_ringing_call() {
        let ring_forever = Behaviour { answer_probability: 0.0, reject_probability: 0.0, ..behaviour() };
        let mut net = Net::pair(Behaviour { cancel_probability: 1.0, ..behaviour() }, ring_forever, 6);
        net.run_until(Timestamp::from_secs(1));
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(10) });
        net.run_until(Timestamp::from_secs(100));
        let a = net.events_of(0);
        assert!(matches!(a[..], [_, PhoneEvent::Ringing { .. }, PhoneEvent::CallFailed { code: 487, .. }]), "{a:?}");
        assert_eq!(net.count_sent("CANCEL "), 1);
        assert_eq!(net.count_sent("SIP/2.0 487"), 1);
        let cancel = net.wire.iter().find(|(_, _, _, b)| b.starts_with(b"CANCEL ")).expect("CANCEL");
        let invite = net.wire.iter().find(|(_, _, _, b)| b.starts_with(b"INVITE ")).expect("INVITE");
        let elapsed = cancel.0 - invite.0;
        assert!(elapsed >= Duration::from_secs(5) && elapsed <= Duration::from_secs(41), "{elapsed:?}");
        assert_eq!(request(&cancel.3).branch(), request(&invite.3).branch());
        assert_eq!((net.phones[0].in_call(), net.phones[1].in_call()), (None, None));
        assert!(net.phones[1].finals.is_empty(), "the 487 was ACKed");
    }

    /// A call nobody answers or cancels still ends: the callee gives up with 480 after 300 s.
    #[test]
    fn ringing_for_ever_ends_after_ring_s_max() {
        let ring_forever = Behaviour { answer_probability: 0.0, reject_probability: 0.0, ..behaviour() };
        let mut net = Net::pair(behaviour(), ring_forever, 13);
        net.run_until(Timestamp::from_secs(1));
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(10) });
        net.run_until(Timestamp::from_secs(290));
        assert!(net.phones[0].in_call().is_some() && net.phones[1].in_call().is_some());
        net.run_until(Timestamp::from_secs(400));
        let a = net.events_of(0);
        assert!(matches!(a[..], [_, PhoneEvent::Ringing { .. }, PhoneEvent::CallFailed { code: 480, .. }]), "{a:?}");
        assert_eq!((net.phones[0].in_call(), net.phones[1].in_call()), (None, None));
    }

    /// A second caller reaching a phone in a call gets 486 at once; the first call goes on.
    #[test]
    fn busy_phone_answers_486() {
        let mut net = Net::new(
            vec![
                config("201", A_SIP, B_SIP, behaviour()),
                config("202", B_SIP, A_SIP, behaviour()),
                config("203", C_SIP, B_SIP, behaviour()),
            ],
            7,
        );
        net.run_until(Timestamp::from_secs(1));
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(30) });
        net.run_until(Timestamp::from_secs(10));
        net.input(2, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(30) });
        net.run_until(Timestamp::from_secs(60));
        assert!(
            matches!(net.events_of(2)[..], [_, PhoneEvent::CallFailed { code: 486, .. }]),
            "{:?}",
            net.events_of(2)
        );
        assert!(matches!(net.events_of(0).last(), Some(PhoneEvent::Ended { reason: EndReason::LocalHangup, .. })));
        // Dial while in a call is ignored.
        let mut net = Net::pair(behaviour(), behaviour(), 8);
        net.run_until(Timestamp::from_secs(1));
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(30) });
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(30) });
        assert_eq!(net.events_of(0)[1], PhoneEvent::DialIgnored);
    }

    /// The same seed gives the same bytes on the wire, loss and all; another seed does not.
    #[test]
    fn same_seed_same_bytes() {
        let run = |seed: u64| {
            let mut net = Net::pair(
                Behaviour { cancel_probability: 0.3, ..behaviour() },
                Behaviour { answer_probability: 0.6, reject_probability: 0.2, talk_s_mean: 20, ..behaviour() },
                seed,
            );
            let mut loss = StdRng::seed_from_u64(seed);
            net.drop = Box::new(move |_| loss.random_bool(0.2));
            for n in 0..10 {
                net.run_until(Timestamp::from_secs(1 + n * 120));
                net.input(
                    (n % 2) as usize,
                    PhoneInput::Dial {
                        callee: if n % 2 == 0 { "202" } else { "201" }.into(),
                        talk: Duration::from_secs(15),
                    },
                );
            }
            net.run_until(Timestamp::from_secs(1500));
            (net.wire, net.events)
        };
        let (first, second) = (run(9), run(9));
        assert_eq!(first.0, second.0);
        assert_eq!(first.1, second.1);
        assert!(first.1.iter().any(|(_, e)| matches!(e, PhoneEvent::Established { .. })));
        assert_ne!(run(10).0, first.0);
    }

    // ---- canned exchanges with a single phone --------------------------------------------

    fn lone_phone() -> Phone {
        Phone::new(config("201", A_SIP, PBX, behaviour()), 42, Timestamp::ZERO)
    }

    fn transmits(phone: &mut Phone) -> Vec<(SocketAddr, Bytes)> {
        let mut out = Vec::new();
        while let Some(o) = phone.poll_output() {
            if let PhoneOutput::Transmit { to, bytes, .. } = o {
                out.push((to, bytes));
            }
        }
        out
    }

    fn outputs(phone: &mut Phone) -> (Vec<(SocketAddr, Bytes)>, Vec<PhoneEvent>) {
        let (mut sent, mut events) = (Vec::new(), Vec::new());
        while let Some(o) = phone.poll_output() {
            match o {
                PhoneOutput::Transmit { to, bytes, .. } => sent.push((to, bytes)),
                PhoneOutput::Event(e) => events.push(e),
            }
        }
        (sent, events)
    }

    fn deliver(phone: &mut Phone, now: Timestamp, bytes: Bytes) {
        let to = phone.config().sip;
        phone.handle(now, PhoneInput::Datagram { from: addr(PBX), to, bytes });
    }

    fn challenge(algorithm: &str, nonce: &str, stale: bool) -> String {
        let stale = if stale { ", stale=true" } else { "" };
        format!("Digest realm=\"pbx\", nonce=\"{nonce}\", opaque=\"op\"{stale}, algorithm={algorithm}, qop=\"auth\"")
    }

    fn md5(text: &str) -> String {
        hex::encode(Md5::digest(text.as_bytes()))
    }

    fn params(value: &str) -> BTreeMap<String, String> {
        let rest = value.strip_prefix("Digest ").expect("Digest credentials");
        digest_params(rest).expect("well-formed credentials").into_iter().collect()
    }

    /// Recomputes an RFC 7616 qop=auth response from the credentials' own fields.
    fn assert_digest_correct(value: &str, method: &str, password: &str) {
        let p = params(value);
        let ha1 = md5(&format!("{}:{}:{password}", p["username"], p["realm"]));
        let ha2 = md5(&format!("{method}:{}", p["uri"]));
        let expected = md5(&format!("{ha1}:{}:{}:{}:{}:{ha2}", p["nonce"], p["nc"], p["cnonce"], p["qop"]));
        assert_eq!(p["response"], expected, "{value}");
        assert_eq!(p["algorithm"], "MD5");
    }

    /// REGISTER at once; the MD5 challenge of two is answered with a correct digest; the
    /// granted expiry is used; the refresh keeps the Call-ID and bumps the CSeq.
    #[test]
    fn registration_answers_md5_challenge() {
        let mut phone = lone_phone();
        assert_eq!(phone.poll_timeout(), Some(Timestamp::ZERO));
        phone.handle(Timestamp::ZERO, PhoneInput::Timeout);
        let sent = transmits(&mut phone);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, addr(PBX));
        let first = text(&sent[0].1).to_owned();
        for expected in [
            "REGISTER sip:10.0.0.1 SIP/2.0\r\n",
            "Via: SIP/2.0/UDP 10.1.0.1:5060;branch=z9hG4bK",
            ";rport\r\n",
            "Max-Forwards: 70\r\n",
            "From: <sip:201@10.0.0.1>;tag=",
            "To: <sip:201@10.0.0.1>\r\n",
            "CSeq: 1 REGISTER\r\n",
            "Contact: <sip:201@10.1.0.1:5060>\r\n",
            "Expires: 3600\r\n",
            "Content-Length: 0\r\n\r\n",
        ] {
            assert!(first.contains(expected), "{expected:?} missing in\n{first}");
        }
        let register = request(&sent[0].1);
        let mut unauthorized = register.response(401, Some("srv"));
        unauthorized.headers.insert(Name::WWW_AUTHENTICATE, challenge("SHA-256", "n1", false));
        unauthorized.headers.insert(Name::WWW_AUTHENTICATE, challenge("MD5", "n1", false));
        deliver(&mut phone, Timestamp::from_millis(20), unauthorized.to_bytes());
        let sent = transmits(&mut phone);
        assert_eq!(sent.len(), 1);
        let second = request(&sent[0].1);
        assert_eq!(second.call_id(), register.call_id());
        assert_eq!(second.cseq().expect("CSeq").cseq, 2);
        assert_ne!(second.branch(), register.branch());
        let credentials = second.header(&Name::AUTHORIZATION).expect("Authorization");
        assert_digest_correct(credentials, "REGISTER", "secret-201");
        let p = params(credentials);
        assert_eq!(
            (p["uri"].as_str(), p["nonce"].as_str(), p["opaque"].as_str(), p["nc"].as_str()),
            ("sip:10.0.0.1", "n1", "op", "00000001")
        );

        let mut ok = second.response(200, Some("srv"));
        ok.headers.insert(Name::CONTACT, "<sip:201@10.1.0.1:5060>;expires=120");
        deliver(&mut phone, Timestamp::from_millis(40), ok.to_bytes());
        let (sent, events) = outputs(&mut phone);
        assert!(sent.is_empty());
        assert_eq!(events, vec![PhoneEvent::Registered { expires_s: 120 }]);
        assert!(phone.is_registered(Timestamp::from_secs(100)) && !phone.is_registered(Timestamp::from_secs(121)));
        let refresh_at = phone.poll_timeout().expect("refresh scheduled");
        assert!(refresh_at >= Timestamp::from_secs(60) && refresh_at <= Timestamp::from_secs(109), "{refresh_at}");
        phone.handle(refresh_at, PhoneInput::Timeout);
        let sent = transmits(&mut phone);
        let refresh = request(&sent[0].1);
        assert_eq!(refresh.call_id(), register.call_id());
        assert_eq!(refresh.cseq().expect("CSeq").cseq, 3);

        // A stale challenge to the refresh is answered again, not a failure.
        let mut stale = refresh.response(401, Some("srv"));
        stale.headers.insert(Name::WWW_AUTHENTICATE, challenge("MD5", "n2", true));
        deliver(&mut phone, refresh_at, stale.to_bytes());
        let (sent, events) = outputs(&mut phone);
        assert!(events.is_empty());
        assert_digest_correct(
            request(&sent[0].1).header(&Name::AUTHORIZATION).expect("Authorization"),
            "REGISTER",
            "secret-201",
        );
    }

    /// Against pbx's real registrar machine: challenged, answered, registered; the refresh, long
    /// after the nonce's lifetime, is challenged again and registers again.
    #[test]
    fn registers_with_the_real_registrar() {
        use pbx_actors::registrar::{
            Algorithm, Extension, Registrar, RegistrarConfig, RegistrarInput, RegistrarOutput, ha1,
        };
        use pbx_actors::sip::Transport;
        let start = Timestamp::from_secs(1_700_000_000);
        let mut phone = Phone::new(config("201", A_SIP, PBX, behaviour()), 5, start);
        let extension = Extension {
            number: "201".into(),
            display_name: "Two Oh One".into(),
            ha1_md5: ha1(Algorithm::Md5, "201", "pbx", "secret-201"),
            ha1_sha256: ha1(Algorithm::Sha256, "201", "pbx", "secret-201"),
        };
        let mut registrar = Registrar::new(RegistrarConfig::default(), [7; 32], vec![extension], vec![], start);
        let (mut now, mut events, mut tx) = (start, Vec::new(), 0);
        while now < start + Duration::from_secs(3600) {
            phone.handle(now, PhoneInput::Timeout);
            // Ping-pong until the exchange settles: every REGISTER to the registrar, every
            // response back.
            for _ in 0..10 {
                let (sent, e) = outputs(&mut phone);
                events.extend(e);
                if sent.is_empty() {
                    break;
                }
                for (to, bytes) in sent {
                    assert_eq!(to, addr(PBX));
                    let mut request = request(&bytes);
                    request.stamp_via_source(addr(A_SIP));
                    tx += 1;
                    registrar.handle(
                        now,
                        RegistrarInput::Register { tx, request, source: addr(A_SIP), transport: Transport::Udp },
                    );
                    while let Some(output) = registrar.poll_output() {
                        if let RegistrarOutput::Respond { response, .. } = output {
                            deliver(&mut phone, now, response.to_bytes());
                        }
                    }
                }
            }
            now = phone.poll_timeout().expect("a refresh is always scheduled");
        }
        assert_eq!(
            events,
            vec![PhoneEvent::Registered { expires_s: 3600 }, PhoneEvent::Registered { expires_s: 3600 }]
        );
        assert_eq!(registrar.binding_count(), 1);

        // The INVITE's 407 from the same machine is answered with credentials it accepts.
        phone.handle(now, PhoneInput::Dial { callee: "201".into(), talk: Duration::from_secs(5) });
        let mut routed = false;
        let mut queue: VecDeque<Bytes> = outputs(&mut phone).0.into_iter().map(|(_, b)| b).collect();
        while let Some(bytes) = queue.pop_front() {
            if !bytes.starts_with(b"INVITE ") {
                continue; // the ACK of the 407
            }
            tx += 1;
            registrar.handle(now, RegistrarInput::Route { tx, request: request(&bytes), source: addr(A_SIP) });
            while let Some(output) = registrar.poll_output() {
                match output {
                    RegistrarOutput::Respond { response, .. } => {
                        assert_eq!(response.code, 407);
                        deliver(&mut phone, now, response.to_bytes());
                        queue.extend(outputs(&mut phone).0.into_iter().map(|(_, b)| b));
                    }
                    RegistrarOutput::Routed { route, .. } => routed = route.caller == "201",
                    _ => {}
                }
            }
        }
        assert!(routed, "the authenticated INVITE was routed");
    }

    /// A second non-stale 401 means wrong credentials: RegisterFailed, retried 30–60 s later.
    #[test]
    fn second_challenge_in_a_row_fails_registration() {
        let mut phone = lone_phone();
        phone.handle(Timestamp::ZERO, PhoneInput::Timeout);
        for n in 0..2 {
            let sent = transmits(&mut phone);
            let register = request(&sent[0].1);
            let mut unauthorized = register.response(401, Some("srv"));
            unauthorized.headers.insert(Name::WWW_AUTHENTICATE, challenge("MD5", &format!("n{n}"), false));
            deliver(&mut phone, Timestamp::from_millis(10), unauthorized.to_bytes());
        }
        let (sent, events) = outputs(&mut phone);
        assert!(sent.is_empty());
        assert_eq!(events, vec![PhoneEvent::RegisterFailed { code: 401 }]);
        let retry = phone.poll_timeout().expect("retry");
        assert!(retry >= Timestamp::from_secs(30) && retry <= Timestamp::from_secs(61), "{retry}");
    }

    /// An unanswered REGISTER is resent at 0.5, 1, 2, 4, 4 … s and fails 408 at 32 s.
    #[test]
    fn register_times_out_after_32_s() {
        let mut phone = lone_phone();
        let mut sent_at = Vec::new();
        let mut events = Vec::new();
        let mut now = Timestamp::ZERO;
        while now < Timestamp::from_secs(40) {
            phone.handle(now, PhoneInput::Timeout);
            let (sent, e) = outputs(&mut phone);
            sent_at.extend(sent.iter().map(|_| now.as_micros() / 1000));
            events.extend(e);
            now = phone.poll_timeout().expect("a timer");
        }
        assert_eq!(sent_at, vec![0, 500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]);
        assert_eq!(events, vec![PhoneEvent::RegisterFailed { code: 408 }]);
    }

    /// Registers a lone phone with a plain 200 so it may dial.
    fn registered_phone() -> Phone {
        let mut phone = lone_phone();
        phone.handle(Timestamp::ZERO, PhoneInput::Timeout);
        let register = request(&transmits(&mut phone)[0].1);
        deliver(&mut phone, Timestamp::ZERO, register.response(200, Some("srv")).to_bytes());
        let _ = outputs(&mut phone);
        phone
    }

    const PBX_SDP: &str =
        "v=0\r\no=pbx 1 1 IN IP4 10.0.0.1\r\ns=pbx\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";

    /// As caller against a pbx: 407 is ACKed and answered; the 200's SDP gives the media
    /// address; the 2xx ACK goes to the Contact and is repeated for a retransmitted 200.
    #[test]
    fn caller_answers_407_and_acks_2xx() {
        let mut phone = registered_phone();
        let t = Timestamp::from_secs(1);
        phone.handle(t, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(5) });
        let (sent, events) = outputs(&mut phone);
        assert!(matches!(&events[..], [PhoneEvent::Dialing { callee, .. }] if callee == "202"));
        let invite = request(&sent[0].1);
        let invite_text = text(&sent[0].1);
        assert!(invite_text.starts_with("INVITE sip:202@10.0.0.1 SIP/2.0\r\n"));
        assert!(invite_text.contains("Content-Type: application/sdp\r\n"));
        assert!(invite_text.ends_with(
            "s=-\r\nc=IN IP4 10.1.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
        ));
        assert_eq!(media_of(&invite.body), Some(addr("10.1.0.1:40000")));

        let mut challenge_407 = invite.response(407, Some("p1"));
        challenge_407.headers.insert(Name::PROXY_AUTHENTICATE, challenge("MD5", "n9", false));
        deliver(&mut phone, t, challenge_407.to_bytes());
        let sent = transmits(&mut phone);
        assert_eq!(sent.len(), 2, "ACK and the new INVITE");
        let ack = request(&sent[0].1);
        assert_eq!(ack.method.to_string(), "ACK");
        assert_eq!(ack.branch(), invite.branch());
        assert_eq!(ack.cseq().expect("CSeq").cseq, 1);
        assert_eq!(ack.to().expect("To").tag.map(|t| t.to_string()), Some("p1".into()));
        let second = request(&sent[1].1);
        assert_eq!((second.call_id(), second.cseq().expect("CSeq").cseq), (invite.call_id(), 2));
        assert_eq!(second.from().expect("From").tag, invite.from().expect("From").tag);
        assert_ne!(second.branch(), invite.branch());
        assert_digest_correct(second.header(&Name::PROXY_AUTHORIZATION).expect("credentials"), "INVITE", "secret-201");
        assert_eq!(params(second.header(&Name::PROXY_AUTHORIZATION).expect("credentials"))["uri"], "sip:202@10.0.0.1");

        deliver(&mut phone, t, second.response(100, None).to_bytes());
        deliver(&mut phone, t, second.response(180, Some("p2")).to_bytes());
        let mut ok = second.response(200, Some("p2"));
        ok.headers.insert(Name::CONTACT, "<sip:202@10.0.0.1:5060;transport=udp>");
        ok.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        ok.body = Bytes::from_static(PBX_SDP.as_bytes());
        deliver(&mut phone, t, ok.to_bytes());
        let (sent, events) = outputs(&mut phone);
        assert!(matches!(&events[..], [PhoneEvent::Ringing { .. }, PhoneEvent::Established { caller: true, .. }]));
        let ack = request(&sent[0].1);
        assert_eq!(sent[0].0, addr(PBX));
        assert!(text(&sent[0].1).starts_with("ACK sip:202@10.0.0.1:5060;transport=udp SIP/2.0\r\n"));
        assert_ne!(ack.branch(), second.branch());
        assert_eq!(ack.cseq().expect("CSeq").cseq, 2);
        // A retransmitted 200 gets the same ACK again.
        // (The first RTP packet, due at establishment, goes out first, to the pbx's media address.)
        deliver(&mut phone, t + T1, ok.to_bytes());
        let sent = transmits(&mut phone);
        assert_eq!(sent.iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![addr("10.0.0.1:30000"), addr(PBX)]);
        assert_eq!(request(&sent[1].1).branch(), ack.branch());
        // After `talk`, a BYE with the next CSeq; its 200 ends the call.
        let hangup = phone.poll_timeout().expect("hangup");
        phone.handle(t + Duration::from_secs(5), PhoneInput::Timeout);
        let bye = transmits(&mut phone).into_iter().find(|(_, b)| b.starts_with(b"BYE ")).expect("BYE");
        assert!(hangup <= t + Duration::from_secs(5));
        let bye = request(&bye.1);
        assert_eq!(bye.cseq().expect("CSeq").cseq, 3);
        deliver(&mut phone, t + Duration::from_secs(5), bye.response(200, None).to_bytes());
        let (_, events) = outputs(&mut phone);
        assert!(matches!(&events[..], [PhoneEvent::Ended { reason: EndReason::LocalHangup, .. }]));
        assert_eq!(phone.in_call(), None);
    }

    /// In a room with a PIN: the PIN and `#` go out as RFC 4733 events (five packets a key,
    /// 400 ms apart), then spurts of its tone every 20 ms with timestamps 160 apart, `*6`
    /// (muted), and at the end of its stay it vanishes: no BYE, no more RTP.
    #[test]
    fn a_room_participant_keys_talks_mutes_and_vanishes() {
        let room = RoomBehaviour { talk_s: (1, 1), pause_s: (1, 1), mute_probability: 1.0, vanish_probability: 1.0 };
        let mut phone = Phone::new(config("201", A_SIP, PBX, Behaviour { room, ..behaviour() }), 42, Timestamp::ZERO);
        phone.handle(Timestamp::ZERO, PhoneInput::Timeout);
        let register = request(&transmits(&mut phone)[0].1);
        deliver(&mut phone, Timestamp::ZERO, register.response(200, Some("srv")).to_bytes());
        let _ = outputs(&mut phone);

        let t = Timestamp::from_secs(1);
        let stay = Duration::from_secs(10);
        phone.handle(t, PhoneInput::JoinRoom { room: "801".into(), pin: Some("12".into()), stay, tone_hz: 2500 });
        let (sent, events) = outputs(&mut phone);
        let dialled = RoomEvent::Dialled { room: "801".into(), tone_hz: 2500 };
        assert!(matches!(&events[..], [PhoneEvent::Dialing { callee, .. }, PhoneEvent::Room { event, .. }]
            if callee == "801" && *event == dialled));
        let invite = request(&sent[0].1);
        let mut ok = invite.response(200, Some("room"));
        ok.headers.insert(Name::CONTACT, "<sip:801@10.0.0.1:5060>");
        ok.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        ok.body = Bytes::from_static(PBX_SDP.as_bytes());
        deliver(&mut phone, t, ok.to_bytes());
        let (_, events) = outputs(&mut phone);
        let answered = RoomEvent::Answered { media: addr("10.0.0.1:30000") };
        assert!(
            matches!(&events[..], [PhoneEvent::Established { .. }, PhoneEvent::Room { event, .. }] if *event == answered)
        );

        // Run its clock until well after the stay; keep what it sends to the room, and when.
        let (mut rtp, mut said) = (Vec::new(), Vec::new());
        while let Some(at) = phone.poll_timeout().filter(|at| *at <= t + Duration::from_secs(20)) {
            phone.handle(at, PhoneInput::Timeout);
            let (sent, events) = outputs(&mut phone);
            assert!(sent.iter().all(|(_, b)| !b.starts_with(b"BYE ")), "no BYE");
            rtp.extend(sent.into_iter().filter(|(to, _)| *to == addr("10.0.0.1:30000")).map(|(_, b)| (at, b)));
            said.extend(events.into_iter().filter_map(|e| match e {
                PhoneEvent::Room { event, .. } => Some((at, event)),
                _ => None,
            }));
        }
        let keys: Vec<(Timestamp, u8)> =
            rtp.iter().filter(|(_, b)| b[1] & 0x7f == RTP_PT_TELEPHONE_EVENT).map(|(at, b)| (*at, b[12])).collect();
        let mut presses: Vec<(Timestamp, u8)> = keys.clone();
        presses.dedup();
        assert!(keys.len() >= 5 * 4, "{keys:?}");
        assert_eq!(presses.iter().map(|(_, k)| *k).take(5).collect::<Vec<_>>(), vec![1, 2, 11, 10, 6], "PIN, #, *6");
        assert_eq!(presses[0].0, t + ROOM_FIRST_KEY);
        assert_eq!(presses[1].0, presses[0].0 + ROOM_KEY_GAP);
        let entered = said.iter().find(|(_, e)| *e == RoomEvent::Entered).expect("entered").0;
        assert_eq!(entered, presses[2].0, "in the room with its #");
        assert!(said.iter().any(|(at, e)| *e == RoomEvent::Muted(true) && *at == presses[4].0), "{said:?}");
        // Talking: its tone, one frame every 20 ms, timestamps one frame apart.
        let tone = crate::audio::tone_frame(2500);
        let loud: Vec<(Timestamp, u32)> = rtp
            .iter()
            .filter(|(_, b)| b[1] & 0x7f == RTP_PT_PCMU && b[12..] == tone[..])
            .map(|(at, b)| (*at, u32::from_be_bytes([b[4], b[5], b[6], b[7]])))
            .collect();
        assert!(loud.len() >= 40, "{} loud frames", loud.len());
        assert_eq!(loud[1].0 - loud[0].0, ROOM_FRAME);
        assert_eq!(loud[1].1.wrapping_sub(loud[0].1), 160);
        let (vanished, _) = said.iter().find(|(_, e)| *e == RoomEvent::Vanished).expect("vanished");
        assert_eq!(*vanished, t + stay);
        assert!(rtp.iter().all(|(at, _)| at < vanished), "nothing after it vanished");
        assert_eq!(phone.in_call(), None);
    }

    /// A BYE that overtakes the 2xx it follows (the network reordered them) ends the caller's
    /// call: it answers 200, says the call ended, and is free for the next.
    #[test]
    fn a_bye_before_the_2xx_ends_the_call() {
        let mut phone = registered_phone();
        let t = Timestamp::from_secs(1);
        phone.handle(t, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(5) });
        let invite = request(&transmits(&mut phone)[0].1);
        deliver(&mut phone, t, invite.response(180, Some("p2")).to_bytes());
        let _ = outputs(&mut phone);
        let call_id = invite.call_id().expect("Call-ID");
        let bye = format!(
            "BYE sip:201@10.1.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx2\r\n\
             From: <sip:202@10.0.0.1>;tag=p2\r\nTo: <sip:201@10.0.0.1>;tag=x\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        deliver(&mut phone, t, Bytes::from(bye));
        let (sent, events) = outputs(&mut phone);
        assert_eq!(response(&sent[0].1).code, 200);
        assert!(matches!(&events[..], [PhoneEvent::Ended { reason: EndReason::RemoteBye, .. }]), "{events:?}");
        assert_eq!(phone.in_call(), None);
    }

    /// BYE for an unknown dialog → 481; OPTIONS → 200; a retransmitted request gets the same
    /// bytes; garbage is ignored.
    #[test]
    fn requests_outside_a_call() {
        let mut phone = registered_phone();
        let t = Timestamp::from_secs(1);
        let bye = "BYE sip:201@10.1.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx1\r\n\
                   From: <sip:202@10.0.0.1>;tag=a\r\nTo: <sip:201@10.0.0.1>;tag=b\r\nCall-ID: nope\r\n\
                   CSeq: 5 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        deliver(&mut phone, t, Bytes::from_static(bye.as_bytes()));
        let first = transmits(&mut phone);
        assert_eq!(response(&first[0].1).code, 481);
        assert_eq!(first[0].0, addr(PBX));
        deliver(&mut phone, t + T1, Bytes::from_static(bye.as_bytes()));
        assert_eq!(transmits(&mut phone), first);
        let options = bye.replace("BYE", "OPTIONS").replace(";tag=b", "");
        deliver(&mut phone, t, Bytes::from(options));
        assert_eq!(response(&transmits(&mut phone)[0].1).code, 200);
        for garbage in [&b"\x00\x01garbage"[..], b"SIP/2.0 200 OK\r\n\r\n", b"INVITE x SIP/2.0\r\n\r\n", b""] {
            deliver(&mut phone, t, Bytes::copy_from_slice(garbage));
        }
        assert!(phone.poll_output().is_none());
    }

    /// GoAway silences the phone (nothing sent, input ignored); ComeBack registers with a new
    /// Call-ID.
    #[test]
    fn go_away_and_come_back() {
        let mut net = Net::pair(behaviour(), behaviour(), 11);
        net.run_until(Timestamp::from_secs(1));
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(600) });
        net.run_until(Timestamp::from_secs(10));
        let sent_before = net.wire.iter().filter(|(_, from, _, _)| from.ip() == addr(B_SIP).ip()).count();
        net.input(1, PhoneInput::GoAway);
        assert!(net.phones[1].is_away() && net.phones[1].in_call().is_none());
        net.run_until(Timestamp::from_secs(100));
        let sent_after = net.wire.iter().filter(|(_, from, _, _)| from.ip() == addr(B_SIP).ip()).count();
        assert_eq!(sent_before, sent_after, "an away phone sends nothing");
        assert_eq!(net.phones[1].poll_timeout(), None);
        // A's call goes on until A hangs up and its BYE times out: LocalHangup never comes.
        let old_call_id = net.wire.iter().find(|(_, _, _, b)| b.starts_with(b"REGISTER ") && cseq(b).cseq == 1);
        let old_call_id = request(&old_call_id.expect("first REGISTER").3).call_id();
        net.input(1, PhoneInput::ComeBack);
        assert_eq!(net.phones[1].poll_timeout(), Some(net.now));
        net.run_until(Timestamp::from_secs(101));
        let last_register = net.wire.iter().rev().find(|(_, f, _, b)| b.starts_with(b"REGISTER ") && *f == addr(B_SIP));
        let new_call_id = request(&last_register.expect("a new REGISTER").3).call_id();
        assert_ne!(new_call_id, old_call_id);
        assert!(net.phones[1].is_registered(net.now));
    }

    /// A callee whose 200 is never ACKed resends it, then gives up at 32 s with BYE and Timeout.
    #[test]
    fn unacked_200_times_out() {
        let mut net = Net::pair(behaviour(), behaviour(), 12);
        net.drop = Box::new(|bytes| bytes.starts_with(b"ACK ") || bytes.starts_with(b"SIP/2.0 200"));
        net.run_until(Timestamp::from_secs(1));
        net.drop = Box::new(|bytes| bytes.starts_with(b"ACK "));
        net.input(0, PhoneInput::Dial { callee: "202".into(), talk: Duration::from_secs(600) });
        net.run_until(Timestamp::from_secs(100));
        let b = net.events_of(1);
        assert!(matches!(b.last(), Some(PhoneEvent::Ended { reason: EndReason::Timeout, .. })), "{b:?}");
        let a = net.events_of(0);
        assert!(matches!(a.last(), Some(PhoneEvent::Ended { reason: EndReason::RemoteBye, .. })), "{a:?}");
    }

    proptest::proptest! {
        /// Whatever bytes arrive, the phone does not panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut phone = registered_phone();
            deliver(&mut phone, Timestamp::from_secs(1), Bytes::from(bytes));
            while phone.poll_output().is_some() {}
        }
    }
}

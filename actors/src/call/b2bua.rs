//! One call as a sans-IO machine: the A-leg toward the caller, a B-leg toward every contact of
//! the callee (parallel forking), and pbx's media relay between them.
//!
//! - Forking: every contact gets an INVITE at once; the first 2xx wins and the other legs are
//!   cancelled (a 2xx that comes anyway is ACKed and BYEd by its leg). When every B-leg fails,
//!   the caller gets the most telling failure (RFC 3261 §16.7 in spirit): a 6xx, else busy
//!   (486), else the lowest code.
//! - No answer within `no_answer` → the B-legs are cancelled and the caller gets 480.
//! - SDP (RFC 3264): each side sees only pbx. The callee is offered the caller's G.711 codecs,
//!   plus the other G.711 codec (pbx transcodes µ-law ↔ A-law) and telephone-event; the caller
//!   is answered with the callee's choice when it offered it, else with its own first G.711
//!   codec. A late offer (INVITE without SDP) gets pbx's offer in the 200 and its answer in the
//!   ACK. Nothing acceptable → 488.
//! - An SDP naming a media address pbx must never send to (multicast, broadcast, `::`; see
//!   `sdp`) is unreadable, like any malformed SDP: an offer in an INVITE, re-INVITE or UPDATE
//!   gets 488 and changes nothing. Such an answer fails what it answers: the callee's 2xx to
//!   the INVITE is ACKed and BYEd and the caller gets 488 (the CDR says `failed`); a bad
//!   answer in the caller's ACK ends the call with BYE both ways; a bad answer to a relayed
//!   re-INVITE gets the offerer 488 and the media stays as it was (RFC 3264 §8: a failed
//!   re-offer leaves the session unchanged). `c=0.0.0.0` is no such address: it is hold.
//! - Each offer/answer reconfigures the relay, which opens its source-learning window (see
//!   `media::relay`); an early answer (183) is re-applied when the 200 comes, since most
//!   phones only start sending then.
//! - In a call, a re-INVITE or UPDATE from either side (hold, resume) is relayed as a new offer
//!   to the other side, and the other side's answer relayed back, each rewritten to pbx's ports.
//!   A re-INVITE without SDP is answered by pbx with its last description of that side.
//! - Either side's BYE, an RTP timeout, a missing ACK, a failed leg or a failure of what the
//!   call depends on (`CallInput::Fail`: its media session, the SIP endpoint) ends the call; the CDR
//!   comes out at that moment; the call is over when every leg has finished its last
//!   transaction (or at a bound, whichever is first).
//! - SRTP by SDES (RFC 4568), per leg: each side's keys are its own, so one side may be SRTP
//!   and the other plain RTP (the relay decrypts from one and encrypts to the other). Keys go
//!   only into SDP for a leg on SIP over TLS, and are taken only from SDP that came over it;
//!   an `a=crypto` offered over UDP or TCP is ignored (and said so: [`CallOutput::Notice`]),
//!   RTP/SAVP over them gets 488. The caller's offer with a usable `a=crypto` (RTP/AVP: SRTP
//!   optional; RTP/SAVP: mandatory) is answered with pbx's own key of its suite; a malformed
//!   one (a bad key length, an MKI) gets 488 naming it. The callee's TLS contacts are offered
//!   pbx's key (AES_CM_128_HMAC_SHA1_80; RTP/SAVP when its policy is `required`), its other
//!   contacts plain SDP. The policy per extension ([`MediaEncryption`]): `required` refuses a
//!   caller without SRTP (488) and does not call a callee's contact that is not on TLS or
//!   answers without a key (the caller gets 488); `off` never uses SRTP. A re-offer keeps the
//!   leg's SRTP, learning a new key from it if it brings one; a late offer (INVITE without
//!   SDP) gets plain RTP on the caller's leg.
//! - Push (RFC 8599): a callee's contact registered with `pn-*` parameters is a phone asleep.
//!   When push is on (`CallSetup::push_wait`), its fork is not sent an INVITE at once:
//!   [`CallOutput::Push`] asks the shell to push it and watch for its REGISTER, and the fork
//!   waits (its INVITE "parked"). [`CallInput::Woken`] with the fresh binding sends the INVITE
//!   there; [`CallInput::PushFailed`] (token unregistered, push refused) or the push timer ends
//!   the fork like a 480. Other contacts ring meanwhile. No fork waits past the timer: when it
//!   passes and nothing else rings, the caller gets 480.
//! - Transfer (RFC 3515, RFC 5589): either party of an answered call may REFER pbx to a number
//!   (`transfer` checks the `Refer-To`). pbx carries it out itself, the other party (the
//!   transferee) never sees the REFER: [`CallOutput::Transfer`] asks the shell to look the
//!   number up as if the transferee had dialled it; refused → the REFER gets that answer (403
//!   outside the dial plan); found → 202, NOTIFY `100 Trying`, and the target's phones are
//!   offered pbx's port on the transferor's side (plain RTP, the transferee's codec first).
//!   The first to answer takes the transferor's place: NOTIFY `200 OK`, BYE to the
//!   transferor, a re-INVITE to the transferee (off hold), and the call's record so far is
//!   written with who transferred to whom; the call goes on under a new record that names the
//!   one before ([`TRANSFERS_MAX`] per call). The transferor may hang up meanwhile (blind
//!   transfer): the transferee waits. When the target fails (busy, no answer within
//!   `no_answer`, nobody registered) the transferor gets the call back: NOTIFY with the
//!   failure, the call goes on as before; a transferor that already hung up is rung back
//!   (recall), and if that fails too the transferee is hung up on.
//! - Attended transfer (RFC 5589 §7, REFER with `Replaces`, RFC 3891): the transferor, in a
//!   call with the transferee and a consultation call with the target, asks to replace the
//!   consultation dialog by the transferee. pbx joins the two calls itself: this call
//!   ([`CallOutput::Replace`]) has its shell find the call holding that dialog, which must be
//!   answered and have the transferor (the same extension) on that side; that call reserves
//!   itself ([`Call::reserve_replacement`]); then this call hands its transferee's leg over
//!   ([`CallOutput::HandOver`]: NOTIFY `200 OK` and BYE to the transferor, its record ends
//!   naming the transfer) and the other call takes it ([`CallInput::TakeOver`]) in the
//!   transferor's place: BYE to the transferor's consultation leg, a re-INVITE to the
//!   transferee toward its relay, a new record following this call's. The target hears
//!   nothing but its far end's new voice.

use super::leg::{Leg, LegCommand, LegEvent, name_addr};
use super::{CallStart, LegId, LocalSip, MediaEncryption};
use crate::Timestamp;
use crate::cdr::{Cdr, Disposition, HangupSide};
use crate::media::SrtpKeys;
use crate::media::g711::G711;
use crate::media::relay::{PeerMedia, Side};
use crate::media::srtp::{KEY_SALT_BYTES, KeyMaterial, Suite};
use crate::registrar::{Binding, Forward};
use crate::sdp::crypto;
use crate::sdp::{self, Audio, Codec, Direction, LocalSession, SessionDescription};
use crate::sip::message::FromTo;
use crate::sip::message::{self, Method};
use crate::sip::transaction::TimerConfig;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// How long legs may take to finish once the call is over before they are stopped anyway:
/// longer than a BYE or CANCEL transaction (64*T1 = 32 s) can last.
pub const ENDING_BOUND: Duration = Duration::from_secs(40);
/// How long an intercom call lasts at most once answered: pbx then hangs up both sides.
pub const INTERCOM_MAX: Duration = Duration::from_secs(120);
/// Transfers one call may go through; a REFER beyond it gets 403.
pub const TRANSFERS_MAX: u64 = 16;
/// telephone-event's payload type when pbx chooses it.
pub const TELEPHONE_EVENT_PT: u8 = 101;

#[derive(Clone, Copy, Debug)]
pub struct CallConfig {
    pub no_answer: Duration,
    pub timers: TimerConfig,
    pub local_sip: LocalSip,
    /// Deliberate bugs for the simulator's self-test; default (none) everywhere else.
    pub bugs: crate::bugs::Bugs,
    /// How long a parked call waits before it rings back the phone that parked it.
    pub park_timeout: Duration,
}

/// A call whose far end is a conference room (`Route::room`): what the room said to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomAnswer {
    /// pbx answers the caller itself, with the room's port on the caller's side.
    Admitted,
    /// The caller gets this final response (404 no such room, 486 full, 403 locked or not
    /// licensed), its reason phrase saying why.
    Refused { code: u16, reason: String },
}

/// What a call starts from: the endpoint's `CallStart` (the authenticated INVITE and where it
/// may go) and what the call's shell adds to it.
pub struct CallSetup {
    /// The CDR id.
    pub id: u64,
    pub start: CallStart,
    /// pbx's RTP address on the caller's side and on the callee's side.
    pub media: [SocketAddr; 2],
    /// Seeds the SDP session ids.
    pub seed: u64,
    /// `Some` for a call to a conference room: there are no B-legs, pbx answers the caller.
    pub room: Option<RoomAnswer>,
    /// The caller's and the callee's media encryption, and fresh key material for pbx's SRTP
    /// key on each side.
    pub srtp: SrtpSetup,
    /// How long a fork toward a phone to wake by push (RFC 8599) waits for its REGISTER;
    /// `None`: push is off (not configured, or not licensed), such contacts are called at once.
    pub push_wait: Option<Duration>,
}

/// What a call needs for SRTP: each side's policy, and 30 random bytes per side (drawn from
/// the OS by the shell, from its seeded generator by the simulator) that become pbx's SDES key
/// on that side if SRTP is agreed there. Never derived from `seed`: that one is printed in
/// every SDP's o= line. `Debug` does not show the bytes.
#[derive(Clone)]
pub struct SrtpSetup {
    pub policy: [MediaEncryption; 2],
    pub keys: [[u8; KEY_SALT_BYTES]; 2],
}

impl std::fmt::Debug for SrtpSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSetup").field("policy", &self.policy).finish_non_exhaustive()
    }
}

/// One side's SRTP as agreed so far.
struct LegSrtp {
    policy: MediaEncryption,
    key_bytes: [u8; KEY_SALT_BYTES],
    /// pbx's key toward this side, once it sent one in SDP.
    local: Option<KeyMaterial>,
    /// The side's phone must speak SRTP (RTP/SAVP, or its policy is `required`).
    mandatory: bool,
    /// The keys the media session was last given for this side.
    sent: Option<SrtpKeys>,
}

impl LegSrtp {
    /// pbx's key of `suite` for this side: the one already sent if of that suite, else new.
    fn local_key(&mut self, suite: Suite) -> KeyMaterial {
        match &self.local {
            Some(key) if key.suite() == suite => key.clone(),
            _ => {
                let key = KeyMaterial::new(suite, self.key_bytes);
                self.local = Some(key.clone());
                key
            }
        }
    }
}

#[derive(Debug)]
pub enum CallInput {
    Leg {
        leg: LegId,
        event: LegEvent,
    },
    /// The leg is gone without a word. No driver sends it today: legs run inside the call's
    /// actor (a leg that panics takes that actor down, and the calls actor hangs up its legs).
    LegLost {
        leg: LegId,
    },
    /// The media relay saw no RTP from this side for the configured time.
    MediaInactive {
        side: Side,
    },
    /// pbx ends an answered call on its own account (a conference room hung up on its
    /// participant: kicked, PIN tries exhausted): BYE, the CDR stays `answered`.
    Hangup,
    /// Something the call depends on failed (its media session, the SIP endpoint): every leg
    /// hangs up (an unanswered caller gets 500) and the CDR says `failed` with this reason,
    /// answered or not.
    Fail {
        reason: String,
    },
    /// The phone of a fork waiting for its push registered: its binding, to call it at.
    Woken {
        leg: LegId,
        binding: Box<Binding>,
    },
    /// The push for a waiting fork was refused (token unregistered, provider error): the fork
    /// ends like a 480.
    PushFailed {
        leg: LegId,
    },
    /// A phone picks this ringing call up (`Route::pickup`; check [`Call::can_be_picked_up`]
    /// first): its INVITE becomes the answering side, the ringing phones are cancelled.
    PickUp(Box<CallStart>),
    /// The calls actor's answer to [`CallOutput::Park`]: the orbit was free and is now this
    /// call's (`true`), or taken.
    Parked {
        attempt: u64,
        ok: bool,
    },
    /// A phone dialled the orbit this call is parked in (check [`Call::can_retrieve`] first):
    /// its INVITE takes the parked side.
    Retrieve(Box<CallStart>),
    /// An INVITE with `Replaces` naming `leg` (check [`Call::can_replace`] first): a ringing
    /// fork's is a pickup, an answered party's a move of the call to the new phone.
    ReplaceLeg {
        leg: LegId,
        start: Box<CallStart>,
    },
    /// The shell's answer to [`CallOutput::Replace`] `attempt`: the call holding the dialog
    /// to replace reserved itself (the id of the record the joined call goes on under), or the
    /// refusal's code and reason phrase.
    Replaced {
        attempt: u64,
        result: Result<u64, (u16, String)>,
    },
    /// The transferee of an attended transfer, handed over by its call to take the place of
    /// the leg this call reserved ([`Call::reserve_replacement`]); its leg machine is already
    /// in this call's table.
    TakeOver(Box<TakeOver>),
    /// The shell's answer to [`CallOutput::Transfer`] `attempt`: where the target's call goes
    /// and a fresh leg id per contact, or the refusal's code and reason phrase.
    TransferRoute {
        attempt: u64,
        result: TransferLookup,
    },
    Timeout,
}

/// What the shell found for a transfer's target: the route and a leg id per contact, or the
/// refusal's code and reason phrase.
pub type TransferLookup = Result<(Box<crate::registrar::Route>, Vec<LegId>), (u16, String)>;

// A started leg moves into its actor at once, so boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum CallOutput {
    /// Run this leg (in its own actor). Boxed: a `Leg` is ~2 KiB, and every output queued in
    /// the call's `VecDeque` would otherwise take that much for the whole call.
    StartLeg(Box<Leg>),
    ToLeg {
        leg: LegId,
        command: LegCommand,
    },
    /// The leg reported `Finished` (or was lost): its actor may stop.
    StopLeg {
        leg: LegId,
    },
    /// A fork that waited for a push ended without ever getting a leg (the push failed, its
    /// timer passed, the call ended or was answered elsewhere): the endpoint, which routed it,
    /// forgets it as it would a leg that stopped.
    ForkGone {
        leg: LegId,
    },
    ConfigureMedia {
        side: Side,
        peer: PeerMedia,
    },
    /// The call has ended (hung up, rejected, failed): persist its record, media counters
    /// filled in by the shell. Legs may still be finishing their last transactions.
    Record(Box<Cdr>),
    /// Every leg has finished (or the bound came): the call's actor may stop.
    Over,
    /// The side's SRTP keys changed (`None`: plain RTP): the media session must hear this
    /// before the `ConfigureMedia` that follows.
    MediaKeys {
        side: Side,
        keys: Option<SrtpKeys>,
    },
    /// Something an operator should know about this call's media security (an `a=crypto`
    /// ignored because it came over UDP, say): the shell logs it.
    Notice {
        side: Side,
        message: &'static str,
    },
    /// Wake the phone of this fork by push (its binding's `pn-*` parameters) and report its
    /// REGISTER as [`CallInput::Woken`], or a refused push as [`CallInput::PushFailed`].
    Push {
        leg: LegId,
        binding: Box<Binding>,
        caller: String,
        callee: String,
    },
    /// Look up `number` as if `transferee` dialled it (a transfer, module doc) and answer with
    /// [`CallInput::TransferRoute`] for this `attempt`, with a fresh leg id (from a CSPRNG) per
    /// contact. `secure`: a `sips:` target.
    Transfer {
        attempt: u64,
        number: String,
        transferee: String,
        secure: bool,
    },
    /// The record of the call up to a completed transfer (it names the transfer and the record
    /// that goes on): store it now; the call goes on.
    Segment(Box<Cdr>),
    /// Find the call holding the dialog `replaces` names, with `transferor` on that side, have
    /// it reserve itself, and answer with [`CallInput::Replaced`] for this `attempt`.
    Replace {
        attempt: u64,
        replaces: super::transfer::Replaces,
        transferor: String,
    },
    /// Claim call park's `orbit` for this call (the calls actor knows which are taken) and
    /// answer with [`CallInput::Parked`] for this `attempt`.
    Park {
        attempt: u64,
        orbit: String,
    },
    /// The call left its orbit (retrieved, or ringing back the parker).
    Unparked,
    /// Hand this leg (take it out of the call's table: the call no longer has it) and what
    /// goes with it to the call that reserved itself; it comes there as [`CallInput::TakeOver`].
    HandOver {
        leg: LegId,
        handover: Box<TakeOver>,
    },
}

/// What goes with a transferee's leg from one call to another (attended transfer).
#[derive(Debug)]
pub struct TakeOver {
    pub leg: LegId,
    /// pbx's SDP session toward the transferee (its version goes on), its codec, its extension.
    pub session: LocalSession,
    pub codec: Option<Codec>,
    pub party: String,
    /// The transferor's extension, and the record of the transferee's call so far.
    pub transferor: String,
    pub follows: u64,
}

/// What a fork toward the callee is started with, kept for forks started later (woken by push).
#[derive(Clone)]
struct ForkTemplate {
    timers: TimerConfig,
    local_sip: LocalSip,
    from: FromTo,
    to: FromTo,
    /// The offer for a contact not on TLS, and (if any) the one with pbx's SRTP key.
    plain: Bytes,
    secure: Option<Bytes>,
}

/// A forward the call may still take (`Route::forwards`): its target and a B-leg id per
/// contact, minted with the call's other legs.
struct PendingForward {
    target: String,
    contacts: Vec<(LegId, Binding)>,
}

impl PendingForward {
    /// Takes this forward's leg ids from the front of `legs`.
    fn new(forward: Forward, legs: &mut std::slice::Iter<'_, LegId>) -> PendingForward {
        let contacts = forward.contacts.into_iter().filter_map(|b| legs.next().map(|leg| (*leg, b))).collect();
        PendingForward { target: forward.target, contacts }
    }
}

/// A transfer in progress (module doc, Transfer).
struct Transfer {
    attempt: u64,
    /// The party that asked, and its side: the target takes that side's place.
    transferor: LegId,
    side: Side,
    /// The transferor's extension (rung back should the target fail after it left).
    by: String,
    number: String,
    secure: bool,
    /// The target's forks, once looked up.
    forks: Vec<LegId>,
    /// When ringing the target gives up.
    deadline: Option<Timestamp>,
    failure: Option<u16>,
    ringing_told: bool,
    /// The transferor hung up (blind transfer): nobody to tell or give the call back to.
    transferor_gone: bool,
    /// The target is the transferor itself, rung back.
    recall: bool,
    /// pbx's session toward the target, and what it offered.
    session: LocalSession,
    offer: Option<Bytes>,
    started: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Ringing,
    Answered,
    Ending,
    Over,
}

/// A re-INVITE/UPDATE from one side, relayed to the other and waiting for its answer.
struct Relayed {
    from: Side,
    offer: SessionDescription,
    audio: Audio,
}

pub struct Call {
    id: u64,
    phase: Phase,
    now: Timestamp,
    a: LegId,
    forks: BTreeMap<LegId, bool>,
    a_live: bool,
    winner: Option<LegId>,
    caller: String,
    callee: String,
    call_id: String,
    start: Timestamp,
    answer: Option<Timestamp>,
    /// The caller's offer (early offer); `None` for a late offer.
    a_offer: Option<(SessionDescription, Audio)>,
    /// What pbx offered the callee: codecs and telephone-event PT.
    b_plan: (Vec<(u8, Codec)>, Option<u8>),
    sessions: [LocalSession; 2],
    media: [SocketAddr; 2],
    codecs: [Option<Codec>; 2],
    /// The answer the caller got in a 183, repeated in the 200 (RFC 3264 §4: one answer).
    early_answer: Option<Bytes>,
    /// pbx's last description sent to each side.
    last_sdp: [Option<Bytes>; 2],
    /// What the relay was last told about each side.
    peers: [Option<PeerMedia>; 2],
    relayed: Option<Relayed>,
    /// Legs whose far end already ended the dialog (BYE, CANCEL): nothing to hang up there.
    gone: Vec<LegId>,
    failure: Option<u16>,
    disposition: Option<Disposition>,
    hangup: Option<HangupSide>,
    deadline: Option<Timestamp>,
    outputs: VecDeque<CallOutput>,
    /// A call to a conference room: pbx is the far end (no B-legs).
    room: bool,
    /// The reason phrase of the caller's final failure, when pbx has one to give.
    reject_reason: Option<String>,
    bugs: crate::bugs::Bugs,
    srtp: [LegSrtp; 2],
    /// Forks offered SRTP (their contact is on TLS).
    secure_forks: Vec<LegId>,
    /// A side whose phone had to speak SRTP answered without a usable key.
    srtp_refused: bool,
    /// Forks waiting for their phone to register after a push, until `push_deadline`.
    waking: BTreeMap<LegId, Binding>,
    push_deadline: Option<Timestamp>,
    template: Option<ForkTemplate>,
    /// How long a ringing call waits for an answer (`CallConfig::no_answer`).
    no_answer: Duration,
    /// `CallSetup::push_wait`.
    push_wait: Option<Duration>,
    /// Where the call goes when every phone is busy, or none answers (or none can be reached);
    /// one of them at most is taken (`registrar::forwarding`).
    forward_busy: Option<PendingForward>,
    /// In turn, each with how long the phones before it ring (`Forwards::no_answer`).
    forward_no_answer: VecDeque<(Duration, PendingForward)>,
    /// `Forwards::busy_moves_on`.
    busy_moves_on: bool,
    /// When the no-answer forward is taken if nobody answered.
    forward_at: Option<Timestamp>,
    /// Forks cancelled when the call was forwarded: their failures say nothing to the caller.
    retired: Vec<LegId>,
    /// An intercom call (`Route::intercom`): phones asked to answer by themselves, the call
    /// hung up [`INTERCOM_MAX`] after the answer.
    intercom: bool,
    /// The extension each fork rings (its binding's AOR), for the parties of the answer.
    fork_aor: BTreeMap<LegId, String>,
    /// The extensions on each side once answered: who a transfer names.
    parties: [String; 2],
    transfer: Option<Transfer>,
    /// Transfers looked up so far (each an attempt) and completed.
    attempts: u64,
    transfers: u64,
    /// The record this call's current one continues (after a transfer).
    follows: Option<u64>,
    /// The first record's id: later ones are `first_id + n·2^57`.
    first_id: u64,
    seed: u64,
    /// A side pbx re-offered to on its own (the transferee after a transfer).
    refreshing: Option<Side>,
    /// This call's leg an attended transfer will replace (reserved until the deadline).
    replacing: Option<(LegId, Timestamp)>,
    /// The transfer that ended this call (attended: the transferee went to another call).
    transferred: Option<crate::cdr::Transferred>,
    parked: Option<Parked>,
    park_timeout: Duration,
}

/// A call waiting in a park orbit: one side empty, the other the transferee.
struct Parked {
    orbit: String,
    /// The empty side, and the leg and extension of the phone that parked the call there.
    side: Side,
    parker_leg: LegId,
    parker: String,
    /// When it rings the parker back.
    deadline: Timestamp,
}

/// How long a call reserved for an attended transfer waits for the transferee's leg.
pub const REPLACE_WAIT: Duration = Duration::from_secs(5);

impl Call {
    pub fn new(now: Timestamp, config: CallConfig, setup: CallSetup) -> Call {
        let CallSetup { id, start, media, seed, room, srtp, push_wait } = setup;
        let CallStart { a, key, invite, source, transport, mut route, forks } = start;
        let media_ip = |side: usize| media[side].ip();
        // The first legs ring now; the rest are the forwards' (busy first), should the call get there.
        let mut later = forks.get(route.contacts.len()..).unwrap_or_default().iter();
        let forwards = std::mem::take(&mut route.forwards);
        let forward_busy = forwards.busy.map(|f| PendingForward::new(f, &mut later));
        let forward_no_answer: VecDeque<(Duration, PendingForward)> =
            forwards.no_answer.into_iter().map(|(after, f)| (after, PendingForward::new(f, &mut later))).collect();
        let forward_at = forward_no_answer.front().map(|(after, _)| now + *after);
        let busy_moves_on = forwards.busy_moves_on;
        let forks: Vec<LegId> = forks.iter().take(route.contacts.len()).copied().collect();
        let mut call = Call {
            id,
            phase: Phase::Ringing,
            now,
            a,
            forks: forks.iter().map(|leg| (*leg, true)).collect(),
            a_live: true,
            winner: None,
            caller: route.caller.clone(),
            callee: route.callee.clone(),
            call_id: invite.call_id().unwrap_or_default(),
            start: now,
            answer: None,
            a_offer: None,
            b_plan: (Vec::new(), None),
            sessions: [LocalSession::new(seed, media_ip(0)), LocalSession::new(seed.wrapping_add(1), media_ip(1))],
            media,
            codecs: [None, None],
            early_answer: None,
            last_sdp: [None, None],
            peers: [None, None],
            relayed: None,
            gone: Vec::new(),
            failure: None,
            disposition: None,
            hangup: None,
            deadline: Some(now + config.no_answer),
            outputs: VecDeque::new(),
            room: room.is_some(),
            reject_reason: None,
            bugs: config.bugs,
            srtp: [0, 1].map(|i| LegSrtp {
                policy: srtp.policy[i],
                key_bytes: srtp.keys[i],
                local: None,
                mandatory: false,
                sent: None,
            }),
            secure_forks: Vec::new(),
            srtp_refused: false,
            waking: BTreeMap::new(),
            push_deadline: None,
            template: None,
            no_answer: config.no_answer,
            push_wait,
            forward_busy,
            forward_no_answer,
            busy_moves_on,
            forward_at,
            retired: Vec::new(),
            intercom: route.intercom,
            fork_aor: BTreeMap::new(),
            parties: [route.caller.clone(), route.target.clone()],
            transfer: None,
            attempts: 0,
            transfers: 0,
            follows: None,
            first_id: id,
            seed,
            refreshing: None,
            replacing: None,
            transferred: None,
            parked: None,
            park_timeout: config.park_timeout,
        };
        let a_secure = transport.is_secure();
        // The A-leg keeps the INVITE; the call needs only its offer (a cheap clone of `Bytes`).
        let body = invite.body.clone();
        let a_leg = Leg::uas(a, now, config.timers, config.local_sip, key, invite, source, transport);
        let Some(a_leg) = a_leg else {
            // The facade checked From, To, Call-ID and CSeq; this cannot happen, but if it does
            // the endpoint answers the INVITE 500 when the leg is reported lost.
            call.a_live = false;
            call.forks.clear();
            call.drop_forwards();
            call.fail("caller's INVITE unusable");
            return call;
        };
        call.outputs.push_back(CallOutput::StartLeg(Box::new(a_leg)));

        // The caller's offer, if any, decides what the callee is offered.
        let offer = if body.is_empty() {
            None
        } else {
            match sdp::parse(&body).ok().and_then(|d| d.audio().map(|a| (d, a))) {
                Some(parsed) => Some(parsed),
                None => return call.refuse_offer(),
            }
        };
        let plan = match sdp::plan_offer(offer.as_ref().map(|(_, audio)| audio)) {
            Ok(plan) => plan,
            Err(_) => return call.refuse_offer(),
        };
        let direction = offer.as_ref().map_or(Direction::SendRecv, |(_, audio)| audio.direction);
        call.a_offer = offer;
        match room {
            None => {}
            // Rooms mix plain RTP: an `a=crypto` in RTP/AVP is ignored (RFC 4568 §5.1.1),
            // RTP/SAVP cannot be answered.
            Some(RoomAnswer::Admitted) if call.a_offer.as_ref().is_some_and(|(_, a)| a.secure) => {
                call.reject_reason = Some("conference rooms take plain RTP only".into());
                return call.refuse_offer();
            }
            Some(RoomAnswer::Admitted) => {
                call.answer_for_room();
                return call;
            }
            Some(RoomAnswer::Refused { code, reason }) => {
                call.hangup = Some(HangupSide::Pbx);
                call.reject_reason = Some(reason);
                call.reject_caller(code, Disposition::Rejected { code });
                return call;
            }
        }
        if let Err(reason) = call.accept_crypto(a_secure) {
            call.reject_reason = Some(reason);
            return call.refuse_offer();
        }
        call.b_plan = plan;
        let b_sdp = sdp::offer(&mut call.sessions[1], call.media[1].port(), &call.b_plan.0, call.b_plan.1, direction);
        call.last_sdp[1] = Some(b_sdp.clone());
        // The callee's contacts on TLS are offered pbx's key (the same SDP with an a=crypto).
        let b_policy = call.srtp[1].policy;
        let secure_contact = route.contacts.iter().any(|b| b.transport.is_secure());
        let b_secure_sdp = (b_policy != MediaEncryption::Off && secure_contact).then(|| {
            let local = call.srtp[1].local_key(Suite::AesCm128HmacSha1_80);
            let mandatory = b_policy == MediaEncryption::Required;
            call.srtp[1].mandatory = mandatory;
            call.sessions[1].set_crypto(Some((crypto::line(1, &local), mandatory)));
            let sdp = sdp::offer(&mut call.sessions[1], call.media[1].port(), &call.b_plan.0, call.b_plan.1, direction);
            call.last_sdp[1] = Some(sdp.clone());
            sdp
        });

        let from_uri = message::parse_sip_uri(&format!("sip:{}@{}", route.caller, config.local_sip.address));
        let to_uri = message::parse_sip_uri(&format!("sip:{}@{}", route.target, config.local_sip.address));
        if let (Some(from_uri), Some(to_uri)) = (from_uri, to_uri) {
            call.template = Some(ForkTemplate {
                timers: config.timers,
                local_sip: config.local_sip,
                from: name_addr(Some(&route.caller_display_name), from_uri),
                to: name_addr(None, to_uri),
                plain: b_sdp.clone(),
                secure: b_secure_sdp.clone(),
            });
        }
        for (leg_id, binding) in forks.iter().zip(&route.contacts) {
            let (Some(_), Some(target)) = (&call.template, message::parse_sip_uri(&binding.contact)) else {
                call.forks.insert(*leg_id, false);
                continue;
            };
            let offer = match (&b_secure_sdp, binding.transport.is_secure()) {
                (Some(secure), true) => {
                    call.secure_forks.push(*leg_id);
                    secure.clone()
                }
                _ if b_policy == MediaEncryption::Required => {
                    // No SDES key may go to this contact, and the callee must have SRTP.
                    call.forks.insert(*leg_id, false);
                    call.notice(Side::B, "contact not on SIP over TLS skipped: media encryption is required");
                    continue;
                }
                _ => b_sdp.clone(),
            };
            if let Some(wait) = push_wait
                && crate::push::PushContact::params_of(&binding.contact).is_some()
            {
                // Asleep: push it, and call it when it registers (module doc, Push).
                call.waking.insert(*leg_id, binding.clone());
                call.push_deadline = Some(now + wait);
                call.outputs.push_back(CallOutput::Push {
                    leg: *leg_id,
                    binding: Box::new(binding.clone()),
                    caller: route.caller.clone(),
                    callee: route.callee.clone(),
                });
                continue;
            }
            call.start_fork(*leg_id, target, binding, offer);
        }
        if !call.forks.values().any(|live| *live) {
            // None of the target's phones could be called: on to its forward.
            if let Some(forward) = call.next_stage() {
                call.forward(forward, true);
                return call;
            }
            if let Some(forward) = call.forward_busy.take() {
                call.forward(forward, false);
                return call;
            }
            if b_policy == MediaEncryption::Required && !route.contacts.is_empty() {
                call.reject_reason = Some("Media encryption required: callee not on SIP over TLS".into());
                call.failure = Some(488);
                call.reject_caller(488, Disposition::Rejected { code: 488 });
                return call;
            }
            if route.pickup.is_some() {
                call.reject_reason = Some("Temporarily Unavailable (no call to pick up)".into());
            }
            if let Some(orbit) = &route.park {
                call.reject_reason = Some(format!("Temporarily Unavailable (nothing parked at {orbit})"));
            }
            if route.replaces.is_some() {
                // RFC 3891 §3: no dialog matched (or it may not be replaced by this caller).
                call.reject_reason = Some("Call/Transaction Does Not Exist (nothing to replace)".into());
                call.failure = Some(481);
                call.reject_caller(481, Disposition::Rejected { code: 481 });
                return call;
            }
            call.failure = Some(480);
            call.reject_caller(480, Disposition::Unavailable);
        }
        call
    }

    /// Whether a phone may pick this call up now: ringing, and with the caller's offer in hand
    /// (a late-offer call is not picked up: pbx would have to offer to both).
    pub fn can_be_picked_up(&self) -> bool {
        self.phase == Phase::Ringing && !self.room && self.a_offer.is_some() && !self.srtp[0].mandatory
    }

    /// Whether an INVITE with `Replaces` from `caller` may take `leg`'s place (RFC 3891): a
    /// fork of this call while it rings (a pickup, from any extension, as `**N` allows), or a
    /// party of the answered call that is `caller`'s own extension (the call moves to another
    /// of its phones) while no transfer runs.
    pub fn can_replace(&self, leg: LegId, caller: &str) -> bool {
        match self.phase {
            Phase::Ringing => self.forks.get(&leg).copied().unwrap_or(false) && self.can_be_picked_up(),
            Phase::Answered => {
                let side = if leg == self.a { Side::A } else { Side::B };
                let party = self.answered_legs().is_some_and(|(a, b)| leg == a || leg == b);
                party
                    && !self.room
                    && self.transfer.is_none()
                    && self.replacing.is_none()
                    && self.parties[side_index(side)] == caller
            }
            _ => false,
        }
    }

    /// A new phone's INVITE (with `Replaces`) takes `leg`'s place in the answered call: it is
    /// answered with pbx's port on that side (plain RTP, in the codec it offered first), the
    /// old phone gets a BYE. The same extension, the same record.
    fn join(&mut self, start: CallStart, leg: LegId) {
        let Some((p, offer)) = self.new_phone(start) else { return };
        let side = if leg == self.a { Side::A } else { Side::B };
        let i = side_index(side);
        let Some((offer, audio)) = offer else {
            return self.command(p, LegCommand::Reject { code: 488, reason: None });
        };
        let Some(codec) = first_codec(&audio) else {
            return self.command(p, LegCommand::Reject { code: 488, reason: None });
        };
        self.plain_side(side);
        let te = audio.telephone_event.is_some();
        let port = self.media[i].port();
        let Ok(answer) = sdp::answer(&mut self.sessions[i], &offer, port, codec, te, audio.direction.answer()) else {
            return self.command(p, LegCommand::Reject { code: 488, reason: None });
        };
        self.configure(side, &audio, codec);
        self.last_sdp[i] = Some(answer.clone());
        self.command(p, LegCommand::Answer { sdp: Some(answer) });
        self.command(leg, LegCommand::Hangup);
        self.seat(side, p);
    }

    /// A new phone's INVITE (a pickup, a retrieval, an INVITE with `Replaces`): its leg starts
    /// as one of this call's, with its offer if that is plain RTP pbx can read.
    fn new_phone(&mut self, start: CallStart) -> Option<(LegId, Option<(SessionDescription, Audio)>)> {
        let CallStart { a: p, key, invite, source, transport, .. } = start;
        let template = self.template.clone()?;
        let body = invite.body.clone();
        let leg = Leg::uas(p, self.now, template.timers, template.local_sip, key, invite, source, transport)?;
        self.outputs.push_back(CallOutput::StartLeg(Box::new(leg)));
        self.forks.insert(p, true);
        let offer = sdp::parse(&body).ok().and_then(|d| d.audio().map(|a| (d, a))).filter(|(_, a)| !a.secure);
        Some((p, offer))
    }

    /// `leg` takes `side` of the answered call (after a transfer, a takeover, a retrieval): the
    /// party there before stays in `forks` until its leg finishes.
    fn seat(&mut self, side: Side, leg: LegId) {
        match side {
            Side::B => {
                self.forks.insert(leg, true);
                self.winner = Some(leg);
            }
            Side::A => {
                self.forks.insert(self.a, self.a_live);
                self.forks.remove(&leg);
                self.a = leg;
                self.a_live = true;
            }
        }
    }

    /// The picking phone's INVITE (its leg `start.a`) answers the call: answered with pbx's
    /// B-side port in the codec it offered first, the caller answered as when a phone answers
    /// (its early answer if it had one), the phones ringing cancelled.
    fn pick_up(&mut self, start: CallStart) {
        let start_caller = start.route.caller.clone();
        let Some((p, offer)) = self.new_phone(start) else { return };
        let picked = offer.and_then(|(p_offer, p_audio)| {
            let codec_b = first_codec(&p_audio)?;
            let te = p_audio.telephone_event.is_some();
            let port = self.media[1].port();
            self.sessions[1].set_crypto(None);
            self.srtp[1].local = None;
            let to_p =
                sdp::answer(&mut self.sessions[1], &p_offer, port, codec_b, te, p_audio.direction.answer()).ok()?;
            let (a_offer, a_audio) = self.a_offer.clone()?;
            let to_a = match self.early_answer.clone() {
                Some(early) => early,
                None => {
                    let codec_a = sdp::choose(&a_audio, codec_b)?;
                    let te = a_audio.telephone_event.is_some();
                    let port = self.media[0].port();
                    let answer = sdp::answer(&mut self.sessions[0], &a_offer, port, codec_a, te, p_audio.direction);
                    let answer = answer.ok()?;
                    self.configure(Side::A, &a_audio, codec_a);
                    answer
                }
            };
            self.configure(Side::B, &p_audio, codec_b);
            if let Some(peer) = self.peers[0].clone().filter(|_| self.early_answer.is_some()) {
                self.outputs.push_back(CallOutput::ConfigureMedia { side: Side::A, peer });
            }
            Some((to_p, to_a))
        });
        let Some((to_p, to_a)) = picked else {
            // Nothing pbx can answer the picking phone with: it alone is refused.
            return self.command(p, LegCommand::Reject { code: 488, reason: None });
        };
        self.winner = Some(p);
        self.parties[1] = start_caller;
        self.forget_waking();
        let others: Vec<LegId> =
            self.forks.iter().filter(|(id, live)| **live && **id != p).map(|(id, _)| *id).collect();
        for other in others {
            self.command(other, LegCommand::Hangup);
        }
        self.phase = Phase::Answered;
        self.answer = Some(self.now);
        self.deadline = None;
        self.disposition = Some(Disposition::Answered);
        self.last_sdp = [Some(to_a.clone()), Some(to_p.clone())];
        self.command(p, LegCommand::Answer { sdp: Some(to_p) });
        self.command(self.a, LegCommand::Answer { sdp: Some(to_a) });
    }

    /// The call goes on to `forward` (its phones ring now): the forks ringing are cancelled
    /// and their failures no longer count, the other forward is dropped, the caller keeps
    /// hearing ringback.
    /// `next`: the no-answer stages after this one stay (a hunt group's next members); else
    /// (a busy forward) none does.
    fn forward(&mut self, forward: PendingForward, next: bool) {
        let later = if next { std::mem::take(&mut self.forward_no_answer) } else { VecDeque::new() };
        self.drop_forwards();
        self.forget_waking();
        self.forward_at = later.front().map(|(after, _)| self.now + *after);
        self.forward_no_answer = later;
        let ringing: Vec<LegId> = self.forks.iter().filter(|(_, live)| **live).map(|(id, _)| *id).collect();
        for leg in ringing {
            self.command(leg, LegCommand::Hangup);
        }
        self.retired.extend(self.forks.keys().copied());
        self.failure = None;
        self.deadline = Some(self.now + self.no_answer);
        if self.bugs.endless_forward() {
            // Injected (simulator): the forward rings with no no-answer timer.
            self.deadline = None;
        }
        let to = message::parse_sip_uri(&format!("sip:{}@{}", forward.target, self.local_address()));
        if let (Some(template), Some(to)) = (self.template.as_mut(), to) {
            template.to = name_addr(None, to);
        }
        for (leg, binding) in forward.contacts {
            self.forks.insert(leg, true);
            self.ring_later(leg, binding);
        }
        if !self.forks.iter().any(|(id, live)| *live && !self.retired.contains(id)) {
            // The forward's phones could not be called: the caller hears 480 now.
            self.failure = Some(480);
            self.hangup = Some(HangupSide::Pbx);
            self.reject_caller(480, Disposition::Unavailable);
        }
    }

    /// The next no-answer stage, if any.
    fn next_stage(&mut self) -> Option<PendingForward> {
        self.forward_no_answer.pop_front().map(|(_, f)| f)
    }

    /// Drops the forwards not taken: their legs were never started.
    fn drop_forwards(&mut self) {
        self.forward_at = None;
        let stages = std::mem::take(&mut self.forward_no_answer).into_iter().map(|(_, f)| f);
        let legs: Vec<LegId> = self
            .forward_busy
            .take()
            .into_iter()
            .chain(stages)
            .flat_map(|f| f.contacts.into_iter().map(|(leg, _)| leg))
            .collect();
        for leg in legs {
            self.outputs.push_back(CallOutput::ForkGone { leg });
        }
    }

    fn local_address(&self) -> SocketAddr {
        self.template.as_ref().map_or(self.media[1], |t| t.local_sip.address)
    }

    /// Rings a contact after the call started (a forward's): pushed first when it sleeps,
    /// offered pbx's SRTP key when on TLS, as the first contacts were.
    fn ring_later(&mut self, leg: LegId, binding: Binding) {
        if let Some(wait) = self.push_wait
            && crate::push::PushContact::params_of(&binding.contact).is_some()
        {
            self.waking.insert(leg, binding.clone());
            self.push_deadline = Some(self.now + wait);
            let (caller, callee) = (self.caller.clone(), binding.aor.clone());
            return self.outputs.push_back(CallOutput::Push { leg, binding: Box::new(binding), caller, callee });
        }
        self.woken_or_failed(leg, binding);
    }

    /// Starts the B-leg `leg_id` toward `binding` (its Contact `target`) with `offer`.
    fn start_fork(&mut self, leg_id: LegId, target: message::SipUri, binding: &Binding, offer: Bytes) {
        let Some(template) = self.template.clone() else { return };
        // The Contact's own address unless NAT is detected (see `destination`).
        let destination = super::destination::destination(&target, binding.source, binding.transport, binding.nat);
        let mut leg = Leg::uac(
            leg_id,
            self.now,
            template.timers,
            template.local_sip,
            template.from,
            template.to,
            target,
            destination,
            binding.transport,
        );
        if self.intercom {
            leg = leg.auto_answer();
        }
        self.fork_aor.insert(leg_id, binding.aor.clone());
        self.outputs.push_back(CallOutput::StartLeg(Box::new(leg)));
        self.outputs.push_back(CallOutput::ToLeg { leg: leg_id, command: LegCommand::Invite { sdp: Some(offer) } });
    }

    /// A waiting fork's phone registered after its push: it is called now, at its new binding.
    fn woken(&mut self, leg: LegId, binding: Binding) {
        if self.phase != Phase::Ringing || !self.waking.contains_key(&leg) {
            return;
        }
        self.woken_or_failed(leg, binding);
    }

    /// Calls the fork `leg` at `binding`, or fails it when it cannot be called.
    fn woken_or_failed(&mut self, leg: LegId, binding: Binding) {
        let Some(template) = &self.template else { return self.fork_failed(leg, 480) };
        let Some(target) = message::parse_sip_uri(&binding.contact) else {
            return self.fork_failed(leg, 480);
        };
        let offer = match (&template.secure, binding.transport.is_secure()) {
            (Some(secure), true) => {
                let secure = secure.clone();
                self.secure_forks.push(leg);
                secure
            }
            _ if self.srtp[1].policy == MediaEncryption::Required => return self.fork_failed(leg, 488),
            _ => template.plain.clone(),
        };
        self.waking.remove(&leg);
        self.start_fork(leg, target, &binding, offer);
    }

    /// Forks still waiting for a push have no leg to hang up: they just end (the call was
    /// answered elsewhere, or is ending).
    fn forget_waking(&mut self) {
        self.drop_forwards();
        for leg in std::mem::take(&mut self.waking).into_keys() {
            self.forks.insert(leg, false);
            self.outputs.push_back(CallOutput::ForkGone { leg });
        }
        self.push_deadline = None;
    }

    /// A fork that never got (or will not get) a leg ends with `code`, as a failed leg would.
    fn fork_failed(&mut self, leg: LegId, code: u16) {
        if self.waking.remove(&leg).is_some() {
            self.outputs.push_back(CallOutput::ForkGone { leg });
        }
        self.b_event(leg, LegEvent::Failed { code });
    }

    /// The caller's offer (`a_offer`) and SRTP: sets pbx's answer key on the A side when the
    /// offer carries a usable `a=crypto` over TLS; `Err` is the 488's reason (module doc).
    fn accept_crypto(&mut self, over_tls: bool) -> Result<(), String> {
        let policy = self.srtp[0].policy;
        let Some((_, audio)) = &self.a_offer else {
            return match policy {
                MediaEncryption::Required => Err("Media encryption required: send an SDP offer with a=crypto".into()),
                _ => Ok(()),
            };
        };
        if policy == MediaEncryption::Off {
            return match audio.secure {
                true => Err("Media encryption is off for this extension: RTP/SAVP refused".into()),
                false => Ok(()),
            };
        }
        if !over_tls {
            if audio.secure {
                return Err("SRTP keys travel only over SIP over TLS: RTP/SAVP refused".into());
            }
            if policy == MediaEncryption::Required {
                return Err("Media encryption required: use SIP over TLS".into());
            }
            if !audio.crypto.is_empty() {
                self.notice(Side::A, "a=crypto offered over UDP/TCP ignored: SDES keys travel only over TLS");
            }
            return Ok(());
        }
        let mandatory = audio.secure || policy == MediaEncryption::Required;
        match crypto::choose(audio.crypto.iter().map(String::as_str)) {
            Err(error) => Err(error.to_string()),
            Ok(None) if mandatory => {
                Err("Media encryption required: no usable a=crypto (AES_CM_128_HMAC_SHA1_80 or _32)".into())
            }
            Ok(None) => Ok(()),
            Ok(Some(offered)) => {
                let local = self.srtp[0].local_key(offered.suite());
                self.srtp[0].mandatory = mandatory;
                self.sessions[0].set_crypto(Some((crypto::line(offered.tag, &local), audio.secure)));
                Ok(())
            }
        }
    }

    /// The side's SRTP from an SDP it sent (offer or answer), when pbx sent it a key: the
    /// phone's key, given to the media session when it changed. A side that must speak SRTP and
    /// sent no usable key marks the call (`srtp_refused`); one that need not goes plain.
    fn learn_keys(&mut self, side: Side, audio: &Audio) {
        let i = side_index(side);
        let Some(local) = self.srtp[i].local.clone().filter(|_| self.sessions[i].has_crypto()) else { return };
        let keys = match crypto::choose(audio.crypto.iter().map(String::as_str)) {
            // A phone echoing pbx's own key back would have both directions share keystream
            // (RFC 3711 §9.1): no key.
            Ok(Some(offered)) if offered.suite() == local.suite() && offered.key != local => {
                Some(SrtpKeys { remote: offered.key, local })
            }
            _ if self.srtp[i].sent.is_some() => return, // a re-offer without a key keeps the leg's
            _ => None,
        };
        if keys.is_none() {
            if self.srtp[i].mandatory {
                self.srtp_refused = true;
                return;
            }
            self.sessions[i].set_crypto(None);
            self.srtp[i].local = None;
        }
        if self.srtp[i].sent != keys {
            self.srtp[i].sent = keys.clone();
            self.outputs.push_back(CallOutput::MediaKeys { side, keys });
        }
    }

    fn notice(&mut self, side: Side, message: &'static str) {
        self.outputs.push_back(CallOutput::Notice { side, message });
    }

    pub fn handle(&mut self, now: Timestamp, input: CallInput) {
        self.now = self.now.max(now);
        if self.phase == Phase::Over {
            return;
        }
        match input {
            CallInput::Leg { leg, event } if leg == self.a => self.a_event(event),
            CallInput::Leg { leg, event } => self.b_event(leg, event),
            CallInput::LegLost { leg } => self.lost(leg),
            CallInput::MediaInactive { side } if self.parked.as_ref().is_some_and(|p| p.side == side) => {
                // The parked call's empty side: nobody is there to send.
            }
            CallInput::MediaInactive { .. } if self.transfer.is_some() || self.replacing.is_some() => {
                // The transferor's side goes quiet while its target rings (or it left): not a
                // dead call. The side is reconfigured when the transfer completes.
            }
            CallInput::MediaInactive { side } => {
                if self.phase == Phase::Answered {
                    self.hangup.get_or_insert(HangupSide::Pbx);
                    let _ = side;
                    self.end_all();
                }
            }
            CallInput::Hangup => {
                if self.phase == Phase::Answered {
                    self.hangup.get_or_insert(HangupSide::Pbx);
                    self.end_all();
                }
            }
            CallInput::Fail { reason } => {
                if matches!(self.phase, Phase::Ringing | Phase::Answered) {
                    self.failure = Some(500);
                    self.fail(&reason);
                }
            }
            CallInput::Woken { leg, binding } => self.woken(leg, *binding),
            CallInput::PickUp(start) if self.can_be_picked_up() => self.pick_up(*start),
            CallInput::PickUp(_) => {}
            CallInput::TransferRoute { attempt, result } => self.transfer_routed(attempt, result),
            CallInput::ReplaceLeg { leg, start } if self.can_replace(leg, &start.route.caller) => match self.phase {
                Phase::Ringing => self.pick_up(*start),
                _ => self.join(*start, leg),
            },
            CallInput::ReplaceLeg { .. } => {}
            CallInput::Parked { attempt, ok } => self.parked_in(attempt, ok),
            CallInput::Retrieve(start) => {
                if self.parked.as_ref().is_some_and(|p| self.can_retrieve(&p.orbit)) {
                    self.retrieve(*start);
                }
            }
            CallInput::Timeout if self.parked.as_ref().is_some_and(|p| p.deadline <= self.now) => self.park_timed_out(),
            CallInput::Replaced { attempt, result } => self.replaced(attempt, result),
            CallInput::TakeOver(t) => self.take_over(*t),
            CallInput::Timeout if self.replacing.is_some_and(|(_, until)| until <= self.now) => {
                // The transferee never came: the reserved leg is this call's again (and if it
                // hung up meanwhile, that ends the call now).
                let Some((leg, _)) = self.replacing.take() else { return };
                if self.gone.contains(&leg) {
                    self.hung_up_by(if leg == self.a { HangupSide::Caller } else { HangupSide::Callee });
                }
            }
            CallInput::Timeout if self.transfer.as_ref().and_then(|t| t.deadline).is_some_and(|d| d <= self.now) => {
                let code = self.transfer.as_ref().and_then(|t| t.failure).unwrap_or(480);
                self.transfer_failed(code, reason_of(code));
            }
            CallInput::PushFailed { leg } => {
                if self.waking.contains_key(&leg) {
                    self.fork_failed(leg, 480);
                }
            }
            CallInput::Timeout if self.push_deadline.is_some_and(|d| d <= self.now) => {
                // No fork waits past its push timer.
                self.push_deadline = None;
                let waiting: Vec<LegId> = self.waking.keys().copied().collect();
                for leg in waiting {
                    self.fork_failed(leg, 480);
                }
                if self.deadline.is_some_and(|d| d <= self.now) {
                    self.handle(self.now, CallInput::Timeout);
                }
            }
            CallInput::Timeout if self.phase == Phase::Ringing && self.forward_at.is_some_and(|at| at <= self.now) => {
                // Nobody answered in time: on to the no-answer forward.
                self.forward_at = None;
                if let Some(forward) = self.next_stage() {
                    self.forward(forward, true);
                }
            }
            CallInput::Timeout => {
                if self.deadline.is_some_and(|d| d <= self.now) {
                    match self.phase {
                        Phase::Ringing if !self.forward_no_answer.is_empty() => {
                            // The call's own no-answer bound came first: forward now.
                            if let Some(forward) = self.next_stage() {
                                self.forward(forward, true);
                            }
                        }
                        Phase::Ringing => {
                            self.hangup = Some(HangupSide::Pbx);
                            self.reject_caller(480, Disposition::NoAnswer);
                        }
                        Phase::Answered => {
                            // An intercom call's time is up.
                            self.hangup = Some(HangupSide::Pbx);
                            self.end_all();
                        }
                        _ => self.over(),
                    }
                }
            }
        }
        self.check_over();
    }

    pub fn poll_output(&mut self) -> Option<CallOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let forward_at = self.forward_at.filter(|_| self.phase == Phase::Ringing);
        let transfer = self.transfer.as_ref().and_then(|t| t.deadline);
        let replacing = self.replacing.map(|(_, until)| until);
        let parked = self.parked.as_ref().map(|p| p.deadline);
        [self.deadline, self.push_deadline.filter(|_| !self.waking.is_empty()), forward_at, transfer, replacing, parked]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The caller's leg and the answering callee's while the call is answered and neither side
    /// has hung up; `None` before the answer and once the call ends.
    pub fn answered_legs(&self) -> Option<(LegId, LegId)> {
        match (self.phase, self.winner) {
            (Phase::Answered, Some(winner)) => Some((self.a, winner)),
            _ => None,
        }
    }

    /// For the active-calls list: "ringing", "answered" or "ending".
    pub fn state(&self) -> &'static str {
        match self.phase {
            Phase::Ringing => "ringing",
            Phase::Answered => "answered",
            Phase::Ending | Phase::Over => "ending",
        }
    }

    /// A CDR as it stands now (the final one comes out in `Record`).
    pub fn record(&self) -> Cdr {
        Cdr {
            id: self.id,
            call_id: self.call_id.clone(),
            caller: self.caller.clone(),
            callee: self.callee.clone(),
            start: self.start,
            answer: self.answer,
            end: self.now,
            disposition: self.disposition.clone().unwrap_or(Disposition::Failed { reason: "in progress".into() }),
            hangup: self.hangup,
            codec_caller: self.codecs[0].map(|c| c.name().to_owned()),
            codec_callee: self.codecs[1].map(|c| c.name().to_owned()),
            media: Default::default(),
            follows: self.follows,
            transfer: self.transferred.clone(),
        }
    }

    fn a_event(&mut self, event: LegEvent) {
        match event {
            LegEvent::Cancelled => {
                self.gone.push(self.a);
                self.disposition.get_or_insert(Disposition::Cancelled);
                self.hangup.get_or_insert(HangupSide::Caller);
                self.a_live = false;
                self.end_all();
            }
            LegEvent::Acked { sdp } => {
                // The answer to the offer pbx made in its 200 to a late-offer INVITE.
                if self.a_offer.is_none() && self.codecs[0].is_none() && self.phase == Phase::Answered {
                    let answer = sdp.and_then(|b| sdp::parse(&b).ok()).and_then(|d| d.audio());
                    match answer.and_then(|audio| first_codec(&audio).map(|c| (audio, c))) {
                        Some((audio, codec)) => self.configure(Side::A, &audio, codec),
                        None => {
                            self.disposition = Some(Disposition::Failed { reason: "no answer in ACK".into() });
                            self.hangup = Some(HangupSide::Pbx);
                            self.end_all();
                        }
                    }
                }
            }
            LegEvent::Bye if self.is_transferor(self.a) => self.transferor_left(self.a),
            LegEvent::Bye => {
                self.gone.push(self.a);
                self.hung_up_by(HangupSide::Caller);
            }
            LegEvent::Refer(target) => self.refer(self.a, target),
            LegEvent::NoAck => {
                self.hangup.get_or_insert(HangupSide::Pbx);
                self.end_all();
            }
            LegEvent::Offer { method, sdp } => self.offer_from(Side::A, method, sdp),
            LegEvent::OfferAnswered { code, sdp } => self.offer_answered(Side::A, code, sdp),
            LegEvent::Finished => {
                self.a_live = false;
                self.outputs.push_back(CallOutput::StopLeg { leg: self.a });
                if self.is_transferor(self.a) {
                    self.transferor_left(self.a);
                } else if self.phase == Phase::Ringing {
                    // Finished without our final response: only after a CANCEL, handled above.
                    self.end_all();
                }
            }
            LegEvent::Progress { .. } | LegEvent::Answered { .. } | LegEvent::Failed { .. } => {}
        }
    }

    fn hung_up_by(&mut self, side: HangupSide) {
        self.hangup.get_or_insert(side);
        self.end_all();
    }

    /// The injected bug (off outside the simulator's self-test): one call in eight ignores the
    /// callee's hang-up, so only the RTP timeout ends it.
    fn half_hangup_bug(&self) -> bool {
        self.bugs.half_hangup() && self.id % 8 == 5
    }

    fn b_event(&mut self, leg: LegId, event: LegEvent) {
        if !self.forks.contains_key(&leg) {
            return;
        }
        if self.transfer.as_ref().is_some_and(|t| t.forks.contains(&leg)) {
            match event {
                LegEvent::Progress { .. } => return self.transfer_ringing(),
                LegEvent::Answered { sdp } => return self.transfer_answered(leg, sdp),
                LegEvent::Failed { code } => return self.transfer_fork_failed(leg, code),
                _ => {}
            }
        }
        match event {
            LegEvent::Bye | LegEvent::Finished if Some(leg) == self.winner && self.is_transferor(leg) => {
                if event == LegEvent::Finished {
                    self.forks.insert(leg, false);
                    self.outputs.push_back(CallOutput::StopLeg { leg });
                }
                self.transferor_left(leg);
            }
            LegEvent::Refer(target) if Some(leg) == self.winner => self.refer(leg, target),
            LegEvent::Refer(_) => self.command(leg, LegCommand::AnswerRefer { code: 481, reason: None }),
            LegEvent::Progress { code, sdp } => {
                if self.phase != Phase::Ringing || self.retired.contains(&leg) {
                    return;
                }
                let mut answer = None;
                if let (Some(sdp), Some(_)) = (sdp, &self.a_offer) {
                    answer = self.answer_caller_from(&sdp);
                    if answer.is_some() {
                        self.early_answer = answer.clone();
                    }
                }
                let code = if answer.is_some() { 183 } else { code.clamp(180, 199) };
                self.command(self.a, LegCommand::Progress { code, sdp: answer });
            }
            LegEvent::Answered { sdp } => self.b_answered(leg, sdp),
            LegEvent::Failed { code } => {
                self.forks.insert(leg, false);
                if self.retired.contains(&leg) {
                    // Cancelled when the call was forwarded: says nothing about the forward.
                    return self.check_all_failed();
                }
                self.failure = Some(match self.failure {
                    None => code,
                    Some(best) => more_telling(best, code),
                });
                self.check_all_failed();
            }
            LegEvent::Bye if Some(leg) == self.winner => {
                self.gone.push(leg);
                if !self.half_hangup_bug() {
                    self.hung_up_by(HangupSide::Callee)
                }
            }
            LegEvent::NoAck | LegEvent::Bye => {}
            LegEvent::Offer { method, sdp } if Some(leg) == self.winner => self.offer_from(Side::B, method, sdp),
            LegEvent::Offer { .. } => self.command(leg, LegCommand::AnswerOffer { code: 488, sdp: None }),
            LegEvent::OfferAnswered { code, sdp } if Some(leg) == self.winner => {
                self.offer_answered(Side::B, code, sdp)
            }
            LegEvent::OfferAnswered { .. } => {}
            LegEvent::Finished => {
                self.forks.insert(leg, false);
                self.outputs.push_back(CallOutput::StopLeg { leg });
                if Some(leg) == self.winner && self.phase == Phase::Answered && !self.half_hangup_bug() {
                    self.hangup.get_or_insert(HangupSide::Callee);
                    self.end_all();
                }
            }
            LegEvent::Cancelled | LegEvent::Acked { .. } => {}
        }
    }

    /// Every fork of a ringing call has failed: on to a forward (busy: 486, 600, 603; the
    /// no-answer one for any other failure), else the caller gets the most telling failure.
    fn check_all_failed(&mut self) {
        if self.phase != Phase::Ringing || self.forks.values().any(|live| *live) {
            return;
        }
        let code = self.failure.unwrap_or(480);
        let busy = matches!(code, 486 | 600 | 603);
        if busy && let Some(forward) = self.forward_busy.take() {
            return self.forward(forward, false);
        }
        if (!busy || self.busy_moves_on)
            && let Some(forward) = self.next_stage()
        {
            return self.forward(forward, true);
        }
        let disposition = match code {
            486 | 600 => Disposition::Busy,
            408 | 480 => Disposition::NoAnswer,
            _ => Disposition::Rejected { code },
        };
        self.hangup = Some(HangupSide::Callee);
        self.reject_caller(code, disposition);
    }

    fn b_answered(&mut self, leg: LegId, sdp: Option<Bytes>) {
        if self.phase != Phase::Ringing {
            // Another contact answered first, or the call is ending: this one goes.
            return self.command(leg, LegCommand::Hangup);
        }
        self.winner = Some(leg);
        if let Some(aor) = self.fork_aor.get(&leg) {
            self.parties[1] = aor.clone();
        }
        self.forget_waking();
        if !self.secure_forks.contains(&leg) {
            self.sessions[1].set_crypto(None);
            self.srtp[1].local = None;
        }
        let others: Vec<LegId> =
            self.forks.iter().filter(|(id, live)| **live && **id != leg).map(|(id, _)| *id).collect();
        for other in others {
            self.command(other, LegCommand::Hangup);
        }
        self.phase = Phase::Answered;
        self.answer = Some(self.now);
        self.deadline = self.intercom.then(|| self.now + INTERCOM_MAX);
        self.disposition = Some(Disposition::Answered);
        let to_caller = match (&self.a_offer, sdp) {
            (Some(_), Some(sdp)) => match self.early_answer.clone() {
                Some(early) => {
                    // The early answer stands; the relay learns sources afresh from now on.
                    for side in [Side::A, Side::B] {
                        if let Some(peer) = self.peers[side_index(side)].clone() {
                            self.outputs.push_back(CallOutput::ConfigureMedia { side, peer });
                        }
                    }
                    Some(early)
                }
                None => self.answer_caller_from(&sdp),
            },
            (None, Some(sdp)) => {
                // Late offer: the callee answered pbx's offer; the caller now gets pbx's offer
                // (the callee's codec first, so no transcoding if the caller can help it).
                match sdp::parse(&sdp).ok().and_then(|d| d.audio()).and_then(|a| first_codec(&a).map(|c| (a, c))) {
                    Some((audio, codec)) => {
                        self.configure(Side::B, &audio, codec);
                        let codecs = [(codec.static_pt(), codec), (codec.other().static_pt(), codec.other())];
                        let offer = sdp::offer(
                            &mut self.sessions[0],
                            self.media[0].port(),
                            &codecs,
                            Some(TELEPHONE_EVENT_PT),
                            audio.direction.answer(),
                        );
                        Some(offer)
                    }
                    None => None,
                }
            }
            (_, None) => None,
        };
        let to_caller = to_caller.filter(|_| !self.srtp_refused);
        match to_caller {
            Some(sdp) => {
                self.last_sdp[0] = Some(sdp.clone());
                self.command(self.a, LegCommand::Answer { sdp: Some(sdp) });
            }
            None => {
                // The callee answered with nothing pbx can use: hang up on it, 488 the caller.
                self.disposition = Some(Disposition::Failed { reason: "callee's answer unusable".into() });
                self.hangup = Some(HangupSide::Pbx);
                self.failure = Some(488);
                self.phase = Phase::Ringing;
                self.end_all();
            }
        }
    }

    /// The caller's answer, built from the callee's SDP (its answer to pbx's offer); configures
    /// both sides of the relay. `None` when the callee's SDP is unusable.
    fn answer_caller_from(&mut self, callee_sdp: &[u8]) -> Option<Bytes> {
        let audio = sdp::parse(callee_sdp).ok()?.audio()?;
        let codec_b = first_codec(&audio)?;
        let (offer, a_audio) = self.a_offer.clone()?;
        let codec_a = sdp::choose(&a_audio, codec_b)?;
        let te = a_audio.telephone_event.is_some();
        let answer =
            sdp::answer(&mut self.sessions[0], &offer, self.media[0].port(), codec_a, te, audio.direction).ok()?;
        self.configure(Side::B, &audio, codec_b);
        self.configure(Side::A, &a_audio, codec_a);
        Some(answer)
    }

    /// Points the relay's `side` at what that side's SDP says.
    fn configure(&mut self, side: Side, audio: &Audio, codec: Codec) {
        self.learn_keys(side, audio);
        let pt = audio.codecs.iter().find(|(_, c)| *c == codec).map_or(codec.static_pt(), |(pt, _)| *pt);
        self.codecs[side_index(side)] = Some(codec);
        let peer = PeerMedia {
            rtp: audio.rtp,
            rtcp: audio.rtcp,
            codec: (pt, g711(codec)),
            telephone_event: audio.telephone_event,
            sends: audio.direction.sends() && audio.rtp.is_some(),
        };
        self.peers[side_index(side)] = Some(peer.clone());
        self.outputs.push_back(CallOutput::ConfigureMedia { side, peer });
    }

    /// pbx answers a call to a room itself: the caller's first G.711 codec (the room mixes each
    /// participant in its own law), telephone-event when offered (the room's keys), the room's
    /// port. A late offer gets pbx's offer in the 200, its answer comes in the ACK.
    fn answer_for_room(&mut self) {
        let sdp = match self.a_offer.clone() {
            Some((offer, audio)) => {
                let answer = first_codec(&audio).and_then(|codec| {
                    let te = audio.telephone_event.is_some();
                    let port = self.media[0].port();
                    let direction = audio.direction.answer();
                    sdp::answer(&mut self.sessions[0], &offer, port, codec, te, direction).ok().map(|a| (a, codec))
                });
                let Some((answer, codec)) = answer else {
                    self.hangup = Some(HangupSide::Pbx);
                    return self.reject_caller(488, Disposition::Rejected { code: 488 });
                };
                self.configure(Side::A, &audio, codec);
                answer
            }
            None => {
                let codecs = [(Codec::Pcmu.static_pt(), Codec::Pcmu), (Codec::Pcma.static_pt(), Codec::Pcma)];
                let port = self.media[0].port();
                sdp::offer(&mut self.sessions[0], port, &codecs, Some(TELEPHONE_EVENT_PT), Direction::SendRecv)
            }
        };
        self.phase = Phase::Answered;
        self.answer = Some(self.now);
        self.deadline = None;
        self.disposition = Some(Disposition::Answered);
        self.last_sdp[0] = Some(sdp.clone());
        self.command(self.a, LegCommand::Answer { sdp: Some(sdp) });
    }

    /// A re-INVITE or UPDATE from a room's participant (hold, resume, a session refresh): pbx
    /// answers it itself.
    fn room_offer(&mut self, sdp: Option<Bytes>) {
        if self.phase != Phase::Answered {
            return self.command(self.a, LegCommand::AnswerOffer { code: 488, sdp: None });
        }
        let Some(sdp) = sdp else {
            let last = self.last_sdp[0].clone();
            return self.command(self.a, LegCommand::AnswerOffer { code: 200, sdp: last });
        };
        let parsed = sdp::parse(&sdp).ok().and_then(|d| d.audio().map(|a| (d, a)));
        let Some((offer, audio)) = parsed else {
            return self.command(self.a, LegCommand::AnswerOffer { code: 488, sdp: None });
        };
        let Some(codec) = first_codec(&audio) else {
            return self.command(self.a, LegCommand::AnswerOffer { code: 488, sdp: None });
        };
        let te = audio.telephone_event.is_some();
        let port = self.media[0].port();
        match sdp::answer(&mut self.sessions[0], &offer, port, codec, te, audio.direction.answer()) {
            Ok(answer) => {
                self.configure(Side::A, &audio, codec);
                self.last_sdp[0] = Some(answer.clone());
                self.command(self.a, LegCommand::AnswerOffer { code: 200, sdp: Some(answer) });
            }
            Err(_) => self.command(self.a, LegCommand::AnswerOffer { code: 488, sdp: None }),
        }
    }

    fn offer_from(&mut self, from: Side, method: Method, sdp: Option<Bytes>) {
        if self.room {
            return self.room_offer(sdp);
        }
        let leg = self.leg_of(from);
        let Some(other) = self.winner.map(|_| self.leg_of(from.other())) else {
            return self.command(leg, LegCommand::AnswerOffer { code: 488, sdp: None });
        };
        if self.phase != Phase::Answered {
            return self.command(leg, LegCommand::AnswerOffer { code: 488, sdp: None });
        }
        let Some(sdp) = sdp else {
            // No offer (a session refresh): pbx repeats what it last said to that side.
            let last = self.last_sdp[side_index(from)].clone();
            return self.command(leg, LegCommand::AnswerOffer { code: 200, sdp: last });
        };
        if self.relayed.is_some() {
            return self.command(leg, LegCommand::AnswerOffer { code: 491, sdp: None });
        }
        let Some((offer, audio)) = sdp::parse(&sdp).ok().and_then(|d| d.audio().map(|a| (d, a))) else {
            return self.command(leg, LegCommand::AnswerOffer { code: 488, sdp: None });
        };
        let Ok((codecs, te)) = sdp::plan_offer(Some(&audio)) else {
            return self.command(leg, LegCommand::AnswerOffer { code: 488, sdp: None });
        };
        let to = from.other();
        let sdp = sdp::offer(
            &mut self.sessions[side_index(to)],
            self.media[side_index(to)].port(),
            &codecs,
            te,
            audio.direction,
        );
        self.last_sdp[side_index(to)] = Some(sdp.clone());
        self.relayed = Some(Relayed { from, offer, audio });
        self.command(other, LegCommand::Offer { method, sdp: Some(sdp) });
    }

    fn offer_answered(&mut self, answered_by: Side, code: u16, sdp: Option<Bytes>) {
        if self.refreshing == Some(answered_by) && self.relayed.as_ref().is_none_or(|r| r.from == answered_by) {
            // The answer to pbx's own re-offer (the transferee after a transfer).
            self.refreshing = None;
            let answer = sdp.and_then(|b| sdp::parse(&b).ok()).and_then(|d| d.audio());
            if (200..300).contains(&code)
                && let Some((audio, codec)) = answer.and_then(|a| first_codec(&a).map(|c| (a, c)))
            {
                self.configure(answered_by, &audio, codec);
            }
            return;
        }
        let Some(relayed) = self.relayed.take_if(|r| r.from == answered_by.other()) else { return };
        let from_leg = self.leg_of(relayed.from);
        if !(200..300).contains(&code) {
            return self.command(from_leg, LegCommand::AnswerOffer { code: code.max(300), sdp: None });
        }
        let answer = sdp.and_then(|b| sdp::parse(&b).ok()).and_then(|d| d.audio());
        let Some((audio, codec)) = answer.and_then(|a| first_codec(&a).map(|c| (a, c))) else {
            return self.command(from_leg, LegCommand::AnswerOffer { code: 488, sdp: None });
        };
        let Some(codec_from) = sdp::choose(&relayed.audio, codec) else {
            return self.command(from_leg, LegCommand::AnswerOffer { code: 488, sdp: None });
        };
        let index = side_index(relayed.from);
        let te = relayed.audio.telephone_event.is_some();
        let port = self.media[index].port();
        match sdp::answer(&mut self.sessions[index], &relayed.offer, port, codec_from, te, audio.direction) {
            Ok(reply) => {
                self.configure(answered_by, &audio, codec);
                self.configure(relayed.from, &relayed.audio, codec_from);
                self.last_sdp[index] = Some(reply.clone());
                self.command(from_leg, LegCommand::AnswerOffer { code: 200, sdp: Some(reply) });
            }
            Err(_) => self.command(from_leg, LegCommand::AnswerOffer { code: 488, sdp: None }),
        }
    }

    fn lost(&mut self, leg: LegId) {
        if leg == self.a {
            self.a_live = false;
        } else if let Some(live) = self.forks.get_mut(&leg) {
            *live = false;
        } else {
            return;
        }
        self.outputs.push_back(CallOutput::StopLeg { leg });
        if leg == self.a || Some(leg) == self.winner {
            self.hangup.get_or_insert(HangupSide::Pbx);
            if self.disposition.is_none() || self.phase == Phase::Ringing {
                self.disposition = Some(Disposition::Failed { reason: "call leg failed".into() });
            }
            self.end_all();
        } else if self.phase == Phase::Ringing && !self.forks.values().any(|live| *live) {
            self.hangup = Some(HangupSide::Pbx);
            self.reject_caller(500, Disposition::Failed { reason: "call leg failed".into() });
        }
    }

    /// 488 to the caller: nothing in its offer pbx can use.
    fn refuse_offer(mut self) -> Call {
        self.forks.clear();
        self.hangup = Some(HangupSide::Pbx);
        self.reject_caller(488, Disposition::Rejected { code: 488 });
        self
    }

    fn reject_caller(&mut self, code: u16, disposition: Disposition) {
        self.disposition.get_or_insert(disposition);
        self.failure = Some(code);
        self.end_all();
    }

    fn fail(&mut self, reason: &str) {
        self.disposition = Some(Disposition::Failed { reason: reason.into() });
        self.hangup = Some(HangupSide::Pbx);
        self.end_all();
    }

    /// Once: every live leg hangs up (the caller gets its final response if it has none yet,
    /// a B-leg its CANCEL or BYE); the call is ending.
    fn end_all(&mut self) {
        if matches!(self.phase, Phase::Ending | Phase::Over) {
            return self.check_over();
        }
        if self.phase == Phase::Ringing {
            let reason = self.reject_reason.clone();
            self.command(self.a, LegCommand::Reject { code: self.failure.unwrap_or(480), reason });
        } else {
            self.command(self.a, LegCommand::Hangup);
        }
        self.forget_waking();
        self.transfer = None;
        self.parked = None;
        let live: Vec<LegId> = self.forks.iter().filter(|(_, live)| **live).map(|(id, _)| *id).collect();
        for leg in live {
            self.command(leg, LegCommand::Hangup);
        }
        self.phase = Phase::Ending;
        self.deadline = Some(self.now + ENDING_BOUND);
        // The record is written now, when the call ended, not when the last BYE transaction
        // finishes (up to 32 s later for a phone that vanished).
        self.disposition.get_or_insert(Disposition::Failed { reason: "ended before an outcome".into() });
        let cdr = self.record();
        if !(self.bugs.skip_cdr() && self.id % 8 == 3) {
            self.outputs.push_back(CallOutput::Record(Box::new(cdr)));
        }
        self.check_over();
    }

    fn check_over(&mut self) {
        if self.phase == Phase::Ending && !self.a_live && !self.forks.values().any(|live| *live) {
            self.over();
        }
    }

    fn over(&mut self) {
        if self.phase == Phase::Over {
            return;
        }
        if self.a_live {
            self.outputs.push_back(CallOutput::StopLeg { leg: self.a });
            self.a_live = false;
        }
        let live: Vec<LegId> = self.forks.iter().filter(|(_, live)| **live).map(|(id, _)| *id).collect();
        for leg in live {
            self.forks.insert(leg, false);
            self.outputs.push_back(CallOutput::StopLeg { leg });
        }
        self.phase = Phase::Over;
        self.deadline = None;
        self.outputs.push_back(CallOutput::Over);
    }

    /// The transferor of a transfer in progress, or the consultation leg reserved to be
    /// replaced: its hanging up does not end the call.
    fn is_transferor(&self, leg: LegId) -> bool {
        self.transfer.as_ref().is_some_and(|t| t.transferor == leg && !t.recall)
            || self.replacing.is_some_and(|(replaced, _)| replaced == leg)
            || self.parked.as_ref().is_some_and(|p| p.parker_leg == leg)
    }

    /// Whether a phone dialling `orbit` may take this call now: it is parked there.
    pub fn can_retrieve(&self, orbit: &str) -> bool {
        self.phase == Phase::Answered && self.parked.as_ref().is_some_and(|p| p.orbit == orbit)
    }

    /// The calls actor gave (or refused) the orbit: the transferor is told and hung up on,
    /// the call waits there, its empty side's relay sends nowhere.
    fn parked_in(&mut self, attempt: u64, ok: bool) {
        let Some(t) = self.transfer.take_if(|t| t.attempt == attempt) else { return };
        if !ok {
            let reason = format!("Forbidden (orbit {} is in use)", t.number);
            return self.command(t.transferor, LegCommand::AnswerRefer { code: 403, reason: Some(reason) });
        }
        if self.phase != Phase::Answered {
            return;
        }
        self.command(t.transferor, LegCommand::AnswerRefer { code: 202, reason: None });
        self.command(t.transferor, LegCommand::NotifyRefer { code: 200, reason: "OK".into() });
        self.command(t.transferor, LegCommand::Hangup);
        let (side, i) = (t.side, side_index(t.side));
        let next = self.end_segment(t.by.clone(), t.number.clone());
        self.parties[i] = t.number.clone();
        self.next_record(next, self.id, self.now);
        if let Some(peer) = self.peers[i].take() {
            // Nobody on that side: the relay sends the transferee's audio nowhere.
            let peer = PeerMedia { rtp: None, rtcp: None, telephone_event: None, sends: false, ..peer };
            self.outputs.push_back(CallOutput::ConfigureMedia { side, peer });
        }
        let deadline = self.now + self.park_timeout;
        self.parked = Some(Parked { orbit: t.number, side, parker_leg: t.transferor, parker: t.by, deadline });
    }

    /// A phone dialled the orbit: it takes the parked side.
    fn retrieve(&mut self, start: CallStart) {
        let Some(p) = self.parked.take() else { return };
        self.outputs.push_back(CallOutput::Unparked);
        let i = side_index(p.side);
        let retriever = start.route.caller.clone();
        let next = self.end_segment(p.orbit.clone(), retriever.clone());
        self.parties[i] = retriever;
        self.next_record(next, self.id, self.now);
        self.join(start, p.parker_leg);
    }

    /// Nobody took the parked call in time: it rings the parker back (a recall).
    fn park_timed_out(&mut self) {
        let Some(p) = self.parked.take() else { return };
        self.outputs.push_back(CallOutput::Unparked);
        self.ring_back(p.parker_leg, p.side, p.parker);
    }

    /// Another call's attended transfer asks to replace `leg` (the transferor's consultation
    /// leg in this call) with its transferee: allowed when this call is answered between two
    /// phones, `leg` is one of them and is `transferor`'s, and no transfer runs. Reserves the
    /// call for [`REPLACE_WAIT`]; the id of the record the joined call will go on under.
    pub fn reserve_replacement(&mut self, now: Timestamp, leg: LegId, transferor: &str) -> Option<u64> {
        self.now = self.now.max(now);
        let side = if leg == self.a { Side::A } else { Side::B };
        let party = self.answered_legs().is_some_and(|(a, b)| leg == a || leg == b);
        let free = self.transfer.is_none() && self.replacing.is_none() && !self.room;
        if !(party && free && self.parties[side_index(side)] == transferor && self.transfers < TRANSFERS_MAX) {
            return None;
        }
        self.replacing = Some((leg, self.now + REPLACE_WAIT));
        Some(self.first_id.wrapping_add((self.transfers + 1) << 57))
    }

    /// The shell found (or not) the call to join for an attended transfer.
    fn replaced(&mut self, attempt: u64, result: Result<u64, (u16, String)>) {
        let Some(t) = self.transfer.as_ref().filter(|t| t.attempt == attempt) else { return };
        let transferor = t.transferor;
        let next = match result {
            Ok(next) => next,
            Err((code, reason)) => {
                self.transfer = None;
                return self.command(transferor, LegCommand::AnswerRefer { code, reason: Some(reason) });
            }
        };
        let Some(t) = self.transfer.take() else { return };
        if self.phase != Phase::Answered {
            return;
        }
        self.command(transferor, LegCommand::AnswerRefer { code: 202, reason: None });
        let other = t.side.other();
        let leg = self.leg_of(other);
        let i = side_index(other);
        let handover = TakeOver {
            leg,
            session: self.sessions[i].clone(),
            codec: self.codecs[i],
            party: self.parties[i].clone(),
            transferor: t.by.clone(),
            follows: self.id,
        };
        // The transferee's leg leaves this call whole: no BYE, no stop, no LegDown.
        if leg == self.a {
            self.a_live = false;
        } else {
            self.forks.insert(leg, false);
        }
        self.outputs.push_back(CallOutput::HandOver { leg, handover: Box::new(handover) });
        self.command(transferor, LegCommand::NotifyRefer { code: 200, reason: "OK".into() });
        self.transferred = Some(crate::cdr::Transferred { by: t.by, to: t.number, next });
        self.hangup = None;
        self.end_all();
    }

    /// The transferee of another call's attended transfer takes the reserved leg's place.
    fn take_over(&mut self, t: TakeOver) {
        let reserved = self.replacing.take().map(|(leg, _)| leg).filter(|_| self.phase == Phase::Answered);
        let Some(replaced) = reserved else {
            // Too late (the call ended, the reservation ran out): the transferee is hung up on.
            self.forks.insert(t.leg, true);
            return self.command(t.leg, LegCommand::Hangup);
        };
        let side = if replaced == self.a { Side::A } else { Side::B };
        let i = side_index(side);
        let next = self.end_segment(t.transferor.clone(), t.party.clone());
        self.command(replaced, LegCommand::Hangup);
        self.seat(side, t.leg);
        self.sessions[i] = t.session;
        self.plain_side(side);
        self.codecs[i] = t.codec.or(self.codecs[i]);
        self.parties[i] = t.party;
        self.next_record(next, t.follows, self.now);
        // The transferee's media now goes to this call's relay.
        self.reoffer(side);
    }

    /// A party's REFER (module doc, Transfer).
    fn refer(&mut self, leg: LegId, target: super::transfer::ReferTo) {
        let refuse = |call: &mut Call, code: u16, reason: &str| {
            call.command(leg, LegCommand::AnswerRefer { code, reason: Some(reason.to_owned()) })
        };
        if self.phase != Phase::Answered || self.room {
            return refuse(self, 403, "Forbidden (only an answered call between two phones is transferred)");
        }
        if self.transfer.is_some() {
            return refuse(self, 491, "Request Pending (a transfer is in progress)");
        }
        if self.replacing.is_some() {
            return refuse(self, 491, "Request Pending (a transfer is in progress)");
        }
        if self.transfers >= TRANSFERS_MAX {
            return refuse(self, 403, "Forbidden (too many transfers of this call)");
        }
        let side = if leg == self.a { Side::A } else { Side::B };
        self.attempts += 1;
        let session = self.transfer_session(side);
        self.transfer = Some(Transfer {
            attempt: self.attempts,
            transferor: leg,
            side,
            by: self.parties[side_index(side)].clone(),
            number: target.number.clone(),
            secure: target.secure,
            forks: Vec::new(),
            deadline: None,
            failure: None,
            ringing_told: false,
            transferor_gone: false,
            recall: false,
            session,
            offer: None,
            started: self.now,
        });
        if let Some(replaces) = target.replaces {
            // Attended: the target is already in a call with the transferor.
            let transferor = self.parties[side_index(side)].clone();
            return self.outputs.push_back(CallOutput::Replace { attempt: self.attempts, replaces, transferor });
        }
        let transferee = self.parties[side_index(side.other())].clone();
        let (attempt, number, secure) = (self.attempts, target.number, target.secure);
        self.outputs.push_back(CallOutput::Transfer { attempt, number, transferee, secure });
    }

    /// pbx's SDP session toward a transfer's target on `side` (a new one: a new phone).
    fn transfer_session(&self, side: Side) -> LocalSession {
        LocalSession::new(self.seed.wrapping_add(1 + 2 * self.attempts), self.media[side_index(side)].ip())
    }

    /// The shell looked the target up: refuse the REFER, or accept it and ring the target.
    fn transfer_routed(&mut self, attempt: u64, result: TransferLookup) {
        let current = self.transfer.as_ref().is_some_and(|t| t.attempt == attempt && t.forks.is_empty());
        if !current {
            // Stale (the call or the transfer ended meanwhile): its legs were never started.
            if let Ok((_, legs)) = result {
                for leg in legs {
                    self.outputs.push_back(CallOutput::ForkGone { leg });
                }
            }
            return;
        }
        let Some(t) = self.transfer.as_ref() else { return };
        let (transferor, recall, secure) = (t.transferor, t.recall, t.secure);
        let (route, legs) = match result {
            Ok(found) => found,
            Err((code, reason)) if recall => return self.transfer_failed(code, &reason),
            Err((code, reason)) => {
                self.transfer = None;
                return self.command(transferor, LegCommand::AnswerRefer { code, reason: Some(reason) });
            }
        };
        if let Some(orbit) = route.park.clone().filter(|_| !recall) {
            // Call park: the orbit is claimed first; the REFER is answered then.
            for leg in legs {
                self.outputs.push_back(CallOutput::ForkGone { leg });
            }
            return self.outputs.push_back(CallOutput::Park { attempt, orbit });
        }
        if secure && !route.contacts.iter().any(|b| b.transport.is_secure()) {
            // A `sips:` target is rung only over TLS: none there is refused, not downgraded.
            self.transfer = None;
            for leg in legs {
                self.outputs.push_back(CallOutput::ForkGone { leg });
            }
            let reason = Some("Forbidden (sips: target has no phone on TLS)".to_owned());
            return self.command(transferor, LegCommand::AnswerRefer { code: 403, reason });
        }
        if !recall {
            self.command(transferor, LegCommand::AnswerRefer { code: 202, reason: None });
        }
        let Some(template) = self.template.clone() else { return self.transfer_failed(500, "Server Internal Error") };
        let Some(t) = self.transfer.as_mut() else { return };
        let (side, other) = (side_index(t.side), side_index(t.side.other()));
        let codec = self.codecs[other].unwrap_or(Codec::Pcmu);
        let codecs = [(codec.static_pt(), codec), (codec.other().static_pt(), codec.other())];
        let port = self.media[side].port();
        let offer = sdp::offer(&mut t.session, port, &codecs, Some(TELEPHONE_EVENT_PT), Direction::SendRecv);
        t.offer = Some(offer.clone());
        t.deadline = Some(self.now + self.no_answer);
        let host = template.local_sip.address;
        let from = message::parse_sip_uri(&format!("sip:{}@{host}", self.parties[other]));
        let to = message::parse_sip_uri(&format!("sip:{}@{host}", t.number));
        let (Some(from), Some(to)) = (from, to) else { return self.transfer_failed(500, "Server Internal Error") };
        let display = (!recall).then_some(route.caller_display_name.as_str());
        let (from, to) = (name_addr(display, from), name_addr(None, to));
        let mut forks = Vec::new();
        for (leg_id, binding) in legs.into_iter().zip(route.contacts.iter()) {
            let target = message::parse_sip_uri(&binding.contact);
            // A `sips:` target is rung only at its phones on TLS.
            let Some(target) = target.filter(|_| !secure || binding.transport.is_secure()) else {
                self.outputs.push_back(CallOutput::ForkGone { leg: leg_id });
                continue;
            };
            let destination = super::destination::destination(&target, binding.source, binding.transport, binding.nat);
            let (timers, local_sip) = (template.timers, template.local_sip);
            let (f, t) = (from.clone(), to.clone());
            let leg = Leg::uac(leg_id, self.now, timers, local_sip, f, t, target, destination, binding.transport);
            self.forks.insert(leg_id, true);
            self.fork_aor.insert(leg_id, binding.aor.clone());
            forks.push(leg_id);
            self.outputs.push_back(CallOutput::StartLeg(Box::new(leg)));
            let command = LegCommand::Invite { sdp: Some(offer.clone()) };
            self.outputs.push_back(CallOutput::ToLeg { leg: leg_id, command });
        }
        if forks.is_empty() {
            return self.transfer_failed(480, "Temporarily Unavailable");
        }
        if let Some(t) = self.transfer.as_mut() {
            t.forks = forks;
        }
    }

    /// A target's phone rings: the transferor hears of it once.
    fn transfer_ringing(&mut self) {
        let Some(t) = self.transfer.as_mut().filter(|t| !t.ringing_told) else { return };
        t.ringing_told = true;
        let transferor = t.transferor;
        if !t.recall {
            self.command(transferor, LegCommand::NotifyRefer { code: 180, reason: "Ringing".into() });
        }
    }

    fn transfer_fork_failed(&mut self, leg: LegId, code: u16) {
        self.forks.insert(leg, false);
        let Some(t) = self.transfer.as_mut() else { return };
        t.failure = Some(t.failure.map_or(code, |best| more_telling(best, code)));
        let failure = t.failure.unwrap_or(480);
        if t.forks.iter().all(|f| !self.forks.get(f).copied().unwrap_or(false)) {
            self.transfer_failed(failure, reason_of(failure));
        }
    }

    /// The target failed (busy, no answer, refused): the transferor gets the call back — told
    /// by NOTIFY while it is still there, rung back once it left; a failed ring-back ends the call.
    fn transfer_failed(&mut self, code: u16, reason: &str) {
        let Some(t) = self.transfer.take() else { return };
        for leg in &t.forks {
            if self.forks.get(leg).copied().unwrap_or(false) {
                self.command(*leg, LegCommand::Hangup);
            }
        }
        if t.recall {
            self.hangup = Some(HangupSide::Pbx);
            return self.end_all();
        }
        if !t.transferor_gone {
            return self.command(t.transferor, LegCommand::NotifyRefer { code, reason: reason.to_owned() });
        }
        self.ring_back(t.transferor, t.side, t.by);
    }

    /// Rings `by` (the extension whose leg `transferor` left `side`) back, as a transfer of
    /// its own: a recall, after a failed blind transfer or a park nobody took.
    fn ring_back(&mut self, transferor: LegId, side: Side, by: String) {
        self.attempts += 1;
        let transferee = self.parties[side_index(side.other())].clone();
        let session = self.transfer_session(side);
        let (attempt, number) = (self.attempts, by.clone());
        self.transfer = Some(Transfer {
            attempt,
            transferor,
            side,
            by,
            number: number.clone(),
            secure: false,
            forks: Vec::new(),
            deadline: None,
            failure: None,
            ringing_told: false,
            transferor_gone: true,
            recall: true,
            session,
            offer: None,
            started: self.now,
        });
        self.outputs.push_back(CallOutput::Transfer { attempt, number, transferee, secure: false });
    }

    /// The transferor hung up before the target answered: the transferee waits for the target.
    fn transferor_left(&mut self, leg: LegId) {
        if !self.gone.contains(&leg) {
            self.gone.push(leg);
        }
        if let Some(t) = self.transfer.as_mut() {
            t.transferor_gone = true;
        }
    }

    /// The target answered: it takes the transferor's place (module doc, Transfer).
    fn transfer_answered(&mut self, leg: LegId, sdp: Option<Bytes>) {
        let answer = sdp.and_then(|b| sdp::parse(&b).ok()).and_then(|d| d.audio());
        let Some((audio, codec)) = answer.and_then(|a| first_codec(&a).map(|c| (a, c))) else {
            self.command(leg, LegCommand::Hangup);
            return self.transfer_fork_failed(leg, 488);
        };
        let Some(t) = self.transfer.take() else { return self.command(leg, LegCommand::Hangup) };
        for other in &t.forks {
            if *other != leg && self.forks.get(other).copied().unwrap_or(false) {
                self.command(*other, LegCommand::Hangup);
            }
        }
        let (side, i) = (t.side, side_index(t.side));
        // The record so far, naming the transfer and the record that goes on.
        let next = self.end_segment(t.by.clone(), t.number.clone());
        // The target's media on the transferor's side: plain RTP, pbx's new session.
        self.sessions[i] = t.session;
        self.plain_side(side);
        self.configure(side, &audio, codec);
        self.last_sdp[i] = t.offer;
        // The transferor is told and hung up on; the target takes its place.
        if !t.recall && !t.transferor_gone {
            self.command(t.transferor, LegCommand::NotifyRefer { code: 200, reason: "OK".into() });
        }
        self.command(t.transferor, LegCommand::Hangup);
        self.seat(side, leg);
        self.parties[i] = self.fork_aor.get(&leg).cloned().unwrap_or_else(|| t.number.clone());
        // The call goes on under its next record: the parties by side, the transfer's target
        // by the number dialled.
        self.next_record(next, self.id, t.started);
        match side {
            Side::A => self.caller = t.number,
            Side::B => self.callee = t.number,
        }
        // The transferee is taken off hold (the transferor may have put it on hold).
        self.reoffer(side.other());
    }

    /// The record so far ends with a transfer `by` … `to` … and comes out now; the id of
    /// the record the call goes on under.
    fn end_segment(&mut self, by: String, to: String) -> u64 {
        self.transfers += 1;
        let next = self.first_id.wrapping_add(self.transfers << 57);
        let mut done = self.record();
        done.hangup = None;
        done.transfer = Some(crate::cdr::Transferred { by, to, next });
        self.outputs.push_back(CallOutput::Segment(Box::new(done)));
        next
    }

    /// A side now talks to another phone over plain RTP: pbx's SRTP toward it is dropped.
    fn plain_side(&mut self, side: Side) {
        let i = side_index(side);
        if self.srtp[i].sent.take().is_some() {
            self.outputs.push_back(CallOutput::MediaKeys { side, keys: None });
        }
        self.srtp[i].local = None;
        self.srtp[i].mandatory = false;
        self.sessions[i].set_crypto(None);
    }

    /// After a transfer the call goes on under record `id`, which follows `follows`, started
    /// at `start` and answered now; caller and callee are the parties by side.
    fn next_record(&mut self, id: u64, follows: u64, start: Timestamp) {
        self.follows = Some(follows);
        self.id = id;
        self.start = start;
        self.answer = Some(self.now);
        self.hangup = None;
        self.disposition = Some(Disposition::Answered);
        self.caller = self.parties[0].clone();
        self.callee = self.parties[1].clone();
    }

    /// pbx offers a side its media afresh (sendrecv, its codec first): the transferee after a
    /// transfer. The answer comes back to `offer_answered` (`refreshing`).
    fn reoffer(&mut self, side: Side) {
        let i = side_index(side);
        let Some(codec) = self.codecs[i] else { return };
        let codecs = [(codec.static_pt(), codec), (codec.other().static_pt(), codec.other())];
        let port = self.media[i].port();
        let sdp = sdp::offer(&mut self.sessions[i], port, &codecs, Some(TELEPHONE_EVENT_PT), Direction::SendRecv);
        self.last_sdp[i] = Some(sdp.clone());
        self.refreshing = Some(side);
        let leg = self.leg_of(side);
        self.command(leg, LegCommand::Offer { method: Method::INVITE, sdp: Some(sdp) });
    }

    fn leg_of(&self, side: Side) -> LegId {
        match side {
            Side::A => self.a,
            Side::B => self.winner.unwrap_or(self.a),
        }
    }

    fn command(&mut self, leg: LegId, command: LegCommand) {
        let live = if leg == self.a { self.a_live } else { self.forks.get(&leg).copied().unwrap_or(false) };
        if live && !(matches!(command, LegCommand::Hangup) && self.gone.contains(&leg)) {
            self.outputs.push_back(CallOutput::ToLeg { leg, command });
        }
    }
}

/// RFC 3261 §16.7 in spirit: a 6xx ends the search, busy says more than other failures, and
/// otherwise the lowest code (the most specific class).
fn more_telling(a: u16, b: u16) -> u16 {
    let rank = |c: u16| match c {
        600..=699 => 0,
        486 => 1,
        487 => 9,
        _ => 2,
    };
    match rank(a).cmp(&rank(b)) {
        std::cmp::Ordering::Less => a,
        std::cmp::Ordering::Greater => b,
        std::cmp::Ordering::Equal => a.min(b),
    }
}

/// A reason phrase for a transfer's failure NOTIFY.
fn reason_of(code: u16) -> &'static str {
    match code {
        486 | 600 => "Busy Here",
        408 | 480 => "Temporarily Unavailable",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        603 => "Decline",
        404 => "Not Found",
        _ => "Failed",
    }
}

/// The codec an answer chose: the first G.711 one it lists.
fn first_codec(audio: &Audio) -> Option<Codec> {
    audio.codecs.first().map(|(_, c)| *c)
}

fn g711(codec: Codec) -> G711 {
    match codec {
        Codec::Pcmu => G711::Mu,
        Codec::Pcma => G711::A,
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

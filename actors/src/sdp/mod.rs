//! SDP (RFC 8866, which replaced RFC 4566): parsing and printing, and the offer/answer
//! helpers (RFC 3264) of a B2BUA that anchors media and speaks G.711 (PCMU, PCMA) and
//! telephone-event (RFC 4733).
//!
//! [`parse`] keeps every line, so printing what it read loses nothing; only c= is moved to
//! where RFC 8866 §5 puts it among its neighbours. [`SessionDescription::audio`] reads what
//! pbx needs from the far end: where the first audio stream goes, its G.711 and
//! telephone-event payload types, direction and ptime. [`offer`] and [`answer`] write pbx's
//! own descriptions, with a [`LocalSession`] keeping the o= line honest (RFC 3264 §5, §8);
//! [`plan_offer`] and [`choose`] decide what the two legs of a call are offered and answered.
//!
//! Addresses pbx would send media to are checked where they are read: c= must be an IP
//! literal (no FQDN: pbx must send media there without DNS), and a description is refused
//! whole ([`SdpError::Line`]) when a c= line or an `a=rtcp` address is one pbx must never send
//! to — multicast, the IPv4 limited broadcast 255.255.255.255, 0.x.x.x other than 0.0.0.0
//! (RFC 1122 §3.2.1.3: "this network", a source only), or `::` — so that an authenticated
//! phone cannot turn pbx's media ports into a reflector toward a group or a whole segment.
//! The call layer answers such an offer 488. `c=IN IP4 0.0.0.0` is kept: it is the RFC 2543
//! hold that older phones still send (RFC 3264 §8.4 names it), read as "no address" — the
//! relay never sends there. For IPv6 there is no such convention, so `::` is refused. A
//! subnet's directed broadcast (192.0.2.255 in a /24) cannot be told from a host address
//! without the netmask of a network pbx does not know, so it passes; the relay sends such an
//! address only what the other phone sends, never more (see `media::relay`).
//!
//! SRTP keyed by SDES (RFC 4568, [`crypto`]): an audio line of RTP/SAVP or RTP/SAVPF is read
//! like RTP/AVP, with [`Audio::secure`] set and its `a=crypto` values in [`Audio::crypto`]; a
//! [`LocalSession`] given an `a=crypto` line ([`LocalSession::set_crypto`]) puts it on the audio
//! line of every description it writes, and offers RTP/SAVP when told so. Which key to use,
//! and whether to use one at all, is the call's decision.
//!
//! What it deliberately does not do: ICE, DTLS-SRTP, RTCP multiplexing, bandwidth, video or
//! any codec but G.711. An answer accepts one audio stream and rejects every other m= line
//! with port 0 (RFC 3264 §6).

pub mod crypto;

use bytes::Bytes;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// A larger description is refused; a G.711 call needs well under 1 KiB.
pub const SDP_BYTES_MAX: usize = 16_384;
/// More m= lines than this is abuse, not a phone.
pub const MEDIA_SECTIONS_MAX: usize = 64;
/// The telephone-event PT pbx picks when nobody chose one (the customary dynamic 101).
pub const TELEPHONE_EVENT_PT_DEFAULT: u8 = 101;
/// pbx packetises G.711 in 20 ms frames, the RFC 3551 default.
const PTIME_MS: u32 = 20;

/// The G.711 codecs pbx speaks and transcodes between; each value is its static PT (RFC 3551 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum Codec {
    Pcmu = 0,
    Pcma = 8,
}

impl Codec {
    const ALL: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

    pub fn static_pt(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        if self == Codec::Pcmu { "PCMU" } else { "PCMA" }
    }

    pub fn other(self) -> Codec {
        if self == Codec::Pcmu { Codec::Pcma } else { Codec::Pcmu }
    }

    /// The codec an rtpmap encoding names: `PCMU/8000`, optionally `/1` channel, any case.
    fn from_encoding(encoding: &str) -> Option<Codec> {
        let encoding = encoding.strip_suffix("/1").unwrap_or(encoding);
        let (name, rate) = encoding.split_once('/')?;
        Codec::ALL.into_iter().find(|c| rate == "8000" && name.eq_ignore_ascii_case(c.name()))
    }
}

/// The direction attribute (RFC 3264 §5.1), from the point of view of the description's author.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    const ALL: [Direction; 4] = [Direction::SendRecv, Direction::SendOnly, Direction::RecvOnly, Direction::Inactive];

    /// The direction an answer takes to this offered one (RFC 3264 §6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// Why a body is not an SDP pbx can read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP body of {0} bytes is larger than {SDP_BYTES_MAX}")]
    TooLarge(usize),
    #[error("SDP body is not UTF-8")]
    NotUtf8,
    #[error("no {0}= line")]
    Missing(char),
    #[error("more than {MEDIA_SECTIONS_MAX} media sections")]
    TooManyMedia,
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: &'static str },
}

/// A parsed description. Every line is kept; the typed parts are the ones pbx reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDescription {
    /// The o= value, checked for its six fields and kept as text: pbx only compares it.
    origin: String,
    name: String,
    connection: Option<IpAddr>,
    /// Every other session-level line (i, u, e, p, b, t, r, z, k, a), verbatim and in order.
    lines: Vec<String>,
    media: Vec<Media>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Media {
    kind: String,
    port: u16,
    port_count: Option<u16>,
    proto: String,
    formats: Vec<String>,
    connection: Option<IpAddr>,
    /// Every other line of the section (i, b, k, a), verbatim and in order.
    lines: Vec<String>,
}

/// The first audio stream of a description, as pbx uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audio {
    /// Media-level c= (else session c=) and the m= port; None for c=0.0.0.0 (RFC 2543 hold)
    /// or no c= at all.
    pub rtp: Option<SocketAddr>,
    /// a=rtcp (RFC 3605) if present and readable, else the RTP port + 1.
    pub rtcp: Option<SocketAddr>,
    /// G.711 formats in the author's order: static 0/8 and dynamic PTs mapped to them.
    pub codecs: Vec<(u8, Codec)>,
    pub telephone_event: Option<u8>,
    /// Media-level attribute, else session-level, else sendrecv; a hold by c=0.0.0.0 shows in
    /// `rtp`, not here.
    pub direction: Direction,
    pub ptime: Option<u32>,
    /// The line's profile is RTP/SAVP or RTP/SAVPF: SRTP is mandatory (RFC 4568 §3.1.4).
    pub secure: bool,
    /// The line's `a=crypto` values (after `crypto:`), in the author's order.
    pub crypto: Vec<String>,
}

/// Reads a description, lenient about LF line ends and blank lines, strict about the lines
/// pbx relies on (v=, o=, s=, c=, m=).
pub fn parse(body: &[u8]) -> Result<SessionDescription, SdpError> {
    if body.len() > SDP_BYTES_MAX {
        return Err(SdpError::TooLarge(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
    let (mut seen_version, mut origin, mut name, mut connection) = (false, None, None, None);
    let (mut lines, mut media) = (Vec::new(), Vec::<Media>::new());
    for (index, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.is_empty() {
            continue;
        }
        let fail = |reason| SdpError::Line { line: index + 1, reason };
        let (kind, value) = match raw.as_bytes() {
            [kind @ b'a'..=b'z', b'=', ..] => (*kind as char, &raw[2..]),
            _ => return Err(fail("not a <letter>=<value> line")),
        };
        match kind {
            'v' if seen_version => return Err(fail("second v= line")),
            'v' if value != "0" => return Err(fail("v= line: version is not 0")),
            'v' => seen_version = true,
            _ if !seen_version => return Err(fail("SDP does not start with v=")),
            'm' if media.len() == MEDIA_SECTIONS_MAX => return Err(SdpError::TooManyMedia),
            'm' => media.push(parse_media(value).map_err(fail)?),
            _ => match (kind, media.last_mut()) {
                ('c', Some(m)) if m.connection.is_some() => return Err(fail("second c= line")),
                ('c', Some(m)) => m.connection = Some(parse_connection(value).map_err(fail)?),
                ('c', None) if connection.is_some() => return Err(fail("second c= line")),
                ('c', None) => connection = Some(parse_connection(value).map_err(fail)?),
                ('o', None) if origin.is_some() => return Err(fail("second o= line")),
                ('o', None) if value.split_whitespace().count() != 6 => return Err(fail(ORIGIN_FIELDS)),
                ('o', None) => origin = Some(value.to_owned()),
                ('s', None) if name.is_some() => return Err(fail("second s= line")),
                ('s', None) => name = Some(value.to_owned()),
                ('a', Some(m)) => {
                    check_rtcp_attribute(value).map_err(fail)?;
                    m.lines.push(raw.to_owned());
                }
                (_, Some(m)) => m.lines.push(raw.to_owned()),
                (_, None) => lines.push(raw.to_owned()),
            },
        }
    }
    if !seen_version {
        return Err(SdpError::Missing('v'));
    }
    let origin = origin.ok_or(SdpError::Missing('o'))?;
    let name = name.ok_or(SdpError::Missing('s'))?;
    Ok(SessionDescription { origin, name, connection, lines, media })
}

const ORIGIN_FIELDS: &str = "o= line: expected <username> <sess-id> <sess-version> <nettype> <addrtype> <address>";

fn parse_connection(value: &str) -> Result<IpAddr, &'static str> {
    let fields: Vec<&str> = value.split_whitespace().collect();
    let ["IN", address_type, address] = fields[..] else { return Err("c= line: expected IN <IP4|IP6> <address>") };
    let ip: IpAddr = address.parse().map_err(|_| "c= line: address is not an IP literal")?;
    match (address_type, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => match refused_address(ip) {
            Some(reason) => Err(reason),
            None => Ok(ip),
        },
        _ => Err("c= line: address does not match its IP4/IP6 type"),
    }
}

/// Why pbx must never send media to `ip` (see the module doc), or `None` when it may; 0.0.0.0
/// (the hold address) may be named, and means no address at all.
pub fn refused_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => None,
        IpAddr::V4(v4) if v4.is_broadcast() => Some("media address is the broadcast address 255.255.255.255"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("media address is multicast"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("media address is in 0.0.0.0/8, which is never a destination"),
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) if v6.is_unspecified() => {
            Some("media address :: is unspecified (0.0.0.0 is the only hold address)")
        }
        IpAddr::V6(v6) if v6.is_multicast() => Some("media address is multicast"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if v4.is_unspecified() => Some("media address ::ffff:0.0.0.0 is unspecified"),
            Some(v4) => refused_address(IpAddr::V4(v4)),
            None => None,
        },
    }
}

/// An `a=rtcp:<port> IN <type> <address>` (RFC 3605) naming an address pbx must never send to.
fn check_rtcp_attribute(value: &str) -> Result<(), &'static str> {
    let address = value.strip_prefix("rtcp:").and_then(|v| v.split_whitespace().nth(3));
    match address.and_then(|a| a.parse::<IpAddr>().ok()).and_then(refused_address) {
        Some(_) => Err("a=rtcp address is one pbx never sends media to (multicast, broadcast, unspecified)"),
        None => Ok(()),
    }
}

fn parse_media(value: &str) -> Result<Media, &'static str> {
    let mut fields = value.split_whitespace();
    let (Some(kind), Some(port), Some(proto)) = (fields.next(), fields.next(), fields.next()) else {
        return Err("m= line: expected <media> <port> <proto> <formats>");
    };
    let (port, port_count) = match port.split_once('/') {
        Some((port, count)) => (port, Some(count.parse().map_err(|_| "m= line: port count is not a number")?)),
        None => (port, None),
    };
    Ok(Media {
        kind: kind.to_owned(),
        port: port.parse().map_err(|_| "m= line: port is not a number")?,
        port_count,
        proto: proto.to_owned(),
        formats: fields.map(str::to_owned).collect(),
        connection: None,
        lines: Vec::new(),
    })
}

/// `name:value` attributes of a section; a flag such as `a=sendonly` has an empty value.
fn attributes(lines: &[String]) -> impl Iterator<Item = (&str, &str)> {
    lines.iter().filter_map(|l| l.strip_prefix("a=")).map(|a| a.split_once(':').unwrap_or((a, "")))
}

fn find<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    attributes(lines).find_map(|(n, v)| (n == name).then_some(v))
}

fn direction(lines: &[String]) -> Option<Direction> {
    attributes(lines).find_map(|(n, v)| Direction::ALL.into_iter().find(|d| v.is_empty() && d.as_str() == n))
}

/// The encoding an a=rtpmap gives this PT, e.g. `PCMU/8000`.
fn encoding(lines: &[String], pt: u8) -> Option<&str> {
    attributes(lines).filter(|(n, _)| *n == "rtpmap").find_map(|(_, v)| {
        let (p, encoding) = v.split_once(' ')?;
        (p.parse() == Ok(pt)).then_some(encoding.trim())
    })
}

fn connection_text(ip: IpAddr) -> String {
    format!("IN {} {ip}", if ip.is_ipv4() { "IP4" } else { "IP6" })
}

fn put(out: &mut String, line: impl std::fmt::Display) {
    write!(out, "{line}\r\n").expect("writing to a String cannot fail");
}

/// Prints `lines` with c= inserted after the ones RFC 8866 §5 puts before it (`before_c`).
fn put_lines(out: &mut String, lines: &[String], connection: Option<IpAddr>, before_c: &str) {
    let after_c = |l: &String| !l.get(..1).is_some_and(|kind| before_c.contains(kind));
    let (head, tail) = lines.split_at(lines.iter().position(after_c).unwrap_or(lines.len()));
    head.iter().for_each(|l| put(out, l));
    if let Some(ip) = connection {
        put(out, format_args!("c={}", connection_text(ip)));
    }
    tail.iter().for_each(|l| put(out, l));
}

impl SessionDescription {
    /// The description as sent on the wire, CRLF line ends.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = String::with_capacity(512);
        put(&mut out, "v=0");
        put(&mut out, format_args!("o={}", self.origin));
        put(&mut out, format_args!("s={}", self.name));
        put_lines(&mut out, &self.lines, self.connection, "iuep");
        for m in &self.media {
            let count = m.port_count.map(|n| format!("/{n}")).unwrap_or_default();
            let formats: String = m.formats.iter().map(|f| format!(" {f}")).collect();
            put(&mut out, format_args!("m={} {}{count} {}{formats}", m.kind, m.port, m.proto));
            put_lines(&mut out, &m.lines, m.connection, "i");
        }
        Bytes::from(out)
    }

    /// The o= value: a description whose o= equals the previous one's is unchanged (RFC 3264 §8).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn media_count(&self) -> usize {
        self.media.len()
    }

    /// The first m=audio line pbx can use: port not 0 and RTP/AVP, RTP/AVPF or their SRTP
    /// profiles RTP/SAVP, RTP/SAVPF.
    fn audio_index(&self) -> Option<usize> {
        let usable = |m: &Media| {
            ["RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"].iter().any(|p| m.proto.eq_ignore_ascii_case(p))
        };
        self.media.iter().position(|m| m.kind == "audio" && m.port != 0 && usable(m))
    }

    pub fn audio(&self) -> Option<Audio> {
        let m = &self.media[self.audio_index()?];
        let ip = m.connection.or(self.connection).filter(|ip| !ip.is_unspecified());
        let rtp = ip.map(|ip| SocketAddr::new(ip, m.port));
        // a=rtcp:<port> [IN IP4 <address>] (RFC 3605 §2.1); what cannot be read falls back.
        let rtcp_field = |n: usize| find(&m.lines, "rtcp").and_then(|v| v.split_whitespace().nth(n));
        let rtcp_ip = rtcp_field(3).and_then(|a| a.parse().ok()).or(ip).filter(|ip: &IpAddr| !ip.is_unspecified());
        let rtcp_port = rtcp_field(0).and_then(|p| p.parse().ok()).or(m.port.checked_add(1));
        let rtcp = rtcp_ip.zip(rtcp_port).map(SocketAddr::from);
        let pts: Vec<u8> = m.formats.iter().filter_map(|f| f.parse().ok().filter(|pt| *pt < 128)).collect();
        let codec = |pt: u8| match encoding(&m.lines, pt) {
            Some(encoding) => Codec::from_encoding(encoding),
            None => Codec::ALL.into_iter().find(|c| c.static_pt() == pt),
        };
        let is_event =
            |pt: &u8| encoding(&m.lines, *pt).is_some_and(|e| e.eq_ignore_ascii_case("telephone-event/8000"));
        Some(Audio {
            rtp,
            rtcp,
            codecs: pts.iter().filter_map(|pt| Some((*pt, codec(*pt)?))).collect(),
            telephone_event: pts.iter().copied().find(is_event),
            direction: direction(&m.lines).or_else(|| direction(&self.lines)).unwrap_or_default(),
            ptime: find(&m.lines, "ptime").or_else(|| find(&self.lines, "ptime")).and_then(|v| v.trim().parse().ok()),
            secure: m.proto.to_ascii_uppercase().starts_with("RTP/SAVP"),
            crypto: m.lines.iter().filter_map(|l| l.strip_prefix("a=crypto:")).map(str::to_string).collect(),
        })
    }
}

/// pbx's own side of an SDP session (RFC 3264 §5, §8): the o= session id stays, the version
/// goes up by one on every new description pbx sends that differs from the last one.
#[derive(Clone, Debug)]
pub struct LocalSession {
    id: u64,
    version: u64,
    address: IpAddr,
    last: Option<Bytes>,
    /// The `a=crypto` line (pbx's SDES key toward this side) written on the audio line, and
    /// whether pbx's own offers use RTP/SAVP (mandatory SRTP) rather than RTP/AVP.
    crypto: Option<(String, bool)>,
}

impl LocalSession {
    pub fn new(id: u64, address: IpAddr) -> LocalSession {
        LocalSession { id, version: 0, address, last: None, crypto: None }
    }

    /// From now on every description carries `line` (`a=crypto:…`) on its audio line, and
    /// offers are RTP/SAVP when `savp`; `None`: plain RTP again.
    pub fn set_crypto(&mut self, crypto: Option<(String, bool)>) {
        self.crypto = crypto;
    }

    /// Whether descriptions carry an `a=crypto` line.
    pub fn has_crypto(&self) -> bool {
        self.crypto.is_some()
    }

    /// Prints pbx's description of `media`, bumping the version only if it changed.
    fn describe(&mut self, mut media: Vec<Media>) -> Bytes {
        if let Some((line, _)) = &self.crypto
            && let Some(audio) = media.iter_mut().find(|m| m.kind == "audio" && m.port != 0)
        {
            audio.lines.push(line.clone());
        }
        let origin = |version| format!("pbx {} {version} {}", self.id, connection_text(self.address));
        let lines = vec!["t=0 0".into()];
        let (name, connection) = ("pbx".into(), Some(self.address));
        let mut sd = SessionDescription { origin: origin(self.version), name, connection, lines, media };
        let mut body = sd.to_bytes();
        if self.last.as_ref().is_some_and(|last| *last != body) {
            self.version = self.version.wrapping_add(1);
            sd.origin = origin(self.version);
            body = sd.to_bytes();
        }
        self.last = Some(body.clone());
        body
    }
}

fn audio_media(port: u16, proto: &str, codecs: &[(u8, Codec)], event: Option<u8>, direction: Direction) -> Media {
    let mut formats: Vec<String> = codecs.iter().map(|(pt, _)| pt.to_string()).collect();
    let mut lines: Vec<String> =
        codecs.iter().map(|(pt, codec)| format!("a=rtpmap:{pt} {}/8000", codec.name())).collect();
    if let Some(pt) = event {
        formats.push(pt.to_string());
        lines.push(format!("a=rtpmap:{pt} telephone-event/8000"));
        lines.push(format!("a=fmtp:{pt} 0-16"));
    }
    lines.push(format!("a=ptime:{PTIME_MS}"));
    lines.push(format!("a={}", direction.as_str()));
    Media { kind: "audio".into(), port, port_count: None, proto: proto.into(), formats, connection: None, lines }
}

/// An offer from pbx: one RTP/AVP audio line on `port` of the session address with `codecs`
/// in order, telephone-event (DTMF 0-16) when given, ptime 20 and `direction`. RTCP goes to
/// port + 1, so no a=rtcp.
pub fn offer(
    session: &mut LocalSession,
    port: u16,
    codecs: &[(u8, Codec)],
    telephone_event: Option<u8>,
    direction: Direction,
) -> Bytes {
    let proto = if session.crypto.as_ref().is_some_and(|(_, savp)| *savp) { "RTP/SAVP" } else { "RTP/AVP" };
    session.describe(vec![audio_media(port, proto, codecs, telephone_event, direction)])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no acceptable media (pbx speaks PCMU, PCMA and telephone-event)")]
pub struct NotAcceptable;

/// RFC 3264 §6: pbx's answer on `port`, one m= line per offered one in the same order. The
/// audio line `audio()` picks is accepted with `codec` alone at the offerer's PT (plus the
/// offerer's telephone-event when wanted); every other line is rejected with port 0.
pub fn answer(
    session: &mut LocalSession,
    offer: &SessionDescription,
    port: u16,
    codec: Codec,
    telephone_event: bool,
    direction: Direction,
) -> Result<Bytes, NotAcceptable> {
    let (index, audio) = offer.audio_index().zip(offer.audio()).ok_or(NotAcceptable)?;
    let chosen = *audio.codecs.iter().find(|(_, c)| *c == codec).ok_or(NotAcceptable)?;
    let event = audio.telephone_event.filter(|_| telephone_event);
    let media = offer.media.iter().enumerate().map(|(i, m)| {
        if i == index {
            return audio_media(port, &m.proto, &[chosen], event, direction);
        }
        let (kind, proto, formats) = (m.kind.clone(), m.proto.clone(), m.formats.iter().take(1).cloned().collect());
        Media { kind, port: 0, port_count: None, proto, formats, connection: None, lines: Vec::new() }
    });
    Ok(session.describe(media.collect()))
}

/// The codecs (PT, codec) and telephone-event PT of an offer.
pub type Plan = (Vec<(u8, Codec)>, Option<u8>);

/// What pbx offers the far leg given the near leg's offer (None: no offer, pbx offers on its
/// own): the near side's G.711 PTs in its order, then the other G.711 codec at its static PT
/// since pbx can transcode, and telephone-event at the near side's PT or 101. A near offer
/// without audio at all is the caller's to refuse.
pub fn plan_offer(near: Option<&Audio>) -> Result<Plan, NotAcceptable> {
    let Some(near) = near else {
        return Ok((vec![(0, Codec::Pcmu), (8, Codec::Pcma)], Some(TELEPHONE_EVENT_PT_DEFAULT)));
    };
    if near.codecs.is_empty() {
        return Err(NotAcceptable);
    }
    let mut codecs = near.codecs.clone();
    for codec in Codec::ALL {
        if !codecs.iter().any(|(_, c)| *c == codec) {
            codecs.push((codec.static_pt(), codec));
        }
    }
    Ok((codecs, Some(near.telephone_event.unwrap_or(TELEPHONE_EVENT_PT_DEFAULT))))
}

/// The codec to answer the near side with once the far side chose: the same one if the near
/// side offered it (no transcoding), else the near side's first (pbx transcodes).
pub fn choose(near: &Audio, far_choice: Codec) -> Option<Codec> {
    let offered = |codec| near.codecs.iter().any(|(_, c)| *c == codec);
    if offered(far_choice) { Some(far_choice) } else { near.codecs.first().map(|(_, c)| *c) }
}

#[cfg(test)]
mod tests;

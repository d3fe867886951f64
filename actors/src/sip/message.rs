//! SIP messages (RFC 3261 §7, §18, §20; RFC 3581): our facade over `ezk-sip-types`.
//!
//! The rest of pbx sees only this module: [`Request`], [`Response`], [`parse_datagram`],
//! [`frame_stream`] and printing through `to_bytes`. ezk does the grammar of URIs and typed
//! headers; this module does the message frame (start line, header folding, Content-Length,
//! body), the checks RFC 3261 §8.2 and RFC 4475 expect of a server before it acts on a
//! request, and the Via `received`/`rport` stamping of §18.2.1 and RFC 3581.
//!
//! What it deliberately does not do: transactions (see `transaction`), dialogs, or anything
//! that needs a socket or a clock. A request that cannot be acted on comes back as a
//! [`ParseError::Reject`] carrying the status, a reason phrase saying what is wrong, and the
//! raw header lines a response needs, so the caller can always answer a request whose Via it
//! can read — never a panic, never a silent drop of a request it could answer.

pub use super::headers::Headers;
use super::headers::key_of_str;
use bytes::{BufMut, Bytes, BytesMut};
use bytesstr::BytesStr;
pub use ezk_sip_types::header::typed::{CSeq, CallID, Contact, Expires, FromTo, MinExpires, Via};
use ezk_sip_types::host::Host;
use ezk_sip_types::parse::Parse;
use ezk_sip_types::print::AppendCtx;
use ezk_sip_types::uri::params::Param;
pub use ezk_sip_types::uri::{NameAddr, SipUri, SipUriUserPart};
pub use ezk_sip_types::{Method, Name};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// A whole message (head and body) larger than this is refused: 513 when we can still answer,
/// the connection closed when we cannot. SIP over UDP cannot exceed 65,507 bytes anyway.
pub const MESSAGE_BYTES_MAX: usize = 65_535;
/// A stream that has sent this many bytes without finishing a header section is not SIP.
pub const HEAD_BYTES_MAX: usize = 16_384;
/// More header lines than this in one message is an attack, not a phone.
pub const HEADER_LINES_MAX: usize = 256;

const _: () = assert!(HEAD_BYTES_MAX < MESSAGE_BYTES_MAX);

/// The protocol a message arrived on; Via says it in capitals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (RFC 3261 §26.2, RFC 5630): framed like TCP; a request to a phone that
    /// registered over it goes only down the connection the phone opened.
    Tls,
}

impl Transport {
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The `transport=` URI parameter naming it in a Contact pbx writes ("" for UDP, the
    /// default).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        }
    }

    /// Whether what travels on it is hidden from the path (SDES keys may go only here).
    pub fn is_secure(self) -> bool {
        matches!(self, Transport::Tls)
    }

    /// Streams frame by Content-Length and deliver reliably (RFC 3261 §17: no retransmissions).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }
}

/// A request. `headers` holds every header's raw text (printing writes it out); the headers
/// the layers above read on every request — top Via, From, To, Call-ID, CSeq — are also kept
/// typed, read once: by the parser for a request off the network (it has to read them to vet
/// the request anyway), by [`Request::new`] for one pbx builds. Only this module edits those
/// five headers of a request ([`Request::stamp_via_source`]), so the two always agree.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub uri: SipUri,
    pub headers: Headers,
    pub body: Bytes,
    /// Boxed: the typed headers are most of a request's size, and requests move through
    /// several queues.
    typed: Box<Typed>,
}

/// The typed copies of a request's core headers (see [`Request`]); `None` where the header is
/// missing or unreadable, as the accessors answered when they parsed on every call.
#[derive(Debug, Clone, Default)]
struct Typed {
    via: Option<Via>,
    /// The first raw Via value holds the top Via alone (no comma-folded Vias after it), so
    /// stamping may replace that value whole with the printed typed Via.
    via_alone: bool,
    from: Option<FromTo>,
    to: Option<FromTo>,
    call_id: Option<BytesStr>,
    cseq: Option<CSeq>,
    /// `None` without the header, `Some(Err(()))` when it does not parse.
    expires: Option<Result<u32, ()>>,
    /// Whether a Require header is there at all (most requests have none, and a lookup that
    /// finds nothing compares the name with every header's).
    require: bool,
}

impl Typed {
    /// The typed headers of a request pbx builds. Its own printing is in the common shapes,
    /// which [`shapes`] reads by hand; anything else goes through ezk as the parser does.
    fn read(headers: &Headers) -> Typed {
        let (via, via_alone) = match top_via_of(headers) {
            Some((via, alone)) => (Some(via), alone),
            None => (None, false),
        };
        Typed {
            via,
            via_alone,
            from: from_to_of(headers, Name::FROM),
            to: from_to_of(headers, Name::TO),
            call_id: headers.get_raw(&Name::CALL_ID).next().cloned(),
            cseq: cseq_of(headers),
            expires: headers.try_get_named::<Expires>().map(|e| e.map(|e| e.0).map_err(|_| ())),
            require: headers.contains(&Name::REQUIRE),
        }
    }
}

/// The top Via of `headers`, and whether each raw value holds one Via (so the first raw value
/// is the top Via alone): a lone value in the common shape by hand, anything else through ezk.
fn top_via_of(headers: &Headers) -> Option<(Via, bool)> {
    let mut raw = headers.get_raw(&Name::VIA);
    if let (Some(value), 0) = (raw.next(), raw.len())
        && let Some(via) = shapes::via(value.as_ref(), value.as_str())
    {
        return Some((via, true));
    }
    let vias = headers.get_named::<Vec<Via>>().ok()?;
    let alone = vias.len() == headers.get_raw(&Name::VIA).count();
    Some((vias.into_iter().next()?, alone))
}

/// A From or To of `headers` (`name`), as `Headers::get` decodes it: a lone value in the
/// common shape by hand, anything else through ezk.
fn from_to_of(headers: &Headers, name: Name) -> Option<FromTo> {
    let mut raw = headers.get_raw(&name);
    if let (Some(value), 0) = (raw.next(), raw.len())
        && let Some(value) = shapes::from_to(value.as_ref(), value.as_str())
    {
        return Some(value);
    }
    headers.get::<FromTo>(name).ok()
}

/// The URI of the first Contact of `headers` (a dialog's remote target, RFC 3261 §12.1): a
/// first value of one contact in the common shape by hand, anything else through ezk.
pub fn first_contact(headers: &Headers) -> Option<SipUri> {
    if let Some(value) = headers.get_raw(&Name::CONTACT).next()
        && let Some(contact) = shapes::contact(value.as_ref(), value.as_str())
    {
        return Some(contact.uri.uri);
    }
    headers.get_named::<Vec<Contact>>().ok()?.into_iter().next().map(|c| c.uri.uri)
}

/// The CSeq of `headers`, as `Headers::get_named` decodes it (see [`decode_cseq`]).
fn cseq_of(headers: &Headers) -> Option<CSeq> {
    let mut raw = headers.get_raw(&Name::CSEQ);
    if let (Some(value), 0) = (raw.next(), raw.len())
        && let Some(cseq) = cseq_by_hand(value)
    {
        return Some(cseq);
    }
    headers.get_named::<CSeq>().ok()
}

/// The headers a response copies from its request (RFC 3261 §8.2.6.1), in the order it
/// prints them; the To (index 2) may gain a tag.
const REPLY_NAMES: [Name; 5] = [Name::VIA, Name::FROM, Name::TO, Name::CALL_ID, Name::CSEQ];

/// The header-store keys of [`REPLY_NAMES`].
fn reply_keys() -> &'static [u64; 5] {
    const KEYS: [u64; 5] =
        [key_of_str("Via"), key_of_str("From"), key_of_str("To"), key_of_str("Call-ID"), key_of_str("CSeq")];
    &KEYS
}

/// A raw header value inserted as it is: `Headers::insert` prints every value into a new
/// `String`; this shares the buffer the value already lives in (a `BytesStr` clone is a
/// reference count).
fn insert_shared(headers: &mut Headers, name: Name, value: &BytesStr) {
    headers.insert_value(name, value.clone());
}

#[derive(Debug, Clone)]
pub struct Response {
    pub code: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Why a message could not be taken, and what to do about it.
#[derive(Debug, Clone)]
pub enum ParseError {
    /// Not a SIP message we can answer (no start line, binary noise, a response we cannot
    /// read): log, count, drop. RFC 3261 §18.1.2/§18.2.1 discard malformed responses too.
    Discard(String),
    /// A request we read far enough to answer but must refuse: answer `code` with `reason`.
    /// `head` holds the raw Via/From/To/Call-ID/CSeq lines to copy into the response.
    Reject { code: u16, reason: String, head: RawHead },
}

impl ParseError {
    pub fn reason(&self) -> &str {
        match self {
            ParseError::Discard(r) => r,
            ParseError::Reject { reason, .. } => reason,
        }
    }
}

/// The header lines of a message we refused, kept raw so a response can still be built
/// (RFC 3261 §8.2.6.1 copies Via, From, To, Call-ID and CSeq verbatim).
#[derive(Debug, Clone, Default)]
pub struct RawHead {
    /// Slices of the parsed head: no copy per line.
    lines: Vec<(Name, BytesStr)>,
}

impl RawHead {
    /// The response RFC 3261 §8.2.6 asks for, or `None` when there is no Via to send it along.
    pub fn response(&self, code: u16, reason: &str) -> Option<Response> {
        let mut headers = Headers::new();
        let mut has_via = false;
        for (name, value) in &self.lines {
            if *name == Name::VIA {
                has_via = true;
            }
            if [Name::VIA, Name::FROM, Name::TO, Name::CALL_ID, Name::CSEQ].contains(name) {
                insert_shared(&mut headers, name.clone(), value);
            }
        }
        has_via.then(|| Response { code, reason: reason.to_owned(), headers, body: Bytes::new() })
    }
}

/// What a stream buffer holds at its front.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole message yet: read more.
    Incomplete,
    /// RFC 5626 §3.5.1 keep-alive (a CRLF pair): `len` bytes to drop; answer with one CRLF.
    KeepAlive { len: usize },
    /// A whole message is the first `len` bytes.
    Message { len: usize },
    /// The stream cannot be framed any more. If `answerable`, the first `len` bytes are a
    /// request head worth a `code` response before the connection is closed.
    Broken { code: u16, reason: String, len: usize },
}

/// Finds the first message on a stream (RFC 3261 §18.3: framing by Content-Length, which a
/// stream message must carry).
pub fn frame_stream(buf: &[u8]) -> Frame {
    if buf.starts_with(b"\r\n\r\n") {
        return Frame::KeepAlive { len: 4 };
    }
    // Stray CRLFs between messages are allowed (RFC 3261 §7.5).
    let lead = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
    if lead > 0 {
        if lead == buf.len() {
            return if lead >= 4 { Frame::KeepAlive { len: lead } } else { Frame::Incomplete };
        }
        return Frame::KeepAlive { len: lead };
    }
    let Some(head_end) = find_head_end(buf) else {
        if buf.len() > HEAD_BYTES_MAX {
            return Frame::Broken { code: 0, reason: "header section too large".into(), len: buf.len() };
        }
        return Frame::Incomplete;
    };
    let head = &buf[..head_end];
    let Some(content_length) = raw_content_length(head) else {
        return Frame::Broken {
            code: 400,
            reason: "Missing Content-Length on a stream transport".into(),
            len: head_end,
        };
    };
    let Ok(content_length) = content_length else {
        return Frame::Broken { code: 400, reason: "Invalid Content-Length".into(), len: head_end };
    };
    let len = head_end.saturating_add(content_length);
    if len > MESSAGE_BYTES_MAX {
        return Frame::Broken { code: 513, reason: "Message Too Large".into(), len: head_end };
    }
    if buf.len() < len { Frame::Incomplete } else { Frame::Message { len } }
}

/// Parses one message that arrived whole: a UDP datagram, or a frame from [`frame_stream`].
pub fn parse_datagram(bytes: &[u8]) -> Result<Message, ParseError> {
    parse(bytes, false)
}

/// Parses a message framed off a stream, where Content-Length is mandatory.
pub fn parse_stream_frame(bytes: &[u8]) -> Result<Message, ParseError> {
    parse(bytes, true)
}

fn parse(bytes: &[u8], stream: bool) -> Result<Message, ParseError> {
    // ezk's nom grammar is third-party code fed by the network: contain any panic in it.
    std::panic::catch_unwind(|| parse_inner(bytes, stream))
        .unwrap_or_else(|_| Err(ParseError::Discard("parser fault on malformed input".into())))
}

fn parse_inner(bytes: &[u8], stream: bool) -> Result<Message, ParseError> {
    let discard = |r: &str| Err(ParseError::Discard(r.to_owned()));
    if bytes.len() > MESSAGE_BYTES_MAX {
        return discard("message too large");
    }
    // Leading CRLFs before the start line are ignored (RFC 3261 §7.5).
    let start = bytes.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
    let bytes = &bytes[start..];
    let Some(head_end) = find_head_end(bytes) else {
        return discard("no end of header section");
    };
    // A head that is not UTF-8 (a Latin-1 display name from an old phone, say) is still read,
    // lossily, far enough to answer it 400: RFC 3261 §7.3 headers are UTF-8.
    // std's validation first: the lossy decoder walks a valid head chunk by chunk, slower.
    let head_text = match std::str::from_utf8(&bytes[..head_end]) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(&bytes[..head_end]),
    };
    let not_utf8 = matches!(head_text, std::borrow::Cow::Owned(_));
    // Kept as text: no second UTF-8 validation of what was built from a `str`.
    let (unfolded, line_count) = unfold(&head_text);
    let unfolded = BytesStr::from(unfolded);
    let src: &Bytes = unfolded.as_ref();
    let text = unfolded.as_str();
    let mut lines = Lines::new(text, false).filter(|l| !l.is_empty());
    let Some(start_line) = lines.next() else {
        return discard("empty message");
    };

    // Read every header line first, so that whatever is wrong later can still be answered.
    // The lines of the headers checked below are noted as they go by, so the checks look
    // nothing up in `headers` (ezk's lookups compare names as strings, entry by entry).
    // Room for every header line but one (the Content-Length most messages carry is not
    // kept): a REGISTER's ten entries then fit one small allocation (malloc's per-thread
    // cache serves up to 1,032 bytes; sixteen entries were 1.5 KB, 1.5 k instructions).
    // `line_count` counts the start line and the blank line's two pieces too.
    let mut headers = Headers::with_capacity(line_count.saturating_sub(4).clamp(1, HEADER_LINES_MAX));
    let mut seen = Seen::default();
    let mut bad_line = None;
    for (n, line) in lines.enumerate() {
        if n >= HEADER_LINES_MAX {
            bad_line = Some("Too many header lines".to_owned());
            break;
        }
        let (name, value) = match header_line(line) {
            Ok(line) => line,
            Err(None) => {
                bad_line.get_or_insert_with(|| "Malformed header line (no colon)".to_owned());
                continue;
            }
            Err(Some(name)) => {
                bad_line.get_or_insert_with(|| format!("Malformed header name {name:?}"));
                continue;
            }
        };
        let value = BytesStr::from_parse(src, value);
        let (name, core, key) = match Core::of(name) {
            Some((name, core, key)) => (name, Some(core), key),
            None => {
                let name = Name::from(BytesStr::from_parse(src, name));
                let key = Headers::key_of(&name);
                (name, None, key)
            }
        };
        if let Some(core) = core {
            seen.note(core, &value);
            if core == Core::ContentLength {
                // Read by `take_body`, never kept: printing writes a fresh one.
                continue;
            }
        }
        headers.insert_value_keyed(name, key, value);
    }

    if not_utf8 {
        bad_line.get_or_insert_with(|| "Header section is not valid UTF-8".to_owned());
    }
    let body_start = &bytes[head_end..];
    if start_line.starts_with("SIP/") {
        return parse_response(start_line, headers, &seen, body_start, stream, bad_line);
    }
    // The raw lines a refusal copies are gathered only for a refusal (a second scan of the head).
    let reject = |code: u16, reason: String| Err(ParseError::Reject { code, reason, head: raw_head(text, src) });

    // Request-Line = Method SP Request-URI SP SIP-Version (RFC 3261 §25.1)
    let mut parts = start_line.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return reject(400, "Malformed Request-Line".into());
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return reject(400, "Malformed method in Request-Line".into());
    }
    if let Some(reason) = bad_line {
        return reject(400, reason);
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return reject(505, "Version Not Supported".into());
    }
    let method = method_of(src, method);
    // RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ). A well-formed scheme
    // we do not serve is 416; no scheme at all (`<sip:…>`, RFC 4475 ltgtruri) is a bad URI.
    let scheme = uri.split(':').next().unwrap_or("");
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && uri.len() > scheme.len();
    if !scheme_ok {
        return reject(400, "Malformed Request-URI".into());
    }
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return reject(416, format!("Unsupported URI Scheme {scheme:?}"));
    }
    let uri = match shapes::whole_sip_uri(src, uri) {
        Some(uri) => uri,
        None => match SipUri::parse(src)(uri) {
            Ok(("", uri)) => uri,
            _ => return reject(400, "Malformed Request-URI".into()),
        },
    };

    // The headers every request must carry (RFC 3261 §8.1.1), each readable; read typed here
    // once and kept (see `Typed`).
    // A lone Via in the common shape is read by hand (see `shapes`); anything else by ezk.
    let by_hand = match (&seen.via.first, seen.via.more.is_empty()) {
        (Some(value), true) => shapes::via(value.as_ref(), value.as_str()).map(|via| (via, true)),
        _ => None,
    };
    let top = by_hand.or_else(|| {
        let vias = decode::<Vec<Via>>(&seen.via)?;
        let alone = vias.len() == seen.via.len();
        Some((vias.into_iter().next()?, alone))
    });
    let (via, via_alone) = match top {
        Some((via, alone)) => (Some(via), alone),
        _ if seen.via.is_empty() => return reject(400, "Missing Via header".into()),
        _ => return reject(400, "Malformed Via header".into()),
    };
    let mut from_to = [None, None];
    for (slot, (values, label)) in from_to.iter_mut().zip([(&seen.from, "From"), (&seen.to, "To")]) {
        match values.len() {
            0 => return reject(400, format!("Missing {label} header")),
            1 => {}
            _ => return reject(400, format!("Multiple {label} headers")),
        }
        let by_hand = values.first.as_ref().and_then(|v| shapes::from_to(v.as_ref(), v.as_str()));
        match by_hand.or_else(|| decode::<FromTo>(values)) {
            Some(value) => *slot = Some(value),
            None => return reject(400, format!("Malformed {label} header")),
        }
    }
    let [from, to] = from_to;
    let call_id = match (&seen.call_id.first, seen.call_id.more.is_empty()) {
        (None, _) => return reject(400, "Missing Call-ID header".into()),
        (Some(call_id), true) => call_id.clone(),
        (Some(_), false) => return reject(400, "Multiple Call-ID headers".into()),
    };
    let cseq = match decode_cseq(&seen.cseq) {
        Some(cseq) => cseq,
        None if seen.cseq.is_empty() => return reject(400, "Missing CSeq header".into()),
        None => return reject(400, "Malformed CSeq header".into()),
    };
    if seen.cseq.len() > 1 {
        return reject(400, "Multiple CSeq headers".into());
    }
    if cseq.method != method {
        return reject(400, "CSeq method does not match Request-Line".into());
    }
    let expires = match decode::<Expires>(&seen.expires) {
        Some(expires) => Some(Ok(expires.0)),
        None if seen.expires.is_empty() => None,
        None => return reject(400, "Malformed Expires header".into()),
    };
    if let Some(raw_mf) = &seen.max_forwards.first
        && raw_mf.parse::<u8>().is_err()
    {
        return reject(400, "Malformed Max-Forwards header".into());
    }
    let body = match take_body(&seen.content_length, body_start, stream) {
        Ok(body) => body,
        Err(reason) => return reject(400, reason.into()),
    };
    let typed = Box::new(Typed {
        via,
        via_alone,
        from,
        to,
        call_id: Some(call_id),
        cseq: Some(cseq),
        expires,
        require: !seen.require.is_empty(),
    });
    Ok(Message::Request(Request { method, uri, headers, body, typed }))
}

fn parse_response(
    start_line: &str,
    headers: Headers,
    seen: &Seen,
    body_start: &[u8],
    stream: bool,
    bad_line: Option<String>,
) -> Result<Message, ParseError> {
    let discard = |r: &str| Err(ParseError::Discard(r.to_owned()));
    // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (RFC 3261 §25.1)
    let mut parts = start_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return discard("malformed Status-Line");
    };
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return discard("unsupported SIP version in response");
    }
    let Some(code) = code.parse::<u16>().ok().filter(|c| (100..=699).contains(c)) else {
        return discard("malformed status code");
    };
    if let Some(reason) = bad_line {
        return Err(ParseError::Discard(reason));
    }
    for (values, name) in [
        (&seen.via, Name::VIA),
        (&seen.from, Name::FROM),
        (&seen.to, Name::TO),
        (&seen.call_id, Name::CALL_ID),
        (&seen.cseq, Name::CSEQ),
    ] {
        if values.is_empty() {
            return Err(ParseError::Discard(format!("response without {}", name.as_print_str())));
        }
    }
    // The top Via in the common shape is read by hand (as a request's is), anything else by ezk.
    let via_ok = seen.via.first.as_ref().is_some_and(|v| shapes::via(v.as_ref(), v.as_str()).is_some())
        || decode::<Via>(&seen.via).is_some();
    if decode_cseq(&seen.cseq).is_none() || !via_ok {
        return discard("response with malformed CSeq or Via");
    }
    let reason = parts.next().unwrap_or("").to_owned();
    let body = take_body(&seen.content_length, body_start, stream).map_err(|r| ParseError::Discard(r.into()))?;
    Ok(Message::Response(Response { code, reason, headers, body }))
}

/// A header line's name and value, both trimmed; `Err(None)` without a colon, `Err(Some(name))`
/// for a name that is not a token. One reading for the parser's scan and [`raw_head`].
fn header_line(line: &str) -> Result<(&str, &str), Option<&str>> {
    let colon = line.as_bytes().iter().position(|&b| b == b':').ok_or(None)?;
    let name = trim_sp_end(&line[..colon]);
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(Some(name));
    }
    Ok((name, trim_sp(&line[colon + 1..])))
}

/// The raw Via, From, To, Call-ID and CSeq lines of an unfolded head, in their order, as the
/// parser's scan reads them (the same lines, the same bound): what a refusal copies.
fn raw_head(text: &str, src: &Bytes) -> RawHead {
    let mut lines = Vec::with_capacity(6);
    let header_lines = Lines::new(text, false).filter(|l| !l.is_empty()).skip(1);
    for line in header_lines.take(HEADER_LINES_MAX) {
        if let Ok((name, value)) = header_line(line)
            && let Some((name, core, _)) = Core::of(name)
            && core.copied_to_responses()
        {
            lines.push((name, BytesStr::from_parse(src, value)));
        }
    }
    RawHead { lines }
}

/// The header lines the parser itself reads, by header: noted during the one scan of the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Core {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Expires,
    MaxForwards,
    ContentLength,
    Require,
    /// Not read here, but common: named without ezk's walk through every name it knows.
    Other,
}

impl Core {
    /// The name a header line's name stands for, when it is one of the common ones (long or
    /// compact form, any case), with its header-store key worked out at compile time; `None`
    /// for the rest, which ezk names.
    fn of(name: &str) -> Option<(Name, Core, u64)> {
        let is = |a: &str| name.eq_ignore_ascii_case(a);
        let found = match name.len() {
            1 => match name.as_bytes()[0].to_ascii_lowercase() {
                b'v' => (Name::VIA, Core::Via, const { key_of_str("Via") }),
                b'f' => (Name::FROM, Core::From, const { key_of_str("From") }),
                b't' => (Name::TO, Core::To, const { key_of_str("To") }),
                b'i' => (Name::CALL_ID, Core::CallId, const { key_of_str("Call-ID") }),
                b'l' => (Name::CONTENT_LENGTH, Core::ContentLength, const { key_of_str("Content-Length") }),
                b'm' => (Name::CONTACT, Core::Other, const { key_of_str("Contact") }),
                _ => return None,
            },
            2 if is("to") => (Name::TO, Core::To, const { key_of_str("To") }),
            3 if is("via") => (Name::VIA, Core::Via, const { key_of_str("Via") }),
            4 if is("from") => (Name::FROM, Core::From, const { key_of_str("From") }),
            4 if is("cseq") => (Name::CSEQ, Core::CSeq, const { key_of_str("CSeq") }),
            7 if is("call-id") => (Name::CALL_ID, Core::CallId, const { key_of_str("Call-ID") }),
            7 if is("expires") => (Name::EXPIRES, Core::Expires, const { key_of_str("Expires") }),
            7 if is("contact") => (Name::CONTACT, Core::Other, const { key_of_str("Contact") }),
            7 if is("require") => (Name::REQUIRE, Core::Require, const { key_of_str("Require") }),
            10 if is("user-agent") => (Name::USER_AGENT, Core::Other, const { key_of_str("User-Agent") }),
            12 if is("max-forwards") => (Name::MAX_FORWARDS, Core::MaxForwards, const { key_of_str("Max-Forwards") }),
            13 if is("authorization") => (Name::AUTHORIZATION, Core::Other, const { key_of_str("Authorization") }),
            14 if is("content-length") => {
                (Name::CONTENT_LENGTH, Core::ContentLength, const { key_of_str("Content-Length") })
            }
            _ => return None,
        };
        Some(found)
    }

    /// RFC 3261 §8.2.6.1: the headers a response copies from its request.
    fn copied_to_responses(self) -> bool {
        matches!(self, Core::Via | Core::From | Core::To | Core::CallId | Core::CSeq)
    }
}

/// The values of the headers the parser checks, in order, as the scan met them.
#[derive(Default)]
struct Seen {
    via: Values,
    from: Values,
    to: Values,
    call_id: Values,
    cseq: Values,
    expires: Values,
    max_forwards: Values,
    content_length: Values,
    require: Values,
}

/// One header's values: the first inline (most headers come once, and then nothing is
/// allocated), any more in a list.
#[derive(Default)]
struct Values {
    first: Option<BytesStr>,
    more: Vec<BytesStr>,
}

impl Values {
    fn push(&mut self, value: &BytesStr) {
        match self.first {
            None => self.first = Some(value.clone()),
            Some(_) => self.more.push(value.clone()),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = &BytesStr> {
        self.first.iter().chain(&self.more)
    }
}

impl Seen {
    fn note(&mut self, core: Core, value: &BytesStr) {
        let list = match core {
            Core::Via => &mut self.via,
            Core::From => &mut self.from,
            Core::To => &mut self.to,
            Core::CallId => &mut self.call_id,
            Core::CSeq => &mut self.cseq,
            Core::Expires => &mut self.expires,
            Core::MaxForwards => &mut self.max_forwards,
            Core::ContentLength => &mut self.content_length,
            Core::Require => &mut self.require,
            Core::Other => return,
        };
        list.push(value);
    }
}

/// A typed header from its values, as `Headers::get_named` decodes it (`None` when there are
/// none or they do not parse).
fn decode<H: ezk_sip_types::header::DecodeValues>(values: &Values) -> Option<H> {
    if values.is_empty() {
        return None;
    }
    H::decode(&mut values.iter()).ok().map(|(_, h)| h)
}

/// The CSeq, read by hand in its common shape (`1-9 digits SP METHOD`, one value), where ezk's
/// grammar gives the same answer; through ezk otherwise.
fn decode_cseq(values: &Values) -> Option<CSeq> {
    if let (Some(value), true) = (&values.first, values.more.is_empty())
        && let Some(cseq) = cseq_by_hand(value)
    {
        return Some(cseq);
    }
    decode::<CSeq>(values)
}

/// One CSeq value in the common shape (`1-9 digits SP METHOD`), where ezk's grammar gives the
/// same answer; `None` for anything else.
fn cseq_by_hand(value: &BytesStr) -> Option<CSeq> {
    let (number, method) = value.as_str().split_once(' ')?;
    if (1..=9).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
    {
        let number = number.parse::<u32>().ok()?;
        return Some(CSeq { cseq: number, method: method_of(value.as_ref(), method) });
    }
    None
}

/// A method token as ezk reads it, the common ones without its walk through every method it
/// knows (a case-insensitive prefix match per method: the exact names below answer the same).
fn method_of(src: &Bytes, token: &str) -> Method {
    match token {
        "REGISTER" => Method::REGISTER,
        "INVITE" => Method::INVITE,
        "ACK" => Method::ACK,
        "BYE" => Method::BYE,
        "CANCEL" => Method::CANCEL,
        "OPTIONS" => Method::OPTIONS,
        _ => Method::from_parse(src, token),
    }
}

/// Takes the body off by Content-Length (the header itself is not kept: printing writes a
/// fresh one).
fn take_body(values: &Values, rest: &[u8], stream: bool) -> Result<Bytes, &'static str> {
    if values.is_empty() {
        if stream {
            return Err("Missing Content-Length on a stream transport");
        }
        // RFC 3261 §18.3: on a datagram the body runs to the end of the packet.
        return Ok(Bytes::copy_from_slice(rest));
    };
    let mut lengths = values.iter().map(|v| v.as_str().trim().parse::<usize>());
    let Some(Ok(len)) = lengths.next() else {
        return Err("Invalid Content-Length");
    };
    if lengths.any(|other| other != Ok(len)) {
        return Err("Conflicting Content-Length headers");
    }
    if len > rest.len() {
        return Err("Content-Length larger than the message body");
    }
    // A datagram longer than Content-Length: the excess is discarded (RFC 3261 §18.3).
    Ok(Bytes::copy_from_slice(&rest[..len]))
}

/// Index just past the blank line that ends the header section (CRLFCRLF or bare LFLF).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = next_newline(buf, from) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => {}
        }
        from = i + 1;
    }
    None
}

/// The index of the first `\n` at or after `from`, eight bytes at a time (a header line is
/// some 40 bytes, and this scan runs over every head).
pub(crate) fn next_newline(buf: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut i = from;
    while let Some(chunk) = buf.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let x = word ^ NEWLINES;
        // A zero byte of `x` is a newline; the lowest flagged byte is always a true one.
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    buf.get(i..)?.iter().position(|&b| b == b'\n').map(|p| i + p)
}

/// The index of the first byte at or after `from` that is `a` or `b`, eight bytes at a time
/// (as [`next_newline`]: in each word the lowest flagged byte is always a true match).
pub(crate) fn find_either(buf: &[u8], from: usize, a: u8, b: u8) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let (splat_a, splat_b) = (u64::from_ne_bytes([a; 8]), u64::from_ne_bytes([b; 8]));
    let mut i = from;
    while let Some(chunk) = buf.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let (x, y) = (word ^ splat_a, word ^ splat_b);
        let found = ((x.wrapping_sub(ONES) & !x) | (y.wrapping_sub(ONES) & !y)) & HIGHS;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    buf.get(i..)?.iter().position(|&c| c == a || c == b).map(|p| i + p)
}

/// Joins folded header lines (RFC 3261 §7.3.1: CRLF followed by whitespace is one space) and
/// normalises line ends to `\n`.
/// Also says how many lines it wrote.
fn unfold(head: &str) -> (String, usize) {
    let mut out = String::with_capacity(head.len());
    let mut count = 0;
    let mut lines = Lines::new(head, true).peekable();
    while let Some(line) = lines.next() {
        count += 1;
        out.push_str(line);
        while let Some(next) = lines.peek() {
            if next.starts_with([' ', '\t']) {
                out.push(' ');
                out.push_str(trim_sp_start(next));
                lines.next();
            } else {
                break;
            }
        }
        out.push('\n');
    }
    (out, count)
}

/// The pieces of a text between `\n`s, as `split('\n')` gives them (the last one after the
/// final `\n`, empty or not, included), found eight bytes at a time; with `strip_cr`, each
/// without one trailing `\r`.
struct Lines<'a> {
    text: &'a str,
    at: usize,
    strip_cr: bool,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str, strip_cr: bool) -> Lines<'a> {
        Lines { text, at: 0, strip_cr }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.at > self.text.len() {
            return None;
        }
        let end = next_newline(self.text.as_bytes(), self.at).unwrap_or(self.text.len());
        let line = &self.text[self.at..end];
        self.at = end + 1;
        Some(if self.strip_cr { line.strip_suffix('\r').unwrap_or(line) } else { line })
    }
}

/// Content-Length read from a raw head without a full parse: `None` if absent.
fn raw_content_length(head: &[u8]) -> Option<Result<usize, ()>> {
    let text = String::from_utf8_lossy(head);
    for line in text.split('\n') {
        let Some((name, value)) = line.as_bytes().iter().position(|&b| b == b':').map(|i| (&line[..i], &line[i + 1..]))
        else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            return Some(value.trim().parse::<usize>().map_err(|_| ()));
        }
    }
    None
}

/// `text` without the spaces and tabs at its ends: what `trim_matches([' ', '\t'])` gives,
/// byte by byte (the char pattern decodes every character; this runs on every header line).
#[inline]
pub(crate) fn trim_sp(text: &str) -> &str {
    trim_sp_end(trim_sp_start(text))
}

/// `text` without the spaces and tabs at its start (see [`trim_sp`]).
#[inline]
pub(crate) fn trim_sp_start(text: &str) -> &str {
    let n = text.bytes().take_while(|&b| b == b' ' || b == b'\t').count();
    &text[n..]
}

/// `text` without the spaces and tabs at its end (see [`trim_sp`]).
#[inline]
pub(crate) fn trim_sp_end(text: &str) -> &str {
    let n = text.bytes().rev().take_while(|&b| b == b' ' || b == b'\t').count();
    &text[..text.len() - n]
}

fn is_token_byte(b: u8) -> bool {
    TOKEN_BYTES[usize::from(b)]
}

/// RFC 3261 §25.1 token characters: alphanumerics and `-.!%*_+`'~`, one lookup per byte.
pub(crate) const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~');
        b += 1;
    }
    table
};

/// The answer to a stream whose framing broke ([`Frame::Broken`] with a non-zero code): built
/// from the head bytes when they name a request with a Via, else `None` (just close).
pub fn broken_stream_response(head: &[u8], code: u16, reason: &str) -> Option<Response> {
    match parse_datagram(head) {
        Ok(Message::Request(request)) => {
            let mut response = request.response(code, None);
            response.reason = reason.to_owned();
            Some(response)
        }
        Err(ParseError::Reject { head, .. }) => head.response(code, reason),
        Ok(Message::Response(_)) | Err(ParseError::Discard(_)) => None,
    }
}

/// The standard reason phrase of a status code (RFC 3261 §21, RFC 3581, RFC 4474 …).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        603 => "Decline",
        _ => "Unknown",
    }
}

impl Request {
    /// A request pbx builds; its core headers are read typed once, here.
    pub fn new(method: Method, uri: SipUri, headers: Headers, body: Bytes) -> Request {
        let typed = Box::new(Typed::read(&headers));
        Request { method, uri, headers, body, typed }
    }

    /// The top Via: the hop that sent us this request.
    pub fn top_via(&self) -> Option<Via> {
        self.typed.via.clone()
    }

    /// The top Via, without a copy.
    pub fn top_via_ref(&self) -> Option<&Via> {
        self.typed.via.as_ref()
    }

    /// The branch of the top Via, the transaction key of RFC 3261 §17.2.3.
    pub fn branch(&self) -> Option<String> {
        self.branch_str().map(str::to_owned)
    }

    /// The branch of the top Via, without a copy.
    pub fn branch_str(&self) -> Option<&str> {
        self.typed.via.as_ref()?.params.get_val("branch").map(|b| b.as_str())
    }

    pub fn cseq(&self) -> Option<CSeq> {
        self.typed.cseq.clone()
    }

    /// The CSeq, without a copy.
    pub fn cseq_ref(&self) -> Option<&CSeq> {
        self.typed.cseq.as_ref()
    }

    pub fn call_id(&self) -> Option<String> {
        self.call_id_str().map(str::to_owned)
    }

    /// The Call-ID, without a copy.
    pub fn call_id_str(&self) -> Option<&str> {
        self.typed.call_id.as_ref().map(|c| c.as_str())
    }

    pub fn from(&self) -> Option<FromTo> {
        self.typed.from.clone()
    }

    /// The From header, without a copy.
    pub fn from_ref(&self) -> Option<&FromTo> {
        self.typed.from.as_ref()
    }

    pub fn to(&self) -> Option<FromTo> {
        self.typed.to.clone()
    }

    /// The To header, without a copy.
    pub fn to_ref(&self) -> Option<&FromTo> {
        self.typed.to.as_ref()
    }

    /// The first value of a header, raw.
    pub fn header(&self, name: &Name) -> Option<&str> {
        self.headers.get_raw(name).next().map(|v| v.as_str())
    }

    /// The Expires header's seconds: `None` without one, `Some(Err(()))` when it does not parse
    /// (the parser refuses such a request, so only one built here can have it).
    pub fn expires(&self) -> Option<Result<u32, ()>> {
        self.typed.expires
    }

    /// The option tags of the Require headers (RFC 3261 §20.32), comma lists split; empty
    /// without any.
    pub fn required(&self) -> Vec<String> {
        if !self.typed.require {
            return Vec::new();
        }
        self.headers
            .get_raw(&Name::REQUIRE)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The Contact header set of a REGISTER (RFC 3261 §10.2): none, `*`, or a list.
    pub fn contacts(&self) -> Result<Contacts, &'static str> {
        // The store's own slice of values: nothing collected.
        let values = self.headers.get_raw(&Name::CONTACT).as_slice();
        if values.is_empty() {
            return Ok(Contacts::None);
        }
        if values.iter().any(|v| v.as_str().trim() == "*") {
            return if values.len() == 1 { Ok(Contacts::Star) } else { Err("Contact * mixed with other contacts") };
        }
        // Each value one contact in the common shape: read by hand (see `shapes`).
        let by_hand: Option<Vec<Contact>> = values.iter().map(|v| shapes::contact(v.as_ref(), v.as_str())).collect();
        if let Some(list) = by_hand {
            return Ok(Contacts::List(list));
        }
        match self.headers.get_named::<Vec<Contact>>() {
            Ok(list) if !list.is_empty() => Ok(Contacts::List(list)),
            _ => Err("Malformed Contact header"),
        }
    }

    /// The raw Via, From, To, Call-ID and CSeq lines a response copies (RFC 3261 §8.2.6.1), to
    /// answer later without keeping the request: [`RawHead::response`] then builds what
    /// `self.response(code, None)` would (reference counts here, no copy of the text).
    pub fn reply_head(&self) -> RawHead {
        let mut lines = Vec::with_capacity(6);
        for (name, values) in REPLY_NAMES.iter().zip(self.reply_values()) {
            for value in values {
                lines.push((name.clone(), value.clone()));
            }
        }
        RawHead { lines }
    }

    /// The raw values of [`REPLY_NAMES`], in their order, found in one pass over the headers.
    fn reply_values(&self) -> [&[BytesStr]; 5] {
        self.headers.get_raw_each(&REPLY_NAMES, reply_keys())
    }

    /// A response to this request, built as RFC 3261 §8.2.6.1 says: Via, From, To, Call-ID and
    /// CSeq copied; `to_tag` added to To when it has none (not on 100, which carries no tag).
    pub fn response(&self, code: u16, to_tag: Option<&str>) -> Response {
        let mut headers = Headers::with_capacity(8);
        let to_tag = to_tag.filter(|_| code > 100 && self.typed.to.as_ref().is_none_or(|to| to.tag.is_none()));
        // The values are shared with the request, not copied; only a To that gains a tag is new.
        for (i, ((name, values), &key)) in REPLY_NAMES.iter().zip(self.reply_values()).zip(reply_keys()).enumerate() {
            let tag = to_tag.filter(|_| i == 2);
            for value in values {
                match tag {
                    Some(tag) => {
                        let mut tagged = String::with_capacity(value.len() + 5 + tag.len());
                        tagged.push_str(value);
                        tagged.push_str(";tag=");
                        tagged.push_str(tag);
                        headers.insert_value_keyed(name.clone(), key, BytesStr::from(tagged));
                    }
                    None => headers.insert_value_keyed(name.clone(), key, value.clone()),
                }
            }
        }
        Response { code, reason: reason_phrase(code).to_owned(), headers, body: Bytes::new() }
    }

    /// RFC 3261 §18.2.1 and RFC 3581 §4: note on the top Via where the request really came
    /// from (`received`, always — overwriting one the client wrote), and the source port when
    /// the client asked for it (`rport`).
    pub fn stamp_via_source(&mut self, source: SocketAddr) {
        // The top Via is already typed: edit it and print it in place of its raw value.
        let Some(top) = self.typed.via.as_mut() else { return };
        let asked_rport = top.params.get("rport").is_some();
        if self.typed.via_alone {
            // The raw text with the two parameters written in, as printing the edited Via
            // would place them; the typed Via's new values are slices of that text.
            let port = asked_rport.then(|| source.port());
            let raw = self.headers.get_raw(&Name::VIA).next();
            if let Some((text, received, rport)) = raw.and_then(|raw| stamped_via(raw.as_str(), source.ip(), port)) {
                let text = BytesStr::from(text);
                // `stamped_via` saw no `received` in the text: this adds the only one.
                top.params.push(Param::value(BytesStr::from_static("received"), text.slice_ref(&text[received])));
                if let Some(rport) = rport
                    && let Some(param) = top.params.get_mut("rport")
                {
                    param.value = Some(text.slice_ref(&text[rport]));
                }
                self.headers.replace_first_to_front(&Name::VIA, text);
                return;
            }
        }
        // Always, even when sent-by names the source: a `received` the client wrote itself
        // must never decide where our answer goes (it would make pbx a reflector aimed at
        // whatever address a stranger puts there).
        top.params.push_or_edit("received", source.ip().to_string());
        if asked_rport {
            top.params.push_or_edit("rport", source.port().to_string());
        }
        let Some(values) = self.headers.remove(&Name::VIA) else { return };
        if self.typed.via_alone {
            // ezk puts a new entry first but appends to an existing one: insert in order.
            self.headers.insert_named_front(top);
            for value in &values[1..] {
                insert_shared(&mut self.headers, Name::VIA, value);
            }
            return;
        }
        // The first value also holds other Vias (folded after a comma): parse it to find where
        // the top one ends; those Vias become values of their own.
        let Some((first, others)) = values.split_first() else { return };
        let rest =
            match <Via as ezk_sip_types::header::HeaderParse>::parse(AsRef::<Bytes>::as_ref(first), first.as_str()) {
                Ok((rest, _)) => rest.trim_start_matches([' ', '\t', ',']).trim(),
                // Unreadable (the parser vetted it, so this is not expected): keep the others.
                Err(_) => "",
            };
        self.headers.insert_named_front(top);
        if !rest.is_empty() {
            self.headers.insert(Name::VIA, rest);
        }
        for value in others {
            insert_shared(&mut self.headers, Name::VIA, value);
        }
        self.typed.via_alone = rest.is_empty();
    }

    /// Where the responses to this request travel: over UDP what
    /// [`Response::udp_destination`] reads from the top Via the responses copy from it (so
    /// call it after [`Request::stamp_via_source`]), over a stream the connection it came on.
    pub fn reply_destination(&self, source: SocketAddr, transport: Transport) -> SocketAddr {
        match (transport, self.typed.via.as_ref()) {
            (Transport::Udp, Some(via)) => via_udp_destination(via, source),
            (Transport::Udp, None) | (Transport::Tcp | Transport::Tls, _) => source,
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(256 + self.body.len());
        let _ = write!(Writer(&mut out), "{} {} SIP/2.0\r\n", self.method, self.uri.default_print_ctx());
        write_headers_and_body(&mut out, &self.headers, &self.body);
        out.freeze()
    }
}

impl Response {
    pub fn cseq(&self) -> Option<CSeq> {
        cseq_of(&self.headers)
    }

    pub fn top_via(&self) -> Option<Via> {
        top_via_of(&self.headers).map(|(via, _)| via)
    }

    /// The To header (its tag names the far end's side of the dialog).
    pub fn to(&self) -> Option<FromTo> {
        from_to_of(&self.headers, Name::TO)
    }

    /// The URI of the first Contact: the remote target of a dialog (RFC 3261 §12.1.2).
    pub fn first_contact(&self) -> Option<SipUri> {
        first_contact(&self.headers)
    }

    pub fn branch(&self) -> Option<String> {
        self.top_via()?.params.get_val("branch").map(|b| b.to_string())
    }

    pub fn header(&self, name: &Name) -> Option<&str> {
        self.headers.get_raw(name).next().map(|v| v.as_str())
    }

    pub fn call_id(&self) -> Option<String> {
        self.headers.get_raw(&Name::CALL_ID).next().map(|v| v.to_string())
    }

    /// Where a response travels over UDP (RFC 3261 §18.2.2, RFC 3581 §4): back to the
    /// `received` address at the `rport` port when stamped, else the Via's sent-by port.
    pub fn udp_destination(&self, source: SocketAddr) -> SocketAddr {
        match self.top_via() {
            Some(via) => via_udp_destination(&via, source),
            None => source,
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let reason = if self.reason.is_empty() { reason_phrase(self.code) } else { &self.reason };
        let size = 40 + reason.len() + headers_len(&self.headers) + self.body.len();
        let mut out = BytesMut::with_capacity(size);
        out.put_slice(b"SIP/2.0 ");
        put_decimal(&mut out, self.code.into());
        out.put_slice(b" ");
        out.put_slice(reason.as_bytes());
        out.put_slice(b"\r\n");
        write_headers_and_body(&mut out, &self.headers, &self.body);
        out.freeze()
    }
}

/// A lone top Via's raw text with `received` (and `rport`'s value) written in as printing the
/// stamped typed Via places them (`rport` edited where it stands, `received` appended), when
/// the text is that simple: no `received` in it, and `rport` absent or (when `port` is asked
/// for) its last parameter, bare. Also where the two values are in the text. `None` otherwise:
/// the caller prints the typed Via.
fn stamped_via(raw: &str, ip: IpAddr, port: Option<u16>) -> Option<(String, Range<usize>, Option<Range<usize>>)> {
    if contains_ignore_case(raw, "received") {
        return None;
    }
    let mut text = String::with_capacity(raw.len() + 40);
    text.push_str(raw);
    let rport = match port {
        // One `rport`, at the end (it cannot overlap itself, so none in what comes before).
        Some(port)
            if raw.len() >= 6
                && raw.as_bytes()[raw.len() - 6..].eq_ignore_ascii_case(b";rport")
                && !contains_ignore_case(&raw[..raw.len() - 5], "rport") =>
        {
            text.push('=');
            let start = text.len();
            push_decimal(&mut text, port);
            Some(start..text.len())
        }
        None if !contains_ignore_case(raw, "rport") => None,
        _ => return None,
    };
    text.push_str(";received=");
    let start = text.len();
    match ip {
        // As `Ipv4Addr`'s `Display` writes it, without the formatting machinery.
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                push_decimal(&mut text, octet);
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(text, "{ip}");
        }
    }
    let received = start..text.len();
    Some((text, received, rport))
}

/// Whether `needle` (ASCII) occurs in `haystack`, ASCII case ignored.
/// Candidates are found by their first letter, in either case, eight bytes at a time.
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (haystack, needle) = (haystack.as_bytes(), needle.as_bytes());
    let Some(&first) = needle.first() else { return true };
    let mut from = 0;
    while let Some(at) = find_either(haystack, from, first.to_ascii_lowercase(), first.to_ascii_uppercase()) {
        if haystack.get(at..at + needle.len()).is_some_and(|w| w.eq_ignore_ascii_case(needle)) {
            return true;
        }
        from = at + 1;
    }
    false
}

/// `n` in decimal, as `Display` writes it, without the formatting machinery.
pub(crate) fn push_decimal(out: &mut String, n: impl Into<u64>) {
    let mut digits = [0u8; 20];
    // One `push_str`, not a `push` per digit (each encodes a `char` and checks capacity).
    out.push_str(std::str::from_utf8(decimal(&mut digits, n.into())).expect("decimal digits are ASCII"));
}

/// `n`'s decimal digits, written at the end of `digits`.
fn decimal(digits: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

/// RFC 3261 §18.2.2 and RFC 3581 §4 for one Via (see [`Response::udp_destination`]).
fn via_udp_destination(via: &Via, source: SocketAddr) -> SocketAddr {
    let ip = via.params.get_val("received").and_then(|r| r.parse::<IpAddr>().ok()).unwrap_or(source.ip());
    if let Some(port) = via.params.get_val("rport").and_then(|p| p.parse::<u16>().ok()) {
        return SocketAddr::new(ip, port);
    }
    SocketAddr::new(ip, via.sent_by.port.unwrap_or(5060))
}

impl Message {
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }
}

/// A SIP URI printed as `uri.default_print_ctx().to_string()` prints it (the form the
/// registrar keys and stores a Contact by). The common shape is written by hand, without the
/// formatter (ezk's printer cost 3.8 k instructions per REGISTER): user, host, and parameter
/// names and values of characters no ezk encode set escapes, a name or IPv4 host, no URI
/// headers, no parameter name twice. Anything else goes through ezk's printer.
pub fn print_sip_uri(uri: &SipUri) -> String {
    print_plain_sip_uri(uri).unwrap_or_else(|| uri.default_print_ctx().to_string())
}

fn print_plain_sip_uri(uri: &SipUri) -> Option<String> {
    // Alphanumerics, RFC 3986's unreserved marks and `+`: left as they are by the encode sets
    // of ezk's user and URI parameter printers.
    let plain = |s: &str| {
        s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' | b'+')
        })
    };
    if !uri.header_params.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(64);
    out.push_str(if uri.sips { "sips:" } else { "sip:" });
    match &uri.user_part {
        SipUriUserPart::Empty => {}
        SipUriUserPart::User(user) if plain(user) => {
            out.push_str(user);
            out.push('@');
        }
        _ => return None,
    }
    match &uri.host_port.host {
        Host::Name(name) => out.push_str(name),
        Host::IP4(ip) => push_ipv4(&mut out, *ip),
        Host::IP6(_) => return None,
    }
    if let Some(port) = uri.host_port.port {
        out.push(':');
        push_decimal(&mut out, port);
    }
    // `Params` has no iterator: its names come out of ezk's filtered printer, which prints
    // nothing here (the filter refuses every parameter), each then read back with `get`.
    struct Discard;
    impl std::fmt::Write for Discard {
        fn write_str(&mut self, _: &str) -> std::fmt::Result {
            Ok(())
        }
    }
    let names = std::cell::RefCell::new(String::new());
    let _ = write!(
        Discard,
        "{}",
        uri.uri_params.filtered_print(|name| {
            let mut names = names.borrow_mut();
            names.push_str(name);
            names.push(';');
            false
        })
    );
    let names = names.into_inner();
    for (i, name) in names.split_terminator(';').enumerate() {
        // A name twice (in any case: `get` may match either) is left to ezk.
        if !plain(name) || names.split_terminator(';').take(i).any(|n| n.eq_ignore_ascii_case(name)) {
            return None;
        }
        let param = uri.uri_params.get(name)?;
        if param.name.as_str() != name {
            return None;
        }
        out.push(';');
        out.push_str(name);
        if let Some(value) = &param.value {
            if !plain(value) {
                return None;
            }
            out.push('=');
            out.push_str(value);
        }
    }
    Some(out)
}

/// An IPv4 address as `Ipv4Addr`'s `Display` writes it, without the formatter.
fn push_ipv4(out: &mut String, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(out, octet);
    }
}

/// `%XX` escapes decoded (RFC 3261 §19.1.2, RFC 3986 §2.1; no `+`), `None` for a broken
/// escape or non-UTF-8: a Refer-To's user part and headers, an HTTP path.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A SIP URI from text pbx holds (a stored Contact); `None` unless all of it is one URI.
pub fn parse_sip_uri(text: &str) -> Option<SipUri> {
    let src = Bytes::copy_from_slice(text.trim().as_bytes());
    let text = std::str::from_utf8(&src).ok()?;
    if let Some(uri) = shapes::whole_sip_uri(&src, text) {
        return Some(uri);
    }
    match SipUri::parse(&src)(text) {
        Ok(("", uri)) => Some(uri),
        _ => None,
    }
}

/// One Via value from text; `None` unless all of it is one Via.
pub fn parse_via(text: &str) -> Option<Via> {
    let src = Bytes::copy_from_slice(text.trim().as_bytes());
    let text = std::str::from_utf8(&src).ok()?;
    if let Some(via) = shapes::via(&src, text) {
        return Some(via);
    }
    match <Via as ezk_sip_types::header::HeaderParse>::parse(&src, text) {
        Ok((rest, via)) if rest.trim().is_empty() => Some(via),
        _ => None,
    }
}

/// The Contact set of a REGISTER.
#[derive(Debug, Clone)]
pub enum Contacts {
    /// No Contact: a query for the current bindings.
    None,
    /// `Contact: *`: remove every binding (only valid with Expires: 0).
    Star,
    List(Vec<Contact>),
}

/// Whether `name` is Content-Length (ezk's comparison, which also tries every alias, asked
/// only of names as long as one of its forms: `Content-Length` or `l`).
fn is_content_length(name: &Name) -> bool {
    matches!(name.as_print_str().len(), 1 | 14) && *name == Name::CONTENT_LENGTH
}

/// The bytes the header lines take printed (an allocation sized once, not grown line by line).
fn headers_len(headers: &Headers) -> usize {
    headers.iter().map(|(name, value)| name.as_print_str().len() + value.len() + 4).sum()
}

fn write_headers_and_body(out: &mut BytesMut, headers: &Headers, body: &[u8]) {
    for (name, value) in headers.iter() {
        if is_content_length(name) {
            continue;
        }
        out.put_slice(name.as_print_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: ");
    put_decimal(out, body.len());
    out.put_slice(b"\r\n\r\n");
    out.put_slice(body);
}

/// `n` in decimal into a buffer, as `Display` writes it.
fn put_decimal(out: &mut BytesMut, n: usize) {
    let mut digits = [0u8; 20];
    out.put_slice(decimal(&mut digits, n as u64));
}

struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

mod shapes;

#[cfg(test)]
mod tests;

//! The proxy session actor: one per softphone connection. It reads what the softphone sends
//! and tells the [`crate::ledger`] the seed's fields — the user name, the push token, the
//! addresses, the use — and, for each new call, its destination (which the ledger records only
//! while the PBX is in debug mode).
//!
//! - REGISTER: the user is the To URI's user part (the address of record, RFC 3261 §10.2);
//!   the push token is the first Contact's `pn-prid` (RFC 8599 §4.1), if any. Nothing is told
//!   until the PBX accepts that REGISTER (its 2xx, matched by Call-ID and CSeq, seen on the way
//!   back): a stranger who sends REGISTERs with made-up user names leaves no record.
//! - INVITE outside a dialog (To without a tag), once per Call-ID, from a connection with an
//!   accepted registration: the destination is the Request-URI's user and the To display name
//!   (`"Anna Schmidt" <sip:201@…>` → `Anna Schmidt <201>`).
//! - Anything else: a use, once the user is known.
//!
//! It relays nothing (the edge does) and answers nothing. It never panics on what it reads:
//! bytes that do not parse are ignored. It reads no header but To, From, Contact and the
//! request line: nothing of the Authorization header is read, kept or logged. Uses are passed
//! on at most every [`SEEN_EVERY`] unless the user or token changed (the ledger writes a
//! last use once a minute anyway), so a chatty connection cannot flood the ledger.

use crate::ledger::{LedgerMsg, SessionSeen};
use bytes::Bytes;
use pbx_actors::proxy::{DESTINATION_BYTES_MAX, PUSH_TOKEN_BYTES_MAX, USER_BYTES_MAX};
use pbx_actors::sip::message::{Message, Method, Request, SipUriUserPart, first_contact, parse_datagram};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A use is passed on to the ledger at most this often (unless something changed).
pub const SEEN_EVERY: Duration = Duration::from_secs(30);
/// User names one connection may register; more is not a softphone (the rest are ignored).
pub const USERS_PER_CONNECTION_MAX: usize = 4;
/// Call-IDs remembered per connection, so that a call's INVITE repeated with credentials
/// records its destination once.
const RECENT_CALLS_MAX: usize = 16;

const _: () = assert!(USER_BYTES_MAX + 3 < DESTINATION_BYTES_MAX);

pub struct SessionArgs {
    pub softphone: SocketAddr,
    pub pbx: SocketAddr,
    pub pbx_serial: String,
    pub ledger: ActorRef<LedgerMsg>,
}

pub enum SessionMsg {
    /// One complete SIP message the softphone sent.
    FromPhone(Bytes),
    /// One SIP message the PBX sent the softphone (only a REGISTER's 2xx is read).
    FromPbx(Bytes),
}

// Local only; see `pbx_actors::shell` on ractor's `cluster` feature.
impl ractor::Message for SessionMsg {}

/// Starts the session actor of one softphone connection; stop it with `.stop(None)` when the
/// connection closes.
pub async fn spawn(args: SessionArgs) -> anyhow::Result<ActorRef<SessionMsg>> {
    let (actor, _) = Actor::spawn(None, SessionActor, args).await?;
    Ok(actor)
}

pub struct SessionActor;

pub struct SessionState {
    ledger: ActorRef<LedgerMsg>,
    reader: Reader,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let reader = Reader::new(args.softphone, args.pbx, args.pbx_serial);
        Ok(SessionState { ledger: args.ledger, reader })
    }

    async fn handle(
        &self,
        _me: ActorRef<SessionMsg>,
        msg: SessionMsg,
        s: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        let tells = match msg {
            SessionMsg::FromPhone(bytes) => s.reader.read(&bytes, Instant::now()),
            SessionMsg::FromPbx(bytes) => s.reader.read_from_pbx(&bytes, Instant::now()),
        };
        for tell in tells {
            let _ = s.ledger.cast(match tell {
                Tell::Seen(seen) => LedgerMsg::Seen(seen),
                Tell::Destination { pbx_serial, user, destination } => {
                    LedgerMsg::Destination { pbx_serial, user, destination }
                }
            });
        }
        Ok(())
    }
}

/// What the ledger is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tell {
    Seen(SessionSeen),
    Destination { pbx_serial: String, user: String, destination: String },
}

/// What one connection's messages say, read one by one.
#[derive(Debug)]
pub struct Reader {
    softphone: SocketAddr,
    pbx: SocketAddr,
    pbx_serial: String,
    /// The user of the last REGISTER.
    user: Option<String>,
    push_token: Option<String>,
    /// Users this connection registered.
    users: Vec<String>,
    /// The last use told: when, for whom, with which token.
    last_seen: Option<(Instant, String, Option<String>)>,
    /// Call-IDs of the latest calls the softphone made.
    recent_calls: VecDeque<String>,
    /// The REGISTER waiting for the PBX's answer: Call-ID, CSeq, user, push token.
    pending: Option<(String, u32, String, Option<String>)>,
}

impl Reader {
    pub fn new(softphone: SocketAddr, pbx: SocketAddr, pbx_serial: String) -> Reader {
        Reader {
            softphone,
            pbx,
            pbx_serial,
            user: None,
            push_token: None,
            users: Vec::new(),
            last_seen: None,
            recent_calls: VecDeque::new(),
            pending: None,
        }
    }

    /// What one message the PBX sent the softphone at `now` tells the ledger: the 2xx of the
    /// pending REGISTER makes its user and token this session's.
    pub fn read_from_pbx(&mut self, bytes: &[u8], now: Instant) -> Vec<Tell> {
        let mut tells = Vec::new();
        let Ok(Message::Response(response)) = parse_datagram(bytes) else { return tells };
        if !(200..300).contains(&response.code) {
            return tells;
        }
        let Some(cseq) = response.cseq() else { return tells };
        let call_id = response.call_id();
        let matches = self.pending.as_ref().is_some_and(|(id, number, _, _)| {
            cseq.method == Method::REGISTER && cseq.cseq == *number && call_id.as_deref() == Some(id.as_str())
        });
        if !matches {
            return tells;
        }
        let Some((_, _, user, token)) = self.pending.take() else { return tells };
        if !self.users.contains(&user) {
            if self.users.len() >= USERS_PER_CONNECTION_MAX {
                metrics::counter!("pbx_proxy_session_users_refused_total").increment(1);
                return tells;
            }
            self.users.push(user.clone());
        }
        self.push_token = token;
        self.user = Some(user);
        self.used(None, now, &mut tells);
        tells
    }

    /// What one message the softphone sent at `now` tells the ledger (nothing, for bytes that
    /// do not parse).
    pub fn read(&mut self, bytes: &[u8], now: Instant) -> Vec<Tell> {
        let mut tells = Vec::new();
        match parse_datagram(bytes) {
            Ok(Message::Request(request)) => self.request(&request, now, &mut tells),
            Ok(Message::Response(_)) => self.used(None, now, &mut tells),
            Err(_) => metrics::counter!("pbx_proxy_session_unparsed_total").increment(1),
        }
        tells
    }

    fn request(&mut self, request: &Request, now: Instant, tells: &mut Vec<Tell>) {
        if request.method == Method::REGISTER {
            let Some(user) = to_user(request) else { return };
            let (Some(call_id), Some(cseq)) = (request.call_id_str(), request.cseq_ref()) else { return };
            // Told once the PBX accepts it (`read_from_pbx`).
            self.pending = Some((call_id.chars().take(128).collect(), cseq.cseq, user, push_token(request)));
            self.used(None, now, tells);
        } else if request.method == Method::INVITE {
            // Only a registered softphone's calls: a stranger's INVITE leaves no record.
            let Some(caller) = self.user.clone() else { return };
            // Outside a dialog, and once per Call-ID: the INVITE repeated with credentials
            // after the PBX's challenge is the same call.
            let new_call = request.to_ref().is_some_and(|to| to.tag.is_none()) && self.new_call(request.call_id_str());
            if new_call && let Some(destination) = destination(request) {
                tells.push(Tell::Destination {
                    pbx_serial: self.pbx_serial.clone(),
                    user: caller.clone(),
                    destination,
                });
            }
            self.used(Some(caller), now, tells);
        } else {
            self.used(None, now, tells);
        }
    }

    /// Whether `call_id` names a call not yet seen (the last [`RECENT_CALLS_MAX`] are kept).
    fn new_call(&mut self, call_id: Option<&str>) -> bool {
        let Some(call_id) = call_id else { return true };
        if self.recent_calls.iter().any(|c| c == call_id) {
            return false;
        }
        if self.recent_calls.len() >= RECENT_CALLS_MAX {
            self.recent_calls.pop_front();
        }
        self.recent_calls.push_back(call_id.chars().take(128).collect());
        true
    }

    /// Tells a use, for the known user (or `user`, when none is known), unless one was told
    /// less than [`SEEN_EVERY`] ago with the same user and token.
    fn used(&mut self, user: Option<String>, now: Instant, tells: &mut Vec<Tell>) {
        let Some(user) = self.user.clone().or(user) else { return };
        if let Some((at, last_user, last_token)) = &self.last_seen
            && now.saturating_duration_since(*at) < SEEN_EVERY
            && *last_user == user
            && *last_token == self.push_token
        {
            return;
        }
        self.last_seen = Some((now, user.clone(), self.push_token.clone()));
        tells.push(Tell::Seen(SessionSeen {
            softphone: self.softphone,
            pbx: self.pbx,
            pbx_serial: self.pbx_serial.clone(),
            user,
            push_token: self.push_token.clone(),
        }));
    }
}

fn user_of(part: &SipUriUserPart) -> Option<String> {
    match part {
        SipUriUserPart::User(user) if !user.is_empty() && user.len() <= USER_BYTES_MAX => Some(user.to_string()),
        _ => None,
    }
}

/// The To URI's user part: the address of record a REGISTER names.
fn to_user(request: &Request) -> Option<String> {
    user_of(&request.to_ref()?.uri.uri.user_part)
}

/// The first Contact's `pn-prid`, if it has one that fits.
fn push_token(request: &Request) -> Option<String> {
    let contact = first_contact(&request.headers)?;
    let token = contact.uri_params.get_val("pn-prid")?;
    (!token.is_empty() && token.len() <= PUSH_TOKEN_BYTES_MAX).then(|| token.to_string())
}

/// `Display Name <user>` from the To display name and the Request-URI user, or the user alone.
fn destination(request: &Request) -> Option<String> {
    let number = user_of(&request.uri.user_part)?;
    let name = request.to_ref().and_then(|to| to.uri.name.as_ref()).map(|n| display_name(n)).unwrap_or_default();
    // The name is cut so that the whole fits the ledger's bound (`<`, `>` and a space).
    let budget = DESTINATION_BYTES_MAX - number.len() - 3;
    let mut cut = name.len().min(budget);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let name = name[..cut].trim_end();
    Some(if name.is_empty() { number } else { format!("{name} <{number}>") })
}

/// A display name as a person reads it: quotes and escapes removed, control characters and
/// angle brackets dropped, whitespace collapsed.
fn display_name(raw: &str) -> String {
    let raw = raw.trim();
    let raw = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(raw);
    let mut out = String::new();
    let mut escaped = false;
    for c in raw.chars() {
        if c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        escaped = false;
        if c.is_control() || c == '<' || c == '>' {
            continue;
        }
        if c.is_whitespace() && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(if c.is_whitespace() { ' ' } else { c });
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests;

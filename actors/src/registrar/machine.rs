//! The registrar as a sans-IO machine: REGISTER processing (RFC 3261 §10.3) with digest
//! authentication (RFC 7616, RFC 8760), bindings that expire on the injected clock, the
//! extension directory, and blocking of password guessing that spoofing cannot turn against
//! users ([`super::blocking`]).
//!
//! Time comes in as `now`, randomness from the 256-bit secret handed in at construction (the
//! node reads it from the OS, the simulator from its seed), and every durable change goes out
//! as [`RegistrarOutput::Persist`] before the response that depends on it. See [`Registrar`]
//! for the calling contract.
//!
//! Digest answers (RFC 3261 §22, RFC 7616), REGISTER and INVITE alike, in this order:
//! - no credentials for our realm, an algorithm we did not offer, `userhash`, no `qop` (unless
//!   `allow_rfc2069`), a malformed `qop`/`nc`, or a nonce not minted for the address the
//!   answer comes from (forged, or fetched elsewhere: a spoofer's): a fresh challenge, and
//!   nothing counted against anybody;
//! - the (source, user) pair or the source's prefix blocked, and the address not trusted for
//!   the user: 403, not counted again;
//! - `uri` not the Request-URI (§19.1.4 comparison): 400, counted as a failure;
//! - a wrong digest, an unknown user, or a locked user from an untrusted address: the same
//!   fresh challenge, counted as a failure;
//! - a right digest on an expired nonce: a challenge with `stale=true`; a nonce count not
//!   above the last: a fresh challenge.
//!
//! Deliberate choices, each allowed by RFC 3261 §10.3:
//! - Any Request-URI domain is ours (step 1): one PBX, one realm.
//! - The authenticated user must be the AOR (step 4): `username` in the credentials equals the
//!   user part of To, else 403.
//! - Call-ID/CSeq ordering (step 6): a REGISTER whose Call-ID matches a binding's and whose
//!   CSeq is not higher is refused with 500 and changes nothing.
//! - Contacts are matched by their printed URI, not by the full §19.1.4 comparison.
//! - More than [`BINDINGS_PER_AOR_MAX`] bindings for one AOR: the REGISTER is refused with
//!   403 "Too Many Contacts" and changes nothing.
//! - Expiry: a Contact `expires` param wins over the Expires header; neither gives
//!   `default_expires_s`; values above `max_expires_s` are lowered to it; `0 < e <
//!   min_expires_s` is refused with 423 and Min-Expires (step 7).
//! - The 200 lists every current binding with its remaining seconds (step 8); no Date header,
//!   since the machine reads no clock.
//!
//! Not done here: RFC 5626 outbound (`reg-id`, `+sip.instance`), GRUU (RFC 5627), Path
//! (RFC 3327), and `Require` option tags (step 2: we support none, and do not check).

use super::blocking::{self, Guard, Limits};
use super::digest::{self, Algorithm, Credentials, Minted, NonceKey, QopAuth};
use super::forwarding::{self, FeatureCode, Forwarding};
use super::nat;
use crate::sip::message::{Contacts, Method, Name, SipUriUserPart, print_sip_uri, push_decimal};
use crate::sip::{Request, Response, Transport};
use crate::time::Timestamp;
use bytesstr::BytesStr;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Contacts one AOR may have at once.
pub const BINDINGS_PER_AOR_MAX: usize = 10;
/// Extensions in the directory; with [`BINDINGS_PER_AOR_MAX`] this bounds all bindings.
pub const EXTENSIONS_MAX: usize = 10_000;
/// Used nonces whose highest nonce count we remember; the oldest are forgotten first.
pub const NONCES_TRACKED_MAX: usize = 16_384;
/// Nonces this registrar minted most recently, remembered with what verifying them gives, so
/// the answer to a challenge is recognised without its HMAC computed a second time; the oldest
/// are forgotten first (about 100 bytes each, no allocation per entry). A nonce not remembered
/// (older, or minted before a restart) is verified by its HMAC, with the same answer.
pub const NONCES_MINTED_REMEMBERED_MAX: usize = 2_048;
/// Longest extension number; numbers are `[0-9A-Za-z_.-]`.
pub const NUMBER_CHARS_MAX: usize = 32;
pub const DISPLAY_NAME_CHARS_MAX: usize = 64;
pub const PASSWORD_CHARS_MIN: usize = 8;
pub const PASSWORD_CHARS_MAX: usize = 128;
/// Longest Contact URI we bind; longer is refused with 400.
pub const CONTACT_CHARS_MAX: usize = 512;
/// User-Agent is kept up to this many characters.
pub const USER_AGENT_CHARS_MAX: usize = 128;
/// A claimed user name is reported in events up to this many characters.
pub const CLAIMED_USER_CHARS_MAX: usize = 64;

const _: () = assert!(PASSWORD_CHARS_MIN < PASSWORD_CHARS_MAX);
const _: () = assert!(
    BINDINGS_PER_AOR_MAX > 0 && EXTENSIONS_MAX > 0 && NONCES_TRACKED_MAX > 0 && NONCES_MINTED_REMEMBERED_MAX > 0
);

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistrarConfig {
    /// The digest realm. Changing it invalidates every stored HA1 (the realm is hashed in).
    pub realm: String,
    pub min_expires_s: u32,
    pub max_expires_s: u32,
    pub default_expires_s: u32,
    pub nonce_lifetime_s: u32,
    /// Failures per (source, user) within the window that block that user's authentication
    /// from that source for `block_s`; 0 never blocks. At most
    /// [`blocking::AUTH_FAILURES_LIMIT_MAX`].
    pub auth_failures_max: u32,
    /// Failures per user, from all sources, within the window that lock the user (except
    /// from addresses it recently authenticated from) for `block_s`; 0 never locks. At most
    /// [`blocking::AUTH_FAILURES_LIMIT_MAX`].
    pub user_auth_failures_max: u32,
    pub auth_failure_window_s: u32,
    pub block_s: u32,
    /// Accept digest answers without `qop` (RFC 2069): they carry no nonce count, so a captured
    /// answer can be replayed for the nonce's lifetime. Off unless old phones need it.
    pub allow_rfc2069: bool,
    /// How long refreshes that change only expiry and CSeq wait before being persisted.
    pub refresh_flush_s: u32,
    /// The algorithms challenged with, in order of preference (RFC 8760 §2.4). SHA-256 first
    /// is the RFC's advice; clients that take the first challenge blindly and know only MD5
    /// (SIPp, some older phones) need MD5 first. An algorithm not listed is refused.
    pub digest_algorithms: Vec<Algorithm>,
    /// Numbers that are conference rooms: an INVITE to one is routed to the room (pbx
    /// answers it), after the caller authenticated like for any call.
    pub rooms: std::collections::BTreeSet<String>,
    /// Ring groups by number (`[[groups]]`): an INVITE to one rings its members
    /// ([`super::groups`]).
    #[serde(default)]
    pub groups: BTreeMap<String, super::groups::Group>,
    /// Call park's orbits: a call transferred to one is parked there; dialling one takes the
    /// call parked there. An extension of the same number (made through the API) wins.
    pub park_orbits: std::collections::BTreeSet<String>,
    /// RFC 8599 push providers pbx pushes through (`fcm`, `apns`, `apns.dev`); empty: push is
    /// off and `pn-*` Contact parameters are ignored.
    pub push_providers: Vec<String>,
    /// How long before a push binding expires its refresh push is due (RFC 8599 §5.6: the
    /// app, asleep, registers again only when pushed); at most half the binding's lifetime.
    /// An app that refreshes on its own (`+sip.pnsreg`) is told to do so
    /// [`PNSREG_MARGIN_S`] earlier, so the push only ever reaches one that did not.
    pub push_refresh_before_s: u32,
}

/// How much earlier than the refresh push an app that registered with `+sip.pnsreg` is asked to
/// refresh on its own (the value of the `+sip.pnsreg` feature-capability indicator is
/// `push_refresh_before_s` plus this).
pub const PNSREG_MARGIN_S: u32 = 10;

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            realm: "pbx".into(),
            min_expires_s: 60,
            max_expires_s: 3600,
            default_expires_s: 3600,
            nonce_lifetime_s: 300,
            auth_failures_max: 5,
            user_auth_failures_max: 20,
            auth_failure_window_s: 60,
            block_s: 300,
            allow_rfc2069: false,
            refresh_flush_s: 5,
            digest_algorithms: Algorithm::PREFERENCE.to_vec(),
            rooms: Default::default(),
            groups: Default::default(),
            park_orbits: Default::default(),
            push_providers: Vec::new(),
            push_refresh_before_s: 120,
        }
    }
}

impl RegistrarConfig {
    /// Made consistent instead of refused: `1 <= min <= default <= max`, lifetime at least 1 s.
    fn sanitized(mut self) -> Self {
        self.max_expires_s = self.max_expires_s.max(1);
        self.min_expires_s = self.min_expires_s.clamp(1, self.max_expires_s);
        self.default_expires_s = self.default_expires_s.clamp(self.min_expires_s, self.max_expires_s);
        self.nonce_lifetime_s = self.nonce_lifetime_s.max(1);
        self.auth_failures_max = self.auth_failures_max.min(blocking::AUTH_FAILURES_LIMIT_MAX);
        self.user_auth_failures_max = self.user_auth_failures_max.min(blocking::AUTH_FAILURES_LIMIT_MAX);
        let mut seen = Vec::new();
        self.digest_algorithms.retain(|a| {
            !seen.contains(a) && {
                seen.push(*a);
                true
            }
        });
        if self.digest_algorithms.is_empty() {
            self.digest_algorithms = Algorithm::PREFERENCE.to_vec();
        }
        self
    }
}

/// A directory entry. Holds HA1s, never the password; `Debug` redacts even those.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extension {
    pub number: String,
    pub display_name: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
}

impl fmt::Debug for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extension")
            .field("number", &self.number)
            .field("display_name", &self.display_name)
            .field("ha1_md5", &"<redacted>")
            .field("ha1_sha256", &"<redacted>")
            .finish()
    }
}

impl Extension {
    fn ha1(&self, algorithm: Algorithm) -> &str {
        match algorithm {
            Algorithm::Md5 => &self.ha1_md5,
            Algorithm::Sha256 => &self.ha1_sha256,
        }
    }
}

/// Where one contact of an AOR can be reached, and until when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    pub aor: String,
    pub contact: String,
    pub expires_at: Timestamp,
    pub call_id: String,
    pub cseq: u32,
    /// Where the REGISTER came from: the way back to a phone behind NAT.
    pub source: SocketAddr,
    pub transport: Transport,
    pub user_agent: Option<String>,
    /// NAT was detected when it registered (`super::nat`): its calls go to `source`, not to
    /// the Contact. A flag, not the REGISTER's Via: no more personal data than before.
    pub nat: bool,
}

impl Binding {
    /// Whether this binding is about a data subject: its extension, or (an address) its source
    /// or the host of its contact.
    pub fn involves(&self, subject: &crate::privacy::Subject) -> bool {
        use crate::privacy::Subject;
        match subject {
            Subject::Number(n) => self.aor == *n,
            Subject::Ip(ip) => {
                self.source.ip().to_canonical() == *ip
                    || crate::privacy::uri_host(&self.contact)
                        .and_then(|h| h.parse::<IpAddr>().ok())
                        .is_some_and(|h| h.to_canonical() == *ip)
            }
        }
    }
}

/// Durable changes: the shell applies them to storage (redb) *before* it sends the response that
/// depends on them. Shaped as commands so the cluster can later replicate them with openraft
/// unchanged.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RegistrarCommand {
    PutExtension(Extension),
    RemoveExtension {
        number: String,
    },
    PutBinding(Binding),
    RemoveBinding {
        aor: String,
        contact: String,
    },
    /// `number`'s call forwarding (issue 18); all off removes it. Appended last, so every
    /// command stored or replicated before it reads as it was written.
    SetForwarding {
        number: String,
        forwarding: Forwarding,
    },
    /// `member` logged in to (or out of) ring group `group` (issue 18). Appended last too.
    GroupLogin {
        group: String,
        member: String,
        logged_in: bool,
    },
}

/// What the registrar is fed. `PutExtension` carries a password: no `Debug` for this type.
// An input is moved straight into `handle` and never stored, so a boxed Request would only add
// an allocation per REGISTER.
#[allow(clippy::large_enum_variant)]
pub enum RegistrarInput {
    Register {
        tx: u64,
        request: Request,
        source: SocketAddr,
        transport: Transport,
    },
    /// A new INVITE from a phone: authenticate the caller (407, RFC 3261 §22.3), then find the
    /// dialled extension's contacts. Answered by `Respond` (407, 403, 404, 480) or `Routed`.
    Route {
        tx: u64,
        request: Request,
        source: SocketAddr,
    },
    /// From the admin API; answered by `Event(ExtensionChanged)` or `Event(ExtensionInvalid)`.
    PutExtension {
        number: String,
        password: String,
        display_name: String,
    },
    /// Answered like `PutExtension`; an unknown number is `NoSuchExtension`.
    RemoveExtension {
        number: String,
    },
    /// Rectification (GDPR Art. 16): a new display name, the password unchanged. Answered like
    /// `PutExtension`.
    Rename {
        number: String,
        display_name: String,
    },
    /// From the admin API: `number`'s call forwarding. Answered by `Event(ForwardingChanged)`,
    /// `Event(ExtensionInvalid)` (the reason names the field) or `Event(NoSuchExtension)`.
    SetForwarding {
        number: String,
        forwarding: Forwarding,
    },
    /// Erasure of an IP address: every binding whose source or contact host is `ip` goes.
    /// Answered by `Event(AddressForgotten)`.
    ForgetAddress {
        ip: IpAddr,
    },
    /// An authentication failure found elsewhere (a conference PIN keyed wrong three times):
    /// counted for the (source, user) pair as a wrong password would be, and blocked alike.
    AuthFailure {
        source: IpAddr,
        user: String,
    },
    /// The push service answered that `aor`'s push token `prid` is no longer valid (FCM
    /// `UNREGISTERED`, APNs 410): the bindings registered with it go (RFC 8599 §5.5's advice;
    /// the app registers afresh with a new token when it runs).
    DropPushToken {
        aor: String,
        prid: String,
    },
    /// Changes another cluster node made and the cluster committed: applied to memory as they
    /// are (the log's order is the truth), never persisted again. No output.
    Replicated(Vec<RegistrarCommand>),
    /// The time `poll_timeout` asked for has come (or passed).
    Timeout,
}

#[derive(Debug)]
pub enum RegistrarOutput {
    /// Durable change; comes out *before* the Respond it guards.
    Persist(RegistrarCommand),
    /// The response for the REGISTER (or INVITE) that arrived with `tx`.
    Respond {
        tx: u64,
        response: Response,
        /// False when the request did not prove who sent it (a challenge, a blocked source, a
        /// REGISTER without an AOR): the endpoint answers such requests statelessly, keeping
        /// no transaction and retransmitting nothing (docs/SECURITY.md).
        authenticated: bool,
    },
    /// The INVITE that arrived with `tx` may go on: who calls, whom, and where that one is.
    Routed {
        tx: u64,
        route: Route,
    },
    Event(RegistrarEvent),
}

/// Where an authenticated INVITE goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// The authenticated caller's extension (never the From header's claim).
    pub caller: String,
    pub caller_display_name: String,
    /// The dialled extension (the Request-URI's user): the call record's callee.
    pub callee: String,
    /// The extension whose phones ring: the callee, or where its forwarding leads
    /// ([`forwarding`]).
    pub target: String,
    /// Every current binding of the target, in the order they were first bound (forked to all).
    pub contacts: Vec<Binding>,
    /// The callee is a conference room (`contacts` is empty): pbx answers the call itself.
    pub room: bool,
    /// Where the call goes next when the target's phones are busy or do not answer.
    pub forwards: Forwards,
    /// An intercom call ([`INTERCOM_PREFIX`]): the target's phones are asked to answer by
    /// themselves, forwarding is not followed, and the call lasts at most
    /// `call::b2bua::INTERCOM_MAX`.
    pub intercom: bool,
    /// A directed pickup ([`PICKUP_PREFIX`]): the caller takes the call ringing this extension,
    /// if any (`contacts` is empty).
    pub pickup: Option<String>,
    /// An INVITE with `Replaces` (RFC 3891): the caller takes the place of the leg it names
    /// (`contacts` is empty).
    pub replaces: Option<crate::sip::replaces::Replaces>,
    /// Call park's orbit (`RegistrarConfig::park_orbits`): dialled, the caller takes the call
    /// parked there (`contacts` is empty); as a transfer's target, the call is parked there.
    pub park: Option<String>,
}

/// Dialled before an extension's number, calls it as an intercom (FreePBX's `*80`).
pub const INTERCOM_PREFIX: &str = "*80";
/// Dialled before an extension's number, picks up the call ringing it (Asterisk's `**`).
pub const PICKUP_PREFIX: &str = "**";

/// A target's busy and no-answer forwards, resolved when the call starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forwards {
    pub busy: Option<Forward>,
    /// Where the call goes when nobody answers, in turn: each with how long the phones before
    /// it ring. One for an extension's forward; a hunt group's members, then its own forward.
    pub no_answer: Vec<(Duration, Forward)>,
    /// Busy phones move the call on to the next of `no_answer` too (a hunt group), rather than
    /// ending it with 486 when there is no `busy` forward.
    pub busy_moves_on: bool,
}

impl Forwards {
    /// Every contact of every forward (busy first): a B-leg each, should the call get there.
    pub fn contacts(&self) -> usize {
        self.busy.iter().chain(self.no_answer.iter().map(|(_, f)| f)).map(|f| f.contacts.len()).sum()
    }
}

/// One forward of a call: the extension that rings then, and its phones.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    pub target: String,
    pub contacts: Vec<Binding>,
}

impl Route {
    /// A plain call from `caller` to `callee`, ringing `target`'s `contacts`: no room, no
    /// forwards, no intercom, no pickup (set those on the result).
    fn plain(
        caller: String,
        caller_display_name: String,
        callee: String,
        target: String,
        contacts: Vec<Binding>,
    ) -> Route {
        Route {
            caller,
            caller_display_name,
            callee,
            target,
            contacts,
            room: false,
            forwards: Forwards::default(),
            intercom: false,
            pickup: None,
            replaces: None,
            park: None,
        }
    }

    /// A route from `caller` (no display name) to the extension `callee`'s `contacts`.
    #[cfg(test)]
    pub(crate) fn extension(caller: &str, callee: &str, contacts: Vec<Binding>) -> Route {
        Route::plain(caller.into(), String::new(), callee.into(), callee.into(), contacts)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrarEvent {
    Registered {
        aor: String,
        contact: String,
    },
    Unregistered {
        aor: String,
        contact: String,
    },
    Expired {
        aor: String,
        contact: String,
    },
    /// Wrong password, a user that does not exist, a locked user, or a `uri` that is not the
    /// Request-URI: deliberately one event.
    AuthFailed {
        source: IpAddr,
        user: String,
    },
    /// `user`'s authentication from `source` (an IPv4 address or IPv6 /64) is refused until
    /// `until`, except from addresses it recently authenticated from.
    Blocked {
        source: IpAddr,
        user: String,
        until: Timestamp,
    },
    /// `user` failed too often from all sources together: locked until `until` except from
    /// addresses it recently authenticated from. `source` made the failure that locked it.
    UserLocked {
        user: String,
        source: IpAddr,
        until: Timestamp,
    },
    /// The (source, user) table was full of active records, and failures counted against this
    /// prefix reached the limit: every untrusted answer from it is refused until `until`.
    PrefixBlocked {
        prefix: IpAddr,
        len: u8,
        until: Timestamp,
    },
    /// A failure no source table had room for (it still counted against its user).
    FailureUntracked {
        source: IpAddr,
    },
    /// Credentials that prove nothing either way, answered with a fresh challenge and counted
    /// against nobody: `reason` is `"nonce"` (not minted for this source: forged, or fetched
    /// from another address, as a spoofer's are), `"qop"`, `"algorithm"`, `"opaque"`.
    /// `source` is only what the packet claims.
    AuthIgnored {
        source: IpAddr,
        reason: &'static str,
    },
    /// A REGISTER or INVITE answered with an error other than a plain challenge or an
    /// `AuthFailed` (for INVITE: 403, 404 unknown number, 480 nobody registered).
    Rejected {
        source: IpAddr,
        method: &'static str,
        code: u16,
    },
    /// A contact with RFC 8599 push parameters registered (new or refreshed): a call waiting for
    /// this phone to wake may now send it its INVITE.
    PushContactRegistered {
        binding: Box<Binding>,
    },
    /// A push binding comes close to its expiry unrefreshed (`push_refresh_before_s`): push the
    /// app so it registers again (RFC 8599 §5.6). Once per registration.
    PushRefreshDue {
        binding: Box<Binding>,
    },
    ExtensionChanged {
        number: String,
    },
    /// `number`'s forwarding is now this (by API, or by its phone's feature code).
    ForwardingChanged {
        number: String,
        forwarding: Forwarding,
    },
    /// An admin request refused; `reason` starts with the field it is about.
    ExtensionInvalid {
        reason: String,
    },
    /// An admin request about an extension that does not exist.
    NoSuchExtension {
        number: String,
    },
    /// `ForgetAddress` removed this many bindings.
    AddressForgotten {
        bindings: usize,
    },
}

/// The result of checking a request's credentials.
enum Auth {
    /// The credentials verify; the user they name.
    Ok { user: String },
    /// Answer 401/407 with fresh challenges; count nothing. `ignored`: why credentials that
    /// were there proved nothing.
    Challenge { stale: bool, ignored: Option<&'static str> },
    /// A digest that does not verify, a user that does not exist, or a locked user: answer
    /// like a challenge, and count it (against the user too when `count_user`).
    Failed { user: String, count_user: bool },
    /// The pair or prefix is blocked: 403, counted nothing.
    Blocked,
    /// `uri` is not the Request-URI: 400, counted like a failure.
    WrongUri { user: String, count_user: bool },
}

/// What a REGISTER's contacts said about push (RFC 8599), for the 200's `Feature-Caps`.
#[derive(Default)]
struct Pushes {
    /// The providers named (`pn-provider`), each once.
    providers: Vec<String>,
    /// A push contact carried `+sip.pnsreg`: the app refreshes on its own (§4.1.4).
    pnsreg: bool,
}

/// Why a REGISTER is refused after authentication.
struct Refusal {
    code: u16,
    reason: Option<&'static str>,
}

impl Refusal {
    fn code(code: u16) -> Refusal {
        Refusal { code, reason: None }
    }
}

/// The registrar.
///
/// Calling contract: after [`Registrar::new`] and after every [`Registrar::handle`], drain
/// [`Registrar::poll_output`] until `None` and perform the outputs in order (a `Persist` must be
/// durable before a later `Respond` is sent), then call `handle(now, Timeout)` no later than
/// [`Registrar::poll_timeout`]. `now` should not go backwards; if it does (a wall clock
/// stepped back) the machine treats it as the latest time it has seen. Deterministic: the same
/// seed and inputs give the same outputs.
pub struct Registrar {
    config: RegistrarConfig,
    rng: StdRng,
    nonce_key: NonceKey,
    /// Keys the To tag: the same Call-ID always gets the same tag, whoever it claims to be.
    to_tag_key: u64,
    /// HA1s for users that do not exist, so that checking them costs what a real check costs.
    dummy_ha1_md5: String,
    dummy_ha1_sha256: String,
    extensions: BTreeMap<String, Extension>,
    /// Per AOR, in the order the contacts were first bound.
    bindings: BTreeMap<String, Vec<Binding>>,
    /// Every binding by its expiry: (expires_at, aor, contact).
    expiries: BTreeSet<(Timestamp, String, String)>,
    /// Push bindings (RFC 8599) by when their refresh push is due: (due, aor, contact). An
    /// entry goes when it comes due (one push per registration), or with its binding.
    refreshes: BTreeSet<(Timestamp, String, String)>,
    /// The due time of each entry of `refreshes`, by (aor, contact).
    refresh_at: BTreeMap<(String, String), Timestamp>,
    /// Bindings whose stored copy is behind: refreshed in memory, or a failed write.
    dirty_bindings: BTreeSet<(String, String)>,
    /// Extensions whose stored copy is behind (a failed write).
    dirty_extensions: BTreeSet<String>,
    /// Call forwarding by extension; only extensions that exist, only forwarding that is on.
    forwarding: BTreeMap<String, Forwarding>,
    /// Extensions whose stored forwarding is behind (a failed write).
    dirty_forwarding: BTreeSet<String>,
    /// (group, member) pairs logged out of their group: those members are not rung.
    logged_out: BTreeSet<(String, String)>,
    flush_at: Option<Timestamp>,
    /// Used nonces → highest nonce count seen. Nonces start with their mint time as fixed-width
    /// hex, so this map's order is mint order and the first entry is the oldest.
    nonces: BTreeMap<String, u32>,
    /// Mint time of the newest nonce forgotten to make room: a valid nonce minted no later and
    /// not tracked may have been used, so it is treated as stale.
    nonces_forgotten_until: Option<Timestamp>,
    /// The last `HA2` computed: (algorithm, method, digest URI, HA2). One entry, replaced on a
    /// miss.
    last_ha2: Option<(Algorithm, String, String, String)>,
    /// Recently minted nonces (their text) → the source group each went to and what verifying
    /// it gives; text order is mint order, so the first is the oldest.
    minted: BTreeMap<[u8; digest::NONCE_CHARS], (IpAddr, Minted)>,
    guard: Guard,
    outputs: VecDeque<RegistrarOutput>,
    last_now: Timestamp,
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrar")
            .field("extensions", &self.extensions.len())
            .field("bindings", &self.binding_count())
            .field("nonces", &self.nonces.len())
            .field("guard_tables", &self.guard.sizes())
            .finish_non_exhaustive()
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

impl Registrar {
    /// Restores the registrar from storage. Bindings already expired at `now` (or whose
    /// extension is gone, or beyond [`BINDINGS_PER_AOR_MAX`]) are dropped and come out as
    /// `Persist(RemoveBinding)`: drain `poll_output` after this.
    /// `secret`: 256 bits the nonce key, dummy hashes and nonce randomness come from; the node
    /// reads them from the OS at every start (nonces of a previous run are then refused as not
    /// ours, and phones simply answer the fresh challenge), the simulator from its seed.
    pub fn new(
        config: RegistrarConfig,
        secret: [u8; 32],
        extensions: Vec<Extension>,
        bindings: Vec<Binding>,
        now: Timestamp,
    ) -> Registrar {
        let mut rng = StdRng::from_seed(secret);
        let secret: [u8; 32] = rng.random();
        let dummy_md5: [u8; 16] = rng.random();
        let dummy_sha: [u8; 32] = rng.random();
        let to_tag_key: u64 = rng.random();
        let config = config.sanitized();
        let limits = Limits {
            pair_failures_max: config.auth_failures_max,
            user_failures_max: config.user_auth_failures_max,
            window: secs(config.auth_failure_window_s),
            block: secs(config.block_s),
            trust: secs(config.max_expires_s),
        };
        let mut registrar = Registrar {
            config,
            rng,
            nonce_key: NonceKey::new(secret),
            to_tag_key,
            dummy_ha1_md5: hex::encode(dummy_md5),
            dummy_ha1_sha256: hex::encode(dummy_sha),
            extensions: extensions.into_iter().map(|e| (e.number.clone(), e)).collect(),
            bindings: BTreeMap::new(),
            expiries: BTreeSet::new(),
            refreshes: BTreeSet::new(),
            refresh_at: BTreeMap::new(),
            dirty_bindings: BTreeSet::new(),
            dirty_extensions: BTreeSet::new(),
            forwarding: BTreeMap::new(),
            dirty_forwarding: BTreeSet::new(),
            logged_out: BTreeSet::new(),
            flush_at: None,
            nonces: BTreeMap::new(),
            last_ha2: None,
            minted: BTreeMap::new(),
            nonces_forgotten_until: None,
            guard: Guard::new(limits, EXTENSIONS_MAX),
            outputs: VecDeque::new(),
            last_now: now,
        };
        for binding in bindings {
            let list = registrar.bindings.get(&binding.aor).map_or(&[][..], |l| l.as_slice());
            let duplicate = list.iter().any(|b| b.contact == binding.contact);
            if binding.expires_at <= now
                || !registrar.extensions.contains_key(&binding.aor)
                || (!duplicate && list.len() >= BINDINGS_PER_AOR_MAX)
            {
                registrar.persist(RegistrarCommand::RemoveBinding { aor: binding.aor, contact: binding.contact });
                continue;
            }
            registrar.put_binding(binding);
        }
        registrar
    }

    /// The forwarding restored from storage (of extensions that exist; the rest is dropped
    /// and comes out as `Persist`: drain `poll_output` after this).
    pub fn with_forwarding(mut self, forwarding: Vec<(String, Forwarding)>) -> Registrar {
        for (number, f) in forwarding {
            if self.extensions.contains_key(&number) && !f.is_off() {
                self.forwarding.insert(number, f);
            } else {
                self.persist(RegistrarCommand::SetForwarding { number, forwarding: Forwarding::default() });
            }
        }
        self
    }

    /// The group members logged out, as stored.
    pub fn with_logged_out(mut self, logged_out: Vec<(String, String)>) -> Registrar {
        self.logged_out.extend(logged_out);
        self
    }

    /// The groups `member` is logged out of.
    pub fn logged_out_of(&self, member: &str) -> Vec<String> {
        self.logged_out.iter().filter(|(_, m)| m == member).map(|(group, _)| group.clone()).collect()
    }

    /// Whether `member` is logged in to `group` (members are, unless they logged out).
    pub fn logged_in(&self, group: &str, member: &str) -> bool {
        !self.logged_out.contains(&(group.to_owned(), member.to_owned()))
    }

    /// The forwarding of `number` (all off when it has none).
    pub fn forwarding_of(&self, number: &str) -> Forwarding {
        self.forwarding.get(number).cloned().unwrap_or_default()
    }

    /// Every extension's forwarding that is on.
    pub fn forwarding(&self) -> impl Iterator<Item = (&String, &Forwarding)> {
        self.forwarding.iter()
    }

    pub fn handle(&mut self, now: Timestamp, input: RegistrarInput) {
        let now = now.max(self.last_now);
        self.last_now = now;
        self.expire_due(now);
        self.refresh_due(now);
        match input {
            RegistrarInput::Register { tx, request, source, transport } => {
                self.register(now, tx, &request, source, transport)
            }
            RegistrarInput::Route { tx, request, source } => self.route(now, tx, &request, source),
            RegistrarInput::PutExtension { number, password, display_name } => {
                self.put_extension(&number, &password, &display_name)
            }
            RegistrarInput::RemoveExtension { number } => self.remove_extension(&number),
            RegistrarInput::Rename { number, display_name } => self.rename(&number, &display_name),
            RegistrarInput::SetForwarding { number, forwarding } => self.set_forwarding(&number, forwarding),
            RegistrarInput::ForgetAddress { ip } => self.forget_address(ip),
            RegistrarInput::DropPushToken { aor, prid } => self.drop_push_token(&aor, &prid),
            RegistrarInput::AuthFailure { source, user } => self.auth_failed(now, source, user, false),
            RegistrarInput::Replicated(commands) => commands.into_iter().for_each(|c| self.replicated(c)),
            RegistrarInput::Timeout => {
                if self.flush_at.is_some_and(|at| at <= now) {
                    self.flush();
                }
                self.forget_idle(now);
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<RegistrarOutput> {
        self.outputs.pop_front()
    }

    /// The earliest binding expiry, refresh push or refresh flush.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let expiry = self.expiries.first().map(|(at, _, _)| *at);
        let refresh = self.refreshes.first().map(|(at, _, _)| *at);
        [expiry, refresh, self.flush_at].into_iter().flatten().min()
    }

    /// The shell could not store these commands: their keys are written again, from the
    /// current state, at the next flush. The REGISTER they guarded must have been answered
    /// with an error, never with 200.
    pub fn persist_failed(&mut self, commands: &[RegistrarCommand]) {
        for command in commands {
            match command {
                RegistrarCommand::PutExtension(Extension { number, .. })
                | RegistrarCommand::RemoveExtension { number } => {
                    self.dirty_extensions.insert(number.clone());
                }
                RegistrarCommand::PutBinding(Binding { aor, contact, .. })
                | RegistrarCommand::RemoveBinding { aor, contact } => {
                    self.dirty_bindings.insert((aor.clone(), contact.clone()));
                }
                RegistrarCommand::SetForwarding { number, .. } => {
                    self.dirty_forwarding.insert(number.clone());
                }
                // Memory has it; the next log-in change of that member writes it again.
                RegistrarCommand::GroupLogin { .. } => {}
            }
        }
        self.schedule_flush(self.last_now);
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values().flatten()
    }

    pub fn extensions(&self) -> impl Iterator<Item = &Extension> {
        self.extensions.values()
    }

    pub fn binding_count(&self) -> usize {
        self.expiries.len()
    }

    /// The failure and trust tables are within their bounds, for tests.
    #[cfg(test)]
    pub(crate) fn check_guard_bounds(&self) -> Result<(), String> {
        self.guard.check_bounds()
    }

    /// The structural invariants, for tests: every AOR holds 1..=[`BINDINGS_PER_AOR_MAX`]
    /// bindings with distinct contacts, each filed under its own AOR, and the expiry index
    /// holds exactly one entry per binding, at that binding's expiry.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let mut total = 0;
        for (aor, list) in &self.bindings {
            if list.is_empty() || list.len() > BINDINGS_PER_AOR_MAX {
                return Err(format!("{aor} holds {} bindings", list.len()));
            }
            let mut contacts = BTreeSet::new();
            for b in list {
                if b.aor != *aor || !contacts.insert(&b.contact) {
                    return Err(format!("{aor}: misfiled or duplicate {}", b.contact));
                }
                if !self.expiries.contains(&(b.expires_at, b.aor.clone(), b.contact.clone())) {
                    return Err(format!("{aor}: {} has no expiry entry", b.contact));
                }
            }
            total += list.len();
        }
        if self.expiries.len() != total {
            return Err(format!("{} expiry entries for {total} bindings", self.expiries.len()));
        }
        if self.refreshes.len() != self.refresh_at.len() {
            return Err(format!("{} refresh entries, {} indexed", self.refreshes.len(), self.refresh_at.len()));
        }
        for (due, aor, contact) in &self.refreshes {
            let binding = self.bindings.get(aor).and_then(|l| l.iter().find(|b| b.contact == *contact));
            let Some(binding) = binding else { return Err(format!("{aor}: refresh of {contact}, not bound")) };
            if self.refresh_at.get(&(aor.clone(), contact.clone())) != Some(due) || *due > binding.expires_at {
                return Err(format!("{aor}: refresh of {contact} at {due} misfiled"));
            }
        }
        Ok(())
    }

    /// Active blocks: of (source, user) pairs, and of prefixes (see [`super::blocking`]).
    pub fn blocked_sources(&self, now: Timestamp) -> usize {
        self.guard.blocked(now)
    }

    /// Users locked now.
    pub fn locked_users(&self, now: Timestamp) -> usize {
        self.guard.locked(now)
    }

    // ---- REGISTER (RFC 3261 §10.3) ----

    fn register(&mut self, now: Timestamp, tx: u64, request: &Request, source: SocketAddr, transport: Transport) {
        let ip = source.ip();
        if request.method != Method::REGISTER {
            return self.refuse(tx, request, ip, Refusal::code(405), false);
        }
        let Some(aor) = to_user(request) else {
            return self.refuse(tx, request, ip, Refusal::code(404), false);
        };
        let Some(user) = self.authenticated(now, tx, request, source, Name::AUTHORIZATION) else { return };
        if user != aor {
            return self.refuse(tx, request, ip, Refusal { code: 403, reason: Some("Forbidden (wrong AOR)") }, true);
        }
        match self.update_bindings(now, request, &aor, source, transport) {
            Ok(Pushes { providers, pnsreg }) => {
                let mut response = request.response(200, Some(&self.to_tag(request)));
                // RFC 8599 §5: the providers pbx pushes through for this phone; to an app that
                // refreshes on its own (§4.1.4, `+sip.pnsreg`), how long before expiry it should.
                for provider in providers {
                    let mut caps = format!("*;+sip.pns=\"{provider}\"");
                    if pnsreg {
                        let before = self.config.push_refresh_before_s.saturating_add(PNSREG_MARGIN_S);
                        caps.push_str(&format!(";+sip.pnsreg=\"{before}\""));
                    }
                    response.headers.insert_value(Name::from("Feature-Caps"), BytesStr::from(caps));
                }
                for b in self.bindings.get(&aor).into_iter().flatten() {
                    let remaining_us = b.expires_at.as_micros().saturating_sub(now.as_micros());
                    let remaining_s = remaining_us.div_ceil(1_000_000);
                    // `<contact>;expires=N`, without the formatter.
                    let mut value = String::with_capacity(b.contact.len() + 20);
                    value.push('<');
                    value.push_str(&b.contact);
                    value.push_str(">;expires=");
                    push_decimal(&mut value, remaining_s);
                    response.headers.insert_value(Name::CONTACT, BytesStr::from(value));
                }
                self.outputs.push_back(RegistrarOutput::Respond { tx, response, authenticated: true });
            }
            Err(refusal) => self.refuse(tx, request, ip, refusal, true),
        }
    }

    /// An INVITE from a phone: the caller proves who it is exactly as for REGISTER (same nonces,
    /// same blocking, same anti-enumeration), but with Proxy-Authenticate (RFC 3261 §22.3).
    /// Only then is the dialled number looked up, so strangers learn nothing about extensions.
    fn route(&mut self, now: Timestamp, tx: u64, request: &Request, source: SocketAddr) {
        let ip = source.ip();
        let Some(caller) = self.authenticated(now, tx, request, source, Name::PROXY_AUTHORIZATION) else { return };
        let callee = match &request.uri.user_part {
            SipUriUserPart::User(user) if !user.is_empty() => user.to_string(),
            _ => return self.refuse(tx, request, ip, Refusal::code(404), true),
        };
        let caller_display_name = self.extensions.get(&caller).map(|e| e.display_name.clone()).unwrap_or_default();
        if let Some(value) = request.headers.get_raw(&Name::REPLACES).next() {
            // RFC 3891: the call takes this INVITE in place of the dialog named; the calls
            // actor finds it (or answers 481).
            let Some(replaces) = crate::sip::replaces::parse_replaces(value.as_str()) else {
                return self.refuse(
                    tx,
                    request,
                    ip,
                    Refusal { code: 400, reason: Some("Bad Request (Replaces)") },
                    true,
                );
            };
            let plain = Route::plain(caller, caller_display_name, callee.clone(), callee, Vec::new());
            let route = Route { replaces: Some(replaces), ..plain };
            return self.outputs.push_back(RegistrarOutput::Routed { tx, route });
        }
        if self.config.park_orbits.contains(&callee) && !self.extensions.contains_key(&callee) {
            // Retrieval: the calls actor finds the call parked there (or answers 480).
            let plain = Route::plain(caller, caller_display_name, callee.clone(), callee.clone(), Vec::new());
            return self
                .outputs
                .push_back(RegistrarOutput::Routed { tx, route: Route { park: Some(callee), ..plain } });
        }
        if let Some(number) = callee.strip_prefix(PICKUP_PREFIX).filter(|n| self.extensions.contains_key(*n)) {
            // Directed pickup: the calls actor finds the call ringing `number`'s phones.
            let (n, contacts) = (number.to_owned(), Vec::new());
            let route =
                Route { pickup: Some(n.clone()), ..Route::plain(caller, caller_display_name, n.clone(), n, contacts) };
            return self.outputs.push_back(RegistrarOutput::Routed { tx, route });
        }
        if let Some(number) = callee.strip_prefix(INTERCOM_PREFIX).filter(|n| self.extensions.contains_key(*n)) {
            // Intercom: the extension's own phones, told to answer; never forwarded.
            let contacts = self.contacts_of(number);
            if contacts.is_empty() {
                return self.refuse(tx, request, ip, Refusal::code(480), true);
            }
            let n = number.to_owned();
            let route = Route { intercom: true, ..Route::plain(caller, caller_display_name, n.clone(), n, contacts) };
            return self.outputs.push_back(RegistrarOutput::Routed { tx, route });
        }
        if let Some(code) = super::groups::LoginCode::parse(&callee) {
            return self.group_login(tx, request, ip, &caller, code);
        }
        if let Some(code) = FeatureCode::parse(&callee) {
            return self.feature_code(tx, request, ip, &caller, code);
        }
        match self.resolve(caller, caller_display_name, callee) {
            Ok(route) => self.outputs.push_back(RegistrarOutput::Routed { tx, route }),
            Err(refusal) => self.refuse(tx, request, ip, refusal, true),
        }
    }

    /// Where a call from `caller` to the number `callee` goes: a room, a ring group, or an
    /// extension with its forwarding followed. The end of [`route`](Self::route) once the
    /// caller is known, and what a transfer's target is looked up with
    /// ([`transfer_route`](Self::transfer_route)).
    fn resolve(&self, caller: String, caller_display_name: String, callee: String) -> Result<Route, Refusal> {
        if self.config.rooms.contains(&callee) {
            return Ok(Route {
                room: true,
                ..Route::plain(caller, caller_display_name, callee.clone(), callee, Vec::new())
            });
        }
        if let Some(group) = self.config.groups.get(&callee) {
            return self.route_group(caller, caller_display_name, group);
        }
        if !self.extensions.contains_key(&callee) {
            return Err(Refusal::code(404));
        }
        // Forwarding (module `forwarding`): always, then the ringing one's busy and no answer.
        let mut visited = Vec::new();
        let mut target = forwarding::follow_always(&callee, &self.forwarding, &mut visited);
        let mut contacts = self.contacts_of(&target);
        let mut forwards = Forwards::default();
        if let Some(f) = self.forwarding.get(&target).cloned() {
            let mut follow = |to: &Option<String>| {
                let to = to.as_ref().filter(|to| !visited.contains(to))?;
                self.forward_to(to, &mut visited)
            };
            forwards.no_answer = follow(&f.no_answer).map(|to| (secs(f.no_answer_after_s), to)).into_iter().collect();
            forwards.busy = follow(&f.busy);
        }
        if contacts.is_empty() {
            // Nobody registered: straight on to the no-answer forward, if it has phones.
            match forwards.no_answer.pop().filter(|(_, to)| !to.contacts.is_empty()) {
                Some((_, to)) => {
                    (target, contacts) = (to.target, to.contacts);
                    forwards = Forwards::default();
                }
                None => return Err(Refusal::code(480)),
            }
        }
        Ok(Route { forwards, ..Route::plain(caller, caller_display_name, callee, target, contacts) })
    }

    /// Where a call transferred to `number` goes (REFER, RFC 3515): as a call `transferee`
    /// dialled, so forwarding and ring groups apply. Only numbers a phone could call: a room,
    /// a feature code, pickup or intercom is refused (403 with the reason), an unknown number
    /// too (outside the dial plan: 403, RFC 3515 §2.4.2's answer for a refused REFER).
    pub fn transfer_route(&self, transferee: &str, number: &str) -> Result<Route, (u16, String)> {
        let special = number.starts_with(PICKUP_PREFIX)
            || number.starts_with(INTERCOM_PREFIX)
            || FeatureCode::parse(number).is_some()
            || super::groups::LoginCode::parse(number).is_some();
        if special {
            return Err((403, "Forbidden (not a number a call can be transferred to)".into()));
        }
        if self.config.rooms.contains(number) {
            return Err((403, "Forbidden (transfer to a conference room is not supported)".into()));
        }
        let display = self.extensions.get(transferee).map(|e| e.display_name.clone()).unwrap_or_default();
        if self.config.park_orbits.contains(number) && !self.extensions.contains_key(number) {
            let plain = Route::plain(transferee.to_owned(), display, number.to_owned(), number.to_owned(), Vec::new());
            return Ok(Route { park: Some(number.to_owned()), ..plain });
        }
        self.resolve(transferee.to_owned(), display, number.to_owned()).map_err(|refusal| match refusal.code {
            404 => (403, "Forbidden (no such number)".to_owned()),
            480 => (480, "Temporarily Unavailable".to_owned()),
            code => (code, refusal.reason.unwrap_or("Forbidden").to_owned()),
        })
    }

    /// Where a forward to the extension `to` leads: its `always` chain followed (extensions met
    /// go to `visited`), with that one's phones; `None` when `to` is no extension.
    fn forward_to(&self, to: &str, visited: &mut Vec<String>) -> Option<Forward> {
        if !self.extensions.contains_key(to) {
            return None;
        }
        let target = forwarding::follow_always(to, &self.forwarding, visited);
        Some(Forward { contacts: self.contacts_of(&target), target })
    }

    /// A call to a ring group (module `groups`): its members' phones, all at once or in turn,
    /// then the group's no-answer target.
    fn route_group(
        &self,
        caller: String,
        caller_display_name: String,
        group: &super::groups::Group,
    ) -> Result<Route, Refusal> {
        use super::groups::Strategy;
        let members: Vec<Forward> = group
            .members
            .iter()
            .filter(|m| self.extensions.contains_key(*m) && self.logged_in(&group.number, m))
            .map(|m| Forward { target: group.number.clone(), contacts: self.contacts_of(m) })
            .filter(|f| !f.contacts.is_empty())
            .collect();
        let fallback = group.no_answer.as_ref().and_then(|to| self.forward_to(to, &mut vec![group.number.clone()]));
        let fallback = fallback.filter(|f| !f.contacts.is_empty());
        let mut forwards = Forwards::default();
        let (target, contacts) = match group.strategy {
            Strategy::RingAll => {
                forwards.no_answer = fallback.clone().map(|f| (group.no_answer_after(), f)).into_iter().collect();
                (group.number.clone(), members.into_iter().flat_map(|f| f.contacts).collect::<Vec<_>>())
            }
            Strategy::Hunt => {
                let mut members = members.into_iter();
                let first = members.next().map(|f| f.contacts).unwrap_or_default();
                let after = group.member_timeout();
                forwards.no_answer = members.chain(fallback.clone()).map(|f| (after, f)).collect();
                forwards.busy_moves_on = true;
                (group.number.clone(), first)
            }
        };
        let (target, contacts, forwards) = match (contacts.is_empty(), fallback) {
            (false, _) => (target, contacts, forwards),
            // Nobody's phone is registered: straight to the group's forward, if it has phones.
            (true, Some(to)) => (to.target, to.contacts, Forwards::default()),
            (true, None) => return Err(Refusal::code(480)),
        };
        let callee = group.number.clone();
        Ok(Route { forwards, ..Route::plain(caller, caller_display_name, callee, target, contacts) })
    }

    fn contacts_of(&self, number: &str) -> Vec<Binding> {
        self.bindings.get(number).into_iter().flatten().cloned().collect()
    }

    /// A log-in code dialled by `caller` for itself: 603 saying which groups it is now logged in
    /// to or out of, 403 when it is a member of none named.
    fn group_login(&mut self, tx: u64, request: &Request, ip: IpAddr, caller: &str, code: super::groups::LoginCode) {
        let groups: Vec<String> = self
            .config
            .groups
            .values()
            .filter(|g| code.group.as_ref().is_none_or(|n| *n == g.number) && g.members.iter().any(|m| m == caller))
            .map(|g| g.number.clone())
            .collect();
        if groups.is_empty() {
            let reason = Some("Forbidden (not a member of that group)");
            return self.refuse(tx, request, ip, Refusal { code: 403, reason }, true);
        }
        for group in &groups {
            let key = (group.clone(), caller.to_owned());
            let changed = match code.logged_in {
                true => self.logged_out.remove(&key),
                false => self.logged_out.insert(key),
            };
            if changed {
                let (group, member) = (group.clone(), caller.to_owned());
                self.persist(RegistrarCommand::GroupLogin { group, member, logged_in: code.logged_in });
            }
        }
        let mut response = request.response(603, Some(&self.to_tag(request)));
        let state = if code.logged_in { "Logged in" } else { "Logged out" };
        response.reason = format!("{state}: {}", groups.join(", "));
        self.outputs.push_back(RegistrarOutput::Respond { tx, response, authenticated: true });
    }

    /// A feature code dialled by `caller` for its own extension: 603 with what it did (the call
    /// itself is declined: there is nobody to talk to), 403 for a target that is no extension,
    /// 404 for a code pbx does not know.
    fn feature_code(&mut self, tx: u64, request: &Request, ip: IpAddr, caller: &str, code: Result<FeatureCode, ()>) {
        let Ok(code) = code else {
            return self.refuse(
                tx,
                request,
                ip,
                Refusal { code: 404, reason: Some("Not Found (no such feature code)") },
                true,
            );
        };
        let next = code.apply(&self.forwarding_of(caller));
        if let Err(reason) = next.validate(caller, |n| self.extensions.contains_key(n)) {
            let mut response = request.response(403, Some(&self.to_tag(request)));
            response.reason = format!("Forbidden ({reason})");
            return self.outputs.push_back(RegistrarOutput::Respond { tx, response, authenticated: true });
        }
        self.store_forwarding(caller, next);
        let mut response = request.response(603, Some(&self.to_tag(request)));
        response.reason = code.confirmation();
        self.outputs.push_back(RegistrarOutput::Respond { tx, response, authenticated: true });
    }

    fn refuse(&mut self, tx: u64, request: &Request, source: IpAddr, refusal: Refusal, authenticated: bool) {
        let mut response = request.response(refusal.code, Some(&self.to_tag(request)));
        if let Some(reason) = refusal.reason {
            response.reason = reason.to_owned();
        }
        if refusal.code == 423 {
            response.headers.insert(Name::MIN_EXPIRES, self.config.min_expires_s.to_string());
        }
        let method = if request.method == Method::INVITE { "INVITE" } else { "REGISTER" };
        self.event(RegistrarEvent::Rejected { source, method, code: refusal.code });
        self.outputs.push_back(RegistrarOutput::Respond { tx, response, authenticated });
    }

    /// The user the request's credentials prove, or `None` once the request is answered
    /// (challenge, 400, 403) and every failure counted. REGISTER (`Authorization`, 401) and
    /// INVITE (`Proxy-Authorization`, 407) alike.
    fn authenticated(
        &mut self,
        now: Timestamp,
        tx: u64,
        request: &Request,
        source: SocketAddr,
        header: Name,
    ) -> Option<String> {
        let code = if header == Name::PROXY_AUTHORIZATION { 407 } else { 401 };
        let ip = source.ip();
        match self.authenticate(now, request, source, header) {
            Auth::Ok { user } => return Some(user),
            Auth::Challenge { stale, ignored } => {
                if let Some(reason) = ignored {
                    self.event(RegistrarEvent::AuthIgnored { source: ip, reason });
                }
                self.challenge(now, tx, request, source, stale, code);
            }
            Auth::Failed { user, count_user } => {
                self.auth_failed(now, ip, user, count_user);
                self.challenge(now, tx, request, source, false, code);
            }
            Auth::Blocked => self.refuse(tx, request, ip, Refusal::code(403), false),
            Auth::WrongUri { user, count_user } => {
                self.auth_failed(now, ip, user, count_user);
                let refusal = Refusal { code: 400, reason: Some("Bad Request (digest uri is not the Request-URI)") };
                self.refuse(tx, request, ip, refusal, false);
            }
        }
        None
    }

    /// 401 with one challenge per algorithm, strongest first, sharing one fresh nonce bound to
    /// the source it goes to. The same shape whatever went wrong, so the answer reveals nothing
    /// about the user.
    fn challenge(&mut self, now: Timestamp, tx: u64, request: &Request, source: SocketAddr, stale: bool, code: u16) {
        let bound_to = blocking::source_group(source.ip());
        let (nonce, opaque, minted) = self.nonce_key.mint_recognised(now, self.rng.random(), bound_to);
        if let Ok(text) = <[u8; digest::NONCE_CHARS]>::try_from(nonce.as_bytes()) {
            while self.minted.len() >= NONCES_MINTED_REMEMBERED_MAX {
                self.minted.pop_first();
            }
            self.minted.insert(text, (bound_to, minted));
        }
        let mut response = request.response(code, Some(&self.to_tag(request)));
        let header = if code == 407 { Name::PROXY_AUTHENTICATE } else { Name::WWW_AUTHENTICATE };
        for &algorithm in &self.config.digest_algorithms {
            let value = digest::challenge(algorithm, &self.config.realm, &nonce, &opaque, stale);
            // As it is: `insert` would print the `String` into another one.
            response.headers.insert_value(header.clone(), BytesStr::from(value));
        }
        self.outputs.push_back(RegistrarOutput::Respond { tx, response, authenticated: false });
    }

    /// A To tag that depends only on the Call-ID, so two answers to the same client differ
    /// only where they must (nonce, opaque).
    /// A tag needs to be unique per dialog attempt, not secret (RFC 3261 §19.3): a keyed SipHash
    /// of the Call-ID does, at a fraction of the HMAC it used to be (11 % of the CPU under load).
    fn to_tag(&self, request: &Request) -> String {
        use std::hash::{DefaultHasher, Hasher};
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(self.to_tag_key);
        hasher.write(request.call_id_str().unwrap_or_default().as_bytes());
        // `{:016x}`: the hash's big-endian bytes in lowercase hex.
        digest::to_hex(hasher.finish().to_be_bytes())
    }

    fn credentials_for_realm<'r>(&self, request: &'r Request, header: Name) -> Option<Credentials<'r>> {
        request
            .headers
            .get_raw(&header)
            .filter_map(|v| Credentials::parse(v.as_str()))
            .find(|c| c.realm == self.config.realm)
    }

    fn authenticate(&mut self, now: Timestamp, request: &Request, source: SocketAddr, header: Name) -> Auth {
        let ignored = |reason| Auth::Challenge { stale: false, ignored: Some(reason) };
        let Some(creds) = self.credentials_for_realm(request, header) else {
            return Auth::Challenge { stale: false, ignored: None };
        };
        let algorithm = match creds.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(name) => match Algorithm::from_name(name) {
                Some(a) => a,
                None => return ignored("algorithm"),
            },
        };
        if !self.config.digest_algorithms.contains(&algorithm) || creds.userhash {
            return ignored("algorithm");
        }
        let qop = match creds.qop.as_deref() {
            None if self.config.allow_rfc2069 => None,
            None => return ignored("qop"),
            Some(q) if q.eq_ignore_ascii_case("auth") => match (creds.nc.as_deref(), creds.cnonce.as_deref()) {
                (Some(nc), Some(cnonce)) if parse_nc(nc).is_some() => Some(QopAuth { nc, cnonce }),
                _ => return ignored("qop"),
            },
            Some(_) => return ignored("qop"),
        };
        // A nonce we did not mint for this very source proves nothing either way: forged, or
        // fetched from another address (a spoofer cannot read the challenge sent to the
        // address it claims). Challenge again, count nothing against anybody.
        // A nonce minted here lately, for this very source group, is known without its HMAC;
        // any other goes through `verify` (the answer is the same either way).
        let group = blocking::source_group(source.ip());
        let remembered = <[u8; digest::NONCE_CHARS]>::try_from(creds.nonce.as_bytes())
            .ok()
            .and_then(|text| self.minted.get(&text))
            .filter(|(minted_for, _)| *minted_for == group)
            .map(|&(_, minted)| minted);
        let Some(minted) = remembered.or_else(|| self.nonce_key.verify(&creds.nonce, group)) else {
            return ignored("nonce");
        };
        if creds.opaque.as_ref().is_some_and(|o| !minted.opaque_is(o)) {
            return ignored("opaque");
        }
        let minted_at = minted.at;
        let method: std::borrow::Cow<'_, str> = match request.method {
            Method::REGISTER => "REGISTER".into(),
            Method::INVITE => "INVITE".into(),
            ref other => other.to_string().into(),
        };
        // HA2 hashes only the method and the URI, the same for every REGISTER of a domain's
        // phones: the last one is kept (a public value, nothing secret in it).
        let cached =
            matches!(&self.last_ha2, Some((a, m, u, _)) if *a == algorithm && *m == *method && *u == *creds.uri);
        if !cached {
            let ha2 = digest::ha2(algorithm, &method, &creds.uri);
            self.last_ha2 = Some((algorithm, method.into_owned(), creds.uri.to_string(), ha2));
        }
        let user: String = match creds.username.char_indices().nth(CLAIMED_USER_CHARS_MAX) {
            Some((cut, _)) => creds.username[..cut].to_owned(),
            None => creds.username.as_ref().to_owned(),
        };
        let extension = self.extensions.get(creds.username.as_ref());
        // Where this user's phones are (a live binding from this very address) or recently
        // authenticated from: no block or lock applies there (docs/SECURITY.md).
        let trusted = extension.is_some()
            && (self.bindings.get(creds.username.as_ref()).is_some_and(|list| {
                list.iter().any(|b| b.expires_at > now && blocking::same_address(b.source, source))
            }) || self.guard.recently_succeeded(now, source, &creds.username));
        if !trusted && self.guard.is_blocked(now, source.ip(), &user) {
            return Auth::Blocked;
        }
        let locked = !trusted && extension.is_some() && self.guard.is_locked(now, &creds.username);
        // A locked user's failures count against the pair only: the user's count is frozen.
        let count_user = extension.is_some() && !locked;
        if !digest::uri_matches(&creds.uri, &request.uri) {
            return Auth::WrongUri { user, count_user };
        }
        // The same work for a user that does not exist as for one that does, and for a locked
        // one: its answer then fails whatever it says, so the lock shows nothing.
        let ha1 = match (extension, algorithm) {
            (Some(e), a) => e.ha1(a),
            (None, Algorithm::Md5) => &self.dummy_ha1_md5,
            (None, Algorithm::Sha256) => &self.dummy_ha1_sha256,
        };
        let ha2 = &self.last_ha2.as_ref().expect("filled above").3;
        let expected = digest::response_digest(algorithm, ha1, &creds.nonce, qop, ha2);
        let given = creds.response.to_ascii_lowercase();
        let matches = digest::constant_time_eq(expected.as_bytes(), given.as_bytes());
        if !(matches && extension.is_some()) || locked {
            return Auth::Failed { user, count_user };
        }
        if minted_at + secs(self.config.nonce_lifetime_s) <= now {
            return Auth::Challenge { stale: true, ignored: None };
        }
        if let Some(qop) = qop {
            let nc = parse_nc(qop.nc).expect("checked above");
            // One lookup: a tracked nonce's count is raised in place, a new one tracked.
            match self.nonces.get_mut(creds.nonce.as_ref()) {
                Some(highest) if nc <= *highest => return Auth::Challenge { stale: false, ignored: None },
                Some(highest) => *highest = nc,
                None if self.nonces_forgotten_until.is_some_and(|until| minted_at <= until) => {
                    return Auth::Challenge { stale: true, ignored: None };
                }
                None => self.track_new_nonce(now, creds.nonce.into_owned(), nc),
            }
        }
        self.guard.succeeded(now, source, &creds.username);
        Auth::Ok { user: creds.username.into_owned() }
    }

    /// Tracks a nonce not tracked yet, forgetting the oldest to make room.
    fn track_new_nonce(&mut self, now: Timestamp, nonce: String, nc: u32) {
        let lifetime = secs(self.config.nonce_lifetime_s);
        while self.nonces.len() >= NONCES_TRACKED_MAX {
            let (oldest, _) = self.nonces.pop_first().expect("map is full, so not empty");
            let minted = digest::nonce_timestamp(&oldest).unwrap_or(Timestamp::ZERO);
            // An expired nonce is refused as stale anyway: forgetting it loses nothing.
            if minted + lifetime > now {
                self.nonces_forgotten_until = self.nonces_forgotten_until.max(Some(minted));
            }
        }
        let previous = self.nonces.insert(nonce, nc);
        debug_assert!(previous.is_none(), "only a nonce not tracked yet");
        assert!(self.nonces.len() <= NONCES_TRACKED_MAX);
    }

    /// Reports a failure and counts it (see [`super::blocking`]).
    fn auth_failed(&mut self, now: Timestamp, source: IpAddr, user: String, count_user: bool) {
        let mut events = Vec::new();
        self.guard.failed(now, source, &user, count_user, &mut events);
        self.event(RegistrarEvent::AuthFailed { source, user });
        for event in events {
            self.event(event);
        }
    }

    fn forget_idle(&mut self, now: Timestamp) {
        self.guard.forget_idle(now);
        let lifetime = secs(self.config.nonce_lifetime_s);
        while let Some((nonce, _)) = self.nonces.first_key_value() {
            if digest::nonce_timestamp(nonce).is_some_and(|minted| minted + lifetime > now) {
                break;
            }
            self.nonces.pop_first();
        }
    }

    /// Steps 5–7: checks every contact first, then changes bindings all together or not at all.
    /// Returns what the request's contacts said about push (RFC 8599), for `Feature-Caps`.
    fn update_bindings(
        &mut self,
        now: Timestamp,
        request: &Request,
        aor: &str,
        source: SocketAddr,
        transport: Transport,
    ) -> Result<Pushes, Refusal> {
        let call_id = request.call_id().unwrap_or_default();
        let cseq = request.cseq_ref().map(|c| c.cseq).unwrap_or(0);
        let header_expires = match request.expires() {
            None => None,
            Some(Ok(seconds)) => Some(seconds),
            Some(Err(())) => return Err(Refusal::code(400)),
        };
        let user_agent = request.header(&Name::USER_AGENT).map(|ua| {
            match ua.len() <= USER_AGENT_CHARS_MAX && ua.bytes().all(|b| (b' '..=b'~').contains(&b)) {
                // Printable ASCII within the bound (a phone's usual): kept as it is.
                true => ua.to_owned(),
                false => ua.chars().filter(|c| !c.is_control()).take(USER_AGENT_CHARS_MAX).collect::<String>(),
            }
        });
        // Read in place, not copied: everything that depends on the current bindings is worked
        // out below before the first change.
        let current: &[Binding] = self.bindings.get(aor).map_or(&[], Vec::as_slice);
        let out_of_order = |b: &Binding| b.call_id == call_id && cseq <= b.cseq;

        let contacts = request.contacts().map_err(|_| Refusal::code(400))?;
        let list = match contacts {
            Contacts::None => return Ok(Pushes::default()),
            Contacts::Star => {
                if header_expires != Some(0) {
                    return Err(Refusal::code(400));
                }
                if current.iter().any(out_of_order) {
                    return Err(Refusal::code(500));
                }
                let gone: Vec<(String, String)> = current.iter().map(|b| (b.aor.clone(), b.contact.clone())).collect();
                for (aor, contact) in gone {
                    self.remove_binding(&aor, &contact);
                    self.event(RegistrarEvent::Unregistered { aor, contact });
                }
                return Ok(Pushes::default());
            }
            Contacts::List(list) => list,
        };

        // (contact, expires_s, nat) with later duplicates replacing earlier ones.
        let mut plan: Vec<(String, u32, bool)> = Vec::with_capacity(list.len());
        let mut too_brief = false;
        // RFC 8599: providers named (for Feature-Caps), and the push ids (pn-prid) registered
        // now: a phone woken by a push may register from a new address, and its old binding
        // under the same id goes.
        let mut push_providers: Vec<String> = Vec::new();
        let mut push_ids: Vec<(String, String)> = Vec::new();
        let mut pnsreg = false;
        for contact in &list {
            let uri = print_sip_uri(&contact.uri.uri);
            if uri.len() > CONTACT_CHARS_MAX {
                return Err(Refusal::code(400));
            }
            match crate::push::PushContact::of(&contact.uri.uri, &self.config.push_providers) {
                Err(refused) => return Err(Refusal { code: refused.code, reason: Some(refused.reason) }),
                Ok(crate::push::PushContact::None) => {}
                Ok(crate::push::PushContact::Query { provider }) => {
                    if !push_providers.contains(&provider) {
                        push_providers.push(provider);
                    }
                    // A query makes no binding (RFC 8599 §5).
                    continue;
                }
                Ok(crate::push::PushContact::Push(params)) => {
                    if !push_providers.contains(&params.provider) {
                        push_providers.push(params.provider.clone());
                    }
                    push_ids.push((uri.clone(), params.prid));
                    // RFC 8599 §4.1.4: a media feature tag of the Contact, not of its URI.
                    pnsreg |= contact.params.get(crate::push::PNSREG_TAG).is_some();
                }
            }
            let expires = match contact.params.get("expires") {
                None => header_expires.unwrap_or(self.config.default_expires_s),
                Some(param) => match param.value.as_ref().map(|v| parse_delta_seconds(v.as_str())) {
                    Some(Some(e)) => e,
                    _ => return Err(Refusal::code(400)),
                },
            };
            too_brief |= expires != 0 && expires < self.config.min_expires_s;
            let expires = expires.min(self.config.max_expires_s);
            plan.retain(|(c, ..)| *c != uri);
            let nat = nat::nat_detected(request.top_via_ref(), &contact.uri.uri, source, transport);
            plan.push((uri, expires, nat));
        }
        if too_brief {
            return Err(Refusal::code(423));
        }
        let existing = |contact: &str| current.iter().find(|b| b.contact == contact);
        if plan.iter().filter_map(|(c, ..)| existing(c)).any(out_of_order) {
            return Err(Refusal::code(500));
        }
        // Bindings of the same push id under another contact: the app's earlier address.
        // Only a REGISTER with push ids reads the current contacts' parameters: the usual
        // REGISTER parses nothing more.
        let superseded: Vec<String> = current
            .iter()
            .filter(|_| !push_ids.is_empty())
            .filter(|b| !plan.iter().any(|(c, ..)| *c == b.contact))
            .filter(|b| {
                crate::push::PushContact::params_of(&b.contact)
                    .is_some_and(|p| push_ids.iter().any(|(_, prid)| *prid == p.prid))
            })
            .map(|b| b.contact.clone())
            .collect();
        let removed = plan.iter().filter(|(c, e, _)| *e == 0 && existing(c).is_some()).count() + superseded.len();
        let added = plan.iter().filter(|(c, e, _)| *e != 0 && existing(c).is_none()).count();
        if current.len() + added - removed > BINDINGS_PER_AOR_MAX {
            return Err(Refusal { code: 403, reason: Some("Too Many Contacts") });
        }

        // Removals first: the bound was checked on the final count, and an addition applied
        // before a removal would briefly hold one binding too many (issue 14: that tripped the
        // assertion in `put_binding` and killed the registrar).
        // A refresh: the same contact from the same Call-ID, source, transport, user agent and
        // NAT state; only expiry and CSeq change.
        let is_refresh = |contact: &str, nat: bool| {
            existing(contact).is_some_and(|o| {
                o.call_id == call_id
                    && o.source == source
                    && o.transport == transport
                    && o.user_agent == user_agent
                    && o.nat == nat
            })
        };
        let mut removals = superseded;
        let mut updates = Vec::with_capacity(plan.len());
        for (contact, expires, nat) in plan {
            if expires == 0 {
                if existing(&contact).is_some() {
                    removals.push(contact);
                }
            } else {
                let refresh = is_refresh(&contact, nat);
                updates.push((contact, expires, nat, refresh));
            }
        }
        for contact in removals {
            self.remove_binding(aor, &contact);
            self.event(RegistrarEvent::Unregistered { aor: aor.to_owned(), contact });
        }
        for (contact, expires, nat, refresh) in updates {
            let binding = Binding {
                aor: aor.to_owned(),
                contact: contact.clone(),
                expires_at: now + secs(expires),
                call_id: call_id.clone(),
                cseq,
                source,
                transport,
                user_agent: user_agent.clone(),
                nat,
            };
            let key = (binding.aor.clone(), binding.contact.clone());
            if push_ids.iter().any(|(c, _)| *c == contact) {
                self.event(RegistrarEvent::PushContactRegistered { binding: Box::new(binding.clone()) });
            }
            if refresh {
                // Only expiry and CSeq changed: hot state, written in the next batch.
                self.put_binding(binding);
                self.dirty_bindings.insert(key);
                self.schedule_flush(now);
            } else {
                self.put_binding(binding.clone());
                self.dirty_bindings.remove(&key);
                self.persist(RegistrarCommand::PutBinding(binding));
                self.event(RegistrarEvent::Registered { aor: aor.to_owned(), contact });
            }
        }
        Ok(Pushes { providers: push_providers, pnsreg })
    }

    // ---- bindings ----

    /// Inserts or replaces a binding in memory (no output).
    fn put_binding(&mut self, binding: Binding) {
        // A refresh replaces a binding in place: its expiry entry is re-filed with the old
        // binding's own strings (same AOR, same contact), nothing copied.
        if !self.bindings.contains_key(&binding.aor) {
            self.bindings.insert(binding.aor.clone(), Vec::new());
        }
        let list = self.bindings.get_mut(&binding.aor).expect("inserted above");
        if let Some(slot) = list.iter_mut().find(|b| b.contact == binding.contact) {
            let expires_at = binding.expires_at;
            let old = std::mem::replace(slot, binding);
            let mut entry = (old.expires_at, old.aor, old.contact);
            let removed = self.expiries.remove(&entry);
            assert!(removed, "every binding has an expiry entry");
            entry.0 = expires_at;
            if entry.2.contains("pn-prid") {
                self.schedule_refresh(&entry.1, &entry.2, expires_at);
            }
            self.expiries.insert(entry);
        } else {
            assert!(list.len() < BINDINGS_PER_AOR_MAX, "callers check the per-AOR bound");
            self.expiries.insert((binding.expires_at, binding.aor.clone(), binding.contact.clone()));
            let refresh = binding.contact.contains("pn-prid").then(|| (binding.aor.clone(), binding.contact.clone()));
            let expires_at = binding.expires_at;
            list.push(binding);
            if let Some((aor, contact)) = refresh {
                self.schedule_refresh(&aor, &contact, expires_at);
            }
        }
    }

    /// Files (again) the refresh push of the push binding (`aor`, `contact`) expiring at
    /// `expires_at`: due `push_refresh_before_s` before it, or half-way for a short lifetime.
    /// Only contacts whose text holds `pn-prid` get here; others were never filed.
    fn schedule_refresh(&mut self, aor: &str, contact: &str, expires_at: Timestamp) {
        let key = (aor.to_owned(), contact.to_owned());
        if let Some(due) = self.refresh_at.remove(&key) {
            self.refreshes.remove(&(due, key.0.clone(), key.1.clone()));
        }
        if self.config.push_providers.is_empty() || crate::push::PushContact::params_of(contact).is_none() {
            return;
        }
        let lifetime = expires_at.saturating_since(self.last_now);
        let due = expires_at - secs(self.config.push_refresh_before_s).min(lifetime / 2);
        self.refreshes.insert((due, key.0.clone(), key.1.clone()));
        self.refresh_at.insert(key, due);
    }

    /// Push bindings whose refresh push is due at `now` come out as
    /// [`RegistrarEvent::PushRefreshDue`], each once per registration.
    fn refresh_due(&mut self, now: Timestamp) {
        while let Some((due, aor, contact)) = self.refreshes.first().cloned() {
            if due > now {
                break;
            }
            self.refreshes.pop_first();
            self.refresh_at.remove(&(aor.clone(), contact.clone()));
            let binding = self.bindings.get(&aor).and_then(|l| l.iter().find(|b| b.contact == contact)).cloned();
            if let Some(binding) = binding {
                self.event(RegistrarEvent::PushRefreshDue { binding: Box::new(binding) });
            }
        }
    }

    /// Removes a binding from memory and persists the removal.
    fn remove_binding(&mut self, aor: &str, contact: &str) {
        if self.unbind(aor, contact) {
            self.persist(RegistrarCommand::RemoveBinding { aor: aor.to_owned(), contact: contact.to_owned() });
        }
    }

    /// Removes a binding from memory only; `false` if there was none.
    fn unbind(&mut self, aor: &str, contact: &str) -> bool {
        let Some(list) = self.bindings.get_mut(aor) else { return false };
        let Some(pos) = list.iter().position(|b| b.contact == contact) else { return false };
        let old = list.remove(pos);
        if list.is_empty() {
            self.bindings.remove(aor);
        }
        let removed = self.expiries.remove(&(old.expires_at, old.aor, old.contact));
        assert!(removed, "every binding has an expiry entry");
        let key = (aor.to_owned(), contact.to_owned());
        if let Some(due) = self.refresh_at.remove(&key) {
            self.refreshes.remove(&(due, key.0.clone(), key.1.clone()));
        }
        self.dirty_bindings.remove(&key);
        true
    }

    /// A committed change from another node, applied to memory. A local copy it replaces is no
    /// longer ours to write back, so its dirty mark goes too.
    fn replicated(&mut self, command: RegistrarCommand) {
        match command {
            RegistrarCommand::PutExtension(e) => {
                self.dirty_extensions.remove(&e.number);
                self.extensions.insert(e.number.clone(), e);
            }
            RegistrarCommand::RemoveExtension { number } => {
                self.dirty_extensions.remove(&number);
                self.extensions.remove(&number);
                self.forwarding.remove(&number);
                self.logged_out.retain(|(_, member)| *member != number);
            }
            RegistrarCommand::PutBinding(b) => {
                let list = self.bindings.get(&b.aor).map_or(&[][..], |l| l.as_slice());
                let known = list.iter().any(|old| old.contact == b.contact);
                if known || list.len() < BINDINGS_PER_AOR_MAX {
                    self.dirty_bindings.remove(&(b.aor.clone(), b.contact.clone()));
                    self.put_binding(b);
                }
            }
            RegistrarCommand::RemoveBinding { aor, contact } => {
                self.unbind(&aor, &contact);
            }
            RegistrarCommand::SetForwarding { number, forwarding } => {
                self.dirty_forwarding.remove(&number);
                if forwarding.is_off() {
                    self.forwarding.remove(&number);
                } else {
                    self.forwarding.insert(number, forwarding);
                }
            }
            RegistrarCommand::GroupLogin { group, member, logged_in: true } => {
                self.logged_out.remove(&(group, member));
            }
            RegistrarCommand::GroupLogin { group, member, logged_in: false } => {
                self.logged_out.insert((group, member));
            }
        }
    }

    /// Bindings whose `expires_at` is at or before `now` are gone.
    fn expire_due(&mut self, now: Timestamp) {
        while let Some((at, aor, contact)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.remove_binding(&aor, &contact);
            self.event(RegistrarEvent::Expired { aor, contact });
        }
    }

    fn schedule_flush(&mut self, now: Timestamp) {
        if self.flush_at.is_none() {
            self.flush_at = Some(now + secs(self.config.refresh_flush_s));
        }
    }

    /// Writes every dirty key now, as the refresh-flush timer would (the shell calls this
    /// when it stops, so a clean shutdown loses no refreshed expiry).
    pub fn flush_now(&mut self) {
        self.flush();
    }

    /// Writes every dirty key as it is now: the current value, or its removal.
    fn flush(&mut self) {
        self.flush_at = None;
        for number in std::mem::take(&mut self.dirty_extensions) {
            let command = match self.extensions.get(&number) {
                Some(e) => RegistrarCommand::PutExtension(e.clone()),
                None => RegistrarCommand::RemoveExtension { number },
            };
            self.persist(command);
        }
        for (aor, contact) in std::mem::take(&mut self.dirty_bindings) {
            let current = self.bindings.get(&aor).and_then(|l| l.iter().find(|b| b.contact == contact));
            let command = match current {
                Some(b) => RegistrarCommand::PutBinding(b.clone()),
                None => RegistrarCommand::RemoveBinding { aor, contact },
            };
            self.persist(command);
        }
        for number in std::mem::take(&mut self.dirty_forwarding) {
            let forwarding = self.forwarding_of(&number);
            self.persist(RegistrarCommand::SetForwarding { number, forwarding });
        }
    }

    // ---- the extension directory ----

    fn put_extension(&mut self, number: &str, password: &str, display_name: &str) {
        if let Err(reason) = validate_extension(number, password, display_name) {
            return self.event(RegistrarEvent::ExtensionInvalid { reason });
        }
        if !self.extensions.contains_key(number) && self.extensions.len() >= EXTENSIONS_MAX {
            let reason = format!("number: the directory is full ({EXTENSIONS_MAX} extensions)");
            return self.event(RegistrarEvent::ExtensionInvalid { reason });
        }
        let realm = &self.config.realm;
        let extension = Extension {
            number: number.to_owned(),
            display_name: display_name.to_owned(),
            ha1_md5: digest::ha1(Algorithm::Md5, number, realm, password),
            ha1_sha256: digest::ha1(Algorithm::Sha256, number, realm, password),
        };
        self.extensions.insert(number.to_owned(), extension.clone());
        self.dirty_extensions.remove(number);
        self.persist(RegistrarCommand::PutExtension(extension));
        self.event(RegistrarEvent::ExtensionChanged { number: number.to_owned() });
    }

    fn remove_extension(&mut self, number: &str) {
        if self.extensions.remove(number).is_none() {
            return self.event(RegistrarEvent::NoSuchExtension { number: number.to_owned() });
        }
        for b in self.bindings.get(number).cloned().unwrap_or_default() {
            self.remove_binding(&b.aor, &b.contact);
            self.event(RegistrarEvent::Unregistered { aor: b.aor, contact: b.contact });
        }
        self.dirty_extensions.remove(number);
        self.guard.forget_user(number);
        self.persist(RegistrarCommand::RemoveExtension { number: number.to_owned() });
        // Its group log-outs go with it (storage drops them with the extension).
        self.logged_out.retain(|(_, member)| member != number);
        // Its own forwarding goes with it, and every forward to it is switched off.
        if self.forwarding.remove(number).is_some() {
            self.persist(RegistrarCommand::SetForwarding {
                number: number.to_owned(),
                forwarding: Forwarding::default(),
            });
        }
        let pointing: Vec<String> =
            self.forwarding.iter().filter(|(_, f)| f.names(number)).map(|(n, _)| n.clone()).collect();
        for other in pointing {
            let mut f = self.forwarding_of(&other);
            for slot in [&mut f.always, &mut f.busy, &mut f.no_answer] {
                if slot.as_deref() == Some(number) {
                    *slot = None;
                }
            }
            self.store_forwarding(&other, f);
        }
        self.event(RegistrarEvent::ExtensionChanged { number: number.to_owned() });
    }

    fn set_forwarding(&mut self, number: &str, forwarding: Forwarding) {
        if !self.extensions.contains_key(number) {
            return self.event(RegistrarEvent::NoSuchExtension { number: number.to_owned() });
        }
        if let Err(reason) = forwarding.validate(number, |n| self.extensions.contains_key(n)) {
            return self.event(RegistrarEvent::ExtensionInvalid { reason });
        }
        self.store_forwarding(number, forwarding);
    }

    /// Sets `number`'s forwarding (checked), persists it and says so.
    fn store_forwarding(&mut self, number: &str, forwarding: Forwarding) {
        if forwarding.is_off() {
            self.forwarding.remove(number);
        } else {
            self.forwarding.insert(number.to_owned(), forwarding.clone());
        }
        self.dirty_forwarding.remove(number);
        self.persist(RegistrarCommand::SetForwarding { number: number.to_owned(), forwarding: forwarding.clone() });
        self.event(RegistrarEvent::ForwardingChanged { number: number.to_owned(), forwarding });
    }

    fn rename(&mut self, number: &str, display_name: &str) {
        // The password rule is not this request's business: check the rest with a valid stand-in.
        if let Err(reason) = validate_extension(number, "unchanged", display_name) {
            return self.event(RegistrarEvent::ExtensionInvalid { reason });
        }
        let Some(extension) = self.extensions.get_mut(number) else {
            return self.event(RegistrarEvent::NoSuchExtension { number: number.to_owned() });
        };
        extension.display_name = display_name.to_owned();
        let extension = extension.clone();
        self.dirty_extensions.remove(number);
        self.persist(RegistrarCommand::PutExtension(extension));
        self.event(RegistrarEvent::ExtensionChanged { number: number.to_owned() });
    }

    fn forget_address(&mut self, ip: IpAddr) {
        let subject = crate::privacy::Subject::Ip(ip.to_canonical());
        let doomed: Vec<(String, String)> = self
            .bindings
            .values()
            .flatten()
            .filter(|b| b.involves(&subject))
            .map(|b| (b.aor.clone(), b.contact.clone()))
            .collect();
        for (aor, contact) in &doomed {
            self.remove_binding(aor, contact);
            self.event(RegistrarEvent::Unregistered { aor: aor.clone(), contact: contact.clone() });
        }
        self.event(RegistrarEvent::AddressForgotten { bindings: doomed.len() });
    }

    fn drop_push_token(&mut self, aor: &str, prid: &str) {
        let doomed: Vec<String> = self
            .bindings
            .get(aor)
            .into_iter()
            .flatten()
            .filter(|b| crate::push::PushContact::params_of(&b.contact).is_some_and(|p| p.prid == prid))
            .map(|b| b.contact.clone())
            .collect();
        for contact in doomed {
            self.remove_binding(aor, &contact);
            self.event(RegistrarEvent::Unregistered { aor: aor.to_owned(), contact });
        }
    }

    fn persist(&mut self, command: RegistrarCommand) {
        self.outputs.push_back(RegistrarOutput::Persist(command));
    }

    fn event(&mut self, event: RegistrarEvent) {
        self.outputs.push_back(RegistrarOutput::Event(event));
    }
}

/// Checks an admin request; the error names the field first. Never mentions the password's
/// value.
pub fn validate_extension(number: &str, password: &str, display_name: &str) -> Result<(), String> {
    let number_ok = (1..=NUMBER_CHARS_MAX).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !number_ok {
        return Err(format!("number: must be 1–{NUMBER_CHARS_MAX} characters of 0-9 A-Z a-z _ . -"));
    }
    if display_name.chars().count() > DISPLAY_NAME_CHARS_MAX || display_name.chars().any(char::is_control) {
        return Err(format!("display_name: must be at most {DISPLAY_NAME_CHARS_MAX} characters, none of them control"));
    }
    if !(PASSWORD_CHARS_MIN..=PASSWORD_CHARS_MAX).contains(&password.chars().count()) {
        return Err(format!("password: must be {PASSWORD_CHARS_MIN}–{PASSWORD_CHARS_MAX} characters"));
    }
    Ok(())
}

/// The AOR: the user part of the To URI.
fn to_user(request: &Request) -> Option<String> {
    match &request.to_ref()?.uri.uri.user_part {
        SipUriUserPart::User(user) if !user.is_empty() => Some(user.to_string()),
        _ => None,
    }
}

/// `nc` is 8LHEX (RFC 7616 §3.4); we accept 1–8 hex digits of either case.
fn parse_nc(nc: &str) -> Option<u32> {
    if nc.is_empty() || nc.len() > 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(nc, 16).ok()
}

/// delta-seconds (RFC 3261 §25.1); larger than `u32::MAX` is read as `u32::MAX` (§20.19).
fn parse_delta_seconds(value: &str) -> Option<u32> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u32>().unwrap_or(u32::MAX))
}

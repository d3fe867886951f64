//! The transaction table and its four state machines (RFC 3261 §17, RFC 6026).
//!
//! Pure logic: never reads a clock, an RNG or a socket, never imports tokio. Every timer of
//! §17 lives in one ordered index, so [`Transactions::poll_timeout`] is the earliest of them.

use crate::sip::message::{CSeq, Headers, Method, Name, push_decimal};
use crate::sip::{Message, Request, Response, Transport};
use crate::time::Timestamp;
use bytes::Bytes;
use ezk_sip_types::host::{Host, HostPort};
use ezk_sip_types::print::AppendCtx;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Live transactions (client and server together) the table holds at most. Above it a new
/// server request is refused statelessly with 503 and a new client request is refused with
/// [`TransactionOutput::Timeout`] (see [`Transactions`], Limits).
pub const TRANSACTIONS_MAX: usize = 65_536;

/// The Retry-After of the 503 sent when the table is full (RFC 3261 §21.5.4, §20.33).
pub const OVERLOAD_RETRY_AFTER_S: u32 = 10;

/// RFC 3261 §17.2.1: an INVITE server transaction sends 100 Trying itself unless the TU has
/// answered within 200 ms.
pub const TRYING_DELAY: Duration = Duration::from_millis(200);

/// The magic cookie that marks a branch made by RFC 3261 rules (§8.1.1.7).
pub const BRANCH_COOKIE: &str = "z9hG4bK";

/// RFC 3261 §17.1.1.2: Timer D is "at least 32 seconds" on unreliable transports.
const TIMER_D_UDP_MIN: Duration = Duration::from_secs(32);

// The 100 Trying must beat the client's first INVITE retransmission at the default T1.
const _: () = assert!(TRYING_DELAY.as_millis() < 500);
const _: () = assert!(TRANSACTIONS_MAX > 0);

/// The timer base values of RFC 3261 §17.1.1.1 and Table 4; [`Default`] gives the RFC's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// Round-trip estimate: first retransmission interval; 64*T1 bounds a transaction.
    pub t1: Duration,
    /// Retransmission interval cap for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// How long a message may linger in the network.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

impl TimerConfig {
    /// 64*T1: Timers B, F, H, J (UDP), L and the CANCEL guard of §9.1.
    fn t1_x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// A server transaction's identity, as RFC 3261 §17.2.3 matches requests to it.
///
/// An ACK is matched under the method INVITE (it belongs to the INVITE transaction it
/// acknowledges); a CANCEL is its own transaction with the method CANCEL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKey {
    method: Method,
    id: ServerId,
    /// A keyed hash of `method` and `id` ([`server_key_hash`]), computed once when the key is
    /// made: the table looks a request's key up five or six times, and SipHash over the branch
    /// and sent-by each time was 3 k instructions per REGISTER. Equal keys have equal hashes.
    hash: u64,
}

impl std::hash::Hash for ServerKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The process's key for [`ServerKey`] hashes: std's `RandomState`, drawn once, as every
/// `HashMap::new` draws one. The ids hashed are chosen by peers, so the hash stays keyed
/// (nothing to aim a flood of colliding branches with).
static SERVER_KEY_HASHER: std::sync::LazyLock<std::hash::RandomState> =
    std::sync::LazyLock::new(std::hash::RandomState::new);

fn server_key(method: Method, id: ServerId) -> ServerKey {
    use std::hash::BuildHasher;
    let hash = SERVER_KEY_HASHER.hash_one((&method, &id));
    ServerKey { method, id, hash }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ServerId {
    /// §17.2.3: the branch (with the magic cookie) and the sent-by of the top Via, in one
    /// shared text: the branch is its first `branch_len` bytes, the sent-by (host in lower
    /// case, `:port` when given) the rest. One allocation per request; the copies the table,
    /// the TU and the outputs hold are reference counts.
    Branch { text: Arc<str>, branch_len: usize },
    /// §17.2.3, for RFC 2543 peers whose branch lacks the cookie.
    Rfc2543(Box<Rfc2543Id>),
}

/// The fields RFC 3261 §17.2.3 compares for a request from an RFC 2543 peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Rfc2543Id {
    request_uri: String,
    to_tag: Option<String>,
    from_tag: Option<String>,
    call_id: String,
    cseq: u32,
    top_via: String,
}

impl ServerKey {
    /// The method of the transaction: INVITE for the ACK of a non-2xx, CANCEL for a CANCEL.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The branch, when the peer follows RFC 3261 (`None` for RFC 2543 matching).
    pub fn branch(&self) -> Option<&str> {
        match &self.id {
            ServerId::Branch { text, branch_len } => Some(&text[..*branch_len]),
            ServerId::Rfc2543(_) => None,
        }
    }

    /// The key a request is matched under; `None` when it has no readable Via or CSeq (the
    /// message facade refuses such requests before they get here). Compute it once per
    /// request and pass it along ([`TransactionInput::ReceivedRequest`]).
    pub fn of_request(request: &Request) -> Option<ServerKey> {
        let via = request.top_via_ref()?;
        let cseq = request.cseq_ref()?;
        let method = if request.method == Method::ACK { Method::INVITE } else { request.method.clone() };
        let branch = via.params.get_val("branch").map(|b| b.as_str());
        if let Some(branch) = branch.filter(|b| b.starts_with(BRANCH_COOKIE)) {
            let mut text = String::with_capacity(branch.len() + 24);
            text.push_str(branch);
            push_sent_by(&mut text, &via.sent_by);
            return Some(server_key(method, ServerId::Branch { text: Arc::from(text), branch_len: branch.len() }));
        }
        let mut sent_by = String::with_capacity(24);
        push_sent_by(&mut sent_by, &via.sent_by);
        let top_via = format!("{}/{sent_by};branch={}", via.transport.to_ascii_uppercase(), branch.unwrap_or_default());
        let id = Rfc2543Id {
            request_uri: request.uri.default_print_ctx().to_string(),
            to_tag: request.to_ref().and_then(|to| to.tag.as_ref()).map(|t| t.as_str().to_owned()),
            from_tag: request.from_ref().and_then(|from| from.tag.as_ref()).map(|t| t.as_str().to_owned()),
            call_id: request.call_id()?,
            cseq: cseq.cseq,
            top_via,
        };
        Some(server_key(method, ServerId::Rfc2543(Box::new(id))))
    }

    fn with_method(&self, method: Method) -> ServerKey {
        server_key(method, self.id.clone())
    }

    /// For RFC 2543 ACK matching: the same key with the To tag the INVITE had.
    fn with_to_tag(&self, to_tag: Option<String>) -> ServerKey {
        match &self.id {
            ServerId::Branch { .. } => self.clone(),
            ServerId::Rfc2543(id) => {
                server_key(self.method.clone(), ServerId::Rfc2543(Box::new(Rfc2543Id { to_tag, ..(**id).clone() })))
            }
        }
    }
}

/// A Via's sent-by as the server key compares it: the host as printed, in lower case, and
/// `:port` when the Via gives one.
fn push_sent_by(out: &mut String, sent_by: &HostPort) {
    match &sent_by.host {
        Host::IP4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, octet);
            }
        }
        Host::IP6(_) => {
            let _ = write!(out, "{}", sent_by.host);
        }
        Host::Name(name) => {
            let start = out.len();
            out.push_str(name);
            out[start..].make_ascii_lowercase();
        }
    }
    if let Some(port) = sent_by.port {
        out.push(':');
        push_decimal(out, port);
    }
}

/// A client transaction's identity, as RFC 3261 §17.1.3 matches responses to it: the branch
/// of the top Via and the CSeq method.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    branch: String,
    method: Method,
}

impl ClientKey {
    /// The key [`TransactionInput::SendRequest`] will create for `request`, so a TU can file
    /// it before the outputs name it. `None` without a top Via branch or a CSeq.
    pub fn of_request(request: &Request) -> Option<ClientKey> {
        Some(ClientKey { branch: request.branch()?, method: request.cseq()?.method })
    }

    fn of_response(response: &Response) -> Option<ClientKey> {
        Some(ClientKey { branch: response.branch()?, method: response.cseq()?.method })
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    pub fn method(&self) -> &Method {
        &self.method
    }
}

/// Either side's key, for outputs that concern both.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TransactionKey {
    Server(ServerKey),
    Client(ClientKey),
}

#[derive(Debug, Clone)]
pub enum TransactionInput {
    /// A parsed message off the network. `source` is the packet's real source address.
    Received { message: Message, source: SocketAddr, transport: Transport },
    /// A request off the network whose key the caller already computed with
    /// [`ServerKey::of_request`] (to ask [`Transactions::has_server`] first): the same as
    /// `Received`, without reading the key again.
    ReceivedRequest { request: Request, key: ServerKey, source: SocketAddr, transport: Transport },
    /// The transaction user (TU) starts a client transaction. The request must carry a Via
    /// with a branch (magic cookie z9hG4bK) that the TU made. An ACK is sent as is, without a
    /// transaction (it is the ACK for a 2xx, RFC 3261 §13.2.2.4).
    SendRequest { request: Request, destination: SocketAddr, transport: Transport },
    /// The TU answers the server transaction `key`.
    SendResponse { key: ServerKey, response: Response },
    /// The TU answers the server transaction `key` once, statelessly (Kamailio's
    /// `sl_send_reply`): the response goes out one time, nothing is retransmitted, and the
    /// transaction is gone at once. For answers to requests nobody vouched for (challenges,
    /// 481s, refusals): a stranger's request then costs no state and no retransmissions, and a
    /// retransmission of it is simply answered again as a new request.
    SendStatelessResponse { key: ServerKey, response: Response },
    /// The time poll_timeout asked for has come (or passed).
    Timeout,
}

#[derive(Debug, Clone)]
pub enum TransactionOutput {
    /// Bytes to put on the wire.
    Transmit { destination: SocketAddr, transport: Transport, bytes: Bytes },
    /// A new request for the TU (not a retransmission, never an ACK: see `StrayAck`). A server
    /// transaction now exists under `key`; the top Via carries `received`/`rport` (§18.2.1),
    /// so `request.response(..)` finds its way back.
    Request { key: ServerKey, request: Request, source: SocketAddr, transport: Transport },
    /// An ACK that matched no server transaction in Completed/Confirmed (the ACK for a 2xx,
    /// RFC 3261 §17.2.1 / §13, RFC 6026 §8.7): for the TU/dialog.
    StrayAck { request: Request, source: SocketAddr, transport: Transport },
    /// A response for a client transaction, for the TU (provisional and final; retransmitted
    /// finals absorbed).
    Response { key: ClientKey, response: Response },
    /// A response that matched no client transaction (e.g. a retransmitted 2xx to INVITE
    /// after the transaction ended): for the TU/dialog.
    StrayResponse { response: Response, source: SocketAddr },
    /// Timer B/F fired (client), Timer H fired (server INVITE: no ACK for a final response),
    /// the CANCEL guard of §9.1 fired, or a client request was refused (table full, no branch).
    Timeout { key: TransactionKey },
    /// A response that named one of our client transactions by branch and CSeq method but
    /// carried another Call-ID: not from the dialog's peer, dropped (counted by the TU).
    Forged { source: SocketAddr },
    /// The transaction is gone (for TU bookkeeping). Every client transaction a TU starts
    /// ends with exactly one of these, even one refused at once.
    Terminated { key: TransactionKey },
}

/// All SIP transactions of one endpoint.
///
/// # Calling contract
///
/// Like quinn-proto's `Connection`, this is a deterministic state machine that is told the
/// time and never reads it:
///
/// 1. Call [`handle`](Self::handle) with each event: a message off the network, a request or
///    response from the TU, or [`TransactionInput::Timeout`] when the time asked for came.
///    `now` must never go backwards (asserted, also in release builds).
/// 2. After every `handle`, drain [`poll_output`](Self::poll_output) until it returns `None`:
///    perform each `Transmit`, deliver everything else to the TU.
/// 3. Then ask [`poll_timeout`](Self::poll_timeout) and arrange to call `handle(t, Timeout)`
///    at that time (re-arm one timer; replace any earlier one). `None` means no timer is due.
///
/// Every `handle` first runs the timers that are due at `now`, so a late `Timeout`, or a
/// message that arrives after a timer should have fired, sees events in time order. After a
/// `handle`, `poll_timeout` is always later than `now`.
///
/// # Limits
///
/// At most [`TRANSACTIONS_MAX`] transactions. At the bound, the oldest transaction that only
/// waits out retransmissions (Timer D, I, J, K or L running, nothing left to send) is ended
/// early to make room: it is a cache of an answer already given, and under load its
/// retransmission window shrinks from 64*T1 towards what the load allows (Kamailio answers
/// REGISTER with no transaction at all, and keeps an answered INVITE's for its 5 s wait timer,
/// not 32 s). Without the Accepted INVITEs among them, 6,000 calls/s filled the table with
/// INVITEs answered 2xx within 20 s and every new call got 503. Next go the server transactions the TU marked unvetted
/// ([`Transactions::mark_unvetted`]: requests nobody has vouched for, waiting for
/// authentication), oldest first; their requests go unanswered, as if lost, and the client's
/// retransmission starts over. Only when no such transaction exists does a new server request get a
/// stateless 503 with Retry-After (RFC 3261 §21.5.4) and a new client request `Timeout` and
/// `Terminated` at once, as if Timer B/F had fired: the TU's ordinary failure path.
///
/// Per RFC 3261 a server transaction waits for the TU's final response with no timer, and an
/// INVITE client transaction in Proceeding waits for the far end's final response; the TU
/// bounds both (it must answer every request, and CANCEL a call it gives up on — after which
/// the §9.1 guard destroys the INVITE transaction 64*T1 later if no final response came).
pub struct Transactions {
    config: TimerConfig,
    now: Option<Timestamp>,
    next_id: TxId,
    transactions: HashMap<TxId, Transaction, BuildHasherDefault<IdHasher>>,
    /// Keyed by [`ServerKey`]'s own keyed hash, passed through.
    servers: HashMap<ServerKey, TxId, BuildHasherDefault<IdHasher>>,
    clients: HashMap<ClientKey, TxId>,
    /// Every armed timer, earliest first: (when, which transaction, which slot).
    timers: BTreeSet<(Timestamp, TxId, Slot)>,
    /// Transactions that only absorb retransmissions, oldest first: evicted first at the bound.
    lingering: BTreeSet<TxId>,
    /// Server transactions of requests nobody has vouched for yet (the TU marks them: a new
    /// REGISTER or INVITE waiting for authentication), oldest first: evicted next at the bound,
    /// before anything a phone that proved itself depends on.
    unvetted: BTreeSet<TxId>,
    outputs: VecDeque<TransactionOutput>,
}

type TxId = u64;

/// Hashes a [`TxId`] with one multiplication instead of SipHash: the ids are the table's own
/// counter, never a peer's choice, so there is nothing to flood (the peer-chosen keys, in
/// `servers`, arrive already hashed under a secret key: see [`ServerKey`]).
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A transaction has at most two timers armed at once: one that retransmits (A, E, G, or
/// the 100 Trying delay) and one that ends it (B, D, F, H, I, J, K, L, the CANCEL guard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Slot {
    Retransmit,
    Deadline,
}

/// The timers of RFC 3261 Table 4 and RFC 6026, plus the 200 ms 100-Trying delay of §17.2.1
/// and the §9.1 guard on a cancelled INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    A,
    B,
    D,
    E,
    F,
    G,
    H,
    I,
    J,
    K,
    L,
    Trying,
    CancelGuard,
}

#[derive(Clone, Copy, Debug)]
struct Armed {
    at: Timestamp,
    timer: Timer,
}

struct Transaction {
    key: TransactionKey,
    transport: Transport,
    retransmit: Option<Armed>,
    deadline: Option<Armed>,
    /// The current retransmission interval of Timer A, E or G.
    interval: Duration,
    kind: Kind,
    /// When it began; the simulator's checkers bound every transaction's age by this.
    created: Timestamp,
}

/// A response already put on the wire, kept to answer retransmitted requests.
struct Sent {
    bytes: Bytes,
    destination: SocketAddr,
}

enum Kind {
    InviteClient {
        state: InviteClientState,
        request: Request,
        bytes: Bytes,
        destination: SocketAddr,
        /// The ACK this transaction made for a non-2xx final (§17.1.1.3), re-sent on retransmits.
        ack: Option<Bytes>,
        /// The TU sent a CANCEL for this INVITE (§9.1).
        cancelled: bool,
        /// Responses must carry it.
        call_id: Option<String>,
    },
    NonInviteClient {
        state: NonInviteClientState,
        bytes: Bytes,
        destination: SocketAddr,
        /// Responses must carry it.
        call_id: Option<String>,
    },
    InviteServer {
        state: InviteServerState,
        /// Kept to build the 100 Trying (§8.2.6.1).
        request: Request,
        /// Where its responses go (§18.2.2), read once from the request's stamped top Via:
        /// every response copies that Via.
        reply_to: SocketAddr,
        last: Option<Sent>,
        /// The To tag of the final response, for RFC 2543 ACK matching (§17.2.3).
        to_tag: Option<String>,
    },
    NonInviteServer {
        state: NonInviteServerState,
        /// As for `InviteServer`.
        reply_to: SocketAddr,
        last: Option<Sent>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InviteClientState {
    Calling,
    Proceeding,
    Completed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NonInviteClientState {
    Trying,
    Proceeding,
    Completed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InviteServerState {
    Proceeding,
    Completed,
    Confirmed,
    /// RFC 6026 §7.1: a 2xx was sent; retransmitted INVITEs are absorbed until Timer L.
    Accepted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NonInviteServerState {
    Trying,
    Proceeding,
    Completed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Live,
    Terminate,
}

/// What a transaction may touch while it handles one event.
struct Ctx<'a> {
    now: Timestamp,
    config: &'a TimerConfig,
    outputs: &'a mut VecDeque<TransactionOutput>,
}

impl Ctx<'_> {
    fn transmit(&mut self, destination: SocketAddr, transport: Transport, bytes: Bytes) {
        self.outputs.push_back(TransactionOutput::Transmit { destination, transport, bytes });
    }
}

impl Transactions {
    /// A table with the given timer base values.
    ///
    /// # Panics
    /// If T1 is zero or T2 is below T1: retransmission timers must move time forward.
    pub fn new(config: TimerConfig) -> Self {
        assert!(!config.t1.is_zero(), "T1 must be positive");
        assert!(config.t2 >= config.t1, "T2 must not be below T1");
        Transactions {
            config,
            now: None,
            next_id: 0,
            transactions: HashMap::default(),
            servers: HashMap::default(),
            clients: HashMap::new(),
            timers: BTreeSet::new(),
            lingering: BTreeSet::new(),
            unvetted: BTreeSet::new(),
            outputs: VecDeque::new(),
        }
    }

    /// Feeds one event in at `now`; drain [`poll_output`](Self::poll_output) afterwards.
    pub fn handle(&mut self, now: Timestamp, input: TransactionInput) {
        if let Some(last) = self.now {
            assert!(now >= last, "time went backwards: {now} after {last}");
        }
        self.now = Some(now);
        self.fire_due_timers(now);
        match input {
            TransactionInput::Received { message: Message::Request(request), source, transport } => {
                match ServerKey::of_request(&request) {
                    Some(key) => self.receive_request(now, key, request, source, transport),
                    None => tracing::debug!(%source, "request without a readable Via or CSeq: dropped"),
                }
            }
            TransactionInput::ReceivedRequest { request, key, source, transport } => {
                self.receive_request(now, key, request, source, transport)
            }
            TransactionInput::Received { message: Message::Response(response), source, .. } => {
                self.receive_response(now, response, source)
            }
            TransactionInput::SendRequest { request, destination, transport } => {
                self.send_request(now, request, destination, transport)
            }
            TransactionInput::SendResponse { key, response } => self.send_response(now, key, response),
            TransactionInput::SendStatelessResponse { key, response } => self.send_stateless(key, response),
            TransactionInput::Timeout => {}
        }
    }

    /// The next thing to transmit or tell the TU, in the order it happened.
    pub fn poll_output(&mut self) -> Option<TransactionOutput> {
        self.outputs.pop_front()
    }

    /// When the earliest timer of any transaction fires; `None` when none is armed.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// Live transactions, client and server.
    pub fn len(&self) -> usize {
        self.transactions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transactions.is_empty()
    }

    /// When the oldest live transaction began: every transaction ends by its timers (or by the
    /// TU's answer, which the TU bounds), so this never lags `now` by more than those bounds.
    /// O(n): for checkers, not for the message path.
    pub fn oldest(&self) -> Option<Timestamp> {
        self.transactions.values().map(|tx| tx.created).min()
    }

    /// The oldest live transaction, described for a checker's report: key, state, start.
    pub fn describe_oldest(&self) -> Option<String> {
        let tx = self.transactions.values().min_by_key(|tx| tx.created)?;
        let state = match &tx.kind {
            Kind::InviteClient { state, .. } => format!("INVITE client {state:?}"),
            Kind::NonInviteClient { state, .. } => format!("non-INVITE client {state:?}"),
            Kind::InviteServer { state, .. } => format!("INVITE server {state:?}"),
            Kind::NonInviteServer { state, .. } => format!("non-INVITE server {state:?}"),
        };
        Some(format!("{state}, {:?}, started at {}", tx.key, tx.created))
    }

    /// The INVITE server transaction a CANCEL names (RFC 3261 §9.2: same branch and sent-by,
    /// or for RFC 2543 peers the same Request-URI, tags, Call-ID, CSeq number and top Via).
    /// `None` means the TU should answer the CANCEL with 481.
    pub fn find_invite_for_cancel(&self, cancel: &Request) -> Option<ServerKey> {
        if cancel.method != Method::CANCEL {
            return None;
        }
        let key = ServerKey::of_request(cancel)?.with_method(Method::INVITE);
        let id = self.servers.get(&key)?;
        // Branch and sent-by are the client's choice and may be predictable; the CANCEL must
        // also be of the INVITE's dialog attempt (§9.1: the same Call-ID, From and To).
        let Kind::InviteServer { request: invite, .. } = &self.transactions.get(id)?.kind else { return None };
        let from_tag = |r: &Request| r.from().and_then(|f| f.tag).map(|t| t.as_str().to_owned());
        let same = invite.call_id() == cancel.call_id() && from_tag(invite) == from_tag(cancel);
        same.then_some(key)
    }

    /// True when `request` would start a new server transaction (it is not a retransmission
    /// of one we hold, and not an ACK): what a per-source admission limit counts.
    pub fn is_new_request(&self, request: &Request) -> bool {
        request.method != Method::ACK && ServerKey::of_request(request).is_some_and(|k| !self.servers.contains_key(&k))
    }

    /// Whether the server transaction `key` is still here (not ended, not evicted).
    pub fn has_server(&self, key: &ServerKey) -> bool {
        self.servers.contains_key(key)
    }

    /// The TU has not vouched for this request yet: at the table's bound it is evicted before
    /// any transaction a proven phone depends on (see Limits). An unvetted INVITE sends no
    /// 100 Trying of its own (§17.2.1's 200 ms timer is stopped): a stranger's INVITE gets
    /// one datagram back, the TU's answer, however slow the TU is under a flood — the client
    /// retransmits meanwhile and the transaction absorbs it. The TU sends the 100 itself once
    /// it vouches for the request.
    pub fn mark_unvetted(&mut self, key: &ServerKey) {
        let Some(&id) = self.servers.get(key) else { return };
        self.unvetted.insert(id);
        let now = self.now.unwrap_or(Timestamp::ZERO);
        self.update(id, now, |tx, _| {
            if tx.retransmit.is_some_and(|armed| matches!(armed.timer, Timer::Trying)) {
                tx.retransmit = None;
            }
            Fate::Live
        });
    }

    /// The TU vouches for this request now (its sender authenticated, or it names a dialog).
    pub fn mark_vetted(&mut self, key: &ServerKey) {
        if let Some(&id) = self.servers.get(key) {
            self.unvetted.remove(&id);
        }
    }

    fn fire_due_timers(&mut self, now: Timestamp) {
        // Terminates: a timer that fires is removed, and any timer it re-arms is later than
        // `now` (retransmit intervals are at least T1 > 0; zero deadlines end the transaction).
        while let Some(&(at, id, slot)) = self.timers.first() {
            if at > now {
                break;
            }
            self.update(id, now, |tx, ctx| {
                let armed = match slot {
                    Slot::Retransmit => tx.retransmit.take(),
                    Slot::Deadline => tx.deadline.take(),
                };
                let armed = armed.expect("the timer index only holds armed timers");
                assert_eq!(armed.at, at, "the timer index agrees with the transaction");
                tx.fire(armed.timer, ctx)
            });
        }
    }

    fn receive_request(
        &mut self,
        now: Timestamp,
        key: ServerKey,
        mut request: Request,
        source: SocketAddr,
        transport: Transport,
    ) {
        // §18.2.1 / RFC 3581: so that every response built from it finds its way back.
        request.stamp_via_source(source);
        if request.method == Method::ACK {
            return self.receive_ack(now, key, request, source, transport);
        }
        if let Some(&id) = self.servers.get(&key) {
            self.update(id, now, |tx, ctx| tx.on_request_retransmission(ctx));
            return;
        }
        if !self.make_room() {
            return self.refuse_overloaded(&request, source, transport);
        }
        let reply_to = request.reply_destination(source, transport);
        let kind = if request.method == Method::INVITE {
            Kind::InviteServer {
                state: InviteServerState::Proceeding,
                request: request.clone(),
                reply_to,
                last: None,
                to_tag: None,
            }
        } else {
            Kind::NonInviteServer { state: NonInviteServerState::Trying, reply_to, last: None }
        };
        self.outputs.push_back(TransactionOutput::Request { key: key.clone(), request, source, transport });
        self.start(now, TransactionKey::Server(key), transport, kind);
    }

    /// An ACK belongs to the INVITE server transaction only when that answered with a
    /// non-2xx final (§17.2.1); every other ACK is the TU's (§13.3.1.4, RFC 6026 §8.7).
    fn receive_ack(
        &mut self,
        now: Timestamp,
        key: ServerKey,
        request: Request,
        source: SocketAddr,
        transport: Transport,
    ) {
        let ack_to_tag = request.to_ref().and_then(|to| to.tag.as_ref()).map(|t| t.as_str().to_owned());
        let id = match &key.id {
            ServerId::Branch { .. } => self.servers.get(&key).copied(),
            // §17.2.3 for RFC 2543: the ACK's To tag is the one our response added, so the
            // INVITE had no To tag — unless it was sent inside a dialog, when both carry it.
            ServerId::Rfc2543(_) => self.servers.get(&key).copied().or_else(|| {
                let id = *self.servers.get(&key.with_to_tag(None))?;
                let matches = match &self.transactions.get(&id)?.kind {
                    Kind::InviteServer { to_tag, .. } => to_tag.is_some() && *to_tag == ack_to_tag,
                    _ => false,
                };
                matches.then_some(id)
            }),
        };
        let mut absorbed = false;
        if let Some(id) = id {
            self.update(id, now, |tx, ctx| {
                let (fate, taken) = tx.on_ack(ctx);
                absorbed = taken;
                fate
            });
        }
        if !absorbed {
            self.outputs.push_back(TransactionOutput::StrayAck { request, source, transport });
        }
    }

    /// RFC 3261 §21.5.4: refuse a request the table has no room for, statelessly. The To tag
    /// is derived from the request so a retransmission gets the same one (§8.2.7).
    fn refuse_overloaded(&mut self, request: &Request, source: SocketAddr, transport: Transport) {
        let tag = format!(
            "{:016x}",
            fnv1a(&[request.call_id_str().unwrap_or_default(), request.branch_str().unwrap_or_default()])
        );
        let mut response = request.response(503, Some(&tag));
        response.headers.insert(Name::RETRY_AFTER, OVERLOAD_RETRY_AFTER_S);
        let destination = request.reply_destination(source, transport);
        tracing::warn!(%source, method = %request.method, "transaction table full: 503");
        self.outputs.push_back(TransactionOutput::Transmit { destination, transport, bytes: response.to_bytes() });
    }

    fn receive_response(&mut self, now: Timestamp, response: Response, source: SocketAddr) {
        let id = ClientKey::of_response(&response).and_then(|key| self.clients.get(&key).copied());
        let Some(id) = id else {
            self.outputs.push_back(TransactionOutput::StrayResponse { response, source });
            return;
        };
        // §17.1.3 matches on branch and CSeq method; a branch is ours and unguessable, but a
        // response must also be of the request's Call-ID before it may end the transaction.
        let call_id = match &self.transactions[&id].kind {
            Kind::InviteClient { call_id, .. } | Kind::NonInviteClient { call_id, .. } => call_id.as_deref(),
            Kind::InviteServer { .. } | Kind::NonInviteServer { .. } => None,
        };
        if call_id.is_some_and(|c| response.call_id().as_deref() != Some(c)) {
            self.outputs.push_back(TransactionOutput::Forged { source });
            return;
        }
        self.update(id, now, |tx, ctx| tx.on_response(response, ctx));
    }

    fn send_request(&mut self, now: Timestamp, request: Request, destination: SocketAddr, transport: Transport) {
        if request.method == Method::ACK {
            // The ACK for a 2xx is the TU's own, sent straight to the transport (§13.2.2.4).
            let bytes = request.to_bytes();
            self.outputs.push_back(TransactionOutput::Transmit { destination, transport, bytes });
            return;
        }
        let key = ClientKey {
            branch: request.branch().unwrap_or_default(),
            method: request.cseq().map(|c| c.method).unwrap_or_else(|| request.method.clone()),
        };
        let refusal = if !key.branch.starts_with(BRANCH_COOKIE) {
            Some("request without an RFC 3261 branch")
        } else if key.method != request.method {
            Some("request without a CSeq matching its method")
        } else if self.clients.contains_key(&key) {
            Some("branch already in use by a live client transaction")
        } else if !self.make_room() {
            Some("transaction table full")
        } else {
            None
        };
        if let Some(reason) = refusal {
            tracing::warn!(branch = %key.branch, method = %key.method, reason, "client request refused");
            let key = TransactionKey::Client(key);
            self.outputs.push_back(TransactionOutput::Timeout { key: key.clone() });
            self.outputs.push_back(TransactionOutput::Terminated { key });
            return;
        }
        if request.method == Method::CANCEL {
            // §9.1: once cancelled, an INVITE that never gets a final response is given up
            // 64*T1 later.
            let invite = ClientKey { branch: key.branch.clone(), method: Method::INVITE };
            if let Some(&id) = self.clients.get(&invite) {
                self.update(id, now, |tx, ctx| tx.on_cancel_sent(ctx));
            }
        }
        let bytes = request.to_bytes();
        let call_id = request.call_id();
        let kind = if request.method == Method::INVITE {
            Kind::InviteClient {
                state: InviteClientState::Calling,
                request,
                bytes,
                destination,
                ack: None,
                cancelled: false,
                call_id,
            }
        } else {
            Kind::NonInviteClient { state: NonInviteClientState::Trying, bytes, destination, call_id }
        };
        self.start(now, TransactionKey::Client(key), transport, kind);
    }

    fn send_response(&mut self, now: Timestamp, key: ServerKey, response: Response) {
        if !(100..=699).contains(&response.code) {
            tracing::error!(code = response.code, "TU sent a response with an invalid status code: dropped");
            return;
        }
        let Some(&id) = self.servers.get(&key) else {
            tracing::debug!(?key, code = response.code, "response for a transaction that is gone: dropped");
            return;
        };
        self.update(id, now, |tx, ctx| tx.on_tu_response(response, ctx));
    }

    fn send_stateless(&mut self, key: ServerKey, response: Response) {
        let Some(&id) = self.servers.get(&key) else {
            tracing::debug!(?key, code = response.code, "stateless response for a transaction that is gone: dropped");
            return;
        };
        let tx = &self.transactions[&id];
        let destination = match &tx.kind {
            Kind::InviteServer { reply_to, .. } | Kind::NonInviteServer { reply_to, .. } => *reply_to,
            Kind::InviteClient { .. } | Kind::NonInviteClient { .. } => return,
        };
        let transport = tx.transport;
        self.outputs.push_back(TransactionOutput::Transmit { destination, transport, bytes: response.to_bytes() });
        self.remove(id);
    }

    /// Files a new transaction and lets it take its first steps (§17.1.1.2, §17.1.2.2, §17.2.1).
    fn start(&mut self, now: Timestamp, key: TransactionKey, transport: Transport, kind: Kind) {
        let id = self.next_id;
        self.next_id += 1;
        match &key {
            TransactionKey::Server(k) => assert!(self.servers.insert(k.clone(), id).is_none(), "new server key"),
            TransactionKey::Client(k) => assert!(self.clients.insert(k.clone(), id).is_none(), "new client key"),
        }
        let tx = Transaction {
            key,
            transport,
            retransmit: None,
            deadline: None,
            interval: self.config.t1,
            kind,
            created: now,
        };
        self.transactions.insert(id, tx);
        self.update(id, now, |tx, ctx| tx.on_start(ctx));
    }

    /// Runs `event` on one transaction, then brings the timer index up to date with the
    /// timers it armed or cleared, and removes it if it terminated.
    fn update(&mut self, id: TxId, now: Timestamp, event: impl FnOnce(&mut Transaction, &mut Ctx<'_>) -> Fate) {
        let Some(tx) = self.transactions.get_mut(&id) else { return };
        let before = [(Slot::Retransmit, tx.retransmit), (Slot::Deadline, tx.deadline)];
        let mut ctx = Ctx { now, config: &self.config, outputs: &mut self.outputs };
        let fate = event(tx, &mut ctx);
        let after = [tx.retransmit, tx.deadline];
        for ((slot, old), new) in before.into_iter().zip(after) {
            let (old, new) = (old.map(|a| a.at), new.map(|a| a.at));
            if old != new {
                if let Some(at) = old {
                    self.timers.remove(&(at, id, slot));
                }
                if let Some(at) = new {
                    assert!(at > now, "a timer is armed in the future");
                    self.timers.insert((at, id, slot));
                }
            }
        }
        if fate == Fate::Terminate {
            self.remove(id);
        } else if tx.is_lingering() {
            self.lingering.insert(id);
            self.unvetted.remove(&id);
        } else {
            self.lingering.remove(&id);
        }
    }

    /// True when there is room for one more transaction, evicting the oldest lingering one
    /// if the table is full.
    fn make_room(&mut self) -> bool {
        if self.transactions.len() < TRANSACTIONS_MAX {
            return true;
        }
        match self.lingering.pop_first().or_else(|| self.unvetted.pop_first()) {
            Some(id) => {
                self.remove(id);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, id: TxId) {
        let tx = self.transactions.remove(&id).expect("removing a live transaction");
        self.lingering.remove(&id);
        self.unvetted.remove(&id);
        for (slot, armed) in [(Slot::Retransmit, tx.retransmit), (Slot::Deadline, tx.deadline)] {
            if let Some(armed) = armed {
                self.timers.remove(&(armed.at, id, slot));
            }
        }
        match &tx.key {
            TransactionKey::Server(k) => assert_eq!(self.servers.remove(k), Some(id), "server index agrees"),
            TransactionKey::Client(k) => assert_eq!(self.clients.remove(k), Some(id), "client index agrees"),
        }
        self.outputs.push_back(TransactionOutput::Terminated { key: tx.key });
    }
}

impl Transaction {
    /// Only waiting out retransmissions: nothing to send, a Timer D, I, J, K or L running. An
    /// INVITE answered 2xx (Accepted, Timer L: RFC 6026 §7.1) only absorbs the INVITE's
    /// retransmissions, and a client stops those at the first provisional response (pbx sends
    /// 100 Trying within 200 ms); the TU retransmits its own 2xx and takes the ACK by dialog.
    fn is_lingering(&self) -> bool {
        self.retransmit.is_none()
            && self.deadline.is_some_and(|a| matches!(a.timer, Timer::D | Timer::I | Timer::J | Timer::K | Timer::L))
    }

    fn arm_retransmit(&mut self, now: Timestamp, timer: Timer, interval: Duration) {
        self.interval = interval;
        self.retransmit = Some(Armed { at: now + interval, timer });
    }

    fn arm_deadline(&mut self, now: Timestamp, timer: Timer, after: Duration) {
        self.deadline = Some(Armed { at: now + after, timer });
    }

    /// Arms a timer that only waits out retransmissions (D, I, J, K): on a reliable transport
    /// its value is zero (Table 4) and the transaction ends at once.
    fn linger(&mut self, now: Timestamp, timer: Timer, unreliable: Duration) -> Fate {
        self.retransmit = None;
        if self.transport.is_reliable() || unreliable.is_zero() {
            return Fate::Terminate;
        }
        self.arm_deadline(now, timer, unreliable);
        Fate::Live
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> Fate {
        let (now, t1, t1_x64, transport) = (ctx.now, ctx.config.t1, ctx.config.t1_x64(), self.transport);
        let unreliable = !transport.is_reliable();
        match &self.kind {
            // §17.1.1.2: send; Timer A on UDP only; Timer B on any transport.
            Kind::InviteClient { bytes, destination, .. } => {
                ctx.transmit(*destination, transport, bytes.clone());
                if unreliable {
                    self.arm_retransmit(now, Timer::A, t1);
                }
                self.arm_deadline(now, Timer::B, t1_x64);
            }
            // §17.1.2.2: send; Timer E on UDP only; Timer F on any transport.
            Kind::NonInviteClient { bytes, destination, .. } => {
                ctx.transmit(*destination, transport, bytes.clone());
                if unreliable {
                    self.arm_retransmit(now, Timer::E, t1);
                }
                self.arm_deadline(now, Timer::F, t1_x64);
            }
            // §17.2.1: 100 Trying unless the TU answers within 200 ms.
            Kind::InviteServer { .. } => self.arm_retransmit(now, Timer::Trying, TRYING_DELAY),
            // §17.2.2: Trying, waiting for the TU; no timer.
            Kind::NonInviteServer { .. } => {}
        }
        Fate::Live
    }

    fn fire(&mut self, timer: Timer, ctx: &mut Ctx<'_>) -> Fate {
        let (now, config, transport) = (ctx.now, *ctx.config, self.transport);
        match timer {
            // §17.1.1.2: retransmit the INVITE, double the interval (no cap).
            Timer::A => {
                if let Kind::InviteClient { state: InviteClientState::Calling, bytes, destination, .. } = &self.kind {
                    ctx.transmit(*destination, transport, bytes.clone());
                    let next = self.interval.saturating_mul(2);
                    self.arm_retransmit(now, Timer::A, next);
                }
                Fate::Live
            }
            // §17.1.2.2: retransmit, doubling up to T2 in Trying, at T2 in Proceeding.
            Timer::E => {
                if let Kind::NonInviteClient { state, bytes, destination, .. } = &self.kind {
                    let next = match state {
                        NonInviteClientState::Trying => self.interval.saturating_mul(2).min(config.t2),
                        NonInviteClientState::Proceeding => config.t2,
                        NonInviteClientState::Completed => return Fate::Live,
                    };
                    ctx.transmit(*destination, transport, bytes.clone());
                    self.arm_retransmit(now, Timer::E, next);
                }
                Fate::Live
            }
            // §17.2.1: retransmit the final response, doubling up to T2.
            Timer::G => {
                if let Kind::InviteServer { state: InviteServerState::Completed, last: Some(sent), .. } = &self.kind {
                    ctx.transmit(sent.destination, transport, sent.bytes.clone());
                    let next = self.interval.saturating_mul(2).min(config.t2);
                    self.arm_retransmit(now, Timer::G, next);
                }
                Fate::Live
            }
            // §17.2.1: the TU has been silent for 200 ms.
            Timer::Trying => {
                if let Kind::InviteServer {
                    state: InviteServerState::Proceeding,
                    request,
                    reply_to,
                    last: last @ None,
                    ..
                } = &mut self.kind
                {
                    let trying = request.response(100, None);
                    let destination = *reply_to;
                    let bytes = trying.to_bytes();
                    ctx.transmit(destination, transport, bytes.clone());
                    *last = Some(Sent { bytes, destination });
                }
                Fate::Live
            }
            // B (§17.1.1.2), F (§17.1.2.2), H (§17.2.1): the far end never answered;
            // the §9.1 guard: a cancelled INVITE never got its final response.
            Timer::B | Timer::F | Timer::H | Timer::CancelGuard => {
                ctx.outputs.push_back(TransactionOutput::Timeout { key: self.key.clone() });
                Fate::Terminate
            }
            // D, K, I, J: retransmissions waited out; L (RFC 6026 §7.1): 2xx retransmissions
            // of the INVITE waited out.
            Timer::D | Timer::K | Timer::I | Timer::J | Timer::L => Fate::Terminate,
        }
    }

    /// A response matched this client transaction (§17.1.3).
    fn on_response(&mut self, response: Response, ctx: &mut Ctx<'_>) -> Fate {
        let (now, config, transport) = (ctx.now, *ctx.config, self.transport);
        let code = response.code;
        let Transaction { key, kind, .. } = self;
        let TransactionKey::Client(client_key) = key else { return Fate::Live };
        let up = |outputs: &mut VecDeque<TransactionOutput>, response| {
            outputs.push_back(TransactionOutput::Response { key: client_key.clone(), response })
        };
        match kind {
            Kind::InviteClient { state, request, destination, ack, cancelled, .. } => match (*state, code) {
                // §17.1.1.2: provisional: Proceeding; A and B stop.
                (InviteClientState::Calling | InviteClientState::Proceeding, 100..=199) => {
                    let was_calling = *state == InviteClientState::Calling;
                    *state = InviteClientState::Proceeding;
                    let guard = *cancelled;
                    up(ctx.outputs, response);
                    if was_calling {
                        self.retransmit = None;
                        self.deadline = None;
                        if guard {
                            self.arm_deadline(now, Timer::CancelGuard, config.t1_x64());
                        }
                    }
                    Fate::Live
                }
                // §17.1.1.2: a 2xx goes up and ends the transaction; its ACK is the TU's.
                (InviteClientState::Calling | InviteClientState::Proceeding, 200..=299) => {
                    up(ctx.outputs, response);
                    Fate::Terminate
                }
                // §17.1.1.3: ACK a non-2xx final ourselves; Completed with Timer D.
                (InviteClientState::Calling | InviteClientState::Proceeding, _) => {
                    let bytes = ack_for(request, &response).to_bytes();
                    ctx.transmit(*destination, transport, bytes.clone());
                    *ack = Some(bytes);
                    *state = InviteClientState::Completed;
                    up(ctx.outputs, response);
                    self.deadline = None;
                    self.linger(now, Timer::D, TIMER_D_UDP_MIN.max(config.t1_x64()))
                }
                // §17.1.1.2: a retransmitted non-2xx final gets the same ACK again.
                (InviteClientState::Completed, 300..=699) => {
                    if let Some(bytes) = ack {
                        ctx.transmit(*destination, transport, bytes.clone());
                    }
                    Fate::Live
                }
                (InviteClientState::Completed, _) => Fate::Live,
            },
            Kind::NonInviteClient { state, .. } => match (*state, code) {
                (NonInviteClientState::Trying | NonInviteClientState::Proceeding, 100..=199) => {
                    *state = NonInviteClientState::Proceeding;
                    up(ctx.outputs, response);
                    Fate::Live
                }
                // §17.1.2.2: final: Completed, Timer K absorbs retransmitted finals.
                (NonInviteClientState::Trying | NonInviteClientState::Proceeding, _) => {
                    *state = NonInviteClientState::Completed;
                    up(ctx.outputs, response);
                    self.deadline = None;
                    self.linger(now, Timer::K, config.t4)
                }
                (NonInviteClientState::Completed, _) => Fate::Live,
            },
            Kind::InviteServer { .. } | Kind::NonInviteServer { .. } => Fate::Live,
        }
    }

    /// The TU sent a CANCEL for this INVITE (§9.1). In Calling, Timer B already bounds it.
    fn on_cancel_sent(&mut self, ctx: &mut Ctx<'_>) -> Fate {
        if let Kind::InviteClient { state, cancelled, .. } = &mut self.kind {
            *cancelled = true;
            if *state == InviteClientState::Proceeding && self.deadline.is_none() {
                self.arm_deadline(ctx.now, Timer::CancelGuard, ctx.config.t1_x64());
            }
        }
        Fate::Live
    }

    /// The request that created this server transaction came again (§17.2.1, §17.2.2).
    fn on_request_retransmission(&mut self, ctx: &mut Ctx<'_>) -> Fate {
        let resend = match &self.kind {
            Kind::InviteServer {
                state: InviteServerState::Proceeding | InviteServerState::Completed, last, ..
            } => last.as_ref(),
            // Confirmed absorbs; so does Accepted (RFC 6026 §7.1: not passed to the TU).
            Kind::InviteServer { .. } => None,
            // Trying has nothing to resend yet: absorbed silently.
            Kind::NonInviteServer { last, .. } => last.as_ref(),
            Kind::InviteClient { .. } | Kind::NonInviteClient { .. } => None,
        };
        if let Some(sent) = resend {
            ctx.transmit(sent.destination, self.transport, sent.bytes.clone());
        }
        Fate::Live
    }

    /// An ACK matched this INVITE server transaction. Returns whether it was absorbed.
    fn on_ack(&mut self, ctx: &mut Ctx<'_>) -> (Fate, bool) {
        let Kind::InviteServer { state, .. } = &mut self.kind else { return (Fate::Live, false) };
        match *state {
            // §17.2.1: the ACK for our non-2xx: Confirmed, G and H stop, Timer I.
            InviteServerState::Completed => {
                *state = InviteServerState::Confirmed;
                self.deadline = None;
                (self.linger(ctx.now, Timer::I, ctx.config.t4), true)
            }
            InviteServerState::Confirmed => (Fate::Live, true),
            // The ACK for a 2xx (RFC 6026 §8.7), or a confused peer's: the TU's.
            InviteServerState::Accepted | InviteServerState::Proceeding => (Fate::Live, false),
        }
    }

    /// The TU answers this server transaction (§17.2.1, §17.2.2).
    fn on_tu_response(&mut self, response: Response, ctx: &mut Ctx<'_>) -> Fate {
        let (now, config, transport) = (ctx.now, *ctx.config, self.transport);
        let code = response.code;
        match &mut self.kind {
            Kind::InviteServer { state, reply_to, last, to_tag, .. } => {
                let destination = *reply_to;
                match (*state, code) {
                    (InviteServerState::Proceeding, 100..=199) => {
                        let bytes = response.to_bytes();
                        ctx.transmit(destination, transport, bytes.clone());
                        *last = Some(Sent { bytes, destination });
                        self.retransmit = None;
                        Fate::Live
                    }
                    // RFC 6026 §7.1: Accepted, Timer L = 64*T1, on every transport.
                    (InviteServerState::Proceeding, 200..=299) => {
                        let bytes = response.to_bytes();
                        ctx.transmit(destination, transport, bytes.clone());
                        *last = Some(Sent { bytes, destination });
                        *state = InviteServerState::Accepted;
                        self.retransmit = None;
                        self.arm_deadline(now, Timer::L, config.t1_x64());
                        Fate::Live
                    }
                    // §17.2.1: Completed; Timer G on UDP, Timer H on any transport.
                    (InviteServerState::Proceeding, _) => {
                        let bytes = response.to_bytes();
                        ctx.transmit(destination, transport, bytes.clone());
                        *last = Some(Sent { bytes, destination });
                        *to_tag = response_to_tag(&response);
                        *state = InviteServerState::Completed;
                        self.retransmit = None;
                        if !transport.is_reliable() {
                            self.arm_retransmit(now, Timer::G, config.t1);
                        }
                        self.arm_deadline(now, Timer::H, config.t1_x64());
                        Fate::Live
                    }
                    // RFC 6026 §7.1: the TU's own 2xx retransmissions pass through.
                    (InviteServerState::Accepted, 200..=299) => {
                        ctx.transmit(destination, transport, response.to_bytes());
                        Fate::Live
                    }
                    (state, code) => {
                        tracing::debug!(?state, code, "INVITE server transaction past Proceeding: response dropped");
                        Fate::Live
                    }
                }
            }
            Kind::NonInviteServer { state, reply_to, last } => {
                let destination = *reply_to;
                match (*state, code) {
                    (NonInviteServerState::Completed, _) => {
                        // §17.2.2: further finals from the TU are discarded.
                        tracing::debug!(code, "non-INVITE server transaction Completed: response dropped");
                        Fate::Live
                    }
                    (_, 100..=199) => {
                        let bytes = response.to_bytes();
                        ctx.transmit(destination, transport, bytes.clone());
                        *last = Some(Sent { bytes, destination });
                        *state = NonInviteServerState::Proceeding;
                        Fate::Live
                    }
                    // §17.2.2: Completed, Timer J = 64*T1 on UDP, 0 on TCP.
                    (_, _) => {
                        let bytes = response.to_bytes();
                        ctx.transmit(destination, transport, bytes.clone());
                        *last = Some(Sent { bytes, destination });
                        *state = NonInviteServerState::Completed;
                        self.linger(now, Timer::J, config.t1_x64())
                    }
                }
            }
            Kind::InviteClient { .. } | Kind::NonInviteClient { .. } => Fate::Live,
        }
    }
}

fn response_to_tag(response: &Response) -> Option<String> {
    response.to().and_then(|to| to.tag).map(|t| t.as_str().to_owned())
}

/// The ACK for a non-2xx final response, built as RFC 3261 §17.1.1.3 says: Request-URI,
/// Call-ID, From and CSeq number of the INVITE, To of the response, the INVITE's top Via only,
/// and its Route set.
fn ack_for(invite: &Request, response: &Response) -> Request {
    let mut headers = Headers::new();
    if let Some(via) = invite.top_via() {
        headers.insert_named(&via);
    }
    headers.insert(Name::MAX_FORWARDS, invite.header(&Name::MAX_FORWARDS).unwrap_or("70"));
    for (name, source) in
        [(Name::FROM, &invite.headers), (Name::TO, &response.headers), (Name::CALL_ID, &invite.headers)]
    {
        for value in source.get_raw(&name) {
            headers.insert(name.clone(), value.as_str());
        }
    }
    let number = invite.cseq().map(|c| c.cseq).unwrap_or_default();
    headers.insert_named(&CSeq::new(number, Method::ACK));
    for value in invite.headers.get_raw(&Name::ROUTE) {
        headers.insert(Name::ROUTE, value.as_str());
    }
    Request::new(Method::ACK, invite.uri.clone(), headers, Bytes::new())
}

/// FNV-1a over the parts, for stateless To tags: stable across runs, unlike std's hasher.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests;

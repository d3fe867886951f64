//! The PBX's side of the softphone proxy (`pbx proxy`): this node dials **out** to its proxy
//! over QUIC with mutual TLS (`[proxy] link`, certificates from `pbx proxy init`), so the
//! office opens no inbound port, and serves the softphones connected there as if they had
//! connected here.
//!
//! - **Signalling.** Each softphone connection at the proxy is a *flow*. Its messages enter
//!   the SIP endpoint exactly like those of a connection here, with the phone's address as the
//!   proxy saw it and its transport (TLS or TCP); what the endpoint sends to that address and
//!   transport goes back down the flow ([`NetWire::attach`]). The registrar challenges through
//!   the proxy: the proxy only ever carries digest answers.
//! - **Media.** For each audio stream of a proxied phone's call, a *stand-in* pair of UDP
//!   sockets here (on the media address) plays the phone toward pbx's own relay, and a
//!   *channel* at the proxy (a public port pair) plays the PBX toward the phone; packets cross
//!   the link as QUIC datagrams. The SDP is rewritten on the way ([`sdp`]): toward the PBX it
//!   names the stand-in, toward the phone the proxy's public ports. SRTP passes through as it
//!   is (keys travel in the SDP, inside TLS to the proxy and QUIC beyond it).
//! - **Seats.** At most the licence's `proxy_seats` softphones registered through the proxy
//!   at once (no licence service configured: not gated). A connection takes its seat with its
//!   first REGISTER that carries credentials and keeps it once that is answered 2xx (any other
//!   final answer gives it back); beyond the seats such a REGISTER is answered
//!   `403 Forbidden (no proxy seat)` here and counted
//!   (`pbx_proxy_flows_refused_total{reason="seats"}`). A connection that has not registered
//!   holds no seat, so strangers connecting cannot lock softphones out: at most
//!   [`PENDING_FLOWS_MAX`] such connections at once ([`PENDING_FLOWS_PER_SOURCE_MAX`] per
//!   source address), each closed if it has not registered within [`REGISTER_WITHIN`]. A
//!   licence with no seats: no link at all.
//!
//! Bounds: stand-ins per flow ([`STANDINS_PER_FLOW_MAX`]) and in all ([`STANDINS_MAX`]); they
//! close with their flow or the link, and a phone at its bound gets a new one in place of one
//! idle for [`STANDIN_IDLE`] (a call that ended).

pub mod sdp;

use crate::config::ProxyConfig;
use crate::sip::transport::{Inbound, NetWire};
use anyhow::Context;
use bytes::Bytes;
use pbx_actors::licence::LicenceView;
use pbx_actors::sip::message::Transport;
use pbx_cluster::identity::{NodeIdentity, NodeName};
use pbx_proxy_service::wire::{self, FlowTransport, ToPbx, ToProxy};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// Audio streams (stand-ins) one proxied phone may have at once: a few calls, each with a
/// stream or two.
pub const STANDINS_PER_FLOW_MAX: usize = 16;
/// Stand-ins in all.
pub const STANDINS_MAX: usize = 4_096;
/// A phone at its [`STANDINS_PER_FLOW_MAX`] gets a new one in place of its least recently
/// active stand-in, if that one carried nothing for this long (its call has ended: a
/// connection lives for hours and many calls).
pub const STANDIN_IDLE: Duration = Duration::from_secs(30);
/// How long a message toward a phone waits for the proxy to open its channel.
pub const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections through the proxy that have not registered yet, at once; beyond it new ones are
/// closed (`pbx_proxy_flows_refused_total{reason="pending"}`).
pub const PENDING_FLOWS_MAX: usize = 128;
/// Of those, from one source (IPv4 address or IPv6 /64).
pub const PENDING_FLOWS_PER_SOURCE_MAX: usize = 16;
/// A connection through the proxy must register within this or it is closed.
pub const REGISTER_WITHIN: Duration = Duration::from_secs(60);
/// Messages queued toward one proxied phone (as for a TCP connection).
const FLOW_QUEUE_MAX: usize = 256;
/// Frames queued toward the proxy.
const TO_PROXY_QUEUE_MAX: usize = 4_096;
/// How often a node whose licence has no proxy seats looks again.
const SEATS_POLL: Duration = Duration::from_secs(2);
/// Waits between dialling attempts: doubling from the first to the last.
const REDIAL: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// What the admin API asks of the link.
pub struct ProxyHandle {
    link: Mutex<Option<LinkState>>,
    debug_reply: Mutex<Option<oneshot::Sender<Option<u64>>>>,
    /// Subject requests waiting for the proxy's answer, by request id.
    requests: Mutex<HashMap<u64, oneshot::Sender<ToPbx>>>,
    next_request: std::sync::atomic::AtomicU64,
    pub config: ProxyConfig,
}

#[derive(Clone)]
struct LinkState {
    frames: mpsc::Sender<ToProxy>,
    flows: Arc<Mutex<HashMap<u64, FlowState>>>,
}

/// `GET /api/v1/proxy`.
#[derive(Debug, serde::Serialize)]
pub struct ProxyStatus {
    pub link: SocketAddr,
    pub linked: bool,
    pub softphones: usize,
    /// Of them, those holding a proxy seat (registered, or registering with credentials).
    pub seated: usize,
}

impl ProxyHandle {
    pub fn status(&self) -> ProxyStatus {
        let link = self.link.lock().expect("link lock").clone();
        ProxyStatus {
            link: self.config.link,
            linked: link.is_some(),
            softphones: link.as_ref().map_or(0, |l| l.flows.lock().expect("flows lock").len()),
            seated: link.map_or(0, |l| l.flows.lock().expect("flows lock").values().filter(|f| f.seated).count()),
        }
    }

    fn frames(&self) -> Option<mpsc::Sender<ToProxy>> {
        self.link.lock().expect("link lock").as_ref().map(|l| l.frames.clone())
    }

    /// Debug mode at the proxy on for `days` (0: the proxy's default) or off; the time it ends
    /// (Unix seconds). `Err` when the proxy is not linked or does not answer.
    pub async fn debug_mode(&self, days: Option<u32>) -> Result<Option<u64>, &'static str> {
        let frames = self.frames().ok_or("the proxy is not linked")?;
        let (tx, rx) = oneshot::channel();
        *self.debug_reply.lock().expect("debug lock") = Some(tx);
        frames.send(ToProxy::DebugMode { days }).await.map_err(|_| "the link closed")?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| "the proxy did not answer")?
            .map_err(|_| "the link closed")
    }

    async fn ask(&self, frame: impl FnOnce(u64) -> ToProxy) -> Result<ToPbx, &'static str> {
        let frames = self.frames().ok_or("the softphone proxy is not linked")?;
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.requests.lock().expect("requests lock").insert(request, tx);
        let sent = frames.send(frame(request)).await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(Duration::from_secs(5), rx).await.ok().and_then(Result::ok),
            Err(_) => None,
        };
        self.requests.lock().expect("requests lock").remove(&request);
        answer.ok_or("the softphone proxy did not answer")
    }

    /// Everything the proxy holds about user name `user` (a subject's export).
    pub async fn export(&self, user: &str) -> Result<serde_json::Value, &'static str> {
        match self.ask(|request| ToProxy::Export { request, user: user.to_string() }).await? {
            ToPbx::Exported { document, .. } => {
                serde_json::from_str(&document).map_err(|_| "the proxy's answer is not JSON")
            }
            _ => Err("the softphone proxy answered something else"),
        }
    }

    /// Deletes everything the proxy holds about `user`; the records deleted.
    pub async fn erase(&self, user: &str) -> Result<u64, &'static str> {
        match self.ask(|request| ToProxy::Erase { request, user: user.to_string() }).await? {
            ToPbx::Erased { records, .. } => Ok(records),
            _ => Err("the softphone proxy answered something else"),
        }
    }

    /// Hands the proxy a softphone's configuration, fetched once with `code`.
    pub async fn provision(&self, code: String, document: String) -> Result<(), &'static str> {
        let frames = self.frames().ok_or("the proxy is not linked")?;
        frames.send(ToProxy::Provision { code, document }).await.map_err(|_| "the link closed")
    }
}

/// What the link needs of the node.
pub struct ProxyArgs {
    pub config: ProxyConfig,
    pub serial: String,
    pub licence: Option<LicenceView>,
    pub wire: Arc<NetWire>,
    pub inbound: Inbound,
    /// Where the stand-ins bind: the address pbx's relay sends media to.
    pub media_ip: IpAddr,
}

/// Starts dialling the proxy; the task runs until the node stops.
pub fn start(args: ProxyArgs) -> anyhow::Result<(Arc<ProxyHandle>, tokio::task::JoinHandle<()>)> {
    let name = NodeName::new(wire::PBX_NAME).expect("a valid node name");
    let id = NodeIdentity::load(&args.config.identity, &name)
        .with_context(|| format!("proxy.identity {}: the PBX's link certificate", args.config.identity.display()))?;
    let bind: SocketAddr = if args.config.link.is_ipv4() {
        "0.0.0.0:0".parse().expect("an address")
    } else {
        "[::]:0".parse().expect("an address")
    };
    let endpoint = pbx_cluster::link::client_endpoint(&id, bind, wire::ALPN)?;
    let handle = Arc::new(ProxyHandle {
        link: Mutex::new(None),
        debug_reply: Mutex::new(None),
        requests: Mutex::new(HashMap::new()),
        next_request: std::sync::atomic::AtomicU64::new(1),
        config: args.config.clone(),
    });
    let task = tokio::spawn(dial(endpoint, args, handle.clone()));
    Ok((handle, task))
}

async fn dial(endpoint: quinn::Endpoint, args: ProxyArgs, handle: Arc<ProxyHandle>) {
    let args = Arc::new(args);
    let proxy = NodeName::new(wire::PROXY_NAME).expect("a valid node name");
    let mut wait = REDIAL.0;
    let mut said_no_seats = false;
    loop {
        let seats = args.licence.as_ref().map_or(u32::MAX, |view| view.effective().limits.proxy_seats);
        if seats == 0 {
            if !said_no_seats {
                tracing::warn!("the licence has no proxy seats: the softphone proxy is not dialled");
                said_no_seats = true;
            }
            // The licence may arrive any moment (the watchdog's first check): look again soon.
            tokio::time::sleep(SEATS_POLL).await;
            continue;
        }
        said_no_seats = false;
        match pbx_cluster::link::connect(&endpoint, args.config.link, &proxy).await {
            Ok(link) => {
                wait = REDIAL.0;
                metrics::gauge!("pbx_proxy_linked").set(1.0);
                tracing::info!(proxy = %args.config.link, seats, "linked to the softphone proxy");
                if let Err(e) = run(link.connection, seats, &args, &handle).await {
                    tracing::warn!(proxy = %args.config.link, error = %e, "softphone proxy link ended");
                }
                metrics::gauge!("pbx_proxy_linked").set(0.0);
            }
            Err(e) => tracing::warn!(proxy = %args.config.link, error = %e, "softphone proxy not reached"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(REDIAL.1);
    }
}

/// A proxied phone's connection, as this node knows it.
struct FlowState {
    transport: Transport,
    peer: SocketAddr,
    /// Holds a proxy seat: reserved by a REGISTER with credentials, kept by its 2xx.
    seated: bool,
    /// A REGISTER of it was answered 2xx.
    registered: bool,
    /// Its audio streams: by (Call-ID, m= index).
    standins: HashMap<(String, usize), Arc<StandIn>>,
    forwarder: tokio::task::JoinHandle<()>,
}

/// A channel's public RTP address at the proxy: `None` until it answers, `Err` if it refused.
type PublicAddress = Option<Result<SocketAddr, ()>>;
/// A stand-in and where its public address is announced.
type Channel = (Arc<StandIn>, watch::Sender<PublicAddress>);

/// One audio stream of a proxied phone: sockets here that stand in for the phone.
struct StandIn {
    channel: u32,
    sockets: [Arc<UdpSocket>; 2],
    /// pbx's relay for this stream (from the SDP pbx sent the phone): where the phone's
    /// packets go, and the only source whose packets go to the phone.
    relay: Arc<Mutex<[Option<SocketAddr>; 2]>>,
    /// The proxy's public RTP address once it opened the channel.
    public: watch::Receiver<PublicAddress>,
    /// When it was made, and its last packet either way (milliseconds after that).
    created: std::time::Instant,
    last_packet_ms: Arc<std::sync::atomic::AtomicU64>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl StandIn {
    fn idle(&self) -> Duration {
        let last = self.created + Duration::from_millis(self.last_packet_ms.load(Ordering::Relaxed));
        last.elapsed()
    }

    fn touch(&self) {
        self.last_packet_ms.store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Shared by the link's reader and the flows' forwarders.
struct Link {
    frames: mpsc::Sender<ToProxy>,
    connection: quinn::Connection,
    flows: Arc<Mutex<HashMap<u64, FlowState>>>,
    channels: Mutex<HashMap<u32, Channel>>,
    next_channel: AtomicU32,
    media_ip: IpAddr,
}

async fn run(
    connection: quinn::Connection,
    seats: u32,
    args: &Arc<ProxyArgs>,
    handle: &Arc<ProxyHandle>,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = connection.open_bi().await.context("open the link's stream")?;
    wire::write(&mut send, &ToProxy::Hello { serial: args.serial.clone(), seats }).await?;
    let (frames, mut outbound) = mpsc::channel::<ToProxy>(TO_PROXY_QUEUE_MAX);
    let link = Arc::new(Link {
        frames: frames.clone(),
        connection: connection.clone(),
        flows: Arc::new(Mutex::new(HashMap::new())),
        channels: Mutex::new(HashMap::new()),
        next_channel: AtomicU32::new(1),
        media_ip: args.media_ip,
    });
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbound.recv().await {
            if wire::write(&mut send, &frame).await.is_err() {
                break;
            }
        }
    });
    let datagrams = tokio::spawn(from_proxy(link.clone()));

    let result = loop {
        match wire::read::<_, ToPbx>(&mut recv).await {
            Ok(Some(frame)) => handle_frame(frame, seats, &link, args, handle),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.into()),
        }
    };

    *handle.link.lock().expect("link lock") = None;
    writer.abort();
    datagrams.abort();
    let flows: Vec<FlowState> = link.flows.lock().expect("flows lock").drain().map(|(_, f)| f).collect();
    for flow in flows {
        args.wire.detach(flow.transport, flow.peer);
        flow.forwarder.abort();
    }
    link.channels.lock().expect("channels lock").clear();
    connection.close(0u32.into(), b"bye");
    result
}

fn handle_frame(frame: ToPbx, seats: u32, link: &Arc<Link>, args: &Arc<ProxyArgs>, handle: &Arc<ProxyHandle>) {
    match frame {
        ToPbx::FlowOpened { flow, transport, peer } => {
            let transport = match transport {
                FlowTransport::Tls => Transport::Tls,
                FlowTransport::Tcp => Transport::Tcp,
                FlowTransport::Udp => Transport::Udp,
            };
            let source = pbx_host::stream::source(peer);
            let (pending, from_source) = {
                let flows = link.flows.lock().expect("flows lock");
                let pending = flows.values().filter(|f| !f.registered);
                pending.fold((0, 0), |(all, here), f| {
                    (all + 1, here + usize::from(pbx_host::stream::source(f.peer) == source))
                })
            };
            if pending >= PENDING_FLOWS_MAX || from_source >= PENDING_FLOWS_PER_SOURCE_MAX {
                metrics::counter!("pbx_proxy_flows_refused_total", "reason" => "pending").increment(1);
                tracing::info!(%peer, pending, from_source, "softphone via the proxy refused: too many not registered");
                let _ = link.frames.try_send(ToProxy::CloseFlow { flow });
                return;
            }
            let (sender, queue) = mpsc::channel::<Bytes>(FLOW_QUEUE_MAX);
            if !args.wire.attach(transport, peer, sender) {
                metrics::counter!("pbx_proxy_flows_refused_total", "reason" => "address_taken").increment(1);
                tracing::warn!(%peer, "softphone via the proxy refused: a direct connection has its address");
                let _ = link.frames.try_send(ToProxy::CloseFlow { flow });
                return;
            }
            let forwarder = tokio::spawn(forward(flow, queue, link.clone()));
            let state =
                FlowState { transport, peer, seated: false, registered: false, standins: HashMap::new(), forwarder };
            link.flows.lock().expect("flows lock").insert(flow, state);
            // Registered in time, or closed.
            let watched = link.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REGISTER_WITHIN).await;
                if watched.flows.lock().expect("flows lock").get(&flow).is_some_and(|f| !f.registered) {
                    metrics::counter!("pbx_proxy_flows_refused_total", "reason" => "unregistered").increment(1);
                    let _ = watched.frames.try_send(ToProxy::CloseFlow { flow });
                }
            });
            metrics::gauge!("pbx_proxy_softphones").set(link.flows.lock().expect("flows lock").len() as f64);
        }
        ToPbx::Sip { flow, bytes } => {
            let Some((transport, peer)) =
                link.flows.lock().expect("flows lock").get(&flow).map(|f| (f.transport, f.peer))
            else {
                return;
            };
            if !take_seat(flow, &bytes, seats, link) {
                refuse_for_seats(flow, &bytes, seats, peer, link);
                return;
            }
            let bytes = toward_pbx(flow, bytes, link);
            args.inbound.deliver(Bytes::from(bytes), peer, transport);
        }
        ToPbx::FlowClosed { flow } => {
            let closed = link.flows.lock().expect("flows lock").remove(&flow);
            if let Some(f) = closed {
                args.wire.detach(f.transport, f.peer);
                f.forwarder.abort();
                let mut channels = link.channels.lock().expect("channels lock");
                for standin in f.standins.values() {
                    channels.remove(&standin.channel);
                }
            }
            metrics::gauge!("pbx_proxy_softphones").set(link.flows.lock().expect("flows lock").len() as f64);
        }
        ToPbx::ChannelOpened { channel, public } => {
            if let Some((_, tx)) = link.channels.lock().expect("channels lock").get(&channel) {
                let _ = tx.send(Some(Ok(public)));
            }
        }
        ToPbx::ChannelRefused { channel } => {
            if let Some((_, tx)) = link.channels.lock().expect("channels lock").get(&channel) {
                let _ = tx.send(Some(Err(())));
            }
        }
        ToPbx::Ready => {
            // Linked for the API (and softphones) only once the proxy has taken the link.
            *handle.link.lock().expect("link lock") =
                Some(LinkState { frames: link.frames.clone(), flows: link.flows.clone() });
            tracing::info!("the softphone proxy serves this PBX");
        }
        ToPbx::Exported { request, .. } | ToPbx::Erased { request, .. } => {
            if let Some(waiting) = handle.requests.lock().expect("requests lock").remove(&request) {
                let _ = waiting.send(frame);
            }
        }
        ToPbx::DebugModeSet { until_unix_s } => {
            if let Some(reply) = handle.debug_reply.lock().expect("debug lock").take() {
                let _ = reply.send(until_unix_s);
            }
        }
    }
}

/// The stand-in of (flow, Call-ID, index), made (with its channel asked of the proxy) if new.
fn standin(
    flow: u64,
    call_id: &str,
    index: usize,
    phone: Option<SocketAddr>,
    link: &Arc<Link>,
) -> Option<Arc<StandIn>> {
    let mut flows = link.flows.lock().expect("flows lock");
    let state = flows.get_mut(&flow)?;
    if let Some(existing) = state.standins.get(&(call_id.to_string(), index)) {
        if phone.is_some() {
            let _ = link.frames.try_send(ToProxy::OpenChannel { channel: existing.channel, flow, phone });
        }
        return Some(existing.clone());
    }
    if state.standins.len() >= STANDINS_PER_FLOW_MAX {
        // The least recently active one, if its call is over.
        let oldest = state.standins.iter().max_by_key(|(_, s)| s.idle()).map(|(k, s)| (k.clone(), s.idle()));
        if let Some((key, idle)) = oldest.filter(|(_, idle)| *idle >= STANDIN_IDLE)
            && let Some(gone) = state.standins.remove(&key)
        {
            tracing::debug!(channel = gone.channel, idle_s = idle.as_secs(), "idle stand-in replaced");
            link.channels.lock().expect("channels lock").remove(&gone.channel);
            let _ = link.frames.try_send(ToProxy::CloseChannel { channel: gone.channel });
        }
    }
    if state.standins.len() >= STANDINS_PER_FLOW_MAX
        || link.channels.lock().expect("channels lock").len() >= STANDINS_MAX
    {
        metrics::counter!("pbx_proxy_standins_refused_total").increment(1);
        return None;
    }
    let sockets = match pbx_proxy_service::media::bind_pair(link.media_ip) {
        Ok(s) => s.map(Arc::new),
        Err(e) => {
            tracing::warn!(error = %e, "no stand-in sockets for a proxied phone's media");
            return None;
        }
    };
    let channel = link.next_channel.fetch_add(1, Ordering::Relaxed);
    let (tx, public) = watch::channel(None);
    let relay = Arc::new(Mutex::new([None, None]));
    let (created, last_packet_ms) = (std::time::Instant::now(), Arc::new(std::sync::atomic::AtomicU64::new(0)));
    let activity = (created, last_packet_ms.clone());
    let tasks = [
        tokio::spawn(from_relay(
            sockets[0].clone(),
            channel,
            false,
            relay.clone(),
            activity.clone(),
            link.connection.clone(),
        )),
        tokio::spawn(from_relay(sockets[1].clone(), channel, true, relay.clone(), activity, link.connection.clone())),
    ];
    let standin = Arc::new(StandIn { channel, sockets, relay, public, created, last_packet_ms, tasks });
    state.standins.insert((call_id.to_string(), index), standin.clone());
    link.channels.lock().expect("channels lock").insert(channel, (standin.clone(), tx));
    let _ = link.frames.try_send(ToProxy::OpenChannel { channel, flow, phone });
    Some(standin)
}

/// A message from a proxied phone: its audio streams now point at their stand-ins.
fn toward_pbx(flow: u64, bytes: Vec<u8>, link: &Arc<Link>) -> Vec<u8> {
    let streams = sdp::audio(&bytes);
    if streams.is_empty() {
        return bytes;
    }
    let Some(call_id) = sdp::header(&bytes, "call-id", "i").map(str::to_string) else { return bytes };
    let mut replace = Vec::new();
    for stream in streams {
        if let Some(standin) = standin(flow, &call_id, stream.index, Some(stream.rtp), link) {
            let local = |i: usize| standin.sockets[i].local_addr().ok();
            if let (Some(rtp), Some(rtcp)) = (local(0), local(1)) {
                replace.push((stream.index, sdp::Replacement { rtp, rtcp_port: rtcp.port() }));
            }
        }
    }
    sdp::rewrite(&bytes, &replace)
}

/// Sends what the endpoint queued for a proxied phone down the link, its SDP pointing at the
/// proxy's public ports (waiting for the proxy to open them).
/// Whether `bytes` from an unseated flow may reach the registrar: anything but a REGISTER with
/// credentials does; such a REGISTER takes a free seat (module doc, Seats), or is refused.
fn take_seat(flow: u64, bytes: &[u8], seats: u32, link: &Link) -> bool {
    let mut flows = link.flows.lock().expect("flows lock");
    if flows.get(&flow).is_none_or(|f| f.seated) || !is_register_with_credentials(bytes) {
        return true;
    }
    if flows.values().filter(|f| f.seated).count() >= seats as usize {
        return false;
    }
    if let Some(f) = flows.get_mut(&flow) {
        f.seated = true;
    }
    true
}

/// A REGISTER beyond the seats: `403 Forbidden (no proxy seat)` back down its flow.
fn refuse_for_seats(flow: u64, bytes: &[u8], seats: u32, peer: SocketAddr, link: &Link) {
    metrics::counter!("pbx_proxy_flows_refused_total", "reason" => "seats").increment(1);
    tracing::warn!(%peer, seats, "softphone via the proxy refused: every licensed proxy seat is taken");
    let Ok(pbx_actors::sip::message::Message::Request(request)) = pbx_actors::sip::message::parse_datagram(bytes)
    else {
        return;
    };
    let mut response = request.response(403, Some("proxy-seats"));
    response.reason = "Forbidden (no proxy seat)".into();
    let _ = link.frames.try_send(ToProxy::Sip { flow, bytes: response.to_bytes().to_vec() });
}

/// A final answer to a REGISTER going down `flow`: a 2xx keeps its seat (registered), another
/// gives back a seat not yet kept.
fn register_answered(flow: u64, bytes: &[u8], link: &Link) {
    let Some(code) = pbx_proxy_service::edge::register_final_code(bytes) else { return };
    let mut flows = link.flows.lock().expect("flows lock");
    let Some(f) = flows.get_mut(&flow) else { return };
    if (200..300).contains(&code) {
        f.registered = true;
    } else if !f.registered {
        f.seated = false;
    }
}

/// A REGISTER request carrying `Authorization` (the attempt that may bind).
fn is_register_with_credentials(bytes: &[u8]) -> bool {
    bytes.starts_with(b"REGISTER ") && sdp::header(bytes, "authorization", "authorization").is_some()
}

async fn forward(flow: u64, mut queue: mpsc::Receiver<Bytes>, link: Arc<Link>) {
    while let Some(bytes) = queue.recv().await {
        register_answered(flow, &bytes, &link);
        let bytes = toward_phone(flow, bytes.to_vec(), &link).await;
        if link.frames.send(ToProxy::Sip { flow, bytes }).await.is_err() {
            return;
        }
    }
}

async fn toward_phone(flow: u64, bytes: Vec<u8>, link: &Arc<Link>) -> Vec<u8> {
    let streams = sdp::audio(&bytes);
    if streams.is_empty() {
        return bytes;
    }
    let Some(call_id) = sdp::header(&bytes, "call-id", "i").map(str::to_string) else { return bytes };
    let mut replace = Vec::new();
    for stream in streams {
        let Some(standin) = standin(flow, &call_id, stream.index, None, link) else { continue };
        *standin.relay.lock().expect("relay lock") = [Some(stream.rtp), Some(stream.rtcp)];
        let mut public = standin.public.clone();
        let opened = tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, public.wait_for(Option::is_some)).await;
        match opened.ok().and_then(|r| r.ok()).and_then(|v| *v) {
            Some(Ok(public)) => replace
                .push((stream.index, sdp::Replacement { rtp: public, rtcp_port: public.port().saturating_add(1) })),
            _ => {
                metrics::counter!("pbx_proxy_standins_refused_total").increment(1);
                tracing::warn!(flow, "the proxy opened no media channel: the stream is refused");
            }
        }
    }
    sdp::rewrite(&bytes, &replace)
}

/// Relays what pbx's relay sends a stand-in to the proxy; anything from elsewhere is dropped
/// and counted (a stranger on the office network cannot speak into a proxied call).
async fn from_relay(
    socket: Arc<UdpSocket>,
    channel: u32,
    rtcp: bool,
    relay: Arc<Mutex<[Option<SocketAddr>; 2]>>,
    (created, last_packet_ms): (std::time::Instant, Arc<std::sync::atomic::AtomicU64>),
    connection: quinn::Connection,
) {
    let mut buf = vec![0u8; 1_500];
    loop {
        let Ok((len, source)) = socket.recv_from(&mut buf).await else { return };
        let from_relay = relay.lock().expect("relay lock").iter().flatten().any(|r| r.ip() == source.ip());
        if !from_relay {
            metrics::counter!("pbx_proxy_media_dropped_total", "reason" => "stranger").increment(1);
            continue;
        }
        if connection.send_datagram(wire::datagram(channel, rtcp, &buf[..len])).is_err() {
            metrics::counter!("pbx_proxy_media_dropped_total", "reason" => "link").increment(1);
        } else {
            metrics::counter!("pbx_proxy_media_packets_total", "direction" => "to_proxy").increment(1);
            last_packet_ms.store(created.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// Sends what the proxy relays from phones on to pbx's relay, from the phones' stand-ins.
async fn from_proxy(link: Arc<Link>) {
    while let Ok(datagram) = link.connection.read_datagram().await {
        let Some((channel, rtcp, packet)) = wire::parse_datagram(&datagram) else {
            metrics::counter!("pbx_proxy_media_dropped_total", "reason" => "malformed").increment(1);
            continue;
        };
        let standin = link.channels.lock().expect("channels lock").get(&channel).map(|(s, _)| s.clone());
        let Some(standin) = standin else { continue };
        let component = usize::from(rtcp);
        let target = standin.relay.lock().expect("relay lock")[component];
        if let Some(target) = target
            && standin.sockets[component].try_send_to(packet, target).is_ok()
        {
            metrics::counter!("pbx_proxy_media_packets_total", "direction" => "from_proxy").increment(1);
            standin.touch();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What takes a seat and what keeps it is read off the messages: a REGISTER with credentials
    /// (not one without, not another method), a final answer to a REGISTER (not a provisional
    /// one, not an answer to an INVITE).
    #[test]
    fn seats_are_read_off_registers_and_their_answers() {
        let register = "REGISTER sip:pbx SIP/2.0\r\nCSeq: 2 REGISTER\r\nAuthorization: Digest username=\"100\"\r\n\r\n";
        assert!(is_register_with_credentials(register.as_bytes()));
        assert!(!is_register_with_credentials(b"REGISTER sip:pbx SIP/2.0\r\nCSeq: 1 REGISTER\r\n\r\n"));
        assert!(!is_register_with_credentials(b"INVITE sip:100@pbx SIP/2.0\r\nAuthorization: Digest x\r\n\r\n"));
        let register_final_code = pbx_proxy_service::edge::register_final_code;
        assert_eq!(register_final_code(b"SIP/2.0 200 OK\r\nCSeq: 2 REGISTER\r\n\r\n"), Some(200));
        assert_eq!(register_final_code(b"SIP/2.0 401 Unauthorized\r\ncseq: 1 register\r\n\r\n"), Some(401));
        assert_eq!(register_final_code(b"SIP/2.0 100 Trying\r\nCSeq: 2 REGISTER\r\n\r\n"), None);
        assert_eq!(register_final_code(b"SIP/2.0 200 OK\r\nCSeq: 2 INVITE\r\n\r\n"), None);
        assert_eq!(register_final_code(b"OPTIONS sip:x SIP/2.0\r\nCSeq: 2 REGISTER\r\n\r\n"), None);
    }
}

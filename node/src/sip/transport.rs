//! SIP transports on real sockets: one UDP socket and one TCP listener on the same address,
//! and a TLS listener on its own port (5061 by default).
//!
//! They only move bytes: a datagram, or a message framed off a stream by Content-Length
//! (`frame_stream`), goes to the endpoint shard its Call-ID names (a raw scan,
//! `pbx_actors::endpoint::shard`); the endpoints' answers come back through [`NetWire`].
//! Every queue here is bounded: a flood is dropped and counted, never buffered without limit
//! (each shard's backlog is its share of [`INBOUND_BACKLOG_MAX`]). They reach the shards
//! through the [`EndpointSink`], so they outlive their restarts: what arrives for a shard
//! while it restarts is dropped (and counted) like a datagram over the backlog.

use bytes::{Bytes, BytesMut};
use pbx_actors::endpoint::actor::EndpointSink;
use pbx_actors::endpoint::{EndpointMsg, Wire};
use pbx_actors::shell::Current;
use pbx_actors::sip::message::{self, Frame, Transport};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// Messages received but not yet taken by the endpoint, all shards together (each shard's
/// share is this divided by the shard count); beyond it datagrams are dropped.
pub const INBOUND_BACKLOG_MAX: usize = 20_000;
/// Open TCP connections; beyond it new ones are refused (closed at once). Never more than
/// half the open-file limit either ([`tcp_connections_cap`]): the other half is for RTP.
pub const TCP_CONNECTIONS_MAX: usize = 4_096;
/// Open TCP connections from one source: one IPv4 address, or one IPv6 /64 (a host holds a
/// whole /64, so counting its addresses one by one would bound nothing). Beyond it new ones
/// from that source are refused (closed at once) and counted; other sources are not affected.
/// An office behind one NAT address with this many TCP phones needs a bigger constant.
pub const TCP_CONNECTIONS_PER_SOURCE_MAX: usize = 128;
/// Bits of an IPv6 source that make one source for [`TCP_CONNECTIONS_PER_SOURCE_MAX`].
pub const TCP_SOURCE_V6_BITS: u32 = 64;
/// A new TCP connection must deliver a complete SIP message within this time or it is closed
/// (Asterisk's `tcpauthtimeout` is 30 s): a connection that says nothing holds no slot for
/// long. Keep-alive CRLFs do not count.
pub const TCP_FIRST_MESSAGE_S: u64 = 30;
/// Outbound messages queued per TCP connection.
pub const TCP_SEND_QUEUE_MAX: usize = 256;
/// A TCP connection with no traffic this long is closed (phones refresh far more often).
pub const TCP_IDLE_S: u64 = 900;
/// A message begun on a TCP stream must be complete within this time, counted from its first
/// byte (Kamailio's `tcp_msg_read_timeout` is 20 s): a trickle cannot hold a slot for long.
pub const TCP_PARTIAL_MESSAGE_S: u64 = 20;

/// A TLS connection must finish its handshake within this time, counted from the accept, or it
/// is closed and counted (`pbx_sip_tls_refused_total{reason="timeout"}`): a client that opens
/// and stalls holds a slot for no longer. Kamailio's `tls_connect_timeout` default is 10 s too.
pub const TLS_HANDSHAKE_S: u64 = 10;
/// The first byte of every TLS connection: a handshake record (RFC 8446 §5.1, content type 22).
/// Anything else on the TLS port (plain SIP, say) is closed before any TLS is attempted.
const TLS_HANDSHAKE_RECORD: u8 = 22;

const _: () = assert!(TCP_PARTIAL_MESSAGE_S < TCP_IDLE_S);
const _: () = assert!(TLS_HANDSHAKE_S < TCP_FIRST_MESSAGE_S);
const _: () = assert!(TCP_FIRST_MESSAGE_S < TCP_IDLE_S);
const _: () = assert!(TCP_CONNECTIONS_PER_SOURCE_MAX < TCP_CONNECTIONS_MAX);
const UDP_DATAGRAM_BYTES_MAX: usize = 65_535;
/// The SIP UDP socket's kernel receive buffer asked for (the kernel caps it at
/// `net.core.rmem_max`; Linux's default is 208 KiB). What arrives while the reader is not
/// running (a worker thread busy, a refresh flush encoding) waits there instead of being
/// dropped: at 20,000 datagrams/s the default holds about 20 ms of REGISTERs, this about 200 ms.
/// Kamailio raises its UDP buffers the same way (`maxbuffer`); the memory is the kernel's,
/// bounded by this size.
pub const UDP_RECEIVE_BUFFER_BYTES: usize = 2 * 1024 * 1024;
/// Datagrams the UDP reader takes, without waiting, after each one it waited for, before it
/// yields to the runtime: one wake-up serves a burst, and a flood cannot hold the thread.
const UDP_DRAIN_MAX: usize = 64;

/// Where the endpoint's answers leave: the UDP socket, or the stream (TCP or TLS) a request
/// came on. Streams are keyed by transport and peer: a message meant for TLS never leaves on a
/// plain TCP connection that happens to have the same peer address, and pbx never opens a
/// connection toward a phone (it is behind NAT: only the one it opened reaches it).
pub struct NetWire {
    udp: Arc<UdpSocket>,
    streams: Mutex<HashMap<(Transport, SocketAddr), mpsc::Sender<Bytes>>>,
}

impl Wire for NetWire {
    fn send(&self, destination: SocketAddr, transport: Transport, bytes: Bytes) {
        match transport {
            Transport::Udp => {
                if let Err(e) = self.udp.try_send_to(&bytes, destination) {
                    metrics::counter!("pbx_sip_send_dropped_total", "transport" => "udp").increment(1);
                    tracing::debug!(%destination, error = %e, "UDP send dropped");
                }
            }
            Transport::Tcp | Transport::Tls => {
                let sender = self.streams.lock().expect("stream map lock").get(&(transport, destination)).cloned();
                match sender {
                    Some(sender) if sender.try_send(bytes).is_ok() => {}
                    _ => {
                        let label = if transport == Transport::Tls { "tls" } else { "tcp" };
                        metrics::counter!("pbx_sip_send_dropped_total", "transport" => label).increment(1);
                        tracing::debug!(%destination, %label, "stream send dropped: no connection or queue full");
                    }
                }
            }
        }
    }
}

impl NetWire {
    /// A connection that is not a socket of this node's (a softphone at the proxy): what the
    /// endpoint sends to `peer` over `transport` goes to `sender`. False when a connection
    /// here has that key already.
    pub fn attach(&self, transport: Transport, peer: SocketAddr, sender: mpsc::Sender<Bytes>) -> bool {
        let mut streams = self.streams.lock().expect("stream map lock");
        if streams.contains_key(&(transport, peer)) {
            return false;
        }
        streams.insert((transport, peer), sender);
        true
    }

    pub fn detach(&self, transport: Transport, peer: SocketAddr) {
        self.streams.lock().expect("stream map lock").remove(&(transport, peer));
    }
}

/// The sockets the node serves SIP on.
pub struct SipSockets {
    pub udp: Arc<UdpSocket>,
    pub tcp: TcpListener,
    pub tls: Option<TcpListener>,
}

impl SipSockets {
    /// UDP and TCP on `addr`; TLS on `tls` when given.
    pub async fn bind(addr: SocketAddr, tls: Option<SocketAddr>) -> anyhow::Result<SipSockets> {
        use anyhow::Context;
        let udp = UdpSocket::bind(addr).await.with_context(|| format!("bind SIP UDP socket {addr}"))?;
        let granted = set_receive_buffer(&udp, UDP_RECEIVE_BUFFER_BYTES);
        tracing::debug!(asked = UDP_RECEIVE_BUFFER_BYTES, granted, "SIP UDP receive buffer");
        let tcp = TcpListener::bind(addr).await.with_context(|| format!("bind SIP TCP listener {addr}"))?;
        let tls = match tls {
            Some(tls) => Some(TcpListener::bind(tls).await.with_context(|| format!("bind SIP TLS listener {tls}"))?),
            None => None,
        };
        Ok(SipSockets { udp: Arc::new(udp), tcp, tls })
    }

    pub fn wire(&self) -> Arc<NetWire> {
        Arc::new(NetWire { udp: self.udp.clone(), streams: Mutex::new(HashMap::new()) })
    }
}

/// Counts messages handed to one endpoint shard and not yet handled by it.
#[derive(Clone, Default)]
pub struct Backlog(pub Arc<AtomicUsize>);

/// The endpoint shards as the transports reach them, with each one's backlog.
#[derive(Clone)]
pub struct Inbound {
    sink: EndpointSink,
    backlogs: Arc<[Backlog]>,
    /// Each shard's share of [`INBOUND_BACKLOG_MAX`].
    backlog_max: usize,
}

impl Inbound {
    /// `backlogs`: one per shard of `sink`, the ones its shards decrement.
    pub fn new(sink: EndpointSink, backlogs: Vec<Backlog>) -> Inbound {
        assert_eq!(backlogs.len(), sink.count(), "one backlog per endpoint shard");
        let backlog_max = (INBOUND_BACKLOG_MAX / sink.count()).max(1);
        Inbound { sink, backlogs: backlogs.into(), backlog_max }
    }

    /// Hands one message to the shard its Call-ID names; dropped and counted when that
    /// shard's backlog is full or it is restarting.
    pub fn deliver(&self, bytes: Bytes, source: SocketAddr, transport: Transport) {
        let index = self.sink.for_message(&bytes);
        let backlog = &self.backlogs[index];
        if backlog.admit(self.backlog_max) {
            let read_at = std::time::Instant::now();
            backlog.deliver(self.sink.shard(index), EndpointMsg::Inbound { bytes, source, transport, read_at });
        }
    }
}

impl Backlog {
    fn admit(&self, max: usize) -> bool {
        if self.0.fetch_add(1, Ordering::Relaxed) >= max {
            self.0.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("pbx_sip_inbound_dropped_total").increment(1);
            return false;
        }
        true
    }

    /// Admitted, but no endpoint took it (it is restarting): dropped and counted.
    fn undo(&self) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        metrics::counter!("pbx_sip_inbound_dropped_total").increment(1);
    }

    /// A new endpoint starts with an empty mailbox: nothing is waiting for it.
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Hands `msg` to the endpoint running now; dropped and counted when none is.
    fn deliver(&self, endpoint: &Current<EndpointMsg>, msg: EndpointMsg) {
        if !endpoint.cast(msg) {
            self.undo();
        }
    }
}

pub async fn serve_udp(socket: Arc<UdpSocket>, endpoint: Inbound) {
    let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, source)) => endpoint.deliver(Bytes::copy_from_slice(&buf[..len]), source, Transport::Udp),
            // ICMP port unreachable from an earlier send shows up here on some systems.
            Err(e) => tracing::debug!(error = %e, "UDP receive error"),
        }
        for _ in 0..UDP_DRAIN_MAX {
            match socket.try_recv_from(&mut buf) {
                Ok((len, source)) => endpoint.deliver(Bytes::copy_from_slice(&buf[..len]), source, Transport::Udp),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => tracing::debug!(error = %e, "UDP receive error"),
            }
        }
    }
}

/// Asks for a kernel receive buffer of `bytes` on `socket`; returns what the kernel granted
/// (Linux reports twice the usable size), or 0 when it cannot say. A refusal is not an error:
/// the default buffer works, only with less room for bursts.
fn set_receive_buffer(socket: &UdpSocket, bytes: usize) -> usize {
    use rustix::net::sockopt;
    if let Err(e) = sockopt::set_socket_recv_buffer_size(socket, bytes) {
        tracing::debug!(error = %e, "SIP UDP receive buffer not raised");
    }
    sockopt::socket_recv_buffer_size(socket).unwrap_or(0)
}

/// The TCP connection cap under an open-file limit of `open_files`: [`TCP_CONNECTIONS_MAX`],
/// or half the limit if that is less (RTP ports, redb and the API need the rest).
pub fn tcp_connections_cap(open_files: u64) -> usize {
    usize::try_from(open_files / 2).unwrap_or(usize::MAX).min(TCP_CONNECTIONS_MAX)
}

/// What a connection counts against in [`TCP_CONNECTIONS_PER_SOURCE_MAX`]: its IPv4 address,
/// or its IPv6 address's /64 (an IPv4-mapped address counts as IPv4).
fn tcp_source(peer: SocketAddr) -> IpAddr {
    match peer.ip().to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !(u128::MAX >> TCP_SOURCE_V6_BITS))),
    }
}

/// Open TCP connections, in all and per source; both bounded.
struct TcpSlots {
    cap: usize,
    open: usize,
    /// Never more keys than open connections; a source leaves when its last one closes.
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    Global,
    PerSource,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Global => "global",
            Refused::PerSource => "per_source",
        }
    }
}

impl TcpSlots {
    fn new(cap: usize) -> TcpSlots {
        TcpSlots { cap, open: 0, per_source: HashMap::new() }
    }

    fn take(&mut self, source: IpAddr) -> Result<(), Refused> {
        if self.open >= self.cap {
            return Err(Refused::Global);
        }
        let from_source = self.per_source.entry(source).or_insert(0);
        if *from_source >= TCP_CONNECTIONS_PER_SOURCE_MAX {
            return Err(Refused::PerSource);
        }
        *from_source += 1;
        self.open += 1;
        Ok(())
    }

    fn give_back(&mut self, source: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// The open-stream slots TCP and TLS share (both hold a descriptor each).
#[derive(Clone)]
pub struct StreamSlots(Arc<Mutex<TcpSlots>>);

impl StreamSlots {
    /// Capped by the process's open-file limit (see [`tcp_connections_cap`]).
    pub fn new() -> StreamSlots {
        let cap = tcp_connections_cap(crate::sip::limits::open_file_limit());
        tracing::info!(cap, per_source = TCP_CONNECTIONS_PER_SOURCE_MAX, "SIP TCP/TLS connection caps");
        StreamSlots(Arc::new(Mutex::new(TcpSlots::new(cap))))
    }
}

impl Default for StreamSlots {
    fn default() -> Self {
        StreamSlots::new()
    }
}

/// Accepts TCP connections (SIP over TCP) until the listener fails.
pub async fn serve_tcp(listener: TcpListener, endpoint: Inbound, wire: Arc<NetWire>, slots: StreamSlots) {
    serve_streams(listener, endpoint, wire, slots, None).await
}

/// Accepts TLS connections (SIP over TLS): each must start with a TLS handshake record and
/// finish the handshake within [`TLS_HANDSHAKE_S`], or it is closed and counted
/// (`pbx_sip_tls_refused_total{reason}`: `not_tls`, `timeout`, `handshake`).
pub async fn serve_tls(
    listener: TcpListener,
    endpoint: Inbound,
    wire: Arc<NetWire>,
    slots: StreamSlots,
    config: Arc<rustls::ServerConfig>,
) {
    for reason in ["not_tls", "timeout", "handshake"] {
        metrics::counter!("pbx_sip_tls_refused_total", "reason" => reason).increment(0);
    }
    serve_streams(listener, endpoint, wire, slots, Some(tokio_rustls::TlsAcceptor::from(config))).await
}

async fn serve_streams(
    listener: TcpListener,
    endpoint: Inbound,
    wire: Arc<NetWire>,
    slots: StreamSlots,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(r) => r,
            Err(e) => {
                // Out of descriptors (EMFILE) among others: wait rather than spin.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = tcp_source(peer);
        let taken = slots.0.lock().expect("tcp slots lock").take(source);
        if let Err(refused) = taken {
            metrics::counter!("pbx_sip_tcp_refused_total", "reason" => refused.label()).increment(1);
            tracing::debug!(%peer, reason = refused.label(), "TCP connection refused");
            drop(stream);
            continue;
        }
        metrics::gauge!("pbx_sip_tcp_connections").increment(1.0);
        let (endpoint, wire, slots, tls) = (endpoint.clone(), wire.clone(), slots.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection(stream, peer, Transport::Tcp, endpoint, &wire).await,
                Some(acceptor) => {
                    if let Some(stream) = handshake(&acceptor, stream, peer).await {
                        metrics::gauge!("pbx_sip_tls_connections").increment(1.0);
                        connection(stream, peer, Transport::Tls, endpoint, &wire).await;
                        metrics::gauge!("pbx_sip_tls_connections").decrement(1.0);
                    }
                }
            }
            slots.0.lock().expect("tcp slots lock").give_back(source);
            metrics::gauge!("pbx_sip_tcp_connections").decrement(1.0);
        });
    }
}

/// The TLS handshake of a connection just accepted, bounded by [`TLS_HANDSHAKE_S`] as a whole;
/// `None` (counted, logged) when it is not TLS, stalls or fails.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let refuse = |reason: &'static str, detail: String| {
        metrics::counter!("pbx_sip_tls_refused_total", "reason" => reason).increment(1);
        tracing::info!(%peer, reason, %detail, "TLS connection refused");
        None
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(TLS_HANDSHAKE_S);
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return refuse("timeout", "no byte".into()),
        Ok(Ok(0)) | Ok(Err(_)) => return None,
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE_RECORD => {
            return refuse("not_tls", format!("first byte {:#04x}, not a TLS handshake", first[0]));
        }
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Err(_) => refuse("timeout", format!("handshake not finished in {TLS_HANDSHAKE_S} s")),
        Ok(Err(e)) => refuse("handshake", e.to_string()),
        Ok(Ok(stream)) => Some(stream),
    }
}

async fn connection<S>(stream: S, peer: SocketAddr, transport: Transport, endpoint: Inbound, wire: &NetWire)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (sender, mut outbound) = mpsc::channel::<Bytes>(TCP_SEND_QUEUE_MAX);
    wire.streams.lock().expect("stream map lock").insert((transport, peer), sender.clone());
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = outbound.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
            // TLS buffers records: push each message out whole.
            if writer.flush().await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut buf = BytesMut::with_capacity(4096);
    // Set when a message starts arriving, cleared when the buffer empties.
    let mut partial_deadline: Option<tokio::time::Instant> = None;
    // Until the first complete message: the connection must say something soon.
    let mut first_message_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(TCP_FIRST_MESSAGE_S));
    'read: loop {
        let idle = tokio::time::Instant::now() + Duration::from_secs(TCP_IDLE_S);
        let deadline = [partial_deadline, first_message_deadline].into_iter().flatten().fold(idle, std::cmp::min);
        let read = tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                if first_message_deadline.is_some_and(|d| d <= deadline) {
                    metrics::counter!("pbx_sip_tcp_silent_timeouts_total").increment(1);
                    tracing::debug!(%peer, "TCP connection sent no message in time; closing");
                } else if partial_deadline.is_some() {
                    metrics::counter!("pbx_sip_tcp_partial_timeouts_total").increment(1);
                    tracing::info!(%peer, "TCP message not completed in time; closing");
                }
                break;
            }
            Ok(Ok(_)) => {}
        }
        loop {
            match message::frame_stream(&buf) {
                Frame::Incomplete => {
                    if buf.is_empty() {
                        partial_deadline = None;
                    } else if partial_deadline.is_none() {
                        partial_deadline =
                            Some(tokio::time::Instant::now() + Duration::from_secs(TCP_PARTIAL_MESSAGE_S));
                    }
                    break;
                }
                Frame::KeepAlive { len } => {
                    let _ = buf.split_to(len);
                    partial_deadline = None;
                    // RFC 5626 §4.4.1: a double CRLF ping is answered by a single CRLF pong.
                    let _ = sender.try_send(Bytes::from_static(b"\r\n"));
                }
                Frame::Message { len } => {
                    let bytes = buf.split_to(len).freeze();
                    partial_deadline = None;
                    first_message_deadline = None;
                    endpoint.deliver(bytes, peer, transport);
                }
                Frame::Broken { code, reason, len } => {
                    metrics::counter!("pbx_sip_malformed_total").increment(1);
                    tracing::info!(%peer, %reason, "TCP stream cannot be framed; closing");
                    let answer = (code != 0).then(|| message::broken_stream_response(&buf[..len], code, &reason));
                    if let Some(Some(response)) = answer {
                        metrics::counter!("pbx_sip_responses_total", "code" => code.to_string()).increment(1);
                        let _ = sender.try_send(response.to_bytes());
                    }
                    break 'read;
                }
            }
        }
    }
    // Let queued answers (a 400 before close, say) go out, then close.
    wire.streams.lock().expect("stream map lock").remove(&(transport, peer));
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One source may hold `TCP_CONNECTIONS_PER_SOURCE_MAX` connections and no more, while
    /// another source still gets one; the global cap holds across sources; closing frees
    /// the slot and forgets a source with none left.
    #[test]
    fn tcp_slots_cap_per_source_and_in_all() {
        let (a, b) = (tcp_source("192.0.2.1:5060".parse().unwrap()), tcp_source("192.0.2.2:5060".parse().unwrap()));
        let mut slots = TcpSlots::new(TCP_CONNECTIONS_PER_SOURCE_MAX + 2);
        for _ in 0..TCP_CONNECTIONS_PER_SOURCE_MAX {
            assert_eq!(slots.take(a), Ok(()));
        }
        assert_eq!(slots.take(a), Err(Refused::PerSource));
        assert_eq!(slots.take(b), Ok(()));
        assert_eq!(slots.take(b), Ok(()));
        assert_eq!(slots.take(b), Err(Refused::Global));
        slots.give_back(a);
        assert_eq!(slots.take(a), Ok(()), "a closed connection frees its slot");
        for _ in 0..TCP_CONNECTIONS_PER_SOURCE_MAX {
            slots.give_back(a);
        }
        assert_eq!((slots.open, slots.per_source.len()), (2, 1), "a source with no connection is forgotten");
    }

    /// The SIP UDP socket gets the receive buffer asked for, up to what the kernel allows
    /// (`net.core.rmem_max`; Linux reports twice the size it was given), not the default.
    #[tokio::test]
    async fn the_sip_udp_socket_asks_for_a_bigger_receive_buffer() {
        let sockets = SipSockets::bind("127.0.0.1:0".parse().unwrap(), None).await.unwrap();
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
        let granted = rustix::net::sockopt::socket_recv_buffer_size(&*sockets.udp).unwrap();
        assert_eq!(granted, 2 * UDP_RECEIVE_BUFFER_BYTES.min(rmem_max));
    }

    /// IPv6 sources are their /64; mapped IPv4 is IPv4.
    #[test]
    fn tcp_sources() {
        let source = |s: &str| tcp_source(s.parse().unwrap()).to_string();
        assert_eq!(source("[2001:db8:1:2:aaaa::1]:5060"), "2001:db8:1:2::");
        assert_eq!(source("[2001:db8:1:2:bbbb::9]:5061"), "2001:db8:1:2::");
        assert_eq!(source("[::ffff:192.0.2.7]:5060"), "192.0.2.7");
        assert_eq!(source("192.0.2.7:1"), "192.0.2.7");
    }

    /// The TCP cap is half the open-file limit when that is small, else the constant.
    #[test]
    fn the_tcp_cap_follows_the_open_file_limit() {
        assert_eq!(tcp_connections_cap(1_024), 512);
        assert_eq!(tcp_connections_cap(1 << 20), TCP_CONNECTIONS_MAX);
        assert_eq!(tcp_connections_cap(u64::MAX), TCP_CONNECTIONS_MAX);
    }
}

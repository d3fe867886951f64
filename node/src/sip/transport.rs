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

use bytes::Bytes;
use pbx_actors::endpoint::actor::EndpointSink;
use pbx_actors::endpoint::{EndpointMsg, Wire};
use pbx_actors::shell::Current;
use pbx_actors::sip::message::{self, Transport};
use pbx_host::stream;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

/// Messages received but not yet taken by the endpoint, all shards together (each shard's
/// share is this divided by the shard count); beyond it datagrams are dropped.
pub const INBOUND_BACKLOG_MAX: usize = 20_000;
// The bounds of SIP over TCP and TLS, shared with the softphone proxy (`pbx_host::stream`,
// where each is explained), under the names the node's docs and tests use.
/// Open TCP and TLS connections at most (and half the open-file limit, [`tcp_connections_cap`]).
pub const TCP_CONNECTIONS_MAX: usize = stream::CONNECTIONS_MAX;
/// Open connections from one source: an IPv4 address, or an IPv6 /64.
pub const TCP_CONNECTIONS_PER_SOURCE_MAX: usize = stream::CONNECTIONS_PER_SOURCE_MAX;
/// A new connection must deliver a complete SIP message within this (Asterisk's
/// `tcpauthtimeout` is 30 s).
pub const TCP_FIRST_MESSAGE_S: u64 = stream::FIRST_MESSAGE.as_secs();
/// A connection with no traffic this long is closed.
pub const TCP_IDLE_S: u64 = stream::IDLE.as_secs();
/// A message begun must be complete within this (Kamailio's `tcp_msg_read_timeout`, 20 s).
pub const TCP_PARTIAL_MESSAGE_S: u64 = stream::PARTIAL_MESSAGE.as_secs();
/// A TLS handshake must be over within this (Kamailio's `tls_connect_timeout`, 10 s).
pub const TLS_HANDSHAKE_S: u64 = stream::TLS_HANDSHAKE.as_secs();
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
    /// UDP addresses attached ([`NetWire::attach`]: softphones over UDP at the proxy): only
    /// when some are does a UDP send look in `streams` first.
    udp_attached: AtomicUsize,
}

impl Wire for NetWire {
    fn send(&self, destination: SocketAddr, transport: Transport, bytes: Bytes) {
        match transport {
            Transport::Udp => {
                if self.udp_attached.load(Ordering::Acquire) > 0 {
                    let attached =
                        self.streams.lock().expect("stream map lock").get(&(transport, destination)).cloned();
                    if let Some(sender) = attached {
                        if sender.try_send(bytes).is_err() {
                            metrics::counter!("pbx_sip_send_dropped_total", "transport" => "udp").increment(1);
                        }
                        return;
                    }
                }
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
        if transport == Transport::Udp {
            self.udp_attached.fetch_add(1, Ordering::AcqRel);
        }
        true
    }

    pub fn detach(&self, transport: Transport, peer: SocketAddr) {
        let removed = self.streams.lock().expect("stream map lock").remove(&(transport, peer));
        if removed.is_some() && transport == Transport::Udp {
            self.udp_attached.fetch_sub(1, Ordering::AcqRel);
        }
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
        Arc::new(NetWire {
            udp: self.udp.clone(),
            streams: Mutex::new(HashMap::new()),
            udp_attached: AtomicUsize::new(0),
        })
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

/// Half the open-file limit, at most [`TCP_CONNECTIONS_MAX`]: the other half is for RTP.
pub fn tcp_connections_cap(open_files: u64) -> usize {
    stream::connections_cap(open_files)
}

/// The open-stream slots TCP and TLS share (both hold a descriptor each).
#[derive(Clone)]
pub struct StreamSlots(stream::Slots);

impl StreamSlots {
    /// Capped by the process's open-file limit (see [`tcp_connections_cap`]).
    pub fn new() -> StreamSlots {
        let cap = tcp_connections_cap(crate::sip::limits::open_file_limit());
        tracing::info!(cap, per_source = TCP_CONNECTIONS_PER_SOURCE_MAX, "SIP TCP/TLS connection caps");
        StreamSlots(stream::Slots::with_cap(cap))
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
        let slot = match slots.0.take(peer) {
            Ok(slot) => slot,
            Err(refused) => {
                metrics::counter!("pbx_sip_tcp_refused_total", "reason" => refused.label()).increment(1);
                tracing::debug!(%peer, reason = refused.label(), "TCP connection refused");
                drop(stream);
                continue;
            }
        };
        metrics::gauge!("pbx_sip_tcp_connections").increment(1.0);
        let (endpoint, wire, tls) = (endpoint.clone(), wire.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection(stream, peer, Transport::Tcp, endpoint, &wire).await,
                Some(acceptor) => {
                    if let Some(stream) =
                        stream::tls_handshake(&acceptor, stream, peer, "pbx_sip_tls_refused_total").await
                    {
                        metrics::gauge!("pbx_sip_tls_connections").increment(1.0);
                        connection(stream, peer, Transport::Tls, endpoint, &wire).await;
                        metrics::gauge!("pbx_sip_tls_connections").decrement(1.0);
                    }
                }
            }
            drop(slot);
            metrics::gauge!("pbx_sip_tcp_connections").decrement(1.0);
        });
    }
}

async fn connection<S>(stream: S, peer: SocketAddr, transport: Transport, endpoint: Inbound, wire: &NetWire)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (sender, outbound) = mpsc::channel::<Bytes>(stream::SEND_QUEUE_MAX);
    wire.streams.lock().expect("stream map lock").insert((transport, peer), sender.clone());
    let writer_task = stream::spawn_writer(writer, outbound);
    let ended = stream::read_messages(&mut reader, &sender, std::future::pending(), |bytes| {
        endpoint.deliver(bytes, peer, transport);
        true
    })
    .await;
    match ended {
        stream::Ended::Silent => {
            metrics::counter!("pbx_sip_tcp_silent_timeouts_total").increment(1);
            tracing::debug!(%peer, "TCP connection sent no message in time; closing");
        }
        stream::Ended::Unfinished => {
            metrics::counter!("pbx_sip_tcp_partial_timeouts_total").increment(1);
            tracing::info!(%peer, "TCP message not completed in time; closing");
        }
        stream::Ended::Broken { code, reason, head } => {
            metrics::counter!("pbx_sip_malformed_total").increment(1);
            tracing::info!(%peer, %reason, "TCP stream cannot be framed; closing");
            let answer = (code != 0).then(|| message::broken_stream_response(&head, code, &reason));
            if let Some(Some(response)) = answer {
                metrics::counter!("pbx_sip_responses_total", "code" => code.to_string()).increment(1);
                let _ = sender.try_send(response.to_bytes());
            }
        }
        stream::Ended::Closed | stream::Ended::Idle | stream::Ended::Stopped => {}
    }
    // Let queued answers (a 400 before close, say) go out, then close.
    wire.streams.lock().expect("stream map lock").remove(&(transport, peer));
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIP UDP socket gets the receive buffer asked for, up to what the kernel allows
    /// (`net.core.rmem_max`; Linux reports twice the size it was given), not the default.
    #[tokio::test]
    async fn the_sip_udp_socket_asks_for_a_bigger_receive_buffer() {
        let sockets = SipSockets::bind("127.0.0.1:0".parse().unwrap(), None).await.unwrap();
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
        let granted = rustix::net::sockopt::socket_recv_buffer_size(&*sockets.udp).unwrap();
        assert_eq!(granted, 2 * UDP_RECEIVE_BUFFER_BYTES.min(rmem_max));
    }
}

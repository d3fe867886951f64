//! SIP transports on real sockets: one UDP socket and one TCP listener on the same address.
//!
//! They only move bytes: a datagram, or a message framed off a stream by Content-Length
//! (`frame_stream`), goes to the endpoint actor; the endpoint's answers come back through
//! [`NetWire`]. Every queue here is bounded: a flood is dropped and counted, never buffered
//! without limit. They reach the endpoint through a [`Current`], so they outlive its restarts:
//! what arrives while it restarts is dropped (and counted) like a datagram over the backlog.

use bytes::{Bytes, BytesMut};
use pbx_actors::endpoint::{EndpointMsg, Wire};
use pbx_actors::shell::Current;
use pbx_actors::sip::message::{self, Frame, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// Messages received but not yet taken by the endpoint; beyond it datagrams are dropped.
pub const INBOUND_BACKLOG_MAX: usize = 20_000;
/// Open TCP connections; beyond it new ones are refused (closed at once).
pub const TCP_CONNECTIONS_MAX: usize = 4_096;
/// Outbound messages queued per TCP connection.
pub const TCP_SEND_QUEUE_MAX: usize = 256;
/// A TCP connection with no traffic this long is closed (phones refresh far more often).
pub const TCP_IDLE_S: u64 = 900;
/// A message begun on a TCP stream must be complete within this time, counted from its first
/// byte (Kamailio's `tcp_msg_read_timeout` is 20 s): a trickle cannot hold a slot for long.
pub const TCP_PARTIAL_MESSAGE_S: u64 = 20;

const _: () = assert!(TCP_PARTIAL_MESSAGE_S < TCP_IDLE_S);
const UDP_DATAGRAM_BYTES_MAX: usize = 65_535;

/// Where the endpoint's answers leave: the UDP socket, or the TCP connection a request came on.
pub struct NetWire {
    udp: Arc<UdpSocket>,
    tcp: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
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
            Transport::Tcp => {
                let sender = self.tcp.lock().expect("tcp map lock").get(&destination).cloned();
                match sender {
                    Some(sender) if sender.try_send(bytes).is_ok() => {}
                    _ => {
                        metrics::counter!("pbx_sip_send_dropped_total", "transport" => "tcp").increment(1);
                        tracing::debug!(%destination, "TCP send dropped: no connection or queue full");
                    }
                }
            }
        }
    }
}

/// The sockets the node serves SIP on.
pub struct SipSockets {
    pub udp: Arc<UdpSocket>,
    pub tcp: TcpListener,
}

impl SipSockets {
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<SipSockets> {
        use anyhow::Context;
        let udp = UdpSocket::bind(addr).await.with_context(|| format!("bind SIP UDP socket {addr}"))?;
        let tcp = TcpListener::bind(addr).await.with_context(|| format!("bind SIP TCP listener {addr}"))?;
        Ok(SipSockets { udp: Arc::new(udp), tcp })
    }

    pub fn wire(&self) -> Arc<NetWire> {
        Arc::new(NetWire { udp: self.udp.clone(), tcp: Mutex::new(HashMap::new()) })
    }
}

/// Counts messages handed to the endpoint and not yet handled by it.
#[derive(Clone, Default)]
pub struct Backlog(pub Arc<AtomicUsize>);

impl Backlog {
    fn admit(&self) -> bool {
        if self.0.fetch_add(1, Ordering::Relaxed) >= INBOUND_BACKLOG_MAX {
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

pub async fn serve_udp(socket: Arc<UdpSocket>, endpoint: Current<EndpointMsg>, backlog: Backlog) {
    let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    loop {
        let (len, source) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP port unreachable from an earlier send shows up here on some systems.
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        if !backlog.admit() {
            continue;
        }
        let bytes = Bytes::copy_from_slice(&buf[..len]);
        backlog.deliver(&endpoint, EndpointMsg::Inbound { bytes, source, transport: Transport::Udp });
    }
}

pub async fn serve_tcp(listener: TcpListener, endpoint: Current<EndpointMsg>, wire: Arc<NetWire>, backlog: Backlog) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::Relaxed) >= TCP_CONNECTIONS_MAX {
            open.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("pbx_sip_tcp_refused_total").increment(1);
            drop(stream);
            continue;
        }
        let (endpoint, wire, backlog, open) = (endpoint.clone(), wire.clone(), backlog.clone(), open.clone());
        tokio::spawn(async move {
            connection(stream, peer, endpoint, &wire, backlog).await;
            wire.tcp.lock().expect("tcp map lock").remove(&peer);
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    endpoint: Current<EndpointMsg>,
    wire: &NetWire,
    backlog: Backlog,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (sender, mut outbound) = mpsc::channel::<Bytes>(TCP_SEND_QUEUE_MAX);
    wire.tcp.lock().expect("tcp map lock").insert(peer, sender.clone());
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = outbound.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut buf = BytesMut::with_capacity(4096);
    // Set when a message starts arriving, cleared when the buffer empties.
    let mut partial_deadline: Option<tokio::time::Instant> = None;
    'read: loop {
        let deadline =
            partial_deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(TCP_IDLE_S));
        let read = tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                if partial_deadline.is_some() {
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
                    if !backlog.admit() {
                        continue;
                    }
                    backlog.deliver(&endpoint, EndpointMsg::Inbound { bytes, source: peer, transport: Transport::Tcp });
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
    wire.tcp.lock().expect("tcp map lock").remove(&peer);
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
}

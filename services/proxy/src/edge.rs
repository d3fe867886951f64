//! The proxy's public side: softphones connect over TLS (or TCP, where the operator allows
//! it), and each complete SIP message they send goes to the PBX unchanged, tagged with their
//! connection (a *flow*); what the PBX sends back for the flow is written to the connection.
//!
//! The proxy reads a message only to frame it (Content-Length) and to hand a copy to the
//! connection's [`crate::session`] actor, which records the seed's fields. It answers nothing
//! itself, challenges nothing, and keeps no credential: the PBX's registrar challenges through
//! it, and a digest answer is all that ever crosses.
//!
//! Without a PBX linked, a new connection is closed at once (the phone retries); when the link
//! drops, every connection is closed (the phone reconnects and registers again).
//!
//! Bounds, the PBX's own SIP ports' (`pbx_host::stream`, shared): a cap of connections in all
//! and per source (an IPv4 address or an IPv6 /64), a TLS handshake within
//! `stream::TLS_HANDSHAKE`, a first message within `stream::FIRST_MESSAGE`, an idle connection
//! closed after `stream::IDLE`, a message begun complete within `stream::PARTIAL_MESSAGE`, at
//! most `stream::SEND_QUEUE_MAX` messages queued toward a phone.

use crate::link::{Flow, Hub};
use crate::session::{SessionArgs, SessionMsg};
use crate::wire::{FlowTransport, ToPbx};
use bytes::Bytes;
use pbx_host::stream::{self, Slots};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// The metric a refused TLS connection is counted in (`reason`: `not_tls`, `timeout`,
/// `handshake`).
const TLS_REFUSED: &str = "pbx_proxy_tls_refused_total";

/// The proxy's connection slots: softphone and provisioning connections share them.
pub fn slots() -> Slots {
    Slots::with_cap(stream::CONNECTIONS_MAX)
}

/// Accepts softphone connections on `listener`: TLS with `tls`, plain TCP without.
pub async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, hub: Arc<Hub>, slots: Slots) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match slots.take(peer) {
            Ok(slot) => slot,
            Err(refused) => {
                metrics::counter!("pbx_proxy_connections_refused_total", "reason" => refused.label()).increment(1);
                continue;
            }
        };
        let (hub, tls) = (hub.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection(stream, peer, FlowTransport::Tcp, hub).await,
                Some(acceptor) => {
                    if let Some(stream) = handshake(&acceptor, stream, peer).await {
                        connection(stream, peer, FlowTransport::Tls, hub).await;
                    }
                }
            }
            drop(slot);
        });
    }
}

/// A TLS handshake bounded by `stream::TLS_HANDSHAKE`; plain bytes on the TLS port are refused.
pub async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    stream::tls_handshake(acceptor, stream, peer, TLS_REFUSED).await
}

/// A softphone's flow on the PBX's link, open: what its connection (or its UDP address) and
/// the link share.
#[derive(Clone)]
struct Opened {
    flow: u64,
    link: u64,
    to_phone: mpsc::Sender<Bytes>,
    closed: watch::Receiver<bool>,
    session: Option<ractor::ActorRef<SessionMsg>>,
}

impl Opened {
    /// One message from the phone: to its session actor (which records the seed's fields) and
    /// to the PBX. False when the link is gone.
    fn relay(&self, hub: &Hub, bytes: Bytes) -> bool {
        if let Some(session) = &self.session {
            let _ = session.cast(SessionMsg::FromPhone(bytes.clone()));
        }
        hub.to_pbx(self.link, ToPbx::Sip { flow: self.flow, bytes: bytes.to_vec() })
    }

    /// The flow ends: the PBX is told, its media channels and its session go.
    fn close(&self, hub: &Hub) {
        hub.flows.lock().expect("flows lock").remove(&self.flow);
        hub.channels.close_flow(self.link, self.flow);
        hub.to_pbx(self.link, ToPbx::FlowClosed { flow: self.flow });
        if let Some(session) = &self.session {
            session.stop(None);
        }
    }
}

/// Opens a flow for the softphone at `peer` on the current link: its session actor, its entry
/// in the hub, `FlowOpened` to the PBX; and the queue of what the PBX sends the phone. `None`
/// (counted) without a PBX linked.
async fn open_flow(hub: &Hub, peer: SocketAddr, transport: FlowTransport) -> Option<(Opened, mpsc::Receiver<Bytes>)> {
    let Some(link) = hub.current() else {
        metrics::counter!("pbx_proxy_connections_refused_total", "reason" => "no_pbx").increment(1);
        tracing::debug!(%peer, "no PBX linked; softphone refused");
        return None;
    };
    let flow = hub.next_flow();
    let (to_phone, outbound) = mpsc::channel::<Bytes>(stream::SEND_QUEUE_MAX);
    let (close, closed) = watch::channel(false);
    let session = crate::session::spawn(SessionArgs {
        softphone: peer,
        pbx: link.address,
        pbx_serial: link.serial.clone(),
        ledger: hub.ledger.clone(),
    })
    .await
    .map_err(|e| tracing::warn!(error = %e, "proxy session actor not started"))
    .ok();
    let entry = Flow { link: link.id, peer, to_phone: to_phone.clone(), close, session: session.clone() };
    hub.flows.lock().expect("flows lock").insert(flow, entry);
    if !hub.to_pbx(link.id, ToPbx::FlowOpened { flow, transport, peer }) {
        hub.flows.lock().expect("flows lock").remove(&flow);
        if let Some(session) = session {
            session.stop(None);
        }
        return None;
    }
    Some((Opened { flow, link: link.id, to_phone, closed, session }, outbound))
}

/// One softphone connection: a flow on the PBX's link while both last.
async fn connection<S>(stream: S, peer: SocketAddr, transport: FlowTransport, hub: Arc<Hub>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let Some((opened, outbound)) = open_flow(&hub, peer, transport).await else { return };
    metrics::gauge!("pbx_proxy_connections").increment(1.0);
    let (mut reader, writer) = tokio::io::split(stream);
    let writer_task = stream::spawn_writer(writer, outbound);
    let mut closed = opened.closed.clone();
    let stop = async move {
        let _ = closed.changed().await;
    };
    let ended = stream::read_messages(&mut reader, &opened.to_phone, stop, |bytes| opened.relay(&hub, bytes)).await;
    if let stream::Ended::Broken { .. } = ended {
        metrics::counter!("pbx_proxy_malformed_total").increment(1);
        tracing::info!(%peer, "softphone stream cannot be framed; closing");
    }
    opened.close(&hub);
    drop(opened);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
    metrics::gauge!("pbx_proxy_connections").decrement(1.0);
}

/// A UDP softphone's flow lasts while the phone sends something at least this often once it
/// has registered: longer than the longest registration (3600 s), so a phone that only
/// refreshes stays reachable.
pub const UDP_FLOW_IDLE: Duration = Duration::from_secs(3_900);
/// A UDP flow whose phone has not registered (no 2xx to a REGISTER went to it) lasts this
/// long from its last datagram: a REGISTER transaction's life (64 × T1, RFC 3261 Timer F).
/// A spoofed source never registers, so what it costs is a slot for half a minute.
pub const UDP_FLOW_UNREGISTERED_IDLE: Duration = Duration::from_secs(32);
/// UDP flows not registered yet, at once; beyond it datagrams from new addresses are dropped
/// (counted). Registered phones are not affected by a flood of spoofed sources.
pub const UDP_FLOWS_UNREGISTERED_MAX: usize = 256;

/// A UDP flow as the socket loop sees it.
struct UdpFlow {
    opened: Opened,
    /// Last datagram from the phone, and whether a REGISTER of it was answered 2xx.
    seen: Arc<std::sync::Mutex<(tokio::time::Instant, bool)>>,
}

/// Softphones over UDP, where the operator allows it (`--sip-udp-listen`): each source address
/// is a flow, opened at its first datagram and closed when it falls silent
/// ([`UDP_FLOW_UNREGISTERED_IDLE`] before it registered, [`UDP_FLOW_IDLE`] after), when the
/// link goes, or when the PBX closes it. Each datagram is one message (RFC 3261 §18.1.1);
/// CRLF keep-alives are dropped. Flows take their place in `slots` like connections, and at
/// most [`UDP_FLOWS_UNREGISTERED_MAX`] may be unregistered at once.
pub async fn serve_udp(socket: Arc<tokio::net::UdpSocket>, hub: Arc<Hub>, slots: Slots) {
    let flows: Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, UdpFlow>>> = Arc::default();
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let datagram = &buf[..len];
        if datagram.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
            continue;
        }
        let known = flows.lock().expect("udp flows lock").get(&peer).map(|f| (f.opened.clone(), f.seen.clone()));
        let (opened, seen) = match known {
            Some(known) => known,
            None => {
                let unregistered =
                    flows.lock().expect("udp flows lock").values().filter(|f| !f.seen.lock().expect("seen").1).count();
                if unregistered >= UDP_FLOWS_UNREGISTERED_MAX {
                    metrics::counter!("pbx_proxy_connections_refused_total", "reason" => "udp_unregistered")
                        .increment(1);
                    continue;
                }
                let slot = match slots.take(peer) {
                    Ok(slot) => slot,
                    Err(refused) => {
                        metrics::counter!("pbx_proxy_connections_refused_total", "reason" => refused.label())
                            .increment(1);
                        continue;
                    }
                };
                let Some((opened, outbound)) = open_flow(&hub, peer, FlowTransport::Udp).await else { continue };
                let seen = Arc::new(std::sync::Mutex::new((tokio::time::Instant::now(), false)));
                let flow = UdpFlow { opened: opened.clone(), seen: seen.clone() };
                flows.lock().expect("udp flows lock").insert(peer, flow);
                metrics::gauge!("pbx_proxy_connections").increment(1.0);
                let task = udp_flow(socket.clone(), peer, opened.clone(), outbound, seen.clone());
                let (ended, hub, table) = (opened.clone(), hub.clone(), flows.clone());
                tokio::spawn(async move {
                    task.await;
                    table.lock().expect("udp flows lock").remove(&peer);
                    ended.close(&hub);
                    drop(slot);
                    metrics::gauge!("pbx_proxy_connections").decrement(1.0);
                });
                (opened, seen)
            }
        };
        seen.lock().expect("seen").0 = tokio::time::Instant::now();
        opened.relay(&hub, Bytes::copy_from_slice(datagram));
    }
}

/// One UDP flow's life: what the PBX sends goes to the phone's address (a 2xx to a REGISTER
/// marks it registered), until it falls silent, the link closes it, or the queue ends.
async fn udp_flow(
    socket: Arc<tokio::net::UdpSocket>,
    peer: SocketAddr,
    opened: Opened,
    mut outbound: mpsc::Receiver<Bytes>,
    seen: Arc<std::sync::Mutex<(tokio::time::Instant, bool)>>,
) {
    let mut closed = opened.closed.clone();
    drop(opened);
    loop {
        // Re-read each turn: a datagram from the phone moves the deadline on.
        let (last, registered) = *seen.lock().expect("seen");
        let idle_at = last + if registered { UDP_FLOW_IDLE } else { UDP_FLOW_UNREGISTERED_IDLE };
        if idle_at <= tokio::time::Instant::now() {
            return;
        }
        tokio::select! {
            out = outbound.recv() => match out {
                Some(bytes) => {
                    if register_final_code(&bytes).is_some_and(|code| (200..300).contains(&code)) {
                        seen.lock().expect("seen").1 = true;
                    }
                    match socket.send_to(&bytes, peer).await {
                        Ok(_) => metrics::counter!("pbx_proxy_udp_sent_total").increment(1),
                        Err(e) => tracing::debug!(%peer, error = %e, "UDP send to a softphone failed"),
                    }
                }
                None => return,
            },
            _ = closed.changed() => return,
            () = tokio::time::sleep_until(idle_at) => {}
        }
    }
}

/// The status of a final response to a REGISTER (by its CSeq), if `bytes` is one: what keeps a
/// UDP flow here and a proxy seat at the PBX (`pbx_node::proxy_link`).
pub fn register_final_code(bytes: &[u8]) -> Option<u16> {
    let status = bytes.strip_prefix(b"SIP/2.0 ")?.get(..3)?;
    let code: u16 = std::str::from_utf8(status).ok()?.parse().ok()?;
    let text = std::str::from_utf8(bytes).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let register = head.split("\r\n").any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("cseq")
                && value.split_whitespace().nth(1).is_some_and(|m| m.eq_ignore_ascii_case("REGISTER"))
        })
    });
    (code >= 200 && register).then_some(code)
}

/// Serves provisioning documents over HTTPS on `listener` ([`crate::provision`]).
pub async fn serve_provisioning(listener: TcpListener, tls: tokio_rustls::TlsAcceptor, hub: Arc<Hub>, slots: Slots) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.take(peer) else { continue };
        let (hub, tls) = (hub.clone(), tls.clone());
        tokio::spawn(async move {
            if let Some(stream) = handshake(&tls, stream, peer).await {
                crate::provision::serve_one(stream, &hub.provisioning).await;
            }
            drop(slot);
        });
    }
}

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
//! Bounds, as on the PBX's own SIP ports: [`CONNECTIONS_MAX`] connections, at most
//! [`CONNECTIONS_PER_IP_MAX`] from one IP, a TLS handshake within [`TLS_HANDSHAKE`], a first
//! message within [`FIRST_MESSAGE`], an idle connection closed after [`IDLE`], a message begun
//! complete within [`PARTIAL_MESSAGE`], at most [`SEND_QUEUE_MAX`] messages queued toward a
//! phone.

use crate::link::{Flow, Hub};
use crate::session::{SessionArgs, SessionMsg};
use crate::wire::{FlowTransport, ToPbx};
use bytes::{Bytes, BytesMut};
use pbx_actors::sip::message::{self, Frame};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub const CONNECTIONS_MAX: usize = 4_096;
pub const CONNECTIONS_PER_IP_MAX: usize = 128;
pub const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
pub const FIRST_MESSAGE: Duration = Duration::from_secs(30);
pub const IDLE: Duration = Duration::from_secs(900);
pub const PARTIAL_MESSAGE: Duration = Duration::from_secs(20);
pub const SEND_QUEUE_MAX: usize = 256;
/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 22;

/// Connections open, in all and per IP.
#[derive(Default)]
pub struct Slots {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Slots {
    pub fn take(&self, ip: IpAddr) -> Result<(), &'static str> {
        let mut open = self.open.lock().expect("slots lock");
        if open.0 >= CONNECTIONS_MAX {
            return Err("global");
        }
        let per_ip = open.1.entry(ip).or_default();
        if *per_ip >= CONNECTIONS_PER_IP_MAX {
            return Err("per_source");
        }
        *per_ip += 1;
        open.0 += 1;
        Ok(())
    }

    pub fn give_back(&self, ip: IpAddr) {
        let mut open = self.open.lock().expect("slots lock");
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&ip);
            }
        }
    }
}

/// Accepts softphone connections on `listener`: TLS with `tls`, plain TCP without.
pub async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, hub: Arc<Hub>, slots: Arc<Slots>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(reason) = slots.take(peer.ip()) {
            metrics::counter!("pbx_proxy_connections_refused_total", "reason" => reason).increment(1);
            continue;
        }
        let (hub, slots, tls) = (hub.clone(), slots.clone(), tls.clone());
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
            slots.give_back(peer.ip());
        });
    }
}

/// A TLS handshake bounded by [`TLS_HANDSHAKE`]; plain bytes on the TLS port are refused.
pub async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let refuse = |reason: &'static str| {
        metrics::counter!("pbx_proxy_tls_refused_total", "reason" => reason).increment(1);
        tracing::debug!(%peer, reason, "TLS connection refused");
        None
    };
    let deadline = tokio::time::Instant::now() + TLS_HANDSHAKE;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return refuse("timeout"),
        Ok(Ok(0)) | Ok(Err(_)) => return None,
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE_RECORD => return refuse("not_tls"),
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Err(_) => refuse("timeout"),
        Ok(Err(_)) => refuse("handshake"),
        Ok(Ok(stream)) => Some(stream),
    }
}

/// One softphone connection: a flow on the PBX's link while both last.
async fn connection<S>(stream: S, peer: SocketAddr, transport: FlowTransport, hub: Arc<Hub>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let Some(link) = hub.current() else {
        metrics::counter!("pbx_proxy_connections_refused_total", "reason" => "no_pbx").increment(1);
        tracing::debug!(%peer, "no PBX linked; connection closed");
        return;
    };
    let flow = hub.next_flow();
    let (to_phone, mut outbound) = mpsc::channel::<Bytes>(SEND_QUEUE_MAX);
    let (close, mut closed) = watch::channel(false);
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
        return;
    }
    metrics::gauge!("pbx_proxy_connections").increment(1.0);

    let (mut reader, mut writer) = tokio::io::split(stream);
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = outbound.recv().await {
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut buf = BytesMut::with_capacity(4096);
    let mut partial: Option<tokio::time::Instant> = None;
    let mut first = Some(tokio::time::Instant::now() + FIRST_MESSAGE);
    'read: loop {
        let idle = tokio::time::Instant::now() + IDLE;
        let deadline = [partial, first].into_iter().flatten().fold(idle, std::cmp::min);
        tokio::select! {
            read = tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)) => match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            },
            _ = closed.changed() => break,
        }
        loop {
            match message::frame_stream(&buf) {
                Frame::Incomplete => {
                    if buf.is_empty() {
                        partial = None;
                    } else if partial.is_none() {
                        partial = Some(tokio::time::Instant::now() + PARTIAL_MESSAGE);
                    }
                    break;
                }
                Frame::KeepAlive { len } => {
                    let _ = buf.split_to(len);
                    partial = None;
                    let _ = to_phone.try_send(Bytes::from_static(b"\r\n"));
                }
                Frame::Message { len } => {
                    let bytes = buf.split_to(len).freeze();
                    partial = None;
                    first = None;
                    if let Some(session) = &session {
                        let _ = session.cast(SessionMsg::FromPhone(bytes.clone()));
                    }
                    if !hub.to_pbx(link.id, ToPbx::Sip { flow, bytes: bytes.to_vec() }) {
                        break 'read;
                    }
                }
                Frame::Broken { .. } => {
                    metrics::counter!("pbx_proxy_malformed_total").increment(1);
                    tracing::info!(%peer, "softphone stream cannot be framed; closing");
                    break 'read;
                }
            }
        }
    }

    hub.flows.lock().expect("flows lock").remove(&flow);
    hub.channels.close_flow(link.id, flow);
    hub.to_pbx(link.id, ToPbx::FlowClosed { flow });
    if let Some(session) = session {
        session.stop(None);
    }
    drop(to_phone);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
    metrics::gauge!("pbx_proxy_connections").decrement(1.0);
}

/// Serves provisioning documents over HTTPS on `listener` ([`crate::provision`]).
pub async fn serve_provisioning(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    hub: Arc<Hub>,
    slots: Arc<Slots>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if slots.take(peer.ip()).is_err() {
            continue;
        }
        let (hub, slots, tls) = (hub.clone(), slots.clone(), tls.clone());
        tokio::spawn(async move {
            if let Some(stream) = handshake(&tls, stream, peer).await {
                crate::provision::serve_one(stream, &hub.provisioning).await;
            }
            slots.give_back(peer.ip());
        });
    }
}

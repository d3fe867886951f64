//! The proxy's side of the link its PBX opens: accept it (mutual TLS against the proxy CA of
//! `pbx proxy init`, and the certificate must be the PBX's, not another holder of that CA),
//! then move frames between the PBX and the softphones' connections ([`crate::edge`]), and
//! datagrams between the PBX and the media channels ([`crate::media`]).
//!
//! One PBX at a time: a new authenticated link replaces the old one (the PBX restarted and
//! dialled again), and every softphone connection of the old link is closed, so the phones
//! reconnect and register anew through the new one.

use crate::ledger::LedgerMsg;
use crate::media::Channels;
use crate::wire::{self, ToPbx, ToProxy};
use pbx_cluster::identity::NodeName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Frames queued toward the PBX; beyond it a softphone's message is dropped and counted (the
/// phone retransmits over UDP-less transports only at the transaction layer, so this is rare).
pub const TO_PBX_QUEUE_MAX: usize = 4_096;
/// How long the PBX has to say Hello after its handshake.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The link to the PBX while it is up.
#[derive(Clone)]
pub struct PbxLink {
    pub id: u64,
    pub serial: String,
    pub seats: u32,
    pub address: SocketAddr,
    pub frames: mpsc::Sender<ToPbx>,
    pub connection: quinn::Connection,
}

/// A softphone's connection as the link sees it: where its messages go.
pub struct Flow {
    pub link: u64,
    /// The softphone's address as the proxy sees it (its NAT's, usually).
    pub peer: SocketAddr,
    pub to_phone: mpsc::Sender<bytes::Bytes>,
    /// Closing the connection (after what is queued).
    pub close: tokio::sync::watch::Sender<bool>,
    /// Its proxy session actor, which reads the PBX's answers to its REGISTERs too.
    pub session: Option<ractor::ActorRef<crate::session::SessionMsg>>,
}

/// What the link, the edge and the media share.
pub struct Hub {
    pub link: Mutex<Option<PbxLink>>,
    pub flows: Mutex<HashMap<u64, Flow>>,
    pub channels: Arc<Channels>,
    pub ledger: ractor::ActorRef<LedgerMsg>,
    pub provisioning: crate::provision::Cache,
    next_flow: AtomicU64,
    next_link: AtomicU64,
}

impl Hub {
    pub fn new(channels: Channels, ledger: ractor::ActorRef<LedgerMsg>) -> Arc<Hub> {
        Arc::new(Hub {
            link: Mutex::new(None),
            flows: Mutex::new(HashMap::new()),
            channels: Arc::new(channels),
            ledger,
            provisioning: crate::provision::Cache::default(),
            next_flow: AtomicU64::new(1),
            next_link: AtomicU64::new(1),
        })
    }

    pub fn current(&self) -> Option<PbxLink> {
        self.link.lock().expect("link lock").clone()
    }

    pub fn next_flow(&self) -> u64 {
        self.next_flow.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a frame for the PBX of link `id`; false (counted) when that link is gone or full.
    pub fn to_pbx(&self, id: u64, frame: ToPbx) -> bool {
        let link = self.current().filter(|l| l.id == id);
        match link {
            Some(link) if link.frames.try_send(frame).is_ok() => true,
            _ => {
                metrics::counter!("pbx_proxy_to_pbx_dropped_total").increment(1);
                false
            }
        }
    }

    /// Closes every softphone connection of link `id`.
    fn close_flows_of(&self, id: u64) {
        let flows = self.flows.lock().expect("flows lock");
        for flow in flows.values().filter(|f| f.link == id) {
            let _ = flow.close.send(true);
        }
    }
}

/// Accepts the PBX's links on `endpoint` until it closes.
pub async fn serve(endpoint: quinn::Endpoint, hub: Arc<Hub>) {
    let pbx = NodeName::new(wire::PBX_NAME).expect("a valid node name");
    while let Some(accepted) = pbx_cluster::link::accept(&endpoint).await {
        let link = match accepted {
            Ok(link) => link,
            Err(e) => {
                // Logged and counted by the link code (a foreign CA, no certificate, …).
                metrics::counter!("pbx_proxy_links_refused_total", "reason" => "handshake").increment(1);
                tracing::warn!(error = %e, "PBX link refused");
                continue;
            }
        };
        if link.peer != pbx {
            metrics::counter!("pbx_proxy_links_refused_total", "reason" => "not_the_pbx").increment(1);
            tracing::warn!(peer = %link.peer, remote = %link.connection.remote_address(), "link refused: the certificate is not the PBX's");
            link.connection.close(1u32.into(), b"not the PBX");
            continue;
        }
        let hub = hub.clone();
        tokio::spawn(async move { run_link(link.connection, hub).await });
    }
}

async fn run_link(connection: quinn::Connection, hub: Arc<Hub>) {
    let address = connection.remote_address();
    let (mut send, mut recv) = match tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        _ => {
            tracing::warn!(%address, "PBX link opened no stream in time; closed");
            connection.close(2u32.into(), b"no stream");
            return;
        }
    };
    let hello = tokio::time::timeout(HELLO_TIMEOUT, wire::read::<_, ToProxy>(&mut recv)).await;
    let (serial, seats) = match hello {
        Ok(Ok(Some(ToProxy::Hello { serial, seats }))) => (serial, seats),
        other => {
            tracing::warn!(%address, ?other, "PBX link said no Hello; closed");
            connection.close(3u32.into(), b"no hello");
            return;
        }
    };
    let id = hub.next_link.fetch_add(1, Ordering::Relaxed);
    let (frames, mut outbound) = mpsc::channel::<ToPbx>(TO_PBX_QUEUE_MAX);
    let link = PbxLink { id, serial: serial.clone(), seats, address, frames, connection: connection.clone() };
    if let Some(old) = hub.link.lock().expect("link lock").replace(link) {
        tracing::info!(old = %old.address, "a new link from the PBX replaces the old one");
        old.connection.close(4u32.into(), b"replaced");
        hub.close_flows_of(old.id);
    }
    metrics::gauge!("pbx_proxy_link_up").set(1.0);
    tracing::info!(%address, %serial, seats, "PBX linked");
    hub.to_pbx(id, ToPbx::Ready);

    let writer = tokio::spawn(async move {
        while let Some(frame) = outbound.recv().await {
            if let Err(e) = wire::write(&mut send, &frame).await {
                tracing::debug!(error = %e, "PBX link write failed");
                break;
            }
        }
    });
    let datagrams = tokio::spawn(crate::media::from_pbx(connection.clone(), id, hub.channels.clone()));

    loop {
        match wire::read::<_, ToProxy>(&mut recv).await {
            Ok(Some(frame)) => handle(frame, id, &serial, &hub),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%address, error = %e, "PBX link broken");
                break;
            }
        }
    }

    writer.abort();
    datagrams.abort();
    let mut current = hub.link.lock().expect("link lock");
    if current.as_ref().is_some_and(|l| l.id == id) {
        *current = None;
        metrics::gauge!("pbx_proxy_link_up").set(0.0);
    }
    drop(current);
    hub.close_flows_of(id);
    hub.channels.close_link(id);
    connection.close(0u32.into(), b"bye");
    tracing::info!(%address, "PBX link closed");
}

fn handle(frame: ToProxy, link: u64, serial: &str, hub: &Arc<Hub>) {
    match frame {
        ToProxy::Hello { .. } => tracing::debug!("second Hello ignored"),
        ToProxy::Sip { flow, bytes } => {
            let flows = hub.flows.lock().expect("flows lock");
            match flows.get(&flow).filter(|f| f.link == link) {
                Some(f) => {
                    let bytes = bytes::Bytes::from(bytes);
                    if let Some(session) = &f.session
                        && bytes.starts_with(b"SIP/2.0 2")
                    {
                        let _ = session.cast(crate::session::SessionMsg::FromPbx(bytes.clone()));
                    }
                    if f.to_phone.try_send(bytes).is_err() {
                        metrics::counter!("pbx_proxy_to_phone_dropped_total").increment(1);
                    }
                }
                _ => metrics::counter!("pbx_proxy_to_phone_dropped_total").increment(1),
            }
        }
        ToProxy::CloseFlow { flow } => {
            if let Some(f) = hub.flows.lock().expect("flows lock").get(&flow).filter(|f| f.link == link) {
                let _ = f.close.send(true);
            }
        }
        ToProxy::OpenChannel { channel, flow, phone } => {
            let phone_ip =
                hub.flows.lock().expect("flows lock").get(&flow).filter(|f| f.link == link).map(|f| f.peer.ip());
            let phone_ip = phone_ip.zip(hub.current().filter(|l| l.id == link).map(|l| l.connection));
            let hub = hub.clone();
            tokio::spawn(async move {
                let answer = match phone_ip {
                    Some((ip, connection)) => match hub.channels.open(link, channel, flow, ip, phone, connection).await
                    {
                        Ok(public) => ToPbx::ChannelOpened { channel, public },
                        Err(e) => {
                            tracing::warn!(channel, error = %e, "media channel not opened");
                            ToPbx::ChannelRefused { channel }
                        }
                    },
                    None => ToPbx::ChannelRefused { channel },
                };
                hub.to_pbx(link, answer);
            });
        }
        ToProxy::CloseChannel { channel } => hub.channels.close(link, channel),
        ToProxy::DebugMode { days } => {
            let hub = hub.clone();
            let serial = serial.to_string();
            tokio::spawn(async move {
                let until = ractor::call!(hub.ledger, |reply| LedgerMsg::DebugMode {
                    pbx_serial: serial,
                    days,
                    reply: Some(reply)
                })
                .ok()
                .flatten();
                hub.to_pbx(link, ToPbx::DebugModeSet { until_unix_s: until });
            });
        }
        ToProxy::Provision { code, document } => hub.provisioning.put(code, document),
        ToProxy::Export { request, user } => {
            // Only this PBX's records of that user name.
            let (hub, pbx_serial) = (hub.clone(), Some(serial.to_string()));
            tokio::spawn(async move {
                let document = ractor::call!(hub.ledger, |reply| LedgerMsg::Export { pbx_serial, user, reply })
                    .map(|d| d.to_string())
                    .unwrap_or_else(|e| serde_json::json!({ "error": format!("the proxy's ledger: {e}") }).to_string());
                hub.to_pbx(link, ToPbx::Exported { request, document });
            });
        }
        ToProxy::Erase { request, user } => {
            let (hub, pbx_serial) = (hub.clone(), Some(serial.to_string()));
            tokio::spawn(async move {
                match ractor::call!(hub.ledger, |reply| LedgerMsg::Erase { pbx_serial, user, reply }) {
                    Ok(records) => {
                        hub.to_pbx(link, ToPbx::Erased { request, records: records as u64 });
                    }
                    // No answer: the PBX's request times out and says so.
                    Err(e) => tracing::error!(error = %e, "erasure not done: the ledger did not answer"),
                }
            });
        }
    }
}

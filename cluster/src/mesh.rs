//! The mesh: ractor_cluster over the node links, so actors address actors on other nodes.
//!
//! Each node runs one ractor_cluster [`NodeServer`]. Every session it has runs over one bidi
//! stream of one mutual-TLS [`link`]; nothing else is let in. The node name in the peer's
//! certificate is the identity: the ractor node name a peer announces must be
//! [`ractor_name`] of that name, or its session and link are closed. ractor_cluster's cookie
//! is the same constant on every node and proves nothing.
//!
//! ractor_cluster always opens a TCP listener of its own. It is bound to 127.0.0.1 on a free
//! port, and any session that is not one of ours (one on that listener) is stopped the moment
//! it opens, before it can authenticate. Sessions connect in [`NodeConnectionMode::Isolated`],
//! so ractor never dials anyone by itself.
//!
//! A node dials every configured peer it has no link with, retrying with exponential
//! [`Backoff`], and accepts links from any node the cluster CA made. Two nodes that dial each
//! other at once get two links; ractor_cluster keeps one session and the other link is closed.

use crate::identity::{NodeIdentity, NodeName};
use crate::link::{self, Link, LinkError, RefusedBy};
use ractor::{Actor, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeEventSubscription, NodeServer, NodeServerMessage};
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// ractor_cluster's cookie: the same on every node, no secret (the links authenticate).
const COOKIE: &str = "pbx-cluster";
/// Largest ractor_cluster frame a session reads (its default, said here): a longer length
/// prefix ends the session before anything is allocated for it.
pub const FRAME_BYTES_MAX: u64 = 16 << 20;
/// Longest a new link may take to carry the first bytes of its ractor session.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest [`Mesh::shutdown`] waits for the node server.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Mesh::shutdown`] lets the links' close frames go out.
const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// A link that lasted this long was a success: the next dial starts from the shortest delay.
const STABLE_LINK: Duration = Duration::from_secs(2);
const SUBSCRIPTION_ID: &str = "pbx-cluster-mesh";

/// A node to dial: its name (checked against its certificate) and its link address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: NodeName,
    pub addr: SocketAddr,
}

/// Delays between dial attempts to an unreachable peer: `first`, doubling up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { first: Duration::from_millis(100), max: Duration::from_secs(5) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("local address of the cluster endpoint: {0}")]
    LocalAddr(std::io::Error),
    #[error("start the ractor_cluster node server: {0}")]
    NodeServer(String),
}

/// The ractor node name of a cluster node, `<node>@<node>.pbx-cluster`. The host part is the
/// node's own too: ractor takes a peer with our host and port for ourselves.
pub fn ractor_name(node: &NodeName) -> String {
    format!("{node}@{}", node.dns_name())
}

/// A running mesh node. Stop it with [`Mesh::shutdown`].
pub struct Mesh {
    name: NodeName,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    server: ActorRef<NodeServerMessage>,
    server_handle: tokio::task::JoinHandle<()>,
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
}

impl Mesh {
    /// Opens the link endpoint on `listen`, starts the node server and dials `peers` (an entry
    /// with this node's own name is skipped, so every node may be given the same list).
    pub async fn start(
        identity: &NodeIdentity,
        listen: SocketAddr,
        peers: &[Peer],
        backoff: Backoff,
    ) -> Result<Mesh, MeshError> {
        // STYLE: one provider. ractor_cluster compiles in a second (aws-lc-rs, via tokio-rustls),
        // so rustls has no default unless one is installed; a second install is no error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let name = identity.name.clone();
        let endpoint = link::endpoint(identity, listen)?;
        let local_addr = endpoint.local_addr().map_err(MeshError::LocalAddr)?;
        let node_server = NodeServer::new(
            0,
            COOKIE.into(),
            name.to_string(),
            name.dns_name(),
            None,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(Ipv4Addr::LOCALHOST.into())
        .with_max_inbound_frame_size(FRAME_BYTES_MAX);
        let (server, server_handle) =
            Actor::spawn(None, node_server, ()).await.map_err(|e| MeshError::NodeServer(e.to_string()))?;
        let shared = Arc::new(Shared::default());
        // Before any link: the mailbox is ordered, so every session is seen by this subscription.
        let subscription = Box::new(Events(shared.clone()));
        if let Err(e) = server.cast(NodeServerMessage::SubscribeToEvents { id: SUBSCRIPTION_ID.into(), subscription }) {
            server.stop(None);
            return Err(MeshError::NodeServer(e.to_string()));
        }
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_links(endpoint.clone(), server.clone(), shared.clone()));
        for peer in peers.iter().filter(|p| p.name != name) {
            tasks.spawn(dial(endpoint.clone(), server.clone(), shared.clone(), peer.clone(), backoff));
        }
        tracing::info!(node = %name, listen = %local_addr, peers = peers.len(), "cluster mesh started");
        Ok(Mesh { name, local_addr, endpoint, server, server_handle, tasks, shared })
    }

    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// Where this node accepts links.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The ractor_cluster node server, for what ractor offers across nodes (sessions, events).
    pub fn node_server(&self) -> &ActorRef<NodeServerMessage> {
        &self.server
    }

    /// The peers with a ready session: authenticated by certificate, name checked, ractor state
    /// (process groups, remote actors) exchanged.
    pub fn connected(&self) -> BTreeSet<NodeName> {
        self.shared.connected.borrow().clone()
    }

    /// Follows [`Mesh::connected`] as it changes.
    pub fn watch(&self) -> watch::Receiver<BTreeSet<NodeName>> {
        self.shared.connected.subscribe()
    }

    /// Stops dialing and accepting, closes every link and stops the node server (and with it
    /// every session and remote actor reference), each bounded by a timeout.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        self.endpoint.close(0u32.into(), b"node shutting down");
        self.server.stop(Some("mesh shutdown".into()));
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut self.server_handle).await.is_err() {
            tracing::warn!(node = %self.name, "ractor_cluster node server did not stop in time");
            self.server_handle.abort();
        }
        // Time for the close frames to leave, not for quinn's draining (three probe timeouts,
        // up to seconds): a peer that misses them sees the idle timeout or our stateless reset.
        let _ = tokio::time::timeout(CLOSE_GRACE, self.endpoint.wait_idle()).await;
        tracing::info!(node = %self.name, "cluster mesh stopped");
    }
}

/// One bidi stream of a link, as ractor_cluster's transport. The label names the link.
struct LinkStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    label: String,
}

impl ClusterBidiStream for LinkStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        (Box::new(self.recv), Box::new(self.send))
    }
    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

struct LinkEntry {
    peer: NodeName,
    connection: quinn::Connection,
    /// The ractor name the peer announced matched its certificate.
    checked: bool,
}

/// The links with a ractor session, by the label their session carries.
#[derive(Default)]
struct Shared {
    links: watch::Sender<HashMap<String, LinkEntry>>,
    /// Peers whose session is ready; derived from `links` plus the ready events.
    connected: watch::Sender<BTreeSet<NodeName>>,
    next_label: AtomicU64,
}

impl Shared {
    fn add(&self, peer: &NodeName, connection: &quinn::Connection) -> String {
        let n = self.next_label.fetch_add(1, Ordering::Relaxed);
        let label = format!("{peer} {} #{n}", connection.remote_address());
        let entry = LinkEntry { peer: peer.clone(), connection: connection.clone(), checked: false };
        self.links.send_modify(|links| {
            links.insert(label.clone(), entry);
        });
        label
    }

    /// Closes and forgets a link; the second call (session end, then link end) does nothing.
    fn remove(&self, label: &str, why: &str) {
        let mut removed = None;
        self.links.send_if_modified(|links| {
            removed = links.remove(label);
            removed.is_some()
        });
        let Some(entry) = removed else { return };
        entry.connection.close(0u32.into(), why.as_bytes());
        let gone = self.connected.send_if_modified(|connected| {
            !self.links.borrow().values().any(|e| e.peer == entry.peer) && connected.remove(&entry.peer)
        });
        if gone {
            tracing::info!(peer = %entry.peer, why, "cluster peer disconnected");
        }
    }

    /// The session on link `label` authenticated: its ractor name must be its certificate's.
    fn check(&self, label: &str, claimed: Option<&str>) -> bool {
        let mut refused = None;
        let known = self.links.send_if_modified(|links| match links.get_mut(label) {
            Some(entry) if claimed == Some(ractor_name(&entry.peer).as_str()) => {
                entry.checked = true;
                true
            }
            Some(entry) => {
                refused = Some((entry.peer.clone(), entry.connection.remote_address()));
                false
            }
            None => false,
        });
        if let Some((peer, addr)) = refused {
            let what = format!("node {peer} announced itself to ractor as {claimed:?}, not {:?}", ractor_name(&peer));
            link::count_refusal(addr, RefusedBy::Us, "RactorName", &what);
            self.remove(label, "ractor node name does not match the certificate");
        }
        known
    }

    fn ready(&self, label: &str) {
        let peer = self.links.borrow().get(label).filter(|e| e.checked).map(|e| e.peer.clone());
        if let Some(peer) = peer
            && self.connected.send_if_modified(|connected| connected.insert(peer.clone()))
        {
            tracing::info!(%peer, "cluster peer connected");
        }
    }
}

/// The node server's view of sessions, checked against the links.
struct Events(Arc<Shared>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, session: NodeServerSessionInformation) {
        if !self.0.links.borrow().contains_key(&session.peer_addr) {
            tracing::warn!(remote = %session.peer_addr, "ractor_cluster session not over a cluster link: stopped");
            session.actor.stop(Some("not over a cluster link".into()));
        }
    }

    fn node_session_authenticated(&self, session: NodeServerSessionInformation) {
        let claimed = session.peer_name.as_ref().map(|n| n.name.as_str());
        if !self.0.check(&session.peer_addr, claimed) {
            session.actor.stop(Some("ractor node name does not match the certificate".into()));
        }
    }

    fn node_session_ready(&self, session: NodeServerSessionInformation) {
        self.0.ready(&session.peer_addr);
    }

    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        self.0.remove(&session.peer_addr, "ractor session ended");
    }
}

/// Hands a link to the node server as one session and holds it until it closes.
async fn attach(link: Link, server: &ActorRef<NodeServerMessage>, shared: &Shared, is_server: bool) {
    let Link { peer, connection } = link;
    // The dialing side's session speaks first, so the accepting side sees the stream then.
    let opened = tokio::time::timeout(STREAM_TIMEOUT, async {
        if is_server { connection.accept_bi().await } else { connection.open_bi().await }
    });
    let (send, recv) = match opened.await {
        Ok(Ok(halves)) => halves,
        Ok(Err(e)) => {
            tracing::debug!(%peer, %e, "cluster link closed before its ractor stream opened");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "cluster link opened no ractor stream in time");
            connection.close(0u32.into(), b"no ractor stream");
            return;
        }
    };
    let label = shared.add(&peer, &connection);
    let stream = Box::new(LinkStream { send, recv, label: label.clone() });
    if server.cast(NodeServerMessage::ConnectionOpenedExternal { stream, is_server }).is_err() {
        shared.remove(&label, "node server stopped");
        return;
    }
    let why = connection.closed().await;
    tracing::info!(%peer, %why, "cluster link closed");
    shared.remove(&label, "link closed");
}

async fn accept_links(endpoint: quinn::Endpoint, server: ActorRef<NodeServerMessage>, shared: Arc<Shared>) {
    let mut links = JoinSet::new();
    while let Some(accepted) = link::accept(&endpoint).await {
        while links.try_join_next().is_some() {}
        // Refusals are logged and counted by `link`.
        let Ok(link) = accepted else { continue };
        let (server, shared) = (server.clone(), shared.clone());
        links.spawn(async move { attach(link, &server, &shared, true).await });
    }
}

/// Keeps a link with `peer`: dials whenever there is none, backing off while it fails.
async fn dial(
    endpoint: quinn::Endpoint,
    server: ActorRef<NodeServerMessage>,
    shared: Arc<Shared>,
    peer: Peer,
    backoff: Backoff,
) {
    let mut links = shared.links.subscribe();
    let mut delay = backoff.first;
    let mut failing = false;
    loop {
        // A link the peer opened will do; `shared` outlives this task, so this cannot fail.
        if links.wait_for(|links| !links.values().any(|e| e.peer == peer.name)).await.is_err() {
            return;
        }
        let connected = tokio::time::timeout(STREAM_TIMEOUT, link::connect(&endpoint, peer.addr, &peer.name)).await;
        match connected {
            Ok(Ok(link)) => {
                failing = false;
                let linked = tokio::time::Instant::now();
                attach(link, &server, &shared, false).await;
                // A peer that refuses us after the handshake (TLS 1.3) must not be redialed
                // at the shortest delay forever.
                if linked.elapsed() >= STABLE_LINK {
                    delay = backoff.first;
                }
            }
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(peer = %peer.name, addr = %peer.addr, %e, "cannot link with cluster peer; retrying");
            }
            Ok(Err(e)) => tracing::debug!(peer = %peer.name, %e, "cluster peer still unreachable"),
            Err(_) => tracing::debug!(peer = %peer.name, "cluster link handshake timed out"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(backoff.max);
    }
}

//! Node links: QUIC (quinn) with mutual TLS 1.3 (rustls, ring) against the cluster CA.
//!
//! Both sides prove they hold a certificate from the cluster CA (see [`crate::identity`]): the
//! accepting node requires a client certificate chained to the CA, the connecting node checks
//! the server's certificate against the CA *and* the node name it meant to reach. The CA is the
//! only root either side trusts; the operating system's roots play no part. ALPN
//! `pbx-cluster/1` keeps other QUIC protocols (and later versions of ours) apart.
//!
//! A refused handshake (unknown CA, wrong node name, no client certificate, no common ALPN) is
//! logged at warn with the remote address and the reason, and counted in
//! `pbx_cluster_link_refusals_total{by, reason}`: `by="us"` when this node refused the peer,
//! `by="peer"` when the peer refused this node; `reason` is the TLS alert (`UnknownCA`,
//! `BadCertificate`, `CertificateRequired`, …).
//!
//! In TLS 1.3 the client finishes its handshake before the server has judged the client's
//! certificate, so a client the server refuses may see [`connect`] succeed and learn of the
//! refusal on first use of the connection (a `ConnectionClosed` with a crypto error code).
//!
//! Bounds: a peer may hold at most [`STREAMS_PER_LINK_MAX`] streams open on a link; what each
//! carries is bounded by its user (`raft::net::MESSAGE_BYTES_MAX`, the mesh's frame bound).
//!
//! Liveness: both ends send a keep-alive every [`KEEP_ALIVE`] and drop a link silent for
//! [`IDLE_TIMEOUT`]. A node's stateless-reset key (and connection-id key) is derived from its
//! private key, so after a restart it answers packets of its old connections with a reset the
//! peer accepts, and the peer drops the dead link at once instead of waiting out the idle
//! timeout.
//!
//! What runs over the links is in [`crate::mesh`] (ractor_cluster).

use crate::identity::{NodeIdentity, NodeName};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, TransportErrorCode};
use rustls::AlertDescription;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::VerifierBuilderError;
use rustls::server::danger::ClientCertVerifier;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The application protocol both sides must offer.
pub const ALPN: &[u8] = b"pbx-cluster/1";
/// Counter of refused link handshakes, labelled `by` and `reason`.
pub const REFUSALS_METRIC: &str = "pbx_cluster_link_refusals_total";
/// How often each end of a link proves it is alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A link silent this long is dead (a few keep-alives lost in a row).
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(IDLE_TIMEOUT_MS as u64);
const IDLE_TIMEOUT_MS: u32 = 5_000;
/// Bidirectional streams a peer may have open on one link at once: one per Raft RPC in flight
/// (openraft keeps about one per peer, plus forwarded writes), one for a mesh session. More
/// wait for QUIC flow credit. With each message at most `raft::net::MESSAGE_BYTES_MAX`, this
/// bounds what one link can make a node buffer.
pub const STREAMS_PER_LINK_MAX: u32 = 32;
/// QUIC's error codes for TLS alerts: 0x100 + the alert (RFC 9001 §4.8).
const CRYPTO_ERROR_BASE: u64 = 0x100;

/// The one crypto provider of the links: ring, handed to each builder explicitly.
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate verifier for the cluster CA: {0}")]
    Verifier(#[from] VerifierBuilderError),
    #[error("QUIC configuration: {0}")]
    Quic(#[from] NoInitialCipherSuite),
    #[error("bind cluster link endpoint on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: quinn::ConnectError },
    #[error("link with {addr} refused by {by}: {reason}")]
    Refused { addr: SocketAddr, by: RefusedBy, reason: String },
    #[error("link with {addr} failed: {source}")]
    Failed { addr: SocketAddr, source: ConnectionError },
    #[error("peer {addr}: {what}")]
    PeerName { addr: SocketAddr, what: String },
}

/// Which end of a link refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBy {
    Us,
    Peer,
}

impl RefusedBy {
    fn label(self) -> &'static str {
        match self {
            RefusedBy::Us => "us",
            RefusedBy::Peer => "peer",
        }
    }
}

impl fmt::Display for RefusedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An authenticated link: the peer proved it holds the certificate of node `peer`.
#[derive(Debug)]
pub struct Link {
    pub peer: NodeName,
    pub connection: quinn::Connection,
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<rustls::RootCertStore>, LinkError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// Accepts only client certificates chained to `ca` (and requires one).
pub(crate) fn client_verifier(ca: &CertificateDer<'static>) -> Result<Arc<dyn ClientCertVerifier>, LinkError> {
    Ok(rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, Arc::new(provider())).build()?)
}

/// The DNS names of a certificate the verifier has already accepted.
pub(crate) fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    Ok(cert.valid_dns_names().map(str::to_string).collect())
}

/// The server side of a node's links: TLS 1.3, the node's certificate, client certificates
/// from the cluster CA only.
pub fn server_config(id: &NodeIdentity) -> Result<quinn::ServerConfig, LinkError> {
    server_config_for(id, ALPN)
}

/// [`server_config`] for another protocol on the same kind of link (`alpn`): the softphone
/// proxy's link (`pbx-proxy/1`) uses its own CA and this.
pub fn server_config_for(id: &NodeIdentity, alpn: &[u8]) -> Result<quinn::ServerConfig, LinkError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier(&id.ca)?)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport());
    Ok(config)
}

/// The client side: trusts the cluster CA only and presents the node's certificate. The name
/// checked is the one given to [`connect`].
pub fn client_config(id: &NodeIdentity) -> Result<quinn::ClientConfig, LinkError> {
    client_config_for(id, ALPN)
}

/// [`client_config`] for another protocol (see [`server_config_for`]).
pub fn client_config_for(id: &NodeIdentity, alpn: &[u8]) -> Result<quinn::ClientConfig, LinkError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&id.ca)?)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport());
    Ok(config)
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS))));
    transport.max_concurrent_bidi_streams(STREAMS_PER_LINK_MAX.into());
    // Nothing of ours uses unidirectional streams.
    transport.max_concurrent_uni_streams(0u32.into());
    Arc::new(transport)
}

/// A secret of this node for `purpose`, the same on every run: derived from its private key.
fn node_secret(id: &NodeIdentity, purpose: &[u8]) -> ring::digest::Digest {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(b"pbx-cluster link\0");
    digest.update(purpose);
    digest.update(b"\0");
    digest.update(id.key.secret_der());
    digest.finish()
}

/// Both keys a restarted node needs to reset its old connections (see the module
/// documentation): the stateless-reset key, and the key its connection ids are made and
/// checked with (a new random one would drop the old ids unanswered).
fn endpoint_config(id: &NodeIdentity) -> quinn::EndpointConfig {
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, node_secret(id, b"stateless reset").as_ref());
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&node_secret(id, b"connection id").as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

/// One UDP endpoint per node that both accepts links and opens them.
pub fn endpoint(id: &NodeIdentity, listen: SocketAddr) -> Result<quinn::Endpoint, LinkError> {
    let bind = |source| LinkError::Bind { addr: listen, source };
    let socket = std::net::UdpSocket::bind(listen).map_err(bind)?;
    let config = endpoint_config(id);
    let mut endpoint =
        quinn::Endpoint::new(config, Some(server_config(id)?), socket, Arc::new(quinn::TokioRuntime)).map_err(bind)?;
    endpoint.set_default_client_config(client_config(id)?);
    Ok(endpoint)
}

/// An endpoint that accepts links speaking `alpn` and opens none (the softphone proxy's side).
pub fn server_endpoint(id: &NodeIdentity, listen: SocketAddr, alpn: &[u8]) -> Result<quinn::Endpoint, LinkError> {
    let bind = |source| LinkError::Bind { addr: listen, source };
    let socket = std::net::UdpSocket::bind(listen).map_err(bind)?;
    quinn::Endpoint::new(endpoint_config(id), Some(server_config_for(id, alpn)?), socket, Arc::new(quinn::TokioRuntime))
        .map_err(bind)
}

/// An endpoint that opens links speaking `alpn` and accepts none (a PBX dialling out to its
/// softphone proxy: nothing listens on the office's side).
pub fn client_endpoint(id: &NodeIdentity, bind: SocketAddr, alpn: &[u8]) -> Result<quinn::Endpoint, LinkError> {
    let socket = std::net::UdpSocket::bind(bind).map_err(|source| LinkError::Bind { addr: bind, source })?;
    let mut endpoint = quinn::Endpoint::new(endpoint_config(id), None, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| LinkError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config_for(id, alpn)?);
    Ok(endpoint)
}

/// Waits for the next incoming link and completes its handshake. `None` once the endpoint is
/// closed. Refusals are logged and counted here.
pub async fn accept(endpoint: &quinn::Endpoint) -> Option<Result<Link, LinkError>> {
    let incoming = endpoint.accept().await?;
    let addr = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => return Some(Err(handshake_failed(addr, e))),
    };
    Some(authenticated(connection, addr))
}

/// Opens a link to node `peer` at `addr`; refused unless the certificate there is the cluster
/// CA's certificate for `peer`.
pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, peer: &NodeName) -> Result<Link, LinkError> {
    let connecting = endpoint.connect(addr, &peer.dns_name()).map_err(|source| LinkError::Connect { addr, source })?;
    let connection = connecting.await.map_err(|e| handshake_failed(addr, e))?;
    let link = authenticated(connection, addr)?;
    if &link.peer != peer {
        // rustls already checked the name; this guards the mapping from DNS name to node.
        let what = format!("is node {}, expected {peer}", link.peer);
        return Err(refuse(&link.connection, addr, what));
    }
    Ok(link)
}

/// The node name in the authenticated peer's certificate.
pub fn peer_node_name(connection: &quinn::Connection) -> Result<NodeName, String> {
    let identity = connection.peer_identity().ok_or("presented no certificate")?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| "has no X.509 identity")?;
    let leaf = chain.first().ok_or("presented an empty certificate chain")?;
    let names = dns_names(leaf)?;
    names
        .iter()
        .find_map(|dns| NodeName::from_dns_name(dns))
        .ok_or_else(|| format!("certificate names no cluster node: {names:?}"))
}

fn authenticated(connection: quinn::Connection, addr: SocketAddr) -> Result<Link, LinkError> {
    match peer_node_name(&connection) {
        Ok(peer) => Ok(Link { peer, connection }),
        Err(what) => Err(refuse(&connection, addr, what)),
    }
}

/// A peer whose certificate the CA vouches for but that names no node we expect: close it.
fn refuse(connection: &quinn::Connection, addr: SocketAddr, what: String) -> LinkError {
    connection.close(0u32.into(), b"not the expected cluster node");
    count_refusal(addr, RefusedBy::Us, "NodeName", &what);
    LinkError::PeerName { addr, what }
}

/// Logs and counts TLS refusals (an error code in QUIC's crypto range); other failures are
/// returned as they are.
fn handshake_failed(addr: SocketAddr, error: ConnectionError) -> LinkError {
    let (by, code, reason) = match &error {
        ConnectionError::TransportError(e) => (RefusedBy::Us, e.code, e.reason.clone()),
        ConnectionError::ConnectionClosed(c) => {
            (RefusedBy::Peer, c.error_code, String::from_utf8_lossy(&c.reason).into_owned())
        }
        _ => return LinkError::Failed { addr, source: error },
    };
    let Some(alert) = alert(code) else { return LinkError::Failed { addr, source: error } };
    let alert = format!("{alert:?}");
    let reason = if reason.is_empty() { alert.clone() } else { reason };
    count_refusal(addr, by, &alert, &reason);
    LinkError::Refused { addr, by, reason }
}

fn alert(code: TransportErrorCode) -> Option<AlertDescription> {
    let alert = u64::from(code).checked_sub(CRYPTO_ERROR_BASE)?;
    u8::try_from(alert).ok().map(AlertDescription::from)
}

pub(crate) fn count_refusal(addr: SocketAddr, by: RefusedBy, reason_label: &str, reason: &str) {
    tracing::warn!(remote = %addr, refused_by = by.label(), %reason, "cluster link refused");
    metrics::counter!(REFUSALS_METRIC, "by" => by.label(), "reason" => reason_label.to_string()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QUIC crypto error codes map back to their TLS alerts; other codes are not refusals.
    #[test]
    fn alerts_from_quic_codes() {
        assert_eq!(alert(TransportErrorCode::crypto(48)), Some(AlertDescription::UnknownCA));
        assert_eq!(alert(TransportErrorCode::crypto(116)), Some(AlertDescription::CertificateRequired));
        assert_eq!(alert(TransportErrorCode::PROTOCOL_VIOLATION), None);
    }
}

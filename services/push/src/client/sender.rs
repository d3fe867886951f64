//! The thin async shell around [`super::fcm`] and [`super::apns`]: HTTPS over tokio-rustls
//! (ring), HTTP/2 through hyper, one connection per origin kept and reused (APNs asks
//! providers to keep their connections open rather than connect per push), the credentials'
//! caches, and one more attempt when a service calls the credentials stale.
//!
//! Why hyper and h2 rather than ureq (already in the workspace): APNs speaks HTTP/2 only and
//! ureq speaks HTTP/1.1. Trust is explicit: the PEM certificates given ([`Trust::Pem`], the
//! gateway stand-in's in tests) or the webpki-roots CA set ([`Trust::WebPkiRoots`], for
//! Google and Apple); never the platform verifier.
//!
//! Every request is bounded: [`CONNECT_TIMEOUT_S`] to connect and shake hands, the client's
//! timeout for the whole exchange, [`RESPONSE_BYTES_MAX`] of answer. A cached connection that
//! has closed is replaced before the request goes out; a request that fails on the wire is
//! not repeated (the caller sees [`SendError`] and decides).

use super::apns::{self, ApnsKey, ApnsPush, ProviderTokenCache};
use super::fcm::{self, AccessTokenCache, FcmPush, ServiceAccount};
use super::{BuildError, CredentialError, Outcome};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time to open TCP and finish the TLS handshake.
pub const CONNECT_TIMEOUT_S: u64 = 10;
/// Time for a whole exchange (connect, send, read the answer) unless the client says other.
pub const REQUEST_TIMEOUT_S_DEFAULT: u64 = 15;
/// The largest answer read: both services answer with a few hundred bytes of JSON.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// The largest PEM file of trusted certificates read.
pub const TRUST_PEM_BYTES_MAX: usize = 1024 * 1024;
/// HTTP/2 PING interval on an idle kept connection, so a dead one is noticed before a push.
const KEEP_ALIVE_S: u64 = 60;
/// ALPN identifiers (RFC 7301; RFC 9113 §3.2 for h2).
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Whom the client trusts to serve the push services.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Mozilla's CA set (webpki-roots): Google's and Apple's real endpoints.
    WebPkiRoots,
    /// Exactly these certificates as trust anchors: the gateway stand-in's self-signed one.
    Pem(Vec<CertificateDer<'static>>),
}

impl Trust {
    /// Trust the certificates of a PEM file (e.g. the gateway's `tls-cert.pem`).
    pub fn from_pem_file(path: &Path) -> Result<Trust, SendError> {
        let bytes = super::read_bounded(path, TRUST_PEM_BYTES_MAX)?;
        Trust::from_pem(&bytes)
    }

    /// Trust the certificates of PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Trust, SendError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SendError::Tls(format!("read trusted certificates: {e}")))?;
        if certs.is_empty() {
            return Err(SendError::Tls("no CERTIFICATE in the trusted PEM".into()));
        }
        Ok(Trust::Pem(certs))
    }
}

/// Which HTTP versions a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// APNs: HTTP/2 or nothing.
    Http2Only,
    /// Google: HTTP/2 when the server offers it, else HTTP/1.1.
    Http2OrHttp1,
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connect to {0}: {1}")]
    Connect(String, String),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0} did not agree on HTTP/2 (ALPN)")]
    NotHttp2(String),
    #[error("{0}: {1}")]
    Http(String, String),
    #[error("{0}: answer larger than {RESPONSE_BYTES_MAX} bytes")]
    TooLarge(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
}

enum Connection {
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

/// An HTTPS client for the push services: kept HTTP/2 connections by origin.
pub struct HttpsClient {
    http2_only: Arc<rustls::ClientConfig>,
    http2_or_http1: Arc<rustls::ClientConfig>,
    connections: tokio::sync::Mutex<BTreeMap<String, hyper::client::conn::http2::SendRequest<Full<Bytes>>>>,
    timeout: Duration,
}

impl HttpsClient {
    /// A client trusting `trust`, giving each exchange `timeout`.
    pub fn new(trust: &Trust, timeout: Duration) -> Result<HttpsClient, SendError> {
        let mut roots = rustls::RootCertStore::empty();
        match trust {
            Trust::WebPkiRoots => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Trust::Pem(certs) => {
                for cert in certs {
                    roots.add(cert.clone()).map_err(|e| SendError::Tls(format!("trusted certificate: {e}")))?;
                }
            }
        }
        let config = |alpn: Vec<Vec<u8>>| -> Result<Arc<rustls::ClientConfig>, SendError> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| SendError::Tls(e.to_string()))?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = alpn;
            Ok(Arc::new(config))
        };
        Ok(HttpsClient {
            http2_only: config(vec![ALPN_H2.to_vec()])?,
            http2_or_http1: config(vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()])?,
            connections: tokio::sync::Mutex::new(BTreeMap::new()),
            timeout,
        })
    }

    /// Sends `request` (an absolute `https` URI) and reads the answer, within the timeout.
    pub async fn send(
        &self,
        request: http::Request<Vec<u8>>,
        protocols: Protocols,
    ) -> Result<http::Response<Vec<u8>>, SendError> {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        if uri.scheme_str() != Some("https") || host.is_empty() {
            return Err(SendError::Build(BuildError::Endpoint(uri.to_string(), "not an https URL")));
        }
        let port = uri.port_u16().unwrap_or(443);
        let origin = format!("{host}:{port}");
        tokio::time::timeout(self.timeout, self.exchange(&origin, &host, port, request, protocols))
            .await
            .map_err(|_| SendError::Timeout(origin.clone(), self.timeout))?
    }

    async fn exchange(
        &self,
        origin: &str,
        host: &str,
        port: u16,
        request: http::Request<Vec<u8>>,
        protocols: Protocols,
    ) -> Result<http::Response<Vec<u8>>, SendError> {
        let (mut parts, body) = request.into_parts();
        let body = Full::new(Bytes::from(body));
        let mut kept = self.connections.lock().await.get(origin).cloned();
        if let Some(sender) = &mut kept
            && (sender.is_closed() || sender.ready().await.is_err())
        {
            kept = None;
        }
        let connection = match kept {
            Some(sender) => Connection::Http2(sender),
            None => {
                let fresh = self.connect(origin, host, port, protocols).await?;
                let mut kept = self.connections.lock().await;
                match &fresh {
                    Connection::Http2(sender) => kept.insert(origin.to_string(), sender.clone()),
                    Connection::Http1(_) => kept.remove(origin),
                };
                fresh
            }
        };
        let answer = match connection {
            Connection::Http2(mut sender) => sender.send_request(hyper::Request::from_parts(parts, body)).await,
            Connection::Http1(mut sender) => {
                // HTTP/1.1 wants the origin form and a Host header (RFC 9112 §3.2).
                let authority = parts.uri.authority().map(|a| a.to_string()).unwrap_or_default();
                parts.uri = parts.uri.path_and_query().map_or("/", |p| p.as_str()).parse().expect("a path parses");
                parts.headers.insert(
                    http::header::HOST,
                    authority.parse().map_err(|_| SendError::Http(origin.into(), "bad host".into()))?,
                );
                sender.send_request(hyper::Request::from_parts(parts, body)).await
            }
        };
        let response = answer.map_err(|e| SendError::Http(origin.into(), e.to_string()))?;
        let (parts, body) = response.into_parts();
        let bytes = Limited::new(body, RESPONSE_BYTES_MAX).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                SendError::TooLarge(origin.into())
            } else {
                SendError::Http(origin.into(), e.to_string())
            }
        })?;
        Ok(http::Response::from_parts(parts, bytes.to_bytes().to_vec()))
    }

    async fn connect(
        &self,
        origin: &str,
        host: &str,
        port: u16,
        protocols: Protocols,
    ) -> Result<Connection, SendError> {
        let config = match protocols {
            Protocols::Http2Only => self.http2_only.clone(),
            Protocols::Http2OrHttp1 => self.http2_or_http1.clone(),
        };
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| SendError::Connect(origin.into(), e.to_string()))?;
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
        };
        let tls = tokio::time::timeout(Duration::from_secs(CONNECT_TIMEOUT_S), handshake)
            .await
            .map_err(|_| SendError::Timeout(origin.into(), Duration::from_secs(CONNECT_TIMEOUT_S)))?
            .map_err(|e| SendError::Connect(origin.into(), e.to_string()))?;
        let http2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
        let io = TokioIo::new(tls);
        let failed = |e: hyper::Error| SendError::Http(origin.into(), e.to_string());
        if http2 {
            let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(KEEP_ALIVE_S))
                .handshake(io)
                .await
                .map_err(failed)?;
            tokio::spawn(connection);
            Ok(Connection::Http2(sender))
        } else if protocols == Protocols::Http2Only {
            Err(SendError::NotHttp2(origin.into()))
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(failed)?;
            tokio::spawn(connection);
            Ok(Connection::Http1(sender))
        }
    }
}

/// Sends FCM pushes for one service account.
pub struct FcmSender {
    account: ServiceAccount,
    endpoint: String,
    http: Arc<HttpsClient>,
    /// Held across a token exchange, so concurrent sends wait for one exchange.
    token: tokio::sync::Mutex<AccessTokenCache>,
}

impl FcmSender {
    /// A sender to `endpoint` ([`fcm::FCM_ENDPOINT`], or the gateway's FCM URL).
    pub fn new(account: ServiceAccount, endpoint: &str, http: Arc<HttpsClient>) -> FcmSender {
        FcmSender {
            account,
            endpoint: endpoint.into(),
            http,
            token: tokio::sync::Mutex::new(AccessTokenCache::default()),
        }
    }

    /// The service account the sender pushes as.
    pub fn account(&self) -> &ServiceAccount {
        &self.account
    }

    /// Sends `push` at `now_unix_s`: exchanges an assertion for an access token when none is
    /// cached, and once more when FCM refuses the token.
    pub async fn send(&self, push: &FcmPush, now_unix_s: u64) -> Result<Outcome, SendError> {
        let outcome = self.attempt(push, now_unix_s).await?;
        let Outcome::Reauthenticate { .. } = outcome else { return Ok(outcome) };
        self.token.lock().await.clear();
        Ok(match self.attempt(push, now_unix_s).await? {
            Outcome::Reauthenticate { reason } => {
                Outcome::Fatal { reason: format!("a new access token was refused too: {reason}") }
            }
            outcome => outcome,
        })
    }

    async fn attempt(&self, push: &FcmPush, now_unix_s: u64) -> Result<Outcome, SendError> {
        let token = {
            let mut cache = self.token.lock().await;
            match cache.get(now_unix_s) {
                Some(token) => token.to_string(),
                None => {
                    let request = self.account.token_request(now_unix_s)?;
                    let response = self.http.send(request, Protocols::Http2OrHttp1).await?;
                    match fcm::token_outcome(&response, now_unix_s) {
                        Ok(token) => {
                            let value = token.value.clone();
                            cache.put(token);
                            value
                        }
                        Err(outcome) => return Ok(outcome),
                    }
                }
            }
        };
        let request = fcm::send_request(&self.endpoint, &self.account.project_id, &token, push)?;
        let response = self.http.send(request, Protocols::Http2OrHttp1).await?;
        Ok(fcm::send_outcome(&response))
    }
}

/// Sends APNs pushes with one signing key.
pub struct ApnsSender {
    key: ApnsKey,
    endpoint: String,
    http: Arc<HttpsClient>,
    token: Mutex<ProviderTokenCache>,
}

impl ApnsSender {
    /// A sender to `endpoint` ([`apns::APNS_PRODUCTION`], [`apns::APNS_SANDBOX`], or the
    /// gateway's APNs URL).
    pub fn new(key: ApnsKey, endpoint: &str, http: Arc<HttpsClient>) -> ApnsSender {
        ApnsSender { key, endpoint: endpoint.into(), http, token: Mutex::new(ProviderTokenCache::default()) }
    }

    /// The key the sender signs provider tokens with.
    pub fn key(&self) -> &ApnsKey {
        &self.key
    }

    /// Sends `push` at `now_unix_s`, with a new provider token once more when APNs refuses
    /// the cached one.
    pub async fn send(&self, push: &ApnsPush, now_unix_s: u64) -> Result<Outcome, SendError> {
        let outcome = self.attempt(push, now_unix_s).await?;
        let Outcome::Reauthenticate { .. } = outcome else { return Ok(outcome) };
        self.cache().clear();
        Ok(match self.attempt(push, now_unix_s).await? {
            Outcome::Reauthenticate { reason } => {
                Outcome::Fatal { reason: format!("a new provider token was refused too: {reason}") }
            }
            outcome => outcome,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ProviderTokenCache> {
        self.token.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn attempt(&self, push: &ApnsPush, now_unix_s: u64) -> Result<Outcome, SendError> {
        let token = self.cache().token(&self.key, now_unix_s)?;
        let request = apns::send_request(&self.endpoint, &token, push)?;
        let response = self.http.send(request, Protocols::Http2Only).await?;
        Ok(apns::send_outcome(&response))
    }
}

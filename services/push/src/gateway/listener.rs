//! The listeners: TCP accept, TLS (rustls, ring) with ALPN, HTTP/2 (and HTTP/1.1 on the FCM
//! listener) through hyper, bodies read up to the listener's limit, then [`super::machine::Core::handle`].
//!
//! Bounds: [`CONNECTIONS_MAX`] connections per listener (more wait in the kernel's backlog),
//! [`TLS_HANDSHAKE_TIMEOUT_S`] to finish the handshake, [`CONNECTION_S_MAX`] per connection
//! before a graceful close, [`STREAMS_MAX`] concurrent HTTP/2 streams, [`HEADER_BYTES_MAX`]
//! of headers, and the body limit of each listener (FCM 64 KiB, APNs 5 KiB, Apple's VoIP
//! limit). A body over the limit is not read further: the core answers the service's
//! "too large" error.

use super::credentials::REGISTRATIONS_FILE;
use super::machine::{Core, Listener, Request};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

/// Connections served at once per listener.
pub const CONNECTIONS_MAX: usize = 256;
/// Time a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT_S: u64 = 10;
/// Time an HTTP/1.1 client has to send a request's headers.
pub const HEADER_READ_TIMEOUT_S: u64 = 10;
/// A connection is closed gracefully after this long (clients reconnect, as they must for
/// Apple, which closes idle connections too).
pub const CONNECTION_S_MAX: u64 = 15 * 60;
/// Concurrent HTTP/2 streams per connection.
pub const STREAMS_MAX: u32 = 100;
/// Bytes of request headers (HTTP/2 header list; HTTP/1.1 read buffer).
pub const HEADER_BYTES_MAX: u32 = 16 * 1024;
/// `registrations.json` read at most this often's size.
const REGISTRATIONS_BYTES_MAX: u64 = super::config::CONFIG_BYTES_MAX as u64;
/// Pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;
/// Time given to open streams when a connection is closed for its age or at shutdown.
const GRACEFUL_CLOSE_S: u64 = 2;

impl Listener {
    /// The largest body this listener reads.
    pub fn body_bytes_max(self) -> usize {
        match self {
            Listener::Fcm => super::fcm::FCM_REQUEST_BYTES_MAX,
            Listener::Apns => super::apns::VOIP_PAYLOAD_BYTES_MAX,
        }
    }
}

/// What every connection shares.
pub struct Shared {
    pub core: Core,
    pub registrations: RegistrationsFile,
}

/// `DATA_DIR/registrations.json`, read again into the core whenever it changes (checked at
/// each request: one `stat`).
pub struct RegistrationsFile {
    path: PathBuf,
    /// (inode, modified, length) of the version loaded; `make-credentials` renames a new file
    /// into place, so the inode changes with every write.
    seen: Mutex<Option<(u64, SystemTime, u64)>>,
}

impl RegistrationsFile {
    pub fn new(data_dir: &std::path::Path) -> RegistrationsFile {
        RegistrationsFile { path: data_dir.join(REGISTRATIONS_FILE), seen: Mutex::new(None) }
    }

    /// Loads the file into `core` if it changed since the last look; a bad file is logged and
    /// the registrations loaded before are kept.
    pub fn refresh(&self, core: &Core) {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(&self.path) else { return };
        let stamp = (meta.ino(), meta.modified().unwrap_or(UNIX_EPOCH), meta.len());
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == Some(stamp) {
            return;
        }
        *seen = Some(stamp);
        if meta.len() > REGISTRATIONS_BYTES_MAX {
            tracing::warn!(path = %self.path.display(), "registrations file too large; ignored");
            return;
        }
        let parsed = std::fs::read(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<super::config::Registrations>(&b).map_err(|e| e.to_string()))
            .and_then(|r| r.registry().map_err(|e| e.to_string()));
        match parsed {
            Ok(registry) => {
                tracing::info!(
                    fcm = registry.fcm.len(),
                    apns = registry.apns.len(),
                    path = %self.path.display(),
                    "registrations loaded"
                );
                core.state().file_registry = registry;
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "registrations file unreadable; kept the last")
            }
        }
    }
}

/// Accepts and serves connections until `stop` changes (or its sender is dropped).
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    kind: Listener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = stop.changed() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        match accepted {
            Ok((tcp, _peer)) => {
                let (tls, shared, stop) = (tls.clone(), shared.clone(), stop.clone());
                connections.spawn(async move {
                    connection(tcp, tls, kind, shared, stop).await;
                    drop(permit);
                });
            }
            Err(error) => {
                tracing::warn!(%error, ?kind, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

async fn connection(
    tcp: tokio::net::TcpStream,
    tls: TlsAcceptor,
    kind: Listener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(Duration::from_secs(TLS_HANDSHAKE_TIMEOUT_S), tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%error, ?kind, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(?kind, "TLS handshake timed out");
            return;
        }
    };
    let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, kind, request).await) }
    });
    let age = tokio::time::sleep(Duration::from_secs(CONNECTION_S_MAX));
    tokio::pin!(age);
    // APNs speaks HTTP/2 only: a client that negotiated no ALPN still gets an HTTP/2 server,
    // and an HTTP/1.1 request fails its connection preface (Apple's listener does no better).
    if http2 || kind == Listener::Apns {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(STREAMS_MAX)
            .max_header_list_size(HEADER_BYTES_MAX)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .keep_alive_timeout(Duration::from_secs(20));
        let served = builder.serve_connection(io, service);
        drive(served, |c| c.graceful_shutdown(), age, &mut stop, kind, "HTTP/2").await;
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(HEADER_READ_TIMEOUT_S))
            .max_buf_size(HEADER_BYTES_MAX as usize);
        let served = builder.serve_connection(io, service);
        drive(served, |c| c.graceful_shutdown(), age, &mut stop, kind, "HTTP/1.1").await;
    }
}

/// Serves one HTTP connection (`served`, either version) until it ends, or until it is
/// [`CONNECTION_S_MAX`] old (`age`) or the gateway stops: then it is asked to close
/// (`graceful_shutdown`) and given [`GRACEFUL_CLOSE_S`] to finish.
async fn drive<C, E>(
    served: C,
    graceful_shutdown: impl FnOnce(std::pin::Pin<&mut C>),
    age: std::pin::Pin<&mut tokio::time::Sleep>,
    stop: &mut watch::Receiver<bool>,
    kind: Listener,
    version: &'static str,
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(served);
    let closing = tokio::select! {
        result = served.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, ?kind, version, "connection ended");
            }
            false
        }
        _ = age => true,
        _ = stop.changed() => true,
    };
    if closing {
        graceful_shutdown(served.as_mut());
        let _ = tokio::time::timeout(Duration::from_secs(GRACEFUL_CLOSE_S), served).await;
    }
}

/// Reads one request (body bounded) and answers it through the core.
async fn respond(shared: &Shared, kind: Listener, request: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    shared.registrations.refresh(&shared.core);
    let (parts, body) = request.into_parts();
    let limit = kind.body_bytes_max();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = if declared.is_some_and(|n| n > limit as u64) {
        None
    } else {
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Some(collected.to_bytes()),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => None,
            Err(error) => {
                // The client broke off mid-body: nobody is left to read an answer.
                tracing::debug!(%error, ?kind, "request body broke off");
                return plain(http::StatusCode::BAD_REQUEST);
            }
        }
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string));
    let request = Request {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts.headers,
        authority,
        version: format!("{:?}", parts.version),
        body,
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let answer = shared.core.handle(kind, &request, now_ms);
    let mut response = hyper::Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = answer.status;
    for (name, value) in answer.headers {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn plain(status: http::StatusCode) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

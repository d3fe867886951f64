//! Client provisioning through the proxy (the seed: "cached and deleted immediately after
//! forwarding"): the PBX hands over a softphone's configuration (server, user name, the TLS
//! pin, a one-time enrolment code; never a password), the softphone fetches it once over HTTPS
//! with `GET /provision/<code>`, and the proxy forgets it in the same step: the entry is taken
//! out of memory before the answer is written. It never touches the disk.
//!
//! Bounds: [`ENTRIES_MAX`] documents waiting; one not fetched within [`UNFETCHED_TTL`] is
//! dropped. A request is one line and headers of at most [`REQUEST_BYTES_MAX`], read within
//! [`REQUEST_TIMEOUT`]; codes are 128 random bits, so guessing is hopeless, and every miss is
//! counted (`pbx_proxy_provisioning_total{outcome="unknown"}`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Documents waiting to be fetched.
pub const ENTRIES_MAX: usize = 1_024;
/// A document not fetched within this time is forgotten unread.
pub const UNFETCHED_TTL: Duration = Duration::from_secs(24 * 3600);
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<String, (String, Instant)>>,
    /// Where softphones reach this proxy (its SIP over TLS address and certificate pin), added
    /// to every document as `"server"` when it is served.
    server: Mutex<Option<serde_json::Value>>,
}

impl Cache {
    /// Holds `document` for one fetch with `code`.
    pub fn put(&self, code: String, document: String) {
        let mut entries = self.entries.lock().expect("provisioning lock");
        let now = Instant::now();
        entries.retain(|_, (_, at)| now.duration_since(*at) < UNFETCHED_TTL);
        if entries.len() >= ENTRIES_MAX && !entries.contains_key(&code) {
            metrics::counter!("pbx_proxy_provisioning_total", "outcome" => "refused_full").increment(1);
            tracing::warn!("provisioning document refused: {ENTRIES_MAX} are waiting already");
            return;
        }
        entries.insert(code, (document, now));
        metrics::gauge!("pbx_proxy_provisioning_cached").set(entries.len() as f64);
    }

    pub fn set_server(&self, server: serde_json::Value) {
        *self.server.lock().expect("provisioning lock") = Some(server);
    }

    /// Takes the document of `code` out of the cache: a second fetch finds nothing.
    pub fn take(&self, code: &str) -> Option<String> {
        let mut entries = self.entries.lock().expect("provisioning lock");
        let taken = entries.remove(code).filter(|(_, at)| at.elapsed() < UNFETCHED_TTL).map(|(d, _)| d);
        metrics::gauge!("pbx_proxy_provisioning_cached").set(entries.len() as f64);
        drop(entries);
        let server = self.server.lock().expect("provisioning lock").clone();
        taken.map(|document| match (serde_json::from_str::<serde_json::Value>(&document), server) {
            (Ok(serde_json::Value::Object(mut fields)), Some(server)) => {
                fields.insert("server".into(), server);
                serde_json::Value::Object(fields).to_string()
            }
            _ => document,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("provisioning lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Answers one HTTP/1.1 request on `stream` (already TLS): `GET /provision/<code>`.
pub async fn serve_one<S>(stream: S, cache: &Cache)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    serve_get(stream, |path| match path.strip_prefix("/provision/") {
        Some(code) if !code.is_empty() && code.bytes().all(|b| b.is_ascii_alphanumeric()) => match cache.take(code) {
            Some(document) => {
                metrics::counter!("pbx_proxy_provisioning_total", "outcome" => "served").increment(1);
                tracing::info!("provisioning document served and forgotten");
                ("200 OK", "application/json", document)
            }
            None => {
                metrics::counter!("pbx_proxy_provisioning_total", "outcome" => "unknown").increment(1);
                ("404 Not Found", "text/plain", "unknown or already used enrolment code\n".into())
            }
        },
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    })
    .await
}

/// Reads one HTTP/1.1 request head (bounded in size and time) and answers a GET with what
/// `answer` makes of its path (status, content type, body); anything else gets 405.
pub async fn serve_get<S>(mut stream: S, answer: impl FnOnce(&str) -> (&'static str, &'static str, String))
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() + n > REQUEST_BYTES_MAX {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    })
    .await;
    if !matches!(read, Ok(Some(()))) {
        return;
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let answer = match method {
        "GET" => {
            let (status, content_type, body) = answer(path);
            response(status, content_type, &body)
        }
        _ => response("405 Method Not Allowed", "text/plain", "only GET\n"),
    };
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_document_is_served_once_and_forgotten_in_the_same_step() {
        let cache = Cache::default();
        cache.set_server(serde_json::json!({ "sip_tls": "203.0.113.5:5061" }));
        cache.put("ABC123".into(), r#"{"user":"201"}"#.into());
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(b"GET /provision/ABC123 HTTP/1.1\r\nHost: proxy\r\n\r\n").await.unwrap();
        serve_one(server, &cache).await;
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with(r#"{"server":{"sip_tls":"203.0.113.5:5061"},"user":"201"}"#), "{answer}");
        assert!(cache.is_empty(), "forgotten as it was served");

        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(b"GET /provision/ABC123 HTTP/1.1\r\n\r\n").await.unwrap();
        serve_one(server, &cache).await;
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = Cache::default();
        for i in 0..ENTRIES_MAX + 5 {
            cache.put(format!("c{i}"), "{}".into());
        }
        assert_eq!(cache.len(), ENTRIES_MAX);
    }
}

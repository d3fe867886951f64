//! SIP over TCP and TLS connections served within bounds, shared by the node's SIP ports
//! (`pbx_node::sip::transport`) and the softphone proxy's public edge (`pbx-proxy-service`'s
//! `edge`), so a stranger meets the same limits at either:
//!
//! - [`Slots`]: at most a cap of connections in all and [`CONNECTIONS_PER_SOURCE_MAX`] per
//!   source, a source being an IPv4 address or an IPv6 /64 ([`source`]: one host owns a whole
//!   /64, and would otherwise open connections from as many addresses as it likes);
//! - [`tls_handshake`]: a TLS connection must start with a handshake record and finish the
//!   handshake within [`TLS_HANDSHAKE`];
//! - [`read_messages`]: Content-Length framing (`pbx_actors::sip::message::frame_stream`), a
//!   first message within [`FIRST_MESSAGE`], a message begun complete within
//!   [`PARTIAL_MESSAGE`], an idle connection closed after [`IDLE`], CRLF keep-alives answered
//!   (RFC 5626 §4.4.1);
//! - [`spawn_writer`]: what goes back, each message flushed whole, at most [`SEND_QUEUE_MAX`]
//!   queued by the caller's channel.
//!
//! What a message means, and what a caller counts, is the caller's business.

use bytes::{Bytes, BytesMut};
use pbx_actors::sip::message::{self, Frame};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Connections at most, whatever the open-file limit allows (see [`connections_cap`]).
pub const CONNECTIONS_MAX: usize = 4_096;
/// Connections one source may hold: a whole office behind one NAT address fits.
pub const CONNECTIONS_PER_SOURCE_MAX: usize = 128;
/// The prefix an IPv6 source is counted by.
pub const SOURCE_V6_BITS: u32 = 64;
/// A connection must send its first complete message within this.
pub const FIRST_MESSAGE: Duration = Duration::from_secs(30);
/// Messages queued toward one connection at most.
pub const SEND_QUEUE_MAX: usize = 256;
/// A connection that sends nothing this long is closed.
pub const IDLE: Duration = Duration::from_secs(900);
/// A message begun must be complete within this (a slow sender holds a buffer).
pub const PARTIAL_MESSAGE: Duration = Duration::from_secs(20);
/// A TLS handshake must be over within this.
pub const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 22;

const _: () = assert!(PARTIAL_MESSAGE.as_secs() < IDLE.as_secs());
const _: () = assert!(TLS_HANDSHAKE.as_secs() < FIRST_MESSAGE.as_secs());
const _: () = assert!(FIRST_MESSAGE.as_secs() < IDLE.as_secs());
const _: () = assert!(CONNECTIONS_PER_SOURCE_MAX < CONNECTIONS_MAX);

/// The connection cap for a process allowed `open_files` descriptors: half of them, at most
/// [`CONNECTIONS_MAX`] (the rest is for RTP sockets, files and the like).
pub fn connections_cap(open_files: u64) -> usize {
    usize::try_from(open_files / 2).unwrap_or(usize::MAX).min(CONNECTIONS_MAX)
}

/// What a connection counts against in [`CONNECTIONS_PER_SOURCE_MAX`]: its IPv4 address, or
/// its IPv6 address's /64 (an IPv4-mapped address counts as IPv4).
pub fn source(peer: SocketAddr) -> IpAddr {
    match peer.ip().to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !(u128::MAX >> SOURCE_V6_BITS))),
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Global,
    PerSource,
}

impl Refused {
    /// The metric label: `global`, `per_source`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Global => "global",
            Refused::PerSource => "per_source",
        }
    }
}

/// Open connections, in all and per source; both bounded. Clones share the count.
#[derive(Clone)]
pub struct Slots(Arc<Mutex<Table>>);

struct Table {
    cap: usize,
    open: usize,
    /// Never more keys than open connections; a source leaves when its last one closes.
    per_source: HashMap<IpAddr, usize>,
}

/// One open connection's place in its [`Slots`]: given back when dropped.
pub struct Slot {
    slots: Slots,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.slots.0.lock().unwrap_or_else(PoisonError::into_inner);
        table.open = table.open.saturating_sub(1);
        if let Some(n) = table.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                table.per_source.remove(&self.source);
            }
        }
    }
}

impl Slots {
    /// At most `cap` connections in all (and [`CONNECTIONS_PER_SOURCE_MAX`] per source).
    pub fn with_cap(cap: usize) -> Slots {
        Slots(Arc::new(Mutex::new(Table { cap, open: 0, per_source: HashMap::new() })))
    }

    /// A place for a connection from `peer`, or why there is none.
    pub fn take(&self, peer: SocketAddr) -> Result<Slot, Refused> {
        let source = source(peer);
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if table.open >= table.cap {
            return Err(Refused::Global);
        }
        let from_source = table.per_source.entry(source).or_insert(0);
        if *from_source >= CONNECTIONS_PER_SOURCE_MAX {
            return Err(Refused::PerSource);
        }
        *from_source += 1;
        table.open += 1;
        Ok(Slot { slots: self.clone(), source })
    }

    /// Connections open now, and sources holding one (for the tests).
    #[cfg(test)]
    fn open(&self) -> (usize, usize) {
        let table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (table.open, table.per_source.len())
    }
}

/// The TLS handshake of a connection just accepted, bounded by [`TLS_HANDSHAKE`] as a whole;
/// `None` when it is not TLS, stalls or fails: counted as `refused_metric{reason}` (`not_tls`,
/// `timeout`, `handshake`) and logged. A peer that closes before its first byte is not counted.
pub async fn tls_handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    refused_metric: &'static str,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let refuse = |reason: &'static str, detail: String| {
        metrics::counter!(refused_metric, "reason" => reason).increment(1);
        tracing::info!(%peer, reason, %detail, "TLS connection refused");
        None
    };
    let deadline = tokio::time::Instant::now() + TLS_HANDSHAKE;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return refuse("timeout", "no byte".into()),
        Ok(Ok(0)) | Ok(Err(_)) => return None,
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE_RECORD => {
            return refuse("not_tls", format!("first byte {:#04x}, not a TLS handshake", first[0]));
        }
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Err(_) => refuse("timeout", format!("handshake not finished in {} s", TLS_HANDSHAKE.as_secs())),
        Ok(Err(e)) => refuse("handshake", e.to_string()),
        Ok(Ok(stream)) => Some(stream),
    }
}

/// Writes what comes on `outbound` to `writer`, each message flushed whole (TLS buffers
/// records), until the channel closes or a write fails; then shuts the writer down.
pub fn spawn_writer<W>(mut writer: W, mut outbound: mpsc::Receiver<Bytes>) -> tokio::task::JoinHandle<()>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(bytes) = outbound.recv().await {
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    })
}

/// Why [`read_messages`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The peer closed, or reading failed.
    Closed,
    /// No complete message within [`FIRST_MESSAGE`] of the start.
    Silent,
    /// A message begun was not complete within [`PARTIAL_MESSAGE`].
    Unfinished,
    /// Nothing within [`IDLE`].
    Idle,
    /// The stream cannot be framed; `head` is what was read of the broken message, `code` the
    /// answer RFC 3261 asks for (0: none, close only).
    Broken { code: u16, reason: String, head: Bytes },
    /// `stop` fired, or the message callback said to stop.
    Stopped,
}

/// Reads SIP messages from `reader` until it ends (see [`Ended`]): each complete message goes
/// to `message` (which returns `false` to stop reading); a CRLF keep-alive is answered on
/// `pong` with a single CRLF (RFC 5626 §4.4.1); `stop` ends the reading when it completes.
pub async fn read_messages<R>(
    reader: &mut R,
    pong: &mpsc::Sender<Bytes>,
    stop: impl std::future::Future<Output = ()>,
    mut message: impl FnMut(Bytes) -> bool,
) -> Ended
where
    R: AsyncRead + Unpin,
{
    tokio::pin!(stop);
    let mut buf = BytesMut::with_capacity(4096);
    // Set when a message starts arriving, cleared when the buffer empties.
    let mut partial: Option<tokio::time::Instant> = None;
    // Until the first complete message: the connection must say something soon.
    let mut first = Some(tokio::time::Instant::now() + FIRST_MESSAGE);
    loop {
        let idle = tokio::time::Instant::now() + IDLE;
        let deadline = [partial, first].into_iter().flatten().fold(idle, std::cmp::min);
        tokio::select! {
            read = tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)) => match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Ended::Closed,
                Err(_) if first.is_some_and(|d| d <= deadline) => return Ended::Silent,
                Err(_) if partial.is_some() => return Ended::Unfinished,
                Err(_) => return Ended::Idle,
                Ok(Ok(_)) => {}
            },
            () = &mut stop => return Ended::Stopped,
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
                    let _ = pong.try_send(Bytes::from_static(b"\r\n"));
                }
                Frame::Message { len } => {
                    let bytes = buf.split_to(len).freeze();
                    partial = None;
                    first = None;
                    if !message(bytes) {
                        return Ended::Stopped;
                    }
                }
                Frame::Broken { code, reason, len } => {
                    return Ended::Broken { code, reason, head: Bytes::copy_from_slice(&buf[..len.min(buf.len())]) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One source may hold `CONNECTIONS_PER_SOURCE_MAX` connections and no more, while another
    /// still gets one; an IPv6 /64 is one source; the global cap holds across sources; a slot
    /// dropped frees its place and a source with none left is forgotten.
    #[test]
    fn slots_cap_per_source_and_in_all() {
        let slots = Slots::with_cap(CONNECTIONS_PER_SOURCE_MAX + 2);
        let a: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let mut held: Vec<Slot> = (0..CONNECTIONS_PER_SOURCE_MAX).map(|_| slots.take(a).unwrap()).collect();
        assert_eq!(slots.take(a).err(), Some(Refused::PerSource));
        let b = slots.take("192.0.2.2:5060".parse().unwrap()).unwrap();
        // Another address in the same /64 is the same source; one in another /64 is not.
        let v6 = |host: &str| -> SocketAddr { format!("[{host}]:5060").parse().unwrap() };
        let c = slots.take(v6("2001:db8:0:1::1")).unwrap();
        assert_eq!(slots.take(v6("2001:db8:0:2::1")).err(), Some(Refused::Global));
        assert_eq!(slots.open(), (CONNECTIONS_PER_SOURCE_MAX + 2, 3));
        drop(c);
        let mut same_64: Vec<Slot> = Vec::new();
        for i in 0..CONNECTIONS_PER_SOURCE_MAX {
            held.pop();
            same_64.push(slots.take(v6(&format!("2001:db8:0:1::{:x}", i + 2))).unwrap());
        }
        held.pop();
        assert_eq!(slots.take(v6("2001:db8:0:1:ffff::1")).err(), Some(Refused::PerSource), "a /64 is one source");
        drop((held, b, same_64));
        assert_eq!(slots.open(), (0, 0));
        assert_eq!(source("[::ffff:192.0.2.9]:1".parse().unwrap()), "192.0.2.9".parse::<IpAddr>().unwrap());
        assert_eq!(connections_cap(1_024), 512);
        assert_eq!(connections_cap(1 << 20), CONNECTIONS_MAX);
    }

    /// Messages are framed and handed on, a keep-alive is answered, a stream that cannot be
    /// framed ends with what was read of it, and the callback can stop the reading.
    #[tokio::test]
    async fn messages_keep_alives_and_broken_streams() {
        let options = "OPTIONS sip:a SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        let mut input = format!("\r\n\r\n{options}{options}").into_bytes();
        input.extend_from_slice(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n");
        let (pong, mut pongs) = mpsc::channel(4);
        let mut got = Vec::new();
        let ended = read_messages(&mut input.as_slice(), &pong, std::future::pending(), |m| {
            got.push(m);
            true
        })
        .await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], options.as_bytes());
        assert_eq!(pongs.try_recv().unwrap(), &b"\r\n"[..]);
        assert!(matches!(&ended, Ended::Broken { code: 400, head, .. } if head.starts_with(b"OPTIONS")), "{ended:?}");
        let two = format!("{options}{options}").into_bytes();
        let mut count = 0;
        let ended = read_messages(&mut two.as_slice(), &pong, std::future::pending(), |_| {
            count += 1;
            false
        })
        .await;
        assert_eq!((ended, count), (Ended::Stopped, 1));
    }

    /// A connection that says nothing is closed at `FIRST_MESSAGE`; one that stops half-way
    /// through a message at `PARTIAL_MESSAGE` (virtual time).
    #[tokio::test(start_paused = true)]
    async fn silent_and_unfinished_connections_end() {
        let (pong, _pongs) = mpsc::channel(4);
        let (mut quiet, _keep) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        assert_eq!(read_messages(&mut quiet, &pong, std::future::pending(), |_| true).await, Ended::Silent);
        assert_eq!(started.elapsed(), FIRST_MESSAGE);
        let (mut half, mut peer) = tokio::io::duplex(64);
        peer.write_all(b"OPTIONS sip:a SIP/2.0\r\n").await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(read_messages(&mut half, &pong, std::future::pending(), |_| true).await, Ended::Unfinished);
        assert_eq!(started.elapsed(), PARTIAL_MESSAGE);
    }
}

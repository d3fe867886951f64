//! The media session's shell: leases two RTP/RTCP port pairs, binds their four UDP sockets,
//! and runs one task per call that reads all four and relays each datagram in place through
//! one [`Relay`], sends what it forwards, reports inactivity through a callback, and wakes
//! itself for the relay's next timeout and the metrics.
//!
//! - **Ports.** [`MediaSession::start`] leases pairs from the shared [`PortPool`] (drawn at
//!   random) and binds them before the task exists, so the caller learns the local addresses
//!   (for its SDP) from the start itself. A pair that will not bind (another program holds a
//!   port) goes back to the pool, which holds it back from the next draws, and another is
//!   drawn; after [`BIND_ATTEMPTS_MAX`] pairs tried the start fails with
//!   [`MediaError::NoPorts`]. The lease belongs to the task: the sockets close and the ports
//!   return to the pool when the task ends however it ends (the [`MediaSession`] dropped, or a
//!   panic).
//! - **One task, no mailbox.** The task waits on its four sockets and a control channel
//!   (`Configure`, the test hook) at once, and handles each datagram where it was read: it is
//!   received into the task's one buffer, rewritten there by [`Relay::relay_in_place`] and sent
//!   from it (no copy, no allocation, no message per packet). What arrives faster than the task
//!   reads waits in the socket's kernel buffer and is dropped there when that is full, so a
//!   flood toward one call cannot grow pbx's memory. Sends use `try_send_to`: a full socket
//!   buffer drops the packet (RTP tolerates loss; waiting would delay every later packet).
//!   The session's owner (the call actor) holds a [`MediaSession`]; dropping it aborts the task.
//! - **Counters.** The relay's [`SideStats`] are published after every datagram into counters
//!   the owner reads without asking the task ([`MediaSession::stats`]: the CDR and the API's
//!   call list).
//! - **Failure.** A task that panics reports [`MediaEvent::Failed`] through the callback as it
//!   unwinds (its owner ends the call), and its ports return as for any other end.
//! - **Metrics**, added up in the task and handed to the registry every
//!   [`METRICS_FLUSH_MS`] and when the task ends: gauge `pbx_rtp_ports_in_use` (UDP ports,
//!   RTP and RTCP, leased node-wide), counters `pbx_rtp_packets_total{direction="in"|"out"}`,
//!   `pbx_rtp_dropped_total` (oversized, relay and send drops alike) and
//!   `pbx_rtp_foreign_packets_total` (of those, RTP and RTCP from an address that is not the
//!   side's source: see the relay's module doc). The first foreign packet of each side is
//!   logged (without its address: logs keep no personal data beyond the call's).

use super::pool::PortPool;
use super::relay::{PacketKind, PeerMedia, Relay, RelayConfig, RelayInput, RelayOutput, Side, SideStats};
use crate::time::{Clock, Timestamp};
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Port pairs tried (allocated and bound) for one session before giving up.
pub const BIND_ATTEMPTS_MAX: usize = 8;
/// Control messages (SDP changes) waiting for the task: a call sends one per offer/answer,
/// and the task takes them between datagrams, so this is never reached by a working call.
pub const CONTROL_QUEUE_MAX: usize = 16;
/// How often the task hands its packet counts to the metrics registry: often enough that a
/// reading of `pbx_rtp_packets_total` over seconds is exact to a few percent, rarely enough
/// that it costs nothing next to the packets (50 per second per side).
pub const METRICS_FLUSH_MS: u64 = 500;
/// Largest datagram relayed; G.711 at 20 ms is 172 bytes, and nothing RTP carries over a
/// 1,500-byte Ethernet path is larger. Bigger datagrams are dropped rather than truncated.
const DATAGRAM_BYTES_MAX: usize = 2_048;
/// Pause after a receive error, so a socket that keeps failing cannot spin a core.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(10);

pub struct MediaArgs {
    pub pool: Arc<Mutex<PortPool>>,
    /// The local address the four sockets bind to.
    pub bind: IpAddr,
    pub clock: Arc<dyn Clock>,
    pub config: RelayConfig,
    pub seed: u64,
    /// Called from the session's task for each event; must not block.
    pub events: Arc<dyn Fn(MediaEvent) + Send + Sync>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// The side's phone has sent no RTP for the configured time (see [`RelayOutput::Inactive`]).
    Inactive { side: Side },
    /// The session's task panicked: no more media flows (its ports are returned).
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(
        "no RTP port pair free to bind on {bind}: tried {tried} pair(s), {in_use} of {capacity} pairs leased (widen the RTP port range or free the ports)"
    )]
    NoPorts { bind: IpAddr, tried: usize, in_use: usize, capacity: usize },
}

/// What the owner sends the task.
enum Command {
    Configure {
        side: Side,
        peer: PeerMedia,
    },
    /// The node's test hook (`PBX_TEST_HOOKS=1`): the task panics.
    Panic,
}

/// A running media session: dropping it ends the task, which closes the sockets and gives
/// the ports back.
pub struct MediaSession {
    control: mpsc::Sender<Command>,
    stats: Arc<SharedStats>,
    local: [SocketAddr; 2],
    task: tokio::task::JoinHandle<()>,
}

impl MediaSession {
    /// Leases two port pairs, binds them on `args.bind` and starts the session's task.
    pub async fn start(args: MediaArgs) -> Result<MediaSession, MediaError> {
        let (sockets, lease) = bind_pairs(&args.pool, args.bind).await?;
        let local = [0, 1].map(|i| SocketAddr::new(args.bind, lease.ports[i]));
        let (control, commands) = mpsc::channel(CONTROL_QUEUE_MAX);
        let stats = Arc::new(SharedStats::default());
        let now = args.clock.now();
        let reader = Reader {
            relay: Relay::new(args.config, args.seed, now),
            clock: args.clock,
            events: args.events,
            stats: stats.clone(),
            commands,
            wake: Box::pin(tokio::time::sleep(Duration::ZERO)),
            wake_at: now,
            next_flush: now,
            next_socket: 0,
            counts: Counts::default(),
            sockets,
            _lease: lease,
        };
        let task = tokio::spawn(reader.run());
        Ok(MediaSession { control, stats, local, task })
    }

    /// The local RTP addresses of side A and side B (RTCP is the next port up).
    pub fn local(&self) -> [SocketAddr; 2] {
        self.local
    }

    /// The side's SDP (first offer/answer, or a re-INVITE).
    pub fn configure(&self, side: Side, peer: PeerMedia) {
        if self.control.try_send(Command::Configure { side, peer }).is_err() {
            tracing::warn!(?side, "media session not taking its SDP (ended, or its queue is full)");
        }
    }

    /// Statistics of side A and side B, as of the last datagram the task handled.
    pub fn stats(&self) -> [SideStats; 2] {
        [self.stats.load(Side::A), self.stats.load(Side::B)]
    }

    /// Test hook: the session's task panics.
    pub fn panic(&self) {
        let _ = self.control.try_send(Command::Panic);
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// [`SideStats`] of both sides, written by the task and read by the owner. Each field is read
/// on its own, so a reading taken mid-update may mix two consecutive datagrams' counts.
#[derive(Default)]
struct SharedStats([[AtomicU64; 9]; 2]);

impl SharedStats {
    fn store(&self, side: Side, s: SideStats) {
        let values =
            [s.packets_in, s.bytes_in, s.packets_out, s.bytes_out, s.lost, s.jitter_us, s.dropped, s.foreign, s.events];
        for (cell, value) in self.0[side.index()].iter().zip(values) {
            cell.store(value, Ordering::Relaxed);
        }
    }

    fn load(&self, side: Side) -> SideStats {
        let [packets_in, bytes_in, packets_out, bytes_out, lost, jitter_us, dropped, foreign, events] =
            self.0[side.index()].each_ref().map(|cell| cell.load(Ordering::Relaxed));
        SideStats { packets_in, bytes_in, packets_out, bytes_out, lost, jitter_us, dropped, foreign, events }
    }
}

fn lock(pool: &Mutex<PortPool>) -> std::sync::MutexGuard<'_, PortPool> {
    // A panic elsewhere cannot leave the pool half-updated: each method is one short step.
    pool.lock().unwrap_or_else(PoisonError::into_inner)
}

fn record_in_use(pool: &PortPool) {
    metrics::gauge!("pbx_rtp_ports_in_use").set((pool.in_use() * 2) as f64);
}

/// Leased port pairs (two once the session runs); dropping it gives them back.
struct PortLease {
    pool: Arc<Mutex<PortPool>>,
    ports: Vec<u16>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut pool = lock(&self.pool);
        for &port in &self.ports {
            pool.release(port);
        }
        record_in_use(&pool);
    }
}

/// The four sockets, in the order of [`socket_index`]: A RTP, A RTCP, B RTP, B RTCP.
type Sockets = [UdpSocket; 4];

fn socket_index(side: Side, kind: PacketKind) -> usize {
    side.index() * 2
        + match kind {
            PacketKind::Rtp => 0,
            PacketKind::Rtcp => 1,
        }
}

fn socket_of(index: usize) -> (Side, PacketKind) {
    let side = if index < 2 { Side::A } else { Side::B };
    (side, if index.is_multiple_of(2) { PacketKind::Rtp } else { PacketKind::Rtcp })
}

async fn bind_pairs(pool: &Arc<Mutex<PortPool>>, bind: IpAddr) -> Result<(Sockets, PortLease), MediaError> {
    // Each port is in the lease from allocation on, so a start cancelled mid-bind leaks none.
    let mut lease = PortLease { pool: pool.clone(), ports: Vec::with_capacity(2) };
    let mut pairs = Vec::with_capacity(2);
    let mut tried = 0;
    while pairs.len() < 2 && tried < BIND_ATTEMPTS_MAX {
        let Some(port) = lock(pool).allocate() else { break };
        tried += 1;
        lease.ports.push(port);
        match bind_pair(bind, port).await {
            Ok(pair) => pairs.push(pair),
            Err(e) => {
                tracing::warn!(%bind, port, error = %e, "RTP port pair will not bind; drawing another");
                lease.ports.pop();
                lock(pool).release(port);
            }
        }
    }
    record_in_use(&lock(pool));
    if pairs.len() == 2 {
        let mut sockets = pairs.into_iter().flatten();
        let mut next = || sockets.next().expect("two pairs, four sockets");
        Ok(([next(), next(), next(), next()], lease))
    } else {
        drop(pairs);
        drop(lease);
        let pool = lock(pool);
        Err(MediaError::NoPorts { bind, tried, in_use: pool.in_use(), capacity: pool.capacity() })
    }
}

async fn bind_pair(bind: IpAddr, port: u16) -> std::io::Result<[UdpSocket; 2]> {
    let rtp = UdpSocket::bind((bind, port)).await?;
    let rtcp = UdpSocket::bind((bind, port + 1)).await?;
    Ok([rtp, rtcp])
}

/// What the task counted and has not handed to the metrics registry yet, and what of the
/// relay's counters it has.
#[derive(Default)]
struct Counts {
    packets_in: u64,
    packets_out: u64,
    /// Oversized datagrams and failed sends (the relay's own drops are in its stats).
    dropped: u64,
    /// The relay's drop count already reported.
    relay_dropped_reported: u64,
    /// The relay's foreign count per side already reported.
    foreign_reported: [u64; 2],
}

impl Counts {
    fn flush(&mut self, relay: &Relay) {
        let stats = [relay.stats(Side::A), relay.stats(Side::B)];
        let relay_dropped = stats[0].dropped + stats[1].dropped;
        let dropped = self.dropped + (relay_dropped - self.relay_dropped_reported);
        self.relay_dropped_reported = relay_dropped;
        if self.packets_in > 0 {
            metrics::counter!("pbx_rtp_packets_total", "direction" => "in").increment(self.packets_in);
        }
        if self.packets_out > 0 {
            metrics::counter!("pbx_rtp_packets_total", "direction" => "out").increment(self.packets_out);
        }
        if dropped > 0 {
            metrics::counter!("pbx_rtp_dropped_total").increment(dropped);
        }
        for side in [Side::A, Side::B] {
            let foreign = stats[side.index()].foreign;
            let reported = &mut self.foreign_reported[side.index()];
            if foreign > *reported {
                if *reported == 0 {
                    tracing::info!(
                        ?side,
                        "RTP or RTCP from an address that is not the phone's dropped (first of this call)"
                    );
                }
                metrics::counter!("pbx_rtp_foreign_packets_total").increment(foreign - *reported);
                *reported = foreign;
            }
        }
        (self.packets_in, self.packets_out, self.dropped) = (0, 0, 0);
    }
}

/// What woke the task.
enum Wakeup {
    /// A datagram of `len` bytes from `source` is in the buffer, read from socket `index`.
    Datagram {
        index: usize,
        len: usize,
        source: SocketAddr,
    },
    ReceiveFailed {
        index: usize,
        error: std::io::Error,
    },
    Command(Command),
    /// The owner is gone (the task is being aborted too).
    Closed,
    Timer,
}

/// The session's task: its state, moved into the task's future.
struct Reader {
    relay: Relay,
    clock: Arc<dyn Clock>,
    events: Arc<dyn Fn(MediaEvent) + Send + Sync>,
    stats: Arc<SharedStats>,
    commands: mpsc::Receiver<Command>,
    wake: Pin<Box<tokio::time::Sleep>>,
    /// When `wake` fires.
    wake_at: Timestamp,
    next_flush: Timestamp,
    /// The socket polled first next time, so that one busy socket cannot starve the others.
    next_socket: usize,
    counts: Counts,
    // Last, so they drop last and in this order: sockets closed, then ports released.
    sockets: Sockets,
    _lease: PortLease,
}

impl Drop for Reader {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.events)(MediaEvent::Failed);
        }
        self.counts.flush(&self.relay);
    }
}

impl Reader {
    async fn run(mut self) {
        // One byte more than the largest datagram kept, to tell a full one from a truncated one.
        let mut buf = vec![0u8; DATAGRAM_BYTES_MAX + 1];
        self.timer(self.clock.now());
        loop {
            match poll_fn(|cx| self.poll_wakeup(cx, &mut buf)).await {
                Wakeup::Datagram { index, len, source } => self.datagram(index, source, &mut buf[..len]),
                Wakeup::ReceiveFailed { index, error } => {
                    let (side, kind) = socket_of(index);
                    tracing::debug!(?side, ?kind, %error, "RTP receive failed");
                    tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
                }
                Wakeup::Command(Command::Configure { side, peer }) => {
                    let now = self.clock.now();
                    self.relay.handle(now, RelayInput::Configure { side, peer });
                    self.drain();
                    self.arm(now);
                }
                Wakeup::Command(Command::Panic) => panic!("media: panic injected by the test hook"),
                Wakeup::Closed => return,
                Wakeup::Timer => self.timer(self.clock.now()),
            }
        }
    }

    fn poll_wakeup(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<Wakeup> {
        for i in 0..4 {
            let index = (self.next_socket + i) % 4;
            let mut read = ReadBuf::new(buf);
            match self.sockets[index].poll_recv_from(cx, &mut read) {
                Poll::Ready(Ok(source)) => {
                    self.next_socket = (index + 1) % 4;
                    return Poll::Ready(Wakeup::Datagram { index, len: read.filled().len(), source });
                }
                Poll::Ready(Err(error)) => {
                    self.next_socket = (index + 1) % 4;
                    return Poll::Ready(Wakeup::ReceiveFailed { index, error });
                }
                Poll::Pending => {}
            }
        }
        if let Poll::Ready(command) = self.commands.poll_recv(cx) {
            return Poll::Ready(command.map_or(Wakeup::Closed, Wakeup::Command));
        }
        if self.wake.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wakeup::Timer);
        }
        Poll::Pending
    }

    fn datagram(&mut self, index: usize, source: SocketAddr, packet: &mut [u8]) {
        self.counts.packets_in += 1;
        if packet.len() > DATAGRAM_BYTES_MAX {
            self.counts.dropped += 1;
            return;
        }
        let (side, kind) = socket_of(index);
        let now = self.clock.now();
        if let Some(forward) = self.relay.relay_in_place(now, side, kind, source, packet) {
            match self.sockets[socket_index(forward.side, forward.kind)].try_send_to(packet, forward.destination) {
                Ok(_) => self.counts.packets_out += 1,
                Err(e) => {
                    self.counts.dropped += 1;
                    tracing::debug!(destination = %forward.destination, error = %e, "RTP send failed; packet dropped");
                }
            }
            if forward.side != side {
                self.stats.store(forward.side, self.relay.stats(forward.side));
            }
        }
        self.stats.store(side, self.relay.stats(side));
        // A packet only moves the inactivity time later, except after a reported silence,
        // when it sets one again: that is the only case the timer must come earlier.
        if self.relay.poll_timeout().is_some_and(|at| at < self.wake_at) {
            self.arm(now);
        }
    }

    /// The timer fired (or the task starts): the relay's timeout, the metrics, the next wake.
    fn timer(&mut self, now: Timestamp) {
        self.relay.handle(now, RelayInput::Timeout);
        self.drain();
        if now >= self.next_flush {
            self.counts.flush(&self.relay);
            self.next_flush = now + Duration::from_millis(METRICS_FLUSH_MS);
        }
        self.arm(now);
    }

    /// Arms the timer for the earlier of the relay's timeout and the next metrics flush.
    fn arm(&mut self, now: Timestamp) {
        let at = self.relay.poll_timeout().map_or(self.next_flush, |t| t.min(self.next_flush));
        let wait = Duration::from_micros(at.as_micros().saturating_sub(now.as_micros()));
        self.wake_at = at;
        self.wake.as_mut().reset(tokio::time::Instant::now() + wait);
    }

    fn drain(&mut self) {
        while let Some(output) = self.relay.poll_output() {
            match output {
                // Configure and Timeout send nothing; packets are relayed in place.
                RelayOutput::Transmit { .. } => {}
                RelayOutput::Inactive { side } => (self.events)(MediaEvent::Inactive { side }),
            }
        }
    }
}

#[cfg(test)]
mod tests;

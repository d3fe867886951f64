//! The media session's ractor shell: leases two RTP/RTCP port pairs, binds their four UDP
//! sockets, feeds what they receive to one [`Relay`], sends what it transmits, reports
//! inactivity through a callback, and keeps one timer armed for the relay's next wake-up.
//!
//! - **Ports.** [`spawn_linked`] leases pairs from the shared [`PortPool`] (drawn at random)
//!   and binds them before the actor exists, so the caller learns the local addresses (for
//!   its SDP) from the spawn itself. A pair that will not bind (another program holds a port)
//!   goes back to the pool, which holds it back from the next draws, and another is drawn;
//!   after [`BIND_ATTEMPTS_MAX`] pairs tried the spawn fails with [`MediaError::NoPorts`]. The
//!   lease is part of the actor's state: the ports return to the pool when the session ends
//!   however it ends (stop, kill, panic), and the receive tasks are aborted with it.
//! - **Load.** One receive task per socket casts datagrams to the actor. At most
//!   [`SESSION_BACKLOG_MAX`] may wait in the mailbox; beyond that the tasks drop and count
//!   them, so a flood toward one call cannot grow memory without bound. Sends use
//!   `try_send_to`: a full socket buffer drops the packet (RTP tolerates loss; waiting would
//!   delay every later packet).
//! - **Metrics.** Gauge `pbx_rtp_ports_in_use` (UDP ports, RTP and RTCP, leased node-wide),
//!   counters `pbx_rtp_packets_total{direction="in"|"out"}`, `pbx_rtp_dropped_total`
//!   (backlog, relay and send drops alike) and `pbx_rtp_foreign_packets_total` (of those, RTP
//!   and RTCP from an address that is not the side's source: see the relay's module doc).
//!   The first foreign packet of each side is logged (without its address: logs keep no
//!   personal data beyond the call's).

use super::pool::PortPool;
use super::relay::{PacketKind, PeerMedia, Relay, RelayConfig, RelayInput, RelayOutput, Side, SideStats};
use crate::shell::WakeTimer;
use crate::time::Clock;
use bytes::Bytes;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Datagrams queued in one session's mailbox and not yet handled: 1,024 is about ten seconds
/// of both directions of a 20 ms call, far more than a healthy actor ever lets pile up.
pub const SESSION_BACKLOG_MAX: usize = 1_024;
/// Port pairs tried (allocated and bound) for one session before giving up.
pub const BIND_ATTEMPTS_MAX: usize = 8;
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
    /// Called from the actor for each event; must not block.
    pub events: Arc<dyn Fn(MediaEvent) + Send + Sync>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// The side's phone has sent no RTP for the configured time (see [`RelayOutput::Inactive`]).
    Inactive { side: Side },
}

pub enum MediaMsg {
    Configure {
        side: Side,
        peer: PeerMedia,
    },
    /// Statistics of side A and side B.
    Stats(RpcReplyPort<[SideStats; 2]>),
    /// A datagram from one of the session's sockets. Internal: only its receive tasks send
    /// it, having counted it in the backlog.
    Packet {
        side: Side,
        kind: PacketKind,
        source: SocketAddr,
        bytes: Bytes,
    },
    /// The relay's wake-up time has come. Internal.
    Wake,
    Control(crate::shell::Control),
}

// Local only; see `crate::shell` on ractor's `cluster` feature.
impl ractor::Message for MediaMsg {}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(
        "no RTP port pair free to bind on {bind}: tried {tried} pair(s), {in_use} of {capacity} pairs leased (widen the RTP port range or free the ports)"
    )]
    NoPorts { bind: IpAddr, tried: usize, in_use: usize, capacity: usize },
    #[error("start the media session actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
}

/// Leases two port pairs, binds them on `args.bind` and starts the session, supervised by
/// `supervisor`. Returns the actor and the local RTP addresses of side A and side B (RTCP is
/// the next port up).
pub async fn spawn_linked(
    args: MediaArgs,
    supervisor: ActorCell,
) -> Result<(ActorRef<MediaMsg>, [SocketAddr; 2]), MediaError> {
    let (sockets, lease) = bind_pairs(&args.pool, args.bind).await?;
    let local = [0, 1].map(|i| SocketAddr::new(args.bind, lease.ports[i]));
    let (actor, _) = Actor::spawn_linked(None, MediaSession, MediaStart { args, sockets, lease }, supervisor).await?;
    Ok((actor, local))
}

/// Sockets by `[side][kind]`: `[A RTP, A RTCP], [B RTP, B RTCP]`.
type Sockets = [[Arc<UdpSocket>; 2]; 2];

fn slot(kind: PacketKind) -> usize {
    match kind {
        PacketKind::Rtp => 0,
        PacketKind::Rtcp => 1,
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

async fn bind_pairs(pool: &Arc<Mutex<PortPool>>, bind: IpAddr) -> Result<(Sockets, PortLease), MediaError> {
    // Each port is in the lease from allocation on, so a spawn cancelled mid-bind leaks none.
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
    match <[_; 2]>::try_from(pairs) {
        Ok(sockets) => Ok((sockets, lease)),
        Err(_) => {
            drop(lease);
            let pool = lock(pool);
            Err(MediaError::NoPorts { bind, tried, in_use: pool.in_use(), capacity: pool.capacity() })
        }
    }
}

async fn bind_pair(bind: IpAddr, port: u16) -> std::io::Result<[Arc<UdpSocket>; 2]> {
    let rtp = UdpSocket::bind((bind, port)).await?;
    let rtcp = UdpSocket::bind((bind, port + 1)).await?;
    Ok([Arc::new(rtp), Arc::new(rtcp)])
}

pub struct MediaSession;

/// What [`spawn_linked`] hands the actor: the arguments, and the sockets already bound.
pub struct MediaStart {
    args: MediaArgs,
    sockets: Sockets,
    lease: PortLease,
}

/// The receive tasks; aborted when the state is dropped, however the actor ended.
struct Receivers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Receivers {
    fn drop(&mut self) {
        self.0.iter().for_each(|task| task.abort());
    }
}

pub struct MediaState {
    relay: Relay,
    clock: Arc<dyn Clock>,
    events: Arc<dyn Fn(MediaEvent) + Send + Sync>,
    sockets: Sockets,
    backlog: Arc<AtomicUsize>,
    timer: WakeTimer,
    /// The relay's drop count already reported to the metric.
    dropped_reported: u64,
    /// The relay's foreign count per side already reported to the metric.
    foreign_reported: [u64; 2],
    packets_out: metrics::Counter,
    dropped: metrics::Counter,
    foreign: metrics::Counter,
    // Last, so they drop last and in this order: receive tasks aborted, then ports released.
    _receivers: Receivers,
    _lease: PortLease,
}

impl Actor for MediaSession {
    type Msg = MediaMsg;
    type State = MediaState;
    type Arguments = MediaStart;

    async fn pre_start(&self, me: ActorRef<MediaMsg>, start: MediaStart) -> Result<MediaState, ActorProcessingErr> {
        let MediaStart { args, sockets, lease } = start;
        let backlog = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(4);
        for side in [Side::A, Side::B] {
            for kind in [PacketKind::Rtp, PacketKind::Rtcp] {
                let socket = sockets[side.index()][slot(kind)].clone();
                tasks.push(tokio::spawn(receive(socket, side, kind, me.clone(), backlog.clone())));
            }
        }
        Ok(MediaState {
            relay: Relay::new(args.config, args.seed, args.clock.now()),
            clock: args.clock,
            events: args.events,
            sockets,
            backlog,
            timer: WakeTimer::default(),
            dropped_reported: 0,
            foreign_reported: [0; 2],
            packets_out: metrics::counter!("pbx_rtp_packets_total", "direction" => "out"),
            dropped: metrics::counter!("pbx_rtp_dropped_total"),
            foreign: metrics::counter!("pbx_rtp_foreign_packets_total"),
            _receivers: Receivers(tasks),
            _lease: lease,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<MediaMsg>,
        msg: MediaMsg,
        s: &mut MediaState,
    ) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        match msg {
            MediaMsg::Configure { side, peer } => s.relay.handle(now, RelayInput::Configure { side, peer }),
            MediaMsg::Stats(reply) => {
                let _ = reply.send([s.relay.stats(Side::A), s.relay.stats(Side::B)]);
            }
            MediaMsg::Packet { side, kind, source, bytes } => {
                s.backlog.fetch_sub(1, Ordering::Relaxed);
                s.relay.handle(now, RelayInput::Packet { side, kind, source, bytes });
            }
            MediaMsg::Wake => {
                s.timer.fired();
                s.relay.handle(now, RelayInput::Timeout);
            }
            MediaMsg::Control(control) => control.obey("media"),
        }
        while let Some(output) = s.relay.poll_output() {
            match output {
                RelayOutput::Transmit { side, kind, destination, bytes } => {
                    match s.sockets[side.index()][slot(kind)].try_send_to(&bytes, destination) {
                        Ok(_) => s.packets_out.increment(1),
                        Err(e) => {
                            s.dropped.increment(1);
                            tracing::debug!(%destination, error = %e, "RTP send failed; packet dropped");
                        }
                    }
                }
                RelayOutput::Inactive { side } => (s.events)(MediaEvent::Inactive { side }),
            }
        }
        let stats = [s.relay.stats(Side::A), s.relay.stats(Side::B)];
        let dropped = stats[0].dropped + stats[1].dropped;
        s.dropped.increment(dropped - s.dropped_reported);
        s.dropped_reported = dropped;
        for side in [Side::A, Side::B] {
            let foreign = stats[side.index()].foreign;
            let reported = &mut s.foreign_reported[side.index()];
            if foreign > *reported {
                if *reported == 0 {
                    tracing::info!(
                        ?side,
                        "RTP or RTCP from an address that is not the phone's dropped (first of this call)"
                    );
                }
                s.foreign.increment(foreign - *reported);
                *reported = foreign;
            }
        }
        s.timer.arm(&me, now, s.relay.poll_timeout(), || MediaMsg::Wake);
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<MediaMsg>, s: &mut MediaState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        Ok(())
    }
}

/// Reads one socket until the session ends, casting each datagram to the actor while the
/// backlog has room.
async fn receive(
    socket: Arc<UdpSocket>,
    side: Side,
    kind: PacketKind,
    me: ActorRef<MediaMsg>,
    backlog: Arc<AtomicUsize>,
) {
    let packets_in = metrics::counter!("pbx_rtp_packets_total", "direction" => "in");
    let dropped = metrics::counter!("pbx_rtp_dropped_total");
    // One byte more than the largest datagram kept, to tell a full one from a truncated one.
    let mut buf = [0u8; DATAGRAM_BYTES_MAX + 1];
    loop {
        let (len, source) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(?side, ?kind, error = %e, "RTP receive failed");
                tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
                continue;
            }
        };
        packets_in.increment(1);
        if len > DATAGRAM_BYTES_MAX || backlog.load(Ordering::Relaxed) >= SESSION_BACKLOG_MAX {
            dropped.increment(1);
            continue;
        }
        backlog.fetch_add(1, Ordering::Relaxed);
        // The relay rewrites this copy in place: one allocation per packet, sized to it.
        let bytes = Bytes::copy_from_slice(&buf[..len]);
        if me.cast(MediaMsg::Packet { side, kind, source, bytes }).is_err() {
            return; // the session has ended
        }
    }
}

#[cfg(test)]
mod tests;

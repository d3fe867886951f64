//! The media session's shell: leases two RTP/RTCP port pairs, binds their four UDP sockets,
//! and hands them with one [`Relay`] to one of a few shared media workers, which read, relay
//! in place and send every datagram, report inactivity through a callback, and run the
//! relay's timeouts and the metrics.
//!
//! - **Ports.** [`MediaSession::start`] leases pairs from the shared [`PortPool`] (drawn at
//!   random) and binds them before the worker has them, so the caller learns the local
//!   addresses (for its SDP) from the start itself. A pair that will not bind (another program
//!   holds a port) goes back to the pool, which holds it back from the next draws, and another
//!   is drawn; after [`BIND_ATTEMPTS_MAX`] pairs tried the start fails with
//!   [`MediaError::NoPorts`]. The lease belongs to the session's state in its worker: the
//!   sockets close and the ports return to the pool when the worker drops it, however the
//!   session ends (the [`MediaSession`] dropped, or a panic), unless they are parked.
//! - **Parking.** A session that ends normally parks its four sockets in the pool
//!   ([`PortPool::park`], when the node's pool parks: `PortPool::park_sets`): they stay bound,
//!   in their worker's epoll set, and whatever reaches them is read and dropped (counted in
//!   `pbx_rtp_dropped_total`), so nothing queues in the kernel for a stranger. A later start
//!   takes a parked set when the pool draws one (only at random among many, past a
//!   quarantine: the pool's module doc) or when no pair can be leased and bound otherwise; its
//!   worker then gives the slot a new relay, counters and owner (`Command::Reuse`). A set
//!   nobody takes is closed after the pool's idle time (10 s), so an idle node holds no sockets.
//!   A socket's life was `socket`, `ioctl`, `bind`, `epoll_ctl` and `close`: four of each per
//!   call, about 37 µs of a call's CPU on the 2-core machine of docs/PERFORMANCE.md, and at
//!   3,000 calls/s the one thing the media workers were woken for.
//! - **Commands.** A new session's `Add` wakes its worker at once (its sockets must join the
//!   epoll set before a datagram can wake it). `Remove` wakes it only when the pool is near
//!   its limit (its ports go back, or park, at once: a pool near its limit must not refuse
//!   calls for ports an ended call still holds); while the pool has room for every session
//!   the workers may have waiting, it queues like the others (a wake per ended call was a
//!   tenth of a call's CPU at 4,600 calls/s, docs/PERFORMANCE.md). `Reuse` and `Configure`
//!   only queue:
//!   the worker takes every queued command at the start of each round, before the datagrams
//!   that woke it, so an SDP is applied before the first packet that needs it; without
//!   traffic, its timer takes them within [`METRICS_FLUSH_MS`] (a session's flush) or a second
//!   (`TIMER_IDLE_MS`), and [`LAZY_COMMANDS_MAX`] waiting wake it. Each wake is a context
//!   switch, an `epoll_wait`, a read of the eventfd and a paced pause: none per call on a
//!   parked set in a roomy pool, one on a new one (`Add`), from four.
//! - **Shared workers, no task per call.** [`MEDIA_WORKERS_MAX`] threads at most, one per core,
//!   started with the first session; each session goes to the next in turn. A worker owns its
//!   sessions' state and sockets outright (ownership is plain: only that thread touches them)
//!   and waits on one level-triggered epoll set for all their sockets and an eventfd that
//!   wakes it for commands. A readable socket is read with one `recvmmsg` into the worker's
//!   buffers: of one datagram (a phone sends one per 20 ms, so asking for more costs the
//!   kernel a second, empty read), or of up to [`BATCH_DATAGRAMS_MAX`] when the socket was
//!   ready in the round before too (it has a backlog). Each datagram is rewritten there by
//!   [`Relay::relay_in_place`] and those bound for the same socket leave with one `sendmmsg`
//!   (no copy, no allocation, no message per packet). A read or send of a single datagram,
//!   the usual case, goes by `recvfrom` or `sendto`, which cost the kernel less for one. What arrives faster than a worker reads
//!   waits in the socket's kernel buffer and is dropped there when that is full, so a flood
//!   toward one call cannot grow pbx's memory, and a flooded socket gives up its turn after
//!   one batch. Sends never wait: a full socket buffer drops the packet (RTP tolerates loss;
//!   waiting would delay every later packet).
//! - **io_uring** ([`MediaIo`], `calls.media_io` in the node's config; `uring.rs`). Where the
//!   kernel offers it (Linux 6.1 and later, not switched off), a worker has an io_uring ring
//!   (made in its own thread, the one task allowed to use it, with its deferred work run only
//!   when the worker waits) in place of the epoll set: each socket has a multishot `recvmsg`
//!   into a ring of 4,096 provided buffers, so a datagram arrives as a completion with its
//!   source and costs no system call of its own; each datagram to forward is copied into a
//!   send slab entry and queued as a `send` with its destination; one `io_uring_enter` per
//!   round submits the round's sends and waits for the next completions. A socket's receive
//!   ends with a completion without `more` (a cancellation, buffers running out): it is armed
//!   again, and a session is dropped (its sockets closed, its ports returned) only once every
//!   receive it had armed has ended, so no socket closes while the ring still holds it and its
//!   port can be bound again at once. A socket that brings more than
//!   [`URING_SOCKET_ROUND_MAX`] datagrams in a round (a second of a phone's packets) has the
//!   rest dropped and its receive cancelled for a round: a flood toward one call costs the
//!   worker 64 datagrams relayed per round and what its socket's kernel buffer holds (a few
//!   hundred datagrams) read every other round; the kernel drops the rest when that buffer is
//!   full (`a_flood_toward_one_session_leaves_the_others_relaying`). The buffers are many so
//!   that they do not run out at thousands of calls: with 128, receives that found none ended
//!   and were armed again round after round, and at 2,000 calls the sockets overflowed. Measured: 24–31 % less CPU per relayed
//!   packet than the epoll loop (docs/PERFORMANCE.md). Where the kernel refuses a ring the
//!   worker uses the epoll set, with a warning in the log; the tests run every session test on
//!   both.
//! - **Pacing.** A round (one epoll wait and the sockets it found ready) that read no full
//!   batch is followed by a pause until [`PACE_US`] after the round began, so the next wait
//!   finds many sockets ready at once instead of waking the thread for each datagram (at
//!   1,000 calls a worker was woken about 4,000 times a second for 12 datagrams each). A
//!   datagram is therefore relayed at most [`PACE_US`] later than without the pause: the
//!   jitter pbx adds, and the most its own reading adds to the jitter it reports for a side
//!   (its arrival time is when the worker reads it). An idle worker still sleeps in its wait
//!   (the first datagram after a quiet spell goes at once), and a round that read a full
//!   batch (a backlog, a flood) is not followed by a pause, so a flood is read as fast as
//!   before.
//! - **Ownership.** The session's owner (the call actor) holds a [`MediaSession`]: a handle
//!   that sends the worker commands (`Configure`, the test hook) and, when dropped, `Remove`:
//!   the worker then parks the session's sockets or drops its state, which stops relaying,
//!   closes the sockets and returns the ports, as the aborted task did before.
//! - **Counters.** The relay's [`SideStats`] are published after every batch into counters
//!   the owner reads without asking the worker ([`MediaSession::stats`]: the CDR and the API's
//!   call list).
//! - **Failure.** A relay that panics (caught per session, so the worker and the other calls
//!   go on) reports [`MediaEvent::Failed`] through the callback (its owner ends the call), and
//!   its state is dropped, so its ports return as for any other end.
//! - **Timers.** Each session's next wake (the relay's timeout or the metrics flush) is kept
//!   with it; the worker looks for due sessions at most every [`TIMER_TICK_MS`].
//! - **Metrics**, added up per session and handed to the registry every [`METRICS_FLUSH_MS`]
//!   and when the session ends: gauges `pbx_rtp_ports_in_use` (UDP ports, RTP and RTCP, leased
//!   node-wide for calls) and `pbx_rtp_ports_parked` (bound, waiting for a call), counters `pbx_rtp_packets_total{direction="in"|"out"}`,
//!   `pbx_rtp_dropped_total` (oversized, relay and send drops alike) and
//!   `pbx_rtp_foreign_packets_total` (of those, RTP and RTCP from an address that is not the
//!   side's source: see the relay's module doc). The first foreign packet of each side is
//!   logged (without its address: logs keep no personal data beyond the call's).

use super::SrtpKeys;
use super::pool::{Parked, PortPool};
use super::relay::{PacketKind, PeerMedia, Relay, RelayConfig, RelayInput, RelayOutput, Side, SideStats};
use super::srtp::{SRTCP_TRAILER_BYTES, SrtpError, SrtpSession};
use crate::time::{Clock, Timestamp};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};
use sys::{Batch, Epoll, EventFd};
use uring::{CANCEL_TAG, Completion, GENERATION_MASK, SEND_TAG, SendSlab, Uring, WAKE_TAG};

mod sys;
mod uring;

/// Port pairs tried (allocated and bound) for one session before giving up.
pub const BIND_ATTEMPTS_MAX: usize = 8;
/// SDP changes sent to a session and not yet applied by its worker: a call sends one per
/// offer/answer, and the worker takes them between batches, so this is never reached by a
/// working call.
pub const CONTROL_QUEUE_MAX: usize = 16;
/// How often a session hands its packet counts to the metrics registry: often enough that a
/// reading of `pbx_rtp_packets_total` over seconds is exact to a few percent, rarely enough
/// that it costs nothing next to the packets (50 per second per side).
pub const METRICS_FLUSH_MS: u64 = 500;
/// Media worker threads at most (one per core up to this).
pub const MEDIA_WORKERS_MAX: usize = 8;
/// Datagrams read from one socket per system call; a socket with more queued is read again
/// after the other ready sockets.
pub const BATCH_DATAGRAMS_MAX: usize = 16;
/// Socket events taken from the epoll set per wait.
const EVENTS_MAX: usize = 256;
/// Rounds of a busy worker begin at most this often (see the module doc, **Pacing**): the
/// most a datagram's relay is delayed by the pacing, 1 ms against G.711's 20 ms between
/// packets, well inside any phone's jitter buffer.
pub const PACE_US: u64 = 1_000;
/// A worker's finest timer step: due sessions are looked for at most this often.
pub const TIMER_TICK_MS: u64 = 10;
/// A worker with nothing due still looks this often (its clock may be a test's).
const TIMER_IDLE_MS: u64 = 1_000;
/// Largest datagram relayed; G.711 at 20 ms is 172 bytes, and nothing RTP carries over a
/// 1,500-byte Ethernet path is larger. Bigger datagrams are dropped rather than truncated.
const DATAGRAM_BYTES_MAX: usize = 2_048;
/// The epoll token of a worker's eventfd (socket tokens are `slot << 2 | socket`).
const WAKE_TOKEN: u64 = u64::MAX;
/// A parked set's token is its last session's id times this plus its worker's index.
const TOKEN_SPAN: u64 = MEDIA_WORKERS_MAX as u64;

pub struct MediaArgs {
    pub pool: Arc<Mutex<PortPool>>,
    /// The local address the four sockets bind to.
    pub bind: IpAddr,
    pub clock: Arc<dyn Clock>,
    pub config: RelayConfig,
    pub seed: u64,
    /// Called from the session's worker thread for each event; must not block.
    pub events: Arc<dyn Fn(MediaEvent) + Send + Sync>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// The side's phone has sent no RTP for the configured time (see [`RelayOutput::Inactive`]).
    Inactive { side: Side },
    /// The session's relay panicked: no more media flows (its ports are returned).
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(
        "no RTP port pair free to bind on {bind}: tried {tried} pair(s), {in_use} of {capacity} pairs leased (widen the RTP port range or free the ports)"
    )]
    NoPorts { bind: IpAddr, tried: usize, in_use: usize, capacity: usize },
    /// The process is out of file descriptors (EMFILE, ENFILE): every other pair would fail
    /// the same way, so none is tried after the first.
    #[error(
        "no RTP sockets: the process is out of open files ({in_use} of {capacity} port pairs leased; raise RLIMIT_NOFILE or narrow the RTP port range)"
    )]
    NoFiles { in_use: usize, capacity: usize },
    #[error("media workers could not start: {0}")]
    Workers(std::io::Error),
}

impl MediaError {
    /// The node is out of media capacity (ports or open files): the call is refused as busy
    /// (503 with Retry-After), not as a fault.
    pub fn is_capacity(&self) -> bool {
        matches!(self, MediaError::NoPorts { .. } | MediaError::NoFiles { .. })
    }
}

// `Counts::srtp_dropped` is indexed by an error's discriminant: `SrtpError::ALL` lists them in
// that order.
const _: () = {
    let mut i = 0;
    while i < SrtpError::ALL.len() {
        assert!(SrtpError::ALL[i] as usize == i);
        i += 1;
    }
};

/// What a session's handle sends its worker.
enum Command {
    Add(Box<Session>),
    /// A new session on the sockets parked under `token` in this worker.
    Reuse {
        token: u64,
        fresh: Box<Fresh>,
    },
    Configure {
        id: u64,
        side: Side,
        peer: PeerMedia,
    },
    /// The side's SRTP keys (SDES), or plain RTP again.
    Keys {
        id: u64,
        side: Side,
        keys: Option<Box<SrtpKeys>>,
    },
    /// The node's test hook (`PBX_TEST_HOOKS=1`): the session's relay panics.
    Panic {
        id: u64,
    },
    Remove {
        id: u64,
    },
}

/// Commands a worker may have waiting before one wakes it (module doc, **Commands**).
pub const LAZY_COMMANDS_MAX: usize = 64;

/// How a handle reaches its worker.
struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    wake: Arc<EventFd>,
    /// Commands sent and not yet taken by the worker.
    queued: Arc<AtomicUsize>,
}

impl WorkerHandle {
    /// Sends a command that must be taken now (its sockets must join the epoll set, or a
    /// test waits on it).
    fn send(&self, command: Command) {
        if self.enqueue(command).is_some() {
            self.wake.wake();
        }
    }

    /// Sends a command the worker takes at its next round: when a datagram of any of its
    /// sockets wakes it, or its timer, or this command makes [`LAZY_COMMANDS_MAX`] waiting.
    fn send_lazily(&self, command: Command) {
        if self.enqueue(command).is_some_and(|waiting| waiting >= LAZY_COMMANDS_MAX) {
            self.wake.wake();
        }
    }

    /// Queues `command`; the commands waiting with it, or `None` if the worker is gone. The
    /// count goes up before the command can be taken (the worker counts it down after taking
    /// it), so it never goes below zero.
    fn enqueue(&self, command: Command) -> Option<usize> {
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel) + 1;
        if self.commands.send(command).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(waiting)
    }
}

/// How the media workers wait for and move datagrams (`calls.media_io` in the node's config:
/// `"auto"`, `"epoll"`, `"io_uring"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaIo {
    /// io_uring where the kernel offers it (Linux 6.1 and later, not switched off), else epoll.
    #[default]
    Auto,
    /// A level-triggered epoll set, `recvfrom`/`recvmmsg` and `sendto`/`sendmmsg`.
    Epoll,
    /// io_uring (module doc, **io_uring**); where the kernel refuses it, epoll, with a warning.
    IoUring,
}

/// The [`MediaIo`] of sessions started by [`MediaSession::start`]: 0 auto, 1 epoll, 2 io_uring.
static IO: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets how the media workers started from now on move datagrams (the node calls it from its
/// config before its first call).
pub fn set_media_io(io: MediaIo) {
    IO.store(io as u8, Ordering::Relaxed);
}

/// Provided buffers of an io_uring worker, and bytes each: a datagram as large as any relayed,
/// behind the kernel's header and the sender's address.
const URING_BUFFERS: u16 = 4_096;
const URING_BUFFER_BYTES: usize = DATAGRAM_BYTES_MAX + 256;
/// Datagrams an io_uring worker relays from one socket in a round; the rest of a flood is
/// dropped and the socket sits out a round (module doc, **io_uring**). A phone sends one per
/// 20 ms: this is a second of its packets, so a socket catching up after a stall is not cut.
pub const URING_SOCKET_ROUND_MAX: u16 = 64;
/// Submission queue entries of an io_uring worker, and sends in flight at most.
const URING_SUBMISSIONS: u32 = 4_096;

/// The node's media workers, started with the first session: those on epoll, and those on
/// io_uring (only one kind in a node; tests start both).
static WORKERS: Mutex<[Option<Arc<[WorkerHandle]>>; 2]> = Mutex::new([None, None]);
/// The worker the next session goes to.
static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);
/// Session ids, unique for the process's life.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

fn workers(io: MediaIo) -> Result<Arc<[WorkerHandle]>, MediaError> {
    let mut workers = WORKERS.lock().unwrap_or_else(PoisonError::into_inner);
    let kind = usize::from(io != MediaIo::Epoll);
    if let Some(workers) = &workers[kind] {
        return Ok(workers.clone());
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MEDIA_WORKERS_MAX);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let wake = Arc::new(EventFd::new().map_err(MediaError::Workers)?);
        // The epoll set is made here (its errors are the start's); a ring only in the worker's
        // thread, the one task allowed to use it (IORING_SETUP_SINGLE_ISSUER), which falls
        // back to the epoll set if the kernel refuses.
        let epoll = Epoll::new().map_err(MediaError::Workers)?;
        epoll.add(wake.fd(), WAKE_TOKEN).map_err(MediaError::Workers)?;
        let try_uring = io != MediaIo::Epoll;
        let (commands, receiver) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            index: i,
            io: Io::Epoll(epoll),
            generations: Vec::new(),
            rearm: Vec::new(),
            closing: HashMap::new(),
            wake: wake.clone(),
            commands: receiver,
            queued: queued.clone(),
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            batch: Batch::new(BATCH_DATAGRAMS_MAX, DATAGRAM_BYTES_MAX + 1 + SRTCP_TRAILER_BYTES),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX],
            next_scan: Instant::now(),
            last_scan: Instant::now(),
            round: 1,
            backlog: false,
        };
        std::thread::Builder::new()
            .name(format!("pbx-media-{i}"))
            .spawn(move || {
                let mut worker = worker;
                if try_uring {
                    worker.take_uring();
                }
                worker.run()
            })
            .map_err(MediaError::Workers)?;
        handles.push(WorkerHandle { commands, wake, queued });
    }
    let handles: Arc<[WorkerHandle]> = handles.into();
    workers[kind] = Some(handles.clone());
    Ok(handles)
}

/// A running media session: dropping it ends the session in its worker, which closes the
/// sockets and gives the ports back.
pub struct MediaSession {
    id: u64,
    workers: Arc<[WorkerHandle]>,
    worker: usize,
    shared: Arc<Shared>,
    local: [SocketAddr; 2],
    pool: Arc<Mutex<PortPool>>,
}

impl MediaSession {
    /// Leases two port pairs, binds them on `args.bind` and hands the session to a worker.
    /// Sockets parked by an ended session are taken when the pool draws them (module doc,
    /// **Parking**), and whenever no pair can be leased and bound otherwise.
    pub async fn start(args: MediaArgs) -> Result<MediaSession, MediaError> {
        let io = match IO.load(Ordering::Relaxed) {
            1 => MediaIo::Epoll,
            2 => MediaIo::IoUring,
            _ => MediaIo::Auto,
        };
        Self::start_on(args, io).await
    }

    /// [`start`](Self::start) on the workers of `io` (tests run both kinds in one process).
    pub async fn start_on(args: MediaArgs, io: MediaIo) -> Result<MediaSession, MediaError> {
        let workers = workers(io)?;
        let shared = Arc::new(Shared::default());
        let now = args.clock.now();
        let fresh = Fresh {
            srtp: [None, None],
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            relay: Relay::new(args.config, args.seed, now),
            clock: args.clock,
            events: args.events,
            shared: shared.clone(),
        };
        let drawn = lock(&args.pool).take_parked();
        let (sockets, lease) = match drawn {
            Some(parked) => return Ok(MediaSession::reuse(workers, &args.pool, args.bind, parked, fresh)),
            None => match bind_pairs(&args.pool, args.bind) {
                Ok(bound) => bound,
                Err(e) if e.is_capacity() => {
                    let oldest = lock(&args.pool).take_parked_oldest();
                    let parked = oldest.ok_or(e)?;
                    return Ok(MediaSession::reuse(workers, &args.pool, args.bind, parked, fresh));
                }
                Err(e) => return Err(e),
            },
        };
        let local = [0, 1].map(|i| SocketAddr::new(args.bind, lease.ports[i]));
        let id = fresh.id;
        let session = Session {
            wake_at: now,
            due: Instant::now(),
            next_flush: now,
            counts: Counts::default(),
            ready_round: [0; 4],
            armed: 0,
            throttled: 0,
            taken: [0; 4],
            fresh,
            sockets,
            lease,
        };
        let worker = NEXT_WORKER.fetch_add(1, Ordering::Relaxed) % workers.len();
        workers[worker].send(Command::Add(Box::new(session)));
        Ok(MediaSession { id, workers, worker, shared, local, pool: args.pool })
    }

    /// The session on a parked set: its worker is told, its ports are the set's.
    fn reuse(
        workers: Arc<[WorkerHandle]>,
        pool: &Arc<Mutex<PortPool>>,
        bind: IpAddr,
        parked: Parked,
        fresh: Fresh,
    ) -> MediaSession {
        record_in_use(&lock(pool));
        let (id, shared) = (fresh.id, fresh.shared.clone());
        let worker = (parked.token % TOKEN_SPAN) as usize;
        workers[worker].send_lazily(Command::Reuse { token: parked.token, fresh: Box::new(fresh) });
        let local = parked.ports.map(|port| SocketAddr::new(bind, port));
        MediaSession { id, workers, worker, shared, local, pool: pool.clone() }
    }

    /// The local RTP addresses of side A and side B (RTCP is the next port up).
    pub fn local(&self) -> [SocketAddr; 2] {
        self.local
    }

    /// The side's SRTP keys, agreed by SDES: from now on what arrives on `side` is decrypted
    /// and authenticated with `keys.remote` before it is relayed (what fails is dropped and
    /// counted, `pbx_srtp_dropped_total{reason}`), and what leaves toward it is encrypted with
    /// `keys.local`. `None`: plain RTP on that side. Give the keys before the SDP that needs them.
    pub fn set_keys(&self, side: Side, keys: Option<SrtpKeys>) {
        if self.shared.pending.fetch_add(1, Ordering::AcqRel) >= CONTROL_QUEUE_MAX {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(?side, "media session not taking its SRTP keys (its queue is full)");
            return;
        }
        let keys = keys.map(Box::new);
        self.workers[self.worker].send_lazily(Command::Keys { id: self.id, side, keys });
    }

    /// The side's SDP (first offer/answer, or a re-INVITE).
    pub fn configure(&self, side: Side, peer: PeerMedia) {
        if self.shared.pending.fetch_add(1, Ordering::AcqRel) >= CONTROL_QUEUE_MAX {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(?side, "media session not taking its SDP (its queue is full)");
            return;
        }
        self.workers[self.worker].send_lazily(Command::Configure { id: self.id, side, peer });
    }

    /// Statistics of side A and side B, as of the last datagrams the worker handled.
    pub fn stats(&self) -> [SideStats; 2] {
        [self.shared.stats.load(Side::A), self.shared.stats.load(Side::B)]
    }

    /// Test hook: the session's relay panics.
    pub fn panic(&self) {
        self.workers[self.worker].send(Command::Panic { id: self.id });
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        // While the pool has room for every session its workers may have waiting to be
        // removed, the worker takes this at its next round (module doc, **Commands**); when it
        // has not, at once: a pool near its limit must not refuse calls for ports an ended
        // call still holds.
        let command = Command::Remove { id: self.id };
        if removes_lazily(&lock(&self.pool), self.workers.len()) {
            self.workers[self.worker].send_lazily(command);
        } else {
            self.workers[self.worker].send(command);
        }
    }
}

/// Whether an ended session's `Remove` may wait for its worker's next round: while the pool
/// has room for every session its `workers` may have waiting (two pairs each).
fn removes_lazily(pool: &PortPool, workers: usize) -> bool {
    pool.headroom() > 2 * LAZY_COMMANDS_MAX * workers
}

/// What a session's handle and its worker share.
#[derive(Default)]
struct Shared {
    stats: SharedStats,
    /// `Configure` commands sent and not yet applied.
    pending: AtomicUsize,
}

/// [`SideStats`] of both sides, written by the worker and read by the owner. Each field is
/// read on its own, so a reading taken mid-update may mix two consecutive batches' counts.
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
    metrics::gauge!("pbx_rtp_ports_parked").set((pool.parked_pairs() * 2) as f64);
}

/// Leased port pairs (two once the session runs); dropping it gives them back, out of the
/// park first if they are parked.
struct PortLease {
    pool: Arc<Mutex<PortPool>>,
    ports: Vec<u16>,
    /// The token the pairs are parked under, while they are.
    parked: Option<u64>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut pool = lock(&self.pool);
        if let Some(token) = self.parked {
            pool.unpark(token);
        }
        for &port in &self.ports {
            pool.release(port);
        }
        record_in_use(&pool);
    }
}

/// The four sockets, in the order of [`socket_index`]: A RTP, A RTCP, B RTP, B RTCP.
type Sockets = [UdpSocket; 4];

/// An io_uring worker's user data for the receive of socket `index` of the session in `slot`.
fn receive_token(generation: u32, slot: usize, index: usize) -> u64 {
    (u64::from(generation) << 32) | ((slot as u64) << 2) | index as u64
}

fn token_parts(token: u64) -> (u32, usize, usize) {
    ((token >> 32) as u32 & GENERATION_MASK, ((token >> 2) & 0x3fff_ffff) as usize, (token & 3) as usize)
}

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

fn bind_pairs(pool: &Arc<Mutex<PortPool>>, bind: IpAddr) -> Result<(Sockets, PortLease), MediaError> {
    // Each port is in the lease from allocation on, so a failed start leaks none.
    let mut lease = PortLease { pool: pool.clone(), ports: Vec::with_capacity(2), parked: None };
    let mut pairs = Vec::with_capacity(2);
    let mut tried = 0;
    while pairs.len() < 2 && tried < BIND_ATTEMPTS_MAX {
        let Some(port) = lock(pool).allocate() else { break };
        tried += 1;
        lease.ports.push(port);
        match bind_pair(bind, port) {
            Ok(pair) => pairs.push(pair),
            Err(e) => {
                lease.ports.pop();
                lock(pool).release(port);
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    // The lease gives its ports back and records the gauge as it drops.
                    drop((pairs, lease));
                    let pool = lock(pool);
                    return Err(MediaError::NoFiles { in_use: pool.in_use(), capacity: pool.capacity() });
                }
                tracing::warn!(%bind, port, error = %e, "RTP port pair will not bind; drawing another");
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

fn bind_pair(bind: IpAddr, port: u16) -> std::io::Result<[UdpSocket; 2]> {
    let rtp = UdpSocket::bind((bind, port))?;
    let rtcp = UdpSocket::bind((bind, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok([rtp, rtcp])
}

/// What the session counted and has not handed to the metrics registry yet, and what of the
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
    /// SRTP (index 0) and SRTCP (1) packets dropped, by [`SrtpError`] (authentication, replay,
    /// malformed, …).
    srtp_dropped: [[u64; SrtpError::ALL.len()]; 2],
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
        for (kind, label) in [(PacketKind::Rtp, "rtp"), (PacketKind::Rtcp, "rtcp")] {
            for error in SrtpError::ALL {
                let n = std::mem::take(&mut self.srtp_dropped[kind as usize][error as usize]);
                if n > 0 {
                    metrics::counter!("pbx_srtp_dropped_total", "kind" => label, "reason" => error.as_str())
                        .increment(n);
                }
            }
        }
        (self.packets_in, self.packets_out, self.dropped) = (0, 0, 0);
    }
}

/// What a session's start makes, sockets aside: a new session brings it with its sockets, a
/// session on a parked set without.
struct Fresh {
    id: u64,
    relay: Relay,
    /// Each side's SRTP contexts, when its phone speaks SRTP ([`MediaSession::set_keys`]).
    srtp: [Option<SrtpSession>; 2],
    clock: Arc<dyn Clock>,
    events: Arc<dyn Fn(MediaEvent) + Send + Sync>,
    shared: Arc<Shared>,
}

/// One call's media, owned by its worker: the relay, the sockets and the lease. After its
/// call it may stay parked (`lease.parked`): its sockets bound and drained, its relay idle,
/// until a new call takes it ([`Session::revive`]) or it is closed.
struct Session {
    fresh: Fresh,
    /// When the session wants its timer, in its clock's time, and the same in real time
    /// (parked: when it is closed).
    wake_at: Timestamp,
    due: Instant,
    next_flush: Timestamp,
    counts: Counts,
    /// The worker's round in which each socket was last found ready (0: never).
    ready_round: [u64; 4],
    /// io_uring: which sockets have a receive armed (bit per socket): each such receive ends
    /// with one completion without `more`, which the worker waits for before it closes them.
    armed: u8,
    /// io_uring: sockets whose receive was cancelled for taking more than a batch in a round
    /// (a flood), to be armed again a round later; and datagrams taken per socket this round.
    throttled: u8,
    taken: [u16; 4],
    // Last, so they drop last and in this order: sockets closed, then ports released.
    sockets: Sockets,
    lease: PortLease,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.counts.flush(&self.fresh.relay);
    }
}

impl Session {
    fn parked(&self) -> Option<u64> {
        self.lease.parked
    }

    /// A new call's session on these sockets: what the last call counted is reported, and
    /// everything of it but the sockets and the lease is replaced.
    fn revive(&mut self, fresh: Fresh) {
        self.counts.flush(&self.fresh.relay);
        let now = fresh.clock.now();
        self.fresh = fresh;
        self.lease.parked = None;
        (self.wake_at, self.due, self.next_flush) = (now, Instant::now(), now);
        self.counts = Counts::default();
        self.ready_round = [0; 4];
    }

    /// The `n` datagrams of `batch` were read from socket `index`: relay each in place and
    /// send those forwarded, a run bound for the same socket in one call.
    fn datagrams(&mut self, index: usize, batch: &mut Batch, n: usize) {
        let (side, kind) = socket_of(index);
        let now = self.fresh.clock.now();
        self.counts.packets_in += n as u64;
        // Slots `..run` hold the datagrams to send from socket `out`, in the order received.
        let (mut run, mut out) = (0, usize::MAX);
        for i in 0..n {
            let slot = &mut batch.slots[i];
            if slot.len > DATAGRAM_BYTES_MAX {
                self.counts.dropped += 1;
                continue;
            }
            if let Some(srtp) = self.fresh.srtp[side.index()].as_mut() {
                let packet = &mut slot.buf[..slot.len];
                let plain = match kind {
                    PacketKind::Rtp => srtp.unprotect_rtp(packet),
                    PacketKind::Rtcp => srtp.unprotect_rtcp(packet),
                };
                match plain {
                    Ok(len) => slot.len = len,
                    Err(e) => {
                        self.counts.srtp_dropped[kind as usize][e as usize] += 1;
                        tracing::debug!(?side, ?kind, len = slot.len, reason = e.as_str(), head = ?&slot.buf[..slot.len.min(12)], "SRTP packet dropped");
                        continue;
                    }
                }
            }
            let Some(forward) =
                self.fresh.relay.relay_in_place(now, side, kind, slot.address, &mut slot.buf[..slot.len])
            else {
                continue;
            };
            if let Some(srtp) = self.fresh.srtp[forward.side.index()].as_mut() {
                let sealed = match forward.kind {
                    PacketKind::Rtp => srtp.protect_rtp(&mut slot.buf, slot.len),
                    PacketKind::Rtcp => srtp.protect_rtcp(&mut slot.buf, slot.len),
                };
                match sealed {
                    Ok(len) => slot.len = len,
                    Err(e) => {
                        self.counts.srtp_dropped[forward.kind as usize][e as usize] += 1;
                        tracing::debug!(side = ?forward.side, kind = ?forward.kind, len = slot.len, reason = e.as_str(), "SRTP packet not protected");
                        continue;
                    }
                }
            }
            slot.address = forward.destination;
            let to = socket_index(forward.side, forward.kind);
            if to != out && run > 0 {
                self.send(batch, out, run);
                run = 0;
            }
            out = to;
            batch.slots.swap(run, i);
            run += 1;
        }
        if run > 0 {
            self.send(batch, out, run);
        }
        for side in [Side::A, Side::B] {
            self.fresh.shared.stats.store(side, self.fresh.relay.stats(side));
        }
        // A packet only moves the inactivity time later, except after a reported silence,
        // when it sets one again: that is the only case the timer must come earlier.
        if self.fresh.relay.poll_timeout().is_some_and(|at| at < self.wake_at) {
            self.arm(now);
        }
    }

    fn send(&mut self, batch: &mut Batch, socket: usize, n: usize) {
        let fd = self.sockets[socket].as_raw_fd();
        let mut first = 0;
        while first < n {
            match batch.send(fd, first, n - first) {
                Ok(0) => {
                    self.counts.dropped += (n - first) as u64;
                    break;
                }
                Ok(sent) => {
                    self.counts.packets_out += sent as u64;
                    first += sent;
                }
                // The first of the rest failed (a full buffer, an unreachable address): it
                // is dropped, the others are tried.
                Err(e) => {
                    self.counts.dropped += 1;
                    tracing::debug!(destination = %batch.slots[first].address, error = %e, "RTP send failed; packet dropped");
                    first += 1;
                }
            }
        }
    }

    fn configure(&mut self, side: Side, peer: PeerMedia) {
        let now = self.fresh.clock.now();
        self.fresh.relay.handle(now, RelayInput::Configure { side, peer });
        self.drain();
        self.arm(now);
    }

    /// The timer is due (or the session starts): the relay's timeout, the metrics, the next
    /// wake.
    fn timer(&mut self) {
        let now = self.fresh.clock.now();
        self.fresh.relay.handle(now, RelayInput::Timeout);
        self.drain();
        if now >= self.next_flush {
            self.counts.flush(&self.fresh.relay);
            self.next_flush = now + Duration::from_millis(METRICS_FLUSH_MS);
        }
        self.arm(now);
    }

    /// Sets the timer for the earlier of the relay's timeout and the next metrics flush.
    fn arm(&mut self, now: Timestamp) {
        let at = self.fresh.relay.poll_timeout().map_or(self.next_flush, |t| t.min(self.next_flush));
        self.wake_at = at;
        self.due = Instant::now() + Duration::from_micros(at.as_micros().saturating_sub(now.as_micros()));
    }

    fn drain(&mut self) {
        while let Some(output) = self.fresh.relay.poll_output() {
            match output {
                // Configure and Timeout send nothing; packets are relayed in place.
                RelayOutput::Transmit { .. } => {}
                RelayOutput::Inactive { side } => (self.fresh.events)(MediaEvent::Inactive { side }),
            }
        }
    }
}

/// A media worker: its thread owns the sessions given to it, their sockets in its epoll set.
struct Worker {
    /// Its place among the workers (in parked sets' tokens).
    index: usize,
    io: Io,
    /// io_uring: each slot's generation, in its sockets' receive tokens, so a completion of a
    /// session gone (its receive cancelled) is not taken for its slot's next session's.
    generations: Vec<u32>,
    /// io_uring: receives to arm again next round (sockets throttled for a flood).
    rearm: Vec<u64>,
    /// io_uring: sessions whose sockets' receives are being cancelled, by their old receive
    /// tokens' generation and slot: each is dropped (its sockets closed, its ports returned)
    /// once the last of its receives has ended, so no socket closes while the ring holds it.
    closing: HashMap<(u32, usize), Box<Session>>,
    wake: Arc<EventFd>,
    commands: mpsc::Receiver<Command>,
    queued: Arc<AtomicUsize>,
    /// Sessions by slot (the socket tokens' upper bits); `None` slots are in `free`.
    slots: Vec<Option<Box<Session>>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    batch: Batch,
    events: Vec<libc::epoll_event>,
    /// When due sessions are looked for next, and when they were last.
    next_scan: Instant,
    last_scan: Instant,
    /// The current round (one epoll wait and the sockets it found ready), counted from 1.
    round: u64,
    /// A read of this round filled its batch: more may be queued, so no pause follows.
    backlog: bool,
}

/// How a worker waits for datagrams.
enum Io {
    Epoll(Epoll),
    Uring(Box<Uring>),
}

impl Worker {
    /// Moves the worker onto an io_uring ring made in its own thread, if the kernel gives one.
    fn take_uring(&mut self) {
        let made = Uring::new(URING_SUBMISSIONS, URING_BUFFERS, URING_BUFFER_BYTES).and_then(|mut uring| {
            uring.poll(self.wake.fd())?;
            Ok(uring)
        });
        match made {
            Ok(uring) => {
                self.io = Io::Uring(Box::new(uring));
                self.batch.slab =
                    Some(SendSlab::new(URING_SUBMISSIONS as usize, DATAGRAM_BYTES_MAX + 1 + SRTCP_TRAILER_BYTES));
            }
            Err(error) if self.index == 0 => {
                tracing::warn!(%error, "media: io_uring refused by the kernel; the media workers use epoll");
            }
            Err(_) => {}
        }
    }

    fn run(self) {
        match self.io {
            Io::Epoll(_) => self.run_epoll(),
            Io::Uring(_) => self.run_uring(),
        }
    }

    fn run_epoll(mut self) {
        loop {
            let wait = self.next_scan.saturating_duration_since(Instant::now());
            let wait_ms = wait.as_micros().div_ceil(1_000).min(TIMER_IDLE_MS.into()) as i32;
            let Io::Epoll(epoll) = &self.io else { unreachable!("an epoll worker") };
            let n = match epoll.wait(&mut self.events, wait_ms) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "media worker: epoll wait failed");
                    std::thread::sleep(Duration::from_millis(TIMER_TICK_MS));
                    0
                }
            };
            let began = Instant::now();
            self.round += 1;
            self.backlog = false;
            // Commands first, every round, so an SDP sent before its first datagram arrived
            // is applied before that datagram. A socket event of a session removed meanwhile
            // finds its slot empty, or reused by a new session whose socket then has nothing
            // to read.
            if self.events[..n].iter().any(|event| event.u64 == WAKE_TOKEN) {
                self.wake.reset();
            }
            self.take_commands();
            for i in 0..n {
                let token = self.events[i].u64;
                if token != WAKE_TOKEN {
                    self.readable((token >> 2) as usize, (token & 3) as usize);
                }
            }
            self.end_round(began, n > 0);
        }
    }

    /// The io_uring loop: the epoll loop's rounds (commands first, then datagrams, timers,
    /// pacing), with completions in place of ready sockets. Each round's sends are submitted
    /// by the wait that begins the next one.
    fn run_uring(mut self) {
        let mut completions = Vec::new();
        loop {
            let Io::Uring(uring) = &mut self.io else { unreachable!("an io_uring worker") };
            let slab = self.batch.slab.as_mut().expect("an io_uring worker's send slab");
            for entry in slab.unpushed() {
                if let Err(error) = uring.send(entry) {
                    tracing::error!(%error, "media worker: a send cannot be queued");
                }
            }
            uring.publish();
            let wait =
                self.next_scan.saturating_duration_since(Instant::now()).min(Duration::from_millis(TIMER_IDLE_MS));
            if let Err(e) = uring.wait(wait, &mut completions) {
                tracing::error!(error = %e, "media worker: io_uring wait failed");
                std::thread::sleep(Duration::from_millis(TIMER_TICK_MS));
            }
            if uring.drained() {
                // Every send submitted has been issued (uring.rs): their entries are free.
                slab.issued();
            }
            let began = Instant::now();
            self.round += 1;
            self.backlog = false;
            // The wake-up poll may post several completions in a round; it is armed again when
            // any of them is its last.
            let mut wakes = completions.iter().filter(|c| c.user_data == WAKE_TAG).peekable();
            if wakes.peek().is_some() {
                self.wake.reset();
            }
            if wakes.any(|wake| !wake.more())
                && let Io::Uring(uring) = &mut self.io
                && let Err(error) = uring.poll(self.wake.fd())
            {
                tracing::error!(%error, "media worker: the wake-up poll cannot be armed");
            }
            self.take_commands();
            for token in std::mem::take(&mut self.rearm) {
                self.arm_again(token);
            }
            let mut datagrams = 0;
            for c in &completions {
                match c.user_data {
                    WAKE_TAG | CANCEL_TAG => {}
                    data if data & SEND_TAG != 0 => self.sent(c, data & !SEND_TAG),
                    token => datagrams += self.received(c, token),
                }
            }
            if let Io::Uring(uring) = &mut self.io {
                uring.publish();
            }
            self.end_round(began, datagrams > 0);
        }
    }

    /// Every command queued so far, in order.
    fn take_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.command(command);
        }
    }

    /// The timers due, then the pacing (module doc): after a round that found datagrams and
    /// left no socket with a backlog, let datagrams gather until PACE_US after it began.
    fn end_round(&mut self, began: Instant, found: bool) {
        let now = Instant::now();
        if now >= self.next_scan {
            self.scan();
        }
        if found && !self.backlog {
            let resume = began + Duration::from_micros(PACE_US);
            if let Some(pause) = resume.checked_duration_since(now).filter(|pause| !pause.is_zero()) {
                std::thread::sleep(pause);
            }
        }
    }

    /// A failed send's completion (sends that succeed post none): counted against its
    /// session, `owner`.
    fn sent(&mut self, c: &Completion, owner: u64) {
        let (generation, slot, _) = token_parts(owner);
        if self.generations.get(slot) == Some(&generation)
            && let Some(session) = self.slots.get_mut(slot).and_then(Option::as_mut)
        {
            session.counts.dropped += 1;
            session.counts.packets_out = session.counts.packets_out.saturating_sub(1);
        }
        tracing::debug!(error = %std::io::Error::from_raw_os_error(-c.result), "RTP send failed; packet dropped");
    }

    /// A receive's completion: its datagram relayed (or dropped, for a parked set), its buffer
    /// given back, the receive armed again if it stopped. Returns the datagrams taken (0 or 1).
    fn received(&mut self, c: &Completion, token: u64) -> usize {
        let (generation, slot, index) = token_parts(token);
        let current =
            self.generations.get(slot) == Some(&generation) && self.slots.get(slot).is_some_and(Option::is_some);
        if !c.more() {
            let key = (generation, slot);
            if current && let Some(session) = self.slots[slot].as_mut() {
                session.armed &= !(1 << index);
            } else if let Some(session) = self.closing.get_mut(&key) {
                session.armed &= !(1 << index);
                if session.armed == 0 {
                    // Its last receive ended: the sockets close, the ports return.
                    self.closing.remove(&key);
                }
            }
        }
        let mut taken = 0;
        if let Some(id) = c.buffer() {
            if current && c.result >= 0 && !self.throttle(slot, index, token, c.more()) {
                taken = self.uring_datagram(slot, index, id, c.result);
            }
            if let Io::Uring(uring) = &mut self.io {
                uring.recycle(id);
            }
        }
        if c.result == -libc::ENOBUFS {
            // Every buffer was taken this round: more waits in the sockets, so no pause.
            self.backlog = true;
        }
        if !c.more() && current {
            match self.slots[slot].as_mut() {
                // A throttled socket waits a round: what floods it meanwhile is dropped by the
                // kernel when its buffer is full, costing pbx nothing (as with epoll).
                Some(session) if session.throttled & (1 << index) != 0 => {
                    session.throttled &= !(1 << index);
                    self.rearm.push(token);
                }
                _ => self.arm_again(token),
            }
        }
        taken
    }

    /// Counts a datagram of socket `index` against its round's share; past
    /// [`URING_SOCKET_ROUND_MAX`] it is dropped, and the socket's receive is cancelled so the
    /// socket sits out a round. Returns whether dropped.
    fn throttle(&mut self, slot: usize, index: usize, token: u64, armed: bool) -> bool {
        let round = self.round;
        let Some(session) = self.slots[slot].as_mut() else { return false };
        if session.ready_round[index] != round {
            session.ready_round[index] = round;
            session.taken[index] = 0;
        }
        session.taken[index] = session.taken[index].saturating_add(1);
        if session.taken[index] <= URING_SOCKET_ROUND_MAX {
            return false;
        }
        session.counts.dropped += 1;
        if armed
            && session.throttled & (1 << index) == 0
            && let Io::Uring(uring) = &mut self.io
        {
            session.throttled |= 1 << index;
            self.backlog = true;
            if let Err(error) = uring.cancel(token) {
                tracing::warn!(%error, "media worker: a flooded socket's receive cannot be cancelled");
            }
        }
        true
    }

    /// Arms the receive `token` names again, if its session is still there.
    fn arm_again(&mut self, token: u64) {
        let (generation, slot, index) = token_parts(token);
        if self.generations.get(slot) != Some(&generation) {
            return;
        }
        if let Some(session) = self.slots.get_mut(slot).and_then(Option::as_mut)
            && let Io::Uring(uring) = &mut self.io
        {
            match uring.receive(session.sockets[index].as_raw_fd(), token) {
                Ok(()) => session.armed |= 1 << index,
                Err(error) => tracing::error!(%error, "media worker: a socket's receive cannot be armed again"),
            }
        }
    }

    fn uring_datagram(&mut self, slot: usize, index: usize, id: u16, result: i32) -> usize {
        let Io::Uring(uring) = &self.io else { return 0 };
        let Some(received) = uring.received(id, result) else { return 0 };
        let Some(session) = self.slots[slot].as_mut() else { return 0 };
        if session.parked().is_some() {
            // Between calls: whatever comes is read and dropped, so nothing queues.
            session.counts.dropped += 1;
            return 0;
        }
        let into = &mut self.batch.slots[0];
        let n = received.payload.len().min(into.buf.len());
        into.buf[..n].copy_from_slice(&received.payload[..n]);
        into.len = received.len;
        if let Some(source) = received.source {
            into.address = source;
        }
        if let Some(slab) = self.batch.slab.as_mut() {
            slab.owner = receive_token(self.generations[slot], slot, 0);
        }
        self.guarded(slot, |session, batch| session.datagrams(index, batch, 1));
        1
    }

    fn readable(&mut self, slot: usize, index: usize) {
        let Some(session) = self.slots.get_mut(slot).and_then(Option::as_mut) else { return };
        if session.parked().is_some() {
            // Between calls: whatever comes is read and dropped, so nothing queues.
            if let Ok(n) = self.batch.receive(session.sockets[index].as_raw_fd(), BATCH_DATAGRAMS_MAX) {
                session.counts.dropped += n as u64;
            }
            return;
        }
        // One datagram, unless the socket was ready in the round before too (module doc).
        let backlog = session.ready_round[index] + 1 == self.round;
        session.ready_round[index] = self.round;
        let max = if backlog { BATCH_DATAGRAMS_MAX } else { 1 };
        let n = match self.batch.receive(session.sockets[index].as_raw_fd(), max) {
            Ok(n) => n,
            Err(error) => {
                let (side, kind) = socket_of(index);
                tracing::debug!(?side, ?kind, %error, "RTP receive failed");
                return;
            }
        };
        self.backlog |= max > 1 && n == max;
        if n > 0 {
            self.guarded(slot, |session, batch| session.datagrams(index, batch, n));
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Add(session) => self.add(session),
            Command::Reuse { token, fresh } => self.reuse(token, *fresh),
            Command::Configure { id, side, peer } => {
                if let Some(&slot) = self.by_id.get(&id) {
                    if let Some(session) = &self.slots[slot] {
                        session.fresh.shared.pending.fetch_sub(1, Ordering::AcqRel);
                    }
                    self.guarded(slot, |session, _| session.configure(side, peer));
                }
            }
            Command::Keys { id, side, keys } => {
                if let Some(&slot) = self.by_id.get(&id) {
                    if let Some(session) = &self.slots[slot] {
                        session.fresh.shared.pending.fetch_sub(1, Ordering::AcqRel);
                    }
                    self.guarded(slot, |session, _| {
                        session.fresh.srtp[side.index()] = keys.map(|k| SrtpSession::new(&k.remote, &k.local));
                    });
                }
            }
            Command::Panic { id } => {
                if let Some(&slot) = self.by_id.get(&id) {
                    self.guarded(slot, |_, _| panic!("media: panic injected by the test hook"));
                }
            }
            Command::Remove { id } => {
                if let Some(&slot) = self.by_id.get(&id)
                    && !self.park(slot)
                {
                    self.by_id.remove(&id);
                    self.vacate(slot);
                }
            }
        }
    }

    /// Parks the session's sockets in the pool if it has room (module doc, **Parking**): the
    /// session stays in its slot, under its id, until it is revived or closed.
    fn park(&mut self, slot: usize) -> bool {
        let Some(session) = self.slots[slot].as_mut() else { return false };
        let token = session.fresh.id * TOKEN_SPAN + self.index as u64;
        let ports = match session.lease.ports[..] {
            [a, b] => [a, b],
            _ => return false,
        };
        let idle_ms = {
            let mut pool = lock(&session.lease.pool);
            if session.parked().is_some() || !pool.park(ports, token) {
                return false;
            }
            record_in_use(&pool);
            pool.parked_idle_ms()
        };
        session.lease.parked = Some(token);
        session.counts.flush(&session.fresh.relay);
        session.due = Instant::now() + Duration::from_millis(idle_ms);
        self.next_scan = self.next_scan.min(session.due);
        true
    }

    /// A new session on the set parked under `token`.
    fn reuse(&mut self, token: u64, fresh: Fresh) {
        let parked = self
            .by_id
            .get(&(token / TOKEN_SPAN))
            .copied()
            .filter(|&slot| self.slots[slot].as_ref().is_some_and(|session| session.parked() == Some(token)));
        let Some(slot) = parked else {
            // Cannot happen: a set drawn from the park is closed by nobody else.
            tracing::error!("media worker: a parked set drawn for a call is gone");
            (fresh.events)(MediaEvent::Failed);
            return;
        };
        self.by_id.remove(&(token / TOKEN_SPAN));
        self.by_id.insert(fresh.id, slot);
        if let Some(session) = self.slots[slot].as_mut() {
            session.revive(fresh);
        }
        self.guarded(slot, |session, _| session.timer());
    }

    /// A parked session's time is up: closed if the pool still has it parked, else (drawn
    /// for a call, its `Reuse` on the way) left alone.
    fn close_parked(&mut self, slot: usize, token: u64) {
        let Some(session) = self.slots[slot].as_mut() else { return };
        if lock(&session.lease.pool).unpark(token) {
            session.lease.parked = None;
            let id = session.fresh.id;
            self.by_id.remove(&id);
            self.vacate(slot);
        } else {
            session.due = Instant::now() + Duration::from_secs(3_600);
        }
    }

    fn add(&mut self, session: Box<Session>) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if self.generations.len() < self.slots.len() {
            self.generations.resize(self.slots.len(), 0);
        }
        let mut session = session;
        for i in 0..4 {
            let socket = &session.sockets[i];
            let armed = match &mut self.io {
                Io::Epoll(epoll) => epoll.add(socket.as_raw_fd(), (slot as u64) << 2 | i as u64),
                Io::Uring(uring) => {
                    uring.fix(socket.as_raw_fd());
                    uring.receive(socket.as_raw_fd(), receive_token(self.generations[slot], slot, i)).map(|()| {
                        session.armed |= 1 << i;
                    })
                }
            };
            if let Err(e) = armed {
                // Only when the kernel is out of memory: the call cannot have media.
                tracing::error!(error = %e, "media worker: a socket cannot be watched");
                (session.fresh.events)(MediaEvent::Failed);
                // Receives armed before the failure are cancelled before the sockets close.
                self.slots[slot] = Some(session);
                self.vacate(slot);
                return;
            }
        }
        self.by_id.insert(session.fresh.id, slot);
        self.slots[slot] = Some(session);
        self.guarded(slot, |session, _| session.timer());
    }

    /// Runs `f` on the session in `slot`; if it panics, the session is reported failed and
    /// dropped (its sockets close, its ports return) and the worker goes on.
    fn guarded(&mut self, slot: usize, f: impl FnOnce(&mut Session, &mut Batch)) {
        let Some(session) = self.slots[slot].as_mut() else { return };
        let batch = &mut self.batch;
        let result = catch_unwind(AssertUnwindSafe(|| f(session, batch)));
        let Some(session) = self.slots[slot].as_ref() else { return };
        if result.is_ok() {
            let due = session.due.max(self.last_scan + Duration::from_millis(TIMER_TICK_MS));
            self.next_scan = self.next_scan.min(due);
            return;
        }
        (session.fresh.events)(MediaEvent::Failed);
        let id = session.fresh.id;
        self.by_id.remove(&id);
        self.vacate(slot);
    }

    /// Drops the session in `slot` (its sockets close, its ports return) and frees the slot.
    /// An io_uring worker first cancels the sockets' receives, so the ring lets go of them
    /// before they close and their ports can be bound again.
    fn vacate(&mut self, slot: usize) {
        let session = self.slots[slot].take();
        self.free.push(slot);
        if let Io::Uring(uring) = &mut self.io
            && let Some(session) = &session
        {
            // Sends from it are over; the ring's table must not hold its sockets open.
            for socket in &session.sockets {
                uring.unfix(socket.as_raw_fd());
            }
        }
        if let Io::Uring(uring) = &mut self.io
            && let Some(session) = session
            && session.armed != 0
        {
            let generation = self.generations[slot];
            for index in (0..4).filter(|index| session.armed & (1 << index) != 0) {
                if let Err(error) = uring.cancel(receive_token(generation, slot, index)) {
                    tracing::warn!(%error, "media worker: cancelling a socket's receive failed");
                }
            }
            self.generations[slot] = generation.wrapping_add(1) & GENERATION_MASK;
            self.closing.insert((generation, slot), session);
        } else if let Some(generation) = self.generations.get_mut(slot) {
            *generation = generation.wrapping_add(1) & GENERATION_MASK;
        }
    }

    /// Runs the timer of every session due, and finds when the next is.
    fn scan(&mut self) {
        let now = Instant::now();
        self.last_scan = now;
        self.next_scan = now + Duration::from_millis(TIMER_IDLE_MS);
        for slot in 0..self.slots.len() {
            let Some(session) = &self.slots[slot] else { continue };
            match (session.due <= now, session.parked()) {
                (true, Some(token)) => self.close_parked(slot, token),
                (true, None) => self.guarded(slot, |session, _| session.timer()),
                (false, _) => {}
            }
            if let Some(session) = &self.slots[slot] {
                self.next_scan = self.next_scan.min(session.due.max(now));
            }
        }
        self.next_scan = self.next_scan.max(now + Duration::from_millis(TIMER_TICK_MS));
    }
}

#[cfg(test)]
mod tests;

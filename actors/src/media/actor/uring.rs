//! The media workers' io_uring loop's kernel side: one ring per worker, a multishot `recvmsg`
//! per socket into a ring of provided buffers (no `epoll`, no receive call per datagram),
//! sends queued as `send` submissions with their destination (no `sendto` per datagram), and
//! one `io_uring_enter` per round that submits them and waits for the next completions.
//! docs/PERFORMANCE.md ("The kernel's floor under RTP") measured the saving before this was
//! built: 24–34 % of a relayed packet's CPU.
//!
//! Two costs per datagram go further than that. Sends name their socket by its slot in the
//! ring's table of registered files (its descriptor number: [`Uring::fix`]), so the kernel
//! takes no reference on the file per send. And a send posts no completion unless it fails
//! (`IOSQE_CQE_SKIP_SUCCESS`): with `MSG_DONTWAIT` a send that cannot go at once fails with
//! `EAGAIN` instead of waiting in the ring, so every send has been issued, done or failed,
//! by the time the `io_uring_enter` that submitted it returns.
//!
//! Safety rests on three rules, each kept here:
//! - the provided buffers and the ring of their descriptors live as long as the ring that
//!   writes into them (both are dropped after it: field order);
//! - a send's bytes and destination sit in a [`SendSlab`] entry from the moment its
//!   submission is queued until an `io_uring_enter` has taken every queued submission (the
//!   submission queue is empty after it: [`Uring::drained`]); sends are issued in that call
//!   (above), so the entries are free after it;
//! - the `msghdr` the multishot receives were armed with is boxed, so it does not move.

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// Completions of (failed) sends carry this bit; the rest of their user data is the token of
/// the session whose datagram it was.
pub const SEND_TAG: u64 = 1 << 62;
/// Completions of cancellations (nothing to do but count them gone).
pub const CANCEL_TAG: u64 = 1 << 61;
/// The eventfd's multishot poll.
pub const WAKE_TAG: u64 = 1 << 60;
/// A receive's user data holds its slot's generation in bits 32–59, below the tags: the
/// generation counts modulo this.
pub const GENERATION_MASK: u32 = 0x0fff_ffff;
/// The provided buffers' group.
const GROUP: u16 = 1;
/// Registered files at most per ring (one slot per descriptor number below it).
const FIXED_FILES_MAX: u64 = 65_536;

/// One completion, copied out of the ring so the worker may push new submissions while it
/// goes through them.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// More completions follow from the same (multishot) request.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// A datagram as a multishot receive left it in a provided buffer.
pub struct Received<'a> {
    pub payload: &'a [u8],
    /// Its real length (more than `payload` when it did not fit).
    pub len: usize,
    pub source: Option<SocketAddr>,
}

/// The ring's descriptors of the provided buffers: page-aligned memory the kernel reads.
struct BufRing {
    base: *mut types::BufRingEntry,
    bytes: usize,
    entries: u16,
    /// The tail this side has written up to; published with [`Uring::publish`].
    tail: u16,
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: `base` came from mmap of `bytes`, and the ring that used it is gone (field
        // order in `Uring`).
        unsafe { libc::munmap(self.base.cast(), self.bytes) };
    }
}

pub struct Uring {
    // First, so it drops (and the kernel lets go of the buffers) before them.
    ring: IoUring,
    ring_buffers: BufRing,
    buffers: Box<[u8]>,
    buffer_bytes: usize,
    /// The shape every multishot receive writes: a name as large as any address, no control.
    msghdr: Box<libc::msghdr>,
    /// Which descriptors are in the ring's file table, at their own number.
    fixed: Vec<bool>,
}

// SAFETY: the raw pointers point into memory this value owns; it moves to its worker's
// thread once and is used only there.
unsafe impl Send for Uring {}

impl Uring {
    /// A ring of `submissions` entries and `buffers` (a power of two) provided buffers of
    /// `buffer_bytes` each. Fails where io_uring is switched off (`kernel.io_uring_disabled`,
    /// a seccomp filter) or too old (multishot `recvmsg` needs Linux 6.0).
    pub fn new(submissions: u32, buffers: u16, buffer_bytes: usize) -> io::Result<Uring> {
        assert!(buffers.is_power_of_two(), "buffer count");
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(submissions * 8)
            .build(submissions)?;
        let bytes = (usize::from(buffers) * size_of::<types::BufRingEntry>()).next_multiple_of(4096);
        // SAFETY: a fresh anonymous private mapping, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring_buffers = BufRing { base: base.cast(), bytes, entries: buffers, tail: 0 };
        // SAFETY: the mapping is page-aligned, holds `buffers` entries and outlives the ring.
        unsafe { ring.submitter().register_buf_ring_with_flags(base as u64, buffers, GROUP, 0)? };
        // SAFETY: all-zero is a valid msghdr.
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // A table as large as the descriptors the process may open (within reason); where the
        // kernel refuses one, sends name their descriptors as plain ones.
        let table = open_files().min(FIXED_FILES_MAX) as u32;
        let fixed = match ring.submitter().register_files_sparse(table) {
            Ok(()) => vec![false; table as usize],
            Err(_) => Vec::new(),
        };
        let mut uring = Uring {
            ring,
            ring_buffers,
            buffers: vec![0u8; usize::from(buffers) * buffer_bytes].into_boxed_slice(),
            buffer_bytes,
            msghdr,
            fixed,
        };
        for id in 0..buffers {
            uring.recycle(id);
        }
        uring.publish();
        Ok(uring)
    }

    /// Gives buffer `id` back to the kernel (seen once [`publish`](Self::publish)ed).
    pub fn recycle(&mut self, id: u16) {
        let r = &mut self.ring_buffers;
        let index = usize::from(r.tail & (r.entries - 1));
        // SAFETY: `index` < `entries`, within the mapping; the kernel reads only entries up to
        // the published tail, and this one is past it.
        let entry = unsafe { &mut *r.base.add(index) };
        let start = usize::from(id) * self.buffer_bytes;
        entry.set_addr(self.buffers[start..].as_ptr() as u64);
        entry.set_len(self.buffer_bytes as u32);
        entry.set_bid(id);
        r.tail = r.tail.wrapping_add(1);
    }

    /// Publishes the buffers recycled so far.
    pub fn publish(&mut self) {
        let r = &self.ring_buffers;
        // SAFETY: the tail field shares the first entry's reserved field (the ring's layout);
        // a release store so the kernel sees the entries written before it.
        unsafe {
            let tail = types::BufRingEntry::tail(r.base).cast_mut();
            std::sync::atomic::AtomicU16::from_ptr(tail).store(r.tail, std::sync::atomic::Ordering::Release);
        }
    }

    /// Queues `entry`, submitting what is queued first when the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY (for every entry pushed here): what it points at is kept alive per the
        // module doc's rules.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring.submit()?;
        }
        Ok(())
    }

    /// Receives every datagram `fd` gets, each as a completion with `user_data`, until
    /// cancelled or stopped (a completion without [`Completion::more`]: arm it again).
    pub fn receive(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let entry = opcode::RecvMsgMulti::new(types::Fd(fd), &*self.msghdr, GROUP).build().user_data(user_data);
        self.push(entry)
    }

    /// Completions (`WAKE_TAG`) each time `fd` becomes readable.
    pub fn poll(&mut self, fd: RawFd) -> io::Result<()> {
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).multi(true).build().user_data(WAKE_TAG);
        self.push(entry)
    }

    /// Queues the cancellation of the request armed with `user_data` (submitted by the next
    /// wait); the request then ends with a completion without `more`.
    pub fn cancel(&mut self, user_data: u64) -> io::Result<()> {
        self.push(opcode::AsyncCancel::new(user_data).build().user_data(CANCEL_TAG))
    }

    /// Puts `fd` in the ring's file table (at its own number), so sends from it skip the
    /// kernel's lookup of the file; [`unfix`](Self::unfix) it before it closes, or the table's
    /// reference keeps the socket (and its port) open.
    pub fn fix(&mut self, fd: RawFd) {
        let Ok(at) = usize::try_from(fd) else { return };
        if at < self.fixed.len()
            && !self.fixed[at]
            && self.ring.submitter().register_files_update(at as u32, &[fd]).is_ok()
        {
            self.fixed[at] = true;
        }
    }

    /// Takes `fd` out of the ring's file table, if it is there.
    pub fn unfix(&mut self, fd: RawFd) {
        let Ok(at) = usize::try_from(fd) else { return };
        if self.fixed.get(at) == Some(&true) {
            if let Err(error) = self.ring.submitter().register_files_update(at as u32, &[-1]) {
                tracing::error!(%error, "media worker: a socket cannot leave the ring's file table");
            }
            self.fixed[at] = false;
        }
    }

    /// Queues the send of slab entry `e`; it posts a completion only if it fails. A socket in
    /// the file table is named by its slot, which is its descriptor number: the same field,
    /// with the flag that says so.
    pub fn send(&mut self, e: &SendEntry) -> io::Result<()> {
        let fixed = usize::try_from(e.fd).is_ok_and(|at| self.fixed.get(at) == Some(&true));
        let flags =
            if fixed { squeue::Flags::SKIP_SUCCESS | squeue::Flags::FIXED_FILE } else { squeue::Flags::SKIP_SUCCESS };
        let entry = opcode::Send::new(types::Fd(e.fd), e.buf.as_ptr(), e.len)
            .flags(libc::MSG_DONTWAIT)
            .dest_addr((&e.address as *const libc::sockaddr_storage).cast())
            .dest_addr_len(e.address_len)
            .build()
            .flags(flags)
            .user_data(SEND_TAG | e.owner);
        self.push(entry)
    }

    /// Whether the kernel has taken every submission queued (after a [`wait`](Self::wait)):
    /// then every send queued before it has been issued, and its slab entry is free.
    pub fn drained(&mut self) -> bool {
        self.ring.submission().is_empty()
    }

    /// Submits what is queued and waits up to `timeout` for a completion; then takes every
    /// completion there is into `into` (cleared first).
    pub fn wait(&mut self, timeout: Duration, into: &mut Vec<Completion>) -> io::Result<()> {
        let ts = types::Timespec::new().sec(timeout.as_secs()).nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        into.clear();
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        into.extend(self.ring.completion().map(|c| Completion {
            user_data: c.user_data(),
            result: c.result(),
            flags: c.flags(),
        }));
        Ok(())
    }

    /// The datagram a receive completion left in buffer `id` (`result`: its byte count).
    pub fn received(&self, id: u16, result: i32) -> Option<Received<'_>> {
        let start = usize::from(id) * self.buffer_bytes;
        let buffer = &self.buffers[start..start + (result.max(0) as usize).min(self.buffer_bytes)];
        let out = types::RecvMsgOut::parse(buffer, &self.msghdr).ok()?;
        let len =
            if out.is_payload_truncated() { out.incoming_payload_len() as usize } else { out.payload_data().len() };
        let name = out.name_data();
        let source = (name.len() >= size_of::<libc::sa_family_t>()).then(|| {
            // SAFETY: all-zero is a valid sockaddr_storage; at most its size is copied in.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let n = name.len().min(size_of::<libc::sockaddr_storage>());
            // SAFETY: both regions are at least `n` bytes and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(name.as_ptr(), (&mut storage as *mut libc::sockaddr_storage).cast(), n)
            };
            super::sys::read_address(&storage)
        });
        // The payload ends the bytes the kernel wrote (`result` counts the header, the name,
        // the control data and the payload).
        let payload = &buffer[buffer.len() - out.payload_data().len()..];
        Some(Received { payload, len, source: source.flatten() })
    }
}

/// One queued send: its bytes, destination and socket, held until its submission is issued.
pub struct SendEntry {
    buf: Box<[u8]>,
    len: u32,
    address: libc::sockaddr_storage,
    address_len: libc::socklen_t,
    fd: RawFd,
    /// Whose send it is (the worker's token for the session), to count a failure against.
    owner: u64,
}

/// A round's sends: entries written in order, submitted by the next wait, and all free again
/// once that wait has drained the submission queue (module doc).
pub struct SendSlab {
    entries: Vec<SendEntry>,
    /// Entries `[0, used)` hold sends not yet known to be issued.
    used: usize,
    /// Entries `[0, pushed)` are in the submission queue or issued.
    pushed: usize,
    capacity: usize,
    entry_bytes: usize,
    /// Whose datagrams the worker is relaying now ([`SendEntry::owner`]).
    pub owner: u64,
}

impl SendSlab {
    pub fn new(capacity: usize, entry_bytes: usize) -> SendSlab {
        SendSlab { entries: Vec::new(), used: 0, pushed: 0, capacity, entry_bytes, owner: 0 }
    }

    /// Copies `bytes` for `to` into the next entry, queued to go from `fd`; `false` when
    /// every entry is taken (the datagram is dropped, as a full socket buffer would).
    pub fn queue(&mut self, fd: RawFd, bytes: &[u8], to: SocketAddr) -> bool {
        if self.used == self.entries.len() {
            if self.entries.len() >= self.capacity {
                return false;
            }
            // SAFETY: all-zero is a valid sockaddr_storage.
            let address = unsafe { std::mem::zeroed() };
            let buf = vec![0u8; self.entry_bytes].into_boxed_slice();
            self.entries.push(SendEntry { buf, len: 0, address, address_len: 0, fd: -1, owner: 0 });
        }
        let e = &mut self.entries[self.used];
        let n = bytes.len().min(e.buf.len());
        e.buf[..n].copy_from_slice(&bytes[..n]);
        e.len = n as u32;
        e.address_len = super::sys::write_address(to, &mut e.address) as libc::socklen_t;
        e.fd = fd;
        e.owner = self.owner;
        self.used += 1;
        true
    }

    /// The entries queued since the last call, to submit now.
    pub fn unpushed(&mut self) -> &[SendEntry] {
        let from = self.pushed;
        self.pushed = self.used;
        &self.entries[from..self.used]
    }

    /// Every send pushed has been issued: the entries are free.
    pub fn issued(&mut self) {
        // Sends are queued only while a round's completions are handled, after this.
        if self.used == self.pushed {
            self.used = 0;
            self.pushed = 0;
        }
    }
}

/// The soft open-file limit (descriptors are below it).
fn open_files() -> u64 {
    // SAFETY: all-zero is a valid rlimit, which the call fills.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1_024;
    }
    limit.rlim_cur
}

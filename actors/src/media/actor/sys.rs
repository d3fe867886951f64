//! The few Linux calls the media workers make that std and tokio do not offer: an epoll set,
//! an eventfd to wake it, and `recvmmsg`/`sendmmsg` to move several datagrams of one socket per
//! system call (`recvfrom`/`sendto` for a single one: a phone's socket usually has one packet
//! per read, and for one datagram those cost the kernel about 0.2 µs and 0.1 µs less, since
//! it copies no message header and imports no vector). Thin and safe to call: every buffer
//! handed to the kernel is borrowed for the call only, and every result is checked.
//!
//! The calls made per datagram or per wait (`recvmmsg`, `sendmmsg`, `recvfrom`, `sendto`,
//! `epoll_pwait`) go to the kernel through `syscall(2)` on x86-64 and AArch64 rather than
//! through glibc's wrappers: those are thread-cancellation points, which switch asynchronous cancellation on
//! and off around every call (≈ 4 % of a media worker's CPU), and nothing in a Rust process
//! cancels threads.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result) }
}

fn check_size(result: isize) -> io::Result<usize> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result as usize) }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod raw {
    //! The calls without glibc's cancellation wrappers (module doc); same arguments and
    //! results (−1 and errno on failure).

    /// # Safety
    /// As `epoll_pwait(2)`: `events` has room for `max` entries.
    pub unsafe fn epoll_wait(
        epfd: libc::c_int,
        events: *mut libc::epoll_event,
        max: libc::c_int,
        timeout_ms: libc::c_int,
    ) -> libc::c_int {
        // SAFETY: the caller's; a null signal mask makes this epoll_wait.
        unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait,
                epfd,
                events,
                max,
                timeout_ms,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            ) as libc::c_int
        }
    }

    /// # Safety
    /// As `recvmmsg(2)` with no timeout.
    pub unsafe fn recvmmsg(
        fd: libc::c_int,
        headers: *mut libc::mmsghdr,
        n: libc::c_uint,
        flags: libc::c_int,
    ) -> libc::c_int {
        // SAFETY: the caller's.
        unsafe {
            libc::syscall(libc::SYS_recvmmsg, fd, headers, n, flags, std::ptr::null_mut::<libc::timespec>())
                as libc::c_int
        }
    }

    /// # Safety
    /// As `sendmmsg(2)`.
    pub unsafe fn sendmmsg(
        fd: libc::c_int,
        headers: *mut libc::mmsghdr,
        n: libc::c_uint,
        flags: libc::c_int,
    ) -> libc::c_int {
        // SAFETY: the caller's.
        unsafe { libc::syscall(libc::SYS_sendmmsg, fd, headers, n, flags) as libc::c_int }
    }

    /// # Safety
    /// As `recvfrom(2)`.
    pub unsafe fn recvfrom(
        fd: libc::c_int,
        buf: *mut u8,
        len: usize,
        flags: libc::c_int,
        address: *mut libc::sockaddr,
        address_len: *mut libc::socklen_t,
    ) -> isize {
        // SAFETY: the caller's.
        unsafe { libc::syscall(libc::SYS_recvfrom, fd, buf, len, flags, address, address_len) as isize }
    }

    /// # Safety
    /// As `sendto(2)`.
    pub unsafe fn sendto(
        fd: libc::c_int,
        buf: *const u8,
        len: usize,
        flags: libc::c_int,
        address: *const libc::sockaddr,
        address_len: libc::socklen_t,
    ) -> isize {
        // SAFETY: the caller's.
        unsafe { libc::syscall(libc::SYS_sendto, fd, buf, len, flags, address, address_len) as isize }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod raw {
    //! Elsewhere, glibc's calls (the syscall numbers and time types vary).

    pub unsafe fn epoll_wait(
        epfd: libc::c_int,
        events: *mut libc::epoll_event,
        max: libc::c_int,
        timeout_ms: libc::c_int,
    ) -> libc::c_int {
        // SAFETY: the caller's.
        unsafe { libc::epoll_wait(epfd, events, max, timeout_ms) }
    }

    pub unsafe fn recvmmsg(
        fd: libc::c_int,
        headers: *mut libc::mmsghdr,
        n: libc::c_uint,
        flags: libc::c_int,
    ) -> libc::c_int {
        // SAFETY: the caller's.
        unsafe { libc::recvmmsg(fd, headers, n, flags, std::ptr::null_mut()) }
    }

    pub unsafe fn sendmmsg(
        fd: libc::c_int,
        headers: *mut libc::mmsghdr,
        n: libc::c_uint,
        flags: libc::c_int,
    ) -> libc::c_int {
        // SAFETY: the caller's.
        unsafe { libc::sendmmsg(fd, headers, n, flags) }
    }

    pub unsafe fn recvfrom(
        fd: libc::c_int,
        buf: *mut u8,
        len: usize,
        flags: libc::c_int,
        address: *mut libc::sockaddr,
        address_len: *mut libc::socklen_t,
    ) -> isize {
        // SAFETY: the caller's.
        unsafe { libc::recvfrom(fd, buf.cast(), len, flags, address, address_len) }
    }

    pub unsafe fn sendto(
        fd: libc::c_int,
        buf: *const u8,
        len: usize,
        flags: libc::c_int,
        address: *const libc::sockaddr,
        address_len: libc::socklen_t,
    ) -> isize {
        // SAFETY: the caller's.
        unsafe { libc::sendto(fd, buf.cast(), len, flags, address, address_len) }
    }
}

/// A level-triggered epoll set whose events carry a `u64` token.
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; the descriptor returned is owned from here on.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor no one else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for readability; `token` comes back with each event. A closed descriptor
    /// leaves the set by itself.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `event` lives across the call.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) }).map(drop)
    }

    /// Waits up to `timeout_ms` (−1: forever) for ready descriptors, written into `events`;
    /// returns how many. An interrupted wait returns 0.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: the kernel writes at most `max` entries into `events`.
        match check(unsafe { raw::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) }) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// An eventfd: other threads [`wake`](EventFd::wake) the worker waiting on an epoll set.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: no pointers; the descriptor returned is owned from here on.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` is a fresh descriptor no one else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from `one`. A full counter (2^64 − 2 wakes unread) fails with
        // EAGAIN, and the worker is awake then anyway.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Clears the wakes so far (level-triggered: else the set stays ready).
    pub fn reset(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count`; EAGAIN (nothing to clear) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

/// One datagram slot of a batch: its bytes, and what the kernel said of it.
pub struct Slot {
    pub buf: Box<[u8]>,
    /// Bytes received (possibly more than `buf` holds: then it was truncated), or to send.
    pub len: usize,
    /// The source of a received datagram, the destination of one to send.
    pub address: SocketAddr,
}

/// Buffers for up to `n` datagrams of `bytes` each, and the kernel's headers for them.
pub struct Batch {
    pub slots: Vec<Slot>,
    /// With an io_uring worker: sends are copied here and submitted by the worker's ring
    /// instead of sent by a system call each.
    pub slab: Option<super::uring::SendSlab>,
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    addresses: Vec<libc::sockaddr_storage>,
}

// SAFETY: the raw pointers in `headers` and `iovecs` are rebuilt before every call and point
// only into the batch's own buffers; nothing is shared.
unsafe impl Send for Batch {}

impl Batch {
    pub fn new(n: usize, bytes: usize) -> Batch {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Batch {
            slots: (0..n)
                .map(|_| Slot { buf: vec![0u8; bytes].into_boxed_slice(), len: 0, address: unspecified })
                .collect(),
            slab: None,
            // SAFETY: all-zero is a valid value of these plain C structs.
            headers: (0..n).map(|_| unsafe { MaybeUninit::zeroed().assume_init() }).collect(),
            iovecs: (0..n).map(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }).collect(),
            // SAFETY: as above.
            addresses: (0..n).map(|_| unsafe { MaybeUninit::zeroed().assume_init() }).collect(),
        }
    }

    fn prepare(&mut self, n: usize, receive: bool) {
        for i in 0..n {
            let slot = &mut self.slots[i];
            let len = if receive { slot.buf.len() } else { slot.len };
            self.iovecs[i] = libc::iovec { iov_base: slot.buf.as_mut_ptr().cast(), iov_len: len };
            let address_len = if receive {
                size_of::<libc::sockaddr_storage>()
            } else {
                write_address(slot.address, &mut self.addresses[i])
            };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = (&mut self.addresses[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = address_len as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
    }

    /// Receives what `fd` has queued, up to `max` datagrams (at most the batch's size),
    /// without waiting: the datagrams are `slots[..n]`. `Ok(0)`: nothing queued.
    pub fn receive(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let n = max.min(self.slots.len());
        if n == 1 {
            return self.receive_one(fd);
        }
        self.prepare(n, true);
        // SAFETY: every header points into this batch's buffers, which outlive the call; the
        // kernel writes at most `n` headers, each within its iovec and address.
        let result =
            unsafe { raw::recvmmsg(fd, self.headers.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
        let received = match check(result) {
            Ok(received) => received as usize,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        for i in 0..received {
            let header = &self.headers[i];
            // MSG_TRUNC in flags: msg_len is the datagram's real length, longer than the buffer.
            self.slots[i].len = header.msg_len as usize;
            self.slots[i].address = read_address(&self.addresses[i]).unwrap_or(self.slots[i].address);
        }
        Ok(received)
    }

    /// One datagram into `slots[0]` by `recvfrom`: the kernel copies no message header and
    /// imports no vector, which for the usual read of a phone's one packet per 20 ms costs
    /// less than `recvmmsg` of one (docs/PERFORMANCE.md, "The kernel's floor under RTP").
    fn receive_one(&mut self, fd: RawFd) -> io::Result<usize> {
        let slot = &mut self.slots[0];
        let storage = &mut self.addresses[0];
        let mut address_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `buf.len()` bytes into the slot's buffer and at most
        // `address_len` into the address storage; both outlive the call.
        let result = unsafe {
            raw::recvfrom(
                fd,
                slot.buf.as_mut_ptr(),
                slot.buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                (storage as *mut libc::sockaddr_storage).cast(),
                &mut address_len,
            )
        };
        match check_size(result) {
            Ok(len) => {
                // MSG_TRUNC: `len` is the datagram's real length, longer than the buffer.
                slot.len = len;
                slot.address = read_address(storage).unwrap_or(slot.address);
                Ok(1)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Sends `slots[first..first + n]` (each `len` bytes to its `address`) from `fd` without
    /// waiting; returns how many the kernel took (the rest: its buffer is full). One datagram
    /// goes by `sendto`, which costs the kernel less than `sendmmsg` of one (as `receive_one`).
    pub fn send(&mut self, fd: RawFd, first: usize, n: usize) -> io::Result<usize> {
        if let Some(slab) = &mut self.slab {
            let taken = self.slots[first..first + n]
                .iter()
                .take_while(|slot| slab.queue(fd, &slot.buf[..slot.len.min(slot.buf.len())], slot.address))
                .count();
            return Ok(taken);
        }
        if n == 1 {
            let slot = &self.slots[first];
            let storage = &mut self.addresses[first];
            let address_len = write_address(slot.address, storage);
            // SAFETY: the kernel reads `len` bytes of the slot's buffer (`len` ≤ its size: set by
            // the relay from a received datagram that fit) and `address_len` of the storage.
            let result = unsafe {
                raw::sendto(
                    fd,
                    slot.buf.as_ptr(),
                    slot.len.min(slot.buf.len()),
                    libc::MSG_DONTWAIT,
                    (storage as *const libc::sockaddr_storage).cast(),
                    address_len as libc::socklen_t,
                )
            };
            return match check_size(result) {
                Ok(_) => Ok(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            };
        }
        self.prepare(first + n, false);
        // SAFETY: as in `receive`; the kernel only reads the headers and buffers here.
        let result = unsafe { raw::sendmmsg(fd, self.headers[first..].as_mut_ptr(), n as u32, libc::MSG_DONTWAIT) };
        check(result).map(|sent| sent as usize)
    }
}

pub(super) fn read_address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // and aligned enough for.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

/// Writes `address` into `storage`; returns its length.
pub(super) fn write_address(address: SocketAddr, storage: &mut libc::sockaddr_storage) -> usize {
    match address {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let s = unsafe { &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
            s.sin_zero = [0; 8];
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let s = unsafe { &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            s.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// Several queued datagrams come in one receive, with their sources, and go out in one
    /// send to their destinations, over IPv4 and IPv6; an empty socket gives 0 at once, and a
    /// receive takes no more datagrams than asked for.
    #[test]
    fn batches_round_trip() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(a) = UdpSocket::bind(local) else { continue }; // no IPv6 on this host
            let b = UdpSocket::bind(local).unwrap();
            let c = UdpSocket::bind(local).unwrap();
            a.set_nonblocking(true).unwrap();
            let mut batch = Batch::new(4, 64);
            assert_eq!(batch.receive(a.as_raw_fd(), 4).unwrap(), 0, "nothing queued");
            for payload in [&b"one"[..], b"two", &[7u8; 100]] {
                b.send_to(payload, a.local_addr().unwrap()).unwrap();
            }
            let n = batch.receive(a.as_raw_fd(), 4).unwrap();
            assert_eq!(n, 3);
            assert_eq!((&batch.slots[0].buf[..3], batch.slots[0].address), (&b"one"[..], b.local_addr().unwrap()));
            assert_eq!(&batch.slots[1].buf[..batch.slots[1].len], b"two");
            assert_eq!(batch.slots[2].len, 100, "the real length of a truncated datagram");
            for slot in &mut batch.slots[..2] {
                slot.address = c.local_addr().unwrap();
            }
            assert_eq!(batch.send(a.as_raw_fd(), 0, 2).unwrap(), 2);
            let mut buf = [0u8; 16];
            for expected in [&b"one"[..], b"two"] {
                let (len, from) = c.recv_from(&mut buf).unwrap();
                assert_eq!((&buf[..len], from), (expected, a.local_addr().unwrap()));
            }
            for payload in [&b"four"[..], b"five"] {
                b.send_to(payload, a.local_addr().unwrap()).unwrap();
            }
            assert_eq!(batch.receive(a.as_raw_fd(), 1).unwrap(), 1, "no more than asked for");
            assert_eq!(&batch.slots[0].buf[..batch.slots[0].len], b"four");
            assert_eq!(batch.receive(a.as_raw_fd(), 4).unwrap(), 1, "the rest stayed queued");
            assert_eq!(&batch.slots[0].buf[..batch.slots[0].len], b"five");
            // One datagram each way (recvfrom and sendto): its source, a truncated one's real
            // length, nothing queued, and a send of slot 1 alone.
            assert_eq!(batch.receive(a.as_raw_fd(), 1).unwrap(), 0, "nothing queued");
            c.send_to(&[9u8; 80], a.local_addr().unwrap()).unwrap();
            assert_eq!(batch.receive(a.as_raw_fd(), 1).unwrap(), 1);
            assert_eq!((batch.slots[0].len, batch.slots[0].address), (80, c.local_addr().unwrap()));
            batch.slots[1].buf[..4].copy_from_slice(b"six!");
            batch.slots[1].len = 4;
            batch.slots[1].address = b.local_addr().unwrap();
            assert_eq!(batch.send(a.as_raw_fd(), 1, 1).unwrap(), 1);
            let (len, from) = b.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..len], from), (&b"six!"[..], a.local_addr().unwrap()));
        }
    }
}

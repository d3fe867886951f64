//! The bytes of a snapshot as openraft streams them in and out: an in-memory buffer that never
//! grows past a bound and never seeks past what it holds.
//!
//! A follower receives a snapshot in chunks (`InstallSnapshot`: an offset and some bytes);
//! openraft seeks its buffer to each chunk's offset and writes the bytes there. With a plain
//! `Cursor<Vec<u8>>` a chunk at offset 2⁴⁰ zero-fills a terabyte first, so one RPC from a
//! member could exhaust the process's memory. [`SnapshotBuffer`] refuses instead:
//!
//! - a seek past the bytes received so far (a gap: a real leader sends its chunks in order and
//!   resends from at most where it was, so it never needs one), and
//! - a write that would make it longer than [`SNAPSHOT_BYTES_MAX`].
//!
//! The refusal is an I/O error, which openraft answers the sender with; the follower's Raft
//! goes on. So the memory a snapshot in progress holds is at most the bytes a member really
//! sent, and never more than the bound. Refusals are logged and counted in
//! `pbx_cluster_rpc_refusals_total{rpc="snapshot"}` (see [`super::net`], which also refuses
//! out-of-bound chunks before they reach openraft).

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Largest snapshot a node builds, sends or accepts: 1 GiB.
///
/// Derivation: a snapshot is the node's replicated state (`pbx_node::cluster` `SnapshotV`),
/// postcard. Its registrar part is bounded by the registrar's own limits: at most 10,000
/// extensions (`EXTENSIONS_MAX`) of at most ~260 bytes (number 32, display name 64, password
/// 128, flags) ≈ 2.6 MB, and 10 bindings each (`BINDINGS_PER_AOR_MAX`) of at most ~750 bytes
/// (contact 512, user agent 128, address, expiry) ≈ 75 MB. Call records have no count limit,
/// only a retention period: about 200 bytes each, the ~940 MB left hold ~4.9 million, i.e. 90
/// days (the default retention) at 55,000 calls a day — far beyond what one pbx cluster
/// carries. The leader holds a whole snapshot in memory to build it anyway, so a state larger
/// than this would strain it first; the leader warns when it builds one (see
/// [`super::store`]).
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;

/// Label of the refusal counter, shared with [`super::net`].
pub(crate) const REFUSALS_METRIC: &str = "pbx_cluster_rpc_refusals_total";

/// A snapshot's bytes, in memory, bounded. See the module documentation.
#[derive(Debug, Default)]
pub struct SnapshotBuffer {
    data: Vec<u8>,
    pos: u64,
    /// [`SNAPSHOT_BYTES_MAX`] unless a test wants a smaller one; 0 means that default.
    bound: u64,
}

impl SnapshotBuffer {
    /// An empty buffer, to receive a snapshot into.
    pub fn new() -> SnapshotBuffer {
        SnapshotBuffer::default()
    }

    /// A buffer holding `data`, positioned at its start (to send or install it).
    pub fn from_vec(data: Vec<u8>) -> SnapshotBuffer {
        SnapshotBuffer { data, pos: 0, bound: 0 }
    }

    /// An empty buffer that refuses to grow past `bound` bytes (tests).
    pub fn with_bound(bound: u64) -> SnapshotBuffer {
        SnapshotBuffer { data: Vec::new(), pos: 0, bound }
    }

    pub fn bound(&self) -> u64 {
        if self.bound == 0 { SNAPSHOT_BYTES_MAX } else { self.bound }
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// Memory the buffer holds (its capacity, not only its length).
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.data
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Moves to `position`; refused past the end (a gap) or before the start.
    fn seek_to(&mut self, position: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match position {
            SeekFrom::Start(at) => (at, 0),
            SeekFrom::End(delta) => (self.len(), delta),
            SeekFrom::Current(delta) => (self.pos, delta),
        };
        let target = base.checked_add_signed(delta).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("snapshot seek to {base}{delta:+}: out of range"))
        })?;
        if target > self.len() {
            refused("gap");
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("snapshot chunk at offset {target}: only {} bytes received (a gap)", self.len()),
            ));
        }
        self.pos = target;
        Ok(target)
    }

    /// Writes `bytes` at the position, refusing to grow past the bound.
    fn write_at(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let bound = self.bound();
        let end = self.pos.checked_add(bytes.len() as u64).filter(|&end| end <= bound).ok_or_else(|| {
            refused("too_large");
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot larger than {bound} bytes (chunk of {} at offset {})", bytes.len(), self.pos),
            )
        })?;
        // `end <= bound`, and the bound fits memory on every platform pbx runs on.
        let (start, end) = (self.pos as usize, end as usize);
        if end > self.data.len() {
            // Grow by doubling as `Vec` would, but never past the bound, and as an error
            // rather than an abort when the memory is not there.
            let wanted = end.max(self.data.len().saturating_mul(2)).min(bound as usize);
            if wanted > self.data.capacity() {
                self.data.try_reserve_exact(wanted - self.data.len()).map_err(|e| {
                    io::Error::new(io::ErrorKind::OutOfMemory, format!("snapshot buffer of {wanted} bytes: {e}"))
                })?;
            }
            self.data.resize(end, 0);
        }
        self.data[start..end].copy_from_slice(bytes);
        self.pos = end as u64;
        Ok(bytes.len())
    }
}

/// Logs and counts a refused chunk. The peer is not known here; [`super::net`] logs it too.
fn refused(reason: &'static str) {
    tracing::warn!(reason, "snapshot chunk refused");
    metrics::counter!(REFUSALS_METRIC, "rpc" => "snapshot", "reason" => reason).increment(1);
}

impl AsyncRead for SnapshotBuffer {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = usize::try_from(this.pos).unwrap_or(usize::MAX).min(this.data.len());
        let n = buf.remaining().min(this.data.len() - start);
        buf.put_slice(&this.data[start..start + n]);
        this.pos = (start + n) as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotBuffer {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(self.get_mut().write_at(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for SnapshotBuffer {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        self.get_mut().seek_to(position).map(|_| ())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    /// Chunks written in order, a chunk resent from an earlier offset, and reads back: what
    /// openraft does on both ends of a snapshot transfer.
    #[test]
    fn sequential_chunks_and_resends_are_accepted() {
        run(async {
            let mut b = SnapshotBuffer::new();
            b.write_all(b"hello ").await.unwrap();
            b.write_all(b"world").await.unwrap();
            // A resend of the second chunk (its reply was lost).
            assert_eq!(b.seek(SeekFrom::Start(6)).await.unwrap(), 6);
            b.write_all(b"world").await.unwrap();
            assert_eq!(b.as_slice(), b"hello world");
            assert_eq!(b.seek(SeekFrom::End(0)).await.unwrap(), 11);
            b.seek(SeekFrom::Start(0)).await.unwrap();
            let mut back = Vec::new();
            b.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"hello world");
            let mut from = SnapshotBuffer::from_vec(b"abc".to_vec());
            from.seek(SeekFrom::Start(1)).await.unwrap();
            let mut tail = String::new();
            from.read_to_string(&mut tail).await.unwrap();
            assert_eq!(tail, "bc");
        });
    }

    /// A chunk past the bytes received (a gap, or an offset of 2⁶⁰) is refused before a byte
    /// is allocated for it.
    #[test]
    fn a_gap_is_refused_without_growing() {
        run(async {
            let mut b = SnapshotBuffer::new();
            b.write_all(b"0123").await.unwrap();
            let capacity = b.capacity();
            let e = b.seek(SeekFrom::Start(5)).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("a gap"), "{e}");
            assert!(b.seek(SeekFrom::Start(1 << 60)).await.is_err());
            assert!(b.seek(SeekFrom::Current(-5)).await.is_err());
            assert_eq!((b.as_slice(), b.capacity()), (&b"0123"[..], capacity));
            // Still usable: the next in-order chunk goes on.
            b.seek(SeekFrom::Start(4)).await.unwrap();
            b.write_all(b"45").await.unwrap();
            assert_eq!(b.as_slice(), b"012345");
        });
    }

    /// Writing past the bound is refused, whole: nothing of the chunk is kept, and the buffer
    /// never reserves more than the bound.
    #[test]
    fn growing_past_the_bound_is_refused() {
        run(async {
            let mut b = SnapshotBuffer::with_bound(10);
            b.write_all(b"01234567").await.unwrap();
            let e = b.write_all(b"89a").await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("larger than 10 bytes"), "{e}");
            assert_eq!(b.as_slice(), b"01234567");
            b.write_all(b"89").await.unwrap();
            assert_eq!(b.as_slice(), b"0123456789");
            assert!(b.capacity() <= 10, "capacity {}", b.capacity());
            assert_eq!(SnapshotBuffer::new().bound(), SNAPSHOT_BYTES_MAX);
        });
    }
}

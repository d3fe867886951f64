//! Crafted InstallSnapshot RPCs against a real Raft node (its redb stores, the product's
//! dispatch): a chunk at a huge offset, a chunk past a gap and an oversized chunk are refused
//! without the node allocating for them, an impostor's chunk is refused, and an honest
//! snapshot still installs afterwards.
//!
//! The process's allocations are counted by a global allocator, so "memory not grown" is
//! measured, not assumed. One test in this binary, so nothing else allocates meanwhile.

use openraft::raft::InstallSnapshotRequest;
use openraft::{CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use pbx_cluster::identity::{self, NodeIdentity, NodeName};
use pbx_cluster::link;
use pbx_cluster::raft::net::{self, Reply, Rpc, SNAPSHOT_CHUNK_BYTES};
use pbx_cluster::raft::{
    Applier, ApplyError, Member, Replica, ReplicaConfig, Request, SNAPSHOT_BYTES_MAX, TypeConfig, node_id, store,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Starts a peak measurement: returns the live bytes now.
fn measure() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// How far the heap grew above `baseline` since [`measure`].
fn growth(baseline: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(baseline)
}

/// Far below what any refused chunk would have cost (a gigabyte, or the 3 MiB chunk copied),
/// far above what handling a small RPC allocates.
const GROWTH_MAX: usize = 2 << 20;

/// Keeps the last snapshot installed.
#[derive(Default)]
struct Installed(Mutex<Option<Vec<u8>>>);

impl Applier for Installed {
    fn apply(&self, _: &[&Request]) -> Result<(), ApplyError> {
        Ok(())
    }
    fn snapshot(&self) -> Result<Vec<u8>, ApplyError> {
        Ok(Vec::new())
    }
    fn install(&self, snapshot: &[u8]) -> Result<(), ApplyError> {
        *self.0.lock().unwrap() = Some(snapshot.to_vec());
        Ok(())
    }
}

fn chunk(leader: &str, offset: u64, data: Vec<u8>, done: bool, members: &[Member]) -> Rpc<TypeConfig> {
    let leader = node_id(leader);
    let ids: BTreeSet<u64> = members.iter().map(|m| node_id(&m.name)).collect();
    let nodes: BTreeMap<u64, Member> = members.iter().map(|m| (node_id(&m.name), m.clone())).collect();
    let last = LogId::new(CommittedLeaderId::new(1000, leader), 10);
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), Membership::new(vec![ids], nodes)),
        snapshot_id: "1000-10-1500".into(),
    };
    Rpc::Snapshot(InstallSnapshotRequest { vote: Vote::new_committed(1000, leader), meta, offset, data, done })
}

#[test]
fn crafted_snapshot_chunks_are_refused_without_allocating() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), scenario()).await.expect("test timed out");
    });
}

async fn scenario() {
    let certs = tempfile::tempdir().unwrap();
    identity::init(certs.path(), &identity::parse_node_names("a,b").unwrap()).unwrap();
    let b = NodeIdentity::load(certs.path(), &NodeName::new("b").unwrap()).unwrap();
    let endpoint = link::endpoint(&b, "127.0.0.1:0".parse().unwrap()).unwrap();
    // Member a never runs: b stays a follower that cannot win an election alone.
    let members = vec![
        Member { name: "a".into(), address: "127.0.0.1:9".into(), witness: false },
        Member { name: "b".into(), address: endpoint.local_addr().unwrap().to_string(), witness: false },
    ];
    let db = redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap();
    let installed = std::sync::Arc::new(Installed::default());
    let config = ReplicaConfig::new(members[1].clone(), members.clone());
    let replica = Replica::start(config, Some(endpoint), store::prepare(db).unwrap(), installed.clone()).await.unwrap();
    let raft = replica.raft();
    let a = node_id("a");
    let send = |rpc| net::dispatch(raft, a, "a", rpc);

    // The first 1000 bytes of a snapshot from a, in order: taken.
    let honest: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
    let reply = send(chunk("a", 0, honest[..1000].to_vec(), false, &members)).await;
    assert!(matches!(reply, Ok(Reply::Snapshot(Ok(_)))), "first chunk refused");

    let baseline = measure();
    // Offset 2⁴⁰: refused before Raft sees it (it would zero-fill a terabyte).
    let refused = send(chunk("a", 1 << 40, vec![1; 16], false, &members)).await.unwrap_err();
    assert_eq!((refused.rpc, refused.reason), ("snapshot", "too_large"));
    // Within the bound but past a gap (only 1000 bytes received): the buffer refuses it, the
    // sender hears an error, nothing is zero-filled.
    let reply = send(chunk("a", SNAPSHOT_BYTES_MAX - 16, vec![1; 16], false, &members)).await;
    assert!(matches!(reply, Ok(Reply::Snapshot(Err(_)))), "a chunk after a gap of a gigabyte was taken");
    let reply = send(chunk("a", 1001, vec![1; 16], false, &members)).await;
    assert!(matches!(reply, Ok(Reply::Snapshot(Err(_)))), "a chunk after a gap of one byte was taken");
    // The same chunk from a node that is not the leader it names: refused.
    let refused = net::dispatch(raft, node_id("b"), "b", chunk("a", 1000, vec![1; 16], false, &members)).await;
    assert_eq!(refused.unwrap_err().reason, "impostor");
    assert!(growth(baseline) < GROWTH_MAX, "memory grew by {} bytes", growth(baseline));

    // A chunk larger than a leader ever sends: refused without a copy of it being made.
    let big = chunk("a", 1000, vec![1; SNAPSHOT_CHUNK_BYTES as usize + 1], false, &members);
    let baseline = measure();
    let refused = send(big).await.unwrap_err();
    assert_eq!((refused.rpc, refused.reason), ("snapshot", "chunk_too_large"));
    assert!(growth(baseline) < GROWTH_MAX, "memory grew by {} bytes", growth(baseline));

    // The honest rest of the snapshot, in order: installed, whole and unchanged.
    let reply = send(chunk("a", 1000, honest[1000..].to_vec(), true, &members)).await;
    assert!(matches!(reply, Ok(Reply::Snapshot(Ok(_)))), "last chunk refused");
    assert_eq!(
        installed.0.lock().unwrap().as_deref(),
        Some(&honest[..]),
        "the snapshot installed is not what was sent"
    );
    replica.shutdown().await;
}

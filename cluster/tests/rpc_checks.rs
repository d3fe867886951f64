//! Raft RPCs from a real peer over a mutual-TLS link on 127.0.0.1: a member with a valid
//! certificate that claims to be another node (a forwarded write with another origin, a vote
//! or a snapshot in another node's name, a snapshot chunk at a huge offset, a message past
//! the size bound) is refused, logged with its name and counted; its own honest write is
//! let through.
//!
//! The test runs on a current-thread runtime inside a thread-local tracing subscriber and
//! metrics recorder, so its logs and counters are its own.

mod common;

use common::LogBuffer;
use openraft::raft::{InstallSnapshotRequest, VoteRequest};
use openraft::{SnapshotMeta, Vote};
use pbx_cluster::identity::{self, NodeIdentity, NodeName};
use pbx_cluster::link;
use pbx_cluster::raft::net::{CallError, Client, MESSAGE_BYTES_MAX, Reply, Rpc, WriteRefused};
use pbx_cluster::raft::{Applier, ApplyError, Member, Replica, ReplicaConfig, Request, TypeConfig, node_id, store};
use std::sync::Arc;
use std::time::Duration;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

struct Nothing;

impl Applier for Nothing {
    fn apply(&self, _: &[&Request]) -> Result<(), ApplyError> {
        Ok(())
    }
    fn snapshot(&self) -> Result<Vec<u8>, ApplyError> {
        Ok(Vec::new())
    }
    fn install(&self, _: &[u8]) -> Result<(), ApplyError> {
        Ok(())
    }
}

/// The value of `pbx_cluster_rpc_refusals_total{reason, rpc}` (0 if absent).
fn refusals(metrics: &str, rpc: &str, reason: &str) -> u64 {
    let series = format!("pbx_cluster_rpc_refusals_total{{rpc=\"{rpc}\",reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn a_member_cannot_speak_for_another() {
    let logs = LogBuffer::default();
    let subscriber = logs.subscriber();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async { tokio::time::timeout(TEST_TIMEOUT, scenario()).await.expect("test timed out") })
        })
    });
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let metrics = handle.render();
    assert_eq!(refusals(&metrics, "write", "origin"), 1, "{metrics}");
    assert_eq!(refusals(&metrics, "vote", "impostor"), 1, "{metrics}");
    assert_eq!(refusals(&metrics, "snapshot", "too_large"), 1, "{metrics}");
    assert_eq!(refusals(&metrics, "any", "unreadable"), 1, "{metrics}");
    let refused: Vec<&str> = logs.lines().filter(|l| l.contains("cluster RPC refused")).collect();
    assert_eq!(refused.len(), 3, "{logs}");
    assert!(refused.iter().all(|l| l.contains("WARN") && l.contains("peer=\"n2\"")), "{logs}");
    assert!(logs.contains("unreadable Raft RPC"), "{logs}");
}

async fn scenario() {
    let certs = tempfile::tempdir().unwrap();
    identity::init(certs.path(), &identity::parse_node_names("n1,n2,n3").unwrap()).unwrap();
    let load = |name: &str| NodeIdentity::load(certs.path(), &NodeName::new(name).unwrap()).unwrap();
    let n1_endpoint = link::endpoint(&load("n1"), "127.0.0.1:0".parse().unwrap()).unwrap();
    let n2_endpoint = link::endpoint(&load("n2"), "127.0.0.1:0".parse().unwrap()).unwrap();
    let members = vec![
        Member { name: "n1".into(), address: n1_endpoint.local_addr().unwrap().to_string(), witness: false },
        Member { name: "n2".into(), address: n2_endpoint.local_addr().unwrap().to_string(), witness: false },
        Member { name: "n3".into(), address: "127.0.0.1:9".into(), witness: false },
    ];
    // n1 runs the product's Raft; the test speaks as n2 over a real link. No leader: n1 alone
    // has no quorum, so an accepted write is answered "not the leader".
    let db = redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap();
    let config = ReplicaConfig::new(members[0].clone(), members.clone());
    let replica =
        Replica::start(config, Some(n1_endpoint), store::prepare(db).unwrap(), Arc::new(Nothing)).await.unwrap();
    let n2 = Client::new(Some(n2_endpoint.clone()));
    let (n1_id, n2_id) = (node_id("n1"), node_id("n2"));
    let call = |rpc: Rpc<TypeConfig>| {
        let n2 = n2.clone();
        let target = members[0].clone();
        async move { n2.call::<TypeConfig>(n1_id, &target, &rpc, CALL_TIMEOUT).await }
    };

    // A write in its own name reaches Raft.
    let own = call(Rpc::Write(Request { origin: n2_id, payload: b"mine".to_vec() })).await;
    assert!(matches!(own, Ok(Reply::Write(Err(WriteRefused::NotLeader { .. })))), "{own:?}");
    // A write claiming n3 proposed it: refused, and n2 is told why.
    let forged = call(Rpc::Write(Request { origin: node_id("n3"), payload: b"forged".to_vec() })).await;
    match forged {
        Ok(Reply::Write(Err(WriteRefused::Failed(why)))) => assert!(why.contains("origin"), "{why}"),
        other => panic!("forged write answered {other:?}"),
    }
    // A vote request in n1's own name, sent by n2: no reply.
    let vote = call(Rpc::Vote(VoteRequest::new(Vote::new(50, n1_id), None))).await;
    assert!(matches!(vote, Err(CallError::Failed(_))), "{vote:?}");
    // A snapshot chunk at offset 2⁴⁰ in n2's own name: no reply, nothing allocated.
    let meta = SnapshotMeta { last_log_id: None, last_membership: Default::default(), snapshot_id: "x".into() };
    let huge = Rpc::Snapshot(InstallSnapshotRequest {
        vote: Vote::new_committed(50, n2_id),
        meta,
        offset: 1 << 40,
        data: vec![0; 8],
        done: false,
    });
    assert!(matches!(call(huge).await, Err(CallError::Failed(_))));
    // A message longer than any member reads: refused unread (the client would not send one,
    // so it goes on a raw stream).
    let link =
        link::connect(&n2_endpoint, members[0].address.parse().unwrap(), &NodeName::new("n1").unwrap()).await.unwrap();
    let (mut send, mut recv) = link.connection.open_bi().await.unwrap();
    let oversized = vec![0u8; MESSAGE_BYTES_MAX + 1];
    // The server may reset the stream before all of it is sent.
    let _ = send.write_all(&oversized).await;
    let _ = send.finish();
    assert!(recv.read_to_end(1024).await.is_err(), "an oversized message was answered");
    link.connection.close(0u32.into(), b"test over");
    n2.close();
    replica.shutdown().await;
    n2_endpoint.close(0u32.into(), b"test over");
}

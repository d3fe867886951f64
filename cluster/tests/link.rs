//! Node links on 127.0.0.1: identities from `init` authenticate both ways; a foreign CA, a wrong
//! name or a missing client certificate is refused, logged at warn and counted.
//!
//! Each test runs on its own current-thread runtime inside a thread-local tracing subscriber
//! and metrics recorder, so its logs and counters are its own.

mod common;

use common::LogBuffer;
use pbx_cluster::identity::{self, NodeIdentity, NodeName};
use pbx_cluster::link::{self, Link, LinkError, RefusedBy};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Longest any test's network part may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest an endpoint may take to close its connections.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

/// A fresh cluster in a temporary directory.
fn cluster(nodes: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    identity::init(dir.path(), &identity::parse_node_names(nodes).unwrap()).unwrap();
    dir
}

fn load(dir: &Path, node: &str) -> NodeIdentity {
    NodeIdentity::load(dir, &name(node)).unwrap()
}

struct Observed<T> {
    value: T,
    logs: String,
    metrics: String,
}

/// The value of the refusal counter with these labels in a Prometheus rendering (0 if absent).
fn refusals(metrics: &str, by: &str, reason: &str) -> u64 {
    let series = format!("pbx_cluster_link_refusals_total{{by=\"{by}\",reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

/// Runs `test` on a current-thread runtime (so every task sees this thread's subscriber and
/// recorder), bounded by TEST_TIMEOUT.
fn observe<F: Future>(test: impl FnOnce() -> F) -> Observed<F::Output> {
    let logs = LogBuffer::default();
    let subscriber = logs.subscriber();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let value = tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async { tokio::time::timeout(TEST_TIMEOUT, test()).await.expect("test timed out") })
        })
    });
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    Observed { value, logs, metrics: handle.render() }
}

async fn close(endpoints: &[&quinn::Endpoint]) {
    for e in endpoints {
        e.close(0u32.into(), b"test over");
    }
    for e in endpoints {
        tokio::time::timeout(CLOSE_TIMEOUT, e.wait_idle()).await.expect("endpoint closes");
    }
}

/// Sends `ping` on a new bidi stream and returns the answer (or why there was none).
async fn ping(link: &Link) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = link.connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(b"ping").await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(64).await.map_err(|e| e.to_string())
}

/// What a client the server refuses sees: the connect fails, or (TLS 1.3: the client finishes
/// first) the first exchange fails because the server closed the connection.
async fn connect_and_ping(client: &quinn::Endpoint, server: SocketAddr) -> Result<(), String> {
    let link = link::connect(client, server, &name("appliance")).await.map_err(|e| e.to_string())?;
    match ping(&link).await {
        Ok(answer) => panic!("refused client got an answer: {answer:?}"),
        Err(e) => Err(link.connection.close_reason().map_or(e, |reason| reason.to_string())),
    }
}

/// Answers one bidi stream with `pong from <node>`.
async fn pong(link: &Link, me: &str) -> Vec<u8> {
    let (mut send, mut recv) = link.connection.accept_bi().await.unwrap();
    let got = recv.read_to_end(64).await.unwrap();
    send.write_all(format!("pong from {me}").as_bytes()).await.unwrap();
    send.finish().unwrap();
    // Wait for the client to close (it has read the answer), so nothing is cut short.
    link.connection.closed().await;
    got
}

/// Two nodes of one init link up, exchange bytes on a bidi stream, and each learns the other's
/// name from its certificate.
#[test]
fn two_nodes_link_and_learn_each_others_names() {
    let dir = cluster("appliance,vm1,witness");
    let observed = observe(|| async {
        let appliance = link::endpoint(&load(dir.path(), "appliance"), loopback()).unwrap();
        let vm1 = link::endpoint(&load(dir.path(), "vm1"), loopback()).unwrap();
        let addr = appliance.local_addr().unwrap();
        let (accepted, connected) = tokio::join!(
            async {
                let link = link::accept(&appliance).await.unwrap().unwrap();
                let got = pong(&link, "appliance").await;
                (link.peer, got)
            },
            async {
                let link = link::connect(&vm1, addr, &name("appliance")).await.unwrap();
                let answer = ping(&link).await;
                link.connection.close(0u32.into(), b"done");
                (link.peer, answer)
            }
        );
        close(&[&appliance, &vm1]).await;
        (accepted, connected)
    });
    let Observed { value: ((client_name, got), (server_name, answer)), logs, .. } = observed;
    assert_eq!(client_name, name("vm1"));
    assert_eq!(got, b"ping");
    assert_eq!(server_name, name("appliance"));
    assert_eq!(answer.unwrap(), b"pong from appliance");
    assert!(!logs.contains("refused"), "{}", logs);
}

/// A client with a certificate from another init is refused by the server, even though it
/// trusts our (public) CA certificate: the server logs the refusal with the client's address
/// and counts it, and the client's connection fails.
#[test]
fn a_foreign_client_is_refused() {
    let ours = cluster("appliance,vm1");
    let theirs = cluster("vm1");
    let observed = observe(|| async {
        let appliance = link::endpoint(&load(ours.path(), "appliance"), loopback()).unwrap();
        let foreign = load(theirs.path(), "vm1");
        let impostor = NodeIdentity { ca: load(ours.path(), "vm1").ca, ..foreign };
        let mut client = quinn::Endpoint::client(loopback()).unwrap();
        client.set_default_client_config(link::client_config(&impostor).unwrap());
        let client_addr = client.local_addr().unwrap();
        let (accepted, connected) = tokio::join!(link::accept(&appliance), async {
            // The client may finish its side of the handshake before the server refuses it.
            connect_and_ping(&client, appliance.local_addr().unwrap()).await
        });
        close(&[&appliance, &client]).await;
        (accepted.unwrap().map(|l| l.peer), connected, client_addr)
    });
    let Observed { value: (accepted, connected, client_addr), logs, metrics } = observed;
    match accepted {
        Err(LinkError::Refused { by: RefusedBy::Us, addr, reason }) => {
            assert_eq!(addr, client_addr);
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("server accepted or failed otherwise: {other:?}"),
    }
    let err = connected.expect_err("the foreign client must not get a working link");
    // Refused during connect or on first use, the server's reason reaches the client.
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert_eq!(refusals(&metrics, "us", "UnknownCA"), 1, "{}", metrics);
    assert!(logs.contains("WARN") && logs.contains(&format!("remote={client_addr}")), "{}", logs);
}

/// A server with a certificate from another init is refused by our client (unknown CA): the
/// connect fails, our side logs and counts it, and the foreign server learns it was refused.
#[test]
fn a_foreign_server_is_refused() {
    let ours = cluster("vm1");
    let theirs = cluster("appliance");
    let observed = observe(|| async {
        let foreign = link::endpoint(&load(theirs.path(), "appliance"), loopback()).unwrap();
        let vm1 = link::endpoint(&load(ours.path(), "vm1"), loopback()).unwrap();
        let server_addr = foreign.local_addr().unwrap();
        let appliance = name("appliance");
        let (accepted, connected) = tokio::join!(link::accept(&foreign), link::connect(&vm1, server_addr, &appliance));
        close(&[&foreign, &vm1]).await;
        (accepted.unwrap().map(|l| l.peer), connected.map(|l| l.peer), server_addr)
    });
    let Observed { value: (accepted, connected, server_addr), logs, metrics } = observed;
    match connected {
        Err(LinkError::Refused { by: RefusedBy::Us, addr, reason }) => {
            assert_eq!(addr, server_addr);
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("client linked or failed otherwise: {other:?}"),
    }
    assert!(matches!(accepted, Err(LinkError::Refused { by: RefusedBy::Peer, .. })), "{accepted:?}");
    assert_eq!(refusals(&metrics, "us", "UnknownCA"), 1, "{}", metrics);
    assert_eq!(refusals(&metrics, "peer", "UnknownCA"), 1, "{}", metrics);
    assert!(logs.contains(&format!("remote={server_addr}")), "{}", logs);
}

/// A client that means to reach vm1 but reaches the appliance refuses it: same CA, wrong name.
#[test]
fn the_wrong_node_is_refused() {
    let dir = cluster("appliance,vm1,witness");
    let observed = observe(|| async {
        let appliance = link::endpoint(&load(dir.path(), "appliance"), loopback()).unwrap();
        let witness = link::endpoint(&load(dir.path(), "witness"), loopback()).unwrap();
        let vm1 = name("vm1");
        let (accepted, connected) =
            tokio::join!(link::accept(&appliance), link::connect(&witness, appliance.local_addr().unwrap(), &vm1));
        close(&[&appliance, &witness]).await;
        (accepted.unwrap().map(|l| l.peer), connected.map(|l| l.peer))
    });
    let Observed { value: (accepted, connected), logs, metrics } = observed;
    match connected {
        Err(LinkError::Refused { by: RefusedBy::Us, reason, .. }) => {
            assert!(reason.contains("not valid for name \"vm1.pbx-cluster\""), "{reason}")
        }
        other => panic!("client linked or failed otherwise: {other:?}"),
    }
    assert!(accepted.is_err(), "{accepted:?}");
    assert_eq!(refusals(&metrics, "us", "BadCertificate"), 1, "{}", metrics);
    assert!(logs.contains("WARN") && logs.contains("cluster link refused"), "{logs}");
}

/// A client that presents no certificate at all is refused by the server.
#[test]
fn a_client_without_a_certificate_is_refused() {
    let dir = cluster("appliance");
    let observed = observe(|| async {
        let id = load(dir.path(), "appliance");
        let appliance = link::endpoint(&id, loopback()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(id.ca.clone()).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(link::provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![link::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut client = quinn::Endpoint::client(loopback()).unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let (accepted, connected) = tokio::join!(link::accept(&appliance), async {
            connect_and_ping(&client, appliance.local_addr().unwrap()).await
        });
        close(&[&appliance, &client]).await;
        (accepted.unwrap().map(|l| l.peer), connected)
    });
    let Observed { value: (accepted, connected), logs, metrics } = observed;
    match accepted {
        Err(LinkError::Refused { by: RefusedBy::Us, reason, .. }) => {
            assert!(reason.contains("peer sent no certificates"), "{reason}")
        }
        other => panic!("server accepted or failed otherwise: {other:?}"),
    }
    let err = connected.expect_err("a client without a certificate must not get a working link");
    assert!(err.contains("peer sent no certificates"), "{err}");
    assert_eq!(refusals(&metrics, "us", "CertificateRequired"), 1, "{}", metrics);
    assert!(logs.contains("WARN") && logs.contains("no certificates"), "{logs}");
}

//! The mesh on 127.0.0.1: nodes of one `init` link up, and an actor on one node receives a
//! message sent from another through ractor's remote actor references (a process group); a
//! node of another CA never joins; a restarted peer is linked again; a session whose ractor
//! name is not its certificate's is closed.
//!
//! ractor's registries (process groups, actor ids) are global to a process, so each node runs
//! in a process of its own: this test binary, started again on the ignored `node_process`
//! test, driven by lines on stdin and answering on stdout (`mesh: ...`).

use pbx_cluster::identity::{self, NodeIdentity, NodeName};
use pbx_cluster::link;
use pbx_cluster::mesh::{Backoff, Mesh, Peer};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest any one expected event may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long a node is watched for something that must not happen.
const QUIET: Duration = Duration::from_millis(1500);
/// The process group every node's inbox joins.
const GROUP: &str = "mesh-test";
/// Short delays, so a test waits on a restarted peer for well under a second.
const BACKOFF: Backoff = Backoff { first: Duration::from_millis(50), max: Duration::from_millis(500) };

fn cluster(nodes: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    identity::init(dir.path(), &identity::parse_node_names(nodes).unwrap()).unwrap();
    dir
}

/// A free UDP port on 127.0.0.1, so peers can be told each other's address before they start.
fn free_addr() -> SocketAddr {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap()
}

/// A node process. Dropping it kills the process if it still runs.
struct Node {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Said before `listening`, not yet looked at.
    early: std::collections::VecDeque<String>,
    /// Everything the node said, its logs too, for the failure message.
    history: Vec<String>,
}

impl Node {
    fn start(dir: &Path, name: &str, listen: SocketAddr, peers: &[(&str, SocketAddr)]) -> Node {
        let peers: Vec<String> = peers.iter().map(|(n, a)| format!("{n}={a}")).collect();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "node_process", "--ignored", "--nocapture", "--test-threads=1"])
            .env("PBX_MESH_DIR", dir)
            .env("PBX_MESH_NODE", name)
            .env("PBX_MESH_LISTEN", listen.to_string())
            .env("PBX_MESH_PEERS", peers.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        let err = BufReader::new(child.stderr.take().unwrap());
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                // The first line follows libtest's "test node_process ... ".
                if let Some((_, said)) = line.split_once("mesh: ") {
                    let _ = tx.send(said.to_string());
                }
            }
        });
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let _ = tx2.send(format!("log: {line}"));
            }
        });
        let stdin = child.stdin.take();
        let mut node = Node { name: name.to_string(), child, stdin, lines, early: Default::default(), history: vec![] };
        let mut early = Vec::new();
        node.expect(
            |l| {
                early.push(l.to_string());
                l.starts_with("listening ")
            },
            "listening",
        );
        early.pop();
        node.early = early.into();
        node
    }

    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let line = match self.early.pop_front() {
            Some(line) => line,
            None => self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()?,
        };
        self.history.push(line.clone());
        Some(line)
    }

    /// The next line `want` accepts, within WAIT.
    fn expect(&mut self, mut want: impl FnMut(&str) -> bool, what: &str) -> String {
        self.expect_within(WAIT, &mut want)
            .unwrap_or_else(|| panic!("node {} never said {what}; it said:\n{}", self.name, self.history.join("\n")))
    }

    fn expect_within(&mut self, d: Duration, mut want: impl FnMut(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + d;
        loop {
            let line = self.next_line(deadline)?;
            if want(&line) {
                return Some(line);
            }
        }
    }

    fn expect_line(&mut self, line: &str) {
        self.expect(|l| l == line, line);
    }

    /// Everything said until `deadline`.
    fn watch(&mut self, deadline: Instant) -> Vec<String> {
        std::iter::from_fn(|| self.next_line(deadline)).collect()
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    /// Casts `text` to the inboxes on other nodes until each of `to` got it. A cast is at
    /// most once: one to an inbox whose session is just being replaced (two nodes dialed each
    /// other) is lost, so this sends again, within WAIT.
    fn deliver(&mut self, text: &str, to: &mut [&mut Node]) {
        let deadline = Instant::now() + WAIT;
        let got = format!("got {text} from {}", self.name);
        let mut missing: Vec<usize> = (0..to.len()).collect();
        while !missing.is_empty() {
            assert!(Instant::now() < deadline, "{got}: never reached {missing:?}");
            self.command(&format!("send {text}"));
            self.expect(|l| l.starts_with("sent "), "sent");
            missing.retain(|&i| to[i].expect_within(Duration::from_millis(300), |l| l == got).is_none());
        }
    }

    /// Asks the node to shut down and waits for it to exit cleanly.
    fn stop(mut self) {
        self.command("stop");
        self.expect_line("stopped");
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "node {} exited with {status}", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node {} did not exit", self.name);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Three nodes that all dial each other form one mesh, and a message to a process group
/// reaches the inboxes on both other nodes; `Mesh::connected` lists the peers, and stops
/// listing one that leaves.
#[test]
fn three_nodes_form_a_mesh_and_reach_remote_actors() {
    let dir = cluster("a,b,c");
    let (pa, pb, pc) = (free_addr(), free_addr(), free_addr());
    let all = [("a", pa), ("b", pb), ("c", pc)];
    let mut a = Node::start(dir.path(), "a", pa, &all);
    let mut b = Node::start(dir.path(), "b", pb, &all);
    let mut c = Node::start(dir.path(), "c", pc, &all);
    a.expect_line("peers=b,c");
    b.expect_line("peers=a,c");
    c.expect_line("peers=a,b");

    b.deliver("hello", &mut [&mut a, &mut c]);
    c.deliver("bye", &mut [&mut a, &mut b]);
    a.command("peers");
    a.expect_line("connected b,c");

    // A node that leaves is no longer connected on the others, at once (its links close).
    c.stop();
    a.expect_line("peers=b");
    b.expect_line("peers=a");
    a.command("peers");
    a.expect_line("connected b");
    a.stop();
    b.stop();
}

/// A node whose certificate another CA made (claiming to be `c`, which `a` dials) is refused
/// both ways: `a` refuses it as a server, it refuses `a` (TLS 1.3: the client judges first),
/// however often either dials. The mesh stays as it was.
#[test]
fn node_of_another_ca_never_joins() {
    let dir = cluster("a,b");
    let foreign_dir = cluster("c");
    let (pa, pb, pc) = (free_addr(), free_addr(), free_addr());
    let mut a = Node::start(dir.path(), "a", pa, &[("b", pb), ("c", pc)]);
    let mut b = Node::start(dir.path(), "b", pb, &[("a", pa)]);
    a.expect_line("peers=b");
    b.expect_line("peers=a");

    let mut foreign = Node::start(foreign_dir.path(), "c", pc, &[("a", pa), ("b", pb)]);
    foreign.expect(|l| l.contains("cannot link with cluster peer") && l.contains("UnknownIssuer"), "a's refusal");
    a.expect(|l| l.contains(r#"refused_by="us""#) && l.contains("UnknownIssuer"), "a refusing the foreign node");
    let until = Instant::now() + QUIET;
    let quiet: Vec<String> = [&mut a, &mut b, &mut foreign]
        .into_iter()
        .flat_map(|n| n.watch(until))
        .filter(|l| l.starts_with("peers=") || l.starts_with("got "))
        .collect();
    assert!(quiet.is_empty(), "the mesh changed: {quiet:?}");
    foreign.stop();
    a.stop();
    b.stop();
}

/// A peer that crashes (killed, no goodbye) and starts again on its address is linked again
/// by the node that dials it, and messages flow both ways over the new session.
#[test]
fn restarted_peer_is_reconnected() {
    let dir = cluster("a,b");
    let (pa, pb) = (free_addr(), free_addr());
    // Only a dials, so the new link after the restart is a's doing.
    let b = Node::start(dir.path(), "b", pb, &[]);
    let mut a = Node::start(dir.path(), "a", pa, &[("b", pb)]);
    a.expect_line("peers=b");
    drop(b);

    let started = Instant::now();
    let mut b = Node::start(dir.path(), "b", pb, &[]);
    b.expect_line("peers=a");
    // The old link ends by stateless reset, well before the idle timeout would end it.
    assert!(started.elapsed() < link::IDLE_TIMEOUT, "relinked only after {:?}", started.elapsed());
    a.deliver("again", &mut [&mut b]);
    b.deliver("back", &mut [&mut a]);
    a.stop();
    b.stop();
}

/// A node of the cluster (certificate `b`) whose ractor node server calls itself `mallory`:
/// `a` closes the session and the link, logs and counts it, and never lists it as a peer.
/// The impostor runs in this process; ractor_cluster's cookie is public (`pbx-cluster`).
#[test]
fn ractor_name_must_match_the_certificate() {
    let dir = cluster("a,b");
    let pa = free_addr();
    let mut a = Node::start(dir.path(), "a", pa, &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (endpoint, _link, server, handle) = runtime.block_on(async {
        let id = NodeIdentity::load(dir.path(), &NodeName::new("b").unwrap()).unwrap();
        let endpoint = link::endpoint(&id, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        let node_server = ractor_cluster::NodeServer::new(
            0,
            "pbx-cluster".into(),
            "mallory".into(),
            "b.pbx-cluster".into(),
            None,
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(Ipv4Addr::LOCALHOST.into());
        let (server, handle) = Actor::spawn(None, node_server, ()).await.unwrap();
        let link = link::connect(&endpoint, pa, &NodeName::new("a").unwrap()).await.unwrap();
        let (send, recv) = link.connection.open_bi().await.unwrap();
        let stream = Box::new(Stream { send, recv });
        ractor_cluster::client_connect_external(&server, stream).await.unwrap();
        (endpoint, link, server, handle)
    });
    a.expect(
        |l| {
            l.contains("cluster link refused")
                && l.contains(r#"announced itself to ractor as Some("mallory@b.pbx-cluster")"#)
        },
        "refusal of the impostor",
    );
    let peers: Vec<String> = a.watch(Instant::now() + QUIET).into_iter().filter(|l| l.starts_with("peers=")).collect();
    assert!(peers.is_empty(), "a listed the impostor: {peers:?}");
    runtime.block_on(async {
        let sessions = ractor::call_t!(server, ractor_cluster::NodeServerMessage::GetSessions, 1000).unwrap();
        assert!(sessions.is_empty(), "the impostor's session survived");
        server.stop(None);
        tokio::time::timeout(WAIT, handle).await.unwrap().unwrap();
        endpoint.close(0u32.into(), b"test over");
        tokio::time::timeout(WAIT, endpoint.wait_idle()).await.unwrap();
    });
    a.stop();
}

struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl ractor_cluster::ClusterBidiStream for Stream {
    fn split(self: Box<Self>) -> (ractor_cluster::BoxRead, ractor_cluster::BoxWrite) {
        (Box::new(self.recv), Box::new(self.send))
    }
}

/// Prints every message it gets: `got <text>`.
struct Inbox;

impl Actor for Inbox {
    type Msg = String;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<String>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(&self, _: ActorRef<String>, text: String, _: &mut ()) -> Result<(), ActorProcessingErr> {
        println!("mesh: got {text}");
        Ok(())
    }
}

/// One mesh node, for the tests above (see the module documentation). Commands on stdin:
/// `send <text>` casts `<text> from <node>` to every remote member of GROUP and answers
/// `sent <n>`; `peers` answers `connected <a,b>` from `Mesh::connected`; `stop` (or the end of stdin) shuts down and answers `stopped`. It also says
/// `listening <addr>`, `peers=<a,b>` on every change (not for the empty start) and `got <text>` for its inbox.
#[test]
#[ignore = "a mesh node the other tests start as a process of its own; not a test by itself"]
fn node_process() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let dir = PathBuf::from(var("PBX_MESH_DIR"));
    let name = NodeName::new(&var("PBX_MESH_NODE")).unwrap();
    let listen: SocketAddr = var("PBX_MESH_LISTEN").parse().unwrap();
    let peers: Vec<Peer> = var("PBX_MESH_PEERS")
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, addr) = p.split_once('=').unwrap();
            Peer { name: NodeName::new(name).unwrap(), addr: addr.parse().unwrap() }
        })
        .collect();
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let (commands_tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    // A thread, not tokio's stdin: its blocking read would hold up the runtime's shutdown.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if commands_tx.send(line).is_err() {
                return;
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let identity = NodeIdentity::load(&dir, &name).unwrap();
        let mesh = Mesh::start(&identity, listen, &peers, BACKOFF).await.unwrap();
        let (inbox, inbox_handle) = Actor::spawn(None, Inbox, ()).await.unwrap();
        ractor::pg::join(GROUP.into(), vec![inbox.get_cell()]);
        let mut watch = mesh.watch();
        let reporter = tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                let peers: Vec<String> = watch.borrow_and_update().iter().map(ToString::to_string).collect();
                println!("mesh: peers={}", peers.join(","));
            }
        });
        println!("mesh: listening {}", mesh.local_addr());
        while let Some(line) = commands.recv().await {
            if line == "stop" {
                break;
            }
            if line == "peers" {
                let peers: Vec<String> = mesh.connected().iter().map(ToString::to_string).collect();
                println!("mesh: connected {}", peers.join(","));
                continue;
            }
            let text = line.strip_prefix("send ").unwrap_or_else(|| panic!("unknown command {line:?}"));
            let remote: Vec<_> =
                ractor::pg::get_members(&GROUP.into()).into_iter().filter(|m| !m.get_id().is_local()).collect();
            for member in &remote {
                ActorRef::<String>::from(member.clone()).cast(format!("{text} from {name}")).unwrap();
            }
            println!("mesh: sent {}", remote.len());
        }
        reporter.abort();
        inbox.stop(None);
        inbox_handle.await.unwrap();
        mesh.shutdown().await;
        println!("mesh: stopped");
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
}

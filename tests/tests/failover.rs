//! Three real `pbx node` processes on 127.0.0.1 (voters n1 and n2, witness w3), each with its
//! own ports and data directory, linked by QUIC with mutual TLS: SIPp registers through one
//! node, the leader is killed with SIGKILL, a new leader is elected, the registration is
//! visible and usable through the survivors (a call to it, a new registration), and the
//! killed node restarts and catches up. A node whose certificate comes from another CA is
//! refused by every member and never joins.

use pbx_tests::audio::G711;
use pbx_tests::rtp::RtpSink;
use pbx_tests::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest an election may take (the nodes' timeouts are 1–2 s; this allows a few rounds).
const ELECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a committed change may take to show on every running member.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(15);
const NAMES: [&str; 3] = ["n1", "n2", "w3"];

/// `pbx cluster init` into `dir` for `nodes`.
fn init(dir: &Path, nodes: &str) {
    let status = Command::new(binary())
        .args(["cluster", "init", "--out"])
        .arg(dir)
        .args(["--nodes", nodes])
        .stdout(Stdio::null())
        .status()
        .expect("run pbx cluster init");
    assert!(status.success(), "pbx cluster init failed: {status}");
}

/// The `[cluster]` section of member `node` of a cluster whose members listen on `ports`.
fn section(node: &str, certs: &Path, members: &[(&str, u16)]) -> String {
    let port = members.iter().find(|(n, _)| *n == node).map(|(_, p)| *p).expect("node among members");
    let mut s = format!("[cluster]\nnode = {node:?}\ncerts = {:?}\nlisten = \"127.0.0.1:{port}\"\n", certs.display());
    for (name, port) in members {
        let role = if name.starts_with('w') { "witness" } else { "voter" };
        s.push_str(&format!(
            "\n[[cluster.members]]\nname = {name:?}\naddress = \"127.0.0.1:{port}\"\nrole = \"{role}\"\n"
        ));
    }
    s
}

struct Trio {
    _certs: tempfile::TempDir,
    nodes: Vec<Pbx>,
    /// Whether each node is running.
    up: [bool; 3],
}

impl Trio {
    fn start() -> Trio {
        let certs = tempfile::tempdir().unwrap();
        init(certs.path(), "n1,n2,w3");
        // Each member: its Raft port and, next to it, its actor mesh port.
        let members: Vec<(&str, u16)> = NAMES.iter().map(|n| (*n, *free_port_block(2).start())).collect();
        let nodes = NAMES
            .iter()
            .map(|n| Pbx::start(PbxOptions::default().own_rtp_ports(20).cluster(&section(n, certs.path(), &members))))
            .collect();
        Trio { _certs: certs, nodes, up: [true; 3] }
    }

    fn status(&self, i: usize) -> Option<serde_json::Value> {
        let (code, body) =
            http_request(self.nodes[i].http, "GET", "/api/v1/cluster", None, Some(&self.nodes[i].token))?;
        (code == 200).then(|| serde_json::from_str(&body).expect("cluster status JSON"))
    }

    /// The leader every running member names, once they agree, and how long that took.
    fn leader(&self) -> (usize, Duration) {
        let started = Instant::now();
        let mut views = Vec::new();
        // Survivors keep naming a dead leader until they elect another: wait for a live one.
        let live = |name: &str| NAMES.iter().position(|n| *n == name).filter(|&i| self.up[i]);
        let agreed = wait_until(ELECTION_TIMEOUT, || {
            views = (0..3).filter(|&i| self.up[i]).map(|i| self.status(i).map(|s| s["leader"].clone())).collect();
            views.iter().all(|v| v == &views[0]) && views[0].as_ref().and_then(|l| l.as_str()).and_then(live).is_some()
        });
        assert!(agreed, "no agreed live leader within {ELECTION_TIMEOUT:?}: {views:?}");
        let name = views[0].as_ref().and_then(|l| l.as_str()).expect("a leader name");
        (live(name).expect("a live member leads"), started.elapsed())
    }

    fn term(&self, i: usize) -> u64 {
        self.status(i).and_then(|s| s["term"].as_u64()).expect("a term")
    }
}

/// The contacts of `aor` on every running voter are exactly `want`, within the bound.
fn replicated(trio: &Trio, aor: &str, want: &[String]) {
    for i in [0, 1].into_iter().filter(|&i| trio.up[i]) {
        let node = &trio.nodes[i];
        assert!(
            wait_until(REPLICATION_TIMEOUT, || node.contacts_of(aor) == want),
            "{} shows {aor} as {:?}, not {want:?}",
            NAMES[i],
            node.contacts_of(aor)
        );
    }
}

#[test]
fn registrations_survive_the_leaders_kill9() {
    let mut trio = Trio::start();
    let (leader, elected_in) = trio.leader();
    eprintln!("first leader {} after {elected_in:?}", NAMES[leader]);
    // The witness serves no SIP: it has no SIP socket at all.
    assert!(!trio.nodes[2].answers_options(), "the witness answered SIP");

    // SIPp registers 101 through the voter that leads (so that killing the leader kills the
    // node it registered through), or through n1 when the witness leads.
    let via = if leader < 2 { leader } else { 0 };
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee = Sipp::registered_callee(&trio.nodes[via], "call_load_uas.xml", "101", "secret-101", 1)
        .media(G711::Pcmu, &callee_sink, None)
        .spawn();
    let contact = format!("sip:101@{};transport=UDP", callee.local());
    replicated(&trio, "101", std::slice::from_ref(&contact));

    // kill -9 of the leader; the other two elect a new one in a later term.
    let term = trio.term(leader);
    trio.nodes[leader].kill9();
    trio.up[leader] = false;
    let (second, took) = trio.leader();
    eprintln!("after kill -9 of {}: {} leads after {took:?}", NAMES[leader], NAMES[second]);
    assert_ne!(second, leader);
    assert!(trio.term(second) > term, "a new term");

    // The registration is intact on the surviving voter, which serves a call to it at once.
    let survivor = if via == 0 { 1 } else { 0 };
    let survivor = if trio.up[survivor] { survivor } else { via };
    replicated(&trio, "101", std::slice::from_ref(&contact));
    let node = &trio.nodes[survivor];
    let caller = Sipp::new("call_load_uac.xml", node.sip, &node.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &caller_sink, None)
        .args(&["-m", "1", "-d", "500"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "call through {} after failover: {}", NAMES[survivor], caller.report());
    assert!(callee.success, "callee: {}", callee.report());
    assert!(caller.received_codes().ends_with(&[200, 200]), "{:?}", caller.received_codes());

    // A phone re-registering through a survivor is served at once, and replicated.
    let run = sipp_ok(
        node,
        "register_auth.xml",
        &["-s", "100", "-au", "100", "-ap", "secret-100", "-key", "expires", "120", "-m", "1"],
    );
    let contact_100 = node.contacts_of("100");
    assert_eq!(contact_100.len(), 1, "{}", run.report());

    // The killed node restarts on its data directory and catches up.
    trio.nodes[leader].start_again();
    trio.up[leader] = true;
    trio.leader();
    if leader < 2 {
        replicated(&trio, "100", &contact_100);
    }
    let last = trio.status(second).and_then(|s| s["applied"].as_u64()).expect("applied index");
    assert!(
        wait_until(REPLICATION_TIMEOUT, || trio.status(leader).and_then(|s| s["applied"].as_u64()) >= Some(last)),
        "{} did not catch up to {last}: {:?}",
        NAMES[leader],
        trio.status(leader)
    );

    // The call's record is on both voters, whichever wrote it.
    let other = 1 - survivor;
    for i in [survivor, other] {
        let node = &trio.nodes[i];
        assert!(
            wait_until(REPLICATION_TIMEOUT, || cdr_count(node) == 1),
            "{} holds {} call records",
            NAMES[i],
            cdr_count(node)
        );
    }
    // An erasure asked of one voter erases on the other too: extension, binding, the record.
    let (code, body) = trio.nodes[survivor].api("POST", "/api/v1/privacy/subjects/101/erase", None);
    assert_eq!(code, 200, "{body}");
    let node = &trio.nodes[other];
    assert!(wait_until(REPLICATION_TIMEOUT, || node.api("GET", "/api/v1/extensions/101", None).0 == 404));
    assert!(node.contacts_of("101").is_empty());
    let (_, cdrs) = node.api("GET", "/api/v1/cdrs", None);
    assert!(!cdrs.contains("\"101\""), "101 is masked in the record: {cdrs}");
}

/// A voter left alone (the other voter and the witness killed) cannot commit a new binding:
/// its REGISTER gets 503 with Retry-After (no quorum: try again later), not the 500 of a
/// storage fault.
#[test]
fn a_minority_nodes_register_gets_503_with_retry_after() {
    let mut trio = Trio::start();
    trio.leader();
    let node = &trio.nodes[0];
    assert!(
        wait_until(REPLICATION_TIMEOUT, || node.api("GET", "/api/v1/extensions/100", None).0 == 200),
        "n1 does not know extension 100"
    );
    for i in [1, 2] {
        trio.nodes[i].kill9();
        trio.up[i] = false;
    }
    let node = &trio.nodes[0];
    let mut phone = SipClient::udp(node.sip);
    let uri = format!("sip:{}", node.sip);
    let contact = format!("Contact: <sip:100@{}>", phone.local());
    let first = phone.request("REGISTER", &uri, "100", None, &[&contact, "Expires: 120"]);
    phone.send(&first);
    // A challenge depends on no stored state, so it does not wait behind a write that was in
    // flight when the other nodes died (that one waits up to the 10 s write timeout).
    let challenge = final_answer(&mut phone, Duration::from_secs(5)).expect("a challenge within 5 s, no quorum needed");
    assert_eq!(status_code(&challenge), Some(401), "{challenge}");
    let chosen = header_values(&challenge, "WWW-Authenticate")
        .into_iter()
        .find(|c| param(c, "algorithm").is_some_and(|a| a.eq_ignore_ascii_case("MD5")))
        .expect("an MD5 challenge");
    let auth = format!("Authorization: {}", authorization(&chosen, "100", "secret-100", "REGISTER", &uri, 1));
    let second = phone.request("REGISTER", &uri, "100", None, &[&contact, "Expires: 120", &auth]);
    phone.send(&second);
    // The write waits for a quorum for the replica's write timeout (10 s) before giving up.
    let answer = final_answer(&mut phone, Duration::from_secs(30))
        .expect("a final answer to the authorised REGISTER within 30 s");
    assert_busy_with_retry_after(&answer);
}

/// The call records a node lists.
fn cdr_count(node: &Pbx) -> usize {
    let (code, body) = node.api("GET", "/api/v1/cdrs", None);
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("CDR page JSON");
    page["cdrs"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_node_with_a_foreign_certificate_cannot_join() {
    let trio = Trio::start();
    trio.leader();
    // An impostor "n2" with a certificate from another CA and that CA as its root (pbx will
    // not start with a certificate its own ca.pem did not sign). In TLS 1.3 it sees the
    // members' certificates first and aborts; a member then logs the refusal as the peer's.
    // (The member judging a foreign client certificate itself is cluster/tests/link.rs's.)
    let foreign = tempfile::tempdir().unwrap();
    init(foreign.path(), "n2");
    let members: Vec<(&str, u16)> = (0..3)
        .map(|i| {
            let status = trio.status(i).expect("status");
            let port = status["members"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == NAMES[i]))
                .and_then(|m| m["address"].as_str())
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .expect("member port");
            (NAMES[i], port)
        })
        .collect();
    // Its own links on fresh ports, claiming n2's name.
    let mut impostor_members = members.clone();
    impostor_members[1].1 = *free_port_block(2).start();
    let impostor =
        Pbx::start(PbxOptions::default().own_rtp_ports(20).cluster(&section("n2", foreign.path(), &impostor_members)));
    // The impostor dials every member (its actor mesh at once, Raft once it stands for
    // election); every member refuses it for its certificate and logs the refusal.
    for i in [0, 2] {
        let node = &trio.nodes[i];
        assert!(
            wait_until(ELECTION_TIMEOUT, || node.log().contains("cluster link refused")),
            "{} did not log a refusal:\n{}",
            NAMES[i],
            node.log()
        );
    }
    assert!(trio.nodes[0].metrics().contains("pbx_cluster_link_refusals_total{"), "refusal counted");
    // It never learns of a leader; the members never of it.
    let status: serde_json::Value =
        serde_json::from_str(&impostor.api("GET", "/api/v1/cluster", None).1).expect("impostor status");
    assert!(status["leader"].is_null(), "the impostor joined: {status}");
    let (leader, _) = trio.leader();
    let members = trio.status(leader).expect("status")["members"].clone();
    let n2 = members.as_array().and_then(|m| m.iter().find(|m| m["name"] == "n2")).expect("n2").clone();
    assert_ne!(n2["address"].as_str(), Some(format!("127.0.0.1:{}", impostor_members[1].1).as_str()));
}

/// The first final response `phone` receives within `wait`, skipping provisional ones.
fn final_answer(phone: &mut SipClient, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match phone.recv(left) {
            Some(m) if status_code(&m).is_some_and(|c| c >= 200) => return Some(m),
            Some(_) => continue,
            None => return None,
        }
    }
    None
}

//! `pbx cluster status` as an operator runs it: the real binary against a stand-in admin API on
//! 127.0.0.1 that answers one request. It sends the admin token, prints the table or the JSON,
//! and exits 1 with the node's reason or when no node answers.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest the stand-in node waits for the command, and the command for an answer.
const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "test-admin-token";
const STATUS: &str = r#"{"node":"vm1","id":2,"role":"voter","state":"Follower","leader":"appliance","term":3,"last_log_index":120,"committed":120,"applied":120,"members":[{"name":"appliance","id":1,"role":"voter","address":"127.0.0.1:7001","matched":null,"lag":null,"actor_link":true},{"name":"vm1","id":2,"role":"voter","address":"127.0.0.1:7002","matched":null,"lag":null,"actor_link":null}]}"#;

/// A data directory with the admin token, as a node leaves it.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    dir
}

/// Answers the first request on a fresh port with `status` and `body`; the thread returns the
/// request line and its headers (lower-cased names), or None if no request came within WAIT.
fn stand_in(status: &str, body: &'static str) -> (SocketAddr, JoinHandle<Option<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let status = status.to_string();
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + WAIT;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => return None,
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = BufReader::new(&stream);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 || line.trim_end().is_empty() {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        (&stream).write_all(answer.as_bytes()).ok()?;
        Some(head)
    });
    (addr, handle)
}

/// Runs `pbx cluster status ARGS --data-dir DIR --api URL`, killed if it outlasts WAIT.
fn status(dir: &Path, api: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbx"))
        .args(["cluster", "status"])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .args(["--api", api])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("pbx cluster status did not exit within {WAIT:?}: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A node that answers: the command asks for /api/v1/cluster with the token and prints the table.
#[test]
fn prints_the_nodes_view_as_a_table() {
    let dir = data_dir();
    let (addr, node) = stand_in("200 OK", STATUS);
    let out = status(dir.path(), &format!("http://{addr}/"), &[]);
    let head = node.join().unwrap().expect("the command sent no request");
    assert_eq!(head[0], "GET /api/v1/cluster HTTP/1.1");
    assert!(head.iter().any(|h| h.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}"))), "{head:?}");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "node vm1 (Follower), leader appliance, term 3, log 120, committed 120, applied 120\n\
         MEMBER     ROLE   ADDRESS         MATCHED  LAG  ACTORS\n\
         appliance  voter  127.0.0.1:7001  -        -    up\n\
         vm1        voter  127.0.0.1:7002  -        -    -\n"
    );
}

/// `--json` prints the node's answer as it came.
#[test]
fn json_prints_the_answer() {
    let dir = data_dir();
    let (addr, node) = stand_in("200 OK", STATUS);
    let out = status(dir.path(), &format!("http://{addr}"), &["--json"]);
    node.join().unwrap().expect("the command sent no request");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{STATUS}\n"));
}

/// A node that is not a cluster node: exit 1 with its reason, nothing on stdout.
#[test]
fn an_error_answer_exits_1_with_the_reason() {
    let dir = data_dir();
    let (addr, node) = stand_in("404 Not Found", r#"{"error":"not a cluster node"}"#);
    let out = status(dir.path(), &format!("http://{addr}"), &[]);
    node.join().unwrap().expect("the command sent no request");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "pbx cluster status: HTTP 404: not a cluster node\n");
    assert!(out.stdout.is_empty());
}

/// No node on the port: exit 1, naming the URL it tried.
#[test]
fn no_node_exits_1() {
    let dir = data_dir();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}");
    let out = status(dir.path(), &url, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{url}/api/v1/cluster")) && stderr.contains("is the node running?"), "{stderr}");
}

/// No admin token in the data directory: exit 2, naming the file.
#[test]
fn a_missing_token_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = status(dir.path(), "http://127.0.0.1:9", &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("admin.token"), "{stderr}");
}

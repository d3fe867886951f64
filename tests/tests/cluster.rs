//! `pbx cluster init` end to end: the real binary writes a cluster CA and node certificates that
//! rustls (ring) accepts for both ends of a link, never overwrites a cluster, and refuses bad
//! node names with exit 2.

use pbx_tests::*;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest `pbx cluster init` may take (it makes four P-256 keys in a debug build).
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `pbx cluster init --out DIR --nodes NODES`: exit code, stdout, stderr.
fn init(dir: &Path, nodes: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(binary())
        .args(["cluster", "init", "--out"])
        .arg(dir)
        .args(["--nodes", nodes])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pbx cluster init");
    let deadline = Instant::now() + INIT_TIMEOUT;
    let exited = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() >= deadline {
            terminate(&mut child, STOP_TIMEOUT);
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // It has exited: collecting its (small) output cannot block.
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(exited, "pbx cluster init did not exit within {INIT_TIMEOUT:?}: {stderr}");
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

fn cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Three nodes: eight files, keys 0600, every node certificate chains to the CA for its own
/// name only, usable as server and as client, and matches its key.
#[test]
fn init_makes_a_ca_and_node_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let (code, stdout, stderr) = init(&dir, "appliance,vm1,witness");
    assert_eq!(code, Some(0), "{stderr}");

    let mut files: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    let expected =
        ["appliance.key", "appliance.pem", "ca.key", "ca.pem", "vm1.key", "vm1.pem", "witness.key", "witness.pem"];
    assert_eq!(files, expected);
    for file in expected {
        assert!(stdout.contains(&dir.join(file).display().to_string()), "{file} not reported: {stdout}");
        let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
        if file.ends_with(".key") {
            assert_eq!(mode, 0o600, "{file}");
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert(&dir.join("ca.pem"))).unwrap();
    let roots = Arc::new(roots);
    let as_server =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build().unwrap();
    let as_client =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build().unwrap();
    let now = UnixTime::now();
    for node in ["appliance", "vm1", "witness"] {
        let leaf = cert(&dir.join(format!("{node}.pem")));
        for other in ["appliance", "vm1", "witness"] {
            let name = ServerName::try_from(format!("{other}.pbx-cluster")).unwrap();
            let verified = as_server.verify_server_cert(&leaf, &[], &name, &[], now);
            assert_eq!(verified.is_ok(), node == other, "{node}.pem as server {other}: {verified:?}");
        }
        as_client.verify_client_cert(&leaf, &[], now).unwrap_or_else(|e| panic!("{node}.pem as client: {e}"));
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("{node}.key"))).unwrap();
        rustls::sign::CertifiedKey::from_der(vec![leaf], key, &provider)
            .unwrap_or_else(|e| panic!("{node}.key does not match {node}.pem: {e}"));
    }
}

/// A second init into the same directory exits 2 naming ca.pem and leaves the CA as it was.
#[test]
fn init_refuses_to_overwrite_a_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, stderr) = init(tmp.path(), "appliance");
    assert_eq!(code, Some(0), "{stderr}");
    let ca = std::fs::read(tmp.path().join("ca.pem")).unwrap();
    let (code, _, stderr) = init(tmp.path(), "appliance,vm1");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&tmp.path().join("ca.pem").display().to_string()), "{stderr}");
    assert_eq!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), ca);
    assert!(!tmp.path().join("vm1.pem").exists());
}

/// Bad node lists exit 2 with the offending name and write nothing.
#[test]
fn init_refuses_bad_node_names() {
    let tmp = tempfile::tempdir().unwrap();
    for (nodes, says) in [
        ("appliance,VM1", "\"VM1\""),
        ("appliance,vm_1", "\"vm_1\""),
        ("appliance,-vm1", "\"-vm1\""),
        ("appliance,appliance", "\"appliance\" is given twice"),
        (&format!("appliance,{}", "x".repeat(33)) as &str, "longer than 32"),
        ("", "at least one node"),
    ] {
        let dir = tmp.path().join("refused");
        let (code, _, stderr) = init(&dir, nodes);
        assert_eq!(code, Some(2), "{nodes}: {stderr}");
        assert!(stderr.contains(says), "{nodes}: {stderr}");
        assert!(!dir.exists(), "{nodes}: a refused init wrote {}", dir.display());
    }
}

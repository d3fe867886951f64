//! `identity::init` and the loaders: files, modes, round trips, and errors that name the file.

use pbx_cluster::identity::{self, InitError, LoadError, NodeIdentity, NodeName};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn names(list: &str) -> Vec<NodeName> {
    identity::parse_node_names(list).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// init writes the CA and one certificate + key per node, keys 0600, into a new 0700 directory;
/// each node's identity loads back byte for byte.
#[test]
fn init_writes_identities_that_load_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let written = identity::init(&dir, &names("appliance,vm1")).unwrap();
    let mut files: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect();
    files.sort();
    assert_eq!(files, ["appliance.key", "appliance.pem", "ca.key", "ca.pem", "vm1.key", "vm1.pem"]);
    assert_eq!(mode(&dir), 0o700);
    for key in ["ca.key", "appliance.key", "vm1.key"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&dir.join("ca.pem")), 0o644);

    let ca = identity::load_ca_cert(&dir.join("ca.pem")).unwrap();
    for node in ["appliance", "vm1"] {
        let id = NodeIdentity::load(&dir, &NodeName::new(node).unwrap()).unwrap();
        assert_eq!(id.name.as_str(), node);
        assert_eq!(id.ca, ca);
        assert_eq!(id.chain, identity::load_certs(&dir.join(format!("{node}.pem"))).unwrap());
        assert_eq!(id.key, identity::load_key(&dir.join(format!("{node}.key"))).unwrap());
    }
}

/// A second init into the same directory is refused, naming ca.pem, and changes nothing.
#[test]
fn init_never_overwrites_a_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    identity::init(tmp.path(), &names("appliance")).unwrap();
    let before = std::fs::read(tmp.path().join("ca.pem")).unwrap();
    let err = identity::init(tmp.path(), &names("appliance,vm1")).unwrap_err();
    assert!(matches!(&err, InitError::Exists(p) if p.ends_with("ca.pem")), "{err:?}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert_eq!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), before);
    assert!(!tmp.path().join("vm1.pem").exists());

    // A stray node file is refused too, before anything is written.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("vm1.key"), b"keep me").unwrap();
    let err = identity::init(other.path(), &names("appliance,vm1")).unwrap_err();
    assert!(err.to_string().contains("vm1.key"), "{err}");
    assert!(!other.path().join("ca.pem").exists() && !other.path().join("appliance.pem").exists());
    assert!(matches!(identity::init(other.path(), &[]), Err(InitError::Name(_))));
}

fn load_err(dir: &Path, node: &str) -> String {
    match NodeIdentity::load(dir, &NodeName::new(node).unwrap()) {
        Ok(_) => panic!("{node} loaded"),
        Err(e @ (LoadError::Read { .. } | LoadError::Invalid { .. })) => e.to_string(),
    }
}

/// Every way a node's files can be wrong gives an error naming the file and the fault.
#[test]
fn load_errors_name_the_file_and_the_fault() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    identity::init(ours.path(), &names("appliance,vm1")).unwrap();
    identity::init(theirs.path(), &names("appliance,vm1")).unwrap();
    let (d, t) = (ours.path(), theirs.path());

    let err = load_err(d, "witness");
    assert!(err.contains("witness.pem") && err.contains("No such file"), "{err}");

    // A certificate from another cluster.
    std::fs::copy(t.join("vm1.pem"), d.join("vm1.pem")).unwrap();
    let err = load_err(d, "vm1");
    assert!(err.contains("vm1.pem") && err.contains("not a node certificate of the cluster CA"), "{err}");

    // Another node's certificate under this node's name.
    std::fs::copy(d.join("appliance.pem"), d.join("vm1.pem")).unwrap();
    let err = load_err(d, "vm1");
    assert!(err.contains("vm1.pem") && err.contains("not for node vm1"), "{err}");

    // A key that is not the certificate's.
    std::fs::copy(d.join("vm1.key"), d.join("appliance.key")).unwrap();
    let err = load_err(d, "appliance");
    assert!(err.contains("appliance.key") && err.contains("does not belong to"), "{err}");

    // A key others can read.
    std::fs::set_permissions(d.join("appliance.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = load_err(d, "appliance");
    assert!(err.contains("appliance.key") && err.contains("readable by others") && err.contains("644"), "{err}");

    // Not PEM at all, and a CA file with two certificates.
    std::fs::write(d.join("vm1.pem"), b"hello").unwrap();
    let err = load_err(d, "vm1");
    assert!(err.contains("vm1.pem") && err.contains("no certificate"), "{err}");
    let two = [std::fs::read(d.join("ca.pem")).unwrap(), std::fs::read(t.join("ca.pem")).unwrap()].concat();
    std::fs::write(d.join("ca.pem"), two).unwrap();
    let err = load_err(d, "vm1");
    assert!(err.contains("ca.pem") && err.contains("2 certificates"), "{err}");
}

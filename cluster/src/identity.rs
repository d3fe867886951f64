//! Cluster identity: a private CA made once by `pbx cluster init`, and one certificate + key per
//! node, whose only subject alternative name is the DNS name `<node>.pbx-cluster`.
//!
//! Keys are ECDSA P-256: rcgen makes them with ring, rustls with ring verifies them for both
//! server and client authentication in TLS 1.3 (the only version QUIC uses), and every TLS tool
//! an operator may reach for (openssl, webpki) understands them; Ed25519 certificates would work
//! between two pbx nodes but not with every tool. The CA may only sign leaf certificates
//! (path length 0) and only names under `pbx-cluster` (a name constraint), so a leaked node key
//! cannot mint other nodes or impersonate anything outside the cluster.
//!
//! Certificates do not expire (RFC 5280's 9999-12-31): rotation and revocation come with
//! membership changes in a later step. Not done here: adding a node to an existing cluster
//! (that is why `ca.key` is kept) and any network use (see [`crate::link`]).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The DNS zone every node name lives in: `<node>.pbx-cluster`. Not a real top-level domain, so
/// a certificate for it can never be confused with a public one.
pub const DNS_ZONE: &str = "pbx-cluster";
/// The CA certificate: public, every node needs it.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key: needed only to add nodes later; keep it off the nodes.
pub const CA_KEY_FILE: &str = "ca.key";
/// Longest node name, in characters; short enough for log lines and DNS labels (63).
pub const NODE_NAME_CHARS_MAX: usize = 32;
/// Mode of every private key file.
const KEY_FILE_MODE: u32 = 0o600;

/// A node's name: 1–32 characters of `[a-z0-9-]`, not starting or ending with `-` (it is a DNS
/// label in the node's certificate).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("no node names given: a cluster has at least one node")]
    Empty,
    #[error("node name {name:?} is invalid: {why}")]
    Invalid { name: String, why: &'static str },
    #[error("node name {0:?} is given twice")]
    Duplicate(String),
}

impl NodeName {
    pub fn new(name: &str) -> Result<NodeName, NameError> {
        let invalid = |why| Err(NameError::Invalid { name: name.to_string(), why });
        if name.is_empty() {
            return invalid("it is empty");
        }
        if name.chars().count() > NODE_NAME_CHARS_MAX {
            return invalid("it is longer than 32 characters");
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return invalid("only a-z, 0-9 and '-' are allowed");
        }
        if name.starts_with('-') || name.ends_with('-') {
            return invalid("it may not start or end with '-' (it is a DNS label)");
        }
        Ok(NodeName(name.to_string()))
    }

    /// The name from a certificate's DNS name `<node>.pbx-cluster`, if it is one.
    pub fn from_dns_name(dns: &str) -> Option<NodeName> {
        let label = dns.strip_suffix(DNS_ZONE)?.strip_suffix('.')?;
        NodeName::new(label).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The DNS name in this node's certificate, and the TLS server name others connect to.
    pub fn dns_name(&self) -> String {
        format!("{}.{DNS_ZONE}", self.0)
    }

    pub fn cert_file(&self) -> String {
        format!("{}.pem", self.0)
    }

    pub fn key_file(&self) -> String {
        format!("{}.key", self.0)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `appliance,vm1,witness`: at least one name, each valid, none twice.
pub fn parse_node_names(list: &str) -> Result<Vec<NodeName>, NameError> {
    if list.trim().is_empty() {
        return Err(NameError::Empty);
    }
    let mut seen = BTreeSet::new();
    list.split(',')
        .map(|raw| {
            let name = NodeName::new(raw.trim())?;
            if !seen.insert(name.clone()) {
                return Err(NameError::Duplicate(name.0));
            }
            Ok(name)
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{}: already exists; init makes a new cluster CA and will not overwrite one", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("make the certificate for {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
}

/// Makes a cluster CA and a certificate + key per node in `dir` (created 0700 if missing):
/// `ca.pem`, `ca.key`, `<node>.pem`, `<node>.key`, keys 0600. Refuses if any of those files
/// exists. `ca.pem` is written last, so its presence means a complete init. Returns the paths
/// written, in order.
pub fn init(dir: &Path, nodes: &[NodeName]) -> Result<Vec<PathBuf>, InitError> {
    if nodes.is_empty() {
        return Err(NameError::Empty.into());
    }
    let mut files = Vec::new();
    let ca_key = generate_key("the cluster CA")?;
    let ca_params = ca_params(&ca_key);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|source| generate_error("the cluster CA", source))?;
    let issuer = Issuer::new(ca_params, &ca_key);
    for node in nodes {
        let what = format!("node {node}");
        let key = generate_key(&what)?;
        let cert = node_params(node)?.signed_by(&key, &issuer).map_err(|source| generate_error(&what, source))?;
        files.push((dir.join(node.cert_file()), cert.pem(), false));
        files.push((dir.join(node.key_file()), key.serialize_pem(), true));
    }
    files.push((dir.join(CA_KEY_FILE), ca_key.serialize_pem(), true));
    files.push((dir.join(CA_CERT_FILE), ca_cert.pem(), false));

    // The CA file first: it is the one a second run meets.
    for path in std::iter::once(&dir.join(CA_CERT_FILE)).chain(files.iter().map(|(p, _, _)| p)) {
        if path.exists() {
            return Err(InitError::Exists(path.clone()));
        }
    }
    create_private_dir(dir)?;
    for (path, text, secret) in &files {
        write_new(path, text.as_bytes(), *secret)?;
    }
    Ok(files.into_iter().map(|(p, _, _)| p).collect())
}

fn generate_key(what: &str) -> Result<KeyPair, InitError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| generate_error(what, source))
}

fn generate_error(what: &str, source: rcgen::Error) -> InitError {
    InitError::Generate { what: what.to_string(), source }
}

fn validity(params: &mut CertificateParams) {
    // An hour back tolerates nodes whose clocks lag the one that ran init.
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    // A name of its own per cluster: verifiers find a certificate's issuer by name, so a
    // foreign node's certificate is then "unknown issuer", not a bad signature from our CA.
    let id: String = params.key_identifier(key).iter().take(6).map(|b| format!("{b:02x}")).collect();
    params.distinguished_name.push(DnType::CommonName, format!("pbx cluster CA {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(DNS_ZONE.to_string())],
        excluded_subtrees: vec![],
    });
    validity(&mut params);
    params
}

fn node_params(node: &NodeName) -> Result<CertificateParams, InitError> {
    let mut params = CertificateParams::new(vec![node.dns_name()])
        .map_err(|source| generate_error(&format!("node {node}"), source))?;
    params.distinguished_name.push(DnType::CommonName, node.as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node both accepts links (server) and opens them (client).
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    Ok(params)
}

fn create_private_dir(dir: &Path) -> Result<(), InitError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| InitError::Io { path: dir.to_path_buf(), source })
}

fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), InitError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| InitError::Io { path: path.to_path_buf(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(if secret { KEY_FILE_MODE } else { 0o644 });
    let mut file = options.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => InitError::Exists(path.to_path_buf()),
        _ => io(source),
    })?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)
}

/// What a node needs to take part: the cluster CA, its own certificate and its key.
#[derive(Debug)]
pub struct NodeIdentity {
    pub name: NodeName,
    pub ca: CertificateDer<'static>,
    /// The node's certificate first (init writes no intermediates).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

fn invalid(path: &Path, what: impl Into<String>) -> LoadError {
    LoadError::Invalid { path: path.to_path_buf(), what: what.into() }
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })
}

/// The certificates of a PEM file, at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no certificate"));
    }
    Ok(certs)
}

/// The cluster CA certificate: exactly one in the file.
pub fn load_ca_cert(path: &Path) -> Result<CertificateDer<'static>, LoadError> {
    let mut certs = load_certs(path)?;
    if certs.len() != 1 {
        return Err(invalid(path, format!("holds {} certificates, expected the one cluster CA", certs.len())));
    }
    Ok(certs.remove(0))
}

/// A private key file, refused if others than its owner may read it (like ssh does).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, LoadError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(invalid(
            path,
            format!("private key is readable by others (mode {:o}); chmod 600 it", mode & 0o777),
        ));
    }
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| invalid(path, format!("not a PEM private key: {e}")))
}

impl NodeIdentity {
    /// Reads `ca.pem`, `<node>.pem` and `<node>.key` from `dir` and checks they belong
    /// together: the certificate is issued by the CA for this node's name, and the key is its.
    pub fn load(dir: &Path, name: &NodeName) -> Result<NodeIdentity, LoadError> {
        let ca_path = dir.join(CA_CERT_FILE);
        let cert_path = dir.join(name.cert_file());
        let key_path = dir.join(name.key_file());
        let ca = load_ca_cert(&ca_path)?;
        let chain = load_certs(&cert_path)?;
        let key = load_key(&key_path)?;

        let verifier = crate::link::client_verifier(&ca).map_err(|e| invalid(&ca_path, e.to_string()))?;
        verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()).map_err(|e| {
            invalid(&cert_path, format!("not a node certificate of the cluster CA in {}: {e}", ca_path.display()))
        })?;
        let names = crate::link::dns_names(&chain[0]).map_err(|e| invalid(&cert_path, e))?;
        if !names.contains(&name.dns_name()) {
            return Err(invalid(&cert_path, format!("is for {names:?}, not for node {name} ({})", name.dns_name())));
        }
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &crate::link::provider())
            .map_err(|e| invalid(&key_path, format!("does not belong to {}: {e}", cert_path.display())))?;
        Ok(NodeIdentity { name: name.clone(), ca, chain, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names follow the DNS label rules the brief sets, with a reason for each refusal.
    #[test]
    fn node_names() {
        for good in ["appliance", "vm1", "a", "node-2", &"x".repeat(32)] {
            assert_eq!(NodeName::new(good).unwrap().as_str(), good);
        }
        for (bad, why) in [
            ("", "empty"),
            (&"x".repeat(33) as &str, "longer than 32"),
            ("VM1", "only a-z"),
            ("vm_1", "only a-z"),
            ("vm.1", "only a-z"),
            ("-vm", "start or end"),
            ("vm-", "start or end"),
            ("café", "only a-z"),
        ] {
            let err = NodeName::new(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")) && err.contains(why), "{bad}: {err}");
        }
        let names: Vec<String> =
            parse_node_names("appliance, vm1,witness").unwrap().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["appliance", "vm1", "witness"]);
        assert_eq!(parse_node_names(" "), Err(NameError::Empty));
        assert_eq!(parse_node_names("a,b,a"), Err(NameError::Duplicate("a".into())));
        assert!(matches!(parse_node_names("a,,b"), Err(NameError::Invalid { .. })));
    }

    /// The certificate's DNS name maps back to the node and nothing else does.
    #[test]
    fn dns_names_round_trip() {
        let vm1 = NodeName::new("vm1").unwrap();
        assert_eq!(vm1.dns_name(), "vm1.pbx-cluster");
        assert_eq!(NodeName::from_dns_name("vm1.pbx-cluster"), Some(vm1));
        for other in
            ["vm1", "vm1.example.com", "a.vm1.pbx-cluster", ".pbx-cluster", "vm1pbx-cluster", "VM1.pbx-cluster"]
        {
            assert_eq!(NodeName::from_dns_name(other), None, "{other}");
        }
    }
}

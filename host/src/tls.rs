//! A server's TLS identity from two PEM files, made self-signed at first start: the licence
//! service's HTTPS and the node's SIP over TLS share it. rustls with ring only (STYLE.md).

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A certificate chain and its key, read and checked, with the fingerprint a client pins.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate's DER, upper-case hex pairs joined by ':' (the form
    /// `openssl x509 -fingerprint -sha256` prints and softphones ask for).
    pub fingerprint: String,
    /// Made now, at this start (a self-signed certificate for `names`).
    pub created: bool,
}

/// Reads `cert_path` and `key_path`; when `self_signed` is given and neither file exists,
/// makes a self-signed certificate for those names first (the key 0600). Errors name the file.
pub fn identity(cert_path: &Path, key_path: &Path, self_signed: Option<&[String]>) -> anyhow::Result<Identity> {
    let mut created = false;
    if let Some(names) = self_signed
        && !cert_path.exists()
        && !key_path.exists()
    {
        let certified = rcgen::generate_simple_self_signed(names.to_vec())
            .with_context(|| format!("make a self-signed certificate for {names:?}"))?;
        crate::secret_file::write(key_path, certified.signing_key.serialize_pem().as_bytes(), 0o600)
            .with_context(|| format!("write {}", key_path.display()))?;
        crate::secret_file::write(cert_path, certified.cert.pem().as_bytes(), 0o644)
            .with_context(|| format!("write {}", cert_path.display()))?;
        created = true;
    }
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("read {}: {e}", cert_path.display()))?;
    let leaf = chain.first().with_context(|| format!("{}: no certificate in it", cert_path.display()))?;
    let fingerprint = fingerprint(leaf);
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| anyhow::anyhow!("read {}: {e}", key_path.display()))?;
    Ok(Identity { chain, key, fingerprint, created })
}

/// SHA-256 of a certificate, as [`Identity::fingerprint`] prints it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// A server configuration for `identity`: TLS 1.2 and 1.3 (rustls's safe defaults), no client
/// certificates, ring's cipher suites, and `alpn` offered in that order (empty: none).
pub fn server_config(identity: &Identity, alpn: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
    // Once per process; a second install (tests, another role) is no error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .context("TLS certificate and key do not match")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First start makes the pair (key private), the next start reads the same one back (the
    /// fingerprint a phone pinned stays true), and a key that is not the certificate's is refused.
    #[test]
    fn a_self_signed_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let names = ["pbx.example".to_string()];
        let first = identity(&cert, &key, Some(&names)).unwrap();
        assert!(first.created);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let again = identity(&cert, &key, Some(&names)).unwrap();
        assert!(!again.created);
        assert_eq!(again.fingerprint, first.fingerprint);
        server_config(&again, &[]).unwrap();

        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let stranger = identity(&other.join("c.pem"), &other.join("k.pem"), Some(&names)).unwrap();
        let mismatched = Identity { key: stranger.key, ..again };
        let error = server_config(&mismatched, &[]).unwrap_err();
        assert!(format!("{error:#}").contains("do not match"), "{error:#}");
        let missing = identity(&dir.path().join("none.pem"), &key, None).err().unwrap();
        assert!(format!("{missing:#}").contains("none.pem"), "{missing:#}");
    }
}

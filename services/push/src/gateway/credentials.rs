//! `make-credentials`: a matching pair of credentials without Google or Apple. It writes an
//! FCM service-account JSON (RSA 2048 key in PKCS#8, `token_uri` pointing at the gateway) and
//! an APNs `AuthKey_<KEYID>.p8` (P-256 in PKCS#8) for the PBX, and registers their public
//! halves in the gateway's `DATA_DIR/registrations.json`, which a running gateway reads again
//! whenever it changes.
//!
//! Files holding private keys are written 0600, through a new file renamed into place (so a
//! link at the name is replaced, never followed). Not here: locking `registrations.json`
//! against two `make-credentials` at once (the last writer wins).

use super::config::{ApnsKeyConfig, FcmAccountConfig, Registrations};
use crate::keys::{self, KeyError};
use rand::Rng;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The service-account JSON `make-credentials` writes.
pub const SERVICE_ACCOUNT_FILE: &str = "fcm-service-account.json";
/// Where the gateway keeps the credentials `make-credentials` registered.
pub const REGISTRATIONS_FILE: &str = "registrations.json";
/// A copy of the gateway's certificate beside the credentials, for the PBX to trust.
pub const GATEWAY_CERT_FILE: &str = "gateway-cert.pem";
/// Mode of files holding a private key.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// What to make.
#[derive(Debug, Clone)]
pub struct CredentialsRequest {
    /// Where the service-account JSON and the `.p8` go (created 0700 if missing).
    pub out_dir: PathBuf,
    /// The gateway's token endpoint, written into the JSON (`https://127.0.0.1:8441/token`).
    pub token_uri: String,
    /// The Firebase project the account sends in.
    pub project_id: String,
    /// Default: `pbx-push@<project_id>.iam.gserviceaccount.com`.
    pub client_email: Option<String>,
    /// The APNs key's team (provider tokens' `iss`).
    pub team_id: String,
    /// Default: ten random upper-case letters and digits, as Apple's.
    pub key_id: Option<String>,
    /// The app's bundle ID; the key may push to it and to `<bundle>.voip`.
    pub bundle_id: String,
}

impl CredentialsRequest {
    /// The defaults: project `pbx-push-test`, team `PBXTEAM001`, bundle `org.example.pbx`.
    pub fn new(out_dir: impl Into<PathBuf>, token_uri: impl Into<String>) -> CredentialsRequest {
        CredentialsRequest {
            out_dir: out_dir.into(),
            token_uri: token_uri.into(),
            project_id: "pbx-push-test".into(),
            client_email: None,
            team_id: "PBXTEAM001".into(),
            key_id: None,
            bundle_id: "org.example.pbx".into(),
        }
    }
}

/// What was made and where.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `OUT/fcm-service-account.json` (0600).
    pub service_account_path: PathBuf,
    /// `OUT/AuthKey_<KEYID>.p8` (0600).
    pub apns_key_path: PathBuf,
    /// The service account's project (RFC 8599 `pn-param` for FCM).
    pub project_id: String,
    /// The service account's email.
    pub client_email: String,
    /// The APNs key's team.
    pub team_id: String,
    /// The APNs key's ID.
    pub key_id: String,
    /// The bundle the key may push to (and `<bundle>.voip`).
    pub bundle_id: String,
    /// RFC 8599 `pn-param` of a VoIP app with these credentials: `<team>.<bundle>.voip`.
    pub apns_pn_param: String,
}

/// Why credentials could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("write {0}: {1}")]
    Write(String, std::io::Error),
    #[error("{0}: {1}")]
    Registrations(String, String),
    #[error("{0} {1:?}: {2}")]
    Invalid(&'static str, String, &'static str),
}

/// Makes the pair, writes it to `request.out_dir`, and registers the public halves in
/// `data_dir/registrations.json` (an entry with the same email or key ID is replaced).
pub fn make_credentials(data_dir: &Path, request: &CredentialsRequest) -> Result<Credentials, CredentialsError> {
    let alnum = |s: &str| !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric());
    if !alnum(&request.team_id) {
        return Err(CredentialsError::Invalid("team id", request.team_id.clone(), "1-32 letters and digits"));
    }
    let project_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !project_ok(&request.project_id) {
        return Err(CredentialsError::Invalid("project id", request.project_id.clone(), "letters, digits, - _ . :"));
    }
    let bundle_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
    if !bundle_ok(&request.bundle_id) {
        return Err(CredentialsError::Invalid("bundle id", request.bundle_id.clone(), "letters, digits, . -"));
    }
    let mut rng = rand::rng();
    let key_id = match &request.key_id {
        Some(id) if alnum(id) => id.clone(),
        Some(id) => return Err(CredentialsError::Invalid("key id", id.clone(), "1-32 letters and digits")),
        None => (0..10).map(|_| b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[rng.random_range(0..36)] as char).collect(),
    };
    let client_email = request
        .client_email
        .clone()
        .unwrap_or_else(|| format!("pbx-push@{}.iam.gserviceaccount.com", request.project_id));
    let private_key_id = hex(&rng.random::<[u8; 20]>());
    let client_id: String = (0..21).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect();

    let (rsa_private, rsa_public) = keys::generate_rsa()?;
    let (ec_private, ec_public) = keys::generate_ec()?;
    let service_account = json!({
        "type": "service_account",
        "project_id": request.project_id,
        "private_key_id": private_key_id,
        "private_key": rsa_private,
        "client_email": client_email,
        "client_id": client_id,
        "token_uri": request.token_uri,
        "universe_domain": "googleapis.com",
    });
    create_private_dir(&request.out_dir)?;
    let service_account_path = request.out_dir.join(SERVICE_ACCOUNT_FILE);
    let json = serde_json::to_string_pretty(&service_account).expect("a JSON value serializes");
    write_file(&service_account_path, json.as_bytes(), PRIVATE_FILE_MODE)?;
    let apns_key_path = request.out_dir.join(format!("AuthKey_{key_id}.p8"));
    write_file(&apns_key_path, ec_private.as_bytes(), PRIVATE_FILE_MODE)?;

    let fcm = FcmAccountConfig {
        client_email: client_email.clone(),
        project_id: request.project_id.clone(),
        private_key_id: Some(private_key_id),
        public_key_pem: Some(rsa_public),
        public_key_file: None,
    };
    let apns = ApnsKeyConfig {
        team_id: request.team_id.clone(),
        key_id: key_id.clone(),
        topics: vec![request.bundle_id.clone()],
        public_key_pem: Some(ec_public),
        public_key_file: None,
    };
    register(data_dir, fcm, apns)?;
    Ok(Credentials {
        service_account_path,
        apns_key_path,
        project_id: request.project_id.clone(),
        client_email,
        team_id: request.team_id.clone(),
        key_id,
        bundle_id: request.bundle_id.clone(),
        apns_pn_param: format!("{}.{}.voip", request.team_id, request.bundle_id),
    })
}

/// `data_dir/registrations.json`, empty when there is none.
pub fn read_registrations(data_dir: &Path) -> Result<Registrations, CredentialsError> {
    let path = data_dir.join(REGISTRATIONS_FILE);
    if !path.exists() {
        return Ok(Registrations::default());
    }
    let text = super::config::read_text(&path)
        .map_err(|e| CredentialsError::Registrations(path.display().to_string(), e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| CredentialsError::Registrations(path.display().to_string(), e.to_string()))
}

/// Adds (or replaces) one service account and one APNs key in `registrations.json`.
fn register(data_dir: &Path, fcm: FcmAccountConfig, apns: ApnsKeyConfig) -> Result<(), CredentialsError> {
    create_private_dir(data_dir)?;
    let mut registrations = read_registrations(data_dir)?;
    registrations.fcm_service_accounts.retain(|a| a.client_email != fcm.client_email);
    registrations.fcm_service_accounts.push(fcm);
    registrations.apns_keys.retain(|k| k.key_id != apns.key_id);
    registrations.apns_keys.push(apns);
    let path = data_dir.join(REGISTRATIONS_FILE);
    registrations.registry().map_err(|e| CredentialsError::Registrations(path.display().to_string(), e.to_string()))?;
    let text = serde_json::to_string_pretty(&registrations).expect("registrations serialize");
    write_file(&path, text.as_bytes(), 0o644)
}

fn create_private_dir(dir: &Path) -> Result<(), CredentialsError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| CredentialsError::Write(dir.display().to_string(), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| CredentialsError::Write(dir.display().to_string(), e))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` with `mode`, durably and atomically, never through a link
/// (`pbx_host::secret_file::write`).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CredentialsError> {
    pbx_host::secret_file::write(path, bytes, mode).map_err(|e| CredentialsError::Write(path.display().to_string(), e))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    // Proves the pair is written 0600, the client reads both files, and the public halves
    // are registered once per email/key ID (a second run with the same IDs replaces them).
    #[test]
    fn pair_written_and_registered() {
        let dir = tempfile::tempdir().unwrap();
        let (data, out) = (dir.path().join("data"), dir.path().join("out"));
        let mut request = CredentialsRequest::new(&out, "https://127.0.0.1:8441/token");
        request.key_id = Some("KEY1".into());
        let made = make_credentials(&data, &request).unwrap();
        assert_eq!((mode(&made.service_account_path), mode(&made.apns_key_path)), (0o600, 0o600));
        assert_eq!(made.apns_key_path, out.join("AuthKey_KEY1.p8"));
        assert_eq!(made.apns_pn_param, "PBXTEAM001.org.example.pbx.voip");
        let account = crate::client::fcm::ServiceAccount::read(&made.service_account_path).unwrap();
        assert_eq!(
            (account.project_id.as_str(), account.token_uri.to_string()),
            ("pbx-push-test", "https://127.0.0.1:8441/token".into())
        );
        crate::client::apns::ApnsKey::read(&made.apns_key_path, &made.team_id, &made.key_id).unwrap();
        make_credentials(&data, &request).unwrap();
        let registrations = read_registrations(&data).unwrap();
        assert_eq!((registrations.fcm_service_accounts.len(), registrations.apns_keys.len()), (1, 1));
        assert_eq!(registrations.apns_keys[0].topics, vec!["org.example.pbx"]);
        request.team_id = "NOT VALID".into();
        assert!(matches!(make_credentials(&data, &request), Err(CredentialsError::Invalid("team id", ..))));
    }

    // Proves a link at a secret's name is replaced, its target untouched.
    #[test]
    fn links_are_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("AuthKey.p8");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_file(&link, b"secret", PRIVATE_FILE_MODE).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_file());
    }
}
